//! Acceptance: `loadtest --scenario hot-key` with an exact limit reports no
//! over-admission against a real ringlimit node, and exits 3 (over-admission)
//! against the ceiling server, which allows everything — so the checker can fail.
//!
//! Both servers run as processes. The node binary is `ringlimit` in the same
//! target directory as `loadtest`; the workspace test command builds it first
//! (`cargo build --workspace --bins`). Each load run lasts 2 s.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "loadtest-acceptance-token-0123456789";

/// A server process, killed on drop.
struct Server {
    child: Child,
    data_addr: String,
    admin_addr: String,
    stderr_path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

fn field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
}

/// Starts `cmd` and waits for its "… listening data_addr=… admin_addr=…" line.
fn start(mut cmd: Command, what: &str, stderr_path: PathBuf) -> Server {
    let err = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(err)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if line.contains(" listening ") {
                let _ = tx.send(line.clone());
                break;
            }
            line.clear();
        }
        // Keep draining so the server never blocks on a full pipe.
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not print its listening line within 60 s; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
    };
    let data_addr =
        field(&line, "data_addr").unwrap_or_else(|| panic!("{what}: no data_addr in {line:?}"));
    let admin_addr =
        field(&line, "admin_addr").unwrap_or_else(|| panic!("{what}: no admin_addr in {line:?}"));
    Server {
        child,
        data_addr,
        admin_addr,
        stderr_path,
    }
}

fn loadtest_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loadtest"))
}

fn ringlimit_bin() -> PathBuf {
    let dir = loadtest_bin()
        .parent()
        .map(Path::to_path_buf)
        .expect("target dir");
    let bin = dir.join(format!("ringlimit{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "the ringlimit node binary is missing at {} — build it first with `cargo build --workspace --bins` \
         (the workspace test command does), then run `cargo test -p ringlimit-loadtest` again",
        bin.display()
    );
    bin
}

/// Runs a 2 s hot-key load with a sliding-log limit of 50 per second; returns (exit code, result JSON, stdout+stderr).
fn hot_key(server: &Server, dir: &Path, name: &str) -> (i32, serde_json::Value, String) {
    let out = dir.join(format!("{name}.json"));
    let o = Command::new(loadtest_bin())
        .args([
            "--scenario",
            "hot-key",
            "--algorithm",
            "sliding_log",
            "--limit",
            "50",
            "--window-ms",
            "1000",
        ])
        .args([
            "--duration",
            "2s",
            "--connections",
            "8",
            "--quiet",
            "--cleanup",
            "--token",
            TOKEN,
        ])
        .arg("--target")
        .arg(format!("http://{}", server.data_addr))
        .arg("--admin")
        .arg(format!("http://{}", server.admin_addr))
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .expect("run loadtest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let json = std::fs::read_to_string(&out)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| panic!("{name}: no result file; output:\n{text}"));
    assert!(
        dir.join(format!("{name}.svg")).exists(),
        "{name}: no SVG plot"
    );
    (o.status.code().unwrap_or(-1), json, text)
}

#[test]
fn hot_key_finds_no_over_admission_on_ringlimit_and_catches_the_ceiling() {
    let ringlimit = ringlimit_bin();
    let tmp = tempfile::tempdir().expect("tempdir");

    // A real node with its own data dir.
    let data_dir = tmp.path().join("node-data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let mut cmd = Command::new(&ringlimit);
    cmd.env("RINGLIMIT_DATA_ADDR", "127.0.0.1:0")
        .env("RINGLIMIT_ADMIN_ADDR", "127.0.0.1:0")
        .env("RINGLIMIT_ADMIN_TOKEN", TOKEN)
        .env("RINGLIMIT_DATA_DIR", &data_dir)
        .env("RINGLIMIT_LOG_LEVEL", "warn");
    let node = start(cmd, "ringlimit", tmp.path().join("node.stderr"));
    let (code, json, text) = hot_key(&node, tmp.path(), "ringlimit");
    let oa = &json["over_admission"];
    assert_eq!(
        code,
        0,
        "loadtest against ringlimit exited {code}:\n{text}\nnode stderr:\n{}",
        node.stderr()
    );
    assert_eq!(oa["checked"], true, "{text}");
    assert_eq!(oa["report"]["over_admitted"], false, "{text}");
    assert_eq!(oa["report"]["violation_count"], 0, "{text}");
    let allowed = json["allowed"].as_u64().unwrap_or(0);
    let denied = json["denied"].as_u64().unwrap_or(0);
    // The limit was reached (so the check had something to check) and held.
    assert!(allowed >= 50, "only {allowed} allowed:\n{text}");
    assert!(denied > 0, "nothing denied:\n{text}");
    assert!(
        oa["report"]["max_in_window"].as_u64().unwrap_or(u64::MAX) <= 50,
        "{text}"
    );
    assert_eq!(json["keys"]["created"], true);
    assert_eq!(json["keys"]["deleted"], true);
    drop(node);

    // The ceiling allows everything: the checker must fail the run.
    let mut cmd = Command::new(
        loadtest_bin().with_file_name(format!("loadtest-ceiling{}", std::env::consts::EXE_SUFFIX)),
    );
    cmd.args(["--addr", "127.0.0.1:0"]);
    let ceiling = start(cmd, "loadtest-ceiling", tmp.path().join("ceiling.stderr"));
    let (code, json, text) = hot_key(&ceiling, tmp.path(), "ceiling");
    assert_eq!(
        code, 3,
        "loadtest against the ceiling should exit 3 (over-admission), got {code}:\n{text}"
    );
    assert_eq!(
        json["over_admission"]["report"]["over_admitted"], true,
        "{text}"
    );
    assert!(json["allowed"].as_u64().unwrap_or(0) > 50, "{text}");
    assert!(text.contains("OVER-ADMISSION"), "{text}");
}
