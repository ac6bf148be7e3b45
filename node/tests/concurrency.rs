//! Exact limits hold under 1 000 concurrent validates over many connections.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::json;
use std::sync::Arc;

async fn hammer(algorithm: &str, window_ms: u64) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (_, key) = node
        .create_key(json!([limit("exact", algorithm, 100, window_ms)]))
        .await;
    if algorithm == "fixed_window" {
        // Fixed windows are aligned to the epoch: do not straddle a boundary.
        let now = ringlimit_actors::clock::wall_ms();
        let left = window_ms - now % window_ms;
        if left < 20_000 {
            tokio::time::sleep(std::time::Duration::from_millis(left + 10)).await;
        }
    }
    let url = Arc::new(format!("{}/api/v1/validate", node.data));
    let body = Arc::new(json!({"api_key": key, "cost": 1}));
    // Several clients, so requests spread over many connections.
    let clients: Vec<reqwest::Client> = (0..16).map(|_| reqwest::Client::new()).collect();
    let tasks: Vec<_> = (0..1_000)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            let (url, body) = (Arc::clone(&url), Arc::clone(&body));
            tokio::spawn(async move {
                c.post(url.as_str())
                    .json(body.as_ref())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    let mut denied = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => denied += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    (ok, denied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sliding_log_admits_exactly_its_limit_under_concurrency() {
    assert_eq!(hammer("sliding_log", 60_000).await, (100, 900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixed_window_admits_exactly_its_limit_under_concurrency() {
    assert_eq!(hammer("fixed_window", 60_000).await, (100, 900));
}
