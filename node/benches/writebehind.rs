//! Write-behind flush cost against a real Redis: keys per flush and flush
//! time percentiles. Starts its own Redis through `scripts/redis.sh` unless
//! `RINGLIMIT_BENCH_REDIS_URL` names one.
//!
//! `cargo bench -p ringlimit-node --bench writebehind`

use ringlimit_actors::cell::KeyCell;
use ringlimit_actors::limitset::LimitSet;
use ringlimit_actors::storage::SnapshotStore;
use ringlimit_actors::writebehind::{WriteBehind, WriteBehindConfig};
use ringlimit_node::store::redis::RedisSnapshots;
use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let own_dir = std::env::temp_dir().join(format!("rl-bench-redis-{}", std::process::id()));
    let (url, own) = match std::env::var("RINGLIMIT_BENCH_REDIS_URL") {
        Ok(u) => (u, false),
        Err(_) => {
            let out = Command::new("bash")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis.sh"))
                .args(["start", own_dir.to_str().unwrap_or("/tmp/rl-bench-redis")])
                .output()
                .expect("scripts/redis.sh start");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                true,
            )
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let redis = RedisSnapshots::connect(&url, Duration::from_secs(2))
            .await
            .expect("redis");
        let sink: Arc<dyn SnapshotStore> = Arc::new(redis);
        let specs = [
            LimitSpec {
                name: "per-second".into(),
                algorithm: AlgorithmKind::SlidingWindow,
                limit: 100,
                window_ms: 1_000,
                burst: None,
            },
            LimitSpec {
                name: "per-month".into(),
                algorithm: AlgorithmKind::SlidingWindow,
                limit: 1_000_000,
                window_ms: 2_592_000_000,
                burst: None,
            },
        ];
        println!("| dirty keys per flush | flushes | p50 | p99 | max | keys/s |");
        println!("|---:|---:|---:|---:|---:|---:|");
        for &n in &[100usize, 1_000, 10_000, 50_000] {
            let wb = WriteBehind::new(
                vec![Arc::clone(&sink)],
                None,
                None,
                WriteBehindConfig {
                    max_batch: n,
                    ..Default::default()
                },
            );
            let cells: Vec<Arc<KeyCell>> = (0..n)
                .map(|i| {
                    let c = Arc::new(KeyCell::new(format!("bench{i:08}"), 0));
                    c.lock().snap.limits = LimitSet::new(&specs);
                    c
                })
                .collect();
            let rounds = if n >= 10_000 { 20 } else { 50 };
            let mut times = Vec::with_capacity(rounds);
            for r in 0..rounds {
                for (i, c) in cells.iter().enumerate() {
                    let mut g = c.lock();
                    let _ = g
                        .snap
                        .limits
                        .check(1_700_000_000_000_000 + (r * n + i) as u64, 1);
                    let enqueue = c.mark_changed(&mut g);
                    drop(g);
                    if enqueue {
                        wb.enqueue(c);
                    }
                }
                let t = ringlimit_actors::clock::monotonic();
                let rep = wb.flush_once().await.expect("flush");
                times.push(t.elapsed());
                assert_eq!(rep.keys, n);
            }
            times.sort();
            let pct = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
            let mean: Duration = times.iter().sum::<Duration>() / times.len() as u32;
            println!(
                "| {n} | {rounds} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} |",
                pct(0.5).as_secs_f64() * 1e3,
                pct(0.99).as_secs_f64() * 1e3,
                times[times.len() - 1].as_secs_f64() * 1e3,
                n as f64 / mean.as_secs_f64()
            );
        }
    });
    if own {
        let _ = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis.sh"))
            .args(["stop", own_dir.to_str().unwrap_or("/tmp/rl-bench-redis")])
            .output();
    }
}
