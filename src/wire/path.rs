//! Client path names: what a TFTP or HTTP client asks for, parsed once into the one
//! form that every lookup uses (node files in the store, the shared directory, HTTP
//! boot). Nothing here touches the file system; symlink checks stay with the directory
//! that serves the file.
//!
//! The rules, in order:
//! - TFTP names are bytes: a single trailing `0xFF` is dropped (old PXE ROMs read the
//!   DHCP boot-file option as a C string and run on into the END option, 255), anything
//!   else that is not UTF-8 is refused. HTTP paths are percent-decoded exactly once.
//! - A configured map file (tftpd-hpa's `--map-file`, TFTP only) rewrites the name.
//! - NUL and other control characters are refused; `\` is a separator (Windows
//!   clients); empty and `.` components are dropped (`a//./b` is `a/b`); a `..`
//!   component is refused, never resolved.
//! - A name that starts with `/` is absolute. When it lies under one of the server's
//!   root directories (the dnsmasq rule) the root part is dropped and it becomes
//!   relative; otherwise it is kept absolute: node files take it relative to the
//!   namespace (`/nodes/n1/kernel`), the shared directory serves it relative to its
//!   root if it exists and otherwise refuses it as an absolute path outside the root.
//! - A name that starts with `_t/<token>/` (after any leading `/`) carries a node's
//!   boot token ([`super::token`]): the two components are taken off and the token kept
//!   beside the path ([`ClientPath::token`]), for the serve gate to check. The rest is
//!   read by the rules here as if it had been sent alone.
//! - The result is at most [`MAX_PATH`] bytes.
//!
//! MAC addresses in names are matched case-insensitively: [`ClientPath::candidates`]
//! yields the name as sent, then (if different) the name with every MAC written in
//! lowercase, the form Baton and Ironic write.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::remap::{MapError, MapFile};
use super::tftp::ErrorCode;
use super::token::{split_prefix, BootToken};

/// Longest path accepted after normalization (TFTP file names fit in one 512-byte
/// packet; file systems allow 255 bytes per name).
pub const MAX_PATH: usize = 255;

/// Longest name accepted as input, before normalization (the TFTP request limit).
pub const MAX_NAME: usize = super::tftp::MAX_FILENAME_LEN;

/// Why a client's name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing left after normalization (`""`, `/`, `.`, the root itself).
    #[error("file name is empty")]
    Empty,
    /// Longer than [`MAX_NAME`] as sent or [`MAX_PATH`] once normalized.
    #[error("file name is longer than {MAX_PATH} bytes")]
    TooLong,
    /// Bytes that are not UTF-8.
    #[error("file name is not valid UTF-8")]
    NotUtf8,
    /// A NUL byte inside the name.
    #[error("file name contains a NUL byte")]
    Nul,
    /// A control character other than NUL (newline, escape, DEL...).
    #[error("file name contains a control character")]
    ControlChar,
    /// A `..` component.
    #[error("file name has a `..` component")]
    ParentDir,
    /// `%` not followed by two hex digits (HTTP).
    #[error("invalid percent-encoding in the path")]
    BadPercentEncoding,
    /// An `a` rule of the map file refused the name.
    #[error("refused by line {line} of the map file{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    MapRefused {
        /// Line of the rule.
        line: u32,
        /// The rule's message, if it has one.
        message: Option<String>,
    },
    /// The map file's rules did not finish within their step budget.
    #[error("the map file rules did not finish within {0} steps")]
    MapLoop(u32),
}

impl From<MapError> for PathError {
    fn from(e: MapError) -> Self {
        match e {
            MapError::Refused { line, message } => PathError::MapRefused { line, message },
            MapError::Loop(n) => PathError::MapLoop(n),
            MapError::TooLong => PathError::TooLong,
        }
    }
}

impl PathError {
    /// Short label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            PathError::Empty => "empty_filename",
            PathError::TooLong => "filename_too_long",
            PathError::NotUtf8 => "filename_not_utf8",
            PathError::Nul => "nul_byte",
            PathError::ControlChar => "control_char",
            PathError::ParentDir => "parent_dir",
            PathError::BadPercentEncoding => "bad_percent_encoding",
            PathError::MapRefused { .. } => "map_refused",
            PathError::MapLoop(_) => "map_loop",
        }
    }

    /// The TFTP error a server answers with: names that cannot exist are "not found",
    /// names that try to leave or are refused by policy are access violations.
    pub fn tftp_code(&self) -> ErrorCode {
        match self {
            PathError::Empty | PathError::TooLong | PathError::NotUtf8 => ErrorCode::FileNotFound,
            _ => ErrorCode::AccessViolation,
        }
    }

    /// True for errors of the request's encoding rather than of the name it spells
    /// (HTTP answers them with 400, the others with 404).
    pub fn is_encoding(&self) -> bool {
        matches!(self, PathError::NotUtf8 | PathError::BadPercentEncoding)
    }
}

/// How one server reads names: its root directories and its map file.
#[derive(Debug, Clone, Default)]
pub struct PathRules {
    /// Components of each absolute root (the configured and the canonical path).
    roots: Vec<Vec<String>>,
    map: Option<Arc<MapFile>>,
}

impl PathRules {
    /// Rules for a server whose directory is known by `roots` (relative or non-UTF-8
    /// roots are ignored: no absolute name can start with them).
    pub fn new<P: AsRef<std::path::Path>>(roots: impl IntoIterator<Item = P>) -> Self {
        let mut out: Vec<Vec<String>> = Vec::new();
        for r in roots {
            let Some(s) = r.as_ref().to_str() else {
                continue;
            };
            if !s.starts_with('/') {
                continue;
            }
            let segs: Vec<String> = s
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect();
            if !segs.is_empty() && !out.contains(&segs) {
                out.push(segs);
            }
        }
        PathRules {
            roots: out,
            map: None,
        }
    }

    /// The same rules with a map file applied to TFTP names first.
    pub fn with_map(mut self, map: Option<Arc<MapFile>>) -> Self {
        self.map = map;
        self
    }

    /// The map file, if one is configured.
    pub fn map(&self) -> Option<&MapFile> {
        self.map.as_deref()
    }
}

/// A client's name, normalized: relative, `/`-separated, no empty, `.` or `..`
/// component, no control character, at most [`MAX_PATH`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientPath {
    path: String,
    absolute: bool,
    /// The same path with its MACs in lowercase, when that differs.
    folded: Option<String>,
    /// The map file changed the name.
    remapped: bool,
    /// The boot token the name carried (`_t/<token>/...`), taken off `path`.
    token: Option<BootToken>,
}

impl ClientPath {
    /// Parses a name with no root directories and no map file: the form of paths
    /// stored in the node-file table and of names in tests.
    pub fn parse(name: &str) -> Result<ClientPath, PathError> {
        normalize(name, &[], true)
    }

    /// Parses a TFTP request's file name (already text, see [`super::tftp::tftp_name`]) sent by
    /// `client`: the map file first, then the root directories.
    pub fn from_tftp(
        name: &str,
        rules: &PathRules,
        client: IpAddr,
    ) -> Result<ClientPath, PathError> {
        if name.len() > MAX_NAME {
            return Err(PathError::TooLong);
        }
        let mapped: Cow<'_, str> = match &rules.map {
            Some(m) => m.apply(name, client)?,
            None => Cow::Borrowed(name),
        };
        let mut p = normalize(&mapped, &rules.roots, true)?;
        p.remapped = mapped != name;
        Ok(p)
    }

    /// Parses the raw (still percent-encoded) path of an HTTP request, relative to the
    /// namespace whatever its leading slashes: decodes once, then the common rules.
    pub fn from_url(raw: &str) -> Result<ClientPath, PathError> {
        if raw.len() > 3 * MAX_NAME {
            return Err(PathError::TooLong);
        }
        let bytes = percent_decode(raw)?;
        let s = std::str::from_utf8(&bytes).map_err(|_| PathError::NotUtf8)?;
        normalize(s, &[], false)
    }

    /// The normalized path, without a leading `/`.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// True when the client sent an absolute name outside every root directory.
    pub fn is_absolute(&self) -> bool {
        self.absolute
    }

    /// True when the map file rewrote the name.
    pub fn was_remapped(&self) -> bool {
        self.remapped
    }

    /// The boot token the name carried in front of the path (`_t/<token>/`), if any.
    pub fn token(&self) -> Option<BootToken> {
        self.token
    }

    /// The names to look up, in order: as sent, then with lowercase MACs if different.
    pub fn candidates(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.path.as_str()).chain(self.folded.as_deref())
    }
}

impl fmt::Display for ClientPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.absolute {
            f.write_str("/")?;
        }
        f.write_str(&self.path)
    }
}

/// The common rules (see the module doc). `may_be_absolute` is false for URL paths,
/// whose leading `/` is syntax, not a claim about the server's file system.
fn normalize(
    name: &str,
    roots: &[Vec<String>],
    may_be_absolute: bool,
) -> Result<ClientPath, PathError> {
    if name.len() > MAX_NAME {
        return Err(PathError::TooLong);
    }
    if name.contains('\0') {
        return Err(PathError::Nul);
    }
    if name.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    let is_sep = |c: char| c == '/' || c == '\\';
    let mut absolute = may_be_absolute && name.starts_with(is_sep);
    let mut segs: Vec<&str> = Vec::new();
    for c in name.split(is_sep) {
        match c {
            "" | "." => {}
            ".." => return Err(PathError::ParentDir),
            c => segs.push(c),
        }
    }
    let (token, rest) = split_prefix(&segs);
    let mut segs = rest.to_vec();
    if absolute {
        if let Some(root) = roots
            .iter()
            .find(|r| segs.len() >= r.len() && segs.iter().zip(r.iter()).all(|(a, b)| a == b))
        {
            segs.drain(..root.len());
            absolute = false;
        }
    }
    if segs.is_empty() {
        return Err(PathError::Empty);
    }
    let path = segs.join("/");
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    let folded = fold_macs(&path);
    Ok(ClientPath {
        path,
        absolute,
        folded,
        remapped: false,
        token,
    })
}

/// Decodes `%XX` escapes; `+` stays `+` (that rule is for query strings).
fn percent_decode(s: &str) -> Result<Vec<u8>, PathError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(PathError::BadPercentEncoding),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The path with every MAC address in lowercase, or `None` if it has none in
/// uppercase. A MAC is six or more hex pairs joined by one separator (`-` or `:`, so
/// pxelinux's `01-52-54-00-AB-CD-EF` counts as a whole), or exactly twelve hex digits
/// between non-alphanumeric characters (`525400ABCDEF.ipxe`).
fn fold_macs(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        // A run starts where the previous byte is not part of a word.
        if (i > 0 && b[i - 1].is_ascii_alphanumeric()) || !b[i].is_ascii_hexdigit() {
            i += 1;
            continue;
        }
        let end = mac_run_end(b, i);
        if end > i {
            out[i..end].make_ascii_lowercase();
            i = end;
        } else {
            i += 1;
        }
    }
    (out != b).then(|| String::from_utf8(out).expect("only ASCII letters changed"))
}

/// End of the MAC-like run starting at `i`, or `i` if there is none.
fn mac_run_end(b: &[u8], i: usize) -> usize {
    let hex2 =
        |j: usize| j + 1 < b.len() && b[j].is_ascii_hexdigit() && b[j + 1].is_ascii_hexdigit();
    let word_ends = |j: usize| j >= b.len() || !b[j].is_ascii_alphanumeric();
    // Separated form: pairs joined by one separator, six pairs or more.
    if hex2(i) && matches!(b.get(i + 2), Some(b'-' | b':')) {
        let sep = b[i + 2];
        let (mut j, mut pairs) = (i + 2, 1);
        while j < b.len() && b[j] == sep && hex2(j + 1) {
            j += 3;
            pairs += 1;
        }
        if pairs >= 6 && word_ends(j) {
            return j;
        }
    }
    // Bare form: exactly twelve hex digits.
    let mut j = i;
    while j < b.len() && b[j].is_ascii_hexdigit() {
        j += 1;
    }
    if j - i == 12 && word_ends(j) {
        return j;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roots() -> PathRules {
        PathRules::new(["/srv/tftp", "/var/lib/tftp-canonical/"])
    }

    fn tftp(name: &str) -> Result<ClientPath, PathError> {
        ClientPath::from_tftp(name, &roots(), "127.0.0.1".parse().unwrap())
    }

    /// The tricky names, through every entry point: TFTP (with roots), HTTP (raw URL
    /// path) and the plain parse of stored paths. `Ok((path, absolute))`.
    #[test]
    fn an_empty_name_is_refused() {
        // What a lone trailing 0xFF leaves (see `wire::tftp::tftp_name`).
        assert_eq!(ClientPath::parse(""), Err(PathError::Empty));
    }

    #[test]
    fn tricky_names() {
        let long = "a".repeat(600);
        let at_limit = format!("d/{}", "b".repeat(MAX_PATH - 2));
        let over_limit = format!("d/{}", "b".repeat(MAX_PATH - 1));
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Result<(&str, bool), PathError>,
            Result<(&str, bool), PathError>,
        )> = vec![
            // name, TFTP, HTTP (as a URL path)
            ("a/b.cfg", Ok(("a/b.cfg", false)), Ok(("a/b.cfg", false))),
            ("a//b", Ok(("a/b", false)), Ok(("a/b", false))),
            ("./a", Ok(("a", false)), Ok(("a", false))),
            ("./a//b", Ok(("a/b", false)), Ok(("a/b", false))),
            ("a/./b/", Ok(("a/b", false)), Ok(("a/b", false))),
            ("a\\b", Ok(("a/b", false)), Ok(("a/b", false))),
            (
                "pxelinux.cfg//01-aa",
                Ok(("pxelinux.cfg/01-aa", false)),
                Ok(("pxelinux.cfg/01-aa", false)),
            ),
            (
                "/abs/inside",
                Ok(("abs/inside", true)),
                Ok(("abs/inside", false)),
            ),
            (
                "\\abs\\inside",
                Ok(("abs/inside", true)),
                Ok(("abs/inside", false)),
            ),
            ("/srv/tftp/x", Ok(("x", false)), Ok(("srv/tftp/x", false))),
            (
                "//srv//tftp/./x",
                Ok(("x", false)),
                Ok(("srv/tftp/x", false)),
            ),
            (
                "/var/lib/tftp-canonical/d/f",
                Ok(("d/f", false)),
                Ok(("var/lib/tftp-canonical/d/f", false)),
            ),
            (
                "/srv/tftpx",
                Ok(("srv/tftpx", true)),
                Ok(("srv/tftpx", false)),
            ),
            (
                "/etc/passwd",
                Ok(("etc/passwd", true)),
                Ok(("etc/passwd", false)),
            ),
            (
                "srv/tftp/x",
                Ok(("srv/tftp/x", false)),
                Ok(("srv/tftp/x", false)),
            ),
            ("..", Err(PathError::ParentDir), Err(PathError::ParentDir)),
            (
                "../etc/passwd",
                Err(PathError::ParentDir),
                Err(PathError::ParentDir),
            ),
            (
                "a/../b",
                Err(PathError::ParentDir),
                Err(PathError::ParentDir),
            ),
            (
                "a/../../b",
                Err(PathError::ParentDir),
                Err(PathError::ParentDir),
            ),
            (
                "..\\x",
                Err(PathError::ParentDir),
                Err(PathError::ParentDir),
            ),
            (
                "/srv/tftp/../x",
                Err(PathError::ParentDir),
                Err(PathError::ParentDir),
            ),
            (
                "a..b/c...",
                Ok(("a..b/c...", false)),
                Ok(("a..b/c...", false)),
            ),
            // Percent-encoding means something only in URLs, and is decoded once.
            ("%2e%2e", Ok(("%2e%2e", false)), Err(PathError::ParentDir)),
            (
                "a/%2E%2e/b",
                Ok(("a/%2E%2e/b", false)),
                Err(PathError::ParentDir),
            ),
            (
                "%252e%252e",
                Ok(("%252e%252e", false)),
                Ok(("%2e%2e", false)),
            ),
            ("a%2fb", Ok(("a%2fb", false)), Ok(("a/b", false))),
            ("a%5cb", Ok(("a%5cb", false)), Ok(("a/b", false))),
            ("a%20b+c", Ok(("a%20b+c", false)), Ok(("a b+c", false))),
            ("a%00b", Ok(("a%00b", false)), Err(PathError::Nul)),
            ("a%ffb", Ok(("a%ffb", false)), Err(PathError::NotUtf8)),
            (
                "a%zz",
                Ok(("a%zz", false)),
                Err(PathError::BadPercentEncoding),
            ),
            (
                "a%2",
                Ok(("a%2", false)),
                Err(PathError::BadPercentEncoding),
            ),
            ("a\0b", Err(PathError::Nul), Err(PathError::Nul)),
            (
                "a\nb",
                Err(PathError::ControlChar),
                Err(PathError::ControlChar),
            ),
            (
                "a\u{7f}",
                Err(PathError::ControlChar),
                Err(PathError::ControlChar),
            ),
            ("", Err(PathError::Empty), Err(PathError::Empty)),
            (".", Err(PathError::Empty), Err(PathError::Empty)),
            ("/", Err(PathError::Empty), Err(PathError::Empty)),
            ("/srv/tftp", Err(PathError::Empty), Ok(("srv/tftp", false))),
            (&long, Err(PathError::TooLong), Err(PathError::TooLong)),
            (&at_limit, Ok((&at_limit, false)), Ok((&at_limit, false))),
            (
                &over_limit,
                Err(PathError::TooLong),
                Err(PathError::TooLong),
            ),
            ("ünï/cödé", Ok(("ünï/cödé", false)), Ok(("ünï/cödé", false))),
        ];
        for (name, want_tftp, want_http) in cases {
            let got = tftp(name);
            let got = got
                .as_ref()
                .map(|p| (p.as_str(), p.is_absolute()))
                .map_err(Clone::clone);
            assert_eq!(got, want_tftp, "TFTP {name:?}");
            let got = ClientPath::from_url(name);
            let got = got
                .as_ref()
                .map(|p| (p.as_str(), p.is_absolute()))
                .map_err(Clone::clone);
            assert_eq!(got, want_http, "HTTP {name:?}");
        }
    }

    #[test]
    fn a_token_prefix_is_taken_off_and_kept() {
        let t = "00112233445566778899AABBCCDDEEFF";
        let lower = t.to_ascii_lowercase();
        let rules = roots();
        for (name, want, absolute) in [
            (format!("_t/{t}/nodes/n1/kernel"), "nodes/n1/kernel", false),
            (format!("/_t/{t}/nodes/n1/kernel"), "nodes/n1/kernel", true),
            (
                format!("//_t//{t}/./ipxe/52-54-00-AB-CD-EF.ipxe"),
                "ipxe/52-54-00-AB-CD-EF.ipxe",
                true,
            ),
            (format!("\\_t\\{t}\\x"), "x", true),
        ] {
            let p = ClientPath::from_tftp(&name, &rules, "::1".parse().unwrap()).unwrap();
            assert_eq!((p.as_str(), p.is_absolute()), (want, absolute), "{name}");
            assert_eq!(
                p.token().map(|t| t.to_string()),
                Some(lower.clone()),
                "{name}"
            );
            assert!(
                !p.to_string().contains(&lower),
                "Display never shows the token"
            );
            assert!(!format!("{p:?}").contains(&lower), "nor Debug");
            let u = ClientPath::from_url(&name).unwrap();
            assert_eq!((u.as_str(), u.token()), (want, p.token()), "{name}");
        }
        let p = ClientPath::from_url(&format!("/_t/{t}/ipxe/52-54-00-AB-CD-EF.ipxe")).unwrap();
        assert_eq!(
            p.candidates().collect::<Vec<_>>(),
            ["ipxe/52-54-00-AB-CD-EF.ipxe", "ipxe/52-54-00-ab-cd-ef.ipxe"]
        );
        // Percent-encoded, the prefix reads the same over HTTP.
        let u = ClientPath::from_url(&format!("/%5Ft/{t}/k")).unwrap();
        assert_eq!((u.as_str(), u.token().is_some()), ("k", true));
        // Not a token: the name is left whole (and no node file has such a name).
        for name in [
            "_t/123/k",
            "_t/k",
            "a/_t/00112233445566778899aabbccddeeff/k",
            "_tx/00112233445566778899aabbccddeeff/k",
        ] {
            let p = ClientPath::from_url(name).unwrap();
            assert_eq!((p.as_str(), p.token()), (name, None), "{name}");
        }
        // Nothing after the token, or an escape after it: refused as ever.
        assert_eq!(
            ClientPath::from_url(&format!("/_t/{t}/")),
            Err(PathError::Empty)
        );
        assert_eq!(
            ClientPath::from_url(&format!("/_t/{t}/../x")),
            Err(PathError::ParentDir)
        );
        assert_eq!(
            ClientPath::parse(&format!("_t/{t}/a\0b")),
            Err(PathError::Nul)
        );
        // A root after the token is a root.
        let p = ClientPath::from_tftp(
            &format!("/_t/{t}/srv/tftp/x"),
            &rules,
            "::1".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(
            (p.as_str(), p.is_absolute(), p.token().is_some()),
            ("x", false, true)
        );
    }

    #[test]
    fn relative_roots_are_ignored() {
        let r = PathRules::new(["tftp", "/"]);
        let p = ClientPath::from_tftp("/tftp/x", &r, "::1".parse().unwrap()).unwrap();
        assert_eq!((p.as_str(), p.is_absolute()), ("tftp/x", true));
        assert_eq!(p.to_string(), "/tftp/x");
    }

    #[test]
    fn mac_candidates() {
        let c = |s: &str| -> Vec<String> {
            ClientPath::parse(s)
                .unwrap()
                .candidates()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            c("pxelinux.cfg/01-52-54-00-AB-cd-EF"),
            [
                "pxelinux.cfg/01-52-54-00-AB-cd-EF",
                "pxelinux.cfg/01-52-54-00-ab-cd-ef"
            ]
        );
        assert_eq!(
            c("grub/grub.cfg-01-52-54-00-EC-33-81"),
            [
                "grub/grub.cfg-01-52-54-00-EC-33-81",
                "grub/grub.cfg-01-52-54-00-ec-33-81"
            ]
        );
        assert_eq!(
            c("ipxe/52-54-00-EC-33-81.ipxe"),
            ["ipxe/52-54-00-EC-33-81.ipxe", "ipxe/52-54-00-ec-33-81.ipxe"]
        );
        assert_eq!(
            c("52:54:00:EC:33:81.conf"),
            ["52:54:00:EC:33:81.conf", "52:54:00:ec:33:81.conf"]
        );
        assert_eq!(
            c("x/525400EC3381.ipxe"),
            ["x/525400EC3381.ipxe", "x/525400ec3381.ipxe"]
        );
        // Already lowercase, or nothing MAC-like: one candidate, nothing else touched.
        for same in [
            "pxelinux.cfg/01-52-54-00-ab-cd-ef",
            "pxelinux.cfg/C0A80001",
            "pxelinux.cfg/DEFAULT",
            "nodes/N1/Kernel",
            "AB-CD-EF-01-02.cfg",
            "52-54-00-EC-33-81X",
            "X525400EC3381",
            "525400EC33810",
            "52-54:00-EC-33-81",
        ] {
            assert_eq!(c(same), [same], "{same}");
        }
        // Only the MAC changes, not the rest of the name.
        assert_eq!(
            c("Boot/52-54-00-EC-33-81.IPXE")[1],
            "Boot/52-54-00-ec-33-81.IPXE"
        );
    }

    /// The old rule of stored paths, kept to check that parsing agrees with it.
    fn old_normalize(path: &str) -> Option<String> {
        let p = path.trim_start_matches('/');
        if p.is_empty() || p.len() > MAX_PATH || p.contains('\\') || p.chars().any(char::is_control)
        {
            return None;
        }
        if p.split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return None;
        }
        Some(p.to_string())
    }

    fn check_output(p: &ClientPath) -> Result<(), TestCaseError> {
        for c in p.candidates() {
            prop_assert!(!c.is_empty() && c.len() <= MAX_PATH);
            prop_assert!(!c.starts_with('/') && !c.ends_with('/'));
            prop_assert!(!c.contains("//") && !c.contains('\\'));
            prop_assert!(!c.split('/').any(|s| s == ".." || s == "."));
            prop_assert!(!c.chars().any(char::is_control));
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn tftp_parse_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Some((s, _)) = super::super::tftp::tftp_name(&raw) {
                if let Ok(p) = tftp(s) {
                    check_output(&p)?;
                }
            }
        }

        #[test]
        fn tricky_alphabet(s in "[a./\\\\%2eEfF0\u{0}\u{7f}:-]{0,40}") {
            for p in [tftp(&s), ClientPath::from_url(&s), ClientPath::parse(&s)].iter().flatten() {
                check_output(p)?;
            }
        }

        #[test]
        fn token_prefixed_names_never_panic(
            t in "[0-9a-fA-Fg]{30,34}",
            rest in "[a./\\\\%2eEfF0\u{0}\u{7f}:_t-]{0,40}",
        ) {
            let name = format!("/_t/{t}/{rest}");
            for p in [tftp(&name), ClientPath::from_url(&name), ClientPath::parse(&name)].iter().flatten() {
                check_output(p)?;
            }
        }

        #[test]
        fn url_parse_never_panics(s in "\\PC{0,200}") {
            if let Ok(p) = ClientPath::from_url(&s) {
                check_output(&p)?;
            }
        }

        /// A stored path is accepted exactly when the old rule accepted it.
        #[test]
        fn stored_paths_agree_with_the_old_rule(s in "[a/.\\\\\u{1}é]{0,12}") {
            let new = ClientPath::parse(&s)
                .ok()
                .filter(|p| p.as_str() == s.trim_start_matches('/'))
                .map(|p| p.as_str().to_string());
            prop_assert_eq!(new, old_normalize(&s));
        }
    }
}
