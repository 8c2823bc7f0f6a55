//! The operator address (`admin_listen`): an accept loop of our own around
//! hyper's HTTP/1 connection, so that a peer that has not sent a request,
//! or has stopped sending one, cannot hold the address — nor the
//! descriptors it shares with the agents' connections (finding 7 of #25:
//! fifty clients trickling a header line every 5 s stayed for as long as
//! they liked under `axum::serve`).
//!
//! Three limits, from [`Settings`](crate::Settings):
//!
//! | limit | runs from | to | then |
//! |---|---|---|---|
//! | `admin_header_timeout` | the accept, or the first byte of a later request | the end of that request's head | closed, unanswered |
//! | `admin_idle_timeout` | the end of a response | the first byte of the next request | closed |
//! | `admin_max_connections` | — | — | a connection over it is closed as soon as it is accepted |
//!
//! A request in flight, from its head to the last byte of its response
//! body, has no deadline here: an event stream (`GET /api/v1/events`,
//! `/ui/events`) lasts as long as its client reads it. What requests in
//! flight can hold is bounded by the cap (event streams also by their own).
//!
//! hyper's `header_read_timeout` is not used: it starts as soon as a
//! kept-alive connection goes idle, so it would be the idle timeout too.
//! Here, as in nginx (`keepalive_timeout`, `client_header_timeout`), a
//! connection between requests waits the idle timeout for the next
//! request's first byte, and that request's head then has the header
//! timeout.
//!
//! Every close for a limit is counted in
//! `croncommander_operator_connections_closed_total` by reason; closes at
//! the cap and for the header timeout are also logged at warn, at most once
//! per [`LOG_EVERY`] each, with how many there were since the last line.
//!
//! On shutdown the loop stops accepting; a connection awaiting a request
//! closes at once, one serving a request finishes it (event streams end at
//! shutdown) and closes, and after [`SHUTDOWN_GRACE`] those left are
//! dropped.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::Settings;
use crate::metrics::{Metrics, OperatorClose};

/// Warnings about closes for a limit: at most one line per reason this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long shutdown waits for connections to finish what they serve.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// After an accept error that is not one connection's (out of
/// descriptors): a pause, not a spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The operator address's limits (see the module comment).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl Limits {
    pub(crate) fn of(s: &Settings) -> Self {
        Self {
            header_timeout: s.admin_header_timeout,
            idle_timeout: s.admin_idle_timeout,
            max_connections: s.admin_max_connections,
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    limits: Limits,
    metrics: Arc<Metrics>,
    slow_heads: Throttle,
}

/// Serves `router` on `listener` within `limits` until `shutdown` is true
/// (or its sender is gone), then lets connections finish (see the module
/// comment) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let shared = Arc::new(Shared {
        limits,
        metrics,
        slow_heads: Throttle::default(),
    });
    let full = Throttle::default();
    let accept_errors = Throttle::default();
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(done) = conns.join_next() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        warn!("an operator connection's task panicked: {e}");
                    }
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            // One connection's trouble (reset before it was accepted).
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if let Some(n) = accept_errors.hit() {
                    warn!(errors = n, "operator address: accepting failed: {e}");
                }
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            drop(stream);
            shared
                .metrics
                .operator_connection_closed(OperatorClose::MaxConnections);
            if let Some(n) = full.hit() {
                warn!(
                    closed = n,
                    limit = limits.max_connections,
                    last_peer = %peer,
                    "operator connections closed as they came: admin_max_connections reached"
                );
            }
            continue;
        };
        conns.spawn(connection(
            stream,
            peer,
            router.clone(),
            Arc::clone(&shared),
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = conns.len(),
            "operator connections still open {SHUTDOWN_GRACE:?} after shutdown began: closed"
        );
    }
    // Dropping the set aborts what is left.
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection: hyper serves it while this task watches its phase and
/// closes it when the phase's deadline passes.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Watched {
        io: stream,
        activity: Arc::clone(&activity),
    });
    let router = TowerToHyperService::new(router);
    let seen_by_service = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // Who is asking, for the audit log (`api::audit::record`).
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let in_flight = InFlight::start(&seen_by_service);
        let response = router.call(req);
        async move {
            let response = response.await?;
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // Ours instead (module comment); hyper has no timer to run its own.
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let limits = shared.limits;
    let mut seen = activity.phase();
    let mut since = Instant::now();
    let mut stopping = false;
    loop {
        let deadline = match seen.0 {
            Phase::Head => Some((since + limits.header_timeout, OperatorClose::HeaderTimeout)),
            Phase::Idle => Some((since + limits.idle_timeout, OperatorClose::IdleTimeout)),
            Phase::Busy => None,
        };
        let timer = async move {
            match deadline {
                Some((at, why)) => {
                    tokio::time::sleep_until(at).await;
                    why
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    debug!(%peer, "operator connection ended: {e}");
                }
                return;
            }
            () = activity.changed.notified() => {}
            why = timer => {
                shared.metrics.operator_connection_closed(why);
                debug!(%peer, reason = why.as_str(), "operator connection closed");
                if why == OperatorClose::HeaderTimeout {
                    if let Some(n) = shared.slow_heads.hit() {
                        warn!(
                            closed = n,
                            timeout_ms = limits.header_timeout.as_millis(),
                            last_peer = %peer,
                            "operator connections closed: no complete request head within admin_header_timeout_ms"
                        );
                    }
                }
                // Dropping the connection closes the socket.
                return;
            }
            _ = shutdown.wait_for(|stop| *stop), if !stopping => {
                // A head not yet whole was not a request yet: closed now,
                // like an idle connection; one in flight after its response.
                if activity.phase().0 == Phase::Head {
                    return;
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
        let now = activity.phase();
        if now != seen {
            seen = now;
            since = Instant::now();
        }
    }
}

/// Where a connection stands, for its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is awaited since the accept, or is coming in.
    Head,
    /// A response ended and no byte of another request has come.
    Idle,
    /// A request is in flight: no deadline.
    Busy,
}

/// What a connection's watcher learns from the socket (a byte came in) and
/// from the service (a request started, a response ended). Everything
/// that changes it runs in the connection's one task, so relaxed atomics
/// are enough (they are atomics only because the task moves between
/// threads).
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose head has been read.
    started: AtomicU64,
    /// Requests whose response has ended (sent whole, or dropped).
    ended: AtomicU64,
    /// A byte came in while no request was in flight.
    heard: AtomicBool,
    changed: Notify,
}

impl Activity {
    fn read_some(&self) {
        let idle = self.started.load(Relaxed) == self.ended.load(Relaxed);
        if idle && !self.heard.swap(true, Relaxed) {
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        self.heard.store(false, Relaxed);
        self.started.fetch_add(1, Relaxed);
        self.changed.notify_one();
    }

    fn request_ended(&self) {
        self.heard.store(false, Relaxed);
        self.ended.fetch_add(1, Relaxed);
        self.changed.notify_one();
    }

    /// The phase, and how many responses have ended: a request that came
    /// and went between two looks still restarts the deadline.
    fn phase(&self) -> (Phase, u64) {
        let (started, ended) = (self.started.load(Relaxed), self.ended.load(Relaxed));
        let phase = if started > ended {
            Phase::Busy
        } else if started == 0 || self.heard.load(Relaxed) {
            Phase::Head
        } else {
            Phase::Idle
        };
        (phase, ended)
    }
}

/// A request in flight, from its head until this is dropped: with its
/// response body (sent whole, or the connection gone), or with the
/// request's future if no response came.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.request_started();
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request in flight while hyper holds it.
#[derive(Debug)]
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling its connection's watcher when bytes come in.
#[derive(Debug)]
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Counts events and says when to log them: the first at once, then at
/// most one line per [`LOG_EVERY`] with how many came since the last.
/// The metric counts each one.
#[derive(Debug, Default)]
struct Throttle {
    pending: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    /// One more; `Some(n)` when a line saying `n` is due now.
    fn hit(&self) -> Option<u64> {
        self.pending.fetch_add(1, Relaxed);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(self.pending.swap(0, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_waits_for_a_head_then_serves_then_idles() {
        let a = Activity::default();
        assert_eq!(a.phase(), (Phase::Head, 0), "from the accept");
        a.read_some();
        assert_eq!(a.phase(), (Phase::Head, 0), "bytes do not restart it");
        a.request_started();
        assert_eq!(a.phase().0, Phase::Busy);
        a.read_some();
        assert_eq!(a.phase().0, Phase::Busy, "a body coming in is in flight");
        a.request_ended();
        assert_eq!(a.phase(), (Phase::Idle, 1));
        a.read_some();
        assert_eq!(a.phase(), (Phase::Head, 1), "the next request's first byte");
        a.request_started();
        a.request_ended();
        assert_eq!(
            a.phase(),
            (Phase::Idle, 2),
            "a request between two looks is seen in the count"
        );
    }

    #[test]
    fn the_throttle_logs_the_first_then_counts() {
        let t = Throttle::default();
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        *t.last.lock().unwrap() = Some(Instant::now() - LOG_EVERY);
        assert_eq!(t.hit(), Some(3), "the two held back and this one");
    }
}
