//! `baton serve` with proxy-DHCP enabled, for the PXE tests: on loopback ports (the
//! capture replays) or inside a network namespace the test created (the real-firmware
//! boots). Unlike [`super::http::BatonBuilder`], nothing adds `--no-dhcp` unless asked.
//!
//! Also: network namespaces that delete themselves ([`Netns`]), and a child process
//! whose output is collected and which is killed by its PID when dropped ([`Proc`]).

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::child::Child;
use super::http::{metric_value, Api, TOKEN};
use super::{baton_bin, parse_listen_addr, run_with_timeout, START_TIMEOUT};

const TFTP_LISTENING: &str = "tftp server listening";
const HTTP_LISTENING: &str = "http server listening";
const DHCP_LISTENING: &str = "proxy-dhcp listening";

/// Two distinct free UDP ports on 127.0.0.1 (for `--dhcp-port` and `--dhcp-pxe-port`).
/// Both are held while the second is chosen, then released; the server binds them next.
pub fn free_udp_ports() -> (u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    let pa = a.local_addr().expect("local addr").port();
    let pb = b.local_addr().expect("local addr").port();
    (pa, pb)
}

/// How to start a `baton serve` with (or without) proxy-DHCP.
#[derive(Clone)]
pub struct PxeBatonBuilder {
    data_dir: PathBuf,
    temp: Option<Arc<TempDir>>,
    host: String,
    netns: Option<String>,
    tftp_listen: String,
    http_listen: String,
    tftp_root: Option<PathBuf>,
    template_dir: Option<PathBuf>,
    dhcp: bool,
    log_level: String,
    args: Vec<String>,
}

impl PxeBatonBuilder {
    /// A server on `data_dir` (kept after the server stops), host name `h1`, TFTP and
    /// HTTP on ephemeral loopback ports, proxy-DHCP on (give its flags with
    /// [`PxeBatonBuilder::flag`]), API token [`TOKEN`].
    pub fn new(data_dir: &Path) -> Self {
        PxeBatonBuilder {
            data_dir: data_dir.to_path_buf(),
            temp: None,
            host: "h1".into(),
            netns: None,
            tftp_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            tftp_root: None,
            template_dir: None,
            dhcp: true,
            log_level: "debug".into(),
            args: Vec::new(),
        }
    }

    /// A server on a fresh temporary data directory.
    pub fn temp() -> Self {
        let t = TempDir::new().expect("temp dir for --data-dir");
        let mut b = Self::new(t.path());
        b.temp = Some(Arc::new(t));
        b
    }

    /// `--host-name`.
    pub fn host(mut self, name: &str) -> Self {
        self.host = name.into();
        self
    }

    /// Runs the server inside network namespace `ns` (`ip netns exec`).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.into());
        self
    }

    /// `--tftp-listen`.
    pub fn tftp_listen(mut self, addr: &str) -> Self {
        self.tftp_listen = addr.into();
        self
    }

    /// `--http-listen`.
    pub fn http_listen(mut self, addr: &str) -> Self {
        self.http_listen = addr.into();
        self
    }

    /// `--tftp-root`.
    pub fn tftp_root(mut self, dir: &Path) -> Self {
        self.tftp_root = Some(dir.to_path_buf());
        self
    }

    /// `--template-dir`.
    pub fn template_dir(mut self, dir: &Path) -> Self {
        self.template_dir = Some(dir.to_path_buf());
        self
    }

    /// `--no-dhcp` (e.g. to enroll nodes before the real start).
    pub fn no_dhcp(mut self) -> Self {
        self.dhcp = false;
        self
    }

    /// `--log-level` (default `debug`).
    pub fn log_level(mut self, filter: &str) -> Self {
        self.log_level = filter.into();
        self
    }

    /// Another flag of `baton serve`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// A flag with a value.
    pub fn flag(self, name: &str, value: impl ToString) -> Self {
        self.arg(name).arg(&value.to_string())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Starts the server and waits until TFTP, HTTP and (when on) both proxy-DHCP
    /// sockets listen; panics with its output otherwise.
    pub fn start(&self) -> PxeBaton {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`PxeBatonBuilder::start`], returning what went wrong instead of panicking
    /// (e.g. a port taken between choosing and binding it).
    pub fn try_start(&self) -> Result<PxeBaton, String> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(baton_bin());
                c
            }
            None => Command::new(baton_bin()),
        };
        cmd.arg("serve")
            .args(["--tftp-listen", &self.tftp_listen])
            .args(["--http-listen", &self.http_listen])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--host-name", &self.host])
            .args(["--log-level", &self.log_level])
            .args(["--api-token", TOKEN]);
        if let Some(d) = &self.tftp_root {
            cmd.arg("--tftp-root").arg(d);
        }
        if let Some(d) = &self.template_dir {
            cmd.arg("--template-dir").arg(d);
        }
        if !self.dhcp {
            cmd.arg("--no-dhcp");
        }
        cmd.args(&self.args)
            .env_remove("RUST_LOG")
            .env_remove("BATON_CONFIG")
            .env_remove("BATON_API_TOKEN");
        let desc = format!("{cmd:?}");
        // (kind, address): 0 tftp, 1 http, 2 proxy-dhcp.
        let (tx, rx) = mpsc::channel::<(u8, Option<SocketAddr>)>();
        let child = Child::spawn(
            &mut cmd,
            format!("baton serve ({})", self.host),
            move |line| {
                for (kind, needle) in [
                    (0u8, TFTP_LISTENING),
                    (1, HTTP_LISTENING),
                    (2, DHCP_LISTENING),
                ] {
                    if line.contains(needle) {
                        let _ = tx.send((kind, parse_listen_addr(line)));
                    }
                }
            },
        )
        .map_err(|e| format!("cannot run {desc}: {e}"))?;

        let mut s = PxeBaton {
            child,
            tftp: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            api: Api::new("0.0.0.0:0".parse().unwrap(), TOKEN),
            builder: self.clone(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut tftp, mut http, mut dhcp) = (None, None, 0);
        let want_dhcp = if self.dhcp { 2 } else { 0 };
        while tftp.is_none() || http.is_none() || dhcp < want_dhcp {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((0, a)) => tftp = a,
                Ok((1, a)) => http = a,
                Ok(_) => dhcp += 1,
                Err(e) => {
                    let status = s.child.try_wait();
                    return Err(format!(
                        "{desc}: did not report `{TFTP_LISTENING}`, `{HTTP_LISTENING}` and \
                         {want_dhcp} x `{DHCP_LISTENING}` ({e:?}; exit status {status:?}). \
                         Its stderr:\n{}",
                        s.log()
                    ));
                }
            }
        }
        s.tftp = tftp.expect("tftp address");
        s.http = http.expect("http address");
        s.api = Api::new(s.http, TOKEN);
        Ok(s)
    }
}

/// A running `baton serve`; killed (SIGKILL, by PID) when dropped.
pub struct PxeBaton {
    child: Child,
    /// TFTP address it reported.
    pub tftp: SocketAddr,
    /// HTTP address it reported (reachable from the test only outside a namespace).
    pub http: SocketAddr,
    /// Client of its API.
    pub api: Api,
    builder: PxeBatonBuilder,
}

impl PxeBaton {
    /// The builder it was started with.
    pub fn builder(&self) -> PxeBatonBuilder {
        self.builder.clone()
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Log lines containing all of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.child.log_lines(needles)
    }

    /// Waits until the log has a line containing all of `needles`; returns it.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        self.child.wait_for_log(needles, timeout)
    }

    /// The `/metrics` text (loopback servers only).
    pub fn metrics(&self) -> String {
        let r = self.api.anonymous("GET", "/metrics", &[], None);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// A sample of `/metrics` by its full name, labels included
    /// (`baton_dhcp_answered_total{type="offer"}`); 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics(), name).unwrap_or(0.0)
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; panics if it does not exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.child
            .terminate(timeout)
            .unwrap_or_else(|| panic!("baton serve did not exit within {timeout:?} of SIGTERM"))
    }
}

/// Runs `ip ARGS...` (bounded), panicking with its output when it fails.
#[track_caller]
pub fn ip(args: &[&str]) {
    let out = run_with_timeout(Command::new("ip").args(args), Duration::from_secs(20));
    assert!(
        out.status.success(),
        "ip {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        out.stderr
    );
}

/// Whether network namespaces can be made here (root, iproute2, kernel support).
/// `Err` says why not.
pub fn netns_available() -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    let probe = format!("batonprobe-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run `ip` (apt-get install iproute2): {e}"))?;
    if !ok.success() {
        return Err("`ip netns add` fails here".into());
    }
    let _ = Command::new("ip")
        .args(["netns", "del", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Ok(())
}

/// A network namespace, deleted (`ip netns del`) when dropped. Drop the processes
/// running in it first.
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add name` with its loopback up.
    #[track_caller]
    pub fn add(name: &str) -> Netns {
        ip(&["netns", "add", name]);
        let ns = Netns { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        ip(&v);
    }

    /// Runs `f` on a thread that has entered this namespace: the sockets `f` opens
    /// live in it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns(2) with a namespace fd this thread holds; it changes the
            // network namespace of this thread only.
            let r =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process whose stdout and stderr are collected (with the time each chunk
/// arrived) and which is killed by its PID (SIGKILL) when dropped.
pub struct Proc {
    name: String,
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` (stdin null, stdout and stderr collected).
    #[track_caller]
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name} ({cmd:?}): {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        fn drain(mut r: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => sink
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
        drain(child.stdout.take().expect("piped stdout"), out.clone());
        drain(child.stderr.take().expect("piped stderr"), err.clone());
        Proc {
            name: name.into(),
            child,
            out,
            err,
            exited: None,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Standard output so far (lossy text).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Standard error so far (lossy text).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Whether it has exited (and how).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Polls until `pred(stdout, stderr)` holds, `deadline` passes or the process
    /// exits; returns when `pred` was first seen to hold (to within 10 ms).
    pub fn wait_for(
        &mut self,
        deadline: Instant,
        mut pred: impl FnMut(&str, &str) -> bool,
    ) -> Option<Instant> {
        loop {
            if pred(&self.stdout(), &self.stderr()) {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline || self.try_wait().is_some() {
                // One last look: output may have arrived with the exit.
                thread::sleep(Duration::from_millis(50));
                return pred(&self.stdout(), &self.stderr()).then(Instant::now);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (this PID only) and reap.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "----- {} (pid {}) stdout -----\n{}\n----- {} stderr -----\n{}\n----- end -----",
                self.name,
                self.child.id(),
                self.stdout(),
                self.name,
                self.stderr()
            );
        }
    }
}
