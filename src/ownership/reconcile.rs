//! The leader's reconciler: decides ownership changes from the replicated state
//! ([`plan`], sans-IO) and proposes them as fenced commands ([`run`]).
//!
//! - owner down (lease + grace expired): take over, to a live host of the node's group
//!   that holds every artifact the node serves (rendezvous placement, capacity);
//!   no such host: the node stays, flagged with the reason;
//! - migrating: flip ownership once the target holds every artifact; roll back if the
//!   target is down;
//! - owner draining: start a migration to a placement target.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::gate::fence_cleared;
use super::placement::{pick, Candidate};
use super::state::{classify, HostState, LeaseTimes};
use crate::blobs::Digest;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::raft::propose::Proposer;
use crate::store::Store;
use crate::store::{Command, HandoffState, Host, Millis, Node, Outcome, Rejection, TransferReason};

/// What the cluster looks like to the reconciler.
pub struct View<'a> {
    /// Hosts.
    pub hosts: &'a [Host],
    /// Nodes.
    pub nodes: &'a [Node],
    /// For each node, the digests it serves.
    pub node_digests: &'a HashMap<String, BTreeSet<Digest>>,
    /// For each digest, the hosts holding it.
    pub holders: &'a HashMap<Digest, BTreeSet<String>>,
}

/// Commands to propose now.
pub fn plan(v: &View<'_>, now: Millis, t: &LeaseTimes, capacity: Option<usize>) -> Vec<Command> {
    let state: BTreeMap<&str, HostState> = v
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), classify(h, now, t)))
        .collect();
    let group_of: BTreeMap<&str, &str> = v
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.group.as_str()))
        .collect();
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for n in v.nodes {
        *load.entry(n.owner.as_str()).or_default() += 1;
    }
    let holds_all = |host: &str, node: &Node| -> bool {
        v.node_digests.get(&node.id).is_none_or(|ds| {
            ds.iter()
                .all(|d| v.holders.get(d).is_some_and(|h| h.contains(host)))
        })
    };
    let fence_clear = |node: &Node| -> bool {
        node.fence
            .as_ref()
            .is_none_or(|f| fence_cleared(f, v.hosts.iter().find(|h| h.name == f.host), now, t))
    };
    let mut out = Vec::new();
    for n in v.nodes {
        let owner_state = state
            .get(n.owner.as_str())
            .copied()
            .unwrap_or(HostState::Down);
        match &n.handoff {
            HandoffState::Migrating { to, .. } if owner_state != HostState::Down => {
                let target = state.get(to.as_str()).copied().unwrap_or(HostState::Down);
                if target == HostState::Down {
                    out.push(Command::AbortMigration {
                        node: n.id.clone(),
                        expected_epoch: n.epoch,
                        at: now,
                    });
                } else if holds_all(to, n) && fence_clear(n) {
                    // A pending fence means an earlier flip's old owner may still answer:
                    // one unconfirmed flip at a time.
                    out.push(Command::TransferOwnership {
                        node: n.id.clone(),
                        to: to.clone(),
                        expected_epoch: n.epoch,
                        reason: TransferReason::Migration,
                        stale_before: None,
                        at: now,
                    });
                }
                continue;
            }
            _ => {}
        }
        let eligible = |need_artifacts: bool, load: &BTreeMap<&str, usize>| -> Vec<Candidate<'_>> {
            v.hosts
                .iter()
                .filter(|h| h.name != n.owner && h.group == n.group)
                .filter(|h| {
                    state
                        .get(h.name.as_str())
                        .is_some_and(|s| s.accepts_nodes())
                })
                .filter(|h| !need_artifacts || holds_all(&h.name, n))
                .map(|h| Candidate {
                    host: &h.name,
                    load: load.get(h.name.as_str()).copied().unwrap_or(0),
                })
                .collect()
        };
        match owner_state {
            HostState::Down => {
                // A suspect peer may be a live host whose renewal is still in flight (right
                // after a leader change, say): wait out its grace (bounded) rather than hand
                // every node to whichever peer renewed first.
                let unsure = v.hosts.iter().any(|h| {
                    h.name != n.owner
                        && h.group == n.group
                        && state.get(h.name.as_str()) == Some(&HostState::Suspect)
                });
                if unsure {
                    continue;
                }
                let c = eligible(true, &load);
                match pick(&n.id, &c, capacity) {
                    Some(to) => {
                        *load.entry(to).or_default() += 1;
                        out.push(Command::TransferOwnership {
                            node: n.id.clone(),
                            to: to.to_string(),
                            expected_epoch: n.epoch,
                            reason: TransferReason::Takeover,
                            // Fence: the old owner must not have renewed since it expired.
                            stale_before: Some(now - (t.ttl_ms + t.grace_ms) as Millis),
                            at: now,
                        });
                    }
                    None => {
                        let why = if eligible(false, &load).is_empty() {
                            format!(
                                "owner {} is down and no other live host of group {} can take it",
                                n.owner, n.group
                            )
                        } else {
                            format!("owner {} is down and no live host of group {} holds all its artifacts (or has capacity)", n.owner, n.group)
                        };
                        if n.stuck.as_deref() != Some(why.as_str()) {
                            out.push(Command::FlagNode {
                                node: n.id.clone(),
                                stuck: Some(why),
                                at: now,
                            });
                        }
                    }
                }
            }
            HostState::Draining if n.handoff == HandoffState::None => {
                let c = eligible(false, &load);
                match pick(&n.id, &c, capacity) {
                    Some(to) => {
                        *load.entry(to).or_default() += 1;
                        out.push(Command::BeginMigration {
                            node: n.id.clone(),
                            to: to.to_string(),
                            expected_epoch: n.epoch,
                            at: now,
                        });
                    }
                    None => {
                        let why = format!(
                            "owner {} is draining and no other live host of group {} can take it",
                            n.owner, n.group
                        );
                        if n.stuck.as_deref() != Some(why.as_str()) {
                            out.push(Command::FlagNode {
                                node: n.id.clone(),
                                stuck: Some(why),
                                at: now,
                            });
                        }
                    }
                }
            }
            _ => {
                if n.stuck.is_some() {
                    out.push(Command::FlagNode {
                        node: n.id.clone(),
                        stuck: None,
                        at: now,
                    });
                }
            }
        }
        let _ = group_of.get(n.owner.as_str());
    }
    out
}

/// What the reconciler works with.
pub struct Reconciler {
    /// The local replica (the leader's, when it acts).
    pub store: Arc<Store>,
    /// Leader-only writes.
    pub proposer: Proposer,
    /// Lease timing.
    pub lease_times: LeaseTimes,
    /// Most nodes one host may own, if limited.
    pub max_nodes: Option<usize>,
    /// Transfer and stuck-node counters.
    pub metrics: Arc<Metrics>,
}

/// Runs the reconciler on whichever host is the Raft leader, every quarter second.
pub async fn run(app: Reconciler, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !app.proposer.is_leader() {
            continue;
        }
        if let Err(e) = once(&app).await {
            warn!(error = %e, "ownership reconcile failed");
        }
    }
}

/// Most reconciler commands proposed as one log entry (well under
/// [`crate::store::apply::MAX_BATCH`] and one entry's size limit).
pub const PROPOSAL_BATCH: usize = 200;

/// Counts and logs one applied reconciler command.
fn applied(app: &Reconciler, cmd: &Command) {
    let label = match cmd {
        Command::TransferOwnership { reason, .. } => format!("{reason:?}").to_lowercase(),
        Command::AbortMigration { .. } => "abort".into(),
        Command::BeginMigration { .. } => "drain".into(),
        _ => "flag".into(),
    };
    if label != "flag" {
        app.metrics.ownership.transfers.inc(&label);
    }
    if label == "abort" {
        app.metrics.ownership.aborted_migrations.inc();
    }
    match cmd {
        Command::TransferOwnership {
            node, to, reason, ..
        } => info!(node = %node, to = %to, reason = ?reason, "ownership transferred"),
        Command::AbortMigration { node, .. } => {
            warn!(node = %node, "migration rolled back: target is down")
        }
        Command::BeginMigration { node, to, .. } => {
            info!(node = %node, to = %to, "draining: migration started")
        }
        Command::FlagNode { node, stuck, .. } => match stuck {
            Some(r) => warn!(node = %node, reason = %r, "node cannot be taken over"),
            None => info!(node = %node, "node no longer stuck"),
        },
        _ => {}
    }
}

async fn once(app: &Reconciler) -> Result<(), String> {
    let hosts = app.store.hosts().map_err(|e| e.to_string())?;
    let nodes = app.store.nodes().map_err(|e| e.to_string())?;
    // Files kept in the store are on every replica: only blobs decide who may take over.
    let inline = app.store.inline_digests().map_err(|e| e.to_string())?;
    let now = now_ms();
    let down: BTreeSet<&str> = hosts
        .iter()
        .filter(|h| classify(h, now, &app.lease_times) == HostState::Down)
        .map(|h| h.name.as_str())
        .collect();
    let known: BTreeSet<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let mut node_digests = HashMap::new();
    for n in &nodes {
        // [`plan`] reads the digests of nodes it may move (owner down, or migrating)
        // only: no query per node per tick while every owner is alive, which under a
        // boot storm took the leader's reader from DHCP and TFTP four times a second.
        let owner_down = down.contains(n.owner.as_str()) || !known.contains(n.owner.as_str());
        if !owner_down && n.handoff == HandoffState::None {
            continue;
        }
        let ds: BTreeSet<Digest> = app
            .store
            .node_files(&n.id)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|f| f.digest)
            .filter(|d| !inline.contains(d))
            .collect();
        node_digests.insert(n.id.clone(), ds);
    }
    let holders: HashMap<Digest, BTreeSet<String>> = app
        .store
        .artifacts()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|a| (a.digest, a.hosts.into_iter().collect()))
        .collect();
    let view = View {
        hosts: &hosts,
        nodes: &nodes,
        node_digests: &node_digests,
        holders: &holders,
    };
    let cmds = plan(&view, now, &app.lease_times, app.max_nodes);
    let stuck = nodes.iter().filter(|n| n.stuck.is_some()).count();
    app.metrics.ownership.stuck_nodes.set(stuck as i64);
    // Mass changes (a dead host's nodes) go as few log entries, not one commit per
    // node: under a boot storm one round trip each left hundreds of nodes unserved for
    // seconds. A refused command (the state moved on) is dropped and the rest re-sent.
    for chunk in cmds.chunks(PROPOSAL_BATCH) {
        let mut pending: Vec<Command> = chunk.to_vec();
        while !pending.is_empty() {
            let cmd = match pending.as_slice() {
                [one] => one.clone(),
                many => Command::Batch {
                    commands: many.to_vec(),
                },
            };
            let Some(out) = app
                .proposer
                .propose_as_leader(cmd)
                .await
                .map_err(|e| e.to_string())?
            else {
                // Lost the lead: these decisions came from a replica that may be stale.
                return Ok(());
            };
            match out {
                Outcome::Applied(_) => {
                    for c in &pending {
                        applied(app, c);
                    }
                    break;
                }
                Outcome::Rejected(Rejection::BatchRejected { index, rejection })
                    if index < pending.len() && pending.len() > 1 =>
                {
                    info!(rejection = %rejection, "ownership change refused (state moved on)");
                    pending.remove(index);
                }
                other => {
                    info!(outcome = ?other, "ownership change refused (state moved on)");
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MacAddr, ProvisionState};

    const T: LeaseTimes = LeaseTimes {
        interval_ms: 1000,
        ttl_ms: 3000,
        grace_ms: 1000,
    };

    fn host(name: &str, group: &str, hb: Millis, draining: bool) -> Host {
        Host {
            name: name.into(),
            group: group.into(),
            addresses: vec![],
            registered_at: 0,
            last_heartbeat: hb,
            draining,
            seen_seq: 0,
        }
    }

    fn node(id: &str, owner: &str, handoff: HandoffState) -> Node {
        Node {
            id: id.into(),
            macs: vec![MacAddr([0, 0, 0, 0, 0, 1])],
            group: "g".into(),
            arch: None,
            owner: owner.into(),
            epoch: 3,
            provision_state: ProvisionState::Active,
            handoff,
            boot_profile: None,
            last_token: 0,
            stuck: None,
            fence: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn run_plan(
        hosts: &[Host],
        nodes: &[Node],
        holders: &HashMap<Digest, BTreeSet<String>>,
        d: &HashMap<String, BTreeSet<Digest>>,
    ) -> Vec<Command> {
        plan(
            &View {
                hosts,
                nodes,
                node_digests: d,
                holders,
            },
            100_000,
            &T,
            None,
        )
    }

    #[test]
    fn takeover_goes_to_a_live_holder_of_the_same_group() {
        let dg = Digest::of(b"kernel");
        let hosts = vec![
            host("dead", "g", 90_000, false),
            host("a", "g", 99_500, false),
            host("b", "g", 99_500, false),
            host("other", "x", 99_500, false),
        ];
        let nodes = vec![node("n1", "dead", HandoffState::None)];
        let d = HashMap::from([("n1".to_string(), BTreeSet::from([dg]))]);
        let holders = HashMap::from([(
            dg,
            BTreeSet::from(["dead".to_string(), "b".to_string(), "other".to_string()]),
        )]);
        let cmds = run_plan(&hosts, &nodes, &holders, &d);
        assert_eq!(cmds.len(), 1);
        match &cmds[0] {
            Command::TransferOwnership {
                to,
                reason,
                stale_before,
                expected_epoch,
                ..
            } => {
                assert_eq!(to, "b", "only b holds the artifact in group g");
                assert_eq!(*reason, TransferReason::Takeover);
                assert_eq!(*stale_before, Some(96_000));
                assert_eq!(*expected_epoch, 3);
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn suspect_owner_is_left_alone_and_no_holder_flags() {
        let dg = Digest::of(b"kernel");
        let d = HashMap::from([("n1".to_string(), BTreeSet::from([dg]))]);
        let none = HashMap::new();
        let hosts = vec![
            host("sus", "g", 96_500, false),
            host("a", "g", 99_500, false),
        ];
        assert!(run_plan(&hosts, &[node("n1", "sus", HandoffState::None)], &none, &d).is_empty());
        let hosts = vec![host("dead", "g", 1, false), host("a", "g", 99_500, false)];
        let cmds = run_plan(&hosts, &[node("n1", "dead", HandoffState::None)], &none, &d);
        assert!(
            matches!(&cmds[0], Command::FlagNode { stuck: Some(r), .. } if r.contains("artifacts")),
            "{cmds:?}"
        );
    }

    #[test]
    fn migrations_complete_or_roll_back() {
        let hosts = vec![
            host("o", "g", 99_500, false),
            host("t", "g", 99_500, false),
            host("gone", "g", 1, false),
        ];
        let m = |to: &str| HandoffState::Migrating {
            to: to.into(),
            since: 0,
        };
        let cmds = run_plan(
            &hosts,
            &[node("n1", "o", m("t")), node("n2", "o", m("gone"))],
            &HashMap::new(),
            &HashMap::new(),
        );
        assert!(
            matches!(&cmds[0], Command::TransferOwnership { to, reason: TransferReason::Migration, .. } if to == "t")
        );
        assert!(matches!(&cmds[1], Command::AbortMigration { node, .. } if node == "n2"));
    }

    #[test]
    fn no_second_flip_while_an_earlier_one_is_unconfirmed() {
        // n1 went o -> t, unconfirmed by o (alive); now it migrates t -> u.
        let hosts = vec![
            host("o", "g", 99_500, false),
            host("t", "g", 99_500, false),
            host("u", "g", 99_500, false),
        ];
        let mut n = node(
            "n1",
            "t",
            HandoffState::Migrating {
                to: "u".into(),
                since: 0,
            },
        );
        n.fence = Some(crate::store::Fence {
            host: "o".into(),
            seq: 5,
        });
        let plan_for = |hosts: &[Host], n: &Node| {
            run_plan(
                hosts,
                std::slice::from_ref(n),
                &HashMap::new(),
                &HashMap::new(),
            )
        };
        assert!(plan_for(&hosts, &n).is_empty(), "waits for o");
        let mut confirmed = hosts.clone();
        confirmed[0].seen_seq = 5;
        assert!(matches!(
            &plan_for(&confirmed, &n)[..],
            [Command::TransferOwnership { to, .. }] if to == "u"
        ));
        let mut o_down = hosts.clone();
        o_down[0].last_heartbeat = 1;
        assert_eq!(plan_for(&o_down, &n).len(), 1, "o is down");
    }

    #[test]
    fn takeover_waits_while_a_peer_is_only_suspect() {
        // "b" has not renewed for longer than the TTL but is within its grace.
        let mut hosts = vec![
            host("dead", "g", 90_000, false),
            host("a", "g", 99_500, false),
            host("b", "g", 100_000 - T.ttl_ms as Millis - 1, false),
        ];
        let nodes: Vec<Node> = (0..8)
            .map(|i| node(&format!("n{i}"), "dead", HandoffState::None))
            .collect();
        assert!(run_plan(&hosts, &nodes, &HashMap::new(), &HashMap::new()).is_empty());
        hosts[2].last_heartbeat = 99_900;
        let cmds = run_plan(&hosts, &nodes, &HashMap::new(), &HashMap::new());
        let to_b = cmds
            .iter()
            .filter(|c| matches!(c, Command::TransferOwnership { to, .. } if to == "b"))
            .count();
        assert_eq!(cmds.len(), 8);
        assert!(to_b > 0 && to_b < 8, "spread over a and b: {cmds:?}");
    }

    #[test]
    fn draining_host_migrates_its_nodes_away() {
        let hosts = vec![host("d", "g", 99_500, true), host("a", "g", 99_500, false)];
        let cmds = run_plan(
            &hosts,
            &[node("n1", "d", HandoffState::None)],
            &HashMap::new(),
            &HashMap::new(),
        );
        assert!(
            matches!(&cmds[0], Command::BeginMigration { to, .. } if to == "a"),
            "{cmds:?}"
        );
    }
}
