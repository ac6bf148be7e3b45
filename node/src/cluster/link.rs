//! PeerLink: one per peer, a task that drives a [`Batcher`] and sends its
//! batches to the peer's gateway as `CheckBatch` RPCs.
//!
//! Callers hand a check and a oneshot to the link; the link sends it at once
//! while fewer than K batches are outstanding, otherwise queues it. Each batch
//! is sent by a task of its own that waits for the reply (at most
//! `check_timeout`), answers every check of the batch, and tells the link
//! the batch returned, which sends what queued meanwhile as the next batch.

use super::batcher::{BatchLimits, Batcher};
use super::config::ClusterConfig;
use super::messages::{ForwardError, GatewayMsg, call_gateway};
use super::wire::{decode, encode};
use ractor::ActorRef;
use ringlimit_protocol::cluster::{ForwardBatch, ForwardCheck, ForwardOutcome, ForwardReply};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub(crate) type Answer = Result<ForwardOutcome, ForwardError>;

/// The sender's current ring version, read as each batch leaves.
pub(crate) type RingVersion = Arc<dyn Fn() -> u64 + Send + Sync>;

pub(crate) struct Pending {
    pub check: ForwardCheck,
    pub tx: oneshot::Sender<Answer>,
}

enum LinkMsg {
    Submit(Pending),
    Done,
    SetGateway(ActorRef<GatewayMsg>),
    Close,
}

/// A handle to a peer's link.
#[derive(Clone)]
pub(crate) struct PeerLink {
    tx: mpsc::UnboundedSender<LinkMsg>,
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerLink")
    }
}

impl PeerLink {
    /// Starts the link task from this node (`cfg`) to `peer`, sending to
    /// `gateway`; each batch carries the version `ring_version` reads.
    pub fn spawn(
        peer: String,
        gateway: ActorRef<GatewayMsg>,
        cfg: &ClusterConfig,
        ring_version: RingVersion,
    ) -> PeerLink {
        let (tx, rx) = mpsc::unbounded_channel();
        let limits = BatchLimits {
            max_in_flight: cfg.max_in_flight_batches,
            max_batch: cfg.max_batch,
            max_queue: cfg.max_queued_checks,
        };
        let task = LinkTask {
            peer,
            gateway,
            ring_version,
            timeout: cfg.check_timeout,
            from: cfg.node_name.clone(),
            batcher: Batcher::new(limits),
            me: tx.clone(),
        };
        tokio::spawn(task.run(rx));
        PeerLink { tx }
    }

    /// Queues a check. When the link is closed the check is dropped, and
    /// with it its oneshot, which the caller sees as `Unreachable`.
    pub fn submit(&self, p: Pending) -> bool {
        self.tx.send(LinkMsg::Submit(p)).is_ok()
    }

    pub fn set_gateway(&self, g: ActorRef<GatewayMsg>) {
        let _ = self.tx.send(LinkMsg::SetGateway(g));
    }

    /// Closes the link: queued checks fail with `Unreachable`; batches in
    /// flight end with their RPC.
    pub fn close(&self) {
        let _ = self.tx.send(LinkMsg::Close);
    }
}

struct LinkTask {
    peer: String,
    gateway: ActorRef<GatewayMsg>,
    ring_version: RingVersion,
    timeout: Duration,
    from: String,
    batcher: Batcher<Pending>,
    me: mpsc::UnboundedSender<LinkMsg>,
}

impl LinkTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<LinkMsg>) {
        while let Some(m) = rx.recv().await {
            match m {
                LinkMsg::Submit(p) => match self.batcher.submit(p) {
                    Ok(Some(batch)) => self.send(batch),
                    Ok(None) => {}
                    Err(p) => {
                        let _ = p.tx.send(Err(ForwardError::Overloaded {
                            peer: self.peer.clone(),
                        }));
                    }
                },
                LinkMsg::Done => {
                    if let Some(batch) = self.batcher.complete() {
                        self.send(batch);
                    }
                }
                LinkMsg::SetGateway(g) => self.gateway = g,
                LinkMsg::Close => {
                    for p in self.batcher.drain() {
                        let _ = p.tx.send(Err(ForwardError::Unreachable {
                            peer: self.peer.clone(),
                        }));
                    }
                    break;
                }
            }
        }
    }

    fn send(&self, batch: Vec<Pending>) {
        let ring_version = (self.ring_version)();
        let gateway = self.gateway.clone();
        let timeout = self.timeout;
        let peer = self.peer.clone();
        let from = self.from.clone();
        let me = self.me.clone();
        tokio::spawn(async move {
            let (checks, txs): (Vec<ForwardCheck>, Vec<oneshot::Sender<Answer>>) =
                batch.into_iter().map(|p| (p.check, p.tx)).unzip();
            let n = checks.len();
            let result = call_batch(
                &gateway,
                ForwardBatch {
                    from,
                    ring_version,
                    checks,
                },
                timeout,
                &peer,
            )
            .await;
            match result {
                Ok(reply) if reply.results.len() == n => {
                    for (tx, r) in txs.into_iter().zip(reply.results) {
                        let _ = tx.send(Ok(r));
                    }
                }
                Ok(reply) => {
                    let e = ForwardError::Protocol(format!(
                        "{peer} answered {} of {n} checks",
                        reply.results.len()
                    ));
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
            let _ = me.send(LinkMsg::Done);
        });
    }
}

async fn call_batch(
    gateway: &ActorRef<GatewayMsg>,
    batch: ForwardBatch,
    timeout: Duration,
    peer: &str,
) -> Result<ForwardReply, ForwardError> {
    let bytes = encode(&batch).map_err(|e| ForwardError::Protocol(e.to_string()))?;
    let b = call_gateway(gateway, GatewayMsg::CheckBatch, bytes, timeout, peer).await?;
    decode::<ForwardReply>(&b).map_err(|e| ForwardError::Protocol(format!("{peer}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{check, recorder, shared};
    use super::super::gateway::Gateway;
    use super::super::peers::Shared;
    use super::*;
    use ractor::Actor;
    use ringlimit_protocol::validate::ValidateOutcome;

    /// A link from `sender` to the gateway `gw` of node `o`.
    fn link_from(sender: &Shared, gw: &ActorRef<GatewayMsg>) -> PeerLink {
        let version = sender.ring().version();
        PeerLink::spawn(
            "o".into(),
            gw.clone(),
            &sender.cfg,
            Arc::new(move || version),
        )
    }

    async fn link_batches(k: usize, max_batch: usize, then: usize) -> Vec<usize> {
        let owner_handler = recorder("o", 100);
        let owner = shared("o", &[], owner_handler.clone(), 4, 256);
        let (gw, _) = Actor::spawn(None, Gateway, (owner, None))
            .await
            .expect("gateway");
        let sender = shared("s", &["o"], recorder("s", 0), k, max_batch);
        let link = link_from(&sender, &gw);
        let mut rxs = Vec::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(link.submit(Pending {
            check: check("first"),
            tx
        }));
        rxs.push(rx);
        tokio::time::sleep(Duration::from_millis(30)).await;
        for i in 0..then {
            let (tx, rx) = tokio::sync::oneshot::channel();
            assert!(link.submit(Pending {
                check: check(&format!("k{i}")),
                tx
            }));
            rxs.push(rx);
        }
        for rx in rxs {
            match rx.await.expect("answered") {
                Ok(ForwardOutcome::Decided(ValidateOutcome::Allowed(c))) => {
                    assert_eq!(c.tier, "o")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        link.close();
        gw.stop(None);
        owner_handler.sizes.lock().clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_with_k1_sends_what_queued_behind_a_batch_as_one() {
        assert_eq!(link_batches(1, 256, 10).await, vec![1, 10]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_splits_at_the_batch_cap() {
        assert_eq!(link_batches(1, 4, 10).await, vec![1, 4, 4, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_link_fails_queued_checks_as_unreachable() {
        let owner = shared("o", &[], recorder("o", 300), 4, 256);
        let (gw, _) = Actor::spawn(None, Gateway, (owner, None))
            .await
            .expect("gateway");
        let sender = shared("s", &["o"], recorder("s", 0), 1, 256);
        let link = link_from(&sender, &gw);
        let (tx1, rx1) = tokio::sync::oneshot::channel();
        let (tx2, rx2) = tokio::sync::oneshot::channel();
        assert!(link.submit(Pending {
            check: check("a"),
            tx: tx1
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(link.submit(Pending {
            check: check("b"),
            tx: tx2
        }));
        link.close();
        assert_eq!(
            rx2.await.expect("answered"),
            Err(ForwardError::Unreachable { peer: "o".into() })
        );
        assert!(
            matches!(rx1.await.expect("answered"), Ok(ForwardOutcome::Decided(_))),
            "in flight completes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (tx3, _rx3) = tokio::sync::oneshot::channel();
        assert!(
            !link.submit(Pending {
                check: check("c"),
                tx: tx3
            }),
            "closed"
        );
        gw.stop(None);
    }
}
