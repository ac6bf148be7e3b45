//! The events the hot path hands to the pipelines, and the hand-off: the
//! methods of [`Pipelines`] a check, a write-behind flush or an admin change
//! calls. None of them waits; each pushes onto a bounded queue.

use super::{AlertEvent, Host, HostError, Pipelines, metric};
use crate::keys::KeyRecord;
use crate::limitset::CheckResult;
use crate::writebehind::UsageSink;
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

/// Admitted units not yet in the billing queue: one entry per (minute
/// bucket, key, writer), holding the latest absolute count of that bucket
/// (usage rows are absolute, so a newer row replaces an older one). It grows
/// with the keys admitting while billing is behind, never with the checks,
/// and nothing in it is ever dropped: billing takes from it, oldest minute
/// first, as its queue has room.
#[derive(Debug, Default)]
pub(crate) struct AdmitBacklog {
    rows: std::collections::BTreeMap<(u64, String, String), u64>,
}

impl AdmitBacklog {
    /// Adds a usage row's absolute count.
    pub(crate) fn add(&mut self, key_id: &str, writer: &str, bucket_start_ms: u64, units: u64) {
        let e = self
            .rows
            .entry((bucket_start_ms, key_id.to_owned(), writer.to_owned()))
            .or_insert(0);
        *e = (*e).max(units);
    }

    /// Takes up to `n` entries, oldest minute first.
    pub(crate) fn take(&mut self, n: usize) -> Vec<Admit> {
        let mut out = Vec::with_capacity(n.min(self.rows.len()));
        while out.len() < n {
            let Some(((bucket_start_ms, key_id, writer), units)) = self.rows.pop_first() else {
                break;
            };
            out.push(Admit {
                key_id,
                writer,
                bucket_start_ms,
                units,
            });
        }
        out
    }

    /// Puts back what did not fit (keeping any newer count of the same bucket).
    pub(crate) fn put_back(&mut self, admits: impl IntoIterator<Item = Admit>) {
        for a in admits {
            self.add(&a.key_id, &a.writer, a.bucket_start_ms, a.units);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }
}

/// What the write-behind tells billing: the usage rows of every flush (its
/// [`UsageSink`]). Minute rows go to a coalescing backlog, not straight into
/// the bounded queue, so money is never dropped whatever the load; the
/// billing worker moves them into its queue as it has room.
#[derive(Debug, Default)]
pub struct BillingFeed {
    pub(crate) backlog: parking_lot::Mutex<AdmitBacklog>,
}

impl BillingFeed {
    pub fn new() -> Arc<BillingFeed> {
        Arc::new(BillingFeed::default())
    }

    /// Rows waiting for room in the billing queue.
    pub fn backlog_len(&self) -> usize {
        self.backlog.lock().len()
    }
}

impl UsageSink for BillingFeed {
    fn usage_written(&self, rows: &[crate::storage::UsageRow]) {
        let mut backlog = self.backlog.lock();
        for r in rows {
            if r.granularity == ringlimit_protocol::admin::Granularity::Minute {
                backlog.add(&r.key_id, &r.writer, r.bucket_start_ms, r.units);
            }
        }
        metrics::gauge!(metric::ADMIT_BACKLOG).set(backlog.len() as f64);
    }
}

/// The host of pipelines that run without a node (tests, benches): no keys,
/// nothing pending, and suspensions refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHost;

#[async_trait::async_trait]
impl Host for NoHost {
    fn key(&self, _: &str) -> Option<Arc<KeyRecord>> {
        None
    }

    fn keys(&self) -> Vec<Arc<KeyRecord>> {
        Vec::new()
    }

    async fn suspend(&self, key_id: &str, _: u64, _: &str) -> Result<(), HostError> {
        Err(HostError::NotFound(format!("key {key_id}")))
    }

    fn writebehind_pending(&self) -> usize {
        0
    }

    fn unwritten_usage_before(&self, _: ringlimit_protocol::admin::Granularity, _: u64) -> bool {
        false
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::queue::EventQueue;

    #[test]
    fn the_backlog_coalesces_per_bucket_and_hands_out_oldest_first() {
        let mut b = AdmitBacklog::default();
        b.add("k1", "w", 120_000, 3);
        b.add("k1", "w", 60_000, 5);
        // A newer absolute count of the same bucket replaces the older one;
        // an older one arriving late never lowers it.
        b.add("k1", "w", 60_000, 9);
        b.add("k1", "w", 60_000, 7);
        b.add("k2", "w", 60_000, 1);
        assert_eq!(b.len(), 3);
        let first = b.take(2);
        assert_eq!(
            first
                .iter()
                .map(|a| (a.key_id.as_str(), a.bucket_start_ms, a.units))
                .collect::<Vec<_>>(),
            vec![("k1", 60_000, 9), ("k2", 60_000, 1)]
        );
        b.put_back(first);
        b.add("k1", "w", 60_000, 11);
        assert_eq!(b.len(), 3);
        let all = b.take(10);
        assert_eq!(all[0].units, 11, "put back never hides a newer count");
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn rows_beyond_the_queue_bound_wait_instead_of_dropping() {
        // A billing queue of 4 and 1 000 rows of 100 keys over 10 minutes:
        // every row reaches the consumer, none is dropped.
        let q: EventQueue<Admit> = EventQueue::new("billing", 4);
        let mut b = AdmitBacklog::default();
        for minute in 0..10u64 {
            for k in 0..100 {
                b.add(&format!("k{k}"), "w", minute * 60_000, minute + 1);
            }
        }
        q.close(); // a draining node: refills still go in
        let mut seen = 0u64;
        let mut units = 0u64;
        loop {
            let mut taken = b.take(q.room()).into_iter();
            q.refill(taken.by_ref());
            b.put_back(taken);
            let batch = q.begin(3);
            if batch.is_empty() && b.len() == 0 {
                break;
            }
            seen += batch.len() as u64;
            units += batch.iter().map(|a| a.units).sum::<u64>();
            q.commit();
        }
        assert_eq!(seen, 1_000);
        assert_eq!(units, 100 * (1..=10).sum::<u64>());
        assert_eq!(q.stats().dropped, 0);
    }
}
