//! Proxy-DHCP: the PXE decision ([`proxy`], sans-IO: request + the serve gate's verdict
//! in, answer or reason out) and its tokio driver on udp/67 and udp/4011 ([`server`]).
//! It never decides ownership itself: the gate (`ownership::gate`) does.
pub mod proxy;
pub mod server;
