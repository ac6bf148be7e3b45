//! The settings of the cluster layer, their defaults and their validation.

use super::dialer::Backoff;
use super::tls::TlsFiles;
use std::net::SocketAddr;
use std::time::Duration;

pub use super::settings::MIN_COOKIE_LEN;

/// Settings of the cluster layer.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's configured name: the ring member name. No `@`.
    pub node_name: String,
    /// Where the cluster listener binds.
    pub cluster_addr: SocketAddr,
    /// `host:port` peers dial to reach this node (default: `cluster_addr`).
    /// Set it when binding `0.0.0.0` or behind NAT (compose: the service name).
    pub advertise_addr: Option<String>,
    /// The magic cookie every node of the cluster shares
    /// (at least [`MIN_COOKIE_LEN`] characters).
    pub cookie: String,
    /// Other nodes' cluster addresses (`host:port`); this node's own address may be among them.
    pub seeds: Vec<String>,
    /// Heartbeat period (default 500 ms).
    pub heartbeat_interval: Duration,
    /// Silence after which a peer leaves the ring (default 2 s).
    pub heartbeat_timeout: Duration,
    /// Timeout of identify and admin RPCs (default 500 ms).
    pub forward_timeout: Duration,
    /// Longest one forwarded batch of checks waits for the owner's answer
    /// (default 2 s, the heartbeat timeout). A caller of
    /// [`Cluster::forward`](super::Cluster::forward) waits at most twice
    /// this (queue + RPC).
    ///
    /// A slow owner is waited for, not bypassed: its answer may already be
    /// counted, so answering without it (fail-open) could admit twice. An
    /// owner that dies is noticed sooner, when its session drops or its
    /// heartbeats stop, which fails the wait as `Unreachable`, and the
    /// router re-routes the check on the new ring.
    pub check_timeout: Duration,
    /// Timeout of one handoff RPC (default 5 s).
    pub handoff_timeout: Duration,
    /// Checks per forwarded batch (default 256).
    pub max_batch: usize,
    /// K: batches outstanding per peer before checks queue (default 4).
    pub max_in_flight_batches: usize,
    /// Checks queued per peer before `Overloaded` (default 16 × max_batch).
    pub max_queued_checks: usize,
    /// Reconnect back-off (default 100 ms doubling to 2 s).
    pub reconnect: Backoff,
    /// Mutual TLS between nodes (default: none, plaintext). With it, every
    /// session in and out is TLS 1.3 with a certificate signed by the CA.
    pub tls: Option<TlsFiles>,
}

impl ClusterConfig {
    /// A config with the defaults.
    pub fn new(
        node_name: impl Into<String>,
        cluster_addr: SocketAddr,
        cookie: impl Into<String>,
        seeds: Vec<String>,
    ) -> ClusterConfig {
        ClusterConfig {
            node_name: node_name.into(),
            cluster_addr,
            advertise_addr: None,
            cookie: cookie.into(),
            seeds,
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(2),
            forward_timeout: Duration::from_millis(500),
            check_timeout: Duration::from_secs(2),
            handoff_timeout: Duration::from_secs(5),
            max_batch: 256,
            max_in_flight_batches: 4,
            max_queued_checks: 16 * 256,
            reconnect: Backoff::default(),
            tls: None,
        }
    }

    /// The address peers dial.
    pub fn advertised(&self) -> String {
        self.advertise_addr
            .clone()
            .unwrap_or_else(|| self.cluster_addr.to_string())
    }

    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |m: &str| Err(ClusterError::InvalidConfig(m.to_string()));
        if self.node_name.is_empty() || self.node_name.contains('@') {
            return bad("node_name must be non-empty and without '@'");
        }
        if self.cookie.chars().count() < MIN_COOKIE_LEN {
            return bad(&format!(
                "the cookie (RINGLIMIT_COOKIE) must be at least {MIN_COOKIE_LEN} characters"
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout <= self.heartbeat_interval {
            return bad("heartbeat_timeout must be longer than a non-zero heartbeat_interval");
        }
        if self.forward_timeout.is_zero()
            || self.check_timeout.is_zero()
            || self.handoff_timeout.is_zero()
        {
            return bad("timeouts must be non-zero");
        }
        if self.max_batch == 0 || self.max_in_flight_batches == 0 {
            return bad("max_batch and max_in_flight_batches must be at least 1");
        }
        if self.reconnect.initial.is_zero() || self.reconnect.max < self.reconnect.initial {
            return bad("reconnect back-off must start above zero and cap at or above its start");
        }
        let adv = self.advertised();
        if adv
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return bad("advertise_addr must be host:port");
        }
        Ok(())
    }
}

/// Why the cluster layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid cluster config: {0}")]
    InvalidConfig(String),
    #[error("cannot start the cluster listener on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error("cannot start the cluster actors: {0}")]
    Spawn(String),
    #[error("cluster TLS: {0}")]
    Tls(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_validate_and_bad_ones_do_not() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let c = ClusterConfig::new("a", addr, "a-cluster-cookie-of-32-characters", vec![]);
        assert!(c.validate().is_ok());
        assert_eq!(c.advertised(), "127.0.0.1:7000");
        let mut b = c.clone();
        b.node_name = "a@b".into();
        assert!(b.validate().is_err());
        let mut b = c.clone();
        b.heartbeat_timeout = b.heartbeat_interval;
        assert!(b.validate().is_err());
        let mut b = c.clone();
        b.cookie.clear();
        assert!(b.validate().is_err());
        let mut b = c.clone();
        b.cookie = "x".repeat(MIN_COOKIE_LEN - 1);
        let e = b.validate().unwrap_err().to_string();
        assert!(
            e.contains("RINGLIMIT_COOKIE") && !e.contains(&b.cookie),
            "{e}"
        );
        b.cookie.push('x');
        assert!(b.validate().is_ok());
        let mut b = c.clone();
        b.advertise_addr = Some("nohost".into());
        assert!(b.validate().is_err());
        let mut b = c;
        b.advertise_addr = Some("node-a:7000".into());
        assert!(b.validate().is_ok());
    }
}
