//! Who is in the cluster: a pure state machine, driven by the cluster actor.
//!
//! Inputs are what the transport observed, each with the instant it happened
//! (time is an argument; nothing here reads a clock or a socket):
//! a session to a peer opened or closed, a heartbeat arrived, a peer said it
//! is leaving, and a periodic [`Membership::tick`]. Outputs are
//! [`MemberEvent`]s: a peer came up, went down (with why), and the ring
//! changed (an explicit [`RingChange`] computed from the old and new ring).
//!
//! Rules:
//! - A peer is in the ring while it is `Up` or `Suspect`. It becomes `Up` on a
//!   heartbeat received while a session to it is open, `Suspect` after
//!   missing heartbeats for [`MembershipConfig::suspect_after`], and `Down`
//!   after [`MembershipConfig::heartbeat_timeout`] (reason `Timeout`), when
//!   its last session closes (`Disconnected`), or when it says it leaves
//!   (`Left`).
//! - A heartbeat is only believed while a session to its sender is open:
//!   after a timeout the sessions are forgotten (the driver stops them), so a
//!   heartbeat still in a mailbox cannot bring a dead peer back; a peer comes
//!   back through a new session.
//! - Incarnations (a number that grows with each process start) order the
//!   lives of a node: a heartbeat from an older incarnation is stale and
//!   ignored, and after a graceful leave only a newer incarnation rejoins
//!   (the quickwit-cluster "generation" idea).

use super::ring::{Ring, RingChange};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Heartbeat timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often a node sends heartbeats (default 500 ms).
    pub heartbeat_interval: Duration,
    /// A peer silent this long is taken out of the ring (default 2 s).
    pub heartbeat_timeout: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(2),
        }
    }
}

impl MembershipConfig {
    /// Silence after which a peer is shown as `Suspect` (still in the ring):
    /// two missed heartbeats, and never later than the timeout.
    pub fn suspect_after(&self) -> Duration {
        (self.heartbeat_interval * 2).min(self.heartbeat_timeout)
    }
}

/// The state of a member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    Up,
    Suspect,
    Down,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }

    /// In the ring?
    pub fn in_ring(self) -> bool {
        matches!(self, MemberState::Up | MemberState::Suspect)
    }
}

/// Why a peer went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DownReason {
    /// No heartbeat for the timeout.
    Timeout,
    /// Its last session closed.
    Disconnected,
    /// It said it leaves.
    Left,
}

impl DownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DownReason::Timeout => "timeout",
            DownReason::Disconnected => "disconnected",
            DownReason::Left => "left",
        }
    }
}

/// What a step of the state machine produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A peer is up (first heartbeat, a rejoin, or a new incarnation).
    PeerUp { name: String, incarnation: u64 },
    /// A peer missed heartbeats for [`MembershipConfig::suspect_after`].
    PeerSuspect { name: String },
    /// A peer is out of the ring.
    PeerDown { name: String, reason: DownReason },
    /// The ring changed; [`Membership::ring`] is the new one.
    RingChanged(RingChange),
}

/// One member, as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    pub state: MemberState,
    pub incarnation: u64,
    /// `None` for this node and for peers never heard from.
    pub last_heartbeat_ms_ago: Option<u64>,
    pub down_reason: Option<DownReason>,
    /// Whether a cluster session to it is open.
    pub connected: bool,
    /// This node?
    pub local: bool,
}

#[derive(Debug, Clone)]
struct Peer {
    incarnation: u64,
    state: MemberState,
    down_reason: Option<DownReason>,
    /// After a graceful leave: heartbeats of this incarnation or older are ignored.
    left_incarnation: Option<u64>,
    last_heartbeat: Option<Instant>,
    sessions: BTreeSet<u64>,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            incarnation: 0,
            state: MemberState::Down,
            down_reason: None,
            left_incarnation: None,
            last_heartbeat: None,
            sessions: BTreeSet::new(),
        }
    }
}

/// The membership of one node.
#[derive(Debug)]
pub struct Membership {
    local: String,
    local_incarnation: u64,
    cfg: MembershipConfig,
    peers: BTreeMap<String, Peer>,
    ring: Arc<Ring>,
}

impl Membership {
    pub fn new(local: &str, local_incarnation: u64, cfg: MembershipConfig) -> Membership {
        Membership {
            local: local.to_string(),
            local_incarnation,
            cfg,
            peers: BTreeMap::new(),
            ring: Arc::new(Ring::new(local, Vec::<String>::new())),
        }
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    /// The current ring.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    /// The state of a peer, if it was ever seen.
    pub fn state(&self, name: &str) -> Option<MemberState> {
        self.peers.get(name).map(|p| p.state)
    }

    /// Whether a session to `name` is open (as far as this machine was told).
    pub fn is_connected(&self, name: &str) -> bool {
        self.peers.get(name).is_some_and(|p| !p.sessions.is_empty())
    }

    /// Whether `name` left gracefully and has not come back.
    pub fn has_left(&self, name: &str) -> bool {
        self.peers.get(name).is_some_and(|p| {
            p.state == MemberState::Down && p.down_reason == Some(DownReason::Left)
        })
    }

    /// Peers in the ring.
    pub fn live_peers(&self) -> impl Iterator<Item = &str> {
        self.peers
            .iter()
            .filter(|(_, p)| p.state.in_ring())
            .map(|(n, _)| n.as_str())
    }

    /// A session to `name` was authenticated.
    pub fn session_opened(&mut self, name: &str, session: u64) {
        if name == self.local {
            return;
        }
        self.peers
            .entry(name.to_string())
            .or_insert_with(Peer::new)
            .sessions
            .insert(session);
    }

    /// A session to `name` closed. When it was the last one, the peer is down.
    pub fn session_closed(&mut self, name: &str, session: u64) -> Vec<MemberEvent> {
        let Some(p) = self.peers.get_mut(name) else {
            return Vec::new();
        };
        if !p.sessions.remove(&session) || !p.sessions.is_empty() || !p.state.in_ring() {
            return Vec::new();
        }
        p.state = MemberState::Down;
        p.down_reason = Some(DownReason::Disconnected);
        let mut ev = vec![MemberEvent::PeerDown {
            name: name.to_string(),
            reason: DownReason::Disconnected,
        }];
        ev.extend(self.rebuild());
        ev
    }

    /// A heartbeat from `name`, of its life `incarnation`, arrived at `now`.
    pub fn heartbeat(&mut self, name: &str, incarnation: u64, now: Instant) -> Vec<MemberEvent> {
        if name == self.local {
            return Vec::new();
        }
        let p = self.peers.entry(name.to_string()).or_insert_with(Peer::new);
        if p.sessions.is_empty()
            || incarnation < p.incarnation
            || p.left_incarnation.is_some_and(|l| incarnation <= l)
        {
            return Vec::new();
        }
        let restarted = incarnation > p.incarnation && p.incarnation != 0;
        p.incarnation = incarnation;
        p.last_heartbeat = Some(now);
        let was = p.state;
        p.state = MemberState::Up;
        p.down_reason = None;
        let mut ev = Vec::new();
        if was == MemberState::Down || restarted {
            ev.push(MemberEvent::PeerUp {
                name: name.to_string(),
                incarnation,
            });
        }
        if !was.in_ring() {
            ev.extend(self.rebuild());
        }
        ev
    }

    /// `name` (life `incarnation`) leaves gracefully: out of the ring at once.
    pub fn left(&mut self, name: &str, incarnation: u64) -> Vec<MemberEvent> {
        if name == self.local {
            return Vec::new();
        }
        let p = self.peers.entry(name.to_string()).or_insert_with(Peer::new);
        if incarnation < p.incarnation {
            return Vec::new();
        }
        p.incarnation = incarnation;
        p.left_incarnation = Some(incarnation);
        let was = p.state;
        p.state = MemberState::Down;
        p.down_reason = Some(DownReason::Left);
        let mut ev = Vec::new();
        if was.in_ring() {
            ev.push(MemberEvent::PeerDown {
                name: name.to_string(),
                reason: DownReason::Left,
            });
            ev.extend(self.rebuild());
        }
        ev
    }

    /// Time passes: suspect and time out silent peers. A timed-out peer's
    /// sessions are forgotten; the driver stops them.
    pub fn tick(&mut self, now: Instant) -> Vec<MemberEvent> {
        let timeout = self.cfg.heartbeat_timeout;
        let suspect = self.cfg.suspect_after();
        let mut ev = Vec::new();
        let mut changed = false;
        for (name, p) in self.peers.iter_mut() {
            if !p.state.in_ring() {
                continue;
            }
            let age = p
                .last_heartbeat
                .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
            if age >= timeout {
                p.state = MemberState::Down;
                p.down_reason = Some(DownReason::Timeout);
                p.sessions.clear();
                ev.push(MemberEvent::PeerDown {
                    name: name.clone(),
                    reason: DownReason::Timeout,
                });
                changed = true;
            } else if age >= suspect && p.state == MemberState::Up {
                p.state = MemberState::Suspect;
                ev.push(MemberEvent::PeerSuspect { name: name.clone() });
            }
        }
        if changed {
            ev.extend(self.rebuild());
        }
        ev
    }

    /// Every member, this node first, then peers by name.
    pub fn view(&self, now: Instant) -> Vec<MemberView> {
        let mut v = vec![MemberView {
            name: self.local.clone(),
            state: MemberState::Up,
            incarnation: self.local_incarnation,
            last_heartbeat_ms_ago: None,
            down_reason: None,
            connected: true,
            local: true,
        }];
        v.extend(self.peers.iter().map(|(n, p)| {
            MemberView {
                name: n.clone(),
                state: p.state,
                incarnation: p.incarnation,
                last_heartbeat_ms_ago: p
                    .last_heartbeat
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                down_reason: p.down_reason,
                connected: !p.sessions.is_empty(),
                local: false,
            }
        }));
        v
    }

    fn rebuild(&mut self) -> Option<MemberEvent> {
        let new = Ring::new(
            &self.local,
            self.peers
                .iter()
                .filter(|(_, p)| p.state.in_ring())
                .map(|(n, _)| n.clone()),
        );
        let change = RingChange::between(&self.ring, &new)?;
        self.ring = Arc::new(new);
        Some(MemberEvent::RingChanged(change))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn setup() -> (Membership, Instant) {
        (
            Membership::new("a", 1, MembershipConfig::default()),
            Instant::now(),
        )
    }

    fn ring_changes(ev: &[MemberEvent]) -> Vec<&RingChange> {
        ev.iter()
            .filter_map(|e| match e {
                MemberEvent::RingChanged(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_heartbeat_over_an_open_session_brings_a_peer_up() {
        let (mut m, t0) = setup();
        let v0 = m.ring().version();
        // No session yet: not believed.
        assert!(m.heartbeat("b", 10, t0).is_empty());
        m.session_opened("b", 1);
        let ev = m.heartbeat("b", 10, t0);
        assert_eq!(
            ev[0],
            MemberEvent::PeerUp {
                name: "b".into(),
                incarnation: 10
            }
        );
        let ch = ring_changes(&ev);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].added, ["b"]);
        assert!(ch[0].removed.is_empty());
        assert_eq!(ch[0].old_version, v0);
        assert_eq!(ch[0].new_version, m.ring().version());
        assert_eq!(m.ring().members(), ["a", "b"]);
        // Further heartbeats change nothing.
        assert!(m.heartbeat("b", 10, t0 + ms(500)).is_empty());
        // Our own name is ignored.
        assert!(m.heartbeat("a", 99, t0).is_empty());
    }

    #[test]
    fn silence_suspects_then_times_out_and_forgets_sessions() {
        let (mut m, t0) = setup();
        m.session_opened("b", 1);
        m.heartbeat("b", 10, t0);
        assert!(m.tick(t0 + ms(999)).is_empty());
        assert_eq!(
            m.tick(t0 + ms(1000)),
            vec![MemberEvent::PeerSuspect { name: "b".into() }]
        );
        assert_eq!(m.state("b"), Some(MemberState::Suspect));
        assert!(m.ring().contains("b"), "a suspect stays in the ring");
        // Suspect is reported once.
        assert!(m.tick(t0 + ms(1500)).is_empty());
        let ev = m.tick(t0 + ms(2000));
        assert_eq!(
            ev[0],
            MemberEvent::PeerDown {
                name: "b".into(),
                reason: DownReason::Timeout
            }
        );
        assert_eq!(ring_changes(&ev)[0].removed, ["b"]);
        assert_eq!(m.ring().members(), ["a"]);
        assert!(!m.is_connected("b"));
        // A heartbeat still in a mailbox does not bring it back without a new session.
        assert!(m.heartbeat("b", 10, t0 + ms(2001)).is_empty());
        assert_eq!(m.state("b"), Some(MemberState::Down));
        // The old session closing later is a no-op.
        assert!(m.session_closed("b", 1).is_empty());
    }

    #[test]
    fn a_suspect_that_speaks_again_is_up_without_a_ring_change() {
        let (mut m, t0) = setup();
        m.session_opened("b", 1);
        m.heartbeat("b", 10, t0);
        m.tick(t0 + ms(1200));
        assert!(m.heartbeat("b", 10, t0 + ms(1300)).is_empty());
        assert_eq!(m.state("b"), Some(MemberState::Up));
        assert!(
            m.tick(t0 + ms(2100)).is_empty(),
            "the clock restarted at the last heartbeat"
        );
    }

    #[test]
    fn the_last_session_closing_takes_the_peer_down() {
        let (mut m, t0) = setup();
        m.session_opened("b", 1);
        m.session_opened("b", 2);
        m.heartbeat("b", 10, t0);
        // A duplicate connection lost an election: still connected.
        assert!(m.session_closed("b", 1).is_empty());
        assert!(m.is_connected("b"));
        let ev = m.session_closed("b", 2);
        assert_eq!(
            ev[0],
            MemberEvent::PeerDown {
                name: "b".into(),
                reason: DownReason::Disconnected
            }
        );
        assert_eq!(ring_changes(&ev)[0].removed, ["b"]);
        // Unknown sessions and peers are ignored.
        assert!(m.session_closed("b", 3).is_empty());
        assert!(m.session_closed("zz", 1).is_empty());
    }

    #[test]
    fn a_rejoin_after_a_timeout_rebuilds_the_same_ring() {
        let (mut m, t0) = setup();
        for (i, n) in ["b", "c"].iter().enumerate() {
            m.session_opened(n, i as u64);
            m.heartbeat(n, 10, t0);
        }
        let full = m.ring().version();
        m.heartbeat("c", 10, t0 + ms(1900));
        m.tick(t0 + ms(2000));
        assert_eq!(m.ring().members(), ["a", "c"]);
        // SIGCONT: same incarnation, new session.
        m.session_opened("b", 7);
        let ev = m.heartbeat("b", 10, t0 + ms(5000));
        assert_eq!(
            ev[0],
            MemberEvent::PeerUp {
                name: "b".into(),
                incarnation: 10
            }
        );
        assert_eq!(ring_changes(&ev)[0].added, ["b"]);
        assert_eq!(m.ring().version(), full);
    }

    #[test]
    fn stale_incarnations_are_ignored_and_restarts_reported() {
        let (mut m, t0) = setup();
        m.session_opened("b", 1);
        m.heartbeat("b", 10, t0);
        assert!(m.heartbeat("b", 9, t0 + ms(10)).is_empty());
        // The older life does not refresh the clock.
        m.heartbeat("b", 9, t0 + ms(1900));
        assert_eq!(
            m.tick(t0 + ms(2000))[0],
            MemberEvent::PeerDown {
                name: "b".into(),
                reason: DownReason::Timeout
            }
        );
        // A restart while up: reported, ring unchanged.
        let (mut m, t0) = setup();
        m.session_opened("b", 1);
        m.heartbeat("b", 10, t0);
        let ev = m.heartbeat("b", 11, t0 + ms(100));
        assert_eq!(
            ev,
            vec![MemberEvent::PeerUp {
                name: "b".into(),
                incarnation: 11
            }]
        );
    }

    #[test]
    fn a_graceful_leave_is_immediate_and_only_a_new_life_rejoins() {
        let (mut m, t0) = setup();
        m.session_opened("b", 1);
        m.heartbeat("b", 10, t0);
        let ev = m.left("b", 10);
        assert_eq!(
            ev[0],
            MemberEvent::PeerDown {
                name: "b".into(),
                reason: DownReason::Left
            }
        );
        assert_eq!(ring_changes(&ev)[0].removed, ["b"]);
        assert!(m.has_left("b"));
        // Late heartbeats of the same life are ignored.
        assert!(m.heartbeat("b", 10, t0 + ms(50)).is_empty());
        assert!(m.left("b", 10).is_empty());
        // An older leave is ignored.
        assert!(m.left("b", 3).is_empty());
        // A new life rejoins.
        let ev = m.heartbeat("b", 11, t0 + ms(100));
        assert_eq!(
            ev[0],
            MemberEvent::PeerUp {
                name: "b".into(),
                incarnation: 11
            }
        );
        assert!(m.ring().contains("b"));
        assert!(!m.has_left("b"));
    }

    #[test]
    fn the_view_lists_local_first_with_heartbeat_ages() {
        let (mut m, t0) = setup();
        m.session_opened("c", 1);
        m.heartbeat("c", 5, t0);
        m.session_opened("b", 2);
        let v = m.view(t0 + ms(300));
        assert_eq!(v.len(), 3);
        assert!(v[0].local && v[0].name == "a" && v[0].state == MemberState::Up);
        assert_eq!(v[1].name, "b");
        assert_eq!(v[1].state, MemberState::Down);
        assert_eq!(v[1].last_heartbeat_ms_ago, None);
        assert!(v[1].connected);
        assert_eq!(v[2].name, "c");
        assert_eq!(v[2].last_heartbeat_ms_ago, Some(300));
        assert_eq!(m.live_peers().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn custom_timing() {
        let cfg = MembershipConfig {
            heartbeat_interval: ms(100),
            heartbeat_timeout: ms(150),
        };
        assert_eq!(cfg.suspect_after(), ms(150));
        let mut m = Membership::new("a", 1, cfg);
        let t0 = Instant::now();
        m.session_opened("b", 1);
        m.heartbeat("b", 1, t0);
        assert!(m.tick(t0 + ms(149)).is_empty());
        assert_eq!(
            m.tick(t0 + ms(150))[0],
            MemberEvent::PeerDown {
                name: "b".into(),
                reason: DownReason::Timeout
            }
        );
    }
}
