//! What a loader does next, read from its name and its configuration: just enough of
//! pxelinux, GRUB and iPXE to find the kernel and the ramdisk a real boot would load
//! (and the config file names each loader searches for). Pure functions over text.

use std::fmt;
use std::net::Ipv4Addr;

/// A place a file is fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A TFTP read of `path` from `server` (port 69 unless the driver says otherwise).
    Tftp {
        /// Server address.
        server: Ipv4Addr,
        /// File name as sent in the RRQ (no leading `/`).
        path: String,
    },
    /// An HTTP GET.
    Http {
        /// `host[:port]`.
        authority: String,
        /// Absolute path (starts with `/`), with any query.
        path: String,
    },
}

impl Location {
    /// The served path, without leading `/`: what a manifest or the node's file list
    /// names. HTTP boot paths `/boot/<node>/<path>` are reduced to `<path>`.
    pub fn served_path(&self) -> String {
        match self {
            Location::Tftp { path, .. } => normalize(path),
            Location::Http { path, .. } => {
                let p = path.split('?').next().unwrap_or_default();
                let p = normalize(p);
                match p.strip_prefix("boot/").and_then(|r| r.split_once('/')) {
                    Some((_node, rest)) => rest.to_string(),
                    None => p,
                }
            }
        }
    }

    /// `tftp` or `http`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Location::Tftp { .. } => "tftp",
            Location::Http { .. } => "http",
        }
    }

    /// The directory part (with trailing `/`), for relative references.
    fn dir(&self) -> String {
        let p = match self {
            Location::Tftp { path, .. } => format!("/{}", normalize(path)),
            Location::Http { path, .. } => path.split('?').next().unwrap_or("/").to_string(),
        };
        match p.rfind('/') {
            Some(i) => p[..=i].to_string(),
            None => "/".into(),
        }
    }

    fn with_path(&self, abs: &str) -> Location {
        match self {
            Location::Tftp { server, .. } => Location::Tftp {
                server: *server,
                path: normalize(abs),
            },
            Location::Http { authority, .. } => Location::Http {
                authority: authority.clone(),
                path: if abs.starts_with('/') {
                    abs.to_string()
                } else {
                    format!("/{abs}")
                },
            },
        }
    }

    /// Resolves `reference` (a URI, an absolute path or a relative one) against this
    /// location, as iPXE resolves the paths of a script against the script's URI.
    pub fn resolve(&self, reference: &str) -> Result<Location, String> {
        if let Some(rest) = reference.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if authority.is_empty() {
                return Err(format!("no host in {reference:?}"));
            }
            return Ok(Location::Http {
                authority: authority.to_string(),
                path: path.to_string(),
            });
        }
        if let Some(rest) = reference.strip_prefix("tftp://") {
            let (host, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let host = host.split(':').next().unwrap_or_default();
            let server: Ipv4Addr = host.parse().map_err(|_| {
                format!("TFTP server {host:?} in {reference:?} is not an IPv4 address")
            })?;
            return Ok(Location::Tftp {
                server,
                path: normalize(path),
            });
        }
        if reference.contains("://") {
            return Err(format!("unsupported URI scheme in {reference:?}"));
        }
        if reference.starts_with('/') {
            Ok(self.with_path(reference))
        } else {
            Ok(self.with_path(&format!("{}{reference}", self.dir())))
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Tftp { server, path } => write!(f, "tftp://{server}/{path}"),
            Location::Http { authority, path } => write!(f, "http://{authority}{path}"),
        }
    }
}

/// A served path without leading `/` or `./` and without `//`.
pub fn normalize(p: &str) -> String {
    p.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// What a first-stage boot file is, judged by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderKind {
    /// iPXE (`undionly.kpxe`, `ipxe.efi`, `snponly.efi`...): runs DHCP again as iPXE,
    /// then the script the server names.
    Ipxe,
    /// pxelinux / syslinux.efi: loads `ldlinux`, then searches `pxelinux.cfg/`.
    Pxelinux,
    /// GRUB's network image: loads `grub/grub.cfg-01-<mac>` (or `grub/grub.cfg`).
    Grub,
    /// shim: loads `grubx64.efi` from its own directory, then behaves as GRUB.
    Shim,
}

impl LoaderKind {
    /// Name for `--loader` and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            LoaderKind::Ipxe => "ipxe",
            LoaderKind::Pxelinux => "pxelinux",
            LoaderKind::Grub => "grub",
            LoaderKind::Shim => "shim",
        }
    }

    /// From a `--loader` value.
    pub fn parse(s: &str) -> Option<LoaderKind> {
        [
            LoaderKind::Ipxe,
            LoaderKind::Pxelinux,
            LoaderKind::Grub,
            LoaderKind::Shim,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Judges a boot file by its name; `None` when the name says nothing.
    pub fn classify(path: &str) -> Option<LoaderKind> {
        let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
        // Scripts and configurations are not loaders, whatever their names hold.
        if name.ends_with(".ipxe") || name.ends_with(".cfg") || name.contains(".cfg-") {
            None
        } else if name.contains("pxelinux") || name.starts_with("syslinux") {
            Some(LoaderKind::Pxelinux)
        } else if name.contains("ipxe")
            || name.ends_with("pxe")
            || name.starts_with("snp")
            || name.starts_with("undionly")
        {
            Some(LoaderKind::Ipxe)
        } else if name.contains("grub") {
            Some(LoaderKind::Grub)
        } else if name.starts_with("shim") || name.starts_with("bootx64") {
            Some(LoaderKind::Shim)
        } else {
            None
        }
    }
}

/// MAC as `52-54-00-ec-33-81`.
pub fn mac_dashes(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// MAC as `52:54:00:ec:33:81`.
pub fn mac_colons(mac: [u8; 6]) -> String {
    mac_dashes(mac).replace('-', ":")
}

/// The configuration files pxelinux tries, in order, relative to its own directory:
/// `01-<mac>`, the client address in hex shortened one digit at a time, `default`.
pub fn pxelinux_candidates(mac: [u8; 6], ip: Ipv4Addr) -> Vec<String> {
    let mut v = vec![format!("pxelinux.cfg/01-{}", mac_dashes(mac))];
    let hex: String = ip.octets().iter().map(|b| format!("{b:02X}")).collect();
    for n in (1..=8).rev() {
        v.push(format!("pxelinux.cfg/{}", &hex[..n]));
    }
    v.push("pxelinux.cfg/default".into());
    v
}

/// The configuration files GRUB's network image tries (prefix `/grub`).
pub fn grub_candidates(mac: [u8; 6]) -> Vec<String> {
    vec![
        format!("/grub/grub.cfg-01-{}", mac_dashes(mac)),
        "/grub/grub.cfg".into(),
    ]
}

/// What a configuration says to boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootEntry {
    /// The kernel (or first image), as written.
    pub kernel: Option<String>,
    /// Ramdisks / further images, as written.
    pub initrds: Vec<String>,
    /// Another script to run instead (iPXE `chain` of a script).
    pub chain: Option<String>,
    /// The configuration hands the boot back to the firmware (local disk).
    pub local: bool,
}

/// Values iPXE substitutes in scripts.
#[derive(Debug, Clone)]
pub struct IpxeVars {
    /// The booting NIC's MAC.
    pub mac: [u8; 6],
    /// `${next-server}`.
    pub next_server: Ipv4Addr,
    /// `${ip}`.
    pub ip: Ipv4Addr,
}

fn expand(s: &str, v: &IpxeVars) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let name = &after[..j];
        let name = name.strip_prefix("net0/").unwrap_or(name);
        let value = match name {
            "mac:hexhyp" => Some(mac_dashes(v.mac)),
            "mac" | "mac:hex" => Some(mac_colons(v.mac)),
            "mac:hexraw" => Some(mac_dashes(v.mac).replace('-', "")),
            "next-server" => Some(v.next_server.to_string()),
            "ip" => Some(v.ip.to_string()),
            _ => None,
        };
        match value {
            Some(x) => out.push_str(&x),
            None => out.push_str(&rest[i..i + 3 + j]),
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out
}

/// The first non-option argument of an iPXE command (`--name x` takes a value).
fn image_arg<'a>(words: &mut impl Iterator<Item = &'a str>) -> Option<&'a str> {
    while let Some(w) = words.next() {
        if let Some(opt) = w.strip_prefix("--") {
            if !opt.contains('=') && matches!(opt, "name" | "timeout") {
                words.next();
            }
            continue;
        }
        if w.starts_with('-') && w.len() == 2 {
            if matches!(w, "-n" | "-t") {
                words.next();
            }
            continue;
        }
        return Some(w);
    }
    None
}

/// An iPXE script: `kernel`/`chain`/`imgfetch`/`initrd`/`module` lines in order.
/// `chain` of anything but a kernel-looking name is taken as another script.
pub fn parse_ipxe(text: &str, vars: &IpxeVars) -> BootEntry {
    let mut e = BootEntry::default();
    let mut images: Vec<String> = Vec::new();
    let mut kernel = None;
    for raw in text.lines() {
        // `cmd || goto x` and `cmd && y`: only the first command counts.
        let line = raw.split("||").next().unwrap_or("");
        let line = line.split("&&").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(':') {
            continue;
        }
        let line = expand(line, vars);
        let mut words = line.split_whitespace();
        let Some(cmd) = words.next() else { continue };
        match cmd {
            "kernel" | "imgexec" | "boot" => {
                if let Some(a) = image_arg(&mut words) {
                    kernel.get_or_insert_with(|| a.to_string());
                }
            }
            "chain" => {
                if let Some(a) = image_arg(&mut words) {
                    if kernel.is_none() && images.is_empty() {
                        e.chain = Some(a.to_string());
                        return e;
                    }
                }
            }
            "initrd" | "module" | "imgfetch" | "fetch" => {
                if let Some(a) = image_arg(&mut words) {
                    images.push(a.to_string());
                }
            }
            "exit" | "sanboot" => {
                if kernel.is_none() && images.is_empty() {
                    e.local = true;
                    return e;
                }
                break;
            }
            _ => {}
        }
    }
    if kernel.is_none() && !images.is_empty() {
        kernel = Some(images.remove(0));
    }
    e.kernel = kernel;
    e.initrds = images;
    e
}

/// A pxelinux configuration: the `DEFAULT` label (or the first), its `KERNEL`/`LINUX`
/// and `INITRD` (or `initrd=` in `APPEND`), or `LOCALBOOT`.
pub fn parse_pxelinux(text: &str) -> BootEntry {
    struct Label {
        name: String,
        e: BootEntry,
    }
    let mut default = None;
    let mut labels: Vec<Label> = Vec::new();
    let mut global = BootEntry::default();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, val) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k.to_ascii_uppercase(), v.trim()),
            None => (line.to_ascii_uppercase(), ""),
        };
        if key == "LABEL" {
            labels.push(Label {
                name: val.to_string(),
                e: BootEntry::default(),
            });
            continue;
        }
        if key == "DEFAULT" {
            default = Some(val.split_whitespace().next().unwrap_or("").to_string());
            continue;
        }
        let e = match labels.last_mut() {
            Some(l) => &mut l.e,
            None => &mut global,
        };
        match key.as_str() {
            "KERNEL" | "LINUX" => {
                e.kernel = val.split_whitespace().next().map(str::to_string);
            }
            "INITRD" => {
                e.initrds = val
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            "APPEND" => {
                for w in val.split_whitespace() {
                    if let Some(list) = w.strip_prefix("initrd=") {
                        if e.initrds.is_empty() {
                            e.initrds = list.split(',').map(str::to_string).collect();
                        }
                    }
                }
            }
            "LOCALBOOT" => e.local = true,
            _ => {}
        }
    }
    let chosen = default
        .as_ref()
        .and_then(|d| labels.iter().position(|l| &l.name == d))
        .or(if labels.is_empty() { None } else { Some(0) });
    match chosen {
        Some(i) => labels.swap_remove(i).e,
        // `DEFAULT vmlinuz args` with no labels names a kernel directly.
        None => {
            if global.kernel.is_none() {
                global.kernel = default.filter(|d| !d.is_empty());
            }
            global
        }
    }
}

/// Strips GRUB's device prefix: `(tftp,10.0.0.1)/x` and `($root)/x` become `/x`.
fn grub_path(p: &str) -> String {
    if p.starts_with('(') {
        if let Some(i) = p.find(')') {
            return p[i + 1..].to_string();
        }
    }
    p.to_string()
}

/// A GRUB configuration: the first `linux`/`linuxefi`/`linux16` and its `initrd`s,
/// or `exit` (hand back to the firmware).
pub fn parse_grub(text: &str) -> BootEntry {
    let mut e = BootEntry::default();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("linux" | "linuxefi" | "linux16") if e.kernel.is_none() => {
                e.kernel = words.next().map(grub_path);
            }
            Some("initrd" | "initrdefi" | "initrd16") if e.initrds.is_empty() => {
                e.initrds = words.map(grub_path).collect();
            }
            Some("exit") if e.kernel.is_none() => {
                e.local = true;
                return e;
            }
            _ => {}
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0xec, 0x33, 0x81];
    const SRV: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    fn vars() -> IpxeVars {
        IpxeVars {
            mac: MAC,
            next_server: SRV,
            ip: Ipv4Addr::new(10, 77, 0, 131),
        }
    }

    #[test]
    fn baton_templates_as_rendered() {
        let ipxe = "#!ipxe\n# Baton: node n1\n\nkernel /nodes/n1/kernel initrd=ramdisk console=ttyS0 BOOTIF=01-52-54-00-ec-33-81\ninitrd --name ramdisk /nodes/n1/ramdisk\nboot\n";
        let e = parse_ipxe(ipxe, &vars());
        assert_eq!(e.kernel.as_deref(), Some("/nodes/n1/kernel"));
        assert_eq!(e.initrds, vec!["/nodes/n1/ramdisk"]);
        let pxe = "DEFAULT baton\nPROMPT 0\nTIMEOUT 0\n\nLABEL baton\n  LINUX nodes/n1/kernel\n  INITRD nodes/n1/ramdisk\n  APPEND console=ttyS0\n  IPAPPEND 2\n";
        let e = parse_pxelinux(pxe);
        assert_eq!(e.kernel.as_deref(), Some("nodes/n1/kernel"));
        assert_eq!(e.initrds, vec!["nodes/n1/ramdisk"]);
        let grub = "set default=0\nmenuentry \"baton deploy n1\" {\n  echo \"Loading\"\n  linux /nodes/n1/kernel console=ttyS0 BOOTIF=01-52-54-00-ec-33-81\n  initrd /nodes/n1/ramdisk\n}\n";
        let e = parse_grub(grub);
        assert_eq!(e.kernel.as_deref(), Some("/nodes/n1/kernel"));
        assert_eq!(e.initrds, vec!["/nodes/n1/ramdisk"]);
        assert!(parse_pxelinux("DEFAULT baton\nLABEL baton\n  LOCALBOOT 0\n").local);
        assert!(parse_grub("menuentry x {\n  exit\n}\n").local);
        assert!(parse_ipxe("#!ipxe\necho local\nexit\n", &vars()).local);
    }

    #[test]
    fn ipxe_chains_imgfetch_and_variables() {
        let shared = "#!ipxe\nchain ipxe/${mac:hexhyp}.ipxe || goto none\n:none\nexit\n";
        let e = parse_ipxe(shared, &vars());
        assert_eq!(e.chain.as_deref(), Some("ipxe/52-54-00-ec-33-81.ipxe"));
        let e2e = "#!ipxe\necho hi\nimgfetch --name kernel /nodes/n1/kernel || goto failed\nimgfetch --name ramdisk /nodes/n1/ramdisk || goto failed\nexit\n:failed\nexit\n";
        let e = parse_ipxe(e2e, &vars());
        assert_eq!(e.kernel.as_deref(), Some("/nodes/n1/kernel"));
        assert_eq!(e.initrds, vec!["/nodes/n1/ramdisk"]);
        assert!(!e.local);
        assert_eq!(
            expand("http://${next-server}:8069/${net0/mac}/${x}", &vars()),
            "http://10.77.0.1:8069/52:54:00:ec:33:81/${x}"
        );
    }

    #[test]
    fn pxelinux_default_label_and_append_initrd() {
        let t =
            "DEFAULT two\nLABEL one\n KERNEL a\nLABEL two\n KERNEL b\n APPEND initrd=c,d quiet\n";
        let e = parse_pxelinux(t);
        assert_eq!(e.kernel.as_deref(), Some("b"));
        assert_eq!(e.initrds, vec!["c", "d"]);
        assert_eq!(
            parse_pxelinux("DEFAULT vmlinuz\n").kernel.as_deref(),
            Some("vmlinuz")
        );
        let c = pxelinux_candidates(MAC, Ipv4Addr::new(10, 77, 0, 131));
        assert_eq!(c[0], "pxelinux.cfg/01-52-54-00-ec-33-81");
        assert_eq!(c[1], "pxelinux.cfg/0A4D0083");
        assert_eq!(c[8], "pxelinux.cfg/0");
        assert_eq!(c[9], "pxelinux.cfg/default");
    }

    #[test]
    fn locations_resolve_like_ipxe() {
        let script = Location::Tftp {
            server: SRV,
            path: "ipxe/52-54-00-ec-33-81.ipxe".into(),
        };
        assert_eq!(
            script.resolve("/nodes/n1/kernel").unwrap(),
            Location::Tftp {
                server: SRV,
                path: "nodes/n1/kernel".into()
            }
        );
        assert_eq!(
            script.resolve("x.ipxe").unwrap().served_path(),
            "ipxe/x.ipxe"
        );
        let h = script.resolve("http://10.77.0.1:8069/ipxe/a.ipxe").unwrap();
        assert_eq!(h.to_string(), "http://10.77.0.1:8069/ipxe/a.ipxe");
        assert_eq!(
            h.resolve("/nodes/n1/kernel").unwrap().to_string(),
            "http://10.77.0.1:8069/nodes/n1/kernel"
        );
        let b = Location::Http {
            authority: "h:1".into(),
            path: "/boot/n1/nodes/n1/kernel".into(),
        };
        assert_eq!(b.served_path(), "nodes/n1/kernel");
        assert!(script.resolve("ftp://x/y").is_err());
        assert!(script.resolve("tftp://name/y").is_err());
    }

    #[test]
    fn loader_names() {
        for (n, k) in [
            ("undionly.kpxe", LoaderKind::Ipxe),
            ("ipxe.efi", LoaderKind::Ipxe),
            ("snponly.efi", LoaderKind::Ipxe),
            ("bios/pxelinux.0", LoaderKind::Pxelinux),
            ("efi64/syslinux.efi", LoaderKind::Pxelinux),
            ("grubx64.efi", LoaderKind::Grub),
            ("bootx64.efi", LoaderKind::Shim),
        ] {
            assert_eq!(LoaderKind::classify(n), Some(k), "{n}");
        }
        assert_eq!(LoaderKind::classify("loader.bin"), None);
        assert_eq!(LoaderKind::classify("ipxe/52-54-00-ec-33-81.ipxe"), None);
        assert_eq!(LoaderKind::classify("boot.ipxe"), None);
    }
}
