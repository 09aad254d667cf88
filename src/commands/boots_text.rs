//! Boot timelines as text, for `baton node boots` and `baton node show`.

use crate::api::boots::{BootSummary, NodeBoots};
use crate::clock::Millis;

use crate::boots::health::Health;
use crate::boots::timeline::{Attempt, Step};

/// `2024-05-01 12:34:56.789Z` for a wall-clock time.
pub fn utc(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A duration in milliseconds, short: `850 ms`, `12.3 s`, `4 min 10 s`.
pub fn span(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000)
    }
}

/// How an attempt stands, in words.
pub fn health(h: &Health, ttb: Option<u64>) -> String {
    match h {
        Health::Booted => format!(
            "booted: files delivered{}",
            ttb.map(|t| format!(" in {}", span(t))).unwrap_or_default()
        ),
        Health::Done => format!(
            "done: the OS reported{}",
            ttb.map(|t| format!(" {} after the first request", span(t)))
                .unwrap_or_default()
        ),
        Health::InProgress => "in progress".into(),
        Health::Interrupted => "interrupted: a new attempt began".into(),
        Health::Stuck(s) => format!(
            "STUCK ({}) since {}: {}",
            s.kind.as_str(),
            utc(s.since),
            s.reason
        ),
    }
}

fn step_row(a: &Attempt, s: &Step) -> Vec<String> {
    let r = &s.record;
    let status = if s.count > 1 {
        format!("{} x{}", r.status.as_str(), s.count)
    } else {
        r.status.as_str().to_string()
    };
    let mut note: Vec<String> = Vec::new();
    if let Some(x) = &r.reason {
        note.push(x.clone());
    }
    if let Some(f) = r.firmware {
        note.push(f.as_str().to_string());
    }
    if let Some(d) = &r.detail {
        note.push(d.clone());
    }
    if let Some(c) = &r.client {
        note.push(format!("from {c}"));
    }
    vec![
        format!("+{}", span(s.first.saturating_sub(a.started).max(0) as u64)),
        r.host.clone(),
        r.stage.as_str().to_string(),
        status,
        r.proto.as_str().to_string(),
        r.path.clone().unwrap_or_else(|| "-".into()),
        r.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
        r.duration_ms.map(span).unwrap_or_else(|| "-".into()),
        note.join(", "),
    ]
}

/// A node's timeline as `baton node boots` prints it.
pub fn node_boots(b: &NodeBoots) -> String {
    let mut out = String::new();
    let asked: Vec<String> = b
        .hosts
        .iter()
        .map(|h| match &h.error {
            None => format!("{} ({} records)", h.host, h.records),
            Some(e) => format!("{} (UNREACHABLE: {e})", h.host),
        })
        .collect();
    out.push_str(&format!(
        "node {}: {} attempt(s); hosts asked: {}\n",
        b.node,
        b.attempts.len(),
        asked.join(", ")
    ));
    if b.attempts.is_empty() {
        out.push_str("no boot recorded on any host that answered\n");
    }
    for (i, a) in b.attempts.iter().enumerate() {
        out.push_str(&format!(
            "\nattempt {} started {} on {}: {}\n",
            i + 1,
            utc(a.started),
            a.hosts.join(", "),
            health(&a.health, a.time_to_boot_ms)
        ));
        let rows: Vec<Vec<String>> = a.steps.iter().map(|s| step_row(a, s)).collect();
        out.push_str(&indent(&crate::client::table(
            &[
                "AT", "HOST", "STAGE", "STATUS", "PROTO", "FILE", "BYTES", "TOOK", "NOTE",
            ],
            &rows,
        )));
        if a.steps_dropped > 0 {
            out.push_str(&format!("  ... and {} more steps\n", a.steps_dropped));
        }
    }
    if !b.transfers.is_empty() {
        out.push_str("\ntransfers in progress:\n");
        for t in &b.transfers {
            out.push_str(&format!(
                "  {} {} {} to {} ({} bytes{}) since {}\n",
                t.host,
                t.proto.as_str(),
                t.path,
                t.client,
                t.size,
                t.sent.map(|s| format!(", {s} sent")).unwrap_or_default(),
                utc(t.started)
            ));
        }
    }
    out
}

/// The lines `baton node show` adds for the newest boot.
pub fn summary_lines(s: &BootSummary) -> String {
    let mut out = format!(
        "{:<16} started {}: {}\n",
        "last boot",
        utc(s.started),
        health(&s.health, s.time_to_boot_ms)
    );
    if let Some(r) = &s.last {
        out.push_str(&format!(
            "{:<16} {} {} on {} at {}{}\n",
            "  last stage",
            r.stage.as_str(),
            r.status.as_str(),
            r.host,
            utc(r.at),
            r.path
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        ));
    }
    if let Health::Stuck(st) = &s.health {
        out.push_str(&format!(
            "{:<16} {} since {}: {}\n",
            "boot stuck",
            st.kind.as_str(),
            utc(st.since),
            st.reason
        ));
    }
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000Z");
        assert_eq!(utc(1_714_566_896_789), "2024-05-01 12:34:56.789Z");
    }

    #[test]
    fn spans() {
        assert_eq!(span(850), "850 ms");
        assert_eq!(span(12_345), "12.3 s");
        assert_eq!(span(250_000), "4 min 10 s");
    }
}
