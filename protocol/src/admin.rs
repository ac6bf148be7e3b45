//! Admin-plane DTOs: keys, tiers, usage.

use crate::LimitSpec;
use serde::{Deserialize, Serialize};

/// Free-form key metadata: a JSON object.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// The metadata field holding the key owner's webhook signing secret. It is
/// write-only: a [`KeyView`] never carries it, only
/// [`KeyView::webhook_secret_set`]. An update whose metadata leaves it out
/// keeps the stored secret; an explicit `null` clears it.
pub const WEBHOOK_SECRET: &str = "webhook_secret";

/// Lifecycle of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    #[default]
    Active,
    /// Answers 403 until lifted (or until `suspended_until_ms`).
    Suspended,
    /// Answers 401 forever.
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Suspended => "suspended",
            KeyStatus::Revoked => "revoked",
        }
    }
}

/// `POST /api/v1/keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub owner: String,
    pub tier: String,
    #[serde(default)]
    pub limits: Option<Vec<LimitSpec>>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

/// `PATCH /api/v1/keys/{key_id}`. Absent fields stay as they are;
/// `"limits": null` removes the override and falls back to the tier.
/// `metadata` replaces the key's metadata, except its `webhook_secret`,
/// which is kept unless the new metadata sets it (a string) or clears it
/// (`null`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default, with = "double_option")]
    pub limits: Option<Option<Vec<LimitSpec>>>,
    #[serde(default)]
    pub status: Option<KeyStatus>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub owner: Option<String>,
}

mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(inner) => inner.serialize(s),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// `POST /api/v1/keys/{key_id}/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old secret keeps validating.
    #[serde(default)]
    pub grace_period_ms: u64,
}

/// A key as the admin API shows it. Never holds the secret or its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub key_id: String,
    pub owner: String,
    pub tier: String,
    pub status: KeyStatus,
    /// Per-key override of the tier's limits, when set.
    pub limits: Option<Vec<LimitSpec>>,
    /// The limits checks use now (override, or the tier's).
    pub effective_limits: Vec<LimitSpec>,
    /// The key's metadata without its `webhook_secret` (see [`WEBHOOK_SECRET`]).
    pub metadata: Metadata,
    /// Whether the key has a webhook signing secret (never shown).
    #[serde(default)]
    pub webhook_secret_set: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_until_ms: Option<u64>,
}

/// A key with its secret: the answer to create and rotate, the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyWithSecret {
    pub api_key: String,
    #[serde(flatten)]
    pub key: KeyView,
}

/// One page of keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyPage {
    pub keys: Vec<KeyView>,
    /// Pass as `page=` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
}

/// A tier and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierView {
    pub name: String,
    pub limits: Vec<LimitSpec>,
}

/// `PUT /api/v1/tiers/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTierRequest {
    pub limits: Vec<LimitSpec>,
}

/// `GET /api/v1/tiers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierList {
    pub tiers: Vec<TierView>,
}

/// The live state of one limit of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitUsage {
    pub name: String,
    pub algorithm: crate::AlgorithmKind,
    pub limit: u64,
    pub window_ms: u64,
    pub used: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
}

/// `GET /api/v1/usage/{key_id}/current`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCurrent {
    pub key_id: String,
    pub limits: Vec<LimitUsage>,
}

/// `GET /api/v1/usage/{key_id}/limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLimits {
    pub key_id: String,
    pub tier: String,
    pub overridden: bool,
    pub limits: Vec<LimitSpec>,
}

/// Bucket size of usage history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub fn millis(self) -> u64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn all() -> [Granularity; 3] {
        [Granularity::Minute, Granularity::Hour, Granularity::Day]
    }
}

/// One bucket of usage history: admitted units in `[start_ms, start_ms + granularity)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBucket {
    pub start_ms: u64,
    pub units: u64,
}

/// `GET /api/v1/usage/{key_id}/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageHistory {
    pub key_id: String,
    pub granularity: Granularity,
    pub from_ms: u64,
    pub to_ms: u64,
    pub total: u64,
    pub buckets: Vec<UsageBucket>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_distinguishes_absent_and_null_limits() {
        let u: UpdateKeyRequest = serde_json::from_str(r#"{"status":"suspended"}"#).unwrap();
        assert_eq!(u.limits, None);
        let u: UpdateKeyRequest = serde_json::from_str(r#"{"limits":null}"#).unwrap();
        assert_eq!(u.limits, Some(None));
        let u: UpdateKeyRequest = serde_json::from_str(
            r#"{"limits":[{"name":"a","algorithm":"fixed_window","limit":1,"window_ms":1000}]}"#,
        )
        .unwrap();
        assert_eq!(u.limits.unwrap().unwrap().len(), 1);
    }

    #[test]
    fn create_rejects_unknown_fields() {
        assert!(
            serde_json::from_str::<CreateKeyRequest>(r#"{"owner":"a","tier":"free","x":1}"#)
                .is_err()
        );
    }
}
