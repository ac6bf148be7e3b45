//! Helpers of the process tests: start a real `ringlimit` node on free
//! ports with its own data directory, and talk to it over HTTP.
#![allow(dead_code, clippy::unwrap_used)]

pub mod proxy;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// The cluster cookie of the process tests (a cookie needs 32 characters or more).
pub const COOKIE: &str = "test-cluster-cookie-0123456789abcdef";

/// A running node process.
pub struct Node {
    pub child: Option<Child>,
    pub data: String,
    pub admin: String,
    pub dir: PathBuf,
    pub http: reqwest::Client,
}

impl Node {
    /// Starts a node on `dir` with extra environment variables.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringlimit"));
        cmd.env_clear()
            .envs(profile_env())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RINGLIMIT_DATA_ADDR", "127.0.0.1:0")
            .env("RINGLIMIT_ADMIN_ADDR", "127.0.0.1:0")
            .env("RINGLIMIT_ADMIN_TOKEN", TOKEN)
            .env("RINGLIMIT_DATA_DIR", dir)
            .env("RINGLIMIT_LOG_LEVEL", "warn")
            // Tests read usage history soon after the checks (the default
            // writes it every 10 s); a test's own env still wins.
            .env("RINGLIMIT_USAGE_FLUSH_INTERVAL_MS", "1000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start ringlimit");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("ringlimit listening"),
            "node did not start: {line:?}"
        );
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap()
                .to_string()
        };
        Node {
            data: format!("http://{}", field("data_addr")),
            admin: format!("http://{}", field("admin_addr")),
            child: Some(child),
            dir: dir.to_path_buf(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        unsafe_kill(c.id() as i32, sig);
        c.wait().unwrap()
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a key with the given limit override and returns (key_id, api_key).
    pub async fn create_key(&self, limits: Value) -> (String, String) {
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/keys",
                Some(json!({"owner":"test","tier":"free","limits":limits})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        (
            v["key_id"].as_str().unwrap().to_string(),
            v["api_key"].as_str().unwrap().to_string(),
        )
    }

    pub async fn validate(&self, api_key: &str, cost: u64) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/api/v1/validate", self.data))
            .json(&json!({"api_key": api_key, "cost": cost}))
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        (s, resp.json().await.unwrap())
    }

    pub async fn post_raw(&self, base: &str, path: &str, body: Vec<u8>) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

/// The environment a node process keeps from the test's after
/// `env_clear`: where an instrumented build writes its coverage profile
/// (set by scripts/coverage.sh), if anywhere.
pub fn profile_env() -> Option<(&'static str, std::ffi::OsString)> {
    std::env::var_os("LLVM_PROFILE_FILE").map(|v| ("LLVM_PROFILE_FILE", v))
}

/// Ends a node process at the end of a test: SIGKILL, or, when
/// `RINGLIMIT_TEST_GRACEFUL_STOP` is set (scripts/coverage.sh sets it),
/// SIGTERM and up to 10 s for the node to exit on its own first, so an
/// instrumented node writes its coverage profile (a killed one cannot).
pub fn stop(c: &mut Child) {
    if std::env::var_os("RINGLIMIT_TEST_GRACEFUL_STOP").is_some()
        && matches!(c.try_wait(), Ok(None))
    {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = ringlimit_actors::clock::monotonic() + Duration::from_secs(10);
        while ringlimit_actors::clock::monotonic() < deadline {
            if !matches!(c.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub fn unsafe_kill(pid: i32, sig: i32) {
    // `kill` from the shell keeps this crate free of unsafe code.
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;

pub fn limit(name: &str, algorithm: &str, limit: u64, window_ms: u64) -> Value {
    json!({"name": name, "algorithm": algorithm, "limit": limit, "window_ms": window_ms, "burst": null})
}

/// Polls `f` until it is true, for at most `secs` seconds.
pub async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = ringlimit_actors::clock::monotonic() + Duration::from_secs(secs);
    while ringlimit_actors::clock::monotonic() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Whether tests that need a server must fail (not skip) when it is missing:
/// under CI, or with RINGLIMIT_REQUIRE_SERVERS=1 (scripts/test.sh sets it).
pub fn servers_required() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var("RINGLIMIT_REQUIRE_SERVERS").as_deref() == Ok("1")
}

/// Runs `ringlimit migrate` on a keyspace and asserts it succeeded.
pub fn migrate(cql: &str, keyspace: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringlimit"))
        .arg("migrate")
        .env("RINGLIMIT_SCYLLA_NODES", cql)
        .env("RINGLIMIT_SCYLLA_KEYSPACE", keyspace)
        .env("RINGLIMIT_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run ringlimit migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shared CQL server of the test command.
pub fn cql() -> Option<String> {
    match std::env::var("RINGLIMIT_TEST_CQL") {
        Ok(a) if !a.is_empty() => Some(a),
        _ if servers_required() => panic!(
            "RINGLIMIT_TEST_CQL is not set: run the suite through scripts/test.sh, which starts the CQL server"
        ),
        _ => {
            eprintln!("skipping: RINGLIMIT_TEST_CQL is not set (scripts/test.sh sets it)");
            None
        }
    }
}

/// A fresh keyspace name, so tests sharing one CQL server never meet.
pub fn keyspace(tag: &str) -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    format!("rl_{tag}_{}", hex::encode(b))
}

/// A port free right now, for a server a test starts with a fixed address
/// (a cluster listener). Chosen below the kernel's ephemeral range, so the
/// client sockets other tests open meanwhile cannot take it first.
pub fn free_port() -> u16 {
    for _ in 0..1_000 {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).unwrap();
        let port = 10_000 + u16::from_le_bytes(b) % 22_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}
