//! `ringlimit cluster-probe` (hidden): the cluster layer alone, with a
//! trivial handler, for multi-process tests and measurements.
//!
//! Settings come from the global flags or the environment of DESIGN.md §4a
//! (`--node-name`/`RINGLIMIT_NODE_NAME`, `--cluster-addr`/`RINGLIMIT_CLUSTER_ADDR`,
//! `--seeds`/`RINGLIMIT_SEEDS`, `--cookie`/`RINGLIMIT_COOKIE`, and the
//! cluster TLS files `--cluster-tls-cert`/`RINGLIMIT_CLUSTER_TLS_CERT`,
//! `…-key`, `…-ca`, `…-server-name`) plus the probe's own timing flags. The handler answers every forwarded check with status
//! 200 and a body whose `tier` is this node's name.
//!
//! Standard output, one line per fact:
//! - `ready name=N addr=A incarnation=I`
//! - `ring version=V members=a,b,c` (at start and on every change)
//! - `admin key_changed key=K` / `admin tier_changed name=T` (received)
//! - `handoff from=N ring_version=V` (a marker received)
//!
//! Standard input, one command per line (the process exits on end of input):
//! - `ring`, `members`
//! - `owner KEY` → `owner key=K owner=O version=V`
//! - `forward KEY` → `forward key=K owner=O answered_by=N us=T` (or `error=…`);
//!   a `NotOwner` answer is retried once with this node's ring, as the service does
//! - `broadcast KEY` → `broadcast delivered=a,b failed=c`
//! - `handoff PEER` → `handoff_sent to=P ok=true|error=…`
//! - `bench PEER N C` → N checks forwarded to PEER by C concurrent callers →
//!   `bench peer=P n=N c=C ok=.. errors=.. p50_us=.. p99_us=.. per_sec=..`
//! - `forge_leave NAME` → sends every peer a leave that claims to come from
//!   NAME (what a cookie holder could try), `forged_leave victim=NAME acked=…`
//! - `announce` → first half of a graceful leave (peers drop this node, it
//!   forwards everything), `announced`
//! - `leave` → graceful leave, `left`, exit.

use super::Cluster;
use super::config::ClusterConfig;
use super::messages::{ClusterHandler, HandlerError};
use super::ring::{Ring, RingChange};
use super::tls::{self, TlsFiles};
use crate::cli::{Flags, ProbeArgs};
use ringlimit_actors::clock;
use ringlimit_protocol::cluster::{
    AdminEvent, ForwardBatch, ForwardCheck, ForwardOutcome, ForwardReply, Handoff,
};
use ringlimit_protocol::validate::{Checked, ValidateOutcome};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Lines to standard output, whole and flushed.
#[derive(Debug, Clone, Default)]
struct Out;

impl Out {
    fn line(&self, s: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    }
}

struct ProbeHandler {
    name: String,
    out: Out,
}

#[async_trait::async_trait]
impl ClusterHandler for ProbeHandler {
    async fn check_batch(&self, batch: ForwardBatch) -> ForwardReply {
        ForwardReply {
            results: batch
                .checks
                .into_iter()
                .map(|c| {
                    ForwardOutcome::Decided(ValidateOutcome::Allowed(Checked {
                        key_id: c.key_id.into(),
                        tier: self.name.as_str().into(),
                        limits: Vec::new(),
                        retry_after_ms: None,
                        denied_by: None,
                    }))
                })
                .collect(),
        }
    }

    async fn admin_event(&self, ev: AdminEvent) -> Result<(), HandlerError> {
        match ev {
            AdminEvent::KeyChanged { key_id } => {
                self.out.line(&format!("admin key_changed key={key_id}"))
            }
            AdminEvent::TierChanged { name } => {
                self.out.line(&format!("admin tier_changed name={name}"))
            }
            AdminEvent::BlocksChanged {} => self.out.line("admin blocks_changed"),
            AdminEvent::AbuseRulesChanged { .. } => self.out.line("admin abuse_rules_changed"),
        }
        Ok(())
    }

    async fn handoff(&self, h: Handoff) -> Result<(), HandlerError> {
        self.out.line(&format!(
            "handoff from={} ring_version={}",
            h.from, h.ring_version
        ));
        Ok(())
    }

    fn on_ring_change(&self, _change: &RingChange, ring: &Arc<Ring>) {
        self.out.line(&format!("ring {}", ring.describe()));
    }
}

fn config(
    flags: &Flags,
    args: &ProbeArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ClusterConfig, String> {
    let pick = |flag: &Option<String>, var: &str| {
        flag.clone().or_else(|| env(var)).filter(|s| !s.is_empty())
    };
    let name = pick(&flags.node_name, "RINGLIMIT_NODE_NAME")
        .ok_or("--node-name (RINGLIMIT_NODE_NAME) is required")?;
    let addr = pick(&flags.cluster_addr, "RINGLIMIT_CLUSTER_ADDR")
        .ok_or("--cluster-addr (RINGLIMIT_CLUSTER_ADDR) is required")?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("cluster address {addr}: {e}"))?;
    let seeds = pick(&flags.seeds, "RINGLIMIT_SEEDS")
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let cookie =
        pick(&flags.cookie, "RINGLIMIT_COOKIE").ok_or("--cookie (RINGLIMIT_COOKIE) is required")?;
    let mut cfg = ClusterConfig::new(name, addr, cookie, seeds);
    cfg.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    cfg.heartbeat_timeout = Duration::from_millis(args.heartbeat_timeout_ms);
    cfg.forward_timeout = Duration::from_millis(args.forward_timeout_ms);
    cfg.check_timeout = cfg.forward_timeout;
    cfg.max_in_flight_batches = args.max_in_flight_batches;
    cfg.advertise_addr = args.advertise.clone();
    let path = |flag: &Option<PathBuf>, var: &str| {
        flag.clone()
            .or_else(|| env(var).map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty())
    };
    cfg.tls = TlsFiles::from_settings(
        path(&flags.cluster_tls_cert, tls::ENV_CERT),
        path(&flags.cluster_tls_key, tls::ENV_KEY),
        path(&flags.cluster_tls_ca, tls::ENV_CA),
        pick(&flags.cluster_tls_server_name, tls::ENV_SERVER_NAME),
    )
    .map_err(|(_, message)| message)?;
    if cfg.tls.is_none() {
        tracing::warn!("clustering without TLS: node-to-node traffic is plaintext");
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Runs the probe until end of input, `leave`, or SIGTERM.
pub fn main(flags: &Flags, args: &ProbeArgs) -> ExitCode {
    let level = flags
        .log_level
        .clone()
        .or_else(|| std::env::var("RINGLIMIT_LOG_LEVEL").ok())
        .unwrap_or_else(|| "info,ractor_cluster=warn,ractor=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = match config(flags, args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringlimit cluster-probe: {e}");
            return ExitCode::from(64);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringlimit cluster-probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cfg, args.probe_key.clone()))
}

fn check(key: &str, id: u64) -> ForwardCheck {
    ForwardCheck {
        id,
        key_id: key.to_string(),
        secret_hash: [0; 32],
        cost: 1,
        now_us: clock::wall_us(),
        resource: None,
        client_ip: None,
    }
}

/// Routes a check as the service will: to the owner by this ring, retried
/// once on `NotOwner`. Returns (owner, answered_by or error).
async fn route(cluster: &Cluster, key: &str) -> (String, Result<String, String>) {
    let mut owner = cluster.ring().owner(key).to_string();
    for attempt in 0..2 {
        if owner == cluster.node_name() {
            return (owner.clone(), Ok(owner));
        }
        match cluster.forward(&owner, check(key, attempt)).await {
            // Every probe admits and names itself as the tier; any other
            // answer (say, an internal error) did not come from a probe's handler.
            Ok(ForwardOutcome::Decided(ValidateOutcome::Allowed(c))) => {
                return (owner, Ok(c.tier.into()));
            }
            Ok(ForwardOutcome::Decided(other)) => {
                return (
                    owner,
                    Err(format!("answer_without_tier outcome={}", other.label())),
                );
            }
            Ok(ForwardOutcome::NotOwner { ring_version }) => {
                let ring = cluster.ring();
                let next = ring.owner(key).to_string();
                if next == owner {
                    return (
                        owner,
                        Err(format!(
                            "not_owner their_version={ring_version} our_version={}",
                            ring.version()
                        )),
                    );
                }
                owner = next;
            }
            Err(e) => return (owner, Err(e.to_string().replace(' ', "_"))),
        }
    }
    (owner, Err("not_owner_twice".into()))
}

async fn bench(cluster: &Arc<Cluster>, peer: &str, n: usize, c: usize) -> String {
    let ring = cluster.ring();
    let keys: Arc<Vec<String>> = Arc::new(
        (0..100_000)
            .map(|i| format!("bench-{i}"))
            .filter(|k| ring.owner(k) == peer)
            .take(1024)
            .collect(),
    );
    if keys.is_empty() {
        return format!("bench peer={peer} error=owns_no_keys");
    }
    let c = c.max(1);
    let started = clock::monotonic();
    let mut tasks = Vec::new();
    for t in 0..c {
        let cluster = cluster.clone();
        let keys = keys.clone();
        let peer = peer.to_string();
        let per = n / c + usize::from(t < n % c);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            let mut errors = 0usize;
            for i in 0..per {
                let k = &keys[(t * 7919 + i) % keys.len()];
                let s = clock::monotonic();
                match cluster.forward(&peer, check(k, i as u64)).await {
                    Ok(ForwardOutcome::Decided(_)) => lat.push(s.elapsed().as_micros() as u64),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    format!(
        "bench peer={peer} n={n} c={c} ok={} errors={errors} p50_us={} p99_us={} per_sec={:.0}",
        lat.len(),
        pct(0.50),
        pct(0.99),
        lat.len() as f64 / secs
    )
}

async fn run(cfg: ClusterConfig, probe_key: Option<String>) -> ExitCode {
    let out = Out;
    let name = cfg.node_name.clone();
    let handler = Arc::new(ProbeHandler {
        name: name.clone(),
        out: out.clone(),
    });
    let cluster = match Cluster::start(cfg, handler).await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("ringlimit cluster-probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    out.line(&format!(
        "ready name={name} addr={} incarnation={}",
        cluster.advertised_addr(),
        cluster.incarnation()
    ));
    out.line(&format!("ring {}", cluster.ring().describe()));

    if let Some(key) = probe_key {
        let cluster = cluster.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                let (owner, r) = route(&cluster, &key).await;
                match r {
                    Ok(by) => out.line(&format!("probe key={key} owner={owner} answered_by={by}")),
                    Err(e) => out.line(&format!("probe key={key} owner={owner} error={e}")),
                }
            }
        });
    }

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringlimit cluster-probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Standard input is read by a thread (blocking reads), line by line.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::stdin().lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    loop {
        let line = tokio::select! {
            l = lines.recv() => l,
            _ = term.recv() => {
                cluster.leave().await;
                out.line("left");
                return ExitCode::SUCCESS;
            }
        };
        let Some(line) = line else {
            return ExitCode::SUCCESS;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ring"] => out.line(&format!("ring {}", cluster.ring().describe())),
            ["members"] => {
                let m: Vec<String> = cluster
                    .members()
                    .iter()
                    .map(|m| {
                        format!(
                            "{}:{}:{}",
                            m.name,
                            m.state.as_str(),
                            m.last_heartbeat_ms_ago
                                .map_or("-".into(), |x| x.to_string())
                        )
                    })
                    .collect();
                out.line(&format!("members {}", m.join(",")));
            }
            ["owner", key] => {
                let r = cluster.ring();
                out.line(&format!(
                    "owner key={key} owner={} version={}",
                    r.owner(key),
                    r.version()
                ));
            }
            ["forward", key] => {
                let s = clock::monotonic();
                let (owner, r) = route(&cluster, key).await;
                let us = s.elapsed().as_micros();
                match r {
                    Ok(by) => out.line(&format!(
                        "forward key={key} owner={owner} answered_by={by} us={us}"
                    )),
                    Err(e) => out.line(&format!("forward key={key} owner={owner} error={e}")),
                }
            }
            ["broadcast", key] => {
                let rep = cluster
                    .broadcast(AdminEvent::KeyChanged {
                        key_id: key.to_string(),
                    })
                    .await;
                let failed: Vec<String> = rep.failed.iter().map(|(n, _)| n.clone()).collect();
                out.line(&format!(
                    "broadcast delivered={} failed={}",
                    rep.delivered.join(","),
                    failed.join(",")
                ));
            }
            ["handoff", peer] => {
                let h = Handoff {
                    from: name.clone(),
                    ring_version: cluster.ring().version(),
                };
                match cluster.send_handoff(peer, h).await {
                    Ok(()) => out.line(&format!("handoff_sent to={peer} ok=true")),
                    Err(e) => out.line(&format!(
                        "handoff_sent to={peer} error={}",
                        e.to_string().replace(' ', "_")
                    )),
                }
            }
            ["bench", peer, n, c] => {
                let (Ok(n), Ok(c)) = (n.parse::<usize>(), c.parse::<usize>()) else {
                    out.line("error usage=bench_PEER_N_C");
                    continue;
                };
                out.line(&bench(&cluster, peer, n, c).await);
            }
            ["forge_leave", victim] => {
                let acked = cluster.send_leave_as(victim).await;
                out.line(&format!(
                    "forged_leave victim={victim} acked={}",
                    acked.join(",")
                ));
            }
            ["announce"] => {
                cluster.announce_leave().await;
                out.line("announced");
            }
            ["leave"] => {
                cluster.leave().await;
                out.line("left");
                return ExitCode::SUCCESS;
            }
            [] => {}
            _ => out.line(&format!("error unknown_command={}", line.replace(' ', "_"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_environment() {
        let env = |k: &str| match k {
            "RINGLIMIT_NODE_NAME" => Some("n1".to_string()),
            "RINGLIMIT_CLUSTER_ADDR" => Some("127.0.0.1:7100".to_string()),
            "RINGLIMIT_SEEDS" => Some("127.0.0.1:7101, 127.0.0.1:7102,".to_string()),
            "RINGLIMIT_COOKIE" => Some("probe-test-cluster-cookie-0123456789".to_string()),
            _ => None,
        };
        let args = ProbeArgs {
            heartbeat_ms: 100,
            heartbeat_timeout_ms: 400,
            forward_timeout_ms: 300,
            max_in_flight_batches: 2,
            advertise: None,
            probe_key: None,
        };
        let c = config(&Flags::default(), &args, &env).expect("valid");
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.seeds, ["127.0.0.1:7101", "127.0.0.1:7102"]);
        assert_eq!(c.cookie, "probe-test-cluster-cookie-0123456789");
        assert_eq!(c.heartbeat_timeout, Duration::from_millis(400));
        assert!(config(&Flags::default(), &args, &|_| None).is_err());
        // No cookie, or a short one: refused, naming the cookie but not its value.
        let without = |k: &str| (k != "RINGLIMIT_COOKIE").then(|| env(k)).flatten();
        let e = config(&Flags::default(), &args, &without).unwrap_err();
        assert!(e.contains("RINGLIMIT_COOKIE"), "{e}");
        let short = |k: &str| match k {
            "RINGLIMIT_COOKIE" => Some("short-cookie".to_string()),
            _ => env(k),
        };
        let e = config(&Flags::default(), &args, &short).unwrap_err();
        assert!(
            e.contains("RINGLIMIT_COOKIE") && !e.contains("short-cookie"),
            "{e}"
        );
    }
}
