//! Keys in the embedded store: `keys`, JSON records by key_id.

use super::common::{EmbeddedStore, db_err, encode};
use super::tables::KEYS;
use crate::store::shared::decode_json;
use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata};
use ringlimit_actors::keys::KeyRecord;
use ringlimit_actors::storage::{KeyFilter, KeyStore, StoreError};
use std::ops::Bound;

fn decode_key(id: &str, bytes: &[u8]) -> Result<KeyRecord, StoreError> {
    decode_json("key", id, bytes)
}

#[async_trait]
impl KeyStore for EmbeddedStore {
    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        let json = encode("key", &key.key_id, &key)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(KEYS)
                .map_err(db_err)?
                .insert(key.key_id.as_str(), json.as_slice())
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let keys = tx.open_table(KEYS).map_err(db_err)?;
            match keys.get(key_id.as_str()).map_err(db_err)? {
                Some(v) => decode_key(&key_id, v.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let filter = filter.clone();
        let after = after.map(str::to_owned);
        self.blocking(move |db| {
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            let tx = db.begin_read().map_err(db_err)?;
            let keys = tx.open_table(KEYS).map_err(db_err)?;
            let lower = match after.as_deref() {
                Some(a) => Bound::Excluded(a),
                None => Bound::Unbounded,
            };
            for entry in keys
                .range::<&str>((lower, Bound::Unbounded))
                .map_err(db_err)?
            {
                let (k, v) = entry.map_err(db_err)?;
                let rec = decode_key(k.value(), v.value())?;
                if filter.matches(&rec) {
                    out.push(rec);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn load_all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let keys = tx.open_table(KEYS).map_err(db_err)?;
            let mut out =
                Vec::with_capacity(usize::try_from(keys.len().map_err(db_err)?).unwrap_or(0));
            for entry in keys.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                out.push(decode_key(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }
}
