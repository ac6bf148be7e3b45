//! Sliding log: the exact sliding window.
//!
//! Semantics (exact):
//! - Every admitted check is logged as `(t, cost)`. An entry counts while
//!   `now < t + window_us`, i.e. the live entries are those in the half-open
//!   interval `(now - window_us, now]`.
//! - A check of `cost` at `now` passes iff `live + cost <= limit`, where
//!   `live` is the sum of the live entries. Hence every interval of
//!   `window_us` microseconds holds at most `limit` admitted units.
//! - `remaining` = `limit - live` after this check (saturating at zero).
//! - `reset_after_us` = until the newest live entry expires (`window_us` when
//!   this check was admitted), `0` when nothing is live.
//! - `retry_after_us` (denied) = until enough of the oldest live entries
//!   expire for `cost` to fit. When `cost > limit` it never fits and
//!   `retry_after_us = reset_after_us`.
//! - Clock skew: `now` is taken as `max(now, last_us)`, the latest committed
//!   instant, so entries never come back to life.
//!
//! Memory: entries are kept in time order; `commit` evicts the expired ones
//! and merges a check into the newest entry when both share an instant, so
//! after a commit the log holds at most one entry per distinct instant in the
//! window, at most `limit` entries. `evaluate` does not mutate: it skips the
//! expired prefix (cheap, it is at the front).

use super::{Algorithm, Decision, Micros};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Sliding-log state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingLog {
    limit: u64,
    window_us: u64,
    /// `(instant, units)` of admitted checks, oldest first, instants strictly increasing.
    entries: VecDeque<(Micros, u64)>,
    /// Sum of the units in `entries` (expired ones included until evicted).
    total: u64,
    /// Latest committed instant.
    last_us: Micros,
}

impl SlidingLog {
    /// Restores the invariants of a decoded state: a window of at least
    /// 1 µs, entries in time order and none after the last check (a check
    /// computes the time to each entry's expiry as `now - t` with
    /// `now >= last_us`), and `total` the sum of the entries.
    pub(super) fn repair(&mut self) {
        self.window_us = self.window_us.max(1);
        self.entries.make_contiguous().sort_by_key(|&(t, _)| t);
        if let Some(&(t, _)) = self.entries.back() {
            self.last_us = self.last_us.max(t);
        }
        self.total = self
            .entries
            .iter()
            .fold(0u64, |sum, &(_, c)| sum.saturating_add(c));
    }

    /// A fresh (empty) log. A zero window is treated as 1 µs.
    pub fn new(limit: u64, window_us: u64) -> Self {
        SlidingLog {
            limit,
            window_us: window_us.max(1),
            entries: VecDeque::new(),
            total: 0,
            last_us: 0,
        }
    }

    /// Changes the limit, keeping the log. Returns false (the caller starts
    /// fresh) when the window differs.
    pub fn set_quota(&mut self, limit: u64, window_us: u64) -> bool {
        if window_us.max(1) != self.window_us {
            return false;
        }
        self.limit = limit;
        true
    }

    /// Whether an entry logged at `t` has expired at `now`.
    fn expired(&self, t: Micros, now: Micros) -> bool {
        u128::from(t) + u128::from(self.window_us) <= u128::from(now)
    }

    /// Microseconds from `now` until an entry logged at `t <= now` expires.
    fn until_expiry(&self, t: Micros, now: Micros) -> u64 {
        self.window_us.saturating_sub(now - t)
    }

    /// Number of expired entries at the front, and their units.
    fn expired_prefix(&self, now: Micros) -> (usize, u64) {
        let mut n = 0;
        let mut units = 0u64;
        for &(t, c) in &self.entries {
            if !self.expired(t, now) {
                break;
            }
            n += 1;
            units = units.saturating_add(c);
        }
        (n, units)
    }
}

impl Algorithm for SlidingLog {
    fn evaluate(&self, now: Micros, cost: u64) -> Decision {
        let now = now.max(self.last_us);
        let (skip, expired_units) = self.expired_prefix(now);
        let live = self.total.saturating_sub(expired_units);
        let allowed = cost <= self.limit && live.saturating_add(cost) <= self.limit;
        let spent = allowed && cost > 0;
        let used = if spent {
            live.saturating_add(cost)
        } else {
            live
        };
        let reset_after_us = if spent {
            self.window_us
        } else {
            match self.entries.back() {
                Some(&(t, _)) if !self.expired(t, now) => self.until_expiry(t, now),
                _ => 0,
            }
        };
        let retry_after_us = if allowed {
            0
        } else if cost > self.limit {
            reset_after_us
        } else {
            // Expire the oldest live entries until `cost` fits. Since
            // `cost <= limit`, expiring all of them is enough.
            let need = live.saturating_add(cost) - self.limit;
            let mut freed = 0u64;
            let mut retry = reset_after_us;
            for &(t, c) in self.entries.iter().skip(skip) {
                freed = freed.saturating_add(c);
                if freed >= need {
                    retry = self.until_expiry(t, now);
                    break;
                }
            }
            retry
        };
        Decision {
            allowed,
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset_after_us,
            retry_after_us,
        }
    }

    fn commit(&mut self, now: Micros, cost: u64) {
        let now = now.max(self.last_us);
        self.last_us = now;
        while let Some(&(t, c)) = self.entries.front() {
            if !self.expired(t, now) {
                break;
            }
            self.total = self.total.saturating_sub(c);
            self.entries.pop_front();
        }
        if cost == 0 {
            return;
        }
        self.total = self.total.saturating_add(cost);
        match self.entries.back_mut() {
            Some((t, c)) if *t == now => *c = c.saturating_add(cost),
            _ => self.entries.push_back((now, cost)),
        }
    }

    fn capacity(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::AlgoState;

    #[test]
    fn a_decoded_log_with_an_entry_after_its_last_check_is_repaired_not_a_panic() {
        // A snapshot the fuzzer built: entries out of order, one later than
        // `last_us`, a wrong total. Checking it computed `now - t` for an
        // entry after `now` and panicked on the subtraction.
        let json = r#"{"SlidingLog":{"limit":3,"window_us":1000000,
            "entries":[[5000000,1],[2000000,2]],"total":7,"last_us":1000000}}"#;
        let AlgoState::SlidingLog(log) = serde_json::from_str::<AlgoState>(json).expect("decodes")
        else {
            panic!("decoded another algorithm");
        };
        assert_eq!(
            log.entries.iter().copied().collect::<Vec<_>>(),
            [(2_000_000, 2), (5_000_000, 1)]
        );
        assert_eq!(log.last_us, 5_000_000);
        assert_eq!(log.total, 3);
        // An earlier `now` is read as the last check (5 s): the entry of 2 s
        // has expired, the one of 5 s holds 1 of the 3 units.
        let d = log.evaluate(1_500_000, 3);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, W, "the 5 s entry expires a window later");
        let d = log.evaluate(1_500_000, 2);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    const W: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_123_456;

    #[test]
    fn admits_up_to_limit_then_denies() {
        let mut s = SlidingLog::new(3, W);
        for (i, left) in [2, 1, 0].into_iter().enumerate() {
            let d = s.check(T0 + 100 * i as u64, 1);
            assert_eq!(
                d,
                Decision {
                    allowed: true,
                    limit: 3,
                    remaining: left,
                    reset_after_us: W,
                    retry_after_us: 0
                }
            );
        }
        let before = s.clone();
        let d = s.check(T0 + 500, 1);
        // The oldest entry (T0) expires at T0 + W.
        assert_eq!(
            d,
            Decision {
                allowed: false,
                limit: 3,
                remaining: 0,
                reset_after_us: W - 300,
                retry_after_us: W - 500
            }
        );
        assert_eq!(s, before);
    }

    #[test]
    fn entries_expire_exactly_one_window_later() {
        let mut s = SlidingLog::new(2, W);
        assert!(s.check(T0, 1).allowed);
        assert!(s.check(T0 + 10, 1).allowed);
        assert!(!s.check(T0 + W - 1, 1).allowed);
        let d = s.check(T0 + W, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!s.check(T0 + W + 9, 1).allowed);
        assert!(s.check(T0 + W + 10, 1).allowed);
        // Evicted on commit: only the two entries of the last window remain.
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.total, 2);
    }

    #[test]
    fn retry_waits_for_enough_old_entries() {
        let mut s = SlidingLog::new(10, W);
        assert!(s.check(T0, 3).allowed);
        assert!(s.check(T0 + 100, 3).allowed);
        assert!(s.check(T0 + 200, 4).allowed);
        // Needs 5 units freed: the first two entries (6 units) expire at T0 + 100 + W.
        let d = s.evaluate(T0 + 300, 5);
        assert_eq!(
            (d.allowed, d.remaining, d.retry_after_us, d.reset_after_us),
            (false, 0, W - 200, W - 100)
        );
        assert!(!s.evaluate(T0 + 100 + W - 1, 5).allowed);
        assert!(s.evaluate(T0 + 100 + W, 5).allowed);
        // A cost above the limit never fits: retry is the time until full.
        let d = s.evaluate(T0 + 300, 11);
        assert_eq!((d.allowed, d.retry_after_us), (false, W - 100));
    }

    #[test]
    fn same_instant_entries_merge() {
        let mut s = SlidingLog::new(100, W);
        for _ in 0..50 {
            assert!(s.check(T0, 2).allowed);
        }
        assert_eq!(s.entries, VecDeque::from([(T0, 100)]));
        assert!(!s.check(T0 + 1, 1).allowed);
    }

    #[test]
    fn time_going_backwards_frees_nothing() {
        let mut s = SlidingLog::new(1, W);
        assert!(s.check(T0, 1).allowed);
        assert!(s.check(T0 + W, 1).allowed);
        assert_eq!(s.evaluate(T0, 1), s.evaluate(T0 + W, 1));
        assert!(!s.check(T0 + 5, 1).allowed);
        // A backwards commit is logged at the latest instant.
        s.commit(3, 1);
        assert_eq!(s.entries.back(), Some(&(T0 + W, 2)));
    }

    #[test]
    fn set_quota_keeps_the_log() {
        let mut s = SlidingLog::new(5, W);
        assert!(s.check(T0, 4).allowed);
        assert!(s.set_quota(3, W));
        let d = s.evaluate(T0 + 1, 1);
        assert_eq!(
            (d.allowed, d.remaining, d.retry_after_us),
            (false, 0, W - 1)
        );
        assert!(s.set_quota(6, W));
        assert_eq!(s.evaluate(T0 + 1, 2).remaining, 0);
        assert!(!s.set_quota(6, W + 1));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// After every commit the log holds only live entries, at distinct
        /// increasing instants, at most `limit` of them, and `total` is their sum.
        #[test]
        fn memory_stays_bounded(
            limit in 1u64..=50,
            window_us in 1u64..=200,
            steps in proptest::collection::vec((0u64..=20, 1u64..=5, proptest::prelude::any::<bool>()), 1..200),
        ) {
            let mut s = SlidingLog::new(limit, window_us);
            let mut now = T0;
            for (dt, cost, back) in steps {
                now = if back { now - dt } else { now + dt };
                if s.check(now, cost).allowed {
                    proptest::prop_assert!(s.entries.len() as u64 <= limit);
                    proptest::prop_assert!(s.entries.iter().all(|&(t, _)| !s.expired(t, s.last_us)));
                    proptest::prop_assert!(s.entries.iter().zip(s.entries.iter().skip(1)).all(|(a, b)| a.0 < b.0));
                    proptest::prop_assert_eq!(s.total, s.entries.iter().map(|e| e.1).sum::<u64>());
                    proptest::prop_assert!(s.total <= limit);
                }
            }
        }
    }

    #[test]
    fn extreme_instants_do_not_overflow() {
        let w = 400 * 24 * 3_600 * 1_000_000;
        let mut s = SlidingLog::new(1_000_000_000_000, w);
        assert!(s.check(u64::MAX - 1, 1_000_000_000_000).allowed);
        let d = s.check(u64::MAX, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, w - 1);
    }
}
