//! The storage conformance suite: the same scenarios, run over every backend.
//!
//! Each scenario is a `pub async fn name(store: &dyn Store)` that panics on
//! failure. It is handed a **fresh, empty and isolated** store: nothing else
//! reads or writes it while the scenario runs (an embedded store in its own
//! temporary directory, a ScyllaDB adapter on its own keyspace or key prefix).
//!
//! A backend runs the whole suite with [`storage_conformance_suite!`](crate::storage_conformance_suite),
//! which generates one `#[test]` per scenario (each on its own Tokio runtime):
//!
//! ```ignore
//! ringlimit_actors::storage_conformance_suite!(|| async {
//!     let dir = tempfile::tempdir().expect("tempdir");
//!     let store = EmbeddedStore::open(dir.path()).expect("open");
//!     // The directory lives as long as the store, and is removed after it.
//!     Fixture::with_guard(store, dir)
//! });
//! ```
//!
//! The expression is called once per test and must produce a future whose
//! output is either a store (anything implementing [`Store`]) or a
//! [`Fixture`] (a store plus a guard dropped after it: a temporary directory,
//! a handle that drops a keyspace, …).
//!
//! The scenario list lives in one place (`__storage_conformance_scenarios!`);
//! both the macro and [`SCENARIOS`] are generated from it, and a unit test
//! checks that every `pub async fn` of this module is listed, so a new
//! scenario cannot be forgotten on some backend.

use crate::keys::{KeyRecord, SecretHash};
use crate::storage::{KeyFilter, Store, TierRecord, UsageRow};
use ringlimit_protocol::admin::{Granularity, KeyStatus, Metadata, UsageBucket};
use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use std::any::Any;

/// Re-exported so that generated tests do not need `tokio` in the using crate.
#[doc(hidden)]
pub use tokio;

/// Scenario names, in the order the suite lists them.
pub const SCENARIOS: &[&str] = crate::__storage_conformance_scenarios!(@names);

/// A store under test plus whatever must outlive it (dropped after the store).
pub struct Fixture {
    // Field order matters: the store is dropped (closed) before the guard
    // (e.g. before its temporary directory is removed).
    store: Box<dyn Store>,
    _guard: Option<Box<dyn Any + Send>>,
}

impl Fixture {
    /// A store that needs nothing else kept alive.
    pub fn new<S: Store>(store: S) -> Self {
        Fixture {
            store: Box::new(store),
            _guard: None,
        }
    }

    /// A store and a guard (temporary directory, keyspace handle, …) dropped after it.
    pub fn with_guard<S: Store, G: Send + 'static>(store: S, guard: G) -> Self {
        Fixture {
            store: Box::new(store),
            _guard: Some(Box::new(guard)),
        }
    }

    /// The store under test.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// What the suite's factory expression may produce: a [`Fixture`] or a bare store.
pub trait IntoFixture {
    fn into_fixture(self) -> Fixture;
}

impl IntoFixture for Fixture {
    fn into_fixture(self) -> Fixture {
        self
    }
}

impl<S: Store> IntoFixture for S {
    fn into_fixture(self) -> Fixture {
        Fixture::new(self)
    }
}

/// The runtime each generated test runs on (multi-threaded, so backends may
/// use `spawn_blocking` and background tasks freely).
#[doc(hidden)]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the conformance test runtime")
}

/// The single list of scenarios. Calls back into `storage_conformance_suite!`
/// with the list appended to the given arguments.
#[doc(hidden)]
#[macro_export]
macro_rules! __storage_conformance_scenarios {
    ($($args:tt)*) => {
        $crate::storage_conformance_suite! { $($args)* ;
            key_round_trip,
            key_overwrite,
            get_missing_key,
            key_by_hash_current_and_previous,
            key_by_hash_unknown,
            key_by_hash_stale_removed_after_rotation,
            list_keys_order_and_paging,
            list_keys_filters,
            load_all_keys,
            tiers_put_list_overwrite,
            snapshots_save_load_delete,
            snapshots_overwrite,
            usage_idempotent_absolute_writes,
            usage_writers_summed,
            usage_range_boundaries,
            usage_granularities_separate,
            usage_other_keys_empty,
            usage_zero_buckets_left_out,
        }
    };
}

/// Generates one `#[test]` per conformance scenario, each on a fresh store
/// made by `$make` (a closure or function taking no arguments and returning a
/// future of a [`Store`](crate::storage::Store) or a
/// [`Fixture`](crate::storage::conformance::Fixture)).
///
/// Invoke it once per backend, at the top level of an integration test file
/// (or inside a module of its own): the generated test functions are named
/// after the scenarios.
#[macro_export]
macro_rules! storage_conformance_suite {
    (@names ; $($name:ident),* $(,)?) => {
        &[$(::core::stringify!($name)),*]
    };
    (@tests ($make:expr) ; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::storage::conformance::runtime().block_on(async {
                    let fixture = $crate::storage::conformance::IntoFixture::into_fixture(($make)().await);
                    $crate::storage::conformance::$name(fixture.store()).await;
                    ::core::mem::drop(fixture);
                });
            }
        )*
    };
    ($make:expr $(,)?) => {
        $crate::__storage_conformance_scenarios! { @tests ($make) }
    };
}

// ---------------------------------------------------------------- helpers

fn limit(
    name: &str,
    algorithm: AlgorithmKind,
    limit: u64,
    window_ms: u64,
    burst: Option<u64>,
) -> LimitSpec {
    LimitSpec {
        name: name.to_owned(),
        algorithm,
        limit,
        window_ms,
        burst,
    }
}

/// A plain active key with secret `secret-{id}`.
fn key(id: &str, owner: &str, tier: &str, status: KeyStatus) -> KeyRecord {
    KeyRecord {
        key_id: id.to_owned(),
        owner: owner.to_owned(),
        tier: tier.to_owned(),
        status,
        limits: None,
        metadata: Metadata::new(),
        secret_hash: SecretHash::of(&format!("secret-{id}")),
        previous_hash: None,
        previous_expires_at_ms: None,
        created_at_ms: 1_000,
        updated_at_ms: 1_000,
        suspended_until_ms: None,
        suspended_reason: None,
    }
}

/// A key with every optional field set.
fn full_key(id: &str) -> KeyRecord {
    let mut metadata = Metadata::new();
    metadata.insert("team".into(), serde_json::json!("payments"));
    metadata.insert(
        "nested".into(),
        serde_json::json!({"a": [1, 2, 3], "b": {"c": null, "d": 1.5, "e": true}}),
    );
    metadata.insert("unicode".into(), serde_json::json!("ключ 🔑 \"quoted\""));
    KeyRecord {
        key_id: id.to_owned(),
        owner: "acme".into(),
        tier: "pro".into(),
        status: KeyStatus::Suspended,
        limits: Some(vec![
            limit(
                "per-second",
                AlgorithmKind::TokenBucket,
                10,
                1_000,
                Some(20),
            ),
            limit(
                "per-day",
                AlgorithmKind::FixedWindow,
                100_000,
                86_400_000,
                None,
            ),
        ]),
        metadata,
        secret_hash: SecretHash::of("new-secret"),
        previous_hash: Some(SecretHash::of("old-secret")),
        previous_expires_at_ms: Some(1_700_000_060_000),
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_030_000,
        suspended_until_ms: Some(1_700_003_600_000),
        suspended_reason: Some("abuse report #42".into()),
    }
}

fn row(
    key_id: &str,
    granularity: Granularity,
    bucket_start_ms: u64,
    writer: &str,
    units: u64,
) -> UsageRow {
    UsageRow {
        key_id: key_id.to_owned(),
        granularity,
        bucket_start_ms,
        writer: writer.to_owned(),
        units,
    }
}

fn buckets(pairs: &[(u64, u64)]) -> Vec<UsageBucket> {
    pairs
        .iter()
        .map(|&(start_ms, units)| UsageBucket { start_ms, units })
        .collect()
}

fn ids(keys: &[KeyRecord]) -> Vec<String> {
    keys.iter().map(|k| k.key_id.clone()).collect()
}

async fn put_all(store: &dyn Store, keys: &[KeyRecord]) {
    for k in keys {
        store.put_key(k).await.expect("put_key");
    }
}

async fn history(
    store: &dyn Store,
    key_id: &str,
    g: Granularity,
    from: u64,
    to: u64,
) -> Vec<UsageBucket> {
    store
        .usage_history(key_id, g, from, to)
        .await
        .expect("usage_history")
}

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;
/// A minute-aligned instant (2023-11-14T22:13:00Z).
const T0: u64 = 1_699_999_980_000;

// ---------------------------------------------------------------- keys

/// Every field of a key, including metadata, previous hash and suspension, survives a round trip.
pub async fn key_round_trip(store: &dyn Store) {
    let k = full_key("k-full");
    store.put_key(&k).await.expect("put_key");
    let got = store.get_key("k-full").await.expect("get_key");
    assert_eq!(
        got.as_ref(),
        Some(&k),
        "stored key differs from the one put"
    );

    let plain = key("k-plain", "bob", "free", KeyStatus::Active);
    store.put_key(&plain).await.expect("put_key");
    assert_eq!(
        store.get_key("k-plain").await.expect("get_key"),
        Some(plain)
    );
    assert_eq!(
        store.get_key("k-full").await.expect("get_key"),
        Some(k),
        "another put changed the first key"
    );
}

/// Putting a key again replaces every field.
pub async fn key_overwrite(store: &dyn Store) {
    let k = full_key("k1");
    store.put_key(&k).await.expect("put_key");
    let mut k2 = key("k1", "other-owner", "free", KeyStatus::Revoked);
    k2.updated_at_ms = 9_999;
    store.put_key(&k2).await.expect("put_key again");
    assert_eq!(
        store.get_key("k1").await.expect("get_key"),
        Some(k2.clone()),
        "fields not replaced"
    );
    assert_eq!(
        store.load_all_keys().await.expect("load_all_keys"),
        vec![k2],
        "overwrite duplicated the key"
    );
}

/// An unknown key id is `None`, not an error.
pub async fn get_missing_key(store: &dyn Store) {
    assert_eq!(
        store.get_key("nope").await.expect("get_key on empty store"),
        None
    );
    store
        .put_key(&key("k1", "o", "free", KeyStatus::Active))
        .await
        .expect("put_key");
    assert_eq!(store.get_key("nope").await.expect("get_key"), None);
    assert_eq!(store.get_key("k").await.expect("get_key of a prefix"), None);
    assert_eq!(
        store.get_key("k10").await.expect("get_key of an extension"),
        None
    );
    assert_eq!(
        store.get_key("").await.expect("get_key of the empty id"),
        None
    );
}

/// Both the current and the previous secret hash lead to the key.
pub async fn key_by_hash_current_and_previous(store: &dyn Store) {
    let k = full_key("k-full");
    store.put_key(&k).await.expect("put_key");
    let other = key("k-other", "o", "free", KeyStatus::Active);
    store.put_key(&other).await.expect("put_key");

    assert_eq!(
        store
            .key_id_by_hash(&SecretHash::of("new-secret"))
            .await
            .expect("by hash")
            .as_deref(),
        Some("k-full")
    );
    assert_eq!(
        store
            .key_id_by_hash(&SecretHash::of("old-secret"))
            .await
            .expect("by hash")
            .as_deref(),
        Some("k-full")
    );
    assert_eq!(
        store
            .key_id_by_hash(&other.secret_hash)
            .await
            .expect("by hash")
            .as_deref(),
        Some("k-other")
    );
}

/// A hash no key has is `None`.
pub async fn key_by_hash_unknown(store: &dyn Store) {
    assert_eq!(
        store
            .key_id_by_hash(&SecretHash::of("x"))
            .await
            .expect("by hash on empty store"),
        None
    );
    store
        .put_key(&key("k1", "o", "free", KeyStatus::Active))
        .await
        .expect("put_key");
    assert_eq!(
        store
            .key_id_by_hash(&SecretHash::of("x"))
            .await
            .expect("by hash"),
        None
    );
    assert_eq!(
        store
            .key_id_by_hash(&SecretHash([0; 32]))
            .await
            .expect("by hash"),
        None
    );
}

/// Rotation: new hash current, old hash previous; once the previous hash is
/// dropped from the record it no longer finds the key.
pub async fn key_by_hash_stale_removed_after_rotation(store: &dyn Store) {
    let (h1, h2, h3) = (
        SecretHash::of("s1"),
        SecretHash::of("s2"),
        SecretHash::of("s3"),
    );
    let by = |h: SecretHash| async move { store.key_id_by_hash(&h).await.expect("key_id_by_hash") };
    let some = || Some("k1".to_owned());

    let mut k = key("k1", "o", "free", KeyStatus::Active);
    k.secret_hash = h1;
    store.put_key(&k).await.expect("put_key");
    assert_eq!(by(h1).await, some());
    assert_eq!(by(h2).await, None);

    // Rotate: s2 current, s1 still valid during the grace period.
    k.secret_hash = h2;
    k.previous_hash = Some(h1);
    k.previous_expires_at_ms = Some(5_000);
    store.put_key(&k).await.expect("put_key (rotate)");
    assert_eq!(by(h1).await, some(), "previous hash not indexed");
    assert_eq!(by(h2).await, some(), "new hash not indexed");

    // Grace period over: the previous hash is cleared.
    k.previous_hash = None;
    k.previous_expires_at_ms = None;
    store.put_key(&k).await.expect("put_key (clear previous)");
    assert_eq!(
        by(h1).await,
        None,
        "stale previous hash still finds the key"
    );
    assert_eq!(by(h2).await, some());

    // Rotate twice in a row: s3 current, s2 previous.
    k.secret_hash = h3;
    k.previous_hash = Some(h2);
    store.put_key(&k).await.expect("put_key (rotate again)");
    assert_eq!(by(h1).await, None);
    assert_eq!(by(h2).await, some());
    assert_eq!(by(h3).await, some());

    // Rotate with no grace period: s1 again current (reused), nothing previous.
    k.secret_hash = h1;
    k.previous_hash = None;
    store
        .put_key(&k)
        .await
        .expect("put_key (rotate without grace)");
    assert_eq!(by(h1).await, some());
    assert_eq!(
        by(h2).await,
        None,
        "stale previous hash still finds the key"
    );
    assert_eq!(by(h3).await, None, "stale current hash still finds the key");
    assert_eq!(store.get_key("k1").await.expect("get_key"), Some(k));
}

/// Keys come back in key_id order, strictly after the cursor, at most `limit` per page.
pub async fn list_keys_order_and_paging(store: &dyn Store) {
    // Put in a scrambled order.
    let mut order: Vec<usize> = (0..25).collect();
    order.sort_by_key(|i| (i * 7) % 25);
    for i in order {
        store
            .put_key(&key(&format!("key-{i:02}"), "o", "free", KeyStatus::Active))
            .await
            .expect("put_key");
    }
    let all: Vec<String> = (0..25).map(|i| format!("key-{i:02}")).collect();
    let none = KeyFilter::default();

    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_keys(&none, cursor.as_deref(), 10)
            .await
            .expect("list_keys");
        assert!(
            page.len() <= 10,
            "page larger than the limit: {}",
            page.len()
        );
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|k| k.key_id.clone());
        pages.push(ids(&page));
        assert!(pages.len() <= 3, "more pages than expected: {pages:?}");
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5],
        "page sizes"
    );
    assert_eq!(
        pages.concat(),
        all,
        "paging must visit every key once, in key_id order"
    );

    // Whole records come back.
    let first = store.list_keys(&none, None, 1).await.expect("list_keys");
    assert_eq!(first, vec![key("key-00", "o", "free", KeyStatus::Active)]);

    // The cursor is exclusive, and need not be an existing key.
    let page = store
        .list_keys(&none, Some("key-09"), 3)
        .await
        .expect("list_keys");
    assert_eq!(ids(&page), ["key-10", "key-11", "key-12"]);
    let page = store
        .list_keys(&none, Some("key-09x"), 2)
        .await
        .expect("list_keys");
    assert_eq!(ids(&page), ["key-10", "key-11"]);
    let page = store
        .list_keys(&none, Some("a"), 2)
        .await
        .expect("list_keys");
    assert_eq!(ids(&page), ["key-00", "key-01"]);
    let page = store
        .list_keys(&none, Some("key-24"), 10)
        .await
        .expect("list_keys");
    assert!(
        page.is_empty(),
        "nothing after the last key: {:?}",
        ids(&page)
    );
    let page = store
        .list_keys(&none, Some("zzz"), 10)
        .await
        .expect("list_keys");
    assert!(page.is_empty());
    let page = store.list_keys(&none, None, 100).await.expect("list_keys");
    assert_eq!(ids(&page), all);
}

/// Filters by owner, tier and status, alone and combined, across pages.
pub async fn list_keys_filters(store: &dyn Store) {
    let owners = ["alice", "bob", "carol"];
    let tiers = ["free", "pro"];
    let statuses = [KeyStatus::Active, KeyStatus::Suspended, KeyStatus::Revoked];
    let mut keys = Vec::new();
    for i in 0..30 {
        keys.push(key(
            &format!("k{i:02}"),
            owners[i % 3],
            tiers[i % 2],
            statuses[i % 5 % 3],
        ));
    }
    put_all(store, &keys).await;

    let check = |filter: KeyFilter| {
        let keys = &keys;
        async move {
            let want: Vec<String> = keys
                .iter()
                .filter(|k| filter.matches(k))
                .map(|k| k.key_id.clone())
                .collect();
            let got = store
                .list_keys(&filter, None, 1_000)
                .await
                .expect("list_keys");
            assert!(
                got.iter().all(|k| filter.matches(k)),
                "{filter:?} let through {:?}",
                ids(&got)
            );
            assert_eq!(ids(&got), want, "list_keys({filter:?})");
            // Paging by 2 (scanning past non-matching keys) gives the same keys.
            let mut paged = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..=want.len() {
                let page = store
                    .list_keys(&filter, cursor.as_deref(), 2)
                    .await
                    .expect("list_keys");
                assert!(page.len() <= 2);
                if page.is_empty() {
                    break;
                }
                if paged.len() + 2 <= want.len() {
                    assert_eq!(
                        page.len(),
                        2,
                        "a page that is not the last one must be full ({filter:?})"
                    );
                }
                cursor = page.last().map(|k| k.key_id.clone());
                paged.extend(ids(&page));
            }
            assert_eq!(paged, want, "paged list_keys({filter:?})");
            want.len()
        }
    };

    let f = |owner: Option<&str>, tier: Option<&str>, status: Option<KeyStatus>| KeyFilter {
        owner: owner.map(str::to_owned),
        tier: tier.map(str::to_owned),
        status,
    };
    assert_eq!(check(f(None, None, None)).await, 30);
    assert_eq!(check(f(Some("alice"), None, None)).await, 10);
    assert_eq!(check(f(None, Some("pro"), None)).await, 15);
    assert!(check(f(None, None, Some(KeyStatus::Suspended))).await > 0);
    assert!(check(f(None, None, Some(KeyStatus::Revoked))).await > 0);
    assert_eq!(check(f(Some("bob"), Some("free"), None)).await, 5);
    assert!(check(f(Some("carol"), Some("pro"), Some(KeyStatus::Active))).await > 0);
    assert_eq!(check(f(Some("nobody"), None, None)).await, 0);
    assert_eq!(check(f(None, Some("enterprise"), None)).await, 0);
}

/// `load_all_keys` returns every key exactly once.
pub async fn load_all_keys(store: &dyn Store) {
    assert!(
        store
            .load_all_keys()
            .await
            .expect("load_all_keys on empty store")
            .is_empty()
    );
    let mut keys: Vec<KeyRecord> = (0..40)
        .map(|i| {
            key(
                &format!("k{i:03}"),
                "o",
                if i % 2 == 0 { "free" } else { "pro" },
                KeyStatus::Active,
            )
        })
        .collect();
    keys.push(full_key("k-full"));
    put_all(store, &keys).await;
    // Overwrites do not duplicate.
    put_all(store, &keys[..5]).await;

    let mut got = store.load_all_keys().await.expect("load_all_keys");
    got.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    assert_eq!(got, keys);
}

// ---------------------------------------------------------------- tiers

/// Tiers: put, list, overwrite by name.
pub async fn tiers_put_list_overwrite(store: &dyn Store) {
    let sorted = |mut v: Vec<TierRecord>| {
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    assert!(
        store
            .list_tiers()
            .await
            .expect("list_tiers on empty store")
            .is_empty()
    );

    let free = TierRecord {
        name: "free".into(),
        limits: vec![limit("rps", AlgorithmKind::SlidingWindow, 10, 1_000, None)],
    };
    let pro = TierRecord {
        name: "pro".into(),
        limits: vec![
            limit("rps", AlgorithmKind::TokenBucket, 100, 1_000, Some(200)),
            limit(
                "daily",
                AlgorithmKind::FixedWindow,
                1_000_000,
                86_400_000,
                None,
            ),
        ],
    };
    let empty = TierRecord {
        name: "internal".into(),
        limits: vec![],
    };
    for t in [&free, &pro, &empty] {
        store.put_tier(t).await.expect("put_tier");
    }
    assert_eq!(
        sorted(store.list_tiers().await.expect("list_tiers")),
        vec![free.clone(), empty.clone(), pro.clone()]
    );

    let free2 = TierRecord {
        name: "free".into(),
        limits: vec![limit("rpm", AlgorithmKind::Gcra, 60, 60_000, Some(5))],
    };
    store.put_tier(&free2).await.expect("put_tier (overwrite)");
    assert_eq!(
        sorted(store.list_tiers().await.expect("list_tiers")),
        vec![free2, empty, pro],
        "overwrite by name"
    );
}

// ---------------------------------------------------------------- snapshots

/// A batch is saved, each snapshot loads back, deletes are per key.
pub async fn snapshots_save_load_delete(store: &dyn Store) {
    assert_eq!(
        store
            .load_snapshot("k1")
            .await
            .expect("load_snapshot on empty store"),
        None
    );
    store
        .save_snapshots(&[])
        .await
        .expect("save an empty batch");

    let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let batch: Vec<(String, Vec<u8>)> = vec![
        ("k1".into(), vec![1, 2, 3]),
        ("k2".into(), vec![0, 255, 0, 255]),
        ("k3".into(), big.clone()),
    ];
    store.save_snapshots(&batch).await.expect("save_snapshots");
    for (id, bytes) in &batch {
        assert_eq!(
            store
                .load_snapshot(id)
                .await
                .expect("load_snapshot")
                .as_ref(),
            Some(bytes),
            "snapshot of {id}"
        );
    }
    assert_eq!(store.load_snapshot("k").await.expect("load_snapshot"), None);
    assert_eq!(
        store.load_snapshot("k4").await.expect("load_snapshot"),
        None
    );

    store.delete_snapshot("k2").await.expect("delete_snapshot");
    assert_eq!(
        store.load_snapshot("k2").await.expect("load_snapshot"),
        None,
        "deleted snapshot still there"
    );
    assert_eq!(
        store.load_snapshot("k1").await.expect("load_snapshot"),
        Some(vec![1, 2, 3])
    );
    assert_eq!(
        store.load_snapshot("k3").await.expect("load_snapshot"),
        Some(big)
    );
    // Deleting what is not there is not an error.
    store
        .delete_snapshot("k2")
        .await
        .expect("delete_snapshot twice");
    store
        .delete_snapshot("never")
        .await
        .expect("delete_snapshot of an unknown key");
}

/// A later save replaces the snapshot; untouched keys keep theirs.
pub async fn snapshots_overwrite(store: &dyn Store) {
    store
        .save_snapshots(&[("k1".into(), vec![1; 100]), ("k2".into(), vec![2; 10])])
        .await
        .expect("save_snapshots");
    store
        .save_snapshots(&[("k1".into(), vec![9, 9])])
        .await
        .expect("save_snapshots (overwrite)");
    assert_eq!(
        store.load_snapshot("k1").await.expect("load_snapshot"),
        Some(vec![9, 9]),
        "shorter snapshot must replace"
    );
    assert_eq!(
        store.load_snapshot("k2").await.expect("load_snapshot"),
        Some(vec![2; 10])
    );
    // Save after delete.
    store.delete_snapshot("k2").await.expect("delete_snapshot");
    store
        .save_snapshots(&[("k2".into(), vec![3])])
        .await
        .expect("save_snapshots");
    assert_eq!(
        store.load_snapshot("k2").await.expect("load_snapshot"),
        Some(vec![3])
    );
}

// ---------------------------------------------------------------- usage

/// Values are absolute: the same row twice counts once, a later value replaces an earlier one.
pub async fn usage_idempotent_absolute_writes(store: &dyn Store) {
    let m = Granularity::Minute;
    let r = row("k1", m, T0, "node-a@1", 5);
    store
        .write_usage(std::slice::from_ref(&r))
        .await
        .expect("write_usage");
    store
        .write_usage(std::slice::from_ref(&r))
        .await
        .expect("write_usage (retry)");
    store
        .write_usage(&[r.clone(), r.clone()])
        .await
        .expect("write_usage (duplicated in one batch)");
    assert_eq!(
        history(store, "k1", m, T0, T0 + MIN).await,
        buckets(&[(T0, 5)]),
        "same row must count once"
    );

    // The writer's counter grew: the new absolute value replaces the old one.
    store
        .write_usage(&[row("k1", m, T0, "node-a@1", 8)])
        .await
        .expect("write_usage");
    assert_eq!(
        history(store, "k1", m, T0, T0 + MIN).await,
        buckets(&[(T0, 8)]),
        "absolute value must replace"
    );
    store
        .write_usage(&[])
        .await
        .expect("write_usage of an empty batch");
    assert_eq!(
        history(store, "k1", m, T0, T0 + MIN).await,
        buckets(&[(T0, 8)])
    );
}

/// Rows of different writers for the same bucket are summed.
pub async fn usage_writers_summed(store: &dyn Store) {
    let m = Granularity::Minute;
    store
        .write_usage(&[
            row("k1", m, T0, "node-a@1", 5),
            row("k1", m, T0, "node-b@7", 7),
            row("k1", m, T0 + MIN, "node-a@1", 1),
        ])
        .await
        .expect("write_usage");
    // A restarted node is a new writer: its rows add to the old boot's.
    store
        .write_usage(&[row("k1", m, T0, "node-a@2", 100)])
        .await
        .expect("write_usage");
    // Rewriting one writer's value changes only its share.
    store
        .write_usage(&[row("k1", m, T0, "node-b@7", 9)])
        .await
        .expect("write_usage");
    assert_eq!(
        history(store, "k1", m, T0, T0 + 2 * MIN).await,
        buckets(&[(T0, 114), (T0 + MIN, 1)])
    );
}

/// `[from, to)`: a bucket starting at `from` is in, one starting at `to` is out; time order.
pub async fn usage_range_boundaries(store: &dyn Store) {
    let m = Granularity::Minute;
    // Written out of order, over two batches.
    let rows: Vec<UsageRow> = [5u64, 0, 3, 1, 4, 2]
        .iter()
        .map(|&i| row("k1", m, T0 + i * MIN, "w", 10 + i))
        .collect();
    store.write_usage(&rows[..3]).await.expect("write_usage");
    store.write_usage(&rows[3..]).await.expect("write_usage");
    let all = buckets(&[
        (T0, 10),
        (T0 + MIN, 11),
        (T0 + 2 * MIN, 12),
        (T0 + 3 * MIN, 13),
        (T0 + 4 * MIN, 14),
        (T0 + 5 * MIN, 15),
    ]);

    assert_eq!(
        history(store, "k1", m, T0, T0 + 6 * MIN).await,
        all,
        "whole range, in time order"
    );
    assert_eq!(
        history(store, "k1", m, 0, u64::MAX).await,
        all,
        "unbounded range"
    );
    assert_eq!(
        history(store, "k1", m, T0 + MIN, T0 + 3 * MIN).await,
        all[1..3],
        "from inclusive, to exclusive"
    );
    assert_eq!(
        history(store, "k1", m, T0 + MIN - 1, T0 + 3 * MIN + 1).await,
        all[1..4],
        "bucket start is what counts"
    );
    assert_eq!(
        history(store, "k1", m, T0 + MIN + 1, T0 + 3 * MIN).await,
        all[2..3],
        "bucket starting before from is out"
    );
    assert_eq!(
        history(store, "k1", m, T0 + 5 * MIN, T0 + 6 * MIN).await,
        all[5..],
        "last bucket alone"
    );
    assert!(
        history(store, "k1", m, T0 + 2 * MIN, T0 + 2 * MIN)
            .await
            .is_empty(),
        "empty range"
    );
    assert!(
        history(store, "k1", m, T0 + 3 * MIN, T0 + 2 * MIN)
            .await
            .is_empty(),
        "reversed range"
    );
    assert!(
        history(store, "k1", m, 0, T0).await.is_empty(),
        "before the first bucket"
    );
    assert!(
        history(store, "k1", m, T0 + 6 * MIN, u64::MAX)
            .await
            .is_empty(),
        "after the last bucket"
    );
}

/// Minute, hour and day buckets are kept apart even when their starts coincide.
pub async fn usage_granularities_separate(store: &dyn Store) {
    let day0 = T0 - T0 % DAY;
    store
        .write_usage(&[
            row("k1", Granularity::Minute, day0, "w", 1),
            row("k1", Granularity::Hour, day0, "w", 20),
            row("k1", Granularity::Day, day0, "w", 300),
            row("k1", Granularity::Minute, day0 + MIN, "w", 2),
            row("k1", Granularity::Hour, day0 + HOUR, "w", 40),
        ])
        .await
        .expect("write_usage");
    let (from, to) = (day0, day0 + DAY);
    assert_eq!(
        history(store, "k1", Granularity::Minute, from, to).await,
        buckets(&[(day0, 1), (day0 + MIN, 2)])
    );
    assert_eq!(
        history(store, "k1", Granularity::Hour, from, to).await,
        buckets(&[(day0, 20), (day0 + HOUR, 40)])
    );
    assert_eq!(
        history(store, "k1", Granularity::Day, from, to).await,
        buckets(&[(day0, 300)])
    );
}

/// Usage of one key never shows up under another, not even under a prefix or extension of its id.
pub async fn usage_other_keys_empty(store: &dyn Store) {
    let m = Granularity::Minute;
    assert!(
        history(store, "k1", m, 0, u64::MAX).await.is_empty(),
        "empty store"
    );
    store
        .write_usage(&[
            row("k1", m, T0, "w", 3),
            row("k10", m, T0, "w", 5),
            row("k", m, T0 + MIN, "w", 7),
        ])
        .await
        .expect("write_usage");
    assert_eq!(
        history(store, "k1", m, 0, u64::MAX).await,
        buckets(&[(T0, 3)])
    );
    assert_eq!(
        history(store, "k10", m, 0, u64::MAX).await,
        buckets(&[(T0, 5)])
    );
    assert_eq!(
        history(store, "k", m, 0, u64::MAX).await,
        buckets(&[(T0 + MIN, 7)])
    );
    assert!(
        history(store, "k2", m, 0, u64::MAX).await.is_empty(),
        "unknown key"
    );
    assert!(
        history(store, "", m, 0, u64::MAX).await.is_empty(),
        "empty key id"
    );
    assert!(
        history(store, "k1", Granularity::Hour, 0, u64::MAX)
            .await
            .is_empty(),
        "other granularity"
    );
}

/// Buckets whose writers all wrote zero are left out.
pub async fn usage_zero_buckets_left_out(store: &dyn Store) {
    let m = Granularity::Minute;
    store
        .write_usage(&[
            row("k1", m, T0, "a", 0),
            row("k1", m, T0, "b", 0),
            row("k1", m, T0 + MIN, "a", 0),
            row("k1", m, T0 + MIN, "b", 4),
            row("k1", m, T0 + 2 * MIN, "a", 6),
        ])
        .await
        .expect("write_usage");
    assert_eq!(
        history(store, "k1", m, T0, T0 + 3 * MIN).await,
        buckets(&[(T0 + MIN, 4), (T0 + 2 * MIN, 6)])
    );
    // A writer overwriting its value with zero empties the bucket.
    store
        .write_usage(&[row("k1", m, T0 + 2 * MIN, "a", 0)])
        .await
        .expect("write_usage");
    assert_eq!(
        history(store, "k1", m, T0, T0 + 3 * MIN).await,
        buckets(&[(T0 + MIN, 4)])
    );
}

#[cfg(test)]
mod tests {
    //! The suite checks itself against a trivially correct in-memory model,
    //! so a failing backend is the backend's fault, not the suite's.

    use super::*;
    use crate::storage::{KeyStore, SnapshotStore, StoreError, TierStore, UsageStore};
    use async_trait::async_trait;
    use parking_lot::Mutex;
    use std::collections::BTreeMap;

    #[derive(Debug, Default)]
    struct ModelStore {
        keys: Mutex<BTreeMap<String, KeyRecord>>,
        tiers: Mutex<BTreeMap<String, TierRecord>>,
        snapshots: Mutex<BTreeMap<String, Vec<u8>>>,
        usage: Mutex<BTreeMap<(String, Granularity, u64, String), u64>>,
    }

    #[async_trait]
    impl KeyStore for ModelStore {
        async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
            self.keys.lock().insert(key.key_id.clone(), key.clone());
            Ok(())
        }
        async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
            Ok(self.keys.lock().get(key_id).cloned())
        }
        async fn key_id_by_hash(&self, hash: &SecretHash) -> Result<Option<String>, StoreError> {
            Ok(self
                .keys
                .lock()
                .values()
                .find(|k| k.secret_hash == *hash || k.previous_hash == Some(*hash))
                .map(|k| k.key_id.clone()))
        }
        async fn list_keys(
            &self,
            filter: &KeyFilter,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<KeyRecord>, StoreError> {
            Ok(self
                .keys
                .lock()
                .values()
                .filter(|k| after.is_none_or(|a| k.key_id.as_str() > a) && filter.matches(k))
                .take(limit)
                .cloned()
                .collect())
        }
        async fn load_all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
            Ok(self.keys.lock().values().cloned().collect())
        }
    }

    #[async_trait]
    impl TierStore for ModelStore {
        async fn put_tier(&self, tier: &TierRecord) -> Result<(), StoreError> {
            self.tiers.lock().insert(tier.name.clone(), tier.clone());
            Ok(())
        }
        async fn list_tiers(&self) -> Result<Vec<TierRecord>, StoreError> {
            Ok(self.tiers.lock().values().cloned().collect())
        }
    }

    #[async_trait]
    impl SnapshotStore for ModelStore {
        async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            self.snapshots.lock().extend(batch.iter().cloned());
            Ok(())
        }
        async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.snapshots.lock().get(key_id).cloned())
        }
        async fn delete_snapshot(&self, key_id: &str) -> Result<(), StoreError> {
            self.snapshots.lock().remove(key_id);
            Ok(())
        }
    }

    #[async_trait]
    impl UsageStore for ModelStore {
        async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
            let mut usage = self.usage.lock();
            for r in rows {
                usage.insert(
                    (
                        r.key_id.clone(),
                        r.granularity,
                        r.bucket_start_ms,
                        r.writer.clone(),
                    ),
                    r.units,
                );
            }
            Ok(())
        }
        async fn usage_history(
            &self,
            key_id: &str,
            granularity: Granularity,
            from_ms: u64,
            to_ms: u64,
        ) -> Result<Vec<UsageBucket>, StoreError> {
            let mut sums: BTreeMap<u64, u64> = BTreeMap::new();
            for ((k, g, start, _), units) in self.usage.lock().iter() {
                if k == key_id && *g == granularity && from_ms <= *start && *start < to_ms {
                    *sums.entry(*start).or_default() += units;
                }
            }
            Ok(sums
                .into_iter()
                .filter(|&(_, u)| u > 0)
                .map(|(start_ms, units)| UsageBucket { start_ms, units })
                .collect())
        }
    }

    // The whole suite, over the model, through the same macro backends use.
    mod model {
        use super::ModelStore;
        crate::storage_conformance_suite!(|| async { ModelStore::default() });
    }

    // And once through a Fixture with a guard, to exercise that path.
    #[test]
    fn fixture_drops_store_before_guard() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        #[derive(Debug)]
        struct Flagged(ModelStore, Arc<AtomicBool>);
        impl Drop for Flagged {
            fn drop(&mut self) {
                self.1.store(true, Ordering::SeqCst);
            }
        }
        struct Guard(Arc<AtomicBool>);
        impl Drop for Guard {
            fn drop(&mut self) {
                assert!(
                    self.0.load(Ordering::SeqCst),
                    "guard dropped before the store"
                );
            }
        }
        #[async_trait]
        impl KeyStore for Flagged {
            async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
                self.0.put_key(key).await
            }
            async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
                self.0.get_key(key_id).await
            }
            async fn key_id_by_hash(
                &self,
                hash: &SecretHash,
            ) -> Result<Option<String>, StoreError> {
                self.0.key_id_by_hash(hash).await
            }
            async fn list_keys(
                &self,
                f: &KeyFilter,
                after: Option<&str>,
                limit: usize,
            ) -> Result<Vec<KeyRecord>, StoreError> {
                self.0.list_keys(f, after, limit).await
            }
            async fn load_all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
                self.0.load_all_keys().await
            }
        }
        #[async_trait]
        impl TierStore for Flagged {
            async fn put_tier(&self, tier: &TierRecord) -> Result<(), StoreError> {
                self.0.put_tier(tier).await
            }
            async fn list_tiers(&self) -> Result<Vec<TierRecord>, StoreError> {
                self.0.list_tiers().await
            }
        }
        #[async_trait]
        impl SnapshotStore for Flagged {
            async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
                self.0.save_snapshots(batch).await
            }
            async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
                self.0.load_snapshot(key_id).await
            }
            async fn delete_snapshot(&self, key_id: &str) -> Result<(), StoreError> {
                self.0.delete_snapshot(key_id).await
            }
        }
        #[async_trait]
        impl UsageStore for Flagged {
            async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
                self.0.write_usage(rows).await
            }
            async fn usage_history(
                &self,
                k: &str,
                g: Granularity,
                from: u64,
                to: u64,
            ) -> Result<Vec<UsageBucket>, StoreError> {
                self.0.usage_history(k, g, from, to).await
            }
        }

        let flag = Arc::new(AtomicBool::new(false));
        runtime().block_on(async {
            let fixture = Fixture::with_guard(
                Flagged(ModelStore::default(), Arc::clone(&flag)),
                Guard(Arc::clone(&flag)),
            );
            key_round_trip(fixture.store()).await;
            drop(fixture);
        });
        assert!(flag.load(Ordering::SeqCst));
    }

    /// Every `pub async fn` of this module is a scenario, and every scenario is in the list
    /// (the macro and `SCENARIOS` are generated from the same list).
    #[test]
    fn every_scenario_is_listed() {
        let src = include_str!("conformance.rs");
        let defined: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .map(|rest| rest.split('(').next().unwrap_or_default().trim())
            .collect();
        let mut listed = SCENARIOS.to_vec();
        assert!(
            defined.len() >= 15,
            "scenario scan found too few: {defined:?}"
        );
        let mut defined_sorted = defined.clone();
        defined_sorted.sort_unstable();
        listed.sort_unstable();
        let mut dedup = listed.clone();
        dedup.dedup();
        assert_eq!(dedup, listed, "a scenario is listed twice");
        assert_eq!(
            defined_sorted, listed,
            "scenario functions and the scenario list differ"
        );
    }
}
