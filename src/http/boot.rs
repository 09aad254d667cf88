//! HTTP boot: a node's files under `/boot/<node>/<path>`, for iPXE and UEFI HTTP-boot
//! clients, with `Range`, `ETag` (the sha256), `If-None-Match` and `HEAD`. The same
//! owned-node rule as TFTP applies.
//!
//! One function decides every answer, [`resolve`]: path, node, serve gate, refusal
//! records, validators and Range, into a [`Plan`] (status, headers, body source). The
//! router's handlers turn a plan into a response whose body streams from the shared
//! in-memory copy; the fast path of [`super::conn`] (plain-HTTP `GET`s) writes the same
//! plan itself and sends a blob's bytes with sendfile(2) from the verified blob file.
//!
//! These routes need no login, so a refusal tells the caller nothing: an unknown node,
//! a node another host owns (or this one may not serve yet) and a missing file all get
//! the same 404 ([`hidden`]); the reason, owner and epoch go to the log (at a bounded
//! rate per client) and to `baton node show`.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures_util::Stream;
use tracing::{debug, info};

use super::error::ApiError;
use super::range::{plan, RangePlan};
use crate::app::App;
use crate::boots::{LiveTransfer, Proto, Status};
use crate::metrics::Metrics;
use crate::namespace::cache::{BlobFile, Delivery, Served};
use crate::namespace::store_source::StoreSource;
use crate::namespace::{FileSource, OpenError};
use crate::net::ratelimit::{LogBudget, Verdict};
use crate::ownership::gate::{NotServed, Purpose};
use crate::wire::path::{ClientPath, PathError};

/// Bytes per body chunk: large enough to be cheap, small enough to notice a hang-up.
const CHUNK: usize = 256 * 1024;

/// Refusal log lines per client address (a process has one HTTP listener).
static REFUSAL_LOGS: LazyLock<Mutex<LogBudget<IpAddr>>> =
    LazyLock::new(|| Mutex::new(LogBudget::new()));

/// Why a boot file was refused, for the log and metrics (never for the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hidden {
    UnknownNode,
    NoSuchFile,
    NotServed(NotServed),
    BlobMissing,
}

impl Hidden {
    fn label(self) -> &'static str {
        match self {
            Hidden::UnknownNode => "unknown_node",
            Hidden::NoSuchFile => "no_such_file",
            Hidden::NotServed(r) => r.label(),
            Hidden::BlobMissing => "blob_missing",
        }
    }
}

/// The one answer to every refused boot file: 404, the same body whatever the reason,
/// except a client that is not the node (`node_files = "bound"` or `"token"`): 403,
/// like TFTP's ERROR 2, so the firmware's operator sees a refusal. Neither names owner
/// or epoch. The reason is counted, and logged with the node's owner and epoch when
/// known.
fn hidden(
    app: &App,
    peer: SocketAddr,
    why: Hidden,
    node: &str,
    path: &str,
    owner: Option<(&str, u64)>,
) -> ApiError {
    app.metrics.http.boot_failed.inc(why.label());
    let v = REFUSAL_LOGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(&peer.ip().to_canonical(), Instant::now());
    match v {
        Verdict::Allow { suppressed } => info!(
            client = %peer, node = %node, path = %path.escape_debug(), reason = why.label(),
            owner = owner.map(|o| o.0), epoch = owner.map(|o| o.1), host = %app.host, suppressed,
            "http boot file refused"
        ),
        Verdict::Deny => app.metrics.http.suppressed_logs.inc(),
    }
    match why {
        // One answer for every refusal of the requester (address, token): it learns
        // nothing of which rule refused it.
        Hidden::NotServed(r) if r.is_client_refusal() => ApiError::NotServed {
            reason: NotServed::WrongClient,
            message: "boot file refused to this client".into(),
            details: serde_json::Value::Null,
        },
        _ => ApiError::NotFound("boot file".into()),
    }
}

/// A boot route of [`super::router`]: `/boot/{node}/{*path}`, or the fallback that
/// serves the TFTP namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/boot/{node}/{*path}`, for this node (as the router decodes it).
    Node(&'a str),
    /// Any other path: the TFTP namespace.
    Namespace,
}

impl Route<'_> {
    /// The route's metric label, as [`super::limits::route_label`] names it.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Node(_) => "/boot/{node}/{*path}",
            Route::Namespace => "unmatched",
        }
    }
}

/// Prefixes of the paths other routes of [`super::router`] serve (and their neighbours):
/// the fast path leaves them to the router.
const ROUTED: [&str; 5] = ["/boot", "/ui", "/metrics", "/v1", "/cluster"];

/// The boot route `path` (as sent, percent-encoded) reaches, when that is certain without
/// the router: the fast path of [`super::conn`] answers these, the router everything
/// else (`/boot/{node}/done`, a node name to percent-decode, other routes).
pub fn fast_route(path: &str) -> Option<Route<'_>> {
    if let Some(rest) = path.strip_prefix("/boot/") {
        let (node, file) = rest.split_once('/')?;
        if node.is_empty() || node.contains('%') || file.is_empty() || file == "done" {
            return None;
        }
        return Some(Route::Node(node));
    }
    if path == "/" || ROUTED.iter().any(|p| path.starts_with(p)) {
        return None;
    }
    Some(Route::Namespace)
}

/// A boot file request, as the handlers and the fast path both see it.
#[derive(Debug, Clone, Copy)]
pub struct BootRequest<'a> {
    /// The client.
    pub peer: SocketAddr,
    /// `GET` or `HEAD` (anything else is no boot file).
    pub method: &'a Method,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The request's header fields.
    pub headers: &'a HeaderMap,
}

/// The answer to a boot file request: status, header fields, and where the body is.
#[derive(Debug)]
pub struct Plan {
    /// 200, 206 or 304.
    pub status: StatusCode,
    /// Every header field but `Date` and `Connection` (the connection's business).
    pub headers: HeaderMap,
    /// The body.
    pub body: PlanBody,
}

/// Where a planned body comes from.
#[derive(Debug)]
// One per request, moved once into its writer: never stored in bulk.
#[allow(clippy::large_enum_variant)]
pub enum PlanBody {
    /// None (`HEAD`, 304).
    Empty,
    /// Bytes `start..start + len` of `body`, tracked as a boot download.
    Send {
        /// In memory, or the verified blob file.
        body: Served,
        /// First byte.
        start: u64,
        /// Bytes to send.
        len: u64,
        /// Metrics and the boot timeline of this download.
        transfer: Transfer,
    },
}

impl Plan {
    /// The response the router sends: the body streams from the in-memory copy.
    pub fn into_response(self) -> Response {
        let body = match self.body {
            PlanBody::Empty => Body::empty(),
            PlanBody::Send {
                body: Served::Memory(data),
                start,
                len,
                transfer,
            } => {
                let bytes = data.octets().slice(start as usize..(start + len) as usize);
                Body::from_stream(TrackedBody { bytes, transfer })
            }
            // Only the fast path asks for files (Delivery::File), and writes them itself.
            PlanBody::Send {
                body: Served::File(_),
                ..
            } => {
                return ApiError::Internal("a blob file body reached the router".into())
                    .into_response()
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// Decides the answer to a boot file request on `route`, bodies as `delivery` says: the
/// one place every rule of HTTP boot is applied (path rules, node lookup, serve gate,
/// refusal records and logs, validators, Range), for the router and the fast path alike.
pub async fn resolve(
    app: &Arc<App>,
    source: &StoreSource,
    req: &BootRequest<'_>,
    route: Route<'_>,
    delivery: Delivery,
) -> Result<Plan, ApiError> {
    match route {
        Route::Node(node) => node_file(app, req, node, delivery).await,
        Route::Namespace => namespace(app, source, req, delivery).await,
    }
}

/// `GET|HEAD /boot/{node}/{*path}`.
pub async fn boot_file(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(source): Extension<Arc<StoreSource>>,
    method: Method,
    Path((node, _)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = BootRequest {
        peer,
        method: &method,
        path: uri.path(),
        headers: &headers,
    };
    resolve(&app, &source, &req, Route::Node(&node), Delivery::Memory)
        .await
        .map(Plan::into_response)
}

/// `GET|HEAD /<path>` for any other path: the TFTP namespace over HTTP (owned nodes'
/// files by their served path, then the shared root). This is what an iPXE script
/// fetched over HTTP reaches with `kernel /nodes/n1/kernel`, and what UEFI HTTP boot
/// clients fetch their loader from.
pub async fn namespace_file(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(source): Extension<Arc<StoreSource>>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = BootRequest {
        peer,
        method: &method,
        path: uri.path(),
        headers: &headers,
    };
    resolve(&app, &source, &req, Route::Namespace, Delivery::Memory)
        .await
        .map(Plan::into_response)
}

/// A node's file by the node's name.
async fn node_file(
    app: &Arc<App>,
    req: &BootRequest<'_>,
    node: &str,
    delivery: Delivery,
) -> Result<Plan, ApiError> {
    let (app, peer) = (&**app, req.peer);
    // The path as sent (still percent-encoded): decoded once, by the path rules.
    let raw = req
        .path
        .strip_prefix("/boot/")
        .and_then(|r| r.split_once('/'))
        .map_or("", |(_, p)| p);
    let path = ClientPath::from_url(raw).map_err(|e| path_refused(&e, raw))?;
    let want = path.as_str();
    // Sampled before the reads: see LeaseView.
    let lease = app.gate.lease_view();
    let Some(n) = app.store.node(node)? else {
        return Err(hidden(app, peer, Hidden::UnknownNode, node, want, None));
    };
    let owner = Some((n.owner.as_str(), n.epoch));
    let files = app.store.node_files(node)?;
    let Some(nf) = path
        .candidates()
        .find_map(|c| files.iter().find(|f| f.path == c))
        .cloned()
    else {
        app.boots.refused(
            Proto::Http,
            peer.ip(),
            &path,
            Some(node),
            &OpenError::NotFound,
        );
        return Err(hidden(app, peer, Hidden::NoSuchFile, node, want, owner));
    };
    let (client, token) = (Some(peer.ip()), path.token());
    if let Err(r) = app
        .gate
        .check(lease, &n, Purpose::Files { client, token }, Some(&nf.path))
    {
        app.boots.refused(
            Proto::Http,
            peer.ip(),
            &path,
            Some(node),
            &OpenError::NotServed(r),
        );
        return Err(hidden(app, peer, Hidden::NotServed(r), node, want, owner));
    }
    let body = app
        .blobs
        .served(&nf.digest, delivery)
        .await
        .map_err(|e| match e {
            OpenError::NotFound => hidden(app, peer, Hidden::BlobMissing, node, want, owner),
            e => ApiError::Internal(e.to_string()),
        })?;
    plan_body(app, req, body, Some(nf.digest.to_string()), node, &path)
}

/// A path of the TFTP namespace: owned nodes' files, then the shared root.
async fn namespace(
    app: &Arc<App>,
    source: &StoreSource,
    req: &BootRequest<'_>,
    delivery: Delivery,
) -> Result<Plan, ApiError> {
    let (app, peer, method) = (&**app, req.peer, req.method);
    let path = req.path.trim_start_matches('/');
    if path.starts_with("v1/") || path.starts_with("cluster/") || path.is_empty() {
        return Err(ApiError::NotFound("route".into()));
    }
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::NotFound("route".into()));
    }
    let path = ClientPath::from_url(req.path).map_err(|e| path_refused(&e, req.path))?;
    let client = Some(peer.ip());
    match source.owned_node_file(&path, client) {
        Ok(Some(nf)) => {
            let body = source
                .node_file_served(&path, client, &nf, delivery)
                .await
                .map_err(|e| {
                    app.boots
                        .refused(Proto::Http, peer.ip(), &path, Some(&nf.node), &e);
                    match e {
                        OpenError::NotServed(r) => hidden(
                            app,
                            peer,
                            Hidden::NotServed(r),
                            &nf.node,
                            path.as_str(),
                            None,
                        ),
                        OpenError::NotFound => hidden(
                            app,
                            peer,
                            Hidden::BlobMissing,
                            &nf.node,
                            path.as_str(),
                            None,
                        ),
                        e => ApiError::Internal(e.to_string()),
                    }
                })?;
            return plan_body(app, req, body, Some(nf.digest.to_string()), &nf.node, &path);
        }
        Ok(None) => {}
        Err(e @ OpenError::NotServed(r)) => {
            app.boots.refused(Proto::Http, peer.ip(), &path, None, &e);
            return Err(hidden(
                app,
                peer,
                Hidden::NotServed(r),
                "-",
                path.as_str(),
                None,
            ));
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    }
    match source.shared().open(&path, client).await {
        Ok(d) => plan_body(app, req, Served::Memory(d), None, "-", &path),
        Err(e @ OpenError::NotFound) => {
            app.boots.refused(Proto::Http, peer.ip(), &path, None, &e);
            Err(ApiError::NotFound(format!("file {path}")))
        }
        Err(OpenError::Denied(r)) => Err(ApiError::Conflict {
            message: format!("access to {path} refused ({})", r.replace('_', " ")),
            details: serde_json::json!({ "reason": r }),
        }),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// The answer to a path the rules refuse: 400 when the request is malformed, else 404
/// (no file can have that name), with the reason.
fn path_refused(e: &PathError, raw: &str) -> ApiError {
    let shown: String = raw.chars().take(120).collect();
    if e.is_encoding() {
        ApiError::field("path", format!("{e}: {shown}"))
    } else {
        ApiError::NotFound(format!("file {shown} ({e})"))
    }
}

/// Plans the answer with `body`: validators, Range, HEAD, and a tracked download;
/// `path` is what the client asked for (for the boot timeline).
fn plan_body(
    app: &App,
    req: &BootRequest<'_>,
    body: Served,
    digest: Option<String>,
    node: &str,
    path: &ClientPath,
) -> Result<Plan, ApiError> {
    let headers = req.headers;
    let want = path.as_str();
    let hint = (node != "-").then_some(node);
    let etag = digest.map(|d| format!("\"{d}\""));
    if let Some(etag) = &etag {
        if headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        {
            let mut h = HeaderMap::new();
            h.insert(header::ETAG, hv(etag));
            return Ok(Plan {
                status: StatusCode::NOT_MODIFIED,
                headers: h,
                body: PlanBody::Empty,
            });
        }
    }
    let len = body.len();
    // If-Range with another validator: the client's partial copy is stale, send it all.
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| etag.as_deref() == Some(v.trim()));
    let p = if if_range_ok {
        plan(range_header, len)
    } else {
        RangePlan::Full
    };
    let (status, start, end) = match p {
        RangePlan::Full => (StatusCode::OK, 0, len),
        RangePlan::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        RangePlan::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(len)),
    };
    let n = end - start;
    let body = if *req.method == Method::HEAD {
        PlanBody::Empty
    } else {
        debug!(node = %node, path = %want, bytes = n, "http boot download");
        let live = app.boots.begin(Proto::Http, req.peer.ip(), path, hint, n);
        PlanBody::Send {
            body,
            start,
            len: n,
            transfer: Transfer::new(
                app.metrics.clone(),
                node.to_string(),
                want.to_string(),
                n,
                live,
            ),
        }
    };
    let mut h = HeaderMap::with_capacity(8);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(etag) = &etag {
        h.insert(header::ETAG, hv(etag));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {start}-{}/{len}", end - 1)),
        );
    }
    Ok(Plan {
        status,
        headers: h,
        body,
    })
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// One boot download as metrics and the boot timeline see it, whichever way its bytes
/// go: started when planned, advanced as bytes are handed to the socket, complete at the
/// last byte, and aborted (`client_disconnected`) if dropped before.
pub struct Transfer {
    metrics: Arc<Metrics>,
    started: Instant,
    node: String,
    path: String,
    len: u64,
    sent: u64,
    done: bool,
    live: Option<LiveTransfer>,
}

impl Transfer {
    fn new(
        metrics: Arc<Metrics>,
        node: String,
        path: String,
        len: u64,
        live: LiveTransfer,
    ) -> Self {
        metrics.http.boot_started.inc();
        metrics.http.boot_active.add(1);
        Transfer {
            metrics,
            started: Instant::now(),
            node,
            path,
            len,
            sent: 0,
            done: false,
            live: Some(live),
        }
    }

    /// `n` more bytes were handed over; the download is complete at its last byte
    /// (with `n == 0`, an empty body is complete once its head is out).
    pub fn advance(&mut self, n: u64) {
        if n > 0 {
            self.metrics.http.boot_bytes.add(n);
            self.sent += n;
            if let Some(l) = &self.live {
                l.progress(self.sent);
            }
        }
        if self.sent >= self.len {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let m = &self.metrics.http;
        m.boot_completed.inc();
        m.boot_duration.observe(self.started.elapsed());
        if let Some(l) = self.live.take() {
            l.finish(Status::Ok, None, self.len);
        }
        info!(node = %self.node, path = %self.path, bytes = self.len, duration_ms = self.started.elapsed().as_millis() as u64, "http boot transfer completed");
    }
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("node", &self.node)
            .field("path", &self.path)
            .field("len", &self.len)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.metrics.http.boot_active.add(-1);
        if !self.done {
            self.metrics.http.boot_failed.inc("client_disconnected");
            if let Some(l) = self.live.take() {
                l.finish(
                    Status::Aborted,
                    Some("client_disconnected".into()),
                    self.sent,
                );
            }
            info!(node = %self.node, path = %self.path, sent = self.sent, size = self.len, "http boot transfer ended early");
        }
    }
}

/// A response body in chunks of the in-memory copy, tracked as its [`Transfer`].
struct TrackedBody {
    bytes: Bytes,
    transfer: Transfer,
}

impl Stream for TrackedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let sent = self.transfer.sent as usize;
        if sent >= self.bytes.len() {
            // An empty body, or polled again after the last chunk.
            self.transfer.advance(0);
            return Poll::Ready(None);
        }
        let end = (sent + CHUNK).min(self.bytes.len());
        let chunk = self.bytes.slice(sent..end);
        // With Content-Length set, hyper stops polling after the last byte: the
        // transfer is complete when its last chunk is handed over.
        self.transfer.advance(chunk.len() as u64);
        Poll::Ready(Some(Ok(chunk)))
    }
}

/// Sends `len` bytes of `file` from `start` on a nonblocking socket with sendfile(2),
/// waiting for the socket to drain when it is full; `sent(n)` after each call that
/// moved `n` bytes. The bytes go from the page cache to the socket without a copy
/// through this process.
pub async fn send_file(
    sock: &tokio::net::TcpStream,
    file: &BlobFile,
    start: u64,
    len: u64,
    mut sent: impl FnMut(u64),
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    /// Most bytes asked of one call (the socket's free space bounds it anyway).
    const MAX: u64 = 1 << 30;
    let (out, inp) = (sock.as_raw_fd(), file.file().as_raw_fd());
    let end = start + len;
    let mut at = start;
    while at < end {
        sock.writable().await?;
        let want = (end - at).min(MAX) as usize;
        let mut moved = 0;
        let r = sock.try_io(tokio::io::Interest::WRITABLE, || {
            let mut off = libc::off_t::try_from(at).map_err(std::io::Error::other)?;
            // SAFETY: both descriptors stay open for the call (borrowed above) and `off`
            // is a valid off_t the kernel updates; sendfile(2) reads no memory of ours.
            let n = unsafe { libc::sendfile(out, inp, &mut off, want) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            moved = n as u64;
            if n > 0 && (n as usize) < want {
                // A short count on a nonblocking socket: its buffer is full. Reported as
                // WouldBlock so the readiness is cleared now, as nginx does, rather than
                // by one more call that would fail with EAGAIN.
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match r {
            Ok(()) | Err(_) if moved > 0 => {
                at += moved;
                sent(moved);
            }
            Ok(()) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "blob file shorter than when verified",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
