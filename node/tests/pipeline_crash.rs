//! Killing the violation pipeline's actor mid-stream loses no accepted event.
//!
//! The guarantee (see `ringlimit_actors::pipeline::queue`): an event is
//! accepted when the bounded queue takes it (`push` returns true). While the
//! process lives, every accepted event is written to the store, exactly once:
//! a killed worker leaves its batch in the queue's in-flight slot, the
//! supervisor starts a new worker, which writes that batch again (writes are
//! idempotent by event id) before taking new events.
//!
//! This runs in process on the real embedded store, with the real supervisor.
#![allow(clippy::unwrap_used)]

use ringlimit_actors::keys::{KeyRecord, SecretHash};
use ringlimit_actors::limitset::CheckResult;
use ringlimit_actors::pipeline::{
    BillingFeed, Kind, NoHost, NoWebhooks, PipelineConfig, Pipelines,
};
use ringlimit_actors::storage::{Range, Store};
use ringlimit_node::store::embedded::EmbeddedStore;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn key(id: &str) -> Arc<KeyRecord> {
    Arc::new(KeyRecord::active(id, "o", "free", SecretHash::of("s"), 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_violation_worker_mid_stream_loses_no_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let cfg = PipelineConfig {
        node: "n1".into(),
        queue_capacity: 1_000_000,
        batch_max: 200,
        tick: Duration::from_millis(1),
        ..PipelineConfig::default()
    };
    let p = Pipelines::start(
        cfg,
        Arc::clone(&store),
        Arc::new(NoWebhooks),
        [7; 16],
        Arc::new(NoHost),
        BillingFeed::new(),
    )
    .await
    .unwrap();
    let denied = CheckResult {
        allowed: false,
        limits: vec![],
        retry_after_ms: Some(1),
        denied_by: Some("per-second".into()),
    };
    let keys: Vec<_> = (0..10).map(|i| key(&format!("k{i}"))).collect();
    let producer = {
        let p = p.clone();
        let denied = denied.clone();
        tokio::spawn(async move {
            for i in 0..20_000u64 {
                p.on_denied(
                    &keys[(i % 10) as usize],
                    &denied,
                    1,
                    Some(std::net::IpAddr::from([192, 0, 2, 1])),
                    1_000_000 + i,
                );
                if i % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Kill the worker again and again while events stream in and batches
    // are being written.
    let mut kills = 0;
    while !producer.is_finished() || kills < 5 {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let before = p.worker(Kind::Violations).unwrap();
        before.kill();
        kills += 1;
        // Wait for the supervisor to start its successor (after a pause of a
        // second once restarts come in a burst).
        for _ in 0..2_500 {
            if p.worker(Kind::Violations)
                .is_some_and(|w| w.get_id() != before.get_id())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_ne!(
            p.worker(Kind::Violations).unwrap().get_id(),
            before.get_id(),
            "restarted"
        );
    }
    producer.await.unwrap();
    assert!(
        p.restarts() >= kills,
        "{} restarts for {kills} kills",
        p.restarts()
    );
    assert!(p.flush(Kind::Violations).await, "the queue drains");
    let stats = p
        .stats()
        .into_iter()
        .find(|(n, _)| *n == "violations")
        .unwrap()
        .1;
    assert_eq!(stats.accepted, 20_000);
    assert_eq!(stats.dropped, 0);
    let all = store
        .list_violations(
            None,
            Range {
                from_ms: 0,
                to_ms: u64::MAX,
                offset: 0,
                limit: 100_000,
            },
        )
        .await
        .unwrap();
    let ids: HashSet<_> = all.iter().map(|v| v.id.clone()).collect();
    assert_eq!(all.len(), 20_000, "every accepted event stored, none twice");
    assert_eq!(ids.len(), 20_000);
    let times: HashSet<u64> = all.iter().map(|v| v.at_ms).collect();
    assert_eq!(times.len(), 20_000, "each event is there once");
    eprintln!(
        "{kills} kills, {} restarts, 20000 events stored exactly once",
        p.restarts()
    );
    p.drain().await;
}
