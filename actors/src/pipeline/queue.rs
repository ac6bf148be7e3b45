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
//! `push` takes a short lock and never waits: when the queue holds
//! `capacity` events it drops the new one, counts it in
//! `ringlimit_pipeline_dropped_total{pipeline=…}` and logs (at most once a
//! second per queue). Nothing else happens on the hot path: the accepted
//! count and each event's sequence number are derived by the consumer
//! (events leave the queue in order, so the n-th event taken is the n-th
//! accepted).
//!
//! # Sequence numbers
//! Every accepted event has a number, its position in acceptance order
//! (from 0), fixed when the consumer takes it into the in-flight batch:
//! [`EventQueue::begin_numbered`] returns the number of the batch's first
//! event. A batch handed out again after a crash keeps its numbers, so ids
//! derived from them are stable across retries.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Metric names.
pub mod metric {
    pub const ACCEPTED: &str = "ringlimit_pipeline_accepted_total";
    pub const DROPPED: &str = "ringlimit_pipeline_dropped_total";
    pub const PROCESSED: &str = "ringlimit_pipeline_processed_total";
    pub const QUEUED: &str = "ringlimit_pipeline_queued";
    pub const FAILURES: &str = "ringlimit_pipeline_store_failures_total";
    pub const RESTARTS: &str = "ringlimit_pipeline_restarts_total";
    /// Billing rows coalesced and waiting for room in the billing queue.
    pub const ADMIT_BACKLOG: &str = "ringlimit_billing_backlog_rows";
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

/// The consumer's side: the batch being processed, the events already
/// taken from the producers' queue that wait for a later batch, and how many
/// events went into batches so far.
struct Inflight<T> {
    /// Sequence number of `batch[0]`.
    base: u64,
    batch: Arc<Vec<T>>,
    /// Events moved into batches so far (the next batch's base).
    taken: u64,
    /// Taken from the producers' queue, not yet in a batch (oldest first).
    pending: VecDeque<T>,
    /// How many events the last swap took (sizes the next buffer).
    last_swap: usize,
    /// The last committed batch, whose buffer is reused once no worker
    /// holds it any more: the producers then push into memory that is
    /// already allocated and touched (no page faults on the check path).
    retired: Option<Arc<Vec<T>>>,
}

/// A bounded, drop-when-full queue with an in-flight slot that survives the
/// consumer's crash.
pub struct EventQueue<T> {
    name: &'static str,
    capacity: usize,
    queue: Mutex<VecDeque<T>>,
    inflight: Mutex<Inflight<T>>,
    /// `inflight.pending.len()`, for the producers' bound check.
    pending_len: AtomicUsize,
    dropped: AtomicU64,
    processed: AtomicU64,
    started: std::time::Instant,
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
            inflight: Mutex::new(Inflight {
                base: 0,
                batch: Arc::new(Vec::new()),
                taken: 0,
                pending: VecDeque::new(),
                last_swap: 0,
                retired: None,
            }),
            pending_len: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            started: crate::clock::monotonic(),
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
        if q.len() + self.pending_len.load(Ordering::Relaxed) >= self.capacity
            || self.closed.load(Ordering::Acquire)
        {
            drop(q);
            self.drop_one();
            return false;
        }
        q.push_back(ev);
        // The accepted count and metric are kept by the consumer.
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
        self.begin_numbered(max).1
    }

    /// [`Self::begin`], with the sequence number of the batch's first event.
    pub fn begin_numbered(&self, max: usize) -> (u64, Arc<Vec<T>>) {
        let mut guard = self.inflight.lock();
        let inflight = &mut *guard;
        if inflight.batch.is_empty() {
            let max = max.max(1);
            if inflight.pending.len() < max {
                // The producers' lock is held for a swap, nothing more, and
                // they get a buffer that already has room (allocated here,
                // off the hot path), so a push never reallocates.
                let room = (inflight.last_swap + inflight.last_swap / 2)
                    .max(16)
                    .min(self.capacity);
                let fresh = match inflight.retired.take().map(Arc::try_unwrap) {
                    Some(Ok(mut v)) if v.capacity() >= room => {
                        v.clear();
                        VecDeque::from(v)
                    }
                    _ => VecDeque::with_capacity(room),
                };
                let taken = {
                    let mut q = self.queue.lock();
                    // Still counted against the bound while they move over.
                    self.pending_len
                        .store(inflight.pending.len() + q.len(), Ordering::Relaxed);
                    std::mem::replace(&mut *q, fresh)
                };
                inflight.last_swap = taken.len();
                metrics::counter!(metric::ACCEPTED, "pipeline" => self.name)
                    .increment(taken.len() as u64);
                if inflight.pending.is_empty() {
                    inflight.pending = taken;
                } else {
                    inflight.pending.extend(taken);
                }
            }
            let batch: Vec<T> = if inflight.pending.len() <= max {
                Vec::from(std::mem::take(&mut inflight.pending))
            } else {
                inflight.pending.drain(..max).collect()
            };
            self.pending_len
                .store(inflight.pending.len(), Ordering::Relaxed);
            let n = batch.len() as u64;
            inflight.base = inflight.taken;
            inflight.taken += n;
            inflight.batch = Arc::new(batch);
            metrics::gauge!(metric::QUEUED, "pipeline" => self.name)
                .set(inflight.pending.len() as f64);
        }
        (inflight.base, Arc::clone(&inflight.batch))
    }

    /// The in-flight batch is processed: forget it.
    pub fn commit(&self) {
        let mut inflight = self.inflight.lock();
        let n = inflight.batch.len() as u64;
        let done = std::mem::take(&mut inflight.batch);
        // Its elements are dropped when the buffer is reused (or here, by
        // the old retired batch), on the consumer's thread.
        let old = inflight.retired.replace(done);
        drop(inflight);
        drop(old);
        self.processed.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(metric::PROCESSED, "pipeline" => self.name).increment(n);
    }

    /// Whether nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        let consumer_idle = {
            let i = self.inflight.lock();
            i.batch.is_empty() && i.pending.is_empty()
        };
        consumer_idle && self.queue.lock().is_empty()
    }

    pub fn stats(&self) -> QueueStats {
        // One lock at a time (never both: `begin` takes them in the other order).
        let (taken, inflight, pending) = {
            let i = self.inflight.lock();
            (i.taken, i.batch.len(), i.pending.len())
        };
        let queued = self.queue.lock().len() + pending;
        QueueStats {
            // Events leave the queues only by going into batches.
            accepted: taken + queued as u64,
            dropped: self.dropped.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            queued,
            inflight,
        }
    }

    /// Room left before the bound (what [`Self::push`] would still accept).
    pub fn room(&self) -> usize {
        let q = self.queue.lock();
        self.capacity
            .saturating_sub(q.len() + self.pending_len.load(Ordering::Relaxed))
    }

    /// Adds events the consumer moves in itself from a backlog of its own
    /// (after [`Self::room`]): within the bound, and also after
    /// [`Self::close`], since they were accepted before it. Returns how many
    /// were added; the rest stay with the caller.
    pub fn refill(&self, events: impl IntoIterator<Item = T>) -> usize {
        let mut q = self.queue.lock();
        let room = self
            .capacity
            .saturating_sub(q.len() + self.pending_len.load(Ordering::Relaxed));
        let before = q.len();
        q.extend(events.into_iter().take(room));
        q.len() - before
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
        assert_eq!(q.stats().accepted, 5);
    }

    #[test]
    fn batches_keep_their_sequence_numbers_across_retries() {
        let q = EventQueue::new("t", 3);
        for i in 0..5 {
            q.push(i);
        }
        // Two were dropped: numbers count accepted events only.
        assert_eq!(q.stats().accepted, 3);
        assert_eq!(q.begin_numbered(2), (0, Arc::new(vec![0, 1])));
        // Handed out again (a crash): same numbers.
        assert_eq!(q.begin_numbered(2), (0, Arc::new(vec![0, 1])));
        q.commit();
        q.push(7);
        q.push(8);
        assert_eq!(q.stats().accepted, 5);
        assert_eq!(q.begin_numbered(10), (2, Arc::new(vec![2, 7, 8])));
        q.commit();
        assert_eq!(q.begin_numbered(10).1.len(), 0);
        q.push(9);
        assert_eq!(q.begin_numbered(10), (5, Arc::new(vec![9])));
    }
}
