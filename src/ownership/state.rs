//! Host liveness from the replicated heartbeat times (sans-IO).

use serde::{Deserialize, Serialize};

use crate::store::{Host, Millis};

/// Lease timing, shared by every host of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    /// How often a host renews.
    pub interval_ms: u64,
    /// How long a renewal keeps a host's lease fresh.
    pub ttl_ms: u64,
    /// Extra wait before peers take over (covers clock skew and in-flight renewals).
    pub grace_ms: u64,
}

/// A host's state as peers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Lease fresh.
    Up,
    /// Lease expired, grace not over: nobody takes its nodes yet.
    Suspect,
    /// Lease and grace expired: its nodes go to peers.
    Down,
    /// Up, and giving its nodes away.
    Draining,
}

impl HostState {
    /// Label.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Up => "up",
            HostState::Suspect => "suspect",
            HostState::Down => "down",
            HostState::Draining => "draining",
        }
    }

    /// Can take nodes (up and not draining).
    pub fn accepts_nodes(self) -> bool {
        self == HostState::Up
    }
}

/// Classifies `h` at time `now`.
pub fn classify(h: &Host, now: Millis, t: &LeaseTimes) -> HostState {
    let age = now.saturating_sub(h.last_heartbeat).max(0) as u64;
    if age > t.ttl_ms + t.grace_ms {
        HostState::Down
    } else if age > t.ttl_ms {
        HostState::Suspect
    } else if h.draining {
        HostState::Draining
    } else {
        HostState::Up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let t = LeaseTimes {
            interval_ms: 1000,
            ttl_ms: 3000,
            grace_ms: 1000,
        };
        let mut h = Host {
            name: "h".into(),
            group: "g".into(),
            addresses: vec![],
            registered_at: 0,
            last_heartbeat: 10_000,
            draining: false,
            seen_seq: 0,
        };
        assert_eq!(classify(&h, 12_000, &t), HostState::Up);
        assert_eq!(classify(&h, 13_500, &t), HostState::Suspect);
        assert_eq!(classify(&h, 14_001, &t), HostState::Down);
        h.draining = true;
        assert_eq!(classify(&h, 12_000, &t), HostState::Draining);
        assert_eq!(classify(&h, 14_001, &t), HostState::Down);
    }
}
