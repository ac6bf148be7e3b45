//! The [`PipelineSupervisor`]: starts the three workers and restarts any that
//! stops or fails, pausing when one keeps failing.

use super::worker::{WorkerActor, WorkerMsg};
use super::{Ctx, Kind, alerts, billing, metric, violations};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Messages of the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Start this pipeline's worker (again).
    Respawn(Kind),
}
impl ractor::Message for SupervisorMsg {}

/// State of the supervisor: the shared context and recent restart times.
#[derive(Debug)]
pub struct SupervisorState {
    ctx: Arc<Ctx>,
    recent: HashMap<Kind, Vec<Instant>>,
}

/// Starts the workers and restarts any that stops or fails.
#[derive(Debug)]
pub struct PipelineSupervisor;

async fn spawn_worker(
    kind: Kind,
    ctx: &Arc<Ctx>,
    sup: ActorCell,
) -> Result<(), ActorProcessingErr> {
    let c = Arc::clone(ctx);
    let actor: ActorRef<WorkerMsg> = match kind {
        Kind::Violations => {
            Actor::spawn_linked(
                None,
                WorkerActor::<violations::ViolationWorker>::default(),
                c,
                sup,
            )
            .await?
            .0
        }
        Kind::Billing => {
            Actor::spawn_linked(
                None,
                WorkerActor::<billing::BillingWorker>::default(),
                c,
                sup,
            )
            .await?
            .0
        }
        Kind::Alerts => {
            Actor::spawn_linked(None, WorkerActor::<alerts::AlertWorker>::default(), c, sup)
                .await?
                .0
        }
    };
    ctx.workers.lock().insert(kind, actor);
    Ok(())
}

/// More restarts than this within `RESTART_WINDOW` delay the next one by
/// `RESTART_BACKOFF`: a worker that fails on every start does not spin.
const RESTART_BURST: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(10);
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

impl Actor for PipelineSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<Ctx>;

    async fn pre_start(
        &self,
        me: ActorRef<SupervisorMsg>,
        ctx: Arc<Ctx>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        for kind in Kind::ALL {
            spawn_worker(kind, &ctx, me.get_cell()).await?;
        }
        Ok(SupervisorState {
            ctx,
            recent: HashMap::new(),
        })
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        ev: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = &st.ctx;
        let (dead, why) = match &ev {
            SupervisionEvent::ActorTerminated(c, _, reason) => (
                c.get_id(),
                reason.clone().unwrap_or_else(|| "stopped".into()),
            ),
            SupervisionEvent::ActorFailed(c, e) => (c.get_id(), format!("failed: {e}")),
            _ => return Ok(()),
        };
        let kind = ctx
            .workers
            .lock()
            .iter()
            .find(|(_, a)| a.get_id() == dead)
            .map(|(k, _)| *k);
        let Some(kind) = kind else { return Ok(()) };
        if ctx.draining() {
            return Ok(());
        }
        tracing::warn!(pipeline = kind.as_str(), reason = %why, "pipeline actor stopped; restarting it");
        ctx.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::RESTARTS, "pipeline" => kind.as_str()).increment(1);
        let recent = st.recent.entry(kind).or_default();
        recent.retain(|t| t.elapsed() < RESTART_WINDOW);
        recent.push(Instant::now());
        if recent.len() > RESTART_BURST {
            tracing::error!(
                pipeline = kind.as_str(),
                "pipeline actor keeps stopping; restarting it after a pause"
            );
            me.send_after(RESTART_BACKOFF, move || SupervisorMsg::Respawn(kind));
        } else {
            me.send_message(SupervisorMsg::Respawn(kind))?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Respawn(kind) = msg;
        if st.ctx.draining() {
            return Ok(());
        }
        if let Err(e) = spawn_worker(kind, &st.ctx, me.get_cell()).await {
            tracing::error!(pipeline = kind.as_str(), error = %e, "pipeline actor failed to start; retrying");
            me.send_after(RESTART_BACKOFF, move || SupervisorMsg::Respawn(kind));
        }
        Ok(())
    }
}
