//! The status page in a real headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol (`common::browser`), against three real `baton serve` hosts on
//! loopback: the page is served read-only under a strict Content-Security-Policy;
//! before the token is given it shows no fleet data; with it, the hosts and nodes
//! appear (owner, epoch, a node's last boot stage), the search box filters, a stalled
//! boot is shown stuck, no secret is in the page or its storage, a migration shows up
//! without a reload, and a screenshot is taken (a PNG of more than 10 kB; env
//! BATON_SCREENSHOT=FILE keeps it).
//!
//! Without chromium the test is skipped loudly; with env CI set it fails.
//! Timing-heavy (three hosts, a browser): run under `flock /tmp/baton-heavy.lock`.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::api::raw_request;
use common::browser::Browser;
use common::data::{mac, mac_colons, pxelinux_path};
use common::fleet::{Fleet, Leases};
use common::host::{HostBuilder, SECRET, TOKEN};
use common::pattern;
use common::require::require_chromium;
use common::tftp::{tftp_fetch, Answer};

/// `document.querySelector(sel).textContent` as an expression.
fn text_of(sel: &str) -> String {
    format!(
        "(document.querySelector({}) || {{}}).textContent || ''",
        json!(sel)
    )
}

/// Types `text` into the search box (as an `input` event, like a keystroke).
fn search(b: &mut Browser, text: &str) {
    b.eval(&format!(
        "(() => {{ const s = document.getElementById('search'); s.value = {}; s.dispatchEvent(new Event('input')) }})()",
        json!(text)
    ));
}

#[test]
fn the_status_page_shows_the_fleet_and_a_migration_without_a_reload() {
    let Some(chromium) = require_chromium() else {
        return;
    };
    // A boot quiet for 5 s counts as stalled: the page shows it stuck. The shipped
    // leases, not the short test ones: with those, elections at cluster start churned
    // while Chromium started on the same 2 cores, a lease lapsed and a node moved.
    let cfg = Leases::DEFAULT.toml("") + "\n[boots]\nstall_secs = 5\n";
    let f = Fleet::start(
        (1..=3)
            .map(|i| HostBuilder::member(&format!("h{i}")).config(&cfg))
            .collect(),
    );
    let h1 = f.host("h1").api.clone();
    let h2 = f.host("h2").api.clone();
    let kd = h1.upload("vmlinuz", &pattern(50_000, 1));
    let rd = h1.upload("initrd", &pattern(60_000, 2));
    h1.enroll_deploy("n1", &mac_colons(mac(1)), &kd, &rd);
    h1.enroll_deploy("n2", &mac_colons(mac(2)), &kd, &rd);
    h2.enroll_deploy("n3", &mac_colons(mac(3)), &kd, &rd);
    h1.wait_nodes_replicated(
        &["n1", "n2", "n3"],
        &["h1", "h2", "h3"],
        Duration::from_secs(30),
    );
    // n1 fetches its configuration from h1: a boot stage for the page.
    let got = tftp_fetch(
        f.host("h1").tftp(),
        &pxelinux_path(mac(1)),
        &[],
        Duration::from_secs(2),
        None,
        None,
    );
    assert!(matches!(got, Answer::Data(_)), "{got:?}");

    // The page is served read-only, with a policy that allows its own files only.
    let page = h1.anonymous("GET", "/", &[], None);
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    for (method, path) in [("POST", "/"), ("PUT", "/ui/app.js"), ("DELETE", "/ui")] {
        let (st, _) = raw_request(None, h1.addr(), method, path, None);
        assert_eq!(st, 405, "{method} {path}");
        // With a body, the edge refuses it first: these routes take none.
        let (st, _) = raw_request(None, h1.addr(), method, path, Some("{}"));
        assert_eq!(st, 413, "{method} {path} with a body");
    }

    let mut b = Browser::launch(chromium).unwrap_or_else(|e| panic!("{e}"));
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
    );
    let url = format!("{}/", f.host("h1").url());
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

    // n1 fetched its configuration and nothing since: after stall_secs it is stuck.
    let stuck = b.wait_for(
        "(() => { const c = document.querySelector('#nodes tr[data-node=\"n1\"] .boot .badge'); return c && c.textContent === 'stuck' ? c.title : '' })()",
        Duration::from_secs(30),
        "n1 shown stuck",
    );
    let stuck = stuck.as_str().unwrap_or_default();
    assert!(
        stuck.starts_with("stalled: ") && stuck.contains("config"),
        "{stuck}"
    );
    assert_eq!(
        b.eval(&text_of("#nodes tr[data-node=\"n2\"] .boot")),
        json!(""),
        "n2 never booted"
    );

    // Nothing secret in the page, its storage or the data it reads.
    let html = b.eval("document.documentElement.outerHTML");
    let html = html.as_str().unwrap_or_default();
    let overview = h1.get("/v1/overview").expect(200).to_string();
    for secret in [TOKEN, SECRET] {
        assert!(!html.contains(secret), "a secret in the page:\n{html}");
        assert!(!overview.contains(secret), "a secret in /v1/overview");
    }
    assert_eq!(
        b.eval("document.cookie + localStorage.length + sessionStorage.length"),
        json!("00"),
        "the token is kept in page memory only"
    );

    // A migration shows up without a reload.
    b.eval("window.__notReloaded = 17");
    let t0 = Instant::now();
    h1.post("/v1/nodes/n1/migrate", json!({ "to": "h3" }))
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

    // A screenshot of the whole page, kept where env BATON_SCREENSHOT says, if set.
    let shot = b.call(
        "Page.captureScreenshot",
        json!({ "format": "png", "captureBeyondViewport": true }),
    );
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64 PNG");
    let kept = match std::env::var_os("BATON_SCREENSHOT") {
        Some(path) => {
            std::fs::write(&path, &png).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
            format!(", saved to {}", path.to_string_lossy())
        }
        None => String::new(),
    };
    println!(
        "status page: migration shown {} ms after the request; screenshot of {} bytes{kept}",
        shown_after.as_millis(),
        png.len()
    );
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
}
