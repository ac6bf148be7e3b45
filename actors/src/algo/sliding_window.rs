//! Sliding-window counter (Cloudflare's approximation), the default algorithm.
//!
//! Time is cut into windows of `W = window_us` aligned to multiples of `W`
//! since the Unix epoch. The state keeps the units admitted in the current
//! window `k` (`curr`) and in window `k - 1` (`prev`). At an instant `e`
//! microseconds into window `k` the estimated usage of the sliding window
//! `(now - W, now]` is
//!
//! ```text
//! estimate = prev * (W - e) / W + curr
//! ```
//!
//! (the previous window is assumed to have been spent uniformly). A check of
//! `cost` passes iff `estimate + cost <= limit`, computed exactly in integers:
//!
//! ```text
//! prev * (W - e) + (curr + cost) * W <= limit * W        (u128)
//! ```
//!
//! Decision fields:
//! - `remaining` = `floor((limit * W - estimate * W) / W)` after this check:
//!   the largest cost that would pass now.
//! - `reset_after_us`: the estimate is zero once both counted windows are
//!   empty: `2W - e` if `curr > 0` (after this check), else `W - e` if
//!   `prev > 0`, else `0`.
//! - `retry_after_us` (denied): the least number of microseconds after which
//!   the (decreasing) estimate lets `cost` pass, solved exactly for the rest of
//!   this window and for the next one (it always passes two windows later).
//!   When `cost > limit` it never passes and `retry_after_us = reset_after_us`.
//! - Clock skew: `now` is taken as `max(now, last_us)`, the latest committed
//!   instant; windows are attributed by that instant.
//!
//! # Bounds
//!
//! Let `L` be the limit, `n_k` the units admitted in aligned window `k`, all
//! instants being the effective (clock-skew clamped) ones. Every admission at
//! `e` µs into window `k` satisfies, by the rule above,
//! `n_{k-1} * (W - e) + W * (units admitted in window k so far, this one included) <= L * W`.
//! Consequences:
//!
//! 1. **Aligned windows**: `n_k <= L` for every `k` (take the last admission
//!    of window `k`; the `prev` term is non-negative).
//! 2. **Sliding intervals**: take any interval `[s, s + W)` with
//!    `s = (k - 1) * W + σ`, `1 <= σ < W` (for `σ = 0` it is an aligned window,
//!    bound 1). Let `A` be the units admitted in `[s, k * W)` (the tail of window
//!    `k - 1`) and `B` those in `[k * W, s + W)` (the head of window `k`). At
//!    the last admission counted in `B`, `e <= σ - 1` and `prev = n_{k-1} >= A`, so
//!    `A * (W - σ + 1) + B * W <= L * W`, that is
//!
//!    ```text
//!    W * (A + B) <= W * L + A * (σ - 1)
//!    ```
//!
//!    With `A <= L` and `σ <= W - 1` this gives, for `W >= 2`,
//!    `A + B <= L + floor(L * (W - 2) / W) = 2L - ceil(2L / W) < 2L`, and
//!    `A + B <= L` for `W = 1`. The bound is tight: `L` units admitted in the
//!    last microsecond of a window after an empty window, then
//!    `floor(L * (W - 2) / W)` units at `W - 2` µs into the next one.
//!
//! So the counter never exceeds the limit in an aligned window and may let
//! through up to (just under) twice the limit in an unaligned one, only when a
//! burst sits right at the end of a window; for uniformly spread traffic it is
//! close to the exact sliding log at O(1) memory. Both bounds are checked by
//! property tests (`algo::props`), as is the admission rule itself against a
//! brute-force model over the list of admitted checks.

use super::{Algorithm, Decision, Micros};
use serde::{Deserialize, Serialize};

/// Sliding-window counter state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingWindow {
    limit: u64,
    window_us: u64,
    /// Index (`t / window_us`) of the window `curr` counts.
    window: u64,
    /// Units admitted in window `window - 1`.
    prev: u64,
    /// Units admitted in window `window`.
    curr: u64,
    /// Latest committed instant.
    last_us: Micros,
}

impl SlidingWindow {
    /// Restores the invariants of a decoded state (a window of at least 1 µs).
    pub(super) fn repair(&mut self) {
        self.window_us = self.window_us.max(1);
    }

    /// A fresh (empty) counter. A zero window is treated as 1 µs.
    pub fn new(limit: u64, window_us: u64) -> Self {
        SlidingWindow {
            limit,
            window_us: window_us.max(1),
            window: 0,
            prev: 0,
            curr: 0,
            last_us: 0,
        }
    }

    /// Changes the limit, keeping both counts. Returns false (the caller
    /// starts fresh) when the window differs.
    pub fn set_quota(&mut self, limit: u64, window_us: u64) -> bool {
        if window_us.max(1) != self.window_us {
            return false;
        }
        self.limit = limit;
        true
    }

    /// `(window index, prev, curr)` as seen at `now` (already clamped to `last_us`).
    fn counts_at(&self, now: Micros) -> (u64, u64, u64) {
        let window = now / self.window_us;
        if window == self.window {
            (window, self.prev, self.curr)
        } else if Some(window) == self.window.checked_add(1) {
            (window, self.curr, 0)
        } else {
            (window, 0, 0)
        }
    }

    /// Least microseconds after `now` (at `elapsed` µs into its window, with
    /// `prev` and `curr` counted) until `cost <= limit` passes, assuming it
    /// does not pass now.
    fn retry_after(&self, elapsed: u64, prev: u64, curr: u64, cost: u64) -> u64 {
        let w = u128::from(self.window_us);
        let to_next = self.window_us - elapsed;
        // Rest of this window: prev * (W - e) <= (limit - curr - cost) * W.
        if let Some(room) = self
            .limit
            .checked_sub(curr)
            .and_then(|r| r.checked_sub(cost))
            && prev > 0
        {
            let q = u128::from(room) * w / u128::from(prev);
            let e_min = self.window_us.saturating_sub(super::sat_u64(q));
            if e_min < self.window_us {
                return e_min.saturating_sub(elapsed);
            }
        }
        // Next window (prev := curr, curr := 0): curr * (W - e) <= (limit - cost) * W.
        // At its end (e = W) the estimate is zero and any cost <= limit passes.
        let room = u128::from(self.limit.saturating_sub(cost)) * w;
        let e_min = if curr == 0 {
            0
        } else {
            self.window_us
                .saturating_sub(super::sat_u64(room / u128::from(curr)))
        };
        to_next.saturating_add(e_min)
    }
}

impl Algorithm for SlidingWindow {
    fn evaluate(&self, now: Micros, cost: u64) -> Decision {
        let now = now.max(self.last_us);
        let (_, prev, curr) = self.counts_at(now);
        let elapsed = now % self.window_us;
        let w = u128::from(self.window_us);
        // Scaled estimate: prev * (W - e) + curr * W.
        let used = u128::from(prev) * u128::from(self.window_us - elapsed) + u128::from(curr) * w;
        let quota = u128::from(self.limit) * w;
        let allowed = cost <= self.limit && used.saturating_add(u128::from(cost) * w) <= quota;
        let curr_after = if allowed {
            curr.saturating_add(cost)
        } else {
            curr
        };
        let used_after = if allowed {
            used.saturating_add(u128::from(cost) * w)
        } else {
            used
        };
        let reset_after_us = if curr_after > 0 {
            self.window_us.saturating_mul(2) - elapsed
        } else if prev > 0 {
            self.window_us - elapsed
        } else {
            0
        };
        let retry_after_us = if allowed {
            0
        } else if cost > self.limit {
            reset_after_us
        } else {
            self.retry_after(elapsed, prev, curr, cost)
        };
        Decision {
            allowed,
            limit: self.limit,
            remaining: super::sat_u64(quota.saturating_sub(used_after) / w),
            reset_after_us,
            retry_after_us,
        }
    }

    fn commit(&mut self, now: Micros, cost: u64) {
        let now = now.max(self.last_us);
        self.last_us = now;
        let (window, prev, curr) = self.counts_at(now);
        self.window = window;
        self.prev = prev;
        self.curr = curr.saturating_add(cost);
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
        let mut s = SlidingWindow::new(4, W);
        for left in (0..4).rev() {
            let d = s.check(T0 + 100, 1);
            assert_eq!(
                d,
                Decision {
                    allowed: true,
                    limit: 4,
                    remaining: left,
                    reset_after_us: 2 * W - 100,
                    retry_after_us: 0
                }
            );
        }
        let before = s.clone();
        let d = s.check(T0 + 200, 1);
        // Next window at e: 4 * (W - e) <= 3 * W  <=>  e >= W / 4.
        assert_eq!(
            d,
            Decision {
                allowed: false,
                limit: 4,
                remaining: 0,
                reset_after_us: 2 * W - 200,
                retry_after_us: W - 200 + W / 4
            }
        );
        assert_eq!(s, before);
        assert!(!s.evaluate(T0 + W + W / 4 - 1, 1).allowed);
        assert!(s.evaluate(T0 + W + W / 4, 1).allowed);
    }

    #[test]
    fn previous_window_is_weighted() {
        let mut s = SlidingWindow::new(10, W);
        assert!(s.check(T0 + W - 1, 10).allowed);
        // 30% into the next window the previous one weighs 7 units.
        let d = s.evaluate(T0 + W + 300_000, 3);
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after_us),
            (true, 0, 2 * W - 300_000)
        );
        assert!(!s.evaluate(T0 + W + 300_000, 4).allowed);
        let d = s.check(T0 + W + 300_000, 2);
        assert_eq!((d.allowed, d.remaining), (true, 1));
        // prev 10, curr 2; cost 3 needs 10 * (W - e) <= 5 * W: e >= W / 2.
        let d = s.evaluate(T0 + W + 400_000, 3);
        assert_eq!((d.allowed, d.retry_after_us), (false, 100_000));
        // Two windows later everything is forgotten.
        let d = s.evaluate(T0 + 3 * W, 10);
        assert_eq!((d.allowed, d.remaining, d.reset_after_us), (true, 0, 2 * W));
        assert_eq!(s.evaluate(T0 + 3 * W, 1).remaining, 9);
    }

    #[test]
    fn retry_within_the_current_window() {
        let mut s = SlidingWindow::new(10, W);
        assert!(s.check(T0, 8).allowed);
        assert!(s.check(T0 + W, 1).allowed);
        // prev 8, curr 1; cost 2 needs 8 * (W - e) <= 7 * W: e >= W / 8.
        let d = s.evaluate(T0 + W + 1, 2);
        assert_eq!((d.allowed, d.retry_after_us), (false, W / 8 - 1));
        assert!(s.evaluate(T0 + W + W / 8, 2).allowed);
        assert!(!s.evaluate(T0 + W + W / 8 - 1, 2).allowed);
    }

    #[test]
    fn rolls_over_and_resets() {
        let mut s = SlidingWindow::new(2, W);
        assert!(s.check(T0, 2).allowed);
        let d = s.evaluate(T0 + 5, 1);
        assert_eq!((d.allowed, d.reset_after_us), (false, 2 * W - 5));
        // Window k+1: only the previous window weighs; it is empty at 2W.
        let d = s.evaluate(T0 + W + 10, 3);
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after_us, d.retry_after_us),
            (false, 0, W - 10, W - 10)
        );
        let d = s.evaluate(T0 + 2 * W, 2);
        assert!(d.allowed);
        assert_eq!(SlidingWindow::new(2, W).evaluate(T0, 3).retry_after_us, 0);
    }

    #[test]
    fn time_going_backwards_frees_nothing() {
        let mut s = SlidingWindow::new(3, W);
        assert!(s.check(T0 + 2 * W, 3).allowed);
        assert_eq!(s.evaluate(T0, 1), s.evaluate(T0 + 2 * W, 1));
        assert!(!s.check(T0, 1).allowed);
        s.commit(T0, 0);
        assert_eq!(s.window, (T0 + 2 * W) / W);
    }

    #[test]
    fn set_quota_keeps_counts() {
        let mut s = SlidingWindow::new(10, W);
        assert!(s.check(T0, 6).allowed);
        assert!(s.set_quota(4, W));
        let d = s.evaluate(T0 + 1, 1);
        assert_eq!((d.allowed, d.remaining), (false, 0));
        // Next window at e: 6 * (W - e) <= 3 * W: e >= W / 2.
        assert_eq!(d.retry_after_us, W - 1 + W / 2);
        assert!(!s.set_quota(4, W / 2));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let w = 400 * 24 * 3_600 * 1_000_000;
        let l = 1_000_000_000_000;
        let mut s = SlidingWindow::new(l, w);
        assert!(s.check(u64::MAX - 1, l).allowed);
        let d = s.check(u64::MAX, l);
        assert!(!d.allowed);
        assert!(d.retry_after_us > 0);
        let mut s = SlidingWindow::new(l, 1);
        assert!(s.check(u64::MAX, l).allowed);
        assert!(!s.check(u64::MAX, 1).allowed);
    }
}
