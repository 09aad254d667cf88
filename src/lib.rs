//! Baton: a boot server for bare-metal fleets (proxy-DHCP + TFTP + HTTP boot with
//! ownership handoff). See `DESIGN.md` in the shared folder for the architecture.
pub mod cli;
pub mod config;
pub mod metrics;
pub mod net;
pub mod serve;
pub mod tftp;
pub mod wire;
