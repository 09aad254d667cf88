//! The sans-IO client side of one TFTP read, as boot firmware does it: the RRQ with the
//! firmware's options (and EDK2's size probe first), OACK checks, in-order reception
//! with an ACK per window, retransmission of the RRQ or the last ACK on the firmware's
//! timer schedule, giving up after its last try. Fed datagrams and instants; polled for
//! datagrams and the next deadline. Bytes are hashed as they arrive (sha256) and kept
//! only when asked (configurations), so a storm of kernels needs no memory per byte.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use super::profile::TftpHabits;
use crate::wire::tftp::{
    emit_ack, emit_error, emit_request, ErrorCode, Mode, Opcode, Packet, RequestOptions,
};

/// Largest file kept in memory (configuration files are a few hundred bytes).
pub const MAX_KEPT: u64 = 1 << 20;

/// A datagram to send from this read's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpOut {
    /// Socket generation: a new number means "from a new local port".
    pub socket: u32,
    /// Destination.
    pub to: SocketAddrV4,
    /// Payload.
    pub payload: Vec<u8>,
}

/// How a read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// All bytes received.
    Done {
        /// Size.
        bytes: u64,
        /// sha256, hex.
        sha256: String,
        /// The bytes, when kept.
        data: Option<Vec<u8>>,
    },
    /// ERROR 1 from the server.
    NotFound(String),
    /// Any other ERROR from the server, or a protocol violation.
    Failed(String),
    /// No answer after the last retransmission.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// RRQ sent for the size probe (tsize only), awaiting the OACK.
    Probe,
    /// RRQ sent, awaiting OACK or DATA 1.
    Requested,
    /// Receiving DATA.
    Receiving,
    /// Ended.
    Done,
}

/// Counters of one read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// RRQs and ACKs sent again after a timeout.
    pub retransmits: u32,
    /// DATA blocks that arrived out of order or twice.
    pub stray_blocks: u32,
    /// Datagrams from another transfer ID, answered with ERROR 5.
    pub wrong_tid: u32,
}

/// One TFTP read.
#[derive(Debug)]
pub struct TftpRead {
    path: String,
    server: SocketAddrV4,
    habits: TftpHabits,
    keep: bool,
    state: State,
    socket: u32,
    tid: Option<u16>,
    blksize: u16,
    window: u16,
    tsize: Option<u64>,
    expect: u64,
    in_window: u16,
    gap_acked: Option<u64>,
    last_ack: Option<Vec<u8>>,
    rrq: Vec<u8>,
    tries: usize,
    deadline: Option<Instant>,
    out: VecDeque<TftpOut>,
    hasher: Sha256,
    bytes: u64,
    data: Vec<u8>,
    result: Option<ReadResult>,
    stats: ReadStats,
}

impl TftpRead {
    /// Starts reading `path` from `server` with the firmware's habits. `socket` is the
    /// first socket generation to use (the caller keeps them unique per client).
    pub fn new(
        server: SocketAddrV4,
        path: &str,
        habits: &TftpHabits,
        keep: bool,
        socket: u32,
        now: Instant,
    ) -> TftpRead {
        let mut r = TftpRead {
            path: path.to_string(),
            server,
            habits: habits.clone(),
            keep,
            state: State::Requested,
            socket,
            tid: None,
            blksize: 512,
            window: 1,
            tsize: None,
            expect: 1,
            in_window: 0,
            gap_acked: None,
            last_ack: None,
            rrq: Vec::new(),
            tries: 0,
            deadline: None,
            out: VecDeque::new(),
            hasher: Sha256::new(),
            bytes: 0,
            data: Vec::new(),
            result: None,
            stats: ReadStats::default(),
        };
        r.send_rrq(habits.size_probe, now);
        r
    }

    fn send_rrq(&mut self, probe: bool, now: Instant) {
        let o = if probe {
            // EDK2's probe: tsize, blksize and windowsize, aborted once the OACK tells the size.
            RequestOptions {
                tsize: Some(0),
                blksize: self.habits.blksize,
                windowsize: self.habits.windowsize,
                ..Default::default()
            }
        } else {
            RequestOptions {
                blksize: self.habits.blksize,
                tsize: (self.habits.tsize && !self.habits.size_probe).then_some(0),
                windowsize: self.habits.windowsize,
                ..Default::default()
            }
        };
        let mut buf = Vec::with_capacity(64 + self.path.len());
        emit_request(&mut buf, Opcode::Rrq, &self.path, Mode::Octet, &o);
        self.rrq = buf;
        self.state = if probe {
            State::Probe
        } else {
            State::Requested
        };
        self.tid = None;
        self.tries = 0;
        self.push_to(self.server, self.rrq.clone());
        self.arm(now);
    }

    fn arm(&mut self, now: Instant) {
        self.deadline = self.habits.timeouts.get(self.tries).map(|d| now + d);
        if self.deadline.is_none() {
            self.finish(ReadResult::TimedOut);
        }
    }

    fn push_to(&mut self, to: SocketAddrV4, payload: Vec<u8>) {
        self.out.push_back(TftpOut {
            socket: self.socket,
            to,
            payload,
        });
    }

    fn peer(&self) -> SocketAddrV4 {
        SocketAddrV4::new(*self.server.ip(), self.tid.unwrap_or(self.server.port()))
    }

    fn finish(&mut self, r: ReadResult) {
        self.state = State::Done;
        self.deadline = None;
        self.result = Some(r);
    }

    /// The result, once ended.
    pub fn result(&self) -> Option<&ReadResult> {
        self.result.as_ref()
    }

    /// Takes the result out (once).
    pub fn take_result(&mut self) -> Option<ReadResult> {
        self.result.take()
    }

    /// Counters.
    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The file name read.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The server (first port: 69).
    pub fn server(&self) -> Ipv4Addr {
        *self.server.ip()
    }

    /// Current socket generation.
    pub fn socket(&self) -> u32 {
        self.socket
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<TftpOut> {
        self.out.pop_front()
    }

    /// When [`TftpRead::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Retransmits the RRQ or the last ACK, or gives up after the last try.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.deadline {
            Some(d) if now >= d && self.state != State::Done => {}
            _ => return,
        }
        self.tries += 1;
        if self.habits.timeouts.get(self.tries).is_none() {
            self.finish(ReadResult::TimedOut);
            return;
        }
        self.stats.retransmits += 1;
        match self.state {
            State::Probe | State::Requested => self.push_to(self.server, self.rrq.clone()),
            State::Receiving => {
                // RFC 7440: acknowledge the last block received in order; the server
                // sends the window after it again.
                self.in_window = 0;
                let mut a = Vec::with_capacity(4);
                emit_ack(&mut a, (self.expect - 1) as u16);
                self.last_ack = Some(a.clone());
                self.push_to(self.peer(), a);
            }
            State::Done => {}
        }
        self.arm(now);
    }

    fn send_ack(&mut self, block: u16, now: Instant) {
        let mut a = Vec::with_capacity(4);
        emit_ack(&mut a, block);
        self.last_ack = Some(a.clone());
        self.push_to(self.peer(), a);
        self.tries = 0;
        self.arm(now);
    }

    /// Feeds a datagram that arrived on socket generation `socket` from `from`.
    pub fn handle(&mut self, socket: u32, from: SocketAddrV4, buf: &[u8], now: Instant) {
        if socket != self.socket || self.state == State::Done || from.ip() != self.server.ip() {
            return;
        }
        match self.tid {
            None => self.tid = Some(from.port()),
            Some(t) if t != from.port() => {
                self.stats.wrong_tid += 1;
                let mut e = Vec::new();
                emit_error(&mut e, ErrorCode::UnknownTid, "unknown transfer ID");
                self.push_to(from, e);
                return;
            }
            Some(_) => {}
        }
        let pkt = match Packet::parse(buf) {
            Ok(p) => p,
            Err(e) => {
                self.abort(format!("bad packet from the server: {e}"));
                return;
            }
        };
        match pkt {
            Packet::Error { code, message } => {
                let msg = format!("TFTP error {code}: {message}");
                self.finish(if code == ErrorCode::FileNotFound {
                    ReadResult::NotFound(msg)
                } else {
                    ReadResult::Failed(msg)
                });
            }
            Packet::Oack(o) => self.on_oack(o, now),
            Packet::Data { block, data } => self.on_data(block, data, now),
            _ => {}
        }
    }

    fn abort(&mut self, why: String) {
        let mut e = Vec::new();
        emit_error(&mut e, ErrorCode::IllegalOperation, &why);
        self.push_to(self.peer(), e);
        self.finish(ReadResult::Failed(why));
    }

    fn on_oack(&mut self, o: crate::wire::tftp::AcceptedOptions, now: Instant) {
        match self.state {
            State::Probe => {
                // The size is known: abort as EDK2 does, then read from a new port.
                let mut e = Vec::new();
                emit_error(
                    &mut e,
                    ErrorCode::OptionNegotiation,
                    "User aborted the transfer",
                );
                self.push_to(self.peer(), e);
                self.tsize = o.tsize;
                self.socket += 1;
                self.send_rrq(false, now);
            }
            State::Requested => {
                let asked = self.habits.blksize.unwrap_or(512);
                let blk = o.blksize.unwrap_or(512);
                if o.blksize.is_some() && (blk > asked || self.habits.blksize.is_none()) {
                    self.abort(format!("server offered blksize {blk}, more than asked"));
                    return;
                }
                let win = o.windowsize.unwrap_or(1);
                if o.windowsize.is_some() && win > self.habits.windowsize.unwrap_or(1) {
                    self.abort(format!("server offered windowsize {win}, more than asked"));
                    return;
                }
                self.blksize = blk;
                self.window = win;
                if o.tsize.is_some() {
                    self.tsize = o.tsize;
                }
                self.state = State::Receiving;
                self.send_ack(0, now);
            }
            // A repeated OACK (our ACK 0 was lost): acknowledge it again.
            State::Receiving if self.expect == 1 => {
                self.stats.stray_blocks += 1;
                self.send_ack(0, now);
            }
            _ => {}
        }
    }

    fn on_data(&mut self, block: u16, data: &[u8], now: Instant) {
        match self.state {
            State::Probe => {
                // The server ignored the options and started sending: stop it, read again.
                let mut e = Vec::new();
                emit_error(
                    &mut e,
                    ErrorCode::OptionNegotiation,
                    "User aborted the transfer",
                );
                self.push_to(self.peer(), e);
                self.socket += 1;
                self.send_rrq(false, now);
                return;
            }
            State::Requested => {
                // No OACK: RFC 1350 defaults.
                self.blksize = 512;
                self.window = 1;
                self.state = State::Receiving;
            }
            State::Receiving => {}
            State::Done => return,
        }
        if block != self.expect as u16 {
            self.stats.stray_blocks += 1;
            // A gap inside a window: say at once where it starts (once per gap), so the
            // server goes back without waiting for a timeout.
            let ahead = block.wrapping_sub(self.expect as u16);
            if self.window > 1 && ahead < self.window && self.gap_acked != Some(self.expect) {
                self.gap_acked = Some(self.expect);
                self.in_window = 0;
                let mut a = Vec::with_capacity(4);
                emit_ack(&mut a, (self.expect - 1) as u16);
                self.last_ack = Some(a.clone());
                self.push_to(self.peer(), a);
                return;
            }
            // A copy of the last block: our ACK was lost, say it again (lock-step only,
            // so a window of duplicates does not become a window of ACKs).
            if block == (self.expect - 1) as u16 && self.window == 1 {
                if let Some(a) = self.last_ack.clone() {
                    self.push_to(self.peer(), a);
                }
            }
            return;
        }
        if data.len() > usize::from(self.blksize) {
            self.abort(format!(
                "block {block} has {} bytes, more than blksize {}",
                data.len(),
                self.blksize
            ));
            return;
        }
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        if self.keep {
            if self.bytes > MAX_KEPT {
                self.abort(format!("{} is larger than {MAX_KEPT} bytes", self.path));
                return;
            }
            self.data.extend_from_slice(data);
        }
        self.expect += 1;
        self.in_window += 1;
        let last = data.len() < usize::from(self.blksize);
        if last || self.in_window >= self.window {
            self.in_window = 0;
            self.send_ack(block, now);
        }
        if last {
            self.deadline = None;
            if let Some(t) = self.tsize.filter(|&t| t != self.bytes) {
                self.finish(ReadResult::Failed(format!(
                    "received {} bytes, the server announced tsize {t}",
                    self.bytes
                )));
                return;
            }
            let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
            let data = self.keep.then(|| std::mem::take(&mut self.data));
            self.finish(ReadResult::Done {
                bytes: self.bytes,
                sha256,
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::profile::Schedule;
    use crate::wire::tftp::{emit_oack, AcceptedOptions};
    use std::time::Duration;

    const SRV: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 69);
    const TID: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);

    fn habits(blksize: u16, window: Option<u16>, probe: bool) -> TftpHabits {
        TftpHabits {
            blksize: Some(blksize),
            tsize: true,
            windowsize: window,
            size_probe: probe,
            timeouts: Schedule(vec![Duration::from_secs(1); 3]),
        }
    }

    fn data(block: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = crate::wire::tftp::data_header(block).to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn oack(o: AcceptedOptions) -> Vec<u8> {
        let mut v = Vec::new();
        emit_oack(&mut v, &o);
        v
    }

    fn drain(r: &mut TftpRead) -> Vec<TftpOut> {
        std::iter::from_fn(|| r.poll_transmit()).collect()
    }

    fn acks(outs: &[TftpOut]) -> Vec<u16> {
        outs.iter()
            .filter_map(|o| match Packet::parse(&o.payload) {
                Ok(Packet::Ack { block }) => Some(block),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lockstep_ipxe_read() {
        let now = Instant::now();
        let file: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut r = TftpRead::new(SRV, "boot.ipxe", &habits(1432, None, false), true, 1, now);
        let rrq = drain(&mut r);
        assert_eq!(rrq.len(), 1);
        assert_eq!(rrq[0].to, SRV);
        let Packet::Rrq(req) = Packet::parse(&rrq[0].payload).unwrap() else {
            panic!()
        };
        assert_eq!(req.options.blksize, Some(1432));
        assert_eq!(req.options.tsize, Some(0));
        assert_eq!(req.options.windowsize, None);
        r.handle(
            1,
            TID,
            &oack(AcceptedOptions {
                blksize: Some(1432),
                tsize: Some(3000),
                ..Default::default()
            }),
            now,
        );
        assert_eq!(acks(&drain(&mut r)), vec![0]);
        for (i, chunk) in file.chunks(1432).enumerate() {
            r.handle(1, TID, &data(i as u16 + 1, chunk), now);
            let out = drain(&mut r);
            assert_eq!(acks(&out), vec![i as u16 + 1]);
            assert!(out.iter().all(|o| o.to == TID));
        }
        match r.result().unwrap() {
            ReadResult::Done {
                bytes,
                sha256,
                data,
            } => {
                assert_eq!(*bytes, 3000);
                assert_eq!(sha256, &hex::encode(Sha256::digest(&file)));
                assert_eq!(data.as_deref(), Some(&file[..]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn edk2_probe_then_windowed_read() {
        let now = Instant::now();
        let file = vec![7u8; 1468 * 5 + 10];
        let mut r = TftpRead::new(SRV, "ipxe.efi", &habits(1468, Some(4), true), false, 1, now);
        let first = drain(&mut r);
        let Packet::Rrq(req) = Packet::parse(&first[0].payload).unwrap() else {
            panic!()
        };
        assert_eq!(req.options.tsize, Some(0));
        r.handle(
            1,
            TID,
            &oack(AcceptedOptions {
                blksize: Some(1468),
                tsize: Some(file.len() as u64),
                windowsize: Some(4),
                ..Default::default()
            }),
            now,
        );
        let out = drain(&mut r);
        // ERROR 8 to the probe's TID, then a fresh RRQ from a new socket without tsize.
        assert!(matches!(
            Packet::parse(&out[0].payload),
            Ok(Packet::Error {
                code: ErrorCode::OptionNegotiation,
                ..
            })
        ));
        assert_eq!((out[0].socket, out[0].to), (1, TID));
        assert_eq!((out[1].socket, out[1].to), (2, SRV));
        let Ok(Packet::Rrq(req)) = Packet::parse(&out[1].payload) else {
            panic!()
        };
        assert_eq!(req.options.tsize, None);
        assert_eq!(req.options.windowsize, Some(4));
        let tid2 = SocketAddrV4::new(*SRV.ip(), 40001);
        r.handle(
            2,
            tid2,
            &oack(AcceptedOptions {
                blksize: Some(1468),
                windowsize: Some(4),
                ..Default::default()
            }),
            now,
        );
        assert_eq!(acks(&drain(&mut r)), vec![0]);
        let mut got = vec![];
        for (i, chunk) in file.chunks(1468).enumerate() {
            r.handle(2, tid2, &data(i as u16 + 1, chunk), now);
            got.extend(acks(&drain(&mut r)));
        }
        assert_eq!(got, vec![4, 6], "one ACK per window of 4, then the last");
        assert!(
            matches!(r.result(), Some(ReadResult::Done { bytes, .. }) if *bytes == file.len() as u64)
        );
    }

    #[test]
    fn lost_data_is_recovered_by_reacking_on_timeout() {
        let mut now = Instant::now();
        let mut r = TftpRead::new(SRV, "k", &habits(512, Some(4), false), false, 1, now);
        drain(&mut r);
        r.handle(
            1,
            TID,
            &oack(AcceptedOptions {
                blksize: Some(512),
                windowsize: Some(4),
                ..Default::default()
            }),
            now,
        );
        drain(&mut r);
        r.handle(1, TID, &data(1, &[0; 512]), now);
        // Block 2 lost: 3 shows the gap (ACK 1 at once), 4 is dropped quietly.
        r.handle(1, TID, &data(3, &[0; 512]), now);
        r.handle(1, TID, &data(4, &[0; 512]), now);
        assert_eq!(acks(&drain(&mut r)), vec![1]);
        assert_eq!(r.stats().stray_blocks, 2);
        // That ACK was lost too: the timer says it again.
        now = r.poll_timeout().unwrap();
        r.handle_timeout(now);
        assert_eq!(
            acks(&drain(&mut r)),
            vec![1],
            "the last in-order block again"
        );
        for b in 2..=5 {
            r.handle(1, TID, &data(b, &[0; 512]), now);
        }
        assert_eq!(acks(&drain(&mut r)), vec![5]);
        r.handle(1, TID, &data(6, &[1; 3]), now);
        assert_eq!(acks(&drain(&mut r)), vec![6]);
        assert!(matches!(
            r.result(),
            Some(ReadResult::Done { bytes: 2563, .. })
        ));
        assert_eq!(r.stats().retransmits, 1);
    }

    #[test]
    fn gives_up_after_the_last_timeout_and_reports_not_found() {
        let mut now = Instant::now();
        let mut r = TftpRead::new(SRV, "k", &habits(1432, None, false), false, 1, now);
        let mut sent = drain(&mut r).len();
        while let Some(d) = r.poll_timeout() {
            now = d;
            r.handle_timeout(now);
            sent += drain(&mut r).len();
        }
        assert_eq!(r.result(), Some(&ReadResult::TimedOut));
        assert_eq!(sent, 3, "the RRQ and two retransmissions");

        let mut r = TftpRead::new(SRV, "missing", &habits(1432, None, false), false, 1, now);
        drain(&mut r);
        let mut e = Vec::new();
        emit_error(&mut e, ErrorCode::FileNotFound, "no");
        r.handle(1, TID, &e, now);
        assert!(matches!(r.result(), Some(ReadResult::NotFound(_))));
    }

    #[test]
    fn other_tids_get_error_5_and_bad_oacks_abort() {
        let now = Instant::now();
        let mut r = TftpRead::new(SRV, "k", &habits(1432, None, false), false, 1, now);
        drain(&mut r);
        r.handle(1, TID, &data(1, &[0; 512]), now);
        assert_eq!(r.blksize, 512, "no OACK: RFC 1350 block size");
        drain(&mut r);
        let other = SocketAddrV4::new(*SRV.ip(), 5555);
        r.handle(1, other, &data(2, &[0; 10]), now);
        let out = drain(&mut r);
        assert_eq!(out[0].to, other);
        assert_eq!(r.stats().wrong_tid, 1);

        let mut r = TftpRead::new(SRV, "k", &habits(1432, None, false), false, 1, now);
        drain(&mut r);
        r.handle(
            1,
            TID,
            &oack(AcceptedOptions {
                blksize: Some(9000),
                ..Default::default()
            }),
            now,
        );
        assert!(matches!(r.result(), Some(ReadResult::Failed(_))));
    }

    #[test]
    fn tsize_mismatch_fails() {
        let now = Instant::now();
        let mut r = TftpRead::new(SRV, "k", &habits(512, None, false), false, 1, now);
        drain(&mut r);
        r.handle(
            1,
            TID,
            &oack(AcceptedOptions {
                blksize: Some(512),
                tsize: Some(100),
                ..Default::default()
            }),
            now,
        );
        r.handle(1, TID, &data(1, &[0; 99]), now);
        assert!(matches!(r.result(), Some(ReadResult::Failed(_))));
    }
}
