//! Records of the pipelines (violations, IP blocks, audit, alerts, dead
//! letters, billing) as stored and as served by the admin API.
//!
//! Every record carries an id chosen by the process that made it, so writing the same record twice — a retry, a re-run after an
//! actor restart — stores it once.

use serde::{Deserialize, Serialize};

/// A denied check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub id: String,
    pub key_id: String,
    /// The limit that denied the check.
    pub limit_name: String,
    /// The node that decided.
    pub node: String,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    pub cost: u64,
}

/// One page of violations, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationPage {
    pub violations: Vec<Violation>,
    pub page: u32,
    /// The next page number, when there is one.
    pub next_page: Option<u32>,
}

/// An entry of the IP block list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpBlock {
    pub id: String,
    /// Normalised CIDR (`203.0.113.0/24`, `2001:db8::/32`, `198.51.100.7/32`).
    pub cidr: String,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who made it: `admin` or the rule that did.
    pub created_by: String,
}

/// `POST /api/v1/blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBlockRequest {
    pub cidr: String,
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /api/v1/blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockList {
    pub blocks: Vec<IpBlock>,
}

/// Who did what, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub at_ms: u64,
    /// `admin` for the admin API, `abuse:<rule>` for abuse detection, `system` for expiries.
    pub actor: String,
    /// e.g. `key.suspend`, `key.unsuspend`, `block.create`, `block.delete`, `block.expire`.
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub details: serde_json::Value,
}

/// One page of audit entries, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub page: u32,
    pub next_page: Option<u32>,
}

/// Delivery state of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet delivered to every endpoint.
    Pending,
    /// Delivered to every endpoint.
    Delivered,
    /// At least one endpoint gave up; its delivery is in the dead letters.
    DeadLettered,
    /// No endpoint is configured: stored only.
    Stored,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::DeadLettered => "dead_lettered",
            DeliveryState::Stored => "stored",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "dead_lettered" => DeliveryState::DeadLettered,
            "stored" => DeliveryState::Stored,
            _ => return None,
        })
    }
}

/// An alert raised by a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Derived from the rule, the subject and the period, so one condition
    /// in one period is one alert.
    pub id: String,
    pub raised_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `usage_threshold`, `included_units_threshold`, `overage`, `key_suspended`,
    /// `repeated_violations`, `writebehind_backlog`.
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    pub message: String,
    #[serde(default)]
    pub details: serde_json::Value,
    pub delivery: DeliveryState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at_ms: Option<u64>,
}

/// One page of alerts, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertPage {
    pub alerts: Vec<Alert>,
    pub page: u32,
    pub next_page: Option<u32>,
}

/// A webhook delivery that failed its last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub alert_id: String,
    /// The endpoint's name in the config, or `key:<key_id>` for a key owner's webhook.
    pub endpoint: String,
    pub url: String,
    pub failed_at_ms: u64,
    pub attempts: u32,
    pub error: String,
    /// The body that was sent (JSON), sent again verbatim on re-drive.
    pub payload: String,
}

/// `GET /api/v1/dead-letters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    pub page: u32,
    pub next_page: Option<u32>,
}

/// The bill of one key for one closed period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingRecord {
    pub key_id: String,
    pub period_start_ms: u64,
    pub period_end_ms: u64,
    pub owner: String,
    pub tier: String,
    /// Admitted units in the period, from the usage rollups.
    pub units: u64,
    pub included_units: u64,
    pub overage_units: u64,
    /// Price of one overage unit in billionths of the currency unit.
    pub unit_price_nanos: u64,
    /// overage_units × unit price, in billionths of the currency unit.
    pub amount_nanos: u64,
    pub currency: String,
    pub computed_at_ms: u64,
    pub computed_by: String,
}

/// A billing record as served: the record and its amount as a decimal string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingView {
    #[serde(flatten)]
    pub record: BillingRecord,
    /// e.g. `"12.5"`: `amount_nanos` as a decimal number of currency units.
    pub amount: String,
    /// The period as `YYYY-MM` (monthly periods) or the start in ms.
    pub period: String,
}

/// `GET /api/v1/billing…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingList {
    pub records: Vec<BillingView>,
}

/// Formats billionths as a decimal string without trailing zeros.
pub fn nanos_to_decimal(n: u64) -> String {
    let whole = n / 1_000_000_000;
    let frac = n % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let s = format!("{whole}.{frac:09}");
    s.trim_end_matches('0').to_string()
}

/// Parses a non-negative decimal (`"0.0004"`, `"12"`) into billionths.
pub fn decimal_to_nanos(s: &str) -> Option<u64> {
    let s = s.trim();
    let (w, f) = s.split_once('.').unwrap_or((s, ""));
    if w.is_empty() && f.is_empty() {
        return None;
    }
    if !w.bytes().all(|b| b.is_ascii_digit()) || !f.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if f.len() > 9 {
        return None;
    }
    let whole: u64 = if w.is_empty() { 0 } else { w.parse().ok()? };
    let mut frac: u64 = if f.is_empty() { 0 } else { f.parse().ok()? };
    for _ in f.len()..9 {
        frac *= 10;
    }
    whole.checked_mul(1_000_000_000)?.checked_add(frac)
}

/// Usage of one key over a range, for analytics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsageTotal {
    pub key_id: String,
    pub owner: String,
    pub tier: String,
    pub units: u64,
}

/// Usage of one tier over a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierUsageTotal {
    pub tier: String,
    pub units: u64,
    /// Keys of the tier with any usage in the range.
    pub active_keys: u64,
}

/// `GET /api/v1/analytics/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageAnalytics {
    pub from_ms: u64,
    pub to_ms: u64,
    pub granularity: crate::admin::Granularity,
    pub total_units: u64,
    pub top_keys: Vec<KeyUsageTotal>,
    pub by_tier: Vec<TierUsageTotal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_trip() {
        assert_eq!(decimal_to_nanos("0.0004"), Some(400_000));
        assert_eq!(decimal_to_nanos("12"), Some(12_000_000_000));
        assert_eq!(decimal_to_nanos(".5"), Some(500_000_000));
        assert_eq!(decimal_to_nanos("1.000000001"), Some(1_000_000_001));
        for bad in ["", ".", "-1", "1.0000000001", "1e3", "abc", "1.2.3"] {
            assert_eq!(decimal_to_nanos(bad), None, "{bad}");
        }
        assert_eq!(nanos_to_decimal(400_000), "0.0004");
        assert_eq!(nanos_to_decimal(12_000_000_000), "12");
        assert_eq!(nanos_to_decimal(12_500_000_000), "12.5");
    }

    #[test]
    fn delivery_state_strings_round_trip() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::DeadLettered,
            DeliveryState::Stored,
        ] {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
