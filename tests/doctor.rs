//! `baton doctor` against real conditions: a port held by this test process, a missing
//! boot loader, a read-only data directory, a firewall in a network namespace, a
//! running server, and a running two-host cluster.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fleet::Fleet;
use common::host::{baton_bin, clean_env, HostBuilder, SECRET};
use common::netns::{unique_name, Netns};
use common::require::{require_netns, require_nft, require_unshare};
use common::run_with_timeout;

/// Doctor reads /proc and asks peers with a 3 s timeout: well within this.
const DOCTOR_TIMEOUT: Duration = Duration::from_secs(60);

/// What one `baton doctor` run printed.
struct Report {
    code: Option<i32>,
    text: String,
}

impl Report {
    /// The line of check `name` (`PASS  name: ...`), panicking with the report if absent.
    fn line(&self, name: &str) -> &str {
        self.text
            .lines()
            .find(|l| {
                l.get(6..)
                    .is_some_and(|r| r.starts_with(&format!("{name}:")))
            })
            .unwrap_or_else(|| panic!("no `{name}` line in the report:\n{}", self.text))
    }

    /// The line of `name`, asserting its status.
    #[track_caller]
    fn expect(&self, status: &str, name: &str) -> &str {
        let l = self.line(name);
        assert!(
            l.starts_with(status),
            "`{name}` is not {status}:\n{}",
            self.text
        );
        l
    }

    /// The `fix:` line under check `name`.
    fn fix(&self, name: &str) -> &str {
        let l = self.line(name);
        let mut it = self.text.lines().skip_while(|x| *x != l).skip(1);
        it.next()
            .filter(|x| x.trim_start().starts_with("fix:"))
            .unwrap_or_else(|| panic!("no fix under `{name}`:\n{}", self.text))
    }

    fn fails(&self) -> Vec<&str> {
        self.text
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .collect()
    }
}

/// `baton doctor` with `args` (after cleaning the environment), plus `env`.
fn doctor_cmd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(baton_bin());
    cmd.arg("doctor").args(args);
    clean_env(&mut cmd).env_remove("BATON_CLUSTER_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(cmd: &mut Command) -> Report {
    let out = run_with_timeout(cmd, DOCTOR_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", out.stderr);
    Report {
        code: out.status.code(),
        text,
    }
}

fn doctor(args: &[&str], env: &[(&str, &str)]) -> Report {
    run(&mut doctor_cmd(args, env))
}

/// A loopback UDP port nobody listens on (bound, then released). Only for checks that
/// never bind it: doctor reports on the port, and nothing else here binds it; servers
/// bind port 0.
fn unbound_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
        .port()
}

/// [`unbound_udp_port`] for TCP (also a URL nobody answers).
fn unbound_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral TCP port")
        .port()
}

/// A loopback-only configuration with proxy-DHCP on unused loopback ports, a TFTP root
/// holding the two required loaders, and no optional ones.
struct Setup {
    dir: tempfile::TempDir,
    tftp: u16,
    dhcp: u16,
    pxe: u16,
    http: u16,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("tftp");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("undionly.kpxe"), vec![0x55; 4096]).unwrap();
        std::fs::write(root.join("ipxe.efi"), vec![0x4d; 8192]).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        Setup {
            dir,
            tftp: unbound_udp_port(),
            dhcp: unbound_udp_port(),
            pxe: unbound_udp_port(),
            http: unbound_tcp_port(),
        }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("tftp")
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Writes the config file; returns its path.
    fn config(&self) -> String {
        let f = self.dir.path().join("baton.toml");
        let toml = format!(
            r#"data_dir = "{data}"
[tftp]
listen = "127.0.0.1:{tftp}"
root = "{root}"
[http]
listen = "127.0.0.1:{http}"
[dhcp]
listen = "127.0.0.1"
port = {dhcp}
pxe_port = {pxe}
[dhcp.boot_files]
bios = "undionly.kpxe"
efi_x64 = "ipxe.efi"
"#,
            data = self.data().display(),
            root = self.root().display(),
            tftp = self.tftp,
            http = self.http,
            dhcp = self.dhcp,
            pxe = self.pxe,
        );
        std::fs::write(&f, toml).unwrap();
        f.display().to_string()
    }
}

#[test]
fn all_pass_on_loopback() {
    let s = Setup::new();
    let r = doctor(&["--config", &s.config()], &[]);
    assert!(r.fails().is_empty(), "{}", r.text);
    assert_eq!(r.code, Some(0), "{}", r.text);
    for (name, want) in [
        (format!("port udp/{} (tftp)", s.tftp), "free"),
        (format!("port udp/{} (proxy-dhcp)", s.dhcp), "free"),
        (format!("port udp/{} (pxe)", s.pxe), "free"),
        (format!("port tcp/{} (http)", s.http), "free"),
        ("boot loader bios".into(), "4096 bytes"),
        ("boot loader efi_x64".into(), "8192 bytes"),
        ("data dir".into(), "is writable"),
        ("interface lo".into(), "MTU"),
        ("firewall".into(), "loopback"),
        ("cluster peers".into(), "single host"),
    ] {
        let l = r.expect("PASS", &name);
        assert!(l.contains(want), "{l}");
    }
    assert!(r.text.contains("0 fail"), "{}", r.text);
    // The same as JSON.
    let j = doctor(&["--config", &s.config(), "--json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&j.text).expect("JSON report");
    assert!(v.as_array().unwrap().iter().all(|f| f["status"] != "fail"));
}

#[test]
fn port_busy_names_this_process() {
    let mut s = Setup::new();
    let udp = UdpSocket::bind("127.0.0.1:0").expect("hold a UDP port");
    let tcp = TcpListener::bind("127.0.0.1:0").expect("hold a TCP port");
    s.tftp = udp.local_addr().unwrap().port();
    s.http = tcp.local_addr().unwrap().port();
    let me = std::process::id();
    let r = doctor(&["--config", &s.config()], &[]);
    assert_eq!(r.code, Some(1), "{}", r.text);
    for name in [
        format!("port udp/{} (tftp)", s.tftp),
        format!("port tcp/{} (http)", s.http),
    ] {
        let l = r.expect("FAIL", &name);
        assert!(l.contains(&format!("(pid {me})")), "{l}");
        assert!(l.contains("held by"), "{l}");
        assert!(r.fix(&name).contains("listen"), "{}", r.fix(&name));
    }
    r.expect("PASS", &format!("port udp/{} (pxe)", s.pxe));
    // A flag moves the listener: the same file with --tftp-listen passes that port.
    let other = unbound_udp_port();
    let r = doctor(
        &[
            "--config",
            &s.config(),
            "--tftp-listen",
            &format!("127.0.0.1:{other}"),
        ],
        &[],
    );
    r.expect("PASS", &format!("port udp/{other} (tftp)"));
    drop((udp, tcp));
}

#[test]
fn missing_loader_fails_with_the_installer() {
    let s = Setup::new();
    std::fs::remove_file(s.root().join("ipxe.efi")).unwrap();
    let r = doctor(&["--config", &s.config()], &[]);
    assert_eq!(r.code, Some(1), "{}", r.text);
    r.expect("PASS", "boot loader bios");
    let l = r.expect("FAIL", "boot loader efi_x64");
    assert!(l.contains("ipxe.efi: missing"), "{l}");
    let fix = r.fix("boot loader efi_x64");
    assert!(
        fix.contains("install-bootloaders.sh") && fix.contains(&s.root().display().to_string()),
        "{fix}"
    );
    // An optional architecture only warns.
    let cfg = s.config();
    let mut toml = std::fs::read_to_string(&cfg).unwrap();
    toml.push_str("efi_arm64 = \"arm64/ipxe.efi\"\n");
    std::fs::write(&cfg, toml).unwrap();
    std::fs::write(s.root().join("ipxe.efi"), b"x").unwrap();
    let r = doctor(&["--config", &cfg], &[]);
    r.expect("WARN", "boot loader efi_arm64");
    assert_eq!(r.code, Some(0), "{}", r.text);
}

/// Runs doctor with the data dir read-only: a read-only bind mount in a private mount
/// namespace as root (root ignores file modes), a 0555 directory otherwise.
#[test]
fn unwritable_data_dir_fails() {
    let s = Setup::new();
    let data = s.data();
    let cfg = s.config();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let r = if root {
        if !require_unshare() {
            return;
        }
        let script = format!(
            "mount --bind '{d}' '{d}' && mount -o remount,bind,ro '{d}' '{d}' && exec \"$0\" doctor --config '{cfg}'",
            d = data.display(),
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(baton_bin());
        clean_env(&mut cmd);
        run(&mut cmd)
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
        let r = doctor(&["--config", &cfg], &[]);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        r
    };
    assert_eq!(r.code, Some(1), "{}", r.text);
    let l = r.expect("FAIL", "data dir");
    assert!(
        l.contains("not writable") && (l.contains("Read-only") || l.contains("Permission denied")),
        "{l}"
    );
    assert!(r.fix("data dir").contains("--data-dir"), "{}", r.text);
    // A data dir that is a file cannot be created either.
    let file = s.dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let r = doctor(
        &["--config", &cfg, "--data-dir", &file.display().to_string()],
        &[],
    );
    assert!(r.expect("FAIL", "data dir").contains("not a directory"));
    // Disk space below a demanded minimum.
    let r = doctor(&["--config", &cfg, "--min-free-mb", "999999999"], &[]);
    r.expect("FAIL", "disk space");
}

#[test]
fn ports_held_by_a_running_baton_pass() {
    let mut s = Setup::new();
    // The server binds ports of its own choosing (port 0); doctor is given the same
    // configuration with the ports it bound.
    let server = HostBuilder::new(&s.data())
        .tftp_root(&s.root())
        .dhcp_loopback()
        .config("[dhcp.boot_files]\nbios = \"undionly.kpxe\"\nefi_x64 = \"ipxe.efi\"\n")
        .start();
    s.tftp = server.tftp().port();
    s.http = server.http().port();
    s.dhcp = server.dhcp().port();
    s.pxe = server.pxe().port();
    let r = doctor(&["--config", &s.config()], &[]);
    for name in [
        format!("port udp/{} (tftp)", s.tftp),
        format!("port udp/{} (proxy-dhcp)", s.dhcp),
        format!("port udp/{} (pxe)", s.pxe),
        format!("port tcp/{} (http)", s.http),
    ] {
        let l = r.expect("PASS", &name);
        assert!(
            l.contains("baton itself") && l.contains(&format!("pid {}", server.pid())),
            "{l}"
        );
    }
    assert_eq!(r.code, Some(0), "{}", r.text);
    drop(server);
}

#[test]
fn firewall_drop_in_a_namespace() {
    if !require_netns() || !require_nft() {
        return;
    }
    let ns = Netns::add(&unique_name("doc")).unwrap_or_else(|e| panic!("{e}"));
    nft(
        &ns,
        "table inet baton_test {
           chain input {
             type filter hook input priority 0; policy drop;
             ct state established,related accept
             iifname \"lo\" accept
             udp dport { 67, 4011 } accept
             udp dport 69 counter reject
           }
         }",
    );
    let s = Setup::new();
    // Wildcard listeners on the standard ports: the ones PXE clients reach.
    let mut cmd = ns.command(baton_bin());
    cmd.args(["doctor", "--config"]).arg(s.config()).args([
        "--tftp-listen",
        "0.0.0.0:69",
        "--dhcp-listen",
        "0.0.0.0",
        "--dhcp-port",
        "67",
        "--dhcp-pxe-port",
        "4011",
    ]);
    clean_env(&mut cmd);
    let r = run(&mut cmd);
    assert_eq!(r.code, Some(1), "{}", r.text);
    let l = r.expect("FAIL", "firewall udp/69 (tftp)");
    assert!(
        l.contains("udp dport 69") && l.contains("baton_test"),
        "{l}"
    );
    assert!(r
        .fix("firewall udp/69 (tftp)")
        .contains("udp dport 69 accept"));
    r.expect("PASS", "firewall udp/67 (proxy-dhcp)");
    r.expect("PASS", "firewall udp/4011 (pxe)");
}

/// Loads `ruleset` with `nft -f` inside `ns`.
fn nft(ns: &Netns, ruleset: &str) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), ruleset).unwrap();
    let out = run_with_timeout(
        ns.command("nft").arg("-f").arg(f.path()),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "nft -f: {}", out.stderr);
}

#[test]
fn cluster_peers_and_clock_skew() {
    let c = Fleet::cluster(2, "");
    let h1 = &c.hosts[0];
    let args = |data: &Path| {
        vec![
            "--data-dir".to_string(),
            data.display().to_string(),
            "--http-listen".into(),
            h1.http().to_string(),
            "--tftp-listen".into(),
            h1.tftp().to_string(),
            "--no-dhcp".into(),
            // As the test hosts run (`HostBuilder`'s default).
            "--node-files".into(),
            "open".into(),
        ]
    };
    let a = args(h1.data_dir());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = doctor(&a, &[("BATON_CLUSTER_SECRET", SECRET)]);
    let l = r.expect("PASS", &format!("peer h2 {}", c.hosts[1].url()));
    assert!(l.contains("clock") && l.contains(" ms"), "{l}");
    assert!(
        !r.text.contains("peer h1"),
        "this host is not its own peer:\n{}",
        r.text
    );
    r.expect("PASS", &format!("port tcp/{} (http)", h1.http().port()));
    assert_eq!(r.code, Some(0), "{}", r.text);
    assert!(!r.text.contains("node_files"), "{}", r.text);

    // A host set to another node_files mode than its peer (which runs `open`) is told
    // so: after a takeover the node's files would change hands.
    let mut token = a.clone();
    *token.last_mut().expect("the mode is last") = "token";
    let r = doctor(&token, &[("BATON_CLUSTER_SECRET", SECRET)]);
    let l = r.expect("FAIL", "peer h2 node_files");
    assert!(l.contains("\"open\"") && l.contains("\"token\""), "{l}");
    assert_eq!(r.code, Some(1), "{}", r.text);

    // A wrong secret is named as such.
    let r = doctor(
        &a,
        &[("BATON_CLUSTER_SECRET", "not-the-cluster-secret-0000")],
    );
    r.expect("FAIL", &format!("peer h2 {}", c.hosts[1].url()));
    assert!(
        r.text.contains("refused this host's cluster secret"),
        "{}",
        r.text
    );

    // A fresh host that would join: peers come from the join URL and its members;
    // an unreachable member fails.
    let fresh = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", unbound_tcp_port());
    let mut b = args(fresh.path());
    b[3] = format!("127.0.0.1:{}", unbound_tcp_port());
    b[5] = format!("127.0.0.1:{}", unbound_udp_port());
    let mut b2 = b.clone();
    b.extend(["--join".to_string(), h1.url()]);
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let r = doctor(&b, &[("BATON_CLUSTER_SECRET", SECRET)]);
    r.expect("PASS", &format!("peer h1 {}", h1.url()));
    r.expect("PASS", &format!("peer h2 {}", c.hosts[1].url()));
    b2.extend(["--join".to_string(), dead.clone()]);
    let b2: Vec<&str> = b2.iter().map(String::as_str).collect();
    let r = doctor(&b2, &[("BATON_CLUSTER_SECRET", SECRET)]);
    let l = r.expect("FAIL", &format!("peer {dead}"));
    assert!(l.contains("unreachable"), "{l}");
    assert_eq!(r.code, Some(1));
}
