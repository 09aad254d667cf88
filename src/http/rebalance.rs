//! `/v1/hosts/rebalance`: show, start or stop a rebalance. The plan is computed here
//! from the local replica by the reconciler's own functions; the leader's reconciler
//! carries it out through fenced migrations, `max_concurrent_migrations` at a time.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tracing::info;

use super::api::rejection_error;
use super::error::ApiError;
use super::json::ApiQuery;
use crate::api::v1::{RebalanceGroup, RebalanceHost, RebalanceQuery, RebalanceView};
use crate::app::App;
use crate::clock::now_ms;
use crate::ownership::rebalance::after;
use crate::ownership::reconcile::{effective_loads, gather, rebalance_moves};
use crate::store::{Applied, Command, Outcome};

/// The route.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/hosts/rebalance", get(show).post(start).delete(stop))
}

/// The plan as this replica sees it now.
fn preview(app: &App, dry_run: bool) -> Result<RebalanceView, ApiError> {
    let now = now_ms();
    let t = app.gate.times();
    let g = gather(&app.store, now, t, &app.policy, true)?;
    let v = g.view();
    let load = effective_loads(&v);
    let planned = rebalance_moves(&v, &load, now, t, app.policy.capacity, &BTreeSet::new());
    let mut groups = Vec::new();
    let mut moves = Vec::new();
    for gm in planned {
        let end = after(&gm.hosts, &gm.moves);
        groups.push(RebalanceGroup {
            group: gm.group.to_string(),
            hosts: gm
                .hosts
                .iter()
                .map(|h| RebalanceHost {
                    host: h.host.to_string(),
                    nodes: h.load,
                    after: end.get(h.host).copied().unwrap_or(h.load),
                })
                .collect(),
        });
        moves.extend(gm.moves);
    }
    Ok(RebalanceView {
        active: app.store.rebalance_requested()?.is_some(),
        changed: false,
        dry_run,
        in_flight: g.in_flight,
        max_concurrent: app.policy.max_migrations,
        max_nodes_per_host: app.policy.capacity,
        groups,
        moves,
    })
}

/// Proposes `SetRebalance`; whether it changed anything.
async fn set(app: &App, active: bool) -> Result<bool, ApiError> {
    match app
        .proposer
        .propose(Command::SetRebalance {
            active,
            at: now_ms(),
        })
        .await?
    {
        Outcome::Applied(Applied::RebalanceSet { changed, .. }) => Ok(changed),
        Outcome::Applied(a) => Err(ApiError::Internal(format!("unexpected outcome {a:?}"))),
        Outcome::Rejected(r) => Err(rejection_error(r)),
    }
}

/// `GET /v1/hosts/rebalance`: the moves a rebalance makes (or has left to make).
async fn show(State(app): State<Arc<App>>) -> Result<Json<RebalanceView>, ApiError> {
    Ok(Json(preview(&app, true)?))
}

/// `POST /v1/hosts/rebalance[?dry_run=true]`: starts a rebalance unless placement is
/// already even (or only shows the plan).
async fn start(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<RebalanceQuery>,
) -> Result<Json<RebalanceView>, ApiError> {
    let mut view = preview(&app, q.dry_run)?;
    if q.dry_run || view.moves.is_empty() {
        return Ok(Json(view));
    }
    view.changed = set(&app, true).await?;
    view.active = true;
    info!(
        moves = view.moves.len(),
        max_concurrent = view.max_concurrent,
        "rebalance started"
    );
    Ok(Json(view))
}

/// `DELETE /v1/hosts/rebalance`: starts no more migrations (those in progress finish).
async fn stop(State(app): State<Arc<App>>) -> Result<Json<RebalanceView>, ApiError> {
    let changed = set(&app, false).await?;
    let mut view = preview(&app, true)?;
    view.changed = changed;
    view.active = false;
    info!(changed, "rebalance stopped");
    Ok(Json(view))
}
