//! Benchmarks of the hot path: one `check` of each algorithm, then (below)
//! the KeyLimiter actor.
//!
//! Run with `cargo bench -p ringlimit-actors`.

use criterion::{Criterion, criterion_group, criterion_main};
use ringlimit_actors::algo::{
    Algorithm, FixedWindow, Gcra, SlidingLog, SlidingWindow, TokenBucket,
};
use std::hint::black_box;

// ---------------------------------------------------------------------------
// Algorithms: steady state, `now` advancing by 1 µs per call, quotas large
// enough that (nearly) every check is admitted.
// ---------------------------------------------------------------------------

/// A realistic instant (2023-11-14), so the arithmetic sees full-size values.
const T0: u64 = 1_700_000_000_000_000;

/// Checks `state` once per iteration at `now`, advancing `now` by 1 µs.
fn bench_check<A: Algorithm>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut state: A,
) {
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
    bench_check(
        &mut g,
        "sliding_window",
        SlidingWindow::new(2_000_000, 1_000_000),
    );
    bench_check(
        &mut g,
        "fixed_window",
        FixedWindow::new(2_000_000, 1_000_000),
    );
    // The log holds one entry per admitted µs: 100 ms window, 100 000 entries
    // at most (the accepted maximum), each commit evicts one and appends one.
    bench_check(&mut g, "sliding_log", SlidingLog::new(100_000, 100_000));
    // Refill of 2 per µs, burst 1000: always admits.
    bench_check(
        &mut g,
        "token_bucket",
        TokenBucket::new(2_000_000, 1_000_000, 1_000),
    );
    bench_check(&mut g, "gcra", Gcra::new(2_000_000, 1_000_000, 1_000));
    g.finish();
}

criterion_group!(algo_benches, algo);

// ---------------------------------------------------------------------------
// actor benches are added below by the actor author
// (add a `criterion_group!(actor_benches, ...)` here and list it in
// `criterion_main!`).
// ---------------------------------------------------------------------------

// A check through the KeyLimiter actor, in process (no HTTP): registry
// lookup, actor mailbox, all-or-nothing check, reply. One caller at a time.
mod actor {
    use super::*;
    use async_trait::async_trait;
    use ringlimit_actors::clock::monotonic;
    use ringlimit_actors::core::{Core, CoreConfig};
    use ringlimit_actors::keys::{KeyRecord, SecretHash};
    use ringlimit_actors::limiter::{Clock, KeyLimiters, SystemClock};
    use ringlimit_actors::storage::{SnapshotStore, StoreError};
    use ringlimit_protocol::{AlgorithmKind, LimitSpec};
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Debug)]
    struct NullSink;

    #[async_trait]
    impl SnapshotStore for NullSink {
        async fn save_snapshots(&self, _: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            Ok(())
        }
        async fn load_snapshot(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
    }

    fn setup(rt: &tokio::runtime::Runtime) -> KeyLimiters {
        rt.block_on(async {
            let key = KeyRecord {
                limits: Some(vec![
                    LimitSpec {
                        name: "s".into(),
                        algorithm: AlgorithmKind::SlidingWindow,
                        limit: 1_000_000_000,
                        window_ms: 1_000,
                        burst: None,
                    },
                    LimitSpec {
                        name: "m".into(),
                        algorithm: AlgorithmKind::SlidingWindow,
                        limit: 1_000_000_000_000,
                        window_ms: 2_592_000_000,
                        burst: None,
                    },
                ]),
                ..KeyRecord::active("bench", "o", "t", SecretHash::of("s"), 0)
            };
            let sink: Arc<dyn SnapshotStore> = Arc::new(NullSink);
            let l = Core::start(CoreConfig {
                snapshot_sinks: vec![sink],
                ..CoreConfig::default().with_keys([key])
            })
            .await
            .expect("start")
            .limiters;
            l.check("bench", 1, SystemClock.now_us())
                .await
                .expect("warm")
                .expect("warm");
            l
        })
    }

    pub fn bench(c: &mut Criterion) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let limiters = setup(&rt);
        let mut g = c.benchmark_group("actor");
        g.bench_function("key_limiter_check", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = monotonic();
                    for _ in 0..iters {
                        black_box(
                            limiters
                                .check("bench", 1, SystemClock.now_us())
                                .await
                                .expect("check")
                                .expect("check"),
                        );
                    }
                    start.elapsed()
                })
            })
        });
        g.finish();
        // Percentiles of single calls, printed beside criterion's mean.
        let mut lat: Vec<Duration> = rt.block_on(async {
            let mut v = Vec::with_capacity(200_000);
            for _ in 0..200_000 {
                let t = monotonic();
                black_box(
                    limiters
                        .check("bench", 1, SystemClock.now_us())
                        .await
                        .expect("check")
                        .expect("check"),
                );
                v.push(t.elapsed());
            }
            v
        });
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_nanos();
        eprintln!(
            "actor/key_limiter_check latency over {} calls: p50 {} ns, p99 {} ns, p99.9 {} ns",
            lat.len(),
            p(0.50),
            p(0.99),
            p(0.999)
        );
    }
}

criterion_group!(actor_benches, actor::bench);
criterion_main!(algo_benches, actor_benches);
