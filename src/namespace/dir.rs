//! The shared files of the TFTP root: path rules applied on the file system (nothing
//! escapes the root, no symlink out, no FIFO), and one in-memory copy per file version
//! shared by every transfer of it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::wire::path::ClientPath;

use super::{BoxFuture, FileData, FileSource, OpenError};

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

    /// The served directory as configured and canonical: an absolute client name under
    /// either is taken relative to it (see `wire::path::PathRules`).
    pub fn roots(&self) -> [&Path; 2] {
        [&self.root, &self.canonical_root]
    }

    /// The first of `path`'s candidates (as sent, then with lowercase MACs) that exists.
    /// An absolute name outside the root is served relative to the root when it names a
    /// file there, and refused as an absolute path otherwise.
    async fn open_inner(&self, path: &ClientPath) -> Result<Arc<FileData>, OpenError> {
        for rel in path.candidates() {
            match self.open_rel(rel).await {
                Err(OpenError::NotFound) => {}
                r => return r,
            }
        }
        if path.is_absolute() {
            Err(OpenError::Denied("absolute_path"))
        } else {
            Err(OpenError::NotFound)
        }
    }

    async fn open_rel(&self, rel: &str) -> Result<Arc<FileData>, OpenError> {
        let rel = PathBuf::from(rel);
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
    fn open<'a>(
        &'a self,
        path: &'a ClientPath,
        _client: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<Arc<FileData>, OpenError>> {
        Box::pin(self.open_inner(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::path::PathRules;

    fn p(name: &str) -> ClientPath {
        ClientPath::parse(name).unwrap()
    }

    /// What a TFTP client gets for `name`: the content, or the refusal's label. Names
    /// are parsed as the TFTP server does, with the root directory as its only root.
    async fn fetch(s: &DirSource, name: &str) -> Result<String, &'static str> {
        let rules = PathRules::new(s.roots());
        let p = ClientPath::from_tftp(name, &rules, "127.0.0.1".parse().unwrap())
            .map_err(|e| e.as_str())?;
        let d = s.open(&p, None).await.map_err(|e| e.reason())?;
        Ok(String::from_utf8_lossy(d.octets()).into_owned())
    }

    #[tokio::test]
    async fn name_rules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("srv");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/b.cfg"), b"b.cfg").unwrap();
        std::fs::write(root.join("a/b"), b"b").unwrap();
        std::fs::write(root.join("x"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("srvx")).unwrap();
        std::fs::write(dir.path().join("srvx/x"), b"sibling").unwrap();
        let s = DirSource::new(&root, 1 << 20).unwrap();
        let r = root.display();
        for (name, want) in [
            ("a/b.cfg".to_string(), Ok("b.cfg")),
            ("./a//b".into(), Ok("b")),
            ("a\\b".into(), Ok("b")),
            (format!("{r}/x"), Ok("x")),
            // tftpd-hpa: an absolute name is relative to the root...
            ("/x".into(), Ok("x")),
            ("\\a\\b".into(), Ok("b")),
            // ...and refused as outside the root when it names nothing there.
            (format!("{r}x/x"), Err("absolute_path")),
            ("/etc/passwd".into(), Err("absolute_path")),
            ("../etc/passwd".into(), Err("parent_dir")),
            ("a/../../b".into(), Err("parent_dir")),
            ("..\\x".into(), Err("parent_dir")),
            (format!("{r}/../srvx/x"), Err("parent_dir")),
            ("a\0b".into(), Err("nul_byte")),
            (".".into(), Err("empty_filename")),
            ("nope".into(), Err("not_found")),
        ] {
            let got = fetch(&s, &name).await;
            assert_eq!(got.as_deref().map_err(|e| *e), want, "{name:?}");
        }
    }

    #[tokio::test]
    async fn mac_names_match_in_either_case() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pxelinux.cfg")).unwrap();
        std::fs::write(
            dir.path().join("pxelinux.cfg/01-52-54-00-ab-cd-ef"),
            b"lower",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pxelinux.cfg/01-52-54-00-AB-CD-00"),
            b"upper",
        )
        .unwrap();
        let s = DirSource::new(dir.path(), 1 << 20).unwrap();
        for (name, want) in [
            ("pxelinux.cfg/01-52-54-00-ab-cd-ef", Ok("lower")),
            ("pxelinux.cfg/01-52-54-00-AB-CD-EF", Ok("lower")),
            ("pxelinux.cfg/01-52-54-00-Ab-cD-eF", Ok("lower")),
            // A file written in uppercase is still found by its exact name.
            ("pxelinux.cfg/01-52-54-00-AB-CD-00", Ok("upper")),
            ("pxelinux.cfg/01-52-54-00-ab-cd-00", Err("not_found")),
        ] {
            assert_eq!(
                fetch(&s, name).await.as_deref().map_err(|e| *e),
                want,
                "{name}"
            );
        }
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
        let a = s.open(&p("f"), None).await.unwrap();
        let b = s.open(&p("f"), None).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one shared copy");
        assert_eq!(&a.octets()[..], b"one");
        assert_eq!(
            &s.open(&p("inside"), None).await.unwrap().octets()[..],
            b"one"
        );
        assert_eq!(
            s.open(&p("link"), None).await.unwrap_err(),
            OpenError::Denied("symlink_escape")
        );
        assert_eq!(
            s.open(&p("d"), None).await.unwrap_err(),
            OpenError::Denied("not_a_file")
        );
        assert_eq!(
            s.open(&p("nope"), None).await.unwrap_err(),
            OpenError::NotFound
        );
        assert_eq!(
            s.open(&p("f/x"), None).await.unwrap_err(),
            OpenError::NotFound
        );
        // Replace by rename: new content at once.
        std::fs::write(dir.path().join("f.new"), b"two!").unwrap();
        std::fs::rename(dir.path().join("f.new"), dir.path().join("f")).unwrap();
        assert_eq!(&s.open(&p("f"), None).await.unwrap().octets()[..], b"two!");
        // The old version is still intact for transfers that hold it.
        assert_eq!(&a.octets()[..], b"one");
        let abs = format!("{}/f", dir.path().display());
        assert_eq!(fetch(&s, &abs).await.as_deref(), Ok("two!"));
    }

    #[tokio::test]
    async fn eviction_keeps_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("f{i}")), vec![0u8; 1000]).unwrap();
        }
        let s = DirSource::new(dir.path(), 3000).unwrap();
        for i in 0..10 {
            s.open(&p(&format!("f{i}")), None).await.unwrap();
        }
        assert!(s.cache.lock().unwrap().len() <= 3);
    }
}
