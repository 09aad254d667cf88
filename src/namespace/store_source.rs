//! The TFTP (and HTTP boot) namespace of a host: the files of the nodes it owns, from
//! the store, then the shared files of the TFTP root directory.

use std::net::IpAddr;
use std::sync::Arc;

use crate::namespace::cache::{Delivery, Served, ServedBlobs};
use crate::namespace::{BoxFuture, DirSource, FileData, FileSource, OpenError};
use crate::ownership::gate::{Gate, NotServed, Purpose};
use crate::store::{NodeFile, Store};
use crate::wire::path::ClientPath;

/// Node files first, shared directory second.
pub struct StoreSource {
    gate: Gate,
    store: Arc<Store>,
    blobs: ServedBlobs,
    shared: DirSource,
    /// Paths of the shared directory that are node files (an ingested tree): never
    /// served from the directory itself, only once adopted into the store.
    claimed: Option<fn(&str) -> bool>,
}

impl StoreSource {
    /// A namespace over the node files of `store` (served as `gate` allows, bytes from
    /// `blobs`) and the shared directory `shared`.
    pub fn new(gate: Gate, store: Arc<Store>, blobs: ServedBlobs, shared: DirSource) -> Self {
        StoreSource {
            gate,
            store,
            blobs,
            shared,
            claimed: None,
        }
    }

    /// Paths for which `claimed` is true are served from the store only: the shared
    /// directory is an ingested tree, where a file being written must not be served.
    pub fn with_claimed(mut self, claimed: fn(&str) -> bool) -> Self {
        self.claimed = Some(claimed);
        self
    }

    /// The shared directory part.
    pub fn shared(&self) -> &DirSource {
        &self.shared
    }

    /// Looks a served path up among node files, and checks (through the serve gate)
    /// that this host may serve it to `client`, with the boot token `path` carried.
    ///
    /// `Ok(None)`: not a node file. `Err`: a node file this host must not serve.
    pub fn owned_node_file(
        &self,
        path: &ClientPath,
        client: Option<IpAddr>,
    ) -> Result<Option<NodeFile>, OpenError> {
        // Sampled before the reads: see LeaseView.
        let lease = self.gate.lease_view();
        let nf = match self.store.node_file_for(path) {
            Ok(Some(nf)) => nf,
            Ok(None) => return Ok(None),
            Err(e) => return Err(OpenError::Io(e.to_string())),
        };
        match self.store.node(&nf.node) {
            Ok(Some(node)) => {
                let token = path.token();
                match self.gate.check(
                    lease,
                    &node,
                    Purpose::Files { client, token },
                    Some(&nf.path),
                ) {
                    Ok(_) => Ok(Some(nf)),
                    Err(r) => Err(OpenError::NotServed(r)),
                }
            }
            Ok(None) => Ok(None),
            Err(e) => Err(OpenError::Io(e.to_string())),
        }
    }

    /// The bytes of a node file this host may serve, checked again after loading:
    /// loading can take a while (a large blob, a paused process).
    pub async fn node_file_bytes(
        &self,
        path: &ClientPath,
        client: Option<IpAddr>,
        nf: &NodeFile,
    ) -> Result<Arc<FileData>, OpenError> {
        let data = self.blobs.bytes(&nf.digest).await?;
        self.still_served(path, client, nf)?;
        Ok(data)
    }

    /// The body of a node file this host may serve, as `delivery` asks (the HTTP boot
    /// fast path takes the verified blob file), checked again after opening as
    /// [`StoreSource::node_file_bytes`] is.
    pub async fn node_file_served(
        &self,
        path: &ClientPath,
        client: Option<IpAddr>,
        nf: &NodeFile,
        delivery: Delivery,
    ) -> Result<Served, OpenError> {
        let body = self.blobs.served(&nf.digest, delivery).await?;
        self.still_served(path, client, nf)?;
        Ok(body)
    }

    /// After a load: the path still names the same content and may still be served.
    fn still_served(
        &self,
        path: &ClientPath,
        client: Option<IpAddr>,
        nf: &NodeFile,
    ) -> Result<(), OpenError> {
        match self.owned_node_file(path, client)? {
            Some(again) if again.digest == nf.digest => Ok(()),
            Some(_) => Err(OpenError::Denied("changed")),
            None => Err(OpenError::NotServed(NotServed::NotOwner)),
        }
    }
}

impl FileSource for StoreSource {
    fn open<'a>(
        &'a self,
        path: &'a ClientPath,
        client: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<Arc<FileData>, OpenError>> {
        Box::pin(async move {
            match self.owned_node_file(path, client)? {
                Some(nf) => self.node_file_bytes(path, client, &nf).await,
                None if self
                    .claimed
                    .is_some_and(|claimed| path.candidates().any(claimed)) =>
                {
                    Err(OpenError::NotFound)
                }
                None => self.shared.open(path, client).await,
            }
        })
    }
}
