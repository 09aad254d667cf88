//! Files on this host: the boot loaders named in `[dhcp.boot_files]` in the TFTP root,
//! and a writable data directory with room to spare.

use std::path::{Path, PathBuf};

use super::{Finding, Status};
use crate::config::Config;

/// Where the packaged installer of boot loaders lives.
pub const PACKAGED_INSTALLER: &str = "/usr/share/baton/install-bootloaders.sh";

/// What was found at a loader's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// A readable regular file of this size.
    Ok(u64),
    /// Nothing there.
    Missing,
    /// Zero bytes.
    Empty,
    /// A directory or device.
    NotAFile,
    /// The name leaves the TFTP root (or a symlink points out of it).
    OutsideRoot,
    /// Cannot be read.
    Unreadable(String),
}

/// One configured boot loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loader {
    /// `bios`, `efi_x64`...
    pub arch: &'static str,
    /// Path in the TFTP root, as configured.
    pub path: String,
    /// Whether `baton serve` insists on it (bios and efi_x64 cannot be unset).
    pub required: bool,
    /// What is there.
    pub state: FileState,
}

/// The configured loaders: (arch, path, required).
pub fn loaders(cfg: &Config) -> Vec<(&'static str, String, bool)> {
    let b = &cfg.dhcp.boot_files;
    let mut out = vec![
        ("bios", b.bios.clone(), true),
        ("efi_x64", b.efi_x64.clone(), true),
    ];
    for (arch, v) in [
        ("efi_ia32", &b.efi_ia32),
        ("efi_arm64", &b.efi_arm64),
        ("efi_arm32", &b.efi_arm32),
        ("efi_riscv64", &b.efi_riscv64),
    ] {
        if let Some(p) = v.as_ref().filter(|p| !p.is_empty()) {
            out.push((arch, p.clone(), false));
        }
    }
    out
}

/// One finding per loader.
pub fn check_loaders(cfg: &Config, root: &Path, found: &[Loader], installer: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    if !cfg.dhcp.enabled {
        out.push(Finding::pass(
            "boot loaders".to_string(),
            "proxy-DHCP is off: no loader is offered".to_string(),
        ));
        return out;
    }
    for l in found {
        let name = format!("boot loader {}", l.arch);
        let at = root.join(&l.path);
        let problem = match &l.state {
            FileState::Ok(size) => {
                out.push(Finding::pass(
                    name,
                    format!("{} ({size} bytes)", at.display()),
                ));
                continue;
            }
            FileState::Missing => "missing",
            FileState::Empty => "empty",
            FileState::NotAFile => "not a regular file",
            FileState::OutsideRoot => "outside the TFTP root",
            FileState::Unreadable(e) => e.as_str(),
        };
        let fix = match l.state {
            FileState::OutsideRoot => format!(
                "dhcp.boot_files.{} must name a file inside {}",
                l.arch,
                root.display()
            ),
            _ if l.required || matches!(l.path.as_str(), "pxelinux.0" | "grubx64.efi" | "snponly.efi") => format!(
                "install the loaders: {installer} {} (or copy {} there)",
                root.display(),
                l.path
            ),
            _ => format!(
                "copy a boot loader for {} clients to {}, or point dhcp.boot_files.{} at one you have",
                l.arch,
                at.display(),
                l.arch
            ),
        };
        out.push(Finding {
            name,
            // An optional architecture only fails the clients of that architecture.
            status: if l.required {
                Status::Fail
            } else {
                Status::Warn
            },
            detail: format!(
                "{}: {problem}; {} clients get no boot loader",
                at.display(),
                l.arch
            ),
            fix: Some(fix),
        });
    }
    out
}

/// Looks at each configured loader under `root`.
pub fn gather_loaders(cfg: &Config, root: &Path) -> Vec<Loader> {
    let canon_root = std::fs::canonicalize(root).ok();
    loaders(cfg)
        .into_iter()
        .map(|(arch, path, required)| {
            let state = match crate::wire::path::ClientPath::parse(&path) {
                Err(_) => FileState::OutsideRoot,
                Ok(rel) => file_state(&root.join(rel.as_str()), canon_root.as_deref()),
            };
            Loader {
                arch,
                path,
                required,
                state,
            }
        })
        .collect()
}

fn file_state(p: &Path, canon_root: Option<&Path>) -> FileState {
    let m = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FileState::Missing,
        Err(e) => return FileState::Unreadable(e.to_string()),
    };
    if let (Some(r), Ok(c)) = (canon_root, std::fs::canonicalize(p)) {
        if !c.starts_with(r) {
            return FileState::OutsideRoot;
        }
    }
    if !m.is_file() {
        return FileState::NotAFile;
    }
    if m.len() == 0 {
        return FileState::Empty;
    }
    match std::fs::File::open(p) {
        Ok(_) => FileState::Ok(m.len()),
        Err(e) => FileState::Unreadable(e.to_string()),
    }
}

/// The data directory as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    /// Configured path.
    pub path: PathBuf,
    /// Whether it exists (`baton serve` creates it otherwise).
    pub exists: bool,
    /// Writing a file there (or creating it under its nearest existing parent) worked;
    /// else why not.
    pub writable: Result<(), String>,
    /// Free space of its file system.
    pub space: Option<Space>,
}

/// statvfs figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to unprivileged users.
    pub avail: u64,
    /// File system size in bytes.
    pub total: u64,
    /// Inodes available.
    pub files_avail: u64,
    /// Inodes in all.
    pub files_total: u64,
}

fn mib(b: u64) -> String {
    if b >= 10 << 30 {
        format!("{} GiB", b >> 30)
    } else {
        format!("{} MiB", b >> 20)
    }
}

/// Writable, and enough room: at least `min_free` bytes and 5% of the file system.
pub fn check_data_dir(d: &DataDir, min_free: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    let shown = d.path.display();
    out.push(match &d.writable {
        Ok(()) if d.exists => Finding::pass("data dir".into(), format!("{shown} is writable")),
        Ok(()) => Finding::pass(
            "data dir".into(),
            format!("{shown} does not exist yet; `baton serve` can create it"),
        ),
        Err(e) => Finding {
            name: "data dir".into(),
            status: Status::Fail,
            detail: format!("{shown} is not writable: {e}"),
            fix: Some(format!(
                "make it writable by the user Baton runs as (chown baton:baton {shown}; the packaged unit's StateDirectory=baton does this for /var/lib/baton), or choose another with --data-dir / data_dir"
            )),
        },
    });
    let Some(s) = d.space else {
        out.push(Finding {
            name: "disk space".into(),
            status: Status::Warn,
            detail: format!("could not check the file system of {shown}"),
            fix: None,
        });
        return out;
    };
    let pct = |a: u64, t: u64| a.saturating_mul(100).checked_div(t).unwrap_or(100);
    let detail = format!(
        "{} free of {} ({}%), {}% of inodes free",
        mib(s.avail),
        mib(s.total),
        pct(s.avail, s.total),
        pct(s.files_avail, s.files_total)
    );
    let fix = Some(format!(
        "free space on the file system of {shown} (`baton artifact rm` unused artifacts), or move data_dir"
    ));
    out.push(if s.avail < min_free {
        Finding {
            name: "disk space".into(),
            status: Status::Fail,
            detail: format!("{detail}; below the {} minimum", mib(min_free)),
            fix,
        }
    } else if pct(s.avail, s.total) < 5
        || (s.files_total > 0 && pct(s.files_avail, s.files_total) < 5)
    {
        Finding {
            name: "disk space".into(),
            status: Status::Warn,
            detail: format!("{detail}: less than 5% left"),
            fix,
        }
    } else {
        Finding::pass("disk space".into(), detail)
    });
    out
}

/// Probes the data directory: writes and removes a file (in the nearest existing
/// ancestor when the directory does not exist yet), and reads statvfs.
pub fn gather_data_dir(path: &Path) -> DataDir {
    let exists = path.is_dir();
    let mut probe_dir = path.to_path_buf();
    while !probe_dir.is_dir() {
        match probe_dir.parent() {
            Some(p) => probe_dir = p.to_path_buf(),
            None => break,
        }
    }
    let writable = if path.exists() && !exists {
        Err("it is not a directory".to_string())
    } else {
        let f = probe_dir.join(format!(".baton-doctor-{}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&f)
            .and_then(|mut h| std::io::Write::write_all(&mut h, b"x"))
        {
            Ok(()) => {
                let _ = std::fs::remove_file(&f);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&f);
                if exists {
                    Err(e.to_string())
                } else {
                    Err(format!("cannot create it in {}: {e}", probe_dir.display()))
                }
            }
        }
    };
    DataDir {
        path: path.to_path_buf(),
        exists,
        writable,
        space: statvfs(&probe_dir),
    }
}

fn statvfs(p: &Path) -> Option<Space> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some(Space {
        avail: s.f_bavail as u64 * frsize,
        total: s.f_blocks as u64 * frsize,
        files_avail: s.f_favail as u64,
        files_total: s.f_files as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_states() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"x").unwrap();
        std::fs::write(dir.path().join("ipxe.efi"), b"").unwrap();
        let mut cfg = Config::default();
        cfg.dhcp.boot_files.efi_riscv64 = Some("../etc/passwd".into());
        let found = gather_loaders(&cfg, dir.path());
        let st: Vec<&FileState> = found.iter().map(|l| &l.state).collect();
        assert_eq!(
            st,
            [
                &FileState::Ok(1),
                &FileState::Empty,
                &FileState::Missing,
                &FileState::OutsideRoot
            ]
        );
        let f = check_loaders(&cfg, dir.path(), &found, "I");
        let s: Vec<Status> = f.iter().map(|f| f.status).collect();
        assert_eq!(s, [Status::Pass, Status::Fail, Status::Warn, Status::Warn]);
        assert!(f[1]
            .fix
            .as_deref()
            .unwrap()
            .starts_with("install the loaders: I "));
    }

    #[test]
    fn space_thresholds() {
        let d = DataDir {
            path: "/x".into(),
            exists: true,
            writable: Ok(()),
            space: Some(Space {
                avail: 500 << 20,
                total: 100 << 30,
                files_avail: 10,
                files_total: 10,
            }),
        };
        assert_eq!(check_data_dir(&d, 1 << 30)[1].status, Status::Fail);
        assert_eq!(check_data_dir(&d, 100 << 20)[1].status, Status::Warn);
        let dir = tempfile::tempdir().unwrap();
        let g = gather_data_dir(&dir.path().join("a/b"));
        assert!(!g.exists && g.writable.is_ok() && g.space.is_some());
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(gather_data_dir(&file).writable.is_err());
    }
}
