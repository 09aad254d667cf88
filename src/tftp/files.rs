//! Where TFTP file names lead: path rules (nothing escapes the served root) and the
//! shared in-memory copy of each file that all transfers of it read from.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::ownership::gate::NotServed;
use crate::wire::tftp::{to_netascii, ErrorCode};

/// The content of one file version, shared by every transfer of it.
#[derive(Debug)]
pub struct FileData {
    octets: Bytes,
    netascii: OnceLock<Bytes>,
}

impl FileData {
    /// Wraps file content.
    pub fn new(octets: Bytes) -> Self {
        FileData {
            octets,
            netascii: OnceLock::new(),
        }
    }

    /// The raw bytes.
    pub fn octets(&self) -> &Bytes {
        &self.octets
    }

    /// The netascii form, converted once per file version.
    pub fn netascii(&self) -> &Bytes {
        self.netascii
            .get_or_init(|| Bytes::from(to_netascii(&self.octets)))
    }
}

/// Why a file cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No such file.
    #[error("file not found")]
    NotFound,
    /// The name would leave the served namespace, or names something not servable.
    #[error("access violation: {0}")]
    Denied(&'static str),
    /// A node's file, and the serve gate says this host may not answer for that node.
    #[error("access violation: {0}")]
    NotServed(NotServed),
    /// Reading failed.
    #[error("cannot read file: {0}")]
    Io(String),
}

impl OpenError {
    /// TFTP error code for the answer.
    pub fn code(&self) -> ErrorCode {
        match self {
            OpenError::NotFound => ErrorCode::FileNotFound,
            OpenError::Denied(_) => ErrorCode::AccessViolation,
            OpenError::NotServed(r) => r.tftp_code(),
            OpenError::Io(_) => ErrorCode::NotDefined,
        }
    }

    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::NotFound => "not_found",
            OpenError::Denied(r) => r,
            OpenError::NotServed(r) => r.label(),
            OpenError::Io(_) => "io_error",
        }
    }
}

/// A boxed future, so sources can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that maps a requested name to file content: a directory today, the node
/// store later.
pub trait FileSource: Send + Sync + 'static {
    /// Opens `name` (as sent by the client) for reading.
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<FileData>, OpenError>>;
}

/// Normalises a requested name to a relative path inside the root, or refuses it.
///
/// Backslashes count as separators (Windows PXE clients send them); an absolute name is
/// accepted only when it already points inside the root (as dnsmasq does); `..` is
/// refused outright rather than resolved, so no name can climb out.
pub fn sanitize(name: &str, root: &Path) -> Result<PathBuf, OpenError> {
    if name.contains('\0') {
        return Err(OpenError::Denied("nul_byte"));
    }
    let name = name.replace('\\', "/");
    let rel: &str = if let Some(stripped) = name.strip_prefix('/') {
        let root_s = root.to_string_lossy();
        let root_s = root_s.trim_end_matches('/');
        match name.strip_prefix(root_s) {
            Some(r) if !root_s.is_empty() && r.starts_with('/') => r.trim_start_matches('/'),
            _ => {
                let _ = stripped;
                return Err(OpenError::Denied("absolute_path"));
            }
        }
    } else {
        &name
    };
    let mut out = PathBuf::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(OpenError::Denied("parent_dir")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(OpenError::Denied("absolute_path"))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(OpenError::NotFound);
    }
    Ok(out)
}

/// Identity of one version of a file: a replaced or rewritten file gets a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(m: &std::fs::Metadata) -> Self {
        Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

struct CacheEntry {
    fp: Fingerprint,
    cell: Arc<tokio::sync::OnceCell<Arc<FileData>>>,
    last_used: Instant,
}

/// Files served from a directory, each loaded once and shared while unchanged.
pub struct DirSource {
    root: PathBuf,
    canonical_root: PathBuf,
    cache: Mutex<HashMap<PathBuf, CacheEntry>>,
    cache_budget: u64,
}

impl DirSource {
    /// Serves `root`, keeping at most about `cache_budget` bytes of idle files in memory.
    pub fn new(root: &Path, cache_budget: u64) -> std::io::Result<Self> {
        let canonical_root = root.canonicalize()?;
        Ok(DirSource {
            root: root.to_path_buf(),
            canonical_root,
            cache: Mutex::new(HashMap::new()),
            cache_budget,
        })
    }

    /// The served directory, canonical.
    pub fn canonical_root(&self) -> &Path {
        &self.canonical_root
    }

    async fn open_inner(&self, name: &str) -> Result<Arc<FileData>, OpenError> {
        let rel = sanitize(name, &self.root).or_else(|e| {
            // An absolute name may also be given through the canonical root.
            if e == OpenError::Denied("absolute_path") {
                sanitize(name, &self.canonical_root)
            } else {
                Err(e)
            }
        })?;
        let root = self.canonical_root.clone();
        // Path resolution and open are blocking file-system calls.
        let (path, file, fp) = tokio::task::spawn_blocking(move || -> Result<_, OpenError> {
            let full = root.join(&rel);
            let canon = full.canonicalize().map_err(io_to_open)?;
            if !canon.starts_with(&root) {
                return Err(OpenError::Denied("symlink_escape"));
            }
            // Refuse FIFOs, devices and directories before opening: opening a FIFO
            // without a writer would block forever. O_NONBLOCK covers a swap in between.
            if !std::fs::metadata(&canon).map_err(io_to_open)?.is_file() {
                return Err(OpenError::Denied("not_a_file"));
            }
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&canon)
                .map_err(io_to_open)?;
            let meta = file.metadata().map_err(io_to_open)?;
            if !meta.is_file() {
                return Err(OpenError::Denied("not_a_file"));
            }
            Ok((canon, file, Fingerprint::of(&meta)))
        })
        .await
        .map_err(|e| OpenError::Io(e.to_string()))??;

        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let entry = cache.entry(path.clone()).or_insert_with(|| CacheEntry {
                fp,
                cell: Arc::new(tokio::sync::OnceCell::new()),
                last_used: Instant::now(),
            });
            if entry.fp != fp {
                // The file changed on disk: a new version, never stale bytes.
                entry.fp = fp;
                entry.cell = Arc::new(tokio::sync::OnceCell::new());
            }
            entry.last_used = Instant::now();
            entry.cell.clone()
        };
        // Concurrent first requests for one file wait for a single read.
        let data = cell
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let mut buf = Vec::with_capacity(fp.size as usize);
                    let mut f = file;
                    f.read_to_end(&mut buf).map_err(io_to_open)?;
                    Ok(Arc::new(FileData::new(Bytes::from(buf))))
                })
                .await
                .map_err(|e| OpenError::Io(e.to_string()))?
            })
            .await?
            .clone();
        self.evict();
        Ok(data)
    }

    /// Drops the least recently used idle files beyond the budget.
    fn evict(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut total: u64 = cache.values().map(|e| e.fp.size).sum();
        while total > self.cache_budget {
            let Some((k, size)) = cache
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, e)| (k.clone(), e.fp.size))
            else {
                break;
            };
            cache.remove(&k);
            total -= size;
        }
    }
}

fn io_to_open(e: std::io::Error) -> OpenError {
    match e.kind() {
        std::io::ErrorKind::NotFound => OpenError::NotFound,
        std::io::ErrorKind::PermissionDenied => OpenError::Denied("permission"),
        _ if e.raw_os_error() == Some(libc::ENOTDIR) => OpenError::NotFound,
        _ if e.raw_os_error() == Some(libc::ELOOP) => OpenError::Denied("symlink_loop"),
        _ => OpenError::Io(e.to_string()),
    }
}

impl FileSource for DirSource {
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<FileData>, OpenError>> {
        Box::pin(self.open_inner(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_rules() {
        let root = Path::new("/srv/tftp");
        assert_eq!(sanitize("a/b.cfg", root).unwrap(), PathBuf::from("a/b.cfg"));
        assert_eq!(sanitize("./a//b", root).unwrap(), PathBuf::from("a/b"));
        assert_eq!(sanitize("a\\b", root).unwrap(), PathBuf::from("a/b"));
        assert_eq!(sanitize("/srv/tftp/x", root).unwrap(), PathBuf::from("x"));
        assert_eq!(
            sanitize("/srv/tftpx", root),
            Err(OpenError::Denied("absolute_path"))
        );
        assert_eq!(
            sanitize("/etc/passwd", root),
            Err(OpenError::Denied("absolute_path"))
        );
        assert_eq!(
            sanitize("../etc/passwd", root),
            Err(OpenError::Denied("parent_dir"))
        );
        assert_eq!(
            sanitize("a/../../b", root),
            Err(OpenError::Denied("parent_dir"))
        );
        assert_eq!(
            sanitize("..\\x", root),
            Err(OpenError::Denied("parent_dir"))
        );
        assert_eq!(sanitize("a\0b", root), Err(OpenError::Denied("nul_byte")));
        assert_eq!(sanitize(".", root), Err(OpenError::NotFound));
    }

    #[tokio::test]
    async fn serves_shares_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"one").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("inside")).unwrap();
        let s = DirSource::new(dir.path(), 1 << 20).unwrap();
        let a = s.open("f").await.unwrap();
        let b = s.open("f").await.unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one shared copy");
        assert_eq!(&a.octets()[..], b"one");
        assert_eq!(&s.open("inside").await.unwrap().octets()[..], b"one");
        assert_eq!(
            s.open("link").await.unwrap_err(),
            OpenError::Denied("symlink_escape")
        );
        assert_eq!(
            s.open("d").await.unwrap_err(),
            OpenError::Denied("not_a_file")
        );
        assert_eq!(s.open("nope").await.unwrap_err(), OpenError::NotFound);
        assert_eq!(s.open("f/x").await.unwrap_err(), OpenError::NotFound);
        // Replace by rename: new content at once.
        std::fs::write(dir.path().join("f.new"), b"two!").unwrap();
        std::fs::rename(dir.path().join("f.new"), dir.path().join("f")).unwrap();
        assert_eq!(&s.open("f").await.unwrap().octets()[..], b"two!");
        // The old version is still intact for transfers that hold it.
        assert_eq!(&a.octets()[..], b"one");
        let abs = format!("{}/f", dir.path().display());
        assert_eq!(&s.open(&abs).await.unwrap().octets()[..], b"two!");
    }

    #[tokio::test]
    async fn eviction_keeps_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("f{i}")), vec![0u8; 1000]).unwrap();
        }
        let s = DirSource::new(dir.path(), 3000).unwrap();
        for i in 0..10 {
            s.open(&format!("f{i}")).await.unwrap();
        }
        assert!(s.cache.lock().unwrap().len() <= 3);
    }
}
