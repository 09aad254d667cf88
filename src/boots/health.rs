//! How a boot attempt stands (in progress, booted, done, stuck, interrupted): the
//! values [`super::stuck`] computes and [`super::timeline`] carries.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// Which way a boot is stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StuckKind {
    /// It started and then nothing happened.
    Stalled,
    /// It keeps asking for DHCP and fetches nothing.
    DhcpLoop,
}

impl StuckKind {
    /// Label for events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StuckKind::Stalled => "stalled",
            StuckKind::DhcpLoop => "dhcp_loop",
        }
    }
}

/// A stuck boot: how, since when, and a sentence for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stuck {
    /// How.
    pub kind: StuckKind,
    /// Since when (the last activity for a stall, the first request for a loop).
    pub since: Millis,
    /// What the records show.
    pub reason: String,
}

/// Where a boot attempt stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Going on.
    InProgress,
    /// Its files were delivered: the OS has what it needs.
    Booted,
    /// The OS reported success.
    Done,
    /// Stuck (see [`Stuck`]).
    Stuck(Stuck),
    /// A new attempt began before this one delivered its files.
    Interrupted,
}

impl Health {
    /// Label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::InProgress => "in_progress",
            Health::Booted => "booted",
            Health::Done => "done",
            Health::Stuck(s) => s.kind.as_str(),
            Health::Interrupted => "interrupted",
        }
    }

    /// The stuck details, when stuck.
    pub fn stuck(&self) -> Option<&Stuck> {
        match self {
            Health::Stuck(s) => Some(s),
            _ => None,
        }
    }

    /// The health of an attempt that a newer one followed: unfinished is interrupted,
    /// unless it had got stuck first.
    pub fn ended(self) -> Health {
        match self {
            Health::InProgress => Health::Interrupted,
            h => h,
        }
    }
}
