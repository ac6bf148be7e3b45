//! Validate and key administration, on top of the key cache, the catalog,
//! the KeyLimiters and the store. The HTTP layer is a thin mapping of this.

use crate::catalog::LimitsSource;
use crate::keys::{self, AuthResult, KeyRecord, SecretHash};
use crate::limiter::{Clock, KeyLimiters};
use crate::limitset::{CheckError, CheckResult};
use crate::storage::{KeyFilter, Store, StoreError, TierRecord};
use ringlimit_protocol::admin::{
    CreateKeyRequest, Granularity, KeyPage, KeyStatus, KeyView, KeyWithSecret, LimitUsage,
    TierView, UpdateKeyRequest, UsageBucket, UsageLimits,
};
use ringlimit_protocol::limits::validate_limits;
use ringlimit_protocol::{LimitSpec, apikey};
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
}

/// An admin change other nodes must learn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Key(String),
    Tier(String),
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
        }
    }

    /// Loads every key into the cache and applies stored tier changes.
    pub async fn warm(&self) -> Result<usize, StoreError> {
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
    pub async fn validate(&self, api_key: &str, cost: u64) -> ValidateOutcome {
        let Some((key_id, secret)) = apikey::parse(api_key) else {
            // Malformed keys take the same hashing path as unknown ones.
            let _ = keys::verify_unknown(&SecretHash::of(api_key));
            return ValidateOutcome::Unauthorized;
        };
        self.validate_hashed(key_id, &SecretHash::of(secret), cost)
            .await
    }

    /// Validate for a key_id and the SHA-256 of the presented secret (what a
    /// forwarded check carries: the secret never leaves the receiving node).
    pub async fn validate_hashed(
        &self,
        key_id: &str,
        presented: &SecretHash,
        cost: u64,
    ) -> ValidateOutcome {
        let now_us = self.clock.now_us();
        let now_ms = now_us / 1_000;
        let Some(key) = self.source.keys.get(key_id) else {
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
            Ok(Ok(result)) if result.allowed => ValidateOutcome::Allowed { key, result },
            Ok(Ok(result)) => ValidateOutcome::Denied { key, result },
            Ok(Err(error)) => ValidateOutcome::Rejected { key, error },
            Err(_) => ValidateOutcome::Unavailable,
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
