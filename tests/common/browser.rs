//! A headless Chromium driven over the DevTools protocol, for the tests of web pages:
//! a small client on the browser's WebSocket (`tungstenite`), one page, script
//! evaluation with waits. The browser listens on loopback only and is killed (by its
//! PID) when dropped. Find the binary with [`super::require::require_chromium`].

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
                panic!(
                    "timed out after {timeout:?} waiting for {what} (last {v}); the page says:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked to close, the browser ends its renderer and GPU processes too; a kill
        // of its PID alone could leave them behind.
        let _ = self.call_browser("Browser.close", json!({}));
        let _ = self.ws.close(None);
        if super::child::wait_with_deadline(&mut self.child, Duration::from_secs(5)).is_none() {
            // This browser's PID only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
