//! This host's lease: renewed by committing a heartbeat every interval. The lease is
//! fresh locally until (send time of the last committed renewal + TTL), measured on the
//! monotonic clock; peers wait TTL + grace after the committed heartbeat time before
//! taking over, so this host has stopped answering by then.
//!
//! Each heartbeat also carries the newest event this replica has applied: that is how
//! the old owner of a migrated node confirms the flip, which lets the new owner answer
//! (see [`crate::store::Fence`]). A flip away from this host is confirmed at once rather
//! than at the next tick, so the node is not left unanswered for an interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::gate::Gate;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::feed::EventFeed;
use crate::store::raft::propose::Proposer;
use crate::store::{Command, Store};

/// What the lease task works with.
pub struct Renewer {
    /// This host's gate, whose lease it renews.
    pub gate: Gate,
    /// To commit heartbeats.
    pub proposer: Proposer,
    /// The local replica (applied events, pending confirmations).
    pub store: Arc<Store>,
    /// Wakes on applied changes, to confirm a flip away at once.
    pub feed: EventFeed,
    /// The lease-fresh gauge.
    pub metrics: Arc<Metrics>,
}

/// Renews the lease until `shutdown`.
pub async fn run(app: Renewer, shutdown: CancellationToken) {
    let t = *app.gate.times();
    let host = app.gate.host().to_string();
    let ttl = Duration::from_millis(t.ttl_ms);
    let mut was_fresh = app.gate.lease_fresh();
    let mut tick = tokio::time::interval(Duration::from_millis(t.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = app.feed.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            Ok(()) = events.changed() => {
                if !app.store.awaits_confirmation(&host).unwrap_or(false) {
                    continue;
                }
                debug!(host = %host, "confirming a migration away from this host");
            }
        }
        let sent = Instant::now();
        let cmd = Command::Heartbeat {
            host: host.clone(),
            at: now_ms(),
            // Read before proposing: every flip up to here is applied, so not served.
            seen: app.store.last_event_seq().unwrap_or(0),
        };
        // A renewal that cannot commit within the TTL is no renewal.
        match tokio::time::timeout(ttl, app.proposer.propose(cmd)).await {
            Ok(Ok(o)) if o.is_applied() => app.gate.renew(sent),
            Ok(Ok(o)) => warn!(outcome = ?o, "lease renewal refused"),
            Ok(Err(e)) => warn!(error = %e, "lease renewal failed"),
            Err(_) => warn!(
                ttl_ms = t.ttl_ms,
                "lease renewal did not commit within the TTL"
            ),
        }
        let fresh = app.gate.lease_fresh();
        app.metrics.ownership.lease_fresh.set(fresh as i64);
        if fresh != was_fresh {
            if fresh {
                info!(host = %host, "lease fresh: answering for owned nodes");
            } else {
                warn!(host = %host, "lease expired: not answering for any node until it is renewed");
            }
            was_fresh = fresh;
        }
    }
}
