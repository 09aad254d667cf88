//! Node files by boot token (`--node-files token`, issue 16), with real processes on
//! loopback, where any 127.0.0.0/8 address can be a client's source:
//!
//! - one host: the node's rendered iPXE script, GRUB and pxelinux configs name its
//!   kernel and ramdisk under `/_t/<token>/`; with that token any address gets the
//!   kernel's bytes over HTTP (both URL forms) and TFTP (the harness's client and
//!   tftp-hpa); without a token or with another one every address gets HTTP 403 and
//!   TFTP ERROR 2, counted, the same answer as a wrong address; MAC-named configs
//!   without a token go to the node's own address only; `baton node update
//!   --rotate-token` (and a new profile) gives a new token and the old one is refused;
//! - three hosts: the owner is killed, a peer takes the node over and serves the same
//!   script and kernel for the same token: the token is replicated with the files.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;

use common::api::{raw_get, Api};
use common::data::{mac, mac_colons, pattern, pxelinux_path};
use common::fleet::{Fleet, Leases};
use common::host::HostBuilder;
use common::require::require_tftp_hpa;
use common::serial;
use common::tftp::tftp_read_from;
use common::wait_until;

/// The node's own address, set by the operator.
const OWN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 41);
/// Another client on the same network.
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 42);
/// How long to wait for each TFTP packet.
const WAIT: Duration = Duration::from_secs(2);

/// A TFTP read of `path` from `local`: `Ok(the file)` or `Err(error code)`.
#[track_caller]
fn tftp_from(local: Ipv4Addr, server: SocketAddr, path: &str) -> Result<Vec<u8>, u16> {
    tftp_read_from(local, server, path, WAIT)
}

/// The node's boot token, as the API shows it.
#[track_caller]
fn token_of(api: &Api, node: &str) -> String {
    let v = api.get(&format!("/v1/nodes/{node}")).expect(200);
    let t = v["boot_token"].as_str().unwrap_or_default().to_string();
    assert!(
        t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()),
        "a 128-bit token: {v}"
    );
    t
}

/// `t` with its first digit changed: a well-formed token that is not the node's.
fn other_token(t: &str) -> String {
    let first = if t.starts_with('0') { "1" } else { "0" };
    format!("{first}{}", &t[1..])
}

/// The node's MAC-named file names: iPXE script, GRUB config.
fn configs(m: [u8; 6]) -> (String, String) {
    let dashes = mac_colons(m).replace(':', "-");
    (
        format!("ipxe/{dashes}.ipxe"),
        format!("grub/grub.cfg-01-{dashes}"),
    )
}

#[test]
fn node_files_go_to_whoever_names_the_current_token() {
    let _g = serial();
    let s = HostBuilder::temp().node_files(Some("token")).start();
    let api = &s.api;
    let kernel = pattern(70_000, 11);
    let k = api.upload("vmlinuz", &kernel);
    let rd = api.upload("initrd.img", &pattern(20_000, 12));
    let m = mac(1);
    api.post(
        "/v1/nodes",
        json!({ "id": "n1", "macs": [mac_colons(m)], "addresses": [OWN.to_string()] }),
    )
    .expect(201);
    api.set_deploy("n1", &k, &rd);
    let (tftp, http) = (s.tftp(), s.http());
    let (script, grub) = configs(m);
    let t = token_of(api, "n1");
    let bad = other_token(&t);

    // The rendered files name the kernel and ramdisk with the token.
    let (st, body) = raw_get(Some(STRANGER), http, &format!("/_t/{t}/{script}"));
    assert_eq!(st, 200, "the script with its token, from any address");
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(&format!("kernel /_t/{t}/nodes/n1/kernel initrd=ramdisk"))
            && text.contains(&format!("initrd --name ramdisk /_t/{t}/nodes/n1/ramdisk\n")),
        "{text}"
    );
    let g = tftp_from(STRANGER, tftp, &format!("/_t/{t}/{grub}")).expect("GRUB config");
    let g = String::from_utf8(g).unwrap();
    assert!(
        g.contains(&format!("linux /_t/{t}/nodes/n1/kernel "))
            && g.contains(&format!("initrd /_t/{t}/nodes/n1/ramdisk\n")),
        "{g}"
    );
    let p = tftp_from(STRANGER, tftp, &format!("_t/{t}/{}", pxelinux_path(m))).unwrap();
    assert!(String::from_utf8_lossy(&p).contains(&format!("LINUX _t/{t}/nodes/n1/kernel\n")));

    // With the token, any address gets the kernel's bytes, over HTTP and TFTP.
    for from in [OWN, STRANGER, Ipv4Addr::new(127, 0, 0, 77)] {
        for path in [
            format!("/_t/{t}/nodes/n1/kernel"),
            format!("/boot/n1/_t/{t}/nodes/n1/kernel"),
        ] {
            let (st, body) = raw_get(Some(from), http, &path);
            assert_eq!(st, 200, "{path} from {from}");
            assert!(body == kernel, "{path} from {from}: the same bytes");
        }
        assert_eq!(
            tftp_from(from, tftp, &format!("/_t/{t}/nodes/n1/kernel")),
            Ok(kernel.clone())
        );
    }
    // Without a token, or with another one: refused, even to the node's own address,
    // with the answer a wrong address gets (it tells which rule refused nothing).
    let mut bodies = Vec::new();
    for from in [OWN, STRANGER] {
        for path in [
            "/nodes/n1/kernel".to_string(),
            "/boot/n1/nodes/n1/kernel".to_string(),
            format!("/_t/{bad}/nodes/n1/kernel"),
            format!("/boot/n1/_t/{bad}/nodes/n1/kernel"),
        ] {
            let (st, body) = raw_get(Some(from), http, &path);
            assert_eq!(st, 403, "{path} from {from}");
            bodies.push(body);
        }
        assert_eq!(tftp_from(from, tftp, "nodes/n1/kernel"), Err(2));
        assert_eq!(
            tftp_from(from, tftp, &format!("_t/{bad}/nodes/n1/kernel")),
            Err(2)
        );
    }
    // MAC-named configs without a token: the node's own address only (firmware asks
    // for them by name, and cannot name a token).
    assert!(tftp_from(OWN, tftp, &script).is_ok());
    assert_eq!(tftp_from(STRANGER, tftp, &script), Err(2));
    let (st, body) = raw_get(Some(STRANGER), http, &format!("/{grub}"));
    assert_eq!(st, 403);
    bodies.push(body);
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        1,
        "one refusal body: {:?}",
        bodies
            .iter()
            .map(|b| String::from_utf8_lossy(b))
            .collect::<Vec<_>>()
    );
    let body = String::from_utf8_lossy(&bodies[0]).to_string();
    assert!(!body.contains(&t) && !body.contains("token"), "{body}");
    for reason in ["no_token", "bad_token"] {
        let n = api.metric_or_zero(&format!("baton_tftp_refused_total{{reason=\"{reason}\"}}"));
        assert!(n >= 2.0, "TFTP {reason} refusals counted: {n}");
    }
    assert!(
        !s.log().contains(&t),
        "the token is never logged:\n{}",
        s.log()
    );

    // tftp-hpa, from 127.0.0.1: the token gets the kernel, nothing else does.
    let hpa = require_tftp_hpa();
    if hpa {
        assert_eq!(s.tftp_ok(&format!("_t/{t}/nodes/n1/kernel")), kernel);
        assert_eq!(s.tftp_error("nodes/n1/kernel"), 2);
        assert_eq!(s.tftp_error(&format!("_t/{bad}/nodes/n1/kernel")), 2);
    }

    // `baton node show` says how its files are served and why some were refused.
    let out = api.cli(&["node", "show", "n1"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("node_files = token") && shown.contains("refused"),
        "node show: {shown}"
    );

    // A new token on demand: the old one is refused from then on.
    let out = api.cli(&["node", "update", "n1", "--rotate-token"]);
    assert!(out.status.success(), "rotate: {}", out.stderr);
    let t2 = token_of(api, "n1");
    assert_ne!(t2, t);
    let (st, body) = raw_get(Some(STRANGER), http, &format!("/_t/{t2}/{script}"));
    assert_eq!(st, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(&format!("/_t/{t2}/nodes/n1/kernel")) && !text.contains(&t),
        "{text}"
    );
    assert_eq!(
        raw_get(Some(STRANGER), http, &format!("/_t/{t}/nodes/n1/kernel")).0,
        403
    );
    assert_eq!(
        tftp_from(OWN, tftp, &format!("_t/{t}/nodes/n1/kernel")),
        Err(2)
    );
    let (st, body) = raw_get(Some(STRANGER), http, &format!("/_t/{t2}/nodes/n1/kernel"));
    assert!(st == 200 && body == kernel);
    if hpa {
        assert_eq!(s.tftp_error(&format!("_t/{t}/nodes/n1/kernel")), 2);
        assert_eq!(s.tftp_ok(&format!("_t/{t2}/nodes/n1/kernel")), kernel);
    }
    // A new profile is a new boot: a new token too.
    api.set_deploy_cmdline("n1", &k, &rd, "console=ttyS0");
    let t3 = token_of(api, "n1");
    assert!(t3 != t2 && t3 != t);
    assert_eq!(
        raw_get(Some(STRANGER), http, &format!("/_t/{t2}/nodes/n1/kernel")).0,
        403
    );
    assert_eq!(
        raw_get(Some(STRANGER), http, &format!("/_t/{t3}/nodes/n1/kernel")).0,
        200
    );
    // Asking for a new token where there is nothing to carry it: a clear error.
    api.post(
        "/v1/nodes",
        json!({ "id": "n2", "macs": [mac_colons(mac(2))] }),
    )
    .expect(201);
    api.patch("/v1/nodes/n2", json!({ "rotate_token": true }))
        .expect_field_error("rotate_token");
}

#[test]
fn a_new_owner_serves_the_same_files_for_the_same_token() {
    let _g = serial();
    let l = Leases::SHORT;
    let cfg = l.toml("");
    let mut f = Fleet::start(
        (1..=3)
            .map(|i| {
                HostBuilder::member(&format!("h{i}"))
                    .config(&cfg)
                    .node_files(Some("token"))
            })
            .collect(),
    );
    let h1 = f.host("h1").api.clone();
    let kernel = pattern(90_000, 13);
    let k = h1.upload("vmlinuz", &kernel);
    let rd = h1.upload("initrd.img", &pattern(30_000, 14));
    let m = mac(5);
    h1.post("/v1/nodes", json!({ "id": "n1", "macs": [mac_colons(m)] }))
        .expect(201);
    h1.set_deploy("n1", &k, &rd);
    h1.wait_nodes_replicated(&["n1"], &["h1", "h2", "h3"], Duration::from_secs(30));
    let t = token_of(&h1, "n1");
    let (script, _) = configs(m);
    let (st, before) = raw_get(
        Some(STRANGER),
        f.host("h1").http(),
        &format!("/_t/{t}/{script}"),
    );
    assert_eq!(st, 200);

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
        || tftp_from(STRANGER, tftp, &format!("/_t/{t}/nodes/n1/kernel")).ok(),
    );
    eprintln!(
        "[node_tokens] {owner} took n1 over and served its kernel for the same token {:?} after the kill ({})",
        t0.elapsed(),
        l.label()
    );
    assert_eq!(bytes, kernel, "the same kernel from {owner}");
    assert_eq!(
        token_of(&new.api, "n1"),
        t,
        "the token came with the replica"
    );
    let (st, after) = raw_get(Some(STRANGER), http, &format!("/_t/{t}/{script}"));
    assert_eq!(st, 200);
    assert!(after == before, "the same script, byte for byte");
    assert_eq!(
        raw_get(Some(STRANGER), http, &format!("/_t/{t}/nodes/n1/kernel")).0,
        200
    );
    assert_eq!(raw_get(Some(STRANGER), http, "/nodes/n1/kernel").0, 403);
    assert_eq!(
        tftp_from(
            STRANGER,
            tftp,
            &format!("_t/{}/nodes/n1/kernel", other_token(&t))
        ),
        Err(2)
    );
}
