//! GCRA, the generic cell rate algorithm (leaky bucket as a meter).
//!
//! The emission interval is `T = window_us / limit` µs per unit and the
//! tolerance lets a burst of `burst` units pass at once from an empty state.
//! To stay exact, time is scaled by `limit`: an instant `t` is `t * limit`
//! and one unit is `window_us` (that is `T * limit`). The state is the
//! theoretical arrival time `tat` in those scaled units (u128).
//!
//! Semantics (exact), with `ns = now * limit` and `W = window_us`:
//! - `new_tat = max(tat, ns) + cost * W`; a check passes iff
//!   `new_tat - ns <= burst * W`, and then `tat = new_tat`.
//! - This is the token bucket of [`TokenBucket`](super::TokenBucket) with
//!   `level = burst * W - max(0, tat - ns)`: same decisions, same interval
//!   property (over any interval `[a, b]` at most
//!   `burst + floor(limit * (b - a) / W)` units pass).
//! - `remaining` = `floor((burst * W - (tat - ns)) / W)` after this check.
//! - `reset_after_us` = `ceil((tat - ns) / limit)` after this check: until
//!   the meter is empty again.
//! - `retry_after_us` (denied) = `ceil((max(tat, ns) + cost * W - burst * W - ns) / limit)`.
//!   When `cost > burst` it never passes and `retry_after_us = reset_after_us`.
//! - Clock skew: `now` is taken as `max(now, last_us)`, the latest committed
//!   instant.

use super::{Algorithm, Decision, Micros, ceil_div_us, sat_u64};
use serde::{Deserialize, Serialize};

/// GCRA state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gcra {
    /// Rate: `limit` units per `window_us`.
    limit: u64,
    window_us: u64,
    /// Units that may pass at once.
    burst: u64,
    /// Theoretical arrival time, in µs × `limit`.
    #[serde(with = "super::wide")]
    tat: u128,
    /// Latest committed instant.
    last_us: Micros,
}

impl Gcra {
    /// Restores the invariants of a decoded state (a window of at least 1 µs).
    pub(super) fn repair(&mut self) {
        self.window_us = self.window_us.max(1);
    }

    /// A fresh (empty) meter. A zero window is treated as 1 µs.
    pub fn new(limit: u64, window_us: u64, burst: u64) -> Self {
        Gcra {
            limit,
            window_us: window_us.max(1),
            burst,
            tat: 0,
            last_us: 0,
        }
    }

    /// Changes rate and tolerance, keeping what was spent (the debt
    /// `tat - now`, capped at the new tolerance; rescaled to the new rate at
    /// the last commit). Returns false (the caller starts fresh) when the
    /// window differs.
    pub fn set_quota(&mut self, limit: u64, window_us: u64, burst: u64) -> bool {
        if window_us.max(1) != self.window_us {
            return false;
        }
        let debt = self
            .debt_at(self.last_us)
            .min(u128::from(burst) * u128::from(self.window_us));
        self.limit = limit;
        self.burst = burst;
        self.tat = self.scaled(self.last_us).saturating_add(debt);
        true
    }

    /// `t` in scaled units.
    fn scaled(&self, t: Micros) -> u128 {
        u128::from(t) * u128::from(self.limit)
    }

    /// `max(0, tat - now)` in scaled units: `units in the meter × W`.
    fn debt_at(&self, now: Micros) -> u128 {
        self.tat.saturating_sub(self.scaled(now))
    }
}

impl Algorithm for Gcra {
    fn evaluate(&self, now: Micros, cost: u64) -> Decision {
        let now = now.max(self.last_us);
        let debt = self.debt_at(now);
        let w = u128::from(self.window_us);
        let tolerance = u128::from(self.burst) * w;
        let new_debt = debt.saturating_add(u128::from(cost) * w);
        let allowed = cost <= self.burst && new_debt <= tolerance;
        let after = if allowed { new_debt } else { debt };
        let rate = u128::from(self.limit);
        let reset_after_us = ceil_div_us(after, rate);
        let retry_after_us = if allowed {
            0
        } else if cost > self.burst {
            reset_after_us
        } else {
            ceil_div_us(new_debt - tolerance, rate)
        };
        Decision {
            allowed,
            limit: self.burst,
            remaining: sat_u64(tolerance.saturating_sub(after) / w),
            reset_after_us,
            retry_after_us,
        }
    }

    fn commit(&mut self, now: Micros, cost: u64) {
        let now = now.max(self.last_us);
        self.last_us = now;
        self.tat = self
            .tat
            .max(self.scaled(now))
            .saturating_add(u128::from(cost) * u128::from(self.window_us));
    }

    fn capacity(&self) -> u64 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_123_456;

    #[test]
    fn burst_passes_at_once_then_one_per_interval() {
        // 10 per second (T = 100 ms), burst 5.
        let mut s = Gcra::new(10, W, 5);
        for left in (0..5).rev() {
            let d = s.check(T0, 1);
            assert_eq!(
                d,
                Decision {
                    allowed: true,
                    limit: 5,
                    remaining: left,
                    reset_after_us: (5 - left) * W / 10,
                    retry_after_us: 0
                }
            );
        }
        let before = s.clone();
        let d = s.check(T0, 1);
        assert_eq!(
            d,
            Decision {
                allowed: false,
                limit: 5,
                remaining: 0,
                reset_after_us: W / 2,
                retry_after_us: W / 10
            }
        );
        assert_eq!(s, before);
        assert!(!s.evaluate(T0 + W / 10 - 1, 1).allowed);
        assert!(s.check(T0 + W / 10, 1).allowed);
        assert!(!s.check(T0 + W / 10, 1).allowed);
    }

    #[test]
    fn uneven_interval_is_exact() {
        // 3 per second: T = 333_333.33 µs.
        let mut s = Gcra::new(3, W, 1);
        assert!(s.check(T0, 1).allowed);
        let d = s.evaluate(T0 + 1, 1);
        assert_eq!(
            (d.allowed, d.retry_after_us, d.reset_after_us),
            (false, 333_333, 333_333)
        );
        assert!(!s.evaluate(T0 + 333_333, 1).allowed);
        assert!(s.check(T0 + 333_334, 1).allowed);
        // With a burst of 1 the 0.67 µs of lateness is lost: the next pass is
        // one interval after the last one, at T0 + 666_667.33.
        assert!(!s.evaluate(T0 + 666_667, 1).allowed);
        assert!(s.check(T0 + 666_668, 1).allowed);
    }

    #[test]
    fn cost_above_one_and_above_burst() {
        let mut s = Gcra::new(1, W, 10);
        assert!(s.check(T0, 6).allowed);
        let d = s.check(T0, 5);
        assert_eq!(
            (d.allowed, d.remaining, d.retry_after_us, d.reset_after_us),
            (false, 4, W, 6 * W)
        );
        let d = s.evaluate(T0, 11);
        assert_eq!((d.allowed, d.retry_after_us), (false, 6 * W));
        let d = Gcra::new(1, W, 10).evaluate(T0, 11);
        assert_eq!((d.allowed, d.remaining, d.retry_after_us), (false, 10, 0));
    }

    #[test]
    fn time_going_backwards_frees_nothing() {
        let mut s = Gcra::new(1, W, 1);
        assert!(s.check(T0, 1).allowed);
        assert_eq!(s.evaluate(0, 1), s.evaluate(T0, 1));
        assert!(!s.check(T0 - 1, 1).allowed);
        assert!(s.check(T0 + W, 1).allowed);
    }

    #[test]
    fn set_quota_keeps_the_debt() {
        let mut s = Gcra::new(10, W, 10);
        assert!(s.check(T0, 4).allowed);
        // Doubling the rate: 4 units now drain in 200 ms.
        assert!(s.set_quota(20, W, 20));
        let d = s.evaluate(T0, 1);
        assert_eq!((d.remaining, d.reset_after_us), (15, 250_000));
        assert_eq!(s.evaluate(T0 + 200_000, 1).remaining, 19);
        assert!(s.set_quota(20, W, 3));
        assert!(!s.evaluate(T0, 1).allowed);
        assert!(!s.set_quota(20, 2 * W, 3));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let l = 1_000_000_000_000;
        let mut s = Gcra::new(l, 400 * 24 * 3_600 * 1_000_000, l);
        assert!(s.check(u64::MAX - 1, l).allowed);
        let d = s.check(u64::MAX, l);
        assert!(!d.allowed);
        assert!(!s.check(u64::MAX, 1).allowed);
        let d = Gcra::new(0, W, 2).check(u64::MAX, 2);
        assert!(d.allowed);
        assert_eq!(d.reset_after_us, u64::MAX);
    }
}
