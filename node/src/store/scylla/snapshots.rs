//! Counter snapshots on ScyllaDB: one `counter_snapshots` row per key.

use super::common::now_ts;
use super::session::ScyllaStore;
use async_trait::async_trait;
use futures_util::FutureExt;
use ringlimit_actors::storage::{SnapshotStore, StoreError};
use std::collections::BTreeMap;

#[async_trait]
impl SnapshotStore for ScyllaStore {
    async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.iter().any(|(id, _)| id.is_empty()) {
            return Err(StoreError::Backend("save_snapshots: empty key_id".into()));
        }
        // The last snapshot of a key repeated in one batch wins.
        let latest: BTreeMap<&str, &[u8]> = batch
            .iter()
            .map(|(id, b)| (id.as_str(), b.as_slice()))
            .collect();
        let at = now_ts();
        let mut writes = Vec::with_capacity(latest.len());
        for (id, bytes) in latest {
            writes.push(
                self.exec(
                    "save_snapshots",
                    &self.inner.st.put_snapshot,
                    (id, bytes, at),
                )
                .boxed(),
            );
        }
        self.bounded(
            "save_snapshots",
            self.inner.opts.operation_timeout,
            self.run_all(writes),
        )
        .await
    }

    async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if key_id.is_empty() {
            return Ok(None);
        }
        self.bounded("load_snapshot", self.inner.opts.operation_timeout, async {
            let row: Option<(Option<Vec<u8>>,)> = self
                .row("load_snapshot", &self.inner.st.get_snapshot, (key_id,))
                .await?;
            Ok(row.map(|(b,)| b.unwrap_or_default()))
        })
        .await
    }
}
