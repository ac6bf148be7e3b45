//! Limiter algorithms as pure state machines.
//!
//! Time is an argument: every method takes `now` in microseconds since the
//! Unix epoch ([`Micros`]). Nothing here reads a clock, spawns a task or does
//! I/O, so each algorithm is tested at fixed instants and property-tested
//! against a brute-force model (see the `tests` modules).
//!
//! Every algorithm is split into [`Algorithm::evaluate`] (may this cost pass
//! now? no mutation) and [`Algorithm::commit`] (spend it). A key with several
//! limits evaluates all of them first and commits only if all pass, so a
//! denied check consumes nothing from any limit.
//!
//! Clock skew: each state remembers the latest instant it has seen; an
//! earlier `now` is treated as that latest instant. Time going backwards
//! therefore never panics and never frees capacity.

mod fixed_window;
mod gcra;
mod sliding_log;
mod sliding_window;
mod token_bucket;

#[cfg(test)]
mod props;

pub use fixed_window::FixedWindow;
pub use gcra::Gcra;
pub use sliding_log::SlidingLog;
pub use sliding_window::SlidingWindow;
pub use token_bucket::TokenBucket;

use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch.
pub type Micros = u64;

/// Microseconds in one millisecond.
pub const US_PER_MS: u64 = 1_000;

/// Ceiling of `n / d` as microseconds, saturating at `u64::MAX`; a zero
/// divisor (a rate of zero never refills) yields `u64::MAX` unless `n` is zero.
fn ceil_div_us(n: u128, d: u128) -> u64 {
    if n == 0 {
        return 0;
    }
    if d == 0 {
        return u64::MAX;
    }
    u64::try_from(n.div_ceil(d)).unwrap_or(u64::MAX)
}

/// `u128` to `u64`, saturating.
fn sat_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Serde for scaled `u128` state as a decimal string. JSON numbers (through
/// `serde_json::Value`) and MessagePack integers stop at 64 bits, while scaled
/// state (µs × limit, tokens × window) routinely exceeds them.
mod wide {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// The answer of one limit to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether `cost` fits now.
    pub allowed: bool,
    /// The limit's quota (`limit`, or the burst capacity for bucket algorithms).
    pub limit: u64,
    /// Units still available after this check (after spending when allowed).
    pub remaining: u64,
    /// Microseconds until the limit is back to its full quota if nothing more is spent.
    pub reset_after_us: u64,
    /// When denied: microseconds until `cost` would fit. Zero when allowed.
    pub retry_after_us: u64,
}

/// One limiter algorithm's state.
pub trait Algorithm {
    /// Whether `cost` fits at `now`, without spending anything.
    fn evaluate(&self, now: Micros, cost: u64) -> Decision;
    /// Spends `cost` at `now`. Callers only commit what `evaluate` allowed at
    /// the same `now`; committing anything else is a logic error and must
    /// still not panic.
    fn commit(&mut self, now: Micros, cost: u64);
    /// Units one check may spend at most; a larger cost can never pass.
    fn capacity(&self) -> u64;
    /// Evaluate, and commit when allowed.
    fn check(&mut self, now: Micros, cost: u64) -> Decision {
        let d = self.evaluate(now, cost);
        if d.allowed {
            self.commit(now, cost);
        }
        d
    }
}

/// The state of any algorithm, serialisable for snapshots (passivation,
/// write-behind, restarts). The configuration (limit, window, burst) is part
/// of the state so a snapshot is self-describing.
///
/// Decoding restores the invariants the algorithms rely on (see
/// [`Stored`]): stored bytes may be corrupt or from another version, and a
/// state that panics on its first check would take its actor down on every
/// restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub enum AlgoState {
    SlidingWindow(SlidingWindow),
    SlidingLog(SlidingLog),
    TokenBucket(TokenBucket),
    Gcra(Gcra),
    FixedWindow(FixedWindow),
}

/// An [`AlgoState`] as decoded, before its invariants are restored: a
/// window of at least 1 µs for every algorithm, and for the sliding log
/// entries in time order, none after its last check, and a total that is
/// their sum. States this code wrote already hold them; repairing keeps
/// every unit they record as spent.
#[derive(Deserialize)]
#[serde(rename = "AlgoState")]
enum Stored {
    SlidingWindow(SlidingWindow),
    SlidingLog(SlidingLog),
    TokenBucket(TokenBucket),
    Gcra(Gcra),
    FixedWindow(FixedWindow),
}

impl From<Stored> for AlgoState {
    fn from(s: Stored) -> Self {
        match s {
            Stored::SlidingWindow(mut a) => {
                a.repair();
                AlgoState::SlidingWindow(a)
            }
            Stored::SlidingLog(mut a) => {
                a.repair();
                AlgoState::SlidingLog(a)
            }
            Stored::TokenBucket(mut a) => {
                a.repair();
                AlgoState::TokenBucket(a)
            }
            Stored::Gcra(mut a) => {
                a.repair();
                AlgoState::Gcra(a)
            }
            Stored::FixedWindow(mut a) => {
                a.repair();
                AlgoState::FixedWindow(a)
            }
        }
    }
}

impl AlgoState {
    /// A fresh (full) state for `spec`.
    pub fn new(spec: &LimitSpec) -> Self {
        let window_us = spec.window_ms.saturating_mul(US_PER_MS);
        match spec.algorithm {
            AlgorithmKind::SlidingWindow => {
                AlgoState::SlidingWindow(SlidingWindow::new(spec.limit, window_us))
            }
            AlgorithmKind::SlidingLog => {
                AlgoState::SlidingLog(SlidingLog::new(spec.limit, window_us))
            }
            AlgorithmKind::TokenBucket => AlgoState::TokenBucket(TokenBucket::new(
                spec.limit,
                window_us,
                spec.burst.unwrap_or(spec.limit),
            )),
            AlgorithmKind::Gcra => AlgoState::Gcra(Gcra::new(
                spec.limit,
                window_us,
                spec.burst.unwrap_or(spec.limit),
            )),
            AlgorithmKind::FixedWindow => {
                AlgoState::FixedWindow(FixedWindow::new(spec.limit, window_us))
            }
        }
    }

    /// The algorithm of this state.
    pub fn kind(&self) -> AlgorithmKind {
        match self {
            AlgoState::SlidingWindow(_) => AlgorithmKind::SlidingWindow,
            AlgoState::SlidingLog(_) => AlgorithmKind::SlidingLog,
            AlgoState::TokenBucket(_) => AlgorithmKind::TokenBucket,
            AlgoState::Gcra(_) => AlgorithmKind::Gcra,
            AlgoState::FixedWindow(_) => AlgorithmKind::FixedWindow,
        }
    }

    /// Adapts this state to a changed spec of the same name. When the
    /// algorithm and window are unchanged, what was spent stays spent and only
    /// the quota changes; otherwise the state starts fresh.
    pub fn reconfigure(&mut self, spec: &LimitSpec) {
        let window_us = spec.window_ms.saturating_mul(US_PER_MS);
        let burst = spec.burst.unwrap_or(spec.limit);
        let kept = match self {
            AlgoState::SlidingWindow(s) if spec.algorithm == AlgorithmKind::SlidingWindow => {
                s.set_quota(spec.limit, window_us)
            }
            AlgoState::SlidingLog(s) if spec.algorithm == AlgorithmKind::SlidingLog => {
                s.set_quota(spec.limit, window_us)
            }
            AlgoState::TokenBucket(s) if spec.algorithm == AlgorithmKind::TokenBucket => {
                s.set_quota(spec.limit, window_us, burst)
            }
            AlgoState::Gcra(s) if spec.algorithm == AlgorithmKind::Gcra => {
                s.set_quota(spec.limit, window_us, burst)
            }
            AlgoState::FixedWindow(s) if spec.algorithm == AlgorithmKind::FixedWindow => {
                s.set_quota(spec.limit, window_us)
            }
            _ => false,
        };
        if !kept {
            *self = AlgoState::new(spec);
        }
    }

    fn inner(&self) -> &dyn Algorithm {
        match self {
            AlgoState::SlidingWindow(s) => s,
            AlgoState::SlidingLog(s) => s,
            AlgoState::TokenBucket(s) => s,
            AlgoState::Gcra(s) => s,
            AlgoState::FixedWindow(s) => s,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Algorithm {
        match self {
            AlgoState::SlidingWindow(s) => s,
            AlgoState::SlidingLog(s) => s,
            AlgoState::TokenBucket(s) => s,
            AlgoState::Gcra(s) => s,
            AlgoState::FixedWindow(s) => s,
        }
    }
}

impl Algorithm for AlgoState {
    fn evaluate(&self, now: Micros, cost: u64) -> Decision {
        self.inner().evaluate(now, cost)
    }
    fn commit(&mut self, now: Micros, cost: u64) {
        self.inner_mut().commit(now, cost)
    }
    fn capacity(&self) -> u64 {
        self.inner().capacity()
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[test]
    fn a_decoded_state_with_a_zero_window_checks_without_dividing_by_zero() {
        for algorithm in [
            AlgorithmKind::SlidingWindow,
            AlgorithmKind::SlidingLog,
            AlgorithmKind::TokenBucket,
            AlgorithmKind::Gcra,
            AlgorithmKind::FixedWindow,
        ] {
            let spec = LimitSpec {
                name: "l".into(),
                algorithm,
                limit: 5,
                window_ms: 1_000,
                burst: None,
            };
            // The state as stored, its window zeroed (a corrupt snapshot):
            // the sliding and fixed windows divided `now` by it.
            let mut v = serde_json::to_value(AlgoState::new(&spec)).expect("encodes");
            let inner = v
                .as_object_mut()
                .and_then(|m| m.values_mut().next())
                .and_then(|s| s.as_object_mut())
                .expect("an externally tagged struct");
            inner.insert("window_us".into(), 0.into());
            let mut state: AlgoState = serde_json::from_value(v).expect("decodes");
            assert_eq!(state.kind(), algorithm);
            // A 1 µs window: the quota of 5 holds within one instant.
            let now = 1_700_000_000_000_000;
            let allowed = (0..8).filter(|_| state.check(now, 1).allowed).count();
            assert_eq!(allowed, 5, "{algorithm:?}");
            assert!(state.check(now + 10, 1).allowed, "{algorithm:?} refills");
        }
    }
}
