//! The accounts of one scenario: what the load saw, window by window, set
//! against the keys' limit and the fault's phases.

use ringlimit_loadtest::checker::Admission;
use ringlimit_loadtest::runner::TimelinePoint;
use ringlimit_loadtest::stats::Counts;
use serde::Serialize;
use std::collections::BTreeMap;

/// Over-admission of the keys' fixed windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OverAdmission {
    /// (key, window) pairs with at least one certain admit.
    pub windows: u64,
    /// Pairs over the limit.
    pub windows_over: u64,
    /// Units admitted beyond the limit, summed over every (key, window).
    pub units_over: u64,
    /// The largest excess of one (key, window), in units and in % of the limit.
    pub worst_units: u64,
    pub worst_pct: f64,
    /// The largest number of units certainly admitted in one (key, window).
    pub max_in_window: u64,
    /// Admits whose bracket straddled a window boundary (not counted).
    pub ambiguous: u64,
}

/// Counts the certain admits of every key in every fixed window `[kW, (k+1)W)`
/// of the epoch. An admit is placed only when its whole bracket (send to
/// answer, widened by `tolerance_us`) lies in one window, so a correct server
/// is never charged with an excess.
pub fn over_admission(
    admissions: &[Admission],
    anchor_epoch_us: u64,
    window_ms: u64,
    limit: u64,
    tolerance_us: u64,
) -> OverAdmission {
    let w = window_ms.max(1) * 1_000;
    let mut per: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut out = OverAdmission::default();
    for a in admissions {
        let s = (anchor_epoch_us + a.sent_us).saturating_sub(tolerance_us);
        let e = anchor_epoch_us + a.recv_us + tolerance_us;
        if s / w != e / w {
            out.ambiguous += 1;
            continue;
        }
        *per.entry((a.key, s / w)).or_default() += u64::from(a.cost);
    }
    out.windows = per.len() as u64;
    for &n in per.values() {
        out.max_in_window = out.max_in_window.max(n);
        if n > limit {
            let over = n - limit;
            out.windows_over += 1;
            out.units_over += over;
            out.worst_units = out.worst_units.max(over);
        }
    }
    if limit > 0 {
        out.worst_pct = out.worst_units as f64 * 100.0 / limit as f64;
    }
    out
}

/// Units admitted per second of the run (all keys), by answer time.
pub fn allowed_per_second(admissions: &[Admission], seconds: usize) -> Vec<u64> {
    let mut v = vec![0u64; seconds.max(1)];
    for a in admissions {
        let i = usize::try_from(a.recv_us / 1_000_000).unwrap_or(usize::MAX);
        if let Some(slot) = v.get_mut(i) {
            *slot += u64::from(a.cost);
        }
    }
    v
}

/// A phase of the run, in seconds from the start of measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Phase {
    pub from_s: f64,
    pub to_s: f64,
}

/// Worst one-second p99 (µs) of the timeline inside `phase`.
pub fn worst_p99(timeline: &[TimelinePoint], phase: Phase) -> f64 {
    timeline
        .iter()
        .filter(|p| p.t_s > phase.from_s && p.t_s <= phase.to_s + 1e-9)
        .map(|p| p.p99_us)
        .fold(0.0, f64::max)
}

/// Seconds from `since_s` until the error rate is back to zero for good
/// (every later second of the timeline has no error); `None` if it never is.
pub fn errors_clear_after(timeline: &[TimelinePoint], since_s: f64) -> Option<f64> {
    let last_bad = timeline
        .iter()
        .filter(|p| p.errors > 0)
        .map(|p| p.t_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let end = timeline.last()?.t_s;
    if last_bad >= end {
        return None;
    }
    Some((last_bad - since_s).max(0.0))
}

/// Requests that did not get a decision, by kind ("status 503", "timeout", …).
pub fn failures(counts: &Counts) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (kind, n) in &counts.errors {
        m.insert(format!("{kind:?}").to_lowercase(), *n);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adm(key: u32, sent_us: u64, recv_us: u64) -> Admission {
        Admission {
            key,
            sent_us,
            recv_us,
            cost: 1,
        }
    }

    #[test]
    fn counts_only_certain_admits_per_key_and_window() {
        // Anchor at epoch 10 s; windows of 1 s; limit 2.
        let anchor = 10_000_000;
        let a = [
            adm(0, 100, 200),
            adm(0, 300, 400),
            adm(0, 500, 600),           // third in window 10: one over
            adm(0, 999_900, 1_000_100), // straddles 10|11: not counted
            adm(1, 100, 200),
            adm(0, 1_000_500, 1_000_600), // window 11
        ];
        let o = over_admission(&a, anchor, 1_000, 2, 0);
        assert_eq!(o.windows, 3);
        assert_eq!(o.windows_over, 1);
        assert_eq!(o.units_over, 1);
        assert_eq!(o.worst_units, 1);
        assert_eq!(o.worst_pct, 50.0);
        assert_eq!(o.max_in_window, 3);
        assert_eq!(o.ambiguous, 1);
        // A wide tolerance turns near-boundary admits ambiguous, never over.
        let o = over_admission(&a, anchor, 1_000, 2, 400_000);
        assert_eq!(o.windows_over, 0);
    }

    #[test]
    fn errors_clear_after_the_last_bad_second() {
        let p = |t_s: f64, errors: u64| TimelinePoint {
            t_s,
            responses: 10,
            decisions: 10,
            errors,
            rps: 10.0,
            p50_us: 1.0,
            p99_us: t_s * 10.0,
            max_us: 1.0,
        };
        let tl = [p(1.0, 0), p(2.0, 3), p(3.0, 1), p(4.0, 0), p(5.0, 0)];
        assert_eq!(errors_clear_after(&tl, 1.5), Some(1.5));
        assert_eq!(errors_clear_after(&tl[..3], 1.5), None);
        assert_eq!(
            worst_p99(
                &tl,
                Phase {
                    from_s: 1.0,
                    to_s: 3.0
                }
            ),
            30.0
        );
        assert_eq!(allowed_per_second(&[adm(0, 0, 1_500_000)], 3), [0, 1, 0]);
    }
}
