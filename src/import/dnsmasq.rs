//! `baton import dnsmasq`: reads dnsmasq configuration (the PXE and TFTP parts a boot
//! server cares about) into a typed [`Translation`]: nodes, boot-file settings, TFTP
//! settings, and every line that has no Baton equivalent with its line number and why.
//! Pure: text in, translation out; the CLI prints the config and enrolls the nodes.
//!
//! Read as dnsmasq reads it: `key=value` or `key` per line (`--key=value` too, as on
//! dnsmasq's command line), `#` at the start of a line or after white space starts a
//! comment, values may be double-quoted. Tags: `dhcp-match`, `dhcp-vendorclass` and
//! `dhcp-userclass` set tags for client architectures (option 93 or the `PXEClient:Arch:`
//! vendor class) and for iPXE (option 175 or user class `iPXE`); `dhcp-boot` and
//! `pxe-service` lines are then read per architecture: the first tagged `dhcp-boot` line
//! that matches wins, untagged ones count only when no tagged one matches (the order the
//! configurations in Ironic's and netboot.xyz's documentation rely on).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::store::MacAddr;
use crate::wire::dhcp::{classify_arch, ArchClass};

/// Where a line came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// File name as given.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
}

/// A line with no Baton equivalent, or only part of one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Untranslated {
    /// Where.
    #[serde(flatten)]
    pub at: Origin,
    /// The line, trimmed.
    pub text: String,
    /// Why, and what to do instead.
    pub why: String,
}

/// A node from a `dhcp-host` line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeSpec {
    /// Node id: the host name, else `mac-<hex>` of its first MAC.
    pub id: String,
    /// Its MACs.
    pub macs: Vec<MacAddr>,
    /// Its fixed addresses: dnsmasq leases them, and they become the node's own
    /// addresses in Baton (with `node_files = "bound"` its files go to them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Where.
    #[serde(flatten)]
    pub at: Origin,
}

/// First-stage loaders per architecture (`[dhcp.boot_files]`), as far as the files say.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootFilesDraft {
    /// x86 BIOS.
    pub bios: Option<String>,
    /// x86-64 UEFI.
    pub efi_x64: Option<String>,
    /// x86 32-bit UEFI.
    pub efi_ia32: Option<String>,
    /// ARM64 UEFI.
    pub efi_arm64: Option<String>,
    /// ARM32 UEFI.
    pub efi_arm32: Option<String>,
    /// RISC-V 64 UEFI.
    pub efi_riscv64: Option<String>,
}

impl BootFilesDraft {
    fn rows(&self) -> [(&'static str, &Option<String>); 6] {
        [
            ("bios", &self.bios),
            ("efi_x64", &self.efi_x64),
            ("efi_ia32", &self.efi_ia32),
            ("efi_arm64", &self.efi_arm64),
            ("efi_arm32", &self.efi_arm32),
            ("efi_riscv64", &self.efi_riscv64),
        ]
    }
}

/// Everything read from the files.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Translation {
    /// Nodes to enroll.
    pub nodes: Vec<NodeSpec>,
    /// `[dhcp.boot_files]`.
    pub boot_files: BootFilesDraft,
    /// `[dhcp] enabled`: a proxy `dhcp-range` (or a `pxe-service`/`dhcp-boot`) was seen.
    pub dhcp: bool,
    /// `[dhcp] interfaces`.
    pub interfaces: Vec<String>,
    /// The TFTP server was enabled (`enable-tftp`).
    pub tftp: bool,
    /// `[tftp] root`.
    pub tftp_root: Option<String>,
    /// `[tftp] max_transfers`.
    pub tftp_max: Option<usize>,
    /// `[tftp] max_blksize`.
    pub tftp_blksize: Option<u16>,
    /// `[tftp] mtu`.
    pub tftp_mtu: Option<u32>,
    /// `[tftp] single_port`.
    pub tftp_single_port: bool,
    /// Lines with no (or only a partial) equivalent.
    pub untranslated: Vec<Untranslated>,
}

/// What a tag stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TagMeaning {
    Arch(Vec<u16>),
    Ipxe,
    /// Set by `dhcp-host` lines (per-host boot choices) or anything else.
    Other,
}

/// A `dhcp-boot` or `pxe-service` choice, kept until all tags are known.
struct BootLine {
    at: Origin,
    text: String,
    tags: Vec<(String, bool)>,
    /// Architecture given by the line itself (pxe-service CSA).
    csa: Option<ArchClass>,
    file: String,
}

/// Reads `files` (name, content) in order, as dnsmasq reads its configuration.
pub fn translate(files: &[(String, String)]) -> Translation {
    let mut t = Translation::default();
    let mut tags: BTreeMap<String, TagMeaning> = BTreeMap::new();
    let mut boots: Vec<BootLine> = Vec::new();
    let mut services: Vec<BootLine> = Vec::new();
    for (file, text) in files {
        for (i, raw) in text.lines().enumerate() {
            let at = Origin {
                file: file.clone(),
                line: i + 1,
            };
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let line = line.strip_prefix("--").unwrap_or(line);
            let (key, value) = match line.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => (line, ""),
            };
            let mut no = |why: &str| {
                t.untranslated.push(Untranslated {
                    at: at.clone(),
                    text: line.to_string(),
                    why: why.to_string(),
                })
            };
            let args = split_args(value);
            match key {
                "dhcp-host" => dhcp_host(&args, &at, line, &mut t, &mut tags),
                "dhcp-boot" => {
                    let (tg, rest) = take_tags(&args);
                    match rest.first() {
                        Some(f) if !f.is_empty() => {
                            if rest.len() > 1 && rest[1..].iter().any(|a| !a.is_empty()) {
                                no("the TFTP server name/address of dhcp-boot is not needed: Baton names itself (translated without it)");
                            }
                            boots.push(BootLine {
                                at: at.clone(),
                                text: line.to_string(),
                                tags: tg,
                                csa: None,
                                file: f.to_string(),
                            });
                        }
                        _ => no("dhcp-boot without a file name"),
                    }
                }
                "pxe-service" => {
                    let (tg, rest) = take_tags(&args);
                    let csa = rest.first().and_then(|c| csa_arch(c));
                    match (csa, rest.get(2)) {
                        (None, _) => no("pxe-service for a client system type Baton does not serve (or unknown)"),
                        (Some(_), None) => no("pxe-service without a boot file (a local-boot menu entry): Baton offers no menu; a node Baton gives no files boots from its next device"),
                        (Some(_), Some(b)) if b == "0" => no("pxe-service of boot server type 0 (a local-boot menu entry): Baton offers no menu; a node Baton gives no files boots from its next device"),
                        (Some(_), Some(b)) if b.parse::<u16>().is_ok() => {
                            no("pxe-service with a boot server type (PXE boot server discovery): not supported")
                        }
                        (Some(a), Some(b)) => {
                            // dnsmasq: the PXE layer suffix `.0` is added unless the
                            // basename has a suffix already.
                            let file = if b.contains('.') {
                                b.to_string()
                            } else {
                                format!("{b}.0")
                            };
                            if rest.len() > 3 {
                                no("the boot server address of pxe-service is not needed: Baton names itself (translated without it)");
                            }
                            services.push(BootLine {
                                at: at.clone(),
                                text: line.to_string(),
                                tags: tg,
                                csa: Some(a),
                                file,
                            });
                        }
                    }
                }
                "dhcp-match" => {
                    // set:TAG,option,value
                    let (set, rest) = take_set(&args);
                    match (set, meaning_of_match(&rest)) {
                        (Some(tag), Some(m)) => merge_tag(&mut tags, tag, m),
                        (Some(tag), None) => {
                            tags.entry(tag).or_insert(TagMeaning::Other);
                            no("dhcp-match on something other than the client architecture or iPXE: Baton cannot choose boot files by it")
                        }
                        (None, _) => no("dhcp-match without set:TAG"),
                    }
                }
                "dhcp-vendorclass" => {
                    let (set, rest) = take_set(&args);
                    let arch = rest.first().and_then(|v| vendor_arch(v));
                    match (set, arch) {
                        (Some(tag), Some(a)) => merge_tag(&mut tags, tag, TagMeaning::Arch(vec![a])),
                        (Some(tag), None) => {
                            tags.entry(tag).or_insert(TagMeaning::Other);
                            no("dhcp-vendorclass other than PXEClient:Arch:NNNNN: Baton cannot choose boot files by it")
                        }
                        (None, _) => no("dhcp-vendorclass without set:TAG"),
                    }
                }
                "dhcp-userclass" => {
                    let (set, rest) = take_set(&args);
                    match (set, rest.first()) {
                        (Some(tag), Some(v)) if v.eq_ignore_ascii_case("ipxe") => {
                            merge_tag(&mut tags, tag, TagMeaning::Ipxe)
                        }
                        (Some(tag), _) => {
                            tags.entry(tag).or_insert(TagMeaning::Other);
                            no("dhcp-userclass other than iPXE (e.g. gPXE): Baton cannot choose boot files by it")
                        }
                        (None, _) => no("dhcp-userclass without set:TAG"),
                    }
                }
                "dhcp-range" => {
                    let (_, rest) = take_tags(&args);
                    if rest.iter().any(|a| a.eq_ignore_ascii_case("proxy")) {
                        t.dhcp = true;
                    } else {
                        no("an address range: Baton is a proxy-DHCP server and hands out no addresses; keep a DHCP server for leases (dnsmasq with `dhcp-range` and without PXE options, or your site's)")
                    }
                }
                "interface" => {
                    for i in &args {
                        if i.contains('*') {
                            no("interface wildcards: list each interface");
                        } else if !i.is_empty() && !t.interfaces.contains(i) {
                            t.interfaces.push(i.clone());
                        }
                    }
                }
                "enable-tftp" => {
                    t.tftp = true;
                    if !value.is_empty() {
                        no("enable-tftp on some interfaces: Baton's TFTP server listens on one address ([tftp] listen); choose it by hand");
                    }
                }
                "tftp-root" => match args.as_slice() {
                    [root] => t.tftp_root = Some(root.clone()),
                    [root, _, ..] => {
                        t.tftp_root = Some(root.clone());
                        no("a TFTP root per interface: Baton serves one root (translated as the root for all)");
                    }
                    [] => no("tftp-root without a directory"),
                },
                "tftp-max" => match value.parse::<usize>() {
                    Ok(n) if n >= 1 => t.tftp_max = Some(n),
                    _ => no("tftp-max needs a positive number"),
                },
                "tftp-blocksize" => match value.parse::<u16>() {
                    Ok(n) if (8..=65464).contains(&n) => t.tftp_blksize = Some(n),
                    _ => no("block size must be 8..65464 (RFC 2348)"),
                },
                "tftp-no-blocksize" => t.tftp_blksize = Some(512),
                "tftp-mtu" => match value.parse::<u32>() {
                    Ok(n) if (68..=65536).contains(&n) => t.tftp_mtu = Some(n),
                    _ => no("tftp-mtu must be 68..65536"),
                },
                "tftp-single-port" => t.tftp_single_port = true,
                "tftp-lowercase" => no("Baton matches MAC addresses in names case-insensitively and keeps other names as sent; a `[tftp] map_file` rule can lowercase more"),
                "tftp-secure" => no("Baton serves what the served directory and the node files hold, to anyone; file ownership is not checked"),
                "tftp-unique-root" => no("per-client roots: Baton serves each node its own files by path instead (node files)"),
                "tftp-port-range" => no("Baton answers from ephemeral ports, or from the listening port with [tftp] single_port"),
                "tftp-no-fail" => no("Baton refuses to start without its TFTP root (it creates a missing one)"),
                "dhcp-ignore" if value.contains("!known") => no("Baton answers only enrolled nodes already (nothing to set)"),
                "dhcp-option" | "dhcp-option-force" => no("DHCP options: a proxy-DHCP answer carries only the PXE boot options; set other options on the DHCP server that leases addresses"),
                "pxe-prompt" => no("Baton offers no PXE menu or prompt: each node boots its own files at once"),
                "conf-file" | "conf-dir" | "dhcp-hostsfile" | "dhcp-hostsdir" | "dhcp-optsfile" => {
                    no("included files are not followed: pass them to baton import dnsmasq as well")
                }
                "tag-if" => no("tag-if: combinations of tags are not translated; write the boot files per architecture by hand"),
                "port" if value == "0" => {} // DNS off: Baton has none either.
                _ => no("not a boot-server setting (DNS, leases, logging, process): nothing for Baton to do"),
            }
        }
    }
    resolve_boot_files(&mut t, &tags, &boots, &services);
    // In file order, then line order (boot lines are judged after all files are read).
    let rank = |f: &str| files.iter().position(|(n, _)| n == f).unwrap_or(usize::MAX);
    t.untranslated
        .sort_by_key(|u| (rank(&u.at.file), u.at.line));
    t
}

fn dhcp_host(
    args: &[String],
    at: &Origin,
    line: &str,
    t: &mut Translation,
    tags: &mut BTreeMap<String, TagMeaning>,
) {
    let mut macs = Vec::new();
    let mut addresses = Vec::new();
    let mut name = None;
    let mut notes = Vec::new();
    for a in args {
        if let Some(tag) = a.strip_prefix("set:").or_else(|| a.strip_prefix("net:")) {
            tags.entry(tag.to_string()).or_insert(TagMeaning::Other);
            notes.push("per-host tags (and what dnsmasq does with them) are not translated");
        } else if a.starts_with("tag:") || a.starts_with("id:") {
            notes.push("client-id and tag conditions are not translated");
        } else if a.eq_ignore_ascii_case("ignore") {
            t.untranslated.push(Untranslated {
                at: at.clone(),
                text: line.to_string(),
                why: "an ignored host: Baton answers only enrolled nodes, so it is not enrolled"
                    .into(),
            });
            return;
        } else if a.contains('*') {
            notes.push("MAC wildcards: Baton matches whole MACs");
        } else if let Some(mac) = a.parse::<MacAddr>().ok().filter(|_| a.len() == 17) {
            macs.push(mac);
        } else if a.parse::<Ipv4Addr>().is_ok() || a.starts_with('[') {
            let ip = a.parse::<Ipv4Addr>().map(IpAddr::V4).ok().or_else(|| {
                let v6 = a.strip_prefix('[')?.strip_suffix(']')?;
                v6.parse::<Ipv6Addr>().map(IpAddr::V6).ok()
            });
            match ip.filter(|ip| crate::store::types::check_node_address(*ip).is_ok()) {
                Some(ip) => {
                    addresses.push(ip);
                    notes.push(
                        "fixed addresses stay with the DHCP server that leases them (Baton is \
                         proxy-DHCP); they become the node's own addresses, which its files go to",
                    );
                }
                None => notes.push(
                    "fixed addresses stay with the DHCP server that leases them (Baton is \
                     proxy-DHCP); this one is no client's address, so it is not kept",
                ),
            }
        } else if a == "infinite"
            || a.trim_end_matches(['s', 'm', 'h', 'd', 'w'])
                .parse::<u64>()
                .is_ok()
        {
            // Lease time: not Baton's.
        } else if crate::store::types::check_name("node id", a).is_ok() && name.is_none() {
            name = Some(a.split('.').next().unwrap_or(a).to_string());
        } else {
            notes.push("a field not understood");
        }
    }
    notes.dedup();
    if macs.is_empty() {
        let also: String = notes.iter().map(|n| format!("; {n}")).collect();
        t.untranslated.push(Untranslated {
            at: at.clone(),
            text: line.to_string(),
            why: format!("no MAC address: Baton knows nodes by MAC, so nothing is enrolled{also}"),
        });
        return;
    }
    for n in notes {
        t.untranslated.push(Untranslated {
            at: at.clone(),
            text: line.to_string(),
            why: format!("{n} (the node is enrolled)"),
        });
    }
    let id = name.unwrap_or_else(|| format!("mac-{}", macs[0].hex()));
    if let Some(n) = t.nodes.iter_mut().find(|n| n.id == id) {
        for m in macs {
            if !n.macs.contains(&m) {
                n.macs.push(m);
            }
        }
        for a in addresses {
            if !n.addresses.contains(&a) {
                n.addresses.push(a);
            }
        }
    } else {
        t.nodes.push(NodeSpec {
            id,
            macs,
            addresses,
            at: at.clone(),
        });
    }
}

/// Places each boot line on the architectures it serves. Order as in dnsmasq: a
/// `pxe-service` menu's first entry for an architecture; then the first `dhcp-boot` line
/// whose tags match; then the first line without tags.
fn resolve_boot_files(
    t: &mut Translation,
    tags: &BTreeMap<String, TagMeaning>,
    boots: &[BootLine],
    services: &[BootLine],
) {
    const ALL: [ArchClass; 6] = [
        ArchClass::Bios,
        ArchClass::EfiX64,
        ArchClass::EfiIa32,
        ArchClass::EfiArm64,
        ArchClass::EfiArm32,
        ArchClass::EfiRiscv64,
    ];
    let mut chosen: BTreeMap<&'static str, (String, Origin)> = BTreeMap::new();
    let has_tags = |b: &&BootLine| !b.tags.is_empty();
    let order = services
        .iter()
        .chain(boots.iter().filter(has_tags))
        .chain(boots.iter().filter(|b| b.tags.is_empty()));
    for b in order {
        let mut archs: Vec<ArchClass> = match b.csa {
            Some(a) => vec![a],
            None => ALL.to_vec(),
        };
        let mut why = None;
        for (tag, negated) in &b.tags {
            match (tags.get(tag), negated) {
                (Some(TagMeaning::Ipxe), false) => {
                    why = Some("the file for clients already running iPXE: Baton gives iPXE its node's script (ipxe/<mac>.ipxe, [dhcp] ipxe_script); an ingested Ironic tree serves Ironic's own scripts".to_string());
                }
                (Some(TagMeaning::Ipxe), true) => {} // a first-stage loader
                (Some(TagMeaning::Arch(codes)), neg) => {
                    let classes: Vec<ArchClass> =
                        codes.iter().map(|c| classify_arch(*c).0).collect();
                    archs.retain(|a| classes.contains(a) != *neg);
                }
                _ => {
                    why = Some(format!("depends on tag {tag:?}, which is not a client architecture or iPXE: Baton chooses boot files by architecture only"));
                }
            }
        }
        if let Some(why) = why {
            t.untranslated.push(Untranslated {
                at: b.at.clone(),
                text: b.text.clone(),
                why,
            });
            continue;
        }
        let mut placed = false;
        let mut shadowed = Vec::new();
        for a in archs {
            let key = arch_key(a);
            match chosen.get(key) {
                Some((prev, at)) => {
                    if prev != &b.file {
                        shadowed.push(format!("{key} boots {prev} (line {})", at.line));
                    }
                }
                None => {
                    chosen.insert(key, (b.file.clone(), b.at.clone()));
                    placed = true;
                }
            }
        }
        if !placed && !shadowed.is_empty() {
            t.untranslated.push(Untranslated {
                at: b.at.clone(),
                text: b.text.clone(),
                why: format!("never used, as in dnsmasq: {}", shadowed.join(", ")),
            });
        }
    }
    for (key, (file, _)) in chosen {
        let file = Some(file.trim_start_matches('/').to_string());
        match key {
            "bios" => t.boot_files.bios = file,
            "efi_x64" => t.boot_files.efi_x64 = file,
            "efi_ia32" => t.boot_files.efi_ia32 = file,
            "efi_arm64" => t.boot_files.efi_arm64 = file,
            "efi_arm32" => t.boot_files.efi_arm32 = file,
            _ => t.boot_files.efi_riscv64 = file,
        }
    }
    if !boots.is_empty() || !services.is_empty() {
        t.dhcp = true;
    }
}

fn arch_key(a: ArchClass) -> &'static str {
    match a {
        ArchClass::Bios => "bios",
        ArchClass::EfiX64 => "efi_x64",
        ArchClass::EfiIa32 => "efi_ia32",
        ArchClass::EfiArm64 => "efi_arm64",
        ArchClass::EfiArm32 => "efi_arm32",
        ArchClass::EfiRiscv64 => "efi_riscv64",
        ArchClass::Other(_) => "other",
    }
}

fn merge_tag(tags: &mut BTreeMap<String, TagMeaning>, tag: String, m: TagMeaning) {
    match (tags.get_mut(&tag), m) {
        (Some(TagMeaning::Arch(a)), TagMeaning::Arch(b)) => {
            for c in b {
                if !a.contains(&c) {
                    a.push(c);
                }
            }
        }
        (Some(slot), m) => *slot = m,
        (None, m) => {
            tags.insert(tag, m);
        }
    }
}

/// `option:client-arch,N`, `93,N` -> the architecture; `175` or `option:user-class`
/// with `iPXE`, `77,iPXE` -> iPXE; `60,PXEClient:Arch:NNNNN` -> the architecture.
fn meaning_of_match(rest: &[String]) -> Option<TagMeaning> {
    let opt = rest.first()?.as_str();
    let value = rest.get(1).map(String::as_str);
    let opt = opt.strip_prefix("option:").unwrap_or(opt);
    match (opt, value) {
        ("client-arch" | "93", Some(v)) => v.parse().ok().map(|a| TagMeaning::Arch(vec![a])),
        ("175", _) => Some(TagMeaning::Ipxe),
        ("user-class" | "77", Some(v)) if v.eq_ignore_ascii_case("ipxe") => Some(TagMeaning::Ipxe),
        ("vendor-class" | "60", Some(v)) => vendor_arch(v).map(|a| TagMeaning::Arch(vec![a])),
        _ => None,
    }
}

/// `PXEClient:Arch:00007` (a prefix of the vendor class) -> 7.
fn vendor_arch(v: &str) -> Option<u16> {
    let rest = v
        .strip_prefix("PXEClient:Arch:")
        .or_else(|| v.strip_prefix("HTTPClient:Arch:"))?;
    rest.get(..5)?.parse().ok()
}

/// dnsmasq's client system types (pxe-service CSA).
fn csa_arch(c: &str) -> Option<ArchClass> {
    let a = match c.to_ascii_lowercase().as_str() {
        "x86pc" => ArchClass::Bios,
        "ia32_efi" => ArchClass::EfiIa32,
        "bc_efi" | "x86-64_efi" => ArchClass::EfiX64,
        "arm32_efi" => ArchClass::EfiArm32,
        "arm64_efi" => ArchClass::EfiArm64,
        n => match n.parse::<u16>().map(|n| classify_arch(n).0) {
            Ok(ArchClass::Other(_)) | Err(_) => return None,
            Ok(a) => a,
        },
    };
    Some(a)
}

/// `tag:X`/`net:X` (and `tag:!X`) conditions first, the rest after.
fn take_tags(args: &[String]) -> (Vec<(String, bool)>, Vec<String>) {
    let mut tags = Vec::new();
    let mut rest = Vec::new();
    for a in args {
        match a.strip_prefix("tag:").or_else(|| a.strip_prefix("net:")) {
            Some(t) if rest.is_empty() => match t.strip_prefix('!') {
                Some(n) => tags.push((n.to_string(), true)),
                None => tags.push((t.to_string(), false)),
            },
            _ => rest.push(a.clone()),
        }
    }
    (tags, rest)
}

/// `set:X` (or old `net:X`) first, the rest after.
fn take_set(args: &[String]) -> (Option<String>, Vec<String>) {
    match args.first() {
        Some(a) => match a.strip_prefix("set:").or_else(|| a.strip_prefix("net:")) {
            Some(t) => (Some(t.to_string()), args[1..].to_vec()),
            None => (None, args.to_vec()),
        },
        None => (None, Vec::new()),
    }
}

/// Splits on commas outside double quotes; quotes removed, fields trimmed.
fn split_args(v: &str) -> Vec<String> {
    if v.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in v.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// The line without its comment: `#` at the start or after white space, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted && prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

impl Translation {
    /// The Baton configuration (TOML) the files amount to: only the keys they set,
    /// each with the dnsmasq option it comes from.
    pub fn config_toml(&self) -> String {
        let mut s = String::from(
            "# Translated by `baton import dnsmasq`; keys not shown keep Baton's defaults.\n",
        );
        let q = |v: &str| toml::Value::String(v.to_string()).to_string();
        if self.tftp || self.tftp_root.is_some() {
            s.push_str("\n[tftp]\n");
            if let Some(r) = &self.tftp_root {
                let _ = writeln!(s, "root = {}  # tftp-root", q(r));
            }
            if let Some(n) = self.tftp_max {
                let _ = writeln!(s, "max_transfers = {n}  # tftp-max");
            }
            if let Some(n) = self.tftp_blksize {
                let _ = writeln!(s, "max_blksize = {n}  # tftp-blocksize / tftp-no-blocksize");
            }
            if let Some(n) = self.tftp_mtu {
                let _ = writeln!(s, "mtu = {n}  # tftp-mtu");
            }
            if self.tftp_single_port {
                s.push_str("single_port = true  # tftp-single-port\n");
            }
        }
        s.push_str("\n[dhcp]\n");
        let _ = writeln!(
            s,
            "enabled = {}  # {}",
            self.dhcp,
            if self.dhcp {
                "dhcp-range=...,proxy / dhcp-boot / pxe-service"
            } else {
                "no proxy range nor boot file: Baton's proxy-DHCP stays off"
            }
        );
        if !self.interfaces.is_empty() {
            let list: Vec<String> = self.interfaces.iter().map(|i| q(i)).collect();
            let _ = writeln!(s, "interfaces = [{}]  # interface", list.join(", "));
        }
        if self.boot_files.rows().iter().any(|(_, v)| v.is_some()) {
            s.push_str("\n[dhcp.boot_files]  # dhcp-boot / pxe-service per client architecture\n");
            for (k, v) in self.boot_files.rows() {
                if let Some(f) = v {
                    let _ = writeln!(s, "{k} = {}", q(f));
                }
            }
            if self.boot_files.bios.is_none() || self.boot_files.efi_x64.is_none() {
                s.push_str("# bios and efi_x64 keep Baton's defaults where not set above\n");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests;
