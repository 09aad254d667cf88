//! Value types shared by commands, rows and rendering, with their validation rules.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::blobs::Digest;
use crate::wire::path::ClientPath;

/// Unix time in milliseconds, always stamped by the proposer of a command: applying a
/// command never reads the clock, so every replica computes the same state.
pub use crate::clock::Millis;

/// A host's identity in the Raft group: random, created with its data directory, so a
/// host that lost its data comes back under a new identity.
pub type NodeId = u64;

/// Identity of one write as its proposer sent it: the same id on every retry, so the
/// state machine applies the write once however often it arrives (see
/// [`super::Command::Idempotent`]). Written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u128);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl FromStr for RequestId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "invalid request id {:?}: expected 32 hex digits",
                s.chars().take(40).collect::<String>()
            ));
        }
        u128::from_str_radix(s, 16)
            .map(RequestId)
            .map_err(|e| e.to_string())
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Longest kernel command line accepted (Linux x86 allows 2048 by default, some
/// configurations more; above this a mistake is more likely than a real need).
pub const MAX_CMDLINE: usize = 4096;

/// An Ethernet MAC address. Shown and serialized as `52:54:00:ec:33:81`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Lowercase, colon-separated: `52:54:00:ec:33:81` (GRUB's `net_default_mac`).
    pub fn colons(&self) -> String {
        self.joined(':')
    }

    /// Lowercase, dash-separated: `52-54-00-ec-33-81` (iPXE's `${mac:hexhyp}`).
    pub fn dashes(&self) -> String {
        self.joined('-')
    }

    /// Lowercase hex without separators: `525400ec3381`.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    fn joined(&self, sep: char) -> String {
        let mut s = String::with_capacity(17);
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(sep);
            }
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.colons())
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({})", self.colons())
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets like 52:54:00:ec:33:81")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `aabb.ccdd.eeff` and
    /// `aabbccddeeff`, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.chars().take(40).collect());
        let hex: String = if s.len() == 17 {
            let sep = s.as_bytes()[2];
            if sep != b':' && sep != b'-' {
                return Err(err());
            }
            let parts: Vec<&str> = s.split(sep as char).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return Err(err());
            }
            parts.concat()
        } else if s.len() == 14 {
            let parts: Vec<&str> = s.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.len() != 4) {
                return Err(err());
            }
            parts.concat()
        } else if s.len() == 12 {
            s.to_string()
        } else {
            return Err(err());
        };
        let mut out = [0u8; 6];
        hex::decode_to_slice(&hex, &mut out).map_err(|_| err())?;
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.colons())
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Kernel, ramdisk and command line of a network boot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelBoot {
    /// Digest of the kernel artifact.
    pub kernel: Digest,
    /// Digest of the initial ramdisk artifact.
    pub ramdisk: Digest,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
}

/// What a node boots when it network-boots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BootProfile {
    /// The provisioning ramdisk (deploy, clean, inspect).
    Deploy(KernelBoot),
    /// The deployed instance's own kernel and ramdisk (network-booted instance).
    Instance(KernelBoot),
    /// The deployed instance boots from its local disk: the boot loader is told to
    /// exit to the firmware's next boot device.
    Local,
}

impl BootProfile {
    /// `deploy`, `instance` or `local`.
    pub fn kind(&self) -> &'static str {
        match self {
            BootProfile::Deploy(_) => "deploy",
            BootProfile::Instance(_) => "instance",
            BootProfile::Local => "local",
        }
    }

    /// Kernel boot parameters, unless the profile boots the local disk.
    pub fn kernel_boot(&self) -> Option<&KernelBoot> {
        match self {
            BootProfile::Deploy(k) | BootProfile::Instance(k) => Some(k),
            BootProfile::Local => None,
        }
    }

    /// Checks what the boot-loader configurations will contain. A newline in the
    /// command line would let it inject boot-loader directives, so control characters
    /// are refused.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(k) = self.kernel_boot() {
            if k.cmdline.len() > MAX_CMDLINE {
                return Err(format!(
                    "kernel command line is {} bytes, more than {MAX_CMDLINE}",
                    k.cmdline.len()
                ));
            }
            if k.cmdline.chars().any(char::is_control) {
                return Err("kernel command line contains a control character".into());
            }
        }
        Ok(())
    }
}

/// Where a node is in its provisioning life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionState {
    /// Known, not yet usable.
    Enrolled,
    /// Ready to be deployed.
    Available,
    /// Being deployed.
    Deploying,
    /// An instance is deployed and running.
    Active,
    /// Being cleaned after use.
    Cleaning,
    /// An operation failed; needs attention.
    Failed,
}

impl ProvisionState {
    /// All states, for parsing and documentation.
    pub const ALL: [ProvisionState; 6] = [
        ProvisionState::Enrolled,
        ProvisionState::Available,
        ProvisionState::Deploying,
        ProvisionState::Active,
        ProvisionState::Cleaning,
        ProvisionState::Failed,
    ];

    /// Name used in the database and API.
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisionState::Enrolled => "enrolled",
            ProvisionState::Available => "available",
            ProvisionState::Deploying => "deploying",
            ProvisionState::Active => "active",
            ProvisionState::Cleaning => "cleaning",
            ProvisionState::Failed => "failed",
        }
    }

    /// Inverse of [`ProvisionState::as_str`].
    pub fn parse(s: &str) -> Option<ProvisionState> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Whether the node is being handed to another host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HandoffState {
    /// Not moving.
    None,
    /// An operator asked to move the node to `to`; the owner stays until the transfer.
    Migrating {
        /// Target host.
        to: String,
        /// When the migration was requested.
        since: Millis,
    },
}

/// Why a node changed owner (recorded in the event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferReason {
    /// An operator's migration completed.
    Migration,
    /// The old owner's lease expired and a live peer took the node.
    Takeover,
    /// Direct operator assignment.
    Manual,
}

/// Checks a name used in paths and keys (node ids, host names, groups, architectures):
/// 1 to 64 of `[A-Za-z0-9._-]`, starting with a letter or digit, so it is safe in a
/// TFTP path, a URL and a file name.
pub fn check_name(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {:?}: use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit",
            s.chars().take(80).collect::<String>()
        ))
    }
}

/// Checks free text (artifact names, addresses, reservation holders): 1 to `max` bytes,
/// no control characters.
pub fn check_text(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(format!(
            "invalid {what}: must be 1-{max} bytes without control characters"
        ));
    }
    Ok(())
}

/// Most addresses an operator may set on one node.
pub const MAX_NODE_ADDRESSES: usize = 16;

/// Checks one address an operator sets on a node (see [`node_addresses`]): it must be
/// an address a single client can send from, so not unspecified (`0.0.0.0`, `::`),
/// multicast or the IPv4 broadcast address.
pub fn check_node_address(ip: IpAddr) -> Result<(), String> {
    let what = if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_multicast() {
        "multicast"
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        "broadcast"
    } else {
        return Ok(());
    };
    Err(format!(
        "invalid node address {ip}: a {what} address is no client's; give the address the \
         node boots from"
    ))
}

/// The addresses an operator sets on a node, checked ([`check_node_address`], at most
/// [`MAX_NODE_ADDRESSES`]) and in their stored form: IPv4-mapped IPv6 addresses as
/// IPv4 (as a requester's address is compared), sorted, without duplicates.
pub fn node_addresses(given: &[IpAddr]) -> Result<Vec<IpAddr>, String> {
    let set: BTreeSet<IpAddr> = given.iter().map(|ip| ip.to_canonical()).collect();
    for ip in &set {
        check_node_address(*ip)?;
    }
    if set.len() > MAX_NODE_ADDRESSES {
        return Err(format!(
            "{} node addresses, more than {MAX_NODE_ADDRESSES}",
            set.len()
        ));
    }
    Ok(set.into_iter().collect())
}

/// Serde of IP addresses as text (`"10.0.0.5"`, `"fd00::5"`) in every format, for
/// `#[serde(with = ...)]`. Serde's own impl writes bytes to a binary format, and the
/// binary log encoding (CBOR, `crate::store::raft::wire`) reads text back: a command
/// would not survive the trip.
pub mod ip_text {
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    fn parse<E: serde::de::Error>(s: &str) -> Result<IpAddr, E> {
        s.parse()
            .map_err(|_| E::custom(format!("invalid IP address {s:?}")))
    }

    /// One address.
    pub mod one {
        use super::*;

        /// Writes `ip` as text.
        pub fn serialize<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(ip)
        }

        /// Reads an address written as text.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
            parse(&String::deserialize(d)?)
        }
    }

    /// A list of addresses.
    pub fn serialize<S: Serializer>(ips: &[IpAddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ips.iter().map(|ip| ip.to_string()))
    }

    /// Reads a list of addresses written as text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| parse(s))
            .collect()
    }

    /// An optional list of addresses.
    pub mod option {
        use super::*;

        /// Writes `ips` as a list of text, or nothing.
        pub fn serialize<S: Serializer>(
            ips: &Option<Vec<IpAddr>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match ips {
                Some(v) => s.serialize_some(&v.iter().map(|ip| ip.to_string()).collect::<Vec<_>>()),
                None => s.serialize_none(),
            }
        }

        /// Reads an optional list of addresses written as text.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Vec<IpAddr>>, D::Error> {
            Option::<Vec<String>>::deserialize(d)?
                .map(|v| v.iter().map(|s| parse(s)).collect())
                .transpose()
        }
    }
}

/// Checks a path stored in `node_files`: it must already be in the form
/// [`ClientPath::parse`] gives (leading `/`s aside), so every client name that
/// normalizes to it finds it. Returns it without the leading `/`; `None` for anything
/// else (empty components, `.` or `..`, backslashes, control characters, too long).
pub fn normalize_path(path: &str) -> Option<String> {
    let p = ClientPath::parse(path).ok()?;
    (p.as_str() == path.trim_start_matches('/')).then(|| p.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_formats() {
        let want = MacAddr([0x52, 0x54, 0x00, 0xec, 0x33, 0x81]);
        for s in [
            "52:54:00:ec:33:81",
            "52-54-00-EC-33-81",
            "5254.00ec.3381",
            "525400EC3381",
        ] {
            assert_eq!(s.parse::<MacAddr>().unwrap(), want, "{s}");
        }
        assert_eq!(want.colons(), "52:54:00:ec:33:81");
        assert_eq!(want.dashes(), "52-54-00-ec-33-81");
        assert_eq!(want.hex(), "525400ec3381");
        for bad in [
            "",
            "52:54:00:ec:33",
            "52:54-00:ec:33:81",
            "52:54:00:ec:33:8g",
            "5254:00ec:3381",
            "é2:54:00:ec:33:8",
            "52:54:00:ec:3381:",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(
            normalize_path("/pxelinux.cfg/01-aa").as_deref(),
            Some("pxelinux.cfg/01-aa")
        );
        assert_eq!(
            normalize_path("nodes/n1/kernel").as_deref(),
            Some("nodes/n1/kernel")
        );
        for bad in [
            "", "/", "a//b", "../x", "a/./b", "a/..", "a\\b", "a\0b", "a/b/",
        ] {
            assert_eq!(normalize_path(bad), None, "{bad:?}");
        }
        assert_eq!(normalize_path(&"a".repeat(256)), None);
    }

    #[test]
    fn node_addresses_are_checked_and_canonical() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            node_addresses(&[ip("10.0.0.9"), ip("::ffff:10.0.0.5"), ip("10.0.0.9")]).unwrap(),
            vec![ip("10.0.0.5"), ip("10.0.0.9")],
            "mapped IPv6 as IPv4, sorted, once each"
        );
        assert_eq!(node_addresses(&[]).unwrap(), Vec::<IpAddr>::new());
        assert!(node_addresses(&[ip("127.0.0.31"), ip("fe80::1")]).is_ok());
        for bad in ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1"] {
            let e = node_addresses(&[ip("10.0.0.1"), ip(bad)]).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let many: Vec<IpAddr> = (1..=MAX_NODE_ADDRESSES as u8 + 1)
            .map(|i| IpAddr::from([10, 0, 0, i]))
            .collect();
        assert!(node_addresses(&many).unwrap_err().contains("more than"));
        assert!(node_addresses(&many[1..]).is_ok());
    }

    #[test]
    fn names() {
        assert!(check_name("node", "node-01.rack_2").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name("node", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn profile_serde_and_validation() {
        let k = KernelBoot {
            kernel: Digest::of(b"k"),
            ramdisk: Digest::of(b"r"),
            cmdline: "console=ttyS0".into(),
        };
        let p = BootProfile::Deploy(k.clone());
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["kind"], "deploy");
        assert_eq!(json["cmdline"], "console=ttyS0");
        assert_eq!(serde_json::from_value::<BootProfile>(json).unwrap(), p);
        let local: BootProfile = serde_json::from_str(r#"{"kind":"local"}"#).unwrap();
        assert_eq!(local, BootProfile::Local);
        assert!(p.validate().is_ok());
        let bad = BootProfile::Instance(KernelBoot {
            cmdline: "quiet\nMENU HIDDEN".into(),
            ..k.clone()
        });
        assert!(bad.validate().is_err());
        let long = BootProfile::Instance(KernelBoot {
            cmdline: "x".repeat(MAX_CMDLINE + 1),
            ..k
        });
        assert!(long.validate().is_err());
    }
}
