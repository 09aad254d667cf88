//! The write path: every change to the store is proposed here, committed through the
//! replicated log and returned once this replica has applied it. A host that is not the
//! leader forwards the command to the leader's `/cluster/propose`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};

use super::peer::PeerClient;
use super::rpc::{ProposeRefused, Proposed};
use super::wire::{check_command, WireError};
use super::{BatonRaft, NodeId, Peer};
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::{Command, Outcome, RequestId, StoreError};

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
    /// The command is larger than one log entry may be.
    #[error("{0}; split the change into smaller ones")]
    TooLarge(WireError),
}

/// Refuses a command that does not fit one log entry (it could not be replicated).
fn fits(cmd: &Command) -> Result<(), WireError> {
    check_command(cmd).map(|_| ()).inspect_err(|e| {
        tracing::warn!(error = %e, "write refused: too large for one log entry");
    })
}

/// The write-path handle: the Raft handle plus the peer client to forward with.
#[derive(Clone)]
pub struct Proposer {
    raft: BatonRaft,
    node_id: NodeId,
    peers: PeerClient,
    deadline: Duration,
    metrics: Arc<Metrics>,
    rt: tokio::runtime::Handle,
    requests: Arc<RequestIds>,
}

/// Request ids of this proposer: a random 128-bit base (read once) plus a counter, so
/// ids never repeat across hosts or restarts and cost nothing per write.
struct RequestIds {
    base: u128,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut b = [0u8; 16];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
        if random.is_err() {
            // No urandom (very unusual): time and pid still separate restarts and hosts.
            b[..8].copy_from_slice(&now_ms().to_le_bytes());
            b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        }
        RequestIds {
            base: u128::from_le_bytes(b),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        RequestId(self.base.wrapping_add(u128::from(n)))
    }
}

impl Proposer {
    /// A proposer for this host (`node_id`) whose writes wait at most `deadline` for a
    /// leader. Call from within the tokio runtime.
    pub fn new(
        raft: BatonRaft,
        node_id: NodeId,
        peers: PeerClient,
        deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Proposer {
            raft,
            node_id,
            peers,
            deadline,
            metrics,
            rt: tokio::runtime::Handle::current(),
            requests: Arc::new(RequestIds::new()),
        }
    }

    /// The client of peer hosts (joining, membership, metrics, blob fetches).
    pub fn peers(&self) -> &PeerClient {
        &self.peers
    }

    /// The Raft handle (membership changes, metrics, RPC handlers).
    pub fn raft(&self) -> &BatonRaft {
        &self.raft
    }

    /// This host's Raft identity.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Whether this host is the leader, per its Raft metrics.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
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
    ///
    /// The command travels tagged with a request id of its own ([`Command::Idempotent`]),
    /// the same on every try: when a try's answer is lost after the leader committed it,
    /// the next try gets the first outcome back instead of applying the write twice.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let request = self.requests.next();
        let cmd = Command::Idempotent {
            request,
            at: now_ms(),
            command: Box::new(cmd),
        };
        // Checked as it travels and is logged: with its request id.
        fits(&cmd).map_err(ProposeError::TooLarge)?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(20);
        let mut tries = 0u32;
        loop {
            tries += 1;
            // The deadline bounds each attempt too: a leader cut off from the majority
            // (or a frozen one we forwarded to) would keep the write pending.
            let left = self.deadline.saturating_sub(start.elapsed());
            let err = match tokio::time::timeout(left, self.attempt(&cmd)).await {
                Ok(Ok(Ok((out, index)))) => return self.finish(out, index).await,
                Ok(Ok(Err(e))) => e,
                Ok(Err(e)) => return Err(e),
                Err(_) => "not committed in time: no majority answered the leader".into(),
            };
            if start.elapsed() >= self.deadline {
                tracing::warn!(error = %err, %request, tries, "write failed: no leader");
                return Err(ProposeError::NoLeader(self.deadline));
            }
            self.metrics.store.retries.inc();
            tracing::info!(error = %err, %request, tries, "write not confirmed; retrying under the same request id");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// One try: commit here if this host leads, else forward to the leader. The inner
    /// error says why to try again; the outer one is final.
    async fn attempt(
        &self,
        cmd: &Command,
    ) -> Result<Result<(Option<Outcome>, u64), String>, ProposeError> {
        match self.raft.client_write(cmd.clone()).await {
            Ok(r) => Ok(Ok((r.data, r.log_id.index))),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_node {
                Some(peer) => Ok(self
                    .forward(f.leader_id, &peer, cmd)
                    .await
                    .map(|(out, index)| (Some(out), index))),
                None => Ok(Err("no leader known yet".into())),
            },
            Err(e) => Err(ProposeError::Raft(e.to_string())),
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
        if !self.peers.has_secret() {
            return Err("this host has no cluster secret to reach the leader".into());
        }
        let post = self.peers.propose(&leader.addr, cmd);
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
                Ok(Ok(p)) => Ok((p.outcome, p.index)),
                Ok(Err(refused)) => Err(refused.to_string()),
                Err(e) => Err(e.to_string()),
            },
            _ = replaced => Err(format!("leader {} replaced while the write was pending", leader.host)),
        }
    }

    /// Proposes only if this host is the leader (no forwarding): for the reconciler,
    /// whose decisions come from this replica and must not land after it lost the lead.
    pub async fn propose_as_leader(&self, cmd: Command) -> Result<Option<Outcome>, ProposeError> {
        fits(&cmd).map_err(ProposeError::TooLarge)?;
        match self.raft.client_write(cmd).await {
            Ok(r) => self.finish(r.data, r.log_id.index).await.map(Some),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// Commits on the leader a write forwarded by a peer (`/cluster/propose`).
    pub async fn accept_forwarded(&self, cmd: Command) -> Result<Proposed, ProposeRefused> {
        if let Err(e) = fits(&cmd) {
            return Err(ProposeRefused {
                reason: e.to_string(),
            });
        }
        match self.raft.client_write(cmd).await {
            Ok(w) => match w.data {
                Some(outcome) => Ok(Proposed {
                    outcome,
                    index: w.log_id.index,
                }),
                None => Err(ProposeRefused {
                    reason: "no outcome".into(),
                }),
            },
            Err(e) => Err(ProposeRefused {
                reason: e.to_string(),
            }),
        }
    }

    /// [`Proposer::propose`] for threads outside the runtime (the template watcher).
    pub fn propose_blocking(&self, cmd: &Command) -> Result<Outcome, ProposeError> {
        self.rt.block_on(self.propose(cmd.clone()))
    }
}
