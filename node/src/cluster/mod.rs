//! The cluster transport: which node owns a key, who is alive, and how a
//! check reaches its owner.
//!
//! # Layout
//! - [`ring`]: the hash ring (hashring, 128 virtual nodes per member, a
//!   stable hash) with its version, and [`RingChange`] computed from two rings.
//! - [`membership`]: a pure state machine of peers fed with sessions,
//!   heartbeats, leaves and ticks (time is an argument).
//! - [`dialer`]: a pure state machine of the addresses to (re)connect to, with
//!   exponential back-off.
//! - [`batcher`]: the pure batching rule of a PeerLink.
//! - [`handoff`]: the join gate of a key handoff, a pure state machine the
//!   router drives.
//! - `driver`: the local actor that drives membership and dialer and does
//!   their I/O; `gateway`: the one remotable actor per node; `link`: the
//!   PeerLink tasks; [`wire`]: MessagePack framing of
//!   [`ringlimit_protocol::cluster`].
//! - [`probe`]: the hidden `ringlimit cluster-probe` subcommand (this layer
//!   alone, for multi-process tests and measurements).
//!
//! # How it fits together
//! Each node runs a ractor_cluster `NodeServer` (magic cookie, Isolated
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
pub mod dialer;
pub(crate) mod driver;
pub(crate) mod gateway;
pub mod handoff;
pub(crate) mod link;
pub mod membership;
pub mod probe;
pub mod ring;
pub mod wire;

pub use dialer::Backoff;
pub use gateway::{GROUP, GatewayMsg, SCOPE};
pub use membership::{DownReason, MemberState, MemberView};
pub use ring::{Ring, RingChange};
pub use ringlimit_protocol::cluster::{
    AdminEvent, ForwardBatch, ForwardCheck, ForwardOutcome, ForwardReply, Handoff,
};

use driver::{Core, CoreArgs, CoreMsg};
use gateway::Gateway;
use link::{PeerLink, Pending};
use parking_lot::RwLock;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage};
use ringlimit_protocol::cluster::{Ack, HandoffAck, Hello, MAX_FRAME_BYTES};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use wire::{decode, encode};

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
    /// The magic cookie every node of the cluster shares.
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
    /// [`Cluster::forward`] waits at most twice this (queue + RPC).
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
        if self.cookie.is_empty() {
            return bad("cookie must not be empty");
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
}

/// Why a forwarded call did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// No session to the peer, or it went away during the call.
    #[error("peer {peer} is unreachable")]
    Unreachable { peer: String },
    /// No answer within the timeout.
    #[error("peer {peer} did not answer in time")]
    Timeout { peer: String },
    /// Too many checks already queued for the peer.
    #[error("too many checks queued for peer {peer}")]
    Overloaded { peer: String },
    /// The owner is this node: answer locally.
    #[error("the owner is this node")]
    Local,
    /// A payload could not be encoded or decoded, or was refused.
    #[error("cluster protocol error: {0}")]
    Protocol(String),
}

impl ForwardError {
    /// Whether the same call may succeed later (the fail-open/closed choice applies).
    pub fn is_transient(&self) -> bool {
        !matches!(self, ForwardError::Local | ForwardError::Protocol(_))
    }
}

/// What the service does with what arrives from peers.
#[async_trait::async_trait]
pub trait ClusterHandler: Send + Sync + 'static {
    /// Decides checks this node owns (by its ring, already checked). One
    /// outcome per check, in order; the handler may still answer `NotOwner`
    /// (say, if the ring moved since).
    async fn check_batch(&self, batch: ForwardBatch) -> ForwardReply;
    /// An admin change made on another node.
    async fn admin_event(&self, ev: AdminEvent);
    /// Key states handed over by another node.
    async fn handoff(&self, h: Handoff) -> Result<(), String>;
    /// The ring changed (called from the cluster driver: keep it short, hand
    /// long work to a task).
    fn on_ring_change(&self, change: &RingChange, ring: &Arc<Ring>);
}

/// Delivery of a broadcast.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    pub delivered: Vec<String>,
    pub failed: Vec<(String, ForwardError)>,
}

struct PeerHandle {
    gateway_id: ActorId,
    gateway: ActorRef<GatewayMsg>,
    link: PeerLink,
}

/// What the handle, the driver, the gateway and the links share.
pub(crate) struct Shared {
    pub name: String,
    pub addr: String,
    pub incarnation: u64,
    pub cfg: ClusterConfig,
    pub handler: Arc<dyn ClusterHandler>,
    ring: RwLock<Arc<Ring>>,
    members: RwLock<(Instant, Vec<MemberView>)>,
    peers: RwLock<HashMap<String, PeerHandle>>,
}

impl Shared {
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.read().clone()
    }

    pub fn hello(&self) -> Hello {
        Hello {
            name: self.name.clone(),
            addr: self.addr.clone(),
            incarnation: self.incarnation,
        }
    }

    fn set_ring(&self, r: Arc<Ring>) {
        *self.ring.write() = r;
    }

    fn set_members(&self, at: Instant, v: Vec<MemberView>) {
        *self.members.write() = (at, v);
    }

    fn set_peer_gateway(self: &Arc<Self>, name: &str, id: ActorId, gw: ActorRef<GatewayMsg>) {
        let mut peers = self.peers.write();
        match peers.get_mut(name) {
            Some(h) => {
                if h.gateway_id != id {
                    h.gateway_id = id;
                    h.gateway = gw.clone();
                    h.link.set_gateway(gw);
                }
            }
            None => {
                let link = PeerLink::spawn(name.to_string(), gw.clone(), self);
                peers.insert(
                    name.to_string(),
                    PeerHandle {
                        gateway_id: id,
                        gateway: gw,
                        link,
                    },
                );
            }
        }
    }

    fn drop_peer(&self, name: &str) {
        if let Some(h) = self.peers.write().remove(name) {
            h.link.close();
        }
    }

    /// Drops `name` only if its current gateway is `id`.
    fn drop_peer_if(&self, name: &str, id: ActorId) {
        let mut peers = self.peers.write();
        if peers.get(name).is_some_and(|h| h.gateway_id == id)
            && let Some(h) = peers.remove(name)
        {
            h.link.close();
        }
    }

    fn drop_all_peers(&self) {
        for (_, h) in self.peers.write().drain() {
            h.link.close();
        }
    }

    fn gateway_of(&self, name: &str) -> Option<ActorRef<GatewayMsg>> {
        self.peers.read().get(name).map(|h| h.gateway.clone())
    }
}

/// A running cluster layer. Dropping it stops its actors (without telling
/// peers: call [`Cluster::leave`] first for a graceful exit).
pub struct Cluster {
    shared: Arc<Shared>,
    core: ActorRef<CoreMsg>,
    gateway: ActorRef<GatewayMsg>,
    node_server: ActorRef<NodeServerMessage>,
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
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
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
        let addr = cfg.advertised();
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(h, _)| h)
            .to_string();
        let shared = Arc::new(Shared {
            name: cfg.node_name.clone(),
            addr,
            incarnation: new_incarnation(),
            handler,
            ring: RwLock::new(Arc::new(Ring::new(&cfg.node_name, Vec::<String>::new()))),
            members: RwLock::new((Instant::now(), Vec::new())),
            peers: RwLock::new(HashMap::new()),
            cfg,
        });
        let cfg = &shared.cfg;
        let server = NodeServer::new(
            cfg.cluster_addr.port(),
            cfg.cookie.clone(),
            cfg.node_name.clone(),
            host,
            None,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(cfg.cluster_addr.ip())
        .with_max_inbound_frame_size((MAX_FRAME_BYTES as u64) * 2);
        let (node_server, _) =
            Actor::spawn(None, server, ())
                .await
                .map_err(|e| ClusterError::Listen {
                    addr: cfg.cluster_addr,
                    message: e.to_string(),
                })?;
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
                node_server.stop(None);
                return Err(ClusterError::Spawn(e.to_string()));
            }
        };
        let (gateway, _) =
            match Actor::spawn(None, Gateway, (shared.clone(), Some(core.clone()))).await {
                Ok(x) => x,
                Err(e) => {
                    core.stop(None);
                    node_server.stop(None);
                    return Err(ClusterError::Spawn(e.to_string()));
                }
            };
        tracing::info!(
            node = %shared.name,
            addr = %shared.addr,
            incarnation = shared.incarnation,
            seeds = ?shared.cfg.seeds,
            ring_version = shared.ring().version(),
            "cluster layer started"
        );
        Ok(Cluster {
            shared,
            core,
            gateway,
            node_server,
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
        let (at, mut v) = self.shared.members.read().clone();
        let extra = Instant::now().saturating_duration_since(at).as_millis() as u64;
        for m in &mut v {
            if let Some(ms) = m.last_heartbeat_ms_ago.as_mut() {
                *ms += extra;
            }
        }
        v
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
        let link = match self.shared.peers.read().get(owner) {
            Some(h) => h.link.clone(),
            None => {
                return Err(ForwardError::Unreachable {
                    peer: owner.to_string(),
                });
            }
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
        let mut report = BroadcastReport::default();
        let bytes = match encode(&ev) {
            Ok(b) => b,
            Err(e) => {
                report
                    .failed
                    .push((String::new(), ForwardError::Protocol(e.to_string())));
                return report;
            }
        };
        let targets: Vec<(String, ActorRef<GatewayMsg>)> = self
            .shared
            .peers
            .read()
            .iter()
            .map(|(n, h)| (n.clone(), h.gateway.clone()))
            .collect();
        let timeout = self.shared.cfg.forward_timeout;
        let calls = targets.into_iter().map(|(name, gw)| {
            let b = bytes.clone();
            async move {
                let r = match gw.call(|r| GatewayMsg::Admin(b, r), Some(timeout)).await {
                    Ok(CallResult::Success(b)) => match decode::<Ack>(&b) {
                        Ok(Ack { ok: true, .. }) => Ok(()),
                        Ok(Ack { error, .. }) => {
                            Err(ForwardError::Protocol(error.unwrap_or_default()))
                        }
                        Err(e) => Err(ForwardError::Protocol(e.to_string())),
                    },
                    Ok(CallResult::Timeout) => Err(ForwardError::Timeout { peer: name.clone() }),
                    _ => Err(ForwardError::Unreachable { peer: name.clone() }),
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

    /// Hands key states to `to`, in chunks that fit a frame, each with the
    /// handoff timeout. `Ok` once `to` acknowledged every chunk.
    pub async fn send_handoff(&self, to: &str, h: Handoff) -> Result<(), ForwardError> {
        if to == self.shared.name {
            return Err(ForwardError::Local);
        }
        let Some(gw) = self.shared.gateway_of(to) else {
            return Err(ForwardError::Unreachable {
                peer: to.to_string(),
            });
        };
        for chunk in chunk_handoff(h, MAX_FRAME_BYTES / 4) {
            let b = encode(&chunk).map_err(|e| ForwardError::Protocol(e.to_string()))?;
            match gw
                .call(
                    |r| GatewayMsg::Handoff(b, r),
                    Some(self.shared.cfg.handoff_timeout),
                )
                .await
            {
                Ok(CallResult::Success(b)) => match decode::<HandoffAck>(&b) {
                    Ok(HandoffAck { error: None, .. }) => {}
                    Ok(HandoffAck { error: Some(e), .. }) => {
                        return Err(ForwardError::Protocol(format!(
                            "{to} refused the handoff: {e}"
                        )));
                    }
                    Err(e) => return Err(ForwardError::Protocol(e.to_string())),
                },
                Ok(CallResult::Timeout) => {
                    return Err(ForwardError::Timeout {
                        peer: to.to_string(),
                    });
                }
                _ => {
                    return Err(ForwardError::Unreachable {
                        peer: to.to_string(),
                    });
                }
            }
        }
        Ok(())
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
        self.node_server.stop(Some("left".into()));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.gateway.stop(None);
        self.core.stop(None);
        self.node_server.stop(None);
        self.shared.drop_all_peers();
    }
}

/// Splits a handoff so that each part's states add up to about `budget` bytes
/// (a single larger state travels alone). Always at least one part.
fn chunk_handoff(h: Handoff, budget: usize) -> Vec<Handoff> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0usize;
    for (k, s) in h.states {
        // MessagePack encodes bytes of a Vec<u8> as integers: up to 2 bytes each.
        let sz = k.len() + s.len() * 2 + 16;
        if !cur.is_empty() && size + sz > budget {
            out.push(Handoff {
                from: h.from.clone(),
                ring_version: h.ring_version,
                states: std::mem::take(&mut cur),
            });
            size = 0;
        }
        size += sz;
        cur.push((k, s));
    }
    out.push(Handoff {
        from: h.from,
        ring_version: h.ring_version,
        states: cur,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_validate_and_bad_ones_do_not() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let c = ClusterConfig::new("a", addr, "secret", vec![]);
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
        b.advertise_addr = Some("nohost".into());
        assert!(b.validate().is_err());
        let mut b = c;
        b.advertise_addr = Some("node-a:7000".into());
        assert!(b.validate().is_ok());
    }

    #[test]
    fn handoffs_are_chunked_by_size() {
        let h = Handoff {
            from: "a".into(),
            ring_version: 1,
            states: (0..10).map(|i| (format!("k{i}"), vec![0u8; 100])).collect(),
        };
        let parts = chunk_handoff(h.clone(), 450);
        assert!(parts.len() > 1);
        assert!(
            parts
                .iter()
                .all(|p| p.from == "a" && p.ring_version == 1 && !p.states.is_empty())
        );
        let all: Vec<_> = parts.into_iter().flat_map(|p| p.states).collect();
        assert_eq!(all, h.states);
        let empty = chunk_handoff(
            Handoff {
                from: "a".into(),
                ring_version: 1,
                states: vec![],
            },
            10,
        );
        assert_eq!(empty.len(), 1);
    }

    /// Answers every check as `name`, after `delay`, recording batch sizes.
    struct Recorder {
        name: String,
        delay: Duration,
        sizes: parking_lot::Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl ClusterHandler for Recorder {
        async fn check_batch(&self, batch: ForwardBatch) -> ForwardReply {
            self.sizes.lock().push(batch.checks.len());
            tokio::time::sleep(self.delay).await;
            ForwardReply {
                results: batch
                    .checks
                    .into_iter()
                    .map(|c| {
                        ForwardOutcome::Decided(ringlimit_protocol::validate::ValidateOutcome::Allowed(
                            ringlimit_protocol::validate::Checked {
                                key_id: c.key_id,
                                tier: self.name.clone(),
                                limits: vec![],
                                retry_after_ms: None,
                                denied_by: None,
                            },
                        ))
                    })
                    .collect(),
            }
        }
        async fn admin_event(&self, _ev: AdminEvent) {}
        async fn handoff(&self, _h: Handoff) -> Result<(), String> {
            Ok(())
        }
        fn on_ring_change(&self, _c: &RingChange, _r: &Arc<Ring>) {}
    }

    fn recorder(name: &str, delay_ms: u64) -> Arc<Recorder> {
        Arc::new(Recorder {
            name: name.into(),
            delay: Duration::from_millis(delay_ms),
            sizes: parking_lot::Mutex::new(vec![]),
        })
    }

    fn shared(
        name: &str,
        peers: &[&str],
        handler: Arc<dyn ClusterHandler>,
        k: usize,
        max_batch: usize,
    ) -> Arc<Shared> {
        let mut cfg = ClusterConfig::new(name, "127.0.0.1:1".parse().expect("addr"), "c", vec![]);
        cfg.max_in_flight_batches = k;
        cfg.max_batch = max_batch;
        cfg.max_queued_checks = 1000;
        Arc::new(Shared {
            name: name.into(),
            addr: "127.0.0.1:1".into(),
            incarnation: 1,
            handler,
            ring: RwLock::new(Arc::new(Ring::new(name, peers.iter().copied()))),
            members: RwLock::new((Instant::now(), vec![])),
            peers: RwLock::new(HashMap::new()),
            cfg,
        })
    }

    fn check(key: &str) -> ForwardCheck {
        ForwardCheck {
            id: 0,
            key_id: key.into(),
            secret_hash: [1; 32],
            cost: 1,
            now_us: 0,
            resource: None,
            client_ip: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_receiver_answers_only_for_keys_it_owns() {
        let rec = recorder("a", 0);
        let sh = shared("a", &["b"], rec.clone(), 4, 256);
        let ring = sh.ring();
        let mine = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| ring.owner(k) == "a")
            .expect("a key of a");
        let theirs = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| ring.owner(k) == "b")
            .expect("a key of b");
        let batch = ForwardBatch {
            from: "b".into(),
            ring_version: 7,
            checks: vec![check(&mine), check(&theirs), check(&mine)],
        };
        let reply = gateway::answer_batch(&sh, batch).await;
        assert_eq!(reply.results.len(), 3);
        assert!(matches!(
            &reply.results[0],
            ForwardOutcome::Decided(ringlimit_protocol::validate::ValidateOutcome::Allowed(_))
        ));
        assert_eq!(
            reply.results[1],
            ForwardOutcome::NotOwner {
                ring_version: ring.version()
            }
        );
        assert!(matches!(
            &reply.results[2],
            ForwardOutcome::Decided(ringlimit_protocol::validate::ValidateOutcome::Allowed(_))
        ));
        assert_eq!(
            *rec.sizes.lock(),
            vec![2],
            "the handler sees owned checks only"
        );
        // A bad frame is an empty answer, not a panic.
        assert!(gateway::serve_batch(&sh, &[0x01, 0x02]).await.is_empty());
    }

    async fn link_batches(k: usize, max_batch: usize, then: usize) -> Vec<usize> {
        let owner_handler = recorder("o", 100);
        let owner = shared("o", &[], owner_handler.clone(), 4, 256);
        let (gw, _) = Actor::spawn(None, Gateway, (owner, None))
            .await
            .expect("gateway");
        let sender = shared("s", &["o"], recorder("s", 0), k, max_batch);
        let link = PeerLink::spawn("o".into(), gw.clone(), &sender);
        let mut rxs = Vec::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(link.submit(Pending {
            check: check("first"),
            tx
        }));
        rxs.push(rx);
        tokio::time::sleep(Duration::from_millis(30)).await;
        for i in 0..then {
            let (tx, rx) = tokio::sync::oneshot::channel();
            assert!(link.submit(Pending {
                check: check(&format!("k{i}")),
                tx
            }));
            rxs.push(rx);
        }
        for rx in rxs {
            match rx.await.expect("answered") {
                Ok(ForwardOutcome::Decided(ringlimit_protocol::validate::ValidateOutcome::Allowed(
                    c,
                ))) => {
                    assert_eq!(c.tier, "o")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        link.close();
        gw.stop(None);
        owner_handler.sizes.lock().clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_with_k1_sends_what_queued_behind_a_batch_as_one() {
        assert_eq!(link_batches(1, 256, 10).await, vec![1, 10]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_splits_at_the_batch_cap() {
        assert_eq!(link_batches(1, 4, 10).await, vec![1, 4, 4, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_link_fails_queued_checks_as_unreachable() {
        let owner = shared("o", &[], recorder("o", 300), 4, 256);
        let (gw, _) = Actor::spawn(None, Gateway, (owner, None))
            .await
            .expect("gateway");
        let sender = shared("s", &["o"], recorder("s", 0), 1, 256);
        let link = PeerLink::spawn("o".into(), gw.clone(), &sender);
        let (tx1, rx1) = tokio::sync::oneshot::channel();
        let (tx2, rx2) = tokio::sync::oneshot::channel();
        assert!(link.submit(Pending {
            check: check("a"),
            tx: tx1
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(link.submit(Pending {
            check: check("b"),
            tx: tx2
        }));
        link.close();
        assert_eq!(
            rx2.await.expect("answered"),
            Err(ForwardError::Unreachable { peer: "o".into() })
        );
        assert!(
            matches!(
                rx1.await.expect("answered"),
                Ok(ForwardOutcome::Decided(_))
            ),
            "in flight completes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (tx3, _rx3) = tokio::sync::oneshot::channel();
        assert!(
            !link.submit(Pending {
                check: check("c"),
                tx: tx3
            }),
            "closed"
        );
        gw.stop(None);
    }

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
            "cookie",
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
            states: vec![],
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

    #[test]
    fn transient_errors() {
        assert!(ForwardError::Timeout { peer: "b".into() }.is_transient());
        assert!(ForwardError::Unreachable { peer: "b".into() }.is_transient());
        assert!(!ForwardError::Protocol("x".into()).is_transient());
    }
}
