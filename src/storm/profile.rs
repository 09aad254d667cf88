//! Firmware profiles: how each kind of simulated machine asks for its boot (DHCP
//! options), how long it waits (timer schedules), and how it reads files over TFTP.
//! The numbers come from the firmware captures in the shared folder and from the
//! firmware's own defaults (PXE 2.1, EDK2, iPXE).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The kind of firmware a simulated client plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// A classic BIOS PXE 2.1 option ROM (no iPXE): arch 0, boots the proxy's file
    /// directly when discovery control says so, else asks the boot server on udp/4011.
    Bios,
    /// OVMF/EDK2's own UEFI PXE stack: arch 7, always asks the proxy on udp/4011 from
    /// port 4011, probes the loader's size (`tsize`, aborted) then downloads it with
    /// `windowsize=4`.
    EfiX64,
    /// An iPXE ROM (BIOS): user class `iPXE` and option 175 from the first DHCP, the
    /// udp/4011 request from port 68, lock-step TFTP with `blksize=1432,tsize=0`.
    Ipxe,
    /// iPXE (UEFI build) with the common embedded script
    /// `chain http://${next-server}:PORT/${filename}`: the same DHCP as [`Profile::Ipxe`],
    /// then every file over HTTP.
    IpxeHttp,
}

impl Profile {
    /// All profiles, in their display order.
    pub const ALL: [Profile; 4] = [
        Profile::Bios,
        Profile::EfiX64,
        Profile::Ipxe,
        Profile::IpxeHttp,
    ];

    /// Name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Bios => "bios",
            Profile::EfiX64 => "efi-x64",
            Profile::Ipxe => "ipxe",
            Profile::IpxeHttp => "ipxe-http",
        }
    }

    /// The firmware this profile starts as.
    pub fn firmware(self) -> Firmware {
        match self {
            Profile::Bios => Firmware::PxeRom,
            Profile::EfiX64 => Firmware::Edk2,
            Profile::Ipxe => Firmware::Ipxe { efi: false },
            Profile::IpxeHttp => Firmware::Ipxe { efi: true },
        }
    }

    /// Whether files named by a bare path are fetched over HTTP from the next server.
    pub fn prefers_http(self) -> bool {
        self == Profile::IpxeHttp
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown profile {s:?} (bios, efi-x64, ipxe, ipxe-http)"))
    }
}

/// A firmware stage: the code that runs DHCP and TFTP at one point of the boot. A
/// profile starts as one; a loader (iPXE) may replace it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// BIOS PXE 2.1 ROM.
    PxeRom,
    /// EDK2 UEFI PXE.
    Edk2,
    /// iPXE, BIOS or UEFI build.
    Ipxe {
        /// UEFI build (arch 7) rather than BIOS (arch 0).
        efi: bool,
    },
}

/// How a firmware waits: one timeout per try; after the last one it gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

impl Schedule {
    fn secs(v: &[f64]) -> Schedule {
        Schedule(v.iter().map(|s| Duration::from_secs_f64(*s)).collect())
    }

    /// The same schedule with every timeout multiplied by `k` (at least 1 ms).
    pub fn scaled(&self, k: f64) -> Schedule {
        Schedule(
            self.0
                .iter()
                .map(|d| d.mul_f64(k).max(Duration::from_millis(1)))
                .collect(),
        )
    }

    /// Timeout of try `n` (0-based), if there is such a try.
    pub fn get(&self, n: usize) -> Option<Duration> {
        self.0.get(n).copied()
    }

    /// Number of tries.
    pub fn tries(&self) -> usize {
        self.0.len()
    }
}

/// TFTP read habits of a firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpHabits {
    /// `blksize` asked for (None: no option).
    pub blksize: Option<u16>,
    /// Ask `tsize=0`.
    pub tsize: bool,
    /// `windowsize` asked for.
    pub windowsize: Option<u16>,
    /// First open the file with `tsize=0` only to learn its size, abort with ERROR 8,
    /// then download (EDK2 does this for the file named by DHCP).
    pub size_probe: bool,
    /// Retransmission timeouts (of the RRQ, then of the last ACK), one per try.
    pub timeouts: Schedule,
}

/// DHCP manners of a firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpHabits {
    /// Option 93.
    pub arch: u16,
    /// Option 94.
    pub nii: (u8, u8, u8),
    /// Option 60.
    pub vendor_class: &'static str,
    /// iPXE's options 77 and 175.
    pub ipxe: bool,
    /// DISCOVER timeouts: the client collects offers until each expires, then requests
    /// if it holds an address and a boot file, else sends the DISCOVER again.
    pub discover: Schedule,
    /// REQUEST timeouts.
    pub request: Schedule,
    /// Timeouts of the udp/4011 request.
    pub boot_server: Schedule,
    /// When the client asks the proxy on udp/4011.
    pub ask_4011: Ask4011,
    /// Source port of the udp/4011 request: 68 (iPXE, PXE ROM) or 4011 (EDK2).
    pub from_4011: bool,
    /// A new transaction id for the udp/4011 request (EDK2).
    pub new_xid_4011: bool,
}

/// When a firmware sends a request to the proxy's udp/4011.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask4011 {
    /// Whenever a proxy answered (iPXE; EDK2's "BINL" offers).
    Always,
    /// Only when the proxy's offer does not say "boot this file" (discovery control
    /// bit 3 with a file name): the PXE 2.1 rule.
    UnlessUseBootfile,
}

/// Everything that differs between firmware stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Habits {
    /// DHCP.
    pub dhcp: DhcpHabits,
    /// TFTP.
    pub tftp: TftpHabits,
}

impl Firmware {
    /// The habits of this firmware, timers multiplied by `scale`.
    pub fn habits(self, scale: f64) -> Habits {
        // PXE 2.1 and EDK2 retry DHCP at 4, 8, 16 and 32 s; iPXE starts at 1 s.
        let pxe_dhcp = Schedule::secs(&[4.0, 8.0, 16.0, 32.0]);
        let ipxe_dhcp = Schedule::secs(&[1.0, 2.0, 4.0, 8.0]);
        let h = match self {
            Firmware::PxeRom => Habits {
                dhcp: DhcpHabits {
                    arch: 0,
                    nii: (1, 2, 1),
                    vendor_class: "PXEClient:Arch:00000:UNDI:002001",
                    ipxe: false,
                    discover: pxe_dhcp.clone(),
                    request: pxe_dhcp.clone(),
                    boot_server: pxe_dhcp,
                    ask_4011: Ask4011::UnlessUseBootfile,
                    from_4011: false,
                    new_xid_4011: false,
                },
                tftp: TftpHabits {
                    blksize: Some(1456),
                    tsize: true,
                    windowsize: None,
                    size_probe: false,
                    timeouts: Schedule::secs(&[4.0; 6]),
                },
            },
            Firmware::Edk2 => Habits {
                dhcp: DhcpHabits {
                    arch: 7,
                    nii: (1, 3, 0),
                    vendor_class: "PXEClient:Arch:00007:UNDI:003000",
                    ipxe: false,
                    discover: pxe_dhcp.clone(),
                    request: pxe_dhcp.clone(),
                    boot_server: pxe_dhcp,
                    ask_4011: Ask4011::Always,
                    from_4011: true,
                    new_xid_4011: true,
                },
                tftp: TftpHabits {
                    blksize: Some(1468),
                    tsize: true,
                    windowsize: Some(4),
                    size_probe: true,
                    timeouts: Schedule::secs(&[4.0; 6]),
                },
            },
            Firmware::Ipxe { efi } => Habits {
                dhcp: DhcpHabits {
                    arch: if efi { 7 } else { 0 },
                    nii: if efi { (1, 3, 10) } else { (1, 2, 1) },
                    vendor_class: if efi {
                        "PXEClient:Arch:00007:UNDI:003010"
                    } else {
                        "PXEClient:Arch:00000:UNDI:002001"
                    },
                    ipxe: true,
                    discover: ipxe_dhcp.clone(),
                    request: ipxe_dhcp,
                    boot_server: Schedule::secs(&[1.0, 2.0]),
                    ask_4011: Ask4011::Always,
                    from_4011: false,
                    new_xid_4011: false,
                },
                tftp: TftpHabits {
                    blksize: Some(1432),
                    tsize: true,
                    windowsize: None,
                    size_probe: false,
                    // iPXE's retry timer: from 1/4 s, doubling, up to 10 s.
                    timeouts: Schedule::secs(&[0.25, 0.5, 1.0, 2.0, 4.0, 8.0]),
                },
            },
        };
        Habits {
            dhcp: DhcpHabits {
                discover: h.dhcp.discover.scaled(scale),
                request: h.dhcp.request.scaled(scale),
                boot_server: h.dhcp.boot_server.scaled(scale),
                ..h.dhcp
            },
            tftp: TftpHabits {
                timeouts: h.tftp.timeouts.scaled(scale),
                ..h.tftp
            },
        }
    }
}

/// TFTP habits of a second-stage loader that reads its own files: pxelinux (lock-step,
/// `tsize=0,blksize=1408` as in the captures) and GRUB (lock-step, `blksize=1024`).
pub fn loader_tftp(kind: super::bootcfg::LoaderKind, efi: bool, scale: f64) -> TftpHabits {
    use super::bootcfg::LoaderKind;
    let t = match kind {
        LoaderKind::Ipxe => return Firmware::Ipxe { efi }.habits(scale).tftp,
        LoaderKind::Pxelinux => TftpHabits {
            blksize: Some(1408),
            tsize: true,
            windowsize: None,
            size_probe: false,
            timeouts: Schedule::secs(&[1.0, 2.0, 3.0, 4.0, 6.0, 8.0]),
        },
        LoaderKind::Grub | LoaderKind::Shim => TftpHabits {
            blksize: Some(1024),
            tsize: true,
            windowsize: None,
            size_probe: false,
            timeouts: Schedule::secs(&[1.0; 8]),
        },
    };
    TftpHabits {
        timeouts: t.timeouts.scaled(scale),
        ..t
    }
}

/// iPXE's option 175 as the BIOS ROM of the captures sends it (feature flags).
pub const IPXE_175: [u8; 7] = [0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e];

/// Parses `bios`, `efi-x64:3,ipxe:1` (weights) into a repeating pattern.
pub fn parse_mix(s: &str) -> Result<Vec<Profile>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once(':') {
            Some((n, w)) => (
                n,
                w.parse::<usize>()
                    .ok()
                    .filter(|w| (1..=1000).contains(w))
                    .ok_or_else(|| format!("bad weight in {part:?} (1..=1000)"))?,
            ),
            None => (part, 1),
        };
        let p: Profile = name.parse()?;
        out.extend(std::iter::repeat_n(p, weight));
    }
    if out.is_empty() {
        return Err("no profile given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_and_names() {
        assert_eq!(
            parse_mix("bios:2, ipxe").unwrap(),
            vec![Profile::Bios, Profile::Bios, Profile::Ipxe]
        );
        assert!(parse_mix("uefi").is_err());
        assert!(parse_mix("bios:0").is_err());
        assert!(parse_mix("").is_err());
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
        }
    }

    #[test]
    fn scaling_keeps_the_shape() {
        let h = Firmware::PxeRom.habits(0.1);
        assert_eq!(h.dhcp.discover.get(0), Some(Duration::from_millis(400)));
        assert_eq!(h.dhcp.discover.get(3), Some(Duration::from_millis(3200)));
        assert_eq!(h.dhcp.discover.tries(), 4);
        let e = Firmware::Edk2.habits(1.0);
        assert!(e.tftp.size_probe && e.dhcp.from_4011 && e.dhcp.new_xid_4011);
        assert_eq!(e.tftp.windowsize, Some(4));
        let i = Firmware::Ipxe { efi: false }.habits(1.0);
        assert_eq!(i.tftp.blksize, Some(1432));
        assert!(i.dhcp.ipxe && !i.dhcp.from_4011);
    }
}
