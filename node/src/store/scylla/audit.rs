//! Audit entries on ScyllaDB: `audit_by_day`, whole entries, never changed.

use super::common::{ALL_KEYS, AUDIT, day_of, refuse_empty};
use super::rows::{AuditRow, audit_from, time_col};
use super::session::ScyllaStore;
use crate::store::shared::{empty_range, encode_json};
use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use ringlimit_actors::storage::{AuditStore, Range, StoreError};
use ringlimit_protocol::pipeline::AuditEntry;
use std::collections::BTreeMap;

#[async_trait]
impl AuditStore for ScyllaStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // day → rows of that partition.
        type AuditValues<'a> = (
            i64,
            i64,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            String,
        );
        let mut parts: BTreeMap<i64, Vec<AuditValues<'_>>> = BTreeMap::new();
        for e in entries {
            refuse_empty("append_audit", "entry id", &e.id)?;
            let at = time_col("audit entry", &e.id, e.at_ms)?;
            let details = encode_json("audit entry", &e.id, &e.details)?;
            let day = day_of(e.at_ms);
            parts.entry(day).or_default().push((
                day,
                at,
                e.id.as_str(),
                e.actor.as_str(),
                e.action.as_str(),
                e.target_kind.as_str(),
                e.target_id.as_str(),
                e.reason.as_deref(),
                details,
            ));
        }
        self.bounded("append_audit", self.inner.opts.operation_timeout, async {
            let mut index = Vec::new();
            for &day in parts.keys() {
                index.push(self.index_day(AUDIT, ALL_KEYS, day, 0).boxed());
            }
            self.run_all(index).await?;
            let mut writes: Vec<BoxFuture<'_, Result<(), StoreError>>> = Vec::new();
            for rows in parts.values() {
                writes.push(
                    self.batch_of("append_audit", &self.pst().put_audit, rows)
                        .boxed(),
                );
            }
            self.run_all(writes).await
        })
        .await
    }

    async fn list_audit(&self, range: Range) -> Result<Vec<AuditEntry>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        self.bounded("list_audit", self.inner.opts.scan_timeout, async {
            let rows: Vec<AuditRow> = self
                .page_days(
                    "list_audit",
                    (AUDIT, ALL_KEYS),
                    None,
                    &self.pst().audit_of_day,
                    &range,
                )
                .await?;
            rows.into_iter().map(audit_from).collect()
        })
        .await
    }
}
