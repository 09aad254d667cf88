//! Versioned schema migrations, kept in code.
//!
//! `PRAGMA user_version` holds the number of migrations applied. Each migration runs in
//! its own transaction together with the version bump, so a crash mid-upgrade leaves the
//! previous version intact. Migrations are append-only: never edit a released one, add
//! the next.

use rusqlite::Connection;

use super::StoreError;

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9];

/// The schema version this build writes.
pub fn current_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// Version 1: hosts, nodes and their MACs, artifacts, per-host blobs, per-node boot
/// files, reservations, and the event feed.
///
/// Times are Unix milliseconds (`INTEGER`), digests 64-character lowercase hex, MACs
/// `aa:bb:cc:dd:ee:ff`. Foreign keys cascade from nodes so a removed node leaves no
/// orphan MAC, file or reservation; artifacts are *not* cascaded into `node_files`
/// (removing a referenced artifact is refused by the command instead).
const V1: &str = r#"
CREATE TABLE hosts (
    name            TEXT PRIMARY KEY,
    group_name      TEXT NOT NULL,
    addresses       TEXT NOT NULL,          -- JSON array of strings
    registered_at   INTEGER NOT NULL,
    last_heartbeat  INTEGER NOT NULL
) STRICT;

CREATE TABLE nodes (
    id              TEXT PRIMARY KEY,
    group_name      TEXT NOT NULL,
    arch            TEXT,
    owner           TEXT NOT NULL REFERENCES hosts(name),
    epoch           INTEGER NOT NULL,       -- bumped on every ownership change
    provision_state TEXT NOT NULL,
    handoff_to      TEXT REFERENCES hosts(name),
    handoff_since   INTEGER,
    boot_profile    TEXT,                   -- JSON BootProfile, NULL = none
    last_token      INTEGER NOT NULL DEFAULT 0, -- last fencing token issued
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;
CREATE INDEX nodes_owner ON nodes(owner);

CREATE TABLE node_macs (
    mac   TEXT PRIMARY KEY,
    node  TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE
) STRICT;
CREATE INDEX node_macs_node ON node_macs(node);

CREATE TABLE artifacts (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE host_artifacts (
    host         TEXT NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,
    digest       TEXT NOT NULL REFERENCES artifacts(digest) ON DELETE CASCADE,
    recorded_at  INTEGER NOT NULL,
    PRIMARY KEY (host, digest)
) STRICT;
CREATE INDEX host_artifacts_digest ON host_artifacts(digest);

CREATE TABLE node_files (
    path    TEXT PRIMARY KEY,               -- normalized served path, unique fleet-wide
    node    TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    digest  TEXT NOT NULL REFERENCES artifacts(digest)
) STRICT;
CREATE INDEX node_files_node ON node_files(node);
CREATE INDEX node_files_digest ON node_files(digest);

CREATE TABLE reservations (
    node         TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    holder       TEXT NOT NULL,
    token        INTEGER NOT NULL,
    acquired_at  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE events (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the feed's cursor
    at    INTEGER NOT NULL,
    kind  TEXT NOT NULL,
    node  TEXT,
    host  TEXT,
    data  TEXT NOT NULL                       -- JSON object
) STRICT;
"#;

/// Brings the database up to [`current_version`]; returns the version found before.
pub fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = current_version();
    if found > supported {
        // A newer Baton wrote this file; running old code on it could corrupt it.
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql).map_err(|e| StoreError::Migration {
            version: i as u32 + 1,
            source: e,
        })?;
        tx.pragma_update(None, "user_version", i as u32 + 1)?;
        tx.commit()?;
    }
    Ok(found)
}

/// Version 2: the replicated log's position in this database. Written in the same
/// transaction as the commands it covers, so after a crash the state machine knows
/// exactly which log entries it holds: none is lost or applied twice.
const V2: &str = r#"
CREATE TABLE raft_applied (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    log_id      TEXT NOT NULL,              -- JSON openraft LogId
    membership  TEXT NOT NULL               -- JSON openraft StoredMembership
) STRICT;
"#;

/// Version 3: ownership handoff. A draining host gives its nodes away; a node that no
/// live host can take over keeps its dead owner and says why.
const V3: &str = r#"
ALTER TABLE hosts ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN stuck TEXT;
"#;

/// Version 4: fencing of migration flips, and small rendered files kept in the store.
///
/// A node flipped by migration waits for its old owner to confirm (a heartbeat whose
/// `seen_seq` reaches `fence_seq`, the flip's event) or to be down, so the old and the
/// new owner never answer together. `inline_files` holds the bytes of small rendered
/// files (configs, scripts), so every replica has them the moment the profile commits:
/// a takeover never waits for them to be fetched.
const V4: &str = r#"
ALTER TABLE hosts ADD COLUMN seen_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN fence_host TEXT;
ALTER TABLE nodes ADD COLUMN fence_seq INTEGER;
-- Every heartbeat clears the fences its host confirms: find them without a scan.
CREATE INDEX nodes_fence_host ON nodes(fence_host) WHERE fence_host IS NOT NULL;
CREATE TABLE inline_files (
    digest  TEXT PRIMARY KEY,
    content BLOB NOT NULL
) STRICT;
"#;

/// Version 5: where the files of a node come from when another tool writes them (a
/// provisioning tool's TFTP tree, see `crate::ingest`): an ingest only rewrites and
/// clears nodes it is the source of.
const V5: &str = r#"
CREATE TABLE node_sources (
    node    TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    source  TEXT NOT NULL
) STRICT;
"#;

/// Version 6: the reconciler at fleet size. It reads only the nodes that may need a
/// change (owned by a down or draining host, migrating, or flagged stuck), found through
/// these indexes instead of a scan of every node; `rebalance` holds a rebalance asked for
/// until the reconciler has finished it.
const V6: &str = r#"
CREATE INDEX nodes_migrating ON nodes(handoff_to) WHERE handoff_to IS NOT NULL;
CREATE INDEX nodes_stuck ON nodes(owner) WHERE stuck IS NOT NULL;
CREATE TABLE rebalance (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    requested_at  INTEGER NOT NULL
) STRICT;
"#;

/// Version 7: outcomes of recent tagged writes ([`super::Command::Idempotent`]), so a
/// write retried after its answer was lost applies once and gets its first answer
/// again. Pruned on every tagged write by the proposer's time and by count (oldest
/// `seq` first), so the table stays bounded and every replica prunes alike.
const V7: &str = r#"
CREATE TABLE requests (
    seq      INTEGER PRIMARY KEY,           -- insertion order: pruning by count
    id       TEXT NOT NULL UNIQUE,          -- RequestId, 32 hex digits
    at       INTEGER NOT NULL,              -- proposer's time of the first attempt
    outcome  TEXT NOT NULL                  -- JSON Outcome of the first application
) STRICT;
CREATE INDEX requests_at ON requests(at);
"#;

/// Version 8: addresses an operator sets on a node. With `node_files = "bound"` they
/// may fetch the node's files on whichever host owns it, as the addresses learned from
/// its own PXE exchange may on the host that saw it. Replicated like every node field,
/// so they hold across a takeover. `nodes.addresses` (a JSON array of address strings,
/// sorted) is what a node read returns; `node_addresses` makes an address one node's at
/// most and finds the node of an address, both written by the one command that sets
/// them.
const V8: &str = r#"
ALTER TABLE nodes ADD COLUMN addresses TEXT NOT NULL DEFAULT '[]';
CREATE TABLE node_addresses (
    address TEXT PRIMARY KEY,               -- canonical text: 10.0.0.5, fd00::5
    node    TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE
) STRICT;
CREATE INDEX node_addresses_node ON node_addresses(node);
"#;

/// Version 9: a node's boot token (`node_files = "token"`): 32 hex digits that its
/// rendered files put in front of their node-file URLs, written together with those
/// files by the command that sets them, so every replica holds the token the files
/// carry. NULL while its files carry none (rendered in another mode, or written by
/// another tool).
const V9: &str = r#"
ALTER TABLE nodes ADD COLUMN boot_token TEXT;
"#;
