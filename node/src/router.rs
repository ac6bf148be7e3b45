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

use crate::cluster::ring::{Ring, RingChange};
use crate::cluster::{Cluster, ClusterHandler, ForwardError};
use crate::http::data::answer;
use axum::http::StatusCode;
use parking_lot::Mutex;
use ringlimit_actors::keys::SecretHash;
use ringlimit_actors::service::{Change, Service};
use ringlimit_actors::writebehind::WriteBehind;
use ringlimit_protocol::apikey;
use ringlimit_protocol::cluster::{
    AdminEvent, ForwardBatch, ForwardCheck, ForwardOutcome, ForwardReply, Handoff,
};
use ringlimit_protocol::validate::ValidateResponse;
use ringlimit_protocol::{ErrorCode, ErrorDetail};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
    /// Tiers whose checks are denied (503) when the owner cannot be reached;
    /// every other tier fails open (allowed, counted in a metric).
    pub fail_closed_tiers: HashSet<String>,
    /// Longest a joining node holds checks waiting for its peers' handoff markers.
    pub handoff_wait: Duration,
    /// Longest passivation may take during a handoff.
    pub passivate_timeout: Duration,
}

/// Checks held while handoff markers are awaited.
#[derive(Debug, Default)]
struct Gate {
    waiting_for: HashSet<String>,
    /// When the gate opens anyway.
    deadline: Option<tokio::time::Instant>,
}

/// Routes checks to their owners.
pub struct Router {
    service: Arc<Service>,
    wb: Arc<WriteBehind>,
    cfg: RouterConfig,
    cluster: OnceLock<Arc<Cluster>>,
    gate: Mutex<Gate>,
    /// True while the gate is open.
    gate_open: watch::Sender<bool>,
    draining: AtomicBool,
    drained: watch::Sender<bool>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("clustered", &self.cluster.get().is_some())
            .finish()
    }
}

fn unavailable(message: &str) -> (StatusCode, ValidateResponse) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        ValidateResponse {
            allowed: false,
            key_id: None,
            tier: None,
            limits: vec![],
            retry_after_ms: None,
            denied_by: None,
            error: Some(ErrorDetail {
                code: ErrorCode::Unavailable,
                message: message.to_string(),
            }),
            suspended_until_ms: None,
        },
    )
}

impl Router {
    /// `forming`: hold checks of owned keys until the first peers are seen
    /// (or `handoff_wait` passes), so a starting node never answers alone for
    /// keys a running cluster owns.
    pub fn new(
        service: Arc<Service>,
        wb: Arc<WriteBehind>,
        cfg: RouterConfig,
        forming: bool,
    ) -> Arc<Router> {
        let (drained, _) = watch::channel(false);
        let (gate_open, _) = watch::channel(!forming);
        let gate = Gate {
            waiting_for: if forming {
                ["(first peers)".to_string()].into()
            } else {
                HashSet::new()
            },
            deadline: forming.then(|| tokio::time::Instant::now() + cfg.handoff_wait),
        };
        Arc::new(Router {
            service,
            wb,
            cfg,
            cluster: OnceLock::new(),
            gate: Mutex::new(gate),
            gate_open,
            draining: AtomicBool::new(false),
            drained,
            next_id: AtomicU64::new(1),
        })
    }

    /// Connects the router to the cluster and admin changes to broadcasts.
    pub fn attach(self: &Arc<Self>, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(Arc::clone(&cluster));
        let weak = Arc::downgrade(self);
        self.service.on_change(Box::new(move |c| {
            let Some(r) = weak.upgrade() else { return };
            let Some(cl) = r.cluster.get().cloned() else { return };
            let ev = match c {
                Change::Key(key_id) => AdminEvent::KeyChanged { key_id },
                Change::Tier(name) => AdminEvent::TierChanged { name },
                Change::Blocks => AdminEvent::BlocksChanged,
                Change::AbuseRules => AdminEvent::AbuseRulesChanged {
                    rules: r
                        .service
                        .pipelines()
                        .map(|p| serde_json::to_string(&p.abuse_rules()).unwrap_or_default())
                        .unwrap_or_default(),
                },
            };
            tokio::spawn(async move {
                let rep = cl.broadcast(ev.clone()).await;
                if !rep.failed.is_empty() {
                    tracing::warn!(event = ?ev, failed = ?rep.failed, "admin change not delivered to every peer; they catch up at the next full reload");
                }
            });
        }));
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    fn me(&self) -> Option<&str> {
        self.cluster.get().map(|c| c.node_name())
    }

    /// The ring checks are routed on: without this node while it drains.
    fn routing_ring(&self) -> Option<Arc<Ring>> {
        let c = self.cluster.get()?;
        let ring = c.ring();
        if self.draining.load(Ordering::Acquire) {
            return ring.without(c.node_name()).map(Arc::new).or(Some(ring));
        }
        Some(ring)
    }

    /// Waits while a join handoff is in progress (at most until its deadline).
    async fn wait_gates(&self) {
        if *self.gate_open.borrow() {
            return;
        }
        let deadline = self.gate.lock().deadline;
        let mut rx = self.gate_open.subscribe();
        if let Some(d) = deadline
            && tokio::time::timeout_at(d, rx.wait_for(|o| *o))
                .await
                .is_err()
        {
            let mut g = self.gate.lock();
            if g.deadline == Some(d) {
                tracing::warn!(waiting_for = ?g.waiting_for, "handoff markers did not all arrive; serving anyway");
                g.waiting_for.clear();
                g.deadline = None;
                let _ = self.gate_open.send_replace(true);
            }
        }
    }

    /// Opens the gate when its deadline passes, even with no check waiting.
    pub async fn open_gate_at_deadline(&self) {
        let Some(d) = self.gate.lock().deadline else {
            return;
        };
        tokio::time::sleep_until(d).await;
        let mut g = self.gate.lock();
        if g.deadline == Some(d) {
            if !g.waiting_for.is_empty() {
                tracing::warn!(waiting_for = ?g.waiting_for, "handoff markers did not all arrive; serving anyway");
            }
            g.waiting_for.clear();
            g.deadline = None;
            let _ = self.gate_open.send_replace(true);
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

    /// Answers one check from the HTTP data plane: locally when this node owns
    /// the key, otherwise through the owner.
    pub async fn validate(
        &self,
        api_key: &str,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> (StatusCode, ValidateResponse) {
        let Some(ring) = self.routing_ring() else {
            return answer(self.service.validate(api_key, cost, client_ip).await);
        };
        if let Some(block) = client_ip.and_then(|ip| self.service.ip_blocked(ip)) {
            return answer(ringlimit_actors::service::ValidateOutcome::IpBlocked { block });
        }
        let Some((key_id, secret)) = apikey::parse(api_key) else {
            return answer(self.service.validate(api_key, cost, None).await);
        };
        let hash = SecretHash::of(secret);
        let me = self.me().unwrap_or_default().to_string();
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
                return answer(
                    self.service
                        .validate_hashed(key_id, &hash, cost, client_ip)
                        .await,
                );
            }
            match self.forward(&owner, key_id, &hash, cost, client_ip).await {
                Ok(ForwardOutcome::Decided { status, body }) => {
                    return (
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        body,
                    );
                }
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
        unavailable("the key's owner is changing; retry")
    }

    async fn forward(
        &self,
        owner: &str,
        key_id: &str,
        hash: &SecretHash,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> Result<ForwardOutcome, ForwardError> {
        let Some(c) = self.cluster.get() else {
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
    fn owner_unreachable(
        &self,
        key_id: &str,
        owner: &str,
        e: &ForwardError,
    ) -> (StatusCode, ValidateResponse) {
        let key = self.service.key(key_id);
        let tier = key.as_ref().map(|k| k.tier.clone());
        let closed = tier
            .as_ref()
            .is_some_and(|t| self.cfg.fail_closed_tiers.contains(t));
        tracing::warn!(key_id, owner, error = %e, fail_closed = closed, "owner unreachable");
        if closed || key.is_none() {
            metrics::counter!(metric::FAIL_CLOSED).increment(1);
            return unavailable(&format!("the owner of this key ({owner}) is unreachable"));
        }
        metrics::counter!(metric::FAIL_OPEN).increment(1);
        (
            StatusCode::OK,
            ValidateResponse {
                allowed: true,
                key_id: Some(key_id.to_string()),
                tier,
                limits: vec![],
                retry_after_ms: None,
                denied_by: None,
                error: None,
                suspended_until_ms: None,
            },
        )
    }

    /// Graceful leave: hold owned keys, passivate, flush, tell peers, leave.
    pub async fn drain(&self) {
        let Some(c) = self.cluster.get().cloned() else {
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
            states: vec![],
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

    /// Work after a ring change (off the cluster driver).
    async fn after_ring_change(self: Arc<Self>, change: RingChange, old_alone: bool) {
        let Some(c) = self.cluster.get().cloned() else {
            return;
        };
        let me = c.node_name().to_string();
        let ring = c.ring();
        if change.added.is_empty() {
            return;
        }
        // Keys that moved to an added member: passivate, flush, then tell it.
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
            states: vec![],
        };
        for a in &change.added {
            send_marker(&c, a, &h).await;
        }
        tracing::info!(moved = lost.len(), to = ?change.added, version = ring.version(), old_alone, "keys handed over after a join");
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

/// The router as the cluster's handler of what peers send.
#[derive(Debug, Clone)]
pub struct RouterHandle(pub Arc<Router>);

#[async_trait::async_trait]
impl ClusterHandler for RouterHandle {
    async fn check_batch(&self, batch: ForwardBatch) -> ForwardReply {
        self.0.check_batch(batch).await
    }

    async fn admin_event(&self, ev: AdminEvent) {
        self.0.admin_event(ev).await
    }

    async fn handoff(&self, h: Handoff) -> Result<(), String> {
        self.0.handoff(h);
        Ok(())
    }

    fn on_ring_change(&self, change: &RingChange, ring: &Arc<Ring>) {
        let old_alone = self.0.on_ring_change(change, ring);
        if old_alone {
            let r = Arc::clone(&self.0);
            tokio::spawn(async move { r.open_gate_at_deadline().await });
        }
        tokio::spawn(Arc::clone(&self.0).after_ring_change(change.clone(), old_alone));
    }
}

impl Router {
    async fn check_batch(&self, batch: ForwardBatch) -> ForwardReply {
        let me = self.me().unwrap_or_default().to_string();
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
            let (status, body) = answer(
                self.service
                    .validate_hashed(
                        &chk.key_id,
                        &SecretHash(chk.secret_hash),
                        chk.cost,
                        // Checked by the receiving node's data plane.
                        chk.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
                    )
                    .await,
            );
            ForwardOutcome::Decided {
                status: status.as_u16(),
                body,
            }
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

    fn handoff(&self, h: Handoff) {
        let mut g = self.gate.lock();
        if g.waiting_for.remove(&h.from) && g.waiting_for.is_empty() {
            g.deadline = None;
            let _ = self.gate_open.send_replace(true);
            tracing::info!(from = %h.from, "handoff complete; serving gained keys");
        }
    }

    /// Updates the join gate; returns whether this node was alone before.
    fn on_ring_change(&self, change: &RingChange, ring: &Arc<Ring>) -> bool {
        let Some(c) = self.cluster.get() else {
            return false;
        };
        let me = c.node_name();
        // A node whose previous ring held only itself has just joined (or
        // come back): hold checks until the peers flushed what they owned.
        let mut old: Vec<&String> = ring
            .members()
            .iter()
            .filter(|m| !change.added.contains(m))
            .collect();
        old.extend(change.removed.iter());
        let old_alone = !change.added.is_empty() && old.iter().all(|m| m.as_str() == me);
        {
            let mut g = self.gate.lock();
            g.waiting_for.remove("(first peers)");
            if old_alone {
                g.waiting_for.extend(change.added.iter().cloned());
                g.deadline = Some(tokio::time::Instant::now() + self.cfg.handoff_wait);
                let _ = self.gate_open.send_replace(false);
            }
            // Peers that left will send nothing.
            for r in &change.removed {
                g.waiting_for.remove(r);
            }
            if g.waiting_for.is_empty() {
                g.deadline = None;
                let _ = self.gate_open.send_replace(true);
            }
        }
        // Keys of a removed (crashed or left) member are loaded by their new
        // owners on activation; nothing to do here for removals.
        old_alone
    }
}
