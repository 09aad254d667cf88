//! One stage of a boot as a host saw it: the value every part of the boot timeline
//! passes around (recorded by the drivers, stored locally, sent to peers, merged).

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// Where in a network boot a record belongs, in the order firmware goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A proxy-DHCP answer on udp/67 (or a request this host did not answer).
    Dhcp,
    /// The PXE boot-server exchange on udp/4011.
    BootServer,
    /// A shared boot loader or one of its modules (pxelinux.0, ldlinux.c32, ipxe.efi...).
    Loader,
    /// The node's boot-loader configuration or iPXE script.
    Config,
    /// The node's kernel.
    Kernel,
    /// The node's initial ramdisk.
    Ramdisk,
    /// The booted OS (or ramdisk) reported success (`POST /boot/<node>/done`).
    Done,
}

impl Stage {
    /// Every stage, in boot order.
    pub const ALL: [Stage; 7] = [
        Stage::Dhcp,
        Stage::BootServer,
        Stage::Loader,
        Stage::Config,
        Stage::Kernel,
        Stage::Ramdisk,
        Stage::Done,
    ];

    /// Label for metrics, logs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dhcp => "dhcp",
            Stage::BootServer => "boot_server",
            Stage::Loader => "loader",
            Stage::Config => "config",
            Stage::Kernel => "kernel",
            Stage::Ramdisk => "ramdisk",
            Stage::Done => "done",
        }
    }

    /// Inverse of [`Stage::as_str`].
    pub fn parse(s: &str) -> Option<Stage> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// A DHCP exchange (udp/67 or udp/4011) rather than a file or a report.
    pub fn is_dhcp(self) -> bool {
        matches!(self, Stage::Dhcp | Stage::BootServer)
    }

    /// A file fetched over TFTP or HTTP.
    pub fn is_file(self) -> bool {
        matches!(
            self,
            Stage::Loader | Stage::Config | Stage::Kernel | Stage::Ramdisk
        )
    }
}

/// How a stage went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Answered, or the file was delivered in full.
    Ok,
    /// The firmware's size probe: it read the size and aborted, as designed.
    SizeProbe,
    /// A DHCP request this host saw for the node and did not answer (the reason says
    /// why: no profile, stale lease...).
    Ignored,
    /// The request was refused (serve gate, access, busy).
    Refused,
    /// No such file.
    NotFound,
    /// The client stopped acknowledging.
    TimedOut,
    /// The client or the server broke the transfer off.
    Aborted,
    /// Anything else that went wrong (I/O).
    Failed,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 8] = [
        Status::Ok,
        Status::SizeProbe,
        Status::Ignored,
        Status::Refused,
        Status::NotFound,
        Status::TimedOut,
        Status::Aborted,
        Status::Failed,
    ];

    /// Label for metrics, logs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::SizeProbe => "size_probe",
            Status::Ignored => "ignored",
            Status::Refused => "refused",
            Status::NotFound => "not_found",
            Status::TimedOut => "timed_out",
            Status::Aborted => "aborted",
            Status::Failed => "failed",
        }
    }

    /// Inverse of [`Status::as_str`].
    pub fn parse(s: &str) -> Option<Status> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether the stage went wrong (a size probe is not an error).
    pub fn is_error(self) -> bool {
        !matches!(self, Status::Ok | Status::SizeProbe)
    }
}

/// How a record's request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// Proxy-DHCP (udp/67 or udp/4011).
    Dhcp,
    /// TFTP.
    Tftp,
    /// HTTP (HTTP boot, or the done report).
    Http,
}

impl Proto {
    /// Label.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Dhcp => "dhcp",
            Proto::Tftp => "tftp",
            Proto::Http => "http",
        }
    }

    /// Inverse of [`Proto::as_str`].
    pub fn parse(s: &str) -> Option<Proto> {
        [Proto::Dhcp, Proto::Tftp, Proto::Http]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// What asked, as the DHCP request shows it: a firmware ROM starts a boot; iPXE asking
/// again after the ROM chain-loaded it continues one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// A PXE option ROM (BIOS or UEFI).
    Pxe,
    /// UEFI HTTP boot.
    Http,
    /// iPXE.
    Ipxe,
}

impl Firmware {
    /// Label.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Pxe => "pxe",
            Firmware::Http => "http",
            Firmware::Ipxe => "ipxe",
        }
    }

    /// Inverse of [`Firmware::as_str`].
    pub fn parse(s: &str) -> Option<Firmware> {
        [Firmware::Pxe, Firmware::Http, Firmware::Ipxe]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// One stage of one boot, as one host saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// When it ended (a transfer) or happened (an answer), wall clock.
    pub at: Millis,
    /// The host that saw it.
    pub host: String,
    /// The node.
    pub node: String,
    /// Which stage.
    pub stage: Stage,
    /// How it went.
    pub status: Status,
    /// Why, for anything but `ok`: a short label (`not_owner`, `no_profile`, `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How the request arrived.
    pub proto: Proto,
    /// The file asked for, or the boot file a DHCP answer named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For DHCP: who asked (a ROM starts a boot, iPXE continues one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Free text: the architecture chosen, the client's message, the OS's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The requester's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Bytes delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// How long the transfer took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// This stage completes the boot by itself: the configuration of a node whose
    /// profile boots the local disk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ends_boot: bool,
}

/// A file transfer in progress on a host (status page, `node boots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The host serving it.
    pub host: String,
    /// The node it belongs to, when known.
    pub node: Option<String>,
    /// TFTP or HTTP.
    pub proto: Proto,
    /// The requester.
    pub client: String,
    /// The file.
    pub path: String,
    /// Its stage in the node's boot, when the node is known.
    pub stage: Option<Stage>,
    /// File size.
    pub size: u64,
    /// Bytes sent so far, where the protocol tells (HTTP); `None` for TFTP.
    pub sent: Option<u64>,
    /// When it started (wall clock).
    pub started: Millis,
}

/// Longest free text kept in a record (a client's message, an OS's report).
pub const MAX_TEXT: usize = 200;

/// `s` cut to [`MAX_TEXT`] bytes at a character boundary, control characters dropped.
pub fn clip(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
            let j = serde_json::to_value(s).unwrap();
            assert_eq!(j, s.as_str());
        }
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for p in [Proto::Dhcp, Proto::Tftp, Proto::Http] {
            assert_eq!(Proto::parse(p.as_str()), Some(p));
        }
        for f in [Firmware::Pxe, Firmware::Http, Firmware::Ipxe] {
            assert_eq!(Firmware::parse(f.as_str()), Some(f));
        }
    }

    #[test]
    fn stages_are_in_boot_order() {
        let mut v = Stage::ALL.to_vec();
        v.sort();
        assert_eq!(v, Stage::ALL.to_vec());
    }

    #[test]
    fn clip_bounds_text() {
        assert_eq!(clip("ok\nfine"), "okfine");
        let long = "é".repeat(300);
        let c = clip(&long);
        assert!(c.len() <= MAX_TEXT && c.chars().all(|x| x == 'é'));
    }
}
