//! Latency histograms and counters, per worker, merged at the end.
//!
//! Latencies are recorded in nanoseconds in HDR histograms (3 significant
//! digits, up to 100 s; longer values saturate at 100 s). Each worker keeps
//! its own histograms, so recording takes no lock; the run merges them once.
//! The once-a-second progress line and the timeline use a second, coarser
//! histogram per worker (2 significant digits) that the reporter drains.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Highest recordable latency: 100 s.
pub const MAX_NS: u64 = 100_000_000_000;

/// A latency histogram in nanoseconds with `sigfig` significant digits.
pub fn new_histogram(sigfig: u8) -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_NS, sigfig) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts.
        Err(e) => panic!("histogram bounds: {e}"),
    }
}

/// Records `d` (saturating at [`MAX_NS`]; 0 is recorded as 1 ns).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos())
        .unwrap_or(MAX_NS)
        .clamp(1, MAX_NS);
    h.saturating_record(ns);
}

/// Adds `from` into `into`. Both come from [`new_histogram`], so this cannot fail.
pub fn merge_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    if let Err(e) = into.add(from) {
        // Same bounds on both sides; only a programming error gets here.
        panic!("histogram merge: {e}");
    }
}

/// Why a request or a check did not produce a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The TCP connection could not be made.
    Connect,
    /// No complete answer within the timeout.
    Timeout,
    /// The connection failed during the exchange (reset, closed, bad HTTP).
    Io,
    /// An HTTP status other than a decision (200, 429).
    Status(u16),
    /// The body could not be decoded.
    Parse,
    /// One check of a batch answered with a status other than 200 or 429.
    CheckStatus(u16),
    /// Gubernator answered a check with an error string.
    CheckError,
    /// Open loop: a request that was due before the end of the run but could
    /// not be sent, because every connection was busy until then.
    Unsent,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Io => f.write_str("io"),
            ErrorKind::Status(s) => write!(f, "status_{s}"),
            ErrorKind::Parse => f.write_str("parse"),
            ErrorKind::CheckStatus(s) => write!(f, "check_status_{s}"),
            ErrorKind::CheckError => f.write_str("check_error"),
            ErrorKind::Unsent => f.write_str("unsent"),
        }
    }
}

/// Counters of one worker, or of a whole run once merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// HTTP requests attempted.
    pub requests: u64,
    /// HTTP responses received (any status).
    pub responses: u64,
    /// Checks answered "allowed" (a single validate or one entry of a batch).
    pub allowed: u64,
    /// Checks answered "denied".
    pub denied: u64,
    /// Of the allowed checks, those answered without a limit check
    /// (fail-open: the key's owner could not be asked).
    pub fail_open: u64,
    /// Responses by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Errors by kind: a request error counts once, a failed check of a batch once per check.
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Counts {
    pub fn error(&mut self, kind: ErrorKind) {
        self.error_n(kind, 1);
    }

    pub fn error_n(&mut self, kind: ErrorKind, n: u64) {
        *self.errors.entry(kind).or_insert(0) += n;
    }

    pub fn status(&mut self, status: u16) {
        self.responses += 1;
        *self.by_status.entry(status).or_insert(0) += 1;
    }

    /// Checks with a decision.
    pub fn decisions(&self) -> u64 {
        self.allowed + self.denied
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.responses += o.responses;
        self.allowed += o.allowed;
        self.denied += o.denied;
        self.fail_open += o.fail_open;
        for (k, v) in &o.by_status {
            *self.by_status.entry(*k).or_insert(0) += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(*k).or_insert(0) += v;
        }
    }
}

/// What one worker measured; merged into the run's totals.
#[derive(Debug, Clone)]
pub struct Measurements {
    /// Response time from the *intended* send time (open loop), or from the
    /// actual send time (closed loop, where the two are the same).
    pub latency: Histogram<u64>,
    /// Response time from the actual send time: what a naive client sees.
    pub service: Histogram<u64>,
    pub counts: Counts,
}

impl Default for Measurements {
    fn default() -> Self {
        Measurements {
            latency: new_histogram(3),
            service: new_histogram(3),
            counts: Counts::default(),
        }
    }
}

impl Measurements {
    pub fn merge(&mut self, o: &Measurements) {
        merge_histogram(&mut self.latency, &o.latency);
        merge_histogram(&mut self.service, &o.service);
        self.counts.merge(&o.counts);
    }
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

fn us(ns: u64) -> f64 {
    // Keep two decimals: sub-microsecond precision is noise.
    (ns as f64 / 10.0).round() / 100.0
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_us: (h.mean() / 10.0).round() / 100.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// A latency in µs as a short human string: `87µs`, `1.25ms`, `2.10s`.
pub fn human_us(v: f64) -> String {
    if v < 1_000.0 {
        format!("{v:.0}µs")
    } else if v < 1_000_000.0 {
        format!("{:.2}ms", v / 1_000.0)
    } else {
        format!("{:.2}s", v / 1_000_000.0)
    }
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`
/// (Linux; `None` elsewhere). Tells whether the load generator was the bottleneck.
pub fn process_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, in clock ticks (USER_HZ = 100 on Linux).
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// What the reporter drains from a worker once a second.
#[derive(Debug, Clone)]
pub struct Interval {
    pub latency: Histogram<u64>,
    pub responses: u64,
    pub decisions: u64,
    pub errors: u64,
}

impl Default for Interval {
    fn default() -> Self {
        Interval {
            latency: new_histogram(2),
            responses: 0,
            decisions: 0,
            errors: 0,
        }
    }
}

impl Interval {
    /// Moves this interval's values into `into` and starts a new interval.
    pub fn drain_into(&mut self, into: &mut Interval) {
        merge_histogram(&mut into.latency, &self.latency);
        into.responses += self.responses;
        into.decisions += self.decisions;
        into.errors += self.errors;
        self.latency.reset();
        self.responses = 0;
        self.decisions = 0;
        self.errors = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us_(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    #[test]
    fn merged_histograms_hold_every_sample_of_every_worker() {
        // Worker a: 1..=1000 µs; worker b: 10 samples of 50 ms.
        let mut a = Measurements::default();
        for v in 1..=1000 {
            record(&mut a.latency, us_(v));
            a.counts.allowed += 1;
        }
        a.counts.status(200);
        a.counts.error(ErrorKind::Timeout);
        let mut b = Measurements::default();
        for _ in 0..10 {
            record(&mut b.latency, us_(50_000));
            b.counts.denied += 1;
        }
        b.counts.status(429);
        b.counts.status(200);
        b.counts.error(ErrorKind::Status(503));
        b.counts.error(ErrorKind::Timeout);

        let mut total = Measurements::default();
        total.merge(&a);
        total.merge(&b);
        assert_eq!(total.latency.len(), 1010);
        let s = LatencySummary::of(&total.latency);
        assert_eq!(s.count, 1010);
        // 50 ms is the largest sample (within HDR precision: 3 digits).
        assert!((s.max_us - 50_000.0).abs() <= 50.0, "{s:?}");
        // The median is inside worker a's range: sample 505 of 1010 is 505 µs.
        assert!((s.p50_us - 505.0).abs() <= 1.0, "{s:?}");
        // The top 1% (10 samples of 1010) are worker b's 50 ms samples.
        assert!(s.p999_us > 49_000.0, "{s:?}");
        assert!(s.p99_us < 1_001.0, "{s:?}");
        assert_eq!(total.counts.allowed, 1000);
        assert_eq!(total.counts.denied, 10);
        assert_eq!(total.counts.by_status.get(&200), Some(&2));
        assert_eq!(total.counts.by_status.get(&429), Some(&1));
        assert_eq!(total.counts.errors.get(&ErrorKind::Timeout), Some(&2));
        assert_eq!(total.counts.errors.get(&ErrorKind::Status(503)), Some(&1));
        assert_eq!(total.counts.error_total(), 3);
        // Merging is order-independent.
        let mut other = Measurements::default();
        other.merge(&b);
        other.merge(&a);
        assert_eq!(LatencySummary::of(&other.latency), s);
        assert_eq!(other.counts, total.counts);
    }

    #[test]
    fn interval_drain_moves_and_resets() {
        let mut w = Interval::default();
        record(&mut w.latency, us_(100));
        w.responses = 1;
        w.decisions = 1;
        let mut into = Interval::default();
        w.drain_into(&mut into);
        assert_eq!(into.latency.len(), 1);
        assert_eq!(into.responses, 1);
        assert!(w.latency.is_empty());
        assert_eq!(w.responses, 0);
    }

    #[test]
    fn reads_own_cpu_time_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu().is_some());
        }
    }

    #[test]
    fn saturates_instead_of_failing() {
        let mut h = new_histogram(3);
        record(&mut h, Duration::from_secs(1_000));
        record(&mut h, Duration::ZERO);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= MAX_NS - MAX_NS / 500);
        assert_eq!(human_us(87.0), "87µs");
        assert_eq!(human_us(1_250.0), "1.25ms");
        assert_eq!(human_us(2_100_000.0), "2.10s");
    }
}
