//! The cluster transport with real processes: `ringlimit cluster-probe` (the
//! cluster layer alone, with a handler that names the node that answered)
//! on loopback ports. Every wait polls with a deadline; no timing is asserted
//! beyond "within N seconds".
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;
use common::{COOKIE, free_port};
use ringlimit_node::cluster::Ring;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The probes' heartbeat timeout (the default): "within the timeout" below
/// means within this plus scheduling slack.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(1);
const CONVERGE: Duration = Duration::from_secs(15);

struct Probe {
    name: String,
    addr: String,
    seeds: String,
    /// Set after the defaults (TLS files, another cookie).
    env: Vec<(String, String)>,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

fn collect(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            into.lock().unwrap().push(l);
        }
    });
}

impl Probe {
    fn start(name: &str, addr: &str, seeds: &str) -> Probe {
        Probe::start_with(name, addr, seeds, Vec::new())
    }

    /// [`Probe::start`] with more environment, set after the defaults.
    fn start_with(name: &str, addr: &str, seeds: &str, env: Vec<(String, String)>) -> Probe {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringlimit"))
            .arg("cluster-probe")
            .env_clear()
            .envs(common::profile_env())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RINGLIMIT_NODE_NAME", name)
            .env("RINGLIMIT_CLUSTER_ADDR", addr)
            .env("RINGLIMIT_SEEDS", seeds)
            .env("RINGLIMIT_COOKIE", COOKIE)
            .env(
                "RINGLIMIT_LOG_LEVEL",
                "info,ractor_cluster=warn,ractor=warn",
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringlimit cluster-probe");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), out.clone());
        collect(child.stderr.take().unwrap(), err.clone());
        let stdin = child.stdin.take();
        let p = Probe {
            name: name.into(),
            addr: addr.into(),
            seeds: seeds.into(),
            env,
            child,
            stdin,
            out,
            err,
        };
        p.wait_line(Duration::from_secs(10), |l| l.starts_with("ready "));
        p
    }

    /// Starts a new process with the same name, address and seeds.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Probe::start_with(
            &self.name.clone(),
            &self.addr.clone(),
            &self.seeds.clone(),
            self.env.clone(),
        );
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.name);
    }

    fn send(&mut self, cmd: &str) {
        let s = self.stdin.as_mut().unwrap();
        writeln!(s, "{cmd}").unwrap();
        s.flush().unwrap();
    }

    fn lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// Waits for an output line matching `pred`.
    fn wait_line(&self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = ringlimit_actors::clock::monotonic() + within;
        loop {
            if let Some(l) = self.out.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            if ringlimit_actors::clock::monotonic() > deadline {
                self.dump();
                panic!("{}: no matching line within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a command and waits for the first new line starting with `prefix`.
    fn ask(&mut self, cmd: &str, prefix: &str) -> String {
        let seen = self.lines().len();
        self.send(cmd);
        let deadline = ringlimit_actors::clock::monotonic() + Duration::from_secs(10);
        loop {
            if let Some(l) = self
                .out
                .lock()
                .unwrap()
                .iter()
                .skip(seen)
                .find(|l| l.starts_with(prefix))
            {
                return l.clone();
            }
            if ringlimit_actors::clock::monotonic() > deadline {
                self.dump();
                panic!("{}: no answer to {cmd:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `ring version=V members=…` line: (V, members).
    fn ring(&self) -> Option<(u64, Vec<String>)> {
        let lines = self.out.lock().unwrap();
        let l = lines.iter().rev().find(|l| l.starts_with("ring "))?;
        let v = field(l, "version")?.parse().ok()?;
        let m = field(l, "members")?.split(',').map(String::from).collect();
        Some((v, m))
    }

    /// Whether a standard error line contains `text`.
    fn logged(&self, text: &str) -> bool {
        self.err.lock().unwrap().iter().any(|l| l.contains(text))
    }

    fn dump(&self) {
        eprintln!("---- {} stdout ----", self.name);
        for l in self.out.lock().unwrap().iter() {
            eprintln!("{l}");
        }
        eprintln!("---- {} stderr ----", self.name);
        for l in self.err.lock().unwrap().iter() {
            eprintln!("{l}");
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid()])
            .stderr(Stdio::null())
            .status();
        common::stop(&mut self.child);
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// Waits until every probe in `probes` shows a ring of exactly `members`,
/// all with the same version; returns it.
fn converge(probes: &[&Probe], members: &[&str], within: Duration) -> u64 {
    let deadline = ringlimit_actors::clock::monotonic() + within;
    loop {
        let rings: Vec<_> = probes.iter().map(|p| p.ring()).collect();
        let same = rings
            .iter()
            .all(|r| r.as_ref().is_some_and(|(_, m)| m == members));
        if same {
            let v = rings[0].as_ref().unwrap().0;
            if rings.iter().all(|r| r.as_ref().unwrap().0 == v) {
                return v;
            }
        }
        if ringlimit_actors::clock::monotonic() > deadline {
            for p in probes {
                p.dump();
            }
            panic!("no convergence on {members:?} within {within:?}: {rings:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn three() -> (Probe, Probe, Probe) {
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let seeds = addrs.join(",");
    let a = Probe::start("a", &addrs[0], &seeds);
    let b = Probe::start("b", &addrs[1], &seeds);
    let c = Probe::start("c", &addrs[2], &seeds);
    (a, b, c)
}

/// A key that `ring` gives to `owner`.
fn key_of(ring: &Ring, owner: &str, salt: &str) -> String {
    (0..)
        .map(|i| format!("{salt}-{i}"))
        .find(|k| ring.owner(k) == owner)
        .unwrap()
}

#[test]
fn three_probes_form_forward_broadcast_and_survive_a_kill() {
    let (mut a, b, mut c) = three();
    let v = converge(&[&a, &b, &c], &["a", "b", "c"], CONVERGE);
    let ring = Ring::new("a", ["b", "c"]);
    assert_eq!(
        v,
        ring.version(),
        "processes and the library agree on the version"
    );

    // Ownership agrees between the processes and the library.
    for owner in ["a", "b", "c"] {
        let k = key_of(&ring, owner, "own");
        let l = a.ask(&format!("owner {k}"), "owner ");
        assert_eq!(field(&l, "owner"), Some(owner), "{l}");
    }

    // A forwarded check reaches the owner and is answered by it.
    for owner in ["a", "b", "c"] {
        let k = key_of(&ring, owner, "fwd");
        let l = a.ask(&format!("forward {k}"), &format!("forward key={k} "));
        assert_eq!(field(&l, "owner"), Some(owner), "{l}");
        assert_eq!(field(&l, "answered_by"), Some(owner), "{l}");
    }

    // Admin events reach every peer; handoffs reach their target.
    let l = a.ask("broadcast key-9", "broadcast ");
    assert_eq!(field(&l, "delivered"), Some("b,c"), "{l}");
    b.wait_line(Duration::from_secs(5), |l| {
        l == "admin key_changed key=key-9"
    });
    c.wait_line(Duration::from_secs(5), |l| {
        l == "admin key_changed key=key-9"
    });
    let l = a.ask("handoff b", "handoff_sent ");
    assert_eq!(field(&l, "ok"), Some("true"), "{l}");
    b.wait_line(Duration::from_secs(5), |l| {
        l.starts_with("handoff from=a ring_version=")
    });

    // A quick look at forwarded latency (printed, not asserted).
    for (n, conc) in [(2_000, 1), (20_000, 64)] {
        let l = a.ask(&format!("bench b {n} {conc}"), "bench ");
        eprintln!("forwarded checks a→b (test build): {l}");
        assert_eq!(field(&l, "errors"), Some("0"), "{l}");
    }

    // SIGKILL c: a and b drop it within the heartbeat timeout + 1 s.
    let key_c = key_of(&ring, "c", "moved");
    c.signal("-KILL");
    let killed = ringlimit_actors::clock::monotonic();
    converge(&[&a, &b], &["a", "b"], HEARTBEAT_TIMEOUT + SLACK);
    eprintln!("kill noticed after {:?}", killed.elapsed());
    // Its keys are answered by their next owner.
    let new_owner = Ring::new("a", ["b"]).owner(&key_c).to_string();
    let l = a.ask(
        &format!("forward {key_c}"),
        &format!("forward key={key_c} "),
    );
    assert_eq!(field(&l, "answered_by"), Some(new_owner.as_str()), "{l}");

    // c comes back (a new life on the same address): all three converge again.
    c.restart();
    let v2 = converge(&[&a, &b, &c], &["a", "b", "c"], CONVERGE);
    assert_eq!(v2, v);
    let l = a.ask(
        &format!("forward {key_c}"),
        &format!("forward key={key_c} "),
    );
    assert_eq!(
        field(&l, "answered_by"),
        Some("c"),
        "its keys move back: {l}"
    );
}

#[test]
fn a_frozen_probe_leaves_the_ring_and_rejoins_then_one_leaves_gracefully() {
    let (a, b, mut c) = three();
    let v = converge(&[&a, &b, &c], &["a", "b", "c"], CONVERGE);

    // SIGSTOP b: a and c take it out within the timeout (+ slack).
    b.signal("-STOP");
    let stopped = ringlimit_actors::clock::monotonic();
    converge(&[&a, &c], &["a", "c"], HEARTBEAT_TIMEOUT + SLACK);
    eprintln!("frozen peer dropped after {:?}", stopped.elapsed());
    assert!(
        stopped.elapsed() >= HEARTBEAT_TIMEOUT / 2,
        "dropped too early for a heartbeat timeout"
    );
    // Its sessions were stopped (ractor_cluster would have kept them open).
    for p in [&a, &c] {
        let deadline = ringlimit_actors::clock::monotonic() + SLACK;
        while !p.err.lock().unwrap().iter().any(|l| {
            l.contains("stopping the cluster session of a peer that missed its heartbeats")
        }) {
            assert!(
                ringlimit_actors::clock::monotonic() < deadline,
                "{} did not stop b's session",
                p.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // SIGCONT: it rejoins and all three converge on the same version.
    b.signal("-CONT");
    let v2 = converge(&[&a, &b, &c], &["a", "b", "c"], CONVERGE);
    assert_eq!(v2, v);

    // A graceful leave, first half: c is out of every ring at once (no
    // timeout wait), c itself routes its keys to their new owners, and its
    // sessions stay up for handoffs.
    let ring = Ring::new("a", ["b", "c"]);
    let key_c = key_of(&ring, "c", "leaving");
    let new_owner = Ring::new("a", ["b"]).owner(&key_c).to_string();
    let announced = ringlimit_actors::clock::monotonic();
    c.ask("announce", "announced");
    converge(&[&a, &b, &c], &["a", "b"], SLACK);
    eprintln!("graceful leave seen after {:?}", announced.elapsed());
    let l = c.ask(
        &format!("forward {key_c}"),
        &format!("forward key={key_c} "),
    );
    assert_eq!(field(&l, "owner"), Some(new_owner.as_str()), "{l}");
    assert_eq!(field(&l, "answered_by"), Some(new_owner.as_str()), "{l}");
    let l = c.ask(&format!("handoff {new_owner}"), "handoff_sent ");
    assert_eq!(field(&l, "ok"), Some("true"), "{l}");
    let owner_probe = if new_owner == "a" { &a } else { &b };
    owner_probe.wait_line(Duration::from_secs(5), |l| {
        l.starts_with("handoff from=c ring_version=")
    });
    // Second half: c stops; the others' rings do not change again.
    c.send("leave");
    c.wait_line(Duration::from_secs(5), |l| l == "left");
    let deadline = ringlimit_actors::clock::monotonic() + Duration::from_secs(5);
    while c.child.try_wait().unwrap().is_none() {
        assert!(
            ringlimit_actors::clock::monotonic() < deadline,
            "c did not exit after leaving"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    converge(&[&a, &b], &["a", "b"], SLACK);
}

/// A leave is taken from the node that leaves, not from a payload: a member
/// (any holder of the cookie) that sends the others a leave naming another
/// member evicts no one. The named member is asked through its own session
/// and answers that it is not leaving.
#[test]
fn a_leave_sent_in_another_members_name_evicts_no_one() {
    let (a, b, mut c) = three();
    let v = converge(&[&a, &b, &c], &["a", "b", "c"], CONVERGE);
    let l = c.ask("forge_leave a", "forged_leave ");
    assert_eq!(field(&l, "acked"), Some("a,b"), "{l}");
    // Long enough for the forged leave to have acted (it acted at once
    // before: a was out of b's ring and stayed out).
    std::thread::sleep(HEARTBEAT_TIMEOUT);
    for p in [&a, &b, &c] {
        assert_eq!(
            p.ring(),
            Some((v, vec!["a".into(), "b".into(), "c".into()])),
            "{}'s ring is unchanged",
            p.name
        );
    }
    // A real leave still works: c announces it and the others drop it.
    c.ask("announce", "announced");
    converge(&[&a, &b], &["a", "b"], SLACK);
}

// ---- Mutual TLS between nodes ----

/// Every TLS test's cookie (at least 32 characters).
const TLS_COOKIE: &str = "tls-test-cookie-0123456789abcdefghij";

/// A certificate authority made for one test.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// Writes a certificate for node `name` (valid for `localhost` and
    /// 127.0.0.1, for server and client use) signed by this CA, its key,
    /// and the CA certificate `trust` into `dir`; returns the probe
    /// environment that uses them.
    fn node_env(&self, dir: &std::path::Path, name: &str, trust: &Ca) -> Vec<(String, String)> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let ca_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&ca_path, &trust.pem).unwrap();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        vec![
            ("RINGLIMIT_COOKIE".into(), TLS_COOKIE.into()),
            ("RINGLIMIT_CLUSTER_TLS_CERT".into(), path(&cert_path)),
            ("RINGLIMIT_CLUSTER_TLS_KEY".into(), path(&key_path)),
            ("RINGLIMIT_CLUSTER_TLS_CA".into(), path(&ca_path)),
        ]
    }
}

fn loopback() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Asks `p` for its member list a few times over `span` (a bounded wait for
/// "never") and fails if `outsider` ever shows in it or in its ring.
fn never_member(p: &mut Probe, outsider: &str, span: Duration) {
    let deadline = ringlimit_actors::clock::monotonic() + span;
    let prefix = format!("{outsider}:");
    loop {
        let l = p.ask("members", "members ");
        let listed = field(&format!("m={}", l.trim_start_matches("members ")), "m")
            .unwrap_or("")
            .split(',')
            .any(|m| m.starts_with(&prefix));
        assert!(!listed, "{outsider} joined {}: {l}", p.name);
        let ring = p.ring().map(|(_, m)| m).unwrap_or_default();
        assert!(
            !ring.iter().any(|m| m == outsider),
            "{outsider} is in {}'s ring: {ring:?}",
            p.name
        );
        if ringlimit_actors::clock::monotonic() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `p` logged `text` on standard error.
fn wait_logged(p: &Probe, text: &str, within: Duration) {
    let deadline = ringlimit_actors::clock::monotonic() + within;
    while !p.logged(text) {
        if ringlimit_actors::clock::monotonic() > deadline {
            p.dump();
            panic!("{}: never logged {text:?} within {within:?}", p.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two nodes with certificates of one CA form a cluster and forward checks
/// to each other. A connection that never starts its TLS handshake does not
/// keep the listener from accepting the second node.
#[test]
fn two_tls_nodes_of_one_ca_form_a_cluster_and_forward() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ringlimit test CA");
    let (addr_a, addr_b) = (loopback(), loopback());
    // a dials no one: b reaches it only through a's listener.
    let a = Probe::start_with("a", &addr_a, "", ca.node_env(dir.path(), "a", &ca));
    let idle = std::net::TcpStream::connect(&addr_a).unwrap();
    let b = Probe::start_with("b", &addr_b, &addr_a, ca.node_env(dir.path(), "b", &ca));
    converge(&[&a, &b], &["a", "b"], CONVERGE);
    drop(idle);
    for p in [&a, &b] {
        assert!(
            !p.logged("clustering without TLS"),
            "{} warned of plaintext",
            p.name
        );
    }
    let ring = Ring::new("a", ["b"]);
    let mut a = a;
    let mut b = b;
    for owner in ["a", "b"] {
        let k = key_of(&ring, owner, "tls");
        for p in [&mut a, &mut b] {
            let l = p.ask(&format!("forward {k}"), &format!("forward key={k} "));
            assert_eq!(field(&l, "owner"), Some(owner), "{l}");
            assert_eq!(field(&l, "answered_by"), Some(owner), "{l}");
        }
    }
}

/// A node whose certificate another CA signed cannot join, even though it
/// trusts the cluster's CA (so it accepts the members' certificates): the
/// members refuse its certificate, and never list it.
#[test]
fn a_node_with_a_certificate_of_another_ca_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ringlimit test CA");
    let rogue = Ca::new("another CA");
    let (addr_a, addr_b, addr_c) = (loopback(), loopback(), loopback());
    let seeds = format!("{addr_a},{addr_b}");
    let mut a = Probe::start_with("a", &addr_a, &seeds, ca.node_env(dir.path(), "a", &ca));
    let b = Probe::start_with("b", &addr_b, &seeds, ca.node_env(dir.path(), "b", &ca));
    converge(&[&a, &b], &["a", "b"], CONVERGE);
    let c = Probe::start_with(
        "c",
        &addr_c,
        &format!("{seeds},{addr_c}"),
        rogue.node_env(dir.path(), "c", &ca),
    );
    // c did try: a refused its handshake.
    wait_logged(&a, "cluster TLS handshake refused", CONVERGE);
    never_member(&mut a, "c", HEARTBEAT_TIMEOUT * 2 + SLACK);
    assert_eq!(c.ring().map(|(_, m)| m), Some(vec!["c".to_string()]));
    assert_eq!(
        b.ring().map(|(_, m)| m),
        Some(vec!["a".to_string(), "b".to_string()])
    );
}

/// A node without TLS (same cookie) cannot talk to a TLS node: its
/// plaintext handshake is refused, and neither lists the other.
#[test]
fn a_plaintext_node_cannot_talk_to_a_tls_node() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ringlimit test CA");
    let (addr_a, addr_d) = (loopback(), loopback());
    let mut a = Probe::start_with("a", &addr_a, "", ca.node_env(dir.path(), "a", &ca));
    let mut d = Probe::start_with(
        "d",
        &addr_d,
        &addr_a,
        vec![("RINGLIMIT_COOKIE".into(), TLS_COOKIE.into())],
    );
    assert!(
        d.logged("clustering without TLS"),
        "the plaintext node warns"
    );
    wait_logged(&a, "cluster TLS handshake refused", CONVERGE);
    never_member(&mut a, "d", HEARTBEAT_TIMEOUT * 2 + SLACK);
    never_member(&mut d, "a", Duration::ZERO);
}
