//! `baton storm`: a whole-PXE boot-storm generator. N simulated machines play what
//! real firmware does (DHCP with the proxy's offer and the udp/4011 request, the
//! loader, the node's configuration, kernel and ramdisk over TFTP or HTTP) against
//! Baton or any other PXE server, verify the bytes and report per-stage times, which
//! server answered each DHCP round, and double answers.
//!
//! The protocol cores are sans-IO ([`client`], [`tftp`], [`bootcfg`]); [`driver`] is the
//! thin tokio layer with the sockets.

pub mod bootcfg;
pub mod client;
pub mod command;
pub mod driver;
pub mod profile;
pub mod report;
pub mod tftp;
