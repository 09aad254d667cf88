//! TFTP under abuse (issue 16), against a real `baton serve` on loopback: requests that
//! are never acknowledged from a few addresses, amplification with and without options
//! and in single-port mode, floods of refused requests, over-long timeouts. Each test
//! does the abuse, checks the bound, then shows that a normal boot fetch still works.
//! Every flood is bounded in count; every wait has a deadline.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::host::{Host, HostBuilder};
use common::require::require_tftp_hpa;
use common::tftp::{fetch, rrq, tftp_get, Fetch, Peer, Reply};
use common::{assert_same_bytes, eventually, pattern};

/// A TFTP host (debug log) serving `files`, with `toml` as its config file.
fn server(files: &[(&str, Vec<u8>)], toml: &str) -> Host {
    let mut b = HostBuilder::tftp();
    if !toml.is_empty() {
        b = b.config(toml);
    }
    let s = b.start();
    for (name, bytes) in files {
        s.put(name, bytes);
    }
    s
}

/// A normal boot fetch: the real tftp-hpa client (from 127.0.0.1) when installed, and an
/// RFC 7440 client from `src` with a window; both must get every byte.
#[track_caller]
fn normal_fetch_works(s: &Host, name: &str, want: &[u8], src: &str) {
    if require_tftp_hpa() {
        let got = tftp_get(s.tftp(), name).unwrap_or_else(|e| panic!("tftp-hpa get {name}: {e}"));
        assert_same_bytes(&got, want, name);
    }
    let d = fetch(
        &Peer::bind(src),
        s.tftp(),
        &rrq(name, &[("blksize", "1024"), ("windowsize", "8")]),
        Fetch::default(),
    )
    .unwrap_or_else(|e| panic!("fetch {name} from {src}: {e}"));
    assert_same_bytes(&d.data, want, name);
}

/// Datagrams `sock` receives until `silence` passes without one: (count, bytes).
fn drain(sock: &UdpSocket, silence: Duration) -> (u64, u64) {
    let mut buf = vec![0u8; 65_536];
    sock.set_read_timeout(Some(silence)).unwrap();
    let (mut n, mut bytes) = (0, 0);
    while let Ok((len, _)) = sock.recv_from(&mut buf) {
        n += 1;
        bytes += len as u64;
    }
    (n, bytes)
}

/// The lockout: 1,100 requests with `timeout=255`, never acknowledged, from each
/// of four addresses. New clients must still be served at once (they take the place of
/// the attackers' unproven transfers), the attackers get at most three packets per
/// request, and every attacker slot is free within 3 x max_timeout.
#[test]
fn four_addresses_of_unacknowledged_requests_do_not_lock_out_a_boot() {
    let content = pattern(100_000, 161);
    // A 2 s cap keeps the test short; the bound scales with it (defaults: 10 s, 30 s).
    let s = server(&[("f", content.clone())], "[tftp]\nmax_timeout_ms = 2000\n");
    let attackers: Vec<UdpSocket> = (11..15)
        .map(|i| {
            let a = UdpSocket::bind(format!("127.0.0.{i}:0")).unwrap();
            for _ in 0..1100 {
                a.send_to(&rrq("f", &[("timeout", "255")]), s.tftp())
                    .unwrap();
            }
            a
        })
        .collect();
    let flood_end = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || s
            .api
            .metric("baton_tftp_requests_total")
            >= 4400.0),
        "the server did not see the 4,400 requests"
    );
    let active = s.api.metric("baton_tftp_active_transfers");
    eprintln!("after 4 x 1,100 unacknowledged requests: {active} transfers active");
    assert!(active <= 4096.0, "more transfers than slots: {active}");

    // A new client is served at once, from a new address and from 127.0.0.1.
    let t = Instant::now();
    normal_fetch_works(&s, "f", &content, "127.0.0.20:0");
    eprintln!("normal fetches during the lockout took {:?}", t.elapsed());

    // Nothing asked for a timeout of 255 s got it: no OACK (no other option), DATA 1 and
    // at most two copies per request (plus rate-limited busy ERRORs).
    for (i, a) in attackers.iter().enumerate() {
        let (n, _) = drain(a, Duration::from_millis(300));
        assert!(
            n <= 3 * 1100 + 600,
            "attacker {i} got {n} datagrams for 1,100 requests"
        );
    }
    // Every unproven transfer ends within 3 x 2 s of its request.
    assert!(
        eventually(Duration::from_secs(12), || s
            .api
            .metric("baton_tftp_active_transfers")
            == 0.0),
        "attacker transfers still active {:?} after the flood: {}",
        flood_end.elapsed(),
        s.api.metric("baton_tftp_active_transfers")
    );
    eprintln!(
        "all slots free {:?} after the flood; evicted {}, busy refusals {}",
        flood_end.elapsed(),
        s.api.metric("baton_tftp_evicted_total"),
        s.api
            .metric_or_zero("baton_tftp_refused_total{reason=\"busy\"}")
    );
    assert!(
        s.api
            .metric_or_zero("baton_tftp_options_ignored_total{reason=\"timeout_over_limit\"}")
            >= 4000.0
    );
    normal_fetch_works(&s, "f", &content, "127.0.0.21:0");
}

/// Before a client has acknowledged anything it gets its first packet and two copies:
/// a 20-byte request without options gets 3 x 516 bytes (it got 6 x 516).
#[test]
fn unacknowledged_request_gets_three_packets() {
    let content = pattern(2048, 162);
    let s = server(&[("abcdefghijk", content.clone())], "");
    let victim = UdpSocket::bind("127.0.0.30:0").unwrap();
    let req = rrq("abcdefghijk", &[]);
    assert_eq!(req.len(), 20);
    victim.send_to(&req, s.tftp()).unwrap();
    let (n, bytes) = drain(&victim, Duration::from_millis(2500));
    eprintln!("20-byte request, never acknowledged: {n} datagrams, {bytes} bytes back");
    assert_eq!((n, bytes), (3, 3 * 516));
    normal_fetch_works(&s, "abcdefghijk", &content, "127.0.0.31:0");
}

/// The 25.1 MB: blksize 65464, windowsize 64, one ACK 0, then silence. Now one
/// window and five one-block probes (max_retries), counted by the server.
#[test]
fn one_ack_brings_one_window_not_six() {
    let big = pattern(30 << 20, 163);
    let s = server(&[("big", big.clone())], "");
    let victim = Peer::bind("127.0.0.32:0");
    victim.send(
        s.tftp(),
        &rrq("big", &[("blksize", "65464"), ("windowsize", "64")]),
    );
    let (oack, tid) = victim.expect("OACK");
    assert!(matches!(oack, Reply::Oack(_)), "{oack:?}");
    victim.ack(tid, 0);
    s.expect_log(
        &["tftp transfer failed", "path=big", "reason=\"timeout\""],
        Duration::from_secs(20),
    );
    let sent = s.api.metric("baton_tftp_data_packets_total");
    eprintln!(
        "one ACK 0: {sent} DATA packets sent, {} bytes",
        sent as u64 * 65_468
    );
    assert_eq!(
        sent,
        64.0 + 5.0,
        "one window of 64, then five one-block probes"
    );
    normal_fetch_works(&s, "big", &big, "127.0.0.33:0");
}

/// Single-port mode: a forged request and ACK 0 sent back to back to the listening port
/// (the attacker never reads the OACK) get three OACKs and no data; an ACK 0 sent after
/// the OACK (a client that reads it, then goes silent) gets one window and five probes.
#[test]
fn single_port_forged_request_and_ack_get_no_window() {
    let big = pattern(30 << 20, 164);
    let s = HostBuilder::tftp().arg("--tftp-single-port").start();
    s.put("big", &big);
    let victim = UdpSocket::bind("127.0.0.34:0").unwrap();
    victim
        .send_to(
            &rrq("big", &[("blksize", "65464"), ("windowsize", "64")]),
            s.tftp(),
        )
        .unwrap();
    victim.send_to(&[0, 4, 0, 0], s.tftp()).unwrap();
    let (n, bytes) = drain(&victim, Duration::from_millis(2500));
    eprintln!("single-port, RRQ + ACK 0 back to back: {n} datagrams, {bytes} bytes back");
    assert_eq!(n, 3, "the OACK and two copies");
    assert!(bytes < 3 * 100, "{bytes} bytes: OACKs only");
    assert_eq!(s.api.metric_or_zero("baton_tftp_data_packets_total"), 0.0);

    let reader = Peer::bind("127.0.0.35:0");
    reader.send(
        s.tftp(),
        &rrq("big", &[("blksize", "65464"), ("windowsize", "64")]),
    );
    let (oack, from) = reader.expect("OACK");
    assert!(matches!(oack, Reply::Oack(_)));
    reader.ack(from, 0);
    s.expect_log(
        &["tftp transfer failed", "path=big", "client=127.0.0.35"],
        Duration::from_secs(20),
    );
    assert_eq!(s.api.metric("baton_tftp_data_packets_total"), 69.0);
    if require_tftp_hpa() {
        let small = pattern(5000, 165);
        s.put("small", &small);
        assert_same_bytes(&tftp_get(s.tftp(), "small").unwrap(), &small, "small");
    }
}

/// ERROR replies and refusal log lines are rate-limited per source, and what is dropped
/// is counted; another source still gets its answer.
#[test]
fn error_replies_and_refusal_logs_are_rate_limited_per_source() {
    let content = pattern(3000, 166);
    let s = server(
        &[("f", content.clone())],
        "[tftp]\nerror_replies_per_minute = 5\n",
    );
    let flooder = UdpSocket::bind("127.0.0.40:0").unwrap();
    for i in 0..200 {
        flooder
            .send_to(&rrq(&format!("missing-{i}"), &[]), s.tftp())
            .unwrap();
    }
    let (n, _) = drain(&flooder, Duration::from_millis(1000));
    assert_eq!(n, 5, "five ERRORs, then nothing");
    let other = Peer::bind("127.0.0.41:0");
    other.send(s.tftp(), &rrq("missing", &[]));
    let (code, msg, _) = other.expect_error("file not found for another source");
    assert_eq!((code, msg.as_str()), (1, "file not found"));
    assert!(eventually(Duration::from_secs(5), || s.api.metric_or_zero(
        "baton_tftp_suppressed_total{what=\"error_reply\"}"
    ) == 195.0));
    let logged = s
        .log_lines(&["tftp request refused", "client=127.0.0.40"])
        .len();
    eprintln!("200 refused requests from one source: 5 ERRORs, {logged} log lines");
    assert!(logged <= 21, "{logged} refusal lines for one source");
    assert!(
        s.api
            .metric_or_zero("baton_tftp_suppressed_total{what=\"log\"}")
            >= 150.0
    );
    normal_fetch_works(&s, "f", &content, "127.0.0.42:0");
}

/// A client's `timeout` over tftp.max_timeout_ms is not granted (left out of the
/// OACK), and a transfer whose client goes silent frees its slot within
/// (max_retries + 1) x max_timeout.
#[test]
fn client_timeout_is_capped_and_an_abandoned_transfer_frees_its_slot() {
    let content = pattern(200_000, 167);
    let s = server(&[("f", content.clone())], "[tftp]\nmax_timeout_ms = 1000\n");
    let p = Peer::bind("127.0.0.50:0");
    p.send(s.tftp(), &rrq("f", &[("timeout", "255"), ("tsize", "0")]));
    let (r, tid) = p.expect("OACK");
    match r {
        Reply::Oack(o) => {
            assert_eq!(o.timeout, None, "timeout=255 must not be acknowledged");
            assert_eq!(o.tsize, Some(200_000));
        }
        other => panic!("want an OACK, got {other:?}"),
    }
    p.ack(tid, 0);
    let (d, _) = p.expect("DATA 1");
    assert!(matches!(d, Reply::Data { block: 1, .. }));
    let abandoned = Instant::now();
    // The client is proven (ACK 0), then silent: 5 probes 1 s apart, then the slot frees.
    assert!(
        eventually(Duration::from_secs(9), || s
            .api
            .metric("baton_tftp_active_transfers")
            == 0.0),
        "slot still held {:?} after the client went silent",
        abandoned.elapsed()
    );
    let took = abandoned.elapsed();
    eprintln!("abandoned transfer freed its slot after {took:?} (bound 6 x 1 s)");
    assert!(took <= Duration::from_millis(6 * 1000 + 1500), "{took:?}");
    let _: SocketAddr = tid;
    normal_fetch_works(&s, "f", &content, "127.0.0.51:0");
}
