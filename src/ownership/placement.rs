//! Where a node goes (sans-IO): rendezvous (highest-random-weight) hashing over the
//! eligible hosts, so a dead host's nodes spread evenly and the choice is stable (the
//! same node picks the same host while the candidate set is unchanged).
//!
//! With bounded loads ([`pick_bounded`]): a host already above [`soft_cap`] (the even
//! share plus 5%) is passed over while another candidate is below it, so a takeover
//! lands within a few percent of even across the survivors even when they were uneven
//! before, and never above `max_nodes_per_host`.

use sha2::{Digest, Sha256};

/// A host that may take a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Host name.
    pub host: &'a str,
    /// Nodes it owns now (including earlier picks of this round).
    pub load: usize,
}

/// The rendezvous weight of `host` for `node`: the highest weight wins.
pub fn weight(node: &str, host: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(host.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Picks the host for `node` among `candidates` with room under `capacity`.
pub fn pick<'a>(
    node: &str,
    candidates: &[Candidate<'a>],
    capacity: Option<usize>,
) -> Option<&'a str> {
    candidates
        .iter()
        .filter(|c| capacity.is_none_or(|cap| c.load < cap))
        .max_by_key(|c| (weight(node, c.host), c.host))
        .map(|c| c.host)
}

/// Most nodes a host should own after placing `total` nodes over `hosts` hosts: the
/// even share plus 5% (rounded up), so rendezvous hashing keeps most of its stability.
pub fn soft_cap(total: usize, hosts: usize) -> Option<usize> {
    if hosts == 0 {
        return None;
    }
    let even = total.div_ceil(hosts);
    Some(even + even.div_ceil(20))
}

/// [`pick`] among the candidates below `soft` (and `hard`); when none is below `soft`,
/// among those below `hard` (the configured capacity, never exceeded).
pub fn pick_bounded<'a>(
    node: &str,
    candidates: &[Candidate<'a>],
    soft: Option<usize>,
    hard: Option<usize>,
) -> Option<&'a str> {
    let bound = match (soft, hard) {
        (Some(s), Some(h)) => Some(s.min(h)),
        (s, h) => s.or(h),
    };
    pick(node, candidates, bound).or_else(|| pick(node, candidates, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_evenly_and_is_stable() {
        let hosts = ["h1", "h2", "h3", "h4"];
        let c: Vec<Candidate> = hosts
            .iter()
            .map(|h| Candidate { host: h, load: 0 })
            .collect();
        let mut counts = std::collections::HashMap::new();
        for i in 0..4000 {
            let n = format!("node-{i}");
            let h = pick(&n, &c, None).unwrap();
            assert_eq!(pick(&n, &c, None), Some(h), "stable");
            *counts.entry(h).or_insert(0) += 1;
        }
        for h in hosts {
            let n = counts[h];
            assert!((850..1150).contains(&n), "{h} got {n} of 4000");
        }
        // Removing one host only moves that host's nodes.
        let c3: Vec<Candidate> = hosts[..3]
            .iter()
            .map(|h| Candidate { host: h, load: 0 })
            .collect();
        for i in 0..1000 {
            let n = format!("node-{i}");
            let before = pick(&n, &c, None).unwrap();
            if before != "h4" {
                assert_eq!(pick(&n, &c3, None), Some(before));
            }
        }
    }

    #[test]
    fn respects_capacity() {
        let c = vec![
            Candidate { host: "a", load: 2 },
            Candidate { host: "b", load: 0 },
        ];
        for i in 0..50 {
            assert_eq!(pick(&format!("n{i}"), &c, Some(2)), Some("b"));
        }
        let full = vec![Candidate { host: "a", load: 2 }];
        assert_eq!(pick("n", &full, Some(2)), None);
        assert_eq!(pick("n", &[], None), None);
    }

    /// Places `n` nodes of a dead host over `hosts` with their current `loads`.
    fn take_over(
        n: usize,
        hosts: &[&'static str],
        loads: &[usize],
        hard: Option<usize>,
    ) -> (Vec<usize>, usize) {
        let mut load = loads.to_vec();
        let total: usize = loads.iter().sum::<usize>() + n;
        let soft = soft_cap(total, hosts.len());
        let mut unplaced = 0;
        for i in 0..n {
            let c: Vec<Candidate> = hosts
                .iter()
                .zip(&load)
                .map(|(h, l)| Candidate { host: h, load: *l })
                .collect();
            match pick_bounded(&format!("node-{i:05}"), &c, soft, hard) {
                Some(h) => load[hosts.iter().position(|x| *x == h).unwrap()] += 1,
                None => unplaced += 1,
            }
        }
        (load, unplaced)
    }

    #[test]
    fn a_big_takeover_lands_within_five_percent_of_even() {
        // 3,000 nodes of a dead host over two empty survivors.
        let (load, left) = take_over(3000, &["a", "b"], &[0, 0], None);
        assert_eq!(left, 0);
        for l in &load {
            assert!((1425..=1575).contains(l), "{load:?}");
        }
        // Over five survivors, one of which already owns many nodes: the others fill up
        // first, nobody goes past even + 5% (the rest is rendezvous: within 10% of even).
        let (load, _) = take_over(4000, &["a", "b", "c", "d", "e"], &[1000, 0, 0, 0, 0], None);
        let cap = soft_cap(5000, 5).unwrap();
        assert_eq!(cap, 1050);
        assert!(load.iter().all(|l| *l <= cap), "{load:?}");
        assert_eq!(load.iter().sum::<usize>(), 5000);
        for l in &load[1..] {
            assert!((900..=1050).contains(l), "{load:?}");
        }
    }

    #[test]
    fn the_hard_capacity_is_never_exceeded_and_the_rest_is_left() {
        let (load, left) = take_over(3000, &["a", "b"], &[0, 200], Some(1000));
        assert_eq!(load, vec![1000, 1000]);
        assert_eq!(left, 1200);
        // A soft cap that no candidate is under does not strand nodes.
        let c = vec![Candidate {
            host: "a",
            load: 50,
        }];
        assert_eq!(pick_bounded("n", &c, Some(10), None), Some("a"));
        assert_eq!(pick_bounded("n", &c, Some(10), Some(50)), None);
        assert_eq!(soft_cap(10, 0), None);
    }
}
