//! TFTP serving: the sans-IO transfer engine ([`transfer`]), option negotiation
//! ([`negotiate`]) and the tokio driver ([`server`]). Files come from
//! [`crate::namespace`]; the engine and negotiation know nothing of sockets or clocks.
pub mod negotiate;
pub mod server;
pub mod transfer;
