//! Over-admission checks for exact algorithms, from client-side timestamps.
//!
//! The client cannot see when the server decided. It knows, for each allowed
//! check, the instant `s` just before the request was written and the instant
//! `e` just after the answer was read; the server's decision time `d` lies in
//! `[s, e]`. Both are converted to epoch microseconds through one
//! `(SystemTime, Instant)` anchor taken at the start of the run, and every
//! bracket is widened by a tolerance (`--clock-tolerance-ms`, default 1 ms:
//! servers keep time in whole milliseconds). The checks count only what is
//! *certain*, so a correct server is never reported as over-admitting:
//!
//! * **Sliding log** (limit `L` per window `W`): a correct server admits at
//!   most `L` units whose decision times fit in any interval shorter than `W`.
//!   For every allowed check `i` (taken as the earliest of a group) the checker
//!   counts the allowed units `j` with `s_j ≥ s_i` and `e_j < s_i + W'`, where
//!   `W' = W − 2·tolerance`: all of these were decided inside
//!   `[s_i, s_i + W')`, an interval shorter than the window, so more than `L`
//!   of them is proven over-admission. Conversely any group that certainly
//!   fits in such an interval is counted when `i` is its earliest member, so
//!   no provable violation is missed. Counting is offline, `O(n log n)`.
//!   A slow answer widens its bracket and can only make it count less.
//! * **Fixed window** (windows `[kW, (k+1)W)` of the Unix epoch): an allowed
//!   check is counted in window `k` only when its whole widened bracket lies
//!   in that window; checks whose bracket straddles a boundary are left out
//!   (and counted as `ambiguous`). More than `L` certain units in one window
//!   is over-admission.
//!
//! Checks whose answer never arrived (timeouts) may have been admitted; they
//! are not counted, which can hide over-admission but never invent it.

use serde::Serialize;

/// One allowed check, in microseconds since the run's anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Index of the key in the run's key list.
    pub key: u32,
    /// Send instant, µs since the anchor.
    pub sent_us: u64,
    /// Receive instant, µs since the anchor (≥ `sent_us`).
    pub recv_us: u64,
    /// Units admitted.
    pub cost: u32,
}

/// Which exact algorithm the keys use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExactAlgorithm {
    SlidingLog,
    FixedWindow,
}

/// The limit every checked key carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckSpec {
    pub algorithm: ExactAlgorithm,
    pub limit: u64,
    pub window_ms: u64,
    /// Epoch µs of the anchor instant.
    pub anchor_epoch_us: u64,
    /// Widening of every bracket, µs.
    pub tolerance_us: u64,
}

/// One proven over-admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub key: u32,
    /// Epoch ms of the start of the interval (sliding log) or window (fixed window).
    pub interval_start_ms: u64,
    /// Length of the interval, ms.
    pub interval_ms: u64,
    /// Units certainly admitted in it.
    pub admitted: u64,
    pub limit: u64,
}

/// What the checker found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub algorithm: ExactAlgorithm,
    pub limit: u64,
    pub window_ms: u64,
    pub tolerance_ms: f64,
    /// Allowed checks examined.
    pub admissions: u64,
    /// Keys with at least one allowed check.
    pub keys: u64,
    /// Fixed window: admissions whose bracket straddled a window boundary and were not counted.
    pub ambiguous: u64,
    /// Largest number of units certainly admitted in one window-length interval (or window).
    pub max_in_window: u64,
    /// Number of (key, interval) pairs over the limit. For the sliding log, overlapping
    /// intervals anchored at different checks are counted separately.
    pub violation_count: u64,
    /// The worst violations, at most 20.
    pub worst: Vec<Violation>,
    pub over_admitted: bool,
}

/// A Fenwick tree of sums.
struct Fenwick(Vec<u64>);

impl Fenwick {
    fn new(n: usize) -> Self {
        Fenwick(vec![0; n + 1])
    }
    fn add(&mut self, i: usize, v: u64) {
        let mut i = i + 1;
        while i < self.0.len() {
            self.0[i] += v;
            i += i & i.wrapping_neg();
        }
    }
    /// Sum of positions `0..i`.
    fn prefix(&self, i: usize) -> u64 {
        let mut i = i;
        let mut s = 0;
        while i > 0 {
            s += self.0[i];
            i -= i & i.wrapping_neg();
        }
        s
    }
}

/// Checks the allowed checks of one run. `admissions` may be in any order.
pub fn check(spec: &CheckSpec, admissions: &mut [Admission]) -> CheckReport {
    admissions.sort_unstable_by_key(|a| (a.key, a.sent_us));
    let mut report = CheckReport {
        algorithm: spec.algorithm,
        limit: spec.limit,
        window_ms: spec.window_ms,
        tolerance_ms: spec.tolerance_us as f64 / 1000.0,
        admissions: admissions.len() as u64,
        keys: 0,
        ambiguous: 0,
        max_in_window: 0,
        violation_count: 0,
        worst: Vec::new(),
        over_admitted: false,
    };
    let mut violations = Vec::new();
    let mut start = 0;
    while start < admissions.len() {
        let key = admissions[start].key;
        let end = start + admissions[start..].partition_point(|a| a.key == key);
        report.keys += 1;
        let group = &admissions[start..end];
        match spec.algorithm {
            ExactAlgorithm::SlidingLog => sliding_log(spec, group, &mut report, &mut violations),
            ExactAlgorithm::FixedWindow => fixed_window(spec, group, &mut report, &mut violations),
        }
        start = end;
    }
    report.violation_count = violations.len() as u64;
    report.over_admitted = !violations.is_empty();
    violations.sort_by(|a, b| {
        b.admitted
            .cmp(&a.admitted)
            .then(a.interval_start_ms.cmp(&b.interval_start_ms))
    });
    // Keep the worst one per key first, so a report shows several keys if several failed.
    let mut seen = std::collections::HashSet::new();
    let (firsts, rest): (Vec<_>, Vec<_>) = violations.into_iter().partition(|v| seen.insert(v.key));
    report.worst = firsts.into_iter().chain(rest).take(20).collect();
    report
}

/// One key's admissions, sorted by `sent_us`.
fn sliding_log(
    spec: &CheckSpec,
    group: &[Admission],
    report: &mut CheckReport,
    out: &mut Vec<Violation>,
) {
    let tol = spec.tolerance_us;
    let window_us = spec.window_ms.saturating_mul(1000);
    let Some(w) = window_us.checked_sub(2 * tol).filter(|w| *w > 0) else {
        return;
    };
    // Widened brackets.
    let lo: Vec<u64> = group
        .iter()
        .map(|a| a.sent_us.saturating_sub(tol))
        .collect();
    let hi: Vec<u64> = group
        .iter()
        .map(|a| a.recv_us.max(a.sent_us) + tol)
        .collect();
    // Ranks of `hi` for the Fenwick tree.
    let mut hi_sorted = hi.clone();
    hi_sorted.sort_unstable();
    let mut tree = Fenwick::new(group.len());
    // Walk from the latest send to the earliest, inserting each, then query
    // with the current one as the earliest member (equal sends are inserted
    // together before their queries).
    let mut i = group.len();
    while i > 0 {
        let s = lo[i - 1];
        let mut j = i;
        while j > 0 && lo[j - 1] == s {
            let a = &group[j - 1];
            let rank = hi_sorted.partition_point(|&v| v < hi[j - 1]);
            tree.add(rank, u64::from(a.cost));
            j -= 1;
        }
        let bound = s + w;
        let n = tree.prefix(hi_sorted.partition_point(|&v| v < bound));
        report.max_in_window = report.max_in_window.max(n);
        if n > spec.limit {
            out.push(Violation {
                key: group[j].key,
                interval_start_ms: (spec.anchor_epoch_us + s) / 1000,
                interval_ms: w.div_ceil(1000),
                admitted: n,
                limit: spec.limit,
            });
        }
        i = j;
    }
}

/// One key's admissions, sorted by `sent_us`.
fn fixed_window(
    spec: &CheckSpec,
    group: &[Admission],
    report: &mut CheckReport,
    out: &mut Vec<Violation>,
) {
    let tol = spec.tolerance_us;
    let window_us = spec.window_ms.saturating_mul(1000).max(1);
    let mut counts: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for a in group {
        let lo = (spec.anchor_epoch_us + a.sent_us).saturating_sub(tol);
        let hi = spec.anchor_epoch_us + a.recv_us.max(a.sent_us) + tol;
        let (k_lo, k_hi) = (lo / window_us, hi / window_us);
        if k_lo == k_hi {
            *counts.entry(k_lo).or_insert(0) += u64::from(a.cost);
        } else {
            report.ambiguous += 1;
        }
    }
    for (k, n) in counts {
        report.max_in_window = report.max_in_window.max(n);
        if n > spec.limit {
            out.push(Violation {
                key: group[0].key,
                interval_start_ms: k * window_us / 1000,
                interval_ms: spec.window_ms,
                admitted: n,
                limit: spec.limit,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANCHOR: u64 = 1_700_000_000_000_000; // a round epoch µs: a multiple of 1 s

    fn spec(algorithm: ExactAlgorithm, limit: u64, window_ms: u64) -> CheckSpec {
        CheckSpec {
            algorithm,
            limit,
            window_ms,
            anchor_epoch_us: ANCHOR,
            tolerance_us: 1_000,
        }
    }

    /// An allowed check sent at `t_ms` with latency `lat_us`.
    fn adm(key: u32, t_ms: u64, lat_us: u64) -> Admission {
        Admission {
            key,
            sent_us: t_ms * 1000,
            recv_us: t_ms * 1000 + lat_us,
            cost: 1,
        }
    }

    /// What a correct sliding log (limit, window) admits of checks at the given times.
    fn correct_sliding_log(limit: usize, window_ms: u64, times_ms: &[u64]) -> Vec<u64> {
        let mut admitted: Vec<u64> = Vec::new();
        for &t in times_ms {
            let in_window = admitted.iter().filter(|&&a| a + window_ms > t).count();
            if in_window < limit {
                admitted.push(t);
            }
        }
        admitted
    }

    #[test]
    fn sliding_log_correct_sequence_has_no_violation() {
        // 10 per second, a check every 7 ms for 5 s, 300 µs latency; two keys.
        let times: Vec<u64> = (0..5_000).step_by(7).collect();
        let ok = correct_sliding_log(10, 1_000, &times);
        assert!(ok.len() >= 50);
        let mut a: Vec<Admission> = ok
            .iter()
            .map(|&t| adm(0, t, 300))
            .chain(ok.iter().map(|&t| adm(1, t, 900)))
            .collect();
        let r = check(&spec(ExactAlgorithm::SlidingLog, 10, 1_000), &mut a);
        assert!(!r.over_admitted, "{r:?}");
        assert_eq!(r.violation_count, 0);
        assert_eq!(r.keys, 2);
        // Admissions come in bursts of 10 right at the window edge; within the
        // shortened window (W - 2 ms) the checker sees at most the limit.
        assert!(r.max_in_window <= 10 && r.max_in_window >= 9, "{r:?}");
    }

    #[test]
    fn sliding_log_finds_one_too_many() {
        // 11 admissions within 500 ms for a limit of 10 per second.
        let mut a: Vec<Admission> = (0..11).map(|i| adm(3, 100 + i * 50, 200)).collect();
        let r = check(&spec(ExactAlgorithm::SlidingLog, 10, 1_000), &mut a);
        assert!(r.over_admitted, "{r:?}");
        assert_eq!(r.max_in_window, 11);
        assert_eq!(r.worst[0].key, 3);
        assert_eq!(r.worst[0].admitted, 11);
        assert_eq!(r.worst[0].limit, 10);
        assert_eq!(
            r.worst[0].interval_start_ms,
            (ANCHOR + 100_000 - 1_000) / 1000
        );
    }

    #[test]
    fn sliding_log_allows_a_window_apart_and_ignores_slow_brackets() {
        // Two bursts of 10, exactly one window apart: correct.
        let mut a: Vec<Admission> = (0..10)
            .map(|i| adm(0, i, 100))
            .chain((0..10).map(|i| adm(0, 1_000 + i, 100)))
            .collect();
        let r = check(&spec(ExactAlgorithm::SlidingLog, 10, 1_000), &mut a);
        assert!(!r.over_admitted, "{r:?}");
        // A burst of 10 and an 11th whose answer took 600 ms: it may have been
        // decided 1 s after the first, so it proves nothing.
        let mut a: Vec<Admission> = (0..10).map(|i| adm(0, i, 100)).collect();
        a.push(adm(0, 500, 600_000));
        let r = check(&spec(ExactAlgorithm::SlidingLog, 10, 1_000), &mut a);
        assert!(!r.over_admitted, "{r:?}");
        // The same 11th answered in 100 µs is a violation.
        a.pop();
        a.push(adm(0, 500, 100));
        let r = check(&spec(ExactAlgorithm::SlidingLog, 10, 1_000), &mut a);
        assert!(r.over_admitted, "{r:?}");
    }

    #[test]
    fn sliding_log_weighs_cost_and_ties() {
        // Same send instant for 3 checks of cost 4: 12 > 10.
        let mut a: Vec<Admission> = (0..3)
            .map(|_| Admission {
                key: 0,
                sent_us: 5_000,
                recv_us: 5_100,
                cost: 4,
            })
            .collect();
        let r = check(&spec(ExactAlgorithm::SlidingLog, 10, 1_000), &mut a);
        assert!(r.over_admitted);
        assert_eq!(r.max_in_window, 12);
    }

    #[test]
    fn allow_everything_is_caught() {
        // What the ceiling server does: 2000 checks in 2 s, all allowed.
        let mut a: Vec<Admission> = (0..2_000).map(|i| adm(0, i, 80)).collect();
        let r = check(&spec(ExactAlgorithm::SlidingLog, 50, 1_000), &mut a);
        assert!(r.over_admitted);
        assert!(r.violation_count > 100);
        let mut a: Vec<Admission> = (0..2_000).map(|i| adm(0, i, 80)).collect();
        let r = check(&spec(ExactAlgorithm::FixedWindow, 50, 1_000), &mut a);
        assert!(r.over_admitted);
        assert_eq!(r.violation_count, 2);
    }

    #[test]
    fn fixed_window_counts_aligned_windows_and_skips_boundaries() {
        // Window 1 s aligned to the epoch; the anchor is on a boundary.
        // 10 in [0, 1 s) and 10 in [1 s, 2 s): correct, even though 20 fall within 100 ms.
        let mut a: Vec<Admission> = (0..10)
            .map(|i| adm(0, 950 + i * 4, 100))
            .chain((0..10).map(|i| adm(0, 1_002 + i * 4, 100)))
            .collect();
        let r = check(&spec(ExactAlgorithm::FixedWindow, 10, 1_000), &mut a);
        assert!(!r.over_admitted, "{r:?}");
        assert_eq!(r.max_in_window, 10);
        // A check whose bracket straddles the boundary is not counted.
        let mut b = a.clone();
        b.push(adm(0, 999, 500));
        let r = check(&spec(ExactAlgorithm::FixedWindow, 10, 1_000), &mut b);
        assert!(!r.over_admitted, "{r:?}");
        assert_eq!(r.ambiguous, 1);
        // An 11th well inside the first window is a violation.
        a.push(adm(0, 500, 100));
        let r = check(&spec(ExactAlgorithm::FixedWindow, 10, 1_000), &mut a);
        assert!(r.over_admitted, "{r:?}");
        assert_eq!(r.worst[0].interval_start_ms, ANCHOR / 1000);
        assert_eq!(r.worst[0].admitted, 11);
    }

    #[test]
    fn empty_input_is_fine() {
        let r = check(&spec(ExactAlgorithm::SlidingLog, 1, 1_000), &mut []);
        assert!(!r.over_admitted);
        assert_eq!(r.admissions, 0);
    }
}
