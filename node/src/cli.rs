//! Command-line flags. Each flag overrides the environment and the file.

use crate::config::RawConfig;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// ringlimit: a clustered, in-memory rate limiter and API-key service.
#[derive(Debug, Parser)]
#[command(name = "ringlimit", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (the default).
    Serve,
    /// Check the configuration, print it, and exit (64 when invalid).
    CheckConfig,
    /// Apply the CQL migrations in cql/ to the configured ScyllaDB keyspace, and exit.
    Migrate,
    /// Start only the cluster layer with a trivial handler (multi-process tests).
    #[command(hide = true)]
    ClusterProbe(ProbeArgs),
}

/// Settings; every one can also be set by environment (`RINGLIMIT_…`) or file.
#[derive(Debug, Args, Default)]
pub struct Flags {
    /// TOML config file (env RINGLIMIT_CONFIG).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[arg(long, global = true)]
    pub data_addr: Option<String>,
    #[arg(long, global = true)]
    pub admin_addr: Option<String>,
    #[arg(long, global = true)]
    pub admin_token: Option<String>,
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// text or json.
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[arg(long, global = true)]
    pub node_name: Option<String>,
    #[arg(long, global = true)]
    pub max_body_bytes: Option<usize>,
    #[arg(long, global = true)]
    pub max_batch: Option<usize>,
    #[arg(long, global = true)]
    pub idle_timeout_ms: Option<u64>,
    #[arg(long, global = true)]
    pub max_active_keys: Option<usize>,
    #[arg(long, global = true)]
    pub flush_interval_ms: Option<u64>,
    #[arg(long, global = true)]
    pub usage_flush_interval_ms: Option<u64>,
    #[arg(long, global = true)]
    pub shutdown_timeout_ms: Option<u64>,
    #[arg(long, global = true)]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated host:port.
    #[arg(long, global = true)]
    pub redis_cluster_nodes: Option<String>,
    #[arg(long, global = true)]
    pub redis_timeout_ms: Option<u64>,
    #[arg(long, global = true)]
    pub max_pending_keys: Option<usize>,
    #[arg(long, global = true)]
    pub scylla_nodes: Option<String>,
    #[arg(long, global = true)]
    pub scylla_keyspace: Option<String>,
    /// CQL replication map for a new keyspace, e.g. "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".
    #[arg(long, global = true)]
    pub scylla_replication: Option<String>,
    #[arg(long, global = true)]
    pub cluster_addr: Option<String>,
    #[arg(long, global = true)]
    pub seeds: Option<String>,
    #[arg(long, global = true)]
    pub cookie: Option<String>,
    #[arg(long, global = true)]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Comma-separated tiers that fail closed when a key's owner is unreachable.
    #[arg(long, global = true)]
    pub fail_closed_tiers: Option<String>,
    /// host:port peers dial to reach this node (when cluster_addr binds 0.0.0.0).
    #[arg(long, global = true)]
    pub advertise_addr: Option<String>,
    /// Cluster TLS: this node's certificate chain (PEM), signed by the cluster CA.
    #[arg(long, global = true)]
    pub cluster_tls_cert: Option<PathBuf>,
    /// Cluster TLS: the private key of --cluster-tls-cert (PEM).
    #[arg(long, global = true)]
    pub cluster_tls_key: Option<PathBuf>,
    /// Cluster TLS: the CA certificate every node's certificate is signed by (PEM).
    #[arg(long, global = true)]
    pub cluster_tls_ca: Option<PathBuf>,
    /// Cluster TLS: the name every node's certificate carries (default: the host dialed).
    #[arg(long, global = true)]
    pub cluster_tls_server_name: Option<String>,
    /// Billing period: `monthly` or a length such as 15m, 1h, 7d.
    #[arg(long, global = true)]
    pub billing_period: Option<String>,
    /// A request's headers must arrive within this many ms.
    #[arg(long, global = true)]
    pub http_header_timeout_ms: Option<u64>,
    /// A request's body must arrive within this many ms after its headers (else 408).
    #[arg(long, global = true)]
    pub http_body_timeout_ms: Option<u64>,
    /// A keep-alive connection idle this many ms is closed.
    #[arg(long, global = true)]
    pub http_idle_timeout_ms: Option<u64>,
    /// Open connections per HTTP plane; more are closed at once.
    #[arg(long, global = true)]
    pub http_max_connections: Option<usize>,
}

impl Flags {
    pub fn into_raw(self) -> RawConfig {
        RawConfig {
            data_addr: self.data_addr,
            admin_addr: self.admin_addr,
            admin_token: self.admin_token,
            data_dir: self.data_dir,
            log_format: self.log_format,
            log_level: self.log_level,
            node_name: self.node_name,
            max_body_bytes: self.max_body_bytes,
            max_batch: self.max_batch,
            idle_timeout_ms: self.idle_timeout_ms,
            max_active_keys: self.max_active_keys,
            flush_interval_ms: self.flush_interval_ms,
            usage_flush_interval_ms: self.usage_flush_interval_ms,
            shutdown_timeout_ms: self.shutdown_timeout_ms,
            redis_url: self.redis_url,
            redis_cluster_nodes: self.redis_cluster_nodes,
            redis_timeout_ms: self.redis_timeout_ms,
            max_pending_keys: self.max_pending_keys,
            scylla_nodes: self.scylla_nodes,
            scylla_keyspace: self.scylla_keyspace,
            scylla_replication: self.scylla_replication,
            cluster_addr: self.cluster_addr,
            seeds: self.seeds,
            cookie: self.cookie,
            billing_period: self.billing_period,
            heartbeat_timeout_ms: self.heartbeat_timeout_ms,
            fail_closed_tiers: self.fail_closed_tiers,
            advertise_addr: self.advertise_addr,
            http_header_timeout_ms: self.http_header_timeout_ms,
            http_body_timeout_ms: self.http_body_timeout_ms,
            http_idle_timeout_ms: self.http_idle_timeout_ms,
            http_max_connections: self.http_max_connections,
            cluster_tls_cert: self.cluster_tls_cert,
            cluster_tls_key: self.cluster_tls_key,
            cluster_tls_ca: self.cluster_tls_ca,
            cluster_tls_server_name: self.cluster_tls_server_name,
            tiers: None,
            ..RawConfig::default()
        }
    }
}

// The hidden `cluster-probe` subcommand (`cluster::probe`) reads these
// besides the global flags; they live here so the arrow points one way:
// the probe uses the command line, the command line knows no probe.

/// The probe's own flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Heartbeat interval.
    #[arg(long, default_value_t = 500)]
    pub heartbeat_ms: u64,
    /// Silence after which a peer leaves the ring.
    #[arg(long, default_value_t = 2000)]
    pub heartbeat_timeout_ms: u64,
    /// Timeout of a forwarded batch (and of identify and admin RPCs).
    #[arg(long, default_value_t = 500)]
    pub forward_timeout_ms: u64,
    /// K: batches in flight per peer.
    #[arg(long, default_value_t = 4)]
    pub max_in_flight_batches: usize,
    /// Address peers dial (default: the cluster address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Forward a check for this key to its owner every 200 ms and print `probe …` lines.
    #[arg(long)]
    pub probe_key: Option<String>,
}
