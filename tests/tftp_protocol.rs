//! Protocol tests against a real `baton serve`: raw UDP sockets on loopback speaking
//! TFTP (RFC 1350, 2347, 2348, 2349, 7440) byte by byte.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use baton::wire::tftp::{AcceptedOptions, ErrorCode};
use common::host::{Host, HostBuilder};
use common::require::require_ipv6_loopback;
use common::tftp::{
    fetch, fetch_ok, finish_fetch, request, rrq, Fetch, Peer, Reply, REPLY_TIMEOUT, SILENCE,
};
use common::{assert_same_bytes, pattern};

/// RFC 1350 error codes, as on the wire.
const NOT_DEFINED: u16 = 0;
const FILE_NOT_FOUND: u16 = 1;
const ACCESS_VIOLATION: u16 = 2;
const ILLEGAL_OPERATION: u16 = 4;
const UNKNOWN_TID: u16 = 5;

/// Sends `packet` and returns the first reply, panicking if none comes.
#[track_caller]
fn first_reply(server: SocketAddr, packet: &[u8]) -> (Reply, SocketAddr, Peer) {
    let peer = Peer::new();
    peer.send(server, packet);
    let (r, from) = peer.expect("a reply to the request");
    (r, from, peer)
}

/// Sends `packet` from a fresh peer and expects an ERROR: (code, message, sender).
#[track_caller]
fn error_reply(server: SocketAddr, packet: &[u8]) -> (u16, String, SocketAddr) {
    let p = Peer::new();
    p.send(server, packet);
    p.expect_error("an ERROR")
}

// ---------------------------------------------------------------------------------
// Option negotiation (RFC 2347): OACK only when an option was accepted.
// ---------------------------------------------------------------------------------

#[test]
fn request_without_options_gets_data_1_directly() {
    let s = HostBuilder::tftp().start();
    let content = pattern(1500, 1);
    s.put("plain.bin", &content);
    let (r, from, _) = first_reply(s.tftp(), &rrq("plain.bin", &[]));
    match r {
        Reply::Data { block: 1, data } => assert_same_bytes(&data, &content[..512], "block 1"),
        other => panic!("RRQ without options must be answered with DATA 1, got {other:?}"),
    }
    assert_ne!(
        from.port(),
        s.tftp().port(),
        "transfer must use its own port"
    );
    let d = fetch_ok(s.tftp(), "plain.bin", &[]);
    assert_eq!(d.oack, None);
    assert_same_bytes(&d.data, &content, "plain.bin");
}

#[test]
fn request_with_only_unknown_options_gets_data_1_directly() {
    let s = HostBuilder::tftp().start();
    s.put("f", b"unknown options are ignored");
    let (r, _, _) = first_reply(s.tftp(), &rrq("f", &[("multicast", ""), ("x-vendor", "1")]));
    assert!(
        matches!(&r, Reply::Data { block: 1, data } if data == b"unknown options are ignored"),
        "unknown options only: no OACK, DATA 1 at once; got {r:?}"
    );
}

#[test]
fn out_of_range_options_are_ignored_without_oack() {
    let s = HostBuilder::tftp().start();
    let content = pattern(1300, 2);
    s.put("f", &content);
    for (name, value) in [("blksize", "4"), ("windowsize", "0"), ("timeout", "0")] {
        let (r, _, _) = first_reply(s.tftp(), &rrq("f", &[(name, value)]));
        match r {
            Reply::Data { block: 1, data } => {
                assert_eq!(data.len(), 512, "{name}={value} ignored: default blksize")
            }
            other => panic!(
                "{name}={value} is out of range and must be ignored (no OACK), got {other:?}"
            ),
        }
    }
    let d = fetch_ok(
        s.tftp(),
        "f",
        &[("blksize", "4"), ("windowsize", "0"), ("timeout", "0")],
    );
    assert_eq!(d.oack, None);
    assert_same_bytes(&d.data, &content, "f");
}

#[test]
fn tsize_is_answered_with_the_actual_size_and_data_waits_for_ack_0() {
    let s = HostBuilder::tftp().start();
    let content = pattern(70_001, 3);
    s.put("sized", &content);
    let (r, tid, peer) = first_reply(s.tftp(), &rrq("sized", &[("tsize", "0")]));
    let want = AcceptedOptions {
        tsize: Some(70_001),
        ..Default::default()
    };
    assert_eq!(
        r,
        Reply::Oack(want),
        "OACK must carry tsize=<file size> only"
    );
    peer.expect_silence(SILENCE, "no DATA before the client's ACK 0");
    peer.ack(tid, 0);
    let (r, from) = peer.expect("DATA 1 after ACK 0");
    assert_eq!(
        from, tid,
        "DATA must come from the same transfer ID as the OACK"
    );
    assert!(
        matches!(&r, Reply::Data { block: 1, data } if data[..] == content[..512]),
        "got {r:?}"
    );
    let d = fetch_ok(s.tftp(), "sized", &[("tsize", "0")]);
    assert_same_bytes(&d.data, &content, "sized");
}

#[test]
fn tsize_in_netascii_mode_is_the_converted_size() {
    let s = HostBuilder::tftp().start();
    let text = b"line one\nline two\r\nbare\rcr\n";
    s.put("t.txt", text);
    let converted = baton::wire::tftp::to_netascii(text);
    let (r, _, _) = first_reply(
        s.tftp(),
        &request(1, b"t.txt", "netascii", &[("tsize", "0")]),
    );
    let Reply::Oack(o) = r else {
        panic!("expected an OACK, got {r:?}")
    };
    assert_eq!(
        o.tsize,
        Some(converted.len() as u64),
        "tsize counts the bytes actually sent"
    );
    let peer = Peer::new();
    let d = fetch(
        &peer,
        s.tftp(),
        &request(1, b"t.txt", "netascii", &[]),
        Fetch::default(),
    )
    .unwrap();
    assert_same_bytes(&d.data, &converted, "netascii bytes on the wire");
}

#[test]
fn blksize_is_capped_to_fit_the_configured_mtu() {
    let s = HostBuilder::tftp().flag("--tftp-mtu", 1500).start();
    let content = pattern(5000, 4);
    s.put("k", &content);
    let d = fetch_ok(s.tftp(), "k", &[("blksize", "65464")]);
    assert_eq!(
        d.oack.and_then(|o| o.blksize),
        Some(1468),
        "1500 - 20 (IPv4) - 8 (UDP) - 4 (TFTP) = 1468"
    );
    assert_eq!(d.blocks, 4, "5000 bytes in blocks of 1468");
    assert_same_bytes(&d.data, &content, "k");
}

#[test]
fn blksize_is_capped_by_max_blksize() {
    let s = HostBuilder::tftp().flag("--tftp-max-blksize", 1024).start();
    let content = pattern(4096, 5);
    s.put("k", &content);
    let d = fetch_ok(s.tftp(), "k", &[("blksize", "1468")]);
    assert_eq!(d.oack.and_then(|o| o.blksize), Some(1024));
    assert_eq!(
        d.blocks, 5,
        "4096 = 4 full blocks of 1024 + an empty final block"
    );
    assert_same_bytes(&d.data, &content, "k");
}

#[test]
fn windowsize_is_capped_by_max_windowsize() {
    let s = HostBuilder::tftp().flag("--tftp-max-windowsize", 4).start();
    let content = pattern(512 * 20, 6);
    s.put("w", &content);
    let (r, tid, peer) = first_reply(s.tftp(), &rrq("w", &[("windowsize", "16")]));
    let Reply::Oack(o) = r else {
        panic!("expected an OACK, got {r:?}")
    };
    assert_eq!(
        o.windowsize,
        Some(4),
        "windowsize 16 capped to the configured 4"
    );
    peer.ack(tid, 0);
    for k in 1..=4u16 {
        let (r, _) = peer.expect("a block of the first window");
        assert!(
            matches!(r, Reply::Data { block, .. } if block == k),
            "want DATA {k}, got {r:?}"
        );
    }
    peer.expect_silence(SILENCE, "a window is 4 blocks: the server waits for ACK 4");
    peer.ack(tid, 4);
    let (r, _) = peer.expect("block 5");
    assert!(matches!(r, Reply::Data { block: 5, .. }), "got {r:?}");
    let d = fetch_ok(s.tftp(), "w", &[("windowsize", "16")]);
    assert_eq!(d.windowsize, 4);
    assert_same_bytes(&d.data, &content, "w");
}

// ---------------------------------------------------------------------------------
// Transfer engine on the wire.
// ---------------------------------------------------------------------------------

#[test]
fn block_numbers_roll_over_from_65535_to_0() {
    let s = HostBuilder::tftp().start();
    let content = pattern(8 * 70_000, 7);
    s.put("long", &content);
    let peer = Peer::new();
    let d = fetch(
        &peer,
        s.tftp(),
        &rrq("long", &[("blksize", "8"), ("windowsize", "64")]),
        Fetch {
            deadline: Duration::from_secs(60),
            ..Fetch::default()
        },
    )
    .expect("70001-block transfer");
    assert_eq!(d.blksize, 8);
    assert_eq!(d.windowsize, 64);
    assert_eq!(
        d.after_65535,
        Some(0),
        "block 65535 must be followed by block 0"
    );
    assert_eq!(d.blocks, 70_001, "70000 full blocks and an empty final one");
    assert_same_bytes(&d.data, &content, "long");
}

/// Fetches files around block and window boundaries with blksize 1024, windowsize 8
/// (a window is batched into one GSO send, or one sendmmsg without GSO).
fn fetch_boundary_sizes(s: &Host, target: SocketAddr) {
    let sizes = [
        0,
        1,
        1023,
        1024,
        1025,
        1024 * 8 - 1,
        1024 * 8,
        1024 * 8 + 1,
        1024 * 12,
        1024 * 16,
        1024 * 100 + 1,
    ];
    for (i, n) in sizes.into_iter().enumerate() {
        let name = format!("f{n}");
        let content = pattern(n, 40 + i as u64);
        s.put(&name, &content);
        let opts = [("blksize", "1024"), ("windowsize", "8")];
        let d = fetch(&Peer::new(), target, &rrq(&name, &opts), Fetch::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(d.blocks, n as u64 / 1024 + 1, "{name}: block count");
        assert_same_bytes(&d.data, &content, &name);
    }
}

#[test]
fn windowed_transfers_at_block_and_window_boundaries() {
    let s = HostBuilder::tftp().start();
    fetch_boundary_sizes(&s, s.tftp());
}

#[test]
fn windowed_transfers_without_gso() {
    let s = HostBuilder::tftp().config("[tftp]\ngso = false\n").start();
    s.expect_log(
        &["tftp server listening", "gso=false"],
        Duration::from_secs(1),
    );
    fetch_boundary_sizes(&s, s.tftp());
}

#[test]
fn windowed_transfers_in_single_port_mode_on_a_wildcard() {
    // Windows on the shared socket carry the source address (PKTINFO) with the batch.
    let s = HostBuilder::tftp()
        .tftp_listen("0.0.0.0:0")
        .arg("--tftp-single-port")
        .start();
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), s.tftp().port());
    fetch_boundary_sizes(&s, target);
}

#[test]
fn rollover_one_config_follows_65535_with_1() {
    let s = HostBuilder::tftp()
        .config("[tftp]\nrollover = \"one\"\n")
        .start();
    let content = pattern(8 * 66_000 + 5, 36);
    s.put("long", &content);
    let d = fetch(
        &Peer::new(),
        s.tftp(),
        &rrq("long", &[("blksize", "8"), ("windowsize", "64")]),
        Fetch {
            deadline: Duration::from_secs(60),
            rollover_to_one: true,
            ..Fetch::default()
        },
    )
    .expect("66001-block transfer");
    assert_eq!(
        d.after_65535,
        Some(1),
        "rollover = \"one\": 65535 is followed by 1"
    );
    assert_same_bytes(&d.data, &content, "long");
}

/// Fetches a file while pretending every `every`-th DATA packet is lost; the client
/// acknowledges the last in-order block on a gap and again after 50 ms of silence.
fn lossy_fetch(opts: &[(&str, &str)], every: u64) {
    let s = HostBuilder::tftp().start();
    let content = pattern(512 * 150 + 11, 37);
    s.put("f", &content);
    let t0 = Instant::now();
    let d = fetch(
        &Peer::new(),
        s.tftp(),
        &rrq("f", opts),
        Fetch {
            drop_every: every,
            // A quick client timer: recovery must not wait for the server's 1 s timeout.
            retry: Duration::from_millis(50),
            ..Fetch::default()
        },
    )
    .unwrap_or_else(|e| panic!("lossy transfer with {opts:?}: {e}"));
    assert!(d.dropped > 0);
    assert_same_bytes(
        &d.data,
        &content,
        &format!("f with {opts:?}, 1 in {every} lost"),
    );
    eprintln!(
        "{opts:?}, 1 in {every} lost: {} blocks, {} DATA packets, {} dropped, {} ACKs re-sent, {:?}",
        d.blocks,
        d.data_packets,
        d.dropped,
        d.acks_resent,
        t0.elapsed()
    );
}

#[test]
fn lockstep_transfer_recovers_from_loss() {
    lossy_fetch(&[("timeout", "1")], 7);
}

#[test]
fn windowed_transfer_recovers_from_loss() {
    lossy_fetch(&[("windowsize", "8")], 13);
    lossy_fetch(&[("windowsize", "64"), ("blksize", "1024")], 50);
}

#[test]
fn packet_from_unknown_tid_gets_error_5_and_transfer_continues() {
    let s = HostBuilder::tftp().start();
    let content = pattern(512 * 3 + 10, 8);
    s.put("f", &content);
    let client = Peer::new();
    client.send(s.tftp(), &rrq("f", &[]));
    let (r, tid) = client.expect("DATA 1");
    assert!(matches!(r, Reply::Data { block: 1, .. }), "got {r:?}");

    let intruder = Peer::new();
    intruder.ack(tid, 1);
    let (code, msg, from) = intruder.expect_error("ERROR 5 for the stranger");
    assert_eq!(code, UNKNOWN_TID, "message {msg:?}");
    assert_eq!(from, tid, "the error comes from the transfer's port");
    client.expect_silence(
        SILENCE,
        "the stranger's ACK 1 must not advance the transfer",
    );

    let mut got = Vec::new();
    let Reply::Data { data, .. } = r else {
        unreachable!()
    };
    got.extend_from_slice(&data);
    for k in 1..=3u16 {
        client.ack(tid, k);
        match client.expect("next block") {
            (Reply::Data { block, data }, f) if block == k + 1 && f == tid => {
                got.extend_from_slice(&data)
            }
            other => panic!("want DATA {} from {tid}, got {other:?}", k + 1),
        }
    }
    client.ack(tid, 4);
    assert_same_bytes(&got, &content, "f");
    s.expect_log(
        &["tftp transfer completed", "path=f"],
        Duration::from_secs(5),
    );
    s.expect_log(&["unknown transfer ID"], Duration::from_secs(5));
}

/// Duplicate ACKs must not double the traffic (the Sorcerer's Apprentice bug sends every
/// block at least twice). The server's dup-ACK hold-off is timed, so a scheduling delay
/// of a few ms can let one spurious resend through: a few copies are tolerated.
#[track_caller]
fn assert_few_duplicates(d: &common::tftp::Download, what: &str) {
    assert!(
        d.max_copies() <= 3 && d.duplicates.len() as u64 <= d.blocks / 4,
        "{what}: {} of {} blocks arrived more than once, worst {} times",
        d.duplicates.len(),
        d.blocks,
        d.max_copies()
    );
}

#[test]
fn duplicate_acks_do_not_cause_duplicate_sends_in_lockstep() {
    let s = HostBuilder::tftp().start();
    let content = pattern(512 * 200 + 3, 9);
    s.put("f", &content);
    let peer = Peer::new();
    let d = fetch(
        &peer,
        s.tftp(),
        &rrq("f", &[]),
        Fetch {
            ack_twice: true,
            ..Fetch::default()
        },
    )
    .unwrap();
    assert_same_bytes(&d.data, &content, "f");
    assert_few_duplicates(&d, "every ACK sent twice (Sorcerer's Apprentice)");
}

#[test]
fn duplicate_acks_do_not_cause_duplicate_windows() {
    let s = HostBuilder::tftp().start();
    let content = pattern(512 * 8 * 25 + 7, 10);
    s.put("f", &content);
    let peer = Peer::new();
    let d = fetch(
        &peer,
        s.tftp(),
        &rrq("f", &[("windowsize", "8")]),
        Fetch {
            ack_twice: true,
            ..Fetch::default()
        },
    )
    .unwrap();
    assert_eq!(d.windowsize, 8);
    assert_same_bytes(&d.data, &content, "f");
    assert_few_duplicates(&d, "every window ACK sent twice");
}

#[test]
fn unacknowledged_data_is_resent_after_timeout_then_abandoned() {
    let s = HostBuilder::tftp().start();
    s.put("f", &pattern(4000, 11));
    let peer = Peer::new();
    peer.send(s.tftp(), &rrq("f", &[("timeout", "1")]));
    let (r, tid) = peer.expect("OACK");
    assert_eq!(
        r,
        Reply::Oack(AcceptedOptions {
            timeout: Some(1),
            ..Default::default()
        })
    );
    peer.ack(tid, 0);
    // Never acknowledge DATA 1: collect every copy until the server goes quiet.
    let mut arrivals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match peer.recv(Duration::from_millis(2500)) {
            Some((Reply::Data { block: 1, .. }, from)) if from == tid => {
                arrivals.push(Instant::now())
            }
            Some((other, from)) => panic!("only DATA 1 expected, got {other:?} from {from}"),
            None => break,
        }
    }
    assert!(!arrivals.is_empty(), "DATA 1 never arrived");
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        arrivals.len(),
        6,
        "DATA 1 sent once and retransmitted max_retries (5) times, then abandoned; gaps {gaps:?}"
    );
    for g in &gaps {
        assert!(
            *g >= Duration::from_millis(800) && *g <= Duration::from_millis(2500),
            "retransmissions must follow the negotiated 1 s timeout; gaps {gaps:?}"
        );
    }
    s.expect_log(
        &["tftp transfer failed", "path=f", "timeout"],
        Duration::from_secs(3),
    );
}

#[test]
fn size_probe_ends_the_transfer_without_a_failure() {
    let s = HostBuilder::tftp().start();
    s.put("probe.efi", &pattern(100_000, 12));
    let peer = Peer::new();
    peer.send(
        s.tftp(),
        &rrq("probe.efi", &[("tsize", "0"), ("blksize", "1468")]),
    );
    let (r, tid) = peer.expect("OACK");
    assert!(
        matches!(r, Reply::Oack(o) if o.tsize == Some(100_000)),
        "got {r:?}"
    );
    peer.error(tid, ErrorCode::OptionNegotiation, "size probe done");
    let line = s.expect_log(&["size probe", "path=probe.efi"], Duration::from_secs(5));
    assert!(
        line.contains("DEBUG"),
        "size probes are logged at debug: {line}"
    );
    // The default timeout is 1 s: no OACK retransmission may follow the ERROR.
    peer.expect_silence(Duration::from_millis(1300), "the probe ended the transfer");
    let log = s.log();
    assert!(
        !log.contains("tftp transfer failed") && !log.contains("aborted by client"),
        "a size probe is not a failure; log:\n{log}"
    );
}

#[test]
fn oack_is_retransmitted_until_acknowledged() {
    let s = HostBuilder::tftp()
        .config("[tftp]\ntimeout_ms = 100\n")
        .start();
    let content = pattern(1000, 30);
    s.put("f", &content);
    let peer = Peer::new();
    peer.send(s.tftp(), &rrq("f", &[("tsize", "0")]));
    let (first, tid) = peer.expect("OACK");
    assert!(matches!(first, Reply::Oack(_)), "got {first:?}");
    let (again, from) = peer.expect("the OACK again after the 100 ms timeout");
    assert_eq!(
        (&again, from),
        (&first, tid),
        "the same OACK from the same port"
    );
    peer.ack(tid, 0);
    // Copies of the OACK may already be on their way; DATA 1 must follow.
    loop {
        match peer.expect("DATA 1 after ACK 0") {
            (Reply::Oack(_), _) => continue,
            (Reply::Data { block: 1, data }, f) if f == tid => {
                assert_same_bytes(&data, &content[..512], "block 1");
                break;
            }
            other => panic!("want DATA 1 from {tid}, got {other:?}"),
        }
    }
}

/// A client that never acknowledges the OACK has not shown that it receives (the
/// request may be forged): it gets the OACK and two copies, not max_retries (issue 16).
#[test]
fn unacknowledged_oack_is_abandoned_after_two_copies() {
    let s = HostBuilder::tftp()
        .config("[tftp]\ntimeout_ms = 100\n")
        .start();
    s.put("f", b"x");
    let peer = Peer::new();
    peer.send(s.tftp(), &rrq("f", &[("blksize", "1024")]));
    let mut oacks = 0;
    while let Some((r, _)) = peer.recv(Duration::from_millis(1000)) {
        assert!(
            matches!(r, Reply::Oack(_)),
            "only OACKs expected, got {r:?}"
        );
        oacks += 1;
        assert!(oacks < 50, "the server never gives up");
    }
    assert_eq!(oacks, 3, "the OACK once plus two retransmissions");
    s.expect_log(&["tftp transfer failed", "timeout"], Duration::from_secs(3));
}

#[test]
fn lost_block_is_resent_from_the_clients_last_ack() {
    let s = HostBuilder::tftp().start();
    let content = pattern(512 * 20, 31);
    s.put("f", &content);
    let peer = Peer::new();
    peer.send(s.tftp(), &rrq("f", &[("windowsize", "4")]));
    let (r, tid) = peer.expect("OACK");
    assert!(
        matches!(r, Reply::Oack(o) if o.windowsize == Some(4)),
        "got {r:?}"
    );
    peer.ack(tid, 0);
    for k in 1..=4u16 {
        let (r, _) = peer.expect("the first window");
        assert!(
            matches!(r, Reply::Data { block, .. } if block == k),
            "want DATA {k}, got {r:?}"
        );
    }
    // Pretend block 3 was lost: after a client-side timer (longer than the server's
    // dup-ACK hold-off, shorter than its 1 s timeout) acknowledge block 2.
    peer.expect_silence(
        Duration::from_millis(600),
        "window sent, waiting for an ACK",
    );
    peer.ack(tid, 2);
    for k in 3..=6u16 {
        match peer.expect("the window after block 2") {
            (Reply::Data { block, data }, _) if block == k => {
                let at = usize::from(k - 1) * 512;
                assert_same_bytes(&data, &content[at..at + 512], &format!("block {k}"));
            }
            (r, _) => {
                panic!("after ACK 2 the server must go back to block 3; want DATA {k}, got {r:?}")
            }
        }
    }
}

#[test]
fn many_concurrent_transfers_all_complete() {
    let s = HostBuilder::tftp().start();
    let content = pattern(300_000, 32);
    s.put("shared.img", &content);
    let option_sets: [&[(&str, &str)]; 4] = [
        &[],
        &[("blksize", "1468"), ("windowsize", "8")],
        &[("tsize", "0"), ("blksize", "8192")],
        &[("blksize", "1024"), ("windowsize", "64")],
    ];
    let results: Vec<_> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let opts = option_sets[i % option_sets.len()];
                let server = s.tftp();
                sc.spawn(move || {
                    let peer = Peer::new();
                    (
                        opts,
                        fetch(&peer, server, &rrq("shared.img", opts), Fetch::default()),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (opts, r) in results {
        let d = r.unwrap_or_else(|e| panic!("transfer with {opts:?}: {e}"));
        assert_same_bytes(&d.data, &content, &format!("shared.img with {opts:?}"));
    }
}

#[test]
fn largest_blksize_fits_the_loopback_mtu() {
    let s = HostBuilder::tftp().start();
    let content = pattern(200_000, 33);
    s.put("f", &content);
    let mtu: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
        .ok()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(65536);
    let want = (mtu - 32).clamp(8, 65464) as u16;
    let d = fetch_ok(s.tftp(), "f", &[("blksize", "65464")]);
    assert_eq!(
        d.oack.and_then(|o| o.blksize),
        Some(want),
        "blksize from the loopback MTU {mtu}"
    );
    assert_same_bytes(&d.data, &content, "f");
}

#[test]
fn mode_names_are_case_insensitive() {
    let s = HostBuilder::tftp().start();
    s.put("t.txt", b"a\nb\n");
    for (mode, want) in [("OcTeT", &b"a\nb\n"[..]), ("NetAscii", &b"a\r\nb\r\n"[..])] {
        let d = fetch(
            &Peer::new(),
            s.tftp(),
            &request(1, b"t.txt", mode, &[]),
            Fetch::default(),
        )
        .unwrap_or_else(|e| panic!("mode {mode}: {e}"));
        assert_eq!(d.data, want, "mode {mode}");
    }
}

#[test]
fn file_not_found_gets_error_1() {
    let s = HostBuilder::tftp().start();
    let (code, msg, from) = error_reply(s.tftp(), &rrq("no/such/file", &[]));
    assert_eq!(code, FILE_NOT_FOUND, "message {msg:?}");
    assert_eq!(from.ip(), s.tftp().ip());
}

#[test]
fn write_request_is_refused_with_access_violation() {
    let s = HostBuilder::tftp().start();
    let (code, msg, _) = error_reply(s.tftp(), &request(2, b"upload.bin", "octet", &[]));
    assert_eq!(code, ACCESS_VIOLATION, "message {msg:?}");
    assert!(!s.root().join("upload.bin").exists());
}

// ---------------------------------------------------------------------------------
// Addresses and ports.
// ---------------------------------------------------------------------------------

#[test]
fn transfer_uses_own_port_on_the_address_the_request_came_to() {
    let s = HostBuilder::tftp().tftp_listen("0.0.0.0:0").start();
    let content = pattern(3000, 13);
    s.put("f", &content);
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), s.tftp().port());
    let peer = Peer::new();
    let d = fetch(&peer, target, &rrq("f", &[]), Fetch::default()).unwrap();
    let tid = d.tid.unwrap();
    assert_eq!(
        tid.ip(),
        target.ip(),
        "reply must come from the address the RRQ went to"
    );
    assert_ne!(
        tid.port(),
        s.tftp().port(),
        "each transfer gets its own port"
    );
    assert_same_bytes(&d.data, &content, "f");

    // Two transfers, two ports.
    let d2 = fetch(&Peer::new(), target, &rrq("f", &[]), Fetch::default()).unwrap();
    assert_ne!(d2.tid.unwrap().port(), tid.port());
}

#[test]
fn errors_come_from_the_address_the_request_came_to() {
    let s = HostBuilder::tftp().tftp_listen("0.0.0.0:0").start();
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), s.tftp().port());
    let (code, _, from) = error_reply(target, &rrq("missing", &[]));
    assert_eq!(code, FILE_NOT_FOUND);
    assert_eq!(from.ip(), target.ip());
}

#[test]
fn ipv6_transfer_with_blksize_for_the_ipv6_mtu() {
    if !require_ipv6_loopback() {
        return;
    }
    let s = HostBuilder::tftp()
        .tftp_listen("[::1]:0")
        .flag("--tftp-mtu", 1500)
        .start();
    let content = pattern(100_000, 50);
    s.put("f", &content);
    let d = fetch(
        &Peer::bind("[::1]:0"),
        s.tftp(),
        &rrq("f", &[("blksize", "1468"), ("windowsize", "8")]),
        Fetch::default(),
    )
    .expect("transfer over ::1");
    assert_eq!(
        d.oack.and_then(|o| o.blksize),
        Some(1448),
        "IPv6: 1500 - 40 - 8 - 4 = 1448"
    );
    let tid = d.tid.unwrap();
    assert_eq!(tid.ip(), s.tftp().ip());
    assert_ne!(tid.port(), s.tftp().port());
    assert_same_bytes(&d.data, &content, "f");
}

/// A server on `[::]` (dual-stack) serving an IPv4 client.
fn dual_stack_serves_ipv4(single_port: bool) {
    if !require_ipv6_loopback() {
        return;
    }
    let mut b = HostBuilder::tftp()
        .tftp_listen("[::]:0")
        .flag("--tftp-mtu", 1500);
    if single_port {
        b = b.arg("--tftp-single-port");
    }
    let s = b.start();
    let content = pattern(50_000, 51);
    s.put("f", &content);
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), s.tftp().port());
    let d = fetch(
        &Peer::new(),
        target,
        &rrq("f", &[("blksize", "65464"), ("windowsize", "4")]),
        Fetch::default(),
    )
    .expect("IPv4 transfer from a dual-stack listener");
    let tid = d.tid.unwrap();
    assert_eq!(
        tid.ip(),
        target.ip(),
        "replies come from the IPv4 address asked"
    );
    if single_port {
        assert_eq!(tid.port(), s.tftp().port());
    } else {
        assert_ne!(tid.port(), s.tftp().port());
    }
    assert_eq!(
        d.oack.and_then(|o| o.blksize),
        Some(1468),
        "an IPv4 client gets the IPv4 overhead: 1500 - 20 - 8 - 4"
    );
    assert_same_bytes(&d.data, &content, "f");
    // Errors reach IPv4 clients too.
    let (code, _, from) = error_reply(target, &rrq("missing", &[]));
    assert_eq!(code, FILE_NOT_FOUND);
    assert_eq!(from.ip(), target.ip());
}

#[test]
fn dual_stack_listener_serves_ipv4_clients() {
    dual_stack_serves_ipv4(false);
}

#[test]
fn dual_stack_listener_serves_ipv4_clients_in_single_port_mode() {
    dual_stack_serves_ipv4(true);
}

#[test]
fn single_port_mode_replies_from_the_listening_port() {
    let s = HostBuilder::tftp().arg("--tftp-single-port").start();
    let content = pattern(512 * 10 + 1, 14);
    s.put("f", &content);
    let d = fetch_ok(s.tftp(), "f", &[("blksize", "1024"), ("windowsize", "4")]);
    assert_eq!(
        d.tid,
        Some(s.tftp()),
        "single-port: everything from the listening socket"
    );
    assert_same_bytes(&d.data, &content, "f");
    let d = fetch_ok(s.tftp(), "f", &[]);
    assert_eq!(d.tid, Some(s.tftp()));
    assert_same_bytes(&d.data, &content, "f");
}

#[test]
fn single_port_mode_on_a_wildcard_answers_from_the_request_address() {
    let s = HostBuilder::tftp()
        .tftp_listen("0.0.0.0:0")
        .arg("--tftp-single-port")
        .start();
    let content = pattern(2000, 15);
    s.put("f", &content);
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), s.tftp().port());
    let d = fetch(&Peer::new(), target, &rrq("f", &[]), Fetch::default()).unwrap();
    assert_eq!(d.tid, Some(target));
    assert_same_bytes(&d.data, &content, "f");
}

#[test]
fn single_port_mode_runs_concurrent_transfers() {
    let s = HostBuilder::tftp().arg("--tftp-single-port").start();
    let a = pattern(512 * 300 + 5, 16);
    let b = pattern(1024 * 200 + 9, 17);
    s.put("a", &a);
    s.put("b", &b);
    let (pa, pb) = (Peer::new(), Peer::new());
    // Both requests are out before either transfer is read: both are in flight at once,
    // multiplexed on the one listening socket.
    pa.send(s.tftp(), &rrq("a", &[]));
    pb.send(
        s.tftp(),
        &rrq("b", &[("blksize", "1024"), ("windowsize", "4")]),
    );
    let (da, db) = std::thread::scope(|sc| {
        let ta = sc.spawn(|| finish_fetch(&pa, Fetch::default()));
        let tb = sc.spawn(|| finish_fetch(&pb, Fetch::default()));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let (da, db) = (da.expect("transfer a"), db.expect("transfer b"));
    assert_eq!(da.tid, Some(s.tftp()));
    assert_eq!(db.tid, Some(s.tftp()));
    assert_eq!((db.blksize, db.windowsize), (1024, 4));
    assert_same_bytes(&da.data, &a, "a");
    assert_same_bytes(&db.data, &b, "b");
}

#[test]
fn single_port_mode_ignores_a_repeated_request() {
    let s = HostBuilder::tftp().arg("--tftp-single-port").start();
    let content = pattern(512 * 30 + 1, 34);
    s.put("f", &content);
    let peer = Peer::new();
    // The request goes out twice before any reply is read (a client retransmission);
    // the second must not start a second transfer on the same port pair.
    peer.send(s.tftp(), &rrq("f", &[]));
    let d = fetch(&peer, s.tftp(), &rrq("f", &[]), Fetch::default()).unwrap();
    assert_same_bytes(&d.data, &content, "f");
    assert!(
        d.duplicates.is_empty() && d.out_of_order == 0,
        "a second transfer ran alongside: {} duplicate blocks, {} out of order",
        d.duplicates.len(),
        d.out_of_order
    );
}

/// The UEFI pattern: RRQ with tsize, ERROR 8 after the OACK, then the real RRQ from the
/// same client port.
fn size_probe_then_download_from_the_same_port(s: &Host) {
    let content = pattern(100_000, 35);
    s.put("bootx64.efi", &content);
    let peer = Peer::new();
    peer.send(
        s.tftp(),
        &rrq("bootx64.efi", &[("tsize", "0"), ("blksize", "1468")]),
    );
    let (r, tid) = peer.expect("OACK");
    assert!(
        matches!(r, Reply::Oack(o) if o.tsize == Some(100_000)),
        "got {r:?}"
    );
    peer.error(tid, ErrorCode::OptionNegotiation, "");
    let d = fetch(
        &peer,
        s.tftp(),
        &rrq("bootx64.efi", &[("blksize", "1468")]),
        Fetch::default(),
    )
    .expect("download after the size probe");
    assert_same_bytes(&d.data, &content, "bootx64.efi");
    s.expect_log(&["size probe", "path=bootx64.efi"], Duration::from_secs(5));
}

#[test]
fn size_probe_then_download_from_the_same_client_port() {
    size_probe_then_download_from_the_same_port(&HostBuilder::tftp().start());
}

#[test]
fn single_port_mode_size_probe_then_download_from_the_same_client_port() {
    size_probe_then_download_from_the_same_port(
        &HostBuilder::tftp().arg("--tftp-single-port").start(),
    );
}

// ---------------------------------------------------------------------------------
// File namespace and bad requests.
// ---------------------------------------------------------------------------------

/// What the server must do with a bad datagram.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An ERROR with this code.
    Error(u16),
    /// An ERROR, code not prescribed.
    AnyError,
    /// Nothing at all.
    Silence,
}

/// The fixtures bad requests are aimed at; keeps the outside directory alive.
struct Fixture {
    server: Host,
    _outside: tempfile::TempDir,
}

fn fixture(server: Host) -> Fixture {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"outside the root").unwrap();
    server.put("hello.txt", b"hello\n");
    server.put("dir/inner.txt", b"inner\n");
    std::os::unix::fs::symlink(outside.path().join("secret"), server.root().join("escape"))
        .unwrap();
    std::os::unix::fs::symlink(outside.path(), server.root().join("escape-dir")).unwrap();
    std::os::unix::fs::symlink("loop", server.root().join("loop")).unwrap();
    Fixture {
        server,
        _outside: outside,
    }
}

/// Every bad datagram, by name.
fn bad_datagrams() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let mut non_utf8 = vec![0, 1, b'a', 0xff, 0xfe, b'b', 0];
    non_utf8.extend_from_slice(b"octet\0");
    vec![
        (
            "truncated RRQ without NUL",
            vec![0, 1, b'h', b'e', b'l'],
            Expect::Error(ILLEGAL_OPERATION),
        ),
        (
            "RRQ without mode",
            b"\x00\x01hello.txt\x00".to_vec(),
            Expect::Error(ILLEGAL_OPERATION),
        ),
        ("opcode only", vec![0, 1], Expect::Error(ILLEGAL_OPERATION)),
        (
            "unknown opcode",
            b"\x00\x09hello.txt\x00octet\x00".to_vec(),
            Expect::Silence,
        ),
        ("one byte", vec![1], Expect::Silence),
        ("empty datagram", vec![], Expect::Silence),
        (
            "DATA on the listening port",
            vec![0, 3, 0, 1, b'x'],
            Expect::Silence,
        ),
        (
            "ACK on the listening port",
            vec![0, 4, 0, 1],
            Expect::Silence,
        ),
        (
            "empty file name",
            b"\x00\x01\x00octet\x00".to_vec(),
            Expect::AnyError,
        ),
        ("non-UTF-8 file name", non_utf8, Expect::AnyError),
        (
            "600-byte file name",
            rrq(&"a".repeat(600), &[]),
            Expect::AnyError,
        ),
        (
            "mail mode",
            request(1, b"hello.txt", "mail", &[]),
            Expect::Error(ILLEGAL_OPERATION),
        ),
        (
            "unknown mode",
            request(1, b"hello.txt", "binary", &[]),
            Expect::Error(ILLEGAL_OPERATION),
        ),
        (
            "option without value",
            b"\x00\x01hello.txt\x00octet\x00blksize\x00".to_vec(),
            Expect::Error(ILLEGAL_OPERATION),
        ),
        (
            "NUL inside the name (the rest becomes the mode)",
            b"\x00\x01hello.txt\x00../../etc/passwd\x00octet\x00".to_vec(),
            Expect::Error(ILLEGAL_OPERATION),
        ),
        (
            "parent dir",
            rrq("../etc/passwd", &[]),
            Expect::Error(ACCESS_VIOLATION),
        ),
        (
            "parent dir inside a path",
            rrq("dir/../../etc/passwd", &[]),
            Expect::Error(ACCESS_VIOLATION),
        ),
        (
            "parent dir with backslashes",
            rrq("..\\..\\etc\\passwd", &[]),
            Expect::Error(ACCESS_VIOLATION),
        ),
        (
            "absolute path outside the root",
            rrq("/etc/passwd", &[]),
            Expect::Error(ACCESS_VIOLATION),
        ),
        (
            "symlink to a file outside the root",
            rrq("escape", &[]),
            Expect::Error(ACCESS_VIOLATION),
        ),
        (
            "symlink loop",
            rrq("loop", &[]),
            Expect::Error(ACCESS_VIOLATION),
        ),
        (
            "symlink to a dir outside the root",
            rrq("escape-dir/secret", &[]),
            Expect::Error(ACCESS_VIOLATION),
        ),
        (
            "directory",
            rrq("dir", &[]),
            Expect::Error(ACCESS_VIOLATION),
        ),
        (
            "missing file",
            rrq("nope.txt", &[]),
            Expect::Error(FILE_NOT_FOUND),
        ),
    ]
}

/// Sends bad datagrams, each from its own peer, and checks the answers: the ERRORs
/// expected, then (for all of them at once) that nothing else arrives.
#[track_caller]
fn check_bad_datagrams(server: SocketAddr, cases: &[(&'static str, Vec<u8>, Expect)]) {
    let peers: Vec<Peer> = cases
        .iter()
        .map(|(_, packet, _)| {
            let p = Peer::new();
            p.send(server, packet);
            p
        })
        .collect();
    for ((name, _, expect), peer) in cases.iter().zip(&peers) {
        let want = match expect {
            Expect::Silence => continue,
            Expect::Error(c) => Some(*c),
            Expect::AnyError => None,
        };
        match peer.recv(REPLY_TIMEOUT) {
            None => panic!("{name}: expected an ERROR, got nothing"),
            Some((Reply::Error { code, message }, _)) => {
                if let Some(want) = want {
                    assert_eq!(code, want, "{name}: wrong error code (message {message:?})");
                }
            }
            Some((r, _)) => panic!("{name}: expected an ERROR, got {r:?}"),
        }
    }
    let quiet_until = Instant::now() + SILENCE;
    for ((name, _, expect), peer) in cases.iter().zip(&peers) {
        let why = match expect {
            Expect::Silence => format!("{name}: must be dropped silently"),
            _ => format!("{name}: nothing after the ERROR"),
        };
        peer.expect_silence(quiet_until.saturating_duration_since(Instant::now()), &why);
    }
}

/// Runs the named cases of [`bad_datagrams`] against a fresh server.
fn bad_datagram_cases(names: &[&str]) {
    let f = fixture(HostBuilder::tftp().start());
    let all = bad_datagrams();
    let cases: Vec<_> = names
        .iter()
        .map(|name| {
            all.iter()
                .find(|(n, ..)| n == name)
                .unwrap_or_else(|| panic!("no case {name:?}"))
                .clone()
        })
        .collect();
    check_bad_datagrams(f.server.tftp(), &cases);
}

#[test]
fn truncated_request_gets_illegal_operation() {
    bad_datagram_cases(&[
        "truncated RRQ without NUL",
        "RRQ without mode",
        "opcode only",
        "option without value",
    ]);
}

#[test]
fn unknown_opcode_and_runts_are_dropped() {
    bad_datagram_cases(&["unknown opcode", "one byte", "empty datagram"]);
}

#[test]
fn non_request_packets_on_the_listening_port_are_dropped() {
    bad_datagram_cases(&["DATA on the listening port", "ACK on the listening port"]);
}

#[test]
fn bad_file_names_get_an_error() {
    bad_datagram_cases(&[
        "empty file name",
        "non-UTF-8 file name",
        "600-byte file name",
    ]);
}

#[test]
fn mail_and_unknown_modes_get_illegal_operation() {
    bad_datagram_cases(&["mail mode", "unknown mode"]);
}

#[test]
fn nul_in_the_name_cannot_smuggle_a_path() {
    bad_datagram_cases(&["NUL inside the name (the rest becomes the mode)"]);
}

#[test]
fn parent_dir_is_refused() {
    bad_datagram_cases(&[
        "parent dir",
        "parent dir inside a path",
        "parent dir with backslashes",
    ]);
}

#[test]
fn absolute_path_outside_the_root_is_refused() {
    bad_datagram_cases(&["absolute path outside the root"]);
    // Names that start with the root but climb out of it, or only share its prefix.
    let f = fixture(HostBuilder::tftp().start());
    let root = f.server.root().display().to_string();
    let climb = format!("{root}/../{}", "x");
    let sibling = format!("{root}-sibling/hello.txt");
    check_bad_datagrams(
        f.server.tftp(),
        &[
            (
                "root/../x",
                rrq(&climb, &[]),
                Expect::Error(ACCESS_VIOLATION),
            ),
            (
                "root-sibling",
                rrq(&sibling, &[]),
                Expect::Error(ACCESS_VIOLATION),
            ),
        ],
    );
}

#[test]
fn symlinks_out_of_the_root_are_refused() {
    bad_datagram_cases(&[
        "symlink to a file outside the root",
        "symlink to a dir outside the root",
        "symlink loop",
    ]);
}

#[test]
fn directory_is_refused_and_missing_file_is_not_found() {
    bad_datagram_cases(&["directory", "missing file"]);
}

#[test]
fn fifo_in_the_root_is_refused_without_hanging() {
    let f = fixture(HostBuilder::tftp().start());
    common::mkfifo(&f.server.root().join("pipe"));
    // Nobody ever writes to the FIFO: a plain open(2) for reading blocks until someone
    // does, so the server must check the file type without blocking.
    check_bad_datagrams(
        f.server.tftp(),
        &[("FIFO", rrq("pipe", &[]), Expect::Error(ACCESS_VIOLATION))],
    );
    // And the server is still fine.
    assert_eq!(fetch_ok(f.server.tftp(), "hello.txt", &[]).data, b"hello\n");
}

#[test]
fn equivalent_names_are_served() {
    let f = fixture(HostBuilder::tftp().start());
    for name in [
        "./hello.txt",
        "dir//inner.txt",
        "dir/./inner.txt",
        "dir\\inner.txt",
    ] {
        let d = fetch_ok(f.server.tftp(), name, &[]);
        assert!(!d.data.is_empty(), "{name}");
    }
}

#[test]
fn absolute_path_inside_the_root_is_served() {
    let f = fixture(HostBuilder::tftp().start());
    let abs = format!("{}/dir/inner.txt", f.server.root().display());
    let d = fetch_ok(f.server.tftp(), &abs, &[]);
    assert_eq!(d.data, b"inner\n");
    let canon = format!(
        "{}/hello.txt",
        f.server.root().canonicalize().unwrap().display()
    );
    assert_eq!(fetch_ok(f.server.tftp(), &canon, &[]).data, b"hello\n");
}

#[test]
fn symlink_inside_the_root_is_served() {
    let f = fixture(HostBuilder::tftp().start());
    std::os::unix::fs::symlink("dir/inner.txt", f.server.root().join("alias")).unwrap();
    assert_eq!(fetch_ok(f.server.tftp(), "alias", &[]).data, b"inner\n");
}

#[test]
fn server_survives_every_bad_datagram_and_still_serves() {
    let f = fixture(HostBuilder::tftp().start());
    check_bad_datagrams(f.server.tftp(), &bad_datagrams());
    let d = fetch_ok(
        f.server.tftp(),
        "hello.txt",
        &[("tsize", "0"), ("blksize", "1024")],
    );
    assert_eq!(
        d.data, b"hello\n",
        "the server must still serve after bad input"
    );
    let log = f.server.log();
    assert!(
        !log.contains("panicked"),
        "server log shows a panic:\n{log}"
    );
}

// ---------------------------------------------------------------------------------
// Files change; limits hold.
// ---------------------------------------------------------------------------------

#[test]
fn replaced_file_is_served_with_the_new_bytes() {
    let s = HostBuilder::tftp().start();
    let v1 = pattern(3000, 20);
    let v2 = pattern(3000, 21); // same size: only the content differs
    let v3 = pattern(9000, 22);
    let path = s.put("grub.cfg", &v1);
    assert_same_bytes(
        &fetch_ok(s.tftp(), "grub.cfg", &[]).data,
        &v1,
        "first version",
    );
    for (v, what) in [(&v2, "replaced, same size"), (&v3, "replaced, larger")] {
        let tmp = s.root().join(".grub.cfg.tmp");
        std::fs::write(&tmp, v).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_same_bytes(&fetch_ok(s.tftp(), "grub.cfg", &[]).data, v, what);
        assert_same_bytes(
            &fetch_ok(s.tftp(), "grub.cfg", &[("blksize", "1400")]).data,
            v,
            what,
        );
    }
}

#[test]
fn transfer_in_flight_keeps_the_version_it_started_with() {
    let s = HostBuilder::tftp().start();
    let v1 = pattern(512 * 6 + 1, 25);
    let v2 = pattern(512 * 6 + 1, 26);
    let path = s.put("initrd", &v1);
    let peer = Peer::new();
    peer.send(s.tftp(), &rrq("initrd", &[]));
    let (r, tid) = peer.expect("DATA 1");
    let Reply::Data { block: 1, data } = r else {
        panic!("want DATA 1, got {r:?}")
    };
    let mut got = data;
    // Replace the file mid-transfer.
    let tmp = s.root().join(".initrd.tmp");
    std::fs::write(&tmp, &v2).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    for k in 1..=6u16 {
        peer.ack(tid, k);
        match peer.expect("next block") {
            (Reply::Data { block, data }, _) if block == k + 1 => got.extend_from_slice(&data),
            other => panic!("want DATA {}, got {other:?}", k + 1),
        }
    }
    peer.ack(tid, 7);
    assert_same_bytes(&got, &v1, "the transfer started before the replacement");
    assert_same_bytes(
        &fetch_ok(s.tftp(), "initrd", &[]).data,
        &v2,
        "a new request",
    );
}

#[test]
fn client_error_mid_transfer_stops_the_server() {
    let s = HostBuilder::tftp()
        .config("[tftp]\ntimeout_ms = 100\n")
        .start();
    s.put("f", &pattern(512 * 10, 27));
    let peer = Peer::new();
    peer.send(s.tftp(), &rrq("f", &[]));
    let (r, tid) = peer.expect("DATA 1");
    assert!(matches!(r, Reply::Data { block: 1, .. }), "got {r:?}");
    peer.ack(tid, 1);
    let (r, _) = peer.expect("DATA 2");
    assert!(matches!(r, Reply::Data { block: 2, .. }), "got {r:?}");
    peer.error(tid, ErrorCode::DiskFull, "no room");
    peer.expect_silence(
        Duration::from_millis(500),
        "no retransmission after the client's ERROR (timeout is 100 ms)",
    );
    s.expect_log(
        &["aborted by client", "path=f", "code=3"],
        Duration::from_secs(2),
    );
}

#[test]
fn third_concurrent_transfer_from_one_client_is_refused_as_busy() {
    let s = HostBuilder::tftp()
        .config("[tftp]\nmax_transfers_per_client = 2\n")
        .start();
    s.put("big", &pattern(512 * 100, 23));
    // Two transfers held open: DATA 1 acknowledged (so they are not evictable
    // requests nobody follows up), DATA 2 never.
    let held: Vec<(Peer, SocketAddr)> = (0..2)
        .map(|_| {
            let p = Peer::new();
            p.send(s.tftp(), &rrq("big", &[]));
            let (r, tid) = p.expect("DATA 1");
            assert!(matches!(r, Reply::Data { block: 1, .. }), "got {r:?}");
            p.ack(tid, 1);
            let (r, _) = p.expect("DATA 2");
            assert!(matches!(r, Reply::Data { block: 2, .. }), "got {r:?}");
            (p, tid)
        })
        .collect();
    let third = Peer::new();
    third.send(s.tftp(), &rrq("big", &[]));
    let (code, msg, _) = third.expect_error("ERROR busy");
    assert_eq!(code, NOT_DEFINED, "message {msg:?}");
    assert!(
        msg.contains("busy"),
        "the message should say the server is busy: {msg:?}"
    );

    // Ending one held transfer frees its slot.
    let (p, tid) = &held[0];
    p.error(*tid, ErrorCode::NotDefined, "client gives up");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        third.send(s.tftp(), &rrq("big", &[]));
        match third.expect("a reply") {
            (Reply::Data { block: 1, .. }, _) => break,
            (Reply::Error { .. }, _) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            (r, _) => panic!("slot not released after the client's ERROR: {r:?}"),
        }
    }
}

#[test]
fn total_transfer_limit_refuses_other_clients_too() {
    let s = HostBuilder::tftp()
        .config("[tftp]\nmax_transfers = 1\n")
        .start();
    s.put("f", &pattern(5000, 24));
    let first = Peer::new();
    first.send(s.tftp(), &rrq("f", &[]));
    assert!(matches!(
        first.expect("DATA 1").0,
        Reply::Data { block: 1, .. }
    ));
    let other = Peer::bind("127.0.0.2:0");
    other.send(s.tftp(), &rrq("f", &[]));
    let (code, msg, _) = other.expect_error("ERROR busy");
    assert_eq!(code, NOT_DEFINED, "message {msg:?}");
    assert!(msg.contains("busy"), "{msg:?}");
}
