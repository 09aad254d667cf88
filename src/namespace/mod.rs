//! The served namespace: what a name a boot client sends (over TFTP or HTTP) resolves
//! to. Node files first, through the serve gate and the shared in-memory copies of
//! blobs ([`store_source`], [`cache`]); then the shared files of the TFTP root
//! ([`dir`]). The protocol drivers (`serve::tftp`, `http::boot`) read files only
//! through [`FileSource`]; nothing here knows of sockets or packets.

pub mod cache;
pub mod dir;
pub mod store_source;

pub use dir::DirSource;
pub use store_source::StoreSource;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::ownership::gate::NotServed;
use crate::wire::path::ClientPath;
use crate::wire::tftp::{to_netascii, ErrorCode};

/// The content of one file version, shared by every transfer of it.
#[derive(Debug)]
pub struct FileData {
    octets: Bytes,
    netascii: OnceLock<Bytes>,
}

impl FileData {
    /// Wraps file content.
    pub fn new(octets: Bytes) -> Self {
        FileData {
            octets,
            netascii: OnceLock::new(),
        }
    }

    /// The raw bytes.
    pub fn octets(&self) -> &Bytes {
        &self.octets
    }

    /// The netascii form, converted once per file version.
    pub fn netascii(&self) -> &Bytes {
        self.netascii
            .get_or_init(|| Bytes::from(to_netascii(&self.octets)))
    }
}

/// Why a file cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No such file.
    #[error("file not found")]
    NotFound,
    /// The name would leave the served namespace, or names something not servable.
    #[error("access violation: {0}")]
    Denied(&'static str),
    /// A node's file, and the serve gate says this host may not answer for that node.
    #[error("access violation: {0}")]
    NotServed(NotServed),
    /// Reading failed.
    #[error("cannot read file: {0}")]
    Io(String),
}

impl OpenError {
    /// TFTP error code for the answer.
    pub fn code(&self) -> ErrorCode {
        match self {
            OpenError::NotFound => ErrorCode::FileNotFound,
            OpenError::Denied(_) => ErrorCode::AccessViolation,
            OpenError::NotServed(r) => r.tftp_code(),
            OpenError::Io(_) => ErrorCode::NotDefined,
        }
    }

    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::NotFound => "not_found",
            OpenError::Denied(r) => r,
            OpenError::NotServed(r) => r.label(),
            OpenError::Io(_) => "io_error",
        }
    }
}

/// A boxed future, so sources can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that maps a requested name to file content: the shared directory, the
/// node store in front of it.
pub trait FileSource: Send + Sync + 'static {
    /// Opens `path` (a client's name, parsed once by the caller) for reading, for the
    /// client at `client` (node files may depend on who asks; shared files do not).
    fn open<'a>(
        &'a self,
        path: &'a ClientPath,
        client: Option<IpAddr>,
    ) -> BoxFuture<'a, Result<Arc<FileData>, OpenError>>;
}
