//! Reads the tree (the I/O half of the ingest): walks the per-node parts of it, reads
//! links, and copies each file that holds still into the blob store. A file is adopted
//! only when its identity (inode, size, mtime, ctime) was the same before and after it
//! was read and it was last changed at least the settle time ago, so a half-written
//! file is never taken; the caller scans again when [`Scan::retry`] says. A driver that
//! sees the file system's events also says which files are open for writing (modified
//! since their last close): those wait for their close, however long the writer pauses.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::blobs::{BlobStore, Digest};

use super::layout::{classify, is_uuid};
use super::plan::Seen;

/// Most entries looked at in one scan (a runaway tree must not stall the host).
pub const MAX_ENTRIES: usize = 200_000;
/// Deepest directory level walked under a node directory.
const MAX_DEPTH: usize = 8;

/// Identity of one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// Last modification, ns since the epoch.
    pub mtime_ns: i128,
    /// Last status change (also moved by writes, links and renames), ns.
    pub ctime_ns: i128,
}

impl Fingerprint {
    /// Of a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> Self {
        Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    /// Time since the last change at `now` (zero for a change in the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let last = self.mtime_ns.max(self.ctime_ns);
        Duration::from_nanos(u64::try_from(now_ns - last).unwrap_or(0))
    }
}

/// Whether content read between two looks at a file may be adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Unchanged while read and quiet for the settle time: adopt.
    Stable,
    /// Changed or too fresh: look again after this long.
    Retry(Duration),
}

/// The adoption rule (pure): `before` and `after` the read, last change `age` ago.
pub fn settle(before: &Fingerprint, after: &Fingerprint, age: Duration, quiet: Duration) -> Settle {
    if before != after {
        Settle::Retry(quiet)
    } else if age < quiet {
        Settle::Retry(quiet - age)
    } else {
        Settle::Stable
    }
}

/// What one scan saw.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every per-node path, and the targets of their links.
    pub seen: BTreeMap<String, Seen>,
    /// Scan again after this long (some file is still being written).
    pub retry: Option<Duration>,
    /// Bytes copied into the blob store.
    pub bytes_read: u64,
    /// The walk stopped at [`MAX_ENTRIES`].
    pub truncated: bool,
}

/// Scans one tree, remembering the digests of file versions it has read.
pub struct Scanner {
    root: PathBuf,
    roots: Vec<PathBuf>,
    blobs: Arc<BlobStore>,
    quiet: Duration,
    known: HashMap<String, (Fingerprint, Digest)>,
}

impl Scanner {
    /// A scanner of `root` storing into `blobs`; a file is adopted once it was quiet
    /// for `quiet`.
    pub fn new(root: &Path, blobs: Arc<BlobStore>, quiet: Duration) -> std::io::Result<Self> {
        let canonical = root.canonicalize()?;
        Ok(Scanner {
            roots: vec![root.to_path_buf(), canonical.clone()],
            root: canonical,
            blobs,
            quiet,
            known: HashMap::new(),
        })
    }

    /// The tree's root, canonical.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Walks the tree once. `writing(rel)` is true for a file still open for writing.
    pub fn scan(
        &mut self,
        now: impl Fn() -> SystemTime,
        writing: &dyn Fn(&str) -> bool,
    ) -> std::io::Result<Scan> {
        let mut scan = Scan::default();
        let mut count = 0usize;
        let mut todo: Vec<(String, usize)> = Vec::new();
        // Only the top level, node directories and pxelinux.cfg can hold per-node paths.
        for e in std::fs::read_dir(&self.root)? {
            let Ok(e) = e else { continue };
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if is_uuid(&name) || name == "pxelinux.cfg" {
                    todo.push((name, 1));
                }
            } else {
                self.look(&name, ft, &now, writing, &mut scan);
            }
        }
        while let Some((dir, depth)) = todo.pop() {
            let Ok(rd) = std::fs::read_dir(self.root.join(&dir)) else {
                continue;
            };
            for e in rd {
                count += 1;
                if count > MAX_ENTRIES {
                    scan.truncated = true;
                    break;
                }
                let Ok(e) = e else { continue };
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(ft) = e.file_type() else { continue };
                let rel = format!("{dir}/{name}");
                if ft.is_dir() {
                    if depth < MAX_DEPTH {
                        todo.push((rel, depth + 1));
                    }
                } else {
                    self.look(&rel, ft, &now, writing, &mut scan);
                }
            }
        }
        // Link targets outside the per-node parts (a config shared by several MACs).
        for _ in 0..8 {
            let targets: Vec<String> = scan
                .seen
                .values()
                .filter_map(|s| match s {
                    Seen::Link { target: Some(t) } => Some(t.clone()),
                    _ => None,
                })
                .filter(|t| !scan.seen.contains_key(t))
                .collect();
            if targets.is_empty() {
                break;
            }
            for t in targets {
                match std::fs::symlink_metadata(self.root.join(&t)) {
                    Ok(m) if m.is_file() || m.file_type().is_symlink() => {
                        self.look(&t, m.file_type(), &now, writing, &mut scan)
                    }
                    Ok(_) => {
                        scan.seen
                            .insert(t, Seen::Unreadable("symlink target is not a file".into()));
                    }
                    Err(_) => {}
                }
            }
        }
        // Forget versions of files that are gone.
        self.known.retain(|p, _| scan.seen.contains_key(p));
        Ok(scan)
    }

    fn look(
        &mut self,
        rel: &str,
        ft: std::fs::FileType,
        now: &impl Fn() -> SystemTime,
        writing: &dyn Fn(&str) -> bool,
        scan: &mut Scan,
    ) {
        if ft.is_symlink() {
            let target = std::fs::read_link(self.root.join(rel))
                .ok()
                .and_then(|t| self.inside(rel, &t));
            scan.seen.insert(rel.to_string(), Seen::Link { target });
            return;
        }
        if !ft.is_file() {
            return;
        }
        // Shared files are served from the directory as they are; not read here.
        if !classify(rel).is_node() && !self.is_link_target(rel, scan) {
            return;
        }
        let seen = self.read(rel, now, writing, scan);
        scan.seen.insert(rel.to_string(), seen);
    }

    fn is_link_target(&self, rel: &str, scan: &Scan) -> bool {
        scan.seen
            .values()
            .any(|s| matches!(s, Seen::Link { target: Some(t) } if t == rel))
    }

    /// Reads one file into the blob store if it holds still.
    fn read(
        &mut self,
        rel: &str,
        now: &impl Fn() -> SystemTime,
        writing: &dyn Fn(&str) -> bool,
        scan: &mut Scan,
    ) -> Seen {
        let full = self.root.join(rel);
        let before = match std::fs::symlink_metadata(&full) {
            Ok(m) => Fingerprint::of(&m),
            Err(e) => return Seen::Unreadable(e.to_string()),
        };
        if let Some((fp, d)) = self.known.get(rel) {
            if *fp == before {
                return Seen::File {
                    digest: *d,
                    size: before.size,
                };
            }
        }
        let retry = |d: Duration, scan: &mut Scan| {
            scan.retry = Some(scan.retry.map_or(d, |r| r.min(d)));
            Seen::Changing
        };
        if writing(rel) {
            return retry(self.quiet, scan);
        }
        if let Settle::Retry(d) = settle(&before, &before, before.age(now()), self.quiet) {
            return retry(d, scan);
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&full)
        {
            Ok(f) => f,
            Err(e) => return Seen::Unreadable(e.to_string()),
        };
        let mut w = match self.blobs.writer() {
            Ok(w) => w,
            Err(e) => return Seen::Unreadable(e.to_string()),
        };
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = std::io::Write::write_all(&mut w, &buf[..n]) {
                        return Seen::Unreadable(e.to_string());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Seen::Unreadable(e.to_string()),
            }
        }
        let after_fd = file.metadata().map(|m| Fingerprint::of(&m));
        let after_path = std::fs::symlink_metadata(&full).map(|m| Fingerprint::of(&m));
        let (Ok(after_fd), Ok(after_path)) = (after_fd, after_path) else {
            return retry(self.quiet, scan);
        };
        // Same inode throughout (not renamed over), unchanged while read, and the bytes
        // read are exactly its size.
        if after_path != after_fd || w.len() != after_fd.size {
            return retry(self.quiet, scan);
        }
        if let Settle::Retry(d) = settle(&before, &after_fd, after_fd.age(now()), self.quiet) {
            return retry(d, scan);
        }
        scan.bytes_read += w.len();
        match w.finish(None) {
            Ok(info) => {
                self.known.insert(rel.to_string(), (before, info.digest));
                Seen::File {
                    digest: info.digest,
                    size: info.size,
                }
            }
            Err(e) => Seen::Unreadable(e.to_string()),
        }
    }

    /// A link's target as a normalized path relative to the root, if it stays inside.
    fn inside(&self, link: &str, target: &Path) -> Option<String> {
        let target = target.to_str()?;
        let mut parts: Vec<&str> = Vec::new();
        let rest: &str = if target.starts_with('/') {
            let t = Path::new(target);
            let root = self.roots.iter().find(|r| t.starts_with(r))?;
            t.strip_prefix(root).ok()?.to_str()?
        } else {
            parts.extend(link.split('/'));
            parts.pop();
            target
        };
        for c in rest.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                c => parts.push(c),
            }
        }
        (!parts.is_empty()).then(|| parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(size: u64, mtime_ns: i128) -> Fingerprint {
        Fingerprint {
            dev: 1,
            ino: 2,
            size,
            mtime_ns,
            ctime_ns: mtime_ns,
        }
    }

    #[test]
    fn settle_rule() {
        let q = Duration::from_millis(300);
        let a = fp(10, 1);
        assert_eq!(settle(&a, &a, Duration::from_secs(5), q), Settle::Stable);
        assert_eq!(
            settle(&a, &fp(20, 2), Duration::from_secs(5), q),
            Settle::Retry(q)
        );
        assert_eq!(
            settle(&a, &a, Duration::from_millis(100), q),
            Settle::Retry(Duration::from_millis(200))
        );
    }

    #[test]
    fn reads_ironic_tree_links_and_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let blobs_dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(BlobStore::open(blobs_dir.path()).unwrap());
        let root = dir.path();
        let node = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
        std::fs::create_dir_all(root.join(node)).unwrap();
        std::fs::create_dir_all(root.join("pxelinux.cfg")).unwrap();
        std::fs::create_dir_all(root.join("master_images")).unwrap();
        std::fs::write(root.join("master_images/abc.converted"), b"kernel bytes").unwrap();
        std::fs::hard_link(
            root.join("master_images/abc.converted"),
            root.join(node).join("deploy_kernel"),
        )
        .unwrap();
        std::fs::write(root.join(node).join("config"), b"default deploy\n").unwrap();
        std::os::unix::fs::symlink(
            format!("../{node}/config"),
            root.join("pxelinux.cfg/01-52-54-00-ab-cd-ef"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/etc/passwd",
            root.join("pxelinux.cfg/01-52-54-00-ab-cd-00"),
        )
        .unwrap();
        std::fs::write(root.join("pxelinux.0"), b"loader").unwrap();
        // Everything was just written: with a long quiet time nothing is taken yet.
        let mut s = Scanner::new(root, blobs.clone(), Duration::from_secs(60)).unwrap();
        let scan = s.scan(SystemTime::now, &|_| false).unwrap();
        assert_eq!(scan.seen[&format!("{node}/config")], Seen::Changing);
        assert!(scan.retry.is_some_and(|r| r > Duration::from_secs(50)));
        // Later (as if a minute passed): taken, links read, shared loader left alone.
        let later = || SystemTime::now() + Duration::from_secs(120);
        let scan = s.scan(later, &|_| false).unwrap();
        assert_eq!(scan.retry, None);
        assert_eq!(
            scan.seen[&format!("{node}/deploy_kernel")],
            Seen::File {
                digest: Digest::of(b"kernel bytes"),
                size: 12
            }
        );
        assert_eq!(
            scan.seen["pxelinux.cfg/01-52-54-00-ab-cd-ef"],
            Seen::Link {
                target: Some(format!("{node}/config"))
            }
        );
        assert_eq!(
            scan.seen["pxelinux.cfg/01-52-54-00-ab-cd-00"],
            Seen::Link { target: None }
        );
        assert!(!scan.seen.contains_key("pxelinux.0"));
        assert!(!scan.seen.contains_key("master_images/abc.converted"));
        assert!(blobs.has(&Digest::of(b"kernel bytes")));
        // Unchanged files are not read again.
        assert_eq!(s.scan(later, &|_| false).unwrap().bytes_read, 0);
        // A file open for writing waits, however old its last change.
        std::fs::write(root.join(node).join("config"), b"default boot\\n").unwrap();
        let open = format!("{node}/config");
        let scan = s.scan(later, &|p| p == open).unwrap();
        assert_eq!(scan.seen[&open], Seen::Changing);
    }
}
