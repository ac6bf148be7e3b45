//! The storage conformance suite on the ScyllaDB adapter, against a real CQL
//! server (ScyllaDB, or the Cassandra node of `scripts/cassandra.sh` in CI)
//! whose address (`host:port`) is in `RINGLIMIT_TEST_CQL`; plus tests of the
//! adapter itself: migrations, and failing fast when the server is down,
//! unreachable or hung.
//!
//! Every conformance test gets a fresh keyspace (`rl_test_<secs>_<pid>_<n>`),
//! migrated by `ScyllaStore::connect` and dropped by the fixture's guard.
//! Keyspaces left behind by killed runs are dropped by the next run once they
//! are more than two hours old.
//!
//! Without `RINGLIMIT_TEST_CQL`: when `CI` or `RINGLIMIT_REQUIRE_SERVERS=1` is
//! set, every test that needs the server FAILS with a message saying so;
//! otherwise the test binary prints a notice and exits successfully at the
//! first such test (the suite's macro has no way to skip one test), so
//! `cargo test` on a laptop without a CQL server stays green but says what
//! it did not run.
//!
//! Run: `addr=$(scripts/cassandra.sh start /tmp/cass) &&
//! RINGLIMIT_TEST_CQL=$addr cargo test -p ringlimit-node --test conformance_scylla`.

mod common;
use common::proxy::{Mode, Proxy};
use ringlimit_actors::keys::{KeyRecord, SecretHash};
use ringlimit_actors::storage::conformance::{Fixture, SCENARIOS};
use ringlimit_actors::storage::{
    AlertStore, BillingStore, BlockStore, KeyStore, Range, Retention, SnapshotStore, StoreError,
    UsageRow, UsageStore, ViolationStore,
};
use ringlimit_node::store::scylla::{
    DEFAULT_REPLICATION, MIGRATIONS, STORE_SCHEMA_VERSION, ScyllaOptions, ScyllaStore,
    connect_session, migrate, migrate_to, migrations,
};
use ringlimit_protocol::admin::{Granularity, KeyStatus, Metadata};
use ringlimit_protocol::pipeline::{Alert, BillingRecord, DeliveryState, Violation};
use scylla::client::session::Session;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

const ENV_ADDR: &str = "RINGLIMIT_TEST_CQL";
/// Keyspaces of this prefix older than this are leftovers of killed runs.
const STALE_AFTER_SECS: u64 = 2 * 3_600;

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The CQL server's address. Fails under CI (or `RINGLIMIT_REQUIRE_SERVERS`)
/// when it is not given; otherwise ends the test binary with a notice.
fn cql_addr() -> String {
    match std::env::var(ENV_ADDR) {
        Ok(a) if !a.trim().is_empty() => a.trim().to_owned(),
        _ if env_flag("CI") || env_flag("RINGLIMIT_REQUIRE_SERVERS") => panic!(
            "{ENV_ADDR} is not set, but CI / RINGLIMIT_REQUIRE_SERVERS requires the ScyllaDB adapter to be tested against a \
             real CQL server: start one (addr=$(scripts/cassandra.sh start <dir>)) and set {ENV_ADDR}=$addr"
        ),
        _ => {
            // Straight to the process's stderr: libtest captures eprintln! of tests.
            let _ = writeln!(
                std::io::stderr(),
                "\nSKIPPED: conformance_scylla: {ENV_ADDR} is not set, so the ScyllaDB adapter tests did not run.\n\
                 Start a CQL server (addr=$(scripts/cassandra.sh start <dir>)) and set {ENV_ADDR}=$addr to run them.\n\
                 (Under CI, or with RINGLIMIT_REQUIRE_SERVERS=1, they fail instead.)\n"
            );
            std::process::exit(0)
        }
    }
}

fn test_opts() -> ScyllaOptions {
    ScyllaOptions {
        consistency: scylla::statement::Consistency::One,
        ..ScyllaOptions::default()
    }
}

/// A keyspace name no other test (of this or another process) uses.
fn unique_keyspace() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let secs = ringlimit_actors::clock::wall_ms() / 1_000;
    format!(
        "rl_test_{secs}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn exec(session: &Session, cql: &str) {
    let mut st = scylla::statement::Statement::new(cql);
    st.set_request_timeout(Some(Duration::from_secs(60)));
    session
        .query_unpaged(st, ())
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"));
}

async fn keyspaces(session: &Session) -> Vec<String> {
    let rows = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
        .await
        .expect("list keyspaces")
        .into_rows_result()
        .expect("rows");
    rows.rows::<(String,)>()
        .expect("typed rows")
        .map(|r| r.expect("row").0)
        .collect()
}

/// Drops `rl_test_*` keyspaces left by killed runs (once per process).
async fn drop_stale_keyspaces(session: &Session) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let now = ringlimit_actors::clock::wall_ms() / 1_000;
    for ks in keyspaces(session).await {
        let Some(rest) = ks.strip_prefix("rl_test_") else {
            continue;
        };
        let created: u64 = rest
            .split('_')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if created.saturating_add(STALE_AFTER_SECS) < now {
            exec(session, &format!("DROP KEYSPACE IF EXISTS \"{ks}\"")).await;
        }
    }
}

/// Drops its keyspace when dropped (after the store: see `Fixture`).
struct KeyspaceGuard {
    session: Arc<Session>,
    keyspace: String,
    handle: tokio::runtime::Handle,
}

impl Drop for KeyspaceGuard {
    fn drop(&mut self) {
        let (session, cql) = (
            Arc::clone(&self.session),
            format!("DROP KEYSPACE IF EXISTS \"{}\"", self.keyspace),
        );
        let handle = self.handle.clone();
        let t = ringlimit_actors::clock::monotonic();
        // Dropped inside the test's `block_on` on a multi-threaded runtime:
        // block_in_place lets us wait for the drop here.
        let result = tokio::task::block_in_place(move || {
            handle.block_on(async move {
                let mut st = scylla::statement::Statement::new(cql);
                st.set_request_timeout(Some(Duration::from_secs(60)));
                session
                    .query_unpaged(st, ())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        });
        eprintln!("keyspace {} dropped in {:?}", self.keyspace, t.elapsed());
        if let Err(e) = result {
            // Never panic in drop (it may run while unwinding); the next run cleans up.
            let _ = writeln!(
                std::io::stderr(),
                "warning: could not drop test keyspace {}: {e}",
                self.keyspace
            );
        }
    }
}

/// A migrated, empty store on its own keyspace.
async fn fresh() -> Fixture {
    let (store, guard) = fresh_store().await;
    Fixture::with_guard(store, guard)
}

/// A migrated, empty store on its own keyspace, and the guard that drops it.
async fn fresh_store() -> (ScyllaStore, KeyspaceGuard) {
    let addr = cql_addr();
    let session = Arc::new(
        connect_session(&[addr], &test_opts())
            .await
            .expect("connect to the CQL server"),
    );
    drop_stale_keyspaces(&session).await;
    let keyspace = unique_keyspace();
    let guard = KeyspaceGuard {
        session: Arc::clone(&session),
        keyspace: keyspace.clone(),
        handle: tokio::runtime::Handle::current(),
    };
    let t = ringlimit_actors::clock::monotonic();
    // The migrations the store needs; the runner itself is tested below.
    migrate_to(
        &session,
        &keyspace,
        DEFAULT_REPLICATION,
        STORE_SCHEMA_VERSION,
    )
    .await
    .expect("migrate");
    let store = ScyllaStore::with_session(
        session,
        &keyspace,
        ScyllaOptions {
            migrate: false,
            ..test_opts()
        },
    )
    .await
    .expect("prepare");
    eprintln!("keyspace {keyspace} migrated in {:?}", t.elapsed());
    (store, guard)
}

ringlimit_actors::storage_conformance_suite!(fresh);

#[test]
fn suite_has_scenarios() {
    assert!(SCENARIOS.len() >= 15, "{SCENARIOS:?}");
}

// ---------------------------------------------------------------- adapter specifics

fn key_with(id: &str, owner: &str, status: KeyStatus) -> KeyRecord {
    KeyRecord {
        owner: owner.to_owned(),
        status,
        ..sample_key(id)
    }
}

/// The suite's key ids all start with `k` (one listing partition); here ids
/// spread over many first bytes, including multi-byte UTF-8, so listing must
/// walk the shards in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_walks_shards_in_key_id_order() {
    let (store, _guard) = fresh_store().await;
    let mut ids: Vec<String> = [
        "0",
        "09",
        "A",
        "Z_",
        "a",
        "a0",
        "b-1",
        "k",
        "k10",
        "z",
        "zz",
        "\u{e9}t\u{e9}",
        "\u{1f511}",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // And a few hundred generated-looking ids.
    for i in 0..150u32 {
        let c = b"abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 % 36) as usize] as char;
        ids.push(format!("{c}{i:05}"));
    }
    // Put in a scrambled order, owners alternating.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|i| (i * 37) % ids.len());
    for &i in &order {
        let owner = if i % 3 == 0 { "alice" } else { "bob" };
        store
            .put_key(&key_with(&ids[i], owner, KeyStatus::Active))
            .await
            .expect("put_key");
    }
    let owner_of = |id: &str| {
        let i = ids.iter().position(|x| x == id).expect("known id");
        if i % 3 == 0 { "alice" } else { "bob" }
    };
    let mut sorted = ids.clone();
    sorted.sort();

    for (filter, want) in [
        (Default::default(), sorted.clone()),
        (
            ringlimit_actors::storage::KeyFilter {
                owner: Some("alice".into()),
                ..Default::default()
            },
            sorted
                .iter()
                .filter(|id| owner_of(id) == "alice")
                .cloned()
                .collect::<Vec<_>>(),
        ),
    ] {
        for page_size in [1usize, 7, 1_000] {
            let mut got = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = store
                    .list_keys(&filter, cursor.as_deref(), page_size)
                    .await
                    .expect("list_keys");
                assert!(page.len() <= page_size);
                if page.is_empty() {
                    break;
                }
                cursor = page.last().map(|k| k.key_id.clone());
                got.extend(page.into_iter().map(|k| k.key_id));
                assert!(got.len() <= want.len(), "more keys than put");
            }
            assert_eq!(got, want, "page size {page_size}, {filter:?}");
        }
    }
    // Cursors that fall between shards, before all and after all.
    let after = |c: &str, n: usize| {
        let store = store.clone();
        let c = c.to_owned();
        async move {
            store
                .list_keys(&Default::default(), Some(&c), n)
                .await
                .expect("list_keys")
                .into_iter()
                .map(|k| k.key_id)
                .collect::<Vec<_>>()
        }
    };
    for c in ["!", "0", "00", "1", "Y", "a", "a0", "k0", "y", "z"] {
        let want: Vec<String> = sorted
            .iter()
            .filter(|id| id.as_str() > c)
            .take(3)
            .cloned()
            .collect();
        assert_eq!(after(c, 3).await, want, "after {c:?}");
    }
    assert_eq!(after("Y", 2).await, ["Z_", "a"]);
    assert_eq!(after("zz", 5).await, ["\u{e9}t\u{e9}", "\u{1f511}"]);
    assert!(after("\u{1f511}", 5).await.is_empty());
    assert_eq!(after("", 1).await, ["0"], "an empty cursor is no cursor");
    assert_eq!(
        store.load_all_keys().await.expect("load_all_keys").len(),
        ids.len()
    );
}

/// An empty key id finds nothing and is refused on write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_key_id_is_refused() {
    let (store, _guard) = fresh_store().await;
    store.put_key(&sample_key("k1")).await.expect("put_key");
    assert_eq!(store.get_key("").await.expect("empty id"), None);
    assert!(
        store.put_key(&sample_key("")).await.is_err(),
        "an empty key id is refused"
    );
}

/// History across many partitions (days, 32-day hour periods), batches larger
/// than one CQL batch, and a row repeated with different values in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_across_partitions_and_large_batches() {
    let (store, _guard) = fresh_store().await;
    const MIN: u64 = 60_000;
    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 86_400_000;
    let t0 = 1_699_999_980_000 - 1_699_999_980_000 % DAY;
    let row = |g: Granularity, start: u64, writer: &str, units: u64| UsageRow {
        key_id: "k1".into(),
        granularity: g,
        bucket_start_ms: start,
        writer: writer.into(),
        units,
    };

    // 3 days of minutes around midnights, 100 rows per writer and day: several CQL batches per partition.
    let mut rows = Vec::new();
    for d in 0..3 {
        for m in 0..100 {
            let start = t0 + d * DAY + DAY - 50 * MIN + m * MIN; // crosses the next midnight
            rows.push(row(Granularity::Minute, start, "a", 1));
            rows.push(row(Granularity::Minute, start, "b", 2));
        }
    }
    // The same row twice in one call: the last value wins.
    rows.push(row(Granularity::Minute, t0 + DAY, "a", 40));
    store.write_usage(&rows).await.expect("write_usage");
    let hist = store
        .usage_history("k1", Granularity::Minute, 0, u64::MAX)
        .await
        .expect("history");
    // 3 × 100 buckets, but day d's last 50 overlap day d+1's first 50.
    let mut want: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for d in 0..3 {
        for m in 0..100 {
            *want
                .entry(t0 + d * DAY + DAY - 50 * MIN + m * MIN)
                .or_default() = 3;
        }
    }
    *want.get_mut(&(t0 + DAY)).expect("bucket") = 42;
    let got: Vec<(u64, u64)> = hist.iter().map(|b| (b.start_ms, b.units)).collect();
    assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    // A window inside one partition, and one across a midnight.
    let part = store
        .usage_history(
            "k1",
            Granularity::Minute,
            t0 + DAY + MIN,
            t0 + DAY + 4 * MIN,
        )
        .await
        .expect("history");
    assert_eq!(part.iter().map(|b| b.units).collect::<Vec<_>>(), [3, 3, 3]);
    let across = store
        .usage_history(
            "k1",
            Granularity::Minute,
            t0 + DAY - 2 * MIN,
            t0 + DAY + 2 * MIN,
        )
        .await
        .expect("history");
    assert_eq!(
        across.iter().map(|b| b.units).collect::<Vec<_>>(),
        [3, 3, 42, 3]
    );

    // Hours over 100 days (several 32-day partitions), days over 3 years (two 1024-day partitions).
    let hours: Vec<UsageRow> = (0..100)
        .map(|d| row(Granularity::Hour, t0 + d * DAY + 5 * HOUR, "a", d + 1))
        .collect();
    let days: Vec<UsageRow> = (0..1_100)
        .step_by(100)
        .map(|d| row(Granularity::Day, t0 + d * DAY, "a", d + 1))
        .collect();
    store.write_usage(&hours).await.expect("write hours");
    store.write_usage(&days).await.expect("write days");
    let h = store
        .usage_history("k1", Granularity::Hour, t0, t0 + 100 * DAY)
        .await
        .expect("hours");
    assert_eq!(h.len(), 100);
    assert_eq!(
        h.iter().map(|b| b.units).sum::<u64>(),
        (1..=100).sum::<u64>()
    );
    assert!(
        h.windows(2).all(|w| w[0].start_ms < w[1].start_ms),
        "time order"
    );
    let d = store
        .usage_history("k1", Granularity::Day, 0, u64::MAX)
        .await
        .expect("days");
    assert_eq!(
        d.iter().map(|b| b.start_ms).collect::<Vec<_>>(),
        days.iter().map(|r| r.bucket_start_ms).collect::<Vec<_>>()
    );

    // Out-of-range values are refused, not wrapped.
    let err = store
        .write_usage(&[row(Granularity::Minute, u64::MAX, "a", 1)])
        .await
        .expect_err("bucket out of range");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let err = store
        .write_usage(&[row(Granularity::Minute, t0, "a", u64::MAX)])
        .await
        .expect_err("units out of range");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

// ---------------------------------------------------------------- pipelines and retention

fn everything() -> Range {
    Range {
        from_ms: 0,
        to_ms: u64::MAX,
        offset: 0,
        limit: 100,
    }
}

fn violation(id: &str, key_id: &str, at_ms: u64) -> Violation {
    Violation {
        id: id.to_owned(),
        key_id: key_id.to_owned(),
        limit_name: "rps".into(),
        node: "n1".into(),
        at_ms,
        client_ip: None,
        cost: 1,
    }
}

fn alert(id: &str, raised_at_ms: u64) -> Alert {
    Alert {
        id: id.to_owned(),
        raised_at_ms,
        key_id: Some("k1".into()),
        kind: "overage".into(),
        severity: "info".into(),
        message: "m".into(),
        details: serde_json::Value::Null,
        delivery: DeliveryState::Stored,
        attempts: 0,
        last_attempt_at_ms: None,
    }
}

fn billing(key_id: &str, period_start_ms: u64) -> BillingRecord {
    BillingRecord {
        key_id: key_id.to_owned(),
        period_start_ms,
        period_end_ms: period_start_ms.saturating_add(1),
        owner: "acme".into(),
        tier: "free".into(),
        units: 1,
        included_units: 0,
        overage_units: 1,
        unit_price_nanos: 1,
        amount_nanos: 1,
        currency: "EUR".into(),
        computed_at_ms: period_start_ms.saturating_add(2),
        computed_by: "n1".into(),
    }
}

/// The TTLs of the rows of `table` (one column), e.g. `SELECT TTL(units) …`.
async fn ttls(store: &ScyllaStore, cql: &str) -> Vec<i32> {
    let cql = cql.replace("{ks}", &format!("\"{}\"", store.keyspace()));
    let rows = store
        .session()
        .query_unpaged(cql.as_str(), ())
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
        .into_rows_result()
        .expect("rows");
    rows.rows::<(Option<i32>,)>()
        .expect("typed")
        .map(|r| r.expect("row").0.unwrap_or(0))
        .collect()
}

/// Usage rows and violations carry the TTL of the configured retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_carry_the_retention_ttls() {
    let (plain, _guard) = fresh_store().await;
    const DAY_S: u64 = 86_400;
    let retention = Retention {
        minute: Duration::from_secs(2 * DAY_S),
        hour: Duration::from_secs(3 * DAY_S),
        day: Duration::from_secs(4 * DAY_S),
        violations: Duration::from_secs(5 * DAY_S),
    };
    let store = ScyllaStore::with_session(
        Arc::clone(plain.session()),
        plain.keyspace(),
        ScyllaOptions {
            migrate: false,
            retention,
            ..test_opts()
        },
    )
    .await
    .expect("store with a retention");
    let t0 = 1_699_999_980_000u64;
    let rows: Vec<UsageRow> = Granularity::all()
        .into_iter()
        .map(|g| UsageRow {
            key_id: "k1".into(),
            granularity: g,
            bucket_start_ms: t0 - t0 % g.millis(),
            writer: "w".into(),
            units: 1,
        })
        .collect();
    store.write_usage(&rows).await.expect("write_usage");
    store
        .write_violations(&[violation("v1", "k1", t0)])
        .await
        .expect("write_violations");
    // A TTL just written is its full value, less a second or two of clock.
    let near = |got: &[i32], want: u64| {
        assert!(!got.is_empty(), "no rows");
        let want = i32::try_from(want).expect("ttl");
        assert!(
            got.iter().all(|&t| t <= want && t >= want - 60),
            "TTLs {got:?}, want about {want}"
        );
    };
    // (The index tables have only key columns, whose TTL CQL cannot select;
    // their TTLs are unit-tested in the store.)
    for (table, days) in [("usage_minute", 2), ("usage_hour", 3), ("usage_day", 4)] {
        near(
            &ttls(&store, &format!("SELECT TTL(units) FROM {{ks}}.{table}")).await,
            days * DAY_S,
        );
    }
    near(
        &ttls(&store, "SELECT TTL(key_id) FROM {ks}.violations_by_day").await,
        5 * DAY_S,
    );
    near(
        &ttls(&store, "SELECT TTL(limit_name) FROM {ks}.violations_by_key").await,
        5 * DAY_S,
    );
}

/// Values the columns cannot hold and empty ids are refused with an error,
/// never wrapped, stored half or panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_bad_input_is_refused() {
    let (store, _guard) = fresh_store().await;
    let backend = |r: Result<(), StoreError>, what: &str| match r {
        Err(StoreError::Backend(_)) => {}
        other => panic!("{what}: {other:?}"),
    };
    backend(
        store
            .write_violations(&[violation("v1", "k1", u64::MAX)])
            .await,
        "violation time",
    );
    backend(
        store.write_violations(&[violation("", "k1", 1)]).await,
        "empty violation id",
    );
    backend(
        store
            .write_violations(&[Violation {
                cost: u64::MAX,
                ..violation("v2", "k1", 1)
            }])
            .await,
        "violation cost",
    );
    assert!(
        store
            .list_violations(None, everything())
            .await
            .expect("list")
            .is_empty(),
        "a refused batch writes nothing"
    );
    backend(store.put_alert(&alert("", 1)).await, "empty alert id");
    backend(
        store
            .put_alert(&Alert {
                attempts: u32::MAX,
                ..alert("a1", 1)
            })
            .await,
        "attempts",
    );
    backend(store.put_billing(&billing("", 1)).await, "empty key id");
    backend(
        store.put_billing(&billing("k1", u64::MAX)).await,
        "period start",
    );
    assert_eq!(store.get_alert("").await.expect("get"), None);
    assert_eq!(store.get_billing("", 1).await.expect("get"), None);
    assert_eq!(store.get_billing("k1", u64::MAX).await.expect("get"), None);
    assert!(!store.delete_block("").await.expect("delete"));
    assert!(!store.delete_dead_letter("").await.expect("delete"));
    assert!(
        store
            .list_alerts(Some(""), everything())
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .list_billing_for_period(u64::MAX)
            .await
            .expect("list")
            .is_empty()
    );
    // Violations at the epoch and in 2100, listed over an open range: only the
    // two days that hold data are read, not the 47 000 between.
    store
        .write_violations(&[
            violation("old", "k1", 0),
            violation("new", "k1", 4_102_444_800_000),
        ])
        .await
        .expect("write");
    let got: Vec<String> = store
        .list_violations(Some("k1"), everything())
        .await
        .expect("list")
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(got, ["new", "old"]);
}

// ---------------------------------------------------------------- migrations

/// Migrating twice is a no-op the second time; versions and checksums are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_are_recorded() {
    let addr = cql_addr();
    let session = Arc::new(
        connect_session(std::slice::from_ref(&addr), &test_opts())
            .await
            .expect("connect"),
    );
    let keyspace = unique_keyspace();
    let guard = KeyspaceGuard {
        session: Arc::clone(&session),
        keyspace: keyspace.clone(),
        handle: tokio::runtime::Handle::current(),
    };
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();

    // Nothing there yet: a store that must not migrate refuses clearly.
    let err = ScyllaStore::with_session(
        Arc::clone(&session),
        &keyspace,
        ScyllaOptions {
            migrate: false,
            ..test_opts()
        },
    )
    .await
    .expect_err("no schema");
    assert!(
        matches!(err, StoreError::Backend(ref m) if m.contains("ringlimit migrate")),
        "{err:?}"
    );
    assert!(
        migrations::applied_versions(&session, &keyspace)
            .await
            .expect("versions")
            .is_empty()
    );

    // Up to a version, then the rest.
    let partial = migrate_to(&session, &keyspace, DEFAULT_REPLICATION, 2)
        .await
        .expect("migrate to 2");
    assert_eq!(partial.applied, [1, 2]);
    let err = ScyllaStore::with_session(
        Arc::clone(&session),
        &keyspace,
        ScyllaOptions {
            migrate: false,
            ..test_opts()
        },
    )
    .await
    .expect_err("schema too old");
    assert!(
        matches!(err, StoreError::Backend(ref m) if m.contains("[3, 4, 5, 6]")),
        "{err:?}"
    );
    let rest = migrate(&session, &keyspace, DEFAULT_REPLICATION)
        .await
        .expect("the rest");
    assert_eq!(rest.applied, all[2..]);
    assert_eq!(rest.already_applied, [1, 2]);
    drop(guard);
    // And from scratch on a fresh keyspace.
    let keyspace = unique_keyspace();
    let _guard = KeyspaceGuard {
        session: Arc::clone(&session),
        keyspace: keyspace.clone(),
        handle: tokio::runtime::Handle::current(),
    };

    let t = ringlimit_actors::clock::monotonic();
    let first = migrate(&session, &keyspace, DEFAULT_REPLICATION)
        .await
        .expect("first migrate");
    eprintln!("first migration run: {:?}", t.elapsed());
    assert_eq!(first.applied, all);
    assert!(
        first.already_applied.is_empty() && first.changed_since_applied.is_empty(),
        "{first:?}"
    );

    let t = ringlimit_actors::clock::monotonic();
    let second = migrate(&session, &keyspace, DEFAULT_REPLICATION)
        .await
        .expect("second migrate");
    eprintln!("second migration run: {:?}", t.elapsed());
    assert!(second.applied.is_empty(), "second run applied {second:?}");
    assert_eq!(second.already_applied, all);
    assert!(second.changed_since_applied.is_empty());

    let recorded = migrations::applied_versions(&session, &keyspace)
        .await
        .expect("versions");
    assert_eq!(recorded.keys().copied().collect::<Vec<_>>(), all);
    for m in MIGRATIONS {
        assert_eq!(recorded[&m.version], m.checksum(), "checksum of {}", m.name);
    }

    // Every table is there, with the options of the shared schema.
    let rows = session
        .query_unpaged(
            "SELECT table_name, default_time_to_live FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace.as_str(),),
        )
        .await
        .expect("tables")
        .into_rows_result()
        .expect("rows");
    let tables: std::collections::BTreeMap<String, i32> = rows
        .rows::<(String, i32)>()
        .expect("typed")
        .map(|r| r.expect("row"))
        .collect();
    for t in [
        "schema_migrations",
        "keys",
        "keys_by_page",
        "tiers",
        "counter_snapshots",
        "usage_minute",
        "usage_hour",
        "usage_day",
        "usage_partitions",
        "pipeline_days",
        "violations_by_day",
        "violations_by_key",
        "ip_blocks",
        "audit_by_day",
        "alert_records",
        "alerts_by_day",
        "alerts_by_key_time",
        "dead_letter_records",
        "dead_letters_by_day",
        "billing_by_key",
        "billing_by_period",
    ] {
        assert!(tables.contains_key(t), "table {t} missing: {tables:?}");
    }
    // 0006 dropped the unused tables of 0005, 0007 `keys_by_hash` of 0002.
    for t in [
        "keys_by_hash",
        "violations",
        "alerts",
        "alerts_by_key",
        "billing_records",
        "billing_by_owner",
        "audit_log",
        "dead_letters",
    ] {
        assert!(!tables.contains_key(t), "table {t} not dropped: {tables:?}");
    }
    assert_eq!(tables["usage_minute"], 30 * 86_400);
    assert!(
        tables["usage_hour"] > tables["usage_minute"] && tables["usage_day"] > tables["usage_hour"]
    );
    let rows = session
        .query_unpaged("SELECT compaction FROM system_schema.tables WHERE keyspace_name = ? AND table_name = 'usage_minute'", (keyspace.as_str(),))
        .await
        .expect("compaction")
        .into_rows_result()
        .expect("rows");
    let (compaction,): (std::collections::HashMap<String, String>,) =
        rows.single_row().expect("one row");
    assert!(
        compaction
            .get("class")
            .is_some_and(|c| c.ends_with("TimeWindowCompactionStrategy")),
        "{compaction:?}"
    );

    // The migrated keyspace serves a store that does not migrate.
    let store = ScyllaStore::with_session(
        Arc::clone(&session),
        &keyspace,
        ScyllaOptions {
            migrate: false,
            ..test_opts()
        },
    )
    .await
    .expect("store on the migrated keyspace");
    store.ping().await.expect("ping");
    assert!(
        store
            .load_all_keys()
            .await
            .expect("load_all_keys")
            .is_empty()
    );

    // Connecting (which migrates) again changes nothing either.
    let again = ScyllaStore::connect(&[addr], &keyspace.to_uppercase(), test_opts())
        .await
        .expect("connect again");
    assert_eq!(again.keyspace(), keyspace);
    assert_eq!(
        migrations::applied_versions(&session, &keyspace)
            .await
            .expect("versions"),
        recorded
    );
}

// ---------------------------------------------------------------- failing fast

fn fast_opts() -> ScyllaOptions {
    ScyllaOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        operation_timeout: Duration::from_secs(2),
        ..test_opts()
    }
}

/// A closed port: connect fails at once with `Unavailable`. Needs no server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_unavailable_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    // The listener is dropped: nothing listens on `port` any more.
    let t = ringlimit_actors::clock::monotonic();
    let err = ScyllaStore::connect(&[format!("127.0.0.1:{port}")], "rl_closed", fast_opts())
        .await
        .expect_err("no server");
    let took = t.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    eprintln!("closed port: {err} after {took:?}");
}

/// A server that accepts connections but never answers: connect gives up
/// within its bound with `Unavailable`. Needs no server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_is_unavailable_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock); // never read, never answer
        }
    });
    let opts = fast_opts();
    // connect_timeout × (nodes + 1) + request_timeout, see connect_session.
    let bound = opts.connect_timeout * 2 + opts.request_timeout;
    let t = ringlimit_actors::clock::monotonic();
    let err = ScyllaStore::connect(&[addr.to_string()], "rl_silent", opts)
        .await
        .expect_err("silent server");
    let took = t.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        took <= bound + Duration::from_millis(500),
        "took {took:?}, bound {bound:?}"
    );
    eprintln!("silent server: {err} after {took:?}");
    holder.abort();
}

/// A unresolvable host name fails with an error, not a hang. Needs no server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_fails_fast() {
    let t = ringlimit_actors::clock::monotonic();
    let err = ScyllaStore::connect(
        &["no-such-host.invalid:9042".to_owned()],
        "rl_nohost",
        fast_opts(),
    )
    .await
    .expect_err("unknown host");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    eprintln!("unknown host: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_before_connecting() {
    let err = ScyllaStore::connect(&["127.0.0.1:1".to_owned()], "bad-name", fast_opts())
        .await
        .expect_err("bad keyspace");
    assert!(
        matches!(err, StoreError::Backend(ref m) if m.contains("keyspace")),
        "{err:?}"
    );
    let err = ScyllaStore::connect(&[], "rl", fast_opts())
        .await
        .expect_err("no nodes");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

// ---------------------------------------------------------------- outage through a proxy

fn sample_key(id: &str) -> KeyRecord {
    KeyRecord {
        key_id: id.to_owned(),
        owner: "acme".into(),
        tier: "free".into(),
        status: KeyStatus::Active,
        limits: None,
        metadata: Metadata::new(),
        secret_hash: SecretHash::of(id),
        previous_hash: None,
        previous_expires_at_ms: None,
        created_at_ms: 1,
        updated_at_ms: 1,
        suspended_until_ms: None,
        suspended_reason: None,
    }
}

/// Every kind of operation, each returning its error if any.
async fn touch_everything(store: &ScyllaStore, i: u64) -> Vec<Result<(), StoreError>> {
    let row = UsageRow {
        key_id: "k1".into(),
        granularity: Granularity::Minute,
        bucket_start_ms: 60_000 * i,
        writer: "w".into(),
        units: i,
    };
    vec![
        store.put_key(&sample_key(&format!("k{i}"))).await,
        store.get_key("k1").await.map(drop),
        store
            .list_keys(&Default::default(), None, 10)
            .await
            .map(drop),
        store.save_snapshots(&[("k1".into(), vec![i as u8])]).await,
        store.load_snapshot("k1").await.map(drop),
        store.write_usage(&[row]).await,
        store
            .usage_history("k1", Granularity::Minute, 0, u64::MAX)
            .await
            .map(drop),
        store
            .write_violations(&[violation(&format!("v{i}"), "k1", 60_000 * i)])
            .await,
        store
            .list_violations(Some("k1"), everything())
            .await
            .map(drop),
        store.put_alert(&alert(&format!("a{i}"), 60_000 * i)).await,
        store.list_alerts(None, everything()).await.map(drop),
        store.list_blocks().await.map(drop),
        store.put_billing(&billing("k1", 60_000 * i)).await,
    ]
}

/// The server goes down, then hangs, then comes back: every operation fails
/// with `Unavailable` within its bound while it is away, and works again once
/// it is back, on the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_and_recovers() {
    let addr = cql_addr();
    let proxy = Proxy::start(addr.clone()).await;
    let admin = Arc::new(
        connect_session(&[addr], &test_opts())
            .await
            .expect("connect"),
    );
    let keyspace = unique_keyspace();
    let _guard = KeyspaceGuard {
        session: Arc::clone(&admin),
        keyspace: keyspace.clone(),
        handle: tokio::runtime::Handle::current(),
    };
    migrate(&admin, &keyspace, DEFAULT_REPLICATION)
        .await
        .expect("migrate");
    let opts = ScyllaOptions {
        request_timeout: Duration::from_millis(500),
        operation_timeout: Duration::from_millis(1_500),
        scan_timeout: Duration::from_millis(1_500),
        migrate: false,
        ..test_opts()
    };
    let store = ScyllaStore::connect(&[proxy.addr.to_string()], &keyspace, opts.clone())
        .await
        .expect("connect via proxy");
    // The driver must talk to the node through the proxy only (one node: the
    // contact point is the node's address).
    for r in touch_everything(&store, 1).await {
        r.expect("operation while up");
    }

    for (mode, name) in [(Mode::Down, "down"), (Mode::Hung, "hung")] {
        proxy.set(mode);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = ringlimit_actors::clock::monotonic();
        let results = touch_everything(&store, 2).await;
        let took = t.elapsed();
        for (i, r) in results.iter().enumerate() {
            match r {
                Err(StoreError::Unavailable(_)) => {}
                other => panic!("{name}: operation #{i} gave {other:?}, expected Unavailable"),
            }
        }
        // Each operation bounded by operation_timeout (= scan_timeout here).
        let n = u32::try_from(results.len()).expect("few operations");
        assert!(
            took <= opts.operation_timeout * n + Duration::from_secs(1),
            "{name}: took {took:?}"
        );
        eprintln!(
            "{name}: {n} operations failed with Unavailable in {took:?}; e.g. {:?}",
            results[1]
        );
        if mode == Mode::Down {
            assert!(
                took < Duration::from_secs(1),
                "a stopped server must fail at once, took {took:?}"
            );
        }

        // Back up: the same store recovers by itself.
        proxy.set(Mode::Up);
        let t = ringlimit_actors::clock::monotonic();
        loop {
            let results = touch_everything(&store, 3).await;
            if results.iter().all(Result::is_ok) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{name}: no recovery after 30 s: {results:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "{name}: recovered {:?} after the server came back",
            t.elapsed()
        );
    }
    assert_eq!(
        store.get_key("k3").await.expect("get_key"),
        Some(sample_key("k3"))
    );
}
