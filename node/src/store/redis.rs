//! Redis as the write-behind backup of live counter state.
//!
//! # Key layout
//! One string per key: `rl:{<key_id>}:state` → the KeyLimiter snapshot
//! (MessagePack, see `ringlimit_actors::cell::Snapshot`), written with
//! `SET key value PX ttl`. The braces are a Redis Cluster hash tag: every key
//! ringlimit keeps for one key_id hashes to the same slot (today there is one;
//! any added later, e.g. a per-key lock, must use the same tag).
//!
//! The TTL is the longest window among the key's limits plus one hour, so a
//! state outlives everything it can still influence and then disappears by
//! itself. No Lua scripts are used: each flush is plain `SET … PX` commands.
//!
//! # Batching
//! A flush writes the whole batch in one pipeline on a single Redis. On Redis
//! Cluster, pipelines cannot cross slots, so the batch is split into one
//! pipeline per slot, all sent at once over the multiplexed connection.
//!
//! # Failure
//! Every operation has a bounded timeout and maps failures to
//! [`StoreError::Unavailable`]. The write-behind keeps unwritten state pending
//! and retries at the next flush; checks never wait on Redis, except the first
//! activation of a key, which loads its snapshot within the timeout.

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use ringlimit_actors::cell::Snapshot;
use ringlimit_actors::storage::{SnapshotStore, StoreError};
use std::collections::HashMap;
use std::time::Duration;

/// The Redis key of a key_id's state.
pub fn state_key(key_id: &str) -> String {
    format!("rl:{{{key_id}}}:state")
}

/// Extra time a state is kept beyond its longest window.
pub const TTL_MARGIN_MS: u64 = 3_600_000;

/// TTL of a snapshot: its longest window plus [`TTL_MARGIN_MS`].
pub fn ttl_ms(snapshot: &[u8]) -> u64 {
    let longest = Snapshot::decode(snapshot)
        .map(|s| {
            s.limits
                .entries
                .iter()
                .map(|e| e.spec.window_ms)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    longest.max(60_000) + TTL_MARGIN_MS
}

/// CRC16 (XMODEM) of Redis Cluster, on the hash tag when there is one.
pub fn slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = match (
        b.iter().position(|&c| c == b'{'),
        b.iter().rposition(|&c| c == b'}'),
    ) {
        (Some(open), _) => match b[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &b[open + 1..open + 1 + len],
            _ => b,
        },
        _ => b,
    };
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Counter snapshots in Redis or Redis Cluster.
#[derive(Clone)]
pub struct RedisSnapshots {
    conn: Conn,
    timeout: Duration,
    /// Where it connects, password hidden.
    target: String,
    /// The marker token last read ([`SnapshotStore::lost_writes`]).
    marker_seen: std::sync::Arc<parking_lot::Mutex<Option<String>>>,
}

impl std::fmt::Debug for RedisSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSnapshots")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisSnapshots {
    /// Connects to one Redis. The connection manager reconnects by itself;
    /// the first connection must succeed within `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Backend(format!("redis url: {e}")))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1);
        let conn =
            tokio::time::timeout(timeout * 2, ConnectionManager::new_with_config(client, cfg))
                .await
                .map_err(|_| unavailable("connect timed out"))?
                .map_err(unavailable)?;
        Ok(RedisSnapshots {
            conn: Conn::Single(conn),
            timeout,
            // Shown by Debug: without the password.
            target: ringlimit_actors::redact::url(url),
            marker_seen: Default::default(),
        })
    }

    /// Connects to a Redis Cluster through its seed nodes (`host:port`).
    pub async fn connect_cluster(nodes: &[String], timeout: Duration) -> Result<Self, StoreError> {
        let urls: Vec<String> = nodes.iter().map(|n| format!("redis://{n}")).collect();
        let client = redis::cluster::ClusterClientBuilder::new(urls)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()
            .map_err(|e| StoreError::Backend(format!("redis cluster: {e}")))?;
        let conn = tokio::time::timeout(timeout * 2, client.get_async_connection())
            .await
            .map_err(|_| unavailable("cluster connect timed out"))?
            .map_err(unavailable)?;
        Ok(RedisSnapshots {
            conn: Conn::Cluster(conn),
            timeout,
            target: nodes.join(","),
            marker_seen: Default::default(),
        })
    }

    async fn pipe(&self, p: redis::Pipeline) -> Result<(), StoreError> {
        let fut = async {
            match self.conn.clone() {
                Conn::Single(mut c) => p.query_async::<()>(&mut c).await,
                Conn::Cluster(mut c) => p.query_async::<()>(&mut c).await,
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unavailable("timed out"))?
            .map_err(unavailable)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let fut = async {
            match self.conn.clone() {
                Conn::Single(mut c) => cmd.query_async::<T>(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async::<T>(&mut c).await,
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unavailable("timed out"))?
            .map_err(unavailable)
    }

    /// `PING`, for readiness checks and tests.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.query(redis::cmd("PING")).await?;
        Ok(())
    }
}

fn set_cmd(p: &mut redis::Pipeline, key_id: &str, bytes: &[u8]) {
    p.cmd("SET")
        .arg(state_key(key_id))
        .arg(bytes)
        .arg("PX")
        .arg(ttl_ms(bytes))
        .ignore();
}

#[async_trait]
impl SnapshotStore for RedisSnapshots {
    async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        match &self.conn {
            Conn::Single(_) => {
                let mut p = redis::pipe();
                for (k, v) in batch {
                    set_cmd(&mut p, k, v);
                }
                self.pipe(p).await
            }
            Conn::Cluster(_) => {
                let mut by_slot: HashMap<u16, redis::Pipeline> = HashMap::new();
                for (k, v) in batch {
                    set_cmd(
                        by_slot
                            .entry(slot(&state_key(k)))
                            .or_insert_with(redis::pipe),
                        k,
                        v,
                    );
                }
                let results =
                    futures_util::future::join_all(by_slot.into_values().map(|p| self.pipe(p)))
                        .await;
                results.into_iter().collect()
            }
        }
    }

    async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = redis::cmd("GET");
        c.arg(state_key(key_id));
        self.query::<Option<Vec<u8>>>(c).await
    }

    /// A marker key holding a random token, set when missing and never
    /// expiring. Every node remembers the token it last read: when the
    /// marker is gone or holds another token, Redis lost its contents
    /// (restarted without persistence, or was flushed) and the snapshots of
    /// active keys must be written again. The first node to look after the
    /// loss sets a new token; the others then read a token they have not
    /// seen, so each of them notices. In a Redis Cluster the marker lives on
    /// one shard, so only that shard's loss is seen.
    async fn lost_writes(&self) -> Result<bool, StoreError> {
        let mut token = [0u8; 8];
        getrandom::fill(&mut token).map_err(|e| unavailable(format!("no randomness: {e}")))?;
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(MARKER_KEY)
            .arg(u64::from_le_bytes(token).to_string())
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(MARKER_KEY);
        let fut = async {
            match self.conn.clone() {
                Conn::Single(mut c) => p.query_async::<(Option<String>,)>(&mut c).await,
                Conn::Cluster(mut c) => p.query_async::<(Option<String>,)>(&mut c).await,
            }
        };
        let (now,) = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unavailable("timed out"))?
            .map_err(unavailable)?;
        let mut seen = self.marker_seen.lock();
        let lost = seen.is_some() && *seen != now;
        *seen = now;
        Ok(lost)
    }
}

/// See [`RedisSnapshots::lost_writes`].
pub const MARKER_KEY: &str = "rl:marker";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_slots() {
        assert_eq!(state_key("abc"), "rl:{abc}:state");
        // Known values from the Redis Cluster spec's CRC16.
        assert_eq!(slot("123456789"), 0x31C3 % 16_384);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot(&state_key("k1")), slot("k1"));
        // An empty tag hashes the whole key (values computed from the
        // spec's CRC16), and only the first `{…}` counts as a tag.
        assert_eq!(slot("foo{}bar"), 14_292);
        assert_ne!(slot("foo{}bar"), slot(""));
        assert_eq!(slot("foo{}{bar}"), 8_363);
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
    }

    #[test]
    fn ttl_covers_the_longest_window() {
        use ringlimit_actors::limitset::LimitSet;
        use ringlimit_protocol::{AlgorithmKind, LimitSpec};
        let spec = |w| LimitSpec {
            name: format!("w{w}"),
            algorithm: AlgorithmKind::FixedWindow,
            limit: 1,
            window_ms: w,
            burst: None,
        };
        let snap = Snapshot {
            limits: LimitSet::new(&[spec(1_000), spec(86_400_000)]),
            usage: Default::default(),
        };
        assert_eq!(
            ttl_ms(&snap.encode().expect("encodes")),
            86_400_000 + TTL_MARGIN_MS
        );
        assert_eq!(ttl_ms(b"garbage"), 60_000 + TTL_MARGIN_MS);
    }
}
