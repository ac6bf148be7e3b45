//! The state the cluster handle, the driver, the gateway and the links
//! share: this node's identity and settings, the published ring and member
//! list, and the peers this node has a gateway and a PeerLink for.
//!
//! The driver writes it (ring, members, peers come and go); the handle, the
//! gateway and the links read it.

use super::config::ClusterConfig;
use super::link::{PeerLink, RingVersion};
use super::membership::MemberView;
use super::messages::{ClusterHandler, GatewayMsg};
use super::ring::Ring;
use super::tls::ClusterTls;
use parking_lot::RwLock;
use ractor::{ActorId, ActorRef};
use ringlimit_protocol::cluster::Hello;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

/// A peer this node can send to: its current gateway and the link to it.
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
    /// Mutual TLS for every session, when configured.
    pub tls: Option<ClusterTls>,
    ring: RwLock<Arc<Ring>>,
    /// The member list as of an instant (the driver publishes it on changes
    /// and ticks).
    members: RwLock<(Instant, Vec<MemberView>)>,
    peers: RwLock<HashMap<String, PeerHandle>>,
    /// This node's latest heartbeat, encoded: what a peer's status call gets.
    heartbeat: RwLock<Vec<u8>>,
}

impl Shared {
    /// The state of a node named `cfg.node_name` that peers reach at `addr`,
    /// alone in its ring, with no members published and no peers yet.
    pub fn new(
        cfg: ClusterConfig,
        addr: String,
        incarnation: u64,
        handler: Arc<dyn ClusterHandler>,
    ) -> Shared {
        Shared {
            name: cfg.node_name.clone(),
            addr,
            incarnation,
            handler,
            tls: None,
            ring: RwLock::new(Arc::new(Ring::new(&cfg.node_name, Vec::<String>::new()))),
            members: RwLock::new((Instant::now(), Vec::new())),
            peers: RwLock::new(HashMap::new()),
            heartbeat: RwLock::new(Vec::new()),
            cfg,
        }
    }

    /// This node's latest heartbeat, encoded (empty before the first).
    pub fn heartbeat(&self) -> Vec<u8> {
        self.heartbeat.read().clone()
    }

    pub fn set_heartbeat(&self, b: Vec<u8>) {
        *self.heartbeat.write() = b;
    }

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

    pub fn set_ring(&self, r: Arc<Ring>) {
        *self.ring.write() = r;
    }

    pub fn set_members(&self, at: Instant, v: Vec<MemberView>) {
        *self.members.write() = (at, v);
    }

    /// The member list as last published, its heartbeat ages brought up to
    /// now.
    pub fn members(&self) -> Vec<MemberView> {
        let (at, mut v) = self.members.read().clone();
        let extra = Instant::now().saturating_duration_since(at).as_millis() as u64;
        for m in &mut v {
            if let Some(ms) = m.last_heartbeat_ms_ago.as_mut() {
                *ms += extra;
            }
        }
        v
    }

    /// Reads this node's ring version when a link sends a batch (0 once
    /// the shared state is gone).
    fn ring_version(self: &Arc<Self>) -> RingVersion {
        let weak = Arc::downgrade(self);
        Arc::new(move || weak.upgrade().map_or(0, |s| s.ring().version()))
    }

    /// Records `gw` (actor `id`) as the gateway of peer `name`, opening a
    /// PeerLink to it or pointing the existing one at the new gateway.
    pub fn set_peer_gateway(self: &Arc<Self>, name: &str, id: ActorId, gw: ActorRef<GatewayMsg>) {
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
                let link =
                    PeerLink::spawn(name.to_string(), gw.clone(), &self.cfg, self.ring_version());
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

    pub fn drop_peer(&self, name: &str) {
        if let Some(h) = self.peers.write().remove(name) {
            h.link.close();
        }
    }

    /// Drops `name` only if its current gateway is `id`.
    pub fn drop_peer_if(&self, name: &str, id: ActorId) {
        let mut peers = self.peers.write();
        if peers.get(name).is_some_and(|h| h.gateway_id == id)
            && let Some(h) = peers.remove(name)
        {
            h.link.close();
        }
    }

    pub fn drop_all_peers(&self) {
        for (_, h) in self.peers.write().drain() {
            h.link.close();
        }
    }

    pub fn gateway_of(&self, name: &str) -> Option<ActorRef<GatewayMsg>> {
        self.peers.read().get(name).map(|h| h.gateway.clone())
    }

    pub fn link_of(&self, name: &str) -> Option<PeerLink> {
        self.peers.read().get(name).map(|h| h.link.clone())
    }

    /// Every peer's name and gateway.
    pub fn gateways(&self) -> Vec<(String, ActorRef<GatewayMsg>)> {
        self.peers
            .read()
            .iter()
            .map(|(n, h)| (n.clone(), h.gateway.clone()))
            .collect()
    }
}
