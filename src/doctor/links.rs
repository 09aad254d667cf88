//! Interfaces, addresses and MTU: can PXE clients reach the configured listeners, and
//! do TFTP blocks fit the links they arrive on?

use std::net::{IpAddr, Ipv4Addr};

use super::{Finding, Status};
use crate::config::Config;
use crate::net::iface::Interface;
use crate::tftp::negotiate::blksize_for_mtu;

/// An interface with its MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Name, flags, addresses.
    pub iface: Interface,
    /// From sysfs.
    pub mtu: Option<u32>,
}

/// The MTU most PXE ROMs assume (they ask for 1456- or 1468-byte blocks).
const ETHERNET_MTU: u32 = 1500;

fn has_addr(links: &[Link], ip: Ipv4Addr) -> bool {
    ip.is_loopback() || links.iter().any(|l| l.iface.ipv4.contains(&ip))
}

/// Configured addresses that are not on this host.
pub fn check_addresses(cfg: &Config, links: &[Link]) -> Finding {
    let mut addrs: Vec<(&str, IpAddr)> = vec![
        ("tftp.listen", cfg.tftp.listen.ip()),
        ("http.listen", cfg.http.listen.ip()),
    ];
    if cfg.dhcp.enabled {
        addrs.push(("dhcp.listen", IpAddr::V4(cfg.dhcp.listen)));
        if let Some(s) = cfg.dhcp.server_ip {
            addrs.push(("dhcp.server_ip", IpAddr::V4(s)));
        }
    }
    let mut bad = Vec::new();
    let mut shown = Vec::new();
    for (key, ip) in addrs {
        shown.push(format!("{key} {ip}"));
        if let IpAddr::V4(v4) = ip {
            if !v4.is_unspecified() && !v4.is_broadcast() && !has_addr(links, v4) {
                bad.push(format!("{key} = {ip}"));
            }
        }
    }
    let name = "addresses".to_string();
    if bad.is_empty() {
        return Finding::pass(name, shown.join(", "));
    }
    Finding {
        name,
        status: Status::Fail,
        detail: format!(
            "not assigned to any interface of this host: {}",
            bad.join(", ")
        ),
        fix: Some("use an address that `ip -4 addr` shows, or 0.0.0.0 for all interfaces".into()),
    }
}

/// The interfaces PXE clients will use, and their MTU against the TFTP block size.
pub fn check_links(cfg: &Config, links: &[Link]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut chosen: Vec<&Link> = Vec::new();
    if cfg.dhcp.enabled && !cfg.dhcp.interfaces.is_empty() {
        for want in &cfg.dhcp.interfaces {
            let name = format!("interface {want}");
            match links.iter().find(|l| &l.iface.name == want) {
                None => out.push(Finding {
                    name,
                    status: Status::Fail,
                    detail: "listed in dhcp.interfaces but does not exist".into(),
                    fix: Some("fix dhcp.interfaces / --dhcp-interface (see `ip link`)".into()),
                }),
                Some(l) if !l.iface.up => out.push(Finding {
                    name,
                    status: Status::Fail,
                    detail: "is down".into(),
                    fix: Some(format!("ip link set dev {want} up")),
                }),
                Some(l) if l.iface.ipv4.is_empty() && cfg.dhcp.server_ip.is_none() => {
                    out.push(Finding {
                        name,
                        status: Status::Fail,
                        detail: "has no IPv4 address: proxy-DHCP announces the address of the interface a request came in on".into(),
                        fix: Some(format!("assign one (ip addr add ... dev {want}) or set dhcp.server_ip")),
                    })
                }
                Some(l) => chosen.push(l),
            }
        }
    } else {
        let listen = match cfg.tftp.listen.ip() {
            IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        };
        chosen = links
            .iter()
            .filter(|l| match listen {
                Some(ip) if ip.is_loopback() => l.iface.loopback,
                Some(ip) => l.iface.ipv4.contains(&ip),
                None => l.iface.up && !l.iface.loopback && !l.iface.ipv4.is_empty(),
            })
            .collect();
        if chosen.is_empty() {
            out.push(Finding {
                name: "interfaces".into(),
                status: Status::Warn,
                detail: "no interface other than loopback is up with an IPv4 address: PXE clients cannot reach this host".into(),
                fix: Some("bring up the provisioning network's interface with an address".into()),
            });
        }
    }
    for l in chosen {
        out.push(check_mtu(cfg, l));
    }
    out
}

fn check_mtu(cfg: &Config, l: &Link) -> Finding {
    let name = format!("interface {}", l.iface.name);
    let addrs: Vec<String> = l.iface.ipv4.iter().map(|a| a.to_string()).collect();
    let addrs = if addrs.is_empty() {
        "no IPv4 address".to_string()
    } else {
        addrs.join(", ")
    };
    let Some(mtu) = l.mtu else {
        return Finding {
            name,
            status: Status::Warn,
            detail: format!(
                "{addrs}; MTU unknown (no /sys/class/net/{}/mtu)",
                l.iface.name
            ),
            fix: None,
        };
    };
    let used = cfg.tftp.mtu.unwrap_or(mtu);
    let block = cfg.tftp.max_blksize.min(blksize_for_mtu(used, false));
    let detail = format!(
        "{addrs}; MTU {mtu}: TFTP blocks up to {block} bytes (tftp.max_blksize {})",
        cfg.tftp.max_blksize
    );
    if let Some(c) = cfg.tftp.mtu.filter(|&c| c > mtu) {
        return Finding {
            name,
            status: Status::Warn,
            detail: format!(
                "{detail}; tftp.mtu {c} exceeds the interface's MTU, so blocks are IP-fragmented and many PXE ROMs drop fragments"
            ),
            fix: Some(format!(
                "remove tftp.mtu (Baton then uses each interface's MTU) or set it to {mtu} or less"
            )),
        };
    }
    if mtu < ETHERNET_MTU && !l.iface.loopback {
        return Finding {
            name,
            status: Status::Warn,
            detail: format!(
                "{detail}; below {ETHERNET_MTU}, PXE ROMs asking for 1468-byte blocks are offered less (most accept; some old ROMs fail)"
            ),
            fix: Some(format!(
                "raise the MTU (ip link set dev {} mtu {ETHERNET_MTU}) if the network carries it",
                l.iface.name
            )),
        };
    }
    Finding::pass(name, detail)
}

/// Reads the interfaces and their MTU.
pub fn gather() -> Vec<Link> {
    crate::net::iface::list()
        .into_iter()
        .map(|iface| {
            let mtu = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", iface.name))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Link { iface, mtu }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, ip: Option<&str>, mtu: u32) -> Link {
        Link {
            iface: Interface {
                name: name.into(),
                up: true,
                loopback: name == "lo",
                ipv4: ip.map(|i| i.parse().unwrap()).into_iter().collect(),
            },
            mtu: Some(mtu),
        }
    }

    #[test]
    fn mtu_and_block_size() {
        let links = vec![
            link("lo", Some("127.0.0.1"), 65536),
            link("eth0", Some("10.1.0.2"), 1500),
            link("eth1", Some("10.2.0.2"), 1400),
        ];
        let c = Config::default();
        let f = check_links(&c, &links);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].status, Status::Pass);
        assert!(f[0].detail.contains("1468 bytes"), "{}", f[0].detail);
        assert_eq!(f[1].status, Status::Warn);
        assert!(f[1].detail.contains("1368 bytes"), "{}", f[1].detail);
        let mut c = Config::default();
        c.tftp.mtu = Some(9000);
        c.dhcp.interfaces = vec!["eth0".into(), "eth9".into()];
        let f = check_links(&c, &links);
        assert_eq!(f[0].status, Status::Fail, "eth9 does not exist");
        assert_eq!(f[1].status, Status::Warn);
        assert!(f[1].detail.contains("fragmented"));
        let mut c = Config::default();
        c.tftp.listen = "127.0.0.1:6969".parse().unwrap();
        let f = check_links(&c, &links);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].name, "interface lo");
        assert_eq!(f[0].status, Status::Pass);
    }

    #[test]
    fn addresses_must_be_local() {
        let links = vec![link("eth0", Some("10.1.0.2"), 1500)];
        let mut c = Config::default();
        assert_eq!(check_addresses(&c, &links).status, Status::Pass);
        c.dhcp.server_ip = Some("10.9.9.9".parse().unwrap());
        let f = check_addresses(&c, &links);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("dhcp.server_ip = 10.9.9.9"));
    }
}
