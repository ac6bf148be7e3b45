//! Workers, pacing, the progress line and the timeline.
//!
//! Each worker is a tokio task owning one keep-alive connection per target;
//! it sends one request at a time and rotates over the targets (round robin).
//!
//! * **Closed loop**: every worker sends its next request as soon as the
//!   previous answer is in, until the end of the run. Latency is measured
//!   from the actual send. This finds the peak.
//! * **Open loop**: request `i` is due at `start + schedule.offset(i)`. One
//!   dispatcher task releases each request into a shared queue at its due
//!   time, whatever the workers are doing; an idle worker takes the oldest
//!   released request, sends it, and records the latency *from the due time*.
//!   When the server stalls, all workers are busy, released requests pile up,
//!   and each one's latency includes the time it waited to be sent:
//!   coordinated omission does not hide the queueing. Requests due before the
//!   end are still sent during a drain of [`DRAIN`] (1 s) after it; those
//!   still waiting then are counted as `unsent`.
//!
//! The dispatcher waits for a due time by sleeping on the tokio timer (1 ms
//! resolution) until about 2 ms before, then yielding until the instant is
//! reached, so timer slack does not show up as latency; only that one task
//! spins, the workers wait on a notification.

use crate::checker::Admission;
use crate::http::{Conn, HttpError, Target};
use crate::protocol::{Outcome, Wire};
use crate::schedule::Schedule;
use crate::stats::{self, ErrorKind, Interval, LatencySummary, Measurements};
use crate::zipf::Zipf;
use bytes::Bytes;
use hyper::Method;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// How requests are paced.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Fixed arrival schedule; latency from the intended send time.
    Open(Schedule),
    /// As fast as answers come back.
    Closed,
}

/// Which key each check uses.
#[derive(Debug, Clone)]
pub enum Picker {
    /// Zipf popularity over all keys (rank 0 = key 0, the most popular).
    Zipf(Arc<Zipf>),
    /// Every check on key 0.
    Hot,
    /// Keys in order, 0, 1, …, n-1, 0, … across all workers: each key comes
    /// back only after every other key has been used once.
    Cycle,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub wire: Wire,
    pub targets: Vec<Target>,
    pub mode: Mode,
    pub connections: usize,
    /// Not recorded (but sent, and checked for over-admission).
    pub warmup: Duration,
    /// Recorded.
    pub duration: Duration,
    pub timeout: Duration,
    /// Checks per request: `None` for single validates.
    pub batch: Option<usize>,
    pub picker: Picker,
    pub seed: u64,
    /// One pre-serialised item per key.
    pub items: Arc<Vec<Bytes>>,
    /// Units per check, as put in the items.
    pub cost: u32,
    /// Record allowed checks for the over-admission checker, at most this many.
    pub record_admissions: Option<usize>,
    /// Print a progress line every second on stderr.
    pub progress: bool,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// End of the interval, seconds after the start of measurement.
    pub t_s: f64,
    pub responses: u64,
    pub decisions: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// What a run measured.
#[derive(Debug)]
pub struct RunOutput {
    pub totals: Measurements,
    pub timeline: Vec<TimelinePoint>,
    pub admissions: Vec<Admission>,
    /// Allowed checks not recorded because the cap was reached.
    pub admissions_dropped: u64,
    /// Epoch µs of the instant admissions are measured from.
    pub anchor_epoch_us: u64,
    /// Measured span: the duration, or longer if answers came in late.
    pub elapsed: Duration,
    /// Open loop: due requests never sent because the run ended.
    pub unsent: u64,
    /// Largest latency of an allowed check (send to answer), µs.
    pub max_allowed_latency_us: u64,
    /// CPU time the load generator used during the run (Linux only).
    pub client_cpu: Option<Duration>,
}

struct Ctx {
    cfg: RunConfig,
    single_paths: Vec<String>,
    batch_paths: Vec<String>,
    anchor: Instant,
    start: Instant,
    record_from: Instant,
    end: Instant,
    total: Duration,
    /// Open loop: due instants of released requests, oldest first.
    due: Mutex<VecDeque<Instant>>,
    /// Open loop: wakes idle workers when a request is released or the dispatcher is done.
    released: Notify,
    /// Open loop: the dispatcher has released every request of the schedule.
    dispatch_done: AtomicBool,
    /// Open loop: due requests actually started.
    started: AtomicU64,
    cycle: AtomicU64,
}

struct WorkerOut {
    m: Measurements,
    admissions: Vec<Admission>,
    dropped: u64,
    last_done: Option<Instant>,
    max_allowed_latency_us: u64,
}

/// Waits until `t`: timer sleep to about 2 ms before, then yields.
pub async fn pace_until(t: Instant) {
    let now = Instant::now();
    // The timer rounds up to whole milliseconds and may wake a little late:
    // wake 2 ms early and yield for the rest.
    if t > now + Duration::from_millis(3) {
        tokio::time::sleep_until((t - Duration::from_millis(2)).into()).await;
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

fn lock(m: &Mutex<Interval>) -> std::sync::MutexGuard<'_, Interval> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Runs the load and returns what was measured.
pub async fn run(cfg: RunConfig) -> Result<RunOutput, String> {
    if cfg.targets.is_empty() || cfg.items.is_empty() {
        return Err("nothing to run: no target or no key".into());
    }
    let connections = cfg.connections.max(1);
    // Connect everything first, so the measured run does not pay for it.
    let mut all_conns: Vec<Vec<Option<Conn>>> = Vec::with_capacity(connections);
    for w in 0..connections {
        let mut v = Vec::with_capacity(cfg.targets.len());
        for t in &cfg.targets {
            match Conn::connect(t, cfg.timeout).await {
                Ok(c) => v.push(Some(c)),
                Err(e) if w == 0 => return Err(format!("cannot connect to {}: {e}", t.url)),
                Err(_) => v.push(None),
            }
        }
        all_conns.push(v);
    }
    let cpu_before = stats::process_cpu();
    let anchor = Instant::now();
    let anchor_epoch_us = epoch_us();
    let start = Instant::now() + Duration::from_millis(10);
    let total = cfg.warmup + cfg.duration;
    let ctx = Arc::new(Ctx {
        single_paths: cfg
            .targets
            .iter()
            .map(|t| t.path(cfg.wire.single_path))
            .collect(),
        batch_paths: cfg
            .targets
            .iter()
            .map(|t| t.path(cfg.wire.batch_path))
            .collect(),
        anchor,
        start,
        record_from: start + cfg.warmup,
        end: start + total,
        total,
        due: Mutex::new(VecDeque::new()),
        released: Notify::new(),
        dispatch_done: AtomicBool::new(false),
        started: AtomicU64::new(0),
        cycle: AtomicU64::new(0),
        cfg,
    });
    let intervals: Vec<Arc<Mutex<Interval>>> = (0..connections)
        .map(|_| Arc::new(Mutex::new(Interval::default())))
        .collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reporter = tokio::spawn(reporter(ctx.clone(), intervals.clone(), stop_rx));
    let dispatcher = match &ctx.cfg.mode {
        Mode::Open(s) => Some(tokio::spawn(dispatch(ctx.clone(), *s))),
        Mode::Closed => None,
    };
    let mut tasks = Vec::with_capacity(connections);
    for (id, conns) in all_conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(worker(
            id,
            ctx.clone(),
            conns,
            intervals[id].clone(),
        )));
    }
    let mut totals = Measurements::default();
    let mut admissions = Vec::new();
    let mut dropped = 0;
    let mut last_done = ctx.record_from;
    let mut max_allowed_latency_us = 0;
    for t in tasks {
        let out = t.await.map_err(|e| format!("worker failed: {e}"))?;
        totals.merge(&out.m);
        admissions.extend(out.admissions);
        dropped += out.dropped;
        if let Some(d) = out.last_done {
            last_done = last_done.max(d);
        }
        max_allowed_latency_us = max_allowed_latency_us.max(out.max_allowed_latency_us);
    }
    if let Some(d) = dispatcher {
        let _ = d.await;
    }
    let _ = stop_tx.send(true);
    let timeline = reporter.await.unwrap_or_default();
    let client_cpu = match (cpu_before, stats::process_cpu()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let unsent = match &ctx.cfg.mode {
        Mode::Open(s) => s
            .count_before(total)
            .saturating_sub(ctx.started.load(Ordering::Relaxed)),
        Mode::Closed => 0,
    };
    if unsent > 0 {
        totals.counts.error_n(ErrorKind::Unsent, unsent);
    }
    let elapsed = ctx
        .cfg
        .duration
        .max(last_done.saturating_duration_since(ctx.record_from));
    Ok(RunOutput {
        totals,
        timeline,
        admissions,
        admissions_dropped: dropped,
        anchor_epoch_us,
        elapsed,
        unsent,
        max_allowed_latency_us,
        client_cpu,
    })
}

/// Releases every request of the schedule at its due time.
async fn dispatch(ctx: Arc<Ctx>, schedule: Schedule) {
    let mut i = 0u64;
    loop {
        let off = schedule.offset(i);
        if off >= ctx.total {
            break;
        }
        let t = ctx.start + off;
        pace_until(t).await;
        // Release this one and every other one already due (catching up after a hiccup).
        let now = Instant::now();
        let mut n = 0;
        {
            let mut q = ctx.due.lock().unwrap_or_else(|e| e.into_inner());
            q.push_back(t);
            n += 1;
            i += 1;
            loop {
                let off = schedule.offset(i);
                if off >= ctx.total || ctx.start + off > now {
                    break;
                }
                q.push_back(ctx.start + off);
                n += 1;
                i += 1;
            }
        }
        for _ in 0..n {
            ctx.released.notify_one();
        }
    }
    ctx.dispatch_done.store(true, Ordering::SeqCst);
    ctx.released.notify_waiters();
}

/// Open loop: how long after the end requests that were due before it may still be sent.
pub const DRAIN: Duration = Duration::from_secs(1);

/// Open loop: the due instant of the next request to send, or `None` when the run is over.
async fn next_due(ctx: &Ctx) -> Option<Instant> {
    loop {
        let notified = ctx.released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        if now >= ctx.end + DRAIN {
            // Whatever is still queued was due but could not be sent: unsent.
            return None;
        }
        let next = ctx
            .due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        if let Some(t) = next {
            ctx.started.fetch_add(1, Ordering::Relaxed);
            return Some(t);
        }
        if now >= ctx.end || ctx.dispatch_done.load(Ordering::SeqCst) {
            return None;
        }
        notified.await;
    }
}

fn pick(ctx: &Ctx, rng: &mut StdRng) -> usize {
    match &ctx.cfg.picker {
        Picker::Zipf(z) => z.sample(rng),
        Picker::Hot => 0,
        Picker::Cycle => {
            (ctx.cycle.fetch_add(1, Ordering::Relaxed) % ctx.cfg.items.len() as u64) as usize
        }
    }
}

async fn worker(
    id: usize,
    ctx: Arc<Ctx>,
    mut conns: Vec<Option<Conn>>,
    interval: Arc<Mutex<Interval>>,
) -> WorkerOut {
    let cfg = &ctx.cfg;
    let mut out = WorkerOut {
        m: Measurements::default(),
        admissions: Vec::new(),
        dropped: 0,
        last_done: None,
        max_allowed_latency_us: 0,
    };
    let cap = cfg.record_admissions.map(|c| c / cfg.connections.max(1));
    let mut rng =
        StdRng::seed_from_u64(cfg.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let n_targets = cfg.targets.len();
    let mut rr = id % n_targets;
    let checks = cfg.batch.unwrap_or(1).max(1);
    let mut picks = vec![0usize; checks];
    let mut outcomes = vec![Outcome::Allowed; checks];
    let closed = matches!(cfg.mode, Mode::Closed);
    // Let the reporter and the other workers start together.
    tokio::time::sleep_until(ctx.start.into()).await;
    loop {
        let intended = match &cfg.mode {
            Mode::Open(_) => match next_due(&ctx).await {
                Some(t) => t,
                None => break,
            },
            Mode::Closed => {
                let now = Instant::now();
                if now >= ctx.end {
                    break;
                }
                now
            }
        };
        for p in picks.iter_mut() {
            *p = pick(&ctx, &mut rng);
        }
        let (path, body) = match cfg.batch {
            None => (
                &ctx.single_paths[rr],
                cfg.wire.single_body(&cfg.items[picks[0]]),
            ),
            Some(_) => (
                &ctx.batch_paths[rr],
                cfg.wire.batch_body(picks.iter().map(|&k| &cfg.items[k])),
            ),
        };
        let t_idx = rr;
        rr = (rr + 1) % n_targets;
        let measured = intended >= ctx.record_from;
        if measured {
            out.m.counts.requests += 1;
        }
        if !conns[t_idx].as_ref().is_some_and(Conn::is_open) {
            conns[t_idx] = None;
            match Conn::connect(&cfg.targets[t_idx], cfg.timeout).await {
                Ok(c) => conns[t_idx] = Some(c),
                Err(_) => {
                    if measured {
                        out.m.counts.error(ErrorKind::Connect);
                        lock(&interval).errors += 1;
                    }
                    if closed {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            }
        }
        let Some(conn) = conns[t_idx].as_mut() else {
            continue;
        };
        let sent = Instant::now();
        let r = conn
            .send_timeout(cfg.timeout, Method::POST, path, None, body)
            .await;
        let done = Instant::now();
        let (status, resp) = match r {
            Ok(v) => v,
            Err(e) => {
                conns[t_idx] = None;
                let kind = match e {
                    HttpError::Timeout => ErrorKind::Timeout,
                    HttpError::Connect(_) => ErrorKind::Connect,
                    HttpError::Io(_) => ErrorKind::Io,
                };
                if measured {
                    out.m.counts.error(kind);
                    lock(&interval).errors += 1;
                }
                continue;
            }
        };
        let decoded = match cfg.batch {
            None => {
                outcomes[0] = cfg.wire.single_outcome(status, &resp);
                Ok(())
            }
            Some(_) => cfg.wire.batch_outcomes(status, &resp, &mut outcomes),
        };
        let sent_us = sent.saturating_duration_since(ctx.anchor).as_micros() as u64;
        let recv_us = done.saturating_duration_since(ctx.anchor).as_micros() as u64;
        let mut allowed = 0u64;
        let mut denied = 0u64;
        let mut fail_open = 0u64;
        let mut failed = 0u64;
        match decoded {
            Err(kind) => {
                if measured {
                    out.m.counts.error(kind);
                }
                failed += 1;
            }
            Ok(()) => {
                for (o, &k) in outcomes.iter().zip(picks.iter()) {
                    match *o {
                        Outcome::Allowed | Outcome::FailOpen => {
                            allowed += 1;
                            fail_open += u64::from(*o == Outcome::FailOpen);
                            if let Some(cap) = cap {
                                if out.admissions.len() < cap {
                                    out.admissions.push(Admission {
                                        key: k as u32,
                                        sent_us,
                                        recv_us,
                                        cost: cfg.cost,
                                    });
                                } else {
                                    out.dropped += 1;
                                }
                            }
                        }
                        Outcome::Denied => denied += 1,
                        Outcome::Failed(kind) => {
                            failed += 1;
                            if measured {
                                out.m.counts.error(kind);
                            }
                        }
                    }
                }
            }
        }
        if allowed > 0 {
            out.max_allowed_latency_us = out.max_allowed_latency_us.max(recv_us - sent_us);
        }
        if measured {
            out.m.counts.status(status.as_u16());
            out.m.counts.allowed += allowed;
            out.m.counts.denied += denied;
            out.m.counts.fail_open += fail_open;
            stats::record(&mut out.m.latency, done - intended);
            stats::record(&mut out.m.service, done - sent);
            out.last_done = Some(done);
            let mut iv = lock(&interval);
            stats::record(&mut iv.latency, done - intended);
            iv.responses += 1;
            iv.decisions += allowed + denied;
            iv.errors += failed;
        }
    }
    out
}

async fn reporter(
    ctx: Arc<Ctx>,
    intervals: Vec<Arc<Mutex<Interval>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<TimelinePoint> {
    let mut timeline = Vec::new();
    let second = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at((ctx.record_from + second).into(), second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = ctx.record_from;
    let mut merged = Interval::default();
    let total_s = ctx.cfg.duration.as_secs_f64();
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let now = Instant::now();
        if now <= ctx.record_from {
            if stopping {
                break;
            }
            continue;
        }
        for iv in &intervals {
            lock(iv).drain_into(&mut merged);
        }
        let span = now.saturating_duration_since(last).as_secs_f64().max(1e-3);
        last = now;
        let t_s = now.saturating_duration_since(ctx.record_from).as_secs_f64();
        // The tail after the last whole second (answers still in flight at the
        // end) is in the totals; it is plotted only if it is not a sliver.
        if !(stopping && (span < 0.25 || (merged.responses == 0 && merged.errors == 0))) {
            let s = LatencySummary::of(&merged.latency);
            let p = TimelinePoint {
                t_s: (t_s * 1000.0).round() / 1000.0,
                responses: merged.responses,
                decisions: merged.decisions,
                errors: merged.errors,
                rps: (merged.responses as f64 / span).round(),
                p50_us: s.p50_us,
                p99_us: s.p99_us,
                max_us: s.max_us,
            };
            if ctx.cfg.progress {
                eprintln!(
                    "loadtest [{:>5.1}s/{:.0}s] {:>8.0} req/s {:>9.0} checks/s  p50 {:>8}  p99 {:>8}  max {:>8}  errors {}",
                    t_s,
                    total_s,
                    p.rps,
                    merged.decisions as f64 / span,
                    stats::human_us(p.p50_us),
                    stats::human_us(p.p99_us),
                    stats::human_us(p.max_us),
                    p.errors,
                );
            }
            timeline.push(p);
        }
        merged = Interval::default();
        if stopping {
            break;
        }
    }
    timeline
}
