use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::blobs::BlobStore;
use crate::store::{Applied, Command, HandoffState, Outcome, ProvisionState, Store};

fn shipped_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tftp-root-template")
}

fn shipped() -> Renderer {
    Renderer::load(shipped_dir()).unwrap()
}

fn node(id: &str, macs: &[[u8; 6]]) -> Node {
    Node {
        id: id.into(),
        macs: macs.iter().map(|m| MacAddr(*m)).collect(),
        group: "rack1".into(),
        arch: Some("x86_64".into()),
        owner: "h1".into(),
        epoch: 1,
        provision_state: ProvisionState::Enrolled,
        handoff: HandoffState::None,
        boot_profile: None,
        last_token: 0,
        stuck: None,
        fence: None,
        addresses: Vec::new(),
        boot_token: None,
        created_at: 0,
        updated_at: 0,
    }
}

const M1: [u8; 6] = [0x52, 0x54, 0x00, 0xEC, 0x33, 0x81];
const M2: [u8; 6] = [0xAA, 0xBB, 0xCC, 0x00, 0x11, 0x22];

fn kb(cmdline: &str) -> KernelBoot {
    KernelBoot {
        kernel: Digest::of(b"vmlinuz"),
        ramdisk: Digest::of(b"initrd"),
        cmdline: cmdline.into(),
    }
}

fn as_map(files: Vec<(String, Vec<u8>)>) -> BTreeMap<String, String> {
    files
        .into_iter()
        .map(|(p, b)| (p, String::from_utf8(b).unwrap()))
        .collect()
}

#[test]
fn paths_use_lowercase_dashed_macs() {
    let files = shipped()
        .render_node(&node("n1", &[M1, M2]), &BootProfile::Local)
        .unwrap();
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "grub/grub.cfg-01-52-54-00-ec-33-81",
            "grub/grub.cfg-01-aa-bb-cc-00-11-22",
            "ipxe/52-54-00-ec-33-81.ipxe",
            "ipxe/aa-bb-cc-00-11-22.ipxe",
            "pxelinux.cfg/01-52-54-00-ec-33-81",
            "pxelinux.cfg/01-aa-bb-cc-00-11-22",
        ]
    );
    assert_eq!(kernel_path("n1"), "nodes/n1/kernel");
    assert_eq!(ramdisk_path("n1"), "nodes/n1/ramdisk");
}

#[test]
fn deploy_profile_renders_each_loader() {
    let files = as_map(
        shipped()
            .render_node(
                &node("n1", &[M1]),
                &BootProfile::Deploy(kb("console=ttyS0 ip=dhcp")),
            )
            .unwrap(),
    );
    let pxe = &files["pxelinux.cfg/01-52-54-00-ec-33-81"];
    assert!(pxe.contains("DEFAULT baton\n"));
    assert!(pxe.contains("  LINUX nodes/n1/kernel\n"));
    assert!(pxe.contains("  INITRD nodes/n1/ramdisk\n"));
    assert!(pxe.contains("  APPEND console=ttyS0 ip=dhcp\n"));
    assert!(pxe.contains("IPAPPEND 2"));
    assert!(!pxe.contains("LOCALBOOT"));
    assert!(
        !pxe.contains("{%") && !pxe.contains("\n\n\n"),
        "block tags leave no blank lines:\n{pxe}"
    );
    assert!(pxe.ends_with('\n'));

    let grub = &files["grub/grub.cfg-01-52-54-00-ec-33-81"];
    assert!(grub
        .contains("  linux /nodes/n1/kernel console=ttyS0 ip=dhcp BOOTIF=01-52-54-00-ec-33-81\n"));
    assert!(grub.contains("  initrd /nodes/n1/ramdisk\n"));
    assert!(grub.contains("menuentry \"baton deploy n1\""));

    let ipxe = &files["ipxe/52-54-00-ec-33-81.ipxe"];
    assert!(ipxe.starts_with("#!ipxe\n"));
    assert!(ipxe.contains("kernel /nodes/n1/kernel initrd=ramdisk console=ttyS0 ip=dhcp BOOTIF=01-52-54-00-ec-33-81\n"));
    assert!(ipxe.contains("initrd --name ramdisk /nodes/n1/ramdisk\n"));
    assert!(ipxe.contains("\nboot\n"));
}

#[test]
fn a_boot_token_prefixes_every_node_file_path_and_nothing_else() {
    let tok = "00112233445566778899aabbccddeeff";
    let mut n = node("n1", &[M1]);
    let profile = BootProfile::Deploy(kb("console=ttyS0"));
    let plain = as_map(shipped().render_node(&n, &profile).unwrap());
    n.boot_token = Some(tok.parse().unwrap());
    let tokened = as_map(shipped().render_node(&n, &profile).unwrap());
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        tokened.keys().collect::<Vec<_>>(),
        "the served paths stay"
    );
    let p = format!("_t/{tok}/");
    let ipxe = &tokened["ipxe/52-54-00-ec-33-81.ipxe"];
    assert!(ipxe.contains(&format!("kernel /{p}nodes/n1/kernel initrd=ramdisk")));
    assert!(ipxe.contains(&format!("initrd --name ramdisk /{p}nodes/n1/ramdisk\n")));
    let grub = &tokened["grub/grub.cfg-01-52-54-00-ec-33-81"];
    assert!(grub.contains(&format!("  linux /{p}nodes/n1/kernel console=ttyS0")));
    assert!(grub.contains(&format!("  initrd /{p}nodes/n1/ramdisk\n")));
    let pxe = &tokened["pxelinux.cfg/01-52-54-00-ec-33-81"];
    assert!(pxe.contains(&format!("  LINUX {p}nodes/n1/kernel\n")));
    assert!(pxe.contains(&format!("  INITRD {p}nodes/n1/ramdisk\n")));
    // Nothing else changes: take the prefix out and the files are the plain ones.
    for (path, text) in &tokened {
        assert_eq!(text.replace(&p, ""), plain[path], "{path}");
    }
}

#[test]
fn without_a_token_the_output_is_what_the_templates_gave_before_tokens() {
    // The shipped templates with `{{ boot.prefix }}` taken out are the templates as they
    // were before boot tokens: in `open` and `bound` mode every file is byte-identical.
    let dir = shipped_dir();
    let old: Vec<(&str, String)> = crate::render::TEMPLATES
        .iter()
        .map(|t| {
            let s = std::fs::read_to_string(dir.join(t)).unwrap();
            assert!(s.contains("{{ boot.prefix }}"), "{t} uses the prefix");
            (*t, s.replace("{{ boot.prefix }}", ""))
        })
        .collect();
    let old = Renderer::from_sources(old).unwrap();
    let n = node("n1", &[M1, [0x52, 0x54, 0, 1, 2, 3]]);
    for profile in [
        BootProfile::Deploy(kb("console=ttyS0 ip=dhcp")),
        BootProfile::Instance(kb("root=/dev/sda1")),
        BootProfile::Local,
    ] {
        assert_eq!(
            shipped().render_node(&n, &profile).unwrap(),
            old.render_node(&n, &profile).unwrap()
        );
    }
}

#[test]
fn instance_and_local_profiles() {
    let r = shipped();
    let n = node("web-7", &[M1]);
    let inst = as_map(
        r.render_node(&n, &BootProfile::Instance(kb("root=/dev/sda1")))
            .unwrap(),
    );
    assert!(inst["pxelinux.cfg/01-52-54-00-ec-33-81"].contains("APPEND root=/dev/sda1"));
    assert!(inst["grub/grub.cfg-01-52-54-00-ec-33-81"].contains("baton instance web-7"));
    let local = as_map(r.render_node(&n, &BootProfile::Local).unwrap());
    let pxe = &local["pxelinux.cfg/01-52-54-00-ec-33-81"];
    assert!(pxe.contains("LOCALBOOT 0") && !pxe.contains("LINUX"));
    let grub = &local["grub/grub.cfg-01-52-54-00-ec-33-81"];
    assert!(grub.contains("  exit\n") && !grub.contains("linux "));
    let ipxe = &local["ipxe/52-54-00-ec-33-81.ipxe"];
    assert!(ipxe.contains("\nexit\n") && !ipxe.contains("kernel "));
}

#[test]
fn rendering_is_deterministic() {
    let a = shipped()
        .render_node(&node("n1", &[M2, M1]), &BootProfile::Deploy(kb("x")))
        .unwrap();
    let b = shipped()
        .render_node(&node("n1", &[M2, M1]), &BootProfile::Deploy(kb("x")))
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn grub_cmdline_is_escaped() {
    let files = as_map(
        shipped()
            .render_node(
                &node("n1", &[M1]),
                &BootProfile::Deploy(kb(r#"a=$x;reboot b="c d""#)),
            )
            .unwrap(),
    );
    assert!(files["grub/grub.cfg-01-52-54-00-ec-33-81"]
        .contains(r#"linux /nodes/n1/kernel a=\$x\;reboot b=\"c d\" BOOTIF"#));
    // pxelinux takes APPEND literally.
    assert!(files["pxelinux.cfg/01-52-54-00-ec-33-81"].contains(r#"APPEND a=$x;reboot b="c d""#));
}

#[test]
fn unsafe_cmdline_is_refused() {
    let err = shipped()
        .render_node(
            &node("n1", &[M1]),
            &BootProfile::Deploy(kb("quiet\nLABEL evil")),
        )
        .unwrap_err();
    assert!(matches!(err, RenderError::InvalidProfile(_)), "{err}");
}

fn sources(grub: &str) -> Vec<(&'static str, String)> {
    TEMPLATES
        .iter()
        .map(|name| {
            let text = if *name == GRUB_TEMPLATE {
                grub.to_string()
            } else {
                std::fs::read_to_string(shipped_dir().join(name)).unwrap()
            };
            (*name, text)
        })
        .collect()
}

#[test]
fn broken_templates_name_template_and_line() {
    let err = Renderer::from_sources(sources(
        "set a=1\nset b=2\n{% if profile.kind %}\nno endif\n",
    ))
    .unwrap_err();
    match &err {
        RenderError::Template { template, line, .. } => {
            assert_eq!(template, GRUB_TEMPLATE);
            assert!(line.is_some(), "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().starts_with("template grub.cfg.j2 line "),
        "{err}"
    );

    // Misspelt variable: caught at load by the self-test, not at boot time.
    let err =
        Renderer::from_sources(sources("line one\nlinux {{ profile.kernal }}\n")).unwrap_err();
    assert!(
        matches!(&err, RenderError::Template { template, line: Some(2), .. } if template == GRUB_TEMPLATE),
        "{err}"
    );
    // Unknown filter.
    let err = Renderer::from_sources(sources("{{ node.id | nope }}\n")).unwrap_err();
    assert!(
        matches!(&err, RenderError::Template { line: Some(1), .. }),
        "{err}"
    );
    // A missing template.
    let err = Renderer::from_sources(sources("ok\n").into_iter().skip(1)).unwrap_err();
    assert!(err.to_string().contains(PXELINUX_TEMPLATE), "{err}");
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Renderer::load(dir.path()),
        Err(RenderError::Io { .. })
    ));
}

/// Store with host h1, node n1 (M1), kernel and ramdisk imported into blobs.
fn setup() -> (tempfile::TempDir, Store, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("baton.db")).unwrap();
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    let apply = |c: Command| assert!(store.apply(&c).unwrap().is_applied(), "{c:?}");
    apply(Command::RegisterHost {
        name: "h1".into(),
        group: "g".into(),
        addresses: vec![],
        at: 1,
    });
    apply(Command::RegisterHost {
        name: "h2".into(),
        group: "g".into(),
        addresses: vec![],
        at: 1,
    });
    apply(Command::EnrollNode {
        node: "n1".into(),
        macs: vec![MacAddr(M1)],
        group: "g".into(),
        arch: None,
        owner: "h1".into(),
        at: 2,
    });
    apply(Command::EnrollNode {
        node: "n2".into(),
        macs: vec![MacAddr(M2)],
        group: "g".into(),
        arch: None,
        owner: "h2".into(),
        at: 2,
    });
    for data in [&b"vmlinuz"[..], b"initrd"] {
        let info = blobs.put_bytes(data).unwrap();
        apply(Command::RegisterArtifact {
            digest: info.digest,
            size: info.size,
            name: "x".into(),
            host: "h1".into(),
            at: 3,
        });
    }
    (dir, store, blobs)
}

#[test]
fn profile_command_maps_whole_namespace() {
    let (_d, store, blobs) = setup();
    let r = shipped();
    let n1 = store.node("n1").unwrap().unwrap();
    let cmd = boot_profile_command(
        &r,
        &blobs,
        &n1,
        Some(BootProfile::Deploy(kb("c"))),
        "h1",
        10,
    )
    .unwrap();
    let out = store.apply(&cmd).unwrap();
    assert!(
        matches!(
            out,
            Outcome::Applied(Applied::BootProfileSet {
                files: 5,
                changed: true,
                ..
            })
        ),
        "{out:?}"
    );
    // Every served path resolves to a blob this host holds, with the right bytes.
    for f in store.node_files("n1").unwrap() {
        let hit = store
            .resolve_node_file(&format!("/{}", f.path))
            .unwrap()
            .unwrap();
        assert_eq!(hit.node, "n1");
        assert_eq!(blobs.read(&hit.digest).unwrap().len() as u64, hit.size);
    }
    let kernel = store.resolve_node_file("nodes/n1/kernel").unwrap().unwrap();
    assert_eq!(&blobs.read(&kernel.digest).unwrap()[..], b"vmlinuz");
    let pxe = store
        .resolve_node_file("pxelinux.cfg/01-52-54-00-ec-33-81")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8(blobs.read(&pxe.digest).unwrap().to_vec())
        .unwrap()
        .contains("LINUX nodes/n1/kernel"));

    // A kernel that is not in the local blob store cannot be planned.
    let missing = BootProfile::Deploy(KernelBoot {
        kernel: Digest::of(b"other"),
        ..kb("c")
    });
    assert!(matches!(
        boot_profile_command(&r, &blobs, &n1, Some(missing), "h1", 11),
        Err(RenderError::MissingBlob(_))
    ));
    // Clearing the profile clears the namespace.
    let n1 = store.node("n1").unwrap().unwrap();
    store
        .apply(&boot_profile_command(&r, &blobs, &n1, None, "h1", 12).unwrap())
        .unwrap();
    assert!(store.node_files("n1").unwrap().is_empty());
}

#[test]
fn the_token_is_stored_with_the_files_that_carry_it() {
    let (_d, store, blobs) = setup();
    let r = shipped();
    let deploy = || Some(BootProfile::Deploy(kb("c")));
    let render = |choice: TokenChoice, at: i64| {
        let mut n = store.node("n1").unwrap().unwrap();
        n.boot_token = next_token(n.boot_token, choice).unwrap();
        let cmd = boot_profile_command(&r, &blobs, &n, deploy(), "h1", at).unwrap();
        assert!(store.apply(&cmd).unwrap().is_applied());
        store.node("n1").unwrap().unwrap().boot_token
    };
    let script = || {
        let f = store
            .resolve_node_file("ipxe/52-54-00-ec-33-81.ipxe")
            .unwrap()
            .unwrap();
        String::from_utf8(blobs.read(&f.digest).unwrap().to_vec()).unwrap()
    };
    assert_eq!(render(TokenChoice::Off, 10), None);
    assert!(script().contains("kernel /nodes/n1/kernel"));
    let t1 = render(TokenChoice::Keep, 11).expect("a token where there was none");
    assert!(script().contains(&format!("kernel /_t/{t1}/nodes/n1/kernel")));
    assert_eq!(render(TokenChoice::Keep, 12), Some(t1), "kept");
    let t2 = render(TokenChoice::Rotate, 13).expect("rotated");
    assert_ne!(t1, t2);
    assert!(script().contains(&format!("kernel /_t/{t2}/nodes/n1/kernel")));
    assert!(!script().contains(&t1.to_string()));
    // Re-rendering keeps the token (no command), or drops it when tokens are off here.
    assert!(rerender_all(&store, &blobs, &r, "h1", true, 14)
        .unwrap()
        .commands
        .is_empty());
    let plan = rerender_all(&store, &blobs, &r, "h1", false, 15).unwrap();
    assert_eq!(plan.commands.len(), 1);
    store.apply(&plan.commands[0]).unwrap();
    assert_eq!(store.node("n1").unwrap().unwrap().boot_token, None);
    assert!(script().contains("kernel /nodes/n1/kernel"));
    // No profile, no files, no token.
    render(TokenChoice::Rotate, 16);
    let n = store.node("n1").unwrap().unwrap();
    store
        .apply(&boot_profile_command(&r, &blobs, &n, None, "h1", 17).unwrap())
        .unwrap();
    assert_eq!(store.node("n1").unwrap().unwrap().boot_token, None);
    // The token goes to no event.
    let events = serde_json::to_string(&store.events_since(0, 1000).unwrap()).unwrap();
    assert!(!events.contains(&t2.to_string()) && !events.contains(&t1.to_string()));
}

#[test]
fn rerender_touches_only_changed_owned_nodes() {
    let (_d, store, blobs) = setup();
    let r = shipped();
    for (id, host) in [("n1", "h1"), ("n2", "h2")] {
        let n = store.node(id).unwrap().unwrap();
        let cmd = boot_profile_command(&r, &blobs, &n, Some(BootProfile::Local), host, 10).unwrap();
        assert!(store.apply(&cmd).unwrap().is_applied());
    }
    // Same templates: nothing to do.
    let plan = rerender_all(&store, &blobs, &r, "h1", false, 20).unwrap();
    assert!(plan.commands.is_empty() && plan.failures.is_empty());
    // Edited GRUB template: only n1 (owned by h1) is re-rendered, and only GRUB changes.
    let edited =
        Renderer::from_sources(sources("# edited {{ node.id }} {{ profile.kind }}\nexit\n"))
            .unwrap();
    let before = store.node_files("n1").unwrap();
    let plan = rerender_all(&store, &blobs, &edited, "h1", false, 21).unwrap();
    assert_eq!(plan.commands.len(), 1);
    assert!(matches!(&plan.commands[0], Command::SetBootProfile { node, .. } if node == "n1"));
    store.apply(&plan.commands[0]).unwrap();
    let after = store.node_files("n1").unwrap();
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a.digest != b.digest)
        .map(|(_, b)| b.path.as_str())
        .collect();
    assert_eq!(changed, ["grub/grub.cfg-01-52-54-00-ec-33-81"]);
    assert!(rerender_all(&store, &blobs, &edited, "h1", false, 22)
        .unwrap()
        .commands
        .is_empty());
}

#[test]
fn watcher_reloads_and_reports_broken_templates() {
    let dir = tempfile::tempdir().unwrap();
    for name in TEMPLATES {
        std::fs::copy(shipped_dir().join(name), dir.path().join(name)).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let _w = watch_templates(dir.path(), Duration::from_millis(100), move |res| {
        let _ = tx.send(res.map(|r| {
            r.render_node(&node("n1", &[M1]), &BootProfile::Local)
                .unwrap()
        }));
    })
    .unwrap();
    let wait = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("watcher callback")
    };

    std::fs::write(dir.path().join(GRUB_TEMPLATE), "# v2 {{ node.id }}\n").unwrap();
    let files = as_map(wait().unwrap());
    assert_eq!(files["grub/grub.cfg-01-52-54-00-ec-33-81"], "# v2 n1\n");

    std::fs::write(dir.path().join(GRUB_TEMPLATE), "ok\n{% for x in %}\n").unwrap();
    let err = wait().unwrap_err();
    assert!(
        matches!(&err, RenderError::Template { template, line: Some(2), .. } if template == GRUB_TEMPLATE),
        "{err}"
    );
}
