//! The stuck detector (a driver): every few seconds it assesses the live attempts of
//! the nodes this host owns ([`super::stuck::transitions`]) and turns each change of
//! their stuck flag into one event of the replicated feed. All changes of one pass go
//! in one log entry ([`Command::BootNotices`]), so a storm of stuck nodes costs a few
//! entries, not one per node. Flags are kept in the local record file, so a restart
//! neither repeats nor forgets a transition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::health::Stuck;
use super::recorder::BootRecorder;
use super::stuck::transitions;
use crate::clock::now_ms;
use crate::store::raft::propose::Proposer;
use crate::store::{BootNotice, Command, Store};

/// How often the detector looks.
pub const PASS: Duration = Duration::from_secs(2);
/// Notices per log entry at most.
const PER_ENTRY: usize = 500;

/// What the detector works with.
pub struct Detector {
    /// Records and live attempts.
    pub recorder: BootRecorder,
    /// The local replica (who owns which node).
    pub store: Arc<Store>,
    /// To append the notices.
    pub proposer: Proposer,
}

/// Runs passes until `shutdown`.
pub async fn run(d: Detector, shutdown: CancellationToken) {
    let mut flagged: HashMap<String, Stuck> = match d.recorder.local().flags() {
        Ok(f) => f.into_iter().collect(),
        Err(e) => {
            warn!(error = %e, "cannot read the stuck flags; starting with none");
            HashMap::new()
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PASS) => {}
        }
        pass(&d, &mut flagged).await;
    }
}

async fn pass(d: &Detector, flagged: &mut HashMap<String, Stuck>) {
    let host = d.recorder.host().to_string();
    let tracked = d.recorder.tracked();
    let groups: HashMap<&str, &str> = tracked
        .iter()
        .map(|(n, t)| (n.as_str(), t.group.as_str()))
        .collect();
    let changes = transitions(
        tracked.iter().map(|(n, t)| (n.as_str(), &t.attempt)),
        flagged,
        now_ms(),
        |n| d.recorder.transferring(n),
        d.recorder.rules(),
    );
    // Only the owner raises a flag; a flag of a node that moved away or is gone is
    // closed (with an event, so the feed pairs every raise).
    let mut notices = Vec::new();
    let mut applied: Vec<(String, Option<Stuck>)> = Vec::new();
    for (node, change) in changes {
        let owner = d.store.node(&node).ok().flatten().map(|n| n.owner);
        match (change, owner) {
            (Some(s), Some(o)) if o == host => {
                notices.push(BootNotice {
                    node: node.clone(),
                    stuck: true,
                    kind: s.kind.as_str().to_string(),
                    since: s.since,
                    reason: s.reason.clone(),
                });
                applied.push((node, Some(s)));
            }
            (Some(_), _) => {}
            (None, _) => {
                notices.push(BootNotice {
                    node: node.clone(),
                    stuck: false,
                    kind: "progress".into(),
                    since: now_ms(),
                    reason: "the boot went on".into(),
                });
                applied.push((node, None));
            }
        }
    }
    for (node, s) in flagged.iter() {
        let owner = d.store.node(node).ok().flatten().map(|n| n.owner);
        if owner.as_deref() != Some(host.as_str()) && !applied.iter().any(|(n, _)| n == node) {
            notices.push(BootNotice {
                node: node.clone(),
                stuck: false,
                kind: "moved".into(),
                since: s.since,
                reason: match owner {
                    Some(o) => format!("now served by {o}"),
                    None => "node removed".into(),
                },
            });
            applied.push((node.clone(), None));
        }
    }
    for (chunk, changes) in notices.chunks(PER_ENTRY).zip(applied.chunks(PER_ENTRY)) {
        let cmd = Command::BootNotices {
            host: host.clone(),
            notices: chunk.to_vec(),
            at: now_ms(),
        };
        match d.proposer.propose(cmd).await {
            Ok(o) if o.is_applied() => {
                for n in chunk {
                    if n.stuck {
                        warn!(node = %n.node, kind = %n.kind, reason = %n.reason, "boot stuck");
                        let g = groups.get(n.node.as_str()).copied().unwrap_or("");
                        d.recorder
                            .metrics()
                            .stuck_transition(g, stuck_kind(&n.kind));
                    } else {
                        info!(node = %n.node, why = %n.reason, "boot no longer stuck");
                    }
                }
                if let Err(e) = d.recorder.local().set_flags(changes) {
                    warn!(error = %e, "cannot store the stuck flags");
                }
                for (node, s) in changes {
                    match s {
                        Some(s) => {
                            flagged.insert(node.clone(), s.clone());
                        }
                        None => {
                            flagged.remove(node);
                        }
                    }
                }
            }
            // Not recorded: the next pass sees the same change and tries again.
            Ok(o) => warn!(outcome = ?o, "boot notices refused"),
            Err(e) => warn!(error = %e, "cannot record boot notices yet"),
        }
    }
    let mut per_group: BTreeMap<String, i64> = BTreeMap::new();
    for node in flagged.keys() {
        let g = groups
            .get(node.as_str())
            .map(|g| g.to_string())
            .or_else(|| d.store.node(node).ok().flatten().map(|n| n.group))
            .unwrap_or_default();
        *per_group.entry(g).or_default() += 1;
    }
    d.recorder.metrics().set_stuck(&per_group);
}

fn stuck_kind(kind: &str) -> &'static str {
    match kind {
        "dhcp_loop" => "dhcp_loop",
        _ => "stalled",
    }
}
