//! The HTTP contract, declared once: the request and response bodies of the admin API
//! (`/v1`, [`v1`]) and of the boot records ([`boots`]), and the files the local CLI
//! shares with the server. The peer routes (`/cluster`, [`peer`]) and the error body every
//! refusal carries are declared with the Raft transport that speaks them
//! ([`crate::store::raft::rpc`]) and re-exported here, so the store never looks up here.
//!
//! The server handlers answer with these types and the clients (the CLI's
//! [`crate::client`], the peer client [`crate::store::raft::peer`]) read them, so renaming
//! a field breaks the build instead of the output. This room holds plain serde types over
//! the store's value types: no logic, no I/O, nothing from the drivers.

pub mod boots;
pub mod v1;

pub use crate::store::raft::rpc as peer;
pub use crate::store::raft::rpc::{ErrorBody, ErrorInfo};

/// Header of the 503 a server sends a connection it refuses at admission (connection
/// limits): the request was never read, so a client may send it again after the
/// `Retry-After`, whatever its method.
pub const BUSY_HEADER: &str = "x-baton-busy";

/// Where `baton serve` keeps its state unless told otherwise, and where the local CLI
/// looks for the API token.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/baton";

/// File name of the API token under the data directory: written by the server, read by
/// the local CLI when no `--token` is given.
pub const TOKEN_FILE: &str = "api-token";
