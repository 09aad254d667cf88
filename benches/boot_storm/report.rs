//! Figures of a run and the tables printed at the end.
//!
//! Units: 1 MB = 10^6 bytes, 1 GB = 10^9 bytes, MiB for memory and file sizes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::client::TransferResult;
use super::servers::Kind;

/// One scenario: how many clients fetch how large a file, with which window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// Concurrent clients (all start together).
    pub clients: usize,
    /// File size in bytes.
    pub size: u64,
    /// `windowsize` the clients ask for; `None` = plain lockstep, option not sent.
    pub window: Option<u16>,
}

impl Scenario {
    /// Label such as `64x32MiB ws16` or `256x8MiB lockstep`.
    pub fn label(&self) -> String {
        let size = if self.size.is_multiple_of(1 << 20) {
            format!("{}MiB", self.size >> 20)
        } else if self.size.is_multiple_of(1024) {
            format!("{}KiB", self.size >> 10)
        } else {
            format!("{}B", self.size)
        };
        let w = match self.window {
            Some(w) => format!("ws{w}"),
            None => "lockstep".to_string(),
        };
        format!("{}x{size} {w}", self.clients)
    }
}

/// Measurements of one server in one scenario.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The scenario.
    pub scenario: Scenario,
    /// The server.
    pub server: Kind,
    /// One entry per client.
    pub transfers: Vec<TransferResult>,
    /// From the first request to the end of the last client, failed ones included.
    pub all_done: Duration,
    /// Server process tree CPU time (user + system) during the run.
    pub server_cpu: Duration,
    /// How `server_cpu` was measured.
    pub cpu_method: &'static str,
    /// Load generator CPU time (user + system) during the run.
    pub client_cpu: Duration,
    /// CPU time used by other processes on the machine during the run (noise).
    pub other_cpu: Duration,
    /// Server peak RSS in bytes: the larger of the main process's `VmHWM` and the
    /// highest sampled sum of `VmRSS` over its process tree.
    pub peak_rss: Option<u64>,
    /// Something wrong with the server itself (it died, ...).
    pub server_note: Option<String>,
}

impl RunResult {
    fn ok(&self) -> impl Iterator<Item = &TransferResult> {
        self.transfers.iter().filter(|t| t.outcome.is_ok())
    }

    /// CPU used by other processes during the run, as a fraction of one core.
    pub fn noise(&self) -> f64 {
        self.other_cpu.as_secs_f64() / self.all_done.as_secs_f64().max(1e-9)
    }

    /// Failed transfers.
    pub fn failures(&self) -> usize {
        self.transfers.len() - self.ok().count()
    }

    /// Verified bytes delivered, partial transfers included.
    pub fn bytes(&self) -> u64 {
        self.transfers.iter().map(|t| t.bytes).sum()
    }

    /// Aggregate goodput, MB/s: verified bytes (partial transfers included) over the
    /// time until the last client ended. A run cut by the time limit still shows what
    /// the server delivered; a client that gave up after its retries adds its wait.
    pub fn mb_per_s(&self) -> f64 {
        let s = self.all_done.as_secs_f64();
        if s > 0.0 {
            self.bytes() as f64 / 1e6 / s
        } else {
            0.0
        }
    }

    /// Server CPU seconds per GB served, counting every byte a client verified
    /// (partial transfers included: the server did that work).
    pub fn server_cpu_per_gb(&self) -> Option<f64> {
        let bytes = self.bytes();
        (bytes > 0).then(|| self.server_cpu.as_secs_f64() / (bytes as f64 / 1e9))
    }

    /// The `q` quantile (0..=1) of successful transfer times, nearest-rank.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let mut v: Vec<Duration> = self.ok().map(|t| t.elapsed).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }

    /// Window sizes in use, as `16`, `1` or `1-16`.
    pub fn windows(&self) -> String {
        range_label(self.transfers.iter().map(|t| t.windowsize))
    }

    /// Block sizes in use.
    pub fn blksizes(&self) -> String {
        range_label(self.transfers.iter().map(|t| t.blksize))
    }

    /// Distinct failure reasons with counts, most frequent first.
    pub fn failure_reasons(&self) -> Vec<(String, usize)> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for t in &self.transfers {
            if let Err(e) = &t.outcome {
                *m.entry(e.clone()).or_default() += 1;
            }
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// Sum of client-side counters.
    pub fn client_counters(&self) -> (u64, u64, u64) {
        self.transfers.iter().fold((0, 0, 0), |acc, t| {
            (
                acc.0 + t.stats.duplicates,
                acc.1 + t.stats.out_of_order,
                acc.2 + t.stats.timeouts,
            )
        })
    }
}

fn range_label(it: impl Iterator<Item = Option<u16>>) -> String {
    let it = it.flatten();
    let (lo, hi) = it.fold((u16::MAX, 0), |(lo, hi), w| (lo.min(w), hi.max(w)));
    match (lo, hi) {
        (u16::MAX, 0) => "-".into(),
        (l, h) if l == h => l.to_string(),
        (l, h) => format!("{l}-{h}"),
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64()))
}

/// The main table: one row per (scenario, server).
pub fn table(results: &[RunResult]) -> String {
    let mut s = String::new();
    let row = |c: [&str; 13]| {
        format!(
            "{:<20} {:<10} {:>4} {:>3} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>5} {:>7} {:>5}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12]
        )
    };
    s += &row([
        "scenario", "server", "blk", "ws", "MB/s", "p50", "p99", "fail", "srv CPU", "cli CPU",
        "gen", "srv RSS", "noise",
    ]);
    s += &row([
        "", "", "", "", "", "s", "s", "", "s/GB", "s", "busy", "MiB", "CPU",
    ]);
    let mut last = None;
    for r in results {
        if last.is_some() && last != Some(r.scenario) {
            s.push('\n');
        }
        last = Some(r.scenario);
        let busy = r.client_cpu.as_secs_f64() / r.all_done.as_secs_f64().max(1e-9);
        s += &row([
            &r.scenario.label(),
            r.server.name(),
            &r.blksizes(),
            &r.windows(),
            &format!("{:.1}", r.mb_per_s()),
            &secs(r.quantile(0.5)),
            &secs(r.quantile(0.99)),
            &format!("{}/{}", r.failures(), r.transfers.len()),
            &r.server_cpu_per_gb()
                .map_or("-".into(), |v| format!("{v:.2}")),
            &format!("{:.2}", r.client_cpu.as_secs_f64()),
            &format!("{:.0}%", busy * 100.0),
            &r.peak_rss
                .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
            &format!("{:.0}%", 100.0 * r.noise()),
        ]);
    }
    s
}

/// Noise above which a comparison is flagged: a quarter of a core.
const NOISY: f64 = 0.25;

/// Per scenario: Baton against the best peer, in MB/s (higher is better, ratio > 1
/// means Baton is faster) and server CPU s/GB (lower is better, ratio < 1 means Baton
/// is cheaper). Peers with failed transfers are left out of "best".
pub fn ratios(results: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:>9} {:>22} {:>7}   {:>9} {:>22} {:>7}",
        "scenario", "baton", "best peer MB/s", "ratio", "baton", "best peer CPU s/GB", "ratio"
    );
    let mut scenarios: Vec<Scenario> = Vec::new();
    for r in results {
        if !scenarios.contains(&r.scenario) {
            scenarios.push(r.scenario);
        }
    }
    for sc in scenarios {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.scenario == sc).collect();
        let baton = runs.iter().find(|r| r.server == Kind::Baton);
        let peers: Vec<&&RunResult> = runs
            .iter()
            .filter(|r| r.server != Kind::Baton && r.failures() == 0)
            .collect();
        let best_tp = peers
            .iter()
            .max_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()));
        let best_cpu = peers
            .iter()
            .filter_map(|r| r.server_cpu_per_gb().map(|c| (r, c)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let (b_tp, b_cpu) = match baton {
            Some(b) => (
                format!("{:.1}", b.mb_per_s()),
                b.server_cpu_per_gb()
                    .map_or("-".into(), |v| format!("{v:.2}")),
            ),
            None => ("-".into(), "-".into()),
        };
        let tp_peer = best_tp.map_or("-".into(), |p| {
            format!("{} {:.1}", p.server.name(), p.mb_per_s())
        });
        let cpu_peer = best_cpu.map_or("-".into(), |(p, c)| format!("{} {c:.2}", p.server.name()));
        let tp_ratio = match (baton, best_tp) {
            (Some(b), Some(p)) if p.mb_per_s() > 0.0 => {
                format!("{:.2}", b.mb_per_s() / p.mb_per_s())
            }
            _ => "-".into(),
        };
        let cpu_ratio = match (baton.and_then(|b| b.server_cpu_per_gb()), best_cpu) {
            (Some(b), Some((_, p))) if p > 0.0 => format!("{:.2}", b / p),
            _ => "-".into(),
        };
        let mut fail = baton.map_or(String::new(), |b| {
            if b.failures() > 0 {
                format!("  (baton: {} failed)", b.failures())
            } else {
                String::new()
            }
        });
        let noisy = baton
            .into_iter()
            .chain(best_tp.copied())
            .chain(best_cpu.map(|(r, _)| *r))
            .any(|r| r.noise() > NOISY);
        if noisy {
            fail += "  (noisy: other processes used CPU during a compared run)";
        }
        let _ = writeln!(
            s,
            "{:<22} {:>9} {:>22} {:>7}   {:>9} {:>22} {:>7}{fail}",
            sc.label(),
            b_tp,
            tp_peer,
            tp_ratio,
            b_cpu,
            cpu_peer,
            cpu_ratio
        );
    }
    s
}

/// Failure reasons, client-side counters and server notes worth a look.
pub fn details(results: &[RunResult]) -> String {
    let mut s = String::new();
    for r in results {
        let (dups, ooo, timeouts) = r.client_counters();
        let reasons = r.failure_reasons();
        if r.cpu_method != "cgroup cpuacct" {
            let _ = writeln!(
                s,
                "{} / {}: server CPU from {} (children that exited unreaped are missed)",
                r.scenario.label(),
                r.server.name(),
                r.cpu_method
            );
        }
        if reasons.is_empty() && dups + ooo + timeouts == 0 && r.server_note.is_none() {
            continue;
        }
        let _ = writeln!(
            s,
            "{} / {}: client saw {dups} duplicate DATA, {ooo} out-of-order DATA, {timeouts} timeouts",
            r.scenario.label(),
            r.server.name()
        );
        if let Some(n) = &r.server_note {
            let _ = writeln!(s, "    server: {n}");
        }
        for (why, n) in reasons.iter().take(5) {
            let _ = writeln!(s, "    {n} x {why}");
        }
    }
    s
}

/// What the columns of [`table`] mean.
pub fn legend() -> &'static str {
    "\
MB/s     verified bytes (partial transfers included) / time until the last client ended
p50/p99  transfer time (request to final ACK) of successful transfers
fail     failed/total transfers (verification error, server ERROR, retries exhausted, limit)
srv CPU  server process-tree CPU (user+sys) per GB delivered
cli CPU  load generator CPU (user+sys); gen busy = that / run time: near 100% means the
         figures are bounded by the load generator, not by the server
srv RSS  peak RSS: VmHWM of the server process, or for forking servers the highest
         sampled sum of VmRSS over its process tree (shared pages counted per process)
noise    CPU used by other processes on the machine during the run, % of one core
ws/blk   window and block size in use (negotiated; ws 1 = server ignored windowsize)
"
}
