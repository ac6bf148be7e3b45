//! The pipelines fed by the limiter's decisions, each a supervised actor.
//!
//! ```text
//!  validate ──push (never waits)──▶ EventQueue ──▶ worker actor ──▶ store / webhooks
//!                                   (bounded)       ▲
//!                    PipelineSupervisor ── restarts ┘
//! ```
//!
//! - **violations** ([`violations`]): every denied check becomes a
//!   [`Violation`], written in batches; abuse rules run over them and suspend
//!   keys for a while (audit entry + alert).
//! - **billing** ([`billing`]): admitted units per key and period, for the
//!   included-units and overage alerts; closes each period into one billing
//!   record per key, computed from the usage rollups.
//! - **alerts** ([`alerts`]): stores alerts (once per condition and period)
//!   and delivers them to webhooks with retries, back-off, jitter, HMAC
//!   signatures and dead letters.
//!
//! Usage history itself (minute buckets and rollups) is written by the
//! write-behind from the KeyLimiters' cells: see [`crate::writebehind`].
//!
//! Every queue is bounded; see [`queue`] for the delivery guarantee.
//!
//! # Layout
//! - `events`: the events the hot path hands over, and the hand-off itself.
//! - `worker`: the worker actor that runs one pipeline's rounds.
//! - `supervisor`: the [`PipelineSupervisor`], which restarts workers.

pub mod alerts;
pub mod billing;
mod events;
pub mod queue;
pub mod short;
mod supervisor;
pub mod violations;
mod worker;

use crate::keys::KeyRecord;
use crate::storage::{Store, StoreError};
use async_trait::async_trait;
use events::IdGen;
use parking_lot::Mutex;
use queue::EventQueue;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ringlimit_protocol::pipeline::{AuditEntry, Violation};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

pub use alerts::{
    AlertConfig, AlertEvent, DeliveryPolicy, HttpPoster, NoWebhooks, PostError, WebhookEndpoint,
    WebhookFormat,
};
pub use billing::{BillingConfig, Period, Price};
pub use events::{Admit, BillingFeed, Decision, Denial, KeyId, LimitName, NoHost, stable_id};
pub use supervisor::{PipelineSupervisor, SupervisorMsg, SupervisorState};
pub use violations::{AbuseRule, AbuseRuleKind, abuse_rule_of, suspension_reason};
pub use worker::{Worker, WorkerActor, WorkerMsg, WorkerState};

/// What the pipelines need from the rest of the node.
#[async_trait]
pub trait Host: Send + Sync + 'static {
    /// A key from the cache.
    fn key(&self, key_id: &str) -> Option<Arc<KeyRecord>>;
    /// Every key in the cache.
    fn keys(&self) -> Vec<Arc<KeyRecord>>;
    /// Suspends a key until `until_ms` (abuse detection).
    async fn suspend(&self, key_id: &str, until_ms: u64, reason: &str) -> Result<(), HostError>;
    /// State not yet written by the write-behind (keys).
    fn writebehind_pending(&self) -> usize;
    /// Whether admitted usage of granularity `g` in a bucket starting before
    /// `end_ms` is not yet written to the usage store (a billing period
    /// ending at `end_ms` waits for it before it closes).
    fn unwritten_usage_before(
        &self,
        g: ringlimit_protocol::admin::Granularity,
        end_ms: u64,
    ) -> bool;
}

/// Why the host could not do what a pipeline asked of it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostError {
    /// The key (or whatever was named) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The key's state refuses the change (a revoked key, say).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the key limiter is unavailable")]
    Unavailable,
}

/// Tuning of the pipelines.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// This node's name (recorded in violations and billing records).
    pub node: String,
    /// Events each queue holds before dropping (default 100 000).
    pub queue_capacity: usize,
    /// Most events one write takes (default 1 000).
    pub batch_max: usize,
    /// How often a worker looks at its queue (default 500 ms). Each look
    /// that finds events costs a store write and a wake-up of the
    /// pipelines' thread; fewer, fuller rounds disturb the checks less (the
    /// check-path bench measured p99 on/off 1.02–1.04 at 500 ms against
    /// 1.12–1.14 at 100 ms, with one check in ten denied).
    pub tick: Duration,
    /// Longest back-off after a failed store write (default 5 s).
    pub max_backoff: Duration,
    /// Longest wait for the queues to drain at shutdown (default 10 s).
    pub drain_timeout: Duration,
    pub abuse: Vec<AbuseRule>,
    pub billing: BillingConfig,
    pub alerts: AlertConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            node: "node".into(),
            queue_capacity: 100_000,
            batch_max: 1_000,
            tick: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            abuse: Vec::new(),
            billing: BillingConfig::default(),
            alerts: AlertConfig::default(),
        }
    }
}

/// The pipelines of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Violations,
    Billing,
    Alerts,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Violations, Kind::Billing, Kind::Alerts];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Violations => "violations",
            Kind::Billing => "billing",
            Kind::Alerts => "alerts",
        }
    }
}

/// Everything the workers share; outlives any one worker actor.
pub struct Ctx {
    pub config: PipelineConfig,
    pub store: Arc<dyn Store>,
    host: Arc<dyn Host>,
    pub decisions: EventQueue<Decision>,
    pub admits: EventQueue<Admit>,
    /// Admitted units waiting for room in `admits`, coalesced per key,
    /// writer and minute (see [`BillingFeed`]).
    pub(crate) feed: Arc<BillingFeed>,
    pub alerts: EventQueue<AlertEvent>,
    pub audit: EventQueue<AuditEntry>,
    pub poster: Arc<dyn HttpPoster>,
    /// Abuse rules in force (changeable at run time).
    pub rules: parking_lot::RwLock<Vec<AbuseRule>>,
    ratio_rules: AtomicBool,
    /// Hash of (key, limit) → window index of the last usage-threshold alert
    /// pushed (a hash, so the hot path allocates nothing).
    usage_alerted: dashmap::DashMap<u64, u64>,
    alert_hasher: std::collections::hash_map::RandomState,
    ids: IdGen,
    draining: AtomicBool,
    workers: Mutex<HashMap<Kind, ActorRef<WorkerMsg>>>,
    restarts: AtomicU64,
    /// Delivery tasks of webhooks in flight (drained at shutdown).
    deliveries: Mutex<tokio::task::JoinSet<()>>,
    /// Whether the alert worker has re-delivered the alerts a previous
    /// process left pending (once per process, not per worker restart).
    pub(crate) resumed: AtomicBool,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("decisions", &self.decisions)
            .field("admits", &self.admits)
            .field("alerts", &self.alerts)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// Moves coalesced admits into the billing queue, as far as it has room.
    pub(crate) fn refill_admits(&self) {
        let room = self.admits.room();
        if room == 0 {
            return;
        }
        let mut backlog = self.feed.backlog.lock();
        if backlog.len() == 0 {
            return;
        }
        let mut taken = backlog.take(room).into_iter();
        self.admits.refill(taken.by_ref());
        backlog.put_back(taken);
        metrics::gauge!(metric::ADMIT_BACKLOG).set(backlog.len() as f64);
    }

    /// Whether billing has nothing left: no backlog, nothing queued or in flight.
    pub(crate) fn billing_idle(&self) -> bool {
        self.feed.backlog.lock().len() == 0 && self.admits.is_idle()
    }

    /// The node as the pipelines see it.
    pub fn host(&self) -> &Arc<dyn Host> {
        &self.host
    }

    /// A new unique id (node, boot and a counter, hashed): what events carry.
    pub fn new_id(&self) -> String {
        self.ids.next()
    }

    /// The violation a denial becomes; `seq` is its sequence number in the
    /// violation queue (so a batch written again after a crash keeps its ids).
    pub fn violation(&self, d: &Denial, seq: u64) -> Violation {
        Violation {
            id: self.ids.format_violation(seq),
            key_id: d.key_id.as_str().to_owned(),
            limit_name: d.limit_name.as_str().to_owned(),
            node: self.config.node.clone(),
            at_ms: d.at_ms,
            client_ip: d.client_ip.map(|ip| ip.to_string()),
            cost: d.cost,
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Runs a webhook delivery beside the worker; refused once the node drains.
    pub(crate) fn spawn_delivery<F: std::future::Future<Output = ()> + Send + 'static>(
        &self,
        f: F,
    ) {
        let mut set = self.deliveries.lock();
        // Reap finished deliveries, so the set holds only running ones.
        while set.try_join_next().is_some() {}
        set.spawn(f);
    }
}

/// Metric names.
pub mod metric {
    pub use super::queue::metric::*;
}

/// The handle the hot path and the admin API use.
#[derive(Clone)]
pub struct Pipelines {
    pub ctx: Arc<Ctx>,
    supervisor: ActorRef<SupervisorMsg>,
}

impl std::fmt::Debug for Pipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipelines").field("ctx", &self.ctx).finish()
    }
}

impl Pipelines {
    /// Starts the supervisor and its three workers. `seed` must come from a
    /// secure random source (it makes event ids unique across processes).
    /// `host` is the node as the pipelines see it; `feed` is what the
    /// write-behind tells about admitted units (its usage sink).
    pub async fn start(
        config: PipelineConfig,
        store: Arc<dyn Store>,
        poster: Arc<dyn HttpPoster>,
        seed: [u8; 16],
        host: Arc<dyn Host>,
        feed: Arc<BillingFeed>,
    ) -> Result<Self, ActorProcessingErr> {
        let cap = config.queue_capacity;
        let ctx = Arc::new(Ctx {
            rules: parking_lot::RwLock::new(config.abuse.clone()),
            ratio_rules: AtomicBool::new(config.abuse.iter().any(AbuseRule::needs_allowed)),
            config,
            store,
            host,
            decisions: EventQueue::new("violations", cap),
            admits: EventQueue::new("billing", cap),
            feed,
            alerts: EventQueue::new("alerts", cap),
            audit: EventQueue::new("audit", cap),
            poster,
            usage_alerted: dashmap::DashMap::new(),
            alert_hasher: std::collections::hash_map::RandomState::new(),
            ids: IdGen {
                prefix: u64::from_le_bytes(seed[..8].try_into().unwrap_or([0; 8]))
                    ^ u64::from_le_bytes(seed[8..].try_into().unwrap_or([0; 8])),
                next: AtomicU64::new(0),
            },
            draining: AtomicBool::new(false),
            workers: Mutex::new(HashMap::new()),
            restarts: AtomicU64::new(0),
            deliveries: Mutex::new(tokio::task::JoinSet::new()),
            resumed: AtomicBool::new(false),
        });
        let (supervisor, _) = Actor::spawn(None, PipelineSupervisor, Arc::clone(&ctx)).await?;
        Ok(Pipelines { ctx, supervisor })
    }

    /// Replaces the abuse rules (run-time change).
    pub fn set_abuse_rules(&self, rules: Vec<AbuseRule>) {
        self.ctx.ratio_rules.store(
            rules.iter().any(AbuseRule::needs_allowed),
            Ordering::Relaxed,
        );
        *self.ctx.rules.write() = rules;
    }

    pub fn abuse_rules(&self) -> Vec<AbuseRule> {
        self.ctx.rules.read().clone()
    }

    /// The worker actor of one pipeline right now (it changes on restart).
    pub fn worker(&self, kind: Kind) -> Option<ActorRef<WorkerMsg>> {
        self.ctx.workers.lock().get(&kind).cloned()
    }

    /// Worker restarts done by the supervisor so far.
    pub fn restarts(&self) -> u64 {
        self.ctx.restarts.load(Ordering::Relaxed)
    }

    /// Counters of every queue.
    pub fn stats(&self) -> Vec<(&'static str, queue::QueueStats)> {
        vec![
            (self.ctx.decisions.name(), self.ctx.decisions.stats()),
            (self.ctx.admits.name(), {
                // Coalesced rows waiting for room count as queued.
                let mut s = self.ctx.admits.stats();
                s.queued += self.ctx.feed.backlog.lock().len();
                s
            }),
            (self.ctx.alerts.name(), self.ctx.alerts.stats()),
            (self.ctx.audit.name(), self.ctx.audit.stats()),
        ]
    }

    /// Asks one worker to process everything queued now (tests, admin).
    pub async fn flush(&self, kind: Kind) -> bool {
        let Some(w) = self.worker(kind) else {
            return false;
        };
        let deadline = Instant::now() + self.ctx.config.drain_timeout;
        matches!(
            w.call(
                |r| WorkerMsg::Drain(deadline, r),
                Some(self.ctx.config.drain_timeout * 2)
            )
            .await,
            Ok(ractor::rpc::CallResult::Success(true))
        )
    }

    /// Shutdown: stop taking events from checks, let every worker drain its
    /// queue into the store (one shared `drain_timeout`), wait for webhook
    /// deliveries, stop. Queues drain in dependency order: violations (which
    /// write the audit log and raise alerts), billing (alerts), then alerts.
    pub async fn drain(&self) {
        let ctx = &self.ctx;
        ctx.draining.store(true, Ordering::Release);
        ctx.decisions.close();
        ctx.admits.close();
        let deadline = Instant::now() + ctx.config.drain_timeout;
        for kind in [Kind::Violations, Kind::Billing, Kind::Alerts] {
            if kind == Kind::Alerts {
                ctx.audit.close();
            }
            let Some(w) = self.worker(kind) else { continue };
            let left = deadline.saturating_duration_since(Instant::now());
            match w
                .call(
                    |r| WorkerMsg::Drain(deadline, r),
                    Some(left + Duration::from_millis(100)),
                )
                .await
            {
                Ok(ractor::rpc::CallResult::Success(true)) => {}
                _ => tracing::warn!(
                    pipeline = kind.as_str(),
                    "pipeline did not drain before shutdown"
                ),
            }
        }
        ctx.alerts.close();
        let mut set = std::mem::take(&mut *ctx.deliveries.lock());
        let left = deadline.saturating_duration_since(Instant::now());
        let _ =
            tokio::time::timeout(left, async { while set.join_next().await.is_some() {} }).await;
        if !set.is_empty() {
            tracing::warn!(
                deliveries = set.len(),
                "webhook deliveries still running at shutdown are abandoned (their alerts stay pending and are delivered at the next start)"
            );
        }
        set.abort_all();
        for (name, s) in self.stats() {
            if s.queued + s.inflight > 0 {
                tracing::warn!(
                    pipeline = name,
                    queued = s.queued,
                    inflight = s.inflight,
                    "events left undrained at shutdown"
                );
            }
        }
        self.supervisor.stop(None);
    }
}
