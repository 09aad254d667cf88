//! This host's boot records: a SQLite file of its own (`<data-dir>/boots.db`), apart
//! from the replicated store. Boot records are high-volume and only this host's view;
//! they never enter the Raft log. Peers read them over `/cluster/boots`.
//!
//! Written in batches (one transaction per batch), WAL with `synchronous=NORMAL`: a
//! crash of the process loses nothing committed, a power failure may lose the last
//! batch, which for a history of boots is the right trade. Bounded: records older than
//! the retention, and the oldest beyond the row cap, are pruned.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::health::{Stuck, StuckKind};
use super::record::{BootRecord, Firmware, Proto, Stage, Status};
use crate::clock::Millis;

/// Why the boot record file failed.
#[derive(Debug, thiserror::Error)]
pub enum BootStoreError {
    /// SQLite failed.
    #[error("boot records database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was written by a newer Baton.
    #[error("boot records database has schema version {found}, newer than this build's {supported}; upgrade Baton or move the file away")]
    TooNew {
        /// In the file.
        found: u32,
        /// This build.
        supported: u32,
    },
}

type R<T> = Result<T, BootStoreError>;

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE records (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    host        TEXT NOT NULL,
    node        TEXT NOT NULL,
    stage       TEXT NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT,
    proto       TEXT NOT NULL,
    path        TEXT,
    firmware    TEXT,
    detail      TEXT,
    client      TEXT,
    bytes       INTEGER,
    duration_ms INTEGER,
    ends_boot   INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX records_node ON records(node, id);
CREATE INDEX records_at ON records(at);
-- The newest record of each node, for status pages.
CREATE TABLE latest (
    node TEXT PRIMARY KEY,
    id   INTEGER NOT NULL
) STRICT;
-- Nodes this host flagged stuck (raised an event for), so a restart neither repeats
-- nor forgets a transition.
CREATE TABLE stuck (
    node    TEXT PRIMARY KEY,
    kind    TEXT NOT NULL,
    since   INTEGER NOT NULL,
    reason  TEXT NOT NULL
) STRICT;
"#];

/// The local boot record file.
pub struct LocalBoots {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for LocalBoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBoots")
            .field("path", &self.path)
            .finish()
    }
}

const COLUMNS: &str = "at, host, node, stage, status, reason, proto, path, firmware, detail, \
                       client, bytes, duration_ms, ends_boot";

fn row(r: &Row<'_>) -> rusqlite::Result<Option<BootRecord>> {
    let stage: String = r.get(3)?;
    let status: String = r.get(4)?;
    let proto: String = r.get(6)?;
    let firmware: Option<String> = r.get(8)?;
    // A label this build does not know (a newer Baton wrote it): skip the row.
    let (Some(stage), Some(status), Some(proto)) = (
        Stage::parse(&stage),
        Status::parse(&status),
        Proto::parse(&proto),
    ) else {
        return Ok(None);
    };
    let bytes: Option<i64> = r.get(11)?;
    let duration: Option<i64> = r.get(12)?;
    Ok(Some(BootRecord {
        at: r.get(0)?,
        host: r.get(1)?,
        node: r.get(2)?,
        stage,
        status,
        reason: r.get(5)?,
        proto,
        path: r.get(7)?,
        firmware: firmware.as_deref().and_then(Firmware::parse),
        detail: r.get(9)?,
        client: r.get(10)?,
        bytes: bytes.map(|b| b.max(0) as u64),
        duration_ms: duration.map(|d| d.max(0) as u64),
        ends_boot: r.get::<_, i64>(13)? != 0,
    }))
}

fn collect(rows: impl Iterator<Item = rusqlite::Result<Option<BootRecord>>>) -> R<Vec<BootRecord>> {
    let mut out = Vec::new();
    for r in rows {
        if let Some(r) = r? {
            out.push(r);
        }
    }
    Ok(out)
}

impl LocalBoots {
    /// Opens (creating) the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> R<LocalBoots> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let supported = MIGRATIONS.len() as u32;
        if found > supported {
            return Err(BootStoreError::TooNew { found, supported });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as u32 + 1)?;
            tx.commit()?;
        }
        Ok(LocalBoots {
            path,
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` in one transaction.
    pub fn insert(&self, records: &[BootRecord]) -> R<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(&format!(
                "INSERT INTO records ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ))?;
            let mut latest = tx.prepare_cached(
                "INSERT INTO latest (node, id) VALUES (?1, ?2) \
                 ON CONFLICT(node) DO UPDATE SET id = excluded.id",
            )?;
            for r in records {
                ins.execute(params![
                    r.at,
                    r.host,
                    r.node,
                    r.stage.as_str(),
                    r.status.as_str(),
                    r.reason,
                    r.proto.as_str(),
                    r.path,
                    r.firmware.map(|f| f.as_str()),
                    r.detail,
                    r.client,
                    r.bytes.map(|b| b.min(i64::MAX as u64) as i64),
                    r.duration_ms.map(|d| d.min(i64::MAX as u64) as i64),
                    r.ends_boot as i64,
                ])?;
                latest.execute(params![r.node, tx.last_insert_rowid()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The newest `limit` records of `node`, oldest first.
    pub fn node_records(&self, node: &str, limit: usize) -> R<Vec<BootRecord>> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM records WHERE node = ?1 ORDER BY id DESC LIMIT ?2"
        ))?;
        let mut v = collect(st.query_map(params![node, limit as i64], row)?)?;
        v.reverse();
        Ok(v)
    }

    /// Records from `at` on (all nodes), oldest first, at most `limit`.
    pub fn since(&self, at: Millis, limit: usize) -> R<Vec<BootRecord>> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM records WHERE at >= ?1 ORDER BY id LIMIT ?2"
        ))?;
        let v = collect(st.query_map(params![at, limit as i64], row)?)?;
        Ok(v)
    }

    /// The newest record of every node.
    pub fn latest(&self) -> R<Vec<BootRecord>> {
        let conn = self.lock();
        let cols: String = COLUMNS
            .split(',')
            .map(|c| format!("r.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut st = conn.prepare_cached(&format!(
            "SELECT {cols} FROM latest l JOIN records r ON r.id = l.id ORDER BY l.node"
        ))?;
        let v = collect(st.query_map([], row)?)?;
        Ok(v)
    }

    /// Number of records kept.
    pub fn count(&self) -> R<u64> {
        let n: i64 = self
            .lock()
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Drops records older than `before` and the oldest beyond `max_rows`; returns how
    /// many went.
    pub fn prune(&self, before: Millis, max_rows: u64) -> R<u64> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut gone = tx.execute("DELETE FROM records WHERE at < ?1", [before])? as u64;
        let n: i64 = tx.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?;
        let excess = (n.max(0) as u64).saturating_sub(max_rows);
        if excess > 0 {
            let cut: Option<i64> = tx
                .query_row(
                    "SELECT id FROM records ORDER BY id LIMIT 1 OFFSET ?1",
                    [excess as i64 - 1],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(cut) = cut {
                gone += tx.execute("DELETE FROM records WHERE id <= ?1", [cut])? as u64;
            }
        }
        if gone > 0 {
            tx.execute(
                "DELETE FROM latest WHERE id NOT IN (SELECT id FROM records)",
                [],
            )?;
        }
        tx.commit()?;
        Ok(gone)
    }

    /// Nodes flagged stuck by this host.
    pub fn flags(&self) -> R<Vec<(String, Stuck)>> {
        let conn = self.lock();
        let mut st = conn.prepare("SELECT node, kind, since, reason FROM stuck ORDER BY node")?;
        let rows = st.query_map([], |r| {
            let kind: String = r.get(1)?;
            Ok((
                r.get::<_, String>(0)?,
                Stuck {
                    kind: if kind == StuckKind::DhcpLoop.as_str() {
                        StuckKind::DhcpLoop
                    } else {
                        StuckKind::Stalled
                    },
                    since: r.get(2)?,
                    reason: r.get(3)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records (`Some`) or clears (`None`) the stuck flag of each node, in one
    /// transaction.
    pub fn set_flags(&self, changes: &[(String, Option<Stuck>)]) -> R<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (node, s) in changes {
            match s {
                Some(s) => tx.execute(
                    "INSERT INTO stuck (node, kind, since, reason) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT(node) DO UPDATE SET kind = excluded.kind, \
                     since = excluded.since, reason = excluded.reason",
                    params![node, s.kind.as_str(), s.since, s.reason],
                )?,
                None => tx.execute("DELETE FROM stuck WHERE node = ?1", [node])?,
            };
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boots::timeline::tests::rec;

    #[test]
    fn records_round_trip_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let db = LocalBoots::open(dir.path().join("boots.db")).unwrap();
        let mut a = rec(1, "h1", Stage::Dhcp, Status::Ok);
        a.path = Some("undionly.kpxe".into());
        a.firmware = Some(Firmware::Pxe);
        a.client = Some("10.0.0.5".into());
        let mut b = rec(2, "h1", Stage::Config, Status::Ok);
        b.ends_boot = true;
        b.duration_ms = Some(12);
        let mut c = rec(3, "h1", Stage::Kernel, Status::NotFound);
        c.node = "n2".into();
        c.reason = Some("not_found".into());
        db.insert(&[a.clone(), b.clone(), c.clone()]).unwrap();
        assert_eq!(
            db.node_records("n1", 10).unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(db.node_records("n1", 1).unwrap(), vec![b.clone()]);
        assert_eq!(db.latest().unwrap(), vec![b.clone(), c.clone()]);
        assert_eq!(db.since(2000, 10).unwrap(), vec![b.clone(), c.clone()]);
        drop(db);
        // Reopened: same content, no second migration.
        let db = LocalBoots::open(dir.path().join("boots.db")).unwrap();
        assert_eq!(db.count().unwrap(), 3);
        assert_eq!(db.prune(2000, 100).unwrap(), 1);
        assert_eq!(db.latest().unwrap(), vec![b.clone(), c.clone()]);
        assert_eq!(db.prune(0, 1).unwrap(), 1);
        assert_eq!(db.node_records("n1", 10).unwrap(), vec![]);
        assert_eq!(db.latest().unwrap(), vec![c]);
    }

    #[test]
    fn flags_persist() {
        let dir = tempfile::tempdir().unwrap();
        let db = LocalBoots::open(dir.path().join("boots.db")).unwrap();
        let s = Stuck {
            kind: StuckKind::DhcpLoop,
            since: 5,
            reason: "loop".into(),
        };
        db.set_flags(&[("n1".into(), Some(s.clone())), ("n2".into(), None)])
            .unwrap();
        assert_eq!(db.flags().unwrap(), vec![("n1".to_string(), s)]);
        db.set_flags(&[("n1".into(), None)]).unwrap();
        assert!(db.flags().unwrap().is_empty());
    }
}
