//! Every route of both planes against a table of bad inputs: wrong types,
//! overlong and unicode strings, huge numbers; empty, truncated and deeply
//! nested bodies; wrong methods and content types. Each one gets a 4xx with
//! a JSON error naming the problem, and the node's state is the same after
//! the sweep as before it.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// The node's state as the admin API shows it.
async fn state(node: &Node, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/api/v1/keys?limit=1000".to_string(),
        format!("/api/v1/keys/{id}"),
        format!("/api/v1/usage/{id}/current"),
        "/api/v1/tiers".to_string(),
        "/api/v1/blocks".to_string(),
        "/api/v1/abuse/rules".to_string(),
        "/api/v1/dead-letters".to_string(),
        format!("/api/v1/billing/{id}"),
    ] {
        let (s, mut v) = node.admin(Method::GET, &path, None).await;
        assert!(s == 200 || s == 404, "{path}: {s} {v}");
        // Usage windows move with time; what is used does not.
        if let Some(limits) = v.get_mut("limits").and_then(Value::as_array_mut) {
            for l in limits {
                if let Some(o) = l.as_object_mut() {
                    o.retain(|k, _| k == "name" || k == "used" || k == "limit");
                }
            }
        }
        out.push(json!({ "path": path, "status": s, "body": v }));
    }
    out
}

/// Bodies no JSON route accepts.
fn bad_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    vec![
        ("empty", Vec::new()),
        ("whitespace", b"   \n".to_vec()),
        ("truncated", b"{\"api_key\": \"rl_".to_vec()),
        ("not json", b"api_key=rl_x&cost=1".to_vec()),
        ("null", b"null".to_vec()),
        ("array", b"[]".to_vec()),
        ("string", b"\"x\"".to_vec()),
        ("number", b"1e309".to_vec()),
        ("deeply nested array", deep.into_bytes()),
        ("deeply nested object", deep_obj.into_bytes()),
        (
            "invalid utf-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        ),
        ("nul bytes", b"{\"\0\":\0}".to_vec()),
    ]
}

/// Bodies of the right shape with fields of the wrong type or range.
fn bad_fields() -> Vec<Value> {
    let long = "x".repeat(100_000);
    vec![
        json!({"api_key": 5}),
        json!({"api_key": null}),
        json!({"api_key": ["rl_x"]}),
        json!({"api_key": long}),
        json!({"api_key": "rl_é\u{0}\u{202e}", "cost": 1}),
        json!({"cost": 18_446_744_073_709_551_615u64}),
        json!({"cost": -1}),
        json!({"cost": 1.5}),
        json!({"checks": "all"}),
        json!({"checks": [1, 2, 3]}),
        json!({"owner": 7, "tier": []}),
        json!({"owner": long, "tier": "free"}),
        json!({"owner": "o", "tier": "🦀".repeat(1000)}),
        json!({"limits": [{"name": "x", "algorithm": "nope", "limit": 1, "window_ms": 1}]}),
        json!({"limits": [{"name": "x", "algorithm": "gcra", "limit": -5, "window_ms": 0}]}),
        json!({"limits": "many"}),
        json!({"status": "deleted"}),
        json!({"grace_period_ms": "soon"}),
        json!({"grace_period_ms": 1e300}),
        json!({"cidr": "300.1.2.3/99", "ttl_ms": 1}),
        json!({"cidr": 5}),
        json!({"period": "the-last-one"}),
        json!({"period": 12}),
        json!({"rules": "all"}),
        json!({"unknown_field": true, "and": {"nested": [1, {"deep": null}]}}),
    ]
}

fn assert_json_4xx(what: &str, status: u16, body: &str) {
    assert!(
        (400..500).contains(&status),
        "{what}: expected a 4xx, got {status}: {body}"
    );
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON ({e}): {body:?}"));
    let code = v["error"]["code"].as_str().unwrap_or("");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        !code.is_empty() && !msg.is_empty(),
        "{what}: the error names its problem: {body}"
    );
}

async fn send(
    node: &Node,
    admin: bool,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, String) {
    let base = if admin { &node.admin } else { &node.data };
    let mut r = node.http.request(method, format!("{base}{path}"));
    if admin {
        r = r.bearer_auth(TOKEN);
    }
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    let len = body.as_ref().map(Vec::len);
    if let Some(b) = body {
        r = r.body(b);
    }
    let resp = r.send().await.unwrap_or_else(|e| {
        panic!("{path} ({content_type:?}, body of {len:?} bytes): no answer: {e:?}")
    });
    let s = resp.status().as_u16();
    (s, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_bad_input_with_a_json_4xx_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("RINGLIMIT_MAX_BODY_BYTES", "65536")]);
    let (id, key) = node
        .create_key(json!([limit("per-minute", "sliding_window", 100, 60_000)]))
        .await;
    assert_eq!(node.validate(&key, 3).await.0, 200);
    let before = state(&node, &id).await;

    // (admin plane?, method, path) of every route that takes a JSON body.
    let body_routes: Vec<(bool, Method, String)> = vec![
        (false, Method::POST, "/api/v1/validate".into()),
        (false, Method::POST, "/api/v1/validate/batch".into()),
        (true, Method::POST, "/api/v1/keys".into()),
        (true, Method::PATCH, format!("/api/v1/keys/{id}")),
        (true, Method::PUT, format!("/api/v1/keys/{id}")),
        (true, Method::POST, format!("/api/v1/keys/{id}/rotate")),
        (true, Method::PUT, "/api/v1/tiers/free".into()),
        (true, Method::POST, "/api/v1/blocks".into()),
        (true, Method::POST, "/api/v1/billing/close".into()),
        (true, Method::PUT, "/api/v1/abuse/rules".into()),
    ];
    let mut tried = 0;
    for (admin, method, path) in &body_routes {
        // A rotation's body is optional (an empty one rotates with the
        // default grace period), so an empty body is a real request there.
        let body_optional = path.ends_with("/rotate");
        for (name, body) in bad_bodies() {
            if body_optional && (name == "empty" || name == "whitespace") {
                continue;
            }
            let (s, b) = send(
                &node,
                *admin,
                method.clone(),
                path,
                Some("application/json"),
                Some(body),
            )
            .await;
            assert_json_4xx(&format!("{method} {path} with a {name} body"), s, &b);
            tried += 1;
        }
        for body in bad_fields() {
            let bytes = serde_json::to_vec(&body).unwrap();
            let (s, b) = send(
                &node,
                *admin,
                method.clone(),
                path,
                Some("application/json"),
                Some(bytes),
            )
            .await;
            // A field the route does not know is an error too (bodies are
            // strict), so every one of these is refused.
            assert_json_4xx(&format!("{method} {path} with {body}"), s, &b);
            tried += 1;
        }
        // A JSON body under another content type is refused as such.
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/xml",
        ] {
            let (s, b) = send(
                &node,
                *admin,
                method.clone(),
                path,
                Some(ct),
                Some(br#"{"api_key":"x"}"#.to_vec()),
            )
            .await;
            assert_eq!(s, 415, "{method} {path} as {ct}: {b}");
            assert_json_4xx(&format!("{method} {path} as {ct}"), s, &b);
            tried += 1;
        }
        // Over the body limit.
        let (s, b) = send(
            &node,
            *admin,
            method.clone(),
            path,
            Some("application/json"),
            Some(vec![b' '; 70_000]),
        )
        .await;
        assert_json_4xx(&format!("{method} {path} with an oversized body"), s, &b);
        tried += 1;
    }

    // Query strings and path segments.
    let long = "k".repeat(5_000);
    let gets: Vec<String> = vec![
        "/api/v1/keys?limit=-1".into(),
        "/api/v1/keys?limit=99999999999999999999999".into(),
        "/api/v1/keys?status=sideways".into(),
        "/api/v1/keys?page=0x10".into(),
        format!("/api/v1/usage/{id}/history?granularity=fortnight"),
        format!("/api/v1/usage/{id}/history?from=yesterday"),
        format!("/api/v1/usage/{id}/history?from=5&to=1"),
        "/api/v1/violations?from=%F0%9F%A6%80".into(),
        "/api/v1/audit?limit=abc".into(),
        "/api/v1/alerts?page=-3".into(),
        format!("/api/v1/billing?period={long}"),
        format!("/api/v1/billing/{id}?period=13-2026"),
        "/api/v1/analytics/usage?granularity=eon".into(),
        "/api/v1/analytics/usage?top=-1".into(),
        "/api/v1/cluster/owner".into(),
        format!("/api/v1/keys/{long}"),
        "/api/v1/keys/%F0%9F%A6%80%E2%80%AE".into(),
        "/api/v1/tiers/%00".into(),
        "/api/v1/usage/nope/current".into(),
    ];
    for path in &gets {
        let (s, b) = send(&node, true, Method::GET, path, None, None).await;
        assert_json_4xx(&format!("GET {path}"), s, &b);
        tried += 1;
    }
    for (method, path) in [
        (Method::DELETE, "/api/v1/tiers".to_string()),
        (Method::PATCH, "/api/v1/blocks".to_string()),
        (Method::POST, format!("/api/v1/usage/{id}/current")),
        (Method::PUT, "/api/v1/billing/close".to_string()),
        (Method::DELETE, "/api/v1/keys/nope-nope".to_string()),
        (
            Method::POST,
            "/api/v1/dead-letters/nope/redrive".to_string(),
        ),
        (Method::DELETE, "/api/v1/blocks/nope".to_string()),
    ] {
        let (s, b) = send(&node, true, method.clone(), &path, None, None).await;
        assert_json_4xx(&format!("{method} {path}"), s, &b);
        tried += 1;
    }
    for (method, path) in [
        (Method::GET, "/api/v1/validate/batch"),
        (Method::PUT, "/api/v1/validate"),
        (Method::DELETE, "/api/v1/validate"),
        (Method::GET, "/api/v1/keys"),
    ] {
        let (s, b) = send(&node, false, method.clone(), path, None, None).await;
        assert_json_4xx(&format!("data plane {method} {path}"), s, &b);
        tried += 1;
    }
    eprintln!("{tried} bad requests, every one a JSON 4xx");

    // Nothing changed: the key's usage, records and settings are as before,
    // and the key still works.
    assert_eq!(state(&node, &id).await, before, "the sweep changed state");
    assert_eq!(node.validate(&key, 1).await.0, 200);
}
