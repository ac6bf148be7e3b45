//! Violations in the embedded store: `violations` by time and the
//! `violations_by_key` index.

use super::common::{EmbeddedStore, db_err, encode};
use super::tables::{VIOLATIONS, VIOLATIONS_BY_KEY};
use crate::store::shared::{decode_json, empty_range, page};
use async_trait::async_trait;
use ringlimit_actors::storage::{Range, StoreError, ViolationStore};
use ringlimit_protocol::pipeline::Violation;

#[async_trait]
impl ViolationStore for EmbeddedStore {
    async fn write_violations(&self, batch: &[Violation]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(VIOLATIONS).map_err(db_err)?;
                let mut by_key = tx.open_table(VIOLATIONS_BY_KEY).map_err(db_err)?;
                for v in &batch {
                    let bytes = encode("violation", &v.id, v)?;
                    t.insert((v.at_ms, v.id.as_str()), bytes.as_slice())
                        .map_err(db_err)?;
                    by_key
                        .insert((v.key_id.as_str(), v.at_ms, v.id.as_str()), ())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_violations(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Violation>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        let key_id = key_id.map(str::to_owned);
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(VIOLATIONS).map_err(db_err)?;
            let keys: Vec<(u64, String)> = match &key_id {
                Some(k) => {
                    let by_key = tx.open_table(VIOLATIONS_BY_KEY).map_err(db_err)?;
                    let it = by_key
                        .range((k.as_str(), range.from_ms, "")..(k.as_str(), range.to_ms, ""))
                        .map_err(db_err)?
                        .rev()
                        .map(|e| {
                            e.map_err(db_err).map(|(k, _)| {
                                let (_, at, id) = k.value();
                                (at, id.to_owned())
                            })
                        });
                    page(it, range)?
                }
                None => {
                    let it = t
                        .range((range.from_ms, "")..(range.to_ms, ""))
                        .map_err(db_err)?
                        .rev()
                        .map(|e| {
                            e.map_err(db_err).map(|(k, _)| {
                                let (at, id) = k.value();
                                (at, id.to_owned())
                            })
                        });
                    page(it, range)?
                }
            };
            let mut out = Vec::with_capacity(keys.len());
            for (at, id) in keys {
                if let Some(b) = t.get((at, id.as_str())).map_err(db_err)? {
                    out.push(decode_json("violation", &id, b.value())?);
                }
            }
            Ok(out)
        })
        .await
    }
}
