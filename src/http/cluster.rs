//! Peer-to-peer routes (`/cluster/...`) on the HTTP port: Raft RPC, write forwarding,
//! joining, membership changes and blob fetches. Every request must carry the cluster
//! secret; a host without one refuses them all.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::error::ApiError;
use super::range::{plan, RangePlan};
use crate::app::App;
use crate::store::raft::network::{SECRET_HEADER, TARGET_HEADER};
use crate::store::raft::{NodeId, Peer, TypeConfig};
use crate::store::{Command, Outcome};

/// A forwarded write, committed: its outcome and log index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposed {
    /// Outcome of applying it.
    pub outcome: Outcome,
    /// Log index it was committed at.
    pub index: u64,
}

/// Why the leader did not take a forwarded write (then the sender retries).
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}")]
pub struct ProposeRefused {
    /// Why.
    pub reason: String,
}

/// A host asking to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Its Raft identity.
    pub node_id: NodeId,
    /// How peers reach it.
    pub addr: String,
    /// Its Baton host name.
    pub host: String,
}

/// A host's identity, wall clock and view of the membership (`GET /cluster/clock`):
/// `baton doctor` measures clock skew between hosts with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClockReply {
    /// Baton host name.
    pub host: String,
    /// Raft identity.
    pub node_id: NodeId,
    /// Wall clock, milliseconds since the Unix epoch, read as the request is answered.
    pub now_ms: crate::store::Millis,
    /// Cluster members as this host sees them.
    pub members: std::collections::BTreeMap<NodeId, Peer>,
}

/// The `/cluster` routes.
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/cluster/raft/append", post(append))
        .route("/cluster/raft/vote", post(vote))
        .route("/cluster/raft/snapshot", post(snapshot))
        .route("/cluster/propose", post(propose))
        .route("/cluster/join", post(join))
        .route("/cluster/remove", post(remove))
        .route("/cluster/metrics", get(metrics))
        .route("/cluster/clock", get(clock))
        .route("/cluster/blob/{digest}", get(blob))
        .route_layer(axum::middleware::from_fn_with_state(app, require_secret))
}

async fn require_secret(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(secret) = &app.secret else {
        app.metrics.http.errors.inc("cluster_disabled");
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": {"code": "cluster_disabled", "message": "this host has no cluster secret: clustering is disabled"}})),
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
            Json(json!({"error": {"code": "forbidden", "message": "wrong or missing cluster secret"}})),
        )
            .into_response();
    }
    next.run(req).await
}

/// A Raft message meant for another identity (this host's old one, before it lost its
/// data): refused, so the leader treats that identity as unreachable.
fn misdirected(app: &App, headers: &HeaderMap) -> Option<Response> {
    let target: u64 = headers.get(TARGET_HEADER)?.to_str().ok()?.parse().ok()?;
    (target != app.node_id).then(|| {
        let msg = format!("this is node {}, not {target}", app.node_id);
        (
            StatusCode::MISDIRECTED_REQUEST,
            Json(json!({"error": {"code": "misdirected", "message": msg}})),
        )
            .into_response()
    })
}

async fn append(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Some(r) = misdirected(&app, &headers) {
        return r;
    }
    Json(app.raft.append_entries(req).await).into_response()
}

async fn vote(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Response {
    if let Some(r) = misdirected(&app, &headers) {
        return r;
    }
    Json(app.raft.vote(req).await).into_response()
}

async fn snapshot(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    if let Some(r) = misdirected(&app, &headers) {
        return r;
    }
    Json(app.raft.install_snapshot(req).await).into_response()
}

async fn propose(State(app): State<Arc<App>>, Json(cmd): Json<Command>) -> impl IntoResponse {
    let r: Result<Proposed, ProposeRefused> = match app.raft.client_write(cmd).await {
        Ok(w) => match w.data {
            Some(outcome) => Ok(Proposed {
                outcome,
                index: w.log_id.index,
            }),
            None => Err(ProposeRefused {
                reason: "no outcome".into(),
            }),
        },
        Err(e) => Err(ProposeRefused {
            reason: e.to_string(),
        }),
    };
    Json(r)
}

/// Adds a host as a learner, waits for it to catch up, then makes it a voter.
async fn join(
    State(app): State<Arc<App>>,
    Json(j): Json<JoinRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let peer = Peer {
        addr: j.addr.clone(),
        host: j.host.clone(),
    };
    info!(node_id = j.node_id, host = %j.host, addr = %j.addr, "host joining as learner");
    let unavailable = |e: RaftError<NodeId, ClientWriteError<NodeId, Peer>>| {
        leader_hint(&e).unwrap_or_else(|| ApiError::Unavailable(e.to_string()))
    };
    app.raft
        .add_learner(j.node_id, peer, true)
        .await
        .map_err(unavailable)?;
    let voters = BTreeSet::from([j.node_id]);
    app.raft
        .change_membership(ChangeMembers::AddVoterIds(voters), false)
        .await
        .map_err(unavailable)?;
    info!(node_id = j.node_id, host = %j.host, "host joined as voter");
    Ok(Json(json!({ "joined": j.node_id })))
}

/// Which members to take out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    /// Raft identities to remove.
    pub node_ids: Vec<NodeId>,
}

/// Removes members (voters and learners) from the cluster.
async fn remove(
    State(app): State<Arc<App>>,
    Json(r): Json<RemoveRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ids: BTreeSet<NodeId> = r.node_ids.iter().copied().collect();
    let m = app.raft.metrics().borrow().clone();
    let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
    let remove_voters: BTreeSet<NodeId> = ids.intersection(&voters).copied().collect();
    if !remove_voters.is_empty() {
        if let Err(e) = app
            .raft
            .change_membership(ChangeMembers::RemoveVoters(remove_voters), false)
            .await
        {
            return Err(membership_error(e));
        }
    }
    let res = app
        .raft
        .change_membership(ChangeMembers::RemoveNodes(ids.clone()), false)
        .await;
    match res {
        Ok(_) => {
            info!(node_ids = ?ids, "members removed");
            Ok(Json(json!({ "removed": ids })))
        }
        Err(e) => Err(membership_error(e)),
    }
}

/// "Not the leader" with the leader's address, so the caller can retry there.
fn leader_hint(e: &RaftError<NodeId, ClientWriteError<NodeId, Peer>>) -> Option<ApiError> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Some(ApiError::Conflict {
            message: "not the leader".into(),
            details: json!({ "leader": f.leader_node.as_ref().map(|p| p.addr.clone()) }),
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

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let m = app.raft.metrics().borrow().clone();
    Json(json!(m))
}

async fn clock(State(app): State<Arc<App>>) -> Json<ClockReply> {
    Json(ClockReply {
        host: app.host.clone(),
        node_id: app.node_id,
        members: app.members(),
        now_ms: crate::app::now_ms(),
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
    let Some(path) = app.blobs.get(&d) else {
        return Err(ApiError::NotFound(format!("blob {d}")));
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
