//! Test fixtures of the cluster layer: a recording handler, a node's shared
//! state without the actors, and a check.

use super::config::ClusterConfig;
use super::messages::{ClusterHandler, HandlerError};
use super::peers::Shared;
use super::ring::{Ring, RingChange};
use ringlimit_protocol::cluster::{
    AdminEvent, ForwardBatch, ForwardCheck, ForwardOutcome, ForwardReply, Handoff,
};
use ringlimit_protocol::validate::{Checked, ValidateOutcome};
use std::sync::Arc;
use std::time::Duration;

/// Answers every check as `name`, after `delay`, recording batch sizes.
pub(crate) struct Recorder {
    name: String,
    delay: Duration,
    pub sizes: parking_lot::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl ClusterHandler for Recorder {
    async fn check_batch(&self, batch: ForwardBatch) -> ForwardReply {
        self.sizes.lock().push(batch.checks.len());
        tokio::time::sleep(self.delay).await;
        ForwardReply {
            results: batch
                .checks
                .into_iter()
                .map(|c| {
                    ForwardOutcome::Decided(ValidateOutcome::Allowed(Checked {
                        key_id: c.key_id.into(),
                        tier: self.name.as_str().into(),
                        limits: vec![],
                        retry_after_ms: None,
                        denied_by: None,
                    }))
                })
                .collect(),
        }
    }
    async fn admin_event(&self, _ev: AdminEvent) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn handoff(&self, _h: Handoff) -> Result<(), HandlerError> {
        Ok(())
    }
    fn on_ring_change(&self, _c: &RingChange, _r: &Arc<Ring>) {}
}

pub(crate) fn recorder(name: &str, delay_ms: u64) -> Arc<Recorder> {
    Arc::new(Recorder {
        name: name.into(),
        delay: Duration::from_millis(delay_ms),
        sizes: parking_lot::Mutex::new(vec![]),
    })
}

pub(crate) fn shared(
    name: &str,
    peers: &[&str],
    handler: Arc<dyn ClusterHandler>,
    k: usize,
    max_batch: usize,
) -> Arc<Shared> {
    let mut cfg = ClusterConfig::new(
        name,
        "127.0.0.1:1".parse().expect("addr"),
        "fixture-cluster-cookie-0123456789",
        vec![],
    );
    cfg.max_in_flight_batches = k;
    cfg.max_batch = max_batch;
    cfg.max_queued_checks = 1000;
    let sh = Arc::new(Shared::new(cfg, "127.0.0.1:1".into(), 1, handler));
    sh.set_ring(Arc::new(Ring::new(name, peers.iter().copied())));
    sh
}

pub(crate) fn check(key: &str) -> ForwardCheck {
    ForwardCheck {
        id: 0,
        key_id: key.into(),
        secret_hash: [1; 32],
        cost: 1,
        now_us: 0,
        resource: None,
        client_ip: None,
    }
}
