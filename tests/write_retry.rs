//! Writes are applied once under retry, with three real `baton serve` processes.
//!
//! Each host advertises itself to its peers through a TCP proxy of this test, so every
//! write a follower forwards to the leader passes one. Armed, the leader's proxy lets a
//! forwarded write through and then cuts the connection instead of passing the answer
//! back: the leader has committed and applied the write, the follower never hears so.
//! The follower retries under the same request id, and the client must see the first
//! outcome (201, "created"), never a false conflict, with the write applied exactly
//! once on every replica.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use common::fleet::Fleet;
use common::host::{Host, HostBuilder, READY_TIMEOUT, START_TIMEOUT};

/// The request line of a forwarded write.
const PROPOSE: &[u8] = b"POST /cluster/propose ";

/// A loopback TCP proxy in front of one host that can swallow forwarded writes'
/// answers. Stops accepting when dropped; its connections end with their peers'.
struct Proxy {
    addr: SocketAddr,
    /// The host's HTTP address, once it is bound (connections wait for it).
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    /// The next forwarded write whose request contains this is answered into the void.
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    /// Answers swallowed.
    dropped: Arc<AtomicUsize>,
    /// Forwarded writes seen.
    proposes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a port the kernel picks; forwards once [`Proxy::set_upstream`] is called.
    fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let p = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream: Arc::default(),
            armed: Arc::default(),
            dropped: Arc::default(),
            proposes: Arc::default(),
            stop: Arc::default(),
        };
        let (upstream, armed, dropped, proposes, stop) = (
            p.upstream.clone(),
            p.armed.clone(),
            p.dropped.clone(),
            p.proposes.clone(),
            p.stop.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let (upstream, armed, dropped, proposes) = (
                            upstream.clone(),
                            armed.clone(),
                            dropped.clone(),
                            proposes.clone(),
                        );
                        // A peer may call while the host is still starting.
                        thread::spawn(move || {
                            let Some(to) = wait_for(&upstream, START_TIMEOUT) else {
                                return;
                            };
                            let Ok(server) = TcpStream::connect(to) else {
                                return;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            connection(client, server, &armed, &dropped, &proposes);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        p
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_upstream(&self, to: SocketAddr) {
        *self.upstream.lock().unwrap() = Some(to);
    }

    /// Loses the answer of the next forwarded write whose request contains `needle`.
    fn arm(&self, needle: &str) {
        *self.armed.lock().unwrap() = Some(needle.as_bytes().to_vec());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Pumps one connection both ways. Requests on a connection are sequential (no
/// pipelining), so the first answer bytes after a forwarded write's request are that
/// write's answer.
fn connection(
    client: TcpStream,
    server: TcpStream,
    armed: &Arc<Mutex<Option<Vec<u8>>>>,
    dropped: &Arc<AtomicUsize>,
    proposes: &Arc<AtomicUsize>,
) {
    // Set while the request being sent is the armed write.
    let pending = Arc::new(AtomicBool::new(false));
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (p1, seen, armed1) = (pending.clone(), proposes.clone(), armed.clone());
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        // The current request's bytes, from its request line on.
        let mut request: Vec<u8> = Vec::new();
        loop {
            let n = match c_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let before = request.len().saturating_sub(PROPOSE.len());
            request.extend_from_slice(&buf[..n]);
            if let Some(at) = find(&request[before..], PROPOSE) {
                seen.fetch_add(1, Ordering::SeqCst);
                request.drain(..before + at);
            }
            if request.starts_with(PROPOSE) {
                let hit = armed1
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|needle| find(&request, needle).is_some());
                if hit {
                    p1.store(true, Ordering::SeqCst);
                }
            } else {
                request.clear();
            }
            if s_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (server, client);
    let (armed, dropped) = (armed.clone(), dropped.clone());
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match s_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if pending.swap(false, Ordering::SeqCst) && armed.lock().unwrap().take().is_some() {
                // The leader answered: the write is committed. Lose the answer.
                dropped.fetch_add(1, Ordering::SeqCst);
                let _ = c_out.shutdown(Shutdown::Both);
                let _ = s_in.shutdown(Shutdown::Both);
                return;
            }
            if c_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_out.shutdown(Shutdown::Write);
    });
}

/// The address in `slot` once set, within `timeout`.
fn wait_for(slot: &Mutex<Option<SocketAddr>>, timeout: Duration) -> Option<SocketAddr> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(a) = *slot.lock().unwrap() {
            return Some(a);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Three hosts, each advertised to its peers through its own proxy. A joining host is
/// called through its proxy before it is ready, so each proxy learns its host's port as
/// soon as the host binds it.
fn cluster() -> (Fleet, Vec<Proxy>) {
    let dir = TempDir::new().expect("temp dir");
    let mut hosts: Vec<Host> = Vec::new();
    let mut proxies = Vec::new();
    for i in 1..=3 {
        let name = format!("h{i}");
        let proxy = Proxy::start();
        let mut spec = HostBuilder::member(&name)
            .data_dir_at(&dir.path().join(&name))
            .flag("--advertise-url", proxy.url());
        if let Some(first) = hosts.first() {
            spec = spec.join(&first.url());
        }
        let mut h = Host::new(spec);
        h.spawn();
        proxy.set_upstream(h.wait_http_bound(START_TIMEOUT));
        h.wait_ready(READY_TIMEOUT);
        hosts.push(h);
        proxies.push(proxy);
    }
    let c = Fleet { hosts, dir };
    c.wait_members(3, Duration::from_secs(20));
    (c, proxies)
}

/// Events of `kind` about `node` in `h`'s feed.
fn events(h: &Host, kind: &str, node: &str) -> usize {
    let v = h.api.get("/v1/events?since=0&limit=10000").expect(200);
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && e["node"] == node)
        .count()
}

#[test]
fn a_forwarded_write_whose_answer_was_lost_applies_once_and_answers_its_outcome() {
    let (mut c, proxies) = cluster();
    let l = c.leader(Duration::from_secs(20));
    let f = (l + 1) % 3;
    let follower = &c.hosts[f];
    let proxy = &proxies[l];

    // One enrollment through a follower; the leader's answer is lost once.
    proxy.arm("\"retried\"");
    let seen = proxy.proposes.load(Ordering::SeqCst);
    let n = follower
        .api
        .post(
            "/v1/nodes",
            json!({ "id": "retried", "macs": ["52:54:00:7e:00:01"] }),
        )
        .expect(201);
    assert_eq!(n["owner"], follower.name(), "{n}");
    assert_eq!(
        proxy.dropped.load(Ordering::SeqCst),
        1,
        "the answer was lost"
    );
    assert!(
        proxy.proposes.load(Ordering::SeqCst) >= seen + 2,
        "the follower sent the write again"
    );
    assert!(follower.api.metric("baton_store_write_retries_total") >= 1.0);
    assert!(
        follower
            .wait_for_log(
                &["retrying under the same request id"],
                Duration::from_secs(1)
            )
            .is_some(),
        "{}",
        follower.run_log()
    );
    c.wait_applied_everywhere(Duration::from_secs(10));
    for h in &c.hosts {
        assert_eq!(events(h, "node_enrolled", "retried"), 1, "{}", h.name());
    }

    // A bulk import through the follower: the lost answer is of a whole batch. Its
    // retry must report the nodes as created, not as "unchanged" (applied twice).
    let follower = &c.hosts[f];
    let body: String = (0..120)
        .map(|i| format!("bulk-{i:03},52:54:00:7e:01:{i:02x}\n"))
        .collect();
    proxies[l].arm("\"import_nodes\"");
    let r = follower
        .api
        .send(
            "POST",
            "/v1/nodes:import?format=csv",
            &[],
            Some(body.as_bytes()),
        )
        .expect(200);
    assert_eq!(proxies[l].dropped.load(Ordering::SeqCst), 2, "{r}");
    assert_eq!(
        (&r["created"], &r["unchanged"], &r["failed"]),
        (&json!(120), &json!(0), &json!(0)),
        "{r}"
    );
    c.wait_applied_everywhere(Duration::from_secs(10));
    let enrolled: Value = c.hosts[l]
        .api
        .get("/v1/events?since=0&limit=10000")
        .expect(200);
    let bulk = enrolled["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == "node_enrolled" && e["node"].as_str().unwrap_or("").starts_with("bulk-")
        })
        .count();
    assert_eq!(bulk, 120);

    // Every replica holds the same rows, the request records included.
    let dump = c.stop_and_compare_dumps();
    assert!(
        dump.contains("requests seq="),
        "request ids are replicated state"
    );
}
