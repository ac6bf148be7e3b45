//! The gateway: the one remotable actor of a node.
//!
//! Its message type is a `RactorClusterMessage`, so ractor_cluster advertises
//! it to every peer, where it shows up in the process group
//! [`SCOPE`]/[`GROUP`]. Every variant carries one MessagePack payload
//! ([`ringlimit_protocol::cluster`]) as `Vec<u8>`; RPCs reply with one too.
//! The gateway does no work of its own: membership messages go to the
//! cluster driver, checks, admin events and handoffs to the
//! [`ClusterHandler`](super::ClusterHandler) in tasks of their own, so a slow
//! handler never blocks heartbeats.

use super::Shared;
use super::driver::CoreMsg;
use super::wire::{decode, encode};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use ringlimit_protocol::cluster::{
    Ack, AdminEvent, ForwardBatch, ForwardOutcome, ForwardReply, Handoff, HandoffAck, Heartbeat,
    Hello, Leave,
};
use ringlimit_protocol::validate::ValidateOutcome;
use std::sync::Arc;

/// The process-group scope of ringlimit's gateways.
pub const SCOPE: &str = "ringlimit";
/// The process group every node's gateway joins.
pub const GROUP: &str = "gateway";

/// What a gateway accepts from peers. Field order and variant names are wire format.
#[derive(RactorClusterMessage)]
pub enum GatewayMsg {
    /// [`Hello`] of the caller → [`Hello`] of this node.
    #[rpc]
    Identify(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// [`Heartbeat`].
    Heartbeat(Vec<u8>),
    /// [`Leave`] → [`Ack`].
    #[rpc]
    Leave(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// [`ForwardBatch`] → [`ForwardReply`] (empty bytes on a bad frame).
    #[rpc]
    CheckBatch(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// [`AdminEvent`] → [`Ack`].
    #[rpc]
    Admin(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// [`Handoff`] → [`HandoffAck`].
    #[rpc]
    Handoff(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

impl std::fmt::Debug for GatewayMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, len) = match self {
            GatewayMsg::Identify(b, _) => ("Identify", b.len()),
            GatewayMsg::Heartbeat(b) => ("Heartbeat", b.len()),
            GatewayMsg::Leave(b, _) => ("Leave", b.len()),
            GatewayMsg::CheckBatch(b, _) => ("CheckBatch", b.len()),
            GatewayMsg::Admin(b, _) => ("Admin", b.len()),
            GatewayMsg::Handoff(b, _) => ("Handoff", b.len()),
        };
        write!(f, "GatewayMsg::{name}({len} bytes)")
    }
}

/// The gateway actor.
#[derive(Debug)]
pub(crate) struct Gateway;

pub(crate) struct GatewayState {
    shared: Arc<Shared>,
    /// The driver (absent in tests of the data path alone).
    core: Option<ActorRef<CoreMsg>>,
}

impl GatewayState {
    fn to_core(&self, m: CoreMsg) {
        if let Some(c) = &self.core {
            let _ = c.cast(m);
        }
    }
}

impl Actor for Gateway {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = (Arc<Shared>, Option<ActorRef<CoreMsg>>);

    async fn pre_start(
        &self,
        me: ActorRef<GatewayMsg>,
        (shared, core): (Arc<Shared>, Option<ActorRef<CoreMsg>>),
    ) -> Result<GatewayState, ActorProcessingErr> {
        ractor::pg::join_scoped(SCOPE.to_string(), GROUP.to_string(), vec![me.get_cell()]);
        Ok(GatewayState { shared, core })
    }

    async fn handle(
        &self,
        _me: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        st: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::Identify(b, reply) => {
                match decode::<Hello>(&b) {
                    Ok(h) => st.to_core(CoreMsg::Hello(h)),
                    Err(e) => tracing::warn!(error = %e, "bad identify frame"),
                }
                let _ = reply.send(encode(&st.shared.hello()).unwrap_or_default());
            }
            GatewayMsg::Heartbeat(b) => match decode::<Heartbeat>(&b) {
                Ok(hb) => st.to_core(CoreMsg::Heartbeat(hb)),
                Err(e) => tracing::warn!(error = %e, "bad heartbeat frame"),
            },
            GatewayMsg::Leave(b, reply) => {
                let ack = match decode::<Leave>(&b) {
                    Ok(l) => {
                        st.to_core(CoreMsg::PeerLeaving(l));
                        Ack {
                            ok: true,
                            error: None,
                        }
                    }
                    Err(e) => Ack {
                        ok: false,
                        error: Some(e.to_string()),
                    },
                };
                let _ = reply.send(encode(&ack).unwrap_or_default());
            }
            GatewayMsg::CheckBatch(b, reply) => {
                let shared = st.shared.clone();
                tokio::spawn(async move {
                    let out = serve_batch(&shared, &b).await;
                    let _ = reply.send(out);
                });
            }
            GatewayMsg::Admin(b, reply) => {
                let shared = st.shared.clone();
                tokio::spawn(async move {
                    let ack = match decode::<AdminEvent>(&b) {
                        Ok(ev) => {
                            shared.handler.admin_event(ev).await;
                            Ack {
                                ok: true,
                                error: None,
                            }
                        }
                        Err(e) => Ack {
                            ok: false,
                            error: Some(e.to_string()),
                        },
                    };
                    let _ = reply.send(encode(&ack).unwrap_or_default());
                });
            }
            GatewayMsg::Handoff(b, reply) => {
                let shared = st.shared.clone();
                tokio::spawn(async move {
                    let ack = match decode::<Handoff>(&b) {
                        Ok(h) => {
                            let n = h.states.len() as u64;
                            match shared.handler.handoff(h).await {
                                Ok(()) => HandoffAck {
                                    accepted: n,
                                    error: None,
                                },
                                Err(e) => HandoffAck {
                                    accepted: 0,
                                    error: Some(e),
                                },
                            }
                        }
                        Err(e) => HandoffAck {
                            accepted: 0,
                            error: Some(e.to_string()),
                        },
                    };
                    let _ = reply.send(encode(&ack).unwrap_or_default());
                });
            }
        }
        Ok(())
    }
}

/// Answers a forwarded batch: checks this node does not own by its ring get
/// `NotOwner` with its ring version; the handler sees only owned checks.
pub(crate) async fn serve_batch(shared: &Shared, bytes: &[u8]) -> Vec<u8> {
    let batch: ForwardBatch = match decode(bytes) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "bad forwarded batch");
            return Vec::new();
        }
    };
    let reply = answer_batch(shared, batch).await;
    encode(&reply).unwrap_or_default()
}

pub(crate) async fn answer_batch(shared: &Shared, batch: ForwardBatch) -> ForwardReply {
    let ring = shared.ring();
    let n = batch.checks.len();
    let mut results: Vec<Option<ForwardOutcome>> = (0..n).map(|_| None).collect();
    let mut owned_at = Vec::new();
    let mut owned = Vec::new();
    for (i, c) in batch.checks.into_iter().enumerate() {
        if ring.owner(&c.key_id) == shared.name {
            owned_at.push(i);
            owned.push(c);
        } else {
            results[i] = Some(ForwardOutcome::NotOwner {
                ring_version: ring.version(),
            });
        }
    }
    if batch.ring_version != ring.version() {
        tracing::debug!(from = %batch.from, theirs = batch.ring_version, ours = ring.version(), "forwarded batch from another ring version");
    }
    if !owned.is_empty() {
        let want = owned.len();
        let reply = shared
            .handler
            .check_batch(ForwardBatch {
                from: batch.from,
                ring_version: ring.version(),
                checks: owned,
            })
            .await;
        if reply.results.len() == want {
            for (i, r) in owned_at.into_iter().zip(reply.results) {
                results[i] = Some(r);
            }
        } else {
            tracing::error!(
                want,
                got = reply.results.len(),
                "cluster handler answered the wrong number of checks"
            );
            for i in owned_at {
                results[i] = Some(internal_error("owner answered the wrong number of checks"));
            }
        }
    }
    ForwardReply {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| internal_error("unanswered check")))
            .collect(),
    }
}

fn internal_error(msg: &str) -> ForwardOutcome {
    ForwardOutcome::Decided(ValidateOutcome::unavailable(msg))
}
