//! Does turning the pipelines on slow the check path? Measures the latency
//! of `Service::validate` (key lookup, hashing, the KeyLimiter actor, and —
//! when on — the pipeline hand-off) on the embedded store, with the
//! pipelines off and on, in alternating rounds within one run, and reports
//! p50/p99/p99.9 of each and the p99 ratio.
//!
//! About 1 in 10 checks is denied (`RINGLIMIT_BENCH_DENIED_PCT` changes the share), so the violation queue is exercised as
//! well as the billing queue; the pipeline workers write to the store in the
//! background meanwhile.
//!
//! Run with `cargo bench -p ringlimit-node --bench pipelines`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use async_trait::async_trait;
use ringlimit_actors::catalog::{Catalog, LimitsSource};
use ringlimit_actors::limiter::{Clock, KeyLimiters, LimiterConfig, SystemClock};
use ringlimit_actors::pipeline::{HttpPoster, PipelineConfig, Pipelines};
use ringlimit_actors::service::Service;
use ringlimit_actors::storage::{SnapshotStore, Store, UsageStore};
use ringlimit_actors::writebehind::{WriteBehind, WriteBehindConfig};
use ringlimit_node::store::embedded::EmbeddedStore;
use ringlimit_protocol::admin::CreateKeyRequest;
use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct NoWebhooks;

#[async_trait]
impl HttpPoster for NoWebhooks {
    async fn post(
        &self,
        _: &str,
        _: &[(&'static str, String)],
        _: Vec<u8>,
        _: Duration,
    ) -> Result<u16, String> {
        Ok(200)
    }
}

fn random(buf: &mut [u8]) {
    getrandom::fill(buf).unwrap();
}

async fn node(
    dir: &std::path::Path,
    pipelines: bool,
    hot: usize,
) -> (Arc<Service>, Vec<String>, Option<Pipelines>) {
    let store = EmbeddedStore::open(dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let snaps: Arc<dyn SnapshotStore> = store.clone();
    let usage: Arc<dyn UsageStore> = store.clone();
    let source = Arc::new(LimitsSource {
        catalog: Catalog::new(ringlimit_node::config::default_tiers()),
        keys: Default::default(),
    });
    let wb = Arc::new(WriteBehind::new(
        vec![snaps],
        Some(usage),
        WriteBehindConfig::default(),
    ));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let limiters = KeyLimiters::start(
        Arc::clone(&source),
        Arc::clone(&wb),
        LimiterConfig::default(),
        Arc::clone(&clock),
    )
    .await
    .unwrap();
    let service = Arc::new(Service::new(
        source,
        limiters,
        Arc::clone(&store),
        clock,
        random,
    ));
    let mut keys = Vec::new();
    for i in 0..100 {
        let k = service
            .create_key(CreateKeyRequest {
                owner: format!("o{i}"),
                tier: "free".into(),
                // `hot` keys of 100 have a tiny limit: about hot% of the
                // checks are denied (violation events), the rest admitted.
                limits: Some(vec![LimitSpec {
                    name: "per-second".into(),
                    algorithm: AlgorithmKind::SlidingWindow,
                    limit: if i >= 100 - hot { 10 } else { 1_000_000 },
                    window_ms: 1_000,
                    burst: None,
                }]),
                metadata: None,
            })
            .await
            .unwrap();
        keys.push(k.api_key);
    }
    let p = if pipelines {
        let mut cfg = PipelineConfig::default();
        cfg.alerts.usage_percent = 80;
        let p = Pipelines::start(cfg, store, Arc::new(NoWebhooks), [1; 16])
            .await
            .unwrap();
        service.set_pipelines(p.clone());
        Some(p)
    } else {
        None
    };
    // Warm every key's actor.
    for k in &keys {
        service.validate(k, 1, None).await;
    }
    let (stop, rx) = tokio::sync::watch::channel(false);
    let _flusher = wb.spawn(rx);
    // The flusher runs for the whole bench.
    std::mem::forget(stop);
    (service, keys, p)
}

/// `n` checks from 4 concurrent callers at a fixed offered rate (each
/// caller sends 25 checks every millisecond: 100 000 checks per second in
/// all, well under this machine's peak, as a service runs in production);
/// returns each check's latency (ns) and the denied count.
async fn round(service: &Arc<Service>, keys: &Arc<Vec<String>>, n: usize) -> (Vec<u64>, usize) {
    let mut tasks = Vec::new();
    for c in 0..4 {
        let s = Arc::clone(service);
        let keys = Arc::clone(keys);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n / 4);
            let mut denied = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..n / 4 {
                if i % 25 == 0 {
                    tick.tick().await;
                }
                let k = &keys[(i * 7 + c * 13) % keys.len()];
                let t = Instant::now();
                let out = s.validate(k, 1, Some("198.51.100.1")).await;
                lat.push(t.elapsed().as_nanos() as u64);
                if matches!(
                    out,
                    ringlimit_actors::service::ValidateOutcome::Denied { .. }
                ) {
                    denied += 1;
                }
            }
            (lat, denied)
        }));
    }
    let mut all = Vec::with_capacity(n);
    let mut denied = 0;
    for t in tasks {
        let (l, d) = t.await.unwrap();
        all.extend(l);
        denied += d;
    }
    (all, denied)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize] as f64 / 1_000.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d_off = tempfile::tempdir().unwrap();
        let d_on = tempfile::tempdir().unwrap();
        // RINGLIMIT_BENCH_DENIED_PCT: the share of checks denied (default 10).
        let hot = std::env::var("RINGLIMIT_BENCH_DENIED_PCT")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(10)
            .min(100);
        let (off, keys_off, _) = node(d_off.path(), false, hot).await;
        // RINGLIMIT_BENCH_AA=1: both sides without pipelines, to see the
        // noise of the comparison itself.
        let aa = std::env::var("RINGLIMIT_BENCH_AA").is_ok_and(|v| v == "1");
        let (on, keys_on, p) = node(d_on.path(), !aa, hot).await;
        let (keys_off, keys_on) = (Arc::new(keys_off), Arc::new(keys_on));
        let rounds = 10;
        let per_round = 40_000;
        let (mut lat_off, mut lat_on) = (Vec::new(), Vec::new());
        let (mut den_off, mut den_on) = (0, 0);
        let started = Instant::now();
        for r in 0..rounds {
            // Alternate which goes first, so drift in the machine hits both.
            let order = if r % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for with in order {
                if with {
                    let (l, d) = round(&on, &keys_on, per_round).await;
                    lat_on.extend(l);
                    den_on += d;
                } else {
                    let (l, d) = round(&off, &keys_off, per_round).await;
                    lat_off.extend(l);
                    den_off += d;
                }
            }
        }
        lat_off.sort_unstable();
        lat_on.sort_unstable();
        let stats = p.as_ref().map(|p| p.stats());
        let rate = (lat_off.len() + lat_on.len()) as f64 / started.elapsed().as_secs_f64();
        println!(
            "checks per side: {}  offered {rate:.0}/s  (denied: off {den_off}, on {den_on})",
            lat_off.len()
        );
        for (name, l) in [("pipelines off", &lat_off), ("pipelines on ", &lat_on)] {
            println!(
                "{name}: p50 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs",
                pct(l, 0.50),
                pct(l, 0.99),
                pct(l, 0.999)
            );
        }
        println!(
            "p99 on/off = {:.3}   p50 on/off = {:.3}",
            pct(&lat_on, 0.99) / pct(&lat_off, 0.99),
            pct(&lat_on, 0.50) / pct(&lat_off, 0.50)
        );
        println!("pipeline queues: {stats:?}");
    });
}
