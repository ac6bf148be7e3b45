//! The storage conformance suite on the embedded (redb) store, plus tests
//! specific to it: persistence across reopen, one open per process.

use ringlimit_actors::keys::{KeyRecord, SecretHash};
use ringlimit_actors::storage::conformance::{Fixture, SCENARIOS};
use ringlimit_actors::storage::{
    KeyStore, SnapshotStore, StoreError, TierRecord, TierStore, UsageRow, UsageStore,
};
use ringlimit_node::store::embedded::{EmbeddedStore, FILE_NAME};
use ringlimit_protocol::admin::{Granularity, KeyStatus, Metadata, UsageBucket};
use ringlimit_protocol::{AlgorithmKind, LimitSpec};

/// A fresh store in its own temporary directory, removed after the store is dropped.
async fn fresh() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open embedded store");
    Fixture::with_guard(store, dir)
}

ringlimit_actors::storage_conformance_suite!(fresh);

#[test]
fn suite_has_scenarios() {
    assert!(SCENARIOS.len() >= 15, "{SCENARIOS:?}");
}

fn sample_key() -> KeyRecord {
    let mut metadata = Metadata::new();
    metadata.insert("env".into(), serde_json::json!("prod"));
    KeyRecord {
        key_id: "k1".into(),
        owner: "acme".into(),
        tier: "pro".into(),
        status: KeyStatus::Active,
        limits: Some(vec![LimitSpec {
            name: "rps".into(),
            algorithm: AlgorithmKind::TokenBucket,
            limit: 10,
            window_ms: 1_000,
            burst: Some(20),
        }]),
        metadata,
        secret_hash: SecretHash::of("s2"),
        previous_hash: Some(SecretHash::of("s1")),
        previous_expires_at_ms: Some(10_000),
        created_at_ms: 1,
        updated_at_ms: 2,
        suspended_until_ms: None,
        suspended_reason: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("nested").join("data");
    let key = sample_key();
    let tier = TierRecord {
        name: "pro".into(),
        limits: vec![LimitSpec {
            name: "rpm".into(),
            algorithm: AlgorithmKind::Gcra,
            limit: 60,
            window_ms: 60_000,
            burst: None,
        }],
    };
    let usage = [
        UsageRow {
            key_id: "k1".into(),
            granularity: Granularity::Minute,
            bucket_start_ms: 60_000,
            writer: "a".into(),
            units: 3,
        },
        UsageRow {
            key_id: "k1".into(),
            granularity: Granularity::Minute,
            bucket_start_ms: 60_000,
            writer: "b".into(),
            units: 4,
        },
        UsageRow {
            key_id: "k1".into(),
            granularity: Granularity::Hour,
            bucket_start_ms: 0,
            writer: "a".into(),
            units: 7,
        },
    ];
    {
        let store = EmbeddedStore::open(&data).expect("open (creates nested directories)");
        assert!(data.join(FILE_NAME).is_file());
        store.put_key(&key).await.expect("put_key");
        store.put_tier(&tier).await.expect("put_tier");
        store
            .save_snapshots(&[("k1".into(), vec![1, 2, 3]), ("k2".into(), vec![4])])
            .await
            .expect("save_snapshots");
        store.write_usage(&usage).await.expect("write_usage");
    }
    // Dropped: the file is closed. Open it again.
    let store = EmbeddedStore::open(&data).expect("reopen");
    assert_eq!(
        store.get_key("k1").await.expect("get_key"),
        Some(key.clone())
    );
    assert_eq!(
        store.load_all_keys().await.expect("load_all_keys"),
        vec![key]
    );
    assert_eq!(store.list_tiers().await.expect("list_tiers"), vec![tier]);
    assert_eq!(
        store.load_snapshot("k1").await.expect("load_snapshot"),
        Some(vec![1, 2, 3])
    );
    assert_eq!(
        store.load_snapshot("k2").await.expect("load_snapshot"),
        Some(vec![4])
    );
    assert_eq!(
        store
            .usage_history("k1", Granularity::Minute, 0, u64::MAX)
            .await
            .expect("usage_history"),
        vec![UsageBucket {
            start_ms: 60_000,
            units: 7
        }]
    );
    // Rewriting the same absolute rows after a restart does not double count.
    store.write_usage(&usage).await.expect("write_usage again");
    assert_eq!(
        store
            .usage_history("k1", Granularity::Hour, 0, u64::MAX)
            .await
            .expect("usage_history"),
        vec![UsageBucket {
            start_ms: 0,
            units: 7
        }]
    );
}

/// Persistence across a real process exit: a child process (this test binary,
/// re-run on one test) writes and exits; this process reopens the file.
#[test]
fn survives_process_exit() {
    const ENV: &str = "RINGLIMIT_EMBEDDED_CHILD_DIR";
    if let Ok(dir) = std::env::var(ENV) {
        // Child: write, then exit without any explicit close.
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                let store = EmbeddedStore::open(std::path::Path::new(&dir)).expect("child open");
                store.put_key(&sample_key()).await.expect("child put_key");
                store
                    .save_snapshots(&[("k1".into(), vec![42])])
                    .await
                    .expect("child save_snapshots");
            });
        std::process::exit(0);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "--exact",
            "survives_process_exit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run child");
    assert!(status.success(), "child failed: {status}");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let store = EmbeddedStore::open(dir.path()).expect("open after child exit");
            assert_eq!(
                store.get_key("k1").await.expect("get_key"),
                Some(sample_key())
            );
            assert_eq!(
                store.load_snapshot("k1").await.expect("load_snapshot"),
                Some(vec![42])
            );
        });
}

#[test]
fn second_open_while_alive_fails_then_reopen_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = EmbeddedStore::open(dir.path()).expect("open");
    let clone = first.clone();
    drop(first);
    // A clone keeps the database open.
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("already open"), "{msg}"),
        other => panic!("expected an already-open error, got {other:?}"),
    }
    drop(clone);
    EmbeddedStore::open(dir.path()).expect("reopen after every handle is dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = EmbeddedStore::open(dir.path()).expect("open");
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let row = UsageRow {
                    key_id: "hot".into(),
                    granularity: Granularity::Minute,
                    bucket_start_ms: i * 60_000,
                    writer: format!("w{w}"),
                    units: i + 1,
                };
                s.write_usage(&[row]).await.expect("write_usage");
                s.usage_history("hot", Granularity::Minute, 0, u64::MAX)
                    .await
                    .expect("usage_history");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let hist = shared
        .usage_history("hot", Granularity::Minute, 0, u64::MAX)
        .await
        .expect("usage_history");
    let want: Vec<UsageBucket> = (0..20u64)
        .map(|i| UsageBucket {
            start_ms: i * 60_000,
            units: 8 * (i + 1),
        })
        .collect();
    assert_eq!(hist, want);
}
