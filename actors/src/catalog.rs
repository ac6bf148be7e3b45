//! Tiers and the resolution of a key's limits, with a change epoch.
//!
//! Every admin change that can alter a key's limits (a tier update, a key
//! update) bumps one epoch. A KeyLimiter remembers the epoch its limits were
//! resolved at and re-resolves when it differs, so the next check after a
//! change uses the new limits with no restart and no per-check lookups.

use crate::keys::{KeyCache, KeyRecord};
use crate::storage::TierRecord;
use parking_lot::RwLock;
use ringlimit_protocol::LimitSpec;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tiers by name, and the change epoch.
#[derive(Debug, Default)]
pub struct Catalog {
    tiers: RwLock<BTreeMap<String, Arc<Vec<LimitSpec>>>>,
    epoch: AtomicU64,
}

impl Catalog {
    pub fn new(tiers: impl IntoIterator<Item = TierRecord>) -> Self {
        let c = Catalog::default();
        for t in tiers {
            c.tiers.write().insert(t.name, Arc::new(t.limits));
        }
        c
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks that limits may have changed.
    pub fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn tier(&self, name: &str) -> Option<Arc<Vec<LimitSpec>>> {
        self.tiers.read().get(name).cloned()
    }

    pub fn tiers(&self) -> Vec<TierRecord> {
        self.tiers
            .read()
            .iter()
            .map(|(n, l)| TierRecord {
                name: n.clone(),
                limits: l.as_ref().clone(),
            })
            .collect()
    }

    /// Replaces (or adds) a tier and bumps the epoch.
    pub fn set_tier(&self, tier: TierRecord) {
        self.tiers.write().insert(tier.name, Arc::new(tier.limits));
        self.bump();
    }

    /// The limits in force for a key: its override, or its tier's.
    pub fn limits_for(&self, key: &KeyRecord) -> Vec<LimitSpec> {
        match &key.limits {
            Some(l) => l.clone(),
            None => self
                .tier(&key.tier)
                .map(|l| l.as_ref().clone())
                .unwrap_or_default(),
        }
    }
}

/// What a KeyLimiter needs to resolve its limits.
#[derive(Debug, Default)]
pub struct LimitsSource {
    pub catalog: Catalog,
    pub keys: KeyCache,
}

impl LimitsSource {
    /// `(epoch, limits)` for a key; the epoch is read first so a concurrent
    /// change is seen at the next check.
    pub fn resolve(&self, key_id: &str) -> (u64, Vec<LimitSpec>) {
        let epoch = self.catalog.epoch();
        let limits = self
            .keys
            .get(key_id)
            .map(|k| self.catalog.limits_for(&k))
            .unwrap_or_default();
        (epoch, limits)
    }
}
