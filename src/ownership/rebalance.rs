//! Rebalance planning (sans-IO): which nodes move where so that every live host of a
//! group owns an even share again, e.g. after a host came back from a failure and got
//! none of its nodes back. The moves go through the fenced migration path; the leader's
//! reconciler starts a few at a time (see [`super::reconcile`]).
//!
//! Each receiving host takes the nodes that rank it highest by rendezvous weight, so a
//! rebalanced fleet looks like one placed by [`super::placement`] from the start.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::placement::weight;

/// A host that may give or take nodes (up, not draining), with the nodes it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLoad<'a> {
    /// Host name.
    pub host: &'a str,
    /// Nodes it owns (a node migrating counts at its target).
    pub load: usize,
}

/// A node a rebalance may move: no migration, live reservation, stuck flag or
/// unconfirmed flip on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Movable<'a> {
    /// Node id.
    pub node: &'a str,
    /// Its owner.
    pub owner: &'a str,
}

/// One planned migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The node.
    pub node: String,
    /// Its owner now.
    pub from: String,
    /// Where it goes.
    pub to: String,
}

/// How many nodes each host should own: the even share, the remainder kept by the
/// hosts that own most now (fewest moves), never above `capacity`.
pub fn targets<'a>(hosts: &[HostLoad<'a>], capacity: Option<usize>) -> BTreeMap<&'a str, usize> {
    if hosts.is_empty() {
        return BTreeMap::new();
    }
    let total: usize = hosts.iter().map(|h| h.load).sum();
    let (q, r) = (total / hosts.len(), total % hosts.len());
    let mut order: Vec<&HostLoad> = hosts.iter().collect();
    order.sort_by(|a, b| b.load.cmp(&a.load).then(a.host.cmp(b.host)));
    order
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let t = q + usize::from(i < r);
            (h.host, capacity.map_or(t, |c| t.min(c)))
        })
        .collect()
}

/// Hosts owning more than their target: the only ones whose nodes a plan moves.
pub fn donors<'a>(hosts: &[HostLoad<'a>], capacity: Option<usize>) -> Vec<&'a str> {
    let t = targets(hosts, capacity);
    hosts
        .iter()
        .filter(|h| h.load > t.get(h.host).copied().unwrap_or(0))
        .map(|h| h.host)
        .collect()
}

/// The moves that bring `hosts` (one group) to their [`targets`], best first: each
/// host below its target takes the movable nodes of hosts above theirs that weigh
/// highest for it.
pub fn plan(hosts: &[HostLoad<'_>], movable: &[Movable<'_>], capacity: Option<usize>) -> Vec<Move> {
    let t = targets(hosts, capacity);
    let mut surplus: BTreeMap<&str, usize> = BTreeMap::new();
    let mut deficit: BTreeMap<&str, usize> = BTreeMap::new();
    for h in hosts {
        let target = t.get(h.host).copied().unwrap_or(0);
        if h.load > target {
            surplus.insert(h.host, h.load - target);
        } else if h.load < target {
            deficit.insert(h.host, target - h.load);
        }
    }
    if surplus.is_empty() || deficit.is_empty() {
        return Vec::new();
    }
    let mut ranked: Vec<(u64, &str, &str, &str)> = Vec::new();
    for m in movable.iter().filter(|m| surplus.contains_key(m.owner)) {
        for to in deficit.keys() {
            ranked.push((weight(m.node, to), m.node, m.owner, to));
        }
    }
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.3.cmp(b.3)));
    let mut moved: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for (_, node, from, to) in ranked {
        if moved.contains(node) || surplus[from] == 0 || deficit[to] == 0 {
            continue;
        }
        moved.insert(node);
        *surplus.get_mut(from).expect("donor") -= 1;
        *deficit.get_mut(to).expect("receiver") -= 1;
        out.push(Move {
            node: node.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        });
    }
    out
}

/// Loads after `moves`.
pub fn after<'a>(hosts: &[HostLoad<'a>], moves: &[Move]) -> BTreeMap<&'a str, usize> {
    let mut load: BTreeMap<&str, usize> = hosts.iter().map(|h| (h.host, h.load)).collect();
    for m in moves {
        if let Some(l) = load.get_mut(m.from.as_str()) {
            *l = l.saturating_sub(1);
        }
        if let Some(l) = load.get_mut(m.to.as_str()) {
            *l += 1;
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(owner: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{owner}-node-{i:05}")).collect()
    }

    fn movable<'a>(ids: &'a [String], owner: &'a str) -> Vec<Movable<'a>> {
        ids.iter().map(|n| Movable { node: n, owner }).collect()
    }

    #[test]
    fn a_returning_host_gets_an_even_share_back() {
        let (a, b) = (nodes("a", 1500), nodes("b", 1500));
        let hosts = [
            HostLoad {
                host: "a",
                load: 1500,
            },
            HostLoad {
                host: "b",
                load: 1500,
            },
            HostLoad { host: "c", load: 0 },
        ];
        let mut m = movable(&a, "a");
        m.extend(movable(&b, "b"));
        let moves = plan(&hosts, &m, None);
        assert_eq!(moves.len(), 1000);
        assert!(moves.iter().all(|m| m.to == "c"));
        assert_eq!(moves.iter().filter(|m| m.from == "a").count(), 500);
        let after = after(&hosts, &moves);
        assert!(after.values().all(|l| *l == 1000), "{after:?}");
        // Deterministic, and each node moved once.
        assert_eq!(plan(&hosts, &m, None), moves);
        let ids: BTreeSet<&str> = moves.iter().map(|m| m.node.as_str()).collect();
        assert_eq!(ids.len(), moves.len());
        // Once applied, nothing is left to move.
        let hosts2: Vec<HostLoad> = after
            .iter()
            .map(|(h, l)| HostLoad { host: h, load: *l })
            .collect();
        assert!(plan(&hosts2, &m, None).is_empty());
    }

    #[test]
    fn an_even_fleet_within_one_node_stays_as_it_is() {
        let ids = nodes("a", 334);
        let hosts = [
            HostLoad {
                host: "a",
                load: 334,
            },
            HostLoad {
                host: "b",
                load: 333,
            },
            HostLoad {
                host: "c",
                load: 333,
            },
        ];
        assert!(plan(&hosts, &movable(&ids, "a"), None).is_empty());
        assert!(donors(&hosts, None).is_empty());
        assert!(plan(&[], &[], None).is_empty());
    }

    #[test]
    fn capacity_and_immovable_nodes_are_honoured() {
        let ids = nodes("a", 100);
        let hosts = [
            HostLoad {
                host: "a",
                load: 100,
            },
            HostLoad { host: "b", load: 0 },
        ];
        // Capacity 40: b takes 40 and no more (a stays above its target).
        let moves = plan(&hosts, &movable(&ids, "a"), Some(40));
        assert_eq!(moves.len(), 40);
        assert_eq!(targets(&hosts, Some(40))["b"], 40);
        // Only 7 of a's nodes may move: only 7 move, the others count but stay.
        let moves = plan(&hosts, &movable(&ids[..7], "a"), None);
        assert_eq!(moves.len(), 7);
        assert_eq!(donors(&hosts, None), vec!["a"]);
    }

    #[test]
    fn a_receiver_takes_the_nodes_that_rank_it_highest() {
        let ids = nodes("a", 300);
        let hosts = [
            HostLoad {
                host: "a",
                load: 300,
            },
            HostLoad { host: "b", load: 0 },
            HostLoad { host: "c", load: 0 },
        ];
        let moves = plan(&hosts, &movable(&ids, "a"), None);
        assert_eq!(moves.len(), 200);
        // Most moved nodes go where rendezvous over {b, c} would place them.
        let agree = moves
            .iter()
            .filter(|m| {
                let other = if m.to == "b" { "c" } else { "b" };
                weight(&m.node, &m.to) > weight(&m.node, other)
            })
            .count();
        assert!(agree * 10 >= moves.len() * 9, "{agree} of {}", moves.len());
    }

    #[test]
    fn random_fleets_end_within_one_node_of_even() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        for _ in 0..50 {
            let k = 2 + next(5);
            let names: Vec<String> = (0..k).map(|i| format!("h{i}")).collect();
            let loads: Vec<usize> = (0..k).map(|_| next(300)).collect();
            let all: Vec<Vec<String>> = names
                .iter()
                .zip(&loads)
                .map(|(h, l)| nodes(h, *l))
                .collect();
            let hosts: Vec<HostLoad> = names
                .iter()
                .zip(&loads)
                .map(|(h, l)| HostLoad { host: h, load: *l })
                .collect();
            let m: Vec<Movable> = names
                .iter()
                .zip(&all)
                .flat_map(|(h, ids)| movable(ids, h))
                .collect();
            let after = after(&hosts, &plan(&hosts, &m, None));
            let (lo, hi) = (
                after.values().min().copied().unwrap(),
                after.values().max().copied().unwrap(),
            );
            assert!(hi - lo <= 1, "{loads:?} -> {after:?}");
        }
    }
}
