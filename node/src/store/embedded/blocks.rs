//! IP blocks in the embedded store: `blocks`, one JSON record per id.

use super::common::{EmbeddedStore, db_err, encode};
use super::tables::BLOCKS;
use crate::store::shared::decode_json;
use async_trait::async_trait;
use redb::ReadableTable;
use ringlimit_actors::storage::{BlockStore, StoreError};
use ringlimit_protocol::pipeline::IpBlock;

#[async_trait]
impl BlockStore for EmbeddedStore {
    async fn put_block(&self, block: &IpBlock) -> Result<(), StoreError> {
        let block = block.clone();
        self.blocking(move |db| {
            let bytes = encode("block", &block.id, &block)?;
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(BLOCKS)
                .map_err(db_err)?
                .insert(block.id.as_str(), bytes.as_slice())
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_blocks(&self) -> Result<Vec<IpBlock>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(BLOCKS).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t.iter().map_err(db_err)? {
                let (k, v) = e.map_err(db_err)?;
                out.push(decode_json("block", k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_block(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let existed = tx
                .open_table(BLOCKS)
                .map_err(db_err)?
                .remove(id.as_str())
                .map_err(db_err)?
                .is_some();
            tx.commit().map_err(db_err)?;
            Ok(existed)
        })
        .await
    }
}
