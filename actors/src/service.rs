//! Validate and key administration, on top of the key cache, the catalog,
//! the KeyLimiters and the store. The HTTP layer is a thin mapping of this.

use crate::blocks::{BlockList, Cidr};
use crate::catalog::LimitsSource;
use crate::keys::{self, AuthResult, KeyRecord, SecretHash};
use crate::limiter::{Clock, KeyLimiters};
use crate::limitset::{CheckError, CheckResult};
use crate::pipeline::{Host, Pipelines};
use crate::storage::{KeyFilter, Store, StoreError, TierRecord};
use ringlimit_protocol::admin::{
    CreateKeyRequest, Granularity, KeyPage, KeyStatus, KeyView, KeyWithSecret, LimitUsage,
    TierView, UpdateKeyRequest, UsageBucket, UsageLimits,
};
use ringlimit_protocol::limits::validate_limits;
use ringlimit_protocol::{LimitSpec, apikey};
use std::net::IpAddr;
use std::sync::Arc;

/// The answer to a validate call, before it becomes HTTP.
#[derive(Debug, Clone)]
pub enum ValidateOutcome {
    Allowed {
        key: Arc<KeyRecord>,
        result: CheckResult,
    },
    Denied {
        key: Arc<KeyRecord>,
        result: CheckResult,
    },
    /// Unknown key, wrong secret, expired old secret or revoked key: all alike.
    Unauthorized,
    Suspended {
        key: Arc<KeyRecord>,
        until_ms: Option<u64>,
    },
    Rejected {
        key: Arc<KeyRecord>,
        error: CheckError,
    },
    Unavailable,
    /// The caller's `client_ip` is on the block list.
    IpBlocked {
        block: ringlimit_protocol::pipeline::IpBlock,
    },
}

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

fn invalid(field: &str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Longest owner name, tier name and metadata (serialized).
pub const MAX_OWNER_LEN: usize = 128;
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Longest rotation grace period: 30 days.
pub const MAX_GRACE_MS: u64 = 30 * 86_400_000;

/// The service of one node.
pub struct Service {
    pub source: Arc<LimitsSource>,
    pub limiters: KeyLimiters,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    random: fn(&mut [u8]),
    admin_lock: tokio::sync::Mutex<()>,
    change_hook: std::sync::OnceLock<Box<dyn Fn(Change) + Send + Sync>>,
    pipelines: std::sync::OnceLock<Pipelines>,
    /// The IP/CIDR blocks in force.
    pub blocks: BlockList,
    /// Store look-ups after key-cache misses.
    misses: parking_lot::Mutex<MissGuard>,
}

/// Metric names of the service.
pub mod metric {
    /// Keys read from the store after a key-cache miss on the check path.
    pub const MISS_LOADED: &str = "ringlimit_key_cache_miss_loaded_total";
}

/// Most store look-ups a node makes per second for key ids missing from its
/// cache; more misses are answered 401 without one.
pub const MISS_LOOKUPS_PER_SECOND: u32 = 200;
/// How long a key id the store did not have is not looked up again.
pub const MISS_NEGATIVE_MS: u64 = 1_000;
/// Longest a look-up after a miss may take before the check answers 401.
pub const MISS_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);
/// Most key ids remembered as absent.
const MISS_NEGATIVE_MAX: usize = 10_000;

/// Bounds the store reads that key-cache misses cause: a budget per second
/// and a short memory of ids the store did not have, so a flood of unknown
/// key ids costs the store at most `MISS_LOOKUPS_PER_SECOND` reads a second.
#[derive(Debug, Default)]
struct MissGuard {
    second: u64,
    used: u32,
    absent: std::collections::HashMap<String, u64>,
}

impl MissGuard {
    /// Whether `key_id` may be looked up in the store now.
    fn admit(&mut self, key_id: &str, now_ms: u64) -> bool {
        if self.absent.get(key_id).is_some_and(|until| *until > now_ms) {
            return false;
        }
        let second = now_ms / 1_000;
        if second != self.second {
            self.second = second;
            self.used = 0;
        }
        if self.used >= MISS_LOOKUPS_PER_SECOND {
            return false;
        }
        self.used += 1;
        true
    }

    fn absent(&mut self, key_id: &str, now_ms: u64) {
        if self.absent.len() >= MISS_NEGATIVE_MAX {
            self.absent.retain(|_, until| *until > now_ms);
            if self.absent.len() >= MISS_NEGATIVE_MAX {
                self.absent.clear();
            }
        }
        self.absent
            .insert(key_id.to_string(), now_ms + MISS_NEGATIVE_MS);
    }
}

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
    ) -> Self {
        Service {
            source,
            limiters,
            store,
            clock,
            random,
            admin_lock: tokio::sync::Mutex::new(()),
            change_hook: std::sync::OnceLock::new(),
            pipelines: std::sync::OnceLock::new(),
            blocks: BlockList::default(),
            misses: parking_lot::Mutex::new(MissGuard::default()),
        }
    }

    /// Connects the pipelines (violations, billing, alerts) to the hot path.
    pub fn set_pipelines(self: &Arc<Self>, p: Pipelines) {
        let host: Arc<dyn Host> = Arc::clone(self) as Arc<dyn Host>;
        p.set_host(Arc::downgrade(&host));
        let _ = self.pipelines.set(p);
    }

    pub fn pipelines(&self) -> Option<&Pipelines> {
        self.pipelines.get()
    }

    /// The unexpired block holding `ip`, if any.
    pub fn ip_blocked(&self, ip: IpAddr) -> Option<ringlimit_protocol::pipeline::IpBlock> {
        if self.blocks.is_empty() {
            return None;
        }
        self.blocks.find(ip, self.now_ms())
    }

    /// Loads every key into the cache and applies stored tier changes.
    pub async fn warm(&self) -> Result<usize, StoreError> {
        self.blocks.set(self.store.list_blocks().await?);
        for t in self.store.list_tiers().await? {
            self.source.catalog.set_tier(t);
        }
        let keys = self.store.load_all_keys().await?;
        let n = keys.len();
        for k in keys {
            self.source.keys.insert(k);
        }
        self.source.catalog.bump();
        Ok(n)
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_us() / 1_000
    }

    /// May the holder of `api_key` spend `cost` now?
    pub async fn validate(
        &self,
        api_key: &str,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> ValidateOutcome {
        if let Some(block) = client_ip.and_then(|ip| self.ip_blocked(ip)) {
            return ValidateOutcome::IpBlocked { block };
        }
        let Some((key_id, secret)) = apikey::parse(api_key) else {
            // Malformed keys take the same hashing path as unknown ones.
            let _ = keys::verify_unknown(&SecretHash::of(api_key));
            return ValidateOutcome::Unauthorized;
        };
        self.validate_hashed(key_id, &SecretHash::of(secret), cost, client_ip)
            .await
    }

    /// Validate for a key_id and the SHA-256 of the presented secret (what a
    /// forwarded check carries: the secret never leaves the receiving node).
    pub async fn validate_hashed(
        &self,
        key_id: &str,
        presented: &SecretHash,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> ValidateOutcome {
        let now_us = self.clock.now_us();
        let now_ms = now_us / 1_000;
        let cached = self.source.keys.get(key_id);
        let found = match cached {
            Some(k) => Some(k),
            None => self.key_after_miss(key_id, now_ms).await,
        };
        let Some(key) = found else {
            let _ = keys::verify_unknown(presented);
            return ValidateOutcome::Unauthorized;
        };
        if key.verify(presented, now_ms) != AuthResult::Valid {
            return ValidateOutcome::Unauthorized;
        }
        if key.suspended_at(now_ms) {
            return ValidateOutcome::Suspended {
                until_ms: key.suspended_until_ms,
                key,
            };
        }
        match self.limiters.check(key_id, cost, now_us).await {
            Ok(Ok(result)) if result.allowed => {
                if let Some(p) = self.pipelines.get() {
                    p.on_allowed(&key, &result, cost, now_ms);
                }
                ValidateOutcome::Allowed { key, result }
            }
            Ok(Ok(result)) => {
                if let Some(p) = self.pipelines.get() {
                    p.on_denied(&key, &result, cost, client_ip, now_ms);
                }
                ValidateOutcome::Denied { key, result }
            }
            Ok(Err(error)) => ValidateOutcome::Rejected { key, error },
            Err(_) => ValidateOutcome::Unavailable,
        }
    }

    /// A key missing from the cache, read from the store (within the miss
    /// budget). In a cluster a key created on another node reaches this
    /// node's cache by broadcast a few milliseconds later; a check that
    /// arrives first finds it here instead of a wrong 401.
    async fn key_after_miss(&self, key_id: &str, now_ms: u64) -> Option<Arc<KeyRecord>> {
        if !apikey::is_key_id(key_id) || !self.misses.lock().admit(key_id, now_ms) {
            return None;
        }
        match tokio::time::timeout(MISS_LOOKUP_TIMEOUT, self.store.get_key(key_id)).await {
            Ok(Ok(Some(rec))) => {
                metrics::counter!(metric::MISS_LOADED).increment(1);
                Some(self.source.keys.insert_if_absent(rec))
            }
            Ok(Ok(None)) => {
                self.misses.lock().absent(key_id, now_ms);
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(key_id, error = %e, "key look-up after a cache miss failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Registers the function told about every admin change (the cluster
    /// broadcasts them to the other nodes).
    pub fn on_change(&self, f: Box<dyn Fn(Change) + Send + Sync>) {
        let _ = self.change_hook.set(f);
    }

    fn changed(&self, c: Change) {
        if let Some(f) = self.change_hook.get() {
            f(c);
        }
    }

    /// Re-reads one key from the store into the cache (an admin change made
    /// on another node).
    pub async fn reload_key(&self, key_id: &str) -> Result<(), StoreError> {
        match self.store.get_key(key_id).await? {
            Some(k) => {
                let revoked = k.status == KeyStatus::Revoked;
                self.source.keys.insert(k);
                if revoked {
                    self.limiters.passivate(key_id);
                }
            }
            None => self.source.keys.remove(key_id),
        }
        self.source.catalog.bump();
        Ok(())
    }

    /// Re-reads the stored tier changes (a tier changed on another node).
    pub async fn reload_tiers(&self) -> Result<(), StoreError> {
        for t in self.store.list_tiers().await? {
            self.source.catalog.set_tier(t);
        }
        Ok(())
    }

    /// Re-reads every key (a safety net for missed change broadcasts).
    pub async fn reload_all_keys(&self) -> Result<usize, StoreError> {
        let keys = self.store.load_all_keys().await?;
        let n = keys.len();
        for k in keys {
            let same = self.source.keys.get(&k.key_id).is_some_and(|c| *c == k);
            if !same {
                self.source.keys.insert(k);
                self.source.catalog.bump();
            }
        }
        Ok(n)
    }

    fn view(&self, k: &KeyRecord) -> KeyView {
        k.view(self.source.catalog.limits_for(k))
    }

    fn check_owner(owner: &str) -> Result<(), AdminError> {
        if owner.is_empty() || owner.len() > MAX_OWNER_LEN || owner.chars().any(char::is_control) {
            return Err(invalid(
                "owner",
                format!("must be 1 to {MAX_OWNER_LEN} printable characters"),
            ));
        }
        Ok(())
    }

    fn check_tier(&self, tier: &str) -> Result<(), AdminError> {
        if self.source.catalog.tier(tier).is_none() {
            let names: Vec<_> = self
                .source
                .catalog
                .tiers()
                .into_iter()
                .map(|t| t.name)
                .collect();
            return Err(invalid(
                "tier",
                format!("unknown tier '{tier}'; known tiers: {}", names.join(", ")),
            ));
        }
        Ok(())
    }

    fn check_limits(limits: &[LimitSpec]) -> Result<(), AdminError> {
        validate_limits(limits).map_err(|e| invalid(&format!("limits.{}", e.field), e.message))
    }

    fn check_metadata(m: &ringlimit_protocol::admin::Metadata) -> Result<(), AdminError> {
        let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_METADATA_BYTES {
            return Err(invalid(
                "metadata",
                format!("must serialize to at most {MAX_METADATA_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    fn new_secret(&self) -> (String, String) {
        let random = self.random;
        keys::generate(&mut |b| random(b))
    }

    async fn commit(&self, rec: KeyRecord) -> Result<(), AdminError> {
        self.store.put_key(&rec).await?;
        let id = rec.key_id.clone();
        self.source.keys.insert(rec);
        self.source.catalog.bump();
        self.changed(Change::Key(id));
        Ok(())
    }

    async fn existing(&self, key_id: &str) -> Result<KeyRecord, AdminError> {
        if !apikey::is_key_id(key_id) {
            return Err(AdminError::NotFound(format!("key '{}'", truncate(key_id))));
        }
        match self.source.keys.get(key_id) {
            Some(k) => Ok(k.as_ref().clone()),
            None => match self.store.get_key(key_id).await? {
                Some(k) => Ok(k),
                None => Err(AdminError::NotFound(format!("key '{key_id}'"))),
            },
        }
    }

    /// Creates a key; the answer holds the secret, the only time it is shown.
    pub async fn create_key(&self, req: CreateKeyRequest) -> Result<KeyWithSecret, AdminError> {
        Self::check_owner(&req.owner)?;
        self.check_tier(&req.tier)?;
        if let Some(l) = &req.limits {
            Self::check_limits(l)?;
        }
        let metadata = req.metadata.unwrap_or_default();
        Self::check_metadata(&metadata)?;
        let _g = self.admin_lock.lock().await;
        let (key_id, secret) = self.new_secret();
        let now = self.now_ms();
        let rec = KeyRecord {
            key_id: key_id.clone(),
            owner: req.owner,
            tier: req.tier,
            status: KeyStatus::Active,
            limits: req.limits,
            metadata,
            secret_hash: SecretHash::of(&secret),
            previous_hash: None,
            previous_expires_at_ms: None,
            created_at_ms: now,
            updated_at_ms: now,
            suspended_until_ms: None,
            suspended_reason: None,
        };
        let view = self.view(&rec);
        self.commit(rec).await?;
        Ok(KeyWithSecret {
            api_key: apikey::format(&key_id, &secret),
            key: view,
        })
    }

    pub async fn get_key(&self, key_id: &str) -> Result<KeyView, AdminError> {
        Ok(self.view(&self.existing(key_id).await?))
    }

    pub async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, AdminError> {
        let limit = limit.clamp(1, 1_000);
        let mut keys = self.store.list_keys(filter, after, limit + 1).await?;
        let next_page = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().map(|k| k.key_id.clone())
        } else {
            None
        };
        Ok(KeyPage {
            keys: keys.iter().map(|k| self.view(k)).collect(),
            next_page,
        })
    }

    pub async fn update_key(
        &self,
        key_id: &str,
        req: UpdateKeyRequest,
    ) -> Result<KeyView, AdminError> {
        if let Some(o) = &req.owner {
            Self::check_owner(o)?;
        }
        if let Some(t) = &req.tier {
            self.check_tier(t)?;
        }
        if let Some(Some(l)) = &req.limits {
            Self::check_limits(l)?;
        }
        if let Some(m) = &req.metadata {
            Self::check_metadata(m)?;
        }
        let _g = self.admin_lock.lock().await;
        let mut rec = self.existing(key_id).await?;
        if rec.status == KeyStatus::Revoked {
            return Err(invalid(
                "status",
                "the key is revoked; revoked keys cannot be changed",
            ));
        }
        if let Some(o) = req.owner {
            rec.owner = o;
        }
        if let Some(t) = req.tier {
            rec.tier = t;
        }
        if let Some(l) = req.limits {
            rec.limits = l;
        }
        if let Some(m) = req.metadata {
            rec.metadata = m;
        }
        if let Some(s) = req.status {
            if s == KeyStatus::Revoked {
                return Err(invalid(
                    "status",
                    "use DELETE /api/v1/keys/{key_id} to revoke",
                ));
            }
            rec.status = s;
            if s != KeyStatus::Suspended {
                rec.suspended_until_ms = None;
                rec.suspended_reason = None;
            }
        }
        rec.updated_at_ms = self.now_ms();
        let view = self.view(&rec);
        self.commit(rec).await?;
        Ok(view)
    }

    /// Suspends a key until `until_ms` (or until lifted, when `None`).
    pub async fn suspend_key(
        &self,
        key_id: &str,
        until_ms: Option<u64>,
        reason: &str,
    ) -> Result<KeyView, AdminError> {
        let _g = self.admin_lock.lock().await;
        let mut rec = self.existing(key_id).await?;
        if rec.status == KeyStatus::Revoked {
            return Err(invalid("status", "the key is revoked"));
        }
        rec.status = KeyStatus::Suspended;
        rec.suspended_until_ms = until_ms;
        rec.suspended_reason = Some(reason.to_string());
        rec.updated_at_ms = self.now_ms();
        let view = self.view(&rec);
        self.commit(rec).await?;
        Ok(view)
    }

    /// Revokes a key: it answers 401 from now on, forever.
    pub async fn revoke_key(&self, key_id: &str) -> Result<(), AdminError> {
        let _g = self.admin_lock.lock().await;
        let mut rec = self.existing(key_id).await?;
        if rec.status == KeyStatus::Revoked {
            return Ok(());
        }
        rec.status = KeyStatus::Revoked;
        rec.previous_hash = None;
        rec.previous_expires_at_ms = None;
        rec.updated_at_ms = self.now_ms();
        self.commit(rec).await?;
        self.limiters.passivate(key_id);
        Ok(())
    }

    /// Issues a new secret; the old one keeps validating for `grace_ms`.
    pub async fn rotate_key(
        &self,
        key_id: &str,
        grace_ms: u64,
    ) -> Result<KeyWithSecret, AdminError> {
        if grace_ms > MAX_GRACE_MS {
            return Err(invalid(
                "grace_period_ms",
                format!("must be at most {MAX_GRACE_MS}"),
            ));
        }
        let _g = self.admin_lock.lock().await;
        let mut rec = self.existing(key_id).await?;
        if rec.status == KeyStatus::Revoked {
            return Err(invalid(
                "status",
                "the key is revoked; revoked keys cannot be rotated",
            ));
        }
        let (_, secret) = self.new_secret();
        let now = self.now_ms();
        if grace_ms > 0 {
            rec.previous_hash = Some(rec.secret_hash);
            rec.previous_expires_at_ms = Some(now + grace_ms);
        } else {
            rec.previous_hash = None;
            rec.previous_expires_at_ms = None;
        }
        rec.secret_hash = SecretHash::of(&secret);
        rec.updated_at_ms = now;
        let view = self.view(&rec);
        self.commit(rec).await?;
        Ok(KeyWithSecret {
            api_key: apikey::format(key_id, &secret),
            key: view,
        })
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

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[async_trait::async_trait]
impl Host for Service {
    fn key(&self, key_id: &str) -> Option<Arc<KeyRecord>> {
        self.source.keys.get(key_id)
    }

    fn keys(&self) -> Vec<Arc<KeyRecord>> {
        self.source.keys.all()
    }

    async fn suspend(&self, key_id: &str, until_ms: u64, reason: &str) -> Result<(), String> {
        // Never shorten a suspension already in force (an operator's
        // indefinite one, or a longer one).
        if let Some(k) = self.source.keys.get(key_id) {
            if k.suspended_at(self.now_ms()) && k.suspended_until_ms.is_none_or(|u| u >= until_ms) {
                return Ok(());
            }
        }
        self.suspend_key(key_id, Some(until_ms), reason)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn writebehind_pending(&self) -> usize {
        self.limiters.stats().pending_writes
    }
}

/// Longest block expiry: one year.
pub const MAX_BLOCK_EXPIRY_MS: u64 = 365 * 86_400_000;

impl Service {
    fn audit(
        &self,
        actor: &str,
        action: &str,
        kind: &str,
        target: &str,
        reason: Option<String>,
        details: serde_json::Value,
    ) {
        if let Some(p) = self.pipelines.get() {
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

    /// Records an admin change of a key's suspension in the audit log.
    pub fn audit_key_status(&self, key_id: &str, view: &KeyView, actor: &str) {
        let (action, reason) = match view.status {
            KeyStatus::Suspended => ("key.suspend", None),
            KeyStatus::Active => ("key.unsuspend", None),
            KeyStatus::Revoked => ("key.revoke", None),
        };
        self.audit(
            actor,
            action,
            "key",
            key_id,
            reason,
            serde_json::json!({ "suspended_until_ms": view.suspended_until_ms }),
        );
    }

    /// Adds a block (`expires_in_ms` from now, or forever).
    pub async fn create_block(
        &self,
        cidr: &str,
        expires_in_ms: Option<u64>,
        reason: Option<String>,
        actor: &str,
    ) -> Result<ringlimit_protocol::pipeline::IpBlock, AdminError> {
        let c = Cidr::parse(cidr).map_err(|m| invalid("cidr", m))?;
        if let Some(e) = expires_in_ms
            && (e == 0 || e > MAX_BLOCK_EXPIRY_MS)
        {
            return Err(invalid(
                "expires_in_ms",
                "must be between 1 and 31536000000 (one year)",
            ));
        }
        if reason.as_ref().is_some_and(|r| r.len() > 512) {
            return Err(invalid("reason", "must be at most 512 characters"));
        }
        let now = self.now_ms();
        let mut id = [0u8; 12];
        (self.random)(&mut id);
        let block = ringlimit_protocol::pipeline::IpBlock {
            id: format!("blk_{}", hex::encode(id)),
            cidr: c.to_string(),
            created_at_ms: now,
            expires_at_ms: expires_in_ms.map(|e| now + e),
            reason: reason.clone(),
            created_by: actor.to_string(),
        };
        self.store.put_block(&block).await?;
        self.reload_blocks().await?;
        self.changed(Change::Blocks);
        self.audit(
            actor,
            "block.create",
            "block",
            &block.id,
            reason,
            serde_json::json!({ "cidr": block.cidr, "expires_at_ms": block.expires_at_ms }),
        );
        Ok(block)
    }

    /// Removes a block.
    pub async fn delete_block(
        &self,
        id: &str,
        actor: &str,
        action: &str,
    ) -> Result<(), AdminError> {
        if !self.store.delete_block(id).await? {
            return Err(AdminError::NotFound(format!("block {id}")));
        }
        self.reload_blocks().await?;
        self.changed(Change::Blocks);
        self.audit(actor, action, "block", id, None, serde_json::Value::Null);
        Ok(())
    }

    /// Tells the other nodes the abuse rules changed.
    pub fn rules_changed(&self) {
        self.changed(Change::AbuseRules);
    }

    /// Re-reads the block list from the store.
    pub async fn reload_blocks(&self) -> Result<(), StoreError> {
        self.blocks.set(self.store.list_blocks().await?);
        Ok(())
    }

    /// Deletes expired blocks from the store (each expiry is audited once).
    pub async fn expire_blocks(&self) -> Result<usize, StoreError> {
        let now = self.now_ms();
        let mut n = 0;
        for b in self.store.list_blocks().await? {
            if b.expires_at_ms.is_some_and(|t| t <= now) && self.store.delete_block(&b.id).await? {
                n += 1;
                if let Some(p) = self.pipelines.get() {
                    p.audit(ringlimit_protocol::pipeline::AuditEntry {
                        id: crate::pipeline::stable_id(&["block.expire", &b.id]),
                        at_ms: b.expires_at_ms.unwrap_or(now),
                        actor: "system".into(),
                        action: "block.expire".into(),
                        target_kind: "block".into(),
                        target_id: b.id.clone(),
                        reason: Some("expiry reached".into()),
                        details: serde_json::json!({ "cidr": b.cidr, "expires_at_ms": b.expires_at_ms }),
                    });
                }
            }
        }
        if n > 0 {
            self.reload_blocks().await?;
            self.changed(Change::Blocks);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miss_lookups_are_budgeted_per_second_and_absent_ids_remembered() {
        let mut g = MissGuard::default();
        let t = 5_000_000;
        for i in 0..MISS_LOOKUPS_PER_SECOND {
            assert!(
                g.admit(&format!("k{i}"), t),
                "look-up {i} within the budget"
            );
        }
        assert!(
            !g.admit("one-more", t + 999),
            "over the budget in the same second"
        );
        assert!(g.admit("one-more", t + 1_000), "a new second, a new budget");
        g.absent("gone", t + 1_000);
        assert!(!g.admit("gone", t + 1_500), "remembered as absent");
        assert!(
            g.admit("gone", t + 1_000 + MISS_NEGATIVE_MS),
            "forgotten after a while"
        );
    }

    #[test]
    fn the_memory_of_absent_ids_is_bounded() {
        let mut g = MissGuard::default();
        for i in 0..MISS_NEGATIVE_MAX + 10 {
            g.absent(&format!("k{i}"), 0);
        }
        assert!(g.absent.len() <= MISS_NEGATIVE_MAX);
    }
}
