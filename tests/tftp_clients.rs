//! Real TFTP clients (tftp-hpa `tftp`, `atftp`, `curl`) against a real `baton serve`
//! on loopback. Every received file is compared byte for byte with the source.
//!
//! A missing client fails the test in CI (env `CI` set) and is skipped loudly elsewhere.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::host::{Host, HostBuilder};
use common::require::{require_atftp, require_curl, require_tftp_hpa};
use common::tftp::tftp_hpa;
use common::{assert_same_bytes, pattern, run_with_timeout};

/// Size of a file that needs more than 65535 blocks of 512 bytes (block numbers wrap).
const ROLLOVER_SIZE: usize = 65_536 * 512 + 100;
/// Deadline for the ~33 MB transfers.
const BIG_TIMEOUT: Duration = Duration::from_secs(90);

/// `tftp -m MODE HOST PORT -c get REMOTE LOCAL` (tftp-hpa); returns the file, which
/// must come.
fn tftp_hpa_get(s: &Host, mode: &str, remote: &str, timeout: Duration) -> Vec<u8> {
    tftp_hpa(None, s.tftp(), mode, remote, timeout)
        .unwrap_or_else(|e| panic!("tftp -m {mode} get {remote}: {e}"))
}

/// `atftp [--option ...] -g -r REMOTE -l LOCAL HOST PORT`; returns the local file.
fn atftp_get(s: &Host, options: &[&str], remote: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("out");
    let mut cmd = Command::new("atftp");
    for o in options {
        cmd.args(["--option", o]);
    }
    cmd.args(["-g", "-r", remote, "-l"])
        .arg(&local)
        .arg(s.tftp().ip().to_string())
        .arg(s.tftp().port().to_string());
    let out = run_with_timeout(&mut cmd, common::CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "atftp {options:?} get {remote}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        out.stderr
    );
    read_output(&local, "atftp")
}

/// `curl -sS [ARGS] -o - tftp://HOST:PORT/REMOTE`; returns what it wrote to stdout.
fn curl_get(s: &Host, args: &[&str], remote: &str, timeout: Duration) -> Vec<u8> {
    let out = run_with_timeout(
        Command::new("curl")
            .args(["-sS", "--max-time", &timeout.as_secs().to_string()])
            .args(args)
            .args(["-o", "-"])
            .arg(format!("tftp://{}/{remote}", s.tftp())),
        timeout + Duration::from_secs(5),
    );
    assert!(
        out.status.success(),
        "curl {args:?} tftp://{}/{remote}: {}\n{}",
        s.tftp(),
        out.status,
        out.stderr
    );
    out.stdout
}

fn read_output(p: &Path, client: &str) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{client} left no output file {}: {e}", p.display()))
}

/// Puts one file per size under the root and checks each comes back intact.
fn check_sizes(s: &Host, sizes: &[usize], get: impl Fn(&Host, &str) -> Vec<u8>) {
    for (i, &n) in sizes.iter().enumerate() {
        let name = format!("f{n}.bin");
        let content = pattern(n, 100 + i as u64);
        s.put(&name, &content);
        let got = get(s, &name);
        assert_same_bytes(&got, &content, &format!("{name} ({n} bytes)"));
    }
}

// ---------------------------------------------------------------------------------
// tftp-hpa
// ---------------------------------------------------------------------------------

#[test]
fn tftp_hpa_octet_files_at_block_boundaries() {
    if !require_tftp_hpa() {
        return;
    }
    let s = HostBuilder::tftp().start();
    check_sizes(&s, &[0, 1, 511, 512, 513, 512 * 8, 100_000], |s, f| {
        tftp_hpa_get(s, "octet", f, common::CLIENT_TIMEOUT)
    });
}

#[test]
fn tftp_hpa_netascii_text_comes_back_as_the_original() {
    if !require_tftp_hpa() {
        return;
    }
    let s = HostBuilder::tftp().start();
    // LF line endings; a 511-character line puts the CR of its CR LF at the end of
    // block 1 and the LF at the start of block 2; a bare CR travels as CR NUL.
    let mut text = Vec::new();
    text.extend_from_slice(&[b'x'; 511]);
    text.push(b'\n');
    for i in 0..200 {
        text.extend_from_slice(format!("label entry{i}\n  kernel vmlinuz-{i}\n").as_bytes());
    }
    text.extend_from_slice(b"bare\rcarriage return\n\nlast line without newline");
    s.put("pxelinux.cfg/default", &text);
    let got = tftp_hpa_get(
        &s,
        "netascii",
        "pxelinux.cfg/default",
        common::CLIENT_TIMEOUT,
    );
    assert_same_bytes(&got, &text, "netascii file after the client's conversion");
    s.expect_log(
        &["tftp transfer started", "mode=\"netascii\""],
        Duration::from_secs(5),
    );
}

#[test]
fn tftp_hpa_octet_past_65535_blocks() {
    if !require_tftp_hpa() {
        return;
    }
    let s = HostBuilder::tftp().start();
    let content = pattern(ROLLOVER_SIZE, 1);
    s.put("big.img", &content);
    let got = tftp_hpa_get(&s, "octet", "big.img", BIG_TIMEOUT);
    assert_same_bytes(&got, &content, "big.img (65637 blocks of 512)");
}

// ---------------------------------------------------------------------------------
// atftp
// ---------------------------------------------------------------------------------

#[test]
fn atftp_blksize_1432_windowsize_16() {
    if !require_atftp() {
        return;
    }
    let s = HostBuilder::tftp().start();
    check_sizes(
        &s,
        &[
            0,
            1,
            1432,
            1432 * 16,
            1432 * 16 * 3,
            1432 * 100 + 77,
            1_000_000,
        ],
        |s, f| atftp_get(s, &["blksize 1432", "windowsize 16"], f),
    );
    s.expect_log(
        &["tftp transfer started", "blksize=1432", "windowsize=16"],
        Duration::from_secs(5),
    );
}

#[test]
fn atftp_blksize_8() {
    if !require_atftp() {
        return;
    }
    let s = HostBuilder::tftp().start();
    check_sizes(&s, &[0, 8, 8 * 7, 1003], |s, f| {
        atftp_get(s, &["blksize 8"], f)
    });
    s.expect_log(
        &["tftp transfer started", "blksize=8 "],
        Duration::from_secs(5),
    );
}

#[test]
fn atftp_without_options() {
    if !require_atftp() {
        return;
    }
    let s = HostBuilder::tftp().start();
    check_sizes(&s, &[0, 512, 5000], |s, f| atftp_get(s, &[], f));
}

// ---------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------

#[test]
fn curl_default_options() {
    if !require_curl() {
        return;
    }
    let s = HostBuilder::tftp().start();
    check_sizes(&s, &[1, 511, 512, 512 * 4, 100_000], |s, f| {
        curl_get(s, &[], f, common::CLIENT_TIMEOUT)
    });
}

#[test]
fn curl_with_tftp_blksize() {
    if !require_curl() {
        return;
    }
    let s = HostBuilder::tftp().start();
    check_sizes(&s, &[1, 1024, 1024 * 3, 100_000], |s, f| {
        curl_get(s, &["--tftp-blksize", "1024"], f, common::CLIENT_TIMEOUT)
    });
    s.expect_log(
        &["tftp transfer started", "blksize=1024"],
        Duration::from_secs(5),
    );
}

/// curl (7.88 at least) rejects an OACK with `tsize 0` ("invalid tsize value in OACK")
/// although RFC 2349 makes 0 the right answer for an empty file; without options (no
/// OACK) it fetches empty files fine.
#[test]
fn curl_empty_file_without_options() {
    if !require_curl() {
        return;
    }
    let s = HostBuilder::tftp().start();
    s.put("empty", b"");
    let got = curl_get(&s, &["--tftp-no-options"], "empty", common::CLIENT_TIMEOUT);
    assert!(got.is_empty(), "got {} bytes", got.len());
}

#[test]
fn curl_past_65535_blocks() {
    if !require_curl() {
        return;
    }
    let s = HostBuilder::tftp().start();
    let content = pattern(ROLLOVER_SIZE, 2);
    s.put("big.img", &content);
    let got = curl_get(&s, &[], "big.img", BIG_TIMEOUT);
    assert_same_bytes(&got, &content, "big.img (65637 blocks of 512)");
}

// ---------------------------------------------------------------------------------
// Single-port mode
// ---------------------------------------------------------------------------------

#[test]
fn single_port_mode_with_tftp_hpa() {
    if !require_tftp_hpa() {
        return;
    }
    let s = HostBuilder::tftp().arg("--tftp-single-port").start();
    check_sizes(&s, &[0, 512, 100_000], |s, f| {
        tftp_hpa_get(s, "octet", f, common::CLIENT_TIMEOUT)
    });
}

#[test]
fn single_port_mode_with_curl() {
    if !require_curl() {
        return;
    }
    let s = HostBuilder::tftp().arg("--tftp-single-port").start();
    check_sizes(&s, &[1, 512, 100_000], |s, f| {
        curl_get(s, &["--tftp-blksize", "1400"], f, common::CLIENT_TIMEOUT)
    });
}

#[test]
fn single_port_mode_with_atftp_windows() {
    if !require_atftp() {
        return;
    }
    let s = HostBuilder::tftp().arg("--tftp-single-port").start();
    check_sizes(&s, &[0, 1432 * 16, 300_000], |s, f| {
        atftp_get(s, &["blksize 1432", "windowsize 16"], f)
    });
}

// ---------------------------------------------------------------------------------
// Legacy names: a tftpd-hpa map file
// ---------------------------------------------------------------------------------

/// A map file in tftpd-hpa's format, as a site migrating from tftpd-hpa keeps it.
const MAP_FILE: &str = r"
# Names old firmware and old DHCP configurations still ask for.
rg  \\                    /                    # Windows clients' separators
ri  ^/?tftpboot/                               # the old server's root, dropped
r   ^pxelinux\.0$         bios/pxelinux.0      # moved into bios/
ri  ^BOOT/(.*)$           boot/\L\1            # an old ROM that shouts
r   ^host\.cfg$           hosts/\i.cfg         # one file per client address
a   \.pvt$                private\ file        # never served
";

/// `tftp -c get` that must fail; returns what tftp-hpa printed.
fn tftp_hpa_refused(s: &Host, remote: &str) -> String {
    match tftp_hpa(None, s.tftp(), "octet", remote, common::CLIENT_TIMEOUT) {
        Ok(b) => panic!("tftp get {remote} must fail, got {} bytes", b.len()),
        Err(printed) => printed,
    }
}

#[test]
fn map_file_rewrites_legacy_names_for_tftp_hpa() {
    if !require_tftp_hpa() {
        return;
    }
    let conf = tempfile::tempdir().unwrap();
    let map = conf.path().join("tftpd.rules");
    std::fs::write(&map, MAP_FILE).unwrap();
    let s = HostBuilder::tftp()
        .flag("--tftp-map-file", map.display())
        .start();
    s.put("bios/pxelinux.0", b"pxelinux\n");
    s.put("boot/vmlinuz", b"kernel\n");
    s.put("hosts/127.0.0.1.cfg", b"for 127.0.0.1\n");
    s.put("x.pvt", b"secret\n");
    for (name, want) in [
        ("pxelinux.0", &b"pxelinux\n"[..]),
        ("/tftpboot/pxelinux.0", b"pxelinux\n"),
        ("TFTPBOOT/bios/pxelinux.0", b"pxelinux\n"),
        ("BOOT/VMLINUZ", b"kernel\n"),
        // The map file sees the name as sent, then Baton's own rules apply (`.`).
        ("BOOT\\.\\VMLINUZ", b"kernel\n"),
        ("host.cfg", b"for 127.0.0.1\n"),
    ] {
        let got = tftp_hpa_get(&s, "octet", name, common::CLIENT_TIMEOUT);
        assert_same_bytes(&got, want, name);
    }
    s.expect_log(
        &["file name rewritten by the map file", "mapped=boot/vmlinuz"],
        Duration::from_secs(5),
    );
    // An `a` rule refuses with its message; a rewrite cannot climb out of the root.
    let printed = tftp_hpa_refused(&s, "x.pvt");
    assert!(
        printed.contains("Error code 2") && printed.contains("private file"),
        "{printed}"
    );
    let printed = tftp_hpa_refused(&s, "/tftpboot/../etc/passwd");
    assert!(printed.contains("Error code 2"), "{printed}");
}
