//! The batching rule of a PeerLink, as a pure state machine.
//!
//! A PeerLink sends a check at once while fewer than `K` batches to its peer
//! are outstanding; otherwise the check waits in a queue, and when a batch
//! returns the queue goes out as one batch (at most `max_batch` checks; the
//! rest waits for the next return). There is no timer: under light load each
//! check travels alone with no added delay, and under heavy load batches grow
//! by themselves to what accumulated during one round trip. The queue is
//! bounded; a check over the bound is refused (the caller treats it like an
//! unreachable owner).

use std::collections::VecDeque;

/// Limits of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Batches outstanding at once (K ≥ 1).
    pub max_in_flight: usize,
    /// Checks per batch (≥ 1).
    pub max_batch: usize,
    /// Checks waiting at most.
    pub max_queue: usize,
}

/// The batching state of one link; `T` is a pending check.
#[derive(Debug)]
pub struct Batcher<T> {
    limits: BatchLimits,
    in_flight: usize,
    queue: VecDeque<T>,
}

impl<T> Batcher<T> {
    pub fn new(limits: BatchLimits) -> Batcher<T> {
        let limits = BatchLimits {
            max_in_flight: limits.max_in_flight.max(1),
            max_batch: limits.max_batch.max(1),
            max_queue: limits.max_queue,
        };
        Batcher {
            limits,
            in_flight: 0,
            queue: VecDeque::new(),
        }
    }

    /// Batches outstanding.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Checks waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A check arrives: `Ok(Some(batch))` to send now, `Ok(None)` if it was
    /// queued, `Err(item)` if the queue is full.
    pub fn submit(&mut self, item: T) -> Result<Option<Vec<T>>, T> {
        if self.in_flight < self.limits.max_in_flight {
            // Only possible with an empty queue, since a return drains it.
            self.queue.push_back(item);
            return Ok(self.take());
        }
        if self.queue.len() >= self.limits.max_queue {
            return Err(item);
        }
        self.queue.push_back(item);
        Ok(None)
    }

    /// A batch returned (answered, failed or timed out): the next batch to
    /// send, if checks are waiting.
    pub fn complete(&mut self) -> Option<Vec<T>> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.take()
    }

    /// Everything still waiting (the link is closing).
    pub fn drain(&mut self) -> Vec<T> {
        self.queue.drain(..).collect()
    }

    fn take(&mut self) -> Option<Vec<T>> {
        if self.queue.is_empty() || self.in_flight >= self.limits.max_in_flight {
            return None;
        }
        let n = self.queue.len().min(self.limits.max_batch);
        self.in_flight += 1;
        Some(self.queue.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(k: usize, max_batch: usize, max_queue: usize) -> Batcher<u32> {
        Batcher::new(BatchLimits {
            max_in_flight: k,
            max_batch,
            max_queue,
        })
    }

    #[test]
    fn with_k1_checks_queued_behind_one_batch_go_out_together() {
        let mut l = b(1, 100, 1000);
        assert_eq!(l.submit(0), Ok(Some(vec![0])));
        for i in 1..=10 {
            assert_eq!(l.submit(i), Ok(None));
        }
        assert_eq!(l.queued(), 10);
        assert_eq!(l.complete(), Some((1..=10).collect()));
        assert_eq!(l.in_flight(), 1);
        assert_eq!(l.complete(), None);
        assert_eq!(l.in_flight(), 0);
        // Idle again: the next check goes at once.
        assert_eq!(l.submit(11), Ok(Some(vec![11])));
    }

    #[test]
    fn the_size_cap_splits_the_queue() {
        let mut l = b(1, 10, 1000);
        assert_eq!(l.submit(0), Ok(Some(vec![0])));
        for i in 1..=25 {
            assert_eq!(l.submit(i), Ok(None));
        }
        assert_eq!(l.complete().map(|v| v.len()), Some(10));
        assert_eq!(l.complete().map(|v| v.len()), Some(10));
        assert_eq!(l.complete(), Some((21..=25).collect()));
        assert_eq!(l.complete(), None);
    }

    #[test]
    fn up_to_k_batches_go_at_once() {
        let mut l = b(3, 10, 1000);
        assert_eq!(l.submit(1), Ok(Some(vec![1])));
        assert_eq!(l.submit(2), Ok(Some(vec![2])));
        assert_eq!(l.submit(3), Ok(Some(vec![3])));
        assert_eq!(l.submit(4), Ok(None));
        assert_eq!(l.submit(5), Ok(None));
        assert_eq!(l.in_flight(), 3);
        assert_eq!(l.complete(), Some(vec![4, 5]));
        assert_eq!(l.in_flight(), 3);
        assert_eq!(l.complete(), None);
        assert_eq!(l.complete(), None);
        assert_eq!(l.in_flight(), 1);
    }

    #[test]
    fn the_queue_is_bounded_and_drains_on_close() {
        let mut l = b(1, 10, 2);
        assert!(l.submit(0).is_ok());
        assert_eq!(l.submit(1), Ok(None));
        assert_eq!(l.submit(2), Ok(None));
        assert_eq!(l.submit(3), Err(3));
        assert_eq!(l.drain(), vec![1, 2]);
        assert_eq!(l.queued(), 0);
    }

    #[test]
    fn zero_limits_are_raised_to_one() {
        let mut l = b(0, 0, 5);
        assert_eq!(l.submit(1), Ok(Some(vec![1])));
        assert_eq!(l.submit(2), Ok(None));
        assert_eq!(l.submit(3), Ok(None));
        assert_eq!(l.complete(), Some(vec![2]));
    }
}
