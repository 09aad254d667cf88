//! Files and directories only Baton's own user may read: the databases (node profiles,
//! kernel command lines, the cluster's membership), their snapshots and the blob store.
//! SQLite creates files 0644 and directories default to 0755 under the usual umask.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of Baton's private files.
pub const FILE_MODE: u32 = 0o600;
/// Mode of Baton's private directories.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with mode 0700. An existing directory is left
/// as it is (an operator may have made it, e.g. systemd's `StateDirectory=`).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// [`create_dir`], and an existing directory with group or other access is narrowed to
/// 0700: for directories that hold only Baton's own data (blobs, snapshots).
pub fn own_dir(dir: &Path) -> io::Result<()> {
    create_dir(dir)?;
    narrow(dir, DIR_MODE)
}

/// Makes sure the SQLite database `db` is readable by its owner only, before SQLite
/// opens it: a missing file is created empty with mode 0600 (SQLite then gives its
/// `-wal` and `-shm` files the same mode); an existing one, and its `-wal` and `-shm`,
/// lose group and other access (databases made by older builds were 0644).
pub fn prepare_db(db: &Path) -> io::Result<()> {
    prepare_file(db)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        match narrow(Path::new(&side), FILE_MODE) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            r => r?,
        }
    }
    Ok(())
}

/// Creates `path` empty with mode 0600 if missing, or narrows an existing file to it.
pub fn prepare_file(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => narrow(path, FILE_MODE),
        Err(e) => Err(e),
    }
}

/// Writes `data` to a new or truncated file at `path` with mode 0600.
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    prepare_file(path)?;
    fs::write(path, data)
}

/// Removes group and other permission bits from `path` if it has any.
fn narrow(path: &Path, max: u32) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & !max != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & max))?;
        tracing::info!(path = %path.display(), from = format!("{mode:o}"), to = format!("{:o}", mode & max), "narrowed permissions of a private file");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn databases_are_owner_only_new_or_old() {
        let d = tempfile::tempdir().unwrap();
        let new = d.path().join("new.db");
        prepare_db(&new).unwrap();
        let c = rusqlite::Connection::open(&new).unwrap();
        c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        assert_eq!(mode(&new), 0o600);
        assert_eq!(
            mode(&d.path().join("new.db-wal")),
            0o600,
            "SQLite copies the mode"
        );
        drop(c);

        // A database an older build left world-readable, with its WAL.
        let old = d.path().join("old.db");
        let wal = d.path().join("old.db-wal");
        for f in [&old, &wal] {
            fs::write(f, b"").unwrap();
            fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
        }
        prepare_db(&old).unwrap();
        assert_eq!((mode(&old), mode(&wal)), (0o600, 0o600));
    }

    #[test]
    fn directories_are_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!((mode(&d.path().join("a")), mode(&dir)), (0o700, 0o700));
        let shared = d.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&shared).unwrap();
        assert_eq!(
            mode(&shared),
            0o755,
            "create_dir leaves an existing dir alone"
        );
        own_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o700);
    }
}
