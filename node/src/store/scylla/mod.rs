//! The ScyllaDB store: the storage traits over CQL, with the `scylla` driver.
//!
//! The same code and the same schema (`cql/`, see [`migrations`]) run on
//! ScyllaDB (the production target) and on Apache Cassandra 5 (the CI
//! stand-in): plain CQL, protocol v4, no ScyllaDB-only options, no LWT, no
//! CQL counters, no materialized views or secondary indexes.
//!
//! # Connecting
//! [`ScyllaStore::connect`] builds a session (contact points `host:port`,
//! per-request client timeout, per-connection connect timeout, the driver's
//! default retry policy, token-aware load balancing, client-side monotonic
//! write timestamps), runs the migrations (unless
//! [`ScyllaOptions::migrate`] is off, in which case it checks that migrations
//! 1 to [`STORE_SCHEMA_VERSION`] are applied) and prepares every statement
//! once. `ringlimit migrate` calls [`migrate_cluster`].
//! Every statement is idempotent (upserts of absolute values, deletes,
//! reads) and is marked so, which lets the retry policy retry it after a
//! timeout. Each trait call is also bounded as a whole
//! ([`ScyllaOptions::operation_timeout`], or
//! [`ScyllaOptions::scan_timeout`] for full scans), so nothing hangs when the
//! cluster does: a down, unreachable or hung cluster gives
//! [`StoreError::Unavailable`] within those bounds.
//!
//! # Tables (see `cql/` for the full schema)
//! | table               | key                                         | value |
//! |---------------------|---------------------------------------------|-------|
//! | `keys`              | `key_id`                                    | JSON of [`KeyRecord`] in `record`; owner, tier, status copied into columns |
//! | `keys_by_page`      | `((shard), key_id)`, shard = first byte of key_id | owner, tier, status |
//! | `tiers`             | `name`                                      | JSON of the limits |
//! | `counter_snapshots` | `key_id`                                    | snapshot blob |
//! | `usage_minute` / `usage_hour` / `usage_day` | `((key_id, day), bucket_start, writer)` | absolute `units` |
//! | `usage_partitions`  | `((key_id, granularity), day)`              | — (which usage partitions exist) |
//! | `pipeline_days`     | `((stream, key_id), day DESC)`              | — (which days of a pipeline stream hold data) |
//! | `violations_by_day` / `violations_by_key` | `((day), at_ms DESC, id DESC)` / `((key_id, day), …)` | the violation's fields |
//! | `ip_blocks`         | `((part = 0), id)`                          | the block's fields |
//! | `audit_by_day`      | `((day), at_ms DESC, id DESC)`              | the entry's fields, `details` JSON |
//! | `alert_records`     | `id`                                        | the alert's fields, `details` JSON |
//! | `alerts_by_day` / `alerts_by_key_time` | `((day), raised_at_ms DESC, id DESC)` / `((key_id), …)` | — |
//! | `dead_letter_records` | `id`                                      | the dead letter's fields |
//! | `dead_letters_by_day` | `((day), failed_at_ms DESC, id DESC)`     | — |
//! | `billing_by_key` / `billing_by_period` | `((key_id), period_start_ms DESC)` / `((period_start_ms), key_id)` | the record's fields |
//!
//! The pipeline tables (violations, blocks, audit, alerts, dead letters,
//! billing) are described under [Pipeline records](#pipeline-records).
//!
//! ## Keys
//! - `put_key` writes the record and its listing row (concurrently).
//! - `list_keys` needs key_id order, which a scan of `keys` (token order) does
//!   not give. `keys_by_page` is partitioned by the first byte of the key_id:
//!   its partitions, read in increasing shard order and each in clustering
//!   order, give every key in key_id (byte) order. Generated key ids use
//!   `[a-z0-9]`, so there are about 36 partitions of small rows (about
//!   30 000 rows each per million keys). A page scans the listing rows from
//!   the cursor on, applies the filter to the copied owner/tier/status, reads
//!   the matching records from `keys` and checks the filter again on them.
//!   Filtered listing therefore reads every listing row after the cursor until
//!   the page is full: fine for the admin plane up to millions of keys, but
//!   not a query to run per request. Each page first lists the shards
//!   (`SELECT DISTINCT shard`, a scan of a few dozen partition keys).
//! - `load_all_keys` scans `keys` (paged) and sorts by key_id.
//!
//! ## Snapshots
//! A batch of snapshots is written as concurrent single-partition inserts
//! (at most [`ScyllaOptions::concurrency`] in flight); it is not atomic across
//! keys (a multi-partition batch would be), and the caller retries a failed
//! save as a whole (every write is idempotent).
//!
//! ## Usage history
//! Each row is one writer's absolute total for one bucket. The rows of one
//! call are grouped by the first replica (node and shard) of their partition,
//! as the driver's token map places it, and written in unlogged batches of at
//! most [`USAGE_BATCH_ROWS`] rows of one replica: the replica the driver sends
//! a batch to applies all of it locally, so a flush of N keys costs about
//! N / 32 requests instead of one per partition, and no coordinator forwards
//! rows to other nodes. (Apache Cassandra warns about unlogged batches over
//! 10 partitions, and the driver logs each warning: raise
//! `unlogged_batch_across_partitions_warn_threshold` to 64 there, as
//! `scripts/cassandra.sh` does. ScyllaDB has no such warning.) Rows repeated
//! in one call are de-duplicated, the
//! largest total winning, and every row is written `USING TIMESTAMP` its
//! total: a writer's total of a bucket only grows, so the store's
//! last-write-wins keeps the largest one whatever order writes land in, and
//! a stale copy (a node that adopted the bucket from an older snapshot while
//! its writer still counts) never lowers it. (Rows written by versions
//! before this rule carry wall-clock timestamps and so are never replaced;
//! they belong to writers, process incarnations, that no longer run.)
//! Every row is written `USING TTL` the retention of its
//! granularity ([`ScyllaOptions::retention`]; the tables' own default TTLs
//! are not used). Partitions are time-bucketed: `day` is the first day of
//! a period of 1 (minute), 32 (hour) or 1024 (day) days. Before the data, the
//! partition is recorded in `usage_partitions` (batched by replica the same
//! way, with the data's TTL plus one
//! period and a day, so it outlives the data of its partition; recent index
//! writes are remembered in memory and not repeated for an hour). A history read lists the partitions of the range
//! from `usage_partitions` (so an open-ended range costs no more than the data
//! it finds), reads at most [`MAX_HISTORY_PARTITIONS`] of them concurrently,
//! sums the writers of each bucket and leaves out empty buckets. The HTTP
//! layer's limit of 10 000 buckets is at most 8 minute, 14 hour or 11 day
//! partitions.
//!
//! # Pipeline records
//! The pipelines' records on ScyllaDB: violations, IP blocks, audit, alerts,
//! dead letters and billing (tables of `cql/0006_pipeline_tables.cql`).
//!
//! ## Time-ordered lists
//! Violations, audit entries, alerts and dead letters are listed newest first
//! over a time range, with offset/limit paging. Their tables are partitioned
//! by day (days since 1970-01-01 UTC of the record's time) and clustered by
//! `(time DESC, id DESC)`, so reading the days newest first, each in
//! clustering order, gives the list order. Which days hold data is recorded
//! in `pipeline_days` (before the data is written; recent index writes are
//! remembered in memory for an hour, as for usage), so a list over an
//! open-ended range (`from_ms = 0`, `to_ms = u64::MAX`) reads only the days
//! that exist, and stops as soon as `offset + limit` rows are found. Deep
//! pages cost what they skip; the admin API's pages are small.
//!
//! - Violations are written twice, to `violations_by_day` (all keys) and
//!   `violations_by_key` (partition `(key_id, day)`), in unlogged
//!   single-partition batches, each row `USING TTL` the configured
//!   [`Retention::violations`]; their
//!   `pipeline_days` rows expire a day after the data.
//! - Alerts and dead letters change after they are written (delivery state,
//!   attempts), so each is one row by id (`alert_records`,
//!   `dead_letter_records`) and the time-ordered tables hold only ids; a list
//!   reads the records of its page by id. Alerts of one key are few (one per
//!   condition and period), so `alerts_by_key_time` is one partition per key.
//!   An upsert whose time (or key) differs from the stored record's removes
//!   the old index rows, so an id is listed once.
//! - Audit entries never change: `audit_by_day` holds them whole.
//!
//! ## Blocks and billing
//! The block list is one partition (`ip_blocks`, `part = 0`) read whole in id
//! order. Billing records are written to `billing_by_key` (newest period
//! first per key) and `billing_by_period` (key_id order per period); both
//! rows hold the whole record and are rewritten by a recomputation.
//!
//! ## Values
//! Times and counts are `bigint`; a value above `i64::MAX` (or a time of
//! exactly `i64::MAX`, which an open range could not reach) is refused with
//! [`StoreError::Backend`], never wrapped. Ids are `text` chosen by the
//! writer; an empty id (or key id, where it is a partition key) is refused on
//! write and finds nothing on read. `details` is JSON text.
//!
//! Without LWT, "whether it existed" (`delete_block`, `delete_dead_letter`)
//! is a read before the delete: two concurrent deletes of one id may both
//!
//! [`StoreError::Unavailable`]: ringlimit_actors::storage::StoreError::Unavailable
//! [`KeyRecord`]: ringlimit_actors::keys::KeyRecord
//! [`Retention::violations`]: ringlimit_actors::storage::Retention
//! [`StoreError::Backend`]: ringlimit_actors::storage::StoreError::Backend

pub mod errors;
pub mod migrations;

mod alerts;
mod audit;
mod billing;
mod blocks;
mod common;
mod keys;
mod rows;
mod session;
mod snapshots;
mod statements;
mod tiers;
mod usage;
mod violations;

pub use common::{MAX_HISTORY_PARTITIONS, USAGE_BATCH_ROWS};
pub use migrations::{
    DEFAULT_REPLICATION, MIGRATIONS, Migration, MigrationReport, migrate, migrate_to,
};
pub use session::{ScyllaOptions, ScyllaStore, connect_session, migrate_cluster};

/// The schema versions the store reads and writes: migrations 1 to this one.
/// (Migration 7 only drops `keys_by_hash`, which the store no longer uses.)
pub const STORE_SCHEMA_VERSION: i32 = 6;
