//! Restart with SIGTERM on the same data directory: keys, revocations and
//! remaining counts survive. Real processes.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn sigterm_restart_keeps_keys_revocations_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]);
    let (_, key) = node
        .create_key(json!([limit("per-hour", "sliding_log", 10, 3_600_000)]))
        .await;
    let (gone_id, gone_key) = node
        .create_key(json!([limit("per-hour", "sliding_log", 10, 3_600_000)]))
        .await;
    for _ in 0..6 {
        assert_eq!(node.validate(&key, 1).await.0, 200);
    }
    let r = node
        .http
        .delete(format!("{}/api/v1/keys/{gone_id}", node.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let status = node.signal_and_wait(SIGTERM);
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");

    let node = Node::start(dir.path(), &[]);
    let (s, b) = node.validate(&key, 1).await;
    assert_eq!(s, 200, "created keys still validate: {b}");
    assert_eq!(
        b["limits"][0]["remaining"], 3,
        "counts continue where they were: {b}"
    );
    assert_eq!(
        node.validate(&gone_key, 1).await.0,
        401,
        "revoked keys stay revoked"
    );
    for _ in 0..3 {
        assert_eq!(node.validate(&key, 1).await.0, 200);
    }
    assert_eq!(
        node.validate(&key, 1).await.0,
        429,
        "no fresh quota after a restart"
    );
    let (_, v) = node.admin(Method::GET, "/api/v1/keys", None).await;
    assert_eq!(v["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn invalid_config_exits_64_naming_the_field_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "data_addr = \"127.0.0.1:0\"\nmax_batch = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringlimit"))
        .env_clear()
        .envs(common::profile_env())
        .env("RINGLIMIT_CONFIG", &cfg)
        .env("RINGLIMIT_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_batch"), "{err}");
    assert!(out.stdout.is_empty(), "nothing was served");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringlimit"))
        .env_clear()
        .envs(common::profile_env())
        .env("RINGLIMIT_DATA_ADDR", "not-an-address")
        .env("RINGLIMIT_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_addr"));
}
