//! `baton serve` as a process: clean shutdown on SIGTERM, start-up failures that say
//! what is wrong and how to fix it, and listeners on port 0 reported in the port file.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::host::{HostBuilder, PORT_FILE};
use common::tftp::{rrq, Peer, Reply};
use common::{run_with_timeout, Output};

/// Runs `b` (a lone host on a temporary data directory), expecting it to exit by itself.
fn serve_expecting_exit(b: HostBuilder) -> Output {
    run_with_timeout(&mut b.command(), Duration::from_secs(20))
}

#[test]
fn sigterm_stops_an_idle_server_cleanly() {
    let mut s = HostBuilder::tftp().start();
    let status = s
        .try_terminate(Duration::from_secs(2))
        .expect("baton serve must exit within 2 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    s.expect_log(&["baton stopped"], Duration::from_secs(1));
}

#[test]
fn sigterm_stops_a_server_with_a_transfer_in_flight() {
    let mut s = HostBuilder::tftp().start();
    s.put("f", &common::pattern(100_000, 1));
    let peer = Peer::new();
    peer.send(s.tftp(), &rrq("f", &[]));
    let (r, _) = peer.expect("DATA 1");
    assert!(matches!(r, Reply::Data { block: 1, .. }), "got {r:?}");
    let status = s
        .try_terminate(Duration::from_secs(2))
        .expect("baton serve must exit within 2 s of SIGTERM, even mid-transfer");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn sigterm_stops_a_server_with_a_request_stuck_on_a_fifo() {
    // A request whose file open blocks (a FIFO nobody writes to) must not keep the
    // process alive after SIGTERM.
    let mut s = HostBuilder::tftp().start();
    common::mkfifo(&s.root().join("pipe"));
    let peer = Peer::new();
    peer.send(s.tftp(), &rrq("pipe", &[]));
    // Whatever the answer (an ERROR, or nothing while the open hangs), stop the server.
    let _ = peer.recv(Duration::from_millis(300));
    let status = s
        .try_terminate(Duration::from_secs(3))
        .expect("baton serve must exit within 3 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn unknown_config_key_is_named_and_fatal() {
    let out = serve_expecting_exit(HostBuilder::temp().config("[tftp]\nmax_blksiz = 1024\n"));
    assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("max_blksiz"),
        "the message must name the bad key; stderr:\n{}",
        out.stderr
    );
}

#[test]
fn out_of_range_config_value_is_named_and_fatal() {
    let out = serve_expecting_exit(HostBuilder::temp().config("[tftp]\nmax_windowsize = 0\n"));
    assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("tftp.max_windowsize"),
        "the message must name the key; stderr:\n{}",
        out.stderr
    );
}

#[test]
fn badly_typed_config_value_is_named_and_fatal() {
    let out =
        serve_expecting_exit(HostBuilder::temp().config("[tftp]\nlisten = \"not an address\"\n"));
    assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("listen"),
        "the message must name the key; stderr:\n{}",
        out.stderr
    );
}

#[test]
fn out_of_range_flag_is_named_and_fatal() {
    let out = serve_expecting_exit(HostBuilder::temp().flag("--tftp-max-blksize", 4));
    assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("max_blksize"),
        "the message must name the setting; stderr:\n{}",
        out.stderr
    );
}

#[test]
fn port_in_use_is_fatal_with_a_fix() {
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let out = serve_expecting_exit(HostBuilder::temp().tftp_listen(&addr));
    assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("already in use"),
        "the message must say the port is in use; stderr:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--tftp-listen"),
        "the message must say how to fix it; stderr:\n{}",
        out.stderr
    );
    drop(holder);
}

#[test]
fn bad_map_file_is_named_and_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("rules");
    std::fs::write(&map, "# ok\nr ^a b\nrx (unclosed\n").unwrap();
    let map = map.display().to_string();
    for b in [
        HostBuilder::temp().flag("--tftp-map-file", &map),
        HostBuilder::temp().config(&format!("[tftp]\nmap_file = \"{map}\"\n")),
    ] {
        let out = serve_expecting_exit(b);
        assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
        assert!(
            out.stderr.contains("tftp.map_file") && out.stderr.contains("line 3"),
            "the message must name the key and the line; stderr:\n{}",
            out.stderr
        );
    }
}

/// Every listener on port 0: the kernel picks the ports, the port file and the log say
/// which, peers are told the bound HTTP port (an advertise URL with `:0` included), a
/// restart binds the same HTTP port, and a clean stop removes the file.
#[test]
fn listeners_on_port_0_are_reported_in_the_port_file() {
    let b = HostBuilder::temp()
        .dhcp_loopback()
        .secret(Some(common::host::SECRET))
        .flag("--advertise-url", "http://127.0.0.1:0/");
    let mut h = b.start();
    let a = h.addrs();
    let (dhcp, pxe) = (h.dhcp(), h.pxe());
    for (what, addr) in [
        ("http", a.http),
        ("tftp", a.tftp),
        ("dhcp", dhcp),
        ("pxe", pxe),
    ] {
        assert!(
            addr.ip().is_loopback() && addr.port() != 0,
            "{what} bound {addr}, not a loopback port"
        );
    }
    assert_ne!(dhcp.port(), pxe.port(), "two ports 0 give two ports");
    let line = h.expect_log(&["listeners bound"], Duration::from_secs(5));
    for addr in [a.http, a.tftp, dhcp, pxe] {
        assert!(line.contains(&addr.to_string()), "{addr} not in {line:?}");
    }
    // Every listener answers where the file says.
    h.api.get("/v1/status").expect(200);
    h.put("f", b"port file");
    let d = common::tftp::fetch_ok(a.tftp, "f", &[]);
    assert_eq!(d.data, b"port file");
    let advertised = format!("http://{}", a.http);
    let hosts = h.api.get("/v1/hosts").expect(200);
    assert_eq!(
        hosts[0]["host"]["addresses"][0], advertised,
        "peers are told the bound HTTP port: {hosts}"
    );
    assert_eq!(
        hosts[0]["host"]["addresses"][1],
        a.tftp.to_string(),
        "the host registers its bound TFTP address: {hosts}"
    );
    let members = h.api.cluster()["members"].clone();
    assert!(
        members.to_string().contains(&advertised),
        "the Raft membership records {advertised}: {members}"
    );
    // A restart of the same host binds the same HTTP port (its address for peers).
    h.stop();
    let file = h.data_dir().join(PORT_FILE);
    assert!(!file.exists(), "a clean stop removes the port file");
    h.start();
    assert_eq!(h.http(), a.http, "a restarted host keeps its HTTP address");
    h.api.get("/v1/status").expect(200);
    let text = std::fs::read_to_string(&file).expect("port file of the second run");
    let v: serde_json::Value = serde_json::from_str(&text).expect("port file is JSON");
    let http: SocketAddr = v["http"]
        .as_str()
        .expect("http")
        .parse()
        .expect("an address");
    assert_eq!(http, a.http, "{text}");
}
