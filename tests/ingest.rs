//! Issue 18: a live TFTP tree in OpenStack Ironic's layout (pxe_utils naming) is taken in
//! by one host, served byte-identical (real tftp-hpa client), rewrites are picked up
//! within 1 s and never served half-written, deleted nodes lose their files but not the
//! content other nodes share, and after the ingesting host is killed (SIGKILL) a peer
//! serves the same bytes within the lease bound. Three hosts on loopback.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fleet::Fleet;
use common::host::{Host, HostBuilder};
use common::pattern;

const A: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
const B: &str = "9a0f7e55-6d4b-4c8e-8f1e-2b5d3c4a1e00";
const MAC_A: &str = "52:54:00:6a:1d:01";
const MAC_B: &str = "52:54:00:6a:1d:02";

fn dashes(mac: &str) -> String {
    mac.replace(':', "-")
}

/// The bytes of `name` from `h`: tftp-hpa, or curl for names with a colon (GRUB's
/// `<mac>.conf`), which tftp-hpa's command line reads as `host:file`.
fn tftp_get(h: &Host, name: &str) -> Result<Vec<u8>, String> {
    if name.contains(':') {
        h.curl_tftp_get(name)
    } else {
        h.tftp_get(name)
    }
}

/// Polls `name` on `h` until it has `want`; returns how long that took.
fn wait_bytes(h: &Host, name: &str, want: &[u8], timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = tftp_get(h, name);
        if got.as_deref() == Ok(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{} does not serve the expected {} bytes of {name} after {timeout:?}: {:?}",
            h.name(),
            want.len(),
            got.map(|b| format!("{} other bytes", b.len()))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pxelinux configuration Ironic renders for a deploy (its pxe_config.template
/// shape), with the kernel and ramdisk as absolute paths under its tftp_root.
fn pxe_config(node: &str, version: &str) -> Vec<u8> {
    format!(
        "default deploy\n\nlabel deploy\nkernel /tftpboot/{node}/deploy_kernel\n\
         append initrd=/tftpboot/{node}/deploy_ramdisk selinux=0 troubleshoot=0 text \
         ipa-api-url=http://192.0.2.1:6385 coreos.configdrive=0 build={version}\nipappend 2\n\n\
         label boot_whole_disk\nCOM32 chain.c32\nappend mbr:{{{{ DISK_IDENTIFIER }}}}\n"
    )
    .into_bytes()
}

/// What Ironic's pxe_utils leaves for one node: its directory with the config and
/// hard links into master_images, and the MAC links (pxelinux, GRUB, GRUB by MAC).
fn write_node(tree: &Path, node: &str, mac: &str, config: &[u8]) {
    let dir = tree.join(node);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config"), config).unwrap();
    for (label, master) in [("deploy_kernel", "kernel"), ("deploy_ramdisk", "ramdisk")] {
        std::fs::hard_link(tree.join("master_images").join(master), dir.join(label)).unwrap();
    }
    let rel = format!("{node}/config");
    std::os::unix::fs::symlink(
        format!("../{rel}"),
        tree.join("pxelinux.cfg")
            .join(format!("01-{}", dashes(mac))),
    )
    .unwrap();
    std::os::unix::fs::symlink(&rel, tree.join(format!("grub.cfg-01-{}", dashes(mac)))).unwrap();
    std::os::unix::fs::symlink(&rel, tree.join(format!("{mac}.conf"))).unwrap();
}

#[test]
fn ironic_tree_is_served_rewritten_and_survives_its_host() {
    if !common::require::require_tftp_hpa() || !common::require::require_curl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tftpboot");
    std::fs::create_dir_all(tree.join("master_images")).unwrap();
    std::fs::create_dir_all(tree.join("pxelinux.cfg")).unwrap();
    let kernel = pattern(300_000, 1);
    let ramdisk = pattern(1_500_000, 2);
    std::fs::write(tree.join("master_images/kernel"), &kernel).unwrap();
    std::fs::write(tree.join("master_images/ramdisk"), &ramdisk).unwrap();
    let loader = pattern(40_000, 3);
    std::fs::write(tree.join("pxelinux.0"), &loader).unwrap();
    // Ironic's pxe_config names /tftpboot/...: tftpd-hpa's map file from Ironic's guide
    // strips the prefix on every host.
    let map = dir.path().join("map-file");
    std::fs::write(&map, "re ^/tftpboot/(.*) \\1\n").unwrap();
    // Default leases: 3 s TTL + 1 s grace before peers take over.
    let takeover_after = Duration::from_millis(3000 + 1000);
    let config = format!("[tftp]\nmap_file = {map:?}\n");
    let mut c = Fleet::start_hosts(
        (1..=3)
            .map(|i| {
                let b = HostBuilder::member(&format!("h{i}")).config(&config);
                if i == 1 {
                    b.flag("--ingest-dir", tree.display()).tftp_root(&tree)
                } else {
                    b
                }
            })
            .collect(),
    );
    c.wait_members(3, Duration::from_secs(20));

    // Ironic prepares two nodes.
    let v1 = pxe_config(A, "v1");
    let b_cfg = pxe_config(B, "b");
    let t0 = Instant::now();
    write_node(&tree, A, MAC_A, &v1);
    write_node(&tree, B, MAC_B, &b_cfg);
    let pxe_a = format!("pxelinux.cfg/01-{}", dashes(MAC_A));
    let took = wait_bytes(&c.hosts[0], &pxe_a, &v1, Duration::from_secs(10));
    eprintln!(
        "new node served after {:?} (written {:?} ago)",
        took,
        t0.elapsed()
    );
    let h1 = &c.hosts[0];
    for (name, want) in [
        (format!("{A}/config"), &v1),
        (format!("grub.cfg-01-{}", dashes(MAC_A)), &v1),
        (format!("{MAC_A}.conf"), &v1),
        (format!("{A}/deploy_kernel"), &kernel),
        (format!("/tftpboot/{A}/deploy_ramdisk"), &ramdisk),
        // Firmware that sends the MAC in uppercase.
        (
            format!("pxelinux.cfg/01-{}", dashes(MAC_A).to_uppercase()),
            &v1,
        ),
        ("pxelinux.0".to_string(), &loader),
    ] {
        // Ironic writes a node's links one after another, and an ingest pass may land
        // between two of them: each name gets a bounded wait of its own.
        wait_bytes(h1, &name, want, Duration::from_secs(10));
    }
    // Enrolled with the ingest as source, owned by the ingesting host, on every replica.
    for h in &c.hosts {
        let nodes = h.api.nodes();
        assert_eq!(
            nodes.get(A).map(|n| n.1.as_str()),
            Some("h1"),
            "{}: {nodes:?}",
            h.name()
        );
        assert!(nodes.contains_key(B));
    }

    // A rewrite (atomic rename, as configuration tools do) is served within 1 s.
    let v2 = pxe_config(A, "v2-rename");
    let tmp = tree.join(A).join(".config.tmp");
    std::fs::write(&tmp, &v2).unwrap();
    std::fs::rename(&tmp, tree.join(A).join("config")).unwrap();
    let took = wait_bytes(h1, &pxe_a, &v2, Duration::from_secs(5));
    eprintln!("rewrite by rename served after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "rewrite picked up after {took:?}"
    );

    // A rewrite in place, as Ironic's write_to_file does, paused half-way: the half
    // never goes out, the old bytes or the whole new file do.
    let v3 = pxe_config(A, "v3-in-place-and-much-longer-than-before");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(tree.join(A).join("config"))
        .unwrap();
    f.write_all(&v3[..v3.len() / 2]).unwrap();
    f.flush().unwrap();
    let paused = Instant::now();
    let mut polls = 0;
    while paused.elapsed() < Duration::from_millis(1200) {
        let got = tftp_get(h1, &pxe_a);
        assert!(
            got.as_deref() == Ok(&v2[..]) || got.as_deref() == Ok(&v3[..]),
            "a half-written config was served: {got:?}"
        );
        polls += 1;
        // Keep the writer slow: a byte now and then, as a stalled tool would.
        std::thread::sleep(Duration::from_millis(100));
    }
    f.write_all(&v3[v3.len() / 2..]).unwrap();
    drop(f);
    let done = Instant::now();
    wait_bytes(h1, &pxe_a, &v3, Duration::from_secs(5));
    eprintln!("in-place rewrite: {polls} fetches during the pause saw no partial file; whole file served {:?} after close", done.elapsed());
    assert!(done.elapsed() < Duration::from_secs(1));

    // Ironic cleans node B up: its files go, the content A shares (same master image)
    // stays served for A.
    std::fs::remove_dir_all(tree.join(B)).unwrap();
    for l in [
        tree.join("pxelinux.cfg")
            .join(format!("01-{}", dashes(MAC_B))),
        tree.join(format!("grub.cfg-01-{}", dashes(MAC_B))),
        tree.join(format!("{MAC_B}.conf")),
    ] {
        std::fs::remove_file(l).unwrap();
    }
    let gone = Instant::now();
    let pxe_b = format!("pxelinux.cfg/01-{}", dashes(MAC_B));
    loop {
        match tftp_get(h1, &pxe_b) {
            Err(e) if e.contains("not found") || e.contains("Error code 1") => break,
            other => assert!(
                gone.elapsed() < Duration::from_secs(5),
                "B's config still served after its removal: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    common::assert_same_bytes(
        &tftp_get(h1, &format!("{A}/deploy_kernel")).unwrap(),
        &kernel,
        "A's kernel after B's removal",
    );

    // The peers hold the blobs (replication), then the ingesting host dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    for content in [&kernel, &ramdisk] {
        for h in &c.hosts[1..] {
            while !h.holds_blob(content) {
                assert!(
                    Instant::now() < deadline,
                    "{} does not hold the blobs",
                    h.name()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    c.hosts[0].kill9();
    let killed = Instant::now();
    let bound = takeover_after + Duration::from_secs(3);
    let peer = loop {
        if let Some(i) = (1..3).find(|&i| tftp_get(&c.hosts[i], &pxe_a).as_deref() == Ok(&v3[..])) {
            break i;
        }
        assert!(
            killed.elapsed() < bound,
            "no peer serves {pxe_a} within {bound:?} of the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "{} serves the ingested files {:?} after h1 was killed (lease ttl + grace = {:?})",
        c.hosts[peer].name(),
        killed.elapsed(),
        takeover_after
    );
    let p = &c.hosts[peer];
    for (name, want) in [
        (format!("{A}/config"), &v3),
        (format!("grub.cfg-01-{}", dashes(MAC_A)), &v3),
        (format!("{MAC_A}.conf"), &v3),
        (format!("/tftpboot/{A}/deploy_kernel"), &kernel),
        (format!("{A}/deploy_ramdisk"), &ramdisk),
    ] {
        common::assert_same_bytes(
            &tftp_get(p, &name).unwrap(),
            want,
            &format!("{} from {}", name, p.name()),
        );
    }
    assert_eq!(
        p.api.nodes().get(A).map(|n| n.1.clone()),
        Some(p.name().to_string())
    );
}
