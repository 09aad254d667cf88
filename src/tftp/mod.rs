//! TFTP serving: the sans-IO transfer engine, option negotiation, the file namespace
//! and the tokio driver.
pub mod files;
pub mod negotiate;
pub mod server;
pub mod store_source;
pub mod transfer;
