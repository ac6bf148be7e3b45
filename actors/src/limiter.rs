//! KeyLimiter actors: one per active key, activated on first use and
//! passivated when idle or when the node's cap on active actors is reached.
//!
//! # Lifecycle
//! - **Activation** ([`KeyLimiters::actor_for`]): under the registry's shard
//!   lock for the key, take the key's cell from the write-behind's pending
//!   map if it is still unwritten, or make an empty one that the actor's
//!   `pre_start` fills from the stored snapshot. The actor is spawned
//!   "instantly" (messages queue until `pre_start` is done) and linked to the
//!   [`KeyLimiterSupervisor`].
//! - **Check**: the actor locks its cell, re-resolves its limits if the
//!   catalog epoch moved, checks all limits all-or-nothing, counts usage and
//!   marks the cell changed.
//! - **Passivation**: the sweeper sends `Passivate`; the actor handles it
//!   after every message queued before it, removes itself from the registry
//!   and stops. Its unwritten state stays in the pending map, where the next
//!   activation finds it, so passivation loses no count. Messages queued
//!   behind `Passivate` fail at the caller, which retries on a new activation.
//! - **Failure**: a KeyLimiter whose handler fails is restarted by the
//!   supervisor on the same cell.
//!
//! Message types are local-only: KeyLimiters are never advertised to peers.

use crate::algo::Micros;
use crate::catalog::LimitsSource;
use crate::cell::{KeyCell, Snapshot};
use crate::limitset::{CheckError, CheckResult};
use crate::writebehind::WriteBehind;
use compact_str::CompactString;
use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use ringlimit_protocol::admin::LimitUsage;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Metric names of the limiter.
pub mod metric {
    pub const ACTIVE: &str = "ringlimit_active_key_limiters";
    pub const ACTIVATIONS: &str = "ringlimit_key_limiter_activations_total";
    pub const PASSIVATIONS: &str = "ringlimit_key_limiter_passivations_total";
    pub const RESTARTS: &str = "ringlimit_key_limiter_restarts_total";
    pub const LOAD_FAILURES: &str = "ringlimit_snapshot_load_failures_total";
}

pub use crate::clock::{Clock, SystemClock};

/// Most active KeyLimiters by default. An active KeyLimiter costs about
/// 13 to 18 KiB (its actor's task and mailboxes, its cell, the store's
/// cache; `cargo bench -p ringlimit-node --bench memory`), so 50 000 of
/// them take under 1 GiB beside the key cache; beyond the cap the least
/// recently used are passivated (written behind, and loaded again when
/// their key is next checked).
pub const DEFAULT_MAX_ACTIVE: usize = 50_000;

/// Tuning of the KeyLimiters.
#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// A KeyLimiter unused this long is passivated.
    pub idle_timeout: Duration,
    /// Most active KeyLimiters; beyond it the least recently used are passivated.
    pub max_active: usize,
    /// How often the sweeper looks for idle actors.
    pub sweep_interval: Duration,
    /// This process's name in usage rows (node name and boot instant); its
    /// writers are this name and a number.
    pub writer: String,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            idle_timeout: Duration::from_secs(300),
            max_active: DEFAULT_MAX_ACTIVE,
            sweep_interval: Duration::from_secs(1),
            writer: "local".into(),
        }
    }
}

/// Messages of a KeyLimiter (local only).
#[derive(Debug)]
pub enum KeyMsg {
    Check {
        cost: u64,
        now_us: Micros,
        reply: RpcReplyPort<Result<CheckResult, CheckError>>,
    },
    Peek {
        now_us: Micros,
        reply: RpcReplyPort<Vec<LimitUsage>>,
    },
    Passivate,
    /// Makes the handler fail; used to exercise supervision.
    #[doc(hidden)]
    Fail,
}

// Local-only: never serialised, never advertised to peers (see the crate docs).
impl ractor::Message for KeyMsg {}

/// Messages of the KeyLimiter supervisor (local only; it only handles supervision events).
#[derive(Debug)]
pub enum SupervisorMsg {}

impl ractor::Message for SupervisorMsg {}

#[derive(Debug, Clone)]
struct Entry {
    actor: ActorRef<KeyMsg>,
    cell: Arc<KeyCell>,
    passivating: Arc<AtomicBool>,
}

/// State shared by the registry, its actors and the supervisor (opaque).
#[derive(Debug)]
pub struct Shared {
    source: Arc<LimitsSource>,
    writebehind: Arc<WriteBehind>,
    entries: DashMap<CompactString, Entry, crate::HotHasher>,
    by_actor: DashMap<ActorId, String>,
    config: LimiterConfig,
    supervisor: OnceLock<ActorCell>,
    evict: Notify,
    activations: AtomicU64,
    passivations: AtomicU64,
    restarts: AtomicU64,
    /// Numbers this process's usage writers (see [`crate::cell::UsageCounters::resume`]).
    writers: AtomicU64,
}

/// The KeyLimiter actor.
#[derive(Debug)]
pub struct KeyLimiter;

/// Arguments and state of a KeyLimiter.
#[derive(Debug)]
pub struct KeyLimiterState {
    cell: Arc<KeyCell>,
    shared: Arc<Shared>,
}

impl Actor for KeyLimiter {
    type Msg = KeyMsg;
    type State = KeyLimiterState;
    type Arguments = KeyLimiterState;

    async fn pre_start(
        &self,
        _me: ActorRef<KeyMsg>,
        st: KeyLimiterState,
    ) -> Result<KeyLimiterState, ActorProcessingErr> {
        st.ensure_loaded(3).await;
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<KeyMsg>,
        msg: KeyMsg,
        st: &mut KeyLimiterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            KeyMsg::Check {
                cost,
                now_us,
                reply,
            } => {
                // A key whose state could not be read at activation tries
                // again, once per check, and is never checked fresh.
                let r = if st.ensure_loaded(1).await {
                    st.check(cost, now_us)
                } else {
                    Err(CheckError::StateUnavailable)
                };
                let _ = reply.send(r);
            }
            KeyMsg::Peek { now_us, reply } => {
                st.ensure_loaded(1).await;
                let mut g = st.cell.lock();
                st.refresh_limits(&mut g);
                let _ = reply.send(g.snap.limits.peek(now_us));
            }
            KeyMsg::Passivate => {
                let key = &st.cell.key_id;
                if st.cell.in_pending.load(Ordering::Acquire) && st.shared.writebehind.saturated() {
                    // The sink is behind: keep the state in an actor rather than pile it up.
                    if let Some(e) = st.shared.entries.get(key.as_str()) {
                        e.passivating.store(false, Ordering::Release);
                    }
                    return Ok(());
                }
                // Checks that lock the cell directly stop here: any that got
                // the lock first has finished, any later one goes through a
                // new activation, which takes this cell over.
                st.cell.lock().retired = true;
                st.shared
                    .entries
                    .remove_if(key.as_str(), |_, e| e.actor.get_id() == me.get_id());
                st.shared.passivations.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(metric::PASSIVATIONS).increment(1);
                me.stop(Some("passivated".into()));
            }
            KeyMsg::Fail => return Err(From::from("induced failure")),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        me: ActorRef<KeyMsg>,
        st: &mut KeyLimiterState,
    ) -> Result<(), ActorProcessingErr> {
        st.shared.by_actor.remove(&me.get_id());
        Ok(())
    }
}

/// What a snapshot load found.
enum Loaded {
    /// The stored state (`None`: the key has none yet, it starts full).
    State(Option<Snapshot>),
    /// The store could not be read: the state is unknown.
    Unreadable,
}

async fn load_with_retry(wb: &WriteBehind, key_id: &str, attempts: u32) -> Loaded {
    for attempt in 0..attempts {
        match wb.load(key_id).await {
            Ok(Some(bytes)) => match Snapshot::decode(&bytes) {
                Ok(s) => return Loaded::State(Some(s)),
                Err(e) => {
                    // Bytes no version can read will never load: the key
                    // starts fresh (logged and counted) rather than never.
                    tracing::error!(key_id, error = %e, "undecodable snapshot; starting the key fresh");
                    metrics::counter!(metric::LOAD_FAILURES).increment(1);
                    return Loaded::State(None);
                }
            },
            Ok(None) => return Loaded::State(None),
            Err(e) => {
                tracing::warn!(key_id, attempt, error = %e, "snapshot load failed");
                if attempt + 1 < attempts {
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
            }
        }
    }
    tracing::error!(
        key_id,
        "snapshot store unreachable; the key's checks answer 503 until its state can be read"
    );
    metrics::counter!(metric::LOAD_FAILURES).increment(1);
    Loaded::Unreadable
}

impl KeyLimiterState {
    /// Loads the cell's stored state if it is not loaded yet; whether it is
    /// loaded now. A cell whose state could not be read stays unloaded: no
    /// check changes it (direct checks skip unloaded cells, the actor
    /// answers [`CheckError::StateUnavailable`]), so the write-behind never
    /// writes it over the state it could not read.
    async fn ensure_loaded(&self, attempts: u32) -> bool {
        if self.cell.lock().loaded {
            return true;
        }
        let stored = load_with_retry(&self.shared.writebehind, &self.cell.key_id, attempts).await;
        let mut g = self.cell.lock();
        if g.loaded {
            return true;
        }
        match stored {
            Loaded::State(snap) => {
                if let Some(snap) = snap {
                    g.snap = snap;
                }
                let shared = &self.shared;
                g.snap.usage.resume(&shared.config.writer, || {
                    shared.writers.fetch_add(1, Ordering::Relaxed)
                });
                g.loaded = true;
                true
            }
            Loaded::Unreadable => false,
        }
    }

    fn refresh_limits(&self, g: &mut crate::cell::CellInner) {
        refresh_limits(&self.shared, &self.cell.key_id, g);
    }

    fn check(&self, cost: u64, now_us: Micros) -> Result<CheckResult, CheckError> {
        let g = self.cell.lock();
        check_locked(&self.shared, &self.cell, g, cost, now_us)
    }
}

/// Re-resolves a key's limits when the catalog changed since they were.
fn refresh_limits(shared: &Shared, key_id: &str, g: &mut crate::cell::CellInner) {
    let epoch = shared.source.catalog.epoch();
    if g.epoch != Some(epoch) {
        let (e, specs) = shared.source.resolve(key_id);
        g.snap.limits.reconcile(&specs);
        g.epoch = Some(e);
    }
}

/// A check on a cell whose lock the caller holds: the algorithm step, the
/// usage count and, when the cell changed, its place in the write-behind.
fn check_locked(
    shared: &Shared,
    cell: &Arc<KeyCell>,
    mut g: parking_lot::MutexGuard<'_, crate::cell::CellInner>,
    cost: u64,
    now_us: Micros,
) -> Result<CheckResult, CheckError> {
    refresh_limits(shared, &cell.key_id, &mut g);
    let r = g.snap.limits.check(now_us, cost);
    let enqueue = match &r {
        Ok(res) if res.allowed => {
            g.snap.usage.add(now_us / 1_000, cost);
            cell.mark_changed(&mut g)
        }
        _ => false,
    };
    drop(g);
    if enqueue {
        shared.writebehind.enqueue(cell);
    }
    cell.touch(now_us);
    r
}

/// Restarts failed KeyLimiters on their cell.
#[derive(Debug)]
pub struct KeyLimiterSupervisor;

impl Actor for KeyLimiterSupervisor {
    type Msg = SupervisorMsg;
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _me: ActorRef<SupervisorMsg>,
        s: Arc<Shared>,
    ) -> Result<Arc<Shared>, ActorProcessingErr> {
        Ok(s)
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        ev: SupervisionEvent,
        shared: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(dead, err) = ev {
            let dead_id = dead.get_id();
            let Some((_, key)) = shared.by_actor.remove(&dead_id) else {
                return Ok(());
            };
            tracing::warn!(key_id = %key, error = %err, "KeyLimiter failed; restarting it on its state");
            if let Some(mut e) = shared.entries.get_mut(key.as_str())
                && e.actor.get_id() == dead_id
            {
                let st = KeyLimiterState {
                    cell: Arc::clone(&e.cell),
                    shared: Arc::clone(shared),
                };
                let (actor, _) = ractor::ActorRuntime::<KeyLimiter>::spawn_linked_instant(
                    None,
                    KeyLimiter,
                    st,
                    me.get_cell(),
                )?;
                shared.by_actor.insert(actor.get_id(), key.clone());
                e.actor = actor;
                shared.restarts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(metric::RESTARTS).increment(1);
            }
        }
        Ok(())
    }
}

/// Errors of the registry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimiterError {
    #[error("the key limiter could not be reached")]
    Unavailable,
}

/// Counters of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterStats {
    pub active: usize,
    pub activations: u64,
    pub passivations: u64,
    pub restarts: u64,
    pub pending_writes: usize,
}

/// The registry of KeyLimiters of one node.
#[derive(Debug, Clone)]
pub struct KeyLimiters {
    shared: Arc<Shared>,
}

impl KeyLimiters {
    /// Starts the supervisor and the passivation sweeper.
    pub async fn start(
        source: Arc<LimitsSource>,
        writebehind: Arc<WriteBehind>,
        config: LimiterConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ractor::SpawnErr> {
        let shared = Arc::new(Shared {
            source,
            writebehind,
            entries: DashMap::default(),
            by_actor: DashMap::new(),
            config,
            supervisor: OnceLock::new(),
            evict: Notify::new(),
            activations: AtomicU64::new(0),
            passivations: AtomicU64::new(0),
            writers: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        });
        let (sup, _) = Actor::spawn(None, KeyLimiterSupervisor, Arc::clone(&shared)).await?;
        let _ = shared.supervisor.set(sup.get_cell());
        let weak = Arc::downgrade(&shared);
        let on_lost = Arc::downgrade(&shared);
        shared.writebehind.on_store_lost(Box::new(move || {
            let Some(s) = on_lost.upgrade() else {
                return;
            };
            for e in s.entries.iter() {
                let cell = &e.cell;
                let mut g = cell.lock();
                // A cell not loaded yet holds nothing to write.
                if !g.loaded || g.retired {
                    continue;
                }
                let enqueue = cell.mark_changed(&mut g);
                drop(g);
                if enqueue {
                    s.writebehind.enqueue(cell);
                }
            }
        }));
        tokio::spawn(async move {
            loop {
                let interval = match weak.upgrade() {
                    Some(s) => s.config.sweep_interval,
                    None => return,
                };
                let notified = match weak.upgrade() {
                    Some(s) => {
                        let s2 = Arc::clone(&s);
                        drop(s);
                        tokio::select! {
                            _ = tokio::time::sleep(interval) => {}
                            _ = s2.evict.notified() => {}
                        }
                        s2
                    }
                    None => return,
                };
                sweep(&notified, clock.now_us() / 1_000).await;
            }
        });
        Ok(KeyLimiters { shared })
    }

    /// The actor of a key, activating it if needed.
    pub fn actor_for(&self, key_id: &str) -> Result<ActorRef<KeyMsg>, LimiterError> {
        if let Some(e) = self.shared.entries.get(key_id) {
            return Ok(e.actor.clone());
        }
        let s = &self.shared;
        let sup = s.supervisor.get().ok_or(LimiterError::Unavailable)?.clone();
        let actor = match s.entries.entry(CompactString::from(key_id)) {
            dashmap::Entry::Occupied(o) => o.get().actor.clone(),
            dashmap::Entry::Vacant(v) => {
                let now_ms = SystemClock.now_us() / 1_000;
                let cell = s
                    .writebehind
                    .pending_cell(key_id)
                    .unwrap_or_else(|| Arc::new(KeyCell::new(key_id.to_string(), now_ms)));
                // A cell a passivated actor left pending: this actor owns it now.
                cell.lock().retired = false;
                cell.touch(now_ms * 1_000);
                let st = KeyLimiterState {
                    cell: Arc::clone(&cell),
                    shared: Arc::clone(s),
                };
                let (actor, _) = ractor::ActorRuntime::<KeyLimiter>::spawn_linked_instant(
                    None, KeyLimiter, st, sup,
                )
                .map_err(|e| {
                    tracing::error!(error = %e, "KeyLimiter spawn failed");
                    LimiterError::Unavailable
                })?;
                s.by_actor.insert(actor.get_id(), key_id.to_string());
                v.insert(Entry {
                    actor: actor.clone(),
                    cell,
                    passivating: Arc::new(AtomicBool::new(false)),
                });
                s.activations.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(metric::ACTIVATIONS).increment(1);
                actor
            }
        };
        if s.entries.len() > s.config.max_active {
            s.evict.notify_one();
        }
        Ok(actor)
    }

    /// Sends one request to the key's actor, re-activating it when the actor
    /// it found has stopped (passivated or failed) in the meantime.
    async fn ask<R: Send + 'static>(
        &self,
        key_id: &str,
        make: impl Fn(RpcReplyPort<R>) -> KeyMsg,
    ) -> Result<R, LimiterError> {
        for attempt in 0..64u32 {
            let actor = self.actor_for(key_id)?;
            match actor.call(&make, None).await {
                Ok(CallResult::Success(r)) => return Ok(r),
                _ => {
                    if attempt >= 8 {
                        // A dead actor no one replaced: drop its entry so the next
                        // activation starts a new actor on the same state.
                        let id = actor.get_id();
                        if matches!(actor.get_status(), ractor::ActorStatus::Stopped) {
                            self.shared
                                .entries
                                .remove_if(key_id, |_, e| e.actor.get_id() == id);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        Err(LimiterError::Unavailable)
    }

    /// Checks `cost` for a key at `now_us`.
    ///
    /// A key whose actor is active and has loaded its state is checked on
    /// the actor's cell directly, under the cell's lock: no message, no task
    /// switch. The actor still owns the cell's life (activation, loading,
    /// passivation, supervision); everything else goes through its mailbox.
    pub async fn check(
        &self,
        key_id: &str,
        cost: u64,
        now_us: Micros,
    ) -> Result<Result<CheckResult, CheckError>, LimiterError> {
        if let Some(r) = self.check_direct(key_id, cost, now_us) {
            return Ok(r);
        }
        self.ask(key_id, |reply| KeyMsg::Check {
            cost,
            now_us,
            reply,
        })
        .await
    }

    /// The check on an active, loaded key's cell; `None` sends the check to
    /// the actor (not active, still loading, or passivating). Public for
    /// tests of the direct path; callers use [`KeyLimiters::check`].
    #[doc(hidden)]
    pub fn check_direct(
        &self,
        key_id: &str,
        cost: u64,
        now_us: Micros,
    ) -> Option<Result<CheckResult, CheckError>> {
        let cell = {
            let e = self.shared.entries.get(key_id)?;
            Arc::clone(&e.cell)
        };
        // The actor may passivate between the look-up and the lock: the
        // cell's `retired` flag, read under the lock, tells.
        self.check_on(&cell, cost, now_us)
    }

    /// Several checks of one key, decided in order under one lock of its
    /// cell: the catalog is consulted, the cell marked changed and queued
    /// for the write-behind, and its use recorded once for all of them.
    /// Each check's result is pushed onto `out`. `false` (nothing pushed,
    /// nothing spent): the key is not active with its state loaded; send
    /// the checks to the actor one by one ([`KeyLimiters::check`]).
    pub fn check_direct_many(
        &self,
        key_id: &str,
        costs: impl IntoIterator<Item = u64>,
        now_us: Micros,
        out: &mut Vec<Result<CheckResult, CheckError>>,
    ) -> bool {
        let cell = {
            let Some(e) = self.shared.entries.get(key_id) else {
                return false;
            };
            Arc::clone(&e.cell)
        };
        let mut g = cell.lock();
        if !g.loaded || g.retired {
            return false;
        }
        refresh_limits(&self.shared, &cell.key_id, &mut g);
        // The units admitted, counted in usage once for all the checks
        // (they fall in the same buckets: one `now`).
        let mut spent = 0u64;
        for cost in costs {
            let r = g.snap.limits.check(now_us, cost);
            if matches!(&r, Ok(res) if res.allowed) {
                spent = spent.saturating_add(cost);
            }
            out.push(r);
        }
        if spent > 0 {
            g.snap.usage.add(now_us / 1_000, spent);
        }
        let enqueue = spent > 0 && cell.mark_changed(&mut g);
        drop(g);
        if enqueue {
            self.shared.writebehind.enqueue(&cell);
        }
        cell.touch(now_us);
        true
    }

    fn check_on(
        &self,
        cell: &Arc<KeyCell>,
        cost: u64,
        now_us: Micros,
    ) -> Option<Result<CheckResult, CheckError>> {
        let g = cell.lock();
        if !g.loaded || g.retired {
            return None;
        }
        Some(check_locked(&self.shared, cell, g, cost, now_us))
    }

    /// The live state of a key's limits.
    pub async fn peek(
        &self,
        key_id: &str,
        now_us: Micros,
    ) -> Result<Vec<LimitUsage>, LimiterError> {
        self.ask(key_id, |reply| KeyMsg::Peek { now_us, reply })
            .await
    }

    /// Whether a key has an active actor.
    pub fn is_active(&self, key_id: &str) -> bool {
        self.shared.entries.contains_key(key_id)
    }

    /// Asks one key's actor to passivate.
    pub fn passivate(&self, key_id: &str) {
        if let Some(e) = self.shared.entries.get(key_id) {
            let _ = e.actor.cast(KeyMsg::Passivate);
        }
    }

    /// Makes a key's actor fail, to exercise supervision.
    #[doc(hidden)]
    pub fn inject_failure(&self, key_id: &str) {
        if let Some(e) = self.shared.entries.get(key_id) {
            let _ = e.actor.cast(KeyMsg::Fail);
        }
    }

    /// The actor id of a key's actor, if active.
    pub fn actor_id(&self, key_id: &str) -> Option<ActorId> {
        self.shared.entries.get(key_id).map(|e| e.actor.get_id())
    }

    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            active: self.shared.entries.len(),
            activations: self.shared.activations.load(Ordering::Relaxed),
            passivations: self.shared.passivations.load(Ordering::Relaxed),
            restarts: self.shared.restarts.load(Ordering::Relaxed),
            pending_writes: self.shared.writebehind.pending_len(),
        }
    }

    /// Passivates every actor and waits (up to `timeout`) until none is active.
    pub async fn passivate_all(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let actors: Vec<_> = self
                .shared
                .entries
                .iter()
                .map(|e| e.actor.clone())
                .collect();
            if actors.is_empty() {
                return true;
            }
            for a in actors {
                let _ = a.cast(KeyMsg::Passivate);
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The keys with an active actor.
    pub fn active_keys(&self) -> Vec<String> {
        self.shared
            .entries
            .iter()
            .map(|e| e.key().to_string())
            .collect()
    }

    /// Passivates the given keys and waits (up to `timeout`) until none of
    /// them is active. Their unwritten state is then in the write-behind.
    pub async fn passivate_keys(&self, keys: &[String], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let live: Vec<_> = keys
                .iter()
                .filter_map(|k| self.shared.entries.get(k.as_str()).map(|e| e.actor.clone()))
                .collect();
            if live.is_empty() {
                return true;
            }
            for a in live {
                let _ = a.cast(KeyMsg::Passivate);
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops the supervisor (after [`Self::passivate_all`]).
    pub fn stop(&self) {
        if let Some(s) = self.shared.supervisor.get() {
            s.stop(None);
        }
    }
}

/// Passivates idle actors, and the least recently used ones above the cap.
/// Entries the sweeper looks at between two yields to the runtime.
const SWEEP_CHUNK: usize = 512;

/// Asks idle actors to passivate, and when more than `max_active` are
/// active, the least recently used ones beyond it.
///
/// It runs on the runtime that answers checks, so it must never hold it
/// for long: it reads a few hundred entries at a time and yields between
/// them, and it copies entries out only when the registry is over its cap
/// (eviction needs them ranked). A full pass over 10 000 keys that cloned
/// every entry held the one worker of a pinned node for milliseconds each
/// second: the checks queued behind it set the p99.
async fn sweep(s: &Shared, now_ms: u64) {
    let idle_ms = s.config.idle_timeout.as_millis() as u64;
    let over_cap = s.entries.len() > s.config.max_active;
    let mut live: Vec<(u64, Entry)> = Vec::new();
    let mut pos = 0;
    loop {
        let mut seen = 0;
        // Entries added or removed meanwhile may be seen twice or missed;
        // the next sweep takes them.
        for e in s.entries.iter().skip(pos).take(SWEEP_CHUNK) {
            seen += 1;
            if e.passivating.load(Ordering::Acquire) {
                continue;
            }
            let last = e.cell.last_used_ms();
            if now_ms.saturating_sub(last) >= idle_ms {
                ask_passivate(e.value());
            } else if over_cap {
                live.push((last, e.value().clone()));
            }
        }
        pos += seen;
        if seen < SWEEP_CHUNK {
            break;
        }
        tokio::task::yield_now().await;
    }
    let over = live.len().saturating_sub(s.config.max_active);
    if over > 0 {
        // Evict a little more than needed so the sweeper does not run per activation.
        let n = (over + s.config.max_active / 20).min(live.len());
        live.select_nth_unstable_by_key(n.saturating_sub(1), |(t, _)| *t);
        for (_, e) in &live[..n] {
            ask_passivate(e);
        }
    }
    metrics::gauge!(metric::ACTIVE).set(s.entries.len() as f64);
}

fn ask_passivate(e: &Entry) {
    if !e.passivating.swap(true, Ordering::AcqRel) {
        let _ = e.actor.cast(KeyMsg::Passivate);
    }
}

#[cfg(test)]
mod tests;
