//! Writes the starting corpus of every fuzz target into `corpus/<target>/`: the DHCP and
//! TFTP payloads of the real-firmware captures (read with `baton::pcap`) plus hand-made
//! inputs. Usage: `cargo afl run --release --bin seed -- <captures dir> <corpus dir>`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// DHCP and PXE boot-server ports.
const DHCP_PORTS: [u16; 3] = [67, 68, 4011];
/// At most this many DATA or ACK packets per capture: all alike for the parser.
const SAME_KIND_MAX: usize = 3;

struct Corpus {
    dir: PathBuf,
    seen: HashSet<(String, Vec<u8>)>,
    counts: BTreeMap<String, usize>,
}

impl Corpus {
    fn add(&mut self, target: &str, name: &str, data: &[u8]) {
        if !self.seen.insert((target.to_string(), data.to_vec())) {
            return;
        }
        let dir = self.dir.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        fs::write(dir.join(name), data).expect("write corpus file");
        *self.counts.entry(target.to_string()).or_default() += 1;
    }
}

fn captures(c: &mut Corpus, dir: &Path) {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .pcap file in {}", dir.display());
    for f in files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let recs = baton::pcap::read_udp(&fs::read(&f).unwrap()).expect("readable capture");
        let mut per_opcode: BTreeMap<u16, usize> = BTreeMap::new();
        for (i, r) in recs.iter().enumerate() {
            let name = format!("cap-{stem}-{i:04}");
            if DHCP_PORTS.contains(&r.src.port()) || DHCP_PORTS.contains(&r.dst.port()) {
                c.add("dhcp_request", &name, &r.payload);
                continue;
            }
            let op = r
                .payload
                .get(..2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            let n = per_opcode.entry(op).or_default();
            *n += 1;
            if matches!(op, 3 | 4) && *n > SAME_KIND_MAX {
                continue;
            }
            // A DATA block's content is irrelevant to the parser: keep it short.
            let data = if op == 3 {
                &r.payload[..r.payload.len().min(64)]
            } else {
                &r.payload[..]
            };
            c.add("tftp_packet", &name, data);
            if op == 1 {
                if let Ok(baton::wire::tftp::Packet::Rrq(req)) =
                    baton::wire::tftp::Packet::parse(&r.payload)
                {
                    c.add("client_path", &name, req.filename.as_bytes());
                }
            }
        }
    }
}

fn hand_made(c: &mut Corpus) {
    let tftp: &[&[u8]] = &[
        b"\0\x01pxelinux.0\0octet\0",
        b"\0\x01a\0netascii\0blksize\x001468\0tsize\x000\0timeout\x005\0windowsize\x0064\0",
        b"\0\x02up.bin\0octet\0",
        b"\0\x01f\0OCTET\0blksize\0x\0blksize\x0099999\0foo\0bar\0\0\0",
        b"\0\x03\0\x01hello",
        b"\0\x04\xff\xff",
        b"\0\x04\0\x01\0\0",
        b"\0\x05\0\x08aborted\0",
        b"\0\x05\0\x01no terminator",
        b"\0\x06blksize\x001432\0tsize\x001048576\0windowsize\x004\0",
        b"\0\x01\0octet\0",
        b"\0\x07",
    ];
    for (i, t) in tftp.iter().enumerate() {
        c.add("tftp_packet", &format!("hand-{i:02}"), t);
    }
    let ranges: &[(u64, &str)] = &[
        (10, "bytes=0-4"),
        (10, "bytes=5-"),
        (10, "bytes=-3"),
        (0, "bytes=-5"),
        (10, "bytes=0-1,4-5"),
        (u64::MAX, "bytes=18446744073709551614-"),
        (1 << 30, " bytes = 100 - 200 "),
        (10, "bytes=99999999999999999999999-"),
    ];
    for (i, (len, h)) in ranges.iter().enumerate() {
        let mut v = len.to_le_bytes().to_vec();
        v.extend_from_slice(h.as_bytes());
        c.add("http_range", &format!("hand-{i:02}"), &v);
    }
    let configs: &[&str] = &[
        include_str!("../../../../packaging/baton.toml"),
        "",
        "data_dir = \"/x\"\n[tftp]\nlisten = \"127.0.0.1:6969\"\nmax_windowsize = 8\n",
        "[cluster]\nheartbeat_ms = 100\nelection_timeout_ms = 300\nsecret = \"0123456789abcdef\"\njoin = \"http://10.0.0.1:8069\"\n",
        "[ownership]\nlease_interval_ms = 1000\nlease_ttl_ms = 3000\ngrace_ms = 1000\nmax_nodes_per_host = 10\n",
        "host_name = \"h1\"\ngroup = \"rack-1\"\napi_token = \"0123456789abcdef0123\"\n[dhcp]\ninterfaces = [\"eth0\"]\nport = 67\npxe_port = 4011\n[dhcp.boot_files]\nbios = \"bios/pxelinux.0\"\nefi_x64 = \"efi64/syslinux.efi\"\n",
        "[tftp]\nmax_blksize = 4\n",
        "[tftp]\nrollover = \"one\"\nmtu = 1500\n",
    ];
    for (i, t) in configs.iter().enumerate() {
        c.add("config_text", &format!("hand-{i:02}"), t.as_bytes());
    }
    let paths: &[&str] = &[
        "pxelinux.cfg/default",
        "/srv/tftp/bios/pxelinux.0",
        "..\\..\\etc\\passwd",
        "a/../b",
        "./a//b/",
        "/etc/passwd",
        "n1/grub.cfg\0x",
        "boot/n1/vmlinuz",
        "\u{202e}gpj.exe",
    ];
    for (i, p) in paths.iter().enumerate() {
        c.add("client_path", &format!("hand-{i:02}"), p.as_bytes());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [captures_dir, out] = args.as_slice() else {
        eprintln!("usage: seed <captures dir> <corpus dir>");
        std::process::exit(2);
    };
    let mut c = Corpus {
        dir: PathBuf::from(out),
        seen: HashSet::new(),
        counts: BTreeMap::new(),
    };
    captures(&mut c, Path::new(captures_dir));
    hand_made(&mut c);
    for (t, n) in &c.counts {
        println!("{t}: {n} seeds");
    }
}
