//! The embedded store: one [redb] file, `ringlimit.redb`, in the data directory.
//!
//! # Why redb
//! Pure Rust (no C toolchain, small compile cost), ACID transactions with
//! crash-safe commits (copy-on-write B-trees, checksummed commit slots: a
//! crash leaves the last committed state), and a stable, versioned file
//! format. A single-node deployment needs nothing else.
//!
//! # Tables
//! | table        | key                                                    | value                               |
//! |--------------|--------------------------------------------------------|-------------------------------------|
//! | `keys`       | key_id (`&str`)                                        | JSON of [`KeyRecord`] (`&[u8]`)     |
//! | `key_hashes` | secret hash (`[u8; 32]`, raw SHA-256)                  | key_id (`&str`)                     |
//! | `tiers`      | tier name (`&str`)                                     | JSON of [`TierRecord`] (`&[u8]`)    |
//! | `snapshots`  | key_id (`&str`)                                        | opaque snapshot bytes (`&[u8]`)     |
//! | `usage`      | (key_id `&str`, granularity `u8`, bucket_start_ms `u64`, writer `&str`) | absolute units (`u64`) |
//! | `violations` | (at_ms `u64`, id `&str`)                               | JSON of [`Violation`]               |
//! | `violations_by_key` | (key_id `&str`, at_ms `u64`, id `&str`)         | `()`                                |
//! | `blocks`     | id (`&str`)                                            | JSON of [`IpBlock`]                 |
//! | `audit`      | (at_ms `u64`, id `&str`)                               | JSON of [`AuditEntry`]              |
//! | `alerts`     | id (`&str`)                                            | JSON of [`Alert`]                   |
//! | `alerts_by_time` | (raised_at_ms `u64`, id `&str`)                    | `()`                                |
//! | `alerts_by_key`  | (key_id `&str`, raised_at_ms `u64`, id `&str`)     | `()`                                |
//! | `dead_letters`   | id (`&str`)                                        | JSON of [`DeadLetter`]              |
//! | `dead_letters_by_time` | (failed_at_ms `u64`, id `&str`)              | `()`                                |
//! | `billing`    | (key_id `&str`, period_start_ms `u64`)                 | JSON of [`BillingRecord`]           |
//! | `billing_by_period` | (period_start_ms `u64`, key_id `&str`)          | `()`                                |
//!
//! Time-ordered tables are scanned backwards for "newest first". Retention
//! ([`EmbeddedStore::apply_retention`]) deletes usage buckets and violations
//! older than the configured periods; the node runs it periodically.
//!
//! - `key_hashes` indexes the current and the previous secret hash of every
//!   key. [`put_key`](KeyStore::put_key) reads the old record in the same write
//!   transaction and removes the index entries of hashes the key no longer has.
//! - `usage` keys sort by key_id, then granularity (minute 0, hour 1, day 2),
//!   then bucket start, then writer, so a history query is one range scan; the
//!   rows of the writers of one bucket are adjacent and summed while scanning.
//!   Writers store absolute values, so rewriting a row is idempotent.
//!
//! # Concurrency and durability
//! redb is synchronous: every operation runs on Tokio's blocking pool
//! (`spawn_blocking`) and never blocks the async runtime. redb allows one
//! write transaction at a time (others wait) and any number of concurrent
//! readers, each on a consistent snapshot. Every write commits with redb's
//! default durability (`Durability::Immediate`: fsync on commit), and a batch
//! of snapshots or usage rows is one transaction.
//!
//! # One open per process
//! redb locks the file: a database can be opened only once per process (and by
//! one process) at a time. Opening the same directory again while an
//! [`EmbeddedStore`] on it is alive fails with [`StoreError::Backend`]
//! ("already open"); share the store (it is cheap to clone) instead. Once every
//! clone is dropped, the directory can be opened again.

use async_trait::async_trait;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use ringlimit_actors::keys::{KeyRecord, SecretHash};
use ringlimit_actors::storage::{
    AlertStore, AuditStore, BillingStore, BlockStore, BucketSum, KeyFilter, KeyStore, Range,
    Retention, SnapshotStore, StoreError, TierRecord, TierStore, UsageRow, UsageStore,
    ViolationStore,
};
use ringlimit_protocol::admin::{Granularity, UsageBucket};
use ringlimit_protocol::pipeline::{
    Alert, AuditEntry, BillingRecord, DeadLetter, IpBlock, Violation,
};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "ringlimit.redb";

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const KEY_HASHES: TableDefinition<[u8; 32], &str> = TableDefinition::new("key_hashes");
const TIERS: TableDefinition<&str, &[u8]> = TableDefinition::new("tiers");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
type UsageKey = (&'static str, u8, u64, &'static str);
const USAGE: TableDefinition<UsageKey, u64> = TableDefinition::new("usage");
type TimeKey = (u64, &'static str);
const VIOLATIONS: TableDefinition<TimeKey, &[u8]> = TableDefinition::new("violations");
type KeyTimeKey = (&'static str, u64, &'static str);
const VIOLATIONS_BY_KEY: TableDefinition<KeyTimeKey, ()> =
    TableDefinition::new("violations_by_key");
const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");
const AUDIT: TableDefinition<TimeKey, &[u8]> = TableDefinition::new("audit");
const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("alerts");
const ALERTS_BY_TIME: TableDefinition<TimeKey, ()> = TableDefinition::new("alerts_by_time");
const ALERTS_BY_KEY: TableDefinition<KeyTimeKey, ()> = TableDefinition::new("alerts_by_key");
const DEAD_LETTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("dead_letters");
const DEAD_BY_TIME: TableDefinition<TimeKey, ()> = TableDefinition::new("dead_letters_by_time");
type BillingKey = (&'static str, u64);
const BILLING: TableDefinition<BillingKey, &[u8]> = TableDefinition::new("billing");
type PeriodKey = (u64, &'static str);
const BILLING_BY_PERIOD: TableDefinition<PeriodKey, ()> = TableDefinition::new("billing_by_period");

/// The embedded store. Cloning shares the open database.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/ringlimit.redb`, creating `dir` too.
    ///
    /// Blocking: call it at start-up, or from `spawn_blocking`. After an
    /// unclean shutdown redb checks and repairs the file here, which can take
    /// a while on a large file.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!("create data directory {}: {e}", dir.display()))
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                "{} is already open (a redb database can be opened only once per process)",
                path.display()
            )),
            e => db_err(e),
        })?;
        // Create every table up front, so readers never meet a missing table.
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(KEYS).map_err(db_err)?;
            tx.open_table(KEY_HASHES).map_err(db_err)?;
            tx.open_table(TIERS).map_err(db_err)?;
            tx.open_table(SNAPSHOTS).map_err(db_err)?;
            tx.open_table(USAGE).map_err(db_err)?;
            tx.open_table(VIOLATIONS).map_err(db_err)?;
            tx.open_table(VIOLATIONS_BY_KEY).map_err(db_err)?;
            tx.open_table(BLOCKS).map_err(db_err)?;
            tx.open_table(AUDIT).map_err(db_err)?;
            tx.open_table(ALERTS).map_err(db_err)?;
            tx.open_table(ALERTS_BY_TIME).map_err(db_err)?;
            tx.open_table(ALERTS_BY_KEY).map_err(db_err)?;
            tx.open_table(DEAD_LETTERS).map_err(db_err)?;
            tx.open_table(DEAD_BY_TIME).map_err(db_err)?;
            tx.open_table(BILLING).map_err(db_err)?;
            tx.open_table(BILLING_BY_PERIOD).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Err(StoreError::Unavailable(
                "store task cancelled (shutting down)".into(),
            )),
            Err(e) => Err(StoreError::Backend(format!("store task panicked: {e}"))),
        }
    }
}

/// Maps a redb error: I/O hiccups that a retry may cure are transient,
/// corruption is [`StoreError::Corrupt`], everything else a backend failure.
fn db_err(e: impl Into<redb::Error>) -> StoreError {
    use std::io::ErrorKind;
    match e.into() {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(format!("redb: {msg}")),
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::Interrupted
                    | ErrorKind::TimedOut
                    | ErrorKind::WouldBlock
                    | ErrorKind::ResourceBusy
            ) =>
        {
            StoreError::Unavailable(format!("redb I/O: {io}"))
        }
        e => StoreError::Backend(format!("redb: {e}")),
    }
}

fn corrupt(what: &str, id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what} {id:?}: {e}"))
}

fn encode<T: serde::Serialize>(what: &str, id: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encode {what} {id:?}: {e}")))
}

fn decode_key(id: &str, bytes: &[u8]) -> Result<KeyRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt("key", id, e))
}

fn granularity_code(g: Granularity) -> u8 {
    match g {
        Granularity::Minute => 0,
        Granularity::Hour => 1,
        Granularity::Day => 2,
    }
}

/// The hashes a key is found by.
fn hashes(k: &KeyRecord) -> impl Iterator<Item = SecretHash> {
    std::iter::once(k.secret_hash).chain(k.previous_hash)
}

#[async_trait]
impl KeyStore for EmbeddedStore {
    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        let json = encode("key", &key.key_id, &key)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut keys = tx.open_table(KEYS).map_err(db_err)?;
                let mut index = tx.open_table(KEY_HASHES).map_err(db_err)?;
                let old = keys
                    .insert(key.key_id.as_str(), json.as_slice())
                    .map_err(db_err)?;
                let old = match old {
                    // An undecodable old record cannot tell its hashes; it is replaced
                    // anyway, and its stale index entries (if any) lead to this key only.
                    Some(guard) => decode_key(&key.key_id, guard.value()).ok(),
                    None => None,
                };
                let new: Vec<SecretHash> = hashes(&key).collect();
                for stale in old.iter().flat_map(hashes).filter(|h| !new.contains(h)) {
                    // Remove only entries that still point at this key.
                    let ours = index
                        .get(stale.0)
                        .map_err(db_err)?
                        .is_some_and(|v| v.value() == key.key_id);
                    if ours {
                        index.remove(stale.0).map_err(db_err)?;
                    }
                }
                for h in &new {
                    index.insert(h.0, key.key_id.as_str()).map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let keys = tx.open_table(KEYS).map_err(db_err)?;
            match keys.get(key_id.as_str()).map_err(db_err)? {
                Some(v) => decode_key(&key_id, v.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn key_id_by_hash(&self, hash: &SecretHash) -> Result<Option<String>, StoreError> {
        let hash = *hash;
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let index = tx.open_table(KEY_HASHES).map_err(db_err)?;
            Ok(index
                .get(hash.0)
                .map_err(db_err)?
                .map(|v| v.value().to_owned()))
        })
        .await
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let filter = filter.clone();
        let after = after.map(str::to_owned);
        self.blocking(move |db| {
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            let tx = db.begin_read().map_err(db_err)?;
            let keys = tx.open_table(KEYS).map_err(db_err)?;
            let lower = match after.as_deref() {
                Some(a) => Bound::Excluded(a),
                None => Bound::Unbounded,
            };
            for entry in keys
                .range::<&str>((lower, Bound::Unbounded))
                .map_err(db_err)?
            {
                let (k, v) = entry.map_err(db_err)?;
                let rec = decode_key(k.value(), v.value())?;
                if filter.matches(&rec) {
                    out.push(rec);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn load_all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let keys = tx.open_table(KEYS).map_err(db_err)?;
            let mut out =
                Vec::with_capacity(usize::try_from(keys.len().map_err(db_err)?).unwrap_or(0));
            for entry in keys.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                out.push(decode_key(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl TierStore for EmbeddedStore {
    async fn put_tier(&self, tier: &TierRecord) -> Result<(), StoreError> {
        let name = tier.name.clone();
        let json = encode("tier", &name, tier)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(TIERS)
                .map_err(db_err)?
                .insert(name.as_str(), json.as_slice())
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_tiers(&self) -> Result<Vec<TierRecord>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let tiers = tx.open_table(TIERS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in tiers.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                out.push(
                    serde_json::from_slice(v.value()).map_err(|e| corrupt("tier", k.value(), e))?,
                );
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl SnapshotStore for EmbeddedStore {
    async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut snaps = tx.open_table(SNAPSHOTS).map_err(db_err)?;
                for (key_id, bytes) in &batch {
                    snaps
                        .insert(key_id.as_str(), bytes.as_slice())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn load_snapshot(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let snaps = tx.open_table(SNAPSHOTS).map_err(db_err)?;
            Ok(snaps
                .get(key_id.as_str())
                .map_err(db_err)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn delete_snapshot(&self, key_id: &str) -> Result<(), StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(SNAPSHOTS)
                .map_err(db_err)?
                .remove(key_id.as_str())
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }
}

#[async_trait]
impl UsageStore for EmbeddedStore {
    async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = rows.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut usage = tx.open_table(USAGE).map_err(db_err)?;
                for r in &rows {
                    let k = (
                        r.key_id.as_str(),
                        granularity_code(r.granularity),
                        r.bucket_start_ms,
                        r.writer.as_str(),
                    );
                    usage.insert(k, r.units).map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn usage_history(
        &self,
        key_id: &str,
        granularity: Granularity,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        let key_id = key_id.to_owned();
        let g = granularity_code(granularity);
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let usage = tx.open_table(USAGE).map_err(db_err)?;
            // "" is the smallest writer: [(from, ""), (to, "")) covers every
            // writer of every bucket starting in [from, to).
            let lo = (key_id.as_str(), g, from_ms, "");
            let hi = (key_id.as_str(), g, to_ms, "");
            let mut out = BucketSum::default();
            for entry in usage.range(lo..hi).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let (_, _, start_ms, _) = k.value();
                let units = v.value();
                out.add(start_ms, units);
            }
            Ok(out.finish())
        })
        .await
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, id: &str, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| corrupt(what, id, e))
}

impl EmbeddedStore {
    /// Deletes usage buckets and violations older than `retention` allows
    /// (the embedded counterpart of ScyllaDB's TTLs). Returns the rows deleted.
    pub async fn apply_retention(
        &self,
        now_ms: u64,
        retention: Retention,
    ) -> Result<u64, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let mut deleted = 0u64;
            {
                let mut usage = tx.open_table(USAGE).map_err(db_err)?;
                let cutoff = |code: u8| {
                    let g = match code {
                        0 => Granularity::Minute,
                        1 => Granularity::Hour,
                        _ => Granularity::Day,
                    };
                    now_ms.saturating_sub(retention.usage(g).as_millis() as u64)
                };
                let before = usage.len().map_err(db_err)?;
                usage
                    .retain(|(_, g, start, _), _| start >= cutoff(g))
                    .map_err(db_err)?;
                deleted += before - usage.len().map_err(db_err)?;
                let vcut = now_ms.saturating_sub(retention.violations.as_millis() as u64);
                let mut v = tx.open_table(VIOLATIONS).map_err(db_err)?;
                let before = v.len().map_err(db_err)?;
                v.retain(|(at, _), _| at >= vcut).map_err(db_err)?;
                deleted += before - v.len().map_err(db_err)?;
                let mut vk = tx.open_table(VIOLATIONS_BY_KEY).map_err(db_err)?;
                vk.retain(|(_, at, _), _| at >= vcut).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(deleted)
        })
        .await
    }
}

/// Skips `offset` and takes `limit` of a newest-first iterator.
fn page<T, I: Iterator<Item = Result<T, StoreError>>>(
    it: I,
    range: Range,
) -> Result<Vec<T>, StoreError> {
    it.skip(range.offset).take(range.limit).collect()
}

#[async_trait]
impl ViolationStore for EmbeddedStore {
    async fn write_violations(&self, batch: &[Violation]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(VIOLATIONS).map_err(db_err)?;
                let mut by_key = tx.open_table(VIOLATIONS_BY_KEY).map_err(db_err)?;
                for v in &batch {
                    let bytes = encode("violation", &v.id, v)?;
                    t.insert((v.at_ms, v.id.as_str()), bytes.as_slice())
                        .map_err(db_err)?;
                    by_key
                        .insert((v.key_id.as_str(), v.at_ms, v.id.as_str()), ())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_violations(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Violation>, StoreError> {
        if range.from_ms >= range.to_ms || range.limit == 0 {
            return Ok(Vec::new());
        }
        let key_id = key_id.map(str::to_owned);
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(VIOLATIONS).map_err(db_err)?;
            let keys: Vec<(u64, String)> = match &key_id {
                Some(k) => {
                    let by_key = tx.open_table(VIOLATIONS_BY_KEY).map_err(db_err)?;
                    let it = by_key
                        .range((k.as_str(), range.from_ms, "")..(k.as_str(), range.to_ms, ""))
                        .map_err(db_err)?
                        .rev()
                        .map(|e| {
                            e.map_err(db_err).map(|(k, _)| {
                                let (_, at, id) = k.value();
                                (at, id.to_owned())
                            })
                        });
                    page(it, range)?
                }
                None => {
                    let it = t
                        .range((range.from_ms, "")..(range.to_ms, ""))
                        .map_err(db_err)?
                        .rev()
                        .map(|e| {
                            e.map_err(db_err).map(|(k, _)| {
                                let (at, id) = k.value();
                                (at, id.to_owned())
                            })
                        });
                    page(it, range)?
                }
            };
            let mut out = Vec::with_capacity(keys.len());
            for (at, id) in keys {
                if let Some(b) = t.get((at, id.as_str())).map_err(db_err)? {
                    out.push(decode("violation", &id, b.value())?);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl BlockStore for EmbeddedStore {
    async fn put_block(&self, block: &IpBlock) -> Result<(), StoreError> {
        let block = block.clone();
        self.blocking(move |db| {
            let bytes = encode("block", &block.id, &block)?;
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(BLOCKS)
                .map_err(db_err)?
                .insert(block.id.as_str(), bytes.as_slice())
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_blocks(&self) -> Result<Vec<IpBlock>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(BLOCKS).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t.iter().map_err(db_err)? {
                let (k, v) = e.map_err(db_err)?;
                out.push(decode("block", k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_block(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let existed = tx
                .open_table(BLOCKS)
                .map_err(db_err)?
                .remove(id.as_str())
                .map_err(db_err)?
                .is_some();
            tx.commit().map_err(db_err)?;
            Ok(existed)
        })
        .await
    }
}

#[async_trait]
impl AuditStore for EmbeddedStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(AUDIT).map_err(db_err)?;
                for e in &entries {
                    let bytes = encode("audit entry", &e.id, e)?;
                    t.insert((e.at_ms, e.id.as_str()), bytes.as_slice())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn list_audit(&self, range: Range) -> Result<Vec<AuditEntry>, StoreError> {
        if range.from_ms >= range.to_ms || range.limit == 0 {
            return Ok(Vec::new());
        }
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(AUDIT).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t
                .range((range.from_ms, "")..(range.to_ms, ""))
                .map_err(db_err)?
                .rev()
                .skip(range.offset)
                .take(range.limit)
            {
                let (k, v) = e.map_err(db_err)?;
                out.push(decode("audit entry", k.value().1, v.value())?);
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl AlertStore for EmbeddedStore {
    async fn put_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        let alert = alert.clone();
        self.blocking(move |db| {
            let bytes = encode("alert", &alert.id, &alert)?;
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(ALERTS).map_err(db_err)?;
                let mut by_time = tx.open_table(ALERTS_BY_TIME).map_err(db_err)?;
                let mut by_key = tx.open_table(ALERTS_BY_KEY).map_err(db_err)?;
                let old: Option<Alert> = match t.get(alert.id.as_str()).map_err(db_err)? {
                    Some(b) => Some(decode("alert", &alert.id, b.value())?),
                    None => None,
                };
                if let Some(old) = old {
                    by_time
                        .remove((old.raised_at_ms, old.id.as_str()))
                        .map_err(db_err)?;
                    if let Some(k) = &old.key_id {
                        by_key
                            .remove((k.as_str(), old.raised_at_ms, old.id.as_str()))
                            .map_err(db_err)?;
                    }
                }
                t.insert(alert.id.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
                by_time
                    .insert((alert.raised_at_ms, alert.id.as_str()), ())
                    .map_err(db_err)?;
                if let Some(k) = &alert.key_id {
                    by_key
                        .insert((k.as_str(), alert.raised_at_ms, alert.id.as_str()), ())
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get_alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(ALERTS).map_err(db_err)?;
            match t.get(id.as_str()).map_err(db_err)? {
                Some(b) => Ok(Some(decode("alert", &id, b.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_alerts(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Alert>, StoreError> {
        if range.from_ms >= range.to_ms || range.limit == 0 {
            return Ok(Vec::new());
        }
        let key_id = key_id.map(str::to_owned);
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(ALERTS).map_err(db_err)?;
            let ids = match &key_id {
                Some(k) => {
                    let by_key = tx.open_table(ALERTS_BY_KEY).map_err(db_err)?;
                    let it = by_key
                        .range((k.as_str(), range.from_ms, "")..(k.as_str(), range.to_ms, ""))
                        .map_err(db_err)?
                        .rev()
                        .map(|e| e.map_err(db_err).map(|(k, _)| k.value().2.to_owned()));
                    page(it, range)?
                }
                None => {
                    let by_time = tx.open_table(ALERTS_BY_TIME).map_err(db_err)?;
                    let it = by_time
                        .range((range.from_ms, "")..(range.to_ms, ""))
                        .map_err(db_err)?
                        .rev()
                        .map(|e| e.map_err(db_err).map(|(k, _)| k.value().1.to_owned()));
                    page(it, range)?
                }
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(b) = t.get(id.as_str()).map_err(db_err)? {
                    out.push(decode("alert", &id, b.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let letter = letter.clone();
        self.blocking(move |db| {
            let bytes = encode("dead letter", &letter.id, &letter)?;
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
                let mut by_time = tx.open_table(DEAD_BY_TIME).map_err(db_err)?;
                let old: Option<DeadLetter> = match t.get(letter.id.as_str()).map_err(db_err)? {
                    Some(b) => Some(decode("dead letter", &letter.id, b.value())?),
                    None => None,
                };
                if let Some(old) = old {
                    by_time
                        .remove((old.failed_at_ms, old.id.as_str()))
                        .map_err(db_err)?;
                }
                t.insert(letter.id.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
                by_time
                    .insert((letter.failed_at_ms, letter.id.as_str()), ())
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
            match t.get(id.as_str()).map_err(db_err)? {
                Some(b) => Ok(Some(decode("dead letter", &id, b.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_dead_letters(&self, range: Range) -> Result<Vec<DeadLetter>, StoreError> {
        if range.from_ms >= range.to_ms || range.limit == 0 {
            return Ok(Vec::new());
        }
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
            let by_time = tx.open_table(DEAD_BY_TIME).map_err(db_err)?;
            let it = by_time
                .range((range.from_ms, "")..(range.to_ms, ""))
                .map_err(db_err)?
                .rev()
                .map(|e| e.map_err(db_err).map(|(k, _)| k.value().1.to_owned()));
            let ids = page(it, range)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(b) = t.get(id.as_str()).map_err(db_err)? {
                    out.push(decode("dead letter", &id, b.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let existed = {
                let mut t = tx.open_table(DEAD_LETTERS).map_err(db_err)?;
                let old: Option<DeadLetter> = match t.remove(id.as_str()).map_err(db_err)? {
                    Some(b) => Some(decode("dead letter", &id, b.value())?),
                    None => None,
                };
                if let Some(old) = &old {
                    tx.open_table(DEAD_BY_TIME)
                        .map_err(db_err)?
                        .remove((old.failed_at_ms, old.id.as_str()))
                        .map_err(db_err)?;
                }
                old.is_some()
            };
            tx.commit().map_err(db_err)?;
            Ok(existed)
        })
        .await
    }
}

#[async_trait]
impl BillingStore for EmbeddedStore {
    async fn put_billing(&self, record: &BillingRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.blocking(move |db| {
            let bytes = encode("billing record", &r.key_id, &r)?;
            let tx = db.begin_write().map_err(db_err)?;
            {
                tx.open_table(BILLING)
                    .map_err(db_err)?
                    .insert((r.key_id.as_str(), r.period_start_ms), bytes.as_slice())
                    .map_err(db_err)?;
                tx.open_table(BILLING_BY_PERIOD)
                    .map_err(db_err)?
                    .insert((r.period_start_ms, r.key_id.as_str()), ())
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get_billing(
        &self,
        key_id: &str,
        period_start_ms: u64,
    ) -> Result<Option<BillingRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(BILLING).map_err(db_err)?;
            match t.get((key_id.as_str(), period_start_ms)).map_err(db_err)? {
                Some(b) => Ok(Some(decode("billing record", &key_id, b.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_billing_for_key(
        &self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(BILLING).map_err(db_err)?;
            let mut out = Vec::new();
            for e in t
                .range((key_id.as_str(), 0)..=(key_id.as_str(), u64::MAX))
                .map_err(db_err)?
                .rev()
                .take(limit)
            {
                let (_, v) = e.map_err(db_err)?;
                out.push(decode("billing record", &key_id, v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn list_billing_for_period(
        &self,
        period_start_ms: u64,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(BILLING).map_err(db_err)?;
            let by_period = tx.open_table(BILLING_BY_PERIOD).map_err(db_err)?;
            let mut out = Vec::new();
            for e in by_period
                .range((period_start_ms, "")..(period_start_ms.saturating_add(1), ""))
                .map_err(db_err)?
            {
                let (k, _) = e.map_err(db_err)?;
                let (_, key_id) = k.value();
                if let Some(b) = t.get((key_id, period_start_ms)).map_err(db_err)? {
                    out.push(decode("billing record", key_id, b.value())?);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retention_deletes_only_what_is_older_than_its_granularity_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        const DAY: u64 = 86_400_000;
        let now = 1_000 * DAY;
        let row = |g, start| UsageRow {
            key_id: "k".into(),
            granularity: g,
            bucket_start_ms: start,
            writer: "w".into(),
            units: 1,
        };
        s.write_usage(&[
            row(Granularity::Minute, now - 8 * DAY),
            row(Granularity::Minute, now - DAY),
            row(Granularity::Hour, now - 8 * DAY),
            row(Granularity::Day, now - 100 * DAY),
        ])
        .await
        .unwrap();
        let v = |id: &str, at| Violation {
            id: id.into(),
            key_id: "k".into(),
            limit_name: "l".into(),
            node: "n".into(),
            at_ms: at,
            client_ip: None,
            cost: 1,
        };
        s.write_violations(&[v("old", now - 91 * DAY), v("new", now - DAY)])
            .await
            .unwrap();
        let deleted = s.apply_retention(now, Retention::default()).await.unwrap();
        assert_eq!(
            deleted, 2,
            "the 8-day-old minute bucket and the 91-day-old violation"
        );
        let all = |g| s.usage_history("k", g, 0, u64::MAX);
        assert_eq!(all(Granularity::Minute).await.unwrap().len(), 1);
        assert_eq!(all(Granularity::Hour).await.unwrap().len(), 1);
        assert_eq!(all(Granularity::Day).await.unwrap().len(), 1);
        let range = Range {
            from_ms: 0,
            to_ms: u64::MAX,
            offset: 0,
            limit: 10,
        };
        let left = s.list_violations(Some("k"), range).await.unwrap();
        assert_eq!(
            left.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
            vec!["new"]
        );
        assert_eq!(s.list_violations(None, range).await.unwrap().len(), 1);
    }

    #[test]
    fn granularity_codes_are_distinct_and_ordered() {
        let codes: Vec<u8> = Granularity::all()
            .into_iter()
            .map(granularity_code)
            .collect();
        assert_eq!(codes, [0, 1, 2]);
    }

    #[test]
    fn second_open_in_process_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let err = EmbeddedStore::open(dir.path()).expect_err("second open must fail");
        assert!(
            matches!(err, StoreError::Backend(ref m) if m.contains("already open")),
            "{err:?}"
        );
        drop(store);
        EmbeddedStore::open(dir.path()).expect("reopen after drop");
    }
}
