//! Peer-to-peer routes (`/cluster/...`) on the HTTP port: Raft RPC, write forwarding,
//! joining, membership changes and blob fetches. Every request must carry the cluster
//! secret; a host without one refuses them all.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesResponse, VoteRequest};
use openraft::ChangeMembers;
use tracing::{info, warn};

use super::error::ApiError;
use super::range::{plan, RangePlan};
use crate::api::peer::{
    self as wire, ClockReply, JoinRequest, Joined, NotLeader, PreVoteRequest, PreVoteResponse,
    RemoveRequest, Removed, SECRET_HEADER, TARGET_HEADER,
};
use crate::api::ErrorBody;
use crate::app::App;
use crate::store::raft::wire as codec;
use crate::store::raft::{elect, typ, NodeId, Peer};
use crate::store::Command;

/// The `/cluster` routes.
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    // Each POST route takes bodies up to its limit (413 beyond); GET routes read none.
    let limited = |route: &str, m: axum::routing::MethodRouter<Arc<App>>| {
        m.layer(DefaultBodyLimit::max(wire::body_limit(route).unwrap_or(0)))
    };
    Router::new()
        .route(wire::APPEND, limited(wire::APPEND, post(append)))
        .route(wire::VOTE, limited(wire::VOTE, post(vote)))
        .route(wire::PREVOTE, limited(wire::PREVOTE, post(prevote)))
        .route(wire::SNAPSHOT, limited(wire::SNAPSHOT, post(snapshot)))
        .route(wire::PROPOSE, limited(wire::PROPOSE, post(propose)))
        .route(wire::JOIN, limited(wire::JOIN, post(join)))
        .route(wire::REMOVE, limited(wire::REMOVE, post(remove)))
        .route(wire::METRICS, get(metrics))
        .route(wire::CLOCK, get(clock))
        .route(&format!("{}/{{digest}}", wire::BLOB), get(blob))
        .route(wire::BOOTS, get(super::boots::peer_summary))
        .route(
            &format!("{}/{{node}}", wire::BOOTS),
            get(super::boots::peer_node),
        )
        .route_layer(axum::middleware::from_fn_with_state(app, require_secret))
}

async fn require_secret(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(secret) = &app.secret else {
        app.metrics.http.errors.inc("cluster_disabled");
        return (
            StatusCode::FORBIDDEN,
            Json(ErrorBody::new(
                "cluster_disabled",
                "this host has no cluster secret: clustering is disabled",
            )),
        )
            .into_response();
    };
    let ok = req
        .headers()
        .get(SECRET_HEADER)
        .is_some_and(|v| super::auth::constant_time_eq(v.as_bytes(), secret.as_bytes()));
    if !ok {
        app.metrics.http.errors.inc("cluster_secret");
        warn!(path = %req.uri().path(), "peer request with a wrong or missing cluster secret refused");
        return (
            StatusCode::FORBIDDEN,
            Json(ErrorBody::new(
                "forbidden",
                "wrong or missing cluster secret",
            )),
        )
            .into_response();
    }
    // In mTLS mode the connection loop notes whether the client presented a certificate
    // from `tls.ca` (one from elsewhere never gets this far: the handshake fails).
    if req.extensions().get::<crate::tls::ClientCert>() == Some(&crate::tls::ClientCert(false)) {
        app.metrics.http.errors.inc("cluster_client_cert");
        warn!(path = %req.uri().path(), "peer request without a client certificate refused (tls.peer_auth = mtls)");
        return (
            StatusCode::FORBIDDEN,
            Json(ErrorBody::new(
                "forbidden",
                "this cluster requires a TLS client certificate from its CA (tls.peer_auth = mtls)",
            )),
        )
            .into_response();
    }
    next.run(req).await
}

/// A Raft message meant for another identity (this host's old one, before it lost its
/// data): refused, so the leader treats that identity as unreachable.
fn misdirected(app: &App, headers: &HeaderMap) -> Option<Response> {
    let target: u64 = headers.get(TARGET_HEADER)?.to_str().ok()?.parse().ok()?;
    (target != app.proposer.node_id()).then(|| {
        let msg = format!("this is node {}, not {target}", app.proposer.node_id());
        (
            StatusCode::MISDIRECTED_REQUEST,
            Json(ErrorBody::new("misdirected", msg)),
        )
            .into_response()
    })
}

/// A Raft body that does not decode: 400, counted.
fn malformed(app: &App, e: codec::WireError) -> Response {
    app.metrics.http.errors.inc(e.label());
    warn!(error = %e, "malformed Raft message from a peer refused");
    let status = match e {
        codec::WireError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        codec::WireError::Malformed { .. } => StatusCode::BAD_REQUEST,
    };
    (status, Json(ErrorBody::new(e.label(), e.to_string()))).into_response()
}

async fn append(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = misdirected(&app, &headers) {
        return r;
    }
    let req = match codec::decode_append(&body) {
        Ok(r) => r,
        Err(e) => return malformed(&app, e),
    };
    drop(body);
    let r = app.proposer.raft().append_entries(req).await;
    // Contact from a leader this host accepts: it keeps the pre-vote closed.
    if matches!(&r, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
        app.election.contact.touch();
    }
    Json(r).into_response()
}

async fn prevote(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<PreVoteRequest>,
) -> Response {
    if let Some(r) = misdirected(&app, &headers) {
        return r;
    }
    let r: PreVoteResponse = elect::answer(app.proposer.raft(), &app.election, &req).await;
    Json(r).into_response()
}

async fn vote(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Response {
    if let Some(r) = misdirected(&app, &headers) {
        return r;
    }
    Json(app.proposer.raft().vote(req).await).into_response()
}

async fn snapshot(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = misdirected(&app, &headers) {
        return r;
    }
    let req = match codec::decode_chunk(&body) {
        Ok(r) => r,
        Err(e) => return malformed(&app, e),
    };
    drop(body);
    let vote = req.vote;
    let r = app.proposer.raft().install_snapshot(req).await;
    if matches!(&r, Ok(s) if s.vote <= vote) {
        app.election.contact.touch();
    }
    Json(r).into_response()
}

async fn propose(State(app): State<Arc<App>>, Json(cmd): Json<Command>) -> impl IntoResponse {
    Json(app.proposer.accept_forwarded(cmd).await)
}

/// Adds a host as a learner, waits for it to catch up, then makes it a voter.
async fn join(
    State(app): State<Arc<App>>,
    Json(j): Json<JoinRequest>,
) -> Result<Json<Joined>, ApiError> {
    let peer = Peer {
        addr: j.addr.clone(),
        host: j.host.clone(),
    };
    info!(node_id = j.node_id, host = %j.host, addr = %j.addr, "host joining as learner");
    let unavailable = |e: RaftError<NodeId, ClientWriteError<NodeId, Peer>>| {
        leader_hint(&e).unwrap_or_else(|| ApiError::Unavailable(e.to_string()))
    };
    app.proposer
        .raft()
        .add_learner(j.node_id, peer, true)
        .await
        .map_err(unavailable)?;
    let voters = BTreeSet::from([j.node_id]);
    app.proposer
        .raft()
        .change_membership(ChangeMembers::AddVoterIds(voters), false)
        .await
        .map_err(unavailable)?;
    info!(node_id = j.node_id, host = %j.host, "host joined as voter");
    Ok(Json(Joined { joined: j.node_id }))
}

/// Removes members (voters and learners) from the cluster.
async fn remove(
    State(app): State<Arc<App>>,
    Json(r): Json<RemoveRequest>,
) -> Result<Json<Removed>, ApiError> {
    let ids: BTreeSet<NodeId> = r.node_ids.iter().copied().collect();
    let m = app.proposer.raft().metrics().borrow().clone();
    let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
    let remove_voters: BTreeSet<NodeId> = ids.intersection(&voters).copied().collect();
    if !remove_voters.is_empty() {
        if let Err(e) = app
            .proposer
            .raft()
            .change_membership(ChangeMembers::RemoveVoters(remove_voters), false)
            .await
        {
            return Err(membership_error(e));
        }
    }
    let res = app
        .proposer
        .raft()
        .change_membership(ChangeMembers::RemoveNodes(ids.clone()), false)
        .await;
    match res {
        Ok(_) => {
            info!(node_ids = ?ids, "members removed");
            Ok(Json(Removed {
                removed: ids.into_iter().collect(),
            }))
        }
        Err(e) => Err(membership_error(e)),
    }
}

/// "Not the leader" with the leader's address, so the caller can retry there.
fn leader_hint(e: &RaftError<NodeId, ClientWriteError<NodeId, Peer>>) -> Option<ApiError> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Some(ApiError::Conflict {
            message: "not the leader".into(),
            details: serde_json::to_value(NotLeader {
                leader: f.leader_node.as_ref().map(|p| p.addr.clone()),
            })
            .unwrap_or_default(),
        }),
        _ => None,
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, Peer>>) -> ApiError {
    leader_hint(&e).unwrap_or_else(|| ApiError::BadRequest {
        field: Some("node_ids".into()),
        message: e.to_string(),
    })
}

async fn metrics(State(app): State<Arc<App>>) -> Json<typ::Metrics> {
    let m = app.proposer.raft().metrics().borrow().clone();
    Json(m)
}

async fn clock(State(app): State<Arc<App>>) -> Json<ClockReply> {
    Json(ClockReply {
        host: app.host.clone(),
        node_id: app.proposer.node_id(),
        members: app.proposer.members(),
        now_ms: crate::clock::now_ms(),
        node_files: Some(app.gate.access().to_string()),
    })
}

/// A blob this host holds, with `Range` so an interrupted fetch resumes.
async fn blob(
    State(app): State<Arc<App>>,
    Path(d): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let d: crate::blobs::Digest = d
        .parse()
        .map_err(|_| ApiError::field("digest", "not a sha256 digest"))?;
    let Some(path) = app.blobs.store().get(&d) else {
        // Small rendered files live in the replicated store, not as blob files: every
        // replica holds them, so every peer can serve them.
        return match app.store.inline_file(&d)? {
            Some(bytes) => {
                Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
            }
            None => Err(ApiError::NotFound(format!("blob {d}"))),
        };
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .len();
    let p = plan(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    let (status, start, end) = match p {
        RangePlan::Full => (StatusCode::OK, 0, len),
        RangePlan::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        RangePlan::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(len)),
    };
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(end - start), 256 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, (end - start).into());
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = format!("bytes {start}-{}/{len}", end - 1).parse() {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}
