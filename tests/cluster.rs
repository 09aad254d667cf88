//! The replicated store with real `baton serve` processes on loopback: three hosts
//! forming one Raft cluster over their HTTP ports.
//!
//! - writes through any host are visible on every host;
//! - killing the leader (SIGKILL) leaves a cluster that commits again within seconds,
//!   and the killed host, restarted on its data directory, catches up;
//! - a wiped host rejoins under a new identity by snapshot (the log it would need is
//!   purged), and its old identity is removed with `baton host remove --id`;
//! - an artifact added on one host is replicated by digest and served byte-identical
//!   by the others; an interrupted replication resumes after a crash;
//! - peers without the cluster secret are refused.
//!
//! Scenarios that end with every host running stop them (SIGTERM) and compare each
//! replica's canonical dump: they must hold identical rows.
//!
//! Clusters run one at a time (timing assertions on small machines). TFTP parts need
//! tftp-hpa: missing, they fail in CI (env `CI`) and are skipped loudly elsewhere.

mod common;

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::fleet::Fleet;
use common::host::{Host, HostBuilder, SECRET, TOKEN};
use common::require::require_tftp_hpa;
use common::serial;
use common::tftp::{tftp_error_code, tftp_get};
use common::{assert_same_bytes, pattern, run_with_timeout, wait_until};

/// How long a committed write may take to show on every replica.
const REPLICATE: Duration = Duration::from_secs(10);
/// How long after SIGKILL of the leader a write must commit again.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);
/// How long artifact replication (small blobs) may take.
const BLOBS: Duration = Duration::from_secs(30);
/// TFTP "access violation" (RFC 1350): a node file this host does not serve.
const TFTP_ACCESS_VIOLATION: u16 = 2;

/// Node id -> (provision state, owner; empty: any owner).
type Want = BTreeMap<String, (String, String)>;

fn mac(i: usize) -> String {
    format!("52:54:00:5e:{:02x}:{:02x}", i / 256, i % 256)
}

/// Enrolls `id` (boot MAC number `i`) through `h`, which then owns it.
#[track_caller]
fn enroll(h: &Host, id: &str, i: usize) -> Value {
    let n = h
        .api
        .post("/v1/nodes", json!({ "id": id, "macs": [mac(i)] }))
        .expect(201);
    assert_eq!(
        n["owner"].as_str(),
        Some(h.name()),
        "a node is owned by the host that enrolled it: {n}"
    );
    n
}

/// Sets a node's provision state through `h`.
#[track_caller]
fn set_state(h: &Host, id: &str, state: &str) -> Value {
    let n = h
        .api
        .patch(
            &format!("/v1/nodes/{id}"),
            json!({ "provision_state": state }),
        )
        .expect(200);
    assert_eq!(
        n["provision_state"],
        state,
        "PATCH through {}: {n}",
        h.name()
    );
    n
}

/// Sets a deploy profile through `h`; returns the node detail.
#[track_caller]
fn deploy(h: &Host, id: &str, kernel: &str, ramdisk: &str) -> Value {
    h.api
        .put(
            &format!("/v1/nodes/{id}/profile"),
            json!({ "kind": "deploy", "kernel": kernel, "ramdisk": ramdisk,
                    "cmdline": "console=ttyS0,115200n8" }),
        )
        .expect(200)
}

/// The log index the leader `h` knows member `id` to have matched.
#[track_caller]
fn matched_index(h: &Host, id: u64) -> Option<u64> {
    let c = h.api.cluster();
    let m = c["members"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|m| m["node_id"].as_u64() == Some(id))
                .cloned()
        })
        .unwrap_or_else(|| panic!("{id} is not a member: {c}"));
    m["matched_index"].as_u64()
}

/// Whether `h` holds the blob `digest` (per its own API).
fn holds(h: &Host, digest: &str) -> bool {
    let r = h.api.get(&format!("/v1/artifacts/{digest}"));
    r.status == 200 && r.json()["held_here"] == true
}

/// The content of blob `digest` as `h` gives it to peers.
fn peer_blob(h: &Host, digest: &str) -> Option<Vec<u8>> {
    let r = h.api.peer(
        "GET",
        &format!("/cluster/blob/{digest}"),
        Some(SECRET),
        None,
    );
    (r.status == 200).then_some(r.body)
}

#[test]
fn writes_through_any_host_are_visible_on_every_host() {
    let _g = serial();
    let mut c = Fleet::cluster(3, "");
    let leader = c.leader(Duration::from_secs(10));
    eprintln!("leader: {}", c.hosts[leader].name());

    let states = ["available", "deploying", "active", "cleaning", "failed"];
    let mut want = Want::new();
    // Enroll through each host in turn: the leader and both followers (which forward).
    for i in 0..15 {
        let via = &c.hosts[i % 3];
        let id = format!("node-{i:02}");
        enroll(via, &id, i);
        // Read-your-writes on the host that took the write.
        assert!(
            via.api.nodes().contains_key(&id),
            "{} must see its own committed write",
            via.name()
        );
        want.insert(id, ("enrolled".into(), via.name().to_string()));
    }
    c.wait_nodes(&want, REPLICATE);
    // Then change each node through another host than the one that enrolled it.
    for i in 0..15 {
        let id = format!("node-{i:02}");
        let st = states[i % states.len()];
        set_state(&c.hosts[(i + 1) % 3], &id, st);
        want.get_mut(&id).expect("enrolled").0 = st.to_string();
    }
    c.wait_nodes(&want, REPLICATE);

    // The same log decides conflicts, whichever host a write goes through.
    for h in &c.hosts {
        h.api
            .post("/v1/nodes", json!({ "id": "node-00", "macs": [mac(900)] }))
            .expect_error(409);
        h.api
            .post("/v1/nodes", json!({ "id": "other", "macs": [mac(3)] }))
            .expect_error(409);
    }
    // Deleting through a follower removes the node everywhere.
    let follower = (leader + 1) % 3;
    c.hosts[follower]
        .api
        .delete("/v1/nodes/node-14")
        .expect(204);
    want.remove("node-14");
    c.wait_nodes(&want, REPLICATE);

    let dump = c.stop_and_compare_dumps();
    let node_row = |id: &str| {
        dump.lines()
            .any(|l| l.starts_with("nodes ") && l.contains(&format!("id={id:?}")))
    };
    assert!(
        node_row("node-13") && !node_row("node-14"),
        "the common dump must hold the committed node rows:\n{dump}"
    );
}

/// A write through one host right after another host committed the write it depends
/// on: the node exists as soon as its enrollment is committed, whichever host is asked.
#[test]
fn write_through_a_follower_right_after_a_commit_elsewhere_sees_it() {
    let _g = serial();
    let mut c = Fleet::cluster(3, "");
    let l = c.leader(Duration::from_secs(10));
    let f = (l + 1) % 3;
    // A follower learns that an entry is committed from the leader's next message, so
    // the window is short: try up to 100 times, stop at the third refusal.
    let mut refused = Vec::new();
    let mut tried = 0;
    while tried < 100 && refused.len() < 3 {
        let id = format!("quick-{tried:03}");
        enroll(&c.hosts[l], &id, tried);
        let r = c.hosts[f].api.patch(
            &format!("/v1/nodes/{id}"),
            json!({ "provision_state": "available" }),
        );
        if r.status != 200 {
            refused.push((id, r.status, r.text()));
        }
        tried += 1;
    }
    assert!(
        refused.is_empty(),
        "{} of {tried} updates through follower {} right after the enrollment was committed \
         through leader {} were refused (its replica had not applied it yet): {refused:?}",
        refused.len(),
        c.hosts[f].name(),
        c.hosts[l].name()
    );
}

#[test]
fn killed_leader_is_replaced_within_seconds_and_catches_up_after_restart() {
    let _g = serial();
    let mut c = Fleet::cluster(3, "");
    let mut want = Want::new();
    for i in 0..6 {
        let id = format!("before-{i}");
        enroll(&c.hosts[i % 3], &id, i);
        // Owners may change while a host is down (takeover): any owner.
        want.insert(id, ("enrolled".into(), String::new()));
    }
    c.wait_nodes(&want, REPLICATE);

    let l = c.leader(Duration::from_secs(10));
    let before = c.hosts[l].api.cluster();
    let old_term = before["term"].as_u64().expect("term");
    let old_id = c.hosts[l].api.node_id();
    let survivor = (l + 1) % 3;
    eprintln!("killing leader {} (term {old_term})", c.hosts[l].name());
    c.hosts[l].kill9();
    let t0 = Instant::now();

    // Writes through a survivor wait for the new leader; the first one to commit marks
    // the end of the failover.
    let auth = format!("Bearer {TOKEN}");
    let mut attempt = 0;
    let failover = loop {
        attempt += 1;
        let id = format!("during-{attempt}");
        let body = json!({ "id": id, "macs": [mac(100 + attempt)] }).to_string();
        let r = c.hosts[survivor].api.try_send(
            "POST",
            "/v1/nodes",
            Some(&auth),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        );
        if let Ok(r) = &r {
            if r.status == 201 {
                break t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < FAILOVER_BOUND,
            "no write committed within {FAILOVER_BOUND:?} of killing the leader; last answer: {:?}",
            r.map(|r| (r.status, r.text()))
        );
        thread::sleep(Duration::from_millis(100));
    };
    eprintln!("failover: first write committed {failover:?} after SIGKILL of the leader");
    assert!(
        failover < FAILOVER_BOUND,
        "failover took {failover:?}, more than {FAILOVER_BOUND:?}"
    );
    // An attempt that timed out may still have committed: count what the survivor has.
    for (id, _) in c.hosts[survivor].api.nodes() {
        if id.starts_with("during-") {
            want.insert(id, ("enrolled".into(), String::new()));
        }
    }
    let nl = c.leader(Duration::from_secs(10));
    assert_ne!(nl, l, "the killed host cannot lead");
    let term = c.hosts[nl].api.cluster()["term"].as_u64().expect("term");
    assert!(
        term > old_term,
        "a new election must raise the term ({old_term} -> {term})"
    );

    // The two survivors keep committing without it.
    for i in 0..6 {
        let id = format!("while-down-{i}");
        let via = &c.hosts[if i % 2 == 0 { nl } else { 3 - nl - l }];
        enroll(via, &id, 200 + i);
        want.insert(id, ("enrolled".into(), String::new()));
    }
    set_state(&c.hosts[survivor], "before-0", "available");
    want.insert("before-0".into(), ("available".into(), String::new()));

    // Restarted on its data directory, it keeps its identity and catches up.
    let t1 = Instant::now();
    c.hosts[l].start();
    assert_eq!(
        c.hosts[l].api.node_id(),
        old_id,
        "a restarted host keeps its Raft identity"
    );
    assert!(
        !c.hosts[l].run_log().contains("initialized a new cluster"),
        "a restarted member must not start a new cluster"
    );
    c.wait_nodes(&want, REPLICATE);
    eprintln!(
        "restarted host caught up {:?} after it was started",
        t1.elapsed()
    );

    // And it takes writes again (forwarded to the new leader unless it leads again).
    enroll(&c.hosts[l], "after-restart", 300);
    want.insert("after-restart".into(), ("enrolled".into(), String::new()));
    c.wait_nodes(&want, REPLICATE);
    let members = c.wait_members(3, Duration::from_secs(20));
    assert!(
        members.iter().any(|(id, _)| *id == old_id),
        "the restarted host is a member under its old identity: {members:?}"
    );
    c.stop_and_compare_dumps();
}

#[test]
fn wiped_host_rejoins_by_snapshot_under_a_new_identity() {
    wiped_host_rejoins(false);
}

/// The usual case: the machine keeps its address. Its old identity is still a member
/// at that address when the new one joins, so replication meant for the old identity
/// reaches the new process.
#[test]
fn wiped_host_rejoins_at_its_old_address() {
    wiped_host_rejoins(true);
}

/// A follower loses its data directory and rejoins with `--join` under the same host
/// name (a new identity), on its old HTTP address or a new one. The log it would need
/// is purged, so it must receive a snapshot. Then its old identity is removed.
fn wiped_host_rejoins(same_address: bool) {
    let _g = serial();
    let mut c = Fleet::cluster(3, "[cluster]\nsnapshot_every = 20\nkeep_logs = 5\n");
    let kernel = pattern(64 * 1024, 7);
    let ramdisk = pattern(16 * 1024, 8);
    let kd = c.hosts[0].api.upload("vmlinuz", &kernel);
    let rd = c.hosts[0].api.upload("initrd.img", &ramdisk);

    // Enough writes that the log is compacted several times.
    let mut want = Want::new();
    for i in 0..30 {
        let id = format!("node-{i:02}");
        enroll(&c.hosts[i % 3], &id, i);
        want.insert(id, ("enrolled".into(), String::new()));
    }
    c.wait_nodes(&want, REPLICATE);
    for i in 0..30 {
        let id = format!("node-{i:02}");
        set_state(&c.hosts[(i + 2) % 3], &id, "available");
        want.insert(id, ("available".into(), String::new()));
    }
    deploy(&c.hosts[0], "node-00", &kd, &rd);
    c.wait_nodes(&want, REPLICATE);
    let l = c.leader(Duration::from_secs(10));
    let purged = wait_until(Duration::from_secs(20), "leader purges its log", || {
        let m = c.hosts[l]
            .api
            .peer("GET", "/cluster/metrics", Some(SECRET), None)
            .expect(200);
        m["purged"]["index"].as_u64().filter(|p| *p > 0)
    });
    eprintln!("leader purged its log up to index {purged}");

    // Wipe a follower: delete its data directory, restart it with --join.
    let v = if l == 2 { 1 } else { 2 };
    let name = c.hosts[v].name().to_string();
    let old_id = c.hosts[v].api.node_id();
    c.hosts[v].kill9();
    c.hosts[v].wipe();
    // What the leader saw the old identity acknowledge, before it died.
    let old_matched = matched_index(&c.hosts[l], old_id);
    for i in 30..35 {
        let id = format!("node-{i:02}");
        enroll(&c.hosts[l], &id, i);
        want.insert(id, ("enrolled".into(), String::new()));
    }
    assert!(
        c.hosts[v].builder().joins().is_some(),
        "a follower was started with --join"
    );
    if !same_address {
        c.hosts[v].new_http_port();
    }
    c.hosts[v].spawn();
    if let Err(e) = c.hosts[v].try_wait_ready(Duration::from_secs(30)) {
        let broken: Vec<String> = c
            .hosts
            .iter()
            .flat_map(|h| {
                h.log()
                    .lines()
                    .filter(|l| l.contains("panicked at") || l.contains("log reversion"))
                    .map(|l| format!("{}: {l}", h.name()))
                    .collect::<Vec<_>>()
            })
            .collect();
        panic!(
            "the wiped {name} could not rejoin ({e}); the others said:\n{}",
            broken.join("\n")
        );
    }
    let new_id = c.hosts[v].api.node_id();
    assert_ne!(
        new_id, old_id,
        "a wiped host comes back under a new identity"
    );
    c.hosts[v]
        .wait_for_log(&["store snapshot installed"], Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "{name} rejoined without installing a snapshot, although the log is purged up to {purged}"
            )
        });
    c.wait_nodes(&want, REPLICATE);

    // Both identities are members until the old one is removed.
    let members = c.wait_members(4, Duration::from_secs(20));
    let ids: Vec<u64> = members
        .iter()
        .filter(|(_, h)| *h == name)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        ids.contains(&old_id) && ids.contains(&new_id),
        "{name} must be listed under its old ({old_id}) and new ({new_id}) identities: {members:?}"
    );
    // The old identity is dead: nothing may count as its acknowledgement, least of all
    // the new process answering at the same address (that would count one host twice
    // towards the quorum).
    enroll(&c.hosts[l], "while-both", 98);
    want.insert("while-both".into(), ("enrolled".into(), String::new()));
    c.wait_nodes(&want, REPLICATE);
    let l = c.leader(Duration::from_secs(10));
    let now_matched = matched_index(&c.hosts[l], old_id);
    assert!(
        now_matched <= old_matched,
        "the leader records acknowledgements from the dead identity {old_id} of {name} \
         (matched index {old_matched:?} when it died, {now_matched:?} now): the new process \
         at {} answers replication meant for the old identity",
        c.hosts[v].url()
    );
    let out = c.hosts[0]
        .api
        .cli(&["host", "remove", &name, "--id", &old_id.to_string()]);
    assert!(
        out.status.success(),
        "baton host remove {name} --id {old_id}: {}\n{}",
        out.status,
        out.stderr
    );
    let members = c.wait_members(3, Duration::from_secs(20));
    assert!(
        members.iter().any(|m| *m == (new_id, name.clone()))
            && !members.iter().any(|(id, _)| *id == old_id),
        "after removing the old identity, {name} is a member under {new_id} only: {members:?}"
    );

    // It fetches again the artifacts its group uses, and takes writes.
    wait_until(
        BLOBS,
        "the wiped host fetches the group's kernel again",
        || holds(&c.hosts[v], &kd).then_some(()),
    );
    enroll(&c.hosts[v], "after-rejoin", 99);
    want.insert("after-rejoin".into(), ("enrolled".into(), String::new()));
    c.wait_nodes(&want, REPLICATE);
    c.stop_and_compare_dumps();
}

#[test]
fn artifact_added_on_one_host_is_served_byte_identical_by_the_others() {
    if !require_tftp_hpa() {
        return;
    }
    let _g = serial();
    let mut c = Fleet::cluster(3, "");
    let kernel = pattern(300_000, 11);
    let ramdisk = pattern(120_000, 12);
    let kd = c.hosts[1].api.upload("vmlinuz", &kernel);
    let rd = c.hosts[1].api.upload("initrd.img", &ramdisk);
    for h in &c.hosts {
        wait_until(REPLICATE, "artifact registered on every replica", || {
            (h.api.get(&format!("/v1/artifacts/{kd}")).status == 200).then_some(())
        });
    }

    // One node per host, enrolled (so owned) by it; h1 sets its node's profile without
    // holding the kernel, so every host of the group needs the blob.
    for (i, h) in c.hosts.iter().enumerate() {
        let id = format!("n{}", i + 1);
        enroll(h, &id, i + 1);
        deploy(h, &id, &kd, &rd);
    }

    // Each owner serves its node's kernel and ramdisk as uploaded, once replicated.
    for (i, h) in c.hosts.iter().enumerate() {
        let id = format!("n{}", i + 1);
        for (file, want) in [("kernel", &kernel), ("ramdisk", &ramdisk)] {
            let path = format!("nodes/{id}/{file}");
            let got = wait_until(BLOBS, &format!("{} serves {path}", h.name()), || {
                tftp_get(h.tftp(), &path).ok()
            });
            assert_same_bytes(&got, want, &format!("{path} over TFTP from {}", h.name()));
        }
    }
    // Only the owner answers for a node.
    let e =
        tftp_get(c.hosts[1].tftp(), "nodes/n1/kernel").expect_err("h2 must not serve h1's node");
    assert_eq!(
        tftp_error_code(&e),
        Some(TFTP_ACCESS_VIOLATION),
        "a non-owner refuses a node's file: {e}"
    );

    // Every replica lists the same files for a node, and every host of the group holds
    // each of them (rendered boot configs too), byte-identical to what the owner serves.
    for (i, owner) in c.hosts.iter().enumerate() {
        let id = format!("n{}", i + 1);
        let files = owner.api.get(&format!("/v1/nodes/{id}/files")).expect(200);
        for h in &c.hosts {
            assert_eq!(
                h.api.get(&format!("/v1/nodes/{id}/files")).expect(200),
                files,
                "{} and {} list different files for {id}",
                h.name(),
                owner.name()
            );
        }
        let pxe = files
            .as_array()
            .expect("a list of files")
            .iter()
            .find(|f| {
                f["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("pxelinux.cfg/"))
            })
            .unwrap_or_else(|| panic!("{id} has no pxelinux config: {files}"))
            .clone();
        let path = pxe["path"].as_str().expect("path");
        let digest = pxe["digest"].as_str().expect("digest");
        let served = tftp_get(owner.tftp(), path)
            .unwrap_or_else(|e| panic!("{} serves {path}: {e}", owner.name()));
        assert!(
            String::from_utf8_lossy(&served).contains(&format!("nodes/{id}/kernel")),
            "{path} boots the node's kernel: {}",
            String::from_utf8_lossy(&served)
        );
        for h in &c.hosts {
            let got = wait_until(BLOBS, &format!("{} holds {path}", h.name()), || {
                peer_blob(h, digest)
            });
            assert_same_bytes(&got, &served, &format!("{path} held by {}", h.name()));
        }
    }
    for h in &c.hosts {
        let got = wait_until(BLOBS, &format!("{} holds the kernel", h.name()), || {
            peer_blob(h, &kd)
        });
        assert_same_bytes(&got, &kernel, &format!("kernel blob held by {}", h.name()));
    }
    // The store records every holder.
    for h in &c.hosts {
        wait_until(REPLICATE, "every holder of the kernel recorded", || {
            let a = h.api.get(&format!("/v1/artifacts/{kd}")).expect(200);
            (a["artifact"]["hosts"] == json!(["h1", "h2", "h3"]) && a["held_here"] == true)
                .then_some(())
        });
    }
    c.stop_and_compare_dumps();
}

/// The store's record of who holds a blob is what replication and takeover trust: a
/// host is recorded as a holder only once it has the blob. Here the only holder is down
/// while another host sets a profile that uses the blob; when it is back, every host
/// fetches the blob and is recorded.
#[test]
fn only_hosts_that_hold_a_blob_are_recorded_as_holders() {
    let _g = serial();
    let mut c = Fleet::cluster(3, "");
    let kernel = pattern(100_000, 41);
    let ramdisk = pattern(50_000, 42);
    let kd = c.hosts[1].api.upload("vmlinuz", &kernel);
    let rd = c.hosts[1].api.upload("initrd.img", &ramdisk);
    wait_until(REPLICATE, "artifact registered on h1", || {
        (c.hosts[0].api.get(&format!("/v1/artifacts/{kd}")).status == 200).then_some(())
    });
    c.hosts[1].stop();
    enroll(&c.hosts[0], "n1", 1);
    deploy(&c.hosts[0], "n1", &kd, &rd);
    for h in [&c.hosts[0], &c.hosts[2]] {
        let a = h.api.get(&format!("/v1/artifacts/{kd}")).expect(200);
        assert_eq!(
            a["held_here"],
            false,
            "{} cannot have the kernel: its only holder is down",
            h.name()
        );
        assert_eq!(
            a["artifact"]["hosts"],
            json!(["h2"]),
            "{}: only h2 holds the kernel, yet the store records {}: setting a profile \
             through h1 recorded h1 as a holder of a blob it does not have",
            h.name(),
            a["artifact"]["hosts"]
        );
    }
    // Back, h2 serves it to the others, which are then recorded.
    c.hosts[1].start();
    for h in &c.hosts {
        wait_until(BLOBS, &format!("{} holds the kernel", h.name()), || {
            let a = h.api.get(&format!("/v1/artifacts/{kd}")).expect(200);
            (a["held_here"] == true && a["artifact"]["hosts"] == json!(["h1", "h2", "h3"]))
                .then_some(())
        });
    }
    c.stop_and_compare_dumps();
}

#[test]
fn interrupted_artifact_replication_resumes_after_a_crash() {
    const SIZE: usize = 50 << 20;
    const RATE: u64 = 10 << 20;
    let _g = serial();
    let mut c = Fleet::cluster(3, &format!("[cluster]\nreplication_rate = {RATE}\n"));
    let big = pattern(SIZE, 21);
    let small = pattern(4096, 22);
    let d = c.hosts[0].api.upload("big.img", &big);
    let s = c.hosts[0].api.upload("initrd.img", &small);
    enroll(&c.hosts[0], "big-node", 1);
    deploy(&c.hosts[0], "big-node", &d, &s);

    // h2 fetches the blob at the capped rate: crash it part-way.
    let at = wait_until(
        Duration::from_secs(30),
        "h2 fetches part of the blob",
        || {
            let r = c.hosts[1].api.try_cluster()?["artifact_replication"].clone();
            let bytes = r["bytes"].as_u64()?;
            (r["current"] == d.as_str() && bytes >= 10 << 20).then_some(bytes)
        },
    );
    assert!(
        at < SIZE as u64,
        "h2 fetched {at} of {SIZE} bytes before the crash: the rate cap ({RATE} B/s) is not applied"
    );
    c.hosts[1].kill9();
    eprintln!("h2 killed after fetching {at} bytes");

    c.hosts[1].start();
    let t = Instant::now();
    let line = c.hosts[1]
        .wait_for_log(
            &["resuming artifact replication", &d],
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("h2 did not resume the interrupted fetch of {d}"));
    let from: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("from_byte="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no from_byte= in {line:?}"));
    assert!(
        from >= 10 << 20 && from < SIZE as u64,
        "resumed from byte {from}, expected what it had fetched ({at}) or more"
    );
    wait_until(Duration::from_secs(60), "h2 completes the blob", || {
        holds(&c.hosts[1], &d).then_some(())
    });
    let rest = t.elapsed();
    eprintln!("h2 resumed from byte {from} and finished in {rest:?}");
    // The stored copy verifies: byte-identical to the upload.
    let got = peer_blob(&c.hosts[1], &d).expect("h2 serves the blob to peers");
    assert_same_bytes(&got, &big, "the blob h2 stored after resuming");
    wait_until(Duration::from_secs(60), "h3 completes the blob", || {
        holds(&c.hosts[2], &d).then_some(())
    });
    c.stop_and_compare_dumps();
}

#[test]
fn peers_without_the_cluster_secret_are_refused() {
    let _g = serial();
    let mut c = Fleet::cluster(3, "");
    let blob = pattern(1000, 31);
    let d = c.hosts[0].api.upload("small", &blob);
    let l = c.leader(Duration::from_secs(10));
    let term = c.hosts[l].api.cluster()["term"].as_u64().expect("term");
    let h2_id = c.hosts[1].api.node_id();

    // A 4th host with a wrong secret cannot join: it stops, naming the secret.
    let spec = HostBuilder::member("h4")
        .data_dir_at(&c.dir.path().join("h4"))
        .secret(Some("wrong-secret-0123456789"))
        .join(&c.hosts[0].url());
    let out = run_with_timeout(&mut spec.command(), Duration::from_secs(90));
    assert!(
        !out.status.success(),
        "a host with a wrong secret must not start: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("secret"),
        "the joiner must say the secret was refused:\n{}",
        out.stderr
    );
    // Joining without any secret is refused before it even tries.
    let out = run_with_timeout(&mut spec.secret(None).command(), Duration::from_secs(30));
    assert!(
        !out.status.success() && out.stderr.contains("secret"),
        "--join without a secret must fail naming the secret: {}\n{}",
        out.status,
        out.stderr
    );

    // Every peer route refuses a missing or wrong secret, before reading the request.
    let vote =
        json!({ "vote": { "leader_id": { "term": term + 100, "node_id": 1 }, "committed": false },
                       "last_log_id": null })
        .to_string();
    let append =
        json!({ "vote": { "leader_id": { "term": term + 100, "node_id": 1 }, "committed": true },
                         "prev_log_id": null, "entries": [], "leader_commit": null })
        .to_string();
    let join =
        json!({ "node_id": 4242, "addr": "http://127.0.0.1:9", "host": "intruder" }).to_string();
    let remove = json!({ "node_ids": [h2_id] }).to_string();
    let blob_path = format!("/cluster/blob/{d}");
    let routes: Vec<(&str, &str, Option<&str>)> = vec![
        ("POST", "/cluster/raft/append", Some(&append)),
        ("POST", "/cluster/raft/vote", Some(&vote)),
        ("POST", "/cluster/raft/snapshot", Some("{}")),
        ("POST", "/cluster/propose", Some("{}")),
        ("POST", "/cluster/join", Some(&join)),
        ("POST", "/cluster/remove", Some(&remove)),
        ("GET", "/cluster/metrics", None),
        ("GET", &blob_path, None),
    ];
    let near = format!("{SECRET}x");
    let wrong: [Option<&str>; 5] = [
        None,
        Some("wrong-secret-0123456789"),
        Some(&SECRET[..SECRET.len() - 1]),
        Some(&near),
        Some(""),
    ];
    for h in &c.hosts {
        for (method, path, body) in &routes {
            for secret in wrong {
                let r = h.api.peer(method, path, secret, body.map(str::as_bytes));
                let e = r.expect_error(403);
                assert_eq!(
                    e["code"],
                    "forbidden",
                    "{method} {path} on {}: {e}",
                    h.name()
                );
            }
            // The admin API token is no cluster secret.
            let auth = format!("Bearer {TOKEN}");
            let r = h
                .api
                .try_send(method, path, Some(&auth), &[], body.map(str::as_bytes))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                r.status,
                403,
                "{method} {path} with the API token: {}",
                r.text()
            );
        }
        // With the secret the same routes answer (the refusals were not 403 for another reason).
        let m = h
            .api
            .peer("GET", "/cluster/metrics", Some(SECRET), None)
            .expect(200);
        assert!(m["current_term"].is_u64(), "raft metrics: {m}");
    }
    let got = peer_blob(&c.hosts[0], &d).expect("h1 gives its blob to a peer with the secret");
    assert_same_bytes(&got, &blob, "blob h1 gives to peers");
    assert!(
        c.hosts[0]
            .run_log()
            .contains("wrong or missing cluster secret refused"),
        "refusals are logged"
    );
    // Nothing got through: same members, same leader and term, no intruder.
    let members = c.wait_members(3, Duration::from_secs(10));
    assert!(
        members.iter().any(|(id, _)| *id == h2_id)
            && !members.iter().any(|(_, h)| h == "h4" || h == "intruder"),
        "membership changed: {members:?}"
    );
    let now = c.hosts[l].api.cluster();
    assert_eq!(
        now["state"], "Leader",
        "a refused vote must not depose the leader: {now}"
    );
    assert_eq!(
        now["term"].as_u64(),
        Some(term),
        "a refused vote must not change the term"
    );

    // A host without a secret refuses every peer route, whatever the request carries.
    let mut lone = HostBuilder::member("solo")
        .data_dir_at(&c.dir.path().join("solo"))
        .secret(None)
        .start();
    assert_eq!(lone.api.cluster()["clustered"], false);
    for (method, path, body) in &routes {
        for secret in [None, Some(SECRET), Some("")] {
            let e = lone
                .api
                .peer(method, path, secret, body.map(str::as_bytes))
                .expect_error(403);
            assert_eq!(
                e["code"], "cluster_disabled",
                "{method} {path} on a host without secret: {e}"
            );
        }
    }
    lone.stop();
    c.stop_and_compare_dumps();
}

/// Asserts that a write through `h` is refused as "cluster not ready": 503 with a
/// `Retry-After` of whole seconds and code `unavailable`, within the propose deadline
/// (plus slack for a loaded machine), not a 500 and not a hang.
#[track_caller]
fn assert_write_unavailable(h: &Host, id: &str, i: usize, deadline: Duration) {
    let t = Instant::now();
    let r = h
        .api
        .post("/v1/nodes", json!({ "id": id, "macs": [mac(i)] }));
    let took = t.elapsed();
    let e = r.expect_error(503);
    assert_eq!(e["code"], "unavailable", "write through {}: {e}", h.name());
    let retry = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("503 from {} without Retry-After: {:?}", h.name(), r.headers));
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After must be whole seconds, at least 1: {retry:?}"
    );
    assert!(
        took < deadline + Duration::from_secs(3),
        "the refusal from {} took {took:?}, the deadline is {deadline:?}",
        h.name()
    );
    eprintln!("{}: 503 after {took:?}, Retry-After {retry}: {e}", h.name());
}

/// Without a majority no write can commit: whether it reaches the leader (nobody to
/// commit with) or a follower (no leader to forward to), it is refused with 503 and
/// `Retry-After` once the propose deadline passes, and writes succeed again once a
/// majority is back.
#[test]
fn writes_without_a_majority_get_503_with_retry_after() {
    let _g = serial();
    // The default deadline is 15 s; a short one keeps this test quick.
    let deadline = Duration::from_secs(3);
    let mut c = Fleet::cluster(3, "[cluster]\npropose_deadline_ms = 3000\n");
    enroll(&c.hosts[0], "before", 0);
    let l = c.leader(Duration::from_secs(10));
    let (f1, f2) = ((l + 1) % 3, (l + 2) % 3);

    // The leader alone.
    c.hosts[f1].kill9();
    c.hosts[f2].kill9();
    assert_write_unavailable(&c.hosts[l], "alone-at-leader", 1, deadline);

    // A majority again: writes commit.
    c.hosts[f1].start();
    let mut tries = 0;
    wait_until(
        FAILOVER_BOUND,
        "a write commits with two of three hosts up",
        || {
            // A fresh id each time: a refused try may still commit later.
            tries += 1;
            let r = c.hosts[f1].api.post(
                "/v1/nodes",
                json!({ "id": format!("after-{tries}"), "macs": [mac(100 + tries)] }),
            );
            (r.status == 201).then_some(())
        },
    );

    // A follower alone: the leader it knew is gone and no election can succeed.
    let l = c.leader(Duration::from_secs(10));
    let survivor = c
        .running()
        .into_iter()
        .find(|&i| i != l)
        .expect("two hosts run");
    c.hosts[l].kill9();
    assert_write_unavailable(&c.hosts[survivor], "alone-at-follower", 3, deadline);
}
