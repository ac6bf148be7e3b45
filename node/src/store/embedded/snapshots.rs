//! Counter snapshots in the embedded store: `snapshots`, opaque bytes per key.

use super::common::{EmbeddedStore, db_err};
use super::tables::SNAPSHOTS;
use super::tables::USAGE;
use crate::store::shared::granularity_code;
use async_trait::async_trait;
use ringlimit_actors::storage::{SnapshotStore, StoreError, UsageRow};

#[async_trait]
impl SnapshotStore for EmbeddedStore {
    async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut snaps = tx.open_table(SNAPSHOTS).map_err(db_err)?;
                for (key_id, bytes) in &batch {
                    snaps
                        .insert(key_id.as_str(), bytes.as_slice())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    /// Snapshots and usage rows in one write transaction: one commit (and
    /// one fsync) per flush.
    async fn save_flush(
        &self,
        snapshots: &[(String, Vec<u8>)],
        usage: &[UsageRow],
    ) -> Result<bool, StoreError> {
        let snapshots = snapshots.to_vec();
        let usage = usage.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut snaps = tx.open_table(SNAPSHOTS).map_err(db_err)?;
                for (key_id, bytes) in &snapshots {
                    snaps
                        .insert(key_id.as_str(), bytes.as_slice())
                        .map_err(db_err)?;
                }
                let mut rows = tx.open_table(USAGE).map_err(db_err)?;
                for r in &usage {
                    let k = (
                        r.key_id.as_str(),
                        granularity_code(r.granularity),
                        r.bucket_start_ms,
                        r.writer.as_str(),
                    );
                    rows.insert(k, r.units).map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let snaps = tx.open_table(SNAPSHOTS).map_err(db_err)?;
            Ok(snaps
                .get(key_id.as_str())
                .map_err(db_err)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }
}
