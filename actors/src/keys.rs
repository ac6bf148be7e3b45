//! API key records, secret hashing and the in-memory key cache.

use dashmap::DashMap;
use ringlimit_protocol::admin::{KeyStatus, KeyView, Metadata, WEBHOOK_SECRET};
use ringlimit_protocol::{LimitSpec, apikey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// SHA-256 of a secret. Only this is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretHash({}…)", &hex::encode(self.0)[..8])
    }
}

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        SecretHash(Sha256::digest(secret.as_bytes()).into())
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(SecretHash(v.try_into().ok()?))
    }
}

impl Serialize for SecretHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SecretHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretHash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad secret hash"))
    }
}

/// A key as stored.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub owner: String,
    pub tier: String,
    pub status: KeyStatus,
    pub limits: Option<Vec<LimitSpec>>,
    #[serde(default)]
    pub metadata: Metadata,
    pub secret_hash: SecretHash,
    /// The secret before the last rotation, valid until `previous_expires_at_ms`.
    #[serde(default)]
    pub previous_hash: Option<SecretHash>,
    #[serde(default)]
    pub previous_expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(default)]
    pub suspended_until_ms: Option<u64>,
    #[serde(default)]
    pub suspended_reason: Option<String>,
}

impl std::fmt::Debug for KeyRecord {
    /// Every field, with the webhook secret and the webhook URL's path
    /// in the metadata hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let KeyRecord {
            key_id,
            owner,
            tier,
            status,
            limits,
            metadata,
            secret_hash,
            previous_hash,
            previous_expires_at_ms,
            created_at_ms,
            updated_at_ms,
            suspended_until_ms,
            suspended_reason,
        } = self;
        let mut shown = metadata.clone();
        if let Some(v) = shown.get_mut(WEBHOOK_SECRET) {
            *v = crate::redact::REDACTED.into();
        }
        // A webhook URL's path or query is often its credential.
        if let Some(v) = shown.get_mut("webhook_url")
            && let Some(u) = v.as_str()
        {
            *v = crate::redact::origin(u).into();
        }
        f.debug_struct("KeyRecord")
            .field("key_id", key_id)
            .field("owner", owner)
            .field("tier", tier)
            .field("status", status)
            .field("limits", limits)
            .field("metadata", &shown)
            .field("secret_hash", secret_hash)
            .field("previous_hash", previous_hash)
            .field("previous_expires_at_ms", previous_expires_at_ms)
            .field("created_at_ms", created_at_ms)
            .field("updated_at_ms", updated_at_ms)
            .field("suspended_until_ms", suspended_until_ms)
            .field("suspended_reason", suspended_reason)
            .finish()
    }
}

/// What a presented secret proves about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// The secret matches the current secret, or the previous one within its grace period.
    Valid,
    /// Unknown key, wrong secret, expired previous secret, or revoked key.
    Invalid,
}

/// Compared against when the key is unknown, so unknown and known keys take the same path.
const DUMMY_HASH: SecretHash = SecretHash([0x5a; 32]);

impl KeyRecord {
    /// An active key with its tier's limits, no metadata, no previous
    /// secret and no suspension, created (and last updated) at `now_ms`.
    pub fn active(
        key_id: impl Into<String>,
        owner: impl Into<String>,
        tier: impl Into<String>,
        secret_hash: SecretHash,
        now_ms: u64,
    ) -> Self {
        KeyRecord {
            key_id: key_id.into(),
            owner: owner.into(),
            tier: tier.into(),
            status: KeyStatus::Active,
            limits: None,
            metadata: Metadata::new(),
            secret_hash,
            previous_hash: None,
            previous_expires_at_ms: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            suspended_until_ms: None,
            suspended_reason: None,
        }
    }

    /// Checks a presented secret hash in constant time against the current and
    /// previous secrets. Both comparisons always run.
    pub fn verify(&self, presented: &SecretHash, now_ms: u64) -> AuthResult {
        let cur = presented.ct_eq(&self.secret_hash);
        let prev_hash = self.previous_hash.unwrap_or(DUMMY_HASH);
        let prev_live =
            self.previous_hash.is_some() && self.previous_expires_at_ms.is_some_and(|t| now_ms < t);
        let prev = presented.ct_eq(&prev_hash) & prev_live;
        if (cur | prev) && self.status != KeyStatus::Revoked {
            AuthResult::Valid
        } else {
            AuthResult::Invalid
        }
    }

    /// Whether the key is suspended at `now_ms` (a timed suspension ends by itself).
    pub fn suspended_at(&self, now_ms: u64) -> bool {
        self.status == KeyStatus::Suspended && self.suspended_until_ms.is_none_or(|t| now_ms < t)
    }

    /// The admin view, with the limits in force.
    pub fn view(&self, effective_limits: Vec<LimitSpec>) -> KeyView {
        KeyView {
            key_id: self.key_id.clone(),
            owner: self.owner.clone(),
            tier: self.tier.clone(),
            status: self.status,
            limits: self.limits.clone(),
            effective_limits,
            metadata: self
                .metadata
                .iter()
                .filter(|(k, _)| k.as_str() != WEBHOOK_SECRET)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            webhook_secret_set: self.metadata.contains_key(WEBHOOK_SECRET),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            previous_secret_expires_at_ms: self.previous_expires_at_ms,
            suspended_until_ms: self.suspended_until_ms,
        }
    }
}

/// Runs the same hash comparison as a known key, for an unknown one.
pub fn verify_unknown(presented: &SecretHash) -> AuthResult {
    let _ = std::hint::black_box(presented.ct_eq(&DUMMY_HASH) | presented.ct_eq(&DUMMY_HASH));
    AuthResult::Invalid
}

/// Generates a new key_id and secret from the OS random source.
pub fn generate(random: &mut dyn FnMut(&mut [u8])) -> (String, String) {
    const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const SECRET_ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let id = pick(random, ID_ALPHABET, apikey::KEY_ID_LEN);
    let secret = pick(random, SECRET_ALPHABET, apikey::SECRET_LEN);
    (id, secret)
}

/// Draws `n` characters uniformly from `alphabet` (rejection sampling, no modulo bias).
fn pick(random: &mut dyn FnMut(&mut [u8]), alphabet: &[u8], n: usize) -> String {
    let bound = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        random(&mut buf);
        for &b in &buf {
            if (b as usize) < bound && out.len() < n {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// Every key on this node, in memory. Warmed from the store at start-up and
/// updated on every admin change, so validation never waits on the store.
#[derive(Debug, Default)]
pub struct KeyCache {
    by_id: DashMap<compact_str::CompactString, Arc<KeyRecord>, crate::HotHasher>,
}

impl KeyCache {
    pub fn get(&self, key_id: &str) -> Option<Arc<KeyRecord>> {
        self.by_id.get(key_id).map(|r| Arc::clone(r.value()))
    }

    pub fn insert(&self, rec: KeyRecord) {
        self.by_id.insert(rec.key_id.as_str().into(), Arc::new(rec));
    }

    /// Caches `rec` unless its key is cached already (a newer record may have
    /// arrived meanwhile); the cached record either way.
    pub fn insert_if_absent(&self, rec: KeyRecord) -> Arc<KeyRecord> {
        Arc::clone(
            self.by_id
                .entry(rec.key_id.as_str().into())
                .or_insert_with(|| Arc::new(rec))
                .value(),
        )
    }

    pub fn remove(&self, key_id: &str) {
        self.by_id.remove(key_id);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every cached key.
    pub fn all(&self) -> Vec<Arc<KeyRecord>> {
        self.by_id.iter().map(|r| Arc::clone(r.value())).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_never_shows_the_webhook_secret() {
        let mut r = KeyRecord::active("k", "o", "free", SecretHash::of("s"), 0);
        let v = r.view(vec![]);
        assert!(!v.webhook_secret_set);
        r.metadata
            .insert("webhook_url".into(), "https://example.com/hook".into());
        r.metadata
            .insert(WEBHOOK_SECRET.into(), "whsec-do-not-show".into());
        let v = r.view(vec![]);
        assert!(v.webhook_secret_set);
        assert!(!v.metadata.contains_key(WEBHOOK_SECRET));
        assert_eq!(v.metadata["webhook_url"], "https://example.com/hook");
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("whsec-do-not-show"), "{json}");
        assert!(json.contains("\"webhook_secret_set\":true"), "{json}");
        let debug = format!("{r:?} {r:#?}");
        assert!(!debug.contains("whsec-do-not-show"), "{debug}");
        assert!(debug.contains(crate::redact::REDACTED), "{debug}");
        assert!(!debug.contains("/hook"), "{debug}");
    }

    fn rec(secret: &str) -> KeyRecord {
        KeyRecord::active("k", "o", "free", SecretHash::of(secret), 0)
    }

    #[test]
    fn verify_current_previous_and_revoked() {
        let mut r = rec("new");
        assert_eq!(r.verify(&SecretHash::of("new"), 0), AuthResult::Valid);
        assert_eq!(r.verify(&SecretHash::of("old"), 0), AuthResult::Invalid);
        r.previous_hash = Some(SecretHash::of("old"));
        r.previous_expires_at_ms = Some(100);
        assert_eq!(r.verify(&SecretHash::of("old"), 99), AuthResult::Valid);
        assert_eq!(r.verify(&SecretHash::of("old"), 100), AuthResult::Invalid);
        r.status = KeyStatus::Revoked;
        assert_eq!(r.verify(&SecretHash::of("new"), 0), AuthResult::Invalid);
    }

    #[test]
    fn generated_ids_parse() {
        let mut n = 0u8;
        let mut rnd = |b: &mut [u8]| {
            for x in b.iter_mut() {
                n = n.wrapping_mul(31).wrapping_add(7);
                *x = n;
            }
        };
        let (id, secret) = generate(&mut rnd);
        let key = apikey::format(&id, &secret);
        assert_eq!(apikey::parse(&key), Some((id.as_str(), secret.as_str())));
    }

    #[test]
    fn hash_serde_is_hex() {
        let h = SecretHash::of("x");
        let s = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<SecretHash>(&s).unwrap(), h);
    }
}
