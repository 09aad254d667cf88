//! TFTP from the client side, for every test and bench: hand-made datagrams ([`rrq`],
//! [`ack`], [`parse_error`]), a raw peer on a blocking UDP socket ([`Peer`]), one read
//! client that runs a whole transfer and counts what arrives ([`fetch`], with a lockstep
//! probe form [`tftp_fetch`]), and the real tftp-hpa client ([`tftp_hpa`]).
//!
//! Replies are parsed with `baton::wire::tftp`. Peers send only to loopback, or from a
//! thread inside a network namespace a test created.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use baton::wire::tftp::{emit_error, AcceptedOptions, ErrorCode, Packet};

use super::child::run_bounded;
use super::netns::{command, in_private_netns};

/// How long to wait for a reply that must come.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long silence must last to count as "no reply".
pub const SILENCE: Duration = Duration::from_millis(300);
/// Deadline of one tftp-hpa run in the API and cluster tests.
pub const TFTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one tftp-hpa run in the ownership tests (several hosts, short leases).
pub const TFTP_HPA_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------
// Datagrams.
// ---------------------------------------------------------------------------------

/// A request datagram with raw options (so out-of-range values can be sent).
pub fn request(opcode: u16, name: &[u8], mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut v = opcode.to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.push(0);
    v.extend_from_slice(mode.as_bytes());
    v.push(0);
    for (k, val) in opts {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// An octet-mode RRQ for `name` with `opts`.
pub fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    request(1, name.as_bytes(), "octet", opts)
}

/// An ACK datagram (made by hand, like the requests: not with the codec under test).
pub fn ack(block: u16) -> Vec<u8> {
    let mut b = vec![0, 4];
    b.extend_from_slice(&block.to_be_bytes());
    b
}

/// Code and message of an ERROR datagram (read by hand, not with the codec under test).
pub fn parse_error(p: &[u8]) -> Option<(u16, String)> {
    if p.len() < 4 || p[..2] != [0, 5] {
        return None;
    }
    let msg = p[4..].split(|&b| b == 0).next().unwrap_or_default();
    Some((
        u16::from_be_bytes([p[2], p[3]]),
        String::from_utf8_lossy(msg).into_owned(),
    ))
}

/// A datagram from the server, parsed and owned.
#[derive(Clone, PartialEq, Eq)]
pub enum Reply {
    /// DATA.
    Data {
        /// Wire block number.
        block: u16,
        /// Payload.
        data: Vec<u8>,
    },
    /// ACK (a server never sends one to a reader).
    Ack(u16),
    /// OACK.
    Oack(AcceptedOptions),
    /// ERROR.
    Error {
        /// Error code as on the wire.
        code: u16,
        /// Message.
        message: String,
    },
    /// A request, or anything that does not parse.
    Other(Vec<u8>),
}

impl Reply {
    /// Parses a datagram.
    pub fn parse(b: &[u8]) -> Reply {
        match Packet::parse(b) {
            Ok(Packet::Data { block, data }) => Reply::Data {
                block,
                data: data.to_vec(),
            },
            Ok(Packet::Ack { block }) => Reply::Ack(block),
            Ok(Packet::Oack(o)) => Reply::Oack(o),
            Ok(Packet::Error { code, message }) => Reply::Error {
                code: code.to_u16(),
                message: message.into_owned(),
            },
            _ => Reply::Other(b.to_vec()),
        }
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Data { block, data } => write!(f, "DATA(block {block}, {} bytes)", data.len()),
            Reply::Ack(b) => write!(f, "ACK({b})"),
            Reply::Oack(o) => write!(f, "OACK({o:?})"),
            Reply::Error { code, message } => write!(f, "ERROR({code}, {message:?})"),
            Reply::Other(b) => write!(f, "unparsable {:?}", &b[..b.len().min(32)]),
        }
    }
}

// ---------------------------------------------------------------------------------
// A raw peer.
// ---------------------------------------------------------------------------------

/// A UDP socket acting as a TFTP client.
pub struct Peer {
    sock: UdpSocket,
    /// Set when the socket lives in a namespace a test created: any address is then
    /// inside the test's own network.
    private_net: bool,
}

impl Default for Peer {
    fn default() -> Self {
        Peer::new()
    }
}

impl Peer {
    /// A peer on `127.0.0.1` with an ephemeral port.
    pub fn new() -> Peer {
        Peer::bind("127.0.0.1:0")
    }

    /// A peer that can reach `server`: on its loopback family, or on the wildcard
    /// address inside a test's network namespace.
    pub fn for_server(server: SocketAddr) -> Peer {
        match server.ip() {
            IpAddr::V4(a) if a.is_loopback() => Peer::bind("127.0.0.1:0"),
            IpAddr::V6(a) if a.is_loopback() => Peer::bind("[::1]:0"),
            IpAddr::V4(_) => Peer::bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).to_string()),
            IpAddr::V6(_) => Peer::bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).to_string()),
        }
    }

    /// A peer bound to `addr`.
    pub fn bind(addr: &str) -> Peer {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        Peer {
            sock,
            private_net: in_private_netns(),
        }
    }

    /// This peer's address (its transfer ID).
    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    /// Sends one datagram.
    pub fn send(&self, to: SocketAddr, bytes: &[u8]) {
        assert!(
            to.ip().is_loopback() || self.private_net,
            "tests only talk to loopback or inside their own network namespace, not {to}"
        );
        self.sock
            .send_to(bytes, to)
            .unwrap_or_else(|e| panic!("send to {to}: {e}"));
    }

    /// Sends an ACK.
    pub fn ack(&self, to: SocketAddr, block: u16) {
        self.send(to, &ack(block));
    }

    /// Sends an ERROR.
    pub fn error(&self, to: SocketAddr, code: ErrorCode, message: &str) {
        let mut b = Vec::new();
        emit_error(&mut b, code, message);
        self.send(to, &b);
    }

    /// Next datagram within `timeout`, if any.
    pub fn recv(&self, timeout: Duration) -> Option<(Reply, SocketAddr)> {
        let mut buf = vec![0u8; 65_536];
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("set_read_timeout");
        match self.sock.recv_from(&mut buf) {
            Ok((n, from)) => Some((Reply::parse(&buf[..n]), from)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("recv on {}: {e}", self.addr()),
        }
    }

    /// Next datagram; panics naming `what` was expected if none comes in
    /// [`REPLY_TIMEOUT`].
    #[track_caller]
    pub fn expect(&self, what: &str) -> (Reply, SocketAddr) {
        self.recv(REPLY_TIMEOUT)
            .unwrap_or_else(|| panic!("expected {what} within {REPLY_TIMEOUT:?}, got nothing"))
    }

    /// Expects an ERROR; returns (code, message, sender).
    #[track_caller]
    pub fn expect_error(&self, what: &str) -> (u16, String, SocketAddr) {
        match self.expect(what) {
            (Reply::Error { code, message }, from) => (code, message, from),
            (other, from) => panic!("expected {what} (an ERROR), got {other:?} from {from}"),
        }
    }

    /// Asserts nothing arrives for `d`.
    #[track_caller]
    pub fn expect_silence(&self, d: Duration, why: &str) {
        if let Some((r, from)) = self.recv(d) {
            panic!("expected no packet ({why}), got {r:?} from {from}");
        }
    }
}

// ---------------------------------------------------------------------------------
// The read client.
// ---------------------------------------------------------------------------------

/// Pauses of a slow client: after every `every` blocks, sleep `pause` before the ACK.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Blocks between pauses.
    pub every: u32,
    /// Pause.
    pub pause: Duration,
}

/// How [`fetch`] behaves.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// Send every ACK twice, back to back (to provoke the Sorcerer's Apprentice bug).
    pub ack_twice: bool,
    /// Give up after this long.
    pub deadline: Duration,
    /// How long to wait for the first reply.
    pub first_wait: Duration,
    /// Re-send the last ACK after this much silence.
    pub retry: Duration,
    /// Silences in a row after which the client gives up.
    pub max_resends: u32,
    /// Re-send the request too when it gets no reply (then packets of a second transfer
    /// the copy started are ignored, as RFC 1350 lets a client do).
    pub resend_request: bool,
    /// Pretend every n-th DATA packet was lost (0: none), to exercise recovery.
    pub drop_every: u64,
    /// Expect block 65535 to be followed by 1 instead of 0 (`rollover = "one"`).
    pub rollover_to_one: bool,
    /// Pauses of a slow client.
    pub pace: Option<Pace>,
    /// Bytes received so far, updated as blocks arrive.
    pub progress: Option<Arc<AtomicU64>>,
}

impl Default for Fetch {
    fn default() -> Self {
        Fetch {
            ack_twice: false,
            deadline: Duration::from_secs(30),
            first_wait: REPLY_TIMEOUT,
            retry: Duration::from_millis(1500),
            max_resends: 10,
            resend_request: false,
            drop_every: 0,
            rollover_to_one: false,
            pace: None,
            progress: None,
        }
    }
}

impl Fetch {
    /// A lockstep client that waits `wait` for each packet and re-sends its last one
    /// (the request too) twice before it calls the server silent.
    pub fn lockstep(wait: Duration) -> Fetch {
        Fetch {
            deadline: Duration::from_secs(300),
            first_wait: wait,
            retry: wait,
            max_resends: 2,
            resend_request: true,
            ..Fetch::default()
        }
    }
}

/// What a completed read transfer looked like.
#[derive(Debug, Default)]
pub struct Download {
    /// The file.
    pub data: Vec<u8>,
    /// The OACK, if the server sent one.
    pub oack: Option<AcceptedOptions>,
    /// Where the transfer's packets came from (the server's transfer ID).
    pub tid: Option<SocketAddr>,
    /// Block size in force.
    pub blksize: usize,
    /// Window size in force.
    pub windowsize: u64,
    /// Distinct blocks received (the file's block count).
    pub blocks: u64,
    /// DATA packets received, copies included.
    pub data_packets: u64,
    /// Extra copies of already received blocks, by absolute block number (1-based).
    pub duplicates: HashMap<u64, u32>,
    /// Blocks that arrived ahead of the expected one (loss or reordering).
    pub out_of_order: u64,
    /// The wire number that followed block 65535, if the transfer got that far.
    pub after_65535: Option<u16>,
    /// DATA packets this client pretended to lose ([`Fetch::drop_every`]).
    pub dropped: u64,
    /// Times this client re-sent its last ACK after a silence.
    pub acks_resent: u32,
}

impl Download {
    /// Most copies of any one block (1 when nothing was sent twice).
    pub fn max_copies(&self) -> u32 {
        1 + self.duplicates.values().copied().max().unwrap_or(0)
    }
}

/// Why a read transfer did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// The server sent an ERROR.
    Error {
        /// Its code.
        code: u16,
        /// Its message.
        message: String,
        /// Blocks received before it.
        after_blocks: u64,
    },
    /// No packet came in time (the text says where the transfer was).
    Silent(String),
    /// The server broke the protocol, or the deadline passed.
    Broken(String),
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failed::Error {
                code,
                message,
                after_blocks,
            } => write!(
                f,
                "server sent ERROR {code} ({message:?}) after {after_blocks} blocks"
            ),
            Failed::Silent(s) | Failed::Broken(s) => f.write_str(s),
        }
    }
}

/// Sends `request` to `server` from `peer` and runs the read transfer to the end like
/// an RFC 7440 client: ACK 0 after an OACK, an ACK per window and for the last block,
/// re-ACK of the last in-order block after a silence or an out-of-order block.
pub fn fetch(
    peer: &Peer,
    server: SocketAddr,
    request: &[u8],
    f: Fetch,
) -> Result<Download, Failed> {
    peer.send(server, request);
    run_fetch(peer, Some((server, request)), f)
}

/// Runs a read transfer whose request `peer` has already sent (see [`fetch`]).
pub fn finish_fetch(peer: &Peer, f: Fetch) -> Result<Download, Failed> {
    run_fetch(peer, None, f)
}

fn run_fetch(peer: &Peer, req: Option<(SocketAddr, &[u8])>, f: Fetch) -> Result<Download, Failed> {
    let deadline = Instant::now() + f.deadline;
    let mut d = Download {
        blksize: 512,
        windowsize: 1,
        ..Download::default()
    };
    let ack = |to: SocketAddr, b: u16| {
        peer.ack(to, b);
        if f.ack_twice {
            peer.ack(to, b);
        }
    };
    // Absolute number of the next block wanted, blocks since the last ACK, last ACK sent.
    let mut next: u64 = 1;
    let mut in_window: u64 = 0;
    let mut last_ack: Option<u16> = None;
    // Whether the current gap (a block missing) has been reported with an ACK.
    let mut gap_acked = false;
    // Silences in a row (reset by any packet).
    let mut silences = 0u32;
    let mut request_resent = false;
    let wire = |abs: u64| -> u16 {
        if f.rollover_to_one && abs > 65_535 {
            ((abs - 65_536) % 65_535 + 1) as u16
        } else {
            abs as u16
        }
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Failed::Broken(format!(
                "transfer not finished after {:?}: {} blocks ({} bytes) received, next wanted \
                 {next} (wire {}), {} out of order, {} ACKs re-sent",
                f.deadline,
                next - 1,
                d.data.len(),
                wire(next),
                d.out_of_order,
                d.acks_resent
            )));
        }
        let patience = if d.tid.is_none() {
            f.first_wait
        } else {
            f.retry
        };
        let wait = (deadline - now).min(patience);
        let Some((reply, from)) = peer.recv(wait) else {
            // Silence: the server's timer should fire; ours re-sends the last packet too.
            let gave_up = silences >= f.max_resends;
            match (d.tid, last_ack, req) {
                (Some(tid), Some(b), _) if !gave_up => {
                    silences += 1;
                    d.acks_resent += 1;
                    ack(tid, b);
                    continue;
                }
                (None, _, Some((server, bytes))) if f.resend_request && !gave_up => {
                    silences += 1;
                    request_resent = true;
                    peer.send(server, bytes);
                    continue;
                }
                (None, _, _) => {
                    return Err(Failed::Silent(format!(
                        "no reply to the request within {patience:?}"
                    )))
                }
                _ => {
                    return Err(Failed::Silent(format!(
                        "server went silent after block {} ({} bytes), waiting {patience:?} \
                         for block {next}",
                        next - 1,
                        d.data.len()
                    )))
                }
            }
        };
        match d.tid {
            Some(tid) if tid != from && request_resent => continue,
            _ => {}
        }
        silences = 0;
        match d.tid {
            None => d.tid = Some(from),
            Some(tid) if tid != from => {
                return Err(Failed::Broken(format!(
                    "{reply:?} from {from}, but the transfer is with {tid}"
                )))
            }
            Some(_) => {}
        }
        let tid = from;
        match reply {
            Reply::Oack(o) if next == 1 && d.oack.is_none() && d.data_packets == 0 => {
                d.oack = Some(o);
                d.blksize = usize::from(o.blksize.unwrap_or(512));
                d.windowsize = u64::from(o.windowsize.unwrap_or(1));
                ack(tid, 0);
                last_ack = Some(0);
            }
            Reply::Oack(_) if d.oack.is_some() && next == 1 => {
                // Our ACK 0 crossed a retransmitted OACK.
                ack(tid, 0);
            }
            Reply::Data { block, data } => {
                d.data_packets += 1;
                if f.drop_every > 0 && d.data_packets.is_multiple_of(f.drop_every) {
                    d.dropped += 1;
                    continue;
                }
                let want = wire(next);
                if block == want {
                    if data.len() > d.blksize {
                        return Err(Failed::Broken(format!(
                            "DATA block {block} has {} bytes, more than blksize {}",
                            data.len(),
                            d.blksize
                        )));
                    }
                    if next == 65_536 {
                        d.after_65535 = Some(block);
                    }
                    gap_acked = false;
                    let last = data.len() < d.blksize;
                    d.data.extend_from_slice(&data);
                    if let Some(p) = &f.progress {
                        p.store(d.data.len() as u64, Ordering::Relaxed);
                    }
                    d.blocks = next;
                    next += 1;
                    in_window += 1;
                    if last || in_window == d.windowsize {
                        if let Some(pc) = f.pace {
                            if pc.every > 0 && d.blocks.is_multiple_of(u64::from(pc.every)) {
                                thread::sleep(pc.pause);
                            }
                        }
                        ack(tid, block);
                        last_ack = Some(block);
                        in_window = 0;
                    }
                    if last {
                        return Ok(d);
                    }
                } else {
                    let behind = u64::from((want.wrapping_sub(1)).wrapping_sub(block));
                    if behind < 32_768 && behind < next - 1 {
                        *d.duplicates.entry(next - 1 - behind).or_default() += 1;
                    } else {
                        // Ahead of what we want: a block was lost. RFC 7440: ack the
                        // last in-order block (once per gap) so the server goes back.
                        d.out_of_order += 1;
                        if !gap_acked {
                            gap_acked = true;
                            let b = wire(next - 1);
                            ack(tid, b);
                            last_ack = Some(b);
                            in_window = 0;
                        }
                    }
                }
            }
            Reply::Error { code, message } => {
                return Err(Failed::Error {
                    code,
                    message,
                    after_blocks: next - 1,
                })
            }
            other => {
                return Err(Failed::Broken(format!(
                    "unexpected {other:?} after {} blocks",
                    next - 1
                )))
            }
        }
    }
}

/// Fetches `name` with `opts` from a fresh peer, panicking with the reason on failure.
#[track_caller]
pub fn fetch_ok(server: SocketAddr, name: &str, opts: &[(&str, &str)]) -> Download {
    let peer = Peer::new();
    fetch(&peer, server, &rrq(name, opts), Fetch::default())
        .unwrap_or_else(|e| panic!("fetching {name:?} with {opts:?}: {e}"))
}

/// What a TFTP server said to a read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The whole file.
    Data(Vec<u8>),
    /// An ERROR packet (code, message).
    Error(u16, String),
    /// Nothing within the timeout, or a transfer that stalled or broke: the text says.
    Silent(String),
}

impl Answer {
    /// The bytes, if the file came.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Answer::Data(d) => Some(d),
            _ => None,
        }
    }
}

impl From<Result<Download, Failed>> for Answer {
    fn from(r: Result<Download, Failed>) -> Answer {
        match r {
            Ok(d) => Answer::Data(d.data),
            Err(Failed::Error { code, message, .. }) => Answer::Error(code, message),
            Err(e) => Answer::Silent(e.to_string()),
        }
    }
}

/// Downloads `path` from `server` with a [`Fetch::lockstep`] client on its own socket (in
/// the calling thread's namespace): `wait` bounds the wait for each packet, `pace` slows
/// the client down, `progress` counts received bytes. Options are sent as given.
pub fn tftp_fetch(
    server: SocketAddr,
    path: &str,
    opts: &[(&str, &str)],
    wait: Duration,
    pace: Option<Pace>,
    progress: Option<Arc<AtomicU64>>,
) -> Answer {
    let f = Fetch {
        pace,
        progress,
        ..Fetch::lockstep(wait)
    };
    fetch(&Peer::for_server(server), server, &rrq(path, opts), f).into()
}

/// A plain read of `path` from `local` ([`tftp_fetch_from`], no options, `wait` per
/// packet): `Ok(the file)` or `Err(the ERROR code)`; silence panics.
#[track_caller]
pub fn tftp_read_from(
    local: Ipv4Addr,
    server: SocketAddr,
    path: &str,
    wait: Duration,
) -> Result<Vec<u8>, u16> {
    match tftp_fetch_from(local, server, path, &[], wait, None, None) {
        Answer::Data(d) => Ok(d),
        Answer::Error(code, _) => Err(code),
        Answer::Silent(why) => panic!("TFTP {path} from {local}: {why}"),
    }
}

/// [`tftp_fetch`] from the local address `local` (a client with an address of its own,
/// e.g. 127.0.0.77 on loopback).
pub fn tftp_fetch_from(
    local: Ipv4Addr,
    server: SocketAddr,
    path: &str,
    opts: &[(&str, &str)],
    wait: Duration,
    pace: Option<Pace>,
    progress: Option<Arc<AtomicU64>>,
) -> Answer {
    let f = Fetch {
        pace,
        progress,
        ..Fetch::lockstep(wait)
    };
    let peer = Peer::bind(&SocketAddr::from((local, 0)).to_string());
    fetch(&peer, server, &rrq(path, opts), f).into()
}

// ---------------------------------------------------------------------------------
// tftp-hpa.
// ---------------------------------------------------------------------------------

/// `tftp -m MODE HOST PORT -c get REMOTE LOCAL` (tftp-hpa), inside `netns` when given,
/// killed after `timeout`; `remote` is sent as given, whatever its bytes. tftp-hpa exits 0
/// even after an ERROR packet, so its output decides; `Err` holds what it printed (e.g.
/// `Error code 1: file not found`).
pub fn tftp_hpa(
    netns: Option<&str>,
    server: SocketAddr,
    mode: &str,
    remote: impl AsRef<OsStr>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().expect("temp dir for a TFTP download");
    let local = dir.path().join("out");
    let mut cmd = command(netns, "tftp");
    cmd.args(["-m", mode])
        .arg(server.ip().to_string())
        .arg(server.port().to_string())
        .args(["-c", "get"])
        .arg(remote)
        .arg(&local);
    let out = run_bounded(&mut cmd, timeout)?;
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), out.stderr);
    if !out.status.success() || printed.contains("Error") || printed.contains("imed out") {
        return Err(format!("{} {}", out.status, printed.trim()));
    }
    std::fs::read(&local).map_err(|e| format!("tftp left no file: {e}; it printed {printed:?}"))
}

/// `curl -sS tftp://SERVER/REMOTE` inside `netns` when given, killed after `timeout`:
/// the bytes, or what curl printed. For names tftp-hpa's command line cannot carry
/// (it reads `a:b` as host `a`, file `b`, so MAC names like GRUB's `<mac>.conf`).
pub fn curl_tftp(
    netns: Option<&str>,
    server: SocketAddr,
    remote: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut cmd = command(netns, "curl");
    cmd.args(["-sS", "--max-time"])
        .arg(timeout.as_secs().max(1).to_string())
        .arg(format!("tftp://{server}/{remote}"));
    let out = run_bounded(&mut cmd, timeout + Duration::from_secs(5))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!("{} {}", out.status, out.stderr.trim()))
    }
}

/// [`tftp_hpa`] in octet mode on loopback with [`TFTP_TIMEOUT`].
pub fn tftp_get(server: SocketAddr, remote: &str) -> Result<Vec<u8>, String> {
    tftp_hpa(None, server, "octet", remote, TFTP_TIMEOUT)
}

/// `N` from tftp-hpa's `Error code N: ...`.
pub fn tftp_error_code(printed: &str) -> Option<u16> {
    let rest = &printed[printed.find("Error code ")? + "Error code ".len()..];
    rest.split(':').next()?.trim().parse().ok()
}
