//! May `baton serve` bind its ports: as started from this shell (uid, effective
//! capabilities), and as the systemd unit starts it (User=, AmbientCapabilities=)?

use super::{Finding, Status};
use crate::config::Config;

/// Capability bit of CAP_NET_BIND_SERVICE.
pub const CAP_NET_BIND_SERVICE: u32 = 10;
/// Capability bit of CAP_NET_RAW.
pub const CAP_NET_RAW: u32 = 13;

/// A capability Baton may need, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// Bit number.
    pub bit: u32,
    /// Its name as systemd and setcap spell it.
    pub name: &'static str,
    /// Why Baton needs it.
    pub why: String,
}

/// Capabilities `cfg` needs on this kernel. `unprivileged_from` is
/// `net.ipv4.ip_unprivileged_port_start`; `kernel` is (major, minor).
pub fn needed(cfg: &Config, unprivileged_from: u16, kernel: (u32, u32)) -> Vec<Need> {
    let mut ports: Vec<String> = super::ports::wanted(cfg)
        .iter()
        .filter(|w| w.addr.port() != 0 && w.addr.port() < unprivileged_from)
        .map(|w| format!("{}/{}", w.proto.as_str(), w.addr.port()))
        .collect();
    ports.dedup();
    let mut out = Vec::new();
    if !ports.is_empty() {
        out.push(Need {
            bit: CAP_NET_BIND_SERVICE,
            name: "CAP_NET_BIND_SERVICE",
            why: format!(
                "binding {} (ports below {unprivileged_from})",
                ports.join(", ")
            ),
        });
    }
    // SO_BINDTODEVICE needs CAP_NET_RAW before Linux 5.7.
    if cfg.dhcp.enabled && !cfg.dhcp.interfaces.is_empty() && kernel < (5, 7) {
        out.push(Need {
            bit: CAP_NET_RAW,
            name: "CAP_NET_RAW",
            why: "binding proxy-DHCP to dhcp.interfaces (SO_BINDTODEVICE, kernel < 5.7)".into(),
        });
    }
    out
}

/// `CapEff` of a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// `(major, minor)` of a kernel release such as `6.1.0-18-amd64`.
pub fn parse_kernel(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// What a systemd unit (with its drop-ins) grants the service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitCaps {
    /// `User=`; `None`: root.
    pub user: Option<String>,
    /// `AmbientCapabilities=` after all assignments (upper case).
    pub ambient: Vec<String>,
    /// `CapabilityBoundingSet=`, when restricted.
    pub bounding: Option<Vec<String>>,
}

/// Applies one `Cap...=` value: empty resets, `~` removes (approximated as "not granted").
fn cap_list(cur: &mut Vec<String>, value: &str) {
    let v = value.trim();
    if v.is_empty() {
        cur.clear();
        return;
    }
    if let Some(rest) = v.strip_prefix('~') {
        let drop: Vec<String> = rest
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect();
        cur.retain(|c| !drop.contains(c));
        return;
    }
    for c in v.split_whitespace() {
        let c = c.to_ascii_uppercase();
        if !cur.contains(&c) {
            cur.push(c);
        }
    }
}

/// Reads the `[Service]` settings that decide capabilities from unit texts applied in
/// order (the unit, then its drop-ins).
pub fn parse_unit(texts: &[String]) -> UnitCaps {
    let mut u = UnitCaps::default();
    for text in texts {
        let mut service = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                service = line == "[Service]";
                continue;
            }
            if !service || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k.trim() {
                "User" => {
                    let v = v.trim();
                    u.user = (!v.is_empty() && v != "root" && v != "0").then(|| v.to_string());
                }
                "AmbientCapabilities" => cap_list(&mut u.ambient, v),
                "CapabilityBoundingSet" => {
                    let mut b = u.bounding.take().unwrap_or_default();
                    cap_list(&mut b, v);
                    u.bounding = Some(b);
                }
                _ => {}
            }
        }
    }
    u
}

/// This process: may it bind what `needs` asks for?
pub fn check_process(needs: &[Need], uid: u32, cap_eff: Option<u64>, unit_ok: bool) -> Finding {
    let name = "capabilities (this shell)".to_string();
    if needs.is_empty() {
        return Finding::pass(name, "no privileged port or option configured".to_string());
    }
    let has = |b: u32| cap_eff.is_some_and(|c| c & (1 << b) != 0);
    let missing: Vec<&Need> = needs.iter().filter(|n| !has(n.bit)).collect();
    if missing.is_empty() {
        let who = if uid == 0 { "root" } else { "this user" };
        let names: Vec<&str> = needs.iter().map(|n| n.name).collect();
        return Finding::pass(name, format!("{who} holds {}", names.join(" and ")));
    }
    let why: Vec<String> = missing
        .iter()
        .map(|n| format!("{} for {}", n.name, n.why))
        .collect();
    let caps: Vec<String> = missing
        .iter()
        .map(|n| n.name.to_ascii_lowercase())
        .collect();
    Finding {
        name,
        // Fine when the packaged unit is what runs Baton.
        status: if unit_ok { Status::Warn } else { Status::Fail },
        detail: format!(
            "`baton serve` started by uid {uid} lacks {}{}",
            why.join("; "),
            if unit_ok {
                " (the systemd unit grants them)"
            } else {
                ""
            }
        ),
        fix: Some(format!(
            "start it from the systemd unit (AmbientCapabilities={}), as root, or `setcap {}+ep $(command -v baton)`",
            missing.iter().map(|n| n.name).collect::<Vec<_>>().join(" "),
            caps.join(",")
        )),
    }
}

/// The systemd unit: does it grant what `needs` asks for?
pub fn check_unit(needs: &[Need], unit: Option<(&str, &UnitCaps)>) -> Option<Finding> {
    let (path, u) = unit?;
    let name = "capabilities (systemd unit)".to_string();
    let Some(user) = &u.user else {
        return Some(Finding::pass(name, format!("{path} runs Baton as root")));
    };
    let missing: Vec<&Need> = needs
        .iter()
        .filter(|n| {
            !u.ambient.iter().any(|c| c == n.name)
                || u.bounding
                    .as_ref()
                    .is_some_and(|b| !b.iter().any(|c| c == n.name))
        })
        .collect();
    if missing.is_empty() {
        let granted = if u.ambient.is_empty() {
            "no capabilities, and needs none".to_string()
        } else {
            format!("AmbientCapabilities={}", u.ambient.join(" "))
        };
        return Some(Finding::pass(
            name,
            format!("{path}: User={user} with {granted}"),
        ));
    }
    let names: Vec<&str> = missing.iter().map(|n| n.name).collect();
    Some(Finding {
        name,
        status: Status::Fail,
        detail: format!(
            "{path}: User={user} without {} ({})",
            names.join(" "),
            missing
                .iter()
                .map(|n| n.why.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        fix: Some(format!(
            "add `AmbientCapabilities={0}` and `CapabilityBoundingSet={0}` under [Service] (systemctl edit baton)",
            names.join(" ")
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_follow_ports_and_kernel() {
        let mut c = Config::default();
        let n = needed(&c, 1024, (6, 1));
        assert_eq!(n.len(), 1);
        assert!(n[0].why.contains("udp/69") && n[0].why.contains("udp/67"));
        c.dhcp.interfaces = vec!["eth1".into()];
        assert_eq!(needed(&c, 1024, (5, 4)).len(), 2);
        c.tftp.listen = "127.0.0.1:6969".parse().unwrap();
        c.dhcp.enabled = false;
        assert!(needed(&c, 1024, (5, 4)).is_empty());
        assert!(needed(&Config::default(), 0, (6, 1)).is_empty());
    }

    #[test]
    fn parses_status_and_release() {
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapEff:\t0000000000000400\n"),
            Some(1 << CAP_NET_BIND_SERVICE)
        );
        assert_eq!(parse_kernel("6.1.0-18-amd64"), (6, 1));
        assert_eq!(parse_kernel("5.10.0"), (5, 10));
    }

    #[test]
    fn unit_and_drop_ins() {
        let unit = "[Unit]\nUser=nobody\n[Service]\nUser=baton\nAmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_RAW\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW\n".to_string();
        let u = parse_unit(std::slice::from_ref(&unit));
        assert_eq!(u.user.as_deref(), Some("baton"));
        let need = needed(&Config::default(), 1024, (6, 1));
        assert_eq!(
            check_unit(&need, Some(("u", &u))).unwrap().status,
            Status::Pass
        );
        let drop_in = "[Service]\nAmbientCapabilities=\n".to_string();
        let u2 = parse_unit(&[unit, drop_in]);
        let f = check_unit(&need, Some(("u", &u2))).unwrap();
        assert_eq!(f.status, Status::Fail);
        assert!(f
            .fix
            .unwrap()
            .contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
    }

    #[test]
    fn process_check() {
        let need = needed(&Config::default(), 1024, (6, 1));
        assert_eq!(
            check_process(&need, 0, Some(!0), false).status,
            Status::Pass
        );
        let f = check_process(&need, 1000, Some(0), false);
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("setcap cap_net_bind_service+ep"));
        assert_eq!(
            check_process(&need, 1000, Some(0), true).status,
            Status::Warn
        );
    }
}
