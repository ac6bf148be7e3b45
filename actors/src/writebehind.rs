//! Write-behind of KeyLimiter state, driven by the [`WriteBehindActor`].
//!
//! A KeyLimiter that changes its state puts its [`KeyCell`] in the pending
//! map (once; later changes only bump the cell's version). Every flush
//! interval the [`WriteBehind`] snapshots every pending cell, writes the
//! snapshots to each snapshot sink in one batch (one redb transaction, one
//! Redis pipeline, …) and the usage rows to the usage store, and then drops
//! from the pending map the cells that every sink has stored and that did
//! not change meanwhile.
//!
//! A flush never holds a cell's lock across I/O, so it never blocks a check.
//! The sinks progress independently: a cell remembers the version each sink
//! stored, so a sink that is down keeps the cell pending for that sink only,
//! and the others keep taking the new state. When more cells are pending
//! than one flush takes, flushes take them in turn. A cell
//! whose snapshot cannot be encoded is left out of the flush (never written
//! as an empty blob) and stays pending; the error is logged and counted. The
//! pending map is the only place a passivated key's unwritten state lives,
//! so a new activation of the key takes its cell from here.

use crate::cell::{KeyCell, Snapshot, UsageCell};
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
    /// How often the usage rows are written (at the first flush after this
    /// much time, and at every [`WriteBehind::flush_once`]). Snapshots are
    /// written every `interval`; a key's open usage buckets are part of its
    /// snapshot, so a crash between two usage writes loses no usage: the
    /// restarted node writes the buckets it finds in the snapshot. A hot
    /// key's minute, hour and day rows are written once per `usage_interval`
    /// instead of once per flush.
    pub usage_interval: Duration,
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        WriteBehindConfig {
            interval: Duration::from_millis(100),
            max_batch: 50_000,
            max_pending: 1_000_000,
            usage_interval: Duration::from_secs(1),
        }
    }
}

/// Counters of the write-behind.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub flushes: AtomicU64,
    pub keys_written: AtomicU64,
    pub failures: AtomicU64,
    /// Snapshots that could not be encoded (their cells stay pending).
    pub encode_failures: AtomicU64,
}

/// Metric names.
pub mod metric {
    pub const PENDING: &str = "ringlimit_writebehind_pending_keys";
    pub const FLUSH_KEYS: &str = "ringlimit_writebehind_flush_keys";
    pub const FLUSH_SECONDS: &str = "ringlimit_writebehind_flush_seconds";
    pub const FLUSH_FAILURES: &str = "ringlimit_writebehind_flush_failures_total";
    pub const ENCODE_FAILURES: &str = "ringlimit_writebehind_encode_failures_total";
    pub const SATURATED: &str = "ringlimit_writebehind_backlog_bound_reached_total";
    /// Times a snapshot store was found to have lost its contents (a Redis
    /// without persistence restarted or flushed); every active key was
    /// written to it again.
    pub const STORE_LOST: &str = "ringlimit_snapshot_store_lost_total";
}

/// Marks every active key changed, so the next flushes write it again.
pub type RewriteAll = Box<dyn Fn() + Send + Sync>;

/// Told about the usage rows of every successful flush (the billing
/// pipeline counts admitted units from them, not from each check). Given to
/// the write-behind when it is built.
pub trait UsageSink: Send + Sync + 'static {
    fn usage_written(&self, rows: &[UsageRow]);
}

/// A cell taken into a flush: the version taken, the snapshot sinks that
/// lack it, and its usage rows (when the usage store lacks them).
type Taken<'a> = (
    &'a Arc<KeyCell>,
    u64,
    Vec<usize>,
    Option<Vec<(String, UsageCell)>>,
);

/// The write-behind of one node.
pub struct WriteBehind {
    pending: DashMap<compact_str::CompactString, Arc<KeyCell>, crate::HotHasher>,
    snapshot_sinks: Vec<Arc<dyn SnapshotStore>>,
    usage: Option<Arc<dyn UsageStore>>,
    /// The only snapshot sink is the usage store too: a flush is one
    /// transaction there ([`SnapshotStore::save_flush`]).
    one_store: bool,
    pub config: WriteBehindConfig,
    pub stats: FlushStats,
    over_bound: std::sync::atomic::AtomicBool,
    /// Where the next flush's batch starts when more is pending than one
    /// flush takes.
    cursor: std::sync::atomic::AtomicUsize,
    /// Told about the usage rows of every successful flush.
    usage_sink: Option<Arc<dyn UsageSink>>,
    /// How a snapshot becomes bytes ([`Snapshot::encode`]; tests make it fail).
    encode: fn(&Snapshot) -> Result<Vec<u8>, rmp_serde::encode::Error>,
    /// When the usage rows were last written ([`crate::clock::monotonic`]
    /// ms since this write-behind started); `u64::MAX` before the first time.
    usage_written_ms: AtomicU64,
    started: std::time::Instant,
    /// Numbers the writers of usage-only cells ([`WriteBehind::count_unowned`]).
    unowned_writers: AtomicU64,
    /// Set by the registry of active keys ([`WriteBehind::on_store_lost`]).
    rewrite_active: parking_lot::Mutex<Option<RewriteAll>>,
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
    /// Cells left pending because their snapshot could not be encoded.
    pub unencodable: usize,
}

impl WriteBehind {
    pub fn new(
        snapshot_sinks: Vec<Arc<dyn SnapshotStore>>,
        usage: Option<Arc<dyn UsageStore>>,
        usage_sink: Option<Arc<dyn UsageSink>>,
        config: WriteBehindConfig,
    ) -> Self {
        let one_store = match (snapshot_sinks.as_slice(), &usage) {
            ([s], Some(u)) => std::ptr::addr_eq(Arc::as_ptr(s), Arc::as_ptr(u)),
            _ => false,
        };
        WriteBehind {
            pending: DashMap::default(),
            snapshot_sinks,
            usage,
            one_store,
            config,
            stats: FlushStats::default(),
            over_bound: std::sync::atomic::AtomicBool::new(false),
            cursor: std::sync::atomic::AtomicUsize::new(0),
            usage_sink,
            encode: Snapshot::encode,
            usage_written_ms: AtomicU64::new(u64::MAX),
            started: crate::clock::monotonic(),
            unowned_writers: AtomicU64::new(0),
            rewrite_active: parking_lot::Mutex::new(None),
        }
    }

    /// What to do when a snapshot store lost its contents: the registry of
    /// active keys marks each of them changed (and enqueues it), so the
    /// next flushes write every one of them again.
    pub fn on_store_lost(&self, rewrite_active: RewriteAll) {
        *self.rewrite_active.lock() = Some(rewrite_active);
    }

    /// Asks every snapshot store whether it lost what was written to it;
    /// on a loss, every active key and every pending one is written again.
    /// A store that cannot be asked (it is down) is asked again at the
    /// next flush: the flush's own writes report the outage.
    async fn check_lost(&self) {
        let mut lost = false;
        for (i, s) in self.snapshot_sinks.iter().enumerate() {
            if let Ok(true) = s.lost_writes().await {
                metrics::counter!(metric::STORE_LOST).increment(1);
                tracing::warn!(
                    sink = i,
                    "a snapshot store lost its contents (restarted empty, or flushed); writing every active key to it again"
                );
                lost = true;
            }
        }
        if !lost {
            return;
        }
        for e in self.pending.iter() {
            let c = e.value();
            if !c.usage_only {
                let mut g = c.lock();
                g.version = g.version.wrapping_add(1);
            }
        }
        if let Some(f) = self.rewrite_active.lock().as_ref() {
            f();
        }
    }

    /// Adds a changed cell (called once per cell until it is written).
    ///
    /// The pending map is bounded by `max_pending` in the sense that matters:
    /// above it, passivation is refused, so state stays in live actors instead
    /// of piling up in the map; nothing admitted is ever dropped. Crossing the
    /// bound is logged once and counted.
    pub fn enqueue(&self, cell: &Arc<KeyCell>) {
        self.pending.insert(cell.pending_key(), Arc::clone(cell));
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

    /// Counts `units` this node admitted for a key it does not own, or
    /// whose state it cannot read (a fail-open answer): usage history and
    /// billing must hold every admitted unit. They are written as usage
    /// rows of their own writer, `{writer_base}.open{n}`, a new one each
    /// time the key's usage-only cell was written out and dropped, so no
    /// writer ever counts again from zero under a name that holds units.
    /// No snapshot is written: the key's limiter state is its owner's.
    /// Without a usage store nothing is recorded (no usage is kept at all).
    pub fn count_unowned(&self, key_id: &str, writer_base: &str, units: u64, now_ms: u64) {
        if self.usage.is_none() || units == 0 {
            return;
        }
        let name = compact_str::format_compact!("{}{key_id}", crate::cell::USAGE_ONLY_MARK);
        // Under the map's entry lock, so a flush cannot drop the cell
        // between finding it and counting in it.
        let entry = self.pending.entry(name).or_insert_with(|| {
            let n = self.unowned_writers.fetch_add(1, Ordering::Relaxed);
            Arc::new(KeyCell::usage_only(
                key_id.to_owned(),
                format!("{writer_base}.open{n}"),
                now_ms,
            ))
        });
        let cell = entry.value();
        let mut g = cell.lock();
        g.snap.usage.add(now_ms, units);
        cell.mark_changed(&mut g);
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

    /// The cells of the next flush: every pending cell, or when more are
    /// pending than one flush takes, the next `max_batch` after the previous
    /// flush's, so a backlog is written in turn rather than the same first
    /// batch every time.
    fn next_batch(&self) -> Vec<Arc<KeyCell>> {
        let max = self.config.max_batch.max(1);
        let len = self.pending.len();
        if len <= max {
            return self.pending.iter().map(|e| Arc::clone(e.value())).collect();
        }
        let from = self.cursor.load(Ordering::Relaxed) % len;
        let mut out: Vec<Arc<KeyCell>> = self
            .pending
            .iter()
            .skip(from)
            .take(max)
            .map(|e| Arc::clone(e.value()))
            .collect();
        if out.len() < max {
            // Wrap around; the map may have changed meanwhile, so never take
            // a cell twice (a key is written at most once per flush).
            let mut seen: std::collections::HashSet<*const KeyCell> =
                out.iter().map(Arc::as_ptr).collect();
            let rest = (max - out.len()).min(from);
            for e in self.pending.iter().take(rest) {
                if seen.insert(Arc::as_ptr(e.value())) {
                    out.push(Arc::clone(e.value()));
                }
            }
        }
        self.cursor
            .store((from + out.len()) % len.max(1), Ordering::Relaxed);
        out
    }

    /// Writes every pending cell once (or the next `max_batch` of them).
    ///
    /// Each sink makes progress on its own: a snapshot sink that fails does
    /// not keep the usage rows from the usage store, nor the other way
    /// round. A cell records what each sink stored, is written next time
    /// only to the sinks that lack its current version, and leaves the
    /// pending map once every sink has it. The first error is returned
    /// after the other sinks' progress is recorded.
    pub async fn flush_once(&self) -> Result<FlushReport, StoreError> {
        self.flush(true).await
    }

    /// The periodic flush: every pending snapshot, and the usage rows when
    /// `usage_interval` has passed since they were last written.
    pub async fn flush_tick(&self) -> Result<FlushReport, StoreError> {
        let last = self.usage_written_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let due = last == u64::MAX
            || now.saturating_sub(last) >= self.config.usage_interval.as_millis() as u64;
        self.flush(due).await
    }

    async fn flush(&self, take_usage: bool) -> Result<FlushReport, StoreError> {
        self.check_lost().await;
        let cells = self.next_batch();
        metrics::gauge!(metric::PENDING).set(self.pending.len() as f64);
        if cells.is_empty() {
            return Ok(FlushReport::default());
        }
        let started = crate::clock::monotonic();
        let sinks = self.snapshot_sinks.len();
        // Per sink, the snapshots it lacks (index into `snaps`).
        let mut snaps: Vec<(String, Vec<u8>)> = Vec::with_capacity(cells.len());
        let mut wants: Vec<Vec<usize>> = vec![Vec::new(); sinks];
        let mut taken: Vec<Taken<'_>> = Vec::with_capacity(cells.len());
        let mut usage_rows = Vec::new();
        let mut unencodable = 0;
        let mut courtesy = crate::courtesy::Courtesy::default();
        for c in &cells {
            courtesy.tick();
            let g = c.lock();
            let v = g.version;
            let lacking: Vec<usize> = if c.usage_only {
                Vec::new()
            } else {
                (0..sinks).filter(|&i| g.stored(i) != v).collect()
            };
            let snap = if lacking.is_empty() {
                None
            } else {
                match (self.encode)(&g.snap) {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        unencodable += 1;
                        self.stats.encode_failures.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(metric::ENCODE_FAILURES).increment(1);
                        tracing::error!(key_id = %c.key_id, error = %e, "cannot encode a key's snapshot; it stays pending");
                        continue;
                    }
                }
            };
            let rows = if take_usage && self.usage.is_some() && g.usage_stored != v {
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
                Some(rows)
            } else {
                None
            };
            if let Some(bytes) = snap {
                for &i in &lacking {
                    wants[i].push(snaps.len());
                }
                snaps.push((c.key_id.clone(), bytes));
            }
            taken.push((c, v, lacking, rows));
        }
        if taken.is_empty() {
            return Ok(FlushReport {
                unencodable,
                ..FlushReport::default()
            });
        }
        // Nothing to write (only usage is pending, and it is not due): no
        // store transaction; clean cells still leave the pending map below.
        let (stored, usage_ok, first_err) = if snaps.is_empty() && usage_rows.is_empty() {
            (vec![true; sinks], true, None)
        } else {
            self.write(&snaps, &wants, &usage_rows).await
        };
        if take_usage && usage_ok {
            self.usage_written_ms
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        let mut done = 0;
        for (c, version, lacking, rows) in &taken {
            courtesy.tick();
            let mut g = c.lock();
            for &i in lacking {
                if stored[i] {
                    g.set_stored(i, *version);
                }
            }
            if let (true, Some(rows)) = (usage_ok, rows) {
                g.snap.usage.written(rows);
                g.usage_stored = *version;
            }
            let clean = g.version == *version
                && (c.usage_only || (0..sinks).all(|i| g.stored(i) == *version))
                && (self.usage.is_none() || g.usage_stored == *version);
            drop(g);
            if !clean {
                continue;
            }
            done += 1;
            self.pending.remove_if(c.pending_key().as_str(), |_, pc| {
                if !Arc::ptr_eq(pc, c) {
                    return false;
                }
                // Re-checked under the lock: a check may have changed the
                // cell since (it then stays pending and is written again).
                let g = c.lock();
                if g.version == *version {
                    c.in_pending.store(false, Ordering::Release);
                    true
                } else {
                    false
                }
            });
        }
        if usage_ok
            && !usage_rows.is_empty()
            && let Some(sink) = &self.usage_sink
        {
            sink.usage_written(&usage_rows);
        }
        self.stats.keys_written.fetch_add(done, Ordering::Relaxed);
        metrics::histogram!(metric::FLUSH_KEYS).record(done as f64);
        metrics::histogram!(metric::FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        if let Some(e) = first_err {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        Ok(FlushReport {
            keys: done as usize,
            usage_rows: if usage_ok { usage_rows.len() } else { 0 },
            unencodable,
        })
    }

    /// Writes each sink its part; returns which snapshot sinks stored their
    /// part, whether the usage rows were stored, and the first error.
    async fn write(
        &self,
        snaps: &[(String, Vec<u8>)],
        wants: &[Vec<usize>],
        usage_rows: &[UsageRow],
    ) -> (Vec<bool>, bool, Option<StoreError>) {
        let mut first_err = None;
        let mut fail = |sink: &'static str, e: StoreError| {
            metrics::counter!(metric::FLUSH_FAILURES, "sink" => sink).increment(1);
            tracing::warn!(sink, error = %e, "write-behind flush failed; retried at the next flush");
            first_err.get_or_insert(e);
        };
        let whole = wants.first().is_some_and(|w| w.len() == snaps.len());
        if self.one_store && whole {
            match self.snapshot_sinks[0].save_flush(snaps, usage_rows).await {
                Ok(true) => return (vec![true], true, None),
                Ok(false) => {}
                Err(e) => {
                    fail("snapshots+usage", e);
                    return (vec![false], false, first_err);
                }
            }
        }
        let mut stored = Vec::with_capacity(wants.len());
        for (s, want) in self.snapshot_sinks.iter().zip(wants) {
            if want.is_empty() {
                stored.push(true);
                continue;
            }
            let r = if want.len() == snaps.len() {
                s.save_snapshots(snaps).await
            } else {
                let part: Vec<(String, Vec<u8>)> = want.iter().map(|&i| snaps[i].clone()).collect();
                s.save_snapshots(&part).await
            };
            match r {
                Ok(()) => stored.push(true),
                Err(e) => {
                    stored.push(false);
                    fail("snapshots", e);
                }
            }
        }
        let usage_ok = match (&self.usage, usage_rows.is_empty()) {
            (Some(u), false) => match u.write_usage(usage_rows).await {
                Ok(()) => true,
                Err(e) => {
                    fail("usage", e);
                    false
                }
            },
            _ => true,
        };
        (stored, usage_ok, first_err)
    }

    /// Whether usage of granularity `g` in a bucket that starts before
    /// `end_ms` is admitted but not yet written (a billing period ending at
    /// `end_ms` must not close before it is).
    pub fn unwritten_usage_before(
        &self,
        g: ringlimit_protocol::admin::Granularity,
        end_ms: u64,
    ) -> bool {
        if self.usage.is_none() {
            return false;
        }
        self.pending.iter().any(|e| {
            let c = e.value().lock();
            c.snap
                .usage
                .unwritten_before(g, end_ms, c.usage_stored == c.version)
        })
    }

    /// Flushes until nothing is pending or `attempts` flushes failed (a
    /// flush that wrote nothing because no pending snapshot could be encoded
    /// counts as failed).
    pub async fn drain(&self, attempts: usize) -> Result<(), StoreError> {
        let mut failures = 0;
        while !self.pending.is_empty() {
            let result = match self.flush_once().await {
                Ok(r) if r.keys == 0 && r.unencodable > 0 => Err(StoreError::Corrupt(format!(
                    "{} pending snapshots cannot be encoded",
                    r.unencodable
                ))),
                other => other,
            };
            match result {
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
                match st.wb.flush_tick().await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    type Batch = Vec<(String, Vec<u8>)>;

    /// A snapshot sink that records every batch it is given.
    #[derive(Debug, Default)]
    struct Recorder {
        batches: parking_lot::Mutex<Vec<Batch>>,
    }

    #[async_trait]
    impl SnapshotStore for Recorder {
        async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            self.batches.lock().push(batch.to_vec());
            Ok(())
        }
        async fn load_snapshot(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
    }

    /// A store holding snapshots and usage, as the embedded store does:
    /// counts how each flush reached it.
    #[derive(Debug, Default)]
    struct BothStore {
        one_transaction: bool,
        flushes: AtomicU64,
        snapshot_writes: AtomicU64,
        usage_writes: AtomicU64,
        rows: parking_lot::Mutex<Vec<UsageRow>>,
    }

    #[async_trait]
    impl SnapshotStore for BothStore {
        async fn save_snapshots(&self, _: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            self.snapshot_writes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        async fn load_snapshot(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        async fn save_flush(
            &self,
            _: &[(String, Vec<u8>)],
            usage: &[UsageRow],
        ) -> Result<bool, StoreError> {
            if !self.one_transaction {
                return Ok(false);
            }
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.rows.lock().extend_from_slice(usage);
            Ok(true)
        }
    }

    #[async_trait]
    impl UsageStore for BothStore {
        async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
            self.usage_writes.fetch_add(1, Ordering::Relaxed);
            self.rows.lock().extend_from_slice(rows);
            Ok(())
        }
        async fn usage_history(
            &self,
            _: &str,
            _: ringlimit_protocol::admin::Granularity,
            _: u64,
            _: u64,
        ) -> Result<Vec<ringlimit_protocol::admin::UsageBucket>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_flush_to_a_store_that_holds_usage_too_is_one_transaction() {
        for one_transaction in [true, false] {
            let store = Arc::new(BothStore {
                one_transaction,
                ..BothStore::default()
            });
            let wb = WriteBehind::new(
                vec![store.clone() as Arc<dyn SnapshotStore>],
                Some(store.clone() as Arc<dyn UsageStore>),
                None,
                WriteBehindConfig::default(),
            );
            for k in ["k1", "k2", "k3"] {
                changed_cell(&wb, k);
            }
            let r = wb.flush_once().await.expect("flush");
            assert_eq!(r.keys, 3);
            let (flushes, snaps, usage) = (
                store.flushes.load(Ordering::Relaxed),
                store.snapshot_writes.load(Ordering::Relaxed),
                store.usage_writes.load(Ordering::Relaxed),
            );
            if one_transaction {
                assert_eq!((flushes, snaps, usage), (1, 0, 0));
            } else {
                assert_eq!((flushes, snaps, usage), (0, 1, 1), "written apart");
            }
            assert_eq!(store.rows.lock().len(), r.usage_rows);
            assert!(r.usage_rows >= 3, "every key's usage rows: {r:?}");
            assert_eq!(wb.pending_len(), 0);
        }
        // Separate snapshot and usage stores are written apart.
        let snaps = Arc::new(BothStore {
            one_transaction: true,
            ..BothStore::default()
        });
        let usage = Arc::new(BothStore::default());
        let wb = WriteBehind::new(
            vec![snaps.clone() as Arc<dyn SnapshotStore>],
            Some(usage.clone() as Arc<dyn UsageStore>),
            None,
            WriteBehindConfig::default(),
        );
        changed_cell(&wb, "k1");
        wb.flush_once().await.expect("flush");
        assert_eq!(snaps.flushes.load(Ordering::Relaxed), 0);
        assert_eq!(snaps.snapshot_writes.load(Ordering::Relaxed), 1);
        assert_eq!(usage.usage_writes.load(Ordering::Relaxed), 1);
    }

    /// A sink whose snapshot and usage writes fail while `down` is set;
    /// records what it stored.
    #[derive(Debug, Default)]
    struct Flaky {
        snapshots_down: std::sync::atomic::AtomicBool,
        usage_down: std::sync::atomic::AtomicBool,
        snapshots: parking_lot::Mutex<Vec<String>>,
        rows: parking_lot::Mutex<Vec<UsageRow>>,
    }

    #[async_trait]
    impl SnapshotStore for Flaky {
        async fn save_snapshots(&self, batch: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            if self.snapshots_down.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("snapshots down".into()));
            }
            self.snapshots
                .lock()
                .extend(batch.iter().map(|(k, _)| k.clone()));
            Ok(())
        }
        async fn load_snapshot(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
    }

    #[async_trait]
    impl UsageStore for Flaky {
        async fn write_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
            if self.usage_down.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("usage down".into()));
            }
            self.rows.lock().extend_from_slice(rows);
            Ok(())
        }
        async fn usage_history(
            &self,
            _: &str,
            _: ringlimit_protocol::admin::Granularity,
            _: u64,
            _: u64,
        ) -> Result<Vec<ringlimit_protocol::admin::UsageBucket>, StoreError> {
            Ok(Vec::new())
        }
    }

    fn flaky_pair(max_batch: usize) -> (Arc<Flaky>, Arc<Flaky>, WriteBehind) {
        let snaps = Arc::new(Flaky::default());
        let usage = Arc::new(Flaky::default());
        let wb = WriteBehind::new(
            vec![snaps.clone() as Arc<dyn SnapshotStore>],
            Some(usage.clone() as Arc<dyn UsageStore>),
            None,
            WriteBehindConfig {
                max_batch,
                ..WriteBehindConfig::default()
            },
        );
        (snaps, usage, wb)
    }

    #[tokio::test]
    async fn usage_reaches_its_store_while_the_snapshot_store_is_down() {
        let (snaps, usage, wb) = flaky_pair(100);
        snaps.snapshots_down.store(true, Ordering::Relaxed);
        changed_cell(&wb, "k1");
        assert!(wb.flush_once().await.is_err(), "the snapshot write failed");
        let rows = usage.rows.lock().len();
        assert!(rows >= 1, "the usage rows were written all the same");
        assert_eq!(wb.pending_len(), 1, "the snapshot is still owed");
        // The next flush owes only the snapshot: the rows are not written again.
        assert!(wb.flush_once().await.is_err());
        assert_eq!(usage.rows.lock().len(), rows);
        snaps.snapshots_down.store(false, Ordering::Relaxed);
        wb.flush_once().await.expect("flush");
        assert_eq!(*snaps.snapshots.lock(), vec!["k1".to_string()]);
        assert_eq!(usage.rows.lock().len(), rows);
        assert_eq!(wb.pending_len(), 0);
        assert!(
            !wb.unwritten_usage_before(ringlimit_protocol::admin::Granularity::Minute, u64::MAX)
        );
    }

    #[tokio::test]
    async fn snapshots_reach_their_store_while_the_usage_store_is_down() {
        let (snaps, usage, wb) = flaky_pair(100);
        usage.usage_down.store(true, Ordering::Relaxed);
        changed_cell(&wb, "k1");
        assert!(wb.flush_once().await.is_err(), "the usage write failed");
        assert_eq!(*snaps.snapshots.lock(), vec!["k1".to_string()]);
        assert_eq!(wb.pending_len(), 1, "the usage rows are still owed");
        let minute = ringlimit_protocol::admin::Granularity::Minute;
        // The admitted minute (60 000..120 000) is not written: a period
        // ending after its start must wait; one ending before it need not.
        assert!(wb.unwritten_usage_before(minute, 120_000));
        assert!(!wb.unwritten_usage_before(minute, 60_000));
        assert!(wb.flush_once().await.is_err());
        assert_eq!(
            snaps.snapshots.lock().len(),
            1,
            "the snapshot is not written again"
        );
        usage.usage_down.store(false, Ordering::Relaxed);
        let r = wb.flush_once().await.expect("flush");
        assert!(r.usage_rows >= 1);
        assert_eq!(wb.pending_len(), 0);
        assert!(!wb.unwritten_usage_before(minute, 120_000));
    }

    #[tokio::test]
    async fn a_backlog_larger_than_a_flush_is_taken_in_turn() {
        let (snaps, usage, wb) = flaky_pair(2);
        usage.usage_down.store(true, Ordering::Relaxed);
        let keys: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        for k in &keys {
            changed_cell(&wb, k);
        }
        // Usage is down, so nothing leaves the map; still, every key's
        // snapshot is written within ceil(7 / 2) flushes, once each.
        for _ in 0..4 {
            assert!(wb.flush_once().await.is_err());
        }
        let mut written = snaps.snapshots.lock().clone();
        written.sort();
        assert_eq!(written, keys, "every pending key had its turn, once");
        assert_eq!(wb.pending_len(), 7);
    }

    fn unencodable(_: &Snapshot) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        Err(rmp_serde::encode::Error::Syntax(
            "refused by the test".into(),
        ))
    }

    fn changed_cell(wb: &WriteBehind, key_id: &str) -> Arc<KeyCell> {
        let cell = Arc::new(KeyCell::new(key_id.into(), 0));
        let add = {
            let mut g = cell.lock();
            g.snap.usage.add(60_000, 1);
            cell.mark_changed(&mut g)
        };
        assert!(add);
        wb.enqueue(&cell);
        cell
    }

    #[tokio::test]
    async fn a_snapshot_that_cannot_be_encoded_stays_pending_and_is_never_written_empty() {
        let sink = Arc::new(Recorder::default());
        let mut wb = WriteBehind::new(
            vec![sink.clone() as Arc<dyn SnapshotStore>],
            None,
            None,
            WriteBehindConfig {
                interval: Duration::from_millis(1),
                ..WriteBehindConfig::default()
            },
        );
        wb.encode = unencodable;
        changed_cell(&wb, "k1");

        let r = wb.flush_once().await.expect("flush");
        assert_eq!(
            r,
            FlushReport {
                keys: 0,
                usage_rows: 0,
                unencodable: 1
            }
        );
        assert!(sink.batches.lock().is_empty(), "nothing was written");
        assert_eq!(wb.pending_len(), 1, "the cell stays pending");
        assert_eq!(wb.stats.encode_failures.load(Ordering::Relaxed), 1);
        assert!(
            wb.drain(2).await.is_err(),
            "a drain gives up instead of spinning"
        );

        // Once the snapshot encodes again, the cell is written and leaves the map.
        wb.encode = Snapshot::encode;
        let r = wb.flush_once().await.expect("flush");
        assert_eq!(r.keys, 1);
        assert_eq!(r.unencodable, 0);
        assert_eq!(wb.pending_len(), 0);
        let batches = sink.batches.lock();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0][0].0, "k1");
        assert!(!batches[0][0].1.is_empty());
        assert!(Snapshot::decode(&batches[0][0].1).is_ok());
    }

    #[tokio::test]
    async fn units_admitted_for_a_key_owned_elsewhere_reach_usage_and_no_snapshot() {
        use ringlimit_protocol::admin::Granularity;
        let snaps = Arc::new(Recorder::default());
        let usage = Arc::new(BothStore::default());
        let wb = WriteBehind::new(
            vec![snaps.clone() as Arc<dyn SnapshotStore>],
            Some(usage.clone() as Arc<dyn UsageStore>),
            None,
            WriteBehindConfig::default(),
        );
        // The key's own cell and a fail-open count of the same key.
        let own = changed_cell(&wb, "k1");
        wb.count_unowned("k1", "n#1", 3, 61_000);
        wb.count_unowned("k1", "n#1", 1, 62_000);
        assert_eq!(wb.pending_len(), 2);
        assert!(Arc::ptr_eq(&wb.pending_cell("k1").expect("pending"), &own));
        // Billing waits for the unowned units too.
        assert!(wb.unwritten_usage_before(Granularity::Minute, 120_000));

        wb.flush_once().await.expect("flush");
        assert_eq!(wb.pending_len(), 0);
        let batches = snaps.batches.lock().clone();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].len(), 1, "one snapshot: the owned cell's");
        assert_eq!(batches[0][0].0, "k1");

        // Written and dropped: the next unit counts under a new writer.
        wb.count_unowned("k1", "n#1", 2, 63_000);
        wb.flush_once().await.expect("flush");
        let mut by_writer = std::collections::BTreeMap::new();
        for r in usage.rows.lock().iter() {
            if r.granularity == Granularity::Minute && r.key_id == "k1" {
                let e = by_writer.entry(r.writer.clone()).or_insert(0);
                *e = (*e).max(r.units);
            }
        }
        assert_eq!(by_writer.get("n#1.open0"), Some(&4));
        assert_eq!(by_writer.get("n#1.open1"), Some(&2));
        assert_eq!(by_writer.values().sum::<u64>(), 1 + 4 + 2);
    }

    #[tokio::test]
    async fn without_a_usage_store_unowned_units_are_not_kept() {
        let wb = WriteBehind::new(vec![], None, None, WriteBehindConfig::default());
        wb.count_unowned("k1", "n#1", 3, 61_000);
        assert_eq!(wb.pending_len(), 0);
    }
}
