//! The cluster driver: a thin local actor around the [`Membership`] and
//! [`Dialer`] state machines that does their I/O.
//!
//! It hears about sessions from the NodeServer's event subscription, about
//! peers' gateways from the process group (monitor plus a poll on every
//! tick), about heartbeats and leaves from the local gateway, and about time
//! from a ticker. On each tick it steps the state machines with the current
//! instant, sends heartbeats every interval, dials what the dialer says, and
//! stops sessions that did not finish their handshake in time. What the state
//! machines answer it applies: publish the new ring (and log the change),
//! open or close PeerLinks, and stop the sessions of a peer that timed out.

use super::dialer::Dialer;
use super::membership::{DownReason, MemberEvent, Membership, MembershipConfig};
use super::messages::{CoreMsg, GROUP, GatewayMsg, SCOPE, call_gateway};
use super::peers::Shared;
use super::ring::RingChange;
use super::wire::{decode, encode};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent, pg};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage, NodeSessionMessage};
use ringlimit_protocol::cluster::{Heartbeat, Hello, Leave, PeerAddr};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the GetSessions reconciliation runs (it only adds sessions an
/// event may have missed; removals come from events).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// The configured node name of a ractor_cluster peer name (`name@host`).
pub(crate) fn node_part(peer_name: &str) -> &str {
    peer_name.rsplit_once('@').map_or(peer_name, |(n, _)| n)
}

/// Relays NodeServer events to the driver.
struct Events(ActorRef<CoreMsg>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(CoreMsg::SessionOpened { actor: ses.actor });
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(CoreMsg::SessionClosed {
            id: ses.actor.get_id(),
        });
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        if let Some(n) = &ses.peer_name {
            let _ = self.0.cast(CoreMsg::SessionAuthenticated {
                actor: ses.actor.clone(),
                node_id: ses.node_id,
                name: node_part(&n.name).to_string(),
                conn: n.connection_string.clone(),
                peer_addr: ses.peer_addr.clone(),
                is_server: ses.is_server,
            });
        }
    }
}

#[derive(Debug)]
pub(crate) struct Core;

pub(crate) struct CoreArgs {
    pub shared: Arc<Shared>,
    pub node_server: ActorRef<NodeServerMessage>,
}

pub(crate) struct CoreState {
    shared: Arc<Shared>,
    node_server: ActorRef<NodeServerMessage>,
    membership: Membership,
    dialer: Dialer,
    /// Sessions opened but not yet authenticated, with when they opened.
    pending: HashMap<ActorId, (ActorRef<NodeSessionMessage>, Instant)>,
    /// Authenticated sessions and the peer's node name.
    sessions: HashMap<ActorId, (String, ActorRef<NodeSessionMessage>)>,
    /// The peer name each session authenticated, by the session's node id
    /// (the node id of every remote actor reached through it).
    session_names: HashMap<u64, String>,
    /// The node id of each authenticated session, by session actor.
    session_ids: HashMap<ActorId, u64>,
    /// Peers' gateways (remote actors in the process group), identified.
    gateways: HashMap<ActorId, (String, ActorRef<GatewayMsg>)>,
    identifying: HashSet<ActorId>,
    /// Gateways of a peer that timed out: not identified again; their
    /// sessions are being stopped.
    shunned: HashSet<ActorId>,
    last_heartbeat: Option<Instant>,
    last_reconcile: Option<Instant>,
    leaving: bool,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for Core {
    type Msg = CoreMsg;
    type State = CoreState;
    type Arguments = CoreArgs;

    async fn pre_start(
        &self,
        me: ActorRef<CoreMsg>,
        args: CoreArgs,
    ) -> Result<CoreState, ActorProcessingErr> {
        let shared = args.shared;
        let cfg = &shared.cfg;
        let membership = Membership::new(
            &shared.name,
            shared.incarnation,
            MembershipConfig {
                heartbeat_interval: cfg.heartbeat_interval,
                heartbeat_timeout: cfg.heartbeat_timeout,
            },
        );
        let seeds: Vec<String> = cfg
            .seeds
            .iter()
            .filter(|s| **s != shared.addr && **s != cfg.cluster_addr.to_string())
            .cloned()
            .collect();
        let dialer = Dialer::new(&shared.name, &seeds, cfg.reconnect);
        pg::monitor_scope(SCOPE.to_string(), me.get_cell());
        args.node_server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "ringlimit-cluster".to_string(),
                subscription: Box::new(Events(me.clone())),
            })?;
        Ok(CoreState {
            shared,
            node_server: args.node_server,
            membership,
            dialer,
            pending: HashMap::new(),
            sessions: HashMap::new(),
            session_names: HashMap::new(),
            session_ids: HashMap::new(),
            gateways: HashMap::new(),
            identifying: HashSet::new(),
            shunned: HashSet::new(),
            last_heartbeat: None,
            last_reconcile: None,
            leaving: false,
            ticker: None,
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<CoreMsg>,
        st: &mut CoreState,
    ) -> Result<(), ActorProcessingErr> {
        let tick = (st.shared.cfg.heartbeat_interval / 5)
            .clamp(Duration::from_millis(10), Duration::from_millis(100));
        st.ticker = Some(me.send_interval(tick, || CoreMsg::Tick));
        st.publish_members(Instant::now());
        let _ = me.cast(CoreMsg::Tick);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<CoreMsg>,
        st: &mut CoreState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        st.close_all_links();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<CoreMsg>,
        ev: SupervisionEvent,
        st: &mut CoreState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = ev {
            match change {
                pg::GroupChangeMessage::Join(scope, group, cells)
                    if scope == SCOPE && group == GROUP =>
                {
                    for c in cells {
                        st.identify(&me, c);
                    }
                }
                pg::GroupChangeMessage::Leave(scope, group, cells)
                    if scope == SCOPE && group == GROUP =>
                {
                    for c in cells {
                        st.gateway_gone(c.get_id());
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<CoreMsg>,
        msg: CoreMsg,
        st: &mut CoreState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            CoreMsg::Tick => st.tick(&me, now),
            CoreMsg::Heartbeat { name, hb } => {
                if hb.from != name {
                    tracing::warn!(session = %name, claimed = %hb.from, "a peer's heartbeat names another node; ignored");
                    return Ok(());
                }
                if hb.leaving {
                    if st.membership.state(&hb.from).is_some_and(|s| s.in_ring()) {
                        tracing::info!(peer = %hb.from, "peer leaves the cluster");
                    }
                    let ev = st.membership.left(&hb.from, hb.incarnation);
                    st.apply(ev, now);
                    return Ok(());
                }
                if hb.ring_version != st.membership.ring().version() {
                    tracing::trace!(from = %hb.from, theirs = hb.ring_version, ours = st.membership.ring().version(), "ring versions differ");
                }
                st.dialer.learn(&hb.from, &hb.addr);
                for p in &hb.peers {
                    st.dialer.learn(&p.name, &p.addr);
                }
                let ev = st.membership.heartbeat(&hb.from, hb.incarnation, now);
                st.apply(ev, now);
            }
            CoreMsg::PeerLeaving(l) => {
                // Not trusted as sent: ask the node it names, through that
                // node's own session; its answer says whether it leaves.
                tracing::debug!(peer = %l.from, "a leave was announced; asking the peer");
                let gws: Vec<(String, ActorRef<GatewayMsg>)> = st
                    .gateways
                    .values()
                    .filter(|(n, _)| *n == l.from)
                    .cloned()
                    .collect();
                for (name, gw) in gws {
                    st.pull_status(&me, name, gw);
                }
            }
            CoreMsg::Hello(h) => st.dialer.learn(&h.name, &h.addr),
            CoreMsg::SessionOpened { actor } => {
                st.pending.insert(actor.get_id(), (actor, now));
            }
            CoreMsg::SessionAuthenticated {
                actor,
                node_id,
                name,
                conn,
                peer_addr,
                is_server,
            } => {
                st.pending.remove(&actor.get_id());
                if name == st.shared.name {
                    tracing::debug!("dropping a session to ourselves");
                    actor.stop(Some("self".into()));
                    st.dialer
                        .connected(&name, (!is_server).then_some(peer_addr.as_str()), now);
                    return Ok(());
                }
                if st.leaving {
                    actor.stop(Some("leaving".into()));
                    return Ok(());
                }
                tracing::debug!(peer = %name, %peer_addr, is_server, "cluster session authenticated");
                st.membership.session_opened(&name, actor.get_id().pid());
                st.dialer
                    .connected(&name, (!is_server).then_some(peer_addr.as_str()), now);
                // With TLS the NodeServer's own listener is an unused
                // loopback port, which is what its handshake names; the
                // peer's address comes from its Hello instead.
                if st.shared.tls.is_none() {
                    st.dialer.learn(&name, &conn);
                }
                st.session_names.insert(node_id, name.clone());
                st.session_ids.insert(actor.get_id(), node_id);
                st.sessions.insert(actor.get_id(), (name, actor));
            }
            CoreMsg::SessionClosed { id } => {
                st.pending.remove(&id);
                if let Some(node_id) = st.session_ids.remove(&id) {
                    st.session_names.remove(&node_id);
                }
                if let Some((name, _)) = st.sessions.remove(&id) {
                    tracing::debug!(peer = %name, "cluster session closed");
                    let ev = st.membership.session_closed(&name, id.pid());
                    st.apply(ev, now);
                }
            }
            CoreMsg::Sessions(list) => {
                for (actor, node_id, name) in list {
                    if name == st.shared.name
                        || st.sessions.contains_key(&actor.get_id())
                        || st.leaving
                    {
                        continue;
                    }
                    if matches!(
                        actor.get_status(),
                        ractor::ActorStatus::Stopping | ractor::ActorStatus::Stopped
                    ) {
                        continue;
                    }
                    st.pending.remove(&actor.get_id());
                    st.membership.session_opened(&name, actor.get_id().pid());
                    st.session_names.insert(node_id, name.clone());
                    st.session_ids.insert(actor.get_id(), node_id);
                    st.sessions.insert(actor.get_id(), (name, actor));
                }
            }
            CoreMsg::Identified { cell, hello } => {
                let id = cell.get_id();
                st.identifying.remove(&id);
                if hello.name == st.shared.name || st.shunned.contains(&id) || st.leaving {
                    return Ok(());
                }
                let members = pg::get_scoped_members(&SCOPE.to_string(), &GROUP.to_string());
                if !members.iter().any(|c| c.get_id() == id) {
                    return Ok(());
                }
                // The gateway is the peer its session authenticated, whatever
                // its hello says: a cookie holder cannot pose as another node.
                let ActorId::Remote { node_id, .. } = id else {
                    return Ok(());
                };
                match st.session_names.get(&node_id) {
                    Some(n) if *n == hello.name => {}
                    Some(n) => {
                        tracing::warn!(session = %n, claimed = %hello.name, "a peer's gateway claims another node's name; ignored");
                        st.shunned.insert(id);
                        return Ok(());
                    }
                    // Its session's authentication is not known yet: the
                    // next tick identifies it again.
                    None => return Ok(()),
                }
                tracing::debug!(peer = %hello.name, addr = %hello.addr, "peer gateway identified");
                st.dialer.learn(&hello.name, &hello.addr);
                let gw: ActorRef<GatewayMsg> = cell.into();
                st.gateways.insert(id, (hello.name.clone(), gw.clone()));
                st.shared.set_peer_gateway(&hello.name, id, gw.clone());
                // Hear from it at once rather than at the next interval.
                st.pull_status(&me, hello.name.clone(), gw);
            }
            CoreMsg::IdentifyFailed { id } => {
                st.identifying.remove(&id);
            }
            CoreMsg::Dialed {
                addr,
                resolved,
                error,
                is_self,
            } => {
                if is_self {
                    tracing::info!(%addr, "seed is this node; not dialing it");
                    st.dialer.forget(&addr);
                    return Ok(());
                }
                if let Some(e) = &error {
                    tracing::debug!(%addr, error = %e, "dial failed");
                }
                st.dialer
                    .attempted(&addr, resolved.map(|r| r.to_string()), now);
            }
            CoreMsg::AnnounceLeave(reply) => {
                st.announce_leave().await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

impl CoreState {
    fn tick(&mut self, me: &ActorRef<CoreMsg>, now: Instant) {
        if self.leaving {
            return;
        }
        let ev = self.membership.tick(now);
        self.apply(ev, now);

        // Handshakes that did not finish in time (a frozen peer accepts TCP).
        let limit = self.shared.cfg.heartbeat_timeout;
        let stale: Vec<ActorId> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) >= limit)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some((actor, _)) = self.pending.remove(&id) {
                tracing::debug!("stopping a cluster session whose handshake did not finish");
                actor.stop(Some("handshake timeout".into()));
            }
        }

        if self
            .last_heartbeat
            .is_none_or(|t| now.saturating_duration_since(t) >= self.shared.cfg.heartbeat_interval)
        {
            self.last_heartbeat = Some(now);
            if let Ok(b) = encode(&self.heartbeat()) {
                self.shared.set_heartbeat(b);
            }
            let gws: Vec<(String, ActorRef<GatewayMsg>)> =
                self.gateways.values().cloned().collect();
            for (name, gw) in gws {
                self.pull_status(me, name, gw);
            }
        }

        for c in pg::get_scoped_members(&SCOPE.to_string(), &GROUP.to_string()) {
            self.identify(me, c);
        }

        let membership = &self.membership;
        let due = self.dialer.due(now, |n| {
            !membership.is_connected(n) && !membership.has_left(n)
        });
        for addr in due {
            self.dial(me, addr);
        }

        if self
            .last_reconcile
            .is_none_or(|t| now.saturating_duration_since(t) >= RECONCILE_EVERY)
        {
            self.last_reconcile = Some(now);
            let ns = self.node_server.clone();
            let me = me.clone();
            tokio::spawn(async move {
                if let Ok(CallResult::Success(map)) = ns
                    .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
                    .await
                {
                    let list = map
                        .into_values()
                        .filter_map(|s| {
                            s.peer_name.as_ref().map(|n| {
                                (s.actor.clone(), s.node_id, node_part(&n.name).to_string())
                            })
                        })
                        .collect();
                    let _ = me.cast(CoreMsg::Sessions(list));
                }
            });
        }
        self.publish_members(now);
    }

    /// Asks a peer's gateway for its heartbeat; the answer is the peer its
    /// session authenticated as `name` (a different `from` is ignored).
    fn pull_status(&self, me: &ActorRef<CoreMsg>, name: String, gw: ActorRef<GatewayMsg>) {
        let me = me.clone();
        let timeout = self
            .shared
            .cfg
            .heartbeat_interval
            .max(Duration::from_millis(100));
        tokio::spawn(async move {
            if let Ok(b) = call_gateway(&gw, GatewayMsg::Status, Vec::new(), timeout, &name).await {
                match decode::<Heartbeat>(&b) {
                    Ok(hb) => {
                        let _ = me.cast(CoreMsg::Heartbeat { name, hb });
                    }
                    Err(e) => tracing::debug!(peer = %name, error = %e, "bad status answer"),
                }
            }
        });
    }

    fn heartbeat(&self) -> Heartbeat {
        let ring = self.membership.ring();
        let peers = self
            .dialer
            .targets()
            .iter()
            .filter_map(|t| {
                let n = t.name.as_ref()?;
                self.membership.state(n).filter(|s| s.in_ring())?;
                Some(PeerAddr {
                    name: n.clone(),
                    addr: t.addr.clone(),
                })
            })
            .collect();
        Heartbeat {
            from: self.shared.name.clone(),
            incarnation: self.shared.incarnation,
            members: ring.members().to_vec(),
            ring_version: ring.version(),
            addr: self.shared.addr.clone(),
            peers,
            leaving: self.leaving,
        }
    }

    fn identify(&mut self, me: &ActorRef<CoreMsg>, cell: ActorCell) {
        let id = cell.get_id();
        if id.is_local()
            || self.leaving
            || self.gateways.contains_key(&id)
            || self.identifying.contains(&id)
            || self.shunned.contains(&id)
        {
            return;
        }
        self.identifying.insert(id);
        let hello = self.shared.hello();
        let timeout = self.shared.cfg.forward_timeout;
        let me = me.clone();
        tokio::spawn(async move {
            let gw: ActorRef<GatewayMsg> = cell.clone().into();
            let msg = match encode(&hello) {
                Ok(b) => match gw.call(|r| GatewayMsg::Identify(b, r), Some(timeout)).await {
                    Ok(CallResult::Success(b)) => decode::<Hello>(&b)
                        .ok()
                        .map(|hello| CoreMsg::Identified { cell, hello }),
                    _ => None,
                },
                Err(_) => None,
            };
            let _ = me.cast(msg.unwrap_or(CoreMsg::IdentifyFailed { id }));
        });
    }

    fn gateway_gone(&mut self, id: ActorId) {
        self.identifying.remove(&id);
        self.shunned.remove(&id);
        let Some((name, _)) = self.gateways.remove(&id) else {
            return;
        };
        // Another session's gateway of the same peer takes over, if any.
        let other = self
            .gateways
            .iter()
            .find(|(_, (n, _))| *n == name)
            .map(|(i, (_, g))| (*i, g.clone()));
        match other {
            Some((oid, g)) => self.shared.set_peer_gateway(&name, oid, g),
            None => self.shared.drop_peer_if(&name, id),
        }
    }

    fn dial(&mut self, me: &ActorRef<CoreMsg>, addr: String) {
        let ns = self.node_server.clone();
        let me = me.clone();
        let own = self.shared.cfg.cluster_addr;
        let timeout = self.shared.cfg.heartbeat_timeout;
        let tls = self.shared.tls.clone();
        tokio::spawn(async move {
            let resolved: Vec<SocketAddr> = match tokio::net::lookup_host(addr.as_str()).await {
                Ok(it) => it.collect(),
                Err(_) => Vec::new(),
            };
            if resolved.is_empty() {
                let _ = me.cast(CoreMsg::Dialed {
                    addr,
                    resolved: None,
                    error: Some("cannot resolve".into()),
                    is_self: false,
                });
                return;
            }
            let is_self = |sa: &SocketAddr| {
                *sa == own
                    || (own.ip().is_unspecified()
                        && sa.port() == own.port()
                        && sa.ip().is_loopback())
            };
            if resolved.iter().any(is_self) {
                let _ = me.cast(CoreMsg::Dialed {
                    addr,
                    resolved: resolved.first().copied(),
                    error: None,
                    is_self: true,
                });
                return;
            }
            // Every address the name resolves to, in order, until one connects.
            let mut error = None;
            let mut used = resolved[0];
            for sa in resolved {
                used = sa;
                let connect = async {
                    match &tls {
                        None => ractor_cluster::client_connect(&ns, sa)
                            .await
                            .map_err(|e| e.to_string()),
                        Some(t) => {
                            let name = t.server_name_for(&addr)?;
                            ractor_cluster::client_connect_enc(&ns, sa, t.connector.clone(), name)
                                .await
                                .map_err(|e| format!("TLS: {e}"))
                        }
                    }
                };
                error = match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("connect timed out".to_string()),
                };
                if error.is_none() {
                    break;
                }
            }
            let _ = me.cast(CoreMsg::Dialed {
                addr,
                resolved: Some(used),
                error,
                is_self: false,
            });
        });
    }

    fn apply(&mut self, events: Vec<MemberEvent>, now: Instant) {
        if events.is_empty() {
            return;
        }
        for e in events {
            match e {
                MemberEvent::PeerUp { name, incarnation } => {
                    tracing::info!(peer = %name, incarnation, "peer up");
                }
                MemberEvent::PeerSuspect { name } => {
                    tracing::warn!(peer = %name, "peer missed heartbeats (suspect)");
                }
                MemberEvent::PeerDown { name, reason } => {
                    tracing::warn!(peer = %name, reason = reason.as_str(), "peer down");
                    if reason == DownReason::Timeout {
                        self.stop_sessions_of(&name);
                    }
                    let ids: Vec<ActorId> = self
                        .gateways
                        .iter()
                        .filter(|(_, (n, _))| *n == name)
                        .map(|(i, _)| *i)
                        .collect();
                    for id in ids {
                        self.gateways.remove(&id);
                        if reason == DownReason::Timeout {
                            self.shunned.insert(id);
                        }
                    }
                    self.shared.drop_peer(&name);
                }
                MemberEvent::RingChanged(change) => {
                    if self.leaving {
                        // This node's published ring no longer includes it; keep it so.
                        continue;
                    }
                    let ring = self.membership.ring().clone();
                    tracing::info!(
                        old_version = change.old_version,
                        new_version = change.new_version,
                        added = ?change.added,
                        removed = ?change.removed,
                        members = ?ring.members(),
                        "ring changed"
                    );
                    self.shared.set_ring(ring.clone());
                    self.shared.handler.on_ring_change(&change, &ring);
                }
            }
        }
        self.publish_members(now);
    }

    /// Stops every session to `name`: those this driver knows, and any the
    /// NodeServer lists (an event may not have arrived yet).
    fn stop_sessions_of(&mut self, name: &str) {
        for (_, (n, actor)) in self.sessions.iter().filter(|(_, (n, _))| n == name) {
            tracing::info!(peer = %n, "stopping the cluster session of a peer that missed its heartbeats");
            actor.stop(Some("heartbeat timeout".into()));
        }
        let ns = self.node_server.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            if let Ok(CallResult::Success(map)) = ns
                .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
                .await
            {
                for s in map.into_values() {
                    if s.peer_name
                        .as_ref()
                        .is_some_and(|n| node_part(&n.name) == name)
                    {
                        s.actor.stop(Some("heartbeat timeout".into()));
                    }
                }
            }
        });
    }

    fn publish_members(&self, now: Instant) {
        self.shared.set_members(now, self.membership.view(now));
    }

    fn close_all_links(&self) {
        self.shared.drop_all_peers();
    }

    /// Tells every peer this node leaves (each drops it from its ring at
    /// once), and from now on routes everything away from this node: its own
    /// ring becomes the ring without it. Sessions, gateways and links stay up
    /// so keys can still be handed over; nothing reconnects or re-joins.
    async fn announce_leave(&mut self) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        tracing::info!("leaving the cluster");
        // What peers asking this node now hear: it leaves.
        if let Ok(b) = encode(&self.heartbeat()) {
            self.shared.set_heartbeat(b);
        }
        let leave = Leave {
            from: self.shared.name.clone(),
            incarnation: self.shared.incarnation,
        };
        if let Ok(b) = encode(&leave) {
            let timeout = self.shared.cfg.forward_timeout;
            let calls = self.gateways.values().map(|(name, gw)| {
                let b = b.clone();
                let gw = gw.clone();
                let name = name.clone();
                async move {
                    if call_gateway(&gw, GatewayMsg::Leave, b, timeout, &name)
                        .await
                        .is_err()
                    {
                        tracing::warn!(peer = %name, "peer did not acknowledge our leave");
                    }
                }
            });
            futures_util::future::join_all(calls).await;
        }
        let old = self.membership.ring().clone();
        if let Some(new) = old.without(&self.shared.name) {
            let new = Arc::new(new);
            if let Some(change) = RingChange::between(&old, &new) {
                tracing::info!(
                    old_version = change.old_version,
                    new_version = change.new_version,
                    removed = ?change.removed,
                    members = ?new.members(),
                    "ring changed (this node leaves)"
                );
                self.shared.set_ring(new.clone());
                self.shared.handler.on_ring_change(&change, &new);
            }
        }
    }
}
