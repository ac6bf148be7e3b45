//! Billing records on ScyllaDB: `billing_by_key` (newest period first per
//! key) and `billing_by_period` (key_id order per period).

use super::common::refuse_empty;
use super::rows::{BillingRow, billing_from, count_col, time_col};
use super::session::ScyllaStore;
use async_trait::async_trait;
use ringlimit_actors::storage::{BillingStore, StoreError};
use ringlimit_protocol::pipeline::BillingRecord;

#[async_trait]
impl BillingStore for ScyllaStore {
    async fn put_billing(&self, r: &BillingRecord) -> Result<(), StoreError> {
        let key = r.key_id.as_str();
        refuse_empty("put_billing", "key_id", key)?;
        let what = "billing record";
        let values = (
            key,
            time_col(what, key, r.period_start_ms)?,
            time_col(what, key, r.period_end_ms)?,
            r.owner.as_str(),
            r.tier.as_str(),
            count_col(what, key, r.units)?,
            count_col(what, key, r.included_units)?,
            count_col(what, key, r.overage_units)?,
            count_col(what, key, r.unit_price_nanos)?,
            count_col(what, key, r.amount_nanos)?,
            r.currency.as_str(),
            time_col(what, key, r.computed_at_ms)?,
            r.computed_by.as_str(),
        );
        // Boxed: the two joined writes make a large future.
        let work = Box::pin(async {
            let st = self.pst();
            let (a, b) = tokio::join!(
                self.exec("put_billing", &st.put_billing_by_key, values),
                self.exec("put_billing (by period)", &st.put_billing_by_period, values),
            );
            a.and(b)
        });
        self.bounded("put_billing", self.inner.opts.operation_timeout, work)
            .await
    }

    async fn get_billing(
        &self,
        key_id: &str,
        period_start_ms: u64,
    ) -> Result<Option<BillingRecord>, StoreError> {
        let Ok(start) = i64::try_from(period_start_ms) else {
            return Ok(None);
        };
        if key_id.is_empty() {
            return Ok(None);
        }
        self.bounded("get_billing", self.inner.opts.operation_timeout, async {
            let row: Option<BillingRow> = self
                .row("get_billing", &self.pst().get_billing, (key_id, start))
                .await?;
            row.map(billing_from).transpose()
        })
        .await
    }

    async fn list_billing_for_key(
        &self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        if key_id.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.bounded(
            "list_billing_for_key",
            self.inner.opts.operation_timeout,
            async {
                let rows: Vec<BillingRow> = self
                    .paged(
                        "list_billing_for_key",
                        &self.pst().billing_of_key,
                        (key_id,),
                        limit,
                    )
                    .await?;
                rows.into_iter().map(billing_from).collect()
            },
        )
        .await
    }

    async fn list_billing_for_period(
        &self,
        period_start_ms: u64,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        let Ok(start) = i64::try_from(period_start_ms) else {
            return Ok(Vec::new());
        };
        self.bounded(
            "list_billing_for_period",
            self.inner.opts.scan_timeout,
            async {
                let rows: Vec<BillingRow> = self
                    .paged(
                        "list_billing_for_period",
                        &self.pst().billing_of_period,
                        (start,),
                        usize::MAX,
                    )
                    .await?;
                rows.into_iter().map(billing_from).collect()
            },
        )
        .await
    }
}
