//! Classic pcap files: a reader of UDP datagrams (test vectors from real firmware
//! captures) and a writer (`baton serve --capture`), both sans-IO over byte slices and
//! `std::io::Write`.
//!
//! The writer records raw IP packets (LINKTYPE_RAW): a UDP socket knows addresses and
//! ports but not MAC addresses, and tcpdump/tshark read raw-IP captures as they are.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Ethernet link type.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Raw IPv4/IPv6 link type.
pub const LINKTYPE_RAW: u32 = 101;
/// Linux "cooked" capture.
pub const LINKTYPE_LINUX_SLL: u32 = 113;

/// One UDP datagram from a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpRecord {
    /// Capture time since the Unix epoch.
    pub ts: Duration,
    /// Source MAC address, when the link layer has one.
    pub src_mac: Option<[u8; 6]>,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// Why a capture cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcapError {
    /// Not a classic pcap file.
    #[error("not a pcap file (bad magic)")]
    BadMagic,
    /// Ends inside a header or record.
    #[error("truncated pcap file at byte {0}")]
    Truncated(usize),
    /// A link type this reader does not decode.
    #[error("unsupported link type {0}")]
    LinkType(u32),
}

fn rd_u32(b: &[u8], at: usize, le: bool) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if le {
        u32::from_le_bytes(s)
    } else {
        u32::from_be_bytes(s)
    })
}

/// Reads every UDP datagram (IPv4 or IPv6, unfragmented) of a capture; other packets are
/// skipped. Never panics on any input.
pub fn read_udp(file: &[u8]) -> Result<Vec<UdpRecord>, PcapError> {
    let magic = file.get(0..4).ok_or(PcapError::Truncated(0))?;
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => return Err(PcapError::BadMagic),
    };
    let linktype = rd_u32(file, 20, le).ok_or(PcapError::Truncated(20))?;
    if ![LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL].contains(&linktype) {
        return Err(PcapError::LinkType(linktype));
    }
    let mut out = Vec::new();
    let mut at = 24;
    while at < file.len() {
        let sec = rd_u32(file, at, le).ok_or(PcapError::Truncated(at))?;
        let frac = rd_u32(file, at + 4, le).ok_or(PcapError::Truncated(at))?;
        let incl = rd_u32(file, at + 8, le).ok_or(PcapError::Truncated(at))? as usize;
        let data = file
            .get(at + 16..at + 16 + incl)
            .ok_or(PcapError::Truncated(at))?;
        at += 16 + incl;
        let ts = Duration::from_secs(sec.into())
            + if nanos {
                Duration::from_nanos(frac.into())
            } else {
                Duration::from_micros(frac.into())
            };
        let (src_mac, ip) = match linktype {
            LINKTYPE_ETHERNET => {
                let Some(et) = data.get(12..14) else { continue };
                let mac: Option<[u8; 6]> = data.get(6..12).and_then(|m| m.try_into().ok());
                match u16::from_be_bytes([et[0], et[1]]) {
                    0x0800 | 0x86dd => (mac, &data[14..]),
                    _ => continue,
                }
            }
            LINKTYPE_LINUX_SLL => match data.get(16..) {
                Some(ip) => (None, ip),
                None => continue,
            },
            _ => (None, data),
        };
        if let Some((src, dst, payload)) = parse_ip_udp(ip) {
            out.push(UdpRecord {
                ts,
                src_mac,
                src,
                dst,
                payload: payload.to_vec(),
            });
        }
    }
    Ok(out)
}

/// Splits an IP packet carrying UDP into addresses and payload.
fn parse_ip_udp(ip: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let v = ip.first()? >> 4;
    let (src, dst, udp) = match v {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            if *ip.get(9)? != 17 || frag & 0x3fff != 0 || ihl < 20 {
                return None;
            }
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(s)),
                IpAddr::V4(Ipv4Addr::from(d)),
                ip.get(ihl..total.min(ip.len()))?,
            )
        }
        6 => {
            if *ip.get(6)? != 17 {
                return None;
            }
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                ip.get(40..)?,
            )
        }
        _ => return None,
    };
    let sp = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dp = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let ulen = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    let payload = udp.get(8..ulen.max(8).min(udp.len()))?;
    Some((SocketAddr::new(src, sp), SocketAddr::new(dst, dp), payload))
}

/// Writes UDP datagrams as raw-IP pcap records.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter { out })
    }

    /// Records one datagram sent from `src` to `dst` now.
    pub fn write_udp(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> io::Result<()> {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.write_udp_at(ts, src, dst, payload)
    }

    /// Records one datagram at time `ts` (since the Unix epoch).
    pub fn write_udp_at(
        &mut self,
        ts: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> io::Result<()> {
        let pkt = build_ip_udp(src, dst, payload);
        let mut rec = Vec::with_capacity(16 + pkt.len());
        rec.extend_from_slice(&(ts.as_secs() as u32).to_le_bytes());
        rec.extend_from_slice(&ts.subsec_micros().to_le_bytes());
        rec.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        rec.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        rec.extend_from_slice(&pkt);
        self.out.write_all(&rec)
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an IP + UDP packet around `payload` (both checksums computed).
fn build_ip_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    // Payloads larger than an IP packet are cut, as a snap length would.
    let payload = &payload[..payload.len().min(65_000)];
    let ulen = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(usize::from(ulen));
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&ulen.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    match (src.ip().to_canonical(), dst.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut sum = checksum_add(0, &s.octets());
            sum = checksum_add(sum, &d.octets());
            sum += 17 + u32::from(ulen);
            let c = checksum_fold(checksum_add(sum, &udp));
            udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&(20 + ulen).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let hc = checksum_fold(checksum_add(0, &ip));
            ip[10..12].copy_from_slice(&hc.to_be_bytes());
            ip.extend_from_slice(&udp);
            ip
        }
        (s, d) => {
            let s6 = match s {
                IpAddr::V4(v) => v.to_ipv6_mapped(),
                IpAddr::V6(v) => v,
            };
            let d6 = match d {
                IpAddr::V4(v) => v.to_ipv6_mapped(),
                IpAddr::V6(v) => v,
            };
            let mut sum = checksum_add(0, &s6.octets());
            sum = checksum_add(sum, &d6.octets());
            sum += 17 + u32::from(ulen);
            let c = checksum_fold(checksum_add(sum, &udp));
            udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&ulen.to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s6.octets());
            ip.extend_from_slice(&d6.octets());
            ip.extend_from_slice(&udp);
            ip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_back() {
        let mut buf = Vec::new();
        let mut w = PcapWriter::new(&mut buf).unwrap();
        let a: SocketAddr = "10.0.0.1:69".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:2000".parse().unwrap();
        let c: SocketAddr = "[::1]:69".parse().unwrap();
        w.write_udp_at(Duration::from_secs(5), a, b, b"hello")
            .unwrap();
        w.write_udp_at(Duration::from_secs(6), c, c, b"v6").unwrap();
        w.flush().unwrap();
        let recs = read_udp(&buf).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[0].src, recs[0].dst, &recs[0].payload[..]),
            (a, b, &b"hello"[..])
        );
        assert_eq!(recs[0].ts, Duration::from_secs(5));
        assert_eq!((recs[1].src, &recs[1].payload[..]), (c, &b"v6"[..]));
    }

    #[test]
    fn reads_the_shared_firmware_captures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/captures");
        let Ok(file) = std::fs::read(dir.join("proxy-bios-marker.pcap")) else {
            eprintln!("SKIPPED: ../shared/captures not present");
            assert!(std::env::var_os("CI").is_none(), "captures missing in CI");
            return;
        };
        let recs = read_udp(&file).unwrap();
        assert!(recs.iter().any(|r| r.dst.port() == 67), "has DHCP");
        assert!(recs.iter().any(|r| r.dst.port() == 69), "has a TFTP RRQ");
        assert_eq!(recs[0].src_mac.map(|m| m[0]), recs[0].src_mac.map(|m| m[0]));
    }

    #[test]
    fn garbage_never_panics() {
        for n in 0..64 {
            let mut v = vec![0xd4, 0xc3, 0xb2, 0xa1];
            v.extend((0..n).map(|i| (i * 37 % 251) as u8));
            let _ = read_udp(&v);
        }
        assert_eq!(read_udp(b"nope"), Err(PcapError::BadMagic));
    }
}
