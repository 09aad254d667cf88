//! The status page in a real headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol by a small client on a WebSocket (`tungstenite`), against three
//! real `baton serve` hosts on loopback: before the token is given the page shows no
//! fleet data; with it, the hosts and nodes appear (with a node's last boot stage), the
//! search box filters, a migration shows up without a reload, and a screenshot is
//! taken (a PNG under the test's temp dir, its path printed).
//!
//! Without chromium the test is skipped loudly; with env CI set it fails.
//! Timing-heavy (three hosts, a browser): run under `flock /tmp/baton-heavy.lock`.

#[path = "common/fleet.rs"]
mod fleet;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use fleet::{
    mac, mac_colons, pattern, pxelinux_path, tftp_fetch, wait_nodes_replicated, Answer, Fleet,
    HostSpec, Leases, TOKEN,
};

/// A minimal DevTools-protocol client of one headless Chromium and one page.
mod cdp {
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};
    use tempfile::TempDir;
    use tungstenite::stream::MaybeTlsStream;
    use tungstenite::{Message, WebSocket};

    /// How long Chromium may take to start and open its DevTools socket.
    const START: Duration = Duration::from_secs(60);
    /// How long one DevTools call may take.
    const CALL: Duration = Duration::from_secs(30);

    /// A headless Chromium (killed by PID when dropped) with one page attached.
    pub struct Browser {
        child: Child,
        ws: WebSocket<MaybeTlsStream<TcpStream>>,
        session: String,
        next: u64,
        _profile: TempDir,
    }

    impl Browser {
        /// Starts `bin` headless with a fresh profile and opens a blank page.
        pub fn launch(bin: &str) -> Result<Browser, String> {
            let profile = TempDir::new().map_err(|e| e.to_string())?;
            let mut child = Command::new(bin)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run {bin}: {e}"))?;
            let stderr = child.stderr.take().expect("piped stderr");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut seen = String::new();
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(i) = line.find("ws://") {
                        let _ = tx.send(Ok(line[i..].trim().to_string()));
                    }
                    seen.push_str(&line);
                    seen.push('\n');
                }
                let _ = tx.send(Err(seen));
            });
            let url = match rx.recv_timeout(START) {
                Ok(Ok(u)) => u,
                Ok(Err(out)) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("chromium exited without a DevTools socket:\n{out}"));
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "chromium opened no DevTools socket within {START:?}"
                    ));
                }
            };
            assert!(
                url.starts_with("ws://127.0.0.1:"),
                "DevTools must listen on loopback: {url}"
            );
            let (ws, _) = tungstenite::connect(url.as_str())
                .map_err(|e| format!("cannot connect to {url}: {e}"))?;
            if let MaybeTlsStream::Plain(s) = ws.get_ref() {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .map_err(|e| e.to_string())?;
            }
            let mut b = Browser {
                child,
                ws,
                session: String::new(),
                next: 1,
                _profile: profile,
            };
            let t = b.call_browser("Target.createTarget", json!({ "url": "about:blank" }))?;
            let target = t["targetId"].as_str().ok_or("no targetId")?.to_string();
            let a = b.call_browser(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )?;
            b.session = a["sessionId"].as_str().ok_or("no sessionId")?.to_string();
            Ok(b)
        }

        fn send(&mut self, method: &str, params: Value, session: bool) -> Result<Value, String> {
            let id = self.next;
            self.next += 1;
            let mut msg = json!({ "id": id, "method": method, "params": params });
            if session {
                msg["sessionId"] = json!(self.session);
            }
            self.ws
                .send(Message::text(msg.to_string()))
                .map_err(|e| format!("{method}: {e}"))?;
            let deadline = Instant::now() + CALL;
            loop {
                if Instant::now() > deadline {
                    return Err(format!("{method}: no answer within {CALL:?}"));
                }
                let m = match self.ws.read() {
                    Ok(m) => m,
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(e) => return Err(format!("{method}: {e}")),
                };
                let Ok(text) = m.into_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                // Events (no id) and other answers are not ours.
                if v["id"].as_u64() != Some(id) {
                    continue;
                }
                if let Some(e) = v.get("error") {
                    return Err(format!("{method}: {e}"));
                }
                return Ok(v["result"].clone());
            }
        }

        fn call_browser(&mut self, method: &str, params: Value) -> Result<Value, String> {
            self.send(method, params, false)
        }

        /// A DevTools call on the page.
        pub fn call(&mut self, method: &str, params: Value) -> Value {
            self.send(method, params, true)
                .unwrap_or_else(|e| panic!("DevTools {e}"))
        }

        /// Evaluates `expr` in the page (promises awaited); its value as JSON.
        pub fn eval(&mut self, expr: &str) -> Value {
            let r = self.call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            );
            if let Some(ex) = r.get("exceptionDetails") {
                panic!("page script `{expr}` threw: {ex}");
            }
            r["result"]["value"].clone()
        }

        /// Evaluates `expr` every 200 ms until it is truthy; panics with `what` and
        /// the last value after `timeout`.
        #[track_caller]
        pub fn wait_for(&mut self, expr: &str, timeout: Duration, what: &str) -> Value {
            let deadline = Instant::now() + timeout;
            loop {
                let v = self.eval(expr);
                let truthy = match &v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::String(s) => !s.is_empty(),
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    _ => true,
                };
                if truthy {
                    return v;
                }
                if Instant::now() > deadline {
                    let text = self.eval("document.body.innerText");
                    panic!("timed out after {timeout:?} waiting for {what} (last {v}); the page says:\n{}", text.as_str().unwrap_or(""));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    impl Drop for Browser {
        fn drop(&mut self) {
            let _ = self.ws.close(None);
            // This browser's PID only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Chromium, if installed; in CI (env `CI`) its absence fails the test.
fn chromium() -> Option<String> {
    for c in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(c);
            if p.is_file() {
                return Some(p.display().to_string());
            }
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("chromium is not installed but CI is set: apt-get install chromium");
    }
    eprintln!("\n*** SKIPPED: chromium not installed (apt-get install chromium) ***\n");
    None
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

/// `document.querySelector(sel).textContent` as an expression.
fn text_of(sel: &str) -> String {
    format!(
        "(document.querySelector({}) || {{}}).textContent || ''",
        json!(sel)
    )
}

/// Types `text` into the search box (as an `input` event, like a keystroke).
fn search(b: &mut cdp::Browser, text: &str) {
    b.eval(&format!(
        "(() => {{ const s = document.getElementById('search'); s.value = {}; s.dispatchEvent(new Event('input')) }})()",
        json!(text)
    ));
}

#[test]
fn the_status_page_shows_the_fleet_and_a_migration_without_a_reload() {
    let Some(chromium) = chromium() else { return };
    let cfg = Leases::SHORT.toml("");
    let f = Fleet::start(
        &bin(),
        (1..=3)
            .map(|i| HostSpec::loopback(&format!("h{i}"), &cfg, false))
            .collect(),
    );
    let h1 = f.host("h1").api.clone();
    let h2 = f.host("h2").api.clone();
    let kd = h1.upload("vmlinuz", &pattern(50_000, 1));
    let rd = h1.upload("initrd", &pattern(60_000, 2));
    h1.enroll_deploy("n1", &mac_colons(mac(1)), &kd, &rd);
    h1.enroll_deploy("n2", &mac_colons(mac(2)), &kd, &rd);
    h2.enroll_deploy("n3", &mac_colons(mac(3)), &kd, &rd);
    wait_nodes_replicated(
        &h1,
        &["n1", "n2", "n3"],
        &["h1", "h2", "h3"],
        Duration::from_secs(30),
    );
    // n1 fetches its configuration from h1: a boot stage for the page.
    let got = tftp_fetch(
        f.host("h1").spec.tftp,
        &pxelinux_path(mac(1)),
        &[],
        Duration::from_secs(2),
        None,
        None,
    );
    assert!(matches!(got, Answer::Data(_)), "{got:?}");

    let mut b = cdp::Browser::launch(&chromium).unwrap_or_else(|e| panic!("{e}"));
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
    );
    let url = format!("http://{}/", f.host("h1").spec.http);
    b.call("Page.navigate", json!({ "url": url }));
    b.wait_for(
        "document.readyState === 'complete' && !!document.getElementById('login')",
        Duration::from_secs(20),
        "the page to load",
    );

    // No token yet: the page shows no fleet data, and the API gives none.
    let before = b.eval("document.body.innerText");
    let before = before.as_str().unwrap_or_default();
    assert!(before.contains("API token"), "{before}");
    for secret in ["n1", "n3", "h2"] {
        assert!(
            !before.contains(secret),
            "{secret} shown before login:\n{before}"
        );
    }
    assert_eq!(
        b.eval("fetch('/v1/overview').then(r => r.status)"),
        json!(401)
    );

    // The operator types the token.
    b.eval("document.getElementById('token').focus()");
    b.call("Input.insertText", json!({ "text": TOKEN }));
    b.eval("document.querySelector('#login button').click()");

    b.wait_for(
        "[...document.querySelectorAll('#hosts tr[data-host]')].filter(r => r.querySelector('.state').textContent === 'up').length === 3",
        Duration::from_secs(20),
        "three hosts up",
    );
    let owners = b.wait_for(
        "(() => { const o = {}; document.querySelectorAll('#nodes tr[data-node]').forEach(r => o[r.dataset.node] = r.querySelector('.owner').textContent); return Object.keys(o).length === 3 ? o : null })()",
        Duration::from_secs(20),
        "three nodes",
    );
    assert_eq!(owners, json!({ "n1": "h1", "n2": "h1", "n3": "h2" }));
    let stage = b.wait_for(
        &text_of("#nodes tr[data-node=\"n1\"] .stage"),
        Duration::from_secs(10),
        "n1's last boot stage",
    );
    assert_eq!(stage, json!("config ok on h1"));
    assert_eq!(
        b.eval(&text_of("#hosts tr[data-host=\"h1\"] .owned")),
        json!("2")
    );

    // The search box filters on the server's side.
    search(&mut b, "n3");
    b.wait_for(
        "(() => { const r = [...document.querySelectorAll('#nodes tr[data-node]')].map(r => r.dataset.node); return r.length === 1 && r[0] === 'n3' })()",
        Duration::from_secs(10),
        "only n3 after searching for it",
    );
    search(&mut b, "");
    b.wait_for(
        "document.querySelectorAll('#nodes tr[data-node]').length === 3",
        Duration::from_secs(10),
        "all nodes again",
    );

    // A migration shows up without a reload.
    b.eval("window.__notReloaded = 17");
    let t0 = Instant::now();
    h1.post("/v1/nodes/n1/migrate", json!({ "to": "h3" }))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect(200);
    b.wait_for(
        &format!(
            "{} === 'h3' && {} === '2'",
            text_of("#nodes tr[data-node=\"n1\"] .owner"),
            text_of("#nodes tr[data-node=\"n1\"] .epoch")
        ),
        Duration::from_secs(20),
        "n1 owned by h3 at epoch 2",
    );
    let shown_after = t0.elapsed();
    assert_eq!(
        b.eval("window.__notReloaded"),
        json!(17),
        "the page reloaded"
    );
    b.wait_for(
        "[...document.querySelectorAll('#events li')].some(l => l.textContent.includes('ownership_transferred') && l.textContent.includes('node=n1'))",
        Duration::from_secs(10),
        "the ownership event in the feed",
    );
    assert_eq!(
        b.eval(&text_of("#hosts tr[data-host=\"h3\"] .owned")),
        json!("1")
    );

    // A screenshot of the whole page.
    let shot = b.call(
        "Page.captureScreenshot",
        json!({ "format": "png", "captureBeyondViewport": true }),
    );
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64 PNG");
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("status-page.png");
    std::fs::write(&path, &png).unwrap();
    println!(
        "status page: migration shown {} ms after the request; screenshot {} ({} bytes)",
        shown_after.as_millis(),
        path.display(),
        png.len()
    );
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
}
