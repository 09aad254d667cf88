//! The cluster boot storm of issue 15, shared by `tests/storm_cluster.rs` (CI size) and
//! `benches/storm.rs` (full size): a [`StormLab`] with three Baton hosts in one cluster
//! (proxy-DHCP on, `node_files = bound`, short leases), enrolled nodes spread over them
//! (each with a deploy profile: kernel and ramdisk), and `baton storm` in the client
//! namespace, optionally with a fault on the host owning the most nodes once a share of
//! the clients has ended: `kill -9`, or SIGSTOP for longer than TTL + grace then SIGCONT.
//! Also the dnsmasq baseline (proxy-DHCP + TFTP) serving the same files to the same
//! clients, run before the cluster starts so that only one boot server answers.
//!
//! Included with `#[path]` after `common` and `storm_lab`.

// The test and the bench use different parts.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::fleet::{Fleet, Leases};
use crate::common::host::{Host, HostBuilder, TOKEN};
use crate::common::pattern;
use crate::common::wait_until;
use crate::storm_lab::{manifest_of, StormLab, StormRun, FIRST_SOURCE_IP};

/// Hosts in the cluster.
pub const HOSTS: usize = 3;

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Enrolled nodes, one client each.
    pub nodes: usize,
    /// Kernel bytes.
    pub kernel: usize,
    /// Ramdisk bytes.
    pub ramdisk: usize,
}

/// A fault played on the owner of the most nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// None.
    None,
    /// `kill -9` once this share of the clients has ended.
    Kill { at: f64 },
    /// SIGSTOP once this share has ended, SIGCONT `pause` later.
    Stop { at: f64, pause: Duration },
}

/// How the storm is run (same for every run of one comparison).
#[derive(Debug, Clone)]
pub struct StormOpts {
    /// `--profile`.
    pub profiles: String,
    /// `--time-scale` (DHCP timers).
    pub time_scale: f64,
    /// `--tftp-time-scale`.
    pub tftp_time_scale: f64,
    /// `--attempts`.
    pub attempts: u32,
    /// `--limit` (seconds).
    pub limit: f64,
}

/// What one storm with a fault did.
pub struct FaultRun {
    /// The storm.
    pub run: StormRun,
    /// The host the fault hit, and how many nodes it owned.
    pub victim: Option<(String, usize)>,
    /// Seconds from the storm's start to the fault (and to SIGCONT).
    pub fault_at: Option<f64>,
    /// Seconds from the storm's start to SIGCONT.
    pub resumed_at: Option<f64>,
    /// Owners (host -> nodes) before the run.
    pub owners_before: BTreeMap<String, usize>,
    /// Owners after the run.
    pub owners_after: BTreeMap<String, usize>,
    /// Per host, how often its lease lapsed during the run ("lease expired" in its log):
    /// a busy host that looks dead shows here.
    pub lapses: BTreeMap<String, usize>,
    /// Per host, its log lines saying a request was refused during the run (the reason
    /// a client failed, which the client itself is never told).
    pub refusals: BTreeMap<String, Vec<String>>,
}

impl FaultRun {
    /// The hosts' refusal lines of the run: a count per host and its first lines.
    pub fn refusal_tally(&self) -> String {
        let mut out = String::new();
        for (h, lines) in self.refusals.iter().filter(|(_, l)| !l.is_empty()) {
            out += &format!("  {h}: {} refusal lines; the first ones:\n", lines.len());
            for l in lines.iter().take(8) {
                out += &format!("    {l}\n");
            }
        }
        out
    }
}

/// Node `i`'s id.
pub fn node_id(i: usize) -> String {
    format!("n{:04}", i + 1)
}

/// Node `i`'s MAC: `52:54:00:b9:HH:LL` from 1.
pub fn node_mac(i: usize) -> String {
    let k = i + 1;
    format!("52:54:00:b9:{:02x}:{:02x}", k >> 8, k & 0xff)
}

/// The clients' source addresses: `n` from [`FIRST_SOURCE_IP`] on, as [`StormLab`]
/// adds them.
pub fn source_ips(n: usize) -> String {
    let last = std::net::Ipv4Addr::from(u32::from(FIRST_SOURCE_IP) + n as u32 - 1);
    format!("{FIRST_SOURCE_IP}-{last}")
}

/// The loaders and the iPXE entry script every boot server serves.
fn loaders(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("undionly.kpxe"), pattern(70_000, 11)).unwrap();
    std::fs::write(root.join("ipxe.efi"), pattern(300_000, 12)).unwrap();
    let boot_ipxe =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tftp-root-template/static/boot.ipxe");
    std::fs::copy(&boot_ipxe, root.join("boot.ipxe")).unwrap();
}

/// The lab, and (once [`StormCluster::start_cluster`] ran) the cluster.
pub struct StormCluster {
    /// The Baton hosts `h1..h3` (declared first: killed before the namespaces go).
    pub fleet: Option<Fleet>,
    /// Namespaces, address server.
    pub lab: StormLab,
    /// Test files.
    pub dir: PathBuf,
    /// Lease settings of the hosts.
    pub leases: Leases,
    /// What boots.
    pub size: Size,
    /// CPU list the hosts (and dnsmasq) are pinned to, if any.
    pub server_cpus: Option<String>,
    kernel: Vec<u8>,
    ramdisk: Vec<u8>,
    root: PathBuf,
    loaders_manifest: PathBuf,
}

impl StormCluster {
    /// Builds the lab (three boot namespaces, one source address per client) and the
    /// files; no Baton host runs yet.
    pub fn new(dir: &Path, size: Size, leases: Leases) -> StormCluster {
        let lab = StormLab::with_fixed_leases(
            HOSTS,
            &(0..size.nodes).map(node_mac).collect::<Vec<_>>(),
            dir,
        );
        let root = dir.join("root");
        loaders(&root);
        let loaders_manifest = dir.join("loaders.sha256");
        manifest_of(&root, &loaders_manifest);
        StormCluster {
            fleet: None,
            lab,
            dir: dir.to_path_buf(),
            leases,
            size,
            server_cpus: None,
            kernel: pattern(size.kernel, 1),
            ramdisk: pattern(size.ramdisk, 2),
            root,
            loaders_manifest,
        }
    }

    fn pin(&self, pid: u32) {
        if let Some(cpus) = &self.server_cpus {
            // -a: every thread the server has started so far (later ones inherit).
            let _ = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", cpus, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status();
        }
    }

    /// The baseline: dnsmasq (proxy-DHCP + TFTP, `--tftp-max` raised to the client
    /// count) on boot namespace 1, serving the same loaders, kernel and ramdisk to the
    /// same MACs, with per-MAC iPXE scripts shaped like Baton's. Call before
    /// [`StormCluster::start_cluster`] (one boot server at a time).
    pub fn dnsmasq_run(&self, o: &StormOpts) -> StormRun {
        assert!(
            self.fleet.is_none(),
            "the dnsmasq baseline runs before the cluster"
        );
        let droot = self.dir.join("dnsmasq-root");
        std::fs::create_dir_all(droot.join("ipxe")).unwrap();
        for f in ["undionly.kpxe", "ipxe.efi", "boot.ipxe"] {
            std::fs::copy(self.root.join(f), droot.join(f)).unwrap();
        }
        let (k, r) = (self.dir.join("kernel"), self.dir.join("ramdisk"));
        std::fs::write(&k, &self.kernel).unwrap();
        std::fs::write(&r, &self.ramdisk).unwrap();
        for i in 0..self.size.nodes {
            let id = node_id(i);
            let dashes = node_mac(i).replace(':', "-");
            let script = format!(
                "#!ipxe\nkernel /nodes/{id}/kernel initrd=ramdisk console=ttyS0 \
                 baton.node={id} BOOTIF=01-{dashes}\ninitrd --name ramdisk /nodes/{id}/ramdisk\nboot\n"
            );
            std::fs::write(droot.join(format!("ipxe/{dashes}.ipxe")), script).unwrap();
            let nd = droot.join(format!("nodes/{id}"));
            std::fs::create_dir_all(&nd).unwrap();
            // Hard links: one file in the page cache, as Baton shares one artifact.
            std::fs::hard_link(&k, nd.join("kernel")).unwrap();
            std::fs::hard_link(&r, nd.join("ramdisk")).unwrap();
        }
        let manifest = self.dir.join("dnsmasq-root.sha256");
        manifest_of(&droot, &manifest);
        let max = format!("--tftp-max={}", self.size.nodes.max(50));
        let dnsmasq = self.lab.dnsmasq_proxy_with(&droot, &[&max]);
        self.pin(dnsmasq.pid());
        let count = self.size.nodes.to_string();
        let ips = source_ips(self.size.nodes);
        let mut args = vec![
            "--mac-base".to_string(),
            node_mac(0),
            "--count".into(),
            count,
            "--manifest".into(),
            manifest.display().to_string(),
            "--source-ips".into(),
            ips,
        ];
        // dnsmasq has no HTTP server: iPXE-over-HTTP clients are played as iPXE.
        let profiles = o.profiles.replace("ipxe-http", "ipxe");
        args.extend(common_args(o, &profiles));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self
            .lab
            .storm(&self.dir, "dnsmasq", &refs, storm_timeout(o));
        drop(dnsmasq);
        run
    }

    /// Starts `h1..h3` (one per boot namespace, proxy-DHCP on eth0, `node_files =
    /// bound`, [`StormCluster::leases`]) running `bin`, uploads the kernel and ramdisk,
    /// and enrolls the nodes, node `i` on host `i mod 3` (the enrolling host owns it),
    /// each host's share from its own thread.
    pub fn start_cluster(&mut self, bin: &Path) {
        let cfg = self.leases.toml("");
        let specs: Vec<HostBuilder> = (1..=HOSTS)
            .map(|i| {
                let a = StormLab::boot_ip(i);
                HostBuilder::member(&format!("h{i}"))
                    .bin(bin)
                    .netns(self.lab.boot_host(i).name())
                    .http_listen(&format!("{a}:8069"))
                    .tftp_listen(&format!("{a}:69"))
                    .tftp_root(&self.root)
                    .with_dhcp()
                    .flag("--dhcp-interface", "eth0")
                    .node_files(Some("bound"))
                    .log_level("info")
                    .config(&cfg)
            })
            .collect();
        let fleet = Fleet::start(specs);
        for h in &fleet.hosts {
            self.pin(h.pid());
        }
        let names: Vec<String> = fleet.hosts.iter().map(|h| h.name().to_string()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let h1 = fleet.hosts[0].api.clone();
        let kd = h1.upload("vmlinuz", &self.kernel);
        let rd = h1.upload("initrd.img", &self.ramdisk);
        // Artifacts travel to the hosts that serve (or may take over) a node using them:
        // waited for below, once the nodes exist.
        let t0 = Instant::now();
        let workers: Vec<_> = fleet
            .hosts
            .iter()
            .enumerate()
            .map(|(h, host)| {
                let api = host.api.clone();
                let (kd, rd, n) = (kd.clone(), rd.clone(), self.size.nodes);
                thread::spawn(move || {
                    for i in (h..n).step_by(HOSTS) {
                        let id = node_id(i);
                        api.post("/v1/nodes", json!({ "id": id, "macs": [node_mac(i)] }))
                            .expect(201);
                        api.put(
                            &format!("/v1/nodes/{id}/profile"),
                            json!({ "kind": "deploy", "kernel": kd, "ramdisk": rd,
                                    "cmdline": format!("console=ttyS0 baton.node={id}") }),
                        )
                        .expect(200);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
        let ids: Vec<String> = (0..self.size.nodes).map(node_id).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        h1.wait_nodes_replicated(&ids, &names, Duration::from_secs(120));
        crate::common::require::say(&format!(
            "enrolled {} nodes on {HOSTS} hosts in {:.1} s",
            self.size.nodes,
            t0.elapsed().as_secs_f64()
        ));
        self.fleet = Some(fleet);
        self.settle();
    }

    fn fleet(&mut self) -> &mut Fleet {
        self.fleet.as_mut().expect("start_cluster first")
    }

    /// Waits until every host runs, sees the others `up`, and applied what the leader
    /// logged (never quiet: leases renew through the log every 200 ms).
    pub fn settle(&mut self) {
        let fleet = self.fleet();
        let names: Vec<String> = fleet.hosts.iter().map(|h| h.name().to_string()).collect();
        for h in &fleet.hosts {
            wait_until(Duration::from_secs(60), "every host up", || {
                let states = h.api.host_states();
                names
                    .iter()
                    .all(|n| states.get(n).is_some_and(|s| s == "up"))
                    .then_some(())
            });
        }
        fleet.wait_applied_everywhere(Duration::from_secs(60));
    }

    /// Host name -> nodes it owns, as a running host sees it.
    pub fn owners(&mut self) -> BTreeMap<String, usize> {
        let fleet = self.fleet();
        let i = fleet.running()[0];
        let mut m: BTreeMap<String, usize> = fleet
            .hosts
            .iter()
            .map(|h| (h.name().to_string(), 0))
            .collect();
        for (_, (_, owner)) in fleet.hosts[i].api.nodes() {
            *m.entry(owner).or_insert(0) += 1;
        }
        m
    }

    /// `f` of every host, by name (empty before the cluster starts).
    fn per_host<T>(&self, f: impl Fn(&Host) -> T) -> BTreeMap<String, T> {
        self.fleet
            .as_ref()
            .map(|fl| {
                fl.hosts
                    .iter()
                    .map(|h| (h.name().to_string(), f(h)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Per host, "lease expired" lines in its log so far (every run).
    pub fn lapse_counts(&self) -> BTreeMap<String, usize> {
        self.per_host(|h| h.log().matches("lease expired").count())
    }

    /// Per host, the length of its log so far (where a run's lines start).
    fn log_marks(&self) -> BTreeMap<String, usize> {
        self.per_host(|h| h.log().len())
    }

    /// Per host, the lines logged since `marks` that say a request was refused.
    fn refusals_since(&self, marks: &BTreeMap<String, usize>) -> BTreeMap<String, Vec<String>> {
        self.per_host(|h| {
            let log = h.log();
            let from = marks.get(h.name()).copied().unwrap_or(0).min(log.len());
            log.get(from..)
                .unwrap_or("")
                .lines()
                .filter(|l| l.contains("refused"))
                .map(str::to_string)
                .collect()
        })
    }

    /// Restarts the host `name` (after a kill) and waits until the cluster is settled.
    pub fn restart(&mut self, name: &str) {
        let fleet = self.fleet();
        let i = fleet.index(name);
        fleet.hosts[i].start();
        let pid = fleet.hosts[i].pid();
        self.pin(pid);
        self.settle();
    }

    /// One storm against the cluster, with `fault` on the host owning the most nodes.
    /// The storm reads the reference from a host the fault spares.
    pub fn run(&mut self, tag: &str, o: &StormOpts, fault: Fault) -> FaultRun {
        let owners_before = self.owners();
        let lapses_before = self.lapse_counts();
        let marks = self.log_marks();
        let (victim, owned) = owners_before
            .iter()
            .max_by_key(|(h, n)| (**n, std::cmp::Reverse((*h).clone())))
            .map(|(h, n)| (h.clone(), *n))
            .unwrap();
        let fleet = self.fleet.as_mut().expect("start_cluster first");
        let vi = fleet.index(&victim);
        let api_host = (0..fleet.hosts.len())
            .find(|&i| i != vi)
            .expect("a second host");
        let api_ip = StormLab::boot_ip(api_host + 1);
        let count = self.size.nodes.to_string();
        let mut args = vec![
            "--api".to_string(),
            format!("http://{api_ip}:8069"),
            "--token".into(),
            TOKEN.into(),
            "--manifest".into(),
            self.loaders_manifest.display().to_string(),
            "--count".into(),
            count,
            "--source-ips".into(),
            source_ips(self.size.nodes),
        ];
        args.extend(common_args(o, &o.profiles));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let n = self.size.nodes as f64;
        let t0 = Instant::now();
        let (mut fault_at, mut resumed_at) = (None, None);
        let lab = &self.lab;
        let run = lab.storm_watched(&self.dir, tag, &refs, storm_timeout(o), |ended| {
            let host = &mut fleet.hosts[vi];
            match fault {
                Fault::None => {}
                Fault::Kill { at } => {
                    if fault_at.is_none() && ended as f64 >= at * n {
                        host.kill9();
                        fault_at = Some(t0.elapsed().as_secs_f64());
                    }
                }
                Fault::Stop { at, pause } => {
                    if fault_at.is_none() && ended as f64 >= at * n {
                        host.sigstop();
                        fault_at = Some(t0.elapsed().as_secs_f64());
                    } else if let (Some(f), None) = (fault_at, resumed_at) {
                        if t0.elapsed().as_secs_f64() >= f + pause.as_secs_f64() {
                            host.sigcont();
                            resumed_at = Some(t0.elapsed().as_secs_f64());
                        }
                    }
                }
            }
        });
        // A storm that ended inside the pause still resumes the host.
        if let (Fault::Stop { .. }, Some(_), None) = (fault, fault_at, resumed_at) {
            fleet.hosts[vi].sigcont();
            resumed_at = Some(t0.elapsed().as_secs_f64());
        }
        let hit = (fault != Fault::None).then(|| (victim.clone(), owned));
        let lapses = self
            .lapse_counts()
            .into_iter()
            .map(|(h, n)| (h.clone(), n - lapses_before.get(&h).copied().unwrap_or(0)))
            .collect();
        let refusals = self.refusals_since(&marks);
        if matches!(fault, Fault::Kill { .. }) && fault_at.is_some() {
            // The survivors' view, before the victim comes back.
            let owners_after = self.owners();
            self.restart(&victim);
            return FaultRun {
                run,
                victim: hit,
                fault_at,
                resumed_at,
                owners_before,
                owners_after,
                lapses,
                refusals,
            };
        }
        self.settle();
        let owners_after = self.owners();
        FaultRun {
            run,
            victim: hit,
            fault_at,
            resumed_at,
            owners_before,
            owners_after,
            lapses,
            refusals,
        }
    }
}

/// Flags every run of one comparison shares.
fn common_args(o: &StormOpts, profiles: &str) -> Vec<String> {
    vec![
        "--profile".into(),
        profiles.into(),
        "--time-scale".into(),
        o.time_scale.to_string(),
        "--tftp-time-scale".into(),
        o.tftp_time_scale.to_string(),
        "--attempts".into(),
        o.attempts.to_string(),
        "--limit".into(),
        o.limit.to_string(),
    ]
}

/// The storm's own limit plus time to write its records.
fn storm_timeout(o: &StormOpts) -> Duration {
    Duration::from_secs_f64(o.limit + 30.0)
}

/// End-to-end quantile `key` (`p50`, `p99`, `max`) in seconds.
pub fn e2e(run: &StormRun, key: &str) -> f64 {
    run.summary["end_to_end"][key].as_f64().unwrap_or(f64::NAN) / 1000.0
}
