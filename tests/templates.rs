//! The watched template directory (`--template-dir`): an edited template re-renders the
//! nodes it affects, at once and without a restart; a broken template is refused with
//! an error naming it, and the files rendered before keep being served.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use common::api::Api;
use common::host::{Host, HostBuilder};
use common::require::require_tftp_hpa;
use common::{pattern, run_with_timeout};

const MAC: &str = "52:54:00:ec:33:81";
const PXE: &str = "pxelinux.cfg/01-52-54-00-ec-33-81";
const GRUB: &str = "grub/grub.cfg-01-52-54-00-ec-33-81";
const TEMPLATES: [&str; 3] = ["pxelinux.cfg.j2", "grub.cfg.j2", "node.ipxe.j2"];
/// How long a template edit may take to show (debounce is 300 ms).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies the project's templates into `dst`.
fn copy_templates(dst: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tftp-root-template");
    for t in TEMPLATES {
        std::fs::copy(src.join(t), dst.join(t)).unwrap_or_else(|e| panic!("copy {t}: {e}"));
    }
}

/// Enrolls `n1` on a deploy profile with `cmdline`.
fn node_on_deploy(api: &Api, cmdline: &str) -> (String, String) {
    api.post("/v1/nodes", json!({ "id": "n1", "macs": [MAC] }))
        .expect(201);
    let kd = api.upload("vmlinuz", &pattern(5000, 1));
    let rd = api.upload("initrd", &pattern(7000, 2));
    set_deploy(api, &kd, &rd, cmdline);
    (kd, rd)
}

fn set_deploy(api: &Api, kd: &str, rd: &str, cmdline: &str) {
    api.put(
        "/v1/nodes/n1/profile",
        json!({ "kind": "deploy", "kernel": kd, "ramdisk": rd, "cmdline": cmdline }),
    )
    .expect(200);
}

fn last_event(api: &Api) -> u64 {
    api.get("/v1/events?since=0&limit=10000").expect(200)["last"]
        .as_u64()
        .unwrap()
}

/// Number of log lines containing `needle`.
fn count_log(s: &Host, needle: &str) -> usize {
    s.log().lines().filter(|l| l.contains(needle)).count()
}

/// Waits until the log has more than `n` lines with `needle`; returns the newest.
#[track_caller]
fn wait_log_count(s: &Host, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let log = s.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        if lines.len() > n {
            return lines.last().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no new log line with {needle:?} within {RELOAD_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fetches `path` over TFTP until it contains `needle`; returns it.
#[track_caller]
fn wait_tftp_contains(s: &Host, path: &str, needle: &str) -> String {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let text = s.tftp_text(path);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still lacks {needle:?} {RELOAD_TIMEOUT:?} after the template edit:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn edited_template_rerenders_and_broken_one_keeps_last_good_files() {
    if !require_tftp_hpa() {
        return;
    }
    let tdir = tempfile::tempdir().unwrap();
    copy_templates(tdir.path());
    let s = HostBuilder::temp().template_dir(tdir.path()).start();
    let (kd, rd) = node_on_deploy(&s.api, "console=ttyS0");
    // A node without profile serves nothing, before and after re-renders.
    s.api
        .post(
            "/v1/nodes",
            json!({ "id": "bare", "macs": ["52:54:00:00:00:01"] }),
        )
        .expect(201);
    let first = s.tftp_text(PXE);
    assert!(!first.contains("marker"), "{first}");
    let grub_before = s.tftp_ok(GRUB);
    let pxe_file = tdir.path().join("pxelinux.cfg.j2");
    let original = std::fs::read_to_string(&pxe_file).unwrap();

    // A valid edit: the node's pxelinux config is re-rendered and served at once.
    let reloaded = count_log(&s, "templates reloaded");
    std::fs::write(
        &pxe_file,
        format!("{original}# marker-1 {{{{ node.id }}}}\n"),
    )
    .unwrap();
    let good = wait_tftp_contains(&s, PXE, "# marker-1 n1\n");
    assert!(good.starts_with(&first), "only the line was added:\n{good}");
    wait_log_count(&s, "templates reloaded", reloaded);
    // Same over HTTP boot; the GRUB config, whose template did not change, is unchanged.
    let r = s
        .api
        .anonymous("GET", &format!("/boot/n1/{PXE}"), &[], None);
    assert_eq!(r.text(), good);
    assert_eq!(s.tftp_ok(GRUB), grub_before);
    let files = s.api.get("/v1/nodes/bare/files").expect(200);
    assert_eq!(files, json!([]));
    // The re-render is a store write like any other: it has an event.
    let ev = s.api.get("/v1/events?since=0&limit=10000").expect(200);
    let profile_sets = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "boot_profile_set" && e["node"] == "n1")
        .count();
    assert_eq!(profile_sets, 2, "set + re-render: {ev}");

    // Rewriting the same content re-renders nothing: no new event.
    let last = last_event(&s.api);
    let reloaded = count_log(&s, "templates reloaded");
    std::fs::write(
        &pxe_file,
        format!("{original}# marker-1 {{{{ node.id }}}}\n"),
    )
    .unwrap();
    wait_log_count(&s, "templates reloaded", reloaded);
    assert_eq!(last_event(&s.api), last);

    // Broken templates: a syntax error, then an undefined variable. Each is refused
    // with the template's name, and the last good files stay.
    let broken = [
        format!("{original}{{% if profile.kind == \"local\" %}}\nunclosed\n"),
        format!("{original}{{{{ node.no_such_field }}}}\n"),
        format!("{original}{{{{ profile.cmdline | no_such_filter }}}}\n"),
    ];
    for (i, text) in broken.iter().enumerate() {
        let refused = count_log(&s, "template change refused");
        std::fs::write(&pxe_file, text).unwrap();
        let line = wait_log_count(&s, "template change refused", refused);
        assert!(
            line.contains("pxelinux.cfg.j2"),
            "broken template {i}: the error must name the template: {line}"
        );
        assert!(line.contains("ERROR"), "logged as an error: {line}");
        // Give a wrong reload time to land, then check nothing moved.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(s.tftp_text(PXE), good, "broken template {i}");
        let r = s
            .api
            .anonymous("GET", &format!("/boot/n1/{PXE}"), &[], None);
        assert_eq!(r.text(), good, "broken template {i} over HTTP");
        assert_eq!(
            last_event(&s.api),
            last,
            "broken template {i} wrote to the store"
        );
    }

    // While the file on disk is broken, API changes render with the last good templates.
    set_deploy(&s.api, &kd, &rd, "console=tty1");
    let cfg = s.tftp_text(PXE);
    assert!(cfg.contains("APPEND console=tty1\n"), "{cfg}");
    assert!(cfg.contains("# marker-1 n1\n"), "{cfg}");

    // Fixed: the next valid edit is taken.
    std::fs::write(&pxe_file, format!("{original}# marker-2\n")).unwrap();
    let cfg = wait_tftp_contains(&s, PXE, "# marker-2\n");
    assert!(!cfg.contains("marker-1"), "{cfg}");
    assert!(cfg.contains("APPEND console=tty1\n"), "{cfg}");
}

/// A template that loads (it passes the sample render) but fails for one node: that
/// node keeps its files, the error names it, other nodes are re-rendered.
#[test]
fn template_failing_for_one_node_keeps_that_nodes_files() {
    if !require_tftp_hpa() {
        return;
    }
    let tdir = tempfile::tempdir().unwrap();
    copy_templates(tdir.path());
    let s = HostBuilder::temp().template_dir(tdir.path()).start();
    let (kd, rd) = node_on_deploy(&s.api, "console=ttyS0");
    // n2 has an architecture hint; n1 has none.
    s.api
        .post(
            "/v1/nodes",
            json!({ "id": "n2", "macs": ["52:54:00:00:00:02"], "arch": "x86_64" }),
        )
        .expect(201);
    s.api
        .put(
            "/v1/nodes/n2/profile",
            json!({ "kind": "deploy", "kernel": kd, "ramdisk": rd }),
        )
        .expect(200);
    let n1_before = s.tftp_text(PXE);
    let pxe_file = tdir.path().join("pxelinux.cfg.j2");
    let original = std::fs::read_to_string(&pxe_file).unwrap();
    // `node.arch | length` fails on a node without arch (none has no length), but
    // only for kernel profiles: the load-time sample render covers those with an arch.
    let edit = format!(
        "{original}{{% if profile.kind != \"local\" %}}# arch {{{{ node.arch | length }}}}{{% endif %}}\n"
    );
    std::fs::write(&pxe_file, edit).unwrap();
    let n2 = wait_tftp_contains(&s, "pxelinux.cfg/01-52-54-00-00-00-02", "# arch 6");
    assert!(n2.contains("LINUX nodes/n2/kernel"), "{n2}");
    let line = s
        .wait_for_log(&["could not be re-rendered", "n1"], RELOAD_TIMEOUT)
        .unwrap_or_else(|| panic!("no error naming n1; log:\n{}", s.log()));
    assert!(line.contains("pxelinux.cfg.j2"), "{line}");
    assert_eq!(s.tftp_text(PXE), n1_before);
}

/// `baton serve` on loopback with `--template-dir`, expected to exit by itself.
fn serve(data: &Path, templates: &Path) -> Command {
    HostBuilder::new(data).template_dir(templates).command()
}

#[test]
fn server_refuses_to_start_with_a_broken_template() {
    let tdir = tempfile::tempdir().unwrap();
    copy_templates(tdir.path());
    std::fs::write(tdir.path().join("grub.cfg.j2"), "{% for x in %}\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = run_with_timeout(
        &mut serve(data.path(), tdir.path()),
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "started with a broken template");
    assert!(
        out.stderr.contains("grub.cfg.j2")
            && out.stderr.contains(&tdir.path().display().to_string()),
        "the error must name the template and its directory:\n{}",
        out.stderr
    );
    // A missing template is named too.
    std::fs::remove_file(tdir.path().join("node.ipxe.j2")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tftp-root-template/grub.cfg.j2"),
        tdir.path().join("grub.cfg.j2"),
    )
    .unwrap();
    let out = run_with_timeout(
        &mut serve(data.path(), tdir.path()),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("node.ipxe.j2"), "{}", out.stderr);
}
