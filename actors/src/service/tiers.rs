//! Tiers: listing, reading and replacing them, and re-reading the stored
//! tier changes.

use super::{AdminError, Change, Service, invalid, truncate};
use crate::storage::{StoreError, TierRecord};
use ringlimit_protocol::LimitSpec;
use ringlimit_protocol::admin::TierView;

impl Service {
    /// Re-reads the stored tier changes (a tier changed on another node).
    pub async fn reload_tiers(&self) -> Result<(), StoreError> {
        for t in self.store.list_tiers().await? {
            self.source.catalog.set_tier(t);
        }
        Ok(())
    }

    pub fn list_tiers(&self) -> Vec<TierView> {
        self.source
            .catalog
            .tiers()
            .into_iter()
            .map(|t| TierView {
                name: t.name,
                limits: t.limits,
            })
            .collect()
    }

    pub fn get_tier(&self, name: &str) -> Result<TierView, AdminError> {
        self.source
            .catalog
            .tier(name)
            .map(|l| TierView {
                name: name.to_string(),
                limits: l.as_ref().clone(),
            })
            .ok_or_else(|| AdminError::NotFound(format!("tier '{}'", truncate(name))))
    }

    /// Replaces a tier's limits (or creates the tier); the next check of every key on it uses them.
    pub async fn put_tier(
        &self,
        name: &str,
        limits: Vec<LimitSpec>,
    ) -> Result<TierView, AdminError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "name",
                "tier names are 1 to 64 characters of letters, digits, '-' and '_'",
            ));
        }
        Self::check_limits(&limits)?;
        let _g = self.admin_lock.lock().await;
        let rec = TierRecord {
            name: name.to_string(),
            limits,
        };
        self.store.put_tier(&rec).await?;
        self.source.catalog.set_tier(rec.clone());
        self.changed(Change::Tier(rec.name.clone()));
        Ok(TierView {
            name: rec.name,
            limits: rec.limits,
        })
    }
}
