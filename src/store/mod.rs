//! Replicated state: the SQLite database every host keeps, changed only by applying
//! [`Command`]s.
//!
//! [`apply::apply`] is the state machine the Raft log will drive; [`Store`] wraps a
//! database file with a writer connection (applies commands) and a few reader
//! connections (serve lookups; in WAL mode readers never wait for the writer, nor for
//! each other).
//!
//! Durability: the database runs in WAL mode with `synchronous=FULL`. With `NORMAL`,
//! WAL commits survive a killed process but the last transactions can be lost on power
//! failure or kernel crash, because the WAL is only fsynced at checkpoints. A command
//! acknowledged to an operator (or, later, to a Raft peer as applied) must survive
//! both, so every commit fsyncs the WAL: one fsync per write, which is cheap next to
//! the rate of ownership and boot-profile changes.

pub mod apply;
pub mod command;
pub mod feed;
pub mod raft;
pub mod read;
pub mod schema;
pub mod types;

#[cfg(test)]
mod list_tests;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};

use crate::blobs::Digest;
use crate::wire::path::ClientPath;

pub use command::{
    Applied, BootNotice, Command, FileSpec, ImportItem, ImportProfile, ImportResult, Outcome,
    Rejection, INLINE_MAX,
};
pub use read::{Artifact, Event, Fence, Host, Node, NodeFile, NodeFilter, Reservation};
pub use types::{
    normalize_path, BootProfile, HandoffState, KernelBoot, MacAddr, Millis, NodeId, ProvisionState,
    RequestId, TransferReason,
};

/// Failures of the store itself (never business outcomes; those are [`Rejection`]s).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O, disk full, locked past the busy timeout, …).
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A migration failed to apply.
    #[error("schema migration to version {version} failed: {source}")]
    Migration {
        /// Target version.
        version: u32,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a newer Baton.
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade Baton")]
    SchemaTooNew {
        /// Version in the file.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// Data in the file violates an invariant (edited by hand or damaged).
    #[error("database content is corrupt: {0}")]
    Corrupt(String),
    /// Serializing a value failed.
    #[error("serialization: {0}")]
    Serde(String),
    /// Creating a database file or setting its permissions failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Wraps an I/O error on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Handle on one database file. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Read-only connections: WAL lets them read side by side, so a long scan (the
    /// reconciler's, a full list) does not queue a short read (a gate check, a page)
    /// behind it.
    readers: Vec<Mutex<Connection>>,
    /// Where the next blocking read waits when every reader is busy.
    next_reader: AtomicUsize,
}

/// Read connections per store.
const READERS: usize = 4;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A poisoned lock only means another thread panicked while holding it; the connection
/// itself is still consistent (an unfinished transaction is rolled back on drop).
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "cannot switch the database to WAL mode (got {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it to the current
    /// schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        // Node profiles hold kernel command lines: readable by Baton's user only.
        crate::private_fs::prepare_db(&path).map_err(StoreError::io(&path))?;
        let mut writer = Connection::open(&path)?;
        configure(&writer)?;
        schema::migrate(&mut writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(&path)?;
            configure(&reader)?;
            // A reader must never write: catches a misrouted statement in tests.
            reader.pragma_update(None, "query_only", "ON")?;
            readers.push(Mutex::new(reader));
        }
        Ok(Store {
            path,
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// A free read connection, or (all busy) the next one in turn, waited for.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        for r in &self.readers {
            match r.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        lock(&self.readers[i])
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies one command in its own transaction and commits it if it applied. When
    /// this returns, an applied command is durable (fsynced).
    pub fn apply(&self, cmd: &Command) -> Result<Outcome, StoreError> {
        let mut conn = lock(&self.writer);
        // IMMEDIATE: take the write lock up front so the command never fails half-way
        // on a lock upgrade.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let outcome = apply::apply(&tx, cmd)?;
        // A tagged write records its outcome, a refusal included.
        if outcome.is_applied() || matches!(cmd, Command::Idempotent { .. }) {
            tx.commit()?;
        } else {
            tx.rollback()?;
        }
        Ok(outcome)
    }

    /// Schema version of the open file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .reader()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// One host.
    pub fn host(&self, name: &str) -> Result<Option<Host>, StoreError> {
        read::host(&self.reader(), name)
    }

    /// All hosts, by name.
    pub fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        read::hosts(&self.reader())
    }

    /// One node.
    pub fn node(&self, id: &str) -> Result<Option<Node>, StoreError> {
        read::node(&self.reader(), id)
    }

    /// All nodes, by id.
    pub fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        read::nodes(&self.reader())
    }

    /// Up to `limit` nodes matching `filter` with ids after `after`, by id (a keyset
    /// page: repeat with the last id until a page comes back short).
    pub fn nodes_page(
        &self,
        filter: &NodeFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Node>, StoreError> {
        read::nodes_page(&self.reader(), filter, after, limit)
    }

    /// Number of nodes matching `filter`.
    pub fn count_nodes(&self, filter: &NodeFilter) -> Result<u64, StoreError> {
        read::count_nodes(&self.reader(), filter)
    }

    /// Number of nodes each host owns (hosts owning none are absent).
    pub fn owned_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        read::owned_counts(&self.reader())
    }

    /// The node that has `mac` (what proxy-DHCP asks).
    pub fn node_by_mac(&self, mac: &MacAddr) -> Result<Option<Node>, StoreError> {
        let conn = self.reader();
        match read::node_id_by_mac(&conn, mac)? {
            Some(id) => read::node(&conn, &id),
            None => Ok(None),
        }
    }

    /// Which node serves `path`, and what: [`Store::node_file_for`] of the path as
    /// [`ClientPath::parse`] reads it (leading `/` dropped); a path that could escape
    /// the namespace resolves to nothing.
    pub fn resolve_node_file(&self, path: &str) -> Result<Option<NodeFile>, StoreError> {
        match ClientPath::parse(path) {
            Ok(p) => self.node_file_for(&p),
            Err(_) => Ok(None),
        }
    }

    /// Which node serves a client's path, and what (what TFTP and HTTP ask): the first
    /// of its candidates with a row (as sent, then with lowercase MACs). The caller still
    /// checks that this host may serve the node.
    pub fn node_file_for(&self, path: &ClientPath) -> Result<Option<NodeFile>, StoreError> {
        let conn = self.reader();
        for p in path.candidates() {
            if let Some(f) = read::node_file(&conn, p)? {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// Nodes whose files another tool writes, with that source (see
    /// [`Command::SetNodeFiles`]), by node.
    pub fn node_sources(&self) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT node, source FROM node_sources ORDER BY node")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A node's whole served namespace, by path.
    pub fn node_files(&self, node: &str) -> Result<Vec<NodeFile>, StoreError> {
        read::node_files(&self.reader(), node)
    }

    /// One artifact.
    pub fn artifact(&self, digest: &Digest) -> Result<Option<Artifact>, StoreError> {
        read::artifact(&self.reader(), digest)
    }

    /// All artifacts, by digest.
    pub fn artifacts(&self) -> Result<Vec<Artifact>, StoreError> {
        read::artifacts(&self.reader())
    }

    /// Up to `limit` artifacts with digests after `after`, by digest; only those named
    /// `name` and held by `host` when given.
    pub fn artifacts_page(
        &self,
        name: Option<&str>,
        host: Option<&str>,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<Artifact>, StoreError> {
        read::artifacts_page(&self.reader(), name, host, after, limit)
    }

    /// Number of artifacts.
    pub fn count_artifacts(&self) -> Result<u64, StoreError> {
        read::count_artifacts(&self.reader())
    }

    /// Nodes whose files reference an artifact.
    pub fn nodes_using(&self, digest: &Digest) -> Result<Vec<String>, StoreError> {
        read::nodes_using(&self.reader(), digest)
    }

    /// A node's recorded reservation (check [`Reservation::is_live`]).
    pub fn reservation(&self, node: &str) -> Result<Option<Reservation>, StoreError> {
        read::reservation(&self.reader(), node)
    }

    /// All recorded reservations, by node.
    pub fn reservations(&self) -> Result<Vec<Reservation>, StoreError> {
        read::reservations(&self.reader())
    }

    /// Up to `limit` events with `seq > after`, oldest first (`after = 0` from the start).
    pub fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        read::events_since(&self.reader(), after, limit)
    }

    /// Applies the commands of a batch of replicated-log entries (`None` for entries that
    /// carry no command) and records `applied` (log id, membership; opaque JSON) in the
    /// same transaction: one fsync per batch, and a crash never splits the two.
    pub fn apply_replicated(
        &self,
        cmds: &[Option<&Command>],
        applied: (&str, &str),
    ) -> Result<Vec<Option<Outcome>>, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(cmds.len());
        for c in cmds {
            // `apply` rolls a rejected command back to its own savepoint.
            out.push(match c {
                Some(cmd) => Some(apply::apply(&tx, cmd)?),
                None => None,
            });
        }
        tx.execute(
            "INSERT INTO raft_applied (id, log_id, membership) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET log_id = excluded.log_id, membership = excluded.membership",
            rusqlite::params![applied.0, applied.1],
        )?;
        tx.commit()?;
        Ok(out)
    }

    /// The replicated log position recorded by [`Store::apply_replicated`], as (log id,
    /// membership) JSON.
    pub fn replicated_state(&self) -> Result<Option<(String, String)>, StoreError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .reader()
            .query_row(
                "SELECT log_id, membership FROM raft_applied WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// [`Store::replicated_state`] of a database file that is not open (a snapshot copy).
    pub fn replicated_state_of(path: &Path) -> Result<Option<(String, String)>, StoreError> {
        use rusqlite::OptionalExtension;
        let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let has: bool = c.query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'raft_applied'",
            [],
            |r| r.get(0),
        )?;
        if !has {
            return Ok(None);
        }
        Ok(c.query_row(
            "SELECT log_id, membership FROM raft_applied WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
    }

    /// Writes a consistent copy of the whole database to `path` (SQLite's backup API).
    pub fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        let conn = self.reader();
        crate::private_fs::prepare_db(path).map_err(StoreError::io(path))?;
        let mut dst = Connection::open(path)?;
        let b = rusqlite::backup::Backup::new(&conn, &mut dst)?;
        b.run_to_completion(256, Duration::from_millis(0), None)?;
        Ok(())
    }

    /// Replaces the whole database with the copy at `path` (a received snapshot), in
    /// place, so open handles see the new content.
    pub fn restore_from(&self, path: &Path) -> Result<(), StoreError> {
        let src = Connection::open(path)?;
        let mut conn = lock(&self.writer);
        {
            let b = rusqlite::backup::Backup::new(&src, &mut conn)?;
            b.run_to_completion(256, Duration::from_millis(0), None)?;
        }
        // A snapshot from an older build is brought up to this build's schema.
        schema::migrate(&mut conn)?;
        Ok(())
    }

    /// The bytes of a small rendered file kept in the store, if `digest` is one.
    pub fn inline_file(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .reader()
            .query_row(
                "SELECT content FROM inline_files WHERE digest = ?1",
                [digest.to_hex()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Digests of all files kept in the store: every replica holds them.
    pub fn inline_digests(&self) -> Result<std::collections::HashSet<Digest>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT digest FROM inline_files")?;
        let hexes = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        hexes
            .iter()
            .map(|h| {
                h.parse()
                    .map_err(|e| StoreError::Corrupt(format!("bad inline digest {h:?}: {e}")))
            })
            .collect()
    }

    /// Whether a migration flip away from `host` still waits for its confirmation.
    pub fn awaits_confirmation(&self, host: &str) -> Result<bool, StoreError> {
        Ok(self.reader().query_row(
            "SELECT EXISTS (SELECT 1 FROM nodes WHERE fence_host = ?1)",
            [host],
            |r| r.get(0),
        )?)
    }

    /// Newest event sequence number (0: none).
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let v: i64 =
            self.reader()
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        Ok(v.max(0) as u64)
    }

    /// Every row of every table in a fixed order and format. Two replicas that applied
    /// the same commands produce the same dump; tests and the Raft glue compare them.
    pub fn canonical_dump(&self) -> Result<String, StoreError> {
        canonical_dump(&self.reader())
    }
}

/// Tables in dump order, with the ordering that makes the dump canonical.
const DUMP: &[(&str, &str)] = &[
    ("hosts", "name"),
    ("nodes", "id"),
    ("node_macs", "mac"),
    ("node_addresses", "address"),
    ("artifacts", "digest"),
    ("host_artifacts", "host, digest"),
    ("node_files", "path"),
    ("node_sources", "node"),
    ("inline_files", "digest"),
    ("reservations", "node"),
    ("events", "seq"),
    ("rebalance", "id"),
    ("requests", "seq"),
];

/// See [`Store::canonical_dump`].
pub fn canonical_dump(conn: &Connection) -> Result<String, StoreError> {
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut out = format!("schema {version}\n");
    for (table, order) in DUMP {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))?;
        let cols: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            out.push_str(table);
            for (i, col) in cols.iter().enumerate() {
                let _ = match row.get_ref(i)? {
                    ValueRef::Null => write!(out, " {col}=NULL"),
                    ValueRef::Integer(v) => write!(out, " {col}={v}"),
                    ValueRef::Real(v) => write!(out, " {col}={v:?}"),
                    ValueRef::Text(t) => write!(out, " {col}={:?}", String::from_utf8_lossy(t)),
                    ValueRef::Blob(b) => write!(out, " {col}=x'{}'", hex::encode(b)),
                };
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// Indexed reads for the reconciler and artifact replication (see [`read`]).
impl Store {
    /// The node an operator set `address` on ([`Command::SetNodeAddresses`]), if any.
    pub fn node_id_by_address(&self, address: &IpAddr) -> Result<Option<String>, StoreError> {
        read::node_id_by_address(&self.reader(), address)
    }

    /// Nodes owned by `owner`, by id.
    pub fn nodes_owned_by(&self, owner: &str) -> Result<Vec<Node>, StoreError> {
        read::nodes_owned_by(&self.reader(), owner)
    }

    /// Nodes with a migration in progress, by id.
    pub fn migrating_nodes(&self) -> Result<Vec<Node>, StoreError> {
        read::migrating_nodes(&self.reader())
    }

    /// Nodes flagged as impossible to take over, by id.
    pub fn stuck_nodes(&self) -> Result<Vec<Node>, StoreError> {
        read::stuck_nodes(&self.reader())
    }

    /// Nodes per owning host.
    pub fn node_counts(&self) -> Result<std::collections::BTreeMap<String, usize>, StoreError> {
        read::node_counts(&self.reader())
    }

    /// (node, digest) of the blobs the nodes of `owner` serve (files kept in the store
    /// left out).
    pub fn blob_digests_owned_by(&self, owner: &str) -> Result<Vec<(String, Digest)>, StoreError> {
        read::blob_digests_owned_by(&self.reader(), owner)
    }

    /// The blobs one node serves (files kept in the store left out).
    pub fn blob_digests_of(&self, node: &str) -> Result<Vec<Digest>, StoreError> {
        read::blob_digests_of(&self.reader(), node)
    }

    /// Hosts recorded as holding blob `d`.
    pub fn recorded_holders(&self, d: &Digest) -> Result<Vec<String>, StoreError> {
        read::recorded_holders(&self.reader(), d)
    }

    /// When the active rebalance was asked for, if one is.
    pub fn rebalance_requested(&self) -> Result<Option<Millis>, StoreError> {
        read::rebalance_requested(&self.reader())
    }

    /// Blobs the nodes of `group` serve, each with whether `host` is recorded as
    /// holding it (files kept in the store left out: every replica has them).
    pub fn wanted_blobs(&self, group: &str, host: &str) -> Result<Vec<(Digest, bool)>, StoreError> {
        read::wanted_blobs(&self.reader(), group, host)
    }

    /// `EXPLAIN QUERY PLAN` of `sql` (with NULL for every parameter), one detail a line.
    pub fn query_plan(&self, sql: &str) -> Result<String, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let rows = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows.join("\n"))
    }
}
