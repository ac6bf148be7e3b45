//! Secrets stay secret: the cluster cookie's length is checked at start,
//! no token, cookie or password is printed (check-config, start-up log,
//! webhook logs), the key owner's webhook secret is write-only, the data
//! directory and its files are private, and a symbolic link where the admin
//! token file belongs is refused.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The binary under `umask 022` (the usual default, which leaves files
/// readable by others unless the node narrows them), with only `env`.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_ringlimit"))
        .args(args)
        .env_clear()
        .envs(common::profile_env())
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Waits for the process to exit, at most `secs` seconds (killed then).
fn wait_exit(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = ringlimit_actors::clock::monotonic() + Duration::from_secs(secs);
    while ringlimit_actors::clock::monotonic() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs the binary to its end (at most 20 s): (exit code, stdout + stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_exit(&mut child, 20);
    let text = format!("{}{}", t.join().unwrap(), e.join().unwrap());
    (status.and_then(|s| s.code()), text)
}

/// A node started by hand: its address line, and its logs (stderr) once stopped.
struct Started {
    child: Child,
    data: String,
    admin: String,
    logs: std::thread::JoinHandle<String>,
}

impl Started {
    fn start(env: &[(&str, &str)]) -> Started {
        let mut child = command(&[], env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let logs = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if !line.starts_with("ringlimit listening") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node did not start: {line:?}\n{}", logs.join().unwrap());
        }
        let field = |name: &str| {
            let v = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap();
            format!("http://{v}")
        };
        Started {
            child,
            data: field("data_addr"),
            admin: field("admin_addr"),
            logs,
        }
    }

    /// Stops the node (SIGTERM) and returns everything it logged.
    fn stop(mut self) -> String {
        unsafe_kill(self.child.id() as i32, SIGTERM);
        if wait_exit(&mut self.child, 20).is_none() {
            panic!("the node did not stop");
        }
        self.logs.join().unwrap()
    }
}

fn base_env<'a>(dir: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("RINGLIMIT_DATA_ADDR", "127.0.0.1:0"),
        ("RINGLIMIT_ADMIN_ADDR", "127.0.0.1:0"),
        ("RINGLIMIT_ADMIN_TOKEN", TOKEN),
        ("RINGLIMIT_DATA_DIR", dir),
    ]
}

#[test]
fn a_cookie_shorter_than_32_characters_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let short = "s".repeat(31);
    let mut env = base_env(d);
    env.push(("RINGLIMIT_COOKIE", &short));
    let (code, out) = run(&[], &env);
    assert_eq!(code, Some(64), "exit code 64 (config error): {out}");
    assert!(out.contains("RINGLIMIT_COOKIE"), "names the cookie: {out}");
    assert!(!out.contains(&short), "does not print the cookie: {out}");
    // Also in a cluster's settings, and through check-config.
    let (code, out) = run(&["check-config"], &env);
    assert_eq!(code, Some(64), "{out}");
    // 32 characters start.
    let ok = "s".repeat(32);
    let mut env = base_env(d);
    env.push(("RINGLIMIT_COOKIE", &ok));
    let node = Started::start(&env);
    node.stop();
}

#[test]
fn check_config_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ringlimit.toml");
    std::fs::write(
        &cfg,
        r#"
[alerts]
owner_secret = "owner-signing-secret-value"
[[alerts.webhooks]]
name = "ops"
url = "https://hooks.example.com/services/hook-path-secret?token=hook-query-secret"
secret = "endpoint-signing-secret-value"
"#,
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let token = "admin-token-secret-value-0123456789";
    let cookie = "cluster-cookie-secret-value-0123456789abcdef";
    let redis = "redis://default:redis-password-secret@127.0.0.1:6379/0";
    let c = cfg.to_str().unwrap();
    let env = [
        ("RINGLIMIT_ADMIN_TOKEN", token),
        ("RINGLIMIT_DATA_DIR", d),
        ("RINGLIMIT_COOKIE", cookie),
        ("RINGLIMIT_REDIS_URL", redis),
        ("RINGLIMIT_CONFIG", c),
    ];
    let (code, out) = run(&["check-config"], &env);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("config is valid"), "{out}");
    for secret in [
        token,
        cookie,
        "redis-password-secret",
        "owner-signing-secret-value",
        "endpoint-signing-secret-value",
        "hook-path-secret",
        "hook-query-secret",
    ] {
        assert!(!out.contains(secret), "check-config shows {secret}:\n{out}");
    }
    // What is not secret is still there to check.
    assert!(
        out.contains("redis://default:<redacted>@127.0.0.1:6379/0"),
        "{out}"
    );
    assert!(out.contains("https://hooks.example.com"), "{out}");
}

#[test]
fn the_start_up_log_hides_the_redis_password() {
    let Ok(url) = std::env::var("RINGLIMIT_TEST_REDIS_URL") else {
        assert!(!servers_required(), "RINGLIMIT_TEST_REDIS_URL is not set");
        eprintln!("skipping: RINGLIMIT_TEST_REDIS_URL is not set");
        return;
    };
    // The default user of a Redis without passwords accepts any password.
    let host = url.strip_prefix("redis://").unwrap();
    let with_password = format!("redis://default:redis-password-in-log@{host}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut env = base_env(d);
    env.push(("RINGLIMIT_REDIS_URL", &with_password));
    env.push(("RINGLIMIT_LOG_LEVEL", "info"));
    let logs = Started::start(&env).stop();
    assert!(
        logs.contains("written behind to Redis"),
        "the Redis line is logged: {logs}"
    );
    assert!(!logs.contains("redis-password-in-log"), "{logs}");
    assert!(logs.contains("<redacted>"), "{logs}");
}

#[cfg(unix)]
#[test]
fn the_data_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let d = data.to_str().unwrap();
    // No admin token configured: the node makes its token file.
    let env = [
        ("RINGLIMIT_DATA_ADDR", "127.0.0.1:0"),
        ("RINGLIMIT_ADMIN_ADDR", "127.0.0.1:0"),
        ("RINGLIMIT_DATA_DIR", d),
    ];
    let node = Started::start(&env);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data directory");
    let files: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files.iter().any(|p| p.ends_with("admin-token")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|p| p.ends_with("ringlimit.redb")),
        "{files:?}"
    );
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    node.stop();
    // An existing directory and database that others could read are narrowed.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = data.join("ringlimit.redb");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let node = Started::start(&env);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&db), 0o600);
    node.stop();
}

#[cfg(unix)]
#[test]
fn a_symlinked_admin_token_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let d = data.to_str().unwrap();
    let env = [
        ("RINGLIMIT_DATA_ADDR", "127.0.0.1:0"),
        ("RINGLIMIT_ADMIN_ADDR", "127.0.0.1:0"),
        ("RINGLIMIT_DATA_DIR", d),
    ];
    // A link to a file elsewhere: not read as the token.
    let elsewhere = t.path().join("elsewhere");
    std::fs::write(&elsewhere, "a-token-someone-else-planted-0123456789\n").unwrap();
    let link = data.join("admin-token");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let (code, out) = run(&[], &env);
    assert!(code.is_some_and(|c| c != 0), "refused: {code:?} {out}");
    assert!(out.contains("symbolic link"), "a clear error: {out}");
    assert!(out.contains("admin-token"), "names the file: {out}");
    // A dangling link: no token written through it.
    std::fs::remove_file(&link).unwrap();
    let target = t.path().join("written-through");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (code, out) = run(&[], &env);
    assert!(code.is_some_and(|c| c != 0), "refused: {code:?} {out}");
    assert!(out.contains("symbolic link"), "{out}");
    assert!(!target.exists(), "nothing written through the link");
}

/// A webhook receiver: (path and query, signature header, body); the first
/// `fail` posts answer 500.
#[derive(Default)]
struct Receiver {
    got: parking_lot::Mutex<Vec<(String, Option<String>, String)>>,
    fail: AtomicU32,
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Arc<Receiver>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    let sig = headers
        .get("x-ringlimit-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    r.got.lock().push((uri.to_string(), sig, body));
    let failing = r
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
        .is_ok();
    if failing {
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    } else {
        axum::http::StatusCode::OK
    }
}

fn signed_with(secret: &str, sig: &str, body: &str) -> bool {
    let Some((t, _)) = sig.strip_prefix("t=").and_then(|s| s.split_once(",v1=")) else {
        return false;
    };
    let t: u64 = t.parse().unwrap();
    ringlimit_actors::pipeline::alerts::signature(secret, t, body.as_bytes()) == sig
}

async fn admin(node: &Started, method: Method, path: &str, body: Option<Value>) -> (u16, String) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{}{path}", node.admin))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_secret_is_write_only_and_webhook_urls_are_not_logged() {
    let rx = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::post(receive))
        .with_state(Arc::clone(&rx));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ringlimit.toml");
    std::fs::write(
        &cfg,
        "[pipelines]\ntick_ms = 20\n[alerts]\nusage_percent = 80\nmax_attempts = 3\ninitial_backoff_ms = 40\nmax_backoff_ms = 200\ntimeout_ms = 2000\n",
    )
    .unwrap();
    let d = dir.path().join("data");
    let (d, c) = (d.to_str().unwrap(), cfg.to_str().unwrap());
    let mut env = base_env(d);
    env.push(("RINGLIMIT_CONFIG", c));
    env.push((
        "RINGLIMIT_LOG_LEVEL",
        "info,ringlimit_actors::pipeline::alerts=debug",
    ));
    let node = Started::start(&env);

    let secret = "whsec-owner-signing-secret-42";
    let hook = format!("{base}/owner/hook-path-token?token=hook-query-token");
    let (s, created) = admin(
        &node,
        Method::POST,
        "/api/v1/keys",
        Some(json!({"owner": "acme", "tier": "free",
            "limits": [limit("per-minute", "sliding_log", 10, 60_000)],
            "metadata": {"webhook_url": hook, "webhook_secret": secret, "team": "red"}})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert!(
        !created.contains(secret),
        "create shows the secret: {created}"
    );
    let v: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(v["webhook_secret_set"], true, "{v}");
    assert!(v["metadata"].get("webhook_secret").is_none(), "{v}");
    let id = v["key_id"].as_str().unwrap().to_string();
    let key = v["api_key"].as_str().unwrap().to_string();

    // GET and list carry the flag, not the secret.
    let (s, got) = admin(&node, Method::GET, &format!("/api/v1/keys/{id}"), None).await;
    assert_eq!(s, 200, "{got}");
    assert!(!got.contains(secret), "GET shows the secret: {got}");
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["webhook_secret_set"], true, "{v}");
    assert_eq!(v["metadata"]["webhook_url"], hook.as_str());
    let (s, list) = admin(&node, Method::GET, "/api/v1/keys", None).await;
    assert_eq!(s, 200, "{list}");
    assert!(!list.contains(secret), "the list shows the secret: {list}");
    let v: Value = serde_json::from_str(&list).unwrap();
    let listed = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == id.as_str())
        .unwrap();
    assert_eq!(listed["webhook_secret_set"], true, "{listed}");

    // A bad secret is a 4xx (422, as every invalid field) that changes nothing.
    let (s, body) = admin(
        &node,
        Method::PATCH,
        &format!("/api/v1/keys/{id}"),
        Some(json!({"metadata": {"webhook_url": hook, "webhook_secret": 42}})),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("webhook_secret"), "{body}");
    let (_, got) = admin(&node, Method::GET, &format!("/api/v1/keys/{id}"), None).await;
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["webhook_secret_set"], true, "{v}");
    assert_eq!(v["metadata"]["team"], "red", "{v}");

    // New metadata that leaves the secret out keeps it.
    let (s, patched) = admin(
        &node,
        Method::PATCH,
        &format!("/api/v1/keys/{id}"),
        Some(json!({"metadata": {"webhook_url": hook, "team": "blue"}})),
    )
    .await;
    assert_eq!(s, 200, "{patched}");
    assert!(!patched.contains(secret), "{patched}");
    let v: Value = serde_json::from_str(&patched).unwrap();
    assert_eq!(v["webhook_secret_set"], true, "{v}");
    assert_eq!(v["metadata"]["team"], "blue");

    // The owner's notice is still signed with it (the first attempt fails,
    // so the delivery logs a failed attempt).
    rx.fail.store(1, Ordering::SeqCst);
    for _ in 0..9 {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/validate", node.data))
            .json(&json!({"api_key": key, "cost": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    assert!(
        eventually(20, async || rx.got.lock().len() >= 2).await,
        "the owner's notice arrives, retried once"
    );
    for (path, sig, body) in rx.got.lock().iter() {
        assert!(path.starts_with("/owner/hook-path-token"), "{path}");
        let sig = sig.as_deref().expect("signed");
        assert!(
            signed_with(secret, sig, body),
            "signed with the kept secret"
        );
    }

    // An explicit null clears it.
    let (s, cleared) = admin(
        &node,
        Method::PATCH,
        &format!("/api/v1/keys/{id}"),
        Some(json!({"metadata": {"webhook_url": hook, "webhook_secret": null}})),
    )
    .await;
    assert_eq!(s, 200, "{cleared}");
    let v: Value = serde_json::from_str(&cleared).unwrap();
    assert_eq!(v["webhook_secret_set"], false, "{v}");

    let logs = node.stop();
    assert!(
        logs.contains("webhook attempt failed"),
        "the failed attempt is logged: {logs}"
    );
    for s in ["hook-path-token", "hook-query-token", secret] {
        assert!(!logs.contains(s), "the log shows {s}: {logs}");
    }
}
