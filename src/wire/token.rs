//! A node's boot token (`node_files = "token"`): 128 random bits that the node's
//! rendered iPXE script, GRUB and pxelinux configs and its proxy-DHCP answers put in
//! front of every node-file URL, as `_t/<32 hex digits>/<path>`. Written and read here
//! only: [`BootToken::url_prefix`] writes the prefix, [`split_prefix`] reads it back
//! (for [`super::path::ClientPath`], TFTP and HTTP alike).
//!
//! The token never goes to a log: its `Debug` form is a short hash of it, and
//! comparisons take the same time whatever the bytes ([`BootToken::matches`]).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Bytes in a token.
pub const TOKEN_BYTES: usize = 16;

/// The first component of a token-carrying path (`_t/<token>/...`).
pub const PREFIX_DIR: &str = "_t";

/// A node's boot token.
#[derive(Clone, Copy, Eq)]
pub struct BootToken([u8; TOKEN_BYTES]);

impl BootToken {
    /// A token with these bytes (the caller draws them from a CSPRNG).
    pub fn from_bytes(b: [u8; TOKEN_BYTES]) -> Self {
        BootToken(b)
    }

    /// Whether `other` is this token, in time independent of where they differ.
    pub fn matches(&self, other: &BootToken) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// `_t/<token>/`: what goes in front of a node file's path in the URLs and names
    /// Baton writes for the node; the empty string without a token.
    pub fn url_prefix(token: Option<&BootToken>) -> String {
        token.map_or_else(String::new, |t| format!("{PREFIX_DIR}/{t}/"))
    }

    /// A short hash of the token, for logs and `Debug`: tells tokens apart, reveals
    /// nothing of them.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..4])
    }
}

impl PartialEq for BootToken {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other)
    }
}

impl std::hash::Hash for BootToken {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h);
    }
}

/// The token as 32 lowercase hex digits: the form in URLs, the store and the API.
impl fmt::Display for BootToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Never the token itself (nodes are logged with `?`).
impl fmt::Debug for BootToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootToken(#{})", self.fingerprint())
    }
}

/// Why a text is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a boot token is {} hex digits", 2 * TOKEN_BYTES)]
pub struct BadToken;

impl FromStr for BootToken {
    type Err = BadToken;
    /// Exactly 32 hex digits, either case.
    fn from_str(s: &str) -> Result<Self, BadToken> {
        if s.len() != 2 * TOKEN_BYTES {
            return Err(BadToken);
        }
        let mut b = [0u8; TOKEN_BYTES];
        hex::decode_to_slice(s, &mut b).map_err(|_| BadToken)?;
        Ok(BootToken(b))
    }
}

impl serde::Serialize for BootToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BootToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `name` (a client's name as sent) for a log line: every `_t/<token>` in it shows the
/// token's [`BootToken::fingerprint`] instead (`_t/#1a2b3c4d`).
pub fn redact(name: &str) -> std::borrow::Cow<'_, str> {
    let len = 2 * TOKEN_BYTES;
    let b = name.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while let Some(at) = name[i..].find(PREFIX_DIR).map(|a| a + i) {
        let start = at + PREFIX_DIR.len() + 1;
        let sep = |j: usize| matches!(b.get(j), Some(b'/' | b'\\'));
        let begins = at == 0 || sep(at - 1);
        let token = name
            .get(start..start + len)
            .and_then(|t| t.parse::<BootToken>().ok());
        match token {
            Some(t)
                if begins
                    && sep(at + PREFIX_DIR.len())
                    && (start + len == b.len() || sep(start + len)) =>
            {
                out.push_str(&name[copied..start]);
                out.push('#');
                out.push_str(&t.fingerprint());
                copied = start + len;
                i = copied;
            }
            _ => i = at + 1,
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(name);
    }
    out.push_str(&name[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Splits a token prefix off the components of a client's name: `["_t", "<token>",
/// rest @ ..]` gives the token and `rest`. A name whose first component is not `_t`,
/// or whose second is not a token, is left whole (no node file starts with `_t/`, so
/// it is simply not found).
pub fn split_prefix<'a, 'b>(segs: &'a [&'b str]) -> (Option<BootToken>, &'a [&'b str]) {
    match segs {
        [dir, t, rest @ ..] if *dir == PREFIX_DIR => match t.parse() {
            Ok(t) => (Some(t), rest),
            Err(_) => (None, segs),
        },
        _ => (None, segs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn text_round_trips_and_debug_hides_it() {
        let t: BootToken = HEX.parse().unwrap();
        assert_eq!(t.to_string(), HEX);
        assert_eq!(HEX.to_uppercase().parse::<BootToken>().unwrap(), t);
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(HEX) && !dbg.contains("00112233"), "{dbg}");
        assert_eq!(dbg, format!("BootToken(#{})", t.fingerprint()));
        assert_eq!(BootToken::url_prefix(Some(&t)), format!("_t/{HEX}/"));
        assert_eq!(BootToken::url_prefix(None), "");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, format!("\"{HEX}\""));
        assert_eq!(serde_json::from_str::<BootToken>(&json).unwrap(), t);
        for bad in [
            "",
            "0011",
            &HEX[1..],
            &format!("{HEX}0"),
            &HEX.replace('a', "g"),
        ] {
            assert_eq!(bad.parse::<BootToken>(), Err(BadToken), "{bad:?}");
        }
        assert!(serde_json::from_str::<BootToken>("\"xyz\"").is_err());
    }

    #[test]
    fn equal_only_when_every_byte_is() {
        let t: BootToken = HEX.parse().unwrap();
        for i in 0..TOKEN_BYTES {
            let mut b = t.0;
            b[i] ^= 1;
            assert!(!t.matches(&BootToken(b)) && t != BootToken(b));
        }
        assert!(t.matches(&HEX.parse().unwrap()));
    }

    #[test]
    fn prefixes_are_split_once_and_only_when_well_formed() {
        let split = |s: &[&str]| {
            let (t, rest) = split_prefix(s);
            (t.map(|t| t.to_string()), rest.join("/"))
        };
        assert_eq!(
            split(&["_t", HEX, "nodes", "n1", "kernel"]),
            (Some(HEX.into()), "nodes/n1/kernel".into())
        );
        assert_eq!(
            split(&["_t", HEX, "_t", HEX, "x"]),
            (Some(HEX.into()), format!("_t/{HEX}/x"))
        );
        assert_eq!(split(&["_t", HEX]), (Some(HEX.into()), String::new()));
        for whole in [
            &["_t", "nothex", "x"][..],
            &["_t"],
            &[],
            &["nodes", "_t", HEX],
            &["_T", HEX, "x"],
        ] {
            assert_eq!(split(whole), (None, whole.join("/")), "{whole:?}");
        }
    }

    #[test]
    fn logged_names_show_a_fingerprint_not_the_token() {
        let t: BootToken = HEX.parse().unwrap();
        let f = t.fingerprint();
        assert_eq!(
            redact(&format!("_t/{HEX}/nodes/n1/kernel")),
            format!("_t/#{f}/nodes/n1/kernel")
        );
        assert_eq!(redact(&format!("/_t/{HEX}")), format!("/_t/#{f}"));
        assert_eq!(
            redact(&format!("a\\_t\\{HEX}\\k")),
            format!("a\\_t\\#{f}\\k")
        );
        for same in [
            "nodes/n1/kernel",
            "_t/xyz/k",
            "x_t/00112233445566778899aabbccddeeff/k",
            "_t/00112233445566778899aabbccddeeff0/k",
            "_t",
            "ü_t/",
        ] {
            assert!(
                matches!(redact(same), std::borrow::Cow::Borrowed(s) if s == same),
                "{same}"
            );
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let r = redact(&s);
            prop_assert!(r.len() <= s.len());
            let _ = s.parse::<BootToken>();
            let segs: Vec<&str> = s.split('/').collect();
            let (_, rest) = split_prefix(&segs);
            prop_assert!(rest.len() <= segs.len());
        }
    }
}
