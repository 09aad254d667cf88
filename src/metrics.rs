//! Process metrics, rendered in the Prometheus text format.
//!
//! Hot-path counters are plain atomics; labelled counters (by reason) are bumped per
//! request, not per packet, so a small mutex-guarded map is enough.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `n` (may be negative).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters keyed by one label value (e.g. a reason).
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    /// Adds one under `label`.
    pub fn inc(&self, label: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(label.to_string()).or_default() += 1;
    }
    /// Value under `label`.
    pub fn get(&self, label: &str) -> u64 {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(label).copied().unwrap_or(0)
    }
    fn snapshot(&self) -> Vec<(String, u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Upper bounds (seconds) of the transfer duration histogram.
const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// All TFTP metrics.
#[derive(Debug, Default)]
pub struct TftpMetrics {
    /// Read requests received.
    pub requests: Counter,
    /// Requests refused, by reason.
    pub refused: LabeledCounter,
    /// Datagrams that were not valid TFTP, by reason.
    pub bad_packets: LabeledCounter,
    /// Request names repaired before lookup, by kind (`trailing_byte`, `remapped`).
    pub name_fixups: LabeledCounter,
    /// Options ignored, by reason.
    pub options_ignored: LabeledCounter,
    /// Packets from a wrong transfer ID (answered with ERROR 5).
    pub unknown_tid: Counter,
    /// Transfers started.
    pub started: Counter,
    /// Transfers completed.
    pub completed: Counter,
    /// Size probes (client aborted after the OACK, by design).
    pub size_probes: Counter,
    /// Failed transfers, by reason.
    pub failed: LabeledCounter,
    /// Transfers in progress.
    pub active: Gauge,
    /// File bytes acknowledged by clients.
    pub bytes: Counter,
    /// DATA packets sent.
    pub data_packets: Counter,
    /// DATA packets retransmitted.
    pub retransmits: Counter,
    /// Duration of completed transfers.
    pub duration: Histogram,
    /// Times a concurrency limit was hit.
    pub limit_hits: LabeledCounter,
    /// Transfers ended to make room for a client below its fair share.
    pub evicted: Counter,
    /// Replies and log lines dropped by a per-source rate limit, by what
    /// (`error_reply`, `log`).
    pub suppressed: LabeledCounter,
}

/// Store metrics.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Commands proposed.
    pub commands: Counter,
    /// Commands rejected (business outcome, not an error).
    pub rejected: Counter,
    /// Write attempts sent again (same request id) after one whose result is unknown.
    pub retries: Counter,
}

/// HTTP metrics (API and HTTP boot).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// API requests, by method and route.
    pub requests: LabeledCounter,
    /// Refused requests, by error code.
    pub errors: LabeledCounter,
    /// HTTP boot downloads started.
    pub boot_started: Counter,
    /// HTTP boot responses sent in full.
    pub boot_completed: Counter,
    /// HTTP boot downloads that ended early, by reason.
    pub boot_failed: LabeledCounter,
    /// HTTP boot body bytes sent.
    pub boot_bytes: Counter,
    /// HTTP boot downloads in progress.
    pub boot_active: Gauge,
    /// Duration of completed HTTP boot downloads.
    pub boot_duration: Histogram,
    /// Connections open.
    pub connections: Gauge,
    /// Connections refused at accept, by limit (`per_client`, `total`).
    pub connections_refused: LabeledCounter,
    /// Connections closed by the server, by reason (`header_timeout`, `idle_timeout`,
    /// `evicted`).
    pub connections_closed: LabeledCounter,
    /// Log lines dropped by a per-source rate limit.
    pub suppressed_logs: Counter,
}

/// Proxy-DHCP metrics.
#[derive(Debug, Default)]
pub struct DhcpMetrics {
    /// Requests decoded, by DHCP message type.
    pub requests: LabeledCounter,
    /// Answers sent, by message type.
    pub answered: LabeledCounter,
    /// Requests not answered, by reason.
    pub ignored: LabeledCounter,
    /// Datagrams that are not DHCP boot requests, by reason.
    pub bad_packets: LabeledCounter,
    /// Log lines dropped by a per-MAC rate limit.
    pub suppressed_logs: Counter,
}

/// Ownership metrics.
#[derive(Debug, Default)]
pub struct OwnershipMetrics {
    /// 1 while this host's lease is fresh.
    pub lease_fresh: Gauge,
    /// Times this host's lease ran out (counted the moment it did).
    pub lease_lapses: Counter,
    /// Ownership changes proposed by this host's reconciler, by reason.
    pub transfers: LabeledCounter,
    /// Nodes no live host can take over (as of the last reconcile on the leader).
    pub stuck_nodes: Gauge,
    /// Migrations rolled back.
    pub aborted_migrations: Counter,
    /// Reconciler rounds run by this host (as leader).
    pub reconcile_runs: Counter,
    /// Migrations in progress (as of the last reconcile on the leader).
    pub migrations_in_flight: Gauge,
    /// 1 while a rebalance is active (as of the last reconcile on the leader).
    pub rebalancing: Gauge,
}

/// Every metric of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Ownership.
    pub ownership: OwnershipMetrics,
    /// Proxy-DHCP.
    pub dhcp: DhcpMetrics,
    /// TFTP.
    pub tftp: TftpMetrics,
    /// Store.
    pub store: StoreMetrics,
    /// HTTP.
    pub http: HttpMetrics,
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (i, b) in DURATION_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{b}\"}} {}",
            h.buckets[i].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(
        out,
        "{name}_sum {}",
        h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count {}", h.count());
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn labeled(out: &mut String, name: &str, help: &str, label: &str, c: &LabeledCounter) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (k, v) in c.snapshot() {
        let k = k.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
    }
}

impl Metrics {
    /// Renders all metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let t = &self.tftp;
        let mut o = String::with_capacity(4096);
        counter(
            &mut o,
            "baton_tftp_requests_total",
            "TFTP read requests received.",
            t.requests.get(),
        );
        labeled(
            &mut o,
            "baton_tftp_refused_total",
            "TFTP requests refused.",
            "reason",
            &t.refused,
        );
        labeled(
            &mut o,
            "baton_tftp_bad_packets_total",
            "Datagrams that are not valid TFTP.",
            "reason",
            &t.bad_packets,
        );
        labeled(
            &mut o,
            "baton_tftp_name_fixups_total",
            "Request file names repaired before lookup (a trailing 0xFF dropped, the map file).",
            "kind",
            &t.name_fixups,
        );
        labeled(
            &mut o,
            "baton_tftp_options_ignored_total",
            "Request options not taken.",
            "reason",
            &t.options_ignored,
        );
        counter(
            &mut o,
            "baton_tftp_unknown_tid_total",
            "Packets from an unknown transfer ID.",
            t.unknown_tid.get(),
        );
        counter(
            &mut o,
            "baton_tftp_transfers_started_total",
            "TFTP transfers started.",
            t.started.get(),
        );
        counter(
            &mut o,
            "baton_tftp_transfers_completed_total",
            "TFTP transfers completed.",
            t.completed.get(),
        );
        counter(
            &mut o,
            "baton_tftp_size_probes_total",
            "Transfers aborted by the client after the OACK (size probes).",
            t.size_probes.get(),
        );
        labeled(
            &mut o,
            "baton_tftp_transfers_failed_total",
            "TFTP transfers failed.",
            "reason",
            &t.failed,
        );
        gauge(
            &mut o,
            "baton_tftp_active_transfers",
            "TFTP transfers in progress.",
            t.active.get(),
        );
        counter(
            &mut o,
            "baton_tftp_bytes_total",
            "File bytes acknowledged by TFTP clients.",
            t.bytes.get(),
        );
        counter(
            &mut o,
            "baton_tftp_data_packets_total",
            "TFTP DATA packets sent.",
            t.data_packets.get(),
        );
        counter(
            &mut o,
            "baton_tftp_retransmits_total",
            "TFTP DATA packets sent again.",
            t.retransmits.get(),
        );
        labeled(
            &mut o,
            "baton_tftp_limit_hits_total",
            "Requests refused by a concurrency limit.",
            "limit",
            &t.limit_hits,
        );
        counter(
            &mut o,
            "baton_tftp_evicted_total",
            "Transfers not acknowledged yet, ended to make room for a client below its fair share.",
            t.evicted.get(),
        );
        labeled(
            &mut o,
            "baton_tftp_suppressed_total",
            "ERROR replies and log lines dropped by a per-source rate limit.",
            "what",
            &t.suppressed,
        );
        histogram(
            &mut o,
            "baton_tftp_transfer_seconds",
            "Duration of completed TFTP transfers.",
            &t.duration,
        );
        let d = &self.dhcp;
        labeled(
            &mut o,
            "baton_dhcp_requests_total",
            "DHCP requests decoded.",
            "type",
            &d.requests,
        );
        labeled(
            &mut o,
            "baton_dhcp_answered_total",
            "Proxy-DHCP answers sent.",
            "type",
            &d.answered,
        );
        labeled(
            &mut o,
            "baton_dhcp_ignored_total",
            "DHCP requests not answered.",
            "reason",
            &d.ignored,
        );
        labeled(
            &mut o,
            "baton_dhcp_bad_packets_total",
            "Datagrams that are not DHCP boot requests.",
            "reason",
            &d.bad_packets,
        );
        counter(
            &mut o,
            "baton_dhcp_suppressed_logs_total",
            "Log lines dropped by a per-MAC rate limit.",
            d.suppressed_logs.get(),
        );
        let ow = &self.ownership;
        gauge(
            &mut o,
            "baton_lease_fresh",
            "1 while this host's lease is fresh (it answers for its nodes).",
            ow.lease_fresh.get(),
        );
        counter(
            &mut o,
            "baton_lease_lapses_total",
            "Times this host's lease ran out before a renewal committed.",
            ow.lease_lapses.get(),
        );
        labeled(
            &mut o,
            "baton_ownership_transfers_total",
            "Ownership changes proposed by this host.",
            "reason",
            &ow.transfers,
        );
        gauge(
            &mut o,
            "baton_stuck_nodes",
            "Nodes that no live host can take over.",
            ow.stuck_nodes.get(),
        );
        counter(
            &mut o,
            "baton_migrations_aborted_total",
            "Migrations rolled back (target died).",
            ow.aborted_migrations.get(),
        );
        counter(
            &mut o,
            "baton_reconcile_runs_total",
            "Reconciler rounds run by this host while it led the cluster.",
            ow.reconcile_runs.get(),
        );
        gauge(
            &mut o,
            "baton_migrations_in_flight",
            "Migrations in progress (leader's view).",
            ow.migrations_in_flight.get(),
        );
        gauge(
            &mut o,
            "baton_rebalancing",
            "1 while a rebalance is active (leader's view).",
            ow.rebalancing.get(),
        );
        let st = &self.store;
        counter(
            &mut o,
            "baton_store_commands_total",
            "Store commands proposed.",
            st.commands.get(),
        );
        counter(
            &mut o,
            "baton_store_rejected_total",
            "Store commands rejected by business rules.",
            st.rejected.get(),
        );
        counter(
            &mut o,
            "baton_store_write_retries_total",
            "Write attempts sent again under the same request id after one whose result was unknown.",
            st.retries.get(),
        );
        let h = &self.http;
        labeled(
            &mut o,
            "baton_http_requests_total",
            "HTTP requests, by method (other for unknown ones) and route (unmatched for none).",
            "route",
            &h.requests,
        );
        labeled(
            &mut o,
            "baton_http_errors_total",
            "HTTP requests refused.",
            "code",
            &h.errors,
        );
        counter(
            &mut o,
            "baton_http_boot_started_total",
            "HTTP boot downloads started.",
            h.boot_started.get(),
        );
        counter(
            &mut o,
            "baton_http_boot_completed_total",
            "HTTP boot downloads completed.",
            h.boot_completed.get(),
        );
        labeled(
            &mut o,
            "baton_http_boot_failed_total",
            "HTTP boot downloads that ended early.",
            "reason",
            &h.boot_failed,
        );
        counter(
            &mut o,
            "baton_http_boot_bytes_total",
            "HTTP boot body bytes sent.",
            h.boot_bytes.get(),
        );
        gauge(
            &mut o,
            "baton_http_boot_active",
            "HTTP boot downloads in progress.",
            h.boot_active.get(),
        );
        histogram(
            &mut o,
            "baton_http_boot_seconds",
            "Duration of completed HTTP boot downloads.",
            &h.boot_duration,
        );
        gauge(
            &mut o,
            "baton_http_connections",
            "HTTP connections open.",
            h.connections.get(),
        );
        labeled(
            &mut o,
            "baton_http_connections_refused_total",
            "HTTP connections refused at accept, by limit.",
            "limit",
            &h.connections_refused,
        );
        labeled(
            &mut o,
            "baton_http_connections_closed_total",
            "HTTP connections closed by the server, by reason.",
            "reason",
            &h.connections_closed,
        );
        counter(
            &mut o,
            "baton_http_suppressed_logs_total",
            "Log lines dropped by a per-source rate limit.",
            h.suppressed_logs.get(),
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.tftp.requests.add(3);
        m.tftp.refused.inc("not_found");
        m.tftp.refused.inc("not_found");
        m.tftp.duration.observe(Duration::from_millis(3));
        let s = m.render();
        assert!(s.contains("baton_tftp_requests_total 3\n"));
        assert!(s.contains("baton_tftp_refused_total{reason=\"not_found\"} 2\n"));
        assert!(s.contains("baton_tftp_transfer_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(s.contains("baton_tftp_transfer_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(s.contains("baton_tftp_transfer_seconds_count 1\n"));
    }
}
