//! Counter snapshots in the embedded store: `snapshots`, opaque bytes per key.

use super::common::{EmbeddedStore, db_err};
use super::tables::SNAPSHOTS;
use super::usage::put_usage;
use async_trait::async_trait;
use ringlimit_actors::courtesy::Courtesy;
use ringlimit_actors::storage::{SnapshotStore, StoreError, UsageRow};

/// Writes snapshots in a write transaction.
fn put_snapshots(
    tx: &redb::WriteTransaction,
    batch: &[(String, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut snaps = tx.open_table(SNAPSHOTS).map_err(db_err)?;
    let mut courtesy = Courtesy::default();
    for (key_id, bytes) in batch {
        courtesy.tick();
        snaps
            .insert(key_id.as_str(), bytes.as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

#[async_trait]
impl SnapshotStore for EmbeddedStore {
    async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let write = |db: &redb::Database, batch: &[(String, Vec<u8>)]| {
            let tx = db.begin_write().map_err(db_err)?;
            put_snapshots(&tx, batch)?;
            tx.commit().map_err(db_err)
        };
        if let Some(r) = self.inline(|db| write(db, batch)) {
            return r;
        }
        let batch = batch.to_vec();
        self.blocking(move |db| write(db, &batch)).await
    }

    /// Snapshots and usage rows in one write transaction: one commit (and
    /// one fsync) per flush.
    async fn save_flush(
        &self,
        snapshots: &[(String, Vec<u8>)],
        usage: &[UsageRow],
    ) -> Result<bool, StoreError> {
        let write = |db: &redb::Database, snapshots: &[(String, Vec<u8>)], usage: &[UsageRow]| {
            let tx = db.begin_write().map_err(db_err)?;
            put_snapshots(&tx, snapshots)?;
            put_usage(&tx, usage)?;
            tx.commit().map_err(db_err)?;
            Ok(true)
        };
        // On the write-behind's own thread: written right there, from the
        // borrowed batch.
        if let Some(r) = self.inline(|db| write(db, snapshots, usage)) {
            return r;
        }
        let snapshots = snapshots.to_vec();
        let usage = usage.to_vec();
        self.blocking(move |db| write(db, &snapshots, &usage)).await
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
