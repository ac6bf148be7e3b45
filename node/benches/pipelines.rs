//! Does turning the pipelines on slow the check path? Measures the latency
//! of `Service::validate` (key lookup, hashing, the KeyLimiter actor, and —
//! when on — the pipeline hand-off) on the embedded store, with the
//! pipelines off and on, in alternating rounds within one run, and reports
//! p50/p99/p99.9 of each and the p99 ratio.
//!
//! One node (key cache, KeyLimiter actors, write-behind, store) has two
//! fronts: a `Service` with the pipelines connected and one without. The
//! rounds alternate between the fronts, so the two sides share every
//! instance-level effect (actor placement, map layouts, the store's files)
//! and differ only in the hand-off and the pipelines' background work.
//! (Two separate nodes differed by up to ±7% at p99 with no pipelines at
//! all: that was the noise of the comparison, not a cost of the pipelines.)
//!
//! About 1 in 10 checks is denied (`RINGLIMIT_BENCH_DENIED_PCT` changes the
//! share), so the violation queue is exercised as well as the alert queue;
//! the pipeline workers write to the store in the background meanwhile.
//! The pipelines run as the node runs them, on their background thread
//! (`RINGLIMIT_BENCH_SAME_RUNTIME=1` puts them on the checks' runtime
//! instead). `RINGLIMIT_BENCH_AA=1` leaves both fronts without pipelines, to
//! show the noise of the comparison itself.
//!
//! Besides the pooled percentiles it prints the median over rounds of the
//! per-round p99 ratio (each "on" round against the "off" round next to it),
//! which a single disturbed round cannot move.
//!
//! Run with `cargo bench -p ringlimit-node --bench pipelines`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use ringlimit_actors::core::{Core, CoreConfig};
use ringlimit_actors::pipeline::{BillingFeed, NoWebhooks, PipelineConfig, Pipelines};
use ringlimit_actors::service::Service;
use ringlimit_actors::storage::Store;
use ringlimit_node::background::{Background, DEFAULT_NICE};
use ringlimit_node::store::embedded::EmbeddedStore;
use ringlimit_protocol::admin::CreateKeyRequest;
use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use std::sync::Arc;
use std::time::Duration;

const CLIENT_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));

fn random(buf: &mut [u8]) {
    getrandom::fill(buf).unwrap();
}

/// One node with two fronts: (without pipelines, with them), and its keys.
async fn node(
    dir: &std::path::Path,
    pipelines: bool,
    hot: usize,
) -> (Arc<Service>, Arc<Service>, Vec<String>, Option<Pipelines>) {
    let store = EmbeddedStore::open(dir).unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let billing = BillingFeed::new();
    let config = CoreConfig {
        usage_sink: Some(billing.clone()),
        ..CoreConfig::over(&store).with_tiers(ringlimit_node::config::default_tiers())
    };
    let core = Core::start(config).await.unwrap();
    let wb = Arc::clone(&core.write_behind);
    let off = core.service(Arc::clone(&store), random, None);
    let mut keys = Vec::new();
    for i in 0..100 {
        let k = off
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
        // As the node runs them: on the background thread, unless
        // RINGLIMIT_BENCH_SAME_RUNTIME=1 puts them on the checks' runtime.
        let same = std::env::var("RINGLIMIT_BENCH_SAME_RUNTIME").is_ok_and(|v| v == "1");
        let (host, suspensions) = core.host();
        let start = Pipelines::start(
            cfg,
            Arc::clone(&store),
            Arc::new(NoWebhooks),
            [1; 16],
            Arc::new(host),
            billing,
        );
        let p = if same {
            start.await.unwrap()
        } else {
            let bg = Background::start("ringlimit-pipelines", DEFAULT_NICE).unwrap();
            let p = bg.run(start).await.unwrap().unwrap();
            // It runs for the whole bench.
            std::mem::forget(bg);
            p
        };
        Some((p, suspensions))
    } else {
        None
    };
    let on = core.service(
        Arc::clone(&store),
        random,
        p.as_ref().map(|(p, _)| p.clone()),
    );
    let p = p.map(|(p, suspensions)| {
        tokio::spawn(Arc::clone(&on).serve_suspensions(suspensions));
        p
    });
    // Warm every key's actor.
    for k in &keys {
        off.validate(k, 1, None).await;
    }
    let (stop, rx) = tokio::sync::watch::channel(false);
    let _flusher = wb.spawn(rx);
    // The flusher runs for the whole bench.
    std::mem::forget(stop);
    (off, on, keys, p)
}

/// `n` checks from 4 concurrent callers at a fixed offered rate (each
/// caller sends 25 checks every millisecond: 100 000 checks per second in
/// all, well under this machine's peak, as a service runs in production);
/// returns each check's latency (ns), and the latencies of the denied ones.
async fn round(service: &Arc<Service>, keys: &Arc<Vec<String>>, n: usize) -> (Vec<u64>, Vec<u64>) {
    let mut tasks = Vec::new();
    for c in 0..4 {
        let s = Arc::clone(service);
        let keys = Arc::clone(keys);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n / 4);
            let mut denied = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..n / 4 {
                if i % 25 == 0 {
                    tick.tick().await;
                }
                let k = &keys[(i * 7 + c * 13) % keys.len()];
                let t = ringlimit_actors::clock::monotonic();
                let out = s.validate(k, 1, Some(CLIENT_IP)).await;
                let ns = t.elapsed().as_nanos() as u64;
                lat.push(ns);
                if matches!(out, ringlimit_actors::service::ValidateOutcome::Denied(_)) {
                    denied.push(ns);
                }
            }
            (lat, denied)
        }));
    }
    let mut all = Vec::with_capacity(n);
    let mut denied = Vec::new();
    for t in tasks {
        let (l, d) = t.await.unwrap();
        all.extend(l);
        denied.extend(d);
    }
    (all, denied)
}

/// The `p` quantile of `sorted`, in µs (0 when it is empty).
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p) as usize] as f64 / 1_000.0
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // RINGLIMIT_BENCH_DENIED_PCT: the share of checks denied (default 10).
        let hot = env_usize("RINGLIMIT_BENCH_DENIED_PCT", 10).min(100);
        let aa = std::env::var("RINGLIMIT_BENCH_AA").is_ok_and(|v| v == "1");
        let (off, on, keys, p) = node(dir.path(), !aa, hot).await;
        let keys = Arc::new(keys);
        // RINGLIMIT_BENCH_ROUNDS: rounds per side (default 40, of 40 000 checks).
        let rounds = env_usize("RINGLIMIT_BENCH_ROUNDS", 40).max(1);
        let per_round = 40_000;
        let (mut lat_off, mut lat_on) = (Vec::new(), Vec::new());
        let (mut den_off, mut den_on) = (Vec::new(), Vec::new());
        let mut round_ratios = Vec::new();
        let started = ringlimit_actors::clock::monotonic();
        for r in 0..rounds {
            // Alternate which goes first, so drift in the machine hits both.
            let order = if r % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let mut p99 = [0.0; 2];
            for with in order {
                let (l, d) = round(if with { &on } else { &off }, &keys, per_round).await;
                let l = sorted(l);
                p99[usize::from(with)] = pct(&l, 0.99);
                if with {
                    lat_on.extend(l);
                    den_on.extend(d);
                } else {
                    lat_off.extend(l);
                    den_off.extend(d);
                }
            }
            round_ratios.push(p99[1] / p99[0]);
        }
        let (lat_off, lat_on) = (sorted(lat_off), sorted(lat_on));
        let (den_off, den_on) = (sorted(den_off), sorted(den_on));
        round_ratios.sort_by(f64::total_cmp);
        let stats = p.as_ref().map(|p| p.stats());
        let rate = (lat_off.len() + lat_on.len()) as f64 / started.elapsed().as_secs_f64();
        println!(
            "checks per side: {}  offered {rate:.0}/s  (denied: off {}, on {})",
            lat_off.len(),
            den_off.len(),
            den_on.len()
        );
        for (name, l) in [("pipelines off", &lat_off), ("pipelines on ", &lat_on)] {
            println!(
                "{name}: p50 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs",
                pct(l, 0.50),
                pct(l, 0.99),
                pct(l, 0.999)
            );
        }
        for (name, l) in [("  denied off  ", &den_off), ("  denied on   ", &den_on)] {
            println!(
                "{name}: p50 {:>7.1} µs  p99 {:>7.1} µs",
                pct(l, 0.50),
                pct(l, 0.99)
            );
        }
        println!(
            "p99 on/off = {:.3}   p50 on/off = {:.3}   median of {rounds} per-round p99 ratios = {:.3} (range {:.3}–{:.3})",
            pct(&lat_on, 0.99) / pct(&lat_off, 0.99),
            pct(&lat_on, 0.50) / pct(&lat_off, 0.50),
            round_ratios[round_ratios.len() / 2],
            round_ratios[0],
            round_ratios[round_ratios.len() - 1],
        );
        println!("pipeline queues: {stats:?}");
    });
}
