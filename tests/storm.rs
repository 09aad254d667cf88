//! `baton storm` end to end, in network namespaces this test creates: a bridge, an
//! address-only dnsmasq, one Baton host with 20 enrolled nodes (`BATON_STORM_NODES`), and the storm in a
//! client namespace (one source address per client). Every client must boot with the
//! node's own bytes (verified against the API and a manifest of the shared loaders)
//! and no client may see two boot servers answer one DISCOVER. Then the same
//! generator runs against dnsmasq in proxy mode with its own TFTP server, serving the
//! same files, as a user comparing servers would.
//!
//! Needs root, iproute2 and dnsmasq-base: without them it prints SKIPPED, or fails
//! when `CI` is set. Run under `flock /tmp/baton-heavy.lock`.

mod common;
#[path = "common/storm_lab.rs"]
mod storm_lab;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use common::host::{HostBuilder, TOKEN};
use common::pattern;
use common::require::{require_dnsmasq, require_netns, say};
use storm_lab::{manifest_of, StormLab, StormRun, BOOT_IP};

/// Nodes and clients; `BATON_STORM_NODES` (up to 250) for a larger run by hand.
fn nodes() -> usize {
    std::env::var("BATON_STORM_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=250).contains(n))
        .unwrap_or(20)
}

fn prerequisites() -> bool {
    require_netns() && require_dnsmasq()
}

fn mac(i: usize) -> String {
    format!("52:54:00:b9:00:{:02x}", i + 1)
}

fn check(run: &StormRun, what: &str, profiles: &[&str]) {
    let s = &run.summary;
    let ctx = || {
        format!(
            "{what}: exit {:?}\n{}\nfirst failure: {}",
            run.code,
            run.stderr,
            run.records
                .iter()
                .find(|r| r["completed"] != json!(true))
                .map(|r| r.to_string())
                .unwrap_or_default()
        )
    };
    assert_eq!(run.code, Some(0), "{}", ctx());
    assert_eq!(s["clients"], json!(nodes()), "{}", ctx());
    assert_eq!(s["completed"], json!(nodes()), "{}", ctx());
    assert_eq!(s["double_answers"], json!(0), "{}", ctx());
    assert_eq!(s["digest_mismatches"], json!(0), "{}", ctx());
    assert_eq!(s["unverified_files"], json!(0), "{}", ctx());
    assert_eq!(s["files_with_several_digests"], json!(0), "{}", ctx());
    assert_eq!(run.records.len(), nodes());
    for r in &run.records {
        assert!(profiles.contains(&r["profile"].as_str().unwrap()), "{r}");
        let files = r["files"].as_array().unwrap();
        let stages: Vec<&str> = files
            .iter()
            .filter(|f| f["outcome"] == json!("ok"))
            .map(|f| f["stage"].as_str().unwrap())
            .collect();
        assert!(stages.ends_with(&["kernel", "ramdisk"]), "{r}");
        assert!(files
            .iter()
            .filter(|f| f["outcome"] == json!("ok"))
            .all(|f| f["verified"] == json!(true)));
        assert!(
            r["lease"].as_str().unwrap_or("").starts_with("10.79."),
            "{r}"
        );
    }
}

fn quantile(run: &StormRun, key: &str) -> f64 {
    run.summary["end_to_end"][key].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn storm_boots_every_node_from_baton_and_from_dnsmasq() {
    if !prerequisites() {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let root = t.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("undionly.kpxe"), pattern(70_000, 11)).unwrap();
    std::fs::write(root.join("ipxe.efi"), pattern(300_000, 12)).unwrap();
    let boot_ipxe =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tftp-root-template/static/boot.ipxe");
    std::fs::copy(&boot_ipxe, root.join("boot.ipxe")).unwrap();
    let kernel = pattern(2 << 20, 1);
    let ramdisk = pattern(1 << 20, 2);

    // Enroll the nodes on a loopback Baton, keep its rendered iPXE scripts.
    let mut scripts = Vec::new();
    {
        let mut b = HostBuilder::new(&data).tftp_root(&root).start();
        let kd = b.api.upload("vmlinuz", &kernel);
        let rd = b.api.upload("initrd.img", &ramdisk);
        for i in 0..nodes() {
            let id = format!("n{:02}", i + 1);
            b.api
                .post("/v1/nodes", json!({ "id": id, "macs": [mac(i)] }))
                .expect(201);
            b.api
                .put(
                    &format!("/v1/nodes/{id}/profile"),
                    json!({ "kind": "deploy", "kernel": kd, "ramdisk": rd,
                            "cmdline": format!("console=ttyS0 baton.node={id}") }),
                )
                .expect(200);
            let path = format!("/ipxe/{}.ipxe", mac(i).replace(':', "-"));
            let r = b.api.get(&path);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            scripts.push((path, r.body));
        }
        assert!(b.terminate(Duration::from_secs(15)).success());
    }

    let lab = StormLab::new(nodes(), t);
    let baton = HostBuilder::pxe(&data)
        .netns(lab.boot_ns())
        .tftp_listen(&format!("{BOOT_IP}:69"))
        .http_listen(&format!("{BOOT_IP}:8069"))
        .tftp_root(&root)
        .flag("--dhcp-interface", "eth0")
        .log_level("info")
        .start();
    let shared = t.join("loaders.sha256");
    manifest_of(&root, &shared);
    let count = nodes().to_string();
    let ips = format!("10.79.2.1-10.79.2.{}", nodes());
    let baton_run = lab.storm(
        t,
        "baton",
        &[
            "--api",
            &format!("http://{BOOT_IP}:8069"),
            "--token",
            TOKEN,
            "--manifest",
            shared.to_str().unwrap(),
            "--count",
            &count,
            "--profile",
            "bios,efi-x64,ipxe,ipxe-http",
            "--time-scale",
            "0.1",
            "--limit",
            "120",
            "--source-ips",
            &ips,
        ],
        Duration::from_secs(180),
    );
    drop(baton);
    say(&format!("baton storm vs Baton:\n{}", baton_run.stderr));
    check(
        &baton_run,
        "Baton",
        &["bios", "efi-x64", "ipxe", "ipxe-http"],
    );
    for r in &baton_run.records {
        let n: usize = r["client"].as_u64().unwrap() as usize;
        assert_eq!(r["node"], json!(format!("n{:02}", n + 1)));
        assert_eq!(r["source_ip"], json!(format!("10.79.2.{}", n + 1)));
        let uris: Vec<&str> = r["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["uri"].as_str().unwrap())
            .collect();
        let kernel_uri = uris.iter().find(|u| u.ends_with("/kernel")).unwrap();
        match r["profile"].as_str().unwrap() {
            "ipxe-http" => assert!(kernel_uri.starts_with("http://"), "{r}"),
            _ => assert!(kernel_uri.starts_with("tftp://"), "{r}"),
        }
        if r["profile"] == json!("efi-x64") {
            assert!(r["stages"].get("loader_dhcp").is_some(), "{r}");
        }
    }

    // The same files, served by dnsmasq (proxy-DHCP + TFTP).
    let droot = t.join("dnsmasq-root");
    std::fs::create_dir_all(droot.join("ipxe")).unwrap();
    for f in ["undionly.kpxe", "ipxe.efi", "boot.ipxe"] {
        std::fs::copy(root.join(f), droot.join(f)).unwrap();
    }
    std::fs::write(t.join("kernel"), &kernel).unwrap();
    std::fs::write(t.join("ramdisk"), &ramdisk).unwrap();
    for (i, (path, body)) in scripts.iter().enumerate() {
        std::fs::write(droot.join(path.trim_start_matches('/')), body).unwrap();
        let nd = droot.join(format!("nodes/n{:02}", i + 1));
        std::fs::create_dir_all(&nd).unwrap();
        std::fs::hard_link(t.join("kernel"), nd.join("kernel")).unwrap();
        std::fs::hard_link(t.join("ramdisk"), nd.join("ramdisk")).unwrap();
    }
    let manifest = t.join("dnsmasq-root.sha256");
    manifest_of(&droot, &manifest);
    let dnsmasq = lab.dnsmasq_proxy(&droot);
    let dns_run = lab.storm(
        t,
        "dnsmasq",
        &[
            "--mac-base",
            &mac(0),
            "--count",
            &count,
            "--manifest",
            manifest.to_str().unwrap(),
            "--profile",
            "bios,efi-x64,ipxe",
            "--time-scale",
            "0.1",
            "--limit",
            "120",
            "--source-ips",
            &ips,
        ],
        Duration::from_secs(180),
    );
    drop(dnsmasq);
    say(&format!(
        "baton storm vs dnsmasq (proxy + TFTP):\n{}",
        dns_run.stderr
    ));
    check(&dns_run, "dnsmasq", &["bios", "efi-x64", "ipxe"]);
    // dnsmasq names no file in its proxy offer: every client asks on udp/4011.
    for r in &dns_run.records {
        let rounds: Vec<&Value> = r["rounds"].as_array().unwrap().iter().collect();
        assert!(
            rounds.iter().any(|x| x["kind"] == json!("boot_server")),
            "{r}"
        );
    }
    say(&format!(
        "end to end p50/p99 ms: Baton {:.0}/{:.0} (4 profiles), dnsmasq {:.0}/{:.0} (3 profiles)",
        quantile(&baton_run, "p50"),
        quantile(&baton_run, "p99"),
        quantile(&dns_run, "p50"),
        quantile(&dns_run, "p99")
    ));
}
