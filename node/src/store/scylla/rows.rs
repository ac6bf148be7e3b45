//! Row conversion of the pipeline tables: records to column values (times
//! and counts as `bigint`, refused rather than wrapped when out of range)
//! and rows back to records (negative values are corrupt).

use super::common::day_of;
use ringlimit_actors::storage::StoreError;
use ringlimit_protocol::pipeline::{
    Alert, AuditEntry, BillingRecord, DeadLetter, DeliveryState, IpBlock, Violation,
};

/// A record's time as a `bigint`: refused above `i64::MAX - 1`, so every
/// stored time is below the bound of an open range (`to_ms = u64::MAX`).
pub(super) fn time_col(what: &str, id: &str, ms: u64) -> Result<i64, StoreError> {
    i64::try_from(ms)
        .ok()
        .filter(|&t| t < i64::MAX)
        .ok_or_else(|| StoreError::Backend(format!("{what} {id:?}: time {ms} out of range")))
}

/// A count as a `bigint`, refused (not wrapped) above `i64::MAX`.
pub(super) fn count_col(what: &str, id: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Backend(format!("{what} {id:?}: value {v} out of range")))
}

pub(super) fn attempts_col(what: &str, id: &str, v: u32) -> Result<i32, StoreError> {
    i32::try_from(v)
        .map_err(|_| StoreError::Backend(format!("{what} {id:?}: attempts {v} out of range")))
}

/// A stored `bigint` back to `u64`; negative values are corrupt.
pub(super) fn unsigned(what: &str, id: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {id:?}: negative value {v}")))
}

pub(super) fn unsigned32(what: &str, id: &str, v: i32) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {id:?}: negative value {v}")))
}

pub(super) fn decode_details(
    what: &str,
    id: &str,
    v: Option<String>,
) -> Result<serde_json::Value, StoreError> {
    match v {
        None => Ok(serde_json::Value::Null),
        Some(s) => serde_json::from_str(&s)
            .map_err(|e| StoreError::Corrupt(format!("{what} {id:?}: details: {e}"))),
    }
}

pub(super) type ViolationRow = (i64, String, String, String, String, Option<String>, i64);
pub(super) type BlockRow = (String, String, i64, Option<i64>, Option<String>, String);
pub(super) type AuditRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);
pub(super) type AlertRow = (
    String,
    i64,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    String,
    i32,
    Option<i64>,
);
pub(super) type DeadRow = (String, String, String, String, i64, i32, String, String);
pub(super) type BillingRow = (
    String,
    i64,
    i64,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    i64,
    String,
);

/// The values of a violation row (after `day`), in the order of the `VIOLATION_COLS` of the statements.
pub(super) type ViolationValues<'a> = (
    i64,
    i64,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    i64,
    i32,
);

pub(super) fn violation_values(v: &Violation, ttl: i32) -> Result<ViolationValues<'_>, StoreError> {
    let at = time_col("violation", &v.id, v.at_ms)?;
    Ok((
        day_of(v.at_ms),
        at,
        v.id.as_str(),
        v.key_id.as_str(),
        v.limit_name.as_str(),
        v.node.as_str(),
        v.client_ip.as_deref(),
        count_col("violation", &v.id, v.cost)?,
        ttl,
    ))
}

pub(super) fn violation_from(r: ViolationRow) -> Result<Violation, StoreError> {
    let (at, id, key_id, limit_name, node, client_ip, cost) = r;
    Ok(Violation {
        at_ms: unsigned("violation", &id, at)?,
        cost: unsigned("violation", &id, cost)?,
        id,
        key_id,
        limit_name,
        node,
        client_ip,
    })
}

pub(super) fn block_from(r: BlockRow) -> Result<IpBlock, StoreError> {
    let (id, cidr, created, expires, reason, created_by) = r;
    Ok(IpBlock {
        created_at_ms: unsigned("block", &id, created)?,
        expires_at_ms: expires.map(|e| unsigned("block", &id, e)).transpose()?,
        id,
        cidr,
        reason,
        created_by,
    })
}

pub(super) fn audit_from(r: AuditRow) -> Result<AuditEntry, StoreError> {
    let (at, id, actor, action, target_kind, target_id, reason, details) = r;
    Ok(AuditEntry {
        at_ms: unsigned("audit entry", &id, at)?,
        details: decode_details("audit entry", &id, details)?,
        id,
        actor,
        action,
        target_kind,
        target_id,
        reason,
    })
}

pub(super) fn alert_from(r: AlertRow) -> Result<Alert, StoreError> {
    let (id, raised, key_id, kind, severity, message, details, delivery, attempts, last) = r;
    let delivery = DeliveryState::parse(&delivery).ok_or_else(|| {
        StoreError::Corrupt(format!("alert {id:?}: unknown delivery state {delivery:?}"))
    })?;
    Ok(Alert {
        raised_at_ms: unsigned("alert", &id, raised)?,
        details: decode_details("alert", &id, details)?,
        attempts: unsigned32("alert", &id, attempts)?,
        last_attempt_at_ms: last.map(|t| unsigned("alert", &id, t)).transpose()?,
        id,
        key_id,
        kind,
        severity,
        message,
        delivery,
    })
}

pub(super) fn dead_from(r: DeadRow) -> Result<DeadLetter, StoreError> {
    let (id, alert_id, endpoint, url, failed, attempts, error, payload) = r;
    Ok(DeadLetter {
        failed_at_ms: unsigned("dead letter", &id, failed)?,
        attempts: unsigned32("dead letter", &id, attempts)?,
        id,
        alert_id,
        endpoint,
        url,
        error,
        payload,
    })
}

pub(super) fn billing_from(r: BillingRow) -> Result<BillingRecord, StoreError> {
    let (
        key_id,
        start,
        end,
        owner,
        tier,
        units,
        included,
        overage,
        price,
        amount,
        currency,
        at,
        by,
    ) = r;
    let u = |v| unsigned("billing record", &key_id, v);
    Ok(BillingRecord {
        period_start_ms: u(start)?,
        period_end_ms: u(end)?,
        units: u(units)?,
        included_units: u(included)?,
        overage_units: u(overage)?,
        unit_price_nanos: u(price)?,
        amount_nanos: u(amount)?,
        computed_at_ms: u(at)?,
        owner,
        tier,
        currency,
        computed_by: by,
        key_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_range_are_refused_not_wrapped() {
        assert!(time_col("x", "i", u64::MAX).is_err());
        assert!(time_col("x", "i", i64::MAX as u64).is_err());
        assert_eq!(time_col("x", "i", 5).ok(), Some(5));
        assert!(count_col("x", "i", u64::MAX).is_err());
        assert_eq!(count_col("x", "i", i64::MAX as u64).ok(), Some(i64::MAX));
        assert!(matches!(
            unsigned("x", "i", -1),
            Err(StoreError::Corrupt(_))
        ));
        assert!(attempts_col("x", "i", u32::MAX).is_err());
    }
}
