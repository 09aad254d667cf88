//! Socket plumbing shared by the protocol drivers.
pub mod iface;
pub mod udp;
