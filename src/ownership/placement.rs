//! Where a node goes (sans-IO): rendezvous (highest-random-weight) hashing over the
//! eligible hosts, so a dead host's nodes spread evenly and the choice is stable (the
//! same node picks the same host while the candidate set is unchanged).

use sha2::{Digest, Sha256};

/// A host that may take a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Host name.
    pub host: &'a str,
    /// Nodes it owns now (including earlier picks of this round).
    pub load: usize,
}

fn weight(node: &str, host: &str) -> u64 {
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
}
