//! A fleet of `baton serve` hosts for the ownership fault tests (`tests/ownership.rs`)
//! and the takeover benchmark (`benches/takeover.rs`, which includes this file with
//! `#[path]`, so it only uses std, libc, ureq, serde_json and tempfile).
//!
//! Hosts run on loopback or each in a network namespace on a bridge the test creates
//! ([`Lab`]); they are killed, stopped and continued by PID, never by name, and killed
//! when dropped. Also here: a JSON client of the admin API, a raw TFTP client (probe or
//! paced download), the tftp-hpa client, and proxy-DHCP DISCOVERs.
//!
//! Everything is bounded in time.

#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

#[path = "child.rs"]
mod child;
#[path = "data.rs"]
mod data;
use child::spawn_run;
pub use data::pattern;

/// API token of every fleet host.
pub const TOKEN: &str = "fleet-token-3b9d0c7e41";
/// Cluster secret of every fleet.
pub const SECRET: &str = "fleet-cluster-secret-81f2a6d0";
/// How long a host may take to be ready (joining includes catching up).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one API request.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one tftp-hpa run.
pub const TFTP_HPA_TIMEOUT: Duration = Duration::from_secs(60);

const TFTP_LISTENING: &str = "tftp server listening";
const DHCP_LISTENING: &str = "proxy-dhcp listening";

/// Lease settings written to `[ownership]` (and Raft timing to `[cluster]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leases {
    /// `lease_interval_ms`.
    pub interval_ms: u64,
    /// `lease_ttl_ms`.
    pub ttl_ms: u64,
    /// `grace_ms`.
    pub grace_ms: u64,
    /// `[cluster] heartbeat_ms`.
    pub raft_heartbeat_ms: u64,
    /// `[cluster] election_timeout_ms`.
    pub election_ms: u64,
}

impl Leases {
    /// The defaults of `baton serve` (1 s / 3 s / 1 s, Raft timing derived from them:
    /// 125 ms / 500 ms).
    pub const DEFAULT: Leases = Leases {
        interval_ms: 1000,
        ttl_ms: 3000,
        grace_ms: 1000,
        raft_heartbeat_ms: 125,
        election_ms: 500,
    };

    /// Short leases for fast tests (200 ms / 600 ms / 300 ms), with the Raft timing
    /// `baton serve` derives from them (30 ms / 123 ms): an election fits inside the
    /// TTL, so the survivors of a dead leader renew their leases before they expire.
    pub const SHORT: Leases = Leases {
        interval_ms: 200,
        ttl_ms: 600,
        grace_ms: 300,
        raft_heartbeat_ms: 30,
        election_ms: 123,
    };

    /// Time after which peers may take over: TTL + grace.
    pub fn takeover_after(&self) -> Duration {
        Duration::from_millis(self.ttl_ms + self.grace_ms)
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// `interval/ttl/grace` for reports.
    pub fn label(&self) -> String {
        format!(
            "lease interval {} ms, ttl {} ms, grace {} ms (raft heartbeat {} ms, election {} ms)",
            self.interval_ms, self.ttl_ms, self.grace_ms, self.raft_heartbeat_ms, self.election_ms
        )
    }

    /// The TOML of these settings, plus `extra_cluster` lines under `[cluster]`.
    pub fn toml(&self, extra_cluster: &str) -> String {
        format!(
            "[ownership]\nlease_interval_ms = {}\nlease_ttl_ms = {}\ngrace_ms = {}\n\n\
             [cluster]\nheartbeat_ms = {}\nelection_timeout_ms = {}\n{extra_cluster}\n",
            self.interval_ms, self.ttl_ms, self.grace_ms, self.raft_heartbeat_ms, self.election_ms
        )
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("reserve a TCP port")
        .port()
}

/// `n` distinct loopback UDP ports that were free a moment ago.
pub fn free_udp_ports(n: usize) -> Vec<u16> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("reserve a UDP port"))
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().expect("local addr").port())
        .collect()
}

// ---------------------------------------------------------------------------------
// Network namespaces.
// ---------------------------------------------------------------------------------

/// Runs `ip ARGS...` (bounded), returning its error output when it fails.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = run_bounded(Command::new("ip").args(args), Duration::from_secs(20))?;
    if out.0.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.1),
            out.2
        ))
    }
}

/// Whether network namespaces can be made here; `Err` says why not.
pub fn netns_available() -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    let probe = format!("btprobe{}", std::process::id());
    ip(&["netns", "add", &probe]).map_err(|e| format!("`ip netns add` fails here: {e}"))?;
    let _ = ip(&["netns", "del", &probe]);
    Ok(())
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

/// Namespaces `<prefix>-br` (a bridge, 10.88.0.254/24) and `<prefix>-h1..hN` (each
/// with `eth0` = 10.88.0.i/24, a veth whose other end `vbI` is a port of the bridge).
/// Every namespace (and so every veth) is deleted when dropped: drop the processes
/// running in them first.
pub struct Lab {
    prefix: String,
    hosts: usize,
    made: Vec<String>,
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
        lab.add_ns(&br)?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "addr", "add", "10.88.0.254/24", "dev", "br0"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let ns = lab.host_ns(i);
            lab.add_ns(&ns)?;
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

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.made.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
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
        ip(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &format!("vb{i}"),
            "down",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Restores host `i`'s link.
    pub fn heal(&self, i: usize) {
        ip(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &format!("vb{i}"),
            "up",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Number of host namespaces.
    pub fn hosts(&self) -> usize {
        self.hosts
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------
// Processes.
// ---------------------------------------------------------------------------------

pub use child::wait_with_deadline as wait_child;

/// Runs `cmd` to completion within `timeout` (killed by PID otherwise): exit status,
/// stdout, stderr.
pub fn run_bounded(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(ExitStatus, Vec<u8>, String), String> {
    child::run_bounded(cmd, timeout).map(|o| (o.status, o.stdout, o.stderr))
}

/// How to run one host.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// `--host-name`.
    pub name: String,
    /// `--group` (none: the default group).
    pub group: Option<String>,
    /// Network namespace to run in (`ip netns exec`), if any.
    pub netns: Option<String>,
    /// `--http-listen`.
    pub http: SocketAddr,
    /// `--tftp-listen`.
    pub tftp: SocketAddr,
    /// Proxy-DHCP on 127.0.0.1 with these (dhcp, pxe) ports; `None`: `--no-dhcp`.
    pub dhcp: Option<(u16, u16)>,
    /// `--config` file content.
    pub config: String,
    /// `--join URL`.
    pub join: Option<String>,
    /// `--log-level`.
    pub log_level: String,
}

impl HostSpec {
    /// A host on fresh loopback ports; proxy-DHCP on loopback ports when `dhcp`.
    pub fn loopback(name: &str, config: &str, dhcp: bool) -> HostSpec {
        let udp = free_udp_ports(3);
        HostSpec {
            name: name.into(),
            group: None,
            netns: None,
            http: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            tftp: SocketAddr::from(([127, 0, 0, 1], udp[0])),
            dhcp: dhcp.then_some((udp[1], udp[2])),
            config: config.into(),
            join: None,
            log_level: "info".into(),
        }
    }

    /// Host `i` of `lab`, in its namespace at 10.88.0.i (HTTP 8069, TFTP 69).
    pub fn in_lab(lab: &Lab, i: usize, config: &str) -> HostSpec {
        let a = Lab::addr(i);
        HostSpec {
            name: format!("h{i}"),
            group: None,
            netns: Some(lab.host_ns(i)),
            http: SocketAddr::from((a, 8069)),
            tftp: SocketAddr::from((a, 69)),
            dhcp: None,
            config: config.into(),
            join: None,
            log_level: "info".into(),
        }
    }

    /// Base URL, as peers know it.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// One host: its spec and, while it runs, its process.
pub struct Host {
    /// How it runs.
    pub spec: HostSpec,
    /// Client of its API (in its namespace).
    pub api: Api,
    bin: PathBuf,
    data_dir: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    run_offset: usize,
    runs: usize,
    stopped: bool,
}

impl Host {
    /// A host (not started) on `data_dir`, running `bin`.
    pub fn new(bin: &Path, spec: HostSpec, data_dir: &Path) -> Host {
        Host {
            api: Api::new(spec.http, spec.netns.clone()),
            spec,
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            run_offset: 0,
            runs: 0,
            stopped: false,
        }
    }

    /// Host name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Starts the process (does not wait).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name());
        std::fs::create_dir_all(&self.data_dir).expect("create the data dir");
        let config = self.data_dir.join("baton.toml");
        std::fs::write(&config, &self.spec.config).expect("write the config file");
        let mut cmd = match &self.spec.netns {
            Some(ns) => {
                // `ip netns exec` execs the binary: the PID is baton's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("serve")
            .args(["--tftp-listen", &self.spec.tftp.to_string()])
            .args(["--http-listen", &self.spec.http.to_string()])
            .args(["--advertise-url", &self.spec.url()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--tftp-root")
            .arg(self.data_dir.join("tftp-root"))
            .args(["--host-name", &self.spec.name])
            .args(["--api-token", TOKEN])
            .args(["--log-level", &self.spec.log_level])
            .arg("--config")
            .arg(&config);
        if let Some(g) = &self.spec.group {
            cmd.args(["--group", g]);
        }
        match self.spec.dhcp {
            Some((d, p)) => {
                cmd.args(["--dhcp-listen", "127.0.0.1"])
                    .args(["--dhcp-port", &d.to_string()])
                    .args(["--dhcp-pxe-port", &p.to_string()]);
            }
            None => {
                cmd.arg("--no-dhcp");
            }
        }
        if let Some(j) = &self.spec.join {
            cmd.args(["--join", j]);
        }
        cmd.env_remove("RUST_LOG")
            .env_remove("BATON_CONFIG")
            .env_remove("BATON_API_TOKEN")
            .env("BATON_CLUSTER_SECRET", SECRET);
        self.runs += 1;
        let (child, offset) = spawn_run(&mut cmd, &self.log, &self.spec.name, self.runs)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.run_offset = offset;
        self.child = Some(child);
        self.stopped = false;
    }

    /// Waits until the current run serves TFTP (a caught-up, registered member) and,
    /// with proxy-DHCP, listens on both DHCP ports; panics with its output otherwise.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let want_dhcp = if self.spec.dhcp.is_some() { 2 } else { 0 };
        loop {
            let log = self.run_log();
            if log.contains(TFTP_LISTENING) && log.matches(DHCP_LISTENING).count() >= want_dhcp {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                thread::sleep(Duration::from_millis(100));
                self.child = None;
                panic!(
                    "{} exited ({st}) before it was ready; its stderr:\n{}",
                    self.name(),
                    self.run_log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not ready within {timeout:?}; its stderr:\n{}",
                    self.name(),
                    self.run_log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Host::spawn`] + [`Host::wait_ready`].
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready(READY_TIMEOUT);
    }

    /// Process id of the current run.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("host not running").id()
    }

    /// Whether its process runs (stopped counts as running).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the PID of a child this struct owns and has not reaped.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill({sig}): {}", std::io::Error::last_os_error());
    }

    /// SIGKILL (this PID only) and reap: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL the host");
            c.wait().expect("reap the host");
        }
        self.stopped = false;
    }

    /// SIGSTOP: the process freezes (sockets stay open, packets queue).
    pub fn sigstop(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    /// SIGCONT.
    pub fn sigcont(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }

    /// SIGTERM and wait for the exit; panics after 30 s.
    pub fn terminate(&mut self) -> ExitStatus {
        if self.stopped {
            self.sigcont();
        }
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().expect("host not running");
        wait_child(&mut c, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{} did not exit within 30 s of SIGTERM", self.spec.name)
        })
    }

    /// stderr of all runs.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// stderr of the current (or last) run.
    pub fn run_log(&self) -> String {
        let l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        l[self.run_offset..].to_string()
    }

    /// Its proxy-DHCP (udp/67-role) address.
    pub fn dhcp_addr(&self) -> SocketAddr {
        let (d, _) = self.spec.dhcp.expect("host runs without proxy-DHCP");
        SocketAddr::from(([127, 0, 0, 1], d))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL also ends a stopped process.
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            // The whole log goes to a file; the terminal gets its last lines without
            // the per-request chatter of the probes.
            let full = self.log();
            let file = std::env::temp_dir().join(format!(
                "baton-fleet-{}-{}.log",
                std::process::id(),
                self.spec.name
            ));
            let saved = std::fs::write(&file, &full).is_ok();
            let quiet: String = full
                .lines()
                .filter(|l| !NOISE.iter().any(|n| l.contains(n)))
                .map(|l| format!("{l}\n"))
                .collect();
            eprintln!(
                "----- {} (http {}, tftp {}) stderr{} -----\n{}----- end -----",
                self.spec.name,
                self.spec.http,
                self.spec.tftp,
                if saved {
                    format!(", whole log in {}", file.display())
                } else {
                    String::new()
                },
                tail(&quiet, 150)
            );
        }
    }
}

/// Per-request log lines left out of the log excerpt printed on failure.
const NOISE: [&str; 5] = [
    "openraft::replication: RPCError",
    "tftp transfer completed",
    "tftp request refused",
    "pxe answer sent",
    "pxe request not answered",
];

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(n);
    let mut out = String::new();
    if from > 0 {
        out.push_str(&format!("[... {from} earlier lines ...]\n"));
    }
    for l in &lines[from..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Hosts forming one cluster: the first initializes it, the others join it.
pub struct Fleet {
    /// The hosts, in start order.
    pub hosts: Vec<Host>,
    /// Data directories.
    pub dir: TempDir,
}

impl Fleet {
    /// Starts `specs` in order (each joins the first unless its spec says otherwise)
    /// and waits until every host is a member that sees all the others as `up`.
    pub fn start(bin: &Path, specs: Vec<HostSpec>) -> Fleet {
        let dir = TempDir::new().expect("temp dir for the fleet");
        let mut hosts: Vec<Host> = Vec::new();
        for mut spec in specs {
            if let Some(first) = hosts.first() {
                if spec.join.is_none() {
                    spec.join = Some(first.spec.url());
                }
            }
            let data = dir.path().join(&spec.name);
            let mut h = Host::new(bin, spec, &data);
            h.start();
            hosts.push(h);
        }
        let f = Fleet { hosts, dir };
        let names: Vec<String> = f.hosts.iter().map(|h| h.name().to_string()).collect();
        for h in &f.hosts {
            wait_until(Duration::from_secs(30), "every host up", || {
                let states = host_states(&h.api);
                names
                    .iter()
                    .all(|n| states.get(n).is_some_and(|s| s == "up"))
                    .then_some(())
            });
        }
        f
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name() == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The host named `name`, mutably.
    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.name() == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The Raft leader's host name, as `via` sees it.
    pub fn leader(&self, via: &str) -> Option<String> {
        let r = self.host(via).api.get("/v1/cluster").ok()?;
        r.json()["leader_host"].as_str().map(str::to_string)
    }
}

/// Calls `f` every 20 ms until it returns `Some`, panicking after `timeout`.
#[track_caller]
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------
// The admin API.
// ---------------------------------------------------------------------------------

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
    /// `METHOD path`.
    pub what: String,
}

impl Resp {
    /// Body as JSON (`null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status; returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{} -> {} (expected {status}): {}",
            self.what,
            self.status,
            self.text()
        );
        self.json()
    }
}

/// A client of one host's API (from inside its namespace, if it has one).
#[derive(Clone)]
pub struct Api {
    base: String,
    netns: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    /// A client of `http://addr`, run in `netns` when given.
    pub fn new(addr: SocketAddr, netns: Option<String>) -> Api {
        Api::with_timeout(addr, netns, HTTP_TIMEOUT)
    }

    /// Same, with another request deadline.
    pub fn with_timeout(addr: SocketAddr, netns: Option<String>, timeout: Duration) -> Api {
        Api {
            base: format!("http://{addr}"),
            netns,
            agent: ureq::AgentBuilder::new()
                .timeout(timeout)
                .redirects(0)
                .max_idle_connections(0)
                .build(),
        }
    }

    /// The same client with another request deadline.
    pub fn timeout(&self, timeout: Duration) -> Api {
        Api {
            base: self.base.clone(),
            netns: self.netns.clone(),
            agent: ureq::AgentBuilder::new()
                .timeout(timeout)
                .redirects(0)
                .max_idle_connections(0)
                .build(),
        }
    }

    /// Sends a request with the token; `Err` on transport failure.
    pub fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Resp, String> {
        let agent = self.agent.clone();
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {path}");
        let method = method.to_string();
        in_netns(self.netns.as_deref(), move || {
            let req = agent
                .request(&method, &url)
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .set("Content-Type", "application/json");
            let res = match body {
                Some(b) => req.send_bytes(&b),
                None => req.call(),
            };
            let resp = match res {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) => return Err(format!("{what}: {e}")),
            };
            let status = resp.status();
            let mut body = Vec::new();
            resp.into_reader()
                .read_to_end(&mut body)
                .map_err(|e| format!("{what}: reading the body: {e}"))?;
            Ok(Resp { status, body, what })
        })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Resp, String> {
        self.send("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: Value) -> Result<Resp, String> {
        self.send("POST", path, Some(body.to_string().into_bytes()))
    }

    /// `PUT path` with a JSON body.
    pub fn put(&self, path: &str, body: Value) -> Result<Resp, String> {
        self.send("PUT", path, Some(body.to_string().into_bytes()))
    }

    /// `GET path`, which must answer 200; returns the JSON.
    #[track_caller]
    pub fn get_ok(&self, path: &str) -> Value {
        self.get(path).unwrap_or_else(|e| panic!("{e}")).expect(200)
    }

    /// Uploads `content` as artifact `name`; returns its digest.
    #[track_caller]
    pub fn upload(&self, name: &str, content: &[u8]) -> String {
        let r = self
            .send(
                "POST",
                &format!("/v1/artifacts?name={name}"),
                Some(content.to_vec()),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            r.status == 200 || r.status == 201,
            "upload {name}: {} {}",
            r.status,
            r.text()
        );
        r.json()["artifact"]["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("upload {name}: no digest in {}", r.text()))
            .to_string()
    }

    /// Enrolls `id` (owned by this host) with `mac` and a deploy profile.
    #[track_caller]
    pub fn enroll_deploy(&self, id: &str, mac: &str, kernel: &str, ramdisk: &str) {
        self.post("/v1/nodes", json!({ "id": id, "macs": [mac] }))
            .unwrap_or_else(|e| panic!("{e}"))
            .expect(201);
        self.set_deploy(id, kernel, ramdisk);
    }

    /// Gives `id` a deploy profile.
    #[track_caller]
    pub fn set_deploy(&self, id: &str, kernel: &str, ramdisk: &str) {
        self.set_deploy_cmdline(id, kernel, ramdisk, &format!("baton.node={id}"));
    }

    /// Gives `id` a deploy profile with `console=ttyS0 ARGS` as its command line.
    #[track_caller]
    pub fn set_deploy_cmdline(&self, id: &str, kernel: &str, ramdisk: &str, args: &str) {
        self.put(
            &format!("/v1/nodes/{id}/profile"),
            json!({ "kind": "deploy", "kernel": kernel, "ramdisk": ramdisk,
                    "cmdline": format!("console=ttyS0 {args}") }),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .expect(200);
    }

    /// `(owner, epoch, handoff state)` of a node.
    #[track_caller]
    pub fn node(&self, id: &str) -> (String, u64, String) {
        let v = self.get_ok(&format!("/v1/nodes/{id}"));
        (
            v["owner"].as_str().unwrap_or_default().to_string(),
            v["epoch"].as_u64().unwrap_or(0),
            v["handoff"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// The hosts holding artifact `digest`.
    pub fn artifact_hosts(&self, digest: &str) -> Vec<String> {
        let Ok(r) = self.get("/v1/artifacts") else {
            return Vec::new();
        };
        r.json()
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["digest"] == json!(digest))
            .and_then(|a| a["hosts"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|h| h.as_str().map(str::to_string))
            .collect()
    }
}

/// Host name -> state (`up`, `suspect`, `down`, `draining`) as `api`'s host sees it.
pub fn host_states(api: &Api) -> std::collections::BTreeMap<String, String> {
    let Ok(r) = api.get("/v1/hosts") else {
        return Default::default();
    };
    r.json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            Some((
                h["host"]["name"].as_str()?.to_string(),
                h["state"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Waits until every host in `names` holds every artifact in `digests` (per `api`).
#[track_caller]
pub fn wait_replicated(api: &Api, digests: &[&str], names: &[&str], timeout: Duration) {
    wait_until(timeout, "artifacts replicated", || {
        digests
            .iter()
            .all(|d| {
                let hs = api.artifact_hosts(d);
                names.iter().all(|n| hs.iter().any(|h| h == n))
            })
            .then_some(())
    });
}

/// Digests of every file the nodes serve (kernels, ramdisks and the rendered
/// boot-loader configurations), per `api`.
pub fn node_digests(api: &Api, ids: &[&str]) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for id in ids {
        let v = api.get_ok(&format!("/v1/nodes/{id}/files"));
        for f in v.as_array().into_iter().flatten() {
            if let Some(d) = f["digest"].as_str() {
                out.insert(d.to_string());
            }
        }
    }
    out.into_iter().collect()
}

/// Waits until every host in `names` holds every file the nodes `ids` serve: only
/// then can any of them take the nodes over.
#[track_caller]
pub fn wait_nodes_replicated(api: &Api, ids: &[&str], names: &[&str], timeout: Duration) {
    let ds = node_digests(api, ids);
    let refs: Vec<&str> = ds.iter().map(String::as_str).collect();
    wait_replicated(api, &refs, names, timeout);
}

// ---------------------------------------------------------------------------------
// Node naming.
// ---------------------------------------------------------------------------------

/// MAC of test node `i`: `52:54:00:b7:XX:YY`.
pub fn mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0xb7, (i >> 8) as u8, i as u8]
}

/// `aa:bb:...` form.
pub fn mac_colons(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The node's pxelinux file: `pxelinux.cfg/01-aa-bb-...`.
pub fn pxelinux_path(m: [u8; 6]) -> String {
    format!(
        "pxelinux.cfg/01-{}",
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    )
}

// ---------------------------------------------------------------------------------
// TFTP.
// ---------------------------------------------------------------------------------

/// What a TFTP server said to a read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The whole file.
    Data(Vec<u8>),
    /// An ERROR packet (code, message).
    Error(u16, String),
    /// Nothing within the timeout (or the transfer stalled: the text says where).
    Silent(String),
}

impl Answer {
    /// The bytes, if the file came.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Answer::Data(d) => Some(d),
            _ => None,
        }
    }
}

/// An RRQ packet.
pub fn rrq(path: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(path.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet\0");
    for (k, v) in opts {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// An ACK packet.
pub fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}

/// Code and message of an ERROR packet.
pub fn parse_error(p: &[u8]) -> Option<(u16, String)> {
    if p.len() < 4 || p[..2] != [0, 5] {
        return None;
    }
    let msg = p[4..].split(|&b| b == 0).next().unwrap_or_default();
    Some((
        u16::from_be_bytes([p[2], p[3]]),
        String::from_utf8_lossy(msg).into_owned(),
    ))
}

/// Pauses of a slow client: after every `every` blocks, sleep `pause` before the ACK.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Blocks between pauses.
    pub every: u32,
    /// Pause.
    pub pause: Duration,
}

/// Downloads `path` from `server` with a lockstep client on its own socket (in the
/// calling thread's namespace). `wait` bounds the wait for each packet (the last ACK
/// is repeated twice before giving up); `pace` slows the client down; `progress`
/// counts received bytes. Options are sent as given (an OACK is acknowledged).
pub fn tftp_fetch(
    server: SocketAddr,
    path: &str,
    opts: &[(&str, &str)],
    wait: Duration,
    pace: Option<Pace>,
    progress: Option<&AtomicU64>,
) -> Answer {
    let local = match server.ip() {
        std::net::IpAddr::V4(a) if a.is_loopback() => Ipv4Addr::LOCALHOST,
        _ => Ipv4Addr::UNSPECIFIED,
    };
    tftp_fetch_from(local, server, path, opts, wait, pace, progress)
}

/// [`tftp_fetch`] from the local address `local` (a client with an address of its own,
/// e.g. 127.0.0.77 on loopback).
pub fn tftp_fetch_from(
    local: Ipv4Addr,
    server: SocketAddr,
    path: &str,
    opts: &[(&str, &str)],
    wait: Duration,
    pace: Option<Pace>,
    progress: Option<&AtomicU64>,
) -> Answer {
    let sock = UdpSocket::bind(SocketAddr::from((local, 0))).expect("bind a TFTP client socket");
    sock.set_read_timeout(Some(wait)).expect("set timeout");
    let req = rrq(path, opts);
    let _ = sock.send_to(&req, server);
    let mut blksize = 512usize;
    let mut tid: Option<SocketAddr> = None;
    let mut next: u16 = 1;
    let mut out = Vec::new();
    let mut last: Vec<u8> = req;
    let mut last_to = server;
    let mut retries = 0;
    let mut blocks: u32 = 0;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => {
                if retries >= 2 {
                    return Answer::Silent(format!(
                        "no packet within {wait:?} (after {} bytes, waiting for block {next})",
                        out.len()
                    ));
                }
                retries += 1;
                let _ = sock.send_to(&last, last_to);
                continue;
            }
        };
        if tid.is_some_and(|t| t != from) {
            continue;
        }
        let p = &buf[..n];
        if let Some((code, msg)) = parse_error(p) {
            return Answer::Error(code, msg);
        }
        if p.len() < 4 {
            continue;
        }
        match u16::from_be_bytes([p[0], p[1]]) {
            6 if tid.is_none() => {
                // OACK.
                tid = Some(from);
                let mut it = p[2..].split(|&b| b == 0);
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if k.eq_ignore_ascii_case(b"blksize") {
                        blksize = String::from_utf8_lossy(v).parse().unwrap_or(512);
                    }
                }
                last = ack(0).to_vec();
                last_to = from;
                let _ = sock.send_to(&last, from);
            }
            3 => {
                tid = Some(from);
                let block = u16::from_be_bytes([p[2], p[3]]);
                if block == next {
                    retries = 0;
                    out.extend_from_slice(&p[4..]);
                    if let Some(c) = progress {
                        c.store(out.len() as u64, Ordering::Relaxed);
                    }
                    blocks += 1;
                    if let Some(pc) = pace {
                        if pc.every > 0 && blocks.is_multiple_of(pc.every) {
                            thread::sleep(pc.pause);
                        }
                    }
                    last = ack(block).to_vec();
                    last_to = from;
                    let _ = sock.send_to(&last, from);
                    next = next.wrapping_add(1);
                    if p.len() - 4 < blksize {
                        return Answer::Data(out);
                    }
                } else {
                    let _ = sock.send_to(&last, last_to);
                }
            }
            _ => {}
        }
    }
}

/// Fetches `path` with tftp-hpa (`tftp -m octet`), inside `netns` when given.
pub fn tftp_hpa(netns: Option<&str>, server: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    let dir = TempDir::new().expect("temp dir for a download");
    let local = dir.path().join("out");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "tftp"]);
            c
        }
        None => Command::new("tftp"),
    };
    cmd.args(["-m", "octet"])
        .arg(server.ip().to_string())
        .arg(server.port().to_string())
        .args(["-c", "get", path])
        .arg(&local);
    let (st, out, err) = run_bounded(&mut cmd, TFTP_HPA_TIMEOUT)?;
    let printed = format!("{}{}", String::from_utf8_lossy(&out), err);
    if !st.success() || printed.contains("Error") || printed.contains("imed out") {
        return Err(format!("{st} {}", printed.trim()));
    }
    std::fs::read(&local).map_err(|e| format!("tftp left no file: {e}; it printed {printed:?}"))
}

/// Whether tftp-hpa is installed.
pub fn have_tftp_hpa() -> bool {
    run_bounded(Command::new("tftp").arg("-V"), Duration::from_secs(5)).is_ok()
}

// ---------------------------------------------------------------------------------
// Proxy-DHCP.
// ---------------------------------------------------------------------------------

/// A PXE (BIOS) DHCPDISCOVER from `mac` with transaction id `xid`.
pub fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1]);
    let vc = b"PXEClient:Arch:00000:UNDI:002001";
    p.push(60);
    p.push(vc.len() as u8);
    p.extend_from_slice(vc);
    p.extend_from_slice(&[93, 2, 0, 0]);
    p.extend_from_slice(&[94, 3, 1, 2, 1]);
    p.extend_from_slice(&[97, 17, 0]);
    p.extend_from_slice(&[0x11; 10]);
    p.extend_from_slice(&mac);
    p.push(255);
    p
}

/// If `p` is a BOOTREPLY to `xid` for `mac`: its boot file name.
pub fn offer_for(p: &[u8], mac: [u8; 6], xid: u32) -> Option<String> {
    if p.len() < 240 || p[0] != 2 || p[4..8] != xid.to_be_bytes() || p[28..34] != mac {
        return None;
    }
    let file = &p[108..236];
    let end = file.iter().position(|&b| b == 0).unwrap_or(file.len());
    Some(String::from_utf8_lossy(&file[..end]).into_owned())
}
