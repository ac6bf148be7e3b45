//! Alerts and dead letters on ScyllaDB: one record row by id, and
//! time-ordered index tables of ids (see the module documentation).

use super::common::{ALERTS, ALL_KEYS, DEAD_LETTERS, bounds, day_of, refuse_empty, to_i64};
use super::rows::{AlertRow, DeadRow, alert_from, attempts_col, dead_from, time_col};
use super::session::ScyllaStore;
use crate::store::shared::{Page, empty_range, encode_json};
use async_trait::async_trait;
use futures_util::FutureExt;
use ringlimit_actors::storage::{AlertStore, Range, StoreError};
use ringlimit_protocol::pipeline::{Alert, DeadLetter};

impl ScyllaStore {
    async fn read_alert(&self, id: String) -> Result<Option<Alert>, StoreError> {
        let row: Option<AlertRow> = self.row("get_alert", &self.pst().get_alert, (id,)).await?;
        row.map(alert_from).transpose()
    }

    async fn read_dead_letter(&self, id: String) -> Result<Option<DeadLetter>, StoreError> {
        let row: Option<DeadRow> = self
            .row("get_dead_letter", &self.pst().get_dead, (id,))
            .await?;
        row.map(dead_from).transpose()
    }

    /// Writes the index rows of an alert, then its record, then removes the
    /// index rows of a stored version with another time or key.
    async fn upsert_alert(&self, alert: &Alert, details: String) -> Result<(), StoreError> {
        let st = self.pst();
        let id = alert.id.as_str();
        let raised = time_col("alert", id, alert.raised_at_ms)?;
        let last = alert
            .last_attempt_at_ms
            .map(|t| time_col("alert", id, t))
            .transpose()?;
        let attempts = attempts_col("alert", id, alert.attempts)?;
        let old = match self.read_alert(id.to_owned()).await {
            Ok(old) => old,
            // An undecodable old record is replaced; its index rows (if they
            // differ) point at the new record, which lists it at its own time.
            Err(StoreError::Corrupt(_)) => None,
            Err(e) => return Err(e),
        };
        let day = day_of(alert.raised_at_ms);
        self.index_day(ALERTS, ALL_KEYS, day, 0).await?;
        self.exec("put_alert", &st.put_alert_by_day, (day, raised, id))
            .await?;
        if let Some(k) = alert.key_id.as_deref() {
            self.exec("put_alert", &st.put_alert_by_key, (k, raised, id))
                .await?;
        }
        let values = (
            id,
            raised,
            alert.key_id.as_deref(),
            alert.kind.as_str(),
            alert.severity.as_str(),
            alert.message.as_str(),
            details,
            alert.delivery.as_str(),
            attempts,
            last,
        );
        self.exec("put_alert", &st.put_alert, values).await?;
        let Some(old) = old else { return Ok(()) };
        let old_raised = to_i64(old.raised_at_ms);
        if old.raised_at_ms != alert.raised_at_ms {
            let old_day = day_of(old.raised_at_ms);
            self.exec(
                "put_alert (old index)",
                &st.del_alert_by_day,
                (old_day, old_raised, id),
            )
            .await?;
        }
        if let Some(k) = old.key_id.as_deref()
            && (old.raised_at_ms != alert.raised_at_ms || alert.key_id.as_deref() != Some(k))
        {
            self.exec(
                "put_alert (old index)",
                &st.del_alert_by_key,
                (k, old_raised, id),
            )
            .await?;
        }
        Ok(())
    }

    /// Ids of one key's alerts in `range`, newest first, paged.
    async fn alert_ids_of_key(
        &self,
        key_id: &str,
        range: &Range,
    ) -> Result<Vec<String>, StoreError> {
        let (from, to) = bounds(range);
        let mut page = Page::new(range);
        self.each_row(
            "list_alerts",
            &self.pst().alerts_of_key,
            (key_id, from, to),
            |(id,): (String,)| {
                page.offer(id);
                !page.full()
            },
        )
        .await?;
        Ok(page.rows)
    }

    /// Writes the day index row of a dead letter, then its record, then
    /// removes the index row of a stored version with another time.
    async fn upsert_dead_letter(&self, d: &DeadLetter) -> Result<(), StoreError> {
        let st = self.pst();
        let id = d.id.as_str();
        let failed = time_col("dead letter", id, d.failed_at_ms)?;
        let attempts = attempts_col("dead letter", id, d.attempts)?;
        let old = match self.read_dead_letter(id.to_owned()).await {
            Ok(old) => old,
            Err(StoreError::Corrupt(_)) => None,
            Err(e) => return Err(e),
        };
        let day = day_of(d.failed_at_ms);
        self.index_day(DEAD_LETTERS, ALL_KEYS, day, 0).await?;
        self.exec("put_dead_letter", &st.put_dead_by_day, (day, failed, id))
            .await?;
        let values = (
            id,
            d.alert_id.as_str(),
            d.endpoint.as_str(),
            d.url.as_str(),
            failed,
            attempts,
            d.error.as_str(),
            d.payload.as_str(),
        );
        self.exec("put_dead_letter", &st.put_dead, values).await?;
        if let Some(old) = old
            && old.failed_at_ms != d.failed_at_ms
        {
            let old_at = to_i64(old.failed_at_ms);
            self.exec(
                "put_dead_letter (old index)",
                &st.del_dead_by_day,
                (day_of(old.failed_at_ms), old_at, id),
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl AlertStore for ScyllaStore {
    async fn put_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        refuse_empty("put_alert", "alert id", &alert.id)?;
        let details = encode_json("alert", &alert.id, &alert.details)?;
        self.bounded(
            "put_alert",
            self.inner.opts.operation_timeout,
            self.upsert_alert(alert, details),
        )
        .await
    }

    async fn get_alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        if id.is_empty() {
            return Ok(None);
        }
        self.bounded(
            "get_alert",
            self.inner.opts.operation_timeout,
            self.read_alert(id.to_owned()),
        )
        .await
    }

    async fn list_alerts(
        &self,
        key_id: Option<&str>,
        range: Range,
    ) -> Result<Vec<Alert>, StoreError> {
        if empty_range(&range) || key_id == Some("") {
            return Ok(Vec::new());
        }
        self.bounded("list_alerts", self.inner.opts.scan_timeout, async {
            let ids: Vec<String> = match key_id {
                Some(k) => self.alert_ids_of_key(k, &range).await?,
                None => {
                    let rows: Vec<(String,)> = self
                        .page_days(
                            "list_alerts",
                            (ALERTS, ALL_KEYS),
                            None,
                            &self.pst().alerts_of_day,
                            &range,
                        )
                        .await?;
                    rows.into_iter().map(|(id,)| id).collect()
                }
            };
            self.records_by_id(ids, |id| self.read_alert(id).boxed())
                .await
        })
        .await
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        refuse_empty("put_dead_letter", "dead letter id", &letter.id)?;
        self.bounded(
            "put_dead_letter",
            self.inner.opts.operation_timeout,
            self.upsert_dead_letter(letter),
        )
        .await
    }

    async fn get_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        if id.is_empty() {
            return Ok(None);
        }
        self.bounded(
            "get_dead_letter",
            self.inner.opts.operation_timeout,
            self.read_dead_letter(id.to_owned()),
        )
        .await
    }

    async fn list_dead_letters(&self, range: Range) -> Result<Vec<DeadLetter>, StoreError> {
        if empty_range(&range) {
            return Ok(Vec::new());
        }
        self.bounded("list_dead_letters", self.inner.opts.scan_timeout, async {
            let rows: Vec<(String,)> = self
                .page_days(
                    "list_dead_letters",
                    (DEAD_LETTERS, ALL_KEYS),
                    None,
                    &self.pst().dead_of_day,
                    &range,
                )
                .await?;
            let ids = rows.into_iter().map(|(id,)| id).collect();
            self.records_by_id(ids, |id| self.read_dead_letter(id).boxed())
                .await
        })
        .await
    }

    async fn delete_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
        if id.is_empty() {
            return Ok(false);
        }
        self.bounded(
            "delete_dead_letter",
            self.inner.opts.operation_timeout,
            async {
                let st = self.pst();
                let failed_at = match self.read_dead_letter(id.to_owned()).await {
                    Ok(Some(old)) => Some(old.failed_at_ms),
                    Ok(None) => return Ok(false),
                    // Undecodable, but there: delete the record; its index row,
                    // if any, then leads nowhere and lists skip it.
                    Err(StoreError::Corrupt(_)) => None,
                    Err(e) => return Err(e),
                };
                if let Some(at) = failed_at {
                    let key = (day_of(at), to_i64(at), id);
                    self.exec("delete_dead_letter", &st.del_dead_by_day, key)
                        .await?;
                }
                self.exec("delete_dead_letter", &st.del_dead, (id,)).await?;
                Ok(true)
            },
        )
        .await
    }
}
