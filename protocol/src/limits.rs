//! Limits as they are written in config files and JSON bodies.

use serde::{Deserialize, Serialize};

/// The rate-limit algorithm of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmKind {
    /// Cloudflare's sliding-window counter (weighted previous window). The default.
    #[default]
    SlidingWindow,
    /// Exact sliding log of admitted units; memory grows with the limit.
    SlidingLog,
    /// Token bucket: `limit` per `window_ms` refill, `burst` capacity.
    TokenBucket,
    /// Generic cell rate algorithm (leaky bucket as a meter). `leaky_bucket` is an alias.
    #[serde(alias = "leaky_bucket")]
    Gcra,
    /// Fixed window aligned to multiples of `window_ms` since the Unix epoch.
    FixedWindow,
}

impl AlgorithmKind {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AlgorithmKind::SlidingWindow => "sliding_window",
            AlgorithmKind::SlidingLog => "sliding_log",
            AlgorithmKind::TokenBucket => "token_bucket",
            AlgorithmKind::Gcra => "gcra",
            AlgorithmKind::FixedWindow => "fixed_window",
        }
    }

    /// Parses a wire name, including the `leaky_bucket` alias.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sliding_window" => AlgorithmKind::SlidingWindow,
            "sliding_log" => AlgorithmKind::SlidingLog,
            "token_bucket" => AlgorithmKind::TokenBucket,
            "gcra" | "leaky_bucket" => AlgorithmKind::Gcra,
            "fixed_window" => AlgorithmKind::FixedWindow,
            _ => return None,
        })
    }

    /// Whether `burst` means something for this algorithm.
    pub fn uses_burst(self) -> bool {
        matches!(self, AlgorithmKind::TokenBucket | AlgorithmKind::Gcra)
    }
}

/// One named limit: `{"name":"per-minute","algorithm":"sliding_log","limit":100,"window_ms":60000,"burst":null}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub name: String,
    #[serde(default)]
    pub algorithm: AlgorithmKind,
    pub limit: u64,
    pub window_ms: u64,
    #[serde(default)]
    pub burst: Option<u64>,
}

/// Largest limit accepted: keeps every product in the algorithms inside `u128`
/// and the sliding log's memory bounded by [`MAX_SLIDING_LOG_LIMIT`].
pub const MAX_LIMIT: u64 = 1_000_000_000_000;
/// Sliding logs keep one entry per admitted check, so their limit is capped.
pub const MAX_SLIDING_LOG_LIMIT: u64 = 100_000;
/// Longest window: 400 days.
pub const MAX_WINDOW_MS: u64 = 400 * 24 * 3_600_000;
/// Longest limit name.
pub const MAX_NAME_LEN: usize = 64;

/// Why a limit is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpecError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for LimitSpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for LimitSpecError {}

impl LimitSpec {
    /// Units one check may spend at most: the burst for bucket algorithms, the
    /// limit otherwise. A cost above this can never pass and is rejected up front.
    pub fn capacity(&self) -> u64 {
        if self.algorithm.uses_burst() {
            self.burst.unwrap_or(self.limit)
        } else {
            self.limit
        }
    }

    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<(), LimitSpecError> {
        let err = |field, message: String| Err(LimitSpecError { field, message });
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return err("name", format!("must be 1 to {MAX_NAME_LEN} characters"));
        }
        if !self
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return err(
                "name",
                "may contain only ASCII letters, digits, '-', '_' and '.'".into(),
            );
        }
        if self.limit == 0 || self.limit > MAX_LIMIT {
            return err("limit", format!("must be between 1 and {MAX_LIMIT}"));
        }
        if self.algorithm == AlgorithmKind::SlidingLog && self.limit > MAX_SLIDING_LOG_LIMIT {
            return err(
                "limit",
                format!(
                    "sliding_log keeps one entry per unit; use at most {MAX_SLIDING_LOG_LIMIT} or another algorithm"
                ),
            );
        }
        if self.window_ms == 0 || self.window_ms > MAX_WINDOW_MS {
            return err(
                "window_ms",
                format!("must be between 1 and {MAX_WINDOW_MS}"),
            );
        }
        if let Some(b) = self.burst {
            if !self.algorithm.uses_burst() {
                return err(
                    "burst",
                    format!(
                        "is only meaningful for token_bucket and gcra, not {}",
                        self.algorithm.as_str()
                    ),
                );
            }
            if b == 0 || b > MAX_LIMIT {
                return err("burst", format!("must be between 1 and {MAX_LIMIT}"));
            }
        }
        Ok(())
    }
}

/// Validates a list of limits: non-empty, each valid, names unique.
pub fn validate_limits(limits: &[LimitSpec]) -> Result<(), LimitSpecError> {
    if limits.is_empty() {
        return Err(LimitSpecError {
            field: "limits",
            message: "must hold at least one limit".into(),
        });
    }
    if limits.len() > 16 {
        return Err(LimitSpecError {
            field: "limits",
            message: "at most 16 limits per key or tier".into(),
        });
    }
    for (i, l) in limits.iter().enumerate() {
        l.validate()?;
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(LimitSpecError {
                field: "name",
                message: format!("limit name '{}' is used twice", l.name),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaky_bucket_is_an_alias_of_gcra() {
        let l: LimitSpec = serde_json::from_str(
            r#"{"name":"x","algorithm":"leaky_bucket","limit":5,"window_ms":1000,"burst":null}"#,
        )
        .unwrap();
        assert_eq!(l.algorithm, AlgorithmKind::Gcra);
    }

    #[test]
    fn contract_shape_round_trips() {
        let s = r#"{"name":"per-minute","algorithm":"sliding_log","limit":100,"window_ms":60000,"burst":null}"#;
        let l: LimitSpec = serde_json::from_str(s).unwrap();
        assert_eq!(serde_json::to_string(&l).unwrap(), s);
        let m = rmp_serde::to_vec(&l).unwrap();
        assert_eq!(rmp_serde::from_slice::<LimitSpec>(&m).unwrap(), l);
    }

    #[test]
    fn ranges_are_checked() {
        let ok = LimitSpec {
            name: "a".into(),
            algorithm: AlgorithmKind::TokenBucket,
            limit: 10,
            window_ms: 1000,
            burst: Some(20),
        };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.capacity(), 20);
        assert_eq!(
            LimitSpec {
                limit: 0,
                ..ok.clone()
            }
            .validate()
            .unwrap_err()
            .field,
            "limit"
        );
        assert_eq!(
            LimitSpec {
                window_ms: 0,
                ..ok.clone()
            }
            .validate()
            .unwrap_err()
            .field,
            "window_ms"
        );
        assert_eq!(
            LimitSpec {
                algorithm: AlgorithmKind::FixedWindow,
                ..ok.clone()
            }
            .validate()
            .unwrap_err()
            .field,
            "burst"
        );
        assert_eq!(
            LimitSpec {
                name: "a b".into(),
                ..ok.clone()
            }
            .validate()
            .unwrap_err()
            .field,
            "name"
        );
        assert!(validate_limits(&[ok.clone(), ok]).is_err());
        assert!(validate_limits(&[]).is_err());
    }
}
