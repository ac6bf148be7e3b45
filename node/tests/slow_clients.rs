//! Slow clients cannot starve a node: thousands of connections that trickle
//! their headers a byte a second neither exhaust its file descriptors nor
//! keep a normal caller from its answer, and each is closed by the node once
//! its header timeout has passed.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, limit};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW: usize = 2_000;
/// Longer than any header timeout set here: a connection still open then
/// was never going to be closed.
const NEVER: Duration = Duration::from_secs(60);

fn set_soft_nofile(n: Option<u64>) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: n.or(now.maximum),
            maximum: now.maximum,
        },
    )
    .unwrap();
}

/// Opens a connection that sends the start of a request one byte a second,
/// never finishing its headers; counts it in `closed` once the server has
/// closed it.
async fn trickle(addr: String, closed: Arc<AtomicUsize>) -> Option<tokio::task::JoinHandle<()>> {
    let mut s = TcpStream::connect(&addr).await.ok()?;
    Some(tokio::spawn(async move {
        let head = b"POST /api/v1/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Padding: ";
        let mut buf = [0u8; 256];
        for i in 0.. {
            let byte = head.get(i).copied().unwrap_or(b'a');
            if s.write_all(&[byte]).await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) | Err(_) => {}
            }
        }
        closed.fetch_add(1, Ordering::SeqCst);
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_neither_starve_the_node_nor_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    // The node starts with a common default soft limit on open files, as it
    // would from a shell; it must raise it itself to carry these clients.
    set_soft_nofile(Some(1_024));
    let node = Node::start(
        dir.path(),
        &[
            ("RINGLIMIT_HTTP_HEADER_TIMEOUT_MS", "3000"),
            ("RINGLIMIT_HTTP_MAX_CONNECTIONS", "4000"),
        ],
    );
    // This process holds the client side of every connection.
    set_soft_nofile(None);
    let (_, key) = node
        .create_key(json!([limit("s", "fixed_window", 1_000, 1_000)]))
        .await;
    let addr = node.data.trim_start_matches("http://").to_string();
    let closed = Arc::new(AtomicUsize::new(0));
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        if let Some(t) = trickle(addr.clone(), Arc::clone(&closed)).await {
            slow.push(t);
        }
    }
    assert!(
        slow.len() >= SLOW / 2,
        "only {} connections opened",
        slow.len()
    );

    // A normal caller, on a connection of its own, is answered.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(NEVER)
        .build()
        .unwrap();
    let r = fresh
        .post(format!("{}/api/v1/validate", node.data))
        .json(&json!({"api_key": key, "cost": 1}))
        .send()
        .await
        .expect("a normal caller is answered while slow clients hold connections");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["allowed"], true, "{v}");

    // Every trickling connection is closed by the node.
    let all = futures_util::future::join_all(slow);
    assert!(
        tokio::time::timeout(NEVER, all).await.is_ok(),
        "{} of the slow connections were closed by the node; the rest stayed open",
        closed.load(Ordering::SeqCst)
    );
    // And the node still answers.
    assert_eq!(node.validate(&key, 1).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_cap_are_closed_at_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("RINGLIMIT_HTTP_MAX_CONNECTIONS", "20")]);
    let addr = node.data.trim_start_matches("http://").to_string();
    // 20 idle connections fill the data plane's cap.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The next one is closed by the node without a request.
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(NEVER, extra.read(&mut buf))
        .await
        .expect("a connection above the cap is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    // The admin plane has a cap of its own and answers; it counted the refusal.
    let (s, _) = node.admin(reqwest::Method::GET, "/api/v1/keys", None).await;
    assert_eq!(s, 200);
    let metrics = node
        .http
        .get(format!("{}/metrics", node.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("ringlimit_http_connections_refused_total")
                && l.contains("plane=\"data\"")
        })
        .unwrap_or_else(|| panic!("no refusal counted: {metrics}"));
    let n: f64 = refused.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{refused}");
    // Freed slots are usable again.
    drop(held);
    assert!(
        common::eventually(10, async || {
            fresh_validate_status(&node).await == Some(401)
        })
        .await
    );
}

async fn fresh_validate_status(node: &Node) -> Option<u16> {
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    c.post(format!("{}/api/v1/validate", node.data))
        .json(&json!({"api_key": "rl_nope_nope", "cost": 1}))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Sends headers announcing a body of 100 bytes and only 10 of them; the
/// node's answer and whether it then closed the connection.
async fn partial_body(addr: &str, path: &str) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"api_key\"",
        common::TOKEN
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(NEVER, s.read_to_end(&mut answer)).await;
    (String::from_utf8_lossy(&answer).into_owned(), read.is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408_on_both_planes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("RINGLIMIT_HTTP_BODY_TIMEOUT_MS", "1000")]);
    for (base, path) in [
        (&node.data, "/api/v1/validate"),
        (&node.data, "/api/v1/validate/batch"),
        (&node.admin, "/api/v1/keys"),
    ] {
        let addr = base.trim_start_matches("http://");
        let (answer, closed) = partial_body(addr, path).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("\"request_timeout\""), "{path}: {answer}");
        assert!(closed, "{path}: the connection is closed after the 408");
    }
    let (_, v) = node.admin(reqwest::Method::GET, "/api/v1/keys", None).await;
    assert_eq!(
        v["keys"].as_array().unwrap().len(),
        0,
        "nothing was created: {v}"
    );
}
