//! cluster-compose.yml parses, describes what DESIGN.md asks for, and a node
//! starts with the environment it gives (only the addresses that exist inside
//! Docker are swapped for loopback ones).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::collections::BTreeMap;

fn compose() -> serde_yaml::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cluster-compose.yml"
    ))
    .unwrap();
    let mut v: serde_yaml::Value =
        serde_yaml::from_str(&text).expect("cluster-compose.yml is YAML");
    v.apply_merge().unwrap();
    v
}

#[test]
fn compose_file_describes_three_nodes_and_the_backends() {
    let v = compose();
    let services = v["services"].as_mapping().unwrap();
    for s in [
        "ringlimit-1",
        "ringlimit-2",
        "ringlimit-3",
        "redis",
        "scylla",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(s), "service {s}");
    }
    for i in 1..=3 {
        let env = v["services"][format!("ringlimit-{i}").as_str()]["environment"]
            .as_mapping()
            .unwrap();
        let cookie = env
            .get("RINGLIMIT_COOKIE")
            .and_then(|c| c.as_str())
            .unwrap_or_default();
        assert!(
            cookie.chars().count() >= 32,
            "ringlimit-{i}: the cookie has at least 32 characters"
        );
        for k in [
            "RINGLIMIT_NODE_NAME",
            "RINGLIMIT_CLUSTER_ADDR",
            "RINGLIMIT_SEEDS",
            "RINGLIMIT_COOKIE",
            "RINGLIMIT_SCYLLA_NODES",
            "RINGLIMIT_REDIS_URL",
            "RINGLIMIT_DATA_ADDR",
            "RINGLIMIT_ADMIN_ADDR",
        ] {
            assert!(env.contains_key(k), "ringlimit-{i} sets {k}");
        }
        assert!(
            v["services"][format!("ringlimit-{i}").as_str()]["build"].is_string(),
            "built from the Dockerfile"
        );
    }
    assert!(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile")).exists());
}

#[tokio::test]
async fn a_node_starts_with_the_compose_environment() {
    let v = compose();
    let env: BTreeMap<String, String> = v["services"]["ringlimit-1"]["environment"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Swap the Docker-network addresses for the test command's servers.
    let (Ok(cql), Ok(redis)) = (
        std::env::var("RINGLIMIT_TEST_CQL"),
        std::env::var("RINGLIMIT_TEST_REDIS_URL"),
    ) else {
        assert!(
            std::env::var_os("CI").is_none()
                && std::env::var("RINGLIMIT_REQUIRE_SERVERS").as_deref() != Ok("1"),
            "servers missing under CI"
        );
        eprintln!("skipping: RINGLIMIT_TEST_CQL / RINGLIMIT_TEST_REDIS_URL not set");
        return;
    };
    let port = free_port();
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    let ks = format!("rl_compose_{}", hex::encode(b));
    let mut pairs: Vec<(String, String)> = env.into_iter().collect();
    for (k, v) in &mut pairs {
        match k.as_str() {
            "RINGLIMIT_SCYLLA_NODES" => *v = cql.clone(),
            "RINGLIMIT_SCYLLA_KEYSPACE" => *v = ks.clone(),
            "RINGLIMIT_REDIS_URL" => *v = redis.clone(),
            "RINGLIMIT_CLUSTER_ADDR" | "RINGLIMIT_ADVERTISE_ADDR" => {
                *v = format!("127.0.0.1:{port}")
            }
            "RINGLIMIT_DATA_ADDR" | "RINGLIMIT_ADMIN_ADDR" => *v = "127.0.0.1:0".into(),
            _ => {}
        }
    }
    assert!(
        pairs
            .iter()
            .any(|(k, v)| k == "RINGLIMIT_SEEDS" && v.contains("ringlimit-2")),
        "seeds name the other services"
    );
    let dir = tempfile::tempdir().unwrap();
    let token = pairs
        .iter()
        .find(|(k, _)| k == "RINGLIMIT_ADMIN_TOKEN")
        .unwrap()
        .1
        .clone();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let node = Node::start(dir.path(), &refs);
    let r = node
        .http
        .get(format!("{}/api/v1/cluster", node.admin))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["node_name"], "ringlimit-1");
    assert_eq!(v["clustered"], true);
}
