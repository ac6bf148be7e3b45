//! Memory of a node with one million keys, each checked once within a
//! minute: the key cache holding every key (as a node holds them after its
//! start-up warm), the KeyLimiters activated by the checks (up to the
//! node's default `max_active_keys`, 50 000, the rest passivated by the cap), and the
//! write-behind flushing to the embedded store, all in this process.
//!
//! Run: `cargo bench -p ringlimit-node --bench memory [-- KEYS]` (default
//! 1 000 000). Prints the resident set (VmRSS and its peak, VmHWM) before
//! the keys, after they are cached, and after every key was checked, and
//! the bytes per key. A measurement, not a test: the figure goes in
//! BENCHMARKS.md.

use ringlimit_actors::core::{Core, CoreConfig};
use ringlimit_actors::keys::{KeyRecord, SecretHash};
use ringlimit_actors::limiter::LimiterConfig;
use ringlimit_actors::storage::Store;
use ringlimit_node::store::embedded::EmbeddedStore;
use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use std::sync::Arc;
use std::time::Duration;

/// The node's allocator (node/src/main.rs), so the figure is the node's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "SecretSecretSecretSecretSecretSecretSecret1";

fn key_id(i: usize) -> String {
    format!("k{i:019}")
}

fn key(i: usize, hash: SecretHash) -> KeyRecord {
    KeyRecord {
        limits: Some(vec![LimitSpec {
            name: "per-minute".into(),
            algorithm: AlgorithmKind::SlidingWindow,
            limit: 1_000,
            window_ms: 60_000,
            burst: None,
        }]),
        ..KeyRecord::active(&key_id(i), "owner", "free", hash, 0)
    }
}

/// `(VmRSS, VmHWM)` of this process in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[allow(clippy::print_stdout)]
fn report(stage: &str) -> (u64, u64) {
    let (now, peak) = rss();
    println!(
        "memory/{stage}: rss {:.1} MiB, peak {:.1} MiB",
        mib(now),
        mib(peak)
    );
    (now, peak)
}

#[allow(clippy::print_stdout)]
fn main() {
    let keys: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(ringlimit_node::app::MAX_BLOCKING_THREADS)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (base, _) = report("start");
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let hash = SecretHash::of(SECRET);
        let core = Core::start(CoreConfig {
            limiter: LimiterConfig {
                writer: "bench#1".into(),
                ..LimiterConfig::default()
            },
            ..CoreConfig::over(&store).with_keys((0..keys).map(|i| key(i, hash)))
        })
        .await
        .expect("core");
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let flusher = Arc::clone(&core.write_behind);
        tokio::spawn(async move { flusher.spawn(rx).await });
        let service = core.service(store, |b| b.fill(7), None);
        let (cached, _) = report("keys cached");

        // 64 clients at once, as a node sees them, each key checked once.
        let started = std::time::Instant::now();
        let clients = 64;
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let service = Arc::clone(&service);
                tokio::spawn(async move {
                    let mut allowed = 0u64;
                    for i in (c..keys).step_by(clients) {
                        let id = key_id(i);
                        if service.validate_hashed(&id, &hash, 1, None).await.allowed() {
                            allowed += 1;
                        }
                    }
                    allowed
                })
            })
            .collect();
        let mut allowed = 0u64;
        for t in tasks {
            allowed += t.await.expect("client task");
        }
        let took = started.elapsed();
        // Let the write-behind catch up and the cap passivate the surplus.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (checked, peak) = report("every key checked");
        println!(
            "memory/checks: {allowed} of {keys} allowed in {:.1} s; active limiters {}, pending writes {}",
            took.as_secs_f64(),
            core.limiters.stats().active,
            core.write_behind.pending_len()
        );
        println!(
            "memory/per-key: {:.0} bytes cached per key, {:.0} bytes per key in all (peak {:.1} MiB for {keys} keys)",
            cached.saturating_sub(base) as f64 / keys as f64,
            checked.saturating_sub(base) as f64 / keys as f64,
            mib(peak)
        );
        let active = core.limiters.stats().active.max(1);
        println!(
            "memory/per-active-key: {:.0} bytes per active KeyLimiter (what the checks added beyond the key cache, store cache included, over {active} active)",
            checked.saturating_sub(cached) as f64 / active as f64,
        );
    });
}
