//! The TFTP (and HTTP boot) namespace of a host: the files of the nodes it owns, from
//! the store, then the shared files of the TFTP root directory.

use std::sync::Arc;

use crate::app::App;
use crate::store::NodeFile;
use crate::tftp::files::{BoxFuture, DirSource, FileData, FileSource, OpenError};
use crate::wire::path::ClientPath;

/// Node files first, shared directory second.
pub struct StoreSource {
    app: Arc<App>,
    shared: DirSource,
}

impl StoreSource {
    /// A namespace over `app`'s store and the shared directory `shared`.
    pub fn new(app: Arc<App>, shared: DirSource) -> Self {
        StoreSource { app, shared }
    }

    /// The shared directory part.
    pub fn shared(&self) -> &DirSource {
        &self.shared
    }
}

/// Looks a served path up among node files, and checks this host may serve it.
///
/// `Ok(None)`: not a node file. `Err`: a node file this host must not serve.
pub fn owned_node_file(app: &App, path: &ClientPath) -> Result<Option<NodeFile>, OpenError> {
    let nf = match app.store.node_file_for(path) {
        Ok(Some(nf)) => nf,
        Ok(None) => return Ok(None),
        Err(e) => return Err(OpenError::Io(e.to_string())),
    };
    match app.store.node(&nf.node) {
        // Owned per this replica, lease fresh, flip confirmed: never two hosts for one node.
        Ok(Some(node)) => match app.may_serve(&node) {
            Ok(()) => Ok(Some(nf)),
            Err(r) => Err(OpenError::Denied(r.as_str())),
        },
        Ok(None) => Ok(None),
        Err(e) => Err(OpenError::Io(e.to_string())),
    }
}

impl FileSource for StoreSource {
    fn open<'a>(&'a self, name: &'a ClientPath) -> BoxFuture<'a, Result<Arc<FileData>, OpenError>> {
        Box::pin(async move {
            match owned_node_file(&self.app, name)? {
                Some(nf) => {
                    let data = self.app.blob_bytes(&nf.digest).await?;
                    // Loading can take a while (a large blob, a paused process): check
                    // ownership and the lease again just before the first packet goes out.
                    match owned_node_file(&self.app, name)? {
                        Some(again) if again.digest == nf.digest => Ok(data),
                        Some(_) => Err(OpenError::Denied("changed")),
                        None => Err(OpenError::Denied("not_owner")),
                    }
                }
                None => self.shared.open(name).await,
            }
        })
    }
}
