//! The ingest planner (sans-IO): what a scan of the tree saw, plus what the store holds,
//! in; per-node changes and the commands that make them, out.
//!
//! Rules:
//! - A per-node path (see [`super::layout`]) belongs to the node whose directory it is
//!   in, or (a MAC-named link) to the node whose directory its link points into, or (a
//!   MAC-named file) to the node that has the MAC, else to a new node `mac-<hex>`.
//! - A file still being written is never adopted: its path keeps the content the store
//!   already has (or stays absent), and the scan is repeated.
//! - A node this ingest is not the source of keeps its MACs and gains the tree's; a node
//!   it is the source of gets exactly the tree's MACs (at least one). A node with a boot
//!   profile is Baton's to render and is left alone.
//! - A node's path or MAC moves to another of this ingest's nodes when the tree says
//!   so (the giver is changed first; a swap between two nodes is refused by the store
//!   until one side changes again).
//! - A node this ingest is the source of, with nothing left in the tree, loses its
//!   files. The artifacts stay: other nodes may serve the same content.

use std::collections::{BTreeMap, BTreeSet};

use crate::blobs::Digest;
use crate::store::{Command, FileSpec, MacAddr, Millis};

use super::layout::{classify, served_path, Role};

/// Longest chain of symlinks followed.
const MAX_HOPS: usize = 8;

/// What the scan saw at one path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A regular file whose content held still while it was read.
    File {
        /// Its content's digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A file being written (changed while read, or modified moments ago).
    Changing,
    /// A symlink to `target`, a normalized path relative to the tree (`None`: it
    /// points outside the tree).
    Link {
        /// Where it points.
        target: Option<String>,
    },
    /// Could not be read.
    Unreadable(String),
}

/// What the store knows of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownNode {
    /// Its MACs.
    pub macs: BTreeSet<MacAddr>,
    /// Who writes its files, if another tool does.
    pub source: Option<String>,
    /// Baton renders its files.
    pub has_profile: bool,
    /// Its files: served path -> digest.
    pub files: BTreeMap<String, Digest>,
}

/// What the store knows, as far as the ingest cares.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Every node.
    pub nodes: BTreeMap<String, KnownNode>,
    /// Served path -> node, over every node.
    pub paths: BTreeMap<String, String>,
    /// MAC -> node.
    pub macs: BTreeMap<MacAddr, String>,
}

impl Known {
    /// Builds the indexes from the nodes.
    pub fn from_nodes(nodes: BTreeMap<String, KnownNode>) -> Known {
        let mut k = Known::default();
        for (id, n) in &nodes {
            for p in n.files.keys() {
                k.paths.insert(p.clone(), id.clone());
            }
            for m in &n.macs {
                k.macs.insert(*m, id.clone());
            }
        }
        k.nodes = nodes;
        k
    }
}

/// A file of a node as it should be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef {
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes; `None`: content kept from before (the file is being rewritten),
    /// size as the store has it.
    pub size: Option<u64>,
}

/// One node to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    /// The node.
    pub node: String,
    /// Unknown to the store: enroll it (owned by the ingesting host).
    pub enroll: bool,
    /// Its MAC set after the change.
    pub macs: BTreeSet<MacAddr>,
    /// The MAC set differs from the store's.
    pub macs_changed: bool,
    /// Its whole file set after the change.
    pub files: BTreeMap<String, FileRef>,
}

/// A path (or MAC) the ingest leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skip {
    /// Path in the tree.
    pub path: String,
    /// Why.
    pub why: String,
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes to change, those that give MACs away first.
    pub changes: Vec<NodeChange>,
    /// Left out, with reasons.
    pub skipped: Vec<Skip>,
    /// Paths still being written (scan again soon).
    pub waiting: Vec<String>,
}

/// Follows links from `path` to a file; returns the last path and what is there.
fn resolve<'a>(
    seen: &'a BTreeMap<String, Seen>,
    path: &'a str,
) -> (&'a str, Result<&'a Seen, String>) {
    let mut at = path;
    for _ in 0..=MAX_HOPS {
        match seen.get(at) {
            Some(Seen::Link { target: Some(t) }) => at = t,
            Some(Seen::Link { target: None }) => {
                return (at, Err("symlink points outside the tree".into()))
            }
            Some(s) => return (at, Ok(s)),
            None => return (at, Err(format!("symlink target {at} does not exist"))),
        }
    }
    (at, Err(format!("more than {MAX_HOPS} symlinks in a row")))
}

/// Node id for a MAC-named file that is no link into a node directory and whose MAC no
/// node has.
pub fn mac_node_id(mac: &MacAddr) -> String {
    format!("mac-{}", mac.hex())
}

/// Plans the changes that make the store serve what the tree holds. `seen` has every
/// per-node path of the tree and the targets of its links; `source` is this ingest.
pub fn plan(seen: &BTreeMap<String, Seen>, known: &Known, source: &str) -> Plan {
    let mut out = Plan::default();
    // node -> (served path -> file), node -> learned MACs
    let mut files: BTreeMap<String, BTreeMap<String, FileRef>> = BTreeMap::new();
    let mut learned: BTreeMap<String, BTreeMap<MacAddr, String>> = BTreeMap::new();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    for (path, s) in seen {
        let role = classify(path);
        if !role.is_node() {
            continue;
        }
        let (last, content) = resolve(seen, path);
        let node = match &role {
            Role::NodeDir { node } => Some(node.clone()),
            Role::MacName { mac } => match (matches!(s, Seen::Link { .. }), classify(last)) {
                (true, Role::NodeDir { node }) => Some(node),
                _ => Some(
                    known
                        .macs
                        .get(mac)
                        .cloned()
                        .unwrap_or_else(|| mac_node_id(mac)),
                ),
            },
            Role::IpName => match classify(last) {
                Role::NodeDir { node } if matches!(s, Seen::Link { .. }) => Some(node),
                _ => None,
            },
            Role::Shared => None,
        };
        let Some(node) = node else {
            out.skipped.push(Skip {
                path: path.clone(),
                why: "an address-named file that is no link into a node directory: no node to give it to".into(),
            });
            continue;
        };
        if let Some(k) = known.nodes.get(&node) {
            if k.has_profile {
                out.skipped.push(Skip {
                    path: path.clone(),
                    why: format!("node {node} has a Baton boot profile: Baton renders its files"),
                });
                continue;
            }
        }
        if let Err(why) = crate::store::types::check_name("node id", &node) {
            out.skipped.push(Skip {
                path: path.clone(),
                why,
            });
            continue;
        }
        let served = served_path(path, &role);
        if crate::store::types::normalize_path(&served).is_none() {
            out.skipped.push(Skip {
                path: path.clone(),
                why: "not a name Baton can serve (too long or unusual characters)".into(),
            });
            continue;
        }
        // A path another of this ingest's nodes serves moves with the tree (that node's
        // new file set, planned from the same tree, no longer has it).
        let ours = |n: &String| {
            known
                .nodes
                .get(n)
                .is_some_and(|k| k.source.as_deref() == Some(source))
        };
        if let Some(other) = known.paths.get(&served).filter(|o| **o != node && !ours(o)) {
            out.skipped.push(Skip {
                path: path.clone(),
                why: format!("{served} is already served for node {other}"),
            });
            continue;
        }
        touched.insert(node.clone());
        if let Role::MacName { mac } = role {
            learned
                .entry(node.clone())
                .or_default()
                .insert(mac, path.clone());
        }
        match content {
            Ok(Seen::File { digest, size }) => {
                files.entry(node).or_default().insert(
                    served,
                    FileRef {
                        digest: *digest,
                        size: Some(*size),
                    },
                );
            }
            Ok(Seen::Changing) => {
                out.waiting.push(path.clone());
                // Keep serving what was adopted before, if anything.
                if let Some(d) = known.nodes.get(&node).and_then(|k| k.files.get(&served)) {
                    files.entry(node).or_default().insert(
                        served,
                        FileRef {
                            digest: *d,
                            size: None,
                        },
                    );
                }
            }
            Ok(Seen::Unreadable(_)) | Err(_) => {
                let why = match content {
                    Ok(Seen::Unreadable(w)) => w.clone(),
                    Err(w) => w,
                    _ => String::new(),
                };
                out.skipped.push(Skip {
                    path: path.clone(),
                    why,
                });
                if let Some(d) = known.nodes.get(&node).and_then(|k| k.files.get(&served)) {
                    files.entry(node).or_default().insert(
                        served,
                        FileRef {
                            digest: *d,
                            size: None,
                        },
                    );
                }
            }
            Ok(Seen::Link { .. }) => unreachable!("resolve follows links"),
        }
    }
    // Nodes this ingest wrote that the tree no longer has lose their files.
    for (id, k) in &known.nodes {
        if k.source.as_deref() == Some(source) && !k.has_profile {
            touched.insert(id.clone());
        }
    }
    // Who will hold each learned MAC, to allow a MAC to move between our nodes.
    let mut mine_after: BTreeMap<MacAddr, String> = BTreeMap::new();
    for (node, macs) in &learned {
        for m in macs.keys() {
            mine_after.insert(*m, node.clone());
        }
    }
    let mut changes = Vec::new();
    for node in touched {
        let k = known.nodes.get(&node);
        let mine = k.is_none_or(|k| k.source.as_deref() == Some(source));
        let mut macs: BTreeSet<MacAddr> = match k {
            Some(k) if !mine => k.macs.clone(),
            _ => BTreeSet::new(),
        };
        for (mac, path) in learned.get(&node).into_iter().flatten() {
            match known.macs.get(mac) {
                Some(holder) if holder != &node => {
                    let moving = known
                        .nodes
                        .get(holder)
                        .is_some_and(|h| h.source.as_deref() == Some(source))
                        && mine_after.get(mac) == Some(&node);
                    if !moving {
                        out.skipped.push(Skip {
                            path: path.clone(),
                            why: format!("MAC {mac} belongs to node {holder}"),
                        });
                        continue;
                    }
                }
                _ => {}
            }
            macs.insert(*mac);
        }
        if macs.is_empty() {
            match k {
                Some(k) => macs = k.macs.clone(),
                None => {
                    // The links usually follow the directory within moments; their
                    // events bring the next scan.
                    out.skipped.push(Skip {
                        path: format!("{node}/"),
                        why: format!("no MAC-named link points at node {node} yet: it cannot be enrolled without a MAC"),
                    });
                    continue;
                }
            }
        }
        let new_files = files.remove(&node).unwrap_or_default();
        let (enroll, macs_changed, same) = match k {
            None => (true, true, false),
            Some(k) => {
                let same_files = k.files.len() == new_files.len()
                    && new_files
                        .iter()
                        .all(|(p, f)| k.files.get(p) == Some(&f.digest));
                let mc = k.macs != macs;
                (
                    false,
                    mc,
                    same_files && !mc && k.source.as_deref() == Some(source),
                )
            }
        };
        if same {
            continue;
        }
        changes.push(NodeChange {
            node,
            enroll,
            macs,
            macs_changed,
            files: new_files,
        });
    }
    // Nodes that give MACs away go first, so the MACs are free when others claim them.
    changes.sort_by_key(|c| {
        let gives = known.nodes.get(&c.node).is_some_and(|k| {
            k.macs.iter().any(|m| !c.macs.contains(m))
                || k.files.keys().any(|p| !c.files.contains_key(p))
        });
        (!gives, c.node.clone())
    });
    out.changes = changes;
    out.waiting.sort();
    out.waiting.dedup();
    out
}

/// The commands that apply `plan`: one per node (a batch where a node is enrolled or
/// its MACs change, so the node and its files land together). `inline` gives the text of
/// small files (carried in the command so every replica serves them at once);
/// `known_size` the size of content kept from before (a file being rewritten).
pub fn commands(
    plan: &Plan,
    ctx: &CommandCtx<'_>,
    inline: &dyn Fn(&Digest) -> Option<String>,
    known_size: &dyn Fn(&Digest) -> Option<u64>,
) -> Vec<(String, Command)> {
    let mut out = Vec::new();
    for c in &plan.changes {
        let mut files = Vec::new();
        for (path, f) in &c.files {
            let Some(size) = f.size.or_else(|| known_size(&f.digest)) else {
                continue;
            };
            files.push(FileSpec {
                path: path.clone(),
                digest: f.digest,
                size,
                held: true,
                text: inline(&f.digest),
            });
        }
        let set = Command::SetNodeFiles {
            node: c.node.clone(),
            files,
            source: ctx.source.to_string(),
            host: ctx.host.to_string(),
            at: ctx.at,
        };
        let macs: Vec<MacAddr> = c.macs.iter().copied().collect();
        let cmd = if c.enroll {
            Command::Batch {
                commands: vec![
                    Command::EnrollNode {
                        node: c.node.clone(),
                        macs,
                        group: ctx.group.to_string(),
                        arch: None,
                        owner: ctx.host.to_string(),
                        at: ctx.at,
                    },
                    set,
                ],
            }
        } else if c.macs_changed {
            Command::Batch {
                commands: vec![
                    Command::UpdateNode {
                        node: c.node.clone(),
                        macs: Some(macs),
                        group: None,
                        arch: None,
                        expected_epoch: None,
                        at: ctx.at,
                    },
                    set,
                ],
            }
        } else {
            set
        };
        out.push((c.node.clone(), cmd));
    }
    out
}

/// Who proposes the commands, and when.
#[derive(Debug, Clone, Copy)]
pub struct CommandCtx<'a> {
    /// This ingest's source tag.
    pub source: &'a str,
    /// The ingesting host (owner of enrolled nodes, holder of the blobs).
    pub host: &'a str,
    /// Group of enrolled nodes.
    pub group: &'a str,
    /// Proposer's time.
    pub at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
    const B: &str = "9a0f7e55-6d4b-4c8e-8f1e-2b5d3c4a1e00";
    const SRC: &str = "ingest:h1:/tftpboot";

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0xab, 0xcd, n])
    }

    fn file(content: &str) -> Seen {
        Seen::File {
            digest: Digest::of(content.as_bytes()),
            size: content.len() as u64,
        }
    }

    fn link(t: &str) -> Seen {
        Seen::Link {
            target: Some(t.into()),
        }
    }

    /// A node's entries as Ironic's pxe_utils writes them.
    fn ironic(seen: &mut BTreeMap<String, Seen>, node: &str, m: MacAddr, config: &str) {
        seen.insert(format!("{node}/config"), file(config));
        seen.insert(format!("{node}/deploy_kernel"), file("kernel"));
        seen.insert(format!("{node}/deploy_ramdisk"), file("ramdisk"));
        seen.insert(
            format!("pxelinux.cfg/01-{}", m.dashes()),
            link(&format!("{node}/config")),
        );
        seen.insert(
            format!("grub.cfg-01-{}", m.dashes()),
            link(&format!("{node}/config")),
        );
        seen.insert(
            format!("{}.conf", m.colons()),
            link(&format!("{node}/config")),
        );
    }

    /// The store after applying `p` (as the store would, for the fields the planner reads).
    fn applied(mut known: Known, p: &Plan) -> Known {
        for c in &p.changes {
            let n = known.nodes.entry(c.node.clone()).or_default();
            n.macs = c.macs.clone();
            n.source = Some(SRC.into());
            n.files = c.files.iter().map(|(p, f)| (p.clone(), f.digest)).collect();
        }
        Known::from_nodes(known.nodes)
    }

    #[test]
    fn ironic_tree_enrolls_one_node_per_uuid() {
        let mut seen = BTreeMap::new();
        ironic(&mut seen, A, mac(1), "cfg a");
        ironic(&mut seen, B, mac(2), "cfg b");
        seen.insert("pxelinux.0".into(), file("loader"));
        let p = plan(&seen, &Known::default(), SRC);
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
        assert_eq!(p.changes.len(), 2);
        let a = &p.changes[0];
        assert_eq!(a.node, A);
        assert!(a.enroll);
        assert_eq!(a.macs, [mac(1)].into());
        let paths: Vec<&str> = a.files.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                &format!("{A}/config"),
                &format!("{A}/deploy_kernel"),
                &format!("{A}/deploy_ramdisk"),
                "52:54:00:ab:cd:01.conf",
                "grub.cfg-01-52-54-00-ab-cd-01",
                "pxelinux.cfg/01-52-54-00-ab-cd-01",
            ]
        );
        let cfg = Digest::of(b"cfg a");
        assert_eq!(a.files["pxelinux.cfg/01-52-54-00-ab-cd-01"].digest, cfg);
        // Applied, the same tree plans nothing.
        let known = applied(Known::default(), &p);
        assert_eq!(plan(&seen, &known, SRC).changes, vec![]);
        // Shared content: both nodes' kernels are one artifact.
        assert_eq!(
            a.files[&format!("{A}/deploy_kernel")],
            p.changes[1].files[&format!("{B}/deploy_kernel")]
        );
    }

    #[test]
    fn files_being_written_are_never_adopted() {
        let mut seen = BTreeMap::new();
        ironic(&mut seen, A, mac(1), "cfg v1");
        let known = applied(Known::default(), &plan(&seen, &Known::default(), SRC));
        // Rewrite in progress: the old content stays, nothing changes, scan again.
        seen.insert(format!("{A}/config"), Seen::Changing);
        let p = plan(&seen, &known, SRC);
        assert_eq!(p.changes, vec![]);
        assert_eq!(p.waiting.len(), 4, "the config and its three links wait");
        // A new node whose config is half-written: not served at all yet.
        ironic(&mut seen, B, mac(2), "cfg b");
        seen.insert(format!("{B}/config"), Seen::Changing);
        let p = plan(&seen, &known, SRC);
        let b = p.changes.iter().find(|c| c.node == B).unwrap();
        assert!(!b.files.contains_key(&format!("{B}/config")));
        assert!(!b.files.contains_key("pxelinux.cfg/01-52-54-00-ab-cd-02"));
        assert!(b.files.contains_key(&format!("{B}/deploy_kernel")));
        // Done: the new bytes are taken.
        seen.insert(format!("{A}/config"), file("cfg v2"));
        let p = plan(&seen, &known, SRC);
        let a = p.changes.iter().find(|c| c.node == A).unwrap();
        assert_eq!(
            a.files[&format!("{A}/config")].digest,
            Digest::of(b"cfg v2")
        );
        assert_eq!(
            a.files["grub.cfg-01-52-54-00-ab-cd-01"].digest,
            Digest::of(b"cfg v2")
        );
    }

    #[test]
    fn deleted_node_dir_clears_its_files_only() {
        let mut seen = BTreeMap::new();
        ironic(&mut seen, A, mac(1), "cfg a");
        ironic(&mut seen, B, mac(2), "cfg b");
        let known = applied(Known::default(), &plan(&seen, &Known::default(), SRC));
        seen.retain(|p, _| !p.contains(A) && !p.contains("ab-cd-01") && !p.contains("ab:cd:01"));
        let p = plan(&seen, &known, SRC);
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(p.changes[0].node, A);
        assert!(p.changes[0].files.is_empty());
        assert_eq!(p.changes[0].macs, [mac(1)].into(), "a node keeps its MACs");
        // A node another tool or an operator made is never cleared.
        let mut known = known;
        known.nodes.get_mut(A).unwrap().source = Some("ingest:h2:/tftpboot".into());
        assert_eq!(plan(&seen, &known, SRC).changes, vec![]);
    }

    #[test]
    fn refusals_are_listed() {
        let mut seen = BTreeMap::new();
        ironic(&mut seen, A, mac(1), "cfg a");
        let mut nodes = BTreeMap::new();
        // A is Baton's own (has a profile); "other" serves B's path; "op" has mac 3.
        nodes.insert(
            A.to_string(),
            KnownNode {
                macs: [mac(1)].into(),
                has_profile: true,
                ..Default::default()
            },
        );
        nodes.insert(
            "other".to_string(),
            KnownNode {
                macs: [mac(9)].into(),
                files: [(format!("{B}/config"), Digest::of(b"x"))].into(),
                ..Default::default()
            },
        );
        nodes.insert(
            "op".to_string(),
            KnownNode {
                macs: [mac(3)].into(),
                ..Default::default()
            },
        );
        ironic(&mut seen, B, mac(3), "cfg b");
        seen.insert(
            "pxelinux.cfg/01-52-54-00-ab-cd-07".into(),
            Seen::Link { target: None },
        );
        let p = plan(&seen, &Known::from_nodes(nodes), SRC);
        let why = |path: &str| {
            p.skipped
                .iter()
                .find(|s| s.path == path)
                .map(|s| s.why.clone())
                .unwrap_or_else(|| panic!("{path} not skipped: {:?}", p.skipped))
        };
        assert!(why(&format!("{A}/config")).contains("boot profile"));
        assert!(why(&format!("{B}/config")).contains("already served for node other"));
        assert!(why("pxelinux.cfg/01-52-54-00-ab-cd-03").contains("belongs to node op"));
        assert!(why("pxelinux.cfg/01-52-54-00-ab-cd-07").contains("outside the tree"));
        // B has no free MAC: it cannot be enrolled.
        assert!(p.changes.iter().all(|c| c.node != B));
        assert!(why(&format!("{B}/")).contains("cannot be enrolled"));
    }

    #[test]
    fn mac_named_files_without_links_and_moving_macs() {
        // Cobbler-style: a regular file named by MAC, no node directory.
        let mut seen = BTreeMap::new();
        seen.insert("pxelinux.cfg/01-52-54-00-ab-cd-05".into(), file("menu"));
        let p = plan(&seen, &Known::default(), SRC);
        assert_eq!(p.changes[0].node, "mac-525400abcd05");
        // A MAC moving from one of our nodes to another: the giver goes first.
        let mut seen = BTreeMap::new();
        ironic(&mut seen, A, mac(1), "a");
        ironic(&mut seen, B, mac(2), "b");
        let known = applied(Known::default(), &plan(&seen, &Known::default(), SRC));
        let mut seen = BTreeMap::new();
        ironic(&mut seen, A, mac(2), "a");
        ironic(&mut seen, B, mac(1), "b");
        seen.insert(
            format!("pxelinux.cfg/01-{}", mac(4).dashes()),
            link(&format!("{A}/config")),
        );
        let p = plan(&seen, &known, SRC);
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
        assert_eq!(p.changes.len(), 2);
        assert_eq!(p.changes[0].macs, [mac(2), mac(4)].into());
    }

    #[test]
    fn commands_enroll_with_files_in_one_batch() {
        let mut seen = BTreeMap::new();
        ironic(&mut seen, A, mac(1), "cfg a");
        let p = plan(&seen, &Known::default(), SRC);
        let ctx = CommandCtx {
            source: SRC,
            host: "h1",
            group: "rack1",
            at: 5,
        };
        let cmds = commands(&p, &ctx, &|_| None, &|_| None);
        assert_eq!(cmds.len(), 1);
        let Command::Batch { commands } = &cmds[0].1 else {
            panic!("{:?}", cmds[0].1)
        };
        assert!(
            matches!(&commands[0], Command::EnrollNode { node, owner, .. } if node == A && owner == "h1")
        );
        assert!(
            matches!(&commands[1], Command::SetNodeFiles { files, source, .. } if files.len() == 6 && source == SRC)
        );
    }
}
