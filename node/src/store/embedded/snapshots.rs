//! Counter snapshots in the embedded store: `snapshots`, opaque bytes per key.

use super::common::{EmbeddedStore, db_err};
use super::tables::SNAPSHOTS;
use async_trait::async_trait;
use ringlimit_actors::storage::{SnapshotStore, StoreError};

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
