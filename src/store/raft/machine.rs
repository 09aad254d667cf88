//! The state machine: the store's SQLite database. A batch of entries is applied in one
//! transaction together with the last-applied log id (see `Store::apply_replicated`), so
//! a restart neither loses nor re-applies a command. Snapshots are copies of the database
//! made with SQLite's backup API; the copy carries its own applied position, so a
//! snapshot's metadata always matches its content. They are kept, sent and received as
//! files ([`super::snapfile`]), never whole in memory.

// StorageError and RPCError are openraft's, fixed by its trait signatures.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};

use super::snapfile::{Meta, SnapshotDir, SnapshotFile};
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
    snaps: Arc<SnapshotDir>,
    applied: Option<LogId<NodeId>>,
    membership: Membership,
    on_apply: OnApply,
    /// Files of snapshots being received, newest last: an abandoned stream's file is
    /// removed once two newer streams began (the newest may still be installing).
    receiving: Vec<PathBuf>,
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

/// The applied position recorded inside a snapshot's data.
fn position_of(data: &Path) -> Result<(Option<LogId<NodeId>>, Membership)> {
    Ok(parse_state(
        Store::replicated_state_of(data).map_err(snap_err)?,
    ))
}

impl StateMachine {
    /// A state machine over `store`, keeping snapshots in `dir`.
    pub fn new(
        store: Arc<Store>,
        dir: PathBuf,
        on_apply: OnApply,
    ) -> std::result::Result<Self, crate::store::StoreError> {
        // Snapshots are whole copies of the database: owner-only.
        crate::private_fs::own_dir(&dir).map_err(crate::store::StoreError::io(&dir))?;
        let corrupt = |e: std::io::Error| crate::store::StoreError::Corrupt(e.to_string());
        let snaps = SnapshotDir::open(&dir).map_err(corrupt)?;
        // A snapshot whose data does not say what its metadata says is not offered to
        // peers (only snapshots of older builds can be so): a new one is built.
        if let Some((meta, data)) = snaps.current().map_err(corrupt)? {
            let ok = matches!(position_of(&data), Ok((l, _)) if l == meta.last_log_id);
            if !ok {
                tracing::warn!(snapshot = %meta.snapshot_id, "snapshot data does not match its metadata: discarded");
                snaps.discard().map_err(corrupt)?;
            }
        }
        let (applied, membership) = parse_state(store.replicated_state()?);
        Ok(StateMachine {
            store,
            snaps: Arc::new(snaps),
            applied,
            membership,
            on_apply,
            receiving: Vec::new(),
        })
    }
}

/// Builds snapshots from a copy of the database.
pub struct Builder {
    store: Arc<Store>,
    snaps: Arc<SnapshotDir>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let store = self.store.clone();
        let snaps = self.snaps.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || -> Result<(Meta, PathBuf)> {
            let stamp = crate::clock::now_ms();
            let staged = snaps.staging_path("build");
            store.backup_to(&staged).map_err(sm_err)?;
            // The copy's own applied position is the snapshot's: consistent by construction.
            let (last, membership) = position_of(&staged)?;
            std::fs::File::open(&staged)
                .and_then(|f| f.sync_all())
                .map_err(snap_err)?;
            let id = match last {
                Some(l) => format!("{}-{}-{stamp}", l.leader_id, l.index),
                None => format!("empty-{stamp}"),
            };
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id: id,
            };
            let (meta, data) = snaps.publish(&meta, &staged).map_err(snap_err)?;
            let bytes = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
            tracing::info!(snapshot = %meta.snapshot_id, bytes, "store snapshot built");
            Ok((meta, data))
        })
        .await
        .map_err(sm_err)??;
        let file = SnapshotFile::open(&data).await.map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
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
            snaps: self.snaps.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>> {
        let path = self.snaps.staging_path("incoming");
        let file = SnapshotFile::create(&path).await.map_err(snap_err)?;
        self.receiving.push(path);
        if self.receiving.len() > 2 {
            let old = self.receiving.remove(0);
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<SnapshotFile>) -> Result<()> {
        let data = snapshot.finish().await.map_err(snap_err)?;
        self.receiving.retain(|p| *p != data);
        let store = self.store.clone();
        let snaps = self.snaps.clone();
        let m = meta.clone();
        let bytes = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || -> Result<()> {
            // What arrived must be what the metadata says, or nothing is installed.
            let (last, _) = position_of(&data)?;
            if last != m.last_log_id {
                let _ = std::fs::remove_file(&data);
                return Err(snap_err(std::io::Error::other(format!(
                    "received snapshot {} holds log position {last:?}, its metadata says {:?}",
                    m.snapshot_id, m.last_log_id
                ))));
            }
            store.restore_from(&data).map_err(sm_err)?;
            snaps.publish(&m, &data).map_err(snap_err)?;
            Ok(())
        })
        .await
        .map_err(sm_err)??;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes,
            install_ms = started.elapsed().as_millis() as u64,
            "store snapshot installed"
        );
        (self.on_apply)();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let Some((meta, data)) = self.snaps.current().map_err(snap_err)? else {
            return Ok(None);
        };
        let file = SnapshotFile::open(&data).await.map_err(snap_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
