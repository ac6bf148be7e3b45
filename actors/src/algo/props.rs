//! Property tests of every algorithm against a brute-force model.
//!
//! A run feeds random `(time step, cost)` sequences, including backwards
//! steps and costs above the capacity, to an algorithm and to a model that
//! recomputes each decision from the list of admitted `(instant, cost)`
//! pairs (instants being the clock-skew clamped ones). At every step it
//! checks:
//! - the decision equals the model's (`allowed` and `remaining`): every
//!   algorithm is deterministic, and the model is its definition written
//!   naively;
//! - a backwards `now` decides and commits exactly like the latest instant;
//! - a denied check leaves the state unchanged;
//! - `retry_after_us` is the least wait after which `cost` passes (or the
//!   time until full when `cost > capacity`), `reset_after_us` the least wait
//!   after which the full capacity is available, and `remaining` the largest
//!   cost that passes right after the check;
//! - a JSON, `serde_json::Value` and MessagePack round trip gives back an
//!   equal state (the run continues with the decoded one).
//!
//! On top of that the documented bounds are checked on the admitted list: the
//! interval property of the token bucket and GCRA, and the aligned and
//! sliding bounds of the sliding-window counter.

use super::*;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// One random step: `kind` picks the shape of the time step and of the cost,
/// `dt` and `cost` are raw entropy scaled by the window and the capacity.
#[derive(Debug, Clone, Copy)]
struct Op {
    kind: u8,
    dt: u64,
    cost: u64,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (0u8..=255, any::<u64>(), any::<u64>()).prop_map(|(kind, dt, cost)| Op { kind, dt, cost }),
        1..64,
    )
}

/// The next raw instant: mostly forward, by less than a window, sometimes
/// several windows, sometimes backwards.
fn step(t: u64, op: Op, w: u64) -> u64 {
    match op.kind % 16 {
        0..=3 => t,
        4..=8 => t.saturating_add(1 + op.dt % (w / 4).max(1)),
        9..=11 => t.saturating_add(op.dt % w.saturating_mul(2).saturating_add(1)),
        12 => t.saturating_add(op.dt % w.saturating_mul(5).saturating_add(1)),
        13 | 14 => t.saturating_sub(op.dt % w.saturating_add(1)),
        _ => t.saturating_sub(op.dt % w.saturating_mul(3).saturating_add(1)),
    }
}

/// A cost: mostly small, sometimes up to the capacity, sometimes above it.
fn cost(op: Op, cap: u64) -> u64 {
    let cap = cap.max(1);
    match (op.kind / 16) % 10 {
        0..=5 => 1 + op.cost % cap.min(3),
        6..=8 => 1 + op.cost % cap,
        _ => 1 + op.cost % cap.saturating_add(3),
    }
}

/// What the model says about `cost` at `t`: whether it passes, and the units
/// available before spending.
#[derive(Debug, PartialEq, Eq)]
struct Model {
    allowed: bool,
    available: u64,
}

/// Feeds `ops` to `alg` from instant `t0`, checking every step against
/// `model`; returns the admitted `(effective instant, cost)` list.
fn run<A, M>(
    mut alg: A,
    w: u64,
    t0: u64,
    ops: &[Op],
    model: M,
) -> Result<Vec<(u64, u64)>, TestCaseError>
where
    A: Algorithm + Clone + PartialEq + Debug + Serialize + DeserializeOwned,
    M: Fn(&[(u64, u64)], u64, u64) -> Model,
{
    let cap = alg.capacity();
    let mut admitted: Vec<(u64, u64)> = Vec::new();
    let mut t = t0;
    for (i, &op) in ops.iter().enumerate() {
        t = step(t, op, w);
        let c = cost(op, cap);
        // Effective instants only grow, so the last admitted one is the latest.
        let te = admitted.last().map_or(t, |&(last, _)| t.max(last));
        let full = |a: &A, at: u64| a.evaluate(at, cap).allowed;

        let d = alg.evaluate(t, c);
        prop_assert_eq!(
            d,
            alg.evaluate(te, c),
            "a backwards step decides as the latest instant"
        );
        prop_assert_eq!(d.limit, cap);
        let m = model(&admitted, te, c);
        prop_assert_eq!(
            d.allowed,
            m.allowed,
            "model disagrees at step {} (t={}, cost={})",
            i,
            te,
            c
        );
        prop_assert_eq!(d.remaining, m.available - if m.allowed { c } else { 0 });
        if d.allowed {
            prop_assert_eq!(d.retry_after_us, 0);
        } else if c > cap {
            prop_assert_eq!(d.retry_after_us, d.reset_after_us);
        } else {
            prop_assert!(d.retry_after_us > 0);
            if let Some(at) = te.checked_add(d.retry_after_us) {
                prop_assert!(alg.evaluate(at, c).allowed, "passes after retry_after_us");
                prop_assert!(
                    !alg.evaluate(at - 1, c).allowed,
                    "retry_after_us is the least wait"
                );
            }
        }

        let before = alg.clone();
        let d2 = alg.check(t, c);
        prop_assert_eq!(d, d2);
        if d.allowed {
            admitted.push((te, c));
            let mut at_latest = before;
            at_latest.commit(te, c);
            prop_assert_eq!(
                &alg,
                &at_latest,
                "a backwards commit spends at the latest instant"
            );
        } else {
            prop_assert_eq!(&alg, &before, "a denied check consumes nothing");
        }

        // `remaining` is the largest cost that passes now.
        prop_assert!(d.remaining <= cap);
        if d.remaining > 0 {
            prop_assert!(alg.evaluate(te, d.remaining).allowed);
        }
        prop_assert!(!alg.evaluate(te, d.remaining.saturating_add(1)).allowed);
        // `reset_after_us` is the least wait until full.
        if let Some(at) = te.checked_add(d.reset_after_us) {
            prop_assert!(full(&alg, at), "full after reset_after_us");
            if d.reset_after_us > 0 {
                prop_assert!(!full(&alg, at - 1), "reset_after_us is the least wait");
            }
        }

        // Serde round trips preserve the state (and so the behaviour).
        let json = serde_json::to_string(&alg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_json: A =
            serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&from_json, &alg);
        let value = serde_json::to_value(&alg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_value: A =
            serde_json::from_value(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&from_value, &alg);
        let mp = rmp_serde::to_vec(&alg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_mp: A =
            rmp_serde::from_slice(&mp).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&from_mp, &alg);
        alg = if i % 2 == 0 { from_json } else { from_mp };
    }
    Ok(admitted)
}

/// Units admitted at instants in `[from, to)` (u128 bounds, so `to` may pass `u64::MAX`).
fn sum_in(admitted: &[(u64, u64)], from: u128, to: u128) -> u64 {
    admitted
        .iter()
        .filter(|&&(t, _)| from <= u128::from(t) && u128::from(t) < to)
        .map(|&(_, c)| c)
        .sum()
}

fn fixed_window_model(limit: u64, w: u64) -> impl Fn(&[(u64, u64)], u64, u64) -> Model {
    move |admitted, t, c| {
        let start = u128::from(t / w * w);
        let used = sum_in(admitted, start, start + u128::from(w));
        Model {
            allowed: c <= limit && used + c <= limit,
            available: limit.saturating_sub(used),
        }
    }
}

fn sliding_log_model(limit: u64, w: u64) -> impl Fn(&[(u64, u64)], u64, u64) -> Model {
    move |admitted, t, c| {
        // Live: now < s + W, i.e. s in (t - W, t].
        let live = sum_in(
            admitted,
            (u128::from(t) + 1).saturating_sub(u128::from(w)),
            u128::from(t) + 1,
        );
        Model {
            allowed: c <= limit && live + c <= limit,
            available: limit.saturating_sub(live),
        }
    }
}

fn sliding_window_model(limit: u64, w: u64) -> impl Fn(&[(u64, u64)], u64, u64) -> Model {
    move |admitted, t, c| {
        let (w128, k) = (u128::from(w), u128::from(t / w));
        let curr = sum_in(admitted, k * w128, (k + 1) * w128);
        let prev = if k == 0 {
            0
        } else {
            sum_in(admitted, (k - 1) * w128, k * w128)
        };
        let e = u128::from(t % w);
        let est = u128::from(prev) * (w128 - e) + u128::from(curr) * w128;
        let quota = u128::from(limit) * w128;
        Model {
            allowed: c <= limit && est + u128::from(c) * w128 <= quota,
            available: u64::try_from(quota.saturating_sub(est) / w128).unwrap_or(u64::MAX),
        }
    }
}

/// The bucket level at `t` from the admitted list: `min over a in {t} ∪
/// admitted of burst * W + rate * (t - a) - W * admitted[a, t]`.
fn bucket_model(rate: u64, w: u64, burst: u64) -> impl Fn(&[(u64, u64)], u64, u64) -> Model {
    move |admitted, t, c| {
        let (w, rate) = (i128::from(w), i128::from(rate));
        let level_from = |a: u64| {
            let spent: u64 = admitted
                .iter()
                .filter(|&&(s, _)| s >= a)
                .map(|&(_, c)| c)
                .sum();
            i128::from(burst) * w + rate * i128::from(t - a) - w * i128::from(spent)
        };
        let level = admitted
            .iter()
            .map(|&(a, _)| level_from(a))
            .fold(level_from(t), i128::min);
        assert!(level >= 0, "the bucket never goes negative");
        Model {
            allowed: c <= burst && i128::from(c) * w <= level,
            available: u64::try_from(level / w).unwrap_or(u64::MAX),
        }
    }
}

/// Over any `[a, b]` at most `burst + floor(rate * (b - a) / W)` units pass.
fn check_bucket_intervals(
    admitted: &[(u64, u64)],
    rate: u64,
    w: u64,
    burst: u64,
) -> Result<(), TestCaseError> {
    for (i, &(a, _)) in admitted.iter().enumerate() {
        let mut units = 0u128;
        for &(b, c) in &admitted[i..] {
            units += u128::from(c);
            let allowed = u128::from(burst) + u128::from(rate) * u128::from(b - a) / u128::from(w);
            prop_assert!(
                units <= allowed,
                "{} units in [{}, {}], bound {}",
                units,
                a,
                b,
                allowed
            );
        }
    }
    Ok(())
}

/// The sliding-window counter's documented bounds (see `sliding_window`).
fn check_sliding_window_bounds(
    admitted: &[(u64, u64)],
    limit: u64,
    w: u64,
) -> Result<(), TestCaseError> {
    let (l, w) = (u128::from(limit), u128::from(w));
    let mut starts = Vec::new();
    for &(t, _) in admitted {
        let t = u128::from(t);
        let k = t / w;
        // (1) every aligned window holds at most the limit.
        let n = u128::from(sum_in(admitted, k * w, (k + 1) * w));
        prop_assert!(n <= l, "aligned window {} holds {} > {}", k, n, l);
        // Interval starts where the admitted counts or the split change.
        starts.extend([
            t,
            t + 1,
            (t + 1).saturating_sub(w),
            k * w + 1,
            (k + 1) * w + 1,
        ]);
        if k > 0 {
            starts.push((k - 1) * w + 1);
        }
    }
    let total_bound = if w == 1 {
        l
    } else {
        2 * l - (2 * l).div_ceil(w)
    };
    for s in starts {
        let sigma = s % w;
        let split = s - sigma + w; // k * W: start of the next aligned window
        let a = u128::from(sum_in(admitted, s, split));
        let b = u128::from(sum_in(admitted, split, s + w));
        prop_assert!(
            a + b <= total_bound.max(l),
            "[{}, {}) holds {} > {}",
            s,
            s + w,
            a + b,
            total_bound
        );
        prop_assert!(a + b < 2 * l);
        if sigma > 0 {
            // (2) W (A + B) <= W L + A (σ - 1).
            prop_assert!(
                w * (a + b) <= w * l + a * (sigma - 1),
                "fine bound at s={}: A={} B={}",
                s,
                a,
                b
            );
        }
    }
    Ok(())
}

/// Small quotas and windows (where the bounds bite), any start instant.
fn small() -> impl Strategy<Value = (u64, u64, u64, u64)> {
    (
        1u64..=20,
        prop_oneof![1u64..=4, 5u64..=1_000],
        1u64..=25,
        prop_oneof![0u64..=2_000, 0u64..=1 << 52, u64::MAX - 20_000..=u64::MAX],
    )
}

/// Quotas and windows up to the accepted maxima.
fn large() -> impl Strategy<Value = (u64, u64, u64, u64)> {
    let max_w = ringlimit_protocol::limits::MAX_WINDOW_MS * US_PER_MS;
    (
        1u64..=1_000_000_000_000,
        1u64..=max_w,
        1u64..=1_000_000_000_000,
        any::<u64>(),
    )
}

fn params() -> impl Strategy<Value = (u64, u64, u64, u64)> {
    prop_oneof![3 => small(), 1 => large()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fixed_window_is_exact((limit, w, _, t0) in params(), ops in ops()) {
        run(FixedWindow::new(limit, w), w, t0, &ops, fixed_window_model(limit, w))?;
    }

    #[test]
    fn sliding_log_is_exact((limit, w, _, t0) in params(), ops in ops()) {
        let admitted = run(SlidingLog::new(limit, w), w, t0, &ops, sliding_log_model(limit, w))?;
        // No interval of W µs holds more than the limit.
        for &(s, _) in &admitted {
            prop_assert!(sum_in(&admitted, u128::from(s), u128::from(s) + u128::from(w)) <= limit);
        }
    }

    #[test]
    fn sliding_window_follows_its_rule_and_bounds((limit, w, _, t0) in params(), ops in ops()) {
        let admitted = run(SlidingWindow::new(limit, w), w, t0, &ops, sliding_window_model(limit, w))?;
        check_sliding_window_bounds(&admitted, limit, w)?;
    }

    #[test]
    fn token_bucket_is_exact((limit, w, burst, t0) in params(), ops in ops()) {
        let admitted = run(TokenBucket::new(limit, w, burst), w, t0, &ops, bucket_model(limit, w, burst))?;
        check_bucket_intervals(&admitted, limit, w, burst)?;
    }

    #[test]
    fn gcra_is_exact((limit, w, burst, t0) in params(), ops in ops()) {
        let admitted = run(Gcra::new(limit, w, burst), w, t0, &ops, bucket_model(limit, w, burst))?;
        check_bucket_intervals(&admitted, limit, w, burst)?;
    }

    #[test]
    fn gcra_equals_token_bucket((limit, w, burst, t0) in params(), ops in ops()) {
        let (mut g, mut b) = (Gcra::new(limit, w, burst), TokenBucket::new(limit, w, burst));
        let mut t = t0;
        for op in ops {
            t = step(t, op, w);
            let c = cost(op, burst);
            prop_assert_eq!(g.check(t, c), b.check(t, c));
        }
    }

    #[test]
    fn set_quota_then_runs_like_the_model_of_the_new_quota(
        (limit, w, burst, t0) in small(), (limit2, burst2) in (1u64..=20, 1u64..=25), ops in ops(),
    ) {
        // After a quota change on a fresh state every algorithm is the fresh
        // algorithm of the new quota.
        let mut fw = FixedWindow::new(limit, w);
        prop_assert!(fw.set_quota(limit2, w));
        run(fw, w, t0, &ops, fixed_window_model(limit2, w))?;
        let mut sl = SlidingLog::new(limit, w);
        prop_assert!(sl.set_quota(limit2, w));
        run(sl, w, t0, &ops, sliding_log_model(limit2, w))?;
        let mut sw = SlidingWindow::new(limit, w);
        prop_assert!(sw.set_quota(limit2, w));
        run(sw, w, t0, &ops, sliding_window_model(limit2, w))?;
        // A bucket keeps its (zero) deficit: full at the new burst.
        let mut tb = TokenBucket::new(limit, w, burst);
        prop_assert!(tb.set_quota(limit2, w, burst2));
        run(tb, w, t0, &ops, bucket_model(limit2, w, burst2))?;
        let mut g = Gcra::new(limit, w, burst);
        prop_assert!(g.set_quota(limit2, w, burst2));
        run(g, w, t0, &ops, bucket_model(limit2, w, burst2))?;
    }
}

fn spec(algorithm: AlgorithmKind, limit: u64, window_ms: u64, burst: Option<u64>) -> LimitSpec {
    LimitSpec {
        name: "l".into(),
        algorithm,
        limit,
        window_ms,
        burst,
    }
}

#[test]
fn algo_state_dispatches_and_round_trips() {
    use AlgorithmKind as K;
    let now = 1_700_000_000_000_000;
    for kind in [
        K::SlidingWindow,
        K::SlidingLog,
        K::TokenBucket,
        K::Gcra,
        K::FixedWindow,
    ] {
        let mut s = AlgoState::new(&spec(kind, 3, 1_000, None));
        assert_eq!(s.kind(), kind);
        assert_eq!(s.capacity(), 3);
        for left in (0..3).rev() {
            let d = s.check(now, 1);
            assert!(d.allowed, "{kind:?}");
            assert_eq!(d.remaining, left, "{kind:?}");
        }
        assert!(!s.check(now, 1).allowed, "{kind:?}");
        let json = serde_json::to_string(&s).expect("json encodes");
        assert_eq!(
            serde_json::from_str::<AlgoState>(&json).expect("json decodes"),
            s
        );
        let mp = rmp_serde::to_vec_named(&s).expect("msgpack encodes");
        assert_eq!(
            rmp_serde::from_slice::<AlgoState>(&mp).expect("msgpack decodes"),
            s
        );
    }
    let s = AlgoState::new(&spec(K::TokenBucket, 3, 1_000, Some(7)));
    assert_eq!(s.capacity(), 7);
}

#[test]
fn reconfigure_keeps_spent_units_only_for_the_same_algorithm_and_window() {
    use AlgorithmKind as K;
    let now = 1_700_000_000_000_000;
    for kind in [
        K::SlidingWindow,
        K::SlidingLog,
        K::TokenBucket,
        K::Gcra,
        K::FixedWindow,
    ] {
        let mut s = AlgoState::new(&spec(kind, 10, 60_000, None));
        assert!(s.check(now, 4).allowed);
        // Same algorithm and window: what was spent stays spent.
        s.reconfigure(&spec(kind, 20, 60_000, None));
        assert_eq!(s.evaluate(now, 1).remaining, 15, "{kind:?}");
        // Another window: fresh.
        s.reconfigure(&spec(kind, 20, 1_000, None));
        assert_eq!(s.evaluate(now, 1).remaining, 19, "{kind:?}");
    }
    let mut s = AlgoState::new(&spec(K::FixedWindow, 10, 1_000, None));
    assert!(s.check(now, 4).allowed);
    s.reconfigure(&spec(K::SlidingLog, 10, 1_000, None));
    assert_eq!(s.kind(), K::SlidingLog);
    assert_eq!(s.evaluate(now, 1).remaining, 9);
}

#[test]
fn sliding_window_sliding_bound_is_tight() {
    // L = 10, W = 10: the bound is 2L - ceil(2L / W) = 18.
    let mut s = SlidingWindow::new(10, 10);
    assert!(s.check(9, 10).allowed); // last µs of window 0, window -1 empty
    let d = s.evaluate(18, 9); // 8 µs into window 1: estimate 10 * 2 / 10 = 2
    assert_eq!((d.allowed, d.remaining), (false, 8));
    assert!(s.check(18, 8).allowed);
    let admitted = [(9, 10), (18, 8)];
    assert_eq!(sum_in(&admitted, 9, 19), 18);
    assert!(check_sliding_window_bounds(&admitted, 10, 10).is_ok());
    // The checker rejects what a fixed window lets through at a boundary.
    let mut f = FixedWindow::new(10, 10);
    assert!(f.check(9, 10).allowed && f.check(10, 10).allowed);
    assert!(check_sliding_window_bounds(&[(9, 10), (10, 10)], 10, 10).is_err());
}
