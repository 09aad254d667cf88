//! Proxy-DHCP's core: the PXE decision ([`proxy`], sans-IO: request + the serve gate's
//! verdict in, answer or reason out). Its tokio driver on udp/67 and udp/4011 is
//! `serve::dhcp`. It never decides ownership itself: the gate (`ownership::gate`) does.
pub mod proxy;
