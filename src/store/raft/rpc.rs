//! The peer routes (`/cluster/...`) hosts of one cluster call on each other's HTTP port,
//! as the HTTP driver answers them and [`super::peer`] calls them: paths, headers, body
//! limits and the bodies that are Baton's own (Raft messages are openraft's), plus the
//! error body every refusal carries, on `/cluster` and `/v1` alike
//! (`{"error": {"code", "message", "field"?, "details"?}}`). Plain serde types: no I/O.

use serde::{Deserialize, Serialize};

use crate::store::{NodeId, Outcome};

/// Header carrying the cluster secret on every peer request.
pub const SECRET_HEADER: &str = "x-baton-cluster-secret";
/// Header naming the Raft identity a request is meant for: a host that rejoined at the
/// same address under a new identity must not take its old identity's messages.
pub const TARGET_HEADER: &str = "x-baton-target-node";

/// Raft `AppendEntries` (openraft's request and `Result` bodies).
pub const APPEND: &str = "/cluster/raft/append";
/// Raft `Vote`.
pub const VOTE: &str = "/cluster/raft/vote";
/// Pre-vote: "would you vote for me?", asked before a real election.
pub const PREVOTE: &str = "/cluster/raft/prevote";
/// Raft `InstallSnapshot`.
pub const SNAPSHOT: &str = "/cluster/raft/snapshot";
/// A write forwarded to the leader: a [`crate::store::Command`] in, a
/// `Result<`[`Proposed`]`, `[`ProposeRefused`]`>` out.
pub const PROPOSE: &str = "/cluster/propose";
/// A host asking to join: [`JoinRequest`] in, [`Joined`] out.
pub const JOIN: &str = "/cluster/join";
/// Members taken out: [`RemoveRequest`] in, [`Removed`] out.
pub const REMOVE: &str = "/cluster/remove";
/// The host's Raft metrics (openraft's `RaftMetrics`).
pub const METRICS: &str = "/cluster/metrics";
/// A blob by digest (`/cluster/blob/{digest}`), with `Range`.
pub const BLOB: &str = "/cluster/blob";
/// This host's wall clock, for `baton doctor`'s skew check.
pub const CLOCK: &str = "/cluster/clock";
/// This host's boot records: `/cluster/boots` (the newest of every node, stuck flags,
/// transfers: [`crate::api::boots::PeerBootSummary`]) and `/cluster/boots/{node}`
/// ([`crate::api::boots::PeerNodeRecords`]).
pub const BOOTS: &str = "/cluster/boots";

// Body limits. Each route takes bodies up to the largest one the code produces, and no
// larger: the sender ([`crate::store::raft::peer::PeerClient`]) refuses to send more,
// the receiver answers 413 to more. GET routes read no body.

/// Largest command one log entry carries, as JSON bytes: a write over this is refused
/// when proposed (413), before it reaches the log. Bulk changes are split into
/// commands of at most this size.
pub const ENTRY_MAX: usize = 1 << 20;
/// Bytes of stored entries the leader packs into one `AppendEntries` (at least one
/// entry, whatever its size): a batch moves and is made durable well within one
/// heartbeat interval, which is openraft's deadline for it.
pub const APPEND_BATCH: usize = 1 << 20;
/// Room for everything around entries and snapshot chunks (votes, log ids,
/// membership, framing): a membership of hundreds of hosts fits.
pub const ENVELOPE_MAX: usize = 64 << 10;
/// Largest `AppendEntries` body: a batch, or one entry of [`ENTRY_MAX`], with its
/// envelope (CBOR is never longer than the JSON a size was checked in, but for a few
/// bytes of length prefix per long string).
pub const APPEND_BODY_MAX: usize = max(APPEND_BATCH, ENTRY_MAX) + ENVELOPE_MAX;
/// Bytes of snapshot data per `InstallSnapshot` chunk.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Largest `InstallSnapshot` body: length prefix, envelope, one chunk.
pub const SNAPSHOT_BODY_MAX: usize = 4 + ENVELOPE_MAX + SNAPSHOT_CHUNK;
/// Largest forwarded write: one command of [`ENTRY_MAX`] and its envelope.
pub const PROPOSE_BODY_MAX: usize = ENTRY_MAX + ENVELOPE_MAX;
/// Largest body of the small JSON routes: vote, pre-vote, join, remove.
pub const SMALL_BODY_MAX: usize = ENVELOPE_MAX;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// The body limit of a POST peer route (`None`: not a POST route).
pub fn body_limit(route: &str) -> Option<usize> {
    Some(match route {
        APPEND => APPEND_BODY_MAX,
        SNAPSHOT => SNAPSHOT_BODY_MAX,
        PROPOSE => PROPOSE_BODY_MAX,
        VOTE | PREVOTE | JOIN | REMOVE => SMALL_BODY_MAX,
        _ => return None,
    })
}

/// A host asking to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Its Raft identity.
    pub node_id: NodeId,
    /// How peers reach it.
    pub addr: String,
    /// Its Baton host name.
    pub host: String,
}

/// A host that joined, now a voter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    /// Its Raft identity.
    pub joined: NodeId,
}

/// Which members to take out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    /// Raft identities to remove.
    pub node_ids: Vec<NodeId>,
}

/// Members taken out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removed {
    /// Raft identities removed.
    pub removed: Vec<NodeId>,
}

/// The `details` of a membership call refused by a host that does not lead (409): where
/// the caller should retry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotLeader {
    /// The leader's base URL, if known.
    pub leader: Option<String>,
}

/// A forwarded write, committed: its outcome and log index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposed {
    /// Outcome of applying it.
    pub outcome: Outcome,
    /// Log index it was committed at.
    pub index: u64,
}

/// Why the leader did not take a forwarded write (then the sender retries).
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}")]
pub struct ProposeRefused {
    /// Why.
    pub reason: String,
}

/// "Would you vote for me?", sent before a real election.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The candidate.
    pub candidate: crate::store::types::NodeId,
    /// The candidate's last log id.
    pub last_log_id: Option<openraft::LogId<crate::store::types::NodeId>>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    /// Whether this voter would vote for the candidate now.
    pub granted: bool,
    /// Why not, when refused.
    pub reason: Option<String>,
}

/// A host's identity, wall clock and view of the membership (`GET /cluster/clock`):
/// `baton doctor` measures clock skew between hosts with it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClockReply {
    /// Baton host name.
    pub host: String,
    /// Raft identity.
    pub node_id: crate::store::types::NodeId,
    /// Wall clock, milliseconds since the Unix epoch, read as the request is answered.
    pub now_ms: crate::store::Millis,
    /// Cluster members as this host sees them.
    pub members: std::collections::BTreeMap<crate::store::types::NodeId, crate::store::raft::Peer>,
    /// Who this host serves node files to (`node_files`: `open`, `bound` or `token`), so
    /// `baton doctor` finds hosts that disagree; absent from hosts older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_files: Option<String>,
}

/// A refusal, as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was refused.
    pub error: ErrorInfo,
}

/// What was refused and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Short machine-readable code (`conflict`, `not_found`, `unavailable`...), also the
    /// metrics label.
    pub code: String,
    /// What is wrong and what to do, for a person.
    pub message: String,
    /// The offending request field, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Machine-readable details (the current fencing token, the leader's address...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    /// A refusal with `code` and `message` only.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorInfo {
                code: code.into(),
                message: message.into(),
                field: None,
                details: None,
            },
        }
    }
}
