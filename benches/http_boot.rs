//! HTTP boot against nginx: 64 and 256 concurrent clients fetch one 32 MiB kernel over
//! HTTP/1.1 (kept-alive connections, whole file per request) from Baton
//! (`/boot/<node>/<path>`, the shared in-memory copy) and from nginx (Debian's package,
//! `sendfile on`, the same bytes from a file on disk), in the same run, with the same
//! load client (`wrk`, Debian's package).
//!
//! Each server runs pinned to CPU 0 and `wrk` to CPU 1 (on 2 CPUs or more), one `wrk`
//! thread per run. Printed per run: MB/s (bytes across loopback during the run / wall
//! time; `wrk`'s own figure, whole responses only, beside it), server CPU
//! seconds per GB (user + system of the server's process tree, from /proc), requests,
//! errors, and the server's RSS; then Baton's ratios to nginx. nginx gets one worker
//! process, as it has one CPU.
//!
//! `cargo bench --bench http_boot` (env `HTTP_BOOT_ROUNDS`, default 3 rounds, each one
//! run of Baton then one of nginx, ratios taken within a round and their median
//! printed; `HTTP_BOOT_SECS`, default 15 s per run;
//! `HTTP_BOOT_CLIENTS`, default `64,256`; `HTTP_BOOT_MIB`, default 32). Needs `nginx`
//! and `wrk` (`apt-get install nginx-light wrk`): without them it says so and exits 1.
//! It stops by itself: each `wrk` run is bounded by its duration; at the end nginx is
//! stopped by SIGTERM to its master (which ends its worker) and Baton is killed by PID.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "boot_storm/procstat.rs"]
#[allow(dead_code)]
mod procstat;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::data::{mac, mac_colons};
use common::host::{bench_bin, HostBuilder};
use common::pattern;
use common::scale::env;
use serde_json::json;

/// One run's figures.
struct Run {
    /// Bytes that crossed loopback during the run, per second: responses still in
    /// flight when `wrk` stops count too, which `wrk`'s own total leaves out.
    mbps: f64,
    /// `wrk`'s count: whole responses only.
    wrk_mbps: f64,
    cpu_per_gb: f64,
    requests: u64,
    errors: String,
    rss_mib: f64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("http_boot: run with `cargo bench --bench http_boot` (skipped in test mode)");
        return;
    }
    let (Some(nginx), Some(wrk)) = (which("nginx"), which("wrk")) else {
        eprintln!(
            "*** http_boot NOT RUN: it needs nginx and wrk (apt-get install nginx-light wrk) ***"
        );
        std::process::exit(1);
    };
    let secs: u64 = env("HTTP_BOOT_SECS", 15);
    let mib: usize = env("HTTP_BOOT_MIB", 32);
    let rounds: usize = env::<usize>("HTTP_BOOT_ROUNDS", 3).max(1);
    let clients: Vec<usize> = std::env::var("HTTP_BOOT_CLIENTS")
        .unwrap_or_else(|_| "64,256".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let pin = procstat::online_cpus() >= 2;
    let bin = bench_bin();
    println!(
        "http_boot: {} ({}), {mib} MiB kernel, {rounds} rounds of {secs} s per server, wrk 1 thread{}",
        bin.display(),
        version(&bin),
        if pin {
            ", servers on CPU 0, wrk on CPU 1"
        } else {
            " (1 CPU: nothing pinned)"
        }
    );
    let kernel = pattern(mib << 20, 7);

    // Servers start pinned to CPU 0; everything started after the switch runs on CPU 1.
    if pin {
        procstat::pin_current_thread(0);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let baton = HostBuilder::temp()
        .bin(&bin)
        .node_files(Some("open"))
        // 256 kept-alive clients from one address: above the per-address default.
        .config("[http]\nmax_connections_per_ip = 1024\n")
        .start();
    let k = baton.api.upload("vmlinuz", &kernel);
    let rd = baton.api.upload("initrd.img", &pattern(1 << 20, 8));
    baton
        .api
        .post(
            "/v1/nodes",
            json!({ "id": "n1", "macs": [mac_colons(mac(1))] }),
        )
        .expect(201);
    baton.api.set_deploy("n1", &k, &rd);
    let baton_url = format!("http://{}/boot/n1/nodes/n1/kernel", baton.http());
    let (ngx, ngx_addr) = start_nginx(&nginx, dir.path(), &kernel);
    let ngx_url = format!("http://{ngx_addr}/kernel");
    if pin {
        procstat::pin_current_thread(1);
    }
    for (name, url) in [("baton", &baton_url), ("nginx", &ngx_url)] {
        let got = serves_whole(&wrk, url);
        assert!(got, "{name} does not serve {url}");
    }

    println!(
        "\n{:<8} {:>7} {:>5} {:>9} {:>9} {:>11} {:>9} {:>8}  errors",
        "server", "clients", "round", "MB/s", "wrk MB/s", "CPU s/GB", "requests", "RSS MiB"
    );
    // Rounds alternate the two servers, so a slow patch of the machine hits both; the
    // ratios are taken within a round and their median is reported.
    let mut ratios = Vec::new();
    for &c in &clients {
        let mut per_round = Vec::new();
        for round in 1..=rounds {
            let b = run(&wrk, &baton_url, c, secs, baton.pid());
            print_run("baton", c, round, &b);
            let n = run(&wrk, &ngx_url, c, secs, ngx.id());
            print_run("nginx", c, round, &n);
            per_round.push((b.mbps / n.mbps, b.cpu_per_gb / n.cpu_per_gb));
        }
        ratios.push((c, per_round));
    }
    println!();
    for (c, per_round) in ratios {
        let list = |f: fn(&(f64, f64)) -> f64| {
            let v: Vec<String> = per_round.iter().map(|r| format!("{:.2}", f(r))).collect();
            v.join(" ")
        };
        println!(
            "{c} clients, median of {} rounds: Baton / nginx MB/s x{:.2} (target >= 1; rounds: \
             {}), CPU per GB x{:.2} (target <= 1.2; rounds: {})",
            per_round.len(),
            median(per_round.iter().map(|r| r.0).collect()),
            list(|r| r.0),
            median(per_round.iter().map(|r| r.1).collect()),
            list(|r| r.1),
        );
    }
    stop_nginx(ngx);
}

/// Stops nginx and its worker: SIGTERM to the master, which ends the worker (a killed
/// master would leave it running, holding whatever it inherited, e.g. the heavy lock).
fn stop_nginx(mut ngx: Child) {
    // SAFETY: kill(2) on the PID of a child this process started and has not reaped.
    unsafe {
        libc::kill(ngx.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = ngx.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("nginx did not stop within 10 s of SIGTERM: killed");
    let _ = ngx.kill();
    let _ = ngx.wait();
}

/// The first `name` on PATH (or in /usr/sbin, where Debian puts nginx).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// nginx serving `kernel` as `/kernel` from `dir`, one worker, `sendfile on`, on a
/// loopback port it was given (free just before; nginx fails loudly if taken).
fn start_nginx(nginx: &Path, dir: &Path, kernel: &[u8]) -> (Child, SocketAddr) {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).expect("nginx root");
    std::fs::write(root.join("kernel"), kernel).expect("kernel for nginx");
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               server {{ listen {addr}; root {r}; location / {{ }} }}\n}}\n",
            d = dir.display(),
            r = root.display(),
        ),
    )
    .expect("nginx.conf");
    let child = Command::new(nginx)
        .args(["-p", &dir.display().to_string(), "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
        thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

/// One short `wrk` run that must read at least one whole response.
fn serves_whole(wrk: &Path, url: &str) -> bool {
    let out = Command::new(wrk)
        .args(["-t1", "-c1", "-d1s", "--timeout", "10s", url])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("Non-2xx") && requests(&text) > 0
}

/// `wrk` with `clients` connections for `secs` against `url`; the server's CPU is read
/// from the tree of `server_pid` around it.
fn run(wrk: &Path, url: &str, clients: usize, secs: u64, server_pid: u32) -> Run {
    let cpu0 = procstat::tree_cpu(server_pid);
    let lo0 = lo_bytes();
    let t = Instant::now();
    let out = Command::new(wrk)
        .args(["-t1", &format!("-c{clients}"), &format!("-d{secs}s")])
        .args(["--timeout", "60s", url])
        .output()
        .expect("run wrk");
    let wall = t.elapsed().as_secs_f64();
    let cpu = (procstat::tree_cpu(server_pid) - cpu0).as_secs_f64();
    let moved = lo_bytes().saturating_sub(lo0) as f64;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = bytes_read(&text);
    let errors: Vec<String> = text
        .lines()
        .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .map(|l| l.trim().to_string())
        .collect();
    Run {
        mbps: moved / wall / 1e6,
        wrk_mbps: whole / wall / 1e6,
        cpu_per_gb: if moved > 0.0 {
            cpu / (moved / 1e9)
        } else {
            f64::NAN
        },
        requests: requests(&text),
        errors: if errors.is_empty() {
            "none".into()
        } else {
            errors.join("; ")
        },
        rss_mib: procstat::tree_rss(server_pid) as f64 / (1 << 20) as f64,
    }
}

fn print_run(name: &str, clients: usize, round: usize, r: &Run) {
    println!(
        "{name:<8} {clients:>7} {round:>5} {:>9.1} {:>9.1} {:>11.3} {:>9} {:>8.1}  {}",
        r.mbps, r.wrk_mbps, r.cpu_per_gb, r.requests, r.rss_mib, r.errors
    );
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Bytes received on loopback so far (on `lo` every byte sent is received).
fn lo_bytes() -> u64 {
    std::fs::read_to_string("/sys/class/net/lo/statistics/rx_bytes")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `N requests in Xs, Y.YYGB read` -> N.
fn requests(wrk: &str) -> u64 {
    wrk.lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or(0)
}

/// `N requests in Xs, Y.YYGB read` -> bytes.
fn bytes_read(wrk: &str) -> f64 {
    let Some(v) = wrk.lines().find_map(|l| {
        let l = l.trim();
        l.contains(" requests in ")
            .then(|| l.rsplit_once(", ")?.1.strip_suffix(" read"))
            .flatten()
    }) else {
        return 0.0;
    };
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    n * match unit {
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0f64.powi(4),
        _ => 1.0,
    }
}
