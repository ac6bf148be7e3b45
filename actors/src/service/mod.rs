//! Validate and key administration, on top of the key cache, the catalog,
//! the KeyLimiters and the store. The HTTP layer is a thin mapping of this.
//!
//! - `check`: the validate (check) path, with the bounded store look-ups
//!   after key-cache misses.
//! - `keys`: key administration (create, update, suspend, revoke, rotate)
//!   and key reloads.
//! - `tiers`: tiers and their reloads.
//! - `blocks`: IP/CIDR blocks.
//! - `usage`: current usage, limits and usage history of a key.

mod blocks;
pub mod check;
mod host;
mod keys;
mod tiers;
mod usage;

pub use blocks::MAX_BLOCK_EXPIRY_MS;
pub use check::{MISS_LOOKUP_TIMEOUT, MISS_LOOKUPS_PER_SECOND, MISS_NEGATIVE_MS, ValidateOutcome};
pub use host::{NodeHost, SuspendRequest, Suspensions};
pub use keys::{MAX_GRACE_MS, MAX_METADATA_BYTES, MAX_OWNER_LEN};

use crate::blocks::BlockList;
use crate::catalog::LimitsSource;
use crate::keys::KeyRecord;
use crate::limiter::{Clock, KeyLimiters, LimiterStats};
use crate::pipeline::{HostError, Pipelines};
use crate::storage::{Store, StoreError};
use check::MissGuard;
use std::sync::Arc;

/// Errors of the admin operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the key limiter is unavailable")]
    Unavailable,
}

impl From<AdminError> for HostError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(what) => HostError::NotFound(what),
            e @ AdminError::Invalid { .. } => HostError::Refused(e.to_string()),
            AdminError::Store(e) => HostError::Store(e),
            AdminError::Unavailable => HostError::Unavailable,
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The service of one node.
pub struct Service {
    source: Arc<LimitsSource>,
    limiters: KeyLimiters,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    random: fn(&mut [u8]),
    admin_lock: tokio::sync::Mutex<()>,
    /// Admin changes, for whoever tells the other nodes (the router).
    changes: tokio::sync::broadcast::Sender<Change>,
    pipelines: Option<Pipelines>,
    /// The IP/CIDR blocks in force.
    blocks: BlockList,
    /// Store look-ups after key-cache misses.
    misses: parking_lot::Mutex<MissGuard>,
}

/// Metric names of the service.
pub mod metric {
    /// Keys read from the store after a key-cache miss on the check path.
    pub const MISS_LOADED: &str = "ringlimit_key_cache_miss_loaded_total";
}

/// Admin changes held for a receiver that is behind.
pub const CHANGES_BUFFERED: usize = 1_024;

/// An admin change other nodes must learn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Key(String),
    Tier(String),
    Blocks,
    AbuseRules,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("keys", &self.source.keys.len())
            .finish()
    }
}

impl Service {
    /// `random` fills a buffer from a cryptographically secure source.
    pub fn new(
        source: Arc<LimitsSource>,
        limiters: KeyLimiters,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        random: fn(&mut [u8]),
        pipelines: Option<Pipelines>,
    ) -> Self {
        Service {
            source,
            limiters,
            store,
            clock,
            random,
            admin_lock: tokio::sync::Mutex::new(()),
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFERED).0,
            pipelines,
            blocks: BlockList::default(),
            misses: parking_lot::Mutex::new(MissGuard::default()),
        }
    }

    pub fn pipelines(&self) -> Option<&Pipelines> {
        self.pipelines.as_ref()
    }

    /// Loads the IP blocks in force. (Keys and tiers are in the core's cache
    /// already: [`crate::core::Core::warm`].)
    pub async fn load_blocks(&self) -> Result<(), StoreError> {
        self.blocks.set(self.store.list_blocks().await?);
        Ok(())
    }

    /// Wall-clock time by the service's clock, µs since the epoch.
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Wall-clock time by the service's clock, ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_us() / 1_000
    }

    /// The store the service reads and writes.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A key from the cache (no store look-up).
    pub fn key(&self, key_id: &str) -> Option<Arc<KeyRecord>> {
        self.source.keys.get(key_id)
    }

    /// Every key in the cache.
    pub fn cached_keys(&self) -> Vec<Arc<KeyRecord>> {
        self.source.keys.all()
    }

    /// How many keys the cache holds.
    pub fn cached_key_count(&self) -> usize {
        self.source.keys.len()
    }

    /// Keys with an active KeyLimiter.
    pub fn active_keys(&self) -> Vec<String> {
        self.limiters.active_keys()
    }

    /// Passivates these keys' KeyLimiters; whether all stopped within `timeout`.
    pub async fn passivate_keys(&self, keys: &[String], timeout: std::time::Duration) -> bool {
        self.limiters.passivate_keys(keys, timeout).await
    }

    /// Counters of the KeyLimiters.
    pub fn limiter_stats(&self) -> LimiterStats {
        self.limiters.stats()
    }

    /// The IP/CIDR blocks in force.
    pub fn blocks(&self) -> &BlockList {
        &self.blocks
    }

    /// Every admin change made from now on (the cluster broadcasts them to
    /// the other nodes). A receiver that falls more than
    /// [`CHANGES_BUFFERED`] changes behind is told how many it missed; the
    /// periodic full reload catches those up.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn changed(&self, c: Change) {
        // No receiver (a single node) is fine: nobody needs to hear it.
        let _ = self.changes.send(c);
    }

    /// Tells the other nodes the abuse rules changed.
    pub fn rules_changed(&self) {
        self.changed(Change::AbuseRules);
    }

    fn audit(
        &self,
        actor: &str,
        action: &str,
        kind: &str,
        target: &str,
        reason: Option<String>,
        details: serde_json::Value,
    ) {
        if let Some(p) = self.pipelines.as_ref() {
            p.audit(ringlimit_protocol::pipeline::AuditEntry {
                id: p.ctx.new_id(),
                at_ms: self.now_ms(),
                actor: actor.to_string(),
                action: action.to_string(),
                target_kind: kind.to_string(),
                target_id: target.to_string(),
                reason,
                details,
            });
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
