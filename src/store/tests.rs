//! Command application: every command, its refusals, epochs, events, determinism.

use super::*;

struct T {
    _dir: tempfile::TempDir,
    store: Store,
}

fn fresh() -> T {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("baton.db")).unwrap();
    T { _dir: dir, store }
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, n])
}

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

impl T {
    fn ok(&self, cmd: Command) -> Applied {
        match self.store.apply(&cmd).unwrap() {
            Outcome::Applied(a) => a,
            Outcome::Rejected(r) => panic!("{cmd:?} rejected: {r}"),
        }
    }

    fn no(&self, cmd: Command) -> Rejection {
        let before = self.store.canonical_dump().unwrap();
        let r = match self.store.apply(&cmd).unwrap() {
            Outcome::Rejected(r) => r,
            Outcome::Applied(a) => panic!("{cmd:?} applied: {a:?}"),
        };
        assert_eq!(
            before,
            self.store.canonical_dump().unwrap(),
            "a rejection changes nothing"
        );
        r
    }

    fn node(&self, id: &str) -> Node {
        self.store.node(id).unwrap().unwrap()
    }

    fn kinds(&self) -> Vec<String> {
        self.store
            .events_since(0, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }
}

fn host(name: &str, at: Millis) -> Command {
    Command::RegisterHost {
        name: name.into(),
        group: "rack1".into(),
        addresses: vec!["10.0.0.1".into()],
        at,
    }
}

fn enroll(node: &str, macs: &[MacAddr], owner: &str, at: Millis) -> Command {
    Command::EnrollNode {
        node: node.into(),
        macs: macs.to_vec(),
        group: "rack1".into(),
        arch: Some("x86_64".into()),
        owner: owner.into(),
        at,
    }
}

fn artifact(name: &str, at: Millis) -> Command {
    Command::RegisterArtifact {
        digest: d(name),
        size: name.len() as u64,
        name: name.into(),
        host: "h1".into(),
        at,
    }
}

fn file(path: &str, content: &str) -> FileSpec {
    FileSpec {
        path: path.into(),
        digest: d(content),
        size: content.len() as u64,
        held: true,
        text: None,
    }
}

fn deploy_profile() -> BootProfile {
    BootProfile::Deploy(KernelBoot {
        kernel: d("vmlinuz"),
        ramdisk: d("initrd"),
        cmdline: "console=ttyS0".into(),
    })
}

fn set_profile(
    node: &str,
    profile: Option<BootProfile>,
    files: Vec<FileSpec>,
    epoch: Option<u64>,
    at: Millis,
) -> Command {
    Command::SetBootProfile {
        boot_token: None,
        node: node.into(),
        profile,
        files,
        host: "h1".into(),
        expected_epoch: epoch,
        at,
    }
}

fn deploy_files(node: &str) -> Vec<FileSpec> {
    vec![
        file(&format!("nodes/{node}/kernel"), "vmlinuz"),
        file(&format!("nodes/{node}/ramdisk"), "initrd"),
        file(&format!("/pxelinux.cfg/01-{}", mac(1).dashes()), "pxe cfg"),
    ]
}

/// One host, one node n1 (mac 1), kernel and ramdisk registered.
fn base() -> T {
    let t = fresh();
    t.ok(host("h1", 1000));
    t.ok(enroll("n1", &[mac(1)], "h1", 1001));
    t.ok(artifact("vmlinuz", 1002));
    t.ok(artifact("initrd", 1003));
    t
}

#[test]
fn open_is_wal_full_and_migrated() {
    let t = fresh();
    assert_eq!(t.store.schema_version().unwrap(), schema::current_version());
    let conn = lock(&t.store.writer);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "FULL");
    drop(conn);
    // Re-opening an up-to-date file is a no-op.
    let again = Store::open(t.store.path()).unwrap();
    assert_eq!(
        again.canonical_dump().unwrap(),
        t.store.canonical_dump().unwrap()
    );
}

#[test]
fn a_version_7_store_gets_node_addresses_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for (i, sql) in schema::MIGRATIONS[..7].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", i as u32 + 1)
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO hosts (name, group_name, addresses, registered_at, last_heartbeat) \
             VALUES ('h1', 'g', '[]', 1, 1); \
             INSERT INTO nodes (id, group_name, owner, epoch, provision_state, created_at, \
             updated_at) VALUES ('n1', 'g', 'h1', 1, 'enrolled', 1, 1);",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), schema::current_version());
    let n = store.node("n1").unwrap().unwrap();
    assert!(n.addresses.is_empty());
    assert_eq!(
        n.boot_token, None,
        "version 9: no token until rendered with one"
    );
    let set = Command::SetNodeAddresses {
        node: "n1".into(),
        addresses: vec!["10.0.0.5".parse().unwrap()],
        at: 2,
    };
    assert!(store.apply(&set).unwrap().is_applied());
    assert_eq!(store.node("n1").unwrap().unwrap().addresses.len(), 1);
}

#[test]
fn a_busy_reader_does_not_hold_up_another_read() {
    let t = std::sync::Arc::new(base());
    // A long scan holds one reader; a lookup takes another, at once.
    let held = t.store.reader();
    let (tx, rx) = std::sync::mpsc::channel();
    let t2 = t.clone();
    std::thread::spawn(move || tx.send(t2.store.node("n1").unwrap().is_some()).unwrap());
    assert_eq!(
        rx.recv_timeout(std::time::Duration::from_secs(5)),
        Ok(true),
        "a read waited for another reader"
    );
    // With every reader busy, a read waits for one and then answers.
    let rest: Vec<_> = (1..READERS).map(|_| t.store.reader()).collect();
    assert_eq!(rest.len() + 1, READERS);
    let (tx, rx) = std::sync::mpsc::channel();
    let t2 = t.clone();
    std::thread::spawn(move || tx.send(t2.store.hosts().unwrap().len()).unwrap());
    assert!(rx
        .recv_timeout(std::time::Duration::from_millis(200))
        .is_err());
    drop(rest);
    drop(held);
    assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(1));
    // Every reader is read-only.
    for r in &t.store.readers {
        let e = lock(r).execute("DELETE FROM node_macs", []).unwrap_err();
        assert!(e.to_string().contains("readonly"), "{e}");
    }
}

#[test]
fn newer_schema_is_refused() {
    let t = fresh();
    lock(&t.store.writer)
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        Store::open(t.store.path()),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

#[test]
fn hosts_register_update_heartbeat() {
    let t = fresh();
    assert_eq!(
        t.ok(host("h1", 10)),
        Applied::HostRegistered {
            host: "h1".into(),
            created: true
        }
    );
    assert_eq!(
        t.ok(host("h1", 20)),
        Applied::HostRegistered {
            host: "h1".into(),
            created: false
        }
    );
    t.ok(Command::Heartbeat {
        host: "h1".into(),
        at: 50,
        seen: 0,
    });
    t.ok(Command::Heartbeat {
        host: "h1".into(),
        at: 40,
        seen: 0,
    });
    let h = t.store.host("h1").unwrap().unwrap();
    assert_eq!(
        (h.registered_at, h.last_heartbeat),
        (10, 50),
        "heartbeat never goes back"
    );
    t.ok(Command::RegisterHost {
        name: "h1".into(),
        group: "rack2".into(),
        addresses: vec![],
        at: 60,
    });
    assert_eq!(t.store.hosts().unwrap()[0].group, "rack2");
    assert_eq!(
        t.kinds(),
        ["host_registered", "host_updated"],
        "unchanged re-registration and heartbeats log nothing"
    );
    assert_eq!(
        t.no(Command::Heartbeat {
            host: "ghost".into(),
            at: 1,
            seen: 0,
        }),
        Rejection::UnknownHost {
            host: "ghost".into()
        }
    );
    assert!(matches!(
        t.no(host("bad name", 1)),
        Rejection::Invalid { .. }
    ));
}

#[test]
fn enroll_owns_node_at_epoch_one() {
    let t = fresh();
    t.ok(host("h1", 1));
    assert_eq!(
        t.ok(enroll("n1", &[mac(2), mac(1), mac(2)], "h1", 5)),
        Applied::NodeEnrolled {
            node: "n1".into(),
            owner: "h1".into(),
            epoch: 1
        }
    );
    let n = t.node("n1");
    assert_eq!(n.owner, "h1");
    assert_eq!(n.epoch, 1);
    assert_eq!(n.macs, vec![mac(1), mac(2)], "sorted, de-duplicated");
    assert_eq!(n.provision_state, ProvisionState::Enrolled);
    assert_eq!(n.handoff, HandoffState::None);
    assert_eq!(n.boot_profile, None);
    assert_eq!(t.store.node_by_mac(&mac(2)).unwrap().unwrap().id, "n1");
    assert!(t.store.node_by_mac(&mac(9)).unwrap().is_none());

    assert_eq!(
        t.no(enroll("n1", &[mac(3)], "h1", 6)),
        Rejection::NodeExists { node: "n1".into() }
    );
    assert_eq!(
        t.no(enroll("n2", &[mac(3), mac(2)], "h1", 6)),
        Rejection::MacInUse {
            mac: mac(2),
            node: "n1".into()
        }
    );
    assert_eq!(
        t.no(enroll("n2", &[mac(3)], "h9", 6)),
        Rejection::UnknownHost { host: "h9".into() }
    );
    for bad in [
        enroll("../etc", &[mac(3)], "h1", 6),
        enroll("n2", &[], "h1", 6),
    ] {
        assert!(matches!(t.no(bad), Rejection::Invalid { .. }));
    }
    let ev = t.store.events_since(0, 10).unwrap();
    assert_eq!(ev.last().unwrap().kind, "node_enrolled");
    assert_eq!(ev.last().unwrap().data["macs"][0], "52:54:00:00:00:01");
    assert_eq!(ev.last().unwrap().node.as_deref(), Some("n1"));
}

#[test]
fn update_node_changes_fields_and_macs() {
    let t = base();
    t.ok(enroll("n2", &[mac(2)], "h1", 5));
    assert_eq!(
        t.no(Command::UpdateNode {
            node: "n1".into(),
            macs: Some(vec![mac(2)]),
            group: None,
            arch: None,
            expected_epoch: None,
            at: 6,
        }),
        Rejection::MacInUse {
            mac: mac(2),
            node: "n2".into()
        }
    );
    assert!(matches!(
        t.no(Command::UpdateNode {
            node: "n1".into(),
            macs: None,
            group: None,
            arch: None,
            expected_epoch: Some(7),
            at: 6,
        }),
        Rejection::StaleEpoch {
            expected: 7,
            current: 1,
            ..
        }
    ));
    t.ok(Command::UpdateNode {
        node: "n1".into(),
        macs: Some(vec![mac(1), mac(3)]),
        group: Some("rack9".into()),
        arch: Some(None),
        expected_epoch: Some(1),
        at: 7,
    });
    let n = t.node("n1");
    assert_eq!(
        (
            n.macs.clone(),
            n.group.as_str(),
            n.arch.clone(),
            n.updated_at
        ),
        (vec![mac(1), mac(3)], "rack9", None, 7)
    );
    assert!(
        t.no(Command::UpdateNode {
            node: "nope".into(),
            macs: None,
            group: None,
            arch: None,
            expected_epoch: None,
            at: 8,
        }) == Rejection::UnknownNode {
            node: "nope".into()
        }
    );
}

#[test]
fn node_addresses_are_set_checked_owned_once_and_cleared() {
    let t = base();
    t.ok(enroll("n2", &[mac(2)], "h1", 5));
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let set = |node: &str, a: &[&str], at| Command::SetNodeAddresses {
        node: node.into(),
        addresses: a.iter().map(|s| ip(s)).collect(),
        at,
    };
    assert!(t.node("n1").addresses.is_empty());
    assert_eq!(
        t.ok(set("n1", &["10.0.0.9", "::ffff:10.0.0.5", "10.0.0.9"], 6)),
        Applied::NodeAddressesSet {
            node: "n1".into(),
            addresses: vec![ip("10.0.0.5"), ip("10.0.0.9")],
            changed: true,
        }
    );
    let n = t.node("n1");
    assert_eq!(
        (n.addresses.clone(), n.updated_at),
        (vec![ip("10.0.0.5"), ip("10.0.0.9")], 6)
    );
    assert_eq!(t.kinds().last().map(String::as_str), Some("node_updated"));
    let events = t.kinds().len();
    assert!(matches!(
        t.ok(set("n1", &["10.0.0.9", "10.0.0.5"], 7)),
        Applied::NodeAddressesSet { changed: false, .. }
    ));
    assert_eq!(t.kinds().len(), events, "no change, no event");
    assert_eq!(t.node("n1").updated_at, 6);
    // One node's at most; bad addresses say which.
    assert_eq!(
        t.no(set("n2", &["10.0.0.7", "10.0.0.9"], 8)),
        Rejection::AddressInUse {
            address: ip("10.0.0.9"),
            node: "n1".into()
        }
    );
    for bad in ["0.0.0.0", "255.255.255.255", "239.1.1.1", "::"] {
        match t.no(set("n2", &[bad], 8)) {
            Rejection::Invalid { reason } => assert!(reason.contains(bad), "{reason}"),
            r => panic!("{bad}: {r:?}"),
        }
    }
    assert!(matches!(
        t.no(set("nope", &["10.0.0.7"], 8)),
        Rejection::UnknownNode { .. }
    ));
    let holder = |a: &str| t.store.node_id_by_address(&ip(a)).unwrap();
    assert_eq!(holder("10.0.0.9").as_deref(), Some("n1"));
    assert_eq!(holder("::ffff:10.0.0.5").as_deref(), Some("n1"));
    assert_eq!(holder("10.0.0.7"), None);
    // Cleared, the address is free for another node.
    t.ok(set("n1", &[], 9));
    assert_eq!(holder("10.0.0.9"), None);
    assert!(t.node("n1").addresses.is_empty());
    t.ok(set("n2", &["10.0.0.9"], 10));
    assert_eq!(t.node("n2").addresses, vec![ip("10.0.0.9")]);
    // Listings carry them too (one query for a page).
    let listed = t.store.nodes().unwrap();
    assert_eq!(listed[1].addresses, vec![ip("10.0.0.9")]);
    // A removed node frees its addresses.
    t.ok(Command::RemoveNode {
        node: "n2".into(),
        at: 11,
    });
    assert_eq!(holder("10.0.0.9"), None);
    t.ok(set("n1", &["10.0.0.9"], 12));
}

#[test]
fn provision_state_with_epoch_fencing() {
    let t = base();
    let set = |state, epoch| Command::SetProvisionState {
        node: "n1".into(),
        state,
        expected_epoch: epoch,
        at: 9,
    };
    t.ok(set(ProvisionState::Available, Some(1)));
    assert_eq!(t.node("n1").provision_state, ProvisionState::Available);
    assert_eq!(
        t.no(set(ProvisionState::Deploying, Some(0))),
        Rejection::StaleEpoch {
            node: "n1".into(),
            expected: 0,
            current: 1
        }
    );
    t.ok(set(ProvisionState::Available, None));
    assert_eq!(
        t.kinds()
            .iter()
            .filter(|k| *k == "provision_state_changed")
            .count(),
        1,
        "setting the same state again logs nothing"
    );
}

#[test]
fn boot_profile_sets_namespace() {
    let t = base();
    let applied = t.ok(set_profile(
        "n1",
        Some(deploy_profile()),
        deploy_files("n1"),
        Some(1),
        20,
    ));
    assert_eq!(
        applied,
        Applied::BootProfileSet {
            node: "n1".into(),
            files: 3,
            changed: true
        }
    );
    let n = t.node("n1");
    assert_eq!(n.boot_profile, Some(deploy_profile()));
    let files = t.store.node_files("n1").unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "nodes/n1/kernel",
            "nodes/n1/ramdisk",
            "pxelinux.cfg/01-52-54-00-00-00-01"
        ]
    );
    // The rendered config was registered as an artifact held by h1.
    let cfg = t.store.artifact(&d("pxe cfg")).unwrap().unwrap();
    assert_eq!(
        (cfg.name.as_str(), cfg.size, cfg.hosts.clone()),
        ("01-52-54-00-00-00-01", 7, vec!["h1".to_string()])
    );
    // Lookups normalize a leading slash and refuse escapes.
    let hit = t
        .store
        .resolve_node_file("/nodes/n1/kernel")
        .unwrap()
        .unwrap();
    assert_eq!(
        (hit.node.as_str(), hit.digest, hit.size),
        ("n1", d("vmlinuz"), 7)
    );
    assert!(t
        .store
        .resolve_node_file("nodes/n1/../n1/kernel")
        .unwrap()
        .is_none());
    assert!(t
        .store
        .resolve_node_file("nodes/n1/missing")
        .unwrap()
        .is_none());

    // Same again: applied, unchanged, no new event.
    let events = t.kinds().len();
    assert_eq!(
        t.ok(set_profile(
            "n1",
            Some(deploy_profile()),
            deploy_files("n1"),
            Some(1),
            21
        )),
        Applied::BootProfileSet {
            node: "n1".into(),
            files: 3,
            changed: false
        }
    );
    assert_eq!(t.kinds().len(), events);

    // Local boot: the kernel rows go away; only the config remains.
    t.ok(set_profile(
        "n1",
        Some(BootProfile::Local),
        vec![file("pxelinux.cfg/01-52-54-00-00-00-01", "localboot")],
        None,
        22,
    ));
    assert_eq!(t.store.node_files("n1").unwrap().len(), 1);
    assert!(t
        .store
        .resolve_node_file("nodes/n1/kernel")
        .unwrap()
        .is_none());
    // None clears everything.
    t.ok(set_profile("n1", None, vec![], None, 23));
    assert!(t.store.node_files("n1").unwrap().is_empty());
    assert_eq!(t.node("n1").boot_profile, None);
}

/// Predicate on the expected refusal.
type Check = fn(&Rejection) -> bool;

#[test]
fn boot_profile_refusals() {
    let t = base();
    t.ok(enroll("n2", &[mac(2)], "h1", 5));
    t.ok(set_profile(
        "n2",
        Some(BootProfile::Local),
        vec![file("shared/path", "x")],
        None,
        6,
    ));
    let cases: Vec<(Command, Check)> = vec![
        (
            set_profile("n1", Some(deploy_profile()), deploy_files("n1"), Some(2), 7),
            |r| matches!(r, Rejection::StaleEpoch { .. }),
        ),
        (
            set_profile(
                "n1",
                Some(BootProfile::Deploy(KernelBoot {
                    kernel: d("never imported"),
                    ramdisk: d("initrd"),
                    cmdline: String::new(),
                })),
                deploy_files("n1"),
                None,
                7,
            ),
            |r| matches!(r, Rejection::UnknownArtifact { .. }),
        ),
        (
            set_profile(
                "n1",
                Some(deploy_profile()),
                deploy_files("n1")[1..].to_vec(),
                None,
                7,
            ),
            |r| matches!(r, Rejection::Invalid { reason } if reason.contains("kernel")),
        ),
        (
            set_profile(
                "n1",
                Some(BootProfile::Local),
                vec![file("shared/path", "y")],
                None,
                7,
            ),
            |r| matches!(r, Rejection::PathInUse { node, .. } if node == "n2"),
        ),
        (
            set_profile(
                "n1",
                Some(BootProfile::Local),
                vec![file("a/../b", "y")],
                None,
                7,
            ),
            |r| matches!(r, Rejection::Invalid { .. }),
        ),
        (
            set_profile(
                "n1",
                Some(BootProfile::Local),
                vec![file("a", "y"), file("/a", "z")],
                None,
                7,
            ),
            |r| matches!(r, Rejection::Invalid { .. }),
        ),
        (
            set_profile("n1", None, vec![file("a", "y")], None, 7),
            |r| matches!(r, Rejection::Invalid { .. }),
        ),
        (
            set_profile(
                "n1",
                Some(BootProfile::Local),
                vec![FileSpec {
                    path: "a".into(),
                    digest: d("vmlinuz"),
                    size: 999,
                    held: true,
                    text: None,
                }],
                None,
                7,
            ),
            |r| {
                matches!(
                    r,
                    Rejection::ArtifactSizeMismatch {
                        recorded: 7,
                        claimed: 999,
                        ..
                    }
                )
            },
        ),
        (
            set_profile(
                "n1",
                Some(BootProfile::Instance(KernelBoot {
                    kernel: d("vmlinuz"),
                    ramdisk: d("initrd"),
                    cmdline: "a\nb".into(),
                })),
                deploy_files("n1"),
                None,
                7,
            ),
            |r| matches!(r, Rejection::Invalid { .. }),
        ),
        (
            Command::SetBootProfile {
                boot_token: None,
                node: "n1".into(),
                profile: None,
                files: vec![],
                host: "h9".into(),
                expected_epoch: None,
                at: 7,
            },
            |r| matches!(r, Rejection::UnknownHost { .. }),
        ),
    ];
    for (cmd, check) in cases {
        let r = t.no(cmd.clone());
        assert!(check(&r), "{cmd:?} gave {r:?}");
    }
}

#[test]
fn artifacts_register_and_removal_refused_while_referenced() {
    let t = base();
    assert_eq!(
        t.ok(artifact("vmlinuz", 30)),
        Applied::ArtifactRegistered {
            digest: d("vmlinuz"),
            created: false
        }
    );
    assert!(matches!(
        t.no(Command::RegisterArtifact {
            digest: d("vmlinuz"),
            size: 1,
            name: "x".into(),
            host: "h1".into(),
            at: 31
        }),
        Rejection::ArtifactSizeMismatch { .. }
    ));
    t.ok(host("h2", 32));
    t.ok(Command::RecordHostArtifact {
        host: "h2".into(),
        digest: d("vmlinuz"),
        present: true,
        at: 33,
    });
    assert_eq!(
        t.store.artifact(&d("vmlinuz")).unwrap().unwrap().hosts,
        ["h1", "h2"]
    );
    t.ok(Command::RecordHostArtifact {
        host: "h2".into(),
        digest: d("vmlinuz"),
        present: false,
        at: 34,
    });
    assert_eq!(
        t.store.artifact(&d("vmlinuz")).unwrap().unwrap().hosts,
        ["h1"]
    );
    assert!(matches!(
        t.no(Command::RecordHostArtifact {
            host: "h2".into(),
            digest: d("nope"),
            present: true,
            at: 35
        }),
        Rejection::UnknownArtifact { .. }
    ));

    t.ok(set_profile(
        "n1",
        Some(deploy_profile()),
        deploy_files("n1"),
        None,
        36,
    ));
    assert_eq!(
        t.no(Command::RemoveArtifact {
            digest: d("vmlinuz"),
            at: 37
        }),
        Rejection::ArtifactInUse {
            digest: d("vmlinuz"),
            nodes: vec!["n1".into()]
        }
    );
    t.ok(set_profile("n1", None, vec![], None, 38));
    assert_eq!(
        t.ok(Command::RemoveArtifact {
            digest: d("vmlinuz"),
            at: 39
        }),
        Applied::ArtifactRemoved {
            digest: d("vmlinuz")
        }
    );
    assert!(t.store.artifact(&d("vmlinuz")).unwrap().is_none());
    assert!(matches!(
        t.no(Command::RemoveArtifact {
            digest: d("vmlinuz"),
            at: 40
        }),
        Rejection::UnknownArtifact { .. }
    ));
    let listed: Vec<Digest> = t
        .store
        .artifacts()
        .unwrap()
        .into_iter()
        .map(|a| a.digest)
        .collect();
    assert!(!listed.contains(&d("vmlinuz")) && listed.contains(&d("initrd")));
}

#[test]
fn small_rendered_files_are_kept_in_the_store_while_served() {
    let t = base();
    let inline = |path: &str, content: &str| FileSpec {
        text: Some(content.into()),
        ..file(path, content)
    };
    let cfg = "default deploy\n";
    let mut files = deploy_files("n1");
    files.push(inline("pxelinux.cfg/01-aa", cfg));
    t.ok(set_profile(
        "n1",
        Some(deploy_profile()),
        files,
        Some(1),
        10,
    ));
    assert_eq!(
        t.store.inline_file(&d(cfg)).unwrap().as_deref(),
        Some(cfg.as_bytes())
    );
    assert_eq!(t.store.inline_digests().unwrap().len(), 1);
    // Content that does not hash to the digest it claims is refused.
    let mut lying = deploy_files("n1");
    lying.push(FileSpec {
        text: Some("other".into()),
        ..file("pxelinux.cfg/01-aa", "x\n")
    });
    assert!(matches!(
        t.no(set_profile(
            "n1",
            Some(deploy_profile()),
            lying,
            Some(1),
            11
        )),
        Rejection::Invalid { .. }
    ));
    // A new rendering replaces the old bytes; a removed node leaves none.
    let cfg2 = "default deploy2\n";
    let mut files = deploy_files("n1");
    files.push(inline("pxelinux.cfg/01-aa", cfg2));
    t.ok(set_profile(
        "n1",
        Some(deploy_profile()),
        files,
        Some(1),
        12,
    ));
    assert_eq!(t.store.inline_file(&d(cfg)).unwrap(), None);
    assert!(t.store.inline_file(&d(cfg2)).unwrap().is_some());
    t.ok(Command::RemoveNode {
        node: "n1".into(),
        at: 13,
    });
    assert!(t.store.inline_digests().unwrap().is_empty());
}

#[test]
fn a_migration_flip_is_fenced_until_the_old_owner_confirms_it() {
    let t = base();
    t.ok(host("h2", 2));
    t.ok(Command::BeginMigration {
        node: "n1".into(),
        to: "h2".into(),
        expected_epoch: 1,
        at: 50,
    });
    let before = t.store.last_event_seq().unwrap();
    t.ok(Command::TransferOwnership {
        node: "n1".into(),
        to: "h2".into(),
        expected_epoch: 1,
        reason: TransferReason::Migration,
        stale_before: None,
        at: 60,
    });
    let flip = t.store.last_event_seq().unwrap();
    assert!(flip > before);
    assert_eq!(
        t.node("n1").fence,
        Some(Fence {
            host: "h1".into(),
            seq: flip
        })
    );
    let hb = |host: &str, seen| Command::Heartbeat {
        host: host.into(),
        at: 70,
        seen,
    };
    // A heartbeat from before the flip, or from another host, confirms nothing.
    t.ok(hb("h1", before));
    t.ok(hb("h2", flip));
    assert!(t.node("n1").fence.is_some());
    t.ok(hb("h1", flip));
    assert_eq!(t.node("n1").fence, None);
    assert_eq!(t.store.host("h1").unwrap().unwrap().seen_seq, flip);
    // A takeover keeps a pending fence: the node's first owner may still be answering.
    t.ok(Command::BeginMigration {
        node: "n1".into(),
        to: "h1".into(),
        expected_epoch: 2,
        at: 80,
    });
    t.ok(Command::TransferOwnership {
        node: "n1".into(),
        to: "h1".into(),
        expected_epoch: 2,
        reason: TransferReason::Migration,
        stale_before: None,
        at: 81,
    });
    let fence = t.node("n1").fence.expect("fenced again");
    assert_eq!(fence.host, "h2");
    t.ok(Command::TransferOwnership {
        node: "n1".into(),
        to: "h2".into(),
        expected_epoch: 3,
        reason: TransferReason::Takeover,
        stale_before: None,
        at: 90,
    });
    assert_eq!(t.node("n1").fence, Some(fence));
    // An older heartbeat, delivered late, never moves the confirmation backwards.
    t.ok(hb("h1", 0));
    assert_eq!(t.store.host("h1").unwrap().unwrap().seen_seq, flip);
}

#[test]
fn migration_and_ownership_epochs() {
    let t = base();
    t.ok(host("h2", 2));
    let begin = |to: &str, epoch| Command::BeginMigration {
        node: "n1".into(),
        to: to.into(),
        expected_epoch: epoch,
        at: 50,
    };
    let transfer = |to: &str, epoch, reason| Command::TransferOwnership {
        node: "n1".into(),
        to: to.into(),
        expected_epoch: epoch,
        reason,
        stale_before: None,
        at: 60,
    };
    assert!(
        matches!(t.no(begin("h1", 1)), Rejection::Invalid { .. }),
        "already owner"
    );
    assert!(matches!(
        t.no(begin("h9", 1)),
        Rejection::UnknownHost { .. }
    ));
    assert!(matches!(
        t.no(transfer("h2", 1, TransferReason::Migration)),
        Rejection::NoMigration { .. }
    ));
    t.ok(begin("h2", 1));
    assert_eq!(
        t.node("n1").handoff,
        HandoffState::Migrating {
            to: "h2".into(),
            since: 50
        }
    );
    assert!(matches!(
        t.no(begin("h2", 1)),
        Rejection::MigrationInProgress { .. }
    ));
    assert_eq!(
        t.ok(transfer("h2", 1, TransferReason::Migration)),
        Applied::OwnershipTransferred {
            node: "n1".into(),
            from: "h1".into(),
            to: "h2".into(),
            epoch: 2
        }
    );
    let n = t.node("n1");
    assert_eq!(
        (n.owner.as_str(), n.epoch, n.handoff),
        ("h2", 2, HandoffState::None)
    );
    // The old owner, acting on epoch 1, is fenced off.
    assert_eq!(
        t.no(transfer("h1", 1, TransferReason::Takeover)),
        Rejection::StaleEpoch {
            node: "n1".into(),
            expected: 1,
            current: 2
        }
    );
    assert!(matches!(
        t.no(set_profile("n1", None, vec![], Some(1), 61)),
        Rejection::StaleEpoch { .. }
    ));
    t.ok(transfer("h1", 2, TransferReason::Takeover));
    assert_eq!(t.node("n1").epoch, 3);
    t.ok(begin("h2", 3));
    assert!(matches!(
        t.no(Command::AbortMigration {
            node: "n1".into(),
            expected_epoch: 2,
            at: 70
        }),
        Rejection::StaleEpoch { .. }
    ));
    t.ok(Command::AbortMigration {
        node: "n1".into(),
        expected_epoch: 3,
        at: 70,
    });
    assert!(matches!(
        t.no(Command::AbortMigration {
            node: "n1".into(),
            expected_epoch: 3,
            at: 71
        }),
        Rejection::NoMigration { .. }
    ));
    let ev: Vec<Event> = t
        .store
        .events_since(0, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "ownership_transferred")
        .collect();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].data["epoch"], 2);
    assert_eq!(ev[1].data["reason"], "takeover");
}

#[test]
fn reservations_fence_stale_holders() {
    let t = base();
    let acquire = |holder: &str, ttl, at| Command::AcquireReservation {
        node: "n1".into(),
        holder: holder.into(),
        ttl_ms: ttl,
        at,
    };
    let Applied::ReservationAcquired { reservation: a } = t.ok(acquire("conductor-a", 1000, 100))
    else {
        panic!()
    };
    assert_eq!((a.token, a.expires_at), (1, 1100));
    // Another holder is refused while it is live, and told who holds it.
    assert_eq!(
        t.no(acquire("conductor-b", 1000, 500)),
        Rejection::NodeReserved {
            reservation: a.clone()
        }
    );
    // The live holder re-acquiring keeps its token.
    let Applied::ReservationAcquired { reservation: a2 } = t.ok(acquire("conductor-a", 1000, 600))
    else {
        panic!()
    };
    assert_eq!((a2.token, a2.expires_at), (1, 1600));
    let renew = |holder: &str, token, at| Command::RenewReservation {
        node: "n1".into(),
        holder: holder.into(),
        token,
        ttl_ms: 1000,
        at,
    };
    let Applied::ReservationRenewed { reservation: a3 } = t.ok(renew("conductor-a", 1, 1500))
    else {
        panic!()
    };
    assert_eq!(a3.expires_at, 2500);
    assert!(matches!(
        t.no(renew("conductor-a", 2, 1500)),
        Rejection::ReservationLost {
            latest_token: 1,
            ..
        }
    ));
    // After expiry b takes it with a new token; a is stale.
    let Applied::ReservationAcquired { reservation: b } = t.ok(acquire("conductor-b", 1000, 3000))
    else {
        panic!()
    };
    assert_eq!(b.token, 2);
    assert_eq!(
        t.no(renew("conductor-a", 1, 3100)),
        Rejection::ReservationLost {
            node: "n1".into(),
            current: Some(b.clone()),
            latest_token: 2
        }
    );
    assert_eq!(
        t.no(Command::ReleaseReservation {
            node: "n1".into(),
            holder: "conductor-a".into(),
            token: 1,
            at: 3100
        }),
        Rejection::ReservationLost {
            node: "n1".into(),
            current: Some(b.clone()),
            latest_token: 2
        }
    );
    // The node cannot be removed while reserved.
    assert!(matches!(
        t.no(Command::RemoveNode {
            node: "n1".into(),
            at: 3200
        }),
        Rejection::NodeReserved { .. }
    ));
    // Renewing after expiry is refused even if nobody else took it.
    assert!(matches!(
        t.no(renew("conductor-b", 2, 5000)),
        Rejection::ReservationLost { current: None, .. }
    ));
    assert_eq!(
        t.ok(Command::ReleaseReservation {
            node: "n1".into(),
            holder: "conductor-b".into(),
            token: 2,
            at: 5000
        }),
        Applied::ReservationReleased {
            node: "n1".into(),
            token: 2
        }
    );
    assert!(t.store.reservation("n1").unwrap().is_none());
    let Applied::ReservationAcquired { reservation: c } = t.ok(acquire("conductor-a", 10, 6000))
    else {
        panic!()
    };
    assert_eq!(c.token, 3, "tokens never repeat, even after release");
    assert_eq!(t.node("n1").last_token, 3);
    assert_eq!(t.store.reservations().unwrap(), vec![c]);
    for bad in [
        acquire("x", 0, 1),
        acquire("x", MAX_TTL_MS_PLUS, 1),
        acquire("", 10, 1),
    ] {
        assert!(matches!(t.no(bad), Rejection::Invalid { .. }));
    }
    assert!(matches!(
        t.no(Command::AcquireReservation {
            node: "zz".into(),
            holder: "x".into(),
            ttl_ms: 1,
            at: 1
        }),
        Rejection::UnknownNode { .. }
    ));
}

const MAX_TTL_MS_PLUS: u64 = apply::MAX_TTL_MS + 1;

#[test]
fn remove_node_cascades() {
    let t = base();
    t.ok(set_profile(
        "n1",
        Some(deploy_profile()),
        deploy_files("n1"),
        None,
        10,
    ));
    t.ok(Command::AcquireReservation {
        node: "n1".into(),
        holder: "x".into(),
        ttl_ms: 5,
        at: 11,
    });
    t.ok(Command::RemoveNode {
        node: "n1".into(),
        at: 100,
    });
    assert!(t.store.node("n1").unwrap().is_none());
    assert!(t.store.node_by_mac(&mac(1)).unwrap().is_none());
    assert!(t
        .store
        .resolve_node_file("nodes/n1/kernel")
        .unwrap()
        .is_none());
    assert!(t.store.reservations().unwrap().is_empty());
    // Artifacts stay (other nodes may get them later) and are now removable.
    t.ok(Command::RemoveArtifact {
        digest: d("vmlinuz"),
        at: 101,
    });
    // The MAC is free again.
    t.ok(enroll("n9", &[mac(1)], "h1", 102));
    assert_eq!(
        t.no(Command::RemoveNode {
            node: "n1".into(),
            at: 103
        }),
        Rejection::UnknownNode { node: "n1".into() }
    );
}

#[test]
fn batch_is_all_or_nothing() {
    let t = base();
    t.ok(set_profile(
        "n1",
        Some(deploy_profile()),
        deploy_files("n1"),
        None,
        10,
    ));
    let new_files = vec![
        file("nodes/n1/kernel", "vmlinuz"),
        file("nodes/n1/ramdisk", "initrd"),
        file(&format!("pxelinux.cfg/01-{}", mac(7).dashes()), "pxe cfg"),
    ];
    let update = Command::UpdateNode {
        node: "n1".into(),
        macs: Some(vec![mac(7)]),
        group: None,
        arch: None,
        expected_epoch: Some(1),
        at: 11,
    };
    // Second command refused: the MAC change is rolled back too.
    let r = t.no(Command::Batch {
        commands: vec![
            update.clone(),
            set_profile("n1", Some(deploy_profile()), new_files.clone(), Some(9), 11),
        ],
    });
    assert!(
        matches!(r, Rejection::BatchRejected { index: 1, ref rejection } if matches!(**rejection, Rejection::StaleEpoch { .. }))
    );
    assert_eq!(t.node("n1").macs, vec![mac(1)]);
    let a = t.ok(Command::Batch {
        commands: vec![
            update,
            set_profile("n1", Some(deploy_profile()), new_files, Some(1), 11),
        ],
    });
    assert!(matches!(a, Applied::Batch { ref outcomes } if outcomes.len() == 2));
    assert_eq!(t.node("n1").macs, vec![mac(7)]);
    assert!(t
        .store
        .resolve_node_file(&format!("pxelinux.cfg/01-{}", mac(7).dashes()))
        .unwrap()
        .is_some());
    assert!(t
        .store
        .resolve_node_file(&format!("pxelinux.cfg/01-{}", mac(1).dashes()))
        .unwrap()
        .is_none());
    assert!(matches!(
        t.no(Command::Batch {
            commands: vec![Command::Batch { commands: vec![] }]
        }),
        Rejection::Invalid { .. }
    ));
}

#[test]
fn events_feed_pages() {
    let t = base();
    let all = t.store.events_since(0, 100).unwrap();
    assert_eq!(
        all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        [
            "host_registered",
            "node_enrolled",
            "artifact_registered",
            "artifact_registered"
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let page = t.store.events_since(all[1].seq, 1).unwrap();
    assert_eq!(page, vec![all[2].clone()]);
    assert!(t.store.events_since(u64::MAX, 10).unwrap().is_empty());
    // Rows serialize for the API.
    let v = serde_json::to_value(&all[1]).unwrap();
    assert_eq!(v["kind"], "node_enrolled");
    assert_eq!(v["data"]["owner"], "h1");
}

/// A mixed script touching every command, refusals included.
fn script() -> Vec<Command> {
    let mut cmds = vec![
        host("h1", 1),
        host("h2", 2),
        Command::Heartbeat {
            host: "h2".into(),
            at: 3,
            seen: 0,
        },
        enroll("n1", &[mac(1)], "h1", 4),
        enroll("n2", &[mac(2), mac(3)], "h1", 5),
        enroll("n3", &[mac(2)], "h1", 5), // refused: MAC in use
        artifact("vmlinuz", 6),
        artifact("initrd", 7),
        set_profile("n1", Some(deploy_profile()), deploy_files("n1"), Some(1), 8),
        Command::SetProvisionState {
            node: "n1".into(),
            state: ProvisionState::Deploying,
            expected_epoch: Some(1),
            at: 9,
        },
        Command::AcquireReservation {
            node: "n1".into(),
            holder: "c".into(),
            ttl_ms: 100,
            at: 10,
        },
        Command::RenewReservation {
            node: "n1".into(),
            holder: "c".into(),
            token: 1,
            ttl_ms: 100,
            at: 50,
        },
        Command::BeginMigration {
            node: "n2".into(),
            to: "h2".into(),
            expected_epoch: 1,
            at: 11,
        },
        Command::TransferOwnership {
            node: "n2".into(),
            to: "h2".into(),
            expected_epoch: 1,
            reason: TransferReason::Migration,
            stale_before: None,
            at: 12,
        },
        Command::RecordHostArtifact {
            host: "h2".into(),
            digest: d("vmlinuz"),
            present: true,
            at: 13,
        },
        Command::RemoveArtifact {
            digest: d("vmlinuz"),
            at: 14,
        }, // refused: in use
        Command::UpdateNode {
            node: "n2".into(),
            macs: None,
            group: Some("rack2".into()),
            arch: None,
            expected_epoch: Some(2),
            at: 15,
        },
        Command::ReleaseReservation {
            node: "n1".into(),
            holder: "c".into(),
            token: 1,
            at: 16,
        },
        Command::RemoveNode {
            node: "n2".into(),
            at: 17,
        },
    ];
    cmds.push(Command::Batch {
        commands: vec![enroll("n4", &[mac(4)], "h2", 18), artifact("extra", 18)],
    });
    cmds
}

#[test]
fn same_commands_same_database() {
    let a = fresh();
    let b = fresh();
    let mut outcomes_a = Vec::new();
    for cmd in script() {
        // Round-trip through JSON, as the replicated log will carry them.
        let wire = serde_json::to_string(&cmd).unwrap();
        let back: Command = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, cmd);
        outcomes_a.push(a.store.apply(&cmd).unwrap());
        let ob = b.store.apply(&back).unwrap();
        assert_eq!(outcomes_a.last().unwrap(), &ob);
    }
    assert_eq!(outcomes_a.iter().filter(|o| !o.is_applied()).count(), 2);
    let dump = a.store.canonical_dump().unwrap();
    assert_eq!(dump, b.store.canonical_dump().unwrap());
    assert!(dump.contains("nodes id=\"n1\""));
    assert!(dump.contains("events seq=1 "));
    // Outcomes serialize with a tag the API can switch on.
    let v = serde_json::to_value(&outcomes_a[5]).unwrap();
    assert_eq!(v["result"], "rejected");
    assert_eq!(v["detail"]["kind"], "mac_in_use");
}

#[test]
fn acknowledged_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let dump = {
        let s = Store::open(&path).unwrap();
        for cmd in script() {
            s.apply(&cmd).unwrap();
        }
        s.canonical_dump().unwrap()
        // Dropped without any explicit checkpoint: the data lives in the WAL.
    };
    assert_eq!(Store::open(&path).unwrap().canonical_dump().unwrap(), dump);
}

#[test]
fn corrupt_rows_are_errors_not_panics() {
    let t = base();
    lock(&t.store.writer)
        .execute("UPDATE nodes SET provision_state = 'bogus'", [])
        .unwrap();
    assert!(matches!(t.store.node("n1"), Err(StoreError::Corrupt(_))));
    assert!(t
        .store
        .apply(&Command::RemoveNode {
            node: "n1".into(),
            at: 1
        })
        .is_err());
}

/// Child half of `kill_9_loses_no_acknowledged_write`: a no-op unless the parent set
/// `BATON_CRASH_DB`. Prints `ack N` only after command N returned (was committed).
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var("BATON_CRASH_DB") else {
        return;
    };
    let store = Store::open(path).unwrap();
    store.apply(&host("h1", 0)).unwrap();
    for i in 0u32.. {
        let [a, b, c, e] = i.to_be_bytes();
        let cmd = enroll(
            &format!("n{i}"),
            &[MacAddr([2, 0, a, b, c, e])],
            "h1",
            i64::from(i),
        );
        assert!(store.apply(&cmd).unwrap().is_applied());
        println!("ack {i}");
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baton.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BATON_CRASH_DB", &db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut acked = None;
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ack ") {
            let n: u32 = n.trim().parse().unwrap();
            acked = Some(n);
            if n >= 100 {
                break;
            }
        }
    }
    // SIGKILL while the child is still writing.
    child.kill().unwrap();
    child.wait().unwrap();
    let acked = acked.expect("the child acknowledged writes");
    let store = Store::open(&db).unwrap();
    for i in 0..=acked {
        assert!(
            store.node(&format!("n{i}")).unwrap().is_some(),
            "acknowledged node n{i} lost"
        );
    }
}

#[test]
fn handles_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<crate::blobs::BlobStore>();
    assert_send_sync::<crate::render::Renderer>();
    fn assert_send<T: Send>() {}
    assert_send::<crate::blobs::BlobWriter>();
}

/// Files written by another tool (ingest): set without a profile, source recorded,
/// shared artifacts survive one node's removal of its files.
mod node_files_from_a_tool {
    use super::*;

    fn set_files(node: &str, files: Vec<FileSpec>, at: Millis) -> Command {
        Command::SetNodeFiles {
            node: node.into(),
            files,
            source: "ingest:h1:/tftpboot".into(),
            host: "h1".into(),
            at,
        }
    }

    #[test]
    fn set_replace_clear_and_refusals() {
        let t = fresh();
        t.ok(host("h1", 1));
        t.ok(enroll("a", &[mac(1)], "h1", 2));
        t.ok(enroll("b", &[mac(2)], "h1", 3));
        let kernel = file("a/deploy_kernel", "shared kernel");
        let a = vec![file("a/config", "cfg a"), kernel.clone()];
        let out = t.ok(set_files("a", a.clone(), 4));
        assert!(matches!(
            out,
            Applied::NodeFilesSet {
                files: 2,
                changed: true,
                ..
            }
        ));
        // Same files again: no change, no event.
        let out = t.ok(set_files("a", a, 5));
        assert!(matches!(out, Applied::NodeFilesSet { changed: false, .. }));
        assert_eq!(
            t.store.node_sources().unwrap().get("a").map(String::as_str),
            Some("ingest:h1:/tftpboot")
        );
        assert!(t.node("a").boot_profile.is_none());
        // b serves the same kernel content under its own path.
        t.ok(set_files(
            "b",
            vec![file("b/deploy_kernel", "shared kernel")],
            6,
        ));
        // Another node's path is refused.
        assert!(matches!(
            t.no(set_files("b", vec![file("a/config", "x")], 7)),
            Rejection::PathInUse { .. }
        ));
        // a's files deleted: b's kernel (same artifact) is still served and registered.
        t.ok(set_files("a", vec![], 8));
        assert!(t.store.node_files("a").unwrap().is_empty());
        assert_eq!(t.store.node_files("b").unwrap()[0].digest, kernel.digest);
        assert!(t.store.artifact(&kernel.digest).unwrap().is_some());
        // A node with a Baton boot profile is not the tool's to write.
        t.ok(artifact("vmlinuz", 9));
        t.ok(artifact("initrd", 9));
        t.ok(enroll("c", &[mac(3)], "h1", 9));
        t.ok(set_profile(
            "c",
            Some(deploy_profile()),
            deploy_files("c"),
            None,
            10,
        ));
        assert!(matches!(
            t.no(set_files("c", vec![file("c/config", "x")], 11)),
            Rejection::Invalid { .. }
        ));
        assert!(matches!(
            t.no(set_files("zz", vec![], 12)),
            Rejection::UnknownNode { .. }
        ));
        // Removing the node forgets its source.
        t.ok(Command::RemoveNode {
            node: "a".into(),
            at: 13,
        });
        assert!(!t.store.node_sources().unwrap().contains_key("a"));
        assert_eq!(
            t.kinds().iter().filter(|k| *k == "node_files_set").count(),
            3
        );
    }
}
