//! Starting the replicated store: open the Raft log and state machine, then either
//! initialize a cluster of one (first start, no `--join`) or join an existing cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::{Config as RaftConfig, SnapshotPolicy};
use tracing::{info, warn};

use crate::api::peer::JoinRequest;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::feed::EventFeed;
use crate::store::raft::elect::{Election, ElectionTiming, LeaderContact};
use crate::store::raft::log::LogStore;
use crate::store::raft::machine::StateMachine;
use crate::store::raft::network::Network;
use crate::store::raft::peer::{PeerClient, PeerError};
use crate::store::raft::propose::Proposer;
use crate::store::raft::{node_id, BatonRaft, Peer};
use crate::store::Store;

/// How long a joining host keeps trying before it gives up.
const JOIN_DEADLINE: Duration = Duration::from_secs(120);

/// Deadline of one snapshot chunk RPC. The last one includes installing the snapshot
/// into the receiver's database (seconds for a large one); a peer that does not answer
/// within it is retried with the snapshot afresh.
const SNAPSHOT_RPC: Duration = Duration::from_secs(60);

/// The replicated store, opened.
pub struct Started {
    /// The write path.
    pub proposer: Proposer,
    /// Applied-event pulse.
    pub feed: EventFeed,
    /// Leader contact and election timing.
    pub election: Election,
}

/// Opens the Raft log and state machine: the write path and the event feed.
pub async fn start(
    cfg: &Config,
    host: &str,
    advertise: &str,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    tls: Option<&crate::tls::Material>,
) -> anyhow::Result<Started> {
    let id = node_id(&cfg.data_dir).context("cannot read or create <data-dir>/node-id")?;
    let (feed, on_apply) = EventFeed::new(store.clone());
    let sm = StateMachine::new(store.clone(), cfg.data_dir.join("snapshots"), on_apply)
        .context("cannot open the state machine")?;
    let log =
        LogStore::open(&cfg.data_dir.join("raft-log.db")).context("cannot open the raft log")?;
    let peers = PeerClient::with_tls(cfg.cluster.secret.clone(), tls)
        .context("cannot set up TLS for peer traffic")?;
    let timing = cfg.raft_timing().context("invalid lease and raft timing")?;
    let rc = RaftConfig {
        cluster_name: "baton".into(),
        heartbeat_interval: timing.heartbeat_ms,
        // openraft's own timer is off: `store::raft::elect` stands with pre-vote. Its
        // leader lease (= the max) is what voters grant a leader.
        election_timeout_min: timing.election_timeout_ms,
        election_timeout_max: timing.election_timeout_ms + 1,
        enable_elect: false,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.cluster.snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: cfg.cluster.keep_logs,
        snapshot_max_chunk_size: crate::api::peer::SNAPSHOT_CHUNK as u64,
        install_snapshot_timeout: SNAPSHOT_RPC.as_millis() as u64,
        ..Default::default()
    };
    let rc = Arc::new(rc.validate().context("invalid raft settings")?);
    let raft: BatonRaft = openraft::Raft::new(id, rc, Network::new(peers.clone()), log.clone(), sm)
        .await
        .context("cannot start the replicated log")?;
    info!(
        node_id = id,
        host,
        advertise,
        heartbeat_ms = timing.heartbeat_ms,
        election_timeout_ms = timing.election_timeout_ms,
        "replicated store opened"
    );
    let deadline = Duration::from_millis(cfg.cluster.propose_deadline_ms);
    let proposer = Proposer::new(raft, id, peers, deadline, metrics);
    let election = Election {
        contact: LeaderContact::default(),
        timing: ElectionTiming {
            timeout: Duration::from_millis(timing.election_timeout_ms),
        },
        log,
    };
    Ok(Started {
        proposer,
        feed,
        election,
    })
}

/// First start: initialize a one-member cluster, or join `cluster.join`. Then waits for
/// a leader and for this replica to catch up with what is committed, so nothing is
/// answered from stale state.
pub async fn bootstrap(
    cfg: &Config,
    host: &str,
    p: &Proposer,
    advertise: &str,
) -> anyhow::Result<()> {
    let raft: &BatonRaft = p.raft();
    let initialized = raft.is_initialized().await.context("raft stopped")?;
    if !initialized {
        match &cfg.cluster.join {
            None => {
                let mut m = BTreeMap::new();
                m.insert(
                    p.node_id(),
                    Peer {
                        addr: advertise.to_string(),
                        host: host.to_string(),
                    },
                );
                raft.initialize(m)
                    .await
                    .context("cannot initialize a one-host cluster")?;
                info!(
                    node_id = p.node_id(),
                    "initialized a new cluster with this host as its only member"
                );
            }
            Some(url) => join(p.peers(), host, p.node_id(), url, advertise).await?,
        }
    } else if let Some(url) = &cfg.cluster.join {
        info!(join = %url, "already a cluster member; --join ignored");
    }
    let m = raft
        .wait(Some(Duration::from_secs(60)))
        .metrics(|m| m.current_leader.is_some(), "a leader is known")
        .await
        .context("no cluster leader within 60 s: is a majority of hosts up and reachable?")?;
    // Catch up with the leader's log before answering anything.
    if let Some(last) = m.last_log_index {
        let _ = raft
            .wait(Some(Duration::from_secs(60)))
            .applied_index_at_least(Some(last), "caught up")
            .await;
    }
    info!(leader = ?m.current_leader, applied = ?raft.metrics().borrow().last_applied.map(|l| l.index), "cluster ready");
    Ok(())
}

/// Asks the cluster at `url` to add this host, following leader hints, until it is a
/// voter.
async fn join(
    peers: &PeerClient,
    host: &str,
    node_id: crate::store::raft::NodeId,
    url: &str,
    advertise: &str,
) -> anyhow::Result<()> {
    if !peers.has_secret() {
        anyhow::bail!("joining needs the cluster secret");
    }
    let req = JoinRequest {
        node_id,
        addr: advertise.to_string(),
        host: host.to_string(),
    };
    let start = Instant::now();
    let mut target = url.trim_end_matches('/').to_string();
    loop {
        info!(via = %target, node_id, "joining cluster (as learner first, catching up, then as voter)");
        match peers.join(&target, &req).await {
            Ok(_) => {
                info!(via = %target, "joined the cluster");
                return Ok(());
            }
            // A certificate problem does not heal by waiting: stop with rustls' reason.
            Err(e @ PeerError::Tls { .. }) => {
                anyhow::bail!("cannot join the cluster at {target}: {e}");
            }
            Err(PeerError::Forbidden { .. }) => {
                anyhow::bail!(
                    "the cluster at {target} refused the cluster secret: check --cluster-secret"
                );
            }
            Err(e) => {
                if let Some(leader) = e.leader_hint() {
                    target = leader.trim_end_matches('/').to_string();
                    continue;
                }
                match e {
                    PeerError::Refused { .. } | PeerError::Decode { .. } => {
                        warn!(via = %target, answer = %e, "join not accepted yet; retrying")
                    }
                    e => {
                        warn!(via = %target, error = %e, "cannot reach the cluster to join; retrying")
                    }
                }
            }
        }
        if start.elapsed() > JOIN_DEADLINE {
            anyhow::bail!("could not join the cluster at {url} within {JOIN_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
