//! Network namespaces the tests create: one namespace ([`Netns`]), a bridge with a veth
//! per host namespace ([`Lab`]), and running code or requests inside one
//! ([`in_netns`]). Everything made here is deleted when dropped.
//!
//! Inside a namespace of its own a test may use fixed addresses and ports: nothing else
//! lives there, so nothing can race for them.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use super::child::run_bounded;

/// Runs `ip ARGS...` (bounded); `Err` holds its output when it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = run_bounded(Command::new("ip").args(args), Duration::from_secs(20))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            out.stderr
        ))
    }
}

/// [`ip`] that must succeed.
#[track_caller]
pub fn ip_ok(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// Whether network namespaces can be made here (root, iproute2, kernel support);
/// `Err` says why not.
pub fn netns_available() -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    let probe = format!("btprobe{}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run `ip` (apt-get install iproute2): {e}"))?;
    if !made.success() {
        return Err("`ip netns add` fails here".into());
    }
    let _ = ip(&["netns", "del", &probe]);
    Ok(())
}

/// Whether the calling thread is in another network namespace than PID 1 (one a test
/// created): then every address it can reach belongs to the test.
pub fn in_private_netns() -> bool {
    let own = std::fs::read_link("/proc/thread-self/ns/net");
    let init = std::fs::read_link("/proc/1/ns/net");
    matches!((own, init), (Ok(a), Ok(b)) if a != b)
}

/// Moves the calling thread into network namespace `name` (only this thread).
pub fn enter_netns(name: &str) {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns(2) with a namespace fd this thread holds; it changes the network
    // namespace of the calling thread only.
    let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Runs `f` in namespace `ns` (on a thread that entered it), or here when `None`.
pub fn in_netns<T: Send + 'static>(ns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    match ns {
        None => f(),
        Some(ns) => {
            let ns = ns.to_string();
            thread::spawn(move || {
                enter_netns(&ns);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        }
    }
}

/// A network namespace with its loopback up, deleted (`ip netns del`) when dropped.
/// Drop the processes running in it first.
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add name` with its loopback up.
    pub fn add(name: &str) -> Result<Netns, String> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        ip_ok(&v);
    }

    /// Runs `f` on a thread that has entered this namespace: the sockets `f` opens
    /// live in it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(Some(&self.name), f)
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

/// Namespaces `<prefix>-br` (a bridge, 10.88.0.254/24) and `<prefix>-h1..hN` (each
/// with `eth0` = 10.88.0.i/24, a veth whose other end `vbI` is a port of the bridge).
/// Every namespace (and so every veth) is deleted when dropped: drop the processes
/// running in them first.
pub struct Lab {
    prefix: String,
    hosts: usize,
    made: Vec<Netns>,
}

impl Lab {
    /// Builds the namespaces; `Err` if any step fails (what was made is deleted).
    pub fn new(hosts: usize) -> Result<Lab, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "bt{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut lab = Lab {
            prefix,
            hosts,
            made: Vec::new(),
        };
        let br = lab.bridge_ns();
        lab.made.push(Netns::add(&br)?);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "addr", "add", "10.88.0.254/24", "dev", "br0"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let ns = lab.host_ns(i);
            lab.made.push(Netns::add(&ns)?);
            let vb = format!("vb{i}");
            ip(&[
                "-n", &br, "link", "add", &vb, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &vb, "master", "br0", "up"])?;
            let addr = format!("{}/24", Lab::addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    /// The bridge namespace.
    pub fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// Host `i`'s namespace (1-based).
    pub fn host_ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// Host `i`'s address.
    pub fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, 0, i as u8)
    }

    /// Cuts host `i`'s link (its bridge port goes down; its `eth0` loses carrier).
    pub fn cut(&self, i: usize) {
        ip_ok(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &format!("vb{i}"),
            "down",
        ]);
    }

    /// Restores host `i`'s link.
    pub fn heal(&self, i: usize) {
        ip_ok(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &format!("vb{i}"),
            "up",
        ]);
    }

    /// Number of host namespaces.
    pub fn hosts(&self) -> usize {
        self.hosts
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Host namespaces first, the bridge last.
        while self.made.pop().is_some() {}
    }
}
