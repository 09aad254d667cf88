//! In-memory copies of blobs being served, keyed by digest: one copy per artifact
//! however many transfers (TFTP or HTTP) read it. Content-addressed, so never stale.
//! [`ServedBlobs`] is the handle the TFTP and HTTP drivers load served bytes through;
//! the HTTP boot fast path also opens blob files through it, to send them with
//! sendfile(2) from the page cache ([`Served::File`], verified once per file version).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::blobs::{BlobError, BlobStore, Digest};
use crate::namespace::{FileData, OpenError};
use crate::store::Store;

struct Entry {
    cell: Arc<tokio::sync::OnceCell<Arc<FileData>>>,
    size: u64,
    last_used: Instant,
}

/// Digest-keyed cache with a byte budget for idle entries.
pub struct BlobCache {
    entries: Mutex<HashMap<Digest, Entry>>,
    budget: u64,
}

impl BlobCache {
    /// A cache keeping about `budget` bytes.
    pub fn new(budget: u64) -> Self {
        BlobCache {
            entries: Mutex::new(HashMap::new()),
            budget,
        }
    }

    /// The blob's bytes, loading them once with `load` (run on the blocking pool) when
    /// absent; concurrent callers wait for the same load.
    pub async fn get_or_load<F>(&self, d: Digest, load: F) -> Result<Arc<FileData>, OpenError>
    where
        F: FnOnce() -> Result<Bytes, OpenError> + Send + 'static,
    {
        let cell = {
            let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let e = m.entry(d).or_insert_with(|| Entry {
                cell: Arc::new(tokio::sync::OnceCell::new()),
                size: 0,
                last_used: Instant::now(),
            });
            e.last_used = Instant::now();
            e.cell.clone()
        };
        let data = cell
            .get_or_try_init(|| async move {
                let bytes = tokio::task::spawn_blocking(load)
                    .await
                    .map_err(|e| OpenError::Io(e.to_string()))??;
                Ok::<_, OpenError>(Arc::new(FileData::new(bytes)))
            })
            .await?
            .clone();
        {
            let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = m.get_mut(&d) {
                e.size = data.octets().len() as u64;
            }
            let mut total: u64 = m.values().map(|e| e.size).sum();
            while total > self.budget {
                let Some((k, size)) = m
                    .iter()
                    .filter(|(k, _)| **k != d)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, e)| (*k, e.size))
                else {
                    break;
                };
                m.remove(&k);
                total -= size;
            }
        }
        Ok(data)
    }

    /// Drops a blob's cached copy (after removal).
    pub fn forget(&self, d: &Digest) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(d);
    }
}

/// How a served body may be delivered: from the shared in-memory copy, or (the HTTP
/// boot fast path, which sends with sendfile(2)) from the blob file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The shared in-memory copy ([`ServedBlobs::bytes`]).
    Memory,
    /// The verified blob file when there is one; the in-memory copy otherwise (a small
    /// rendered file that lives only in the store).
    File,
}

/// A served body: the shared in-memory copy, or an open, verified blob file.
#[derive(Debug, Clone)]
pub enum Served {
    /// In memory, shared by every transfer.
    Memory(Arc<FileData>),
    /// On disk, shared by every transfer (reads use explicit offsets).
    File(Arc<BlobFile>),
}

impl Served {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Served::Memory(d) => d.octets().len() as u64,
            Served::File(f) => f.len,
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open blob file whose content was hashed and found to match its digest.
#[derive(Debug)]
pub struct BlobFile {
    file: File,
    len: u64,
}

impl BlobFile {
    /// The descriptor (read with explicit offsets only: it is shared).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Length in bytes, as verified.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What identifies one version of a file on disk: a write in place changes mtime and
/// ctime, a replacement (rename, as the blob store writes and repairs) the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Version {
    fn of(m: &std::fs::Metadata) -> Self {
        Version {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

struct FileEntry {
    version: Version,
    cell: Arc<tokio::sync::OnceCell<Arc<BlobFile>>>,
    last_used: Instant,
}

/// Blob files open for sendfile, at most this many (a few descriptors, not one per
/// request; the least recently used is closed first).
const MAX_OPEN_FILES: usize = 64;

/// Verified, open blob files keyed by digest and file version.
///
/// The integrity rule (a blob whose content no longer matches its digest is never
/// served) holds here as it does for the in-memory copies, which are hashed once when
/// loaded: a file is hashed once when first opened, through the descriptor that is then
/// served, and that verified state is kept under the file's [`Version`] (device, inode,
/// length, mtime, ctime). Every request stats the path; any change of version (a write
/// in place, a replacement, a repair) opens and hashes the file again before a byte of
/// it is sent. What this cannot see, like the in-memory copy cannot, is damage that
/// changes no metadata after the check (a media error under the page cache).
#[derive(Default)]
struct VerifiedFiles {
    entries: Mutex<HashMap<Digest, FileEntry>>,
}

impl VerifiedFiles {
    /// The verified file of `d` at `version`, opening and hashing it (on the blocking
    /// pool) when it was not verified at this version; concurrent callers share one check.
    async fn get(
        &self,
        blobs: &Arc<BlobStore>,
        d: Digest,
        version: Version,
    ) -> Result<Arc<BlobFile>, OpenError> {
        let cell = {
            let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if !m.contains_key(&d) && m.len() >= MAX_OPEN_FILES {
                if let Some(old) = m.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k) {
                    m.remove(&old);
                }
            }
            let e = m.entry(d).or_insert_with(|| FileEntry {
                version,
                cell: Arc::new(tokio::sync::OnceCell::new()),
                last_used: Instant::now(),
            });
            if e.version != version {
                e.version = version;
                e.cell = Arc::new(tokio::sync::OnceCell::new());
            }
            e.last_used = Instant::now();
            e.cell.clone()
        };
        let blobs = blobs.clone();
        cell.get_or_try_init(|| async move {
            let (file, meta) = tokio::task::spawn_blocking(move || blobs.open_verified(&d))
                .await
                .map_err(|e| OpenError::Io(e.to_string()))?
                .map_err(|e| match e {
                    BlobError::NotFound(_) => OpenError::NotFound,
                    BlobError::Corrupt { .. } => {
                        tracing::error!(digest = %d, "blob content does not match its digest; refusing to serve it");
                        OpenError::Io(format!("blob {d} is corrupt"))
                    }
                    e => OpenError::Io(e.to_string()),
                })?;
            // Changed between the stat and the open: the next request checks again.
            if Version::of(&meta) != version {
                return Err(OpenError::Io(format!("blob {d} changed while being verified")));
            }
            Ok(Arc::new(BlobFile {
                file,
                len: meta.len(),
            }))
        })
        .await
        .cloned()
    }

    fn forget(&self, d: &Digest) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(d);
    }
}

/// The bytes boot clients are served, by digest: the blob store, or for a small
/// rendered file not fetched yet the store itself, loaded once, verified, and shared.
#[derive(Clone)]
pub struct ServedBlobs {
    blobs: Arc<BlobStore>,
    store: Arc<Store>,
    cache: Arc<BlobCache>,
    files: Arc<VerifiedFiles>,
}

impl ServedBlobs {
    /// Serves from `blobs` (and inline files of `store`), keeping about `budget` bytes
    /// of idle copies in memory.
    pub fn new(blobs: Arc<BlobStore>, store: Arc<Store>, budget: u64) -> Self {
        ServedBlobs {
            blobs,
            store,
            cache: Arc::new(BlobCache::new(budget)),
            files: Arc::default(),
        }
    }

    /// The blob store on disk.
    pub fn store(&self) -> &Arc<BlobStore> {
        &self.blobs
    }

    /// Drops a blob's in-memory copy (after removal).
    pub fn forget(&self, d: &Digest) {
        self.cache.forget(d);
        self.files.forget(d);
    }

    /// A blob's body for `delivery`: with [`Delivery::File`], the open blob file,
    /// verified once per file version (see [`VerifiedFiles`]); the in-memory copy
    /// otherwise, and for a small rendered file not fetched to disk yet.
    pub async fn served(&self, digest: &Digest, delivery: Delivery) -> Result<Served, OpenError> {
        if delivery == Delivery::File {
            match std::fs::metadata(self.blobs.path_of(digest)) {
                Ok(m) => {
                    let f = self
                        .files
                        .get(&self.blobs, *digest, Version::of(&m))
                        .await?;
                    return Ok(Served::File(f));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(OpenError::Io(e.to_string())),
            }
        }
        self.bytes(digest).await.map(Served::Memory)
    }

    /// The bytes of a blob this host holds, shared across transfers.
    pub async fn bytes(&self, digest: &Digest) -> Result<Arc<FileData>, OpenError> {
        let blobs = self.blobs.clone();
        let store = self.store.clone();
        let d = *digest;
        self.cache
            .get_or_load(d, move || {
                let bytes = match blobs.read(&d) {
                    Ok(b) => b,
                    // A small rendered file not fetched yet: the store itself has it.
                    Err(BlobError::NotFound(_)) => store
                        .inline_file(&d)
                        .map_err(|e| OpenError::Io(e.to_string()))?
                        .map(Bytes::from)
                        .ok_or(OpenError::Denied("blob_missing"))?,
                    Err(e) => return Err(OpenError::Io(e.to_string())),
                };
                // Verified once per load into memory: a damaged blob is never served.
                if Digest::of(&bytes) != d {
                    tracing::error!(digest = %d, "blob content does not match its digest; refusing to serve it");
                    return Err(OpenError::Io(format!("blob {d} is corrupt")));
                }
                Ok(bytes)
            })
            .await
    }
}
