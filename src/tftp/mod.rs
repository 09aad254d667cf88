//! TFTP serving: the sans-IO transfer engine, option negotiation and the tokio driver.
//! Files come from [`crate::namespace`].
pub mod negotiate;
pub mod server;
pub mod transfer;
