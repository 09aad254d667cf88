//! Boot timelines: every stage of every boot a host serves (DHCP answer, udp/4011,
//! loader, configuration, kernel, ramdisk, the OS's report), with its time, host,
//! outcome, bytes and duration; attempts merged across hosts; stuck boots flagged.
//!
//! Boot records stay off the replicated log: a storm of 1,000 nodes makes some ten
//! thousand records in a minute, and each host keeps its own in a local SQLite file
//! ([`local`]), written in batches. A node's timeline is the merge of every host's
//! records, read from peers when asked (`/cluster/boots`); only the stuck flag's
//! transitions enter the log, batched per detector pass ([`watch`]).
//!
//! Rooms: [`record`] (the value), [`health`] (how an attempt stands), [`timeline`] and
//! [`stuck`] (pure: attempts, and their health over records and a time), [`classify`]
//! (pure: what a driver event means), [`metrics`]; drivers: [`recorder`] (the handle the
//! protocol drivers call, and the batched writer), [`local`] (the file), [`watch`] (the
//! detector). Their text for the CLI lives with the CLI (`commands/boots_text.rs`).

pub mod classify;
pub mod health;
pub mod local;
pub mod metrics;
pub mod record;
pub mod recorder;
pub mod stuck;
pub mod timeline;
pub mod watch;

pub use health::{Health, Stuck, StuckKind};
pub use record::{BootRecord, Proto, Stage, Status, Transfer};
pub use recorder::{BootRecorder, DhcpSeen, LiveTransfer};
pub use stuck::Rules;
pub use timeline::{Attempt, Step};
