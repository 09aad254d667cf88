//! Boot metrics, per group (never per node, so the number of series stays bounded by
//! groups x stages x statuses): stages seen, time to boot, stuck nodes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::metrics::Counter;

/// Upper bounds (seconds) of the time-to-boot histogram: from the first DHCP answer to
/// the files delivered (seconds to minutes), or to the OS's report (up to an hour).
pub const BOOT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Groups tracked at most; beyond, a group's series go under `other` (groups come
/// from operators, but a bound costs nothing).
pub const MAX_GROUPS: usize = 64;

#[derive(Debug, Default, Clone)]
struct Hist {
    buckets: [u64; BOOT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    /// (group, stage, status) -> count.
    stages: BTreeMap<(String, &'static str, &'static str), u64>,
    /// (group, until) -> histogram.
    boot: BTreeMap<(String, &'static str), Hist>,
    /// group -> stuck nodes owned here.
    stuck: BTreeMap<String, i64>,
    /// (group, kind) -> transitions to stuck.
    stuck_total: BTreeMap<(String, &'static str), u64>,
    groups: std::collections::BTreeSet<String>,
}

/// The boot metrics of this host.
#[derive(Debug, Default)]
pub struct BootMetrics {
    inner: Mutex<Inner>,
    /// Records written to the local boot record file.
    pub written: Counter,
    /// Records dropped because the writer fell behind (a full queue).
    pub dropped: Counter,
    /// File requests no node could be tied to (a shared file asked for by an address
    /// no PXE exchange showed).
    pub unattributed: Counter,
}

impl Inner {
    fn group(&mut self, g: &str) -> String {
        if self.groups.contains(g) {
            return g.to_string();
        }
        if self.groups.len() < MAX_GROUPS {
            self.groups.insert(g.to_string());
            return g.to_string();
        }
        "other".to_string()
    }
}

impl BootMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one record.
    pub fn stage(&self, group: &str, stage: &'static str, status: &'static str) {
        let mut m = self.lock();
        let g = m.group(group);
        *m.stages.entry((g, stage, status)).or_default() += 1;
    }

    /// Records a time to boot: `until` is `files` (kernel and ramdisk delivered) or
    /// `done` (the OS reported).
    pub fn boot_time(&self, group: &str, until: &'static str, d: Duration) {
        let mut m = self.lock();
        let g = m.group(group);
        let h = m.boot.entry((g, until)).or_default();
        let s = d.as_secs_f64();
        for (i, b) in BOOT_BUCKETS.iter().enumerate() {
            if s <= *b {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    /// Sets the stuck nodes owned here, per group (groups absent are zero).
    pub fn set_stuck(&self, per_group: &BTreeMap<String, i64>) {
        let mut m = self.lock();
        let mut next = BTreeMap::new();
        for (g, n) in per_group {
            let g = m.group(g);
            *next.entry(g).or_insert(0) += n;
        }
        for v in m.stuck.values_mut() {
            *v = 0;
        }
        for (g, n) in next {
            m.stuck.insert(g, n);
        }
    }

    /// Counts a node becoming stuck.
    pub fn stuck_transition(&self, group: &str, kind: &'static str) {
        let mut m = self.lock();
        let g = m.group(group);
        *m.stuck_total.entry((g, kind)).or_default() += 1;
    }

    /// Value of the stage counter (tests).
    pub fn stage_count(&self, group: &str, stage: &str, status: &str) -> u64 {
        self.lock()
            .stages
            .iter()
            .filter(|((g, s, st), _)| g == group && *s == stage && *st == status)
            .map(|(_, v)| *v)
            .sum()
    }

    /// Appends the Prometheus text of these metrics to `out`.
    pub fn render(&self, out: &mut String) {
        let m = self.lock();
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "# HELP baton_boot_stages_total Boot stages seen by this host, by node group, stage and status.\n# TYPE baton_boot_stages_total counter"
        );
        for ((g, stage, status), v) in &m.stages {
            let _ = writeln!(
                out,
                "baton_boot_stages_total{{group=\"{}\",stage=\"{stage}\",status=\"{status}\"}} {v}",
                esc(g)
            );
        }
        let _ = writeln!(
            out,
            "# HELP baton_boot_seconds Time to boot, from the first DHCP answer to the files delivered (until=\"files\") or to the OS's report (until=\"done\").\n# TYPE baton_boot_seconds histogram"
        );
        for ((g, until), h) in &m.boot {
            let l = format!("group=\"{}\",until=\"{until}\"", esc(g));
            for (i, b) in BOOT_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "baton_boot_seconds_bucket{{{l},le=\"{b}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "baton_boot_seconds_bucket{{{l},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "baton_boot_seconds_sum{{{l}}} {}", h.sum);
            let _ = writeln!(out, "baton_boot_seconds_count{{{l}}} {}", h.count);
        }
        let _ = writeln!(
            out,
            "# HELP baton_boot_stuck_nodes Nodes owned by this host whose boot is stuck (stalled, or asking DHCP without fetching), by group.\n# TYPE baton_boot_stuck_nodes gauge"
        );
        for (g, v) in &m.stuck {
            let _ = writeln!(out, "baton_boot_stuck_nodes{{group=\"{}\"}} {v}", esc(g));
        }
        let _ = writeln!(
            out,
            "# HELP baton_boot_stuck_total Times a node's boot became stuck, by group and kind.\n# TYPE baton_boot_stuck_total counter"
        );
        for ((g, kind), v) in &m.stuck_total {
            let _ = writeln!(
                out,
                "baton_boot_stuck_total{{group=\"{}\",kind=\"{kind}\"}} {v}",
                esc(g)
            );
        }
        for (name, help, c) in [
            (
                "baton_boot_records_written_total",
                "Boot records written to this host's boot record file.",
                &self.written,
            ),
            (
                "baton_boot_records_dropped_total",
                "Boot records dropped because the writer fell behind.",
                &self.dropped,
            ),
            (
                "baton_boot_unattributed_total",
                "File requests no node could be tied to.",
                &self.unattributed,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string under `key` in `v`, recursively.
    fn strings_under<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if k == key {
                        if let Some(s) = x.as_str() {
                            out.push(s);
                        }
                    }
                    strings_under(x, key, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings_under(x, key, out)),
            _ => {}
        }
    }

    #[test]
    fn the_grafana_dashboard_uses_only_metrics_baton_exports() {
        let text = include_str!("../../packaging/grafana-dashboard.json");
        let dash: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        // What `/metrics` serves: the process metrics and the boot metrics.
        let mut body = crate::metrics::Metrics::default().render();
        BootMetrics::default().render(&mut body);
        let mut exported = std::collections::BTreeSet::new();
        for l in body.lines() {
            let Some(rest) = l.strip_prefix("# TYPE ") else {
                continue;
            };
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            exported.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
        let names = regex::Regex::new(r"\bbaton_[a-z0-9_]+").unwrap();
        let mut exprs = Vec::new();
        strings_under(&dash, "expr", &mut exprs);
        strings_under(&dash, "definition", &mut exprs);
        assert!(
            exprs.len() >= 10,
            "the dashboard has {} queries",
            exprs.len()
        );
        let mut used = std::collections::BTreeSet::new();
        for e in &exprs {
            let found: Vec<&str> = names.find_iter(e).map(|m| m.as_str()).collect();
            assert!(!found.is_empty(), "query names no Baton metric: {e}");
            for n in found {
                assert!(
                    exported.contains(n),
                    "the dashboard queries {n}, which Baton does not export ({e})"
                );
                used.insert(n);
            }
        }
        // The boot metrics of issue 17 are all on it.
        for m in [
            "baton_boot_stages_total",
            "baton_boot_seconds_bucket",
            "baton_boot_stuck_nodes",
            "baton_boot_stuck_total",
        ] {
            assert!(used.contains(m), "the dashboard does not show {m}");
        }
        let panels = dash["panels"].as_array().expect("panels");
        let mut ids = std::collections::BTreeSet::new();
        for p in panels {
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "duplicate panel id"
            );
            assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
            assert!(p["gridPos"]["w"].as_u64().is_some());
        }
    }

    #[test]
    fn renders_bounded_series() {
        let m = BootMetrics::default();
        m.stage("rack1", "kernel", "ok");
        m.stage("rack1", "kernel", "ok");
        m.boot_time("rack1", "files", Duration::from_secs(7));
        m.set_stuck(&BTreeMap::from([("rack1".to_string(), 2)]));
        m.stuck_transition("rack1", "stalled");
        let mut s = String::new();
        m.render(&mut s);
        assert!(s.contains(
            "baton_boot_stages_total{group=\"rack1\",stage=\"kernel\",status=\"ok\"} 2\n"
        ));
        assert!(
            s.contains("baton_boot_seconds_bucket{group=\"rack1\",until=\"files\",le=\"5\"} 0\n")
        );
        assert!(
            s.contains("baton_boot_seconds_bucket{group=\"rack1\",until=\"files\",le=\"10\"} 1\n")
        );
        assert!(s.contains("baton_boot_stuck_nodes{group=\"rack1\"} 2\n"));
        assert!(s.contains("baton_boot_stuck_total{group=\"rack1\",kind=\"stalled\"} 1\n"));
        m.set_stuck(&BTreeMap::new());
        let mut s = String::new();
        m.render(&mut s);
        assert!(s.contains("baton_boot_stuck_nodes{group=\"rack1\"} 0\n"));
        for i in 0..(MAX_GROUPS + 10) {
            m.stage(&format!("g{i}"), "dhcp", "ok");
        }
        assert!(
            m.stage_count("other", "dhcp", "ok") >= 10,
            "groups are bounded"
        );
    }
}
