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

pub mod alerts;
pub mod billing;
pub mod queue;
pub mod short;
pub mod violations;

use crate::keys::KeyRecord;
use crate::limitset::CheckResult;
use crate::storage::{Store, StoreError};
use async_trait::async_trait;
use parking_lot::Mutex;
use queue::EventQueue;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ringlimit_protocol::pipeline::{AuditEntry, Violation};
use sha2::{Digest, Sha256};
use short::ShortStr;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub use alerts::{
    AlertConfig, AlertEvent, DeliveryPolicy, HttpPoster, WebhookEndpoint, WebhookFormat,
};
pub use billing::{BillingConfig, Period, Price};
pub use violations::{AbuseRule, AbuseRuleKind};

/// What the pipelines need from the rest of the node.
#[async_trait]
pub trait Host: Send + Sync + 'static {
    /// A key from the cache.
    fn key(&self, key_id: &str) -> Option<Arc<KeyRecord>>;
    /// Every key in the cache.
    fn keys(&self) -> Vec<Arc<KeyRecord>>;
    /// Suspends a key until `until_ms` (abuse detection).
    async fn suspend(&self, key_id: &str, until_ms: u64, reason: &str) -> Result<(), String>;
    /// State not yet written by the write-behind (keys).
    fn writebehind_pending(&self) -> usize;
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
/// [`Violation`].
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

/// Everything the workers share; outlives any one worker actor.
pub struct Ctx {
    pub config: PipelineConfig,
    pub store: Arc<dyn Store>,
    host: Mutex<Option<Weak<dyn Host>>>,
    pub decisions: EventQueue<Decision>,
    pub admits: EventQueue<Admit>,
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
    pub fn host(&self) -> Option<Arc<dyn Host>> {
        self.host.lock().as_ref().and_then(Weak::upgrade)
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

const VIOLATION_ID_SPACE: u64 = 0x5649_4f4c_4154_494f;

/// Unique ids, cheap enough for the hot path: a per-process random prefix
/// (64 bits, so processes do not collide) and a counter; 32 hex characters.
struct IdGen {
    prefix: u64,
    next: AtomicU64,
}

impl IdGen {
    fn next(&self) -> String {
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
    fn format_violation(&self, n: u64) -> String {
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
    pub async fn start(
        config: PipelineConfig,
        store: Arc<dyn Store>,
        poster: Arc<dyn HttpPoster>,
        seed: [u8; 16],
    ) -> Result<Self, ActorProcessingErr> {
        let cap = config.queue_capacity;
        let ctx = Arc::new(Ctx {
            rules: parking_lot::RwLock::new(config.abuse.clone()),
            ratio_rules: AtomicBool::new(config.abuse.iter().any(AbuseRule::needs_allowed)),
            config,
            store,
            host: Mutex::new(None),
            decisions: EventQueue::new("violations", cap),
            admits: EventQueue::new("billing", cap),
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

    /// Tells the pipelines about the node (after the service exists).
    pub fn set_host(&self, host: Weak<dyn Host>) {
        *self.ctx.host.lock() = Some(host);
    }

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
            (self.ctx.admits.name(), self.ctx.admits.stats()),
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

// ------------------------------------------------------------ the actors

/// Messages of a worker actor.
#[derive(Debug)]
pub enum WorkerMsg {
    /// Look at the queue (self-scheduled every `tick`).
    Tick,
    /// Process until the queue is empty or the deadline; answers whether it is empty.
    Drain(Instant, RpcReplyPort<bool>),
}
impl ractor::Message for WorkerMsg {}

/// One pipeline's logic, run by a [`WorkerActor`].
#[async_trait]
pub trait Worker: Send + Sync + Sized + 'static {
    const KIND: Kind;
    fn new(ctx: Arc<Ctx>) -> Self;
    /// One round: process one batch from the queue and any periodic work.
    /// `Ok(true)` when more is waiting.
    async fn round(&mut self, now_ms: u64) -> Result<bool, StoreError>;
    /// Whether the queue (and in-flight batch) is empty.
    fn idle(&self) -> bool;
}

/// State of a worker actor.
pub struct WorkerState<W> {
    w: W,
    ctx: Arc<Ctx>,
    backoff: Duration,
    next_try: Instant,
}

impl<W> std::fmt::Debug for WorkerState<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerState")
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl<W> std::fmt::Debug for WorkerActor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerActor")
    }
}

/// The actor that runs a [`Worker`].
pub struct WorkerActor<W>(std::marker::PhantomData<fn() -> W>);

impl<W> Default for WorkerActor<W> {
    fn default() -> Self {
        WorkerActor(std::marker::PhantomData)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<W: Worker> WorkerState<W> {
    /// Rounds until nothing is waiting (or a write fails).
    async fn work(&mut self, until: Option<Instant>) -> bool {
        loop {
            if until.is_some_and(|u| Instant::now() >= u) {
                return self.w.idle();
            }
            match self.w.round(now_ms()).await {
                // Let the checks on this runtime thread run between batches.
                Ok(true) => tokio::task::yield_now().await,
                Ok(false) => {
                    self.backoff = Duration::ZERO;
                    return self.w.idle();
                }
                Err(e) => {
                    metrics::counter!(metric::FAILURES, "pipeline" => W::KIND.as_str())
                        .increment(1);
                    self.backoff = (self.backoff * 2)
                        .max(self.ctx.config.tick)
                        .min(self.ctx.config.max_backoff);
                    self.next_try = Instant::now() + self.backoff;
                    tracing::warn!(pipeline = W::KIND.as_str(), error = %e, retry_in_ms = self.backoff.as_millis() as u64, "pipeline store write failed; events kept and retried");
                    return false;
                }
            }
        }
    }
}

impl<W: Worker> Actor for WorkerActor<W> {
    type Msg = WorkerMsg;
    type State = WorkerState<W>;
    type Arguments = Arc<Ctx>;

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        ctx: Arc<Ctx>,
    ) -> Result<WorkerState<W>, ActorProcessingErr> {
        Ok(WorkerState {
            w: W::new(Arc::clone(&ctx)),
            ctx,
            backoff: Duration::ZERO,
            next_try: Instant::now(),
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<WorkerMsg>,
        st: &mut WorkerState<W>,
    ) -> Result<(), ActorProcessingErr> {
        me.send_after(st.ctx.config.tick, || WorkerMsg::Tick);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut WorkerState<W>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Tick => {
                if Instant::now() >= st.next_try {
                    st.work(None).await;
                }
                me.send_after(st.ctx.config.tick, || WorkerMsg::Tick);
            }
            WorkerMsg::Drain(until, reply) => {
                let mut idle = st.work(Some(until)).await;
                while !idle && Instant::now() < until {
                    tokio::time::sleep(st.backoff.max(Duration::from_millis(20))).await;
                    idle = st.work(Some(until)).await;
                }
                let _ = reply.send(idle);
            }
        }
        Ok(())
    }
}

/// Messages of the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Start this pipeline's worker (again).
    Respawn(Kind),
}
impl ractor::Message for SupervisorMsg {}

/// State of the supervisor: the shared context and recent restart times.
#[derive(Debug)]
pub struct SupervisorState {
    ctx: Arc<Ctx>,
    recent: HashMap<Kind, Vec<Instant>>,
}

/// Starts the workers and restarts any that stops or fails.
#[derive(Debug)]
pub struct PipelineSupervisor;

async fn spawn_worker(
    kind: Kind,
    ctx: &Arc<Ctx>,
    sup: ActorCell,
) -> Result<(), ActorProcessingErr> {
    let c = Arc::clone(ctx);
    let actor: ActorRef<WorkerMsg> = match kind {
        Kind::Violations => {
            Actor::spawn_linked(
                None,
                WorkerActor::<violations::ViolationWorker>::default(),
                c,
                sup,
            )
            .await?
            .0
        }
        Kind::Billing => {
            Actor::spawn_linked(
                None,
                WorkerActor::<billing::BillingWorker>::default(),
                c,
                sup,
            )
            .await?
            .0
        }
        Kind::Alerts => {
            Actor::spawn_linked(None, WorkerActor::<alerts::AlertWorker>::default(), c, sup)
                .await?
                .0
        }
    };
    ctx.workers.lock().insert(kind, actor);
    Ok(())
}

/// More restarts than this within `RESTART_WINDOW` delay the next one by
/// `RESTART_BACKOFF`: a worker that fails on every start does not spin.
const RESTART_BURST: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(10);
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

impl Actor for PipelineSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<Ctx>;

    async fn pre_start(
        &self,
        me: ActorRef<SupervisorMsg>,
        ctx: Arc<Ctx>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        for kind in Kind::ALL {
            spawn_worker(kind, &ctx, me.get_cell()).await?;
        }
        Ok(SupervisorState {
            ctx,
            recent: HashMap::new(),
        })
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        ev: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = &st.ctx;
        let (dead, why) = match &ev {
            SupervisionEvent::ActorTerminated(c, _, reason) => (
                c.get_id(),
                reason.clone().unwrap_or_else(|| "stopped".into()),
            ),
            SupervisionEvent::ActorFailed(c, e) => (c.get_id(), format!("failed: {e}")),
            _ => return Ok(()),
        };
        let kind = ctx
            .workers
            .lock()
            .iter()
            .find(|(_, a)| a.get_id() == dead)
            .map(|(k, _)| *k);
        let Some(kind) = kind else { return Ok(()) };
        if ctx.draining() {
            return Ok(());
        }
        tracing::warn!(pipeline = kind.as_str(), reason = %why, "pipeline actor stopped; restarting it");
        ctx.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::RESTARTS, "pipeline" => kind.as_str()).increment(1);
        let recent = st.recent.entry(kind).or_default();
        recent.retain(|t| t.elapsed() < RESTART_WINDOW);
        recent.push(Instant::now());
        if recent.len() > RESTART_BURST {
            tracing::error!(
                pipeline = kind.as_str(),
                "pipeline actor keeps stopping; restarting it after a pause"
            );
            me.send_after(RESTART_BACKOFF, move || SupervisorMsg::Respawn(kind));
        } else {
            me.send_message(SupervisorMsg::Respawn(kind))?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Respawn(kind) = msg;
        if st.ctx.draining() {
            return Ok(());
        }
        if let Err(e) = spawn_worker(kind, &st.ctx, me.get_cell()).await {
            tracing::error!(pipeline = kind.as_str(), error = %e, "pipeline actor failed to start; retrying");
            me.send_after(RESTART_BACKOFF, move || SupervisorMsg::Respawn(kind));
        }
        Ok(())
    }
}
