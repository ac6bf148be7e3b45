//! IP/CIDR blocks: creating, deleting, reloading and expiring them.

use super::{AdminError, Change, Service, invalid};
use crate::blocks::Cidr;
use crate::storage::StoreError;

/// Longest block expiry: one year.
pub const MAX_BLOCK_EXPIRY_MS: u64 = 365 * 86_400_000;

impl Service {
    /// Adds a block (`expires_in_ms` from now, or forever).
    pub async fn create_block(
        &self,
        cidr: &str,
        expires_in_ms: Option<u64>,
        reason: Option<String>,
        actor: &str,
    ) -> Result<ringlimit_protocol::pipeline::IpBlock, AdminError> {
        let c = Cidr::parse(cidr).map_err(|m| invalid("cidr", m))?;
        if let Some(e) = expires_in_ms
            && (e == 0 || e > MAX_BLOCK_EXPIRY_MS)
        {
            return Err(invalid(
                "expires_in_ms",
                "must be between 1 and 31536000000 (one year)",
            ));
        }
        if reason.as_ref().is_some_and(|r| r.len() > 512) {
            return Err(invalid("reason", "must be at most 512 characters"));
        }
        let now = self.now_ms();
        let mut id = [0u8; 12];
        (self.random)(&mut id);
        let block = ringlimit_protocol::pipeline::IpBlock {
            id: format!("blk_{}", hex::encode(id)),
            cidr: c.to_string(),
            created_at_ms: now,
            expires_at_ms: expires_in_ms.map(|e| now + e),
            reason: reason.clone(),
            created_by: actor.to_string(),
        };
        self.store.put_block(&block).await?;
        self.reload_blocks().await?;
        self.changed(Change::Blocks);
        self.audit(
            actor,
            "block.create",
            "block",
            &block.id,
            reason,
            serde_json::json!({ "cidr": block.cidr, "expires_at_ms": block.expires_at_ms }),
        );
        Ok(block)
    }

    /// Removes a block.
    pub async fn delete_block(
        &self,
        id: &str,
        actor: &str,
        action: &str,
    ) -> Result<(), AdminError> {
        if !self.store.delete_block(id).await? {
            return Err(AdminError::NotFound(format!("block {id}")));
        }
        self.reload_blocks().await?;
        self.changed(Change::Blocks);
        self.audit(actor, action, "block", id, None, serde_json::Value::Null);
        Ok(())
    }

    /// Re-reads the block list from the store.
    pub async fn reload_blocks(&self) -> Result<(), StoreError> {
        self.blocks.set(self.store.list_blocks().await?);
        Ok(())
    }

    /// Deletes expired blocks from the store (each expiry is audited once).
    pub async fn expire_blocks(&self) -> Result<usize, StoreError> {
        let now = self.now_ms();
        let mut n = 0;
        for b in self.store.list_blocks().await? {
            if b.expires_at_ms.is_some_and(|t| t <= now) && self.store.delete_block(&b.id).await? {
                n += 1;
                if let Some(p) = self.pipelines.as_ref() {
                    p.audit(ringlimit_protocol::pipeline::AuditEntry {
                        id: crate::pipeline::stable_id(&["block.expire", &b.id]),
                        at_ms: b.expires_at_ms.unwrap_or(now),
                        actor: "system".into(),
                        action: "block.expire".into(),
                        target_kind: "block".into(),
                        target_id: b.id.clone(),
                        reason: Some("expiry reached".into()),
                        details: serde_json::json!({ "cidr": b.cidr, "expires_at_ms": b.expires_at_ms }),
                    });
                }
            }
        }
        if n > 0 {
            self.reload_blocks().await?;
            self.changed(Change::Blocks);
        }
        Ok(n)
    }
}
