//! Snapshots on disk, and the one way they change.
//!
//! A snapshot is a SQLite copy of the store (`snap-<n>.db`) named by `current.json`,
//! which also holds its metadata. New data is written and fsynced under a temporary
//! name, renamed into place, then `current.json` is replaced the same way: that rename
//! is the commit point. A crash at any moment leaves `current.json` naming complete
//! data that its metadata describes (the old snapshot or the new one); what a crash
//! leaves besides is removed when the directory is opened again.
//!
//! Snapshot data is read and written as files ([`SnapshotFile`]), never held whole in
//! memory.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::{NodeId, Peer};

/// Snapshot metadata.
pub type Meta = SnapshotMeta<NodeId, Peer>;

const CURRENT: &str = "current.json";
/// Data of snapshots written before `current.json` named its file.
const LEGACY_DATA: &str = "current.db";
/// Suffix of files being written (incoming chunks, builds, the next `current.json`).
const PART: &str = ".part";

/// Snapshot data being sent or received: a file, and where it is.
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
}

impl SnapshotFile {
    /// Opens `path` for reading (a snapshot to send).
    pub async fn open(path: &Path) -> io::Result<Self> {
        Ok(SnapshotFile {
            file: tokio::fs::File::open(path).await?,
            path: path.to_path_buf(),
        })
    }

    /// Creates `path` for writing (a snapshot to receive).
    pub async fn create(path: &Path) -> io::Result<Self> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .await?;
        Ok(SnapshotFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Makes what was written durable, closes the file and returns its path.
    pub async fn finish(mut self) -> io::Result<PathBuf> {
        use tokio::io::AsyncWriteExt;
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok(self.path)
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.get_mut().file).start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.get_mut().file).poll_complete(cx)
    }
}

/// `current.json`: the snapshot's metadata and the file holding its data.
#[derive(Serialize, Deserialize)]
struct Current {
    meta: Meta,
    file: String,
}

/// The snapshot directory.
pub struct SnapshotDir {
    dir: PathBuf,
    /// Serializes publishing (a build and an install may finish together).
    publish: Mutex<()>,
    seq: AtomicU64,
    /// Random per process: names never collide with a crashed run's leftovers.
    salt: u64,
}

impl SnapshotDir {
    /// Opens (or creates) `dir` and removes what an interrupted write left there.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let d = SnapshotDir {
            dir: dir.to_path_buf(),
            publish: Mutex::new(()),
            seq: AtomicU64::new(0),
            salt: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        };
        d.remove_unreferenced(None)?;
        Ok(d)
    }

    /// The current snapshot's metadata and data file.
    pub fn current(&self) -> io::Result<Option<(Meta, PathBuf)>> {
        let bytes = match std::fs::read(self.dir.join(CURRENT)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let c = match serde_json::from_slice::<Current>(&bytes) {
            Ok(c) => c,
            // Written by an older build: the metadata alone, its data in current.db.
            Err(_) => Current {
                meta: serde_json::from_slice(&bytes).map_err(io::Error::other)?,
                file: LEGACY_DATA.into(),
            },
        };
        Ok(Some((c.meta, self.dir.join(c.file))))
    }

    /// Forgets the current snapshot (its data does not match its metadata).
    pub fn discard(&self) -> io::Result<()> {
        let _g = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        match std::fs::remove_file(self.dir.join(CURRENT)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        sync_dir(&self.dir)?;
        self.remove_unreferenced(None)
    }

    /// A new path to write snapshot data to (`kind`: what writes it, for the reader of
    /// a directory listing).
    pub fn staging_path(&self, kind: &str) -> PathBuf {
        self.dir.join(format!("{kind}-{}{PART}", self.unique()))
    }

    fn unique(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n}", self.salt)
    }

    /// Makes the fsynced file `staged` the current snapshot described by `meta`;
    /// returns the current snapshot after that. A snapshot older than the current one
    /// (a build that raced an install) is dropped and the current one returned.
    pub fn publish(&self, meta: &Meta, staged: &Path) -> io::Result<(Meta, PathBuf)> {
        let _g = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cur, path)) = self.current()? {
            if cur.last_log_id > meta.last_log_id {
                let _ = std::fs::remove_file(staged);
                return Ok((cur, path));
            }
        }
        let data = self.stage_data(staged)?;
        self.commit_meta(meta, &data)?;
        self.remove_unreferenced(Some(&data))?;
        Ok((meta.clone(), data))
    }

    /// Step 1 of [`SnapshotDir::publish`]: `staged` renamed to its final name (not yet
    /// current).
    fn stage_data(&self, staged: &Path) -> io::Result<PathBuf> {
        let data = self.dir.join(format!("snap-{}.db", self.unique()));
        std::fs::rename(staged, &data)?;
        sync_dir(&self.dir)?;
        Ok(data)
    }

    /// Step 2, the commit point: `current.json` names `data` and holds `meta`.
    fn commit_meta(&self, meta: &Meta, data: &Path) -> io::Result<()> {
        let file = data
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| io::Error::other("snapshot data file name"))?
            .to_string();
        let c = Current {
            meta: meta.clone(),
            file,
        };
        let tmp = self.dir.join(format!("{CURRENT}{PART}"));
        std::fs::write(&tmp, serde_json::to_vec(&c).map_err(io::Error::other)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(CURRENT))?;
        sync_dir(&self.dir)
    }

    /// Removes every file but `current.json`, the data it names, `keep`, and files still
    /// being written by this process (staged files of other runs are removed at open).
    fn remove_unreferenced(&self, keep: Option<&Path>) -> io::Result<()> {
        let current = self.current().ok().flatten().map(|(_, p)| p);
        let at_open = keep.is_none();
        for e in std::fs::read_dir(&self.dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ours = name.contains(&format!("{:016x}-", self.salt));
            let keep_it = name == CURRENT
                || Some(&p) == current.as_ref()
                || Some(p.as_path()) == keep
                || (!at_open && ours && name.contains(PART));
            if !keep_it {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(())
    }
}

/// fsync of a directory: a rename in it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    fn meta(index: u64) -> Meta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("1-1-{index}"),
        }
    }

    /// A database whose applied position is `index`, as a built snapshot has.
    fn database(path: &Path, index: u64) {
        let c = rusqlite::Connection::open(path).unwrap();
        c.execute_batch(
            "CREATE TABLE raft_applied (id INTEGER PRIMARY KEY, log_id TEXT, membership TEXT)",
        )
        .unwrap();
        let l = serde_json::to_string(&meta(index).last_log_id.unwrap()).unwrap();
        let m = serde_json::to_string(&StoredMembership::<NodeId, Peer>::default()).unwrap();
        c.execute(
            "INSERT INTO raft_applied VALUES (1, ?1, ?2)",
            rusqlite::params![l, m],
        )
        .unwrap();
    }

    fn staged(d: &SnapshotDir, index: u64) -> PathBuf {
        let p = d.staging_path("build");
        database(&p, index);
        p
    }

    /// The current snapshot's metadata agrees with its data's applied position.
    fn assert_consistent(d: &SnapshotDir, index: u64) {
        let (m, data) = d.current().unwrap().expect("a current snapshot");
        assert_eq!(m.last_log_id.map(|l| l.index), Some(index));
        let (log_id, _) = crate::store::Store::replicated_state_of(&data)
            .unwrap()
            .expect("applied state in the data");
        let l: LogId<NodeId> = serde_json::from_str(&log_id).unwrap();
        assert_eq!(Some(l), m.last_log_id, "metadata and data disagree");
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_crash_at_any_step_leaves_metadata_that_matches_the_data() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snapshots");
        let d = SnapshotDir::open(&dir).unwrap();
        let s = staged(&d, 10);
        d.publish(&meta(10), &s).unwrap();
        assert_consistent(&d, 10);

        // Crash while the new data is being written: the old snapshot stands.
        let _half = staged(&d, 20);
        drop(d);
        let d = SnapshotDir::open(&dir).unwrap();
        assert_consistent(&d, 10);
        assert_eq!(files(&dir).len(), 2, "leftovers removed: {:?}", files(&dir));

        // Crash after the data is in place, before the metadata: the old snapshot stands.
        let s = staged(&d, 20);
        d.stage_data(&s).unwrap();
        drop(d);
        let d = SnapshotDir::open(&dir).unwrap();
        assert_consistent(&d, 10);
        assert_eq!(files(&dir).len(), 2, "leftovers removed: {:?}", files(&dir));

        // Crash after the metadata, before the old data is removed: the new one stands.
        let s = staged(&d, 30);
        let data = d.stage_data(&s).unwrap();
        d.commit_meta(&meta(30), &data).unwrap();
        assert_eq!(files(&dir).len(), 3);
        drop(d);
        let d = SnapshotDir::open(&dir).unwrap();
        assert_consistent(&d, 30);
        assert_eq!(files(&dir).len(), 2, "old data removed: {:?}", files(&dir));
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let tmp = tempfile::tempdir().unwrap();
        let d = SnapshotDir::open(tmp.path()).unwrap();
        let s = staged(&d, 50);
        d.publish(&meta(50), &s).unwrap();
        let s = staged(&d, 40);
        let (m, _) = d.publish(&meta(40), &s).unwrap();
        assert_eq!(m.last_log_id.map(|l| l.index), Some(50));
        assert_consistent(&d, 50);
        assert!(!s.exists(), "the older build is dropped");
    }

    #[test]
    fn snapshots_of_older_builds_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        database(&tmp.path().join(LEGACY_DATA), 7);
        std::fs::write(
            tmp.path().join(CURRENT),
            serde_json::to_vec(&meta(7)).unwrap(),
        )
        .unwrap();
        let d = SnapshotDir::open(tmp.path()).unwrap();
        assert_consistent(&d, 7);
        let s = staged(&d, 9);
        d.publish(&meta(9), &s).unwrap();
        assert_consistent(&d, 9);
        assert!(!tmp.path().join(LEGACY_DATA).exists());
    }
}
