//! The proxy-DHCP decision (sans-IO): is this a PXE client of a node this host serves,
//! and which boot file does it get for its architecture and firmware stage? And where
//! may the answer go ([`route`])?

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::MessageType;
use serde::{Deserialize, Serialize};

use crate::ownership::gate::NotServed;
use crate::store::{BootProfile, MacAddr, Node};
use crate::wire::dhcp::{classify_arch, ArchClass, PxeReply, PxeRequest};
use crate::wire::token::BootToken;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// udp/67: broadcast DISCOVER/REQUEST.
    Dhcp,
    /// udp/4011: PXE boot-server REQUEST.
    BootServer,
}

/// First-stage boot loaders per architecture (TFTP paths in the shared root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootFiles {
    /// x86 BIOS.
    pub bios: String,
    /// x86-64 UEFI.
    pub efi_x64: String,
    /// x86 32-bit UEFI.
    pub efi_ia32: Option<String>,
    /// ARM64 UEFI.
    pub efi_arm64: Option<String>,
    /// ARM32 UEFI.
    pub efi_arm32: Option<String>,
    /// RISC-V 64 UEFI.
    pub efi_riscv64: Option<String>,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            efi_x64: "ipxe.efi".into(),
            efi_ia32: None,
            efi_arm64: Some("ipxe-arm64.efi".into()),
            efi_arm32: None,
            efi_riscv64: None,
        }
    }
}

impl BootFiles {
    /// The loader for an architecture class, if one is configured.
    pub fn for_arch(&self, a: ArchClass) -> Option<&str> {
        match a {
            ArchClass::Bios => Some(&self.bios),
            ArchClass::EfiX64 => Some(&self.efi_x64),
            ArchClass::EfiIa32 => self.efi_ia32.as_deref(),
            ArchClass::EfiArm64 => self.efi_arm64.as_deref(),
            ArchClass::EfiArm32 => self.efi_arm32.as_deref(),
            ArchClass::EfiRiscv64 => self.efi_riscv64.as_deref(),
            ArchClass::Other(_) => None,
        }
    }
}

/// How an iPXE client fetches its node's script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptVia {
    /// `ipxe/<mac>.ipxe` over TFTP from this host (`_t/<token>/ipxe/<mac>.ipxe` when
    /// the node has a boot token).
    #[default]
    Tftp,
    /// `http://<this host>:<port>/ipxe/<mac>.ipxe` (`.../_t/<token>/ipxe/...` when the
    /// node has a boot token).
    Http,
}

/// What this host answers, and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// First-stage loaders.
    pub boot_files: BootFiles,
    /// iPXE script transport.
    pub script_via: ScriptVia,
    /// HTTP port of this host (for HTTP boot and HTTP scripts).
    pub http_port: u16,
    /// Answer nodes whose profile is `local` (their files boot the local disk);
    /// otherwise stay silent so the firmware moves on to the next boot device.
    pub answer_local: bool,
}

/// Why a request gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Not a PXE/HTTP-boot client (plain DHCP traffic).
    NotPxe,
    /// A message type a proxy does not answer (RELEASE, DECLINE...).
    MessageType,
    /// A REQUEST on udp/67 meant for another server.
    OtherServer,
    /// No node has this MAC.
    UnknownMac,
    /// The serve gate refuses this node here (another owner, stale lease, fence).
    NotServed(NotServed),
    /// The node has no boot profile.
    NoProfile,
    /// The node boots locally and local answers are off.
    LocalBoot,
    /// No loader configured for the client's architecture.
    UnsupportedArch,
    /// A `giaddr` that is not a configured relay (`dhcp.relays`).
    UntrustedRelay,
    /// A configured relay's `giaddr` that is this host, loopback, broadcast or multicast.
    BadRelay,
    /// A source address no client can have (broadcast, multicast).
    BadSource,
    /// Too many answers for this MAC lately (`dhcp.answers_per_mac_minute`).
    RateLimited,
}

impl Ignored {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::NotPxe => "not_pxe",
            Ignored::MessageType => "message_type",
            Ignored::OtherServer => "other_server",
            Ignored::UnknownMac => "unknown_mac",
            Ignored::NotServed(r) => r.label(),
            Ignored::NoProfile => "no_profile",
            Ignored::LocalBoot => "local_boot",
            Ignored::UnsupportedArch => "unsupported_arch",
            Ignored::UntrustedRelay => "untrusted_relay",
            Ignored::BadRelay => "bad_relay",
            Ignored::BadSource => "bad_source",
            Ignored::RateLimited => "rate_limited",
        }
    }
}

/// Where an answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the relay agent, at its server port (`giaddr`:67).
    Relay(Ipv4Addr),
    /// Broadcast on the interface the request came in on, to this port (a client
    /// without an address cannot receive unicast).
    Broadcast(u16),
    /// Back to the sender's address and port (a client that has an address: PXE
    /// boot-server requests on udp/4011).
    Unicast(SocketAddrV4),
}

/// Where the answer to a request from `src` with relay field `giaddr` may go, per RFC
/// 2131 4.1 and PXE 2.1: to the relay when `giaddr` is set, else to the client.
///
/// A client never sets `giaddr` itself; only a relay does, and it sends the answer on to
/// the client's segment. So a `giaddr` is honoured only when it is one of `relays` (the
/// operator's list) and is a plausible relay address (not this host, `is_local`, nor
/// loopback, broadcast or multicast). A request naming any other `giaddr` is not
/// answered at all: answering "as direct" (to its source or by broadcast) could not
/// reach a client behind a real relay anyway, and answering the `giaddr` would let anyone
/// point this server's answers at any address.
pub fn route(
    giaddr: Ipv4Addr,
    src: SocketAddrV4,
    port: Port,
    relays: &[Ipv4Addr],
    is_local: impl Fn(Ipv4Addr) -> bool,
) -> Result<Route, Ignored> {
    if !giaddr.is_unspecified() {
        if !relays.contains(&giaddr) {
            return Err(Ignored::UntrustedRelay);
        }
        if giaddr.is_loopback()
            || giaddr.is_broadcast()
            || giaddr.is_multicast()
            || is_local(giaddr)
        {
            return Err(Ignored::BadRelay);
        }
        return Ok(Route::Relay(giaddr));
    }
    let ip = *src.ip();
    if ip.is_unspecified() {
        let p = if port == Port::Dhcp { 68 } else { src.port() };
        return Ok(Route::Broadcast(p));
    }
    if ip.is_broadcast() || ip.is_multicast() {
        return Err(Ignored::BadSource);
    }
    Ok(Route::Unicast(src))
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No answer, and why.
    Ignore(Ignored),
    /// Answer with this reply.
    Answer {
        /// The reply's content.
        reply: PxeReply,
        /// The node answered for.
        node: String,
        /// Which stage the client is at: `loader`, `ipxe` or `http`.
        stage: &'static str,
    },
}

/// Decides the answer to `req` arriving on `port`. `node` is the node with the request's
/// MAC (if any) and `verdict` the serve gate's answer for it
/// ([`crate::ownership::gate::Gate::check`]): the gate alone decides ownership.
pub fn decide(
    req: &PxeRequest,
    port: Port,
    node: Option<&Node>,
    verdict: Result<(), NotServed>,
    policy: &Policy,
    server_ip: Ipv4Addr,
) -> Decision {
    if !(req.is_pxe_client() || req.is_http_client() || req.is_ipxe()) {
        return Decision::Ignore(Ignored::NotPxe);
    }
    let msg_type = match (req.msg_type, port) {
        (MessageType::Discover, Port::Dhcp) => MessageType::Offer,
        (MessageType::Request, Port::BootServer) | (MessageType::Inform, Port::BootServer) => {
            MessageType::Ack
        }
        // A REQUEST broadcast on 67 selects one server's offer; answer only when it is ours.
        (MessageType::Request, Port::Dhcp) if req.server_id == Some(server_ip) => MessageType::Ack,
        (MessageType::Request, Port::Dhcp) => return Decision::Ignore(Ignored::OtherServer),
        _ => return Decision::Ignore(Ignored::MessageType),
    };
    let Some(node) = node else {
        return Decision::Ignore(Ignored::UnknownMac);
    };
    if let Err(r) = verdict {
        return Decision::Ignore(Ignored::NotServed(r));
    }
    match &node.boot_profile {
        None => return Decision::Ignore(Ignored::NoProfile),
        Some(BootProfile::Local) if !policy.answer_local => {
            return Decision::Ignore(Ignored::LocalBoot)
        }
        Some(_) => {}
    }
    let (arch, http_arch) = classify_arch(req.arch.unwrap_or(0));
    let http_base = format!("http://{server_ip}:{}", policy.http_port);
    // The node's boot token, if its files carry one (`node_files = "token"`), names the
    // script as the script names the node's other files.
    let script = format!(
        "{}ipxe/{}.ipxe",
        BootToken::url_prefix(node.boot_token.as_ref()),
        MacAddr(req.mac).dashes()
    );
    let (boot_file, stage, vendor_class) = if req.is_http_client() || http_arch {
        let Some(loader) = policy.boot_files.for_arch(arch) else {
            return Decision::Ignore(Ignored::UnsupportedArch);
        };
        (format!("{http_base}/{loader}"), "http", "HTTPClient")
    } else if req.is_ipxe() {
        let file = match policy.script_via {
            ScriptVia::Tftp => script,
            ScriptVia::Http => format!("{http_base}/{script}"),
        };
        (file, "ipxe", "PXEClient")
    } else {
        let Some(loader) = policy.boot_files.for_arch(arch) else {
            return Decision::Ignore(Ignored::UnsupportedArch);
        };
        (loader.to_string(), "loader", "PXEClient")
    };
    Decision::Answer {
        reply: PxeReply {
            msg_type,
            server_ip,
            tftp_server: server_ip,
            boot_file,
            vendor_class,
        },
        node: node.id.clone(),
        stage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{HandoffState, KernelBoot, ProvisionState};
    use crate::wire::dhcp::{build_request, parse, Architecture};
    use dhcproto::v4::DhcpOption;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x77, 0xe2, 1];
    const IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    fn node(owner: &str, profile: Option<BootProfile>) -> Node {
        Node {
            id: "n1".into(),
            macs: vec![MacAddr(MAC)],
            group: "g".into(),
            arch: None,
            owner: owner.into(),
            epoch: 1,
            provision_state: ProvisionState::Active,
            handoff: HandoffState::None,
            boot_profile: profile,
            last_token: 0,
            stuck: None,
            fence: None,
            addresses: Vec::new(),
            boot_token: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn deploy() -> Option<BootProfile> {
        let d = crate::blobs::Digest::of(b"k");
        Some(BootProfile::Deploy(KernelBoot {
            kernel: d,
            ramdisk: d,
            cmdline: String::new(),
        }))
    }

    fn policy() -> Policy {
        Policy {
            boot_files: BootFiles::default(),
            script_via: ScriptVia::Tftp,
            http_port: 8069,
            answer_local: false,
        }
    }

    fn req(mt: MessageType, vc: &str, arch: u16, ipxe: bool) -> PxeRequest {
        let mut opts = vec![
            DhcpOption::ClassIdentifier(vc.as_bytes().to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
        ];
        if ipxe {
            opts.push(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        parse(&build_request(MAC, 7, mt, opts)).unwrap()
    }

    fn file(d: Decision) -> (String, &'static str, MessageType) {
        match d {
            Decision::Answer { reply, stage, .. } => (reply.boot_file, stage, reply.msg_type),
            Decision::Ignore(r) => panic!("ignored: {r:?}"),
        }
    }

    #[test]
    fn first_stage_by_arch_then_ipxe_script() {
        let n = node("h1", deploy());
        let p = policy();
        let bios = req(
            MessageType::Discover,
            "PXEClient:Arch:00000:UNDI:002001",
            0,
            false,
        );
        assert_eq!(
            file(decide(&bios, Port::Dhcp, Some(&n), Ok(()), &p, IP)),
            ("undionly.kpxe".into(), "loader", MessageType::Offer)
        );
        let efi = req(
            MessageType::Request,
            "PXEClient:Arch:00007:UNDI:003000",
            7,
            false,
        );
        assert_eq!(
            file(decide(&efi, Port::BootServer, Some(&n), Ok(()), &p, IP)),
            ("ipxe.efi".into(), "loader", MessageType::Ack)
        );
        let ipxe = req(
            MessageType::Discover,
            "PXEClient:Arch:00007:UNDI:003010",
            7,
            true,
        );
        assert_eq!(
            file(decide(&ipxe, Port::Dhcp, Some(&n), Ok(()), &p, IP)).0,
            "ipxe/52-54-00-77-e2-01.ipxe"
        );
        let mut ph = policy();
        ph.script_via = ScriptVia::Http;
        assert_eq!(
            file(decide(&ipxe, Port::Dhcp, Some(&n), Ok(()), &ph, IP)).0,
            "http://10.77.0.1:8069/ipxe/52-54-00-77-e2-01.ipxe"
        );
        // A node whose files carry a boot token gets its script named with it too.
        let tok = "00112233445566778899aabbccddeeff";
        let mut tn = n.clone();
        tn.boot_token = Some(tok.parse().unwrap());
        assert_eq!(
            file(decide(&ipxe, Port::Dhcp, Some(&tn), Ok(()), &ph, IP)).0,
            format!("http://10.77.0.1:8069/_t/{tok}/ipxe/52-54-00-77-e2-01.ipxe")
        );
        assert_eq!(
            file(decide(&ipxe, Port::Dhcp, Some(&tn), Ok(()), &p, IP)).0,
            format!("_t/{tok}/ipxe/52-54-00-77-e2-01.ipxe")
        );
        let http = req(
            MessageType::Discover,
            "HTTPClient:Arch:00016:UNDI:003016",
            16,
            false,
        );
        let d = decide(&http, Port::Dhcp, Some(&n), Ok(()), &p, IP);
        let Decision::Answer { reply, stage, .. } = d else {
            panic!()
        };
        assert_eq!(
            (reply.boot_file.as_str(), stage, reply.vendor_class),
            ("http://10.77.0.1:8069/ipxe.efi", "http", "HTTPClient")
        );
    }

    #[test]
    fn answers_go_only_where_the_spec_says() {
        const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
        let relay = Ipv4Addr::new(10, 9, 0, 1);
        let local = |ip: Ipv4Addr| ip == ME;
        let direct = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 4011);
        // Direct: broadcast to a client without an address, unicast back otherwise.
        assert_eq!(
            route(Ipv4Addr::UNSPECIFIED, direct, Port::Dhcp, &[], local),
            Ok(Route::Broadcast(68))
        );
        assert_eq!(
            route(Ipv4Addr::UNSPECIFIED, client, Port::BootServer, &[], local),
            Ok(Route::Unicast(client))
        );
        // The reflections: a giaddr without configured relays is never answered.
        for g in [
            Ipv4Addr::BROADCAST,
            Ipv4Addr::LOCALHOST,
            ME,
            Ipv4Addr::new(203, 0, 113, 7),
            relay,
        ] {
            for src in [direct, client] {
                assert_eq!(
                    route(g, src, Port::Dhcp, &[], local),
                    Err(Ignored::UntrustedRelay),
                    "giaddr {g}"
                );
            }
        }
        // A configured relay gets the answer; another giaddr still does not.
        assert_eq!(
            route(relay, client, Port::Dhcp, &[relay], local),
            Ok(Route::Relay(relay))
        );
        assert_eq!(
            route(
                Ipv4Addr::new(10, 9, 0, 2),
                client,
                Port::Dhcp,
                &[relay],
                local
            ),
            Err(Ignored::UntrustedRelay)
        );
        // Even when listed (a bad config), never this host, loopback or broadcast.
        for g in [ME, Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST] {
            assert_eq!(
                route(g, client, Port::Dhcp, &[g], local),
                Err(Ignored::BadRelay)
            );
        }
        // No client sends from a broadcast address.
        let bogus = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        assert_eq!(
            route(Ipv4Addr::UNSPECIFIED, bogus, Port::Dhcp, &[], local),
            Err(Ignored::BadSource)
        );
    }

    #[test]
    fn who_is_ignored() {
        let p = policy();
        let r = req(
            MessageType::Discover,
            "PXEClient:Arch:00000:UNDI:002001",
            0,
            false,
        );
        let dec = |n: Option<&Node>, v| decide(&r, Port::Dhcp, n, v, &p, IP);
        assert_eq!(dec(None, Ok(())), Decision::Ignore(Ignored::UnknownMac));
        for refusal in [
            NotServed::NotOwner,
            NotServed::LeaseStale,
            NotServed::AwaitingOldOwner,
        ] {
            assert_eq!(
                dec(Some(&node("h1", deploy())), Err(refusal)),
                Decision::Ignore(Ignored::NotServed(refusal))
            );
        }
        assert_eq!(
            dec(Some(&node("h1", None)), Ok(())),
            Decision::Ignore(Ignored::NoProfile)
        );
        assert_eq!(
            dec(Some(&node("h1", Some(BootProfile::Local))), Ok(())),
            Decision::Ignore(Ignored::LocalBoot)
        );
        let mut pl = policy();
        pl.answer_local = true;
        assert!(matches!(
            decide(
                &r,
                Port::Dhcp,
                Some(&node("h1", Some(BootProfile::Local))),
                Ok(()),
                &pl,
                IP
            ),
            Decision::Answer { .. }
        ));
        let plain = req(MessageType::Discover, "MSFT 5.0", 0, false);
        assert_eq!(
            decide(
                &plain,
                Port::Dhcp,
                Some(&node("h1", deploy())),
                Ok(()),
                &p,
                IP
            ),
            Decision::Ignore(Ignored::NotPxe)
        );
        let rel = req(MessageType::Release, "PXEClient", 0, false);
        assert_eq!(
            decide(
                &rel,
                Port::Dhcp,
                Some(&node("h1", deploy())),
                Ok(()),
                &p,
                IP
            ),
            Decision::Ignore(Ignored::MessageType)
        );
        let other = req(MessageType::Request, "PXEClient", 0, false);
        assert_eq!(
            decide(
                &other,
                Port::Dhcp,
                Some(&node("h1", deploy())),
                Ok(()),
                &p,
                IP
            ),
            Decision::Ignore(Ignored::OtherServer)
        );
        let weird = req(MessageType::Discover, "PXEClient", 0x99, false);
        let n = node("h1", deploy());
        assert_eq!(
            decide(&weird, Port::Dhcp, Some(&n), Ok(()), &p, IP),
            Decision::Ignore(Ignored::UnsupportedArch)
        );
    }
}
