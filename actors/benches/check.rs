//! Benchmarks of the hot path: one `check` of each algorithm, then (below)
//! the KeyLimiter actor.
//!
//! Run with `cargo bench -p ringlimit-actors`.

use criterion::{Criterion, criterion_group, criterion_main};
use ringlimit_actors::algo::{Algorithm, FixedWindow, Gcra, SlidingLog, SlidingWindow, TokenBucket};
use std::hint::black_box;

// ---------------------------------------------------------------------------
// Algorithms: steady state, `now` advancing by 1 µs per call, quotas large
// enough that (nearly) every check is admitted.
// ---------------------------------------------------------------------------

/// A realistic instant (2023-11-14), so the arithmetic sees full-size values.
const T0: u64 = 1_700_000_000_000_000;

/// Checks `state` once per iteration at `now`, advancing `now` by 1 µs.
fn bench_check<A: Algorithm>(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, mut state: A) {
    let mut now = T0;
    c.bench_function(name, |b| {
        b.iter(|| {
            now += 1;
            black_box(state.check(black_box(now), black_box(1)))
        })
    });
}

fn algo(c: &mut Criterion) {
    let mut g = c.benchmark_group("algo");
    // One admission per µs: 1e6 per second fits a limit of 2e6 per second.
    bench_check(&mut g, "sliding_window", SlidingWindow::new(2_000_000, 1_000_000));
    bench_check(&mut g, "fixed_window", FixedWindow::new(2_000_000, 1_000_000));
    // The log holds one entry per admitted µs: 100 ms window, 100 000 entries
    // at most (the accepted maximum), each commit evicts one and appends one.
    bench_check(&mut g, "sliding_log", SlidingLog::new(100_000, 100_000));
    // Refill of 2 per µs, burst 1000: always admits.
    bench_check(&mut g, "token_bucket", TokenBucket::new(2_000_000, 1_000_000, 1_000));
    bench_check(&mut g, "gcra", Gcra::new(2_000_000, 1_000_000, 1_000));
    g.finish();
}

criterion_group!(algo_benches, algo);

// ---------------------------------------------------------------------------
// actor benches are added below by the actor author
// (add a `criterion_group!(actor_benches, ...)` here and list it in
// `criterion_main!`).
// ---------------------------------------------------------------------------

criterion_main!(algo_benches);
