//! The Raft log and vote in SQLite (`<data_dir>/raft-log.db`, WAL, synchronous=FULL).
//!
//! Each `append` call writes all its entries in one transaction: one fsync for a batch,
//! which is how a burst of client writes costs few fsyncs (openraft hands the log store
//! every entry that queued up while the previous flush was running).
//!
//! The file stays bounded: openraft purges entries a snapshot covers (beyond the
//! `keep_logs` tail), and the pages they held go back to the file system at once
//! (`auto_vacuum = INCREMENTAL`, an incremental vacuum and a truncating checkpoint
//! after each purge).

// StorageError and RPCError are openraft's, fixed by its trait signatures.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rusqlite::{params, Connection, OptionalExtension};

use super::rpc::APPEND_BATCH;
use super::{typ, NodeId, TypeConfig};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// `PRAGMA auto_vacuum` value of INCREMENTAL.
const AUTO_VACUUM_INCREMENTAL: i64 = 2;
/// The WAL is truncated to this after a checkpoint (a large batch may grow it beyond).
const WAL_LIMIT: i64 = 4 << 20;

/// The log store; cheap to clone (shares one connection).
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
}

fn io<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

fn rd<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

impl LogStore {
    /// Opens or creates the log database.
    pub fn open(path: &Path) -> std::result::Result<Self, crate::store::StoreError> {
        crate::private_fs::prepare_db(path).map_err(crate::store::StoreError::io(path))?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Set before any table exists, or converted once by VACUUM (logs written by
        // older builds).
        let vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        if vacuum != AUTO_VACUUM_INCREMENTAL {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
            conn.execute_batch("VACUUM")?;
        }
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry TEXT NOT NULL) STRICT;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;",
        )?;
        Ok(LogStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection off the async workers (commits wait for fsync).
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(io)?
    }

    fn get_meta<T: serde::de::DeserializeOwned>(c: &Connection, key: &str) -> Result<Option<T>> {
        let v: Option<String> = c
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(rd)?;
        v.map(|s| serde_json::from_str(&s).map_err(rd)).transpose()
    }

    /// Writes encoded entries `(index, JSON)` in one transaction: one commit, one
    /// fsync, for the whole batch.
    fn insert(c: &mut Connection, rows: &[(i64, String)]) -> Result<()> {
        let tx = c.transaction().map_err(io)?;
        {
            let mut st = tx
                .prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)")
                .map_err(io)?;
            for (i, e) in rows {
                st.execute(params![i, e]).map_err(io)?;
            }
        }
        tx.commit().map_err(io)?;
        Ok(())
    }

    /// Deletes entries up to `log_id` and gives their pages back to the file system,
    /// so the file stays the size of what is kept.
    fn purge_upto(c: &mut Connection, log_id: LogId<NodeId>) -> Result<()> {
        let tx = c.transaction().map_err(io)?;
        Self::set_meta(&tx, "last_purged", &log_id)?;
        tx.execute("DELETE FROM log WHERE idx <= ?1", [log_id.index as i64])
            .map_err(io)?;
        tx.commit().map_err(io)?;
        // Each step of the pragma frees one page: step it to the end.
        let mut st = c.prepare("PRAGMA incremental_vacuum").map_err(io)?;
        let mut rows = st.query([]).map_err(io)?;
        while rows.next().map_err(io)?.is_some() {}
        drop(rows);
        drop(st);
        // Copy the WAL back now, so the main file shrinks and the WAL empties.
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(io)?;
        Ok(())
    }

    fn set_meta<T: serde::Serialize>(c: &Connection, key: &str, v: &T) -> Result<()> {
        let s = serde_json::to_string(v).map_err(io)?;
        c.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, s],
        )
        .map_err(io)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<typ::Entry>> {
        let lo = match range.start_bound() {
            Bound::Included(x) => *x as i64,
            Bound::Excluded(x) => *x as i64 + 1,
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(x) => (*x as i64).saturating_add(1),
            Bound::Excluded(x) => *x as i64,
            Bound::Unbounded => i64::MAX,
        };
        self.with(move |c| {
            let mut st = c
                .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
                .map_err(rd)?;
            let rows = st
                .query_map(params![lo, hi], |r| r.get::<_, String>(0))
                .map_err(rd)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(serde_json::from_str(&r.map_err(rd)?).map_err(rd)?);
            }
            Ok(out)
        })
        .await
    }

    /// What one `AppendEntries` carries: entries from `start` on, up to
    /// [`APPEND_BATCH`] stored bytes (at least one entry), so neither the leader's
    /// memory nor the body depends on how far behind a follower is.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<typ::Entry>> {
        self.with(move |c| {
            let mut st = c
                .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")
                .map_err(rd)?;
            let mut rows = st
                .query(params![start as i64, end.min(i64::MAX as u64) as i64])
                .map_err(rd)?;
            let mut out = Vec::new();
            let mut bytes = 0;
            while let Some(r) = rows.next().map_err(rd)? {
                let text = r.get_ref(0).map_err(rd)?.as_str().map_err(rd)?;
                if !out.is_empty() && bytes + text.len() > APPEND_BATCH {
                    break;
                }
                bytes += text.len();
                out.push(serde_json::from_str(text).map_err(rd)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        self.with(|c| {
            let last: Option<String> = c
                .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(rd)?;
            let last: Option<LogId<NodeId>> = match last {
                Some(s) => Some(serde_json::from_str::<typ::Entry>(&s).map_err(rd)?.log_id),
                None => None,
            };
            let purged: Option<LogId<NodeId>> = Self::get_meta(c, "last_purged")?;
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last.or(purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let v = *vote;
        self.with(move |c| Self::set_meta(c, "vote", &v)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.with(|c| Self::get_meta(c, "vote")).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.with(move |c| Self::set_meta(c, "committed", &committed))
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        self.with(|c| Ok(Self::get_meta::<Option<LogId<NodeId>>>(c, "committed")?.flatten()))
            .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = typ::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((
                e.log_id.index as i64,
                serde_json::to_string(&e).map_err(io)?,
            ));
        }
        let r = self.with(move |c| Self::insert(c, &rows)).await;
        match &r {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        r
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let i = log_id.index as i64;
        self.with(move |c| {
            c.execute("DELETE FROM log WHERE idx >= ?1", [i])
                .map_err(io)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.with(move |c| Self::purge_upto(c, log_id)).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    use super::*;
    use crate::store::Command;

    fn entry(index: u64, text: usize) -> (i64, String) {
        let e: typ::Entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::FlagNode {
                node: "n".into(),
                stuck: Some("x".repeat(text)),
                at: 1,
            }),
        };
        (index as i64, serde_json::to_string(&e).unwrap())
    }

    #[tokio::test]
    async fn one_append_carries_at_most_a_batch_of_bytes_and_at_least_one_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(&tmp.path().join("raft-log.db")).unwrap();
        let mut rows: Vec<_> = (1..=5).map(|i| entry(i, 300 << 10)).collect();
        rows.push(entry(6, 3 << 20));
        rows.push(entry(7, 10));
        LogStore::insert(&mut store.conn.lock().unwrap(), &rows).unwrap();
        let indexes = |v: Vec<typ::Entry>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        // Three of 300 KiB fit APPEND_BATCH, a fourth would not.
        let got = store.limited_get_log_entries(1, 8).await.unwrap();
        assert_eq!(indexes(got), [1, 2, 3]);
        let got = store.limited_get_log_entries(4, 8).await.unwrap();
        assert_eq!(indexes(got), [4, 5]);
        // An entry larger than a batch goes alone.
        let got = store.limited_get_log_entries(6, 8).await.unwrap();
        assert_eq!(indexes(got), [6]);
        let got = store.limited_get_log_entries(7, 8).await.unwrap();
        assert_eq!(indexes(got), [7]);
    }

    fn file_bytes(path: &Path) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let wal = path.with_extension("db-wal");
        size(path) + size(&wal)
    }

    /// A steady write load with a purge after every "snapshot" keeps the file (with
    /// its WAL) at the size of what is kept, round after round. Prints the sizes.
    #[test]
    fn the_log_file_stays_bounded_under_steady_writes() {
        const ROUNDS: u64 = 12;
        const PER_ROUND: u64 = 2000; // snapshot_every
        const KEEP: u64 = 200; // keep_logs
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("raft-log.db");
        let store = LogStore::open(&path).unwrap();
        let mut c = store.conn.lock().unwrap();
        let mut sizes = Vec::new();
        let mut next = 1u64;
        for round in 0..ROUNDS {
            let rows: Vec<(i64, String)> = (0..PER_ROUND)
                .map(|i| {
                    let e: typ::Entry = Entry {
                        log_id: LogId::new(CommittedLeaderId::new(1, 1), next + i),
                        payload: EntryPayload::Normal(Command::FlagNode {
                            node: format!("node-{}", next + i),
                            stuck: Some("x".repeat(1000)),
                            at: 1,
                        }),
                    };
                    ((next + i) as i64, serde_json::to_string(&e).unwrap())
                })
                .collect();
            // Written in batches, as appends arrive.
            for batch in rows.chunks(100) {
                LogStore::insert(&mut c, batch).unwrap();
            }
            next += PER_ROUND;
            let before = file_bytes(&path);
            let upto = LogId::new(CommittedLeaderId::new(1, 1), next - 1 - KEEP);
            LogStore::purge_upto(&mut c, upto).unwrap();
            let after = file_bytes(&path);
            eprintln!(
                "round {round}: {} entries written, raft-log.db + wal {before} bytes before \
                 purge, {after} after",
                next - 1
            );
            sizes.push((before, after));
        }
        let rows: i64 = c
            .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows as u64, KEEP);
        // Bounded: the last rounds are no larger than the second (the first grows
        // the WAL to its working size).
        let (b1, a1) = sizes[1];
        let (bn, an) = sizes[ROUNDS as usize - 1];
        assert!(bn <= b1 + b1 / 10, "before purge: {b1} -> {bn}");
        assert!(an <= a1 + a1 / 10, "after purge: {a1} -> {an}");
        // Compaction gives the pages back: the main file shrinks to what is kept.
        let main = std::fs::metadata(&path).unwrap().len();
        assert!(
            main < PER_ROUND * 1000 / 2,
            "raft-log.db is {main} bytes with {KEEP} entries kept"
        );
    }
}
