//! How Raft messages travel between hosts, and how large they may be (sans-IO: values
//! in, bytes out, and back; the limits are [`super::rpc`]'s).
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

use super::rpc::{APPEND_BODY_MAX, ENTRY_MAX, ENVELOPE_MAX, SNAPSHOT_BODY_MAX, SNAPSHOT_CHUNK};
use super::{typ, NodeId, Peer, TypeConfig};
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, Entry, EntryPayload, Membership, StoredMembership};
    use proptest::prelude::*;

    use super::*;
    use crate::blobs::Digest;
    use crate::store::command::{BootNotice, FileSpec, ImportItem, ImportProfile};
    use crate::store::raft::rpc::{
        JoinRequest, PreVoteRequest, RemoveRequest, APPEND_BATCH, PROPOSE_BODY_MAX, SMALL_BODY_MAX,
    };
    use crate::store::types::{BootProfile, KernelBoot, ProvisionState, RequestId, TransferReason};

    const BIG: u64 = u64::MAX;
    const MS: i64 = i64::MIN;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(BIG, BIG), index)
    }

    fn vote() -> Vote<NodeId> {
        let mut v = Vote::new(BIG, BIG);
        v.commit();
        v
    }

    /// One of every command (the match below fails to compile when one is added).
    fn samples() -> Vec<Command> {
        let d = Digest::of(b"x");
        let text = "line one\n\"quoted\"\tand \u{e9}\u{1F600}\n".repeat(300);
        let profile = BootProfile::Deploy(KernelBoot {
            kernel: d,
            ramdisk: Digest::of(b"y"),
            cmdline: "console=ttyS0".into(),
        });
        let file = |text: Option<String>| FileSpec {
            path: "pxelinux.cfg/01-52-54-00-00-00-01".into(),
            digest: d,
            size: 10,
            held: false,
            text,
        };
        let v = vec![
            Command::RegisterHost {
                name: "h1".into(),
                group: "g".into(),
                addresses: vec!["http://127.0.0.1:1".into()],
                at: MS,
            },
            Command::Heartbeat {
                host: "h1".into(),
                at: 1,
                seen: BIG,
            },
            Command::EnrollNode {
                node: "n".into(),
                macs: vec!["52:54:00:00:00:01".parse().unwrap()],
                group: "g".into(),
                arch: None,
                owner: "h1".into(),
                at: 2,
            },
            Command::UpdateNode {
                node: "n".into(),
                macs: None,
                group: Some("g2".into()),
                arch: Some(None),
                expected_epoch: Some(3),
                at: 3,
            },
            Command::UpdateNode {
                node: "n".into(),
                macs: Some(vec![]),
                group: None,
                arch: None,
                expected_epoch: None,
                at: 3,
            },
            Command::SetNodeAddresses {
                node: "n".into(),
                addresses: vec!["10.0.0.9".parse().unwrap(), "fd00::9".parse().unwrap()],
                at: 4,
            },
            Command::RemoveNode {
                node: "n".into(),
                at: 4,
            },
            Command::SetProvisionState {
                node: "n".into(),
                state: ProvisionState::Active,
                expected_epoch: None,
                at: 5,
            },
            Command::SetBootProfile {
                boot_token: Some("00112233445566778899aabbccddeeff".parse().unwrap()),
                node: "n".into(),
                profile: Some(profile.clone()),
                files: vec![file(Some(text.clone())), file(None)],
                host: "h1".into(),
                expected_epoch: Some(1),
                at: 6,
            },
            Command::SetBootProfile {
                boot_token: None,
                node: "n".into(),
                profile: Some(BootProfile::Local),
                files: vec![],
                host: "h1".into(),
                expected_epoch: None,
                at: 6,
            },
            Command::SetNodeFiles {
                node: "n".into(),
                files: vec![file(None)],
                source: "ingest:h1:/tftpboot".into(),
                host: "h1".into(),
                at: 6,
            },
            Command::BeginMigration {
                node: "n".into(),
                to: "h2".into(),
                expected_epoch: 1,
                at: 7,
            },
            Command::AbortMigration {
                node: "n".into(),
                expected_epoch: 2,
                at: 8,
            },
            Command::SetDraining {
                host: "h1".into(),
                draining: true,
                at: 9,
            },
            Command::FlagNode {
                node: "n".into(),
                stuck: Some("why".into()),
                at: 10,
            },
            Command::TransferOwnership {
                node: "n".into(),
                to: "h2".into(),
                expected_epoch: 1,
                reason: TransferReason::Takeover,
                stale_before: Some(11),
                at: 11,
            },
            Command::RegisterArtifact {
                digest: d,
                size: BIG,
                name: "vmlinuz".into(),
                host: "h1".into(),
                at: 12,
            },
            Command::RecordHostArtifact {
                host: "h1".into(),
                digest: d,
                present: false,
                at: 13,
            },
            Command::RemoveArtifact { digest: d, at: 14 },
            Command::AcquireReservation {
                node: "n".into(),
                holder: "x".into(),
                ttl_ms: 15,
                at: 15,
            },
            Command::RenewReservation {
                node: "n".into(),
                holder: "x".into(),
                token: BIG,
                ttl_ms: 16,
                at: 16,
            },
            Command::ReleaseReservation {
                node: "n".into(),
                holder: "x".into(),
                token: 1,
                at: 17,
            },
            Command::BootNotices {
                host: "h1".into(),
                notices: vec![BootNotice {
                    node: "n".into(),
                    stuck: true,
                    kind: "stalled".into(),
                    since: MS,
                    reason: "stalled after config ok \u{e9}".repeat(50),
                }],
                at: 18,
            },
            Command::RecordHostArtifacts {
                host: "h1".into(),
                digests: vec![d, Digest::of(b"y")],
                at: 18,
            },
            Command::OwnershipSteps {
                steps: vec![
                    Command::FlagNode {
                        node: "n".into(),
                        stuck: None,
                        at: 19,
                    },
                    Command::AbortMigration {
                        node: "n".into(),
                        expected_epoch: BIG,
                        at: 19,
                    },
                ],
            },
            Command::SetRebalance {
                active: true,
                at: 20,
            },
        ];
        let mut v = v.clone();
        v.push(Command::Batch {
            commands: v.clone(),
        });
        // Neither is batched: an import applies its items one by one, and every
        // proposal travels tagged with its request id.
        let import = Command::ImportNodes {
            host: "h1".into(),
            group: "g".into(),
            nodes: vec![
                ImportItem {
                    node: "n".into(),
                    macs: vec!["52:54:00:00:00:01".parse().unwrap()],
                    group: Some("g".into()),
                    arch: Some("aarch64".into()),
                    addresses: Some(vec!["10.0.0.9".parse().unwrap()]),
                    profile: Some(ImportProfile {
                        boot_token: None,
                        profile: Some(profile.clone()),
                        files: vec![file(None), file(Some(text.clone()))],
                    }),
                },
                ImportItem {
                    node: "m".into(),
                    macs: vec![],
                    group: None,
                    arch: None,
                    addresses: None,
                    profile: None,
                },
            ],
            at: 18,
        };
        v.push(import.clone());
        v.push(Command::Idempotent {
            request: RequestId(u128::MAX),
            at: 19,
            command: Box::new(import),
        });
        for c in &v {
            match c {
                Command::RegisterHost { .. }
                | Command::Heartbeat { .. }
                | Command::EnrollNode { .. }
                | Command::UpdateNode { .. }
                | Command::SetNodeAddresses { .. }
                | Command::RemoveNode { .. }
                | Command::SetProvisionState { .. }
                | Command::SetBootProfile { .. }
                | Command::SetNodeFiles { .. }
                | Command::BeginMigration { .. }
                | Command::AbortMigration { .. }
                | Command::SetDraining { .. }
                | Command::FlagNode { .. }
                | Command::TransferOwnership { .. }
                | Command::RegisterArtifact { .. }
                | Command::RecordHostArtifact { .. }
                | Command::RemoveArtifact { .. }
                | Command::AcquireReservation { .. }
                | Command::RenewReservation { .. }
                | Command::ReleaseReservation { .. }
                | Command::BootNotices { .. }
                | Command::RecordHostArtifacts { .. }
                | Command::OwnershipSteps { .. }
                | Command::SetRebalance { .. }
                | Command::Batch { .. }
                | Command::ImportNodes { .. }
                | Command::Idempotent { .. } => {}
            }
        }
        v
    }

    fn membership(hosts: u64) -> Membership<NodeId, Peer> {
        let nodes: BTreeMap<NodeId, Peer> = (0..hosts)
            .map(|i| {
                (
                    BIG - i,
                    Peer {
                        addr: format!("http://[fd00:0:0:0:0:0:0:{i:x}]:65535/{}", "p".repeat(40)),
                        host: format!("{i}{}", "h".repeat(63 - i.to_string().len())),
                    },
                )
            })
            .collect();
        let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
        Membership::new(vec![voters], nodes)
    }

    fn normal(index: u64, c: Command) -> typ::Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(c),
        }
    }

    fn append(entries: Vec<typ::Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: vote(),
            prev_log_id: Some(log_id(BIG)),
            entries,
            leader_commit: Some(log_id(BIG)),
        }
    }

    /// The largest command a proposal may carry: exactly [`ENTRY_MAX`] bytes of JSON,
    /// most of it one long unescaped string (CBOR's worst case against JSON).
    fn largest_command() -> Command {
        let with = |text: String| Command::SetBootProfile {
            boot_token: None,
            node: "n".repeat(64),
            profile: Some(BootProfile::Local),
            files: vec![FileSpec {
                path: "p".into(),
                digest: Digest::of(b""),
                size: BIG,
                held: true,
                text: Some(text),
            }],
            host: "h".repeat(64),
            expected_epoch: Some(BIG),
            at: MS,
        };
        let base = check_command(&with(String::new())).unwrap();
        let c = with("x".repeat(ENTRY_MAX - base));
        assert_eq!(check_command(&c), Ok(ENTRY_MAX));
        c
    }

    #[test]
    fn every_command_round_trips_through_the_append_encoding() {
        let mut entries: Vec<typ::Entry> = samples()
            .into_iter()
            .enumerate()
            .map(|(i, c)| normal(i as u64, c))
            .collect();
        entries.push(Entry {
            log_id: log_id(100),
            payload: EntryPayload::Membership(membership(5)),
        });
        entries.push(Entry {
            log_id: log_id(101),
            payload: EntryPayload::Blank,
        });
        let req = append(entries);
        let (body, sent) = encode_append(&req).unwrap();
        assert_eq!(sent, req.entries.len());
        let back = decode_append(&body).unwrap();
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.prev_log_id, req.prev_log_id);
        assert_eq!(back.leader_commit, req.leader_commit);
        assert_eq!(back.entries, req.entries);
        // Binary, not a JSON array of numbers: about the size of the JSON, not 3x it.
        let json = serde_json::to_vec(&req).unwrap();
        assert!(body.len() <= json.len(), "{} > {}", body.len(), json.len());
    }

    #[test]
    fn the_largest_bodies_the_code_produces_fit_their_routes() {
        // One entry of the largest command, every number at its widest.
        let c = largest_command();
        let req = append(vec![normal(BIG, c.clone())]);
        let (body, sent) = encode_append(&req).unwrap();
        assert_eq!(sent, 1);
        assert!(body.len() <= APPEND_BODY_MAX, "{}", body.len());
        let forwarded = serde_json::to_vec(&c).unwrap();
        assert!(forwarded.len() <= PROPOSE_BODY_MAX);

        // A batch as the log reader packs it: stored bytes up to APPEND_BATCH.
        let small = |i: u64| {
            normal(
                i,
                Command::FlagNode {
                    node: "n".repeat(64),
                    stuck: Some("s".repeat(1000 + (i as usize % 100))),
                    at: MS,
                },
            )
        };
        let mut entries = Vec::new();
        let mut stored = 0;
        for i in 0.. {
            let e = small(i);
            let n = serde_json::to_vec(&e).unwrap().len();
            if stored + n > APPEND_BATCH {
                break;
            }
            stored += n;
            entries.push(e);
        }
        let n = entries.len();
        let (body, sent) = encode_append(&append(entries)).unwrap();
        assert_eq!(sent, n, "a packed batch goes whole");
        assert!(body.len() <= APPEND_BODY_MAX);

        // A full snapshot chunk with the metadata of a large membership.
        let chunk = InstallSnapshotRequest::<TypeConfig> {
            vote: vote(),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(BIG)),
                last_membership: StoredMembership::new(Some(log_id(BIG)), membership(100)),
                snapshot_id: format!("{BIG}-{BIG}-{BIG}-{BIG}"),
            },
            offset: BIG,
            data: vec![0xa5; SNAPSHOT_CHUNK],
            done: true,
        };
        let body = encode_chunk(&chunk).unwrap();
        assert!(body.len() <= SNAPSHOT_BODY_MAX);
        assert_eq!(decode_chunk(&body).unwrap(), chunk);

        // The small JSON routes.
        let small_bodies = [
            serde_json::to_vec(&openraft::raft::VoteRequest::new(vote(), Some(log_id(BIG))))
                .unwrap(),
            serde_json::to_vec(&PreVoteRequest {
                candidate: BIG,
                last_log_id: Some(log_id(BIG)),
            })
            .unwrap(),
            serde_json::to_vec(&JoinRequest {
                node_id: BIG,
                addr: format!("http://{}:65535", "a".repeat(253)),
                host: "h".repeat(64),
            })
            .unwrap(),
            serde_json::to_vec(&RemoveRequest {
                node_ids: vec![BIG; 100],
            })
            .unwrap(),
        ];
        for b in small_bodies {
            assert!(b.len() <= SMALL_BODY_MAX, "{}", b.len());
        }
    }

    #[test]
    fn the_largest_batched_writes_fit_one_entry() {
        use crate::store::command::{MAX_RECORDED, MAX_STEPS};
        let holdings = Command::RecordHostArtifacts {
            host: "h".repeat(64),
            digests: (0..MAX_RECORDED)
                .map(|i| Digest::of(&i.to_be_bytes()))
                .collect(),
            at: MS,
        };
        // Steps at their widest: 64-byte names, every number at its widest, a stuck
        // reason longer than any the reconciler writes (two names and a sentence).
        let steps = Command::OwnershipSteps {
            steps: (0..MAX_STEPS)
                .map(|i| match i % 2 {
                    0 => Command::FlagNode {
                        node: "n".repeat(64),
                        stuck: Some("s".repeat(400)),
                        at: MS,
                    },
                    _ => Command::TransferOwnership {
                        node: "n".repeat(64),
                        to: "h".repeat(64),
                        expected_epoch: BIG,
                        reason: TransferReason::Takeover,
                        stale_before: Some(MS),
                        at: MS,
                    },
                })
                .collect(),
        };
        for c in [holdings, steps] {
            let size = check_command(&c).unwrap();
            assert!(size <= ENTRY_MAX / 2, "{size} bytes: half an entry at most");
        }
    }

    #[test]
    fn too_many_entries_are_cut_to_the_longest_prefix_that_fits() {
        let c = largest_command();
        let entries: Vec<_> = (0..3).map(|i| normal(i, c.clone())).collect();
        let req = append(entries);
        let (body, sent) = encode_append(&req).unwrap();
        assert_eq!(sent, 1, "one entry of ENTRY_MAX per body");
        assert!(body.len() <= APPEND_BODY_MAX);
        assert_eq!(decode_append(&body).unwrap().entries, req.entries[..1]);
    }

    #[test]
    fn an_oversized_command_is_refused_before_the_log() {
        let Command::SetBootProfile { mut files, .. } = largest_command() else {
            unreachable!()
        };
        files[0].text.as_mut().unwrap().push('x');
        let c = Command::SetBootProfile {
            boot_token: None,
            node: "n".repeat(64),
            profile: Some(BootProfile::Local),
            files,
            host: "h".repeat(64),
            expected_epoch: Some(BIG),
            at: MS,
        };
        assert!(matches!(
            check_command(&c),
            Err(WireError::TooLarge { size, max: ENTRY_MAX, .. }) if size == ENTRY_MAX + 1
        ));
    }

    #[test]
    fn bodies_over_their_limit_are_refused() {
        let big = vec![0u8; APPEND_BODY_MAX + 1];
        assert!(matches!(
            decode_append(&big),
            Err(WireError::TooLarge { .. })
        ));
        let big = vec![0u8; SNAPSHOT_BODY_MAX + 1];
        assert!(matches!(
            decode_chunk(&big),
            Err(WireError::TooLarge { .. })
        ));
        let mut lying = (u32::MAX).to_be_bytes().to_vec();
        lying.extend_from_slice(b"{}");
        assert!(matches!(
            decode_chunk(&lying),
            Err(WireError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_append(&body);
            let _ = decode_chunk(&body);
            let mut framed = (body.len() as u32 / 2).to_be_bytes().to_vec();
            framed.extend_from_slice(&body);
            let _ = decode_chunk(&framed);
        }
    }
}
