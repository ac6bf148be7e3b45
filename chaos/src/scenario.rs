//! One scenario: a cluster in its namespaces, steady load on keys with an
//! exact limit, one fault, recovery, and the accounts.

use crate::accounts::{self, OverAdmission, Phase};
use crate::backends::Started;
use crate::cluster::{Cluster, Spec};
use crate::net::Net;
use crate::relay::Relay;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use ringlimit_loadtest::checker::Admission;
use ringlimit_loadtest::http::Target;
use ringlimit_loadtest::protocol::{self, System, Wire};
use ringlimit_loadtest::runner::{self, Mode, Picker, RunConfig, TimelinePoint};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The faults, one per scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL of the owner of a loaded key; restarted after the fault time.
    KillOwner,
    /// SIGSTOP of the owner of a loaded key for the fault time, then SIGCONT.
    Stop,
    /// A symmetric partition: the owner of a loaded key | the other nodes.
    Partition,
    /// The owner of a loaded key reaches another node, which does not reach it.
    Asymmetric,
    /// SIGTERM, start, wait ready, for every node in turn.
    RollingRestart,
    /// A node joins under load.
    Join,
    /// A node is drained under load (`POST /api/v1/cluster/drain`); it stays
    /// up out of the ring and forwards what clients still send it.
    Drain,
    /// Redis (the live counters' store) SIGKILLed for the fault time, then
    /// started again, empty (no persistence).
    RedisRestart,
    /// The CQL server (keys, tiers, usage) SIGKILLed for the fault time,
    /// then started again on its data.
    CqlRestart,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::KillOwner,
        Scenario::Stop,
        Scenario::Partition,
        Scenario::Asymmetric,
        Scenario::RollingRestart,
        Scenario::Join,
        Scenario::Drain,
        Scenario::RedisRestart,
        Scenario::CqlRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillOwner => "kill-owner",
            Scenario::Stop => "stop",
            Scenario::Partition => "partition",
            Scenario::Asymmetric => "asymmetric",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::Join => "join",
            Scenario::Drain => "drain",
            Scenario::RedisRestart => "redis-restart",
            Scenario::CqlRestart => "cql-restart",
        }
    }

    /// Whether the fault is graceful (nothing may be lost or over-admitted).
    pub fn graceful(self) -> bool {
        matches!(
            self,
            Scenario::RollingRestart | Scenario::Join | Scenario::Drain
        )
    }

    /// Whether the fault is of a backend (membership stays as it is).
    pub fn backend(self) -> bool {
        matches!(self, Scenario::RedisRestart | Scenario::CqlRestart)
    }

    /// Whether limits must hold exactly through the fault: a graceful
    /// membership change, or a backend fault (checks are answered from
    /// the owners' memory, which the fault does not touch).
    pub fn exact(self) -> bool {
        self.graceful() || self.backend()
    }
}

/// The shape of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    pub nodes: usize,
    pub keys: usize,
    /// Fixed-window limit of every loaded key.
    pub limit: u64,
    pub window_ms: u64,
    pub connections: usize,
    pub before: Duration,
    /// How long the fault lasts (kill, stop, partitions).
    pub fault: Duration,
    pub after: Duration,
    /// `RINGLIMIT_HEARTBEAT_TIMEOUT_MS` of the nodes.
    pub heartbeat_timeout_ms: u64,
    /// Whether to bill the run: the nodes bill one-minute periods, and after
    /// the run every period it touched is closed (waiting for the last one
    /// to end, up to a minute) and the billed units are summed.
    pub billing: bool,
}

impl Options {
    /// The full run: 3 nodes, a fault of 10 s (stop) or 20 s (partitions).
    pub fn full(s: Scenario) -> Options {
        Options {
            nodes: 3,
            keys: 20,
            limit: 50,
            window_ms: 1_000,
            connections: 16,
            before: Duration::from_secs(5),
            fault: Duration::from_secs(match s {
                Scenario::Partition | Scenario::Asymmetric => 20,
                _ => 10,
            }),
            // The CQL server takes seconds to start again: the load goes
            // on long enough to show the recovery.
            after: Duration::from_secs(if s == Scenario::CqlRestart { 40 } else { 10 }),
            heartbeat_timeout_ms: 3_000,
            billing: true,
        }
    }

    /// A few seconds of load, for the test suite.
    pub fn short(s: Scenario) -> Options {
        Options {
            nodes: 3,
            keys: 10,
            limit: 50,
            window_ms: 1_000,
            connections: 8,
            before: Duration::from_secs(2),
            fault: Duration::from_secs(4),
            after: Duration::from_secs(if s == Scenario::CqlRestart { 25 } else { 4 }),
            heartbeat_timeout_ms: 2_000,
            // Closing the last period waits for its end (up to a minute):
            // the test suite bills the one scenario where units can be lost.
            billing: s == Scenario::KillOwner,
        }
    }
}

/// Where the harness finds what it runs.
#[derive(Debug, Clone)]
pub struct Env {
    pub bin: PathBuf,
    /// The `chaos` binary (its `--relay` mode runs in the node namespaces).
    pub chaos_exe: PathBuf,
    /// The run's directory (logs, data, reports).
    pub work: PathBuf,
    /// Redis on the host's loopback.
    pub redis: SocketAddr,
    /// The CQL server on the host's loopback.
    pub cql: SocketAddr,
}

/// An admin write made during the fault, and whether every node had it after recovery.
#[derive(Debug, Clone, Serialize)]
pub struct AdminWrite {
    pub what: String,
    pub key_id: String,
    pub in_force_everywhere: bool,
    pub detail: String,
}

/// A moment of the run, seconds from the start of measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub t_s: f64,
    pub what: String,
}

/// Everything one scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub options: Options,
    pub victim: Option<String>,
    pub events: Vec<Event>,
    /// The fault's span, seconds from the start of measurement.
    pub fault: Phase,
    pub duration_s: f64,
    pub requests: u64,
    pub allowed_units: u64,
    pub denied: u64,
    /// Requests without a decision, by kind.
    pub failures: BTreeMap<String, u64>,
    /// Requests whose outcome the client cannot know (timeouts, broken
    /// connections, 503/504 from a forward to the owner that timed out):
    /// the owner may have admitted them.
    pub unknown_outcomes: u64,
    pub over_admission: OverAdmission,
    pub p99_before_us: f64,
    pub p99_during_us: f64,
    pub p99_after_us: f64,
    /// From the end of the fault (or its start, for a kill) to a ring that
    /// every live node agrees on.
    pub ring_converged_after_s: Option<f64>,
    /// From the end of the fault to the last second with an error.
    pub errors_clear_after_s: Option<f64>,
    /// Units the usage history (what billing is computed from) holds for the
    /// loaded keys, against the units the client saw admitted.
    pub usage_units: u64,
    /// Of `allowed_units`, the checks answered fail-open (`"fail_open":
    /// true`): the answering node counts them in usage; an owner that got
    /// the check and whose answer was lost may have counted it too.
    pub fail_open: u64,
    /// Units billed for the loaded keys over every one-minute period the
    /// run touched, once closed (`None`: the run was not billed).
    pub billed_units: Option<u64>,
    pub admin_writes: Vec<AdminWrite>,
    pub timeline: Vec<TimelinePoint>,
    pub allowed_per_s: Vec<u64>,
    /// The guarantee of docs/guarantees.md for this fault, and whether it held.
    pub guarantee: String,
    pub held: bool,
    pub why_not: Vec<String>,
}

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random_hex() -> String {
    let mut s = String::new();
    let seed = epoch_us() ^ u64::from(std::process::id()).rotate_left(32);
    let mut x = seed | 1;
    for _ in 0..16 {
        // xorshift: names only, not secrets.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(char::from_digit(u32::try_from(x % 16).unwrap_or(0), 16).unwrap_or('0'));
    }
    s
}

/// A key made through the admin API: (key_id, api_key).
async fn create_key(
    c: &Cluster,
    via: usize,
    limit: u64,
    window_ms: u64,
) -> Result<(String, String)> {
    let v = c
        .post(
            via,
            "/api/v1/keys",
            &json!({
                "owner": "chaos",
                "tier": "free",
                "limits": [{"name": "chaos", "algorithm": "fixed_window", "limit": limit, "window_ms": window_ms, "burst": null}],
            }),
        )
        .await?;
    Ok((
        v["key_id"].as_str().context("key_id")?.to_owned(),
        v["api_key"].as_str().context("api_key")?.to_owned(),
    ))
}

/// Runs one scenario from a fresh cluster to its report.
pub async fn run(s: Scenario, o: &Options, env: &Env) -> Result<Report> {
    let work = env.work.join(s.name());
    std::fs::create_dir_all(&work)?;
    // A backend the scenario kills is its own: the given ones may serve
    // other runs.
    let mut own = match s {
        Scenario::RedisRestart => Some(Started::start("redis", &work.join("redis"))?),
        Scenario::CqlRestart => Some(Started::start("cassandra", &work.join("cassandra"))?),
        _ => None,
    };
    let (redis, cql) = match (s, &own) {
        (Scenario::RedisRestart, Some(b)) => (b.addr, env.cql),
        (Scenario::CqlRestart, Some(b)) => (env.redis, b.addr),
        _ => (env.redis, env.cql),
    };
    let net = Net::create(o.nodes)?;
    let host = net.host_ip();
    let redis_relay = Relay::start(SocketAddr::new(host.into(), 0), redis).await?;
    let cql_relay = Relay::start(SocketAddr::new(host.into(), 0), cql).await?;
    let token = format!("chaos-admin-token-{}", random_hex());
    let keyspace = format!("chaos_{}_{}", std::process::id(), random_hex());
    let spec = Spec {
        bin: env.bin.clone(),
        work: work.clone(),
        token,
        redis_url: format!("redis://127.0.0.1:{}", redis.port()),
        cql: format!("127.0.0.1:{}", cql.port()),
        keyspace,
        env: vec![
            (
                "RINGLIMIT_HEARTBEAT_TIMEOUT_MS".into(),
                o.heartbeat_timeout_ms.to_string(),
            ),
            ("RINGLIMIT_BILLING_PERIOD".into(), "1m".into()),
        ],
    };
    let mut c = Cluster::new(net, spec)?;
    c.start_relays(
        &env.chaos_exe,
        &[
            (redis.port(), redis_relay.listen.to_string()),
            (cql.port(), cql_relay.listen.to_string()),
        ],
    )?;
    let boot = Duration::from_secs(60);
    // Node 0 first: it applies the CQL migrations before the others start.
    let first: Vec<usize> = match s {
        Scenario::Join => (0..o.nodes - 1).collect(),
        _ => (0..o.nodes).collect(),
    };
    c.start(0, &first)?;
    c.wait_ready(0, boot).await?;
    for &i in &first[1..] {
        c.start(i, &first)?;
    }
    for &i in &first[1..] {
        c.wait_ready(i, boot).await?;
    }
    if c.converged(&first, boot).await.is_none() {
        bail!("{}: the ring did not converge on {first:?}", s.name());
    }

    // The loaded keys, and the keys of the admin writes made during the fault.
    let mut keys = Vec::new();
    for _ in 0..o.keys {
        keys.push(create_key(&c, 0, o.limit, o.window_ms).await?);
    }
    let rotated = create_key(&c, 0, 1_000_000, 60_000).await?;
    let revoked = create_key(&c, 0, 1_000_000, 60_000).await?;
    let victim = match s {
        Scenario::Join => Some(o.nodes - 1),
        Scenario::RollingRestart | Scenario::RedisRestart | Scenario::CqlRestart => None,
        _ => Some(c.owner(0, &keys[0].0).await?),
    };

    let mut targets = Vec::new();
    for &i in &first {
        let mut t = Target::parse(&c.data_url(i)).map_err(anyhow::Error::msg)?;
        t.resolve().await.map_err(anyhow::Error::msg)?;
        targets.push(t);
    }
    let items: Vec<Bytes> = keys
        .iter()
        .map(|(_, secret)| protocol::ringlimit_item(secret, 1))
        .collect();
    let total = o.before + o.fault + o.after;
    let cfg = RunConfig {
        wire: Wire::new(System::Ringlimit),
        targets,
        mode: Mode::Closed,
        connections: o.connections,
        warmup: Duration::ZERO,
        duration: total,
        timeout: Duration::from_secs(2),
        batch: None,
        picker: Picker::Cycle,
        seed: 7,
        items: Arc::new(items),
        cost: 1,
        record_admissions: Some(20_000_000),
        progress: false,
    };
    let load = tokio::spawn(runner::run(cfg));
    let mut events: Vec<(u64, String)> = Vec::new();
    let mut mark = |what: String| events.push((epoch_us(), what));

    tokio::time::sleep(o.before).await;
    let fault_start = epoch_us();
    let via = (0..o.nodes)
        .find(|&i| Some(i) != victim && c.running(i))
        .context("a live node")?;
    let mut converge_from = fault_start;
    let mut converged_us = None;
    match s {
        Scenario::KillOwner => {
            let v = victim.context("victim")?;
            c.kill(v)?;
            mark(format!("SIGKILL n{v}"));
            let live: Vec<usize> = (0..o.nodes).filter(|&i| i != v).collect();
            if c.converged(&live, o.fault * 3).await.is_some() {
                converged_us = Some(epoch_us());
                mark(format!("ring converged on {live:?}"));
            }
        }
        Scenario::Stop => {
            let v = victim.context("victim")?;
            c.signal(v, "STOP")?;
            mark(format!("SIGSTOP n{v}"));
        }
        Scenario::Partition => {
            let v = victim.context("victim")?;
            let others: Vec<usize> = (0..o.nodes).filter(|&i| i != v).collect();
            c.net.partition(&[v], &others)?;
            mark(format!("partition n{v} | {others:?}"));
        }
        Scenario::Asymmetric => {
            let a = victim.context("victim")?;
            let b = via;
            c.net.cut(b, a)?;
            mark(format!(
                "n{b} no longer reaches n{a} (n{a} still reaches n{b})"
            ));
        }
        Scenario::RedisRestart | Scenario::CqlRestart => {
            let b = own.as_ref().context("the scenario's backend")?;
            b.kill()?;
            mark(format!("SIGKILL {}", backend_name(s)));
        }
        Scenario::RollingRestart | Scenario::Join | Scenario::Drain => {}
    }

    // Admin writes while the fault is on, through a node on the majority side.
    let made = create_key(&c, via, 1_000_000, 60_000).await;
    let rotate = c
        .post(
            via,
            &format!("/api/v1/keys/{}/rotate", rotated.0),
            &json!({"grace_period_ms": 0}),
        )
        .await;
    let revoke = c.delete(via, &format!("/api/v1/keys/{}", revoked.0)).await;
    mark("admin writes: create, rotate, revoke".into());

    match s {
        Scenario::KillOwner => {
            let v = victim.context("victim")?;
            sleep_until_us(fault_start + dur_us(o.fault)).await;
            c.start(v, &(0..o.nodes).collect::<Vec<_>>())?;
            c.wait_ready(v, boot).await?;
            mark(format!("n{v} restarted"));
        }
        Scenario::Stop => {
            let v = victim.context("victim")?;
            sleep_until_us(fault_start + dur_us(o.fault)).await;
            c.signal(v, "CONT")?;
            mark(format!("SIGCONT n{v}"));
        }
        Scenario::Partition | Scenario::Asymmetric => {
            sleep_until_us(fault_start + dur_us(o.fault)).await;
            c.net.heal()?;
            mark("healed".into());
        }
        Scenario::RollingRestart => {
            let all: Vec<usize> = (0..o.nodes).collect();
            for i in 0..o.nodes {
                c.terminate(i, Duration::from_secs(30)).await?;
                mark(format!("SIGTERM n{i} (exited)"));
                let others: Vec<usize> = all.iter().copied().filter(|&j| j != i).collect();
                if c.converged(&others, boot).await.is_none() {
                    bail!("rolling restart: the ring did not converge without n{i}");
                }
                mark(format!("ring converged without n{i}"));
                c.start(i, &all)?;
                c.wait_ready(i, boot).await?;
                if c.converged(&all, boot).await.is_none() {
                    bail!("rolling restart: the ring did not converge after n{i} restarted");
                }
                mark(format!("n{i} back, ring converged"));
            }
        }
        Scenario::Join => {
            let v = victim.context("victim")?;
            let all: Vec<usize> = (0..o.nodes).collect();
            c.start(v, &all)?;
            c.wait_ready(v, boot).await?;
            mark(format!("n{v} started"));
        }
        Scenario::RedisRestart | Scenario::CqlRestart => {
            sleep_until_us(fault_start + dur_us(o.fault)).await;
            let b = own.as_mut().context("the scenario's backend")?;
            b.restart()?;
            mark(format!(
                "{} restarted{}",
                backend_name(s),
                if s == Scenario::RedisRestart {
                    " (empty)"
                } else {
                    ""
                }
            ));
            if s == Scenario::CqlRestart {
                let live: Vec<usize> = (0..o.nodes).collect();
                for &i in &live {
                    if store_answers(&c, i, &keys[0].0, Duration::from_secs(90)).await {
                        mark(format!("n{i} reads the CQL server again"));
                    } else {
                        mark(format!("n{i} still cannot read the CQL server after 90 s"));
                    }
                }
            }
        }
        Scenario::Drain => {
            let v = victim.context("victim")?;
            c.post(v, "/api/v1/cluster/drain", &json!({})).await?;
            mark(format!("n{v} drained"));
            c.left(v);
            let live: Vec<usize> = (0..o.nodes).filter(|&i| i != v).collect();
            if c.converged(&live, boot).await.is_some() {
                mark(format!("ring converged on {live:?}"));
            }
            // It stays up, out of the ring, and forwards what it receives
            // (clients still send to it); stopping it is a SIGTERM, as in
            // the rolling restart.
        }
    }
    let fault_end = epoch_us();
    if converged_us.is_none() {
        converge_from = fault_end;
        let live: Vec<usize> = (0..o.nodes).filter(|&i| c.members[i]).collect();
        if c.converged(&live, boot).await.is_some() {
            converged_us = Some(epoch_us());
            mark(format!("ring converged on {live:?}"));
        }
    }

    let out = load
        .await
        .context("the load task")?
        .map_err(anyhow::Error::msg)?;
    let anchor = out.anchor_epoch_us;
    let rel = |us: u64| (us.saturating_sub(anchor)) as f64 / 1e6;

    // Admin writes in force on every live node after recovery.
    let live: Vec<usize> = (0..o.nodes).filter(|&i| c.running(i)).collect();
    let mut admin_writes = Vec::new();
    let new_secret = rotate
        .as_ref()
        .ok()
        .and_then(|v| v["api_key"].as_str().map(str::to_owned));
    // (what, key id, secrets with whether each must validate)
    type Expect = Vec<(String, bool)>;
    // With the store of keys down, a write may be refused; it must then
    // have changed nothing: the old secret still works.
    let refusable = s == Scenario::CqlRestart;
    let mut refused: Vec<(String, String)> = Vec::new();
    let checks: Vec<(String, String, Expect)> = vec![
        match &made {
            Ok((id, secret)) => ("create".into(), id.clone(), vec![(secret.clone(), true)]),
            Err(e) => {
                if refusable {
                    refused.push(("create".into(), e.to_string()));
                }
                ("create".into(), format!("failed: {e}"), vec![])
            }
        },
        (
            "rotate".into(),
            rotated.0.clone(),
            match (&rotate, &new_secret) {
                (Ok(_), Some(n)) => vec![(rotated.1.clone(), false), (n.clone(), true)],
                (Err(e), _) if refusable => {
                    refused.push(("rotate".into(), e.to_string()));
                    vec![(rotated.1.clone(), true)]
                }
                _ => vec![],
            },
        ),
        (
            "revoke".into(),
            revoked.0.clone(),
            match &revoke {
                Ok(()) => vec![(revoked.1.clone(), false)],
                Err(e) if refusable => {
                    refused.push(("revoke".into(), e.to_string()));
                    vec![(revoked.1.clone(), true)]
                }
                Err(_) => vec![],
            },
        ),
    ];
    let write_errors: Vec<(&str, String)> = [
        ("create", made.as_ref().err().map(ToString::to_string)),
        ("rotate", rotate.as_ref().err().map(ToString::to_string)),
        ("revoke", revoke.as_ref().err().map(ToString::to_string)),
    ]
    .into_iter()
    .filter_map(|(w, e)| e.map(|e| (w, e)))
    .collect();
    for (what, key_id, expect) in checks {
        let refusal = refused
            .iter()
            .find(|(w, _)| *w == what)
            .map(|(_, e)| e.clone());
        if let (Some(e), true) = (&refusal, expect.is_empty()) {
            // A refused create leaves nothing to look for.
            admin_writes.push(AdminWrite {
                what,
                key_id: "-".into(),
                in_force_everywhere: true,
                detail: format!("refused while the store was down ({e})"),
            });
            continue;
        }
        if expect.is_empty() {
            let detail = format!(
                "the write itself failed during the fault: {}",
                write_errors
                    .iter()
                    .find(|(w, _)| *w == what)
                    .map_or("no new secret in the answer", |(_, e)| e.as_str())
            );
            admin_writes.push(AdminWrite {
                what,
                key_id,
                in_force_everywhere: false,
                detail,
            });
            continue;
        }
        let (ok, mut detail) = in_force(&c, &live, &expect, Duration::from_secs(15)).await;
        if let Some(e) = refusal {
            detail = format!(
                "refused while the store was down ({e}); the old secret still works: {detail}"
            );
        }
        admin_writes.push(AdminWrite {
            what,
            key_id,
            in_force_everywhere: ok,
            detail,
        });
    }

    let usage_units = usage_of(&c, live[0], &keys, anchor / 1_000).await?;
    let billed_units = if o.billing {
        Some(billed_of(&c, live[0], &keys, anchor / 1_000).await?)
    } else {
        None
    };

    let counts = &out.totals.counts;
    let allowed_units = counts.allowed;
    let unknown_outcomes = counts
        .errors
        .iter()
        .filter(|(k, _)| {
            // A 503 or 504 is a node that could not get an answer from the
            // key's owner in time (a forward that timed out): the owner may
            // have admitted the check and counted it; only the answer was lost.
            matches!(
                k,
                ringlimit_loadtest::stats::ErrorKind::Timeout
                    | ringlimit_loadtest::stats::ErrorKind::Io
                    | ringlimit_loadtest::stats::ErrorKind::Status(503 | 504)
            )
        })
        .map(|(_, n)| *n)
        .sum();
    let mut admissions: Vec<Admission> = out.admissions.clone();
    admissions.sort_unstable_by_key(|a| a.recv_us);
    let over = accounts::over_admission(&admissions, anchor, o.window_ms, o.limit, 1_000);
    let duration_s = out.elapsed.as_secs_f64();
    let fault = Phase {
        from_s: rel(fault_start),
        to_s: rel(fault_end),
    };
    let timeline = out.timeline.clone();
    let report = Report {
        scenario: s,
        options: o.clone(),
        victim: victim.map(Cluster::name),
        events: events
            .iter()
            .map(|(us, what)| Event {
                t_s: rel(*us),
                what: what.clone(),
            })
            .collect(),
        fault,
        duration_s,
        requests: counts.requests,
        allowed_units,
        denied: counts.denied,
        failures: accounts::failures(counts),
        unknown_outcomes,
        p99_before_us: accounts::worst_p99(
            &timeline,
            Phase {
                from_s: 0.0,
                to_s: fault.from_s,
            },
        ),
        p99_during_us: accounts::worst_p99(&timeline, fault),
        p99_after_us: accounts::worst_p99(
            &timeline,
            Phase {
                from_s: fault.to_s,
                to_s: duration_s,
            },
        ),
        ring_converged_after_s: converged_us.map(|u| rel(u) - rel(converge_from)),
        errors_clear_after_s: accounts::errors_clear_after(&timeline, fault.to_s),
        usage_units,
        fail_open: counts.fail_open,
        billed_units,
        admin_writes,
        allowed_per_s: accounts::allowed_per_second(&admissions, duration_s.ceil() as usize),
        timeline,
        over_admission: over,
        guarantee: String::new(),
        held: false,
        why_not: Vec::new(),
    };
    drop(c);
    drop((redis_relay, cql_relay));
    drop(own);
    Ok(crate::guarantees::judge(report))
}

fn backend_name(s: Scenario) -> &'static str {
    match s {
        Scenario::CqlRestart => "the CQL server",
        _ => "Redis",
    }
}

fn dur_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn sleep_until_us(t: u64) {
    let now = epoch_us();
    if t > now {
        tokio::time::sleep(Duration::from_micros(t - now)).await;
    }
}

/// Whether, within `timeout`, every node in `live` answers each secret as
/// expected (`true`: a decision, 200 or 429; `false`: 401).
async fn in_force(
    c: &Cluster,
    live: &[usize],
    expect: &[(String, bool)],
    timeout: Duration,
) -> (bool, String) {
    let end = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let mut ok = true;
        'all: for &i in live {
            for (secret, valid) in expect {
                let st = c.validate(i, secret).await.unwrap_or(0);
                let good = if *valid {
                    st == 200 || st == 429
                } else {
                    st == 401
                };
                if !good {
                    ok = false;
                    last = format!(
                        "n{i} answered {st} to a secret that should be {}",
                        if *valid { "valid" } else { "refused" }
                    );
                    break 'all;
                }
            }
        }
        if ok {
            return (true, "in force on every live node".into());
        }
        if Instant::now() > end {
            return (false, last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Units of the loaded keys in the usage history from `from_ms` on, read
/// once the write-behind has had time to write them (the usage rows are
/// written every second; a few seconds of margin).
/// Closes every one-minute billing period from `from_ms` to now (waiting
/// for the last one to end) through node `via`, and sums the units billed
/// to `keys`.
async fn billed_of(
    c: &Cluster,
    via: usize,
    keys: &[(String, String)],
    from_ms: u64,
) -> Result<u64> {
    const PERIOD_MS: u64 = 60_000;
    let first = from_ms - from_ms % PERIOD_MS;
    let now = epoch_us() / 1_000;
    let end = now - now % PERIOD_MS + PERIOD_MS;
    // The last period must have ended, and its usage must be written.
    sleep_until_us((end + 1_000) * 1_000).await;
    let ids: std::collections::HashSet<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    let mut sum = 0;
    let mut p = first;
    while p < end {
        let mut tries = 0;
        let v = loop {
            match c
                .post(
                    via,
                    "/api/v1/billing/close",
                    &json!({ "period": p.to_string() }),
                )
                .await
            {
                Ok(v) => break v,
                // 409: usage of the period is still being written.
                Err(e) if tries < 20 && e.to_string().contains("409") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.context(format!("closing billing period {p}"))),
            }
        };
        for r in v["records"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if r["key_id"].as_str().is_some_and(|id| ids.contains(id)) {
                sum += r["units"].as_u64().context("billed units")?;
            }
        }
        p += PERIOD_MS;
    }
    Ok(sum)
}

/// Waits until node `via` reads the usage history again (after a backend
/// fault its driver reconnects with a backoff); `false` after `max`.
async fn store_answers(c: &Cluster, via: usize, key_id: &str, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    let now_ms = epoch_us() / 1_000;
    let path = format!(
        "/api/v1/usage/{key_id}/history?granularity=minute&from={}&to={}",
        now_ms - now_ms % 60_000,
        now_ms + 60_000
    );
    loop {
        if c.get(via, &path).await.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn usage_of(c: &Cluster, via: usize, keys: &[(String, String)], from_ms: u64) -> Result<u64> {
    if let Some((id, _)) = keys.first() {
        store_answers(c, via, id, Duration::from_secs(90)).await;
    }
    // The write-behind writes what waited at its next flushes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = from_ms - from_ms % 60_000;
    let to = epoch_us() / 1_000 + 60_000;
    let mut sum = 0;
    for (id, _) in keys {
        let v: Value = c
            .get(
                via,
                &format!("/api/v1/usage/{id}/history?granularity=minute&from={from}&to={to}"),
            )
            .await?;
        sum += v["total"].as_u64().context("usage total")?;
    }
    Ok(sum)
}
