//! Boot timelines across a takeover, on three real `baton serve` hosts on loopback: a
//! node starts booting from its owner, the owner is killed (-9) mid-boot, a peer takes
//! the node over and the node boots from it. While the old owner is down, every host
//! shows the new owner's stages and names the old owner as unreachable; once it is
//! back, `GET /v1/nodes/{id}/boots` on any host shows both hosts' stages together, in
//! time order, with the interrupted attempt before the one that booted.
//!
//! Timing-heavy (leases, a takeover): run under `flock /tmp/baton-heavy.lock`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};

use common::api::Api;
use common::data::{mac, mac_colons, pxelinux_path};
use common::dhcp::ask_from;
use common::fleet::{Fleet, Leases};
use common::host::HostBuilder;
use common::tftp::{tftp_fetch_from, Answer};
use common::{pattern, wait_until};

const L: Leases = Leases::SHORT;
/// The node's own address on loopback.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 78);

/// A DISCOVER from `m` at the node's address; the boot file of the answer from `dhcp`,
/// if one came.
fn ask_dhcp(dhcp: SocketAddr, m: [u8; 6], xid: u32) -> Option<String> {
    ask_from(NODE_IP, dhcp, m, xid, Duration::from_secs(2))
}

#[track_caller]
fn fetch(tftp: SocketAddr, path: &str) -> Vec<u8> {
    match tftp_fetch_from(
        NODE_IP,
        tftp,
        path,
        &[("blksize", "1400")],
        Duration::from_secs(2),
        None,
        None,
    ) {
        Answer::Data(d) => d,
        other => panic!("{path} from {tftp}: {other:?}"),
    }
}

fn boots(api: &Api) -> Value {
    api.get_ok("/v1/nodes/n1/boots?attempts=10")
}

/// (host, stage, status) of every step of every attempt.
fn steps(b: &Value) -> Vec<Vec<(String, String, String)>> {
    b["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["host"].as_str().unwrap_or_default().to_string(),
                        s["stage"].as_str().unwrap_or_default().to_string(),
                        s["status"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn st(h: &str, stage: &str, status: &str) -> (String, String, String) {
    (h.into(), stage.into(), status.into())
}

#[test]
fn a_takeover_mid_boot_shows_the_old_and_the_new_owners_stages_together() {
    let cfg = L.toml("");
    let mut f = Fleet::start(
        (1..=3)
            .map(|i| {
                HostBuilder::member(&format!("h{i}"))
                    .config(&cfg)
                    .dhcp_loopback()
            })
            .collect(),
    );
    for h in &f.hosts {
        h.put("undionly.kpxe", &pattern(30_000, 7));
    }
    let h1 = f.host("h1").api.clone();
    let m = mac(1);
    let kd = h1.upload("vmlinuz", &pattern(100_000, 1));
    let rd = h1.upload("initrd", &pattern(120_000, 2));
    h1.enroll_deploy("n1", &mac_colons(m), &kd, &rd);
    h1.wait_nodes_replicated(&["n1"], &["h1", "h2", "h3"], Duration::from_secs(30));

    // The node starts booting from its owner...
    let h1_dhcp = f.host("h1").dhcp();
    let h1_tftp = f.host("h1").tftp();
    assert_eq!(ask_dhcp(h1_dhcp, m, 1).as_deref(), Some("undionly.kpxe"));
    fetch(h1_tftp, "undionly.kpxe");
    fetch(h1_tftp, &pxelinux_path(m));
    wait_until(Duration::from_secs(5), "h1 holds its 3 records", || {
        let b = boots(&h1);
        (b["hosts"][0]["records"] == 3).then_some(())
    });

    // ...and its owner dies.
    f.host_mut("h1").kill9();
    let h2 = f.host("h2").api.clone();
    let owner = wait_until(Duration::from_secs(20), "a peer takes n1 over", || {
        let (o, _, _) = h2.node("n1");
        (o != "h1").then_some(o)
    });
    let new = f.host(&owner);
    let (dhcp, tftp) = (new.dhcp(), new.tftp());
    let other = if owner == "h2" { "h3" } else { "h2" };
    // The firmware times out and boots again, now answered by the new owner.
    let file = wait_until(Duration::from_secs(10), "the new owner answers", || {
        ask_dhcp(dhcp, m, 2)
    });
    assert_eq!(file, "undionly.kpxe");
    fetch(tftp, "undionly.kpxe");
    fetch(tftp, &pxelinux_path(m));
    fetch(tftp, "nodes/n1/kernel");
    fetch(tftp, "nodes/n1/ramdisk");

    // With h1 down, a third host shows the new owner's attempt and says h1 is missing.
    let via = f.host(other).api.clone();
    let b = wait_until(Duration::from_secs(5), "the new owner's boot", || {
        let b = boots(&via);
        (b["attempts"]
            .as_array()
            .is_some_and(|a| a.last().is_some_and(|a| a["health"]["state"] == "booted")))
        .then_some(b)
    });
    let down: Vec<&Value> = b["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["error"].is_string())
        .collect();
    assert_eq!(down.len(), 1, "{b:#}");
    assert_eq!(down[0]["host"], "h1");
    assert_eq!(
        steps(&b),
        vec![vec![
            st(&owner, "dhcp", "ok"),
            st(&owner, "loader", "ok"),
            st(&owner, "config", "ok"),
            st(&owner, "kernel", "ok"),
            st(&owner, "ramdisk", "ok"),
        ]]
    );

    // h1 comes back: its stages of the first attempt join the timeline, in order.
    f.host_mut("h1").start();
    for name in ["h1", "h2", "h3"] {
        let api = f.host(name).api.clone();
        let b = wait_until(Duration::from_secs(20), "both owners' stages", || {
            let b = boots(&api);
            (b["attempts"].as_array().is_some_and(|a| a.len() == 2)).then_some(b)
        });
        assert_eq!(
            steps(&b),
            vec![
                vec![
                    st("h1", "dhcp", "ok"),
                    st("h1", "loader", "ok"),
                    st("h1", "config", "ok"),
                ],
                vec![
                    st(&owner, "dhcp", "ok"),
                    st(&owner, "loader", "ok"),
                    st(&owner, "config", "ok"),
                    st(&owner, "kernel", "ok"),
                    st(&owner, "ramdisk", "ok"),
                ],
            ],
            "via {name}: {b:#}"
        );
        let a = b["attempts"].as_array().unwrap();
        assert_eq!(a[0]["hosts"], json!(["h1"]));
        assert_eq!(a[0]["health"]["state"], "interrupted");
        assert_eq!(a[1]["hosts"], json!([owner]));
        assert_eq!(a[1]["health"]["state"], "booted");
        assert!(a[0]["last"].as_i64() <= a[1]["started"].as_i64());
        assert!(
            b["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["error"].is_null()),
            "{b:#}"
        );
        // `node show` on that host carries the newest attempt.
        let n = api.get_ok("/v1/nodes/n1");
        assert_eq!(n["boot"]["health"]["state"], "booted", "{n:#}");
    }
    println!(
        "n1: 3 stages on h1, kill -9 h1, takeover by {owner}, 5 stages there; every host shows both attempts in order"
    );
}
