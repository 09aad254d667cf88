//! Lease vs election: the one rule that ties Raft's timing to the host lease.
//!
//! A lease renewal is a committed write, so it needs a leader. When the leader dies,
//! every other host must elect a new one and commit its next renewal before its lease
//! (sent at most one interval before the death) runs out:
//!
//! `interval + worst election + commit <= TTL x 0.9`
//!
//! where the worst election is `2 x timeout` (the candidate's random wait, see
//! [`crate::store::raft::elect`]) plus two heartbeats for the pre-vote and vote round
//! trips, and the commit one more heartbeat. Unless set, the Raft timing is derived from
//! the lease so that this holds; settings that break it are refused at start-up.
//!
//! Safety does not depend on this rule (a host stops answering when its lease ends,
//! peers wait TTL + grace), only availability does: healthy hosts never go silent
//! because a leader died.

use super::state::LeaseTimes;

/// Raft heartbeat and election timeout, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout: a voter's lease to its leader, and the candidate's shortest
    /// wait (it waits up to twice this).
    pub election_timeout_ms: u64,
}

/// Shortest election timeout Baton accepts: below this, a busy host's scheduling
/// delays alone would depose healthy leaders.
pub const MIN_ELECTION_MS: u64 = 50;
/// Longest derived election timeout (longer only slows failover).
pub const MAX_DERIVED_ELECTION_MS: u64 = 500;

impl RaftTiming {
    /// The slowest election after a leader dies, from its last heartbeat to a new
    /// leader able to commit.
    pub fn worst_election_ms(&self) -> u64 {
        self.election_timeout_ms
            .saturating_add(self.heartbeat_ms)
            .saturating_mul(2)
    }
}

/// Why lease and Raft settings cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// An election would outlast the survivors' leases.
    #[error(
        "an election can take {worst_ms} ms (2 x election_timeout_ms + 2 x heartbeat_ms); with \
         lease_interval_ms {interval_ms} and one more heartbeat to commit, healthy hosts would \
         lose their {ttl_ms} ms lease when the leader dies. Use at most \
         election_timeout_ms = {suggest_election_ms} and heartbeat_ms = {suggest_heartbeat_ms} \
         (or leave both unset to derive them), or raise lease_ttl_ms"
    )]
    ElectionOutlastsLease {
        /// Worst election time of the settings.
        worst_ms: u64,
        /// Lease interval.
        interval_ms: u64,
        /// Lease TTL.
        ttl_ms: u64,
        /// What would fit.
        suggest_election_ms: u64,
        /// What would fit.
        suggest_heartbeat_ms: u64,
    },
    /// The lease leaves no room for any election.
    #[error(
        "lease_ttl_ms {ttl_ms} leaves no room for a leader election after lease_interval_ms \
         {interval_ms}: raise lease_ttl_ms to at least {need_ttl_ms}"
    )]
    LeaseTooShort {
        /// Lease TTL.
        ttl_ms: u64,
        /// Lease interval.
        interval_ms: u64,
        /// Smallest TTL that works with this interval.
        need_ttl_ms: u64,
    },
    /// Heartbeats too slow for the election timeout.
    #[error(
        "election_timeout_ms must be at least 3 x heartbeat_ms and at least {MIN_ELECTION_MS}"
    )]
    HeartbeatTooSlow,
}

/// Time the lease leaves for an election after the interval and the commit.
fn budget_ms(lease: &LeaseTimes) -> u64 {
    (lease.ttl_ms - lease.ttl_ms / 10).saturating_sub(lease.interval_ms)
}

/// The Raft timing for `lease`: the longest election timeout (up to
/// [`MAX_DERIVED_ELECTION_MS`]) whose worst election fits, heartbeats at a quarter of it.
pub fn derive(lease: &LeaseTimes) -> Result<RaftTiming, TimingError> {
    // worst + commit = 2E + 3H with H = E/4: 2.75 E <= budget.
    let e = (budget_ms(lease).saturating_mul(4) / 11).min(MAX_DERIVED_ELECTION_MS);
    let t = RaftTiming {
        heartbeat_ms: (e / 4).max(10),
        election_timeout_ms: e,
    };
    if e < MIN_ELECTION_MS {
        return Err(TimingError::LeaseTooShort {
            ttl_ms: lease.ttl_ms,
            interval_ms: lease.interval_ms,
            need_ttl_ms: lease
                .interval_ms
                .saturating_add((MIN_ELECTION_MS * 11).div_ceil(4))
                .saturating_mul(10)
                / 9
                + 1,
        });
    }
    check(lease, &t).map(|()| t)
}

/// Whether `raft` fits `lease`.
pub fn check(lease: &LeaseTimes, raft: &RaftTiming) -> Result<(), TimingError> {
    if raft.election_timeout_ms < MIN_ELECTION_MS
        || raft.election_timeout_ms < raft.heartbeat_ms.saturating_mul(3)
        || raft.heartbeat_ms == 0
    {
        return Err(TimingError::HeartbeatTooSlow);
    }
    if raft.worst_election_ms().saturating_add(raft.heartbeat_ms) > budget_ms(lease) {
        let e = budget_ms(lease).saturating_mul(4) / 11;
        if e < MIN_ELECTION_MS {
            return derive(lease).map(|_| ());
        }
        return Err(TimingError::ElectionOutlastsLease {
            worst_ms: raft.worst_election_ms(),
            interval_ms: lease.interval_ms,
            ttl_ms: lease.ttl_ms,
            suggest_election_ms: e,
            suggest_heartbeat_ms: (e / 4).max(10),
        });
    }
    Ok(())
}

/// The timing in force: `explicit` values where given (checked), the rest derived.
pub fn resolve(
    lease: &LeaseTimes,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
) -> Result<RaftTiming, TimingError> {
    let d = derive(lease)?;
    let t = RaftTiming {
        heartbeat_ms: heartbeat_ms.unwrap_or(d.heartbeat_ms),
        election_timeout_ms: election_timeout_ms.unwrap_or(d.election_timeout_ms),
    };
    check(lease, &t).map(|()| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(interval_ms: u64, ttl_ms: u64) -> LeaseTimes {
        LeaseTimes {
            interval_ms,
            ttl_ms,
            grace_ms: 1000,
        }
    }

    #[test]
    fn defaults_derive_a_fitting_election() {
        let t = derive(&lease(1000, 3000)).unwrap();
        assert_eq!(t.election_timeout_ms, 500);
        assert_eq!(t.heartbeat_ms, 125);
        assert!(1000 + t.worst_election_ms() + t.heartbeat_ms <= 2700);
    }

    #[test]
    fn short_leases_derive_a_short_election() {
        let t = derive(&lease(200, 600)).unwrap();
        assert!(t.election_timeout_ms >= MIN_ELECTION_MS);
        assert!(200 + t.worst_election_ms() + t.heartbeat_ms <= 540, "{t:?}");
    }

    #[test]
    fn an_election_slower_than_the_lease_is_refused() {
        // The old defaults with short leases: openraft's 750 ms election vs a 600 ms TTL.
        let e = resolve(&lease(200, 600), Some(150), Some(750)).unwrap_err();
        assert!(
            matches!(e, TimingError::ElectionOutlastsLease { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("election_timeout_ms"));
        assert!(resolve(&lease(1000, 3000), Some(150), Some(750)).is_err());
        assert!(resolve(&lease(1000, 3000), Some(100), Some(400)).is_ok());
    }

    #[test]
    fn a_lease_with_no_room_is_refused() {
        let e = derive(&lease(200, 300)).unwrap_err();
        assert!(matches!(e, TimingError::LeaseTooShort { .. }), "{e}");
        let TimingError::LeaseTooShort { need_ttl_ms, .. } = e else {
            unreachable!()
        };
        assert!(derive(&lease(200, need_ttl_ms)).is_ok(), "{need_ttl_ms}");
    }

    #[test]
    fn heartbeat_must_be_well_below_the_timeout() {
        assert_eq!(
            resolve(&lease(1000, 3000), Some(200), Some(300)),
            Err(TimingError::HeartbeatTooSlow)
        );
    }
}
