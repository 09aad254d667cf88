//! The state machine: applies one [`Command`] to the database.
//!
//! Determinism rules, so every replica that applies the same log holds the same bytes:
//! no clock (times come from the command), no randomness, no SQL functions like
//! `datetime('now')` or `random()`, iteration in sorted order, JSON written by serde from
//! structs and sorted maps. A rejected command rolls back to a savepoint, so it leaves no
//! trace, not even a partial one.

use std::collections::BTreeSet;
use std::net::IpAddr;

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::json;

use crate::blobs::Digest;
use crate::wire::token::BootToken;

use super::command::{
    Applied, Command, FileSpec, Outcome, Rejection, INLINE_MAX, MAX_RECORDED, MAX_STEPS,
};
use super::read::{self, Node, Reservation};
use super::types::{
    check_name, check_text, node_addresses, normalize_path, BootProfile, HandoffState, MacAddr,
    Millis, ProvisionState, TransferReason,
};
use super::StoreError;

mod import;
mod requests;

pub use requests::{MAX_REQUESTS, REQUEST_RETENTION_MS};

/// Most MACs per node (multi-port servers have a handful).
pub const MAX_MACS: usize = 16;
/// Most served files per node.
pub const MAX_FILES: usize = 1024;
/// Most commands per batch.
pub const MAX_BATCH: usize = 1000;
/// Longest reservation TTL: a week. Longer leases are almost certainly a unit mistake.
pub const MAX_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// A handler's failure: a business refusal (rolled back, returned as an outcome) or a
/// real error of the store.
enum Fail {
    Reject(Rejection),
    Store(StoreError),
}

impl From<Rejection> for Fail {
    fn from(r: Rejection) -> Self {
        Fail::Reject(r)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Store(e.into())
    }
}

type R<T> = Result<T, Fail>;

fn invalid(reason: impl Into<String>) -> Fail {
    Fail::Reject(Rejection::Invalid {
        reason: reason.into(),
    })
}

fn valid(check: Result<(), String>) -> R<()> {
    check.map_err(invalid)
}

/// SQLite integers are i64; values beyond that are refused rather than wrapped.
fn int(v: u64, what: &str) -> R<i64> {
    i64::try_from(v).map_err(|_| invalid(format!("{what} {v} is too large")))
}

/// Applies `cmd` inside `tx`. Business refusals are `Ok(Outcome::Rejected(_))` with no
/// effect; `Err` means the database itself failed and the caller must not commit.
pub fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<Outcome, StoreError> {
    match cmd {
        Command::Idempotent {
            request,
            at,
            command,
        } => requests::apply_once(tx, *request, *at, command),
        cmd => with_savepoint(tx, |tx| dispatch(tx, cmd)),
    }
}

fn with_savepoint(
    tx: &Transaction<'_>,
    f: impl FnOnce(&Transaction<'_>) -> R<Applied>,
) -> Result<Outcome, StoreError> {
    tx.execute_batch("SAVEPOINT baton_apply")?;
    match f(tx) {
        Ok(applied) => {
            tx.execute_batch("RELEASE baton_apply")?;
            Ok(Outcome::Applied(applied))
        }
        Err(Fail::Reject(r)) => {
            tx.execute_batch("ROLLBACK TO baton_apply; RELEASE baton_apply")?;
            Ok(Outcome::Rejected(r))
        }
        Err(Fail::Store(e)) => {
            // Best effort: the caller drops the transaction anyway.
            let _ = tx.execute_batch("ROLLBACK TO baton_apply; RELEASE baton_apply");
            Err(e)
        }
    }
}

fn dispatch(tx: &Transaction<'_>, cmd: &Command) -> R<Applied> {
    match cmd {
        Command::RegisterHost {
            name,
            group,
            addresses,
            at,
        } => register_host(tx, name, group, addresses, *at),
        Command::Heartbeat { host, at, seen } => heartbeat(tx, host, *at, *seen),
        Command::EnrollNode {
            node,
            macs,
            group,
            arch,
            owner,
            at,
        } => enroll_node(tx, node, macs, group, arch.as_deref(), owner, *at),
        Command::UpdateNode {
            node,
            macs,
            group,
            arch,
            expected_epoch,
            at,
        } => update_node(
            tx,
            node,
            macs.as_deref(),
            group.as_deref(),
            arch,
            *expected_epoch,
            *at,
        ),
        Command::SetNodeAddresses {
            node,
            addresses,
            at,
        } => set_node_addresses(tx, node, addresses, *at),
        Command::RemoveNode { node, at } => remove_node(tx, node, *at),
        Command::SetProvisionState {
            node,
            state,
            expected_epoch,
            at,
        } => set_provision_state(tx, node, *state, *expected_epoch, *at),
        Command::SetBootProfile {
            node,
            profile,
            files,
            boot_token,
            host,
            expected_epoch,
            at,
        } => set_boot_profile(
            tx,
            node,
            profile.as_ref(),
            files,
            boot_token.as_ref(),
            host,
            *expected_epoch,
            *at,
        ),
        Command::SetNodeFiles {
            node,
            files,
            source,
            host,
            at,
        } => set_node_files(tx, node, files, source, host, *at),
        Command::BeginMigration {
            node,
            to,
            expected_epoch,
            at,
        } => begin_migration(tx, node, to, *expected_epoch, *at),
        Command::AbortMigration {
            node,
            expected_epoch,
            at,
        } => abort_migration(tx, node, *expected_epoch, *at),
        Command::TransferOwnership {
            node,
            to,
            expected_epoch,
            reason,
            stale_before,
            at,
        } => transfer_ownership(tx, node, to, *expected_epoch, *reason, *stale_before, *at),
        Command::SetDraining { host, draining, at } => set_draining(tx, host, *draining, *at),
        Command::FlagNode { node, stuck, at } => flag_node(tx, node, stuck.as_deref(), *at),
        Command::RegisterArtifact {
            digest,
            size,
            name,
            host,
            at,
        } => register_artifact(tx, digest, *size, name, host, *at),
        Command::RecordHostArtifact {
            host,
            digest,
            present,
            at,
        } => record_host_artifact(tx, host, digest, *present, *at),
        Command::RemoveArtifact { digest, at } => remove_artifact(tx, digest, *at),
        Command::AcquireReservation {
            node,
            holder,
            ttl_ms,
            at,
        } => acquire(tx, node, holder, *ttl_ms, *at),
        Command::RenewReservation {
            node,
            holder,
            token,
            ttl_ms,
            at,
        } => renew(tx, node, holder, *token, *ttl_ms, *at),
        Command::ReleaseReservation {
            node,
            holder,
            token,
            at,
        } => release(tx, node, holder, *token, *at),
        Command::BootNotices { host, notices, at } => boot_notices(tx, host, notices, *at),
        Command::RecordHostArtifacts { host, digests, at } => {
            record_host_artifacts(tx, host, digests, *at)
        }
        Command::OwnershipSteps { steps } => ownership_steps(tx, steps),
        Command::SetRebalance { active, at } => set_rebalance(tx, *active, *at),
        Command::Batch { commands } => batch(tx, commands),
        Command::ImportNodes {
            host,
            group,
            nodes,
            at,
        } => import::import_nodes(tx, host, group, nodes, *at),
        // Only [`apply`] unwraps one, at the top level.
        Command::Idempotent { .. } => Err(invalid(
            "a tagged (idempotent) command cannot be nested or batched",
        )),
    }
}

/// Appends one feed event per boot notice of a known node.
fn boot_notices(
    tx: &Transaction<'_>,
    host: &str,
    notices: &[super::command::BootNotice],
    at: Millis,
) -> R<Applied> {
    if notices.len() > MAX_BATCH {
        return Err(invalid(format!(
            "{} boot notices, more than {MAX_BATCH}",
            notices.len()
        )));
    }
    let mut events = 0;
    for n in notices {
        let Some(node) = read::node(tx, &n.node)? else {
            continue;
        };
        event(
            tx,
            at,
            if n.stuck {
                "boot_stuck"
            } else {
                "boot_recovered"
            },
            Some(&n.node),
            Some(host),
            json!({
                "kind": n.kind,
                "since": n.since,
                "reason": n.reason,
                "owner": node.owner,
                "epoch": node.epoch,
            }),
        )?;
        events += 1;
    }
    Ok(Applied::BootNoticed { events })
}

fn batch(tx: &Transaction<'_>, commands: &[Command]) -> R<Applied> {
    if commands.len() > MAX_BATCH {
        return Err(invalid(format!(
            "batch of {} commands, more than {MAX_BATCH}",
            commands.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(commands.len());
    for (index, cmd) in commands.iter().enumerate() {
        if matches!(cmd, Command::Batch { .. }) {
            return Err(invalid(format!("batch command {index} is itself a batch")));
        }
        // The outer savepoint rolls everything back if a later command is refused.
        match dispatch(tx, cmd) {
            Ok(a) => outcomes.push(a),
            Err(Fail::Reject(r)) => {
                return Err(Fail::Reject(Rejection::BatchRejected {
                    index,
                    rejection: Box::new(r),
                }))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Applied::Batch { outcomes })
}

/// Appends to the event feed.
fn event(
    tx: &Transaction<'_>,
    at: Millis,
    kind: &str,
    node: Option<&str>,
    host: Option<&str>,
    data: serde_json::Value,
) -> R<()> {
    let data = serde_json::to_string(&data).map_err(|e| StoreError::Serde(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO events (at, kind, node, host, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![at, kind, node, host, data])?;
    Ok(())
}

fn load_node(tx: &Transaction<'_>, id: &str) -> R<Node> {
    read::node(tx, id)?.ok_or_else(|| {
        Fail::Reject(Rejection::UnknownNode {
            node: id.to_string(),
        })
    })
}

fn require_host(tx: &Transaction<'_>, name: &str) -> R<()> {
    let found: Option<i64> = tx
        .prepare_cached("SELECT 1 FROM hosts WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    match found {
        Some(_) => Ok(()),
        None => Err(Fail::Reject(Rejection::UnknownHost {
            host: name.to_string(),
        })),
    }
}

fn check_epoch(node: &Node, expected: Option<u64>) -> R<()> {
    match expected {
        Some(e) if e != node.epoch => Err(Fail::Reject(Rejection::StaleEpoch {
            node: node.id.clone(),
            expected: e,
            current: node.epoch,
        })),
        _ => Ok(()),
    }
}

fn touch(tx: &Transaction<'_>, node: &str, at: Millis) -> R<()> {
    tx.execute(
        "UPDATE nodes SET updated_at = ?2 WHERE id = ?1",
        params![node, at],
    )?;
    Ok(())
}

fn register_host(
    tx: &Transaction<'_>,
    name: &str,
    group: &str,
    addresses: &[String],
    at: Millis,
) -> R<Applied> {
    valid(check_name("host name", name))?;
    valid(check_name("group", group))?;
    if addresses.len() > 16 {
        return Err(invalid("more than 16 host addresses"));
    }
    for a in addresses {
        valid(check_text("host address", a, 255))?;
    }
    let addr_json =
        serde_json::to_string(addresses).map_err(|e| StoreError::Serde(e.to_string()))?;
    let existing = read::host(tx, name)?;
    match existing {
        None => {
            tx.execute(
                "INSERT INTO hosts (name, group_name, addresses, registered_at, last_heartbeat) \
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![name, group, addr_json, at],
            )?;
            event(
                tx,
                at,
                "host_registered",
                None,
                Some(name),
                json!({ "group": group, "addresses": addresses }),
            )?;
            Ok(Applied::HostRegistered {
                host: name.to_string(),
                created: true,
            })
        }
        Some(h) => {
            tx.execute(
                "UPDATE hosts SET group_name = ?2, addresses = ?3, \
                 last_heartbeat = MAX(last_heartbeat, ?4) WHERE name = ?1",
                params![name, group, addr_json, at],
            )?;
            if h.group != group || h.addresses != addresses {
                event(
                    tx,
                    at,
                    "host_updated",
                    None,
                    Some(name),
                    json!({ "group": group, "addresses": addresses }),
                )?;
            }
            Ok(Applied::HostRegistered {
                host: name.to_string(),
                created: false,
            })
        }
    }
}

fn heartbeat(tx: &Transaction<'_>, host: &str, at: Millis, seen: u64) -> R<Applied> {
    require_host(tx, host)?;
    let seen = int(seen, "seen")?;
    // MAX: a delayed heartbeat never moves liveness (or confirmation) backwards.
    tx.execute(
        "UPDATE hosts SET last_heartbeat = MAX(last_heartbeat, ?2), seen_seq = MAX(seen_seq, ?3) \
         WHERE name = ?1",
        params![host, at, seen],
    )?;
    // The host had applied these flips away from it, so it no longer answers for them.
    tx.execute(
        "UPDATE nodes SET fence_host = NULL, fence_seq = NULL \
         WHERE fence_host = ?1 AND fence_seq <= ?2",
        params![host, seen],
    )?;
    Ok(Applied::HeartbeatRecorded {
        host: host.to_string(),
    })
}

/// Validates, sorts and de-duplicates a MAC set, and checks no other node has one.
fn claim_macs(tx: &Transaction<'_>, node: &str, macs: &[MacAddr]) -> R<Vec<MacAddr>> {
    let set: BTreeSet<MacAddr> = macs.iter().copied().collect();
    if set.is_empty() {
        return Err(invalid("a node needs at least one MAC address"));
    }
    if set.len() > MAX_MACS {
        return Err(invalid(format!("more than {MAX_MACS} MAC addresses")));
    }
    for mac in &set {
        if let Some(other) = read::node_id_by_mac(tx, mac)? {
            if other != node {
                return Err(Fail::Reject(Rejection::MacInUse {
                    mac: *mac,
                    node: other,
                }));
            }
        }
    }
    Ok(set.into_iter().collect())
}

fn insert_macs(tx: &Transaction<'_>, node: &str, macs: &[MacAddr]) -> R<()> {
    let mut stmt = tx.prepare_cached("INSERT INTO node_macs (mac, node) VALUES (?1, ?2)")?;
    for mac in macs {
        stmt.execute(params![mac.colons(), node])?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn enroll_node(
    tx: &Transaction<'_>,
    node: &str,
    macs: &[MacAddr],
    group: &str,
    arch: Option<&str>,
    owner: &str,
    at: Millis,
) -> R<Applied> {
    valid(check_name("node id", node))?;
    valid(check_name("group", group))?;
    if let Some(a) = arch {
        valid(check_name("architecture", a))?;
    }
    if read::node(tx, node)?.is_some() {
        return Err(Fail::Reject(Rejection::NodeExists {
            node: node.to_string(),
        }));
    }
    require_host(tx, owner)?;
    let macs = claim_macs(tx, node, macs)?;
    tx.prepare_cached(
        "INSERT INTO nodes (id, group_name, arch, owner, epoch, provision_state, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?6)")?
        .execute(params![node, group, arch, owner, ProvisionState::Enrolled.as_str(), at],
    )?;
    insert_macs(tx, node, &macs)?;
    event(
        tx,
        at,
        "node_enrolled",
        Some(node),
        Some(owner),
        json!({ "macs": macs, "group": group, "arch": arch, "owner": owner, "epoch": 1 }),
    )?;
    Ok(Applied::NodeEnrolled {
        node: node.to_string(),
        owner: owner.to_string(),
        epoch: 1,
    })
}

fn update_node(
    tx: &Transaction<'_>,
    id: &str,
    macs: Option<&[MacAddr]>,
    group: Option<&str>,
    arch: &Option<Option<String>>,
    expected_epoch: Option<u64>,
    at: Millis,
) -> R<Applied> {
    let node = load_node(tx, id)?;
    check_epoch(&node, expected_epoch)?;
    let mut changes = serde_json::Map::new();
    if let Some(g) = group {
        valid(check_name("group", g))?;
        tx.execute(
            "UPDATE nodes SET group_name = ?2 WHERE id = ?1",
            params![id, g],
        )?;
        changes.insert("group".into(), json!(g));
    }
    if let Some(a) = arch {
        if let Some(a) = a {
            valid(check_name("architecture", a))?;
        }
        tx.execute("UPDATE nodes SET arch = ?2 WHERE id = ?1", params![id, a])?;
        changes.insert("arch".into(), json!(a));
    }
    if let Some(m) = macs {
        let m = claim_macs(tx, id, m)?;
        tx.execute("DELETE FROM node_macs WHERE node = ?1", [id])?;
        insert_macs(tx, id, &m)?;
        changes.insert("macs".into(), json!(m));
    }
    touch(tx, id, at)?;
    event(
        tx,
        at,
        "node_updated",
        Some(id),
        None,
        serde_json::Value::Object(changes),
    )?;
    Ok(Applied::NodeUpdated {
        node: id.to_string(),
    })
}

/// Replaces a node's operator-set addresses ([`Command::SetNodeAddresses`]).
fn set_node_addresses(
    tx: &Transaction<'_>,
    id: &str,
    addresses: &[IpAddr],
    at: Millis,
) -> R<Applied> {
    let node = load_node(tx, id)?;
    let addresses = node_addresses(addresses).map_err(invalid)?;
    if addresses == node.addresses {
        return Ok(Applied::NodeAddressesSet {
            node: id.to_string(),
            addresses,
            changed: false,
        });
    }
    if let Some((address, node)) = read::address_holder(tx, &addresses, id)? {
        return Err(Fail::Reject(Rejection::AddressInUse { address, node }));
    }
    let stored = serde_json::to_string(&addresses)
        .map_err(|e| StoreError::Corrupt(format!("node addresses: {e}")))?;
    tx.execute(
        "UPDATE nodes SET addresses = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, stored, at],
    )?;
    tx.execute("DELETE FROM node_addresses WHERE node = ?1", [id])?;
    let mut insert =
        tx.prepare_cached("INSERT INTO node_addresses (address, node) VALUES (?1, ?2)")?;
    for a in &addresses {
        insert.execute(params![a.to_string(), id])?;
    }
    event(
        tx,
        at,
        "node_updated",
        Some(id),
        None,
        json!({ "addresses": addresses }),
    )?;
    Ok(Applied::NodeAddressesSet {
        node: id.to_string(),
        addresses,
        changed: true,
    })
}

fn live_reservation(tx: &Transaction<'_>, node: &str, at: Millis) -> R<Option<Reservation>> {
    Ok(read::reservation(tx, node)?.filter(|r| r.is_live(at)))
}

fn remove_node(tx: &Transaction<'_>, id: &str, at: Millis) -> R<Applied> {
    let node = load_node(tx, id)?;
    if let Some(reservation) = live_reservation(tx, id, at)? {
        return Err(Fail::Reject(Rejection::NodeReserved { reservation }));
    }
    let files = read::node_files(tx, id)?;
    // Cascades to node_macs, node_files and reservations.
    tx.execute("DELETE FROM nodes WHERE id = ?1", [id])?;
    drop_unreferenced_inline(tx, files.iter().map(|f| &f.digest))?;
    event(
        tx,
        at,
        "node_removed",
        Some(id),
        Some(&node.owner),
        json!({ "epoch": node.epoch }),
    )?;
    Ok(Applied::NodeRemoved {
        node: id.to_string(),
    })
}

fn set_provision_state(
    tx: &Transaction<'_>,
    id: &str,
    state: ProvisionState,
    expected_epoch: Option<u64>,
    at: Millis,
) -> R<Applied> {
    let node = load_node(tx, id)?;
    check_epoch(&node, expected_epoch)?;
    if node.provision_state != state {
        tx.execute(
            "UPDATE nodes SET provision_state = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, state.as_str(), at],
        )?;
        event(
            tx,
            at,
            "provision_state_changed",
            Some(id),
            None,
            json!({ "from": node.provision_state, "to": state }),
        )?;
    }
    Ok(Applied::ProvisionStateSet {
        node: id.to_string(),
        state,
    })
}

/// Registers the artifact if new (checking the size if known) and records `host` as
/// holding its blob. Returns whether the artifact was new.
fn ensure_artifact(
    tx: &Transaction<'_>,
    digest: &Digest,
    size: u64,
    name: &str,
    host: Option<&str>,
    at: Millis,
) -> R<bool> {
    let size_i = int(size, "artifact size")?;
    let hex = digest.to_hex();
    let recorded: Option<i64> = tx
        .prepare_cached("SELECT size FROM artifacts WHERE digest = ?1")?
        .query_row([&hex], |r| r.get(0))
        .optional()?;
    let created = match recorded {
        Some(r) if r != size_i => {
            return Err(Fail::Reject(Rejection::ArtifactSizeMismatch {
                digest: *digest,
                recorded: u64::try_from(r).unwrap_or(0),
                claimed: size,
            }))
        }
        Some(_) => false,
        None => {
            tx.prepare_cached(
                "INSERT INTO artifacts (digest, size, name, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![hex, size_i, name, at])?;
            true
        }
    };
    // Only a host that really holds the blob is recorded: replication fetches from
    // holders, and takeover trusts the record.
    if let Some(host) = host {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO host_artifacts (host, digest, recorded_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![host, hex, at])?;
    }
    Ok(created)
}

#[allow(clippy::too_many_arguments)]
fn set_boot_profile(
    tx: &Transaction<'_>,
    id: &str,
    profile: Option<&BootProfile>,
    files: &[FileSpec],
    token: Option<&BootToken>,
    host: &str,
    expected_epoch: Option<u64>,
    at: Millis,
) -> R<Applied> {
    let node = load_node(tx, id)?;
    check_epoch(&node, expected_epoch)?;
    require_host(tx, host)?;
    let (wanted, paths) = wanted_files(files)?;
    match profile {
        None if !files.is_empty() => {
            return Err(invalid("a node without boot profile serves no files"))
        }
        None => {}
        Some(p) => {
            valid(p.validate())?;
            if let Some(k) = p.kernel_boot() {
                for (what, d) in [("kernel", &k.kernel), ("ramdisk", &k.ramdisk)] {
                    // Must have been imported already: the rendered files are new, the
                    // kernel and ramdisk are not, so a typo in a digest is caught here.
                    if read::artifact(tx, d)?.is_none() {
                        return Err(Fail::Reject(Rejection::UnknownArtifact { digest: *d }));
                    }
                    if !wanted.iter().any(|(_, fd)| fd == d) {
                        return Err(invalid(format!(
                            "the profile's {what} {d} is not among the node's files"
                        )));
                    }
                }
            }
        }
    }
    register_files(tx, files, host, at)?;
    check_paths_free(tx, id, &paths)?;
    let old = current_files(tx, id)?;
    let new_token = node.boot_token.as_ref() != token;
    if new_token {
        // The token goes to no event: the feed is for schedulers, not for secrets.
        tx.prepare_cached("UPDATE nodes SET boot_token = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![id, token.map(|t| t.to_string()), at])?;
    }
    let changed = old != wanted || node.boot_profile.as_ref() != profile || new_token;
    if changed {
        let profile_json = profile
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Serde(e.to_string()))?;
        replace_files(tx, id, &old, &wanted)?;
        tx.prepare_cached("UPDATE nodes SET boot_profile = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![id, profile_json, at])?;
        event(
            tx,
            at,
            "boot_profile_set",
            Some(id),
            Some(host),
            json!({ "profile": profile, "files": files_json(&wanted) }),
        )?;
    }
    Ok(Applied::BootProfileSet {
        node: id.to_string(),
        files: wanted.len(),
        changed,
    })
}

/// A node's files as (normalized path, digest) rows in canonical order, and the set of
/// paths; refuses bad and repeated paths.
type FileRows = BTreeSet<(String, Digest)>;

fn wanted_files(files: &[FileSpec]) -> R<(FileRows, BTreeSet<String>)> {
    if files.len() > MAX_FILES {
        return Err(invalid(format!("more than {MAX_FILES} files")));
    }
    // Normalize and de-duplicate paths; the BTreeSet gives a canonical order.
    let mut wanted = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for f in files {
        let path = normalize_path(&f.path)
            .ok_or_else(|| invalid(format!("invalid served path {:?}", f.path)))?;
        if !paths.insert(path.clone()) {
            return Err(invalid(format!("path {path} listed twice")));
        }
        wanted.insert((path, f.digest));
    }
    Ok((wanted, paths))
}

/// Registers the artifacts of `files` (held by `host` where the spec says so) and keeps
/// their inline content, checked against digest and size.
fn register_files(tx: &Transaction<'_>, files: &[FileSpec], host: &str, at: Millis) -> R<()> {
    for f in files {
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        ensure_artifact(tx, &f.digest, f.size, name, f.held.then_some(host), at)?;
        if let Some(text) = &f.text {
            // Checked here, deterministically, so no replica keeps bytes under a wrong name.
            if text.len() > INLINE_MAX
                || text.len() as u64 != f.size
                || Digest::of(text.as_bytes()) != f.digest
            {
                return Err(invalid(format!(
                    "inline content of {} does not match its digest and size (or exceeds {INLINE_MAX} bytes)",
                    f.path
                )));
            }
            tx.prepare_cached(
                "INSERT OR IGNORE INTO inline_files (digest, content) VALUES (?1, ?2)",
            )?
            .execute(params![f.digest.to_hex(), text.as_bytes()])?;
        }
    }
    Ok(())
}

/// Refuses paths another node serves.
fn check_paths_free(tx: &Transaction<'_>, id: &str, paths: &BTreeSet<String>) -> R<()> {
    for path in paths {
        let other: Option<String> = tx
            .prepare_cached("SELECT node FROM node_files WHERE path = ?1 AND node != ?2")?
            .query_row(params![path, id], |r| r.get(0))
            .optional()?;
        if let Some(other) = other {
            return Err(Fail::Reject(Rejection::PathInUse {
                path: path.clone(),
                node: other,
            }));
        }
    }
    Ok(())
}

fn current_files(tx: &Transaction<'_>, id: &str) -> R<FileRows> {
    Ok(read::node_files(tx, id)?
        .into_iter()
        .map(|f| (f.path, f.digest))
        .collect())
}

/// Replaces a node's rows `old` with `wanted`; inline contents no node serves any more
/// are dropped (artifacts stay: other nodes may use them, and removing one is its own
/// command).
fn replace_files(tx: &Transaction<'_>, id: &str, old: &FileRows, wanted: &FileRows) -> R<()> {
    tx.prepare_cached("DELETE FROM node_files WHERE node = ?1")?
        .execute([id])?;
    {
        let mut stmt =
            tx.prepare_cached("INSERT INTO node_files (path, node, digest) VALUES (?1, ?2, ?3)")?;
        for (path, d) in wanted {
            stmt.execute(params![path, id, d.to_hex()])?;
        }
    }
    drop_unreferenced_inline(tx, old.iter().map(|(_, d)| d))
}

fn files_json(rows: &FileRows) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|(p, d)| json!({ "path": p, "digest": d }))
        .collect()
}

/// Sets the files of a node whose boot files another tool writes (see
/// [`Command::SetNodeFiles`]).
fn set_node_files(
    tx: &Transaction<'_>,
    id: &str,
    files: &[FileSpec],
    source: &str,
    host: &str,
    at: Millis,
) -> R<Applied> {
    let node = load_node(tx, id)?;
    require_host(tx, host)?;
    valid(check_text("source", source, 300))?;
    if node.boot_profile.is_some() {
        return Err(invalid(format!(
            "node {id} has a boot profile: Baton renders its files, so {source} may not set them"
        )));
    }
    let (wanted, paths) = wanted_files(files)?;
    register_files(tx, files, host, at)?;
    check_paths_free(tx, id, &paths)?;
    let old = current_files(tx, id)?;
    let old_source: Option<String> = tx
        .query_row(
            "SELECT source FROM node_sources WHERE node = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    let changed = old != wanted || old_source.as_deref() != Some(source);
    if changed {
        replace_files(tx, id, &old, &wanted)?;
        tx.execute(
            "INSERT INTO node_sources (node, source) VALUES (?1, ?2) \
             ON CONFLICT (node) DO UPDATE SET source = excluded.source",
            params![id, source],
        )?;
        tx.execute(
            "UPDATE nodes SET updated_at = ?2 WHERE id = ?1",
            params![id, at],
        )?;
        event(
            tx,
            at,
            "node_files_set",
            Some(id),
            Some(host),
            json!({ "source": source, "files": files_json(&wanted) }),
        )?;
    }
    Ok(Applied::NodeFilesSet {
        node: id.to_string(),
        files: wanted.len(),
        changed,
    })
}

fn begin_migration(
    tx: &Transaction<'_>,
    id: &str,
    to: &str,
    expected_epoch: u64,
    at: Millis,
) -> R<Applied> {
    let node = load_node(tx, id)?;
    check_epoch(&node, Some(expected_epoch))?;
    require_host(tx, to)?;
    let to_group: String =
        tx.query_row("SELECT group_name FROM hosts WHERE name = ?1", [to], |r| {
            r.get(0)
        })?;
    if to_group != node.group {
        return Err(invalid(format!(
            "host {to} serves group {to_group}, node {id} is in group {}: a node moves only within its L2 segment",
            node.group
        )));
    }
    if let Some(r) = read::reservation(tx, id)? {
        if r.is_live(at) {
            return Err(Fail::Reject(Rejection::NodeReserved { reservation: r }));
        }
    }
    if node.owner == to {
        return Err(invalid(format!("host {to} already owns node {id}")));
    }
    if node.handoff != HandoffState::None {
        return Err(Fail::Reject(Rejection::MigrationInProgress {
            node: id.to_string(),
            handoff: node.handoff,
        }));
    }
    tx.execute(
        "UPDATE nodes SET handoff_to = ?2, handoff_since = ?3, updated_at = ?3 WHERE id = ?1",
        params![id, to, at],
    )?;
    event(
        tx,
        at,
        "migration_started",
        Some(id),
        Some(to),
        json!({ "from": node.owner, "to": to, "epoch": node.epoch }),
    )?;
    Ok(Applied::MigrationStarted {
        node: id.to_string(),
        to: to.to_string(),
    })
}

fn abort_migration(tx: &Transaction<'_>, id: &str, expected_epoch: u64, at: Millis) -> R<Applied> {
    let node = load_node(tx, id)?;
    check_epoch(&node, Some(expected_epoch))?;
    let HandoffState::Migrating { to, .. } = node.handoff else {
        return Err(Fail::Reject(Rejection::NoMigration {
            node: id.to_string(),
        }));
    };
    tx.execute(
        "UPDATE nodes SET handoff_to = NULL, handoff_since = NULL, updated_at = ?2 WHERE id = ?1",
        params![id, at],
    )?;
    event(
        tx,
        at,
        "migration_aborted",
        Some(id),
        Some(&to),
        json!({ "to": to }),
    )?;
    Ok(Applied::MigrationAborted {
        node: id.to_string(),
    })
}

/// Forgets inline file contents among `digests` that no node serves any more.
fn drop_unreferenced_inline<'a>(
    tx: &Transaction<'_>,
    digests: impl Iterator<Item = &'a Digest>,
) -> R<()> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM inline_files WHERE digest = ?1 \
         AND NOT EXISTS (SELECT 1 FROM node_files WHERE digest = ?1)",
    )?;
    for d in digests {
        stmt.execute([d.to_hex()])?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn transfer_ownership(
    tx: &Transaction<'_>,
    id: &str,
    to: &str,
    expected_epoch: u64,
    reason: TransferReason,
    stale_before: Option<Millis>,
    at: Millis,
) -> R<Applied> {
    let node = load_node(tx, id)?;
    check_epoch(&node, Some(expected_epoch))?;
    require_host(tx, to)?;
    if let Some(t) = stale_before {
        // The fence of a takeover: the old owner must not have renewed its lease since
        // the proposer saw it expire.
        let hb: Option<i64> = tx
            .query_row(
                "SELECT last_heartbeat FROM hosts WHERE name = ?1",
                [&node.owner],
                |r| r.get(0),
            )
            .optional()?;
        if hb.is_some_and(|hb| hb >= t) {
            return Err(invalid(format!(
                "host {} renewed its lease: takeover of node {id} refused",
                node.owner
            )));
        }
    }
    if node.owner == to {
        return Err(invalid(format!("host {to} already owns node {id}")));
    }
    if reason == TransferReason::Migration
        && !matches!(&node.handoff, HandoffState::Migrating { to: t, .. } if t == to)
    {
        return Err(Fail::Reject(Rejection::NoMigration {
            node: id.to_string(),
        }));
    }
    let epoch = node
        .epoch
        .checked_add(1)
        .ok_or_else(|| invalid("epoch overflow"))?;
    tx.execute(
        "UPDATE nodes SET owner = ?2, epoch = ?3, handoff_to = NULL, handoff_since = NULL, \
         stuck = NULL, updated_at = ?4 WHERE id = ?1",
        params![id, to, int(epoch, "epoch")?, at],
    )?;
    event(
        tx,
        at,
        "ownership_transferred",
        Some(id),
        Some(to),
        json!({ "from": node.owner, "to": to, "epoch": epoch, "reason": reason }),
    )?;
    if reason == TransferReason::Migration {
        // The old owner is alive and answers until its replica applies this flip: the
        // new owner waits for its confirmation (or for it to go down). A takeover needs
        // no fence of its own (the old owner is down) and keeps any pending one.
        tx.execute(
            "UPDATE nodes SET fence_host = ?2, fence_seq = ?3 WHERE id = ?1",
            params![id, node.owner, tx.last_insert_rowid()],
        )?;
    }
    Ok(Applied::OwnershipTransferred {
        node: id.to_string(),
        from: node.owner,
        to: to.to_string(),
        epoch,
    })
}

fn register_artifact(
    tx: &Transaction<'_>,
    digest: &Digest,
    size: u64,
    name: &str,
    host: &str,
    at: Millis,
) -> R<Applied> {
    valid(check_text("artifact name", name, 255))?;
    require_host(tx, host)?;
    let created = ensure_artifact(tx, digest, size, name, Some(host), at)?;
    if created {
        event(
            tx,
            at,
            "artifact_registered",
            None,
            Some(host),
            json!({ "digest": digest, "size": size, "name": name }),
        )?;
    }
    Ok(Applied::ArtifactRegistered {
        digest: *digest,
        created,
    })
}

fn record_host_artifact(
    tx: &Transaction<'_>,
    host: &str,
    digest: &Digest,
    present: bool,
    at: Millis,
) -> R<Applied> {
    require_host(tx, host)?;
    if read::artifact(tx, digest)?.is_none() {
        return Err(Fail::Reject(Rejection::UnknownArtifact { digest: *digest }));
    }
    let changed = if present {
        tx.execute(
            "INSERT OR IGNORE INTO host_artifacts (host, digest, recorded_at) VALUES (?1, ?2, ?3)",
            params![host, digest.to_hex(), at],
        )?
    } else {
        tx.execute(
            "DELETE FROM host_artifacts WHERE host = ?1 AND digest = ?2",
            params![host, digest.to_hex()],
        )?
    };
    if changed > 0 {
        event(
            tx,
            at,
            "host_artifact_recorded",
            None,
            Some(host),
            json!({ "digest": digest, "present": present }),
        )?;
    }
    Ok(Applied::HostArtifactRecorded {
        host: host.to_string(),
        digest: *digest,
        present,
    })
}

fn remove_artifact(tx: &Transaction<'_>, digest: &Digest, at: Millis) -> R<Applied> {
    if read::artifact(tx, digest)?.is_none() {
        return Err(Fail::Reject(Rejection::UnknownArtifact { digest: *digest }));
    }
    let nodes = read::nodes_using(tx, digest)?;
    if !nodes.is_empty() {
        return Err(Fail::Reject(Rejection::ArtifactInUse {
            digest: *digest,
            nodes,
        }));
    }
    // Cascades to host_artifacts.
    tx.execute("DELETE FROM artifacts WHERE digest = ?1", [digest.to_hex()])?;
    event(
        tx,
        at,
        "artifact_removed",
        None,
        None,
        json!({ "digest": digest }),
    )?;
    Ok(Applied::ArtifactRemoved { digest: *digest })
}

fn expiry(at: Millis, ttl_ms: u64) -> R<Millis> {
    if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
        return Err(invalid(format!(
            "reservation TTL must be 1..={MAX_TTL_MS} ms, got {ttl_ms}"
        )));
    }
    at.checked_add(int(ttl_ms, "ttl")?)
        .ok_or_else(|| invalid("reservation expiry overflows"))
}

fn acquire(tx: &Transaction<'_>, id: &str, holder: &str, ttl_ms: u64, at: Millis) -> R<Applied> {
    let node = load_node(tx, id)?;
    valid(check_text("reservation holder", holder, 128))?;
    let expires_at = expiry(at, ttl_ms)?;
    if let Some(current) = live_reservation(tx, id, at)? {
        if current.holder != holder {
            return Err(Fail::Reject(Rejection::NodeReserved {
                reservation: current,
            }));
        }
        // The live holder asking again keeps its token: nothing it did is fenced off.
        tx.execute(
            "UPDATE reservations SET expires_at = MAX(expires_at, ?2) WHERE node = ?1",
            params![id, expires_at],
        )?;
        let reservation = read::reservation(tx, id)?.unwrap_or(current);
        return Ok(Applied::ReservationAcquired { reservation });
    }
    let token = node
        .last_token
        .checked_add(1)
        .ok_or_else(|| invalid("fencing token overflow"))?;
    let token_i = int(token, "token")?;
    tx.execute(
        "UPDATE nodes SET last_token = ?2 WHERE id = ?1",
        params![id, token_i],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO reservations (node, holder, token, acquired_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, holder, token_i, at, expires_at],
    )?;
    event(
        tx,
        at,
        "reservation_acquired",
        Some(id),
        None,
        json!({ "holder": holder, "token": token, "expires_at": expires_at }),
    )?;
    Ok(Applied::ReservationAcquired {
        reservation: Reservation {
            node: id.to_string(),
            holder: holder.to_string(),
            token,
            acquired_at: at,
            expires_at,
        },
    })
}

/// The caller's reservation is gone: say who holds the node now and the newest token.
fn lost(tx: &Transaction<'_>, node: &Node, at: Millis) -> R<Applied> {
    Err(Fail::Reject(Rejection::ReservationLost {
        node: node.id.clone(),
        current: live_reservation(tx, &node.id, at)?,
        latest_token: node.last_token,
    }))
}

fn renew(
    tx: &Transaction<'_>,
    id: &str,
    holder: &str,
    token: u64,
    ttl_ms: u64,
    at: Millis,
) -> R<Applied> {
    let node = load_node(tx, id)?;
    let expires_at = expiry(at, ttl_ms)?;
    match live_reservation(tx, id, at)? {
        Some(r) if r.holder == holder && r.token == token => {
            tx.execute(
                "UPDATE reservations SET expires_at = MAX(expires_at, ?2) WHERE node = ?1",
                params![id, expires_at],
            )?;
            let reservation = read::reservation(tx, id)?.unwrap_or(r);
            Ok(Applied::ReservationRenewed { reservation })
        }
        // Expired: even if nobody took it, a lapsed holder may have been fenced off
        // already, so it must acquire again (and get a new token).
        _ => lost(tx, &node, at),
    }
}

fn release(tx: &Transaction<'_>, id: &str, holder: &str, token: u64, at: Millis) -> R<Applied> {
    let node = load_node(tx, id)?;
    match read::reservation(tx, id)? {
        // Releasing one's own lapsed reservation is harmless and tidies the table.
        Some(r) if r.holder == holder && r.token == token => {
            tx.execute("DELETE FROM reservations WHERE node = ?1", [id])?;
            event(
                tx,
                at,
                "reservation_released",
                Some(id),
                None,
                json!({ "holder": holder, "token": token }),
            )?;
            Ok(Applied::ReservationReleased {
                node: id.to_string(),
                token,
            })
        }
        _ => lost(tx, &node, at),
    }
}

fn set_draining(tx: &Transaction<'_>, host: &str, draining: bool, at: Millis) -> R<Applied> {
    require_host(tx, host)?;
    let n = tx.execute(
        "UPDATE hosts SET draining = ?2 WHERE name = ?1 AND draining != ?2",
        params![host, draining as i64],
    )?;
    if n > 0 {
        event(
            tx,
            at,
            if draining {
                "host_draining"
            } else {
                "host_undrained"
            },
            None,
            Some(host),
            json!({ "draining": draining }),
        )?;
    }
    Ok(Applied::DrainingSet {
        host: host.to_string(),
        draining,
    })
}

fn flag_node(tx: &Transaction<'_>, id: &str, stuck: Option<&str>, at: Millis) -> R<Applied> {
    let node = load_node(tx, id)?;
    if node.stuck.as_deref() != stuck {
        tx.execute(
            "UPDATE nodes SET stuck = ?2 WHERE id = ?1",
            params![id, stuck],
        )?;
        event(
            tx,
            at,
            if stuck.is_some() {
                "takeover_blocked"
            } else {
                "takeover_unblocked"
            },
            Some(id),
            Some(&node.owner),
            json!({ "reason": stuck, "owner": node.owner, "epoch": node.epoch }),
        )?;
    }
    Ok(Applied::NodeFlagged {
        node: id.to_string(),
    })
}

/// Many holdings of one host in one command; new ones get one event between them.
fn record_host_artifacts(
    tx: &Transaction<'_>,
    host: &str,
    digests: &[Digest],
    at: Millis,
) -> R<Applied> {
    require_host(tx, host)?;
    if digests.len() > MAX_RECORDED {
        return Err(invalid(format!(
            "{} digests in one record, more than {MAX_RECORDED}",
            digests.len()
        )));
    }
    // Sorted and de-duplicated: the event lists them in a canonical order.
    let set: BTreeSet<&Digest> = digests.iter().collect();
    let mut recorded = Vec::new();
    let mut unknown = Vec::new();
    let mut known = tx.prepare_cached("SELECT 1 FROM artifacts WHERE digest = ?1")?;
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO host_artifacts (host, digest, recorded_at) VALUES (?1, ?2, ?3)",
    )?;
    for d in set {
        let hex = d.to_hex();
        if known
            .query_row([&hex], |r| r.get::<_, i64>(0))
            .optional()?
            .is_none()
        {
            unknown.push(*d);
            continue;
        }
        if insert.execute(params![host, hex, at])? > 0 {
            recorded.push(*d);
        }
    }
    if !recorded.is_empty() {
        event(
            tx,
            at,
            "host_artifacts_recorded",
            None,
            Some(host),
            json!({ "digests": recorded, "present": true }),
        )?;
    }
    Ok(Applied::HostArtifactsRecorded {
        host: host.to_string(),
        recorded: recorded.len(),
        unknown,
    })
}

/// Each step in its own savepoint: a refused step leaves no trace and the others stand.
fn ownership_steps(tx: &Transaction<'_>, steps: &[Command]) -> R<Applied> {
    if steps.len() > MAX_STEPS {
        return Err(invalid(format!(
            "{} ownership steps, more than {MAX_STEPS}",
            steps.len()
        )));
    }
    if let Some(i) = steps.iter().position(|c| !c.is_ownership_step()) {
        return Err(invalid(format!(
            "ownership step {i} is not a transfer, migration start or abort, or flag"
        )));
    }
    let mut outcomes = Vec::with_capacity(steps.len());
    for step in steps {
        tx.execute_batch("SAVEPOINT baton_step")?;
        match dispatch(tx, step) {
            Ok(a) => {
                tx.execute_batch("RELEASE baton_step")?;
                outcomes.push(Outcome::Applied(a));
            }
            Err(Fail::Reject(r)) => {
                tx.execute_batch("ROLLBACK TO baton_step; RELEASE baton_step")?;
                outcomes.push(Outcome::Rejected(r));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Applied::Steps { outcomes })
}

fn set_rebalance(tx: &Transaction<'_>, active: bool, at: Millis) -> R<Applied> {
    let current: Option<i64> = tx
        .query_row("SELECT requested_at FROM rebalance WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    let changed = match (active, current) {
        (true, None) => {
            tx.execute(
                "INSERT INTO rebalance (id, requested_at) VALUES (1, ?1)",
                [at],
            )?;
            true
        }
        (false, Some(_)) => {
            tx.execute("DELETE FROM rebalance WHERE id = 1", [])?;
            true
        }
        _ => false,
    };
    if changed {
        event(
            tx,
            at,
            if active {
                "rebalance_started"
            } else {
                "rebalance_ended"
            },
            None,
            None,
            json!({ "active": active, "requested_at": current }),
        )?;
    }
    Ok(Applied::RebalanceSet { active, changed })
}
