//! TFTP's protocol core: the sans-IO transfer engine ([`transfer`]) and option
//! negotiation ([`negotiate`]). They know nothing of sockets, clocks or files: the tokio
//! driver that feeds them (`serve::tftp`) reads files through `namespace`.
pub mod negotiate;
pub mod transfer;
