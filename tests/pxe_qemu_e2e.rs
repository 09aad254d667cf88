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
//!
//! `capture_diff_dnsmasq_vs_baton` boots the OVMF machine twice, through dnsmasq alone (as
//! Ironic's guide runs it) and through Baton, captures the machine's bridge port
//! (dumpcap, wireshark-common), decodes with tshark and compares what firmware acts on
//! (README, "Migrating from dnsmasq + tftpd-hpa").

mod common;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
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
    /// Whether the dhcp member has its IPv6 address (for router advertisements).
    ipv6: bool,
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
        ipv6,
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

/// The QEMU machine of `fw`, its NIC on the lab's bridge (tap0), booting from the network.
fn qemu_command(fw: Firmware, lab: &Lab, accel: &str) -> Command {
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
    cmd
}

fn boot(fw: Firmware) {
    let _one = ONE_BOOT.lock().unwrap_or_else(|p| p.into_inner());
    if !require(prerequisites(fw)) {
        return;
    }
    let (accel, why) = accelerator();
    let mut lab = lab(fw);
    probe_second_node(&lab, fw);

    let mut cmd = qemu_command(fw, &lab, accel);

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
        // Baton records a transfer complete at its last ACK; iPXE may boot the kernel
        // before that ACK of the last file leaves the emulated NIC, so iPXE's own "ok"
        // for the file counts too.
        let by_baton = !baton
            .log_lines(&["tftp transfer completed", &format!("path={p} ")])
            .is_empty();
        let by_ipxe = serial.contains(&format!("/{p}... ok"));
        assert!(
            by_baton || by_ipxe,
            "{p} not downloaded completely:\n{}\n----- serial console -----\n{serial}",
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

// ---------------------------------------------------------------------------------
// Capture diff: the same UEFI boot through dnsmasq alone and through Baton.
// ---------------------------------------------------------------------------------

/// Who answers the PXE boot in a captured run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// dnsmasq alone, as Ironic's guide runs it: addresses, boot file, TFTP.
    Dnsmasq,
    /// dnsmasq for addresses, Baton for proxy-DHCP and TFTP (the lab as above).
    Baton,
}

impl Via {
    fn tag(self) -> &'static str {
        match self {
            Via::Dnsmasq => "dnsmasq",
            Via::Baton => "baton",
        }
    }
}

/// Copies node `n1`'s files (as Baton rendered them, from its stopped store) and the
/// loader into `root` at the paths Baton serves them: dnsmasq serves the same bytes.
fn dnsmasq_root(lab: &Lab, root: &Path) {
    let data = lab.tmp.path().join("data");
    let store = baton::store::Store::open(data.join("baton.db")).unwrap();
    let blobs = baton::blobs::BlobStore::open(data.join("blobs")).unwrap();
    for f in store.node_files("n1").unwrap() {
        let to = root.join(f.path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(&to, blobs.read(&f.digest).unwrap()).unwrap();
    }
    std::fs::copy("/usr/lib/ipxe/ipxe.efi", root.join("ipxe.efi")).unwrap();
}

/// Stops Baton and the address-only dnsmasq; starts dnsmasq as Ironic's guide runs it:
/// addresses, `ipxe.efi` for PXE firmware, the node's script for iPXE, TFTP of `root`.
fn switch_to_dnsmasq(lab: &mut Lab, fw: Firmware) {
    let mut b = lab.baton.take().unwrap();
    assert!(b.terminate(Duration::from_secs(15)).success());
    if let Some(mut d) = lab.dnsmasq.take() {
        d.kill();
    }
    let root = lab.tmp.path().join("dnsmasq-root");
    std::fs::create_dir_all(&root).unwrap();
    dnsmasq_root(lab, &root);
    let script = format!("ipxe/{}.ipxe", fw.mac().replace(':', "-"));
    let mut extra = vec![
        "--log-dhcp".to_string(),
        "--enable-tftp".into(),
        format!("--tftp-root={}", root.display()),
        "--dhcp-match=set:ipxe,175".into(),
        "--dhcp-boot=tag:!ipxe,ipxe.efi".into(),
        format!("--dhcp-boot=tag:ipxe,{script}"),
    ];
    if lab.ipv6 {
        extra.extend([
            "--enable-ra".into(),
            "--dhcp-range=fd77::,ra-only,64".into(),
        ]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    lab.dnsmasq = Some(address_server(
        lab.seg.member("dhcp"),
        "10.77.0.100,10.77.0.150,255.255.255.0,1h",
        &lab.tmp.path().join("dnsmasq-pxe.leases"),
        &extra,
    ));
}

/// One IPv4 UDP datagram of a capture.
#[derive(Debug, Clone)]
struct Datagram {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
}

/// The IPv4 UDP datagrams of `pcap`, in order, as tshark (an independent decoder)
/// reads them; the DHCP and TFTP in them is decoded by hand below, not by Baton's codec.
fn read_capture(pcap: &Path) -> Vec<Datagram> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args([
        "-Y",
        "ip && udp",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "ip.src",
        "-e",
        "udp.srcport",
        "-e",
        "ip.dst",
        "-e",
        "udp.dstport",
        "-e",
        "udp.payload",
    ]);
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert!(out.status.success(), "tshark: {}", out.stderr);
    let hex = |s: &str| -> Vec<u8> {
        let s: String = s.chars().filter(char::is_ascii_hexdigit).collect();
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let addr = |ip: &str, port: &str| {
                Some(SocketAddrV4::new(ip.parse().ok()?, port.parse().ok()?))
            };
            Some(Datagram {
                src: addr(f.first()?, f.get(1)?)?,
                dst: addr(f.get(2)?, f.get(3)?)?,
                payload: hex(f.get(4)?),
            })
        })
        .collect()
}

/// The fields of a DHCP message that firmware acts on.
#[derive(Debug, Clone)]
struct DhcpMsg {
    op: u8,
    xid: u32,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    sname: String,
    file: String,
    opts: std::collections::BTreeMap<u8, Vec<u8>>,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parses a BOOTP/DHCP message (RFC 2131 fixed header, magic cookie, options).
fn parse_dhcp(p: &[u8]) -> Option<DhcpMsg> {
    if p.len() < 240 || p[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let ip = |i: usize| Ipv4Addr::new(p[i], p[i + 1], p[i + 2], p[i + 3]);
    let mut opts = std::collections::BTreeMap::new();
    let mut i = 240;
    while i < p.len() {
        match p[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = *p.get(i + 1)? as usize;
                let v = p.get(i + 2..i + 2 + len)?;
                // A repeated option is concatenated (RFC 3396).
                opts.entry(code)
                    .or_insert_with(Vec::new)
                    .extend_from_slice(v);
                i += 2 + len;
            }
        }
    }
    Some(DhcpMsg {
        op: p[0],
        xid: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        yiaddr: ip(16),
        siaddr: ip(20),
        sname: cstr(&p[44..108]),
        file: cstr(&p[108..236]),
        opts,
    })
}

impl DhcpMsg {
    fn text(&self, code: u8) -> Option<String> {
        self.opts.get(&code).map(|v| cstr(v))
    }

    /// The boot file the firmware uses: option 67, else the `file` field.
    fn boot_file(&self) -> Option<String> {
        self.text(67)
            .filter(|s| !s.is_empty())
            .or_else(|| Some(self.file.clone()).filter(|s| !s.is_empty()))
    }

    /// Where the firmware fetches it: option 66, else siaddr.
    fn next_server(&self) -> Option<String> {
        self.text(66)
            .filter(|s| !s.is_empty())
            .or_else(|| (!self.siaddr.is_unspecified()).then(|| self.siaddr.to_string()))
    }

    /// iPXE marks its requests with option 175 or user class `iPXE`.
    fn is_ipxe(&self) -> bool {
        self.opts.contains_key(&175)
            || self
                .opts
                .get(&77)
                .is_some_and(|v| v.windows(4).any(|w| w == b"iPXE"))
    }

    /// Option 43's PXE sub-options, as `(code, value)`.
    fn pxe_suboptions(&self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let Some(v) = self.opts.get(&43) else {
            return out;
        };
        let mut i = 0;
        while i + 1 < v.len() && v[i] != 255 {
            if v[i] == 0 {
                i += 1;
                continue;
            }
            let len = v[i + 1] as usize;
            out.push((v[i], v[i + 2..(i + 2 + len).min(v.len())].to_vec()));
            i += 2 + len;
        }
        out
    }
}

/// What the firmware of one boot stage was told, in one run.
#[derive(Debug, Clone, Default)]
struct StageView {
    /// The client's option 97 (UUID), if it sent one.
    client_uuid: Option<Vec<u8>>,
    /// The reply that named the boot file (the last one of the stage).
    boot: Option<DhcpMsg>,
    /// Server addresses of every reply of the stage.
    servers: Vec<Ipv4Addr>,
}

/// The DHCP of a run by stage: `firmware` (the UEFI PXE client) and `ipxe`.
fn stages(caps: &[Datagram]) -> std::collections::BTreeMap<&'static str, StageView> {
    let mut by_xid: std::collections::HashMap<u32, &'static str> = Default::default();
    let mut out: std::collections::BTreeMap<&'static str, StageView> = Default::default();
    for d in caps {
        let Some(m) = parse_dhcp(&d.payload) else {
            continue;
        };
        if m.op == 1 {
            let stage = if m.is_ipxe() { "ipxe" } else { "firmware" };
            by_xid.insert(m.xid, stage);
            let v = out.entry(stage).or_default();
            if let Some(u) = m.opts.get(&97) {
                v.client_uuid = Some(u.clone());
            }
        } else if let Some(&stage) = by_xid.get(&m.xid) {
            let v = out.entry(stage).or_default();
            if !v.servers.contains(d.src.ip()) {
                v.servers.push(*d.src.ip());
            }
            if m.boot_file().is_some() {
                v.boot = Some(m);
            }
        }
    }
    out
}

/// One TFTP read in a capture: what the client asked, what the server said.
#[derive(Debug, Clone)]
struct Transfer {
    server: Ipv4Addr,
    file: String,
    asked: Vec<(String, String)>,
    /// The OACK's options; `None`: no OACK (plain RFC 1350 transfer or error).
    oack: Option<Vec<(String, String)>>,
    /// The file's bytes, reassembled from the DATA blocks.
    data: Vec<u8>,
    /// The last DATA block was short: the transfer completed.
    complete: bool,
    /// An ERROR: who sent it, its code.
    error: Option<(&'static str, u16)>,
}

fn tftp_strings(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn pairs(v: &[String]) -> Vec<(String, String)> {
    v.chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty())
        .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
        .collect()
}

/// The TFTP reads of a run, in request order: an RRQ to port 69 opens one, the
/// datagrams between the server and the client's port belong to it.
fn transfers(caps: &[Datagram]) -> Vec<Transfer> {
    let mut out: Vec<Transfer> = Vec::new();
    // Client address -> index of its open transfer.
    let mut open: std::collections::HashMap<SocketAddrV4, usize> = Default::default();
    let mut blksize: Vec<usize> = Vec::new();
    for d in caps {
        let p = &d.payload;
        if p.len() < 4 {
            continue;
        }
        let op = u16::from_be_bytes([p[0], p[1]]);
        if d.dst.port() == 69 && op == 1 {
            let s = tftp_strings(&p[2..]);
            out.push(Transfer {
                server: *d.dst.ip(),
                file: s[0].trim_start_matches('/').to_string(),
                asked: pairs(s.get(2..).unwrap_or(&[])),
                oack: None,
                data: Vec::new(),
                complete: false,
                error: None,
            });
            blksize.push(512);
            open.insert(d.src, out.len() - 1);
            continue;
        }
        let (client, from_server) = match (open.get(&d.dst), open.get(&d.src)) {
            (Some(_), _) => (d.dst, true),
            (None, Some(_)) => (d.src, false),
            _ => continue,
        };
        let i = open[&client];
        let t = &mut out[i];
        if from_server && *d.src.ip() != t.server {
            continue;
        }
        match (op, from_server) {
            (6, true) => {
                let o = pairs(&tftp_strings(&p[2..]));
                if let Some((_, v)) = o.iter().find(|(k, _)| k == "blksize") {
                    blksize[i] = v.parse().unwrap_or(512);
                }
                t.oack = Some(o);
            }
            (3, true) => {
                let block = u16::from_be_bytes([p[2], p[3]]) as usize;
                let chunk = &p[4..];
                let at = (block - 1) * blksize[i];
                // Retransmissions rewrite the same range.
                if t.data.len() < at + chunk.len() {
                    t.data.resize(at + chunk.len(), 0);
                }
                t.data[at..at + chunk.len()].copy_from_slice(chunk);
                if chunk.len() < blksize[i] {
                    t.complete = true;
                }
            }
            (5, _) => {
                let code = u16::from_be_bytes([p[2], p[3]]);
                t.error = Some((if from_server { "server" } else { "client" }, code));
            }
            _ => {}
        }
    }
    out
}

/// Boots `fw` once through `via` with the bridge captured (dumpcap in the bridge's
/// namespace); returns the capture's datagrams and the time from power-on to the marker.
fn captured_boot(fw: Firmware, via: Via, keep: &Path) -> (Vec<Datagram>, Duration) {
    let (accel, _) = accelerator();
    let mut lab = lab(fw);
    if via == Via::Dnsmasq {
        switch_to_dnsmasq(&mut lab, fw);
    }
    let pcap = keep.join(format!("{}-{}.pcapng", fw.tag(), via.tag()));
    // On the machine's bridge port: the bridge device itself sees only what is flooded
    // to it, not the unicast it forwards between ports once it learned the MACs.
    let mut cap_cmd = lab.seg.lan().command("dumpcap");
    cap_cmd.args(["-i", "tap0", "-f", "udp", "-w"]).arg(&pcap);
    let mut cap = Proc::spawn("dumpcap", &mut cap_cmd);
    let started = cap.wait_for(Instant::now() + Duration::from_secs(20), |o, e| {
        o.contains("Capturing on") || e.contains("Capturing on")
    });
    assert!(started.is_some(), "dumpcap did not start");
    let mut cmd = qemu_command(fw, &lab, accel);
    // A system UUID, so the option 97 the firmware sends is not all zeros.
    cmd.args(["-uuid", "0b1e5a4c-18d1-4e7a-9c3f-5e2d7a6b8c01"]);
    let marker = format!(
        "BATON-MARKER-n1-{}-FILES-FETCHED",
        fw.mac().replace(':', "")
    );
    let power_on = Instant::now();
    lab.qemu = Some(Proc::spawn("qemu", &mut cmd));
    let qemu = lab.qemu.as_mut().unwrap();
    let seen = qemu.wait_for(power_on + boot_timeout(), |out, _| {
        out.contains(&marker) || out.contains("BATON-FAILED")
    });
    let serial = plain(&qemu.stdout());
    assert!(
        seen.is_some() && !serial.contains("BATON-FAILED"),
        "{via:?}: no marker {marker:?} within {:?}; serial console (last 4000 chars):\n{}",
        boot_timeout(),
        &serial[serial.len().saturating_sub(4000)..]
    );
    let took = seen.unwrap() - power_on;
    qemu.kill();
    // libpcap hands packets over in blocks, on a timeout when traffic stops; a SIGINT
    // before that drops the last block.
    std::thread::sleep(Duration::from_secs(2));
    // SIGINT: dumpcap writes out what it was handed and exits.
    assert!(common::child::signal(cap.pid(), libc::SIGINT));
    cap.wait_for(Instant::now() + Duration::from_secs(10), |_, _| false);
    assert!(cap.try_wait().is_some(), "dumpcap did not stop on SIGINT");
    (read_capture(&pcap), took)
}

/// One row of the comparison: field, dnsmasq's value, Baton's, and the verdict.
struct Row {
    field: String,
    dnsmasq: String,
    baton: String,
    /// `Ok(why it is fine)` or `Err(why it matters)`; equal values are `Ok("")`.
    verdict: Result<String, String>,
}

fn show(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

fn hexs(v: Option<&Vec<u8>>) -> String {
    v.map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .unwrap_or_else(|| "-".into())
}

/// The DHCP fields firmware acts on, stage by stage.
fn compare_dhcp(
    d: &std::collections::BTreeMap<&'static str, StageView>,
    b: &std::collections::BTreeMap<&'static str, StageView>,
    rows: &mut Vec<Row>,
) {
    for stage in ["firmware", "ipxe"] {
        let (Some(dv), Some(bv)) = (d.get(stage), b.get(stage)) else {
            rows.push(Row {
                field: format!("{stage}: DHCP"),
                dnsmasq: format!("{}", d.contains_key(stage)),
                baton: format!("{}", b.contains_key(stage)),
                verdict: Err("a boot stage asked for DHCP in one run only".into()),
            });
            continue;
        };
        let (Some(dm), Some(bm)) = (&dv.boot, &bv.boot) else {
            rows.push(Row {
                field: format!("{stage}: reply naming a boot file"),
                dnsmasq: format!("{}", dv.boot.is_some()),
                baton: format!("{}", bv.boot.is_some()),
                verdict: Err("the firmware got no boot file".into()),
            });
            continue;
        };
        let proxy = |m: &DhcpMsg| m.yiaddr.is_unspecified();
        let f = |n: &str| format!("{stage}: {n}");
        let same = |a: &str, b: &str, why_fine: &str, why_matters: Option<&str>| {
            if a == b {
                Ok(String::new())
            } else {
                match why_matters {
                    Some(w) => Err(w.to_string()),
                    None => Ok(why_fine.to_string()),
                }
            }
        };
        let (db, bb) = (show(&dm.boot_file()), show(&bm.boot_file()));
        rows.push(Row {
            verdict: same(&db, &bb, "", Some("the firmware boots another file")),
            field: f("boot file (opt 67, else file)"),
            dnsmasq: db,
            baton: bb,
        });
        rows.push(Row {
            field: f("file field"),
            verdict: same(
                &dm.file,
                &bm.file,
                "option 67 carries the name firmware uses",
                None,
            ),
            dnsmasq: dm.file.clone(),
            baton: bm.file.clone(),
        });
        rows.push(Row {
            field: f("reply kind (yiaddr)"),
            dnsmasq: if proxy(dm) { "proxy offer".into() } else { format!("lease {}", dm.yiaddr) },
            baton: if proxy(bm) { "proxy offer".into() } else { format!("lease {}", bm.yiaddr) },
            verdict: if proxy(dm) == proxy(bm) {
                Ok(String::new())
            } else {
                Ok("Baton answers beside the address server (proxy-DHCP, PXE spec 2.2.5); the firmware merges the two offers".into())
            },
        });
        // The next server must be the one that served TFTP: checked against the
        // transfers in `compare_tftp`; here its value is shown.
        let (dn, bn) = (show(&dm.next_server()), show(&bm.next_server()));
        rows.push(Row {
            verdict: same(
                &dn,
                &bn,
                "each names its own host (checked: the RRQs went there)",
                None,
            ),
            field: f("next server (opt 66, else siaddr)"),
            dnsmasq: dn,
            baton: bn,
        });
        rows.push(Row {
            field: f("siaddr"),
            dnsmasq: dm.siaddr.to_string(),
            baton: bm.siaddr.to_string(),
            verdict: if bm.siaddr.is_unspecified() && bm.text(66).is_none() {
                Err("no TFTP server named".into())
            } else {
                same(
                    &dm.siaddr.to_string(),
                    &bm.siaddr.to_string(),
                    "each names its own host",
                    None,
                )
            },
        });
        rows.push(Row {
            field: f("sname"),
            verdict: same(
                &dm.sname,
                &bm.sname,
                "informational; firmware uses siaddr or option 66",
                None,
            ),
            dnsmasq: dm.sname.clone(),
            baton: bm.sname.clone(),
        });
        let (d60, b60) = (show(&dm.text(60)), show(&bm.text(60)));
        rows.push(Row {
            verdict: if proxy(bm) && !b60.starts_with("PXEClient") {
                Err("a proxy offer without option 60 PXEClient is ignored by PXE firmware".into())
            } else if d60.starts_with("PXEClient") && !b60.starts_with("PXEClient") {
                Err("dnsmasq marks the reply PXEClient and Baton does not".into())
            } else {
                same(
                    &d60,
                    &b60,
                    "PXE spec: a proxy offer carries option 60 PXEClient",
                    None,
                )
            },
            field: f("option 60 (vendor class)"),
            dnsmasq: d60,
            baton: b60,
        });
        let control = |m: &DhcpMsg| {
            m.pxe_suboptions()
                .into_iter()
                .find(|(c, _)| *c == 6)
                .and_then(|(_, v)| v.first().copied())
        };
        let (d43, b43) = (hexs(dm.opts.get(&43)), hexs(bm.opts.get(&43)));
        rows.push(Row {
            verdict: if d43 == b43 {
                Ok(String::new())
            } else if bm.opts.contains_key(&43) && control(bm).is_none_or(|c| c & 0x08 == 0) {
                Err("option 43 without discovery control bit 3: the firmware would run boot server discovery (port 4011)".into())
            } else {
                Ok("Baton's option 43 is discovery control 0x08: boot the named file, no boot server discovery (PXE spec 2.4.1)".into())
            },
            field: f("option 43 (PXE vendor options)"),
            dnsmasq: d43,
            baton: b43,
        });
        let client = hexs(dv.client_uuid.as_ref().or(bv.client_uuid.as_ref()));
        let (d97, b97) = (hexs(dm.opts.get(&97)), hexs(bm.opts.get(&97)));
        rows.push(Row {
            verdict: if b97 != "-" && b97 != client {
                Err("option 97 is not the client's UUID".into())
            } else if d97 != "-" && b97 == "-" {
                Err("dnsmasq echoes the client's option 97 and Baton does not".into())
            } else if proxy(bm) && client != "-" && b97 == "-" {
                Err("PXE spec: a proxy offer echoes the client's option 97".into())
            } else {
                same(
                    &d97,
                    &b97,
                    "PXE spec 2.2.5: the proxy offer echoes the client's UUID; a plain DHCP reply need not",
                    None,
                )
            },
            field: format!("{stage}: option 97 (client {client})"),
            dnsmasq: d97,
            baton: b97,
        });
    }
}

/// The TFTP reads of both runs, file by file in request order.
fn compare_tftp(
    d: &[Transfer],
    b: &[Transfer],
    next: [&std::collections::BTreeMap<&'static str, StageView>; 2],
    rows: &mut Vec<Row>,
) {
    let order = |t: &[Transfer]| {
        let mut v: Vec<String> = t.iter().map(|x| x.file.clone()).collect();
        v.dedup();
        v.join(", ")
    };
    let (od, ob) = (order(d), order(b));
    rows.push(Row {
        verdict: if od == ob {
            Ok(String::new())
        } else {
            Err("the firmware fetched other files or in another order".into())
        },
        field: "TFTP: files, in request order".into(),
        dnsmasq: od,
        baton: ob,
    });
    // Every read went to the server the DHCP named (for its stage).
    for (run, (ts, st)) in ["dnsmasq", "Baton"]
        .iter()
        .zip([(d, next[0]), (b, next[1])])
    {
        let named: Vec<String> = st
            .values()
            .filter_map(|v| v.boot.as_ref()?.next_server())
            .collect();
        for t in ts {
            if !named.contains(&t.server.to_string()) {
                rows.push(Row {
                    field: format!("TFTP {}: server", t.file),
                    dnsmasq: if *run == "dnsmasq" {
                        t.server.to_string()
                    } else {
                        String::new()
                    },
                    baton: if *run == "Baton" {
                        t.server.to_string()
                    } else {
                        String::new()
                    },
                    verdict: Err(format!(
                        "{run}: read sent to a server no DHCP reply named ({named:?})"
                    )),
                });
            }
        }
    }
    // Pair the reads of each file in order (a tsize probe, then the download).
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for td in d {
        let n = seen.entry(td.file.clone()).or_default();
        let k = *n;
        *n += 1;
        let Some(tb) = b.iter().filter(|t| t.file == td.file).nth(k) else {
            continue;
        };
        let f = |what: &str| format!("TFTP {} #{}: {what}", td.file, k + 1);
        let kv = |v: &[(String, String)]| {
            v.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (ad, ab) = (kv(&td.asked), kv(&tb.asked));
        rows.push(Row {
            verdict: if ad == ab {
                Ok(String::new())
            } else {
                Ok("the client asked differently (its choice, not the server's)".into())
            },
            field: f("options asked"),
            dnsmasq: ad,
            baton: ab,
        });
        let oack = |t: &Transfer| {
            t.oack
                .as_deref()
                .map(kv)
                .unwrap_or_else(|| "no OACK".into())
        };
        let (od, ob) = (oack(td), oack(tb));
        // RFC 2347/2348/2349/7440: only options asked, blksize and windowsize no
        // larger than asked, tsize the file's size.
        let valid = |t: &Transfer| -> Result<(), String> {
            for (k, v) in t.oack.iter().flatten() {
                let asked = t
                    .asked
                    .iter()
                    .find(|(a, _)| a == k)
                    .map(|(_, v)| v.as_str());
                let Some(asked) = asked else {
                    return Err(format!("OACK has {k}, which the client did not ask"));
                };
                match k.as_str() {
                    "blksize" | "windowsize" => {
                        let (v, a): (u64, u64) =
                            (v.parse().unwrap_or(u64::MAX), asked.parse().unwrap_or(0));
                        if v > a {
                            return Err(format!("{k}={v} larger than asked ({a})"));
                        }
                    }
                    "tsize" if t.complete && v.parse::<usize>().ok() != Some(t.data.len()) => {
                        return Err(format!("tsize={v} but {} bytes were sent", t.data.len()));
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        rows.push(Row {
            verdict: match (valid(td), valid(tb)) {
                (_, Err(e)) => Err(format!("Baton: {e}")),
                _ if od == ob => Ok(String::new()),
                (Err(e), Ok(())) => Ok(format!(
                    "dnsmasq's own answer is off ({e}); Baton's is valid"
                )),
                (Ok(()), Ok(())) => {
                    Ok("both valid (RFC 2347-2349, 7440); Baton also accepts windowsize".into())
                }
            },
            field: f("options accepted (OACK)"),
            dnsmasq: od,
            baton: ob,
        });
        let end = |t: &Transfer| match (t.complete, t.error) {
            (true, _) => format!(
                "{} bytes, sha256 {}",
                t.data.len(),
                &baton::blobs::Digest::of(&t.data).to_hex()[..16]
            ),
            (false, Some((who, code))) => format!("ended by {who} error {code}"),
            (false, None) => "incomplete".into(),
        };
        let (ed, eb) = (end(td), end(tb));
        rows.push(Row {
            verdict: if ed == eb {
                Ok(String::new())
            } else if !tb.complete && tb.error.is_some_and(|(w, _)| w == "client") && !td.complete {
                Ok("the client ends a size probe after the OACK; the error code differs".into())
            } else {
                Err("the firmware got other bytes, or the transfer did not end the same way".into())
            },
            field: f("outcome"),
            dnsmasq: ed,
            baton: eb,
        });
    }
}

/// The side-by-side capture of the README's migration guide: one UEFI PXE boot (OVMF,
/// `ipxe.efi`, the node's iPXE script, kernel, ramdisk) through dnsmasq alone, as
/// Ironic's guide runs it, and the same boot through dnsmasq (addresses) + Baton
/// (proxy-DHCP, TFTP), each captured on the bridge. The DHCP fields firmware acts on
/// (options 43, 60, 66, 67, 97, siaddr, file) and the TFTP option negotiation and bytes
/// are compared; every difference is printed with why it is fine, and the test fails on
/// one that matters. `BATON_E2E_KEEP=DIR` keeps the captures and the table.
#[test]
fn capture_diff_dnsmasq_vs_baton() {
    let _one = ONE_BOOT.lock().unwrap_or_else(|p| p.into_inner());
    let fw = Firmware::UefiEdk2;
    if !require(prerequisites(fw))
        || !require(tool("dumpcap", "wireshark-common"))
        || !require(tool("tshark", "tshark"))
    {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let keep = std::env::var_os("BATON_E2E_KEEP")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&keep).unwrap();
    let mut runs = Vec::new();
    for via in [Via::Dnsmasq, Via::Baton] {
        let (caps, took) = captured_boot(fw, via, &keep);
        say(&format!(
            "{via:?}: power-on -> marker {:.1} s; {} IPv4 UDP datagrams captured",
            took.as_secs_f64(),
            caps.len()
        ));
        runs.push((stages(&caps), transfers(&caps)));
    }
    let mut rows = Vec::new();
    compare_dhcp(&runs[0].0, &runs[1].0, &mut rows);
    compare_tftp(&runs[0].1, &runs[1].1, [&runs[0].0, &runs[1].0], &mut rows);
    let mut table = String::from("| field | dnsmasq | Baton | verdict |\n|---|---|---|---|\n");
    for r in &rows {
        let verdict = match &r.verdict {
            Ok(w) if w.is_empty() => "same".to_string(),
            Ok(w) => format!("differs, fine: {w}"),
            Err(w) => format!("DIFFERS, MATTERS: {w}"),
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {verdict} |",
            r.field, r.dnsmasq, r.baton
        );
    }
    std::fs::write(keep.join("capture-diff.md"), &table).unwrap();
    say(&format!("\ncapture diff, {}:\n{table}", fw.describe()));
    let bad: Vec<&Row> = rows.iter().filter(|r| r.verdict.is_err()).collect();
    assert!(
        rows.len() >= 20,
        "too little compared ({} rows): the captures lack a stage or the transfers",
        rows.len()
    );
    assert!(
        bad.is_empty(),
        "{} difference(s) that matter to firmware:\n{}",
        bad.len(),
        bad.iter()
            .map(|r| format!(
                "  {}: dnsmasq {:?}, Baton {:?}: {}",
                r.field,
                r.dnsmasq,
                r.baton,
                r.verdict.as_ref().unwrap_err()
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
