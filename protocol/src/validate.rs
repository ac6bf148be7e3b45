//! Data-plane bodies: `POST /api/v1/validate` and `/validate/batch`.

/// Short names (key ids, tiers, limit names) up to 24 bytes are held inline:
/// a decision copies them without allocating.
pub use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize};

/// Largest cost accepted by the parser. Costs above a limit's capacity are
/// rejected later, with the limit named.
pub const MAX_COST: u64 = 1_000_000_000_000;

/// Units a check spends: an integer ≥ 1. Parsing rejects 0, negatives,
/// fractions and anything above [`MAX_COST`] with a message naming the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Cost(pub u64);

impl Default for Cost {
    fn default() -> Self {
        Cost(1)
    }
}

impl<'de> Deserialize<'de> for Cost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let n = serde_json_number(d)?;
        match n {
            Num::U(0) => Err(D::Error::custom("cost must be at least 1")),
            Num::U(v) if v > MAX_COST => {
                Err(D::Error::custom(format!("cost must be at most {MAX_COST}")))
            }
            Num::U(v) => Ok(Cost(v)),
            Num::Neg => Err(D::Error::custom("cost must be at least 1, not negative")),
            Num::F => Err(D::Error::custom("cost must be a whole number")),
        }
    }
}

enum Num {
    U(u64),
    Neg,
    F,
}

fn serde_json_number<'de, D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Num;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cost as a whole number ≥ 1")
        }
        fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
            Ok(Num::U(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
            Ok(if v >= 0 { Num::U(v as u64) } else { Num::Neg })
        }
        fn visit_u128<E>(self, _: u128) -> Result<Num, E> {
            Ok(Num::U(u64::MAX))
        }
        fn visit_i128<E>(self, v: i128) -> Result<Num, E> {
            Ok(if v >= 0 { Num::U(u64::MAX) } else { Num::Neg })
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Num, E> {
            if v.fract() != 0.0 || v.is_nan() {
                Ok(Num::F)
            } else if v < 0.0 {
                Ok(Num::Neg)
            } else if v > u64::MAX as f64 {
                Ok(Num::U(u64::MAX))
            } else {
                Ok(Num::U(v as u64))
            }
        }
    }
    d.deserialize_any(V)
}

/// `{"api_key":"…","cost":1,"resource":"optional","client_ip":"optional"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateRequest {
    pub api_key: String,
    #[serde(default)]
    pub cost: Cost,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
}

/// The state of one limit after a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitStatus {
    pub name: CompactString,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    /// Window of the limit, for the `RateLimit-Policy` header.
    pub window_ms: u64,
}

/// The body of a validate answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateResponse {
    pub allowed: bool,
    pub key_id: Option<CompactString>,
    pub tier: Option<CompactString>,
    pub limits: Vec<LimitStatus>,
    /// On a denial: milliseconds until the cost would fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// On a denial: the limit that denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<CompactString>,
    /// On 401/403/422: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorDetail>,
    /// On 403 for a suspended key: when the suspension ends (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_until_ms: Option<u64>,
    /// Allowed without a limit check: the key's owner could not be asked, or
    /// the key's counter state could not be read, and its tier fails open.
    /// The units are still counted in usage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
}

/// A limit check that ran: the key, and every limit's state after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    pub key_id: CompactString,
    pub tier: CompactString,
    pub limits: Vec<LimitStatus>,
    /// On a denial: milliseconds until the cost would fit.
    pub retry_after_ms: Option<u64>,
    /// On a denial: the limit that denied.
    pub denied_by: Option<CompactString>,
}

/// What a check decided, before any transport gives it a form: the data
/// plane turns it into a status, headers and a [`ValidateResponse`]; a
/// forwarded check carries it back to the node that received the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValidateOutcome {
    /// Every limit admitted the cost; it is spent.
    Allowed(Checked),
    /// A limit denied; nothing is spent.
    Denied(Checked),
    /// Unknown key, wrong secret, expired old secret or revoked key: all alike.
    Unauthorized,
    /// The key is suspended (by an operator or an abuse rule).
    Suspended {
        key_id: String,
        tier: String,
        reason: Option<String>,
        until_ms: Option<u64>,
    },
    /// The cost is above a limit's capacity: it could never be admitted.
    CostExceedsCapacity {
        key_id: String,
        tier: String,
        message: String,
    },
    /// The caller's `client_ip` is on the block list.
    IpBlocked {
        cidr: String,
        expires_at_ms: Option<u64>,
    },
    /// No decision could be made (the key's limiter or owner is not
    /// available, or the key has no limits); the caller may retry.
    Unavailable {
        key_id: Option<String>,
        tier: Option<String>,
        message: String,
    },
    /// The key's owner could not be reached and its tier fails open: allowed
    /// without a count.
    FailOpen { key_id: String, tier: String },
}

impl ValidateOutcome {
    /// Every value [`ValidateOutcome::label`] gives, in variant order.
    pub const LABELS: [&'static str; 8] = [
        "allowed",
        "denied",
        "unauthorized",
        "suspended",
        "rejected",
        "ip_blocked",
        "unavailable",
        "fail_open",
    ];

    /// The outcome's name in metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ValidateOutcome::Allowed(_) => "allowed",
            ValidateOutcome::Denied(_) => "denied",
            ValidateOutcome::Unauthorized => "unauthorized",
            ValidateOutcome::Suspended { .. } => "suspended",
            ValidateOutcome::CostExceedsCapacity { .. } => "rejected",
            ValidateOutcome::IpBlocked { .. } => "ip_blocked",
            ValidateOutcome::Unavailable { .. } => "unavailable",
            ValidateOutcome::FailOpen { .. } => "fail_open",
        }
    }

    /// Whether the check was let through.
    pub fn allowed(&self) -> bool {
        matches!(
            self,
            ValidateOutcome::Allowed(_) | ValidateOutcome::FailOpen { .. }
        )
    }

    /// An [`ValidateOutcome::Unavailable`] with no key.
    pub fn unavailable(message: impl Into<String>) -> ValidateOutcome {
        ValidateOutcome::Unavailable {
            key_id: None,
            tier: None,
            message: message.into(),
        }
    }
}

/// `{"checks":[…]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    pub checks: Vec<ValidateRequest>,
}

/// One result of a batch: the HTTP status the single call would have had, and its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    pub status: u16,
    #[serde(flatten)]
    pub body: ValidateResponse,
}

/// `{"results":[…]}`, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(s: &str) -> Result<Cost, String> {
        serde_json::from_str::<ValidateRequest>(&format!(r#"{{"api_key":"k","cost":{s}}}"#))
            .map(|r| r.cost)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn cost_is_a_whole_number_at_least_one() {
        assert_eq!(cost("3"), Ok(Cost(3)));
        assert!(cost("0").unwrap_err().contains("at least 1"));
        assert!(cost("-5").unwrap_err().contains("not negative"));
        assert!(cost("1.5").unwrap_err().contains("whole"));
        assert!(cost("1e30").unwrap_err().contains("at most"));
        assert!(
            cost("99999999999999999999999")
                .unwrap_err()
                .contains("at most")
        );
        assert!(cost("\"1\"").is_err());
        let r: ValidateRequest = serde_json::from_str(r#"{"api_key":"k"}"#).unwrap();
        assert_eq!(r.cost, Cost(1));
    }

    #[test]
    fn outcomes_round_trip_through_messagepack() {
        let checked = Checked {
            key_id: "k".into(),
            tier: "free".into(),
            limits: vec![LimitStatus {
                name: "per-second".into(),
                limit: 10,
                remaining: 0,
                reset_after_ms: 900,
                window_ms: 1_000,
            }],
            retry_after_ms: Some(900),
            denied_by: Some("per-second".into()),
        };
        for o in [
            ValidateOutcome::Allowed(checked.clone()),
            ValidateOutcome::Denied(checked),
            ValidateOutcome::Unauthorized,
            ValidateOutcome::Suspended {
                key_id: "k".into(),
                tier: "pro".into(),
                reason: Some("abuse".into()),
                until_ms: Some(5),
            },
            ValidateOutcome::CostExceedsCapacity {
                key_id: "k".into(),
                tier: "pro".into(),
                message: "cost 11 is above 10".into(),
            },
            ValidateOutcome::IpBlocked {
                cidr: "10.0.0.0/8".into(),
                expires_at_ms: None,
            },
            ValidateOutcome::unavailable("owner unreachable"),
            ValidateOutcome::FailOpen {
                key_id: "k".into(),
                tier: "free".into(),
            },
        ] {
            let m = rmp_serde::to_vec_named(&o).unwrap();
            assert_eq!(rmp_serde::from_slice::<ValidateOutcome>(&m).unwrap(), o);
            assert_eq!(o.allowed(), matches!(o.label(), "allowed" | "fail_open"));
        }
    }

    #[test]
    fn batch_result_flattens_the_body() {
        let r = BatchResult {
            status: 429,
            body: ValidateResponse {
                allowed: false,
                key_id: Some("k".into()),
                tier: Some("free".into()),
                limits: vec![],
                retry_after_ms: Some(10),
                denied_by: Some("per-second".into()),
                error: None,
                suspended_until_ms: None,
                fail_open: false,
            },
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], 429);
        assert_eq!(v["allowed"], false);
        let back: BatchResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let m = rmp_serde::to_vec_named(&r).unwrap();
        assert_eq!(rmp_serde::from_slice::<BatchResult>(&m).unwrap(), r);
    }
}
