//! The join gate of a key handoff: a pure state machine, driven by the router.
//!
//! Counter state moves between nodes through the shared snapshot store, so a
//! node that gains keys must not answer for them before the nodes that lost
//! them have flushed. The gate holds checks of owned keys while this node
//! waits for those nodes' handoff markers.
//!
//! Inputs, each with the instant it happened (nothing here reads a clock):
//! - [`HandoffGate::on_ring_change`]: the ring changed;
//! - [`HandoffGate::on_marker`]: a peer said it has flushed what it handed over;
//! - [`HandoffGate::tick`]: time passed (the router calls it at the deadline
//!   it was given in [`Effect::WakeAt`]).
//!
//! Outputs are [`Effect`]s the router carries out: open or close the gate,
//! wake up at a deadline, and hand keys over to members that joined.
//!
//! Rules:
//! - A node that starts into a cluster is **forming**: it holds checks until
//!   it first sees peers (or `wait` passes), so it never answers alone for
//!   keys a running cluster owns.
//! - A node whose previous ring held only itself has just joined (or come
//!   back): it waits for a marker from every member that joined its ring,
//!   at most `wait`.
//! - A member that leaves the ring will send nothing: it is not waited for.
//! - Whatever is still missing at the deadline is given up, and the gate
//!   opens anyway (the keys of a silent peer are loaded from what it last
//!   flushed).
//! - Every node that sees members join hands them the keys it loses
//!   ([`Effect::HandOver`]): passivate, flush, then send each a marker.

use super::ring::RingChange;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

/// Where the gate stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateState {
    /// Checks are served.
    Open,
    /// Started into a cluster and no peer seen yet.
    Forming { deadline: Instant },
    /// Joined: waiting for these peers' markers.
    Waiting {
        waiting_for: BTreeSet<String>,
        deadline: Instant,
    },
}

/// Why the gate opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Every awaited marker arrived (or no peer had to be waited for).
    Complete,
    /// The deadline passed; these peers' markers never came.
    TimedOut { missing: Vec<String> },
}

/// What the router does after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Serve held and new checks.
    OpenGate(Opened),
    /// Hold checks of owned keys.
    CloseGate,
    /// Call [`HandoffGate::tick`] at this instant.
    WakeAt(Instant),
    /// Passivate the active keys this node no longer owns, flush them, then
    /// send a handoff marker to each of these new members.
    HandOver { to: Vec<String> },
}

/// The join gate.
#[derive(Debug, Clone)]
pub struct HandoffGate {
    me: String,
    wait: Duration,
    state: GateState,
}

impl HandoffGate {
    /// A gate for node `me` that waits at most `wait` for markers. A
    /// `forming` node starts closed and must be woken at the returned
    /// deadline.
    pub fn new(
        me: &str,
        wait: Duration,
        forming: bool,
        now: Instant,
    ) -> (HandoffGate, Vec<Effect>) {
        let mut g = HandoffGate {
            me: me.to_string(),
            wait,
            state: GateState::Open,
        };
        let mut out = vec![];
        if forming {
            let deadline = now + wait;
            g.state = GateState::Forming { deadline };
            out.push(Effect::WakeAt(deadline));
        }
        (g, out)
    }

    pub fn state(&self) -> &GateState {
        &self.state
    }

    pub fn is_open(&self) -> bool {
        self.state == GateState::Open
    }

    /// When the gate opens at the latest, while it is closed.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            GateState::Open => None,
            GateState::Forming { deadline } | GateState::Waiting { deadline, .. } => {
                Some(*deadline)
            }
        }
    }

    /// The ring changed to one with `members` (after the change).
    pub fn on_ring_change(
        &mut self,
        change: &RingChange,
        members: &[String],
        now: Instant,
    ) -> Vec<Effect> {
        let mut out = vec![];
        let was_open = self.is_open();
        let running_deadline = self.deadline();
        // The members before the change: those not added, and those removed.
        let old_alone = !change.added.is_empty()
            && members
                .iter()
                .filter(|m| !change.added.contains(m))
                .chain(change.removed.iter())
                .all(|m| *m == self.me);
        let mut waiting_for = match std::mem::replace(&mut self.state, GateState::Open) {
            GateState::Waiting { waiting_for, .. } => waiting_for,
            // A forming node has seen its first ring change.
            GateState::Open | GateState::Forming { .. } => BTreeSet::new(),
        };
        let mut deadline = None;
        if old_alone {
            waiting_for.extend(change.added.iter().cloned());
            deadline = Some(now + self.wait);
        }
        for r in &change.removed {
            waiting_for.remove(r);
        }
        if waiting_for.is_empty() {
            if !was_open {
                out.push(Effect::OpenGate(Opened::Complete));
            }
        } else {
            // A new wait, or the one still running.
            let d = deadline.or(running_deadline).unwrap_or(now + self.wait);
            if deadline.is_some() {
                out.push(Effect::WakeAt(d));
            }
            if was_open {
                out.push(Effect::CloseGate);
            }
            self.state = GateState::Waiting {
                waiting_for,
                deadline: d,
            };
        }
        if !change.added.is_empty() {
            out.push(Effect::HandOver {
                to: change.added.clone(),
            });
        }
        out
    }

    /// `from` flushed what it handed over to this node.
    pub fn on_marker(&mut self, from: &str) -> Vec<Effect> {
        if let GateState::Waiting { waiting_for, .. } = &mut self.state
            && waiting_for.remove(from)
            && waiting_for.is_empty()
        {
            self.state = GateState::Open;
            return vec![Effect::OpenGate(Opened::Complete)];
        }
        vec![]
    }

    /// Time passed: a gate past its deadline opens.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        match &self.state {
            GateState::Open => vec![],
            GateState::Forming { deadline } | GateState::Waiting { deadline, .. }
                if now < *deadline =>
            {
                vec![]
            }
            GateState::Forming { .. } => {
                self.state = GateState::Open;
                vec![Effect::OpenGate(Opened::TimedOut {
                    missing: vec!["(first peers)".to_string()],
                })]
            }
            GateState::Waiting { waiting_for, .. } => {
                let missing = waiting_for.iter().cloned().collect();
                self.state = GateState::Open;
                vec![Effect::OpenGate(Opened::TimedOut { missing })]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn change(added: &[&str], removed: &[&str]) -> RingChange {
        RingChange {
            added: added.iter().map(|s| s.to_string()).collect(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
            old_version: 1,
            new_version: 2,
        }
    }

    fn members(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_not_forming_starts_open() {
        let t0 = Instant::now();
        let (g, fx) = HandoffGate::new("a", WAIT, false, t0);
        assert!(g.is_open());
        assert!(fx.is_empty());
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn join_waits_for_every_marker_then_opens() {
        let t0 = Instant::now();
        // Forming: closed until the first peers are seen.
        let (mut g, fx) = HandoffGate::new("c", WAIT, true, t0);
        assert_eq!(fx, vec![Effect::WakeAt(t0 + WAIT)]);
        assert!(!g.is_open());

        // c sees a and b join its ring (it was alone): wait for both markers.
        let t1 = t0 + ms(300);
        let fx = g.on_ring_change(&change(&["a", "b"], &[]), &members(&["a", "b", "c"]), t1);
        assert_eq!(
            fx,
            vec![
                Effect::WakeAt(t1 + WAIT),
                Effect::HandOver {
                    to: members(&["a", "b"])
                }
            ]
        );
        assert_eq!(
            g.state(),
            &GateState::Waiting {
                waiting_for: ["a", "b"].iter().map(|s| s.to_string()).collect(),
                deadline: t1 + WAIT
            }
        );
        // A tick before the deadline changes nothing.
        assert!(g.tick(t1 + ms(100)).is_empty());
        // A marker from a node not awaited changes nothing.
        assert!(g.on_marker("z").is_empty());
        assert!(g.on_marker("a").is_empty());
        assert!(!g.is_open());
        assert_eq!(g.on_marker("b"), vec![Effect::OpenGate(Opened::Complete)]);
        assert!(g.is_open());
        // A late duplicate marker and the old deadline are no-ops.
        assert!(g.on_marker("b").is_empty());
        assert!(g.tick(t1 + WAIT).is_empty());
    }

    #[test]
    fn missing_markers_are_given_up_at_the_deadline() {
        let t0 = Instant::now();
        let (mut g, _) = HandoffGate::new("c", WAIT, false, t0);
        let fx = g.on_ring_change(&change(&["a", "b"], &[]), &members(&["a", "b", "c"]), t0);
        assert_eq!(
            fx,
            vec![
                Effect::WakeAt(t0 + WAIT),
                Effect::CloseGate,
                Effect::HandOver {
                    to: members(&["a", "b"])
                }
            ]
        );
        assert!(g.on_marker("a").is_empty());
        assert!(g.tick(t0 + WAIT - ms(1)).is_empty());
        assert_eq!(
            g.tick(t0 + WAIT),
            vec![Effect::OpenGate(Opened::TimedOut {
                missing: members(&["b"])
            })]
        );
        assert!(g.is_open());
    }

    #[test]
    fn a_forming_node_opens_alone_at_its_deadline() {
        let t0 = Instant::now();
        let (mut g, _) = HandoffGate::new("a", WAIT, true, t0);
        assert_eq!(g.deadline(), Some(t0 + WAIT));
        assert!(g.tick(t0 + ms(4_999)).is_empty());
        assert_eq!(
            g.tick(t0 + WAIT),
            vec![Effect::OpenGate(Opened::TimedOut {
                missing: members(&["(first peers)"])
            })]
        );
    }

    #[test]
    fn a_member_joining_a_running_cluster_is_handed_keys_but_not_waited_for() {
        let t0 = Instant::now();
        let (mut g, _) = HandoffGate::new("a", WAIT, false, t0);
        // a and b were already together; c joins.
        let fx = g.on_ring_change(&change(&["c"], &[]), &members(&["a", "b", "c"]), t0);
        assert_eq!(
            fx,
            vec![Effect::HandOver {
                to: members(&["c"])
            }]
        );
        assert!(g.is_open());
    }

    #[test]
    fn a_peer_that_leaves_while_awaited_is_not_waited_for() {
        let t0 = Instant::now();
        let (mut g, _) = HandoffGate::new("c", WAIT, false, t0);
        g.on_ring_change(&change(&["a", "b"], &[]), &members(&["a", "b", "c"]), t0);
        assert!(g.on_marker("a").is_empty());
        // b dies before sending its marker.
        let fx = g.on_ring_change(&change(&[], &["b"]), &members(&["a", "c"]), t0 + ms(50));
        assert_eq!(fx, vec![Effect::OpenGate(Opened::Complete)]);
        assert!(g.is_open());
    }

    #[test]
    fn a_removal_keeps_the_running_wait_and_its_deadline() {
        let t0 = Instant::now();
        let (mut g, _) = HandoffGate::new("d", WAIT, false, t0);
        g.on_ring_change(
            &change(&["a", "b", "c"], &[]),
            &members(&["a", "b", "c", "d"]),
            t0,
        );
        let fx = g.on_ring_change(
            &change(&[], &["c"]),
            &members(&["a", "b", "d"]),
            t0 + ms(10),
        );
        assert!(fx.is_empty(), "{fx:?}");
        assert_eq!(g.deadline(), Some(t0 + WAIT));
        assert_eq!(
            g.tick(t0 + WAIT),
            vec![Effect::OpenGate(Opened::TimedOut {
                missing: members(&["a", "b"])
            })]
        );
    }

    #[test]
    fn a_forming_node_that_first_sees_only_removals_opens() {
        let t0 = Instant::now();
        let (mut g, _) = HandoffGate::new("a", WAIT, true, t0);
        let fx = g.on_ring_change(&change(&[], &["x"]), &members(&["a"]), t0 + ms(5));
        assert_eq!(fx, vec![Effect::OpenGate(Opened::Complete)]);
        assert!(g.is_open());
    }
}
