//! The closed loop sends as fast as answers come back, round robin over
//! targets, and its counters add up. (Its own test binary, so it does not
//! compete for the CPU with the open-loop stall test.)

use axum::Router;
use axum::routing::post;
use ringlimit_loadtest::http::Target;
use ringlimit_loadtest::protocol::{System, Wire, ringlimit_item};
use ringlimit_loadtest::runner::{Mode, Picker, RunConfig, run};
use std::sync::Arc;
use std::time::Duration;

async fn allow_all_server() -> std::net::SocketAddr {
    let app = Router::new().route(
        "/api/v1/validate",
        post(|_body: bytes::Bytes| async { "{\"allowed\":true}" }),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_runs_and_counts() {
    let addr = allow_all_server().await;
    let mut target = Target::parse(&format!("http://{addr}")).expect("url");
    target.resolve().await.expect("resolve");
    let out = run(RunConfig {
        wire: Wire::new(System::Ringlimit),
        targets: vec![target.clone(), target],
        mode: Mode::Closed,
        connections: 4,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(500),
        timeout: Duration::from_secs(10),
        batch: None,
        picker: Picker::Cycle,
        seed: 1,
        items: Arc::new(
            (0..10)
                .map(|i| ringlimit_item(&format!("rl_k{i}_s"), 1))
                .collect(),
        ),
        cost: 1,
        record_admissions: Some(1_000_000),
        progress: false,
    })
    .await
    .expect("run");
    let c = &out.totals.counts;
    assert!(c.requests > 0);
    assert_eq!(c.responses, c.requests);
    assert_eq!(c.allowed, c.requests);
    assert_eq!(c.by_status.get(&200), Some(&c.requests));
    assert_eq!(out.admissions.len() as u64, c.allowed);
    assert_eq!(out.totals.latency.len(), c.requests);
    // Cycling spreads the checks evenly over the 10 keys.
    let mut per_key = [0u64; 10];
    for a in &out.admissions {
        per_key[a.key as usize] += 1;
    }
    let (lo, hi) = (
        per_key.iter().min().copied().unwrap_or(0),
        per_key.iter().max().copied().unwrap_or(0),
    );
    assert!(hi - lo <= 1, "{per_key:?}");
}
