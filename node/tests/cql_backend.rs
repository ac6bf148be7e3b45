//! The ScyllaDB backend against a real CQL server (Cassandra in CI): backend
//! selection by environment, and a CQL outage. Under CI (or with
//! RINGLIMIT_REQUIRE_SERVERS=1) a missing server fails these tests.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::Method;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_env_selects_the_backend_and_keys_live_there() {
    let Some(addr) = cql() else { return };
    let ks = keyspace("sel");
    let env = [
        ("RINGLIMIT_SCYLLA_NODES", addr.as_str()),
        ("RINGLIMIT_SCYLLA_KEYSPACE", ks.as_str()),
        ("RINGLIMIT_FLUSH_INTERVAL_MS", "50"),
    ];
    let d1 = tempfile::tempdir().unwrap();
    let mut node = Node::start(d1.path(), &env);
    let (id, key) = node
        .create_key(json!([limit("per-hour", "sliding_log", 10, 3_600_000)]))
        .await;
    for _ in 0..4 {
        assert_eq!(node.validate(&key, 1).await.0, 200);
    }
    let path = format!("/api/v1/usage/{id}/history?granularity=minute");
    assert!(
        eventually(
            10,
            async || node.admin(Method::GET, &path, None).await.1["total"] == 4
        )
        .await
    );
    assert!(node.signal_and_wait(SIGTERM).success());
    assert!(
        !d1.path().join("ringlimit.redb").exists(),
        "the embedded store was not used"
    );

    // Another node with an empty data directory finds the key, its counts and its history in ScyllaDB.
    let d2 = tempfile::tempdir().unwrap();
    let node = Node::start(d2.path(), &env);
    // The history first: a check on this node is written within 50 ms and
    // would add to it.
    assert_eq!(node.admin(Method::GET, &path, None).await.1["total"], 4);
    let (s, b) = node.validate(&key, 1).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["limits"][0]["remaining"], 5,
        "the snapshot came from ScyllaDB: {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_subcommand_is_idempotent() {
    let Some(addr) = cql() else { return };
    let ks = keyspace("mig");
    for _ in 0..2 {
        migrate(&addr, &ks);
    }
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cql.py"))
        .arg(&addr)
        .arg(format!("SELECT version FROM {ks}.schema_migrations"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let n = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../cql"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cql")
        })
        .count();
    assert_eq!(
        text.lines().filter(|l| !l.trim().is_empty()).count(),
        n,
        "each migration recorded once: {text}"
    );
}

fn cassandra(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/cassandra.sh"
        ))
        .args(args)
        .output()
        .expect("run scripts/cassandra.sh");
    assert!(
        out.status.success(),
        "scripts/cassandra.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct OwnCassandra(tempfile::TempDir);

impl Drop for OwnCassandra {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/cassandra.sh"
            ))
            .args(["stop", self.0.path().to_str().unwrap()])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cql_outage_keeps_validating_answers_503_and_resumes_writes() {
    if cql().is_none() {
        return;
    }
    // This test stops its CQL server, so it runs its own.
    let own = OwnCassandra(tempfile::tempdir().unwrap());
    let dir = own.0.path().to_str().unwrap().to_string();
    let addr = cassandra(&["start", &dir]);
    let ks = keyspace("outage");
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(
        data.path(),
        &[
            ("RINGLIMIT_SCYLLA_NODES", addr.as_str()),
            ("RINGLIMIT_SCYLLA_KEYSPACE", ks.as_str()),
            ("RINGLIMIT_FLUSH_INTERVAL_MS", "50"),
        ],
    );
    let (id, key) = node
        .create_key(json!([limit("per-hour", "sliding_log", 10_000, 3_600_000)]))
        .await;
    let mut admitted = 0;
    for _ in 0..20 {
        assert_eq!(node.validate(&key, 1).await.0, 200);
        admitted += 1;
    }
    let path = format!("/api/v1/usage/{id}/history?granularity=minute");
    assert!(
        eventually(
            10,
            async || node.admin(Method::GET, &path, None).await.1["total"] == 20
        )
        .await
    );

    cassandra(&["stop", &dir]);
    for _ in 0..50 {
        let r = tokio::time::timeout(Duration::from_secs(5), node.validate(&key, 1)).await;
        assert_eq!(
            r.expect("validate answered without waiting on the store").0,
            200
        );
        admitted += 1;
    }
    let started = ringlimit_actors::clock::monotonic();
    let (s, v) = tokio::time::timeout(
        Duration::from_secs(30),
        node.admin(Method::GET, &path, None),
    )
    .await
    .expect("history answers, it does not hang");
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "unavailable");
    eprintln!(
        "history during the CQL outage answered 503 in {:?}",
        started.elapsed()
    );

    cassandra(&["start", &dir]);
    let total_ok = eventually(90, async || {
        node.admin(Method::GET, &path, None).await.1["total"] == admitted
    })
    .await;
    assert!(
        total_ok,
        "usage written during the outage reached the store after it came back"
    );
    let (s, v) = node
        .admin(
            Method::POST,
            "/api/v1/keys",
            Some(json!({"owner": "after", "tier": "free"})),
        )
        .await;
    assert_eq!(s, 201, "admin writes resume: {v}");
}
