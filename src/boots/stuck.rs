//! Is a boot stuck? A pure function of an attempt, the time and whether a transfer of
//! the node is in progress: the detector that raises events, the metrics and `node
//! show` all ask [`assess`].
//!
//! Two shapes of stuck: a boot that started and then stalled (no record for
//! `stall_ms`, and no transfer running), and a node that keeps asking for DHCP without
//! fetching anything (`dhcp_loop_requests` requests over at least `dhcp_loop_ms`).

use super::health::{Health, Stuck, StuckKind};
use super::record::{BootRecord, Status};
use super::timeline::{attempts, merge, Attempt};
use crate::clock::Millis;

/// Thresholds of [`assess`] (`[boots]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Silence after which a boot that has not delivered its files is stalled.
    pub stall_ms: u64,
    /// DHCP requests without any file fetched that make a loop...
    pub dhcp_loop_requests: u32,
    /// ...when they span at least this long.
    pub dhcp_loop_ms: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            stall_ms: 120_000,
            dhcp_loop_requests: 4,
            dhcp_loop_ms: 30_000,
        }
    }
}

/// Where `a` stands at `now`; `active` when a transfer of the node is running.
pub fn assess(a: &Attempt, now: Millis, active: bool, rules: &Rules) -> Health {
    if a.done_at.is_some() {
        return Health::Done;
    }
    if a.files_delivered() {
        return Health::Booted;
    }
    if let Some(first) = a.first_dhcp {
        let span = now.saturating_sub(first);
        if a.reached_no_file()
            && a.dhcp_before_files >= rules.dhcp_loop_requests
            && span >= rules.dhcp_loop_ms as i64
        {
            return Health::Stuck(Stuck {
                kind: StuckKind::DhcpLoop,
                since: first,
                reason: loop_reason(a, span),
            });
        }
    }
    let quiet = now.saturating_sub(a.last);
    if !active && quiet >= rules.stall_ms as i64 {
        return Health::Stuck(Stuck {
            kind: StuckKind::Stalled,
            since: a.last,
            reason: stall_reason(a, quiet),
        });
    }
    Health::InProgress
}

/// The flag changes one detector pass makes: for each node with a live attempt,
/// stuck now but not flagged (`Some`), or flagged but no longer stuck (`None`). A node
/// stays flagged while it stays stuck, whichever way: one change per transition.
pub fn transitions<'a>(
    live: impl IntoIterator<Item = (&'a str, &'a Attempt)>,
    flagged: &std::collections::HashMap<String, Stuck>,
    now: Millis,
    transferring: impl Fn(&str) -> bool,
    rules: &Rules,
) -> Vec<(String, Option<Stuck>)> {
    let mut out = Vec::new();
    for (node, a) in live {
        let h = assess(a, now, transferring(node), rules);
        match (h.stuck(), flagged.contains_key(node)) {
            (Some(s), false) => out.push((node.to_string(), Some(s.clone()))),
            (None, true) => out.push((node.to_string(), None)),
            _ => {}
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl Attempt {
    /// No file was fetched (not even a size probe).
    fn reached_no_file(&self) -> bool {
        !self.steps.iter().any(|s| s.record.stage.is_file())
    }
}

fn loop_reason(a: &Attempt, span: Millis) -> String {
    let answered: u32 = a
        .steps
        .iter()
        .filter(|s| s.record.stage.is_dhcp() && s.record.status == Status::Ok)
        .map(|s| s.count)
        .sum();
    let mut s = format!(
        "asked for DHCP {} times in {} s ({answered} answered) without fetching any file",
        a.dhcp_before_files,
        span / 1000
    );
    if let Some(last) = a.steps.iter().rev().find(|s| s.record.stage.is_dhcp()) {
        let r = &last.record;
        if r.status == Status::Ok {
            s.push_str(&format!(
                "; last answer from {} named {} (is udp/69 or the boot server reachable from the node?)",
                r.host,
                r.path.as_deref().unwrap_or("no file")
            ));
        } else {
            s.push_str(&format!(
                "; not answered by {}: {}",
                r.host,
                r.reason.as_deref().unwrap_or(r.status.as_str())
            ));
        }
    }
    s
}

fn stall_reason(a: &Attempt, quiet: Millis) -> String {
    let mut s = format!("nothing for {} s", quiet / 1000);
    if let Some(last) = a.last_step() {
        let r = &last.record;
        s = format!(
            "stalled after {} {}{} on {}: {s}",
            r.stage.as_str(),
            r.status.as_str(),
            r.path
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default(),
            r.host
        );
    }
    if let Some(e) = a.last_error() {
        let r = &e.record;
        s.push_str(&format!(
            "; last error: {} {}{}{}",
            r.stage.as_str(),
            r.status.as_str(),
            r.reason
                .as_deref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default(),
            r.path
                .as_deref()
                .map(|p| format!(" {p}"))
                .unwrap_or_default()
        ));
    }
    s
}

/// The attempts of one node from records of every host, each with its health as of
/// `now` (an earlier attempt as of the start of the next); `active` when a transfer of
/// the node is in progress somewhere. The newest `limit` attempts, oldest first.
pub fn timeline(
    records: Vec<BootRecord>,
    now: Millis,
    active: bool,
    rules: &Rules,
    limit: usize,
) -> Vec<Attempt> {
    let mut all = attempts(&merge(records));
    let n = all.len();
    let next_starts: Vec<Option<Millis>> =
        (0..n).map(|i| all.get(i + 1).map(|a| a.started)).collect();
    for (a, next) in all.iter_mut().zip(next_starts) {
        a.health = match next {
            Some(t) => assess(a, t, false, rules).ended(),
            None => assess(a, now, active, rules),
        };
    }
    let skip = n.saturating_sub(limit.max(1));
    all.into_iter().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boots::record::Proto;
    use crate::boots::record::Stage;
    use crate::boots::timeline::tests::{full_boot, rec};

    const R: Rules = Rules {
        stall_ms: 120_000,
        dhcp_loop_requests: 4,
        dhcp_loop_ms: 30_000,
    };

    #[test]
    fn a_boot_that_stalls_is_stuck_unless_a_transfer_runs() {
        let r = vec![
            rec(0, "h1", Stage::Dhcp, Status::Ok),
            rec(1, "h1", Stage::Loader, Status::Ok),
            rec(2, "h1", Stage::Config, Status::Ok),
            rec(3, "h1", Stage::Kernel, Status::NotFound),
        ];
        let a = &attempts(&r)[0];
        assert_eq!(assess(a, 60_000, false, &R), Health::InProgress);
        let h = assess(a, 124_000, false, &R);
        let s = h.stuck().expect("stalled");
        assert_eq!(s.kind, StuckKind::Stalled);
        assert_eq!(s.since, 3_000);
        assert!(
            s.reason.contains("kernel not_found"),
            "reason names the error: {}",
            s.reason
        );
        assert_eq!(
            assess(a, 124_000, true, &R),
            Health::InProgress,
            "a long ramdisk transfer is not a stall"
        );
    }

    #[test]
    fn dhcp_without_fetching_is_a_loop() {
        let r: Vec<_> = [0, 4, 12, 28]
            .iter()
            .map(|t| rec(*t, "h1", Stage::Dhcp, Status::Ok))
            .collect();
        let a = &attempts(&r)[0];
        assert_eq!(assess(a, 29_000, false, &R), Health::InProgress, "too soon");
        let h = assess(a, 31_000, false, &R);
        assert_eq!(h.stuck().map(|s| s.kind), Some(StuckKind::DhcpLoop));
        assert!(h.stuck().unwrap().reason.contains("4 times"));
        // Three requests are a slow address server, not a loop.
        let a = &attempts(&r[..3])[0];
        assert_eq!(assess(a, 31_000, false, &R), Health::InProgress);
        // Requests this host ignored count too, and the reason says why.
        let mut r = r.clone();
        for x in &mut r {
            x.status = Status::Ignored;
            x.reason = Some("no_profile".into());
        }
        let a = &attempts(&r)[0];
        let h = assess(a, 31_000, false, &R);
        assert!(h.stuck().unwrap().reason.contains("no_profile"), "{h:?}");
    }

    #[test]
    fn delivered_and_reported_boots_are_never_stuck() {
        let r = vec![
            rec(0, "h1", Stage::Dhcp, Status::Ok),
            rec(1, "h1", Stage::Loader, Status::Ok),
            rec(2, "h1", Stage::Config, Status::Ok),
            rec(3, "h1", Stage::Kernel, Status::Ok),
            rec(4, "h1", Stage::Ramdisk, Status::Ok),
        ];
        let a = &attempts(&r)[0];
        assert_eq!(assess(a, 10_000_000, false, &R), Health::Booted);
        let mut r = r;
        r.push(rec(50, "h1", Stage::Done, Status::Ok));
        assert_eq!(
            assess(&attempts(&r)[0], 10_000_000, false, &R),
            Health::Done
        );
    }

    #[test]
    fn one_transition_each_way() {
        let looping: Vec<_> = [0, 4, 12, 28]
            .iter()
            .map(|t| rec(*t, "h1", Stage::Dhcp, Status::Ok))
            .collect();
        let a = attempts(&looping).remove(0);
        let mut flagged = std::collections::HashMap::new();
        let t = transitions([("n1", &a)], &flagged, 40_000, |_| false, &R);
        assert_eq!(t.len(), 1);
        let s = t[0].1.clone().expect("raised");
        flagged.insert("n1".to_string(), s);
        // Still stuck (later, stalled too): no second change.
        assert!(transitions([("n1", &a)], &flagged, 400_000, |_| false, &R).is_empty());
        // It fetches a file: cleared once.
        let mut more = looping.clone();
        more.push(rec(50, "h1", Stage::Loader, Status::Ok));
        let b = attempts(&more).remove(0);
        let t = transitions([("n1", &b)], &flagged, 51_000, |_| false, &R);
        assert_eq!(t, vec![("n1".to_string(), None)]);
    }

    #[test]
    fn health_labels() {
        assert_eq!(Health::InProgress.ended(), Health::Interrupted);
        assert_eq!(Health::Booted.ended(), Health::Booted);
        let j = serde_json::to_value(Health::Stuck(Stuck {
            kind: StuckKind::DhcpLoop,
            since: 1,
            reason: "x".into(),
        }))
        .unwrap();
        assert_eq!(j["state"], "stuck");
        assert_eq!(j["kind"], "dhcp_loop");
    }

    #[test]
    fn a_takeover_mid_boot_shows_both_hosts_in_one_attempt() {
        let mut r = vec![
            rec(0, "h1", Stage::Dhcp, Status::Ok),
            rec(1, "h1", Stage::Loader, Status::Ok),
            rec(2, "h1", Stage::Config, Status::Ok),
        ];
        // h1 dies; the firmware retries its kernel from the host it knows, then the
        // ROM times out and boots again, now answered by h2.
        r.push(rec(30, "h2", Stage::Dhcp, Status::Ok));
        r.push(rec(31, "h2", Stage::Loader, Status::Ok));
        r.push(rec(32, "h2", Stage::Config, Status::Ok));
        r.push(rec(33, "h2", Stage::Kernel, Status::Ok));
        r.push(rec(34, "h2", Stage::Ramdisk, Status::Ok));
        // Records arrive per host: merge sorts them.
        let (h1, h2): (Vec<_>, Vec<_>) = r.into_iter().partition(|x| x.host == "h1");
        let merged = merge([h2, h1].concat());
        assert!(merged.windows(2).all(|w| w[0].at <= w[1].at));
        let t = timeline(merged, 40_000, false, &Rules::default(), 10);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].hosts, vec!["h1"]);
        assert_eq!(t[1].hosts, vec!["h2"]);
        assert_eq!(t[1].health, Health::Booted);
        assert_eq!(t[0].health, Health::Interrupted);
        // An attempt finished by the old owner after a migration has both hosts.
        let r = vec![
            rec(0, "h1", Stage::Dhcp, Status::Ok),
            rec(1, "h1", Stage::Loader, Status::Ok),
            rec(2, "h2", Stage::Config, Status::Ok),
        ];
        assert_eq!(attempts(&r)[0].hosts, vec!["h1", "h2"]);
    }

    #[test]
    fn the_os_report_closes_the_latest_attempt_even_much_later() {
        let mut r = full_boot(0, "h1");
        let mut done = rec(3600, "h2", Stage::Done, Status::Ok);
        done.proto = Proto::Http;
        r.push(done);
        let t = timeline(r, 4_000_000, false, &Rules::default(), 5);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].done_at, Some(3_600_000));
        assert_eq!(t[0].time_to_boot_ms, Some(3_600_000));
        assert_eq!(t[0].health, Health::Done);
    }
    #[test]
    fn limit_keeps_the_newest_attempts() {
        let mut r = Vec::new();
        for i in 0..6 {
            r.extend(full_boot(i * 100, "h1"));
        }
        let t = timeline(r, 1_000_000, false, &Rules::default(), 3);
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].started, 500_000);
    }
}
