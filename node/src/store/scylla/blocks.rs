//! IP blocks on ScyllaDB: one `ip_blocks` partition, read whole in id order.

use super::common::refuse_empty;
use super::rows::{BlockRow, block_from, time_col};
use super::session::ScyllaStore;
use async_trait::async_trait;
use ringlimit_actors::storage::{BlockStore, StoreError};
use ringlimit_protocol::pipeline::IpBlock;

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
