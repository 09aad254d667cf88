//! Cluster peers: reachable with this host's secret, and their clocks close to ours
//! (leases compare wall-clock times written by different hosts; `ownership.grace_ms`
//! absorbs the skew).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{Finding, Status};
use crate::api::peer::ClockReply;
use crate::config::Config;
use crate::store::raft::peer::{PeerClient, PeerError};
use crate::store::raft::{NodeId, Peer};
use crate::store::{Millis, Store};

/// How one peer answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Its clock reply.
    Clock(ClockReply),
    /// No connection or no answer in time.
    Unreachable(String),
    /// An HTTP error status, with the body.
    Status(u16, String),
}

/// One peer asked for its clock.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Base URL.
    pub url: String,
    /// Host name, when the membership told it.
    pub host: Option<String>,
    /// Local wall clock when the request left.
    pub sent_ms: Millis,
    /// Local wall clock when the answer came.
    pub recv_ms: Millis,
    /// What came back.
    pub answer: Answer,
}

/// Everything known about the peers.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Where the list came from (for the report).
    pub sources: Vec<String>,
    /// Why the local replica's membership could not be read.
    pub replica_error: Option<String>,
    /// Each peer asked.
    pub probes: Vec<Probe>,
}

/// Clock skew of a peer and its uncertainty (half the round trip), in milliseconds:
/// the peer read its clock somewhere between `sent` and `recv`.
pub fn skew(sent: Millis, recv: Millis, peer_now: Millis) -> (Millis, Millis) {
    let mid = sent + (recv - sent) / 2;
    (peer_now - mid, (recv - sent + 1) / 2)
}

/// One finding per peer (or one saying there are none).
pub fn check(cfg: &Config, p: &Peers) -> Vec<Finding> {
    let name = "cluster peers".to_string();
    if cfg.cluster.secret.is_none() {
        return vec![Finding::pass(
            name,
            "single host: no cluster.secret, so no peers".into(),
        )];
    }
    let mut out = Vec::new();
    if let Some(e) = &p.replica_error {
        out.push(Finding {
            name: name.clone(),
            status: Status::Warn,
            detail: format!("could not read the local replica's membership: {e}"),
            fix: Some("run doctor as the user Baton runs as, or as root".into()),
        });
    }
    if p.probes.is_empty() {
        if p.replica_error.is_none() {
            out.push(Finding::pass(
                name,
                format!("no peers ({})", p.sources.join("; ")),
            ));
        }
        return out;
    }
    let grace = cfg.ownership.grace_ms as Millis;
    let (fail_at, warn_at) = (grace / 2, (grace / 10).max(20));
    for pr in &p.probes {
        let who = match &pr.host {
            Some(h) => format!("peer {h}"),
            None => "peer".to_string(),
        };
        let name = format!("{who} {}", pr.url);
        out.push(match &pr.answer {
            Answer::Unreachable(e) => Finding {
                name,
                status: Status::Fail,
                detail: format!("unreachable: {e}"),
                fix: Some("check that Baton runs there and that its HTTP port is open between the hosts".into()),
            },
            Answer::Status(403, _) => Finding {
                name,
                status: Status::Fail,
                detail: "refused this host's cluster secret".into(),
                fix: Some("use the same cluster.secret (or BATON_CLUSTER_SECRET) on every host".into()),
            },
            Answer::Status(404, _) => Finding {
                name,
                status: Status::Warn,
                detail: "reachable, but its Baton has no /cluster/clock: clock skew unknown".into(),
                fix: Some("upgrade Baton there".into()),
            },
            Answer::Status(code, body) => Finding {
                name,
                status: Status::Fail,
                detail: format!("answered HTTP {code}: {}", body.chars().take(200).collect::<String>()),
                fix: None,
            },
            Answer::Clock(c) => {
                let (s, err) = skew(pr.sent_ms, pr.recv_ms, c.now_ms);
                let low = s.abs() - err;
                let detail = format!(
                    "reachable ({}), clock {s:+} ms (±{err} ms) from this host's",
                    c.host
                );
                let fix = Some(
                    "synchronise the clocks (NTP: systemd-timesyncd or chrony) on both hosts"
                        .to_string(),
                );
                if low > fail_at {
                    Finding {
                        name,
                        status: Status::Fail,
                        detail: format!(
                            "{detail}: more than half of ownership.grace_ms ({grace} ms), so a peer could take over nodes this host still serves"
                        ),
                        fix,
                    }
                } else if low > warn_at {
                    Finding {
                        name,
                        status: Status::Warn,
                        detail: format!("{detail}: more than {warn_at} ms"),
                        fix,
                    }
                } else {
                    Finding::pass(name, detail)
                }
            }
        });
    }
    out.extend(p.probes.iter().filter_map(|pr| node_files_differ(cfg, pr)));
    out
}

/// A failure when a peer serves node files under another `node_files` mode than this
/// host: after a takeover its nodes would be served under the other rule (a node
/// rendered with a token, say, then fetched by address alone), so every host must
/// use the same mode.
fn node_files_differ(cfg: &Config, pr: &Probe) -> Option<Finding> {
    let Answer::Clock(c) = &pr.answer else {
        return None;
    };
    let theirs = c.node_files.as_deref()?;
    let ours = cfg.node_files.to_string();
    (theirs != ours).then(|| Finding {
        name: format!("peer {} node_files", c.host),
        status: Status::Fail,
        detail: format!(
            "{} serves node files as node_files = \"{theirs}\", this host as \"{ours}\": \
             a node taken over or migrated between them changes who may fetch its files",
            c.host
        ),
        fix: Some(
            "set the same node_files on every host (with \"token\", then re-render the nodes \
             with `baton node update ID --rotate-token`)"
                .into(),
        ),
    })
}

/// The members recorded in the local replica (`<data_dir>/baton.db`), read-only.
fn replica_members(data_dir: &Path) -> Result<BTreeMap<NodeId, Peer>, String> {
    let db = data_dir.join("baton.db");
    if !db.exists() {
        return Ok(BTreeMap::new());
    }
    let st = Store::replicated_state_of(&db).map_err(|e| format!("{}: {e}", db.display()))?;
    let Some((_, m)) = st else {
        return Ok(BTreeMap::new());
    };
    let m: openraft::StoredMembership<NodeId, Peer> =
        serde_json::from_str(&m).map_err(|e| format!("membership in {}: {e}", db.display()))?;
    Ok(m.nodes().map(|(id, p)| (*id, p.clone())).collect())
}

fn norm(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// Finds the peers (local replica, `cluster.join`, and the members those report) and
/// asks each for its clock, at most `timeout` each.
pub fn gather(cfg: &Config, timeout: Duration) -> Peers {
    let mut p = Peers::default();
    let Some(secret) = cfg.cluster.secret.clone() else {
        return p;
    };
    let own_id: Option<NodeId> = std::fs::read_to_string(cfg.data_dir.join("node-id"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    // url -> host name (if known); asked in this order.
    let mut todo: Vec<(String, Option<String>)> = Vec::new();
    let add = |todo: &mut Vec<(String, Option<String>)>, url: &str, host: Option<String>| {
        let u = norm(url);
        if !todo.iter().any(|(t, _)| *t == u) {
            todo.push((u, host));
        }
    };
    match replica_members(&cfg.data_dir) {
        Ok(m) => {
            p.sources.push(format!(
                "local replica: {} member{}",
                m.len(),
                if m.len() == 1 { "" } else { "s" }
            ));
            for (id, peer) in m {
                if Some(id) != own_id {
                    add(&mut todo, &peer.addr, Some(peer.host));
                }
            }
        }
        Err(e) => p.replica_error = Some(e),
    }
    if let Some(j) = &cfg.cluster.join {
        p.sources.push(format!("cluster.join {j}"));
        add(&mut todo, j, None);
    }
    let tls = match cfg.tls.material() {
        Ok(t) => t,
        Err(e) => {
            p.replica_error = Some(format!("[tls] refused: {e}"));
            return p;
        }
    };
    let peers = match PeerClient::with_tls(Some(secret), tls.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            p.replica_error = Some(format!("[tls] refused: {e}"));
            return p;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            p.replica_error = Some(format!("no async runtime to ask peers: {e}"));
            return p;
        }
    };
    let mut i = 0;
    // Bounded: a membership is small, and each URL is asked once.
    while i < todo.len() && i < 64 {
        let (url, host) = todo[i].clone();
        i += 1;
        let sent_ms = crate::clock::now_ms();
        let r = rt.block_on(peers.clock(&url, timeout));
        let recv_ms = crate::clock::now_ms();
        let answer = match r {
            Ok(c) => Answer::Clock(c),
            Err(PeerError::Forbidden { error, .. }) => {
                Answer::Status(403, error.map(|e| e.message).unwrap_or_default())
            }
            Err(PeerError::Refused { status, error, .. }) => {
                Answer::Status(status, error.map(|e| e.message).unwrap_or_default())
            }
            Err(e) => Answer::Unreachable(e.to_string()),
        };
        if let Answer::Clock(c) = &answer {
            if Some(c.node_id) == own_id {
                // cluster.join names this very host.
                continue;
            }
            for (id, peer) in &c.members {
                if Some(*id) != own_id && *id != c.node_id {
                    add(&mut todo, &peer.addr, Some(peer.host.clone()));
                }
            }
        }
        p.probes.push(Probe {
            url,
            host: host.or_else(|| match &answer {
                Answer::Clock(c) => Some(c.host.clone()),
                _ => None,
            }),
            sent_ms,
            recv_ms,
            answer,
        });
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(sent: Millis, recv: Millis, now: Millis) -> Probe {
        Probe {
            url: "http://127.0.0.1:1".into(),
            host: Some("b".into()),
            sent_ms: sent,
            recv_ms: recv,
            answer: Answer::Clock(ClockReply {
                host: "b".into(),
                node_id: 2,
                now_ms: now,
                members: BTreeMap::new(),
                node_files: Some("bound".into()),
            }),
        }
    }

    #[test]
    fn skew_from_midpoint() {
        assert_eq!(skew(1000, 1010, 1005), (0, 5));
        assert_eq!(skew(1000, 1000, 1250), (250, 0));
        assert_eq!(skew(1000, 1002, 700), (-301, 1));
    }

    #[test]
    fn thresholds_follow_grace() {
        let mut c = Config::default();
        c.cluster.secret = Some("0123456789abcdef".into());
        let st = |p: Probe| {
            check(
                &c,
                &Peers {
                    probes: vec![p],
                    ..Default::default()
                },
            )[0]
            .status
        };
        assert_eq!(st(probe(0, 2, 1)), Status::Pass);
        assert_eq!(st(probe(0, 2, 300)), Status::Warn);
        assert_eq!(st(probe(0, 2, -900)), Status::Fail);
        // A slow round trip widens the margin instead of failing.
        assert_eq!(st(probe(0, 1200, 1100)), Status::Pass);
        let down = Probe {
            answer: Answer::Unreachable("connection refused".into()),
            ..probe(0, 1, 0)
        };
        assert_eq!(st(down), Status::Fail);
        c.cluster.secret = None;
        assert_eq!(check(&c, &Peers::default())[0].status, Status::Pass);
    }

    #[test]
    fn a_peer_with_another_node_files_mode_fails() {
        let mut c = Config::default();
        c.cluster.secret = Some("0123456789abcdef".into());
        let with = |c: &Config, mode: Option<&str>| {
            let mut p = probe(0, 2, 1);
            if let Answer::Clock(r) = &mut p.answer {
                r.node_files = mode.map(str::to_string);
            }
            let peers = Peers {
                probes: vec![p],
                ..Default::default()
            };
            check(c, &peers)
        };
        // Same mode (the default, bound), or a peer too old to say: the clock finding only.
        assert_eq!(with(&c, Some("bound")).len(), 1);
        assert_eq!(with(&c, None).len(), 1);
        let f = with(&c, Some("token"));
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[1].status, Status::Fail);
        assert!(
            f[1].detail.contains("\"token\"") && f[1].detail.contains("\"bound\""),
            "{}",
            f[1].detail
        );
        c.node_files = crate::ownership::gate::NodeFileAccess::Token;
        assert_eq!(with(&c, Some("token")).len(), 1);
    }
}
