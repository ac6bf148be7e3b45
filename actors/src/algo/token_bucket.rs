//! Token bucket: capacity `burst`, refilled at `limit` tokens per `window_us`,
//! starting full.
//!
//! Semantics (exact): the level is stored scaled by the window,
//! `level = tokens * window_us` (u128), so a refill over `dt` µs adds exactly
//! `dt * limit`, capped at `burst * window_us`; no rounding ever happens.
//! - A check of `cost` at `now` passes iff `cost * window_us <= level(now)`,
//!   and then takes `cost * window_us` out.
//! - Equivalently, over the admitted checks: over any interval `[a, b]`
//!   the admitted units are at most `burst + floor(limit * (b - a) / window_us)`,
//!   and a check passes iff admitting it keeps this true for every interval
//!   ending at its instant (`level(t) = min over a <= t of
//!   burst * W + limit * (t - a) - W * admitted[a, t]`).
//! - `remaining` = `floor(level / window_us)` after this check.
//! - `reset_after_us` = `ceil((burst * W - level) / limit)` after this check:
//!   until the bucket is full again.
//! - `retry_after_us` (denied) = `ceil((cost * W - level) / limit)`. When
//!   `cost > burst` it never passes and `retry_after_us = reset_after_us`.
//! - Clock skew: `now` is taken as `max(now, last_us)`, the latest committed
//!   instant; the level refers to `last_us`, so an earlier instant refills
//!   nothing.
//!
//! [`Gcra`](super::Gcra) is the same meter written with a theoretical
//! arrival time; both give identical decisions (checked by a property test).

use super::{Algorithm, Decision, Micros, ceil_div_us, sat_u64};
use serde::{Deserialize, Serialize};

/// Token-bucket state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Refill: `limit` tokens per `window_us`.
    limit: u64,
    window_us: u64,
    /// Capacity in tokens.
    burst: u64,
    /// Tokens × `window_us` at `last_us`.
    #[serde(with = "super::wide")]
    level: u128,
    /// Latest committed instant.
    last_us: Micros,
}

impl TokenBucket {
    /// Restores the invariants of a decoded state (a window of at least 1 µs).
    pub(super) fn repair(&mut self) {
        self.window_us = self.window_us.max(1);
    }

    /// A fresh (full) bucket. A zero window is treated as 1 µs.
    pub fn new(limit: u64, window_us: u64, burst: u64) -> Self {
        let window_us = window_us.max(1);
        TokenBucket {
            limit,
            window_us,
            burst,
            level: u128::from(burst) * u128::from(window_us),
            last_us: 0,
        }
    }

    /// Changes rate and capacity, keeping what was spent (the deficit below
    /// full, capped at the new capacity). Refill from the last commit on uses
    /// the new rate. Returns false (the caller starts fresh) when the window
    /// differs.
    pub fn set_quota(&mut self, limit: u64, window_us: u64, burst: u64) -> bool {
        if window_us.max(1) != self.window_us {
            return false;
        }
        let deficit = self.full().saturating_sub(self.level);
        self.limit = limit;
        self.burst = burst;
        self.level = self.full().saturating_sub(deficit);
        true
    }

    /// Scaled capacity.
    fn full(&self) -> u128 {
        u128::from(self.burst) * u128::from(self.window_us)
    }

    /// Scaled level at `now` (already clamped to `last_us`).
    fn level_at(&self, now: Micros) -> u128 {
        let refill = u128::from(now - self.last_us) * u128::from(self.limit);
        self.level.saturating_add(refill).min(self.full())
    }
}

impl Algorithm for TokenBucket {
    fn evaluate(&self, now: Micros, cost: u64) -> Decision {
        let now = now.max(self.last_us);
        let level = self.level_at(now);
        let w = u128::from(self.window_us);
        let take = u128::from(cost) * w;
        let allowed = cost <= self.burst && take <= level;
        let after = if allowed { level - take } else { level };
        let rate = u128::from(self.limit);
        let reset_after_us = ceil_div_us(self.full() - after, rate);
        let retry_after_us = if allowed {
            0
        } else if cost > self.burst {
            reset_after_us
        } else {
            ceil_div_us(take - level, rate)
        };
        Decision {
            allowed,
            limit: self.burst,
            remaining: sat_u64(after / w),
            reset_after_us,
            retry_after_us,
        }
    }

    fn commit(&mut self, now: Micros, cost: u64) {
        let now = now.max(self.last_us);
        self.level = self
            .level_at(now)
            .saturating_sub(u128::from(cost) * u128::from(self.window_us));
        self.last_us = now;
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
    fn starts_full_and_drains() {
        // 10 per second, burst 5.
        let mut s = TokenBucket::new(10, W, 5);
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
    }

    #[test]
    fn refills_exactly() {
        // 3 per second: one token every 333_333.33 µs.
        let mut s = TokenBucket::new(3, W, 3);
        assert!(s.check(T0, 3).allowed);
        let d = s.evaluate(T0 + 1, 1);
        assert_eq!(
            (d.allowed, d.retry_after_us, d.reset_after_us),
            (false, 333_333, 999_999)
        );
        assert!(!s.evaluate(T0 + 333_333, 1).allowed);
        assert!(s.evaluate(T0 + 333_334, 1).allowed);
        let d = s.evaluate(T0 + W, 3);
        assert_eq!((d.allowed, d.remaining, d.reset_after_us), (true, 0, W));
        // Capped at the burst.
        assert_eq!(s.evaluate(T0 + 100 * W, 1).remaining, 2);
        assert!(!s.evaluate(T0 + 100 * W, 4).allowed);
    }

    #[test]
    fn cost_above_one_and_above_burst() {
        let mut s = TokenBucket::new(1, W, 10);
        assert!(s.check(T0, 6).allowed);
        let d = s.check(T0, 5);
        assert_eq!(
            (d.allowed, d.remaining, d.retry_after_us, d.reset_after_us),
            (false, 4, W, 6 * W)
        );
        let d = s.evaluate(T0, 11);
        assert_eq!((d.allowed, d.retry_after_us), (false, 6 * W));
        let d = TokenBucket::new(1, W, 10).evaluate(T0, 11);
        assert_eq!((d.allowed, d.remaining, d.retry_after_us), (false, 10, 0));
    }

    #[test]
    fn time_going_backwards_frees_nothing() {
        let mut s = TokenBucket::new(1, W, 1);
        assert!(s.check(T0, 1).allowed);
        assert_eq!(s.evaluate(T0 - 5 * W, 1), s.evaluate(T0, 1));
        assert!(!s.check(0, 1).allowed);
        assert!(s.check(T0 + W, 1).allowed);
    }

    #[test]
    fn set_quota_keeps_the_deficit() {
        let mut s = TokenBucket::new(10, W, 10);
        assert!(s.check(T0, 4).allowed);
        assert!(s.set_quota(10, W, 20));
        assert_eq!(s.evaluate(T0, 1).remaining, 15);
        assert!(s.set_quota(10, W, 3));
        let d = s.evaluate(T0, 1);
        assert_eq!((d.allowed, d.remaining), (false, 0));
        assert!(!s.set_quota(10, W + 1, 3));
    }

    #[test]
    fn zero_rate_never_refills() {
        let mut s = TokenBucket::new(0, W, 2);
        assert!(s.check(T0, 2).allowed);
        let d = s.evaluate(u64::MAX, 1);
        assert_eq!(
            (d.allowed, d.retry_after_us, d.reset_after_us),
            (false, u64::MAX, u64::MAX)
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let l = 1_000_000_000_000;
        let mut s = TokenBucket::new(l, 400 * 24 * 3_600 * 1_000_000, l);
        assert!(s.check(1, l).allowed);
        let d = s.check(u64::MAX, l);
        assert!(d.allowed);
        assert!(!s.check(u64::MAX, 1).allowed);
    }
}
