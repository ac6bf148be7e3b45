//! The ScyllaDB store: the storage traits over CQL, with the `scylla` driver.
//!
//! The same code and the same schema (`cql/`, see [`migrations`]) run on
//! ScyllaDB (the production target) and on Apache Cassandra 5 (the CI
//! stand-in): plain CQL, protocol v4, no ScyllaDB-only options, no LWT, no
//! CQL counters, no materialized views or secondary indexes.
//!
//! # Connecting
//! [`ScyllaStore::connect`] builds a session (contact points `host:port`,
//! per-request client timeout, per-connection connect timeout, the driver's
//! default retry policy, token-aware load balancing, client-side monotonic
//! write timestamps), runs the migrations (unless
//! [`ScyllaOptions::migrate`] is off, in which case it checks that migrations
//! 1 to [`STORE_SCHEMA_VERSION`] are applied) and prepares every statement
//! once. `ringlimit migrate` calls [`migrate_cluster`].
//! Every statement is idempotent (upserts of absolute values, deletes,
//! reads) and is marked so, which lets the retry policy retry it after a
//! timeout. Each trait call is also bounded as a whole
//! ([`ScyllaOptions::operation_timeout`], or
//! [`ScyllaOptions::scan_timeout`] for full scans), so nothing hangs when the
//! cluster does: a down, unreachable or hung cluster gives
//! [`StoreError::Unavailable`] within those bounds.
//!
//! # Tables (see `cql/` for the full schema)
//! | table               | key                                         | value |
//! |---------------------|---------------------------------------------|-------|
//! | `keys`              | `key_id`                                    | JSON of [`KeyRecord`] in `record`; owner, tier, status copied into columns |
//! | `keys_by_hash`      | `secret_hash` (raw 32 bytes)                | `key_id` |
//! | `keys_by_page`      | `((shard), key_id)`, shard = first byte of key_id | owner, tier, status |
//! | `tiers`             | `name`                                      | JSON of the limits |
//! | `counter_snapshots` | `key_id`                                    | snapshot blob |
//! | `usage_minute` / `usage_hour` / `usage_day` | `((key_id, day), bucket_start, writer)` | absolute `units` |
//! | `usage_partitions`  | `((key_id, granularity), day)`              | — (which usage partitions exist) |
//! | `pipeline_days`     | `((stream, key_id), day DESC)`              | — (which days of a pipeline stream hold data) |
//! | `violations_by_day` / `violations_by_key` | `((day), at_ms DESC, id DESC)` / `((key_id, day), …)` | the violation's fields |
//! | `ip_blocks`         | `((part = 0), id)`                          | the block's fields |
//! | `audit_by_day`      | `((day), at_ms DESC, id DESC)`              | the entry's fields, `details` JSON |
//! | `alert_records`     | `id`                                        | the alert's fields, `details` JSON |
//! | `alerts_by_day` / `alerts_by_key_time` | `((day), raised_at_ms DESC, id DESC)` / `((key_id), …)` | — |
//! | `dead_letter_records` | `id`                                      | the dead letter's fields |
//! | `dead_letters_by_day` | `((day), failed_at_ms DESC, id DESC)`     | — |
//! | `billing_by_key` / `billing_by_period` | `((key_id), period_start_ms DESC)` / `((period_start_ms), key_id)` | the record's fields |
//!
//! The pipeline tables (violations, blocks, audit, alerts, dead letters,
//! billing) are described in [`pipeline`].
//!
//! ## Keys
//! - `put_key` reads the old record, writes the hash index entries of the new
//!   hashes, then the record and its listing row, then deletes the index
//!   entries of hashes the key no longer has. `key_id_by_hash` confirms an
//!   index hit against the record (the hash must be its current or previous
//!   hash), so an entry left behind by an interrupted `put_key` never finds a
//!   key it should not.
//! - `list_keys` needs key_id order, which a scan of `keys` (token order) does
//!   not give. `keys_by_page` is partitioned by the first byte of the key_id:
//!   its partitions, read in increasing shard order and each in clustering
//!   order, give every key in key_id (byte) order. Generated key ids use
//!   `[a-z0-9]`, so there are about 36 partitions of small rows (about
//!   30 000 rows each per million keys). A page scans the listing rows from
//!   the cursor on, applies the filter to the copied owner/tier/status, reads
//!   the matching records from `keys` and checks the filter again on them.
//!   Filtered listing therefore reads every listing row after the cursor until
//!   the page is full: fine for the admin plane up to millions of keys, but
//!   not a query to run per request. Each page first lists the shards
//!   (`SELECT DISTINCT shard`, a scan of a few dozen partition keys).
//! - `load_all_keys` scans `keys` (paged) and sorts by key_id.
//!
//! ## Snapshots
//! A batch of snapshots is written as concurrent single-partition inserts
//! (at most [`ScyllaOptions::concurrency`] in flight); it is not atomic across
//! keys (a multi-partition batch would be), and the caller retries a failed
//! save as a whole (every write is idempotent).
//!
//! ## Usage history
//! Each row is one writer's absolute total for one bucket; rows of one
//! partition go in one unlogged single-partition batch (chunks of
//! [`USAGE_BATCH_ROWS`]); rows repeated in one call are de-duplicated, the
//! last one winning. Every row is written `USING TTL` the retention of its
//! granularity ([`ScyllaOptions::retention`]; the tables' own default TTLs
//! are not used). Partitions are time-bucketed: `day` is the first day of
//! a period of 1 (minute), 32 (hour) or 1024 (day) days. Before the data, the
//! partition is recorded in `usage_partitions` (with the data's TTL plus one
//! period and a day, so it outlives the data of its partition; recent index
//! writes are remembered in memory and not repeated for an hour). A history read lists the partitions of the range
//! from `usage_partitions` (so an open-ended range costs no more than the data
//! it finds), reads at most [`MAX_HISTORY_PARTITIONS`] of them concurrently,
//! sums the writers of each bucket and leaves out empty buckets. The HTTP
//! layer's limit of 10 000 buckets is at most 8 minute, 14 hour or 11 day
//! partitions.

pub mod errors;
pub mod migrations;
pub mod pipeline;

pub use migrations::{
    DEFAULT_REPLICATION, MIGRATIONS, Migration, MigrationReport, migrate, migrate_to,
};

/// The schema versions the store reads and writes: migrations 1 to this one.
pub const STORE_SCHEMA_VERSION: i32 = 6;

use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use ringlimit_actors::keys::{KeyRecord, SecretHash};
use ringlimit_actors::storage::{
    BucketSum, KeyFilter, KeyStore, Retention, SnapshotStore, StoreError, TierRecord, TierStore,
    UsageRow, UsageStore,
};
use ringlimit_protocol::LimitSpec;
use ringlimit_protocol::admin::{Granularity, UsageBucket};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, Statement};
use scylla::value::CqlTimestamp;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DAY_MS: u64 = 86_400_000;
/// Rows per unlogged single-partition batch of usage rows (about 3 KiB,
/// under Cassandra's default 5 KiB batch-size warning).
pub const USAGE_BATCH_ROWS: usize = 32;
/// The most usage partitions one history read may touch.
pub const MAX_HISTORY_PARTITIONS: usize = 1_024;
/// Rows per page of the scans (listing, load_all_keys, list_tiers).
const PAGE_SIZE: i32 = 1_000;
/// Partitions read concurrently by one history read.
const HISTORY_READ_CONCURRENCY: usize = 8;
/// How long a written `usage_partitions` row is trusted before it is written
/// again (which also refreshes its TTL).
const INDEX_REFRESH: Duration = Duration::from_secs(3_600);
/// Bound of the in-memory set of recently indexed partitions.
const INDEX_CACHE_MAX: usize = 200_000;
/// CQL-level keepalive interval and timeout of every connection.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// The largest TTL CQL accepts (20 years).
const MAX_TTL_SECS: i64 = 630_720_000;

/// Connection and behaviour settings of a [`ScyllaStore`].
#[derive(Clone)]
pub struct ScyllaOptions {
    /// Replication map used when the migrations create the keyspace
    /// (default [`DEFAULT_REPLICATION`], one replica; use
    /// `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}` or
    /// per-DC factors in production).
    pub replication: String,
    /// Run the migrations on connect (default true).
    pub migrate: bool,
    /// Client-side timeout of one request, retries included (default 2 s).
    pub request_timeout: Duration,
    /// Timeout of opening one connection (default 2 s).
    pub connect_timeout: Duration,
    /// Bound of one store operation (default 5 s).
    pub operation_timeout: Duration,
    /// Bound of full scans: `load_all_keys`, `list_keys`, `list_tiers` (default 60 s).
    pub scan_timeout: Duration,
    /// Consistency of every statement (default LOCAL_QUORUM).
    pub consistency: Consistency,
    /// Prefer the nodes of this data centre (recommended with several DCs).
    pub local_datacenter: Option<String>,
    /// Password authentication.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Writes in flight for one batch of snapshots or usage rows (default 32).
    pub concurrency: usize,
    /// How long usage buckets and violations are kept: every write of them
    /// carries `USING TTL` from here (default [`Retention::default`]).
    pub retention: Retention,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        ScyllaOptions {
            replication: DEFAULT_REPLICATION.to_owned(),
            migrate: true,
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            scan_timeout: Duration::from_secs(60),
            consistency: Consistency::LocalQuorum,
            local_datacenter: None,
            username: None,
            password: None,
            concurrency: 32,
            retention: Retention::default(),
        }
    }
}

impl std::fmt::Debug for ScyllaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaOptions")
            .field("replication", &self.replication)
            .field("migrate", &self.migrate)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("scan_timeout", &self.scan_timeout)
            .field("consistency", &self.consistency)
            .field("local_datacenter", &self.local_datacenter)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("concurrency", &self.concurrency)
            .field("retention", &self.retention)
            .finish()
    }
}

/// Builds a driver session to `nodes` (`host:port` each) with the timeouts,
/// retry and load-balancing policies of `opts`. Fails with
/// [`StoreError::Unavailable`] when no node answers, within a bounded time.
pub async fn connect_session(
    nodes: &[String],
    opts: &ScyllaOptions,
) -> Result<Session, StoreError> {
    if nodes.is_empty() {
        return Err(StoreError::Backend(
            "no ScyllaDB contact points given".into(),
        ));
    }
    let mut lb = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &opts.local_datacenter {
        lb = lb.prefer_datacenter(dc.clone()).permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .request_timeout(Some(opts.request_timeout))
        .consistency(opts.consistency)
        .retry_policy(Arc::new(DefaultRetryPolicy::new()))
        .load_balancing_policy(lb.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(opts.connect_timeout)
        .hostname_resolution_timeout(Some(opts.connect_timeout))
        .metadata_request_serverside_timeout(opts.request_timeout.max(Duration::from_secs(5)))
        .default_execution_profile_handle(profile.into_handle())
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
        // Find dead connections (a hung node, a lost handshake) in ~20 s
        // rather than the driver's default ~60 s.
        .keepalive_interval(KEEPALIVE)
        .keepalive_timeout(KEEPALIVE)
        .fetch_full_schema_metadata(false);
    if let (Some(user), Some(password)) = (&opts.username, &opts.password) {
        builder = builder.user(user.clone(), password.clone());
    }
    // The driver tries the contact points one after another; bound the whole.
    let n = u32::try_from(nodes.len()).unwrap_or(u32::MAX).min(8);
    let deadline = opts
        .connect_timeout
        .saturating_mul(n + 1)
        .saturating_add(opts.request_timeout);
    match tokio::time::timeout(deadline, builder.build()).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(e)) => Err(errors::new_session(e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "ScyllaDB connect: no answer from {} within {deadline:?}",
            nodes.join(",")
        ))),
    }
}

/// Connects and applies the migrations, for `ringlimit migrate`.
pub async fn migrate_cluster(
    nodes: &[String],
    keyspace: &str,
    opts: &ScyllaOptions,
) -> Result<MigrationReport, StoreError> {
    let session = connect_session(nodes, opts).await?;
    migrate(&session, keyspace, &opts.replication).await
}

/// The prepared statements, each prepared once at connect.
#[derive(Debug)]
struct Statements {
    get_key: PreparedStatement,
    put_key: PreparedStatement,
    put_page: PreparedStatement,
    get_hash: PreparedStatement,
    put_hash: PreparedStatement,
    del_hash: PreparedStatement,
    shards: PreparedStatement,
    page_after: PreparedStatement,
    page_all: PreparedStatement,
    all_keys: PreparedStatement,
    put_tier: PreparedStatement,
    all_tiers: PreparedStatement,
    put_snapshot: PreparedStatement,
    get_snapshot: PreparedStatement,
    del_snapshot: PreparedStatement,
    /// Indexed by [`gi`].
    put_usage: [PreparedStatement; 3],
    get_usage: [PreparedStatement; 3],
    put_partition: PreparedStatement,
    get_partitions: PreparedStatement,
}

/// A retention as a CQL TTL in seconds: at least 1 (a TTL of 0 would mean
/// "forever", the opposite of a zero retention) and at most [`MAX_TTL_SECS`].
fn ttl_secs(d: Duration) -> i32 {
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    i32::try_from(secs.clamp(1, MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

/// TTL of a `usage_partitions` row: it must outlive the data of its
/// partition, whose last rows may be written up to a period after the index
/// row (which is refreshed hourly).
fn usage_index_ttl(g: Granularity, data_ttl: i32) -> i32 {
    let margin = i64::try_from(period_days(g) * 86_400).unwrap_or(0) + 86_400;
    i32::try_from((i64::from(data_ttl) + margin).min(MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

/// The values of one usage row write: key, day, bucket start, writer, units, TTL.
type UsageCell<'a> = (&'a str, i64, i64, &'a str, i64, i32);

/// Index of a granularity in the per-granularity arrays.
fn gi(g: Granularity) -> usize {
    match g {
        Granularity::Minute => 0,
        Granularity::Hour => 1,
        Granularity::Day => 2,
    }
}

fn usage_table(g: Granularity) -> &'static str {
    match g {
        Granularity::Minute => "usage_minute",
        Granularity::Hour => "usage_hour",
        Granularity::Day => "usage_day",
    }
}

/// Days per usage partition.
fn period_days(g: Granularity) -> u64 {
    match g {
        Granularity::Minute => 1,
        Granularity::Hour => 32,
        Granularity::Day => 1_024,
    }
}

/// The `day` of the usage partition holding a bucket starting at `start_ms`.
fn partition_day(g: Granularity, start_ms: u64) -> i64 {
    let day = start_ms / DAY_MS;
    let first = day - day % period_days(g);
    i64::try_from(first).unwrap_or(i64::MAX)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The listing partition of a key id: its first byte.
fn shard_of(key_id: &str) -> i32 {
    key_id.as_bytes().first().map_or(0, |&b| i32::from(b))
}

/// The hashes a key is found by.
fn hashes(k: &KeyRecord) -> impl Iterator<Item = SecretHash> {
    std::iter::once(k.secret_hash).chain(k.previous_hash)
}

struct Inner {
    session: Arc<Session>,
    keyspace: String,
    opts: ScyllaOptions,
    st: Statements,
    /// Statements of the pipeline tables.
    pst: pipeline::Statements,
    /// TTL (seconds) of usage rows per granularity, from the retention.
    usage_ttl: [i32; 3],
    /// TTL (seconds) of `usage_partitions` rows per granularity.
    index_ttl: [i32; 3],
    /// Recently written `usage_partitions` rows: (granularity, key, day) → when.
    indexed: DashMap<(usize, String, i64), Instant>,
    /// Recently written `pipeline_days` rows: (stream, key, day) → when.
    days_indexed: DashMap<(&'static str, String, i64), Instant>,
}

/// The ScyllaDB (or Cassandra) store. Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.inner.keyspace)
            .finish_non_exhaustive()
    }
}

impl ScyllaStore {
    /// Connects to `nodes` (`host:port` each), applies the migrations to
    /// `keyspace` (unless `opts.migrate` is off) and prepares every statement.
    ///
    /// Fails with [`StoreError::Unavailable`] when the cluster cannot be
    /// reached (within about `connect_timeout × (nodes + 1) + request_timeout`),
    /// and with [`StoreError::Backend`] for bad settings or a schema that is
    /// not there (with `migrate` off).
    pub async fn connect(
        nodes: &[String],
        keyspace: &str,
        opts: ScyllaOptions,
    ) -> Result<Self, StoreError> {
        migrations::keyspace_ident(keyspace)?;
        let session = connect_session(nodes, &opts).await?;
        Self::with_session(Arc::new(session), keyspace, opts).await
    }

    /// Like [`connect`](Self::connect), over an existing session.
    pub async fn with_session(
        session: Arc<Session>,
        keyspace: &str,
        opts: ScyllaOptions,
    ) -> Result<Self, StoreError> {
        let ks = migrations::keyspace_ident(keyspace)?;
        if opts.migrate {
            let report = migrate(&session, keyspace, &opts.replication).await?;
            if !report.applied.is_empty() {
                tracing::info!(keyspace, applied = ?report.applied, "CQL schema migrated");
            }
        } else {
            let applied = migrations::applied_versions(&session, keyspace).await?;
            let missing: Vec<i32> = (1..=STORE_SCHEMA_VERSION)
                .filter(|v| !applied.contains_key(v))
                .collect();
            if !missing.is_empty() {
                return Err(StoreError::Backend(format!(
                    "keyspace {keyspace} lacks CQL migrations {missing:?}: run `ringlimit migrate` (or start with migrations on)"
                )));
            }
        }
        let st = prepare_all(&session, &ks).await?;
        let pst = pipeline::prepare(&session, &ks).await?;
        let mut usage_ttl = [0i32; 3];
        let mut index_ttl = [0i32; 3];
        for g in Granularity::all() {
            usage_ttl[gi(g)] = ttl_secs(opts.retention.usage(g));
            index_ttl[gi(g)] = usage_index_ttl(g, usage_ttl[gi(g)]);
        }
        Ok(ScyllaStore {
            inner: Arc::new(Inner {
                session,
                keyspace: keyspace.to_ascii_lowercase(),
                opts,
                st,
                pst,
                usage_ttl,
                index_ttl,
                indexed: DashMap::new(),
                days_indexed: DashMap::new(),
            }),
        })
    }

    /// The driver session (shared).
    pub fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    /// The keyspace (lower case).
    pub fn keyspace(&self) -> &str {
        &self.inner.keyspace
    }

    /// A cheap round trip (`system.local`), for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut st = Statement::new("SELECT release_version FROM system.local");
        st.set_is_idempotent(true);
        self.bounded("ping", self.inner.opts.operation_timeout, async {
            self.inner
                .session
                .query_unpaged(st, ())
                .await
                .map_err(|e| errors::execution("ping", e))?;
            Ok(())
        })
        .await
    }

    /// Runs `fut`, failing with `Unavailable` after `limit`.
    async fn bounded<T>(
        &self,
        op: &str,
        limit: Duration,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "ScyllaDB {op}: no answer within {limit:?}"
            ))),
        }
    }

    async fn exec(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<(), StoreError> {
        self.inner
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| errors::execution(what, e))?;
        Ok(())
    }

    /// All rows of an unpaged (single-partition) read.
    async fn rows<R>(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let res = self
            .inner
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| errors::execution(what, e))?;
        let res = res
            .into_rows_result()
            .map_err(|e| errors::decode(what, e))?;
        let rows = res.rows::<R>().map_err(|e| errors::decode(what, e))?;
        rows.map(|r| r.map_err(|e| errors::decode(what, e)))
            .collect()
    }

    async fn row<R>(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        Ok(self.rows(what, st, values).await?.into_iter().next())
    }

    /// Runs futures with at most `concurrency` in flight; the first error wins.
    /// (Boxed futures: closures returning futures inside `async_trait` bodies
    /// trip the compiler's higher-ranked lifetime checks.)
    async fn run_all(
        &self,
        futs: Vec<BoxFuture<'_, Result<(), StoreError>>>,
    ) -> Result<(), StoreError> {
        let mut s = stream::iter(futs).buffer_unordered(self.inner.opts.concurrency.max(1));
        while let Some(r) = s.next().await {
            r?;
        }
        Ok(())
    }

    async fn read_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        if key_id.is_empty() {
            return Ok(None);
        }
        let row: Option<(Option<String>,)> = self
            .row("get_key", &self.inner.st.get_key, (key_id,))
            .await?;
        match row {
            Some((Some(json),)) => decode_key(key_id, &json).map(Some),
            Some((None,)) => Err(StoreError::Corrupt(format!("key {key_id:?}: no record"))),
            None => Ok(None),
        }
    }

    async fn hash_owner(&self, hash: &SecretHash) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = self
            .row(
                "key_id_by_hash",
                &self.inner.st.get_hash,
                (hash.0.as_slice(),),
            )
            .await?;
        Ok(row.and_then(|(k,)| k))
    }

    /// The listing shards, in increasing order.
    async fn shards(&self) -> Result<Vec<i32>, StoreError> {
        let pager = self
            .inner
            .session
            .execute_iter(self.inner.st.shards.clone(), ())
            .await
            .map_err(|e| errors::pager("list_keys (shards)", e))?;
        let mut rows = pager
            .rows_stream::<(i32,)>()
            .map_err(|e| errors::decode("list_keys (shards)", e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().await {
            out.push(r.map_err(|e| errors::next_row("list_keys (shards)", e))?.0);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Reads the records of `ids` (in order) and appends those that exist and
    /// still match to `out`, up to `limit`.
    async fn fill_page(
        &self,
        ids: &mut Vec<String>,
        filter: &KeyFilter,
        out: &mut Vec<KeyRecord>,
        limit: usize,
    ) -> Result<(), StoreError> {
        let mut reads: Vec<BoxFuture<'_, Result<Option<KeyRecord>, StoreError>>> =
            Vec::with_capacity(ids.len());
        for id in ids.drain(..) {
            reads.push(async move { self.read_key(&id).await }.boxed());
        }
        let mut records = stream::iter(reads).buffered(self.inner.opts.concurrency.max(1));
        while let Some(r) = records.next().await {
            if let Some(rec) = r?
                && out.len() < limit
                && filter.matches(&rec)
            {
                out.push(rec);
            }
        }
        Ok(())
    }

    /// Writes the `usage_partitions` row of a partition unless done recently.
    async fn index_partition(
        &self,
        g: Granularity,
        key_id: &str,
        day: i64,
    ) -> Result<(), StoreError> {
        let cache_key = (gi(g), key_id.to_owned(), day);
        if let Some(at) = self.inner.indexed.get(&cache_key)
            && at.elapsed() < INDEX_REFRESH
        {
            return Ok(());
        }
        let ttl = self.inner.index_ttl[gi(g)];
        self.exec(
            "write_usage (partition index)",
            &self.inner.st.put_partition,
            (key_id, g.as_str(), day, ttl),
        )
        .await?;
        if self.inner.indexed.len() >= INDEX_CACHE_MAX {
            self.inner.indexed.clear();
        }
        self.inner.indexed.insert(cache_key, Instant::now());
        Ok(())
    }

    async fn write_usage_batch(
        &self,
        g: Granularity,
        rows: &[UsageCell<'_>],
    ) -> Result<(), StoreError> {
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in rows {
            batch.append_statement(self.inner.st.put_usage[gi(g)].clone());
        }
        batch.set_is_idempotent(true);
        self.inner
            .session
            .batch(&batch, rows)
            .await
            .map_err(|e| errors::execution("write_usage", e))?;
        Ok(())
    }

    async fn read_usage_partition(
        &self,
        key_id: &str,
        g: Granularity,
        day: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        self.rows(
            "usage_history",
            &self.inner.st.get_usage[gi(g)],
            (key_id, day, from, to),
        )
        .await
    }
}

/// Prepares one statement, marked idempotent (every statement of the store
/// is), with the store's page size.
async fn prepare_one(session: &Session, cql: String) -> Result<PreparedStatement, StoreError> {
    let mut p = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| errors::prepare(&format!("prepare `{cql}`"), e))?;
    p.set_is_idempotent(true);
    p.set_page_size(PAGE_SIZE);
    Ok(p)
}

async fn prepare_all(session: &Session, ks: &str) -> Result<Statements, StoreError> {
    let prep = |cql: String| prepare_one(session, cql);
    let usage = |g: Granularity| {
        let t = usage_table(g);
        (
            format!(
                "INSERT INTO {ks}.{t} (key_id, day, bucket_start, writer, units) VALUES (?, ?, ?, ?, ?) USING TTL ?"
            ),
            format!(
                "SELECT bucket_start, units FROM {ks}.{t} WHERE key_id = ? AND day = ? AND bucket_start >= ? AND bucket_start < ?"
            ),
        )
    };
    let (pm, gm) = usage(Granularity::Minute);
    let (ph, gh) = usage(Granularity::Hour);
    let (pd, gd) = usage(Granularity::Day);
    Ok(Statements {
        get_key: prep(format!("SELECT record FROM {ks}.keys WHERE key_id = ?")).await?,
        put_key: prep(format!(
            "INSERT INTO {ks}.keys (key_id, owner, tier, status, updated_at, record) VALUES (?, ?, ?, ?, ?, ?)"
        ))
        .await?,
        put_page: prep(format!("INSERT INTO {ks}.keys_by_page (shard, key_id, owner, tier, status) VALUES (?, ?, ?, ?, ?)"))
            .await?,
        get_hash: prep(format!("SELECT key_id FROM {ks}.keys_by_hash WHERE secret_hash = ?")).await?,
        put_hash: prep(format!("INSERT INTO {ks}.keys_by_hash (secret_hash, key_id) VALUES (?, ?)")).await?,
        del_hash: prep(format!("DELETE FROM {ks}.keys_by_hash WHERE secret_hash = ?")).await?,
        shards: prep(format!("SELECT DISTINCT shard FROM {ks}.keys_by_page")).await?,
        page_after: prep(format!(
            "SELECT key_id, owner, tier, status FROM {ks}.keys_by_page WHERE shard = ? AND key_id > ?"
        ))
        .await?,
        page_all: prep(format!("SELECT key_id, owner, tier, status FROM {ks}.keys_by_page WHERE shard = ?")).await?,
        all_keys: prep(format!("SELECT key_id, record FROM {ks}.keys")).await?,
        put_tier: prep(format!("INSERT INTO {ks}.tiers (name, limits, updated_at) VALUES (?, ?, ?)")).await?,
        all_tiers: prep(format!("SELECT name, limits FROM {ks}.tiers")).await?,
        put_snapshot: prep(format!("INSERT INTO {ks}.counter_snapshots (key_id, snapshot, saved_at) VALUES (?, ?, ?)"))
            .await?,
        get_snapshot: prep(format!("SELECT snapshot FROM {ks}.counter_snapshots WHERE key_id = ?")).await?,
        del_snapshot: prep(format!("DELETE FROM {ks}.counter_snapshots WHERE key_id = ?")).await?,
        put_usage: [prep(pm).await?, prep(ph).await?, prep(pd).await?],
        get_usage: [prep(gm).await?, prep(gh).await?, prep(gd).await?],
        put_partition: prep(format!(
            "INSERT INTO {ks}.usage_partitions (key_id, granularity, day) VALUES (?, ?, ?) USING TTL ?"
        ))
        .await?,
        get_partitions: prep(format!(
            "SELECT day FROM {ks}.usage_partitions WHERE key_id = ? AND granularity = ? AND day >= ? AND day <= ? LIMIT {}",
            MAX_HISTORY_PARTITIONS + 1
        ))
        .await?,
    })
}

fn decode_key(id: &str, json: &str) -> Result<KeyRecord, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("key {id:?}: {e}")))
}

fn now_ts() -> CqlTimestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    CqlTimestamp(i64::try_from(ms).unwrap_or(i64::MAX))
}

#[async_trait]
impl KeyStore for ScyllaStore {
    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let id = key.key_id.as_str();
        if id.is_empty() {
            return Err(StoreError::Backend("put_key: empty key_id".into()));
        }
        let record = serde_json::to_string(key)
            .map_err(|e| StoreError::Backend(format!("encode key {id:?}: {e}")))?;
        let work = Box::pin(async {
            let st = &self.inner.st;
            let old = match self.read_key(id).await {
                Ok(old) => old,
                // An undecodable old record cannot tell its hashes; it is replaced
                // anyway, and its stale index entries are never confirmed.
                Err(StoreError::Corrupt(_)) => None,
                Err(e) => return Err(e),
            };
            let new: Vec<SecretHash> = hashes(key).collect();
            // 1. The new hashes, so the key is findable as soon as its record is there.
            let mut writes = Vec::new();
            for h in &new {
                writes.push(
                    self.exec("put_key (hash index)", &st.put_hash, (h.0.as_slice(), id))
                        .boxed(),
                );
            }
            self.run_all(writes).await?;
            // 2. The record and its listing row.
            let (owner, tier, status) =
                (key.owner.as_str(), key.tier.as_str(), key.status.as_str());
            let updated = to_i64(key.updated_at_ms);
            let (a, b) = tokio::join!(
                self.exec(
                    "put_key",
                    &st.put_key,
                    (id, owner, tier, status, updated, record.as_str())
                ),
                self.exec(
                    "put_key (listing)",
                    &st.put_page,
                    (shard_of(id), id, owner, tier, status)
                ),
            );
            a?;
            b?;
            // 3. Hashes the key no longer has, when they still lead to it.
            for stale in old.iter().flat_map(hashes).filter(|h| !new.contains(h)) {
                if self.hash_owner(&stale).await?.as_deref() == Some(id) {
                    self.exec("put_key (stale hash)", &st.del_hash, (stale.0.as_slice(),))
                        .await?;
                }
            }
            Ok(())
        });
        self.bounded("put_key", self.inner.opts.operation_timeout, work)
            .await
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.bounded(
            "get_key",
            self.inner.opts.operation_timeout,
            self.read_key(key_id),
        )
        .await
    }

    async fn key_id_by_hash(&self, hash: &SecretHash) -> Result<Option<String>, StoreError> {
        self.bounded("key_id_by_hash", self.inner.opts.operation_timeout, async {
            let Some(id) = self.hash_owner(hash).await? else {
                return Ok(None);
            };
            // Confirm against the record: the entry may be left over from an
            // interrupted rotation.
            let confirmed = match self.read_key(&id).await? {
                Some(rec) => rec.secret_hash == *hash || rec.previous_hash == Some(*hash),
                None => false,
            };
            Ok(confirmed.then_some(id))
        })
        .await
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.bounded("list_keys", self.inner.opts.scan_timeout, async {
            let st = &self.inner.st;
            let after = after.filter(|a| !a.is_empty());
            let first = after.map_or(i32::MIN, shard_of);
            let index_matches =
                |owner: &Option<String>, tier: &Option<String>, status: &Option<String>| {
                    filter
                        .owner
                        .as_ref()
                        .is_none_or(|o| owner.as_ref() == Some(o))
                        && filter
                            .tier
                            .as_ref()
                            .is_none_or(|t| tier.as_ref() == Some(t))
                        && filter
                            .status
                            .is_none_or(|s| status.as_deref() == Some(s.as_str()))
                };
            let mut out: Vec<KeyRecord> = Vec::new();
            let mut candidates: Vec<String> = Vec::new();
            for shard in self.shards().await?.into_iter().filter(|&s| s >= first) {
                let pager = match after {
                    Some(a) if shard == first => {
                        self.inner
                            .session
                            .execute_iter(st.page_after.clone(), (shard, a))
                            .await
                    }
                    _ => {
                        self.inner
                            .session
                            .execute_iter(st.page_all.clone(), (shard,))
                            .await
                    }
                }
                .map_err(|e| errors::pager("list_keys", e))?;
                let mut rows = pager
                    .rows_stream::<(String, Option<String>, Option<String>, Option<String>)>()
                    .map_err(|e| errors::decode("list_keys", e))?;
                while let Some(row) = rows.next().await {
                    let (id, owner, tier, status) =
                        row.map_err(|e| errors::next_row("list_keys", e))?;
                    if !index_matches(&owner, &tier, &status) {
                        continue;
                    }
                    candidates.push(id);
                    if out.len() + candidates.len() >= limit {
                        self.fill_page(&mut candidates, filter, &mut out, limit)
                            .await?;
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
            }
            self.fill_page(&mut candidates, filter, &mut out, limit)
                .await?;
            Ok(out)
        })
        .await
    }

    async fn load_all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.bounded("load_all_keys", self.inner.opts.scan_timeout, async {
            let pager = self
                .inner
                .session
                .execute_iter(self.inner.st.all_keys.clone(), ())
                .await
                .map_err(|e| errors::pager("load_all_keys", e))?;
            let mut rows = pager
                .rows_stream::<(String, Option<String>)>()
                .map_err(|e| errors::decode("load_all_keys", e))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().await {
                let (id, json) = row.map_err(|e| errors::next_row("load_all_keys", e))?;
                let json =
                    json.ok_or_else(|| StoreError::Corrupt(format!("key {id:?}: no record")))?;
                out.push(decode_key(&id, &json)?);
            }
            out.sort_by(|a, b| a.key_id.cmp(&b.key_id));
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl TierStore for ScyllaStore {
    async fn put_tier(&self, tier: &TierRecord) -> Result<(), StoreError> {
        if tier.name.is_empty() {
            return Err(StoreError::Backend("put_tier: empty tier name".into()));
        }
        let limits = serde_json::to_string(&tier.limits)
            .map_err(|e| StoreError::Backend(format!("encode tier {:?}: {e}", tier.name)))?;
        self.bounded(
            "put_tier",
            self.inner.opts.operation_timeout,
            self.exec(
                "put_tier",
                &self.inner.st.put_tier,
                (tier.name.as_str(), limits, now_ts()),
            ),
        )
        .await
    }

    async fn list_tiers(&self) -> Result<Vec<TierRecord>, StoreError> {
        self.bounded("list_tiers", self.inner.opts.scan_timeout, async {
            let pager = self
                .inner
                .session
                .execute_iter(self.inner.st.all_tiers.clone(), ())
                .await
                .map_err(|e| errors::pager("list_tiers", e))?;
            let mut rows = pager
                .rows_stream::<(String, Option<String>)>()
                .map_err(|e| errors::decode("list_tiers", e))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().await {
                let (name, limits) = row.map_err(|e| errors::next_row("list_tiers", e))?;
                let limits: Vec<LimitSpec> =
                    serde_json::from_str(limits.as_deref().unwrap_or("[]"))
                        .map_err(|e| StoreError::Corrupt(format!("tier {name:?}: {e}")))?;
                out.push(TierRecord { name, limits });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl SnapshotStore for ScyllaStore {
    async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.iter().any(|(id, _)| id.is_empty()) {
            return Err(StoreError::Backend("save_snapshots: empty key_id".into()));
        }
        // The last snapshot of a key repeated in one batch wins.
        let latest: BTreeMap<&str, &[u8]> = batch
            .iter()
            .map(|(id, b)| (id.as_str(), b.as_slice()))
            .collect();
        let at = now_ts();
        let mut writes = Vec::with_capacity(latest.len());
        for (id, bytes) in latest {
            writes.push(
                self.exec(
                    "save_snapshots",
                    &self.inner.st.put_snapshot,
                    (id, bytes, at),
                )
                .boxed(),
            );
        }
        self.bounded(
            "save_snapshots",
            self.inner.opts.operation_timeout,
            self.run_all(writes),
        )
        .await
    }

    async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if key_id.is_empty() {
            return Ok(None);
        }
        self.bounded("load_snapshot", self.inner.opts.operation_timeout, async {
            let row: Option<(Option<Vec<u8>>,)> = self
                .row("load_snapshot", &self.inner.st.get_snapshot, (key_id,))
                .await?;
            Ok(row.map(|(b,)| b.unwrap_or_default()))
        })
        .await
    }

    async fn delete_snapshot(&self, key_id: &str) -> Result<(), StoreError> {
        if key_id.is_empty() {
            return Ok(());
        }
        self.bounded(
            "delete_snapshot",
            self.inner.opts.operation_timeout,
            self.exec("delete_snapshot", &self.inner.st.del_snapshot, (key_id,)),
        )
        .await
    }
}

#[async_trait]
impl UsageStore for ScyllaStore {
    async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        // (granularity, key, day) → (bucket_start, writer) → units; the last row wins.
        let mut parts: BTreeMap<(usize, &str, i64), (Granularity, BTreeMap<(i64, &str), i64>)> =
            BTreeMap::new();
        for r in rows {
            let start = i64::try_from(r.bucket_start_ms).map_err(|_| {
                StoreError::Backend(format!(
                    "write_usage: bucket start {} out of range",
                    r.bucket_start_ms
                ))
            })?;
            let units = i64::try_from(r.units).map_err(|_| {
                StoreError::Backend(format!("write_usage: units {} out of range", r.units))
            })?;
            let day = partition_day(r.granularity, r.bucket_start_ms);
            parts
                .entry((gi(r.granularity), r.key_id.as_str(), day))
                .or_insert_with(|| (r.granularity, BTreeMap::new()))
                .1
                .insert((start, r.writer.as_str()), units);
        }
        self.bounded("write_usage", self.inner.opts.operation_timeout, async {
            // The partition index first, so no data is ever unlisted.
            let mut index = Vec::with_capacity(parts.len());
            for (&(_, key, day), (g, _)) in &parts {
                index.push(self.index_partition(*g, key, day).boxed());
            }
            self.run_all(index).await?;
            let mut batches: Vec<(Granularity, Vec<UsageCell>)> = Vec::new();
            for (&(_, key, day), (g, cells)) in &parts {
                let ttl = self.inner.usage_ttl[gi(*g)];
                let cells: Vec<UsageCell> = cells
                    .iter()
                    .map(|(&(start, writer), &units)| (key, day, start, writer, units, ttl))
                    .collect();
                for chunk in cells.chunks(USAGE_BATCH_ROWS) {
                    batches.push((*g, chunk.to_vec()));
                }
            }
            let mut writes = Vec::with_capacity(batches.len());
            for (g, chunk) in &batches {
                writes.push(self.write_usage_batch(*g, chunk).boxed());
            }
            self.run_all(writes).await
        })
        .await
    }

    async fn usage_history(
        &self,
        key_id: &str,
        granularity: Granularity,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        self.bounded("usage_history", self.inner.opts.operation_timeout, async {
            let g = granularity;
            let (day_lo, day_hi) = (partition_day(g, from_ms), partition_day(g, to_ms - 1));
            let days: Vec<(i64,)> = self
                .rows("usage_history (partitions)", &self.inner.st.get_partitions, (key_id, g.as_str(), day_lo, day_hi))
                .await?;
            if days.len() > MAX_HISTORY_PARTITIONS {
                return Err(StoreError::Backend(format!(
                    "usage_history: the range spans more than {MAX_HISTORY_PARTITIONS} {} partitions; narrow it",
                    g.as_str()
                )));
            }
            let (from, to) = (to_i64(from_ms), to_i64(to_ms));
            let mut reads = Vec::with_capacity(days.len());
            for (day,) in days {
                reads.push(self.read_usage_partition(key_id, g, day, from, to).boxed());
            }
            let mut parts = stream::iter(reads).buffered(HISTORY_READ_CONCURRENCY);
            let mut out = BucketSum::default();
            while let Some(rows) = parts.next().await {
                // Rows come in (bucket_start, writer) order: the writers of a bucket are adjacent.
                for (start, units) in rows? {
                    let (Ok(start_ms), units) = (u64::try_from(start), u64::try_from(units).unwrap_or(0)) else {
                        continue;
                    };
                    out.add(start_ms, units);
                }
            }
            Ok(out.finish())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_aligned_periods() {
        const T0: u64 = 1_699_999_980_000;
        let day = i64::try_from(T0 / DAY_MS).expect("day");
        assert_eq!(partition_day(Granularity::Minute, T0), day);
        assert_eq!(partition_day(Granularity::Hour, T0) % 32, 0);
        assert!(
            partition_day(Granularity::Hour, T0) <= day
                && day < partition_day(Granularity::Hour, T0) + 32
        );
        assert_eq!(partition_day(Granularity::Day, T0) % 1024, 0);
        assert_eq!(partition_day(Granularity::Minute, 0), 0);
        assert_eq!(partition_day(Granularity::Minute, DAY_MS - 1), 0);
        assert_eq!(partition_day(Granularity::Minute, DAY_MS), 1);
        assert!(partition_day(Granularity::Minute, u64::MAX) > 0);
    }

    #[test]
    fn http_ranges_touch_few_partitions() {
        // The HTTP layer allows 10 000 buckets per history request.
        for g in Granularity::all() {
            let span_days = 10_000 * g.millis() / DAY_MS + 1;
            let partitions = span_days / period_days(g) + 2;
            assert!(partitions <= 16, "{g:?}: {partitions}");
        }
    }

    #[test]
    fn shards_follow_key_id_order() {
        let mut ids = ["b", "a9", "a", "key-01", "Z", "0", "\u{e9}t\u{e9}", "k"];
        ids.sort_unstable();
        let shards: Vec<i32> = ids.iter().map(|i| shard_of(i)).collect();
        let mut sorted = shards.clone();
        sorted.sort_unstable();
        assert_eq!(shards, sorted, "shard order must agree with key_id order");
    }

    #[test]
    fn ttls_follow_the_retention_with_the_index_margin() {
        let r = Retention::default();
        assert_eq!(ttl_secs(r.minute), 7 * 86_400);
        assert_eq!(
            ttl_secs(Duration::ZERO),
            1,
            "zero retention is not 'forever'"
        );
        assert_eq!(ttl_secs(Duration::from_millis(300)), 1);
        assert_eq!(ttl_secs(Duration::MAX), 630_720_000);
        for g in Granularity::all() {
            let data = ttl_secs(r.usage(g));
            let index = usage_index_ttl(g, data);
            let margin = i32::try_from((period_days(g) + 1) * 86_400).expect("margin");
            assert_eq!(index, data + margin, "{g:?}");
        }
        assert_eq!(usage_index_ttl(Granularity::Day, i32::MAX), 630_720_000);
    }

    #[test]
    fn options_debug_hides_the_password() {
        let o = ScyllaOptions {
            password: Some("hunter2".into()),
            ..Default::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("hunter2") && s.contains("redacted"), "{s}");
    }
}
