//! Storage traits. Every backend (embedded, ScyllaDB, …) implements them,
//! and the conformance suite (feature `conformance`) runs the same scenarios
//! over each.

use crate::keys::{KeyRecord, SecretHash};
use async_trait::async_trait;
use ringlimit_protocol::LimitSpec;
use ringlimit_protocol::admin::{Granularity, KeyStatus, UsageBucket};

/// Errors of a storage backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or timed out; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Any other backend failure.
    #[error("store failure: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Filters of the key list. Absent fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub owner: Option<String>,
    pub tier: Option<String>,
    pub status: Option<KeyStatus>,
}

impl KeyFilter {
    /// Whether `k` passes the filter.
    pub fn matches(&self, k: &KeyRecord) -> bool {
        self.owner.as_deref().is_none_or(|o| o == k.owner)
            && self.tier.as_deref().is_none_or(|t| t == k.tier)
            && self.status.is_none_or(|s| s == k.status)
    }
}

/// A tier as stored: its name and limits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TierRecord {
    pub name: String,
    pub limits: Vec<LimitSpec>,
}

/// One usage value written by one writer: absolute units admitted in a bucket.
/// Writers write absolute values (not increments), so a retried write never
/// double counts; readers sum over writers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub key_id: String,
    pub granularity: Granularity,
    pub bucket_start_ms: u64,
    /// Identifies one writing process (node name and boot instant).
    pub writer: String,
    pub units: u64,
}

/// Sums rows of one key and granularity, read in `(bucket_start, writer)`
/// order, into buckets: every backend's `usage_history` ends with this.
#[derive(Debug, Default)]
pub struct BucketSum(Vec<UsageBucket>);

impl BucketSum {
    /// Adds one writer's units for the bucket starting at `start_ms`.
    pub fn add(&mut self, start_ms: u64, units: u64) {
        match self.0.last_mut() {
            Some(b) if b.start_ms == start_ms => b.units = b.units.saturating_add(units),
            _ => self.0.push(UsageBucket { start_ms, units }),
        }
    }

    /// The buckets in time order, empty ones left out.
    pub fn finish(mut self) -> Vec<UsageBucket> {
        self.0.retain(|b| b.units > 0);
        self.0
    }
}

/// API keys, by id and by secret hash.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Inserts or replaces a key, and indexes its current and previous secret hashes.
    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// The key whose current or previous secret hash is `hash`.
    async fn key_id_by_hash(&self, hash: &SecretHash) -> Result<Option<String>, StoreError>;
    /// Keys in key_id order, strictly after `after`, at most `limit`, matching `filter`.
    async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError>;
    /// Every key, to warm the cache at start-up.
    async fn load_all_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
}

/// Run-time changes of tiers (the config file gives the initial tiers).
#[async_trait]
pub trait TierStore: Send + Sync + 'static {
    async fn put_tier(&self, tier: &TierRecord) -> Result<(), StoreError>;
    async fn list_tiers(&self) -> Result<Vec<TierRecord>, StoreError>;
}

/// Counter snapshots of KeyLimiters (opaque bytes), for passivation and restarts.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Writes all snapshots; atomically where the backend allows.
    async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError>;
    async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn delete_snapshot(&self, key_id: &str) -> Result<(), StoreError>;
}

/// Usage history: per-minute buckets and hourly and daily rollups.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Writes absolute values; writing the same row twice is a no-op.
    async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError>;
    /// Buckets of `granularity` with `from_ms <= start < to_ms`, summed over writers, in time order.
    /// Empty buckets are left out.
    async fn usage_history(
        &self,
        key_id: &str,
        granularity: Granularity,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<UsageBucket>, StoreError>;
}

/// Everything a node stores.
pub trait Store: KeyStore + TierStore + SnapshotStore + UsageStore + std::fmt::Debug {}
impl<T: KeyStore + TierStore + SnapshotStore + UsageStore + std::fmt::Debug> Store for T {}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
