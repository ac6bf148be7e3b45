//! The harness's private network: one namespace per node, all joined by
//! veth pairs to a bridge in a namespace of its own, and one veth from the
//! harness's own namespace to that bridge.
//!
//! ```text
//!   harness (host ns) 10.A.B.254 ──┐
//!   node n0 (ns …-n0) 10.A.B.1   ──┤ br0 (ns …-br)
//!   node n1 (ns …-n1) 10.A.B.2   ──┤
//!   …                                ┘
//! ```
//!
//! Every name carries the harness's pid (`rlc<pid>…`), so two harnesses never
//! collide and [`sweep_stale`] can remove what a killed harness left behind.
//! Partitions are routes: a `blackhole` route in a node's namespace drops
//! what it sends to one peer (the kernel has no netem). The loopback of a
//! node namespace is its own, so the backends on the host's loopback are
//! reached through [`crate::relay`] on the host's address.

use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

/// Prefix of every namespace and interface the harness creates.
pub const PREFIX: &str = "rlc";

/// Runs `ip` with `args`; fails with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (Debian: apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip` that may fail (teardown of what may already be gone).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// The namespaces `ip netns list` shows.
pub fn namespaces() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The pid in a name made by [`Net`] (`rlc<pid>-…` or `rlc<pid>h`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes the namespaces and host interfaces of harnesses that are gone
/// (killed before their teardown ran). Returns what it deleted.
pub fn sweep_stale() -> Vec<String> {
    let mut gone = Vec::new();
    for ns in namespaces() {
        if owner_pid(&ns).is_some_and(|p| !alive(p)) {
            ip_quiet(&["netns", "del", &ns]);
            gone.push(ns);
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if owner_pid(name).is_some_and(|p| !alive(p)) {
                ip_quiet(&["link", "del", name]);
                gone.push(name.to_owned());
            }
        }
    }
    gone
}

/// The network of one harness run.
#[derive(Debug)]
pub struct Net {
    tag: String,
    subnet: (u8, u8),
    nodes: usize,
    /// Blackholes in force: (from node, to node).
    cuts: BTreeSet<(usize, usize)>,
    torn_down: bool,
}

impl Net {
    /// Creates the bridge, `nodes` node namespaces and the host link.
    pub fn create(nodes: usize) -> Result<Net> {
        if nodes == 0 || nodes > 200 {
            bail!("between 1 and 200 nodes");
        }
        let pid = std::process::id();
        // One /24 per harness, 10.<pid / 256 % 256>.<pid % 256>.0/24:
        // distinct for concurrent harnesses (pids below 65 536 apart).
        let subnet = (
            u8::try_from(pid / 256 % 256).unwrap_or(0),
            u8::try_from(pid % 256).unwrap_or(0),
        );
        let mut net = Net {
            tag: format!("{PREFIX}{pid}"),
            subnet,
            nodes,
            cuts: BTreeSet::new(),
            torn_down: false,
        };
        // On failure half-way, Drop removes what exists.
        net.build()?;
        Ok(net)
    }

    fn build(&mut self) -> Result<()> {
        let br = self.bridge_ns();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes {
            let ns = self.node_ns(i);
            let v = format!("{}v{i}", self.tag);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &v, "netns", &br])?;
            ip(&["-n", &br, "link", "set", &v, "master", "br0", "up"])?;
            let addr = format!("{}/24", self.node_ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let h = self.host_if();
        let hb = format!("{}hb", self.tag);
        ip(&[
            "link", "add", &h, "type", "veth", "peer", "name", &hb, "netns", &br,
        ])?;
        ip(&["-n", &br, "link", "set", &hb, "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", self.host_ip()), "dev", &h])?;
        ip(&["link", "set", &h, "up"])?;
        Ok(())
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.tag)
    }

    fn host_if(&self) -> String {
        format!("{}h", self.tag)
    }

    /// The namespace of node `i`.
    pub fn node_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.tag)
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            10,
            self.subnet.0,
            self.subnet.1,
            u8::try_from(i + 1).unwrap_or(u8::MAX),
        )
    }

    /// The harness's address on the bridge (where the backends' relays listen).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, 254)
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Node `from` can no longer send to node `to` (one direction).
    pub fn cut(&mut self, from: usize, to: usize) -> Result<()> {
        let dst = format!("{}/32", self.node_ip(to));
        ip(&["-n", &self.node_ns(from), "route", "add", "blackhole", &dst])?;
        self.cuts.insert((from, to));
        Ok(())
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) -> Result<()> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<()> {
        for (from, to) in std::mem::take(&mut self.cuts) {
            let dst = format!("{}/32", self.node_ip(to));
            ip(&["-n", &self.node_ns(from), "route", "del", "blackhole", &dst])?;
        }
        Ok(())
    }

    /// Deletes everything [`Net::create`] made. Idempotent.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        ip_quiet(&["link", "del", &self.host_if()]);
        for i in 0..self.nodes {
            ip_quiet(&["netns", "del", &self.node_ns(i)]);
        }
        ip_quiet(&["netns", "del", &self.bridge_ns()]);
    }

    /// Whether anything of this run is still listed by `ip netns list`.
    pub fn leftovers(&self) -> Vec<String> {
        namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.tag)))
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_owner_pid() {
        assert_eq!(owner_pid("rlc1234-n0"), Some(1234));
        assert_eq!(owner_pid("rlc1234h"), Some(1234));
        assert_eq!(owner_pid("rlc1234v2"), Some(1234));
        assert_eq!(owner_pid("rlc-x"), None);
        assert_eq!(owner_pid("other1234"), None);
    }
}
