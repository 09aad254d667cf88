//! Artifact replication (a driver): every host holds each blob that the nodes of its group
//! reference. A missing blob is fetched from a holder over the cluster port into a
//! partial file (an interrupted fetch resumes with `Range`), rate-limited so boots keep
//! priority, verified against its sha256, stored, and recorded in the replicated store.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::v1::ReplicationStatus;
use crate::blobs::{BlobStore, Digest};
use crate::clock::now_ms;
use crate::ownership::state::LeaseTimes;
use crate::store::feed::EventFeed;
use crate::store::raft::peer::PeerClient;
use crate::store::raft::propose::Proposer;
use crate::store::{Command, Store};

/// Shared view of [`ReplicationStatus`]: written by the replicator, read by the API.
#[derive(Clone, Default)]
pub struct ReplicationProgress(Arc<Mutex<ReplicationStatus>>);

impl ReplicationProgress {
    /// A copy of the current status.
    pub fn get(&self) -> ReplicationStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut ReplicationStatus)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// What the replicator works with.
pub struct Replicator {
    /// This host's name.
    pub host: String,
    /// Its group: blobs of this group's nodes are replicated here.
    pub group: String,
    /// The local replica.
    pub store: Arc<Store>,
    /// Where fetched blobs go.
    pub blobs: Arc<BlobStore>,
    /// To record holdings, find peers and fetch from them.
    pub proposer: Proposer,
    /// Wakes on applied changes.
    pub feed: EventFeed,
    /// To try live holders first.
    pub lease_times: LeaseTimes,
    /// Published progress.
    pub progress: ReplicationProgress,
    /// Bytes per second cap (0: none).
    pub rate: u64,
}

/// Blobs this host must hold and lacks: those referenced by nodes of its group.
pub fn missing(store: &Store, blobs: &BlobStore, group: &str) -> Vec<Digest> {
    let mut want = BTreeSet::new();
    let Ok(nodes) = store.nodes() else {
        return Vec::new();
    };
    for n in nodes.iter().filter(|n| n.group == group) {
        if let Ok(files) = store.node_files(&n.id) {
            want.extend(files.into_iter().map(|f| f.digest));
        }
    }
    want.into_iter().filter(|d| !blobs.has(d)).collect()
}

/// Runs until `shutdown`: wakes on every applied change (and every few seconds), fetches
/// what is missing, one blob at a time.
pub async fn run(app: Replicator, shutdown: CancellationToken) {
    let rate = app.rate;
    let mut events = app.feed.subscribe();
    loop {
        // Holding records also matter for blobs we have but the store doesn't know of
        // (e.g. a fetch that finished just before a crash).
        let todo = missing(&app.store, &app.blobs, &app.group);
        set_status(&app, |s| s.missing = todo.len());
        for d in todo {
            if shutdown.is_cancelled() {
                return;
            }
            match fetch_one(&app, &d, rate, &shutdown).await {
                Ok(()) => set_status(&app, |s| s.last_error = None),
                Err(e) => {
                    warn!(digest = %d, error = %e, "artifact replication failed; will retry");
                    set_status(&app, |s| s.last_error = Some(format!("{d}: {e}")));
                }
            }
        }
        let todo = missing(&app.store, &app.blobs, &app.group).len();
        set_status(&app, |s| {
            s.missing = todo;
            s.current = None;
            s.from = None;
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = events.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(if todo > 0 { 2 } else { 10 })) => {}
        }
    }
}

fn set_status(app: &Replicator, f: impl FnOnce(&mut ReplicationStatus)) {
    app.progress.update(f);
}

fn partial_path(app: &Replicator, d: &Digest) -> PathBuf {
    app.blobs.root().join("partial").join(format!("{d}.part"))
}

/// Fetches one blob from any holder, resuming a partial download.
async fn fetch_one(
    app: &Replicator,
    d: &Digest,
    rate: u64,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let art = app
        .store
        .artifact(d)
        .map_err(|e| e.to_string())?
        .ok_or("artifact not registered yet")?;
    // A small rendered file is in the store itself (it is served from there already):
    // copy it into the blob store and say so, no peer needed.
    if let Some(bytes) = app.store.inline_file(d).map_err(|e| e.to_string())? {
        let info = app.blobs.put_bytes(&bytes).map_err(|e| e.to_string())?;
        if info.digest != *d {
            return Err(format!("inline content of {d} hashes to {}", info.digest));
        }
        return record_held(app, d, "store", &art).await;
    }
    let peers = app.proposer.peers();
    if !peers.has_secret() {
        return Err("no cluster secret: cannot fetch from peers".into());
    }
    // Live holders first: a down or suspect host is tried last.
    let now = now_ms();
    let up = |h: &str| {
        app.store.host(h).ok().flatten().is_some_and(|x| {
            crate::ownership::state::classify(&x, now, &app.lease_times).accepts_nodes()
        })
    };
    let mut holders: Vec<(String, String)> = art
        .hosts
        .iter()
        .filter(|h| **h != app.host)
        .filter_map(|h| app.proposer.peer_url(h).map(|u| (h.clone(), u)))
        .collect();
    holders.sort_by_key(|(h, _)| !up(h));
    if holders.is_empty() {
        return Err("no reachable host holds it".into());
    }
    let part = partial_path(app, d);
    if let Some(dir) = part.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let mut last_err = String::new();
    for (host, url) in holders {
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        set_status(app, |s| {
            s.current = Some(d.to_string());
            s.bytes = have;
            s.total = art.size;
            s.from = Some(host.clone());
        });
        match download(app, peers, &url, d, &part, have, art.size, rate, shutdown).await {
            Ok(()) => {}
            Err(e) => {
                last_err = format!("from {host}: {e}");
                continue;
            }
        }
        // Verify before anything can serve it; a bad copy is thrown away whole.
        let store = app.blobs.clone();
        let p2 = part.clone();
        let d2 = *d;
        let stored = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&p2)?;
            let r = store.put_stream(f, Some(&d2));
            let _ = std::fs::remove_file(&p2);
            r.map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(|e| e.to_string())?;
        if let Err(e) = stored {
            last_err = format!("from {host}: {e}");
            continue;
        }
        return record_held(app, d, &host, &art).await;
    }
    Err(last_err)
}

/// Records in the store that this host now holds `d` (copied from `from`).
async fn record_held(
    app: &Replicator,
    d: &Digest,
    from: &str,
    art: &crate::store::Artifact,
) -> Result<(), String> {
    let out = app
        .proposer
        .propose(Command::RecordHostArtifact {
            host: app.host.clone(),
            digest: *d,
            present: true,
            at: now_ms(),
        })
        .await
        .map_err(|e| e.to_string())?;
    info!(digest = %d, from = %from, bytes = art.size, name = %art.name, outcome = ?out.is_applied(), "artifact replicated");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn download(
    app: &Replicator,
    peers: &PeerClient,
    base: &str,
    d: &Digest,
    part: &PathBuf,
    have: u64,
    total: u64,
    rate: u64,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    if have >= total && total > 0 {
        return Ok(());
    }
    let mut body = peers.blob(base, d, have).await.map_err(|e| e.to_string())?;
    let resumed = body.resumed;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(resumed)
        .write(true)
        .truncate(!resumed)
        .open(part)
        .map_err(|e| e.to_string())?;
    let mut done = if resumed { have } else { 0 };
    if resumed {
        info!(digest = %d, from_byte = have, "resuming artifact replication");
    }
    let started = Instant::now();
    let mut sent_since = 0u64;
    let mut last_log = Instant::now();
    while let Some(chunk) = body.chunk().await.map_err(|e| e.to_string())? {
        if shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        tokio::task::block_in_place(|| f.write_all(&chunk)).map_err(|e| e.to_string())?;
        done += chunk.len() as u64;
        sent_since += chunk.len() as u64;
        set_status(app, |s| s.bytes = done);
        if rate > 0 {
            // Token bucket over the whole download: sleep until the average is under the cap.
            let due = Duration::from_secs_f64(sent_since as f64 / rate as f64);
            let el = started.elapsed();
            if due > el {
                tokio::time::sleep(due - el).await;
            }
        }
        if last_log.elapsed() > Duration::from_secs(2) {
            last_log = Instant::now();
            info!(digest = %d, bytes = done, total, "artifact replication in progress");
        }
    }
    tokio::task::block_in_place(|| f.sync_all()).map_err(|e| e.to_string())?;
    Ok(())
}
