//! `POST /v1/nodes:import`, bulk enrollment: the driver around [`crate::import`].
//!
//! Three stages joined by bounded channels, so memory stays bounded whatever the size
//! of the file: the request body is split into numbered lines as it arrives; lines
//! become [`ImportItem`]s (parsed, checked, profile resolved, boot files rendered) off
//! the async workers; items go to the replicated log in batches bounded in bytes, one
//! [`Command::ImportNodes`] per log entry, while the next batch is prepared. Each
//! committed batch is reported as progress; the end is an [`ImportReport`].

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::api::{read_barrier, requested_profile};
use super::error::{ApiError, RETRY_AFTER_SECS};
use super::json::ApiQuery;
use crate::api::v1::{
    ImportFailure, ImportFormat, ImportMessage, ImportProfileSpec, ImportQuery, ImportRecord,
    ImportReport, ImportUpdate, ProfileRequest, IMPORT_MAX_BYTES, IMPORT_MAX_LINE, IMPORT_PATH,
    NDJSON,
};
use crate::api::{ErrorBody, ErrorInfo};
use crate::app::App;
use crate::blobs::Digest;
use crate::clock::now_ms;
use crate::import::nodes::{Lines, NumberedLine, Parsed, Parser};
use crate::render::{next_token, profile_files, Renderer, TokenChoice};
use crate::store::types::{check_name, node_addresses};
use crate::store::{
    Applied, BootProfile, Command, HandoffState, ImportItem, ImportProfile, ImportResult, MacAddr,
    Node, Outcome, ProvisionState, Rejection,
};

/// Most bytes of items in one log entry (about 100 nodes with rendered profiles): well
/// under the 2 MB body limit of peer requests, with room for several entries in one
/// replication message.
pub const BATCH_BYTES: usize = 256 << 10;

/// Most items in one log entry (the state machine's batch bound).
const BATCH_ITEMS: usize = crate::store::apply::MAX_BATCH;

/// A batch that got no more lines for this long is committed as it is: a slow upload
/// still makes progress.
const BATCH_WAIT: Duration = Duration::from_millis(500);

/// The import route (behind the API token, as every `/v1` route).
pub fn routes() -> axum::Router<Arc<App>> {
    axum::Router::new().route(IMPORT_PATH, axum::routing::post(import_nodes))
}

/// The handler: streams the answer as [`NDJSON`] when the client accepts it, else
/// answers the report as JSON at the end (with the error's status if the import stopped
/// early, the partial report in the error's details).
pub async fn import_nodes(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let format = q.format.unwrap_or_else(|| {
        let csv = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/csv"));
        if csv {
            ImportFormat::Csv
        } else {
            ImportFormat::Jsonl
        }
    });
    let length: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if length.is_some_and(|l| l > IMPORT_MAX_BYTES) {
        return Ok(error_response(&too_large(), None));
    }
    let streamed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON));
    // Decisions below ("unchanged", "new") read this replica: let it catch up first.
    read_barrier(&app).await;
    if !streamed {
        let (report, error) = run(app, format, body, None).await;
        return Ok(match error {
            None => Json(report).into_response(),
            Some(e) => error_response(&e, Some(&report)),
        });
    }
    let (tx, rx) = mpsc::channel::<ImportMessage>(16);
    tokio::spawn(async move {
        let (report, _) = run(app, format, body, Some(tx.clone())).await;
        let _ = tx.send(ImportMessage::Report(report)).await;
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let m = rx.recv().await?;
        let mut line = serde_json::to_vec(&m).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    let mut resp = Body::from_stream(lines).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(resp)
}

fn too_large() -> ApiError {
    ApiError::BadRequest {
        field: Some("body".into()),
        message: format!(
            "the import file is larger than {IMPORT_MAX_BYTES} bytes: split it (re-running an import is harmless)"
        ),
    }
}

/// An error as the report and the error body carry it.
fn error_info(e: &ApiError) -> ErrorInfo {
    ErrorInfo {
        code: e.code().to_string(),
        message: e.to_string(),
        field: match e {
            ApiError::BadRequest { field, .. } => field.clone(),
            _ => None,
        },
        details: None,
    }
}

/// `e` with its status; the report so far, if any, in the details.
fn error_response(e: &ApiError, report: Option<&ImportReport>) -> Response {
    let status = match e {
        ApiError::BadRequest { field: Some(f), .. }
            if f == "body" && e.to_string().contains("larger than") =>
        {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        e => e.status(),
    };
    let mut info = error_info(e);
    info.details = report.and_then(|r| serde_json::to_value(r).ok());
    let mut resp = (status, Json(ErrorBody { error: info })).into_response();
    if matches!(e, ApiError::Unavailable(_)) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    resp
}

/// Runs one import to the end of the body or the first error that stops it.
async fn run(
    app: Arc<App>,
    format: ImportFormat,
    body: Body,
    progress: Option<mpsc::Sender<ImportMessage>>,
) -> (ImportReport, Option<ApiError>) {
    let start = Instant::now();
    let bytes = Arc::new(AtomicU64::new(0));
    let (lines_tx, lines_rx) = mpsc::channel(4);
    tokio::spawn(read_body(body, bytes.clone(), lines_tx));
    let (batch_tx, mut batch_rx) = mpsc::channel(2);
    let preparer = tokio::spawn(prepare(
        Preparer::new(app.clone(), format),
        lines_rx,
        batch_tx,
    ));
    let mut report = ImportReport::default();
    let mut error = None;
    while let Some(msg) = batch_rx.recv().await {
        let batch: Prepared = match msg {
            Ok(b) => b,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        let c = &mut report.counts;
        c.lines += batch.records;
        c.unchanged += batch.unchanged;
        c.failed += batch.failures.len() as u64;
        report.failures.extend(batch.failures);
        if !batch.items.is_empty() {
            let t = Instant::now();
            let n = batch.items.len();
            let r = commit(&app, batch.items, &batch.lines, &mut report).await;
            tracing::debug!(
                items = n,
                bytes = batch.bytes,
                ms = t.elapsed().as_millis() as u64,
                "import batch committed"
            );
            if let Err(e) = r {
                error = Some(e);
                break;
            }
            report.log_entries += 1;
        }
        if let Some(p) = &progress {
            // Progress is best effort: a slow reader gets fewer updates, not a stall.
            let _ = p.try_send(ImportMessage::Progress(report.counts.clone()));
        }
    }
    // Stops the preparer and the body reader if the import ended early.
    drop(batch_rx);
    let _ = preparer.await;
    report.failures.sort_by_key(|f| f.line);
    report.updated_nodes.sort_by_key(|u| u.line);
    report.bytes = bytes.load(Ordering::Relaxed);
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    report.error = error.as_ref().map(error_info);
    let c = &report.counts;
    info!(
        host = %app.host, lines = c.lines, created = c.created, updated = c.updated,
        unchanged = c.unchanged, failed = c.failed, log_entries = report.log_entries,
        bytes = report.bytes, elapsed_ms = report.elapsed_ms, "node import finished"
    );
    if let Some(e) = &error {
        warn!(error = %e, "node import stopped early");
    }
    (report, error)
}

/// Stage 1: the body, split into numbered lines, at most [`IMPORT_MAX_BYTES`].
async fn read_body(
    body: Body,
    bytes: Arc<AtomicU64>,
    tx: mpsc::Sender<Result<Vec<NumberedLine>, ApiError>>,
) {
    let mut lines = Lines::new(IMPORT_MAX_LINE);
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let e = ApiError::field("body", format!("the upload broke off: {e}"));
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        total += chunk.len() as u64;
        bytes.store(total, Ordering::Relaxed);
        if total > IMPORT_MAX_BYTES {
            let _ = tx.send(Err(too_large())).await;
            return;
        }
        let mut out = Vec::new();
        lines.push(&chunk, &mut out);
        if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
            return;
        }
    }
    let mut out = Vec::new();
    lines.finish(&mut out);
    if !out.is_empty() {
        let _ = tx.send(Ok(out)).await;
    }
}

/// A batch of items for one log entry, with what was decided about the other lines
/// read meanwhile.
#[derive(Default)]
struct Prepared {
    items: Vec<ImportItem>,
    /// Line of each item.
    lines: Vec<u64>,
    /// Serialized size of the items.
    bytes: usize,
    /// Lines refused before the log (parse errors, bad profiles, duplicates).
    failures: Vec<ImportFailure>,
    /// Existing nodes already as the file says (nothing to commit).
    unchanged: u64,
    /// Node lines read.
    records: u64,
}

/// Stage 2: lines in, batches out. The CPU work (parsing, rendering) runs on the
/// blocking pool, one chunk of lines at a time.
async fn prepare(
    mut st: Preparer,
    mut rx: mpsc::Receiver<Result<Vec<NumberedLine>, ApiError>>,
    tx: mpsc::Sender<Result<Prepared, ApiError>>,
) {
    loop {
        let next = if st.batch.items.is_empty() {
            Ok(rx.recv().await)
        } else {
            tokio::time::timeout(BATCH_WAIT, rx.recv()).await
        };
        let lines = match next {
            // Lines stopped coming for a while: commit what is ready.
            Err(_) => {
                if tx.send(Ok(st.take())).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {
                let _ = tx.send(Ok(st.take())).await;
                return;
            }
            Ok(Some(Err(e))) => {
                // What was read before the error is still imported.
                if tx.send(Ok(st.take())).await.is_ok() {
                    let _ = tx.send(Err(e)).await;
                }
                return;
            }
            Ok(Some(Ok(lines))) => lines,
        };
        let work = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let n = lines.len();
            let full = st.lines(lines);
            tracing::debug!(
                lines = n,
                ms = t.elapsed().as_millis() as u64,
                "import lines prepared"
            );
            (st, full)
        })
        .await;
        let full;
        (st, full) = match work {
            Ok(r) => r,
            Err(e) => {
                let _ = tx
                    .send(Err(ApiError::Internal(format!(
                        "import worker failed: {e}"
                    ))))
                    .await;
                return;
            }
        };
        for b in full {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
    }
}

/// Turns lines into items: the state of stage 2.
struct Preparer {
    app: Arc<App>,
    renderer: Arc<Renderer>,
    parser: Parser,
    /// Node id -> line, to refuse a node listed twice.
    seen: HashMap<String, u64>,
    /// Artifact name -> digest (or why not), looked up once per import.
    names: HashMap<String, Result<Digest, (String, String)>>,
    batch: Prepared,
}

/// Why a line is refused: code and message.
type Refusal = (&'static str, String);

impl Preparer {
    fn new(app: Arc<App>, format: ImportFormat) -> Self {
        Preparer {
            renderer: app.renderer.get(),
            app,
            parser: Parser::new(format),
            seen: HashMap::new(),
            names: HashMap::new(),
            batch: Prepared::default(),
        }
    }

    /// The batch so far, leaving an empty one.
    fn take(&mut self) -> Prepared {
        std::mem::take(&mut self.batch)
    }

    /// Reads `lines`; returns the batches they filled.
    fn lines(&mut self, lines: Vec<NumberedLine>) -> Vec<Prepared> {
        let mut full = Vec::new();
        for (line, text) in lines {
            let record = match text
                .map_err(|e| ("parse", e))
                .and_then(|t| self.parser.line(&t).map_err(|e| ("parse", e)))
            {
                Ok(Parsed::Skip) => continue,
                Ok(Parsed::Record(r)) => *r,
                Err((code, message)) => {
                    self.batch.records += 1;
                    self.refuse(line, None, code, message);
                    continue;
                }
            };
            self.batch.records += 1;
            let id = record.id.clone();
            match self.item(line, record) {
                Ok(None) => self.batch.unchanged += 1,
                Ok(Some(item)) => {
                    let size = serde_json::to_vec(&item).map(|v| v.len()).unwrap_or(0);
                    let b = &self.batch;
                    if !b.items.is_empty()
                        && (b.bytes + size > BATCH_BYTES || b.items.len() >= BATCH_ITEMS)
                    {
                        full.push(self.take());
                    }
                    self.batch.items.push(item);
                    self.batch.lines.push(line);
                    self.batch.bytes += size;
                }
                Err((code, message)) => self.refuse(line, Some(id), code, message),
            }
        }
        full
    }

    fn refuse(&mut self, line: u64, node: Option<String>, code: &str, message: String) {
        self.batch.failures.push(ImportFailure {
            line,
            node,
            code: code.to_string(),
            message,
        });
    }

    /// The item a record asks for; `None` when the node already is as asked.
    fn item(&mut self, line: u64, r: ImportRecord) -> Result<Option<ImportItem>, Refusal> {
        check_name("node id", &r.id).map_err(|m| ("invalid", m))?;
        if let Some(first) = self.seen.get(&r.id) {
            return Err((
                "duplicate",
                format!(
                    "node {} is also on line {first}: list a node once per import",
                    r.id
                ),
            ));
        }
        self.seen.insert(r.id.clone(), line);
        for (what, v) in [("group", &r.group), ("architecture", &r.arch)] {
            if let Some(v) = v {
                check_name(what, v).map_err(|m| ("invalid", m))?;
            }
        }
        if r.macs.is_empty() {
            return Err(("invalid", "a node needs at least one MAC address".into()));
        }
        let asked = r.profile.as_ref().map(|p| self.profile(p)).transpose()?;
        let existing = self
            .app
            .store
            .node(&r.id)
            .map_err(|e| ("internal", e.to_string()))?;
        // The node as it will be: what its files are rendered for.
        let mut target = existing.clone().unwrap_or_else(|| self.new_node(&r.id));
        target.macs = r
            .macs
            .iter()
            .copied()
            .collect::<BTreeSet<MacAddr>>()
            .into_iter()
            .collect();
        if let Some(g) = &r.group {
            target.group = g.clone();
        }
        if let Some(a) = &r.arch {
            target.arch = Some(a.clone());
        }
        let addresses = r
            .addresses
            .as_deref()
            .map(node_addresses)
            .transpose()
            .map_err(|m| ("invalid", m))?;
        let moved = existing.as_ref().is_some_and(|n| {
            n.macs != target.macs || n.group != target.group || n.arch != target.arch
        });
        if let Some(n) = &existing {
            let same_addresses = addresses.as_ref().is_none_or(|a| *a == n.addresses);
            if !moved && same_addresses && asked.as_ref().is_none_or(|p| *p == n.boot_profile) {
                return Ok(None);
            }
        }
        // New MACs, group or arch change what a profiled node's files are.
        let render = match (asked, &existing) {
            (Some(p), _) => Some(p),
            (None, Some(n)) if moved && n.boot_profile.is_some() => Some(n.boot_profile.clone()),
            _ => None,
        };
        // An import describes the node as it should be, not a new boot: a node keeps
        // its boot token (re-importing the same file changes nothing).
        let choice = TokenChoice::new(self.app.gate.access().tokens(), false);
        let profile = match render {
            None => None,
            Some(p) => {
                target.boot_token = match &p {
                    Some(_) => next_token(target.boot_token, choice)
                        .map_err(|e| ("render", e.to_string()))?,
                    None => None,
                };
                Some(ImportProfile {
                    files: match &p {
                        Some(bp) => self.files(&target, bp)?,
                        None => Vec::new(),
                    },
                    boot_token: target.boot_token,
                    profile: p,
                })
            }
        };
        Ok(Some(ImportItem {
            node: r.id,
            macs: target.macs,
            group: r.group,
            arch: r.arch,
            addresses,
            profile,
        }))
    }

    /// A node not enrolled yet, as the import will create it.
    fn new_node(&self, id: &str) -> Node {
        Node {
            id: id.to_string(),
            macs: Vec::new(),
            group: self.app.group.clone(),
            arch: None,
            owner: self.app.host.clone(),
            epoch: 1,
            provision_state: ProvisionState::Enrolled,
            handoff: HandoffState::None,
            boot_profile: None,
            last_token: 0,
            stuck: None,
            fence: None,
            addresses: Vec::new(),
            boot_token: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// The profile a record asks for (`None`: remove it), by the rules of
    /// `PUT /v1/nodes/{id}/profile`.
    fn profile(&mut self, spec: &ImportProfileSpec) -> Result<Option<BootProfile>, Refusal> {
        let kernel = spec
            .kernel
            .as_deref()
            .map(|v| self.artifact("kernel", v))
            .transpose()?;
        let ramdisk = spec
            .ramdisk
            .as_deref()
            .map(|v| self.artifact("ramdisk", v))
            .transpose()?;
        let req = ProfileRequest {
            kind: spec.kind.clone(),
            kernel,
            ramdisk,
            cmdline: spec.cmdline.clone(),
        };
        requested_profile(req, &self.app).map_err(|e| match e {
            ApiError::BadRequest {
                field: Some(f),
                message,
            } => ("profile", format!("{f}: {message}")),
            e => ("profile", e.to_string()),
        })
    }

    /// A kernel or ramdisk given by sha256 or by the name of an uploaded artifact.
    fn artifact(&mut self, what: &str, v: &str) -> Result<Digest, Refusal> {
        if let Ok(d) = v.parse::<Digest>() {
            return Ok(d);
        }
        let store = &self.app.store;
        let found = self.names.entry(v.to_string()).or_insert_with(|| {
            match store.artifacts_page(Some(v), None, None, 2) {
                Ok(a) if a.len() == 1 => Ok(a[0].digest),
                Ok(a) if a.is_empty() => Err((
                    "unknown_artifact".into(),
                    format!("no artifact is named {v:?}: upload it first (`baton artifact add FILE`) or give its sha256"),
                )),
                Ok(_) => Err((
                    "ambiguous_artifact".into(),
                    format!("several artifacts are named {v:?}: give the sha256 of the one to boot"),
                )),
                Err(e) => Err(("internal".into(), e.to_string())),
            }
        });
        found.clone().map_err(|(code, m)| {
            let code: &'static str = match code.as_str() {
                "unknown_artifact" => "unknown_artifact",
                "ambiguous_artifact" => "ambiguous_artifact",
                _ => "internal",
            };
            (code, format!("{what}: {m}"))
        })
    }

    /// `node`'s complete file set for `profile`. Rendered configs travel inline in the
    /// command (and are served from the store), so none is written as a blob file.
    fn files(
        &self,
        node: &Node,
        profile: &BootProfile,
    ) -> Result<Vec<crate::store::FileSpec>, Refusal> {
        let store = &self.app.store;
        let known = |d: &Digest| store.artifact(d).ok().flatten().map(|a| a.size);
        profile_files(
            &self.renderer,
            self.app.blobs.store(),
            &known,
            node,
            profile,
            false,
        )
        .map_err(|e| ("render", e.to_string()))
    }
}

/// Stage 3: commits one batch and accounts for each of its items.
async fn commit(
    app: &Arc<App>,
    items: Vec<ImportItem>,
    lines: &[u64],
    report: &mut ImportReport,
) -> Result<(), ApiError> {
    let ids: Vec<String> = items.iter().map(|i| i.node.clone()).collect();
    let cmd = Command::ImportNodes {
        host: app.host.clone(),
        group: app.group.clone(),
        nodes: items,
        at: now_ms(),
    };
    let results = match app.proposer.propose(cmd).await? {
        Outcome::Applied(Applied::NodesImported { results }) => results,
        Outcome::Applied(other) => {
            return Err(ApiError::Internal(format!(
                "an import applied as {other:?}"
            )))
        }
        // The whole entry was refused (e.g. this host is not registered): every item.
        Outcome::Rejected(r) => ids
            .iter()
            .map(|node| ImportResult::Failed {
                node: node.clone(),
                rejection: r.clone(),
            })
            .collect(),
    };
    let c = &mut report.counts;
    for (r, &line) in results.into_iter().zip(lines) {
        match r {
            ImportResult::Created { .. } => c.created += 1,
            ImportResult::Unchanged { .. } => c.unchanged += 1,
            ImportResult::Updated { node, fields } => {
                c.updated += 1;
                report
                    .updated_nodes
                    .push(ImportUpdate { line, node, fields });
            }
            ImportResult::Failed { node, rejection } => {
                c.failed += 1;
                report.failures.push(ImportFailure {
                    line,
                    node: Some(node),
                    code: rejection_code(&rejection),
                    message: rejection.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The rejection's kind as it is serialized (`mac_in_use`, `invalid`...).
fn rejection_code(r: &Rejection) -> String {
    let r = match r {
        Rejection::BatchRejected { rejection, .. } => rejection,
        r => r,
    };
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_string))
        .unwrap_or_else(|| "rejected".into())
}
