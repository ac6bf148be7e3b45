//! The accept loop of both HTTP planes, in place of `axum::serve` (which
//! runs hyper without a timer: no header, body or idle timeout and no
//! connection cap, so slow clients could hold every file descriptor).
//!
//! - A cap on open connections per plane: a connection accepted above it is
//!   closed at once (its descriptor freed) and counted in
//!   `ringlimit_http_connections_refused_total{plane}`.
//! - Header timeout: a request's headers must be in within
//!   [`HttpLimits::header_timeout`] of the connection's start, or of the
//!   first byte after a keep-alive idle; else the connection is dropped and
//!   counted in `ringlimit_http_header_timeouts_total{plane}`.
//! - Idle timeout: a keep-alive connection without a request for
//!   [`HttpLimits::idle_timeout`] is shut down gracefully.
//! - The body timeout ([`HttpLimits::body_timeout`], 408) is applied where a
//!   body is read (`fast::read_body`, `extract::ApiJson`).
//! - `TCP_NODELAY` on every accepted socket.
//!
//! The timeouts are kept by one watchdog per connection that wakes a few
//! times per timeout and reads two counters the connection bumps (bytes
//! read, requests started and finished): a request pays two relaxed atomic
//! additions and nothing else. hyper's own header timer is not used, as it
//! also runs while a keep-alive connection is idle, which would make the
//! idle timeout the header timeout.

use crate::config::HttpLimits;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

/// Connections closed at once because the plane had its cap open.
pub const REFUSED: &str = "ringlimit_http_connections_refused_total";
/// Connections dropped because their request headers did not arrive in time.
pub const HEADER_TIMEOUTS: &str = "ringlimit_http_header_timeouts_total";
/// Connections closed after a keep-alive idle.
pub const IDLE_CLOSED: &str = "ringlimit_http_idle_closed_total";
/// Open connections of a plane.
pub const OPEN: &str = "ringlimit_http_connections";

/// Descriptors kept free of the planes' caps (stores, cluster, files).
const RESERVED_FDS: u64 = 256;

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit in force afterwards (`None`: unlimited or unknown).
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let now = getrlimit(Resource::Nofile);
        if now.current != now.maximum {
            let want = Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            };
            match setrlimit(Resource::Nofile, want) {
                Ok(()) => {
                    tracing::debug!(from = ?now.current, to = ?now.maximum, "raised the open-files limit")
                }
                Err(e) => {
                    tracing::warn!(error = %e, soft = ?now.current, "could not raise the open-files limit")
                }
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The per-plane connection cap that `nofile` descriptors can carry for two
/// planes: `wanted`, or less (with a warning) when the limit is lower.
pub fn effective_cap(wanted: usize, nofile: Option<u64>) -> usize {
    let Some(n) = nofile else { return wanted };
    let room = (n.saturating_sub(RESERVED_FDS) / 2).max(1);
    if (wanted as u64) <= room {
        return wanted;
    }
    tracing::warn!(
        http_max_connections = wanted,
        open_files_limit = n,
        cap = room,
        "the open-files limit cannot carry http_max_connections on both planes; capping lower"
    );
    room as usize
}

/// Counters one connection bumps and its watchdog reads.
#[derive(Debug, Default)]
struct Activity {
    bytes_read: AtomicU64,
    started: AtomicU64,
    finished: AtomicU64,
}

/// A socket that counts what it reads.
struct Counted {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity
                .bytes_read
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request's headers since `since`.
    Header,
    /// A request is being answered.
    Busy,
    /// Between requests, nothing read since `since`.
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Header,
    Idle,
}

/// Watches one connection's [`Activity`] for the header and idle timeouts.
struct Watchdog {
    activity: Arc<Activity>,
    limits: HttpLimits,
    tick: Duration,
    phase: Phase,
    since: Instant,
    bytes: u64,
    started: u64,
    idle_fired: bool,
}

impl Watchdog {
    fn new(activity: Arc<Activity>, limits: HttpLimits) -> Self {
        let tick =
            (limits.header_timeout.min(limits.idle_timeout) / 4).max(Duration::from_millis(25));
        Watchdog {
            activity,
            limits,
            tick,
            // The first request's headers are due from the connection's start.
            phase: Phase::Header,
            since: Instant::now(),
            bytes: 0,
            started: 0,
            idle_fired: false,
        }
    }

    /// Looks at the counters; the phase's deadline, if one is due.
    fn observe(&mut self, now: Instant) -> Option<Expired> {
        let bytes = self.activity.bytes_read.load(Ordering::Relaxed);
        let started = self.activity.started.load(Ordering::Relaxed);
        let finished = self.activity.finished.load(Ordering::Relaxed);
        if started != finished {
            self.phase = Phase::Busy;
        } else if started != self.started || self.phase == Phase::Busy {
            // A request was answered since the last look.
            self.phase = Phase::Idle;
            self.since = now;
        } else if bytes != self.bytes && self.phase == Phase::Idle {
            // Bytes with no request yet: the next request's headers.
            self.phase = Phase::Header;
            self.since = now;
        }
        self.bytes = bytes;
        self.started = started;
        let elapsed = now.saturating_duration_since(self.since);
        match self.phase {
            Phase::Header if elapsed >= self.limits.header_timeout => Some(Expired::Header),
            Phase::Idle if elapsed >= self.limits.idle_timeout && !self.idle_fired => {
                self.idle_fired = true;
                Some(Expired::Idle)
            }
            _ => None,
        }
    }

    /// Resolves when a timeout expires.
    async fn expired(&mut self) -> Expired {
        loop {
            let deadline = match self.phase {
                Phase::Header => self.since + self.limits.header_timeout,
                Phase::Idle if !self.idle_fired => self.since + self.limits.idle_timeout,
                _ => Instant::now() + self.tick,
            };
            tokio::time::sleep_until(deadline.min(Instant::now() + self.tick)).await;
            if let Some(e) = self.observe(Instant::now()) {
                return e;
            }
        }
    }
}

/// Serves `service` on `listener` until `stop` turns true, then finishes the
/// open connections' requests (as `axum::serve`'s graceful shutdown did).
pub async fn serve<S>(
    plane: &'static str,
    listener: TcpListener,
    service: S,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let cap = limits.max_connections;
    let slots = Arc::new(Semaphore::new(cap));
    let refused = metrics::counter!(REFUSED, "plane" => plane);
    let open = metrics::gauge!(OPEN, "plane" => plane);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let builder = Arc::new(builder);
    loop {
        let stream = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors or buffers: wait for some to be freed.
                    tracing::warn!(plane, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused.increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        open.increment(1.0);
        let open = open.clone();
        let conn = connection(
            plane,
            stream,
            service.clone(),
            Arc::clone(&builder),
            limits,
            stop.clone(),
        );
        tokio::spawn(async move {
            conn.await;
            open.decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    // Every connection gives its slot back when it ends.
    let _ = slots.acquire_many(cap as u32).await;
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Errors of one accepted connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn connection<S>(
    plane: &'static str,
    stream: TcpStream,
    service: S,
    builder: Arc<hyper::server::conn::http1::Builder>,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Counted {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let counters = Arc::clone(&activity);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut s = service.clone();
        let counters = Arc::clone(&counters);
        counters.started.fetch_add(1, Ordering::Relaxed);
        async move {
            let r = tower::Service::call(&mut s, req.map(Body::new)).await;
            counters.finished.fetch_add(1, Ordering::Relaxed);
            r
        }
    });
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut watchdog = Watchdog::new(activity, limits);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(plane, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopped(&mut stop), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            e = watchdog.expired() => match e {
                Expired::Header => {
                    metrics::counter!(HEADER_TIMEOUTS, "plane" => plane).increment(1);
                    tracing::debug!(plane, "request headers not received in time; connection closed");
                    return;
                }
                Expired::Idle => {
                    metrics::counter!(IDLE_CLOSED, "plane" => plane).increment(1);
                    if !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            max_connections: 10,
        }
    }

    fn at(w: &Watchdog, ms: u64) -> Instant {
        w.since + Duration::from_millis(ms)
    }

    #[test]
    fn a_connection_that_never_sends_its_headers_expires() {
        let a = Arc::new(Activity::default());
        let mut w = Watchdog::new(Arc::clone(&a), limits());
        a.bytes_read.fetch_add(1, Ordering::Relaxed);
        assert_eq!(w.observe(at(&w, 1_000)), None);
        a.bytes_read.fetch_add(1, Ordering::Relaxed);
        assert_eq!(w.observe(at(&w, 2_000)), Some(Expired::Header));
    }

    #[test]
    fn an_answered_connection_goes_idle_then_expires_on_a_trickle() {
        let a = Arc::new(Activity::default());
        let mut w = Watchdog::new(Arc::clone(&a), limits());
        let t0 = w.since;
        let t = |ms: u64| t0 + Duration::from_millis(ms);
        a.bytes_read.fetch_add(100, Ordering::Relaxed);
        a.started.fetch_add(1, Ordering::Relaxed);
        a.finished.fetch_add(1, Ordering::Relaxed);
        assert_eq!(w.observe(t(600)), None);
        assert_eq!(w.phase, Phase::Idle);
        // Idle: not closed at the header timeout.
        assert_eq!(w.observe(t(5_600)), None);
        // A byte of the next request: its headers are now due.
        a.bytes_read.fetch_add(1, Ordering::Relaxed);
        assert_eq!(w.observe(t(6_000)), None);
        assert_eq!(w.phase, Phase::Header);
        a.bytes_read.fetch_add(1, Ordering::Relaxed);
        assert_eq!(w.observe(t(7_000)), None);
        assert_eq!(w.observe(t(8_000)), Some(Expired::Header));
    }

    #[test]
    fn an_idle_connection_expires_at_the_idle_timeout_and_a_busy_one_never() {
        let a = Arc::new(Activity::default());
        let mut w = Watchdog::new(Arc::clone(&a), limits());
        let t0 = w.since;
        let t = |ms: u64| t0 + Duration::from_millis(ms);
        a.bytes_read.fetch_add(100, Ordering::Relaxed);
        a.started.fetch_add(1, Ordering::Relaxed);
        // Busy for longer than both timeouts.
        assert_eq!(w.observe(t(30_000)), None);
        a.finished.fetch_add(1, Ordering::Relaxed);
        assert_eq!(w.observe(t(30_100)), None);
        assert_eq!(w.observe(t(40_100)), Some(Expired::Idle));
        // Once only.
        assert_eq!(w.observe(t(50_100)), None);
    }

    #[test]
    fn the_cap_fits_the_open_files_limit() {
        assert_eq!(effective_cap(10_000, None), 10_000);
        assert_eq!(effective_cap(10_000, Some(1_000_000)), 10_000);
        assert_eq!(effective_cap(10_000, Some(1_256)), 500);
    }
}
