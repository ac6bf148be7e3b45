//! What the cluster's actors and tasks send each other, and what the layer
//! answers its callers: the gateway's wire messages ([`GatewayMsg`]) and the
//! one RPC helper that calls them, the driver's inbox (`CoreMsg`), the
//! [`ClusterHandler`] the service implements, the errors and reports of
//! forwarded calls, and the splitting of a handoff into frames.

use super::ring::{Ring, RingChange};
use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorId, ActorRef, RpcReplyPort};
use ractor_cluster::{NodeSessionMessage, RactorClusterMessage};
use ringlimit_protocol::cluster::{
    AdminEvent, ForwardBatch, ForwardReply, Handoff, Heartbeat, Hello, Leave,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why a forwarded call did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// No session to the peer, or it went away during the call.
    #[error("peer {peer} is unreachable")]
    Unreachable { peer: String },
    /// No answer within the timeout.
    #[error("peer {peer} did not answer in time")]
    Timeout { peer: String },
    /// Too many checks already queued for the peer.
    #[error("too many checks queued for peer {peer}")]
    Overloaded { peer: String },
    /// The owner is this node: answer locally.
    #[error("the owner is this node")]
    Local,
    /// A payload could not be encoded or decoded, or was refused.
    #[error("cluster protocol error: {0}")]
    Protocol(String),
}

impl ForwardError {
    /// Whether the same call may succeed later (the fail-open/closed choice applies).
    pub fn is_transient(&self) -> bool {
        !matches!(self, ForwardError::Local | ForwardError::Protocol(_))
    }
}

/// Why a [`ClusterHandler`] did not take what a peer sent. Its text travels
/// back to the sender (in
/// [`Ack::error`](ringlimit_protocol::cluster::Ack::error)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The handler refuses it, for the reason given.
    #[error("{0}")]
    Refused(String),
}

/// What the service does with what arrives from peers.
#[async_trait::async_trait]
pub trait ClusterHandler: Send + Sync + 'static {
    /// Decides checks this node owns (by its ring, already checked). One
    /// outcome per check, in order; the handler may still answer `NotOwner`
    /// (say, if the ring moved since).
    async fn check_batch(&self, batch: ForwardBatch) -> ForwardReply;
    /// An admin change made on another node.
    /// Applies an admin change; `Err` when it could not be applied (the
    /// sender sees a refused acknowledgement and retries).
    async fn admin_event(&self, ev: AdminEvent) -> Result<(), HandlerError>;
    /// A handoff marker from a node that flushed the keys it handed over.
    async fn handoff(&self, h: Handoff) -> Result<(), HandlerError>;
    /// The ring changed (called from the cluster driver: keep it short, hand
    /// long work to a task).
    fn on_ring_change(&self, change: &RingChange, ring: &Arc<Ring>);
}

/// Delivery of a broadcast.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    pub delivered: Vec<String>,
    pub failed: Vec<(String, ForwardError)>,
}

/// The process-group scope of ringlimit's gateways.
pub const SCOPE: &str = "ringlimit";
/// The process group every node's gateway joins.
pub const GROUP: &str = "gateway";

/// What a gateway accepts from peers. Field order and variant names are wire format.
///
/// The gateway actor (`gateway`) serves it. An answer it cannot encode is
/// logged and sent as empty bytes, which the caller cannot decode and takes
/// as a protocol error.
#[derive(RactorClusterMessage)]
pub enum GatewayMsg {
    /// [`Hello`] of the caller → [`Hello`] of this node.
    #[rpc]
    Identify(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// (empty) → this node's latest [`Heartbeat`]. Heartbeats are pulled:
    /// the caller knows which session, and so which authenticated peer,
    /// answered.
    #[rpc]
    Status(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// [`Leave`] → [`Ack`](ringlimit_protocol::cluster::Ack).
    #[rpc]
    Leave(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// [`ForwardBatch`] → [`ForwardReply`] (empty bytes on a bad frame).
    #[rpc]
    CheckBatch(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// [`AdminEvent`] → [`Ack`](ringlimit_protocol::cluster::Ack).
    #[rpc]
    Admin(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// [`Handoff`] → [`Ack`](ringlimit_protocol::cluster::Ack).
    #[rpc]
    Handoff(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

impl std::fmt::Debug for GatewayMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, len) = match self {
            GatewayMsg::Identify(b, _) => ("Identify", b.len()),
            GatewayMsg::Status(b, _) => ("Status", b.len()),
            GatewayMsg::Leave(b, _) => ("Leave", b.len()),
            GatewayMsg::CheckBatch(b, _) => ("CheckBatch", b.len()),
            GatewayMsg::Admin(b, _) => ("Admin", b.len()),
            GatewayMsg::Handoff(b, _) => ("Handoff", b.len()),
        };
        write!(f, "GatewayMsg::{name}({len} bytes)")
    }
}

/// Calls a peer's gateway with one encoded payload and returns the encoded
/// answer: no answer within `timeout` is [`ForwardError::Timeout`], a gateway
/// or session that went away is [`ForwardError::Unreachable`].
pub(crate) async fn call_gateway(
    gateway: &ActorRef<GatewayMsg>,
    msg: fn(Vec<u8>, RpcReplyPort<Vec<u8>>) -> GatewayMsg,
    bytes: Vec<u8>,
    timeout: Duration,
    peer: &str,
) -> Result<Vec<u8>, ForwardError> {
    match gateway.call(|r| msg(bytes, r), Some(timeout)).await {
        Ok(CallResult::Success(b)) => Ok(b),
        Ok(CallResult::Timeout) => Err(ForwardError::Timeout {
            peer: peer.to_string(),
        }),
        Ok(CallResult::SenderError) | Err(_) => Err(ForwardError::Unreachable {
            peer: peer.to_string(),
        }),
    }
}

/// What the cluster driver hears: from the ticker, the local gateway, the
/// NodeServer's events and its own I/O tasks.
pub(crate) enum CoreMsg {
    Tick,
    /// A heartbeat pulled from the gateway of the session authenticated as
    /// `name` (the answer's `from` already checked against it).
    Heartbeat {
        name: String,
        hb: Heartbeat,
    },
    PeerLeaving(Leave),
    Hello(Hello),
    SessionOpened {
        actor: ActorRef<NodeSessionMessage>,
    },
    SessionAuthenticated {
        actor: ActorRef<NodeSessionMessage>,
        /// The session's node id: remote actors reached through it carry it.
        node_id: u64,
        name: String,
        conn: String,
        peer_addr: String,
        is_server: bool,
    },
    SessionClosed {
        id: ActorId,
    },
    Sessions(Vec<(ActorRef<NodeSessionMessage>, u64, String)>),
    Identified {
        cell: ActorCell,
        hello: Hello,
    },
    IdentifyFailed {
        id: ActorId,
    },
    Dialed {
        addr: String,
        resolved: Option<SocketAddr>,
        error: Option<String>,
        is_self: bool,
    },
    /// Tell peers this node leaves; keep sessions for handoffs.
    AnnounceLeave(RpcReplyPort<()>),
}

impl ractor::Message for CoreMsg {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors() {
        assert!(ForwardError::Timeout { peer: "b".into() }.is_transient());
        assert!(ForwardError::Unreachable { peer: "b".into() }.is_transient());
        assert!(!ForwardError::Protocol("x".into()).is_transient());
    }
}
