//! The running host's shared state: its identity, the local replica of the store, the
//! Raft handle, the blob store, the renderer, metrics and the event notifier.
//!
//! Writes go through [`App::propose`]: to Raft on the leader, forwarded to the leader
//! from any other host, returning once committed and applied. Reads go to the local
//! replica.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::watch;

use crate::blobs::{BlobStore, Digest};
use crate::metrics::Metrics;
use crate::ownership::state::LeaseTimes;
use crate::render::Renderer;
use crate::store::raft::machine::OnApply;
use crate::store::raft::network::Network;
use crate::store::raft::{BatonRaft, NodeId, Peer};
use crate::store::{Command, Millis, Node, Outcome, Store, StoreError};
use crate::tftp::files::{FileData, OpenError};

/// Current Unix time in milliseconds: the proposer's timestamp for commands.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// How long a write may wait for a leader before it fails.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(15);

/// Why a proposed command could not be applied (not a business rejection).
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// The blocking task died.
    #[error("store task failed: {0}")]
    Task(String),
    /// No leader could commit it in time.
    #[error("no cluster leader committed the write within {0:?} (is a majority of hosts up?)")]
    NoLeader(Duration),
    /// Raft refused it for good.
    #[error("replicated log refused the write: {0}")]
    Raft(String),
}

/// Why this host does not answer for a node right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServed {
    /// Another host owns it (per this replica).
    NotOwner,
    /// This host owns it but its lease is not fresh.
    LeaseStale,
    /// This host owns it since a migration the old owner has not confirmed yet.
    AwaitingOldOwner,
}

impl NotServed {
    /// Label for logs, metrics and error details.
    pub fn as_str(self) -> &'static str {
        match self {
            NotServed::NotOwner => "not_owner",
            NotServed::LeaseStale => "not_serving",
            NotServed::AwaitingOldOwner => "awaiting_old_owner",
        }
    }
}

/// Newest event number, and the hook the state machine calls after each applied batch.
pub fn event_notifier(store: Arc<Store>) -> (watch::Sender<u64>, OnApply) {
    let (tx, _) = watch::channel(store.last_event_seq().unwrap_or(0));
    let tx2 = tx.clone();
    let hook: OnApply = Arc::new(move || {
        if let Ok(last) = store.last_event_seq() {
            tx2.send_if_modified(|v| std::mem::replace(v, last) != last);
        }
    });
    (tx, hook)
}

/// Progress of artifact replication to this host, for `baton status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplicationStatus {
    /// Blobs this host still lacks.
    pub missing: usize,
    /// The blob being fetched, if any.
    pub current: Option<String>,
    /// Bytes of it received (including a resumed part).
    pub bytes: u64,
    /// Its size.
    pub total: u64,
    /// Host it comes from.
    pub from: Option<String>,
    /// Last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Everything a host's services share.
pub struct App {
    /// This host's name in the store.
    pub host: String,
    /// This host's group (L2 segment).
    pub group: String,
    /// This host's Raft identity.
    pub node_id: NodeId,
    /// The local replica.
    pub store: Arc<Store>,
    /// The replicated log.
    pub raft: BatonRaft,
    /// Peer client (forwarding, blob fetches), with the cluster secret.
    pub net: Network,
    /// Cluster secret, when clustering is enabled.
    pub secret: Option<String>,
    /// Content-addressed artifacts.
    pub blobs: Arc<BlobStore>,
    /// Current templates (replaced when the template directory changes).
    pub renderer: RwLock<Arc<Renderer>>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Shared in-memory copies of served blobs.
    pub blob_cache: crate::blobcache::BlobCache,
    /// Artifact replication progress.
    pub replication: Mutex<ReplicationStatus>,
    /// Lease timing (the same on every host).
    pub lease_times: LeaseTimes,
    /// Most nodes one host may own (placement), if limited.
    pub max_nodes: Option<usize>,
    /// Until when this host's lease is fresh (monotonic clock).
    lease_until: Mutex<Option<Instant>>,
    /// Newest event sequence number, for long-polling clients.
    events: watch::Sender<u64>,
    rt: tokio::runtime::Handle,
}

/// Parts to build an [`App`] from.
pub struct AppParts {
    /// Host name.
    pub host: String,
    /// Group.
    pub group: String,
    /// Raft identity.
    pub node_id: NodeId,
    /// Local replica.
    pub store: Arc<Store>,
    /// Raft handle.
    pub raft: BatonRaft,
    /// Peer client.
    pub net: Network,
    /// Cluster secret.
    pub secret: Option<String>,
    /// Blobs.
    pub blobs: Arc<BlobStore>,
    /// Templates.
    pub renderer: Renderer,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// In-memory blob budget.
    pub cache_budget: u64,
    /// Event notifier from [`event_notifier`].
    pub events: watch::Sender<u64>,
    /// Lease timing.
    pub lease_times: LeaseTimes,
    /// Placement capacity.
    pub max_nodes: Option<usize>,
}

impl App {
    /// Assembles the state; call from within the tokio runtime.
    pub fn new(p: AppParts) -> Self {
        App {
            host: p.host,
            group: p.group,
            node_id: p.node_id,
            store: p.store,
            raft: p.raft,
            net: p.net,
            secret: p.secret,
            blobs: p.blobs,
            renderer: RwLock::new(Arc::new(p.renderer)),
            metrics: p.metrics,
            blob_cache: crate::blobcache::BlobCache::new(p.cache_budget),
            replication: Mutex::new(ReplicationStatus::default()),
            lease_times: p.lease_times,
            max_nodes: p.max_nodes,
            lease_until: Mutex::new(None),
            events: p.events,
            rt: tokio::runtime::Handle::current(),
        }
    }

    /// Whether this host may answer for the nodes it owns now: its lease is fresh.
    pub fn serving(&self) -> bool {
        self.lease_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|u| Instant::now() < u)
    }

    /// Whether this host may answer for `node` now: it owns it per this replica, its
    /// lease is fresh, and a migration flip to it has been confirmed by the old owner
    /// (or the old owner is down). Together these keep two hosts from answering.
    pub fn may_serve(&self, node: &Node) -> Result<(), NotServed> {
        if node.owner != self.host {
            return Err(NotServed::NotOwner);
        }
        if !self.serving() {
            return Err(NotServed::LeaseStale);
        }
        if let Some(f) = &node.fence {
            // A store error keeps the fence closed: better silent than doubled.
            let cleared = self.store.host(&f.host).is_ok_and(|old| {
                crate::ownership::state::fence_cleared(f, old.as_ref(), now_ms(), &self.lease_times)
            });
            if !cleared {
                return Err(NotServed::AwaitingOldOwner);
            }
        }
        Ok(())
    }

    /// Records a committed renewal sent at `sent`: fresh until `sent + TTL`.
    pub fn renew_lease(&self, sent: Instant) {
        let until = sent + Duration::from_millis(self.lease_times.ttl_ms);
        let mut l = self.lease_until.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_none_or(|u| u < until) {
            *l = Some(until);
        }
    }

    /// The current renderer.
    pub fn renderer(&self) -> Arc<Renderer> {
        self.renderer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the renderer (after a template change).
    pub fn set_renderer(&self, r: Renderer) {
        *self.renderer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(r);
    }

    /// Members of the cluster as this host knows them: node id -> peer.
    pub fn members(&self) -> BTreeMap<NodeId, Peer> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .nodes()
            .map(|(id, p)| (*id, p.clone()))
            .collect()
    }

    /// The HTTP base URL of a host, from the cluster membership.
    pub fn peer_url(&self, host: &str) -> Option<String> {
        self.members()
            .into_values()
            .find(|p| p.host == host)
            .map(|p| p.addr)
    }

    /// Commits a command through the replicated log and returns its outcome once it is
    /// applied here. Forwards to the leader when this host is not it.
    pub async fn propose(self: &Arc<Self>, cmd: Command) -> Result<Outcome, ProposeError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            let err = match self.raft.client_write(cmd.clone()).await {
                Ok(r) => return self.finish(r.data, r.log_id.index).await,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match f.leader_node {
                        Some(peer) => match self.forward(f.leader_id, &peer, &cmd).await {
                            Ok((out, index)) => return self.finish(Some(out), index).await,
                            Err(e) => e,
                        },
                        None => "no leader known yet".to_string(),
                    }
                }
                Err(e) => return Err(ProposeError::Raft(e.to_string())),
            };
            if start.elapsed() > PROPOSE_DEADLINE {
                tracing::warn!(error = %err, "write failed: no leader");
                return Err(ProposeError::NoLeader(PROPOSE_DEADLINE));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// Waits until the local replica has applied `index` (so a read right after a
    /// write sees it), then counts the outcome.
    async fn finish(&self, out: Option<Outcome>, index: u64) -> Result<Outcome, ProposeError> {
        // A write that this replica has not applied is not reported as done: a lease
        // renewal in particular must not succeed on a replica that lags behind.
        self.raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(index), "write applied locally")
            .await
            .map_err(|e| ProposeError::Raft(format!("committed, but not applied here yet: {e}")))?;
        let out =
            out.ok_or_else(|| ProposeError::Raft("the log entry carried no command".into()))?;
        self.metrics.store.commands.inc();
        if !out.is_applied() {
            self.metrics.store.rejected.inc();
        }
        Ok(out)
    }

    /// Sends a write to the leader's `/cluster/propose`. Gives up as soon as this
    /// replica learns of another leader: a paused or cut-off leader would otherwise hold
    /// the write (a lease renewal, say) until the request times out.
    async fn forward(
        &self,
        leader_id: Option<NodeId>,
        leader: &Peer,
        cmd: &Command,
    ) -> Result<(Outcome, u64), String> {
        if self.secret.is_none() {
            return Err("this host has no cluster secret to reach the leader".into());
        }
        let url = format!("{}/cluster/propose", leader.addr.trim_end_matches('/'));
        let post = self
            .net
            .post::<_, crate::http::cluster::Proposed, crate::http::cluster::ProposeRefused>(
                0,
                &url,
                cmd,
                Duration::from_secs(10),
            );
        let mut metrics = self.raft.metrics();
        let replaced = async {
            loop {
                if metrics.borrow_and_update().current_leader != leader_id {
                    return;
                }
                if metrics.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            r = post => match r {
                Ok(p) => Ok((p.outcome, p.index)),
                Err(e) => Err(e.to_string()),
            },
            _ = replaced => Err(format!("leader {} replaced while the write was pending", leader.host)),
        }
    }

    /// Proposes only if this host is the leader (no forwarding): for the reconciler,
    /// whose decisions come from this replica and must not land after it lost the lead.
    pub async fn propose_as_leader(
        self: &Arc<Self>,
        cmd: Command,
    ) -> Result<Option<Outcome>, ProposeError> {
        match self.raft.client_write(cmd).await {
            Ok(r) => self.finish(r.data, r.log_id.index).await.map(Some),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// [`App::propose`] for threads outside the runtime (the template watcher).
    pub fn propose_blocking(self: &Arc<Self>, cmd: &Command) -> Result<Outcome, ProposeError> {
        self.rt.block_on(self.propose(cmd.clone()))
    }

    /// A receiver that changes when new events are appended.
    pub fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    /// The bytes of a blob this host holds, shared across transfers.
    pub async fn blob_bytes(&self, digest: &Digest) -> Result<Arc<FileData>, OpenError> {
        let blobs = self.blobs.clone();
        let store = self.store.clone();
        let d = *digest;
        self.blob_cache
            .get_or_load(d, move || {
                let bytes = match blobs.read(&d) {
                    Ok(b) => b,
                    // A small rendered file not fetched yet: the store itself has it.
                    Err(crate::blobs::BlobError::NotFound(_)) => store
                        .inline_file(&d)
                        .map_err(|e| OpenError::Io(e.to_string()))?
                        .map(bytes::Bytes::from)
                        .ok_or(OpenError::Denied("blob_missing"))?,
                    Err(e) => return Err(OpenError::Io(e.to_string())),
                };
                // Verified once per load into memory: a damaged blob is never served.
                if Digest::of(&bytes) != d {
                    tracing::error!(digest = %d, "blob content does not match its digest; refusing to serve it");
                    return Err(OpenError::Io(format!("blob {d} is corrupt")));
                }
                Ok(bytes)
            })
            .await
    }
}
