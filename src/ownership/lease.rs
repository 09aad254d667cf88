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

use crate::app::{now_ms, App};
use crate::store::Command;

/// Renews the lease until `shutdown`.
pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    let t = app.lease_times;
    let ttl = Duration::from_millis(t.ttl_ms);
    let mut was_fresh = app.serving();
    let mut tick = tokio::time::interval(Duration::from_millis(t.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = app.subscribe_events();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            Ok(()) = events.changed() => {
                if !app.store.awaits_confirmation(&app.host).unwrap_or(false) {
                    continue;
                }
                debug!(host = %app.host, "confirming a migration away from this host");
            }
        }
        let sent = Instant::now();
        let cmd = Command::Heartbeat {
            host: app.host.clone(),
            at: now_ms(),
            // Read before proposing: every flip up to here is applied, so not served.
            seen: app.store.last_event_seq().unwrap_or(0),
        };
        // A renewal that cannot commit within the TTL is no renewal.
        match tokio::time::timeout(ttl, app.propose(cmd)).await {
            Ok(Ok(o)) if o.is_applied() => app.renew_lease(sent),
            Ok(Ok(o)) => warn!(outcome = ?o, "lease renewal refused"),
            Ok(Err(e)) => warn!(error = %e, "lease renewal failed"),
            Err(_) => warn!(
                ttl_ms = t.ttl_ms,
                "lease renewal did not commit within the TTL"
            ),
        }
        let fresh = app.serving();
        app.metrics.ownership.lease_fresh.set(fresh as i64);
        if fresh != was_fresh {
            if fresh {
                info!(host = %app.host, "lease fresh: answering for owned nodes");
            } else {
                warn!(host = %app.host, "lease expired: not answering for any node until it is renewed");
            }
            was_fresh = fresh;
        }
    }
}
