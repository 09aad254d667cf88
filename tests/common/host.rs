//! One `baton serve` process, for every test and bench: [`HostBuilder`] says how to run
//! it, [`Host`] runs it, restarts it on the same data directory, kills it (`kill -9`),
//! freezes it (SIGSTOP/SIGCONT), stops it (SIGTERM), on loopback or inside a network
//! namespace, and prints its log when the test fails.
//!
//! Ports come from the server: listeners bind port 0 unless the builder fixes one, and
//! the server writes the addresses it bound to `--port-file` (in its data directory),
//! which [`Host::wait_ready`] reads. No port is chosen by the test and freed before the
//! server binds it, so parallel tests cannot race for one. A host restarted by the same
//! [`Host`] binds the HTTP port it had before (peers know it by that address: it is in
//! the Raft membership); see [`Host::start`]. TFTP and DHCP ports may change across
//! restarts: read them again ([`Host::tftp`]) after a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use baton::serve::ListenAddrs;
use tempfile::TempDir;

use super::api::{Api, HTTP_TIMEOUT};
use super::child::{reaped, signal, spawn_run, wait_with_deadline};
use super::netns::{command, Lab};
use super::tftp::{curl_tftp, tftp_error_code, tftp_hpa, TFTP_TIMEOUT};

/// API token the hosts are started with (unless told otherwise).
pub const TOKEN: &str = "test-token-5f0c2a9e";
/// The cluster secret of fleet members.
pub const SECRET: &str = "test-cluster-secret-7c41d2e9";
/// How long a lone host may take to bind its listeners.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a fleet member may take to be ready: joining includes catching up (and the
/// first host of a fleet restarted whole waits for a majority).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a host may take to exit after SIGTERM in [`Host::stop`].
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one API request to a fleet member (fault tests poll hosts that may hang).
pub const MEMBER_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// File name of the port file in the data directory.
pub const PORT_FILE: &str = "ports.json";

/// Path of the `baton` binary cargo built for these tests.
pub fn baton_bin() -> &'static str {
    env!("CARGO_BIN_EXE_baton")
}

/// The binary a bench runs: env `BATON_BIN`, else the one cargo built for it.
pub fn bench_bin() -> PathBuf {
    std::env::var_os("BATON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(baton_bin()))
}

/// Removes the environment variables `baton serve` (and `baton doctor`) read, so only
/// the flags a test gives count, not the environment of the test runner.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("RUST_LOG")
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_API_TOKEN")
        .env_remove("BATON_CLUSTER_SECRET")
}

/// Where the server gets its API token from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `--api-token TOKEN`.
    Flag(String),
    /// Env `BATON_API_TOKEN`.
    Env(String),
    /// Neither: the server reads or creates `<data-dir>/api-token`.
    File,
}

/// How proxy-DHCP runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dhcp {
    /// `--no-dhcp`.
    Off,
    /// On 127.0.0.1, both ports chosen by the kernel.
    Loopback,
    /// On, as the flags given with [`HostBuilder::flag`] say.
    Flags,
}

/// How to run one `baton serve`.
#[derive(Clone)]
pub struct HostBuilder {
    bin: PathBuf,
    name: String,
    data_dir: Option<PathBuf>,
    /// Keeps temporary directories alive as long as a builder or host uses them.
    temps: Vec<Arc<TempDir>>,
    netns: Option<String>,
    tftp_listen: String,
    http_listen: String,
    tftp_root: Option<PathBuf>,
    template_dir: Option<PathBuf>,
    token: TokenSource,
    secret: Option<String>,
    join: Option<String>,
    group: Option<String>,
    dhcp: Dhcp,
    log_level: String,
    node_files: Option<String>,
    config: Option<String>,
    args: Vec<String>,
    ready_timeout: Duration,
    api_timeout: Duration,
    tls: Option<Tls>,
}

/// A host's TLS files (`[tls]`): its certificate and key, the CA bundle it trusts, and
/// how peers authenticate (`mtls` or `secret`).
#[derive(Clone, Debug)]
pub struct Tls {
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`.
    pub key: PathBuf,
    /// `--tls-ca`; also what the test's [`Api`] trusts.
    pub ca: PathBuf,
    /// `--tls-peer-auth`.
    pub peer_auth: String,
}

impl HostBuilder {
    /// A lone host on `data_dir` (kept after the host stops): host name `h1`, TFTP and
    /// HTTP on ports of 127.0.0.1 the kernel picks, no proxy-DHCP, API token [`TOKEN`],
    /// no cluster secret, log level `info`.
    pub fn new(data_dir: &Path) -> Self {
        HostBuilder {
            data_dir: Some(data_dir.to_path_buf()),
            ..Self::unplaced("h1")
        }
    }

    /// [`HostBuilder::new`] on a fresh temporary data directory, removed when the last
    /// builder or host using it is dropped.
    pub fn temp() -> Self {
        let t = TempDir::new().expect("temp dir for --data-dir");
        let mut b = Self::new(t.path());
        b.temps.push(Arc::new(t));
        b
    }

    /// For the TFTP tests: [`HostBuilder::temp`] serving an empty temporary root of its
    /// own ([`Host::put`] fills it), with a debug log.
    pub fn tftp() -> Self {
        let root = TempDir::new().expect("temp dir for the TFTP root");
        let mut b = Self::temp().tftp_root(root.path()).log_level("debug");
        b.temps.push(Arc::new(root));
        b
    }

    /// For the PXE tests: [`HostBuilder::new`] with proxy-DHCP on (its flags given with
    /// [`HostBuilder::flag`], or [`HostBuilder::dhcp_loopback`]), node files only to
    /// their node (`--node-files bound`) and a debug log.
    pub fn pxe(data_dir: &Path) -> Self {
        Self::new(data_dir).pxe_defaults()
    }

    /// [`HostBuilder::pxe`] on a fresh temporary data directory.
    pub fn pxe_temp() -> Self {
        Self::temp().pxe_defaults()
    }

    fn pxe_defaults(self) -> Self {
        self.with_dhcp()
            .log_level("debug")
            .node_files(Some("bound"))
    }

    /// A fleet member named `name`: the cluster secret [`SECRET`], [`READY_TIMEOUT`],
    /// API requests bounded by [`MEMBER_HTTP_TIMEOUT`]; its data directory is given by
    /// the fleet (or [`HostBuilder::data_dir_at`]).
    pub fn member(name: &str) -> Self {
        Self::unplaced(name)
            .secret(Some(SECRET))
            .ready_timeout(READY_TIMEOUT)
            .api_timeout(MEMBER_HTTP_TIMEOUT)
    }

    /// Member `h<i>` of `lab`, in its namespace at 10.88.0.i (HTTP 8069, TFTP 69: fixed
    /// ports are race-free in a namespace of its own).
    pub fn in_lab(lab: &Lab, i: usize) -> Self {
        let a = Lab::addr(i);
        Self::member(&format!("h{i}"))
            .netns(&lab.host_ns(i))
            .http_listen(&format!("{a}:8069"))
            .tftp_listen(&format!("{a}:69"))
    }

    fn unplaced(name: &str) -> Self {
        HostBuilder {
            bin: PathBuf::from(baton_bin()),
            name: name.into(),
            data_dir: None,
            temps: Vec::new(),
            netns: None,
            tftp_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            tftp_root: None,
            template_dir: None,
            token: TokenSource::Flag(TOKEN.into()),
            secret: None,
            join: None,
            group: None,
            dhcp: Dhcp::Off,
            log_level: "info".into(),
            // The server's default is `bound`; most tests fetch node files from loopback
            // without a PXE exchange first, as an operator with DHCP elsewhere would.
            node_files: Some("open".into()),
            config: None,
            args: Vec::new(),
            ready_timeout: START_TIMEOUT,
            api_timeout: HTTP_TIMEOUT,
            tls: None,
        }
    }

    /// Serves the API and cluster routes over HTTPS with `tls`, and HTTP boot on a plain
    /// listener (`--http-boot-listen` on a port of 127.0.0.1 the kernel picks; see
    /// [`Host::boot_http`]). [`Host::url`] and [`Host::api`] speak https.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The binary to run (default: the one cargo built; benches: [`bench_bin`]).
    pub fn bin(mut self, bin: &Path) -> Self {
        self.bin = bin.to_path_buf();
        self
    }

    /// `--host-name`.
    pub fn host(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// `--data-dir`.
    pub fn data_dir_at(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Runs the server inside network namespace `ns` (`ip netns exec`).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.into());
        self
    }

    /// `--tftp-listen` (default `127.0.0.1:0`).
    pub fn tftp_listen(mut self, addr: &str) -> Self {
        self.tftp_listen = addr.into();
        self
    }

    /// `--http-listen` (default `127.0.0.1:0`).
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

    /// How the API token is given.
    pub fn token(mut self, t: TokenSource) -> Self {
        self.token = t;
        self
    }

    /// The cluster secret (env `BATON_CLUSTER_SECRET`); `None`: clustering disabled.
    pub fn secret(mut self, s: Option<&str>) -> Self {
        self.secret = s.map(str::to_string);
        self
    }

    /// `--join URL`.
    pub fn join(mut self, url: &str) -> Self {
        self.join = Some(url.into());
        self
    }

    /// `--group`.
    pub fn group(mut self, g: &str) -> Self {
        self.group = Some(g.into());
        self
    }

    /// Proxy-DHCP on, configured by flags the caller gives (`--dhcp-interface`...).
    pub fn with_dhcp(mut self) -> Self {
        self.dhcp = Dhcp::Flags;
        self
    }

    /// Proxy-DHCP on 127.0.0.1, on two ports the kernel picks ([`Host::dhcp`] and
    /// [`Host::pxe`] say which).
    pub fn dhcp_loopback(mut self) -> Self {
        self.dhcp = Dhcp::Loopback;
        self
    }

    /// `--no-dhcp` (the default).
    pub fn no_dhcp(mut self) -> Self {
        self.dhcp = Dhcp::Off;
        self
    }

    /// `--log-level` (default `info`).
    pub fn log_level(mut self, filter: &str) -> Self {
        self.log_level = filter.into();
        self
    }

    /// `--node-files` (default `open` in tests, `bound` for [`HostBuilder::pxe`]); `None`
    /// leaves it to the config file or the server's default (`bound`).
    pub fn node_files(mut self, mode: Option<&str>) -> Self {
        self.node_files = mode.map(Into::into);
        self
    }

    /// TOML text, written to `<data-dir>/baton.toml` and passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.into());
        self
    }

    /// Another flag of `baton serve`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// A flag with its value.
    pub fn flag(self, name: &str, value: impl ToString) -> Self {
        self.arg(name).arg(&value.to_string())
    }

    /// How long [`Host::start`] waits for the listeners (default [`START_TIMEOUT`]).
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// Deadline of the host's [`Api`] requests (default [`HTTP_TIMEOUT`]).
    pub fn api_timeout(mut self, t: Duration) -> Self {
        self.api_timeout = t;
        self
    }

    /// Its host name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data directory; panics if none is set yet.
    pub fn data_dir(&self) -> &Path {
        self.data_dir
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no data directory set", self.name))
    }

    /// The URL it joins, if any.
    pub fn joins(&self) -> Option<&str> {
        self.join.as_deref()
    }

    /// The `baton serve` command line (not started), HTTP on `http_listen`; writes the
    /// config file.
    fn command_on(&self, http_listen: &str) -> Command {
        let data = self.data_dir();
        // In a namespace, the PID is still baton's (see `netns::command`).
        let mut cmd = command(self.netns.as_deref(), &self.bin);
        cmd.arg("serve")
            .args(["--tftp-listen", &self.tftp_listen])
            .args(["--http-listen", http_listen])
            .arg("--data-dir")
            .arg(data)
            .arg("--port-file")
            .arg(data.join(PORT_FILE))
            .args(["--host-name", &self.name])
            .args(["--log-level", &self.log_level]);
        if let Some(m) = &self.node_files {
            cmd.args(["--node-files", m]);
        }
        if let Some(d) = &self.tftp_root {
            cmd.arg("--tftp-root").arg(d);
        }
        if let Some(d) = &self.template_dir {
            cmd.arg("--template-dir").arg(d);
        }
        if let Some(g) = &self.group {
            cmd.args(["--group", g]);
        }
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        }
        if let Some(t) = &self.tls {
            cmd.arg("--tls-cert")
                .arg(&t.cert)
                .arg("--tls-key")
                .arg(&t.key)
                .arg("--tls-ca")
                .arg(&t.ca)
                .args(["--tls-peer-auth", &t.peer_auth])
                .args(["--http-boot-listen", "127.0.0.1:0"]);
        }
        if let Some(toml) = &self.config {
            // Otherwise the server creates its data directory (with its own mode).
            std::fs::create_dir_all(data).expect("create the data dir");
            let f = data.join("baton.toml");
            std::fs::write(&f, toml).expect("write the config file");
            cmd.arg("--config").arg(f);
        }
        match self.dhcp {
            Dhcp::Off => {
                cmd.arg("--no-dhcp");
            }
            Dhcp::Loopback => {
                cmd.args(["--dhcp-listen", "127.0.0.1"]).args([
                    "--dhcp-port",
                    "0",
                    "--dhcp-pxe-port",
                    "0",
                ]);
            }
            Dhcp::Flags => {}
        }
        cmd.args(&self.args);
        // Only the flags count, not the environment of the test runner.
        clean_env(&mut cmd);
        match &self.token {
            TokenSource::Flag(t) => {
                cmd.args(["--api-token", t]);
            }
            TokenSource::Env(t) => {
                cmd.env("BATON_API_TOKEN", t);
            }
            TokenSource::File => {}
        }
        if let Some(s) = &self.secret {
            cmd.env("BATON_CLUSTER_SECRET", s);
        }
        cmd
    }

    /// The `baton serve` command line, not started (for runs expected to fail).
    pub fn command(&self) -> Command {
        self.command_on(&self.http_listen)
    }

    /// Starts a host and waits until it is ready ([`Host::start`]).
    #[track_caller]
    pub fn start(&self) -> Host {
        let mut h = Host::new(self.clone());
        h.start();
        h
    }
}

/// A `baton serve` process (or one to be started), killed (SIGKILL, by PID) when
/// dropped; its stderr is kept across its runs.
pub struct Host {
    spec: HostBuilder,
    /// Client of its API, with its token (in its namespace); valid once it is ready.
    pub api: Api,
    child: Option<std::process::Child>,
    /// stderr of every run, each run headed by a `===== NAME run N =====` line.
    log: Arc<Mutex<String>>,
    runs: usize,
    /// Where the current run's output starts in `log`.
    run_offset: usize,
    stopped: bool,
    addrs: Option<ListenAddrs>,
    /// The HTTP address restarts bind (see [`Host::start`]).
    pinned_http: Option<SocketAddr>,
}

impl Host {
    /// A host that is not started yet; without a data directory it gets a temporary one.
    pub fn new(mut spec: HostBuilder) -> Host {
        if spec.data_dir.is_none() {
            let t = TempDir::new().expect("temp dir for --data-dir");
            spec.data_dir = Some(t.path().to_path_buf());
            spec.temps.push(Arc::new(t));
        }
        Host {
            api: Api::new(SocketAddr::from(([0, 0, 0, 0], 0)), ""),
            spec,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            runs: 0,
            run_offset: 0,
            stopped: false,
            addrs: None,
            pinned_http: None,
        }
    }

    /// Its host name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How it runs: `.start()` it for another host on the same data directory.
    pub fn builder(&self) -> HostBuilder {
        self.spec.clone()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.spec.data_dir()
    }

    /// The served directory.
    pub fn root(&self) -> PathBuf {
        self.spec
            .tftp_root
            .clone()
            .unwrap_or_else(|| self.data_dir().join("tftp"))
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

    /// The namespace it runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.spec.netns.as_deref()
    }

    /// The addresses its current (or last) run bound.
    #[track_caller]
    pub fn addrs(&self) -> ListenAddrs {
        self.addrs
            .unwrap_or_else(|| panic!("{} has not bound its listeners yet", self.name()))
    }

    /// Its TFTP address.
    #[track_caller]
    pub fn tftp(&self) -> SocketAddr {
        self.addrs().tftp
    }

    /// Its HTTP address.
    #[track_caller]
    pub fn http(&self) -> SocketAddr {
        self.addrs().http
    }

    /// Its proxy-DHCP address on the DHCP (67) role.
    #[track_caller]
    pub fn dhcp(&self) -> SocketAddr {
        self.addrs()
            .dhcp
            .unwrap_or_else(|| panic!("{} runs without proxy-DHCP", self.name()))
    }

    /// Its proxy-DHCP address on the PXE boot-server (4011) role.
    #[track_caller]
    pub fn pxe(&self) -> SocketAddr {
        self.addrs()
            .pxe
            .unwrap_or_else(|| panic!("{} runs without proxy-DHCP", self.name()))
    }

    /// Its base URL, as peers know it (`https://` with [`HostBuilder::tls`]).
    #[track_caller]
    pub fn url(&self) -> String {
        let scheme = if self.spec.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http())
    }

    /// Its plain-HTTP boot listener (with [`HostBuilder::tls`]).
    #[track_caller]
    pub fn boot_http(&self) -> SocketAddr {
        self.addrs()
            .http_boot
            .unwrap_or_else(|| panic!("{} has no plain HTTP boot listener", self.name()))
    }

    /// Starts the process; does not wait for it to be ready. A restart binds the HTTP
    /// address of the previous run unless [`Host::new_http_port`] was called: peers know
    /// a member by that address. (It was this host's a moment ago; another program
    /// could take it meanwhile only by having the kernel pick that very port.)
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name());
        let http = match self.pinned_http {
            Some(a) => a.to_string(),
            None => self.spec.http_listen.clone(),
        };
        let mut cmd = self.spec.command_on(&http);
        // A port file left by an earlier run would say the wrong ports.
        let _ = std::fs::remove_file(self.data_dir().join(PORT_FILE));
        self.runs += 1;
        let (child, offset) = spawn_run(&mut cmd, &self.log, &self.spec.name, self.runs)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.spec.bin.display()));
        self.run_offset = offset;
        self.child = Some(child);
        self.stopped = false;
        self.addrs = None;
    }

    /// Waits until the current run has bound every listener (for a member: it is a
    /// caught-up, registered member); panics with its output if it exits first or takes
    /// longer than `timeout`.
    #[track_caller]
    pub fn wait_ready(&mut self, timeout: Duration) {
        if let Err(e) = self.try_wait_ready(timeout) {
            panic!("{e}; its stderr:\n{}", self.run_log());
        }
    }

    /// [`Host::wait_ready`] that returns what went wrong instead of panicking (the
    /// process is left as it is).
    pub fn try_wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let file = self.data_dir().join(PORT_FILE);
        loop {
            // Written whole (renamed into place) once every listener is bound.
            if let Ok(text) = std::fs::read_to_string(&file) {
                let addrs: ListenAddrs = serde_json::from_str(&text)
                    .map_err(|e| format!("{}: bad port file {text:?}: {e}", self.name()))?;
                return self.ready(addrs);
            }
            let exited = self
                .child
                .as_mut()
                .expect("host not started")
                .try_wait()
                .ok()
                .flatten();
            if let Some(st) = exited {
                // Let the reader thread drain what is left.
                thread::sleep(Duration::from_millis(100));
                self.forget_reaped();
                return Err(format!("{} exited ({st}) before it was ready", self.name()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not bind its listeners within {timeout:?}",
                    self.name()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn ready(&mut self, addrs: ListenAddrs) -> Result<(), String> {
        let token = match &self.spec.token {
            TokenSource::Flag(t) | TokenSource::Env(t) => t.clone(),
            TokenSource::File => std::fs::read_to_string(self.data_dir().join("api-token"))
                .map_err(|e| format!("the server did not write <data-dir>/api-token: {e}"))?
                .trim()
                .to_string(),
        };
        self.api = Api::new(addrs.http, &token)
            .timeout(self.spec.api_timeout)
            .in_netns(self.netns());
        if let Some(t) = &self.spec.tls {
            self.api = self.api.tls(&t.ca);
        }
        if self.pinned_http.is_none() {
            self.pinned_http = Some(addrs.http);
        }
        self.addrs = Some(addrs);
        Ok(())
    }

    /// [`Host::spawn`] then [`Host::wait_ready`] with the builder's timeout.
    #[track_caller]
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready(self.spec.ready_timeout);
    }

    /// The next start binds a new HTTP port (a new address for peers).
    pub fn new_http_port(&mut self) {
        self.pinned_http = None;
    }

    /// Drops the current process, which has been reaped.
    fn forget_reaped(&mut self) {
        if let Some(c) = self.child.take() {
            reaped(c.id());
        }
    }

    /// Process id of the current run.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("host not running").id()
    }

    /// The HTTP address the current run listens on, found in `/proc` as soon as it is
    /// bound: before the port file, which a joining member writes only once it joined.
    /// For a member whose peers reach it through something the test starts in front of
    /// it (a proxy), which must forward to it while it joins. Panics after `timeout`.
    #[track_caller]
    pub fn wait_http_bound(&self, timeout: Duration) -> SocketAddr {
        let pid = self.pid();
        let deadline = Instant::now() + timeout;
        loop {
            // The server's only TCP listener is its HTTP one.
            if let Some(a) = tcp_listeners(pid).into_iter().next() {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "{} bound no TCP listener within {timeout:?}; its stderr:\n{}",
                self.name(),
                self.run_log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether a process was started and not reaped (it may have exited since).
    pub fn spawned(&self) -> bool {
        self.child.is_some()
    }

    /// Whether its process runs (stopped counts as running).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    #[track_caller]
    fn signal(&self, sig: libc::c_int) {
        assert!(
            signal(self.pid(), sig),
            "kill({sig}) {}: {}",
            self.name(),
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL (this PID only) and reap: a crash, nothing flushed or closed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Child::kill sends SIGKILL to this child's PID only; it ends a stopped one too.
            c.kill().expect("SIGKILL the host");
            c.wait().expect("reap the host");
            reaped(c.id());
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

    /// Sends SIGTERM (after SIGCONT if it is stopped) without waiting.
    pub fn signal_term(&mut self) {
        if self.stopped {
            self.sigcont();
        }
        self.signal(libc::SIGTERM);
    }

    /// Waits up to `timeout` for the process to exit after a signal; `None` if it did not
    /// (it keeps running).
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut().expect("host not running");
        let st = wait_with_deadline(c, timeout)?;
        self.forget_reaped();
        Some(st)
    }

    /// [`Host::try_wait_exit`] that must see the exit; panics (killing it) otherwise.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout) {
            Some(st) => st,
            None => {
                self.kill9();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM; its stderr:\n{}",
                    self.name(),
                    self.run_log()
                );
            }
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit; `None` if it did not exit.
    pub fn try_terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal_term();
        self.try_wait_exit(timeout)
    }

    /// SIGTERM and the exit within `timeout`, which must come; returns how it exited.
    #[track_caller]
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal_term();
        self.wait_exit(timeout)
    }

    /// A clean stop: SIGTERM, exit within [`STOP_TIMEOUT`], exit status 0.
    #[track_caller]
    pub fn stop(&mut self) {
        let st = self.terminate(STOP_TIMEOUT);
        assert!(
            st.success(),
            "{} exited with {st} after SIGTERM; its stderr:\n{}",
            self.name(),
            self.run_log()
        );
    }

    /// Deletes its data directory (the host must be stopped).
    pub fn wipe(&self) {
        assert!(self.child.is_none(), "wipe a running host");
        std::fs::remove_dir_all(self.data_dir()).expect("delete the data dir");
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

    /// Lines of the current run's log containing all of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.run_log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Waits until the current run printed a line with all of `needles`; returns it.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines(needles).into_iter().next() {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`Host::wait_for_log`], panicking with the log if no line matches.
    #[track_caller]
    pub fn expect_log(&self, needles: &[&str], timeout: Duration) -> String {
        self.wait_for_log(needles, timeout).unwrap_or_else(|| {
            panic!(
                "no log line with all of {needles:?} within {timeout:?}; log of {}:\n{}",
                self.name(),
                self.run_log()
            )
        })
    }

    /// Fetches `remote` over TFTP with tftp-hpa (octet mode, [`TFTP_TIMEOUT`], from its
    /// namespace). `Err` holds what the client printed (e.g. `Error code 1: ...`).
    pub fn tftp_get(&self, remote: &str) -> Result<Vec<u8>, String> {
        tftp_hpa(self.netns(), self.tftp(), "octet", remote, TFTP_TIMEOUT)
    }

    /// Fetches `remote` over TFTP with curl (from its namespace): for names with a
    /// colon, which tftp-hpa's command line cannot carry.
    pub fn curl_tftp_get(&self, remote: &str) -> Result<Vec<u8>, String> {
        curl_tftp(self.netns(), self.tftp(), remote, TFTP_TIMEOUT)
    }

    /// Whether its blob store holds `content` (by its SHA-256 digest).
    pub fn holds_blob(&self, content: &[u8]) -> bool {
        let hex = baton::blobs::Digest::of(content).to_hex();
        self.data_dir()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .exists()
    }

    /// [`Host::tftp_get`] that must succeed.
    #[track_caller]
    pub fn tftp_ok(&self, remote: &str) -> Vec<u8> {
        self.tftp_get(remote)
            .unwrap_or_else(|e| panic!("TFTP get {remote} failed: {e}"))
    }

    /// [`Host::tftp_get`] as text.
    #[track_caller]
    pub fn tftp_text(&self, remote: &str) -> String {
        String::from_utf8(self.tftp_ok(remote)).expect("a text file")
    }

    /// The TFTP error code a fetch of `remote` must end with.
    #[track_caller]
    pub fn tftp_error(&self, remote: &str) -> u16 {
        match self.tftp_get(remote) {
            Ok(b) => panic!(
                "TFTP get {remote} succeeded ({} bytes), expected an error",
                b.len()
            ),
            Err(e) => tftp_error_code(&e)
                .unwrap_or_else(|| panic!("TFTP get {remote}: no error code in {e:?}")),
        }
    }
}

/// Per-request log lines left out of the excerpt printed on failure.
const NOISE: [&str; 5] = [
    "openraft::replication: RPCError",
    "tftp transfer completed",
    "tftp request refused",
    "pxe answer sent",
    "pxe request not answered",
];

/// Logs longer than this are saved to a file; the terminal gets their quiet tail.
const PRINTED_LINES: usize = 400;

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL also ends a stopped process.
            let _ = c.kill();
            let _ = c.wait();
            reaped(c.id());
        }
        if !thread::panicking() {
            return;
        }
        let full = self.log();
        let addrs = match &self.addrs {
            Some(a) => format!("http {}, tftp {}", a.http, a.tftp),
            None => "not listening".into(),
        };
        if full.lines().count() <= PRINTED_LINES {
            eprintln!(
                "----- {} ({addrs}) stderr -----\n{full}----- end -----",
                self.name()
            );
            return;
        }
        let file = std::env::temp_dir().join(format!(
            "baton-test-{}-{}.log",
            std::process::id(),
            self.name()
        ));
        let saved = std::fs::write(&file, &full).is_ok();
        let quiet: String = full
            .lines()
            .filter(|l| !NOISE.iter().any(|n| l.contains(n)))
            .map(|l| format!("{l}\n"))
            .collect();
        eprintln!(
            "----- {} ({addrs}) stderr{} -----\n{}----- end -----",
            self.name(),
            if saved {
                format!(", whole log in {}", file.display())
            } else {
                String::new()
            },
            tail(&quiet, 150)
        );
    }
}

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

/// The IPv4 TCP addresses process `pid` listens on: its socket inodes (`/proc/PID/fd`)
/// matched with the LISTEN rows of `/proc/PID/net/tcp` (the sockets of its namespace).
pub fn tcp_listeners(pid: u32) -> Vec<SocketAddr> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            // sl local_address rem_address st ... inode (10th field); 0A is LISTEN.
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                return None;
            }
            let (ip, port) = f[1].split_once(':')?;
            // The kernel prints the address's 4 bytes read as a native-endian u32.
            let ip = u32::from_str_radix(ip, 16).ok()?;
            let ip = std::net::Ipv4Addr::from(ip.to_ne_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(SocketAddr::from((ip, port)))
        })
        .collect()
}
