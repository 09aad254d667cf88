//! Proxy-DHCP from the client side: PXE DISCOVERs (firmware and iPXE), the REQUEST that
//! follows an address offer, and the boot file of an answer.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A PXE (BIOS) DHCPDISCOVER from `mac` with transaction id `xid`.
pub fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1]);
    let vc = b"PXEClient:Arch:00000:UNDI:002001";
    p.push(60);
    p.push(vc.len() as u8);
    p.extend_from_slice(vc);
    p.extend_from_slice(&[93, 2, 0, 0]);
    p.extend_from_slice(&[94, 3, 1, 2, 1]);
    p.extend_from_slice(&[97, 17, 0]);
    p.extend_from_slice(&[0x11; 10]);
    p.extend_from_slice(&mac);
    p.push(255);
    p
}

/// A PXE DISCOVER as iPXE (BIOS) sends it for `mac`: user class (77) `iPXE`, no
/// broadcast flag, padded to 300 bytes.
pub fn ipxe_discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1]);
    let vc = b"PXEClient:Arch:00000:UNDI:002001";
    p.extend_from_slice(&[60, vc.len() as u8]);
    p.extend_from_slice(vc);
    p.extend_from_slice(&[93, 2, 0, 0, 77, 4]);
    p.extend_from_slice(b"iPXE");
    p.push(255);
    p.resize(300, 0);
    p
}

/// The DHCPREQUEST a PXE client broadcasts to take address `ip` from the address server
/// `server` (options 50 and 54): proxies see it too, and must not answer it as an offer.
pub fn dhcp_request(mac: [u8; 6], xid: u32, ip: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    let mut p = discover(mac, xid);
    p.pop(); // the end option
    let at = p
        .windows(3)
        .position(|w| w == [53, 1, 1])
        .expect("message type option");
    p[at + 2] = 3; // REQUEST in place of DISCOVER
    p.extend_from_slice(&[50, 4]);
    p.extend_from_slice(&ip.octets());
    p.extend_from_slice(&[54, 4]);
    p.extend_from_slice(&server.octets());
    p.push(255);
    p
}

/// A PXE DISCOVER from `mac` that also asks for address `ip` (option 50), as a client
/// that had `ip` before sends it.
pub fn discover_asking(mac: [u8; 6], xid: u32, ip: Ipv4Addr) -> Vec<u8> {
    let mut p = discover(mac, xid);
    p.pop(); // the end option
    p.extend_from_slice(&[50, 4]);
    p.extend_from_slice(&ip.octets());
    p.push(255);
    p
}

/// A node at `from` (an address of its own on loopback) sends [`discover_asking`] to
/// `server`: the boot file of the answer to it within `wait`, if one came.
pub fn ask_from(
    from: Ipv4Addr,
    server: SocketAddr,
    mac: [u8; 6],
    xid: u32,
    wait: Duration,
) -> Option<String> {
    let sock = UdpSocket::bind((from, 0)).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    sock.send_to(&discover_asking(mac, xid, from), server)
        .unwrap_or_else(|e| panic!("DISCOVER to {server}: {e}"));
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set timeout");
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if let Some(file) = offer_for(&buf[..n], mac, xid) {
            return Some(file);
        }
    }
}

/// If `p` is a BOOTREPLY to `xid` for `mac`: its boot file name.
pub fn offer_for(p: &[u8], mac: [u8; 6], xid: u32) -> Option<String> {
    if p.len() < 240 || p[0] != 2 || p[4..8] != xid.to_be_bytes() || p[28..34] != mac {
        return None;
    }
    let file = &p[108..236];
    let end = file.iter().position(|&b| b == 0).unwrap_or(file.len());
    Some(String::from_utf8_lossy(&file[..end]).into_owned())
}
