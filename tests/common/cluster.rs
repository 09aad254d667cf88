//! Several `baton serve` processes forming one replicated cluster on loopback.
//!
//! Each host gets fixed ports (reserved once), so it can be killed and restarted, or
//! wiped and rejoined, at the address the other members know it by (a member's address
//! is recorded in the Raft membership when it joins). A host's stderr is kept across
//! its runs. Hosts are killed (SIGKILL, by PID) when dropped.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::child::spawn_run;
use super::http::{serve_has_flag, Api, Reply, TOKEN};
use super::{baton_bin, wait_with_deadline};

/// The cluster secret of the test clusters.
pub const SECRET: &str = "test-cluster-secret-7c41d2e9";
/// Header carrying the secret on peer requests.
pub const SECRET_HEADER: &str = "x-baton-cluster-secret";
/// How long a host may take to be ready: joining includes catching up (and the first
/// host of a cluster restarted whole waits for a majority).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a host may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The line `baton serve` prints once it is a caught-up member and serves TFTP.
const READY: &str = "tftp server listening";

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("reserve a TCP port")
        .port()
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("reserve a UDP port")
        .port()
}

/// How to run one host.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// `--host-name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--http-listen` (fixed across restarts).
    pub http: SocketAddr,
    /// `--tftp-listen` (fixed across restarts).
    pub tftp: SocketAddr,
    /// Cluster secret (env `BATON_CLUSTER_SECRET`); `None`: clustering disabled.
    pub secret: Option<String>,
    /// `--join URL`.
    pub join: Option<String>,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// More flags.
    pub extra: Vec<String>,
}

impl HostSpec {
    /// Host `name` on `data_dir`, on fresh loopback ports, with [`SECRET`].
    pub fn new(name: &str, data_dir: &Path) -> Self {
        HostSpec {
            name: name.into(),
            data_dir: data_dir.to_path_buf(),
            http: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            tftp: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
            secret: Some(SECRET.into()),
            join: None,
            config: None,
            extra: Vec::new(),
        }
    }

    /// Its base URL, as peers know it.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The `baton serve` command line (not started).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(baton_bin());
        cmd.arg("serve")
            .args(["--tftp-listen", &self.tftp.to_string()])
            .args(["--http-listen", &self.http.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--host-name", &self.name])
            .args(["--api-token", TOKEN])
            .args(["--log-level", "info"]);
        if serve_has_flag("--no-dhcp") {
            cmd.arg("--no-dhcp");
        }
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        }
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(&self.extra);
        cmd.env_remove("RUST_LOG")
            .env_remove("BATON_CONFIG")
            .env_remove("BATON_API_TOKEN")
            .env_remove("BATON_CLUSTER_SECRET");
        if let Some(s) = &self.secret {
            cmd.env("BATON_CLUSTER_SECRET", s);
        }
        cmd
    }
}

/// One host of a cluster: a spec and, while it runs, its process.
pub struct Host {
    /// How it runs.
    pub spec: HostSpec,
    /// Client of its admin API.
    pub api: Api,
    child: Option<Child>,
    /// stderr of every run, each run headed by a `===== run N =====` line.
    log: Arc<Mutex<String>>,
    runs: usize,
    /// Where the current run's output starts in `log`.
    run_offset: usize,
}

impl Host {
    /// A host that is not started yet.
    pub fn new(spec: HostSpec) -> Host {
        Host {
            api: Api::new(spec.http, TOKEN),
            spec,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            runs: 0,
            run_offset: 0,
        }
    }

    /// Its host name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Starts the process (does not wait for it to be ready).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name());
        std::fs::create_dir_all(&self.spec.data_dir).expect("create the data dir");
        self.runs += 1;
        let (child, offset) = spawn_run(
            &mut self.spec.command(),
            &self.log,
            &self.spec.name,
            self.runs,
        )
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", baton_bin()));
        self.run_offset = offset;
        self.child = Some(child);
    }

    /// Waits until the current run says it serves (it is then a caught-up member);
    /// panics with its output if it exits or takes longer than `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) {
        if let Err(e) = self.try_wait_ready(timeout) {
            panic!("{e}; its stderr:\n{}", self.run_log());
        }
    }

    /// [`Host::wait_ready`] that returns what went wrong instead of panicking (the
    /// process is left as it is).
    pub fn try_wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.run_log().contains(READY) {
                return Ok(());
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
                self.child = None;
                return Err(format!("{} exited ({st}) before it was ready", self.name()));
            }
            if Instant::now() >= deadline {
                return Err(format!("{} not ready within {timeout:?}", self.name()));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Host::spawn`] then [`Host::wait_ready`].
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready(READY_TIMEOUT);
    }

    /// Whether its process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().ok().flatten().is_none(),
        }
    }

    /// Process id of the current run.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("host not running").id()
    }

    /// SIGKILL (by PID) and reap: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Child::kill sends SIGKILL to this child's PID only.
            c.kill().expect("SIGKILL the host");
            c.wait().expect("reap the host");
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the PID of a child this struct owns and has not reaped.
        let r = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(r, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit after a signal; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("host not running");
        match wait_with_deadline(&mut c, timeout) {
            Some(st) => st,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM; its stderr:\n{}",
                    self.name(),
                    self.run_log()
                );
            }
        }
    }

    /// SIGTERM and wait: a clean stop, which must succeed.
    pub fn terminate(&mut self) {
        self.signal_term();
        let st = self.wait_exit(STOP_TIMEOUT);
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
        std::fs::remove_dir_all(&self.spec.data_dir).expect("delete the data dir");
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

    /// Waits until the current run printed a line with all of `needles`.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .run_log()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string);
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /v1/cluster`.
    #[track_caller]
    pub fn cluster(&self) -> Value {
        self.api.get("/v1/cluster").expect(200)
    }

    /// `GET /v1/cluster`, or `None` when the host does not answer.
    pub fn try_cluster(&self) -> Option<Value> {
        let auth = format!("Bearer {TOKEN}");
        let r = self
            .api
            .try_send("GET", "/v1/cluster", Some(&auth), &[], None)
            .ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Its Raft identity.
    #[track_caller]
    pub fn node_id(&self) -> u64 {
        let c = self.cluster();
        c["node_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no node_id in {c}"))
    }

    /// A request to a peer route (`/cluster/...`) with `secret` (none: no header).
    #[track_caller]
    pub fn peer(
        &self,
        method: &str,
        path: &str,
        secret: Option<&str>,
        body: Option<&[u8]>,
    ) -> Reply {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(s) = secret {
            headers.push((SECRET_HEADER, s));
        }
        self.api
            .try_send(method, path, None, &headers, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Ids of the nodes this host's replica knows, with their provision state and owner.
    #[track_caller]
    pub fn nodes(&self) -> std::collections::BTreeMap<String, (String, String)> {
        let v = self.api.get("/v1/nodes").expect(200);
        v.as_array()
            .unwrap_or_else(|| panic!("GET /v1/nodes is not a list: {v}"))
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap_or_default().to_string(),
                    (
                        n["provision_state"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        n["owner"].as_str().unwrap_or_default().to_string(),
                    ),
                )
            })
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!(
                "----- {} (http {}, tftp {}) stderr -----\n{}----- end -----",
                self.spec.name,
                self.spec.http,
                self.spec.tftp,
                self.log()
            );
        }
    }
}

/// Hosts `h1..hN`: `h1` initializes the cluster, the others join it.
pub struct Cluster {
    /// The hosts, `h1` first.
    pub hosts: Vec<Host>,
    /// Where the data directories and the config file live.
    pub dir: TempDir,
}

impl Cluster {
    /// Starts `n` hosts, all with `config_toml` (may be empty) as `--config`; returns
    /// once every host is a caught-up member.
    pub fn start(n: usize, config_toml: &str) -> Cluster {
        let dir = TempDir::new().expect("temp dir for the cluster");
        let config = dir.path().join("baton.toml");
        std::fs::write(&config, config_toml).expect("write the config file");
        let mut hosts: Vec<Host> = Vec::new();
        for i in 1..=n {
            let name = format!("h{i}");
            let mut spec = HostSpec::new(&name, &dir.path().join(&name));
            spec.config = Some(config.clone());
            if let Some(first) = hosts.first() {
                spec.join = Some(first.spec.url());
            }
            let mut h = Host::new(spec);
            h.start();
            hosts.push(h);
        }
        let c = Cluster { hosts, dir };
        c.wait_members(n, Duration::from_secs(20));
        c
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name() == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Index of host `name`.
    pub fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name() == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Indexes of the hosts whose process runs.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].is_running())
            .collect()
    }

    /// Index of the running host that says it is the leader, waiting for an election
    /// if needed.
    pub fn leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for i in self.running() {
                if let Some(c) = self.hosts[i].try_cluster() {
                    if c["state"] == "Leader" {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no running host is the leader after {timeout:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running host applied what the leader had logged when called.
    pub fn wait_applied_everywhere(&mut self, timeout: Duration) {
        let l = self.leader(timeout);
        let target = self.hosts[l].cluster()["last_log_index"]
            .as_u64()
            .unwrap_or(0);
        let deadline = Instant::now() + timeout;
        for i in self.running() {
            loop {
                let applied = self.hosts[i]
                    .try_cluster()
                    .and_then(|c| c["applied_index"].as_u64())
                    .unwrap_or(0);
                if applied >= target {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} applied only up to {applied} of the leader's {target} after {timeout:?}",
                    self.hosts[i].name()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits for a moment when every running host has applied everything the leader
    /// logged (the same index everywhere), and returns right then.
    pub fn wait_quiet(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.leader(timeout);
            let order: Vec<usize> = std::iter::once(l)
                .chain(self.running().into_iter().filter(|&i| i != l))
                .collect();
            let mut seen = Vec::new();
            let mut target = None;
            for i in order {
                let c = self.hosts[i].try_cluster();
                if target.is_none() {
                    target = c.as_ref().and_then(|c| c["last_log_index"].as_u64());
                }
                seen.push(c.and_then(|c| c["applied_index"].as_u64()));
            }
            if target.is_some() && seen.iter().all(|a| *a == target) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hosts never applied the same index within {timeout:?} (last seen: leader logged \
                 {target:?}, applied {seen:?})"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every running host sees `n` members, all voters, and agrees on who
    /// they are; returns the members as `(node_id, host)`.
    pub fn wait_members(&self, n: usize, timeout: Duration) -> Vec<(u64, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut views = Vec::new();
            for h in &self.hosts {
                if h.child.is_none() {
                    continue;
                }
                let Some(c) = h.try_cluster() else {
                    views.push(None);
                    continue;
                };
                let mut m: Vec<(u64, String, String)> = c["members"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|m| {
                                (
                                    m["node_id"].as_u64().unwrap_or(0),
                                    m["host"].as_str().unwrap_or_default().to_string(),
                                    m["role"].as_str().unwrap_or_default().to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                m.sort();
                views.push(Some(m));
            }
            let first = views.first().cloned().flatten();
            let agreed = views.iter().all(|v| *v == first);
            if let (true, Some(m)) = (agreed, &first) {
                if m.len() == n && m.iter().all(|(_, _, r)| r == "voter" || r == "leader") {
                    return m.iter().map(|(id, h, _)| (*id, h.clone())).collect();
                }
            }
            assert!(
                Instant::now() < deadline,
                "hosts do not agree on {n} voting members after {timeout:?}: {views:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running host's replica lists exactly `want` (node id ->
    /// (provision state, owner); an empty owner matches any).
    pub fn wait_nodes(
        &mut self,
        want: &std::collections::BTreeMap<String, (String, String)>,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        for i in self.running() {
            let h = &self.hosts[i];
            loop {
                let got = h.nodes();
                let same = got.len() == want.len()
                    && want.iter().all(|(id, (st, owner))| {
                        got.get(id)
                            .is_some_and(|(s, o)| s == st && (owner.is_empty() || o == owner))
                    });
                if same {
                    break;
                }
                if Instant::now() >= deadline {
                    let missing: Vec<_> = want
                        .iter()
                        .filter(|(id, w)| got.get(*id).is_none_or(|g| g.0 != w.0))
                        .collect();
                    panic!(
                        "{}'s replica does not show the {} expected nodes after {timeout:?}: \
                         it has {} nodes; missing or different: {missing:?}",
                        h.name(),
                        want.len(),
                        got.len()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops every host cleanly (SIGTERM) and asserts that their stores hold identical
    /// rows, comparing [`baton::store::Store::canonical_dump`] of each `baton.db`.
    ///
    /// Hosts keep committing (lease heartbeats), so a host can stop one commit behind
    /// the others; that is lag, not divergence. When the stopped replicas differ *and*
    /// stopped at different log positions, the cluster is restarted and stopped again
    /// (at most 5 times). Replicas at the same position must be identical. Returns the
    /// common dump.
    pub fn stop_and_compare_dumps(&mut self) -> String {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            self.wait_quiet(Duration::from_secs(30));
            let running = self.running();
            assert_eq!(
                running.len(),
                self.hosts.len(),
                "every host must run before the final comparison"
            );
            // Back to back, so they stop at nearly the same log position.
            for &i in &running {
                self.hosts[i].signal_term();
            }
            for &i in &running {
                let st = self.hosts[i].wait_exit(STOP_TIMEOUT);
                assert!(
                    st.success(),
                    "{} exited with {st} after SIGTERM; its stderr:\n{}",
                    self.hosts[i].name(),
                    self.hosts[i].run_log()
                );
            }
            let states: Vec<(String, Option<u64>, String)> = self
                .hosts
                .iter()
                .map(|h| {
                    let (applied, dump) = replica_state(&h.spec.data_dir.join("baton.db"));
                    (h.name().to_string(), applied, dump)
                })
                .collect();
            let first = &states[0];
            if states.iter().all(|s| s.2 == first.2) {
                return first.2.clone();
            }
            let same_position = states.iter().all(|s| s.1 == first.1);
            if same_position || attempt == ATTEMPTS {
                let other = states
                    .iter()
                    .find(|s| s.2 != first.2)
                    .expect("a difference");
                panic!(
                    "replicas differ (applied log positions {:?}, attempt {attempt}): {}",
                    states
                        .iter()
                        .map(|s| (s.0.as_str(), s.1))
                        .collect::<Vec<_>>(),
                    dump_diff(&first.0, &first.2, &other.0, &other.2)
                );
            }
            eprintln!(
                "replicas stopped at different log positions {:?}: restarting them to compare again",
                states.iter().map(|s| (s.0.as_str(), s.1)).collect::<Vec<_>>()
            );
            for h in &mut self.hosts {
                h.spawn();
            }
            for h in &mut self.hosts {
                h.wait_ready(READY_TIMEOUT);
            }
        }
        unreachable!("the last attempt returns or panics")
    }
}

/// The applied log index and the canonical dump of a stopped host's store.
pub fn replica_state(db: &Path) -> (Option<u64>, String) {
    let store =
        baton::store::Store::open(db).unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let applied = store
        .replicated_state()
        .unwrap_or_else(|e| panic!("applied position of {}: {e}", db.display()))
        .and_then(|(log_id, _)| serde_json::from_str::<Value>(&log_id).ok())
        .and_then(|v| v["index"].as_u64());
    let dump = store
        .canonical_dump()
        .unwrap_or_else(|e| panic!("dump {}: {e}", db.display()));
    (applied, dump)
}

/// The lines of two dumps that differ (first few), for a readable failure.
pub fn dump_diff(a_name: &str, a: &str, b_name: &str, b: &str) -> String {
    let al: std::collections::BTreeSet<&str> = a.lines().collect();
    let bl: std::collections::BTreeSet<&str> = b.lines().collect();
    let only_a: Vec<&&str> = al.difference(&bl).take(10).collect();
    let only_b: Vec<&&str> = bl.difference(&al).take(10).collect();
    format!(
        "{} lines vs {} lines\nonly in {a_name}:\n  {}\nonly in {b_name}:\n  {}",
        a.lines().count(),
        b.lines().count(),
        only_a
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n  "),
        only_b
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n  "),
    )
}
