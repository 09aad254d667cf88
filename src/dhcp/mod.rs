//! Proxy-DHCP: the PXE decision and its tokio driver on udp/67 and udp/4011.
pub mod proxy;
pub mod server;
