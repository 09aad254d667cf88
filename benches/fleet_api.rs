//! Writes and reads at fleet size: three `baton serve` hosts on loopback (the binary
//! cargo built for the bench, or env `BATON_BIN`), the hosts pinned to CPU 0 and this
//! load generator (and the CLI it runs) to CPU 1 where there are two.
//!
//! For each fleet size N (env `FLEET_API_SIZES`, default `1000,10000`):
//! - enroll and profile N nodes (deploy profile, kernel and ramdisk by artifact name)
//!   with one `baton node import FILE` through a follower, which forwards every batch
//!   to the leader: wall time, nodes/s, log entries, CPU seconds of the hosts; then the
//!   time until every replica applied it;
//! - the same import again (nothing to change): wall time, log entries;
//! - `GET /v1/nodes` (all N, up to a page of 10,000) `FLEET_API_LISTS` times (default
//!   200) one after another on one kept-alive connection, on the leader and on a
//!   follower: p50/p99/max and size; the same for a page of 1,000 and a filtered page;
//! - peak RSS of each host, and each host's artifact-replication backlog.
//!
//! Run with `cargo bench --bench fleet_api` (or, without a release build, `cargo test
//! --bench fleet_api -- --bench`: then the figures are of the debug build). It stops by
//! itself: every host is killed (by PID) after `FLEET_API_BUDGET_SECS` (default 1200).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "boot_storm/procstat.rs"]
#[allow(dead_code)]
mod procstat;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::fleet::Fleet;
use common::host::{bench_bin, HostBuilder};
use common::scale::{env, import, ms, percentiles, sizes};
use common::{pattern, run_bounded, wait_until};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet_api: run with `cargo bench --bench fleet_api` (skipped in test mode)");
        return;
    }
    let bin = bench_bin();
    let sizes = sizes("FLEET_API_SIZES");
    let lists: usize = env("FLEET_API_LISTS", 200);
    let budget = Duration::from_secs(env("FLEET_API_BUDGET_SECS", 1200));
    thread::spawn(move || {
        thread::sleep(budget);
        eprintln!("fleet_api: time budget of {budget:?} used up; killing the hosts");
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
        "fleet_api benchmark: {} ({version}), 3 hosts on loopback, {cpus} CPUs{}",
        bin.display(),
        if cpus >= 2 {
            " (hosts on CPU 0, client on CPU 1)"
        } else {
            ""
        }
    );
    for n in sizes {
        run(&bin, n, lists, cpus >= 2);
    }
}

fn mac(i: usize) -> String {
    common::data::mac_colons(common::data::mac(i))
}

/// CPU time of the hosts' processes so far.
fn hosts_cpu(f: &Fleet) -> Duration {
    f.hosts.iter().map(|h| procstat::tree_cpu(h.pid())).sum()
}

fn run(bin: &Path, n: usize, lists: usize, pin: bool) {
    println!("\n== {n} nodes ==");
    if pin {
        procstat::pin_current_thread(0);
    }
    let mut f = Fleet::start(
        (1..=3)
            .map(|i| HostBuilder::member(&format!("h{i}")).bin(bin))
            .collect(),
    );
    if pin {
        procstat::pin_current_thread(1);
    }
    let l = f.leader(Duration::from_secs(30));
    let fo = (l + 1) % 3;
    let (leader, follower) = (
        f.hosts[l].name().to_string(),
        f.hosts[fo].name().to_string(),
    );
    // One kept-alive connection per client: a paging client's view of latency.
    let (lapi, fapi) = (f.hosts[l].api.keep_alive(), f.hosts[fo].api.keep_alive());
    lapi.upload("vmlinuz", &pattern(4 << 20, 1));
    lapi.upload("initrd.img", &pattern(8 << 20, 2));
    let file = f.dir.path().join("fleet.csv");
    // The cmdline holds a comma: quoted.
    let mut csv = String::from("id,macs,kind,kernel,ramdisk,cmdline\n");
    for i in 0..n {
        csv.push_str(&format!(
            "node-{i:05},{},deploy,vmlinuz,initrd.img,\"console=ttyS0,115200 ip=dhcp\"\n",
            mac(i)
        ));
    }
    std::fs::write(&file, &csv).unwrap();
    let follower_url = f.hosts[fo].url();

    let cpu0 = hosts_cpu(&f);
    let (r, took) = import(bin, &follower_url, &file);
    let cpu = hosts_cpu(&f).saturating_sub(cpu0);
    assert_eq!(r["created"].as_u64(), Some(n as u64), "{r}");
    assert_eq!(r["failed"].as_u64(), Some(0), "{r}");
    let last = lapi.cluster()["last_log_index"].as_u64().unwrap_or(0);
    println!(
        "import via follower {follower} (leader {leader}): {n} nodes enrolled and profiled in {:.2} s \
         ({:.0} nodes/s), {} log entries, {} bytes of CSV; hosts' CPU {:.2} s ({:.2} ms per node)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        r["log_entries"],
        csv.len(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0 / n as f64
    );
    let t = Instant::now();
    for h in &f.hosts {
        wait_until(
            Duration::from_secs(300),
            "every replica applied the import",
            || (h.api.try_cluster()?["applied_index"].as_u64()? >= last).then_some(()),
        );
    }
    println!(
        "every replica applied it {:.2} s after the import returned",
        t.elapsed().as_secs_f64()
    );
    let (r2, took2) = import(bin, &follower_url, &file);
    assert_eq!(r2["unchanged"].as_u64(), Some(n as u64), "{r2}");
    println!(
        "same import again: {:.2} s ({:.0} nodes/s), {} unchanged, {} log entries",
        took2.as_secs_f64(),
        n as f64 / took2.as_secs_f64(),
        r2["unchanged"],
        r2["log_entries"]
    );

    let mid = format!("node-{:05}", n / 2);
    for (who, api) in [("leader", &lapi), ("follower", &fapi)] {
        for path in [
            "/v1/nodes".to_string(),
            "/v1/nodes?limit=1000".to_string(),
            format!("/v1/nodes?owner={follower}&provision_state=enrolled&profile=deploy&limit=100&cursor={mid}"),
        ] {
            let mut samples = Vec::with_capacity(lists);
            let mut bytes = 0;
            let mut count = 0;
            for _ in 0..lists {
                let t = Instant::now();
                let resp = api.try_get(&path).unwrap_or_else(|e| panic!("{e}"));
                samples.push(t.elapsed());
                assert_eq!(resp.status, 200, "{path}: {}", resp.text());
                bytes = resp.body.len();
                count = resp.json().as_array().map_or(0, Vec::len);
            }
            let (p50, p99, max) = percentiles(samples);
            println!(
                "GET {path} on the {who}: {count} nodes, {bytes} bytes; {lists} sequential requests: p50 {} p99 {} max {}",
                ms(p50),
                ms(p99),
                ms(max)
            );
        }
    }
    for h in &f.hosts {
        println!(
            "{}: peak RSS {:.0} MB, artifacts still to replicate here: {}",
            h.name(),
            procstat::peak_rss(h.pid()).unwrap_or(0) as f64 / (1 << 20) as f64,
            h.api.cluster()["artifact_replication"]["missing"]
        );
    }
    if pin {
        procstat::pin_current_thread(0);
    }
}
