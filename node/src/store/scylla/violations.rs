//! Violations on ScyllaDB: `violations_by_day` and `violations_by_key`,
//! written `USING TTL` the violations' retention.

use super::common::{ALL_KEYS, MAX_TTL_SECS, VIOLATIONS, refuse_empty, ttl_secs};
use super::rows::{ViolationRow, ViolationValues, violation_from, violation_values};
use super::session::ScyllaStore;
use crate::store::shared::empty_range;
use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use ringlimit_actors::storage::{Range, StoreError, ViolationStore};
use ringlimit_protocol::pipeline::Violation;
use std::collections::BTreeMap;

impl ScyllaStore {
    /// TTL of violation rows, and of their `pipeline_days` rows (a day
    /// longer: an index row written up to an hour before the last data of
    /// its day must outlive that data).
    fn violation_ttls(&self) -> (i32, i32) {
        let data = ttl_secs(self.inner.opts.retention.violations);
        let index = (i64::from(data) + 86_400).min(MAX_TTL_SECS);
        (data, i32::try_from(index).unwrap_or(data))
    }
}

#[async_trait]
impl ViolationStore for ScyllaStore {
    async fn write_violations(&self, batch: &[Violation]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (ttl, index_ttl) = self.violation_ttls();
        // (day) and (key, day) partitions → (at, id) → values; a violation
        // repeated in one batch is written once (the last one wins).
        let mut by_day: BTreeMap<i64, BTreeMap<(i64, &str), ViolationValues<'_>>> = BTreeMap::new();
        let mut by_key: BTreeMap<(&str, i64), BTreeMap<(i64, &str), ViolationValues<'_>>> =
            BTreeMap::new();
        for v in batch {
            refuse_empty("write_violations", "violation id", &v.id)?;
            let vals = violation_values(v, ttl)?;
            let (day, at) = (vals.0, vals.1);
            by_day
                .entry(day)
                .or_default()
                .insert((at, v.id.as_str()), vals);
            by_key
                .entry((v.key_id.as_str(), day))
                .or_default()
                .insert((at, v.id.as_str()), vals);
        }
        self.bounded(
            "write_violations",
            self.inner.opts.operation_timeout,
            async {
                // The day index first, so no data is ever unlisted.
                let mut index = Vec::new();
                for &day in by_day.keys() {
                    index.push(self.index_day(VIOLATIONS, ALL_KEYS, day, index_ttl).boxed());
                }
                for &(key, day) in by_key.keys() {
                    index.push(self.index_day(VIOLATIONS, key, day, index_ttl).boxed());
                }
                self.run_all(index).await?;
                let st = self.pst();
                let mut writes: Vec<BoxFuture<'_, Result<(), StoreError>>> = Vec::new();
                let parts = by_day
                    .values()
                    .map(|rows| (&st.put_violation_by_day, rows))
                    .chain(by_key.values().map(|rows| (&st.put_violation_by_key, rows)));
                for (stmt, rows) in parts {
                    let rows: Vec<ViolationValues<'_>> = rows.values().copied().collect();
                    writes.push(
                        async move { self.batch_of("write_violations", stmt, &rows).await }.boxed(),
                    );
                }
                self.run_all(writes).await
            },
        )
        .await
    }

    async fn list_violations(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Violation>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        self.bounded("list_violations", self.inner.opts.scan_timeout, async {
            let st = self.pst();
            let rows: Vec<ViolationRow> = match key_id {
                Some(k) => {
                    self.page_days(
                        "list_violations",
                        (VIOLATIONS, k),
                        Some(k),
                        &st.violations_of_key_day,
                        &range,
                    )
                    .await?
                }
                None => {
                    self.page_days(
                        "list_violations",
                        (VIOLATIONS, ALL_KEYS),
                        None,
                        &st.violations_of_day,
                        &range,
                    )
                    .await?
                }
            };
            rows.into_iter().map(violation_from).collect()
        })
        .await
    }
}
