//! The state machine: the store's SQLite database. A batch of entries is applied in one
//! transaction together with the last-applied log id (see `Store::apply_replicated`), so
//! a restart neither loses nor re-applies a command. Snapshots are copies of the database
//! made with SQLite's backup API; the copy carries its own applied position, so a
//! snapshot's metadata always matches its content.

// StorageError and RPCError are openraft's, fixed by its trait signatures.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};

use super::{typ, NodeId, Peer, TypeConfig};
use crate::store::{Command, Outcome, Store};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, Peer>;

/// Called after every applied batch (wakes event followers and watchers).
pub type OnApply = Arc<dyn Fn() + Send + Sync>;

fn sm_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}

/// The state machine over a [`Store`].
pub struct StateMachine {
    store: Arc<Store>,
    dir: PathBuf,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    on_apply: OnApply,
}

/// The applied position as stored in the database.
fn parse_state(s: Option<(String, String)>) -> (Option<LogId<NodeId>>, Membership) {
    match s {
        Some((l, m)) => (
            serde_json::from_str(&l).ok(),
            serde_json::from_str(&m).unwrap_or_default(),
        ),
        None => (None, Membership::default()),
    }
}

impl StateMachine {
    /// A state machine over `store`, keeping snapshots in `dir`.
    pub fn new(
        store: Arc<Store>,
        dir: PathBuf,
        on_apply: OnApply,
    ) -> std::result::Result<Self, crate::store::StoreError> {
        // Snapshots are whole copies of the database.
        crate::private_fs::own_dir(&dir).map_err(crate::store::StoreError::io(&dir))?;
        let (applied, membership) = parse_state(store.replicated_state()?);
        Ok(StateMachine {
            store,
            dir,
            applied,
            membership,
            on_apply,
        })
    }

    fn current_paths(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("current.db"), self.dir.join("current.json"))
    }
}

/// Builds snapshots from a copy of the database.
pub struct Builder {
    store: Arc<Store>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let store = self.store.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let stamp = crate::clock::now_ms();
            let tmp = dir.join(format!("build-{stamp}.db"));
            let _ = std::fs::remove_file(&tmp);
            store.backup_to(&tmp).map_err(sm_err)?;
            // The copy's own applied position is the snapshot's: consistent by construction.
            let (last, membership) = parse_state(Store::replicated_state_of(&tmp).map_err(sm_err)?);
            let id = match last {
                Some(l) => format!("{}-{}-{stamp}", l.leader_id, l.index),
                None => format!("empty-{stamp}"),
            };
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id: id,
            };
            // A backup leaves no -wal beside it once closed; the .db file is complete.
            let bytes = std::fs::read(&tmp).map_err(snap_err)?;
            std::fs::rename(&tmp, dir.join("current.db")).map_err(snap_err)?;
            let _ = std::fs::remove_file(tmp.with_extension("db-wal"));
            let _ = std::fs::remove_file(tmp.with_extension("db-shm"));
            crate::private_fs::write(&dir.join("current.json"), &serde_json::to_vec(&meta).map_err(snap_err)?).map_err(snap_err)?;
            tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "store snapshot built");
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            })
        })
        .await
        .map_err(sm_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<Outcome>>>
    where
        I: IntoIterator<Item = typ::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut cmds: Vec<Option<Command>> = Vec::new();
        let mut last = self.applied;
        let mut membership = self.membership.clone();
        for e in entries {
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Normal(c) => cmds.push(Some(c)),
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(e.log_id), m);
                    cmds.push(None);
                }
                EntryPayload::Blank => cmds.push(None),
            }
        }
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let (Some(l), store) = (last, self.store.clone()) else {
            return Ok(vec![None; cmds.len()]);
        };
        let lj = serde_json::to_string(&l).map_err(sm_err)?;
        let mj = serde_json::to_string(&membership).map_err(sm_err)?;
        let out = tokio::task::spawn_blocking(move || {
            let refs: Vec<Option<&Command>> = cmds.iter().map(|c| c.as_ref()).collect();
            store.apply_replicated(&refs, (&lj, &mj))
        })
        .await
        .map_err(sm_err)?
        // An error here is the database failing, not a business outcome: openraft stops
        // this node rather than let it diverge.
        .map_err(sm_err)?;
        self.applied = last;
        self.membership = membership;
        (self.on_apply)();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            store: self.store.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Peer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let (db, js) = self.current_paths();
        let store = self.store.clone();
        let bytes = snapshot.into_inner();
        let meta_json = serde_json::to_vec(meta).map_err(snap_err)?;
        let incoming = self.dir.join("incoming.db");
        tokio::task::spawn_blocking(move || -> Result<()> {
            crate::private_fs::write(&incoming, &bytes).map_err(snap_err)?;
            store.restore_from(&incoming).map_err(sm_err)?;
            std::fs::rename(&incoming, &db).map_err(snap_err)?;
            crate::private_fs::write(&js, &meta_json).map_err(snap_err)?;
            Ok(())
        })
        .await
        .map_err(sm_err)??;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta.snapshot_id, "store snapshot installed");
        (self.on_apply)();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let (db, js) = self.current_paths();
        let Ok(meta) = std::fs::read(&js) else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, Peer> = serde_json::from_slice(&meta).map_err(snap_err)?;
        let bytes = std::fs::read(&db).map_err(snap_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
