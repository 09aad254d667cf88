//! Raft glue (openraft 0.9, storage v2): the store's SQLite database is the state
//! machine of a replicated log shared by all Baton hosts. The log and vote live in their
//! own SQLite file; peers talk over the HTTP port (`/cluster/...`), authenticated by the
//! cluster secret. [`propose`] is the write path every change goes through, [`peer`] the
//! one client of other hosts, [`rpc`] the routes and bodies they exchange, [`elect`]
//! elections with pre-vote. Nothing here knows of nodes' ownership rules or the boot
//! protocols.

pub mod elect;
pub mod log;
pub mod machine;
pub mod network;
pub mod peer;
pub mod propose;
pub mod rpc;
pub mod snapfile;
pub mod wire;

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Command, Outcome};

pub use super::types::NodeId;

/// How to reach a member: its HTTP base URL and Baton host name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Base URL of the peer's HTTP port, e.g. `http://10.0.0.2:8069`.
    pub addr: String,
    /// Baton host name.
    pub host: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.host, self.addr)
    }
}

openraft::declare_raft_types!(
    /// Baton's Raft types: store commands in, their outcomes out.
    pub TypeConfig:
        D = Command,
        R = Option<Outcome>,
        NodeId = NodeId,
        Node = Peer,
        SnapshotData = snapfile::SnapshotFile,
);

/// The Raft handle.
pub type BatonRaft = openraft::Raft<TypeConfig>;

/// Raft error types, specialised.
pub mod typ {
    use super::{NodeId, Peer, TypeConfig};

    /// A Raft log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// Errors of a Raft API call.
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    /// Errors of an RPC to a peer.
    pub type RpcError<E = openraft::error::Infallible> =
        openraft::error::RPCError<NodeId, Peer, RaftError<E>>;
    /// Error of a client write.
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Peer>;
    /// Leader hint.
    pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, Peer>;
    /// Metrics.
    pub type Metrics = openraft::RaftMetrics<NodeId, Peer>;
}

/// Reads or creates this host's Raft identity in `<data_dir>/node-id`.
pub fn node_id(data_dir: &std::path::Path) -> std::io::Result<NodeId> {
    let p = data_dir.join("node-id");
    if let Ok(s) = std::fs::read_to_string(&p) {
        if let Ok(id) = s.trim().parse::<NodeId>() {
            return Ok(id);
        }
    }
    let mut b = [0u8; 8];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    // Keep ids positive in SQLite and readable in logs.
    let id = u64::from_le_bytes(b) >> 12 | 1;
    let tmp = data_dir.join("node-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    Ok(id)
}
