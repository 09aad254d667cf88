//! What the PXE tests need beyond [`super::http::BatonBuilder::pxe`] (the server with
//! proxy-DHCP): free UDP port pairs, network namespaces that delete themselves
//! ([`Netns`]), and a child process whose output is collected and which is killed by
//! its PID when dropped ([`Proc`]).

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::run_with_timeout;

/// Two distinct free UDP ports on 127.0.0.1 (for `--dhcp-port` and `--dhcp-pxe-port`).
/// Both are held while the second is chosen, then released; the server binds them next.
pub fn free_udp_ports() -> (u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    let pa = a.local_addr().expect("local addr").port();
    let pb = b.local_addr().expect("local addr").port();
    (pa, pb)
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
