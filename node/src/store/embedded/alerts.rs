//! Alerts and dead letters in the embedded store: records by id and
//! their time (and key) indexes.

use super::common::{EmbeddedStore, db_err, encode};
use super::tables::{ALERTS, ALERTS_BY_KEY, ALERTS_BY_TIME, DEAD_BY_TIME, DEAD_LETTERS};
use crate::store::shared::{decode_json, empty_range, page};
use async_trait::async_trait;
use redb::ReadableTable;
use ringlimit_actors::storage::{AlertStore, Range, StoreError};
use ringlimit_protocol::pipeline::{Alert, DeadLetter};

#[async_trait]
impl AlertStore for EmbeddedStore {
    async fn put_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        let alert = alert.clone();
        self.blocking(move |db| {
            let bytes = encode("alert", &alert.id, &alert)?;
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(ALERTS).map_err(db_err)?;
                let mut by_time = tx.open_table(ALERTS_BY_TIME).map_err(db_err)?;
                let mut by_key = tx.open_table(ALERTS_BY_KEY).map_err(db_err)?;
                let old: Option<Alert> = match t.get(alert.id.as_str()).map_err(db_err)? {
                    Some(b) => Some(decode_json("alert", &alert.id, b.value())?),
                    None => None,
                };
                if let Some(old) = old {
                    by_time
                        .remove((old.raised_at_ms, old.id.as_str()))
                        .map_err(db_err)?;
                    if let Some(k) = &old.key_id {
                        by_key
                            .remove((k.as_str(), old.raised_at_ms, old.id.as_str()))
                            .map_err(db_err)?;
                    }
                }
                t.insert(alert.id.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
                by_time
                    .insert((alert.raised_at_ms, alert.id.as_str()), ())
                    .map_err(db_err)?;
                if let Some(k) = &alert.key_id {
                    by_key
                        .insert((k.as_str(), alert.raised_at_ms, alert.id.as_str()), ())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get_alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(ALERTS).map_err(db_err)?;
            match t.get(id.as_str()).map_err(db_err)? {
                Some(b) => Ok(Some(decode_json("alert", &id, b.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_alerts(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Alert>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        let key_id = key_id.map(str::to_owned);
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(ALERTS).map_err(db_err)?;
            let ids = match &key_id {
                Some(k) => {
                    let by_key = tx.open_table(ALERTS_BY_KEY).map_err(db_err)?;
                    let it = by_key
                        .range((k.as_str(), range.from_ms, "")..(k.as_str(), range.to_ms, ""))
                        .map_err(db_err)?
                        .rev()
                        .map(|e| e.map_err(db_err).map(|(k, _)| k.value().2.to_owned()));
                    page(it, range)?
                }
                None => {
                    let by_time = tx.open_table(ALERTS_BY_TIME).map_err(db_err)?;
                    let it = by_time
                        .range((range.from_ms, "")..(range.to_ms, ""))
                        .map_err(db_err)?
                        .rev()
                        .map(|e| e.map_err(db_err).map(|(k, _)| k.value().1.to_owned()));
                    page(it, range)?
                }
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(b) = t.get(id.as_str()).map_err(db_err)? {
                    out.push(decode_json("alert", &id, b.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let letter = letter.clone();
        self.blocking(move |db| {
            let bytes = encode("dead letter", &letter.id, &letter)?;
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
                let mut by_time = tx.open_table(DEAD_BY_TIME).map_err(db_err)?;
                let old: Option<DeadLetter> = match t.get(letter.id.as_str()).map_err(db_err)? {
                    Some(b) => Some(decode_json("dead letter", &letter.id, b.value())?),
                    None => None,
                };
                if let Some(old) = old {
                    by_time
                        .remove((old.failed_at_ms, old.id.as_str()))
                        .map_err(db_err)?;
                }
                t.insert(letter.id.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
                by_time
                    .insert((letter.failed_at_ms, letter.id.as_str()), ())
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
            match t.get(id.as_str()).map_err(db_err)? {
                Some(b) => Ok(Some(decode_json("dead letter", &id, b.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_dead_letters(&self, range: Range) -> Result<Vec<DeadLetter>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
            let by_time = tx.open_table(DEAD_BY_TIME).map_err(db_err)?;
            let it = by_time
                .range((range.from_ms, "")..(range.to_ms, ""))
                .map_err(db_err)?
                .rev()
                .map(|e| e.map_err(db_err).map(|(k, _)| k.value().1.to_owned()));
            let ids = page(it, range)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(b) = t.get(id.as_str()).map_err(db_err)? {
                    out.push(decode_json("dead letter", &id, b.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let existed = {
                let mut t = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
                let old: Option<DeadLetter> = match t.remove(id.as_str()).map_err(db_err)? {
                    Some(b) => Some(decode_json("dead letter", &id, b.value())?),
                    None => None,
                };
                if let Some(old) = &old {
                    tx.open_table(DEAD_BY_TIME)
                        .map_err(db_err)?
                        .remove((old.failed_at_ms, old.id.as_str()))
                        .map_err(db_err)?;
                }
                old.is_some()
            };
            tx.commit().map_err(db_err)?;
            Ok(existed)
        })
        .await
    }
}
