//! Network namespaces the tests create: one namespace ([`Netns`]), one broadcast segment
//! (a bridge with a veth to each member namespace, [`Segment`]), the cluster lab built on
//! it ([`Lab`]), an address-only DHCP server on a segment ([`address_server`]), and
//! running code, requests or commands inside a namespace ([`in_netns`], [`command`]).
//! Everything made here is deleted when dropped; namespaces left by a test process that
//! was killed are deleted by the next one ([`remove_stale`]).
//!
//! Inside a namespace of its own a test may use fixed addresses and ports: nothing else
//! lives there, so nothing can race for them.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::child::{run_bounded, Proc};

/// First characters of every namespace the tests make (see [`unique_name`]).
const PREFIX: &str = "bt";

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
    let probe = unique_name("probe");
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

/// `PROGRAM` run inside namespace `ns` (`ip netns exec NS PROGRAM`), or here when `None`.
/// `ip netns exec` execs the program: the child's PID is the program's, so it can be
/// signalled by PID.
pub fn command(ns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A namespace name (or prefix) unique to this process and call:
/// `bt<kind><pid>x<n>`, which [`remove_stale`] recognizes.
pub fn unique_name(kind: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    assert!(
        !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase()),
        "namespace kind must be lowercase letters: {kind:?}"
    );
    format!(
        "{PREFIX}{kind}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The PID in a name made by [`unique_name`] (or a name starting with one).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let (pid, _) = rest.split_once('x')?;
    pid.parse().ok()
}

/// Names of the network namespaces that exist (`ip netns list`).
pub fn list() -> Vec<String> {
    let Ok(out) = run_bounded(
        Command::new("ip").args(["netns", "list"]),
        Duration::from_secs(20),
    ) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Deletes the namespaces whose [`unique_name`] belongs to a process that is gone (a
/// test killed before its `Drop` ran). Namespaces of running processes are left alone.
pub fn remove_stale() {
    for name in list() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
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
        self.try_ip(args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `ip -n NAME ARGS...`; `Err` holds its output when it fails.
    pub fn try_ip(&self, args: &[&str]) -> Result<(), String> {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// `PROGRAM` to be run inside this namespace (see [`command`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command(Some(&self.name), program)
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

/// One broadcast segment: namespace `<prefix>-lan` holding bridge `br0`, and for each
/// member `NAME` a namespace `<prefix>-NAME` whose `eth0` (with the member's address) is
/// a veth to bridge port `vNAME`. Every namespace, and so every veth, is deleted when
/// dropped, members first: drop the processes running in them first.
pub struct Segment {
    prefix: String,
    // Declared before `lan`: dropped first.
    members: Vec<(String, Netns)>,
    lan: Netns,
}

impl Segment {
    /// Builds the segment under a [`unique_name`] of `kind` (after [`remove_stale`]);
    /// `members` are (name, address/prefix length). `Err` if any step fails (what was
    /// made is deleted).
    pub fn new(kind: &str, members: &[(&str, &str)]) -> Result<Segment, String> {
        remove_stale();
        let prefix = unique_name(kind);
        let lan = Netns::add(&format!("{prefix}-lan"))?;
        lan.try_ip(&["link", "add", "br0", "type", "bridge", "forward_delay", "0"])?;
        lan.try_ip(&["link", "set", "br0", "up"])?;
        let mut seg = Segment {
            prefix,
            members: Vec::new(),
            lan,
        };
        for (name, cidr) in members {
            let ns = Netns::add(&format!("{}-{name}", seg.prefix))?;
            let port = format!("v{name}");
            seg.lan.try_ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            seg.lan
                .try_ip(&["link", "set", &port, "master", "br0", "up"])?;
            ns.try_ip(&["addr", "add", cidr, "dev", "eth0"])?;
            ns.try_ip(&["link", "set", "eth0", "up"])?;
            seg.members.push((name.to_string(), ns));
        }
        Ok(seg)
    }

    /// The namespaces' common prefix (`<prefix>-lan`, `<prefix>-NAME`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bridge's namespace.
    pub fn lan(&self) -> &Netns {
        &self.lan
    }

    /// Member `name`'s namespace.
    #[track_caller]
    pub fn member(&self, name: &str) -> &Netns {
        self.members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("no member {name} on segment {}", self.prefix))
    }

    /// Cuts member `name`'s link (its bridge port goes down; its `eth0` loses carrier).
    #[track_caller]
    pub fn cut(&self, name: &str) {
        self.lan.ip(&["link", "set", &format!("v{name}"), "down"]);
    }

    /// Restores member `name`'s link.
    #[track_caller]
    pub fn heal(&self, name: &str) {
        self.lan.ip(&["link", "set", &format!("v{name}"), "up"]);
    }
}

/// dnsmasq as the plain DHCP server of a segment, in namespace `ns` on its `eth0`:
/// addresses from `range` (dnsmasq's `--dhcp-range`), leases in `leases`, no DNS, PXE or
/// TFTP; `extra` flags after those. Returns once it says it serves the range.
#[track_caller]
pub fn address_server(ns: &Netns, range: &str, leases: &Path, extra: &[&str]) -> Proc {
    let mut cmd = ns.command("dnsmasq");
    cmd.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        // No ICMP probe of an address before offering it (saves 3 s a lease).
        "--no-ping",
        "--log-facility=-",
        "--user=root",
        "--pid-file=",
    ])
    .arg(format!("--dhcp-range={range}"))
    .arg(format!("--dhcp-leasefile={}", leases.display()))
    .args(extra);
    let mut p = Proc::spawn("dnsmasq (addresses)", &mut cmd);
    let ready = p.wait_for(Instant::now() + Duration::from_secs(20), |o, e| {
        o.contains("DHCP, IP range") || e.contains("DHCP, IP range")
    });
    assert!(
        ready.is_some(),
        "the address server (dnsmasq) did not start"
    );
    p
}

/// The cluster lab: a [`Segment`] with members `h1..hN`, host `i` in namespace
/// [`Lab::host_ns`] at [`Lab::addr`]`(i)`/24.
pub struct Lab {
    seg: Segment,
    hosts: usize,
}

impl Lab {
    /// Builds the namespaces; `Err` if any step fails (what was made is deleted).
    pub fn new(hosts: usize) -> Result<Lab, String> {
        let members: Vec<(String, String)> = (1..=hosts)
            .map(|i| (format!("h{i}"), format!("{}/24", Lab::addr(i))))
            .collect();
        let refs: Vec<(&str, &str)> = members
            .iter()
            .map(|(n, a)| (n.as_str(), a.as_str()))
            .collect();
        Ok(Lab {
            seg: Segment::new("lab", &refs)?,
            hosts,
        })
    }

    /// Host `i`'s namespace (1-based).
    pub fn host_ns(&self, i: usize) -> String {
        self.seg.member(&format!("h{i}")).name().to_string()
    }

    /// Host `i`'s address.
    pub fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, 0, i as u8)
    }

    /// Cuts host `i`'s link (its bridge port goes down; its `eth0` loses carrier).
    pub fn cut(&self, i: usize) {
        self.seg.cut(&format!("h{i}"));
    }

    /// Restores host `i`'s link.
    pub fn heal(&self, i: usize) {
        self.seg.heal(&format!("h{i}"));
    }

    /// Number of host namespaces.
    pub fn hosts(&self) -> usize {
        self.hosts
    }
}
