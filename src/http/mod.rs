//! The HTTP listener: admin API (`/v1`, bearer token), HTTP boot (`/boot`), peer routes
//! (`/cluster`, cluster secret) and `/metrics` in Prometheus text format. The top driver:
//! handlers translate between HTTP and the handles in [`crate::app::App`]; bodies are the
//! types of [`crate::api`]; no rule is decided here that a handle already decides.

pub mod api;
pub mod auth;
pub mod boot;
pub mod boots;
pub mod cluster;
pub mod conn;
pub mod error;
pub mod head;
pub mod import;
pub mod ingest;
pub mod json;
pub mod limits;
pub mod range;
pub mod rebalance;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::app::App;
use crate::config::HttpConfig;
use crate::namespace::store_source::StoreSource;
use axum::Extension;

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Bind failed.
    #[error("cannot listen on tcp/{addr}: {source}. Choose another address with --http-listen")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything: API, cluster RPC, HTTP boot, UI, metrics.
    All,
    /// What firmware and browsers fetch without a token: HTTP boot, TFTP namespace
    /// files, the UI page and metrics; no `/v1`, no `/cluster` (the plain-HTTP boot
    /// listener next to an HTTPS API).
    Boot,
}

/// Builds the router of `routes`; `max_upload` is the body limit of artifact uploads.
pub fn router(
    app: Arc<App>,
    token: String,
    source: Arc<StoreSource>,
    max_upload: u64,
    routes: Routes,
) -> Router {
    let token = auth::Token(Arc::new(token));
    let max_upload = Arc::new(limits::MaxUpload(max_upload));
    let mut r = Router::new();
    if routes == Routes::All {
        let api = api::routes()
            .merge(boots::api_routes())
            .merge(ingest::routes())
            .merge(import::routes())
            .merge(rebalance::routes())
            .route_layer(middleware::from_fn_with_state(token, auth::require_token));
        r = r.merge(api).merge(cluster::routes(app.clone()));
    }
    r.merge(ui::routes())
        .route("/metrics", get(metrics))
        .route(
            "/boot/{node}/{*path}",
            get(boot::boot_file).head(boot::boot_file),
        )
        .route(
            "/boot/{node}/done",
            post(boots::report)
                .get(boots::done_file)
                .head(boots::done_file),
        )
        .fallback(boot::namespace_file)
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .layer(Extension(source))
        .layer(middleware::from_fn_with_state(
            max_upload,
            limits::limit_body,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), count_requests))
        .layer(middleware::from_fn(close_on_refused_body))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut body = app.metrics.render();
    app.boots.metrics().render(&mut body);
    let store_bytes = std::fs::metadata(app.store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    let nodes = app
        .store
        .count_nodes(&crate::store::NodeFilter::default())
        .unwrap_or(0);
    let events = app.feed.last();
    body.push_str(&format!(
        "# HELP baton_store_bytes Size of the store's database file.\n# TYPE baton_store_bytes gauge\nbaton_store_bytes {store_bytes}\n\
         # HELP baton_store_nodes Nodes in the store.\n# TYPE baton_store_nodes gauge\nbaton_store_nodes {nodes}\n\
         # HELP baton_store_last_event Sequence number of the newest event.\n# TYPE baton_store_last_event gauge\nbaton_store_last_event {events}\n"
    ));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

/// A refusal sent before the request body was read leaves that body on the wire:
/// tell the client this connection closes, so it doesn't reuse a desynchronised one.
async fn close_on_refused_body(req: Request, next: Next) -> Response {
    let has_body = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "0")
        || req
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Counts requests by method and route and refusals by status, with labels from a fixed
/// set ([`limits::method_label`], [`limits::route_label`]).
async fn count_requests(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let label = format!(
        "{} {}",
        limits::method_label(req.method()),
        limits::route_label(req.extensions().get::<MatchedPath>())
    );
    let resp = next.run(req).await;
    count_request(&app.metrics.http, &label, resp.status());
    resp
}

/// Counts one answered request: `label` is "method route" ([`count_requests`]), and a
/// refusal is counted by its status. The fast path of [`conn`] counts through here too.
pub(crate) fn count_request(m: &crate::metrics::HttpMetrics, label: &str, status: StatusCode) {
    m.requests.inc(label);
    if status.is_client_error() || status.is_server_error() {
        m.errors.inc(status.as_str());
    }
}

/// Binds the HTTP listener.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    Ok(l)
}

/// How a listener serves: its routes, and TLS (the rustls configuration, and whether
/// the cluster routes demand a client certificate) or plain HTTP.
#[derive(Clone)]
pub struct Listener {
    /// Routes served.
    pub routes: Routes,
    /// TLS, or plain HTTP.
    pub tls: Option<(Arc<rustls::ServerConfig>, bool)>,
}

/// Serves until `shutdown` is cancelled, under the limits of `cfg` (see [`conn`]).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: tokio::net::TcpListener,
    how: Listener,
    app: Arc<App>,
    token: String,
    source: Arc<StoreSource>,
    cfg: &HttpConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let limits = conn::ConnLimits::from(cfg);
    info!(
        addr = %addr,
        tls = how.tls.is_some(),
        routes = ?how.routes,
        max_connections = limits.max_connections,
        max_connections_per_ip = limits.max_per_ip,
        fd_share = crate::net::fds::current().http,
        header_timeout_ms = cfg.header_timeout_ms,
        idle_timeout_ms = cfg.idle_timeout_ms,
        "http server listening"
    );
    let metrics = app.metrics.clone();
    // Plain-HTTP boot downloads take the fast path (sendfile); TLS ones go through hyper.
    let fast = how.tls.is_none().then(|| conn::BootFiles {
        app: app.clone(),
        source: source.clone(),
    });
    let router = router(app, token, source, cfg.max_upload_bytes, how.routes);
    let tls = how.tls.map(|(c, mark_client_cert)| conn::Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(c),
        mark_client_cert,
    });
    conn::serve(listener, router, limits, metrics, shutdown, tls, fast).await
}
