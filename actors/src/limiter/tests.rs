//! Unit tests of the registry's direct check path against passivation.

use super::*;
use crate::core::{Core, CoreConfig};
use crate::keys::{KeyRecord, SecretHash};
use crate::storage::SnapshotStore;
use ringlimit_protocol::{AlgorithmKind, LimitSpec};

/// Snapshots in memory (a fake for this unit test).
#[derive(Debug, Default)]
struct Mem(parking_lot::Mutex<std::collections::HashMap<String, Vec<u8>>>);

#[async_trait::async_trait]
impl SnapshotStore for Mem {
    async fn save_snapshots(
        &self,
        batch: &[(String, Vec<u8>)],
    ) -> Result<(), crate::storage::StoreError> {
        let mut m = self.0.lock();
        for (k, v) in batch {
            m.insert(k.clone(), v.clone());
        }
        Ok(())
    }
    async fn load_snapshot(
        &self,
        key_id: &str,
    ) -> Result<Option<Vec<u8>>, crate::storage::StoreError> {
        Ok(self.0.lock().get(key_id).cloned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_check_that_lost_the_race_to_passivation_goes_to_a_new_activation() {
    let key = KeyRecord {
        limits: Some(vec![LimitSpec {
            name: "l".into(),
            algorithm: AlgorithmKind::SlidingLog,
            limit: 5,
            window_ms: 3_600_000,
            burst: None,
        }]),
        ..KeyRecord::active("a", "o", "free", SecretHash::of("s"), 0)
    };
    let sink: Arc<dyn SnapshotStore> = Arc::new(Mem::default());
    let core = Core::start(CoreConfig {
        snapshot_sinks: vec![sink],
        ..CoreConfig::default().with_keys([key])
    })
    .await
    .expect("core");
    let l = &core.limiters;
    let now = SystemClock.now_us();
    assert!(
        l.check("a", 1, now)
            .await
            .expect("reached")
            .expect("checked")
            .allowed
    );
    // A direct check looked the cell up, then the actor passivated
    // before it took the lock.
    let stale = Arc::clone(&l.shared.entries.get("a").expect("active").cell);
    l.passivate("a");
    for _ in 0..1_000 {
        if !l.is_active("a") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!l.is_active("a"));
    // Its state is written and leaves the pending map, so a new
    // activation starts from the store, not from this cell.
    core.write_behind.drain(3).await.expect("flushed");
    assert!(core.write_behind.pending_cell("a").is_none());
    assert!(
        l.check_on(&stale, 1, now).is_none(),
        "a retired cell is never checked directly"
    );
    // Through a new activation the count goes on from the written state.
    let r = l
        .check("a", 1, now)
        .await
        .expect("reached")
        .expect("checked");
    assert_eq!(r.limits[0].remaining, 3);
}
