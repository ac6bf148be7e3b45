//! What peers send, as a stream of messages for whoever serves this node.
//!
//! The cluster layer must be running before the router that uses it can be
//! built, and the router is what handles what peers send. Instead of setting
//! the handler after construction, the cluster is started with an
//! [`InboxHandler`], which only queues what arrives; the router, built next
//! with the running cluster, serves the [`Inbox`]. Messages that arrive in
//! between wait in the queue, in order.
//!
//! The queue is unbounded, and bounded in practice by the cluster's own
//! limits: each peer has at most K forwarded batches in flight, and every
//! other message is rare (admin changes, handoff markers, ring changes).

use super::messages::{ClusterHandler, HandlerError};
use super::ring::{Ring, RingChange};
use ringlimit_protocol::cluster::{AdminEvent, ForwardBatch, ForwardReply, Handoff};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// One thing a peer sent (or the ring did), with where its answer goes.
#[derive(Debug)]
pub enum Inbound {
    /// Checks this node owns; answer one outcome per check, in order.
    Checks {
        batch: ForwardBatch,
        reply: oneshot::Sender<ForwardReply>,
    },
    /// An admin change made on another node; reply once it is applied.
    Admin {
        event: AdminEvent,
        done: oneshot::Sender<Result<(), HandlerError>>,
    },
    /// A handoff marker.
    Handoff {
        marker: Handoff,
        reply: oneshot::Sender<Result<(), HandlerError>>,
    },
    /// The ring changed.
    RingChanged { change: RingChange, ring: Arc<Ring> },
}

/// The receiving end: what the node's router serves.
pub type Inbox = mpsc::UnboundedReceiver<Inbound>;

/// A [`ClusterHandler`] that queues everything for the [`Inbox`].
#[derive(Debug, Clone)]
pub struct InboxHandler {
    tx: mpsc::UnboundedSender<Inbound>,
}

/// A handler to start the cluster with, and the inbox it fills.
pub fn inbox() -> (InboxHandler, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    (InboxHandler { tx }, rx)
}

impl InboxHandler {
    fn closed() -> HandlerError {
        HandlerError::Refused("this node is shutting down".into())
    }
}

#[async_trait::async_trait]
impl ClusterHandler for InboxHandler {
    async fn check_batch(&self, batch: ForwardBatch) -> ForwardReply {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Inbound::Checks { batch, reply }).is_err() {
            // Nobody serves the inbox: the gateway answers each check as
            // unanswered (an error the sender sees as unavailable).
            return ForwardReply { results: vec![] };
        }
        rx.await.unwrap_or(ForwardReply { results: vec![] })
    }

    async fn admin_event(&self, event: AdminEvent) -> Result<(), HandlerError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Inbound::Admin { event, done })
            .map_err(|_| InboxHandler::closed())?;
        rx.await.unwrap_or_else(|_| Err(InboxHandler::closed()))
    }

    async fn handoff(&self, marker: Handoff) -> Result<(), HandlerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Inbound::Handoff { marker, reply })
            .map_err(|_| InboxHandler::closed())?;
        rx.await.unwrap_or_else(|_| Err(InboxHandler::closed()))
    }

    fn on_ring_change(&self, change: &RingChange, ring: &Arc<Ring>) {
        let _ = self.tx.send(Inbound::RingChanged {
            change: change.clone(),
            ring: Arc::clone(ring),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_wait_in_order_until_served() {
        let (h, mut inbox) = inbox();
        let ring = Arc::new(Ring::new("a", ["b"]));
        let change = RingChange {
            added: vec!["b".into()],
            removed: vec![],
            old_version: 0,
            new_version: 1,
        };
        h.on_ring_change(&change, &ring);
        let h2 = h.clone();
        let marker = tokio::spawn(async move {
            h2.handoff(Handoff {
                from: "b".into(),
                ring_version: 1,
            })
            .await
        });
        match inbox.recv().await {
            Some(Inbound::RingChanged { change: c, .. }) => assert_eq!(c, change),
            other => panic!("unexpected {other:?}"),
        }
        match inbox.recv().await {
            Some(Inbound::Handoff { marker: m, reply }) => {
                assert_eq!(m.from, "b");
                reply
                    .send(Err(HandlerError::Refused("no".into())))
                    .expect("waiting");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            marker.await.expect("joined"),
            Err(HandlerError::Refused("no".into()))
        );
    }

    #[tokio::test]
    async fn a_closed_inbox_refuses_markers_and_answers_no_checks() {
        let (h, inbox) = inbox();
        drop(inbox);
        assert!(
            h.handoff(Handoff {
                from: "b".into(),
                ring_version: 1,
            })
            .await
            .is_err()
        );
        let reply = h
            .check_batch(ForwardBatch {
                from: "b".into(),
                ring_version: 1,
                checks: vec![],
            })
            .await;
        assert!(reply.results.is_empty());
    }
}
