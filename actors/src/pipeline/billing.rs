//! The billing pipeline: admitted units per key and billing period (for the
//! included-units and overage alerts), and the closing of each period into
//! one billing record per key.
//!
//! # Records come from the usage rollups
//! A record's `units` is the sum of the key's usage buckets inside the
//! period, read from the store (the same data `GET …/usage/{key}/history`
//! serves). Periods are aligned to the buckets they are summed from: monthly
//! periods (calendar months, UTC) and periods of whole days use day buckets,
//! periods of whole hours hour buckets, others minute buckets. So billed
//! units equal admitted units exactly, once the write-behind has flushed the
//! period's last buckets: a period is closed `close_delay` after it ends.
//!
//! # Idempotent
//! A record is keyed by (key, period start) and computed from absolute data,
//! so closing a period again (another node, a restart, an operator's
//! re-run) rewrites the same record; there is never a second one.
//!
//! # Running counts
//! For the mid-period alerts the worker counts admitted units per key from
//! the usage rows the write-behind writes (absolute units per writer and
//! minute bucket, one event per key and flush, so checks send nothing to
//! billing), starting from the key's stored usage before the first bucket it
//! sees (read at hour and minute granularity). The alerts come one flush
//! interval after the crossing check.

use super::alerts::AlertEvent;
use super::{Ctx, Kind, Worker};
use crate::storage::StoreError;
use async_trait::async_trait;
use ringlimit_protocol::admin::Granularity;
use ringlimit_protocol::pipeline::BillingRecord;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// The length of a billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Calendar months, UTC.
    Monthly,
    /// Fixed periods of this many ms (a multiple of one minute), aligned to the epoch.
    Fixed(u64),
}

impl Period {
    /// `monthly`, or a number with a unit: `15m`, `1h`, `7d` (whole minutes).
    pub fn parse(s: &str) -> Result<Period, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("monthly") {
            return Ok(Period::Monthly);
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("{s:?} is not `monthly` or a duration like 15m, 1h, 30d"))?;
        let unit_ms = match unit {
            "m" => MINUTE_MS,
            "h" => HOUR_MS,
            "d" => DAY_MS,
            _ => return Err(format!("{s:?}: the unit must be m, h or d")),
        };
        let ms = n
            .checked_mul(unit_ms)
            .filter(|ms| *ms > 0 && *ms <= 400 * DAY_MS)
            .ok_or_else(|| format!("{s:?} must be between 1m and 400d"))?;
        Ok(Period::Fixed(ms))
    }

    /// Start (ms) of the period holding `t_ms`.
    pub fn start_of(&self, t_ms: u64) -> u64 {
        match *self {
            Period::Fixed(len) => t_ms - t_ms % len,
            Period::Monthly => {
                let (y, m, _) = civil_from_days((t_ms / DAY_MS) as i64);
                days_from_civil(y, m, 1) as u64 * DAY_MS
            }
        }
    }

    /// End (exclusive) of the period starting at `start`.
    pub fn end_of(&self, start: u64) -> u64 {
        match *self {
            Period::Fixed(len) => start + len,
            Period::Monthly => {
                let (y, m, _) = civil_from_days((start / DAY_MS) as i64);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) as u64 * DAY_MS
            }
        }
    }

    /// Start of the period before the one starting at `start`.
    pub fn prev(&self, start: u64) -> u64 {
        self.start_of(start.saturating_sub(1))
    }

    /// The usage granularity whose buckets tile this period.
    pub fn granularity(&self) -> Granularity {
        match *self {
            Period::Monthly => Granularity::Day,
            Period::Fixed(len) if len % DAY_MS == 0 => Granularity::Day,
            Period::Fixed(len) if len % HOUR_MS == 0 => Granularity::Hour,
            Period::Fixed(_) => Granularity::Minute,
        }
    }

    /// `2026-11` for a monthly period, else the start in ms.
    pub fn label(&self, start: u64) -> String {
        match self {
            Period::Monthly => {
                let (y, m, _) = civil_from_days((start / DAY_MS) as i64);
                format!("{y:04}-{m:02}")
            }
            Period::Fixed(_) => start.to_string(),
        }
    }

    /// The start of the period named by `s`: `YYYY-MM` (monthly periods), or
    /// any instant (ms since the epoch) inside the period.
    pub fn parse_label(&self, s: &str) -> Option<u64> {
        if let Ok(ms) = s.parse::<u64>() {
            return (ms < 253_402_300_800_000).then(|| self.start_of(ms));
        }
        if *self != Period::Monthly {
            return None;
        }
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let (y, m): (i64, u32) = (y.parse().ok()?, m.parse().ok()?);
        if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
            return None;
        }
        Some(days_from_civil(y, m, 1) as u64 * DAY_MS)
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The price model of a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Units included in each period.
    pub included_units: u64,
    /// Price of each unit above them, in billionths of the currency unit.
    pub unit_price_nanos: u64,
    pub currency: String,
}

/// Billing settings.
#[derive(Debug, Clone)]
pub struct BillingConfig {
    pub period: Period,
    /// How long after a period ends it is closed (the write-behind must have
    /// flushed its last buckets; default 60 s).
    pub close_delay: Duration,
    /// Price models by tier; tiers without one bill 0 with currency `default_currency`.
    pub prices: HashMap<String, Price>,
    pub default_currency: String,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            period: Period::Monthly,
            close_delay: Duration::from_secs(60),
            prices: HashMap::new(),
            default_currency: "USD".into(),
        }
    }
}

impl BillingConfig {
    fn price(&self, tier: &str) -> Price {
        self.prices.get(tier).cloned().unwrap_or(Price {
            included_units: 0,
            unit_price_nanos: 0,
            currency: self.default_currency.clone(),
        })
    }
}

/// Computes and writes the records of every key for the period starting at
/// `start`; returns them in key_id order.
pub async fn close_period(
    ctx: &Ctx,
    start: u64,
    now_ms: u64,
) -> Result<Vec<BillingRecord>, StoreError> {
    let cfg = &ctx.config.billing;
    let end = cfg.period.end_of(start);
    let mut keys = ctx.host().keys();
    keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let mut out = Vec::new();
    for k in keys.iter().filter(|k| k.created_at_ms < end) {
        let rec = record_of(ctx, k, start, now_ms).await?;
        ctx.store.put_billing(&rec).await?;
        out.push(rec);
    }
    metrics::counter!("ringlimit_billing_records_written_total").increment(out.len() as u64);
    tracing::info!(period = %cfg.period.label(start), keys = out.len(), "billing period closed");
    Ok(out)
}

/// The billing record of key `k` for the period starting at `start`, from
/// the usage history stored now.
async fn record_of(
    ctx: &Ctx,
    k: &crate::keys::KeyRecord,
    start: u64,
    now_ms: u64,
) -> Result<BillingRecord, StoreError> {
    let cfg = &ctx.config.billing;
    let end = cfg.period.end_of(start);
    let units: u64 = ctx
        .store
        .usage_history(&k.key_id, cfg.period.granularity(), start, end)
        .await?
        .iter()
        .map(|b| b.units)
        .sum();
    let price = cfg.price(&k.tier);
    let overage = units.saturating_sub(price.included_units);
    Ok(BillingRecord {
        key_id: k.key_id.clone(),
        period_start_ms: start,
        period_end_ms: end,
        owner: k.owner.clone(),
        tier: k.tier.clone(),
        units,
        included_units: price.included_units,
        overage_units: overage,
        unit_price_nanos: price.unit_price_nanos,
        amount_nanos: overage.saturating_mul(price.unit_price_nanos),
        currency: price.currency.clone(),
        computed_at_ms: now_ms,
        computed_by: ctx.config.node.clone(),
    })
}

/// Recomputes a closed period's record of `key_id` after usage of that
/// period arrived late; when the units changed, writes the new record and
/// an audit entry (`billing.adjust`) with the units before and after.
/// Returns the new record when it changed.
pub async fn adjust_closed(
    ctx: &Ctx,
    key_id: &str,
    start: u64,
    now_ms: u64,
) -> Result<Option<BillingRecord>, StoreError> {
    let Some(k) = ctx.host().key(key_id) else {
        return Ok(None);
    };
    let Some(before) = ctx.store.get_billing(key_id, start).await? else {
        // Never closed for this key: the period's close writes it.
        return Ok(None);
    };
    let rec = record_of(ctx, &k, start, now_ms).await?;
    if rec.units == before.units {
        return Ok(None);
    }
    ctx.store.put_billing(&rec).await?;
    let entry = ringlimit_protocol::pipeline::AuditEntry {
        id: super::stable_id(&[
            "billing.adjust",
            key_id,
            &start.to_string(),
            &rec.units.to_string(),
        ]),
        at_ms: now_ms,
        actor: "system".into(),
        action: "billing.adjust".into(),
        target_kind: "billing".into(),
        target_id: format!("{key_id}/{start}"),
        reason: Some("usage of a closed period was written after it closed".into()),
        details: serde_json::json!({
            "period_start_ms": start,
            "units_before": before.units,
            "units_after": rec.units,
            "amount_nanos_before": before.amount_nanos,
            "amount_nanos_after": rec.amount_nanos,
        }),
    };
    ctx.store.append_audit(&[entry]).await?;
    metrics::counter!("ringlimit_billing_adjustments_total").increment(1);
    tracing::warn!(
        key_id,
        period_start_ms = start,
        before = before.units,
        after = rec.units,
        "closed billing record adjusted for late usage"
    );
    Ok(Some(rec))
}

/// Running count of one key in the current period.
#[derive(Debug, Clone, Copy)]
struct Running {
    start: u64,
    /// Buckets before this one are in the stored total `units` started from.
    from_bucket: u64,
    units: u64,
    warned: bool,
    over: bool,
}

/// The worker of the billing pipeline.
#[derive(Debug)]
pub struct BillingWorker {
    ctx: Arc<Ctx>,
    running: HashMap<String, Running>,
    /// Last absolute units seen per (key, writer, minute bucket).
    last_abs: HashMap<(String, String, u64), u64>,
    last_closed: Option<u64>,
    /// The period whose close was last postponed (logged once).
    postponed: Option<u64>,
}

/// The key owner's webhook, for quota notices.
fn owner_of(ctx: &Ctx, key_id: &str) -> Option<(String, Option<String>)> {
    ctx.host()
        .key(key_id)
        .and_then(|k| super::alerts::owner_webhook(&k))
}

impl BillingWorker {
    /// Stored usage of `key_id` from `start` up to the minute holding `at_ms`
    /// (see [`stored_ranges`]).
    async fn stored_before(&self, key_id: &str, start: u64, at_ms: u64) -> Result<u64, StoreError> {
        let created_ms = self.ctx.host().key(key_id).map(|k| k.created_at_ms);
        let s = &self.ctx.store;
        let mut total = 0u64;
        for (g, from, to) in stored_ranges(start, at_ms, created_ms) {
            if from < to {
                let sum: u64 = s
                    .usage_history(key_id, g, from, to)
                    .await?
                    .iter()
                    .map(|b| b.units)
                    .sum();
                total = total.saturating_add(sum);
            }
        }
        Ok(total)
    }
}

/// How far before a key's creation its usage is still looked for: the
/// clocks of the node that created the key and of the nodes that admit its
/// checks may differ by this much.
const CREATION_CLOCK_MARGIN_MS: u64 = 5_000;

/// The history reads that give a key's stored usage in its period before
/// the minute holding `at_ms`: minutes up to the first whole hour, whole
/// hours, then minutes up to that minute (periods need not start on the
/// hour). Empty ranges are read as nothing.
///
/// No usage predates the key, so the reads start no earlier than the minute
/// of its creation (less [`CREATION_CLOCK_MARGIN_MS`]): a key first checked in
/// the minute it was created reads nothing, which spares the store one to
/// three history reads per new key.
fn stored_ranges(start: u64, at_ms: u64, created_ms: Option<u64>) -> [(Granularity, u64, u64); 3] {
    let start = match created_ms {
        Some(c) => {
            let c = c.saturating_sub(CREATION_CLOCK_MARGIN_MS);
            start.max(c - c % MINUTE_MS)
        }
        None => start,
    };
    let minute = (at_ms - at_ms % MINUTE_MS).max(start);
    let first_hour = start.div_ceil(HOUR_MS).saturating_mul(HOUR_MS).min(minute);
    let last_hour = (at_ms - at_ms % HOUR_MS).clamp(first_hour, minute);
    [
        (Granularity::Minute, start, first_hour),
        (Granularity::Hour, first_hour, last_hour),
        (Granularity::Minute, last_hour, minute),
    ]
}

#[async_trait]
impl Worker for BillingWorker {
    const KIND: Kind = Kind::Billing;

    fn new(ctx: Arc<Ctx>) -> Self {
        BillingWorker {
            ctx,
            running: HashMap::new(),
            last_abs: HashMap::new(),
            last_closed: None,
            postponed: None,
        }
    }

    async fn round(&mut self, now_ms: u64) -> Result<bool, StoreError> {
        let ctx = Arc::clone(&self.ctx);
        let cfg = &ctx.config.billing;
        let pct = u128::from(ctx.config.alerts.included_percent);
        ctx.refill_admits();
        let batch = ctx.admits.begin(ctx.config.batch_max);
        // The last period that is due to be closed (it ended at least
        // `close_delay` ago).
        let due = cfg.period.prev(
            cfg.period
                .start_of(now_ms.saturating_sub(cfg.close_delay.as_millis() as u64)),
        );
        // Usage of a period that is already due arrived late: its closed
        // record (if written) is recomputed, not counted as running usage.
        let mut late: Vec<(&str, u64)> = Vec::new();
        for a in batch.iter() {
            let start = cfg.period.start_of(a.bucket_start_ms);
            if start <= due && !late.contains(&(a.key_id.as_str(), start)) {
                late.push((a.key_id.as_str(), start));
            }
        }
        for (key_id, start) in &late {
            adjust_closed(&ctx, key_id, *start, now_ms).await?;
        }
        // Read what the store holds for keys new in their period first, so a
        // failed read leaves the running counts untouched (the batch is retried).
        let mut fresh: HashMap<&str, Running> = HashMap::new();
        for a in batch.iter() {
            let start = cfg.period.start_of(a.bucket_start_ms);
            if start <= due {
                continue;
            }
            let known = self
                .running
                .get(&a.key_id)
                .is_some_and(|r| r.start == start)
                || fresh
                    .get(a.key_id.as_str())
                    .is_some_and(|r| r.start == start);
            if !known {
                let before = self
                    .stored_before(&a.key_id, start, a.bucket_start_ms)
                    .await?;
                fresh.insert(
                    &a.key_id,
                    Running {
                        start,
                        from_bucket: a.bucket_start_ms,
                        units: before,
                        warned: false,
                        over: false,
                    },
                );
            }
        }
        for a in batch.iter() {
            let start = cfg.period.start_of(a.bucket_start_ms);
            if start <= due {
                continue;
            }
            if self.running.get(&a.key_id).is_none_or(|r| r.start != start) {
                let r = fresh
                    .remove(a.key_id.as_str())
                    .filter(|r| r.start == start)
                    .unwrap_or(Running {
                        start,
                        from_bucket: a.bucket_start_ms,
                        units: 0,
                        warned: false,
                        over: false,
                    });
                self.running.insert(a.key_id.clone(), r);
            }
            let Some(r) = self.running.get_mut(&a.key_id) else {
                continue;
            };
            if a.bucket_start_ms < r.from_bucket {
                // Already in the stored total the count started from.
                continue;
            }
            // Rows are absolute per writer and bucket: add what is new.
            let seen = self
                .last_abs
                .entry((a.key_id.clone(), a.writer.clone(), a.bucket_start_ms))
                .or_insert(0);
            let delta = a.units.saturating_sub(*seen);
            *seen = (*seen).max(a.units);
            if delta == 0 {
                continue;
            }
            r.units = r.units.saturating_add(delta);
            let Some(tier) = ctx.host().key(&a.key_id).map(|k| k.tier.clone()) else {
                continue;
            };
            let Some(price) = cfg.prices.get(&tier) else {
                continue;
            };
            let included = price.included_units;
            if included == 0 || (r.warned && r.over) {
                continue;
            }
            let label = cfg.period.label(start);
            let at = now_ms;
            if !r.warned && pct > 0 && u128::from(r.units) * 100 >= pct * u128::from(included) {
                r.warned = true;
                let mut ev = AlertEvent::new(
                    "included_units_threshold",
                    "warning",
                    Some(&a.key_id),
                    format!(
                        "key {} used {} of its {} included units ({}%+) in period {}",
                        a.key_id, r.units, included, pct, label
                    ),
                    serde_json::json!({ "units": r.units, "included_units": included, "percent": pct as u64, "period": label }),
                    &[&a.key_id, &start.to_string()],
                    at,
                );
                ev.notify_owner = owner_of(&ctx, &a.key_id);
                self.ctx.alerts.push(ev);
            }
            if !r.over && r.units > included {
                r.over = true;
                let mut ev = AlertEvent::new(
                    "overage",
                    "warning",
                    Some(&a.key_id),
                    format!(
                        "key {} crossed its {} included units in period {}: overage is billed at {} {} per unit",
                        a.key_id,
                        included,
                        label,
                        ringlimit_protocol::pipeline::nanos_to_decimal(price.unit_price_nanos),
                        price.currency
                    ),
                    serde_json::json!({ "units": r.units, "included_units": included, "period": label }),
                    &[&a.key_id, &start.to_string()],
                    at,
                );
                ev.notify_owner = owner_of(&ctx, &a.key_id);
                self.ctx.alerts.push(ev);
            }
        }
        if !batch.is_empty() {
            self.ctx.admits.commit();
        }
        // Buckets older than ten minutes are not written again.
        if self.last_abs.len() > 10_000 || batch.is_empty() {
            let horizon = now_ms.saturating_sub(10 * MINUTE_MS);
            self.last_abs.retain(|(_, _, b), _| *b >= horizon);
        }
        // Close the last period that ended at least `close_delay` ago, once
        // no usage admitted before its end waits to be written.
        if self.last_closed != Some(due) {
            // Every period that ended since the last one closed (a node that
            // was down across several boundaries catches up), at most 100.
            // A period postponed before this worker closed any is still
            // owed when the next one becomes due.
            let mut p = match (self.last_closed, self.postponed) {
                (Some(l), _) if l < due => cfg.period.end_of(l),
                (None, Some(pp)) if pp < due => pp,
                _ => due,
            };
            let mut postponed = false;
            for _ in 0..100 {
                if p > due {
                    break;
                }
                if ctx
                    .host()
                    .unwritten_usage_before(cfg.period.granularity(), cfg.period.end_of(p))
                {
                    metrics::counter!("ringlimit_billing_close_postponed_total").increment(1);
                    if self.postponed != Some(p) {
                        self.postponed = Some(p);
                        tracing::warn!(
                            period = %cfg.period.label(p),
                            "billing period not closed yet: usage admitted before its end is not written"
                        );
                    }
                    postponed = true;
                    break;
                }
                close_period(&ctx, p, now_ms).await?;
                self.last_closed = Some(p);
                p = cfg.period.end_of(p);
            }
            if p <= due && !postponed {
                self.last_closed = Some(due);
            }
            let current = cfg.period.start_of(now_ms);
            self.running.retain(|_, r| r.start >= current);
        }
        Ok(!self.ctx.billing_idle())
    }

    fn idle(&self) -> bool {
        self.ctx.billing_idle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranges that hold data, for comparison.
    fn read(ranges: [(Granularity, u64, u64); 3]) -> Vec<(Granularity, u64, u64)> {
        ranges.into_iter().filter(|(_, a, b)| a < b).collect()
    }

    #[test]
    fn stored_usage_is_read_from_the_period_start_or_the_keys_creation() {
        let day = 20_000 * DAY_MS; // a period start, on the hour
        let at = day + 5 * HOUR_MS + 30 * MINUTE_MS + 12_000; // 05:30:12
        // Unknown creation: the whole period before the minute of `at`.
        assert_eq!(
            read(stored_ranges(day, at, None)),
            vec![
                (Granularity::Hour, day, day + 5 * HOUR_MS),
                (
                    Granularity::Minute,
                    day + 5 * HOUR_MS,
                    day + 5 * HOUR_MS + 30 * MINUTE_MS
                ),
            ]
        );
        // Created before the period: the same reads.
        assert_eq!(
            read(stored_ranges(day, at, Some(day - DAY_MS))),
            read(stored_ranges(day, at, None))
        );
        // Created at 05:30:10, first checked at 05:30:12: nothing can be stored before.
        assert_eq!(read(stored_ranges(day, at, Some(at - 2_000))), vec![]);
        // Created at 05:30:02: its usage may carry a clock up to 5 s behind,
        // in the minute 05:29.
        assert_eq!(
            read(stored_ranges(
                day,
                at,
                Some(day + 5 * HOUR_MS + 30 * MINUTE_MS + 2_000)
            )),
            vec![(
                Granularity::Minute,
                day + 5 * HOUR_MS + 29 * MINUTE_MS,
                day + 5 * HOUR_MS + 30 * MINUTE_MS
            )]
        );
        // Created at 03:10:40: minutes to 04:00, hours to 05:00, minutes to 05:30.
        assert_eq!(
            read(stored_ranges(
                day,
                at,
                Some(day + 3 * HOUR_MS + 10 * MINUTE_MS + 40_000)
            )),
            vec![
                (
                    Granularity::Minute,
                    day + 3 * HOUR_MS + 10 * MINUTE_MS,
                    day + 4 * HOUR_MS
                ),
                (Granularity::Hour, day + 4 * HOUR_MS, day + 5 * HOUR_MS),
                (
                    Granularity::Minute,
                    day + 5 * HOUR_MS,
                    day + 5 * HOUR_MS + 30 * MINUTE_MS
                ),
            ]
        );
    }

    #[test]
    fn parses_periods() {
        assert_eq!(Period::parse("monthly"), Ok(Period::Monthly));
        assert_eq!(Period::parse("15m"), Ok(Period::Fixed(15 * MINUTE_MS)));
        assert_eq!(Period::parse("2h"), Ok(Period::Fixed(2 * HOUR_MS)));
        assert_eq!(Period::parse("30d"), Ok(Period::Fixed(30 * DAY_MS)));
        for bad in [
            "",
            "0m",
            "10s",
            "m",
            "1x",
            "-1h",
            "401d",
            "99999999999999999999d",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn monthly_periods_are_calendar_months() {
        let p = Period::Monthly;
        // 2026-11-28T12:00:00Z
        let t = 1_795_867_200_000;
        let start = p.start_of(t);
        assert_eq!(p.label(start), "2026-11");
        assert_eq!(p.parse_label("2026-11"), Some(start));
        let end = p.end_of(start);
        assert_eq!(p.label(end), "2026-12");
        assert_eq!((end - start) / DAY_MS, 30);
        assert_eq!(p.prev(start), p.parse_label("2026-10").unwrap());
        // December rolls into January.
        let dec = p.parse_label("2026-12").unwrap();
        assert_eq!(p.label(p.end_of(dec)), "2027-01");
        // February of a leap year.
        let feb = p.parse_label("2028-02").unwrap();
        assert_eq!((p.end_of(feb) - feb) / DAY_MS, 29);
        assert_eq!(p.granularity(), Granularity::Day);
        for bad in ["2026-13", "26-11", "2026-1", "abc", "1969-12"] {
            assert_eq!(p.parse_label(bad), None, "{bad}");
        }
    }

    #[test]
    fn fixed_periods_align_and_pick_their_granularity() {
        let p = Period::Fixed(2 * MINUTE_MS);
        assert_eq!(p.start_of(5 * MINUTE_MS + 1), 4 * MINUTE_MS);
        assert_eq!(p.end_of(4 * MINUTE_MS), 6 * MINUTE_MS);
        assert_eq!(p.prev(4 * MINUTE_MS), 2 * MINUTE_MS);
        assert_eq!(p.granularity(), Granularity::Minute);
        assert_eq!(Period::Fixed(HOUR_MS).granularity(), Granularity::Hour);
        assert_eq!(Period::Fixed(DAY_MS).granularity(), Granularity::Day);
        assert_eq!(p.parse_label("300001"), Some(4 * MINUTE_MS));
        assert_eq!(p.parse_label("2026-11"), None);
    }

    #[test]
    fn civil_dates_round_trip() {
        for z in [-1_000_000i64, -1, 0, 1, 19_000, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }
}
