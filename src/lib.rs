//! Baton: a boot server for bare-metal fleets (proxy-DHCP + TFTP + HTTP boot with
//! ownership handoff). See `DESIGN.md` in the shared folder for the architecture.
pub mod app;
pub mod blobcache;
pub mod blobs;
pub mod capture;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod dhcp;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod net;
pub mod ownership;
pub mod pcap;
pub mod private_fs;
pub mod render;
pub mod serve;
pub mod store;
pub mod tftp;
pub mod wire;
