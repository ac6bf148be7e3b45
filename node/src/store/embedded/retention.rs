//! Retention of the embedded store (the counterpart of ScyllaDB's TTLs).

use super::common::{EmbeddedStore, db_err};
use super::tables::{USAGE, VIOLATIONS, VIOLATIONS_BY_KEY};
use redb::ReadableTableMetadata;
use ringlimit_actors::storage::{Retention, StoreError};
use ringlimit_protocol::admin::Granularity;

impl EmbeddedStore {
    /// Deletes usage buckets and violations older than `retention` allows
    /// (the embedded counterpart of ScyllaDB's TTLs). Returns the rows deleted.
    pub async fn apply_retention(
        &self,
        now_ms: u64,
        retention: Retention,
    ) -> Result<u64, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let mut deleted = 0u64;
            {
                let mut usage = tx.open_table(USAGE).map_err(db_err)?;
                let cutoff = |code: u8| {
                    let g = match code {
                        0 => Granularity::Minute,
                        1 => Granularity::Hour,
                        _ => Granularity::Day,
                    };
                    now_ms.saturating_sub(retention.usage(g).as_millis() as u64)
                };
                let before = usage.len().map_err(db_err)?;
                usage
                    .retain(|(_, g, start, _), _| start >= cutoff(g))
                    .map_err(db_err)?;
                deleted += before - usage.len().map_err(db_err)?;
                let vcut = now_ms.saturating_sub(retention.violations.as_millis() as u64);
                let mut v = tx.open_table(VIOLATIONS).map_err(db_err)?;
                let before = v.len().map_err(db_err)?;
                v.retain(|(at, _), _| at >= vcut).map_err(db_err)?;
                deleted += before - v.len().map_err(db_err)?;
                let mut vk = tx.open_table(VIOLATIONS_BY_KEY).map_err(db_err)?;
                vk.retain(|(_, at, _), _| at >= vcut).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(deleted)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlimit_actors::storage::{Range, UsageRow, UsageStore, ViolationStore};
    use ringlimit_protocol::pipeline::Violation;

    #[tokio::test]
    async fn retention_deletes_only_what_is_older_than_its_granularity_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        const DAY: u64 = 86_400_000;
        let now = 1_000 * DAY;
        let row = |g, start| UsageRow {
            key_id: "k".into(),
            granularity: g,
            bucket_start_ms: start,
            writer: "w".into(),
            units: 1,
        };
        s.write_usage(&[
            row(Granularity::Minute, now - 8 * DAY),
            row(Granularity::Minute, now - DAY),
            row(Granularity::Hour, now - 8 * DAY),
            row(Granularity::Day, now - 100 * DAY),
        ])
        .await
        .unwrap();
        let v = |id: &str, at| Violation {
            id: id.into(),
            key_id: "k".into(),
            limit_name: "l".into(),
            node: "n".into(),
            at_ms: at,
            client_ip: None,
            cost: 1,
        };
        s.write_violations(&[v("old", now - 91 * DAY), v("new", now - DAY)])
            .await
            .unwrap();
        let deleted = s.apply_retention(now, Retention::default()).await.unwrap();
        assert_eq!(
            deleted, 2,
            "the 8-day-old minute bucket and the 91-day-old violation"
        );
        let all = |g| s.usage_history("k", g, 0, u64::MAX);
        assert_eq!(all(Granularity::Minute).await.unwrap().len(), 1);
        assert_eq!(all(Granularity::Hour).await.unwrap().len(), 1);
        assert_eq!(all(Granularity::Day).await.unwrap().len(), 1);
        let range = Range {
            from_ms: 0,
            to_ms: u64::MAX,
            offset: 0,
            limit: 10,
        };
        let left = s.list_violations(Some("k"), range).await.unwrap();
        assert_eq!(
            left.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
            vec!["new"]
        );
        assert_eq!(s.list_violations(None, range).await.unwrap().len(), 1);
    }
}
