//! Translations of other boot servers' configuration into Baton's (`baton import`).

pub mod dnsmasq;
