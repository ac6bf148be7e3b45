//! Usage of a key: current counts, the limits in force and the history.

use super::{AdminError, Service};
use ringlimit_protocol::admin::{Granularity, LimitUsage, UsageBucket, UsageLimits};

impl Service {
    pub async fn usage_current(&self, key_id: &str) -> Result<Vec<LimitUsage>, AdminError> {
        let rec = self.existing(key_id).await?;
        self.limiters
            .peek(&rec.key_id, self.clock.now_us())
            .await
            .map_err(|_| AdminError::Unavailable)
    }

    pub async fn usage_limits(&self, key_id: &str) -> Result<UsageLimits, AdminError> {
        let rec = self.existing(key_id).await?;
        Ok(UsageLimits {
            key_id: rec.key_id.clone(),
            tier: rec.tier.clone(),
            overridden: rec.limits.is_some(),
            limits: self.source.catalog.limits_for(&rec),
        })
    }

    pub async fn usage_history(
        &self,
        key_id: &str,
        granularity: Granularity,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<UsageBucket>, AdminError> {
        let rec = self.existing(key_id).await?;
        Ok(self
            .store
            .usage_history(&rec.key_id, granularity, from_ms, to_ms)
            .await?)
    }
}
