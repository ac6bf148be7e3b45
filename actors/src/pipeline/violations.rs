//! The violation pipeline: batches denied checks into the store, runs the
//! abuse rules over them, and writes the audit log.
//!
//! Abuse rules are changeable at run time ([`super::Pipelines::set_abuse_rules`]).
//! A rule that trips suspends the key until `now + suspend_for_ms`: validate
//! answers 403 with the end time until then, and the suspension lifts by
//! itself (the key record carries `suspended_until_ms`). Each suspension is
//! written to the audit log and raises a `key_suspended` alert.
//!
//! The rules' counting state lives in the worker: a restarted worker starts
//! counting afresh (it never suspends on stale counts).

use super::alerts::AlertEvent;
use super::{Ctx, Decision, Kind, Worker};
use crate::storage::StoreError;
use async_trait::async_trait;
use ringlimit_protocol::pipeline::{AuditEntry, Violation};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What trips a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AbuseRuleKind {
    /// More than `max` violations within `window_ms`.
    Violations { max: u64, window_ms: u64 },
    /// Over the last `over_requests` checks of the key, a share of denials above `ratio`.
    DenialRatio { ratio: f64, over_requests: u64 },
}

/// An abuse rule: a condition and how long a key that meets it is suspended.
// No `deny_unknown_fields` here: serde does not support it with `flatten`;
// the variants of `AbuseRuleKind` refuse unknown fields instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbuseRule {
    pub name: String,
    #[serde(flatten)]
    pub kind: AbuseRuleKind,
    pub suspend_for_ms: u64,
}

/// Longest suspension a rule may set (30 days) and widest window (1 day).
pub const MAX_SUSPEND_MS: u64 = 30 * 86_400_000;
pub const MAX_WINDOW_MS: u64 = 86_400_000;
/// Most violations or requests a rule may count (bounds memory per key).
pub const MAX_COUNT: u64 = 100_000;
/// Most recent checks a ratio rule looks at (each key keeps that many outcomes).
pub const MAX_RATIO_REQUESTS: u64 = 10_000;

impl AbuseRule {
    /// Whether the rule needs admitted checks too (not only denials).
    pub fn needs_allowed(&self) -> bool {
        matches!(self.kind, AbuseRuleKind::DenialRatio { .. })
    }

    /// Checks the rule's numbers; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        if self.name.is_empty() || self.name.len() > 64 {
            return bad("name", "must be 1 to 64 characters");
        }
        if self.suspend_for_ms == 0 || self.suspend_for_ms > MAX_SUSPEND_MS {
            return bad(
                "suspend_for_ms",
                "must be between 1 and 2592000000 (30 days)",
            );
        }
        match &self.kind {
            AbuseRuleKind::Violations { max, window_ms } => {
                if *max == 0 || *max > MAX_COUNT {
                    return bad("max", "must be between 1 and 100000");
                }
                if *window_ms == 0 || *window_ms > MAX_WINDOW_MS {
                    return bad("window_ms", "must be between 1 and 86400000 (1 day)");
                }
            }
            AbuseRuleKind::DenialRatio {
                ratio,
                over_requests,
            } => {
                if !(ratio.is_finite() && *ratio > 0.0 && *ratio < 1.0) {
                    return bad("ratio", "must be above 0 and below 1");
                }
                if *over_requests == 0 || *over_requests > MAX_RATIO_REQUESTS {
                    return bad("over_requests", "must be between 1 and 10000");
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.kind {
            AbuseRuleKind::Violations { max, window_ms } => {
                format!("more than {max} violations in {window_ms} ms")
            }
            AbuseRuleKind::DenialRatio {
                ratio,
                over_requests,
            } => format!("denial ratio above {ratio} over {over_requests} requests"),
        }
    }
}

const ABUSE_REASON_PREFIX: &str = "abuse rule '";

/// The reason a suspension by `rule` records (key record, audit, alert):
/// `abuse rule 'NAME': THRESHOLDS`.
pub fn suspension_reason(rule: &AbuseRule) -> String {
    format!("{ABUSE_REASON_PREFIX}{}': {}", rule.name, rule.describe())
}

/// The rule's name in a reason written by [`suspension_reason`] (`None`
/// for any other reason): what a suspended key's caller may be told, as the
/// thresholds are not for callers to learn.
pub fn abuse_rule_of(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix(ABUSE_REASON_PREFIX)?;
    match rest.rsplit_once("': ") {
        Some((name, _)) => Some(name),
        None => rest.strip_suffix('\''),
    }
}

/// Per-key counting state of the abuse rules.
#[derive(Debug, Default)]
struct KeyState {
    /// Times of recent violations, oldest first.
    violations: VecDeque<u64>,
    /// Outcomes of recent checks (true = denied), oldest first.
    recent: VecDeque<bool>,
    last_ms: u64,
    /// Repeated-violations alert: (window index, count).
    alert_window: (u64, u64),
    /// After a trip, checks made before this time are not counted: they
    /// were answered while the suspension was being applied or in force,
    /// so one storm suspends the key once.
    quiet_until_ms: u64,
}

/// Counts violations and decisions per key and says which rule trips.
#[derive(Debug, Default)]
pub struct AbuseDetector {
    keys: HashMap<String, KeyState>,
}

impl AbuseDetector {
    /// Feeds one decision; the rule it trips, if any (the key's state is then reset).
    pub fn observe<'r>(
        &mut self,
        rules: &'r [AbuseRule],
        key_id: &str,
        denied: bool,
        at_ms: u64,
    ) -> Option<&'r AbuseRule> {
        if rules.is_empty() {
            return None;
        }
        let st = self.state(key_id);
        st.last_ms = st.last_ms.max(at_ms);
        if at_ms < st.quiet_until_ms {
            return None;
        }
        let max_window = rules
            .iter()
            .filter_map(|r| match r.kind {
                AbuseRuleKind::Violations { window_ms, .. } => Some(window_ms),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let max_count = rules
            .iter()
            .filter_map(|r| match r.kind {
                AbuseRuleKind::Violations { max, .. } => Some(max + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0) as usize;
        let max_requests = rules
            .iter()
            .filter_map(|r| match r.kind {
                AbuseRuleKind::DenialRatio { over_requests, .. } => Some(over_requests),
                _ => None,
            })
            .max()
            .unwrap_or(0) as usize;
        if denied && max_count > 0 {
            st.violations.push_back(at_ms);
            while st.violations.len() > max_count
                || st
                    .violations
                    .front()
                    .is_some_and(|t| *t + max_window <= st.last_ms)
            {
                st.violations.pop_front();
            }
        }
        if max_requests > 0 {
            st.recent.push_back(denied);
            while st.recent.len() > max_requests {
                st.recent.pop_front();
            }
        }
        let tripped = rules.iter().find(|r| match r.kind {
            AbuseRuleKind::Violations { max, window_ms } => {
                let since = st.last_ms.saturating_sub(window_ms);
                st.violations.iter().filter(|t| **t > since).count() as u64 > max
            }
            AbuseRuleKind::DenialRatio {
                ratio,
                over_requests,
            } => {
                let n = over_requests as usize;
                if st.recent.len() < n {
                    return false;
                }
                let denied = st.recent.iter().rev().take(n).filter(|d| **d).count();
                denied as f64 / n as f64 > ratio
            }
        });
        if let Some(r) = tripped {
            st.violations.clear();
            st.recent.clear();
            st.quiet_until_ms = at_ms.saturating_add(r.suspend_for_ms);
        }
        tripped
    }

    /// Counts a violation for the repeated-violations alert: true when the
    /// key reaches `count` in the current window (once per window).
    fn repeated(&mut self, key_id: &str, at_ms: u64, count: u64, window_ms: u64) -> Option<u64> {
        let st = self.state(key_id);
        st.last_ms = st.last_ms.max(at_ms);
        let w = at_ms / window_ms.max(1);
        if st.alert_window.0 != w {
            st.alert_window = (w, 0);
        }
        st.alert_window.1 += 1;
        (st.alert_window.1 == count).then_some(w)
    }

    /// The key's state (allocating its id only the first time).
    fn state(&mut self, key_id: &str) -> &mut KeyState {
        if !self.keys.contains_key(key_id) {
            self.keys.insert(key_id.to_string(), KeyState::default());
        }
        self.keys
            .get_mut(key_id)
            .expect("the key's state was inserted above")
    }

    /// Forgets keys idle for longer than `idle_ms` before `now_ms`.
    pub fn prune(&mut self, now_ms: u64, idle_ms: u64) {
        self.keys.retain(|_, s| s.last_ms + idle_ms > now_ms);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The worker of the violation pipeline.
#[derive(Debug)]
pub struct ViolationWorker {
    ctx: Arc<Ctx>,
    detector: AbuseDetector,
    last_prune_ms: u64,
}

impl ViolationWorker {
    async fn suspend(&self, rule: &AbuseRule, key_id: &str, now_ms: u64) {
        let until = now_ms.saturating_add(rule.suspend_for_ms);
        let reason = suspension_reason(rule);
        if let Err(e) = self.ctx.host().suspend(key_id, until, &reason).await {
            tracing::warn!(key_id, rule = %rule.name, error = %e, "abuse rule tripped but the key could not be suspended");
            return;
        }
        tracing::warn!(key_id, rule = %rule.name, until_ms = until, "key suspended by abuse detection");
        metrics::counter!("ringlimit_abuse_suspensions_total", "rule" => rule.name.clone())
            .increment(1);
        self.ctx.audit.push(AuditEntry {
            id: self.ctx.new_id(),
            at_ms: now_ms,
            actor: format!("abuse:{}", rule.name),
            action: "key.suspend".into(),
            target_kind: "key".into(),
            target_id: key_id.to_string(),
            reason: Some(reason.clone()),
            details: serde_json::json!({ "suspended_until_ms": until, "rule": rule }),
        });
        self.ctx.alerts.push(AlertEvent::new(
            "key_suspended",
            "critical",
            Some(key_id),
            format!("key {key_id} suspended until {until} (ms since epoch): {reason}"),
            serde_json::json!({ "suspended_until_ms": until, "rule": rule.name }),
            &[key_id, &until.to_string()],
            now_ms,
        ));
    }
}

#[async_trait]
impl Worker for ViolationWorker {
    const KIND: Kind = Kind::Violations;

    fn new(ctx: Arc<Ctx>) -> Self {
        ViolationWorker {
            ctx,
            detector: AbuseDetector::default(),
            last_prune_ms: 0,
        }
    }

    async fn round(&mut self, now_ms: u64) -> Result<bool, StoreError> {
        let max = self.ctx.config.batch_max;
        let audit = self.ctx.audit.begin(max);
        if !audit.is_empty() {
            self.ctx.store.append_audit(&audit).await?;
            self.ctx.audit.commit();
        }
        if now_ms > self.last_prune_ms + 60_000 {
            self.detector.prune(now_ms, MAX_WINDOW_MS);
            self.last_prune_ms = now_ms;
        }
        let (base, batch) = self.ctx.decisions.begin_numbered(max);
        if batch.is_empty() {
            return Ok(!self.ctx.audit.is_idle());
        }
        let violations: Vec<Violation> = batch
            .iter()
            .zip(base..)
            .filter_map(|(d, seq)| match d {
                Decision::Denied(d) => Some(self.ctx.violation(d, seq)),
                Decision::Allowed { .. } => None,
            })
            .collect();
        self.ctx.store.write_violations(&violations).await?;
        self.ctx.decisions.commit();
        let rules = self.ctx.rules.read().clone();
        let repeated = self.ctx.config.alerts.repeated_violations;
        let mut trips = Vec::new();
        for d in batch.iter() {
            let (key_id, denied, at) = match d {
                Decision::Denied(d) => (d.key_id.as_str(), true, d.at_ms),
                Decision::Allowed { key_id, at_ms } => (key_id.as_str(), false, *at_ms),
            };
            if let Some(r) = self.detector.observe(&rules, key_id, denied, at) {
                trips.push((r.clone(), key_id.to_string()));
            }
            if let (true, Some((count, window_ms))) = (denied, repeated)
                && let Some(w) = self.detector.repeated(key_id, at, count, window_ms)
            {
                self.ctx.alerts.push(AlertEvent::new(
                    "repeated_violations",
                    "warning",
                    Some(key_id),
                    format!("key {key_id} was denied {count} times within {window_ms} ms"),
                    serde_json::json!({ "count": count, "window_ms": window_ms }),
                    &[key_id, &window_ms.to_string(), &w.to_string()],
                    at,
                ));
            }
        }
        for (rule, key_id) in trips {
            self.suspend(&rule, &key_id, now_ms).await;
        }
        Ok(!self.ctx.decisions.is_idle() || !self.ctx.audit.is_idle())
    }

    fn idle(&self) -> bool {
        self.ctx.decisions.is_idle() && self.ctx.audit.is_idle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: AbuseRuleKind) -> AbuseRule {
        AbuseRule {
            name: "r".into(),
            kind,
            suspend_for_ms: 1_000,
        }
    }

    #[test]
    fn violations_rule_trips_on_more_than_max_within_window() {
        let rules = [rule(AbuseRuleKind::Violations {
            max: 3,
            window_ms: 1_000,
        })];
        let mut d = AbuseDetector::default();
        // Three within the window: not more than max.
        for t in [0, 100, 200] {
            assert!(d.observe(&rules, "k", true, t).is_none());
        }
        // Spread out: the old ones leave the window.
        assert!(d.observe(&rules, "k", true, 1_150).is_none());
        assert!(d.observe(&rules, "k", true, 1_160).is_none());
        assert!(d.observe(&rules, "k", true, 1_170).is_some());
        // Reset after tripping, and quiet while the suspension lasts: the
        // denials answered before it took effect do not trip it again.
        for t in 1_180..1_190 {
            assert!(d.observe(&rules, "k", true, t).is_none());
        }
        // Once it has ended, the key is counted afresh.
        for t in [2_170, 2_180, 2_190] {
            assert!(d.observe(&rules, "k", true, t).is_none());
        }
        assert!(d.observe(&rules, "k", true, 2_200).is_some());
        // Other keys are separate; admitted checks do not count.
        assert!(d.observe(&rules, "other", false, 1_180).is_none());
    }

    #[test]
    fn ratio_rule_needs_enough_requests() {
        let rules = [rule(AbuseRuleKind::DenialRatio {
            ratio: 0.5,
            over_requests: 4,
        })];
        let mut d = AbuseDetector::default();
        assert!(d.observe(&rules, "k", true, 0).is_none());
        assert!(d.observe(&rules, "k", true, 1).is_none());
        assert!(d.observe(&rules, "k", true, 2).is_none());
        // 4 requests, 3 denied + 1 allowed = 0.75 > 0.5
        assert!(d.observe(&rules, "k", false, 3).is_some());
        // After the suspension: 2 of 4 is not above 0.5.
        for (i, den) in [true, false, true, false].into_iter().enumerate() {
            assert!(d.observe(&rules, "k", den, 1_010 + i as u64).is_none());
        }
    }

    #[test]
    fn rules_are_validated() {
        let mut r = rule(AbuseRuleKind::Violations {
            max: 0,
            window_ms: 10,
        });
        assert_eq!(r.validate().unwrap_err().0, "max");
        r.kind = AbuseRuleKind::DenialRatio {
            ratio: 1.5,
            over_requests: 10,
        };
        assert_eq!(r.validate().unwrap_err().0, "ratio");
        r.kind = AbuseRuleKind::DenialRatio {
            ratio: 0.5,
            over_requests: 10,
        };
        r.suspend_for_ms = 0;
        assert_eq!(r.validate().unwrap_err().0, "suspend_for_ms");
        r.suspend_for_ms = 10;
        assert!(r.validate().is_ok());
    }

    #[test]
    fn repeated_alert_fires_once_per_window() {
        let mut d = AbuseDetector::default();
        let fired: Vec<_> = (0..10)
            .filter_map(|i| d.repeated("k", i * 10, 3, 1_000))
            .collect();
        assert_eq!(fired, vec![0]);
        assert_eq!(d.repeated("k", 1_000, 1, 1_000), Some(1));
    }
}
