//! `baton storm` at the binary's edge: turns the flags into a [`StormPlan`] (MACs,
//! profiles, source addresses, reference digests from the API or a manifest), runs it
//! and prints the summary.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::bootcfg::{mac_colons, normalize, LoaderKind};
use super::client::StormParams;
use super::driver::{self, ClientPlan, StormPlan};
use super::profile::parse_mix;
use crate::cli::StormArgs;
use crate::store::MacAddr;

/// Parses `A-B` or `NET/LEN` into host addresses.
pub fn parse_range(s: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let (a, b) = if let Some((net, len)) = s.split_once('/') {
        let net: Ipv4Addr = net
            .parse()
            .with_context(|| format!("bad network in {s:?}"))?;
        let len: u32 = len
            .parse()
            .ok()
            .filter(|l| (8..=32).contains(l))
            .with_context(|| format!("prefix length in {s:?} must be 8..=32"))?;
        let base = u32::from(net) & (u32::MAX.checked_shl(32 - len).unwrap_or(0));
        let size = 1u64 << (32 - len);
        if size <= 2 {
            (base, base + size as u32 - 1)
        } else {
            (base + 1, base + size as u32 - 2)
        }
    } else if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a
            .trim()
            .parse()
            .with_context(|| format!("bad address in {s:?}"))?;
        let b: Ipv4Addr = b
            .trim()
            .parse()
            .with_context(|| format!("bad address in {s:?}"))?;
        (u32::from(a), u32::from(b))
    } else {
        let a: Ipv4Addr = s
            .parse()
            .with_context(|| format!("{s:?} is not A-B, NET/LEN or an address"))?;
        (u32::from(a), u32::from(a))
    };
    if b < a || b - a > 65535 {
        bail!("address range {s:?} is empty or larger than 65536 addresses");
    }
    Ok((a..=b).map(Ipv4Addr::from).collect())
}

fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let m: MacAddr = s
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("bad MAC {s:?}: {e}"))?;
    Ok(m.0)
}

fn mac_plus(base: [u8; 6], i: u64) -> [u8; 6] {
    let mut v = 0u64;
    for b in base {
        v = (v << 8) | u64::from(b);
    }
    let v = v.wrapping_add(i) & 0xffff_ffff_ffff;
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Per-MAC reference: node id and path -> sha256.
#[derive(Debug, Default)]
struct Reference {
    shared: BTreeMap<String, String>,
    nodes: BTreeMap<[u8; 6], (String, BTreeMap<String, String>)>,
    /// Node MACs in node-id order (the default client list).
    order: Vec<[u8; 6]>,
}

fn from_api(base: &str, token: &str) -> anyhow::Result<Reference> {
    let c = crate::client::Client::new(base, token);
    let mut nodes: Vec<crate::store::Node> = c
        .list_all(
            |cursor| {
                let q = crate::api::v1::NodeQuery {
                    cursor: cursor.map(str::to_string),
                    ..Default::default()
                };
                crate::client::with_query("/v1/nodes", &q)
            },
            None,
            |_| {},
        )
        .context("listing the nodes")?
        .body;
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut r = Reference::default();
    for n in nodes {
        let files: Vec<crate::store::NodeFile> = c
            .get(&format!(
                "/v1/nodes/{}/files",
                crate::client::urlencode(&n.id)
            ))
            .with_context(|| format!("reading the files of node {}", n.id))?
            .body;
        let map: BTreeMap<String, String> = files
            .iter()
            .map(|f| (normalize(&f.path), f.digest.to_string()))
            .collect();
        for (k, mac) in n.macs.iter().enumerate() {
            if k == 0 {
                r.order.push(mac.0);
            }
            r.nodes.insert(mac.0, (n.id.clone(), map.clone()));
        }
    }
    Ok(r)
}

fn from_manifest(text: &str, r: &mut Reference) -> anyhow::Result<()> {
    if text.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(text).context("manifest is not valid JSON")?;
        let files = |v: &Value| -> BTreeMap<String, String> {
            v.as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, d)| Some((normalize(k), d.as_str()?.to_lowercase())))
                .collect()
        };
        r.shared.extend(files(&v["files"]));
        for n in v["nodes"].as_array().into_iter().flatten() {
            let id = n["id"].as_str().unwrap_or_default().to_string();
            let map = files(&n["files"]);
            for m in n["macs"].as_array().into_iter().flatten() {
                let mac = parse_mac(m.as_str().unwrap_or_default())?;
                if !r.nodes.contains_key(&mac) {
                    r.order.push(mac);
                }
                let e = r
                    .nodes
                    .entry(mac)
                    .or_insert_with(|| (id.clone(), BTreeMap::new()));
                e.1.extend(map.clone());
            }
        }
        return Ok(());
    }
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (digest, path) = line
            .split_once(char::is_whitespace)
            .with_context(|| format!("manifest line {}: expected `SHA256  PATH`", i + 1))?;
        let path = path.trim().trim_start_matches('*');
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("manifest line {}: {digest:?} is not a sha256", i + 1);
        }
        r.shared.insert(normalize(path), digest.to_lowercase());
    }
    Ok(())
}

/// Runs `baton storm`; `Ok(true)` when every client booted.
pub fn run(a: &StormArgs) -> anyhow::Result<bool> {
    if !(a.time_scale > 0.0 && a.time_scale <= 100.0) {
        bail!("--time-scale must be in (0, 100]");
    }
    if !(a.tftp_time_scale > 0.0 && a.tftp_time_scale <= 100.0) {
        bail!("--tftp-time-scale must be in (0, 100]");
    }
    if !(a.limit > 0.0 && a.limit <= 86_400.0) {
        bail!("--limit must be in (0, 86400] seconds");
    }
    if a.attempts == 0 || a.attempts > 100 {
        bail!("--attempts must be 1..=100");
    }
    let mix = parse_mix(&a.profile).map_err(|e| anyhow::anyhow!("--profile: {e}"))?;
    let loader = match &a.loader {
        Some(l) => Some(
            LoaderKind::parse(l)
                .with_context(|| format!("--loader {l}: ipxe, pxelinux, grub or shim"))?,
        ),
        None => None,
    };
    let mut reference = match &a.api {
        Some(api) => {
            let token = a
                .token
                .clone()
                .context("--api needs --token (or BATON_API_TOKEN)")?;
            from_api(api, &token)?
        }
        None => Reference::default(),
    };
    if let Some(m) = &a.manifest {
        let text =
            std::fs::read_to_string(m).with_context(|| format!("cannot read {}", m.display()))?;
        from_manifest(&text, &mut reference).with_context(|| format!("{}", m.display()))?;
    }
    let macs: Vec<[u8; 6]> = if let Some(f) = &a.macs {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(parse_mac)
            .collect::<anyhow::Result<_>>()?
    } else if let Some(b) = &a.mac_base {
        let base = parse_mac(b)?;
        let n = a.count.context("--mac-base needs --count")?;
        (0..n as u64).map(|i| mac_plus(base, i)).collect()
    } else if !reference.order.is_empty() {
        reference.order.clone()
    } else {
        bail!("no clients: give --mac-base with --count, --macs FILE, or --api (the enrolled nodes' MACs)");
    };
    let count = a.count.unwrap_or(macs.len()).min(macs.len());
    if count == 0 || count > 100_000 {
        bail!("client count must be 1..=100000 (have {} MACs)", macs.len());
    }
    let ips = match &a.source_ips {
        Some(r) => parse_range(r)?,
        None => Vec::new(),
    };
    let shared = Arc::new(reference.shared.clone());
    let clients: Vec<ClientPlan> = macs[..count]
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            let (node, refs) = match reference.nodes.get(mac) {
                Some((id, files)) => {
                    let mut all = reference.shared.clone();
                    all.extend(files.clone());
                    (Some(id.clone()), Some(Arc::new(all)))
                }
                None if !shared.is_empty() => (None, Some(shared.clone())),
                None => (None, None),
            };
            ClientPlan {
                mac: *mac,
                profile: mix[i % mix.len()],
                source_ip: (!ips.is_empty()).then(|| ips[i % ips.len()]),
                node,
                reference: refs,
            }
        })
        .collect();
    let unknown = clients.iter().filter(|c| c.reference.is_none()).count();
    if unknown > 0 && (a.api.is_some() || a.manifest.is_some()) {
        eprintln!(
            "baton storm: warning: {unknown} of {count} clients have no reference digests (first: {})",
            mac_colons(clients.iter().find(|c| c.reference.is_none()).map(|c| c.mac).unwrap_or_default())
        );
    }
    let plan = StormPlan {
        clients,
        params: StormParams {
            time_scale: a.time_scale,
            tftp_time_scale: a.tftp_time_scale,
            dhcp_to: a.dhcp_server,
            pxe_port: a.pxe_port,
            tftp_port: a.tftp_port,
            http_port: a.http_port,
            loader,
            attempts: a.attempts,
            reboot_delay: Duration::from_secs(5),
            static_address: a.static_address,
        },
        interface: a.interface.clone(),
        client_port: a.client_port,
        limit: Duration::from_secs_f64(a.limit),
        ramp: Duration::from_secs_f64(a.ramp.clamp(0.0, 86_400.0)),
        progress: !a.quiet,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
    };
    let out: Box<dyn std::io::Write + Send> = match &a.records {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    raise_fd_limit();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let summary = rt.block_on(driver::run(plan, out))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    eprint!("{}", summary.render());
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(summary.completed == summary.clients)
}

/// One TFTP socket per client: lift the soft descriptor limit to the hard one.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialized struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_macs_manifests() {
        let r = parse_range("10.0.0.1-10.0.0.3").unwrap();
        assert_eq!(r.len(), 3);
        let c = parse_range("10.0.1.0/30").unwrap();
        assert_eq!(
            c,
            vec![Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2)]
        );
        assert!(parse_range("10.0.0.5-10.0.0.1").is_err());
        assert!(parse_range("10.0.0.0/4").is_err());
        assert_eq!(
            mac_plus([0x52, 0x54, 0, 0, 0, 0xff], 1),
            [0x52, 0x54, 0, 0, 1, 0]
        );
        let mut r = Reference::default();
        let d = "a".repeat(64);
        from_manifest(
            &format!("{d}  ./undionly.kpxe\n{d} *nodes/n1/kernel\n"),
            &mut r,
        )
        .unwrap();
        assert_eq!(r.shared.get("undionly.kpxe"), Some(&d));
        assert_eq!(r.shared.get("nodes/n1/kernel"), Some(&d));
        assert!(from_manifest("xyz  a\n", &mut r).is_err());
        let j = format!(
            r#"{{"nodes":[{{"id":"n1","macs":["52:54:00:00:00:01"],"files":{{"/ipxe/a.ipxe":"{d}"}}}}]}}"#
        );
        from_manifest(&j, &mut r).unwrap();
        let (id, files) = &r.nodes[&[0x52, 0x54, 0, 0, 0, 1]];
        assert_eq!(id, "n1");
        assert_eq!(files.get("ipxe/a.ipxe"), Some(&d));
        assert_eq!(r.order.len(), 1);
    }
}
