//! Bodies and query strings of the admin API (`/v1/...`), as the handlers in
//! [`crate::http::api`] answer them and the CLI reads them. Requests refuse unknown
//! fields, so a misspelt field is an error naming it rather than a silent no-op.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

use super::ErrorInfo;
use crate::blobs::Digest;
use crate::ownership::state::HostState;
use crate::store::{
    Artifact, Event, Host, MacAddr, Millis, Node, NodeFile, NodeId, ProvisionState, Reservation,
};

/// Largest page of a list (`limit`), and the page size when none is given: a plain
/// `GET /v1/nodes` lists up to this many nodes, as it always listed all of them.
pub const MAX_PAGE: usize = 10_000;

/// Response header of a list page that is not the last: the `cursor` of the next page.
/// The same page also carries `Link: <next page's URL>; rel="next"` (RFC 8288).
///
/// Lists page in a stable order (nodes by id, artifacts by digest), each page after
/// the previous page's last item, so an item present throughout is listed exactly once
/// even while others are added or removed.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// The `handoff` filter of [`NodeQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffFilter {
    /// Not moving.
    None,
    /// Migration in progress.
    Migrating,
}

/// The `profile` filter of [`NodeQuery`]: the kind of boot profile, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileFilter {
    /// No boot profile.
    None,
    /// Provisioning ramdisk.
    Deploy,
    /// The instance's own kernel.
    Instance,
    /// Boots its local disk.
    Local,
}

impl ProfileFilter {
    /// The profile kind ([`crate::store::BootProfile::kind`]); `None` for no profile.
    pub fn kind(self) -> Option<&'static str> {
        match self {
            ProfileFilter::None => None,
            ProfileFilter::Deploy => Some("deploy"),
            ProfileFilter::Instance => Some("instance"),
            ProfileFilter::Local => Some("local"),
        }
    }
}

/// `GET /v1/nodes?...`: which nodes to list (every filter given must match), one page
/// of them. Answered with a JSON array of [`Node`]s, by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeQuery {
    /// Only nodes owned by this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Only nodes of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Only nodes with this architecture hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Only nodes in this provision state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_state: Option<ProvisionState>,
    /// Only nodes migrating (`migrating`) or not (`none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffFilter>,
    /// Only nodes no live host could take over (`true`) or the others (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<bool>,
    /// Only nodes with this kind of boot profile (`none`: without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileFilter>,
    /// Only the node with this boot MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Most items in the answer (1..=[`MAX_PAGE`], default [`MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Where to continue: the [`NEXT_CURSOR_HEADER`] of the previous page (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `GET /v1/artifacts?...`: one page of the artifacts, by digest. Answered with a JSON
/// array of [`Artifact`]s.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactQuery {
    /// Only artifacts recorded under this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only artifacts this host holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Most items in the answer (1..=[`MAX_PAGE`], default [`MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Where to continue: the [`NEXT_CURSOR_HEADER`] of the previous page (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `POST /v1/nodes`: enroll a node on the host asked (which then owns it). Answered
/// with the [`Node`] (201).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Node id.
    pub id: String,
    /// Boot MACs (at least one).
    pub macs: Vec<MacAddr>,
    /// Group; default: the group of the host asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Architecture hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Addresses the node boots from, set by the operator: with `node_files =
    /// "bound"` they may fetch its files from whichever host owns it (no unspecified,
    /// multicast or broadcast address; at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
}

/// `PATCH /v1/nodes/{id}`: what to change (absent fields stay). Answered with the
/// [`Node`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// New set of boot MACs (the node's files are re-rendered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macs: Option<Vec<MacAddr>>,
    /// New group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// New architecture hint: absent keeps it, `null` clears it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub arch: Option<Option<String>>,
    /// New provision state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_state: Option<ProvisionState>,
    /// New set of operator-set addresses (see [`EnrollRequest::addresses`]); `[]`
    /// clears them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<IpAddr>>,
    /// Give the node a new boot token, its files re-rendered with it (`node_files =
    /// "token"`; the node needs a boot profile). A new provision state does too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rotate_token: bool,
    /// Refuse unless the node is still at this ownership epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_epoch: Option<u64>,
}

/// Absent stays `None`; `null` becomes `Some(None)`.
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `PUT /v1/nodes/{id}/profile`: what the node boots. Answered with the [`NodeDetail`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRequest {
    /// `deploy`, `instance`, `local` or `none`.
    pub kind: String,
    /// Kernel artifact (deploy and instance only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Digest>,
    /// Ramdisk artifact (deploy and instance only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramdisk: Option<Digest>,
    /// Kernel command line (deploy and instance only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// `GET /v1/nodes/{id}`: a node with its served files and live reservation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeDetail {
    /// The node (its fields at the top level).
    #[serde(flatten)]
    pub node: Node,
    /// Its served files (`GET /v1/nodes/{id}/files` gives the same list).
    pub files: Vec<NodeFile>,
    /// Its reservation, while live.
    pub reservation: Option<Reservation>,
    /// Who may fetch its files from the host that answered (absent from older hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<NodeAccess>,
    /// Its newest boot attempt, merged from every host (absent when none is recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::api::boots::BootSummary>,
}

/// Who may fetch a node's files, as the answering host sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAccess {
    /// `bound`, `open` or `token` (`node_files`).
    pub mode: String,
    /// Addresses this host learned from the node's own PXE exchanges (the ones the
    /// operator set are the node's `addresses`).
    pub addresses: Vec<String>,
    /// Node-file requests this host refused to other addresses.
    pub refused: u64,
    /// The last one: the address, and when (ms since the epoch).
    pub last_refused: Option<(String, i64)>,
    /// Why the last one was refused: `wrong_client`, `bad_token` or `no_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
}

/// `POST /v1/nodes/{id}/migrate`: move the node to another host of its group.
/// Answered with the [`Node`] (now `migrating`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// Target host.
    pub to: String,
}

/// Time to live of a reservation when none is given.
pub const DEFAULT_TTL_SECS: u64 = 60;

fn default_ttl() -> u64 {
    DEFAULT_TTL_SECS
}

/// `GET /v1/nodes/{id}/reservation`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationState {
    /// The live reservation, if any.
    pub reservation: Option<Reservation>,
    /// Newest fencing token issued for the node (0: never reserved).
    pub latest_token: u64,
}

/// `POST /v1/nodes/{id}/reservation`: take the node's lock. Answered with a
/// [`ReservationGrant`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// Who holds it (e.g. a conductor's name).
    pub holder: String,
    /// Seconds until it lapses unless renewed.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

/// `PUT /v1/nodes/{id}/reservation`: extend it. Answered with a [`ReservationGrant`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// Holder.
    pub holder: String,
    /// Fencing token from the grant.
    pub token: u64,
    /// New time to live in seconds.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

/// `DELETE /v1/nodes/{id}/reservation?holder=&token=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseQuery {
    /// Holder.
    pub holder: String,
    /// Fencing token from the grant.
    pub token: u64,
}

/// A reservation taken or renewed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationGrant {
    /// It, with its fencing token and expiry.
    pub reservation: Reservation,
}

/// `POST /v1/artifacts?name=&sha256=` (the content is the body).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UploadQuery {
    /// Name to record (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expected sha256: the upload is refused if the content differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// An artifact stored (201) or already there (200).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uploaded {
    /// The artifact as registered.
    pub artifact: Option<Artifact>,
    /// Whether this upload registered it.
    pub created: bool,
    /// Whether this upload replaced a damaged stored copy of the same content.
    #[serde(default)]
    pub repaired: bool,
}

/// `GET /v1/artifacts/{digest}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactDetail {
    /// The artifact.
    pub artifact: Artifact,
    /// Nodes whose files use it.
    pub nodes: Vec<String>,
    /// Whether the host asked holds its bytes.
    pub held_here: bool,
}

/// `GET /v1/events?since=&wait=&limit=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    pub since: u64,
    /// Seconds to wait for one when there is none yet (long-poll; 0: answer at once).
    #[serde(default)]
    pub wait: u64,
    /// Most events in one answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A page of the event feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventPage {
    /// Events after the cursor, oldest first.
    pub events: Vec<Event>,
    /// Cursor for the next page (`since`).
    pub last: u64,
}

/// One row of `GET /v1/hosts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    /// The host as registered.
    pub host: Host,
    /// Its state from its heartbeats.
    pub state: HostState,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: Millis,
    /// Nodes it owns.
    pub nodes: usize,
    /// Whether it is the host asked.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// `POST /v1/hosts/rebalance?dry_run=`: start a rebalance, or with `dry_run` only show
/// its plan.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceQuery {
    /// Only show the plan; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `GET`, `POST` and `DELETE /v1/hosts/rebalance`: what a rebalance moves (or still has
/// to move) and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebalanceView {
    /// A rebalance is active: the leader migrates nodes toward the targets.
    pub active: bool,
    /// This request started (POST) or stopped (DELETE) it.
    pub changed: bool,
    /// The plan only (nothing changed).
    pub dry_run: bool,
    /// Migrations in progress now (whatever started them).
    pub in_flight: usize,
    /// Most migrations a rebalance or drain keeps in progress at once
    /// (`max_concurrent_migrations`).
    pub max_concurrent: usize,
    /// Most nodes one host may own (`max_nodes_per_host`), if limited.
    pub max_nodes_per_host: Option<usize>,
    /// Per group, the hosts that take nodes with their node counts now and after.
    pub groups: Vec<RebalanceGroup>,
    /// Every move left, best first.
    pub moves: Vec<crate::ownership::rebalance::Move>,
}

/// One group of a [`RebalanceView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebalanceGroup {
    /// The group.
    pub group: String,
    /// Its hosts that take nodes (up, not draining).
    pub hosts: Vec<RebalanceHost>,
}

/// One host of a [`RebalanceGroup`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RebalanceHost {
    /// Host name.
    pub host: String,
    /// Nodes it owns now (a node migrating counts at its target).
    pub nodes: usize,
    /// Nodes it owns once every move is made.
    pub after: usize,
}

/// `POST /v1/hosts/{host}/drain` and `/undrain`: the host after the change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostChanged {
    /// The host.
    pub host: Option<Host>,
}

/// `DELETE /v1/hosts/{host}?id=`: only this Raft identity of the host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveHostQuery {
    /// Raft identity; default: all of the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<NodeId>,
}

/// A host taken out of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRemoved {
    /// Raft identities removed.
    pub removed: Vec<NodeId>,
    /// The host.
    pub host: String,
}

/// `GET /v1/status`: the host asked, its store, transfers and cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// Host name.
    pub host: String,
    /// Its group.
    pub group: String,
    /// Baton version.
    pub version: String,
    /// Store schema version.
    pub schema_version: u32,
    /// Nodes in the store.
    pub nodes: usize,
    /// Nodes this host owns.
    pub owned_nodes: usize,
    /// Artifacts in the store.
    pub artifacts: usize,
    /// Size of the store's database file.
    pub store_bytes: u64,
    /// Newest applied event.
    pub last_event: u64,
    /// The cluster as this host sees it.
    pub cluster: ClusterView,
    /// TFTP transfer counters.
    pub tftp: TftpTotals,
}

/// TFTP transfer counters of `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TftpTotals {
    /// Transfers in progress.
    pub active: i64,
    /// Transfers completed.
    pub completed: u64,
    /// Bytes sent.
    pub bytes: u64,
}

/// `GET /v1/cluster`: the replicated log as this host sees it, with the leader's view
/// of each member's progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// This host's Raft identity.
    pub node_id: NodeId,
    /// Its Raft state (`Leader`, `Follower`, `Candidate`, `Learner`...).
    pub state: String,
    /// Current term.
    pub term: u64,
    /// Leader's identity, if known.
    pub leader: Option<NodeId>,
    /// Leader's host name, if known.
    pub leader_host: Option<String>,
    /// Newest log index here.
    pub last_log_index: Option<u64>,
    /// Newest applied index here.
    pub applied_index: Option<u64>,
    /// Index of the newest snapshot here.
    pub snapshot_index: Option<u64>,
    /// Whether clustering is enabled (a cluster secret is set).
    pub clustered: bool,
    /// Members.
    pub members: Vec<MemberView>,
    /// Artifact replication to this host.
    pub artifact_replication: ReplicationStatus,
}

/// What a member is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// The current leader.
    Leader,
    /// A voter that does not lead.
    Voter,
    /// Receives the log, does not vote (a host catching up while it joins).
    Learner,
}

impl MemberRole {
    /// Label.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Leader => "leader",
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

/// One member of [`ClusterView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    /// Raft identity.
    pub node_id: NodeId,
    /// Host name.
    pub host: String,
    /// Base URL peers reach it at.
    pub addr: String,
    /// Its role.
    pub role: MemberRole,
    /// Log index the leader knows it to hold (unknown when the leader is unreachable).
    pub matched_index: Option<u64>,
    /// How far it is behind the leader's log.
    pub lag: Option<u64>,
    /// Applied index (only known for the host asked).
    pub applied_index: Option<u64>,
    /// Whether it is the host asked.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// Progress of artifact replication to a host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

/// `POST /v1/nodes:import`: bulk enrollment. The body is the import file itself (CSV
/// or JSON lines, see [`ImportRecord`]), streamed; the answer is an [`ImportReport`]
/// (JSON), or with `Accept: application/x-ndjson` a stream of [`ImportMessage`] lines:
/// progress while the import runs, the report last. (A custom method rather than
/// `/v1/nodes/import`, which would hide a node named `import`.)
pub const IMPORT_PATH: &str = "/v1/nodes:import";

/// Largest import body: about 300,000 nodes of CSV. Larger files are split by the
/// operator (re-running an import is harmless).
pub const IMPORT_MAX_BYTES: u64 = 64 << 20;

/// Longest line of an import file.
pub const IMPORT_MAX_LINE: usize = 16 << 10;

/// Media type of JSON lines, as body and as the streamed answer.
pub const NDJSON: &str = "application/x-ndjson";

/// `POST /v1/nodes:import?format=`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// File format; default: `csv` for a `text/csv` body, else `jsonl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImportFormat>,
}

/// Format of an import file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportFormat {
    /// Comma-separated values: a header line naming the columns (`id`, `macs`, `group`,
    /// `arch`, `kind`, `kernel`, `ramdisk`, `cmdline`, `addresses`; any order, any
    /// subset with `id` and `macs`), or no header and the columns in that order.
    /// Several MACs or addresses in one field are separated by spaces, `;` or `|`.
    /// Empty fields are absent (an `addresses` field of just `-` clears them).
    Csv,
    /// One [`ImportRecord`] JSON object per line.
    Jsonl,
}

/// One node of an import file: what it should be. Blank lines and lines starting with
/// `#` are skipped. Absent fields leave an existing node's values alone (a new node
/// gets the importing host's group, no architecture, no profile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// Node id.
    pub id: String,
    /// Its complete set of boot MACs.
    pub macs: Vec<MacAddr>,
    /// Group (L2 segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Architecture hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Its operator-set addresses (see [`EnrollRequest::addresses`]); `[]` clears them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<IpAddr>>,
    /// What it boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ImportProfileSpec>,
}

/// The profile of an [`ImportRecord`]: as [`ProfileRequest`], with kernel and ramdisk
/// given by sha256 or by the name of an uploaded artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportProfileSpec {
    /// `deploy`, `instance`, `local` or `none` (removes the profile).
    pub kind: String,
    /// Kernel: sha256 or artifact name (deploy and instance only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Ramdisk: sha256 or artifact name (deploy and instance only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramdisk: Option<String>,
    /// Kernel command line (deploy and instance only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// How many lines of an import did what, so far or in the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCounts {
    /// Node lines read (blank lines, comments and the CSV header not counted).
    pub lines: u64,
    /// New nodes.
    pub created: u64,
    /// Existing nodes changed.
    pub updated: u64,
    /// Existing nodes that already were as the file says.
    pub unchanged: u64,
    /// Lines refused (see [`ImportReport::failures`]).
    pub failed: u64,
}

/// A line of an import that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportFailure {
    /// Line number in the file (1-based).
    pub line: u64,
    /// Node id, when the line got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Machine-readable reason (`invalid`, `mac_in_use`, `unknown_artifact`...).
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// A node an import changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportUpdate {
    /// Line number in the file.
    pub line: u64,
    /// The node.
    pub node: String,
    /// What changed: `macs`, `group`, `arch`, `addresses`, `profile`.
    pub fields: Vec<String>,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Totals.
    #[serde(flatten)]
    pub counts: ImportCounts,
    /// Every refused line, by line number.
    pub failures: Vec<ImportFailure>,
    /// Every changed node, by line number.
    pub updated_nodes: Vec<ImportUpdate>,
    /// Log entries the import committed (each carries many nodes).
    pub log_entries: u64,
    /// Bytes of the import file read.
    pub bytes: u64,
    /// Time the import took, in milliseconds.
    pub elapsed_ms: u64,
    /// Why the import stopped before the end of the file, if it did: what was
    /// committed before stays (re-run the import to finish it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// One line of a streamed import answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImportMessage {
    /// Where the import is (after each committed log entry).
    Progress(ImportCounts),
    /// The end.
    Report(ImportReport),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_keeps_absent_apart_from_null() {
        let keep: UpdateRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(keep.arch, None);
        let clear: UpdateRequest = serde_json::from_str(r#"{"arch": null}"#).unwrap();
        assert_eq!(clear.arch, Some(None));
        // And the client sends what it means.
        assert_eq!(serde_json::to_string(&keep).unwrap(), "{}");
        assert_eq!(serde_json::to_string(&clear).unwrap(), r#"{"arch":null}"#);
    }

    #[test]
    fn node_addresses_are_text_kept_cleared_or_refused() {
        let keep: UpdateRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(keep.addresses, None);
        let clear: UpdateRequest = serde_json::from_str(r#"{"addresses": []}"#).unwrap();
        assert_eq!(clear.addresses, Some(vec![]));
        let set: UpdateRequest =
            serde_json::from_str(r#"{"addresses": ["10.0.0.5", "fd00::5"]}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&set).unwrap(),
            r#"{"addresses":["10.0.0.5","fd00::5"]}"#
        );
        assert!(serde_json::from_str::<UpdateRequest>(r#"{"addresses": ["x"]}"#).is_err());
        let e: EnrollRequest =
            serde_json::from_str(r#"{"id": "n1", "macs": ["52:54:00:00:00:01"]}"#).unwrap();
        assert!(e.addresses.is_empty());
        assert!(!serde_json::to_string(&e).unwrap().contains("addresses"));
    }

    #[test]
    fn self_is_the_wire_name() {
        let m = MemberView {
            node_id: 7,
            host: "h1".into(),
            addr: "http://127.0.0.1:1".into(),
            role: MemberRole::Leader,
            matched_index: None,
            lag: Some(0),
            applied_index: None,
            is_self: true,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["self"], true);
        assert_eq!(v["role"], "leader");
        assert_eq!(v["matched_index"], serde_json::Value::Null);
    }
}
