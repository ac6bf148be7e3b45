//! Key administration: create, read, list, update, suspend, revoke and
//! rotate keys, and re-reading keys changed on another node.

use super::{AdminError, Change, Service, invalid, truncate};
use crate::keys::{self, KeyRecord, SecretHash};
use crate::storage::{KeyFilter, StoreError};
use ringlimit_protocol::admin::{
    CreateKeyRequest, KeyPage, KeyStatus, KeyView, KeyWithSecret, Metadata, UpdateKeyRequest,
    WEBHOOK_SECRET,
};
use ringlimit_protocol::limits::validate_limits;
use ringlimit_protocol::{LimitSpec, apikey};

/// Longest owner name, tier name and metadata (serialized).
pub const MAX_OWNER_LEN: usize = 128;
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Longest rotation grace period: 30 days.
pub const MAX_GRACE_MS: u64 = 30 * 86_400_000;

/// The metadata an update leaves: `new`, with the stored `webhook_secret`
/// kept when `new` does not mention it (nobody can read it back to send it
/// again), set when `new` gives one, and cleared when `new` gives `null`.
fn merge_metadata(old: &Metadata, mut new: Metadata) -> Metadata {
    match new.get(WEBHOOK_SECRET) {
        None => {
            if let Some(s) = old.get(WEBHOOK_SECRET) {
                new.insert(WEBHOOK_SECRET.to_string(), s.clone());
            }
        }
        Some(serde_json::Value::Null) => {
            new.remove(WEBHOOK_SECRET);
        }
        Some(_) => {}
    }
    new
}

impl Service {
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

    pub(super) fn check_limits(limits: &[LimitSpec]) -> Result<(), AdminError> {
        validate_limits(limits).map_err(|e| invalid(&format!("limits.{}", e.field), e.message))
    }

    fn check_metadata(m: &ringlimit_protocol::admin::Metadata) -> Result<(), AdminError> {
        match m.get(WEBHOOK_SECRET) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if !s.is_empty() => {}
            Some(_) => {
                return Err(invalid(
                    "metadata.webhook_secret",
                    "must be a non-empty string, or null to clear it",
                ));
            }
        }
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

    pub(super) async fn existing(&self, key_id: &str) -> Result<KeyRecord, AdminError> {
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
        let mut metadata = req.metadata.unwrap_or_default();
        Self::check_metadata(&metadata)?;
        if metadata.get(WEBHOOK_SECRET).is_some_and(|v| v.is_null()) {
            metadata.remove(WEBHOOK_SECRET);
        }
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
        if req == UpdateKeyRequest::default() {
            return Err(invalid(
                "body",
                "names no field to change (owner, tier, limits, status, metadata)",
            ));
        }
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
            rec.metadata = merge_metadata(&rec.metadata, m);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: serde_json::Value) -> Metadata {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn an_update_keeps_sets_or_clears_the_webhook_secret() {
        let old = meta(serde_json::json!({"webhook_url": "https://a/h", "webhook_secret": "s1"}));
        // Left out: kept.
        let m = merge_metadata(&old, meta(serde_json::json!({"team": "x"})));
        assert_eq!(m.get(WEBHOOK_SECRET), Some(&"s1".into()));
        assert_eq!(m.get("team"), Some(&"x".into()));
        assert!(!m.contains_key("webhook_url"));
        // Given: replaced.
        let m = merge_metadata(&old, meta(serde_json::json!({"webhook_secret": "s2"})));
        assert_eq!(m.get(WEBHOOK_SECRET), Some(&"s2".into()));
        // null: cleared.
        let m = merge_metadata(&old, meta(serde_json::json!({"webhook_secret": null})));
        assert!(!m.contains_key(WEBHOOK_SECRET));
    }

    #[test]
    fn a_webhook_secret_must_be_a_string() {
        for bad in [
            serde_json::json!(1),
            serde_json::json!(""),
            serde_json::json!({"a": 1}),
        ] {
            let m = meta(serde_json::json!({ "webhook_secret": bad }));
            assert!(Service::check_metadata(&m).is_err(), "{bad}");
        }
        let m = meta(serde_json::json!({"webhook_secret": null}));
        assert!(Service::check_metadata(&m).is_ok());
        let m = meta(serde_json::json!({"webhook_secret": "x"}));
        assert!(Service::check_metadata(&m).is_ok());
    }
}
