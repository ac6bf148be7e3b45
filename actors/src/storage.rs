//! Storage traits. Every backend (embedded, ScyllaDB, …) implements them,
//! and the conformance suite (feature `conformance`) runs the same scenarios
//! over each.

use crate::keys::KeyRecord;
use async_trait::async_trait;
use ringlimit_protocol::LimitSpec;
use ringlimit_protocol::admin::{Granularity, KeyStatus, UsageBucket};
use ringlimit_protocol::pipeline::{
    Alert, AuditEntry, BillingRecord, DeadLetter, IpBlock, Violation,
};

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

/// How long usage buckets and violations are kept (ScyllaDB: TTLs on the
/// writes; embedded: a periodic sweep). Defaults: minutes 7 days, hours 90
/// days, days 2 years, violations 90 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub minute: std::time::Duration,
    pub hour: std::time::Duration,
    pub day: std::time::Duration,
    pub violations: std::time::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Retention {
            minute: std::time::Duration::from_secs(7 * DAY),
            hour: std::time::Duration::from_secs(90 * DAY),
            day: std::time::Duration::from_secs(730 * DAY),
            violations: std::time::Duration::from_secs(90 * DAY),
        }
    }
}

impl Retention {
    /// How long buckets of `g` are kept.
    pub fn usage(&self, g: Granularity) -> std::time::Duration {
        match g {
            Granularity::Minute => self.minute,
            Granularity::Hour => self.hour,
            Granularity::Day => self.day,
        }
    }
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

/// API keys, by id.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Inserts or replaces a key.
    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError>;
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
    /// Writes a flush's snapshots and its usage rows in one transaction,
    /// for a store that is the node's usage store too. `Ok(false)`: this
    /// store cannot, and nothing was written; the write-behind writes the two
    /// apart.
    async fn save_flush(
        &self,
        _snapshots: &[(String, Vec<u8>)],
        _usage: &[UsageRow],
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Whether the store lost what was written to it since the last call
    /// (a Redis without persistence that restarted, or was flushed). The
    /// write-behind asks before each flush and, on `true`, writes every
    /// active key again. Stores that keep their writes answer `false`.
    async fn lost_writes(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// Usage history: per-minute buckets and hourly and daily rollups.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Writes absolute values; writing the same row twice is a no-op. A
    /// writer's total of a bucket only grows, so a store keeps the larger of
    /// the stored and the written total: a stale copy written late never
    /// lowers it.
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

/// A time range and a page: rows with `from_ms <= at < to_ms`, newest first,
/// skipping `offset` and returning at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from_ms: u64,
    pub to_ms: u64,
    pub offset: usize,
    pub limit: usize,
}

/// Violations (denied checks). Written by the violation pipeline in batches.
#[async_trait]
pub trait ViolationStore: Send + Sync + 'static {
    /// Writes a batch; a violation whose id is already stored is not stored twice.
    async fn write_violations(&self, batch: &[Violation]) -> Result<(), StoreError>;
    /// Violations of one key (or of every key when `key_id` is `None`) in
    /// `range`, newest first (ties by id).
    async fn list_violations(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Violation>, StoreError>;
}

/// The IP/CIDR block list.
#[async_trait]
pub trait BlockStore: Send + Sync + 'static {
    /// Inserts or replaces the block with this id.
    async fn put_block(&self, block: &IpBlock) -> Result<(), StoreError>;
    /// Every stored block, expired ones included, in id order.
    async fn list_blocks(&self) -> Result<Vec<IpBlock>, StoreError>;
    /// Removes a block; whether it existed.
    async fn delete_block(&self, id: &str) -> Result<bool, StoreError>;
}

/// The audit log: who suspended or blocked what, when and why.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends entries; an entry whose id is already stored is not stored twice.
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError>;
    /// Entries in `range`, newest first (ties by id).
    async fn list_audit(&self, range: Range) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Alerts and the dead letters of their webhook deliveries.
#[async_trait]
pub trait AlertStore: Send + Sync + 'static {
    /// Inserts or replaces the alert with this id (delivery state changes).
    async fn put_alert(&self, alert: &Alert) -> Result<(), StoreError>;
    async fn get_alert(&self, id: &str) -> Result<Option<Alert>, StoreError>;
    /// Alerts of one key (or of all) raised in `range`, newest first (ties by id).
    async fn list_alerts(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Alert>, StoreError>;
    /// Inserts or replaces the dead letter with this id.
    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError>;
    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError>;
    /// Dead letters failed in `range`, newest first (ties by id).
    async fn list_dead_letters(&self, range: Range) -> Result<Vec<DeadLetter>, StoreError>;
    /// Removes a dead letter (after a successful re-drive); whether it existed.
    async fn delete_dead_letter(&self, id: &str) -> Result<bool, StoreError>;
}

/// Billing records: one per key and closed period.
#[async_trait]
pub trait BillingStore: Send + Sync + 'static {
    /// Inserts or replaces the record of `(key_id, period_start_ms)`.
    async fn put_billing(&self, record: &BillingRecord) -> Result<(), StoreError>;
    async fn get_billing(
        &self,
        key_id: &str,
        period_start_ms: u64,
    ) -> Result<Option<BillingRecord>, StoreError>;
    /// Records of one key, newest period first, at most `limit`.
    async fn list_billing_for_key(
        &self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError>;
    /// Records of every key for one period, in key_id order.
    async fn list_billing_for_period(
        &self,
        period_start_ms: u64,
    ) -> Result<Vec<BillingRecord>, StoreError>;
}

/// Everything a node stores.
pub trait Store:
    KeyStore
    + TierStore
    + SnapshotStore
    + UsageStore
    + ViolationStore
    + BlockStore
    + AuditStore
    + AlertStore
    + BillingStore
    + std::fmt::Debug
{
}
impl<
    T: KeyStore
        + TierStore
        + SnapshotStore
        + UsageStore
        + ViolationStore
        + BlockStore
        + AuditStore
        + AlertStore
        + BillingStore
        + std::fmt::Debug,
> Store for T
{
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
