//! Several [`Host`]s forming one replicated cluster, for the cluster and ownership
//! tests and the cluster and takeover benches: the first host initializes the cluster,
//! the others join it; hosts run on loopback or each in a namespace of a [`Lab`]
//! (`super::netns`). Also the lease settings of the fault tests ([`Leases`]) and the
//! comparison of stopped replicas ([`Fleet::stop_and_compare_dumps`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::api::HTTP_TIMEOUT;
use super::host::{Host, HostBuilder, READY_TIMEOUT, STOP_TIMEOUT};
use super::wait_until;

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

/// Hosts forming one cluster: the first initializes it, the others join it.
pub struct Fleet {
    /// The hosts, in start order.
    pub hosts: Vec<Host>,
    /// Where their data directories live.
    pub dir: TempDir,
}

impl Fleet {
    /// Starts `specs` in order, each on a data directory named after it under
    /// [`Fleet::dir`]; every host after the first joins the first unless its spec says
    /// otherwise. Returns once each is a caught-up member.
    pub fn start_hosts(specs: Vec<HostBuilder>) -> Fleet {
        let dir = TempDir::new().expect("temp dir for the fleet");
        let mut hosts: Vec<Host> = Vec::new();
        for mut spec in specs {
            let data = dir.path().join(spec.name());
            spec = spec.data_dir_at(&data);
            if let Some(first) = hosts.first() {
                if spec.joins().is_none() {
                    spec = spec.join(&first.url());
                }
            }
            hosts.push(spec.start());
        }
        Fleet { hosts, dir }
    }

    /// [`Fleet::start_hosts`], then waits until every host sees all the others `up`.
    pub fn start(specs: Vec<HostBuilder>) -> Fleet {
        let f = Fleet::start_hosts(specs);
        let names: Vec<String> = f.hosts.iter().map(|h| h.name().to_string()).collect();
        for h in &f.hosts {
            wait_until(Duration::from_secs(30), "every host up", || {
                let states = h.api.host_states();
                names
                    .iter()
                    .all(|n| states.get(n).is_some_and(|s| s == "up"))
                    .then_some(())
            });
        }
        f
    }

    /// Members `h1..hN` on loopback, all with `config_toml` (may be empty); returns
    /// once every host sees `n` voting members.
    pub fn cluster(n: usize, config_toml: &str) -> Fleet {
        let f = Fleet::start_hosts(
            (1..=n)
                .map(|i| {
                    HostBuilder::member(&format!("h{i}"))
                        .config(config_toml)
                        .api_timeout(HTTP_TIMEOUT)
                })
                .collect(),
        );
        f.wait_members(n, Duration::from_secs(20));
        f
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        &self.hosts[self.index(name)]
    }

    /// The host named `name`, mutably.
    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        let i = self.index(name);
        &mut self.hosts[i]
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

    /// The Raft leader's host name, as `via` sees it.
    pub fn leader_seen_by(&self, via: &str) -> Option<String> {
        let r = self.host(via).api.try_get("/v1/cluster").ok()?;
        r.json_or_null()["leader_host"].as_str().map(str::to_string)
    }

    /// Index of the running host that says it is the leader, waiting for an election
    /// if needed.
    pub fn leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for i in self.running() {
                if let Some(c) = self.hosts[i].api.try_cluster() {
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
        let target = self.hosts[l].api.cluster()["last_log_index"]
            .as_u64()
            .unwrap_or(0);
        let deadline = Instant::now() + timeout;
        for i in self.running() {
            loop {
                let applied = self.hosts[i]
                    .api
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

    /// Waits until every running host has applied everything the leader logged (the same
    /// index everywhere), with no artifact left to fetch anywhere, twice at least QUIET
    /// apart.
    pub fn wait_quiet(&mut self, timeout: Duration) {
        // Equal once is not quiet: replication records holdings in bursts after its
        // fetches. The log itself never stands still (every host renews its lease each
        // interval), so quiet is: fetching done everywhere, and still done, with every
        // host caught up, QUIET later.
        const QUIET: Duration = Duration::from_millis(1500);
        let deadline = Instant::now() + timeout;
        let mut settled: Option<Instant> = None;
        loop {
            let l = self.leader(timeout);
            let order: Vec<usize> = std::iter::once(l)
                .chain(self.running().into_iter().filter(|&i| i != l))
                .collect();
            let mut seen = Vec::new();
            let mut target = None;
            let mut idle = true;
            for i in order {
                let c = self.hosts[i].api.try_cluster();
                if target.is_none() {
                    target = c.as_ref().and_then(|c| c["last_log_index"].as_u64());
                }
                let r = c.as_ref().map(|c| &c["artifact_replication"]);
                idle &= r.is_some_and(|r| r["missing"] == 0 && r["current"].is_null());
                seen.push(c.and_then(|c| c["applied_index"].as_u64()));
            }
            let caught_up = target.is_some() && seen.iter().all(|a| *a == target);
            match (idle, caught_up, settled) {
                (false, _, _) => settled = None,
                (true, true, Some(since)) if since.elapsed() >= QUIET => return,
                (true, true, None) => settled = Some(Instant::now()),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "hosts never applied the same index with nothing left to fetch within \
                 {timeout:?} (last seen: leader logged {target:?}, applied {seen:?}, fetching \
                 done everywhere: {idle})"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every started host sees `n` members, all voters, and agrees on who
    /// they are; returns the members as `(node_id, host)`.
    pub fn wait_members(&self, n: usize, timeout: Duration) -> Vec<(u64, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut views = Vec::new();
            for h in &self.hosts {
                if !h.spawned() {
                    continue;
                }
                let Some(c) = h.api.try_cluster() else {
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
    pub fn wait_nodes(&mut self, want: &BTreeMap<String, (String, String)>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for i in self.running() {
            let h = &self.hosts[i];
            loop {
                let got = h.api.nodes();
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
                    let (applied, dump) = replica_state(&h.data_dir().join("baton.db"));
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
