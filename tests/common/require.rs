//! What a test needs from the machine, checked in one place: one `require_*` per
//! external tool or facility. A missing one prints `*** SKIPPED: <why> ***` where the
//! test output is not captured and the test returns early; with env `CI` set (to
//! anything but `false` or `0`) it fails the test instead.

use std::io::Write;
use std::path::Path;

/// Whether missing requirements fail the tests (env `CI` set, not `false`/`0`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "false" | "0"))
}

/// Writes a line to the real stderr, past the test harness's output capture.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The one rule: `Ok` goes on; `Err(why)` fails the test in CI, else says SKIPPED loudly.
#[track_caller]
pub fn require(check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) if ci() => panic!("CI is set, and this test cannot run: {why}"),
        Err(why) => {
            say(&format!("\n*** SKIPPED: {why} ***\n"));
            false
        }
    }
}

/// `Ok` when `bin` is an executable on PATH (or in /usr/sbin), else how to install it.
pub fn tool(bin: &str, apt_package: &str) -> Result<(), String> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| executable(&d.join(bin))));
    if on_path || executable(&Path::new("/usr/sbin").join(bin)) {
        Ok(())
    } else {
        Err(format!(
            "{bin} not installed (apt-get install {apt_package})"
        ))
    }
}

/// `Ok` when `path` exists, else which package ships it.
pub fn file(path: &str, apt_package: &str) -> Result<(), String> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(format!("{path} missing (apt-get install {apt_package})"))
    }
}

/// tftp-hpa's `tftp` client.
#[track_caller]
pub fn require_tftp_hpa() -> bool {
    require(tool("tftp", "tftp-hpa"))
}

/// The `atftp` client.
#[track_caller]
pub fn require_atftp() -> bool {
    require(tool("atftp", "atftp"))
}

/// `curl` (with TFTP support).
#[track_caller]
pub fn require_curl() -> bool {
    require(tool("curl", "curl"))
}

/// `dnsmasq`.
#[track_caller]
pub fn require_dnsmasq() -> bool {
    require(tool("dnsmasq", "dnsmasq-base"))
}

/// `qemu-system-x86_64`.
#[track_caller]
pub fn require_qemu() -> bool {
    require(tool("qemu-system-x86_64", "qemu-system-x86"))
}

/// `tshark`.
#[track_caller]
pub fn require_tshark() -> bool {
    require(tool("tshark", "tshark"))
}

/// `nft` (nftables).
#[track_caller]
pub fn require_nft() -> bool {
    require(tool("nft", "nftables"))
}

/// `unshare` (util-linux).
#[track_caller]
pub fn require_unshare() -> bool {
    require(tool("unshare", "util-linux"))
}

/// IPv6 loopback (`::1`), which some containers disable.
#[track_caller]
pub fn require_ipv6_loopback() -> bool {
    require(
        std::net::UdpSocket::bind("[::1]:0")
            .map(drop)
            .map_err(|e| format!("IPv6 loopback (::1) is not available here: {e}")),
    )
}

/// Network namespaces: root, iproute2 and kernel support.
#[track_caller]
pub fn require_netns() -> bool {
    require(super::netns::netns_available().map_err(|e| format!("network namespaces: {e}")))
}

/// Headless Chromium (Debian's `chromium`, or `chromium-headless-shell`): the command
/// to run, if one is installed.
#[track_caller]
pub fn require_chromium() -> Option<&'static str> {
    const NAMES: [&str; 3] = ["chromium", "chromium-headless-shell", "chromium-browser"];
    let found = NAMES.into_iter().find(|b| tool(b, "chromium").is_ok());
    let check = found
        .map(drop)
        .ok_or_else(|| "no headless Chromium installed (apt-get install chromium)".to_string());
    if require(check) {
        found
    } else {
        None
    }
}
