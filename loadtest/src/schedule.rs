//! The open-loop arrival schedule.
//!
//! Request `i` (0-based) is *intended* to be sent at `start + offset(i)`,
//! whatever happened to the requests before it. Latency is measured from that
//! intended time, so when the server stalls, the requests that should have
//! gone out during the stall carry the stall in their latency (no coordinated
//! omission). The schedule is a pure function of the index: a constant rate,
//! optionally multiplied by a factor during one spike interval.

use std::time::Duration;

/// A rate multiplied by `factor` during `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spike {
    pub start: Duration,
    pub len: Duration,
    pub factor: f64,
}

/// A constant arrival rate (per second), with an optional spike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub rate: f64,
    pub spike: Option<Spike>,
}

impl Schedule {
    /// A constant rate. `rate` must be positive and finite.
    pub fn constant(rate: f64) -> Self {
        Schedule { rate, spike: None }
    }

    /// `rate`, times `factor` for `len` centred in a run of `duration`.
    /// The spike is `len` long, or a third of the run if that is shorter.
    pub fn with_centred_spike(rate: f64, duration: Duration, len: Duration, factor: f64) -> Self {
        let len = len.min(duration / 3);
        let start = (duration.saturating_sub(len)) / 2;
        Schedule {
            rate,
            spike: Some(Spike { start, len, factor }),
        }
    }

    /// The rate in force at `t` after the start.
    pub fn rate_at(&self, t: Duration) -> f64 {
        match self.spike {
            Some(s) if t >= s.start && t < s.start + s.len => self.rate * s.factor,
            _ => self.rate,
        }
    }

    /// Intended send offset of request `i` (0-based): the time at which the
    /// cumulative number of arrivals reaches `i`. Request 0 goes at 0.
    pub fn offset(&self, i: u64) -> Duration {
        let i = i as f64;
        let secs = match self.spike {
            None => i / self.rate,
            Some(s) => {
                let a = s.start.as_secs_f64();
                let l = s.len.as_secs_f64();
                let before = self.rate * a;
                let during = self.rate * s.factor * l;
                if i < before {
                    i / self.rate
                } else if i < before + during {
                    a + (i - before) / (self.rate * s.factor)
                } else {
                    a + l + (i - before - during) / self.rate
                }
            }
        };
        Duration::from_nanos((secs * 1e9).round() as u64)
    }

    /// How many requests the schedule sends in `[0, duration)`.
    pub fn count_before(&self, duration: Duration) -> u64 {
        // The smallest i whose offset is at or past `duration`.
        let d = duration.as_secs_f64();
        let approx = match self.spike {
            None => d * self.rate,
            Some(s) => {
                let a = s.start.as_secs_f64();
                let l = s.len.as_secs_f64();
                let during = (d - a).clamp(0.0, l);
                d * self.rate + during * self.rate * (s.factor - 1.0)
            }
        };
        let mut i = approx.floor().max(0.0) as u64;
        while i > 0 && self.offset(i - 1) >= duration {
            i -= 1;
        }
        while self.offset(i) < duration {
            i += 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn constant_rate_spaces_requests_evenly() {
        let s = Schedule::constant(1000.0);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), ms(1));
        assert_eq!(s.offset(1500), ms(1500));
        let s = Schedule::constant(3.0);
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset(3), ms(1000));
        assert_eq!(Schedule::constant(1000.0).count_before(ms(2000)), 2000);
        assert_eq!(Schedule::constant(3.0).count_before(ms(1000)), 3);
        assert_eq!(Schedule::constant(3.0).count_before(ms(1001)), 4);
    }

    #[test]
    fn spike_multiplies_the_rate_in_its_interval_only() {
        // 100/s, 10x for 10 s in the middle of 30 s: [10 s, 20 s).
        let s = Schedule::with_centred_spike(
            100.0,
            Duration::from_secs(30),
            Duration::from_secs(10),
            10.0,
        );
        let sp = s.spike.expect("spike");
        assert_eq!(sp.start, Duration::from_secs(10));
        assert_eq!(sp.len, Duration::from_secs(10));
        // Before: 10 ms apart.
        assert_eq!(s.offset(999), ms(9990));
        assert_eq!(s.offset(1000), ms(10_000));
        // During: 1 ms apart.
        assert_eq!(s.offset(1001), ms(10_001));
        assert_eq!(s.offset(1000 + 10_000 - 1), ms(19_999));
        // After: 10 ms apart again.
        assert_eq!(s.offset(11_000), ms(20_000));
        assert_eq!(s.offset(11_001), ms(20_010));
        assert_eq!(
            s.count_before(Duration::from_secs(30)),
            1000 + 10_000 + 1000
        );
        assert_eq!(s.rate_at(ms(9_999)), 100.0);
        assert_eq!(s.rate_at(ms(10_000)), 1000.0);
        assert_eq!(s.rate_at(ms(20_000)), 100.0);
    }

    #[test]
    fn offsets_are_monotonic_and_short_runs_get_a_third_long_spike() {
        let s = Schedule::with_centred_spike(
            50.0,
            Duration::from_secs(6),
            Duration::from_secs(10),
            10.0,
        );
        let sp = s.spike.expect("spike");
        assert_eq!(sp.len, Duration::from_secs(2));
        assert_eq!(sp.start, Duration::from_secs(2));
        let mut last = Duration::ZERO;
        for i in 1..2_000 {
            let o = s.offset(i);
            assert!(o > last, "offset({i}) = {o:?} not after {last:?}");
            last = o;
        }
        assert_eq!(s.count_before(Duration::from_secs(6)), 100 + 1000 + 100);
    }
}
