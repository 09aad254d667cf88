//! Bodies of the boot timeline and the status page: `GET /v1/nodes/{id}/boots`,
//! `GET /v1/overview`, `POST /boot/{node}/done`, and the peer routes under
//! [`crate::api::peer::BOOTS`] that each host answers from its own records.

use serde::{Deserialize, Serialize};

use crate::boots::{Attempt, BootRecord, Health, Stuck, Transfer};
use crate::clock::Millis;
use crate::store::Event;

/// Most attempts `GET /v1/nodes/{id}/boots` returns.
pub const MAX_ATTEMPTS: usize = 50;
/// Records each host sends for one node at most (the newest).
pub const MAX_NODE_RECORDS: usize = 2000;

/// `GET /v1/nodes/{id}/boots?attempts=N`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootsQuery {
    /// How many of the newest attempts (default 5, at most [`MAX_ATTEMPTS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<usize>,
}

/// A host's answer when asked for its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAnswer {
    /// The host.
    pub host: String,
    /// Records (or nodes) it contributed.
    pub records: usize,
    /// Why it did not answer, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/nodes/{id}/boots`: a node's boot attempts, merged from every host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeBoots {
    /// The node.
    pub node: String,
    /// Its newest attempts, oldest first, each with its steps.
    pub attempts: Vec<Attempt>,
    /// Its transfers in progress, on any host.
    pub transfers: Vec<Transfer>,
    /// Every host asked, with what it contributed.
    pub hosts: Vec<HostAnswer>,
}

impl NodeBoots {
    /// The newest attempt's health, and the stuck details if it is stuck.
    pub fn summary(&self) -> Option<BootSummary> {
        let a = self.attempts.last()?;
        let last = a.last_step().map(|s| s.record.clone());
        Some(BootSummary {
            started: a.started,
            health: a.health.clone(),
            last,
            time_to_boot_ms: a.time_to_boot_ms,
        })
    }
}

/// The newest boot attempt of a node, in short (`node show`, the status page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSummary {
    /// When it started.
    pub started: Millis,
    /// How it stands (stuck, with why).
    pub health: Health,
    /// Its last record.
    pub last: Option<BootRecord>,
    /// Time to boot, once known.
    pub time_to_boot_ms: Option<u64>,
}

/// `POST /boot/{node}/done`: the booted OS reports (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoneReport {
    /// A short note (e.g. the image booted), kept with the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer to a [`DoneReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneRecorded {
    /// The node.
    pub node: String,
    /// The host that recorded it.
    pub host: String,
    /// When.
    pub at: Millis,
}

/// `GET /cluster/boots/{node}`: one host's records of a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerNodeRecords {
    /// The host answering.
    pub host: String,
    /// Its newest records of the node, oldest first.
    pub records: Vec<BootRecord>,
    /// Its transfers of the node in progress.
    pub transfers: Vec<Transfer>,
}

/// `GET /cluster/boots`: one host's newest record of every node, its stuck flags and
/// its transfers in progress (the status page).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerBootSummary {
    /// The host answering.
    pub host: String,
    /// Its newest record of each node it has records of.
    pub latest: Vec<BootRecord>,
    /// Nodes it flagged stuck.
    pub stuck: Vec<(String, Stuck)>,
    /// Its transfers in progress.
    pub transfers: Vec<Transfer>,
}

/// `GET /v1/overview?q=&limit=`: which nodes the status page shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    /// Only nodes whose id, MAC, owner, group or last stage contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// At most this many nodes (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Events after this sequence number (default: the newest 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// One host on the status page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRow {
    /// Name.
    pub name: String,
    /// Group.
    pub group: String,
    /// `up`, `suspect`, `down`, `draining`.
    pub state: String,
    /// Milliseconds since its last committed heartbeat.
    pub lease_age_ms: i64,
    /// Nodes it owns.
    pub owned_nodes: usize,
    /// Artifacts it holds.
    pub artifacts_held: usize,
    /// Whether it leads the cluster.
    pub leader: bool,
    /// Whether it answered this page.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// One node on the status page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    /// Id.
    pub id: String,
    /// Group.
    pub group: String,
    /// Boot MACs.
    pub macs: Vec<String>,
    /// Owner.
    pub owner: String,
    /// Ownership epoch.
    pub epoch: u64,
    /// `none`, or `migrating to HOST`.
    pub handoff: String,
    /// Provision state.
    pub provision_state: String,
    /// Boot profile kind.
    pub profile: String,
    /// Its newest boot record on any host.
    pub last: Option<BootRecord>,
    /// Why its boot is stuck, if a host flagged it.
    pub stuck: Option<Stuck>,
}

/// `GET /v1/overview`: what the status page shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overview {
    /// The host answering.
    pub host: String,
    /// Its wall clock.
    pub now: Millis,
    /// Every host.
    pub hosts: Vec<HostRow>,
    /// The nodes asked for.
    pub nodes: Vec<NodeRow>,
    /// Nodes in all.
    pub nodes_total: usize,
    /// Nodes matching the search.
    pub nodes_matched: usize,
    /// Transfers in progress on every host.
    pub transfers: Vec<Transfer>,
    /// The newest events (or those after `since`), oldest first.
    pub events: Vec<Event>,
    /// Newest event sequence number.
    pub last_event: u64,
    /// Hosts whose boot records could not be read now.
    pub unreachable: Vec<HostAnswer>,
}
