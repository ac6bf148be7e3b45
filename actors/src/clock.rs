//! The one place that reads the system's clocks.
//!
//! Everything else asks a [`Clock`] (wall-clock time, injected, so tests can
//! fix it) or uses `tokio::time::Instant` (monotonic deadlines, which follow
//! tokio's paused time in tests). `clippy.toml` bans `SystemTime::now` and
//! `std::time::Instant::now` outside this module.

use crate::algo::Micros;

/// A source of wall-clock time in µs since the epoch. Only actors and the
/// services read it; the algorithms take time as an argument.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_us(&self) -> Micros;

    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64 {
        self.now_us() / 1_000
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> Micros {
        wall_us()
    }
}

/// Wall-clock µs since the epoch, for code with no [`Clock`] at hand (ids,
/// log stamps, process start). Prefer an injected clock where one exists.
#[allow(clippy::disallowed_methods)]
pub fn wall_us() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Wall-clock ms since the epoch (see [`wall_us`]).
pub fn wall_ms() -> u64 {
    wall_us() / 1_000
}

/// A monotonic instant, for measuring how long something took (metrics).
/// Deadlines use `tokio::time::Instant` instead.
#[allow(clippy::disallowed_methods)]
pub fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}

/// A clock fixed at an instant that tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn new(now_us: Micros) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicU64::new(now_us))
    }

    pub fn set_us(&self, now_us: Micros) {
        self.0.store(now_us, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn advance_us(&self, by: Micros) {
        self.0.fetch_add(by, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> Micros {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_by_hand() {
        let c = ManualClock::new(5_000);
        assert_eq!(c.now_us(), 5_000);
        assert_eq!(c.now_ms(), 5);
        c.advance_us(2_500);
        assert_eq!(c.now_us(), 7_500);
        c.set_us(1);
        assert_eq!(c.now_us(), 1);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
