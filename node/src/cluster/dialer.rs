//! Whom to dial, and when: a pure state machine with exponential back-off.
//!
//! ractor_cluster does not reconnect, so this node keeps a list of targets:
//! the configured seeds (addresses, names unknown until a session to them
//! authenticates) and the peers it learned of (from a peer's `Hello`, its
//! heartbeats' gossip, or a session's handshake). The driver asks
//! [`Dialer::due`] on every tick which addresses to dial now; a named target
//! is dialed only while the caller says so (not connected, not left). Each
//! attempt, successful at the TCP level or not, pushes the next one back
//! (`initial · 2^(n-1)`, capped at `max`), because a TCP connect to a frozen
//! process succeeds (the kernel accepts into the backlog) and only the
//! handshake timeout tells it failed. An authenticated session resets the
//! back-off.

use std::time::Duration;
use tokio::time::Instant;

/// Back-off between attempts to one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The wait after the `attempt`-th consecutive attempt (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// One address this node dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As configured or advertised (`host:port`).
    pub addr: String,
    /// The node there, once known.
    pub name: Option<String>,
    /// A configured seed (kept even if a peer advertises another address).
    pub seed: bool,
    /// The socket address the last attempt resolved to.
    pub resolved: Option<String>,
    attempt: u32,
    next_at: Option<Instant>,
    in_flight: bool,
}

/// The targets of one node.
#[derive(Debug)]
pub struct Dialer {
    backoff: Backoff,
    local: String,
    targets: Vec<Target>,
}

impl Dialer {
    pub fn new(local: &str, seeds: &[String], backoff: Backoff) -> Dialer {
        let mut d = Dialer {
            backoff,
            local: local.to_string(),
            targets: Vec::new(),
        };
        for s in seeds {
            if !d.targets.iter().any(|t| &t.addr == s) {
                d.targets.push(Target {
                    addr: s.clone(),
                    name: None,
                    seed: true,
                    resolved: None,
                    attempt: 0,
                    next_at: None,
                    in_flight: false,
                });
            }
        }
        d
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// `name` is reachable at `addr` (from a `Hello`, gossip or a handshake).
    pub fn learn(&mut self, name: &str, addr: &str) {
        if name == self.local || addr.is_empty() {
            return;
        }
        if self
            .targets
            .iter()
            .any(|t| t.name.as_deref() == Some(name) && t.addr == addr)
        {
            return;
        }
        if let Some(t) = self
            .targets
            .iter_mut()
            .find(|t| t.name.is_none() && t.addr == addr)
        {
            t.name = Some(name.to_string());
            return;
        }
        if let Some(t) = self
            .targets
            .iter_mut()
            .find(|t| t.name.as_deref() == Some(name) && !t.seed)
        {
            // The peer moved: dial its new address.
            t.addr = addr.to_string();
            t.resolved = None;
            return;
        }
        self.targets.push(Target {
            addr: addr.to_string(),
            name: Some(name.to_string()),
            seed: false,
            resolved: None,
            attempt: 0,
            next_at: None,
            in_flight: false,
        });
    }

    /// An outgoing session to socket address `peer_addr` authenticated as
    /// `name`: names the seed dialed there, and resets that name's back-off.
    pub fn connected(&mut self, name: &str, peer_addr: Option<&str>, now: Instant) {
        if let Some(pa) = peer_addr
            && let Some(t) = self
                .targets
                .iter_mut()
                .find(|t| t.name.is_none() && (t.resolved.as_deref() == Some(pa) || t.addr == pa))
        {
            if name == self.local {
                // A seed that is this node.
                let addr = t.addr.clone();
                self.forget(&addr);
                return;
            }
            t.name = Some(name.to_string());
        }
        for t in self
            .targets
            .iter_mut()
            .filter(|t| t.name.as_deref() == Some(name))
        {
            t.attempt = 0;
            // Not immediately: a peer that drops right after the handshake is
            // not redialed in a tight loop.
            t.next_at = Some(now + self.backoff.initial);
        }
    }

    /// Drops a target (a seed that turned out to be this node).
    pub fn forget(&mut self, addr: &str) {
        self.targets.retain(|t| t.addr != addr);
    }

    /// The addresses to dial now; they are marked in flight until
    /// [`Dialer::attempted`]. `wanted(name)` says whether a named target
    /// needs a connection (not connected, not gone for good).
    pub fn due(&mut self, now: Instant, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for t in &mut self.targets {
            if t.in_flight || t.next_at.is_some_and(|at| now < at) {
                continue;
            }
            if let Some(n) = &t.name
                && !wanted(n)
            {
                continue;
            }
            t.in_flight = true;
            out.push(t.addr.clone());
        }
        out
    }

    /// The TCP part of an attempt to `addr` ended (it resolved to `resolved`,
    /// if it did). Either way the next attempt waits for the back-off; a
    /// session that authenticates resets it through [`Dialer::connected`].
    pub fn attempted(&mut self, addr: &str, resolved: Option<String>, now: Instant) {
        let backoff = self.backoff;
        if let Some(t) = self.targets.iter_mut().find(|t| t.addr == addr) {
            t.in_flight = false;
            if resolved.is_some() {
                t.resolved = resolved;
            }
            t.attempt = t.attempt.saturating_add(1);
            t.next_at = Some(now + backoff.delay(t.attempt));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let d: Vec<u64> = (1..=7).map(|a| b.delay(a).as_millis() as u64).collect();
        assert_eq!(d, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.delay(u32::MAX), ms(2000));
    }

    #[test]
    fn seeds_are_dialed_at_once_then_backed_off() {
        let t0 = Instant::now();
        let mut d = Dialer::new(
            "a",
            &["h:1".into(), "h:2".into(), "h:1".into()],
            Backoff::default(),
        );
        assert_eq!(d.targets().len(), 2);
        assert_eq!(d.due(t0, |_| true), ["h:1", "h:2"]);
        // In flight: not again.
        assert!(d.due(t0, |_| true).is_empty());
        d.attempted("h:1", None, t0);
        assert!(d.due(t0 + ms(99), |_| true).is_empty());
        assert_eq!(d.due(t0 + ms(100), |_| true), ["h:1"]);
        d.attempted("h:1", Some("127.0.0.1:1".into()), t0 + ms(100));
        assert!(d.due(t0 + ms(299), |_| true).is_empty());
        assert_eq!(d.due(t0 + ms(300), |_| true), ["h:1"]);
    }

    #[test]
    fn a_named_target_is_dialed_only_when_wanted_and_resets_on_connect() {
        let t0 = Instant::now();
        let mut d = Dialer::new("a", &["h:1".into()], Backoff::default());
        assert_eq!(d.due(t0, |_| true), ["h:1"]);
        d.attempted("h:1", Some("127.0.0.1:1".into()), t0);
        d.connected("b", Some("127.0.0.1:1"), t0);
        assert_eq!(d.targets()[0].name.as_deref(), Some("b"));
        // Connected: not wanted.
        assert!(d.due(t0 + ms(10_000), |n| n != "b").is_empty());
        // Dropped: redialed after the initial back-off only.
        assert!(d.due(t0 + ms(50), |_| true).is_empty());
        assert_eq!(d.due(t0 + ms(100), |_| true), ["h:1"]);
    }

    #[test]
    fn learned_peers_are_added_once_and_moves_followed() {
        let mut d = Dialer::new("a", &["h:1".into()], Backoff::default());
        d.learn("a", "h:0");
        assert_eq!(d.targets().len(), 1, "never dial ourselves");
        d.learn("b", "h:1");
        assert_eq!(d.targets().len(), 1);
        assert_eq!(d.targets()[0].name.as_deref(), Some("b"));
        d.learn("c", "h:3");
        d.learn("c", "h:3");
        assert_eq!(d.targets().len(), 2);
        d.learn("c", "h:4");
        assert_eq!(d.targets().len(), 2);
        assert_eq!(d.targets()[1].addr, "h:4");
        // A seed keeps its address; the new one is added.
        d.learn("b", "h:9");
        assert_eq!(d.targets().len(), 3);
    }

    #[test]
    fn a_seed_that_is_this_node_is_forgotten() {
        let t0 = Instant::now();
        let mut d = Dialer::new("a", &["h:0".into(), "h:1".into()], Backoff::default());
        d.due(t0, |_| true);
        d.attempted("h:0", Some("127.0.0.1:0".into()), t0);
        d.connected("a", Some("127.0.0.1:0"), t0);
        assert_eq!(d.targets().len(), 1);
        assert_eq!(d.targets()[0].addr, "h:1");
    }
}
