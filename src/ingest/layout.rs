//! Which paths of a provisioning tool's TFTP tree are per-node, named as OpenStack
//! Ironic's `pxe_utils` writes them (relative to `[pxe] tftp_root` or, for iPXE,
//! `[deploy] http_root`):
//!
//! | path                                   | what                                           |
//! |----------------------------------------|------------------------------------------------|
//! | `<node-uuid>/config`                   | the node's boot-loader configuration           |
//! | `<node-uuid>/deploy_kernel`, `deploy_ramdisk`, `kernel`, `ramdisk`, `rescue_*`, … | images, often hard links into `master_images/` |
//! | `pxelinux.cfg/01-<mac-dashes>`         | pxelinux, symlink to `../<node-uuid>/config`   |
//! | `pxelinux.cfg/<mac-dashes>`            | the iPXE form (no `01-`), symlink likewise     |
//! | `grub.cfg-01-<mac-dashes>`             | GRUB, symlink to `<node-uuid>/config`          |
//! | `<mac>.conf`                           | GRUB by MAC, symlink to `<node-uuid>/config`   |
//! | `<ipv4>.conf`                          | GRUB by address, symlink to `<node-uuid>/config` |
//!
//! Everything else (loaders, `master_images/`, `grub/`, `EFI/`, `boot.ipxe`, …) is
//! shared and served from the TFTP root as it is. Pure: no file system here.

use std::net::Ipv4Addr;

use crate::store::MacAddr;

/// What a path of the tree is to the ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Under a node's own directory: `<node-uuid>/...`.
    NodeDir {
        /// The node (the directory's name, lowercase).
        node: String,
    },
    /// A configuration named after a boot MAC.
    MacName {
        /// The MAC.
        mac: MacAddr,
    },
    /// A GRUB configuration named after an IPv4 address.
    IpName,
    /// Not per-node: served from the shared directory.
    Shared,
}

impl Role {
    /// Per-node (anything but [`Role::Shared`]).
    pub fn is_node(&self) -> bool {
        !matches!(self, Role::Shared)
    }
}

/// The role of `rel`, a normalized path relative to the tree's root (`/`-separated, no
/// leading `/`, no `.` or `..`).
pub fn classify(rel: &str) -> Role {
    let comps: Vec<&str> = rel.split('/').collect();
    match comps.as_slice() {
        [dir, _, ..] if is_uuid(dir) => Role::NodeDir {
            node: dir.to_ascii_lowercase(),
        },
        ["pxelinux.cfg", name] => {
            let mac = name.strip_prefix("01-").unwrap_or(name);
            match parse_mac(mac) {
                Some(mac) => Role::MacName { mac },
                None => Role::Shared,
            }
        }
        [name] => {
            if let Some(mac) = name.strip_prefix("grub.cfg-01-").and_then(parse_mac) {
                return Role::MacName { mac };
            }
            match name.strip_suffix(".conf") {
                Some(stem) => match parse_mac(stem) {
                    Some(mac) => Role::MacName { mac },
                    None if stem.parse::<Ipv4Addr>().is_ok() => Role::IpName,
                    None => Role::Shared,
                },
                None => Role::Shared,
            }
        }
        _ => Role::Shared,
    }
}

/// The path a per-node file is served under: as written, with a MAC in a file name in
/// lowercase (the form clients' names are folded to, see `wire::path`).
pub fn served_path(rel: &str, role: &Role) -> String {
    match role {
        Role::MacName { .. } => match rel.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/{}", name.to_ascii_lowercase()),
            None => rel.to_ascii_lowercase(),
        },
        _ => rel.to_string(),
    }
}

/// A MAC written with `:` or `-` between its six octets (the forms Ironic writes).
fn parse_mac(s: &str) -> Option<MacAddr> {
    if s.len() != 17 {
        return None;
    }
    s.parse().ok()
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits of either case.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";

    #[test]
    fn ironic_names() {
        let mac: MacAddr = "52:54:00:ab:cd:ef".parse().unwrap();
        let node = |p: &str| classify(p);
        for p in [
            format!("{UUID}/config"),
            format!("{UUID}/deploy_kernel"),
            format!("{UUID}/LiveOS/squashfs.img"),
        ] {
            assert_eq!(node(&p), Role::NodeDir { node: UUID.into() }, "{p}");
        }
        assert_eq!(
            node(&format!("{}/config", UUID.to_uppercase())),
            Role::NodeDir { node: UUID.into() }
        );
        for p in [
            "pxelinux.cfg/01-52-54-00-ab-cd-ef",
            "pxelinux.cfg/01-52-54-00-AB-CD-EF",
            "pxelinux.cfg/52-54-00-ab-cd-ef",
            "grub.cfg-01-52-54-00-ab-cd-ef",
            "52:54:00:ab:cd:ef.conf",
            "52-54-00-AB-CD-EF.conf",
        ] {
            assert_eq!(node(p), Role::MacName { mac }, "{p}");
        }
        assert_eq!(node("10.0.0.7.conf"), Role::IpName);
        for p in [
            "pxelinux.0",
            "master_images/5b1b9b0a7e.converted",
            "pxelinux.cfg/default",
            "pxelinux.cfg/20-52-54-00-ab-cd-ef-00-11",
            "grub/grub.cfg",
            "EFI/BOOT/grub.cfg-01-52-54-00-ab-cd-ef",
            "boot.ipxe",
            "ipxe.efi",
            "not-a-uuid/config",
            UUID,
            "x.conf",
        ] {
            assert_eq!(node(p), Role::Shared, "{p}");
        }
    }

    #[test]
    fn served_paths_fold_macs() {
        let r = classify("pxelinux.cfg/01-52-54-00-AB-CD-EF");
        assert_eq!(
            served_path("pxelinux.cfg/01-52-54-00-AB-CD-EF", &r),
            "pxelinux.cfg/01-52-54-00-ab-cd-ef"
        );
        let r = classify("52:54:00:AB:CD:EF.conf");
        assert_eq!(
            served_path("52:54:00:AB:CD:EF.conf", &r),
            "52:54:00:ab:cd:ef.conf"
        );
        let p = format!("{UUID}/Config");
        assert_eq!(served_path(&p, &classify(&p)), p);
    }
}
