//! HTTP boot: a node's files under `/boot/<node>/<path>`, for iPXE and UEFI HTTP-boot
//! clients, with `Range`, `ETag` (the sha256), `If-None-Match` and `HEAD`. The same
//! owned-node rule as TFTP applies. Bodies stream from the shared in-memory copy.
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

/// `GET|HEAD /boot/{node}/{*path}`.
pub async fn boot_file(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Path((node, _)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The path as sent (still percent-encoded): decoded once, by the path rules.
    let raw = uri
        .path()
        .strip_prefix("/boot/")
        .and_then(|r| r.split_once('/'))
        .map_or("", |(_, p)| p);
    let path = ClientPath::from_url(raw).map_err(|e| path_refused(&e, raw))?;
    let want = path.as_str();
    // Sampled before the reads: see LeaseView.
    let lease = app.gate.lease_view();
    let Some(n) = app.store.node(&node)? else {
        return Err(hidden(&app, peer, Hidden::UnknownNode, &node, want, None));
    };
    let owner = Some((n.owner.as_str(), n.epoch));
    let files = app.store.node_files(&node)?;
    let Some(nf) = path
        .candidates()
        .find_map(|c| files.iter().find(|f| f.path == c))
        .cloned()
    else {
        app.boots.refused(
            Proto::Http,
            peer.ip(),
            &path,
            Some(&node),
            &OpenError::NotFound,
        );
        return Err(hidden(&app, peer, Hidden::NoSuchFile, &node, want, owner));
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
            Some(&node),
            &OpenError::NotServed(r),
        );
        return Err(hidden(&app, peer, Hidden::NotServed(r), &node, want, owner));
    }
    let data = app.blobs.bytes(&nf.digest).await.map_err(|e| match e {
        OpenError::NotFound => hidden(&app, peer, Hidden::BlobMissing, &node, want, owner),
        e => ApiError::Internal(e.to_string()),
    })?;
    respond(
        &app,
        &method,
        &headers,
        data.octets().clone(),
        Some(nf.digest.to_string()),
        &node,
        (peer.ip(), &path),
    )
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
    let path = uri.path().trim_start_matches('/');
    if path.starts_with("v1/") || path.starts_with("cluster/") || path.is_empty() {
        return Err(ApiError::NotFound("route".into()));
    }
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::NotFound("route".into()));
    }
    let path = ClientPath::from_url(uri.path()).map_err(|e| path_refused(&e, uri.path()))?;
    let client = Some(peer.ip());
    match source.owned_node_file(&path, client) {
        Ok(Some(nf)) => {
            let data = source
                .node_file_bytes(&path, client, &nf)
                .await
                .map_err(|e| {
                    app.boots
                        .refused(Proto::Http, peer.ip(), &path, Some(&nf.node), &e);
                    match e {
                        OpenError::NotServed(r) => hidden(
                            &app,
                            peer,
                            Hidden::NotServed(r),
                            &nf.node,
                            path.as_str(),
                            None,
                        ),
                        OpenError::NotFound => hidden(
                            &app,
                            peer,
                            Hidden::BlobMissing,
                            &nf.node,
                            path.as_str(),
                            None,
                        ),
                        e => ApiError::Internal(e.to_string()),
                    }
                })?;
            return respond(
                &app,
                &method,
                &headers,
                data.octets().clone(),
                Some(nf.digest.to_string()),
                &nf.node,
                (peer.ip(), &path),
            );
        }
        Ok(None) => {}
        Err(e @ OpenError::NotServed(r)) => {
            app.boots.refused(Proto::Http, peer.ip(), &path, None, &e);
            return Err(hidden(
                &app,
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
        Ok(d) => respond(
            &app,
            &method,
            &headers,
            d.octets().clone(),
            None,
            "-",
            (peer.ip(), &path),
        ),
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

/// Answers with `bytes`: validators, Range, HEAD, and a tracked streaming body; `who`
/// is the requester and the path it asked for (for the boot timeline).
fn respond(
    app: &Arc<App>,
    method: &Method,
    headers: &HeaderMap,
    bytes: Bytes,
    digest: Option<String>,
    node: &str,
    who: (std::net::IpAddr, &ClientPath),
) -> Result<Response, ApiError> {
    let want = who.1.as_str();
    let hint = (node != "-").then_some(node);
    let etag = digest.map(|d| format!("\"{d}\""));
    if let Some(etag) = &etag {
        if headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            r.headers_mut().insert(header::ETAG, hv(etag));
            return Ok(r);
        }
    }
    let node = node.to_string();
    let method = method.clone();
    let len = bytes.len() as u64;
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
    let body_bytes = bytes.slice(start as usize..end as usize);
    let mut resp = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        debug!(node = %node, path = %want, bytes = body_bytes.len(), "http boot download");
        let live = app
            .boots
            .begin(Proto::Http, who.0, who.1, hint, body_bytes.len() as u64);
        Response::new(Body::from_stream(TrackedBody::new(
            body_bytes.clone(),
            app.metrics.clone(),
            node,
            want.to_string(),
            live,
        )))
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(etag) = &etag {
        h.insert(header::ETAG, hv(etag));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_LENGTH, hv(&body_bytes.len().to_string()));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {start}-{}/{len}", end - 1)),
        );
    }
    Ok(resp)
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A response body in chunks that records in metrics whether it was sent in full.
struct TrackedBody {
    bytes: Bytes,
    sent: usize,
    metrics: Arc<Metrics>,
    started: Instant,
    node: String,
    path: String,
    done: bool,
    live: Option<LiveTransfer>,
}

impl TrackedBody {
    fn new(
        bytes: Bytes,
        metrics: Arc<Metrics>,
        node: String,
        path: String,
        live: LiveTransfer,
    ) -> Self {
        metrics.http.boot_started.inc();
        metrics.http.boot_active.add(1);
        TrackedBody {
            bytes,
            sent: 0,
            metrics,
            started: Instant::now(),
            node,
            path,
            done: false,
            live: Some(live),
        }
    }
}

impl Stream for TrackedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.sent >= self.bytes.len() {
            // An empty body, or polled again after the last chunk.
            self.finish();
            return Poll::Ready(None);
        }
        let end = (self.sent + CHUNK).min(self.bytes.len());
        let chunk = self.bytes.slice(self.sent..end);
        self.metrics.http.boot_bytes.add(chunk.len() as u64);
        self.sent = end;
        if let Some(l) = &self.live {
            l.progress(end as u64);
        }
        // With Content-Length set, hyper stops polling after the last byte: count the
        // transfer as complete when its last chunk is handed over.
        if self.sent == self.bytes.len() {
            self.finish();
        }
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl TrackedBody {
    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let m = &self.metrics.http;
        m.boot_completed.inc();
        m.boot_duration.observe(self.started.elapsed());
        if let Some(l) = self.live.take() {
            l.finish(Status::Ok, None, self.bytes.len() as u64);
        }
        info!(node = %self.node, path = %self.path, bytes = self.bytes.len(), duration_ms = self.started.elapsed().as_millis() as u64, "http boot transfer completed");
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.metrics.http.boot_active.add(-1);
        if !self.done {
            self.metrics.http.boot_failed.inc("client_disconnected");
            if let Some(l) = self.live.take() {
                l.finish(
                    Status::Aborted,
                    Some("client_disconnected".into()),
                    self.sent as u64,
                );
            }
            info!(node = %self.node, path = %self.path, sent = self.sent, size = self.bytes.len(), "http boot transfer ended early");
        }
    }
}
