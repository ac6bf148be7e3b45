//! Tiers on ScyllaDB: one `tiers` row per tier, its limits as JSON.

use super::common::now_ts;
use super::errors;
use super::session::ScyllaStore;
use crate::store::shared::{decode_json, encode_json};
use async_trait::async_trait;
use futures_util::stream::StreamExt;
use ringlimit_actors::storage::{StoreError, TierRecord, TierStore};
use ringlimit_protocol::LimitSpec;

#[async_trait]
impl TierStore for ScyllaStore {
    async fn put_tier(&self, tier: &TierRecord) -> Result<(), StoreError> {
        if tier.name.is_empty() {
            return Err(StoreError::Backend("put_tier: empty tier name".into()));
        }
        let limits = encode_json("tier", &tier.name, &tier.limits)?;
        self.bounded(
            "put_tier",
            self.inner.opts.operation_timeout,
            self.exec(
                "put_tier",
                &self.inner.st.put_tier,
                (tier.name.as_str(), limits, now_ts()),
            ),
        )
        .await
    }

    async fn list_tiers(&self) -> Result<Vec<TierRecord>, StoreError> {
        self.bounded("list_tiers", self.inner.opts.scan_timeout, async {
            let pager = self
                .inner
                .session
                .execute_iter(self.inner.st.all_tiers.clone(), ())
                .await
                .map_err(|e| errors::pager("list_tiers", e))?;
            let mut rows = pager
                .rows_stream::<(String, Option<String>)>()
                .map_err(|e| errors::decode("list_tiers", e))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().await {
                let (name, limits) = row.map_err(|e| errors::next_row("list_tiers", e))?;
                let limits: Vec<LimitSpec> =
                    decode_json("tier", &name, limits.as_deref().unwrap_or("[]").as_bytes())?;
                out.push(TierRecord { name, limits });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }
}
