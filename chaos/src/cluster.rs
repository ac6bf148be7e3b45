//! The ringlimit nodes under test: real processes, one per network
//! namespace, each on its namespace's address with the same ports.

use crate::net::Net;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

pub const DATA_PORT: u16 = 8080;
pub const ADMIN_PORT: u16 = 9090;
pub const CLUSTER_PORT: u16 = 7946;
const COOKIE: &str = "chaos-harness-cluster-cookie-0123456789";

/// How to start the nodes.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The `ringlimit` binary.
    pub bin: PathBuf,
    /// Where each node's data directory and log go.
    pub work: PathBuf,
    pub token: String,
    /// `redis://…` as the nodes reach it.
    pub redis_url: String,
    /// `host:port` of the CQL server as the nodes reach it.
    pub cql: String,
    pub keyspace: String,
    /// Extra environment for every node.
    pub env: Vec<(String, String)>,
}

/// The nodes of one run. Dropping it kills every node still running.
#[derive(Debug)]
pub struct Cluster {
    pub net: Net,
    pub spec: Spec,
    procs: Vec<Option<Child>>,
    /// The relays inside the node namespaces (see [`Cluster::start_relays`]).
    relays: Vec<Child>,
    /// Whether node i is a ring member by configuration (false once drained or not yet joined).
    pub members: Vec<bool>,
    http: reqwest::Client,
}

impl Cluster {
    /// The cluster, with no node started yet.
    pub fn new(net: Net, spec: Spec) -> Result<Cluster> {
        std::fs::write(
            spec.work.join("ringlimit.toml"),
            "billing_period = \"1m\"\n[billing]\nclose_delay_ms = 1000\n",
        )?;
        let n = net.nodes();
        Ok(Cluster {
            net,
            spec,
            procs: (0..n).map(|_| None).collect(),
            relays: Vec::new(),
            members: vec![false; n],
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?,
        })
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn name(i: usize) -> String {
        format!("n{i}")
    }

    pub fn data_url(&self, i: usize) -> String {
        format!("http://{}:{DATA_PORT}", self.net.node_ip(i))
    }

    pub fn admin_url(&self, i: usize) -> String {
        format!("http://{}:{ADMIN_PORT}", self.net.node_ip(i))
    }

    /// Starts node `i` with `seeds` (node indexes) and returns at once.
    pub fn start(&mut self, i: usize, seeds: &[usize]) -> Result<()> {
        if self.procs[i].is_some() {
            bail!("node {i} is already running");
        }
        let ip = self.net.node_ip(i);
        let seeds: Vec<String> = seeds
            .iter()
            .filter(|&&s| s != i)
            .map(|&s| format!("{}:{CLUSTER_PORT}", self.net.node_ip(s)))
            .collect();
        let dir = self.spec.work.join(Self::name(i));
        std::fs::create_dir_all(&dir)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.spec.work.join(format!("{}.log", Self::name(i))))?;
        let mut cmd = Command::new("ip");
        // setpriv: the node dies with the harness, even when the harness is killed.
        cmd.args(["netns", "exec", &self.net.node_ns(i)])
            .args(["setpriv", "--pdeathsig", "KILL", "--"])
            .arg(&self.spec.bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RINGLIMIT_CONFIG", self.spec.work.join("ringlimit.toml"))
            .env("RINGLIMIT_NODE_NAME", Self::name(i))
            .env("RINGLIMIT_DATA_ADDR", format!("{ip}:{DATA_PORT}"))
            .env("RINGLIMIT_ADMIN_ADDR", format!("{ip}:{ADMIN_PORT}"))
            .env("RINGLIMIT_CLUSTER_ADDR", format!("{ip}:{CLUSTER_PORT}"))
            .env("RINGLIMIT_SEEDS", seeds.join(","))
            .env("RINGLIMIT_COOKIE", COOKIE)
            .env("RINGLIMIT_ADMIN_TOKEN", &self.spec.token)
            .env("RINGLIMIT_DATA_DIR", &dir)
            .env("RINGLIMIT_REDIS_URL", &self.spec.redis_url)
            .env("RINGLIMIT_SCYLLA_NODES", &self.spec.cql)
            .env("RINGLIMIT_SCYLLA_KEYSPACE", &self.spec.keyspace)
            .env("RINGLIMIT_LOG_LEVEL", "warn")
            // The accounts read usage after each run: written every second
            // (the default is 10 s), they wait less for it.
            .env("RINGLIMIT_USAGE_FLUSH_INTERVAL_MS", "1000")
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting node {i}"))?;
        self.procs[i] = Some(child);
        self.members[i] = true;
        Ok(())
    }

    /// Starts, in every node namespace, `exe --relay 127.0.0.1:<port> <to>`
    /// for each `(port, to)`: the namespace's loopback port `port` then
    /// reaches `to` (the host relay of a backend). The nodes use the
    /// backends at `127.0.0.1:<port>`, the address the backends announce
    /// (a CQL driver connects to the address the server reports for itself).
    pub fn start_relays(&mut self, exe: &std::path::Path, pairs: &[(u16, String)]) -> Result<()> {
        for i in 0..self.len() {
            for (port, to) in pairs {
                let child = Command::new("ip")
                    .args(["netns", "exec", &self.net.node_ns(i)])
                    .args(["setpriv", "--pdeathsig", "KILL", "--"])
                    .arg(exe)
                    .args(["--relay", &format!("127.0.0.1:{port}"), to])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting a relay in node {i}'s namespace"))?;
                self.relays.push(child);
            }
        }
        Ok(())
    }

    /// Starts every node, each seeded with all the others.
    pub async fn start_all(&mut self, timeout: Duration) -> Result<()> {
        let all: Vec<usize> = (0..self.len()).collect();
        for i in 0..self.len() {
            self.start(i, &all)?;
        }
        for i in 0..self.len() {
            self.wait_ready(i, timeout).await?;
        }
        if self.converged(&all, timeout).await.is_none() {
            bail!("the ring did not converge on {all:?} within {timeout:?}");
        }
        Ok(())
    }

    /// Waits until node `i` answers `/readyz` with 200.
    pub async fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let url = format!("{}/readyz", self.admin_url(i));
        let end = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.procs[i].as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.procs[i] = None;
                bail!(
                    "node {i} exited ({st}) while starting; see {}",
                    self.spec.work.join(format!("n{i}.log")).display()
                );
            }
            if Instant::now() > end {
                bail!("node {i} was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(Child::id)
    }

    /// Sends `sig` (a `kill -s` name: KILL, STOP, CONT, TERM) to node `i`.
    pub fn signal(&self, i: usize, sig: &str) -> Result<()> {
        let pid = self.pid(i).context("node not running")?;
        let st = Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .status()?;
        if !st.success() {
            bail!("kill -s {sig} {pid} failed");
        }
        Ok(())
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.signal(i, "KILL")?;
        if let Some(mut c) = self.procs[i].take() {
            c.wait()?;
        }
        self.members[i] = false;
        Ok(())
    }

    /// Marks node `i` as out of the ring (drained) while it keeps running.
    pub fn left(&mut self, i: usize) {
        self.members[i] = false;
    }

    /// SIGTERM (a graceful leave: drain, hand over, exit), and wait for the exit.
    pub async fn terminate(&mut self, i: usize, timeout: Duration) -> Result<()> {
        self.signal(i, "TERM")?;
        let end = Instant::now() + timeout;
        loop {
            let done = match self.procs[i].as_mut() {
                Some(c) => c.try_wait()?.is_some(),
                None => true,
            };
            if done {
                self.procs[i] = None;
                self.members[i] = false;
                return Ok(());
            }
            if Instant::now() > end {
                self.kill(i)?;
                bail!("node {i} did not exit within {timeout:?} of SIGTERM (killed)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET` an admin path on node `i`.
    pub async fn get(&self, i: usize, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.admin_url(i)))
            .bearer_auth(&self.spec.token)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path} on n{i}: {status} {v}");
        }
        Ok(v)
    }

    /// `POST` an admin path on node `i`.
    pub async fn post(&self, i: usize, path: &str, body: &Value) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.admin_url(i)))
            .bearer_auth(&self.spec.token)
            .json(body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path} on n{i}: {status} {v}");
        }
        Ok(v)
    }

    /// `DELETE` an admin path on node `i`.
    pub async fn delete(&self, i: usize, path: &str) -> Result<()> {
        let r = self
            .http
            .delete(format!("{}{path}", self.admin_url(i)))
            .bearer_auth(&self.spec.token)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("DELETE {path} on n{i}: {}", r.status());
        }
        Ok(())
    }

    /// The status of one check of `api_key` on node `i`'s data plane.
    pub async fn validate(&self, i: usize, api_key: &str) -> Result<u16> {
        let r = self
            .http
            .post(format!("{}/api/v1/validate", self.data_url(i)))
            .json(&serde_json::json!({ "api_key": api_key, "cost": 1 }))
            .send()
            .await?;
        Ok(r.status().as_u16())
    }

    /// Node `i`'s ring: (members, version, handoff in progress).
    pub async fn ring(&self, i: usize) -> Option<(Vec<String>, u64, bool)> {
        let v = self.get(i, "/api/v1/cluster").await.ok()?;
        let members = v["ring_members"]
            .as_array()?
            .iter()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect();
        Some((
            members,
            v["ring_version"].as_u64()?,
            v["handoff_in_progress"] == true,
        ))
    }

    /// Waits until the nodes `live` agree on one ring made of exactly them,
    /// with no handoff in progress; returns how long that took.
    pub async fn converged(&self, live: &[usize], timeout: Duration) -> Option<Duration> {
        let want: Vec<String> = live.iter().map(|&i| Self::name(i)).collect();
        let start = Instant::now();
        loop {
            let mut ok = true;
            let mut version = None;
            for &i in live {
                match self.ring(i).await {
                    Some((m, v, handoff)) if m == want && !handoff => {
                        if version.is_some_and(|x| x != v) {
                            ok = false;
                        }
                        version = Some(v);
                    }
                    _ => ok = false,
                }
            }
            if ok {
                return Some(start.elapsed());
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The owner of `key_id` on node `i`'s ring, as a node index.
    pub async fn owner(&self, i: usize, key_id: &str) -> Result<usize> {
        let v = self
            .get(i, &format!("/api/v1/cluster/owner?key_id={key_id}"))
            .await?;
        let name = v["owner"].as_str().context("owner")?;
        name.strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("owner {name}"))
    }

    /// Kills every node and relay still running.
    pub fn stop_all(&mut self) {
        for mut r in self.relays.drain(..) {
            let _ = r.kill();
            let _ = r.wait();
        }
        for i in 0..self.procs.len() {
            if let Some(mut c) = self.procs[i].take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        self.net.teardown();
    }
}
