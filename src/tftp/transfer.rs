//! The sans-IO state machine of one TFTP read transfer.
//!
//! It is fed parsed packets and instants and polled for what to send and when it next
//! wants a timer, in the manner of quinn-proto: no sockets, no clocks, so every loss,
//! duplication and reordering case is a plain unit test.
//!
//! Window logic (RFC 7440): the server sends `windowsize` blocks, then waits for an ACK.
//! An ACK of the last block of the window opens the next window; an ACK of a block inside
//! the window means the blocks after it were lost, so sending goes back to the block
//! after it. Blocks are numbered internally as `u64` from 1; the 16-bit wire number is
//! derived from it, which is all block-number rollover is.
//!
//! Amplification budget. A request costs its sender one datagram and may come from a
//! forged address, so until the client *proves* that it receives (its first valid ACK:
//! ACK 0 of the OACK, or an ACK of a DATA block), the transfer sends its first packet
//! (the OACK, or DATA 1 of at most 512 bytes: without options there is no window) and
//! at most [`UNPROVEN_RETRANSMITS`] copies of it, then gives up. Windows only ever go
//! out in answer to an ACK: when the timer fires, only the first unacknowledged block is
//! sent again (a probe, as TCP does after a retransmission timeout); the client's next
//! ACK (RFC 7440: the last block it has in order) brings the rest of the window. So one
//! datagram from a client never brings more than one window, plus at most
//! `max_retries` single-block probes.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::tftp::{self, AcceptedOptions, ErrorCode, Packet};

pub use crate::wire::tftp::Rollover;

/// Parameters fixed when the transfer starts (after option negotiation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Block size in bytes.
    pub blksize: u16,
    /// Blocks sent per window.
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Timeouts in a row before giving up.
    pub max_retries: u32,
    /// Block-number rollover.
    pub rollover: Rollover,
    /// The OACK to send first, if any option was accepted.
    pub oack: Option<AcceptedOptions>,
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The final block was acknowledged.
    Completed,
    /// The client read the OACK and aborted: the usual firmware size probe, not a failure.
    SizeProbe,
    /// The client sent an ERROR.
    ClientAborted {
        /// The client's error code.
        code: ErrorCode,
        /// The client's message.
        message: String,
    },
    /// No acknowledgement after the configured number of retransmissions.
    TimedOut,
    /// The server gave up for its own reason (e.g. shutdown).
    Aborted(&'static str),
}

impl Outcome {
    /// Short label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::SizeProbe => "size_probe",
            Outcome::ClientAborted { .. } => "client_error",
            Outcome::TimedOut => "timeout",
            Outcome::Aborted(_) => "aborted",
        }
    }

    /// True when the transfer counts as a failure in metrics.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Completed | Outcome::SizeProbe)
    }
}

/// Counters of one transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// DATA packets sent, retransmissions included.
    pub data_packets: u64,
    /// DATA packets sent more than once.
    pub retransmits: u64,
    /// Duplicate ACKs received.
    pub duplicate_acks: u64,
    /// Timer expiries that led to a retransmission.
    pub timeouts: u64,
    /// Packets ignored (stale ACKs, stray packets from the client).
    pub ignored: u64,
}

/// A run of consecutive DATA blocks to send now, as absolute block numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    /// First block.
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
}

impl Burst {
    /// Number of blocks.
    pub fn len(&self) -> u64 {
        self.last + 1 - self.first
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What the transfer wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A control packet (OACK), encoded.
    Control(Vec<u8>),
    /// DATA blocks: header with [`Transfer::header`], payload with [`Transfer::payload`].
    Data(Burst),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// OACK sent, waiting for ACK 0.
    AwaitOackAck,
    /// Sending data.
    Sending,
    /// Ended.
    Finished(Outcome),
}

/// Copies of the first packet sent to a client that has not acknowledged anything yet.
pub const UNPROVEN_RETRANSMITS: u32 = 2;

/// Fallback dup-ACK hold-off before the first round-trip sample.
const INITIAL_HOLDOFF: Duration = Duration::from_millis(50);
/// Shortest dup-ACK hold-off, however fast the path.
const MIN_HOLDOFF: Duration = Duration::from_millis(10);

/// One read transfer.
#[derive(Debug)]
pub struct Transfer {
    data: Bytes,
    p: Params,
    last_block: u64,
    state: State,
    /// Highest block acknowledged (0: nothing yet, or the OACK).
    acked: u64,
    /// Highest block put on the wire so far.
    sent_upto: u64,
    /// Pending blocks to send: `next_send..=send_end` (empty when `next_send > send_end`).
    next_send: u64,
    send_end: u64,
    oack_pending: bool,
    deadline: Option<Instant>,
    /// When the first packet (OACK or DATA 1) went out.
    first_tx: Option<Instant>,
    last_tx: Option<Instant>,
    window_sent_at: Option<Instant>,
    window_retransmitted: bool,
    retries: u32,
    /// The client has acknowledged something: it receives at its address.
    proven: bool,
    srtt: Option<Duration>,
    stats: Stats,
}

impl Transfer {
    /// Starts a transfer of `data` (already netascii-converted if that mode was asked).
    pub fn new(data: Bytes, p: Params, now: Instant) -> Self {
        let blk = u64::from(p.blksize.max(1));
        let last_block = data.len() as u64 / blk + 1;
        let mut t = Transfer {
            data,
            p: Params {
                windowsize: p.windowsize.max(1),
                blksize: p.blksize.max(1),
                ..p
            },
            last_block,
            state: State::Sending,
            acked: 0,
            sent_upto: 0,
            next_send: 1,
            send_end: 0,
            oack_pending: false,
            deadline: None,
            first_tx: None,
            last_tx: None,
            window_sent_at: None,
            window_retransmitted: false,
            retries: 0,
            proven: false,
            srtt: None,
            stats: Stats::default(),
        };
        if t.p.oack.is_some() {
            t.state = State::AwaitOackAck;
            t.oack_pending = true;
        } else {
            t.schedule_from(1);
        }
        t.deadline = Some(now);
        t
    }

    /// Negotiated parameters.
    pub fn params(&self) -> &Params {
        &self.p
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of DATA blocks in the file (the last one is shorter than blksize).
    pub fn total_blocks(&self) -> u64 {
        self.last_block
    }

    /// Bytes of file data acknowledged by the client.
    pub fn bytes_acked(&self) -> u64 {
        (self.acked * u64::from(self.p.blksize)).min(self.data.len() as u64)
    }

    /// The outcome, once finished.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            State::Finished(o) => Some(o),
            _ => None,
        }
    }

    /// True once the client has acknowledged something (see the module doc): until then
    /// the transfer sends at most `1 + UNPROVEN_RETRANSMITS` packets.
    pub fn is_proven(&self) -> bool {
        self.proven
    }

    /// Timeouts in a row allowed before giving up: fewer before the client is proven.
    fn retry_limit(&self) -> u32 {
        if self.proven {
            self.p.max_retries
        } else {
            self.p.max_retries.min(UNPROVEN_RETRANSMITS)
        }
    }

    /// True once finished.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished(_))
    }

    /// Ends the transfer for a server-side reason (nothing more is sent).
    pub fn abort(&mut self, why: &'static str) {
        self.finish(Outcome::Aborted(why));
    }

    fn finish(&mut self, o: Outcome) {
        self.state = State::Finished(o);
        self.deadline = None;
        self.oack_pending = false;
        self.next_send = 1;
        self.send_end = 0;
    }

    /// Queues blocks `from..` up to one window past the last acknowledged block (one
    /// block only before the client is proven).
    fn schedule_from(&mut self, from: u64) {
        let window = if self.proven {
            u64::from(self.p.windowsize)
        } else {
            1
        };
        self.next_send = from;
        self.send_end = (self.acked + window).min(self.last_block);
    }

    /// Queues the first unacknowledged block alone (a timer's retransmission).
    fn schedule_probe(&mut self) {
        self.next_send = self.acked + 1;
        self.send_end = (self.acked + 1).min(self.last_block);
    }

    fn holdoff(&self) -> Duration {
        let cap = self.p.timeout / 2;
        match self.srtt {
            Some(r) => (r * 4).clamp(MIN_HOLDOFF, cap.max(MIN_HOLDOFF)),
            None => INITIAL_HOLDOFF.min(cap),
        }
    }

    /// Maps a 16-bit ACK number to the absolute block in `acked..=sent_upto` it names.
    fn ack_to_abs(&self, block: u16) -> Option<u64> {
        let lo = self.acked;
        let hi = self.sent_upto.max(self.acked);
        match self.p.rollover {
            Rollover::Zero => {
                let delta = (hi as u16).wrapping_sub(block) as u64;
                let k = hi.checked_sub(delta)?;
                (k >= lo).then_some(k)
            }
            Rollover::One => (lo..=hi).rev().find(|&k| self.p.rollover.wire(k) == block),
        }
    }

    /// Feeds a packet received from the client's transfer ID.
    pub fn handle(&mut self, pkt: &Packet<'_>, now: Instant) {
        match pkt {
            Packet::Ack { block } => self.on_ack(*block, now),
            Packet::Error { code, message } => {
                let o = if self.state == State::AwaitOackAck
                    && self.p.oack.is_some_and(|o| o.tsize.is_some())
                {
                    Outcome::SizeProbe
                } else {
                    Outcome::ClientAborted {
                        code: *code,
                        message: message.to_string(),
                    }
                };
                if !self.is_finished() {
                    self.finish(o);
                }
            }
            // DATA, requests and OACKs make no sense from a reader: ignore, as tftpd-hpa does.
            _ => self.stats.ignored += 1,
        }
    }

    fn on_ack(&mut self, block: u16, now: Instant) {
        match self.state {
            State::Finished(_) => {}
            State::AwaitOackAck => {
                // An ACK 0 that arrived before the OACK went out acknowledges nothing: it
                // was sent blind (a forged request and ACK sent back to back).
                if block == 0 && self.first_tx.is_some_and(|t| now >= t) {
                    self.state = State::Sending;
                    self.retries = 0;
                    self.proven = true;
                    if let Some(t) = self.last_tx {
                        self.sample_rtt(now.saturating_duration_since(t));
                    }
                    self.schedule_from(1);
                } else {
                    self.stats.ignored += 1;
                }
            }
            State::Sending => {
                let Some(k) = self.ack_to_abs(block) else {
                    self.stats.ignored += 1;
                    return;
                };
                if k > self.acked {
                    if k == self.sent_upto && !self.window_retransmitted {
                        if let Some(t) = self.window_sent_at {
                            self.sample_rtt(now.saturating_duration_since(t));
                        }
                    }
                    self.acked = k;
                    self.retries = 0;
                    self.proven = true;
                    if k >= self.last_block {
                        self.finish(Outcome::Completed);
                        return;
                    }
                    if k < self.sent_upto {
                        // RFC 7440: an ACK inside the window means the client lost the
                        // block after it (and dropped what followed): go back to it.
                        self.window_retransmitted = true;
                    }
                    self.schedule_from(k + 1);
                } else {
                    // Duplicate ACK. Resending on every duplicate is the Sorcerer's
                    // Apprentice bug; resend at most once per hold-off period.
                    self.stats.duplicate_acks += 1;
                    let idle = self
                        .last_tx
                        .is_none_or(|t| now.saturating_duration_since(t) >= self.holdoff());
                    if idle && self.next_send > self.send_end {
                        if self.retries >= self.retry_limit() {
                            self.finish(Outcome::TimedOut);
                            return;
                        }
                        // Counts as a retry: only progress resets the count.
                        self.retries += 1;
                        self.window_retransmitted = true;
                        self.schedule_from(self.acked + 1);
                    }
                }
            }
        }
    }

    fn sample_rtt(&mut self, r: Duration) {
        self.srtt = Some(match self.srtt {
            None => r,
            Some(s) => (s * 7 + r) / 8,
        });
    }

    /// Next thing to send, if any. Call until `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.is_finished() {
            return None;
        }
        if self.oack_pending {
            self.oack_pending = false;
            self.first_tx.get_or_insert(now);
            self.last_tx = Some(now);
            self.deadline = Some(now + self.p.timeout);
            let mut buf = Vec::with_capacity(64);
            if let Some(o) = &self.p.oack {
                tftp::emit_oack(&mut buf, o);
            }
            return Some(Transmit::Control(buf));
        }
        if self.state == State::Sending && self.next_send <= self.send_end {
            let burst = Burst {
                first: self.next_send,
                last: self.send_end,
            };
            if burst.first <= self.sent_upto {
                self.stats.retransmits += self.sent_upto.min(burst.last) + 1 - burst.first;
            }
            if burst.first == self.acked + 1 {
                // A fresh window (not a slide): time it for the RTT estimate.
                self.window_sent_at = Some(now);
                if burst.first > self.sent_upto {
                    self.window_retransmitted = false;
                }
            }
            self.stats.data_packets += burst.len();
            self.sent_upto = self.sent_upto.max(burst.last);
            self.next_send = burst.last + 1;
            self.first_tx.get_or_insert(now);
            self.last_tx = Some(now);
            self.deadline = Some(now + self.p.timeout);
            return Some(Transmit::Data(burst));
        }
        None
    }

    /// When [`Transfer::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_finished() {
            None
        } else {
            self.deadline
        }
    }

    /// Advances timers: retransmits after a timeout (the OACK, or the first unacknowledged
    /// block alone), gives up after `max_retries` (or [`UNPROVEN_RETRANSMITS`] before the
    /// client is proven).
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d || self.is_finished() {
            return;
        }
        // Something queued but not yet polled: the deadline was "send now".
        if self.oack_pending || (self.state == State::Sending && self.next_send <= self.send_end) {
            return;
        }
        if self.retries >= self.retry_limit() {
            self.finish(Outcome::TimedOut);
            return;
        }
        self.retries += 1;
        self.stats.timeouts += 1;
        match self.state {
            State::AwaitOackAck => self.oack_pending = true,
            State::Sending => {
                self.window_retransmitted = true;
                self.schedule_probe();
            }
            State::Finished(_) => {}
        }
    }

    /// The 4-byte DATA header of absolute block `k`.
    #[inline]
    pub fn header(&self, k: u64) -> [u8; 4] {
        tftp::data_header(self.p.rollover.wire(k))
    }

    /// The payload of absolute block `k` (1-based); empty past the end.
    #[inline]
    pub fn payload(&self, k: u64) -> &[u8] {
        let blk = self.p.blksize as usize;
        let start = (k.saturating_sub(1) as usize)
            .saturating_mul(blk)
            .min(self.data.len());
        let end = start.saturating_add(blk).min(self.data.len());
        &self.data[start..end]
    }

    /// Size in bytes of a full DATA packet (header + blksize).
    pub fn segment_size(&self) -> usize {
        4 + self.p.blksize as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tftp::ErrorCode;
    use std::borrow::Cow;

    fn params(blksize: u16, windowsize: u16, oack: bool) -> Params {
        Params {
            blksize,
            windowsize,
            timeout: Duration::from_secs(1),
            max_retries: 5,
            rollover: Rollover::Zero,
            oack: oack.then(|| AcceptedOptions {
                blksize: Some(blksize),
                tsize: Some(0),
                ..Default::default()
            }),
        }
    }

    /// A windowed transfer past its handshake (OACK sent, ACK 0 received): proven, so
    /// its windows open. Without options there is no window (RFC 7440 needs the OACK).
    fn started(d: Bytes, blksize: u16, windowsize: u16, now: Instant) -> Transfer {
        let mut t = Transfer::new(d, params(blksize, windowsize, true), now);
        assert!(matches!(t.poll_transmit(now), Some(Transmit::Control(_))));
        t.handle(&Packet::Ack { block: 0 }, now);
        assert!(t.is_proven());
        t
    }

    fn data(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| (i * 7 + i / 251) as u8).collect::<Vec<_>>())
    }

    /// A simulated client: receives blocks, acks per window, reassembles the file.
    struct Client {
        got: Vec<u8>,
        expect: u64,
        window: u64,
        in_window: u64,
        rollover: Rollover,
        done: bool,
    }

    impl Client {
        fn new(window: u16, rollover: Rollover) -> Self {
            Client {
                got: vec![],
                expect: 1,
                window: window.into(),
                in_window: 0,
                rollover,
                done: false,
            }
        }
        /// Returns the ACK to send, if any.
        fn on_data(&mut self, wire: u16, payload: &[u8], blksize: usize) -> Option<u16> {
            if wire != self.rollover.wire(self.expect) {
                // Out of order or duplicate: ack the last in-order block (RFC 7440).
                return Some(self.rollover.wire(self.expect - 1));
            }
            self.got.extend_from_slice(payload);
            self.expect += 1;
            self.in_window += 1;
            if payload.len() < blksize {
                self.done = true;
                return Some(wire);
            }
            if self.in_window == self.window {
                self.in_window = 0;
                return Some(wire);
            }
            None
        }
    }

    /// Runs a transfer to the end over a channel that drops packets where `drop(seq)`.
    fn run(t: &mut Transfer, client: &mut Client, mut drop: impl FnMut(u64) -> bool) -> u64 {
        let mut now = Instant::now();
        let mut seq = 0u64;
        let mut guard = 0;
        let blk = t.params().blksize as usize;
        if t.params().oack.is_some() {
            match t.poll_transmit(now) {
                Some(Transmit::Control(_)) => {}
                other => panic!("expected OACK, got {other:?}"),
            }
            t.handle(&Packet::Ack { block: 0 }, now);
        }
        while !t.is_finished() {
            guard += 1;
            assert!(guard < 10_000_000, "no progress");
            let mut acks = vec![];
            while let Some(tx) = t.poll_transmit(now) {
                if let Transmit::Data(b) = tx {
                    for k in b.first..=b.last {
                        seq += 1;
                        if drop(seq) {
                            continue;
                        }
                        let h = t.header(k);
                        let wire = u16::from_be_bytes([h[2], h[3]]);
                        if let Some(a) = client.on_data(wire, t.payload(k), blk) {
                            acks.push(a);
                        }
                    }
                }
            }
            now += Duration::from_micros(100);
            if acks.is_empty() {
                // Nothing came back: the client's own timer fires, then ours.
                now = t.poll_timeout().unwrap_or(now).max(now);
                if client.expect > 1 {
                    t.handle(
                        &Packet::Ack {
                            block: client.rollover.wire(client.expect - 1),
                        },
                        now,
                    );
                }
                t.handle_timeout(now);
            } else {
                for a in acks {
                    seq += 1;
                    if drop(seq) {
                        continue;
                    }
                    t.handle(&Packet::Ack { block: a }, now);
                }
            }
        }
        seq
    }

    #[test]
    fn lockstep_transfer_without_options() {
        let d = data(512 * 3 + 100);
        let mut t = Transfer::new(d.clone(), params(512, 1, false), Instant::now());
        let mut c = Client::new(1, Rollover::Zero);
        run(&mut t, &mut c, |_| false);
        assert_eq!(t.outcome(), Some(&Outcome::Completed));
        assert_eq!(c.got, d);
        assert_eq!(t.stats().retransmits, 0);
    }

    #[test]
    fn sizes_at_block_boundaries() {
        for n in [0, 1, 511, 512, 513, 1024, 4096] {
            for w in [1, 4, 16] {
                let d = data(n);
                let mut t = Transfer::new(d.clone(), params(512, w, true), Instant::now());
                let mut c = Client::new(w, Rollover::Zero);
                run(&mut t, &mut c, |_| false);
                assert_eq!(t.outcome(), Some(&Outcome::Completed), "n={n} w={w}");
                assert_eq!(c.got, d, "n={n} w={w}");
                // A multiple of blksize ends with an empty block.
                assert_eq!(t.total_blocks(), n as u64 / 512 + 1);
            }
        }
    }

    #[test]
    fn rollover_past_65535_blocks() {
        // 70000 blocks of 8 bytes: wraps the 16-bit counter once.
        let d = data(8 * 70_000 + 3);
        for (w, r) in [
            (1, Rollover::Zero),
            (16, Rollover::Zero),
            (8, Rollover::One),
        ] {
            let mut p = params(8, w, true);
            p.rollover = r;
            let mut t = Transfer::new(d.clone(), p, Instant::now());
            let mut c = Client::new(w, r);
            run(&mut t, &mut c, |_| false);
            assert_eq!(t.outcome(), Some(&Outcome::Completed));
            assert_eq!(c.got.len(), d.len());
            assert_eq!(c.got, d);
        }
        assert_eq!(Rollover::Zero.wire(65536), 0);
        assert_eq!(Rollover::One.wire(65535), 65535);
        assert_eq!(Rollover::One.wire(65536), 1);
        assert_eq!(Rollover::One.wire(65536 + 65534), 65535);
        assert_eq!(Rollover::One.wire(65536 + 65535), 1);
    }

    #[test]
    fn survives_loss_of_data_and_acks() {
        let d = data(512 * 200 + 17);
        for w in [1u16, 4, 16] {
            for every in [5u64, 11, 29] {
                let mut p = params(512, w, true);
                p.max_retries = 10;
                let mut t = Transfer::new(d.clone(), p, Instant::now());
                let mut c = Client::new(w, Rollover::Zero);
                // Pseudo-random loss of about one packet in `every`.
                run(&mut t, &mut c, |s| {
                    (s.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % every == 0
                });
                assert_eq!(
                    t.outcome(),
                    Some(&Outcome::Completed),
                    "w={w} every={every}"
                );
                assert_eq!(c.got, d, "w={w} every={every}");
                assert!(t.stats().retransmits > 0);
            }
        }
    }

    /// Runs `t` with no client input until it gives up; returns what it sent:
    /// (OACKs, DATA packets, DATA payload bytes).
    fn run_silent(t: &mut Transfer, mut now: Instant) -> (u64, u64, u64) {
        let (mut oacks, mut pkts, mut bytes) = (0, 0, 0);
        while !t.is_finished() {
            while let Some(tx) = t.poll_transmit(now) {
                match tx {
                    Transmit::Control(_) => oacks += 1,
                    Transmit::Data(b) => {
                        pkts += b.len();
                        bytes += (b.first..=b.last)
                            .map(|k| t.payload(k).len() as u64)
                            .sum::<u64>();
                    }
                }
            }
            now = t.poll_timeout().unwrap();
            t.handle_timeout(now);
        }
        (oacks, pkts, bytes)
    }

    #[test]
    fn unproven_request_gets_three_packets() {
        // No options: DATA 1 (no window without options) and two copies, then nothing.
        let now = Instant::now();
        let mut t = Transfer::new(data(10_000), params(512, 4, false), now);
        assert_eq!(run_silent(&mut t, now), (0, 3, 3 * 512));
        assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
        assert!(!t.is_proven());
        assert_eq!(t.poll_timeout(), None);
        // Options: the OACK and two copies.
        let mut t = Transfer::new(data(10), params(512, 1, true), now);
        assert_eq!(run_silent(&mut t, now), (3, 0, 0));
        assert_eq!(1 + UNPROVEN_RETRANSMITS, 3);
    }

    #[test]
    fn one_ack_brings_one_window_and_single_block_probes() {
        // The figure: blksize 65464, windowsize 64, one ACK 0, then silence.
        // Before: the window again on each of 5 timeouts (25.1 MB). Now: one window and
        // five one-block probes.
        let now = Instant::now();
        let mut p = params(65464, 64, true);
        p.max_retries = 5;
        let mut t = Transfer::new(data(30 << 20), p, now);
        assert!(matches!(t.poll_transmit(now), Some(Transmit::Control(_))));
        t.handle(&Packet::Ack { block: 0 }, now);
        assert!(t.is_proven());
        let (_, pkts, bytes) = run_silent(&mut t, now);
        assert_eq!(pkts, 64 + 5);
        assert_eq!(bytes, 69 * 65464);
        assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
    }

    #[test]
    fn ack_0_before_the_oack_is_sent_proves_nothing() {
        // A forged ACK 0 racing the request (single-port mode) must not open the window.
        let now = Instant::now();
        let mut t = Transfer::new(data(100_000), params(1024, 16, true), now);
        t.handle(&Packet::Ack { block: 0 }, now);
        assert!(!t.is_proven());
        let sent = now + Duration::from_millis(2);
        assert!(matches!(t.poll_transmit(sent), Some(Transmit::Control(_))));
        assert_eq!(t.poll_transmit(sent), None);
        // Also when it is handled after the OACK left but had arrived before (queued).
        t.handle(&Packet::Ack { block: 0 }, now + Duration::from_millis(1));
        assert!(!t.is_proven());
        assert_eq!(t.poll_transmit(sent), None);
        // An ACK 0 that arrived after the OACK opens the window.
        t.handle(&Packet::Ack { block: 0 }, sent + Duration::from_micros(50));
        assert!(t.is_proven());
        assert!(matches!(t.poll_transmit(sent), Some(Transmit::Data(_))));
    }

    #[test]
    fn timer_probes_one_block_and_the_clients_ack_brings_the_window() {
        let mut now = Instant::now();
        let mut t = started(data(512 * 40), 512, 8, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 1, last: 8 }))
        );
        now += Duration::from_millis(1);
        t.handle(&Packet::Ack { block: 8 }, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 9, last: 16 }))
        );
        // Window lost: the timer sends block 9 alone.
        now = t.poll_timeout().unwrap();
        t.handle_timeout(now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 9, last: 9 }))
        );
        assert_eq!(t.poll_transmit(now), None);
        // The client's re-ACK of 8 (after its own timeout) brings the window back.
        now += Duration::from_millis(300);
        t.handle(&Packet::Ack { block: 8 }, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 9, last: 16 }))
        );
        // An ACK of the probe itself slides the window as usual.
        now += Duration::from_millis(1);
        t.handle(&Packet::Ack { block: 9 }, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst {
                first: 10,
                last: 17
            }))
        );
    }

    #[test]
    fn proven_transfer_gives_up_after_max_retries() {
        let mut now = Instant::now();
        let mut t = started(data(10_000), 512, 4, now);
        t.poll_transmit(now);
        now += Duration::from_millis(1);
        t.handle(&Packet::Ack { block: 4 }, now);
        assert!(t.is_proven());
        let (_, pkts, _) = run_silent(&mut t, now);
        assert_eq!(pkts, 4 + 5, "a window, then max_retries one-block probes");
        assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
    }

    #[test]
    fn size_probe_is_not_a_failure() {
        let now = Instant::now();
        let mut t = Transfer::new(data(10), params(1468, 4, true), now);
        assert!(matches!(t.poll_transmit(now), Some(Transmit::Control(_))));
        t.handle(
            &Packet::Error {
                code: ErrorCode::OptionNegotiation,
                message: Cow::Borrowed(""),
            },
            now,
        );
        assert_eq!(t.outcome(), Some(&Outcome::SizeProbe));
        assert!(!t.outcome().unwrap().is_failure());
        assert!(t.poll_transmit(now).is_none());
    }

    #[test]
    fn client_error_mid_transfer_is_a_failure() {
        let now = Instant::now();
        let mut t = Transfer::new(data(5000), params(512, 1, false), now);
        t.poll_transmit(now);
        t.handle(&Packet::Ack { block: 1 }, now);
        t.handle(
            &Packet::Error {
                code: ErrorCode::DiskFull,
                message: Cow::Borrowed("full"),
            },
            now,
        );
        assert!(t.outcome().unwrap().is_failure());
    }

    #[test]
    fn duplicate_acks_do_not_cause_sorcerers_apprentice() {
        // Every ACK arrives twice, immediately: the second copy must not trigger a resend.
        let mut now = Instant::now();
        let d = data(512 * 100);
        let mut t = Transfer::new(d, params(512, 1, false), now);
        let mut sent = 0u64;
        while !t.is_finished() {
            let mut last = None;
            while let Some(Transmit::Data(b)) = t.poll_transmit(now) {
                sent += b.len();
                last = Some(b.last);
            }
            let Some(k) = last else { break };
            now += Duration::from_micros(200);
            let ack = Packet::Ack { block: k as u16 };
            t.handle(&ack, now);
            t.handle(&ack, now + Duration::from_micros(10));
        }
        assert_eq!(t.outcome(), Some(&Outcome::Completed));
        assert_eq!(sent, 101, "each block exactly once");
        assert_eq!(t.stats().duplicate_acks, 100);
    }

    #[test]
    fn duplicate_ack_after_holdoff_resends_the_window() {
        let mut now = Instant::now();
        let mut t = started(data(512 * 20), 512, 4, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 1, last: 4 }))
        );
        now += Duration::from_millis(1);
        t.handle(&Packet::Ack { block: 4 }, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 5, last: 8 }))
        );
        // Block 5 lost; the client times out and re-acks 4.
        now += Duration::from_millis(300);
        t.handle(&Packet::Ack { block: 4 }, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 5, last: 8 }))
        );
        assert_eq!(t.stats().retransmits, 4);
    }

    #[test]
    fn mid_window_ack_goes_back() {
        let mut now = Instant::now();
        let mut t = started(data(512 * 20), 512, 8, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 1, last: 8 }))
        );
        // Block 4 lost: after its timeout the client acks 3.
        now += Duration::from_millis(500);
        t.handle(&Packet::Ack { block: 3 }, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 4, last: 11 }))
        );
    }

    #[test]
    fn eager_gap_ack_goes_back_at_once() {
        // A client that acks the last in-order block as soon as it sees a gap.
        let mut now = Instant::now();
        let mut t = started(data(512 * 20), 512, 8, now);
        t.poll_transmit(now);
        now += Duration::from_micros(100);
        t.handle(&Packet::Ack { block: 3 }, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 4, last: 11 }))
        );
    }

    #[test]
    fn reordered_and_stale_acks_are_ignored() {
        let mut now = Instant::now();
        let mut t = started(data(512 * 40), 512, 4, now);
        t.poll_transmit(now);
        now += Duration::from_millis(1);
        t.handle(&Packet::Ack { block: 4 }, now);
        t.poll_transmit(now);
        // An ACK from the future (never sent) and an old one: both ignored.
        t.handle(&Packet::Ack { block: 30 }, now);
        t.handle(&Packet::Ack { block: 2 }, now);
        assert_eq!(t.poll_transmit(now), None);
        assert_eq!(t.stats().ignored, 2);
        t.handle(
            &Packet::Data {
                block: 1,
                data: b"x",
            },
            now,
        );
        assert_eq!(t.stats().ignored, 3);
    }

    #[test]
    fn reordering_on_the_wire_still_delivers() {
        // Deliver each window's packets in reverse order to a strict in-order client.
        let d = data(512 * 50 + 1);
        let mut now = Instant::now();
        let mut t = started(d.clone(), 512, 4, now);
        let mut c = Client::new(4, Rollover::Zero);
        let mut guard = 0;
        while !t.is_finished() {
            guard += 1;
            assert!(guard < 100_000);
            let mut pkts = vec![];
            while let Some(Transmit::Data(b)) = t.poll_transmit(now) {
                for k in b.first..=b.last {
                    pkts.push((t.header(k), t.payload(k).to_vec()));
                }
            }
            if guard % 3 == 0 {
                pkts.reverse();
            }
            now += Duration::from_millis(1);
            let mut acked = false;
            for (h, p) in pkts {
                if let Some(a) = c.on_data(u16::from_be_bytes([h[2], h[3]]), &p, 512) {
                    t.handle(&Packet::Ack { block: a }, now);
                    acked = true;
                }
            }
            if !acked {
                now = t.poll_timeout().unwrap().max(now);
                t.handle_timeout(now);
            }
        }
        assert_eq!(t.outcome(), Some(&Outcome::Completed));
        assert_eq!(c.got, d);
    }

    #[test]
    fn final_empty_block_is_sent_and_acked() {
        let now = Instant::now();
        let mut t = started(data(1024), 512, 8, now);
        assert_eq!(
            t.poll_transmit(now),
            Some(Transmit::Data(Burst { first: 1, last: 3 }))
        );
        assert_eq!(t.payload(3).len(), 0);
        t.handle(&Packet::Ack { block: 3 }, now);
        assert_eq!(t.outcome(), Some(&Outcome::Completed));
    }
}
