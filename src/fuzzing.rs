//! Fuzz target bodies: one function per parser, each taking arbitrary bytes.
//!
//! The coverage-guided fuzzers (`tests/fuzz/`, run with `cargo afl`) and the corpus
//! replay test (`tests/fuzz_corpus.rs`) call these same functions, so a saved input
//! proves the same thing in both. Each body parses, then asserts properties of what was
//! parsed: a panic here is a bug in the parser (or in the property), never expected.

use std::path::Path;

use crate::wire::{dhcp, tftp};

/// TFTP root used for the client-path target (any absolute path works).
const FUZZ_ROOT: &str = "/srv/tftp";

/// TFTP packets: parse never panics; what parses re-emits to the same packet.
pub fn tftp_packet(data: &[u8]) {
    let Ok(p) = tftp::Packet::parse(data) else {
        return;
    };
    let mut out = Vec::new();
    p.emit(&mut out);
    let again = tftp::Packet::parse(&out).expect("an emitted packet parses");
    match (&p, &again) {
        (tftp::Packet::Rrq(a), tftp::Packet::Rrq(b))
        | (tftp::Packet::Wrq(a), tftp::Packet::Wrq(b)) => {
            assert_eq!(a.filename, b.filename);
            assert_eq!(a.mode, b.mode);
            let taken =
                |o: &tftp::RequestOptions<'_>| (o.blksize, o.tsize, o.timeout, o.windowsize);
            assert_eq!(taken(&a.options), taken(&b.options));
            assert!(
                b.options.ignored.is_empty(),
                "only taken options are emitted"
            );
            assert!(a.options.ignored.len() <= tftp::MAX_OPTIONS + 1);
        }
        (tftp::Packet::Data { data: d, .. }, _) => {
            assert_eq!(p, again);
            assert_eq!(tftp::from_netascii(&tftp::to_netascii(d)), *d);
        }
        _ => assert_eq!(p, again),
    }
}

/// DHCP/PXE view: the unguarded parse (no `catch_unwind`, so the fuzzer sees any panic
/// in dhcproto or here); a parsed request gets a reply that decodes.
pub fn dhcp_request(data: &[u8]) {
    use dhcproto::{Decodable, Decoder};
    let Ok(req) = dhcp::parse_uncontained(data) else {
        return;
    };
    let _ = (req.is_pxe_client(), req.is_http_client(), req.is_ipxe());
    assert_eq!(req.mac_string().len(), 17);
    if let Some(a) = req.arch {
        let _ = dhcp::classify_arch(a).0.as_str();
    }
    let reply = dhcp::PxeReply {
        msg_type: dhcproto::v4::MessageType::Offer,
        server_ip: std::net::Ipv4Addr::new(192, 0, 2, 1),
        tftp_server: std::net::Ipv4Addr::new(192, 0, 2, 1),
        boot_file: "bios/pxelinux.0".into(),
        vendor_class: if req.is_http_client() {
            "HTTPClient"
        } else {
            "PXEClient"
        },
    };
    let out = dhcp::build_reply(&req, &reply);
    let m = dhcproto::v4::Message::decode(&mut Decoder::new(&out)).expect("our reply decodes");
    assert_eq!(m.xid(), req.xid);
    assert_eq!(&m.chaddr()[..6], &req.mac);
}

/// HTTP `Range`: the first 8 bytes are the body length (little-endian, zero-padded), the
/// rest the header value. A partial answer always lies inside the body.
pub fn http_range(data: &[u8]) {
    let (len_bytes, header) = data.split_at(data.len().min(8));
    let mut len = [0u8; 8];
    len[..len_bytes.len()].copy_from_slice(len_bytes);
    let len = u64::from_le_bytes(len);
    let header = if data.len() <= 8 {
        None
    } else {
        match std::str::from_utf8(header) {
            Ok(h) => Some(h),
            Err(_) => return,
        }
    };
    if let crate::http::range::RangePlan::Partial { start, end } =
        crate::http::range::plan(header, len)
    {
        assert!(
            start <= end && end < len,
            "{header:?} len {len}: {start}..={end}"
        );
    }
}

/// Config loading: TOML text to a validated [`crate::config::Config`].
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = crate::config::Config::parse_text(text, Path::new("fuzz.toml")) else {
        return;
    };
    if c.validate().is_ok() {
        assert!(c.tftp.max_blksize >= 8 && c.tftp.max_windowsize >= 1);
        let _ = c.raft_timing();
        let _ = c.tftp_root();
    }
}

/// The client-path parsers under test, each giving the normalized relative path: the
/// stored node-file path rule, a TFTP name, an HTTP URL path (percent-decoded once).
fn parse_client_path(s: &str) -> [Option<String>; 3] {
    use crate::wire::path::ClientPath;
    [
        crate::store::types::normalize_path(s),
        ClientPath::parse(s).ok().map(|p| p.as_str().to_string()),
        ClientPath::from_url(s).ok().map(|p| p.as_str().to_string()),
    ]
}

/// Client paths (TFTP file names, `/boot/...` URLs, stored node-file paths): an accepted
/// path is relative, has no empty, `.` or `..` segment, no NUL or backslash, stays under
/// the root, and parses to itself again.
pub fn client_path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for (i, p) in parse_client_path(s).into_iter().enumerate() {
        let Some(p) = p else { continue };
        assert!(!p.is_empty() && !p.starts_with('/'), "{s:?} -> {p:?}");
        assert!(!p.contains('\0') && !p.contains('\\'), "{s:?} -> {p:?}");
        assert!(
            p.split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".."),
            "{s:?} -> {p:?}"
        );
        assert!(Path::new(FUZZ_ROOT).join(&p).starts_with(FUZZ_ROOT));
        // A URL path may hold a `%` that decodes again; the other two are idempotent.
        if i < 2 {
            let again = &parse_client_path(&p)[i];
            assert_eq!(again.as_deref(), Some(p.as_str()), "{s:?} -> {p:?}");
        }
    }
}

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory under `tests/fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("tftp_packet", tftp_packet),
    ("dhcp_request", dhcp_request),
    ("http_range", http_range),
    ("config_text", config_text),
    ("client_path", client_path),
];
