//! Tiers in the embedded store: `tiers`, one JSON record per tier.

use super::common::{EmbeddedStore, db_err, encode};
use super::tables::TIERS;
use crate::store::shared::decode_json;
use async_trait::async_trait;
use redb::ReadableTable;
use ringlimit_actors::storage::{StoreError, TierRecord, TierStore};

#[async_trait]
impl TierStore for EmbeddedStore {
    async fn put_tier(&self, tier: &TierRecord) -> Result<(), StoreError> {
        let name = tier.name.clone();
        let json = encode("tier", &name, tier)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(TIERS)
                .map_err(db_err)?
                .insert(name.as_str(), json.as_slice())
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_tiers(&self) -> Result<Vec<TierRecord>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let tiers = tx.open_table(TIERS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in tiers.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                out.push(decode_json("tier", k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }
}
