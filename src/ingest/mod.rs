//! Ingest of a live TFTP tree written by a provisioning tool (OpenStack Ironic and
//! tools with its layout): per-node files become node files in the replicated store, so
//! a peer serves them byte-identical after the host that wrote them dies.
//!
//! [`layout`] names the per-node paths, [`plan`] decides (pure), [`scan`] reads the tree
//! safely (never a half-written file), [`driver`] watches and proposes.

pub mod driver;
pub mod layout;
pub mod plan;
pub mod scan;

pub use driver::{IngestReport, Ingester};
