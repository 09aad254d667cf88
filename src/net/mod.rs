//! Socket plumbing shared by the protocol drivers.
pub mod udp;
