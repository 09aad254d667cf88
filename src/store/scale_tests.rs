//! The log budget at fleet size: batched holdings, batched ownership steps (each still
//! fenced, each with its event), implied holdings of files kept in the store, the
//! rebalance flag, and the indexed reads the reconciler uses instead of full scans.

use super::read::{
    SQL_BLOBS_OF, SQL_BLOBS_OWNED_BY, SQL_MIGRATING, SQL_NODES_OWNED_BY, SQL_NODE_COUNTS,
    SQL_STUCK, SQL_WANTED_BLOBS,
};
use super::*;
use crate::ownership::gate::{check, Facts, NotServed, Purpose, Serve};
use crate::ownership::state::LeaseTimes;

struct T {
    _dir: tempfile::TempDir,
    store: Store,
}

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

fn mac(n: u16) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, (n >> 8) as u8, n as u8])
}

impl T {
    fn new() -> T {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("baton.db")).unwrap();
        T { _dir: dir, store }
    }

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
        assert_eq!(before, self.store.canonical_dump().unwrap());
        r
    }

    fn node(&self, id: &str) -> Node {
        self.store.node(id).unwrap().unwrap()
    }

    fn events(&self, kind: &str) -> Vec<Event> {
        self.store
            .events_since(0, 100_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    fn host(&self, name: &str, at: Millis) {
        self.ok(Command::RegisterHost {
            name: name.into(),
            group: "g".into(),
            addresses: vec![],
            at,
        });
    }

    fn enroll(&self, id: &str, i: u16, owner: &str) {
        self.ok(Command::EnrollNode {
            node: id.into(),
            macs: vec![mac(i)],
            group: "g".into(),
            arch: None,
            owner: owner.into(),
            at: 10,
        });
    }

    fn artifact(&self, name: &str, host: &str) {
        self.ok(Command::RegisterArtifact {
            digest: d(name),
            size: name.len() as u64,
            name: name.into(),
            host: host.into(),
            at: 5,
        });
    }

    /// A deploy profile: shared kernel and ramdisk (blobs) and a rendered config kept
    /// in the store.
    fn profile(&self, id: &str, i: u16) {
        let cfg = format!("default {id}\n");
        let spec = |path: String, content: &str, text: bool| FileSpec {
            path,
            digest: d(content),
            size: content.len() as u64,
            held: true,
            text: text.then(|| content.to_string()),
        };
        self.ok(Command::SetBootProfile {
            boot_token: None,
            node: id.into(),
            profile: Some(BootProfile::Deploy(KernelBoot {
                kernel: d("vmlinuz"),
                ramdisk: d("initrd"),
                cmdline: "console=ttyS0".into(),
            })),
            files: vec![
                spec(format!("nodes/{id}/kernel"), "vmlinuz", false),
                spec(format!("nodes/{id}/ramdisk"), "initrd", false),
                spec(format!("pxelinux.cfg/01-{}", mac(i).dashes()), &cfg, true),
            ],
            host: "h1".into(),
            expected_epoch: None,
            at: 20,
        });
    }
}

/// h1, h2, h3; kernel and ramdisk held by h1; `n` nodes on h1 with profiles.
fn fleet(n: u16) -> T {
    let t = T::new();
    for h in ["h1", "h2", "h3"] {
        t.host(h, 1);
    }
    t.artifact("vmlinuz", "h1");
    t.artifact("initrd", "h1");
    for i in 0..n {
        let id = format!("n{i:04}");
        t.enroll(&id, i, "h1");
        t.profile(&id, i);
    }
    t
}

fn transfer(node: &str, to: &str, epoch: u64, reason: TransferReason) -> Command {
    Command::TransferOwnership {
        node: node.into(),
        to: to.into(),
        expected_epoch: epoch,
        reason,
        stale_before: None,
        at: 100,
    }
}

#[test]
fn holdings_of_many_blobs_are_one_command_and_one_event() {
    let t = fleet(0);
    t.artifact("extra", "h1");
    let before = t.events("host_artifacts_recorded").len();
    let a = t.ok(Command::RecordHostArtifacts {
        host: "h2".into(),
        digests: vec![
            d("initrd"),
            d("vmlinuz"),
            d("initrd"),
            d("never-registered"),
        ],
        at: 30,
    });
    assert_eq!(
        a,
        Applied::HostArtifactsRecorded {
            host: "h2".into(),
            recorded: 2,
            unknown: vec![d("never-registered")],
        }
    );
    let ev = t.events("host_artifacts_recorded");
    assert_eq!(ev.len(), before + 1, "one event for the batch");
    let mut want = vec![d("initrd"), d("vmlinuz")];
    want.sort();
    assert_eq!(ev[0].data["digests"], serde_json::json!(want), "sorted");
    for name in ["vmlinuz", "initrd"] {
        assert_eq!(
            t.store.artifact(&d(name)).unwrap().unwrap().hosts,
            vec!["h1", "h2"]
        );
    }
    // Recording again changes nothing and logs nothing.
    let a = t.ok(Command::RecordHostArtifacts {
        host: "h2".into(),
        digests: vec![d("vmlinuz")],
        at: 31,
    });
    assert!(matches!(
        a,
        Applied::HostArtifactsRecorded { recorded: 0, .. }
    ));
    assert_eq!(t.events("host_artifacts_recorded").len(), before + 1);
    // Refusals: unknown host, too many digests.
    assert!(matches!(
        t.no(Command::RecordHostArtifacts {
            host: "nope".into(),
            digests: vec![d("vmlinuz")],
            at: 32,
        }),
        Rejection::UnknownHost { .. }
    ));
    assert!(matches!(
        t.no(Command::RecordHostArtifacts {
            host: "h2".into(),
            digests: vec![d("x"); command::MAX_RECORDED + 1],
            at: 32,
        }),
        Rejection::Invalid { .. }
    ));
    // The one-blob command of older logs still applies.
    t.ok(Command::RecordHostArtifact {
        host: "h3".into(),
        digest: d("extra"),
        present: true,
        at: 33,
    });
    assert_eq!(
        t.store.artifact(&d("extra")).unwrap().unwrap().hosts,
        vec!["h1", "h3"]
    );
}

#[test]
fn files_kept_in_the_store_are_held_by_every_host_without_a_record() {
    let t = fleet(2);
    let cfg = d("default n0000\n");
    let a = t.store.artifact(&cfg).unwrap().unwrap();
    assert_eq!(a.hosts, vec!["h1", "h2", "h3"], "implied on every replica");
    assert!(
        t.store
            .recorded_holders(&cfg)
            .unwrap()
            .iter()
            .all(|h| h == "h1"),
        "only the proposer's holding is recorded"
    );
    // Blobs are not implied: only their recorded holders.
    assert_eq!(
        t.store.artifact(&d("vmlinuz")).unwrap().unwrap().hosts,
        vec!["h1"]
    );
    // Replication wants only the blobs, never the files kept in the store.
    let wanted = t.store.wanted_blobs("g", "h2").unwrap();
    let mut want = vec![(d("initrd"), false), (d("vmlinuz"), false)];
    want.sort();
    assert_eq!(wanted, want);
    let wanted = t.store.wanted_blobs("g", "h1").unwrap();
    assert!(wanted.iter().all(|(_, held)| *held));
    assert!(t.store.wanted_blobs("other", "h1").unwrap().is_empty());
    // A new host is implied too.
    t.host("h4", 50);
    assert_eq!(
        t.store.artifact(&cfg).unwrap().unwrap().hosts,
        vec!["h1", "h2", "h3", "h4"]
    );
}

#[test]
fn ownership_steps_apply_each_on_its_own_with_its_own_event() {
    let t = fleet(6);
    let steps: Vec<Command> = vec![
        transfer("n0000", "h2", 1, TransferReason::Takeover),
        transfer("n0001", "h3", 7, TransferReason::Takeover), // stale epoch
        transfer("n0002", "h3", 1, TransferReason::Takeover),
        Command::FlagNode {
            node: "n0003".into(),
            stuck: Some("no room".into()),
            at: 100,
        },
        Command::BeginMigration {
            node: "n0004".into(),
            to: "h2".into(),
            expected_epoch: 1,
            at: 100,
        },
        transfer("zz", "h2", 1, TransferReason::Takeover), // unknown node
    ];
    let before = t.store.last_event_seq().unwrap();
    let Applied::Steps { outcomes } = t.ok(Command::OwnershipSteps { steps }) else {
        panic!("steps")
    };
    assert_eq!(outcomes.len(), 6);
    assert!(outcomes[0].is_applied() && outcomes[2].is_applied());
    assert!(matches!(
        outcomes[1],
        Outcome::Rejected(Rejection::StaleEpoch { .. })
    ));
    assert!(outcomes[3].is_applied() && outcomes[4].is_applied());
    assert!(matches!(
        outcomes[5],
        Outcome::Rejected(Rejection::UnknownNode { .. })
    ));
    assert_eq!(
        (t.node("n0000").owner.as_str(), t.node("n0000").epoch),
        ("h2", 2)
    );
    assert_eq!(
        (t.node("n0001").owner.as_str(), t.node("n0001").epoch),
        ("h1", 1)
    );
    assert_eq!(t.node("n0002").owner, "h3");
    assert_eq!(t.node("n0003").stuck.as_deref(), Some("no room"));
    assert!(matches!(
        t.node("n0004").handoff,
        HandoffState::Migrating { .. }
    ));
    let ev: Vec<Event> = t.store.events_since(before, 100).unwrap();
    let kinds: Vec<(&str, &str)> = ev
        .iter()
        .map(|e| (e.kind.as_str(), e.node.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("ownership_transferred", "n0000"),
            ("ownership_transferred", "n0002"),
            ("takeover_blocked", "n0003"),
            ("migration_started", "n0004"),
        ],
        "one event per applied step, none for refused ones"
    );
    // Only ownership steps, at most MAX_STEPS of them; a refused command changes nothing.
    assert!(matches!(
        t.no(Command::OwnershipSteps {
            steps: vec![
                transfer("n0005", "h2", 1, TransferReason::Takeover),
                Command::RemoveNode {
                    node: "n0005".into(),
                    at: 1
                },
            ]
        }),
        Rejection::Invalid { .. }
    ));
    assert!(matches!(
        t.no(Command::OwnershipSteps {
            steps: vec![
                transfer("n0005", "h2", 1, TransferReason::Takeover);
                command::MAX_STEPS + 1
            ]
        }),
        Rejection::Invalid { .. }
    ));
    // Survives the log's JSON.
    let c = Command::OwnershipSteps {
        steps: vec![transfer("n0005", "h2", 1, TransferReason::Takeover)],
    };
    let back: Command = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn a_batched_takeover_keeps_the_lease_fence_of_each_step() {
    let t = fleet(3);
    // h1 heartbeats at 500: a takeover decided while it looked expired at 400 is refused.
    t.ok(Command::Heartbeat {
        host: "h1".into(),
        at: 500,
        seen: 0,
    });
    let step = |node: &str, stale_before| Command::TransferOwnership {
        node: node.into(),
        to: "h2".into(),
        expected_epoch: 1,
        reason: TransferReason::Takeover,
        stale_before: Some(stale_before),
        at: 600,
    };
    let Applied::Steps { outcomes } = t.ok(Command::OwnershipSteps {
        steps: vec![step("n0000", 400), step("n0001", 501)],
    }) else {
        panic!()
    };
    assert!(
        matches!(outcomes[0], Outcome::Rejected(Rejection::Invalid { ref reason }) if reason.contains("renewed"))
    );
    assert!(outcomes[1].is_applied());
    assert_eq!(t.node("n0000").owner, "h1");
    assert_eq!(t.node("n0001").owner, "h2");
}

#[test]
fn batched_migration_flips_are_each_fenced_until_the_old_owner_confirms() {
    let t = fleet(3);
    let begin: Vec<Command> = ["n0000", "n0001", "n0002"]
        .iter()
        .map(|n| Command::BeginMigration {
            node: n.to_string(),
            to: "h2".into(),
            expected_epoch: 1,
            at: 50,
        })
        .collect();
    t.ok(Command::OwnershipSteps { steps: begin });
    let before = t.store.last_event_seq().unwrap();
    let flips: Vec<Command> = ["n0000", "n0001", "n0002"]
        .iter()
        .map(|n| transfer(n, "h2", 1, TransferReason::Migration))
        .collect();
    t.ok(Command::OwnershipSteps { steps: flips });
    let seqs: Vec<u64> = ["n0000", "n0001", "n0002"]
        .iter()
        .map(|n| {
            let f = t.node(n).fence.expect("fenced");
            assert_eq!(f.host, "h1");
            f.seq
        })
        .collect();
    assert_eq!(
        seqs,
        vec![before + 1, before + 2, before + 3],
        "own event each"
    );
    // The gate: h2 may not answer until h1 confirmed (or is down).
    let times = LeaseTimes {
        interval_ms: 1000,
        ttl_ms: 3000,
        grace_ms: 1000,
    };
    let gate = |t: &T, id: &str| {
        let n = t.node(id);
        let h1 = t.store.host("h1").unwrap();
        check(&Facts {
            me: "h2",
            node: &n,
            lease_fresh: true,
            fence_host: h1.as_ref(),
            now: 1000,
            times: &times,
            purpose: Purpose::Answer,
            boot_in_flight: false,
            requester: Ok(()),
        })
    };
    t.ok(Command::Heartbeat {
        host: "h1".into(),
        at: 900,
        seen: 0,
    });
    for n in ["n0000", "n0001", "n0002"] {
        assert_eq!(gate(&t, n), Err(NotServed::AwaitingOldOwner));
    }
    // h1 had applied the first two flips only.
    t.ok(Command::Heartbeat {
        host: "h1".into(),
        at: 950,
        seen: seqs[1],
    });
    assert_eq!(gate(&t, "n0000"), Ok(Serve::Owner));
    assert_eq!(gate(&t, "n0001"), Ok(Serve::Owner));
    assert_eq!(gate(&t, "n0002"), Err(NotServed::AwaitingOldOwner));
    t.ok(Command::Heartbeat {
        host: "h1".into(),
        at: 990,
        seen: seqs[2],
    });
    assert_eq!(gate(&t, "n0002"), Ok(Serve::Owner));
}

#[test]
fn a_rebalance_is_started_and_ended_once() {
    let t = fleet(0);
    assert_eq!(t.store.rebalance_requested().unwrap(), None);
    let set = |active, at| Command::SetRebalance { active, at };
    assert_eq!(
        t.ok(set(true, 70)),
        Applied::RebalanceSet {
            active: true,
            changed: true
        }
    );
    assert_eq!(t.store.rebalance_requested().unwrap(), Some(70));
    assert_eq!(
        t.ok(set(true, 71)),
        Applied::RebalanceSet {
            active: true,
            changed: false
        }
    );
    assert_eq!(t.store.rebalance_requested().unwrap(), Some(70));
    t.ok(set(false, 80));
    t.ok(set(false, 81));
    assert_eq!(t.store.rebalance_requested().unwrap(), None);
    assert_eq!(t.events("rebalance_started").len(), 1);
    assert_eq!(t.events("rebalance_ended").len(), 1);
    let schema = format!("schema {}", crate::store::schema::current_version());
    assert!(t.store.canonical_dump().unwrap().contains(&schema));
}

#[test]
fn indexed_reads_return_the_rows_the_reconciler_needs() {
    let t = fleet(5);
    t.ok(transfer("n0000", "h2", 1, TransferReason::Takeover));
    t.ok(Command::BeginMigration {
        node: "n0001".into(),
        to: "h3".into(),
        expected_epoch: 1,
        at: 60,
    });
    t.ok(Command::FlagNode {
        node: "n0002".into(),
        stuck: Some("x".into()),
        at: 60,
    });
    let ids = |v: Vec<Node>| v.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(
        ids(t.store.nodes_owned_by("h1").unwrap()),
        vec!["n0001", "n0002", "n0003", "n0004"]
    );
    assert_eq!(ids(t.store.migrating_nodes().unwrap()), vec!["n0001"]);
    assert_eq!(ids(t.store.stuck_nodes().unwrap()), vec!["n0002"]);
    let counts = t.store.node_counts().unwrap();
    assert_eq!(counts.get("h1"), Some(&4));
    assert_eq!(counts.get("h2"), Some(&1));
    assert_eq!(counts.get("h3"), None);
    let mut blobs = vec![d("initrd"), d("vmlinuz")];
    blobs.sort();
    let mut of = t.store.blob_digests_of("n0003").unwrap();
    of.sort();
    assert_eq!(
        of, blobs,
        "kernel and ramdisk, not the config kept in the store"
    );
    let owned = t.store.blob_digests_owned_by("h2").unwrap();
    assert_eq!(owned.len(), 2);
    assert!(owned.iter().all(|(n, _)| n == "n0000"));
}

/// Every query the reconciler and replication run at fleet size walks an index; none
/// scans the nodes table. Printed for the report.
#[test]
fn reconciler_queries_use_indexes() {
    let t = fleet(30);
    let node_sql = |w: &str| format!("SELECT id FROM nodes WHERE {w}");
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "nodes owned by a host",
            node_sql(SQL_NODES_OWNED_BY),
            &["USING INDEX nodes_owner"],
        ),
        (
            "migrating nodes",
            node_sql(SQL_MIGRATING),
            &["USING INDEX nodes_migrating"],
        ),
        (
            "stuck nodes",
            node_sql(SQL_STUCK),
            &["USING INDEX nodes_stuck"],
        ),
        (
            "nodes per host",
            SQL_NODE_COUNTS.to_string(),
            &["COVERING INDEX nodes_owner"],
        ),
        (
            "blobs of a host's nodes",
            SQL_BLOBS_OWNED_BY.to_string(),
            &["INDEX nodes_owner", "INDEX node_files_node", "inline_files"],
        ),
        (
            "blobs of a node",
            SQL_BLOBS_OF.to_string(),
            &["INDEX node_files_node"],
        ),
        (
            "blobs a group wants",
            SQL_WANTED_BLOBS.to_string(),
            &["INDEX node_files_digest", "host_artifacts"],
        ),
    ];
    for (what, sql, want) in cases {
        let plan = t.store.query_plan(&sql).unwrap();
        println!(
            "EXPLAIN QUERY PLAN ({what}):\n  {}",
            plan.replace('\n', "\n  ")
        );
        for w in want {
            assert!(plan.contains(w), "{what}: expected {w:?} in\n{plan}");
        }
        // A scan of a partial index reads only its rows (migrating or stuck nodes); the
        // node count per host walks the small covering index, and only when placing.
        let full_scan = plan.lines().any(|l| {
            (l.starts_with("SCAN nodes") || l.starts_with("SCAN n "))
                && ![
                    "nodes_stuck",
                    "nodes_migrating",
                    "COVERING INDEX nodes_owner",
                ]
                .iter()
                .any(|i| l.contains(i))
        });
        assert!(!full_scan, "{what} scans the nodes table:\n{plan}");
    }
}
