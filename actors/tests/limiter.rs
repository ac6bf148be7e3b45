//! KeyLimiter actors in process: passivation, re-activation, supervision,
//! and exact counts under concurrency while actors churn.
#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use parking_lot::Mutex;
use ringlimit_actors::core::{Core, CoreConfig};
use ringlimit_actors::keys::{KeyRecord, SecretHash};
use ringlimit_actors::limiter::{Clock, KeyLimiters, LimiterConfig, SystemClock};
use ringlimit_actors::storage::{SnapshotStore, StoreError};
use ringlimit_actors::writebehind::{WriteBehind, WriteBehindConfig};
use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// An in-memory snapshot sink (a fake for this unit-level test).
#[derive(Debug, Default)]
struct MemSnapshots {
    map: Mutex<HashMap<String, Vec<u8>>>,
}

#[async_trait]
impl SnapshotStore for MemSnapshots {
    async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let mut m = self.map.lock();
        for (k, v) in batch {
            m.insert(k.clone(), v.clone());
        }
        Ok(())
    }
    async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.lock().get(key_id).cloned())
    }
}

fn key(id: &str, limit: u64) -> KeyRecord {
    KeyRecord {
        limits: Some(vec![LimitSpec {
            name: "l".into(),
            algorithm: AlgorithmKind::SlidingLog,
            limit,
            window_ms: 3_600_000,
            burst: None,
        }]),
        ..KeyRecord::active(id, "o", "free", SecretHash::of("s"), 0)
    }
}

struct Fixture {
    limiters: KeyLimiters,
    wb: Arc<WriteBehind>,
    store: Arc<MemSnapshots>,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn fixture(
    keys: &[(&str, u64)],
    idle: Duration,
    max_active: usize,
    flush: Duration,
) -> Fixture {
    fixture_swept(keys, idle, max_active, flush, Duration::from_millis(5)).await
}

async fn fixture_swept(
    keys: &[(&str, u64)],
    idle: Duration,
    max_active: usize,
    flush: Duration,
    sweep: Duration,
) -> Fixture {
    let store = Arc::new(MemSnapshots::default());
    let sink: Arc<dyn SnapshotStore> = store.clone();
    let core = Core::start(CoreConfig {
        snapshot_sinks: vec![sink],
        write_behind: WriteBehindConfig {
            interval: flush,
            ..Default::default()
        },
        limiter: LimiterConfig {
            idle_timeout: idle,
            max_active,
            sweep_interval: sweep,
            writer: "t".into(),
        },
        ..CoreConfig::default().with_keys(keys.iter().map(|(id, l)| key(id, *l)))
    })
    .await
    .unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    core.write_behind.spawn(rx);
    Fixture {
        limiters: core.limiters,
        wb: core.write_behind,
        store,
        _stop: stop,
    }
}

async fn check(l: &KeyLimiters, id: &str) -> (bool, u64) {
    let r = l.check(id, 1, SystemClock.now_us()).await.unwrap().unwrap();
    (r.allowed, r.limits[0].remaining)
}

async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivation_by_cap_and_idle_keeps_counts() {
    let keys = [("a", 10), ("b", 10), ("c", 10), ("d", 10)];
    let f = fixture(
        &keys,
        Duration::from_millis(40),
        2,
        Duration::from_millis(10),
    )
    .await;
    for i in 0..4 {
        assert_eq!(check(&f.limiters, "a").await, (true, 9 - i));
    }
    // Touch three other keys: the cap of 2 passivates the least recently used, "a".
    for k in ["b", "c", "d"] {
        check(&f.limiters, k).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eventually(|| !f.limiters.is_active("a")).await;
    // Re-activation resumes the count (from the unwritten cell or the store).
    assert_eq!(check(&f.limiters, "a").await, (true, 5));
    // Idle passivation: everything goes after 40 ms unused, and is written.
    eventually(|| f.limiters.stats().active == 0).await;
    eventually(|| f.wb.pending_len() == 0).await;
    assert!(
        f.store.map.lock().contains_key("a"),
        "the passivated state was saved"
    );
    assert_eq!(
        check(&f.limiters, "a").await,
        (true, 4),
        "re-activation from the store resumes the count"
    );
    let s = f.limiters.stats();
    assert!(s.passivations >= 4, "{s:?}");
    assert!(s.activations >= 6, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restarts_a_failed_key_limiter_on_its_state() {
    let f = fixture(
        &[("a", 10)],
        Duration::from_secs(60),
        100,
        Duration::from_millis(10),
    )
    .await;
    check(&f.limiters, "a").await;
    check(&f.limiters, "a").await;
    let before = f.limiters.actor_id("a").unwrap();
    f.limiters.inject_failure("a");
    eventually(|| f.limiters.stats().restarts == 1).await;
    let after = f.limiters.actor_id("a").unwrap();
    assert_ne!(before, after, "a new actor serves the key");
    assert_eq!(
        check(&f.limiters, "a").await,
        (true, 7),
        "no count was lost in the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_hold_while_actors_churn() {
    // 20 keys of 50 each, a cap of 3 active actors and a 1 ms idle timeout:
    // actors are passivated and re-activated constantly under 4 000 concurrent checks.
    let ids: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let keys: Vec<(&str, u64)> = ids.iter().map(|k| (k.as_str(), 50)).collect();
    let f = fixture(&keys, Duration::from_millis(1), 3, Duration::from_millis(3)).await;
    let tasks: Vec<_> = (0..4_000)
        .map(|i| {
            let l = f.limiters.clone();
            let id = ids[(i * 7) % ids.len()].clone();
            tokio::spawn(async move {
                (
                    id.clone(),
                    l.check(&id, 1, SystemClock.now_us())
                        .await
                        .unwrap()
                        .unwrap()
                        .allowed,
                )
            })
        })
        .collect();
    let mut allowed: HashMap<String, u32> = HashMap::new();
    for t in tasks {
        let (id, ok) = t.await.unwrap();
        if ok {
            *allowed.entry(id).or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(allowed.get(id).copied().unwrap_or(0), 50, "key {id}");
    }
    assert!(
        f.limiters.stats().passivations > 0,
        "the test did exercise passivation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_loaded_key_is_checked_on_its_cell_without_a_message() {
    let f = fixture(
        &[("a", 10)],
        Duration::from_secs(60),
        100,
        Duration::from_millis(10),
    )
    .await;
    let now = SystemClock.now_us();
    assert!(
        f.limiters.check_direct("a", 1, now).is_none(),
        "an inactive key goes to its actor (activation)"
    );
    assert_eq!(check(&f.limiters, "a").await, (true, 9));
    // The actor has loaded the key: the next checks take the direct path,
    // and count on the same state as the actor's.
    let r = f
        .limiters
        .check_direct("a", 1, now)
        .expect("direct")
        .unwrap();
    assert_eq!((r.allowed, r.limits[0].remaining), (true, 8));
    assert_eq!(check(&f.limiters, "a").await, (true, 7));
    // Passivation retires the cell: no direct check after it.
    f.limiters.passivate("a");
    eventually(|| !f.limiters.is_active("a")).await;
    assert!(f.limiters.check_direct("a", 1, now).is_none());
    // A new activation takes the cell over, count intact, and checks it directly.
    assert_eq!(check(&f.limiters, "a").await, (true, 6));
    let r = f
        .limiters
        .check_direct("a", 1, now)
        .expect("direct again")
        .unwrap();
    assert_eq!(r.limits[0].remaining, 5);
}

/// Passivations racing checks: the sweeper runs every millisecond with a
/// 1 ms idle timeout and a cap of 2 actors over 8 keys of limit 40, while
/// 30 rounds of `per_round` concurrent calls of `check` hit the keys (each
/// call returns the units it saw admitted and whether it took a direct
/// path). Asserts that every key admitted exactly its limit and that
/// passivation did happen; returns how many calls took a direct path.
async fn race_passivations<F, Fut>(prefix: &str, per_round: usize, check: F) -> u32
where
    F: Fn(KeyLimiters, String) -> Fut,
    Fut: std::future::Future<Output = (u32, bool)> + Send + 'static,
{
    let ids: Vec<String> = (0..8).map(|i| format!("{prefix}{i}")).collect();
    let keys: Vec<(&str, u64)> = ids.iter().map(|k| (k.as_str(), 40)).collect();
    let f = fixture_swept(
        &keys,
        Duration::from_millis(1),
        2,
        Duration::from_millis(1),
        Duration::from_millis(1),
    )
    .await;
    let mut allowed: HashMap<String, u32> = HashMap::new();
    let mut direct = 0u32;
    for round in 0..30 {
        let tasks: Vec<_> = (0..per_round)
            .map(|i| {
                let id = ids[(i + round) % ids.len()].clone();
                let call = check(f.limiters.clone(), id.clone());
                tokio::spawn(async move { (id, call.await) })
            })
            .collect();
        for t in tasks {
            let (id, (ok, was_direct)) = t.await.unwrap();
            direct += u32::from(was_direct);
            *allowed.entry(id).or_default() += ok;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for id in &ids {
        assert_eq!(allowed.get(id).copied().unwrap_or(0), 40, "key {id}");
    }
    let s = f.limiters.stats();
    assert!(
        s.passivations > 10,
        "the test did exercise passivation: {s:?}"
    );
    direct
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivations_racing_direct_checks_lose_no_count() {
    // Bursts of concurrent checks: most take the direct path on an active
    // cell, and passivations and re-activations land between and during
    // them. Every key must admit exactly its limit.
    let direct = race_passivations("r", 64, |l, id| async move {
        let now = SystemClock.now_us();
        match l.check_direct(&id, 1, now) {
            Some(r) => (u32::from(r.unwrap().allowed), true),
            None => (
                u32::from(l.check(&id, 1, now).await.unwrap().unwrap().allowed),
                false,
            ),
        }
    })
    .await;
    assert!(
        direct > 100,
        "the test did exercise the direct path: {direct}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_checks_of_one_key_are_decided_in_order_under_one_lock() {
    let f = fixture(
        &[("m", 10)],
        Duration::from_secs(60),
        100,
        Duration::from_secs(3600),
    )
    .await;
    let now = SystemClock.now_us();
    let mut out = Vec::new();
    assert!(
        !f.limiters.check_direct_many("m", [1, 1], now, &mut out),
        "an inactive key goes to its actor"
    );
    assert!(out.is_empty(), "nothing pushed when the key is not active");
    assert_eq!(check(&f.limiters, "m").await, (true, 9));
    // Costs 2, 3, 5, 1, 1 against 9 left: 2 and 3 fit (4 left), 5 does
    // not and spends nothing, then 1 and 1 fit.
    assert!(
        f.limiters
            .check_direct_many("m", [2, 3, 5, 1, 1], now, &mut out)
    );
    let got: Vec<(bool, u64)> = out
        .iter()
        .map(|r| {
            let r = r.as_ref().unwrap();
            (r.allowed, r.limits[0].remaining)
        })
        .collect();
    assert_eq!(
        got,
        vec![(true, 7), (true, 4), (false, 4), (true, 3), (true, 2)]
    );
    // A cost above the capacity is that check's error, not the others'.
    out.clear();
    assert!(f.limiters.check_direct_many("m", [11, 1], now, &mut out));
    assert!(out[0].is_err());
    assert_eq!(out[1].as_ref().unwrap().limits[0].remaining, 1);
    // The one flush after them writes the state every check left.
    f.wb.flush_once().await.unwrap();
    f.limiters.passivate("m");
    eventually(|| !f.limiters.is_active("m")).await;
    assert_eq!(check(&f.limiters, "m").await, (true, 0));
    assert_eq!(check(&f.limiters, "m").await, (false, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivations_racing_many_direct_checks_lose_no_count() {
    // As the test above, with checks in groups of five on one key, the
    // way the batch route decides them.
    let direct = race_passivations("g", 16, |l, id| async move {
        let now = SystemClock.now_us();
        let mut out = Vec::new();
        if l.check_direct_many(&id, [1; 5], now, &mut out) {
            let ok = out.iter().filter(|r| r.as_ref().unwrap().allowed).count();
            return (ok as u32, true);
        }
        let mut ok = 0u32;
        for _ in 0..5 {
            ok += u32::from(l.check(&id, 1, now).await.unwrap().unwrap().allowed);
        }
        (ok, false)
    })
    .await;
    assert!(
        direct > 20,
        "the test did exercise the grouped path: {direct}"
    );
}

/// A snapshot store that can be taken down: loads and saves fail meanwhile.
#[derive(Debug, Default)]
struct FlakySnapshots {
    inner: MemSnapshots,
    down: std::sync::atomic::AtomicBool,
    saves_while_down: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl SnapshotStore for FlakySnapshots {
    async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            self.saves_while_down
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(StoreError::Unavailable("down".into()));
        }
        self.inner.save_snapshots(batch).await
    }
    async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        self.inner.load_snapshot(key_id).await
    }
}

/// A key activated while its stored state cannot be read is not started
/// fresh: its checks answer "state unavailable" and nothing of it is
/// written; once the store is back the stored count holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_load_never_resets_the_key() {
    use ringlimit_actors::limitset::CheckError;
    use std::sync::atomic::Ordering;
    let store = Arc::new(FlakySnapshots::default());
    let sink: Arc<dyn SnapshotStore> = store.clone();
    let core = Core::start(CoreConfig {
        snapshot_sinks: vec![sink],
        write_behind: WriteBehindConfig {
            interval: Duration::from_millis(5),
            ..Default::default()
        },
        limiter: LimiterConfig {
            idle_timeout: Duration::from_secs(60),
            max_active: 100,
            sweep_interval: Duration::from_millis(5),
            writer: "t".into(),
        },
        ..CoreConfig::default().with_keys([key("k", 5)])
    })
    .await
    .unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    core.write_behind.spawn(rx);
    let l = &core.limiters;
    // Spend the whole limit, write it, and passivate the key.
    for _ in 0..5 {
        assert!(check(l, "k").await.0);
    }
    assert!(!check(l, "k").await.0);
    core.write_behind.drain(3).await.unwrap();
    l.passivate("k");
    eventually(|| !l.is_active("k")).await;

    // The store goes down; the key is activated again.
    store.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let r = l.check("k", 1, SystemClock.now_us()).await.unwrap();
        assert_eq!(r, Err(CheckError::StateUnavailable), "never a fresh quota");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        store.saves_while_down.load(Ordering::SeqCst),
        0,
        "a state that was not read is not written"
    );
    assert_eq!(core.write_behind.pending_len(), 0);

    // The store is back: the stored state loads, the limit is still spent.
    store.down.store(false, Ordering::SeqCst);
    let (allowed, remaining) = check(l, "k").await;
    assert!(!allowed, "the spent limit still holds after the outage");
    assert_eq!(remaining, 0);
}

/// The sweeper reads the registry a few hundred entries at a time: every
/// chunk is reached, for the cap and for idleness alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_reaches_every_entry_of_a_registry_larger_than_one_chunk() {
    let ids: Vec<String> = (0..1_300).map(|i| format!("k{i:05}")).collect();
    let keys: Vec<(&str, u64)> = ids.iter().map(|i| (i.as_str(), 10)).collect();
    // Over the cap: at least the 300 above it leave, whichever chunk they are in.
    let f = fixture_swept(
        &keys,
        Duration::from_secs(60),
        1_000,
        Duration::from_millis(10),
        Duration::from_millis(2),
    )
    .await;
    for id in &ids {
        check(&f.limiters, id).await;
    }
    eventually(|| f.limiters.stats().active <= 1_000).await;
    assert!(
        f.limiters.stats().passivations >= 300,
        "{:?}",
        f.limiters.stats()
    );
    // Idle: every one of them leaves, and each keeps its count.
    let f = fixture_swept(
        &keys,
        Duration::from_millis(50),
        10_000,
        Duration::from_millis(10),
        Duration::from_millis(2),
    )
    .await;
    for id in &ids {
        check(&f.limiters, id).await;
    }
    eventually(|| f.limiters.stats().active == 0).await;
    eventually(|| f.wb.pending_len() == 0).await;
    assert_eq!(check(&f.limiters, &ids[1_299]).await, (true, 8));
}
