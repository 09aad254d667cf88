//! Harness shared by the integration tests: runs a real `baton serve` process on
//! loopback with temporary directories, runs client commands with a deadline, and
//! speaks raw TFTP over UDP ([`raw`]).
//!
//! Everything here is bounded in time: a process that overstays its deadline is killed
//! (by its PID, never by name) and the test fails with what it printed.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

pub mod child;
pub mod cluster;
pub mod data;
pub mod http;
pub mod pxe;
pub mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use child::Child;
#[allow(unused_imports)] // not every test binary uses it
pub use data::pattern;

/// How long `baton serve` may take to say it is listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Default deadline for a client command (a transfer on loopback takes milliseconds).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The log line `baton serve` prints once the TFTP socket is bound.
const LISTENING: &str = "tftp server listening";

/// Path of the `baton` binary built by cargo for these tests.
pub fn baton_bin() -> &'static str {
    env!("CARGO_BIN_EXE_baton")
}

/// Flags every `baton serve` gets besides the TFTP ones: other listeners of the build
/// under test go to ephemeral loopback ports, so parallel servers never collide (and
/// nothing listens beyond loopback).
pub fn isolation_flags() -> &'static [&'static str] {
    static FLAGS: OnceLock<Vec<&'static str>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let help = Command::new(baton_bin())
            .args(["serve", "--help"])
            .output()
            .expect("baton serve --help");
        let help = String::from_utf8_lossy(&help.stdout);
        let mut flags = Vec::new();
        if help.contains("--http-listen") {
            flags.extend(["--http-listen", "127.0.0.1:0"]);
        }
        // Proxy-DHCP binds udp/67 and udp/4011 on all interfaces: tests that want it
        // start it explicitly on loopback ports.
        if help.contains("--no-dhcp") {
            flags.push("--no-dhcp");
        }
        flags
    })
}

/// Removes the environment variables `baton serve` reads, so only flags count.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("RUST_LOG")
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_API_TOKEN")
}

/// How to start a server: flags beyond the defaults, an optional config file.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    listen: String,
    args: Vec<String>,
    config: Option<String>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            listen: "127.0.0.1:0".into(),
            args: Vec::new(),
            config: None,
        }
    }
}

impl ServerBuilder {
    /// Listen address (default `127.0.0.1:0`, an ephemeral port).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.into();
        self
    }

    /// An extra flag of `baton serve`, e.g. `--tftp-single-port`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// A flag with a value, e.g. `("--tftp-mtu", "1500")`.
    pub fn flag(self, name: &str, value: impl ToString) -> Self {
        self.arg(name).arg(&value.to_string())
    }

    /// TOML text passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.into());
        self
    }

    /// Starts `baton serve` and waits until it listens; panics (with its output) if it
    /// exits or stays silent for [`START_TIMEOUT`].
    pub fn start(self) -> Server {
        let root = TempDir::new().expect("temp dir for the TFTP root");
        let data = TempDir::new().expect("temp dir for --data-dir");
        let mut cmd = Command::new(baton_bin());
        cmd.arg("serve")
            .args(["--tftp-listen", &self.listen])
            .arg("--tftp-root")
            .arg(root.path())
            .arg("--data-dir")
            .arg(data.path())
            .args(["--log-level", "debug"])
            .args(isolation_flags())
            .args(&self.args);
        if let Some(toml) = &self.config {
            let f = data.path().join("baton.toml");
            std::fs::write(&f, toml).expect("write config file");
            cmd.arg("--config").arg(f);
        }
        // The log filter must come from --log-level, not from the test runner's env.
        clean_env(&mut cmd);
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let child = Child::spawn(&mut cmd, "baton serve", move |line| {
            if line.contains(LISTENING) {
                if let Some(addr) = parse_listen_addr(line) {
                    let _ = tx.send(addr);
                }
            }
        })
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", baton_bin()));
        let mut server = Server {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            root,
            _data: data,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => server.addr = addr,
            Err(e) => {
                let status = server.child.try_wait();
                server.child.kill9();
                panic!(
                    "baton serve did not report `{LISTENING}` ({e:?}; exit status {status:?}). Its stderr:\n{}",
                    server.child.log()
                );
            }
        }
        server
    }
}

/// Extracts `addr=IP:PORT` from the listening line.
fn parse_listen_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(" addr=")? + " addr=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A running `baton serve`; killed (by PID) when dropped.
pub struct Server {
    child: Child,
    /// The address it listens on, as it reported it.
    pub addr: SocketAddr,
    root: TempDir,
    _data: TempDir,
}

impl Server {
    /// A server with default flags on `127.0.0.1:0`.
    pub fn start() -> Server {
        ServerBuilder::default().start()
    }

    /// Builder for a server with more flags.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The served directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Writes a file (creating parent directories) under the root; returns its path.
    pub fn put(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.root().join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("create dirs under the root");
        }
        std::fs::write(&p, content).expect("write file under the root");
        p
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Waits until the log has a line containing all of `needles`; returns that line.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        self.child.wait_for_log(needles, timeout)
    }

    /// Like [`Server::wait_for_log`], panicking with the whole log if no line matches.
    pub fn expect_log(&self, needles: &[&str], timeout: Duration) -> String {
        self.wait_for_log(needles, timeout).unwrap_or_else(|| {
            panic!(
                "no log line with all of {needles:?} within {timeout:?}; server log:\n{}",
                self.log()
            )
        })
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.terminate(timeout)
    }
}

pub use child::{wait_with_deadline, Output};

/// Runs `cmd` to completion, killing it (by PID) and panicking if it takes longer
/// than `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    child::run_bounded(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// True when `bin` is on PATH. When it is not: in CI (env `CI` set) the test fails;
/// elsewhere a loud SKIPPED line goes to stderr and the caller returns early.
pub fn require_client(bin: &str, apt_package: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            let p = d.join(bin);
            std::fs::metadata(&p).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    });
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("`{bin}` is not installed but CI is set: install it with `apt-get install {apt_package}`");
    }
    eprintln!("\n*** SKIPPED: {bin} not installed (apt-get install {apt_package}) ***\n");
    false
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
