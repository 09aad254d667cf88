//! Replicated-store benchmark: three release-build `baton serve` hosts on loopback.
//!
//! Measures, through the admin API:
//! - commit latency of sequential writes (one at a time) sent to the leader and to a
//!   follower (which forwards to the leader);
//! - commit latency and throughput of concurrent writes (client threads);
//! - failover time: SIGKILL of the leader until the next write committed through
//!   another host, over repeated trials (the killed host is restarted between trials).
//!
//! Run with `cargo bench --bench cluster`. The binary is the one cargo built for the
//! bench (`<target>/release/baton`); set `BATON_BIN` to use another. Knobs (env):
//! `BATON_BENCH_WRITES` (sequential writes per series, default 300),
//! `BATON_BENCH_THREADS` (default 16), `BATON_BENCH_TRIALS` (failover trials,
//! default 5). A watchdog stops everything after 5 minutes.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SECRET: &str = "bench-cluster-secret-31f0a9";
const TOKEN: &str = "bench-token-8c2d61e0";
const READY: &str = "tftp server listening";
const WATCHDOG: Duration = Duration::from_secs(300);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// PIDs of the running hosts, so the watchdog can kill them before exiting.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn baton_bin() -> PathBuf {
    std::env::var_os("BATON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_baton")))
}

fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("reserve a UDP port")
            .port()
    } else {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("reserve a TCP port")
            .port()
    }
}

/// One host: fixed ports so it can be restarted at the address the others know.
struct Host {
    name: String,
    data: PathBuf,
    http: SocketAddr,
    tftp: SocketAddr,
    join: Option<String>,
    config: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Host {
    fn new(name: &str, root: &Path, join: Option<String>) -> Host {
        Host {
            name: name.into(),
            data: root.join(name),
            http: SocketAddr::from(([127, 0, 0, 1], free_port(false))),
            tftp: SocketAddr::from(([127, 0, 0, 1], free_port(true))),
            join,
            config: root.join("baton.toml"),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(baton_bin());
        cmd.arg("serve")
            .args(["--no-dhcp", "--log-level", "warn,baton::tftp::server=info"])
            .args(["--tftp-listen", &self.tftp.to_string()])
            .args(["--http-listen", &self.http.to_string()])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--host-name", &self.name, "--api-token", TOKEN])
            .arg("--config")
            .arg(&self.config)
            .env("BATON_CLUSTER_SECRET", SECRET)
            .env_remove("RUST_LOG")
            .env_remove("BATON_CONFIG")
            .env_remove("BATON_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", baton_bin().display()));
        PIDS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child.id());
        let log = Arc::new(Mutex::new(String::new()));
        self.log = log.clone();
        let stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(READY)
            {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "{} did not start ({exited:?}):\n{}",
                    self.name,
                    self.log.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = c.kill();
            let _ = c.wait();
            PIDS.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|p| *p != c.id());
        }
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: kill(2) on the PID of a child we own and have not reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
            PIDS.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|p| *p != c.id());
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A keep-alive client of one host's API.
#[derive(Clone)]
struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(h: &Host) -> Client {
        Client {
            base: h.url(),
            agent: ureq::AgentBuilder::new().timeout(HTTP_TIMEOUT).build(),
        }
    }

    /// Sends a request; `Ok((status, body))`, `Err` on transport failure.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {TOKEN}"));
        let res = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e.to_string()),
        };
        let status = resp.status();
        let mut s = String::new();
        resp.into_reader()
            .read_to_string(&mut s)
            .map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&s).unwrap_or(Value::Null)))
    }

    fn cluster(&self) -> Option<Value> {
        match self.call("GET", "/v1/cluster", None) {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    }

    /// A write that must succeed; returns its latency.
    fn write(&self, method: &str, path: &str, body: &Value, ok: u16) -> Duration {
        let t = Instant::now();
        match self.call(method, path, Some(body)) {
            Ok((s, _)) if s == ok => t.elapsed(),
            other => panic!("{method} {}{path}: {other:?}", self.base),
        }
    }
}

struct Cluster {
    hosts: Vec<Host>,
    clients: Vec<Client>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::TempDir::new().expect("temp dir");
        std::fs::write(dir.path().join("baton.toml"), "").expect("config file");
        let mut hosts: Vec<Host> = Vec::new();
        for i in 1..=3 {
            let join = hosts.first().map(Host::url);
            let mut h = Host::new(&format!("h{i}"), dir.path(), join);
            h.spawn();
            h.wait_ready();
            hosts.push(h);
        }
        let clients = hosts.iter().map(Client::new).collect();
        Cluster {
            hosts,
            clients,
            _dir: dir,
        }
    }

    /// Index of the host that says it leads (among running ones).
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, c) in self.clients.iter().enumerate() {
                if self.hosts[i].child.is_none() {
                    continue;
                }
                if c.cluster().is_some_and(|v| v["state"] == "Leader") {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until host `i` applied what the leader had logged.
    fn wait_caught_up(&self, i: usize) {
        let l = self.leader();
        let target = self.clients[l]
            .cluster()
            .and_then(|v| v["last_log_index"].as_u64())
            .unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.clients[i]
            .cluster()
            .and_then(|v| v["applied_index"].as_u64())
            .unwrap_or(0)
            < target
        {
            assert!(
                Instant::now() < deadline,
                "{} does not catch up",
                self.hosts[i].name
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Latency summary of one series.
struct Row {
    what: String,
    lat: Vec<Duration>,
    wall: Duration,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<46} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "commit latency (ms)", "writes", "p50", "p90", "p99", "max", "writes/s"
    );
    for r in rows {
        let mut s = r.lat.clone();
        s.sort();
        println!(
            "{:<46} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.0}",
            r.what,
            s.len(),
            pct(&s, 0.5),
            pct(&s, 0.9),
            pct(&s, 0.99),
            pct(&s, 1.0),
            s.len() as f64 / r.wall.as_secs_f64()
        );
    }
}

fn mac(i: usize) -> String {
    format!(
        "52:54:01:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
}

fn sequential(
    c: &Client,
    what: String,
    n: usize,
    mut req: impl FnMut(usize) -> (String, String, Value, u16),
) -> Row {
    let mut lat = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let (method, path, body, ok) = req(i);
        lat.push(c.write(&method, &path, &body, ok));
    }
    Row {
        what,
        lat,
        wall: t.elapsed(),
    }
}

/// `threads` clients, client `t` sending `per` PATCHes to `targets[t % len]`, on nodes
/// `nodes[t]` (one node per thread, so writes never conflict).
fn concurrent(
    what: String,
    targets: &[Client],
    threads: usize,
    per: usize,
    states: &[&str],
) -> Row {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let c = targets[t % targets.len()].clone();
            let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
            thread::spawn(move || {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let body = json!({ "provision_state": states[i % states.len()] });
                    lat.push(c.write("PATCH", &format!("/v1/nodes/c{t:03}"), &body, 200));
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().expect("client thread"));
    }
    Row {
        what,
        lat,
        wall: t0.elapsed(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that excludes us means: do nothing.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "cluster".contains(a.as_str())) {
        return;
    }
    thread::spawn(|| {
        thread::sleep(WATCHDOG);
        eprintln!("cluster bench: watchdog: still running after {WATCHDOG:?}; killing the hosts");
        for pid in PIDS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Ok(pid) = libc::pid_t::try_from(*pid) {
                // SAFETY: kill(2) on PIDs of children this process started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::process::exit(2);
    });
    let n = env_usize("BATON_BENCH_WRITES", 300);
    let threads = env_usize("BATON_BENCH_THREADS", 16);
    let trials = env_usize("BATON_BENCH_TRIALS", 5);
    let per = (n * 2 / threads.max(1)).max(10);
    let bin = baton_bin();
    println!(
        "\ncluster bench: 3 hosts on loopback, {} ({} sequential writes per series, {threads} threads x {per} concurrent writes, {trials} failover trials)\n",
        bin.display(),
        n
    );
    let total = Instant::now();
    let mut c = Cluster::start();
    let l = c.leader();
    let f = (l + 1) % 3;
    let (ln, fname) = (c.hosts[l].name.clone(), c.hosts[f].name.clone());
    let mut rows = Vec::new();

    rows.push(sequential(
        &c.clients[l],
        format!("sequential enroll -> leader ({ln})"),
        n,
        |i| {
            (
                "POST".into(),
                "/v1/nodes".into(),
                json!({ "id": format!("s{i:05}"), "macs": [mac(i)] }),
                201,
            )
        },
    ));
    rows.push(sequential(
        &c.clients[f],
        format!("sequential enroll -> follower ({fname}, fwd)"),
        n,
        |i| {
            let j = n + i;
            (
                "POST".into(),
                "/v1/nodes".into(),
                json!({ "id": format!("s{j:05}"), "macs": [mac(j)] }),
                201,
            )
        },
    ));
    let states = ["available", "deploying", "active", "cleaning"];
    rows.push(sequential(
        &c.clients[l],
        format!("sequential PATCH -> leader ({ln})"),
        n,
        |i| {
            (
                "PATCH".into(),
                format!("/v1/nodes/s{i:05}"),
                json!({ "provision_state": states[i % 4] }),
                200,
            )
        },
    ));
    rows.push(sequential(
        &c.clients[f],
        format!("sequential PATCH -> follower ({fname}, fwd)"),
        n,
        |i| {
            (
                "PATCH".into(),
                format!("/v1/nodes/s{i:05}"),
                json!({ "provision_state": states[(i + 1) % 4] }),
                200,
            )
        },
    ));
    // One node per client thread, enrolled through the leader and replicated everywhere.
    for t in 0..threads {
        c.clients[l].write(
            "POST",
            "/v1/nodes",
            &json!({ "id": format!("c{t:03}"), "macs": [mac(100_000 + t)] }),
            201,
        );
    }
    c.wait_caught_up(f);
    c.wait_caught_up(3 - l - f);
    rows.push(concurrent(
        format!("concurrent PATCH, {threads} threads -> leader"),
        std::slice::from_ref(&c.clients[l]),
        threads,
        per,
        &states,
    ));
    rows.push(concurrent(
        format!("concurrent PATCH, {threads} threads -> all 3 hosts"),
        &c.clients,
        threads,
        per,
        &states,
    ));
    print_rows(&rows);

    println!(
        "\n{:<7} {:<8} {:<11} {:>13} {:>20}",
        "trial", "killed", "new leader", "failover ms", "restart+catch-up ms"
    );
    let mut times = Vec::new();
    for trial in 1..=trials {
        let l = c.leader();
        let s = (l + 1) % 3;
        let killed = c.hosts[l].name.clone();
        c.hosts[l].kill9();
        let t0 = Instant::now();
        let mut k = 0;
        let failover = loop {
            k += 1;
            let body =
                json!({ "id": format!("f{trial}-{k}"), "macs": [mac(200_000 + trial * 1000 + k)] });
            if let Ok((201, _)) = c.clients[s].call("POST", "/v1/nodes", Some(&body)) {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no write committed 60 s after killing the leader"
            );
            thread::sleep(Duration::from_millis(5));
        };
        let nl = c.leader();
        times.push(failover);
        let t1 = Instant::now();
        c.hosts[l].spawn();
        c.hosts[l].wait_ready();
        c.wait_caught_up(l);
        println!(
            "{:<7} {:<8} {:<11} {:>13.0} {:>20.0}",
            trial,
            killed,
            c.hosts[nl].name,
            failover.as_secs_f64() * 1e3,
            t1.elapsed().as_secs_f64() * 1e3
        );
    }
    times.sort();
    if !times.is_empty() {
        println!(
            "failover over {} trials: min {:.0} ms, median {:.0} ms, max {:.0} ms (heartbeat 150 ms, election timeout 750-1500 ms)",
            times.len(),
            pct(&times, 0.0),
            pct(&times, 0.5),
            pct(&times, 1.0)
        );
    }
    for h in &mut c.hosts {
        h.terminate();
    }
    println!(
        "\ncluster bench done in {:.1} s",
        total.elapsed().as_secs_f64()
    );
}
