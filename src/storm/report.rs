//! What a storm reports: one record per client (a JSON line), and the summary over all
//! of them (counts by stage, p50/p99/max per stage and end to end, double answers,
//! digests). Pure data and arithmetic; the driver prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A step of the boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The firmware's DHCP: offers, REQUEST, ACK, and the udp/4011 request.
    Dhcp,
    /// The first-stage loader (and what it loads itself: ldlinux, GRUB after shim).
    Loader,
    /// The loader's own DHCP (iPXE asks again).
    LoaderDhcp,
    /// The node's configuration (script, pxelinux or GRUB file), chains included.
    Config,
    /// The kernel.
    Kernel,
    /// The ramdisk(s).
    Ramdisk,
}

impl Stage {
    /// All stages in boot order.
    pub const ALL: [Stage; 6] = [
        Stage::Dhcp,
        Stage::Loader,
        Stage::LoaderDhcp,
        Stage::Config,
        Stage::Kernel,
        Stage::Ramdisk,
    ];

    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dhcp => "dhcp",
            Stage::Loader => "loader",
            Stage::LoaderDhcp => "loader_dhcp",
            Stage::Config => "config",
            Stage::Kernel => "kernel",
            Stage::Ramdisk => "ramdisk",
        }
    }
}

/// One file a client fetched (or tried to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Stage it belongs to.
    pub stage: Stage,
    /// URI (`tftp://server/path` or `http://...`).
    pub uri: String,
    /// Served path (what manifests name).
    pub path: String,
    /// Bytes received.
    pub bytes: u64,
    /// sha256 of the bytes, when complete.
    pub sha256: Option<String>,
    /// Against the reference: true (match), false (mismatch), none (no reference).
    pub verified: Option<bool>,
    /// Milliseconds from request to last byte.
    pub ms: f64,
    /// Retransmissions by the client.
    pub retransmits: u32,
    /// How it ended: `ok`, `not_found`, `timeout`, `error: ...`.
    pub outcome: String,
}

/// The answers to one DHCP transmission window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Stage (dhcp or loader_dhcp).
    pub stage: Stage,
    /// `discover`, `request` or `boot_server`.
    pub kind: String,
    /// 1-based try number.
    pub n: u32,
    /// Servers that offered or acknowledged an address.
    pub address: Vec<Ipv4Addr>,
    /// Servers that gave a PXE answer (boot file or PXEClient class).
    pub boot: Vec<Ipv4Addr>,
}

impl RoundRecord {
    /// Two distinct boot servers answered this one transmission.
    pub fn is_double(&self) -> bool {
        self.boot.len() > 1
    }
}

/// A failed boot attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Stage that failed.
    pub stage: Stage,
    /// Why.
    pub error: String,
    /// Milliseconds since power-on when it failed.
    pub at_ms: f64,
}

/// Everything about one simulated client: a JSON line of the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Client number (0-based).
    pub client: usize,
    /// MAC.
    pub mac: String,
    /// Node id, when the reference names it.
    pub node: Option<String>,
    /// Firmware profile.
    pub profile: String,
    /// Address it used for TFTP/HTTP and as ciaddr.
    pub source_ip: Ipv4Addr,
    /// Address leased by the DHCP server (last attempt).
    pub lease: Option<Ipv4Addr>,
    /// Booted to the kernel and ramdisk (or was told to boot locally).
    pub completed: bool,
    /// The configuration said "boot the local disk".
    pub local_boot: bool,
    /// Stopped by the storm's wall-clock limit before it ended.
    pub cut: bool,
    /// Stage of the final failure.
    pub failed_stage: Option<Stage>,
    /// Error of the final failure.
    pub error: Option<String>,
    /// Boot attempts made (1 unless a failure led to a retry).
    pub attempts: u32,
    /// Every failed attempt.
    pub failures: Vec<Failure>,
    /// Power-on to the end (last byte of the last ramdisk, or the failure), in ms.
    pub total_ms: f64,
    /// Duration per stage of the last attempt, in ms.
    pub stages: BTreeMap<Stage, f64>,
    /// Servers answering each DHCP transmission.
    pub rounds: Vec<RoundRecord>,
    /// Transmissions answered by two or more distinct boot servers.
    pub double_answers: u32,
    /// Files fetched.
    pub files: Vec<FileRecord>,
}

/// p50/p99/max of a set of durations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Samples.
    pub n: usize,
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Maximum, ms.
    pub max: f64,
}

/// Nearest-rank quantiles of `v` (ms); `None` when empty.
pub fn quantiles(v: &[f64]) -> Option<Quantiles> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    Some(Quantiles {
        n: s.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: s[s.len() - 1],
    })
}

/// The summary of a storm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Clients started.
    pub clients: usize,
    /// Clients that booted.
    pub completed: usize,
    /// Of those, told to boot locally.
    pub local_boots: usize,
    /// Clients that failed (not cut by the limit), by the stage of their final failure.
    pub failed: BTreeMap<Stage, usize>,
    /// Clients still running when the wall-clock limit stopped the storm.
    pub unfinished: usize,
    /// Per stage (completed clients).
    pub stages: BTreeMap<Stage, Quantiles>,
    /// Power-on to done (completed clients).
    pub end_to_end: Option<Quantiles>,
    /// Transmissions answered by two or more boot servers, over all clients.
    pub double_answers: u32,
    /// Clients that saw at least one double answer.
    pub clients_with_double_answers: usize,
    /// Files whose sha256 differed from the reference.
    pub digest_mismatches: usize,
    /// Files fetched with no reference digest.
    pub unverified_files: usize,
    /// (node or MAC, path) pairs fetched with more than one distinct sha256.
    pub files_with_several_digests: usize,
    /// Distinct (node or MAC, path) pairs fetched.
    pub distinct_files: usize,
    /// Boot attempts that failed and were retried.
    pub retried_attempts: u32,
    /// Bytes received in complete files.
    pub bytes: u64,
    /// Wall-clock seconds of the storm.
    pub wall_secs: f64,
    /// Boot servers that answered, with the number of answers.
    pub boot_servers: BTreeMap<Ipv4Addr, u64>,
}

impl Summary {
    /// Builds the summary of `records`.
    pub fn of(records: &[ClientRecord], wall_secs: f64) -> Summary {
        let mut failed = BTreeMap::new();
        let mut per_stage: BTreeMap<Stage, Vec<f64>> = BTreeMap::new();
        let mut e2e = Vec::new();
        let mut digests: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        let mut s = Summary {
            clients: records.len(),
            completed: 0,
            local_boots: 0,
            failed: BTreeMap::new(),
            unfinished: 0,
            stages: BTreeMap::new(),
            end_to_end: None,
            double_answers: 0,
            clients_with_double_answers: 0,
            digest_mismatches: 0,
            unverified_files: 0,
            files_with_several_digests: 0,
            distinct_files: 0,
            retried_attempts: 0,
            bytes: 0,
            wall_secs,
            boot_servers: BTreeMap::new(),
        };
        for r in records {
            if r.completed {
                s.completed += 1;
                s.local_boots += usize::from(r.local_boot);
                e2e.push(r.total_ms);
                for (st, ms) in &r.stages {
                    per_stage.entry(*st).or_default().push(*ms);
                }
            } else if r.cut {
                s.unfinished += 1;
            } else if let Some(st) = r.failed_stage {
                *failed.entry(st).or_insert(0) += 1;
            }
            s.double_answers += r.double_answers;
            s.clients_with_double_answers += usize::from(r.double_answers > 0);
            s.retried_attempts +=
                r.failures.len() as u32 - u32::from(!r.completed && !r.failures.is_empty());
            for round in &r.rounds {
                for b in &round.boot {
                    *s.boot_servers.entry(*b).or_insert(0) += 1;
                }
            }
            let who = r.node.clone().unwrap_or_else(|| r.mac.clone());
            for f in &r.files {
                match f.verified {
                    Some(false) => s.digest_mismatches += 1,
                    None if f.sha256.is_some() => s.unverified_files += 1,
                    _ => {}
                }
                if let Some(d) = &f.sha256 {
                    s.bytes += f.bytes;
                    digests
                        .entry((who.clone(), f.path.clone()))
                        .or_default()
                        .insert(d.clone());
                }
            }
        }
        s.failed = failed;
        s.stages = per_stage
            .into_iter()
            .filter_map(|(k, v)| Some((k, quantiles(&v)?)))
            .collect();
        s.end_to_end = quantiles(&e2e);
        s.distinct_files = digests.len();
        s.files_with_several_digests = digests.values().filter(|d| d.len() > 1).count();
        s
    }

    /// Failed clients (all stages).
    pub fn failed_total(&self) -> usize {
        self.failed.values().sum()
    }

    /// Human-readable table.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "clients {}  completed {} ({} local boot)  failed {}  unfinished {}  wall {:.1} s",
            self.clients,
            self.completed,
            self.local_boots,
            self.failed_total(),
            self.unfinished,
            self.wall_secs
        );
        if !self.failed.is_empty() {
            let by: Vec<String> = self
                .failed
                .iter()
                .map(|(k, v)| format!("{} {v}", k.as_str()))
                .collect();
            let _ = writeln!(o, "failed by stage: {}", by.join(", "));
        }
        let _ = writeln!(
            o,
            "{:<12} {:>6} {:>10} {:>10} {:>10}",
            "stage", "n", "p50 ms", "p99 ms", "max ms"
        );
        let mut row = |name: &str, q: &Quantiles| {
            let _ = writeln!(
                o,
                "{name:<12} {:>6} {:>10.1} {:>10.1} {:>10.1}",
                q.n, q.p50, q.p99, q.max
            );
        };
        for st in Stage::ALL {
            if let Some(q) = self.stages.get(&st) {
                row(st.as_str(), q);
            }
        }
        if let Some(q) = &self.end_to_end {
            row("end_to_end", q);
        }
        let mb = self.bytes as f64 / 1e6;
        let _ = writeln!(
            o,
            "double answers {} (clients {})  digest mismatches {}  unverified files {}  files with >1 digest {} of {}",
            self.double_answers,
            self.clients_with_double_answers,
            self.digest_mismatches,
            self.unverified_files,
            self.files_with_several_digests,
            self.distinct_files
        );
        let servers: Vec<String> = self
            .boot_servers
            .iter()
            .map(|(ip, n)| format!("{ip} ({n})"))
            .collect();
        let _ = writeln!(
            o,
            "received {mb:.1} MB ({:.1} MB/s); boot servers answering: {}",
            if self.wall_secs > 0.0 {
                mb / self.wall_secs
            } else {
                0.0
            },
            if servers.is_empty() {
                "none".to_string()
            } else {
                servers.join(", ")
            }
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, completed: bool, total: f64) -> ClientRecord {
        ClientRecord {
            client: i,
            mac: format!("52:54:00:00:00:{i:02x}"),
            node: Some(format!("n{i}")),
            profile: "ipxe".into(),
            source_ip: Ipv4Addr::new(10, 0, 0, 9),
            lease: None,
            completed,
            local_boot: false,
            cut: false,
            failed_stage: (!completed).then_some(Stage::Kernel),
            error: None,
            attempts: 1,
            failures: vec![],
            total_ms: total,
            stages: [(Stage::Dhcp, total / 2.0)].into_iter().collect(),
            rounds: vec![RoundRecord {
                stage: Stage::Dhcp,
                kind: "discover".into(),
                n: 1,
                address: vec![Ipv4Addr::new(10, 0, 0, 2)],
                boot: if i == 3 {
                    vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 4)]
                } else {
                    vec![Ipv4Addr::new(10, 0, 0, 1)]
                },
            }],
            double_answers: u32::from(i == 3),
            files: vec![FileRecord {
                stage: Stage::Kernel,
                uri: "tftp://10.0.0.1/k".into(),
                path: "k".into(),
                bytes: 10,
                sha256: Some("aa".into()),
                verified: Some(true),
                ms: 1.0,
                retransmits: 0,
                outcome: "ok".into(),
            }],
        }
    }

    #[test]
    fn quantiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let q = quantiles(&v).unwrap();
        assert_eq!((q.p50, q.p99, q.max, q.n), (50.0, 99.0, 100.0, 100));
        assert_eq!(quantiles(&[5.0]).unwrap().p99, 5.0);
        assert!(quantiles(&[]).is_none());
    }

    #[test]
    fn summary_counts() {
        let rs: Vec<ClientRecord> = (0..5)
            .map(|i| rec(i, i != 4, 100.0 * (i + 1) as f64))
            .collect();
        let s = Summary::of(&rs, 2.0);
        assert_eq!(s.completed, 4);
        assert_eq!(s.failed.get(&Stage::Kernel), Some(&1));
        assert_eq!(s.double_answers, 1);
        assert_eq!(s.clients_with_double_answers, 1);
        assert_eq!(s.end_to_end.unwrap().max, 400.0);
        assert_eq!(s.distinct_files, 5);
        assert_eq!(s.files_with_several_digests, 0);
        assert_eq!(s.boot_servers[&Ipv4Addr::new(10, 0, 0, 1)], 5);
        let text = s.render();
        assert!(text.contains("end_to_end"), "{text}");
        let json = serde_json::to_string(&rs[0]).unwrap();
        let back: ClientRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rs[0]);
    }
}
