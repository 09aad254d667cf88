//! Socket plumbing shared by the protocol drivers (receive with packet info, batched and
//! segmented sends, interface addresses and MTU) and the edge budgets they all apply:
//! descriptors ([`fds`]), fair slot shares per source ([`slots`]) and per-key rates
//! ([`ratelimit`]). No protocol logic lives here.
pub mod fds;
pub mod iface;
pub mod ratelimit;
pub mod slots;
pub mod udp;
