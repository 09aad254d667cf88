//! The one client of Baton's HTTP listener for tests and benches: [`Api`] (admin API
//! with the bearer token, peer routes with the cluster secret, anonymous routes), run
//! from inside a network namespace when the server lives in one, and [`Reply`] with the
//! assertions the tests make on answers. Also the few views of API answers several test
//! files read (node owner and epoch, host states, artifact holders, cluster status).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use super::child::{run_bounded, Output};
use super::host::baton_bin;
use super::netns::{command, in_netns};
use super::wait_until;

/// Deadline of one HTTP request (long-polls in the tests wait at most a few seconds).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of one run of the `baton` CLI client ([`Api::cli`]).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Header carrying the cluster secret on peer requests.
pub const SECRET_HEADER: &str = "x-baton-cluster-secret";

/// An HTTP response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header (lowercase name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// `METHOD path`, for messages.
    pub what: String,
}

impl Reply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} -> {}: body is not JSON ({e}): {:?}",
                self.what,
                self.status,
                self.text()
            )
        })
    }

    /// The body as JSON, `null` when it is not (for polls that tolerate anything).
    pub fn json_or_null(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts the status, returns the JSON body (`null` when empty).
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{} -> {} (expected {status}): {}",
            self.what,
            self.status,
            self.text()
        );
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a JSON error body `{"error": {"code", "message", ...}}` with `status`;
    /// returns the `error` object.
    #[track_caller]
    pub fn expect_error(&self, status: u16) -> Value {
        let v = self.expect(status);
        let e = v
            .get("error")
            .cloned()
            .unwrap_or_else(|| panic!("{} -> {status}: no `error` object in {v}", self.what));
        assert!(
            e["code"].is_string() && e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{} -> {status}: error needs a code and a message: {e}",
            self.what
        );
        e
    }

    /// Asserts a 400 naming `field`; returns the `error` object.
    #[track_caller]
    pub fn expect_field_error(&self, field: &str) -> Value {
        let e = self.expect_error(400);
        assert_eq!(
            e["field"].as_str(),
            Some(field),
            "{} -> 400 must name field {field:?}: {e}",
            self.what
        );
        e
    }
}

/// A client of one server's HTTP listener. Cheap to clone and to send to a thread.
#[derive(Clone)]
pub struct Api {
    addr: SocketAddr,
    token: String,
    netns: Option<String>,
    timeout: Duration,
    keep_alive: bool,
    /// CA bundle trusted for `https://` (the server speaks TLS); `None`: plain HTTP.
    ca: Option<std::path::PathBuf>,
    agent: ureq::Agent,
}

fn agent(timeout: Duration, keep_alive: bool, ca: Option<&std::path::Path>) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new().timeout(timeout).redirects(0);
    if let Some(ca) = ca {
        let c = baton::tls::client_config(ca, None).expect("the test CA loads");
        b = b.tls_config(std::sync::Arc::new(c));
    }
    if keep_alive {
        b.build()
    } else {
        // One connection per request: after refusing a request whose body it did not
        // read, the server closes the connection without saying so, and a pooled
        // connection would fail the next request (see the api test
        // `refused_request_with_a_body_does_not_break_the_next_request`).
        b.max_idle_connections(0).build()
    }
}

impl Api {
    /// A client of `http://addr` presenting `token`, with [`HTTP_TIMEOUT`].
    pub fn new(addr: SocketAddr, token: &str) -> Api {
        Api {
            addr,
            token: token.to_string(),
            netns: None,
            timeout: HTTP_TIMEOUT,
            keep_alive: false,
            ca: None,
            agent: agent(HTTP_TIMEOUT, false, None),
        }
    }

    /// The same client with another request deadline.
    pub fn timeout(&self, timeout: Duration) -> Api {
        Api {
            timeout,
            agent: agent(timeout, self.keep_alive, self.ca.as_deref()),
            ..self.clone()
        }
    }

    /// The same client speaking `https://`, trusting only the CA bundle `ca`.
    pub fn tls(&self, ca: &std::path::Path) -> Api {
        Api {
            ca: Some(ca.to_path_buf()),
            agent: agent(self.timeout, self.keep_alive, Some(ca)),
            ..self.clone()
        }
    }

    /// The same client, sending from inside network namespace `ns` (where the server is).
    pub fn in_netns(&self, ns: Option<&str>) -> Api {
        Api {
            netns: ns.map(str::to_string),
            ..self.clone()
        }
    }

    /// The same client keeping connections open between requests (for benchmarks of
    /// request latency; tests use one connection per request).
    pub fn keep_alive(&self) -> Api {
        Api {
            keep_alive: true,
            agent: agent(self.timeout, true, self.ca.as_deref()),
            ..self.clone()
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, or `https://ADDR` with [`Api::tls`].
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The token it presents.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Sends a request; `Err` only for transport failures (refused, reset, timeout).
    /// `auth` is the whole `Authorization` header value, if any.
    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, String> {
        let what = format!("{method} {path}");
        let mut req = self.agent.request(method, &format!("{}{path}", self.url()));
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        for (n, v) in headers {
            req = req.set(n, v);
        }
        let body = body.map(<[u8]>::to_vec);
        in_netns(self.netns.as_deref(), move || {
            let res = match &body {
                Some(b) => req.send_bytes(b),
                None => req.call(),
            };
            let resp = match res {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) => return Err(format!("{what}: {e}")),
            };
            let status = resp.status();
            let headers = resp
                .headers_names()
                .into_iter()
                .filter_map(|n| {
                    let v = resp.header(&n)?.to_string();
                    Some((n.to_ascii_lowercase(), v))
                })
                .collect();
            let mut body = Vec::new();
            resp.into_reader()
                .read_to_end(&mut body)
                .map_err(|e| format!("{what}: reading the body: {e}"))?;
            Ok(Reply {
                status,
                headers,
                body,
                what,
            })
        })
    }

    /// A request with the right token; `Err` on transport failure.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let auth = format!("Bearer {}", self.token);
        match body {
            Some(v) => self.try_send(
                method,
                path,
                Some(&auth),
                &[("Content-Type", "application/json")],
                Some(v.to_string().as_bytes()),
            ),
            None => self.try_send(method, path, Some(&auth), &[], None),
        }
    }

    /// `GET path` with the token; `Err` on transport failure (a frozen or cut-off host).
    pub fn try_get(&self, path: &str) -> Result<Reply, String> {
        self.try_call("GET", path, None)
    }

    /// A request with the right token; panics on transport failure.
    #[track_caller]
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let auth = format!("Bearer {}", self.token);
        self.try_send(method, path, Some(&auth), headers, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A request without `Authorization`; panics on transport failure.
    #[track_caller]
    pub fn anonymous(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        self.try_send(method, path, None, headers, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A request with a JSON body (or none) and the right token.
    #[track_caller]
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET path`.
    #[track_caller]
    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None)
    }

    /// `POST path` with a JSON body.
    #[track_caller]
    pub fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(&body))
    }

    /// `PUT path` with a JSON body.
    #[track_caller]
    pub fn put(&self, path: &str, body: Value) -> Reply {
        self.call("PUT", path, Some(&body))
    }

    /// `PATCH path` with a JSON body.
    #[track_caller]
    pub fn patch(&self, path: &str, body: Value) -> Reply {
        self.call("PATCH", path, Some(&body))
    }

    /// `DELETE path`.
    #[track_caller]
    pub fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None)
    }

    /// `GET path`, which must answer 200; returns the JSON.
    #[track_caller]
    pub fn get_ok(&self, path: &str) -> Value {
        self.get(path).expect(200)
    }

    /// A request to a peer route (`/cluster/...`) with `secret` (none: no header).
    #[track_caller]
    pub fn peer(
        &self,
        method: &str,
        path: &str,
        secret: Option<&str>,
        body: Option<&[u8]>,
    ) -> Reply {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(s) = secret {
            headers.push((SECRET_HEADER, s));
        }
        self.try_send(method, path, None, &headers, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs the `baton` CLI client with `args` against this server (its URL and token
    /// given as flags, the caller's `BATON_API*` variables removed), from the server's
    /// namespace, within [`CLI_TIMEOUT`].
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_within(args, CLI_TIMEOUT)
    }

    /// [`Api::cli`] bounded by `timeout` instead (a command that waits, e.g.
    /// `baton host rebalance --wait`).
    #[track_caller]
    pub fn cli_within(&self, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = command(self.netns.as_deref(), baton_bin());
        cmd.args(args)
            .args(["--api", &self.url(), "--token", &self.token])
            .env_remove("BATON_API")
            .env_remove("BATON_API_TOKEN")
            .env_remove("BATON_API_CA");
        if let Some(ca) = &self.ca {
            cmd.arg("--ca").arg(ca);
        }
        run_bounded(&mut cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Uploads `content` as artifact `name`; returns its digest (hex).
    #[track_caller]
    pub fn upload(&self, name: &str, content: &[u8]) -> String {
        let r = self.send(
            "POST",
            &format!("/v1/artifacts?name={name}"),
            &[],
            Some(content),
        );
        assert!(
            r.status == 201 || r.status == 200,
            "upload {name}: {} {}",
            r.status,
            r.text()
        );
        let v = r.json();
        v["artifact"]["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("upload {name}: no artifact.digest in {v}"))
            .to_string()
    }

    // -----------------------------------------------------------------------------
    // Views of answers.
    // -----------------------------------------------------------------------------

    /// The `/metrics` text (the route needs no token).
    #[track_caller]
    pub fn metrics(&self) -> String {
        let r = self.anonymous("GET", "/metrics", &[], None);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// Value of a metric in `/metrics`, which must be there.
    #[track_caller]
    pub fn metric(&self, name: &str) -> f64 {
        let m = self.metrics();
        metric_value(&m, name).unwrap_or_else(|| panic!("no metric {name} in /metrics:\n{m}"))
    }

    /// A sample of `/metrics` by its full name, labels included
    /// (`baton_dhcp_answered_total{type="offer"}`); 0 when absent (not counted yet).
    #[track_caller]
    pub fn metric_or_zero(&self, name: &str) -> f64 {
        metric_value(&self.metrics(), name).unwrap_or(0.0)
    }

    /// `GET /v1/cluster`.
    #[track_caller]
    pub fn cluster(&self) -> Value {
        self.get_ok("/v1/cluster")
    }

    /// `GET /v1/cluster`, or `None` when the host does not answer 200.
    pub fn try_cluster(&self) -> Option<Value> {
        let r = self.try_get("/v1/cluster").ok()?;
        (r.status == 200).then(|| r.json_or_null())
    }

    /// Raft term and leader id as the host sees them.
    #[track_caller]
    pub fn raft_term(&self) -> (u64, Option<u64>) {
        let c = self.cluster();
        (c["term"].as_u64().unwrap_or(0), c["leader"].as_u64())
    }

    /// The host's Raft identity.
    #[track_caller]
    pub fn node_id(&self) -> u64 {
        let c = self.cluster();
        c["node_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no node_id in {c}"))
    }

    /// Ids of the nodes the host's replica knows, with their provision state and owner.
    #[track_caller]
    pub fn nodes(&self) -> BTreeMap<String, (String, String)> {
        let v = self.get_ok("/v1/nodes");
        v.as_array()
            .unwrap_or_else(|| panic!("GET /v1/nodes is not a list: {v}"))
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap_or_default().to_string(),
                    (
                        n["provision_state"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        n["owner"].as_str().unwrap_or_default().to_string(),
                    ),
                )
            })
            .collect()
    }

    /// `(owner, epoch, handoff state)` of a node.
    #[track_caller]
    pub fn node(&self, id: &str) -> (String, u64, String) {
        let v = self.get_ok(&format!("/v1/nodes/{id}"));
        (
            v["owner"].as_str().unwrap_or_default().to_string(),
            v["epoch"].as_u64().unwrap_or(0),
            v["handoff"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// Enrolls `id` (owned by this host) with `mac` and a deploy profile.
    #[track_caller]
    pub fn enroll_deploy(&self, id: &str, mac: &str, kernel: &str, ramdisk: &str) {
        self.post("/v1/nodes", json!({ "id": id, "macs": [mac] }))
            .expect(201);
        self.set_deploy(id, kernel, ramdisk);
    }

    /// Gives `id` a deploy profile with `baton.node=ID` on its command line.
    #[track_caller]
    pub fn set_deploy(&self, id: &str, kernel: &str, ramdisk: &str) {
        self.set_deploy_cmdline(id, kernel, ramdisk, &format!("baton.node={id}"));
    }

    /// Gives `id` a deploy profile with `console=ttyS0 ARGS` as its command line.
    #[track_caller]
    pub fn set_deploy_cmdline(&self, id: &str, kernel: &str, ramdisk: &str, args: &str) {
        self.put(
            &format!("/v1/nodes/{id}/profile"),
            json!({ "kind": "deploy", "kernel": kernel, "ramdisk": ramdisk,
                    "cmdline": format!("console=ttyS0 {args}") }),
        )
        .expect(200);
    }

    /// The hosts holding artifact `digest` (none when the host does not answer).
    pub fn artifact_hosts(&self, digest: &str) -> Vec<String> {
        let Ok(r) = self.try_get("/v1/artifacts") else {
            return Vec::new();
        };
        r.json_or_null()
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["digest"] == json!(digest))
            .and_then(|a| a["hosts"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|h| h.as_str().map(str::to_string))
            .collect()
    }

    /// Host name -> state (`up`, `suspect`, `down`, `draining`) as this host sees it
    /// (empty when it does not answer).
    pub fn host_states(&self) -> BTreeMap<String, String> {
        let Ok(r) = self.try_get("/v1/hosts") else {
            return Default::default();
        };
        r.json_or_null()
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| {
                Some((
                    h["host"]["name"].as_str()?.to_string(),
                    h["state"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// Digests of every file the nodes serve (kernels, ramdisks and the rendered
    /// boot-loader configurations).
    #[track_caller]
    pub fn node_digests(&self, ids: &[&str]) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for id in ids {
            let v = self.get_ok(&format!("/v1/nodes/{id}/files"));
            for f in v.as_array().into_iter().flatten() {
                if let Some(d) = f["digest"].as_str() {
                    out.insert(d.to_string());
                }
            }
        }
        out.into_iter().collect()
    }

    /// Waits until every host in `names` holds every artifact in `digests`.
    #[track_caller]
    pub fn wait_replicated(&self, digests: &[&str], names: &[&str], timeout: Duration) {
        wait_until(timeout, "artifacts replicated", || {
            digests
                .iter()
                .all(|d| {
                    let hs = self.artifact_hosts(d);
                    names.iter().all(|n| hs.iter().any(|h| h == n))
                })
                .then_some(())
        });
    }

    /// Waits until every host in `names` holds every file the nodes `ids` serve: only
    /// then can any of them take the nodes over.
    #[track_caller]
    pub fn wait_nodes_replicated(&self, ids: &[&str], names: &[&str], timeout: Duration) {
        let ds = self.node_digests(ids);
        let refs: Vec<&str> = ds.iter().map(String::as_str).collect();
        self.wait_replicated(&refs, names, timeout);
    }
}

/// Value of the sample `name` (labels included, if any) in a Prometheus text body.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `GET path` sent byte for byte on a fresh connection to `server` (HTTP client
/// libraries resolve `%2e%2e` and `//` before sending), from address `from` when given
/// (a client with an address of its own, e.g. 127.0.0.9); returns the status and body.
#[track_caller]
pub fn raw_get(from: Option<Ipv4Addr>, server: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    raw_request(from, server, "GET", path, None)
}

/// [`raw_get`] with any method and a JSON `body` (no token: as a booting node sends it).
#[track_caller]
pub fn raw_request(
    from: Option<Ipv4Addr>,
    server: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Vec<u8>) {
    let mut c = connect_from(from, server)
        .unwrap_or_else(|e| panic!("connect to {server} from {from:?}: {e}"));
    c.set_read_timeout(Some(HTTP_TIMEOUT)).expect("set timeout");
    let body_head = match body {
        Some(b) => format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ),
        None if method == "GET" => String::new(),
        None => "Content-Length: 0\r\n".into(),
    };
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: baton\r\n{body_head}Connection: close\r\n\r\n{}",
        body.unwrap_or("")
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let mut resp = Vec::new();
    c.read_to_end(&mut resp)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the response: {e}"));
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no response head"));
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    (status, resp[split + 4..].to_vec())
}

/// A TCP connection to `server` from address `from` when given (a client with an
/// address of its own, e.g. 127.0.0.9), connected within [`HTTP_TIMEOUT`].
pub fn connect_from(from: Option<Ipv4Addr>, server: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(ip) = from {
        s.bind(&SocketAddr::from((ip, 0)).into())?;
    }
    s.connect_timeout(&server.into(), HTTP_TIMEOUT)?;
    Ok(s.into())
}
