//! A runtime for background work, apart from the one that answers checks.
//!
//! The pipelines (violations, billing, alerts) turn the hot path's events
//! into store writes and webhook deliveries in batches. On the runtime that
//! answers checks, a batch would hold a worker thread for as long as it takes
//! and delay the checks queued behind it. Here they run on one OS thread of
//! their own, with a current-thread tokio runtime, at a lower CPU priority
//! (a higher nice value, Linux only): when the cores are busy the kernel
//! gives the threads that answer checks and forward them to owners the CPU
//! first, and the pipelines take what is left. Blocking work the pipelines
//! start (`spawn_blocking`, the embedded store's writes) runs on this
//! runtime's blocking threads, which inherit the lower priority.
//!
//! What that costs: under sustained CPU saturation the pipelines fall
//! behind, their queues fill and events are dropped with a metric (see
//! [`ringlimit_actors::pipeline::queue`]) — the check path is never the one
//! that waits.

use std::cell::Cell;
use std::sync::mpsc;
use std::thread::JoinHandle;

thread_local! {
    static BACKGROUND: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is a background runtime's own thread (not
/// one of its blocking threads, not the request runtime's). Work there may
/// block the thread: it exists for that work, and nothing that answers
/// checks waits on it. The embedded store writes the write-behind's flush
/// right there, instead of copying the batch to a blocking thread.
pub fn on_background_thread() -> bool {
    BACKGROUND.with(Cell::get)
}

/// A current-thread runtime on a thread of its own.
#[derive(Debug)]
pub struct Background {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Niceness of background threads relative to the process (0 disables).
pub const DEFAULT_NICE: i32 = 19;

/// Niceness of the write-behind's thread: below the checks, above the
/// pipelines, so under saturation flushes still get a share of the CPU (the
/// SIGKILL loss window stays short) without taking the checks' threads.
pub const WRITEBEHIND_NICE: i32 = 10;

impl Background {
    /// Starts the thread `name`; `nice` is added to its CPU niceness
    /// (ignored where the OS refuses or is not Linux, with a log line).
    pub fn start(name: &str, nice: i32) -> std::io::Result<Background> {
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                BACKGROUND.with(|b| b.set(true));
                lower_priority(&thread_name, nice);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(format!("{thread_name}-blocking"))
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(async move {
                    let _ = stopped.await;
                });
                // Tasks still running (webhook deliveries past the drain
                // deadline) are dropped with the runtime here.
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("the background thread stopped while starting"))??;
        Ok(Background {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where to spawn background work.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `fut` on the background runtime and waits for its output.
    pub async fn run<F>(&self, fut: F) -> Result<F::Output, tokio::task::JoinError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut).await
    }

    /// Stops the runtime (dropping what still runs on it) and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Joining from inside an async context would block a runtime thread;
        // only signal there, and let the thread end by itself.
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if tokio::runtime::Handle::try_current().is_err()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority(name: &str, nice: i32) {
    if nice == 0 {
        return;
    }
    // On Linux `PRIO_PROCESS` with a thread id sets that thread's niceness
    // alone; threads it spawns later inherit it.
    let tid = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    let want = (current + nice).clamp(-20, 19);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), want) {
        tracing::warn!(thread = name, nice = want, error = %e, "could not lower the priority of the background thread; it runs at normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(name: &str, nice: i32) {
    if nice != 0 {
        tracing::debug!(
            thread = name,
            "thread priorities are only lowered on Linux; the background thread runs at normal priority"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_work_on_its_own_thread_and_stops() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let bg = Background::start("rl-test-bg", DEFAULT_NICE).unwrap_or_else(|e| panic!("{e}"));
        let here = std::thread::current().id();
        let (name, id) = rt
            .block_on(bg.run(async {
                let t = std::thread::current();
                (t.name().map(str::to_owned), t.id())
            }))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(name.as_deref(), Some("rl-test-bg"));
        assert_ne!(id, here);
        assert!(!on_background_thread());
        let (own, blocking) = rt
            .block_on(bg.run(async {
                let blocking = tokio::task::spawn_blocking(on_background_thread).await;
                (on_background_thread(), blocking)
            }))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(own, "the background runtime's own thread");
        assert_eq!(blocking.ok(), Some(false), "its blocking threads are not");
        bg.stop();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn background_thread_runs_at_a_lower_priority() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let bg = Background::start("rl-test-nice", 5).unwrap_or_else(|e| panic!("{e}"));
        let mine = rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .unwrap_or_else(|e| panic!("{e}"));
        let (theirs, blocking) = rt
            .block_on(bg.run(async {
                let own = rustix::process::getpriority_process(Some(rustix::thread::gettid()));
                // A blocking thread started from there inherits it.
                let blocking = tokio::task::spawn_blocking(|| {
                    rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                })
                .await;
                (own, blocking)
            }))
            .unwrap_or_else(|e| panic!("{e}"));
        let theirs = theirs.unwrap_or_else(|e| panic!("{e}"));
        let blocking = blocking
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(theirs, (mine + 5).min(19));
        assert_eq!(blocking, theirs);
        bg.stop();
    }
}
