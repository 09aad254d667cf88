//! Ownership at fleet size, with three real `baton serve` processes on loopback:
//!
//! 1. `fleet_at_scale_...`: 10,000 nodes with deploy profiles (3,400 of them on one
//!    host), enrolled through the API of all three hosts at once. Prints log entries per
//!    API write, idle CPU of the leader against the followers (30 s of /proc ticks),
//!    then `kill -9` of the host owning 3,400 nodes: every node reassigned (store)
//!    within TTL, grace and 2 s, and served over TFTP within the same bound (a sample
//!    probed from the moment of the kill, each node from its own address), spread
//!    within 10% of even over the survivors, in a handful of log entries. The host then
//!    comes back and `baton host rebalance` gives it an even share again.
//! 2. `rebalance_...`: `baton host rebalance --dry-run` changes nothing; a rebalance keeps
//!    at most `max_concurrent_migrations` migrations in progress (replayed from the event
//!    feed) and ends even; a takeover respects `max_nodes_per_host` and reports the nodes
//!    it cannot place (flag, event, metric), which go back to their owner when it returns.
//!
//! Sizes: `BATON_SCALE_NODES` (default 10000) and `BATON_SCALE_VICTIM` (default 3400);
//! `BATON_SCALE_IDLE_SECS` (default 30). Run with the heavy lock:
//! `flock /tmp/baton-heavy.lock cargo test --test takeover_scale -- --nocapture`.

mod common;

// CPU time of a process from /proc, as the benches read it.
#[path = "../benches/boot_storm/procstat.rs"]
#[allow(dead_code)]
mod procstat;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::api::{Api, Reply};
use common::data::{mac, mac_colons, pattern};
use common::fleet::{Fleet, Leases};
use common::host::HostBuilder;
use common::scale::{env, first_served, node_id as id, nodes_left};
use common::serial;
use common::{wait_until, wait_until_every};

fn say(s: &str) {
    eprintln!("[takeover_scale] {s}");
}

/// Per-request API lines left out of the hosts' logs (thousands of writes).
const QUIET: &str = "info,baton::http::api=warn";

fn spec(name: &str, l: &Leases, extra_ownership: &str) -> HostBuilder {
    let cfg = l.toml("").replacen(
        "[ownership]\n",
        &format!("[ownership]\n{extra_ownership}\n"),
        1,
    );
    HostBuilder::member(name).config(&cfg).log_level(QUIET)
}

/// Name of the running host that leads the cluster (waiting for an election if needed).
fn leader_name(f: &mut Fleet) -> String {
    let i = f.leader(Duration::from_secs(30));
    f.hosts[i].name().to_string()
}

/// Sends a request until it gets an answer other than 503 (no leader for a moment) or
/// a transport error; panics after 60 s. Also says whether an earlier try may have been
/// applied without its answer arriving (a transport error).
fn retry(what: &str, mut f: impl FnMut() -> Result<Reply, String>) -> (Reply, bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lost = false;
    loop {
        match f() {
            Ok(r) if r.status != 503 => return (r, lost),
            r => {
                lost |= r.is_err();
                if Instant::now() > deadline {
                    panic!("{what}: still failing after 60 s: {r:?}");
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Enrolls nodes `range` on `api` (which then owns them) with a deploy profile, over
/// `threads` connections at once.
fn enroll(api: &Api, range: std::ops::Range<usize>, k: &str, rd: &str, threads: usize) {
    let all: Vec<usize> = range.collect();
    let chunks: Vec<Vec<usize>> = all
        .chunks(all.len().div_ceil(threads).max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let (api, k, rd) = (api.clone(), k.to_string(), rd.to_string());
            thread::spawn(move || {
                for i in chunk {
                    let node = id(i);
                    let (r, lost) = retry("enroll", || {
                        api.try_call(
                            "POST",
                            "/v1/nodes",
                            Some(&json!({ "id": node, "macs": [mac_colons(mac(i))] })),
                        )
                    });
                    // A try whose answer was lost may have enrolled it already.
                    let again = lost
                        && r.status == 409
                        && r.json()["error"]["details"]["kind"] == json!("node_exists");
                    assert!(
                        r.status == 201 || again,
                        "enroll {node}: {} {}",
                        r.status,
                        r.text()
                    );
                    let (r, _) = retry("profile", || {
                        api.try_call(
                            "PUT",
                            &format!("/v1/nodes/{node}/profile"),
                            Some(&json!({ "kind": "deploy", "kernel": k, "ramdisk": rd,
                                    "cmdline": format!("console=ttyS0 baton.node={node}") })),
                        )
                    });
                    assert!(r.status == 200, "profile {node}: {} {}", r.status, r.text());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("enroll thread");
    }
}

/// `(last log index, applied index)` of the host `api` asks.
fn log_index(api: &Api) -> (u64, u64) {
    let v = api.cluster();
    (
        v["last_log_index"].as_u64().unwrap_or(0),
        v["applied_index"].as_u64().unwrap_or(0),
    )
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

/// Runs `baton ARGS` against `api` within `timeout`: success, and what it printed.
fn baton_cli(api: &Api, args: &[&str], timeout: Duration) -> (bool, String) {
    let out = api.cli_within(args, timeout);
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), out.stderr),
    )
}

/// Every event of the feed (paged).
fn all_events(api: &Api) -> Vec<Value> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let page = api.get_ok(&format!("/v1/events?since={since}&limit=10000"));
        let ev = page["events"].as_array().cloned().unwrap_or_default();
        if ev.is_empty() {
            return out;
        }
        since = page["last"].as_u64().unwrap_or(since);
        out.extend(ev);
    }
}

/// The most migrations in progress at once, replayed from the feed: started by
/// `migration_started`, ended by a flip (`ownership_transferred`, reason migration) or
/// `migration_aborted`.
fn max_concurrent_migrations(events: &[Value]) -> (usize, usize) {
    let (mut now, mut max, mut started) = (0usize, 0usize, 0usize);
    for e in events {
        match e["kind"].as_str().unwrap_or_default() {
            "migration_started" => {
                now += 1;
                started += 1;
                max = max.max(now);
            }
            "ownership_transferred" if e["data"]["reason"] == json!("migration") => {
                now = now.saturating_sub(1)
            }
            "migration_aborted" => now = now.saturating_sub(1),
            _ => {}
        }
    }
    (max, started)
}

#[test]
fn fleet_at_scale_log_budget_idle_cpu_takeover_and_rebalance() {
    let _g = serial();
    let n = env::<usize>("BATON_SCALE_NODES", 10_000);
    let v_nodes = env::<usize>("BATON_SCALE_VICTIM", 3_400).min(n);
    let idle_secs = env::<usize>("BATON_SCALE_IDLE_SECS", 30) as u64;
    let l = Leases::DEFAULT;
    let mut f = Fleet::start(["h1", "h2", "h3"].iter().map(|h| spec(h, &l, "")).collect());
    let leader0 = leader_name(&mut f);
    // The victim is a follower: its death tests the takeover, not an election.
    let victim = ["h1", "h2", "h3"]
        .into_iter()
        .find(|h| *h != leader0)
        .unwrap()
        .to_string();
    let survivors: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .filter(|h| **h != victim)
        .map(|h| h.to_string())
        .collect();
    let lead = f.host(&leader0).api.clone();
    let k = lead.upload("vmlinuz", &pattern(200_000, 61));
    let rd = lead.upload("initrd.img", &pattern(300_000, 62));

    // --- Enrollment: N nodes, V on the victim, the rest split over the survivors. ---
    let rest = n - v_nodes;
    let ranges = [
        (victim.clone(), 0..v_nodes),
        (survivors[0].clone(), v_nodes..v_nodes + rest / 2),
        (survivors[1].clone(), v_nodes + rest / 2..n),
    ];
    let (idx0, _) = log_index(&lead);
    let t0 = Instant::now();
    let handles: Vec<_> = ranges
        .iter()
        .map(|(h, r)| {
            let (api, r, k, rd) = (f.host(h).api.clone(), r.clone(), k.clone(), rd.clone());
            thread::spawn(move || enroll(&api, r, &k, &rd, 2))
        })
        .collect();
    for h in handles {
        h.join().expect("enrollment");
    }
    let enroll_s = t0.elapsed().as_secs_f64();
    let (idx1, _) = log_index(&lead);
    let writes = 2 * n;
    let entries = idx1 - idx0;
    let heartbeats = (enroll_s * 3.0 * 1000.0 / l.interval_ms as f64).round();
    say(&format!(
        "enrolled {n} nodes with profiles ({writes} API writes) in {enroll_s:.1} s = {:.0} writes/s",
        writes as f64 / enroll_s
    ));
    say(&format!(
        "log entries: {entries} for {writes} API writes = {:.3} per write \
         (about {heartbeats} of them lease heartbeats: {:.3} per write without them)",
        entries as f64 / writes as f64,
        (entries as f64 - heartbeats) / writes as f64
    ));
    assert!(
        entries as f64 / (writes as f64) < 1.2,
        "one API write must cost about one log entry, not {:.2}",
        entries as f64 / writes as f64
    );
    // Every host holds the kernel and ramdisk, and has applied everything, before the
    // quiet period.
    lead.wait_replicated(&[&k, &rd], &["h1", "h2", "h3"], Duration::from_secs(60));
    for h in ["h1", "h2", "h3"] {
        let api = f.host(h).api.clone();
        wait_until_every(
            Duration::from_secs(300),
            Duration::from_millis(500),
            &format!("{h} caught up"),
            || {
                let (last, _) = log_index(&lead);
                (log_index(&api).1 >= last.saturating_sub(5)).then_some(())
            },
        );
    }

    // --- Idle CPU: leader against followers. ---
    thread::sleep(Duration::from_secs(5));
    let leader = leader_name(&mut f);
    let pids: Vec<(String, u32)> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| (h.to_string(), f.host(h).pid()))
        .collect();
    let before: Vec<Duration> = pids.iter().map(|(_, p)| procstat::tree_cpu(*p)).collect();
    let runs0 = f.host(&leader).api.metric("baton_reconcile_runs_total");
    let (idle_idx0, _) = log_index(&f.host(&leader).api);
    thread::sleep(Duration::from_secs(idle_secs));
    let after: Vec<Duration> = pids.iter().map(|(_, p)| procstat::tree_cpu(*p)).collect();
    let runs1 = f.host(&leader).api.metric("baton_reconcile_runs_total");
    let (idle_idx1, _) = log_index(&f.host(&leader).api);
    // At rest the log grows by the lease heartbeats only: their rate, per host.
    let hb_per_host_s = (idle_idx1 - idle_idx0) as f64 / idle_secs as f64 / 3.0;
    let mut leader_t = Duration::ZERO;
    let mut follower_t = Vec::new();
    for ((h, _), (b, a)) in pids.iter().zip(before.iter().zip(&after)) {
        let t = a.saturating_sub(*b);
        say(&format!(
            "idle {idle_secs} s at {n} nodes: {h}{} used {} ms of CPU = {:.2}% of a core",
            if *h == leader { " (leader)" } else { "" },
            t.as_millis(),
            t.as_secs_f64() / idle_secs as f64 * 100.0
        ));
        if *h == leader {
            leader_t = t;
        } else {
            follower_t.push(t);
        }
    }
    say(&format!(
        "the leader's reconciler ran {} rounds in those {idle_secs} s; the log grew by {} \
         entries (heartbeats: {hb_per_host_s:.2} per host per second)",
        runs1 - runs0,
        idle_idx1 - idle_idx0
    ));
    let follower_max = follower_t.iter().copied().max().unwrap_or_default();
    assert!(
        leader_t <= 2 * follower_max.max(Duration::from_millis(100)),
        "idle leader {leader_t:?}, followers {follower_t:?}: the leader must stay within 2x"
    );

    // --- Takeover: kill -9 the host owning V nodes. ---
    let leader = leader_name(&mut f);
    if leader == victim {
        say("the victim leads the cluster now: the takeover includes an election");
    }
    // Log positions and node counts are read from a survivor (same log as the leader's).
    let surv_api = f.host(&survivors[0]).api.clone();
    let lead = surv_api.clone();
    let before_loads = loads(&surv_api);
    assert_eq!(before_loads.get(&victim), Some(&v_nodes));
    let tftp: Vec<SocketAddr> = survivors.iter().map(|h| f.host(h).tftp()).collect();
    let sample: Vec<usize> = (0..v_nodes).step_by((v_nodes / 96).max(1)).collect();
    let (idx_kill, _) = log_index(&lead);
    let bound = l.takeover_after() + Duration::from_secs(2);
    f.host_mut(&victim).kill9();
    let t_kill = Instant::now();
    let prober = {
        let (tftp, sample) = (tftp.clone(), sample.clone());
        thread::spawn(move || first_served(&tftp, &sample, t_kill, Duration::from_secs(60)))
    };
    let every = Duration::from_millis(250);
    let t_owned = wait_until_every(
        Duration::from_secs(60),
        every,
        "victim's nodes reassigned",
        || (nodes_left(&surv_api, &victim)? == 0).then(|| t_kill.elapsed()),
    );
    let served = prober.join().expect("prober");
    let (idx_done, _) = log_index(&lead);
    let window_s = t_kill.elapsed().as_secs_f64();
    let after_loads = loads(&surv_api);
    let taken: Vec<usize> = survivors
        .iter()
        .map(|h| after_loads[h] - before_loads[h])
        .collect();
    let hb_est = (window_s * 2.0 * hb_per_host_s).round() as u64;
    say(&format!(
        "kill -9 {victim} owning {v_nodes} nodes: all reassigned in the store after {} ms, \
         a sample of {} served over TFTP by survivors after {} (bound TTL + grace + 2 s = {} ms)",
        t_owned.as_millis(),
        sample.len(),
        match &served {
            Ok(d) => format!("{} ms", d.as_millis()),
            Err(u) => format!("NOT ALL: {} unserved", u.len()),
        },
        bound.as_millis()
    ));
    say(&format!(
        "spread over {survivors:?}: {taken:?} (even {}); log entries during the takeover: {} \
         (about {hb_est} of them heartbeats)",
        v_nodes / 2,
        idx_done - idx_kill
    ));
    assert!(
        t_owned <= bound,
        "reassigned after {t_owned:?}, bound {bound:?}"
    );
    let served = served.unwrap_or_else(|u| panic!("never served by a survivor: {u:?}"));
    // Served as soon as reassigned (4.9 and 5.4 s in two runs here, debug hosts on 2
    // cores) now that each node is probed from its own address: the 7.2-8.3 s seen
    // before were the shared-address prober throttled by the servers' per-source limits.
    assert!(
        served <= bound,
        "the sample was served after {served:?}, bound {bound:?}"
    );
    assert_eq!(taken.iter().sum::<usize>(), v_nodes);
    let even = v_nodes as f64 / 2.0;
    for t in &taken {
        assert!(
            (*t as f64 - even).abs() <= even * 0.10,
            "spread {taken:?} not within 10% of {even}"
        );
    }
    let ownership_entries = (idx_done - idx_kill).saturating_sub(hb_est);
    assert!(
        ownership_entries <= 20,
        "takeover of {v_nodes} nodes used about {ownership_entries} log entries besides heartbeats"
    );

    // --- The victim returns; a rebalance gives it an even share again. ---
    f.host_mut(&victim).start();
    let back = f.host(&victim).api.clone();
    wait_until(Duration::from_secs(60), "victim up again", || {
        (lead.host_states().get(&victim).map(String::as_str) == Some("up")).then_some(())
    });
    assert_eq!(
        loads(&lead).get(&victim).copied().unwrap_or(0),
        0,
        "a returning host gets nothing by itself"
    );
    let (ok, out) = baton_cli(
        &back,
        &["host", "rebalance", "--dry-run"],
        Duration::from_secs(60),
    );
    assert!(ok, "rebalance --dry-run: {out}");
    say(&format!(
        "baton host rebalance --dry-run:\n{}",
        out.lines().take(12).collect::<Vec<_>>().join("\n")
    ));
    assert!(
        out.contains(&format!("-> {victim}")) && out.contains("dry run"),
        "{out}"
    );
    let t_rb = Instant::now();
    let (ok, out) = baton_cli(
        &back,
        &["host", "rebalance", "--wait", "300"],
        Duration::from_secs(330),
    );
    if !ok {
        // Why the API went away: the victim's own account of that moment.
        let log = f.host(&victim).run_log();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("DEBUG") && !l.contains("TRACE"))
            .rev()
            .take(40)
            .collect();
        panic!(
            "rebalance --wait: {out}\n{victim}'s last log lines (newest first):\n{}",
            tail.join("\n")
        );
    }
    let rb_s = t_rb.elapsed().as_secs_f64();
    let end = loads(&lead);
    say(&format!(
        "rebalance finished in {rb_s:.1} s: nodes per host {end:?}"
    ));
    let third = n as f64 / 3.0;
    for (h, c) in &end {
        assert!(
            (*c as f64 - third).abs() <= third * 0.10,
            "{h} owns {c}, not within 10% of {third:.0}"
        );
    }
    // Nodes moved back are served by the victim.
    let victim_tftp = [f.host(&victim).tftp()];
    let mine: Vec<usize> = (0..n)
        .step_by(97)
        .filter(|i| back.node(&id(*i)).0 == victim)
        .take(30)
        .collect();
    assert!(!mine.is_empty());
    first_served(&victim_tftp, &mine, Instant::now(), Duration::from_secs(20))
        .unwrap_or_else(|u| panic!("moved nodes not served by {victim}: {u:?}"));
}

#[test]
fn rebalance_limits_migrations_and_a_takeover_respects_capacity() {
    let _g = serial();
    let l = Leases::SHORT;
    let limits = "max_nodes_per_host = 50\nmax_concurrent_migrations = 8";
    let mut f = Fleet::start(
        ["h1", "h2", "h3"]
            .iter()
            .map(|h| spec(h, &l, limits))
            .collect(),
    );
    let h1 = f.host("h1").api.clone();
    let k = h1.upload("vmlinuz", &pattern(20_000, 71));
    let rd = h1.upload("initrd.img", &pattern(30_000, 72));
    let n = 120;
    let (idx0, _) = log_index(&h1);
    let t0 = Instant::now();
    enroll(&h1, 0..n, &k, &rd, 4);
    let (idx1, _) = log_index(&h1);
    say(&format!(
        "{} log entries for {} API writes in {:.1} s (heartbeats included)",
        idx1 - idx0,
        2 * n,
        t0.elapsed().as_secs_f64()
    ));
    assert_eq!(loads(&h1)["h1"], n);
    h1.wait_replicated(&[&k, &rd], &["h1", "h2", "h3"], Duration::from_secs(30));

    // Dry run: a plan, and nothing moves.
    let h2 = f.host("h2").api.clone();
    let (ok, out) = baton_cli(
        &h2,
        &["host", "rebalance", "--dry-run"],
        Duration::from_secs(30),
    );
    assert!(ok, "{out}");
    say(&format!("baton host rebalance --dry-run:\n{out}"));
    assert!(
        out.contains("80 moves") && out.contains("at most 8 migrations at once"),
        "{out}"
    );
    assert!(
        out.contains("h1 -> h2: 40 nodes") && out.contains("h1 -> h3: 40 nodes"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing changed"), "{out}");
    let plan = h1.get_ok("/v1/hosts/rebalance");
    assert_eq!(plan["moves"].as_array().map(Vec::len), Some(80));
    assert_eq!(plan["active"], json!(false));
    thread::sleep(Duration::from_secs(1));
    assert_eq!(loads(&h1)["h1"], n, "a dry run moves nothing");
    assert!(!all_events(&h1)
        .iter()
        .any(|e| e["kind"] == json!("migration_started")));

    // The rebalance: 80 migrations, at most 8 at once, through the fenced path.
    let t_rb = Instant::now();
    let (ok, out) = baton_cli(
        &h2,
        &["host", "rebalance", "--wait", "120"],
        Duration::from_secs(150),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("rebalance started") && out.contains("rebalance finished"),
        "{out}"
    );
    let end = loads(&h1);
    say(&format!(
        "rebalance of {n} nodes in {:.1} s: {end:?}",
        t_rb.elapsed().as_secs_f64()
    ));
    assert!(end.values().all(|c| *c == 40), "{end:?}");
    let ev = all_events(&h1);
    let (max, started) = max_concurrent_migrations(&ev);
    say(&format!(
        "{started} migrations, at most {max} in progress at once (limit 8)"
    ));
    assert_eq!(started, 80);
    assert!((2..=8).contains(&max), "at most 8 at once, got {max}");
    for kind in ["rebalance_started", "rebalance_ended"] {
        assert_eq!(
            ev.iter().filter(|e| e["kind"] == json!(kind)).count(),
            1,
            "one {kind} event"
        );
    }
    let flips = ev
        .iter()
        .filter(|e| {
            e["kind"] == json!("ownership_transferred") && e["data"]["reason"] == json!("migration")
        })
        .count();
    assert_eq!(flips, 80, "every move is a migration flip");
    let (ok, out) = baton_cli(
        &h2,
        &["host", "rebalance", "--dry-run"],
        Duration::from_secs(30),
    );
    assert!(ok && out.contains("nothing to move"), "{out}");

    // Capacity: h2 (40 nodes) dies; h1 and h3 own 40 each and may own 50: 20 nodes
    // are placed, 20 stay with h2, flagged, counted and announced.
    let on_h2: Vec<usize> = (0..n).filter(|i| h1.node(&id(*i)).0 == "h2").collect();
    assert_eq!(on_h2.len(), 40);
    f.host_mut("h2").kill9();
    let t_kill = Instant::now();
    wait_until(Duration::from_secs(15), "takeover with capacity", || {
        let l = loads(&h1);
        (l.get("h1") == Some(&50) && l.get("h3") == Some(&50)).then_some(())
    });
    let stuck = wait_until(Duration::from_secs(10), "stuck nodes reported", || {
        let s = h1.metric("baton_stuck_nodes");
        (s == 20.0).then_some(s)
    });
    let blocked: Vec<Value> = all_events(&h1)
        .into_iter()
        .filter(|e| e["kind"] == json!("takeover_blocked"))
        .collect();
    say(&format!(
        "h2 killed: h1 and h3 filled to 50 (max_nodes_per_host) within {} ms; {stuck} nodes stuck, \
         {} takeover_blocked events, e.g. {}",
        t_kill.elapsed().as_millis(),
        blocked.len(),
        blocked.first().map(|e| e["data"]["reason"].to_string()).unwrap_or_default()
    ));
    assert_eq!(blocked.len(), 20);
    assert!(blocked[0]["data"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("max_nodes_per_host 50")));
    let still: Vec<Value> = on_h2
        .iter()
        .map(|i| h1.get_ok(&format!("/v1/nodes/{}", id(*i))))
        .filter(|v| v["owner"] == json!("h2"))
        .collect();
    assert_eq!(still.len(), 20);
    assert!(
        still.iter().all(|v| v["stuck"].is_string()),
        "flagged in the node"
    );
    // h2 comes back: its nodes are no longer stuck, and it serves them again.
    f.host_mut("h2").start();
    wait_until(Duration::from_secs(20), "h2's nodes unflagged", || {
        (h1.metric("baton_stuck_nodes") == 0.0).then_some(())
    });
    let back: Vec<usize> = on_h2
        .iter()
        .copied()
        .filter(|i| h1.node(&id(*i)).0 == "h2")
        .collect();
    assert_eq!(back.len(), 20);
    first_served(
        &[f.host("h2").tftp()],
        &back,
        Instant::now(),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|u| panic!("h2 does not serve its nodes again: {u:?}"));
}
