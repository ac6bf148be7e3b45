//! A 3-node cluster of real processes on loopback, formed from the
//! environment of DESIGN.md §4a alone, with the CQL server and Redis of the
//! test command. Under CI a missing server fails these tests.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

fn servers() -> Option<(String, String)> {
    let cql = std::env::var("RINGLIMIT_TEST_CQL")
        .ok()
        .filter(|s| !s.is_empty());
    let redis = std::env::var("RINGLIMIT_TEST_REDIS_URL")
        .ok()
        .filter(|s| !s.is_empty());
    match (cql, redis) {
        (Some(c), Some(r)) => Some((c, r)),
        _ if servers_required() => panic!(
            "RINGLIMIT_TEST_CQL and RINGLIMIT_TEST_REDIS_URL must be set (scripts/test.sh sets them)"
        ),
        _ => {
            eprintln!("skipping: RINGLIMIT_TEST_CQL / RINGLIMIT_TEST_REDIS_URL not set");
            None
        }
    }
}

struct Cluster {
    nodes: Vec<Option<Node>>,
    names: Vec<String>,
    env: Vec<Vec<(String, String)>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(tag: &str) -> Option<Cluster> {
        Cluster::start_with(tag, &[]).await
    }

    /// A cluster whose nodes all get `extra` in their environment.
    async fn start_with(tag: &str, extra: &[(&str, &str)]) -> Option<Cluster> {
        let (cql, redis) = servers()?;
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).unwrap();
        let ks = format!("rl_{tag}_{}", hex::encode(b));
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let names: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
        let mut env = Vec::new();
        for i in 0..3 {
            let seeds: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("127.0.0.1:{}", ports[j]))
                .collect();
            env.push(vec![
                ("RINGLIMIT_NODE_NAME".to_string(), names[i].clone()),
                (
                    "RINGLIMIT_CLUSTER_ADDR".to_string(),
                    format!("127.0.0.1:{}", ports[i]),
                ),
                ("RINGLIMIT_SEEDS".to_string(), seeds.join(",")),
                ("RINGLIMIT_COOKIE".to_string(), COOKIE.to_string()),
                ("RINGLIMIT_SCYLLA_NODES".to_string(), cql.clone()),
                ("RINGLIMIT_SCYLLA_KEYSPACE".to_string(), ks.clone()),
                ("RINGLIMIT_REDIS_URL".to_string(), redis.clone()),
                ("RINGLIMIT_FLUSH_INTERVAL_MS".to_string(), "100".to_string()),
            ]);
            env[i].extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        // Migrate once before the nodes start together.
        migrate(&cql, &ks);
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut c = Cluster {
            nodes: vec![],
            names,
            env,
            _dirs: vec![],
        };
        for i in 0..3 {
            c.nodes.push(Some(c.spawn(i, dirs[i].path())));
        }
        c._dirs = dirs;
        assert!(c.converged(&[0, 1, 2], 20).await, "the cluster formed");
        Some(c)
    }

    fn spawn(&self, i: usize, dir: &std::path::Path) -> Node {
        let env: Vec<(&str, &str)> = self.env[i]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Node::start(dir, &env)
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().unwrap()
    }

    async fn view(&self, i: usize) -> Value {
        self.node(i)
            .admin(Method::GET, "/api/v1/cluster", None)
            .await
            .1
    }

    /// Whether the given nodes agree on one ring made of exactly them.
    async fn converged(&self, live: &[usize], secs: u64) -> bool {
        let want: Vec<String> = live.iter().map(|&i| self.names[i].clone()).collect();
        eventually(secs, async || {
            let mut versions = Vec::new();
            for &i in live {
                let v = self.view(i).await;
                let members: Vec<String> = v["ring_members"]
                    .as_array()
                    .map(|a| a.iter().map(|m| m.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default();
                if members != want || v["handoff_in_progress"] == true {
                    return false;
                }
                versions.push(v["ring_version"].as_u64().unwrap());
            }
            versions.windows(2).all(|w| w[0] == w[1])
        })
        .await
    }

    async fn owner(&self, via: usize, key_id: &str) -> String {
        let v = self
            .node(via)
            .admin(
                Method::GET,
                &format!("/api/v1/cluster/owner?key_id={key_id}"),
                None,
            )
            .await
            .1;
        v["owner"].as_str().unwrap().to_string()
    }

    /// Whether every running node serves the key's record within 5 s.
    async fn knows_key(&self, id: &str) -> bool {
        eventually(5, async || {
            let mut ok = true;
            for n in self.nodes.iter().flatten() {
                ok &= n
                    .admin(Method::GET, &format!("/api/v1/keys/{id}"), None)
                    .await
                    .0
                    == 200;
            }
            ok
        })
        .await
    }

    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap()
    }
}

/// Sends `n` validates concurrently, round-robin over `via`, and counts the 200s.
async fn burst(c: &Cluster, via: &[usize], key: &str, n: usize) -> (usize, HashMap<u16, usize>) {
    let urls: Vec<String> = via
        .iter()
        .map(|&i| format!("{}/api/v1/validate", c.node(i).data))
        .collect();
    let clients: Vec<reqwest::Client> = (0..12).map(|_| reqwest::Client::new()).collect();
    let body = Arc::new(json!({"api_key": key}));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (url, client, body) = (
                urls[i % urls.len()].clone(),
                clients[i % clients.len()].clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(body.as_ref())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut by: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        *by.entry(t.await.unwrap()).or_default() += 1;
    }
    (by.get(&200).copied().unwrap_or(0), by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_limit_ownership_and_admin_reach() {
    let Some(c) = Cluster::start("glob").await else {
        return;
    };
    // Ownership agrees on every node, and is balanced.
    let mut share: HashMap<String, usize> = HashMap::new();
    let client = reqwest::Client::new();
    for k in 0..10_000u32 {
        let key_id = format!("{:020x}", (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut owners = Vec::new();
        for i in 0..3 {
            let v: Value = client
                .get(format!(
                    "{}/api/v1/cluster/owner?key_id={key_id}",
                    c.node(i).admin
                ))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            owners.push(v["owner"].as_str().unwrap().to_string());
        }
        assert!(
            owners.windows(2).all(|w| w[0] == w[1]),
            "nodes disagree on {key_id}: {owners:?}"
        );
        *share.entry(owners[0].clone()).or_default() += 1;
    }
    for (n, s) in &share {
        let f = *s as f64 / 10_000.0;
        assert!(
            (0.2833..=0.3834).contains(&f),
            "{n} owns {f:.3}, outside ±15% of a third"
        );
    }
    eprintln!("ownership shares over 10 000 keys: {share:?}");

    // A key created on node 0 works on every node; exactly 300 of 3 000 pass.
    let (id, key) = c
        .node(0)
        .create_key(json!([limit("per-minute", "sliding_log", 300, 60_000)]))
        .await;
    for i in 0..3 {
        assert!(
            eventually(5, async || c.node(i).validate(&key, 1).await.0 != 401).await,
            "node {i} knows the new key"
        );
    }
    // The three probes above spent 3; refill by using a fresh key for the count.
    let (id2, key2) = c
        .node(1)
        .create_key(json!([limit("per-minute", "sliding_log", 300, 60_000)]))
        .await;
    assert!(c.knows_key(&id2).await, "every node knows the second key");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (allowed, by) = burst(&c, &[0, 1, 2], &key2, 3_000).await;
    assert_eq!(
        allowed, 300,
        "exactly the global limit passes across three nodes: {by:?}"
    );

    // Admin change reach: revoked on node 2, refused on 0 and 1 within 1 s.
    let owner = c.owner(0, &id).await;
    eprintln!("key {id} is owned by {owner}");
    let r = c
        .node(2)
        .http
        .delete(format!("{}/api/v1/keys/{id}", c.node(2).admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let t0 = ringlimit_actors::clock::monotonic();
    for i in [0, 1] {
        assert!(
            eventually(1, async || c.node(i).validate(&key, 1).await.0 == 401).await,
            "node {i} refuses the revoked key within 1 s"
        );
    }
    eprintln!("revocation reached both other nodes in {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_hands_keys_over_without_losing_or_duplicating_admits() {
    let Some(mut c) = Cluster::start("drain").await else {
        return;
    };
    let (id, key) = c
        .node(0)
        .create_key(json!([limit("per-minute", "sliding_log", 300, 60_000)]))
        .await;
    assert!(
        eventually(5, async || c.node(1).validate(&key, 1).await.0 == 200
            && c.node(2).validate(&key, 1).await.0 == 200)
        .await
    );
    let used_before = 2;
    let owner = c.index(&c.owner(0, &id).await);
    let others: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    // Half the quota before the drain, through the two nodes that stay.
    let (a1, by1) = burst(&c, &others, &key, 148).await;
    assert_eq!(a1, 148, "{by1:?}");
    let drain = c
        .node(owner)
        .http
        .post(format!("{}/api/v1/cluster/drain", c.node(owner).admin))
        .bearer_auth(TOKEN)
        .send();
    let load = burst(&c, &others, &key, 1_000);
    let (r, (a2, by)) = tokio::join!(drain, load);
    assert_eq!(r.unwrap().status(), 202);
    assert!(
        c.converged(&others, 10).await,
        "the drained node left the ring"
    );
    let (a3, _) = burst(&c, &others, &key, 200).await;
    assert_eq!(
        used_before + a1 + a2 + a3,
        300,
        "exactly 300 across the handoff ({by:?})"
    );
    let mut n = c.nodes[owner].take().unwrap();
    assert!(n.signal_and_wait(SIGTERM).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_and_freeze_move_keys_and_nodes_rejoin() {
    let Some(mut c) = Cluster::start("crash").await else {
        return;
    };
    let (id, key) = c
        .node(0)
        .create_key(json!([limit("per-minute", "sliding_log", 300, 60_000)]))
        .await;
    assert!(c.knows_key(&id).await, "every node knows the new key");
    let owner = c.index(&c.owner(0, &id).await);
    let others: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    let (a1, by1) = burst(&c, &others, &key, 200).await;
    assert_eq!(a1, 200, "{by1:?}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let killed_at = ringlimit_actors::clock::monotonic();
    let mut n = c.nodes[owner].take().unwrap();
    n.signal_and_wait(SIGKILL);
    assert!(
        c.converged(&others, 4).await,
        "survivors drop the dead node within the heartbeat timeout + 1 s"
    );
    let took = killed_at.elapsed();
    let new_owner = c.owner(others[0], &id).await;
    assert_ne!(c.index(&new_owner), owner);
    let (a2, by) = burst(&c, &others, &key, 400).await;
    let excess = (a1 + a2).saturating_sub(300);
    eprintln!(
        "crash: survivors took over in {took:?}; {a1} admitted before, {a2} after; excess beyond the limit: {excess} ({by:?})"
    );
    assert_eq!(
        excess, 0,
        "the state was flushed to Redis before the kill, so nothing is re-admitted"
    );

    // The killed node comes back: it rejoins and its keys move back.
    let dir = c._dirs[owner].path().to_path_buf();
    c.nodes[owner] = Some(c.spawn(owner, &dir));
    assert!(
        c.converged(&[0, 1, 2], 15).await,
        "the restarted node rejoins and all three converge"
    );

    // Freeze one node: the other two drop it and keep answering; on SIGCONT it
    // rejoins and all three converge on one ring version.
    let frozen = others[1];
    let live: Vec<usize> = (0..3).filter(|&i| i != frozen).collect();
    let pid = c.node(frozen).pid();
    unsafe_kill(pid, 19);
    assert!(
        c.converged(&live, 4).await,
        "a frozen node leaves the ring within the timeout"
    );
    let s = c.node(live[0]).validate(&key, 1).await.0;
    assert!(
        s == 200 || s == 429,
        "the others keep answering for the key, got {s}"
    );
    unsafe_kill(pid, 18);
    assert!(
        c.converged(&[0, 1, 2], 15).await,
        "after SIGCONT the node rejoins and the ring converges on all three"
    );
}

/// An owner that is alive but slow (frozen for less than the heartbeat
/// timeout) is waited for: the checks forwarded to it meanwhile get its
/// answer once it resumes, never an "allowed" made up on its behalf.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_owner_is_waited_for_not_bypassed() {
    let Some(c) = Cluster::start_with("slow", &[("RINGLIMIT_HEARTBEAT_TIMEOUT_MS", "5000")]).await
    else {
        return;
    };
    let (id, key) = c
        .node(0)
        .create_key(json!([limit("per-minute", "sliding_log", 5, 60_000)]))
        .await;
    assert!(c.knows_key(&id).await, "every node knows the new key");
    let owner = c.index(&c.owner(0, &id).await);
    let via = (owner + 1) % 3;
    // Spend the whole limit through another node.
    for _ in 0..5 {
        assert_eq!(c.node(via).validate(&key, 1).await.0, 200);
    }
    // Freeze the owner for 1.5 s: longer than a forwarded batch used to be
    // waited for (1 s), well under the 5 s heartbeat timeout.
    let pid = c.node(owner).pid();
    unsafe_kill(pid, 19);
    let thaw = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        unsafe_kill(pid, 18);
    });
    let started = ringlimit_actors::clock::monotonic();
    let (s1, s2, s3) = tokio::join!(
        c.node(via).validate(&key, 1),
        c.node(via).validate(&key, 1),
        c.node((owner + 2) % 3).validate(&key, 1),
    );
    thaw.await.unwrap();
    eprintln!(
        "answers while the owner was frozen: {} {} {} after {:?}",
        s1.0,
        s2.0,
        s3.0,
        started.elapsed()
    );
    assert_eq!(
        [s1.0, s2.0, s3.0],
        [429, 429, 429],
        "the owner's answers, not fail-open 200s: {s1:?} {s2:?} {s3:?}"
    );
    assert!(
        c.converged(&[0, 1, 2], 10).await,
        "the owner never left the ring"
    );
}

/// A revocation is answered 204 only once every member applied it. With the
/// key's owner briefly frozen (well under the heartbeat timeout), the DELETE
/// on another node waits for it, then answers 202 naming it as pending; once
/// the owner resumes, the background retry reaches it and the key is refused
/// there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_waits_for_every_member_and_reports_what_is_pending() {
    let Some(c) =
        Cluster::start_with("revoke", &[("RINGLIMIT_HEARTBEAT_TIMEOUT_MS", "4000")]).await
    else {
        return;
    };
    let limits = json!([limit("per-minute", "sliding_log", 1000, 60_000)]);

    // Every member up: 204, and the owner refuses the key at once.
    let (id, key) = c.node(0).create_key(limits.clone()).await;
    assert!(c.knows_key(&id).await);
    let owner = c.index(&c.owner(0, &id).await);
    let via = (owner + 1) % 3;
    assert_eq!(c.node(owner).validate(&key, 1).await.0, 200);
    let (s, body) = c
        .node(via)
        .admin(Method::DELETE, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(s, 204, "{body}");
    assert_eq!(
        c.node(owner).validate(&key, 1).await.0,
        401,
        "the owner acknowledged the revocation before the 204"
    );

    // The owner frozen: the DELETE waits for it, then says it is pending.
    let (id, key) = c.node(0).create_key(limits).await;
    assert!(c.knows_key(&id).await);
    let owner = c.index(&c.owner(0, &id).await);
    let via = (owner + 1) % 3;
    assert_eq!(c.node(owner).validate(&key, 1).await.0, 200);
    let pid = c.node(owner).pid();
    unsafe_kill(pid, 19);
    let (s, body) = c
        .node(via)
        .admin(Method::DELETE, &format!("/api/v1/keys/{id}"), None)
        .await;
    unsafe_kill(pid, 18);
    assert_eq!(s, 202, "not acknowledged by the frozen owner: {body}");
    assert_eq!(body["revoked"], true);
    assert_eq!(body["pending"], json!([c.names[owner]]), "{body}");
    let others: Vec<Value> = (0..3)
        .filter(|&i| i != owner && i != via)
        .map(|i| json!(c.names[i]))
        .collect();
    assert_eq!(body["acknowledged_by"], json!(others), "{body}");
    // The revocation holds on the node that took it, and reaches the owner
    // once it resumes (the background retry, well before the 30 s reload).
    assert_eq!(c.node(via).validate(&key, 1).await.0, 401);
    assert!(
        eventually(5, async || c.node(owner).validate(&key, 1).await.0 == 401).await,
        "the owner applies the revocation after it resumes"
    );
}
