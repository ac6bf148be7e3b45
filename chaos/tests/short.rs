//! The short form of every chaos scenario: 3 nodes in network namespaces, a
//! few seconds of load, one fault, and the guarantee docs/guarantees.md
//! states for it. Needs root (`ip netns`), the `ringlimit` binary built next
//! to this test's `chaos` binary, Redis (`RINGLIMIT_TEST_REDIS_URL`) and a
//! CQL server (`RINGLIMIT_TEST_CQL`); `scripts/test.sh` provides all of it.
//! The scenarios run one at a time (each starts a cluster).
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn required() -> bool {
    ["CI", "RINGLIMIT_REQUIRE_SERVERS"].iter().any(|n| {
        std::env::var(n)
            .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    })
}

/// (redis, cql), or `None` after a notice when they are not given outside CI.
fn servers() -> Option<(String, String)> {
    let redis = std::env::var("RINGLIMIT_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let cql = std::env::var("RINGLIMIT_TEST_CQL")
        .ok()
        .filter(|v| !v.is_empty());
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    match (redis, cql, is_root) {
        (Some(r), Some(c), true) => Some((r, c)),
        (r, c, root) => {
            let why = format!(
                "chaos short scenarios need root (ip netns: {root}), RINGLIMIT_TEST_REDIS_URL ({}) and RINGLIMIT_TEST_CQL ({})",
                r.is_some(),
                c.is_some()
            );
            assert!(!required(), "{why}");
            let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
            None
        }
    }
}

fn ringlimit_bin() -> PathBuf {
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_chaos"));
    let bin = chaos.with_file_name("ringlimit");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p ringlimit-node; `cargo test --workspace` does)",
        bin.display()
    );
    bin
}

/// Runs one short scenario and returns its report.
fn scenario(name: &str) -> Option<serde_json::Value> {
    let (redis, cql) = servers()?;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args([
            "--scenario",
            name,
            "--short",
            "--redis",
            &redis,
            "--cql",
            &cql,
        ])
        .arg("--bin")
        .arg(ringlimit_bin())
        .arg("--out")
        .arg(out.path())
        .spawn()
        .unwrap();
    let pid = child.id();
    let st = child.wait().unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert!(
        out.path().join(format!("{name}.svg")).exists() && out.path().join("report.md").exists(),
        "the markdown report and the timeline are written"
    );
    // Nothing of the harness is left: no namespace (and its nodes die with
    // it: they run under PR_SET_PDEATHSIG).
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&netns.stdout).to_string();
    assert!(
        !listed.contains(&format!("rlc{pid}-")),
        "namespaces left behind: {listed}"
    );
    let r = report["reports"][0].clone();
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(0),
        "{name} ran: {}",
        report["errors"]
    );
    assert!(
        r["held"] == true && st.success(),
        "{name}: the guarantee '{}' did not hold: {}",
        r["guarantee"],
        r["why_not"]
    );
    Some(r)
}

#[test]
fn kill_owner() {
    if let Some(r) = scenario("kill-owner") {
        assert!(r["requests"].as_u64().unwrap() > 0);
        // Billed: every one-minute period of the run closed; the judge
        // holds the billed units equal to what usage holds.
        assert!(
            r["billed_units"].as_u64().is_some(),
            "{}",
            r["billed_units"]
        );
    }
}

#[test]
fn stop() {
    scenario("stop");
}

#[test]
fn partition() {
    scenario("partition");
}

#[test]
fn asymmetric() {
    scenario("asymmetric");
}

#[test]
fn join() {
    if let Some(r) = scenario("join") {
        assert_eq!(r["over_admission"]["units_over"], 0);
    }
}

#[test]
fn drain() {
    if let Some(r) = scenario("drain") {
        assert_eq!(r["over_admission"]["units_over"], 0);
    }
}

/// Fails today (a known defect, docs/guarantees.md): with debug-build nodes
/// on a loaded machine, 2 of 3 short runs over-admitted one key's window by
/// 9 to 18 units around a node's return; usage stayed exact. The full run
/// (release nodes) holds. Run it with `--ignored` while fixing it.
#[test]
#[ignore = "known defect: a rolling restart can over-admit one window (docs/guarantees.md)"]
fn rolling_restart() {
    if let Some(r) = scenario("rolling-restart") {
        assert_eq!(r["over_admission"]["units_over"], 0);
        assert_eq!(r["usage_units"], r["allowed_units"]);
    }
}

#[test]
fn redis_restart() {
    if let Some(r) = scenario("redis-restart") {
        assert_eq!(r["over_admission"]["units_over"], 0);
        assert!(
            r["events"].to_string().contains("Redis restarted"),
            "{}",
            r["events"]
        );
    }
}

#[test]
fn cql_restart() {
    if let Some(r) = scenario("cql-restart") {
        assert_eq!(r["over_admission"]["units_over"], 0);
        assert!(
            r["events"].to_string().contains("the CQL server restarted"),
            "{}",
            r["events"]
        );
    }
}
