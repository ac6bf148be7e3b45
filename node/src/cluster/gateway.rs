//! The gateway: the one remotable actor of a node.
//!
//! Its message type, [`GatewayMsg`], is a `RactorClusterMessage`, so
//! ractor_cluster advertises it to every peer, where it shows up in the
//! process group [`SCOPE`]/[`GROUP`]. Every variant carries one MessagePack
//! payload ([`ringlimit_protocol::cluster`]) as `Vec<u8>`; RPCs reply with one
//! too. The gateway does no work of its own: membership messages go to the
//! cluster driver, checks, admin events and handoffs to the
//! [`ClusterHandler`](super::ClusterHandler) in tasks of their own, so a slow
//! handler never blocks heartbeats.

use super::messages::{CoreMsg, GROUP, GatewayMsg, SCOPE};
use super::peers::Shared;
use super::wire::{decode, encode};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ringlimit_protocol::cluster::{
    Ack, AdminEvent, ForwardBatch, ForwardOutcome, ForwardReply, Handoff, Hello, Leave,
};
use ringlimit_protocol::validate::ValidateOutcome;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

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
                send_reply(reply, "identify", &st.shared.hello());
            }
            GatewayMsg::Status(_, reply) => {
                let _ = reply.send(st.shared.heartbeat());
            }
            GatewayMsg::Leave(b, reply) => {
                serve_rpc(&b, reply, "leave", |l: Leave| async move {
                    st.to_core(CoreMsg::PeerLeaving(l));
                    Ack {
                        ok: true,
                        error: None,
                    }
                })
                .await;
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
                    serve_rpc(&b, reply, "admin", |ev: AdminEvent| async move {
                        match shared.handler.admin_event(ev).await {
                            Ok(()) => Ack {
                                ok: true,
                                error: None,
                            },
                            Err(e) => Ack {
                                ok: false,
                                error: Some(e.to_string()),
                            },
                        }
                    })
                    .await;
                });
            }
            GatewayMsg::Handoff(b, reply) => {
                let shared = st.shared.clone();
                tokio::spawn(async move {
                    serve_rpc(&b, reply, "handoff", |h: Handoff| async move {
                        match shared.handler.handoff(h).await {
                            Ok(()) => Ack {
                                ok: true,
                                error: None,
                            },
                            Err(e) => Ack::refused(e.to_string()),
                        }
                    })
                    .await;
                });
            }
        }
        Ok(())
    }
}

/// An acknowledgement that can say why a request was refused.
trait Refusal {
    fn refused(error: String) -> Self;
}

impl Refusal for Ack {
    fn refused(error: String) -> Ack {
        Ack {
            ok: false,
            error: Some(error),
        }
    }
}

/// Serves one acknowledged RPC: decodes the request, lets `serve` act on it
/// and build the ack (a request that does not decode is refused with the
/// decode error), and replies with the encoded ack.
async fn serve_rpc<Req, A, F>(
    bytes: &[u8],
    reply: RpcReplyPort<Vec<u8>>,
    what: &str,
    serve: impl FnOnce(Req) -> F,
) where
    Req: DeserializeOwned,
    A: Refusal + Serialize,
    F: Future<Output = A>,
{
    let ack = match decode::<Req>(bytes) {
        Ok(req) => serve(req).await,
        Err(e) => A::refused(e.to_string()),
    };
    send_reply(reply, what, &ack);
}

/// Replies with `answer` encoded (see [`encode_answer`]).
fn send_reply<T: Serialize>(reply: RpcReplyPort<Vec<u8>>, what: &str, answer: &T) {
    let _ = reply.send(encode_answer(what, answer));
}

/// Encodes the answer to an RPC. One that cannot be encoded is logged, and
/// the answer is empty bytes (see [`GatewayMsg`]).
fn encode_answer<T: Serialize>(what: &str, answer: &T) -> Vec<u8> {
    match encode(answer) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, rpc = what, "cannot encode the answer to a peer");
            Vec::new()
        }
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
    encode_answer("check_batch", &reply)
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{check, recorder, shared};
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_receiver_answers_only_for_keys_it_owns() {
        let rec = recorder("a", 0);
        let sh = shared("a", &["b"], rec.clone(), 4, 256);
        let ring = sh.ring();
        let mine = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| ring.owner(k) == "a")
            .expect("a key of a");
        let theirs = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| ring.owner(k) == "b")
            .expect("a key of b");
        let batch = ForwardBatch {
            from: "b".into(),
            ring_version: 7,
            checks: vec![check(&mine), check(&theirs), check(&mine)],
        };
        let reply = answer_batch(&sh, batch).await;
        assert_eq!(reply.results.len(), 3);
        assert!(matches!(
            &reply.results[0],
            ForwardOutcome::Decided(ValidateOutcome::Allowed(_))
        ));
        assert_eq!(
            reply.results[1],
            ForwardOutcome::NotOwner {
                ring_version: ring.version()
            }
        );
        assert!(matches!(
            &reply.results[2],
            ForwardOutcome::Decided(ValidateOutcome::Allowed(_))
        ));
        assert_eq!(
            *rec.sizes.lock(),
            vec![2],
            "the handler sees owned checks only"
        );
        // A bad frame is an empty answer, not a panic.
        assert!(serve_batch(&sh, &[0x01, 0x02]).await.is_empty());
    }

    #[tokio::test]
    async fn an_acknowledged_rpc_acts_or_refuses_with_the_decode_error() {
        let leave = Leave {
            from: "b".into(),
            incarnation: 3,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        serve_rpc(
            &encode(&leave).expect("encode"),
            tx.into(),
            "leave",
            |l: Leave| async move {
                assert_eq!(l.from, "b");
                Ack {
                    ok: true,
                    error: None,
                }
            },
        )
        .await;
        let ack: Ack = decode(&rx.await.expect("answered")).expect("an ack");
        assert!(ack.ok && ack.error.is_none());

        let (tx, rx) = tokio::sync::oneshot::channel();
        serve_rpc(&[0x01, 0x02], tx.into(), "handoff", |_: Handoff| async {
            Ack {
                ok: true,
                error: None,
            }
        })
        .await;
        let ack: Ack = decode(&rx.await.expect("answered")).expect("a handoff ack");
        assert!(!ack.ok);
        assert!(ack.error.is_some());
    }
}
