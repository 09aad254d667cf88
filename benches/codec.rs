//! Micro-benchmarks of the sans-IO TFTP core: packet parsing
//! ([`baton::wire::tftp::Packet::parse`]), request names
//! ([`baton::wire::path::ClientPath`], with and without a map file) and the
//! read-transfer state machine
//! ([`baton::tftp::transfer::Transfer`]) driving a 1 MiB file in memory, blksize 1432,
//! the client acknowledging the last block of each window; reported per DATA packet.
//!
//! Run with `cargo bench --bench codec`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use baton::tftp::transfer::{Params, Rollover, Transfer, Transmit};
use baton::wire::tftp::{self, AcceptedOptions, Mode, Opcode, Packet, RequestOptions};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Block size real firmware asks for on a 1500-byte MTU.
const BLKSIZE: u16 = 1432;
/// Size of the file driven through a transfer.
const FILE: usize = 1 << 20;

/// An RRQ as PXE firmware sends it: a path, octet mode, four options.
fn rrq_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    tftp::emit_request(
        &mut out,
        Opcode::Rrq,
        "pxelinux.cfg/01-52-54-00-12-34-56",
        Mode::Octet,
        &RequestOptions {
            blksize: Some(BLKSIZE),
            tsize: Some(0),
            timeout: Some(3),
            windowsize: Some(16),
            ignored: Vec::new(),
        },
    );
    out
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let rrq = rrq_bytes();
    let mut ack = Vec::new();
    tftp::emit_ack(&mut ack, 0x1234);
    let payload = vec![0xa5u8; usize::from(BLKSIZE)];
    let mut data = Vec::new();
    Packet::Data {
        block: 7,
        data: &payload,
    }
    .emit(&mut data);

    for (name, bytes) in [("rrq_4_options", &rrq), ("ack", &ack), ("data_1432", &data)] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter(|| {
                let p = Packet::parse(black_box(bytes));
                black_box(p.is_ok())
            })
        });
    }
    g.finish();
}

/// Client path names as the TFTP server reads them: a plain name, a name that needs
/// every rule (separators, `.`, the root prefix, an uppercase MAC), and both through
/// tftpd-hpa's sample map file.
fn path(c: &mut Criterion) {
    use baton::wire::path::{ClientPath, PathRules};
    use baton::wire::remap::MapFile;
    let mut g = c.benchmark_group("path");
    let client = "192.0.2.169".parse().unwrap();
    let plain = PathRules::new(["/srv/tftp"]);
    let map = MapFile::parse(concat!(
        "ri ^[a-z]:\n",
        "rg \\\\ /\n",
        "rg \\# @\n",
        "rg /../ /..no../\n",
        "e ^ok/\n",
        "r ^[^/] /srv/tftp/\\0\n",
        "a \\.pvt$\n",
    ))
    .expect("sample map file");
    let mapped = PathRules::new(["/srv/tftp"]).with_map(Some(std::sync::Arc::new(map)));
    for (rules_name, rules) in [("rules", &plain), ("map_file", &mapped)] {
        for (name, path) in [
            ("plain", "pxelinux.cfg/01-52-54-00-12-34-56"),
            ("odd", "/srv/tftp/pxelinux.cfg\\.//01-52-54-00-AB-CD-EF"),
        ] {
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("{rules_name}/{name}"), |b| {
                b.iter(|| {
                    let p = ClientPath::from_tftp(black_box(path), rules, client);
                    black_box(p.is_ok())
                })
            });
        }
    }
    g.finish();
}

/// Drives a whole transfer in memory: every DATA burst is "sent" (its header and payload
/// read), and the last block of each burst is acknowledged, as an RFC 7440 client does.
/// Returns the number of DATA packets.
fn drive(data: &Bytes, windowsize: u16, oack: bool) -> u64 {
    let now = Instant::now();
    let params = Params {
        blksize: BLKSIZE,
        windowsize,
        timeout: Duration::from_secs(1),
        max_retries: 5,
        rollover: Rollover::Zero,
        oack: oack.then(|| AcceptedOptions {
            blksize: Some(BLKSIZE),
            tsize: Some(data.len() as u64),
            timeout: None,
            windowsize: Some(windowsize),
        }),
    };
    let mut t = Transfer::new(data.clone(), params, now);
    let mut packets = 0u64;
    while !t.is_finished() {
        let mut last = None;
        while let Some(tx) = t.poll_transmit(now) {
            match tx {
                Transmit::Control(c) => {
                    black_box(&c);
                    last = Some(0);
                }
                Transmit::Data(b) => {
                    for k in b.first..=b.last {
                        black_box(t.header(k));
                        black_box(t.payload(k));
                        packets += 1;
                    }
                    last = Some(b.last);
                }
            }
        }
        let Some(k) = last else {
            // Nothing to send and not finished: would be a stall; stop the iteration.
            break;
        };
        t.handle(&Packet::Ack { block: k as u16 }, now);
    }
    packets
}

fn transfer(c: &mut Criterion) {
    let data = Bytes::from(
        (0..FILE)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
            .collect::<Vec<u8>>(),
    );
    // Sanity check outside the measurement: the transfer must complete.
    assert_eq!(drive(&data, 16, true), FILE as u64 / u64::from(BLKSIZE) + 1);
    // The engine hands out block ranges and never copies payload, so the figure that
    // matters is its cost per DATA packet: throughput is counted in packets.
    let mut g = c.benchmark_group("transfer_1MiB");
    g.throughput(Throughput::Elements(FILE as u64 / u64::from(BLKSIZE) + 1));
    for ws in [1u16, 16, 64] {
        g.bench_with_input(BenchmarkId::new("windowsize", ws), &ws, |b, &ws| {
            b.iter(|| black_box(drive(&data, ws, true)))
        });
    }
    g.finish();
}

criterion_group!(benches, parse, path, transfer);
criterion_main!(benches);
