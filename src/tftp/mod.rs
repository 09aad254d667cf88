//! TFTP serving: the sans-IO transfer engine and its tokio driver.
pub mod transfer;
