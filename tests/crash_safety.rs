//! Crash safety on a real process: a client streams API writes (enrollments, state
//! changes, artifact uploads) while the server is killed with SIGKILL at a random
//! moment; after a restart on the same data directory, every write the server had
//! acknowledged (2xx) is there. Writes that got no answer may or may not be.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use common::api::Api;
use common::host::HostBuilder;

/// Kill-and-restart rounds (each is well under a second of writes).
const ROUNDS: u32 = 3;
/// The kill comes this long after the stream starts, plus a random part.
const KILL_AFTER_MIN: Duration = Duration::from_millis(150);
/// Range of the random part, in milliseconds.
const KILL_JITTER_MS: u64 = 600;
/// The writer gives up after this long even if the server is still up.
const WRITER_DEADLINE: Duration = Duration::from_secs(30);

/// One write the server acknowledged.
#[derive(Debug, Clone)]
enum Acked {
    Enrolled { id: String, mac: String },
    Available { id: String },
    Artifact { digest: String },
}

/// What the writer thread saw.
struct Stream {
    acked: Vec<Acked>,
    /// The request that failed when the server died, if it did.
    cut_by: Option<String>,
}

/// xorshift64: a seed printed by the test makes a failing kill point reproducible.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Writes until a request fails at the transport level (the server died) or the
/// deadline passes. Any HTTP status other than the expected 2xx is a bug: panics.
fn write_stream(api: Api, round: u32) -> Stream {
    let mut acked = Vec::new();
    let deadline = Instant::now() + WRITER_DEADLINE;
    let auth = format!("Bearer {}", api.token());
    let send = |method: &str, path: &str, body: &[u8]| {
        api.try_send(method, path, Some(&auth), &[], Some(body))
    };
    let mut i: u32 = 0;
    while Instant::now() < deadline {
        let id = format!("r{round}-n{i}");
        let mac = format!(
            "02:00:{round:02x}:{:02x}:{:02x}:{:02x}",
            i >> 16 & 0xff,
            i >> 8 & 0xff,
            i & 0xff
        );
        let body = json!({ "id": id, "macs": [mac] }).to_string();
        match send("POST", "/v1/nodes", body.as_bytes()) {
            Ok(r) if r.status == 201 => acked.push(Acked::Enrolled {
                id: id.clone(),
                mac,
            }),
            Ok(r) => panic!("enroll {id}: {} {}", r.status, r.text()),
            Err(e) => {
                return Stream {
                    acked,
                    cut_by: Some(e),
                }
            }
        }
        // Every other node is made available; every fifth gets an artifact.
        let phase = i % 10;
        if matches!(phase, 0 | 2 | 4 | 6 | 8) {
            let body = json!({ "provision_state": "available" }).to_string();
            match send("PATCH", &format!("/v1/nodes/{id}"), body.as_bytes()) {
                Ok(r) if r.status == 200 => acked.push(Acked::Available { id: id.clone() }),
                Ok(r) => panic!("PATCH {id}: {} {}", r.status, r.text()),
                Err(e) => {
                    return Stream {
                        acked,
                        cut_by: Some(e),
                    }
                }
            }
        }
        if matches!(phase, 0 | 5) {
            let content = format!("artifact of {id}").into_bytes();
            match send("POST", &format!("/v1/artifacts?name={id}.img"), &content) {
                Ok(r) if r.status == 201 => {
                    let d = r.json()["artifact"]["digest"].as_str().unwrap().to_string();
                    acked.push(Acked::Artifact { digest: d });
                }
                Ok(r) => panic!("upload for {id}: {} {}", r.status, r.text()),
                Err(e) => {
                    return Stream {
                        acked,
                        cut_by: Some(e),
                    }
                }
            }
        }
        i += 1;
    }
    Stream {
        acked,
        cut_by: None,
    }
}

/// Checks every acknowledged write is in the restarted server's store.
fn verify(api: &Api, acked: &[Acked]) {
    let nodes: BTreeMap<String, Value> = api
        .get("/v1/nodes")
        .expect(200)
        .as_array()
        .expect("nodes array")
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n.clone()))
        .collect();
    let events = api.get("/v1/events?since=0&limit=10000").expect(200);
    let enrolled_events: BTreeSet<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "node_enrolled")
        .filter_map(|e| e["node"].as_str())
        .collect();
    let mut lost = Vec::new();
    for a in acked {
        let ok = match a {
            Acked::Enrolled { id, mac } => {
                nodes.get(id).is_some_and(|n| n["macs"] == json!([mac]))
                    && enrolled_events.contains(id.as_str())
            }
            Acked::Available { id } => nodes
                .get(id)
                .is_some_and(|n| n["provision_state"] == "available"),
            Acked::Artifact { digest } => {
                let r = api.get(&format!("/v1/artifacts/{digest}"));
                r.status == 200 && r.json()["held_here"] == true
            }
        };
        if !ok {
            lost.push(a.clone());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost after kill -9: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_write() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("kill points from seed {seed}");
    let mut rng = seed;
    let dir = tempfile::tempdir().unwrap();
    let b = HostBuilder::new(dir.path());
    let mut s = b.start();
    let mut all_acked: Vec<Acked> = Vec::new();

    for round in 0..ROUNDS {
        let api = s.api.clone();
        let writer = thread::spawn(move || write_stream(api, round));
        let delay = KILL_AFTER_MIN + Duration::from_millis(next(&mut rng) % KILL_JITTER_MS);
        thread::sleep(delay);
        s.kill9();
        let stream = writer.join().expect("writer thread");
        let cut = stream.cut_by.unwrap_or_else(|| {
            panic!("round {round}: the writer ran {WRITER_DEADLINE:?} without noticing the kill")
        });
        eprintln!(
            "round {round}: killed after {delay:?}, {} writes acknowledged, then: {cut}",
            stream.acked.len()
        );
        assert!(
            !stream.acked.is_empty(),
            "round {round}: no write acknowledged within {delay:?}: the test proves nothing"
        );
        all_acked.extend(stream.acked);

        // Restart on the same store: everything acknowledged so far is there.
        s = b.start();
        verify(&s.api, &all_acked);
    }

    // The recovered store takes writes as usual.
    s.api
        .post(
            "/v1/nodes",
            json!({ "id": "after", "macs": ["02:ff:00:00:00:01"] }),
        )
        .expect(201);
}
