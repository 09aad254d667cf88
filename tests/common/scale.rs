//! Measuring a cluster at fleet size, shared by `tests/replication_scale.rs`,
//! `tests/takeover_scale.rs` and the `fleet_api` and `fleet` benches: bulk import with
//! the CLI, latency percentiles, file, snapshot and memory sizes, the leader's log
//! window, and the first time survivors serve a sample of nodes over TFTP.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::data::{mac, pxelinux_path};
use super::host::{clean_env, Host, SECRET, TOKEN};
use super::run_bounded;
use super::tftp::{tftp_fetch_from, Answer};

/// Env `name` parsed, or `default` when unset or unparsable (a bench's or test's knob).
pub fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fleet sizes from env `name` (comma-separated), default 1,000 and 10,000.
pub fn sizes(name: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// How many nodes `host` owns, as `api` lists hosts; `None` when it does not answer.
pub fn nodes_left(api: &super::api::Api, host: &str) -> Option<u64> {
    let r = api
        .timeout(std::time::Duration::from_secs(5))
        .try_get("/v1/hosts")
        .ok()?;
    r.json_or_null()
        .as_array()?
        .iter()
        .find(|h| h["host"]["name"] == serde_json::json!(host))?["nodes"]
        .as_u64()
}

/// Node id of fleet node `i`.
pub fn node_id(i: usize) -> String {
    format!("node-{i:05}")
}

/// `baton node import FILE --json` with `bin` against `api_url`: the report and the wall
/// time.
pub fn import(bin: &Path, api_url: &str, file: &Path) -> (Value, Duration) {
    let t = Instant::now();
    let out = run_bounded(
        clean_env(
            std::process::Command::new(bin)
                .args(["node", "import"])
                .arg(file)
                .args(["--json", "--api", api_url, "--token", TOKEN]),
        )
        .env_remove("BATON_API"),
        Duration::from_secs(900),
    )
    .unwrap_or_else(|e| panic!("baton node import: {e}"));
    let took = t.elapsed();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "import printed no report ({e}, {}): {}",
            out.status, out.stderr
        )
    });
    (report, took)
}

/// p50, p99 and max of `samples` (not empty).
pub fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.50), at(0.99), samples[samples.len() - 1])
}

/// `d` as milliseconds with one decimal, for reports.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Peak and current resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

/// Size of a file in MiB (0 when absent).
pub fn file_mib(p: &Path) -> f64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64
}

/// Size of a host's latest snapshot data, in MiB.
pub fn snapshot_mib(h: &Host) -> f64 {
    let dir = h.data_dir().join("snapshots");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("snap-"))
                .map(|e| file_mib(&e.path()))
                .fold(0.0, f64::max)
        })
        .unwrap_or(0.0)
}

/// One line of a host's store sizes: `baton.db`, `raft-log.db` (each + WAL) and the
/// latest snapshot.
pub fn sizes_line(h: &Host) -> String {
    let d = h.data_dir();
    format!(
        "{}: baton.db {:.1} MiB (+wal {:.1}), raft-log.db {:.2} MiB (+wal {:.2}), snapshot {:.1} MiB",
        h.name(),
        file_mib(&d.join("baton.db")),
        file_mib(&d.join("baton.db-wal")),
        file_mib(&d.join("raft-log.db")),
        file_mib(&d.join("raft-log.db-wal")),
        snapshot_mib(h),
    )
}

/// Index of the leader's last log entry, and its purge point.
pub fn leader_log(h: &Host) -> (u64, u64) {
    let m = h
        .api
        .peer("GET", "/cluster/metrics", Some(SECRET), None)
        .expect(200);
    (
        m["last_log_index"].as_u64().unwrap_or(0),
        m["purged"]["index"].as_u64().unwrap_or(0),
    )
}

/// The index a host has applied (0 when it does not answer).
pub fn applied(h: &Host) -> u64 {
    h.api
        .try_cluster()
        .and_then(|c| c["applied_index"].as_u64())
        .unwrap_or(0)
}

/// The snapshot installs a host logged (one line each, with bytes and install time).
pub fn installs(h: &Host) -> Vec<String> {
    h.run_log()
        .lines()
        .filter(|l| l.contains("store snapshot installed"))
        .map(str::to_string)
        .collect()
}

/// Node `i`'s own loopback address, 127.1.0.1 and up (distinct for 16 million nodes).
pub fn node_addr(i: usize) -> Ipv4Addr {
    let n = (i + 1) as u32;
    Ipv4Addr::new(127, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// Probes each `sample` node's pxelinux config on every host of `tftp` (8 threads)
/// until one serves it (its content must name the node); returns the latest
/// first-served time after `t0`, or the nodes not served within `limit`.
///
/// Each node is probed from an address of its own ([`node_addr`]), as a fleet's
/// machines are: from one shared address, the servers' per-source limits (error replies,
/// slot shares) would throttle the prober itself and time its refusals out.
pub fn first_served(
    tftp: &[SocketAddr],
    sample: &[usize],
    t0: Instant,
    limit: Duration,
) -> Result<Duration, Vec<String>> {
    let unserved = Arc::new(Mutex::new(Vec::new()));
    let latest = Arc::new(Mutex::new(Duration::ZERO));
    let per = sample.len().div_ceil(8).max(1);
    let handles: Vec<_> = sample
        .chunks(per)
        .map(|chunk| {
            let (chunk, tftp) = (chunk.to_vec(), tftp.to_vec());
            let (unserved, latest) = (unserved.clone(), latest.clone());
            thread::spawn(move || {
                let mut left: BTreeSet<usize> = chunk.into_iter().collect();
                while !left.is_empty() && t0.elapsed() < limit {
                    for i in left.clone() {
                        let path = pxelinux_path(mac(i));
                        for s in &tftp {
                            if let Answer::Data(d) = tftp_fetch_from(
                                node_addr(i),
                                *s,
                                &path,
                                &[],
                                Duration::from_millis(300),
                                None,
                                None,
                            ) {
                                assert!(
                                    String::from_utf8_lossy(&d).contains(&node_id(i)),
                                    "{path} served with the wrong content"
                                );
                                let at = t0.elapsed();
                                let mut l = latest.lock().unwrap();
                                *l = (*l).max(at);
                                left.remove(&i);
                                break;
                            }
                        }
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                unserved
                    .lock()
                    .unwrap()
                    .extend(left.into_iter().map(node_id));
            })
        })
        .collect();
    for h in handles {
        h.join().expect("probe thread");
    }
    let u = unserved.lock().unwrap().clone();
    if u.is_empty() {
        Ok(*latest.lock().unwrap())
    } else {
        Err(u)
    }
}
