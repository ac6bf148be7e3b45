//! Building a node from its config, serving, and shutting down.

use crate::background::Background;
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::{Config, ConfigError, LogFormat, RawConfig};
use crate::http::{self, AppState, RequestIds};
use crate::router::{Router, RouterConfig};
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisSnapshots;
use crate::store::scylla::{ScyllaOptions, ScyllaStore};
use anyhow::Context;
use ringlimit_actors::core::{Core, CoreConfig};
use ringlimit_actors::limiter::{LimiterConfig, SystemClock};
use ringlimit_actors::pipeline::{BillingFeed, Pipelines};
use ringlimit_actors::service::Service;
use ringlimit_actors::storage::{Retention, SnapshotStore, Store, UsageStore};
use ringlimit_actors::writebehind::WriteBehindConfig;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Reads file, environment and flags into one validated config.
pub fn load_config(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    flags: RawConfig,
) -> Result<Config, ConfigError> {
    let file = file.map(Path::to_path_buf).or_else(|| {
        env("RINGLIMIT_CONFIG")
            .filter(|s| !s.is_empty())
            .map(Into::into)
    });
    let from_file = match file {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|e| ConfigError {
                field: "config".into(),
                message: format!("cannot read {}: {e}", p.display()),
            })?;
            RawConfig::from_toml(&text)?
        }
        None => RawConfig::default(),
    };
    let raw = from_file.merge(RawConfig::from_env(env)?).merge(flags);
    Config::from_raw(raw)
}

/// Sets up logging to stderr.
pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Fills `buf` from the OS's secure random source.
/// Blocking threads of the request runtime (embedded-store reads when keys
/// activate, admin writes). Tokio's default (512) lets a burst of
/// activations start hundreds of threads, each with its own allocator arena:
/// with a million keys that was a gigabyte of memory for nothing.
pub const MAX_BLOCKING_THREADS: usize = 16;

pub fn os_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        // Without randomness no secret can be made; refuse to continue.
        panic!("OS random source failed: {e}");
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    os_random(&mut b);
    hex::encode(b)
}

/// The admin token: configured, or kept in `<data_dir>/admin-token` (made on first start).
fn admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let path = config.data_dir.join("admin-token");
    // Never through a symbolic link: one planted here would hand the token
    // to (or take it from) a file elsewhere.
    if let Some(t) =
        crate::private::read(&path).with_context(|| format!("reading {}", path.display()))?
    {
        let t = t.trim().to_string();
        if t.len() >= 16 {
            tracing::info!(path = %path.display(), "admin token read from file");
            return Ok(t);
        }
    }
    let t = random_hex(24);
    crate::private::write(&path, &format!("{t}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "admin token generated; read it from this file (or set RINGLIMIT_ADMIN_TOKEN)");
    Ok(t)
}

/// Driver settings from the config.
pub fn scylla_options(config: &Config) -> ScyllaOptions {
    let mut o = ScyllaOptions {
        retention: config.retention,
        ..ScyllaOptions::default()
    };
    if let Some(r) = &config.scylla_replication {
        o.replication = r.clone();
    }
    o
}

/// `ringlimit migrate`: applies the CQL migrations and reports what it did.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    if config.scylla_nodes.is_empty() {
        anyhow::bail!(
            "migrate needs scylla_nodes (RINGLIMIT_SCYLLA_NODES); the embedded store needs no migration"
        );
    }
    let report = crate::store::scylla::migrate_cluster(
        &config.scylla_nodes,
        &config.scylla_keyspace,
        &scylla_options(config),
    )
    .await
    .context("applying CQL migrations")?;
    tracing::info!(keyspace = %config.scylla_keyspace, report = ?report, "migrations done");
    Ok(())
}

/// Runs a node until `shutdown` resolves, then drains and saves state.
///
/// The wiring, in construction order (each part gets what it uses when it is
/// built; nothing is attached afterwards):
/// 1. [`open_stores`]: the key, history and pipeline store (embedded or
///    ScyllaDB) and the snapshot store for live counters (Redis, or the same).
/// 2. [`start_limiting`]: the key cache, KeyLimiters and write-behind
///    ([`Core`]), the [`Service`] over them, and the pipelines on a thread
///    of their own. The write-behind hands its usage rows to billing.
/// 3. [`start_routing`]: the cluster layer (when configured), started with an
///    inbox that queues what peers send, then the [`Router`] over it, which
///    serves that inbox and broadcasts the service's admin changes.
/// 4. [`serve`]: the data and admin planes, and the write-behind's flusher.
/// 5. On shutdown, [`stop`]: hand keys over, stop serving, save state, drain
///    the pipelines, leave the cluster.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::private::create_dir(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let token = admin_token(&config)?;
    let stores = open_stores(&config).await?;
    let node = start_limiting(&config, stores).await?;
    let router = start_routing(&config, &node).await?;
    let serving = serve(config, &token, &node, &router).await?;
    shutdown.await;
    stop(node, router, serving).await;
    tracing::info!("bye");
    Ok(())
}

/// Where a node keeps its data.
struct Stores {
    /// Keys, usage history and the pipelines' records.
    main: Arc<dyn Store>,
    /// Live counter state (write-behind).
    snapshots: Arc<dyn SnapshotStore>,
}

async fn open_stores(config: &Config) -> anyhow::Result<Stores> {
    let main: Arc<dyn Store> = if config.scylla_nodes.is_empty() {
        let s = EmbeddedStore::open(&config.data_dir).context("opening the embedded store")?;
        tracing::info!(data_dir = %config.data_dir.display(), "embedded store opened");
        spawn_retention(s.clone(), config.retention);
        Arc::new(s)
    } else {
        let s = ScyllaStore::connect(
            &config.scylla_nodes,
            &config.scylla_keyspace,
            scylla_options(config),
        )
        .await
        .context("connecting to ScyllaDB (scylla_nodes)")?;
        tracing::info!(nodes = ?config.scylla_nodes, keyspace = %config.scylla_keyspace, "ScyllaDB store connected");
        Arc::new(s)
    };
    // Live counter state goes to Redis when one is configured, else to the main store.
    let snapshots: Arc<dyn SnapshotStore> = if let Some(url) = &config.redis_url {
        let r = RedisSnapshots::connect(url, config.redis_timeout)
            .await
            .context("connecting to redis_url")?;
        tracing::info!(redis = %ringlimit_actors::redact::url(url), "counter state is written behind to Redis");
        Arc::new(r)
    } else if !config.redis_cluster_nodes.is_empty() {
        let r = RedisSnapshots::connect_cluster(&config.redis_cluster_nodes, config.redis_timeout)
            .await
            .context("connecting to redis_cluster_nodes")?;
        tracing::info!(nodes = ?config.redis_cluster_nodes, "counter state is written behind to Redis Cluster");
        Arc::new(r)
    } else {
        main.clone()
    };
    Ok(Stores { main, snapshots })
}

/// The limiting part of a node: what answers checks on this node.
struct Limiting {
    core: Core,
    service: Arc<Service>,
    pipelines: Pipelines,
    /// The pipelines' thread (stops when dropped).
    background: Background,
    /// The write-behind's thread (stops when dropped).
    persistence: Background,
    /// This process's usage writer name (node name and boot instant).
    writer: String,
}

async fn start_limiting(config: &Config, stores: Stores) -> anyhow::Result<Limiting> {
    let boot_ms = ringlimit_actors::clock::wall_ms();
    let writer = format!("{}#{boot_ms}", config.node_name);
    let usage: Arc<dyn UsageStore> = stores.main.clone();
    // Billing counts admitted units from the write-behind's usage rows (one
    // row per key and flush), not from each check.
    let billing = BillingFeed::new();
    let core = Core::start(CoreConfig {
        tiers: config.tiers.clone(),
        keys: Vec::new(),
        snapshot_sinks: vec![stores.snapshots],
        usage: Some(usage),
        usage_sink: Some(billing.clone()),
        write_behind: WriteBehindConfig {
            interval: config.flush_interval,
            usage_interval: config.usage_flush_interval,
            max_pending: config.max_pending_keys,
            ..Default::default()
        },
        limiter: LimiterConfig {
            idle_timeout: config.idle_timeout,
            max_active: config.max_active_keys,
            sweep_interval: (config.idle_timeout / 4).clamp(
                std::time::Duration::from_millis(5),
                std::time::Duration::from_secs(1),
            ),
            writer: writer.clone(),
        },
        clock: Arc::new(SystemClock),
    })
    .await
    .context("starting the key limiters")?;
    let mut seed = [0u8; 16];
    os_random(&mut seed);
    let poster =
        Arc::new(crate::webhook::WebhookClient::new().context("building the webhook client")?);
    // The pipelines run on a thread of their own at a lower CPU priority:
    // their batches never hold up the threads that answer checks.
    let background = Background::start("ringlimit-pipelines", crate::background::DEFAULT_NICE)
        .context("starting the pipelines' thread")?;
    // The cache is warm before the pipelines start (billing reads it).
    let n = core
        .warm(stores.main.as_ref())
        .await
        .context("loading keys")?;
    tracing::info!(keys = n, "key cache warmed");
    let (host, suspensions) = core.host();
    let pipelines = background
        .run(Pipelines::start(
            config.pipelines.clone(),
            Arc::clone(&stores.main),
            poster,
            seed,
            Arc::new(host),
            billing,
        ))
        .await
        .map_err(|e| anyhow::anyhow!("starting the pipelines: {e}"))?
        .map_err(|e| anyhow::anyhow!("starting the pipelines: {e}"))?;
    let service = core.service(stores.main, os_random, Some(pipelines.clone()));
    tokio::spawn(Arc::clone(&service).serve_suspensions(suspensions));
    service.load_blocks().await.context("loading IP blocks")?;
    spawn_block_expiry(Arc::clone(&service));
    // Flushes (snapshot encoding, store writes and their blocking threads)
    // run on a thread of their own, below the checks' priority: their cost
    // follows the number of dirty keys and never takes a request thread.
    let persistence =
        Background::start("ringlimit-writebehind", crate::background::WRITEBEHIND_NICE)
            .context("starting the write-behind's thread")?;
    Ok(Limiting {
        core,
        service,
        pipelines,
        background,
        persistence,
        writer,
    })
}

async fn start_routing(config: &Config, node: &Limiting) -> anyhow::Result<Arc<Router>> {
    let router_config = RouterConfig {
        node_name: config.node_name.clone(),
        fail_closed_tiers: config.fail_closed_tiers.iter().cloned().collect(),
        handoff_wait: config
            .heartbeat_timeout
            .max(std::time::Duration::from_secs(2)),
        passivate_timeout: config.shutdown_timeout,
        admin_ack_wait: config.heartbeat_timeout,
        usage_writer: node.writer.clone(),
        forward_expiry: config.heartbeat_timeout / 2,
    };
    let wb = Arc::clone(&node.core.write_behind);
    let service = Arc::clone(&node.service);
    let Some(cluster_addr) = config.cluster_addr else {
        return Ok(Router::new(service, wb, router_config, None, false));
    };
    let mut cc = ClusterConfig::new(
        config.node_name.clone(),
        cluster_addr,
        config.cookie.clone().unwrap_or_default(),
        config.seeds.clone(),
    );
    cc.heartbeat_timeout = config.heartbeat_timeout;
    // A forwarded check waits for a live owner as long as it counts as
    // alive (see `ClusterConfig::check_timeout`).
    cc.check_timeout = config.heartbeat_timeout;
    cc.advertise_addr = config.advertise_addr.clone();
    cc.tls = config.cluster_tls.clone();
    if cc.tls.is_none() {
        tracing::warn!(
            %cluster_addr,
            "clustering without TLS: node-to-node traffic (forwarded checks, key hashes) is plaintext; set RINGLIMIT_CLUSTER_TLS_CERT, RINGLIMIT_CLUSTER_TLS_KEY and RINGLIMIT_CLUSTER_TLS_CA"
        );
    }
    cc.heartbeat_interval =
        (config.heartbeat_timeout / 4).max(std::time::Duration::from_millis(100));
    // The cluster layer starts first, queueing what peers send; the router,
    // built over it, serves that queue.
    let (handler, inbox) = crate::cluster::inbox::inbox();
    let cluster = Cluster::start(cc, Arc::new(handler))
        .await
        .context("starting the cluster layer")?;
    let router = Router::new(
        Arc::clone(&service),
        wb,
        router_config,
        Some(Arc::new(cluster)),
        !config.seeds.is_empty(),
    );
    tokio::spawn(Arc::clone(&router).serve(inbox));
    tracing::info!(node = %config.node_name, %cluster_addr, seeds = ?config.seeds, "cluster layer started");
    // Safety net for admin-change broadcasts a peer missed.
    tokio::spawn(async move {
        let mut t = tokio::time::interval(std::time::Duration::from_secs(30));
        t.tick().await;
        loop {
            t.tick().await;
            if let Err(e) = service.reload_all_keys().await {
                tracing::warn!(error = %e, "periodic key reload failed");
            }
            let _ = service.reload_tiers().await;
            let _ = service.reload_blocks().await;
        }
    });
    Ok(router)
}

/// The running HTTP planes and flusher.
struct Serving {
    config: Arc<Config>,
    ready: Arc<AtomicBool>,
    stop: tokio::sync::watch::Sender<bool>,
    data: tokio::task::JoinHandle<std::io::Result<()>>,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
    flusher: tokio::task::JoinHandle<()>,
}

async fn serve(
    config: Config,
    token: &str,
    node: &Limiting,
    router: &Arc<Router>,
) -> anyhow::Result<Serving> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let ready = Arc::new(AtomicBool::new(false));
    let mut config = config;
    // Slow or idle clients are bounded by the planes' caps; the caps by the
    // open-files limit, raised as far as the hard limit allows.
    let nofile = http::server::raise_nofile_limit();
    config.http.max_connections = http::server::effective_cap(config.http.max_connections, nofile);
    let config = Arc::new(config);
    let state = AppState {
        service: Arc::clone(&node.service),
        router: Arc::clone(router),
        config: Arc::clone(&config),
        admin_token_hash: Sha256::digest(token.as_bytes()).into(),
        ready: Arc::clone(&ready),
        metrics,
    };
    let ids = RequestIds::new(random_hex(4));
    let data_l = tokio::net::TcpListener::bind(config.data_addr)
        .await
        .with_context(|| format!("binding data_addr {}", config.data_addr))?;
    let admin_l = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding admin_addr {}", config.admin_addr))?;
    let data_addr = data_l.local_addr()?;
    let admin_addr = admin_l.local_addr()?;

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let flusher = {
        let wb = Arc::clone(&node.core.write_behind);
        let rx = stop_rx.clone();
        node.persistence.handle().spawn(async move {
            let _ = wb.spawn(rx).await;
        })
    };
    let data = {
        let plane = http::data_plane(state.clone(), ids.clone());
        let rx = stop_rx.clone();
        let limits = config.http;
        tokio::spawn(http::server::serve("data", data_l, plane, limits, rx))
    };
    let admin = {
        let router = http::admin_router(state, ids);
        let rx = stop_rx.clone();
        let limits = config.http;
        tokio::spawn(http::server::serve("admin", admin_l, router, limits, rx))
    };
    ready.store(true, Ordering::Release);
    tracing::info!(%data_addr, %admin_addr, node = %config.node_name, "ringlimit node ready");
    // One line on stdout for scripts and tests that start nodes on port 0.
    #[allow(clippy::print_stdout)]
    {
        println!("ringlimit listening data_addr={data_addr} admin_addr={admin_addr}");
    }
    Ok(Serving {
        config,
        ready,
        stop,
        data,
        admin,
        flusher,
    })
}

/// The orderly end: keys handed over, requests finished, state saved,
/// pipelines drained, the cluster left.
async fn stop(node: Limiting, router: Arc<Router>, serving: Serving) {
    let Serving {
        config,
        ready,
        stop,
        data,
        admin,
        flusher,
    } = serving;
    if router.cluster().is_some() {
        // Hand every key over before this node stops answering for it.
        router.drain().await;
    }
    tracing::info!("shutting down: draining requests");
    ready.store(false, Ordering::Release);
    let _ = stop.send(true);
    let drain = async {
        let _ = data.await;
        let _ = admin.await;
    };
    if tokio::time::timeout(config.shutdown_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time");
    }
    let _ = flusher.await;
    let limiters = &node.core.limiters;
    if !limiters.passivate_all(config.shutdown_timeout).await {
        tracing::warn!("some key limiters did not passivate in time");
    }
    let wb = &node.core.write_behind;
    match wb.drain(5).await {
        Ok(()) => tracing::info!("state saved"),
        Err(e) => {
            tracing::error!(error = %e, pending = wb.pending_len(), "could not save all state")
        }
    }
    // The last admits and denials are queued now: write them out.
    node.pipelines.drain().await;
    tracing::info!(pipelines = ?node.pipelines.stats(), "pipelines drained");
    drop(node.background);
    drop(node.persistence);
    limiters.stop();
    if let Some(c) = router.cluster() {
        c.leave().await;
    }
}

/// Applies the retention periods to the embedded store, hourly (ScyllaDB
/// applies them itself through TTLs).
fn spawn_retention(store: EmbeddedStore, retention: Retention) {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(std::time::Duration::from_secs(3_600));
        loop {
            t.tick().await;
            match store
                .apply_retention(ringlimit_actors::clock::wall_ms(), retention)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "retention applied"),
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
        }
    });
}

/// Removes expired IP blocks from the store every few seconds (they stop
/// matching at their expiry whatever this does).
fn spawn_block_expiry(service: Arc<Service>) {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            t.tick().await;
            if let Err(e) = service.expire_blocks().await {
                tracing::debug!(error = %e, "expiring blocks failed");
            }
        }
    });
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
