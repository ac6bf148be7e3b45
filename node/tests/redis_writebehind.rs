//! Redis write-behind with real processes and a real Redis: SIGKILL recovery,
//! loss bound under load, a Redis outage, and Redis Cluster. Each test starts
//! its own Redis through `scripts/redis.sh` (which fails, and so fails the
//! test, when redis-server is not installed).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::Method;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn script(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis.sh"))
        .args(args)
        .output()
        .expect("run scripts/redis.sh");
    assert!(
        out.status.success(),
        "scripts/redis.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Redis {
    dir: tempfile::TempDir,
    url: String,
    cluster: bool,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let url = script(&["start", dir.path().to_str().unwrap()]);
        Redis {
            dir,
            url,
            cluster: false,
        }
    }
    fn start_cluster() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let nodes = script(&["start-cluster", dir.path().to_str().unwrap()]);
        Redis {
            dir,
            url: nodes,
            cluster: true,
        }
    }
    fn stop(&self) {
        script(&["stop", self.dir.path().to_str().unwrap()]);
    }
    /// SIGKILL: without persistence it comes back empty.
    fn kill(&self) {
        script(&["kill", self.dir.path().to_str().unwrap()]);
    }
    fn restart(&self) {
        script(&["start", self.dir.path().to_str().unwrap()]);
    }
    fn env(&self) -> (&'static str, &str) {
        if self.cluster {
            ("RINGLIMIT_REDIS_CLUSTER_NODES", &self.url)
        } else {
            ("RINGLIMIT_REDIS_URL", &self.url)
        }
    }
    /// Whether Redis holds the state of `key_id`.
    fn has_state(&self, key_id: &str) -> bool {
        let key = format!("rl:{{{key_id}}}:state");
        let mut cmd = Command::new("redis-cli");
        if self.cluster {
            let first = self.url.split(',').next().unwrap();
            let (h, p) = first.split_once(':').unwrap();
            cmd.args(["-c", "-h", h, "-p", p]);
        } else {
            cmd.args(["-u", &self.url]);
        }
        let out = cmd.args(["EXISTS", &key]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let sub = if self.cluster { "stop-cluster" } else { "stop" };
        let _ = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis.sh"))
            .args([sub, self.dir.path().to_str().unwrap()])
            .output();
    }
}

async fn used(node: &Node, id: &str) -> u64 {
    let (s, v) = node
        .admin(Method::GET, &format!("/api/v1/usage/{id}/current"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["limits"][0]["used"].as_u64().unwrap()
}

async fn sigkill_recovery(redis: &Redis, data: &Path) {
    let env = [redis.env(), ("RINGLIMIT_FLUSH_INTERVAL_MS", "100")];
    let mut node = Node::start(data, &env);
    let (id, key) = node
        .create_key(json!([limit("per-minute", "sliding_log", 100, 60_000)]))
        .await;
    for _ in 0..60 {
        assert_eq!(node.validate(&key, 1).await.0, 200);
    }
    // Wait more than one flush interval, and until Redis holds the state.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        eventually(5, async || redis.has_state(&id)).await,
        "the state reached Redis"
    );
    node.signal_and_wait(SIGKILL);

    let node = Node::start(data, &env);
    assert_eq!(
        used(&node, &id).await,
        60,
        "the count continues from Redis after SIGKILL"
    );
    let (s, b) = node.validate(&key, 1).await;
    assert_eq!(s, 200);
    assert_eq!(
        b["limits"][0]["remaining"], 39,
        "40 were left, this check spent one: {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_recovery_continues_the_count_from_redis() {
    let redis = Redis::start();
    let data = tempfile::tempdir().unwrap();
    sigkill_recovery(&redis, data.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_recovery_on_a_redis_cluster() {
    let redis = Redis::start_cluster();
    let data = tempfile::tempdir().unwrap();
    sigkill_recovery(&redis, data.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_at_most_the_last_flush_interval() {
    let redis = Redis::start();
    let data = tempfile::tempdir().unwrap();
    let flush_ms = 100u64;
    let env = [redis.env(), ("RINGLIMIT_FLUSH_INTERVAL_MS", "100")];
    let mut node = Node::start(data.path(), &env);
    let (id, key) = node
        .create_key(json!([limit(
            "per-hour",
            "sliding_log",
            100_000,
            3_600_000
        )]))
        .await;
    let url = format!("{}/api/v1/validate", node.data);
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    let t0 = ringlimit_actors::clock::monotonic();
    // Client-side arrival times (µs since t0) of every 200.
    let times = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (url, key, stop, admitted, times) = (
                url.clone(),
                key.clone(),
                stop.clone(),
                admitted.clone(),
                times.clone(),
            );
            tokio::spawn(async move {
                let c = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    match c.post(&url).json(&json!({"api_key": key})).send().await {
                        Ok(r) if r.status() == 200 => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            times.lock().push(t0.elapsed().as_micros() as u64);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let kill_at = t0.elapsed().as_micros() as u64;
    node.signal_and_wait(SIGKILL);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let client_admitted = admitted.load(Ordering::Relaxed);
    // Admits the node answered in the last two flush intervals before the kill
    // (one interval plus the time a flush takes, with margin).
    let window_us = 2 * flush_ms * 1_000;
    let recent = times
        .lock()
        .iter()
        .filter(|&&t| t + window_us >= kill_at)
        .count() as u64;

    let node = Node::start(data.path(), &env);
    let recovered = used(&node, &id).await;
    let lost = client_admitted.saturating_sub(recovered);
    eprintln!(
        "SIGKILL under load: client saw {client_admitted} admits, {recovered} recovered from Redis, {lost} lost; \
         {recent} admits in the last {} ms before the kill",
        2 * flush_ms
    );
    assert!(
        recovered <= client_admitted + 8,
        "never more than admitted (8 may be in flight unanswered)"
    );
    assert!(
        lost <= recent,
        "lost {lost} > admits of the last flush interval(s) {recent}"
    );
    assert!(client_admitted > 100, "the load did run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_fails_no_validate_and_state_flushes_after_recovery() {
    let redis = Redis::start();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(
        data.path(),
        &[redis.env(), ("RINGLIMIT_FLUSH_INTERVAL_MS", "50")],
    );
    let mut keys = Vec::new();
    for _ in 0..6 {
        keys.push(
            node.create_key(json!([limit(
                "per-hour",
                "sliding_log",
                100_000,
                3_600_000
            )]))
            .await,
        );
    }
    let (before, during) = keys.split_at(3);
    let mut sent = 0;
    let mut failed = Vec::new();
    let mut go = async |ks: &[(String, String)], n: usize| {
        for i in 0..n {
            let (_, k) = &ks[i % ks.len()];
            let r = tokio::time::timeout(Duration::from_secs(2), node.validate(k, 1)).await;
            sent += 1;
            match r {
                Ok((200, _)) => {}
                Ok((s, b)) => failed.push(format!("{s} {b}")),
                Err(_) => failed.push("timeout".into()),
            }
        }
    };
    go(before, 90).await;
    redis.stop();
    go(before, 60).await;
    // Keys touched for the first time during the outage.
    go(during, 60).await;
    redis.restart();
    go(during, 30).await;
    assert!(
        failed.is_empty(),
        "{} of {sent} validates failed during the outage: {failed:?}",
        failed.len()
    );
    for (id, _) in &keys {
        assert!(
            eventually(10, async || redis.has_state(id)).await,
            "state of {id} reached Redis after it came back"
        );
    }
}

/// Redis killed and started again empty: the node notices (the marker key
/// is gone) and writes every active key's state to it again, with no new
/// check, so a SIGKILL of the node afterwards still continues the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_comes_back_empty_gets_every_active_key_again() {
    let redis = Redis::start();
    let data = tempfile::tempdir().unwrap();
    let env = [redis.env(), ("RINGLIMIT_FLUSH_INTERVAL_MS", "100")];
    let mut node = Node::start(data.path(), &env);
    let (id, key) = node
        .create_key(json!([limit("per-hour", "sliding_log", 100, 3_600_000)]))
        .await;
    for _ in 0..30 {
        assert_eq!(node.validate(&key, 1).await.0, 200);
    }
    assert!(
        eventually(5, async || redis.has_state(&id)).await,
        "the state reached Redis"
    );
    redis.kill();
    redis.restart();
    assert!(
        eventually(10, async || redis.has_state(&id)).await,
        "the state was written to the empty Redis again, with no new check"
    );
    node.signal_and_wait(SIGKILL);
    let node = Node::start(data.path(), &env);
    assert_eq!(
        used(&node, &id).await,
        30,
        "after a SIGKILL the count continues from the state written again"
    );
}
