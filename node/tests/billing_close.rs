//! A billing period closes only when no usage admitted before its end waits
//! to be written, and usage of a closed period that is written late adjusts
//! the closed record and leaves an audit entry.
//!
//! In process, on the real embedded store, with the real pipelines; the
//! node is played by a host whose write-behind says whether usage is owed.
#![allow(clippy::unwrap_used)]

mod common;
use common::eventually;
use ringlimit_actors::keys::{KeyRecord, SecretHash};
use ringlimit_actors::pipeline::{
    BillingConfig, BillingFeed, Host, HostError, NoWebhooks, Period, PipelineConfig, Pipelines,
};
use ringlimit_actors::storage::{Range, Store, UsageRow};
use ringlimit_actors::writebehind::UsageSink;
use ringlimit_node::store::embedded::EmbeddedStore;
use ringlimit_protocol::admin::Granularity;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const MINUTE: u64 = 60_000;

struct OwingHost {
    key: Arc<KeyRecord>,
    owes_usage: AtomicBool,
}

#[async_trait::async_trait]
impl Host for OwingHost {
    fn key(&self, key_id: &str) -> Option<Arc<KeyRecord>> {
        (key_id == self.key.key_id).then(|| Arc::clone(&self.key))
    }
    fn keys(&self) -> Vec<Arc<KeyRecord>> {
        vec![Arc::clone(&self.key)]
    }
    async fn suspend(&self, key_id: &str, _: u64, _: &str) -> Result<(), HostError> {
        Err(HostError::NotFound(key_id.into()))
    }
    fn writebehind_pending(&self) -> usize {
        usize::from(self.owes_usage.load(Ordering::Relaxed))
    }
    fn unwritten_usage_before(&self, _: Granularity, _: u64) -> bool {
        self.owes_usage.load(Ordering::Relaxed)
    }
}

fn row(key_id: &str, writer: &str, start: u64, units: u64) -> UsageRow {
    UsageRow {
        key_id: key_id.into(),
        granularity: Granularity::Minute,
        bucket_start_ms: start,
        writer: writer.into(),
        units,
    }
}

fn now_ms() -> u64 {
    ringlimit_actors::clock::wall_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_period_waits_for_unwritten_usage_and_late_usage_adjusts_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let key = Arc::new(KeyRecord::active("k1", "o", "free", SecretHash::of("s"), 0));
    let host = Arc::new(OwingHost {
        key: Arc::clone(&key),
        owes_usage: AtomicBool::new(true),
    });
    let feed = BillingFeed::new();
    let cfg = PipelineConfig {
        node: "n1".into(),
        tick: Duration::from_millis(20),
        billing: BillingConfig {
            period: Period::Fixed(MINUTE),
            close_delay: Duration::ZERO,
            ..BillingConfig::default()
        },
        ..PipelineConfig::default()
    };
    let _p = Pipelines::start(
        cfg,
        Arc::clone(&store),
        Arc::new(NoWebhooks),
        [3; 16],
        host.clone(),
        Arc::clone(&feed),
    )
    .await
    .unwrap();
    // The period that ended before this minute: 7 units stored for it.
    let now = now_ms();
    let period = now - now % MINUTE - MINUTE;
    store
        .write_usage(&[row("k1", "w1", period, 7)])
        .await
        .unwrap();

    // While usage admitted before its end is owed, the period stays open.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        store.get_billing("k1", period).await.unwrap(),
        None,
        "no record while usage of the period is unwritten"
    );

    // Once it is written, the period closes with every unit.
    host.owes_usage.store(false, Ordering::Relaxed);
    assert!(
        eventually(10, async || store
            .get_billing("k1", period)
            .await
            .unwrap()
            .is_some_and(|r| r.units == 7))
        .await,
        "the period closed with its 7 units"
    );

    // Usage of the closed period written late (another writer's 5 units):
    // the record is recomputed and the change is audited.
    let late = row("k1", "w2", period + 1, 5);
    let late = UsageRow {
        bucket_start_ms: period,
        ..late
    };
    store
        .write_usage(std::slice::from_ref(&late))
        .await
        .unwrap();
    feed.usage_written(&[late]);
    assert!(
        eventually(10, async || store
            .get_billing("k1", period)
            .await
            .unwrap()
            .is_some_and(|r| r.units == 12))
        .await,
        "the closed record now holds the late units"
    );
    // The audit entry is written by the pipeline's next round.
    let adjustments = async || -> Vec<ringlimit_protocol::pipeline::AuditEntry> {
        store
            .list_audit(Range {
                from_ms: 0,
                to_ms: u64::MAX,
                offset: 0,
                limit: 100,
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "billing.adjust")
            .collect()
    };
    assert!(
        eventually(10, async || !adjustments().await.is_empty()).await,
        "the adjustment was audited"
    );
    let adj = adjustments().await;
    let audit = &adj;
    assert_eq!(adj.len(), 1, "{audit:?}");
    assert_eq!(adj[0].target_id, format!("k1/{period}"));
    assert_eq!(adj[0].details["units_before"], 7);
    assert_eq!(adj[0].details["units_after"], 12);
}
