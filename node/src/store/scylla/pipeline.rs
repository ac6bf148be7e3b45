//! The pipelines' records on ScyllaDB: violations, IP blocks, audit, alerts,
//! dead letters and billing (tables of `cql/0006_pipeline_tables.cql`).
//!
//! # Time-ordered lists
//! Violations, audit entries, alerts and dead letters are listed newest first
//! over a time range, with offset/limit paging. Their tables are partitioned
//! by day (days since 1970-01-01 UTC of the record's time) and clustered by
//! `(time DESC, id DESC)`, so reading the days newest first, each in
//! clustering order, gives the list order. Which days hold data is recorded
//! in `pipeline_days` (before the data is written; recent index writes are
//! remembered in memory for an hour, as for usage), so a list over an
//! open-ended range (`from_ms = 0`, `to_ms = u64::MAX`) reads only the days
//! that exist, and stops as soon as `offset + limit` rows are found. Deep
//! pages cost what they skip; the admin API's pages are small.
//!
//! - Violations are written twice, to `violations_by_day` (all keys) and
//!   `violations_by_key` (partition `(key_id, day)`), in unlogged
//!   single-partition batches, each row `USING TTL` the configured
//!   [`Retention::violations`](ringlimit_actors::storage::Retention); their
//!   `pipeline_days` rows expire a day after the data.
//! - Alerts and dead letters change after they are written (delivery state,
//!   attempts), so each is one row by id (`alert_records`,
//!   `dead_letter_records`) and the time-ordered tables hold only ids; a list
//!   reads the records of its page by id. Alerts of one key are few (one per
//!   condition and period), so `alerts_by_key_time` is one partition per key.
//!   An upsert whose time (or key) differs from the stored record's removes
//!   the old index rows, so an id is listed once.
//! - Audit entries never change: `audit_by_day` holds them whole.
//!
//! # Blocks and billing
//! The block list is one partition (`ip_blocks`, `part = 0`) read whole in id
//! order. Billing records are written to `billing_by_key` (newest period
//! first per key) and `billing_by_period` (key_id order per period); both
//! rows hold the whole record and are rewritten by a recomputation.
//!
//! # Values
//! Times and counts are `bigint`; a value above `i64::MAX` (or a time of
//! exactly `i64::MAX`, which an open range could not reach) is refused with
//! [`StoreError::Backend`], never wrapped. Ids are `text` chosen by the
//! writer; an empty id (or key id, where it is a partition key) is refused on
//! write and finds nothing on read. `details` is JSON text.
//!
//! Without LWT, "whether it existed" (`delete_block`, `delete_dead_letter`)
//! is a read before the delete: two concurrent deletes of one id may both
//! answer true.

use super::{
    DAY_MS, INDEX_CACHE_MAX, INDEX_REFRESH, MAX_TTL_SECS, ScyllaStore, USAGE_BATCH_ROWS, errors,
    prepare_one, to_i64, ttl_secs,
};
use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use ringlimit_actors::storage::{
    AlertStore, AuditStore, BillingStore, BlockStore, Range, StoreError, ViolationStore,
};
use ringlimit_protocol::pipeline::{
    Alert, AuditEntry, BillingRecord, DeadLetter, DeliveryState, IpBlock, Violation,
};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use std::collections::BTreeMap;
use std::time::Instant;

/// `pipeline_days.stream` of each time-ordered stream.
const VIOLATIONS: &str = "violations";
const AUDIT: &str = "audit";
const ALERTS: &str = "alerts";
const DEAD_LETTERS: &str = "dead_letters";
/// `pipeline_days.key_id` of the all-keys streams.
const ALL_KEYS: &str = "";
/// Records read by id concurrently for one page of alerts or dead letters.
const RECORD_READ_CONCURRENCY: usize = 16;

/// The prepared statements of the pipeline tables, each prepared once at connect.
#[derive(Debug)]
pub(super) struct Statements {
    put_day: PreparedStatement,
    get_days: PreparedStatement,
    put_violation_by_day: PreparedStatement,
    put_violation_by_key: PreparedStatement,
    violations_of_day: PreparedStatement,
    violations_of_key_day: PreparedStatement,
    put_block: PreparedStatement,
    get_block: PreparedStatement,
    all_blocks: PreparedStatement,
    del_block: PreparedStatement,
    put_audit: PreparedStatement,
    audit_of_day: PreparedStatement,
    put_alert: PreparedStatement,
    get_alert: PreparedStatement,
    put_alert_by_day: PreparedStatement,
    del_alert_by_day: PreparedStatement,
    alerts_of_day: PreparedStatement,
    put_alert_by_key: PreparedStatement,
    del_alert_by_key: PreparedStatement,
    alerts_of_key: PreparedStatement,
    put_dead: PreparedStatement,
    get_dead: PreparedStatement,
    del_dead: PreparedStatement,
    put_dead_by_day: PreparedStatement,
    del_dead_by_day: PreparedStatement,
    dead_of_day: PreparedStatement,
    put_billing_by_key: PreparedStatement,
    put_billing_by_period: PreparedStatement,
    get_billing: PreparedStatement,
    billing_of_key: PreparedStatement,
    billing_of_period: PreparedStatement,
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

/// Prepares every statement of the pipeline tables.
pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
    let p = |cql: String| prepare_one(session, cql);
    let ttl = " USING TTL ?";
    let by_day_violation_cols = format!("day, {VIOLATION_COLS}");
    Ok(Statements {
        put_day: p(insert(ks, "pipeline_days", "stream, key_id, day", ttl)).await?,
        get_days: p(format!(
            "SELECT day FROM {ks}.pipeline_days WHERE stream = ? AND key_id = ? AND day >= ? AND day <= ?"
        ))
        .await?,
        put_violation_by_day: p(insert(ks, "violations_by_day", &by_day_violation_cols, ttl)).await?,
        put_violation_by_key: p(insert(ks, "violations_by_key", &by_day_violation_cols, ttl)).await?,
        violations_of_day: p(format!(
            "SELECT {VIOLATION_COLS} FROM {ks}.violations_by_day WHERE day = ? AND at_ms >= ? AND at_ms < ?"
        ))
        .await?,
        violations_of_key_day: p(format!(
            "SELECT {VIOLATION_COLS} FROM {ks}.violations_by_key WHERE key_id = ? AND day = ? AND at_ms >= ? AND at_ms < ?"
        ))
        .await?,
        put_block: p(insert(ks, "ip_blocks", &format!("part, {BLOCK_COLS}"), "")).await?,
        get_block: p(format!("SELECT id FROM {ks}.ip_blocks WHERE part = 0 AND id = ?")).await?,
        all_blocks: p(format!("SELECT {BLOCK_COLS} FROM {ks}.ip_blocks WHERE part = 0")).await?,
        del_block: p(format!("DELETE FROM {ks}.ip_blocks WHERE part = 0 AND id = ?")).await?,
        put_audit: p(insert(ks, "audit_by_day", &format!("day, {AUDIT_COLS}"), "")).await?,
        audit_of_day: p(format!(
            "SELECT {AUDIT_COLS} FROM {ks}.audit_by_day WHERE day = ? AND at_ms >= ? AND at_ms < ?"
        ))
        .await?,
        put_alert: p(insert(ks, "alert_records", ALERT_COLS, "")).await?,
        get_alert: p(format!("SELECT {ALERT_COLS} FROM {ks}.alert_records WHERE id = ?")).await?,
        put_alert_by_day: p(insert(ks, "alerts_by_day", "day, raised_at_ms, id", "")).await?,
        del_alert_by_day: p(format!(
            "DELETE FROM {ks}.alerts_by_day WHERE day = ? AND raised_at_ms = ? AND id = ?"
        ))
        .await?,
        alerts_of_day: p(format!(
            "SELECT id FROM {ks}.alerts_by_day WHERE day = ? AND raised_at_ms >= ? AND raised_at_ms < ?"
        ))
        .await?,
        put_alert_by_key: p(insert(ks, "alerts_by_key_time", "key_id, raised_at_ms, id", "")).await?,
        del_alert_by_key: p(format!(
            "DELETE FROM {ks}.alerts_by_key_time WHERE key_id = ? AND raised_at_ms = ? AND id = ?"
        ))
        .await?,
        alerts_of_key: p(format!(
            "SELECT id FROM {ks}.alerts_by_key_time WHERE key_id = ? AND raised_at_ms >= ? AND raised_at_ms < ?"
        ))
        .await?,
        put_dead: p(insert(ks, "dead_letter_records", DEAD_COLS, "")).await?,
        get_dead: p(format!("SELECT {DEAD_COLS} FROM {ks}.dead_letter_records WHERE id = ?")).await?,
        del_dead: p(format!("DELETE FROM {ks}.dead_letter_records WHERE id = ?")).await?,
        put_dead_by_day: p(insert(ks, "dead_letters_by_day", "day, failed_at_ms, id", "")).await?,
        del_dead_by_day: p(format!(
            "DELETE FROM {ks}.dead_letters_by_day WHERE day = ? AND failed_at_ms = ? AND id = ?"
        ))
        .await?,
        dead_of_day: p(format!(
            "SELECT id FROM {ks}.dead_letters_by_day WHERE day = ? AND failed_at_ms >= ? AND failed_at_ms < ?"
        ))
        .await?,
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

// ---------------------------------------------------------------- values

/// A record's time as a `bigint`: refused above `i64::MAX - 1`, so every
/// stored time is below the bound of an open range (`to_ms = u64::MAX`).
fn time_col(what: &str, id: &str, ms: u64) -> Result<i64, StoreError> {
    i64::try_from(ms)
        .ok()
        .filter(|&t| t < i64::MAX)
        .ok_or_else(|| StoreError::Backend(format!("{what} {id:?}: time {ms} out of range")))
}

/// A count as a `bigint`, refused (not wrapped) above `i64::MAX`.
fn count_col(what: &str, id: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Backend(format!("{what} {id:?}: value {v} out of range")))
}

fn attempts_col(what: &str, id: &str, v: u32) -> Result<i32, StoreError> {
    i32::try_from(v)
        .map_err(|_| StoreError::Backend(format!("{what} {id:?}: attempts {v} out of range")))
}

/// A stored `bigint` back to `u64`; negative values are corrupt.
fn unsigned(what: &str, id: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {id:?}: negative value {v}")))
}

fn unsigned32(what: &str, id: &str, v: i32) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {id:?}: negative value {v}")))
}

/// The day partition of a time in ms.
fn day_of(ms: u64) -> i64 {
    to_i64(ms / DAY_MS)
}

fn refuse_empty(what: &str, field: &str, v: &str) -> Result<(), StoreError> {
    if v.is_empty() {
        return Err(StoreError::Backend(format!("{what}: empty {field}")));
    }
    Ok(())
}

fn encode_details(what: &str, id: &str, v: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encode {what} {id:?}: {e}")))
}

fn decode_details(
    what: &str,
    id: &str,
    v: Option<String>,
) -> Result<serde_json::Value, StoreError> {
    match v {
        None => Ok(serde_json::Value::Null),
        Some(s) => serde_json::from_str(&s)
            .map_err(|e| StoreError::Corrupt(format!("{what} {id:?}: details: {e}"))),
    }
}

/// Whether a list over `range` can have rows at all.
fn empty_range(range: &Range) -> bool {
    range.from_ms >= range.to_ms || range.limit == 0
}

/// A range's time bounds as `bigint`s: `from <= t < to`.
fn bounds(range: &Range) -> (i64, i64) {
    (to_i64(range.from_ms), to_i64(range.to_ms))
}

/// Rows of a time-ordered list, skipping `offset`, keeping at most `limit`.
#[derive(Debug)]
struct Page<T> {
    skip: usize,
    limit: usize,
    rows: Vec<T>,
}

impl<T> Page<T> {
    fn new(range: &Range) -> Self {
        Page {
            skip: range.offset,
            limit: range.limit,
            rows: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.rows.len() >= self.limit
    }

    /// Offers the next row in list order.
    fn offer(&mut self, row: T) {
        if self.skip > 0 {
            self.skip -= 1;
        } else if !self.full() {
            self.rows.push(row);
        }
    }
}

type ViolationRow = (i64, String, String, String, String, Option<String>, i64);
type BlockRow = (String, String, i64, Option<i64>, Option<String>, String);
type AuditRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);
type AlertRow = (
    String,
    i64,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    String,
    i32,
    Option<i64>,
);
type DeadRow = (String, String, String, String, i64, i32, String, String);
type BillingRow = (
    String,
    i64,
    i64,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    i64,
    String,
);

/// The values of a violation row (after `day`), in [`VIOLATION_COLS`] order.
type ViolationValues<'a> = (
    i64,
    i64,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    i64,
    i32,
);

fn violation_values(v: &Violation, ttl: i32) -> Result<ViolationValues<'_>, StoreError> {
    let at = time_col("violation", &v.id, v.at_ms)?;
    Ok((
        day_of(v.at_ms),
        at,
        v.id.as_str(),
        v.key_id.as_str(),
        v.limit_name.as_str(),
        v.node.as_str(),
        v.client_ip.as_deref(),
        count_col("violation", &v.id, v.cost)?,
        ttl,
    ))
}

fn violation_from(r: ViolationRow) -> Result<Violation, StoreError> {
    let (at, id, key_id, limit_name, node, client_ip, cost) = r;
    Ok(Violation {
        at_ms: unsigned("violation", &id, at)?,
        cost: unsigned("violation", &id, cost)?,
        id,
        key_id,
        limit_name,
        node,
        client_ip,
    })
}

fn block_from(r: BlockRow) -> Result<IpBlock, StoreError> {
    let (id, cidr, created, expires, reason, created_by) = r;
    Ok(IpBlock {
        created_at_ms: unsigned("block", &id, created)?,
        expires_at_ms: expires.map(|e| unsigned("block", &id, e)).transpose()?,
        id,
        cidr,
        reason,
        created_by,
    })
}

fn audit_from(r: AuditRow) -> Result<AuditEntry, StoreError> {
    let (at, id, actor, action, target_kind, target_id, reason, details) = r;
    Ok(AuditEntry {
        at_ms: unsigned("audit entry", &id, at)?,
        details: decode_details("audit entry", &id, details)?,
        id,
        actor,
        action,
        target_kind,
        target_id,
        reason,
    })
}

fn alert_from(r: AlertRow) -> Result<Alert, StoreError> {
    let (id, raised, key_id, kind, severity, message, details, delivery, attempts, last) = r;
    let delivery = DeliveryState::parse(&delivery).ok_or_else(|| {
        StoreError::Corrupt(format!("alert {id:?}: unknown delivery state {delivery:?}"))
    })?;
    Ok(Alert {
        raised_at_ms: unsigned("alert", &id, raised)?,
        details: decode_details("alert", &id, details)?,
        attempts: unsigned32("alert", &id, attempts)?,
        last_attempt_at_ms: last.map(|t| unsigned("alert", &id, t)).transpose()?,
        id,
        key_id,
        kind,
        severity,
        message,
        delivery,
    })
}

fn dead_from(r: DeadRow) -> Result<DeadLetter, StoreError> {
    let (id, alert_id, endpoint, url, failed, attempts, error, payload) = r;
    Ok(DeadLetter {
        failed_at_ms: unsigned("dead letter", &id, failed)?,
        attempts: unsigned32("dead letter", &id, attempts)?,
        id,
        alert_id,
        endpoint,
        url,
        error,
        payload,
    })
}

fn billing_from(r: BillingRow) -> Result<BillingRecord, StoreError> {
    let (
        key_id,
        start,
        end,
        owner,
        tier,
        units,
        included,
        overage,
        price,
        amount,
        currency,
        at,
        by,
    ) = r;
    let u = |v| unsigned("billing record", &key_id, v);
    Ok(BillingRecord {
        period_start_ms: u(start)?,
        period_end_ms: u(end)?,
        units: u(units)?,
        included_units: u(included)?,
        overage_units: u(overage)?,
        unit_price_nanos: u(price)?,
        amount_nanos: u(amount)?,
        computed_at_ms: u(at)?,
        owner,
        tier,
        currency,
        computed_by: by,
        key_id,
    })
}

// ---------------------------------------------------------------- helpers

impl ScyllaStore {
    fn pst(&self) -> &Statements {
        &self.inner.pst
    }

    /// Writes the `pipeline_days` row of a day unless done recently. `ttl` 0: none.
    async fn index_day(
        &self,
        stream: &'static str,
        key_id: &str,
        day: i64,
        ttl: i32,
    ) -> Result<(), StoreError> {
        let cache_key = (stream, key_id.to_owned(), day);
        if let Some(at) = self.inner.days_indexed.get(&cache_key)
            && at.elapsed() < INDEX_REFRESH
        {
            return Ok(());
        }
        self.exec(
            "pipeline_days",
            &self.pst().put_day,
            (stream, key_id, day, ttl),
        )
        .await?;
        if self.inner.days_indexed.len() >= INDEX_CACHE_MAX {
            self.inner.days_indexed.clear();
        }
        self.inner.days_indexed.insert(cache_key, Instant::now());
        Ok(())
    }

    /// The days of `stream` (for `key_id`) that hold data in `range`, newest first.
    async fn days(
        &self,
        what: &str,
        stream: &str,
        key_id: &str,
        range: &Range,
    ) -> Result<Vec<i64>, StoreError> {
        let (lo, hi) = (day_of(range.from_ms), day_of(range.to_ms - 1));
        let days: Vec<(i64,)> = self
            .paged(
                what,
                &self.pst().get_days,
                (stream, key_id, lo, hi),
                usize::MAX,
            )
            .await?;
        Ok(days.into_iter().map(|(d,)| d).collect())
    }

    /// Rows of a paged read, at most `max` (the rest are not fetched).
    async fn paged<R>(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
        max: usize,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + 'static,
    {
        let mut out = Vec::new();
        self.each_row(what, st, values, |r| {
            out.push(r);
            out.len() < max
        })
        .await?;
        Ok(out)
    }

    /// Feeds the rows of a paged read to `f` until it returns false.
    async fn each_row<R>(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
        mut f: impl FnMut(R) -> bool,
    ) -> Result<(), StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + 'static,
    {
        let pager = self
            .inner
            .session
            .execute_iter(st.clone(), values)
            .await
            .map_err(|e| errors::pager(what, e))?;
        let mut rows = pager
            .rows_stream::<R>()
            .map_err(|e| errors::decode(what, e))?;
        while let Some(row) = rows.next().await {
            if !f(row.map_err(|e| errors::next_row(what, e))?) {
                break;
            }
        }
        Ok(())
    }

    /// One page of a day-partitioned stream: the rows of `range` in the days
    /// `pipeline_days` lists for `(stream, index_key)`, newest day first, each
    /// read with `st` bound to `(day, from, to)`, or `(key, day, from, to)`
    /// when `part_key` is given.
    async fn page_days<R>(
        &self,
        what: &str,
        (stream, index_key): (&str, &str),
        part_key: Option<&str>,
        st: &PreparedStatement,
        range: &Range,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + 'static,
    {
        let (from, to) = bounds(range);
        let mut page = Page::new(range);
        for day in self.days(what, stream, index_key, range).await? {
            let offer = |r: R| {
                page.offer(r);
                !page.full()
            };
            match part_key {
                Some(k) => self.each_row(what, st, (k, day, from, to), offer).await?,
                None => self.each_row(what, st, (day, from, to), offer).await?,
            }
            if page.full() {
                break;
            }
        }
        Ok(page.rows)
    }

    /// Writes rows with one statement in unlogged batches of at most
    /// [`USAGE_BATCH_ROWS`]; the caller passes the rows of one partition.
    async fn batch_of<V: SerializeRow>(
        &self,
        what: &str,
        st: &PreparedStatement,
        rows: &[V],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(USAGE_BATCH_ROWS) {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in chunk {
                batch.append_statement(st.clone());
            }
            batch.set_is_idempotent(true);
            self.inner
                .session
                .batch(&batch, chunk)
                .await
                .map_err(|e| errors::execution(what, e))?;
        }
        Ok(())
    }

    /// Reads records by id in order, leaving out ids whose record is gone.
    async fn records_by_id<'a, T: Send>(
        &'a self,
        ids: Vec<String>,
        read: impl Fn(String) -> BoxFuture<'a, Result<Option<T>, StoreError>>,
    ) -> Result<Vec<T>, StoreError> {
        let reads: Vec<_> = ids.into_iter().map(read).collect();
        let mut s = stream::iter(reads).buffered(RECORD_READ_CONCURRENCY);
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            if let Some(rec) = r? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// TTL of violation rows, and of their `pipeline_days` rows (a day
    /// longer: an index row written up to an hour before the last data of
    /// its day must outlive that data).
    fn violation_ttls(&self) -> (i32, i32) {
        let data = ttl_secs(self.inner.opts.retention.violations);
        let index = (i64::from(data) + 86_400).min(MAX_TTL_SECS);
        (data, i32::try_from(index).unwrap_or(data))
    }

    async fn read_alert(&self, id: String) -> Result<Option<Alert>, StoreError> {
        let row: Option<AlertRow> = self.row("get_alert", &self.pst().get_alert, (id,)).await?;
        row.map(alert_from).transpose()
    }

    async fn read_dead_letter(&self, id: String) -> Result<Option<DeadLetter>, StoreError> {
        let row: Option<DeadRow> = self
            .row("get_dead_letter", &self.pst().get_dead, (id,))
            .await?;
        row.map(dead_from).transpose()
    }
}

// ---------------------------------------------------------------- violations

#[async_trait]
impl ViolationStore for ScyllaStore {
    async fn write_violations(&self, batch: &[Violation]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (ttl, index_ttl) = self.violation_ttls();
        // (day) and (key, day) partitions → (at, id) → values; a violation
        // repeated in one batch is written once (the last one wins).
        let mut by_day: BTreeMap<i64, BTreeMap<(i64, &str), ViolationValues<'_>>> = BTreeMap::new();
        let mut by_key: BTreeMap<(&str, i64), BTreeMap<(i64, &str), ViolationValues<'_>>> =
            BTreeMap::new();
        for v in batch {
            refuse_empty("write_violations", "violation id", &v.id)?;
            let vals = violation_values(v, ttl)?;
            let (day, at) = (vals.0, vals.1);
            by_day
                .entry(day)
                .or_default()
                .insert((at, v.id.as_str()), vals);
            by_key
                .entry((v.key_id.as_str(), day))
                .or_default()
                .insert((at, v.id.as_str()), vals);
        }
        self.bounded(
            "write_violations",
            self.inner.opts.operation_timeout,
            async {
                // The day index first, so no data is ever unlisted.
                let mut index = Vec::new();
                for &day in by_day.keys() {
                    index.push(self.index_day(VIOLATIONS, ALL_KEYS, day, index_ttl).boxed());
                }
                for &(key, day) in by_key.keys() {
                    index.push(self.index_day(VIOLATIONS, key, day, index_ttl).boxed());
                }
                self.run_all(index).await?;
                let st = self.pst();
                let mut writes: Vec<BoxFuture<'_, Result<(), StoreError>>> = Vec::new();
                let parts = by_day
                    .values()
                    .map(|rows| (&st.put_violation_by_day, rows))
                    .chain(by_key.values().map(|rows| (&st.put_violation_by_key, rows)));
                for (stmt, rows) in parts {
                    let rows: Vec<ViolationValues<'_>> = rows.values().copied().collect();
                    writes.push(
                        async move { self.batch_of("write_violations", stmt, &rows).await }.boxed(),
                    );
                }
                self.run_all(writes).await
            },
        )
        .await
    }

    async fn list_violations(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Violation>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        self.bounded("list_violations", self.inner.opts.scan_timeout, async {
            let st = self.pst();
            let rows: Vec<ViolationRow> = match key_id {
                Some(k) => {
                    self.page_days(
                        "list_violations",
                        (VIOLATIONS, k),
                        Some(k),
                        &st.violations_of_key_day,
                        &range,
                    )
                    .await?
                }
                None => {
                    self.page_days(
                        "list_violations",
                        (VIOLATIONS, ALL_KEYS),
                        None,
                        &st.violations_of_day,
                        &range,
                    )
                    .await?
                }
            };
            rows.into_iter().map(violation_from).collect()
        })
        .await
    }
}

// ---------------------------------------------------------------- blocks

#[async_trait]
impl BlockStore for ScyllaStore {
    async fn put_block(&self, block: &IpBlock) -> Result<(), StoreError> {
        let id = block.id.as_str();
        refuse_empty("put_block", "block id", id)?;
        let created = time_col("block", id, block.created_at_ms)?;
        let expires = block
            .expires_at_ms
            .map(|e| time_col("block", id, e))
            .transpose()?;
        let values = (
            0i32, // part: the block list is one partition
            id,
            block.cidr.as_str(),
            created,
            expires,
            block.reason.as_deref(),
            block.created_by.as_str(),
        );
        self.bounded(
            "put_block",
            self.inner.opts.operation_timeout,
            self.exec("put_block", &self.pst().put_block, values),
        )
        .await
    }

    async fn list_blocks(&self) -> Result<Vec<IpBlock>, StoreError> {
        self.bounded("list_blocks", self.inner.opts.operation_timeout, async {
            let rows: Vec<BlockRow> = self
                .paged("list_blocks", &self.pst().all_blocks, (), usize::MAX)
                .await?;
            rows.into_iter().map(block_from).collect()
        })
        .await
    }

    async fn delete_block(&self, id: &str) -> Result<bool, StoreError> {
        if id.is_empty() {
            return Ok(false);
        }
        self.bounded("delete_block", self.inner.opts.operation_timeout, async {
            let st = self.pst();
            let found: Option<(String,)> = self.row("delete_block", &st.get_block, (id,)).await?;
            if found.is_none() {
                return Ok(false);
            }
            self.exec("delete_block", &st.del_block, (id,)).await?;
            Ok(true)
        })
        .await
    }
}

// ---------------------------------------------------------------- audit

#[async_trait]
impl AuditStore for ScyllaStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // day → rows of that partition.
        type AuditValues<'a> = (
            i64,
            i64,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            String,
        );
        let mut parts: BTreeMap<i64, Vec<AuditValues<'_>>> = BTreeMap::new();
        for e in entries {
            refuse_empty("append_audit", "entry id", &e.id)?;
            let at = time_col("audit entry", &e.id, e.at_ms)?;
            let details = encode_details("audit entry", &e.id, &e.details)?;
            let day = day_of(e.at_ms);
            parts.entry(day).or_default().push((
                day,
                at,
                e.id.as_str(),
                e.actor.as_str(),
                e.action.as_str(),
                e.target_kind.as_str(),
                e.target_id.as_str(),
                e.reason.as_deref(),
                details,
            ));
        }
        self.bounded("append_audit", self.inner.opts.operation_timeout, async {
            let mut index = Vec::new();
            for &day in parts.keys() {
                index.push(self.index_day(AUDIT, ALL_KEYS, day, 0).boxed());
            }
            self.run_all(index).await?;
            let mut writes: Vec<BoxFuture<'_, Result<(), StoreError>>> = Vec::new();
            for rows in parts.values() {
                writes.push(
                    self.batch_of("append_audit", &self.pst().put_audit, rows)
                        .boxed(),
                );
            }
            self.run_all(writes).await
        })
        .await
    }

    async fn list_audit(&self, range: Range) -> Result<Vec<AuditEntry>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        self.bounded("list_audit", self.inner.opts.scan_timeout, async {
            let rows: Vec<AuditRow> = self
                .page_days(
                    "list_audit",
                    (AUDIT, ALL_KEYS),
                    None,
                    &self.pst().audit_of_day,
                    &range,
                )
                .await?;
            rows.into_iter().map(audit_from).collect()
        })
        .await
    }
}

// ---------------------------------------------------------------- alerts

impl ScyllaStore {
    /// Writes the index rows of an alert, then its record, then removes the
    /// index rows of a stored version with another time or key.
    async fn upsert_alert(&self, alert: &Alert, details: String) -> Result<(), StoreError> {
        let st = self.pst();
        let id = alert.id.as_str();
        let raised = time_col("alert", id, alert.raised_at_ms)?;
        let last = alert
            .last_attempt_at_ms
            .map(|t| time_col("alert", id, t))
            .transpose()?;
        let attempts = attempts_col("alert", id, alert.attempts)?;
        let old = match self.read_alert(id.to_owned()).await {
            Ok(old) => old,
            // An undecodable old record is replaced; its index rows (if they
            // differ) point at the new record, which lists it at its own time.
            Err(StoreError::Corrupt(_)) => None,
            Err(e) => return Err(e),
        };
        let day = day_of(alert.raised_at_ms);
        self.index_day(ALERTS, ALL_KEYS, day, 0).await?;
        self.exec("put_alert", &st.put_alert_by_day, (day, raised, id))
            .await?;
        if let Some(k) = alert.key_id.as_deref() {
            self.exec("put_alert", &st.put_alert_by_key, (k, raised, id))
                .await?;
        }
        let values = (
            id,
            raised,
            alert.key_id.as_deref(),
            alert.kind.as_str(),
            alert.severity.as_str(),
            alert.message.as_str(),
            details,
            alert.delivery.as_str(),
            attempts,
            last,
        );
        self.exec("put_alert", &st.put_alert, values).await?;
        let Some(old) = old else { return Ok(()) };
        let old_raised = to_i64(old.raised_at_ms);
        if old.raised_at_ms != alert.raised_at_ms {
            let old_day = day_of(old.raised_at_ms);
            self.exec(
                "put_alert (old index)",
                &st.del_alert_by_day,
                (old_day, old_raised, id),
            )
            .await?;
        }
        if let Some(k) = old.key_id.as_deref()
            && (old.raised_at_ms != alert.raised_at_ms || alert.key_id.as_deref() != Some(k))
        {
            self.exec(
                "put_alert (old index)",
                &st.del_alert_by_key,
                (k, old_raised, id),
            )
            .await?;
        }
        Ok(())
    }

    /// Ids of one key's alerts in `range`, newest first, paged.
    async fn alert_ids_of_key(
        &self,
        key_id: &str,
        range: &Range,
    ) -> Result<Vec<String>, StoreError> {
        let (from, to) = bounds(range);
        let mut page = Page::new(range);
        self.each_row(
            "list_alerts",
            &self.pst().alerts_of_key,
            (key_id, from, to),
            |(id,): (String,)| {
                page.offer(id);
                !page.full()
            },
        )
        .await?;
        Ok(page.rows)
    }

    /// Writes the day index row of a dead letter, then its record, then
    /// removes the index row of a stored version with another time.
    async fn upsert_dead_letter(&self, d: &DeadLetter) -> Result<(), StoreError> {
        let st = self.pst();
        let id = d.id.as_str();
        let failed = time_col("dead letter", id, d.failed_at_ms)?;
        let attempts = attempts_col("dead letter", id, d.attempts)?;
        let old = match self.read_dead_letter(id.to_owned()).await {
            Ok(old) => old,
            Err(StoreError::Corrupt(_)) => None,
            Err(e) => return Err(e),
        };
        let day = day_of(d.failed_at_ms);
        self.index_day(DEAD_LETTERS, ALL_KEYS, day, 0).await?;
        self.exec("put_dead_letter", &st.put_dead_by_day, (day, failed, id))
            .await?;
        let values = (
            id,
            d.alert_id.as_str(),
            d.endpoint.as_str(),
            d.url.as_str(),
            failed,
            attempts,
            d.error.as_str(),
            d.payload.as_str(),
        );
        self.exec("put_dead_letter", &st.put_dead, values).await?;
        if let Some(old) = old
            && old.failed_at_ms != d.failed_at_ms
        {
            let old_at = to_i64(old.failed_at_ms);
            self.exec(
                "put_dead_letter (old index)",
                &st.del_dead_by_day,
                (day_of(old.failed_at_ms), old_at, id),
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl AlertStore for ScyllaStore {
    async fn put_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        refuse_empty("put_alert", "alert id", &alert.id)?;
        let details = encode_details("alert", &alert.id, &alert.details)?;
        self.bounded(
            "put_alert",
            self.inner.opts.operation_timeout,
            self.upsert_alert(alert, details),
        )
        .await
    }

    async fn get_alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        if id.is_empty() {
            return Ok(None);
        }
        self.bounded(
            "get_alert",
            self.inner.opts.operation_timeout,
            self.read_alert(id.to_owned()),
        )
        .await
    }

    async fn list_alerts(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Alert>, StoreError> {
        if empty_range(&range) || key_id == Some("") {
            return Ok(Vec::new());
        }
        self.bounded("list_alerts", self.inner.opts.scan_timeout, async {
            let ids: Vec<String> = match key_id {
                Some(k) => self.alert_ids_of_key(k, &range).await?,
                None => {
                    let rows: Vec<(String,)> = self
                        .page_days(
                            "list_alerts",
                            (ALERTS, ALL_KEYS),
                            None,
                            &self.pst().alerts_of_day,
                            &range,
                        )
                        .await?;
                    rows.into_iter().map(|(id,)| id).collect()
                }
            };
            self.records_by_id(ids, |id| self.read_alert(id).boxed())
                .await
        })
        .await
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        refuse_empty("put_dead_letter", "dead letter id", &letter.id)?;
        self.bounded(
            "put_dead_letter",
            self.inner.opts.operation_timeout,
            self.upsert_dead_letter(letter),
        )
        .await
    }

    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        if id.is_empty() {
            return Ok(None);
        }
        self.bounded(
            "get_dead_letter",
            self.inner.opts.operation_timeout,
            self.read_dead_letter(id.to_owned()),
        )
        .await
    }

    async fn list_dead_letters(&self, range: Range) -> Result<Vec<DeadLetter>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        self.bounded("list_dead_letters", self.inner.opts.scan_timeout, async {
            let rows: Vec<(String,)> = self
                .page_days(
                    "list_dead_letters",
                    (DEAD_LETTERS, ALL_KEYS),
                    None,
                    &self.pst().dead_of_day,
                    &range,
                )
                .await?;
            let ids = rows.into_iter().map(|(id,)| id).collect();
            self.records_by_id(ids, |id| self.read_dead_letter(id).boxed())
                .await
        })
        .await
    }

    async fn delete_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
        if id.is_empty() {
            return Ok(false);
        }
        self.bounded(
            "delete_dead_letter",
            self.inner.opts.operation_timeout,
            async {
                let st = self.pst();
                let failed_at = match self.read_dead_letter(id.to_owned()).await {
                    Ok(Some(old)) => Some(old.failed_at_ms),
                    Ok(None) => return Ok(false),
                    // Undecodable, but there: delete the record; its index row,
                    // if any, then leads nowhere and lists skip it.
                    Err(StoreError::Corrupt(_)) => None,
                    Err(e) => return Err(e),
                };
                if let Some(at) = failed_at {
                    let key = (day_of(at), to_i64(at), id);
                    self.exec("delete_dead_letter", &st.del_dead_by_day, key)
                        .await?;
                }
                self.exec("delete_dead_letter", &st.del_dead, (id,)).await?;
                Ok(true)
            },
        )
        .await
    }
}

// ---------------------------------------------------------------- billing

#[async_trait]
impl BillingStore for ScyllaStore {
    async fn put_billing(&self, r: &BillingRecord) -> Result<(), StoreError> {
        let key = r.key_id.as_str();
        refuse_empty("put_billing", "key_id", key)?;
        let what = "billing record";
        let values = (
            key,
            time_col(what, key, r.period_start_ms)?,
            time_col(what, key, r.period_end_ms)?,
            r.owner.as_str(),
            r.tier.as_str(),
            count_col(what, key, r.units)?,
            count_col(what, key, r.included_units)?,
            count_col(what, key, r.overage_units)?,
            count_col(what, key, r.unit_price_nanos)?,
            count_col(what, key, r.amount_nanos)?,
            r.currency.as_str(),
            time_col(what, key, r.computed_at_ms)?,
            r.computed_by.as_str(),
        );
        // Boxed: the two joined writes make a large future.
        let work = Box::pin(async {
            let st = self.pst();
            let (a, b) = tokio::join!(
                self.exec("put_billing", &st.put_billing_by_key, values),
                self.exec("put_billing (by period)", &st.put_billing_by_period, values),
            );
            a.and(b)
        });
        self.bounded("put_billing", self.inner.opts.operation_timeout, work)
            .await
    }

    async fn get_billing(
        &self,
        key_id: &str,
        period_start_ms: u64,
    ) -> Result<Option<BillingRecord>, StoreError> {
        let Ok(start) = i64::try_from(period_start_ms) else {
            return Ok(None);
        };
        if key_id.is_empty() {
            return Ok(None);
        }
        self.bounded("get_billing", self.inner.opts.operation_timeout, async {
            let row: Option<BillingRow> = self
                .row("get_billing", &self.pst().get_billing, (key_id, start))
                .await?;
            row.map(billing_from).transpose()
        })
        .await
    }

    async fn list_billing_for_key(
        &self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        if key_id.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.bounded(
            "list_billing_for_key",
            self.inner.opts.operation_timeout,
            async {
                let rows: Vec<BillingRow> = self
                    .paged(
                        "list_billing_for_key",
                        &self.pst().billing_of_key,
                        (key_id,),
                        limit,
                    )
                    .await?;
                rows.into_iter().map(billing_from).collect()
            },
        )
        .await
    }

    async fn list_billing_for_period(
        &self,
        period_start_ms: u64,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        let Ok(start) = i64::try_from(period_start_ms) else {
            return Ok(Vec::new());
        };
        self.bounded(
            "list_billing_for_period",
            self.inner.opts.scan_timeout,
            async {
                let rows: Vec<BillingRow> = self
                    .paged(
                        "list_billing_for_period",
                        &self.pst().billing_of_period,
                        (start,),
                        usize::MAX,
                    )
                    .await?;
                rows.into_iter().map(billing_from).collect()
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(offset: usize, limit: usize) -> Range {
        Range {
            from_ms: 0,
            to_ms: u64::MAX,
            offset,
            limit,
        }
    }

    #[test]
    fn page_skips_then_keeps_up_to_the_limit() {
        let mut p = Page::new(&range(2, 3));
        for i in 0..10 {
            p.offer(i);
        }
        assert_eq!(p.rows, [2, 3, 4]);
        assert!(p.full());
        let mut p = Page::new(&range(usize::MAX, usize::MAX));
        p.offer(1);
        assert!(p.rows.is_empty() && !p.full());
    }

    #[test]
    fn values_out_of_range_are_refused_not_wrapped() {
        assert!(time_col("x", "i", u64::MAX).is_err());
        assert!(time_col("x", "i", i64::MAX as u64).is_err());
        assert_eq!(time_col("x", "i", 5).ok(), Some(5));
        assert!(count_col("x", "i", u64::MAX).is_err());
        assert_eq!(count_col("x", "i", i64::MAX as u64).ok(), Some(i64::MAX));
        assert!(matches!(
            unsigned("x", "i", -1),
            Err(StoreError::Corrupt(_))
        ));
        assert!(attempts_col("x", "i", u32::MAX).is_err());
    }

    #[test]
    fn open_ranges_have_bounded_days() {
        let r = range(0, 10);
        assert_eq!(day_of(r.from_ms), 0);
        assert!(day_of(r.to_ms - 1) > 0);
        assert_eq!(bounds(&r), (0, i64::MAX));
        assert!(empty_range(&Range { limit: 0, ..r }));
        assert!(empty_range(&Range {
            from_ms: 5,
            to_ms: 5,
            ..r
        }));
    }

    #[test]
    fn insert_has_one_marker_per_column() {
        let s = insert("\"k\"", "t", "a, b, c", " USING TTL ?");
        assert_eq!(
            s,
            "INSERT INTO \"k\".t (a, b, c) VALUES (?, ?, ?) USING TTL ?"
        );
    }
}
