//! Helpers every part of the ScyllaDB store uses: bounds, TTLs, time
//! buckets, and the statement runners (bounded operations, paged reads,
//! single-partition and replica-grouped batches, the day index of the pipeline streams).

use super::errors;
use super::session::ScyllaStore;
use super::statements::PipelineStatements;
use crate::store::shared::{Page, granularity_code};
use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use ringlimit_actors::clock;
use ringlimit_actors::storage::{Range, StoreError};
use ringlimit_protocol::admin::Granularity;
use scylla::cluster::ClusterState;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use std::future::Future;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub(super) const DAY_MS: u64 = 86_400_000;
/// Rows per unlogged batch of usage rows (about 3 KiB,
/// under Cassandra's default 5 KiB batch-size warning).
pub const USAGE_BATCH_ROWS: usize = 32;
/// The most usage partitions one history read may touch.
pub const MAX_HISTORY_PARTITIONS: usize = 1_024;
/// Rows per page of the scans (listing, load_all_keys, list_tiers).
pub(super) const PAGE_SIZE: i32 = 1_000;
/// How long a written `usage_partitions` or `pipeline_days` row is trusted
/// before it is written again (which also refreshes its TTL).
const INDEX_REFRESH: Duration = Duration::from_secs(3_600);
/// Bound of each in-memory set of recently written index rows.
const INDEX_CACHE_MAX: usize = 200_000;
/// The largest TTL CQL accepts (20 years).
pub(super) const MAX_TTL_SECS: i64 = 630_720_000;

/// `pipeline_days.stream` of each time-ordered stream.
pub(super) const VIOLATIONS: &str = "violations";
pub(super) const AUDIT: &str = "audit";
pub(super) const ALERTS: &str = "alerts";
pub(super) const DEAD_LETTERS: &str = "dead_letters";
/// `pipeline_days.key_id` of the all-keys streams.
pub(super) const ALL_KEYS: &str = "";
/// Records read by id concurrently for one page of alerts or dead letters.
const RECORD_READ_CONCURRENCY: usize = 16;

/// A retention as a CQL TTL in seconds: at least 1 (a TTL of 0 would mean
/// "forever", the opposite of a zero retention) and at most [`MAX_TTL_SECS`].
pub(super) fn ttl_secs(d: Duration) -> i32 {
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    i32::try_from(secs.clamp(1, MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

/// Index of a granularity in the per-granularity arrays.
pub(super) fn gi(g: Granularity) -> usize {
    usize::from(granularity_code(g))
}

/// Days per usage partition.
pub(super) fn period_days(g: Granularity) -> u64 {
    match g {
        Granularity::Minute => 1,
        Granularity::Hour => 32,
        Granularity::Day => 1_024,
    }
}

/// TTL of a `usage_partitions` row: it must outlive the data of its
/// partition, whose last rows may be written up to a period after the index
/// row (which is refreshed hourly).
pub(super) fn usage_index_ttl(g: Granularity, data_ttl: i32) -> i32 {
    let margin = i64::try_from(period_days(g) * 86_400).unwrap_or(0) + 86_400;
    i32::try_from((i64::from(data_ttl) + margin).min(MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The day partition of a time in ms.
pub(super) fn day_of(ms: u64) -> i64 {
    to_i64(ms / DAY_MS)
}

/// A range's time bounds as `bigint`s: `from <= t < to`.
pub(super) fn bounds(range: &Range) -> (i64, i64) {
    (to_i64(range.from_ms), to_i64(range.to_ms))
}

pub(super) fn refuse_empty(what: &str, field: &str, v: &str) -> Result<(), StoreError> {
    if v.is_empty() {
        return Err(StoreError::Backend(format!("{what}: empty {field}")));
    }
    Ok(())
}

/// The first replica (node host id, shard) of a partition, from the driver's
/// token map; `None` when the driver does not know the table yet.
pub(super) type Replica = Option<(u128, u32)>;

/// One row for [`ScyllaStore::replica_batches`]: its partition's replica,
/// its statement and its values.
pub(super) type ReplicaRow<'a, V> = (Replica, &'a PreparedStatement, V);

/// The first replica of the partition a write of `values` with `st` goes
/// to, found the way the driver routes a single statement: the token from the
/// statement's partition-key columns, then the token map.
pub(super) fn replica_of(
    state: &ClusterState,
    st: &PreparedStatement,
    values: &impl SerializeRow,
) -> Replica {
    let token = st.calculate_token(values).ok()??;
    let table = st.get_table_spec()?;
    let endpoints = state.get_token_endpoints(table.ks_name(), table.table_name(), token);
    let (node, shard) = endpoints.first()?;
    Some((node.host_id.as_u128(), *shard))
}

/// The batches of rows sorted by replica: runs of one replica, cut every
/// [`USAGE_BATCH_ROWS`] rows.
pub(super) fn batch_spans(sorted: &[Replica]) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    for i in 1..=sorted.len() {
        if i == sorted.len() || sorted[i] != sorted[start] || i - start == USAGE_BATCH_ROWS {
            spans.push(start..i);
            start = i;
        }
    }
    spans
}

/// The wall-clock time as a CQL timestamp (the `updated_at` / `saved_at` columns).
pub(super) fn now_ts() -> CqlTimestamp {
    CqlTimestamp(to_i64(clock::wall_ms()))
}

/// Index rows written recently, each with when: a row found here is not
/// written again until [`INDEX_REFRESH`] has passed. Holds at most
/// [`INDEX_CACHE_MAX`] rows (it is emptied when full).
#[derive(Debug)]
pub(super) struct IndexMemo<K: Eq + Hash>(DashMap<K, Instant>);

impl<K: Eq + Hash> IndexMemo<K> {
    pub(super) fn new() -> Self {
        IndexMemo(DashMap::new())
    }

    /// Whether `key` was written recently (and need not be written again).
    pub(super) fn fresh(&self, key: &K) -> bool {
        self.0
            .get(key)
            .is_some_and(|at| clock::monotonic().saturating_duration_since(*at) < INDEX_REFRESH)
    }

    /// Records that `key` has just been written.
    pub(super) fn remember(&self, key: K) {
        if self.0.len() >= INDEX_CACHE_MAX {
            self.0.clear();
        }
        self.0.insert(key, clock::monotonic());
    }
}

impl ScyllaStore {
    /// Runs `fut`, failing with `Unavailable` after `limit`.
    pub(super) async fn bounded<T>(
        &self,
        op: &str,
        limit: Duration,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "ScyllaDB {op}: no answer within {limit:?}"
            ))),
        }
    }

    pub(super) async fn exec(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<(), StoreError> {
        self.inner
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| errors::execution(what, e))?;
        Ok(())
    }

    /// All rows of an unpaged (single-partition) read.
    pub(super) async fn rows<R>(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let res = self
            .inner
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(|e| errors::execution(what, e))?;
        let res = res
            .into_rows_result()
            .map_err(|e| errors::decode(what, e))?;
        let rows = res.rows::<R>().map_err(|e| errors::decode(what, e))?;
        rows.map(|r| r.map_err(|e| errors::decode(what, e)))
            .collect()
    }

    pub(super) async fn row<R>(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        Ok(self.rows(what, st, values).await?.into_iter().next())
    }

    /// Runs futures with at most `concurrency` in flight; the first error wins.
    /// (Boxed futures: closures returning futures inside `async_trait` bodies
    /// trip the compiler's higher-ranked lifetime checks.)
    pub(super) async fn run_all(
        &self,
        futs: Vec<BoxFuture<'_, Result<(), StoreError>>>,
    ) -> Result<(), StoreError> {
        let mut s = stream::iter(futs).buffer_unordered(self.inner.opts.concurrency.max(1));
        while let Some(r) = s.next().await {
            r?;
        }
        Ok(())
    }

    pub(super) fn pst(&self) -> &PipelineStatements {
        &self.inner.pst
    }

    /// Writes the `pipeline_days` row of a day unless done recently. `ttl` 0: none.
    pub(super) async fn index_day(
        &self,
        stream: &'static str,
        key_id: &str,
        day: i64,
        ttl: i32,
    ) -> Result<(), StoreError> {
        let memo_key = (stream, key_id.to_owned(), day);
        if self.inner.days_indexed.fresh(&memo_key) {
            return Ok(());
        }
        self.exec(
            "pipeline_days",
            &self.pst().put_day,
            (stream, key_id, day, ttl),
        )
        .await?;
        self.inner.days_indexed.remember(memo_key);
        Ok(())
    }

    /// The days of `stream` (for `key_id`) that hold data in `range`, newest first.
    pub(super) async fn days(
        &self,
        what: &str,
        stream: &str,
        key_id: &str,
        range: &Range,
    ) -> Result<Vec<i64>, StoreError> {
        let (lo, hi) = (day_of(range.from_ms), day_of(range.to_ms - 1));
        let days: Vec<(i64,)> = self
            .paged(
                what,
                &self.pst().get_days,
                (stream, key_id, lo, hi),
                usize::MAX,
            )
            .await?;
        Ok(days.into_iter().map(|(d,)| d).collect())
    }

    /// Rows of a paged read, at most `max` (the rest are not fetched).
    pub(super) async fn paged<R>(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
        max: usize,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + 'static,
    {
        let mut out = Vec::new();
        self.each_row(what, st, values, |r| {
            out.push(r);
            out.len() < max
        })
        .await?;
        Ok(out)
    }

    /// Feeds the rows of a paged read to `f` until it returns false.
    pub(super) async fn each_row<R>(
        &self,
        what: &str,
        st: &PreparedStatement,
        values: impl SerializeRow,
        mut f: impl FnMut(R) -> bool,
    ) -> Result<(), StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + 'static,
    {
        let pager = self
            .inner
            .session
            .execute_iter(st.clone(), values)
            .await
            .map_err(|e| errors::pager(what, e))?;
        let mut rows = pager
            .rows_stream::<R>()
            .map_err(|e| errors::decode(what, e))?;
        while let Some(row) = rows.next().await {
            if !f(row.map_err(|e| errors::next_row(what, e))?) {
                break;
            }
        }
        Ok(())
    }

    /// One page of a day-partitioned stream: the rows of `range` in the days
    /// `pipeline_days` lists for `(stream, index_key)`, newest day first, each
    /// read with `st` bound to `(day, from, to)`, or `(key, day, from, to)`
    /// when `part_key` is given.
    pub(super) async fn page_days<R>(
        &self,
        what: &str,
        (stream, index_key): (&str, &str),
        part_key: Option<&str>,
        st: &PreparedStatement,
        range: &Range,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + 'static,
    {
        let (from, to) = bounds(range);
        let mut page = Page::new(range);
        for day in self.days(what, stream, index_key, range).await? {
            let offer = |r: R| {
                page.offer(r);
                !page.full()
            };
            match part_key {
                Some(k) => self.each_row(what, st, (k, day, from, to), offer).await?,
                None => self.each_row(what, st, (day, from, to), offer).await?,
            }
            if page.full() {
                break;
            }
        }
        Ok(page.rows)
    }

    /// Writes rows with one statement in unlogged batches of at most
    /// [`USAGE_BATCH_ROWS`]; the caller passes the rows of one partition.
    pub(super) async fn batch_of<V: SerializeRow>(
        &self,
        what: &str,
        st: &PreparedStatement,
        rows: &[V],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(USAGE_BATCH_ROWS) {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in chunk {
                batch.append_statement(st.clone());
            }
            batch.set_is_idempotent(true);
            self.inner
                .session
                .batch(&batch, chunk)
                .await
                .map_err(|e| errors::execution(what, e))?;
        }
        Ok(())
    }

    /// Writes rows in unlogged batches of at most [`USAGE_BATCH_ROWS`], each
    /// batch holding only rows whose partitions have the same first replica
    /// (node and shard), so the replica the driver sends the batch to applies
    /// every row locally: one request per batch instead of one per partition,
    /// and no forwarding between nodes. Rows whose replica the driver does not
    /// know (table metadata not fetched yet) are batched together. The batches
    /// run concurrently; the first error wins.
    pub(super) async fn replica_batches<V: SerializeRow + Sync>(
        &self,
        what: &str,
        mut rows: Vec<ReplicaRow<'_, V>>,
    ) -> Result<(), StoreError> {
        rows.sort_by_key(|r| r.0);
        let replicas: Vec<Replica> = rows.iter().map(|r| r.0).collect();
        let mut batches: Vec<(Batch, &[ReplicaRow<'_, V>])> = Vec::new();
        for span in batch_spans(&replicas) {
            let chunk = &rows[span];
            let mut batch = Batch::new(BatchType::Unlogged);
            for (_, st, _) in chunk {
                batch.append_statement((*st).clone());
            }
            batch.set_is_idempotent(true);
            batches.push((batch, chunk));
        }
        let writes = batches
            .iter()
            .map(|(batch, chunk)| {
                async move {
                    let values: Vec<&V> = chunk.iter().map(|(_, _, v)| v).collect();
                    self.inner
                        .session
                        .batch(batch, values)
                        .await
                        .map(|_| ())
                        .map_err(|e| errors::execution(what, e))
                }
                .boxed()
            })
            .collect();
        self.run_all(writes).await
    }

    /// Reads records by id in order, leaving out ids whose record is gone.
    pub(super) async fn records_by_id<'a, T: Send>(
        &'a self,
        ids: Vec<String>,
        read: impl Fn(String) -> BoxFuture<'a, Result<Option<T>, StoreError>>,
    ) -> Result<Vec<T>, StoreError> {
        let reads: Vec<_> = ids.into_iter().map(read).collect();
        let mut s = stream::iter(reads).buffered(RECORD_READ_CONCURRENCY);
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            if let Some(rec) = r? {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlimit_actors::storage::Retention;

    #[test]
    fn ttls_follow_the_retention_with_the_index_margin() {
        let r = Retention::default();
        assert_eq!(ttl_secs(r.minute), 7 * 86_400);
        assert_eq!(
            ttl_secs(Duration::ZERO),
            1,
            "zero retention is not 'forever'"
        );
        assert_eq!(ttl_secs(Duration::from_millis(300)), 1);
        assert_eq!(ttl_secs(Duration::MAX), 630_720_000);
        for g in Granularity::all() {
            let data = ttl_secs(r.usage(g));
            let index = usage_index_ttl(g, data);
            let margin = i32::try_from((period_days(g) + 1) * 86_400).expect("margin");
            assert_eq!(index, data + margin, "{g:?}");
        }
        assert_eq!(usage_index_ttl(Granularity::Day, i32::MAX), 630_720_000);
    }

    #[test]
    fn batches_hold_one_replica_and_at_most_the_batch_size() {
        let a = Some((1u128, 0u32));
        let b = Some((1u128, 1u32));
        let mut replicas = vec![None, None];
        replicas.extend(std::iter::repeat_n(a, USAGE_BATCH_ROWS * 2 + 3));
        replicas.push(b);
        let spans = batch_spans(&replicas);
        let lens: Vec<usize> = spans.iter().map(|s| s.len()).collect();
        assert_eq!(lens, [2, USAGE_BATCH_ROWS, USAGE_BATCH_ROWS, 3, 1]);
        let mut next = 0;
        for s in &spans {
            assert_eq!(s.start, next, "spans cover every row once, in order");
            next = s.end;
            assert!(replicas[s.clone()].iter().all(|r| *r == replicas[s.start]));
        }
        assert_eq!(next, replicas.len());
        assert!(batch_spans(&[]).is_empty());
    }

    #[test]
    fn open_ranges_have_bounded_days() {
        let r = Range {
            from_ms: 0,
            to_ms: u64::MAX,
            offset: 0,
            limit: 10,
        };
        assert_eq!(day_of(r.from_ms), 0);
        assert!(day_of(r.to_ms - 1) > 0);
        assert_eq!(bounds(&r), (0, i64::MAX));
    }

    #[test]
    fn index_memo_remembers_until_written_again() {
        let memo = IndexMemo::new();
        assert!(!memo.fresh(&1));
        memo.remember(1);
        assert!(memo.fresh(&1) && !memo.fresh(&2));
    }
}
