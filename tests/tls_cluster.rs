//! TLS between hosts (issue 16) with real `baton serve` processes on loopback: a CA and
//! host certificates generated here (rcgen; SANs 127.0.0.1 and localhost), three hosts
//! with `https://` advertise and join URLs and `tls.peer_auth = "mtls"`.
//!
//! - the cluster forms over HTTPS and a write through a follower replicates;
//! - the CLI works over https with `--ca`;
//! - plain HTTP to the API port gets no answer; HTTPS without a client certificate
//!   gets the API but not the cluster routes;
//! - HTTP boot of a node file still works on the plain boot listener, which serves no
//!   `/v1`;
//! - a fourth host with a certificate from another CA cannot join, and says why
//!   (TLS/certificate): both when it trusts the cluster's CA (the cluster refuses its
//!   client certificate) and when it trusts only its own (it refuses the cluster's).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::json;

use common::api::Api;
use common::child::run_bounded;
use common::fleet::Fleet;
use common::host::{Host, HostBuilder, Tls, SECRET, TOKEN};
use common::{assert_same_bytes, pattern};

/// How long a committed write may take to show on every replica.
const REPLICATE: Duration = Duration::from_secs(10);
/// The hosts' `http.header_timeout_ms`, which also bounds a TLS handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host that cannot join may take to give up and exit.
const JOIN_FAILS: Duration = Duration::from_secs(15);

/// A CA: its certificate (PEM written to `dir/<name>-ca.pem`) and key, to sign hosts.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let key = KeyPair::generate().expect("CA key");
    let cert = p.self_signed(&key).expect("self-signed CA");
    let pem = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&pem, cert.pem()).expect("write the CA");
    Ca { cert, key, pem }
}

/// A host certificate from `ca` for 127.0.0.1 and localhost (server and client use),
/// written to `dir`; the `Tls` of a host trusting `trust`.
fn host_tls(dir: &Path, ca: &Ca, name: &str, trust: &Path) -> Tls {
    let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("host params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("host key");
    let cert = p
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("sign the host cert");
    let (cert_pem, key_pem) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert_pem, cert.pem()).expect("write the host cert");
    std::fs::write(&key_pem, key.serialize_pem()).expect("write the host key");
    Tls {
        cert: cert_pem,
        key: key_pem,
        ca: trust.to_path_buf(),
        peer_auth: "mtls".into(),
    }
}

/// Enrolls node `n1` (MAC `mac`) through a follower, which forwards the write to the
/// leader; returns the leader's index and the follower.
fn enroll_n1_through_a_follower<'a>(c: &'a Fleet, mac: &str) -> (usize, &'a Host) {
    let leader = c
        .hosts
        .iter()
        .position(|h| h.api.cluster()["state"] == "Leader")
        .expect("a leader");
    let follower = &c.hosts[(leader + 1) % 3];
    follower
        .api
        .post("/v1/nodes", json!({ "id": "n1", "macs": [mac] }))
        .expect(201);
    (leader, follower)
}

#[test]
fn three_hosts_over_tls_and_a_foreign_ca_is_refused() {
    let certs = tempfile::tempdir().expect("temp dir for certificates");
    let dir = certs.path();
    let ours = ca(dir, "cluster");
    let theirs = ca(dir, "other");
    let specs = (1..=3)
        .map(|i| {
            let name = format!("h{i}");
            HostBuilder::member(&name)
                .tls(host_tls(dir, &ours, &name, &ours.pem))
                .config(&format!(
                    "[http]\nheader_timeout_ms = {}\n",
                    HEADER_TIMEOUT.as_millis()
                ))
        })
        .collect();
    let c = Fleet::start(specs);

    // The cluster formed over HTTPS: every member is known by an https:// URL.
    for h in &c.hosts {
        assert!(h.url().starts_with("https://"), "{}", h.url());
        let v = h.api.cluster();
        let members = v["members"].as_array().expect("members");
        assert_eq!(members.len(), 3, "{v}");
        assert!(
            members.iter().all(|m| m["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("https://"))),
            "members must be reached over https: {v}"
        );
    }

    // A write through a follower is forwarded to the leader and replicates everywhere.
    let (leader, follower) = enroll_n1_through_a_follower(&c, "52:54:00:5e:00:01");
    let kernel = pattern(200_000, 1);
    let ramdisk = pattern(300_001, 2);
    let kd = follower.api.upload("vmlinuz", &kernel);
    let rd = follower.api.upload("initrd.img", &ramdisk);
    follower
        .api
        .put(
            "/v1/nodes/n1/profile",
            json!({ "kind": "deploy", "kernel": kd, "ramdisk": rd, "cmdline": "console=ttyS0" }),
        )
        .expect(200);
    let want: BTreeMap<String, (String, String)> = [(
        "n1".to_string(),
        ("enrolled".to_string(), follower.name().to_string()),
    )]
    .into();
    common::wait_until(REPLICATE, "n1 on every host", || {
        c.hosts
            .iter()
            .all(|h| {
                let got = h.api.nodes();
                want.iter()
                    .all(|(id, (_, owner))| got.get(id).is_some_and(|(_, o)| o == owner))
            })
            .then_some(())
    });

    // The CLI speaks https, trusting the CA given with --ca.
    let out = c.hosts[leader].api.cli(&["node", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("n1"),
        "baton node list over https: {}\n{stdout}\n{}",
        out.status,
        out.stderr
    );
    // Without --ca the public roots do not vouch for the test CA.
    let h1 = &c.hosts[0];
    let mut cmd = std::process::Command::new(common::host::baton_bin());
    cmd.args(["node", "list", "--api", &h1.url(), "--token", TOKEN])
        .env_remove("BATON_API")
        .env_remove("BATON_API_TOKEN")
        .env_remove("BATON_API_CA");
    let out = run_bounded(&mut cmd, Duration::from_secs(30)).expect("run the CLI");
    assert!(
        !out.status.success()
            && out.stderr.contains("invalid peer certificate")
            && out.stderr.contains("--ca"),
        "the CLI without --ca must refuse the server's certificate: {}",
        out.stderr
    );

    // Plain HTTP to the API port gets no HTTP answer.
    let plain = Api::new(h1.http(), TOKEN);
    let r = plain.try_get("/v1/cluster");
    assert!(r.is_err(), "plain HTTP to the HTTPS port answered: {r:?}");
    // A client that connects and never starts its handshake is closed after the header
    // timeout, like one that never sends its request head.
    let mut idle = std::net::TcpStream::connect(h1.http()).expect("connect");
    idle.set_read_timeout(Some(HEADER_TIMEOUT * 5))
        .expect("read timeout");
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut idle, &mut buf).expect("closed by the server, not timed out");
    assert_eq!(n, 0, "the server sent something to a silent client");
    assert!(
        t0.elapsed() >= HEADER_TIMEOUT - Duration::from_millis(100)
            && t0.elapsed() < HEADER_TIMEOUT * 4,
        "closed after {:?}",
        t0.elapsed()
    );
    // HTTPS without a client certificate: the API (token) works, the cluster routes
    // (secret alone) do not, in mTLS mode.
    let r = h1.api.peer("GET", "/cluster/clock", Some(SECRET), None);
    let e = r.expect_error(403);
    assert!(
        e["message"].as_str().unwrap_or("").contains("certificate"),
        "{e}"
    );

    // HTTP boot of a node file on its owner's plain boot listener; no API there.
    let boot = Api::new(follower.boot_http(), "");
    let r = boot.anonymous("GET", "/boot/n1/nodes/n1/kernel", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_same_bytes(&r.body, &kernel, "kernel over plain HTTP boot");
    let r = Api::new(follower.boot_http(), TOKEN).get("/v1/cluster");
    assert_eq!(
        r.status,
        404,
        "the boot listener must not serve /v1: {}",
        r.text()
    );

    // A fourth host with a certificate from another CA, trusting the cluster's CA: the
    // cluster refuses its client certificate.
    let foreign = HostBuilder::member("h4")
        .tls(host_tls(dir, &theirs, "h4", &ours.pem))
        .join(&h1.url())
        .data_dir_at(&dir.join("h4-data"));
    let out = run_bounded(&mut foreign.command(), JOIN_FAILS).unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success(), "h4 must not start: {}", out.stderr);
    eprintln!("h4: {}", out.stderr.lines().last().unwrap_or_default());
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("tls with") && err.contains("unknownca"),
        "h4's error must say TLS/certificate:\n{}",
        out.stderr
    );
    // Trusting only its own CA, it refuses the cluster's certificate.
    let foreign = HostBuilder::member("h5")
        .tls(host_tls(dir, &theirs, "h5", &theirs.pem))
        .join(&h1.url())
        .data_dir_at(&dir.join("h5-data"));
    let out = run_bounded(&mut foreign.command(), JOIN_FAILS).unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success(), "h5 must not start: {}", out.stderr);
    eprintln!("h5: {}", out.stderr.lines().last().unwrap_or_default());
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("tls with") && err.contains("invalid peer certificate"),
        "h5's error must say TLS/certificate:\n{}",
        out.stderr
    );
    // Neither became a member.
    let v = h1.api.cluster();
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
}

/// `tls.peer_auth = "secret"`: server-authenticated TLS plus the cluster secret. Three
/// hosts form a cluster over HTTPS without client certificates; a peer call needs the
/// secret; a host with the right CA but another secret cannot join, and no host logs
/// the secret.
#[test]
fn three_hosts_over_tls_with_the_secret_and_a_wrong_secret_is_refused() {
    let certs = tempfile::tempdir().expect("temp dir for certificates");
    let dir = certs.path();
    let ours = ca(dir, "cluster");
    let secret_tls = |name: &str| Tls {
        peer_auth: "secret".into(),
        ..host_tls(dir, &ours, name, &ours.pem)
    };
    let specs = (1..=3)
        .map(|i| {
            let name = format!("h{i}");
            HostBuilder::member(&name).tls(secret_tls(&name))
        })
        .collect();
    let c = Fleet::start(specs);
    for h in &c.hosts {
        assert!(h.url().starts_with("https://"), "{}", h.url());
        let v = h.api.cluster();
        assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
    }

    // A write through a follower replicates to every host.
    enroll_n1_through_a_follower(&c, "52:54:00:5e:00:02");
    common::wait_until(REPLICATE, "n1 on every host", || {
        c.hosts
            .iter()
            .all(|h| h.api.nodes().contains_key("n1"))
            .then_some(())
    });

    // No client certificate here: the secret alone opens the cluster routes, over TLS.
    let h1 = &c.hosts[0];
    let r = h1.api.peer("GET", "/cluster/clock", Some(SECRET), None);
    assert_eq!(r.status, 200, "the secret over TLS: {}", r.text());
    let r = h1
        .api
        .peer("GET", "/cluster/clock", Some("not-the-secret"), None);
    let e = r.expect_error(403);
    assert!(
        e["message"].as_str().unwrap_or("").contains("secret"),
        "{e}"
    );
    h1.api
        .peer("GET", "/cluster/clock", None, None)
        .expect_error(403);

    // A host with a certificate from the cluster's CA but another secret cannot join.
    let wrong = HostBuilder::member("h4")
        .tls(secret_tls("h4"))
        .secret(Some("another-secret-0000"))
        .join(&h1.url())
        .data_dir_at(&dir.join("h4-data"));
    let out = run_bounded(&mut wrong.command(), JOIN_FAILS).unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success(), "h4 must not start: {}", out.stderr);
    eprintln!("h4: {}", out.stderr.lines().last().unwrap_or_default());
    assert!(
        out.stderr.to_lowercase().contains("secret"),
        "h4's error must name the secret:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("another-secret-0000"),
        "h4 logged its secret:\n{}",
        out.stderr
    );
    let v = h1.api.cluster();
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");

    // The secret and the API token never reach a log.
    for h in &c.hosts {
        let log = h.log();
        assert!(
            !log.contains(SECRET) && !log.contains(TOKEN),
            "{} logged a credential",
            h.name()
        );
    }
}
