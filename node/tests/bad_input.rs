//! Bad input gets a 4xx with a JSON error naming the problem, and changes nothing.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn error_of(body: &str) -> (String, String) {
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    (
        v["error"]["code"].as_str().unwrap().to_string(),
        v["error"]["message"].as_str().unwrap().to_string(),
    )
}

/// The key's state, as the admin API shows it.
async fn used(node: &Node, id: &str) -> Value {
    node.admin(Method::GET, &format!("/api/v1/usage/{id}/current"), None)
        .await
        .1["limits"][0]["used"]
        .clone()
}

#[tokio::test]
async fn validate_rejects_bad_bodies_without_changing_state() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("RINGLIMIT_MAX_BODY_BYTES", "16384")]);
    let (id, key) = node
        .create_key(json!([limit("l", "sliding_log", 10, 60_000)]))
        .await;
    assert_eq!(node.validate(&key, 1).await.0, 200);
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "malformed JSON",
            b"{\"api_key\": ".to_vec(),
            400,
            "invalid_json",
            "malformed",
        ),
        (
            "not an object",
            b"[1,2]".to_vec(),
            422,
            "invalid_request",
            "invalid",
        ),
        (
            "wrong type of api_key",
            br#"{"api_key": 5}"#.to_vec(),
            422,
            "invalid_request",
            "api_key",
        ),
        (
            "wrong type of cost",
            format!(r#"{{"api_key":"{key}","cost":"1"}}"#).into_bytes(),
            422,
            "invalid_request",
            "cost",
        ),
        (
            "missing api_key",
            br#"{"cost": 1}"#.to_vec(),
            422,
            "invalid_request",
            "api_key",
        ),
        (
            "cost 0",
            format!(r#"{{"api_key":"{key}","cost":0}}"#).into_bytes(),
            422,
            "invalid_request",
            "cost must be at least 1",
        ),
        (
            "negative cost",
            format!(r#"{{"api_key":"{key}","cost":-3}}"#).into_bytes(),
            422,
            "invalid_request",
            "negative",
        ),
        (
            "fractional cost",
            format!(r#"{{"api_key":"{key}","cost":1.5}}"#).into_bytes(),
            422,
            "invalid_request",
            "whole",
        ),
        (
            "huge cost",
            format!(r#"{{"api_key":"{key}","cost":1e300}}"#).into_bytes(),
            422,
            "invalid_request",
            "at most",
        ),
        (
            "cost above capacity",
            format!(r#"{{"api_key":"{key}","cost":11}}"#).into_bytes(),
            422,
            "cost_exceeds_capacity",
            "capacity",
        ),
        (
            "api_key of 10 KB",
            serde_json::to_vec(&json!({"api_key": "x".repeat(10_240)})).unwrap(),
            422,
            "invalid_request",
            "api_key",
        ),
        (
            "body over the limit",
            serde_json::to_vec(&json!({"api_key": key, "pad": "x".repeat(20_000)})).unwrap(),
            413,
            "payload_too_large",
            "limit",
        ),
        (
            "bad client_ip",
            format!(r#"{{"api_key":"{key}","client_ip":"999.1.1.1"}}"#).into_bytes(),
            422,
            "invalid_request",
            "client_ip",
        ),
    ];
    for (name, body, status, code, needle) in cases {
        let (s, text) = node.post_raw(&node.data, "/api/v1/validate", body).await;
        assert_eq!(s, status, "{name}: {text}");
        let (c, m) = error_of(&text);
        assert_eq!(c, code, "{name}: {text}");
        assert!(
            m.contains(needle),
            "{name}: message {m:?} should name the problem ({needle})"
        );
    }
    // Batch with a bad element is rejected whole.
    let (s, text) = node
        .post_raw(
            &node.data,
            "/api/v1/validate/batch",
            serde_json::to_vec(&json!({"checks":[{"api_key": key}, {"api_key": key, "cost": 0}]}))
                .unwrap(),
        )
        .await;
    assert_eq!(s, 422, "{text}");
    assert_eq!(used(&node, &id).await, 1, "no bad request spent anything");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    for base in [&node.data, &node.admin] {
        let r = node
            .http
            .get(format!("{base}/nope/../x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(error_of(&r.text().await.unwrap()).0, "not_found");
    }
    let r = node
        .http
        .get(format!("{}/api/v1/validate", node.data))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_of(&r.text().await.unwrap()).0, "method_not_allowed");
    let (s, v) = node
        .admin(Method::GET, "/api/v1/keys/doesnotexist", None)
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "not_found");
    let (s, v) = node.admin(Method::GET, "/api/v1/tiers/nope", None).await;
    assert_eq!(s, 404, "{v}");
}

#[tokio::test]
async fn admin_needs_the_right_token_and_bad_admin_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let url = format!("{}/api/v1/keys", node.admin);
    let body = json!({"owner": "o", "tier": "free"});
    let r = node.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_of(&r.text().await.unwrap()).0, "unauthorized");
    let r = node
        .http
        .post(&url)
        .bearer_auth("wrong-token-wrong-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = node
        .http
        .get(&url)
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (_, v) = node.admin(Method::GET, "/api/v1/keys", None).await;
    assert_eq!(
        v["keys"].as_array().unwrap().len(),
        0,
        "unauthenticated creates changed nothing"
    );

    let bad_creates = [
        (json!({"owner": "o", "tier": "nope"}), "tier"),
        (json!({"owner": "", "tier": "free"}), "owner"),
        (json!({"tier": "free"}), "owner"),
        (
            json!({"owner": "o", "tier": "free", "limits": []}),
            "limits",
        ),
        (
            json!({"owner": "o", "tier": "free", "limits": [limit("a", "bogus", 1, 1000)]}),
            "algorithm",
        ),
        (
            json!({"owner": "o", "tier": "free", "limits": [limit("a", "sliding_log", 0, 1000)]}),
            "limit",
        ),
        (
            json!({"owner": "o", "tier": "free", "limits": [limit("a", "fixed_window", 5, 0)]}),
            "window_ms",
        ),
        (json!({"owner": "o", "tier": "free", "extra": 1}), "extra"),
    ];
    for (b, needle) in bad_creates {
        let (s, v) = node
            .admin(Method::POST, "/api/v1/keys", Some(b.clone()))
            .await;
        assert_eq!(s, 422, "{b}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{b}: {v}"
        );
    }
    let (_, v) = node.admin(Method::GET, "/api/v1/keys", None).await;
    assert_eq!(
        v["keys"].as_array().unwrap().len(),
        0,
        "bad creates changed nothing"
    );

    let (id, _) = node
        .create_key(json!([limit("l", "sliding_log", 10, 60_000)]))
        .await;
    let (s, _) = node
        .admin(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"tier": "nope"})),
        )
        .await;
    assert_eq!(s, 422);
    let (s, _) = node
        .admin(
            Method::POST,
            &format!("/api/v1/keys/{id}/rotate"),
            Some(json!({"grace_period_ms": -1})),
        )
        .await;
    assert_eq!(s, 422);
    let (s, _) = node
        .admin(
            Method::PUT,
            "/api/v1/tiers/free",
            Some(json!({"limits": [limit("a", "gcra", 1, 0)]})),
        )
        .await;
    assert_eq!(s, 422);
    let (_, k) = node
        .admin(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(k["tier"], "free");
    assert_eq!(
        k["updated_at_ms"], k["created_at_ms"],
        "rejected updates changed nothing"
    );
    let (_, t) = node.admin(Method::GET, "/api/v1/tiers/free", None).await;
    assert_eq!(t["limits"].as_array().unwrap().len(), 2);
}

/// A multi-byte character at every position of an api_key of the right
/// byte length: 401 with a JSON body, alone and in a batch, and the batch's
/// other checks keep their answers. The node keeps answering (no reset
/// connection, no panic), and the key's state does not change.
#[tokio::test]
async fn unicode_in_an_api_key_at_every_position_is_a_401_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (id, key) = node
        .create_key(json!([limit("l", "sliding_log", 1_000, 60_000)]))
        .await;
    assert_eq!(node.validate(&key, 1).await.0, 200);
    let before = used(&node, &id).await;
    let url = format!("{}/api/v1/validate", node.data);
    for ch in ['é', '€', '𝄞'] {
        let w = ch.len_utf8();
        for at in 0..=key.len() - w {
            let bad = format!("{}{}{}", &key[..at], ch, &key[at + w..]);
            assert_eq!(bad.len(), key.len());
            let r = node
                .http
                .post(&url)
                .json(&json!({"api_key": bad, "cost": 1}))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{ch} at byte {at}: the connection failed: {e}"));
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_eq!(status, 401, "{ch} at byte {at}: {body}");
            assert_eq!(error_of(&body).0, "unauthorized", "{ch} at byte {at}");
        }
    }
    // In a batch, between good checks: every check answered, in order.
    let bad = format!("rl_{}é_{}", "a".repeat(19), "A".repeat(42));
    let (s, v) = {
        let r = node
            .http
            .post(format!("{}/api/v1/validate/batch", node.data))
            .json(&json!({"checks": [
                {"api_key": key, "cost": 1},
                {"api_key": bad, "cost": 1},
                {"api_key": key, "cost": 1},
            ]}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 200, "{v}");
    let statuses: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 401, 200], "{v}");
    assert_eq!(
        used(&node, &id).await,
        before.as_u64().unwrap() + 2,
        "only the two good checks counted"
    );
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_gets_415_on_both_planes_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (id, key) = node
        .create_key(json!([limit("l", "sliding_log", 10, 60_000)]))
        .await;
    assert_eq!(node.validate(&key, 1).await.0, 200);
    let check = serde_json::to_vec(&json!({"api_key": key, "cost": 1})).unwrap();
    let batch = serde_json::to_vec(&json!({"checks": [{"api_key": key, "cost": 1}]})).unwrap();
    let new_key = serde_json::to_vec(&json!({"owner": "o", "tier": "free"})).unwrap();
    let patch = serde_json::to_vec(&json!({"tier": "pro"})).unwrap();
    let tier =
        serde_json::to_vec(&json!({"limits": [limit("x", "fixed_window", 1, 1_000)]})).unwrap();
    let requests: Vec<(Method, String, Vec<u8>)> = vec![
        (
            Method::POST,
            format!("{}/api/v1/validate", node.data),
            check.clone(),
        ),
        (
            Method::POST,
            format!("{}/api/v1/validate/batch", node.data),
            batch.clone(),
        ),
        (Method::POST, format!("{}/api/v1/keys", node.admin), new_key),
        (
            Method::PATCH,
            format!("{}/api/v1/keys/{id}", node.admin),
            patch,
        ),
        (
            Method::PUT,
            format!("{}/api/v1/tiers/free", node.admin),
            tier,
        ),
        (
            Method::POST,
            format!("{}/api/v1/keys/{id}/rotate", node.admin),
            b"{}".to_vec(),
        ),
    ];
    for (method, url, body) in &requests {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("text/json"),
            None,
        ] {
            let mut r = node
                .http
                .request(method.clone(), url)
                .bearer_auth(TOKEN)
                .body(body.clone());
            if let Some(t) = content_type {
                r = r.header("content-type", t);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(status, 415, "{method} {url} as {content_type:?}: {text}");
            let (code, message) = error_of(&text);
            assert_eq!(code, "unsupported_media_type", "{text}");
            assert!(message.contains("content-type"), "{message}");
        }
    }
    // Nothing changed: no check spent, no key made, tier and key untouched.
    assert_eq!(used(&node, &id).await, 1);
    let (_, v) = node.admin(Method::GET, "/api/v1/keys", None).await;
    assert_eq!(v["keys"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = node
        .admin(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(v["tier"], "free", "{v}");
    let (_, v) = node.admin(Method::GET, "/api/v1/tiers/free", None).await;
    assert_ne!(v["limits"][0]["name"], "x", "{v}");
    // JSON with parameters, and any +json type, is JSON.
    for content_type in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ] {
        let r = node
            .http
            .post(format!("{}/api/v1/validate", node.data))
            .header("content-type", content_type)
            .body(check.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{content_type}");
    }
    // A request without a body needs no content type.
    let r = node
        .http
        .post(format!("{}/api/v1/keys/{id}/rotate", node.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}
