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
use crate::storage::{KeyFilter, Range, Store, TierRecord, UsageRow};
use ringlimit_protocol::admin::{Granularity, KeyStatus, Metadata, UsageBucket};
use ringlimit_protocol::pipeline::{
    Alert, AuditEntry, BillingRecord, DeadLetter, DeliveryState, IpBlock, Violation,
};
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
            key_rotation_keeps_key_loadable,
            list_keys_order_and_paging,
            list_keys_filters,
            load_all_keys,
            tiers_put_list_overwrite,
            snapshots_save_load,
            snapshots_overwrite,
            usage_idempotent_absolute_writes,
            usage_stale_total_never_lowers,
            usage_writers_summed,
            usage_range_boundaries,
            usage_granularities_separate,
            usage_other_keys_empty,
            usage_zero_buckets_left_out,
            violations_idempotent_by_id,
            violations_by_key_and_all_keys,
            violations_range_boundaries,
            violations_newest_first_and_paging,
            blocks_put_list_delete,
            audit_idempotent_range_and_paging,
            alerts_upsert_and_list,
            dead_letters_put_get_list_delete,
            billing_upsert_and_lists,
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

/// Rotation (new current hash, old one previous, then cleared, then rotated
/// again and without grace period): every put replaces the record, which
/// stays loadable by id.
pub async fn key_rotation_keeps_key_loadable(store: &dyn Store) {
    let (h1, h2, h3) = (
        SecretHash::of("s1"),
        SecretHash::of("s2"),
        SecretHash::of("s3"),
    );
    let loaded = move || async move { store.get_key("k1").await.expect("get_key") };

    let mut k = key("k1", "o", "free", KeyStatus::Active);
    k.secret_hash = h1;
    store.put_key(&k).await.expect("put_key");
    assert_eq!(loaded().await.as_ref(), Some(&k));

    // Rotate: s2 current, s1 still valid during the grace period.
    k.secret_hash = h2;
    k.previous_hash = Some(h1);
    k.previous_expires_at_ms = Some(5_000);
    store.put_key(&k).await.expect("put_key (rotate)");
    assert_eq!(loaded().await.as_ref(), Some(&k), "rotation not stored");

    // Grace period over: the previous hash is cleared.
    k.previous_hash = None;
    k.previous_expires_at_ms = None;
    store.put_key(&k).await.expect("put_key (clear previous)");
    assert_eq!(
        loaded().await.as_ref(),
        Some(&k),
        "previous hash not cleared"
    );

    // Rotate twice in a row: s3 current, s2 previous.
    k.secret_hash = h3;
    k.previous_hash = Some(h2);
    store.put_key(&k).await.expect("put_key (rotate again)");
    assert_eq!(loaded().await.as_ref(), Some(&k));

    // Rotate with no grace period: s1 again current (reused), nothing previous.
    k.secret_hash = h1;
    k.previous_hash = None;
    store
        .put_key(&k)
        .await
        .expect("put_key (rotate without grace)");
    assert_eq!(loaded().await.as_ref(), Some(&k));
    assert_eq!(
        store.load_all_keys().await.expect("load_all_keys"),
        vec![k],
        "rotation duplicated the key"
    );
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

/// A batch is saved and each snapshot loads back; unknown keys have none.
pub async fn snapshots_save_load(store: &dyn Store) {
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
        ("k3".into(), big),
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

/// A writer's total of a bucket only grows: a smaller total written later
/// (a stale copy a node adopted from an older snapshot, landing after the
/// writer's newer total) never lowers what is stored, in another call or in
/// the same one.
pub async fn usage_stale_total_never_lowers(store: &dyn Store) {
    let m = Granularity::Minute;
    store
        .write_usage(&[row("k1", m, T0, "node-a@1", 9)])
        .await
        .expect("write_usage");
    store
        .write_usage(&[row("k1", m, T0, "node-a@1", 4)])
        .await
        .expect("write_usage (stale)");
    store
        .write_usage(&[
            row("k1", m, T0 + MIN, "node-a@1", 7),
            row("k1", m, T0 + MIN, "node-a@1", 3),
        ])
        .await
        .expect("write_usage (stale after newer, one call)");
    assert_eq!(
        history(store, "k1", m, T0, T0 + 2 * MIN).await,
        buckets(&[(T0, 9), (T0 + MIN, 7)]),
        "a stale total must not lower the stored one"
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
    // A writer's total only grows: a zero written later is a stale copy
    // and leaves the bucket as it was.
    store
        .write_usage(&[row("k1", m, T0 + 2 * MIN, "a", 0)])
        .await
        .expect("write_usage");
    assert_eq!(
        history(store, "k1", m, T0, T0 + 3 * MIN).await,
        buckets(&[(T0 + MIN, 4), (T0 + 2 * MIN, 6)])
    );
}

// ---------------------------------------------------------------- pipelines

fn violation(id: &str, key_id: &str, at_ms: u64) -> Violation {
    Violation {
        id: id.to_owned(),
        key_id: key_id.to_owned(),
        limit_name: "per-second".into(),
        node: "node-a".into(),
        at_ms,
        client_ip: id.len().is_multiple_of(2).then(|| "203.0.113.7".to_owned()),
        cost: 1 + id.len() as u64,
    }
}

fn block(id: &str, cidr: &str, expires_at_ms: Option<u64>) -> IpBlock {
    IpBlock {
        id: id.to_owned(),
        cidr: cidr.to_owned(),
        created_at_ms: T0,
        expires_at_ms,
        reason: expires_at_ms.map(|_| "scanner".to_owned()),
        created_by: "admin".into(),
    }
}

fn audit(id: &str, at_ms: u64) -> AuditEntry {
    AuditEntry {
        id: id.to_owned(),
        at_ms,
        actor: "admin".into(),
        action: "key.suspend".into(),
        target_kind: "key".into(),
        target_id: "k1".into(),
        reason: Some(format!("reason of {id}")),
        details: serde_json::json!({"until_ms": at_ms + HOUR, "tags": ["a", "ü"], "n": null}),
    }
}

fn alert(id: &str, key_id: Option<&str>, raised_at_ms: u64) -> Alert {
    Alert {
        id: id.to_owned(),
        raised_at_ms,
        key_id: key_id.map(str::to_owned),
        kind: "usage_threshold".into(),
        severity: "warning".into(),
        message: format!("alert {id}"),
        details: serde_json::json!({"threshold": 0.8}),
        delivery: DeliveryState::Pending,
        attempts: 0,
        last_attempt_at_ms: None,
    }
}

fn dead_letter(id: &str, failed_at_ms: u64) -> DeadLetter {
    DeadLetter {
        id: id.to_owned(),
        alert_id: format!("alert-of-{id}"),
        endpoint: "ops".into(),
        url: "https://hooks.example.com/ops".into(),
        failed_at_ms,
        attempts: 5,
        error: "HTTP 503".into(),
        payload: r#"{"id":"x","message":"quoted \"text\""}"#.into(),
    }
}

fn billing(key_id: &str, period_start_ms: u64, units: u64) -> BillingRecord {
    BillingRecord {
        key_id: key_id.to_owned(),
        period_start_ms,
        period_end_ms: period_start_ms + 30 * DAY,
        owner: "acme".into(),
        tier: "pro".into(),
        units,
        included_units: 1_000,
        overage_units: units.saturating_sub(1_000),
        unit_price_nanos: 400_000,
        amount_nanos: units.saturating_sub(1_000) * 400_000,
        currency: "EUR".into(),
        computed_at_ms: period_start_ms + 31 * DAY,
        computed_by: "node-a".into(),
    }
}

fn range(from_ms: u64, to_ms: u64, offset: usize, limit: usize) -> Range {
    Range {
        from_ms,
        to_ms,
        offset,
        limit,
    }
}

/// Everything, first page of up to 1 000.
fn everything() -> Range {
    range(0, u64::MAX, 0, 1_000)
}

/// List order: newest first, ties by id in descending order (the exact
/// reverse of `(time, id)` order).
fn newest_first<T: Clone>(items: &[T], key: impl Fn(&T) -> (u64, String)) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort_by_key(|t| std::cmp::Reverse(key(t)));
    v
}

fn violation_ids(v: &[Violation]) -> Vec<&str> {
    v.iter().map(|v| v.id.as_str()).collect()
}

async fn listed_violation_ids(store: &dyn Store, key_id: Option<&str>, r: Range) -> Vec<String> {
    violations(store, key_id, r)
        .await
        .into_iter()
        .map(|v| v.id)
        .collect()
}

async fn violations(store: &dyn Store, key_id: Option<&str>, r: Range) -> Vec<Violation> {
    store
        .list_violations(key_id, r)
        .await
        .expect("list_violations")
}

/// A batch written twice (and a violation repeated inside a batch) stores each violation once.
pub async fn violations_idempotent_by_id(store: &dyn Store) {
    let batch = vec![
        violation("v1", "k1", T0),
        violation("v2", "k1", T0 + 1),
        violation("v3", "k2", T0 + 2),
    ];
    store.write_violations(&batch).await.expect("write");
    store.write_violations(&batch).await.expect("write again");
    store
        .write_violations(&[batch[0].clone(), batch[0].clone()])
        .await
        .expect("write with a repeat");
    store.write_violations(&[]).await.expect("empty batch");
    let want = newest_first(&batch, |v| (v.at_ms, v.id.clone()));
    assert_eq!(violations(store, None, everything()).await, want);
    assert_eq!(
        violations(store, Some("k1"), everything()).await,
        want[1..],
        "each of k1's violations once"
    );
}

/// Listing by key returns only that key's violations (not those of a prefix
/// or extension of its id); listing without a key returns every key's.
pub async fn violations_by_key_and_all_keys(store: &dyn Store) {
    assert!(violations(store, None, everything()).await.is_empty());
    let all = vec![
        violation("a", "k1", T0),
        violation("b", "k10", T0 + MIN),
        violation("c", "k", T0 + 2 * MIN),
        violation("d", "k1", T0 + DAY),
        violation("e", "k2", T0 - DAY),
    ];
    store.write_violations(&all).await.expect("write");
    assert_eq!(
        violation_ids(&violations(store, Some("k1"), everything()).await),
        ["d", "a"]
    );
    assert_eq!(
        violation_ids(&violations(store, Some("k10"), everything()).await),
        ["b"]
    );
    assert_eq!(
        violation_ids(&violations(store, Some("k"), everything()).await),
        ["c"]
    );
    assert!(violations(store, Some("k3"), everything()).await.is_empty());
    assert_eq!(
        violation_ids(&violations(store, None, everything()).await),
        ["d", "c", "b", "a", "e"]
    );
}

/// `[from, to)` on the violation's time, across days; open-ended ranges.
pub async fn violations_range_boundaries(store: &dyn Store) {
    // One a minute over three minutes, one a day later, one a year earlier.
    let times = [T0, T0 + MIN, T0 + 2 * MIN, T0 + DAY, T0 - 365 * DAY];
    let all: Vec<Violation> = times
        .iter()
        .enumerate()
        .map(|(i, &t)| violation(&format!("v{i}"), "k1", t))
        .collect();
    store.write_violations(&all).await.expect("write");
    for key in [None, Some("k1")] {
        let ids = |r: Range| listed_violation_ids(store, key, r);
        assert_eq!(
            ids(range(T0, T0 + 2 * MIN, 0, 100)).await,
            ["v1", "v0"],
            "from inclusive, to exclusive ({key:?})"
        );
        assert_eq!(
            ids(range(T0 + 1, T0 + 2 * MIN + 1, 0, 100)).await,
            ["v2", "v1"]
        );
        assert_eq!(
            ids(range(0, u64::MAX, 0, 100)).await,
            ["v3", "v2", "v1", "v0", "v4"],
            "open range ({key:?})"
        );
        assert_eq!(
            ids(range(T0 + MIN, u64::MAX, 0, 100)).await,
            ["v3", "v2", "v1"]
        );
        assert_eq!(ids(range(0, T0, 0, 100)).await, ["v4"]);
        assert!(ids(range(T0, T0, 0, 100)).await.is_empty(), "empty range");
        assert!(
            ids(range(T0 + MIN, T0, 0, 100)).await.is_empty(),
            "reversed range"
        );
        assert!(ids(range(T0 + DAY + 1, u64::MAX, 0, 100)).await.is_empty());
    }
}

/// Newest first, ties (same time) by id descending; offset/limit pages
/// concatenate to the whole list, within and across days.
pub async fn violations_newest_first_and_paging(store: &dyn Store) {
    let mut all = Vec::new();
    for (i, t) in [T0, T0, T0 + 1, T0 - DAY, T0 - DAY, T0 + 3 * DAY, T0]
        .into_iter()
        .enumerate()
    {
        all.push(violation(
            &format!("v{i}"),
            if i % 2 == 0 { "k1" } else { "k2" },
            t,
        ));
    }
    // Written in two batches, out of order.
    store.write_violations(&all[4..]).await.expect("write");
    store.write_violations(&all[..4]).await.expect("write");
    let want = newest_first(&all, |v| (v.at_ms, v.id.clone()));
    assert_eq!(
        violation_ids(&want),
        ["v5", "v2", "v6", "v1", "v0", "v4", "v3"],
        "the expected order itself"
    );
    assert_eq!(violations(store, None, everything()).await, want);
    for limit in [1usize, 2, 3, 7] {
        let mut got = Vec::new();
        let mut offset = 0;
        loop {
            let page = violations(store, None, range(0, u64::MAX, offset, limit)).await;
            assert!(page.len() <= limit);
            if page.is_empty() {
                break;
            }
            offset += page.len();
            got.extend(page);
        }
        assert_eq!(got, want, "pages of {limit}");
    }
    let k1: Vec<Violation> = want.iter().filter(|v| v.key_id == "k1").cloned().collect();
    assert_eq!(
        violations(store, Some("k1"), range(0, u64::MAX, 1, 2)).await,
        k1[1..3]
    );
    assert!(
        violations(store, None, range(0, u64::MAX, 7, 10))
            .await
            .is_empty(),
        "offset past the end"
    );
    assert!(
        violations(store, None, range(0, u64::MAX, 0, 0))
            .await
            .is_empty(),
        "limit 0"
    );
}

/// Blocks: put replaces by id, list is in id order, delete says whether the block existed.
pub async fn blocks_put_list_delete(store: &dyn Store) {
    assert!(store.list_blocks().await.expect("list").is_empty());
    let b2 = block("b2", "198.51.100.7/32", None);
    let b1 = block("b1", "203.0.113.0/24", Some(T0 + HOUR));
    let b3 = block("b3", "2001:db8::/32", Some(T0 - HOUR));
    for b in [&b2, &b1, &b3] {
        store.put_block(b).await.expect("put_block");
    }
    assert_eq!(
        store.list_blocks().await.expect("list"),
        [b1.clone(), b2.clone(), b3.clone()],
        "id order, expired ones included"
    );
    let b2_new = IpBlock {
        cidr: "198.51.100.0/24".into(),
        expires_at_ms: Some(T0 + DAY),
        reason: Some("widened".into()),
        ..b2.clone()
    };
    store.put_block(&b2_new).await.expect("put_block (replace)");
    assert_eq!(
        store.list_blocks().await.expect("list"),
        [b1.clone(), b2_new, b3.clone()]
    );
    assert!(store.delete_block("b2").await.expect("delete"), "existed");
    assert!(
        !store.delete_block("b2").await.expect("delete again"),
        "gone"
    );
    assert!(!store.delete_block("nope").await.expect("delete unknown"));
    assert_eq!(store.list_blocks().await.expect("list"), [b1, b3]);
}

/// Audit entries: appending twice stores each once; `[from, to)`, newest first, paging.
pub async fn audit_idempotent_range_and_paging(store: &dyn Store) {
    let all: Vec<AuditEntry> = [T0, T0 + MIN, T0 + MIN, T0 + DAY, T0 - 10 * DAY]
        .iter()
        .enumerate()
        .map(|(i, &t)| audit(&format!("e{i}"), t))
        .collect();
    store.append_audit(&all).await.expect("append");
    store.append_audit(&all[1..3]).await.expect("append again");
    store.append_audit(&[]).await.expect("append nothing");
    let list = |r: Range| async move { store.list_audit(r).await.expect("list_audit") };
    let want = newest_first(&all, |e| (e.at_ms, e.id.clone()));
    assert_eq!(list(everything()).await, want, "each once, newest first");
    let ids: Vec<&str> = want.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e3", "e2", "e1", "e0", "e4"]);
    assert_eq!(list(range(T0, T0 + MIN, 0, 10)).await, [all[0].clone()]);
    assert_eq!(list(range(T0 + MIN, T0 + DAY + 1, 0, 10)).await, want[..3]);
    assert_eq!(list(range(0, u64::MAX, 1, 2)).await, want[1..3]);
    assert_eq!(list(range(0, u64::MAX, 4, 2)).await, want[4..]);
    assert!(list(range(0, u64::MAX, 5, 2)).await.is_empty());
    assert!(list(range(T0, T0, 0, 10)).await.is_empty());
}

/// An alert rewritten with a new delivery state is still one alert, listed
/// once, by key and among all; key-less alerts are only among all.
pub async fn alerts_upsert_and_list(store: &dyn Store) {
    let a1 = alert("a1", Some("k1"), T0);
    let a2 = alert("a2", Some("k2"), T0 + MIN);
    let a3 = alert("a3", None, T0 + 2 * MIN);
    let a4 = alert("a4", Some("k1"), T0 - DAY);
    for a in [&a1, &a2, &a3, &a4] {
        store.put_alert(a).await.expect("put_alert");
    }
    assert_eq!(store.get_alert("a1").await.expect("get"), Some(a1.clone()));
    assert_eq!(store.get_alert("nope").await.expect("get"), None);

    let delivered = Alert {
        delivery: DeliveryState::Delivered,
        attempts: 2,
        last_attempt_at_ms: Some(T0 + 5_000),
        ..a1.clone()
    };
    store
        .put_alert(&delivered)
        .await
        .expect("put_alert (delivered)");
    store
        .put_alert(&delivered)
        .await
        .expect("put_alert (again)");
    assert_eq!(
        store.get_alert("a1").await.expect("get"),
        Some(delivered.clone())
    );

    let list = |key: Option<&'static str>, r: Range| async move {
        store.list_alerts(key, r).await.expect("list_alerts")
    };
    let all = [a3.clone(), a2.clone(), delivered.clone(), a4.clone()];
    assert_eq!(list(None, everything()).await, all, "one a1, newest first");
    assert_eq!(
        list(Some("k1"), everything()).await,
        [delivered.clone(), a4.clone()]
    );
    assert_eq!(list(Some("k2"), everything()).await, [a2]);
    assert!(list(Some("k3"), everything()).await.is_empty());
    assert_eq!(list(None, range(T0, T0 + 2 * MIN, 0, 10)).await, all[1..3]);
    assert_eq!(
        list(Some("k1"), range(T0, T0 + 1, 0, 10)).await,
        [delivered]
    );
    assert_eq!(list(None, range(0, u64::MAX, 1, 2)).await, all[1..3]);
    assert_eq!(list(Some("k1"), range(0, u64::MAX, 1, 5)).await, [a4]);
    assert!(list(None, range(0, u64::MAX, 0, 0)).await.is_empty());
}

/// Dead letters: put (twice: still one), get, list newest first in `[from, to)`, delete.
pub async fn dead_letters_put_get_list_delete(store: &dyn Store) {
    let d1 = dead_letter("d1", T0);
    let d2 = dead_letter("d2", T0 + MIN);
    let d3 = dead_letter("d3", T0 + 2 * DAY);
    for d in [&d1, &d2, &d3] {
        store.put_dead_letter(d).await.expect("put_dead_letter");
    }
    let d2_again = DeadLetter {
        attempts: 6,
        error: "timeout".into(),
        ..d2.clone()
    };
    store.put_dead_letter(&d2_again).await.expect("put again");
    assert_eq!(
        store.get_dead_letter("d1").await.expect("get"),
        Some(d1.clone())
    );
    assert_eq!(
        store.get_dead_letter("d2").await.expect("get"),
        Some(d2_again.clone())
    );
    assert_eq!(store.get_dead_letter("nope").await.expect("get"), None);
    let list = |r: Range| async move { store.list_dead_letters(r).await.expect("list") };
    assert_eq!(
        list(everything()).await,
        [d3.clone(), d2_again.clone(), d1.clone()]
    );
    assert_eq!(
        list(range(T0, T0 + MIN, 0, 10)).await,
        std::slice::from_ref(&d1)
    );
    assert_eq!(
        list(range(0, u64::MAX, 1, 1)).await,
        std::slice::from_ref(&d2_again)
    );
    assert!(
        store.delete_dead_letter("d2").await.expect("delete"),
        "existed"
    );
    assert!(!store.delete_dead_letter("d2").await.expect("delete again"));
    assert!(
        !store
            .delete_dead_letter("nope")
            .await
            .expect("delete unknown")
    );
    assert_eq!(store.get_dead_letter("d2").await.expect("get"), None);
    assert_eq!(list(everything()).await, [d3, d1]);
}

/// Billing: a record put twice is one record with the new values; per key
/// newest period first with a limit; per period in key_id order.
pub async fn billing_upsert_and_lists(store: &dyn Store) {
    const P: u64 = 30 * DAY;
    let p0 = T0 - T0 % DAY;
    store
        .put_billing(&billing("k2", p0, 10))
        .await
        .expect("put");
    let recomputed = BillingRecord {
        computed_by: "node-b".into(),
        ..billing("k2", p0, 5_000)
    };
    store.put_billing(&recomputed).await.expect("put again");
    assert_eq!(
        store.get_billing("k2", p0).await.expect("get"),
        Some(recomputed.clone())
    );
    assert_eq!(store.get_billing("k2", p0 + P).await.expect("get"), None);
    assert_eq!(store.get_billing("k9", p0).await.expect("get"), None);

    for (k, p, u) in [
        ("k1", p0, 1),
        ("k10", p0, 2),
        ("k2", p0 - P, 3),
        ("k2", p0 + P, 4),
        ("k0", p0 + P, 5),
        ("k2", p0 - 2 * P, 6),
    ] {
        store.put_billing(&billing(k, p, u)).await.expect("put");
    }
    let k2 = store.list_billing_for_key("k2", 10).await.expect("list");
    assert_eq!(
        k2.iter().map(|r| r.period_start_ms).collect::<Vec<_>>(),
        [p0 + P, p0, p0 - P, p0 - 2 * P],
        "newest period first"
    );
    assert_eq!(k2[1], recomputed, "one record per period, the new values");
    assert_eq!(
        store.list_billing_for_key("k2", 2).await.expect("list"),
        k2[..2]
    );
    assert!(
        store
            .list_billing_for_key("k2", 0)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .list_billing_for_key("k9", 10)
            .await
            .expect("list")
            .is_empty()
    );
    let keys = |rs: Vec<BillingRecord>| rs.into_iter().map(|r| r.key_id).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list_billing_for_period(p0).await.expect("list")),
        ["k1", "k10", "k2"],
        "key_id order"
    );
    assert_eq!(
        keys(store.list_billing_for_period(p0 + P).await.expect("list")),
        ["k0", "k2"]
    );
    assert!(
        store
            .list_billing_for_period(p0 + 1)
            .await
            .expect("list")
            .is_empty()
    );
}

#[cfg(test)]
mod tests {
    //! The suite checks itself against a trivially correct in-memory model,
    //! so a failing backend is the backend's fault, not the suite's.

    use super::*;
    use crate::storage::{
        AlertStore, AuditStore, BillingStore, BlockStore, KeyStore, SnapshotStore, StoreError,
        TierStore, UsageStore, ViolationStore,
    };
    use async_trait::async_trait;
    use parking_lot::Mutex;
    use std::collections::BTreeMap;

    #[derive(Debug, Default)]
    struct ModelStore {
        keys: Mutex<BTreeMap<String, KeyRecord>>,
        tiers: Mutex<BTreeMap<String, TierRecord>>,
        snapshots: Mutex<BTreeMap<String, Vec<u8>>>,
        usage: Mutex<BTreeMap<(String, Granularity, u64, String), u64>>,
        violations: Mutex<BTreeMap<(u64, String), Violation>>,
        blocks: Mutex<BTreeMap<String, IpBlock>>,
        audit: Mutex<BTreeMap<(u64, String), AuditEntry>>,
        alerts: Mutex<BTreeMap<String, Alert>>,
        dead_letters: Mutex<BTreeMap<String, DeadLetter>>,
        billing: Mutex<BTreeMap<(String, u64), BillingRecord>>,
    }

    /// Newest first (ties by id, descending) within `r`, then the page.
    fn model_page<T: Clone>(
        items: impl Iterator<Item = T>,
        at: impl Fn(&T) -> (u64, String),
        r: Range,
    ) -> Vec<T> {
        let mut v: Vec<T> = items
            .filter(|t| (r.from_ms..r.to_ms).contains(&at(t).0))
            .collect();
        v.sort_by_key(|t| std::cmp::Reverse(at(t)));
        v.into_iter().skip(r.offset).take(r.limit).collect()
    }

    #[async_trait]
    impl ViolationStore for ModelStore {
        async fn write_violations(&self, batch: &[Violation]) -> Result<(), StoreError> {
            let mut m = self.violations.lock();
            for v in batch {
                m.insert((v.at_ms, v.id.clone()), v.clone());
            }
            Ok(())
        }
        async fn list_violations(
            &self,
            key_id: Option<&str>,
            range: Range,
        ) -> Result<Vec<Violation>, StoreError> {
            let m = self.violations.lock();
            let of_key = m
                .values()
                .filter(|v| key_id.is_none_or(|k| v.key_id == k))
                .cloned();
            Ok(model_page(of_key, |v| (v.at_ms, v.id.clone()), range))
        }
    }

    #[async_trait]
    impl BlockStore for ModelStore {
        async fn put_block(&self, block: &IpBlock) -> Result<(), StoreError> {
            self.blocks.lock().insert(block.id.clone(), block.clone());
            Ok(())
        }
        async fn list_blocks(&self) -> Result<Vec<IpBlock>, StoreError> {
            Ok(self.blocks.lock().values().cloned().collect())
        }
        async fn delete_block(&self, id: &str) -> Result<bool, StoreError> {
            Ok(self.blocks.lock().remove(id).is_some())
        }
    }

    #[async_trait]
    impl AuditStore for ModelStore {
        async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
            let mut m = self.audit.lock();
            for e in entries {
                m.insert((e.at_ms, e.id.clone()), e.clone());
            }
            Ok(())
        }
        async fn list_audit(&self, range: Range) -> Result<Vec<AuditEntry>, StoreError> {
            let m = self.audit.lock();
            Ok(model_page(
                m.values().cloned(),
                |e| (e.at_ms, e.id.clone()),
                range,
            ))
        }
    }

    #[async_trait]
    impl AlertStore for ModelStore {
        async fn put_alert(&self, alert: &Alert) -> Result<(), StoreError> {
            self.alerts.lock().insert(alert.id.clone(), alert.clone());
            Ok(())
        }
        async fn get_alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
            Ok(self.alerts.lock().get(id).cloned())
        }
        async fn list_alerts(
            &self,
            key_id: Option<&str>,
            range: Range,
        ) -> Result<Vec<Alert>, StoreError> {
            let m = self.alerts.lock();
            let of_key = m
                .values()
                .filter(|a| key_id.is_none_or(|k| a.key_id.as_deref() == Some(k)))
                .cloned();
            Ok(model_page(
                of_key,
                |a| (a.raised_at_ms, a.id.clone()),
                range,
            ))
        }
        async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
            self.dead_letters
                .lock()
                .insert(letter.id.clone(), letter.clone());
            Ok(())
        }
        async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
            Ok(self.dead_letters.lock().get(id).cloned())
        }
        async fn list_dead_letters(&self, range: Range) -> Result<Vec<DeadLetter>, StoreError> {
            let m = self.dead_letters.lock();
            Ok(model_page(
                m.values().cloned(),
                |d| (d.failed_at_ms, d.id.clone()),
                range,
            ))
        }
        async fn delete_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
            Ok(self.dead_letters.lock().remove(id).is_some())
        }
    }

    #[async_trait]
    impl BillingStore for ModelStore {
        async fn put_billing(&self, record: &BillingRecord) -> Result<(), StoreError> {
            self.billing.lock().insert(
                (record.key_id.clone(), record.period_start_ms),
                record.clone(),
            );
            Ok(())
        }
        async fn get_billing(
            &self,
            key_id: &str,
            period_start_ms: u64,
        ) -> Result<Option<BillingRecord>, StoreError> {
            Ok(self
                .billing
                .lock()
                .get(&(key_id.to_owned(), period_start_ms))
                .cloned())
        }
        async fn list_billing_for_key(
            &self,
            key_id: &str,
            limit: usize,
        ) -> Result<Vec<BillingRecord>, StoreError> {
            Ok(self
                .billing
                .lock()
                .values()
                .rev()
                .filter(|r| r.key_id == key_id)
                .take(limit)
                .cloned()
                .collect())
        }
        async fn list_billing_for_period(
            &self,
            period_start_ms: u64,
        ) -> Result<Vec<BillingRecord>, StoreError> {
            Ok(self
                .billing
                .lock()
                .values()
                .filter(|r| r.period_start_ms == period_start_ms)
                .cloned()
                .collect())
        }
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
    }

    #[async_trait]
    impl UsageStore for ModelStore {
        async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
            let mut usage = self.usage.lock();
            for r in rows {
                // A writer's total only grows: the larger one stays.
                let v = usage
                    .entry((
                        r.key_id.clone(),
                        r.granularity,
                        r.bucket_start_ms,
                        r.writer.clone(),
                    ))
                    .or_insert(r.units);
                *v = (*v).max(r.units);
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

        #[async_trait]
        impl ViolationStore for Flagged {
            async fn write_violations(&self, batch: &[Violation]) -> Result<(), StoreError> {
                self.0.write_violations(batch).await
            }
            async fn list_violations(
                &self,
                key_id: Option<&str>,
                range: Range,
            ) -> Result<Vec<Violation>, StoreError> {
                self.0.list_violations(key_id, range).await
            }
        }
        #[async_trait]
        impl BlockStore for Flagged {
            async fn put_block(&self, block: &IpBlock) -> Result<(), StoreError> {
                self.0.put_block(block).await
            }
            async fn list_blocks(&self) -> Result<Vec<IpBlock>, StoreError> {
                self.0.list_blocks().await
            }
            async fn delete_block(&self, id: &str) -> Result<bool, StoreError> {
                self.0.delete_block(id).await
            }
        }
        #[async_trait]
        impl AuditStore for Flagged {
            async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
                self.0.append_audit(entries).await
            }
            async fn list_audit(&self, range: Range) -> Result<Vec<AuditEntry>, StoreError> {
                self.0.list_audit(range).await
            }
        }
        #[async_trait]
        impl AlertStore for Flagged {
            async fn put_alert(&self, alert: &Alert) -> Result<(), StoreError> {
                self.0.put_alert(alert).await
            }
            async fn get_alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
                self.0.get_alert(id).await
            }
            async fn list_alerts(
                &self,
                key_id: Option<&str>,
                range: Range,
            ) -> Result<Vec<Alert>, StoreError> {
                self.0.list_alerts(key_id, range).await
            }
            async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
                self.0.put_dead_letter(letter).await
            }
            async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
                self.0.get_dead_letter(id).await
            }
            async fn list_dead_letters(&self, range: Range) -> Result<Vec<DeadLetter>, StoreError> {
                self.0.list_dead_letters(range).await
            }
            async fn delete_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
                self.0.delete_dead_letter(id).await
            }
        }
        #[async_trait]
        impl BillingStore for Flagged {
            async fn put_billing(&self, record: &BillingRecord) -> Result<(), StoreError> {
                self.0.put_billing(record).await
            }
            async fn get_billing(
                &self,
                key_id: &str,
                period_start_ms: u64,
            ) -> Result<Option<BillingRecord>, StoreError> {
                self.0.get_billing(key_id, period_start_ms).await
            }
            async fn list_billing_for_key(
                &self,
                key_id: &str,
                limit: usize,
            ) -> Result<Vec<BillingRecord>, StoreError> {
                self.0.list_billing_for_key(key_id, limit).await
            }
            async fn list_billing_for_period(
                &self,
                period_start_ms: u64,
            ) -> Result<Vec<BillingRecord>, StoreError> {
                self.0.list_billing_for_period(period_start_ms).await
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
