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
//!   key. [`put_key`] reads the old record in the same write
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
//!
//! [`KeyRecord`]: ringlimit_actors::keys::KeyRecord
//! [`TierRecord`]: ringlimit_actors::storage::TierRecord
//! [`Violation`]: ringlimit_protocol::pipeline::Violation
//! [`IpBlock`]: ringlimit_protocol::pipeline::IpBlock
//! [`AuditEntry`]: ringlimit_protocol::pipeline::AuditEntry
//! [`Alert`]: ringlimit_protocol::pipeline::Alert
//! [`DeadLetter`]: ringlimit_protocol::pipeline::DeadLetter
//! [`BillingRecord`]: ringlimit_protocol::pipeline::BillingRecord
//! [`put_key`]: ringlimit_actors::storage::KeyStore::put_key

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
        tables::create_all(&tx)?;
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
}
