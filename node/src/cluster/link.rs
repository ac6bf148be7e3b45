//! PeerLink: one per peer, a task that drives a [`Batcher`] and sends its
//! batches to the peer's gateway as `CheckBatch` RPCs.
//!
//! Callers hand a check and a oneshot to the link; the link sends it at once
//! while fewer than K batches are outstanding, otherwise queues it. Each batch
//! is sent by a task of its own that waits for the reply (at most
//! `check_timeout`), answers every check of the batch, and tells the link
//! the batch returned, which sends what queued meanwhile as the next batch.

use super::batcher::{BatchLimits, Batcher};
use super::gateway::GatewayMsg;
use super::wire::{decode, encode};
use super::{ForwardError, Shared};
use ractor::ActorRef;
use ractor::rpc::CallResult;
use ringlimit_protocol::cluster::{ForwardBatch, ForwardCheck, ForwardOutcome, ForwardReply};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub(crate) type Answer = Result<ForwardOutcome, ForwardError>;

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
    /// Starts the link task for `peer`, sending to `gateway`.
    pub fn spawn(peer: String, gateway: ActorRef<GatewayMsg>, shared: &Arc<Shared>) -> PeerLink {
        let (tx, rx) = mpsc::unbounded_channel();
        let limits = BatchLimits {
            max_in_flight: shared.cfg.max_in_flight_batches,
            max_batch: shared.cfg.max_batch,
            max_queue: shared.cfg.max_queued_checks,
        };
        let task = LinkTask {
            peer,
            gateway,
            shared: Arc::downgrade(shared),
            timeout: shared.cfg.check_timeout,
            from: shared.name.clone(),
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
    shared: Weak<Shared>,
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
        let ring_version = self.shared.upgrade().map_or(0, |s| s.ring().version());
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
    match gateway
        .call(|r| GatewayMsg::CheckBatch(bytes, r), Some(timeout))
        .await
    {
        Ok(CallResult::Success(b)) => {
            decode::<ForwardReply>(&b).map_err(|e| ForwardError::Protocol(format!("{peer}: {e}")))
        }
        Ok(CallResult::Timeout) => Err(ForwardError::Timeout {
            peer: peer.to_string(),
        }),
        Ok(CallResult::SenderError) | Err(_) => Err(ForwardError::Unreachable {
            peer: peer.to_string(),
        }),
    }
}
