//! Write-behind of KeyLimiter state, driven by the [`WriteBehindActor`].
//!
//! A KeyLimiter that changes its state puts its [`KeyCell`] in the pending
//! map (once; later changes only bump the cell's version). Every flush
//! interval the [`WriteBehind`] snapshots every pending cell, writes all
//! snapshots to each snapshot sink in one batch (one redb transaction, one
//! Redis pipeline, …) and the usage rows to the usage store, and then drops
//! from the pending map the cells that did not change meanwhile.
//!
//! A flush never holds a cell's lock across I/O, so it never blocks a check.
//! A failed flush leaves everything pending; the next flush retries. The
//! pending map is the only place a passivated key's unwritten state lives,
//! so a new activation of the key takes its cell from here.

use crate::cell::{KeyCell, UsageCell};
use crate::storage::{SnapshotStore, StoreError, UsageRow, UsageStore};
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Tuning of the write-behind.
#[derive(Debug, Clone)]
pub struct WriteBehindConfig {
    pub interval: Duration,
    /// Most cells written in one flush; the rest wait for the next.
    pub max_batch: usize,
    /// Pending cells above which passivation is refused (backpressure while a
    /// sink is down): state is kept in memory instead of being dropped.
    pub max_pending: usize,
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        WriteBehindConfig {
            interval: Duration::from_millis(100),
            max_batch: 50_000,
            max_pending: 1_000_000,
        }
    }
}

/// Counters of the write-behind.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub flushes: AtomicU64,
    pub keys_written: AtomicU64,
    pub failures: AtomicU64,
}

/// Metric names.
pub mod metric {
    pub const PENDING: &str = "ringlimit_writebehind_pending_keys";
    pub const FLUSH_KEYS: &str = "ringlimit_writebehind_flush_keys";
    pub const FLUSH_SECONDS: &str = "ringlimit_writebehind_flush_seconds";
    pub const FLUSH_FAILURES: &str = "ringlimit_writebehind_flush_failures_total";
    pub const SATURATED: &str = "ringlimit_writebehind_backlog_bound_reached_total";
}

/// The write-behind of one node.
pub struct WriteBehind {
    pending: DashMap<String, Arc<KeyCell>>,
    snapshot_sinks: Vec<Arc<dyn SnapshotStore>>,
    usage: Option<Arc<dyn UsageStore>>,
    pub config: WriteBehindConfig,
    pub stats: FlushStats,
    over_bound: std::sync::atomic::AtomicBool,
    /// Told about the usage rows of every successful flush (the billing
    /// pipeline counts admitted units from them, not from each check).
    usage_hook: std::sync::OnceLock<Box<dyn Fn(&[UsageRow]) + Send + Sync>>,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("pending", &self.pending.len())
            .field("config", &self.config)
            .finish()
    }
}

/// What one flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub keys: usize,
    pub usage_rows: usize,
}

impl WriteBehind {
    pub fn new(
        snapshot_sinks: Vec<Arc<dyn SnapshotStore>>,
        usage: Option<Arc<dyn UsageStore>>,
        config: WriteBehindConfig,
    ) -> Self {
        WriteBehind {
            pending: DashMap::new(),
            snapshot_sinks,
            usage,
            config,
            stats: FlushStats::default(),
            over_bound: std::sync::atomic::AtomicBool::new(false),
            usage_hook: std::sync::OnceLock::new(),
        }
    }

    /// Registers the function told about the usage rows of each successful flush.
    pub fn on_usage_written(&self, f: Box<dyn Fn(&[UsageRow]) + Send + Sync>) {
        let _ = self.usage_hook.set(f);
    }

    /// Adds a changed cell (called once per cell until it is written).
    ///
    /// The pending map is bounded by `max_pending` in the sense that matters:
    /// above it, passivation is refused, so state stays in live actors instead
    /// of piling up in the map; nothing admitted is ever dropped. Crossing the
    /// bound is logged once and counted.
    pub fn enqueue(&self, cell: &Arc<KeyCell>) {
        self.pending.insert(cell.key_id.clone(), Arc::clone(cell));
        let len = self.pending.len();
        if len >= self.config.max_pending {
            if !self.over_bound.swap(true, Ordering::Relaxed) {
                metrics::counter!(metric::SATURATED).increment(1);
                tracing::warn!(
                    pending = len,
                    bound = self.config.max_pending,
                    "write-behind backlog reached its bound; passivation paused until it drains"
                );
            }
        } else if len < self.config.max_pending / 2 {
            self.over_bound.store(false, Ordering::Relaxed);
        }
    }

    /// The unwritten cell of a key, if any.
    pub fn pending_cell(&self, key_id: &str) -> Option<Arc<KeyCell>> {
        self.pending.get(key_id).map(|c| Arc::clone(c.value()))
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether the pending map is over its bound.
    pub fn saturated(&self) -> bool {
        self.pending.len() >= self.config.max_pending
    }

    /// Loads the snapshot of a key from the first sink that has one.
    pub async fn load(&self, key_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut last_err = None;
        for s in &self.snapshot_sinks {
            match s.load_snapshot(key_id).await {
                Ok(Some(b)) => return Ok(Some(b)),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Writes every pending cell once.
    pub async fn flush_once(&self) -> Result<FlushReport, StoreError> {
        let cells: Vec<Arc<KeyCell>> = self
            .pending
            .iter()
            .take(self.config.max_batch)
            .map(|e| Arc::clone(e.value()))
            .collect();
        metrics::gauge!(metric::PENDING).set(self.pending.len() as f64);
        if cells.is_empty() {
            return Ok(FlushReport::default());
        }
        let started = std::time::Instant::now();
        let mut snaps = Vec::with_capacity(cells.len());
        let mut written: Vec<(u64, Vec<(String, UsageCell)>)> = Vec::with_capacity(cells.len());
        let mut usage_rows = Vec::new();
        for c in &cells {
            let g = c.lock();
            let rows = g.snap.usage.rows();
            for (writer, (granularity, start, units)) in &rows {
                usage_rows.push(UsageRow {
                    key_id: c.key_id.clone(),
                    granularity: *granularity,
                    bucket_start_ms: *start,
                    writer: writer.clone(),
                    units: *units,
                });
            }
            snaps.push((c.key_id.clone(), g.snap.encode()));
            written.push((g.version, rows));
        }
        let result = self.write(&snaps, &usage_rows).await;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(metric::FLUSH_FAILURES).increment(1);
            return Err(e);
        }
        for (c, (version, rows)) in cells.iter().zip(&written) {
            self.pending.remove_if(&c.key_id, |_, pc| {
                if !Arc::ptr_eq(pc, c) {
                    return false;
                }
                let mut g = c.lock();
                g.snap.usage.written(rows);
                if g.version == *version {
                    c.in_pending.store(false, Ordering::Release);
                    true
                } else {
                    false
                }
            });
        }
        if let Some(hook) = self.usage_hook.get() {
            hook(&usage_rows);
        }
        self.stats
            .keys_written
            .fetch_add(cells.len() as u64, Ordering::Relaxed);
        metrics::histogram!(metric::FLUSH_KEYS).record(cells.len() as f64);
        metrics::histogram!(metric::FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(FlushReport {
            keys: cells.len(),
            usage_rows: usage_rows.len(),
        })
    }

    async fn write(
        &self,
        snaps: &[(String, Vec<u8>)],
        usage_rows: &[UsageRow],
    ) -> Result<(), StoreError> {
        for s in &self.snapshot_sinks {
            s.save_snapshots(snaps).await?;
        }
        if let (Some(u), false) = (&self.usage, usage_rows.is_empty()) {
            u.write_usage(usage_rows).await?;
        }
        Ok(())
    }

    /// Flushes until nothing is pending or `attempts` flushes failed.
    pub async fn drain(&self, attempts: usize) -> Result<(), StoreError> {
        let mut failures = 0;
        while !self.pending.is_empty() {
            match self.flush_once().await {
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    if failures >= attempts {
                        return Err(e);
                    }
                    tokio::time::sleep(self.config.interval).await;
                }
            }
        }
        Ok(())
    }

    /// Starts the [`WriteBehindActor`], which flushes every interval until
    /// `stop` turns true (or its sender is dropped). The handle completes when
    /// the actor has stopped, after any flush in progress.
    pub fn spawn(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let wb = Arc::clone(self);
        tokio::spawn(async move {
            let (actor, handle) = match ractor::Actor::spawn(None, WriteBehindActor, wb).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "write-behind actor failed to start");
                    return;
                }
            };
            let _ = stop.wait_for(|s| *s).await;
            actor.stop(Some("shutdown".into()));
            let _ = handle.await;
        })
    }
}

/// Messages of the [`WriteBehindActor`] (local only).
#[derive(Debug)]
pub enum WriteBehindMsg {
    /// Flush now, then schedule the next tick one interval later.
    Tick,
}

impl ractor::Message for WriteBehindMsg {}

/// The actor that drives the write-behind: one flush per interval. The next
/// tick is scheduled after a flush ends, so a slow sink delays flushes
/// instead of queueing them.
#[derive(Debug)]
pub struct WriteBehindActor;

/// State of the [`WriteBehindActor`].
#[derive(Debug)]
pub struct WriteBehindState {
    wb: Arc<WriteBehind>,
    failing: bool,
}

impl ractor::Actor for WriteBehindActor {
    type Msg = WriteBehindMsg;
    type State = WriteBehindState;
    type Arguments = Arc<WriteBehind>;

    async fn pre_start(
        &self,
        me: ractor::ActorRef<WriteBehindMsg>,
        wb: Arc<WriteBehind>,
    ) -> Result<WriteBehindState, ractor::ActorProcessingErr> {
        me.send_after(wb.config.interval, || WriteBehindMsg::Tick);
        Ok(WriteBehindState { wb, failing: false })
    }

    async fn handle(
        &self,
        me: ractor::ActorRef<WriteBehindMsg>,
        msg: WriteBehindMsg,
        st: &mut WriteBehindState,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            WriteBehindMsg::Tick => {
                match st.wb.flush_once().await {
                    Ok(_) if st.failing => {
                        st.failing = false;
                        tracing::info!(pending = st.wb.pending_len(), "write-behind recovered");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !st.failing {
                            tracing::warn!(error = %e, pending = st.wb.pending_len(), "write-behind flush failed; state stays pending");
                        }
                        st.failing = true;
                    }
                }
                me.send_after(st.wb.config.interval, || WriteBehindMsg::Tick);
            }
        }
        Ok(())
    }
}
