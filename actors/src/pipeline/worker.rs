//! The worker actor: runs one pipeline's [`Worker`] every tick, backs off
//! after a failed store write, and drains its queue on request.

use super::{Ctx, Kind, metric};
use crate::storage::StoreError;
use async_trait::async_trait;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Messages of a worker actor.
#[derive(Debug)]
pub enum WorkerMsg {
    /// Look at the queue (self-scheduled every `tick`).
    Tick,
    /// Process until the queue is empty or the deadline; answers whether it is empty.
    Drain(Instant, RpcReplyPort<bool>),
}
impl ractor::Message for WorkerMsg {}

/// One pipeline's logic, run by a [`WorkerActor`].
#[async_trait]
pub trait Worker: Send + Sync + Sized + 'static {
    const KIND: Kind;
    fn new(ctx: Arc<Ctx>) -> Self;
    /// One round: process one batch from the queue and any periodic work.
    /// `Ok(true)` when more is waiting.
    async fn round(&mut self, now_ms: u64) -> Result<bool, StoreError>;
    /// Whether the queue (and in-flight batch) is empty.
    fn idle(&self) -> bool;
}

/// State of a worker actor.
pub struct WorkerState<W> {
    w: W,
    ctx: Arc<Ctx>,
    backoff: Duration,
    next_try: Instant,
}

impl<W> std::fmt::Debug for WorkerState<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerState")
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl<W> std::fmt::Debug for WorkerActor<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerActor")
    }
}

/// The actor that runs a [`Worker`].
pub struct WorkerActor<W>(std::marker::PhantomData<fn() -> W>);

impl<W> Default for WorkerActor<W> {
    fn default() -> Self {
        WorkerActor(std::marker::PhantomData)
    }
}

impl<W: Worker> WorkerState<W> {
    /// Rounds until nothing is waiting (or a write fails).
    async fn work(&mut self, until: Option<Instant>) -> bool {
        loop {
            if until.is_some_and(|u| Instant::now() >= u) {
                return self.w.idle();
            }
            match self.w.round(crate::clock::wall_ms()).await {
                // Let the checks on this runtime thread run between batches.
                Ok(true) => tokio::task::yield_now().await,
                Ok(false) => {
                    self.backoff = Duration::ZERO;
                    return self.w.idle();
                }
                Err(e) => {
                    metrics::counter!(metric::FAILURES, "pipeline" => W::KIND.as_str())
                        .increment(1);
                    self.backoff = (self.backoff * 2)
                        .max(self.ctx.config.tick)
                        .min(self.ctx.config.max_backoff);
                    self.next_try = Instant::now() + self.backoff;
                    tracing::warn!(pipeline = W::KIND.as_str(), error = %e, retry_in_ms = self.backoff.as_millis() as u64, "pipeline store write failed; events kept and retried");
                    return false;
                }
            }
        }
    }
}

impl<W: Worker> Actor for WorkerActor<W> {
    type Msg = WorkerMsg;
    type State = WorkerState<W>;
    type Arguments = Arc<Ctx>;

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        ctx: Arc<Ctx>,
    ) -> Result<WorkerState<W>, ActorProcessingErr> {
        Ok(WorkerState {
            w: W::new(Arc::clone(&ctx)),
            ctx,
            backoff: Duration::ZERO,
            next_try: Instant::now(),
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<WorkerMsg>,
        st: &mut WorkerState<W>,
    ) -> Result<(), ActorProcessingErr> {
        me.send_after(st.ctx.config.tick, || WorkerMsg::Tick);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut WorkerState<W>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Tick => {
                if Instant::now() >= st.next_try {
                    st.work(None).await;
                }
                me.send_after(st.ctx.config.tick, || WorkerMsg::Tick);
            }
            WorkerMsg::Drain(until, reply) => {
                let mut idle = st.work(Some(until)).await;
                while !idle && Instant::now() < until {
                    tokio::time::sleep(st.backoff.max(Duration::from_millis(20))).await;
                    idle = st.work(Some(until)).await;
                }
                let _ = reply.send(idle);
            }
        }
        Ok(())
    }
}
