//! One typed configuration from defaults, a TOML file, the environment and
//! flags, in increasing order of precedence, checked by [`Config::from_raw`]
//! before any port is bound. A bad config exits with code 64 naming the field.
//!
//! Every setting has one name per source: `data_addr` in the file,
//! `RINGLIMIT_DATA_ADDR` in the environment, `--data-addr` as a flag.

pub mod pipelines;

use crate::cluster::settings::{MIN_COOKIE_LEN, TlsFiles};
use ringlimit_actors::pipeline::{AbuseRule, PipelineConfig};
use ringlimit_actors::redact;
use ringlimit_actors::storage::{Retention, TierRecord};
use ringlimit_protocol::limits::validate_limits;
use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A config problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// Settings as read from one source; absent means "not set here".
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub data_addr: Option<String>,
    pub admin_addr: Option<String>,
    pub admin_token: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub node_name: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_batch: Option<usize>,
    pub idle_timeout_ms: Option<u64>,
    pub max_active_keys: Option<usize>,
    pub flush_interval_ms: Option<u64>,
    pub usage_flush_interval_ms: Option<u64>,
    pub shutdown_timeout_ms: Option<u64>,
    pub redis_url: Option<String>,
    pub redis_cluster_nodes: Option<String>,
    pub redis_timeout_ms: Option<u64>,
    pub max_pending_keys: Option<usize>,
    pub scylla_nodes: Option<String>,
    pub scylla_keyspace: Option<String>,
    pub scylla_replication: Option<String>,
    pub cluster_addr: Option<String>,
    pub seeds: Option<String>,
    pub cookie: Option<String>,
    pub heartbeat_timeout_ms: Option<u64>,
    pub fail_closed_tiers: Option<String>,
    pub advertise_addr: Option<String>,
    pub http_header_timeout_ms: Option<u64>,
    pub http_body_timeout_ms: Option<u64>,
    pub http_idle_timeout_ms: Option<u64>,
    pub http_max_connections: Option<usize>,
    pub cluster_tls_cert: Option<PathBuf>,
    pub cluster_tls_key: Option<PathBuf>,
    pub cluster_tls_ca: Option<PathBuf>,
    pub cluster_tls_server_name: Option<String>,
    /// `[tiers.NAME] limits = [...]`: replaces or adds tiers over the defaults.
    pub tiers: Option<BTreeMap<String, TierConfig>>,
    /// `monthly` or a length (`15m`, `1h`, `7d`); also `[billing] period`.
    pub billing_period: Option<String>,
    pub retention: Option<pipelines::RetentionRaw>,
    pub billing: Option<pipelines::BillingRaw>,
    pub alerts: Option<pipelines::AlertsRaw>,
    pub pipelines: Option<pipelines::PipelinesRaw>,
    pub abuse_rules: Option<Vec<AbuseRule>>,
}

/// A tier in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub limits: Vec<LimitSpec>,
}

/// `(environment name, field)` of every setting that the environment can set.
pub const ENV_NAMES: &[(&str, &str)] = &[
    ("RINGLIMIT_DATA_ADDR", "data_addr"),
    ("RINGLIMIT_ADMIN_ADDR", "admin_addr"),
    ("RINGLIMIT_ADMIN_TOKEN", "admin_token"),
    ("RINGLIMIT_DATA_DIR", "data_dir"),
    ("RINGLIMIT_LOG_FORMAT", "log_format"),
    ("RINGLIMIT_LOG_LEVEL", "log_level"),
    ("RINGLIMIT_NODE_NAME", "node_name"),
    ("RINGLIMIT_MAX_BODY_BYTES", "max_body_bytes"),
    ("RINGLIMIT_MAX_BATCH", "max_batch"),
    ("RINGLIMIT_IDLE_TIMEOUT_MS", "idle_timeout_ms"),
    ("RINGLIMIT_MAX_ACTIVE_KEYS", "max_active_keys"),
    ("RINGLIMIT_FLUSH_INTERVAL_MS", "flush_interval_ms"),
    (
        "RINGLIMIT_USAGE_FLUSH_INTERVAL_MS",
        "usage_flush_interval_ms",
    ),
    ("RINGLIMIT_SHUTDOWN_TIMEOUT_MS", "shutdown_timeout_ms"),
    ("RINGLIMIT_REDIS_URL", "redis_url"),
    ("RINGLIMIT_REDIS_CLUSTER_NODES", "redis_cluster_nodes"),
    ("RINGLIMIT_REDIS_TIMEOUT_MS", "redis_timeout_ms"),
    ("RINGLIMIT_MAX_PENDING_KEYS", "max_pending_keys"),
    ("RINGLIMIT_SCYLLA_NODES", "scylla_nodes"),
    ("RINGLIMIT_SCYLLA_KEYSPACE", "scylla_keyspace"),
    ("RINGLIMIT_SCYLLA_REPLICATION", "scylla_replication"),
    ("RINGLIMIT_CLUSTER_ADDR", "cluster_addr"),
    ("RINGLIMIT_SEEDS", "seeds"),
    ("RINGLIMIT_COOKIE", "cookie"),
    ("RINGLIMIT_HEARTBEAT_TIMEOUT_MS", "heartbeat_timeout_ms"),
    ("RINGLIMIT_FAIL_CLOSED_TIERS", "fail_closed_tiers"),
    ("RINGLIMIT_ADVERTISE_ADDR", "advertise_addr"),
    ("RINGLIMIT_CLUSTER_TLS_CERT", "cluster_tls_cert"),
    ("RINGLIMIT_CLUSTER_TLS_KEY", "cluster_tls_key"),
    ("RINGLIMIT_CLUSTER_TLS_CA", "cluster_tls_ca"),
    (
        "RINGLIMIT_CLUSTER_TLS_SERVER_NAME",
        "cluster_tls_server_name",
    ),
    ("RINGLIMIT_BILLING_PERIOD", "billing_period"),
    ("RINGLIMIT_HTTP_HEADER_TIMEOUT_MS", "http_header_timeout_ms"),
    ("RINGLIMIT_HTTP_BODY_TIMEOUT_MS", "http_body_timeout_ms"),
    ("RINGLIMIT_HTTP_IDLE_TIMEOUT_MS", "http_idle_timeout_ms"),
    ("RINGLIMIT_HTTP_MAX_CONNECTIONS", "http_max_connections"),
];

fn parse_num<T: std::str::FromStr>(env: &str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| bad(env, format!("'{v}' is not a valid number")))
}

impl RawConfig {
    /// Reads the settings of the environment through `get` (a HashMap in tests).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = RawConfig::default();
        for (env, _) in ENV_NAMES {
            let Some(v) = get(env) else { continue };
            if v.is_empty() {
                continue;
            }
            match *env {
                "RINGLIMIT_DATA_ADDR" => r.data_addr = Some(v),
                "RINGLIMIT_ADMIN_ADDR" => r.admin_addr = Some(v),
                "RINGLIMIT_ADMIN_TOKEN" => r.admin_token = Some(v),
                "RINGLIMIT_DATA_DIR" => r.data_dir = Some(v.into()),
                "RINGLIMIT_LOG_FORMAT" => r.log_format = Some(v),
                "RINGLIMIT_LOG_LEVEL" => r.log_level = Some(v),
                "RINGLIMIT_NODE_NAME" => r.node_name = Some(v),
                "RINGLIMIT_MAX_BODY_BYTES" => r.max_body_bytes = Some(parse_num(env, &v)?),
                "RINGLIMIT_MAX_BATCH" => r.max_batch = Some(parse_num(env, &v)?),
                "RINGLIMIT_IDLE_TIMEOUT_MS" => r.idle_timeout_ms = Some(parse_num(env, &v)?),
                "RINGLIMIT_MAX_ACTIVE_KEYS" => r.max_active_keys = Some(parse_num(env, &v)?),
                "RINGLIMIT_FLUSH_INTERVAL_MS" => r.flush_interval_ms = Some(parse_num(env, &v)?),
                "RINGLIMIT_USAGE_FLUSH_INTERVAL_MS" => {
                    r.usage_flush_interval_ms = Some(parse_num(env, &v)?)
                }
                "RINGLIMIT_SHUTDOWN_TIMEOUT_MS" => {
                    r.shutdown_timeout_ms = Some(parse_num(env, &v)?)
                }
                "RINGLIMIT_REDIS_URL" => r.redis_url = Some(v),
                "RINGLIMIT_REDIS_CLUSTER_NODES" => r.redis_cluster_nodes = Some(v),
                "RINGLIMIT_REDIS_TIMEOUT_MS" => r.redis_timeout_ms = Some(parse_num(env, &v)?),
                "RINGLIMIT_MAX_PENDING_KEYS" => r.max_pending_keys = Some(parse_num(env, &v)?),
                "RINGLIMIT_SCYLLA_NODES" => r.scylla_nodes = Some(v),
                "RINGLIMIT_SCYLLA_KEYSPACE" => r.scylla_keyspace = Some(v),
                "RINGLIMIT_SCYLLA_REPLICATION" => r.scylla_replication = Some(v),
                "RINGLIMIT_CLUSTER_ADDR" => r.cluster_addr = Some(v),
                "RINGLIMIT_SEEDS" => r.seeds = Some(v),
                "RINGLIMIT_COOKIE" => r.cookie = Some(v),
                "RINGLIMIT_HEARTBEAT_TIMEOUT_MS" => {
                    r.heartbeat_timeout_ms = Some(parse_num(env, &v)?)
                }
                "RINGLIMIT_FAIL_CLOSED_TIERS" => r.fail_closed_tiers = Some(v),
                "RINGLIMIT_ADVERTISE_ADDR" => r.advertise_addr = Some(v),
                "RINGLIMIT_CLUSTER_TLS_CERT" => r.cluster_tls_cert = Some(v.into()),
                "RINGLIMIT_CLUSTER_TLS_KEY" => r.cluster_tls_key = Some(v.into()),
                "RINGLIMIT_CLUSTER_TLS_CA" => r.cluster_tls_ca = Some(v.into()),
                "RINGLIMIT_CLUSTER_TLS_SERVER_NAME" => r.cluster_tls_server_name = Some(v),
                "RINGLIMIT_BILLING_PERIOD" => r.billing_period = Some(v),
                "RINGLIMIT_HTTP_HEADER_TIMEOUT_MS" => {
                    r.http_header_timeout_ms = Some(parse_num(env, &v)?)
                }
                "RINGLIMIT_HTTP_BODY_TIMEOUT_MS" => {
                    r.http_body_timeout_ms = Some(parse_num(env, &v)?)
                }
                "RINGLIMIT_HTTP_IDLE_TIMEOUT_MS" => {
                    r.http_idle_timeout_ms = Some(parse_num(env, &v)?)
                }
                "RINGLIMIT_HTTP_MAX_CONNECTIONS" => {
                    r.http_max_connections = Some(parse_num(env, &v)?)
                }
                _ => {}
            }
        }
        Ok(r)
    }

    /// Parses a TOML file's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let field = msg
                .split('`')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_else(|| "config file".to_string());
            bad(&field, msg)
        })
    }

    /// Fields set in `over` replace those here.
    pub fn merge(mut self, over: RawConfig) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            data_addr,
            admin_addr,
            admin_token,
            data_dir,
            log_format,
            log_level,
            node_name,
            max_body_bytes,
            max_batch,
            idle_timeout_ms,
            max_active_keys,
            flush_interval_ms,
            usage_flush_interval_ms,
            shutdown_timeout_ms,
            redis_url,
            redis_cluster_nodes,
            redis_timeout_ms,
            max_pending_keys,
            scylla_nodes,
            scylla_keyspace,
            scylla_replication,
            cluster_addr,
            seeds,
            cookie,
            heartbeat_timeout_ms,
            fail_closed_tiers,
            advertise_addr,
            cluster_tls_cert,
            cluster_tls_key,
            cluster_tls_ca,
            cluster_tls_server_name,
            billing_period,
            http_header_timeout_ms,
            http_body_timeout_ms,
            http_idle_timeout_ms,
            http_max_connections,
            retention,
            billing,
            alerts,
            pipelines,
            abuse_rules
        );
        if let Some(t) = over.tiers {
            self.tiers.get_or_insert_with(BTreeMap::new).extend(t);
        }
        self
    }
}

/// Connection limits of each HTTP plane (data and admin alike), against
/// slow and idle clients holding connections and file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's headers must arrive within this time (from the
    /// connection's start, or from the first byte after a keep-alive idle),
    /// else the connection is closed.
    pub header_timeout: Duration,
    /// A request's body must arrive within this time once the headers are
    /// in, else 408 and the connection is closed.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections per plane; more are closed as soon as accepted.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 8_192,
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration. Its `Debug` (what `check-config` prints)
/// hides the admin token and the cookie, and the password of `redis_url`.
#[derive(Clone)]
pub struct Config {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// `None`: generated on first start and kept in `<data_dir>/admin-token`.
    pub admin_token: Option<String>,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_level: String,
    pub node_name: String,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    pub idle_timeout: Duration,
    pub max_active_keys: usize,
    pub flush_interval: Duration,
    /// How often the write-behind writes usage rows (snapshots: every
    /// `flush_interval`).
    pub usage_flush_interval: Duration,
    pub shutdown_timeout: Duration,
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes (`host:port`); exclusive with `redis_url`.
    pub redis_cluster_nodes: Vec<String>,
    pub redis_timeout: Duration,
    /// Unwritten key states above which passivation is refused (state is never dropped).
    pub max_pending_keys: usize,
    pub scylla_nodes: Vec<String>,
    pub scylla_keyspace: String,
    /// CQL replication map used when the keyspace is created.
    pub scylla_replication: Option<String>,
    pub cluster_addr: Option<SocketAddr>,
    pub seeds: Vec<String>,
    pub cookie: Option<String>,
    /// A peer silent this long leaves the ring.
    pub heartbeat_timeout: Duration,
    /// Tiers denied (503) rather than allowed when a key's owner is unreachable.
    pub fail_closed_tiers: Vec<String>,
    /// `host:port` peers dial to reach this node (default: cluster_addr).
    pub advertise_addr: Option<String>,
    /// HTTP connections of both planes (see [`HttpLimits`]).
    pub http: HttpLimits,
    /// Mutual TLS between nodes: all three PEM files, or none (plaintext).
    pub cluster_tls: Option<TlsFiles>,
    pub tiers: Vec<TierRecord>,
    /// How long usage history and violations are kept.
    pub retention: Retention,
    /// Violations, abuse rules, billing, alerts.
    pub pipelines: PipelineConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field is named, so a new one must be placed here on purpose.
        let Config {
            data_addr,
            admin_addr,
            admin_token,
            data_dir,
            log_format,
            log_level,
            node_name,
            max_body_bytes,
            max_batch,
            idle_timeout,
            max_active_keys,
            flush_interval,
            usage_flush_interval,
            shutdown_timeout,
            redis_url,
            redis_cluster_nodes,
            redis_timeout,
            max_pending_keys,
            scylla_nodes,
            scylla_keyspace,
            scylla_replication,
            cluster_addr,
            seeds,
            cookie,
            heartbeat_timeout,
            fail_closed_tiers,
            advertise_addr,
            tiers,
            retention,
            pipelines,
            http,
            cluster_tls,
        } = self;
        f.debug_struct("Config")
            .field("data_addr", data_addr)
            .field("admin_addr", admin_addr)
            .field("admin_token", &redact::secret(admin_token))
            .field("data_dir", data_dir)
            .field("log_format", log_format)
            .field("log_level", log_level)
            .field("node_name", node_name)
            .field("max_body_bytes", max_body_bytes)
            .field("max_batch", max_batch)
            .field("idle_timeout", idle_timeout)
            .field("max_active_keys", max_active_keys)
            .field("flush_interval", flush_interval)
            .field("usage_flush_interval", usage_flush_interval)
            .field("shutdown_timeout", shutdown_timeout)
            .field("redis_url", &redis_url.as_deref().map(redact::url))
            .field("redis_cluster_nodes", redis_cluster_nodes)
            .field("redis_timeout", redis_timeout)
            .field("max_pending_keys", max_pending_keys)
            .field("scylla_nodes", scylla_nodes)
            .field("scylla_keyspace", scylla_keyspace)
            .field("scylla_replication", scylla_replication)
            .field("cluster_addr", cluster_addr)
            .field("seeds", seeds)
            .field("cookie", &redact::secret(cookie))
            .field("heartbeat_timeout", heartbeat_timeout)
            .field("fail_closed_tiers", fail_closed_tiers)
            .field("advertise_addr", advertise_addr)
            .field("tiers", tiers)
            .field("retention", retention)
            .field("pipelines", pipelines)
            .field("http", http)
            .field("cluster_tls", cluster_tls)
            .finish()
    }
}

fn lim(
    name: &str,
    algorithm: AlgorithmKind,
    limit: u64,
    window_ms: u64,
    burst: Option<u64>,
) -> LimitSpec {
    LimitSpec {
        name: name.into(),
        algorithm,
        limit,
        window_ms,
        burst,
    }
}

const SECOND: u64 = 1_000;
const HOUR: u64 = 3_600_000;
const MONTH: u64 = 30 * 86_400_000;

/// The tiers that exist with no config file.
/// How often usage rows are written by default. Every active key writes
/// three rows (its minute, hour and day buckets) per interval: at 1 s, a
/// node checking 10 000 keys sent 30 000 writes a second to its usage
/// store, and on Redis + a CQL server that load (not the checks) set the
/// node's throughput (0.49x of the axum ceiling against 0.89x at 10 s,
/// `loadtest/ab`, same run). Usage history and billing lag by up to this
/// much; nothing is lost in between (the open buckets travel in the key's
/// snapshot, written every `flush_interval_ms`).
pub const DEFAULT_USAGE_FLUSH_INTERVAL_MS: u64 = 10_000;

pub fn default_tiers() -> Vec<TierRecord> {
    use AlgorithmKind::*;
    vec![
        TierRecord {
            name: "free".into(),
            limits: vec![
                lim("per-second", SlidingWindow, 10, SECOND, None),
                lim("per-hour", SlidingWindow, 1_000, HOUR, None),
            ],
        },
        TierRecord {
            name: "pro".into(),
            limits: vec![
                lim("per-second", TokenBucket, 100, SECOND, Some(200)),
                lim("per-month", SlidingWindow, 1_000_000, MONTH, None),
            ],
        },
        TierRecord {
            name: "enterprise".into(),
            limits: vec![
                lim("per-second", TokenBucket, 1_000, SECOND, Some(2_000)),
                lim("per-month", SlidingWindow, 100_000_000, MONTH, None),
            ],
        },
    ]
}

fn addr(field: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    v.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| bad(field, format!("'{v}' is not a host:port address")))
}

/// `host:port` without resolving the host (peers may not resolve yet at start-up).
fn host_port(field: &str, v: &str) -> Result<(), ConfigError> {
    match v.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(bad(field, format!("'{v}' is not a host:port address"))),
    }
}

fn list(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn http_limits(r: &RawConfig) -> Result<HttpLimits, ConfigError> {
    let d = HttpLimits::default();
    let ms = |field: &str, v: Option<u64>, default: Duration, max: u64| {
        let v = v.unwrap_or(default.as_millis() as u64);
        if !(100..=max).contains(&v) {
            return Err(bad(field, format!("must be between 100 and {max}")));
        }
        Ok(Duration::from_millis(v))
    };
    let max_connections = r.http_max_connections.unwrap_or(d.max_connections);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(bad("http_max_connections", "must be between 1 and 1000000"));
    }
    Ok(HttpLimits {
        header_timeout: ms(
            "http_header_timeout_ms",
            r.http_header_timeout_ms,
            d.header_timeout,
            600_000,
        )?,
        body_timeout: ms(
            "http_body_timeout_ms",
            r.http_body_timeout_ms,
            d.body_timeout,
            600_000,
        )?,
        idle_timeout: ms(
            "http_idle_timeout_ms",
            r.http_idle_timeout_ms,
            d.idle_timeout,
            3_600_000,
        )?,
        max_connections,
    })
}

impl Config {
    /// Applies defaults and checks every field.
    pub fn from_raw(r: RawConfig) -> Result<Config, ConfigError> {
        let data_addr = addr(
            "data_addr",
            r.data_addr.as_deref().unwrap_or("127.0.0.1:8080"),
        )?;
        let admin_addr = addr(
            "admin_addr",
            r.admin_addr.as_deref().unwrap_or("127.0.0.1:8081"),
        )?;
        if data_addr == admin_addr && data_addr.port() != 0 {
            return Err(bad("admin_addr", "must differ from data_addr"));
        }
        if let Some(t) = &r.admin_token
            && t.len() < 16
        {
            return Err(bad("admin_token", "must be at least 16 characters"));
        }
        let log_format = match r.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(bad(
                    "log_format",
                    format!("'{other}' is not one of text, json"),
                ));
            }
        };
        let log_level = r.log_level.clone().unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(bad(
                "log_level",
                format!("'{log_level}' is not a valid filter (e.g. info, debug)"),
            ));
        }
        let node_name = r.node_name.clone().unwrap_or_else(|| "node-1".into());
        if node_name.is_empty()
            || node_name.len() > 64
            || !node_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(bad(
                "node_name",
                "must be 1 to 64 characters of letters, digits, '-', '_' and '.'",
            ));
        }
        let max_body_bytes = r.max_body_bytes.unwrap_or(64 * 1024);
        if !(256..=64 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(bad("max_body_bytes", "must be between 256 and 67108864"));
        }
        let max_batch = r.max_batch.unwrap_or(1_000);
        if !(1..=100_000).contains(&max_batch) {
            return Err(bad("max_batch", "must be between 1 and 100000"));
        }
        let idle_timeout_ms = r.idle_timeout_ms.unwrap_or(300_000);
        if idle_timeout_ms == 0 {
            return Err(bad("idle_timeout_ms", "must be at least 1"));
        }
        let max_active_keys = r
            .max_active_keys
            .unwrap_or(ringlimit_actors::limiter::DEFAULT_MAX_ACTIVE);
        if max_active_keys == 0 {
            return Err(bad("max_active_keys", "must be at least 1"));
        }
        let flush_interval_ms = r.flush_interval_ms.unwrap_or(100);
        if !(1..=60_000).contains(&flush_interval_ms) {
            return Err(bad("flush_interval_ms", "must be between 1 and 60000"));
        }
        let usage_flush_interval_ms = r
            .usage_flush_interval_ms
            .unwrap_or(DEFAULT_USAGE_FLUSH_INTERVAL_MS);
        if !(1..=60_000).contains(&usage_flush_interval_ms) {
            return Err(bad(
                "usage_flush_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        let shutdown_timeout_ms = r.shutdown_timeout_ms.unwrap_or(10_000);
        if let Some(u) = &r.redis_url
            && !(u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            return Err(bad("redis_url", "must start with redis:// or rediss://"));
        }
        let redis_cluster_nodes = list(&r.redis_cluster_nodes);
        for n in &redis_cluster_nodes {
            host_port("redis_cluster_nodes", n)?;
        }
        if r.redis_url.is_some() && !redis_cluster_nodes.is_empty() {
            return Err(bad(
                "redis_cluster_nodes",
                "set either redis_url or redis_cluster_nodes, not both",
            ));
        }
        let redis_timeout_ms = r.redis_timeout_ms.unwrap_or(250);
        if !(1..=60_000).contains(&redis_timeout_ms) {
            return Err(bad("redis_timeout_ms", "must be between 1 and 60000"));
        }
        let max_pending_keys = r.max_pending_keys.unwrap_or(1_000_000);
        if max_pending_keys == 0 {
            return Err(bad("max_pending_keys", "must be at least 1"));
        }
        let scylla_nodes = list(&r.scylla_nodes);
        for n in &scylla_nodes {
            host_port("scylla_nodes", n)?;
        }
        let scylla_keyspace = r
            .scylla_keyspace
            .clone()
            .unwrap_or_else(|| "ringlimit".into());
        if scylla_keyspace.is_empty()
            || scylla_keyspace.len() > 48
            || !scylla_keyspace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(bad(
                "scylla_keyspace",
                "must be 1 to 48 characters of letters, digits and '_'",
            ));
        }
        let cluster_addr = r
            .cluster_addr
            .as_deref()
            .map(|a| addr("cluster_addr", a))
            .transpose()?;
        let seeds = list(&r.seeds);
        for s in &seeds {
            host_port("seeds", s)?;
        }
        if let Some(c) = &r.cookie
            && !c.is_empty()
            && c.chars().count() < MIN_COOKIE_LEN
        {
            return Err(bad(
                "cookie",
                format!(
                    "RINGLIMIT_COOKIE must be at least {} characters (a shorter cookie is guessable)",
                    MIN_COOKIE_LEN
                ),
            ));
        }
        if cluster_addr.is_some() {
            if scylla_nodes.is_empty() {
                return Err(bad(
                    "scylla_nodes",
                    "a cluster keeps its keys in ScyllaDB: set scylla_nodes with cluster_addr",
                ));
            }
            if r.cookie.as_deref().is_none_or(str::is_empty) {
                return Err(bad(
                    "cookie",
                    "a cluster needs the shared magic cookie (RINGLIMIT_COOKIE)",
                ));
            }
            if r.node_name.is_none() {
                return Err(bad(
                    "node_name",
                    "each cluster node needs its own name (RINGLIMIT_NODE_NAME)",
                ));
            }
        }
        let heartbeat_timeout_ms = r.heartbeat_timeout_ms.unwrap_or(2_000);
        if !(600..=60_000).contains(&heartbeat_timeout_ms) {
            return Err(bad("heartbeat_timeout_ms", "must be between 600 and 60000"));
        }
        let fail_closed_tiers = list(&r.fail_closed_tiers);
        if let Some(a) = &r.advertise_addr {
            host_port("advertise_addr", a)?;
        }
        let http = http_limits(&r)?;
        let cluster_tls = TlsFiles::from_settings(
            r.cluster_tls_cert.clone(),
            r.cluster_tls_key.clone(),
            r.cluster_tls_ca.clone(),
            r.cluster_tls_server_name.clone(),
        )
        .map_err(|(field, message)| bad(field, message))?;
        let mut tiers = default_tiers();
        for (name, t) in r.tiers.clone().unwrap_or_default() {
            validate_limits(&t.limits)
                .map_err(|e| bad(&format!("tiers.{name}.limits.{}", e.field), e.message))?;
            tiers.retain(|d| d.name != name);
            tiers.push(TierRecord {
                name,
                limits: t.limits,
            });
        }
        let retention = pipelines::retention(r.retention.as_ref())?;
        let pipelines = pipelines::pipelines(
            &node_name,
            r.pipelines.as_ref(),
            r.billing.as_ref(),
            r.alerts.as_ref(),
            r.abuse_rules.as_ref(),
            r.billing_period.as_deref(),
        )?;
        Ok(Config {
            data_addr,
            admin_addr,
            admin_token: r.admin_token,
            data_dir: r.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            log_format,
            log_level,
            node_name,
            max_body_bytes,
            max_batch,
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            max_active_keys,
            flush_interval: Duration::from_millis(flush_interval_ms),
            usage_flush_interval: Duration::from_millis(usage_flush_interval_ms),
            shutdown_timeout: Duration::from_millis(shutdown_timeout_ms),
            redis_url: r.redis_url,
            redis_cluster_nodes,
            redis_timeout: Duration::from_millis(redis_timeout_ms),
            max_pending_keys,
            scylla_nodes,
            scylla_keyspace,
            scylla_replication: r.scylla_replication,
            cluster_addr,
            seeds,
            cookie: r.cookie,
            heartbeat_timeout: Duration::from_millis(heartbeat_timeout_ms),
            fail_closed_tiers,
            advertise_addr: r.advertise_addr,
            http,
            cluster_tls,
            tiers,
            retention,
            pipelines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> RawConfig {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RawConfig::from_env(&|k| m.get(k).cloned()).unwrap()
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let file = RawConfig::from_toml(
            "data_addr = \"127.0.0.1:1000\"\nadmin_addr = \"127.0.0.1:1001\"\nnode_name = \"file\"",
        )
        .unwrap();
        let e = env(&[
            ("RINGLIMIT_DATA_ADDR", "127.0.0.1:2000"),
            ("RINGLIMIT_NODE_NAME", "env"),
        ]);
        let flags = RawConfig {
            node_name: Some("flag".into()),
            ..Default::default()
        };
        let c = Config::from_raw(file.merge(e).merge(flags)).unwrap();
        assert_eq!(c.data_addr.port(), 2000);
        assert_eq!(c.admin_addr.port(), 1001);
        assert_eq!(c.node_name, "flag");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_raw(env(&[("RINGLIMIT_DATA_ADDR", "nope")])).unwrap_err();
        assert_eq!(e.field, "data_addr");
        let e = RawConfig::from_env(&|k| (k == "RINGLIMIT_MAX_BATCH").then(|| "x".to_string()))
            .unwrap_err();
        assert_eq!(e.field, "RINGLIMIT_MAX_BATCH");
        let e = RawConfig::from_toml("bogus = 1").unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        let e =
            Config::from_raw(RawConfig::from_toml("[tiers.x]\nlimits = []").unwrap()).unwrap_err();
        assert_eq!(e.field, "tiers.x.limits.limits");
        let e = Config::from_raw(env(&[("RINGLIMIT_ADMIN_TOKEN", "short")])).expect_err("refused");
        assert_eq!(e.field, "admin_token");
        let short = "c".repeat(31);
        let e = Config::from_raw(env(&[("RINGLIMIT_COOKIE", &short)])).unwrap_err();
        assert_eq!(e.field, "cookie");
        assert!(e.to_string().contains("RINGLIMIT_COOKIE"), "{e}");
        assert!(!e.to_string().contains(&short), "{e}");
        let ok = "c".repeat(32);
        assert!(Config::from_raw(env(&[("RINGLIMIT_COOKIE", &ok)])).is_ok());
        let e = Config::from_raw(env(&[("RINGLIMIT_HTTP_HEADER_TIMEOUT_MS", "0")]))
            .expect_err("refused");
        assert_eq!(e.field, "http_header_timeout_ms");
        let e =
            Config::from_raw(env(&[("RINGLIMIT_HTTP_MAX_CONNECTIONS", "0")])).expect_err("refused");
        assert_eq!(e.field, "http_max_connections");
    }

    #[test]
    fn http_limits_are_read_from_the_environment() {
        let c = Config::from_raw(env(&[
            ("RINGLIMIT_HTTP_HEADER_TIMEOUT_MS", "2000"),
            ("RINGLIMIT_HTTP_BODY_TIMEOUT_MS", "3000"),
            ("RINGLIMIT_HTTP_IDLE_TIMEOUT_MS", "4000"),
            ("RINGLIMIT_HTTP_MAX_CONNECTIONS", "50"),
        ]))
        .expect("valid");
        assert_eq!(c.http.header_timeout, Duration::from_millis(2_000));
        assert_eq!(c.http.body_timeout, Duration::from_millis(3_000));
        assert_eq!(c.http.idle_timeout, Duration::from_millis(4_000));
        assert_eq!(c.http.max_connections, 50);
        let d = Config::from_raw(RawConfig::default()).expect("valid");
        assert_eq!(d.http, HttpLimits::default());
    }

    #[test]
    fn file_tiers_replace_and_add() {
        let raw = RawConfig::from_toml(
            "[tiers.free]\nlimits = [{name = \"per-minute\", algorithm = \"fixed_window\", limit = 5, window_ms = 60000}]\n[tiers.gold]\nlimits = [{name = \"a\", limit = 1, window_ms = 1000}]",
        )
        .expect("valid");
        let c = Config::from_raw(raw).expect("valid");
        let free = c.tiers.iter().find(|t| t.name == "free").expect("valid");
        assert_eq!(free.limits.len(), 1);
        assert!(c.tiers.iter().any(|t| t.name == "gold"));
        assert!(c.tiers.iter().any(|t| t.name == "pro"));
    }

    #[test]
    fn debug_shows_no_secret() {
        let raw = RawConfig::from_toml(
            "[alerts]\nowner_secret = \"owner-signing-secret\"\n[[alerts.webhooks]]\nname = \"ops\"\nurl = \"https://hooks.example.com/T0/hook-path-token?k=query-token\"\nsecret = \"endpoint-signing-secret\"",
        )
        .unwrap();
        let c = Config::from_raw(raw.merge(env(&[
            ("RINGLIMIT_ADMIN_TOKEN", "admin-token-value-0123456789"),
            ("RINGLIMIT_COOKIE", "cluster-cookie-value-0123456789abcdef"),
            (
                "RINGLIMIT_REDIS_URL",
                "redis://user:redis-password@cache:6379/0",
            ),
        ])))
        .unwrap();
        let out = format!("{c:?} {c:#?}");
        for secret in [
            "admin-token-value",
            "cluster-cookie-value",
            "redis-password",
            "owner-signing-secret",
            "endpoint-signing-secret",
            "hook-path-token",
            "query-token",
        ] {
            assert!(!out.contains(secret), "{secret} shown: {out}");
        }
        assert!(
            out.contains("redis://user:<redacted>@cache:6379/0"),
            "{out}"
        );
        assert!(out.contains("https://hooks.example.com"), "{out}");
    }

    #[test]
    fn cluster_tls_is_all_three_files_or_none() {
        let c = Config::from_raw(env(&[
            ("RINGLIMIT_CLUSTER_TLS_CERT", "node.pem"),
            ("RINGLIMIT_CLUSTER_TLS_KEY", "node.key"),
            ("RINGLIMIT_CLUSTER_TLS_CA", "ca.pem"),
        ]))
        .expect("all three");
        let tls = c.cluster_tls.expect("tls");
        assert_eq!(tls.ca, PathBuf::from("ca.pem"));
        assert_eq!(tls.server_name, None);
        let e = Config::from_raw(env(&[
            ("RINGLIMIT_CLUSTER_TLS_CERT", "node.pem"),
            ("RINGLIMIT_CLUSTER_TLS_CA", "ca.pem"),
        ]))
        .expect_err("no key");
        assert_eq!(e.field, "cluster_tls_key");
        assert!(e.message.contains("RINGLIMIT_CLUSTER_TLS_KEY"), "{e}");
        let e =
            Config::from_raw(RawConfig::from_toml("cluster_tls_key = \"node.key\"").expect("toml"))
                .expect_err("no cert");
        assert_eq!(e.field, "cluster_tls_cert");
        assert!(
            Config::from_raw(RawConfig::default())
                .expect("defaults")
                .cluster_tls
                .is_none()
        );
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_raw(RawConfig::default()).expect("valid");
        assert_eq!(c.data_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(c.usage_flush_interval, Duration::from_secs(10));
        for t in default_tiers() {
            validate_limits(&t.limits).expect("valid");
        }
    }
}
