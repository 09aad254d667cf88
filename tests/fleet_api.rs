//! Writes and reads at fleet size, against a real `baton serve` on loopback:
//!
//! - `baton node import FILE` (the CLI) enrolls and profiles hundreds of nodes in one
//!   request, in a few log entries, reports bad lines by number and reason, and a
//!   re-run changes nothing; changed lines are reported as updates with their fields,
//!   and the served files follow;
//! - the import API answers JSON or streamed progress (NDJSON), refuses bodies over its
//!   limit before reading them, and bounds each line;
//! - `GET /v1/nodes` pages by id with `limit` and a cursor (`X-Next-Cursor`, `Link`),
//!   every node exactly once, filters by owner, group, arch, state, handoff, profile and
//!   MAC, and a plain GET is still the whole array; the CLI pages through transparently.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use common::data::{self, mac_colons};
use common::host::{Host, HostBuilder, TOKEN};
use common::pattern;

/// Nodes of the test fleet.
const N: usize = 300;

fn mac(i: usize) -> String {
    mac_colons(data::mac(i))
}

fn id(i: usize) -> String {
    format!("node-{i:04}")
}

/// CSV of nodes `0..n`: even ones deploy `vmlinuz`/`initrd.img` by name, odd ones have
/// no profile; every third is aarch64 in group rack2.
fn fleet_csv(n: usize, cmdline: impl Fn(usize) -> String) -> String {
    let mut s = String::from("id,macs,group,arch,kind,kernel,ramdisk,cmdline\n");
    for i in 0..n {
        let (group, arch) = if i % 3 == 0 {
            ("rack2", "aarch64")
        } else {
            ("", "x86_64")
        };
        let profile = if i % 2 == 0 {
            format!("deploy,vmlinuz,initrd.img,\"{}\"", cmdline(i))
        } else {
            ",,,".to_string()
        };
        s.push_str(&format!("{},{},{group},{arch},{profile}\n", id(i), mac(i)));
    }
    s
}

/// Runs the CLI against `s`: (success, stdout, stderr).
fn cli(s: &Host, args: &[&str]) -> (bool, String, String) {
    let out = s.api.cli(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.stderr,
    )
}

/// `baton node import FILE --json`: (success, report, stderr).
fn import(s: &Host, file: &Path) -> (bool, Value, String) {
    let (ok, out, err) = cli(s, &["node", "import", file.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("import --json printed no JSON ({e}): {out}\n{err}"));
    (ok, v, err)
}

fn counts(r: &Value) -> [u64; 5] {
    ["lines", "created", "updated", "unchanged", "failed"].map(|k| r[k].as_u64().unwrap_or(999))
}

/// A server with kernel and ramdisk uploaded under the names the CSV uses.
fn server() -> (Host, String) {
    let s = HostBuilder::temp().start();
    let kd = s.api.upload("vmlinuz", &pattern(200_000, 1));
    s.api.upload("initrd.img", &pattern(300_000, 2));
    (s, kd)
}

#[test]
fn cli_import_creates_reports_bad_lines_and_a_rerun_changes_nothing() {
    let (s, kd) = server();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.csv");
    let mut csv = fleet_csv(N, |_| "console=ttyS0 ip=dhcp".into());
    // Lines N+2.. are bad, each for its own reason.
    csv.push_str(&format!("{},{}\n", id(5), mac(900))); // listed twice
    csv.push_str("bad id!,52:54:03:99:00:01\n");
    csv.push_str("node-x1,52:54:03:zz:00:01\n");
    csv.push_str(&format!("node-x2,{}\n", mac(7))); // MAC of node-0007
    csv.push_str("node-x3,52:54:03:99:00:03,,,deploy,no-such-kernel,initrd.img,\n");
    csv.push_str("node-x4,52:54:03:99:00:04,,,local,vmlinuz,,\n");
    csv.push_str(&format!(
        "node-x5,52:54:03:99:00:05,,,{}\n",
        "x".repeat(20_000)
    ));
    std::fs::write(&file, &csv).unwrap();
    let before = s.api.get("/v1/status").expect(200)["last_event"].clone();

    let (ok, r, err) = import(&s, &file);
    assert!(!ok, "an import with refused lines exits non-zero: {r}");
    assert!(err.contains("7 line(s)"), "{err}");
    assert_eq!(counts(&r), [N as u64 + 7, N as u64, 0, 0, 7], "{r}");
    let first_bad = N as u64 + 2;
    let failures: Vec<(u64, String, String)> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["line"].as_u64().unwrap(),
                f["code"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("duplicate", "also on line 7"),
        ("invalid", "invalid node id"),
        ("parse", "invalid MAC"),
        ("mac_in_use", "node-0007"),
        (
            "unknown_artifact",
            "no artifact is named \"no-such-kernel\"",
        ),
        ("profile", "not allowed with kind \"local\""),
        ("parse", "longer than"),
    ];
    assert_eq!(failures.len(), want.len(), "{failures:?}");
    for (i, ((line, code, message), (wcode, wmsg))) in failures.iter().zip(want).enumerate() {
        assert_eq!(*line, first_bad + i as u64, "{failures:?}");
        assert_eq!(code, wcode, "line {line}: {message}");
        assert!(message.contains(wmsg), "line {line}: {message}");
    }
    // Many nodes per log entry: a few hundred nodes, a handful of entries.
    let entries = r["log_entries"].as_u64().unwrap();
    assert!(
        (1..=10).contains(&entries),
        "{entries} log entries for {N} nodes"
    );

    // The nodes are there with what the file said, profiles resolved by name.
    let n0 = s.api.get(&format!("/v1/nodes/{}", id(0))).expect(200);
    assert_eq!(n0["group"], "rack2");
    assert_eq!(n0["arch"], "aarch64");
    assert_eq!(n0["owner"], "h1");
    assert_eq!(n0["boot_profile"]["kind"], "deploy");
    assert_eq!(n0["boot_profile"]["kernel"], kd);
    assert_eq!(n0["files"].as_array().map(Vec::len), Some(5), "{n0}");
    let n1 = s.api.get(&format!("/v1/nodes/{}", id(1))).expect(200);
    assert_eq!(n1["boot_profile"], Value::Null);
    assert_eq!(n1["group"], "default");
    // Its boot-loader config is served (over HTTP, from the store).
    let cfg = format!("/pxelinux.cfg/01-{}", mac(2).replace(':', "-"));
    let served = s.api.anonymous("GET", &cfg, &[], None);
    assert_eq!(served.status, 200, "{cfg}: {}", served.text());
    assert!(
        served.text().contains("console=ttyS0 ip=dhcp"),
        "{}",
        served.text()
    );

    // Again: nothing changes, not an event. Unchanged nodes cost no log entry; the
    // one entry left carries the line only the state machine can judge (its MAC
    // belongs to another node), refused again.
    let last = s.api.get("/v1/status").expect(200)["last_event"].clone();
    assert_ne!(last, before);
    let (_, r2, _) = import(&s, &file);
    assert_eq!(counts(&r2), [N as u64 + 7, 0, 0, N as u64, 7], "{r2}");
    assert_eq!(r2["failures"], r["failures"]);
    assert_eq!(r2["log_entries"], 1, "{r2}");
    assert_eq!(s.api.get("/v1/status").expect(200)["last_event"], last);

    // Two lines changed: reported as updates naming what changed; old paths vanish.
    let csv = fleet_csv(N, |i| {
        if i == 4 {
            "console=ttyS1".into()
        } else {
            "console=ttyS0 ip=dhcp".into()
        }
    })
    .replace(&mac(2), &mac(1002))
    .replace(
        &format!("{},{},,x86_64,,,,", id(7), mac(7)),
        &format!("{},{},rack3,x86_64,,,,", id(7), mac(7)),
    );
    std::fs::write(&file, csv).unwrap();
    let (ok, r3, err) = import(&s, &file);
    assert!(ok, "{err}");
    assert_eq!(counts(&r3), [N as u64, 0, 3, N as u64 - 3, 0], "{r3}");
    let updates: Vec<(String, Vec<String>)> = r3["updated_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["node"].as_str().unwrap().to_string(),
                u["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        updates,
        vec![
            (id(2), f(&["macs", "profile"])),
            (id(4), f(&["profile"])),
            (id(7), f(&["group"])),
        ]
    );
    assert_eq!(s.api.anonymous("GET", &cfg, &[], None).status, 404);
    let moved = format!("/pxelinux.cfg/01-{}", mac(1002).replace(':', "-"));
    assert_eq!(s.api.anonymous("GET", &moved, &[], None).status, 200);
}

#[test]
fn import_api_answers_json_or_streamed_progress_and_bounds_its_input() {
    let (s, _) = server();
    // JSON lines, plain JSON answer.
    let mut body = String::new();
    for i in 0..150 {
        body.push_str(
            &json!({
                "id": id(i),
                "macs": [mac(i)],
                "profile": { "kind": "instance", "kernel": "vmlinuz", "ramdisk": "initrd.img" }
            })
            .to_string(),
        );
        body.push('\n');
    }
    body.push_str("{\"id\": \"n-bad\", \"macs\": [\"52:54:00:00:00:01\"], \"colour\": 1}\n");
    let r = s
        .api
        .send("POST", "/v1/nodes:import", &[], Some(body.as_bytes()))
        .expect(200);
    assert_eq!(counts(&r), [151, 150, 0, 0, 1], "{r}");
    assert!(
        r["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{r}"
    );
    // The same as CSV, streamed: progress lines, the report last.
    let csv: String = (0..150).fold(String::new(), |mut s, i| {
        s.push_str(&format!(
            "{},{},,,instance,vmlinuz,initrd.img\n",
            id(i),
            mac(i)
        ));
        s
    });
    let r = s.api.send(
        "POST",
        "/v1/nodes:import?format=csv",
        &[("Accept", "application/x-ndjson")],
        Some(csv.as_bytes()),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let report = lines.last().unwrap();
    assert_eq!(report["type"], "report", "{lines:?}");
    assert_eq!(counts(report), [150, 0, 0, 150, 0], "{report}");
    assert!(lines[..lines.len() - 1]
        .iter()
        .all(|l| l["type"] == "progress"));
    assert!(lines.len() >= 2, "at least one progress line: {lines:?}");

    // A body declared larger than the limit is refused before it is read.
    let mut c = std::net::TcpStream::connect(s.http()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "POST /v1/nodes:import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 200000000\r\n\r\nid,macs\n"
    )
    .unwrap();
    let mut head = [0u8; 512];
    let n = c.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("larger than 67108864 bytes"), "{head}");
    // Unknown parameters and formats are refused by name.
    s.api
        .send("POST", "/v1/nodes:import?format=xml", &[], Some(b""))
        .expect_field_error("format");
}

/// Ids of every node of `GET path` followed page by page; asserts the paging headers.
fn follow(s: &Host, path: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut next = Some(path.to_string());
    while let Some(p) = next.take() {
        let r = s.api.get(&p);
        let v = r.expect(200);
        pages += 1;
        ids.extend(
            v.as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_str().unwrap().to_string()),
        );
        if let Some(c) = r.header("x-next-cursor") {
            let link = r.header("link").expect("a Link with the next cursor");
            assert!(link.ends_with(">; rel=\"next\""), "{link}");
            let url = &link[1..link.find('>').unwrap()];
            assert!(url.contains(&format!("cursor={c}")), "{link}");
            next = Some(url.to_string());
        } else {
            assert!(r.header("link").is_none());
        }
    }
    (ids, pages)
}

#[test]
fn node_lists_page_by_id_filter_and_the_cli_pages_through() {
    let (s, _) = server();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.csv");
    std::fs::write(&file, fleet_csv(N, |_| String::new())).unwrap();
    let (ok, r, err) = import(&s, &file);
    assert!(ok, "{r} {err}");
    s.api
        .patch(
            &format!("/v1/nodes/{}", id(11)),
            json!({ "provision_state": "active" }),
        )
        .expect(200);

    let all: Vec<String> = (0..N).map(id).collect();
    // A plain GET is the whole array, as before.
    let plain = s.api.get("/v1/nodes");
    assert!(plain.header("x-next-cursor").is_none());
    let v = plain.expect(200);
    assert_eq!(v.as_array().map(Vec::len), Some(N));
    // Pages of 70: every node once, in id order.
    let (ids, pages) = follow(&s, "/v1/nodes?limit=70");
    assert_eq!(ids, all);
    assert_eq!(pages, 5);
    // Filters, also across pages.
    let (ids, _) = follow(&s, "/v1/nodes?group=rack2&profile=deploy&limit=13");
    let want: Vec<String> = (0..N).filter(|i| i % 6 == 0).map(id).collect();
    assert_eq!(ids, want);
    for (q, want) in [
        (
            "arch=x86_64&profile=none",
            (0..N).filter(|i| i % 3 != 0 && i % 2 == 1).count(),
        ),
        ("provision_state=active", 1),
        ("handoff=migrating", 0),
        ("handoff=none", N),
        ("stuck=false", N),
        ("owner=h1", N),
        ("owner=nobody", 0),
        (&format!("mac={}", mac(42).replace(':', "-")), 1),
    ] {
        let v = s.api.get(&format!("/v1/nodes?{q}")).expect(200);
        assert_eq!(v.as_array().map(Vec::len), Some(want), "{q}");
    }
    // Bad paging or filter parameters name themselves.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("cursor=..%2F", "cursor"),
        ("provision_state=lost", "provision_state"),
        ("colour=red", "colour"),
    ] {
        s.api
            .get(&format!("/v1/nodes?{q}"))
            .expect_field_error(field);
    }

    // The CLI lists every node, 64 per request, and prints the server's JSON.
    let (ok, out, err) = cli(&s, &["node", "list", "--page-size", "64", "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed, v_all(&s));
    let (ok, out, _) = cli(
        &s,
        &["node", "list", "--group", "rack2", "--page-size", "7"],
    );
    assert!(ok);
    let rows: BTreeSet<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(rows.len(), N / 3, "{out}");
    let (ok, out, _) = cli(
        &s,
        &["node", "list", "--limit", "5", "--page-size", "2", "--json"],
    );
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    let (ok, _, err) = cli(&s, &["node", "list", "--handoff", "sideways"]);
    assert!(!ok && err.contains("--handoff sideways"), "{err}");

    // Artifacts page the same way (by digest), each with its holders.
    let arts = s.api.get("/v1/artifacts").expect(200);
    let total = arts.as_array().unwrap().len();
    assert!(total > N, "rendered files are artifacts too: {total}");
    let mut seen = Vec::new();
    let mut next = Some("/v1/artifacts?limit=100".to_string());
    while let Some(p) = next.take() {
        let r = s.api.get(&p);
        seen.extend(
            r.expect(200)
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["digest"].clone()),
        );
        next = r
            .header("x-next-cursor")
            .map(|c| format!("/v1/artifacts?limit=100&cursor={c}"));
    }
    assert_eq!(seen.len(), total);
    let named = s.api.get("/v1/artifacts?name=vmlinuz").expect(200);
    assert_eq!(named.as_array().map(Vec::len), Some(1));
    assert_eq!(named[0]["hosts"], json!(["h1"]));
}

fn v_all(s: &Host) -> Value {
    s.api.get("/v1/nodes").expect(200)
}
