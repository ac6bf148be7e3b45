//! Audit entries in the embedded store: `audit`, by time.

use super::common::{EmbeddedStore, db_err, encode};
use super::tables::AUDIT;
use crate::store::shared::{decode_json, empty_range};
use async_trait::async_trait;
use ringlimit_actors::storage::{AuditStore, Range, StoreError};
use ringlimit_protocol::pipeline::AuditEntry;

#[async_trait]
impl AuditStore for EmbeddedStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(AUDIT).map_err(db_err)?;
                for e in &entries {
                    let bytes = encode("audit entry", &e.id, e)?;
                    t.insert((e.at_ms, e.id.as_str()), bytes.as_slice())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_audit(&self, range: Range) -> Result<Vec<AuditEntry>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(AUDIT).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t
                .range((range.from_ms, "")..(range.to_ms, ""))
                .map_err(db_err)?
                .rev()
                .skip(range.offset)
                .take(range.limit)
            {
                let (k, v) = e.map_err(db_err)?;
                out.push(decode_json("audit entry", k.value().1, v.value())?);
            }
            Ok(out)
        })
        .await
    }
}
