//! Rows as serde structs and the read queries behind them.
//!
//! Functions take a plain `&Connection` so the command handlers (inside their
//! transaction) and the [`super::Store`] read handle share them.

use std::net::IpAddr;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::blobs::Digest;
use crate::wire::token::BootToken;

use super::types::{BootProfile, HandoffState, MacAddr, Millis, ProvisionState};
use super::StoreError;

/// A management host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Host {
    /// Name (key).
    pub name: String,
    /// L2 segment it serves.
    pub group: String,
    /// Addresses it is reached on.
    pub addresses: Vec<String>,
    /// First registration.
    pub registered_at: Millis,
    /// Last heartbeat (registration counts as one).
    pub last_heartbeat: Millis,
    /// Its nodes are being moved away for maintenance.
    #[serde(default)]
    pub draining: bool,
    /// Newest event its replica had applied when it sent its last heartbeat: its
    /// confirmation that it knows of every ownership flip up to that event.
    #[serde(default)]
    pub seen_seq: u64,
}

/// A migration flip the old owner has not confirmed yet: the new owner waits for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fence {
    /// The previous owner, which may still answer until its replica applies the flip.
    pub host: String,
    /// Event sequence number of the flip: `host` has applied it once its heartbeat's
    /// `seen_seq` reaches this.
    pub seq: u64,
}

/// A bare-metal node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// Id, used in served paths.
    pub id: String,
    /// Boot MACs, sorted.
    pub macs: Vec<MacAddr>,
    /// Group (L2 segment).
    pub group: String,
    /// Architecture hint.
    pub arch: Option<String>,
    /// Owning host: the only one that answers for the node.
    pub owner: String,
    /// Ownership epoch, bumped on every owner change.
    pub epoch: u64,
    /// Provisioning life cycle.
    pub provision_state: ProvisionState,
    /// Migration in progress, if any.
    pub handoff: HandoffState,
    /// What it boots, if anything.
    pub boot_profile: Option<BootProfile>,
    /// Newest fencing token issued for its reservation (0: never reserved).
    pub last_token: u64,
    /// Why no live host could take the node over (it stays with its dead owner).
    #[serde(default)]
    pub stuck: Option<String>,
    /// Set after a migration flip until the old owner confirms it or is down.
    #[serde(default)]
    pub fence: Option<Fence>,
    /// Addresses the operator set as the node's own, sorted: with `node_files =
    /// "bound"` they may fetch its files from whichever host owns it (see
    /// `crate::ownership::gate`).
    #[serde(default, with = "super::types::ip_text")]
    pub addresses: Vec<IpAddr>,
    /// The boot token its rendered files put in their node-file URLs (`_t/<token>/`),
    /// set with them by [`super::Command::SetBootProfile`]: present while its files were
    /// rendered by a host with `node_files = "token"` (see `crate::ownership::gate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_token: Option<BootToken>,
    /// Enrollment time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

/// A content-addressed artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    /// sha256 of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Name given at import.
    pub name: String,
    /// First registration.
    pub created_at: Millis,
    /// Hosts holding the blob, sorted.
    pub hosts: Vec<String>,
}

/// One served file of a node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeFile {
    /// The node.
    pub node: String,
    /// Normalized served path.
    pub path: String,
    /// Artifact served.
    pub digest: Digest,
    /// Its size (for TFTP `tsize` and HTTP `Content-Length`).
    pub size: u64,
}

/// A node lock with its fencing token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    /// The node.
    pub node: String,
    /// Who holds it.
    pub holder: String,
    /// Fencing token: strictly increases with every new holder of this node.
    pub token: u64,
    /// When this holder took it.
    pub acquired_at: Millis,
    /// When it lapses unless renewed.
    pub expires_at: Millis,
}

impl Reservation {
    /// Whether it still holds at `now`.
    pub fn is_live(&self, now: Millis) -> bool {
        self.expires_at > now
    }
}

/// One entry of the append-only event feed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Position in the feed (cursor for `events_since`).
    pub seq: u64,
    /// Time of the command that caused it.
    pub at: Millis,
    /// What happened (`node_enrolled`, `ownership_transferred`, …).
    pub kind: String,
    /// Node concerned, if any.
    pub node: Option<String>,
    /// Host concerned, if any.
    pub host: Option<String>,
    /// Details.
    pub data: serde_json::Value,
}

/// Non-negative integers are stored as SQLite INTEGER (i64); reading back a negative one
/// means the file was edited by hand.
fn u(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

fn digest(s: &str) -> Result<Digest, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("bad digest in database: {e}")))
}

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("bad {what} JSON: {e}")))
}

pub(super) fn host(conn: &Connection, name: &str) -> Result<Option<Host>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, group_name, addresses, registered_at, last_heartbeat, draining, seen_seq FROM hosts WHERE name = ?1",
    )?;
    let raw = stmt.query_row([name], raw_host).optional()?;
    raw.map(host_from_raw).transpose()
}

pub(super) fn hosts(conn: &Connection) -> Result<Vec<Host>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, group_name, addresses, registered_at, last_heartbeat, draining, seen_seq FROM hosts ORDER BY name",
    )?;
    let raws = stmt
        .query_map([], raw_host)?
        .collect::<Result<Vec<_>, _>>()?;
    raws.into_iter().map(host_from_raw).collect()
}

type RawHost = (String, String, String, i64, i64, i64, i64);

fn raw_host(r: &Row<'_>) -> rusqlite::Result<RawHost> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn host_from_raw(
    (name, group, addresses, registered_at, last_heartbeat, draining, seen_seq): RawHost,
) -> Result<Host, StoreError> {
    Ok(Host {
        name,
        group,
        addresses: json(&addresses, "host addresses")?,
        registered_at,
        last_heartbeat,
        draining: draining != 0,
        seen_seq: u(seen_seq, "seen_seq")?,
    })
}

const NODE_COLS: &str = "id, group_name, arch, owner, epoch, provision_state, handoff_to, \
                         handoff_since, boot_profile, last_token, created_at, updated_at, stuck, \
                         fence_host, fence_seq, addresses, boot_token";

struct RawNode {
    id: String,
    group: String,
    arch: Option<String>,
    owner: String,
    epoch: i64,
    state: String,
    handoff_to: Option<String>,
    handoff_since: Option<i64>,
    profile: Option<String>,
    last_token: i64,
    created_at: i64,
    updated_at: i64,
    stuck: Option<String>,
    fence_host: Option<String>,
    fence_seq: Option<i64>,
    addresses: String,
    boot_token: Option<String>,
}

fn raw_node(r: &Row<'_>) -> rusqlite::Result<RawNode> {
    Ok(RawNode {
        id: r.get(0)?,
        group: r.get(1)?,
        arch: r.get(2)?,
        owner: r.get(3)?,
        epoch: r.get(4)?,
        state: r.get(5)?,
        handoff_to: r.get(6)?,
        handoff_since: r.get(7)?,
        profile: r.get(8)?,
        last_token: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        stuck: r.get(12)?,
        fence_host: r.get(13)?,
        fence_seq: r.get(14)?,
        addresses: r.get(15)?,
        boot_token: r.get(16)?,
    })
}

fn node_from_raw(conn: &Connection, raw: RawNode) -> Result<Node, StoreError> {
    let macs = node_macs(conn, &raw.id)?;
    node_with_macs(raw, macs)
}

fn node_with_macs(raw: RawNode, macs: Vec<MacAddr>) -> Result<Node, StoreError> {
    let provision_state = ProvisionState::parse(&raw.state)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown provision state {:?}", raw.state)))?;
    let handoff = match raw.handoff_to {
        Some(to) => HandoffState::Migrating {
            to,
            since: raw.handoff_since.unwrap_or(0),
        },
        None => HandoffState::None,
    };
    let boot_profile = raw
        .profile
        .as_deref()
        .map(|p| json(p, "boot profile"))
        .transpose()?;
    Ok(Node {
        macs,
        id: raw.id,
        group: raw.group,
        arch: raw.arch,
        owner: raw.owner,
        epoch: u(raw.epoch, "epoch")?,
        provision_state,
        handoff,
        boot_profile,
        last_token: u(raw.last_token, "token")?,
        stuck: raw.stuck,
        fence: match (raw.fence_host, raw.fence_seq) {
            (Some(host), Some(seq)) => Some(Fence {
                host,
                seq: u(seq, "fence_seq")?,
            }),
            _ => None,
        },
        addresses: json(&raw.addresses, "node addresses")?,
        boot_token: raw
            .boot_token
            .as_deref()
            .map(|t| {
                t.parse()
                    .map_err(|_| StoreError::Corrupt("node boot token".into()))
            })
            .transpose()?,
        created_at: raw.created_at,
        updated_at: raw.updated_at,
    })
}

pub(super) fn node_macs(conn: &Connection, node: &str) -> Result<Vec<MacAddr>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT mac FROM node_macs WHERE node = ?1 ORDER BY mac")?;
    let macs = stmt
        .query_map([node], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    macs.iter()
        .map(|m| {
            m.parse()
                .map_err(|e| StoreError::Corrupt(format!("bad MAC in database: {e}")))
        })
        .collect()
}

pub(super) fn node(conn: &Connection, id: &str) -> Result<Option<Node>, StoreError> {
    let sql = format!("SELECT {NODE_COLS} FROM nodes WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let raw = stmt.query_row([id], raw_node).optional()?;
    raw.map(|r| node_from_raw(conn, r)).transpose()
}

pub(super) fn nodes(conn: &Connection) -> Result<Vec<Node>, StoreError> {
    nodes_page(conn, &NodeFilter::default(), None, usize::MAX)
}

/// Which nodes a listing returns; every field set must match (all when default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFilter {
    /// Owned by this host.
    pub owner: Option<String>,
    /// In this group.
    pub group: Option<String>,
    /// With this architecture hint.
    pub arch: Option<String>,
    /// In this provision state.
    pub provision_state: Option<ProvisionState>,
    /// Migrating (`true`) or not (`false`).
    pub migrating: Option<bool>,
    /// Flagged stuck (`true`) or not (`false`).
    pub stuck: Option<bool>,
    /// With this profile kind (`deploy`, `instance`, `local`); `Some(None)`: none.
    pub profile: Option<Option<String>>,
    /// With this boot MAC.
    pub mac: Option<MacAddr>,
}

impl NodeFilter {
    /// The SQL condition over `nodes` (aliased `n`) and its parameters.
    fn sql(&self) -> (String, Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value as V;
        let mut conds: Vec<&str> = Vec::new();
        let mut args: Vec<V> = Vec::new();
        let mut text = |cond: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                conds.push(cond);
                args.push(V::Text(v.clone()));
            }
        };
        text("n.owner = ?", &self.owner);
        text("n.group_name = ?", &self.group);
        text("n.arch = ?", &self.arch);
        text(
            "n.provision_state = ?",
            &self.provision_state.map(|p| p.as_str().to_string()),
        );
        text(
            "n.id = (SELECT node FROM node_macs WHERE mac = ?)",
            &self.mac.map(|m| m.colons()),
        );
        match &self.profile {
            Some(None) => conds.push("n.boot_profile IS NULL"),
            Some(Some(kind)) => {
                conds.push("json_extract(n.boot_profile, '$.kind') = ?");
                args.push(V::Text(kind.clone()));
            }
            None => {}
        }
        for (flag, yes, no) in [
            (
                self.migrating,
                "n.handoff_to IS NOT NULL",
                "n.handoff_to IS NULL",
            ),
            (self.stuck, "n.stuck IS NOT NULL", "n.stuck IS NULL"),
        ] {
            if let Some(f) = flag {
                conds.push(if f { yes } else { no });
            }
        }
        let sql = if conds.is_empty() {
            "1".to_string()
        } else {
            conds.join(" AND ")
        };
        (sql, args)
    }
}

/// Up to `limit` nodes matching `filter` with ids after `after`, by id: a keyset page,
/// stable under concurrent writes (a node present throughout is listed exactly once).
/// One query, MACs joined in, so a page of thousands costs one pass.
pub(super) fn nodes_page(
    conn: &Connection,
    filter: &NodeFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Node>, StoreError> {
    let (cond, mut args) = filter.sql();
    let cols = NODE_COLS
        .split(", ")
        .map(|c| format!("n.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {cols}, m.mac FROM \
           (SELECT * FROM nodes n WHERE {cond} AND n.id > ? ORDER BY n.id LIMIT ?) n \
         LEFT JOIN node_macs m ON m.node = n.id ORDER BY n.id, m.mac"
    );
    args.push(rusqlite::types::Value::Text(
        after.unwrap_or("").to_string(),
    ));
    args.push(rusqlite::types::Value::Integer(
        i64::try_from(limit).unwrap_or(-1),
    ));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out: Vec<Node> = Vec::new();
    let mut macs: Vec<MacAddr> = Vec::new();
    let mut pending: Option<RawNode> = None;
    let mac_col = NODE_COLS.split(',').count();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        if pending.as_ref().is_some_and(|p| p.id != id) {
            if let Some(raw) = pending.take() {
                out.push(node_with_macs(raw, std::mem::take(&mut macs))?);
            }
        }
        if pending.is_none() {
            pending = Some(raw_node(row)?);
        }
        if let Some(m) = row.get::<_, Option<String>>(mac_col)? {
            macs.push(
                m.parse()
                    .map_err(|e| StoreError::Corrupt(format!("bad MAC in database: {e}")))?,
            );
        }
    }
    if let Some(raw) = pending {
        out.push(node_with_macs(raw, macs)?);
    }
    Ok(out)
}

/// Nodes matching `filter`.
pub(super) fn count_nodes(conn: &Connection, filter: &NodeFilter) -> Result<u64, StoreError> {
    let (cond, args) = filter.sql();
    let sql = format!("SELECT COUNT(*) FROM nodes n WHERE {cond}");
    let n: i64 = conn
        .prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(args), |r| r.get(0))?;
    u(n, "node count")
}

/// Number of nodes each host owns (hosts owning none are absent).
pub(super) fn owned_counts(
    conn: &Connection,
) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT owner, COUNT(*) FROM nodes GROUP BY owner")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(h, n)| Ok((h, u(n, "node count")?)))
        .collect()
}

/// A node other than `except` that has one of `addresses` set, with that address: an
/// address is one node's at most.
pub(super) fn address_holder(
    conn: &Connection,
    addresses: &[IpAddr],
    except: &str,
) -> Result<Option<(IpAddr, String)>, StoreError> {
    for a in addresses {
        if let Some(node) = node_id_by_address(conn, a)?.filter(|n| n != except) {
            return Ok(Some((*a, node)));
        }
    }
    Ok(None)
}

/// The node an operator set `address` on, if any.
pub(super) fn node_id_by_address(
    conn: &Connection,
    address: &IpAddr,
) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT node FROM node_addresses WHERE address = ?1")?;
    Ok(stmt
        .query_row([address.to_canonical().to_string()], |r| r.get(0))
        .optional()?)
}

pub(super) fn node_id_by_mac(
    conn: &Connection,
    mac: &MacAddr,
) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT node FROM node_macs WHERE mac = ?1")?;
    Ok(stmt.query_row([mac.colons()], |r| r.get(0)).optional()?)
}

const FILE_SQL: &str = "SELECT f.node, f.path, f.digest, a.size FROM node_files f \
                        JOIN artifacts a ON a.digest = f.digest";

fn file_from_row(r: &Row<'_>) -> rusqlite::Result<(String, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn file_from_raw(
    (node, path, d, size): (String, String, String, i64),
) -> Result<NodeFile, StoreError> {
    Ok(NodeFile {
        node,
        path,
        digest: digest(&d)?,
        size: u(size, "size")?,
    })
}

/// `path` must already be normalized.
pub(super) fn node_file(conn: &Connection, path: &str) -> Result<Option<NodeFile>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{FILE_SQL} WHERE f.path = ?1"))?;
    let raw = stmt.query_row([path], file_from_row).optional()?;
    raw.map(file_from_raw).transpose()
}

pub(super) fn node_files(conn: &Connection, node: &str) -> Result<Vec<NodeFile>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{FILE_SQL} WHERE f.node = ?1 ORDER BY f.path"))?;
    let raws = stmt
        .query_map([node], file_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    raws.into_iter().map(file_from_raw).collect()
}

/// Hosts holding a blob: those recorded, and for a file kept in the store every host
/// (each replica has its bytes; no holding of it is recorded per host).
fn artifact_hosts(conn: &Connection, d: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT host FROM host_artifacts WHERE digest = ?1 \
         UNION SELECT name FROM hosts WHERE EXISTS (SELECT 1 FROM inline_files WHERE digest = ?1) \
         ORDER BY 1",
    )?;
    let hosts = stmt
        .query_map([d], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(hosts)
}

type RawArtifact = (String, i64, String, i64);

fn artifact_from_raw(
    conn: &Connection,
    (d, size, name, created_at): RawArtifact,
) -> Result<Artifact, StoreError> {
    Ok(Artifact {
        hosts: artifact_hosts(conn, &d)?,
        digest: digest(&d)?,
        size: u(size, "size")?,
        name,
        created_at,
    })
}

pub(super) fn artifact(conn: &Connection, d: &Digest) -> Result<Option<Artifact>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT digest, size, name, created_at FROM artifacts WHERE digest = ?1")?;
    let raw = stmt
        .query_row([d.to_hex()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    raw.map(|r| artifact_from_raw(conn, r)).transpose()
}

pub(super) fn artifacts(conn: &Connection) -> Result<Vec<Artifact>, StoreError> {
    artifacts_page(conn, None, None, None, usize::MAX)
}

/// Up to `limit` artifacts with digests after `after`, by digest, each with its holders;
/// only those named `name` and held by `host` when given. One query.
pub(super) fn artifacts_page(
    conn: &Connection,
    name: Option<&str>,
    host: Option<&str>,
    after: Option<&Digest>,
    limit: usize,
) -> Result<Vec<Artifact>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.digest, a.size, a.name, a.created_at, h.host FROM \
           (SELECT * FROM artifacts a WHERE a.digest > ?1 \
              AND (?2 IS NULL OR a.name = ?2) \
              AND (?3 IS NULL OR EXISTS (SELECT 1 FROM host_artifacts x \
                                         WHERE x.digest = a.digest AND x.host = ?3) \
                   OR (EXISTS (SELECT 1 FROM inline_files i WHERE i.digest = a.digest) \
                       AND EXISTS (SELECT 1 FROM hosts WHERE name = ?3))) \
            ORDER BY a.digest LIMIT ?4) a \
         LEFT JOIN host_artifacts h ON h.digest = a.digest ORDER BY a.digest, h.host",
    )?;
    let after = after.map(Digest::to_hex).unwrap_or_default();
    let limit = i64::try_from(limit).unwrap_or(-1);
    let mut rows = stmt.query(params![after, name, host, limit])?;
    let mut out: Vec<Artifact> = Vec::new();
    while let Some(r) = rows.next()? {
        let d: String = r.get(0)?;
        let holder: Option<String> = r.get(4)?;
        let same = out.last().is_some_and(|a| a.digest.to_hex() == d);
        if !same {
            out.push(Artifact {
                digest: digest(&d)?,
                size: u(r.get(1)?, "size")?,
                name: r.get(2)?,
                created_at: r.get(3)?,
                hosts: Vec::new(),
            });
        }
        if let (Some(h), Some(a)) = (holder, out.last_mut()) {
            a.hosts.push(h);
        }
    }
    // A file kept in the store is held by every host (see `artifact_hosts`).
    let mut inline = conn.prepare_cached("SELECT 1 FROM inline_files WHERE digest = ?1")?;
    let mut all_hosts: Option<Vec<String>> = None;
    for a in &mut out {
        if inline.exists([a.digest.to_hex()])? {
            let all = match &all_hosts {
                Some(h) => h,
                None => all_hosts.insert(
                    conn.prepare_cached("SELECT name FROM hosts ORDER BY name")?
                        .query_map([], |r| r.get(0))?
                        .collect::<Result<Vec<String>, _>>()?,
                ),
            };
            a.hosts.extend(all.iter().cloned());
            a.hosts.sort();
            a.hosts.dedup();
        }
    }
    Ok(out)
}

/// Number of artifacts.
pub(super) fn count_artifacts(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM artifacts")?
        .query_row([], |r| r.get(0))?;
    u(n, "artifact count")
}

/// Nodes whose files reference `d`, sorted.
pub(super) fn nodes_using(conn: &Connection, d: &Digest) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT DISTINCT node FROM node_files WHERE digest = ?1 ORDER BY node")?;
    let nodes = stmt
        .query_map([d.to_hex()], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(nodes)
}

type RawReservation = (String, String, i64, i64, i64);

fn raw_reservation(r: &Row<'_>) -> rusqlite::Result<RawReservation> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn reservation_from_raw(
    (node, holder, token, acquired_at, expires_at): RawReservation,
) -> Result<Reservation, StoreError> {
    Ok(Reservation {
        node,
        holder,
        token: u(token, "token")?,
        acquired_at,
        expires_at,
    })
}

/// The recorded reservation, live or expired.
pub(super) fn reservation(
    conn: &Connection,
    node: &str,
) -> Result<Option<Reservation>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT node, holder, token, acquired_at, expires_at FROM reservations WHERE node = ?1",
    )?;
    let raw = stmt.query_row([node], raw_reservation).optional()?;
    raw.map(reservation_from_raw).transpose()
}

pub(super) fn reservations(conn: &Connection) -> Result<Vec<Reservation>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT node, holder, token, acquired_at, expires_at FROM reservations ORDER BY node",
    )?;
    let raws = stmt
        .query_map([], raw_reservation)?
        .collect::<Result<Vec<_>, _>>()?;
    raws.into_iter().map(reservation_from_raw).collect()
}

pub(super) fn events_since(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, kind, node, host, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let raws = stmt
        .query_map(params![after, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    raws.into_iter()
        .map(|(seq, at, kind, node, host, data)| {
            Ok(Event {
                seq: u(seq, "event seq")?,
                at,
                kind,
                node,
                host,
                data: json(&data, "event data")?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Indexed reads of the reconciler and of artifact replication: each touches only the
// rows it needs (see `EXPLAIN QUERY PLAN` in the tests), never every node.
// ---------------------------------------------------------------------------------

fn nodes_where(
    conn: &Connection,
    clause: &str,
    arg: Option<&str>,
) -> Result<Vec<Node>, StoreError> {
    // Sorted here: an ORDER BY id would make SQLite walk the primary key (every node)
    // to avoid a sort instead of the small partial index.
    let sql = format!("SELECT {NODE_COLS} FROM nodes WHERE {clause}");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut raws = match arg {
        Some(a) => stmt
            .query_map([a], raw_node)?
            .collect::<Result<Vec<_>, _>>()?,
        None => stmt
            .query_map([], raw_node)?
            .collect::<Result<Vec<_>, _>>()?,
    };
    raws.sort_by(|a, b| a.id.cmp(&b.id));
    raws.into_iter().map(|r| node_from_raw(conn, r)).collect()
}

/// SQL of [`nodes_owned_by`] (index `nodes_owner`).
pub const SQL_NODES_OWNED_BY: &str = "owner = ?1";
/// SQL of [`migrating_nodes`] (partial index `nodes_migrating`).
pub const SQL_MIGRATING: &str = "handoff_to IS NOT NULL";
/// SQL of [`stuck_nodes`] (partial index `nodes_stuck`).
pub const SQL_STUCK: &str = "stuck IS NOT NULL";

/// Nodes owned by `owner`, by id.
pub(super) fn nodes_owned_by(conn: &Connection, owner: &str) -> Result<Vec<Node>, StoreError> {
    nodes_where(conn, SQL_NODES_OWNED_BY, Some(owner))
}

/// Nodes with a migration in progress, by id.
pub(super) fn migrating_nodes(conn: &Connection) -> Result<Vec<Node>, StoreError> {
    nodes_where(conn, SQL_MIGRATING, None)
}

/// Nodes flagged as impossible to take over, by id.
pub(super) fn stuck_nodes(conn: &Connection) -> Result<Vec<Node>, StoreError> {
    nodes_where(conn, SQL_STUCK, None)
}

/// SQL of [`node_counts`] (a walk of the covering index `nodes_owner`).
pub const SQL_NODE_COUNTS: &str = "SELECT owner, COUNT(*) FROM nodes GROUP BY owner";

/// Nodes per owning host (hosts owning none are absent).
pub(super) fn node_counts(
    conn: &Connection,
) -> Result<std::collections::BTreeMap<String, usize>, StoreError> {
    let mut stmt = conn.prepare_cached(SQL_NODE_COUNTS)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(h, n)| (h, n.max(0) as usize))
        .collect())
}

/// SQL of [`blob_digests_owned_by`]: the files of `owner`'s nodes that are blobs (not
/// kept in the store).
pub const SQL_BLOBS_OWNED_BY: &str = "SELECT f.node, f.digest FROM nodes n \
     JOIN node_files f ON f.node = n.id \
     WHERE n.owner = ?1 \
     AND NOT EXISTS (SELECT 1 FROM inline_files i WHERE i.digest = f.digest)";

/// SQL of [`blob_digests_of`].
pub const SQL_BLOBS_OF: &str = "SELECT f.digest FROM node_files f WHERE f.node = ?1 \
     AND NOT EXISTS (SELECT 1 FROM inline_files i WHERE i.digest = f.digest)";

/// (node, digest) of every blob the nodes of `owner` serve. Files kept in the store
/// are left out: every replica has them, so they never decide who may take a node.
pub(super) fn blob_digests_owned_by(
    conn: &Connection,
    owner: &str,
) -> Result<Vec<(String, Digest)>, StoreError> {
    let mut stmt = conn.prepare_cached(SQL_BLOBS_OWNED_BY)?;
    let rows = stmt
        .query_map([owner], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(n, d)| Ok((n, digest(&d)?)))
        .collect()
}

/// The blobs (not files kept in the store) one node serves.
pub(super) fn blob_digests_of(conn: &Connection, node: &str) -> Result<Vec<Digest>, StoreError> {
    let mut stmt = conn.prepare_cached(SQL_BLOBS_OF)?;
    let rows = stmt
        .query_map([node], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.iter().map(|d| digest(d)).collect()
}

/// Hosts recorded as holding the blob `d`, sorted.
pub(super) fn recorded_holders(conn: &Connection, d: &Digest) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT host FROM host_artifacts WHERE digest = ?1 ORDER BY host")?;
    let hosts = stmt
        .query_map([d.to_hex()], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(hosts)
}

/// When the active rebalance was asked for, if one is.
pub(super) fn rebalance_requested(conn: &Connection) -> Result<Option<Millis>, StoreError> {
    Ok(conn
        .query_row("SELECT requested_at FROM rebalance WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?)
}

/// SQL of [`wanted_blobs`]: blobs (not kept in the store) that nodes of group ?1
/// serve, and whether host ?2 is recorded as holding each.
pub const SQL_WANTED_BLOBS: &str = "SELECT a.digest, \
     EXISTS (SELECT 1 FROM host_artifacts h WHERE h.host = ?2 AND h.digest = a.digest) \
     FROM artifacts a \
     WHERE NOT EXISTS (SELECT 1 FROM inline_files i WHERE i.digest = a.digest) \
     AND EXISTS (SELECT 1 FROM node_files f JOIN nodes n ON n.id = f.node \
                 WHERE f.digest = a.digest AND n.group_name = ?1) \
     ORDER BY a.digest";

/// Blobs the nodes of `group` serve (files kept in the store left out), each with
/// whether `host` is recorded as holding it.
pub(super) fn wanted_blobs(
    conn: &Connection,
    group: &str,
    host: &str,
) -> Result<Vec<(Digest, bool)>, StoreError> {
    let mut stmt = conn.prepare_cached(SQL_WANTED_BLOBS)?;
    let rows = stmt
        .query_map([group, host], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(d, held)| Ok((digest(&d)?, held)))
        .collect()
}
