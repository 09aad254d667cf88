//! The admin REST API (`/v1/...`): nodes, boot profiles, artifacts, reservations,
//! events, hosts and status. Bodies are the [`crate::api::v1`] types the CLI reads too.
//! Every write becomes a store [`Command`] proposed through the [`Proposer`]; business
//! refusals come back as 4xx with the rejection as details, a cluster without a leader
//! as 503 with `Retry-After`.
//!
//! [`Proposer`]: crate::store::raft::propose::Proposer

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::json;
use tracing::info;

use super::error::ApiError;
use super::json::{ApiJson, ApiQuery};
use crate::api::peer::RemoveRequest;
use crate::api::v1::{
    AcquireRequest, ArtifactDetail, ArtifactQuery, ClusterView, EnrollRequest, EventPage,
    EventsQuery, HandoffFilter, HostChanged, HostRemoved, HostView, MemberRole, MemberView,
    MigrateRequest, NodeDetail, NodeQuery, ProfileRequest, ReleaseQuery, RemoveHostQuery,
    RenewRequest, ReservationGrant, ReservationState, StatusView, TftpTotals, UpdateRequest,
    UploadQuery, Uploaded, MAX_PAGE, NEXT_CURSOR_HEADER,
};
use crate::api::ErrorBody;
use crate::app::App;
use crate::blobs::Digest;
use crate::clock::now_ms;
use crate::render::{boot_profile_command_with, next_token, RenderError, TokenChoice};
use crate::store::raft::peer::PeerError;
use crate::store::raft::propose::ProposeError;
use crate::store::{
    Applied, Artifact, BootProfile, Command, KernelBoot, Node, NodeFile, NodeFilter, Outcome,
    Rejection,
};

/// Longest a reservation may be taken for.
const MAX_TTL_SECS: u64 = crate::store::apply::MAX_TTL_MS / 1000;
/// Longest an events long-poll waits.
const MAX_WAIT_SECS: u64 = 60;

/// The `/v1` routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/nodes", get(list_nodes).post(enroll_node))
        .route(
            "/v1/nodes/{id}",
            get(show_node).patch(update_node).delete(delete_node),
        )
        .route("/v1/nodes/{id}/profile", put(set_profile))
        .route("/v1/nodes/{id}/files", get(node_files))
        .route(
            "/v1/nodes/{id}/reservation",
            get(show_reservation)
                .post(acquire)
                .put(renew)
                .delete(release),
        )
        .route("/v1/artifacts", get(list_artifacts).post(upload_artifact))
        .route(
            "/v1/artifacts/{digest}",
            get(show_artifact).delete(delete_artifact),
        )
        .route("/v1/events", get(events))
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/hosts/{host}", axum::routing::delete(remove_host))
        .route("/v1/hosts/{host}/drain", axum::routing::post(drain_host))
        .route(
            "/v1/hosts/{host}/undrain",
            axum::routing::post(undrain_host),
        )
        .route("/v1/nodes/{id}/migrate", axum::routing::post(migrate_node))
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/status", get(status))
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            // Not the request's fault nor the server's: the cluster has no leader now.
            ProposeError::NoLeader(_) => ApiError::Unavailable(e.to_string()),
            // Larger than one log entry may be (see `api::peer::ENTRY_MAX`).
            ProposeError::TooLarge(_) => ApiError::TooLarge,
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// Maps a business rejection to its HTTP form.
pub fn rejection_error(r: Rejection) -> ApiError {
    let details = serde_json::to_value(&r).unwrap_or_default();
    match r {
        Rejection::UnknownNode { node } => ApiError::NotFound(format!("node {node}")),
        Rejection::UnknownHost { host } => ApiError::NotFound(format!("host {host}")),
        Rejection::UnknownArtifact { digest } => ApiError::NotFound(format!("artifact {digest}")),
        Rejection::Invalid { reason } => ApiError::BadRequest {
            field: None,
            message: reason,
        },
        r @ Rejection::ArtifactSizeMismatch { .. } => ApiError::BadRequest {
            field: None,
            message: r.to_string(),
        },
        Rejection::BatchRejected { rejection, .. } => rejection_error(*rejection),
        r => ApiError::Conflict {
            message: r.to_string(),
            details,
        },
    }
}

/// Proposes and turns a rejection into an error.
async fn apply(app: &Arc<App>, cmd: Command) -> Result<Applied, ApiError> {
    match app.proposer.propose(cmd).await? {
        Outcome::Applied(a) => Ok(a),
        Outcome::Rejected(r) => Err(rejection_error(r)),
    }
}

/// A node read for a write: when this host is a follower that has not applied a recent
/// commit yet (e.g. an enroll just made through another host), catch up first.
async fn fresh_node(app: &Arc<App>, id: &str) -> Result<Node, ApiError> {
    match get_node(app, id) {
        Err(ApiError::NotFound(_)) if !app.proposer.is_leader() => {
            read_barrier(app).await;
            get_node(app, id)
        }
        r => r,
    }
}

/// On a follower, waits (briefly) until this replica has applied what the leader had
/// applied: reads that decide a write then see every earlier commit.
pub(super) async fn read_barrier(app: &Arc<App>) {
    if app.proposer.is_leader() {
        return;
    }
    if let Some(lm) = leader_metrics(app).await {
        if let Some(l) = lm.last_applied {
            let _ = app
                .proposer
                .raft()
                .wait(Some(Duration::from_secs(3)))
                .applied_index_at_least(Some(l.index), "read barrier")
                .await;
        }
    }
}

fn get_node(app: &App, id: &str) -> Result<Node, ApiError> {
    app.store
        .node(id)?
        .ok_or_else(|| ApiError::NotFound(format!("node {id}")))
}

/// The page size a list request asks for.
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(MAX_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::field(
            "limit",
            format!("{n} is out of range: ask for 1 to {MAX_PAGE} items per page"),
        )),
    }
}

/// One page of a list: the items as a JSON array and, unless it is the last page, the
/// next page's cursor (header) and URL (`Link`). `items` holds up to `limit + 1`: the
/// extra one only says that there is more.
fn page<T: serde::Serialize>(
    mut items: Vec<T>,
    limit: usize,
    cursor_of: impl Fn(&T) -> String,
    next_url: impl Fn(&str) -> Result<String, ApiError>,
) -> Result<Response, ApiError> {
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor_of)
    } else {
        None
    };
    let mut resp = Json(items).into_response();
    if let Some(c) = next {
        let link = format!("<{}>; rel=\"next\"", next_url(&c)?);
        for (name, value) in [(NEXT_CURSOR_HEADER, c), ("link", link)] {
            let v = axum::http::HeaderValue::from_str(&value)
                .map_err(|e| ApiError::Internal(format!("page header: {e}")))?;
            resp.headers_mut().insert(name, v);
        }
    }
    Ok(resp)
}

/// `path?query` for the next page's `Link`.
fn page_url<Q: serde::Serialize>(path: &str, q: &Q) -> Result<String, ApiError> {
    let qs = serde_urlencoded::to_string(q).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(format!("{path}?{qs}"))
}

/// Runs a store read off the async workers: a page of thousands takes milliseconds.
async fn read<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&crate::store::Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = app.store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??)
}

/// The store filter a [`NodeQuery`] asks for.
fn node_filter(q: &NodeQuery) -> NodeFilter {
    NodeFilter {
        owner: q.owner.clone(),
        group: q.group.clone(),
        arch: q.arch.clone(),
        provision_state: q.provision_state,
        migrating: q.handoff.map(|h| h == HandoffFilter::Migrating),
        stuck: q.stuck,
        profile: q.profile.map(|p| p.kind().map(str::to_string)),
        mac: q.mac,
    }
}

/// `GET /v1/nodes?[filters]&[limit]&[cursor]`: a page of nodes, by id (see
/// [`NEXT_CURSOR_HEADER`]).
async fn list_nodes(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<NodeQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(c) = &q.cursor {
        crate::store::types::check_name("cursor", c).map_err(|m| ApiError::field("cursor", m))?;
    }
    let filter = node_filter(&q);
    let after = q.cursor.clone();
    let nodes = read(&app, move |s| {
        s.nodes_page(&filter, after.as_deref(), limit + 1)
    })
    .await?;
    page(
        nodes,
        limit,
        |n| n.id.clone(),
        |c| {
            let next = NodeQuery {
                cursor: Some(c.to_string()),
                ..q.clone()
            };
            page_url("/v1/nodes", &next)
        },
    )
}

async fn enroll_node(
    State(app): State<Arc<App>>,
    ApiJson(r): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    if r.macs.is_empty() {
        return Err(ApiError::field(
            "macs",
            "a node needs at least one boot MAC address",
        ));
    }
    let addresses = node_addresses_field(&r.addresses)?;
    let at = now_ms();
    let enroll = Command::EnrollNode {
        node: r.id.clone(),
        macs: r.macs,
        group: r.group.unwrap_or_else(|| app.group.clone()),
        arch: r.arch,
        owner: app.host.clone(),
        at,
    };
    let cmd = if addresses.is_empty() {
        enroll
    } else {
        Command::Batch {
            commands: vec![
                enroll,
                Command::SetNodeAddresses {
                    node: r.id.clone(),
                    addresses,
                    at,
                },
            ],
        }
    };
    apply(&app, cmd).await?;
    info!(node = %r.id, host = %app.host, "node enrolled");
    Ok((StatusCode::CREATED, Json(get_node(&app, &r.id)?)).into_response())
}

/// The `addresses` of a request, checked and in stored form (a field error names the
/// bad address; the store checks them again when it applies the command).
fn node_addresses_field(given: &[std::net::IpAddr]) -> Result<Vec<std::net::IpAddr>, ApiError> {
    crate::store::types::node_addresses(given).map_err(|m| ApiError::field("addresses", m))
}

async fn show_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<NodeDetail>, ApiError> {
    let node = get_node(&app, &id)?;
    let files = app.store.node_files(&id)?;
    let reservation = app.store.reservation(&id)?.filter(|r| r.is_live(now_ms()));
    let (addresses, refused) = app.gate.access_of(&id);
    let access = Some(crate::api::v1::NodeAccess {
        mode: app.gate.access().to_string(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        refused: refused.count,
        last_refused: refused.last.map(|(ip, at)| (ip.to_string(), at)),
        last_reason: refused.last_reason.map(|r| r.label().to_string()),
    });
    let boot = super::boots::merged_boots(&app, &id, 1).await.summary();
    Ok(Json(NodeDetail {
        node,
        files,
        reservation,
        access,
        boot,
    }))
}

async fn update_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<UpdateRequest>,
) -> Result<Json<Node>, ApiError> {
    let node = fresh_node(&app, &id).await?;
    if r.macs.as_ref().is_some_and(|m| m.is_empty()) {
        return Err(ApiError::field(
            "macs",
            "a node needs at least one boot MAC address",
        ));
    }
    let tokens = app.gate.access().tokens();
    if r.rotate_token && !tokens {
        return Err(ApiError::field(
            "rotate_token",
            "node files are not fetched by token on this host (node_files is not \"token\")",
        ));
    }
    if r.rotate_token && node.boot_profile.is_none() {
        return Err(ApiError::field(
            "rotate_token",
            "the node has no boot profile: no file of it carries a token",
        ));
    }
    let at = now_ms();
    let mut cmds = Vec::new();
    if r.macs.is_some() || r.group.is_some() || r.arch.is_some() {
        cmds.push(Command::UpdateNode {
            node: id.clone(),
            macs: r.macs.clone(),
            group: r.group.clone(),
            arch: r.arch.clone(),
            expected_epoch: r.expected_epoch,
            at,
        });
    }
    // New MACs mean new per-MAC file names, and a new boot (a new provision state, or
    // asked for) a new boot token: re-render in the same atomic batch.
    let new_boot = r.rotate_token || (tokens && r.provision_state.is_some());
    if let (true, Some(profile)) = (r.macs.is_some() || new_boot, &node.boot_profile) {
        let mut target = node.clone();
        if let Some(macs) = &r.macs {
            target.macs = macs.clone();
            target.macs.sort();
        }
        let choice = TokenChoice::new(tokens, new_boot);
        cmds.push(render_command(&app, target, Some(profile.clone()), choice, at).await?);
    }
    if let Some(a) = &r.addresses {
        cmds.push(Command::SetNodeAddresses {
            node: id.clone(),
            addresses: node_addresses_field(a)?,
            at,
        });
    }
    if let Some(state) = r.provision_state {
        cmds.push(Command::SetProvisionState {
            node: id.clone(),
            state,
            expected_epoch: r.expected_epoch,
            at,
        });
    }
    match cmds.len() {
        0 => {
            return Err(ApiError::field(
                "body",
                "nothing to change: give macs, group, arch, addresses, provision_state or \
                 rotate_token",
            ))
        }
        1 => apply(&app, cmds.remove(0)).await?,
        _ => apply(&app, Command::Batch { commands: cmds }).await?,
    };
    Ok(Json(get_node(&app, &id)?))
}

async fn delete_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    apply(
        &app,
        Command::RemoveNode {
            node: id.clone(),
            at: now_ms(),
        },
    )
    .await?;
    info!(node = %id, "node deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The boot profile a [`ProfileRequest`] asks for, checked against the known artifacts.
pub(super) fn requested_profile(
    req: ProfileRequest,
    app: &App,
) -> Result<Option<BootProfile>, ApiError> {
    let kernel_boot = |k: Option<Digest>,
                       r: Option<Digest>,
                       c: Option<String>|
     -> Result<KernelBoot, ApiError> {
        let kernel = k.ok_or_else(|| {
            ApiError::field("kernel", "required for this kind: the kernel's sha256")
        })?;
        let ramdisk = r.ok_or_else(|| {
            ApiError::field("ramdisk", "required for this kind: the ramdisk's sha256")
        })?;
        for (field, d) in [("kernel", kernel), ("ramdisk", ramdisk)] {
            let registered = app.store.artifact(&d).ok().flatten().is_some();
            if !app.blobs.store().has(&d) && !registered {
                return Err(ApiError::field(
                    field,
                    format!("artifact {d} is unknown: upload it first (`baton artifact add FILE`)"),
                ));
            }
        }
        Ok(KernelBoot {
            kernel,
            ramdisk,
            cmdline: c.unwrap_or_default(),
        })
    };
    let p = match req.kind.as_str() {
        "deploy" => Some(BootProfile::Deploy(kernel_boot(
            req.kernel,
            req.ramdisk,
            req.cmdline,
        )?)),
        "instance" => Some(BootProfile::Instance(kernel_boot(
            req.kernel,
            req.ramdisk,
            req.cmdline,
        )?)),
        "local" | "none" => {
            for (f, present) in [
                ("kernel", req.kernel.is_some()),
                ("ramdisk", req.ramdisk.is_some()),
                ("cmdline", req.cmdline.is_some()),
            ] {
                if present {
                    return Err(ApiError::field(
                        f,
                        format!("not allowed with kind {:?}", req.kind),
                    ));
                }
            }
            (req.kind == "local").then_some(BootProfile::Local)
        }
        k => {
            return Err(ApiError::field(
                "kind",
                format!("unknown kind {k:?}: use deploy, instance, local or none"),
            ))
        }
    };
    if let Some(p) = &p {
        p.validate().map_err(|m| ApiError::field("cmdline", m))?;
    }
    Ok(p)
}

/// Renders a node's files (blocking: writes blobs) into a SetBootProfile command, with
/// the boot token `choice` gives it.
async fn render_command(
    app: &Arc<App>,
    mut node: Node,
    profile: Option<BootProfile>,
    choice: TokenChoice,
    at: i64,
) -> Result<Command, ApiError> {
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || {
        node.boot_token = next_token(node.boot_token, choice)?;
        let renderer = app2.renderer.get();
        let known = |d: &Digest| app2.store.artifact(d).ok().flatten().map(|a| a.size);
        boot_profile_command_with(
            &renderer,
            app2.blobs.store(),
            &known,
            &node,
            profile,
            &app2.host,
            at,
        )
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| match e {
        RenderError::InvalidProfile(m) => ApiError::field("cmdline", m),
        RenderError::MissingBlob(d) => {
            ApiError::field("kernel", format!("artifact {d} is not held by this host"))
        }
        e => ApiError::Internal(e.to_string()),
    })
}

async fn set_profile(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<ProfileRequest>,
) -> Result<Json<NodeDetail>, ApiError> {
    let node = fresh_node(&app, &id).await?;
    let profile = requested_profile(r, &app)?;
    let kind = profile.as_ref().map(|p| p.kind()).unwrap_or("none");
    // A new profile is a new boot: a new token.
    let choice = TokenChoice::new(app.gate.access().tokens(), true);
    let cmd = render_command(&app, node, profile, choice, now_ms()).await?;
    apply(&app, cmd).await?;
    info!(node = %id, profile = kind, "boot profile set");
    show_node(State(app), Path(id)).await
}

async fn node_files(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<NodeFile>>, ApiError> {
    get_node(&app, &id)?;
    Ok(Json(app.store.node_files(&id)?))
}

async fn show_reservation(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<ReservationState>, ApiError> {
    let node = fresh_node(&app, &id).await?;
    let reservation = app.store.reservation(&id)?.filter(|r| r.is_live(now_ms()));
    Ok(Json(ReservationState {
        reservation,
        latest_token: node.last_token,
    }))
}

fn check_ttl(ttl: u64) -> Result<u64, ApiError> {
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(ApiError::field(
            "ttl_secs",
            format!("must be between 1 and {MAX_TTL_SECS} seconds"),
        ));
    }
    Ok(ttl * 1000)
}

fn reservation_of(a: Applied) -> Result<Json<ReservationGrant>, ApiError> {
    match a {
        Applied::ReservationAcquired { reservation }
        | Applied::ReservationRenewed { reservation } => Ok(Json(ReservationGrant { reservation })),
        other => Err(ApiError::Internal(format!(
            "a reservation command applied as {other:?}"
        ))),
    }
}

async fn acquire(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<AcquireRequest>,
) -> Result<Json<ReservationGrant>, ApiError> {
    let ttl_ms = check_ttl(r.ttl_secs)?;
    let a = apply(
        &app,
        Command::AcquireReservation {
            node: id,
            holder: r.holder,
            ttl_ms,
            at: now_ms(),
        },
    )
    .await?;
    reservation_of(a)
}

async fn renew(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<RenewRequest>,
) -> Result<Json<ReservationGrant>, ApiError> {
    let ttl_ms = check_ttl(r.ttl_secs)?;
    let a = apply(
        &app,
        Command::RenewReservation {
            node: id,
            holder: r.holder,
            token: r.token,
            ttl_ms,
            at: now_ms(),
        },
    )
    .await?;
    reservation_of(a)
}

async fn release(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<ReleaseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::field("query", format!("{e}: give ?holder=NAME&token=N")))?;
    apply(
        &app,
        Command::ReleaseReservation {
            node: id,
            holder: q.holder,
            token: q.token,
            at: now_ms(),
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/artifacts?[name]&[host]&[limit]&[cursor]`: a page of artifacts, by digest.
async fn list_artifacts(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<ArtifactQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<Digest>()
                .map_err(|_| ApiError::field("cursor", "not a cursor of this list"))
        })
        .transpose()?;
    let (name, host) = (q.name.clone(), q.host.clone());
    let arts = read(&app, move |s| {
        s.artifacts_page(name.as_deref(), host.as_deref(), after.as_ref(), limit + 1)
    })
    .await?;
    page(
        arts,
        limit,
        |a: &Artifact| a.digest.to_hex(),
        |c| {
            let next = ArtifactQuery {
                cursor: Some(c.to_string()),
                ..q.clone()
            };
            page_url("/v1/artifacts", &next)
        },
    )
}

fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse()
        .map_err(|_| ApiError::field("digest", "not a sha256 digest (64 hex digits)"))
}

async fn show_artifact(
    State(app): State<Arc<App>>,
    Path(d): Path<String>,
) -> Result<Json<ArtifactDetail>, ApiError> {
    let d = parse_digest(&d)?;
    let artifact = app
        .store
        .artifact(&d)?
        .ok_or_else(|| ApiError::NotFound(format!("artifact {d}")))?;
    Ok(Json(ArtifactDetail {
        artifact,
        nodes: app.store.nodes_using(&d)?,
        held_here: app.blobs.store().has(&d),
    }))
}

async fn delete_artifact(
    State(app): State<Arc<App>>,
    Path(d): Path<String>,
) -> Result<StatusCode, ApiError> {
    let d = parse_digest(&d)?;
    apply(
        &app,
        Command::RemoveArtifact {
            digest: d,
            at: now_ms(),
        },
    )
    .await?;
    let blobs = app.blobs.store().clone();
    tokio::task::spawn_blocking(move || blobs.remove(&d))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    app.blobs.forget(&d);
    info!(digest = %d, "artifact removed");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/artifacts?name=NAME[&sha256=HEX]` with the raw content as body.
async fn upload_artifact(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = q
        .name
        .ok_or_else(|| ApiError::field("name", "give the artifact a name: ?name=vmlinuz"))?;
    crate::store::types::check_text("name", &name, 255).map_err(|m| ApiError::field("name", m))?;
    let expected = q
        .sha256
        .as_deref()
        .map(|v| {
            v.parse::<Digest>()
                .map_err(|_| ApiError::field("sha256", "not a sha256 digest (64 hex digits)"))
        })
        .transpose()?;
    let total: Option<u64> = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut w = app
        .blobs
        .store()
        .writer()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut stream = body.into_data_stream();
    let mut done: u64 = 0;
    let mut last_log = std::time::Instant::now();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(super::limits::body_error)?;
        done += chunk.len() as u64;
        // File writes block: keep them off the async workers' hot path.
        tokio::task::block_in_place(|| std::io::Write::write_all(&mut w, &chunk))
            .map_err(|e| ApiError::Internal(format!("cannot write blob: {e}")))?;
        if last_log.elapsed() > Duration::from_secs(2) {
            last_log = std::time::Instant::now();
            info!(name = %name, bytes = done, total = total.unwrap_or(0), "artifact upload in progress");
        }
    }
    let info_ =
        tokio::task::block_in_place(|| w.finish(expected.as_ref())).map_err(|e| match e {
            crate::blobs::BlobError::DigestMismatch { .. } => {
                ApiError::field("sha256", e.to_string())
            }
            e => ApiError::Internal(e.to_string()),
        })?;
    let a = apply(
        &app,
        Command::RegisterArtifact {
            digest: info_.digest,
            size: info_.size,
            name: name.clone(),
            host: app.host.clone(),
            at: now_ms(),
        },
    )
    .await?;
    let created = matches!(a, Applied::ArtifactRegistered { created: true, .. });
    info!(name = %name, digest = %info_.digest, bytes = info_.size, created, repaired = info_.repaired, "artifact stored");
    let artifact = app.store.artifact(&info_.digest)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Uploaded {
            artifact,
            created,
            repaired: info_.repaired,
        }),
    )
        .into_response())
}

/// `GET /v1/events?since=N[&wait=SECS][&limit=L]`: events after N; with `wait`, blocks
/// until one arrives or the wait ends (long-poll).
async fn events(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let mut rx = app.feed.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(MAX_WAIT_SECS));
    loop {
        let ev = app.store.events_since(q.since, limit)?;
        if !ev.is_empty() || q.wait == 0 {
            let last = ev.last().map(|e| e.seq).unwrap_or(q.since);
            return Ok(Json(EventPage { events: ev, last }));
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Err(ApiError::Unavailable("shutting down".into())) },
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(EventPage { events: Vec::new(), last: q.since }));
            }
        }
    }
}

async fn list_hosts(State(app): State<Arc<App>>) -> Result<Json<Vec<HostView>>, ApiError> {
    let hosts = app.store.hosts()?;
    let owned = read(&app, |s| s.owned_counts()).await?;
    let now = now_ms();
    let out = hosts
        .iter()
        .map(|h| HostView {
            state: crate::ownership::state::classify(h, now, app.gate.times()),
            heartbeat_age_ms: now.saturating_sub(h.last_heartbeat),
            nodes: owned.get(h.name.as_str()).copied().unwrap_or(0) as usize,
            is_self: h.name == app.host,
            host: h.clone(),
        })
        .collect();
    Ok(Json(out))
}

async fn status(State(app): State<Arc<App>>) -> Result<Json<StatusView>, ApiError> {
    let (nodes, owned, artifacts) = read(&app, |s| {
        let owned = s.owned_counts()?;
        Ok((
            owned.values().sum::<u64>() as usize,
            owned,
            s.count_artifacts()? as usize,
        ))
    })
    .await?;
    let owned = owned.get(&app.host).copied().unwrap_or(0) as usize;
    let store_bytes = std::fs::metadata(app.store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    let t = &app.metrics.tftp;
    Ok(Json(StatusView {
        host: app.host.clone(),
        group: app.group.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        schema_version: app.store.schema_version()?,
        nodes,
        owned_nodes: owned,
        artifacts,
        store_bytes,
        last_event: app.feed.last(),
        cluster: cluster_view(&app).await,
        tftp: TftpTotals {
            active: t.active.get(),
            completed: t.completed.get(),
            bytes: t.bytes.get(),
        },
    }))
}

/// The cluster as the leader sees it (members, lag) plus this host's own view.
async fn cluster_status(State(app): State<Arc<App>>) -> Result<Json<ClusterView>, ApiError> {
    Ok(Json(cluster_view(&app).await))
}

/// Leader-side Raft metrics: local when this host leads, else fetched from the leader.
async fn leader_metrics(app: &Arc<App>) -> Option<crate::store::raft::typ::Metrics> {
    let m = app.proposer.raft().metrics().borrow().clone();
    let leader = m.current_leader?;
    if leader == app.proposer.node_id() {
        return Some(m);
    }
    let peer = m.membership_config.membership().get_node(&leader)?.clone();
    app.proposer.peers().metrics(&peer.addr).await.ok()
}

/// Cluster summary for `/v1/cluster` and `/v1/status`.
pub async fn cluster_view(app: &Arc<App>) -> ClusterView {
    let m = app.proposer.raft().metrics().borrow().clone();
    let lm = leader_metrics(app).await;
    let leader_last = lm.as_ref().and_then(|l| l.last_log_index).unwrap_or(0);
    let voters: std::collections::BTreeSet<u64> =
        m.membership_config.membership().voter_ids().collect();
    let me = app.proposer.node_id();
    let members = m
        .membership_config
        .nodes()
        .map(|(id, p)| {
            let matched = lm
                .as_ref()
                .and_then(|l| l.replication.as_ref())
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index);
            let is_leader = m.current_leader == Some(*id);
            let role = if is_leader {
                MemberRole::Leader
            } else if voters.contains(id) {
                MemberRole::Voter
            } else {
                MemberRole::Learner
            };
            MemberView {
                node_id: *id,
                host: p.host.clone(),
                addr: p.addr.clone(),
                role,
                matched_index: if is_leader {
                    Some(leader_last)
                } else {
                    matched
                },
                lag: if is_leader {
                    Some(0)
                } else {
                    matched.map(|x| leader_last.saturating_sub(x))
                },
                applied_index: if *id == me {
                    m.last_applied.map(|l| l.index)
                } else {
                    None
                },
                is_self: *id == me,
            }
        })
        .collect();
    let leader_host = m.current_leader.and_then(|l| {
        m.membership_config
            .membership()
            .get_node(&l)
            .map(|p| p.host.clone())
    });
    ClusterView {
        node_id: me,
        state: format!("{:?}", m.state),
        term: m.current_term,
        leader: m.current_leader,
        leader_host,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        clustered: app.secret.is_some(),
        members,
        artifact_replication: app.replication.get(),
    }
}

/// `DELETE /v1/hosts/{host}[?id=N]`: takes the host's Raft identities (or only `id`)
/// out of the cluster, through the leader.
async fn remove_host(
    State(app): State<Arc<App>>,
    Path(host): Path<String>,
    ApiQuery(q): ApiQuery<RemoveHostQuery>,
) -> Result<Json<HostRemoved>, ApiError> {
    let ids: Vec<u64> = app
        .proposer
        .members()
        .into_iter()
        .filter(|(id, p)| p.host == host && q.id.is_none_or(|want| want == *id))
        .map(|(id, _)| id)
        .collect();
    if ids.is_empty() {
        return Err(ApiError::NotFound(format!("cluster member {host}")));
    }
    let m = app.proposer.raft().metrics().borrow().clone();
    let leader = m
        .current_leader
        .and_then(|l| m.membership_config.membership().get_node(&l).cloned())
        .ok_or_else(|| ApiError::Unavailable("no cluster leader right now; retry".into()))?;
    let peers = app.proposer.peers();
    if !peers.has_secret() {
        return Err(ApiError::field(
            "host",
            "clustering is disabled on this host",
        ));
    }
    let req = RemoveRequest {
        node_ids: ids.clone(),
    };
    peers
        .remove(&leader.addr, &req)
        .await
        .map_err(|e| match &e {
            PeerError::Refused { error, .. } | PeerError::Forbidden { error, .. } => {
                ApiError::Conflict {
                    message: format!(
                        "the leader refused: {}",
                        error
                            .as_ref()
                            .map_or("no reason given", |r| r.message.as_str())
                    ),
                    details: error
                        .as_ref()
                        .map(|r| {
                            json!(ErrorBody {
                                error: (**r).clone()
                            })
                        })
                        .unwrap_or_default(),
                }
            }
            _ => ApiError::Unavailable(format!("cannot reach the leader: {e}")),
        })?;
    info!(host = %host, node_ids = ?ids, "host removed from the cluster");
    Ok(Json(HostRemoved { removed: ids, host }))
}

/// `POST /v1/nodes/{id}/migrate {to}`: the node enters `migrating`; the leader's
/// reconciler flips ownership once the target holds every artifact (the old owner
/// serves until then), or rolls back if the target dies.
async fn migrate_node(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<MigrateRequest>,
) -> Result<Json<Node>, ApiError> {
    let node = fresh_node(&app, &id).await?;
    let target = app
        .store
        .host(&r.to)?
        .ok_or_else(|| ApiError::field("to", format!("unknown host {}", r.to)))?;
    let state = crate::ownership::state::classify(&target, now_ms(), app.gate.times());
    if !state.accepts_nodes() {
        return Err(ApiError::Conflict {
            message: format!(
                "host {} is {}: a migration needs a live, non-draining target",
                r.to,
                state.as_str()
            ),
            details: json!({ "host": r.to, "state": state }),
        });
    }
    apply(
        &app,
        Command::BeginMigration {
            node: id.clone(),
            to: r.to.clone(),
            expected_epoch: node.epoch,
            at: now_ms(),
        },
    )
    .await?;
    info!(node = %id, from = %node.owner, to = %r.to, epoch = node.epoch, "migration started");
    Ok(Json(get_node(&app, &id)?))
}

async fn set_draining(
    app: &Arc<App>,
    host: &str,
    draining: bool,
) -> Result<Json<HostChanged>, ApiError> {
    apply(
        app,
        Command::SetDraining {
            host: host.to_string(),
            draining,
            at: now_ms(),
        },
    )
    .await?;
    info!(host = %host, draining, "host draining flag set");
    Ok(Json(HostChanged {
        host: app.store.host(host)?,
    }))
}

/// `POST /v1/hosts/{host}/drain`: move all of the host's nodes away.
async fn drain_host(
    State(app): State<Arc<App>>,
    Path(host): Path<String>,
) -> Result<Json<HostChanged>, ApiError> {
    set_draining(&app, &host, true).await
}

/// `POST /v1/hosts/{host}/undrain`.
async fn undrain_host(
    State(app): State<Arc<App>>,
    Path(host): Path<String>,
) -> Result<Json<HostChanged>, ApiError> {
    set_draining(&app, &host, false).await
}
