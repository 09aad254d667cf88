//! The `baton storm` lab: a [`Segment`] (bridge and namespaces), an address-only dnsmasq,
//! a boot-server namespace (Baton, or dnsmasq in proxy mode with its TFTP server) and a
//! client namespace where `baton storm` runs. Test-only; everything lives in namespaces
//! this file creates, and processes are ended by PID (see [`crate::common::child::Proc`]).
//! Included with `#[path]` by the storm tests and bench, each using a part.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::child::Proc;
use crate::common::netns::{address_server, Netns, Segment};

/// Boot server (Baton or dnsmasq proxy); the first of [`StormLab::with_boot_hosts`].
pub const BOOT_IP: &str = "10.79.0.1";
/// Address-only DHCP server.
pub const DHCP_IP: &str = "10.79.0.2";
/// The storm's namespace.
pub const CLIENT_IP: &str = "10.79.0.3";
/// The first per-client source address; client `i` has this + `i`.
pub const FIRST_SOURCE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 79, 2, 1);

/// The namespaces and the address server.
pub struct StormLab {
    /// dnsmasq (addresses only); dropped before the namespaces.
    pub dhcp: Option<Proc>,
    /// Members `dhcp`, `client`, `boot1`...
    pub seg: Segment,
    /// The `baton` binary the storm runs (benches: [`crate::common::bench_bin`]).
    pub bin: std::path::PathBuf,
    /// CPU list (`taskset -c`) the storm is pinned to, if any.
    pub storm_cpus: Option<String>,
}

impl StormLab {
    /// Builds the segment with one boot server namespace and starts the address server,
    /// which leases from 10.79.1.1 to 10.79.8.250 (/16). `client_ips` extra addresses go
    /// on the client's interface, from 10.79.2.1, for per-client source addresses.
    pub fn new(client_ips: usize, tmp: &Path) -> StormLab {
        StormLab::with_boot_hosts(1, client_ips, tmp)
    }

    /// [`StormLab::new`] with `hosts` boot server namespaces (`boot1`..), host `i` at
    /// [`StormLab::boot_ip`]`(i)`: the cluster storm's three Baton hosts.
    pub fn with_boot_hosts(hosts: usize, client_ips: usize, tmp: &Path) -> StormLab {
        StormLab::build(hosts, client_ips, &[], tmp)
    }

    /// [`StormLab::with_boot_hosts`] where client `i` (MAC `macs[i]`) is leased its own
    /// source address (10.79.2.1 + `i`), as real firmware sends from the address it was
    /// given: a lease equal to another client's source address would tie that address to
    /// the wrong node in Baton's `bound` mode, a conflict no real network has.
    pub fn with_fixed_leases(hosts: usize, macs: &[String], tmp: &Path) -> StormLab {
        StormLab::build(hosts, macs.len(), macs, tmp)
    }

    fn build(hosts: usize, client_ips: usize, macs: &[String], tmp: &Path) -> StormLab {
        assert!((1..=9).contains(&hosts), "1 to 9 boot hosts");
        let boots: Vec<(String, String)> = (1..=hosts)
            .map(|i| (format!("boot{i}"), format!("{}/16", StormLab::boot_ip(i))))
            .collect();
        let mut members = vec![
            ("dhcp", format!("{DHCP_IP}/16")),
            ("client", format!("{CLIENT_IP}/16")),
        ];
        members.extend(boots.iter().map(|(n, a)| (n.as_str(), a.clone())));
        let refs: Vec<(&str, &str)> = members.iter().map(|(n, a)| (*n, a.as_str())).collect();
        let seg = Segment::new("storm", &refs)
            .unwrap_or_else(|e| panic!("cannot build the storm lab: {e}"));
        if client_ips > 0 {
            // One `ip -batch` run instead of one process per address.
            let batch = tmp.join("client-addrs");
            // Contiguous from 10.79.2.1 (x.x.x.0 and .255 are hosts in a /16), as the
            // storm's `--source-ips A-B` counts: 250 a /24 left clients 251 on with
            // addresses that were on no interface.
            let first = u32::from(FIRST_SOURCE_IP);
            let lines: String = (0..client_ips as u32)
                .map(|k| {
                    format!(
                        "addr add {}/16 dev eth0\n",
                        std::net::Ipv4Addr::from(first + k)
                    )
                })
                .collect();
            std::fs::write(&batch, lines).unwrap();
            seg.member("client")
                .ip(&["-batch", batch.to_str().unwrap()]);
        }
        let first = u32::from(FIRST_SOURCE_IP);
        let hosts_file = tmp.join("dnsmasq.hosts");
        let fixed: String = macs
            .iter()
            .zip(first..)
            .map(|(m, a)| format!("{m},{}\n", std::net::Ipv4Addr::from(a)))
            .collect();
        std::fs::write(&hosts_file, fixed).expect("write the dnsmasq hosts file");
        let hosts_arg = format!("--dhcp-hostsfile={}", hosts_file.display());
        let dhcp = address_server(
            seg.member("dhcp"),
            // Overlaps the clients' source addresses (10.79.2.1..); with fixed leases
            // each client's lease is its own source address. A pool apart from them
            // (10.79.16.1..) made the first storm of a fresh lab loop in DHCP (not
            // understood yet), so it stays here for now.
            "10.79.1.1,10.79.8.250,255.255.0.0,1h",
            &tmp.join("dnsmasq.leases"),
            &["--dhcp-lease-max=5000", &hosts_arg],
        );
        StormLab {
            dhcp: Some(dhcp),
            seg,
            bin: crate::common::baton_bin().into(),
            storm_cpus: None,
        }
    }

    /// Boot host `i`'s address (1-based): [`BOOT_IP`], then 10.79.0.11, .12...
    pub fn boot_ip(i: usize) -> std::net::Ipv4Addr {
        if i == 1 {
            BOOT_IP.parse().unwrap()
        } else {
            std::net::Ipv4Addr::new(10, 79, 0, 9 + i as u8)
        }
    }

    /// The (first) boot server's namespace.
    pub fn boot(&self) -> &Netns {
        self.boot_host(1)
    }

    /// Boot host `i`'s namespace (1-based).
    pub fn boot_host(&self, i: usize) -> &Netns {
        self.seg.member(&format!("boot{i}"))
    }

    /// The client namespace.
    pub fn client(&self) -> &Netns {
        self.seg.member("client")
    }

    /// The boot server's namespace name.
    pub fn boot_ns(&self) -> &str {
        self.boot().name()
    }

    /// Starts dnsmasq as proxy-DHCP + TFTP on the boot namespace, serving `root`:
    /// classic PXE ROMs get `undionly.kpxe`, UEFI ones `ipxe.efi`, iPXE `boot.ipxe`.
    pub fn dnsmasq_proxy(&self, root: &Path) -> Proc {
        self.dnsmasq_proxy_with(root, &[])
    }

    /// [`StormLab::dnsmasq_proxy`] with `extra` flags (e.g. `--tftp-max=1000`).
    pub fn dnsmasq_proxy_with(&self, root: &Path, extra: &[&str]) -> Proc {
        let mut cmd = self.boot().command("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-range=10.79.0.0,proxy,255.255.0.0",
            "--dhcp-userclass=set:ipxe,iPXE",
            "--pxe-prompt=storm,0",
            "--pxe-service=tag:!ipxe,x86PC,undionly,undionly.kpxe",
            "--pxe-service=tag:!ipxe,BC_EFI,ipxe,ipxe.efi",
            "--pxe-service=tag:!ipxe,x86-64_EFI,ipxe,ipxe.efi",
            "--pxe-service=tag:ipxe,x86PC,script,boot.ipxe",
            "--pxe-service=tag:ipxe,BC_EFI,script,boot.ipxe",
            "--pxe-service=tag:ipxe,x86-64_EFI,script,boot.ipxe",
            "--enable-tftp",
            "--log-facility=-",
            "--user=root",
            "--pid-file=",
        ])
        .arg(format!("--tftp-root={}", root.display()))
        .args(extra);
        let mut p = Proc::spawn("dnsmasq (proxy + tftp)", &mut cmd);
        let ready = p.wait_for(Instant::now() + Duration::from_secs(20), |o, e| {
            (o.to_string() + e).contains("TFTP root")
        });
        assert!(ready.is_some(), "dnsmasq proxy did not start");
        p
    }

    /// Runs `baton storm ARGS` in the client namespace (bounded); returns (exit code,
    /// JSON records, summary JSON, stderr).
    pub fn storm(&self, tmp: &Path, tag: &str, args: &[&str], timeout: Duration) -> StormRun {
        self.storm_watched(tmp, tag, args, timeout, |_| {})
    }

    /// [`StormLab::storm`], calling `tick` every 50 ms with the number of clients that
    /// have ended so far (the fault tests act on it).
    pub fn storm_watched(
        &self,
        tmp: &Path,
        tag: &str,
        args: &[&str],
        timeout: Duration,
        mut tick: impl FnMut(usize),
    ) -> StormRun {
        let records = tmp.join(format!("{tag}.jsonl"));
        let summary = tmp.join(format!("{tag}-summary.json"));
        let _ = std::fs::remove_file(&records);
        let mut cmd = match &self.storm_cpus {
            // taskset execs the program: the PID stays the storm's.
            Some(cpus) => {
                let mut c = self.client().command("taskset");
                c.args(["-c", cpus]).arg(&self.bin);
                c
            }
            None => self.client().command(&self.bin),
        };
        cmd.arg("storm")
            .args(["--interface", "eth0", "--quiet"])
            .arg("--records")
            .arg(&records)
            .arg("--summary")
            .arg(&summary)
            .args(args)
            .env_remove("BATON_API_TOKEN");
        let mut p = Proc::spawn("baton storm", &mut cmd);
        let end = Instant::now() + timeout;
        while p.try_wait().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
            // Complete lines only: the storm writes one per client as each ends.
            let ended = std::fs::read(&records)
                .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                .unwrap_or(0);
            tick(ended);
        }
        let status = p.try_wait();
        let stderr = p.stderr();
        p.kill();
        let records: Vec<serde_json::Value> = std::fs::read_to_string(&records)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let summary = std::fs::read(&summary)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        StormRun {
            code: status.and_then(|s| s.code()),
            records,
            summary,
            stderr,
        }
    }
}

impl Drop for StormLab {
    fn drop(&mut self) {
        self.dhcp.take();
    }
}

/// What one `baton storm` run left.
pub struct StormRun {
    /// Exit code (`None`: killed at the deadline).
    pub code: Option<i32>,
    /// One JSON object per client.
    pub records: Vec<serde_json::Value>,
    /// The summary.
    pub summary: serde_json::Value,
    /// Its stderr (the human summary).
    pub stderr: String,
}

impl StormRun {
    /// The clients that did not boot, counted by final stage and error (first 80
    /// characters), most frequent first: what a failed assertion or a bench prints.
    pub fn failure_tally(&self) -> String {
        let mut m: std::collections::BTreeMap<String, usize> = Default::default();
        for r in self.records.iter().filter(|r| r["completed"] != true) {
            let e: String = r["error"]
                .as_str()
                .unwrap_or("-")
                .chars()
                .take(80)
                .collect();
            *m.entry(format!("{} ({}): {e}", r["failed_stage"], r["profile"]))
                .or_insert(0) += 1;
        }
        let mut v: Vec<(String, usize)> = m.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v.iter()
            .take(12)
            .map(|(k, n)| format!("  {n} x {k}\n"))
            .collect()
    }
}

/// `sha256sum`-style manifest of every file under `root`.
pub fn manifest_of(root: &Path, out: &Path) {
    use sha2::{Digest, Sha256};
    fn walk(dir: &Path, base: &Path, lines: &mut String) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, lines);
            } else {
                let d = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                lines.push_str(&format!("{d}  {rel}\n"));
            }
        }
    }
    let mut lines = String::new();
    walk(root, root, &mut lines);
    std::fs::write(out, lines).unwrap();
}
