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
//! - `key_hashes` (secret hash to key_id), written by older versions, is
//!   deleted when the file is opened.
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
//!
//! [`KeyRecord`]: ringlimit_actors::keys::KeyRecord
//! [`TierRecord`]: ringlimit_actors::storage::TierRecord
//! [`Violation`]: ringlimit_protocol::pipeline::Violation
//! [`IpBlock`]: ringlimit_protocol::pipeline::IpBlock
//! [`AuditEntry`]: ringlimit_protocol::pipeline::AuditEntry
//! [`Alert`]: ringlimit_protocol::pipeline::Alert
//! [`DeadLetter`]: ringlimit_protocol::pipeline::DeadLetter
//! [`BillingRecord`]: ringlimit_protocol::pipeline::BillingRecord

mod alerts;
mod audit;
mod billing;
mod blocks;
mod common;
mod keys;
mod retention;
mod snapshots;
mod tables;
mod tiers;
mod usage;
mod violations;

pub use common::EmbeddedStore;
pub use tables::FILE_NAME;

use common::db_err;
use redb::Database;
use ringlimit_actors::storage::StoreError;
use std::path::Path;
use std::sync::Arc;

/// redb's page cache. Its default (1 GiB) would be most of a node's memory
/// with a million keys; the hot data (keys, counters) lives in the node's
/// own memory, so the store needs far less.
pub const CACHE_BYTES: usize = 128 * 1024 * 1024;

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/ringlimit.redb`, creating `dir` too.
    ///
    /// Blocking: call it at start-up, or from `spawn_blocking`. After an
    /// unclean shutdown redb checks and repairs the file here, which can take
    /// a while on a large file.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        crate::private::create_dir(dir).map_err(|e| {
            StoreError::Backend(format!("create data directory {}: {e}", dir.display()))
        })?;
        let path = dir.join(FILE_NAME);
        // The file exists, mode 0600 and no symbolic link, before redb opens
        // it (redb initializes an empty file).
        crate::private::ensure_file(&path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                    "{} is already open (a redb database can be opened only once per process)",
                    path.display()
                )),
                e => db_err(e),
            })?;
        // Create every table up front, so readers never meet a missing table,
        // and delete those older versions left behind.
        let tx = db.begin_write().map_err(db_err)?;
        tables::create_all(&tx)?;
        tables::delete_retired(&tx)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn open_deletes_retired_tables() {
        use redb::{ReadableTableMetadata, TableDefinition, TableHandle};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        let names = |db: &Database| -> Vec<String> {
            let tx = db.begin_read().expect("read");
            let tables = tx.list_tables().expect("list tables");
            tables.map(|t| t.name().to_owned()).collect()
        };
        // A file as an older version left it: the secret hash index, one entry.
        let old: TableDefinition<[u8; 32], &str> = TableDefinition::new("key_hashes");
        {
            let db = Database::create(&path).expect("create");
            let tx = db.begin_write().expect("write");
            tx.open_table(old)
                .expect("open")
                .insert([7; 32], "k1")
                .expect("insert");
            tx.commit().expect("commit");
            assert!(names(&db).contains(&"key_hashes".to_owned()));
        }
        drop(EmbeddedStore::open(dir.path()).expect("open"));
        let db = Database::open(&path).expect("reopen");
        let left = names(&db);
        assert!(!left.contains(&"key_hashes".to_owned()), "{left:?}");
        assert!(left.contains(&"keys".to_owned()), "{left:?}");
        // Opening again, with nothing left to delete, is fine.
        drop(db);
        let store = EmbeddedStore::open(dir.path()).expect("open again");
        let db = &store.db;
        let tx = db.begin_read().expect("read");
        assert!(tx.open_table(old).is_err(), "key_hashes came back");
        let keys = tx.open_table(tables::KEYS).expect("keys");
        assert_eq!(keys.len().expect("len"), 0);
    }
}
