//! Local check vs forwarded check, end to end over HTTP, on a 2-node cluster
//! of real processes: the same key validated through its owner (local) and
//! through the other node (forwarded to the owner in batches), at 1 and 64
//! concurrent callers. Needs a CQL server and Redis:
//!
//! `RINGLIMIT_BENCH_CQL=host:port RINGLIMIT_BENCH_REDIS_URL=redis://… cargo bench -p ringlimit-node --bench forward`

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "bench-admin-token-0123456789";

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn start(
    i: usize,
    ports: &[u16],
    cql: &str,
    redis: &str,
    ks: &str,
    dir: &std::path::Path,
) -> (Proc, String, String) {
    let seeds: Vec<String> = (0..ports.len())
        .filter(|&j| j != i)
        .map(|j| format!("127.0.0.1:{}", ports[j]))
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlimit"))
        .env("RINGLIMIT_NODE_NAME", format!("b{i}"))
        .env("RINGLIMIT_CLUSTER_ADDR", format!("127.0.0.1:{}", ports[i]))
        .env("RINGLIMIT_SEEDS", seeds.join(","))
        .env("RINGLIMIT_COOKIE", "bench-cluster-cookie-0123456789abcdef")
        .env("RINGLIMIT_SCYLLA_NODES", cql)
        .env("RINGLIMIT_SCYLLA_KEYSPACE", ks)
        .env("RINGLIMIT_REDIS_URL", redis)
        .env("RINGLIMIT_DATA_ADDR", "127.0.0.1:0")
        .env("RINGLIMIT_ADMIN_ADDR", "127.0.0.1:0")
        .env("RINGLIMIT_ADMIN_TOKEN", TOKEN)
        .env("RINGLIMIT_DATA_DIR", dir)
        .env("RINGLIMIT_LOG_LEVEL", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ringlimit");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    BufReader::new(out)
        .read_line(&mut line)
        .expect("ready line");
    let field = |n: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{n}=")))
            .unwrap_or_default()
            .to_string()
    };
    let (data, admin) = (
        format!("http://{}", field("data_addr")),
        format!("http://{}", field("admin_addr")),
    );
    (Proc(child), data, admin)
}

async fn run(url: &str, key: &str, callers: usize, dur: Duration) -> (Vec<Duration>, f64) {
    let url = Arc::new(format!("{url}/api/v1/validate"));
    let body = Arc::new(json!({"api_key": key}).to_string());
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                let c = reqwest::Client::new();
                let mut lat = Vec::new();
                let end = ringlimit_actors::clock::monotonic() + dur;
                while ringlimit_actors::clock::monotonic() < end {
                    let t = ringlimit_actors::clock::monotonic();
                    let r = c
                        .post(url.as_str())
                        .header("content-type", "application/json")
                        .body(body.as_str().to_owned())
                        .send()
                        .await;
                    if let Ok(r) = r {
                        let ok = r.status() == 200;
                        let _ = r.bytes().await;
                        if ok {
                            lat.push(t.elapsed());
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    let rps = all.len() as f64 / dur.as_secs_f64();
    (all, rps)
}

fn pct(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

fn main() {
    let (Ok(cql), Ok(redis)) = (
        std::env::var("RINGLIMIT_BENCH_CQL"),
        std::env::var("RINGLIMIT_BENCH_REDIS_URL"),
    ) else {
        eprintln!(
            "set RINGLIMIT_BENCH_CQL and RINGLIMIT_BENCH_REDIS_URL (scripts/cassandra.sh and scripts/redis.sh start them)"
        );
        return;
    };
    let ks = format!("rl_bench_{}", std::process::id());
    let dirs: Vec<_> = (0..2)
        .map(|i| std::env::temp_dir().join(format!("rl-bench-fwd-{}-{i}", std::process::id())))
        .collect();
    for d in &dirs {
        let _ = std::fs::create_dir_all(d);
    }
    let st = Command::new(env!("CARGO_BIN_EXE_ringlimit"))
        .arg("migrate")
        .env("RINGLIMIT_SCYLLA_NODES", &cql)
        .env("RINGLIMIT_SCYLLA_KEYSPACE", &ks)
        .env("RINGLIMIT_ADMIN_TOKEN", TOKEN)
        .status()
        .expect("migrate");
    assert!(st.success());
    let ports = [free_port(), free_port()];
    let nodes: Vec<_> = (0..2)
        .map(|i| start(i, &ports, &cql, &redis, &ks, &dirs[i]))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        // Wait for the ring of two.
        for _ in 0..200 {
            let v: Value = match http.get(format!("{}/api/v1/cluster", nodes[0].2)).bearer_auth(TOKEN).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if v["ring_members"].as_array().map(|a| a.len()) == Some(2) && v["handoff_in_progress"] == false {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let created: Value = http
            .post(format!("{}/api/v1/keys", nodes[0].2))
            .bearer_auth(TOKEN)
            .json(&json!({"owner": "bench", "tier": "free", "limits": [{"name": "l", "algorithm": "token_bucket", "limit": 1_000_000_000u64, "window_ms": 1000, "burst": 1_000_000_000u64}]}))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        let key = created["api_key"].as_str().expect("api_key").to_string();
        let key_id = created["key_id"].as_str().expect("key_id").to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let owner: Value = http
            .get(format!("{}/api/v1/cluster/owner?key_id={key_id}", nodes[0].2))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("owner")
            .json()
            .await
            .expect("json");
        let o = if owner["owner"] == "b0" { 0 } else { 1 };
        let (local, remote) = (&nodes[o].1, &nodes[1 - o].1);
        // Warm both paths.
        run(local, &key, 8, Duration::from_millis(500)).await;
        run(remote, &key, 8, Duration::from_millis(500)).await;
        println!("| path | callers | checks/s | p50 | p99 |");
        println!("|---|---:|---:|---:|---:|");
        for callers in [1usize, 64] {
            for (name, url) in [("local (owner)", local), ("forwarded", remote)] {
                let (lat, rps) = run(url, &key, callers, Duration::from_secs(4)).await;
                println!("| {name} | {callers} | {rps:.0} | {:.0} µs | {:.0} µs |", pct(&lat, 0.5), pct(&lat, 0.99));
            }
        }
    });
    drop(nodes);
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}
