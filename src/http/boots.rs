//! Boot timelines over HTTP: `GET /v1/nodes/{id}/boots` and `GET /v1/overview` merge
//! this host's records with every peer's (asked through the one peer client), the peer
//! routes `GET /cluster/boots[/{node}]` answer from this host's own records, and
//! `POST /boot/{node}/done` takes the booted OS's report.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::join_all;

use super::error::ApiError;
use super::json::ApiQuery;
use crate::api::boots::{
    BootsQuery, DoneRecorded, DoneReport, HostAnswer, HostRow, NodeBoots, NodeRow, Overview,
    OverviewQuery, PeerBootSummary, PeerNodeRecords, MAX_ATTEMPTS, MAX_NODE_RECORDS,
};
use crate::api::peer;
use crate::app::App;
use crate::boots::stuck::timeline;
use crate::boots::{BootRecord, Stuck};
use crate::clock::now_ms;
use crate::ownership::gate::NotServed;
use crate::store::raft::peer::PeerError;
use crate::store::HandoffState;

/// How long a peer has to answer for its boot records before the page shows it as
/// unreachable.
const PEER_BOOTS: Duration = Duration::from_secs(3);

/// The `/v1` routes of boot timelines and the status page (behind the API token).
pub fn api_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/nodes/{id}/boots", get(node_boots))
        .route("/v1/overview", get(overview))
}

/// Base URLs of every other cluster member, with their host names.
fn peers(app: &App) -> Vec<(String, String)> {
    let me = app.proposer.node_id();
    let mut seen = std::collections::BTreeSet::new();
    app.proposer
        .members()
        .into_iter()
        .filter(|(id, p)| *id != me && p.host != app.host)
        .filter(|(_, p)| seen.insert(p.addr.clone()))
        .map(|(_, p)| (p.host, p.addr))
        .collect()
}

/// Asks every peer with `f`, concurrently; each answer with the peer's host name.
async fn ask_peers<T, F, Fut>(app: &App, f: F) -> Vec<(String, Result<T, PeerError>)>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, PeerError>>,
{
    if !app.proposer.peers().has_secret() {
        return Vec::new();
    }
    let peers = peers(app);
    let answers = join_all(peers.iter().map(|(_, base)| f(base.clone()))).await;
    peers.into_iter().map(|(h, _)| h).zip(answers).collect()
}

/// A node's attempts from every host's records (the newest `attempts`).
pub async fn merged_boots(app: &Arc<App>, node: &str, attempts: usize) -> NodeBoots {
    let b = &app.boots;
    let mut records: Vec<BootRecord> = Vec::new();
    let mut hosts = Vec::new();
    let mut transfers: Vec<_> = b
        .transfers()
        .into_iter()
        .filter(|t| t.node.as_deref() == Some(node))
        .collect();
    match b.local().node_records(node, MAX_NODE_RECORDS) {
        Ok(r) => {
            hosts.push(HostAnswer {
                host: app.host.clone(),
                records: r.len(),
                error: None,
            });
            records.extend(r);
        }
        Err(e) => hosts.push(HostAnswer {
            host: app.host.clone(),
            records: 0,
            error: Some(e.to_string()),
        }),
    }
    let peers = app.proposer.peers().clone();
    let answers = ask_peers(app, |base| {
        let peers = peers.clone();
        let node = node.to_string();
        async move {
            let path = format!("{}/{node}?limit={MAX_NODE_RECORDS}", peer::BOOTS);
            peers
                .get_json::<PeerNodeRecords>(&base, &path, PEER_BOOTS)
                .await
        }
    })
    .await;
    for (host, a) in answers {
        match a {
            Ok(p) => {
                hosts.push(HostAnswer {
                    host,
                    records: p.records.len(),
                    error: None,
                });
                records.extend(p.records);
                transfers.extend(p.transfers);
            }
            Err(e) => hosts.push(HostAnswer {
                host,
                records: 0,
                error: Some(e.to_string()),
            }),
        }
    }
    let active = !transfers.is_empty();
    NodeBoots {
        node: node.to_string(),
        attempts: timeline(records, now_ms(), active, b.rules(), attempts),
        transfers,
        hosts,
    }
}

/// `GET /v1/nodes/{id}/boots?attempts=N`.
async fn node_boots(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BootsQuery>,
) -> Result<Json<NodeBoots>, ApiError> {
    if app.store.node(&id)?.is_none() {
        return Err(ApiError::NotFound(format!("node {id}")));
    }
    let n = q.attempts.unwrap_or(5);
    if n == 0 || n > MAX_ATTEMPTS {
        return Err(ApiError::field(
            "attempts",
            format!("must be between 1 and {MAX_ATTEMPTS}"),
        ));
    }
    Ok(Json(merged_boots(&app, &id, n).await))
}

/// `?limit=` of `GET /cluster/boots/{node}`.
#[derive(Debug, serde::Deserialize)]
pub struct LimitQuery {
    limit: Option<usize>,
}

/// `GET /cluster/boots/{node}`: this host's records of a node.
pub async fn peer_node(
    State(app): State<Arc<App>>,
    Path(node): Path<String>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<Json<PeerNodeRecords>, ApiError> {
    let limit = q
        .limit
        .unwrap_or(MAX_NODE_RECORDS)
        .clamp(1, MAX_NODE_RECORDS);
    let records = app
        .boots
        .local()
        .node_records(&node, limit)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let transfers = app
        .boots
        .transfers()
        .into_iter()
        .filter(|t| t.node.as_deref() == Some(node.as_str()))
        .collect();
    Ok(Json(PeerNodeRecords {
        host: app.host.clone(),
        records,
        transfers,
    }))
}

/// This host's summary: the newest record of each node, stuck flags, transfers.
fn local_summary(app: &App) -> Result<PeerBootSummary, ApiError> {
    let b = &app.boots;
    let internal = |e: crate::boots::local::BootStoreError| ApiError::Internal(e.to_string());
    Ok(PeerBootSummary {
        host: app.host.clone(),
        latest: b.local().latest().map_err(internal)?,
        stuck: b.local().flags().map_err(internal)?,
        transfers: b.transfers(),
    })
}

/// `GET /cluster/boots`.
pub async fn peer_summary(State(app): State<Arc<App>>) -> Result<Json<PeerBootSummary>, ApiError> {
    Ok(Json(local_summary(&app)?))
}

/// `POST /boot/{node}/done`: the booted OS (or ramdisk) reports success. No token, as
/// for `/boot`; with `node_files = bound` only from one of the node's own addresses
/// (set by the operator, or learned by this host from its PXE exchange).
pub async fn report(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<Json<DoneRecorded>, ApiError> {
    // No login here: the answers name no node, owner or host (as `/boot` files).
    let n = app
        .store
        .node(&node)?
        .ok_or_else(|| ApiError::NotFound("boot report".into()))?;
    let client = peer.ip().to_canonical();
    if !app.gate.serves_files_to(&n, client) {
        app.metrics
            .http
            .boot_failed
            .inc(NotServed::WrongClient.label());
        tracing::debug!(client = %client, node = %node, "boot report refused: not an address of the node (node_files = bound)");
        return Err(ApiError::NotServed {
            reason: NotServed::WrongClient,
            message: "boot report refused to this client".into(),
            details: serde_json::Value::Null,
        });
    }
    let r: DoneReport = if body.iter().all(u8::is_ascii_whitespace) {
        DoneReport::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::field("body", format!("not a done report: {e}")))?
    };
    app.boots.done(&n, client, r.message.as_deref());
    Ok(Json(DoneRecorded {
        node,
        host: app.host.clone(),
        at: now_ms(),
    }))
}

/// `GET|HEAD /boot/{node}/done`: a node file named `done`, as any other.
pub async fn done_file(
    state: State<Arc<App>>,
    peer: ConnectInfo<SocketAddr>,
    source: axum::Extension<Arc<crate::namespace::StoreSource>>,
    method: axum::http::Method,
    Path(node): Path<String>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let path = Path((node, "done".to_string()));
    super::boot::boot_file(state, peer, source, method, path, uri, headers).await
}

/// `GET /v1/overview?q=&limit=&since=`: hosts, nodes with their last boot stage, live
/// transfers and events, for the status page.
async fn overview(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<OverviewQuery>,
) -> Result<Json<Overview>, ApiError> {
    let now = now_ms();
    let mut summaries = vec![local_summary(&app)?];
    let mut unreachable = Vec::new();
    let peers = app.proposer.peers().clone();
    let answers = ask_peers(&app, |base| {
        let peers = peers.clone();
        async move {
            peers
                .get_json::<PeerBootSummary>(&base, peer::BOOTS, PEER_BOOTS)
                .await
        }
    })
    .await;
    for (host, a) in answers {
        match a {
            Ok(s) => summaries.push(s),
            Err(e) => unreachable.push(HostAnswer {
                host,
                records: 0,
                error: Some(e.to_string()),
            }),
        }
    }
    let mut latest: HashMap<String, BootRecord> = HashMap::new();
    let mut stuck: HashMap<String, (String, Stuck)> = HashMap::new();
    let mut transfers = Vec::new();
    for s in summaries {
        for r in s.latest {
            match latest.get(&r.node) {
                Some(x) if x.at >= r.at => {}
                _ => {
                    latest.insert(r.node.clone(), r);
                }
            }
        }
        for (node, st) in s.stuck {
            stuck.insert(node, (s.host.clone(), st));
        }
        transfers.extend(s.transfers);
    }
    transfers.sort_by_key(|t| t.started);

    let store = &app.store;
    let nodes = store.nodes()?;
    let mut owned: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &nodes {
        *owned.entry(n.owner.as_str()).or_default() += 1;
    }
    let mut held: BTreeMap<String, usize> = BTreeMap::new();
    for a in store.artifacts()? {
        for h in a.hosts {
            *held.entry(h).or_default() += 1;
        }
    }
    let m = app.proposer.raft().metrics().borrow().clone();
    let leader_host = m.current_leader.and_then(|l| {
        m.membership_config
            .membership()
            .get_node(&l)
            .map(|p| p.host.clone())
    });
    let hosts = store
        .hosts()?
        .into_iter()
        .map(|h| HostRow {
            state: crate::ownership::state::classify(&h, now, app.gate.times())
                .as_str()
                .to_string(),
            lease_age_ms: now.saturating_sub(h.last_heartbeat),
            owned_nodes: owned.get(h.name.as_str()).copied().unwrap_or(0),
            artifacts_held: held.get(&h.name).copied().unwrap_or(0),
            leader: leader_host.as_deref() == Some(h.name.as_str()),
            is_self: h.name == app.host,
            group: h.group,
            name: h.name,
        })
        .collect();

    let needle = q.q.as_deref().map(str::trim).unwrap_or("").to_lowercase();
    let limit = q.limit.unwrap_or(500).clamp(1, 10_000);
    let nodes_total = nodes.len();
    let mut rows: Vec<NodeRow> = nodes
        .into_iter()
        .map(|n| {
            let owner_stuck = stuck
                .get(&n.id)
                .filter(|(h, _)| *h == n.owner)
                .or_else(|| stuck.get(&n.id))
                .map(|(_, s)| s.clone());
            NodeRow {
                handoff: match &n.handoff {
                    HandoffState::None => "none".into(),
                    HandoffState::Migrating { to, .. } => format!("migrating to {to}"),
                },
                provision_state: n.provision_state.as_str().to_string(),
                profile: n
                    .boot_profile
                    .as_ref()
                    .map_or("none", |p| p.kind())
                    .to_string(),
                macs: n.macs.iter().map(|m| m.to_string()).collect(),
                last: latest.remove(&n.id),
                stuck: owner_stuck,
                id: n.id,
                group: n.group,
                owner: n.owner,
                epoch: n.epoch,
            }
        })
        .filter(|r| needle.is_empty() || matches(r, &needle))
        .collect();
    let nodes_matched = rows.len();
    rows.truncate(limit);

    let last_event = app.feed.last();
    let since = q.since.unwrap_or(last_event.saturating_sub(50));
    let events = store.events_since(since, 200)?;
    Ok(Json(Overview {
        host: app.host.clone(),
        now,
        hosts,
        nodes: rows,
        nodes_total,
        nodes_matched,
        transfers,
        events,
        last_event,
        unreachable,
    }))
}

/// Whether the status page's search `needle` (lowercase) matches a node row.
fn matches(r: &NodeRow, needle: &str) -> bool {
    let last = r
        .last
        .as_ref()
        .map(|l| format!("{} {}", l.stage.as_str(), l.status.as_str()))
        .unwrap_or_default();
    [&r.id, &r.owner, &r.group, &r.handoff, &last]
        .iter()
        .any(|f| f.to_lowercase().contains(needle))
        || r.macs.iter().any(|m| m.contains(needle))
        || (r.stuck.is_some() && "stuck".contains(needle))
}
