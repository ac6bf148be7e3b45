//! Session and options: [`ScyllaOptions`], [`connect_session`], and the
//! [`ScyllaStore`] handle (connect, migrate or check the schema, prepare).

use super::STORE_SCHEMA_VERSION;
use super::common::{IndexMemo, gi, ttl_secs, usage_index_ttl};
use super::errors;
use super::migrations::{self, DEFAULT_REPLICATION, MigrationReport, migrate};
use super::statements::{PipelineStatements, Statements, prepare_all, prepare_pipeline};
use ringlimit_actors::storage::{Retention, StoreError};
use ringlimit_protocol::admin::Granularity;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::statement::{Consistency, Statement};
use std::sync::Arc;
use std::time::Duration;

/// CQL-level keepalive interval and timeout of every connection.
const KEEPALIVE: Duration = Duration::from_secs(10);

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

/// What the store's parts share: the session, the options, the prepared
/// statements, the TTLs and the memory of recent index writes.
pub(super) struct Inner {
    pub(super) session: Arc<Session>,
    pub(super) keyspace: String,
    pub(super) opts: ScyllaOptions,
    pub(super) st: Statements,
    /// Statements of the pipeline tables.
    pub(super) pst: PipelineStatements,
    /// TTL (seconds) of usage rows per granularity, from the retention.
    pub(super) usage_ttl: [i32; 3],
    /// TTL (seconds) of `usage_partitions` rows per granularity.
    pub(super) index_ttl: [i32; 3],
    /// Recently written `usage_partitions` rows: (granularity, key, day).
    pub(super) indexed: IndexMemo<(usize, String, i64)>,
    /// Recently written `pipeline_days` rows: (stream, key, day).
    pub(super) days_indexed: IndexMemo<(&'static str, String, i64)>,
}

/// The ScyllaDB (or Cassandra) store. Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct ScyllaStore {
    pub(super) inner: Arc<Inner>,
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
            // Only what this version reads and writes: a later migration that
            // drops what older versions still use (0007) waits for
            // `ringlimit migrate`, so a rolling upgrade never breaks the
            // nodes not yet upgraded.
            let report =
                migrations::migrate_to(&session, keyspace, &opts.replication, STORE_SCHEMA_VERSION)
                    .await?;
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
        let pst = prepare_pipeline(&session, &ks).await?;
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
                indexed: IndexMemo::new(),
                days_indexed: IndexMemo::new(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
