//! How Raft messages travel between hosts, and how large they may be (sans-IO: values
//! in, bytes out, and back; the limits are [`crate::api::peer`]'s).
//!
//! - `AppendEntries` is CBOR: binary and self-describing (a [`Command`] is an internally
//!   tagged enum, which formats without `deserialize_any` cannot read back), strings as
//!   they are. Its entries are cut to fit [`APPEND_BODY_MAX`].
//! - An `InstallSnapshot` chunk is a 4-byte big-endian length, a small JSON envelope
//!   (vote, snapshot metadata, offset, done), then the chunk's raw bytes.
//! - Answers and the small messages (votes, joins, removals) are JSON.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::{LogId, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use super::{typ, NodeId, Peer, TypeConfig};
use crate::api::peer::{
    APPEND_BODY_MAX, ENTRY_MAX, ENVELOPE_MAX, SNAPSHOT_BODY_MAX, SNAPSHOT_CHUNK,
};
use crate::store::Command;

/// Content type of an `AppendEntries` body.
pub const CBOR: &str = "application/cbor";
/// Content type of an `InstallSnapshot` body.
pub const OCTETS: &str = "application/octet-stream";

/// A message that cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Over its limit.
    #[error("{what} of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not the expected encoding.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl WireError {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "peer_body_too_large",
            WireError::Malformed { .. } => "peer_body_malformed",
        }
    }
}

/// Checks that `cmd` fits one log entry: its JSON (as the log stores it and a
/// forwarded write carries it) is at most [`ENTRY_MAX`] bytes. Returns that size.
pub fn check_command(cmd: &Command) -> Result<usize, WireError> {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, cmd).map_err(|e| WireError::Malformed {
        what: "command",
        reason: e.to_string(),
    })?;
    if counter.0 > ENTRY_MAX {
        return Err(WireError::TooLarge {
            what: "a single change",
            size: counter.0,
            max: ENTRY_MAX,
        });
    }
    Ok(counter.0)
}

/// Counts bytes written.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `AppendEntriesRequest` as it is encoded, over a prefix of its entries.
#[derive(Serialize)]
struct AppendOut<'a> {
    vote: &'a Vote<NodeId>,
    prev_log_id: &'a Option<LogId<NodeId>>,
    entries: &'a [typ::Entry],
    leader_commit: &'a Option<LogId<NodeId>>,
}

fn encode_prefix(req: &AppendEntriesRequest<TypeConfig>, n: usize) -> Vec<u8> {
    let out = AppendOut {
        vote: &req.vote,
        prev_log_id: &req.prev_log_id,
        entries: &req.entries[..n],
        leader_commit: &req.leader_commit,
    };
    let mut buf = Vec::new();
    // Writing to a Vec fails only on a value serde cannot represent, which these
    // types never are.
    ciborium::into_writer(&out, &mut buf).expect("Raft messages always encode");
    buf
}

/// Encodes `req` with as many of its entries as fit [`APPEND_BODY_MAX`]; returns the
/// body and how many entries it carries (the caller reports the rest as not sent).
/// Fails only when even its first entry alone does not fit, which the proposal check
/// ([`check_command`]) rules out.
pub fn encode_append(
    req: &AppendEntriesRequest<TypeConfig>,
) -> Result<(Vec<u8>, usize), WireError> {
    let all = encode_prefix(req, req.entries.len());
    if all.len() <= APPEND_BODY_MAX {
        return Ok((all, req.entries.len()));
    }
    // Largest prefix that fits, by bisection (rare: the log reader already packs
    // batches of about `APPEND_BATCH` bytes).
    let (mut lo, mut hi) = (0, req.entries.len());
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if encode_prefix(req, mid).len() <= APPEND_BODY_MAX {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return Err(WireError::TooLarge {
            what: "an AppendEntries with one entry",
            size: encode_prefix(req, 1).len(),
            max: APPEND_BODY_MAX,
        });
    }
    Ok((encode_prefix(req, lo), lo))
}

/// Decodes an `AppendEntries` body.
pub fn decode_append(body: &[u8]) -> Result<AppendEntriesRequest<TypeConfig>, WireError> {
    if body.len() > APPEND_BODY_MAX {
        return Err(WireError::TooLarge {
            what: "AppendEntries",
            size: body.len(),
            max: APPEND_BODY_MAX,
        });
    }
    ciborium::from_reader(body).map_err(|e| WireError::Malformed {
        what: "AppendEntries",
        reason: e.to_string(),
    })
}

/// What travels with each snapshot chunk.
#[derive(Serialize, Deserialize)]
struct ChunkEnvelope {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, Peer>,
    offset: u64,
    done: bool,
}

/// Encodes one `InstallSnapshot` chunk.
pub fn encode_chunk(req: &InstallSnapshotRequest<TypeConfig>) -> Result<Vec<u8>, WireError> {
    if req.data.len() > SNAPSHOT_CHUNK {
        return Err(WireError::TooLarge {
            what: "snapshot chunk",
            size: req.data.len(),
            max: SNAPSHOT_CHUNK,
        });
    }
    let env = ChunkEnvelope {
        vote: req.vote,
        meta: req.meta.clone(),
        offset: req.offset,
        done: req.done,
    };
    let env = serde_json::to_vec(&env).map_err(|e| WireError::Malformed {
        what: "snapshot envelope",
        reason: e.to_string(),
    })?;
    if env.len() > ENVELOPE_MAX {
        return Err(WireError::TooLarge {
            what: "snapshot envelope",
            size: env.len(),
            max: ENVELOPE_MAX,
        });
    }
    let mut body = Vec::with_capacity(4 + env.len() + req.data.len());
    body.extend_from_slice(&(env.len() as u32).to_be_bytes());
    body.extend_from_slice(&env);
    body.extend_from_slice(&req.data);
    Ok(body)
}

/// Decodes one `InstallSnapshot` chunk.
pub fn decode_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, WireError> {
    let bad = |reason: String| WireError::Malformed {
        what: "snapshot chunk",
        reason,
    };
    if body.len() > SNAPSHOT_BODY_MAX {
        return Err(WireError::TooLarge {
            what: "snapshot chunk",
            size: body.len(),
            max: SNAPSHOT_BODY_MAX,
        });
    }
    let Some((len, rest)) = body.split_first_chunk::<4>() else {
        return Err(bad(format!("{} bytes, no envelope length", body.len())));
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > ENVELOPE_MAX || len > rest.len() {
        return Err(bad(format!(
            "envelope length {len} (limit {ENVELOPE_MAX}, {} bytes follow)",
            rest.len()
        )));
    }
    let (env, data) = rest.split_at(len);
    let env: ChunkEnvelope =
        serde_json::from_slice(env).map_err(|e| bad(format!("envelope: {e}")))?;
    if data.len() > SNAPSHOT_CHUNK {
        return Err(WireError::TooLarge {
            what: "snapshot chunk data",
            size: data.len(),
            max: SNAPSHOT_CHUNK,
        });
    }
    Ok(InstallSnapshotRequest {
        vote: env.vote,
        meta: env.meta,
        offset: env.offset,
        data: data.to_vec(),
        done: env.done,
    })
}
