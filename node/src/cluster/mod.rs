//! The cluster transport: which node owns a key, who is alive, and how a
//! check reaches its owner.
//!
//! # Layout
//! - this file: the [`Cluster`] handle (start, forward, broadcast, handoff,
//!   leave) and the re-exports of the layer's public types.
//! - `config`: [`ClusterConfig`], its defaults and validation, and
//!   [`ClusterError`].
//! - `messages`: what the layer's actors send each other and answer callers:
//!   the gateway's wire messages ([`GatewayMsg`]) and the RPC helper that
//!   calls them, the driver's inbox, the [`ClusterHandler`] trait with its
//!   [`HandlerError`], [`ForwardError`], [`BroadcastReport`], and the
//!   splitting of a handoff into frames.
//! - `peers`: the state the handle, the driver, the gateway and the links
//!   share: identity, settings, the published ring and member list, and each
//!   peer's gateway and PeerLink.
//! - [`ring`]: the hash ring (hashring, 128 virtual nodes per member, a
//!   stable hash) with its version, and [`RingChange`] computed from two rings.
//! - [`membership`]: a pure state machine of peers fed with sessions,
//!   heartbeats, leaves and ticks (time is an argument).
//! - [`dialer`]: a pure state machine of the addresses to (re)connect to, with
//!   exponential back-off.
//! - [`batcher`]: the pure batching rule of a PeerLink.
//! - [`inbox`]: what peers send, queued for the router (the cluster starts
//!   before the router that serves it).
//! - [`handoff`]: the join gate of a key handoff, a pure state machine the
//!   router drives.
//! - `driver`: the local actor that drives membership and dialer and does
//!   their I/O; `gateway`: the one remotable actor per node; `link`: the
//!   PeerLink tasks; [`wire`]: MessagePack framing of
//!   [`ringlimit_protocol::cluster`].
//! - [`tls`]: mutual TLS between nodes (the PEM files of [`TlsFiles`],
//!   the TLS 1.3 configs, and the accept loop that hands only completed
//!   handshakes to the NodeServer).
//! - [`probe`]: the hidden `ringlimit cluster-probe` subcommand (this layer
//!   alone, for multi-process tests and measurements).
//! - `fixtures` (tests only): a recording handler and a node's shared state
//!   without its actors, for the gateway, link and handle tests.
//!
//! # How it fits together
//! Each node runs a ractor_cluster `NodeServer` (magic cookie, optionally
//! inside mutual TLS, see [`tls`]; Isolated
//! connection mode: this layer decides whom to connect to, from the seeds and
//! from peers' heartbeat gossip, and reconnects with back-off, which
//! ractor_cluster does not do). Its one remotable actor, the gateway, joins
//! the process group `ringlimit`/`gateway`; peers find each other's gateways
//! there and learn their node names by an `Identify` RPC. Every node casts a
//! heartbeat to every gateway it knows every `heartbeat_interval`; a peer
//! silent for `heartbeat_timeout` is taken out of the ring here, and its
//! sessions are stopped; it comes back through a new session and heartbeat.
//! The ring is rebuilt from the live members on every change and published as
//! an `Arc<Ring>` snapshot; each change is logged with old and new version.
//!
//! Checks for a remote owner go through one PeerLink per peer (see
//! [`batcher`]); the receiving gateway answers `NotOwner` for every key its
//! own ring does not give it, and hands only owned keys to the
//! [`ClusterHandler`].

pub mod batcher;
mod config;
pub mod dialer;
pub(crate) mod driver;
#[cfg(test)]
mod fixtures;
pub(crate) mod gateway;
pub mod handoff;
pub mod inbox;
pub(crate) mod link;
pub mod membership;
mod messages;
pub(crate) mod peers;
pub mod probe;
pub mod ring;
pub mod settings;
pub mod tls;
pub mod wire;

pub use config::{ClusterConfig, ClusterError, MIN_COOKIE_LEN};
pub use dialer::Backoff;
pub use membership::{DownReason, MemberState, MemberView};
pub use messages::{
    BroadcastReport, ClusterHandler, ForwardError, GROUP, GatewayMsg, HandlerError, SCOPE,
};
pub use ring::{Ring, RingChange};
pub use ringlimit_protocol::cluster::{
    AdminEvent, ForwardBatch, ForwardCheck, ForwardOutcome, ForwardReply, Handoff,
};
pub use tls::TlsFiles;

use driver::{Core, CoreArgs};
use gateway::Gateway;
use link::Pending;
use messages::{CoreMsg, call_gateway};
use peers::Shared;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{IncomingEncryptionMode, NodeServer, NodeServerMessage};
use ringlimit_actors::clock;
use ringlimit_protocol::cluster::{Ack, MAX_FRAME_BYTES};
use std::sync::Arc;
use std::time::Duration;
use wire::{decode, encode};

/// A running cluster layer. Dropping it stops its actors (without telling
/// peers: call [`Cluster::leave`] first for a graceful exit).
pub struct Cluster {
    shared: Arc<Shared>,
    core: ActorRef<CoreMsg>,
    gateway: ActorRef<GatewayMsg>,
    node_server: ActorRef<NodeServerMessage>,
    /// The TLS listener's accept loop (with mutual TLS only).
    tls_listener: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.shared.name)
            .field("ring", &self.shared.ring())
            .finish()
    }
}

/// This process's incarnation: microseconds since the Unix epoch at start,
/// so a restarted node has a larger one than its previous life.
fn new_incarnation() -> u64 {
    // A clock before the epoch reads 0; the incarnation is at least 1.
    clock::wall_us().max(1)
}

impl Cluster {
    /// Binds the cluster listener, starts the driver and the gateway, and
    /// starts dialing the seeds. Returns once the listener is bound; peers
    /// join the ring as their heartbeats arrive.
    pub async fn start(
        cfg: ClusterConfig,
        handler: Arc<dyn ClusterHandler>,
    ) -> Result<Cluster, ClusterError> {
        cfg.validate()?;
        let tls = cfg.tls.as_ref().map(tls::ClusterTls::load).transpose()?;
        let addr = cfg.advertised();
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(h, _)| h)
            .to_string();
        let mut shared = Shared::new(cfg, addr, new_incarnation(), handler);
        shared.tls = tls;
        let shared = Arc::new(shared);
        let cfg = &shared.cfg;
        let listen_err = |e: String| ClusterError::Listen {
            addr: cfg.cluster_addr,
            message: e,
        };
        // With TLS this node accepts on its own listener (see `tls`); the
        // NodeServer's listener takes an unused loopback port, TLS too.
        let (port, listen_ip, mode, tls_listener) = match &shared.tls {
            None => (cfg.cluster_addr.port(), cfg.cluster_addr.ip(), None, None),
            Some(t) => {
                let l = tokio::net::TcpListener::bind(cfg.cluster_addr)
                    .await
                    .map_err(|e| listen_err(e.to_string()))?;
                let loopback: std::net::IpAddr = if cfg.cluster_addr.is_ipv6() {
                    std::net::Ipv6Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv4Addr::LOCALHOST.into()
                };
                (
                    0,
                    loopback,
                    Some(IncomingEncryptionMode::Tls(t.acceptor.clone())),
                    Some((l, t.acceptor.clone())),
                )
            }
        };
        let server = NodeServer::new(
            port,
            cfg.cookie.clone(),
            cfg.node_name.clone(),
            host,
            mode,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(listen_ip)
        .with_max_inbound_frame_size((MAX_FRAME_BYTES as u64) * 2);
        let (node_server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| listen_err(e.to_string()))?;
        let tls_listener = tls_listener.map(|(l, acceptor)| {
            tokio::spawn(tls::accept_loop(
                l,
                acceptor,
                node_server.clone(),
                cfg.heartbeat_timeout,
            ))
        });
        let stop_listeners = || {
            if let Some(t) = &tls_listener {
                t.abort();
            }
            node_server.stop(None);
        };
        let (core, _) = match Actor::spawn(
            None,
            Core,
            CoreArgs {
                shared: shared.clone(),
                node_server: node_server.clone(),
            },
        )
        .await
        {
            Ok(x) => x,
            Err(e) => {
                stop_listeners();
                return Err(ClusterError::Spawn(e.to_string()));
            }
        };
        let (gateway, _) =
            match Actor::spawn(None, Gateway, (shared.clone(), Some(core.clone()))).await {
                Ok(x) => x,
                Err(e) => {
                    core.stop(None);
                    stop_listeners();
                    return Err(ClusterError::Spawn(e.to_string()));
                }
            };
        tracing::info!(
            node = %shared.name,
            addr = %shared.addr,
            incarnation = shared.incarnation,
            seeds = ?shared.cfg.seeds,
            ring_version = shared.ring().version(),
            tls = shared.tls.is_some(),
            "cluster layer started"
        );
        Ok(Cluster {
            shared,
            core,
            gateway,
            node_server,
            tls_listener,
        })
    }

    pub fn node_name(&self) -> &str {
        &self.shared.name
    }

    /// This node's incarnation (grows with each process start).
    pub fn incarnation(&self) -> u64 {
        self.shared.incarnation
    }

    /// The address peers dial to reach this node.
    pub fn advertised_addr(&self) -> &str {
        &self.shared.addr
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.shared.cfg
    }

    /// A snapshot of the current ring (cheap: an `Arc` clone under a read lock).
    pub fn ring(&self) -> Arc<Ring> {
        self.shared.ring()
    }

    /// Every member this node knows, itself first.
    pub fn members(&self) -> Vec<MemberView> {
        self.shared.members()
    }

    /// Sends `check` to `owner` through its PeerLink and waits for the answer.
    pub async fn forward(
        &self,
        owner: &str,
        check: ForwardCheck,
    ) -> Result<ForwardOutcome, ForwardError> {
        if owner == self.shared.name {
            return Err(ForwardError::Local);
        }
        let Some(link) = self.shared.link_of(owner) else {
            return Err(ForwardError::Unreachable {
                peer: owner.to_string(),
            });
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !link.submit(Pending { check, tx }) {
            return Err(ForwardError::Unreachable {
                peer: owner.to_string(),
            });
        }
        match tokio::time::timeout(self.shared.cfg.check_timeout * 2, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ForwardError::Unreachable {
                peer: owner.to_string(),
            }),
            Err(_) => Err(ForwardError::Timeout {
                peer: owner.to_string(),
            }),
        }
    }

    /// Sends `ev` to every peer this node has a gateway for, concurrently,
    /// each with the forward timeout. Best effort: the report says who got it.
    pub async fn broadcast(&self, ev: AdminEvent) -> BroadcastReport {
        self.send_admin(&ev, |_| true).await
    }

    /// Sends `ev` to the peers among `to`, concurrently, each with the
    /// forward timeout; a peer of `to` this node has no gateway for is in
    /// the report's `failed` as unreachable. The report says who
    /// acknowledged having applied it.
    pub async fn send_admin_to(&self, ev: &AdminEvent, to: &[String]) -> BroadcastReport {
        let mut report = self.send_admin(ev, |n| to.iter().any(|t| t == n)).await;
        for t in to {
            let known = report.delivered.iter().any(|d| d == t)
                || report.failed.iter().any(|(f, _)| f == t);
            if !known && t != &self.shared.name {
                report
                    .failed
                    .push((t.clone(), ForwardError::Unreachable { peer: t.clone() }));
            }
        }
        report
    }

    async fn send_admin(&self, ev: &AdminEvent, to: impl Fn(&str) -> bool) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        let bytes = match encode(ev) {
            Ok(b) => b,
            Err(e) => {
                report
                    .failed
                    .push((String::new(), ForwardError::Protocol(e.to_string())));
                return report;
            }
        };
        let targets = self.shared.gateways();
        let timeout = self.shared.cfg.forward_timeout;
        let calls = targets
            .into_iter()
            .filter(|(name, _)| to(name))
            .map(|(name, gw)| {
                let b = bytes.clone();
                async move {
                    let r = match call_gateway(&gw, GatewayMsg::Admin, b, timeout, &name).await {
                        Ok(b) => match decode::<Ack>(&b) {
                            Ok(Ack { ok: true, .. }) => Ok(()),
                            Ok(Ack { error, .. }) => Err(ForwardError::Protocol(
                                error.unwrap_or_else(|| format!("{name} refused the event")),
                            )),
                            Err(e) => Err(ForwardError::Protocol(e.to_string())),
                        },
                        Err(e) => Err(e),
                    };
                    (name, r)
                }
            });
        for (name, r) in futures_util::future::join_all(calls).await {
            match r {
                Ok(()) => report.delivered.push(name),
                Err(e) => report.failed.push((name, e)),
            }
        }
        report.delivered.sort();
        report
    }

    /// Sends every peer a [`Leave`](ringlimit_protocol::cluster::Leave)
    /// that names `victim` as its sender (the probe's `forge_leave`, for
    /// tests that a member cannot be evicted by a claim); returns the peers
    /// that acknowledged receiving it.
    #[doc(hidden)]
    pub async fn send_leave_as(&self, victim: &str) -> Vec<String> {
        let leave = ringlimit_protocol::cluster::Leave {
            from: victim.to_string(),
            incarnation: u64::MAX,
        };
        let Ok(bytes) = encode(&leave) else {
            return Vec::new();
        };
        let timeout = self.shared.cfg.forward_timeout;
        let mut acked = Vec::new();
        for (name, gw) in self.shared.gateways() {
            if call_gateway(&gw, GatewayMsg::Leave, bytes.clone(), timeout, &name)
                .await
                .is_ok()
            {
                acked.push(name);
            }
        }
        acked.sort();
        acked
    }

    /// Sends `to` a handoff marker, with the handoff timeout. `Ok` once `to`
    /// acknowledged it.
    pub async fn send_handoff(&self, to: &str, h: Handoff) -> Result<(), ForwardError> {
        if to == self.shared.name {
            return Err(ForwardError::Local);
        }
        let Some(gw) = self.shared.gateway_of(to) else {
            return Err(ForwardError::Unreachable {
                peer: to.to_string(),
            });
        };
        let b = encode(&h).map_err(|e| ForwardError::Protocol(e.to_string()))?;
        let timeout = self.shared.cfg.handoff_timeout;
        let b = call_gateway(&gw, GatewayMsg::Handoff, b, timeout, to).await?;
        match decode::<Ack>(&b) {
            Ok(Ack { ok: true, .. }) => Ok(()),
            Ok(Ack { error, .. }) => Err(ForwardError::Protocol(format!(
                "{to} refused the handoff: {}",
                error.as_deref().unwrap_or("no reason given")
            ))),
            Err(e) => Err(ForwardError::Protocol(e.to_string())),
        }
    }

    /// The first half of a graceful leave: tells every peer this node
    /// leaves (each drops it from its ring at once and acknowledges, or the
    /// forward timeout passes), and makes this node's own ring the ring
    /// without it, so from now on it forwards every key to its new owner.
    /// Sessions stay open: hand the active keys over with
    /// [`Cluster::send_handoff`], then call [`Cluster::leave`]. Peers ignore
    /// this incarnation from now on; only a restarted process rejoins.
    pub async fn announce_leave(&self) {
        let timeout = self.shared.cfg.forward_timeout + Duration::from_secs(1);
        let _ = self.core.call(CoreMsg::AnnounceLeave, Some(timeout)).await;
    }

    /// Leaves gracefully: [`Cluster::announce_leave`] (if not done yet),
    /// then stops the sessions, the gateway and the driver.
    pub async fn leave(&self) {
        self.announce_leave().await;
        self.shared.drop_all_peers();
        self.gateway.stop(Some("left".into()));
        self.core.stop(Some("left".into()));
        self.stop_tls_listener();
        self.node_server.stop(Some("left".into()));
    }

    fn stop_tls_listener(&self) {
        if let Some(t) = &self.tls_listener {
            t.abort();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.gateway.stop(None);
        self.core.stop(None);
        self.stop_tls_listener();
        self.node_server.stop(None);
        self.shared.drop_all_peers();
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{check, recorder};
    use super::*;
    use std::net::SocketAddr;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_single_node_starts_owns_everything_and_leaves() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let cfg = ClusterConfig::new(
            "solo",
            addr,
            "solo-test-cluster-cookie-0123456789",
            vec![addr.to_string(), "127.0.0.1:1".into()],
        );
        let c = Cluster::start(cfg.clone(), recorder("solo", 0))
            .await
            .expect("start");
        assert_eq!(c.ring().members(), ["solo"]);
        assert_eq!(c.ring().owner("anything"), "solo");
        assert_eq!(
            c.forward("solo", check("k")).await,
            Err(ForwardError::Local)
        );
        assert_eq!(
            c.forward("ghost", check("k")).await,
            Err(ForwardError::Unreachable {
                peer: "ghost".into()
            })
        );
        let h = Handoff {
            from: "solo".into(),
            ring_version: 1,
        };
        assert_eq!(
            c.send_handoff("ghost", h).await,
            Err(ForwardError::Unreachable {
                peer: "ghost".into()
            })
        );
        assert_eq!(
            c.broadcast(AdminEvent::TierChanged {
                name: "free".into()
            })
            .await,
            BroadcastReport::default()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        let m = c.members();
        assert_eq!(m.len(), 1);
        assert!(m[0].local && m[0].state == MemberState::Up);
        // The port is taken: a second node there cannot start.
        let mut other = cfg.clone();
        other.node_name = "other".into();
        assert!(matches!(
            Cluster::start(other, recorder("other", 0)).await,
            Err(ClusterError::Listen { .. })
        ));
        tokio::time::timeout(Duration::from_secs(3), c.leave())
            .await
            .expect("leave is bounded");
        let mut bad = cfg;
        bad.cookie.clear();
        assert!(matches!(
            Cluster::start(bad, recorder("x", 0)).await,
            Err(ClusterError::InvalidConfig(_))
        ));
    }
}
