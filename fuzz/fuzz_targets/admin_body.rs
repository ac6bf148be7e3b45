//! Every JSON body the admin plane parses, all from the same bytes: keys
//! (create, update, rotate), tiers, IP blocks, abuse rules and the billing
//! period of a close. Decoding and validation never panic; limits that pass
//! validation build a working limit set whose denials spend nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlimit_actors::blocks::Cidr;
use ringlimit_actors::limitset::{CheckError, LimitSet};
use ringlimit_actors::pipeline::{AbuseRule, Period};
use ringlimit_protocol::LimitSpec;
use ringlimit_protocol::admin::{CreateKeyRequest, RotateRequest, UpdateKeyRequest, UpdateTierRequest};
use ringlimit_protocol::limits::validate_limits;
use ringlimit_protocol::pipeline::CreateBlockRequest;
use serde::Deserialize;

/// `PUT /api/v1/abuse/rules` (the node's `RulesRequest`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    rules: Vec<AbuseRule>,
}

/// `POST /api/v1/billing/close` (the node's `CloseRequest`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Close {
    period: String,
}

fn exercise_limits(limits: &[LimitSpec], data: &[u8]) {
    if validate_limits(limits).is_err() {
        return;
    }
    let mut set = LimitSet::new(limits);
    assert_eq!(set.entries.len(), limits.len());
    let cap = limits.iter().map(LimitSpec::capacity).min().unwrap_or(1);
    let mut now = 1_700_000_000_000_000u64;
    for &b in data.iter().take(64) {
        now += u64::from(b) * 997;
        let cost = u64::from(b % 4) + 1;
        let before = set.clone();
        match set.check(now, cost) {
            Ok(r) => {
                assert_eq!(r.limits.len(), limits.len());
                if !r.allowed {
                    assert_eq!(set, before, "a denied check spent something");
                    assert!(r.retry_after_ms.is_some_and(|ms| ms >= 1));
                }
            }
            Err(CheckError::CostExceedsCapacity { capacity, .. }) => {
                assert!(cost > capacity && capacity >= cap);
                assert_eq!(set, before);
            }
            Err(e) => panic!("unexpected check error {e}"),
        }
        for u in set.peek(now) {
            assert!(u.used + u.remaining == u.limit, "{u:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<CreateKeyRequest>(data)
        && let Some(l) = &r.limits
    {
        exercise_limits(l, data);
    }
    if let Ok(r) = serde_json::from_slice::<UpdateKeyRequest>(data)
        && let Some(Some(l)) = &r.limits
    {
        exercise_limits(l, data);
    }
    let _ = serde_json::from_slice::<RotateRequest>(data);
    if let Ok(r) = serde_json::from_slice::<UpdateTierRequest>(data) {
        exercise_limits(&r.limits, data);
    }
    if let Ok(r) = serde_json::from_slice::<CreateBlockRequest>(data) {
        let _ = Cidr::parse(&r.cidr);
    }
    if let Ok(r) = serde_json::from_slice::<Rules>(data) {
        for rule in &r.rules {
            let _ = rule.validate();
        }
    }
    let period = serde_json::from_slice::<Close>(data)
        .map(|c| c.period)
        .unwrap_or_else(|_| String::from_utf8_lossy(data).into_owned());
    let _ = Cidr::parse(&period);
    for p in [Period::Monthly, Period::Fixed(60_000), Period::Fixed(86_400_000)] {
        if let Some(start) = p.parse_label(&period) {
            assert_eq!(p.start_of(start), start, "{p:?} {period:?}");
            assert!(p.end_of(start) > start);
            assert_eq!(p.parse_label(&p.label(start)), Some(start), "{p:?} {period:?}");
        }
    }
});
