//! The translation of realistic dnsmasq configurations (tests/fixtures/dnsmasq), modelled
//! on those the Ironic, Bifrost and netboot.xyz documentation show.

use super::*;
use crate::config::Config;

fn fixture(name: &str) -> Translation {
    let path = format!(
        "{}/tests/fixtures/dnsmasq/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    translate(&[(name.to_string(), text)])
}

/// Line numbers of untranslated lines, with a word each reason must contain.
fn lines(t: &Translation) -> Vec<usize> {
    let mut l: Vec<usize> = t.untranslated.iter().map(|u| u.at.line).collect();
    l.sort();
    l.dedup();
    l
}

fn why(t: &Translation, line: usize) -> String {
    t.untranslated
        .iter()
        .filter(|u| u.at.line == line)
        .map(|u| u.why.clone())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The printed configuration is valid Baton configuration with these values.
fn config(t: &Translation) -> Config {
    let text = t.config_toml();
    let c: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    c.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
    c
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

#[test]
fn ironic_standalone() {
    let t = fixture("ironic-standalone.conf");
    assert_eq!(
        t.nodes
            .iter()
            .map(|n| (n.id.as_str(), n.macs.clone(), n.at.line))
            .collect::<Vec<_>>(),
        vec![
            ("node-0", vec![mac("52:54:00:6a:1d:01")], 22),
            ("node-1", vec![mac("52:54:00:6a:1d:02")], 23),
        ]
    );
    assert_eq!(t.boot_files.efi_x64.as_deref(), Some("ipxe.efi"));
    assert_eq!(t.boot_files.bios.as_deref(), Some("undionly.kpxe"));
    assert_eq!(lines(&t), vec![5, 6, 7, 8, 9, 19, 22, 23, 24]);
    assert!(why(&t, 6).contains("hands out no addresses"));
    assert!(why(&t, 19).contains("iPXE"));
    assert!(why(&t, 22).contains("enrolled"));
    assert!(why(&t, 24).contains("pass them"));
    let c = config(&t);
    assert_eq!(
        c.tftp.root.as_deref(),
        Some(std::path::Path::new("/tftpboot"))
    );
    assert!(c.dhcp.enabled);
    assert_eq!(c.dhcp.interfaces, vec!["eth1".to_string()]);
    assert_eq!(c.dhcp.boot_files.efi_x64, "ipxe.efi");
    assert_eq!(c.dhcp.boot_files.bios, "undionly.kpxe");
}

#[test]
fn bifrost() {
    let t = fixture("bifrost.conf");
    let ids: Vec<(&str, usize)> = t
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.macs.len()))
        .collect();
    assert_eq!(ids, vec![("testvm1", 1), ("testvm2", 1), ("testvm3", 2)]);
    // Their fixed addresses are their own addresses in Baton.
    let addrs: Vec<String> = t
        .nodes
        .iter()
        .map(|n| n.addresses.iter().map(|a| a.to_string()).collect())
        .collect();
    assert_eq!(addrs, vec!["10.0.1.11", "10.0.1.12", "10.0.1.13"]);
    assert_eq!(t.boot_files.efi_x64.as_deref(), Some("ipxe.efi"));
    assert_eq!(t.boot_files.efi_arm64.as_deref(), Some("snponly-arm64.efi"));
    assert_eq!(t.boot_files.bios.as_deref(), Some("undionly.kpxe"));
    // Fixed addresses noted on each host line; the range, router option, iPXE line and
    // the server address of the last dhcp-boot are listed.
    assert_eq!(lines(&t), vec![5, 6, 7, 8, 9, 17, 20]);
    assert!(why(&t, 7).contains("proxy-DHCP") && why(&t, 7).contains("own addresses"));
    assert!(why(&t, 17).contains("iPXE"));
    assert!(why(&t, 20).contains("Baton names itself"));
    let c = config(&t);
    assert_eq!(
        c.dhcp.boot_files.efi_arm64.as_deref(),
        Some("snponly-arm64.efi")
    );
}

#[test]
fn netbootxyz_proxy() {
    let t = fixture("netbootxyz-proxy.conf");
    assert!(t.nodes.is_empty());
    assert!(t.dhcp, "a proxy range turns Baton's proxy-DHCP on");
    assert_eq!(t.boot_files.bios.as_deref(), Some("netboot.xyz.kpxe"));
    assert_eq!(t.boot_files.efi_x64.as_deref(), Some("netboot.xyz.efi"));
    assert_eq!(t.boot_files.efi_ia32.as_deref(), Some("netboot.xyz.efi"));
    assert_eq!(
        t.boot_files.efi_arm64.as_deref(),
        Some("netboot.xyz-arm64.efi")
    );
    // Only the logging line has no equivalent.
    assert_eq!(lines(&t), vec![5]);
    let c = config(&t);
    assert_eq!(
        c.tftp.root.as_deref(),
        Some(std::path::Path::new("/var/lib/tftpboot"))
    );
    assert_eq!(c.dhcp.boot_files.bios, "netboot.xyz.kpxe");
}

#[test]
fn tftp_settings_and_menus() {
    let t = fixture("tftpd-era-proxy.conf");
    assert!(t.dhcp);
    assert_eq!(t.interfaces, vec!["ens3".to_string(), "ens4".to_string()]);
    // The PXE layer suffix is added to a bare basename, not to a file name.
    assert_eq!(t.boot_files.bios.as_deref(), Some("pxelinux.0"));
    assert_eq!(t.boot_files.efi_x64.as_deref(), Some("grubx64.efi"));
    assert_eq!(
        (t.tftp_max, t.tftp_blksize, t.tftp_mtu, t.tftp_single_port),
        (Some(200), Some(512), Some(1400), true)
    );
    assert_eq!(lines(&t), vec![5, 7, 8, 15, 16]);
    assert!(why(&t, 5).contains("menu"));
    assert!(why(&t, 7).contains("local-boot"));
    let c = config(&t);
    assert_eq!(c.tftp.max_transfers, 200);
    assert_eq!(c.tftp.max_blksize, 512);
    assert_eq!(c.tftp.mtu, Some(1400));
    assert!(c.tftp.single_port);
    assert_eq!(c.dhcp.interfaces.len(), 2);
}

#[test]
fn edge_cases() {
    let t = fixture("edge-cases.conf");
    // Only the quoted, uppercase host is a node (its client id is noted).
    assert_eq!(t.nodes.len(), 1);
    assert_eq!(t.nodes[0].id, "quoted-name");
    assert_eq!(t.nodes[0].macs, vec![mac("52:54:00:aa:bb:dd")]);
    assert_eq!(t.boot_files.bios.as_deref(), Some("pxelinux.0"));
    for (line, word) in [
        (2, "pass them"),
        (3, "wildcards"),
        (4, "ignored host"),
        (5, "no MAC"),
        (6, "client-id"),
        (7, "other than the client architecture"),
        (8, "not a client architecture"),
        (9, "gPXE"),
        (10, "tag-if"),
        (11, "only enrolled nodes"),
        (13, "not a boot-server setting"),
    ] {
        assert!(
            why(&t, line).contains(word),
            "line {line}: {}",
            why(&t, line)
        );
    }
    assert_eq!(lines(&t), vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]);
    config(&t);
}

#[test]
fn several_files_read_in_order() {
    let a = (
        "a.conf".to_string(),
        "dhcp-match=set:efi,option:client-arch,7\n".to_string(),
    );
    let b = (
        "b.conf".to_string(),
        "dhcp-boot=tag:efi,shim.efi\nbogus-option\n".to_string(),
    );
    let t = translate(&[a, b]);
    assert_eq!(t.boot_files.efi_x64.as_deref(), Some("shim.efi"));
    assert_eq!(t.untranslated.len(), 1);
    assert_eq!(
        t.untranslated[0].at,
        Origin {
            file: "b.conf".into(),
            line: 2
        }
    );
}
