//! Baton: a boot server for bare-metal fleets (proxy-DHCP + TFTP + HTTP boot with
//! ownership handoff). See `DESIGN.md` in the shared folder for the architecture, and the
//! README's layout section for the rooms: drivers (`serve` with `serve::tftp` and
//! `serve::dhcp`, `http`, `replicate`, `ownership::lease`/`reconcile`) import cores (`wire`,
//! `tftp::transfer`, `dhcp::proxy`, `ownership::gate`, `store`), never the other way.
pub mod api;
pub mod app;
pub mod bindings;
pub mod blobs;
pub mod boots;
pub mod capture;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod dhcp;
pub mod doctor;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod import;
pub mod ingest;
pub mod metrics;
pub mod namespace;
pub mod net;
pub mod ownership;
pub mod pcap;
pub mod private_fs;
pub mod render;
pub mod replicate;
pub mod serve;
pub mod store;
pub mod storm;
pub mod tftp;
pub mod tls;
pub mod wire;
