//! The prepared statements of every table, each prepared once at connect.

use super::common::{MAX_HISTORY_PARTITIONS, PAGE_SIZE};
use super::errors;
use ringlimit_actors::storage::StoreError;
use ringlimit_protocol::admin::Granularity;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

/// The prepared statements, each prepared once at connect.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) get_key: PreparedStatement,
    pub(super) put_key: PreparedStatement,
    pub(super) put_page: PreparedStatement,
    pub(super) shards: PreparedStatement,
    pub(super) page_after: PreparedStatement,
    pub(super) page_all: PreparedStatement,
    pub(super) all_keys: PreparedStatement,
    pub(super) put_tier: PreparedStatement,
    pub(super) all_tiers: PreparedStatement,
    pub(super) put_snapshot: PreparedStatement,
    pub(super) get_snapshot: PreparedStatement,
    /// Indexed by [`gi`].
    pub(super) put_usage: [PreparedStatement; 3],
    pub(super) get_usage: [PreparedStatement; 3],
    pub(super) put_partition: PreparedStatement,
    pub(super) get_partitions: PreparedStatement,
}

fn usage_table(g: Granularity) -> &'static str {
    match g {
        Granularity::Minute => "usage_minute",
        Granularity::Hour => "usage_hour",
        Granularity::Day => "usage_day",
    }
}

/// Prepares one statement, marked idempotent (every statement of the store
/// is), with the store's page size.
async fn prepare_one(session: &Session, cql: String) -> Result<PreparedStatement, StoreError> {
    let mut p = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| errors::prepare(&format!("prepare `{cql}`"), e))?;
    p.set_is_idempotent(true);
    p.set_page_size(PAGE_SIZE);
    Ok(p)
}

pub(super) async fn prepare_all(session: &Session, ks: &str) -> Result<Statements, StoreError> {
    let prep = |cql: String| prepare_one(session, cql);
    let usage = |g: Granularity| {
        let t = usage_table(g);
        (
            format!(
                "INSERT INTO {ks}.{t} (key_id, day, bucket_start, writer, units) VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
            ),
            format!(
                "SELECT bucket_start, units FROM {ks}.{t} WHERE key_id = ? AND day = ? AND bucket_start >= ? AND bucket_start < ?"
            ),
        )
    };
    let (pm, gm) = usage(Granularity::Minute);
    let (ph, gh) = usage(Granularity::Hour);
    let (pd, gd) = usage(Granularity::Day);
    Ok(Statements {
        get_key: prep(format!("SELECT record FROM {ks}.keys WHERE key_id = ?")).await?,
        put_key: prep(format!(
            "INSERT INTO {ks}.keys (key_id, owner, tier, status, updated_at, record) VALUES (?, ?, ?, ?, ?, ?)"
        ))
        .await?,
        put_page: prep(format!("INSERT INTO {ks}.keys_by_page (shard, key_id, owner, tier, status) VALUES (?, ?, ?, ?, ?)"))
            .await?,
        shards: prep(format!("SELECT DISTINCT shard FROM {ks}.keys_by_page")).await?,
        page_after: prep(format!(
            "SELECT key_id, owner, tier, status FROM {ks}.keys_by_page WHERE shard = ? AND key_id > ?"
        ))
        .await?,
        page_all: prep(format!("SELECT key_id, owner, tier, status FROM {ks}.keys_by_page WHERE shard = ?")).await?,
        all_keys: prep(format!("SELECT key_id, record FROM {ks}.keys")).await?,
        put_tier: prep(format!("INSERT INTO {ks}.tiers (name, limits, updated_at) VALUES (?, ?, ?)")).await?,
        all_tiers: prep(format!("SELECT name, limits FROM {ks}.tiers")).await?,
        put_snapshot: prep(format!("INSERT INTO {ks}.counter_snapshots (key_id, snapshot, saved_at) VALUES (?, ?, ?)"))
            .await?,
        get_snapshot: prep(format!("SELECT snapshot FROM {ks}.counter_snapshots WHERE key_id = ?")).await?,
        put_usage: [prep(pm).await?, prep(ph).await?, prep(pd).await?],
        get_usage: [prep(gm).await?, prep(gh).await?, prep(gd).await?],
        put_partition: prep(format!(
            "INSERT INTO {ks}.usage_partitions (key_id, granularity, day) VALUES (?, ?, ?) USING TTL ?"
        ))
        .await?,
        get_partitions: prep(format!(
            "SELECT day FROM {ks}.usage_partitions WHERE key_id = ? AND granularity = ? AND day >= ? AND day <= ? LIMIT {}",
            MAX_HISTORY_PARTITIONS + 1
        ))
        .await?,
    })
}

/// The prepared statements of the pipeline tables, each prepared once at connect.
#[derive(Debug)]
pub(super) struct PipelineStatements {
    pub(super) put_day: PreparedStatement,
    pub(super) get_days: PreparedStatement,
    pub(super) put_violation_by_day: PreparedStatement,
    pub(super) put_violation_by_key: PreparedStatement,
    pub(super) violations_of_day: PreparedStatement,
    pub(super) violations_of_key_day: PreparedStatement,
    pub(super) put_block: PreparedStatement,
    pub(super) get_block: PreparedStatement,
    pub(super) all_blocks: PreparedStatement,
    pub(super) del_block: PreparedStatement,
    pub(super) put_audit: PreparedStatement,
    pub(super) audit_of_day: PreparedStatement,
    pub(super) put_alert: PreparedStatement,
    pub(super) get_alert: PreparedStatement,
    pub(super) put_alert_by_day: PreparedStatement,
    pub(super) del_alert_by_day: PreparedStatement,
    pub(super) alerts_of_day: PreparedStatement,
    pub(super) put_alert_by_key: PreparedStatement,
    pub(super) del_alert_by_key: PreparedStatement,
    pub(super) alerts_of_key: PreparedStatement,
    pub(super) put_dead: PreparedStatement,
    pub(super) get_dead: PreparedStatement,
    pub(super) del_dead: PreparedStatement,
    pub(super) put_dead_by_day: PreparedStatement,
    pub(super) del_dead_by_day: PreparedStatement,
    pub(super) dead_of_day: PreparedStatement,
    pub(super) put_billing_by_key: PreparedStatement,
    pub(super) put_billing_by_period: PreparedStatement,
    pub(super) get_billing: PreparedStatement,
    pub(super) billing_of_key: PreparedStatement,
    pub(super) billing_of_period: PreparedStatement,
}

const VIOLATION_COLS: &str = "at_ms, id, key_id, limit_name, node, client_ip, cost";
const BLOCK_COLS: &str = "id, cidr, created_at_ms, expires_at_ms, reason, created_by";
const AUDIT_COLS: &str = "at_ms, id, actor, action, target_kind, target_id, reason, details";
const ALERT_COLS: &str = "id, raised_at_ms, key_id, kind, severity, message, details, delivery, attempts, last_attempt_at_ms";
const DEAD_COLS: &str = "id, alert_id, endpoint, url, failed_at_ms, attempts, error, payload";
const BILLING_COLS: &str = "key_id, period_start_ms, period_end_ms, owner, tier, units, included_units, overage_units, unit_price_nanos, amount_nanos, currency, computed_at_ms, computed_by";

/// `INSERT INTO {ks}.{table} ({cols}) VALUES (?, …){suffix}`.
fn insert(ks: &str, table: &str, cols: &str, suffix: &str) -> String {
    let marks = vec!["?"; cols.split(',').count()].join(", ");
    format!("INSERT INTO {ks}.{table} ({cols}) VALUES ({marks}){suffix}")
}

/// `c1 = ? AND c2 = ? …`: a WHERE clause binding each of `cols`.
fn bind_each(cols: &[&str]) -> String {
    cols.iter()
        .map(|c| format!("{c} = ?"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The rows of one partition (`part`, its key columns) of a time-clustered
/// table whose `time` is in `[from, to)`.
fn select_time_range(ks: &str, cols: &str, table: &str, part: &[&str], time: &str) -> String {
    format!(
        "SELECT {cols} FROM {ks}.{table} WHERE {} AND {time} >= ? AND {time} < ?",
        bind_each(part)
    )
}

/// The upsert, delete and range read of a time-ordered id index: a table of
/// `(part, time, id)` rows, partitioned by `part`.
fn id_index(ks: &str, table: &str, part: &str, time: &str) -> [String; 3] {
    [
        insert(ks, table, &format!("{part}, {time}, id"), ""),
        format!(
            "DELETE FROM {ks}.{table} WHERE {}",
            bind_each(&[part, time, "id"])
        ),
        select_time_range(ks, "id", table, &[part], time),
    ]
}

/// Prepares every statement of the pipeline tables.
pub(super) async fn prepare_pipeline(
    session: &Session,
    ks: &str,
) -> Result<PipelineStatements, StoreError> {
    let p = |cql: String| prepare_one(session, cql);
    let ttl = " USING TTL ?";
    let by_day_violation_cols = format!("day, {VIOLATION_COLS}");
    let [put_alert_by_day, del_alert_by_day, alerts_of_day] =
        id_index(ks, "alerts_by_day", "day", "raised_at_ms");
    let [put_alert_by_key, del_alert_by_key, alerts_of_key] =
        id_index(ks, "alerts_by_key_time", "key_id", "raised_at_ms");
    let [put_dead_by_day, del_dead_by_day, dead_of_day] =
        id_index(ks, "dead_letters_by_day", "day", "failed_at_ms");
    Ok(PipelineStatements {
        put_day: p(insert(ks, "pipeline_days", "stream, key_id, day", ttl)).await?,
        get_days: p(format!(
            "SELECT day FROM {ks}.pipeline_days WHERE stream = ? AND key_id = ? AND day >= ? AND day <= ?"
        ))
        .await?,
        put_violation_by_day: p(insert(ks, "violations_by_day", &by_day_violation_cols, ttl)).await?,
        put_violation_by_key: p(insert(ks, "violations_by_key", &by_day_violation_cols, ttl)).await?,
        violations_of_day: p(select_time_range(ks, VIOLATION_COLS, "violations_by_day", &["day"], "at_ms")).await?,
        violations_of_key_day: p(select_time_range(
            ks,
            VIOLATION_COLS,
            "violations_by_key",
            &["key_id", "day"],
            "at_ms",
        ))
        .await?,
        put_block: p(insert(ks, "ip_blocks", &format!("part, {BLOCK_COLS}"), "")).await?,
        get_block: p(format!("SELECT id FROM {ks}.ip_blocks WHERE part = 0 AND id = ?")).await?,
        all_blocks: p(format!("SELECT {BLOCK_COLS} FROM {ks}.ip_blocks WHERE part = 0")).await?,
        del_block: p(format!("DELETE FROM {ks}.ip_blocks WHERE part = 0 AND id = ?")).await?,
        put_audit: p(insert(ks, "audit_by_day", &format!("day, {AUDIT_COLS}"), "")).await?,
        audit_of_day: p(select_time_range(ks, AUDIT_COLS, "audit_by_day", &["day"], "at_ms")).await?,
        put_alert: p(insert(ks, "alert_records", ALERT_COLS, "")).await?,
        get_alert: p(format!("SELECT {ALERT_COLS} FROM {ks}.alert_records WHERE id = ?")).await?,
        put_alert_by_day: p(put_alert_by_day).await?,
        del_alert_by_day: p(del_alert_by_day).await?,
        alerts_of_day: p(alerts_of_day).await?,
        put_alert_by_key: p(put_alert_by_key).await?,
        del_alert_by_key: p(del_alert_by_key).await?,
        alerts_of_key: p(alerts_of_key).await?,
        put_dead: p(insert(ks, "dead_letter_records", DEAD_COLS, "")).await?,
        get_dead: p(format!("SELECT {DEAD_COLS} FROM {ks}.dead_letter_records WHERE id = ?")).await?,
        del_dead: p(format!("DELETE FROM {ks}.dead_letter_records WHERE id = ?")).await?,
        put_dead_by_day: p(put_dead_by_day).await?,
        del_dead_by_day: p(del_dead_by_day).await?,
        dead_of_day: p(dead_of_day).await?,
        put_billing_by_key: p(insert(ks, "billing_by_key", BILLING_COLS, "")).await?,
        put_billing_by_period: p(insert(ks, "billing_by_period", BILLING_COLS, "")).await?,
        get_billing: p(format!(
            "SELECT {BILLING_COLS} FROM {ks}.billing_by_key WHERE key_id = ? AND period_start_ms = ?"
        ))
        .await?,
        billing_of_key: p(format!("SELECT {BILLING_COLS} FROM {ks}.billing_by_key WHERE key_id = ?")).await?,
        billing_of_period: p(format!(
            "SELECT {BILLING_COLS} FROM {ks}.billing_by_period WHERE period_start_ms = ?"
        ))
        .await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_has_one_marker_per_column() {
        let s = insert("\"k\"", "t", "a, b, c", " USING TTL ?");
        assert_eq!(
            s,
            "INSERT INTO \"k\".t (a, b, c) VALUES (?, ?, ?) USING TTL ?"
        );
    }

    #[test]
    fn time_ranges_and_id_indexes_read_as_written_out() {
        assert_eq!(
            select_time_range(
                "ks",
                VIOLATION_COLS,
                "violations_by_key",
                &["key_id", "day"],
                "at_ms"
            ),
            format!(
                "SELECT {VIOLATION_COLS} FROM ks.violations_by_key WHERE key_id = ? AND day = ? AND at_ms >= ? AND at_ms < ?"
            )
        );
        assert_eq!(
            id_index("ks", "alerts_by_key_time", "key_id", "raised_at_ms"),
            [
                "INSERT INTO ks.alerts_by_key_time (key_id, raised_at_ms, id) VALUES (?, ?, ?)",
                "DELETE FROM ks.alerts_by_key_time WHERE key_id = ? AND raised_at_ms = ? AND id = ?",
                "SELECT id FROM ks.alerts_by_key_time WHERE key_id = ? AND raised_at_ms >= ? AND raised_at_ms < ?",
            ]
        );
        assert_eq!(
            id_index("ks", "dead_letters_by_day", "day", "failed_at_ms")[2],
            "SELECT id FROM ks.dead_letters_by_day WHERE day = ? AND failed_at_ms >= ? AND failed_at_ms < ?"
        );
    }
}
