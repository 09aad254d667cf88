//! `baton serve` with its HTTP listener (admin API, HTTP boot, `/metrics`) on loopback,
//! plus the clients the API tests need: a small JSON client over `ureq` and a TFTP
//! fetch with the real tftp-hpa client.
//!
//! Unlike [`super::Server`], the data directory can outlive the process, so a test can
//! kill a server and start another one (same or other host name) on the same store.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::child::Child;
use super::{baton_bin, parse_listen_addr, require_client, run_with_timeout, START_TIMEOUT};

/// API token the servers of these tests are started with (unless told otherwise).
pub const TOKEN: &str = "test-token-5f0c2a9e";
/// Deadline of one HTTP request (long-polls in the tests wait at most a few seconds).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of one tftp-hpa run.
pub const TFTP_TIMEOUT: Duration = Duration::from_secs(30);

const TFTP_LISTENING: &str = "tftp server listening";
const HTTP_LISTENING: &str = "http server listening";
const DHCP_LISTENING: &str = "proxy-dhcp listening";

/// How to start a `baton serve` with HTTP.
#[derive(Clone)]
pub struct BatonBuilder {
    data_dir: PathBuf,
    /// Keeps a temporary data directory alive as long as a builder or server uses it.
    temp: Option<Arc<TempDir>>,
    host: String,
    netns: Option<String>,
    tftp_listen: String,
    http_listen: String,
    tftp_root: Option<PathBuf>,
    template_dir: Option<PathBuf>,
    token: TokenSource,
    dhcp: bool,
    log_level: String,
    args: Vec<String>,
}

/// Where the server gets its API token from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `--api-token TOKEN`.
    Flag(String),
    /// Env `BATON_API_TOKEN`.
    Env(String),
    /// Neither: the server reads or creates `<data-dir>/api-token`.
    File,
}

impl BatonBuilder {
    /// A server on `data_dir` (kept after the server stops), host name `h1`, TFTP and
    /// HTTP on ephemeral loopback ports, no proxy-DHCP, API token [`TOKEN`].
    pub fn new(data_dir: &Path) -> Self {
        BatonBuilder {
            data_dir: data_dir.to_path_buf(),
            temp: None,
            host: "h1".into(),
            netns: None,
            tftp_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            tftp_root: None,
            template_dir: None,
            token: TokenSource::Flag(TOKEN.into()),
            dhcp: false,
            log_level: "info".into(),
            args: Vec::new(),
        }
    }

    /// A server on a fresh temporary data directory, removed when the last builder or
    /// server using it is dropped.
    pub fn temp() -> Self {
        let t = TempDir::new().expect("temp dir for --data-dir");
        let mut b = Self::new(t.path());
        b.temp = Some(Arc::new(t));
        b
    }

    /// For the PXE tests: like [`BatonBuilder::new`] with proxy-DHCP on (give its
    /// flags with [`BatonBuilder::flag`]) and a debug log.
    pub fn pxe(data_dir: &Path) -> Self {
        Self::new(data_dir)
            .with_dhcp()
            .log_level("debug")
            .flag("--node-files", "bound")
    }

    /// [`BatonBuilder::pxe`] on a fresh temporary data directory.
    pub fn pxe_temp() -> Self {
        Self::temp()
            .with_dhcp()
            .log_level("debug")
            .flag("--node-files", "bound")
    }

    /// `--host-name`.
    pub fn host(mut self, name: &str) -> Self {
        self.host = name.into();
        self
    }

    /// Runs the server inside network namespace `ns` (`ip netns exec`).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.into());
        self
    }

    /// `--tftp-listen`.
    pub fn tftp_listen(mut self, addr: &str) -> Self {
        self.tftp_listen = addr.into();
        self
    }

    /// `--http-listen`.
    pub fn http_listen(mut self, addr: &str) -> Self {
        self.http_listen = addr.into();
        self
    }

    /// `--tftp-root`.
    pub fn tftp_root(mut self, dir: &Path) -> Self {
        self.tftp_root = Some(dir.to_path_buf());
        self
    }

    /// Proxy-DHCP on: the server must then also report both DHCP listeners.
    pub fn with_dhcp(mut self) -> Self {
        self.dhcp = true;
        self
    }

    /// `--no-dhcp` (the default of [`BatonBuilder::new`]).
    pub fn no_dhcp(mut self) -> Self {
        self.dhcp = false;
        self
    }

    /// `--template-dir`.
    pub fn template_dir(mut self, dir: &Path) -> Self {
        self.template_dir = Some(dir.to_path_buf());
        self
    }

    /// How the API token is given.
    pub fn token(mut self, t: TokenSource) -> Self {
        self.token = t;
        self
    }

    /// `--log-level` (default `info`).
    pub fn log_level(mut self, filter: &str) -> Self {
        self.log_level = filter.into();
        self
    }

    /// Another flag of `baton serve`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// A flag with its value.
    pub fn flag(self, name: &str, value: impl ToString) -> Self {
        self.arg(name).arg(&value.to_string())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Starts the server and waits until TFTP, HTTP and (with proxy-DHCP) both DHCP
    /// ports listen; panics with its output if it exits or stays silent for
    /// [`START_TIMEOUT`].
    pub fn start(&self) -> Baton {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`BatonBuilder::start`] that returns what went wrong instead of panicking
    /// (e.g. a port taken between choosing and binding it).
    pub fn try_start(&self) -> Result<Baton, String> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                // `ip netns exec` execs the binary: the PID is baton's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(baton_bin());
                c
            }
            None => Command::new(baton_bin()),
        };
        cmd.arg("serve")
            .args(["--tftp-listen", &self.tftp_listen])
            .args(["--http-listen", &self.http_listen])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--host-name", &self.host])
            .args(["--log-level", &self.log_level]);
        if let Some(d) = &self.tftp_root {
            cmd.arg("--tftp-root").arg(d);
        }
        if let Some(d) = &self.template_dir {
            cmd.arg("--template-dir").arg(d);
        }
        if !self.dhcp {
            cmd.arg("--no-dhcp");
        }
        cmd.args(&self.args)
            .env_remove("RUST_LOG")
            .env_remove("BATON_CONFIG")
            .env_remove("BATON_API_TOKEN");
        match &self.token {
            TokenSource::Flag(t) => {
                cmd.args(["--api-token", t]);
            }
            TokenSource::Env(t) => {
                cmd.env("BATON_API_TOKEN", t);
            }
            TokenSource::File => {}
        }
        let desc = format!("{cmd:?}");
        // (kind, address): 0 tftp, 1 http, 2 proxy-dhcp.
        let (tx, rx) = mpsc::channel::<(u8, Option<SocketAddr>)>();
        let child = Child::spawn(
            &mut cmd,
            format!("baton serve ({})", self.host),
            move |line| {
                for (kind, needle) in [
                    (0u8, TFTP_LISTENING),
                    (1, HTTP_LISTENING),
                    (2, DHCP_LISTENING),
                ] {
                    if line.contains(needle) {
                        let _ = tx.send((kind, parse_listen_addr(line)));
                    }
                }
            },
        )
        .map_err(|e| format!("cannot run {desc}: {e}"))?;
        let mut s = Baton {
            child,
            tftp: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            api: Api::new("0.0.0.0:0".parse().unwrap(), ""),
            builder: self.clone(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut tftp, mut http, mut dhcp) = (None, None, 0);
        let want_dhcp = if self.dhcp { 2 } else { 0 };
        while tftp.is_none() || http.is_none() || dhcp < want_dhcp {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((0, a)) => tftp = a,
                Ok((1, a)) => http = a,
                Ok(_) => dhcp += 1,
                Err(e) => {
                    let status = s.child.try_wait();
                    return Err(format!(
                        "{desc}: did not report `{TFTP_LISTENING}`, `{HTTP_LISTENING}` and \
                         {want_dhcp} x `{DHCP_LISTENING}` ({e:?}; exit status {status:?}). \
                         Its stderr:\n{}",
                        s.log()
                    ));
                }
            }
        }
        s.tftp = tftp.expect("tftp address");
        s.http = http.expect("http address");
        let token = match &self.token {
            TokenSource::Flag(t) | TokenSource::Env(t) => t.clone(),
            TokenSource::File => std::fs::read_to_string(self.data_dir.join("api-token"))
                .map_err(|e| format!("the server did not write <data-dir>/api-token: {e}"))?
                .trim()
                .to_string(),
        };
        s.api = Api::new(s.http, &token);
        Ok(s)
    }
}

/// A running `baton serve`; killed (SIGKILL, by PID) when dropped.
pub struct Baton {
    child: Child,
    /// TFTP address it reported.
    pub tftp: SocketAddr,
    /// HTTP address it reported.
    pub http: SocketAddr,
    /// Client of its API, with its token.
    pub api: Api,
    builder: BatonBuilder,
}

impl Baton {
    /// A server on a temporary data directory with default flags.
    pub fn start() -> Baton {
        BatonBuilder::temp().start()
    }

    /// The builder this server was started with: `.start()` it again to restart on
    /// the same data directory.
    pub fn builder(&self) -> BatonBuilder {
        self.builder.clone()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.builder.data_dir
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Log lines containing all of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.child.log_lines(needles)
    }

    /// Waits until the log has a line containing all of `needles`; returns that line.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        self.child.wait_for_log(needles, timeout)
    }

    /// SIGKILL, then reap: a crash, nothing flushed or closed by the server.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; panics if it does not exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.child
            .terminate(timeout)
            .unwrap_or_else(|| panic!("baton serve did not exit within {timeout:?} of SIGTERM"))
    }

    /// Fetches `remote` over TFTP with tftp-hpa (octet mode). `Err` holds what the
    /// client printed (e.g. `Error code 1: file not found`).
    pub fn tftp_get(&self, remote: &str) -> Result<Vec<u8>, String> {
        tftp_get(self.tftp, remote)
    }

    /// [`Baton::tftp_get`] that must succeed.
    #[track_caller]
    pub fn tftp_ok(&self, remote: &str) -> Vec<u8> {
        self.tftp_get(remote)
            .unwrap_or_else(|e| panic!("TFTP get {remote} failed: {e}"))
    }

    /// [`Baton::tftp_get`] as text.
    #[track_caller]
    pub fn tftp_text(&self, remote: &str) -> String {
        String::from_utf8(self.tftp_ok(remote)).expect("a text file")
    }

    /// The TFTP error code a fetch of `remote` must end with.
    #[track_caller]
    pub fn tftp_error(&self, remote: &str) -> u16 {
        match self.tftp_get(remote) {
            Ok(b) => panic!(
                "TFTP get {remote} succeeded ({} bytes), expected an error",
                b.len()
            ),
            Err(e) => tftp_error_code(&e)
                .unwrap_or_else(|| panic!("TFTP get {remote}: no error code in {e:?}")),
        }
    }

    /// The `/metrics` text (loopback servers only).
    pub fn metrics(&self) -> String {
        let r = self.api.anonymous("GET", "/metrics", &[], None);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// Value of a metric in `/metrics`, which must be there.
    pub fn metric(&self, name: &str) -> f64 {
        let m = self.metrics();
        metric_value(&m, name).unwrap_or_else(|| panic!("no metric {name} in /metrics:\n{m}"))
    }

    /// A sample of `/metrics` by its full name, labels included
    /// (`baton_dhcp_answered_total{type="offer"}`); 0 when absent (not counted yet).
    pub fn metric_or_zero(&self, name: &str) -> f64 {
        metric_value(&self.metrics(), name).unwrap_or(0.0)
    }
}

/// Whether `baton serve --help` lists `flag` (asked once per flag and test binary).
pub fn serve_has_flag(flag: &str) -> bool {
    static HELP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let help = HELP.get_or_init(|| {
        let out = run_with_timeout(
            Command::new(baton_bin()).args(["serve", "--help"]),
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .any(|w| w == flag)
}

/// True when tftp-hpa is installed; see [`require_client`].
pub fn have_tftp_hpa() -> bool {
    require_client("tftp", "tftp-hpa")
}

/// `tftp -m octet HOST PORT -c get REMOTE LOCAL`. tftp-hpa exits 0 even after an
/// ERROR packet, so its output decides.
pub fn tftp_get(addr: SocketAddr, remote: &str) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().expect("temp dir for a TFTP download");
    let local = dir.path().join("out");
    let out = run_with_timeout(
        Command::new("tftp")
            .args(["-m", "octet"])
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .args(["-c", "get", remote])
            .arg(&local),
        TFTP_TIMEOUT,
    );
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), out.stderr);
    if !out.status.success() || printed.contains("Error") || printed.contains("imed out") {
        return Err(format!("{} {}", out.status, printed.trim()));
    }
    std::fs::read(&local).map_err(|e| format!("tftp left no file: {e}; it printed {printed:?}"))
}

/// `N` from tftp-hpa's `Error code N: ...`.
pub fn tftp_error_code(printed: &str) -> Option<u16> {
    let rest = &printed[printed.find("Error code ")? + "Error code ".len()..];
    rest.split(':').next()?.trim().parse().ok()
}

/// Value of the unlabeled sample `name` in a Prometheus text body.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

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
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    /// A client of `http://addr` presenting `token`.
    pub fn new(addr: SocketAddr, token: &str) -> Api {
        Api {
            base: format!("http://{addr}"),
            token: token.to_string(),
            // One connection per request: after refusing a request whose body it did
            // not read, the server closes the connection without saying so, and a
            // pooled connection would fail the next request (see the api test
            // `refused_request_with_a_body_does_not_break_the_next_request`).
            agent: ureq::AgentBuilder::new()
                .timeout(HTTP_TIMEOUT)
                .redirects(0)
                .max_idle_connections(0)
                .build(),
        }
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
        let mut req = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.set("Authorization", a);
        }
        for (n, v) in headers {
            req = req.set(n, v);
        }
        let res = match body {
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
        match body {
            Some(v) => self.send(
                method,
                path,
                &[("Content-Type", "application/json")],
                Some(v.to_string().as_bytes()),
            ),
            None => self.send(method, path, &[], None),
        }
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
}
