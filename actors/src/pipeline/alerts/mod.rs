//! The alert pipeline: stores alerts, once per condition and period, and
//! delivers them to webhooks.
//!
//! # Once per condition and period
//! An alert's id is derived from its rule, its subject and its period (a
//! limit's window, a billing period, a suspension's end, a backlog episode).
//! The worker skips an id it has seen or that the store already holds.
//!
//! # Delivery
//! Each configured endpoint gets every alert; a key owner's webhook (key
//! metadata `webhook_url`, optional `webhook_secret`) gets the notices about
//! that key's quota (`usage_threshold`, `included_units_threshold`,
//! `overage`). Payloads are either generic JSON (`{"type":"ringlimit.alert",
//! "alert":{…}}`) or Slack-compatible (`{"text":…,"blocks":[…]}`), signed with
//! `X-Ringlimit-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
//! A delivery is retried on a transport error, a timeout or a non-2xx answer,
//! with exponential back-off and jitter, up to `max_attempts`; after the last
//! attempt it becomes a dead letter (listed and re-driven via the admin API).
//! Deliveries run as tasks beside the worker; alerts still `pending` at start
//! (the process died mid-delivery) are delivered again.
//!
//! The HTTP side (signatures, payloads, retries) is in `delivery.rs`.

mod delivery;

pub use delivery::{
    HttpPoster, NoWebhooks, PostError, deliver, hmac_sha256, owner_webhook, render, signature,
};

use super::{Ctx, Kind, Worker, stable_id};
use crate::keys::KeyRecord;
use crate::storage::{Range, StoreError};
use async_trait::async_trait;
use ringlimit_protocol::pipeline::{Alert, DeadLetter, DeliveryState};
use ringlimit_protocol::validate::LimitStatus;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Payload shape of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    Generic,
    Slack,
}

/// A configured webhook endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub name: String,
    pub url: String,
    pub format: WebhookFormat,
    /// HMAC key of the signature header (none: unsigned).
    pub secret: Option<String>,
}

/// Shows the URL's origin only and hides the secret.
impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let WebhookEndpoint {
            name,
            url,
            format,
            secret,
        } = self;
        f.debug_struct("WebhookEndpoint")
            .field("name", name)
            .field("url", &crate::redact::origin(url))
            .field("format", format)
            .field("secret", &crate::redact::secret(secret))
            .finish()
    }
}

/// Retries of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Bound of one attempt.
    pub timeout: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

impl DeliveryPolicy {
    /// Wait before attempt `n + 1` (n ≥ 1): half of the exponential step
    /// plus a random part of the other half ("equal jitter").
    pub fn backoff(&self, n: u32, rand: u64) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let half = step / 2;
        let ms = half.as_millis() as u64;
        half + Duration::from_millis(if ms == 0 { 0 } else { rand % (ms + 1) })
    }
}

/// Alert rules and delivery.
#[derive(Clone)]
pub struct AlertConfig {
    /// Usage of a limit at or above this percentage raises `usage_threshold`
    /// once per key, limit and window (0: off; default 80).
    pub usage_percent: u8,
    /// Usage of a tier's included units at or above this percentage raises
    /// `included_units_threshold` once per key and period (0: off; default 80).
    pub included_percent: u8,
    /// `(count, window_ms)`: a key denied `count` times within a window raises
    /// `repeated_violations` (default 100 in 60 s).
    pub repeated_violations: Option<(u64, u64)>,
    /// Write-behind backlog (keys) above which `writebehind_backlog` is raised,
    /// once per episode (default 100 000).
    pub backlog_bound: Option<usize>,
    pub endpoints: Vec<WebhookEndpoint>,
    /// Signs key owners' notices when their metadata has no `webhook_secret`.
    pub owner_secret: Option<String>,
    pub delivery: DeliveryPolicy,
}

/// Hides `owner_secret` (the endpoints hide their own).
impl std::fmt::Debug for AlertConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AlertConfig {
            usage_percent,
            included_percent,
            repeated_violations,
            backlog_bound,
            endpoints,
            owner_secret,
            delivery,
        } = self;
        f.debug_struct("AlertConfig")
            .field("usage_percent", usage_percent)
            .field("included_percent", included_percent)
            .field("repeated_violations", repeated_violations)
            .field("backlog_bound", backlog_bound)
            .field("endpoints", endpoints)
            .field("owner_secret", &crate::redact::secret(owner_secret))
            .field("delivery", delivery)
            .finish()
    }
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            usage_percent: 80,
            included_percent: 80,
            repeated_violations: Some((100, 60_000)),
            backlog_bound: Some(100_000),
            endpoints: Vec::new(),
            owner_secret: None,
            delivery: DeliveryPolicy::default(),
        }
    }
}

/// An alert on its way to the alert worker.
#[derive(Clone)]
pub struct AlertEvent {
    pub id: String,
    pub kind: &'static str,
    pub severity: &'static str,
    pub key_id: Option<String>,
    pub message: String,
    pub details: serde_json::Value,
    pub at_ms: u64,
    /// The key owner's webhook, for quota notices: (url, secret).
    pub notify_owner: Option<(String, Option<String>)>,
}

impl std::fmt::Debug for AlertEvent {
    /// Every field; of the owner's webhook only the URL's origin and
    /// whether it has a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AlertEvent {
            id,
            kind,
            severity,
            key_id,
            message,
            details,
            at_ms,
            notify_owner,
        } = self;
        let owner = notify_owner
            .as_ref()
            .map(|(url, secret)| (crate::redact::origin(url), crate::redact::secret(secret)));
        f.debug_struct("AlertEvent")
            .field("id", id)
            .field("kind", kind)
            .field("severity", severity)
            .field("key_id", key_id)
            .field("message", message)
            .field("details", details)
            .field("at_ms", at_ms)
            .field("notify_owner", &owner)
            .finish()
    }
}

impl AlertEvent {
    /// An alert whose id is derived from `kind` and `period_parts`.
    pub fn new(
        kind: &'static str,
        severity: &'static str,
        key_id: Option<&str>,
        message: String,
        details: serde_json::Value,
        period_parts: &[&str],
        at_ms: u64,
    ) -> Self {
        let mut parts = vec![kind];
        parts.extend_from_slice(period_parts);
        AlertEvent {
            id: stable_id(&parts),
            kind,
            severity,
            key_id: key_id.map(str::to_owned),
            message,
            details,
            at_ms,
            notify_owner: None,
        }
    }

    /// A key used `pct`% of one of its limits in window number `window`.
    pub fn usage_threshold(
        key: &KeyRecord,
        l: &LimitStatus,
        pct: u64,
        window: u64,
        at_ms: u64,
    ) -> Self {
        let used = l.limit.saturating_sub(l.remaining);
        let mut ev = AlertEvent::new(
            "usage_threshold",
            "warning",
            Some(&key.key_id),
            format!(
                "key {} used {used} of {} units of limit '{}' ({pct}% threshold)",
                key.key_id, l.limit, l.name
            ),
            serde_json::json!({ "limit": l.name, "used": used, "capacity": l.limit, "window_ms": l.window_ms, "percent": pct }),
            &[&key.key_id, &l.name, &window.to_string()],
            at_ms,
        );
        ev.notify_owner = owner_webhook(key);
        ev
    }
}
/// One place an alert goes.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    url: String,
    format: WebhookFormat,
    secret: Option<String>,
}

fn targets(
    ctx: &Ctx,
    ev_owner: Option<&(String, Option<String>)>,
    key_id: Option<&str>,
) -> Vec<Target> {
    let cfg = &ctx.config.alerts;
    let mut t: Vec<Target> = cfg
        .endpoints
        .iter()
        .map(|e| Target {
            name: e.name.clone(),
            url: e.url.clone(),
            format: e.format,
            secret: e.secret.clone(),
        })
        .collect();
    if let (Some((url, secret)), Some(k)) = (ev_owner, key_id) {
        t.push(Target {
            name: format!("key:{k}"),
            url: url.clone(),
            format: WebhookFormat::Generic,
            secret: secret.clone().or_else(|| cfg.owner_secret.clone()),
        });
    }
    t
}

/// The dead letter of `alert` for target `t`, failed now.
fn dead_letter(
    alert: &Alert,
    t: &Target,
    attempts: u32,
    error: String,
    payload: String,
) -> DeadLetter {
    DeadLetter {
        id: stable_id(&["dead-letter", &alert.id, &t.name]),
        alert_id: alert.id.clone(),
        endpoint: t.name.clone(),
        url: t.url.clone(),
        failed_at_ms: crate::clock::wall_ms(),
        attempts,
        error,
        payload,
    }
}

/// Delivers `alert` to every target, then records the outcome (delivery
/// state, attempts, dead letters).
async fn deliver_all(ctx: Arc<Ctx>, mut alert: Alert, targets: Vec<Target>) {
    let policy = ctx.config.alerts.delivery;
    let mut attempts = 0;
    let mut dead = Vec::new();
    for t in &targets {
        let body = match render(&alert, t.format) {
            Ok(b) => b,
            Err(e) => {
                // Never post an empty body: the target gets a dead letter
                // saying why, visible in the admin API.
                metrics::counter!("ringlimit_webhook_deliveries_total", "result" => "dead_lettered")
                    .increment(1);
                tracing::error!(alert_id = %alert.id, endpoint = %t.name, error = %e, "cannot render the webhook payload; dead-lettered");
                dead.push(dead_letter(
                    &alert,
                    t,
                    0,
                    format!("cannot render the payload: {e}"),
                    String::new(),
                ));
                continue;
            }
        };
        match deliver(
            &*ctx.poster,
            &policy,
            &t.url,
            t.secret.as_deref(),
            &alert.id,
            &body,
        )
        .await
        {
            Ok(n) => attempts += n,
            Err((n, error)) => {
                attempts += n;
                tracing::warn!(alert_id = %alert.id, endpoint = %t.name, error = %error, "webhook delivery failed; dead-lettered");
                let payload = String::from_utf8_lossy(&body).into_owned();
                dead.push(dead_letter(&alert, t, n, error, payload));
            }
        }
    }
    alert.attempts += attempts;
    alert.last_attempt_at_ms = Some(crate::clock::wall_ms());
    alert.delivery = if dead.is_empty() {
        DeliveryState::Delivered
    } else {
        DeliveryState::DeadLettered
    };
    // The outcome is worth a few retries: the store may be briefly down.
    // The alert's state goes first, so whoever sees a dead letter finds its
    // alert marked dead-lettered (both writes are idempotent).
    for i in 0..5u32 {
        let r: Result<(), StoreError> = async {
            ctx.store.put_alert(&alert).await?;
            for d in &dead {
                ctx.store.put_dead_letter(d).await?;
            }
            Ok(())
        }
        .await;
        match r {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(alert_id = %alert.id, error = %e, "cannot record the delivery outcome; retrying");
                tokio::time::sleep(Duration::from_millis(200 << i)).await;
            }
        }
    }
}

/// The result of re-driving a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redrive {
    Delivered { attempts: u32 },
    Failed { attempts: u32, error: String },
    NotFound,
}

/// Sends a dead letter's payload again (with the delivery policy's retries).
/// Delivered: the letter is removed and its alert marked delivered. Failed:
/// the letter stays, with the new error and attempt count.
pub async fn redrive(ctx: &Ctx, id: &str) -> Result<Redrive, StoreError> {
    let Some(mut letter) = ctx.store.get_dead_letter(id).await? else {
        return Ok(Redrive::NotFound);
    };
    if letter.payload.is_empty() {
        // Its payload could not be rendered: there is nothing to send.
        return Ok(Redrive::Failed {
            attempts: 0,
            error: letter.error,
        });
    }
    let cfg = &ctx.config.alerts;
    let secret = match letter.endpoint.strip_prefix("key:") {
        Some(key_id) => ctx
            .host()
            .key(key_id)
            .and_then(|k| owner_webhook(&k))
            .and_then(|(_, s)| s)
            .or_else(|| cfg.owner_secret.clone()),
        None => cfg
            .endpoints
            .iter()
            .find(|e| e.name == letter.endpoint)
            .and_then(|e| e.secret.clone()),
    };
    let body = letter.payload.clone().into_bytes();
    let r = deliver(
        &*ctx.poster,
        &cfg.delivery,
        &letter.url,
        secret.as_deref(),
        &letter.alert_id,
        &body,
    )
    .await;
    match r {
        Ok(n) => {
            ctx.store.delete_dead_letter(id).await?;
            if let Some(mut a) = ctx.store.get_alert(&letter.alert_id).await? {
                a.attempts += n;
                a.last_attempt_at_ms = Some(crate::clock::wall_ms());
                a.delivery = DeliveryState::Delivered;
                ctx.store.put_alert(&a).await?;
            }
            Ok(Redrive::Delivered { attempts: n })
        }
        Err((n, error)) => {
            letter.attempts += n;
            letter.error = error.clone();
            letter.failed_at_ms = crate::clock::wall_ms();
            ctx.store.put_dead_letter(&letter).await?;
            Ok(Redrive::Failed { attempts: n, error })
        }
    }
}

/// The worker of the alert pipeline.
#[derive(Debug)]
pub struct AlertWorker {
    ctx: Arc<Ctx>,
    seen: HashSet<String>,
    backlog_since: Option<u64>,
}

impl AlertWorker {
    fn spawn_delivery(&self, alert: Alert, targets: Vec<Target>) {
        self.ctx
            .spawn_delivery(deliver_all(Arc::clone(&self.ctx), alert, targets));
    }

    /// Alerts left `pending` by a previous process are delivered again.
    async fn resume_pending(&mut self, now_ms: u64) -> Result<(), StoreError> {
        let range = Range {
            from_ms: now_ms.saturating_sub(86_400_000),
            to_ms: now_ms.saturating_add(1),
            offset: 0,
            limit: 1_000,
        };
        for a in self.ctx.store.list_alerts(None, range).await? {
            self.seen.insert(a.id.clone());
            if a.delivery == DeliveryState::Pending {
                let owner = a
                    .key_id
                    .as_deref()
                    .and_then(|k| self.ctx.host().key(k))
                    .filter(|_| is_quota_notice(&a.kind))
                    .and_then(|k| owner_webhook(&k));
                let t = targets(&self.ctx, owner.as_ref(), a.key_id.as_deref());
                self.spawn_delivery(a, t);
            }
        }
        Ok(())
    }

    fn check_backlog(&mut self, now_ms: u64) {
        let Some(bound) = self.ctx.config.alerts.backlog_bound else {
            return;
        };
        let host = self.ctx.host();
        let pending = host.writebehind_pending();
        match self.backlog_since {
            None if pending > bound => {
                self.backlog_since = Some(now_ms);
                self.ctx.alerts.push(AlertEvent::new(
                    "writebehind_backlog",
                    "critical",
                    None,
                    format!("write-behind backlog of {pending} keys is above the bound of {bound}: the snapshot store may be down or slow"),
                    serde_json::json!({ "pending_keys": pending, "bound": bound }),
                    &[&self.ctx.config.node, &now_ms.to_string()],
                    now_ms,
                ));
            }
            Some(_) if pending <= bound / 2 => self.backlog_since = None,
            _ => {}
        }
    }
}

fn is_quota_notice(kind: &str) -> bool {
    matches!(
        kind,
        "usage_threshold" | "included_units_threshold" | "overage"
    )
}

#[async_trait]
impl Worker for AlertWorker {
    const KIND: Kind = Kind::Alerts;

    fn new(ctx: Arc<Ctx>) -> Self {
        AlertWorker {
            ctx,
            seen: HashSet::new(),
            backlog_since: None,
        }
    }

    async fn round(&mut self, now_ms: u64) -> Result<bool, StoreError> {
        if !self.ctx.resumed.load(std::sync::atomic::Ordering::Acquire) {
            self.resume_pending(now_ms).await?;
            self.ctx
                .resumed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.check_backlog(now_ms);
        let batch = self.ctx.alerts.begin(self.ctx.config.batch_max);
        if batch.is_empty() {
            return Ok(false);
        }
        for ev in batch.iter() {
            if self.seen.contains(&ev.id) || self.ctx.store.get_alert(&ev.id).await?.is_some() {
                self.seen.insert(ev.id.clone());
                continue;
            }
            let t = targets(&self.ctx, ev.notify_owner.as_ref(), ev.key_id.as_deref());
            let alert = Alert {
                id: ev.id.clone(),
                raised_at_ms: ev.at_ms,
                key_id: ev.key_id.clone(),
                kind: ev.kind.to_string(),
                severity: ev.severity.to_string(),
                message: ev.message.clone(),
                details: ev.details.clone(),
                delivery: if t.is_empty() {
                    DeliveryState::Stored
                } else {
                    DeliveryState::Pending
                },
                attempts: 0,
                last_attempt_at_ms: None,
            };
            self.ctx.store.put_alert(&alert).await?;
            self.seen.insert(ev.id.clone());
            metrics::counter!("ringlimit_alerts_raised_total", "kind" => ev.kind).increment(1);
            tracing::info!(alert_id = %alert.id, kind = ev.kind, key_id = ?ev.key_id, "alert raised");
            if !t.is_empty() {
                self.spawn_delivery(alert, t);
            }
        }
        self.ctx.alerts.commit();
        if self.seen.len() > 100_000 {
            self.seen.clear();
        }
        Ok(!self.ctx.alerts.is_idle())
    }

    fn idle(&self) -> bool {
        self.ctx.alerts.is_idle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_owners_webhook_path_and_secret() {
        let mut e = AlertEvent::new(
            "quota_warning",
            "warning",
            Some("k"),
            "80% used".into(),
            serde_json::json!({}),
            &["k"],
            0,
        );
        e.notify_owner = Some((
            "https://hooks.example.com/T0/path-token?k=query-token".into(),
            Some("owner-signing-secret".into()),
        ));
        let out = format!("{e:?} {e:#?}");
        for hidden in ["path-token", "query-token", "owner-signing-secret"] {
            assert!(!out.contains(hidden), "{hidden} shown: {out}");
        }
        assert!(out.contains("https://hooks.example.com"), "{out}");
        assert!(out.contains("80% used"), "{out}");
    }
}
