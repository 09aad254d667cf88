//! What comes into Baton from elsewhere, read without I/O: node lists for bulk
//! enrollment ([`nodes`], `baton node import`) and other boot servers' configuration
//! translated into Baton's ([`dnsmasq`], `baton import dnsmasq`).

pub mod dnsmasq;
pub mod nodes;
