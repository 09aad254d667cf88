//! `baton doctor`: checks that this host can run `baton serve` with a configuration
//! (ports, capabilities, interfaces, firewall, boot loaders, data directory, cluster
//! peers) and says how to fix what is wrong.
//!
//! Each submodule holds pure checks over facts plus a thin `gather` that reads the
//! facts from the system, so the decisions are unit-tested on captured facts.

pub mod caps;
pub mod files;
pub mod firewall;
pub mod links;
pub mod peers;
pub mod ports;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but something deserves a look.
    Warn,
    /// `baton serve` will not work (or not for some clients) until fixed.
    Fail,
}

impl Status {
    /// `PASS`, `WARN`, `FAIL`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked (`port udp/69 (tftp)`).
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    /// A passing check.
    pub fn pass(name: String, detail: String) -> Finding {
        Finding {
            name,
            status: Status::Pass,
            detail,
            fix: None,
        }
    }
}

/// Settings of the doctor itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// Free space below this on the data directory's file system fails.
    pub min_free_bytes: u64,
    /// How long to wait for each cluster peer.
    pub peer_timeout: Duration,
}

/// The report as text: one line per check, a `fix:` line under each that is not a
/// pass, and a count.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s.push_str(&format!("{}  {}: {}\n", f.status.label(), f.name, f.detail));
        if let Some(fix) = &f.fix {
            if f.status != Status::Pass {
                s.push_str(&format!("      fix: {fix}\n"));
            }
        }
    }
    let n = |st: Status| findings.iter().filter(|f| f.status == st).count();
    s.push_str(&format!(
        "baton doctor: {} checks; {} fail, {} warn\n",
        findings.len(),
        n(Status::Fail),
        n(Status::Warn)
    ));
    s
}

/// Runs every check against this host for `cfg` (loaded from `source`).
pub fn run(cfg: &Config, source: &str, o: &Options) -> Vec<Finding> {
    let mut out = vec![Finding::pass("config".into(), source.to_string())];

    let wanted = ports::wanted(cfg);
    let sockets = ports::gather_sockets();
    let inodes: Vec<u64> = sockets
        .iter()
        .filter(|s| wanted.iter().any(|w| w.addr.port() == s.local.port()))
        .map(|s| s.inode)
        .collect();
    let owners = ports::gather_owners(&inodes);
    out.extend(ports::check(&wanted, &sockets, &owners, std::process::id()));

    let unprivileged = read_trim("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let kernel = caps::parse_kernel(&read_trim("/proc/sys/kernel/osrelease").unwrap_or_default());
    let needs = caps::needed(cfg, unprivileged, kernel);
    let unit = gather_unit();
    let unit_caps = unit
        .as_ref()
        .map(|(path, texts)| (path.as_str(), caps::parse_unit(texts)));
    let unit_finding = caps::check_unit(&needs, unit_caps.as_ref().map(|(p, u)| (*p, u)));
    let unit_ok = unit_finding
        .as_ref()
        .is_some_and(|f| f.status == Status::Pass);
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| caps::parse_cap_eff(&s));
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    out.push(caps::check_process(&needs, uid, cap_eff, unit_ok));
    out.extend(unit_finding);

    let links = links::gather();
    out.push(links::check_addresses(cfg, &links));
    out.extend(links::check_links(cfg, &links));

    let udp: Vec<(u16, &str)> = wanted
        .iter()
        .filter(|w| w.proto == ports::Proto::Udp && !w.addr.ip().is_loopback())
        .map(|w| (w.addr.port(), w.what))
        .collect();
    if udp.is_empty() {
        out.push(Finding::pass(
            "firewall".into(),
            "every UDP listener is on loopback".into(),
        ));
    } else {
        out.extend(firewall::check(
            &udp,
            &cfg.dhcp.interfaces,
            &firewall::gather(),
        ));
    }

    let root = cfg.tftp_root();
    let installer = if Path::new(files::PACKAGED_INSTALLER).exists() {
        files::PACKAGED_INSTALLER
    } else {
        "packaging/install-bootloaders.sh"
    };
    let found = files::gather_loaders(cfg, &root);
    out.extend(files::check_loaders(cfg, &root, &found, installer));
    out.extend(files::check_data_dir(
        &files::gather_data_dir(&cfg.data_dir),
        o.min_free_bytes,
    ));

    out.extend(peers::check(cfg, &peers::gather(cfg, o.peer_timeout)));
    out
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The installed systemd unit of Baton and its drop-ins, in the order systemd applies
/// them: (unit path, texts).
fn gather_unit() -> Option<(String, Vec<String>)> {
    let dirs = [
        "/etc/systemd/system",
        "/run/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ];
    let path = dirs
        .iter()
        .map(|d| format!("{d}/baton.service"))
        .find(|p| Path::new(p).is_file())?;
    let mut texts = vec![std::fs::read_to_string(&path).ok()?];
    let mut drop_ins: Vec<(std::ffi::OsString, std::path::PathBuf)> = Vec::new();
    for d in dirs {
        if let Ok(rd) = std::fs::read_dir(format!("{d}/baton.service.d")) {
            for e in rd.flatten() {
                let p = e.path();
                // The first directory wins for a name (systemd's override order).
                if p.extension().is_some_and(|x| x == "conf")
                    && !drop_ins.iter().any(|(n, _)| *n == e.file_name())
                {
                    drop_ins.push((e.file_name(), p));
                }
            }
        }
    }
    drop_ins.sort();
    for (_, p) in drop_ins {
        if let Ok(t) = std::fs::read_to_string(p) {
            texts.push(t);
        }
    }
    Some((path, texts))
}

/// Runs a command to completion within `timeout` (killed by its PID after that),
/// capturing its output.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // Drain both pipes while waiting: a large ruleset fills a pipe buffer.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {timeout:?}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
