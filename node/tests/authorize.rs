//! `/api/v1/authorize`, the header-based check for proxies, against a live
//! node: the key from `Authorization: Bearer` or `X-Api-Key`, the cost from
//! `X-RateLimit-Cost`, the caller from `X-Real-IP`; statuses and headers as
//! a proxy reads them, and bad input refused without spending anything.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::json;

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn authorize(node: &Node, method: reqwest::Method, headers: &[(&str, &str)]) -> Answer {
    let mut req = reqwest::Client::new().request(method, format!("{}/api/v1/authorize", node.data));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    Answer {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header in {:?}", a.headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_checks_a_key_by_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (key_id, key) = node
        .create_key(json!([limit("per-minute", "fixed_window", 5, 3_600_000)]))
        .await;
    let bearer = format!("Bearer {key}");

    // Admitted: 200, empty body, the RateLimit headers and the key named.
    let a = authorize(&node, reqwest::Method::GET, &[("authorization", &bearer)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, "");
    assert_eq!(header(&a, "x-ratelimit-key-id"), key_id);
    assert_eq!(header(&a, "x-ratelimit-tier"), "free");
    assert!(header(&a, "ratelimit-policy").starts_with("\"per-minute\";q=5;w=3600"));
    assert!(
        header(&a, "ratelimit").starts_with("\"per-minute\";r=4;"),
        "{:?}",
        a.headers
    );

    // X-Api-Key and a cost of 2, by PUT.
    let a = authorize(
        &node,
        reqwest::Method::PUT,
        &[("x-api-key", &key), ("x-ratelimit-cost", "2")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(header(&a, "ratelimit").starts_with("\"per-minute\";r=2;"));

    // Bad input: a clear JSON error, and nothing spent.
    for (headers, status, says) in [
        (
            vec![
                ("authorization", bearer.as_str()),
                ("x-ratelimit-cost", "0"),
            ],
            400,
            "X-RateLimit-Cost",
        ),
        (
            vec![
                ("authorization", bearer.as_str()),
                ("x-ratelimit-cost", "1.5"),
            ],
            400,
            "X-RateLimit-Cost",
        ),
        (
            vec![
                ("authorization", bearer.as_str()),
                ("x-real-ip", "not-an-ip"),
            ],
            400,
            "X-Real-IP",
        ),
        (vec![], 401, "no api_key"),
        (vec![("authorization", "Basic dXNlcjpwYXNz")], 401, "Bearer"),
    ] {
        let a = authorize(&node, reqwest::Method::GET, &headers).await;
        assert_eq!(a.status, status, "{headers:?}: {}", a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{headers:?}: {message}");
        if status == 401 {
            assert_eq!(header(&a, "www-authenticate"), "Bearer");
        }
    }
    let a = authorize(
        &node,
        reqwest::Method::GET,
        &[("x-api-key", "rl_nokey_nosecret")],
    )
    .await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.body.contains("unauthorized"), "{}", a.body);

    // Two units left: a cost of 3 is denied with Retry-After, empty body.
    let a = authorize(
        &node,
        reqwest::Method::GET,
        &[("authorization", &bearer), ("x-ratelimit-cost", "3")],
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body, "");
    assert!(header(&a, "retry-after").parse::<u64>().unwrap() >= 1);
    assert!(header(&a, "ratelimit").starts_with("\"per-minute\";r=2;"));
    // The last two.
    let a = authorize(
        &node,
        reqwest::Method::GET,
        &[("authorization", &bearer), ("x-ratelimit-cost", "2")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(header(&a, "ratelimit").starts_with("\"per-minute\";r=0;"));
    let (s, _) = node.validate(&key, 1).await;
    assert_eq!(s, 429, "5 of 5 spent through authorize");

    // Any method is a check (Envoy's ext_authz keeps the original one).
    let a = authorize(
        &node,
        reqwest::Method::DELETE,
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_caller_named_by_x_real_ip_is_refused_and_spends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let (_, key) = node
        .create_key(json!([limit("hour", "fixed_window", 1, 3_600_000)]))
        .await;
    let (s, b) = node
        .admin(
            reqwest::Method::POST,
            "/api/v1/blocks",
            Some(json!({"cidr": "198.51.100.0/24"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let a = authorize(
        &node,
        reqwest::Method::GET,
        &[("x-api-key", &key), ("x-real-ip", "198.51.100.9")],
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = authorize(
        &node,
        reqwest::Method::GET,
        &[("x-api-key", &key), ("x-real-ip", "192.0.2.9")],
    )
    .await;
    assert_eq!(a.status, 200, "the blocked check spent nothing: {}", a.body);
}
