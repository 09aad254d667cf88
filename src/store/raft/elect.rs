//! Elections with pre-vote (Raft thesis §9.6). openraft 0.9 has no pre-vote, and its own
//! election timer waits `leader lease + timeout` (1.5–2x the timeout) after the last
//! leader contact. So its timer is off (`enable_elect = false`) and this task decides
//! when to stand:
//!
//! - after a random timeout in `[timeout, 2 x timeout)` without contact from a leader, it
//!   asks every voter "would you vote for me?" without raising its term;
//! - a voter says yes only if it has not heard from a leader for the lease (`timeout`)
//!   itself and the candidate's log is at least as new as its own, compared by the last
//!   log id each has *appended* (read from the log store), exactly as the real vote
//!   compares them: a pre-vote won on applied positions could be followed by a vote lost
//!   on appended ones, round after round, while the voter that is ahead never stands;
//! - only with a majority of yeses does it start the real election.
//!
//! A host cut off from the others, or paused, never raises the term, so when it comes
//! back it cannot depose a healthy leader (which would stall every lease renewal).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{LogId, ServerState};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::log::LogStore;
use super::peer::PeerClient;
pub use super::rpc::{PreVoteRequest, PreVoteResponse};
use super::{BatonRaft, NodeId};

/// Election timing: the lease a voter gives a leader, and the candidate's base timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTiming {
    /// Silence from the leader after which a voter grants a pre-vote, and the shortest
    /// wait before a candidate stands (it waits up to twice this).
    pub timeout: Duration,
}

/// What the cluster routes need to answer pre-votes, and the elector to run.
#[derive(Clone)]
pub struct Election {
    /// When this host last heard from a leader.
    pub contact: LeaderContact,
    /// The election timing in force.
    pub timing: ElectionTiming,
    /// The Raft log, for the last log id this host has appended.
    pub log: LogStore,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

/// When this host last heard from a leader it accepts (append or snapshot).
#[derive(Debug, Clone)]
pub struct LeaderContact(Arc<Mutex<Instant>>);

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact(Arc::new(Mutex::new(Instant::now())))
    }
}

impl LeaderContact {
    /// Records contact now.
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Time since the last contact.
    pub fn age(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

/// What a voter looks at to answer a pre-vote.
#[derive(Debug, Clone, Copy)]
pub struct VoterView {
    /// This voter is the leader (a leader never grants: it is alive).
    pub is_leader: bool,
    /// Time since it last heard from a leader.
    pub contact_age: Duration,
    /// Its own last log id.
    pub last_log_id: Option<LogId<NodeId>>,
}

/// The pre-vote rule, pure: grant only when the leader has been silent for the lease
/// and the candidate's log is at least as new.
pub fn decide(req: &PreVoteRequest, me: &VoterView, timing: &ElectionTiming) -> PreVoteResponse {
    let refuse = |r: &str| PreVoteResponse {
        granted: false,
        reason: Some(r.to_string()),
    };
    if me.is_leader {
        return refuse("this host is the leader");
    }
    if me.contact_age < timing.timeout {
        return refuse("a leader was heard from within the election timeout");
    }
    if req.last_log_id < me.last_log_id {
        return refuse("the candidate's log is behind this voter's");
    }
    PreVoteResponse {
        granted: true,
        reason: None,
    }
}

/// Answers a pre-vote on this host.
pub async fn answer(raft: &BatonRaft, e: &Election, req: &PreVoteRequest) -> PreVoteResponse {
    let m = raft.metrics().borrow().clone();
    let me = VoterView {
        is_leader: m.state == ServerState::Leader,
        contact_age: e.contact.age(),
        last_log_id: last_log(&e.log, &m).await,
    };
    let r = decide(req, &me, &e.timing);
    debug!(candidate = req.candidate, granted = r.granted, reason = ?r.reason, "pre-vote answered");
    r
}

/// The newest log id this replica has appended (what openraft's vote compares), from
/// the log store; the last applied id if the store cannot be read (a lower bound).
async fn last_log(log: &LogStore, m: &super::typ::Metrics) -> Option<LogId<NodeId>> {
    use openraft::storage::RaftLogStorage;
    match log.clone().get_log_state().await {
        Ok(s) => s.last_log_id.max(m.last_applied),
        Err(e) => {
            debug!(error = %e, "cannot read the last log id; using the last applied");
            m.last_applied
        }
    }
}

/// A random duration in `[base, 2 x base)`.
fn jitter(base: Duration) -> Duration {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let frac = (h.finish() % 10_000) as f64 / 10_000.0;
    base + base.mul_f64(frac)
}

/// Runs elections for this host until `shutdown`.
pub async fn run(
    raft: BatonRaft,
    node_id: NodeId,
    net: PeerClient,
    election: Election,
    shutdown: CancellationToken,
) {
    let Election {
        contact,
        timing,
        log,
    } = election;
    let mut backoff = Duration::ZERO;
    loop {
        // Stand only after a random silence of [timeout, 2 x timeout) from any leader,
        // and not sooner than a backoff after the last attempt.
        let silence = jitter(timing.timeout);
        let mut wait = backoff;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let m = raft.metrics().borrow().clone();
            if m.state == ServerState::Leader {
                contact.touch();
            } else if is_sole_voter(&m, node_id) {
                break;
            }
            let age = contact.age();
            if age >= silence {
                break;
            }
            wait = silence - age;
        }
        backoff = jitter(timing.timeout);
        stand(&raft, node_id, &net, &contact, &timing, &log).await;
    }
}

fn is_sole_voter(m: &super::typ::Metrics, node_id: NodeId) -> bool {
    let mut voters = m.membership_config.membership().voter_ids();
    voters.next() == Some(node_id) && voters.next().is_none()
}

/// One attempt: a pre-vote round, then the real election if a majority would vote.
async fn stand(
    raft: &BatonRaft,
    node_id: NodeId,
    net: &PeerClient,
    contact: &LeaderContact,
    timing: &ElectionTiming,
    log: &LogStore,
) {
    let m = raft.metrics().borrow().clone();
    if m.state == ServerState::Leader {
        return;
    }
    let membership = m.membership_config.membership();
    let voters: Vec<(NodeId, String)> = membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|p| (id, p.addr.clone())))
        .collect();
    if !voters.iter().any(|(id, _)| *id == node_id) {
        return; // a learner never stands
    }
    let req = PreVoteRequest {
        candidate: node_id,
        last_log_id: last_log(log, &m).await,
    };
    let asks = voters
        .iter()
        .filter(|(id, _)| *id != node_id)
        .map(|(id, addr)| {
            let req = req.clone();
            async move {
                net.prevote(*id, addr, &req, timing.timeout)
                    .await
                    .is_ok_and(|r| r.granted)
            }
        });
    // This host's own vote, plus every yes.
    let grants = 1 + futures_util::future::join_all(asks)
        .await
        .into_iter()
        .filter(|g| *g)
        .count();
    let need = voters.len() / 2 + 1;
    if grants < need {
        debug!(
            grants,
            need,
            term = m.current_term,
            "pre-vote lost: not standing"
        );
        return;
    }
    // A leader may have spoken while the pre-vote was out.
    if voters.len() > 1 && contact.age() < timing.timeout {
        return;
    }
    info!(
        grants,
        need,
        term = m.current_term,
        "pre-vote won: standing for election"
    );
    if let Err(e) = raft.trigger().elect().await {
        debug!(error = %e, "election trigger failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    const T: ElectionTiming = ElectionTiming {
        timeout: Duration::from_millis(500),
    };

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn view(is_leader: bool, age_ms: u64, last: Option<LogId<NodeId>>) -> VoterView {
        VoterView {
            is_leader,
            contact_age: Duration::from_millis(age_ms),
            last_log_id: last,
        }
    }

    fn req(last: Option<LogId<NodeId>>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 7,
            last_log_id: last,
        }
    }

    #[test]
    fn silent_leader_and_up_to_date_candidate_is_granted() {
        assert!(decide(&req(log(2, 10)), &view(false, 600, log(2, 10)), &T).granted);
        assert!(decide(&req(log(3, 1)), &view(false, 600, log(2, 10)), &T).granted);
    }

    #[test]
    fn a_live_leader_blocks_the_pre_vote() {
        // The returning host's case: the others hear from the leader, so it never
        // raises its term.
        assert!(!decide(&req(log(2, 10)), &view(false, 100, log(2, 10)), &T).granted);
        assert!(!decide(&req(log(2, 10)), &view(true, 10_000, log(2, 10)), &T).granted);
    }

    #[test]
    fn a_candidate_behind_is_refused() {
        assert!(!decide(&req(log(2, 9)), &view(false, 600, log(2, 10)), &T).granted);
        assert!(!decide(&req(None), &view(false, 600, log(1, 1)), &T).granted);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(100) && j < Duration::from_millis(200));
        }
    }
}
