//! `baton serve` as a process: clean shutdown on SIGTERM, and start-up failures that
//! say what is wrong and how to fix it.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use common::raw::{rrq, Peer, Reply};
use common::{baton_bin, run_with_timeout, Output, Server};

/// Runs `baton serve` with `args` and temp dirs, expecting it to exit by itself.
fn serve_expecting_exit(args: &[&str], config: Option<&str>) -> Output {
    let dirs = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(baton_bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dirs.path().join("data"))
        .arg("--tftp-root")
        .arg(dirs.path().join("root"))
        .args(common::isolation_flags())
        .args(args);
    common::clean_env(&mut cmd);
    if let Some(toml) = config {
        let f = dirs.path().join("baton.toml");
        std::fs::write(&f, toml).unwrap();
        cmd.arg("--config").arg(f);
    }
    run_with_timeout(&mut cmd, Duration::from_secs(20))
}

#[test]
fn sigterm_stops_an_idle_server_cleanly() {
    let mut s = Server::start();
    let status = s
        .terminate(Duration::from_secs(2))
        .expect("baton serve must exit within 2 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    s.expect_log(&["baton stopped"], Duration::from_secs(1));
}

#[test]
fn sigterm_stops_a_server_with_a_transfer_in_flight() {
    let mut s = Server::start();
    s.put("f", &common::pattern(100_000, 1));
    let peer = Peer::new();
    peer.send(s.addr, &rrq("f", &[]));
    let (r, _) = peer.expect("DATA 1");
    assert!(matches!(r, Reply::Data { block: 1, .. }), "got {r:?}");
    let status = s
        .terminate(Duration::from_secs(2))
        .expect("baton serve must exit within 2 s of SIGTERM, even mid-transfer");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn sigterm_stops_a_server_with_a_request_stuck_on_a_fifo() {
    // A request whose file open blocks (a FIFO nobody writes to) must not keep the
    // process alive after SIGTERM.
    let mut s = Server::start();
    common::mkfifo(&s.root().join("pipe"));
    let peer = Peer::new();
    peer.send(s.addr, &rrq("pipe", &[]));
    // Whatever the answer (an ERROR, or nothing while the open hangs), stop the server.
    let _ = peer.recv(Duration::from_millis(300));
    let status = s
        .terminate(Duration::from_secs(3))
        .expect("baton serve must exit within 3 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn unknown_config_key_is_named_and_fatal() {
    let out = serve_expecting_exit(
        &["--tftp-listen", "127.0.0.1:0"],
        Some("[tftp]\nmax_blksiz = 1024\n"),
    );
    assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("max_blksiz"),
        "the message must name the bad key; stderr:\n{}",
        out.stderr
    );
}

#[test]
fn out_of_range_config_value_is_named_and_fatal() {
    let out = serve_expecting_exit(
        &["--tftp-listen", "127.0.0.1:0"],
        Some("[tftp]\nmax_windowsize = 0\n"),
    );
    assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("tftp.max_windowsize"),
        "the message must name the key; stderr:\n{}",
        out.stderr
    );
}

#[test]
fn badly_typed_config_value_is_named_and_fatal() {
    let out = serve_expecting_exit(&[], Some("[tftp]\nlisten = \"not an address\"\n"));
    assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("listen"),
        "the message must name the key; stderr:\n{}",
        out.stderr
    );
}

#[test]
fn out_of_range_flag_is_named_and_fatal() {
    let out = serve_expecting_exit(
        &["--tftp-listen", "127.0.0.1:0", "--tftp-max-blksize", "4"],
        None,
    );
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
    let out = serve_expecting_exit(&["--tftp-listen", &addr], None);
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
    for (args, config) in [
        (vec!["--tftp-map-file", map.as_str()], None),
        (vec![], Some(format!("[tftp]\nmap_file = \"{map}\"\n"))),
    ] {
        let mut args = args;
        args.extend(["--tftp-listen", "127.0.0.1:0"]);
        let out = serve_expecting_exit(&args, config.as_deref());
        assert!(!out.status.success(), "must fail; stderr:\n{}", out.stderr);
        assert!(
            out.stderr.contains("tftp.map_file") && out.stderr.contains("line 3"),
            "the message must name the key and the line; stderr:\n{}",
            out.stderr
        );
    }
}
