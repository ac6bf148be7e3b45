//! The bounded queue between the hot path and a pipeline actor.
//!
//! # Guarantee
//! An event is *accepted* when [`EventQueue::push`] returns `true`. Every
//! accepted event is processed (written to the store) at least once, as long
//! as the process lives: a pipeline actor that crashes or is killed while it
//! works on a batch leaves the batch here, in the in-flight slot, and its
//! restarted successor processes that batch again before taking new events.
//! Events carry ids chosen at acceptance and the store writes are idempotent
//! by id, so "at least once" stores each accepted event exactly once.
//! What is lost is only what the process itself loses when it dies
//! (SIGKILL): events still queued in memory. SIGTERM drains the queue.
//!
//! # Never slowing a check
//! `push` takes a short, uncontended lock and never waits: when the queue
//! holds `capacity` events it drops the new one, counts it in
//! `ringlimit_pipeline_dropped_total{pipeline=…}` and logs (at most once a
//! second per queue).

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Metric names.
pub mod metric {
    pub const ACCEPTED: &str = "ringlimit_pipeline_accepted_total";
    pub const DROPPED: &str = "ringlimit_pipeline_dropped_total";
    pub const PROCESSED: &str = "ringlimit_pipeline_processed_total";
    pub const QUEUED: &str = "ringlimit_pipeline_queued";
    pub const FAILURES: &str = "ringlimit_pipeline_store_failures_total";
    pub const RESTARTS: &str = "ringlimit_pipeline_restarts_total";
}

/// Counters of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub accepted: u64,
    pub dropped: u64,
    pub processed: u64,
    pub queued: usize,
    pub inflight: usize,
}

/// A bounded, drop-when-full queue with an in-flight slot that survives the
/// consumer's crash.
pub struct EventQueue<T> {
    name: &'static str,
    capacity: usize,
    queue: Mutex<VecDeque<T>>,
    inflight: Mutex<Arc<Vec<T>>>,
    accepted: AtomicU64,
    dropped: AtomicU64,
    processed: AtomicU64,
    started: Instant,
    last_drop_log_s: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
}

impl<T: Clone> std::fmt::Debug for EventQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventQueue")
            .field("name", &self.name)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T: Clone> EventQueue<T> {
    pub fn new(name: &'static str, capacity: usize) -> Self {
        EventQueue {
            name,
            capacity: capacity.max(1),
            queue: Mutex::new(VecDeque::new()),
            inflight: Mutex::new(Arc::new(Vec::new())),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            started: Instant::now(),
            last_drop_log_s: AtomicU64::new(u64::MAX),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Accepts `ev` unless the queue is full. Never waits.
    pub fn push(&self, ev: T) -> bool {
        let mut q = self.queue.lock();
        if q.len() >= self.capacity || self.closed.load(Ordering::Acquire) {
            drop(q);
            self.drop_one();
            return false;
        }
        q.push_back(ev);
        drop(q);
        // The metric is counted by the consumer, per batch: the hot path
        // only bumps an atomic.
        self.accepted.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn drop_one(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!(metric::DROPPED, "pipeline" => self.name).increment(1);
        let now_s = self.started.elapsed().as_secs();
        let last = self.last_drop_log_s.load(Ordering::Relaxed);
        if last != now_s
            && self
                .last_drop_log_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                pipeline = self.name,
                capacity = self.capacity,
                dropped_total = n,
                "pipeline queue full; dropping events (the store may be down or slow)"
            );
        }
    }

    /// The batch to process: the in-flight batch left by a previous attempt
    /// (a failed write, a crashed actor), or else up to `max` queued events,
    /// which become the in-flight batch. Empty when there is nothing to do.
    pub fn begin(&self, max: usize) -> Arc<Vec<T>> {
        let mut inflight = self.inflight.lock();
        if inflight.is_empty() {
            let max = max.max(1);
            // Hold the producers' lock as briefly as possible: swap the whole
            // queue out when it fits in one batch.
            let (taken, left) = {
                let mut q = self.queue.lock();
                if q.len() <= max {
                    (std::mem::take(&mut *q), 0)
                } else {
                    (q.drain(..max).collect(), q.len())
                }
            };
            *inflight = Arc::new(Vec::from(taken));
            metrics::gauge!(metric::QUEUED, "pipeline" => self.name).set(left as f64);
            metrics::counter!(metric::ACCEPTED, "pipeline" => self.name)
                .increment(inflight.len() as u64);
        }
        Arc::clone(&inflight)
    }

    /// The in-flight batch is processed: forget it.
    pub fn commit(&self) {
        let mut inflight = self.inflight.lock();
        let n = inflight.len() as u64;
        let done = std::mem::take(&mut *inflight);
        drop(inflight);
        drop(done);
        self.processed.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(metric::PROCESSED, "pipeline" => self.name).increment(n);
    }

    /// Whether nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        let inflight_empty = self.inflight.lock().is_empty();
        inflight_empty && self.queue.lock().is_empty()
    }

    pub fn stats(&self) -> QueueStats {
        // One lock at a time (never both: `begin` takes them in the other order).
        let queued = self.queue.lock().len();
        let inflight = self.inflight.lock().len();
        QueueStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            queued,
            inflight,
        }
    }

    /// Refuses every later event (counted as dropped): the node is shutting
    /// down and this queue is being drained for the last time.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts() {
        let q = EventQueue::new("t", 2);
        assert!(q.push(1));
        assert!(q.push(2));
        assert!(!q.push(3));
        let s = q.stats();
        assert_eq!((s.accepted, s.dropped, s.queued), (2, 1, 2));
    }

    #[test]
    fn uncommitted_batch_is_handed_out_again() {
        let q = EventQueue::new("t", 10);
        for i in 0..5 {
            q.push(i);
        }
        assert_eq!(*q.begin(3), vec![0, 1, 2]);
        // The consumer died before committing: the same batch comes back.
        assert_eq!(*q.begin(3), vec![0, 1, 2]);
        q.commit();
        assert_eq!(*q.begin(3), vec![3, 4]);
        q.commit();
        assert!(q.is_idle());
        assert_eq!(q.stats().processed, 5);
    }
}
