//! Sans-IO codecs and name rules: no sockets, no clocks, no file system.
pub mod dhcp;
pub mod path;
pub mod remap;
pub mod tftp;
pub mod token;
