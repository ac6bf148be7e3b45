//! The pipelines end to end, on real node processes: billing equals
//! admitted (embedded store and ScyllaDB), idempotent billing, abuse
//! suspension with audit, IP blocks, webhook delivery with retries, dead
//! letters and re-drive, violations listing, analytics, and queues drained
//! on SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use reqwest::Method;
use ringlimit_actors::pipeline::alerts::hmac_sha256;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn now_ms() -> u64 {
    ringlimit_actors::clock::wall_ms()
}

/// Writes `toml` as the node's config file; returns the env entry naming it.
fn config(dir: &Path, toml: &str) -> String {
    let p = dir.join("ringlimit.toml");
    std::fs::write(&p, toml).unwrap();
    p.to_str().unwrap().to_string()
}

async fn validate_ip(node: &Node, key: &str, ip: &str) -> (u16, Value) {
    let r = node
        .http
        .post(format!("{}/api/v1/validate", node.data))
        .json(&json!({"api_key": key, "cost": 1, "client_ip": ip}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

// ------------------------------------------------------------ billing

const MINUTE: u64 = 60_000;

/// 10 000 checks over 5 keys, some denied; graceful shutdown; restart; close
/// the periods the load touched; billed units per key == 200s counted.
async fn billing_equals_admitted(env_extra: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#"
billing_period = "1m"
[billing]
close_delay_ms = 1000
[billing.prices.free]
included_units = 500
unit_price = "0.002"
currency = "EUR"
"#,
    );
    let mut env = vec![
        ("RINGLIMIT_CONFIG", cfg.as_str()),
        ("RINGLIMIT_FLUSH_INTERVAL_MS", "50"),
    ];
    env.extend_from_slice(env_extra);
    let mut node = Node::start(dir.path(), &env);
    let mut keys = Vec::new();
    for i in 0..5u64 {
        // Different limits, so every key has its own share of denials.
        keys.push(
            node.create_key(json!([limit(
                "per-minute",
                "sliding_log",
                1_000 + 300 * i,
                60_000
            )]))
            .await,
        );
    }
    let ok: Arc<Vec<AtomicU32>> = Arc::new((0..5).map(|_| AtomicU32::new(0)).collect());
    let denied = Arc::new(AtomicU32::new(0));
    let started = now_ms();
    let mut tasks = Vec::new();
    for w in 0..20usize {
        let http = node.http.clone();
        let url = format!("{}/api/v1/validate", node.data);
        let keys: Vec<String> = keys.iter().map(|k| k.1.clone()).collect();
        let ok = Arc::clone(&ok);
        let denied = Arc::clone(&denied);
        tasks.push(tokio::spawn(async move {
            for i in 0..500usize {
                let k = (w + i) % 5;
                let r = http
                    .post(&url)
                    .json(&json!({"api_key": keys[k], "cost": 1}))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => {
                        ok[k].fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {
                        denied.fetch_add(1, Ordering::Relaxed);
                    }
                    s => panic!("unexpected status {s}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let finished = now_ms();
    let counted: Vec<u64> = ok
        .iter()
        .map(|a| u64::from(a.load(Ordering::Relaxed)))
        .collect();
    let denied = denied.load(Ordering::Relaxed);
    assert_eq!(counted.iter().sum::<u64>() + u64::from(denied), 10_000);
    assert!(denied > 0, "the load must include denials");
    assert!(node.signal_and_wait(SIGTERM).success());

    let node = Node::start(dir.path(), &env);
    // Wait until the last period the load touched has ended.
    let first = started - started % MINUTE;
    let last = finished - finished % MINUTE;
    while now_ms() < last + MINUTE + 100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut billed: HashMap<String, u64> = HashMap::new();
    let mut period = first;
    let mut first_pass = Vec::new();
    while period <= last {
        let (s, v) = node
            .admin(
                Method::POST,
                "/api/v1/billing/close",
                Some(json!({"period": period.to_string()})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        for r in v["records"].as_array().unwrap() {
            *billed
                .entry(r["key_id"].as_str().unwrap().to_string())
                .or_default() += r["units"].as_u64().unwrap();
            assert_eq!(r["period_start_ms"], period);
            assert_eq!(r["currency"], "EUR");
        }
        first_pass.push(v["records"].clone());
        period += MINUTE;
    }
    for (i, (id, _)) in keys.iter().enumerate() {
        assert_eq!(
            billed.get(id).copied().unwrap_or(0),
            counted[i],
            "key {id}: billed vs 200s counted"
        );
    }
    // Idempotent: closing again gives the same records, and each period
    // still holds exactly one record per key.
    let mut period = first;
    let mut i = 0;
    while period <= last {
        let (_, again) = node
            .admin(
                Method::POST,
                "/api/v1/billing/close",
                Some(json!({"period": period.to_string()})),
            )
            .await;
        let strip = |v: &Value| {
            let mut v = v.clone();
            for r in v.as_array_mut().unwrap() {
                r.as_object_mut().unwrap().remove("computed_at_ms");
            }
            v
        };
        assert_eq!(strip(&again["records"]), strip(&first_pass[i]));
        let (s, listed) = node
            .admin(
                Method::GET,
                &format!("/api/v1/billing?period={period}"),
                None,
            )
            .await;
        assert_eq!(s, 200);
        let ids: Vec<&str> = listed["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key_id"].as_str().unwrap())
            .collect();
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(ids.len(), 5, "one record per key: {listed}");
        assert_eq!(unique.len(), 5);
        period += MINUTE;
        i += 1;
    }
    // The per-key view with the amount: overage above 500 included units at 0.002.
    let (id, _) = &keys[4];
    let (s, v) = node
        .admin(
            Method::GET,
            &format!("/api/v1/billing/{id}?period={last}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let r = &v["records"][0];
    let units = r["units"].as_u64().unwrap();
    assert_eq!(
        r["overage_units"].as_u64().unwrap(),
        units.saturating_sub(500)
    );
    assert_eq!(
        r["amount_nanos"].as_u64().unwrap(),
        units.saturating_sub(500) * 2_000_000
    );
    eprintln!(
        "billing equals admitted: {counted:?} admitted, {denied} denied, over {} ms",
        finished - started
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_equals_admitted_on_the_embedded_store() {
    billing_equals_admitted(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_equals_admitted_on_scylla() {
    let Some(addr) = cql() else { return };
    let ks = keyspace("bill");
    migrate(&addr, &ks);
    billing_equals_admitted(&[
        ("RINGLIMIT_SCYLLA_NODES", addr.as_str()),
        ("RINGLIMIT_SCYLLA_KEYSPACE", ks.as_str()),
    ])
    .await;
}

/// Saturation, small: 400 keys checked from 8 connections in batches of 100
/// as fast as the node answers, with pipeline queues of 4 events. The
/// violations queue overflows (observability: dropped and counted); billing
/// never drops, and the billed units equal the 200s counted, key by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saturation_drops_no_billing_and_bills_every_admitted_unit() {
    const KEYS: usize = 400;
    const WORKERS: usize = 8;
    const BATCHES: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#"
billing_period = "1m"
[billing]
close_delay_ms = 500
[pipelines]
queue_capacity = 4
batch_max = 2
tick_ms = 50
"#,
    );
    let env = [
        ("RINGLIMIT_CONFIG", cfg.as_str()),
        ("RINGLIMIT_FLUSH_INTERVAL_MS", "20"),
    ];
    let node = Node::start(dir.path(), &env);
    let mut keys = Vec::with_capacity(KEYS);
    for _ in 0..KEYS {
        keys.push(
            node.create_key(json!([limit("per-minute", "sliding_log", 60, 60_000)]))
                .await,
        );
    }
    let keys = Arc::new(keys);
    let ok: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
    let denied = Arc::new(AtomicU32::new(0));
    let started = now_ms();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let http = node.http.clone();
        let url = format!("{}/api/v1/validate/batch", node.data);
        let keys = Arc::clone(&keys);
        let ok = Arc::clone(&ok);
        let denied = Arc::clone(&denied);
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let picked: Vec<usize> = (0..100)
                    .map(|i| (w * 7919 + b * 101 + i * 13) % KEYS)
                    .collect();
                let checks: Vec<Value> = picked
                    .iter()
                    .map(|&k| json!({"api_key": keys[k].1, "cost": 1}))
                    .collect();
                let r = http
                    .post(&url)
                    .json(&json!({ "checks": checks }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let v: Value = r.json().await.unwrap();
                for (res, &k) in v["results"].as_array().unwrap().iter().zip(&picked) {
                    match res["status"].as_u64().unwrap() {
                        200 => {
                            ok[k].fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {
                            denied.fetch_add(1, Ordering::Relaxed);
                        }
                        s => panic!("unexpected status {s}: {res}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let finished = now_ms();
    let counted: Vec<u64> = ok
        .iter()
        .map(|a| u64::from(a.load(Ordering::Relaxed)))
        .collect();
    let denied = u64::from(denied.load(Ordering::Relaxed));
    assert_eq!(
        counted.iter().sum::<u64>() + denied,
        (WORKERS * BATCHES * 100) as u64
    );
    assert!(denied > 0, "the load must include denials");

    let metrics = || async {
        node.http
            .get(format!("{}/metrics", node.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let dropped = |text: &str, pipeline: &str| -> u64 {
        let prefix = format!("ringlimit_pipeline_dropped_total{{pipeline=\"{pipeline}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|n| n.trim().parse().unwrap())
            .unwrap_or(0)
    };
    let text = metrics().await;
    assert!(
        dropped(&text, "violations") > 0,
        "the queues were saturated: violations beyond their bound were dropped and counted\n{text}"
    );

    // Wait until the last period the load touched has closed, then bill it.
    let first = started - started % MINUTE;
    let last = finished - finished % MINUTE;
    while now_ms() < last + MINUTE + 600 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut billed: HashMap<String, u64> = HashMap::new();
    let mut period = first;
    while period <= last {
        let (s, v) = node
            .admin(
                Method::POST,
                "/api/v1/billing/close",
                Some(json!({"period": period.to_string()})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        for r in v["records"].as_array().unwrap() {
            *billed
                .entry(r["key_id"].as_str().unwrap().to_string())
                .or_default() += r["units"].as_u64().unwrap();
        }
        period += MINUTE;
    }
    for (i, (id, _)) in keys.iter().enumerate() {
        assert_eq!(
            billed.get(id).copied().unwrap_or(0),
            counted[i],
            "key {id}: billed vs 200s counted"
        );
    }
    let text = metrics().await;
    assert_eq!(
        dropped(&text, "billing"),
        0,
        "billing dropped events\n{text}"
    );
    assert_eq!(dropped(&text, "usage"), 0, "usage dropped events\n{text}");
    eprintln!(
        "saturation: {} admitted, {denied} denied, over {} ms; violations dropped {}",
        counted.iter().sum::<u64>(),
        finished - started,
        dropped(&text, "violations")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_rejects_bad_and_open_periods() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (id, _) = node
        .create_key(json!([limit("m", "fixed_window", 10, 60_000)]))
        .await;
    for (body, want) in [
        (json!({"period": "2026-13"}), [422, 422]),
        (json!({"period": "soon"}), [422, 422]),
        (json!({}), [400, 422]),
        (json!({"period": "2999-01"}), [409, 409]),
    ] {
        let (s, v) = node
            .admin(Method::POST, "/api/v1/billing/close", Some(body.clone()))
            .await;
        assert!(want.contains(&s), "{body} -> {s} {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (s, _) = node
        .admin(Method::GET, "/api/v1/billing/rl_nope?period=2026-01", None)
        .await;
    assert_eq!(s, 404);
    let (s, v) = node
        .admin(Method::GET, &format!("/api/v1/billing/{id}?period=x"), None)
        .await;
    assert_eq!(s, 422, "{v}");
    // A closed month (monthly is the default): one record, 0 units.
    let (s, v) = node
        .admin(
            Method::POST,
            "/api/v1/billing/close",
            Some(json!({"period": "2026-10"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

// ------------------------------------------------------------ abuse, blocks, audit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_rule_suspends_the_key_then_the_suspension_lifts_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#"
[pipelines]
tick_ms = 20
[[abuse_rules]]
name = "denial-storm"
type = "violations"
max = 5
window_ms = 10000
suspend_for_ms = 3000
"#,
    );
    let node = Node::start(dir.path(), &[("RINGLIMIT_CONFIG", cfg.as_str())]);
    let (id, key) = node
        .create_key(json!([limit("s", "fixed_window", 2, 1_000)]))
        .await;
    let (other_id, other) = node
        .create_key(json!([limit("s", "fixed_window", 100, 1_000)]))
        .await;
    let mut denied = 0;
    for _ in 0..12 {
        if node.validate(&key, 1).await.0 == 429 {
            denied += 1;
        }
    }
    assert!(denied > 5, "{denied} denials");
    let mut body = Value::Null;
    assert!(
        eventually(10, async || {
            let (s, b) = node.validate(&key, 1).await;
            if s == 429 {
                denied += 1;
            }
            body = b;
            s == 403
        })
        .await,
        "the key was suspended"
    );
    assert_eq!(body["error"]["code"], "suspended");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("denial-storm"), "{body}");
    // The caller learns the rule, never its thresholds (the audit keeps them).
    for threshold in ["5", "10000", "violations in"] {
        assert!(!message.contains(threshold), "{body}");
    }
    let until = body["suspended_until_ms"]
        .as_u64()
        .expect("the end of the suspension");
    assert!(until > now_ms() && until <= now_ms() + 3_000, "{until}");
    // Other keys are untouched.
    assert_eq!(node.validate(&other, 1).await.0, 200);
    // The suspension lifts by itself.
    while now_ms() < until + 50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        node.validate(&key, 1).await.0,
        200,
        "works again after the suspension"
    );
    // Audit log: who, what, when, why.
    let (s, v) = node.admin(Method::GET, "/api/v1/audit", None).await;
    assert_eq!(s, 200);
    let entry = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "key.suspend" && e["target_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no audit entry: {v}"))
        .clone();
    assert_eq!(entry["actor"], "abuse:denial-storm");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("more than 5 violations")
    );
    assert_eq!(entry["details"]["suspended_until_ms"], until);
    // An alert was raised for the suspension, once.
    let (_, v) = node
        .admin(Method::GET, &format!("/api/v1/alerts?key_id={id}"), None)
        .await;
    let n = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "key_suspended")
        .count();
    assert_eq!(n, 1, "{v}");
    // Violations are listed by key, newest first, and paged.
    let (s, v) = node
        .admin(
            Method::GET,
            &format!("/api/v1/violations?key_id={id}&limit=3"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let page1 = v["violations"].as_array().unwrap().clone();
    assert_eq!(page1.len(), 3);
    assert_eq!(v["next_page"], 2);
    assert!(
        page1
            .iter()
            .all(|x| x["key_id"] == id.as_str() && x["limit_name"] == "s" && x["cost"] == 1)
    );
    assert!(
        page1
            .windows(2)
            .all(|w| w[0]["at_ms"].as_u64() >= w[1]["at_ms"].as_u64())
    );
    let mut all = Vec::new();
    let mut page = 1;
    loop {
        let (_, v) = node
            .admin(
                Method::GET,
                &format!("/api/v1/violations?key_id={id}&limit=3&page={page}"),
                None,
            )
            .await;
        all.extend(
            v["violations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].as_str().unwrap().to_string()),
        );
        match v["next_page"].as_u64() {
            Some(p) => page = p as u32,
            None => break,
        }
    }
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(all.len(), denied, "every denial is one violation");
    assert_eq!(unique.len(), denied);
    let (_, v) = node
        .admin(
            Method::GET,
            &format!("/api/v1/violations?key_id={other_id}"),
            None,
        )
        .await;
    assert_eq!(v["violations"].as_array().unwrap().len(), 0);
    // A time range in the future holds nothing; bad queries are 4xx.
    let (_, v) = node
        .admin(
            Method::GET,
            &format!(
                "/api/v1/violations?from={}&to={}",
                now_ms() + 60_000,
                now_ms() + 120_000
            ),
            None,
        )
        .await;
    assert_eq!(v["violations"].as_array().unwrap().len(), 0);
    for q in ["page=0", "limit=0", "from=10&to=5", "bogus=1", "from=x"] {
        let (s, v) = node
            .admin(Method::GET, &format!("/api/v1/violations?{q}"), None)
            .await;
        assert!(s == 400 || s == 422, "{q}: {s} {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_rules_change_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (s, v) = node.admin(Method::GET, "/api/v1/abuse/rules", None).await;
    assert_eq!((s, v["rules"].as_array().unwrap().len()), (200, 0));
    let (_, key) = node
        .create_key(json!([limit("s", "fixed_window", 1, 60_000)]))
        .await;
    // Fixed windows are aligned to the epoch: do not straddle a boundary
    // (the test's checks take well under 20 s).
    let left = 60_000 - now_ms() % 60_000;
    if left < 20_000 {
        tokio::time::sleep(Duration::from_millis(left + 10)).await;
    }
    for _ in 0..6 {
        node.validate(&key, 1).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node.validate(&key, 1).await.0,
        429,
        "no rule: denied, not suspended"
    );
    let rule = json!({"rules": [{"name": "ratio", "type": "denial_ratio", "ratio": 0.5, "over_requests": 4, "suspend_for_ms": 60000}]});
    let (s, v) = node
        .admin(Method::PUT, "/api/v1/abuse/rules", Some(rule))
        .await;
    assert_eq!(s, 200, "{v}");
    for _ in 0..4 {
        node.validate(&key, 1).await;
    }
    assert!(eventually(10, async || node.validate(&key, 1).await.0 == 403).await);
    for bad in [
        json!({"rules": [{"name": "x", "type": "denial_ratio", "ratio": 2.0, "over_requests": 4, "suspend_for_ms": 1}]}),
        json!({"rules": [{"name": "x", "type": "violations", "max": 0, "window_ms": 10, "suspend_for_ms": 1}]}),
        json!({"rules": [{"name": "x", "type": "nope"}]}),
    ] {
        let (s, v) = node
            .admin(Method::PUT, "/api/v1/abuse/rules", Some(bad))
            .await;
        assert!(s == 400 || s == 422, "{s} {v}");
    }
    let (_, v) = node.admin(Method::GET, "/api/v1/abuse/rules", None).await;
    assert_eq!(v["rules"][0]["name"], "ratio", "bad input changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_cidr_gets_403_until_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (_, key) = node
        .create_key(json!([limit("s", "fixed_window", 1_000, 1_000)]))
        .await;
    let (s, b) = node
        .admin(
            Method::POST,
            "/api/v1/blocks",
            Some(json!({"cidr": "203.0.113.0/24", "expires_in_ms": 2000})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let until = b["expires_at_ms"].as_u64().unwrap();
    let (s, v) = validate_ip(&node, &key, "203.0.113.9").await;
    assert_eq!(s, 403, "{v}");
    // An unauthenticated caller learns nothing of the block.
    assert_eq!(v["error"]["code"], "forbidden", "{v}");
    let text = v.to_string();
    assert!(!text.contains("203.0.113"), "no range: {text}");
    assert!(!text.contains(&until.to_string()), "no expiry: {text}");
    assert!(v["suspended_until_ms"].is_null(), "{v}");
    assert_eq!(validate_ip(&node, &key, "203.0.114.9").await.0, 200);
    assert_eq!(
        node.validate(&key, 1).await.0,
        200,
        "no client_ip: not blocked"
    );
    let (_, v) = node.admin(Method::GET, "/api/v1/blocks", None).await;
    assert_eq!(v["blocks"][0]["cidr"], "203.0.113.0/24");
    while now_ms() < until + 20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        validate_ip(&node, &key, "203.0.113.9").await.0,
        200,
        "allowed again after the expiry"
    );
    let (_, v) = node.admin(Method::GET, "/api/v1/blocks", None).await;
    assert_eq!(v["blocks"].as_array().unwrap().len(), 0, "{v}");

    // A block without expiry, IPv6, removed by DELETE.
    let (s, b) = node
        .admin(
            Method::POST,
            "/api/v1/blocks",
            Some(json!({"cidr": "2001:db8::/32", "reason": "scraper"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, v) = validate_ip(&node, &key, "2001:db8::7").await;
    assert_eq!(s, 403);
    assert!(!v.to_string().contains("scraper"), "no reason: {v}");
    assert!(!v.to_string().contains("2001:db8"), "no range: {v}");
    let bid = b["id"].as_str().unwrap();
    let (s, _) = node
        .admin(Method::DELETE, &format!("/api/v1/blocks/{bid}"), None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(validate_ip(&node, &key, "2001:db8::7").await.0, 200);
    let (s, _) = node
        .admin(Method::DELETE, &format!("/api/v1/blocks/{bid}"), None)
        .await;
    assert_eq!(s, 404);
    // Bad input: 4xx naming the problem, nothing stored.
    for bad in [
        json!({"cidr": "10.0.0.1/8"}),
        json!({"cidr": "300.0.0.0/8"}),
        json!({"cidr": "10.0.0.0/33"}),
        json!({"cidr": "10.0.0.0/8", "expires_in_ms": 0}),
        json!({"cidr": "10.0.0.0/8", "extra": 1}),
        json!({}),
    ] {
        let (s, v) = node
            .admin(Method::POST, "/api/v1/blocks", Some(bad.clone()))
            .await;
        assert!(s == 400 || s == 422, "{bad}: {s} {v}");
        assert!(v["error"]["message"].is_string());
    }
    let (_, v) = node.admin(Method::GET, "/api/v1/blocks", None).await;
    assert_eq!(v["blocks"].as_array().unwrap().len(), 0);
    // Block changes are audited (the expiry too, by the node).
    let audited = eventually(15, async || {
        let (_, v) = node.admin(Method::GET, "/api/v1/audit", None).await;
        let actions: Vec<String> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect();
        ["block.create", "block.delete", "block.expire"]
            .iter()
            .all(|a| actions.iter().any(|x| x == a))
    })
    .await;
    assert!(
        audited,
        "block.create, block.delete and block.expire are in the audit log"
    );
}

// ------------------------------------------------------------ webhooks

#[derive(Default)]
struct Receiver {
    /// Requests answered 500 before answering 200 (u32::MAX: always 500).
    fail_next: AtomicU32,
    got: parking_lot::Mutex<Vec<(String, HeaderMap, String, u16)>>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let f = r.fail_next.load(Ordering::SeqCst);
    let code = if f == u32::MAX {
        500
    } else if f > 0 {
        r.fail_next.fetch_sub(1, Ordering::SeqCst);
        500
    } else {
        200
    };
    r.got
        .lock()
        .push((uri.path().to_string(), headers, body, code));
    StatusCode::from_u16(code).unwrap()
}

async fn receiver() -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::post(receive))
        .with_state(Arc::clone(&r));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (r, format!("http://{addr}"))
}

fn verify(secret: &str, headers: &HeaderMap, body: &str) -> bool {
    let sig = headers
        .get("x-ringlimit-signature")
        .unwrap()
        .to_str()
        .unwrap();
    let (t, v1) = sig.strip_prefix("t=").unwrap().split_once(",v1=").unwrap();
    let mac = hmac_sha256(secret.as_bytes(), format!("{t}.{body}").as_bytes());
    hex::encode(mac) == v1
}

fn webhook_config(dir: &Path, url: &str, attempts: u32) -> String {
    config(
        dir,
        &format!(
            r#"
[pipelines]
tick_ms = 20
[alerts]
usage_percent = 80
max_attempts = {attempts}
initial_backoff_ms = 40
max_backoff_ms = 200
timeout_ms = 2000
owner_secret = "owner-secret"
[[alerts.webhooks]]
name = "ops"
url = "{url}/ops"
format = "generic"
secret = "ops-secret"
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_retried_with_backoff_and_delivered_once_signed() {
    let (rx, url) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = webhook_config(dir.path(), &url, 5);
    let node = Node::start(dir.path(), &[("RINGLIMIT_CONFIG", cfg.as_str())]);
    let (s, v) = node
        .admin(
            Method::POST,
            "/api/v1/keys",
            Some(json!({"owner": "acme", "tier": "free",
                "limits": [limit("per-minute", "sliding_log", 10, 60_000)],
                "metadata": {"webhook_url": format!("{url}/owner")}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["key_id"].as_str().unwrap().to_string();
    let key = v["api_key"].as_str().unwrap().to_string();
    rx.fail_next.store(3, Ordering::SeqCst);
    // 8 of 10 units: the 80% threshold, before any denial.
    for _ in 0..9 {
        assert_eq!(node.validate(&key, 1).await.0, 200);
    }
    assert!(
        eventually(20, async || {
            let (_, v) = node
                .admin(Method::GET, &format!("/api/v1/alerts?key_id={id}"), None)
                .await;
            v["alerts"][0]["delivery"] == "delivered"
        })
        .await,
        "the alert is delivered"
    );
    let (_, v) = node
        .admin(Method::GET, &format!("/api/v1/alerts?key_id={id}"), None)
        .await;
    let alerts = v["alerts"].as_array().unwrap();
    assert_eq!(
        alerts.len(),
        1,
        "once per condition and window, not per request: {v}"
    );
    let alert = &alerts[0];
    assert_eq!(alert["kind"], "usage_threshold");
    let aid = alert["id"].as_str().unwrap();
    let got = rx.got.lock().clone();
    let ops: Vec<_> = got.iter().filter(|g| g.0 == "/ops").collect();
    let owner: Vec<_> = got.iter().filter(|g| g.0 == "/owner").collect();
    // The endpoint comes first: three 500s, then one 200 — delivered once,
    // on the fourth attempt. Then the owner's notice, delivered at once.
    let codes: Vec<u16> = ops.iter().map(|g| g.3).collect();
    assert_eq!(codes, vec![500, 500, 500, 200]);
    let attempts: Vec<&str> = ops
        .iter()
        .map(|g| g.1.get("x-ringlimit-attempt").unwrap().to_str().unwrap())
        .collect();
    assert_eq!(attempts, vec!["1", "2", "3", "4"]);
    assert_eq!(
        owner.iter().map(|g| g.3).collect::<Vec<_>>(),
        vec![200],
        "the owner got the notice once"
    );
    for (path, headers, body, _) in &got {
        let secret = if path == "/ops" {
            "ops-secret"
        } else {
            "owner-secret"
        };
        assert!(verify(secret, headers, body), "valid HMAC on {path}");
        assert_eq!(headers.get("x-ringlimit-alert-id").unwrap(), aid);
        let b: Value = serde_json::from_str(body).unwrap();
        assert_eq!(b["type"], "ringlimit.alert");
        assert_eq!(b["alert"]["key_id"], id.as_str());
    }
    let last_ops = ops.last().unwrap();
    assert_eq!(alert["attempts"].as_u64().unwrap(), got.len() as u64);
    // A tampered body does not verify.
    assert!(!verify(
        "ops-secret",
        &last_ops.1,
        &format!("{} ", last_ops.2)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_never_recovers_lands_in_dead_letters_and_redrive_delivers_it() {
    let (rx, url) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = webhook_config(dir.path(), &url, 3);
    let node = Node::start(dir.path(), &[("RINGLIMIT_CONFIG", cfg.as_str())]);
    let (id, key) = node
        .create_key(json!([limit("per-minute", "sliding_log", 5, 60_000)]))
        .await;
    rx.fail_next.store(u32::MAX, Ordering::SeqCst);
    for _ in 0..4 {
        node.validate(&key, 1).await;
    }
    let mut letters = Value::Null;
    assert!(
        eventually(20, async || {
            letters = node
                .admin(Method::GET, "/api/v1/dead-letters", None)
                .await
                .1;
            letters["dead_letters"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await,
        "the failed delivery is dead-lettered"
    );
    let dl = letters["dead_letters"][0].clone();
    assert_eq!(dl["endpoint"], "ops");
    assert_eq!(dl["attempts"], 3);
    assert!(dl["error"].as_str().unwrap().contains("500"), "{dl}");
    assert_eq!(rx.got.lock().len(), 3, "three attempts");
    let (_, v) = node
        .admin(Method::GET, &format!("/api/v1/alerts?key_id={id}"), None)
        .await;
    assert_eq!(v["alerts"][0]["delivery"], "dead_lettered");
    let dlid = dl["id"].as_str().unwrap();
    // Still failing: the letter stays.
    let (s, v) = node
        .admin(
            Method::POST,
            &format!("/api/v1/dead-letters/{dlid}/redrive"),
            None,
        )
        .await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(
        node.admin(Method::GET, "/api/v1/dead-letters", None)
            .await
            .1["dead_letters"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The receiver recovers: re-drive delivers it, once.
    rx.fail_next.store(0, Ordering::SeqCst);
    let before = rx.got.lock().len();
    let (s, v) = node
        .admin(
            Method::POST,
            &format!("/api/v1/dead-letters/{dlid}/redrive"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["delivered"], true);
    let got = rx.got.lock().clone();
    assert_eq!(got.len(), before + 1);
    let (_, headers, body, code) = got.last().unwrap();
    assert_eq!(*code, 200);
    assert!(verify("ops-secret", headers, body));
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap()["alert"]["key_id"],
        id.as_str()
    );
    assert_eq!(
        node.admin(Method::GET, "/api/v1/dead-letters", None)
            .await
            .1["dead_letters"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let (_, v) = node
        .admin(Method::GET, &format!("/api/v1/alerts?key_id={id}"), None)
        .await;
    assert_eq!(v["alerts"][0]["delivery"], "delivered");
    let (s, _) = node
        .admin(
            Method::POST,
            &format!("/api/v1/dead-letters/{dlid}/redrive"),
            None,
        )
        .await;
    assert_eq!(s, 404);
}

// ------------------------------------------------------------ analytics, drain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_give_top_keys_and_usage_by_tier() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("RINGLIMIT_FLUSH_INTERVAL_MS", "20")]);
    let mut ids = Vec::new();
    for (tier, n) in [("free", 3u64), ("pro", 7), ("pro", 5)] {
        let (s, v) = node
            .admin(
                Method::POST,
                "/api/v1/keys",
                Some(json!({"owner": "o", "tier": tier})),
            )
            .await;
        assert_eq!(s, 201);
        let key = v["api_key"].as_str().unwrap().to_string();
        for _ in 0..n {
            assert_eq!(node.validate(&key, 1).await.0, 200);
        }
        ids.push(v["key_id"].as_str().unwrap().to_string());
    }
    let path = "/api/v1/analytics/usage?granularity=minute&top=2";
    assert!(
        eventually(
            10,
            async || node.admin(Method::GET, path, None).await.1["total_units"] == 15
        )
        .await
    );
    let (_, v) = node.admin(Method::GET, path, None).await;
    let top: Vec<(&str, u64)> = v["top_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key_id"].as_str().unwrap(), k["units"].as_u64().unwrap()))
        .collect();
    assert_eq!(top, vec![(ids[1].as_str(), 7), (ids[2].as_str(), 5)]);
    assert_eq!(
        v["by_tier"],
        json!([{"tier": "pro", "units": 12, "active_keys": 2}, {"tier": "free", "units": 3, "active_keys": 1}])
    );
    let (s, _) = node
        .admin(Method::GET, "/api/v1/analytics/usage?top=0", None)
        .await;
    assert_eq!(s, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_queued_violations_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // Workers look at their queues only every 30 s: whatever is stored was
    // written by the drain at shutdown.
    let cfg = config(dir.path(), "[pipelines]\ntick_ms = 30000\n");
    let env = [("RINGLIMIT_CONFIG", cfg.as_str())];
    let mut node = Node::start(dir.path(), &env);
    let (id, key) = node
        .create_key(json!([limit("s", "fixed_window", 1, 60_000)]))
        .await;
    let mut denied = 0;
    for _ in 0..40 {
        if node.validate(&key, 1).await.0 == 429 {
            denied += 1;
        }
    }
    assert_eq!(denied, 39);
    let (_, v) = node.admin(Method::GET, "/api/v1/pipelines", None).await;
    assert_eq!(v["queues"]["violations"]["queued"], 39, "{v}");
    assert!(node.signal_and_wait(SIGTERM).success());
    let node = Node::start(dir.path(), &env);
    let (_, v) = node
        .admin(
            Method::GET,
            &format!("/api/v1/violations?key_id={id}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(
        v["violations"].as_array().unwrap().len(),
        39,
        "drained at SIGTERM"
    );
}

// ------------------------------------------------------------ ScyllaDB outage

/// ScyllaDB down: validate keeps answering, violations queue up to the bound,
/// the rest are dropped and counted in the metric; when ScyllaDB is back the
/// queued ones are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scylla_outage_queues_violations_up_to_the_bound_then_flushes() {
    use common::proxy::{Mode, Proxy};
    let Some(addr) = cql() else { return };
    let ks = keyspace("pq");
    migrate(&addr, &ks);
    let proxy = Proxy::start(addr.clone()).await;
    let via = proxy.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[pipelines]\nqueue_capacity = 30\nbatch_max = 10\ntick_ms = 20\n",
    );
    let node = Node::start(
        dir.path(),
        &[
            ("RINGLIMIT_CONFIG", cfg.as_str()),
            ("RINGLIMIT_SCYLLA_NODES", via.as_str()),
            ("RINGLIMIT_SCYLLA_KEYSPACE", ks.as_str()),
        ],
    );
    let (id, key) = node
        .create_key(json!([limit("m", "fixed_window", 1, 3_600_000)]))
        .await;
    assert_eq!(node.validate(&key, 1).await.0, 200);
    proxy.set(Mode::Down);
    for _ in 0..60 {
        let r = tokio::time::timeout(Duration::from_secs(5), node.validate(&key, 1)).await;
        assert_eq!(r.expect("validate answers during the outage").0, 429);
    }
    let (_, v) = node.admin(Method::GET, "/api/v1/pipelines", None).await;
    let q = &v["queues"]["violations"];
    let accepted = q["accepted"].as_u64().unwrap();
    let dropped = q["dropped"].as_u64().unwrap();
    assert_eq!(accepted + dropped, 60, "{v}");
    assert!(
        dropped >= 20,
        "beyond the bound (30 queued + 10 in flight) events are dropped: {v}"
    );
    let metrics = node
        .http
        .get(format!("{}/metrics", node.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ringlimit_pipeline_dropped_total{pipeline=\"violations\"}"))
        .unwrap_or_else(|| panic!("no drop metric in\n{metrics}"));
    assert!(line.ends_with(&format!(" {dropped}")), "{line}");
    proxy.set(Mode::Up);
    let path = format!("/api/v1/violations?key_id={id}&limit=1000");
    let flushed = eventually(90, async || {
        let (s, v) = node.admin(Method::GET, &path, None).await;
        s == 200 && v["violations"].as_array().unwrap().len() as u64 == accepted
    })
    .await;
    assert!(
        flushed,
        "the {accepted} queued violations were written after the outage"
    );
}

// ------------------------------------------------------------ alert rules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn included_units_overage_repeated_violations_and_backlog_raise_alerts_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#"
[pipelines]
tick_ms = 20
[billing.prices.free]
included_units = 10
unit_price = "0.5"
[alerts]
usage_percent = 0
included_percent = 50
repeated_violations = { count = 3, window_ms = 3600000 }
backlog_bound = 0
"#,
    );
    let node = Node::start(dir.path(), &[("RINGLIMIT_CONFIG", cfg.as_str())]);
    let (id, key) = node
        .create_key(json!([limit("h", "sliding_log", 12, 3_600_000)]))
        .await;
    for _ in 0..20 {
        node.validate(&key, 1).await;
    }
    let kinds = async || -> Vec<String> {
        let (_, v) = node.admin(Method::GET, "/api/v1/alerts", None).await;
        v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let want = [
        "included_units_threshold",
        "overage",
        "repeated_violations",
        "writebehind_backlog",
    ];
    assert!(
        eventually(10, async || {
            let k = kinds().await;
            want.iter().all(|w| k.iter().any(|x| x == w))
        })
        .await,
        "every rule fired: {:?}",
        kinds().await
    );
    // More traffic in the same period and window raises nothing new for the key.
    for _ in 0..10 {
        node.validate(&key, 1).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = node
        .admin(Method::GET, &format!("/api/v1/alerts?key_id={id}"), None)
        .await;
    let mut per_kind: HashMap<String, usize> = HashMap::new();
    for a in v["alerts"].as_array().unwrap() {
        *per_kind
            .entry(a["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert_eq!(
            a["delivery"], "stored",
            "no endpoint configured: stored only"
        );
    }
    for k in ["included_units_threshold", "overage", "repeated_violations"] {
        assert_eq!(per_kind.get(k), Some(&1), "{k} once: {v}");
    }
    let overage = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "overage")
        .unwrap();
    assert_eq!(overage["details"]["included_units"], 10);
    assert!(
        overage["message"].as_str().unwrap().contains("0.5 USD"),
        "{overage}"
    );
}
