//! The handles of a running host, as the HTTP layer (admin API, HTTP boot, cluster
//! RPC) receives them. `serve` assembles them; every other driver gets only the handles
//! it needs ([`crate::ownership::lease::Renewer`], [`crate::ownership::reconcile::Reconciler`],
//! [`crate::replicate::Replicator`], [`crate::serve::dhcp::DhcpDeps`],
//! [`crate::namespace::store_source::StoreSource`]). Nothing below the HTTP layer imports
//! this module, and it holds no logic of its own.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::namespace::cache::ServedBlobs;
use crate::ownership::gate::Gate;
use crate::render::CurrentRenderer;
use crate::replicate::ReplicationProgress;
use crate::store::feed::EventFeed;
use crate::store::raft::elect::Election;
use crate::store::raft::propose::Proposer;
use crate::store::Store;

/// Everything the HTTP layer uses.
pub struct App {
    /// This host's name in the store.
    pub host: String,
    /// This host's group (L2 segment).
    pub group: String,
    /// The local replica (reads).
    pub store: Arc<Store>,
    /// The write path and cluster membership.
    pub proposer: Proposer,
    /// Leader contact and election timing, for pre-votes.
    pub election: Election,
    /// The serve gate (and this host's lease).
    pub gate: Gate,
    /// Served blob bytes and the blob store.
    pub blobs: ServedBlobs,
    /// Current templates.
    pub renderer: CurrentRenderer,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Newest applied event, for long polls.
    pub feed: EventFeed,
    /// Artifact replication progress.
    pub replication: ReplicationProgress,
    /// Cluster secret, when clustering is enabled.
    pub secret: Option<String>,
    /// Boot records: this host's, and the handle the drivers record through.
    pub boots: crate::boots::BootRecorder,
    /// Placement limits (`max_nodes_per_host`, `max_concurrent_migrations`).
    pub policy: crate::ownership::reconcile::Policy,
}
