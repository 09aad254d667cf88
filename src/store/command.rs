//! Every write to the store, as a typed, serde-serializable command, and what applying it
//! produced.
//!
//! A command is the unit the replicated log will carry: it holds everything needed to
//! apply it (including the proposer's timestamp `at`), so applying the same command list
//! on any replica yields the same database. Business failures are [`Rejection`]s inside
//! an `Ok` [`Outcome`]: a rejected command is a normal, deterministic result of the state
//! machine, not an error of it.

use std::net::IpAddr;

use crate::blobs::Digest;

use super::types::{
    ip_text, BootProfile, HandoffState, MacAddr, Millis, ProvisionState, RequestId, TransferReason,
};
use super::Reservation;
use crate::wire::token::BootToken;

/// One served file of a node, as carried by [`Command::SetBootProfile`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSpec {
    /// Served path (TFTP and HTTP), e.g. `pxelinux.cfg/01-52-54-00-ec-33-81`.
    pub path: String,
    /// Artifact the path serves.
    pub digest: Digest,
    /// The artifact's size (registers it if it is new, checks it otherwise).
    pub size: u64,
    /// The proposing host holds the blob (a file it rendered, or an artifact it has);
    /// false for a kernel or ramdisk it only knows by digest.
    #[serde(default = "yes")]
    pub held: bool,
    /// The file's content, for a small rendered file: kept in the store itself so every
    /// replica can serve it at once (at most [`INLINE_MAX`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One node of a [`Command::ImportNodes`]: what the node should be after the import.
/// Absent fields leave an existing node's value alone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportItem {
    /// Node id.
    pub node: String,
    /// Its complete set of boot MACs.
    pub macs: Vec<MacAddr>,
    /// Group; absent: the command's group for a new node, unchanged for an existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Architecture hint; absent: none for a new node, unchanged for an existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Its operator-set addresses (as [`Command::SetNodeAddresses`]; empty clears
    /// them); absent: none for a new node, unchanged for an existing one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "ip_text::option"
    )]
    pub addresses: Option<Vec<IpAddr>>,
    /// New boot profile with the node's complete rendered file set (as in
    /// [`Command::SetBootProfile`]); absent: the profile stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ImportProfile>,
}

/// The profile part of an [`ImportItem`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportProfile {
    /// The profile; `None` removes it (and `files` is then empty).
    pub profile: Option<BootProfile>,
    /// The node's complete file set, rendered for the item's MACs, group and arch.
    pub files: Vec<FileSpec>,
    /// The boot token `files` carry (as in [`Command::SetBootProfile`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_token: Option<BootToken>,
}

/// What importing one [`ImportItem`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ImportResult {
    /// A new node, with its profile if one was given.
    Created {
        /// The node.
        node: String,
    },
    /// An existing node changed.
    Updated {
        /// The node.
        node: String,
        /// What changed: `macs`, `group`, `arch`, `addresses`, `profile` (files count
        /// as profile).
        fields: Vec<String>,
    },
    /// An existing node already was exactly this.
    Unchanged {
        /// The node.
        node: String,
    },
    /// Refused; nothing of this item applied (the others did).
    Failed {
        /// The node.
        node: String,
        /// Why.
        rejection: Rejection,
    },
}

/// Largest file carried inline in a [`Command::SetBootProfile`].
pub const INLINE_MAX: usize = 64 * 1024;

/// Most digests in one [`Command::RecordHostArtifacts`].
pub const MAX_RECORDED: usize = 4096;

/// Most steps in one [`Command::OwnershipSteps`].
pub const MAX_STEPS: usize = 1000;

impl Command {
    /// Whether the command may be a step of [`Command::OwnershipSteps`]: a change of one
    /// node's ownership or handoff state.
    pub fn is_ownership_step(&self) -> bool {
        matches!(
            self,
            Command::TransferOwnership { .. }
                | Command::BeginMigration { .. }
                | Command::AbortMigration { .. }
                | Command::FlagNode { .. }
        )
    }
}

fn yes() -> bool {
    true
}

/// A state change, applied deterministically by [`super::apply::apply`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Adds a host, or updates its group and addresses.
    RegisterHost {
        /// Host name (key).
        name: String,
        /// L2 segment the host serves; nodes of the same group may move to it.
        group: String,
        /// Addresses peers and nodes reach it on.
        addresses: Vec<String>,
        /// Proposer's time.
        at: Millis,
    },
    /// Records that a host is alive. Not logged as an event (it would flood the feed).
    Heartbeat {
        /// The host.
        host: String,
        /// Proposer's time.
        at: Millis,
        /// Newest event the host's replica had applied when it proposed this: confirms
        /// every migration flip away from it up to that event (clears their fences).
        #[serde(default)]
        seen: u64,
    },
    /// Adds a node owned by `owner` at epoch 1 (a single host owns all it enrolls).
    EnrollNode {
        /// Node id, used in paths (`nodes/<node>/kernel`).
        node: String,
        /// Its boot MAC addresses.
        macs: Vec<MacAddr>,
        /// Group (L2 segment).
        group: String,
        /// Architecture hint (`x86_64`, `aarch64`, …) for the boot-file choice.
        arch: Option<String>,
        /// Owning host.
        owner: String,
        /// Proposer's time.
        at: Millis,
    },
    /// Changes a node's descriptive fields; `None` leaves a field unchanged. After a
    /// MAC change the proposer re-renders the node's boot files.
    UpdateNode {
        /// The node.
        node: String,
        /// New MAC set.
        macs: Option<Vec<MacAddr>>,
        /// New group.
        group: Option<String>,
        /// New architecture hint (`Some(None)` clears it). Absent in JSON when
        /// unchanged, `null` when cleared: both survive the replicated log.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "double_option"
        )]
        arch: Option<Option<String>>,
        /// Refuse if the node's epoch moved on.
        expected_epoch: Option<u64>,
        /// Proposer's time.
        at: Millis,
    },
    /// Sets the addresses the operator gives a node as its own (replacing any set
    /// before; empty clears them): with `node_files = "bound"` they may fetch the
    /// node's files from whichever host owns it. Checked by
    /// [`super::types::node_addresses`]; an address set on another node is refused.
    SetNodeAddresses {
        /// The node.
        node: String,
        /// Its addresses.
        #[serde(with = "ip_text")]
        addresses: Vec<IpAddr>,
        /// Proposer's time.
        at: Millis,
    },
    /// Deletes a node with its MACs, files and reservation; refused while reserved.
    RemoveNode {
        /// The node.
        node: String,
        /// Proposer's time.
        at: Millis,
    },
    /// Moves a node in its provisioning life cycle.
    SetProvisionState {
        /// The node.
        node: String,
        /// New state.
        state: ProvisionState,
        /// Refuse if the node's epoch moved on.
        expected_epoch: Option<u64>,
        /// Proposer's time.
        at: Millis,
    },
    /// Sets what a node boots and replaces its whole served namespace with `files`.
    ///
    /// The proposer rendered the files and stored them as blobs; new artifacts among
    /// `files` are registered as held by `host`. The kernel and ramdisk of a kernel
    /// profile must be registered artifacts and must appear among `files`.
    SetBootProfile {
        /// The node.
        node: String,
        /// New profile; `None` removes it (and `files` should then be empty).
        profile: Option<BootProfile>,
        /// The node's complete file set after the command.
        files: Vec<FileSpec>,
        /// The boot token `files` put in their node-file URLs: the node's token from
        /// now on (`None`: they carry none, and the node has none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot_token: Option<BootToken>,
        /// Host that holds the rendered blobs.
        host: String,
        /// Refuse if the node's epoch moved on.
        expected_epoch: Option<u64>,
        /// Proposer's time.
        at: Millis,
    },
    /// Sets the whole served namespace of a node whose boot files another tool writes
    /// (a provisioning tool's TFTP tree, ingested by `crate::ingest`), and records that
    /// tool as the node's `source`. Refused for a node with a boot profile: its files
    /// are Baton's to render. No epoch check: the files are the tool's, whoever owns
    /// the node serves them.
    SetNodeFiles {
        /// The node.
        node: String,
        /// The node's complete file set after the command.
        files: Vec<FileSpec>,
        /// Who wrote the files, e.g. `ingest:h1:/tftpboot`.
        source: String,
        /// Host that holds the blobs.
        host: String,
        /// Proposer's time.
        at: Millis,
    },
    /// Starts an operator migration to host `to`; the owner keeps serving until
    /// [`Command::TransferOwnership`].
    BeginMigration {
        /// The node.
        node: String,
        /// Target host.
        to: String,
        /// The epoch the proposer saw.
        expected_epoch: u64,
        /// Proposer's time.
        at: Millis,
    },
    /// Cancels a pending migration.
    AbortMigration {
        /// The node.
        node: String,
        /// The epoch the proposer saw.
        expected_epoch: u64,
        /// Proposer's time.
        at: Millis,
    },
    /// Marks a host as draining (its nodes are moved away) or not.
    SetDraining {
        /// The host.
        host: String,
        /// Draining or not.
        draining: bool,
        /// Proposer's time.
        at: Millis,
    },
    /// Records why a node cannot be taken over (`None` clears it).
    FlagNode {
        /// The node.
        node: String,
        /// Why, for `baton node show` and metrics.
        stuck: Option<String>,
        /// Proposer's time.
        at: Millis,
    },
    /// Makes `to` the owner, bumps the epoch and clears any migration.
    TransferOwnership {
        /// The node.
        node: String,
        /// New owner.
        to: String,
        /// The epoch the proposer saw; a stale one is refused (fencing).
        expected_epoch: u64,
        /// Why (recorded in the event).
        reason: TransferReason,
        /// Proposer's time.
        /// Takeover fence: refused unless the current owner's last heartbeat is older
        /// than this (its lease had expired when the proposer decided).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stale_before: Option<Millis>,
        at: Millis,
    },
    /// Registers an artifact (if new) and records that `host` holds its blob.
    RegisterArtifact {
        /// Content digest.
        digest: Digest,
        /// Size in bytes.
        size: u64,
        /// Human-readable name (file name at import).
        name: String,
        /// Host holding the blob.
        host: String,
        /// Proposer's time.
        at: Millis,
    },
    /// Records that `host` now holds (or no longer holds) an artifact's blob.
    RecordHostArtifact {
        /// The host.
        host: String,
        /// The artifact.
        digest: Digest,
        /// Holds it or not.
        present: bool,
        /// Proposer's time.
        at: Millis,
    },
    /// Forgets an artifact; refused while a node file references it. Each host deletes
    /// its blob once this applied.
    RemoveArtifact {
        /// The artifact.
        digest: Digest,
        /// Proposer's time.
        at: Millis,
    },
    /// Takes a node's lock for `ttl_ms`. A free or expired lock gets a new fencing token;
    /// the live holder re-acquiring keeps its token and extends the expiry.
    AcquireReservation {
        /// The node.
        node: String,
        /// Who asks (conductor, operator, host).
        holder: String,
        /// Lifetime from `at`.
        ttl_ms: u64,
        /// Proposer's time.
        at: Millis,
    },
    /// Extends a live reservation held by `holder` with `token`.
    RenewReservation {
        /// The node.
        node: String,
        /// The holder.
        holder: String,
        /// Its fencing token.
        token: u64,
        /// New lifetime from `at`.
        ttl_ms: u64,
        /// Proposer's time.
        at: Millis,
    },
    /// Drops a reservation held by `holder` with `token`.
    ReleaseReservation {
        /// The node.
        node: String,
        /// The holder.
        holder: String,
        /// Its fencing token.
        token: u64,
        /// Proposer's time.
        at: Millis,
    },
    /// Boot stuck-flag transitions one host saw for nodes it serves, as events of the
    /// feed (`boot_stuck`, `boot_recovered`). Boot records themselves stay off the log
    /// (see `crate::boots`); only these transitions, batched per detector pass, enter it.
    BootNotices {
        /// The host that saw them.
        host: String,
        /// The transitions (nodes no longer known are skipped).
        notices: Vec<BootNotice>,
        /// Proposer's time.
        at: Millis,
    },
    /// Records that `host` holds the blobs `digests` (fetched by artifact replication):
    /// one entry per batch of fetched blobs instead of one per blob. Digests no longer
    /// registered (removed meanwhile) are skipped and reported. Small rendered files
    /// kept in the store need no record: every replica holds them.
    RecordHostArtifacts {
        /// The host.
        host: String,
        /// The blobs it now holds (at most [`MAX_RECORDED`]).
        digests: Vec<Digest>,
        /// Proposer's time.
        at: Millis,
    },
    /// The reconciler's ownership changes of one round, many nodes per log entry. Each
    /// step ([`Command::TransferOwnership`], [`Command::BeginMigration`],
    /// [`Command::AbortMigration`] or [`Command::FlagNode`]) is checked and applied on
    /// its own, with its own fencing (epoch, lease) and its own event, so one refused step
    /// leaves the others applied (unlike [`Command::Batch`]).
    OwnershipSteps {
        /// The steps, in order (at most [`MAX_STEPS`]).
        steps: Vec<Command>,
    },
    /// Starts (`active`) or ends a rebalance: while one is active the leader's
    /// reconciler migrates nodes toward even placement, a few at a time, and ends it when
    /// nothing is left to move.
    SetRebalance {
        /// Start or end.
        active: bool,
        /// Proposer's time.
        at: Millis,
    },
    /// Applies `commands` in order, all or nothing: the first rejection rolls back the
    /// whole batch. Used where two changes must land together, e.g. a MAC change and
    /// the re-rendered files for the new MACs. Batches do not nest.
    Batch {
        /// The commands.
        commands: Vec<Command>,
    },
    /// Creates or updates many nodes in one log entry (bulk enrollment). Each item is
    /// applied on its own: a refused item leaves no trace and the others still apply,
    /// so an import re-run with the same content changes nothing.
    ImportNodes {
        /// Importing host: owns the nodes it creates, holds their rendered blobs.
        host: String,
        /// Group of new nodes that name none (the importing host's).
        group: String,
        /// The nodes, applied in order.
        nodes: Vec<ImportItem>,
        /// Proposer's time.
        at: Millis,
    },
    /// Applies `command` at most once per `request`: a retry of a write whose answer was
    /// lost (the leader died after committing it, a forward timed out) gets the outcome
    /// of the first application instead of being applied again. The proposer tags every
    /// write it sends; tagged commands do not nest and are not batched.
    Idempotent {
        /// Chosen by the proposer, the same on every retry.
        request: RequestId,
        /// Proposer's time of the first attempt: ages the request's record out.
        at: Millis,
        /// The write.
        command: Box<Command>,
    },
}

/// A node's boot became stuck, or stopped being stuck (see [`Command::BootNotices`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootNotice {
    /// The node.
    pub node: String,
    /// Stuck now (`true`) or recovered.
    pub stuck: bool,
    /// How (`stalled`, `dhcp_loop`), or what ended it.
    pub kind: String,
    /// Since when.
    pub since: Millis,
    /// What the boot records show.
    pub reason: String,
}

/// The result of applying a command: a change, or a business refusal with no effect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// The command changed (or confirmed) the state.
    Applied(Applied),
    /// The command was refused; nothing changed.
    Rejected(Rejection),
}

impl Outcome {
    /// Whether the command took effect.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied(_))
    }
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Applied {
    /// Host added (`created`) or updated.
    HostRegistered {
        /// The host.
        host: String,
        /// New host.
        created: bool,
    },
    /// Heartbeat stored.
    HeartbeatRecorded {
        /// The host.
        host: String,
    },
    /// Node added.
    NodeEnrolled {
        /// The node.
        node: String,
        /// Its owner.
        owner: String,
        /// Its epoch (1).
        epoch: u64,
    },
    /// Node fields changed.
    NodeUpdated {
        /// The node.
        node: String,
    },
    /// A node's operator-set addresses replaced.
    NodeAddressesSet {
        /// The node.
        node: String,
        /// Its addresses now, in stored form.
        #[serde(with = "ip_text")]
        addresses: Vec<IpAddr>,
        /// False when they already were exactly these (no event logged).
        changed: bool,
    },
    /// Node deleted.
    NodeRemoved {
        /// The node.
        node: String,
    },
    /// Provision state set.
    ProvisionStateSet {
        /// The node.
        node: String,
        /// Its state now.
        state: ProvisionState,
    },
    /// Boot profile and files set.
    BootProfileSet {
        /// The node.
        node: String,
        /// Number of served files.
        files: usize,
        /// False when profile and files were already exactly these (no event logged).
        changed: bool,
    },
    /// Files of an externally written node set.
    NodeFilesSet {
        /// The node.
        node: String,
        /// Number of served files.
        files: usize,
        /// False when files and source were already exactly these (no event logged).
        changed: bool,
    },
    /// Migration pending.
    MigrationStarted {
        /// The node.
        node: String,
        /// Target host.
        to: String,
    },
    /// Migration cancelled.
    MigrationAborted {
        /// The node.
        node: String,
    },
    /// New owner.
    OwnershipTransferred {
        /// The node.
        node: String,
        /// Previous owner.
        from: String,
        /// New owner.
        to: String,
        /// New epoch.
        epoch: u64,
    },
    /// A host's draining flag changed.
    DrainingSet {
        /// The host.
        host: String,
        /// Now draining?
        draining: bool,
    },
    /// A node's stuck reason changed.
    NodeFlagged {
        /// The node.
        node: String,
    },
    /// Artifact known (`created` if new) and held by the host.
    ArtifactRegistered {
        /// The artifact.
        digest: Digest,
        /// New artifact.
        created: bool,
    },
    /// Host/blob association recorded.
    HostArtifactRecorded {
        /// The host.
        host: String,
        /// The artifact.
        digest: Digest,
        /// Held or dropped.
        present: bool,
    },
    /// Artifact forgotten; hosts may delete the blob.
    ArtifactRemoved {
        /// The artifact.
        digest: Digest,
    },
    /// Lock taken (or re-taken by its live holder).
    ReservationAcquired {
        /// The reservation now.
        reservation: Reservation,
    },
    /// Lock extended.
    ReservationRenewed {
        /// The reservation now.
        reservation: Reservation,
    },
    /// Lock dropped.
    ReservationReleased {
        /// The node.
        node: String,
        /// The token that was released.
        token: u64,
    },
    /// Boot notices appended to the feed.
    BootNoticed {
        /// Events appended (notices of unknown nodes are skipped).
        events: usize,
    },
    /// Host/blob associations recorded in one go.
    HostArtifactsRecorded {
        /// The host.
        host: String,
        /// How many were new.
        recorded: usize,
        /// Digests skipped because no such artifact is registered (any more).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unknown: Vec<Digest>,
    },
    /// The outcome of each step of an [`Command::OwnershipSteps`], in order.
    Steps {
        /// One per step.
        outcomes: Vec<Outcome>,
    },
    /// A rebalance started or ended.
    RebalanceSet {
        /// Active now.
        active: bool,
        /// False when it already was in that state.
        changed: bool,
    },
    /// An import applied: one result per item, in order.
    NodesImported {
        /// Per item.
        results: Vec<ImportResult>,
    },
    /// Every command of a batch applied, in order.
    Batch {
        /// Their results.
        outcomes: Vec<Applied>,
    },
}

/// Why a command was refused. Each maps to a clear API error later (404, 409, 422).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    /// The command itself is malformed (bad name, path, size, TTL, …).
    #[error("invalid command: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// No such node.
    #[error("unknown node {node}")]
    UnknownNode {
        /// The node asked for.
        node: String,
    },
    /// No such host.
    #[error("unknown host {host}")]
    UnknownHost {
        /// The host asked for.
        host: String,
    },
    /// No such artifact.
    #[error("unknown artifact {digest}")]
    UnknownArtifact {
        /// The artifact asked for.
        digest: Digest,
    },
    /// A node with this id exists.
    #[error("node {node} already exists")]
    NodeExists {
        /// The node.
        node: String,
    },
    /// The MAC belongs to another node.
    #[error("MAC {mac} already belongs to node {node}")]
    MacInUse {
        /// The MAC.
        mac: MacAddr,
        /// Its node.
        node: String,
    },
    /// The address is set on another node.
    #[error("address {address} is already set on node {node}")]
    AddressInUse {
        /// The address.
        #[serde(with = "ip_text::one")]
        address: IpAddr,
        /// Its node.
        node: String,
    },
    /// The served path belongs to another node.
    #[error("path {path} is already served for node {node}")]
    PathInUse {
        /// The path.
        path: String,
        /// Its node.
        node: String,
    },
    /// The proposer acted on an old view of the node's ownership.
    #[error("stale epoch for node {node}: expected {expected}, current {current}")]
    StaleEpoch {
        /// The node.
        node: String,
        /// Epoch in the command.
        expected: u64,
        /// Epoch in the store.
        current: u64,
    },
    /// The node is not migrating.
    #[error("node {node} has no migration in progress")]
    NoMigration {
        /// The node.
        node: String,
    },
    /// The node is already migrating.
    #[error("node {node} is already migrating")]
    MigrationInProgress {
        /// The node.
        node: String,
        /// Its handoff state.
        handoff: HandoffState,
    },
    /// Nodes still serve the artifact.
    #[error("artifact {digest} is referenced by nodes {nodes:?}")]
    ArtifactInUse {
        /// The artifact.
        digest: Digest,
        /// Nodes whose files reference it (sorted).
        nodes: Vec<String>,
    },
    /// Same digest, different size: one of the two claims is wrong.
    #[error("artifact {digest} is recorded with size {recorded}, command says {claimed}")]
    ArtifactSizeMismatch {
        /// The artifact.
        digest: Digest,
        /// Size in the store.
        recorded: u64,
        /// Size in the command.
        claimed: u64,
    },
    /// Someone else holds a live reservation on the node.
    #[error("node is reserved by {} until {} (token {})", reservation.holder, reservation.expires_at, reservation.token)]
    NodeReserved {
        /// The live reservation.
        reservation: Reservation,
    },
    /// The caller's reservation is gone (expired, released, or taken over): it must stop
    /// acting on the node. `latest_token` is the newest token issued for it.
    #[error("reservation on node {node} lost; latest fencing token is {latest_token}")]
    ReservationLost {
        /// The node.
        node: String,
        /// The live reservation now, if any.
        current: Option<Reservation>,
        /// Newest fencing token issued for the node.
        latest_token: u64,
    },
    /// A command of a batch was refused, so none of the batch applied.
    #[error("batch command {index} refused: {rejection}")]
    BatchRejected {
        /// Position of the refused command.
        index: usize,
        /// Why it was refused.
        rejection: Box<Rejection>,
    },
}

/// Deserializes a present field (even `null`) as `Some`, so `Option<Option<T>>` keeps
/// "clear" apart from "leave alone".
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

#[cfg(test)]
mod serde_tests {
    use super::*;

    #[test]
    fn update_node_arch_round_trips_through_json() {
        for arch in [None, Some(None), Some(Some("x86_64".to_string()))] {
            let c = Command::UpdateNode {
                node: "n".into(),
                macs: None,
                group: None,
                arch: arch.clone(),
                expected_epoch: None,
                at: 1,
            };
            let back: Command = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c, "{arch:?}");
        }
    }
}
