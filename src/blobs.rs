//! Content-addressed artifact store: every blob is kept once, named by its sha256.
//!
//! Layout under the root directory:
//!
//! ```text
//! sha256/ab/ab12…ef   one file per blob, read-only, named by its full hex digest
//! tmp/                partial writes; emptied when the store is opened
//! ```
//!
//! Writes are atomic: data goes to a temp file in `tmp/` (same file system), which is
//! fsynced, renamed into place, and then the directory is fsynced. A crash therefore
//! leaves either no blob or a complete one, never a torn file under its digest name; the
//! only debris is a temp file, removed at the next open. The two-character shard keeps
//! directories small with tens of thousands of blobs.
//!
//! The blob store knows nothing of the SQLite store: whether a blob may be removed
//! (no node references it) is decided by applying `Command::RemoveArtifact` first.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// Size of the copy buffer and of the progress-report granularity.
const CHUNK: usize = 1 << 20;

/// A sha256 digest, shown and serialized as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex form (what file names, the database and the API use).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sha256 digest {0:?}: expected 64 hex characters")]
pub struct ParseDigestError(pub String);

impl FromStr for Digest {
    type Err = ParseDigestError;

    /// Accepts 64 hex characters, optionally prefixed by `sha256:`; either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut out).is_err() {
            // Only echo a bounded prefix: the input may be arbitrary user data.
            return Err(ParseDigestError(s.chars().take(80).collect()));
        }
        Ok(Digest(out))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading the caller's source (stream or file) failed.
    #[error("reading the artifact source: {0}")]
    Source(#[source] io::Error),
    /// The content does not hash to the digest the caller announced.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// What the caller said.
        expected: Digest,
        /// What the bytes are.
        actual: Digest,
    },
    /// A stored blob no longer hashes to its name (disk corruption or tampering).
    #[error("blob {expected} is corrupt: content hashes to {actual}")]
    Corrupt {
        /// The blob's name.
        expected: Digest,
        /// What its bytes hash to now.
        actual: Digest,
    },
    /// No blob with this digest is stored here.
    #[error("no blob {0} in this store")]
    NotFound(Digest),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BlobError + 'a {
    move |source| BlobError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a put produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlobInfo {
    /// The content's sha256.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// False when identical content was already stored (nothing new was written).
    pub created: bool,
    /// A damaged stored copy (content no longer matching its digest) was replaced.
    pub repaired: bool,
}

/// A content-addressed blob store rooted at one directory.
#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
}

/// Distinguishes temp files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl BlobStore {
    /// Opens (creating if needed) the store at `root` and removes leftover temp files.
    ///
    /// One process owns a data directory; leftover temp files are from a crashed writer.
    pub fn open(root: impl AsRef<Path>) -> Result<BlobStore, BlobError> {
        let root = root.as_ref().to_path_buf();
        // Kernels and ramdisks of nodes may embed secrets: Baton's user only.
        crate::private_fs::own_dir(&root).map_err(io_err("create directory", &root))?;
        for dir in [root.join("sha256"), root.join("tmp")] {
            crate::private_fs::create_dir(&dir).map_err(io_err("create directory", &dir))?;
        }
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let path = entry.map_err(io_err("list", &tmp))?.path();
            // Best effort: a temp file we cannot remove only wastes space.
            let _ = fs::remove_file(&path);
        }
        Ok(BlobStore { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Whether the blob is stored here.
    pub fn has(&self, digest: &Digest) -> bool {
        self.path_of(digest).is_file()
    }

    /// Path of the stored blob, if present (for serving by mmap or sendfile).
    pub fn get(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.path_of(digest);
        path.is_file().then_some(path)
    }

    /// Size of the stored blob, if present.
    pub fn size(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        let path = self.path_of(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    /// Reads the whole blob into memory.
    pub fn read(&self, digest: &Digest) -> Result<Bytes, BlobError> {
        let path = self.path_of(digest);
        match fs::read(&path) {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::NotFound(*digest)),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Starts an incremental write (e.g. an HTTP upload arriving in chunks).
    pub fn writer(&self) -> Result<BlobWriter, BlobError> {
        BlobWriter::new(&self.root)
    }

    /// Stores `data`.
    pub fn put_bytes(&self, data: &[u8]) -> Result<BlobInfo, BlobError> {
        let mut w = self.writer()?;
        w.write_all(data).map_err(io_err("write", &w.tmp))?;
        w.finish(None)
    }

    /// Stores everything `reader` yields; when `expected` is given, the content must hash
    /// to it or nothing is stored.
    pub fn put_stream(
        &self,
        mut reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<BlobInfo, BlobError> {
        let mut w = self.writer()?;
        copy_chunks(&mut reader, &mut w, |_| {})?;
        w.finish(expected)
    }

    /// Imports a local file, calling `progress(done, total)` after every chunk (and once
    /// at the end) so a CLI can draw a progress bar for multi-GiB images.
    pub fn put_file(
        &self,
        path: impl AsRef<Path>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<BlobInfo, BlobError> {
        let path = path.as_ref();
        let mut src = File::open(path).map_err(io_err("open", path))?;
        let total = src.metadata().map_err(io_err("stat", path))?.len();
        let mut w = self.writer()?;
        let done = copy_chunks(&mut src, &mut w, |done| progress(done, total))?;
        progress(done, total.max(done));
        w.finish(None)
    }

    /// Re-hashes a stored blob and checks it still matches its name.
    pub fn verify(&self, digest: &Digest) -> Result<(), BlobError> {
        self.open_verified(digest).map(|_| ())
    }

    /// Opens a stored blob for serving from disk (sendfile) and checks, through the
    /// opened descriptor, that its content still hashes to its name: the descriptor
    /// returned reads what was verified unless the file is later written in place, so a
    /// caller that keeps it re-verifies when the file's metadata (returned) changes.
    pub fn open_verified(&self, digest: &Digest) -> Result<(File, fs::Metadata), BlobError> {
        let path = self.path_of(digest);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(*digest))
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let meta = f.metadata().map_err(io_err("stat", &path))?;
        let actual = hash_reader(&mut f).map_err(io_err("read", &path))?;
        if actual != *digest {
            return Err(BlobError::Corrupt {
                expected: *digest,
                actual,
            });
        }
        Ok((f, meta))
    }

    /// Deletes a blob; returns whether it existed. Callers check references first
    /// (by applying `RemoveArtifact` to the store).
    pub fn remove(&self, digest: &Digest) -> Result<bool, BlobError> {
        let path = self.path_of(digest);
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    fsync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Every stored blob with its size, sorted by digest. Files whose names are not
    /// digests are skipped.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        let base = self.root.join("sha256");
        let mut out = Vec::new();
        for shard in fs::read_dir(&base).map_err(io_err("list", &base))? {
            let shard = shard.map_err(io_err("list", &base))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&shard).map_err(io_err("list", &shard))? {
                let entry = entry.map_err(io_err("list", &shard))?;
                let Some(digest) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let len = entry
                    .metadata()
                    .map_err(io_err("stat", &entry.path()))?
                    .len();
                out.push((digest, len));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Copies `src` into `w` by chunks, reporting the running total; returns the total.
fn copy_chunks(
    src: &mut impl Read,
    w: &mut BlobWriter,
    mut report: impl FnMut(u64),
) -> Result<u64, BlobError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(w.len),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BlobError::Source(e)),
        };
        w.write_all(&buf[..n]).map_err(io_err("write", &w.tmp))?;
        report(w.len);
    }
}

/// The sha256 of everything `r` yields.
fn hash_reader(r: &mut impl Read) -> io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(Digest(hasher.finalize().into())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether the file at `path` holds exactly the content named `digest`. Unreadable or
/// missing counts as not intact: the caller then writes a fresh copy.
fn is_intact(path: &Path, digest: &Digest, len: u64) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    // A length mismatch is damage too, and costs no read.
    if f.metadata().map(|m| m.len()).ok() != Some(len) {
        return false;
    }
    hash_reader(&mut f).is_ok_and(|d| d == *digest)
}

/// fsync a directory so a rename or unlink in it survives power loss.
fn fsync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// An in-progress blob write; dropped without [`BlobWriter::finish`] it leaves nothing.
#[derive(Debug)]
pub struct BlobWriter {
    root: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    len: u64,
}

impl BlobWriter {
    fn new(root: &Path) -> Result<BlobWriter, BlobError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = root
            .join("tmp")
            .join(format!("{}-{}.part", std::process::id(), n));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        Ok(BlobWriter {
            root: root.to_path_buf(),
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the blob durable and visible under its digest. With `expected`, a content
    /// mismatch stores nothing and returns [`BlobError::DigestMismatch`].
    pub fn finish(mut self, expected: Option<&Digest>) -> Result<BlobInfo, BlobError> {
        let digest = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(BlobError::DigestMismatch {
                    expected: *expected,
                    actual: digest,
                });
            }
        }
        let Some(file) = self.file.take() else {
            return Err(io_err("finish", &self.tmp)(io::Error::other(
                "already finished",
            )));
        };
        let hex = digest.to_hex();
        let shard = self.root.join("sha256").join(&hex[..2]);
        let dest = shard.join(&hex);
        // Identical content already stored: keep the old copy. Its content is hashed in
        // full, not just its length compared: a copy damaged on disk (same size, other
        // bytes) is replaced by the fresh one, so re-uploading repairs it.
        let existed = dest.exists();
        if existed && is_intact(&dest, &digest, self.len) {
            drop(file);
            let _ = fs::remove_file(&self.tmp);
            return Ok(BlobInfo {
                digest,
                size: self.len,
                created: false,
                repaired: false,
            });
        }
        file.sync_all().map_err(io_err("fsync", &self.tmp))?;
        #[cfg(unix)]
        {
            // Blobs are immutable: make accidental in-place edits fail loudly.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o444))
                .map_err(io_err("chmod", &self.tmp))?;
        }
        drop(file);
        if !shard.is_dir() {
            fs::create_dir_all(&shard).map_err(io_err("create directory", &shard))?;
            fsync_dir(&self.root.join("sha256"))?;
        }
        fs::rename(&self.tmp, &dest).map_err(io_err("rename into", &dest))?;
        fsync_dir(&shard)?;
        if existed {
            tracing::warn!(digest = %digest, path = %dest.display(), "stored blob was damaged; replaced with the fresh copy");
        }
        Ok(BlobInfo {
            digest,
            size: self.len,
            created: true,
            repaired: existed,
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already finished"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Aborted or failed writes leave no temp file behind. After a successful
        // finish the temp path was renamed away and this is a harmless no-op.
        self.file = None;
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests;
