//! Conformance of Baton's proxy-DHCP and TFTP answers to real PXE firmware: the client
//! side of the captures in `../shared/captures/` (iPXE in BIOS mode, iPXE as a UEFI
//! driver, OVMF's own EDK2 PXE stack; recorded against dnsmasq as proxy-DHCP + TFTP
//! server) is replayed, datagram for datagram, against a real `baton serve` on loopback,
//! and every answer is checked field by field against the PXE spec (2.1), RFC 2131/2132,
//! RFC 4578, RFC 2347-2349, RFC 7440 and what the firmware then needs.
//!
//! DHCP datagrams the clients sent to udp/67 go to Baton's `--dhcp-port`, those sent to
//! udp/4011 to its `--dhcp-pxe-port`, from a loopback socket (so answers come back by
//! unicast to that socket rather than by broadcast). TFTP read requests go to Baton's
//! TFTP port; the files they name are served from a TFTP root holding the very bytes
//! the reference server sent in the capture, so Baton's transfers are compared with the
//! reference byte for byte. Everything runs with `--capture`, and the pcap Baton writes
//! is read back at the end (with `baton::pcap::read_udp`, and with tshark: missing, that
//! part is skipped loudly, or fails in CI).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton::pcap::{read_udp, UdpRecord};
use serde_json::json;
use tempfile::TempDir;

use common::api::raw_get;
use common::api::Api;
use common::dhcp::{dhcp_request, discover};
use common::host::{Host, HostBuilder};
use common::require::{require, require_tshark};
use common::tftp::{ack, rrq, tftp_fetch_from, Answer};
use common::{eventually, pattern, run_with_timeout};

/// The client of all three captures.
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0xe2, 0x01];
const MAC_STR: &str = "52:54:00:77:e2:01";
/// The script Baton renders for [`MAC`].
const SCRIPT: &str = "ipxe/52-54-00-77-e2-01.ipxe";
/// A node owned by another host.
const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0xe2, 0x02];
const OTHER_MAC_STR: &str = "52:54:00:77:e2:02";
const OTHER_SCRIPT: &str = "ipxe/52-54-00-77-e2-02.ipxe";
/// A MAC no node has.
const UNKNOWN_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0xe2, 0x99];

/// The reference servers in the captures.
const REF_PROXY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const REF_DHCP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Where Baton listens here; it announces the address requests arrive on.
const SERVER_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long an answer may take on loopback.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Silence that counts as "no answer" once the server has counted the request.
const SILENCE: Duration = Duration::from_millis(300);

const CAPTURES: [&str; 3] = [
    "proxy-bios-marker.pcap",
    "proxy-uefi-ipxe-marker.pcap",
    "proxy-uefi-edk2-marker.pcap",
];

/// `../shared/captures` next to the checkout, or env `BATON_CAPTURES_DIR` (for a
/// checkout elsewhere, e.g. a git worktree).
fn captures_dir() -> PathBuf {
    std::env::var_os("BATON_CAPTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/captures"))
}

/// The captures, or `None` (after a SKIPPED line; a failure in CI) when absent.
fn load_captures() -> Option<Vec<(&'static str, Vec<UdpRecord>)>> {
    let mut out = Vec::new();
    for name in CAPTURES {
        let path = captures_dir().join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                require(Err(format!(
                    "capture {} not readable (set BATON_CAPTURES_DIR): {e}",
                    path.display()
                )));
                return None;
            }
        };
        let recs = read_udp(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name, recs));
    }
    Some(out)
}

// ---------------------------------------------------------------------------------
// BOOTP/DHCP, decoded here independently of the server's codec.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Bootp {
    op: u8,
    htype: u8,
    hlen: u8,
    hops: u8,
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: [u8; 16],
    sname: [u8; 64],
    file: [u8; 128],
    /// Options in wire order (pads dropped, end excluded).
    options: Vec<(u8, Vec<u8>)>,
    len: usize,
}

fn ip4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn parse_bootp(b: &[u8]) -> Result<Bootp, String> {
    if b.len() < 240 {
        return Err(format!(
            "{} bytes, shorter than BOOTP + magic cookie",
            b.len()
        ));
    }
    if b[236..240] != [99, 130, 83, 99] {
        return Err(format!("bad magic cookie {:?}", &b[236..240]));
    }
    let mut options = Vec::new();
    let mut i = 240;
    let mut ended = false;
    while i < b.len() {
        match b[i] {
            0 => i += 1,
            255 => {
                ended = true;
                if let Some(p) = b[i + 1..].iter().position(|&x| x != 0) {
                    return Err(format!(
                        "non-zero byte after the end option at {}",
                        i + 1 + p
                    ));
                }
                break;
            }
            code => {
                let len = *b
                    .get(i + 1)
                    .ok_or_else(|| format!("option {code} truncated"))?
                    as usize;
                let v = b
                    .get(i + 2..i + 2 + len)
                    .ok_or_else(|| format!("option {code} (length {len}) runs past the end"))?;
                options.push((code, v.to_vec()));
                i += 2 + len;
            }
        }
    }
    if !ended {
        return Err("no end option (255)".into());
    }
    Ok(Bootp {
        op: b[0],
        htype: b[1],
        hlen: b[2],
        hops: b[3],
        xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        flags: u16::from_be_bytes([b[10], b[11]]),
        ciaddr: ip4(&b[12..16]),
        yiaddr: ip4(&b[16..20]),
        siaddr: ip4(&b[20..24]),
        giaddr: ip4(&b[24..28]),
        chaddr: b[28..44].try_into().unwrap(),
        sname: b[44..108].try_into().unwrap(),
        file: b[108..236].try_into().unwrap(),
        options,
        len: b.len(),
    })
}

impl Bootp {
    fn opt(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    fn msg_type(&self) -> Option<u8> {
        self.opt(53).and_then(|v| v.first().copied())
    }

    fn vendor_class(&self) -> String {
        String::from_utf8_lossy(self.opt(60).unwrap_or_default()).into_owned()
    }

    fn is_pxe(&self) -> bool {
        self.vendor_class().starts_with("PXEClient")
    }

    /// iPXE announces itself with user class `iPXE` (77) and its own options (175).
    fn is_ipxe(&self) -> bool {
        self.opt(77)
            .is_some_and(|u| u.windows(4).any(|w| w == b"iPXE"))
            || self.opt(175).is_some()
    }

    fn arch(&self) -> Option<u16> {
        self.opt(93)
            .filter(|v| v.len() >= 2)
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
    }

    fn mac(&self) -> [u8; 6] {
        self.chaddr[..6].try_into().unwrap()
    }
}

/// A NUL-terminated BOOTP string field; `Err` when it has no NUL.
fn cstr(field: &[u8]) -> Result<String, String> {
    let end = field
        .iter()
        .position(|&b| b == 0)
        .ok_or("field not NUL-terminated")?;
    Ok(String::from_utf8_lossy(&field[..end]).into_owned())
}

/// PXE option 43 sub-options, in order; `Err` when malformed or not terminated by 255.
fn pxe_suboptions(v: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            0 => i += 1,
            255 => return Ok(out),
            code => {
                let len = *v.get(i + 1).ok_or("sub-option length missing")? as usize;
                let d = v
                    .get(i + 2..i + 2 + len)
                    .ok_or_else(|| format!("sub-option {code} runs past option 43"))?;
                out.push((code, d.to_vec()));
                i += 2 + len;
            }
        }
    }
    Err("option 43 not terminated by 255 (PXE spec 2.1, table 2-1)".into())
}

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;

/// Which of Baton's listeners a captured request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Dhcp,
    BootServer,
}

/// What a request must get.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// An answer of this DHCP message type naming this boot file.
    Answer(u8, String),
    /// Nothing; the reason Baton counts in `baton_dhcp_ignored_total`.
    Nothing(&'static str),
}

/// The answer the PXE spec and the node's profile call for, derived from the request
/// alone (not from the server's code).
fn want(port: Port, req: &Bootp, server_ip: Ipv4Addr) -> Want {
    if !req.is_pxe() && !req.is_ipxe() {
        return Want::Nothing("not_pxe");
    }
    let ty = match (port, req.msg_type()) {
        (Port::Dhcp, Some(DISCOVER)) => OFFER,
        (Port::Dhcp, Some(REQUEST)) if req.opt(54) == Some(&server_ip.octets()[..]) => ACK,
        (Port::Dhcp, Some(REQUEST)) => return Want::Nothing("other_server"),
        (Port::BootServer, Some(REQUEST)) => ACK,
        _ => return Want::Nothing("message_type"),
    };
    let file = if req.is_ipxe() {
        SCRIPT.to_string()
    } else {
        match req.arch() {
            Some(0) | None => "undionly.kpxe".into(),
            Some(7) | Some(9) => "ipxe.efi".into(),
            Some(a) => panic!("no expectation for client architecture {a}"),
        }
    };
    Want::Answer(ty, file)
}

/// Every field of `ans` (the answer to `req`) that breaks the spec or what the
/// firmware needs; empty when all is well.
fn answer_faults(
    raw: &[u8],
    req: &Bootp,
    ans: &Bootp,
    ty: u8,
    file: &str,
    server_ip: Ipv4Addr,
) -> Vec<String> {
    let mut f = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            f.push(what);
        }
    };
    check(ans.op == 2, format!("op {} (want 2, BOOTREPLY)", ans.op));
    check(
        ans.htype == 1 && ans.hlen == 6,
        format!("htype/hlen {}/{} (want 1/6)", ans.htype, ans.hlen),
    );
    check(ans.hops == 0, format!("hops {}", ans.hops));
    check(
        ans.xid == req.xid,
        format!("xid {:#010x} (request {:#010x})", ans.xid, req.xid),
    );
    check(
        ans.chaddr == req.chaddr,
        format!("chaddr {:02x?} (request {:02x?})", ans.chaddr, req.chaddr),
    );
    check(
        ans.yiaddr == Ipv4Addr::UNSPECIFIED,
        format!("yiaddr {} (a proxy never offers an address)", ans.yiaddr),
    );
    check(
        ans.ciaddr == Ipv4Addr::UNSPECIFIED || ans.ciaddr == req.ciaddr,
        format!("ciaddr {} (request {})", ans.ciaddr, req.ciaddr),
    );
    check(
        ans.giaddr == req.giaddr,
        format!("giaddr {} (request {})", ans.giaddr, req.giaddr),
    );
    check(
        ans.siaddr == server_ip,
        format!("siaddr {} (want the boot server, {server_ip})", ans.siaddr),
    );
    check(
        ans.flags & 0x8000 == req.flags & 0x8000,
        format!(
            "broadcast flag {:#06x} (request {:#06x})",
            ans.flags, req.flags
        ),
    );
    // Old PXE ROMs drop replies shorter than the BOOTP minimum; every client takes 576.
    let max = req
        .opt(57)
        .filter(|v| v.len() == 2)
        .map(|v| usize::from(u16::from_be_bytes([v[0], v[1]])))
        .unwrap_or(576)
        .max(576);
    check(
        (300..=max).contains(&ans.len),
        format!("length {} (want 300..={max})", ans.len),
    );
    // Message type, first (some PXE ROMs look only there).
    check(
        raw.get(240..243) == Some(&[53, 1, ty][..]),
        format!(
            "first option {:?}, want message type {ty} first",
            raw.get(240..243)
        ),
    );
    let mut counts: BTreeMap<u8, usize> = BTreeMap::new();
    for (c, _) in &ans.options {
        *counts.entry(*c).or_default() += 1;
    }
    for (c, n) in &counts {
        check(*n == 1, format!("option {c} appears {n} times"));
    }
    check(
        ans.msg_type() == Some(ty),
        format!("option 53 {:?} (want {ty})", ans.msg_type()),
    );
    check(
        ans.opt(54) == Some(&server_ip.octets()[..]),
        format!("option 54 {:?} (want {server_ip})", ans.opt(54)),
    );
    check(
        ans.opt(60) == Some(&b"PXEClient"[..]),
        format!(
            "option 60 {:?} (want \"PXEClient\")",
            ans.opt(60).map(String::from_utf8_lossy)
        ),
    );
    match req.opt(97) {
        Some(uuid) => check(
            ans.opt(97) == Some(uuid),
            format!(
                "option 97 {:02x?} (the client's UUID {uuid:02x?} must be echoed)",
                ans.opt(97)
            ),
        ),
        None => check(
            ans.opt(97).is_none(),
            "option 97 sent, but the client sent none".into(),
        ),
    }
    for c in [1u8, 3, 6, 50, 51, 58, 59] {
        check(
            ans.opt(c).is_none(),
            format!("option {c} present: address configuration is the DHCP server's job"),
        );
    }
    // The boot file, in the BOOTP field and in option 67 (firmware reads one or the other).
    match cstr(&ans.file) {
        Ok(name) => check(name == file, format!("file field {name:?} (want {file:?})")),
        Err(e) => check(false, format!("file field: {e}")),
    }
    let o67 = ans.opt(67).map(|v| {
        let v = v.strip_suffix(&[0]).unwrap_or(v);
        String::from_utf8_lossy(v).into_owned()
    });
    check(
        o67.as_deref() == Some(file),
        format!("option 67 {o67:?} (want {file:?})"),
    );
    match cstr(&ans.sname) {
        Ok(s) => check(
            s.is_empty() || s == server_ip.to_string(),
            format!("sname {s:?} (want empty or {server_ip})"),
        ),
        Err(e) => check(false, format!("sname: {e}")),
    }
    if let Some(v) = ans.opt(66) {
        check(
            v == server_ip.to_string().as_bytes(),
            format!(
                "option 66 {:?} (want {server_ip})",
                String::from_utf8_lossy(v)
            ),
        );
    }
    // Option 43: discovery control with bit 3 (boot the file named here, no menu, no
    // multicast discovery); the boot item the client asked for echoed.
    match ans.opt(43).map(pxe_suboptions) {
        None => check(false, "no option 43 (PXE vendor options)".into()),
        Some(Err(e)) => check(false, e),
        Some(Ok(subs)) => {
            let dc = subs.iter().find(|(c, _)| *c == 6).map(|(_, v)| v.clone());
            check(
                dc.as_deref()
                    .is_some_and(|v| v.len() == 1 && v[0] & 0x08 != 0),
                format!("option 43 discovery control (6) {dc:02x?}: want bit 3 (0x08) set"),
            );
            let asked = req
                .opt(43)
                .and_then(|v| pxe_suboptions(v).ok())
                .and_then(|s| s.into_iter().find(|(c, _)| *c == 71));
            if let Some((_, item)) = asked {
                let got = subs.iter().find(|(c, _)| *c == 71).map(|(_, v)| v.clone());
                check(
                    got.as_deref() == Some(&item[..]),
                    format!("option 43 boot item (71) {got:02x?}: want {item:02x?} echoed"),
                );
            }
        }
    }
    f
}

// ---------------------------------------------------------------------------------
// Datagram bookkeeping, for comparing with Baton's own capture.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Datagram {
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Traffic {
    /// What the test sent to Baton.
    to_server: Vec<Datagram>,
    /// What Baton sent to the test.
    from_server: Vec<Datagram>,
}

fn client_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket")
}

fn send(sock: &UdpSocket, to: SocketAddr, payload: &[u8], t: &mut Traffic) {
    assert!(to.ip().is_loopback(), "only loopback, not {to}");
    sock.send_to(payload, to)
        .unwrap_or_else(|e| panic!("send to {to}: {e}"));
    t.to_server.push(Datagram {
        src: sock.local_addr().unwrap(),
        dst: to,
        payload: payload.to_vec(),
    });
}

fn recv(sock: &UdpSocket, timeout: Duration, t: &mut Traffic) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 65_536];
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .unwrap();
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            t.from_server.push(Datagram {
                src: from,
                dst: sock.local_addr().unwrap(),
                payload: buf[..n].to_vec(),
            });
            Some((buf[..n].to_vec(), from))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("recv: {e}"),
    }
}

// ---------------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------------

struct Dhcp {
    baton: Host,
    dhcp: SocketAddr,
    pxe: SocketAddr,
}

/// Starts `b` with proxy-DHCP on two loopback ports and `--capture capture`.
fn start_with_dhcp(b: HostBuilder, capture: &Path) -> Dhcp {
    let baton = b
        .dhcp_loopback()
        .flag("--capture", capture.display())
        .start();
    Dhcp {
        dhcp: baton.dhcp(),
        pxe: baton.pxe(),
        baton,
    }
}

/// Enrolls `id` with `mac` and gives it a deploy profile (small artifacts).
fn enroll_deploy(api: &Api, id: &str, mac: &str, seed: u64) {
    api.post("/v1/nodes", json!({ "id": id, "macs": [mac] }))
        .expect(201);
    let kd = api.upload("vmlinuz", &pattern(40_000 + seed as usize, seed));
    let rd = api.upload("initrd.img", &pattern(90_000 + seed as usize, seed + 100));
    api.put(
        &format!("/v1/nodes/{id}/profile"),
        json!({ "kind": "deploy", "kernel": kd, "ramdisk": rd, "cmdline": "console=ttyS0" }),
    )
    .expect(200);
}

// ---------------------------------------------------------------------------------
// TFTP, decoded here (requests and ACKs are the harness's hand-made ones).
// ---------------------------------------------------------------------------------

fn opcode(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// NUL-separated strings after the opcode (RRQ: name, mode, options; OACK: options).
fn tftp_strings(b: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = b[2..]
        .split(|&x| x == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    if v.last().is_some_and(String::is_empty) {
        v.pop();
    }
    v
}

/// An RRQ's file name and options (names lowercased).
fn rrq_parts(b: &[u8]) -> (String, BTreeMap<String, String>) {
    let s = tftp_strings(b);
    let opts = s[2..]
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
        .collect();
    (s[0].clone(), opts)
}

/// An OACK's options, in order, with duplicate detection left to the caller.
fn oack_options(b: &[u8]) -> Vec<(String, String)> {
    tftp_strings(b)
        .chunks(2)
        .map(|c| {
            (
                c[0].to_ascii_lowercase(),
                c.get(1).cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// How a replayed read request ended.
#[derive(Debug)]
enum TftpEnd {
    Error {
        code: u16,
        message: String,
    },
    /// The client aborted after the OACK (size probe).
    Probe {
        oack: Vec<(String, String)>,
    },
    Done {
        oack: Option<Vec<(String, String)>>,
        data: Vec<u8>,
        data_packets: usize,
    },
}

/// Sends `rrq` and runs the transfer like the captured client: abort with `abort`
/// after the OACK when the client did, else download with an ACK per window.
fn tftp_replay(
    server: SocketAddr,
    rrq: &[u8],
    abort: Option<&[u8]>,
    t: &mut Traffic,
) -> Result<TftpEnd, String> {
    let sock = client_socket();
    send(&sock, server, rrq, t);
    let (first, tid) = recv(&sock, ANSWER_TIMEOUT, t).ok_or("no answer to the RRQ")?;
    if tid.ip() != server.ip() || tid.port() == server.port() {
        return Err(format!(
            "answer from {tid}: a transfer gets its own port on {} (RFC 1350 TIDs)",
            server.ip()
        ));
    }
    let (mut blksize, mut windowsize, mut oack) = (512usize, 1u64, None);
    let mut pending = None;
    match opcode(&first) {
        5 => {
            return Ok(TftpEnd::Error {
                code: u16::from_be_bytes([first[2], first[3]]),
                message: String::from_utf8_lossy(&first[4..])
                    .trim_end_matches('\0')
                    .to_string(),
            })
        }
        6 => {
            let o = oack_options(&first);
            if let Some(a) = abort {
                send(&sock, tid, a, t);
                if let Some((p, from)) = recv(&sock, SILENCE, t) {
                    return Err(format!(
                        "{from} sent opcode {} after the client aborted",
                        opcode(&p)
                    ));
                }
                return Ok(TftpEnd::Probe { oack: o });
            }
            for (k, v) in &o {
                match k.as_str() {
                    "blksize" => blksize = v.parse().map_err(|_| format!("blksize {v:?}"))?,
                    "windowsize" => {
                        windowsize = v.parse().map_err(|_| format!("windowsize {v:?}"))?
                    }
                    _ => {}
                }
            }
            oack = Some(o);
            send(&sock, tid, &ack(0), t);
        }
        3 => pending = Some(first),
        op => return Err(format!("opcode {op} in answer to an RRQ")),
    }
    let mut data = Vec::new();
    let mut next: u64 = 1;
    let mut data_packets = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = match pending.take() {
            Some(p) => p,
            None => {
                if Instant::now() >= deadline {
                    return Err(format!("transfer unfinished after 30 s at block {next}"));
                }
                let (p, from) = recv(&sock, ANSWER_TIMEOUT, t)
                    .ok_or_else(|| format!("silence waiting for block {next}"))?;
                if from != tid {
                    return Err(format!("packet from {from}, transfer is with {tid}"));
                }
                p
            }
        };
        match opcode(&p) {
            3 => {
                data_packets += 1;
                let block = u16::from_be_bytes([p[2], p[3]]);
                if u64::from(block) != next % 65_536 {
                    // A retransmitted block we already have.
                    continue;
                }
                let chunk = &p[4..];
                if chunk.len() > blksize {
                    return Err(format!(
                        "block {block}: {} bytes > blksize {blksize}",
                        chunk.len()
                    ));
                }
                data.extend_from_slice(chunk);
                let last = chunk.len() < blksize;
                if last || next.is_multiple_of(windowsize) {
                    send(&sock, tid, &ack(block), t);
                }
                if last {
                    return Ok(TftpEnd::Done {
                        oack,
                        data,
                        data_packets,
                    });
                }
                next += 1;
            }
            5 => {
                return Err(format!(
                    "ERROR {} {:?} at block {next}",
                    u16::from_be_bytes([p[2], p[3]]),
                    String::from_utf8_lossy(&p[4..])
                ))
            }
            op => return Err(format!("opcode {op} during the transfer")),
        }
    }
}

/// One read request of a capture, with what the reference server and client did.
#[derive(Debug)]
struct CapturedRrq {
    capture: &'static str,
    frame: usize,
    rrq: Vec<u8>,
    path: String,
    options: BTreeMap<String, String>,
    /// Reference answer: opcode, and the error code for an ERROR.
    ref_opcode: u16,
    ref_error: Option<u16>,
    /// The ERROR the client sent after the OACK (size probe), if any.
    client_abort: Option<Vec<u8>>,
    /// The bytes the reference server sent, when the transfer completed.
    ref_data: Option<Vec<u8>>,
    /// The reference OACK.
    ref_oack: Option<Vec<(String, String)>>,
}

/// The read requests of a capture and what happened to each.
fn captured_rrqs(capture: &'static str, recs: &[UdpRecord]) -> Vec<CapturedRrq> {
    let mut out = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        if r.dst.port() != 69 || r.payload.len() < 4 || opcode(&r.payload) != 1 {
            continue;
        }
        let client = r.src;
        let later = &recs[i + 1..];
        let Some(answer) = later.iter().find(|x| x.dst == client && x.src.port() != 69) else {
            panic!("{capture} frame {i}: no answer to the RRQ in the capture");
        };
        let tid = answer.src;
        assert_eq!(
            tid.ip(),
            REF_PROXY,
            "{capture} frame {i}: the reference answers"
        );
        let (path, options) = rrq_parts(&r.payload);
        let ref_opcode = opcode(&answer.payload);
        let client_next = later
            .iter()
            .find(|x| x.src == client && x.dst == tid)
            .map(|x| x.payload.clone());
        let client_abort = (ref_opcode == 6)
            .then_some(())
            .and(client_next.filter(|p| opcode(p) == 5));
        let mut blocks: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
        for x in later.iter().filter(|x| x.src == tid && x.dst == client) {
            if opcode(&x.payload) == 3 {
                let b = u16::from_be_bytes([x.payload[2], x.payload[3]]);
                blocks.entry(b).or_insert_with(|| x.payload[4..].to_vec());
            }
        }
        let ref_oack = (ref_opcode == 6).then(|| oack_options(&answer.payload));
        let blksize: usize = ref_oack
            .as_ref()
            .and_then(|o| o.iter().find(|(k, _)| k == "blksize"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(512);
        let complete = !blocks.is_empty()
            && blocks.keys().copied().eq(1..=blocks.len() as u16)
            && blocks.values().last().unwrap().len() < blksize;
        let ref_data = complete.then(|| blocks.values().flatten().copied().collect::<Vec<u8>>());
        out.push(CapturedRrq {
            capture,
            frame: i,
            path,
            options,
            ref_opcode,
            ref_error: (ref_opcode == 5)
                .then(|| u16::from_be_bytes([answer.payload[2], answer.payload[3]])),
            client_abort,
            ref_data,
            ref_oack,
            rrq: r.payload.clone(),
        });
    }
    out
}

// ---------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------

/// What one replayed DHCP request got, for the summary table.
struct DhcpRow {
    capture: &'static str,
    frame: usize,
    what: String,
    outcome: String,
}

/// Baton after the replay of every capture, DHCP then TFTP (all checked on the way).
struct Replayed {
    s: Dhcp,
    t: Traffic,
    capture_file: PathBuf,
    started: std::time::SystemTime,
    _tmp: TempDir,
}

/// Starts Baton (proxy-DHCP on loopback ports, `--capture`, node n1 = the captures'
/// MAC on a deploy profile, a TFTP root with the captured files) and replays the client
/// side of every capture against it; `None` when the captures are absent (skipped).
fn replay_everything() -> Option<Replayed> {
    let captures = load_captures()?;
    let started = std::time::SystemTime::now();
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("root");
    let capture_file = tmp.path().join("baton.pcap");

    // The TFTP root: every file a captured client downloaded, with the bytes the
    // reference server sent.
    let rrqs: Vec<CapturedRrq> = captures
        .iter()
        .flat_map(|(name, recs)| captured_rrqs(name, recs))
        .collect();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in &rrqs {
        if let Some(d) = &r.ref_data {
            if let Some(prev) = files.insert(r.path.clone(), d.clone()) {
                assert_eq!(
                    &prev, d,
                    "{} differs between captures; cannot serve both",
                    r.path
                );
            }
        }
    }
    for (p, d) in &files {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, d).unwrap();
    }
    // The sizes the issue names, as announced by the reference server.
    assert_eq!(files.get("bios/pxelinux.0").map(Vec::len), Some(42_430));
    assert_eq!(files.get("efi64/syslinux.efi").map(Vec::len), Some(171_456));

    let s = start_with_dhcp(
        HostBuilder::pxe_temp().host("h1").tftp_root(&root),
        &capture_file,
    );
    enroll_deploy(&s.baton.api, "n1", MAC_STR, 1);
    let files_of_n1 = s
        .baton
        .api
        .get("/v1/nodes/n1/files")
        .expect(200)
        .to_string();
    assert!(files_of_n1.contains(SCRIPT), "n1 serves {files_of_n1}");

    let mut t = Traffic::default();
    replay_dhcp(&captures, &s, &mut t);
    replay_tftp(&rrqs, &files, &s, &mut t);
    Some(Replayed {
        s,
        t,
        capture_file,
        started,
        _tmp: tmp,
    })
}

/// Every DHCP answer of Baton to the captured clients, field by field, and every TFTP
/// transfer they asked for, against the reference server.
#[test]
fn captured_pxe_clients_get_conformant_answers() {
    let Some(mut r) = replay_everything() else {
        return;
    };
    let status = r.s.baton.terminate(Duration::from_secs(15));
    assert!(status.success(), "baton serve exited with {status}");
}

/// `--capture`: after SIGTERM the file is a pcap holding every DHCP and TFTP datagram
/// Baton received and sent during the replay, readable by `baton::pcap` and tshark.
#[test]
fn capture_file_holds_every_dhcp_and_tftp_datagram() {
    let Some(mut r) = replay_everything() else {
        return;
    };
    let status = r.s.baton.terminate(Duration::from_secs(15));
    assert!(status.success(), "baton serve exited with {status}");
    if let Some(keep) = std::env::var_os("BATON_KEEP_CAPTURE") {
        std::fs::copy(&r.capture_file, &keep).expect("copy the capture to $BATON_KEEP_CAPTURE");
    }
    let bytes = std::fs::read(&r.capture_file).expect("the --capture file");
    let recs = read_udp(&bytes).expect("Baton's capture reads back as pcap");
    check_capture(&recs, &r.t, &r.s, r.started);
    tshark_check(&r.capture_file, &r.s, recs.len());
}

/// Replays every client DHCP datagram of every capture, in capture order, and checks
/// each answer (or the silence) field by field.
fn replay_dhcp(captures: &[(&'static str, Vec<UdpRecord>)], s: &Dhcp, t: &mut Traffic) {
    let mut rows = Vec::new();
    let mut faults = Vec::new();
    let mut want_answers: HashMap<u8, usize> = HashMap::new();
    let mut want_ignored: HashMap<&str, usize> = HashMap::new();
    let mut files_answered: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, recs) in captures {
        for (i, r) in recs.iter().enumerate() {
            let port = match r.dst.port() {
                67 => Port::Dhcp,
                4011 => Port::BootServer,
                _ => continue,
            };
            let req = parse_bootp(&r.payload)
                .unwrap_or_else(|e| panic!("{name} frame {i}: captured request: {e}"));
            if req.op != 1 {
                continue;
            }
            assert_eq!(req.mac(), MAC, "{name} frame {i}: client MAC");
            let w = want(port, &req, SERVER_IP);
            let to = if port == Port::Dhcp { s.dhcp } else { s.pxe };
            let what = format!(
                "{} to {} ({}, arch {:?}{}{}) from {}:{}",
                match req.msg_type() {
                    Some(DISCOVER) => "DISCOVER",
                    Some(REQUEST) => "REQUEST",
                    _ => "other",
                },
                if port == Port::Dhcp { "67" } else { "4011" },
                if req.vendor_class().is_empty() {
                    "no option 60".to_string()
                } else {
                    req.vendor_class()
                },
                req.arch(),
                if req.is_ipxe() { ", iPXE" } else { "" },
                match req.opt(54) {
                    Some(v) if v.len() == 4 => format!(", server id {}", ip4(v)),
                    _ => String::new(),
                },
                r.src.ip(),
                r.src.port(),
            );
            let sock = client_socket();
            match &w {
                Want::Answer(ty, file) => {
                    send(&sock, to, &r.payload, t);
                    let Some((raw, from)) = recv(&sock, ANSWER_TIMEOUT, t) else {
                        faults.push(format!("{name} frame {i}: {what}: no answer"));
                        continue;
                    };
                    let mut f = match parse_bootp(&raw) {
                        Ok(ans) => answer_faults(&raw, &req, &ans, *ty, file, SERVER_IP),
                        Err(e) => vec![format!("undecodable answer: {e}")],
                    };
                    // The answer comes from the port the request went to (EDK2 sends
                    // its 4011 request from 4011 and takes the answer only from 4011).
                    if from != to {
                        f.push(format!("answer from {from}, want {to}"));
                    }
                    if let Some((more, from)) = recv(&sock, SILENCE, t) {
                        f.push(format!(
                            "a second answer ({} bytes) from {from}",
                            more.len()
                        ));
                    }
                    for x in &f {
                        faults.push(format!("{name} frame {i}: {what}: {x}"));
                    }
                    *want_answers.entry(*ty).or_default() += 1;
                    files_answered.entry(name).or_default().push(file.clone());
                    rows.push(DhcpRow {
                        capture: name,
                        frame: i,
                        what,
                        outcome: format!(
                            "{} boot file {file}{}",
                            if *ty == OFFER { "OFFER" } else { "ACK" },
                            if f.is_empty() { "" } else { " (FAULTS)" }
                        ),
                    });
                }
                Want::Nothing(reason) => {
                    if *reason == "other_server" {
                        assert_eq!(req.opt(54), Some(&REF_DHCP.octets()[..]), "{what}");
                    }
                    let metric = format!("baton_dhcp_ignored_total{{reason=\"{reason}\"}}");
                    let before = s.baton.api.metric_or_zero(&metric);
                    send(&sock, to, &r.payload, t);
                    // Wait until Baton has decided, then make sure nothing came.
                    let counted = eventually(ANSWER_TIMEOUT, || {
                        s.baton.api.metric_or_zero(&metric) > before
                    });
                    if !counted {
                        faults.push(format!(
                            "{name} frame {i}: {what}: not counted as ignored ({reason})"
                        ));
                    }
                    if let Some((raw, from)) = recv(&sock, SILENCE, t) {
                        faults.push(format!(
                            "{name} frame {i}: {what}: answered ({} bytes from {from}), want no answer",
                            raw.len()
                        ));
                    }
                    *want_ignored.entry(reason).or_default() += 1;
                    rows.push(DhcpRow {
                        capture: name,
                        frame: i,
                        what,
                        outcome: format!("no answer ({reason})"),
                    });
                }
            }
        }
    }
    println!("\nDHCP replay (Baton at {SERVER_IP}, node n1 = {MAC_STR}, deploy profile):");
    for r in &rows {
        println!(
            "  {:<30} #{:<4} {:<95} -> {}",
            r.capture, r.frame, r.what, r.outcome
        );
    }
    assert!(
        faults.is_empty(),
        "{} fault(s) in Baton's DHCP answers:\n  {}",
        faults.len(),
        faults.join("\n  ")
    );
    // Each capture exercised what it is there for.
    let bios = &files_answered["proxy-bios-marker.pcap"];
    assert!(
        bios.len() >= 2 && bios.iter().all(|f| f == SCRIPT),
        "{bios:?}"
    );
    let uefi_ipxe = &files_answered["proxy-uefi-ipxe-marker.pcap"];
    assert!(
        uefi_ipxe.len() >= 3 && uefi_ipxe.iter().all(|f| f == SCRIPT),
        "{uefi_ipxe:?}"
    );
    let edk2 = &files_answered["proxy-uefi-edk2-marker.pcap"];
    assert_eq!(edk2, &vec!["ipxe.efi".to_string(); 2]);
    assert_eq!(
        want_ignored.get("other_server"),
        Some(&3),
        "{want_ignored:?}"
    );
    assert_eq!(want_ignored.get("not_pxe"), Some(&4), "{want_ignored:?}");
    let m = s.baton.api.metrics();
    for (ty, label) in [(OFFER, "offer"), (ACK, "ack")] {
        let name = format!("baton_dhcp_answered_total{{type=\"{label}\"}}");
        let got = common::api::metric_value(&m, &name).unwrap_or(0.0);
        assert_eq!(got as usize, want_answers[&ty], "{name}");
    }
}

/// Replays every read request of every capture: Baton's answers against the reference
/// server's, the transfers byte for byte, the size probe and the metrics.
fn replay_tftp(rrqs: &[CapturedRrq], files: &BTreeMap<String, Vec<u8>>, s: &Dhcp, t: &mut Traffic) {
    let mut tftp_faults = Vec::new();
    let (mut probes, mut completed, mut not_found) = (0, 0, 0);
    println!("\nTFTP replay (Baton at {}):", s.baton.tftp());
    for r in rrqs {
        let what = format!("{} #{} RRQ {} {:?}", r.capture, r.frame, r.path, r.options);
        let end = tftp_replay(s.baton.tftp(), &r.rrq, r.client_abort.as_deref(), t);
        let mut f = Vec::new();
        let summary = match (&end, r.ref_opcode) {
            (Ok(TftpEnd::Error { code, message }), 5) => {
                if Some(*code) != r.ref_error {
                    f.push(format!("ERROR {code}, reference ERROR {:?}", r.ref_error));
                }
                if message.contains('/') && message.contains("root") {
                    f.push(format!("error message reveals server paths: {message:?}"));
                }
                if *code == 1 {
                    not_found += 1;
                }
                format!("ERROR {code} {message:?}")
            }
            (Ok(TftpEnd::Probe { oack }), 6) => {
                probes += 1;
                f.extend(oack_faults(
                    oack,
                    &r.options,
                    files.get(&r.path).map(Vec::len),
                ));
                f.extend(same_as_reference(oack, r.ref_oack.as_deref()));
                format!("OACK {oack:?}, client ERROR 8 (size probe)")
            }
            (
                Ok(TftpEnd::Done {
                    oack,
                    data,
                    data_packets,
                }),
                6 | 3,
            ) => {
                completed += 1;
                match oack {
                    Some(o) => {
                        f.extend(oack_faults(o, &r.options, Some(data.len())));
                        f.extend(same_as_reference(o, r.ref_oack.as_deref()));
                    }
                    None if !r.options.is_empty() => {
                        f.push("no OACK to a request with options".into())
                    }
                    None => {}
                }
                match &r.ref_data {
                    Some(want) if want == data => {}
                    Some(want) => f.push(format!(
                        "{} bytes served, reference {} bytes, differ",
                        data.len(),
                        want.len()
                    )),
                    None => f.push("reference transfer incomplete".into()),
                }
                format!(
                    "OACK {:?}, {} bytes in {data_packets} DATA packets",
                    oack.as_deref().unwrap_or_default(),
                    data.len()
                )
            }
            (Ok(other), op) => {
                f.push(format!("{other:?}, but the reference answered opcode {op}"));
                "MISMATCH".into()
            }
            (Err(e), _) => {
                f.push(e.clone());
                "FAILED".into()
            }
        };
        println!("  {what:<100} -> {summary}");
        for x in f {
            tftp_faults.push(format!("{what}: {x}"));
        }
    }
    assert!(
        tftp_faults.is_empty(),
        "{} fault(s) in Baton's TFTP answers:\n  {}",
        tftp_faults.len(),
        tftp_faults.join("\n  ")
    );
    // As many probes, downloads and misses as the reference server saw.
    let ref_probes = rrqs.iter().filter(|r| r.client_abort.is_some()).count();
    let ref_done = rrqs
        .iter()
        .filter(|r| r.ref_data.is_some() && r.client_abort.is_none())
        .count();
    let ref_missing = rrqs.iter().filter(|r| r.ref_error == Some(1)).count();
    assert_eq!(
        (probes, completed, not_found),
        (ref_probes, ref_done, ref_missing),
        "(size probes, downloads, not found) differ from the reference"
    );
    assert_eq!(probes, 1, "the EDK2 capture has one size probe");
    // The probe counts as a size probe, not as a failed transfer.
    let ok = eventually(Duration::from_secs(5), || {
        let m = s.baton.api.metrics();
        let v = |n: &str| common::api::metric_value(&m, n).unwrap_or(0.0) as usize;
        v("baton_tftp_size_probes_total") == probes
            && v("baton_tftp_transfers_completed_total") == completed
            && v("baton_tftp_refused_total{reason=\"not_found\"}") == not_found
    });
    let m = s.baton.api.metrics();
    assert!(ok, "TFTP metrics do not add up:\n{m}");
    assert!(
        !m.contains("baton_tftp_transfers_failed_total{"),
        "a transfer counted as failed:\n{m}"
    );
    let ignored = m
        .lines()
        .filter(|l| l.starts_with("baton_tftp_options_ignored_total{"))
        .collect::<Vec<_>>();
    assert!(
        ignored.is_empty(),
        "options of real firmware ignored: {ignored:?}"
    );
}

/// OACK faults: every option echoed only if asked, with an acceptable value.
fn oack_faults(
    oack: &[(String, String)],
    asked: &BTreeMap<String, String>,
    size: Option<usize>,
) -> Vec<String> {
    let mut f = Vec::new();
    let mut seen = BTreeMap::new();
    for (k, v) in oack {
        if seen.insert(k.clone(), v.clone()).is_some() {
            f.push(format!("OACK option {k} twice"));
        }
        let Some(a) = asked.get(k) else {
            f.push(format!(
                "OACK has {k}={v}, which the client did not ask for (RFC 2347)"
            ));
            continue;
        };
        let (n, an): (u64, u64) = match (v.parse(), a.parse()) {
            (Ok(n), Ok(an)) => (n, an),
            _ => {
                f.push(format!("OACK {k}={v:?} (asked {a:?}) is not a number"));
                continue;
            }
        };
        match k.as_str() {
            // On loopback nothing caps the block size below what firmware asks.
            "blksize" if n != an => f.push(format!("blksize {n}, asked {an}")),
            "tsize" if Some(n) != size.map(|s| s as u64) => {
                f.push(format!("tsize {n}, file has {size:?} bytes"))
            }
            "windowsize" if n != an => f.push(format!("windowsize {n}, asked {an}")),
            _ => {}
        }
    }
    for k in ["blksize", "tsize", "windowsize"] {
        if asked.contains_key(k) && !seen.contains_key(k) {
            f.push(format!("{k} asked, not in the OACK"));
        }
    }
    f
}

/// Options the reference server accepted must be accepted alike (same values).
fn same_as_reference(
    oack: &[(String, String)],
    reference: Option<&[(String, String)]>,
) -> Vec<String> {
    reference
        .unwrap_or_default()
        .iter()
        .filter(|r| !oack.contains(r))
        .map(|(k, v)| format!("reference OACK has {k}={v}, Baton's {oack:?}"))
        .collect()
}

/// Every datagram the test exchanged with Baton is in Baton's capture, with the same
/// addresses; nothing else is, apart from retransmissions.
fn check_capture(recs: &[UdpRecord], t: &Traffic, s: &Dhcp, since: std::time::SystemTime) {
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .saturating_sub(Duration::from_secs(1));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + Duration::from_secs(1);
    let mut pool: HashMap<Datagram, usize> = HashMap::new();
    for r in recs {
        assert!(
            r.ts >= since && r.ts <= now,
            "capture timestamp {:?} outside the test",
            r.ts
        );
        *pool
            .entry(Datagram {
                src: r.src,
                dst: r.dst,
                payload: r.payload.clone(),
            })
            .or_default() += 1;
    }
    // Missing datagrams by kind: (count, first example).
    let mut missing: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (dir, list) in [("received", &t.to_server), ("sent", &t.from_server)] {
        for d in list.iter() {
            match pool.get_mut(d) {
                Some(n) if *n > 0 => *n -= 1,
                _ => {
                    let dhcp = [d.src, d.dst].iter().any(|a| *a == s.dhcp || *a == s.pxe);
                    let kind = if dhcp {
                        format!("DHCP datagram {dir} by Baton")
                    } else {
                        let op = match opcode(&d.payload) {
                            1 => "RRQ",
                            3 => "DATA",
                            4 => "ACK",
                            5 => "ERROR",
                            6 => "OACK",
                            _ => "other",
                        };
                        format!("TFTP {op} {dir} by Baton")
                    };
                    let e = missing.entry(kind).or_insert_with(|| {
                        (
                            0,
                            format!(
                                "{} -> {}, {} bytes, starts {:02x?}",
                                d.src,
                                d.dst,
                                d.payload.len(),
                                &d.payload[..d.payload.len().min(8)]
                            ),
                        )
                    });
                    e.0 += 1;
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "datagrams missing from Baton's --capture file ({} records):\n  {}",
        recs.len(),
        missing
            .iter()
            .map(|(k, (n, e))| format!("{n} x {k} (e.g. {e})"))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    // Leftovers may only be TFTP packets Baton sent again.
    let extra: Vec<_> = pool
        .iter()
        .filter(|(d, n)| **n > 0 && !(d.src.ip() == s.baton.tftp().ip() && opcode(&d.payload) == 3))
        .map(|(d, n)| format!("{n} x {} -> {} {} bytes", d.src, d.dst, d.payload.len()))
        .collect();
    assert!(
        extra.is_empty(),
        "capture has datagrams the test never exchanged: {extra:?}"
    );
    let count = |f: &dyn Fn(&UdpRecord) -> bool| recs.iter().filter(|r| f(r)).count();
    let dhcp_in = count(&|r| r.dst == s.dhcp || r.dst == s.pxe);
    let dhcp_out = count(&|r| r.src == s.dhcp || r.src == s.pxe);
    let rrq = count(&|r| r.dst == s.baton.tftp());
    let tftp_data = count(&|r| r.src.ip() == s.baton.tftp().ip() && opcode(&r.payload) == 3);
    println!(
        "\ncapture: {} records: {dhcp_in} DHCP requests, {dhcp_out} DHCP answers, {rrq} TFTP \
         requests, {tftp_data} TFTP DATA",
        recs.len()
    );
    let sent = |f: &dyn Fn(&Datagram) -> bool| t.to_server.iter().filter(|d| f(d)).count();
    let got = |f: &dyn Fn(&Datagram) -> bool| t.from_server.iter().filter(|d| f(d)).count();
    assert_eq!(dhcp_in, sent(&|d| d.dst == s.dhcp || d.dst == s.pxe));
    assert_eq!(dhcp_out, got(&|d| d.src == s.dhcp || d.src == s.pxe));
    assert_eq!(rrq, sent(&|d| d.dst == s.baton.tftp()));
    assert!(tftp_data >= got(&|d| d.src.ip() == s.baton.tftp().ip() && opcode(&d.payload) == 3));
    assert!(dhcp_in > 0 && dhcp_out > 0 && rrq > 0 && tftp_data > 0);
}

/// tshark reads Baton's capture: every frame is IPv4/UDP with good checksums, the DHCP
/// and TFTP frames dissect as such. Needs tshark (see [`require_tshark`]).
fn tshark_check(file: &Path, s: &Dhcp, records: usize) {
    if !require_tshark() {
        return;
    }
    let out = run_with_timeout(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args([
                "-o",
                "ip.check_checksum:TRUE",
                "-o",
                "udp.check_checksum:TRUE",
            ])
            .args(["-d", &format!("udp.port=={},dhcp", s.dhcp.port())])
            .args(["-d", &format!("udp.port=={},dhcp", s.pxe.port())])
            .args(["-d", &format!("udp.port=={},tftp", s.baton.tftp().port())])
            .args(["-T", "fields", "-E", "separator=|"])
            .args([
                "-e",
                "frame.protocols",
                "-e",
                "ip.checksum.status",
                "-e",
                "udp.checksum.status",
                "-e",
                "dhcp.option.dhcp",
                "-e",
                "tftp.opcode",
                "-e",
                "_ws.malformed",
            ]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "tshark -r {} failed: {}",
        file.display(),
        out.stderr
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let (mut dhcp, mut tftp) = (BTreeMap::new(), BTreeMap::new());
    for (i, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split('|').collect();
        assert_eq!(f.len(), 6, "tshark line {l:?}");
        assert!(f[0].starts_with("raw:ip:udp"), "frame {}: {}", i + 1, f[0]);
        // 1 = good (2 would be unverified).
        assert_eq!(f[1], "1", "frame {}: IP checksum status {}", i + 1, f[1]);
        assert_eq!(f[2], "1", "frame {}: UDP checksum status {}", i + 1, f[2]);
        assert!(f[5].is_empty(), "frame {}: malformed: {l}", i + 1);
        if !f[3].is_empty() {
            *dhcp.entry(f[3].to_string()).or_insert(0) += 1;
        }
        if !f[4].is_empty() {
            *tftp.entry(f[4].to_string()).or_insert(0) += 1;
        }
    }
    println!(
        "tshark: {} frames; DHCP message types {dhcp:?}; TFTP opcodes {tftp:?}",
        lines.len()
    );
    assert_eq!(
        lines.len(),
        records,
        "tshark and baton::pcap count the frames alike"
    );
    for (ty, what) in [
        ("1", "DISCOVER"),
        ("2", "OFFER"),
        ("3", "REQUEST"),
        ("5", "ACK"),
    ] {
        assert!(
            dhcp.contains_key(ty),
            "tshark sees no DHCP {what}: {dhcp:?}"
        );
    }
    for (op, what) in [
        ("1", "RRQ"),
        ("3", "DATA"),
        ("4", "ACK"),
        ("5", "ERROR"),
        ("6", "OACK"),
    ] {
        assert!(
            tftp.contains_key(op),
            "tshark sees no TFTP {what}: {tftp:?}"
        );
    }
}

/// A captured request with its client MAC replaced (chaddr and option 61).
fn with_mac(payload: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let mut p = payload.to_vec();
    p[28..34].copy_from_slice(&mac);
    let mut i = 240;
    while i + 1 < p.len() {
        match p[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = usize::from(p[i + 1]);
                if code == 61 && len == 7 && p[i + 2] == 1 {
                    p[i + 3..i + 9].copy_from_slice(&mac);
                }
                i += 2 + len;
            }
        }
    }
    p
}

#[test]
fn node_owned_by_another_host_gets_no_offer_and_no_files() {
    let Some(captures) = load_captures() else {
        return;
    };
    let data = TempDir::new().unwrap();
    let tmp = TempDir::new().unwrap();
    // Host "a" enrolls n2 (and so owns it), then stops. Long leases: "a" must not be
    // taken for dead (and n2 taken over by "b") while the test runs.
    const LEASES: &str = "[ownership]\nlease_interval_ms = 5000\nlease_ttl_ms = 120000\n";
    let mut a = HostBuilder::pxe(data.path())
        .host("a")
        .no_dhcp()
        .config(LEASES)
        .start();
    enroll_deploy(&a.api, "n2", OTHER_MAC_STR, 2);
    assert!(a.terminate(Duration::from_secs(15)).success());
    // Host "b" starts on the same store, with proxy-DHCP, and enrolls n1.
    let s = start_with_dhcp(
        HostBuilder::pxe(data.path()).host("b").config(LEASES),
        &tmp.path().join("b.pcap"),
    );
    enroll_deploy(&s.baton.api, "n1", MAC_STR, 1);
    let n2 = s.baton.api.get("/v1/nodes/n2").expect(200);
    assert_eq!(n2["owner"], "a", "{n2}");

    // The PXE requests of every capture (DISCOVERs to 67, REQUESTs to 4011).
    let mut pxe_requests = Vec::new();
    for (name, recs) in &captures {
        for (i, r) in recs.iter().enumerate() {
            let Ok(req) = parse_bootp(&r.payload) else {
                continue;
            };
            let port = match (r.dst.port(), req.msg_type()) {
                (67, Some(DISCOVER)) => Port::Dhcp,
                (4011, Some(REQUEST)) => Port::BootServer,
                _ => continue,
            };
            if req.op == 1 && (req.is_pxe() || req.is_ipxe()) {
                pxe_requests.push((*name, i, port, r.payload.clone()));
            }
        }
    }
    assert!(pxe_requests.len() >= 7, "{}", pxe_requests.len());
    let mut t = Traffic::default();
    for (mac, reason) in [
        (OTHER_MAC, Some("not_owner")),
        (UNKNOWN_MAC, Some("unknown_mac")),
        (MAC, None),
    ] {
        for (name, i, port, payload) in &pxe_requests {
            let to = if *port == Port::Dhcp { s.dhcp } else { s.pxe };
            let sock = client_socket();
            let p = with_mac(payload, mac);
            match reason {
                Some(reason) => {
                    let metric = format!("baton_dhcp_ignored_total{{reason=\"{reason}\"}}");
                    let before = s.baton.api.metric_or_zero(&metric);
                    send(&sock, to, &p, &mut t);
                    assert!(
                        eventually(ANSWER_TIMEOUT, || s.baton.api.metric_or_zero(&metric)
                            > before),
                        "{name} frame {i} with MAC {mac:02x?}: not counted as {reason}"
                    );
                    if let Some((raw, from)) = recv(&sock, SILENCE, &mut t) {
                        panic!(
                            "{name} frame {i} with MAC {mac:02x?} ({reason}): answered with {} bytes from {from}",
                            raw.len()
                        );
                    }
                }
                None => {
                    // Control: the node this host owns is answered.
                    send(&sock, to, &p, &mut t);
                    let (raw, _) = recv(&sock, ANSWER_TIMEOUT, &mut t)
                        .unwrap_or_else(|| panic!("{name} frame {i}: n1 not answered"));
                    let ans = parse_bootp(&raw).unwrap();
                    assert!(!cstr(&ans.file).unwrap().is_empty(), "{name} frame {i}");
                }
            }
        }
    }
    let line = s
        .baton
        .wait_for_log(
            &["pxe request not answered", "not_owner"],
            Duration::from_secs(5),
        )
        .expect("a log line for the other host's node");
    assert!(
        line.contains("n2") && line.contains(OTHER_MAC_STR),
        "{line}"
    );

    // Its boot files are refused over TFTP (access violation), the owned node's served.
    let n2_files = n2["files"].as_array().expect("files of n2").clone();
    let mut paths: Vec<String> = n2_files
        .iter()
        .filter_map(|f| f["path"].as_str().map(str::to_string))
        .collect();
    assert!(paths.iter().any(|p| p == OTHER_SCRIPT), "{paths:?}");
    paths.sort();
    for p in &paths {
        let rrq = rrq(p, &[("blksize", "1432"), ("tsize", "0")]);
        match tftp_replay(s.baton.tftp(), &rrq, None, &mut t) {
            Ok(TftpEnd::Error { code, message }) => {
                assert_eq!(
                    code, 2,
                    "{p}: ERROR {code} {message:?}, want 2 (access violation)"
                )
            }
            other => panic!("{p} of n2 (owned by a) over TFTP from b: {other:?}"),
        }
    }
    let refused = s
        .baton
        .api
        .metric_or_zero("baton_tftp_refused_total{reason=\"not_owner\"}");
    assert_eq!(refused as usize, paths.len());
    match tftp_replay(s.baton.tftp(), &rrq(SCRIPT, &[]), None, &mut t) {
        Ok(TftpEnd::Done { data, .. }) => {
            let text = String::from_utf8_lossy(&data);
            assert!(text.starts_with("#!ipxe"), "{text}");
        }
        other => panic!("{SCRIPT} of n1 over TFTP: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Node files go only to their node (`node_files = "bound"`, the PXE builders' mode).
// ---------------------------------------------------------------------------------

/// A TFTP read of `path` from `local` (a client address of its own): `Ok(the file)` or
/// `Err(error code)`.
fn tftp_from(local: Ipv4Addr, server: SocketAddr, path: &str) -> Result<Vec<u8>, u16> {
    match tftp_fetch_from(local, server, path, &[], ANSWER_TIMEOUT, None, None) {
        Answer::Data(d) => Ok(d),
        Answer::Error(code, _) => Err(code),
        Answer::Silent(why) => panic!("TFTP {path} from {local}: {why}"),
    }
}

/// Status of an HTTP GET of `path` from `local`.
fn http_status_from(local: Ipv4Addr, server: SocketAddr, path: &str) -> u16 {
    raw_get(Some(local), server, path).0
}

#[test]
fn node_files_go_only_to_the_node_that_booted() {
    /// The address server n1's REQUEST names (none runs: the proxy overhears it).
    const ADDRESS_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 254);
    let dir = TempDir::new().unwrap();
    let s = start_with_dhcp(
        HostBuilder::pxe_temp().host("h1"),
        &dir.path().join("c.pcap"),
    );
    enroll_deploy(&s.baton.api, "n1", MAC_STR, 1);
    enroll_deploy(&s.baton.api, "n2", OTHER_MAC_STR, 2);
    let tftp = s.baton.tftp();
    let http = s.baton.http();
    let cfg1 = "pxelinux.cfg/01-52-54-00-77-e2-01";
    let cfg2 = "pxelinux.cfg/01-52-54-00-77-e2-02";
    let stranger = Ipv4Addr::new(127, 0, 0, 5);
    let node1 = Ipv4Addr::new(127, 0, 0, 9);
    let node2 = Ipv4Addr::new(127, 0, 0, 21);

    // Before any PXE exchange: node files are refused to everyone, shared files are not.
    assert_eq!(tftp_from(stranger, tftp, cfg1), Err(2));
    assert_eq!(tftp_from(stranger, tftp, "nodes/n1/kernel"), Err(2));
    assert_eq!(
        http_status_from(stranger, http, "/boot/n1/nodes/n1/kernel"),
        403
    );
    assert_eq!(http_status_from(stranger, http, "/nodes/n1/kernel"), 403);
    assert!(
        tftp_from(stranger, tftp, "boot.ipxe").is_ok(),
        "shared files stay open"
    );

    // n1's PXE exchange: DISCOVER (answered), then its REQUEST to the address server
    // naming the address it takes. The proxy overhears it and binds the address.
    let c = UdpSocket::bind((node1, 0)).unwrap();
    c.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    c.send_to(&discover(MAC, 0x1111), s.dhcp).unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = c.recv_from(&mut buf).expect("an offer for n1");
    assert_eq!(buf[0], 2, "a BOOTREPLY");
    assert!(n > 240);
    c.send_to(&dhcp_request(MAC, 0x1111, node1, ADDRESS_SERVER), s.dhcp)
        .unwrap();
    assert!(eventually(ANSWER_TIMEOUT, || tftp_from(node1, tftp, cfg1).is_ok()));
    assert!(tftp_from(node1, tftp, "nodes/n1/kernel").is_ok());
    assert_eq!(
        http_status_from(node1, http, "/boot/n1/nodes/n1/kernel"),
        200
    );
    assert_eq!(http_status_from(node1, http, "/nodes/n1/kernel"), 200);
    // Still nobody else's, and not n2's files either.
    assert_eq!(tftp_from(stranger, tftp, "nodes/n1/kernel"), Err(2));
    assert_eq!(tftp_from(node1, tftp, "nodes/n2/kernel"), Err(2));

    // n2's firmware shows no address to the proxy (its REQUEST went unseen), but right
    // after its DHCP answer it asks for its MAC-named config: that binds its address.
    let c2 = UdpSocket::bind((node2, 0)).unwrap();
    c2.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    c2.send_to(&discover(OTHER_MAC, 0x2222), s.dhcp).unwrap();
    c2.recv_from(&mut buf).expect("an offer for n2");
    assert!(tftp_from(node2, tftp, cfg2).is_ok());
    assert!(tftp_from(node2, tftp, "nodes/n2/kernel").is_ok());
    assert_eq!(tftp_from(stranger, tftp, "nodes/n2/kernel"), Err(2));
    // Another node's MAC-named config does not rebind an address already bound.
    assert_eq!(tftp_from(node2, tftp, cfg1), Err(2));

    let refused = s
        .baton
        .api
        .metric_or_zero("baton_tftp_refused_total{reason=\"wrong_client\"}");
    assert!(refused >= 5.0, "refusals counted by reason: {refused}");

    // `baton node show` explains who gets the files and what was refused.
    let v = s.baton.api.get("/v1/nodes/n1").expect(200);
    assert_eq!(v["access"]["mode"], "bound", "{v}");
    assert_eq!(v["access"]["addresses"], json!(["127.0.0.9"]), "{v}");
    assert!(v["access"]["refused"].as_u64().unwrap_or(0) >= 2, "{v}");
    assert_eq!(
        v["access"]["last_refused"][0], "127.0.0.21",
        "n2 asked for n1's config last: {v}"
    );
    let out = s.baton.api.cli(&["node", "show", "n1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("its own addresses: 127.0.0.9") && text.contains("from other addresses"),
        "node show: {text}"
    );
}
