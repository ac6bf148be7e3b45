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
use crate::cluster::{Cluster, ForwardError, HandlerError};
use parking_lot::Mutex;
use ringlimit_actors::keys::SecretHash;
use ringlimit_actors::service::{Change, Service};
use ringlimit_actors::writebehind::WriteBehind;
use ringlimit_protocol::admin::KeyStatus;
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
    /// Forwarded checks an owner did not decide because they reached it
    /// later than `forward_expiry` after they were sent (a frozen owner, a
    /// cut link, or clocks apart by more than that).
    pub const FORWARD_EXPIRED: &str = "ringlimit_forward_expired_total";
    pub const NOT_OWNER: &str = "ringlimit_not_owner_total";
    pub const STATE_FAIL_OPEN: &str = "ringlimit_state_unavailable_fail_open_total";
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
    /// Longest an admin change of a key (a revocation) waits for the other
    /// members to acknowledge it before the caller is told what is pending
    /// (the heartbeat timeout: a member silent longer leaves the ring).
    pub admin_ack_wait: Duration,
    /// This process's usage writer name: units answered by a fail-open are
    /// counted in usage under it (see [`WriteBehind::count_unowned`]).
    pub usage_writer: String,
    /// A forwarded check older than this when its owner would decide it
    /// (by the forwarder's clock in the check against the owner's) is not
    /// decided: the forwarder has given up on it or is about to, and may
    /// have answered it by failing open. Half the forwarder's shortest wait.
    pub forward_expiry: Duration,
}

/// Who applied a key's admin change (see [`Router::confirm_key_change`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Propagation {
    /// Members that acknowledged it, sorted.
    pub acknowledged: Vec<String>,
    /// Members that did not within the bound, sorted; they are still retried
    /// in the background, and reload every key at their periodic reload.
    pub pending: Vec<String>,
}

/// How long a change left pending is still retried in the background: the
/// members' periodic full reload catches up anything older.
pub const ADMIN_RETRY_FOR: Duration = Duration::from_secs(30);

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
    /// Catch-up reloads asked for since the running one started; 0: none
    /// running (see [`Router::catch_up`]).
    catch_up: AtomicU64,
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
            catch_up: AtomicU64::new(0),
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
            Change::Blocks => AdminEvent::BlocksChanged {},
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

    /// Delivers a key's admin change (revocation, suspension) to every ring
    /// member and waits, with retries, until each acknowledged having
    /// applied it, at most [`RouterConfig::admin_ack_wait`]. The members
    /// still pending then are retried in the background for
    /// [`ADMIN_RETRY_FOR`]. Without a cluster nothing is pending: the local
    /// cache was updated by the change itself.
    pub async fn confirm_key_change(self: &Arc<Self>, key_id: &str) -> Propagation {
        let Some(cl) = self.cluster.clone() else {
            return Propagation::default();
        };
        let ev = AdminEvent::KeyChanged {
            key_id: key_id.to_string(),
        };
        let deadline = tokio::time::Instant::now() + self.cfg.admin_ack_wait;
        let mut p = Propagation::default();
        let mut pause = Duration::from_millis(25);
        loop {
            // Members of the ring now, and any member still pending from
            // before (one that left the ring has not applied it either).
            let me = cl.node_name();
            let mut to: Vec<String> = cl
                .ring()
                .members()
                .iter()
                .filter(|m| m.as_str() != me && !p.acknowledged.contains(m))
                .cloned()
                .collect();
            for m in &p.pending {
                if !to.contains(m) {
                    to.push(m.clone());
                }
            }
            let rep = cl.send_admin_to(&ev, &to).await;
            p.acknowledged.extend(rep.delivered);
            p.pending = rep.failed.into_iter().map(|(n, _)| n).collect();
            p.pending.retain(|n| !n.is_empty());
            if p.pending.is_empty() || tokio::time::Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(400));
        }
        p.acknowledged.sort();
        p.pending.sort();
        if !p.pending.is_empty() {
            tracing::warn!(key_id, pending = ?p.pending, "key change not acknowledged by every member; retrying in the background");
            let pending = p.pending.clone();
            tokio::spawn(async move {
                let until = tokio::time::Instant::now() + ADMIN_RETRY_FOR;
                let mut pending = pending;
                while !pending.is_empty() && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let rep = cl.send_admin_to(&ev, &pending).await;
                    pending = rep.failed.into_iter().map(|(n, _)| n).collect();
                }
                if pending.is_empty() {
                    tracing::info!(event = ?ev, "key change acknowledged by every member after a retry");
                }
            });
        }
        p
    }

    /// Reloads keys, tiers and blocks from the store, because the ring
    /// gained members: a member that comes back (a healed partition, a
    /// frozen node resumed) may have missed admin changes made while it was
    /// away, and the nodes that stayed may have missed changes made on its
    /// side; the broadcast of those changes went only to the members of the
    /// moment. A revocation is in force everywhere once the reload is done,
    /// not at the next periodic reload. Requests while a reload runs make
    /// one more run after it, never a second concurrent one.
    fn catch_up(self: Arc<Self>) {
        // Requests since the running reload started; the first starts it.
        if self.catch_up.fetch_add(1, Ordering::AcqRel) > 0 {
            return;
        }
        tokio::spawn(async move {
            loop {
                let seen = self.catch_up.load(Ordering::Acquire);
                let keys = self.service.reload_all_keys().await;
                let tiers = self.service.reload_tiers().await;
                let blocks = self.service.reload_blocks().await;
                match (keys, tiers, blocks) {
                    (Ok(n), Ok(_), Ok(_)) => {
                        tracing::info!(
                            keys = n,
                            "reloaded keys, tiers and blocks: the ring gained members"
                        );
                    }
                    (k, t, b) => tracing::warn!(
                        keys = ?k.err(), tiers = ?t.err(), blocks = ?b.err(),
                        "catch-up reload after a ring change failed; the periodic reload retries"
                    ),
                }
                // No request came during this run: done. Otherwise one more
                // run covers all that came (a request after the reset starts
                // a new task).
                if self
                    .catch_up
                    .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
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

    /// The check decided without waiting, when this node owns the key (or
    /// is alone), no handoff holds it, and the key's limiter is active (see
    /// [`Service::validate_now`]). `None`: take [`Router::validate`], which
    /// answers the same.
    pub fn validate_now(
        &self,
        api_key: &str,
        cost: u64,
        client_ip: Option<IpAddr>,
    ) -> Option<ValidateOutcome> {
        let (key_id, hash) = match self.service.admit_request(api_key, client_ip) {
            Ok(front) => front,
            Err(answer) => return Some(answer),
        };
        if !self.decides_here_now(key_id) {
            return None;
        }
        self.service.validate_now(key_id, &hash, cost, client_ip)
    }

    /// Several checks presenting one api_key (`(cost, client_ip)` each, in
    /// order), decided without waiting as [`Router::validate_now`] decides
    /// one: the api_key parsed and hashed once, the key's cell locked once.
    /// Pushes one outcome per check onto `out`, in order; `false` (nothing
    /// pushed, nothing spent): take [`Router::validate`] for each. The
    /// callers' IPs are not looked at here: answer blocked ones first
    /// ([`Router::ip_blocked`]) and leave them out of `checks`.
    pub fn validate_now_many(
        &self,
        api_key: &str,
        checks: &[(u64, Option<IpAddr>)],
        out: &mut Vec<ValidateOutcome>,
    ) -> bool {
        let (key_id, hash) = match self.service.admit_key(api_key) {
            Ok(front) => front,
            Err(answer) => {
                out.extend(checks.iter().map(|_| answer.clone()));
                return true;
            }
        };
        if !self.decides_here_now(key_id) {
            return false;
        }
        self.service.validate_now_many(key_id, &hash, checks, out)
    }

    /// Whether this node may decide `key_id`'s checks on the spot: it is
    /// alone, or it owns the key and neither a drain nor a handoff gate
    /// holds it.
    fn decides_here_now(&self, key_id: &str) -> bool {
        self.cluster.as_ref().is_none_or(|c| {
            !self.draining.load(Ordering::Acquire)
                && *self.gate_open.borrow()
                && c.ring().owner(key_id) == c.node_name()
        })
    }

    /// The answer for a caller whose IP is on the block list, if it is.
    pub fn ip_blocked(&self, client_ip: Option<IpAddr>) -> Option<ValidateOutcome> {
        self.service.ip_block_answer(client_ip)
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
            // A revocation is final: a key this node knows revoked is
            // refused here, even while the owner has not applied it yet.
            if self
                .service
                .key(key_id)
                .is_some_and(|k| k.status == KeyStatus::Revoked)
            {
                return ValidateOutcome::Unauthorized;
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
                    return self
                        .owner_unreachable(key_id, &hash, &owner, &e, cost)
                        .await;
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
        let o = self
            .service
            .validate_hashed(key_id, hash, cost, client_ip)
            .await;
        self.state_policy(o, cost)
    }

    /// A key whose stored state cannot be read (the snapshot store is down
    /// as it activates) is never checked fresh. Its tier decides: a
    /// fail-closed tier answers 503; any other fails open (allowed, not
    /// counted, in `ringlimit_state_unavailable_fail_open_total`), as when
    /// a key's owner is unreachable. Nothing is written for the key until
    /// its state has been read.
    fn state_policy(&self, o: ValidateOutcome, cost: u64) -> ValidateOutcome {
        if !ringlimit_actors::service::check::state_unavailable(&o) {
            return o;
        }
        match o {
            ValidateOutcome::Unavailable {
                key_id: Some(key_id),
                tier: Some(tier),
                ..
            } if !self.cfg.fail_closed_tiers.contains(&tier) => {
                metrics::counter!(metric::STATE_FAIL_OPEN).increment(1);
                self.fail_open(key_id, tier, cost)
            }
            other => other,
        }
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
    /// The answer when the key's owner could not answer a check.
    ///
    /// Only an owner that is gone or silent (`Unreachable`, `Timeout`) may
    /// be failed open, and only for a key this node authenticates itself:
    /// known, the secret's hash matching, not revoked, not suspended. A
    /// wrong secret, a revoked or a suspended key gets the answer it would
    /// get from the owner (401, 403). An overloaded link or a protocol error
    /// is this cluster's own trouble, not the owner's absence: 503, as for
    /// fail-closed tiers.
    async fn owner_unreachable(
        &self,
        key_id: &str,
        hash: &SecretHash,
        owner: &str,
        e: &ForwardError,
        cost: u64,
    ) -> ValidateOutcome {
        let unavailable = |why: &str| {
            metrics::counter!(metric::FAIL_CLOSED).increment(1);
            ValidateOutcome::Unavailable {
                key_id: None,
                tier: None,
                message: format!("the owner of this key ({owner}) {why}; retry"),
            }
        };
        match e {
            ForwardError::Unreachable { .. } | ForwardError::Timeout { .. } => {}
            ForwardError::Overloaded { .. } => {
                tracing::warn!(key_id, owner, error = %e, "owner overloaded; not failing open");
                return unavailable("has too many checks queued");
            }
            ForwardError::Local | ForwardError::Protocol(_) => {
                tracing::warn!(key_id, owner, error = %e, "forward failed; not failing open");
                return unavailable("could not be asked");
            }
        }
        let key = match self
            .service
            .authenticate(key_id, hash, self.service.now_ms())
            .await
        {
            Ok(key) => key,
            Err(answer) => return answer,
        };
        let closed = self.cfg.fail_closed_tiers.contains(&key.tier);
        tracing::warn!(key_id, owner, error = %e, fail_closed = closed, "owner unreachable");
        if closed {
            return unavailable("is unreachable");
        }
        metrics::counter!(metric::FAIL_OPEN).increment(1);
        self.fail_open(key.key_id.clone(), key.tier.clone(), cost)
    }

    /// A fail-open answer. The units are admitted, so they are counted in
    /// usage (and so billed) by this node, under its own writer: the owner
    /// either never got the check or could not read the key's state. An
    /// owner that got the check but whose answer was lost on the way back
    /// has counted it too; that double count is bounded by the fail-open
    /// answers (`ringlimit_owner_unreachable_fail_open_total`), and an
    /// owner never decides a forwarded check older than `forward_expiry`,
    /// so a check that waited in a frozen owner or a cut link is not.
    fn fail_open(&self, key_id: String, tier: String, cost: u64) -> ValidateOutcome {
        self.wb
            .count_unowned(&key_id, &self.cfg.usage_writer, cost, self.service.now_ms());
        ValidateOutcome::FailOpen { key_id, tier }
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
                        let _ = done.send(r.admin_event(event).await);
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
                    if !change.added.is_empty() {
                        Arc::clone(&self).catch_up();
                    }
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
            ForwardOutcome::Decided(self.decide_forwarded(chk).await)
        });
        for r in futures_util::future::join_all(futures).await {
            results.push(r);
        }
        ForwardReply { results }
    }

    /// Decides a forwarded check of a key this node owns, unless it is
    /// older than `forward_expiry` (see [`RouterConfig::forward_expiry`]).
    async fn decide_forwarded(&self, chk: &ForwardCheck) -> ValidateOutcome {
        let age_us = self.service.now_us().saturating_sub(chk.now_us);
        if age_us > self.cfg.forward_expiry.as_micros() as u64 {
            metrics::counter!(metric::FORWARD_EXPIRED).increment(1);
            tracing::debug!(key_id = %chk.key_id, age_ms = age_us / 1_000, "forwarded check too old to decide");
            return ValidateOutcome::unavailable(
                "the check reached the key's owner too late; retry",
            );
        }
        self.decide_local(
            &chk.key_id,
            &SecretHash(chk.secret_hash),
            chk.cost,
            // Checked by the receiving node's data plane.
            chk.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
        )
        .await
    }

    async fn admin_event(&self, ev: AdminEvent) -> Result<(), HandlerError> {
        let r = match &ev {
            AdminEvent::KeyChanged { key_id } => self.service.reload_key(key_id).await,
            AdminEvent::TierChanged { .. } => self.service.reload_tiers().await,
            AdminEvent::BlocksChanged {} => self.service.reload_blocks().await,
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
            return Err(HandlerError::Refused(format!(
                "could not apply the change: {e}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use ringlimit_actors::core::{Core, CoreConfig};
    use ringlimit_actors::storage::{Store, TierRecord};
    use ringlimit_protocol::admin::{CreateKeyRequest, Granularity};
    use ringlimit_protocol::{AlgorithmKind, LimitSpec};

    struct Fixture {
        router: Arc<Router>,
        service: Arc<Service>,
        _core: Core,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let tier = |name: &str| TierRecord {
            name: name.into(),
            limits: vec![LimitSpec {
                name: "per-minute".into(),
                algorithm: AlgorithmKind::SlidingLog,
                limit: 10,
                window_ms: 60_000,
                burst: None,
            }],
        };
        let core = Core::start(CoreConfig::over(&store).with_tiers([tier("free"), tier("paid")]))
            .await
            .expect("core");
        let service = core.service(store, crate::app::os_random, None);
        let router = Router::new(
            Arc::clone(&service),
            Arc::clone(&core.write_behind),
            RouterConfig {
                node_name: "n0".into(),
                fail_closed_tiers: ["paid".to_string()].into_iter().collect(),
                handoff_wait: Duration::from_secs(1),
                passivate_timeout: Duration::from_secs(1),
                admin_ack_wait: Duration::from_secs(1),
                usage_writer: "n0#1".into(),
                forward_expiry: Duration::from_secs(1),
            },
            None,
            false,
        );
        Fixture {
            router,
            service,
            _core: core,
            _dir: dir,
        }
    }

    async fn key(s: &Service, tier: &str) -> (String, SecretHash) {
        let k = s
            .create_key(CreateKeyRequest {
                owner: "o".into(),
                tier: tier.into(),
                limits: None,
                metadata: None,
            })
            .await
            .expect("created");
        let (id, secret) = ringlimit_protocol::apikey::parse(&k.api_key).expect("parses");
        (id.to_string(), SecretHash::of(secret))
    }

    fn gone() -> ForwardError {
        ForwardError::Unreachable { peer: "n1".into() }
    }

    #[tokio::test]
    async fn an_unreachable_owner_fails_open_only_for_a_key_this_node_authenticates() {
        let f = fixture().await;
        let (id, hash) = key(&f.service, "free").await;
        let timeout = ForwardError::Timeout { peer: "n1".into() };
        for e in [gone(), timeout] {
            let o = f.router.owner_unreachable(&id, &hash, "n1", &e, 3).await;
            assert!(
                matches!(&o, ValidateOutcome::FailOpen { key_id, .. } if *key_id == id),
                "{e}: {o:?}"
            );
        }
        // Both answers' units are admitted, so usage holds them (the owner
        // never counted them), under this node's own writer.
        f.router.wb.drain(3).await.expect("flushed");
        let now = f.service.now_ms();
        let total: u64 = f
            .service
            .usage_history(&id, Granularity::Day, 0, now + 1)
            .await
            .expect("history")
            .iter()
            .map(|b| b.units)
            .sum();
        assert_eq!(total, 2 * 3, "two fail-open answers of cost 3");
        // A wrong secret for a known key id.
        let wrong = SecretHash::of("not-the-secret");
        let o = f
            .router
            .owner_unreachable(&id, &wrong, "n1", &gone(), 1)
            .await;
        assert_eq!(o, ValidateOutcome::Unauthorized);
        // An unknown key id answers like a wrong secret, not 503.
        let o = f
            .router
            .owner_unreachable("aaaaaaaaaaaaaaaaaaaa", &hash, "n1", &gone(), 1)
            .await;
        assert_eq!(o, ValidateOutcome::Unauthorized);
        // A suspended key.
        let (sid, shash) = key(&f.service, "free").await;
        f.service
            .suspend_key(&sid, None, "abuse")
            .await
            .expect("suspended");
        let o = f
            .router
            .owner_unreachable(&sid, &shash, "n1", &gone(), 1)
            .await;
        assert!(matches!(o, ValidateOutcome::Suspended { .. }), "{o:?}");
        // A revoked key.
        let (rid, rhash) = key(&f.service, "free").await;
        f.service.revoke_key(&rid).await.expect("revoked");
        let o = f
            .router
            .owner_unreachable(&rid, &rhash, "n1", &gone(), 1)
            .await;
        assert_eq!(o, ValidateOutcome::Unauthorized);
        // A fail-closed tier.
        let (pid, phash) = key(&f.service, "paid").await;
        let o = f
            .router
            .owner_unreachable(&pid, &phash, "n1", &gone(), 1)
            .await;
        assert!(matches!(o, ValidateOutcome::Unavailable { .. }), "{o:?}");
    }

    #[tokio::test]
    async fn a_check_decided_on_the_spot_answers_as_the_routed_check_does() {
        let f = fixture().await;
        let k = f
            .service
            .create_key(CreateKeyRequest {
                owner: "o".into(),
                tier: "free".into(),
                limits: None,
                metadata: None,
            })
            .await
            .expect("created");
        let api_key = k.api_key.as_str();
        // Not active yet: the routed path activates and loads the key.
        assert_eq!(f.router.validate_now(api_key, 1, None), None);
        assert!(matches!(
            f.router.validate(api_key, 1, None).await,
            ValidateOutcome::Allowed(_)
        ));
        // Active: decided on the spot, counted once each, 10 in all.
        let mut allowed = 1;
        for _ in 0..12 {
            match f.router.validate_now(api_key, 1, None) {
                Some(ValidateOutcome::Allowed(c)) => {
                    allowed += 1;
                    assert_eq!(c.limits[0].remaining, 10 - allowed);
                }
                Some(ValidateOutcome::Denied(c)) => {
                    assert_eq!(c.denied_by.as_deref(), Some("per-minute"));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(allowed, 10, "the limit is exact on the spot too");
        assert!(matches!(
            f.router.validate(api_key, 1, None).await,
            ValidateOutcome::Denied(_)
        ));
        // A wrong secret, a malformed key, a suspended key.
        let (id, _) = ringlimit_protocol::apikey::parse(api_key).expect("parses");
        let wrong = ringlimit_protocol::apikey::format(id, &"B".repeat(43));
        assert_eq!(
            f.router.validate_now(&wrong, 1, None),
            Some(ValidateOutcome::Unauthorized)
        );
        assert_eq!(
            f.router.validate_now("rl_nope", 1, None),
            Some(ValidateOutcome::Unauthorized)
        );
        f.service
            .suspend_key(id, None, "abuse")
            .await
            .expect("suspended");
        assert!(matches!(
            f.router.validate_now(api_key, 1, None),
            Some(ValidateOutcome::Suspended { .. })
        ));
    }

    #[tokio::test]
    async fn an_unreadable_state_fails_open_or_closed_by_tier_never_fresh() {
        use ringlimit_actors::limitset::CheckError;
        let f = fixture().await;
        let unreadable = |tier: &str| ValidateOutcome::Unavailable {
            key_id: Some("k".into()),
            tier: Some(tier.into()),
            message: CheckError::StateUnavailable.to_string(),
        };
        assert_eq!(
            f.router.state_policy(unreadable("free"), 1),
            ValidateOutcome::FailOpen {
                key_id: "k".into(),
                tier: "free".into()
            }
        );
        assert_eq!(
            f.router.state_policy(unreadable("paid"), 1),
            unreadable("paid")
        );
        // Other unavailable answers are left alone.
        let other = ValidateOutcome::unavailable("the key limiter is unavailable; retry");
        assert_eq!(f.router.state_policy(other.clone(), 1), other);
    }

    #[tokio::test]
    async fn an_owner_never_decides_a_forwarded_check_older_than_the_expiry() {
        let f = fixture().await;
        let (id, hash) = key(&f.service, "free").await;
        let check = |age_ms: u64| ForwardCheck {
            id: 1,
            key_id: id.clone(),
            secret_hash: hash.0,
            cost: 1,
            now_us: f.service.now_us() - age_ms * 1_000,
            resource: None,
            client_ip: None,
        };
        let late = f.router.decide_forwarded(&check(5_000)).await;
        assert!(
            matches!(&late, ValidateOutcome::Unavailable { message, .. } if message.contains("too late")),
            "{late:?}"
        );
        let fresh = f.router.decide_forwarded(&check(10)).await;
        assert!(
            matches!(&fresh, ValidateOutcome::Allowed(c) if c.limits[0].remaining == 9),
            "only the fresh check is counted: {fresh:?}"
        );
    }

    #[tokio::test]
    async fn an_overloaded_link_or_a_protocol_error_is_never_failed_open() {
        let f = fixture().await;
        let (id, hash) = key(&f.service, "free").await;
        for e in [
            ForwardError::Overloaded { peer: "n1".into() },
            ForwardError::Protocol("garbled".into()),
        ] {
            let o = f.router.owner_unreachable(&id, &hash, "n1", &e, 1).await;
            assert!(
                matches!(&o, ValidateOutcome::Unavailable { .. }),
                "{e}: {o:?}"
            );
            let (status, _) = crate::http::data::answer(o);
            assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}
