//! The admin API, TFTP and HTTP boot of a real `baton serve`, end to end: enroll a node,
//! import its kernel and ramdisk, set its boot profile, then boot it with real clients
//! (tftp-hpa, HTTP) and compare bytes. Then every endpoint with bad input: each refusal
//! is a 4xx with a JSON body naming what is wrong, and changes nothing.
//!
//! TFTP parts need tftp-hpa: missing, they fail in CI (env `CI`) and are skipped loudly
//! elsewhere.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use common::api::{raw_get, Api};
use common::host::{Host, HostBuilder, TokenSource, TOKEN};
use common::require::require_tftp_hpa;
use common::tftp::{tftp_error_code, tftp_hpa, TFTP_TIMEOUT};
use common::{assert_same_bytes, eventually, pattern};

const MAC: &str = "52:54:00:ec:33:81";
const MAC_DASHES: &str = "52-54-00-ec-33-81";
const MAC2: &str = "52:54:00:ec:33:82";
const MAC2_DASHES: &str = "52-54-00-ec-33-82";
const CMDLINE: &str = "console=ttyS0,115200n8 ip=dhcp";

/// TFTP error codes (RFC 1350).
const TFTP_FILE_NOT_FOUND: u16 = 1;
const TFTP_ACCESS_VIOLATION: u16 = 2;

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn pxelinux(mac_dashes: &str) -> String {
    format!("pxelinux.cfg/01-{mac_dashes}")
}

fn grub(mac_dashes: &str) -> String {
    format!("grub/grub.cfg-01-{mac_dashes}")
}

fn ipxe(mac_dashes: &str) -> String {
    format!("ipxe/{mac_dashes}.ipxe")
}

/// Enrolls `id` with `macs`; returns the node.
#[track_caller]
fn enroll(api: &Api, id: &str, macs: &[&str]) -> Value {
    api.post("/v1/nodes", json!({ "id": id, "macs": macs }))
        .expect(201)
}

/// Sets a deploy profile; returns the node detail.
#[track_caller]
fn deploy(api: &Api, id: &str, kernel: &str, ramdisk: &str, cmdline: &str) -> Value {
    api.put(
        &format!("/v1/nodes/{id}/profile"),
        json!({ "kind": "deploy", "kernel": kernel, "ramdisk": ramdisk, "cmdline": cmdline }),
    )
    .expect(200)
}

/// A server with node `n1` (MAC [`MAC`]) on a deploy profile.
struct Booted {
    s: Host,
    kernel: Vec<u8>,
    ramdisk: Vec<u8>,
    kd: String,
    rd: String,
}

fn booted(b: HostBuilder) -> Booted {
    let s = b.start();
    enroll(&s.api, "n1", &[MAC]);
    let kernel = pattern(300_000, 1);
    let ramdisk = pattern(1_000_003, 2);
    let kd = s.api.upload("vmlinuz", &kernel);
    let rd = s.api.upload("initrd.img", &ramdisk);
    deploy(&s.api, "n1", &kd, &rd, CMDLINE);
    Booted {
        s,
        kernel,
        ramdisk,
        kd,
        rd,
    }
}

/// Paths of a node's files, from `GET /v1/nodes/{id}/files`.
fn file_paths(api: &Api, id: &str) -> Vec<String> {
    let v = api.get(&format!("/v1/nodes/{id}/files")).expect(200);
    let mut p: Vec<String> = v
        .as_array()
        .expect("files is an array")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_string())
        .collect();
    p.sort();
    p
}

/// Newest event sequence number.
fn last_event(api: &Api) -> u64 {
    api.get("/v1/events?since=0&limit=10000").expect(200)["last"]
        .as_u64()
        .expect("last")
}

// ---------------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------------

#[test]
fn enrolled_node_boots_over_tftp_with_byte_identical_files() {
    if !require_tftp_hpa() {
        return;
    }
    let s = HostBuilder::temp().start();

    // Enroll: the MAC is normalized, the node is owned by this host.
    let n = s
        .api
        .post(
            "/v1/nodes",
            json!({ "id": "n1", "macs": ["52-54-00-EC-33-81"], "group": "rack1", "arch": "x86_64" }),
        )
        .expect(201);
    assert_eq!(n["id"], "n1");
    assert_eq!(n["macs"], json!([MAC]));
    assert_eq!(n["group"], "rack1");
    assert_eq!(n["arch"], "x86_64");
    assert_eq!(n["owner"], "h1");
    assert_eq!(n["provision_state"], "enrolled");
    assert!(n["boot_profile"].is_null(), "{n}");

    // Import kernel and ramdisk: content-addressed by sha256.
    let kernel = pattern(300_000, 11);
    let ramdisk = pattern(700_001, 12);
    let r = s
        .api
        .send("POST", "/v1/artifacts?name=vmlinuz", &[], Some(&kernel));
    let v = r.expect(201);
    assert_eq!(v["created"], true);
    assert_eq!(v["artifact"]["digest"], sha256_hex(&kernel));
    assert_eq!(v["artifact"]["size"], kernel.len());
    assert_eq!(v["artifact"]["name"], "vmlinuz");
    let kd = sha256_hex(&kernel);
    // Same content again: 200, not created.
    let v = s
        .api
        .send(
            "POST",
            "/v1/artifacts?name=vmlinuz-again",
            &[],
            Some(&kernel),
        )
        .expect(200);
    assert_eq!(v["created"], false);
    // With the expected digest given.
    let rd = sha256_hex(&ramdisk);
    s.api
        .send(
            "POST",
            &format!("/v1/artifacts?name=initrd.img&sha256={rd}"),
            &[],
            Some(&ramdisk),
        )
        .expect(201);
    let listed = s.api.get("/v1/artifacts").expect(200);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Boot profile: the node now serves three configs and its kernel and ramdisk.
    let d = deploy(&s.api, "n1", &kd, &rd, CMDLINE);
    assert_eq!(d["boot_profile"]["kind"], "deploy");
    assert_eq!(d["boot_profile"]["cmdline"], CMDLINE);
    let mut want = vec![
        grub(MAC_DASHES),
        ipxe(MAC_DASHES),
        "nodes/n1/kernel".to_string(),
        "nodes/n1/ramdisk".to_string(),
        pxelinux(MAC_DASHES),
    ];
    want.sort();
    assert_eq!(file_paths(&s.api, "n1"), want);
    let shown = s.api.get("/v1/nodes/n1").expect(200);
    assert_eq!(shown["files"].as_array().map(Vec::len), Some(5), "{shown}");
    let kfile = shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "nodes/n1/kernel")
        .expect("kernel row");
    assert_eq!(kfile["digest"], kd.as_str());

    let completed = s.api.metric("baton_tftp_transfers_completed_total");

    // pxelinux, fetched by the path pxelinux itself asks for.
    let cfg = s.tftp_text(&pxelinux(MAC_DASHES));
    assert!(cfg.contains(&format!("APPEND {CMDLINE}\n")), "{cfg}");
    assert!(cfg.contains("LINUX nodes/n1/kernel\n"), "{cfg}");
    assert!(cfg.contains("INITRD nodes/n1/ramdisk\n"), "{cfg}");
    // The kernel over TFTP, byte for byte.
    assert_same_bytes(&s.tftp_ok("nodes/n1/kernel"), &kernel, "kernel over TFTP");
    // A leading slash names the same file.
    assert_same_bytes(
        &s.tftp_ok("/nodes/n1/ramdisk"),
        &ramdisk,
        "ramdisk over TFTP",
    );
    // iPXE and GRUB configurations.
    let script = s.tftp_text(&ipxe(MAC_DASHES));
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains(&format!(
            "kernel /nodes/n1/kernel initrd=ramdisk {CMDLINE} BOOTIF=01-{MAC_DASHES}\n"
        )),
        "{script}"
    );
    let g = s.tftp_text(&grub(MAC_DASHES));
    assert!(g.contains("linux /nodes/n1/kernel "), "{g}");
    assert!(g.contains("initrd /nodes/n1/ramdisk"), "{g}");
    // Shared files of the root are still served beside node files.
    let shared = s.tftp_text("boot.ipxe");
    assert!(shared.contains("chain ipxe/${mac:hexhyp}.ipxe"), "{shared}");

    // Metrics count the transfers.
    assert!(
        eventually(Duration::from_secs(5), || s
            .api
            .metric("baton_tftp_transfers_completed_total")
            >= completed + 6.0),
        "baton_tftp_transfers_completed_total went from {completed} to {}",
        s.api.metric("baton_tftp_transfers_completed_total")
    );
    let st = s.api.get("/v1/status").expect(200);
    assert!(st["tftp"]["completed"].as_u64().unwrap() >= 6, "{st}");
}

#[test]
fn http_boot_serves_ranges_etags_and_head() {
    let b = booted(HostBuilder::temp());
    let (s, ramdisk) = (&b.s, &b.ramdisk);
    let path = "/boot/n1/nodes/n1/ramdisk";
    let etag = format!("\"{}\"", b.rd);
    let completed = s.api.metric("baton_http_boot_completed_total");

    // No token needed for boot files.
    let r = s.api.anonymous("GET", path, &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_same_bytes(&r.body, ramdisk, "ramdisk over HTTP");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        r.header("content-length"),
        Some(ramdisk.len().to_string().as_str())
    );

    // A range.
    let r = s
        .api
        .anonymous("GET", path, &[("Range", "bytes=1000-1999")], None);
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-1999/{}", ramdisk.len()).as_str())
    );
    assert_same_bytes(&r.body, &ramdisk[1000..2000], "bytes 1000-1999");
    // An open-ended range and a suffix range.
    let r = s
        .api
        .anonymous("GET", path, &[("Range", "bytes=1000000-")], None);
    assert_eq!(r.status, 206);
    assert_same_bytes(&r.body, &ramdisk[1_000_000..], "bytes 1000000-");
    let r = s
        .api
        .anonymous("GET", path, &[("Range", "bytes=-10")], None);
    assert_eq!(r.status, 206);
    assert_same_bytes(&r.body, &ramdisk[ramdisk.len() - 10..], "last 10 bytes");
    // If-Range with the current ETag honours the range; with another, sends it all.
    let r = s.api.anonymous(
        "GET",
        path,
        &[("Range", "bytes=0-9"), ("If-Range", &etag)],
        None,
    );
    assert_eq!(r.status, 206);
    let r = s.api.anonymous(
        "GET",
        path,
        &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), ramdisk.len());

    // HEAD: the length, no body.
    let r = s.api.anonymous("HEAD", path, &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(ramdisk.len().to_string().as_str())
    );
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.body.is_empty(), "HEAD returned {} bytes", r.body.len());

    // If-None-Match with the ETag: 304, no body.
    let r = s
        .api
        .anonymous("GET", path, &[("If-None-Match", &etag)], None);
    assert_eq!(r.status, 304, "{}", r.text());
    assert!(r.body.is_empty());
    let r = s
        .api
        .anonymous("GET", path, &[("If-None-Match", "\"other\"")], None);
    assert_eq!(r.status, 200);

    // A range past the end: 416 with the size.
    let len = ramdisk.len();
    let r = s
        .api
        .anonymous("GET", path, &[("Range", &format!("bytes={len}-"))], None);
    r.expect_error(416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );

    // The kernel too, and a config file.
    let r = s
        .api
        .anonymous("GET", "/boot/n1/nodes/n1/kernel", &[], None);
    assert_eq!(r.status, 200);
    assert_same_bytes(&r.body, &b.kernel, "kernel over HTTP");
    let r = s.api.anonymous(
        "GET",
        &format!("/boot/n1/{}", pxelinux(MAC_DASHES)),
        &[],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains(CMDLINE), "{}", r.text());

    // Completed downloads are counted (full, ranges, kernel, config: at least 8).
    assert!(
        eventually(Duration::from_secs(5), || s
            .api
            .metric("baton_http_boot_completed_total")
            >= completed + 8.0),
        "baton_http_boot_completed_total went from {completed} to {}",
        s.api.metric("baton_http_boot_completed_total")
    );
}

#[test]
fn http_boot_refuses_unknown_nodes_and_paths() {
    let b = booted(HostBuilder::temp());
    let s = &b.s;
    enroll(&s.api, "n2", &[MAC2]);
    for path in [
        "/boot/nope/nodes/nope/kernel",
        "/boot/n1/nodes/n1/nosuch",
        // n2 has no files; n1's are not reachable under n2's prefix or vice versa.
        "/boot/n2/nodes/n1/kernel",
        "/boot/n1/%2e%2e/%2e%2e/etc/passwd",
        "/boot/n1/boot.ipxe",
    ] {
        let r = s.api.anonymous("GET", path, &[], None);
        r.expect_error(404);
    }
}

/// The iPXE script uses path-absolute URIs (`/nodes/n1/kernel`) and says it works over
/// TFTP and HTTP alike (src/render/mod.rs module doc, tftp-root-template/README.md):
/// iPXE resolves them against the script's own URI. Fetched over HTTP boot from
/// `/boot/n1/ipxe/<mac>.ipxe`, `/nodes/n1/kernel` resolves to `http://host/nodes/n1/kernel`,
/// which must serve the kernel.
#[test]
fn ipxe_script_fetched_over_http_can_fetch_its_kernel_and_ramdisk() {
    let b = booted(HostBuilder::temp());
    let s = &b.s;
    let r = s
        .api
        .anonymous("GET", &format!("/boot/n1/{}", ipxe(MAC_DASHES)), &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let script = r.text();
    let uri_of = |cmd: &str| -> String {
        script
            .lines()
            .find(|l| l.starts_with(cmd))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with('/')))
            .unwrap_or_else(|| panic!("no `{cmd}` line with a path in:\n{script}"))
            .to_string()
    };
    for (cmd, want, what) in [
        ("kernel ", &b.kernel, "kernel"),
        ("initrd ", &b.ramdisk, "ramdisk"),
    ] {
        // RFC 3986: a path-absolute reference keeps scheme and authority only.
        let uri = uri_of(cmd);
        let r = s.api.anonymous("GET", &uri, &[], None);
        assert_eq!(
            r.status,
            200,
            "the script fetched from http://{}/boot/n1/{} says `{cmd}{uri}`, which \
             resolves to http://{}{uri}; that URL answers {}: {}",
            s.http(),
            ipxe(MAC_DASHES),
            s.http(),
            r.status,
            r.text()
        );
        assert_same_bytes(&r.body, want, what);
    }
}

/// `tftp -m octet HOST PORT -c get NAME LOCAL` with a name of raw bytes (tftp-hpa sends
/// them as given). `Err` holds what the client printed.
fn tftp_hpa_raw(s: &Host, name: &[u8]) -> Result<Vec<u8>, String> {
    use std::os::unix::ffi::OsStrExt;
    tftp_hpa(
        None,
        s.tftp(),
        "octet",
        std::ffi::OsStr::from_bytes(name),
        TFTP_TIMEOUT,
    )
}

/// Node files are found by the names firmware and tools really send, with the same
/// rules as the shared directory (issues 12 and 18): doubled or Windows separators,
/// `.` components, MACs in uppercase, a trailing 0xFF after the name, over TFTP and
/// HTTP alike.
#[test]
fn node_files_are_found_by_the_names_firmware_sends() {
    if !require_tftp_hpa() {
        return;
    }
    let b = booted(HostBuilder::temp());
    let s = &b.s;
    let pxe = s.tftp_ok(&pxelinux(MAC_DASHES));
    let upper = MAC_DASHES.to_uppercase();
    for name in [
        format!("pxelinux.cfg//01-{MAC_DASHES}"),
        format!("./pxelinux.cfg/01-{MAC_DASHES}"),
        format!("pxelinux.cfg\\01-{MAC_DASHES}"),
        format!("/pxelinux.cfg/./01-{MAC_DASHES}"),
        pxelinux(&upper),
        "pxelinux.cfg//01-52-54-00-Ec-33-81".to_string(),
    ] {
        assert_same_bytes(&s.tftp_ok(&name), &pxe, &name);
    }
    let g = s.tftp_ok(&grub(MAC_DASHES));
    assert_same_bytes(&s.tftp_ok(&grub(&upper)), &g, "GRUB config, uppercase MAC");
    let i = s.tftp_ok(&ipxe(MAC_DASHES));
    assert_same_bytes(&s.tftp_ok(&ipxe(&upper)), &i, "iPXE script, uppercase MAC");
    assert_same_bytes(
        &s.tftp_ok("nodes//n1/./kernel"),
        &b.kernel,
        "kernel by an odd name",
    );
    // The byte old PXE ROMs append (they read past the DHCP boot-file option into its
    // END option): dropped and counted; any other non-UTF-8 byte is refused.
    let mut name = pxelinux(MAC_DASHES).into_bytes();
    name.push(0xff);
    let got = tftp_hpa_raw(s, &name).unwrap_or_else(|e| panic!("name + 0xFF: {e}"));
    assert_same_bytes(&got, &pxe, "name + 0xFF");
    assert!(
        s.api
            .metric_or_zero("baton_tftp_name_fixups_total{kind=\"trailing_byte\"}")
            >= 1.0,
        "{}",
        s.api.metrics()
    );
    name.pop();
    name.extend_from_slice(&[0xfe]);
    let e = tftp_hpa_raw(s, &name).expect_err("name + 0xFE must be refused");
    assert_eq!(tftp_error_code(&e), Some(TFTP_FILE_NOT_FOUND), "{e}");
    // HTTP: the same names, percent-decoded once. Sent raw: HTTP client libraries
    // resolve `%2e%2e` and `//` themselves before sending.
    for path in [
        format!("/boot/n1/pxelinux.cfg//01-{upper}"),
        format!("/boot/n1/pxelinux.cfg%2f01-{MAC_DASHES}"),
        format!("/pxelinux.cfg//01-{upper}"),
        format!("//pxelinux.cfg/%2e/01-{MAC_DASHES}"),
    ] {
        let (status, body) = raw_get(None, s.http(), &path);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        assert_same_bytes(&body, &pxe, &path);
    }
    for (path, want) in [
        ("/boot/n1/pxelinux.cfg/%2e%2e/nodes/n1/kernel", 404),
        ("/boot/n1/%2e%2e/%2e%2e/etc/passwd", 404),
        ("/boot/n1/nodes/n1/..", 404),
        ("/nodes/n1/%2e%2e/n1/kernel", 404),
        ("/nodes/n1/%2E%2e/n1/kernel", 404),
        ("/nodes/n1/k%00", 404),
        ("/nodes/n1/%zz", 400),
        ("/nodes/n1/%ff", 400),
    ] {
        let (status, body) = raw_get(None, s.http(), path);
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn profile_changes_are_served_at_once() {
    if !require_tftp_hpa() {
        return;
    }
    let b = booted(HostBuilder::temp());
    let s = &b.s;
    assert!(s.tftp_text(&pxelinux(MAC_DASHES)).contains(CMDLINE));

    // New command line: the next fetch has it, without any restart.
    deploy(&s.api, "n1", &b.kd, &b.rd, "console=tty0 quiet");
    let cfg = s.tftp_text(&pxelinux(MAC_DASHES));
    assert!(cfg.contains("APPEND console=tty0 quiet\n"), "{cfg}");
    assert!(!cfg.contains(CMDLINE), "{cfg}");

    // New kernel (instance profile): the same path serves the new bytes at once.
    let kernel2 = pattern(123_457, 21);
    let kd2 = s.api.upload("vmlinuz-2", &kernel2);
    s.api
        .put(
            "/v1/nodes/n1/profile",
            json!({ "kind": "instance", "kernel": kd2, "ramdisk": b.rd, "cmdline": "root=/dev/sda1" }),
        )
        .expect(200);
    assert_same_bytes(
        &s.tftp_ok("nodes/n1/kernel"),
        &kernel2,
        "replaced kernel over TFTP",
    );
    let r = s
        .api
        .anonymous("GET", "/boot/n1/nodes/n1/kernel", &[], None);
    assert_same_bytes(&r.body, &kernel2, "replaced kernel over HTTP");
    assert!(s
        .tftp_text(&pxelinux(MAC_DASHES))
        .contains("APPEND root=/dev/sda1\n"));

    // Local boot: configs say so, kernel and ramdisk rows are gone.
    let v = s
        .api
        .put("/v1/nodes/n1/profile", json!({ "kind": "local" }))
        .expect(200);
    assert_eq!(v["boot_profile"]["kind"], "local");
    let mut want = vec![grub(MAC_DASHES), ipxe(MAC_DASHES), pxelinux(MAC_DASHES)];
    want.sort();
    assert_eq!(file_paths(&s.api, "n1"), want);
    let cfg = s.tftp_text(&pxelinux(MAC_DASHES));
    assert!(cfg.contains("LOCALBOOT 0"), "{cfg}");
    assert_eq!(s.tftp_error("nodes/n1/kernel"), TFTP_FILE_NOT_FOUND);
    s.api
        .anonymous("GET", "/boot/n1/nodes/n1/kernel", &[], None)
        .expect_error(404);

    // No profile: nothing served for the node.
    s.api
        .put("/v1/nodes/n1/profile", json!({ "kind": "none" }))
        .expect(200);
    assert!(file_paths(&s.api, "n1").is_empty());
    assert_eq!(s.tftp_error(&pxelinux(MAC_DASHES)), TFTP_FILE_NOT_FOUND);
}

#[test]
fn new_macs_rerender_and_old_paths_vanish() {
    if !require_tftp_hpa() {
        return;
    }
    let b = booted(HostBuilder::temp());
    let s = &b.s;
    enroll(&s.api, "other", &["52:54:00:00:00:99"]);
    assert!(s.tftp_text(&pxelinux(MAC_DASHES)).contains(CMDLINE));

    let n = s
        .api
        .patch("/v1/nodes/n1", json!({ "macs": [MAC2] }))
        .expect(200);
    assert_eq!(n["macs"], json!([MAC2]));
    // Old MAC's files are gone (nothing in the shared root either: file not found).
    for p in [pxelinux(MAC_DASHES), ipxe(MAC_DASHES), grub(MAC_DASHES)] {
        assert_eq!(s.tftp_error(&p), TFTP_FILE_NOT_FOUND, "{p}");
    }
    // New MAC's files are there, with the profile's command line.
    assert!(s.tftp_text(&pxelinux(MAC2_DASHES)).contains(CMDLINE));
    assert!(s
        .tftp_text(&ipxe(MAC2_DASHES))
        .contains(&format!("BOOTIF=01-{MAC2_DASHES}")));
    assert_same_bytes(&s.tftp_ok("nodes/n1/kernel"), &b.kernel, "kernel");

    // A MAC of another node: refused as a whole, nothing changes.
    let before = file_paths(&s.api, "n1");
    let e = s
        .api
        .patch(
            "/v1/nodes/n1",
            json!({ "macs": [MAC2, "52:54:00:00:00:99"] }),
        )
        .expect_error(409);
    assert_eq!(e["details"]["kind"], "mac_in_use", "{e}");
    assert_eq!(e["details"]["node"], "other", "{e}");
    assert_eq!(file_paths(&s.api, "n1"), before);
    assert!(s.tftp_text(&pxelinux(MAC2_DASHES)).contains(CMDLINE));

    // Two MACs: a set of configs for each.
    s.api
        .patch("/v1/nodes/n1", json!({ "macs": [MAC2, MAC] }))
        .expect(200);
    assert_eq!(file_paths(&s.api, "n1").len(), 2 * 3 + 2);
    assert!(s.tftp_text(&pxelinux(MAC_DASHES)).contains(CMDLINE));
    assert!(s.tftp_text(&pxelinux(MAC2_DASHES)).contains(CMDLINE));

    // Deleted: nothing of the node is served any more.
    s.api.delete("/v1/nodes/n1").expect(204);
    for p in [
        pxelinux(MAC_DASHES),
        pxelinux(MAC2_DASHES),
        "nodes/n1/kernel".into(),
    ] {
        assert_eq!(s.tftp_error(&p), TFTP_FILE_NOT_FOUND, "{p}");
    }
}

/// A node owned by another host: its files are refused over TFTP (access violation)
/// and HTTP (409 naming the owner). With no clustering yet, host `b` is started on the
/// data directory host `a` used.
#[test]
fn another_hosts_node_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = booted(HostBuilder::new(dir.path()).host("a"));
    let tftp = require_tftp_hpa();
    if tftp {
        assert!(a.s.tftp_text(&pxelinux(MAC_DASHES)).contains(CMDLINE));
    }
    let status = a.s.terminate(Duration::from_secs(10));
    assert!(status.success(), "host a exited with {status}");

    let b = HostBuilder::new(dir.path()).host("b").start();
    let owned_by_a = b.api.get("/v1/nodes?owner=a").expect(200);
    assert_eq!(owned_by_a.as_array().map(Vec::len), Some(1), "{owned_by_a}");
    assert_eq!(owned_by_a[0]["id"], "n1");
    let owned_by_b = b.api.get("/v1/nodes?owner=b").expect(200);
    assert_eq!(owned_by_b, json!([]));
    let hosts = b.api.get("/v1/hosts").expect(200);
    let names: Vec<(&str, bool, u64)> = hosts
        .as_array()
        .expect("hosts array")
        .iter()
        .map(|h| {
            (
                h["host"]["name"].as_str().unwrap(),
                h["self"].as_bool().unwrap(),
                h["nodes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(names.contains(&("a", false, 1)), "{hosts}");
    assert!(names.contains(&("b", true, 0)), "{hosts}");

    // HTTP boot needs no login, so its refusal says nothing (issue 16): another host's
    // node, an unknown node and a missing file get the same 404 with the same body, no
    // owner, no epoch. The log (and `baton node show`) has the details.
    let unknown = b
        .api
        .anonymous("GET", "/boot/nope/nodes/nope/kernel", &[], None);
    let unknown_body = unknown.expect_error(404);
    let missing = b
        .api
        .anonymous("GET", "/boot/n1/nodes/n1/nosuch", &[], None);
    assert_eq!(missing.expect_error(404), unknown_body);
    for path in ["nodes/n1/kernel", &pxelinux(MAC_DASHES)] {
        let r = b
            .api
            .anonymous("GET", &format!("/boot/n1/{path}"), &[], None);
        let e = r.expect_error(404);
        assert_eq!(
            e, unknown_body,
            "{path}: the same answer as an unknown node"
        );
        let text = r.text();
        for leak in ["owner", "epoch", "\"a\"", "host a", "n1"] {
            assert!(
                !text.contains(leak),
                "{path}: body reveals {leak:?}: {text}"
            );
        }
    }
    assert!(
        b.wait_for_log(
            &[
                "http boot file refused",
                "node=n1",
                "reason=\"not_owner\"",
                "owner=\"a\""
            ],
            Duration::from_secs(5)
        )
        .is_some(),
        "the refusal with its owner must be in the log:\n{}",
        b.log()
    );
    // TFTP: access violation for every file of the node.
    if tftp {
        for path in [
            pxelinux(MAC_DASHES),
            ipxe(MAC_DASHES),
            grub(MAC_DASHES),
            "nodes/n1/kernel".into(),
            "nodes/n1/ramdisk".into(),
        ] {
            assert_eq!(b.tftp_error(&path), TFTP_ACCESS_VIOLATION, "{path}");
        }
        // Names that read as the node's files by the path rules are refused too.
        for path in [
            format!("pxelinux.cfg//01-{}", MAC_DASHES.to_uppercase()),
            "/nodes/n1//kernel".into(),
        ] {
            assert_eq!(b.tftp_error(&path), TFTP_ACCESS_VIOLATION, "{path}");
        }
        // Shared files are still served.
        assert!(b.tftp_text("boot.ipxe").starts_with("#!ipxe"));
    }
}

// ---------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------

/// Every `/v1` route and method, with a body that would be valid.
fn all_routes(digest: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", "/v1/nodes".into(), None),
        (
            "POST",
            "/v1/nodes".into(),
            Some(json!({ "id": "intruder", "macs": ["52:54:00:66:66:66"] })),
        ),
        ("GET", "/v1/nodes/n1".into(), None),
        (
            "PATCH",
            "/v1/nodes/n1".into(),
            Some(json!({ "group": "evil" })),
        ),
        ("DELETE", "/v1/nodes/n1".into(), None),
        (
            "PUT",
            "/v1/nodes/n1/profile".into(),
            Some(json!({ "kind": "local" })),
        ),
        ("GET", "/v1/nodes/n1/files".into(), None),
        ("GET", "/v1/nodes/n1/reservation".into(), None),
        (
            "POST",
            "/v1/nodes/n1/reservation".into(),
            Some(json!({ "holder": "x" })),
        ),
        (
            "PUT",
            "/v1/nodes/n1/reservation".into(),
            Some(json!({ "holder": "x", "token": 1 })),
        ),
        (
            "DELETE",
            "/v1/nodes/n1/reservation?holder=x&token=1".into(),
            None,
        ),
        ("GET", "/v1/artifacts".into(), None),
        ("POST", "/v1/artifacts?name=evil".into(), Some(json!("x"))),
        ("GET", format!("/v1/artifacts/{digest}"), None),
        ("DELETE", format!("/v1/artifacts/{digest}"), None),
        ("GET", "/v1/events?since=0".into(), None),
        ("GET", "/v1/hosts".into(), None),
        ("GET", "/v1/status".into(), None),
    ]
}

#[test]
fn every_api_route_requires_the_token() {
    let s = HostBuilder::temp().start();
    enroll(&s.api, "n1", &[MAC]);
    let d = s.api.upload("blob", b"some bytes");
    let before = s.api.get("/v1/nodes/n1").expect(200);
    let last = last_event(&s.api);

    let wrong = [
        None,
        Some("Bearer wrong-token".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_string()),
        Some("Bearer ".to_string()),
    ];
    // Through ureq, without a body: a request refused on its headers while its body is
    // still on the way can lose its answer (see
    // `refused_request_with_a_body_does_not_break_the_next_request`).
    for (method, path, _) in all_routes(&d) {
        for auth in &wrong {
            let r = s
                .api
                .try_send(method, &path, auth.as_deref(), &[], None)
                .unwrap();
            let e = r.expect_error(401);
            assert_eq!(e["code"], "unauthorized", "{method} {path}: {e}");
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{method} {path}: 401 without WWW-Authenticate: Bearer"
            );
        }
    }
    // With a valid body, head and body in one write: refused all the same.
    for (method, path, body) in all_routes(&d) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: baton\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut c = TcpStream::connect(s.http()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let (status, head) = read_response(&mut c)
            .unwrap_or_else(|| panic!("{method} {path} with a body: no response"));
        assert_eq!(status, 401, "{method} {path} with a body: {head}");
    }
    // Nothing was changed by the refused requests.
    assert_eq!(s.api.get("/v1/nodes/n1").expect(200), before);
    assert_eq!(last_event(&s.api), last);
    assert_eq!(
        s.api
            .get("/v1/artifacts")
            .expect(200)
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // /metrics and /boot need no token.
    let r = s.api.anonymous("GET", "/metrics", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("baton_tftp_transfers_completed_total"));
    assert!(r.text().contains("baton_http_boot_completed_total"));
    let r = s
        .api
        .anonymous("GET", "/boot/n1/nodes/n1/kernel", &[], None);
    assert_eq!(r.status, 404, "no profile yet: not found, not unauthorized");
}

#[test]
fn api_token_from_env_or_data_dir_file() {
    let s = HostBuilder::temp()
        .token(TokenSource::Env("from-the-env-0123456789".into()))
        .start();
    s.api.get("/v1/status").expect(200);
    let other = Api::new(s.http(), TOKEN);
    other.get("/v1/status").expect_error(401);
    drop(s);

    // No token configured: the server creates <data-dir>/api-token (mode 0600) and
    // uses it, and reuses it on the next start.
    let b = HostBuilder::temp().token(TokenSource::File);
    let mut s = b.start();
    s.api.get("/v1/status").expect(200);
    let file = b.data_dir().join("api-token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(
        mode & 0o077,
        0,
        "{} is readable by others: {mode:o}",
        file.display()
    );
    let token = s.api.token().to_string();
    assert!(token.len() >= 32, "token {token:?} is short");
    s.terminate(Duration::from_secs(10));
    let s = b.start();
    assert_eq!(s.api.token(), token);
    s.api.get("/v1/status").expect(200);
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    // RFC 9110 §11.1 (formerly RFC 7235): the auth scheme is case-insensitive.
    let s = HostBuilder::temp().start();
    for auth in [
        format!("Bearer {TOKEN}"),
        format!("bearer {TOKEN}"),
        format!("BEARER {TOKEN}"),
        format!("bEaReR  {TOKEN}"),
    ] {
        let r = s
            .api
            .try_send("GET", "/v1/status", Some(&auth), &[], None)
            .unwrap();
        assert_eq!(r.status, 200, "{auth:?}: {}", r.text());
    }
    for auth in [format!("bearer {TOKEN}x"), format!("basic {TOKEN}")] {
        let r = s
            .api
            .try_send("GET", "/v1/status", Some(&auth), &[], None)
            .unwrap();
        r.expect_error(401);
    }
}

#[test]
fn state_files_are_readable_by_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    // A data directory the server creates itself.
    let data = t.path().join("state");
    let s = HostBuilder::new(&data).start();
    s.api.upload("k", b"kernel bytes");
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data), 0o700, "data dir");
    for f in ["baton.db", "baton.db-wal", "raft-log.db", "raft-log.db-wal"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    for d in ["blobs", "snapshots"] {
        assert_eq!(mode(&data.join(d)), 0o700, "{d}");
    }
}

#[test]
fn reupload_repairs_a_corrupt_blob_of_the_same_size() {
    use std::os::unix::fs::PermissionsExt;
    let b = booted(HostBuilder::temp());
    let s = &b.s;
    let path = "/boot/n1/nodes/n1/kernel";
    // Damage the stored kernel on disk: same length, one byte changed.
    let blob = s
        .data_dir()
        .join("blobs/sha256")
        .join(&b.kd[..2])
        .join(&b.kd);
    let mut bytes = std::fs::read(&blob).unwrap();
    assert_eq!(bytes, b.kernel);
    bytes[1234] ^= 0xff;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    let r = s.api.anonymous("GET", path, &[], None);
    assert_ne!(r.status, 200, "a corrupt blob is never served");

    // The same bytes again: the stored copy is hashed, found damaged and replaced.
    let r = s
        .api
        .send("POST", "/v1/artifacts?name=vmlinuz", &[], Some(&b.kernel));
    let v = r.expect(200);
    assert_eq!(v["created"], false, "{v}");
    assert_eq!(v["repaired"], true, "{v}");
    assert_eq!(sha256_hex(&std::fs::read(&blob).unwrap()), b.kd);
    let r = s.api.anonymous("GET", path, &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_same_bytes(&r.body, &b.kernel, "kernel after repair");
    // An intact copy is kept as it is.
    let v = s
        .api
        .send("POST", "/v1/artifacts?name=vmlinuz", &[], Some(&b.kernel))
        .expect(200);
    assert_eq!(v["repaired"], false, "{v}");
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body) from `c`, through
/// [`read_answer`]: (status, the head in lowercase, one `name: value` line per field,
/// `date` left out). `None` if the connection ends or times out first.
fn read_response(c: &mut TcpStream) -> Option<(u16, String)> {
    let (status, fields, _) = read_answer(c)?;
    let mut head = format!("http/1.1 {status}\r\n");
    for (n, v) in fields {
        head += &format!("{n}: {}\r\n", v.to_ascii_lowercase());
    }
    head += "\r\n";
    Some((status, head))
}

/// A request refused on its headers alone (bad token, bad query) whose body the client
/// sends afterwards: the client must either be able to send its next request on the
/// same keep-alive connection, or be told `Connection: close`. Today the server closes
/// the connection without saying so, and keep-alive clients (ureq, which the crate
/// itself uses) fail their next request with "Unexpected EOF" or "Broken pipe".
#[test]
fn refused_request_with_a_body_does_not_break_the_next_request() {
    let s = HostBuilder::temp().start();
    let body = vec![b'x'; 10_000];
    for (path, auth, refused) in [
        ("/v1/artifacts?name=", true, 400),
        ("/v1/nodes", false, 401),
    ] {
        let mut c = TcpStream::connect(s.http()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let auth_line = if auth {
            format!("Authorization: Bearer {TOKEN}\r\n")
        } else {
            String::new()
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: baton\r\nContent-Length: {}\r\n{auth_line}\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).unwrap();
        // The server answers on the headers alone; the body follows the answer.
        let (status, resp_head) =
            read_response(&mut c).unwrap_or_else(|| panic!("POST {path}: no response"));
        assert_eq!(status, refused, "POST {path}: {resp_head}");
        let says_close = resp_head.contains("\r\nconnection: close\r\n");
        // A client uploading a large body is still sending it a moment later.
        thread::sleep(Duration::from_millis(200));
        let next = format!(
            "GET /v1/status HTTP/1.1\r\nHost: baton\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        );
        let next_ok = c.write_all(&body).is_ok()
            && c.write_all(next.as_bytes()).is_ok()
            && read_response(&mut c).is_some_and(|(st, _)| st == 200);
        assert!(
            says_close || next_ok,
            "POST {path} -> {status} without `Connection: close`, but the server closed \
             the connection: a keep-alive client's next request on it fails.\n{resp_head}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Bad input, endpoint by endpoint
// ---------------------------------------------------------------------------------

#[test]
fn node_endpoints_reject_bad_input() {
    let s = HostBuilder::temp().start();
    let api = &s.api;
    enroll(api, "n1", &[MAC]);
    let last = last_event(api);

    // Malformed JSON, wrong types, unknown and missing fields.
    let r = api.send(
        "POST",
        "/v1/nodes",
        &[],
        Some(b"{\"id\": \"n2\", \"macs\": ["),
    );
    let e = r.expect_error(400);
    assert!(e["field"].is_string(), "{e}");
    api.send("POST", "/v1/nodes", &[], Some(b"not json"))
        .expect_field_error("body");
    api.send("POST", "/v1/nodes", &[], Some(b""))
        .expect_field_error("body");
    api.post(
        "/v1/nodes",
        json!({ "id": "n2", "macs": [MAC2], "colour": "red" }),
    )
    .expect_field_error("colour");
    api.post("/v1/nodes", json!({ "macs": [MAC2] }))
        .expect_field_error("id");
    api.post("/v1/nodes", json!({ "id": "n2" }))
        .expect_field_error("macs");
    api.post("/v1/nodes", json!({ "id": 7, "macs": [MAC2] }))
        .expect_field_error("id");
    api.post("/v1/nodes", json!({ "id": "n2", "macs": MAC2 }))
        .expect_field_error("macs");
    api.post("/v1/nodes", json!({ "id": "n2", "macs": [] }))
        .expect_field_error("macs");
    // Invalid MACs, named by position.
    let e = api
        .post(
            "/v1/nodes",
            json!({ "id": "n2", "macs": ["52:54:00:ec:33"] }),
        )
        .expect_field_error("macs[0]");
    assert!(e["message"].as_str().unwrap().contains("MAC"), "{e}");
    api.post(
        "/v1/nodes",
        json!({ "id": "n2", "macs": [MAC2, "zz:54:00:ec:33:81"] }),
    )
    .expect_field_error("macs[1]");
    // Invalid names.
    for id in ["", "bad/id", "-x", "a b", &"x".repeat(65)] {
        let e = api
            .post("/v1/nodes", json!({ "id": id, "macs": [MAC2] }))
            .expect_error(400);
        assert!(
            e["message"].as_str().unwrap().contains("invalid"),
            "{id:?}: {e}"
        );
    }
    api.post(
        "/v1/nodes",
        json!({ "id": "n2", "macs": [MAC2], "group": "bad group" }),
    )
    .expect_error(400);
    api.post(
        "/v1/nodes",
        json!({ "id": "n2", "macs": [MAC2], "arch": "x86/64" }),
    )
    .expect_error(400);
    // Too large a body.
    let big = format!(r#"{{"id": "n2", "macs": ["{}"]}}"#, "a".repeat(1_500_000));
    api.send("POST", "/v1/nodes", &[], Some(big.as_bytes()))
        .expect_error(413);

    // Conflicts: same id; a MAC of another node, in any notation.
    let e = api
        .post("/v1/nodes", json!({ "id": "n1", "macs": [MAC2] }))
        .expect_error(409);
    assert_eq!(e["details"]["kind"], "node_exists", "{e}");
    let e = api
        .post(
            "/v1/nodes",
            json!({ "id": "n2", "macs": ["52-54-00-EC-33-81"] }),
        )
        .expect_error(409);
    assert_eq!(e["details"]["kind"], "mac_in_use", "{e}");
    assert_eq!(e["details"]["node"], "n1", "{e}");

    // Nothing above was stored.
    assert_eq!(
        api.get("/v1/nodes").expect(200).as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(last_event(api), last);

    // Unknown node: 404 on every per-node route.
    for (method, path, body) in [
        ("GET", "/v1/nodes/nope", None),
        ("PATCH", "/v1/nodes/nope", Some(json!({ "group": "g" }))),
        ("DELETE", "/v1/nodes/nope", None),
        (
            "PUT",
            "/v1/nodes/nope/profile",
            Some(json!({ "kind": "local" })),
        ),
        ("GET", "/v1/nodes/nope/files", None),
        ("GET", "/v1/nodes/nope/reservation", None),
        (
            "POST",
            "/v1/nodes/nope/reservation",
            Some(json!({ "holder": "x" })),
        ),
        (
            "PUT",
            "/v1/nodes/nope/reservation",
            Some(json!({ "holder": "x", "token": 1 })),
        ),
        (
            "DELETE",
            "/v1/nodes/nope/reservation?holder=x&token=1",
            None,
        ),
    ] {
        let e = api.call(method, path, body.as_ref()).expect_error(404);
        assert!(
            e["message"].as_str().unwrap().contains("nope"),
            "{method} {path}: {e}"
        );
    }
    // Unknown route.
    api.get("/v1/nope").expect_error(404);

    // PATCH: nothing to change, bad state, stale epoch, unknown field.
    api.patch("/v1/nodes/n1", json!({}))
        .expect_field_error("body");
    api.patch("/v1/nodes/n1", json!({ "provision_state": "flying" }))
        .expect_field_error("provision_state");
    api.patch("/v1/nodes/n1", json!({ "macs": [] }))
        .expect_field_error("macs");
    api.patch("/v1/nodes/n1", json!({ "macs": ["nope"] }))
        .expect_field_error("macs[0]");
    api.patch("/v1/nodes/n1", json!({ "owner": "h2" }))
        .expect_field_error("owner");
    let e = api
        .patch(
            "/v1/nodes/n1",
            json!({ "provision_state": "available", "expected_epoch": 99 }),
        )
        .expect_error(409);
    assert_eq!(e["details"]["kind"], "stale_epoch", "{e}");
    assert_eq!(last_event(api), last);
    // And the valid forms work.
    let n = api
        .patch(
            "/v1/nodes/n1",
            json!({ "provision_state": "available", "group": "rack2", "arch": "aarch64", "expected_epoch": 1 }),
        )
        .expect(200);
    assert_eq!(n["provision_state"], "available");
    assert_eq!(n["group"], "rack2");
    assert_eq!(n["arch"], "aarch64");
    assert_eq!(
        api.get("/v1/nodes?group=rack2")
            .expect(200)
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // DELETE: refused while reserved, then 204 and gone.
    let t = api
        .post("/v1/nodes/n1/reservation", json!({ "holder": "alice" }))
        .expect(200)["reservation"]["token"]
        .as_u64()
        .unwrap();
    let e = api.delete("/v1/nodes/n1").expect_error(409);
    assert_eq!(e["details"]["kind"], "node_reserved", "{e}");
    api.delete(&format!("/v1/nodes/n1/reservation?holder=alice&token={t}"))
        .expect(204);
    api.delete("/v1/nodes/n1").expect(204);
    api.get("/v1/nodes/n1").expect_error(404);
    // Its MAC is free again.
    enroll(api, "n3", &[MAC]);
}

/// `PATCH {"arch": null}` clears the architecture hint (the API distinguishes an
/// absent field from `null`, and so must the command once it is stored and applied).
#[test]
fn patch_arch_null_clears_the_architecture() {
    let s = HostBuilder::temp().start();
    s.api
        .post(
            "/v1/nodes",
            json!({ "id": "n1", "macs": [MAC], "arch": "x86_64" }),
        )
        .expect(201);
    // Absent: unchanged.
    let n = s
        .api
        .patch("/v1/nodes/n1", json!({ "group": "rack2" }))
        .expect(200);
    assert_eq!(n["arch"], "x86_64", "{n}");
    // null: cleared, in the answer and in the store.
    let n = s
        .api
        .patch("/v1/nodes/n1", json!({ "arch": null }))
        .expect(200);
    assert!(n["arch"].is_null(), "PATCH arch=null answered {n}");
    let n = s.api.get("/v1/nodes/n1").expect(200);
    assert!(n["arch"].is_null(), "after PATCH arch=null: {n}");
}

#[test]
fn profile_endpoint_rejects_bad_input() {
    let s = HostBuilder::temp().start();
    let api = &s.api;
    enroll(api, "n1", &[MAC]);
    let kd = api.upload("vmlinuz", b"kernel bytes");
    let rd = api.upload("initrd", b"ramdisk bytes");
    let absent = sha256_hex(b"never uploaded");
    let last = last_event(api);
    let put = |body: Value| api.put("/v1/nodes/n1/profile", body);

    put(json!({ "kind": "pxe" })).expect_field_error("kind");
    put(json!({})).expect_field_error("kind");
    put(json!({ "kind": "deploy", "ramdisk": rd })).expect_field_error("kernel");
    put(json!({ "kind": "instance", "kernel": kd })).expect_field_error("ramdisk");
    put(json!({ "kind": "deploy", "kernel": "abc", "ramdisk": rd })).expect_field_error("kernel");
    put(json!({ "kind": "deploy", "kernel": kd, "ramdisk": 5 })).expect_field_error("ramdisk");
    let e = put(json!({ "kind": "deploy", "kernel": absent, "ramdisk": rd }))
        .expect_field_error("kernel");
    assert!(e["message"].as_str().unwrap().contains(&absent), "{e}");
    put(json!({ "kind": "deploy", "kernel": kd, "ramdisk": absent })).expect_field_error("ramdisk");
    for bad in ["quiet\nDEFAULT evil", "a\rb", "tab\there", "nul\0"] {
        put(json!({ "kind": "deploy", "kernel": kd, "ramdisk": rd, "cmdline": bad }))
            .expect_field_error("cmdline");
    }
    put(json!({ "kind": "deploy", "kernel": kd, "ramdisk": rd, "cmdline": "x".repeat(4097) }))
        .expect_field_error("cmdline");
    put(json!({ "kind": "local", "kernel": kd })).expect_field_error("kernel");
    put(json!({ "kind": "none", "cmdline": "x" })).expect_field_error("cmdline");
    put(json!({ "kind": "local", "initrd": rd })).expect_field_error("initrd");
    api.send("PUT", "/v1/nodes/n1/profile", &[], Some(b"{\"kind\":"))
        .expect_error(400);

    // Nothing was set.
    let n = api.get("/v1/nodes/n1").expect(200);
    assert!(n["boot_profile"].is_null(), "{n}");
    assert_eq!(n["files"], json!([]));
    assert_eq!(last_event(api), last);

    // The valid form, with a command line GRUB and iPXE must not interpret.
    let tricky = "console=ttyS0 x=$y;z \"q\" 'p' {a} #c";
    let v = deploy(api, "n1", &kd, &rd, tricky);
    assert_eq!(v["boot_profile"]["cmdline"], tricky);
    let g = api
        .anonymous("GET", &format!("/boot/n1/{}", grub(MAC_DASHES)), &[], None)
        .text();
    assert!(
        g.contains(r#"x=\$y\;z \"q\" \'p\' \{a\} \#c"#),
        "GRUB config must escape the command line:\n{g}"
    );
}

#[test]
fn artifact_endpoints_reject_bad_input() {
    let s = HostBuilder::temp().start();
    let api = &s.api;
    let content = pattern(10_000, 5);
    let good = sha256_hex(&content);
    let other = sha256_hex(b"other");

    // Refused on the query alone: sent without a body, whose late arrival could cost
    // the answer (see `refused_request_with_a_body_does_not_break_the_next_request`).
    api.send("POST", "/v1/artifacts", &[], Some(b""))
        .expect_field_error("name");
    api.send("POST", "/v1/artifacts?name=", &[], Some(b""))
        .expect_field_error("name");
    api.send("POST", "/v1/artifacts?name=a%0Ab", &[], Some(b""))
        .expect_field_error("name");
    let e = api
        .send(
            "POST",
            &format!("/v1/artifacts?name=k&sha256={other}"),
            &[],
            Some(&content),
        )
        .expect_field_error("sha256");
    assert!(
        e["message"].as_str().unwrap().contains(&good),
        "names the real digest: {e}"
    );
    // A refused upload leaves nothing behind.
    assert_eq!(api.get("/v1/artifacts").expect(200), json!([]));
    api.get(&format!("/v1/artifacts/{good}")).expect_error(404);

    // Digests in paths.
    for bad in ["xyz", "abc123", &"g".repeat(64), &format!("{good}0")] {
        api.get(&format!("/v1/artifacts/{bad}"))
            .expect_field_error("digest");
        api.delete(&format!("/v1/artifacts/{bad}"))
            .expect_field_error("digest");
    }
    api.get(&format!("/v1/artifacts/{other}")).expect_error(404);
    api.delete(&format!("/v1/artifacts/{other}"))
        .expect_error(404);

    // Upload with the right digest; uppercase hex is the same digest.
    api.send(
        "POST",
        &format!("/v1/artifacts?name=vmlinuz&sha256={}", good.to_uppercase()),
        &[],
        Some(&content),
    )
    .expect(201);
    let v = api.get(&format!("/v1/artifacts/{good}")).expect(200);
    assert_eq!(v["artifact"]["size"], content.len());
    assert_eq!(v["held_here"], true);
    assert_eq!(v["nodes"], json!([]));

    // In use by a node: refused, and still served.
    enroll(api, "n1", &[MAC]);
    let rd = api.upload("initrd", b"r");
    deploy(api, "n1", &good, &rd, "");
    let e = api
        .delete(&format!("/v1/artifacts/{good}"))
        .expect_error(409);
    assert_eq!(e["details"]["kind"], "artifact_in_use", "{e}");
    assert_eq!(e["details"]["nodes"], json!(["n1"]), "{e}");
    let v = api.get(&format!("/v1/artifacts/{good}")).expect(200);
    assert_eq!(v["nodes"], json!(["n1"]), "{v}");
    let r = api.anonymous("GET", "/boot/n1/nodes/n1/kernel", &[], None);
    assert_eq!(r.status, 200);
    assert_same_bytes(&r.body, &content, "kernel still served");

    // Once unused, it can go.
    api.put("/v1/nodes/n1/profile", json!({ "kind": "none" }))
        .expect(200);
    api.delete(&format!("/v1/artifacts/{good}")).expect(204);
    api.get(&format!("/v1/artifacts/{good}")).expect_error(404);
}

/// `?sha256=` that is not a digest is a bad `sha256` parameter; the error must name
/// the parameter the client sent (it says `digest`, which is no parameter of the
/// upload).
#[test]
fn artifact_upload_with_malformed_sha256_names_the_parameter() {
    let s = HostBuilder::temp().start();
    s.api
        .send("POST", "/v1/artifacts?name=k&sha256=xyz", &[], Some(b""))
        .expect_field_error("sha256");
}

#[test]
fn reservations_fence_stale_holders() {
    let s = HostBuilder::temp().start();
    let api = &s.api;
    enroll(api, "n1", &[MAC]);
    let path = "/v1/nodes/n1/reservation";

    // Bad input first.
    api.post(path, json!({ "holder": "alice", "ttl_secs": 0 }))
        .expect_field_error("ttl_secs");
    api.post(path, json!({ "holder": "alice", "ttl_secs": 100_000_000 }))
        .expect_field_error("ttl_secs");
    api.post(path, json!({ "holder": "alice", "ttl_secs": -1 }))
        .expect_field_error("ttl_secs");
    api.post(path, json!({ "ttl_secs": 10 }))
        .expect_field_error("holder");
    api.post(path, json!({ "holder": "alice", "token": 3 }))
        .expect_field_error("token");
    api.post(path, json!({ "holder": "" })).expect_error(400);
    api.post(path, json!({ "holder": "a\nb" }))
        .expect_error(400);
    api.put(path, json!({ "holder": "alice" }))
        .expect_field_error("token");
    api.put(
        path,
        json!({ "holder": "alice", "token": 1, "ttl_secs": 0 }),
    )
    .expect_field_error("ttl_secs");
    api.delete(path).expect_field_error("query");
    api.delete(&format!("{path}?holder=alice"))
        .expect_field_error("query");
    api.delete(&format!("{path}?holder=alice&token=abc"))
        .expect_field_error("query");
    let v = api.get(path).expect(200);
    assert!(v["reservation"].is_null(), "{v}");
    assert_eq!(v["latest_token"], 0);

    // Acquire: token 1. Asking again keeps it.
    let r = api
        .post(path, json!({ "holder": "alice", "ttl_secs": 60 }))
        .expect(200);
    let t1 = r["reservation"]["token"].as_u64().unwrap();
    assert_eq!(t1, 1);
    assert_eq!(r["reservation"]["holder"], "alice");
    let again = api.post(path, json!({ "holder": "alice" })).expect(200);
    assert_eq!(again["reservation"]["token"], t1);

    // Another holder: 409 with the current reservation and its token.
    let e = api.post(path, json!({ "holder": "bob" })).expect_error(409);
    assert_eq!(e["details"]["kind"], "node_reserved", "{e}");
    assert_eq!(e["details"]["reservation"]["holder"], "alice", "{e}");
    assert_eq!(e["details"]["reservation"]["token"], t1, "{e}");

    // Renew: the holder with its token only.
    api.put(
        path,
        json!({ "holder": "alice", "token": t1, "ttl_secs": 120 }),
    )
    .expect(200);
    for (holder, token) in [("alice", t1 + 1), ("alice", 0), ("bob", t1)] {
        let e = api
            .put(path, json!({ "holder": holder, "token": token }))
            .expect_error(409);
        assert_eq!(
            e["details"]["kind"], "reservation_lost",
            "{holder} {token}: {e}"
        );
        assert_eq!(e["details"]["latest_token"], t1, "{e}");
    }
    // Release: wrong token refused; right one 204.
    api.delete(&format!("{path}?holder=alice&token={}", t1 + 1))
        .expect_error(409);
    api.delete(&format!("{path}?holder=bob&token={t1}"))
        .expect_error(409);
    api.delete(&format!("{path}?holder=alice&token={t1}"))
        .expect(204);
    let v = api.get(path).expect(200);
    assert!(v["reservation"].is_null(), "{v}");
    assert_eq!(v["latest_token"], t1);

    // The next holder gets a newer token; the old one stays fenced off.
    let t2 = api.post(path, json!({ "holder": "bob" })).expect(200)["reservation"]["token"]
        .as_u64()
        .unwrap();
    assert!(t2 > t1, "token {t2} after {t1}");
    api.put(path, json!({ "holder": "alice", "token": t1 }))
        .expect_error(409);
    let shown = api.get("/v1/nodes/n1").expect(200);
    assert_eq!(shown["reservation"]["holder"], "bob", "{shown}");
    assert_eq!(shown["last_token"], t2, "{shown}");
}

#[test]
fn events_are_ordered_and_long_poll_wakes_on_a_write() {
    let s = HostBuilder::temp().start();
    let api = &s.api;
    enroll(api, "n1", &[MAC]);
    api.patch("/v1/nodes/n1", json!({ "provision_state": "available" }))
        .expect(200);

    let v = api.get("/v1/events?since=0").expect(200);
    let events = v["events"].as_array().expect("events array");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "not in order: {seqs:?}"
    );
    assert_eq!(v["last"].as_u64(), seqs.last().copied());
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} event in {kinds:?}"))
    };
    assert!(pos("host_registered") < pos("node_enrolled"), "{kinds:?}");
    assert!(
        pos("node_enrolled") < pos("provision_state_changed"),
        "{kinds:?}"
    );
    let enrolled = &events[pos("node_enrolled")];
    assert_eq!(enrolled["node"], "n1");
    let last = v["last"].as_u64().unwrap();

    // since / limit.
    let v = api
        .get(&format!("/v1/events?since={}", seqs[0]))
        .expect(200);
    assert_eq!(v["events"].as_array().unwrap().len(), seqs.len() - 1);
    let v = api.get("/v1/events?since=0&limit=1").expect(200);
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["last"], seqs[0]);

    // Long-poll with nothing new: returns after the wait, empty.
    let t = Instant::now();
    let v = api
        .get(&format!("/v1/events?since={last}&wait=2"))
        .expect(200);
    let took = t.elapsed();
    assert_eq!(v["events"], json!([]));
    assert_eq!(v["last"], last);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "a 2 s long-poll took {took:?}"
    );

    // Long-poll woken by a write.
    let poller = api.clone();
    let t = Instant::now();
    let h = thread::spawn(move || {
        poller
            .get(&format!("/v1/events?since={last}&wait=15"))
            .expect(200)
    });
    thread::sleep(Duration::from_millis(300));
    enroll(api, "n2", &[MAC2]);
    let v = h.join().expect("long-poll thread");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "long-poll returned after {took:?}"
    );
    let ev = v["events"].as_array().unwrap();
    assert_eq!(ev.len(), 1, "{v}");
    assert_eq!(ev[0]["kind"], "node_enrolled");
    assert_eq!(ev[0]["node"], "n2");
    assert!(v["last"].as_u64().unwrap() > last);
}

/// A query parameter of the wrong type is bad input like any other: 400 with a JSON
/// body naming the parameter, not a plain-text body.
#[test]
fn events_query_with_bad_number_gets_a_json_400() {
    let s = HostBuilder::temp().start();
    for (q, field) in [
        ("since=abc", "since"),
        ("wait=-1", "wait"),
        ("limit=x", "limit"),
    ] {
        let r = s.api.get(&format!("/v1/events?{q}"));
        let e = r.expect_error(400);
        assert!(
            e["field"].as_str().is_some_and(|f| f.contains(field))
                || e["message"].as_str().is_some_and(|m| m.contains(field)),
            "{q}: {e}"
        );
    }
}

/// A known route with the wrong method is bad input too: 405 with `Allow` and a JSON
/// body (today the body is empty).
#[test]
fn wrong_method_gets_a_json_405() {
    let s = HostBuilder::temp().start();
    for (method, path) in [
        ("PUT", "/v1/nodes"),
        ("PUT", "/v1/nodes/n1"),
        ("DELETE", "/v1/status"),
        ("POST", "/boot/n1/nodes/n1/kernel"),
    ] {
        let r = s.api.send(method, path, &[], None);
        assert!(
            r.header("allow").is_some(),
            "{method} {path}: 405 without Allow"
        );
        r.expect_error(405);
    }
}

#[test]
fn hosts_status_and_metrics_describe_the_server() {
    let s = HostBuilder::temp().host("mgmt-1").start();
    enroll(&s.api, "n1", &[MAC]);
    s.api.upload("k", b"k");

    let hosts = s.api.get("/v1/hosts").expect(200);
    let h = &hosts[0];
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{hosts}");
    assert_eq!(h["host"]["name"], "mgmt-1");
    assert_eq!(h["host"]["group"], "default");
    assert!(h["host"]["addresses"].is_array(), "{h}");
    assert_eq!(h["self"], true);
    assert_eq!(h["nodes"], 1);

    let st = s.api.get("/v1/status").expect(200);
    assert_eq!(st["host"], "mgmt-1");
    assert_eq!(st["group"], "default");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert!(st["schema_version"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["nodes"], 1);
    assert_eq!(st["owned_nodes"], 1);
    assert_eq!(st["artifacts"], 1);
    assert!(st["store_bytes"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["last_event"].as_u64(), Some(last_event(&s.api)));
    for k in ["active", "completed", "bytes"] {
        assert!(st["tftp"][k].is_u64(), "status.tftp.{k}: {st}");
    }

    let r = s.api.anonymous("GET", "/metrics", &[], None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    for name in [
        "baton_tftp_transfers_completed_total",
        "baton_http_boot_completed_total",
        "baton_store_nodes",
        "baton_store_commands_total",
    ] {
        assert!(
            common::api::metric_value(&text, name).is_some(),
            "{name} missing:\n{text}"
        );
    }
    assert_eq!(s.api.metric("baton_store_nodes"), 1.0);
    // Refusals are counted.
    let before = s.api.metric("baton_store_rejected_total");
    s.api
        .post("/v1/nodes", json!({ "id": "n1", "macs": [MAC2] }))
        .expect_error(409);
    assert_eq!(s.api.metric("baton_store_rejected_total"), before + 1.0);
    assert!(text.contains("baton_http_requests_total{route="), "{text}");
}

/// Runs the `baton` CLI against `s`; returns what it printed, panicking with its stderr
/// unless it succeeded.
#[track_caller]
fn cli(s: &Host, args: &[&str]) -> String {
    let (ok, out, err) = cli_result(s, args);
    assert!(ok, "baton {}: failed\n{err}", args.join(" "));
    out
}

/// Runs the `baton` CLI against `s`: (success, stdout, stderr).
fn cli_result(s: &Host, args: &[&str]) -> (bool, String, String) {
    let out = s.api.cli(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.stderr,
    )
}

/// Every client subcommand reads the server's answer (the typed API both sides share)
/// and prints its fields; `--json` prints the server's JSON as sent.
#[test]
fn cli_reads_every_answer_and_json_is_the_servers() {
    let s = HostBuilder::temp().host("mgmt-1").start();
    let dir = tempfile::tempdir().unwrap();
    let (kpath, rpath) = (dir.path().join("vmlinuz"), dir.path().join("initrd.img"));
    std::fs::write(&kpath, pattern(70_000, 61)).unwrap();
    std::fs::write(&rpath, pattern(90_000, 62)).unwrap();
    let (kpath, rpath) = (kpath.to_str().unwrap(), rpath.to_str().unwrap());

    let out = cli(&s, &["node", "enroll", "n1", "--mac", MAC]);
    assert!(out.contains("enrolled n1 (owner mgmt-1, epoch "), "{out}");
    let out = cli(&s, &["node", "list", "--owner", "mgmt-1"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("n1 ") && l.contains(MAC) && l.contains("enrolled")),
        "{out}"
    );
    let out = cli(&s, &["node", "list", "--group", "elsewhere"]);
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    // Files given as kernel and ramdisk are uploaded first.
    let out = cli(
        &s,
        &[
            "node",
            "set-profile",
            "n1",
            "--kind",
            "deploy",
            "--kernel",
            kpath,
            "--ramdisk",
            rpath,
            "--cmdline",
            CMDLINE,
        ],
    );
    assert!(out.contains("profile          deploy"), "{out}");
    assert!(
        out.contains(&format!("  cmdline        {CMDLINE}")),
        "{out}"
    );
    assert!(out.contains(&pxelinux(MAC_DASHES)), "{out}");
    let shown: Value = serde_json::from_str(&cli(&s, &["node", "show", "n1", "--json"]))
        .expect("node show --json prints JSON");
    assert_eq!(shown, s.api.get("/v1/nodes/n1").expect(200));
    let files = cli(&s, &["node", "files", "n1"]);
    assert!(files.contains(&ipxe(MAC_DASHES)), "{files}");

    let out = cli(
        &s,
        &["node", "update", "n1", "--provision-state", "available"],
    );
    assert_eq!(out, "updated n1\n");
    let (ok, _, err) = cli_result(&s, &["node", "update", "n1", "--provision-state", "nope"]);
    assert!(
        !ok && err.contains("available"),
        "a bad state names the good ones: {err}"
    );
    let (ok, _, err) = cli_result(&s, &["node", "enroll", "n2", "--mac", "52:54:00"]);
    assert!(!ok && err.contains("52:54:00"), "a bad MAC is named: {err}");

    let out = cli(&s, &["node", "reserve", "n1", "--holder", "c1"]);
    assert_eq!(out, "reserved n1 for c1 (token 1)\n");
    let out = cli(
        &s,
        &[
            "node",
            "renew",
            "n1",
            "--holder",
            "c1",
            "--fencing-token",
            "1",
        ],
    );
    assert!(out.starts_with("renewed n1 until "), "{out}");
    let out = cli(&s, &["node", "show", "n1"]);
    assert!(
        out.contains("reserved by      c1 (token 1, until "),
        "{out}"
    );
    let out = cli(
        &s,
        &[
            "node",
            "release",
            "n1",
            "--holder",
            "c1",
            "--fencing-token",
            "1",
        ],
    );
    assert_eq!(out, "released n1\n");

    let kd = sha256_hex(&pattern(70_000, 61));
    let out = cli(&s, &["artifact", "list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&kd) && l.contains("70000") && l.contains("vmlinuz")),
        "{out}"
    );
    let out = cli(&s, &["artifact", "show", &kd]);
    assert!(out.contains("held here true"), "{out}");
    assert!(out.contains("[\"n1\"]"), "{out}");
    let out = cli(&s, &["artifact", "add", kpath, "--name", "again"]);
    assert!(out.starts_with("already stored "), "{out}");
    let other = dir.path().join("other");
    std::fs::write(&other, b"other bytes").unwrap();
    let out = cli(&s, &["artifact", "add", other.to_str().unwrap()]);
    let od = sha256_hex(b"other bytes");
    assert_eq!(out, format!("stored other (11 bytes) sha256 {od}\n"));
    assert_eq!(cli(&s, &["artifact", "rm", &od]), format!("removed {od}\n"));

    let out = cli(&s, &["host", "list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("mgmt-1*") && l.contains(" up ")),
        "{out}"
    );
    let out = cli(&s, &["status"]);
    assert!(
        out.starts_with("host         mgmt-1 (group default)\n"),
        "{out}"
    );
    assert!(out.contains("nodes        1 (1 owned here)"), "{out}");
    assert!(out.contains("cluster      single host (term "), "{out}");
    assert!(out.contains("artifacts    0 missing here"), "{out}");
    let st: Value = serde_json::from_str(&cli(&s, &["status", "--json"])).unwrap();
    assert_eq!(st["host"], "mgmt-1", "{st}");

    let out = cli(&s, &["events"]);
    assert!(
        out.lines()
            .any(|l| l.contains("node_enrolled") && l.contains("node=n1 host=mgmt-1")),
        "{out}"
    );
    let lines = cli(&s, &["events", "--json", "--since", "1"]);
    let server = s.api.get("/v1/events?since=1").expect(200);
    let printed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event a line"))
        .collect();
    assert_eq!(Some(&printed), server["events"].as_array(), "{lines}");

    assert_eq!(cli(&s, &["node", "delete", "n1"]), "deleted n1\n");
    s.api.get("/v1/nodes/n1").expect_error(404);
}

/// An answer as [`read_answer`] reads it: status, header fields, body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 answer read from `c`: status, header fields (lowercase names, `date`
/// left out: it differs from answer to answer) and the `Content-Length` body. `None` if
/// the connection ends or times out first.
fn read_answer(c: &mut TcpStream) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut fields: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(n, _)| n != "date")
        .collect();
    fields.sort();
    let len: usize = fields
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).ok()?;
    Some((status, fields, body))
}

/// The answers to `requests` (extra header lines, e.g. `Range: bytes=0-9\r\n`) on one
/// kept-alive connection. `via_hyper`: the connection first asks for `/metrics`, which
/// is no boot file, so hyper serves it and every request after it; otherwise the boot
/// fast path answers them (plain-HTTP `GET`s of boot files).
fn answers_on_one_connection(
    s: &Host,
    requests: &[(&str, String)],
    via_hyper: bool,
) -> Vec<Answer> {
    let mut c = TcpStream::connect(s.http()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if via_hyper {
        write!(c, "GET /metrics HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
        let (status, _, _) = read_answer(&mut c).expect("the metrics");
        assert_eq!(status, 200);
    }
    requests
        .iter()
        .map(|(path, extra)| {
            write!(c, "GET {path} HTTP/1.1\r\nHost: b\r\n{extra}\r\n").unwrap();
            read_answer(&mut c).unwrap_or_else(|| panic!("no answer to GET {path} {extra:?}"))
        })
        .collect()
}

/// Plain-HTTP `GET`s of boot files take the fast path (sendfile, no hyper): its answers
/// are the router's, byte for byte and field for field, for whole files, ranges (suffix
/// and unsatisfiable), validators, refusals and both boot routes, on one kept-alive
/// connection; pipelined requests are answered in order; a `HEAD` goes to hyper with the
/// connection; a malformed head gets hyper's 400.
#[test]
fn http_boot_fast_path_answers_as_the_router_does() {
    let b = booted(HostBuilder::temp());
    let s = &b.s;
    let (ramdisk, kernel) = (&b.ramdisk, &b.kernel);
    let path = "/boot/n1/nodes/n1/ramdisk";
    let etag = format!("\"{}\"", b.rd);
    let len = ramdisk.len();
    let requests: Vec<(&str, String)> = vec![
        (path, String::new()),
        (path, "Range: bytes=1000-1999\r\n".into()),
        (path, "Range: bytes=-10\r\n".into()),
        (path, format!("Range: bytes={len}-\r\n")),
        (path, format!("If-None-Match: {etag}\r\n")),
        (path, "Range: bytes=0-9\r\nIf-Range: \"stale\"\r\n".into()),
        (path, format!("Range: bytes=0-9\r\nIf-Range: {etag}\r\n")),
        ("/nodes/n1/kernel", String::new()),
        ("/nodes/n1/kernel", "Range: bytes=5-\r\n".into()),
        ("/boot/nope/nodes/nope/kernel", String::new()),
        ("/boot/n1/nodes/n1/nosuch", String::new()),
        ("/boot/n1/%2e%2e/%2e%2e/etc/passwd", String::new()),
        ("/no/such/file", String::new()),
        (path, String::new()),
    ];
    let completed = s.api.metric("baton_http_boot_completed_total");
    let fast = answers_on_one_connection(s, &requests, false);
    let hyper = answers_on_one_connection(s, &requests, true);
    for (((p, extra), f), h) in requests.iter().zip(&fast).zip(&hyper) {
        assert_eq!(
            f, h,
            "GET {p} {extra:?}: fast path (left) and router (right) differ"
        );
    }
    let statuses: Vec<u16> = fast.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses,
        [200, 206, 206, 416, 304, 200, 206, 200, 206, 404, 404, 404, 404, 200]
    );
    assert_same_bytes(&fast[0].2, ramdisk, "the ramdisk, sent with sendfile");
    assert_same_bytes(&fast[1].2, &ramdisk[1000..2000], "bytes 1000-1999");
    assert_same_bytes(&fast[2].2, &ramdisk[len - 10..], "the last 10 bytes");
    assert!(fast[3]
        .1
        .contains(&("content-range".into(), format!("bytes */{len}"))));
    assert!(fast[4].2.is_empty());
    assert_same_bytes(&fast[7].2, kernel, "the kernel by its served path");
    assert_same_bytes(&fast[8].2, &kernel[5..], "the kernel from byte 5");
    // Both paths count their downloads: 7 each with a body.
    assert!(
        eventually(Duration::from_secs(5), || s
            .api
            .metric("baton_http_boot_completed_total")
            >= completed + 16.0),
        "baton_http_boot_completed_total went from {completed} to {}",
        s.api.metric("baton_http_boot_completed_total")
    );
    let label = "baton_http_requests_total{route=\"GET /boot/{node}/{*path}\"}";
    assert!(s.api.metric(label) >= 2.0 * 11.0, "{label}");

    // Pipelined: two requests in one write, answered in order.
    let mut c = TcpStream::connect(s.http()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: b\r\nRange: bytes=0-99\r\n\r\n\
         GET /boot/n1/nodes/n1/kernel HTTP/1.1\r\nHost: b\r\n\r\n"
    )
    .unwrap();
    let (st, _, body) = read_answer(&mut c).expect("first pipelined answer");
    assert_eq!(st, 206);
    assert_same_bytes(&body, &ramdisk[..100], "first pipelined answer");
    let (st, _, body) = read_answer(&mut c).expect("second pipelined answer");
    assert_eq!(st, 200);
    assert_same_bytes(&body, kernel, "second pipelined answer");
    // HEAD goes to hyper, which keeps the connection: a GET after it is answered too.
    write!(c, "HEAD {path} HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "HEAD answer cut short");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {len}\r\n")),
        "{head}"
    );
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: b\r\nRange: bytes=-3\r\n\r\n"
    )
    .unwrap();
    let (st, _, body) = read_answer(&mut c).expect("GET after HEAD");
    assert_eq!(st, 206);
    assert_same_bytes(&body, &ramdisk[len - 3..], "GET after HEAD");

    // `Connection: close`: answered, then closed.
    let mut c = TcpStream::connect(s.http()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: b\r\nRange: bytes=0-0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (st, fields, _) = read_answer(&mut c).expect("answer before close");
    assert_eq!(st, 206);
    assert!(fields.contains(&("connection".into(), "close".into())));
    let mut rest = Vec::new();
    assert_eq!(
        c.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the answer"
    );

    // A malformed head: hyper's 400, as before the fast path.
    for bad in [
        &b"GET /a b HTTP/1.1\r\n\r\n"[..],
        b"\x00\x01\x02 nonsense\r\n\r\n",
    ] {
        let mut c = TcpStream::connect(s.http()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(bad).unwrap();
        let mut resp = Vec::new();
        let _ = c.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 400"), "{bad:?}: {text}");
    }
}

/// The fast path sends blob files from disk with sendfile: a blob changed on disk after
/// it was verified and served is verified again, and refused, before a byte of it goes.
#[test]
fn http_boot_fast_path_refuses_a_blob_damaged_after_it_was_served() {
    use std::os::unix::fs::PermissionsExt;
    let b = booted(HostBuilder::temp());
    let s = &b.s;
    let path = "/boot/n1/nodes/n1/kernel";
    let r = s.api.anonymous("GET", path, &[], None);
    assert_eq!(r.status, 200);
    assert_same_bytes(&r.body, &b.kernel, "kernel before the damage");
    let blob = s
        .data_dir()
        .join("blobs/sha256")
        .join(&b.kd[..2])
        .join(&b.kd);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[4321] ^= 0xff;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    for range in [None, Some("bytes=0-99")] {
        let headers: Vec<(&str, &str)> = range.map(|r| ("Range", r)).into_iter().collect();
        let r = s.api.anonymous("GET", path, &headers, None);
        assert_ne!(r.status, 200, "a damaged blob is never served");
        assert_ne!(r.status, 206, "a damaged blob is never served");
        assert!(r.body.len() < 1000, "{} bytes served", r.body.len());
    }
}
