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

#[path = "../tests/common/mod.rs"]
mod common;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::api::Api;
use common::fleet::Fleet;
use common::host::{bench_bin, HostBuilder};

const WATCHDOG: Duration = Duration::from_secs(300);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends a request; `Ok((status, body))`, `Err` on transport failure.
fn call(c: &Api, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    c.try_call(method, path, body)
        .map(|r| (r.status, r.json_or_null()))
}

/// A write that must succeed; returns its latency.
fn write(c: &Api, method: &str, path: &str, body: &Value, ok: u16) -> Duration {
    let t = Instant::now();
    match call(c, method, path, Some(body)) {
        Ok((s, _)) if s == ok => t.elapsed(),
        other => panic!("{method} {}{path}: {other:?}", c.url()),
    }
}

/// Three hosts on loopback, with a keep-alive client of each.
struct Cluster {
    fleet: Fleet,
    clients: Vec<Api>,
}

impl Cluster {
    fn start() -> Cluster {
        let bin = bench_bin();
        let fleet = Fleet::start_hosts(
            (1..=3)
                .map(|i| {
                    HostBuilder::member(&format!("h{i}"))
                        .bin(&bin)
                        .log_level("warn")
                        .config("")
                })
                .collect(),
        );
        let clients = fleet
            .hosts
            .iter()
            .map(|h| h.api.timeout(HTTP_TIMEOUT).keep_alive())
            .collect();
        Cluster { fleet, clients }
    }

    fn name(&self, i: usize) -> String {
        self.fleet.hosts[i].name().to_string()
    }

    /// Index of the host that says it leads (among running ones).
    fn leader(&mut self) -> usize {
        self.fleet.leader(Duration::from_secs(30))
    }

    /// Waits until host `i` applied what the leader had logged.
    fn wait_caught_up(&mut self, i: usize) {
        let l = self.leader();
        let target = self.clients[l]
            .try_cluster()
            .and_then(|v| v["last_log_index"].as_u64())
            .unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.clients[i]
            .try_cluster()
            .and_then(|v| v["applied_index"].as_u64())
            .unwrap_or(0)
            < target
        {
            assert!(
                Instant::now() < deadline,
                "{} does not catch up",
                self.name(i)
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
    c: &Api,
    what: String,
    n: usize,
    mut req: impl FnMut(usize) -> (String, String, Value, u16),
) -> Row {
    let mut lat = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let (method, path, body, ok) = req(i);
        lat.push(write(c, &method, &path, &body, ok));
    }
    Row {
        what,
        lat,
        wall: t.elapsed(),
    }
}

/// `threads` clients, client `t` sending `per` PATCHes to `targets[t % len]`, on nodes
/// `nodes[t]` (one node per thread, so writes never conflict).
fn concurrent(what: String, targets: &[Api], threads: usize, per: usize, states: &[&str]) -> Row {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let c = targets[t % targets.len()].clone();
            let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
            thread::spawn(move || {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let body = json!({ "provision_state": states[i % states.len()] });
                    lat.push(write(
                        &c,
                        "PATCH",
                        &format!("/v1/nodes/c{t:03}"),
                        &body,
                        200,
                    ));
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
        common::child::kill_spawned();
        std::process::exit(2);
    });
    let n = env_usize("BATON_BENCH_WRITES", 300);
    let threads = env_usize("BATON_BENCH_THREADS", 16);
    let trials = env_usize("BATON_BENCH_TRIALS", 5);
    let per = (n * 2 / threads.max(1)).max(10);
    let bin = bench_bin();
    println!(
        "\ncluster bench: 3 hosts on loopback, {} ({} sequential writes per series, {threads} threads x {per} concurrent writes, {trials} failover trials)\n",
        bin.display(),
        n
    );
    let total = Instant::now();
    let mut c = Cluster::start();
    let l = c.leader();
    let f = (l + 1) % 3;
    let (ln, fname) = (c.name(l), c.name(f));
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
        write(
            &c.clients[l],
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
        let killed = c.name(l);
        c.fleet.hosts[l].kill9();
        let t0 = Instant::now();
        let mut k = 0;
        let failover = loop {
            k += 1;
            let body =
                json!({ "id": format!("f{trial}-{k}"), "macs": [mac(200_000 + trial * 1000 + k)] });
            if let Ok((201, _)) = call(&c.clients[s], "POST", "/v1/nodes", Some(&body)) {
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
        c.fleet.hosts[l].start();
        c.wait_caught_up(l);
        println!(
            "{:<7} {:<8} {:<11} {:>13.0} {:>20.0}",
            trial,
            killed,
            c.name(nl),
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
    for h in &mut c.fleet.hosts {
        let _ = h.try_terminate(Duration::from_secs(20));
    }
    println!(
        "\ncluster bench done in {:.1} s",
        total.elapsed().as_secs_f64()
    );
}
