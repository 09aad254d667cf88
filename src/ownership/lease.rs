//! This host's lease: renewed by committing a heartbeat every interval. The lease is
//! fresh locally until (send time of the last committed renewal + TTL), measured on the
//! monotonic clock; peers wait TTL + grace after the committed heartbeat time before
//! taking over, so this host has stopped answering by then.
//!
//! Each heartbeat also carries the newest event this replica has applied: that is how
//! the old owner of a migrated node confirms the flip, which lets the new owner answer
//! (see [`crate::store::Fence`]). A flip away from this host is confirmed at once rather
//! than at the next tick, so the node is not left unanswered for an interval.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::gate::Gate;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::feed::EventFeed;
use crate::store::raft::propose::{ProposeError, Proposer};
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

/// Renews the lease until `shutdown`. A renewal runs beside a watchdog that fires the
/// moment the lease ends, so a lapse is logged and counted when it happens, not when a
/// blocked renewal returns.
pub async fn run(app: Renewer, shutdown: CancellationToken) {
    let t = *app.gate.times();
    let host = app.gate.host().to_string();
    let ttl = Duration::from_millis(t.ttl_ms);
    let mut fresh = app.gate.lease_fresh();
    app.metrics.ownership.lease_fresh.set(fresh as i64);
    let mut tick = tokio::time::interval(Duration::from_millis(t.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = app.feed.subscribe();
    let mut renewal: Option<Pin<Box<dyn Future<Output = Renewal> + Send>>> = None;
    loop {
        // The watchdog: armed while the lease is fresh, at the instant it ends.
        let lapse_at = app.gate.lease_until().filter(|_| fresh);
        let lapse = async {
            match lapse_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let idle = renewal.is_none();
        let pending = async {
            match renewal.as_mut() {
                Some(r) => r.await,
                None => std::future::pending().await,
            }
        };
        let start = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick(), if idle => true,
            Ok(()) = events.changed(), if idle => {
                let confirm = app.store.awaits_confirmation(&host).unwrap_or(false);
                if confirm {
                    debug!(host = %host, "confirming a migration away from this host");
                }
                confirm
            }
            r = pending => {
                renewal = None;
                match r.result {
                    Ok(Ok(o)) if o.is_applied() => app.gate.renew(r.sent),
                    Ok(Ok(o)) => warn!(outcome = ?o, "lease renewal refused"),
                    Ok(Err(e)) => warn!(error = %e, "lease renewal failed"),
                    Err(_) => warn!(ttl_ms = t.ttl_ms, "lease renewal did not commit within the TTL"),
                }
                false
            }
            _ = lapse => {
                // Re-checked: a renewal may have landed at the same instant.
                if !app.gate.lease_fresh() {
                    app.metrics.ownership.lease_lapses.inc();
                }
                false
            }
        };
        if start {
            renewal = Some(Box::pin(renew(
                app.proposer.clone(),
                Command::Heartbeat {
                    host: host.clone(),
                    at: now_ms(),
                    // Read before proposing: every flip up to here is applied, so not served.
                    seen: app.store.last_event_seq().unwrap_or(0),
                },
                ttl,
            )));
        }
        let now_fresh = app.gate.lease_fresh();
        if now_fresh != fresh {
            app.metrics.ownership.lease_fresh.set(now_fresh as i64);
            if now_fresh {
                info!(host = %host, "lease fresh: answering for owned nodes");
            } else {
                warn!(host = %host, ttl_ms = t.ttl_ms, "lease expired: not answering for any node until it is renewed");
            }
            fresh = now_fresh;
        }
    }
}

/// One renewal's result, with its send time (the lease counts from there).
struct Renewal {
    sent: Instant,
    result: Result<Result<crate::store::Outcome, ProposeError>, tokio::time::error::Elapsed>,
}

/// Commits one heartbeat; a renewal that cannot commit within the TTL is no renewal.
async fn renew(proposer: Proposer, cmd: Command, ttl: Duration) -> Renewal {
    let sent = Instant::now();
    let result = tokio::time::timeout(ttl, proposer.propose(cmd)).await;
    Renewal { sent, result }
}
