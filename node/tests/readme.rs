//! The README's run command and quick start, run verbatim against a fresh node.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn quickstart() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("<!-- quickstart:begin -->")
        .expect("quickstart markers");
    let end = readme.find("<!-- quickstart:end -->").unwrap();
    let block = &readme[start..end];
    let body = block.split("```bash").nth(1).unwrap();
    body.split("```").next().unwrap().to_string()
}

#[test]
fn readme_quickstart_works_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    // What `cargo run --release --bin ringlimit` runs: the binary with its defaults,
    // in the directory the reader is in.
    let mut node = Command::new(env!("CARGO_BIN_EXE_ringlimit"))
        .current_dir(dir.path())
        .env_remove("RINGLIMIT_ADMIN_TOKEN")
        .env_remove("RINGLIMIT_DATA_DIR")
        .env_remove("RINGLIMIT_DATA_ADDR")
        .env_remove("RINGLIMIT_ADMIN_ADDR")
        .env_remove("RINGLIMIT_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(node.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("data_addr=127.0.0.1:8080") && line.contains("admin_addr=127.0.0.1:8081"),
        "{line}"
    );
    assert!(
        dir.path().join("data/admin-token").exists(),
        "the token is written where the README says"
    );

    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(quickstart())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let _ = node.kill();
    let _ = node.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quick start failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let codes: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.len() == 3 && l.parse::<u16>().is_ok())
        .collect();
    assert_eq!(
        codes,
        vec!["200", "200", "200", "200", "200", "429", "204", "401"],
        "{stdout}"
    );
    assert!(stdout.contains("\"api_key\":\"rl_"), "{stdout}");
    assert!(stdout.contains("unknown or revoked api_key"), "{stdout}");
}
