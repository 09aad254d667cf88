//! The TFTP servers under test: how to find, start, probe and stop each one.
//!
//! Every server runs on loopback only, pinned to its own CPU, started fresh for each
//! run so that its peak RSS (`VmHWM`) and CPU time belong to that run alone. A server
//! that is not installed is reported with the command that installs it.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton::wire::tftp::{self, Mode, Opcode, Packet, RequestOptions};

/// The servers the benchmark knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// This project.
    Baton,
    /// tftpd-hpa 5.x (`in.tftpd`), forks one process per transfer.
    TftpdHpa,
    /// atftpd 0.8, one thread per transfer.
    Atftpd,
    /// dnsmasq's built-in TFTP server, single process, event loop.
    Dnsmasq,
    /// r-tftpd (crates.io), tokio.
    RTftpd,
    /// async-tftp (crates.io) through `benches/peers/async-tftp-server`.
    AsyncTftp,
}

impl Kind {
    /// All servers, Baton first.
    pub const ALL: [Kind; 6] = [
        Kind::Baton,
        Kind::TftpdHpa,
        Kind::Atftpd,
        Kind::Dnsmasq,
        Kind::RTftpd,
        Kind::AsyncTftp,
    ];

    /// Short name used in tables and in `BOOT_STORM_SERVERS`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Baton => "baton",
            Kind::TftpdHpa => "tftpd-hpa",
            Kind::Atftpd => "atftpd",
            Kind::Dnsmasq => "dnsmasq",
            Kind::RTftpd => "r-tftpd",
            Kind::AsyncTftp => "async-tftp",
        }
    }

    /// What the server does with the options the benchmark sends.
    pub fn option_support(self) -> &'static str {
        match self {
            Kind::Baton => "blksize, tsize, timeout, windowsize (RFC 7440)",
            Kind::TftpdHpa => "blksize (-B 65464), tsize, timeout; no windowsize (ignored)",
            Kind::Atftpd => "blksize, tsize, timeout, windowsize (RFC 7440, since 0.8)",
            Kind::Dnsmasq => {
                "blksize (capped by --tftp-mtu/interface MTU), tsize, timeout; no windowsize"
            }
            Kind::RTftpd => "blksize, tsize, timeout, windowsize (RFC 7440)",
            Kind::AsyncTftp => "blksize, tsize, timeout, windowsize (RFC 7440, since 0.4)",
        }
    }

    /// Loopback address the server is told to listen on for a run. Baton binds port 0
    /// and reports the port it got (`--port-file`); dnsmasq's TFTP port is fixed at 69,
    /// so it gets an address of its own; the other peers cannot report a port, so they
    /// get one that was free a moment ago.
    pub fn listen_addr(self) -> std::io::Result<SocketAddr> {
        match self {
            Kind::Baton => Ok(SocketAddr::from(([127, 0, 0, 1], 0))),
            Kind::Dnsmasq => Ok(SocketAddr::from(([127, 0, 0, 69], 69))),
            _ => UdpSocket::bind("127.0.0.1:0")?.local_addr(),
        }
    }
}

/// Where the peers built from crates.io live (`cargo install --root` and target dirs).
pub fn peers_dir() -> PathBuf {
    let p = std::env::var_os("BOOT_STORM_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.peers"));
    p.canonicalize().unwrap_or(p)
}

fn existing(p: impl Into<PathBuf>) -> Option<PathBuf> {
    let p = p.into();
    p.is_file().then_some(p)
}

/// The Baton binary: `BATON_BIN`, else the one cargo built alongside this bench, else
/// `$CARGO_TARGET_DIR/release/baton`, else `target/release/baton`.
fn baton_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BATON_BIN") {
        return existing(&p)
            .ok_or_else(|| format!("BATON_BIN={} does not exist", p.to_string_lossy()));
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = option_env!("CARGO_BIN_EXE_baton") {
        candidates.push(p.into());
    }
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(Path::new(&d).join("release/baton"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/baton"));
    candidates.iter().find_map(existing).ok_or_else(|| {
        format!(
            "Baton binary not found (tried {}); run `cargo build --release` or set BATON_BIN",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Finds a server's program, or says how to install it.
pub fn locate(kind: Kind) -> Result<PathBuf, String> {
    let peers = peers_dir();
    match kind {
        Kind::Baton => baton_bin(),
        Kind::TftpdHpa => existing("/usr/sbin/in.tftpd")
            .ok_or_else(|| "not installed: apt-get install tftpd-hpa".into()),
        Kind::Atftpd => existing("/opt/atftpd/usr/sbin/atftpd")
            .or_else(|| existing("/usr/sbin/atftpd"))
            .ok_or_else(|| {
                "not installed: apt-get download atftpd && dpkg -x atftpd_*.deb /opt/atftpd \
                 (the package conflicts with tftpd-hpa; needs libwrap0)"
                    .into()
            }),
        Kind::Dnsmasq => existing("/usr/sbin/dnsmasq")
            .ok_or_else(|| "not installed: apt-get install dnsmasq-base".into()),
        Kind::RTftpd => existing(peers.join("bin/r-tftpd")).ok_or_else(|| {
            format!(
                "not installed: cargo install r-tftpd --root {}",
                peers.display()
            )
        }),
        Kind::AsyncTftp => {
            let target = peers.join("target-async-tftp");
            existing(target.join("release/async-tftp-server")).ok_or_else(|| {
                format!(
                    "not installed: cargo build --release --manifest-path \
                     benches/peers/async-tftp-server/Cargo.toml --target-dir {}",
                    target.display()
                )
            })
        }
    }
}

/// A running server.
pub struct Server {
    /// Which one.
    pub kind: Kind,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    /// Exact CPU accounting of the whole process tree, where available.
    cpu_group: Option<super::procstat::CpuGroup>,
}

impl Server {
    /// Process id of the server's main process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `kind` serving `root` on loopback, pinned to `cpu`, and waits until it
    /// answers a request. `scratch` holds its log and any state it needs.
    pub fn start(
        kind: Kind,
        bin: &Path,
        root: &Path,
        scratch: &Path,
        cpu: Option<usize>,
    ) -> Result<Server, String> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = format!("{}-{}", kind.name(), RUNS.fetch_add(1, Ordering::Relaxed));
        let addr = kind
            .listen_addr()
            .map_err(|e| format!("pick a port: {e}"))?;
        let ip = addr.ip().to_string();
        let port = addr.port().to_string();
        let log = scratch.join(format!("{run}.log"));
        let port_file = scratch.join(format!("{run}-ports.json"));
        let mut cmd = Command::new(bin);
        match kind {
            Kind::Baton => {
                let data = scratch.join(format!("{run}-data"));
                let _ = std::fs::create_dir_all(&data);
                cmd.arg("serve")
                    .arg("--tftp-listen")
                    .arg(addr.to_string())
                    .args(["--http-listen", "127.0.0.1:0", "--no-dhcp"])
                    .arg("--port-file")
                    .arg(&port_file)
                    .arg("--tftp-root")
                    .arg(root)
                    .arg("--data-dir")
                    .arg(data);
                // E.g. `--tftp-single-port`, to measure the other transfer mode.
                if let Ok(extra) = std::env::var("BOOT_STORM_BATON_ARGS") {
                    cmd.args(extra.split_whitespace());
                }
            }
            Kind::TftpdHpa => {
                // -L: foreground; -s: chroot to root; -B: allow blksize up to the max.
                cmd.args(["-L", "-s", "-B", "65464", "-u", "nobody", "-a"])
                    .arg(addr.to_string())
                    .arg(root);
            }
            Kind::Atftpd => {
                cmd.args([
                    "--daemon",
                    "--no-fork",
                    "--user",
                    "nobody.nogroup",
                    "--maxthread",
                    "1024",
                    "--tftpd-timeout",
                    "0",
                    "--verbose=1",
                    "--logfile",
                    "/dev/null",
                    "--bind-address",
                    &ip,
                    "--port",
                    &port,
                ])
                .arg(root);
            }
            Kind::Dnsmasq => {
                cmd.args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--port=0",
                    "--enable-tftp",
                    "--tftp-max=4096",
                    "--quiet-tftp",
                    "--log-facility=-",
                    "--bind-interfaces",
                    "--user=nobody",
                ])
                .arg(format!("--listen-address={ip}"))
                .arg(format!("--tftp-root={}", root.display()));
            }
            Kind::RTftpd => {
                // r-tftpd serves its working directory.
                cmd.current_dir(root).args([
                    "--listen",
                    &ip,
                    "--port",
                    &port,
                    "--max-connections",
                    "4096",
                ]);
            }
            Kind::AsyncTftp => {
                cmd.arg(addr.to_string()).arg(root);
            }
        }
        let out = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("log: {e}"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let cpu_group =
            super::procstat::CpuGroup::create(&format!("boot-storm-{}-{run}", std::process::id()))
                .map(std::sync::Arc::new);
        let group = cpu_group.clone();
        // SAFETY: only async-signal-safe calls (sched_setaffinity, open/write/close on a
        // prepared path) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(cpu) = cpu {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                if let Some(g) = &group {
                    // On failure the group stays empty and is dropped below.
                    let _ = g.join_self();
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        drop(cmd); // releases the pre_exec closure's reference to the group
        let child = spawned.map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut server = Server {
            kind,
            addr,
            child,
            log,
            cpu_group: None,
        };
        server.cpu_group = cpu_group
            .and_then(|g| std::sync::Arc::try_unwrap(g).ok())
            .filter(|g| g.contains(server.pid()));
        let ready = match kind {
            Kind::Baton => server
                .wait_port_file(&port_file, Duration::from_secs(10))
                .and_then(|()| server.wait_ready(Duration::from_secs(10))),
            _ => server.wait_ready(Duration::from_secs(10)),
        };
        match ready {
            Ok(()) => Ok(server),
            Err(e) => {
                let tail = server.log_tail(2000);
                server.stop();
                Err(format!("{e}; log tail:\n{tail}"))
            }
        }
    }

    /// CPU time (user + system) used so far by the server's whole process tree, and
    /// how it was measured.
    pub fn cpu_time(&self) -> (Duration, &'static str) {
        if let Some(u) = self.cpu_group.as_ref().and_then(|g| g.usage()) {
            return (u, "cgroup cpuacct");
        }
        (super::procstat::tree_cpu(self.pid()), "/proc tree")
    }

    /// Waits for Baton's port file (written once its listeners are bound) and takes the
    /// TFTP address from it.
    fn wait_port_file(&mut self, file: &Path, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(text) = std::fs::read_to_string(file) {
                let a: baton::serve::ListenAddrs = serde_json::from_str(&text)
                    .map_err(|e| format!("bad port file {text:?}: {e}"))?;
                self.addr = a.tftp;
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("{} exited at start-up ({st})", self.kind.name()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("no port file {} within {limit:?}", file.display()))
    }

    /// Probes with a request for a file that does not exist until any TFTP answer comes
    /// back (an ERROR, normally), or the process exits, or `limit` passes.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("probe bind: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| format!("probe: {e}"))?;
        let mut rrq = Vec::new();
        tftp::emit_request(
            &mut rrq,
            Opcode::Rrq,
            "boot-storm-readiness-probe-does-not-exist",
            Mode::Octet,
            &RequestOptions::default(),
        );
        let mut buf = [0u8; 1024];
        while start.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("{} exited at start-up ({st})", self.kind.name()));
            }
            let _ = sock.send_to(&rrq, self.addr);
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if Packet::parse(&buf[..n]).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "{} did not answer on {} within {limit:?}",
            self.kind.name(),
            self.addr
        ))
    }

    /// The last `max` bytes of the server's output.
    pub fn log_tail(&self, max: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let cut = s.len().saturating_sub(max);
        let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s[cut..].to_string()
    }

    /// True if the server's main process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the server and every process it forked: SIGTERM, then SIGKILL after 2 s.
    /// Only the PIDs of this server's own process tree are signalled.
    pub fn stop(&mut self) {
        let tree = super::procstat::process_tree(self.pid());
        for &p in tree.iter().rev() {
            // SAFETY: kill has no memory-safety preconditions; the PIDs are ours.
            unsafe {
                libc::kill(p as libc::pid_t, libc::SIGTERM);
            }
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if !self.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let leftover = super::procstat::process_tree(self.pid());
        for &p in tree.iter().chain(leftover.iter()) {
            if p != self.pid() && std::path::Path::new(&format!("/proc/{p}")).exists() {
                // SAFETY: as above.
                unsafe {
                    libc::kill(p as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop();
        }
    }
}
