pub mod dhcp;
pub mod tftp;
