//! Usage history on ScyllaDB: time-bucketed `usage_*` partitions and their
//! `usage_partitions` index (see the module documentation).

use super::common::{DAY_MS, MAX_HISTORY_PARTITIONS, gi, period_days, replica_of, to_i64};
use super::session::ScyllaStore;
use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::stream::{self, StreamExt};
use ringlimit_actors::storage::{BucketSum, StoreError, UsageRow, UsageStore};
use ringlimit_protocol::admin::{Granularity, UsageBucket};
use std::collections::BTreeMap;

/// Partitions read concurrently by one history read.
const HISTORY_READ_CONCURRENCY: usize = 8;

/// The values of one usage row write: key, day, bucket start, writer, units,
/// TTL, and the write's timestamp, which is the units themselves.
///
/// A row holds one writer's absolute total of one bucket, which only grows.
/// Written with the total as its timestamp, the store's last-write-wins
/// keeps the largest total whatever order the writes land in: a stale copy
/// (a node that adopted the bucket from an older snapshot while the writer
/// still counts, in a partition) can never lower a stored total.
type UsageCell<'a> = (&'a str, i64, i64, &'a str, i64, i32, i64);

/// The `day` of the usage partition holding a bucket starting at `start_ms`.
fn partition_day(g: Granularity, start_ms: u64) -> i64 {
    let day = start_ms / DAY_MS;
    let first = day - day % period_days(g);
    i64::try_from(first).unwrap_or(i64::MAX)
}

impl ScyllaStore {
    async fn read_usage_partition(
        &self,
        key_id: &str,
        g: Granularity,
        day: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        self.rows(
            "usage_history",
            &self.inner.st.get_usage[gi(g)],
            (key_id, day, from, to),
        )
        .await
    }
}

#[async_trait]
impl UsageStore for ScyllaStore {
    async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        // (granularity, key, day) → (bucket_start, writer) → units; the largest wins.
        let mut parts: BTreeMap<(usize, &str, i64), (Granularity, BTreeMap<(i64, &str), i64>)> =
            BTreeMap::new();
        for r in rows {
            let start = i64::try_from(r.bucket_start_ms).map_err(|_| {
                StoreError::Backend(format!(
                    "write_usage: bucket start {} out of range",
                    r.bucket_start_ms
                ))
            })?;
            let units = i64::try_from(r.units).map_err(|_| {
                StoreError::Backend(format!("write_usage: units {} out of range", r.units))
            })?;
            let day = partition_day(r.granularity, r.bucket_start_ms);
            parts
                .entry((gi(r.granularity), r.key_id.as_str(), day))
                .or_insert_with(|| (r.granularity, BTreeMap::new()))
                .1
                .entry((start, r.writer.as_str()))
                .and_modify(|u| *u = (*u).max(units))
                .or_insert(units);
        }
        self.bounded("write_usage", self.inner.opts.operation_timeout, async {
            let state = self.inner.session.get_cluster_state();
            // The partition index first, so no data is ever unlisted.
            let mut index = Vec::new();
            let mut indexed = Vec::new();
            for (&(_, key, day), (g, _)) in &parts {
                let memo_key = (gi(*g), key.to_owned(), day);
                if self.inner.indexed.fresh(&memo_key) {
                    continue;
                }
                let st = &self.inner.st.put_partition;
                let values = (key, g.as_str(), day, self.inner.index_ttl[gi(*g)]);
                index.push((replica_of(&state, st, &values), st, values));
                indexed.push(memo_key);
            }
            self.replica_batches("write_usage (partition index)", index)
                .await?;
            for memo_key in indexed {
                self.inner.indexed.remember(memo_key);
            }
            let mut rows: Vec<(_, _, UsageCell)> = Vec::new();
            for (&(_, key, day), (g, cells)) in &parts {
                let ttl = self.inner.usage_ttl[gi(*g)];
                let st = &self.inner.st.put_usage[gi(*g)];
                let mut replica = None;
                for (i, (&(start, writer), &units)) in cells.iter().enumerate() {
                    let values = (key, day, start, writer, units, ttl, units);
                    if i == 0 {
                        // One partition: one replica for all its rows.
                        replica = replica_of(&state, st, &values);
                    }
                    rows.push((replica, st, values));
                }
            }
            self.replica_batches("write_usage", rows).await
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
        self.bounded("usage_history", self.inner.opts.operation_timeout, async {
            let g = granularity;
            let (day_lo, day_hi) = (partition_day(g, from_ms), partition_day(g, to_ms - 1));
            let days: Vec<(i64,)> = self
                .rows("usage_history (partitions)", &self.inner.st.get_partitions, (key_id, g.as_str(), day_lo, day_hi))
                .await?;
            if days.len() > MAX_HISTORY_PARTITIONS {
                return Err(StoreError::Backend(format!(
                    "usage_history: the range spans more than {MAX_HISTORY_PARTITIONS} {} partitions; narrow it",
                    g.as_str()
                )));
            }
            let (from, to) = (to_i64(from_ms), to_i64(to_ms));
            let mut reads = Vec::with_capacity(days.len());
            for (day,) in days {
                reads.push(self.read_usage_partition(key_id, g, day, from, to).boxed());
            }
            let mut parts = stream::iter(reads).buffered(HISTORY_READ_CONCURRENCY);
            let mut out = BucketSum::default();
            while let Some(rows) = parts.next().await {
                // Rows come in (bucket_start, writer) order: the writers of a bucket are adjacent.
                for (start, units) in rows? {
                    let (Ok(start_ms), units) = (u64::try_from(start), u64::try_from(units).unwrap_or(0)) else {
                        continue;
                    };
                    out.add(start_ms, units);
                }
            }
            Ok(out.finish())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_aligned_periods() {
        const T0: u64 = 1_699_999_980_000;
        let day = i64::try_from(T0 / DAY_MS).expect("day");
        assert_eq!(partition_day(Granularity::Minute, T0), day);
        assert_eq!(partition_day(Granularity::Hour, T0) % 32, 0);
        assert!(
            partition_day(Granularity::Hour, T0) <= day
                && day < partition_day(Granularity::Hour, T0) + 32
        );
        assert_eq!(partition_day(Granularity::Day, T0) % 1024, 0);
        assert_eq!(partition_day(Granularity::Minute, 0), 0);
        assert_eq!(partition_day(Granularity::Minute, DAY_MS - 1), 0);
        assert_eq!(partition_day(Granularity::Minute, DAY_MS), 1);
        assert!(partition_day(Granularity::Minute, u64::MAX) > 0);
    }

    #[test]
    fn http_ranges_touch_few_partitions() {
        // The HTTP layer allows 10 000 buckets per history request.
        for g in Granularity::all() {
            let span_days = 10_000 * g.millis() / DAY_MS + 1;
            let partitions = span_days / period_days(g) + 2;
            assert!(partitions <= 16, "{g:?}: {partitions}");
        }
    }
}
