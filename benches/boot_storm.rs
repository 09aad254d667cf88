//! Boot storm: many PXE-like clients fetch one boot file over TFTP at once, from Baton
//! and from the other TFTP servers installed here, all on loopback.
//!
//! ```text
//! cargo bench --bench boot_storm                      # full default run (minutes)
//! BOOT_STORM_QUICK=1 cargo bench --bench boot_storm   # smoke run (seconds)
//! ```
//!
//! Environment knobs (all optional):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BOOT_STORM_QUICK` | unset | `1`: tiny scenarios (`1x4M,16x2M,64x512K`), 10 s limit |
//! | `BOOT_STORM_FULL` | unset | `1`: `1x64M,64x32M,256x8M` (about twice as long), 120 s limit |
//! | `BOOT_STORM_SCENARIOS` | `1x64M,64x16M,256x4M` | `CLIENTSxSIZE` list, size suffix K/M/G (binary) |
//! | `BOOT_STORM_WINDOWS` | `16,none` | windowsize per variant; `none` = lockstep, option not sent |
//! | `BOOT_STORM_SERVERS` | all | subset of `baton,tftpd-hpa,atftpd,dnsmasq,r-tftpd,async-tftp` |
//! | `BOOT_STORM_BLKSIZE` | `1432` | blksize the clients ask for |
//! | `BOOT_STORM_TIME_LIMIT` | `60` | hard limit in seconds for one server in one scenario |
//! | `BOOT_STORM_TIMEOUT_MS` | `1000` | client retransmission timeout |
//! | `BOOT_STORM_RETRIES` | `5` | client timeouts in a row before it gives up |
//! | `BOOT_STORM_BATON_ARGS` | unset | extra `baton serve` arguments, e.g. `--tftp-single-port` |
//! | `BATON_BIN` | see below | Baton binary; else the one cargo builds for this bench, else `$CARGO_TARGET_DIR/release/baton`, else `target/release/baton` |
//! | `BOOT_STORM_PEERS_DIR` | `../.peers` | where r-tftpd and async-tftp-server are installed |
//!
//! Peers and what they do with the options sent (blksize 1432, tsize, windowsize 16):
//!
//! | server | source | windowsize | notes |
//! |---|---|---|---|
//! | tftpd-hpa 5.2 | `apt-get install tftpd-hpa` | no (ignored, lockstep) | forks per transfer; `-B 65464` lifts its blksize cap |
//! | atftpd 0.8 | Debian package unpacked in `/opt/atftpd` | yes | thread per transfer; `--maxthread 1024` |
//! | dnsmasq 2.90 | `apt-get install dnsmasq-base` | no (ignored, lockstep) | single process; TFTP port fixed at 69, so it listens on 127.0.0.69 |
//! | r-tftpd 0.4 | `cargo install r-tftpd --root ../.peers` | yes | tokio; serves its working directory |
//! | async-tftp 0.4 | `benches/peers/async-tftp-server` | yes | smol-based crate, our 40-line wrapper |
//!
//! Method: each server is started fresh for each scenario (so its `VmHWM` is that
//! scenario's), pinned to CPU 1, while this load generator runs single-threaded on
//! CPU 0. All clients start together, each from its own loopback address (127.10.x.y,
//! as distinct nodes would), and each verifies every block against the source file.
//! Reported: aggregate goodput (verified bytes over the time until the last client
//! ended), p50/p99 transfer time, failures, server CPU (user+sys of its process
//! tree) per GB served, load generator CPU, server peak RSS, and per scenario the ratio
//! of Baton to the best peer that had no failures.

#[path = "boot_storm/client.rs"]
mod client;
#[path = "boot_storm/procstat.rs"]
mod procstat;
#[path = "boot_storm/report.rs"]
mod report;
#[path = "boot_storm/servers.rs"]
mod servers;
// Test data shared with the tests; the bench uses only `pattern`.
#[allow(dead_code)]
#[path = "../tests/common/data.rs"]
mod data;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{ClientSpec, TransferResult};
use data::pattern;
use report::{RunResult, Scenario};
use servers::{Kind, Server};

/// Settings of a whole benchmark run.
#[derive(Debug, Clone)]
struct Config {
    /// (clients, file size) pairs.
    loads: Vec<(usize, u64)>,
    /// Window variants.
    windows: Vec<Option<u16>>,
    /// Servers to try.
    servers: Vec<Kind>,
    /// Requested blksize.
    blksize: u16,
    /// Hard limit per (server, scenario).
    time_limit: Duration,
    /// Client retransmission timeout.
    timeout: Duration,
    /// Client retries.
    retries: u32,
}

/// Default scenarios: sized so that the whole run, six servers, two window variants,
/// stays around five minutes on a 2-core machine (the slowest peers move 50-70 MB/s).
const DEFAULT_LOADS: &str = "1x64M,64x16M,256x4M";
/// `BOOT_STORM_FULL=1`: twice the bytes per node (about 10 minutes for all servers).
const FULL_LOADS: &str = "1x64M,64x32M,256x8M";
/// `BOOT_STORM_QUICK=1`: a smoke run of seconds per server.
const QUICK_LOADS: &str = "1x4M,16x2M,64x512K";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parses `512`, `64K`, `8M`, `1G` (binary multiples).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn parse_loads(s: &str) -> Result<Vec<(usize, u64)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (c, sz) = p
                .trim()
                .split_once(['x', 'X'])
                .ok_or_else(|| format!("scenario {p:?} is not CLIENTSxSIZE"))?;
            let c: usize = c
                .trim()
                .parse()
                .map_err(|_| format!("bad client count in {p:?}"))?;
            let sz = parse_size(sz).ok_or_else(|| format!("bad size in {p:?}"))?;
            if c == 0 || c > 4096 {
                return Err(format!("client count in {p:?} must be 1..=4096"));
            }
            Ok((c, sz))
        })
        .collect()
}

fn parse_windows(s: &str) -> Result<Vec<Option<u16>>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim() {
            "none" | "lockstep" | "0" => Ok(None),
            w => w
                .parse::<u16>()
                .ok()
                .filter(|&w| w > 0)
                .map(Some)
                .ok_or_else(|| format!("bad windowsize {w:?}")),
        })
        .collect()
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let quick = env("BOOT_STORM_QUICK").is_some_and(|v| v != "0")
            || std::env::args().any(|a| a == "--quick");
        let full = env("BOOT_STORM_FULL").is_some_and(|v| v != "0");
        let loads = match env("BOOT_STORM_SCENARIOS") {
            Some(s) => parse_loads(&s)?,
            None if quick => parse_loads(QUICK_LOADS)?,
            None if full => parse_loads(FULL_LOADS)?,
            None => parse_loads(DEFAULT_LOADS)?,
        };
        let windows = parse_windows(&env("BOOT_STORM_WINDOWS").unwrap_or("16,none".into()))?;
        let servers = match env("BOOT_STORM_SERVERS") {
            None => Kind::ALL.to_vec(),
            Some(s) => s
                .split(',')
                .map(|n| {
                    Kind::ALL
                        .into_iter()
                        .find(|k| k.name() == n.trim())
                        .ok_or_else(|| format!("unknown server {n:?}"))
                })
                .collect::<Result<_, _>>()?,
        };
        let num = |name: &str, default: u64| -> Result<u64, String> {
            env(name).map_or(Ok(default), |v| {
                v.trim().parse().map_err(|_| format!("{name}={v:?}"))
            })
        };
        let blksize = num("BOOT_STORM_BLKSIZE", 1432)?;
        if !(8..=65464).contains(&blksize) {
            return Err("BOOT_STORM_BLKSIZE must be 8..=65464".into());
        }
        Ok(Config {
            loads,
            windows,
            servers,
            blksize: blksize as u16,
            time_limit: Duration::from_secs(num(
                "BOOT_STORM_TIME_LIMIT",
                match (quick, full) {
                    (true, _) => 10,
                    (false, true) => 120,
                    (false, false) => 60,
                },
            )?),
            timeout: Duration::from_millis(num("BOOT_STORM_TIMEOUT_MS", 1000)?),
            retries: num("BOOT_STORM_RETRIES", 5)? as u32,
        })
    }

    fn scenarios(&self) -> Vec<Scenario> {
        self.loads
            .iter()
            .flat_map(|&(clients, size)| {
                self.windows.iter().map(move |&window| Scenario {
                    clients,
                    size,
                    window,
                })
            })
            .collect()
    }
}

fn file_name(size: u64) -> String {
    format!("boot-storm-{size}.img")
}

/// Writes one file per distinct size into `root`, readable by every server's user.
fn write_files(root: &Path, sizes: &BTreeSet<u64>) -> std::io::Result<Vec<(u64, Arc<Vec<u8>>)>> {
    let mut out = Vec::new();
    for &size in sizes {
        // Deterministic, incompressible-looking content, different per size.
        let data = pattern(size as usize, size);
        let path = root.join(file_name(size));
        fs::write(&path, &data)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        out.push((size, Arc::new(data)));
    }
    Ok(out)
}

/// The loopback address of simulated node `i`: every node has its own, as on a real
/// network (servers may limit transfers per client address). 127.10.0.2 onwards, so
/// never a server's address.
fn node_address(i: usize) -> std::net::IpAddr {
    let i = i % (250 * 250);
    std::net::Ipv4Addr::new(127, 10, (i / 250) as u8, (i % 250 + 2) as u8).into()
}

/// What stays the same across the runs of a benchmark.
struct Bench<'a> {
    cfg: &'a Config,
    rt: &'a tokio::runtime::Runtime,
    /// Served files.
    root: &'a Path,
    /// Logs and server state.
    scratch: &'a Path,
    /// CPU the servers are pinned to.
    server_cpu: Option<usize>,
}

/// Runs one scenario against one server, started fresh, and stops it.
fn run_one(
    b: &Bench<'_>,
    kind: Kind,
    bin: &Path,
    scenario: Scenario,
    content: Arc<Vec<u8>>,
) -> Result<RunResult, String> {
    let (cfg, rt) = (b.cfg, b.rt);
    let mut server = Server::start(kind, bin, b.root, b.scratch, b.server_cpu)?;
    let pid = server.pid();
    let addr = server.addr;
    let (cpu0, cpu_method) = server.cpu_time();
    let client0 = procstat::self_cpu();
    let busy0 = procstat::machine_busy();
    let spec = ClientSpec {
        filename: file_name(scenario.size),
        expected: content,
        blksize: cfg.blksize,
        windowsize: scenario.window,
        timeout: cfg.timeout,
        max_retries: cfg.retries,
        source: node_address(0),
    };
    let sampled_rss = Arc::new(AtomicU64::new(0));
    let limit = cfg.time_limit;
    let start = Instant::now();
    let transfers: Vec<TransferResult> = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + limit;
        let rss = sampled_rss.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                rss.fetch_max(procstat::tree_rss(pid), Ordering::Relaxed);
            }
        });
        let tasks: Vec<_> = (0..scenario.clients)
            .map(|i| {
                let spec = ClientSpec {
                    source: node_address(i),
                    ..spec.clone()
                };
                tokio::spawn(client::fetch(addr, spec, deadline))
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            match t.await {
                Ok(r) => out.push(r),
                Err(e) => out.push(TransferResult {
                    outcome: Err(format!("client task failed: {e}")),
                    bytes: 0,
                    elapsed: limit,
                    blksize: None,
                    windowsize: None,
                    stats: Default::default(),
                }),
            }
        }
        sampler.abort();
        out
    });
    let all_done = start.elapsed();
    let server_cpu_used = server.cpu_time().0.saturating_sub(cpu0);
    let client_cpu = procstat::self_cpu().saturating_sub(client0);
    let other_cpu = procstat::machine_busy()
        .saturating_sub(busy0)
        .saturating_sub(server_cpu_used + client_cpu);
    let peak_rss = procstat::peak_rss(pid)
        .into_iter()
        .chain(Some(sampled_rss.load(Ordering::Relaxed)).filter(|&b| b > 0))
        .max();
    let server_note = (!server.is_running()).then(|| {
        format!(
            "exited during the run; log tail: {}",
            server.log_tail(500).trim()
        )
    });
    server.stop();
    Ok(RunResult {
        scenario,
        server: kind,
        transfers,
        all_done,
        server_cpu: server_cpu_used,
        cpu_method,
        client_cpu,
        other_cpu,
        peak_rss,
        server_note,
    })
}

fn main() {
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("boot_storm: {e}");
            std::process::exit(2);
        }
    };
    procstat::raise_nofile_limit();
    let cpus = procstat::online_cpus();
    let pinned = cpus >= 2 && procstat::pin_current_thread(0);
    let server_cpu = pinned.then_some(1);

    println!("== boot_storm: TFTP boot storm on loopback ==");
    println!(
        "blksize {} | windows {:?} | client timeout {:?} x{} retries | limit {:?} per run",
        cfg.blksize, cfg.windows, cfg.timeout, cfg.retries, cfg.time_limit
    );
    if pinned {
        println!("load generator pinned to CPU 0, servers to CPU 1 ({cpus} CPUs)");
    } else {
        println!("NOT pinned ({cpus} CPU(s)): load generator and server share CPUs");
    }

    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        let one: f64 = l
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        println!("load average at start: {}", l.trim());
        if one > 0.5 {
            println!("WARNING: the machine is busy; see the noise column");
        }
    }

    // Which servers are here.
    let mut available: Vec<(Kind, PathBuf)> = Vec::new();
    println!("\nservers:");
    for &k in &cfg.servers {
        match servers::locate(k) {
            Ok(p) => {
                println!("  {:<11} {}", k.name(), p.display());
                println!("  {:<11}   options: {}", "", k.option_support());
                available.push((k, p));
            }
            Err(how) => {
                if k == Kind::Baton {
                    println!("  {:<11} !!! SKIPPED: {how} !!!", k.name());
                    eprintln!("\n!!! boot_storm: Baton is missing and is skipped: {how} !!!\n");
                } else {
                    println!("  {:<11} {how}", k.name());
                }
            }
        }
    }
    if available.is_empty() {
        println!("no server to benchmark");
        return;
    }

    let tmp = match tempfile::Builder::new().prefix("boot-storm-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("boot_storm: temp dir: {e}");
            std::process::exit(1);
        }
    };
    let root = tmp.path().join("root");
    let scratch = tmp.path().join("scratch");
    let setup = (|| -> std::io::Result<Vec<(u64, Arc<Vec<u8>>)>> {
        fs::create_dir_all(&root)?;
        fs::create_dir_all(&scratch)?;
        // Servers that drop to `nobody` must be able to reach the files.
        for d in [tmp.path(), root.as_path(), scratch.as_path()] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        }
        write_files(&root, &cfg.loads.iter().map(|l| l.1).collect())
    })();
    let files = match setup {
        Ok(f) => f,
        Err(e) => {
            eprintln!("boot_storm: writing files: {e}");
            std::process::exit(1);
        }
    };

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("boot_storm: runtime: {e}");
            std::process::exit(1);
        }
    };

    let bench = Bench {
        cfg: &cfg,
        rt: &rt,
        root: &root,
        scratch: &scratch,
        server_cpu,
    };
    let bench_start = Instant::now();
    let mut results: Vec<RunResult> = Vec::new();
    let mut start_failures: Vec<String> = Vec::new();
    for sc in cfg.scenarios() {
        let content = files
            .iter()
            .find(|f| f.0 == sc.size)
            .map(|f| f.1.clone())
            .unwrap_or_default();
        for (kind, bin) in &available {
            eprint!(
                "[{:>6.1}s] {:<22} {:<11} ",
                bench_start.elapsed().as_secs_f64(),
                sc.label(),
                kind.name()
            );
            match run_one(&bench, *kind, bin, sc, content.clone()) {
                Ok(r) => {
                    eprintln!(
                        "{:>8.1} MB/s  fail {}/{}  srv CPU {:.2}s",
                        r.mb_per_s(),
                        r.failures(),
                        r.transfers.len(),
                        r.server_cpu.as_secs_f64()
                    );
                    results.push(r);
                }
                Err(e) => {
                    eprintln!("did not start: {e}");
                    start_failures.push(format!("{} / {}: {e}", sc.label(), kind.name()));
                }
            }
        }
    }

    println!(
        "\n== results ({} runs, {:.0} s) ==  MB = 10^6 B, GB = 10^9 B; p50/p99 over successful transfers",
        results.len(),
        bench_start.elapsed().as_secs_f64()
    );
    print!("{}", report::table(&results));
    print!("\n{}", report::legend());
    println!("\n== Baton / best peer without failures (MB/s: >1 = Baton faster; CPU s/GB: <1 = Baton cheaper) ==");
    print!("{}", report::ratios(&results));
    let details = report::details(&results);
    if !details.is_empty() || !start_failures.is_empty() {
        println!("\n== details ==");
        print!("{details}");
        for f in &start_failures {
            println!("{f}");
        }
    }
}
