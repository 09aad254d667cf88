//! Boot timelines on one real `baton serve`: a node boots from its own address on
//! loopback (proxy-DHCP on loopback ports, TFTP, HTTP boot, the OS's done report) and
//! `GET /v1/nodes/{id}/boots`, `baton node boots`, `baton node show` and `/metrics`
//! show every stage with its host, bytes and errors; records survive a restart; a
//! storm of records adds no Raft entries; a node that loops on DHCP or stalls is
//! flagged stuck once per transition (an event, a metric, `node show`).

mod common;

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::api::{metric_value, raw_request};
use common::dhcp::ask_from;
use common::host::{Host, HostBuilder};
use common::tftp::{fetch, rrq, Fetch, Peer};
use common::{pattern, wait_until};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x5b, 0x00, 0x01];
const MAC_STR: &str = "52:54:00:5b:00:01";
const MAC_DASHES: &str = "52-54-00-5b-00-01";
/// The node's own address on loopback.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);

struct Lab {
    s: Host,
    kernel: String,
    ramdisk: String,
}

/// A PXE server with proxy-DHCP on loopback ports, node `n1` on a deploy profile and a
/// loader in the TFTP root; `boots_toml` goes into `[boots]`.
fn lab(boots_toml: &str) -> Lab {
    lab_config(&format!("[boots]\n{boots_toml}\n"))
}

/// [`lab`] with the whole config file given.
fn lab_config(toml: &str) -> Lab {
    let s = HostBuilder::pxe_temp().dhcp_loopback().config(toml).start();
    s.api
        .post("/v1/nodes", json!({ "id": "n1", "macs": [MAC_STR] }))
        .expect(201);
    let kernel = s.api.upload("vmlinuz", &pattern(200_000, 1));
    let ramdisk = s.api.upload("initrd", &pattern(300_000, 2));
    s.api
        .put(
            "/v1/nodes/n1/profile",
            json!({ "kind": "deploy", "kernel": kernel, "ramdisk": ramdisk, "cmdline": "console=ttyS0" }),
        )
        .expect(200);
    s.put("undionly.kpxe", &pattern(40_000, 3));
    Lab { s, kernel, ramdisk }
}

/// A DISCOVER from the node's address; the boot file of the answer, if any came.
fn ask_dhcp(s: &Host, xid: u32) -> Option<String> {
    ask_from(NODE_IP, s.dhcp(), MAC, xid, Duration::from_secs(3))
}

/// Fetches `name` over TFTP from the node's address.
fn tftp(s: &Host, name: &str, opts: &[(&str, &str)]) -> Result<Vec<u8>, String> {
    let peer = Peer::bind(&format!("{NODE_IP}:0"));
    fetch(&peer, s.tftp(), &rrq(name, opts), Fetch::default())
        .map(|d| d.data)
        .map_err(|e| e.to_string())
}

/// A plain HTTP/1.1 request from `from` (no token); status and body.
fn http_from(from: Ipv4Addr, s: &Host, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
    raw_request(Some(from), s.http(), method, path, Some(body))
}

/// The node file serving `digest`.
fn file_of(s: &Host, digest: &str) -> String {
    let files = s.api.get("/v1/nodes/n1/files").expect(200);
    files
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["digest"] == json!(digest))
        .and_then(|f| f["path"].as_str())
        .unwrap_or_else(|| panic!("no file with {digest}: {files}"))
        .to_string()
}

/// `baton ARGS` against `s`, which must succeed; its stdout.
fn cli(s: &Host, args: &[&str]) -> String {
    let out = s.api.cli(args);
    assert!(
        out.status.success(),
        "baton {args:?}: {}\n{}",
        out.status,
        out.stderr
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn steps(attempt: &Value) -> Vec<(String, String, u64)> {
    attempt["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
                s["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn boots(s: &Host) -> Value {
    s.api.get("/v1/nodes/n1/boots?attempts=5").expect(200)
}

fn events_of(s: &Host, kind: &str) -> Vec<Value> {
    let e = s.api.get("/v1/events?since=0&limit=10000").expect(200);
    e["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// A firmware runs a file it fetched before it asks for the next one. The server records
/// a transfer when the last ACK arrives, just after the client has its bytes: without
/// this pause the next request could be recorded first on a busy machine.
fn runs_what_it_fetched() {
    std::thread::sleep(Duration::from_millis(50));
}

fn boot_once(l: &Lab) {
    let s = &l.s;
    assert_eq!(ask_dhcp(s, 1).as_deref(), Some("undionly.kpxe"));
    // The ROM's size probe, then the loader.
    let peer = Peer::bind(&format!("{NODE_IP}:0"));
    peer.send(s.tftp(), &rrq("undionly.kpxe", &[("tsize", "0")]));
    let (_, from) = peer.expect("OACK of the size probe");
    peer.error(
        from,
        baton::wire::tftp::ErrorCode::OptionNegotiation,
        "size probe",
    );
    assert_eq!(tftp(s, "undionly.kpxe", &[]).unwrap().len(), 40_000);
    runs_what_it_fetched();
    // pxelinux looks for files that are not there first.
    assert!(tftp(s, "pxelinux.cfg/C0A80001", &[]).is_err());
    tftp(s, &format!("pxelinux.cfg/01-{MAC_DASHES}"), &[]).unwrap();
    runs_what_it_fetched();
    tftp(s, &file_of(s, &l.kernel), &[("blksize", "1400")]).unwrap();
    // The ramdisk over HTTP boot.
    let (st, body) = raw_request(
        Some(NODE_IP),
        s.http(),
        "GET",
        &format!("/boot/n1/{}", file_of(s, &l.ramdisk)),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(body.len(), 300_000);
}

#[test]
fn a_boot_shows_every_stage_with_host_bytes_and_errors() {
    let l = lab("");
    let s = &l.s;
    boot_once(&l);
    // The OS reports; only from the node's own address (node_files = bound).
    let (st, body) = http_from(Ipv4Addr::LOCALHOST, s, "POST", "/boot/n1/done", "");
    assert_eq!(
        st,
        403,
        "done from another address: {}",
        String::from_utf8_lossy(&body)
    );
    let (st, body) = http_from(
        NODE_IP,
        s,
        "POST",
        "/boot/n1/done",
        r#"{"message": "deploy ramdisk up"}"#,
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let (st, _) = http_from(NODE_IP, s, "POST", "/boot/nope/done", "");
    assert_eq!(st, 404);

    let b = wait_until(Duration::from_secs(5), "the done record", || {
        let b = boots(s);
        (b["attempts"][0]["health"]["state"] == "done").then_some(b)
    });
    assert_eq!(b["attempts"].as_array().unwrap().len(), 1, "{b:#}");
    let a = &b["attempts"][0];
    assert_eq!(a["hosts"], json!(["h1"]));
    assert_eq!(
        steps(a),
        vec![
            ("dhcp".into(), "ok".into(), 1),
            ("loader".into(), "size_probe".into(), 1),
            ("loader".into(), "ok".into(), 1),
            ("config".into(), "not_found".into(), 1),
            ("config".into(), "ok".into(), 1),
            ("kernel".into(), "ok".into(), 1),
            ("ramdisk".into(), "ok".into(), 1),
            ("done".into(), "ok".into(), 1),
        ],
        "{a:#}"
    );
    let st = a["steps"].as_array().unwrap();
    assert_eq!(st[0]["path"], "undionly.kpxe");
    assert_eq!(st[0]["firmware"], "pxe");
    assert_eq!(st[0]["client"], NODE_IP.to_string());
    assert_eq!(st[2]["bytes"], 40_000);
    assert_eq!(st[5]["bytes"], 200_000);
    assert_eq!(st[5]["proto"], "tftp");
    assert!(st[5]["duration_ms"].is_u64());
    assert_eq!(st[6]["proto"], "http");
    assert_eq!(st[6]["bytes"], 300_000);
    assert_eq!(st[7]["detail"], "deploy ramdisk up");
    assert!(a["time_to_boot_ms"].is_u64());
    assert_eq!(a["errors"], 1);
    assert_eq!(b["hosts"], json!([{ "host": "h1", "records": 8 }]));

    // The CLI.
    let out = cli(s, &["node", "boots", "n1"]);
    println!("baton node boots n1:\n{out}");
    for want in [
        "attempt 1",
        "done: the OS reported",
        "kernel",
        "not_found",
        "undionly.kpxe",
        "h1",
    ] {
        assert!(out.contains(want), "`node boots` lacks {want:?}:\n{out}");
    }
    let out = cli(s, &["node", "show", "n1"]);
    assert!(out.contains("last boot") && out.contains("done"), "{out}");
    let shown: Value = serde_json::from_str(&cli(s, &["node", "show", "n1", "--json"])).unwrap();
    assert_eq!(shown["boot"]["health"]["state"], "done");

    // Metrics per group, no node label.
    let m = s.api.metrics();
    for (series, want) in [
        (
            r#"baton_boot_stages_total{group="default",stage="kernel",status="ok"}"#,
            1.0,
        ),
        (
            r#"baton_boot_stages_total{group="default",stage="config",status="not_found"}"#,
            1.0,
        ),
        (
            r#"baton_boot_seconds_count{group="default",until="files"}"#,
            1.0,
        ),
        (
            r#"baton_boot_seconds_count{group="default",until="done"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metric_value(&m, series), Some(want), "{series} in\n{m}");
    }
    assert!(!m.contains("node=\""), "no per-node label in /metrics");

    // Records are this host's local file: they survive a crash and a restart.
    let b_before = boots(s);
    let mut l = l;
    l.s.kill9();
    l.s.start();
    let b_after = boots(&l.s);
    assert_eq!(
        steps(&b_after["attempts"][0]),
        steps(&b_before["attempts"][0])
    );
    assert!(l.s.data_dir().join("boots.db").exists());
}

#[test]
fn a_storm_of_records_adds_no_raft_entries() {
    // 150 DISCOVERs of one MAC: above the per-MAC answer limit (60 a minute) otherwise.
    let l = lab_config("[dhcp]\nanswers_per_mac_minute = 1000\n");
    let s = &l.s;
    let index = |s: &Host| {
        s.api.get("/v1/cluster").expect(200)["last_log_index"]
            .as_u64()
            .unwrap()
    };
    let written = |s: &Host| s.api.metric("baton_boot_records_written_total");
    let before = index(s);
    let started = Instant::now();
    for i in 0..150 {
        ask_dhcp(s, 100 + i).expect("an answer");
    }
    for _ in 0..50 {
        tftp(s, "undionly.kpxe", &[("blksize", "1400")]).unwrap();
    }
    wait_until(Duration::from_secs(5), "200 records written", || {
        (written(s) >= 200.0).then_some(())
    });
    let grew = index(s) - before;
    let secs = started.elapsed().as_secs() + 1;
    // Lease renewals (one a second) are the only entries a quiet host appends.
    assert!(
        grew <= secs + 3,
        "{grew} log entries in {secs} s for 200 boot records"
    );
    println!("200 boot records in {secs} s: {grew} Raft log entries (lease renewals)");
}

#[test]
fn a_dhcp_loop_and_a_stall_are_flagged_once_each() {
    let l = lab("stall_secs = 5\ndhcp_loop_requests = 3\ndhcp_loop_secs = 1");
    let s = &l.s;
    // The node asks and asks, and never fetches (a firewall on udp/69, say).
    for i in 0..5 {
        assert!(ask_dhcp(s, 10 + i).is_some());
        thread::sleep(Duration::from_millis(300));
    }
    let ev = wait_until(Duration::from_secs(10), "a boot_stuck event", || {
        let e = events_of(s, "boot_stuck");
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(ev[0]["node"], "n1");
    assert_eq!(ev[0]["host"], "h1");
    assert_eq!(ev[0]["data"]["kind"], "dhcp_loop");
    assert!(
        ev[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("without fetching"),
        "{ev:?}"
    );
    let stuck = r#"baton_boot_stuck_nodes{group="default"}"#;
    assert_eq!(s.api.metric_or_zero(stuck), 1.0);
    assert_eq!(
        s.api
            .metric_or_zero(r#"baton_boot_stuck_total{group="default",kind="dhcp_loop"}"#),
        1.0
    );
    let shown = s.api.get("/v1/nodes/n1").expect(200);
    assert_eq!(shown["boot"]["health"]["state"], "stuck", "{shown:#}");
    assert_eq!(shown["boot"]["health"]["kind"], "dhcp_loop");
    let out = cli(s, &["node", "show", "n1"]);
    assert!(
        out.contains("boot stuck") && out.contains("dhcp_loop"),
        "{out}"
    );
    // More requests: still one event (one per transition, not per packet).
    for i in 0..3 {
        ask_dhcp(s, 20 + i);
    }
    thread::sleep(Duration::from_secs(3));
    assert_eq!(events_of(s, "boot_stuck").len(), 1);

    // It fetches its loader: recovered, once.
    tftp(s, "undionly.kpxe", &[]).unwrap();
    let rec = wait_until(Duration::from_secs(10), "a boot_recovered event", || {
        let e = events_of(s, "boot_recovered");
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(rec.len(), 1);
    assert_eq!(s.api.metric_or_zero(stuck), 0.0);

    // Then nothing more: after stall_secs the boot is stalled after its loader.
    let ev = wait_until(Duration::from_secs(15), "a second boot_stuck", || {
        let e = events_of(s, "boot_stuck");
        (e.len() == 2).then_some(e)
    });
    assert_eq!(ev[1]["data"]["kind"], "stalled");
    assert!(
        ev[1]["data"]["reason"].as_str().unwrap().contains("loader"),
        "{ev:?}"
    );
    assert_eq!(s.api.metric_or_zero(stuck), 1.0);
    let b = boots(s);
    let last = b["attempts"].as_array().unwrap().last().unwrap();
    assert_eq!(last["health"]["kind"], "stalled", "{b:#}");
    // The flag survives a crash and a restart without a second event.
    let mut l = l;
    l.s.kill9();
    l.s.start();
    thread::sleep(Duration::from_secs(3));
    assert_eq!(events_of(&l.s, "boot_stuck").len(), 2);
    assert_eq!(events_of(&l.s, "boot_recovered").len(), 1);
}
