//! Artifact replication (a driver): every host holds each blob that the nodes of its group
//! reference. A missing blob is fetched from a holder over the cluster port into a
//! partial file (an interrupted fetch resumes with `Range`), rate-limited so boots keep
//! priority, verified against its sha256, stored, and recorded in the replicated store
//! (many blobs per log entry). Small rendered files are kept in the store itself, so
//! every replica holds them: they are neither fetched nor recorded.

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

/// Most holdings recorded per log entry.
const RECORD_BATCH: usize = 256;
/// Longest a fetched blob waits before its holding is recorded (a takeover or a
/// migration to this host waits for the record).
const RECORD_DELAY: Duration = Duration::from_secs(1);
/// Shortest pause between two passes woken by applied changes: a burst of writes
/// costs one pass, not one per write.
const PASS_GAP: Duration = Duration::from_millis(200);

/// What replication has to do on this host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Todo {
    /// Blobs the nodes of its group serve that it lacks, each with whether the store
    /// records it as holding them anyway (a blob lost from disk).
    pub fetch: Vec<(Digest, bool)>,
    /// Blobs it has that the store does not record it as holding (e.g. a fetch that
    /// finished just before a crash).
    pub record: Vec<Digest>,
}

/// What `host` must fetch and record: blobs referenced by nodes of `group`. Files kept
/// in the store are never fetched nor recorded: every replica holds them already.
pub fn todo(store: &Store, blobs: &BlobStore, group: &str, host: &str) -> Todo {
    let mut t = Todo::default();
    let Ok(wanted) = store.wanted_blobs(group, host) else {
        return t;
    };
    for (d, recorded) in wanted {
        if !blobs.has(&d) {
            t.fetch.push((d, recorded));
        } else if !recorded {
            t.record.push(d);
        }
    }
    t
}

/// Holdings fetched but not recorded yet.
#[derive(Default)]
struct Pending {
    digests: Vec<Digest>,
    since: Option<Instant>,
}

impl Pending {
    fn push(&mut self, d: Digest) {
        self.since.get_or_insert_with(Instant::now);
        self.digests.push(d);
    }

    fn due(&self) -> bool {
        self.digests.len() >= RECORD_BATCH
            || self.since.is_some_and(|s| s.elapsed() >= RECORD_DELAY)
    }
}

/// Runs until `shutdown`: wakes on every applied change (and every few seconds), fetches
/// what is missing, one blob at a time, and records what it fetched in batches.
pub async fn run(app: Replicator, shutdown: CancellationToken) {
    let rate = app.rate;
    let mut events = app.feed.subscribe();
    let mut pending = Pending::default();
    loop {
        let t = todo(&app.store, &app.blobs, &app.group, &app.host);
        set_status(&app, |s| s.missing = t.fetch.len());
        for d in t.record {
            pending.push(d);
        }
        for (d, recorded) in t.fetch {
            if shutdown.is_cancelled() {
                return;
            }
            match fetch_one(&app, &d, rate, &shutdown).await {
                Ok(()) => {
                    set_status(&app, |s| s.last_error = None);
                    if !recorded {
                        pending.push(d);
                    }
                }
                Err(e) => {
                    warn!(digest = %d, error = %e, "artifact replication failed; will retry");
                    set_status(&app, |s| s.last_error = Some(format!("{d}: {e}")));
                }
            }
            if pending.due() {
                flush(&app, &mut pending).await;
            }
        }
        flush(&app, &mut pending).await;
        let left = todo(&app.store, &app.blobs, &app.group, &app.host);
        let todo = left.fetch.len();
        set_status(&app, |s| {
            s.missing = todo;
            s.current = None;
            s.from = None;
        });
        let wait = Duration::from_secs(if todo > 0 || !left.record.is_empty() {
            2
        } else {
            10
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = events.changed() => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(PASS_GAP) => {}
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Records the pending holdings in one command (a failed record is found again by the
/// next pass: the blob is on disk but not recorded).
async fn flush(app: &Replicator, pending: &mut Pending) {
    pending.since = None;
    if pending.digests.is_empty() {
        return;
    }
    let digests = std::mem::take(&mut pending.digests);
    let n = digests.len();
    match app
        .proposer
        .propose(Command::RecordHostArtifacts {
            host: app.host.clone(),
            digests,
            at: now_ms(),
        })
        .await
    {
        Ok(out) if out.is_applied() => {
            info!(host = %app.host, blobs = n, "artifact holdings recorded")
        }
        Ok(out) => warn!(outcome = ?out, "artifact holdings refused"),
        Err(e) => warn!(error = %e, "artifact holdings not recorded; will retry"),
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
        info!(digest = %d, from = %host, bytes = art.size, name = %art.name, "artifact replicated");
        return Ok(());
    }
    Err(last_err)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BootProfile, FileSpec, KernelBoot, MacAddr};

    fn apply(store: &Store, cmd: Command) {
        assert!(store.apply(&cmd).unwrap().is_applied(), "{cmd:?}");
    }

    #[test]
    fn fetches_and_records_blobs_only_never_files_kept_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("baton.db")).unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        for h in ["h1", "h2"] {
            apply(
                &store,
                Command::RegisterHost {
                    name: h.into(),
                    group: "g".into(),
                    addresses: vec![],
                    at: 1,
                },
            );
        }
        let (kernel, ramdisk, cfg) = (&b"kernel"[..], &b"ramdisk"[..], "default x\n");
        for (name, data) in [("vmlinuz", kernel), ("initrd", ramdisk)] {
            apply(
                &store,
                Command::RegisterArtifact {
                    digest: Digest::of(data),
                    size: data.len() as u64,
                    name: name.into(),
                    host: "h1".into(),
                    at: 2,
                },
            );
        }
        apply(
            &store,
            Command::EnrollNode {
                node: "n1".into(),
                macs: vec![MacAddr([2, 0, 0, 0, 0, 1])],
                group: "g".into(),
                arch: None,
                owner: "h1".into(),
                at: 3,
            },
        );
        let spec = |path: &str, data: &[u8], text: Option<&str>| FileSpec {
            path: path.into(),
            digest: Digest::of(data),
            size: data.len() as u64,
            held: true,
            text: text.map(str::to_string),
        };
        apply(
            &store,
            Command::SetBootProfile {
                boot_token: None,
                node: "n1".into(),
                profile: Some(BootProfile::Deploy(KernelBoot {
                    kernel: Digest::of(kernel),
                    ramdisk: Digest::of(ramdisk),
                    cmdline: String::new(),
                })),
                files: vec![
                    spec("nodes/n1/kernel", kernel, None),
                    spec("nodes/n1/ramdisk", ramdisk, None),
                    spec(
                        "pxelinux.cfg/01-02-00-00-00-00-01",
                        cfg.as_bytes(),
                        Some(cfg),
                    ),
                ],
                host: "h1".into(),
                expected_epoch: None,
                at: 4,
            },
        );
        let mut both = vec![(Digest::of(kernel), false), (Digest::of(ramdisk), false)];
        both.sort();
        assert_eq!(
            todo(&store, &blobs, "g", "h2"),
            Todo {
                fetch: both,
                record: vec![]
            },
            "the rendered config is in the store: nothing to fetch for it"
        );
        // A blob on disk but not recorded is recorded, not fetched again.
        blobs.put_bytes(kernel).unwrap();
        assert_eq!(
            todo(&store, &blobs, "g", "h2"),
            Todo {
                fetch: vec![(Digest::of(ramdisk), false)],
                record: vec![Digest::of(kernel)]
            }
        );
        // h1 is recorded as holding both, but lost the ramdisk: fetch it again, record nothing.
        assert_eq!(
            todo(&store, &blobs, "g", "h1"),
            Todo {
                fetch: vec![(Digest::of(ramdisk), true)],
                record: vec![]
            }
        );
        assert_eq!(todo(&store, &blobs, "other", "h2"), Todo::default());
    }
}
