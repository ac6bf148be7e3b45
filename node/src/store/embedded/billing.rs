//! Billing records in the embedded store: `billing` by key and period,
//! and the `billing_by_period` index.

use super::common::{EmbeddedStore, db_err, encode};
use super::tables::{BILLING, BILLING_BY_PERIOD};
use crate::store::shared::decode_json;
use async_trait::async_trait;
use ringlimit_actors::storage::{BillingStore, StoreError};
use ringlimit_protocol::pipeline::BillingRecord;

#[async_trait]
impl BillingStore for EmbeddedStore {
    async fn put_billing(&self, record: &BillingRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.blocking(move |db| {
            let bytes = encode("billing record", &r.key_id, &r)?;
            let tx = db.begin_write().map_err(db_err)?;
            {
                tx.open_table(BILLING)
                    .map_err(db_err)?
                    .insert((r.key_id.as_str(), r.period_start_ms), bytes.as_slice())
                    .map_err(db_err)?;
                tx.open_table(BILLING_BY_PERIOD)
                    .map_err(db_err)?
                    .insert((r.period_start_ms, r.key_id.as_str()), ())
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get_billing(
        &self,
        key_id: &str,
        period_start_ms: u64,
    ) -> Result<Option<BillingRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(BILLING).map_err(db_err)?;
            match t.get((key_id.as_str(), period_start_ms)).map_err(db_err)? {
                Some(b) => Ok(Some(decode_json("billing record", &key_id, b.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_billing_for_key(
        &self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(BILLING).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t
                .range((key_id.as_str(), 0)..=(key_id.as_str(), u64::MAX))
                .map_err(db_err)?
                .rev()
                .take(limit)
            {
                let (_, v) = e.map_err(db_err)?;
                out.push(decode_json("billing record", &key_id, v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn list_billing_for_period(
        &self,
        period_start_ms: u64,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(BILLING).map_err(db_err)?;
            let by_period = tx.open_table(BILLING_BY_PERIOD).map_err(db_err)?;
            let mut out = Vec::new();
            for e in by_period
                .range((period_start_ms, "")..(period_start_ms.saturating_add(1), ""))
                .map_err(db_err)?
            {
                let (k, _) = e.map_err(db_err)?;
                let (_, key_id) = k.value();
                if let Some(b) = t.get((key_id, period_start_ms)).map_err(db_err)? {
                    out.push(decode_json("billing record", key_id, b.value())?);
                }
            }
            Ok(out)
        })
        .await
    }
}
