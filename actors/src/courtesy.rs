//! Background work that shares a CPU with the threads answering checks
//! gives the CPU back often.
//!
//! The kernel's fair scheduler lets a thread it has picked run for a whole
//! slice (a few milliseconds), whatever its niceness: a lower priority
//! makes a thread picked less often, not for shorter. A check whose thread
//! became ready meanwhile waits that long, and on a busy node those waits
//! are the check latency's tail. The loops of the write-behind (encoding
//! the dirty keys, writing them to the embedded store) call
//! [`Courtesy::tick`] once per item: after a quantum of work (100 µs) it
//! yields the thread to the kernel (`sched_yield`), so a ready check thread
//! runs next, and the background work goes on as soon as the check threads
//! wait again. When nothing else is ready, the yield returns at once.

use std::time::{Duration, Instant};

/// How long background work runs before it offers the CPU.
pub const QUANTUM: Duration = Duration::from_micros(100);

/// Counts work since the last yield; see the [module docs](self).
#[derive(Debug)]
pub struct Courtesy {
    since: Instant,
    quantum: Duration,
    yields: u64,
}

impl Default for Courtesy {
    fn default() -> Self {
        Courtesy::new(QUANTUM)
    }
}

impl Courtesy {
    /// Yields after every `quantum` of work.
    pub fn new(quantum: Duration) -> Courtesy {
        Courtesy {
            since: crate::clock::monotonic(),
            quantum,
            yields: 0,
        }
    }

    /// One item of work done: yields the thread when the quantum is spent.
    /// Returns whether it yielded.
    pub fn tick(&mut self) -> bool {
        let now = crate::clock::monotonic();
        if now.duration_since(self.since) < self.quantum {
            return false;
        }
        std::thread::yield_now();
        self.yields += 1;
        self.since = crate::clock::monotonic();
        true
    }

    /// How many times this one has yielded.
    pub fn yields(&self) -> u64 {
        self.yields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_once_the_quantum_is_spent_and_not_before() {
        let mut c = Courtesy::new(Duration::from_secs(3_600));
        assert!(!c.tick(), "an hour has not passed");
        assert_eq!(c.yields(), 0);
        let mut c = Courtesy::new(Duration::ZERO);
        assert!(c.tick());
        assert!(c.tick());
        assert_eq!(c.yields(), 2);
    }
}
