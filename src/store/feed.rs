//! The event feed's pulse: the newest applied event number, as a watch channel that
//! long-polling clients, the lease task and artifact replication wake on.

use std::sync::Arc;

use tokio::sync::watch;

use super::raft::machine::OnApply;
use super::Store;

/// Newest event sequence number, updated after each applied batch.
#[derive(Clone)]
pub struct EventFeed {
    tx: watch::Sender<u64>,
}

impl EventFeed {
    /// The feed over `store`, and the hook the state machine calls after each batch.
    pub fn new(store: Arc<Store>) -> (Self, OnApply) {
        let (tx, _) = watch::channel(store.last_event_seq().unwrap_or(0));
        let tx2 = tx.clone();
        let hook: OnApply = Arc::new(move || {
            if let Ok(last) = store.last_event_seq() {
                tx2.send_if_modified(|v| std::mem::replace(v, last) != last);
            }
        });
        (EventFeed { tx }, hook)
    }

    /// A receiver that changes when new events are appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// The newest event number seen.
    pub fn last(&self) -> u64 {
        *self.tx.borrow()
    }
}
