//! Fixed window: a counter per window, windows aligned to multiples of
//! `window_us` since the Unix epoch.
//!
//! Semantics (exact):
//! - The window of an instant `t` is `t / window_us`; it spans
//!   `[k * window_us, (k + 1) * window_us)`.
//! - A check of `cost` at `now` passes iff `count + cost <= limit`, where
//!   `count` is the units admitted in the window of `now`.
//! - `remaining` = `limit - count` after this check (saturating at zero when a
//!   lowered quota left `count` above `limit`).
//! - `reset_after_us` = end of the current window − `now` if anything is
//!   spent in the current window (after this check), else `0` (already full).
//! - `retry_after_us` (denied) = end of the current window − `now`: the next
//!   window starts empty and `cost <= limit` fits there. When `cost > limit`
//!   it never fits and `retry_after_us = reset_after_us`.
//! - Clock skew: `now` is taken as `max(now, last_us)`, the latest committed
//!   instant, so the window index never goes back.
//!
//! This admits up to `2 * limit` units in an unaligned interval of length
//! `window_us` (the end of one window and the start of the next); use the
//! sliding algorithms when that matters.

use super::{Algorithm, Decision, Micros};
use serde::{Deserialize, Serialize};

/// Fixed-window counter state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedWindow {
    limit: u64,
    window_us: u64,
    /// Index (`t / window_us`) of the window `count` belongs to.
    window: u64,
    /// Units admitted in `window`.
    count: u64,
    /// Latest committed instant.
    last_us: Micros,
}

impl FixedWindow {
    /// Restores the invariants of a decoded state (a window of at least 1 µs).
    pub(super) fn repair(&mut self) {
        self.window_us = self.window_us.max(1);
    }

    /// A fresh (empty) fixed window. A zero window is treated as 1 µs.
    pub fn new(limit: u64, window_us: u64) -> Self {
        FixedWindow {
            limit,
            window_us: window_us.max(1),
            window: 0,
            count: 0,
            last_us: 0,
        }
    }

    /// Changes the limit, keeping what was spent in the current window.
    /// Returns false (the caller starts fresh) when the window differs.
    pub fn set_quota(&mut self, limit: u64, window_us: u64) -> bool {
        if window_us.max(1) != self.window_us {
            return false;
        }
        self.limit = limit;
        true
    }

    /// Units spent in the window of `now` (already clamped to `last_us`).
    fn count_at(&self, now: Micros) -> u64 {
        if now / self.window_us == self.window {
            self.count
        } else {
            0
        }
    }
}

impl Algorithm for FixedWindow {
    fn evaluate(&self, now: Micros, cost: u64) -> Decision {
        let now = now.max(self.last_us);
        let count = self.count_at(now);
        let to_window_end = self.window_us - now % self.window_us;
        let allowed = cost <= self.limit && count.saturating_add(cost) <= self.limit;
        let used = if allowed {
            count.saturating_add(cost)
        } else {
            count
        };
        let reset_after_us = if used == 0 { 0 } else { to_window_end };
        let retry_after_us = if allowed {
            0
        } else if cost > self.limit {
            reset_after_us
        } else {
            to_window_end
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
        let window = now / self.window_us;
        if window != self.window {
            self.window = window;
            self.count = 0;
        }
        self.count = self.count.saturating_add(cost);
    }

    fn capacity(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_000_000; // a multiple of W

    #[test]
    fn admits_up_to_limit_then_denies() {
        let mut s = FixedWindow::new(3, W);
        let now = T0 + 250_000;
        for left in (0..3).rev() {
            let d = s.check(now, 1);
            assert!(d.allowed);
            assert_eq!(d.limit, 3);
            assert_eq!(d.remaining, left);
            assert_eq!(d.reset_after_us, 750_000);
            assert_eq!(d.retry_after_us, 0);
        }
        let before = s.clone();
        let d = s.check(now + 1, 1);
        assert_eq!(
            d,
            Decision {
                allowed: false,
                limit: 3,
                remaining: 0,
                reset_after_us: 749_999,
                retry_after_us: 749_999
            }
        );
        assert_eq!(s, before);
    }

    #[test]
    fn rolls_over_at_the_aligned_boundary() {
        let mut s = FixedWindow::new(2, W);
        assert!(s.check(T0 + W - 1, 2).allowed);
        assert!(!s.check(T0 + W - 1, 1).allowed);
        let d = s.check(T0 + W, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
        assert_eq!(d.reset_after_us, W);
    }

    #[test]
    fn cost_above_one_and_above_limit() {
        let mut s = FixedWindow::new(10, W);
        let d = s.check(T0, 7);
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        let d = s.check(T0 + 10, 4);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 3);
        assert_eq!(d.retry_after_us, W - 10);
        assert!(s.check(T0 + 10, 3).allowed);
        // A cost above the limit never fits: retry is the time until full.
        let d = FixedWindow::new(10, W).evaluate(T0, 11);
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after_us, d.retry_after_us),
            (false, 10, 0, 0)
        );
        let d = s.evaluate(T0 + 10, 11);
        assert_eq!(
            (d.allowed, d.reset_after_us, d.retry_after_us),
            (false, W - 10, W - 10)
        );
    }

    #[test]
    fn time_going_backwards_frees_nothing() {
        let mut s = FixedWindow::new(1, W);
        assert!(s.check(T0 + W, 1).allowed);
        // An earlier instant in the previous window is treated as the latest one.
        assert_eq!(s.evaluate(T0, 1), s.evaluate(T0 + W, 1));
        assert!(!s.check(T0, 1).allowed);
        assert!(!s.check(0, 1).allowed);
    }

    #[test]
    fn set_quota_keeps_what_was_spent() {
        let mut s = FixedWindow::new(5, W);
        assert!(s.check(T0, 4).allowed);
        assert!(s.set_quota(2, W));
        let d = s.evaluate(T0, 1);
        assert_eq!((d.allowed, d.remaining), (false, 0));
        assert!(s.set_quota(10, W));
        assert_eq!(s.evaluate(T0, 1).remaining, 5);
        assert!(!s.set_quota(10, 2 * W));
    }

    #[test]
    fn extreme_instants_do_not_overflow() {
        let mut s = FixedWindow::new(1_000_000_000_000, 400 * 24 * 3_600 * 1_000_000);
        let d = s.check(u64::MAX, 1_000_000_000_000);
        assert!(d.allowed);
        assert!(!s.check(u64::MAX, 1).allowed);
    }
}
