//! The harness shared by the integration tests and the benches (which include it with
//! `#[path = "../tests/common/mod.rs"] mod common;`):
//!
//! - [`host`]: one `baton serve` process ([`host::Host`], [`host::HostBuilder`]);
//! - [`fleet`]: several hosts forming a cluster, lease settings;
//! - [`api`]: the client of the HTTP API;
//! - [`tftp`]: TFTP datagrams, a raw peer, the read client, tftp-hpa;
//! - [`dhcp`]: proxy-DHCP DISCOVERs;
//! - [`netns`]: network namespaces and bridge labs;
//! - [`browser`]: a headless Chromium driven over the DevTools protocol;
//! - [`scale`]: measuring a cluster at fleet size (import, percentiles, sizes, RSS);
//! - [`require`]: what a test needs from the machine, skipped loudly or failed in CI;
//! - [`child`]: child processes bounded in time; [`data`]: test data.
//!
//! `storm_lab.rs` (the `baton storm` lab) and `storm_cluster.rs` (the three-host
//! storm with faults, on that lab) sit here too, included with `#[path]` by
//! `tests/storm.rs`, `tests/storm_cluster.rs` and `benches/storm.rs` alone.
//!
//! Everything here is bounded in time: a process that overstays its deadline is killed
//! (by its PID, never by name) and the test fails with what it printed.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod browser;
pub mod child;
pub mod data;
pub mod dhcp;
pub mod fleet;
pub mod host;
pub mod netns;
pub mod require;
pub mod scale;
pub mod tftp;

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

pub use child::{run_bounded, wait_with_deadline, Output};
pub use data::pattern;
pub use host::{baton_bin, bench_bin};

/// Default deadline for a client command (a transfer on loopback takes milliseconds).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` to completion, killing it (by PID) and panicking if it takes longer
/// than `timeout`.
#[track_caller]
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run_bounded(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Calls `f` every 20 ms until it returns `Some`, panicking after `timeout`.
#[track_caller]
pub fn wait_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_until_every(timeout, Duration::from_millis(20), what, f)
}

/// [`wait_until`] calling `f` every `every` (for checks that cost the server a full
/// read of a large store).
#[track_caller]
pub fn wait_until_every<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(every);
    }
}

/// Polls `f` every 20 ms until it returns true (`true`) or `timeout` passes (`false`).
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Creates a FIFO (named pipe) at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Asserts two byte strings are equal, reporting length and first difference rather
/// than dumping megabytes.
#[track_caller]
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: received {} bytes, expected {}; first difference at offset {first} \
         (got {:?}, want {:?})",
        got.len(),
        want.len(),
        got.get(first..(first + 16).min(got.len())),
        want.get(first..(first + 16).min(want.len())),
    );
}

/// One test of this binary at a time: tests that run several hosts with short leases,
/// or at fleet size, would starve each other on a small machine, and CPU starvation
/// looks like a dead host. A test that panicked does not poison the others.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
