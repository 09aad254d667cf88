//! The leader's reconciler: decides ownership changes from the replicated state
//! ([`plan`], sans-IO) and proposes them as fenced commands ([`run`]).
//!
//! - owner down (lease + grace expired): take over, to a live host of the node's group
//!   that holds every blob the node serves (rendezvous placement with bounded loads,
//!   capacity); no such host: the node stays, flagged with the reason;
//! - migrating: flip ownership once the target holds every blob; roll back if the
//!   target is down;
//! - owner draining, or a rebalance active: start migrations, at most
//!   `max_concurrent_migrations` in progress at once.
//!
//! At fleet size: [`run`] wakes when the log applies something (a heartbeat, a write), at
//! the next instant a host's lease state changes ([`next_change`]), and every
//! [`SWEEP`]; it reads only the nodes that may need a change through indexed queries
//! (owned by a down or draining host, migrating, stuck), never every node. Its commands
//! go out many per log entry ([`batch`]): a dead host's 3,000 nodes take a handful of
//! entries, each node still fenced by its epoch and the old owner's lease, with its own
//! event.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::gate::fence_cleared;
use super::placement::{pick_bounded, soft_cap, Candidate};
use super::rebalance::{self, HostLoad, Movable};
use super::state::{classify, HostState, LeaseTimes};
use crate::blobs::Digest;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::raft::propose::Proposer;
use crate::store::{Applied, Command, HandoffState, Host, Millis, Node, Outcome, TransferReason};
use crate::store::{Store, StoreError};

/// Most node changes per log entry.
pub const STEPS_PER_ENTRY: usize = 500;
/// Slowest pace of the reconciler: a full pass at least this often, whatever woke it.
pub const SWEEP: Duration = Duration::from_secs(10);
/// Shortest pause between two rounds: a burst of applied writes costs one round.
pub const MIN_GAP: Duration = Duration::from_millis(50);
/// Next try after a round that failed or had a change refused.
const RETRY: Duration = Duration::from_millis(250);

/// What the cluster looks like to the reconciler.
pub struct View<'a> {
    /// Hosts.
    pub hosts: &'a [Host],
    /// The nodes that may need a change (each once): owned by a down or draining host,
    /// migrating, stuck, and while a rebalance is active, those of the hosts that own
    /// more than their share.
    pub nodes: &'a [Node],
    /// Nodes owned per host, counting every node (not only `nodes`).
    pub loads: &'a BTreeMap<String, usize>,
    /// For each node of `nodes`, the blobs it serves (files kept in the store left out:
    /// every replica holds them).
    pub node_digests: &'a HashMap<String, BTreeSet<Digest>>,
    /// For each of those blobs, the hosts holding it.
    pub holders: &'a HashMap<Digest, BTreeSet<String>>,
    /// Nodes with a live reservation: a rebalance leaves them where they are.
    pub reserved: &'a BTreeSet<String>,
    /// A rebalance is active.
    pub rebalance: bool,
}

/// Placement limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Most nodes one host may own (`max_nodes_per_host`).
    pub capacity: Option<usize>,
    /// Most migrations in progress at once that a drain or rebalance starts.
    pub max_migrations: usize,
}

/// Hosts whose nodes may need a change now: down (take over) and draining (migrate).
pub fn owners_to_read<'a>(hosts: &'a [Host], now: Millis, t: &LeaseTimes) -> Vec<&'a str> {
    hosts
        .iter()
        .filter(|h| matches!(classify(h, now, t), HostState::Down | HostState::Draining))
        .map(|h| h.name.as_str())
        .collect()
}

/// The next instant (after `now`) at which some host's state changes by the clock
/// alone: up to suspect at TTL, suspect to down at TTL + grace.
pub fn next_change(hosts: &[Host], now: Millis, t: &LeaseTimes) -> Option<Millis> {
    hosts
        .iter()
        .flat_map(|h| {
            [
                h.last_heartbeat + t.ttl_ms as Millis,
                h.last_heartbeat + (t.ttl_ms + t.grace_ms) as Millis,
            ]
        })
        .map(|at| at + 1)
        .filter(|at| *at > now)
        .min()
}

/// Loads with each migration in progress counted at its target: where the node will
/// be, so placement does not overfill a host that is about to receive nodes.
pub fn effective_loads<'a>(v: &View<'a>) -> BTreeMap<&'a str, usize> {
    let mut load: BTreeMap<&str, usize> = v.loads.iter().map(|(h, n)| (h.as_str(), *n)).collect();
    for n in v.nodes {
        if let HandoffState::Migrating { to, .. } = &n.handoff {
            if let Some(l) = load.get_mut(n.owner.as_str()) {
                *l = l.saturating_sub(1);
            }
            *load.entry(to.as_str()).or_default() += 1;
        }
    }
    load
}

/// Hosts of each group that accept nodes, with their (effective) loads.
pub fn rebalance_hosts<'a>(
    hosts: &'a [Host],
    loads: &BTreeMap<&str, usize>,
    now: Millis,
    t: &LeaseTimes,
) -> BTreeMap<&'a str, Vec<HostLoad<'a>>> {
    let mut out: BTreeMap<&str, Vec<HostLoad>> = BTreeMap::new();
    for h in hosts.iter().filter(|h| classify(h, now, t).accepts_nodes()) {
        out.entry(h.group.as_str()).or_default().push(HostLoad {
            host: &h.name,
            load: loads.get(h.name.as_str()).copied().unwrap_or(0),
        });
    }
    out
}

/// One group's share of a rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMoves<'a> {
    /// The group.
    pub group: &'a str,
    /// Its hosts that take nodes, with their loads (migrations in progress counted at
    /// their target).
    pub hosts: Vec<HostLoad<'a>>,
    /// Every move left, best first.
    pub moves: Vec<rebalance::Move>,
}

/// What a rebalance still has to move, per group, given the loads `load`: nodes of
/// hosts that take nodes, without migration, stuck flag, unconfirmed flip or live
/// reservation, and not in `skip` (changed this round).
pub fn rebalance_moves<'a>(
    v: &View<'a>,
    load: &BTreeMap<&str, usize>,
    now: Millis,
    t: &LeaseTimes,
    capacity: Option<usize>,
    skip: &BTreeSet<&str>,
) -> Vec<GroupMoves<'a>> {
    let nodes: &'a [Node] = v.nodes;
    rebalance_hosts(v.hosts, load, now, t)
        .into_iter()
        .map(|(group, hosts)| {
            let movable: Vec<Movable> = nodes
                .iter()
                .filter(|n| n.group == group && n.handoff == HandoffState::None)
                .filter(|n| n.stuck.is_none() && n.fence.is_none())
                .filter(|n| !v.reserved.contains(&n.id) && !skip.contains(n.id.as_str()))
                .filter(|n| hosts.iter().any(|h| h.host == n.owner))
                .map(|n| Movable {
                    node: &n.id,
                    owner: &n.owner,
                })
                .collect();
            let moves = rebalance::plan(&hosts, &movable, capacity);
            GroupMoves {
                group,
                hosts,
                moves,
            }
        })
        .collect()
}

/// Commands to propose now.
pub fn plan(v: &View<'_>, now: Millis, t: &LeaseTimes, p: &Policy) -> Vec<Command> {
    let state: BTreeMap<&str, HostState> = v
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), classify(h, now, t)))
        .collect();
    let mut load = effective_loads(v);
    let in_flight = v
        .nodes
        .iter()
        .filter(|n| matches!(n.handoff, HandoffState::Migrating { .. }))
        .count();
    let mut budget = p.max_migrations.saturating_sub(in_flight);
    // Bounded loads: the even share of each group (plus 5%) over the hosts taking nodes.
    let soft: BTreeMap<&str, Option<usize>> = {
        let mut total: BTreeMap<&str, usize> = BTreeMap::new();
        let mut taking: BTreeMap<&str, usize> = BTreeMap::new();
        for h in v.hosts {
            *total.entry(h.group.as_str()).or_default() +=
                load.get(h.name.as_str()).copied().unwrap_or(0);
            if state
                .get(h.name.as_str())
                .is_some_and(|s| s.accepts_nodes())
            {
                *taking.entry(h.group.as_str()).or_default() += 1;
            }
        }
        total
            .iter()
            .map(|(g, n)| (*g, soft_cap(*n, taking.get(g).copied().unwrap_or(0))))
            .collect()
    };
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
    let mut touched: BTreeSet<&str> = BTreeSet::new();
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
                    touched.insert(&n.id);
                    out.push(Command::AbortMigration {
                        node: n.id.clone(),
                        expected_epoch: n.epoch,
                        at: now,
                    });
                } else if holds_all(to, n) && fence_clear(n) {
                    // A pending fence means an earlier flip's old owner may still answer:
                    // one unconfirmed flip at a time.
                    touched.insert(&n.id);
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
        let group_soft = soft.get(n.group.as_str()).copied().flatten();
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
                match pick_bounded(&n.id, &c, group_soft, p.capacity) {
                    Some(to) => {
                        *load.entry(to).or_default() += 1;
                        touched.insert(&n.id);
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
                        } else if !eligible(true, &load).is_empty() {
                            format!(
                                "owner {} is down and every live host of group {} that could take it is full (max_nodes_per_host {})",
                                n.owner,
                                n.group,
                                p.capacity.unwrap_or(0)
                            )
                        } else {
                            format!("owner {} is down and no live host of group {} holds all its artifacts (or has capacity)", n.owner, n.group)
                        };
                        if n.stuck.as_deref() != Some(why.as_str()) {
                            touched.insert(&n.id);
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
                if budget == 0 {
                    // Enough migrations in progress: the next ones start as they finish.
                    continue;
                }
                let c = eligible(false, &load);
                match pick_bounded(&n.id, &c, group_soft, p.capacity) {
                    Some(to) => {
                        *load.entry(to).or_default() += 1;
                        if let Some(l) = load.get_mut(n.owner.as_str()) {
                            *l = l.saturating_sub(1);
                        }
                        budget -= 1;
                        touched.insert(&n.id);
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
                            touched.insert(&n.id);
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
                    touched.insert(&n.id);
                    out.push(Command::FlagNode {
                        node: n.id.clone(),
                        stuck: None,
                        at: now,
                    });
                }
            }
        }
    }
    if v.rebalance {
        let mut left = 0;
        let epoch: HashMap<&str, u64> = v.nodes.iter().map(|n| (n.id.as_str(), n.epoch)).collect();
        for g in rebalance_moves(v, &load, now, t, p.capacity, &touched) {
            left += g.moves.len();
            for m in g.moves.into_iter().take(budget) {
                budget -= 1;
                out.push(Command::BeginMigration {
                    expected_epoch: epoch.get(m.node.as_str()).copied().unwrap_or(0),
                    node: m.node,
                    to: m.to,
                    at: now,
                });
            }
        }
        if left == 0 && in_flight == 0 {
            out.push(Command::SetRebalance {
                active: false,
                at: now,
            });
        }
    }
    out
}

/// Groups the node changes of `cmds` into [`Command::OwnershipSteps`] of at most
/// `max` steps (a lone step stays as it is); other commands keep their place.
pub fn batch(cmds: Vec<Command>, max: usize) -> Vec<Command> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut steps: Vec<Command> = Vec::new();
    let flush = |steps: &mut Vec<Command>, out: &mut Vec<Command>| match steps.len() {
        0 => {}
        1 => out.push(steps.remove(0)),
        _ => out.push(Command::OwnershipSteps {
            steps: std::mem::take(steps),
        }),
    };
    for c in cmds {
        if c.is_ownership_step() {
            steps.push(c);
            if steps.len() == max {
                flush(&mut steps, &mut out);
            }
        } else {
            flush(&mut steps, &mut out);
            out.push(c);
        }
    }
    flush(&mut steps, &mut out);
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
    /// Placement limits.
    pub policy: Policy,
    /// Transfer and stuck-node counters.
    pub metrics: Arc<Metrics>,
}

/// Runs the reconciler on whichever host is the Raft leader: a round whenever the log
/// applies something, at the next lease deadline, and at least every [`SWEEP`]. A round
/// woken by an entry that changed nothing it looks at (a heartbeat, see [`Fingerprint`])
/// stops after two small reads.
pub async fn run(app: Reconciler, shutdown: CancellationToken) {
    let me = app.proposer.node_id();
    let mut metrics = app.proposer.raft().metrics();
    let mut seen: (Option<u64>, bool) = (None, false);
    let mut next = Instant::now();
    let mut sweep = Instant::now();
    let mut last_round: Option<Instant> = None;
    let mut last: Option<Fingerprint> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = metrics.changed() => {
                if r.is_err() {
                    return;
                }
                // Raft metrics change on every heartbeat exchange: only an applied entry
                // or a change of leader is news.
                let key = {
                    let m = metrics.borrow_and_update();
                    (m.last_applied.map(|l| l.index), m.current_leader == Some(me))
                };
                if key == seen {
                    continue;
                }
                seen = key;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        if !app.proposer.is_leader() {
            last = None;
            next = Instant::now() + SWEEP;
            continue;
        }
        if let Some(gap) = last_round.map(|l| MIN_GAP.saturating_sub(l.elapsed())) {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(gap) => {}
            }
        }
        last_round = Some(Instant::now());
        let force = sweep <= Instant::now();
        if force {
            sweep = Instant::now() + SWEEP;
        }
        let wait = match once(&app, &mut last, force).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "ownership reconcile failed");
                last = None;
                RETRY
            }
        };
        next = Instant::now() + wait.min(sweep.saturating_duration_since(Instant::now()));
    }
}

/// What a round's decisions depend on besides the nodes: the newest event (every change
/// of a node, holding, reservation or rebalance appends one) and each host's state and
/// confirmations. Heartbeats change neither unless a host changes state, so a round
/// whose fingerprint equals the last one's has nothing new to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Newest event.
    pub last_event: u64,
    /// Each host with its state and the newest event it confirmed.
    pub hosts: Vec<(String, HostState, u64)>,
}

/// The [`Fingerprint`] of the cluster at `now`.
pub fn fingerprint(hosts: &[Host], last_event: u64, now: Millis, t: &LeaseTimes) -> Fingerprint {
    Fingerprint {
        last_event,
        hosts: hosts
            .iter()
            .map(|h| (h.name.clone(), classify(h, now, t), h.seen_seq))
            .collect(),
    }
}

/// What a round read from the replica (owned; [`Gathered::view`] lends it to [`plan`]).
pub struct Gathered {
    /// Hosts.
    pub hosts: Vec<Host>,
    /// Nodes that may need a change, by id.
    pub nodes: Vec<Node>,
    /// Nodes per owner (empty when nothing is to be placed).
    pub loads: BTreeMap<String, usize>,
    /// Blobs of the nodes that may move by takeover or migration flip.
    pub node_digests: HashMap<String, BTreeSet<Digest>>,
    /// Holders of those blobs.
    pub holders: HashMap<Digest, BTreeSet<String>>,
    /// Nodes under a live reservation (read with a rebalance only).
    pub reserved: BTreeSet<String>,
    /// A rebalance is active.
    pub rebalance: bool,
    /// Migrations in progress.
    pub in_flight: usize,
    /// Nodes flagged stuck.
    pub stuck: usize,
}

impl Gathered {
    /// The view [`plan`] takes.
    pub fn view(&self) -> View<'_> {
        View {
            hosts: &self.hosts,
            nodes: &self.nodes,
            loads: &self.loads,
            node_digests: &self.node_digests,
            holders: &self.holders,
            reserved: &self.reserved,
            rebalance: self.rebalance,
        }
    }
}

/// Reads, through indexed queries only, the nodes that may need a change at `now`:
/// migrating, stuck, owned by a down or draining host, and with a rebalance (active, or
/// `preview`) the nodes of hosts above their share.
pub fn gather(
    store: &Store,
    now: Millis,
    t: &LeaseTimes,
    policy: &Policy,
    preview: bool,
) -> Result<Gathered, StoreError> {
    let hosts = store.hosts()?;
    let rebalance = preview || store.rebalance_requested()?.is_some();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let migrating = store.migrating_nodes()?;
    let in_flight = migrating.len();
    let stuck_nodes = store.stuck_nodes()?;
    let stuck = stuck_nodes.len();
    let owners = owners_to_read(&hosts, now, t);
    let mut node_digests: HashMap<String, BTreeSet<Digest>> = HashMap::new();
    for n in &migrating {
        node_digests.insert(
            n.id.clone(),
            store.blob_digests_of(&n.id)?.into_iter().collect(),
        );
    }
    for o in &owners {
        for n in store.nodes_owned_by(o)? {
            nodes.insert(n.id.clone(), n);
        }
        let down = hosts
            .iter()
            .any(|h| h.name == *o && classify(h, now, t) == HostState::Down);
        if down {
            for (n, d) in store.blob_digests_owned_by(o)? {
                node_digests.entry(n).or_default().insert(d);
            }
        }
    }
    for n in migrating.into_iter().chain(stuck_nodes) {
        nodes.insert(n.id.clone(), n);
    }
    let loads = if !owners.is_empty() || rebalance {
        store.node_counts()?
    } else {
        BTreeMap::new()
    };
    let mut reserved = BTreeSet::new();
    if rebalance && (preview || in_flight < policy.max_migrations) {
        // The nodes of hosts above their share: the only ones a rebalance moves.
        let listed: Vec<Node> = nodes.values().cloned().collect();
        let v = View {
            hosts: &hosts,
            nodes: &listed,
            loads: &loads,
            node_digests: &node_digests,
            holders: &HashMap::new(),
            reserved: &reserved,
            rebalance,
        };
        let eff = effective_loads(&v);
        let donors: Vec<String> = rebalance_hosts(&hosts, &eff, now, t)
            .values()
            .flat_map(|g| rebalance::donors(g, policy.capacity))
            .map(str::to_string)
            .collect();
        for d in donors {
            for n in store.nodes_owned_by(&d)? {
                nodes.entry(n.id.clone()).or_insert(n);
            }
        }
        reserved = store
            .reservations()?
            .into_iter()
            .filter(|r| r.is_live(now))
            .map(|r| r.node)
            .collect();
    }
    let mut holders: HashMap<Digest, BTreeSet<String>> = HashMap::new();
    for d in node_digests.values().flatten() {
        if !holders.contains_key(d) {
            holders.insert(*d, store.recorded_holders(d)?.into_iter().collect());
        }
    }
    Ok(Gathered {
        hosts,
        nodes: nodes.into_values().collect(),
        loads,
        node_digests,
        holders,
        reserved,
        rebalance,
        in_flight,
        stuck,
    })
}

/// One round: reads what may need a change, plans, proposes; returns how long until the
/// next round is due by the clock.
async fn once(
    app: &Reconciler,
    last: &mut Option<Fingerprint>,
    force: bool,
) -> Result<Duration, String> {
    let t = &app.lease_times;
    let now = now_ms();
    let until_change = |hosts: &[Host]| {
        next_change(hosts, now_ms(), t)
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64))
            .unwrap_or(SWEEP)
            .min(SWEEP)
    };
    let e = |e: StoreError| e.to_string();
    let hosts = app.store.hosts().map_err(e)?;
    let fp = fingerprint(&hosts, app.store.last_event_seq().map_err(e)?, now, t);
    if !force && last.as_ref() == Some(&fp) {
        return Ok(until_change(&hosts));
    }
    *last = Some(fp);
    app.metrics.ownership.reconcile_runs.inc();
    let g = gather(&app.store, now, t, &app.policy, false).map_err(e)?;
    let m = &app.metrics.ownership;
    m.stuck_nodes.set(g.stuck as i64);
    m.migrations_in_flight.set(g.in_flight as i64);
    m.rebalancing.set(g.rebalance as i64);
    let hosts = &g.hosts;
    let view = g.view();
    let cmds = plan(&view, now, t, &app.policy);
    let mut wait = until_change(hosts);
    if cmds.is_empty() {
        return Ok(wait);
    }
    let planned = cmds.len();
    let entries = batch(cmds, STEPS_PER_ENTRY);
    debug!(
        changes = planned,
        entries = entries.len(),
        "reconcile round"
    );
    // All entries at once, submitted in order: Raft pipelines them (appended together,
    // applied in order) where waiting for each commit cost a round trip per entry.
    let outs = futures_util::future::join_all(
        entries
            .iter()
            .map(|cmd| app.proposer.propose_as_leader(cmd.clone())),
    )
    .await;
    for (cmd, out) in entries.iter().zip(outs) {
        let Some(out) = out.map_err(|e| e.to_string())? else {
            // Lost the lead: these decisions came from a replica that may be stale.
            return Ok(SWEEP);
        };
        let refused = report(app, cmd, &out);
        if refused > 0 {
            // Decide again soon, whatever the fingerprint says.
            *last = None;
            wait = wait.min(RETRY);
        }
    }
    Ok(wait)
}

/// Logs and counts what a proposed command did; returns how many changes were refused.
fn report(app: &Reconciler, cmd: &Command, out: &Outcome) -> usize {
    match (cmd, out) {
        (Command::OwnershipSteps { steps }, Outcome::Applied(Applied::Steps { outcomes })) => {
            let mut moved: BTreeMap<(String, String), usize> = BTreeMap::new();
            let mut refused = 0;
            for (step, o) in steps.iter().zip(outcomes) {
                if let Command::TransferOwnership { to, .. } | Command::BeginMigration { to, .. } =
                    step
                {
                    if o.is_applied() {
                        *moved.entry((label(step), to.clone())).or_default() += 1;
                    }
                }
                refused += report_one(app, step, o, false);
            }
            for ((what, to), n) in moved {
                info!(nodes = n, to = %to, change = %what, "ownership changes applied");
            }
            refused
        }
        (c, o) => report_one(app, c, o, true),
    }
}

fn label(cmd: &Command) -> String {
    match cmd {
        Command::TransferOwnership { reason, .. } => format!("{reason:?}").to_lowercase(),
        Command::AbortMigration { .. } => "abort".into(),
        Command::BeginMigration { .. } => "migration_start".into(),
        _ => "flag".into(),
    }
}

/// One change: metrics, and a log line (`loud`: at info even for transfers, which a
/// batch summarises instead).
fn report_one(app: &Reconciler, cmd: &Command, out: &Outcome, loud: bool) -> usize {
    if !out.is_applied() {
        info!(change = %label(cmd), outcome = ?out, "ownership change refused (state moved on)");
        return 1;
    }
    let m = &app.metrics.ownership;
    match cmd {
        Command::TransferOwnership {
            node, to, reason, ..
        } => {
            m.transfers.inc(&label(cmd));
            if loud {
                info!(node = %node, to = %to, reason = ?reason, "ownership transferred");
            } else {
                debug!(node = %node, to = %to, reason = ?reason, "ownership transferred");
            }
        }
        Command::AbortMigration { node, .. } => {
            m.transfers.inc("abort");
            m.aborted_migrations.inc();
            warn!(node = %node, "migration rolled back: target is down");
        }
        Command::BeginMigration { node, to, .. } => {
            m.transfers.inc("migration_start");
            if loud {
                info!(node = %node, to = %to, "migration started (drain or rebalance)");
            } else {
                debug!(node = %node, to = %to, "migration started (drain or rebalance)");
            }
        }
        Command::FlagNode { node, stuck, .. } => match stuck {
            Some(r) => warn!(node = %node, reason = %r, "node cannot be taken over"),
            None => info!(node = %node, "node no longer stuck"),
        },
        Command::SetRebalance { .. } => info!("rebalance finished: nothing left to move"),
        _ => {}
    }
    0
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

    const P: Policy = Policy {
        capacity: None,
        max_migrations: 64,
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
            addresses: Vec::new(),
            boot_token: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn loads_of(nodes: &[Node]) -> BTreeMap<String, usize> {
        let mut l = BTreeMap::new();
        for n in nodes {
            *l.entry(n.owner.clone()).or_default() += 1;
        }
        l
    }

    struct Case {
        hosts: Vec<Host>,
        nodes: Vec<Node>,
        loads: Option<BTreeMap<String, usize>>,
        digests: HashMap<String, BTreeSet<Digest>>,
        holders: HashMap<Digest, BTreeSet<String>>,
        reserved: BTreeSet<String>,
        rebalance: bool,
        policy: Policy,
    }

    impl Case {
        fn new(hosts: Vec<Host>, nodes: Vec<Node>) -> Case {
            Case {
                hosts,
                nodes,
                loads: None,
                digests: HashMap::new(),
                holders: HashMap::new(),
                reserved: BTreeSet::new(),
                rebalance: false,
                policy: P,
            }
        }

        fn plan(&self) -> Vec<Command> {
            let loads = self.loads.clone().unwrap_or_else(|| loads_of(&self.nodes));
            plan(
                &View {
                    hosts: &self.hosts,
                    nodes: &self.nodes,
                    loads: &loads,
                    node_digests: &self.digests,
                    holders: &self.holders,
                    reserved: &self.reserved,
                    rebalance: self.rebalance,
                },
                100_000,
                &T,
                &self.policy,
            )
        }
    }

    fn run_plan(
        hosts: &[Host],
        nodes: &[Node],
        holders: &HashMap<Digest, BTreeSet<String>>,
        d: &HashMap<String, BTreeSet<Digest>>,
    ) -> Vec<Command> {
        let mut c = Case::new(hosts.to_vec(), nodes.to_vec());
        c.holders = holders.clone();
        c.digests = d.clone();
        c.plan()
    }

    fn count_to(cmds: &[Command], host: &str) -> usize {
        cmds.iter()
            .filter(|c| matches!(c, Command::TransferOwnership { to, .. } if to == host))
            .count()
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
        let to_b = count_to(&cmds, "b");
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

    fn fleet_with_dead(n: usize) -> (Vec<Host>, Vec<Node>) {
        let hosts = vec![
            host("dead", "g", 90_000, false),
            host("a", "g", 99_500, false),
            host("b", "g", 99_500, false),
        ];
        let nodes = (0..n)
            .map(|i| node(&format!("node-{i:05}"), "dead", HandoffState::None))
            .collect();
        (hosts, nodes)
    }

    #[test]
    fn three_thousand_nodes_take_a_handful_of_entries_and_land_evenly() {
        let (hosts, nodes) = fleet_with_dead(3200);
        let cmds = Case::new(hosts, nodes).plan();
        assert_eq!(cmds.len(), 3200);
        let (a, b) = (count_to(&cmds, "a"), count_to(&cmds, "b"));
        assert_eq!(a + b, 3200);
        for n in [a, b] {
            assert!(
                (1440..=1760).contains(&n),
                "within 10% of 1600: a {a}, b {b}"
            );
        }
        let entries = batch(cmds, STEPS_PER_ENTRY);
        assert_eq!(entries.len(), 7, "3,200 changes in 7 log entries");
        assert!(entries.iter().all(|c| matches!(
            c,
            Command::OwnershipSteps { steps } if steps.len() <= STEPS_PER_ENTRY
        )));
    }

    #[test]
    fn capacity_is_respected_and_the_rest_is_flagged_once() {
        let (hosts, nodes) = fleet_with_dead(300);
        let mut c = Case::new(hosts, nodes);
        c.policy.capacity = Some(100);
        let cmds = c.plan();
        assert_eq!(count_to(&cmds, "a"), 100);
        assert_eq!(count_to(&cmds, "b"), 100);
        let flagged: Vec<&str> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::FlagNode {
                    node,
                    stuck: Some(r),
                    ..
                } => {
                    assert!(
                        r.contains("full") && r.contains("max_nodes_per_host 100"),
                        "{r}"
                    );
                    Some(node.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(flagged.len(), 100);
        // Next round: a and b full, the 100 still on "dead" already flagged: nothing.
        let taken: BTreeSet<&str> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::TransferOwnership { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        let reason = match &cmds.iter().find(|c| matches!(c, Command::FlagNode { .. })) {
            Some(Command::FlagNode { stuck, .. }) => stuck.clone(),
            _ => None,
        };
        let mut rest: Vec<Node> = c
            .nodes
            .iter()
            .filter(|n| !taken.contains(n.id.as_str()))
            .cloned()
            .collect();
        for n in &mut rest {
            n.stuck = reason.clone();
        }
        let mut next = Case::new(c.hosts.clone(), rest);
        next.policy.capacity = Some(100);
        next.loads = Some(BTreeMap::from([
            ("a".to_string(), 100),
            ("b".to_string(), 100),
            ("dead".to_string(), 100),
        ]));
        assert!(next.plan().is_empty(), "flagged once, not every round");
    }

    #[test]
    fn a_takeover_fills_the_emptier_survivor_first() {
        // a already owns 1,000 nodes, b none; the dead host's 3,000 go mostly to b.
        let (hosts, nodes) = fleet_with_dead(3000);
        let mut c = Case::new(hosts, nodes);
        c.loads = Some(BTreeMap::from([
            ("a".to_string(), 1000),
            ("dead".to_string(), 3000),
        ]));
        let cmds = c.plan();
        let (a, b) = (count_to(&cmds, "a"), count_to(&cmds, "b"));
        assert_eq!(a + b, 3000);
        assert!(1000 + a <= 2100, "a ends at {} (even 2000 + 5%)", 1000 + a);
        assert!(b >= 1900, "b takes {b}");
    }

    #[test]
    fn a_drain_starts_at_most_the_allowed_migrations() {
        let hosts = vec![host("d", "g", 99_500, true), host("a", "g", 99_500, false)];
        let mut nodes: Vec<Node> = (0..10)
            .map(|i| node(&format!("n{i}"), "d", HandoffState::None))
            .collect();
        let mut c = Case::new(hosts, nodes.clone());
        c.policy.max_migrations = 4;
        let started = c
            .plan()
            .iter()
            .filter(|c| matches!(c, Command::BeginMigration { .. }))
            .count();
        assert_eq!(started, 4);
        // Three in progress: one more may start.
        for n in nodes.iter_mut().take(3) {
            n.handoff = HandoffState::Migrating {
                to: "a".into(),
                since: 0,
            };
        }
        c.nodes = nodes;
        let cmds = c.plan();
        let started = cmds
            .iter()
            .filter(|c| matches!(c, Command::BeginMigration { .. }))
            .count();
        assert_eq!(started, 1, "{cmds:?}");
    }

    fn returned_fleet() -> Case {
        // "r" came back with nothing; a and b own 6 each.
        let hosts = vec![
            host("a", "g", 99_500, false),
            host("b", "g", 99_500, false),
            host("r", "g", 99_500, false),
        ];
        let mut nodes = Vec::new();
        for h in ["a", "b"] {
            for i in 0..6 {
                nodes.push(node(&format!("{h}{i}"), h, HandoffState::None));
            }
        }
        let mut c = Case::new(hosts, nodes);
        c.rebalance = true;
        c
    }

    #[test]
    fn a_rebalance_moves_nodes_to_a_returned_host_a_few_at_a_time() {
        let mut c = returned_fleet();
        c.policy.max_migrations = 3;
        let cmds = c.plan();
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert!(cmds.iter().all(
            |c| matches!(c, Command::BeginMigration { to, expected_epoch: 3, .. } if to == "r")
        ));
        // With 3 in flight, nothing more starts and the rebalance goes on.
        let moving: BTreeSet<String> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::BeginMigration { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect();
        for n in &mut c.nodes {
            if moving.contains(&n.id) {
                n.handoff = HandoffState::Migrating {
                    to: "r".into(),
                    since: 0,
                };
            }
        }
        let cmds = c.plan();
        assert!(
            cmds.iter()
                .all(|c| matches!(c, Command::TransferOwnership { .. })),
            "only the flips: {cmds:?}"
        );
        // Flipped: one more round moves the last one; then even, nothing in flight: done.
        for n in &mut c.nodes {
            if moving.contains(&n.id) {
                n.handoff = HandoffState::None;
                n.owner = "r".into();
            }
        }
        let cmds = c.plan();
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        let Command::BeginMigration { node: last, .. } = &cmds[0] else {
            panic!("{cmds:?}")
        };
        for n in &mut c.nodes {
            if &n.id == last {
                n.owner = "r".into();
            }
        }
        assert_eq!(
            c.plan(),
            vec![Command::SetRebalance {
                active: false,
                at: 100_000
            }]
        );
    }

    #[test]
    fn a_rebalance_leaves_reserved_stuck_and_fenced_nodes_alone() {
        let mut c = returned_fleet();
        c.reserved = ["a0", "a1", "a2", "a3", "a4", "a5"]
            .map(String::from)
            .into();
        for n in c.nodes.iter_mut().filter(|n| n.owner == "b") {
            n.fence = Some(crate::store::Fence {
                host: "x".into(),
                seq: 1,
            });
        }
        c.nodes[6].fence = None;
        let cmds = c.plan();
        assert_eq!(cmds.len(), 1, "only b0 may move: {cmds:?}");
        assert!(matches!(&cmds[0], Command::BeginMigration { node, .. } if node == "b0"));
        // A down or draining host is not a rebalance target.
        let mut c = returned_fleet();
        c.hosts[2].draining = true;
        assert!(!c
            .plan()
            .iter()
            .any(|c| matches!(c, Command::BeginMigration { .. })));
    }

    #[test]
    fn batching_keeps_order_and_limits_entries() {
        let flag = |i: usize| Command::FlagNode {
            node: format!("n{i}"),
            stuck: None,
            at: 1,
        };
        let mut cmds: Vec<Command> = (0..1201).map(flag).collect();
        cmds.push(Command::SetRebalance {
            active: false,
            at: 1,
        });
        cmds.push(flag(9999));
        let out = batch(cmds, STEPS_PER_ENTRY);
        let sizes: Vec<usize> = out
            .iter()
            .map(|c| match c {
                Command::OwnershipSteps { steps } => steps.len(),
                _ => 1,
            })
            .collect();
        assert_eq!(sizes, vec![500, 500, 201, 1, 1]);
        assert!(matches!(out[3], Command::SetRebalance { .. }));
        assert!(matches!(&out[4], Command::FlagNode { node, .. } if node == "n9999"));
        assert!(batch(Vec::new(), 10).is_empty());
    }

    #[test]
    fn heartbeats_leave_the_fingerprint_alone_until_a_state_changes() {
        let mut hosts = vec![host("a", "g", 99_000, false), host("b", "g", 99_500, false)];
        let fp = fingerprint(&hosts, 7, 100_000, &T);
        hosts[0].last_heartbeat = 99_900;
        assert_eq!(
            fingerprint(&hosts, 7, 100_100, &T),
            fp,
            "a heartbeat is no news"
        );
        assert_ne!(fingerprint(&hosts, 8, 100_100, &T), fp, "an event is");
        assert_ne!(
            fingerprint(&hosts, 7, 103_000, &T),
            fp,
            "b turning suspect is"
        );
        hosts[1].seen_seq = 5;
        assert_ne!(fingerprint(&hosts, 7, 100_100, &T), fp, "a confirmation is");
    }

    #[test]
    fn the_next_wake_is_the_next_lease_deadline() {
        let hosts = vec![host("a", "g", 99_000, false), host("b", "g", 95_000, false)];
        // a: suspect at 102_001, down at 103_001; b: suspect at 98_001 (past), down at 99_001 (past)
        assert_eq!(next_change(&hosts, 100_000, &T), Some(102_001));
        assert_eq!(next_change(&hosts, 102_001, &T), Some(103_001));
        assert_eq!(next_change(&hosts, 103_001, &T), None);
        assert_eq!(
            owners_to_read(&hosts, 100_000, &T),
            vec!["b"],
            "b is down, a is up"
        );
    }
}
