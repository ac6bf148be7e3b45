//! The limits of one key, checked all-or-nothing.

use crate::algo::{AlgoState, Algorithm, Micros, US_PER_MS};
use ringlimit_protocol::LimitSpec;
use ringlimit_protocol::admin::LimitUsage;
use ringlimit_protocol::validate::LimitStatus;
use serde::{Deserialize, Serialize};

/// One limit and its algorithm state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitEntry {
    pub spec: LimitSpec,
    pub algo: AlgoState,
}

/// All limits of a key. A check passes only if every limit passes; a denied
/// check spends nothing from any limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSet {
    pub entries: Vec<LimitEntry>,
}

/// The answer to one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub allowed: bool,
    pub limits: Vec<LimitStatus>,
    /// When denied: ms until the cost would fit under every limit.
    pub retry_after_ms: Option<u64>,
    /// When denied: the limit that binds longest.
    pub denied_by: Option<compact_str::CompactString>,
}

/// A check that cannot be answered with allow or deny.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("cost {cost} exceeds the capacity {capacity} of limit '{limit}'")]
    CostExceedsCapacity {
        limit: String,
        capacity: u64,
        cost: u64,
    },
    #[error("the key has no limits configured")]
    NoLimits,
    /// The key's stored counter state could not be read (the snapshot
    /// store is down). The key is not started fresh: that would give it its
    /// whole quota again and then write the reset over the real state.
    #[error("the key's counter state cannot be read from the snapshot store; retry")]
    StateUnavailable,
}

fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(US_PER_MS)
}

impl LimitSet {
    /// A fresh set for `specs`.
    pub fn new(specs: &[LimitSpec]) -> Self {
        let mut s = LimitSet::default();
        s.reconcile(specs);
        s
    }

    /// Adopts new specs. A limit keeps its state when its name survives (see
    /// [`AlgoState::reconfigure`]); new limits start full; removed ones go.
    pub fn reconcile(&mut self, specs: &[LimitSpec]) {
        let mut old = std::mem::take(&mut self.entries);
        for spec in specs {
            let entry = match old.iter().position(|e| e.spec.name == spec.name) {
                Some(i) => {
                    let mut e = old.swap_remove(i);
                    if e.spec != *spec {
                        e.algo.reconfigure(spec);
                        e.spec = spec.clone();
                    }
                    e
                }
                None => LimitEntry {
                    spec: spec.clone(),
                    algo: AlgoState::new(spec),
                },
            };
            self.entries.push(entry);
        }
    }

    /// Checks `cost` at `now` against every limit; spends it from all of them
    /// only if all allow.
    pub fn check(&mut self, now: Micros, cost: u64) -> Result<CheckResult, CheckError> {
        if self.entries.is_empty() {
            return Err(CheckError::NoLimits);
        }
        if let Some(e) = self.entries.iter().find(|e| cost > e.algo.capacity()) {
            return Err(CheckError::CostExceedsCapacity {
                limit: e.spec.name.clone(),
                capacity: e.algo.capacity(),
                cost,
            });
        }
        let decisions: smallvec::SmallVec<[_; 4]> = self
            .entries
            .iter()
            .map(|e| e.algo.evaluate(now, cost))
            .collect();
        let allowed = decisions.iter().all(|d| d.allowed);
        if allowed {
            for e in &mut self.entries {
                e.algo.commit(now, cost);
            }
        }
        let mut retry_after_us = 0;
        let mut denied_by = None;
        let limits = self
            .entries
            .iter()
            .zip(&decisions)
            .map(|(e, d)| {
                if !d.allowed && (denied_by.is_none() || d.retry_after_us > retry_after_us) {
                    retry_after_us = d.retry_after_us;
                    denied_by = Some(e.spec.name.as_str().into());
                }
                // A limit that would have allowed keeps its units when another denies.
                let remaining = if !allowed && d.allowed {
                    d.remaining.saturating_add(cost).min(d.limit)
                } else {
                    d.remaining
                };
                LimitStatus {
                    name: e.spec.name.as_str().into(),
                    limit: d.limit,
                    remaining,
                    reset_after_ms: ceil_ms(d.reset_after_us),
                    window_ms: e.spec.window_ms,
                }
            })
            .collect();
        Ok(CheckResult {
            allowed,
            limits,
            retry_after_ms: (!allowed).then(|| ceil_ms(retry_after_us).max(1)),
            denied_by,
        })
    }

    /// The live state of every limit, spending nothing.
    pub fn peek(&self, now: Micros) -> Vec<LimitUsage> {
        self.entries
            .iter()
            .map(|e| {
                let d = e.algo.evaluate(now, 1);
                let remaining = if d.allowed {
                    d.remaining + 1
                } else {
                    d.remaining
                };
                let remaining = remaining.min(d.limit);
                LimitUsage {
                    name: e.spec.name.clone(),
                    algorithm: e.spec.algorithm,
                    limit: d.limit,
                    window_ms: e.spec.window_ms,
                    used: d.limit - remaining,
                    remaining,
                    reset_after_ms: ceil_ms(d.reset_after_us),
                }
            })
            .collect()
    }

    /// Encodes the set for a snapshot.
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec(self)
    }

    /// Decodes a snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlimit_protocol::AlgorithmKind;

    fn spec(name: &str, alg: AlgorithmKind, limit: u64, window_ms: u64) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            algorithm: alg,
            limit,
            window_ms,
            burst: None,
        }
    }

    const S: u64 = 1_000_000;

    #[test]
    fn two_limits_deny_by_whichever_binds_and_spend_nothing_on_denial() {
        // 5/s and 7/min, the acceptance example.
        let mut set = LimitSet::new(&[
            spec("per-second", AlgorithmKind::SlidingLog, 5, 1_000),
            spec("per-minute", AlgorithmKind::SlidingLog, 7, 60_000),
        ]);
        let t0 = 1_000 * S;
        for _ in 0..5 {
            assert!(set.check(t0, 1).unwrap().allowed);
        }
        let r = set.check(t0, 1).unwrap();
        assert!(!r.allowed);
        assert_eq!(r.denied_by.as_deref(), Some("per-second"));
        // The per-minute limit was not charged for the denied check.
        assert_eq!(r.limits[1].remaining, 2);
        let t1 = t0 + 2 * S;
        assert!(set.check(t1, 1).unwrap().allowed);
        assert!(set.check(t1, 1).unwrap().allowed);
        let r = set.check(t1, 1).unwrap();
        assert!(!r.allowed);
        assert_eq!(r.denied_by.as_deref(), Some("per-minute"));
        assert_eq!(
            r.limits[0].remaining, 3,
            "per-second keeps what the denial did not spend"
        );
        // Cost 3 is denied by per-minute (0 left) and spends nothing from per-second.
        let r = set.check(t1, 3).unwrap();
        assert!(!r.allowed);
        assert_eq!(r.limits[0].remaining, 3);
    }

    #[test]
    fn cost_above_capacity_is_an_error_not_a_denial() {
        let mut set = LimitSet::new(&[spec("a", AlgorithmKind::FixedWindow, 10, 1_000)]);
        assert_eq!(
            set.check(0, 11),
            Err(CheckError::CostExceedsCapacity {
                limit: "a".into(),
                capacity: 10,
                cost: 11
            })
        );
        assert!(set.check(0, 10).unwrap().allowed);
    }

    #[test]
    fn reconcile_keeps_spent_units_when_only_the_quota_changes() {
        let mut set = LimitSet::new(&[spec("a", AlgorithmKind::FixedWindow, 10, 60_000)]);
        for _ in 0..4 {
            set.check(0, 1).unwrap();
        }
        set.reconcile(&[
            spec("a", AlgorithmKind::FixedWindow, 5, 60_000),
            spec("b", AlgorithmKind::FixedWindow, 2, 1_000),
        ]);
        let r = set.check(0, 1).unwrap();
        assert!(r.allowed);
        assert_eq!(r.limits[0].remaining, 0);
        assert_eq!(r.limits[1].remaining, 1);
        assert!(!set.check(0, 1).unwrap().allowed);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut set = LimitSet::new(&[spec("a", AlgorithmKind::SlidingWindow, 10, 60_000)]);
        set.check(5 * S, 3).unwrap();
        let back = LimitSet::decode(&set.encode().expect("encodes")).unwrap();
        assert_eq!(back, set);
        assert_eq!(set.peek(5 * S)[0].used, 3);
    }
}
