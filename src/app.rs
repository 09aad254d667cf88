//! The running host's shared state: its identity, the store, the blob store, the
//! renderer, metrics and the event notifier. Writes go through [`App::propose`], the one
//! place a replicated log will slot in; reads go to the local replica.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::blobs::{BlobStore, Digest};
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::store::{Command, Millis, Outcome, Store, StoreError};
use crate::tftp::files::{FileData, OpenError};

/// Current Unix time in milliseconds: the proposer's timestamp for commands.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Why a proposed command could not be applied (not a business rejection).
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// The blocking task died.
    #[error("store task failed: {0}")]
    Task(String),
}

/// Everything a host's services share.
pub struct App {
    /// This host's name in the store.
    pub host: String,
    /// This host's group (L2 segment).
    pub group: String,
    /// The local replica.
    pub store: Arc<Store>,
    /// Content-addressed artifacts.
    pub blobs: Arc<BlobStore>,
    /// Current templates (replaced when the template directory changes).
    pub renderer: RwLock<Arc<Renderer>>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Shared in-memory copies of served blobs.
    pub blob_cache: crate::blobcache::BlobCache,
    /// Newest event sequence number, for long-polling clients.
    events: watch::Sender<u64>,
}

impl App {
    /// Assembles the state.
    pub fn new(
        host: String,
        group: String,
        store: Arc<Store>,
        blobs: Arc<BlobStore>,
        renderer: Renderer,
        metrics: Arc<Metrics>,
        cache_budget: u64,
    ) -> Self {
        let last = store.last_event_seq().unwrap_or(0);
        let (events, _) = watch::channel(last);
        App {
            host,
            group,
            store,
            blobs,
            renderer: RwLock::new(Arc::new(renderer)),
            metrics,
            blob_cache: crate::blobcache::BlobCache::new(cache_budget),
            events,
        }
    }

    /// Whether this host may answer for the nodes it owns now. A single host always
    /// may; with peers this becomes "my lease is fresh".
    pub fn serving(&self) -> bool {
        true
    }

    /// The current renderer.
    pub fn renderer(&self) -> Arc<Renderer> {
        self.renderer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the renderer (after a template change).
    pub fn set_renderer(&self, r: Renderer) {
        *self.renderer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(r);
    }

    /// Applies a command durably and wakes event followers. Runs on the blocking pool:
    /// a commit waits for fsync.
    pub async fn propose(self: &Arc<Self>, cmd: Command) -> Result<Outcome, ProposeError> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.propose_blocking(&cmd))
            .await
            .map_err(|e| ProposeError::Task(e.to_string()))?
    }

    /// [`App::propose`] for callers already off the async runtime.
    pub fn propose_blocking(&self, cmd: &Command) -> Result<Outcome, ProposeError> {
        let out = self.store.apply(cmd)?;
        self.metrics.store.commands.inc();
        if !out.is_applied() {
            self.metrics.store.rejected.inc();
        }
        self.notify_events();
        Ok(out)
    }

    /// Re-reads the newest event number and wakes long-polls if it moved.
    pub fn notify_events(&self) {
        if let Ok(last) = self.store.last_event_seq() {
            self.events
                .send_if_modified(|v| std::mem::replace(v, last) != last);
        }
    }

    /// A receiver that changes when new events are appended.
    pub fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    /// The bytes of a blob this host holds, shared across transfers.
    pub async fn blob_bytes(&self, digest: &Digest) -> Result<Arc<FileData>, OpenError> {
        let blobs = self.blobs.clone();
        let d = *digest;
        self.blob_cache
            .get_or_load(d, move || {
                let bytes = blobs.read(&d).map_err(|e| match e {
                    crate::blobs::BlobError::NotFound(_) => OpenError::Denied("blob_missing"),
                    e => OpenError::Io(e.to_string()),
                })?;
                // Verified once per load into memory: a damaged blob is never served.
                if Digest::of(&bytes) != d {
                    tracing::error!(digest = %d, "blob content does not match its digest; refusing to serve it");
                    return Err(OpenError::Io(format!("blob {d} is corrupt")));
                }
                Ok(bytes)
            })
            .await
    }
}
