//! In-memory copies of blobs being served, keyed by digest: one copy per artifact
//! however many transfers (TFTP or HTTP) read it. Content-addressed, so never stale.
//! [`ServedBlobs`] is the handle the TFTP and HTTP drivers load served bytes through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::blobs::{BlobError, BlobStore, Digest};
use crate::namespace::{FileData, OpenError};
use crate::store::Store;

struct Entry {
    cell: Arc<tokio::sync::OnceCell<Arc<FileData>>>,
    size: u64,
    last_used: Instant,
}

/// Digest-keyed cache with a byte budget for idle entries.
pub struct BlobCache {
    entries: Mutex<HashMap<Digest, Entry>>,
    budget: u64,
}

impl BlobCache {
    /// A cache keeping about `budget` bytes.
    pub fn new(budget: u64) -> Self {
        BlobCache {
            entries: Mutex::new(HashMap::new()),
            budget,
        }
    }

    /// The blob's bytes, loading them once with `load` (run on the blocking pool) when
    /// absent; concurrent callers wait for the same load.
    pub async fn get_or_load<F>(&self, d: Digest, load: F) -> Result<Arc<FileData>, OpenError>
    where
        F: FnOnce() -> Result<Bytes, OpenError> + Send + 'static,
    {
        let cell = {
            let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let e = m.entry(d).or_insert_with(|| Entry {
                cell: Arc::new(tokio::sync::OnceCell::new()),
                size: 0,
                last_used: Instant::now(),
            });
            e.last_used = Instant::now();
            e.cell.clone()
        };
        let data = cell
            .get_or_try_init(|| async move {
                let bytes = tokio::task::spawn_blocking(load)
                    .await
                    .map_err(|e| OpenError::Io(e.to_string()))??;
                Ok::<_, OpenError>(Arc::new(FileData::new(bytes)))
            })
            .await?
            .clone();
        {
            let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = m.get_mut(&d) {
                e.size = data.octets().len() as u64;
            }
            let mut total: u64 = m.values().map(|e| e.size).sum();
            while total > self.budget {
                let Some((k, size)) = m
                    .iter()
                    .filter(|(k, _)| **k != d)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, e)| (*k, e.size))
                else {
                    break;
                };
                m.remove(&k);
                total -= size;
            }
        }
        Ok(data)
    }

    /// Drops a blob's cached copy (after removal).
    pub fn forget(&self, d: &Digest) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(d);
    }
}

/// The bytes boot clients are served, by digest: the blob store, or for a small
/// rendered file not fetched yet the store itself, loaded once, verified, and shared.
#[derive(Clone)]
pub struct ServedBlobs {
    blobs: Arc<BlobStore>,
    store: Arc<Store>,
    cache: Arc<BlobCache>,
}

impl ServedBlobs {
    /// Serves from `blobs` (and inline files of `store`), keeping about `budget` bytes
    /// of idle copies in memory.
    pub fn new(blobs: Arc<BlobStore>, store: Arc<Store>, budget: u64) -> Self {
        ServedBlobs {
            blobs,
            store,
            cache: Arc::new(BlobCache::new(budget)),
        }
    }

    /// The blob store on disk.
    pub fn store(&self) -> &Arc<BlobStore> {
        &self.blobs
    }

    /// Drops a blob's in-memory copy (after removal).
    pub fn forget(&self, d: &Digest) {
        self.cache.forget(d)
    }

    /// The bytes of a blob this host holds, shared across transfers.
    pub async fn bytes(&self, digest: &Digest) -> Result<Arc<FileData>, OpenError> {
        let blobs = self.blobs.clone();
        let store = self.store.clone();
        let d = *digest;
        self.cache
            .get_or_load(d, move || {
                let bytes = match blobs.read(&d) {
                    Ok(b) => b,
                    // A small rendered file not fetched yet: the store itself has it.
                    Err(BlobError::NotFound(_)) => store
                        .inline_file(&d)
                        .map_err(|e| OpenError::Io(e.to_string()))?
                        .map(Bytes::from)
                        .ok_or(OpenError::Denied("blob_missing"))?,
                    Err(e) => return Err(OpenError::Io(e.to_string())),
                };
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
