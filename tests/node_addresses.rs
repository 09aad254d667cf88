//! Node files go only to their node (`--node-files bound`), to the addresses the operator
//! set on it as well as those its PXE exchange showed (issue 16), with real processes on
//! loopback, where any 127.0.0.0/8 address can be a client's source:
//!
//! - one host: an operator-set address fetches the node's kernel and config over TFTP
//!   (the harness's read client bound to that address, and tftp-hpa from 127.0.0.1) and
//!   HTTP, and may report the boot done; another address gets TFTP ERROR 2 and HTTP 403;
//!   bad addresses are refused with a clear error by the API and the CLI; `baton node
//!   show` lists the addresses;
//! - three hosts: the owner is killed, a peer takes the node over, and the operator-set
//!   address fetches from the new owner at once, which never saw the node's PXE
//!   exchange: the address is replicated, not learned.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;

use common::api::{raw_get, raw_request};
use common::data::{mac, mac_colons, pattern, pxelinux_path};
use common::fleet::{Fleet, Leases};
use common::host::HostBuilder;
use common::require::require_tftp_hpa;
use common::serial;
use common::tftp::tftp_read_from;
use common::wait_until;

/// The node's own address, set by the operator.
const OWN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 31);
/// Another client on the same network.
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 32);
/// How long to wait for each TFTP packet.
const WAIT: Duration = Duration::from_secs(2);

/// A TFTP read of `path` from `local`: `Ok(the file)` or `Err(error code)`.
#[track_caller]
fn tftp_from(local: Ipv4Addr, server: SocketAddr, path: &str) -> Result<Vec<u8>, u16> {
    tftp_read_from(local, server, path, WAIT)
}

/// Status of an HTTP GET of `path` from `local`.
#[track_caller]
fn http_from(local: Ipv4Addr, server: SocketAddr, path: &str) -> u16 {
    raw_get(Some(local), server, path).0
}

#[test]
fn bound_node_files_go_to_the_addresses_the_operator_set() {
    let _g = serial();
    let s = HostBuilder::temp().node_files(Some("bound")).start();
    let api = &s.api;
    let kernel = pattern(70_000, 3);
    let k = api.upload("vmlinuz", &kernel);
    let rd = api.upload("initrd.img", &pattern(20_000, 4));
    let m = mac(1);
    api.post(
        "/v1/nodes",
        json!({ "id": "n1", "macs": [mac_colons(m)], "addresses": [OWN.to_string()] }),
    )
    .expect(201);
    api.set_deploy("n1", &k, &rd);
    let (tftp, http) = (s.tftp(), s.http());
    let cfg = pxelinux_path(m);

    // The operator-set address gets the node's files; another address does not.
    assert_eq!(tftp_from(OWN, tftp, "nodes/n1/kernel"), Ok(kernel.clone()));
    let text = tftp_from(OWN, tftp, &cfg).expect("n1's config from its own address");
    assert!(
        String::from_utf8_lossy(&text).contains("nodes/n1/kernel"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert_eq!(tftp_from(STRANGER, tftp, "nodes/n1/kernel"), Err(2));
    assert_eq!(tftp_from(STRANGER, tftp, &cfg), Err(2));
    for path in ["/boot/n1/nodes/n1/kernel", "/nodes/n1/kernel"] {
        assert_eq!(http_from(OWN, http, path), 200, "{path}");
        assert_eq!(http_from(STRANGER, http, path), 403, "{path}");
    }
    // Only the node reports its own boot done.
    let done = |from| raw_request(Some(from), http, "POST", "/boot/n1/done", None).0;
    assert_eq!(done(STRANGER), 403);
    assert_eq!(done(OWN), 200);
    let refused = api.metric_or_zero("baton_tftp_refused_total{reason=\"wrong_client\"}");
    assert!(refused >= 2.0, "TFTP refusals counted: {refused}");

    // The CLI sets and shows them; tftp-hpa (whose source is 127.0.0.1) is refused
    // until 127.0.0.1 is one of them.
    let hpa = require_tftp_hpa();
    if hpa {
        assert_eq!(s.tftp_error("nodes/n1/kernel"), 2);
    }
    let out = api.cli(&[
        "node",
        "update",
        "n1",
        "--address",
        &OWN.to_string(),
        "--address",
        "127.0.0.1",
    ]);
    assert!(out.status.success(), "node update: {}", out.stderr);
    if hpa {
        assert_eq!(
            s.tftp_ok("nodes/n1/kernel"),
            kernel,
            "tftp-hpa from 127.0.0.1"
        );
    }
    let v = api.get("/v1/nodes/n1").expect(200);
    assert_eq!(v["addresses"], json!(["127.0.0.1", "127.0.0.31"]), "{v}");
    let out = api.cli(&["node", "show", "n1"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("addresses        127.0.0.1, 127.0.0.31")
            && shown.contains("its own addresses: 127.0.0.1, 127.0.0.31 (set)"),
        "node show: {shown}"
    );

    // Bad addresses: a clear error, nothing changed.
    for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::"] {
        let e = api
            .patch("/v1/nodes/n1", json!({ "addresses": [bad] }))
            .expect_field_error("addresses");
        assert!(e["message"].as_str().unwrap_or("").contains(bad), "{e}");
    }
    api.post(
        "/v1/nodes",
        json!({ "id": "n2", "macs": [mac_colons(mac(2))], "addresses": ["not-an-ip"] }),
    )
    .expect_error(400);
    let out = api.cli(&["node", "update", "n1", "--address", "224.0.0.1"]);
    assert!(
        !out.status.success() && out.stderr.contains("multicast"),
        "{}",
        out.stderr
    );
    let out = api.cli(&["node", "update", "n1", "--address", "nope"]);
    assert!(
        !out.status.success() && out.stderr.contains("--address nope"),
        "{}",
        out.stderr
    );
    // An address is one node's.
    api.post(
        "/v1/nodes",
        json!({ "id": "n2", "macs": [mac_colons(mac(2))] }),
    )
    .expect(201);
    let e = api
        .patch("/v1/nodes/n2", json!({ "addresses": [OWN.to_string()] }))
        .expect_error(409);
    assert!(e["message"].as_str().unwrap_or("").contains("n1"), "{e}");
    assert_eq!(tftp_from(OWN, tftp, "nodes/n1/kernel"), Ok(kernel.clone()));
    // Import files set them too (`-` clears them); a taken address fails its line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nodes.csv");
    let import = |text: &str| {
        std::fs::write(&file, text).unwrap();
        api.cli(&["node", "import", file.to_str().unwrap()])
    };
    let out = import(&format!(
        "id,macs,addresses\nn3,{},127.0.0.33 127.0.0.34\nn4,{},127.0.0.1\n",
        mac_colons(mac(3)),
        mac_colons(mac(4))
    ));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && printed.contains("address_in_use"),
        "{printed}{}",
        out.stderr
    );
    let v = api.get("/v1/nodes/n3").expect(200);
    assert_eq!(v["addresses"], json!(["127.0.0.33", "127.0.0.34"]), "{v}");
    api.get("/v1/nodes/n4").expect_error(404);
    let out = import(&format!("id,macs,addresses\nn3,{},-\n", mac_colons(mac(3))));
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(api.get("/v1/nodes/n3").expect(200)["addresses"], json!([]));

    // Cleared: the address is a stranger again.
    let out = api.cli(&["node", "update", "n1", "--clear-addresses"]);
    assert!(out.status.success(), "node update: {}", out.stderr);
    assert_eq!(tftp_from(OWN, tftp, "nodes/n1/kernel"), Err(2));
    assert_eq!(http_from(OWN, http, "/boot/n1/nodes/n1/kernel"), 403);
    if hpa {
        assert_eq!(s.tftp_error("nodes/n1/kernel"), 2);
    }
}

#[test]
fn an_operator_set_address_fetches_from_the_new_owner_after_a_takeover() {
    let _g = serial();
    let l = Leases::SHORT;
    let cfg = l.toml("");
    let mut f = Fleet::start(
        (1..=3)
            .map(|i| {
                HostBuilder::member(&format!("h{i}"))
                    .config(&cfg)
                    .node_files(Some("bound"))
            })
            .collect(),
    );
    let h1 = f.host("h1").api.clone();
    let kernel = pattern(90_000, 7);
    let k = h1.upload("vmlinuz", &kernel);
    let rd = h1.upload("initrd.img", &pattern(30_000, 8));
    let m = mac(5);
    h1.post(
        "/v1/nodes",
        json!({ "id": "n1", "macs": [mac_colons(m)], "addresses": [OWN.to_string()] }),
    )
    .expect(201);
    h1.set_deploy("n1", &k, &rd);
    h1.wait_nodes_replicated(&["n1"], &["h1", "h2", "h3"], Duration::from_secs(30));
    assert_eq!(
        tftp_from(OWN, f.host("h1").tftp(), "nodes/n1/kernel"),
        Ok(kernel.clone())
    );
    assert_eq!(
        tftp_from(STRANGER, f.host("h1").tftp(), "nodes/n1/kernel"),
        Err(2)
    );
    for peer in ["h2", "h3"] {
        assert_eq!(
            tftp_from(OWN, f.host(peer).tftp(), "nodes/n1/kernel"),
            Err(2),
            "{peer} does not own n1"
        );
    }

    let t0 = Instant::now();
    f.host_mut("h1").kill9();
    let h2 = f.host("h2").api.clone();
    let owner = wait_until(Duration::from_secs(20), "n1 taken over", || {
        let (owner, _, _) = h2.node("n1");
        (owner == "h2" || owner == "h3").then_some(owner)
    });
    let new = f.host(&owner);
    let (tftp, http) = (new.tftp(), new.http());
    let bytes = wait_until(
        Duration::from_secs(20),
        "n1's kernel from its new owner",
        || tftp_from(OWN, tftp, "nodes/n1/kernel").ok(),
    );
    eprintln!(
        "[node_addresses] {owner} took n1 over and served its operator-set address {:?} after the kill ({})",
        t0.elapsed(),
        l.label()
    );
    assert_eq!(bytes, kernel, "the same kernel from {owner}");
    assert!(tftp_from(OWN, tftp, &pxelinux_path(m)).is_ok());
    assert_eq!(tftp_from(STRANGER, tftp, "nodes/n1/kernel"), Err(2));
    assert_eq!(http_from(OWN, http, "/boot/n1/nodes/n1/kernel"), 200);
    assert_eq!(http_from(STRANGER, http, "/boot/n1/nodes/n1/kernel"), 403);
    // The new owner learned nothing of n1's PXE exchange: the address came with the
    // replica.
    let v = new.api.get("/v1/nodes/n1").expect(200);
    assert_eq!(v["addresses"], json!([OWN.to_string()]), "{v}");
    assert_eq!(v["access"]["addresses"], json!([]), "{v}");
}
