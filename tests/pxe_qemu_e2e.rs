//! End-to-end boot with real firmware: QEMU machines PXE-boot from Baton on a bridge
//! inside network namespaces this test creates, with dnsmasq as the plain,
//! address-only DHCP server, and must print a marker on their serial console that only
//! the node's own iPXE script prints, after fetching the node's own kernel and ramdisk.
//!
//! Topology (all addresses exist only inside the test's namespaces):
//!
//! ```text
//!   netns <p>-lan:   br0 ── tap0 (QEMU NIC) ── vdhcp ── vboot ── vprobe
//!   netns <p>-dhcp:  eth0 10.77.0.2/24   dnsmasq --port=0 --dhcp-range=10.77.0.100,10.77.0.150
//!   netns <p>-boot:  eth0 10.77.0.1/24   baton serve: proxy-DHCP on eth0 (udp/67, udp/4011),
//!                                        TFTP 10.77.0.1:69, --capture
//!   netns <p>-probe: eth0 10.77.0.3/24   raw DHCP/TFTP probes from the test
//! ```
//!
//! Firmware: (a) SeaBIOS with QEMU's iPXE option ROM (ipxe-qemu) on an e1000 NIC,
//! BIOS mode: iPXE asks with user class `iPXE` and gets the node's script at once;
//! (b) OVMF's own UEFI PXE stack on a virtio-net NIC without option ROM: it gets
//! `ipxe.efi` (TFTP size probe, then a windowed download), which then asks again and
//! gets the script; (c) OVMF with the iPXE EFI ROM on an e1000 NIC.
//!
//! Each boot prints the time from power-on to the marker and is bounded (120 s by
//! default, `BATON_E2E_BOOT_TIMEOUT` seconds otherwise). KVM is used when `/dev/kvm`
//! works for plain firmware (not under PVM), else TCG; `BATON_QEMU_ACCEL=kvm|tcg`
//! forces one. Needs root, iproute2, dnsmasq-base, qemu-system-x86, ipxe-qemu, ovmf,
//! ipxe: without them the test fails when `CI` is set, else prints SKIPPED.
//! Everything (processes by PID, namespaces) is torn down on success and on failure.

mod common;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use baton::pcap::read_udp;
use serde_json::json;
use tempfile::TempDir;

use common::api::Api;
use common::child::Proc;
use common::data::parse_mac;
use common::dhcp::ipxe_discover;
use common::host::{Host, HostBuilder};
use common::netns::{address_server, netns_available, Segment};
use common::pattern;
use common::require::{file, require, say, tool};
use common::tftp::rrq;

const BOOT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const DHCP_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
/// The node owned by another host.
const OTHER_MAC: &str = "52:54:00:77:e2:02";

/// One boot at a time: QEMU under TCG needs a core of its own.
static ONE_BOOT: Mutex<()> = Mutex::new(());

/// Everything a boot needs on this machine.
fn prerequisites(fw: Firmware) -> Result<(), String> {
    netns_available()?;
    tool("qemu-system-x86_64", "qemu-system-x86")?;
    tool("dnsmasq", "dnsmasq-base")?;
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun missing (QEMU needs a tap device)".into());
    }
    match fw {
        Firmware::BiosIpxeRom => file("/usr/lib/ipxe/qemu/efi-e1000.rom", "ipxe-qemu"),
        Firmware::UefiEdk2 => {
            ovmf().ok_or("OVMF firmware missing (apt-get install ovmf)")?;
            file("/usr/lib/ipxe/ipxe.efi", "ipxe")
        }
        Firmware::UefiIpxeRom => {
            ovmf().ok_or("OVMF firmware missing (apt-get install ovmf)")?;
            file("/usr/lib/ipxe/qemu/efi-e1000.rom", "ipxe-qemu")
        }
    }
}

/// OVMF code and variable store templates.
fn ovmf() -> Option<(PathBuf, PathBuf)> {
    [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ]
    .into_iter()
    .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
    .find(|(c, v)| c.is_file() && v.is_file())
}

/// The QEMU accelerator, and why.
fn accelerator() -> (&'static str, String) {
    match std::env::var("BATON_QEMU_ACCEL").as_deref() {
        Ok("kvm") => return ("kvm", "forced by BATON_QEMU_ACCEL".into()),
        Ok("tcg") => return ("tcg", "forced by BATON_QEMU_ACCEL".into()),
        _ => {}
    }
    let Ok(kvm) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return ("tcg", "/dev/kvm missing or not accessible".into());
    };
    // KVM_CREATE_VM = _IO(0xAE, 0x01).
    // SAFETY: ioctl on an open /dev/kvm fd with no argument; a VM fd is returned.
    let vm = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&kvm), 0xAE01, 0) };
    if vm < 0 {
        return (
            "tcg",
            format!("KVM_CREATE_VM fails: {}", std::io::Error::last_os_error()),
        );
    }
    // SAFETY: closing the VM fd the ioctl returned.
    unsafe { libc::close(vm) };
    // PVM (kvm_pvm) runs only PVM-aware guest kernels; firmware hangs or aborts there.
    if Path::new("/sys/module/kvm_pvm").exists() {
        return (
            "tcg",
            "/dev/kvm is PVM (kvm_pvm), which cannot run BIOS/UEFI firmware".into(),
        );
    }
    ("kvm", "/dev/kvm usable".into())
}

fn boot_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("BATON_E2E_BOOT_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    /// SeaBIOS + iPXE legacy option ROM, e1000.
    BiosIpxeRom,
    /// OVMF's own PXE stack, virtio-net without option ROM: ipxe.efi first.
    UefiEdk2,
    /// OVMF + iPXE EFI option ROM, e1000.
    UefiIpxeRom,
}

impl Firmware {
    fn tag(self) -> &'static str {
        match self {
            Firmware::BiosIpxeRom => "bios",
            Firmware::UefiEdk2 => "edk2",
            Firmware::UefiIpxeRom => "uipx",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Firmware::BiosIpxeRom => "BIOS: SeaBIOS + iPXE option ROM (e1000)",
            Firmware::UefiEdk2 => "UEFI: OVMF PXE stack (virtio-net) -> ipxe.efi",
            Firmware::UefiIpxeRom => "UEFI: OVMF + iPXE EFI option ROM (e1000)",
        }
    }

    fn mac(self) -> &'static str {
        match self {
            Firmware::BiosIpxeRom => "52:54:00:77:e2:21",
            Firmware::UefiEdk2 => "52:54:00:77:e2:22",
            Firmware::UefiIpxeRom => "52:54:00:77:e2:23",
        }
    }
}

/// Everything one boot set up; dropped in field order: processes before namespaces.
struct Lab {
    qemu: Option<Proc>,
    baton: Option<Host>,
    dnsmasq: Option<Proc>,
    /// Members `dhcp`, `boot`, `probe`; QEMU's tap is a port of its bridge.
    seg: Segment,
    tmp: TempDir,
}

/// A node template whose iPXE script proves the node's own files were fetched, then
/// prints the marker and stops.
fn template_dir(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tftp-root-template");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["pxelinux.cfg.j2", "grub.cfg.j2"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("node.ipxe.j2"),
        "#!ipxe\n\
         # Baton e2e test template: fetch the node's own files, print the marker.\n\
         echo Baton e2e: script of node {{ node.id }} for {{ mac.colons }} on ${platform}\n\
         {% if profile.kind == \"local\" %}\n\
         exit\n\
         {% else %}\n\
         imgfetch --name kernel /{{ profile.kernel }} || goto failed\n\
         imgfetch --name ramdisk /{{ profile.ramdisk }} || goto failed\n\
         echo BATON-MARKER-{{ node.id }}-{{ mac.hex }}-FILES-FETCHED\n\
         imgfree\n\
         exit\n\
         {% endif %}\n\
         :failed\n\
         echo BATON-FAILED-{{ node.id }}\n\
         exit\n",
    )
    .unwrap();
}

fn enroll_deploy(api: &Api, id: &str, mac: &str, seed: u64) {
    api.post("/v1/nodes", json!({ "id": id, "macs": [mac] }))
        .expect(201);
    let kd = api.upload("vmlinuz", &pattern(64_000 + seed as usize, seed));
    let rd = api.upload("initrd.img", &pattern(150_000 + seed as usize, seed + 7));
    api.put(
        &format!("/v1/nodes/{id}/profile"),
        json!({ "kind": "deploy", "kernel": kd, "ramdisk": rd, "cmdline": "console=ttyS0" }),
    )
    .expect(200);
}

/// The bridge, the namespaces, dnsmasq and Baton; the node `n1` has `fw`'s MAC and
/// `n2` is owned by another host.
fn lab(fw: Firmware) -> Lab {
    let seg = Segment::new(
        "pxe",
        &[
            ("dhcp", &format!("{DHCP_IP}/24")),
            ("boot", &format!("{BOOT_IP}/24")),
            ("probe", &format!("{PROBE_IP}/24")),
        ],
    )
    .unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let lan = seg.lan();
    lan.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"]);
    lan.ip(&["link", "set", "tap0", "master", "br0"]);
    lan.ip(&["link", "set", "tap0", "up"]);
    // For dnsmasq's router advertisements (below). Optional: where IPv6 is disabled the
    // boots just take longer.
    let ipv6 = seg
        .member("dhcp")
        .try_ip(&["addr", "add", "fd77::2/64", "dev", "eth0", "nodad"])
        .is_ok();
    if !ipv6 {
        say("note: no IPv6 in the lab (no router advertisement): iPXE boots ~13 s slower");
    }
    let mut lab = Lab {
        qemu: None,
        baton: None,
        dnsmasq: None,
        seg,
        tmp: TempDir::new().unwrap(),
    };

    // dnsmasq: addresses only (no PXE, no TFTP, no DNS).
    let leases = lab.tmp.path().join("dnsmasq.leases");
    // Router advertisements of fd77::/64, as the router of the capture lab sent:
    // without one iPXE waits ~13 s for IPv6 before it boots.
    let ra: &[&str] = if ipv6 {
        &["--enable-ra", "--dhcp-range=fd77::,ra-only,64"]
    } else {
        &[]
    };
    let mut extra = vec!["--log-dhcp"];
    extra.extend_from_slice(ra);
    lab.dnsmasq = Some(address_server(
        lab.seg.member("dhcp"),
        "10.77.0.100,10.77.0.150,255.255.255.0,1h",
        &leases,
        &extra,
    ));

    // The store: n2 enrolled by host "other", n1 (this firmware's MAC) by "h1".
    let data = lab.tmp.path().join("data");
    let tpl = lab.tmp.path().join("templates");
    let root = lab.tmp.path().join("root");
    template_dir(&tpl);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy("/usr/lib/ipxe/ipxe.efi", root.join("ipxe.efi")).ok();
    std::fs::copy("/usr/lib/ipxe/undionly.kpxe", root.join("undionly.kpxe")).ok();
    for (host, node, mac, seed) in [("other", "n2", OTHER_MAC, 2), ("h1", "n1", fw.mac(), 1)] {
        let mut b = HostBuilder::pxe(&data)
            .host(host)
            .template_dir(&tpl)
            .tftp_root(&root)
            .no_dhcp()
            .log_level("info")
            .start();
        enroll_deploy(&b.api, node, mac, seed);
        assert!(b.terminate(Duration::from_secs(15)).success());
    }
    // Baton as proxy-DHCP + TFTP on the lab segment.
    lab.baton = Some(
        HostBuilder::pxe(&data)
            .host("h1")
            .netns(lab.seg.member("boot").name())
            .tftp_listen(&format!("{BOOT_IP}:69"))
            .http_listen(&format!("{BOOT_IP}:8069"))
            .tftp_root(&root)
            .template_dir(&tpl)
            .flag("--dhcp-interface", "eth0")
            .flag("--capture", lab.tmp.path().join("baton.pcap").display())
            .start(),
    );
    lab
}

/// From the probe namespace: the other host's node gets no proxy offer and its files
/// are refused; this host's node is answered.
fn probe_second_node(lab: &Lab, fw: Firmware) {
    let mine = fw.mac().to_string();
    let probe = lab.seg.member("probe");
    let (other, control, tftp) = probe.run(move || {
        let server = SocketAddr::V4(SocketAddrV4::new(BOOT_IP, 67));
        let ask = |mac: &str, wait: Duration| {
            let s = UdpSocket::bind((PROBE_IP, 0)).unwrap();
            s.set_read_timeout(Some(wait)).unwrap();
            s.send_to(&ipxe_discover(parse_mac(mac), 0x7e57_0001), server)
                .unwrap();
            let mut buf = [0u8; 1500];
            s.recv_from(&mut buf)
                .ok()
                .map(|(n, from)| (buf[..n].to_vec(), from))
        };
        let other = ask(OTHER_MAC, Duration::from_secs(2));
        let control = ask(&mine, Duration::from_secs(5));
        // TFTP: the other node's script.
        let s = UdpSocket::bind((PROBE_IP, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let script = format!("ipxe/{}.ipxe", OTHER_MAC.replace(':', "-"));
        s.send_to(
            &rrq(&script, &[]),
            SocketAddr::V4(SocketAddrV4::new(BOOT_IP, 69)),
        )
        .unwrap();
        let mut buf = [0u8; 1500];
        let tftp = s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec());
        (other, control, tftp)
    });
    if let Some((p, from)) = other {
        panic!(
            "node n2 (owned by host \"other\") got a {}-byte proxy answer from {from}",
            p.len()
        );
    }
    let (p, from) = control.expect("this host's node n1 gets a proxy offer (control)");
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(BOOT_IP, 67)));
    assert_eq!((p[0], &p[240..243]), (2, &[53u8, 1, 2][..]), "an OFFER");
    let t = tftp.expect("an answer to the TFTP request for n2's script");
    assert_eq!(
        &t[..4],
        &[0, 5, 0, 2],
        "n2's script refused with ERROR 2 (access violation), got {t:?}"
    );
    let baton = lab.baton.as_ref().unwrap();
    assert!(
        baton
            .wait_for_log(&["not_owner", OTHER_MAC], Duration::from_secs(5))
            .is_some(),
        "Baton logs why n2 is not answered"
    );
}

/// Strips ANSI escape sequences and carriage returns from serial output.
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\x1b' => {
                if it.peek() == Some(&'[') {
                    it.next();
                    while let Some(&n) = it.peek() {
                        it.next();
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    it.next();
                }
            }
            '\r' | '\x08' => {}
            c => out.push(c),
        }
    }
    out
}

fn boot(fw: Firmware) {
    let _one = ONE_BOOT.lock().unwrap_or_else(|p| p.into_inner());
    if !require(prerequisites(fw)) {
        return;
    }
    let (accel, why) = accelerator();
    let mut lab = lab(fw);
    probe_second_node(&lab, fw);

    let mut cmd = lab.seg.lan().command("qemu-system-x86_64");
    cmd.args(["-accel", accel, "-m", "512", "-smp", "1"])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args(["-no-reboot", "-boot", "n"])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]);
    match fw {
        Firmware::BiosIpxeRom => {
            // graphics=off: SeaBIOS copies the text console (iPXE's too) to serial.
            cmd.args(["-machine", "pc,graphics=off"])
                .args(["-device", &format!("e1000,netdev=n0,mac={}", fw.mac())]);
        }
        Firmware::UefiEdk2 | Firmware::UefiIpxeRom => {
            let (code, vars) = ovmf().unwrap();
            let my_vars = lab.tmp.path().join("OVMF_VARS.fd");
            std::fs::copy(&vars, &my_vars).unwrap();
            cmd.args(["-machine", "q35,graphics=off"])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
                ])
                .args([
                    "-drive",
                    &format!("if=pflash,format=raw,file={}", my_vars.display()),
                ]);
            let nic = if fw == Firmware::UefiEdk2 {
                // No option ROM: the firmware's own VirtioNetDxe + PXE.
                format!(
                    "virtio-net-pci,netdev=n0,mac={},romfile=,bootindex=1",
                    fw.mac()
                )
            } else {
                format!(
                    "e1000,netdev=n0,mac={},romfile=/usr/lib/ipxe/qemu/efi-e1000.rom,bootindex=1",
                    fw.mac()
                )
            };
            cmd.args(["-device", &nic]);
        }
    }

    let node_hex = fw.mac().replace(':', "");
    let marker = format!("BATON-MARKER-n1-{node_hex}-FILES-FETCHED");
    let script = format!("ipxe/{}.ipxe", fw.mac().replace(':', "-"));
    let timeout = boot_timeout();
    say(&format!(
        "\n{}: accelerator {accel} ({why}), bounded to {timeout:?}",
        fw.describe()
    ));
    let power_on = Instant::now();
    lab.qemu = Some(Proc::spawn("qemu", &mut cmd));
    let baton = lab.baton.as_ref().unwrap();
    // Milestones from Baton's log, seen while waiting for the marker.
    let mut milestones: Vec<(&str, Vec<&str>, Option<Duration>)> = vec![
        (
            "first proxy-DHCP answer",
            vec!["pxe answer sent", fw.mac()],
            None,
        ),
        (
            "ipxe.efi downloaded",
            vec!["tftp transfer completed", "path=ipxe.efi"],
            None,
        ),
        (
            "node script downloaded",
            vec!["tftp transfer completed", script.as_str()],
            None,
        ),
        (
            "node kernel downloaded",
            vec!["tftp transfer completed", "path=nodes/n1/kernel"],
            None,
        ),
    ];
    // Lines logged before power-on (the probes) do not count.
    let before = baton.log().lines().count();
    let dnsmasq = lab.dnsmasq.as_ref().unwrap();
    let mut leased = None;
    let qemu = lab.qemu.as_mut().unwrap();
    let seen = qemu.wait_for(power_on + timeout, |out, _| {
        let log = baton.log();
        for (_, needles, at) in milestones.iter_mut() {
            if at.is_none()
                && log
                    .lines()
                    .skip(before)
                    .any(|l| needles.iter().all(|n| l.contains(n)))
            {
                *at = Some(power_on.elapsed());
            }
        }
        if leased.is_none()
            && (dnsmasq.stderr() + &dnsmasq.stdout())
                .lines()
                .any(|l| l.contains("DHCPACK(eth0)") && l.contains(fw.mac()))
        {
            leased = Some(power_on.elapsed());
        }
        out.contains(&marker) || out.contains("BATON-FAILED")
    });
    let serial = plain(&qemu.stdout());
    let Some(at) = seen else {
        panic!(
            "{}: no marker {marker:?} on the serial console within {timeout:?} (qemu {:?}).\n\
             Serial console (last 6000 chars):\n{}",
            fw.describe(),
            qemu.try_wait(),
            &serial[serial.len().saturating_sub(6000)..]
        );
    };
    assert!(
        !serial.contains("BATON-FAILED"),
        "{}: the node script could not fetch the node's files:\n{serial}",
        fw.describe()
    );
    let elapsed = at - power_on;
    qemu.kill();
    let mut timeline = String::new();
    if let Some(t) = leased {
        let _ = write!(timeline, "address from dnsmasq {:.1} s; ", t.as_secs_f64());
    }
    for (what, _, t) in &milestones {
        if let Some(t) = t {
            let _ = write!(timeline, "{what} {:.1} s; ", t.as_secs_f64());
        }
    }
    say(&format!(
        "{}: power-on -> marker {:.1} s ({accel}); {timeline}",
        fw.describe(),
        elapsed.as_secs_f64()
    ));

    if std::env::var_os("BATON_E2E_VERBOSE").is_some() {
        println!(
            "----- serial console -----\n{serial}\n----- dnsmasq -----\n{}\n----- baton -----\n{}",
            lab.dnsmasq.as_ref().unwrap().stderr(),
            lab.baton.as_ref().unwrap().log()
        );
    }
    // What Baton did: the answers and the files, in its log.
    let baton = lab.baton.as_mut().unwrap();
    let answers = baton.log_lines(&["pxe answer sent", fw.mac()]);
    let stage = |s: &str| answers.iter().any(|l| l.contains(s));
    assert!(
        stage("stage=\"ipxe\""),
        "no iPXE-stage answer: {answers:#?}"
    );
    if fw == Firmware::UefiEdk2 {
        assert!(
            stage("stage=\"loader\"") && stage("boot_file=ipxe.efi"),
            "EDK2 gets ipxe.efi first: {answers:#?}"
        );
        assert!(
            baton
                .log_lines(&["tftp transfer completed", "path=ipxe.efi"])
                .iter()
                .any(|l| l.contains("windowsize=4")),
            "EDK2 downloads ipxe.efi with windowsize 4"
        );
        assert!(
            !baton
                .log_lines(&["tftp size probe", "path=ipxe.efi"])
                .is_empty(),
            "EDK2's tsize probe of ipxe.efi is logged as a size probe"
        );
    }
    for p in [script.as_str(), "nodes/n1/kernel", "nodes/n1/ramdisk"] {
        assert!(
            !baton
                .log_lines(&["tftp transfer completed", &format!("path={p} ")])
                .is_empty(),
            "{p} not downloaded completely:\n{}",
            baton.log()
        );
    }
    // The capture has the DHCP and TFTP traffic of the boot.
    assert!(baton.terminate(Duration::from_secs(15)).success());
    if let Some(dir) = std::env::var_os("BATON_E2E_KEEP") {
        let to = Path::new(&dir).join(format!("baton-e2e-{}.pcap", fw.tag()));
        std::fs::copy(lab.tmp.path().join("baton.pcap"), &to).unwrap();
        println!("capture kept in {}", to.display());
    }
    let pcap = std::fs::read(lab.tmp.path().join("baton.pcap")).unwrap();
    let recs = read_udp(&pcap).expect("Baton's capture reads back");
    let answers = recs
        .iter()
        .filter(|r| r.src.port() == 67 || r.src.port() == 4011)
        .count();
    let rrqs = recs
        .iter()
        .filter(|r| r.dst.port() == 69 && r.payload.starts_with(&[0, 1]))
        .count();
    assert!(
        answers >= 2 && rrqs >= 3,
        "{answers} DHCP answers, {rrqs} RRQs"
    );

    // Teardown: no process, no namespace left.
    let prefix = format!("{}-", lab.seg.prefix());
    let pids: Vec<u32> = [lab.qemu.as_ref(), lab.dnsmasq.as_ref()]
        .into_iter()
        .flatten()
        .map(Proc::pid)
        .collect();
    drop(lab);
    let left = common::netns::list();
    assert!(
        !left.iter().any(|l| l.starts_with(&prefix)),
        "namespaces left behind: {left:?}"
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind"
        );
    }
}

#[test]
fn bios_ipxe_rom_boots_the_nodes_own_files() {
    boot(Firmware::BiosIpxeRom);
}

#[test]
fn uefi_edk2_pxe_chains_ipxe_efi_then_boots_the_nodes_own_files() {
    boot(Firmware::UefiEdk2);
}

#[test]
fn uefi_ipxe_rom_boots_the_nodes_own_files() {
    boot(Firmware::UefiIpxeRom);
}
