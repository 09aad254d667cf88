//! The ingest driver: scans the tree ([`super::scan`]), plans against the local replica
//! ([`super::plan`]) and proposes the commands; in `baton serve` it watches the tree with
//! notify and scans again after every change (and every [`FULL_RESCAN`], in case an
//! event was lost).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::blobs::{BlobStore, Digest};
use crate::clock::now_ms;
use crate::store::raft::propose::Proposer;
use crate::store::{Store, StoreError, INLINE_MAX};

use super::plan::{commands, plan, CommandCtx, Known, KnownNode, Skip};
use super::scan::Scanner;

/// Scan the whole tree this often even without events.
pub const FULL_RESCAN: Duration = Duration::from_secs(30);
/// Wait this long after an event for the rest of a burst (a tool writes several files).
const DEBOUNCE: Duration = Duration::from_millis(30);

/// Why an ingest pass failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The tree cannot be read.
    #[error("cannot read {path}: {source}")]
    Tree {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The local replica cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The scan task died.
    #[error("ingest scan failed: {0}")]
    Task(String),
}

/// Body of `POST /v1/ingest` (`baton ingest DIR`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngestRequest {
    /// The tree, an absolute path on the server's host.
    pub dir: String,
    /// How long a file must stay unchanged before it is taken, ms.
    #[serde(default = "default_quiet_ms")]
    pub quiet_ms: u64,
}

fn default_quiet_ms() -> u64 {
    250
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngestReport {
    /// The tree.
    pub dir: String,
    /// Source tag of its nodes.
    pub source: String,
    /// Nodes enrolled.
    pub enrolled: Vec<String>,
    /// Nodes whose files (or MACs) changed.
    pub updated: Vec<String>,
    /// Nodes the store refused to change, with the reason.
    pub refused: Vec<Skip>,
    /// Paths left out, with the reason.
    pub skipped: Vec<Skip>,
    /// Paths still being written when the pass ended.
    pub waiting: Vec<String>,
    /// Bytes read from the tree into the blob store.
    pub bytes_read: u64,
}

/// One tree and where its nodes go.
pub struct Ingester {
    /// The tree, as configured.
    pub dir: PathBuf,
    /// Source tag of its nodes.
    pub source: String,
    /// This host (owner of enrolled nodes, holder of the blobs).
    pub host: String,
    /// Group of enrolled nodes.
    pub group: String,
    /// The local replica.
    pub store: Arc<Store>,
    /// Where file contents go.
    pub blobs: Arc<BlobStore>,
    /// To propose the changes.
    pub proposer: Proposer,
    scanner: Arc<Mutex<Scanner>>,
    /// Files (relative to the tree) modified since their last close, from the watcher.
    writing: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// The source tag of `dir` ingested by `host`.
pub fn source_tag(host: &str, dir: &Path) -> String {
    format!("ingest:{host}:{}", dir.display())
}

/// The store's view for the planner.
pub fn known(store: &Store) -> Result<Known, StoreError> {
    let sources = store.node_sources()?;
    let mut nodes = BTreeMap::new();
    for n in store.nodes()? {
        let files = store
            .node_files(&n.id)?
            .into_iter()
            .map(|f| (f.path, f.digest))
            .collect();
        nodes.insert(
            n.id.clone(),
            KnownNode {
                macs: n.macs.iter().copied().collect(),
                source: sources.get(&n.id).cloned(),
                has_profile: n.boot_profile.is_some(),
                files,
            },
        );
    }
    Ok(Known::from_nodes(nodes))
}

impl Ingester {
    /// An ingester of `dir`; a file is taken once it was unchanged for `quiet`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: &Path,
        host: &str,
        group: &str,
        store: Arc<Store>,
        blobs: Arc<BlobStore>,
        proposer: Proposer,
        quiet: Duration,
    ) -> Result<Self, IngestError> {
        let scanner =
            Scanner::new(dir, blobs.clone(), quiet).map_err(|source| IngestError::Tree {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Ingester {
            dir: dir.to_path_buf(),
            source: source_tag(host, dir),
            host: host.to_string(),
            group: group.to_string(),
            store,
            blobs,
            proposer,
            scanner: Arc::new(Mutex::new(scanner)),
            writing: Arc::default(),
        })
    }

    /// Scans once and applies what changed; returns the report and when to scan again
    /// (some file was still being written).
    pub async fn pass(&self) -> Result<(IngestReport, Option<Duration>), IngestError> {
        let scanner = self.scanner.clone();
        let store = self.store.clone();
        let source = self.source.clone();
        let writing = self.writing.clone();
        let (scan, known) = tokio::task::spawn_blocking(move || {
            let mut s = scanner.lock().unwrap_or_else(|p| p.into_inner());
            let root = s.root().to_path_buf();
            let open = |rel: &str| {
                writing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(rel)
            };
            let scan = s
                .scan(SystemTime::now, &open)
                .map_err(|source| IngestError::Tree { path: root, source })?;
            Ok::<_, IngestError>((scan, known(&store)?))
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))??;
        let p = plan(&scan.seen, &known, &source);
        let mut report = IngestReport {
            dir: self.dir.display().to_string(),
            source: self.source.clone(),
            skipped: p.skipped.clone(),
            waiting: p.waiting.clone(),
            bytes_read: scan.bytes_read,
            ..Default::default()
        };
        if scan.truncated {
            warn!(dir = %self.dir.display(), limit = super::scan::MAX_ENTRIES, "ingest: tree has too many entries; the rest is not read");
        }
        let blobs = self.blobs.clone();
        let inline = move |d: &Digest| -> Option<String> {
            match blobs.size(d) {
                Ok(Some(n)) if n as usize <= INLINE_MAX => blobs
                    .read(d)
                    .ok()
                    .and_then(|b| String::from_utf8(b.to_vec()).ok()),
                _ => None,
            }
        };
        let store = self.store.clone();
        let known_size = move |d: &Digest| store.artifact(d).ok().flatten().map(|a| a.size);
        let ctx = CommandCtx {
            source: &self.source,
            host: &self.host,
            group: &self.group,
            at: now_ms(),
        };
        let enrolled: std::collections::BTreeSet<&str> = p
            .changes
            .iter()
            .filter(|c| c.enroll)
            .map(|c| c.node.as_str())
            .collect();
        for (node, cmd) in commands(&p, &ctx, &inline, &known_size) {
            match self.proposer.propose(cmd).await {
                Ok(o) if o.is_applied() => {
                    if enrolled.contains(node.as_str()) {
                        info!(node = %node, source = %self.source, "ingest: node enrolled");
                        report.enrolled.push(node);
                    } else {
                        info!(node = %node, source = %self.source, "ingest: node files updated");
                        report.updated.push(node);
                    }
                }
                Ok(o) => {
                    let why = match o {
                        crate::store::Outcome::Rejected(r) => r.to_string(),
                        other => format!("{other:?}"),
                    };
                    warn!(node = %node, reason = %why, "ingest: change refused");
                    report.refused.push(Skip { path: node, why });
                }
                Err(e) => {
                    warn!(node = %node, error = %e, "ingest: change not stored");
                    report.refused.push(Skip {
                        path: node,
                        why: e.to_string(),
                    });
                }
            }
        }
        Ok((report, scan.retry))
    }

    /// Passes until nothing is being written (at most `limit`): `baton ingest DIR`.
    pub async fn once(&self, limit: Duration) -> Result<IngestReport, IngestError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut total = IngestReport::default();
        loop {
            let (r, retry) = self.pass().await?;
            total.enrolled.extend(r.enrolled);
            total.updated.extend(r.updated);
            total.refused.extend(r.refused);
            total.bytes_read += r.bytes_read;
            total.dir = r.dir;
            total.source = r.source;
            total.skipped = r.skipped;
            total.waiting = r.waiting;
            match retry {
                Some(d) if tokio::time::Instant::now() + d < deadline => {
                    tokio::time::sleep(d).await
                }
                _ => return Ok(total),
            }
        }
    }
}

/// Watches the tree until `shutdown`, ingesting after every change.
pub async fn run(ing: Ingester, shutdown: CancellationToken) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let w = wake.clone();
    let writing = ing.writing.clone();
    let roots: Vec<PathBuf> = [Some(ing.dir.clone()), ing.dir.canonicalize().ok()]
        .into_iter()
        .flatten()
        .collect();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        use notify::EventKind;
        let rel = |p: &PathBuf| {
            roots
                .iter()
                .find_map(|r| p.strip_prefix(r).ok())
                .and_then(|r| r.to_str())
                .map(str::to_string)
        };
        let mut open = writing.lock().unwrap_or_else(|p| p.into_inner());
        let relevant = match res {
            Ok(ev) => match ev.kind {
                // Written to: open for writing until its close (IN_MODIFY .. IN_CLOSE_WRITE).
                EventKind::Modify(ModifyKind::Data(_)) => {
                    open.extend(ev.paths.iter().filter_map(rel));
                    true
                }
                EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Remove(_) => {
                    for p in ev.paths.iter().filter_map(rel) {
                        open.remove(&p);
                    }
                    true
                }
                EventKind::Access(_) => false,
                _ => true,
            },
            // A lost event (queue overflow) may hide a change, or a close: fall back to
            // the quiet-time rule for every file.
            Err(_) => {
                open.clear();
                true
            }
        };
        drop(open);
        if relevant {
            w.notify_one();
        }
    });
    let _watcher = match watcher {
        Ok(mut watcher) => {
            use notify::Watcher;
            match watcher.watch(&ing.dir, notify::RecursiveMode::Recursive) {
                Ok(()) => Some(watcher),
                Err(e) => {
                    warn!(dir = %ing.dir.display(), error = %e, "ingest: cannot watch the tree; scanning every {FULL_RESCAN:?} only");
                    None
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "ingest: no file watcher; scanning every {FULL_RESCAN:?} only");
            None
        }
    };
    info!(dir = %ing.dir.display(), source = %ing.source, "ingest watching");
    let mut next: Option<Duration> = Some(Duration::ZERO);
    loop {
        let wait = next.unwrap_or(FULL_RESCAN);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {
                tokio::time::sleep(DEBOUNCE).await;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        match ing.pass().await {
            Ok((r, retry)) => {
                if !r.skipped.is_empty() {
                    debug!(skipped = ?r.skipped, "ingest: paths left out");
                }
                next = retry;
            }
            Err(e) => {
                warn!(error = %e, "ingest pass failed; retrying");
                next = Some(Duration::from_secs(1));
            }
        }
    }
}
