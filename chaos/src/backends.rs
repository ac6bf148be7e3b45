//! Redis and the CQL server the nodes write to: given (`--redis`, `--cql`),
//! or started here with the project's scripts and stopped at exit.

use anyhow::{Context, Result, bail};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (where `scripts/` is).
pub fn repo_root() -> PathBuf {
    let here = std::env::current_dir().unwrap_or_default();
    for d in here.ancestors() {
        if d.join("scripts/redis.sh").exists() {
            return d.to_path_buf();
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(here)
}

/// `host:port` (or `redis://host:port`) to a socket address.
pub fn addr(s: &str) -> Result<SocketAddr> {
    let s = s.trim().trim_start_matches("redis://");
    let s = s.split('/').next().unwrap_or(s);
    s.to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {s}"))
}

/// One backend process started by a script; stopped on drop.
#[derive(Debug)]
pub struct Started {
    script: PathBuf,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Started {
    /// `scripts/<name>.sh start <dir>`; its last stdout line is the address.
    pub fn start(name: &str, dir: &Path) -> Result<Started> {
        let script = repo_root().join(format!("scripts/{name}.sh"));
        let addr = script_start(&script, dir)?;
        Ok(Started {
            script,
            dir: dir.to_path_buf(),
            addr,
        })
    }

    /// `scripts/<name>.sh kill <dir>`: SIGKILL, a crash.
    pub fn kill(&self) -> Result<()> {
        let out = Command::new("bash")
            .arg(&self.script)
            .arg("kill")
            .arg(&self.dir)
            .output()
            .with_context(|| format!("running {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "{} kill failed: {}",
                self.script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts it again on the same dir (the scripts keep its port).
    pub fn restart(&mut self) -> Result<()> {
        let addr = script_start(&self.script, &self.dir)?;
        if addr != self.addr {
            bail!(
                "{} came back on {addr}, not on {}",
                self.script.display(),
                self.addr
            );
        }
        Ok(())
    }
}

fn script_start(script: &Path, dir: &Path) -> Result<SocketAddr> {
    let out = Command::new("bash")
        .arg(script)
        .arg("start")
        .arg(dir)
        // A CQL server the harness kills must keep what it acknowledged,
        // as a replicated ScyllaDB does when one node crashes: fsync
        // before each write is acknowledged (the test default syncs every
        // 10 s, and a SIGKILL would take the schema the nodes just made).
        .env("RINGLIMIT_CASSANDRA_COMMITLOG_SYNC", "batch")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} start failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().context("no address printed")?;
    addr(line)
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}
