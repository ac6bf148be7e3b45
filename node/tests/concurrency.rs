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

/// Concurrent batches whose checks interleave three keys and an IP on the
/// block list: each key admits exactly its limit over all batches, within
/// a batch a key's checks are decided in request order (no denial before
/// an admission of the same key), and a blocked caller's check is answered
/// 403 and spends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_of_interleaved_keys_admit_exactly_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut keys = Vec::new();
    for _ in 0..3 {
        let (_, k) = node
            .create_key(json!([limit("exact", "sliding_log", 100, 600_000)]))
            .await;
        keys.push(k);
    }
    let (s, b) = node
        .admin(
            reqwest::Method::POST,
            "/api/v1/blocks",
            Some(json!({"cidr": "198.51.100.0/24"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    // 40 checks a batch: 10 per key, round robin, and 10 from a blocked IP.
    let checks: Vec<serde_json::Value> = (0..40)
        .map(|i| match i % 4 {
            3 => json!({"api_key": keys[(i / 4) % 3], "cost": 1, "client_ip": "198.51.100.7"}),
            k => json!({"api_key": keys[k], "cost": 1, "client_ip": "192.0.2.1"}),
        })
        .collect();
    let body = Arc::new(json!({ "checks": checks }));
    let url = Arc::new(format!("{}/api/v1/validate/batch", node.data));
    let clients: Vec<reqwest::Client> = (0..8).map(|_| reqwest::Client::new()).collect();
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            let (url, body) = (Arc::clone(&url), Arc::clone(&body));
            tokio::spawn(async move {
                let r = c
                    .post(url.as_str())
                    .json(body.as_ref())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.unwrap();
                v["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["status"].as_u64().unwrap())
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut allowed = [0u32; 3];
    for t in tasks {
        let statuses = t.await.unwrap();
        assert_eq!(statuses.len(), 40);
        let mut denied_seen = [false; 3];
        for (i, s) in statuses.iter().enumerate() {
            if i % 4 == 3 {
                assert_eq!(*s, 403, "check {i} comes from a blocked IP");
                continue;
            }
            let k = i % 4;
            match s {
                200 => {
                    assert!(
                        !denied_seen[k],
                        "key {k}: admitted after a denial in one batch"
                    );
                    allowed[k] += 1;
                }
                429 => denied_seen[k] = true,
                s => panic!("check {i}: status {s}"),
            }
        }
    }
    assert_eq!(allowed, [100, 100, 100], "30 batches × 10 checks per key");
}

/// A batch that is the first use of its keys: the keys are activated and
/// loaded while the batch waits, and each key's checks are still decided
/// in request order: its admissions come first, then its denials.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_on_keys_not_yet_active_decides_each_key_in_request_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/validate/batch", node.data);
    for round in 0..40 {
        let mut keys = Vec::new();
        for _ in 0..4 {
            let (_, k) = node
                .create_key(json!([limit("exact", "sliding_log", 3, 600_000)]))
                .await;
            keys.push(k);
        }
        // 12 checks per key, round robin over the keys.
        let checks: Vec<serde_json::Value> = (0..48)
            .map(|i| json!({"api_key": keys[i % 4], "cost": 1}))
            .collect();
        let r = client
            .post(url.as_str())
            .json(&json!({ "checks": checks }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        let statuses: Vec<u64> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect();
        for k in 0..4 {
            let of_key: Vec<u64> = statuses.iter().skip(k).step_by(4).copied().collect();
            let mut expected = vec![200; 3];
            expected.resize(12, 429);
            assert_eq!(of_key, expected, "round {round}, key {k}");
        }
    }
}
