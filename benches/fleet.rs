//! One cluster at fleet size: three `baton serve` hosts on loopback (the binary cargo
//! built for the bench, or env `BATON_BIN`) with the default settings, the hosts pinned
//! to CPU 0 and this load generator (and the CLI it runs) to CPU 1 where there are two.
//!
//! For each fleet size N (env `FLEET_SIZES`, default `1000,10000`):
//! 1. enroll and profile N nodes with one `baton node import FILE` through a follower:
//!    nodes/s, log entries per node, time until every replica applied it;
//! 2. `GET /v1/nodes?limit=1000` and a filtered page on the leader, `FLEET_LISTS` times
//!    each (default 200): p50/p99/max;
//! 3. sizes of `baton.db`, `raft-log.db` and the latest snapshot; RSS per host;
//! 4. `kill -9` of the host owning the most nodes: time until the store shows all its
//!    nodes reassigned, until a sample of them is served over TFTP by the survivors
//!    (probed from the kill), and the spread over the survivors; the host then returns;
//! 5. a simulated hour: a host is stopped while `FLEET_HOUR_WRITES` (default 3,600)
//!    heartbeat-like writes (provision state flips, 4 clients) go to the leader, and
//!    more until the leader's log is purged past where the host stopped; then it
//!    restarts: writes/s, catch-up time, whether it took a snapshot;
//! 6. a follower's data directory is wiped and it rejoins: time until it applied what
//!    the leader logged (snapshot install), then every host is stopped and the
//!    canonical dumps of all three stores must be identical.
//!
//! Run with `cargo bench --bench fleet` under the heavy lock. It stops by itself: every
//! host is killed (by PID) after `FLEET_BUDGET_SECS` (default 2400).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "boot_storm/procstat.rs"]
#[allow(dead_code)]
mod procstat;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use common::api::Api;
use common::fleet::{replica_state, Fleet, Leases};
use common::host::{bench_bin, HostBuilder};
use common::scale::{
    applied, env, first_served, import, installs, leader_log, ms, node_id, nodes_left, percentiles,
    rss_mib, sizes, sizes_line,
};
use common::{pattern, run_bounded, wait_until_every};

/// Per-request API lines left out of the hosts' logs (thousands of writes).
const QUIET: &str = "info,baton::http::api=warn";
/// A returning or rejoining host must have caught up within this.
const CATCH_UP: Duration = Duration::from_secs(600);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet: run with `cargo bench --bench fleet` (skipped in test mode)");
        return;
    }
    let bin = bench_bin();
    let sizes = sizes("FLEET_SIZES");
    let budget = Duration::from_secs(env("FLEET_BUDGET_SECS", 2400));
    thread::spawn(move || {
        thread::sleep(budget);
        eprintln!("fleet: time budget of {budget:?} used up; killing the hosts");
        common::child::kill_spawned();
        std::process::exit(2);
    });
    let version = run_bounded(
        std::process::Command::new(&bin).arg("--version"),
        Duration::from_secs(10),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_else(|e| e);
    let cpus = procstat::online_cpus();
    println!(
        "fleet benchmark: {} ({version}), 3 hosts on loopback, default settings ({}), {cpus} CPUs{}",
        bin.display(),
        Leases::DEFAULT.label(),
        if cpus >= 2 {
            " (hosts on CPU 0, client on CPU 1)"
        } else {
            ""
        }
    );
    let bench = Bench {
        pin: cpus >= 2,
        lists: env("FLEET_LISTS", 200),
        hour_writes: env("FLEET_HOUR_WRITES", 3600),
    };
    for n in sizes {
        bench.run(&bin, n);
    }
}

struct Bench {
    pin: bool,
    lists: usize,
    hour_writes: usize,
}

fn mib(bytes: f64) -> f64 {
    bytes / (1 << 20) as f64
}

/// Nodes per host as `api` sees them.
fn loads(api: &Api) -> BTreeMap<String, usize> {
    api.get_ok("/v1/hosts")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            Some((
                h["host"]["name"].as_str()?.to_string(),
                h["nodes"].as_u64()? as usize,
            ))
        })
        .collect()
}

impl Bench {
    /// Runs `f` with this thread on the hosts' CPU, so the processes it starts run there.
    fn on_host_cpu<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.pin {
            procstat::pin_current_thread(0);
        }
        let r = f();
        if self.pin {
            procstat::pin_current_thread(1);
        }
        r
    }

    /// Restarts host `i` (on its data dir, possibly wiped) and returns the time until it
    /// applied what the leader had logged when it started.
    fn restart_and_catch_up(&self, f: &mut Fleet, i: usize) -> Duration {
        let back = Instant::now();
        self.on_host_cpu(|| f.hosts[i].spawn());
        f.hosts[i].wait_ready(CATCH_UP);
        let l = f.leader(Duration::from_secs(30));
        let (target, _) = leader_log(&f.hosts[l]);
        wait_until_every(
            CATCH_UP,
            Duration::from_millis(50),
            "the returning host caught up",
            || (applied(&f.hosts[i]) >= target).then(|| back.elapsed()),
        )
    }

    fn run(&self, bin: &Path, n: usize) {
        println!("\n== {n} nodes ==");
        let mut f = self.on_host_cpu(|| {
            Fleet::start(
                (1..=3)
                    .map(|i| {
                        HostBuilder::member(&format!("h{i}"))
                            .bin(bin)
                            .log_level(QUIET)
                    })
                    .collect(),
            )
        });
        let l = f.leader(Duration::from_secs(30));
        let fo = (l + 1) % 3;
        let lapi = f.hosts[l].api.keep_alive();
        lapi.upload("vmlinuz", &pattern(4 << 20, 1));
        lapi.upload("initrd.img", &pattern(8 << 20, 2));

        // 1. Enroll.
        let file = f.dir.path().join("fleet.csv");
        let mut csv = String::from("id,macs,kind,kernel,ramdisk,cmdline\n");
        for i in 0..n {
            // The node id in the cmdline lets the TFTP probe check whose file it got.
            csv.push_str(&format!(
                "{},{},deploy,vmlinuz,initrd.img,\"console=ttyS0,115200 baton.node={}\"\n",
                node_id(i),
                common::data::mac_colons(common::data::mac(i)),
                node_id(i)
            ));
        }
        std::fs::write(&file, &csv).unwrap();
        let (r, took) = import(bin, &f.hosts[fo].url(), &file);
        assert_eq!(r["created"].as_u64(), Some(n as u64), "{r}");
        assert_eq!(r["failed"].as_u64(), Some(0), "{r}");
        let entries = r["log_entries"].as_u64().unwrap_or(0);
        println!(
            "ENROLL: {n} nodes enrolled and profiled by one `baton node import` via follower {} in \
             {:.2} s: {:.0} nodes/s, {entries} log entries ({:.3} per node)",
            f.hosts[fo].name(),
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            entries as f64 / n as f64
        );
        let t = Instant::now();
        f.wait_applied_everywhere(Duration::from_secs(300));
        println!(
            "  every replica applied it {:.2} s after the import returned",
            t.elapsed().as_secs_f64()
        );

        // 2. Lists.
        let owner = f.hosts[fo].name().to_string();
        let mid = node_id(n / 2);
        for path in [
            "/v1/nodes?limit=1000".to_string(),
            format!("/v1/nodes?owner={owner}&provision_state=enrolled&profile=deploy&limit=100&cursor={mid}"),
        ] {
            let mut samples = Vec::with_capacity(self.lists);
            let (mut bytes, mut count) = (0, 0);
            for _ in 0..self.lists {
                let t = Instant::now();
                let resp = lapi.try_get(&path).unwrap_or_else(|e| panic!("{e}"));
                samples.push(t.elapsed());
                assert_eq!(resp.status, 200, "{path}: {}", resp.text());
                bytes = resp.body.len();
                count = resp.json().as_array().map_or(0, Vec::len);
            }
            let (p50, p99, max) = percentiles(samples);
            println!(
                "LIST: GET {path} on the leader: {count} nodes, {bytes} bytes; {} sequential: \
                 p50 {} p99 {} max {}",
                self.lists,
                ms(p50),
                ms(p99),
                ms(max)
            );
        }

        // 3. Sizes and memory.
        for h in &f.hosts {
            let (peak, now) = rss_mib(h.pid());
            println!(
                "SIZE after enroll: {}; RSS {now:.0} MiB (peak {peak:.0})",
                sizes_line(h)
            );
        }

        // 4. Takeover.
        let before = loads(&lapi);
        let (victim, v_nodes) = before
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(h, n)| (h.clone(), *n))
            .expect("hosts");
        let vi = f.index(&victim);
        let survivors: Vec<usize> = (0..3).filter(|&i| i != vi).collect();
        let surv_api = f.hosts[survivors[0]].api.clone();
        let owned: Vec<usize> = surv_api
            .get_ok(&format!("/v1/nodes?owner={victim}&limit=10000"))
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["id"].as_str()?.strip_prefix("node-")?.parse().ok())
            .collect();
        assert_eq!(owned.len(), v_nodes, "{victim}'s nodes listed");
        let sample: Vec<usize> = owned
            .iter()
            .step_by((owned.len() / 96).max(1))
            .copied()
            .collect();
        let tftp: Vec<_> = survivors.iter().map(|&i| f.hosts[i].tftp()).collect();
        let was_leader = vi == f.leader(Duration::from_secs(30));
        f.hosts[vi].kill9();
        let t_kill = Instant::now();
        let prober = {
            let (tftp, sample) = (tftp.clone(), sample.clone());
            thread::spawn(move || first_served(&tftp, &sample, t_kill, Duration::from_secs(120)))
        };
        let t_owned = wait_until_every(
            Duration::from_secs(120),
            Duration::from_millis(100),
            "the victim's nodes reassigned",
            || (nodes_left(&surv_api, &victim)? == 0).then(|| t_kill.elapsed()),
        );
        let served = prober.join().expect("prober");
        let after = loads(&surv_api);
        let taken: Vec<String> = survivors
            .iter()
            .map(|&i| {
                let h = f.hosts[i].name();
                format!("{h} +{}", after[h] - before[h])
            })
            .collect();
        let bound = Leases::DEFAULT.takeover_after() + Duration::from_secs(2);
        println!(
            "TAKEOVER: kill -9 {victim} ({}) owning {v_nodes} nodes: all reassigned after {} ms; a \
             sample of {} served over TFTP by survivors after {} (TTL + grace + 2 s = {} ms); \
             spread {} (even {})",
            if was_leader { "the leader" } else { "a follower" },
            t_owned.as_millis(),
            sample.len(),
            match &served {
                Ok(d) => format!("{} ms", d.as_millis()),
                Err(u) => format!("NOT ALL: {} unserved", u.len()),
            },
            bound.as_millis(),
            taken.join(", "),
            v_nodes / 2
        );
        let back = self.restart_and_catch_up(&mut f, vi);
        println!(
            "  {victim} restarted on its data dir, caught up in {:.2} s",
            back.as_secs_f64()
        );

        // 5. A simulated hour away. The host that came back owns nothing, so its absence
        // moves no node.
        let away = vi;
        let away_name = f.hosts[away].name().to_string();
        f.hosts[away].stop();
        let stopped_at = replica_state(&f.hosts[away].data_dir().join("baton.db"))
            .0
            .unwrap_or(0);
        let l = f.leader(Duration::from_secs(30));
        let (first, _) = leader_log(&f.hosts[l]);
        let writes = AtomicUsize::new(0);
        let t = Instant::now();
        let mut rounds = 0;
        loop {
            let (_, purged) = leader_log(&f.hosts[l]);
            let done = writes.load(Ordering::Relaxed);
            if done >= self.hour_writes && purged > stopped_at {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "the leader did not purge past {stopped_at} (at {purged}) after {done} writes"
            );
            // 400 writes a round from 4 clients on kept-alive connections.
            thread::scope(|s| {
                for c in 0..4 {
                    let (api, writes, rounds) = (f.hosts[l].api.keep_alive(), &writes, rounds);
                    s.spawn(move || {
                        for k in 0..100 {
                            let w = rounds * 400 + c * 100 + k;
                            let (i, pass) = (w % n, w / n);
                            // Every write changes the node: each pass flips the state.
                            let state = if pass % 2 == 0 {
                                "available"
                            } else {
                                "enrolled"
                            };
                            let r = api.patch(
                                &format!("/v1/nodes/{}", node_id(i)),
                                json!({ "provision_state": state }),
                            );
                            assert_eq!(r.status, 200, "{}", r.text());
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
            rounds += 1;
        }
        let wrote = t.elapsed();
        let done = writes.load(Ordering::Relaxed);
        let (last, purged) = leader_log(&f.hosts[l]);
        println!(
            "HOUR: {away_name} stopped at index {stopped_at}; {done} writes (4 clients) in {:.2} s: \
             {:.0} writes/s, {} log entries ({:.2} per write, lease heartbeats included); \
             leader's log purged up to {purged}",
            wrote.as_secs_f64(),
            done as f64 / wrote.as_secs_f64(),
            last - first,
            (last - first) as f64 / done as f64
        );
        let before_installs = installs(&f.hosts[away]).len();
        let took = self.restart_and_catch_up(&mut f, away);
        let inst = installs(&f.hosts[away]);
        println!(
            "  {away_name} restarted: caught up in {:.2} s ({}); RSS peak {:.0} MiB",
            took.as_secs_f64(),
            if inst.len() > before_installs {
                format!("by snapshot: {}", inst.last().unwrap().trim())
            } else {
                "from the log, no snapshot".to_string()
            },
            rss_mib(f.hosts[away].pid()).0
        );
        for h in &f.hosts {
            println!("SIZE after the hour: {}", sizes_line(h));
        }

        // 6. Wipe and rejoin (never the first host: it initialized the cluster rather
        // than joining it).
        let l = f.leader(Duration::from_secs(30));
        let w = if l == 1 { 2 } else { 1 };
        let w_name = f.hosts[w].name().to_string();
        let old_id = f.hosts[w].api.node_id();
        f.hosts[w].kill9();
        f.hosts[w].wipe();
        let took = self.restart_and_catch_up(&mut f, w);
        let inst = installs(&f.hosts[w]);
        println!(
            "WIPE: {w_name} wiped and rejoined: applied the leader's log in {:.2} s ({}); RSS peak {:.0} MiB",
            took.as_secs_f64(),
            inst.last()
                .map(|s| format!("snapshot: {}", s.trim()))
                .unwrap_or_else(|| "NO snapshot installed".into()),
            rss_mib(f.hosts[w].pid()).0
        );
        let out = f.hosts[l]
            .api
            .cli(&["host", "remove", &w_name, "--id", &old_id.to_string()]);
        assert!(out.status.success(), "host remove: {}", out.stderr);
        f.wait_members(3, Duration::from_secs(30));
        for h in &f.hosts {
            let (peak, now) = rss_mib(h.pid());
            println!("RSS: {}: {now:.0} MiB (peak {peak:.0})", h.name());
        }
        let t = Instant::now();
        let dump = self.on_host_cpu(|| f.stop_and_compare_dumps());
        println!(
            "DUMPS: all three stores identical ({} lines, {:.1} MiB), checked in {:.1} s",
            dump.lines().count(),
            mib(dump.len() as f64),
            t.elapsed().as_secs_f64()
        );
    }
}
