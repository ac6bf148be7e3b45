//! The events the hot path hands to the pipelines, and the hand-off: the
//! methods of [`Pipelines`] a check, a write-behind flush or an admin change
//! calls. None of them waits; each pushes onto a bounded queue.

use super::{AlertEvent, Pipelines};
use crate::keys::KeyRecord;
use crate::limitset::CheckResult;
use ringlimit_protocol::pipeline::AuditEntry;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::short::ShortStr;

/// One writer's admitted units of a key in one minute bucket, as the
/// write-behind just wrote them (an absolute value): what billing counts.
#[derive(Debug, Clone)]
pub struct Admit {
    pub key_id: String,
    pub writer: String,
    pub bucket_start_ms: u64,
    pub units: u64,
}

/// A key id as events carry it (key ids are 20 bytes).
pub type KeyId = ShortStr<24>;
/// A limit name as events carry it (at most 64 bytes).
pub type LimitName = ShortStr<{ ringlimit_protocol::limits::MAX_NAME_LEN }>;

/// A denied check as the hot path hands it over: no id string, nothing
/// allocated and no reference into the key cache; the worker builds the
/// [`Violation`](ringlimit_protocol::pipeline::Violation).
#[derive(Debug, Clone)]
pub struct Denial {
    pub key_id: KeyId,
    pub limit_name: LimitName,
    pub at_ms: u64,
    pub client_ip: Option<std::net::IpAddr>,
    pub cost: u64,
}

/// A check, for the violation pipeline.
#[derive(Debug, Clone)]
pub enum Decision {
    Denied(Denial),
    /// An admitted check (sent only while a ratio rule is configured).
    Allowed {
        key_id: KeyId,
        at_ms: u64,
    },
}

const VIOLATION_ID_SPACE: u64 = 0x5649_4f4c_4154_494f;

/// Unique ids, cheap enough for the hot path: a per-process random prefix
/// (64 bits, so processes do not collide) and a counter; 32 hex characters.
pub(super) struct IdGen {
    pub(super) prefix: u64,
    pub(super) next: AtomicU64,
}

impl IdGen {
    pub(super) fn next(&self) -> String {
        self.format(self.seq())
    }

    fn seq(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn format(&self, n: u64) -> String {
        format!("{:016x}{n:016x}", self.prefix)
    }

    /// Violation ids: numbered by the violation queue, in a space of their
    /// own (another prefix) so they never meet the counter's ids.
    pub(super) fn format_violation(&self, n: u64) -> String {
        format!("{:016x}{n:016x}", self.prefix ^ VIOLATION_ID_SPACE)
    }
}

/// A deterministic id: the same parts give the same id (one alert per
/// condition and period; one dead letter per alert and endpoint).
pub fn stable_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

impl Pipelines {
    /// The write-behind wrote these usage rows: the minute buckets go to
    /// billing (one event per key and flush, not one per check).
    pub fn on_usage_written(&self, rows: &[crate::storage::UsageRow]) {
        for r in rows {
            if r.granularity == ringlimit_protocol::admin::Granularity::Minute {
                self.ctx.admits.push(Admit {
                    key_id: r.key_id.clone(),
                    writer: r.writer.clone(),
                    bucket_start_ms: r.bucket_start_ms,
                    units: r.units,
                });
            }
        }
    }

    /// Hot path: an admitted check.
    pub fn on_allowed(&self, key: &Arc<KeyRecord>, result: &CheckResult, _cost: u64, now_ms: u64) {
        let ctx = &self.ctx;
        if ctx.ratio_rules.load(Ordering::Relaxed) {
            ctx.decisions.push(Decision::Allowed {
                key_id: KeyId::new(&key.key_id),
                at_ms: now_ms,
            });
        }
        let pct = u128::from(ctx.config.alerts.usage_percent);
        if pct == 0 {
            return;
        }
        for l in &result.limits {
            let used = l.limit.saturating_sub(l.remaining);
            if l.limit == 0 || u128::from(used) * 100 < pct * u128::from(l.limit) {
                continue;
            }
            // Once per key, limit and window.
            let window = now_ms / l.window_ms.max(1);
            let k = {
                use std::hash::{BuildHasher, Hash, Hasher};
                let mut h = ctx.alert_hasher.build_hasher();
                key.key_id.hash(&mut h);
                l.name.hash(&mut h);
                h.finish()
            };
            if ctx.usage_alerted.get(&k).is_some_and(|w| *w == window) {
                continue;
            }
            ctx.usage_alerted.insert(k, window);
            ctx.alerts.push(AlertEvent::usage_threshold(
                key, l, pct as u64, window, now_ms,
            ));
        }
    }

    /// Hot path: a denied check.
    pub fn on_denied(
        &self,
        key: &Arc<KeyRecord>,
        result: &CheckResult,
        cost: u64,
        client_ip: Option<std::net::IpAddr>,
        now_ms: u64,
    ) {
        let d = Denial {
            key_id: KeyId::new(&key.key_id),
            limit_name: LimitName::new(result.denied_by.as_deref().unwrap_or_default()),
            at_ms: now_ms,
            client_ip,
            cost,
        };
        self.ctx.decisions.push(Decision::Denied(d));
    }

    /// Records an audit entry (written by the violation worker).
    pub fn audit(&self, entry: AuditEntry) {
        self.ctx.audit.push(entry);
    }

    /// Raises an alert (stored and delivered by the alert worker).
    pub fn alert(&self, ev: AlertEvent) {
        self.ctx.alerts.push(ev);
    }
}
