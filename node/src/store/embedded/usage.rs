//! Usage history in the embedded store: `usage`, one row per (key,
//! granularity, bucket, writer), read by one range scan.

use super::common::{EmbeddedStore, db_err};
use super::tables::USAGE;
use crate::store::shared::granularity_code;
use async_trait::async_trait;
use ringlimit_actors::storage::{BucketSum, StoreError, UsageRow, UsageStore};
use ringlimit_protocol::admin::{Granularity, UsageBucket};

/// Writes usage rows (absolute values) in a write transaction.
pub(super) fn put_usage(tx: &redb::WriteTransaction, rows: &[UsageRow]) -> Result<(), StoreError> {
    let mut usage = tx.open_table(USAGE).map_err(db_err)?;
    let mut courtesy = ringlimit_actors::courtesy::Courtesy::default();
    for r in rows {
        courtesy.tick();
        let k = (
            r.key_id.as_str(),
            granularity_code(r.granularity),
            r.bucket_start_ms,
            r.writer.as_str(),
        );
        // A writer's total of a bucket only grows: a stale copy written
        // later (adopted from an older snapshot) never lowers it.
        let prev = usage.insert(k, r.units).map_err(db_err)?.map(|g| g.value());
        if let Some(p) = prev
            && p > r.units
        {
            usage.insert(k, p).map_err(db_err)?;
        }
    }
    Ok(())
}

#[async_trait]
impl UsageStore for EmbeddedStore {
    async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let write = |db: &redb::Database, rows: &[UsageRow]| {
            let tx = db.begin_write().map_err(db_err)?;
            put_usage(&tx, rows)?;
            tx.commit().map_err(db_err)
        };
        if let Some(r) = self.inline(|db| write(db, rows)) {
            return r;
        }
        let rows = rows.to_vec();
        self.blocking(move |db| write(db, &rows)).await
    }

    async fn usage_history(
        &self,
        key_id: &str,
        granularity: Granularity,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        let key_id = key_id.to_owned();
        let g = granularity_code(granularity);
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let usage = tx.open_table(USAGE).map_err(db_err)?;
            // "" is the smallest writer: [(from, ""), (to, "")) covers every
            // writer of every bucket starting in [from, to).
            let lo = (key_id.as_str(), g, from_ms, "");
            let hi = (key_id.as_str(), g, to_ms, "");
            let mut out = BucketSum::default();
            for entry in usage.range(lo..hi).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let (_, _, start_ms, _) = k.value();
                let units = v.value();
                out.add(start_ms, units);
            }
            Ok(out.finish())
        })
        .await
    }
}
