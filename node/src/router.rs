//! Routing of checks on a cluster: who owns a key, forwarding to the owner,
//! the owner's side of forwarded checks, admin-change broadcasts, and key
//! handoff when the ring changes.
//!
//! # Handoff: a flush to the shared store, then a load
//! Counter state moves between nodes through the shared snapshot store
//! (Redis, or ScyllaDB without Redis), never in the messages themselves:
//! - **Graceful leave** (drain, SIGTERM): the leaving node holds every check
//!   for keys it owns, passivates all its KeyLimiters (each finishes what was
//!   queued before), flushes the write-behind, tells every peer it is done
//!   (a handoff marker), and leaves the ring. Peers drop it at once; the held
//!   checks are then routed on the new ring. The new owners load the flushed
//!   state on activation, so no admit is lost or counted twice.
//! - **Join** (a node starts, or comes back): every node that loses keys to
//!   the joiner passivates them, flushes, and sends the joiner a marker. The
//!   joiner holds checks until every peer's marker arrived (or
//!   `handoff_wait` passed), then loads what they flushed.
//! - **Crash**: the new owners load from the shared store what the dead node
//!   last flushed: at most one flush interval of admits is lost. Without a
//!   shared snapshot store there is no cluster (the config refuses it).
//!
//! No node answers for a key it does not own by its own ring: a forwarded
//! check for a key the receiver does not own gets `NotOwner`, and the sender
//! re-routes once on its own ring.

use crate::cluster::handoff::{Effect, HandoffGate, Opened};
use crate::cluster::inbox::{Inbound, Inbox};
use crate::cluster::ring::Ring;
use crate::cluster::{Cluster, ForwardError};
use parking_lot::Mutex;
use ringlimit_actors::keys::SecretHash;
use ringlimit_actors::service::{Change, Service};
use ringlimit_actors::writebehind::WriteBehind;
use ringlimit_protocol::cluster::{
    AdminEvent, ForwardBatch, ForwardCheck, ForwardOutcome, ForwardReply, Handoff,
};
use ringlimit_protocol::validate::ValidateOutcome;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Metric names of the router.
pub mod metric {
    pub const FORWARDED: &str = "ringlimit_forwarded_checks_total";
    pub const FAIL_OPEN: &str = "ringlimit_owner_unreachable_fail_open_total";
    pub const FAIL_CLOSED: &str = "ringlimit_owner_unreachable_fail_closed_total";
    pub const NOT_OWNER: &str = "ringlimit_not_owner_total";
}

/// Settings of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This node's name (its ring member name).
    pub node_name: String,
    /// Tiers whose checks are denied (503) when the owner cannot be reached;
    /// every other tier fails open (allowed, counted in a metric).
    pub fail_closed_tiers: HashSet<String>,
    /// Longest a joining node holds checks waiting for its peers' handoff markers.
    pub handoff_wait: Duration,
    /// Longest passivation may take during a handoff.
    pub passivate_timeout: Duration,
}

/// Routes checks to their owners.
pub struct Router {
    service: Arc<Service>,
    wb: Arc<WriteBehind>,
    cfg: RouterConfig,
    cluster: Option<Arc<Cluster>>,
    /// The join gate (see [`crate::cluster::handoff`]).
    gate: Mutex<HandoffGate>,
    /// True while the gate is open.
    gate_open: watch::Sender<bool>,
    draining: AtomicBool,
    drained: watch::Sender<bool>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("clustered", &self.cluster.is_some())
            .finish()
    }
}

impl Router {
    /// A router over `cluster` (none: a single node). `forming`: hold checks
    /// of owned keys until the first peers are seen (or `handoff_wait`
    /// passes), so a starting node never answers alone for keys a running
    /// cluster owns. With a cluster, serve what peers send with
    /// [`Router::serve`].
    pub fn new(
        service: Arc<Service>,
        wb: Arc<WriteBehind>,
        cfg: RouterConfig,
        cluster: Option<Arc<Cluster>>,
        forming: bool,
    ) -> Arc<Router> {
        let (drained, _) = watch::channel(false);
        let (gate, effects) = HandoffGate::new(
            &cfg.node_name,
            cfg.handoff_wait,
            forming,
            tokio::time::Instant::now(),
        );
        let (gate_open, _) = watch::channel(gate.is_open());
        let r = Arc::new(Router {
            service,
            wb,
            cfg,
            cluster,
            gate: Mutex::new(gate),
            gate_open,
            draining: AtomicBool::new(false),
            drained,
            next_id: AtomicU64::new(1),
        });
        r.carry_out(effects);
        if r.cluster.is_some() {
            r.broadcast_changes();
        }
        r
    }

    /// Sends this node's admin changes to every peer.
    fn broadcast_changes(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut changes = self.service.changes();
        tokio::spawn(async move {
            loop {
                let c = match changes.recv().await {
                    Ok(c) => c,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "admin changes not broadcast; peers catch up at the next full reload"
                        );
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(r) = weak.upgrade() else { return };
                r.broadcast_change(c);
            }
        });
    }

    fn broadcast_change(&self, c: Change) {
        let Some(cl) = self.cluster.clone() else {
            return;
        };
        let ev = match c {
            Change::Key(key_id) => AdminEvent::KeyChanged { key_id },
            Change::Tier(name) => AdminEvent::TierChanged { name },
            Change::Blocks => AdminEvent::BlocksChanged,
            Change::AbuseRules => {
                let Some(p) = self.service.pipelines() else {
                    return;
                };
                match serde_json::to_string(&p.abuse_rules()) {
                    Ok(rules) => AdminEvent::AbuseRulesChanged { rules },
                    Err(e) => {
                        tracing::error!(error = %e, "abuse rules do not encode; not broadcast");
                        return;
                    }
                }
            }
        };
        tokio::spawn(async move {
            let rep = cl.broadcast(ev.clone()).await;
            if !rep.failed.is_empty() {
                tracing::warn!(event = ?ev, failed = ?rep.failed, "admin change not delivered to every peer; they catch up at the next full reload");
            }
        });
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    fn me(&self) -> Option<&str> {
        self.cluster.as_ref().map(|c| c.node_name())
    }

    /// The ring checks are routed on: without this node while it drains.
    fn routing_ring(&self) -> Option<Arc<Ring>> {
        let c = self.cluster.as_ref()?;
        let ring = c.ring();
        if self.draining.load(Ordering::Acquire) {
            return ring.without(c.node_name()).map(Arc::new).or(Some(ring));
        }
        Some(ring)
    }

    /// Carries out what the join gate decided.
    fn carry_out(self: &Arc<Self>, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::OpenGate(Opened::Complete) => {
                    if !self.gate_open.send_replace(true) {
                        tracing::info!("handoff complete; serving gained keys");
                    }
                }
                Effect::OpenGate(Opened::TimedOut { missing }) => {
                    tracing::warn!(waiting_for = ?missing, "handoff markers did not all arrive; serving anyway");
                    self.gate_open.send_replace(true);
                }
                Effect::CloseGate => {
                    self.gate_open.send_replace(false);
                }
                Effect::WakeAt(at) => {
                    let r = Arc::clone(self);
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at).await;
                        r.tick_gate();
                    });
                }
                Effect::HandOver { to } => {
                    tokio::spawn(Arc::clone(self).hand_over(to));
                }
            }
        }
    }

    fn tick_gate(self: &Arc<Self>) {
        let fx = self.gate.lock().tick(tokio::time::Instant::now());
        self.carry_out(fx);
    }

    /// Waits while a join handoff is in progress (at most until its deadline).
    async fn wait_gates(self: &Arc<Self>) {
        if *self.gate_open.borrow() {
            return;
        }
        let deadline = self.gate.lock().deadline();
        let mut rx = self.gate_open.subscribe();
        match deadline {
            Some(d) => {
                if tokio::time::timeout_at(d, rx.wait_for(|o| *o))
                    .await
                    .is_err()
                {
                    self.tick_gate();
                }
            }
            None => {
                let _ = rx.wait_for(|o| *o).await;
            }
        }
    }

    /// Whether checks are being held for a handoff.
    pub fn gate_closed(&self) -> bool {
        !*self.gate_open.borrow()
    }

    async fn wait_drained(&self) {
        let mut rx = self.drained.subscribe();
        let _ = tokio::time::timeout(self.cfg.passivate_timeout * 2, rx.wait_for(|d| *d)).await;
    }

    /// Answers one check: locally when this node owns the key, otherwise
    /// through the owner. The IP block and the api_key's parsing are done
    /// once, on the node that received the request.
    pub async fn validate(
        self: &Arc<Self>,
        api_key: &str,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> ValidateOutcome {
        let (key_id, hash) = match self.service.admit_request(api_key, client_ip) {
            Ok(front) => front,
            Err(answer) => return answer,
        };
        let Some(ring) = self.routing_ring() else {
            return self.decide_local(key_id, &hash, cost, client_ip).await;
        };
        let me = self.me().unwrap_or_default();
        let mut ring = ring;
        for attempt in 0..3 {
            let owner = ring.owner(key_id).to_string();
            if owner == me {
                if self.draining.load(Ordering::Acquire) {
                    self.wait_drained().await;
                    ring = self.routing_ring().unwrap_or(ring);
                    continue;
                }
                self.wait_gates().await;
                return self.decide_local(key_id, &hash, cost, client_ip).await;
            }
            match self.forward(&owner, key_id, &hash, cost, client_ip).await {
                Ok(ForwardOutcome::Decided(outcome)) => return outcome,
                Ok(ForwardOutcome::NotOwner { ring_version }) => {
                    metrics::counter!(metric::NOT_OWNER).increment(1);
                    tracing::debug!(
                        key_id,
                        owner,
                        their_version = ring_version,
                        attempt,
                        "not owner; re-routing"
                    );
                    // Let this node's membership catch up, then route once more.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ring = self.routing_ring().unwrap_or(ring);
                }
                Err(e) => {
                    // An owner that left or died is re-routed, not failed open:
                    // the ring may already name the next owner.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let now = self.routing_ring().unwrap_or_else(|| Arc::clone(&ring));
                    if now.owner(key_id) != owner
                        || (e
                            == ForwardError::Unreachable {
                                peer: owner.clone(),
                            }
                            && !now.contains(&owner))
                    {
                        ring = now;
                        continue;
                    }
                    return self.owner_unreachable(key_id, &owner, &e);
                }
            }
        }
        ValidateOutcome::unavailable("the key's owner is changing; retry")
    }

    /// The check of a key this node owns.
    async fn decide_local(
        &self,
        key_id: &str,
        hash: &SecretHash,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> ValidateOutcome {
        self.service
            .validate_hashed(key_id, hash, cost, client_ip)
            .await
    }

    async fn forward(
        &self,
        owner: &str,
        key_id: &str,
        hash: &SecretHash,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> Result<ForwardOutcome, ForwardError> {
        let Some(c) = self.cluster.as_ref() else {
            return Err(ForwardError::Local);
        };
        metrics::counter!(metric::FORWARDED).increment(1);
        let check = ForwardCheck {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key_id: key_id.to_string(),
            secret_hash: hash.0,
            cost,
            now_us: self.service.now_us(),
            resource: None,
            client_ip: client_ip.map(|ip| ip.to_string()),
        };
        c.forward(owner, check).await
    }

    /// Fail-open (the default) or fail-closed, by the key's tier.
    fn owner_unreachable(&self, key_id: &str, owner: &str, e: &ForwardError) -> ValidateOutcome {
        let key = self.service.key(key_id);
        let closed = key
            .as_ref()
            .is_some_and(|k| self.cfg.fail_closed_tiers.contains(&k.tier));
        tracing::warn!(key_id, owner, error = %e, fail_closed = closed, "owner unreachable");
        match key {
            Some(k) if !closed => {
                metrics::counter!(metric::FAIL_OPEN).increment(1);
                ValidateOutcome::FailOpen {
                    key_id: key_id.to_string(),
                    tier: k.tier.clone(),
                }
            }
            _ => {
                metrics::counter!(metric::FAIL_CLOSED).increment(1);
                ValidateOutcome::unavailable(format!(
                    "the owner of this key ({owner}) is unreachable"
                ))
            }
        }
    }

    /// Graceful leave: hold owned keys, passivate, flush, tell peers, leave.
    pub async fn drain(&self) {
        let Some(c) = self.cluster.clone() else {
            return;
        };
        if self.draining.swap(true, Ordering::AcqRel) {
            let _ = self.drained.subscribe().wait_for(|d| *d).await;
            return;
        }
        tracing::info!(node = c.node_name(), "draining: handing keys over");
        let keys = self.service.active_keys();
        if !self
            .service
            .passivate_keys(&keys, self.cfg.passivate_timeout)
            .await
        {
            tracing::warn!("some keys did not passivate in time");
        }
        if let Err(e) = self.wb.drain(20).await {
            tracing::error!(error = %e, "could not flush every key before leaving; the new owners load older state");
        }
        let ring = c.ring();
        let h = Handoff {
            from: c.node_name().to_string(),
            ring_version: ring.version(),
        };
        for peer in ring
            .members()
            .iter()
            .filter(|m| m.as_str() != c.node_name())
        {
            send_marker(&c, peer, &h).await;
        }
        // Peers drop this node from their rings now; it keeps forwarding.
        c.announce_leave().await;
        tracing::info!(
            keys = keys.len(),
            "drained: keys handed over through the shared store"
        );
        let _ = self.drained.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Hands the keys this node lost to members that joined: passivate,
    /// flush, then tell each of them (off the cluster driver).
    async fn hand_over(self: Arc<Self>, to: Vec<String>) {
        let Some(c) = self.cluster.clone() else {
            return;
        };
        let me = c.node_name().to_string();
        let ring = c.ring();
        let lost: Vec<String> = self
            .service
            .active_keys()
            .into_iter()
            .filter(|k| ring.owner(k) != me)
            .collect();
        if !lost.is_empty() {
            self.service
                .passivate_keys(&lost, self.cfg.passivate_timeout)
                .await;
        }
        if let Err(e) = self.wb.drain(10).await {
            tracing::warn!(error = %e, "flush before handoff failed; the new owner may load older state");
        }
        let h = Handoff {
            from: me.clone(),
            ring_version: ring.version(),
        };
        for a in &to {
            send_marker(&c, a, &h).await;
        }
        tracing::info!(moved = lost.len(), to = ?to, version = ring.version(), "keys handed over after a join");
    }
}

/// Sends a handoff marker, retrying briefly while the peer's gateway is
/// still being identified.
async fn send_marker(c: &Cluster, to: &str, h: &Handoff) {
    for attempt in 0..20u32 {
        match c.send_handoff(to, h.clone()).await {
            Ok(()) => return,
            Err(e) if attempt == 19 || !e.is_transient() => {
                tracing::warn!(peer = to, error = %e, "handoff marker not delivered; the peer serves after its wait");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl Router {
    /// Serves what peers send (see [`crate::cluster::inbox`]) until the
    /// cluster layer stops.
    pub async fn serve(self: Arc<Self>, mut inbox: Inbox) {
        while let Some(m) = inbox.recv().await {
            match m {
                Inbound::Checks { batch, reply } => {
                    let r = Arc::clone(&self);
                    tokio::spawn(async move {
                        let _ = reply.send(r.check_batch(batch).await);
                    });
                }
                Inbound::Admin { event, done } => {
                    let r = Arc::clone(&self);
                    tokio::spawn(async move {
                        r.admin_event(event).await;
                        let _ = done.send(());
                    });
                }
                Inbound::Handoff { marker, reply } => {
                    let fx = self.gate.lock().on_marker(&marker.from);
                    self.carry_out(fx);
                    let _ = reply.send(Ok(()));
                }
                Inbound::RingChanged { change, ring } => {
                    let fx = self.gate.lock().on_ring_change(
                        &change,
                        ring.members(),
                        tokio::time::Instant::now(),
                    );
                    self.carry_out(fx);
                }
            }
        }
    }
}

impl Router {
    async fn check_batch(self: &Arc<Self>, batch: ForwardBatch) -> ForwardReply {
        let me = self.me().unwrap_or_default();
        let mut results = Vec::with_capacity(batch.checks.len());
        let futures = batch.checks.iter().map(|chk| async {
            if self.draining.load(Ordering::Acquire) {
                self.wait_drained().await;
            }
            let ring = self.routing_ring();
            let owns = ring.as_ref().is_some_and(|r| r.owner(&chk.key_id) == me);
            if !owns {
                return ForwardOutcome::NotOwner {
                    ring_version: ring.map(|r| r.version()).unwrap_or(0),
                };
            }
            self.wait_gates().await;
            ForwardOutcome::Decided(
                self.decide_local(
                    &chk.key_id,
                    &SecretHash(chk.secret_hash),
                    chk.cost,
                    // Checked by the receiving node's data plane.
                    chk.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
                )
                .await,
            )
        });
        for r in futures_util::future::join_all(futures).await {
            results.push(r);
        }
        ForwardReply { results }
    }

    async fn admin_event(&self, ev: AdminEvent) {
        let r = match &ev {
            AdminEvent::KeyChanged { key_id } => self.service.reload_key(key_id).await,
            AdminEvent::TierChanged { .. } => self.service.reload_tiers().await,
            AdminEvent::BlocksChanged => self.service.reload_blocks().await,
            AdminEvent::AbuseRulesChanged { rules } => {
                match serde_json::from_str::<Vec<ringlimit_actors::pipeline::AbuseRule>>(rules) {
                    Ok(r) if r.iter().all(|x| x.validate().is_ok()) => {
                        if let Some(p) = self.service.pipelines() {
                            p.set_abuse_rules(r);
                        }
                        Ok(())
                    }
                    _ => Err(ringlimit_actors::storage::StoreError::Corrupt(
                        "abuse rules from a peer do not parse".into(),
                    )),
                }
            }
        };
        if let Err(e) = r {
            tracing::warn!(event = ?ev, error = %e, "could not apply an admin change from a peer");
        }
    }
}
