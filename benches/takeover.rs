//! Takeover latency: how long after `kill -9` of a node's owner does a peer serve the
//! node's boot files?
//!
//! Three `baton serve` hosts on loopback (the release binary: `<target>/release/baton`
//! as built by `cargo bench`, or env `BATON_BIN`), six nodes with deploy profiles on the
//! victim. Each trial kills the victim with SIGKILL and polls the two survivors every
//! 20 ms with a TFTP read of each node's `pxelinux.cfg/01-<mac>` until the new owner
//! serves it, byte-identical to what the victim served; then restarts the victim and
//! migrates the nodes to the next trial's victim. Odd trials kill the Raft leader,
//! even trials a follower. Prints p50/p99/max per lease setting.
//!
//! `cargo bench --bench takeover` runs the default leases (1 s / 3 s / 1 s) and the
//! short ones of the tests (200 ms / 600 ms / 300 ms), 40 trials each (20 with the
//! leader as the victim, 20 with a follower); env `TAKEOVER_TRIALS=N`,
//! `TAKEOVER_SETTINGS=default,short`. It stops by itself: at most
//! `TAKEOVER_BUDGET_SECS` (default 1200) in all, reporting what it measured.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use common::data::{mac, mac_colons, pattern, pxelinux_path};
use common::fleet::{Fleet, Leases};
use common::host::{bench_bin, HostBuilder};
use common::tftp::{tftp_fetch, Answer};
use common::wait_until;

const NODES: usize = 6;
const POLL: Duration = Duration::from_millis(20);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then only say how.
    if !std::env::args().any(|a| a == "--bench") {
        println!("takeover: run with `cargo bench --bench takeover` (skipped in test mode)");
        return;
    }
    let bin = bench_bin();
    let trials: usize = std::env::var("TAKEOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let budget = Duration::from_secs(
        std::env::var("TAKEOVER_BUDGET_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1200),
    );
    let settings = std::env::var("TAKEOVER_SETTINGS").unwrap_or_else(|_| "default,short".into());
    let deadline = Instant::now() + budget;
    println!(
        "takeover benchmark: {} ({}), 3 hosts on loopback, {NODES} nodes on the victim, \
         {trials} trials per setting, poll every {} ms",
        bin.display(),
        version(&bin),
        POLL.as_millis()
    );
    for s in settings.split(',') {
        let leases = match s.trim() {
            "default" => Leases::DEFAULT,
            "short" => Leases::SHORT,
            other => {
                eprintln!("unknown setting {other:?} (use default, short)");
                continue;
            }
        };
        if Instant::now() >= deadline {
            println!("setting {s}: skipped, time budget used up");
            continue;
        }
        run_setting(&bin, s.trim(), leases, trials, deadline);
    }
}

fn version(bin: &Path) -> String {
    common::run_bounded(
        std::process::Command::new(bin).arg("--version"),
        Duration::from_secs(10),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_else(|e| e)
}

/// One trial's measurements.
struct Trial {
    victim_was_leader: bool,
    /// Kill to first correct answer by the new owner, per node.
    per_node: Vec<Duration>,
    /// New owner of each node.
    owners: BTreeMap<String, String>,
}

fn run_setting(bin: &Path, name: &str, leases: Leases, trials: usize, deadline: Instant) {
    let cfg = leases.toml("");
    let mut f = Fleet::start(
        (1..=3)
            .map(|i| HostBuilder::member(&format!("h{i}")).config(&cfg).bin(bin))
            .collect(),
    );
    let names = ["h1", "h2", "h3"];
    let api = f.host("h1").api.clone();
    let k = api.upload("vmlinuz", &pattern(2 << 20, 1));
    let rd = api.upload("initrd.img", &pattern(1 << 20, 2));
    let ids: Vec<String> = (1..=NODES).map(|i| format!("n{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        api.enroll_deploy(id, &mac_colons(mac(i + 1)), &k, &rd);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    api.wait_nodes_replicated(&id_refs, &names, Duration::from_secs(60));
    // What every node's pxelinux config is (the same from any owner).
    let h1t = f.host("h1").tftp();
    let expected: BTreeMap<String, Vec<u8>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let a = tftp_fetch(
                h1t,
                &pxelinux_path(mac(i + 1)),
                &[],
                Duration::from_secs(2),
                None,
                None,
            );
            let d = a
                .data()
                .unwrap_or_else(|| panic!("h1 serves {id}: {a:?}"))
                .to_vec();
            (id.clone(), d)
        })
        .collect();

    let mut done: Vec<Trial> = Vec::new();
    let mut anomalies = 0usize;
    for trial in 1..=trials {
        if Instant::now() + Duration::from_secs(30) > deadline {
            println!("  (stopping after {} trials: time budget)", done.len());
            break;
        }
        let any = running(&mut f)[0];
        let leader = f.leader_seen_by(any).unwrap_or_else(|| "h1".into());
        let victim = if trial % 2 == 1 {
            leader.clone()
        } else {
            names
                .iter()
                .find(|n| **n != leader)
                .expect("a follower")
                .to_string()
        };
        move_nodes_to(&f, &ids, &victim, &expected);
        let survivors: Vec<(String, SocketAddr)> = f
            .hosts
            .iter()
            .filter(|h| h.name() != victim)
            .map(|h| (h.name().to_string(), h.tftp()))
            .collect();
        let probe_api = f.host(&survivors[0].0).api.clone();
        let seq0 = probe_api.get_ok("/v1/status")["last_event"]
            .as_u64()
            .unwrap_or(0);
        let t0 = Instant::now();
        let wall_kill = wall_ms();
        f.host_mut(&victim).kill9();
        let mut per_node: BTreeMap<String, (String, Duration)> = BTreeMap::new();
        let give_up = t0 + Duration::from_secs(30);
        while per_node.len() < ids.len() && Instant::now() < give_up {
            let round = Instant::now();
            for (i, id) in ids.iter().enumerate() {
                if per_node.contains_key(id) {
                    continue;
                }
                for (h, addr) in &survivors {
                    let a = tftp_fetch(
                        *addr,
                        &pxelinux_path(mac(i + 1)),
                        &[],
                        Duration::from_millis(300),
                        None,
                        None,
                    );
                    if let Answer::Data(d) = a {
                        assert!(
                            d == expected[id],
                            "{h} served a different pxelinux config for {id}"
                        );
                        per_node.insert(id.clone(), (h.clone(), t0.elapsed()));
                    }
                }
            }
            if let Some(rest) = POLL.checked_sub(round.elapsed()) {
                thread::sleep(rest);
            }
        }
        assert_eq!(
            per_node.len(),
            ids.len(),
            "trial {trial}: not every node was served within 30 s of the kill"
        );
        // The feed says when each node changed owner: a change before the kill, or
        // sooner after it than TTL + grace - interval, is an anomaly worth showing.
        let feed = probe_api.get_ok(&format!("/v1/events?since={seq0}&limit=10000"));
        let early_ms = leases.ttl_ms as i64 + leases.grace_ms as i64 - leases.interval_ms as i64;
        for e in feed["events"].as_array().into_iter().flatten() {
            if e["kind"] != json!("ownership_transferred") {
                continue;
            }
            let dt = e["at"].as_i64().unwrap_or(0) - wall_kill;
            if dt < early_ms {
                let node = e["node"].as_str().unwrap_or_default();
                println!(
                    "  [{name}] trial {trial}: ANOMALY: {node} moved {} -> {} ({}) at kill{dt:+} ms \
                     (earliest legal takeover about kill+{early_ms} ms); first answer by {:?}",
                    e["data"]["from"],
                    e["data"]["to"],
                    e["data"]["reason"],
                    per_node.get(node)
                );
                anomalies += 1;
            }
        }
        let t = Trial {
            victim_was_leader: victim == leader,
            per_node: per_node.values().map(|(_, d)| *d).collect(),
            owners: per_node
                .iter()
                .map(|(n, (h, _))| (n.clone(), h.clone()))
                .collect(),
        };
        let max = t.per_node.iter().max().copied().unwrap_or_default();
        eprintln!(
            "  [{name}] trial {trial}: killed {victim} ({}), all {NODES} nodes served after {} ms",
            if t.victim_was_leader {
                "leader"
            } else {
                "follower"
            },
            max.as_millis()
        );
        done.push(t);
        // Restart the victim on its data directory; wait until every host is up.
        let h = f.host_mut(&victim);
        h.start();
        let probe = f.host(survivors[0].0.as_str()).api.clone();
        wait_until(Duration::from_secs(60), "all hosts up again", || {
            let s = probe.host_states();
            names
                .iter()
                .all(|n| s.get(*n).is_some_and(|x| x == "up"))
                .then_some(())
        });
    }
    report(name, &leases, &done);
    println!("  ownership changes earlier than TTL + grace - interval after the kill: {anomalies}");
}

/// Wall-clock milliseconds (the time base of event `at`).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn running(f: &mut Fleet) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (i, n) in ["h1", "h2", "h3"].iter().enumerate() {
        if f.hosts[i].is_running() {
            out.push(*n);
        }
    }
    out
}

/// Migrates every node to `to` and waits until every replica knows and `to` serves
/// them all.
fn move_nodes_to(f: &Fleet, ids: &[String], to: &str, expected: &BTreeMap<String, Vec<u8>>) {
    let api = f.host(to).api.clone();
    for id in ids {
        let (owner, _, handoff) = api.node(id);
        if owner != to && handoff == "none" {
            let r = api.post(&format!("/v1/nodes/{id}/migrate"), json!({ "to": to }));
            assert_eq!(r.status, 200, "migrate {id} to {to}: {}", r.text());
        }
    }
    wait_until(
        Duration::from_secs(60),
        "nodes migrated to the victim",
        || {
            ids.iter()
                .all(|id| {
                    let (o, _, h) = api.node(id);
                    o == to && h == "none"
                })
                .then_some(())
        },
    );
    // Every replica applied the flips (an old owner serves a migrated node until its
    // own replica applies the flip; that is not what this benchmark measures).
    for h in &f.hosts {
        let a = h.api.clone();
        wait_until(
            Duration::from_secs(30),
            "every replica sees the flips",
            || ids.iter().all(|id| a.node(id).0 == to).then_some(()),
        );
    }
    let addr = f.host(to).tftp();
    wait_until(
        Duration::from_secs(30),
        "the victim serves its nodes",
        || {
            ids.iter()
                .enumerate()
                .all(|(i, id)| {
                    tftp_fetch(
                        addr,
                        &pxelinux_path(mac(i + 1)),
                        &[],
                        Duration::from_millis(500),
                        None,
                        None,
                    )
                    .data()
                    .is_some_and(|d| d == expected[id])
                })
                .then_some(())
        },
    );
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn line(label: &str, v: &[Duration]) -> String {
    let mut s = v.to_vec();
    s.sort();
    format!(
        "{label}: n={} p50={} ms p99={} ms max={} ms (min {} ms)",
        s.len(),
        pct(&s, 50.0).as_millis(),
        pct(&s, 99.0).as_millis(),
        s.last().copied().unwrap_or_default().as_millis(),
        s.first().copied().unwrap_or_default().as_millis(),
    )
}

fn report(name: &str, l: &Leases, trials: &[Trial]) {
    println!("setting {name}: {}", l.label());
    println!(
        "  takeover allowed after ttl + grace = {} ms past the victim's last committed heartbeat",
        l.ttl_ms + l.grace_ms
    );
    let nodes: Vec<Duration> = trials.iter().flat_map(|t| t.per_node.clone()).collect();
    let all: Vec<Duration> = trials
        .iter()
        .map(|t| t.per_node.iter().max().copied().unwrap_or_default())
        .collect();
    println!(
        "  {}",
        line("per node, kill -> first correct answer", &nodes)
    );
    println!("  {}", line("per trial, kill -> all nodes served", &all));
    for (label, leader) in [
        ("victim was the raft leader", true),
        ("victim was a follower", false),
    ] {
        let v: Vec<Duration> = trials
            .iter()
            .filter(|t| t.victim_was_leader == leader)
            .map(|t| t.per_node.iter().max().copied().unwrap_or_default())
            .collect();
        if !v.is_empty() {
            println!("  {}", line(&format!("per trial, {label}"), &v));
        }
    }
    let one_host = trials
        .iter()
        .filter(|t| {
            let mut hs: Vec<&String> = t.owners.values().collect();
            hs.sort();
            hs.dedup();
            hs.len() == 1
        })
        .count();
    println!(
        "  placement: in {one_host} of {} trials all {NODES} nodes went to one survivor",
        trials.len()
    );
}
