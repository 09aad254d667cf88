//! `POST /v1/ingest`: one ingest pass of a directory on this host (`baton ingest DIR`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use super::error::ApiError;
use super::json::ApiJson;
use crate::app::App;
use crate::ingest::driver::{IngestError, IngestRequest};
use crate::ingest::{IngestReport, Ingester};

/// Longest one request waits for files still being written.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The ingest routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/ingest", post(ingest))
}

async fn ingest(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<IngestRequest>,
) -> Result<Json<IngestReport>, ApiError> {
    let dir = PathBuf::from(&req.dir);
    if !dir.is_absolute() {
        return Err(ApiError::field(
            "dir",
            "give the directory as an absolute path on the server's host",
        ));
    }
    let quiet = Duration::from_millis(req.quiet_ms.clamp(10, 60_000));
    let ing = Ingester::new(
        &dir,
        &app.host,
        &app.group,
        app.store.clone(),
        app.blobs.store().clone(),
        app.proposer.clone(),
        quiet,
    )
    .map_err(|e| ApiError::field("dir", e.to_string()))?;
    let report = ing.once(MAX_WAIT).await.map_err(|e| match e {
        IngestError::Tree { .. } => ApiError::field("dir", e.to_string()),
        e => ApiError::Internal(e.to_string()),
    })?;
    Ok(Json(report))
}
