//! The HTTP connection loop: accept, admit under the connection limits, serve HTTP/1.1
//! with hyper, and close connections that hold resources without using them.
//!
//! - Admission: connections take slots of a [`SlotTable`] by client address (at most
//!   `max_connections_per_ip` each; `max_connections` in all, and no more than the HTTP
//!   half of the descriptor budget, [`fds`], so TFTP always has sockets). When the table
//!   is full, a client below its fair share closes the oldest idle connection (no request
//!   in flight) of the client most over its share; otherwise the new connection gets a
//!   503, its request is read and dropped (briefly, while few refusals linger: see
//!   [`refuse`]) and it is closed, so the client reads the 503 rather than a reset.
//!   Refusals are counted by limit and logged at a bounded rate.
//! - Timeouts ([`next_deadline`]): a request head must be complete within
//!   `header_timeout` of the connection's start or of its first byte; a connection closes
//!   after `idle_timeout` with no byte either way (idle keep-alive, a stalled upload, a
//!   client that stopped reading its download). Closes are counted by reason.
//! - TLS ([`Tls`]): on the API listener with `[tls]`, each accepted stream is wrapped by
//!   tokio-rustls; the handshake is bounded by the header timeout and the slot is taken
//!   before it, so the limits hold for TLS clients too.
//! - Boot downloads ([`fast`]): on a plain-HTTP listener, each connection first reads
//!   request heads itself and answers `GET`s of boot files without hyper, sending blob
//!   bodies with sendfile(2); any other request, and the rest of that connection, go to
//!   hyper with the bytes already read replayed. Both note activity in the same
//!   [`ConnState`], so every limit and timeout above applies to both.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::config::HttpConfig;
use crate::metrics::Metrics;
use crate::net::fds;
use crate::net::ratelimit::{LogBudget, Verdict};
use crate::net::slots::{Admission, Caps, Refusal, SlotId, SlotTable};
use crate::tls::ClientCert;

mod fast;

pub use fast::BootFiles;

/// The connection limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Time to send a whole request head.
    pub header_timeout: Duration,
    /// Time without a byte either way before a connection closes.
    pub idle_timeout: Duration,
    /// Connections in all (before the descriptor budget).
    pub max_connections: usize,
    /// Connections per client address.
    pub max_per_ip: usize,
}

impl From<&HttpConfig> for ConnLimits {
    fn from(c: &HttpConfig) -> Self {
        ConnLimits {
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            max_connections: c.max_connections,
            max_per_ip: c.max_connections_per_ip,
        }
    }
}

impl ConnLimits {
    /// Slot caps now: the configured total within the HTTP share of descriptors.
    fn caps(&self) -> Caps {
        Caps {
            total: self.max_connections.min(fds::current().http),
            per_source: self.max_per_ip,
        }
    }
}

/// What a connection is doing, as its deadline sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Requests being handled (their response not yet fully handed over).
    pub in_flight: u32,
    /// When the request head now being read started (the connection's start, or the
    /// first byte after the last response), if one is being read.
    pub head_since: Option<Instant>,
    /// Last byte read or written.
    pub last_io: Instant,
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The request head did not arrive in time.
    HeaderTimeout,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// Its slot went to a client below its fair share.
    Evicted,
}

impl Close {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Close::HeaderTimeout => "header_timeout",
            Close::IdleTimeout => "idle_timeout",
            Close::Evicted => "evicted",
        }
    }
}

/// When a connection doing `a` must be closed, and why.
pub fn next_deadline(a: &Activity, l: &ConnLimits) -> (Instant, Close) {
    let idle = (a.last_io + l.idle_timeout, Close::IdleTimeout);
    match a.head_since {
        Some(t) if a.in_flight == 0 => {
            let head = (t + l.header_timeout, Close::HeaderTimeout);
            if head.0 <= idle.0 {
                head
            } else {
                idle
            }
        }
        _ => idle,
    }
}

/// Connections open: their slots, and how to close one that is evicted.
struct Conns {
    inner: Mutex<ConnTable>,
    logs: Mutex<LogBudget<IpAddr>>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct ConnTable {
    table: SlotTable<IpAddr>,
    close: HashMap<SlotId, CancellationToken>,
}

impl Conns {
    /// A slot for a connection from `ip`, or the limit that refuses it.
    fn admit(&self, ip: IpAddr, caps: Caps) -> Result<(SlotId, CancellationToken), Refusal> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..4 {
            match s.table.decide(&ip, caps) {
                Admission::Admit => {
                    // A new connection has sent nothing yet: idle, so evictable.
                    let id = s.table.insert(ip, true);
                    let t = CancellationToken::new();
                    s.close.insert(id, t.clone());
                    self.metrics.http.connections.set(s.table.len() as i64);
                    return Ok((id, t));
                }
                Admission::Evict(id) => {
                    s.table.remove(id);
                    if let Some(t) = s.close.remove(&id) {
                        t.cancel();
                    }
                }
                Admission::Refuse(r) => return Err(r),
            }
        }
        Err(Refusal::Total)
    }

    fn set_idle(&self, id: SlotId, idle: bool) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.table.set_evictable(id, idle);
    }

    fn release(&self, id: SlotId) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.table.remove(id);
        s.close.remove(&id);
        self.metrics.http.connections.set(s.table.len() as i64);
    }

    /// May a line about client `ip` be logged now? Counts the lines dropped.
    fn log_ok(&self, ip: IpAddr) -> Option<u64> {
        let v = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&ip, Instant::now());
        match v {
            Verdict::Allow { suppressed } => Some(suppressed),
            Verdict::Deny => {
                self.metrics.http.suppressed_logs.inc();
                None
            }
        }
    }
}

/// Instants as nanoseconds since a connection's start, so they fit atomics.
const NONE: u64 = u64::MAX;

/// A connection's activity, shared by its socket wrapper, its requests and its timer.
struct ConnState {
    start: Instant,
    last_io: AtomicU64,
    head_since: AtomicU64,
    in_flight: AtomicU32,
    id: SlotId,
    conns: Arc<Conns>,
}

impl ConnState {
    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_nanos()).unwrap_or(NONE - 1)
    }

    fn at(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }

    fn activity(&self) -> Activity {
        let h = self.head_since.load(Ordering::Relaxed);
        Activity {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            head_since: (h != NONE).then(|| self.at(h)),
            last_io: self.at(self.last_io.load(Ordering::Relaxed)),
        }
    }

    fn on_read(&self) {
        let now = self.ns(Instant::now());
        self.last_io.store(now, Ordering::Relaxed);
        // The first byte of a request head starts its clock.
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io
            .store(self.ns(Instant::now()), Ordering::Relaxed);
    }
}

/// A request in flight on a connection; its end (the response body dropped, i.e.
/// handed over in full or abandoned) makes the connection idle again.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(c: &Arc<ConnState>) -> Self {
        c.head_since.store(NONE, Ordering::Relaxed);
        if c.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            c.conns.set_idle(c.id, false);
        }
        InFlight(c.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.0;
        c.last_io.store(c.ns(Instant::now()), Ordering::Relaxed);
        if c.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            c.conns.set_idle(c.id, true);
        }
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct Tracked {
    inner: Body,
    _req: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting each byte read or written in the connection's state.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        r
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

/// What a refused connection reads before it is closed (with [`crate::api::BUSY_HEADER`],
/// which tells clients the request was never read).
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 2\r\nx-baton-busy: connection-limit\r\nConnection: close\r\nContent-Length: 93\r\n\r\n{\"error\":{\"code\":\"busy\",\"message\":\"too many connections from this address or in all; retry\"}}";

/// Refused connections that may linger at once to be closed cleanly; past that, a
/// refusal is closed at once (a flood of refusals must not hold descriptors).
const MAX_LINGERING: u32 = 32;
/// How long a refused connection may take to read its 503 and send its request.
const LINGER: Duration = Duration::from_secs(1);

/// Sends a refused connection the 503. Closing it with its request still unread would
/// make the kernel reset it, and the client would see "connection reset" instead of the
/// 503 and its `Retry-After`: so, while few refusals are lingering, the request is read
/// and dropped (for at most [`LINGER`]) before the close.
fn refuse(stream: TcpStream, lingering: &Arc<AtomicU32>, tasks: &TaskTracker) {
    if lingering.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
        lingering.fetch_sub(1, Ordering::Relaxed);
        let _ = stream.try_write(BUSY);
        return;
    }
    let lingering = lingering.clone();
    tasks.spawn(async move {
        let _ = tokio::time::timeout(LINGER, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = stream;
            stream.write_all(BUSY).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), io::Error>(())
        })
        .await;
        lingering.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Accepts and serves connections until `shutdown`, then lets the open ones finish
/// their requests (each still bounded by its timeouts).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tls: Option<Tls>,
    fast: Option<BootFiles>,
) -> io::Result<()> {
    let conns = Arc::new(Conns {
        inner: Mutex::new(ConnTable::default()),
        logs: Mutex::new(LogBudget::new()),
        metrics: metrics.clone(),
    });
    let tasks = TaskTracker::new();
    let lingering = Arc::new(AtomicU32::new(0));
    let mut accept_errors = LogBudget::<()>::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors or memory: wait for some to be freed rather than
                    // spin; anything else (a connection reset while queued) is per-client.
                    let scarce = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    metrics.http.connections_refused.inc(if scarce { "fds" } else { "accept_error" });
                    if accept_errors.check(&(), Instant::now()).allowed() {
                        warn!(error = %e, "http accept failed");
                    }
                    if scarce {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let ip = peer.ip().to_canonical();
        match conns.admit(ip, limits.caps()) {
            Ok((id, close)) => {
                let state = Arc::new(ConnState {
                    start: Instant::now(),
                    last_io: AtomicU64::new(0),
                    // A new connection must send its first head within the header timeout.
                    head_since: AtomicU64::new(0),
                    in_flight: AtomicU32::new(0),
                    id,
                    conns: conns.clone(),
                });
                tasks.spawn(connection(
                    stream,
                    peer,
                    state,
                    close,
                    router.clone(),
                    limits,
                    metrics.clone(),
                    shutdown.clone(),
                    tls.clone(),
                    fast.clone(),
                ));
            }
            Err(r) => {
                metrics.http.connections_refused.inc(r.as_str());
                if let Some(suppressed) = conns.log_ok(ip) {
                    info!(client = %peer, limit = r.as_str(), suppressed, "http connection refused: connection limit");
                }
                refuse(stream, &lingering, &tasks);
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// TLS on a listener: the rustls configuration, and whether requests carry
/// [`ClientCert`] (mTLS mode: the cluster routes demand a client certificate).
#[derive(Clone)]
pub struct Tls {
    /// Accepts handshakes.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Note in each request whether the client presented a certificate.
    pub mark_client_cert: bool,
}

/// Serves one connection until it ends, is evicted, times out, or (after `shutdown`)
/// has finished its request in flight. With `tls`, the handshake comes first and must
/// end within the header timeout, like a request head. Without, and with `fast`, boot
/// downloads take the fast path until a request needs hyper.
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ConnState>,
    close: CancellationToken,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tls: Option<Tls>,
    fast: Option<BootFiles>,
) {
    let _ = stream.set_nodelay(true);
    let mut watched = Watched {
        inner: stream,
        state: state.clone(),
    };
    let closed = match tls {
        None => {
            let prefix = match &fast {
                Some(files) => {
                    let served = fast::serve(&mut watched, peer, &state, files, &shutdown);
                    tokio::select! {
                        o = served => match o {
                            fast::Outcome::Closed => Err(None),
                            fast::Outcome::Handoff(prefix) => Ok(prefix),
                        },
                        _ = close.cancelled() => Err(Some(Close::Evicted)),
                        why = expire(&state, &limits) => Err(Some(why)),
                    }
                }
                None => Ok(Bytes::new()),
            };
            match prefix {
                Ok(prefix) => {
                    let io = TokioIo::new(fast::Rewind {
                        prefix,
                        inner: watched,
                    });
                    drive(io, None, peer, &state, &close, router, limits, shutdown).await
                }
                Err(closed) => closed,
            }
        }
        Some(tls) => {
            let hs = tokio::time::timeout(limits.header_timeout, tls.acceptor.accept(watched));
            let r = tokio::select! {
                r = hs => r,
                _ = close.cancelled() => Ok(Err(io::Error::other("evicted"))),
                _ = shutdown.cancelled() => Ok(Err(io::Error::other("shutting down"))),
            };
            match r {
                Ok(Ok(s)) => {
                    let cert = tls
                        .mark_client_cert
                        .then(|| ClientCert(s.get_ref().1.peer_certificates().is_some()));
                    let io = TokioIo::new(s);
                    drive(io, cert, peer, &state, &close, router, limits, shutdown).await
                }
                Ok(Err(e)) => {
                    metrics.http.connections_closed.inc("tls_handshake");
                    if let Some(suppressed) = state.conns.log_ok(peer.ip().to_canonical()) {
                        info!(client = %peer, error = %e, suppressed, "tls handshake failed");
                    }
                    None
                }
                Err(_) => Some(Close::HeaderTimeout),
            }
        }
    };
    if let Some(c) = closed {
        metrics.http.connections_closed.inc(c.as_str());
        debug!(client = %peer, reason = c.as_str(), "http connection closed by the server");
    }
    state.conns.release(state.id);
}

/// Serves HTTP/1.1 on `io`; the reason the server closed it, if it did.
#[allow(clippy::too_many_arguments)]
async fn drive<I>(
    io: TokioIo<I>,
    cert: Option<ClientCert>,
    peer: SocketAddr,
    state: &Arc<ConnState>,
    close: &CancellationToken,
    router: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) -> Option<Close>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = state.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let req_guard = InFlight::start(&st);
        let router = router.clone();
        async move {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(c) = cert {
                req.extensions_mut().insert(c);
            }
            let resp = router.oneshot(req).await.unwrap_or_else(|e| match e {});
            Ok::<_, Infallible>(resp.map(|b| {
                Body::new(Tracked {
                    inner: b,
                    _req: req_guard,
                })
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
    tokio::pin!(conn);
    let expiry = expire(state, &limits);
    tokio::pin!(expiry);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(client = %peer, error = %e, "http connection ended with an error");
                }
                break None;
            }
            _ = close.cancelled() => break Some(Close::Evicted),
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            why = &mut expiry => break Some(why),
        }
    }
}

/// Ends when the connection's deadline ([`next_deadline`] of its activity) passes.
async fn expire(state: &ConnState, limits: &ConnLimits) -> Close {
    loop {
        let (when, _) = next_deadline(&state.activity(), limits);
        tokio::time::sleep_until(when.into()).await;
        // Activity may have moved the deadline while the timer slept.
        let (again, why) = next_deadline(&state.activity(), limits);
        if again <= Instant::now() {
            return why;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: ConnLimits = ConnLimits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 10,
        max_per_ip: 5,
    };

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head
            .to_ascii_lowercase()
            .contains(&format!("\r\n{}: ", crate::api::BUSY_HEADER)));
        // The body's own length: one byte more would leave clients waiting for it.
        assert!(head.ends_with(&format!("\r\nContent-Length: {}", body.len())));
        let e: crate::api::ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(e.error.code, "busy");
    }

    #[test]
    fn deadlines() {
        let t0 = Instant::now();
        // A new connection: its head must arrive within the header timeout.
        let a = Activity {
            in_flight: 0,
            head_since: Some(t0),
            last_io: t0,
        };
        assert_eq!(
            next_deadline(&a, &L),
            (t0 + L.header_timeout, Close::HeaderTimeout)
        );
        // Trickling bytes of a head does not extend it (slowloris).
        let a = Activity {
            last_io: t0 + Duration::from_secs(9),
            ..a
        };
        assert_eq!(
            next_deadline(&a, &L),
            (t0 + L.header_timeout, Close::HeaderTimeout)
        );
        // A request in flight: only a stall ends it.
        let a = Activity {
            in_flight: 1,
            head_since: None,
            last_io: t0 + Duration::from_secs(100),
        };
        assert_eq!(
            next_deadline(&a, &L),
            (t0 + Duration::from_secs(160), Close::IdleTimeout)
        );
        // Keep-alive between requests: the idle timeout from the last byte.
        let a = Activity { in_flight: 0, ..a };
        assert_eq!(
            next_deadline(&a, &L),
            (t0 + Duration::from_secs(160), Close::IdleTimeout)
        );
        // A header timeout longer than the idle one: idle wins.
        let long = ConnLimits {
            header_timeout: Duration::from_secs(600),
            ..L
        };
        let a = Activity {
            in_flight: 0,
            head_since: Some(t0),
            last_io: t0,
        };
        assert_eq!(next_deadline(&a, &long).1, Close::IdleTimeout);
    }
}
