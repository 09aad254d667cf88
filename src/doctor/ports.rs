//! Are Baton's listening ports free, and if not, which process holds each?
//! Sockets come from `/proc/net/{udp,udp6,tcp,tcp6}`, their owners from the socket
//! inodes behind `/proc/<pid>/fd/*`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Finding, Status};
use crate::config::Config;

/// Transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Proto {
    /// `udp` / `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// A bound socket from `/proc/net/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// Protocol.
    pub proto: Proto,
    /// Local address.
    pub local: SocketAddr,
    /// Socket inode (0 when the kernel shows none).
    pub inode: u64,
}

/// A process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: u32,
    /// Its `comm` name.
    pub name: String,
}

/// A listener Baton will open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// What it serves (`tftp`, `proxy-dhcp`, `pxe`, `http`).
    pub what: &'static str,
    /// Protocol.
    pub proto: Proto,
    /// Address.
    pub addr: SocketAddr,
    /// Flag and key that move it.
    pub knob: &'static str,
}

/// The listeners of `cfg`, as `baton serve` would open them.
pub fn wanted(cfg: &Config) -> Vec<Wanted> {
    let mut w = vec![Wanted {
        what: "tftp",
        proto: Proto::Udp,
        addr: cfg.tftp.listen,
        knob: "--tftp-listen / [tftp] listen",
    }];
    if cfg.dhcp.enabled {
        let ip = IpAddr::V4(cfg.dhcp.listen);
        w.push(Wanted {
            what: "proxy-dhcp",
            proto: Proto::Udp,
            addr: SocketAddr::new(ip, cfg.dhcp.port),
            knob: "--dhcp-port / [dhcp] port",
        });
        w.push(Wanted {
            what: "pxe",
            proto: Proto::Udp,
            addr: SocketAddr::new(ip, cfg.dhcp.pxe_port),
            knob: "--dhcp-pxe-port / [dhcp] pxe_port",
        });
    }
    w.push(Wanted {
        what: "http",
        proto: Proto::Tcp,
        addr: cfg.http.listen,
        knob: "--http-listen / [http] listen",
    });
    w
}

/// Parses one `/proc/net/{udp,tcp}[6]` file; TCP sockets count only when listening.
pub fn parse_proc_net(text: &str, proto: Proto) -> Vec<Socket> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        // TCP_LISTEN is 0x0A; a bound UDP socket is in any state.
        if proto == Proto::Tcp && f[3] != "0A" {
            continue;
        }
        let (Some(local), Ok(inode)) = (parse_hex_addr(f[1]), f[9].parse::<u64>()) else {
            continue;
        };
        out.push(Socket {
            proto,
            local,
            inode,
        });
    }
    out
}

/// `0100007F:0045` (IPv4) or 32 hex digits + port (IPv6): the kernel prints each 32-bit
/// word of the address in host byte order.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether binding `want` would collide with a socket bound to `have` (same port).
/// A dual-stack `[::]` socket takes the IPv4 port too (unless IPV6_V6ONLY, which /proc
/// does not show: assume the default).
fn collides(want: IpAddr, have: IpAddr) -> bool {
    enum Fam {
        V4(Ipv4Addr),
        V6(Ipv6Addr),
        Any6,
    }
    let fam = |ip: IpAddr| match ip {
        IpAddr::V4(a) => Fam::V4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(m) => Fam::V4(m),
            None if a.is_unspecified() => Fam::Any6,
            None => Fam::V6(a),
        },
    };
    match (fam(want), fam(have)) {
        (Fam::Any6, _) | (_, Fam::Any6) => true,
        (Fam::V4(a), Fam::V4(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
        (Fam::V6(a), Fam::V6(b)) => a == b,
        _ => false,
    }
}

/// Well-known holders of these ports, and how to stop them.
fn hint(name: &str) -> Option<&'static str> {
    Some(match name {
        "in.tftpd" => "systemctl disable --now tftpd-hpa",
        "atftpd" => "systemctl disable --now atftpd",
        "dnsmasq" => {
            "turn off its TFTP (enable-tftp) or proxy-DHCP, or bind it to other interfaces"
        }
        "dhcpd" => "run the DHCP server on another host, or give Baton other ports",
        "kea-dhcp4" => "run the DHCP server on another host, or give Baton other ports",
        _ => return None,
    })
}

/// One finding per wanted listener.
pub fn check(
    wanted: &[Wanted],
    sockets: &[Socket],
    owners: &HashMap<u64, Proc>,
    own_pid: u32,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for w in wanted {
        let name = format!("port {}/{} ({})", w.proto.as_str(), w.addr.port(), w.what);
        if w.addr.port() == 0 {
            out.push(Finding::pass(
                name,
                format!("{}: an ephemeral port, always free", w.addr),
            ));
            continue;
        }
        let holders: Vec<&Socket> = sockets
            .iter()
            .filter(|s| {
                s.proto == w.proto
                    && s.local.port() == w.addr.port()
                    && collides(w.addr.ip(), s.local.ip())
            })
            .collect();
        if holders.is_empty() {
            out.push(Finding::pass(name, format!("{}: free", w.addr)));
            continue;
        }
        let mut who = Vec::new();
        let mut all_baton = true;
        let mut fixes = Vec::new();
        for s in &holders {
            match owners.get(&s.inode) {
                Some(p) => {
                    who.push(format!("{} (pid {}) on {}", p.name, p.pid, s.local));
                    if p.name != "baton" || p.pid == own_pid {
                        all_baton = false;
                    }
                    if let Some(h) = hint(&p.name) {
                        if !fixes.contains(&h) {
                            fixes.push(h);
                        }
                    }
                }
                None => {
                    all_baton = false;
                    who.push(format!(
                        "a process this user cannot see on {} (run doctor as root to name it)",
                        s.local
                    ));
                }
            }
        }
        who.dedup();
        if all_baton {
            out.push(Finding::pass(
                name,
                format!(
                    "{}: in use by baton itself ({}): the server is running",
                    w.addr,
                    who.join(", ")
                ),
            ));
            continue;
        }
        let mut fix = fixes.join("; ");
        if !fix.is_empty() {
            fix.push_str("; or ");
        }
        fix.push_str(&format!(
            "stop it, or move Baton's listener with {}",
            w.knob
        ));
        out.push(Finding {
            name,
            status: Status::Fail,
            detail: format!("{}: held by {}", w.addr, who.join(", ")),
            fix: Some(fix),
        });
    }
    out
}

/// Reads the sockets of this network namespace.
pub fn gather_sockets() -> Vec<Socket> {
    let mut out = Vec::new();
    for (file, proto) in [
        ("/proc/net/udp", Proto::Udp),
        ("/proc/net/udp6", Proto::Udp),
        ("/proc/net/tcp", Proto::Tcp),
        ("/proc/net/tcp6", Proto::Tcp),
    ] {
        if let Ok(t) = std::fs::read_to_string(file) {
            out.extend(parse_proc_net(&t, proto));
        }
    }
    out
}

/// Which process holds each of `inodes` (those this user may look into).
pub fn gather_owners(inodes: &[u64]) -> HashMap<u64, Proc> {
    let mut out = HashMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok());
            if let Some(i) = inode.filter(|i| inodes.contains(i)) {
                let name = std::fs::read_to_string(p.path().join("comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                out.entry(i).or_insert(Proc { pid, name });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0100007F:1B39 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0
  2: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F95 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 900 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0016 00000000000000000000000001000000:9999 01 00000000:00000000 00:00000000 00000000     0        0 901 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_proc_net() {
        let u = parse_proc_net(UDP, Proto::Udp);
        assert_eq!(u[0].local, "127.0.0.1:6969".parse().unwrap());
        assert_eq!(u[0].inode, 4242);
        assert_eq!(u[1].local, "0.0.0.0:67".parse().unwrap());
        let t = parse_proc_net(TCP6, Proto::Tcp);
        assert_eq!(t.len(), 1, "only LISTEN sockets");
        assert_eq!(t[0].local, "[::]:8085".parse().unwrap());
    }

    #[test]
    fn collisions() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(collides(ip("0.0.0.0"), ip("127.0.0.1")));
        assert!(collides(ip("127.0.0.1"), ip("0.0.0.0")));
        assert!(collides(ip("127.0.0.1"), ip("::")));
        assert!(!collides(ip("127.0.0.1"), ip("127.0.0.2")));
        assert!(!collides(ip("::1"), ip("127.0.0.1")));
        assert!(!collides(ip("::1"), ip("0.0.0.0")));
        assert!(collides(ip("::"), ip("::1")));
    }

    #[test]
    fn names_the_holder_and_accepts_baton() {
        let w = vec![Wanted {
            what: "tftp",
            proto: Proto::Udp,
            addr: "0.0.0.0:6969".parse().unwrap(),
            knob: "--tftp-listen",
        }];
        let socks = parse_proc_net(UDP, Proto::Udp);
        let mut owners = HashMap::new();
        owners.insert(
            4242,
            Proc {
                pid: 31,
                name: "in.tftpd".into(),
            },
        );
        let f = &check(&w, &socks, &owners, 1)[0];
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("in.tftpd (pid 31)"), "{}", f.detail);
        assert!(f.fix.as_deref().unwrap().contains("tftpd-hpa"));
        owners.get_mut(&4242).unwrap().name = "baton".into();
        assert_eq!(check(&w, &socks, &owners, 1)[0].status, Status::Pass);
        owners.clear();
        let f = &check(&w, &socks, &owners, 1)[0];
        assert!(f.detail.contains("cannot see"), "{}", f.detail);
    }
}
