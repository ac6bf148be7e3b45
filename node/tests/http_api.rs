//! The DESIGN.md §4a contract over real HTTP against a real node process.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn key_lifecycle_create_validate_rotate_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (id, key) = node
        .create_key(json!([limit("per-minute", "sliding_log", 3, 60_000)]))
        .await;
    assert!(key.starts_with(&format!("rl_{id}_")));

    for i in 0..3 {
        let (s, b) = node.validate(&key, 1).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["allowed"], true);
        assert_eq!(b["key_id"], id.as_str());
        assert_eq!(b["tier"], "free");
        assert_eq!(b["limits"][0]["name"], "per-minute");
        assert_eq!(b["limits"][0]["limit"], 3);
        assert_eq!(b["limits"][0]["remaining"], 2 - i);
    }
    let resp = node
        .http
        .post(format!("{}/api/v1/validate", node.data))
        .json(&json!({"api_key": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let h = resp.headers().clone();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(h["ratelimit-policy"], "\"per-minute\";q=3;w=60");
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"per-minute\";r=0;t=")
    );
    let b: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(b["allowed"], false);
    assert_eq!(b["denied_by"], "per-minute");

    // Rotate with a grace period: both secrets work, then only the new one.
    let (s, r) = node
        .admin(
            Method::POST,
            &format!("/api/v1/keys/{id}/rotate"),
            Some(json!({"grace_period_ms": 1500})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let new_key = r["api_key"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    assert!(
        new_key.starts_with(&format!("rl_{id}_")),
        "rotation keeps the key_id"
    );
    // Counts are per key, not per secret: both secrets see the spent quota.
    assert_eq!(node.validate(&key, 1).await.0, 429);
    assert_eq!(node.validate(&new_key, 1).await.0, 429);
    assert!(
        eventually(5, async || node.validate(&key, 1).await.0 == 401).await,
        "the old secret stops working after the grace period"
    );
    assert_eq!(node.validate(&new_key, 1).await.0, 429);

    // Revoke: 401 with the same body as an unknown key.
    let resp = node
        .http
        .delete(format!("{}/api/v1/keys/{id}", node.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (s, revoked) = node.validate(&new_key, 1).await;
    assert_eq!(s, 401);
    let unknown_key = format!("rl_{}_{}", "a".repeat(20), "B".repeat(43));
    let (s2, unknown) = node.validate(&unknown_key, 1).await;
    assert_eq!(s2, 401);
    assert_eq!(revoked, unknown, "revoked and unknown keys answer alike");
    let (_, v) = node
        .admin(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(v["status"], "revoked");
    assert!(
        v.get("api_key").is_none() && v.get("secret_hash").is_none(),
        "the secret is never shown again"
    );
}

#[tokio::test]
async fn two_limits_deny_by_whichever_binds_first_and_denials_spend_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (id, key) = node
        .create_key(json!([
            limit("per-second", "sliding_log", 5, 1_000),
            limit("per-minute", "sliding_log", 7, 60_000)
        ]))
        .await;
    let mut allowed = 0;
    let mut denied_by = std::collections::BTreeSet::new();
    // Hammer for ~2.5 s: per-second binds first, then per-minute.
    let end = ringlimit_actors::clock::monotonic() + std::time::Duration::from_millis(2_500);
    while ringlimit_actors::clock::monotonic() < end {
        let (s, b) = node.validate(&key, 1).await;
        if s == 200 {
            allowed += 1;
        } else {
            assert_eq!(s, 429);
            denied_by.insert(b["denied_by"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(allowed, 7, "exactly the per-minute quota passes over 2.5 s");
    assert!(denied_by.contains("per-second"), "{denied_by:?}");
    assert!(denied_by.contains("per-minute"), "{denied_by:?}");
    let (_, cur) = node
        .admin(Method::GET, &format!("/api/v1/usage/{id}/current"), None)
        .await;
    assert_eq!(
        cur["limits"][1]["used"], 7,
        "denied checks consumed nothing from per-minute: {cur}"
    );
}

#[tokio::test]
async fn cost_spends_several_units_and_oversized_costs_are_422() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (_, key) = node
        .create_key(json!([limit("per-minute", "fixed_window", 10, 3_600_000)]))
        .await;
    let (s, b) = node.validate(&key, 4).await;
    assert_eq!(s, 200);
    assert_eq!(b["limits"][0]["remaining"], 6);
    let (s, b) = node.validate(&key, 11).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["code"], "cost_exceeds_capacity");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per-minute")
    );
    let (s, _) = node.validate(&key, 7).await;
    assert_eq!(s, 429, "7 > 6 remaining");
    let (s, b) = node.validate(&key, 6).await;
    assert_eq!(s, 200, "the 422 and the 429 spent nothing: {b}");
}

#[tokio::test]
async fn batch_answers_in_order_with_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("RINGLIMIT_MAX_BATCH", "5")]);
    let (_, key) = node
        .create_key(json!([limit("l", "sliding_log", 2, 60_000)]))
        .await;
    let bad = format!("rl_{}_{}", "z".repeat(20), "Q".repeat(43));
    let checks = json!({"checks": [
        {"api_key": key, "cost": 1}, {"api_key": bad, "cost": 1}, {"api_key": key, "cost": 1}, {"api_key": key, "cost": 1}
    ]});
    let resp = node
        .http
        .post(format!("{}/api/v1/validate/batch", node.data))
        .json(&checks)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b: serde_json::Value = resp.json().await.unwrap();
    let statuses: Vec<u64> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 401, 200, 429]);
    assert_eq!(b["results"][2]["limits"][0]["remaining"], 0);
    let six = json!({"checks": (0..6).map(|_| json!({"api_key": key})).collect::<Vec<_>>()});
    let resp = node
        .http
        .post(format!("{}/api/v1/validate/batch", node.data))
        .json(&six)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let b: serde_json::Value = resp.json().await.unwrap();
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 5")
    );
}

#[tokio::test]
async fn tier_and_key_limit_changes_apply_to_the_next_check() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (s, _) = node
        .admin(
            Method::PUT,
            "/api/v1/tiers/bronze",
            Some(json!({"limits": [limit("per-hour", "fixed_window", 2, 3_600_000)]})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = node
        .admin(
            Method::POST,
            "/api/v1/keys",
            Some(json!({"owner":"o","tier":"bronze"})),
        )
        .await;
    assert_eq!(s, 201);
    let key = v["api_key"].as_str().unwrap().to_string();
    let id = v["key_id"].as_str().unwrap().to_string();
    assert_eq!(node.validate(&key, 1).await.0, 200);
    assert_eq!(node.validate(&key, 1).await.0, 200);
    assert_eq!(node.validate(&key, 1).await.0, 429);
    // Raise the tier's quota at run time: same window, spent units stay spent.
    let (s, _) = node
        .admin(
            Method::PUT,
            "/api/v1/tiers/bronze",
            Some(json!({"limits": [limit("per-hour", "fixed_window", 3, 3_600_000)]})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = node.validate(&key, 1).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["limits"][0]["limit"], 3);
    assert_eq!(node.validate(&key, 1).await.0, 429);
    // A per-key override wins over the tier.
    let (s, v) = node
        .admin(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"limits": [limit("per-hour", "fixed_window", 10, 3_600_000)]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(node.validate(&key, 1).await.0, 200);
    let (_, l) = node
        .admin(Method::GET, &format!("/api/v1/usage/{id}/limits"), None)
        .await;
    assert_eq!(l["overridden"], true);
    assert_eq!(l["limits"][0]["limit"], 10);
    // Suspend: 403; reactivate: 200.
    let (s, _) = node
        .admin(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = node.validate(&key, 1).await;
    assert_eq!(s, 403);
    assert_eq!(b["error"]["code"], "suspended");
    node.admin(
        Method::PATCH,
        &format!("/api/v1/keys/{id}"),
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(node.validate(&key, 1).await.0, 200);
}

#[tokio::test]
async fn list_keys_pages_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    for i in 0..7 {
        let owner = if i % 2 == 0 { "even" } else { "odd" };
        let tier = if i < 3 { "pro" } else { "free" };
        let (s, _) = node
            .admin(
                Method::POST,
                "/api/v1/keys",
                Some(json!({"owner": owner, "tier": tier, "metadata": {"i": i}})),
            )
            .await;
        assert_eq!(s, 201);
    }
    let mut seen = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let q = match &page {
            Some(p) => format!("/api/v1/keys?limit=3&page={p}"),
            None => "/api/v1/keys?limit=3".to_string(),
        };
        let (s, v) = node.admin(Method::GET, &q, None).await;
        assert_eq!(s, 200);
        for k in v["keys"].as_array().unwrap() {
            seen.push(k["key_id"].as_str().unwrap().to_string());
        }
        match v["next_page"].as_str() {
            Some(p) => page = Some(p.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages are in key_id order without repeats");
    let (_, v) = node
        .admin(Method::GET, "/api/v1/keys?owner=even", None)
        .await;
    assert_eq!(v["keys"].as_array().unwrap().len(), 4);
    let (_, v) = node
        .admin(Method::GET, "/api/v1/keys?owner=even&tier=pro", None)
        .await;
    assert_eq!(v["keys"].as_array().unwrap().len(), 2);
    let (_, v) = node
        .admin(Method::GET, "/api/v1/keys?status=revoked", None)
        .await;
    assert_eq!(v["keys"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn usage_history_counts_admitted_units() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[("RINGLIMIT_FLUSH_INTERVAL_MS", "20")]);
    let (id, key) = node
        .create_key(json!([limit("l", "sliding_log", 6, 3_600_000)]))
        .await;
    for _ in 0..3 {
        assert_eq!(node.validate(&key, 2).await.0, 200);
    }
    assert_eq!(
        node.validate(&key, 2).await.0,
        429,
        "denied units are not usage"
    );
    for g in ["minute", "hour", "day"] {
        let path = format!("/api/v1/usage/{id}/history?granularity={g}");
        assert!(
            eventually(
                5,
                async || node.admin(Method::GET, &path, None).await.1["total"] == 6
            )
            .await,
            "{g} history totals the admitted units"
        );
    }
    let (s, v) = node
        .admin(
            Method::GET,
            &format!("/api/v1/usage/{id}/history?granularity=week"),
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = node
        .admin(
            Method::GET,
            &format!("/api/v1/usage/{id}/history?from=10&to=5"),
            None,
        )
        .await;
    assert_eq!(s, 422, "{v}");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let r = node
        .http
        .get(format!("{}/healthz", node.data))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = node
        .http
        .get(format!("{}/readyz", node.data))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers()["x-request-id"].is_empty());
    let r = node
        .http
        .get(format!("{}/metrics", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
