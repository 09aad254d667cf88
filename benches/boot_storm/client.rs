//! The load generator: a TFTP read client, as a sans-IO state machine
//! ([`ClientTransfer`]) plus a small tokio driver ([`fetch`]).
//!
//! Client side of the options a PXE firmware uses: `blksize`, `tsize` and RFC 7440
//! `windowsize`. The client ACKs the last block of each window (or every block in
//! lockstep); on a gap, or when nothing arrives for `timeout`, it ACKs the last block it
//! received in order. Retries are bounded and every run has a hard deadline, so a
//! misbehaving server ends in a counted failure, never a hang or a panic.
//!
//! Every block is checked against the source file as it arrives (byte comparison at its
//! offset, which subsumes a hash), and the final length must match.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use baton::wire::tftp::{self, AcceptedOptions, Mode, Opcode, Packet, RequestOptions};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// What one client asks for.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// File name in the request.
    pub filename: String,
    /// The file's expected content.
    pub expected: Arc<Vec<u8>>,
    /// Requested block size.
    pub blksize: u16,
    /// Requested window size; `None` sends no `windowsize` option (plain lockstep).
    pub windowsize: Option<u16>,
    /// Silence after which the client re-sends its last packet.
    pub timeout: Duration,
    /// Consecutive timeouts before the client gives up.
    pub max_retries: u32,
    /// Local address to send from (each simulated node has its own loopback address).
    pub source: std::net::IpAddr,
}

/// Counters of one transfer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientStats {
    /// DATA packets received (including duplicates).
    pub data_packets: u64,
    /// DATA packets already received before (server retransmissions).
    pub duplicates: u64,
    /// DATA packets past a gap (a lost or reordered block).
    pub out_of_order: u64,
    /// Timer expiries.
    pub timeouts: u64,
    /// ACKs sent.
    pub acks_sent: u64,
    /// Datagrams that were not valid TFTP or not expected here.
    pub ignored: u64,
}

/// The result of one transfer.
#[derive(Debug, Clone)]
pub struct TransferResult {
    /// `Ok` when the whole file arrived and matched; `Err` says why not.
    pub outcome: Result<(), String>,
    /// Bytes received in order and verified.
    pub bytes: u64,
    /// From sending the request to sending the final ACK (or to the failure).
    pub elapsed: Duration,
    /// Block size in use (negotiated, or 512 if the server ignored options); `None`
    /// if the server never answered with DATA or OACK.
    pub blksize: Option<u16>,
    /// Window size in use (1 when the server did not accept `windowsize`); `None` as
    /// for `blksize`.
    pub windowsize: Option<u16>,
    /// Counters.
    pub stats: ClientStats,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Request sent, nothing received yet.
    AwaitFirst,
    /// Options agreed (or defaulted), receiving DATA.
    Receiving,
    /// The final block arrived and was verified.
    Done,
    /// Gave up.
    Failed(String),
}

/// The client's side of one read transfer, without sockets or clocks.
#[derive(Debug)]
pub struct ClientTransfer {
    spec: ClientSpec,
    phase: Phase,
    /// True once an OACK or the first DATA fixed `blksize` and `windowsize`.
    agreed: bool,
    blksize: u16,
    windowsize: u16,
    /// Absolute number of the next block expected (1-based).
    next: u64,
    /// Verified bytes so far.
    received: usize,
    /// In-order blocks since the last ACK.
    in_window: u16,
    /// `next` at the time of the last gap ACK, so one gap yields one ACK.
    gap_acked_at: Option<u64>,
    /// `next` and time of the last duplicate-triggered ACK.
    dup_acked_at: Option<(u64, Instant)>,
    retries: u32,
    stats: ClientStats,
}

impl ClientTransfer {
    /// A transfer about to send its request.
    pub fn new(spec: ClientSpec) -> Self {
        ClientTransfer {
            spec,
            phase: Phase::AwaitFirst,
            agreed: false,
            blksize: tftp::DEFAULT_BLKSIZE,
            windowsize: 1,
            next: 1,
            received: 0,
            in_window: 0,
            gap_acked_at: None,
            dup_acked_at: None,
            retries: 0,
            stats: ClientStats::default(),
        }
    }

    /// The read request to send first (and again on a timeout before any answer).
    pub fn request(&self) -> Vec<u8> {
        let opts = RequestOptions {
            blksize: Some(self.spec.blksize),
            tsize: Some(0),
            timeout: None,
            windowsize: self.spec.windowsize,
            ignored: Vec::new(),
        };
        let mut out = Vec::with_capacity(64);
        tftp::emit_request(
            &mut out,
            Opcode::Rrq,
            &self.spec.filename,
            Mode::Octet,
            &opts,
        );
        out
    }

    /// True once finished, successfully or not.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed(_))
    }

    /// True while no answer to the request has arrived.
    pub fn awaiting_first(&self) -> bool {
        self.phase == Phase::AwaitFirst
    }

    /// Gives up for a reason outside the protocol (deadline, socket error).
    pub fn fail(&mut self, why: impl Into<String>) {
        if !self.is_finished() {
            self.phase = Phase::Failed(why.into());
        }
    }

    /// Wire number of absolute block `k` (rollover to 0, as tftp-hpa and firmware do).
    fn wire(k: u64) -> u16 {
        k as u16
    }

    fn ack(&mut self, k: u64) -> Option<u16> {
        self.stats.acks_sent += 1;
        self.in_window = 0;
        Some(Self::wire(k))
    }

    /// Feeds one datagram from the server received at `now`; returns the block number
    /// to ACK, if any.
    pub fn on_datagram(&mut self, buf: &[u8], now: Instant) -> Option<u16> {
        if self.is_finished() {
            return None;
        }
        let pkt = match Packet::parse(buf) {
            Ok(p) => p,
            Err(_) => {
                self.stats.ignored += 1;
                return None;
            }
        };
        match pkt {
            Packet::Error { code, message } => {
                self.fail(format!("server error {code}: {message}"));
                None
            }
            Packet::Oack(o) if self.phase == Phase::AwaitFirst => self.on_oack(&o),
            // A repeated OACK: our ACK 0 was lost.
            Packet::Oack(_) if self.next == 1 => self.ack(0),
            Packet::Data { block, data } => {
                if self.phase == Phase::AwaitFirst {
                    // The server ignored every option: RFC 1350 defaults.
                    self.phase = Phase::Receiving;
                    self.agreed = true;
                }
                self.retries = 0;
                self.on_data(block, data, now)
            }
            _ => {
                self.stats.ignored += 1;
                None
            }
        }
    }

    fn on_oack(&mut self, o: &AcceptedOptions) -> Option<u16> {
        let blksize = o.blksize.unwrap_or(tftp::DEFAULT_BLKSIZE);
        if blksize > self.spec.blksize {
            self.fail(format!(
                "OACK blksize {blksize} > requested {}",
                self.spec.blksize
            ));
            return None;
        }
        let windowsize = o.windowsize.unwrap_or(1);
        if windowsize > self.spec.windowsize.unwrap_or(1) {
            self.fail(format!("OACK windowsize {windowsize} was not requested"));
            return None;
        }
        if let Some(t) = o.tsize {
            if t != self.spec.expected.len() as u64 {
                self.fail(format!(
                    "OACK tsize {t} != file size {}",
                    self.spec.expected.len()
                ));
                return None;
            }
        }
        self.blksize = blksize;
        self.windowsize = windowsize;
        self.agreed = true;
        self.phase = Phase::Receiving;
        self.retries = 0;
        self.ack(0)
    }

    fn on_data(&mut self, block: u16, data: &[u8], now: Instant) -> Option<u16> {
        self.stats.data_packets += 1;
        let delta = block.wrapping_sub(Self::wire(self.next)) as i16;
        if delta < 0 {
            // Already have it: the server resent (our ACK was lost or late). Re-ACK the
            // last in-order block, at most once per position and quarter timeout, so
            // duplicates never set off a Sorcerer's Apprentice exchange.
            self.stats.duplicates += 1;
            let recent = self.dup_acked_at.is_some_and(|(at, when)| {
                at == self.next && now.saturating_duration_since(when) < self.spec.timeout / 4
            });
            if !recent {
                self.dup_acked_at = Some((self.next, now));
                return self.ack(self.next - 1);
            }
            return None;
        }
        if delta > 0 {
            // A gap: RFC 7440 says ACK the last block received in order. Once per gap.
            self.stats.out_of_order += 1;
            if self.gap_acked_at != Some(self.next) {
                self.gap_acked_at = Some(self.next);
                return self.ack(self.next - 1);
            }
            return None;
        }
        let blk = usize::from(self.blksize);
        if data.len() > blk {
            self.fail(format!(
                "block {} has {} bytes > blksize {blk}",
                self.next,
                data.len()
            ));
            return None;
        }
        let expected = &self.spec.expected;
        let end = self.received + data.len();
        if end > expected.len() || expected[self.received..end] != *data {
            self.fail(format!("content mismatch in block {}", self.next));
            return None;
        }
        self.received = end;
        let k = self.next;
        self.next += 1;
        self.in_window += 1;
        if data.len() < blk {
            if self.received != expected.len() {
                self.fail(format!(
                    "short file: {} of {} bytes",
                    self.received,
                    expected.len()
                ));
                return None;
            }
            self.phase = Phase::Done;
            return self.ack(k);
        }
        if self.in_window >= self.windowsize {
            return self.ack(k);
        }
        None
    }

    /// The timer fired with nothing received. Returns what to re-send: `Ok(None)` means
    /// the request, `Ok(Some(k))` an ACK of block `k`; `Err` when retries are exhausted.
    pub fn on_timeout(&mut self) -> Result<Option<u16>, ()> {
        self.stats.timeouts += 1;
        if self.retries >= self.spec.max_retries {
            self.fail(format!(
                "no answer after {} retries ({} of {} bytes)",
                self.retries,
                self.received,
                self.spec.expected.len()
            ));
            return Err(());
        }
        self.retries += 1;
        if self.phase == Phase::AwaitFirst {
            return Ok(None);
        }
        Ok(self.ack(self.next - 1))
    }

    /// Final result (elapsed time filled in by the driver).
    pub fn result(&self, elapsed: Duration) -> TransferResult {
        let outcome = match &self.phase {
            Phase::Done => Ok(()),
            Phase::Failed(why) => Err(why.clone()),
            _ => Err("unfinished".to_string()),
        };
        let agreed = self.agreed;
        TransferResult {
            outcome,
            bytes: self.received as u64,
            elapsed,
            blksize: agreed.then_some(self.blksize),
            windowsize: agreed.then_some(self.windowsize),
            stats: self.stats,
        }
    }
}

/// Most datagrams taken per `recvmmsg` call.
const BATCH: usize = 32;

/// Receive buffers for `recvmmsg`, one slot per datagram.
struct RecvBatch {
    slot: usize,
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
}

impl RecvBatch {
    fn new(slot: usize) -> Self {
        RecvBatch {
            slot,
            bufs: vec![0; slot * BATCH],
            lens: [0; BATCH],
            truncated: [false; BATCH],
        }
    }

    /// Reads up to [`BATCH`] datagrams from a connected, non-blocking socket.
    ///
    /// A short batch also clears the socket's readiness, which saves the extra
    /// `recvmmsg` that would only return `EAGAIN`. That is safe with tokio's
    /// edge-triggered epoll: every datagram arriving after the call raises a new edge, so
    /// no wake-up is lost.
    fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let fd = sock.as_raw_fd();
        let mut got = 0;
        let r = sock.try_io(Interest::READABLE, || {
            let n = self.recv_raw(fd)?;
            got = n;
            if n < BATCH {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            r => r,
        }
    }

    /// One non-blocking `recvmmsg` into the slots.
    fn recv_raw(&mut self, fd: std::os::fd::RawFd) -> io::Result<usize> {
        // SAFETY: iovecs point into `self.bufs`, which outlives the call; headers are
        // zeroed plain data; the kernel writes at most `slot` bytes per iovec; a bad fd
        // only makes the call fail.
        unsafe {
            let mut iov: [libc::iovec; BATCH] = std::mem::zeroed();
            let mut hdr: [libc::mmsghdr; BATCH] = std::mem::zeroed();
            for i in 0..BATCH {
                iov[i].iov_base = self.bufs.as_mut_ptr().add(i * self.slot).cast();
                iov[i].iov_len = self.slot;
                hdr[i].msg_hdr.msg_iov = &mut iov[i];
                hdr[i].msg_hdr.msg_iovlen = 1;
            }
            let n = libc::recvmmsg(
                fd,
                hdr.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            );
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            for (i, h) in hdr.iter().enumerate().take(n) {
                self.lens[i] = h.msg_len as usize;
                self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            }
            Ok(n)
        }
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.slot..i * self.slot + self.lens[i].min(self.slot)]
    }
}

/// Sends an ACK, counting a send failure as the end of the transfer.
async fn send_ack(sock: &UdpSocket, t: &mut ClientTransfer, block: u16) -> bool {
    let mut b = Vec::with_capacity(4);
    tftp::emit_ack(&mut b, block);
    match sock.send(&b).await {
        Ok(_) => true,
        Err(e) => {
            t.fail(format!("send ACK {block}: {e}"));
            false
        }
    }
}

/// Fetches one file from `server`, stopping at `deadline` whatever happens.
pub async fn fetch(server: SocketAddr, spec: ClientSpec, deadline: Instant) -> TransferResult {
    let start = Instant::now();
    let timeout = spec.timeout;
    let slot = usize::from(spec.blksize) + 64;
    let mut t = ClientTransfer::new(spec);
    let sock = match UdpSocket::bind(SocketAddr::new(t.spec.source, 0)).await {
        Ok(s) => s,
        Err(e) => {
            t.fail(format!("bind: {e}"));
            return t.result(start.elapsed());
        }
    };
    let rrq = t.request();
    if let Err(e) = sock.send_to(&rrq, server).await {
        t.fail(format!("send request: {e}"));
        return t.result(start.elapsed());
    }

    // Phase 1: the first answer names the server's transfer ID (its port).
    let mut buf = vec![0u8; slot];
    while t.awaiting_first() {
        let wait = (Instant::now() + timeout).min(deadline);
        match tokio::time::timeout_at(wait, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                if let Err(e) = sock.connect(from).await {
                    t.fail(format!("connect to {from}: {e}"));
                    break;
                }
                if let Some(a) = t.on_datagram(&buf[..n], Instant::now()) {
                    send_ack(&sock, &mut t, a).await;
                }
            }
            Ok(Err(e)) => t.fail(format!("recv: {e}")),
            Err(_) if Instant::now() >= deadline => t.fail("run deadline reached"),
            Err(_) => {
                if t.on_timeout().is_ok() {
                    if let Err(e) = sock.send_to(&rrq, server).await {
                        t.fail(format!("resend request: {e}"));
                    }
                }
            }
        }
    }

    // Phase 2: DATA from the connected transfer ID, in batches.
    let mut batch = RecvBatch::new(slot);
    while !t.is_finished() {
        let wait = (Instant::now() + timeout).min(deadline);
        match tokio::time::timeout_at(wait, sock.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                t.fail(format!("poll: {e}"));
                break;
            }
            Err(_) if Instant::now() >= deadline => {
                t.fail("run deadline reached");
                break;
            }
            Err(_) => {
                if let Ok(Some(a)) = t.on_timeout() {
                    send_ack(&sock, &mut t, a).await;
                }
                continue;
            }
        }
        let n = match batch.recv(&sock) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // E.g. ECONNREFUSED: the server's transfer socket is gone.
                t.fail(format!("recv: {e}"));
                break;
            }
        };
        let now = Instant::now();
        for i in 0..n {
            if batch.truncated[i] {
                t.fail(format!("datagram larger than {} bytes", batch.slot));
                break;
            }
            if let Some(a) = t.on_datagram(batch.get(i), now) {
                if !send_ack(&sock, &mut t, a).await {
                    break;
                }
            }
            if t.is_finished() {
                break;
            }
        }
    }
    t.result(start.elapsed())
}
