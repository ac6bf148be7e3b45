//! The open loop counts queueing delay: against a server that stalls once (500 ms),
//! the latency measured from the intended send time sees the stall in its
//! p99, while the same requests timed from their actual send (what a naive
//! closed-loop client records) show it as one outlier.
//!
//! Assertions compare recorded values with each other, never with wall-clock
//! budgets: the only absolute fact used is that the stalled request took at
//! least as long as the server slept.

use axum::Router;
use axum::routing::post;
use ringlimit_loadtest::http::Target;
use ringlimit_loadtest::protocol::{System, Wire, ringlimit_item};
use ringlimit_loadtest::runner::{Mode, Picker, RunConfig, run};
use ringlimit_loadtest::schedule::Schedule;
use ringlimit_loadtest::stats::LatencySummary;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const STALL: Duration = Duration::from_millis(500);

/// A validate endpoint that answers 200 at once, except request number 100, which it holds for STALL.
async fn stalling_server() -> std::net::SocketAddr {
    let seen = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/api/v1/validate",
        post(move |_body: bytes::Bytes| {
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) == 100 {
                    tokio::time::sleep(STALL).await;
                }
                "{\"allowed\":true}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn count_at_least(h: &hdrhistogram::Histogram<u64>, ns: u64) -> u64 {
    h.len() - h.count_between(0, ns.saturating_sub(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_includes_the_queue_behind_a_stall() {
    let addr = stalling_server().await;
    let mut target = Target::parse(&format!("http://{addr}")).expect("url");
    target.resolve().await.expect("resolve");
    let schedule = Schedule::constant(400.0);
    let duration = Duration::from_secs(2);
    let cfg = RunConfig {
        wire: Wire::new(System::Ringlimit),
        targets: vec![target],
        mode: Mode::Open(schedule),
        // One connection: while it waits for the stalled answer, the requests
        // due meanwhile queue behind it.
        connections: 1,
        warmup: Duration::ZERO,
        duration,
        timeout: Duration::from_secs(10),
        batch: None,
        picker: Picker::Hot,
        seed: 1,
        items: Arc::new(vec![ringlimit_item("rl_k_secret", 1)]),
        cost: 1,
        record_admissions: None,
        progress: false,
    };
    let out = run(cfg).await.expect("run");
    let c = &out.totals.counts;
    // Pacing: every due request was sent, or counted as unsent.
    assert_eq!(
        c.requests + out.unsent,
        schedule.count_before(duration),
        "{c:?}"
    );
    assert!(c.requests > 200, "{c:?}");
    assert_eq!(c.allowed, c.requests, "{c:?}");

    let open = LatencySummary::of(&out.totals.latency);
    let naive = LatencySummary::of(&out.totals.service);
    eprintln!("open loop (from intended send): {open:?}");
    eprintln!("naive (from actual send):       {naive:?}");
    let stall_ns = STALL.as_nanos() as u64;
    // Both saw the stalled request itself.
    assert!(naive.max_us * 1000.0 >= stall_ns as f64 * 0.99, "{naive:?}");
    assert!(open.max_us >= naive.max_us * 0.99, "{open:?} vs {naive:?}");
    // Timed from the actual send, the stall is one request (a few more may be
    // slow if the machine is busy): it does not reach the p99.
    let slow_naive = count_at_least(&out.totals.service, stall_ns / 3);
    assert!(
        (1..=3).contains(&slow_naive),
        "{slow_naive} slow samples from the actual send time"
    );
    assert!(
        naive.p99_us * 5.0 < naive.max_us,
        "naive p99 should not see the stall: {naive:?}"
    );
    // Timed from the intended send, every request due during the stall waited
    // for it: many samples are slow and the p99 sees the stall.
    let slow_open = count_at_least(&out.totals.latency, stall_ns / 3);
    assert!(
        slow_open >= 10 * slow_naive,
        "only {slow_open} slow samples from the intended send time"
    );
    assert!(
        open.p99_us * 2.0 >= naive.max_us,
        "open-loop p99 should see the stall: {open:?} vs {naive:?}"
    );
    assert!(open.p99_us > naive.p99_us * 3.0, "{open:?} vs {naive:?}");
}
