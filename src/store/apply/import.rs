//! Bulk enrollment ([`Command::ImportNodes`]): each item creates its node or brings an
//! existing one to the item's values, through the same rules as the single-node
//! commands (enroll, update, set profile), each item under its own savepoint so a bad
//! one leaves no trace and does not hold the others back.

use std::collections::BTreeSet;

use rusqlite::Transaction;

use super::{
    enroll_node, invalid, read, require_host, set_boot_profile, set_node_addresses, update_node,
    valid, Fail, MAX_BATCH, R,
};
use crate::store::command::{Applied, ImportItem, ImportProfile, ImportResult};
use crate::store::types::{check_name, MacAddr, Millis};

/// Applies every item in order; a refused item becomes an [`ImportResult::Failed`].
pub(super) fn import_nodes(
    tx: &Transaction<'_>,
    host: &str,
    group: &str,
    items: &[ImportItem],
    at: Millis,
) -> R<Applied> {
    if items.len() > MAX_BATCH {
        return Err(invalid(format!(
            "import of {} nodes in one command, more than {MAX_BATCH}",
            items.len()
        )));
    }
    require_host(tx, host)?;
    valid(check_name("group", group))?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        tx.execute_batch("SAVEPOINT baton_import_item")?;
        match import_one(tx, host, group, item, at) {
            Ok(r) => {
                tx.execute_batch("RELEASE baton_import_item")?;
                results.push(r);
            }
            Err(Fail::Reject(rejection)) => {
                tx.execute_batch("ROLLBACK TO baton_import_item; RELEASE baton_import_item")?;
                results.push(ImportResult::Failed {
                    node: item.node.clone(),
                    rejection,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Applied::NodesImported { results })
}

/// An item's profile and rendered files, as [`set_boot_profile`] sets them for one node.
fn set_profile(
    tx: &Transaction<'_>,
    id: &str,
    p: &ImportProfile,
    host: &str,
    at: Millis,
) -> R<Applied> {
    let token = p.boot_token.as_ref();
    set_boot_profile(tx, id, p.profile.as_ref(), &p.files, token, host, None, at)
}

fn import_one(
    tx: &Transaction<'_>,
    host: &str,
    group: &str,
    item: &ImportItem,
    at: Millis,
) -> R<ImportResult> {
    let id = item.node.as_str();
    let Some(node) = read::node(tx, id)? else {
        let group = item.group.as_deref().unwrap_or(group);
        enroll_node(tx, id, &item.macs, group, item.arch.as_deref(), host, at)?;
        if let Some(a) = item.addresses.as_ref().filter(|a| !a.is_empty()) {
            set_node_addresses(tx, id, a, at)?;
        }
        if let Some(p) = &item.profile {
            set_profile(tx, id, p, host, at)?;
        }
        return Ok(ImportResult::Created {
            node: id.to_string(),
        });
    };
    let macs: Vec<MacAddr> = item
        .macs
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let new_macs = (macs != node.macs).then_some(item.macs.as_slice());
    let new_group = item.group.as_deref().filter(|g| *g != node.group);
    let new_arch = item
        .arch
        .as_ref()
        .filter(|a| node.arch.as_ref() != Some(*a))
        .map(|a| Some(a.clone()));
    let mut fields = Vec::new();
    if new_macs.is_some() || new_group.is_some() || new_arch.is_some() {
        // Served paths and file contents follow MACs, group and arch: changing them
        // under old files would serve the old names.
        if item.profile.is_none() && node.boot_profile.is_some() {
            return Err(invalid(format!(
                "node {id} boots files rendered for its MACs, group and architecture: \
                 changing them needs its profile re-rendered in the same item"
            )));
        }
        update_node(tx, id, new_macs, new_group, &new_arch, None, at)?;
        for (name, changed) in [
            ("macs", new_macs.is_some()),
            ("group", new_group.is_some()),
            ("arch", new_arch.is_some()),
        ] {
            if changed {
                fields.push(name.to_string());
            }
        }
    }
    if let Some(a) = &item.addresses {
        let set = set_node_addresses(tx, id, a, at)?;
        if matches!(set, Applied::NodeAddressesSet { changed: true, .. }) {
            fields.push("addresses".into());
        }
    }
    if let Some(p) = &item.profile {
        let set = set_profile(tx, id, p, host, at)?;
        if matches!(set, Applied::BootProfileSet { changed: true, .. }) {
            fields.push("profile".into());
        }
    }
    Ok(if fields.is_empty() {
        ImportResult::Unchanged {
            node: id.to_string(),
        }
    } else {
        ImportResult::Updated {
            node: id.to_string(),
            fields,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::Digest;
    use crate::store::command::{Command, FileSpec, ImportProfile, Outcome, Rejection};
    use crate::store::types::{BootProfile, KernelBoot};
    use crate::store::Store;

    fn mac(i: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 2, 0, i])
    }

    fn ok(store: &Store, cmd: &Command) -> Applied {
        match store.apply(cmd).unwrap() {
            Outcome::Applied(a) => a,
            Outcome::Rejected(r) => panic!("{cmd:?}: {r}"),
        }
    }

    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("baton.db")).unwrap();
        ok(
            &store,
            &Command::RegisterHost {
                name: "h1".into(),
                group: "rack1".into(),
                addresses: vec![],
                at: 1,
            },
        );
        for name in ["vmlinuz", "initrd"] {
            ok(
                &store,
                &Command::RegisterArtifact {
                    digest: Digest::of(name.as_bytes()),
                    size: name.len() as u64,
                    name: name.into(),
                    host: "h1".into(),
                    at: 1,
                },
            );
        }
        (dir, store)
    }

    /// A deploy profile with its files as a proposer would render them (a config per
    /// MAC, inline, naming the node's group).
    fn deploy(node: &str, macs: &[MacAddr], group: &str, cmdline: &str) -> ImportProfile {
        let k = KernelBoot {
            kernel: Digest::of(b"vmlinuz"),
            ramdisk: Digest::of(b"initrd"),
            cmdline: cmdline.into(),
        };
        let mut files = vec![
            FileSpec {
                path: format!("nodes/{node}/kernel"),
                digest: k.kernel,
                size: 7,
                held: true,
                text: None,
            },
            FileSpec {
                path: format!("nodes/{node}/ramdisk"),
                digest: k.ramdisk,
                size: 6,
                held: true,
                text: None,
            },
        ];
        for m in macs {
            let text = format!("node {node} group {group} {cmdline}\n");
            files.push(FileSpec {
                path: format!("pxelinux.cfg/01-{}", m.dashes()),
                digest: Digest::of(text.as_bytes()),
                size: text.len() as u64,
                held: true,
                text: Some(text),
            });
        }
        ImportProfile {
            boot_token: None,
            profile: Some(BootProfile::Deploy(k)),
            files,
        }
    }

    fn item(node: &str, macs: &[MacAddr], profile: Option<ImportProfile>) -> ImportItem {
        ImportItem {
            node: node.into(),
            macs: macs.to_vec(),
            group: None,
            arch: None,
            addresses: None,
            profile,
        }
    }

    fn import(store: &Store, items: Vec<ImportItem>, at: Millis) -> Vec<ImportResult> {
        let cmd = Command::ImportNodes {
            host: "h1".into(),
            group: "rack1".into(),
            nodes: items,
            at,
        };
        match ok(store, &cmd) {
            Applied::NodesImported { results } => results,
            other => panic!("{other:?}"),
        }
    }

    fn created(n: &str) -> ImportResult {
        ImportResult::Created { node: n.into() }
    }

    fn unchanged(n: &str) -> ImportResult {
        ImportResult::Unchanged { node: n.into() }
    }

    fn first_import() -> Vec<ImportItem> {
        vec![
            item(
                "n1",
                &[mac(1)],
                Some(deploy("n1", &[mac(1)], "rack1", "ip=dhcp")),
            ),
            item("n2", &[mac(2), mac(12)], None),
            ImportItem {
                group: Some("rack2".into()),
                arch: Some("aarch64".into()),
                ..item("n3", &[mac(3)], Some(deploy("n3", &[mac(3)], "rack2", "")))
            },
        ]
    }

    #[test]
    fn creates_then_a_rerun_changes_nothing() {
        let (_d, store) = setup();
        let r = import(&store, first_import(), 10);
        assert_eq!(r, vec![created("n1"), created("n2"), created("n3")]);
        let n3 = store.node("n3").unwrap().unwrap();
        assert_eq!(
            (n3.group.as_str(), n3.arch.as_deref()),
            ("rack2", Some("aarch64"))
        );
        assert_eq!(n3.owner, "h1");
        assert_eq!(store.node("n2").unwrap().unwrap().group, "rack1");
        assert_eq!(store.node_files("n1").unwrap().len(), 3);
        let pxe = format!("pxelinux.cfg/01-{}", mac(1).dashes());
        assert!(store.resolve_node_file(&pxe).unwrap().is_some());
        // Same content again, later: every node unchanged, not a row or event more.
        let before = store.canonical_dump().unwrap();
        let r = import(&store, first_import(), 20);
        assert_eq!(r, vec![unchanged("n1"), unchanged("n2"), unchanged("n3")]);
        assert_eq!(store.canonical_dump().unwrap(), before);
        // Without group, arch or profile, existing values stay.
        let r = import(&store, vec![item("n3", &[mac(3)], None)], 30);
        assert_eq!(r, vec![unchanged("n3")]);
    }

    #[test]
    fn changes_are_updates_naming_their_fields() {
        let (_d, store) = setup();
        import(&store, first_import(), 10);
        let old_pxe = format!("pxelinux.cfg/01-{}", mac(1).dashes());
        let r = import(
            &store,
            vec![
                item(
                    "n1",
                    &[mac(21)],
                    Some(deploy("n1", &[mac(21)], "rack1", "ip=dhcp")),
                ),
                ImportItem {
                    arch: Some("x86_64".into()),
                    ..item("n2", &[mac(12), mac(2)], None)
                },
                item(
                    "n3",
                    &[mac(3)],
                    Some(deploy("n3", &[mac(3)], "rack2", "quiet")),
                ),
            ],
            20,
        );
        let updated = |n: &str, f: &[&str]| ImportResult::Updated {
            node: n.into(),
            fields: f.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            r,
            vec![
                updated("n1", &["macs", "profile"]),
                // The same MACs in another order are the same set.
                updated("n2", &["arch"]),
                updated("n3", &["profile"]),
            ]
        );
        assert!(store.resolve_node_file(&old_pxe).unwrap().is_none());
        assert_eq!(store.node("n1").unwrap().unwrap().macs, vec![mac(21)]);
    }

    #[test]
    fn a_bad_item_fails_alone_and_leaves_no_trace() {
        let (_d, store) = setup();
        import(&store, first_import(), 10);
        let events = store.last_event_seq().unwrap();
        let r = import(
            &store,
            vec![
                // MAC of n2.
                item("n4", &[mac(4), mac(2)], None),
                item("n5", &[mac(5)], None),
                // Unknown kernel.
                item(
                    "n6",
                    &[mac(6)],
                    Some(ImportProfile {
                        boot_token: None,
                        files: vec![],
                        ..deploy("n6", &[mac(6)], "rack1", "")
                    }),
                ),
                // n1 boots a profile: new MACs without re-rendered files are refused.
                item("n1", &[mac(31)], None),
                item("bad id!", &[mac(7)], None),
                item("n8", &[], None),
            ],
            20,
        );
        assert_eq!(r[1], created("n5"));
        for (i, want) in [(0, "n4"), (2, "n6"), (3, "n1"), (4, "bad id!"), (5, "n8")] {
            match &r[i] {
                ImportResult::Failed { node, .. } => assert_eq!(node, want),
                other => panic!("item {i}: {other:?}"),
            }
        }
        assert!(matches!(
            &r[0],
            ImportResult::Failed { rejection: Rejection::MacInUse { node, .. }, .. } if node == "n2"
        ));
        for gone in ["n4", "n6", "n8"] {
            assert!(store.node(gone).unwrap().is_none(), "{gone}");
        }
        assert_eq!(store.node("n1").unwrap().unwrap().macs, vec![mac(1)]);
        // Only n5's enrollment was logged.
        let new: Vec<String> = store
            .events_since(events, 100)
            .unwrap()
            .into_iter()
            .map(|e| format!("{} {}", e.kind, e.node.unwrap_or_default()))
            .collect();
        assert_eq!(new, vec!["node_enrolled n5"]);
    }

    #[test]
    fn addresses_are_imported_changed_cleared_and_owned_once() {
        let (_d, store) = setup();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let with = |node: &str, m: u8, a: Option<&[&str]>| ImportItem {
            addresses: a.map(|a| a.iter().map(|s| ip(s)).collect()),
            ..item(node, &[mac(m)], None)
        };
        let r = import(
            &store,
            vec![
                with("n1", 1, Some(&["10.0.0.1"])),
                with("n2", 2, None),
                with("n3", 3, Some(&[])),
            ],
            10,
        );
        assert_eq!(r, vec![created("n1"), created("n2"), created("n3")]);
        let addrs = |n: &str| store.node(n).unwrap().unwrap().addresses;
        assert_eq!(addrs("n1"), vec![ip("10.0.0.1")]);
        assert!(addrs("n2").is_empty() && addrs("n3").is_empty());
        let r = import(
            &store,
            vec![
                with("n1", 1, None),
                with("n2", 2, Some(&["10.0.0.2", "10.0.0.12"])),
                with("n3", 3, Some(&["10.0.0.1"])),
                with("n4", 4, Some(&["224.0.0.1"])),
            ],
            20,
        );
        assert_eq!(r[0], ImportResult::Unchanged { node: "n1".into() });
        assert_eq!(
            r[1],
            ImportResult::Updated {
                node: "n2".into(),
                fields: vec!["addresses".into()]
            }
        );
        assert!(
            matches!(&r[2], ImportResult::Failed { rejection: Rejection::AddressInUse { node, .. }, .. } if node == "n1"),
            "{:?}",
            r[2]
        );
        assert!(
            matches!(
                &r[3],
                ImportResult::Failed {
                    rejection: Rejection::Invalid { .. },
                    ..
                }
            ),
            "{:?}",
            r[3]
        );
        assert!(
            store.node("n4").unwrap().is_none(),
            "a refused item leaves no node"
        );
        assert_eq!(addrs("n2"), vec![ip("10.0.0.2"), ip("10.0.0.12")]);
        let r = import(&store, vec![with("n1", 1, Some(&[]))], 30);
        assert!(matches!(&r[0], ImportResult::Updated { fields, .. } if fields == &["addresses"]));
        assert!(addrs("n1").is_empty());
    }

    #[test]
    fn an_import_is_bounded_and_needs_a_known_host() {
        let (_d, store) = setup();
        let many: Vec<ImportItem> = (0..=MAX_BATCH)
            .map(|i| item(&format!("n{i}"), &[mac(1)], None))
            .collect();
        let cmd = Command::ImportNodes {
            host: "h1".into(),
            group: "rack1".into(),
            nodes: many,
            at: 5,
        };
        assert!(matches!(
            store.apply(&cmd).unwrap(),
            Outcome::Rejected(Rejection::Invalid { .. })
        ));
        let cmd = Command::ImportNodes {
            host: "nobody".into(),
            group: "rack1".into(),
            nodes: vec![item("n1", &[mac(1)], None)],
            at: 5,
        };
        assert!(matches!(
            store.apply(&cmd).unwrap(),
            Outcome::Rejected(Rejection::UnknownHost { .. })
        ));
    }
}
