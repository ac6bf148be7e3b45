//! What the pipelines see of the node ([`Host`]): the key cache, the
//! write-behind's backlog, and a way to ask for a key's suspension.
//!
//! It is built from the [`Core`](crate::core::Core) before the pipelines
//! start, and the pipelines are built before the [`Service`] that feeds them,
//! so nothing is attached after construction. Suspensions are the one thing
//! only the service can do (store, cache, audit, broadcast): the host sends
//! them as requests, which [`Service::serve_suspensions`] answers.

use super::Service;
use crate::catalog::LimitsSource;
use crate::keys::KeyRecord;
use crate::pipeline::{Host, HostError};
use crate::writebehind::WriteBehind;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A suspension a pipeline asks for (abuse detection).
#[derive(Debug)]
pub struct SuspendRequest {
    key_id: String,
    until_ms: u64,
    reason: String,
    reply: oneshot::Sender<Result<(), HostError>>,
}

/// Where suspension requests arrive, for [`Service::serve_suspensions`].
pub type Suspensions = mpsc::UnboundedReceiver<SuspendRequest>;

/// The node as the pipelines see it.
#[derive(Debug, Clone)]
pub struct NodeHost {
    source: Arc<LimitsSource>,
    write_behind: Arc<WriteBehind>,
    requests: mpsc::UnboundedSender<SuspendRequest>,
}

impl NodeHost {
    /// A host over a node's key cache and write-behind, and the receiving
    /// end of its suspension requests.
    pub fn new(
        source: Arc<LimitsSource>,
        write_behind: Arc<WriteBehind>,
    ) -> (NodeHost, Suspensions) {
        let (requests, rx) = mpsc::unbounded_channel();
        (
            NodeHost {
                source,
                write_behind,
                requests,
            },
            rx,
        )
    }
}

#[async_trait::async_trait]
impl Host for NodeHost {
    fn key(&self, key_id: &str) -> Option<Arc<KeyRecord>> {
        self.source.keys.get(key_id)
    }

    fn keys(&self) -> Vec<Arc<KeyRecord>> {
        self.source.keys.all()
    }

    async fn suspend(&self, key_id: &str, until_ms: u64, reason: &str) -> Result<(), HostError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(SuspendRequest {
                key_id: key_id.to_owned(),
                until_ms,
                reason: reason.to_owned(),
                reply,
            })
            .map_err(|_| HostError::Unavailable)?;
        answer.await.unwrap_or(Err(HostError::Unavailable))
    }

    fn writebehind_pending(&self) -> usize {
        self.write_behind.pending_len()
    }

    fn unwritten_usage_before(
        &self,
        g: ringlimit_protocol::admin::Granularity,
        end_ms: u64,
    ) -> bool {
        self.write_behind.unwritten_usage_before(g, end_ms)
    }
}

impl Service {
    /// Answers the pipelines' suspension requests until their host is gone.
    pub async fn serve_suspensions(self: Arc<Self>, mut requests: Suspensions) {
        while let Some(r) = requests.recv().await {
            let result = self
                .suspend_for_rule(&r.key_id, r.until_ms, &r.reason)
                .await;
            let _ = r.reply.send(result);
        }
    }

    /// A suspension by an abuse rule: it never shortens one already in
    /// force (an operator's indefinite one, or a longer one).
    async fn suspend_for_rule(
        &self,
        key_id: &str,
        until_ms: u64,
        reason: &str,
    ) -> Result<(), HostError> {
        if let Some(k) = self.source.keys.get(key_id)
            && k.suspended_at(self.now_ms())
            && k.suspended_until_ms.is_none_or(|u| u >= until_ms)
        {
            return Ok(());
        }
        self.suspend_key(key_id, Some(until_ms), reason)
            .await
            .map(|_| ())
            .map_err(HostError::from)
    }
}
