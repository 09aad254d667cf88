//! The PXE view of DHCPv4 (PXE 2.1, RFC 2132, RFC 4578, RFC 3004): what a boot client
//! asks for, and the proxy-DHCP answer. Decoding and encoding of the message itself is
//! dhcproto's; this module adds the PXE options (60, 77, 93, 94, 97, 175, and option 43's
//! PXE sub-options) as typed fields. No sockets, no clocks; never panics on any input.

use std::net::Ipv4Addr;

use dhcproto::v4::{
    self, DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

/// Largest datagram decoded; larger ones are refused before parsing.
pub const MAX_DHCP_LEN: usize = 4096;
/// Smallest BOOTP message (fixed header + magic cookie).
pub const MIN_DHCP_LEN: usize = 240;

/// PXE option 43 sub-option: discovery control.
pub const PXE_DISCOVERY_CONTROL: u8 = 6;
/// PXE option 43 sub-option: boot item.
pub const PXE_BOOT_ITEM: u8 = 71;
/// Discovery control bit 3: boot the file named in this offer, no menu or discovery.
pub const DISCOVERY_USE_BOOTFILE: u8 = 0x08;

/// Why a datagram is not a usable DHCP boot request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    /// Shorter than a BOOTP header.
    #[error("too short for DHCP ({0} bytes)")]
    TooShort(usize),
    /// Longer than we decode.
    #[error("too long for DHCP ({0} bytes)")]
    TooLong(usize),
    /// dhcproto could not decode it (bad lengths, overflowing options...).
    #[error("malformed DHCP message: {0}")]
    Malformed(String),
    /// A BOOTREPLY (from another server).
    #[error("not a BOOTREQUEST")]
    NotRequest,
    /// A BOOTREQUEST where a server's answer was expected.
    #[error("not a BOOTREPLY")]
    NotReply,
    /// Not Ethernet (htype 1, hlen 6).
    #[error("hardware type {htype} / length {hlen} is not Ethernet")]
    NotEthernet {
        /// htype.
        htype: u8,
        /// hlen.
        hlen: u8,
    },
    /// Plain BOOTP, no DHCP message type.
    #[error("no DHCP message type (plain BOOTP)")]
    NoMessageType,
    /// An option whose length its RFC fixes has another length.
    #[error("option {code} has length {len}, which its definition does not allow")]
    BadOptionLength {
        /// Option code.
        code: u8,
        /// Its length (all its RFC 3396 parts together).
        len: usize,
    },
}

impl DhcpError {
    /// Short label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DhcpError::TooShort(_) => "too_short",
            DhcpError::TooLong(_) => "too_long",
            DhcpError::Malformed(_) => "malformed",
            DhcpError::NotRequest => "not_request",
            DhcpError::NotReply => "not_reply",
            DhcpError::NotEthernet { .. } => "not_ethernet",
            DhcpError::NoMessageType => "no_message_type",
            DhcpError::BadOptionLength { .. } => "bad_option_length",
        }
    }
}

/// Client architecture classes (option 93, IANA "Processor Architecture Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchClass {
    /// x86 BIOS (0).
    Bios,
    /// x86 UEFI, 32-bit (6).
    EfiIa32,
    /// x86-64 UEFI (7, 9).
    EfiX64,
    /// ARM 32-bit UEFI (10).
    EfiArm32,
    /// ARM 64-bit UEFI (11).
    EfiArm64,
    /// RISC-V 64-bit UEFI (0x1b).
    EfiRiscv64,
    /// Anything else, with its number.
    Other(u16),
}

/// Architecture class and whether the client boots over HTTP (UEFI HTTP boot).
pub fn classify_arch(arch: u16) -> (ArchClass, bool) {
    match arch {
        0 => (ArchClass::Bios, false),
        6 => (ArchClass::EfiIa32, false),
        7 | 9 => (ArchClass::EfiX64, false),
        10 => (ArchClass::EfiArm32, false),
        11 => (ArchClass::EfiArm64, false),
        0x0f => (ArchClass::EfiIa32, true),
        0x10 => (ArchClass::EfiX64, true),
        0x12 => (ArchClass::EfiArm32, true),
        0x13 => (ArchClass::EfiArm64, true),
        0x1b => (ArchClass::EfiRiscv64, false),
        0x1c => (ArchClass::EfiRiscv64, true),
        n => (ArchClass::Other(n), false),
    }
}

impl ArchClass {
    /// Short label for logs, metrics and config keys.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchClass::Bios => "bios",
            ArchClass::EfiIa32 => "efi_ia32",
            ArchClass::EfiX64 => "efi_x64",
            ArchClass::EfiArm32 => "efi_arm32",
            ArchClass::EfiArm64 => "efi_arm64",
            ArchClass::EfiRiscv64 => "efi_riscv64",
            ArchClass::Other(_) => "other",
        }
    }
}

/// A boot client's request, as far as PXE cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeRequest {
    /// DHCP message type.
    pub msg_type: MessageType,
    /// Transaction id (echoed).
    pub xid: u32,
    /// Seconds since the client started (echoed).
    pub secs: u16,
    /// The client asked for broadcast answers.
    pub broadcast: bool,
    /// Client's address, when it has one (4011 requests).
    pub ciaddr: Ipv4Addr,
    /// Relay agent, if relayed.
    pub giaddr: Ipv4Addr,
    /// Client MAC.
    pub mac: [u8; 6],
    /// Option 93, first entry.
    pub arch: Option<u16>,
    /// Option 60.
    pub vendor_class: Option<String>,
    /// Option 77, raw.
    pub user_class: Option<Vec<u8>>,
    /// Option 175 (iPXE's own encapsulated options) is present.
    pub has_ipxe_options: bool,
    /// Option 97, raw (type byte + 16-byte UUID).
    pub uuid: Option<Vec<u8>>,
    /// Option 94: (type, major, minor).
    pub nii: Option<(u8, u8, u8)>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 50: the address the client asks its address server for.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 43 sub-option 71: (type, layer).
    pub boot_item: Option<(u16, u16)>,
    /// Option 57.
    pub max_size: Option<u16>,
}

impl PxeRequest {
    /// Option 60 starts with `PXEClient`.
    pub fn is_pxe_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient"))
    }

    /// Option 60 starts with `HTTPClient` (UEFI HTTP boot).
    pub fn is_http_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("HTTPClient"))
    }

    /// iPXE: option 77 says `iPXE`, or option 175 is present.
    pub fn is_ipxe(&self) -> bool {
        self.has_ipxe_options
            || self
                .user_class
                .as_deref()
                .is_some_and(|u| u.windows(4).any(|w| w == b"iPXE"))
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Parses option 43's PXE sub-options for the boot item (71).
fn boot_item(v: &[u8]) -> Option<(u16, u16)> {
    let mut i = 0;
    while i + 1 < v.len() {
        let (code, len) = (v[i], usize::from(v[i + 1]));
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let data = v.get(i + 2..i + 2 + len)?;
        if code == PXE_BOOT_ITEM && len == 4 {
            return Some((
                u16::from_be_bytes([data[0], data[1]]),
                u16::from_be_bytes([data[2], data[3]]),
            ));
        }
        i += 2 + len;
    }
    None
}

/// Whether `len` is a valid length for option `code`, for the options whose length
/// dhcproto 0.15 only checks with `debug_assert!` (found by the `dhcp_request` fuzzer:
/// a debug build panicked; a release build read a short option as "stop decoding",
/// dropping the options after it, and read a long one's first bytes as its value).
fn option_length_ok(code: u8, len: usize) -> bool {
    match code {
        // Rapid Commit (RFC 4039).
        80 => len == 0,
        // Client FQDN (RFC 4702): flags, two rcodes, then the name.
        81 => len >= 3,
        // Client Network Interface Identifier (RFC 4578): type, major, minor.
        94 => len == 3,
        // Bulk leasequery times (RFC 6926).
        152..=155 => len == 4,
        _ => true,
    }
}

/// Checks the option area `opts` (after the magic cookie) with [`option_length_ok`]
/// before dhcproto decodes it. Consecutive instances of one option are one value
/// (RFC 3396), as dhcproto joins them. A truncated option ends the walk: the decoder
/// stops there too.
fn check_option_lengths(opts: &[u8]) -> Result<(), DhcpError> {
    let mut i = 0;
    while let Some(&code) = opts.get(i) {
        match code {
            255 => break,
            0 => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let mut len = 0;
        while opts.get(i) == Some(&code) {
            let Some(&part) = opts.get(i + 1) else {
                return Ok(());
            };
            let part = usize::from(part);
            if i + 2 + part > opts.len() {
                return Ok(());
            }
            len += part;
            i += 2 + part;
        }
        if !option_length_ok(code, len) {
            return Err(DhcpError::BadOptionLength { code, len });
        }
    }
    Ok(())
}

/// Decodes a datagram sent to a DHCP or PXE boot-server port.
///
/// dhcproto is not documented as panic-free on hostile input, so a panic inside the
/// decoder is contained here and answered as [`DhcpError::Malformed`].
pub fn parse(buf: &[u8]) -> Result<PxeRequest, DhcpError> {
    std::panic::catch_unwind(|| parse_uncontained(buf))
        .unwrap_or_else(|_| Err(DhcpError::Malformed("decoder panicked".into())))
}

/// [`parse`] without the panic guard: what the fuzz target calls, so that a panic
/// anywhere in decoding reaches the fuzzer instead of being turned into an error.
pub fn parse_uncontained(buf: &[u8]) -> Result<PxeRequest, DhcpError> {
    if buf.len() < MIN_DHCP_LEN {
        return Err(DhcpError::TooShort(buf.len()));
    }
    if buf.len() > MAX_DHCP_LEN {
        return Err(DhcpError::TooLong(buf.len()));
    }
    check_option_lengths(&buf[MIN_DHCP_LEN..])?;
    let m =
        Message::decode(&mut Decoder::new(buf)).map_err(|e| DhcpError::Malformed(e.to_string()))?;
    if m.opcode() != Opcode::BootRequest {
        return Err(DhcpError::NotRequest);
    }
    let htype: u8 = m.htype().into();
    if m.htype() != HType::Eth || m.hlen() != 6 || m.chaddr().len() < 6 {
        return Err(DhcpError::NotEthernet {
            htype,
            hlen: m.hlen(),
        });
    }
    let msg_type = m.opts().msg_type().ok_or(DhcpError::NoMessageType)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&m.chaddr()[..6]);
    let opts = m.opts();
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    let bytes = |code| match opts.get(code) {
        Some(DhcpOption::ClassIdentifier(v))
        | Some(DhcpOption::UserClass(v))
        | Some(DhcpOption::ClientMachineIdentifier(v))
        | Some(DhcpOption::VendorExtensions(v)) => Some(v.clone()),
        _ => None,
    };
    Ok(PxeRequest {
        msg_type,
        xid: m.xid(),
        secs: m.secs(),
        broadcast: m.flags().broadcast(),
        ciaddr: m.ciaddr(),
        giaddr: m.giaddr(),
        mac,
        arch,
        vendor_class: bytes(OptionCode::ClassIdentifier)
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
        user_class: bytes(OptionCode::UserClass),
        has_ipxe_options: opts.get(OptionCode::Unknown(175)).is_some(),
        uuid: bytes(OptionCode::ClientMachineIdentifier),
        nii: match opts.get(OptionCode::ClientNetworkInterface) {
            Some(DhcpOption::ClientNetworkInterface(a, b, c)) => Some((*a, *b, *c)),
            _ => None,
        },
        server_id: match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        },
        requested_ip: match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        },
        boot_item: bytes(OptionCode::VendorExtensions)
            .as_deref()
            .and_then(boot_item),
        max_size: match opts.get(OptionCode::MaxMessageSize) {
            Some(DhcpOption::MaxMessageSize(n)) => Some(*n),
            _ => None,
        },
    })
}

/// What a proxy-DHCP answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeReply {
    /// OFFER (to a DISCOVER on port 67) or ACK (to a REQUEST).
    pub msg_type: MessageType,
    /// This server's address on the client's segment (option 54).
    pub server_ip: Ipv4Addr,
    /// Where the boot file is fetched from (siaddr, option 66, sname).
    pub tftp_server: Ipv4Addr,
    /// Boot file: a TFTP path or an HTTP URL (file field and option 67).
    pub boot_file: String,
    /// Option 60 to send back: `PXEClient` or `HTTPClient`.
    pub vendor_class: &'static str,
}

/// Builds the answer to `req`: never an address lease (yiaddr 0), PXE options echoed
/// as the PXE spec requires (97), discovery control telling the firmware to boot the
/// named file directly.
pub fn build_reply(req: &PxeRequest, r: &PxeReply) -> Vec<u8> {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid)
        .set_secs(req.secs)
        .set_flags(if req.broadcast {
            Flags::default().set_broadcast()
        } else {
            Flags::default()
        })
        .set_chaddr(&req.mac)
        .set_ciaddr(Ipv4Addr::UNSPECIFIED)
        .set_yiaddr(Ipv4Addr::UNSPECIFIED)
        .set_siaddr(r.tftp_server)
        .set_giaddr(req.giaddr);
    // Boot file in the BOOTP field and in option 67: firmware reads one or the other.
    if r.boot_file.len() < 128 {
        m.set_fname_str(&r.boot_file);
    }
    m.set_sname_str(r.tftp_server.to_string());
    let o = m.opts_mut();
    o.insert(DhcpOption::ServerIdentifier(r.server_ip));
    o.insert(DhcpOption::ClassIdentifier(
        r.vendor_class.as_bytes().to_vec(),
    ));
    if let Some(u) = &req.uuid {
        o.insert(DhcpOption::ClientMachineIdentifier(u.clone()));
    }
    o.insert(DhcpOption::TFTPServerName(
        r.tftp_server.to_string().into_bytes(),
    ));
    o.insert(DhcpOption::BootfileName(r.boot_file.as_bytes().to_vec()));
    if r.vendor_class == "PXEClient" {
        let mut v43 = vec![PXE_DISCOVERY_CONTROL, 1, DISCOVERY_USE_BOOTFILE];
        if let Some((ty, layer)) = req.boot_item {
            v43.extend_from_slice(&[PXE_BOOT_ITEM, 4]);
            v43.extend_from_slice(&ty.to_be_bytes());
            v43.extend_from_slice(&layer.to_be_bytes());
        }
        v43.push(255);
        o.insert(DhcpOption::VendorExtensions(v43));
    }
    let mut out = Vec::with_capacity(400);
    let mut e = Encoder::new(&mut out);
    if m.encode(&mut e).is_err() {
        return Vec::new();
    }
    // dhcproto writes options in code order; put the message type first, where some
    // older PXE ROMs look for it.
    let mt: u8 = u8::from(r.msg_type);
    out.splice(MIN_DHCP_LEN..MIN_DHCP_LEN, [53u8, 1, mt]);
    // Pad to the classic 300-byte BOOTP minimum that old clients expect.
    if out.len() < 300 {
        out.resize(300, 0);
    }
    out
}

/// Builds a client request (for tests and tools).
pub fn build_request(
    mac: [u8; 6],
    xid: u32,
    msg_type: MessageType,
    opts: Vec<DhcpOption>,
) -> Vec<u8> {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_xid(xid)
        .set_chaddr(&mac);
    m.opts_mut().insert(DhcpOption::MessageType(msg_type));
    for opt in opts {
        m.opts_mut().insert(opt);
    }
    let mut out = Vec::new();
    let _ = m.encode(&mut Encoder::new(&mut out));
    out
}

/// Re-exports for building options in tests.
pub use v4::Architecture;

/// An option 175 marker, as iPXE sends.
pub fn ipxe_option_175() -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(
        OptionCode::Unknown(175),
        vec![0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e],
    ))
}

/// A boot client's DHCP message as firmware sends it (the client side of [`parse`]):
/// what `baton storm` emits for each simulated machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    /// DISCOVER, REQUEST or INFORM.
    pub msg_type: MessageType,
    /// Transaction id.
    pub xid: u32,
    /// Seconds since the client started.
    pub secs: u16,
    /// Ask for broadcast answers (a client without an address cannot receive unicast).
    pub broadcast: bool,
    /// The client's address (4011 requests), else 0.0.0.0.
    pub ciaddr: Ipv4Addr,
    /// Client MAC.
    pub mac: [u8; 6],
    /// Option 93.
    pub arch: u16,
    /// Option 94: (type, major, minor).
    pub nii: (u8, u8, u8),
    /// Option 60.
    pub vendor_class: String,
    /// Option 77 (iPXE sends `iPXE`).
    pub user_class: Option<Vec<u8>>,
    /// Option 175 payload (iPXE's feature list), if any.
    pub ipxe_options: Option<Vec<u8>>,
    /// Option 97: type byte + 16-byte UUID.
    pub uuid: [u8; 17],
    /// Option 57.
    pub max_size: u16,
    /// Option 50 (REQUEST of an offered address).
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54 (which server's offer a REQUEST selects, or the 4011 server).
    pub server_id: Option<Ipv4Addr>,
    /// Option 43 sub-option 71: (boot server type, layer), for 4011 requests.
    pub boot_item: Option<(u16, u16)>,
}

/// Encodes a client message (options 53, 57, 93, 94, 60, 77, 55, 175, 61, 97, 50, 54, 43).
pub fn emit_client(c: &ClientMessage) -> Vec<u8> {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_xid(c.xid)
        .set_secs(c.secs)
        .set_flags(if c.broadcast {
            Flags::default().set_broadcast()
        } else {
            Flags::default()
        })
        .set_ciaddr(c.ciaddr)
        .set_chaddr(&c.mac);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(c.msg_type));
    o.insert(DhcpOption::MaxMessageSize(c.max_size));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        c.arch,
    )));
    o.insert(DhcpOption::ClientNetworkInterface(
        c.nii.0, c.nii.1, c.nii.2,
    ));
    o.insert(DhcpOption::ClassIdentifier(
        c.vendor_class.as_bytes().to_vec(),
    ));
    if let Some(u) = &c.user_class {
        o.insert(DhcpOption::UserClass(u.clone()));
    }
    o.insert(DhcpOption::ParameterRequestList(
        [1u8, 3, 6, 12, 43, 60, 66, 67, 128, 129, 130, 131, 175]
            .into_iter()
            .map(OptionCode::from)
            .collect(),
    ));
    if let Some(v) = &c.ipxe_options {
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            v.clone(),
        )));
    }
    let mut cid = vec![1u8];
    cid.extend_from_slice(&c.mac);
    o.insert(DhcpOption::ClientIdentifier(cid));
    o.insert(DhcpOption::ClientMachineIdentifier(c.uuid.to_vec()));
    if let Some(ip) = c.requested_ip {
        o.insert(DhcpOption::RequestedIpAddress(ip));
    }
    if let Some(ip) = c.server_id {
        o.insert(DhcpOption::ServerIdentifier(ip));
    }
    if let Some((ty, layer)) = c.boot_item {
        let mut v43 = vec![PXE_BOOT_ITEM, 4];
        v43.extend_from_slice(&ty.to_be_bytes());
        v43.extend_from_slice(&layer.to_be_bytes());
        v43.push(255);
        o.insert(DhcpOption::VendorExtensions(v43));
    }
    let mut out = Vec::with_capacity(400);
    if m.encode(&mut Encoder::new(&mut out)).is_err() {
        return Vec::new();
    }
    if out.len() < 300 {
        out.resize(300, 0);
    }
    out
}

/// A server's answer (BOOTREPLY) as a boot client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// OFFER, ACK, NAK...
    pub msg_type: MessageType,
    /// Transaction id.
    pub xid: u32,
    /// Client MAC it is meant for.
    pub mac: [u8; 6],
    /// Address offered (0.0.0.0 from a proxy).
    pub yiaddr: Ipv4Addr,
    /// Next server (siaddr).
    pub siaddr: Ipv4Addr,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 60 (`PXEClient` or `HTTPClient` from a PXE server).
    pub vendor_class: Option<String>,
    /// Boot file: option 67, else the BOOTP file field.
    pub boot_file: Option<String>,
    /// Option 66.
    pub tftp_server_name: Option<String>,
    /// Option 43 sub-option 6 (PXE discovery control), when option 43 is present.
    pub discovery_control: Option<u8>,
    /// Option 43 carries a boot server list or a boot menu (sub-options 8 or 9).
    pub has_boot_menu: bool,
    /// Boot server type of the first boot menu item (option 43 sub-option 9).
    pub menu_item: Option<u16>,
}

impl ServerReply {
    /// A PXE answer: it speaks to PXE clients (option 60 `PXEClient`/`HTTPClient`) or
    /// names a boot file.
    pub fn is_pxe(&self) -> bool {
        self.boot_file.is_some()
            || self
                .vendor_class
                .as_deref()
                .is_some_and(|v| v.starts_with("PXEClient") || v.starts_with("HTTPClient"))
    }

    /// It leases an address.
    pub fn leases_address(&self) -> bool {
        !self.yiaddr.is_unspecified()
    }
}

/// Walks option 43's PXE sub-options: (discovery control, boot servers or menu present,
/// first menu item's type).
fn pxe_sub_options(v: &[u8]) -> (Option<u8>, bool, Option<u16>) {
    let (mut control, mut menu, mut item) = (None, false, None);
    let mut i = 0;
    while i + 1 < v.len() {
        let (code, len) = (v[i], usize::from(v[i + 1]));
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let Some(data) = v.get(i + 2..i + 2 + len) else {
            break;
        };
        match code {
            PXE_DISCOVERY_CONTROL if len == 1 => control = Some(data[0]),
            8 => menu = true,
            9 => {
                menu = true;
                if len >= 2 && item.is_none() {
                    item = Some(u16::from_be_bytes([data[0], data[1]]));
                }
            }
            _ => {}
        }
        i += 2 + len;
    }
    (control, menu, item)
}

/// Decodes a server's answer; never panics.
pub fn parse_reply(buf: &[u8]) -> Result<ServerReply, DhcpError> {
    if buf.len() < MIN_DHCP_LEN {
        return Err(DhcpError::TooShort(buf.len()));
    }
    if buf.len() > MAX_DHCP_LEN {
        return Err(DhcpError::TooLong(buf.len()));
    }
    let m = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(buf)))
        .map_err(|_| DhcpError::Malformed("decoder panicked".into()))?
        .map_err(|e| DhcpError::Malformed(e.to_string()))?;
    if m.opcode() != Opcode::BootReply {
        return Err(DhcpError::NotReply);
    }
    if m.chaddr().len() < 6 {
        return Err(DhcpError::NotEthernet {
            htype: m.htype().into(),
            hlen: m.hlen(),
        });
    }
    let msg_type = m.opts().msg_type().ok_or(DhcpError::NoMessageType)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&m.chaddr()[..6]);
    let opts = m.opts();
    let text = |v: &[u8]| {
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        String::from_utf8_lossy(&v[..end]).into_owned()
    };
    let boot_file = match opts.get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(v)) => Some(text(v)),
        _ => m.fname().map(text),
    }
    .filter(|f| !f.is_empty());
    let (discovery_control, has_boot_menu, menu_item) = match opts.get(OptionCode::VendorExtensions)
    {
        Some(DhcpOption::VendorExtensions(v)) => pxe_sub_options(v),
        _ => (None, false, None),
    };
    Ok(ServerReply {
        msg_type,
        xid: m.xid(),
        mac,
        yiaddr: m.yiaddr(),
        siaddr: m.siaddr(),
        server_id: match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        },
        vendor_class: match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => Some(text(v)),
            _ => None,
        },
        boot_file,
        tftp_server_name: match opts.get(OptionCode::TFTPServerName) {
            Some(DhcpOption::TFTPServerName(v)) => Some(text(v)).filter(|s| !s.is_empty()),
            _ => None,
        },
        discovery_control,
        has_boot_menu,
        menu_item,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captures() -> Option<Vec<crate::pcap::UdpRecord>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/captures");
        let mut all = Vec::new();
        for f in [
            "proxy-bios-marker.pcap",
            "proxy-uefi-ipxe-marker.pcap",
            "proxy-uefi-edk2-marker.pcap",
        ] {
            let bytes = std::fs::read(dir.join(f)).ok()?;
            all.extend(crate::pcap::read_udp(&bytes).ok()?);
        }
        Some(all)
    }

    #[test]
    fn parses_real_firmware_requests() {
        let Some(recs) = captures() else {
            assert!(std::env::var_os("CI").is_none(), "captures missing in CI");
            eprintln!("SKIPPED: ../shared/captures not present");
            return;
        };
        let reqs: Vec<PxeRequest> = recs
            .iter()
            .filter(|r| matches!(r.dst.port(), 67 | 4011))
            .filter_map(|r| parse(&r.payload).ok())
            .collect();
        assert!(reqs.len() >= 6, "found {} requests", reqs.len());
        for r in &reqs {
            assert_eq!(r.mac_string(), "52:54:00:77:e2:01");
        }
        let bios = reqs
            .iter()
            .find(|r| r.arch == Some(0))
            .expect("a BIOS request");
        assert!(bios.is_pxe_client() && bios.is_ipxe());
        assert_eq!(bios.nii, Some((1, 2, 1)));
        assert_eq!(bios.uuid.as_ref().map(|u| u.len()), Some(17));
        let edk2 = reqs
            .iter()
            .find(|r| r.arch == Some(7) && !r.is_ipxe())
            .expect("an EDK2 request");
        assert_eq!(classify_arch(7), (ArchClass::EfiX64, false));
        assert!(edk2.is_pxe_client());
        // The 4011 request of the BIOS flow asks for boot item 0x8000, layer 0.
        assert!(reqs.iter().any(|r| r.boot_item == Some((0x8000, 0))));
        // Server answers in the captures are BOOTREPLYs: refused as requests.
        let replies = recs
            .iter()
            .filter(|r| r.src.port() == 67 && r.dst.port() == 68);
        for r in replies {
            assert_eq!(parse(&r.payload), Err(DhcpError::NotRequest));
        }
    }

    #[test]
    fn client_messages_round_trip_and_real_replies_parse() {
        let c = ClientMessage {
            msg_type: MessageType::Request,
            xid: 9,
            secs: 3,
            broadcast: false,
            ciaddr: Ipv4Addr::new(10, 0, 0, 9),
            mac: [0x52, 0x54, 0, 1, 2, 3],
            arch: 7,
            nii: (1, 3, 0),
            vendor_class: "PXEClient:Arch:00007:UNDI:003000".into(),
            user_class: Some(b"iPXE".to_vec()),
            ipxe_options: Some(vec![0xb1, 5, 1, 0x80, 0x86, 0x10, 0x0e]),
            uuid: [0; 17],
            max_size: 1472,
            requested_ip: None,
            server_id: Some(Ipv4Addr::new(10, 0, 0, 1)),
            boot_item: Some((0x8000, 0)),
        };
        let r = parse(&emit_client(&c)).unwrap();
        assert_eq!(
            (r.msg_type, r.xid, r.secs, r.ciaddr),
            (MessageType::Request, 9, 3, c.ciaddr)
        );
        assert!(r.is_pxe_client() && r.is_ipxe() && !r.broadcast);
        assert_eq!(
            (r.arch, r.nii, r.boot_item),
            (Some(7), Some((1, 3, 0)), Some((0x8000, 0)))
        );
        assert_eq!(r.server_id, c.server_id);
        // Baton's own answer, read back by a client.
        let out = build_reply(
            &r,
            &PxeReply {
                msg_type: MessageType::Ack,
                server_ip: Ipv4Addr::new(10, 0, 0, 1),
                tftp_server: Ipv4Addr::new(10, 0, 0, 1),
                boot_file: "ipxe.efi".into(),
                vendor_class: "PXEClient",
            },
        );
        let a = parse_reply(&out).unwrap();
        assert_eq!(a.boot_file.as_deref(), Some("ipxe.efi"));
        assert_eq!(a.discovery_control, Some(DISCOVERY_USE_BOOTFILE));
        assert!(a.is_pxe() && !a.leases_address());
        assert_eq!(parse_reply(&emit_client(&c)), Err(DhcpError::NotReply));
        // dnsmasq's proxy offer and the address server's offer in the BIOS capture.
        let Some(recs) = captures() else {
            assert!(std::env::var_os("CI").is_none(), "captures missing in CI");
            eprintln!("SKIPPED: ../shared/captures not present");
            return;
        };
        let replies: Vec<ServerReply> = recs
            .iter()
            .filter(|r| r.src.port() == 67 || r.src.port() == 4011)
            .filter_map(|r| parse_reply(&r.payload).ok())
            .collect();
        let proxy = replies
            .iter()
            .find(|r| r.msg_type == MessageType::Offer && !r.leases_address())
            .expect("a proxy offer");
        assert!(proxy.is_pxe() && proxy.has_boot_menu);
        assert_eq!(proxy.discovery_control, Some(3));
        assert_eq!(proxy.menu_item, Some(0x8000));
        assert!(replies.iter().any(|r| r.leases_address() && !r.is_pxe()));
    }

    #[test]
    fn reply_fields() {
        let req_bytes = build_request(
            [0x52, 0x54, 0, 1, 2, 3],
            0x1234,
            MessageType::Discover,
            vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003000".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture::from(7u16)),
                DhcpOption::ClientMachineIdentifier(vec![0; 17]),
            ],
        );
        let req = parse(&req_bytes).unwrap();
        assert!(!req.is_ipxe());
        let out = build_reply(
            &req,
            &PxeReply {
                msg_type: MessageType::Offer,
                server_ip: Ipv4Addr::new(10, 0, 0, 1),
                tftp_server: Ipv4Addr::new(10, 0, 0, 1),
                boot_file: "ipxe.efi".into(),
                vendor_class: "PXEClient",
            },
        );
        assert_eq!(&out[240..243], &[53, 1, 2], "message type first");
        let m = Message::decode(&mut Decoder::new(&out)).unwrap();
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), 0x1234);
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.siaddr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            m.fname_str().unwrap().unwrap().trim_end_matches('\0'),
            "ipxe.efi"
        );
        assert_eq!(&out[108..117], b"ipxe.efi\0");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert!(
            matches!(m.opts().get(OptionCode::ClientMachineIdentifier), Some(DhcpOption::ClientMachineIdentifier(v)) if v.len() == 17)
        );
        assert!(
            matches!(m.opts().get(OptionCode::VendorExtensions), Some(DhcpOption::VendorExtensions(v)) if v[..3] == [6, 1, 8])
        );
        assert!(out.len() >= 300);
    }

    #[test]
    fn hostile_input_is_refused_not_panicking() {
        assert_eq!(parse(&[0; 10]), Err(DhcpError::TooShort(10)));
        assert_eq!(parse(&vec![0; 5000]), Err(DhcpError::TooLong(5000)));
        let mut ok = build_request([1, 2, 3, 4, 5, 6], 1, MessageType::Discover, vec![]);
        ok[1] = 6; // htype IEEE 802
        assert!(matches!(parse(&ok), Err(DhcpError::NotEthernet { .. })));
        // Option lengths running past the end.
        let mut bad = build_request([1, 2, 3, 4, 5, 6], 1, MessageType::Discover, vec![]);
        let n = bad.len();
        bad[n - 1] = 60;
        bad.extend_from_slice(&[200, 1, 2]);
        let _ = parse(&bad);
        // Options whose length dhcproto only debug-asserts (fuzzer finds), alone and
        // split in two RFC 3396 parts: a typed error, not a panic in debug builds.
        for (opt, code, len) in [
            (&[94u8, 2, 1, 2][..], 94, 2),
            (&[80, 1, 0][..], 80, 1),
            (&[81, 2, 0, 0][..], 81, 2),
            (&[152, 3, 0, 0, 0][..], 152, 3),
            (&[155, 2, 0, 0, 155, 3, 0, 0, 0][..], 155, 5),
            (&[94, 1, 1, 94, 1, 2][..], 94, 2),
        ] {
            let mut v = build_request([1, 2, 3, 4, 5, 6], 1, MessageType::Discover, vec![]);
            v.splice(MIN_DHCP_LEN..MIN_DHCP_LEN, opt.iter().copied());
            assert_eq!(
                parse_uncontained(&v),
                Err(DhcpError::BadOptionLength { code, len }),
                "{opt:?}"
            );
        }
        // Well-formed ones still parse, parts joined.
        let mut v = build_request([1, 2, 3, 4, 5, 6], 1, MessageType::Discover, vec![]);
        v.splice(MIN_DHCP_LEN..MIN_DHCP_LEN, [94, 1, 1, 94, 2, 3, 16, 80, 0]);
        assert_eq!(parse_uncontained(&v).unwrap().nii, Some((1, 3, 16)));
        for seed in 0..2000u32 {
            let mut v = build_request(
                [1, 2, 3, 4, 5, 6],
                seed,
                MessageType::Discover,
                vec![DhcpOption::ClassIdentifier(b"PXEClient".to_vec())],
            );
            let n = v.len();
            for k in 0..4 {
                let i = (seed as usize * 31 + k * 7919) % n;
                v[i] = (seed.wrapping_mul(2654435761) >> (k * 8)) as u8;
            }
            let _ = parse_uncontained(&v);
        }
    }
}
