//! Listing at fleet size: keyset pages of nodes and artifacts, their filters, and the
//! joined MACs and holders matching the one-row reads.

use super::*;

fn mac(i: u16) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 1, (i >> 8) as u8, i as u8])
}

fn ok(store: &Store, cmd: Command) {
    let out = store.apply(&cmd).unwrap();
    assert!(out.is_applied(), "{cmd:?}: {out:?}");
}

/// Hosts h1, h2; 30 nodes n00..n29 (two MACs each for the even ones), owned
/// alternately, groups by thirds; n03 migrating, n04 stuck, n05 active, n06 with a
/// local profile.
fn fleet() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("baton.db")).unwrap();
    for h in ["h1", "h2"] {
        ok(
            &store,
            Command::RegisterHost {
                name: h.into(),
                group: "g0".into(),
                addresses: vec![],
                at: 1,
            },
        );
    }
    for i in 0..30u16 {
        let mut macs = vec![mac(i)];
        if i % 2 == 0 {
            macs.push(mac(1000 + i));
        }
        ok(
            &store,
            Command::EnrollNode {
                node: format!("n{i:02}"),
                macs,
                group: format!("g{}", i / 10),
                arch: Some(if i % 3 == 0 { "aarch64" } else { "x86_64" }.into()),
                owner: if i % 2 == 0 { "h1" } else { "h2" }.into(),
                at: 2,
            },
        );
    }
    ok(
        &store,
        Command::BeginMigration {
            node: "n03".into(),
            to: "h1".into(),
            expected_epoch: 1,
            at: 3,
        },
    );
    ok(
        &store,
        Command::FlagNode {
            node: "n04".into(),
            stuck: Some("no live host holds its artifacts".into()),
            at: 3,
        },
    );
    ok(
        &store,
        Command::SetProvisionState {
            node: "n05".into(),
            state: ProvisionState::Active,
            expected_epoch: None,
            at: 3,
        },
    );
    ok(
        &store,
        Command::SetBootProfile {
            boot_token: None,
            node: "n06".into(),
            profile: Some(BootProfile::Local),
            files: vec![],
            host: "h1".into(),
            expected_epoch: None,
            at: 3,
        },
    );
    (dir, store)
}

fn ids(nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

#[test]
fn pages_cover_every_node_once_in_id_order_with_its_macs() {
    let (_d, store) = fleet();
    let all = store.nodes().unwrap();
    assert_eq!(all.len(), 30);
    // The joined read gives exactly what the one-node read gives.
    for n in &all {
        assert_eq!(Some(n), store.node(&n.id).unwrap().as_ref());
    }
    assert_eq!(all[0].macs, vec![mac(0), mac(1000)]);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .nodes_page(&NodeFilter::default(), after.as_deref(), 7)
            .unwrap();
        paged.extend(page.iter().cloned());
        if page.len() < 7 {
            break;
        }
        after = page.last().map(|n| n.id.clone());
    }
    assert_eq!(paged, all);
    // A node added before the cursor is not listed; one after it is, nothing repeats.
    let first = store.nodes_page(&NodeFilter::default(), None, 10).unwrap();
    ok(
        &store,
        Command::EnrollNode {
            node: "a-new".into(),
            macs: vec![mac(500)],
            group: "g0".into(),
            arch: None,
            owner: "h1".into(),
            at: 4,
        },
    );
    ok(
        &store,
        Command::EnrollNode {
            node: "z-new".into(),
            macs: vec![mac(501)],
            group: "g0".into(),
            arch: None,
            owner: "h1".into(),
            at: 4,
        },
    );
    let rest = store
        .nodes_page(&NodeFilter::default(), Some(&first[9].id), 1000)
        .unwrap();
    let mut seen = ids(&first);
    seen.extend(ids(&rest));
    assert_eq!(seen.len(), 31, "{seen:?}");
    assert!(!seen.contains(&"a-new".to_string()));
    assert_eq!(seen.last().map(String::as_str), Some("z-new"));
}

#[test]
fn filters_match_the_fields_they_name() {
    let (_d, store) = fleet();
    let all = store.nodes().unwrap();
    let check = |f: NodeFilter, want: &dyn Fn(&Node) -> bool| {
        let got = store.nodes_page(&f, None, 1000).unwrap();
        let expect: Vec<Node> = all.iter().filter(|n| want(n)).cloned().collect();
        assert!(!expect.is_empty(), "{f:?} matches nothing in the fixture");
        assert_eq!(ids(&got), ids(&expect), "{f:?}");
        assert_eq!(store.count_nodes(&f).unwrap(), expect.len() as u64, "{f:?}");
    };
    check(
        NodeFilter {
            owner: Some("h2".into()),
            ..Default::default()
        },
        &|n| n.owner == "h2",
    );
    check(
        NodeFilter {
            group: Some("g1".into()),
            owner: Some("h1".into()),
            ..Default::default()
        },
        &|n| n.group == "g1" && n.owner == "h1",
    );
    check(
        NodeFilter {
            arch: Some("aarch64".into()),
            ..Default::default()
        },
        &|n| n.arch.as_deref() == Some("aarch64"),
    );
    check(
        NodeFilter {
            provision_state: Some(ProvisionState::Active),
            ..Default::default()
        },
        &|n| n.id == "n05",
    );
    check(
        NodeFilter {
            migrating: Some(true),
            ..Default::default()
        },
        &|n| n.id == "n03",
    );
    check(
        NodeFilter {
            migrating: Some(false),
            ..Default::default()
        },
        &|n| n.id != "n03",
    );
    check(
        NodeFilter {
            stuck: Some(true),
            ..Default::default()
        },
        &|n| n.id == "n04",
    );
    check(
        NodeFilter {
            profile: Some(Some("local".into())),
            ..Default::default()
        },
        &|n| n.id == "n06",
    );
    check(
        NodeFilter {
            profile: Some(None),
            ..Default::default()
        },
        &|n| n.id != "n06",
    );
    // By a node's second MAC.
    check(
        NodeFilter {
            mac: Some(mac(1008)),
            ..Default::default()
        },
        &|n| n.id == "n08",
    );
    assert!(store
        .nodes_page(
            &NodeFilter {
                mac: Some(mac(999)),
                ..Default::default()
            },
            None,
            10
        )
        .unwrap()
        .is_empty());
    let counts = store.owned_counts().unwrap();
    assert_eq!(counts.get("h1"), Some(&15));
    assert_eq!(counts.get("h2"), Some(&15));
}

#[test]
fn artifact_pages_carry_their_holders() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("baton.db")).unwrap();
    for h in ["h1", "h2"] {
        ok(
            &store,
            Command::RegisterHost {
                name: h.into(),
                group: "g".into(),
                addresses: vec![],
                at: 1,
            },
        );
    }
    for i in 0..12u32 {
        ok(
            &store,
            Command::RegisterArtifact {
                digest: Digest::of(&i.to_le_bytes()),
                size: 4,
                name: if i < 3 {
                    "vmlinuz".into()
                } else {
                    format!("f{i}")
                },
                host: if i % 2 == 0 { "h1" } else { "h2" }.into(),
                at: 2,
            },
        );
        if i % 4 == 0 {
            ok(
                &store,
                Command::RecordHostArtifact {
                    host: "h2".into(),
                    digest: Digest::of(&i.to_le_bytes()),
                    present: true,
                    at: 3,
                },
            );
        }
    }
    let all = store.artifacts().unwrap();
    assert_eq!(all.len(), 12);
    for a in &all {
        assert_eq!(Some(a), store.artifact(&a.digest).unwrap().as_ref());
    }
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let p = store.artifacts_page(None, None, after.as_ref(), 5).unwrap();
        paged.extend(p.iter().cloned());
        if p.len() < 5 {
            break;
        }
        after = p.last().map(|a| a.digest);
    }
    assert_eq!(paged, all);
    let named = store
        .artifacts_page(Some("vmlinuz"), None, None, 100)
        .unwrap();
    assert_eq!(named.len(), 3);
    let on_h2 = store.artifacts_page(None, Some("h2"), None, 100).unwrap();
    let want: Vec<_> = all
        .iter()
        .filter(|a| a.hosts.contains(&"h2".to_string()))
        .cloned()
        .collect();
    assert_eq!(on_h2, want);
    assert_eq!(want.len(), 6 + 3);
    assert_eq!(store.count_artifacts().unwrap(), 12);
}
