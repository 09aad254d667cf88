//! Socket plumbing shared by the protocol drivers (receive with packet info, batched and
//! segmented sends, interface addresses and MTU). No protocol logic lives here.
pub mod iface;
pub mod udp;
