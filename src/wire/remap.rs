//! File-name remapping rules in the format of tftpd-hpa's `--map-file`, so a site's
//! existing map file keeps working (`[tftp] map_file`, `--tftp-map-file`).
//!
//! Each line is `FLAGS REGEX [PATTERN]`, fields separated by unescaped white space,
//! `#` starting a comment. Rules run top-down on the name as the client sent it (before
//! Baton's own path rules, as in tftpd-hpa), all of them unless one ends processing.
//!
//! Flags supported: `r` replace the first match by PATTERN, `g` repeat from the start
//! until no match, `gg` continue after each replacement (sed's `s///g`), `i` case-
//! insensitive, `e` stop after this rule, `s` start over from the first rule, `a`
//! refuse the request (PATTERN, if any, is the message), `~` act when the regex does
//! not match, `4`/`6` IPv4/IPv6 clients only, `G`/`P` reads/writes only. In PATTERN:
//! `\0`..`\9` the match and its groups, `\i` the client address, `\x` the address in
//! hex, `\U` `\L` `\E` upper/lower case on/off, `\\` a backslash; a backslash before
//! anything else is dropped (`\ ` is a space, `\#` a hash).
//!
//! Not supported, refused when the file is loaded: labels and `j` (jumps) and `E`
//! (which needs the file system). Regexes are Rust `regex` syntax, which accepts the
//! POSIX extended expressions of map files in practice; alternations pick the first
//! matching branch rather than the longest. A name is rewritten at most
//! [`MAX_STEPS`] times and never grows beyond [`MAX_MAPPED`] bytes.

use std::borrow::Cow;
use std::net::IpAddr;

use regex::{Captures, Regex, RegexBuilder};

/// Why the rules could not map a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// An `a` rule refused the name.
    #[error("refused by line {line} of the map file{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Refused {
        /// Line of the rule.
        line: u32,
        /// The rule's message, if it has one.
        message: Option<String>,
    },
    /// The rules did not finish within their step budget.
    #[error("the map file rules did not finish within {0} steps")]
    Loop(u32),
    /// A rewrite made the name longer than any name can be.
    #[error("a map rule made the file name too long")]
    TooLong,
}

/// Rule evaluations and rewrite steps allowed per name (tftpd-hpa's `--map-steps`).
pub const MAX_STEPS: u32 = 4096;
/// Longest name a rewrite may produce.
pub const MAX_MAPPED: usize = 1024;
/// Largest map file accepted.
pub const MAX_FILE: usize = 1 << 20;

/// A map file that cannot be used, with the line to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct MapFileError {
    /// 1-based line.
    pub line: u32,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flags {
    rewrite: bool,
    global: bool,
    sed_global: bool,
    exit: bool,
    restart: bool,
    abort: bool,
    inverse: bool,
    v4: bool,
    v6: bool,
    reads: bool,
    writes: bool,
}

#[derive(Debug)]
struct Rule {
    line: u32,
    flags: Flags,
    regex: Regex,
    pattern: String,
}

/// A parsed map file.
#[derive(Debug)]
pub struct MapFile {
    rules: Vec<Rule>,
}

impl MapFile {
    /// Parses the text of a map file; every bad line is an error naming it.
    pub fn parse(text: &str) -> Result<MapFile, MapFileError> {
        if text.len() > MAX_FILE {
            return Err(MapFileError {
                line: 0,
                message: format!("larger than {MAX_FILE} bytes"),
            });
        }
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if let Some(r) = parse_line(line, line_no)? {
                rules.push(r);
            }
        }
        Ok(MapFile { rules })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True without rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Runs the rules on `name`, a read request from `client`.
    pub fn apply<'a>(&self, name: &'a str, client: IpAddr) -> Result<Cow<'a, str>, MapError> {
        let client = client.to_canonical();
        let mut cur: Cow<'a, str> = Cow::Borrowed(name);
        let mut steps = MAX_STEPS;
        let mut take_step = || {
            steps = steps.checked_sub(1).ok_or(MapError::Loop(MAX_STEPS))?;
            Ok::<(), MapError>(())
        };
        let mut i = 0;
        while let Some(r) = self.rules.get(i) {
            i += 1;
            let f = r.flags;
            if f.writes || (f.v4 && !client.is_ipv4()) || (f.v6 && !client.is_ipv6()) {
                continue;
            }
            take_step()?;
            let caps = r.regex.captures(&cur);
            if caps.is_some() == f.inverse {
                continue;
            }
            let mut message = None;
            if f.abort && !r.pattern.is_empty() {
                // The message is the pattern alone, expanded with the match's groups.
                message = Some(expand(&r.pattern, caps.as_ref(), client));
            }
            if f.rewrite {
                let caps = caps.expect("rewrite rules are never inverse");
                let (mut next, mut after) = replace_at(&r.pattern, &caps, &cur, client)?;
                // `g`: again until no match, from the start or (`gg`) after the last one.
                loop {
                    if !f.global {
                        break;
                    }
                    let from = if f.sed_global { after } else { 0 };
                    if f.sed_global && from >= next.len() {
                        break;
                    }
                    // `captures_at` keeps `^` anchored to the start of the whole name.
                    let Some(c) = r.regex.captures_at(&next, from) else {
                        break;
                    };
                    take_step()?;
                    let (n, a) = replace_at(&r.pattern, &c, &next, client)?;
                    (next, after) = (n, a);
                }
                cur = Cow::Owned(next);
            }
            if f.abort {
                return Err(MapError::Refused {
                    line: r.line,
                    message: message.filter(|m| !m.is_empty()),
                });
            }
            if f.exit {
                break;
            }
            if f.restart {
                i = 0;
            }
        }
        Ok(cur)
    }
}

/// `haystack` with the match of `caps` replaced by the expanded pattern, and the
/// offset just after the replacement.
fn replace_at(
    pattern: &str,
    caps: &Captures<'_>,
    haystack: &str,
    client: IpAddr,
) -> Result<(String, usize), MapError> {
    let m = caps.get(0).expect("group 0 always matches");
    let sub = expand(pattern, Some(caps), client);
    if m.start() + sub.len() + (haystack.len() - m.end()) > MAX_MAPPED {
        return Err(MapError::TooLong);
    }
    let mut out = String::with_capacity(haystack.len() + sub.len());
    out.push_str(&haystack[..m.start()]);
    out.push_str(&sub);
    let after = out.len();
    out.push_str(&haystack[m.end()..]);
    Ok((out, after))
}

#[derive(Clone, Copy)]
enum Case {
    Keep,
    Upper,
    Lower,
}

/// Expands a replacement pattern (see the module doc for its escapes).
fn expand(pattern: &str, caps: Option<&Captures<'_>>, client: IpAddr) -> String {
    let mut out = String::new();
    let mut case = Case::Keep;
    let push = |out: &mut String, s: &str, case: Case| match case {
        Case::Keep => out.push_str(s),
        Case::Upper => out.extend(s.chars().flat_map(char::to_uppercase)),
        Case::Lower => out.extend(s.chars().flat_map(char::to_lowercase)),
    };
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut b = [0u8; 4];
            push(&mut out, c.encode_utf8(&mut b), case);
            continue;
        }
        match chars.next() {
            Some(d @ '0'..='9') => {
                let g = d as usize - '0' as usize;
                if let Some(m) = caps.and_then(|c| c.get(g)) {
                    push(&mut out, m.as_str(), case);
                }
            }
            Some('U') => case = Case::Upper,
            Some('L') => case = Case::Lower,
            Some('E') => case = Case::Keep,
            Some('i') => push(&mut out, &client.to_string(), case),
            Some('x') => {
                let hex = match client {
                    IpAddr::V4(a) => hex::encode_upper(a.octets()),
                    IpAddr::V6(a) => hex::encode_upper(a.octets()),
                };
                push(&mut out, &hex, case);
            }
            Some('\\') | None => out.push('\\'),
            Some(other) => {
                let mut b = [0u8; 4];
                push(&mut out, other.encode_utf8(&mut b), case);
            }
        }
    }
    out
}

/// Splits the next field off `s`: leading white space skipped, ends at unescaped white
/// space or `#`; backslashes are kept for the regex or pattern to interpret.
fn field<'a>(s: &mut &'a str) -> Option<&'a str> {
    let t = s.trim_start();
    let mut escaped = false;
    let mut end = t.len();
    for (i, c) in t.char_indices() {
        if !escaped && (c.is_whitespace() || c == '#') {
            end = i;
            break;
        }
        escaped = !escaped && c == '\\';
    }
    let (f, rest) = t.split_at(end);
    *s = if rest.starts_with('#') { "" } else { rest };
    (!f.is_empty()).then_some(f)
}

fn parse_line(line: &str, line_no: u32) -> Result<Option<Rule>, MapFileError> {
    let err = |message: String| MapFileError {
        line: line_no,
        message,
    };
    // tftpd-hpa drops CR and NUL characters wherever they are.
    let line: String = line.chars().filter(|&c| c != '\r' && c != '\0').collect();
    let mut rest = line.as_str();
    let Some(ops) = field(&mut rest) else {
        return Ok(None);
    };
    if ops.starts_with(':') {
        return Err(err(format!(
            "labels ({ops}) and jumps are not supported by Baton; rewrite the rules without them"
        )));
    }
    let mut f = Flags::default();
    let mut icase = false;
    for c in ops.chars() {
        match c {
            'r' => f.rewrite = true,
            'g' if f.global => f.sed_global = true,
            'g' => f.global = true,
            'e' => f.exit = true,
            's' => f.restart = true,
            'a' => f.abort = true,
            'i' => icase = true,
            '~' => f.inverse = true,
            '4' => f.v4 = true,
            '6' => f.v6 = true,
            'G' => f.reads = true,
            'P' => f.writes = true,
            'E' | 'j' => {
                return Err(err(format!(
                "operation `{c}` is not supported by Baton (supported: r g gg i e s a ~ 4 6 G P)"
            )))
            }
            c => return Err(err(format!("invalid operation flag `{c}`"))),
        }
    }
    for (a, b, name) in [
        (f.rewrite, f.inverse, "r~"),
        (f.rewrite, f.abort, "ra"),
        (f.abort, f.restart, "as"),
        (f.exit, f.abort, "ae"),
        (f.exit, f.restart, "es"),
    ] {
        if a && b {
            let mut n = name.chars();
            let (x, y) = (n.next().unwrap_or('?'), n.next().unwrap_or('?'));
            return Err(err(format!("rule flags {x} and {y} cannot be combined")));
        }
    }
    if !f.rewrite {
        f.global = false;
        f.sed_global = false;
    }
    let Some(rx) = field(&mut rest) else {
        return Err(err("regex missing".into()));
    };
    let pattern = field(&mut rest).unwrap_or("").to_string();
    if let Some(extra) = field(&mut rest) {
        return Err(err(format!(
            "unexpected `{extra}` after the pattern (escape spaces with `\\`)"
        )));
    }
    // An escaped space or tab is a literal one in map files; Rust regexes spell it so.
    let rx = rx.replace("\\ ", "\\x20").replace("\\\t", "\\t");
    let regex = RegexBuilder::new(&rx)
        .case_insensitive(icase)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| err(format!("bad regex `{rx}`: {e}")))?;
    Ok(Some(Rule {
        line: line_no,
        flags: f,
        regex,
        pattern,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "192.0.2.169";

    fn run(map: &str, name: &str) -> Result<String, MapError> {
        run_from(map, name, V4)
    }

    fn run_from(map: &str, name: &str, client: &str) -> Result<String, MapError> {
        let m = MapFile::parse(map).unwrap_or_else(|e| panic!("{map:?}: {e}"));
        m.apply(name, client.parse().unwrap()).map(Cow::into_owned)
    }

    /// tftpd-hpa's sample rule file, line for line.
    const SAMPLE: &str = r"
# Sample rule file for the -m (remapping option)
ri	^[a-z]:						# Remove drive letters
rg	\\		/				# Convert backslashes to slashes
rg	\#		@				# Convert hash marks to @ signs
rg	/../		/..no../			# Convert /../ to /..no../
e	^ok/						# These are always ok
r	^[^/]		/tftpboot/\0			# Convert non-absolute files
a	\.pvt$						# Reject requests for private files
";

    #[test]
    fn sample_rules() {
        assert_eq!(run(SAMPLE, "C:\\boot\\x.0").unwrap(), "/boot/x.0");
        assert_eq!(run(SAMPLE, "a#b").unwrap(), "/tftpboot/a@b");
        assert_eq!(run(SAMPLE, "/a/../b").unwrap(), "/a/..no../b");
        assert_eq!(run(SAMPLE, "ok/x.pvt").unwrap(), "ok/x.pvt");
        assert_eq!(
            run(SAMPLE, "secret.pvt"),
            Err(MapError::Refused {
                line: 9,
                message: None
            })
        );
    }

    /// The map file of Ironic's install guide for tftpd-hpa.
    #[test]
    fn ironic_rules() {
        let map = "re ^(/tftpboot/) /tftpboot/\\2\nre ^/tftpboot/ /tftpboot/\nre ^(^/) /tftpboot/\\1\nre ^([^/]) /tftpboot/\\1\n";
        assert_eq!(
            run(map, "/tftpboot/pxelinux.0").unwrap(),
            "/tftpboot/pxelinux.0"
        );
        assert_eq!(run(map, "pxelinux.0").unwrap(), "/tftpboot/pxelinux.0");
        assert_eq!(run(map, "/pxelinux.0").unwrap(), "/tftpboot//pxelinux.0");
    }

    #[test]
    fn flags() {
        // `g` starts over from the beginning each time; `gg` goes on after the last
        // replacement, and `^` only matches at the very start.
        assert_eq!(run("rg aa a", "aaaa").unwrap(), "a");
        assert_eq!(run("rgg aa a", "aaaa").unwrap(), "aa");
        assert_eq!(run("rgg ^a b", "aaa").unwrap(), "baa");
        assert_eq!(run("r a b", "aaa").unwrap(), "baa");
        // Case-insensitive, case conversion in the pattern.
        assert_eq!(run("ri ^PXE(.*) \\Lpxe\\1", "PxE-A.B").unwrap(), "pxe-a.b");
        assert_eq!(run("r ^(.*)$ \\U\\1\\E-x", "ab").unwrap(), "AB-x");
        // `e` stops, `s` starts over.
        assert_eq!(run("re ^a b\nr ^b c", "a").unwrap(), "b");
        assert_eq!(run("r ^a b\nr ^b c", "a").unwrap(), "c");
        assert_eq!(run("r ^b c\nrs ^a b", "a").unwrap(), "c");
        // `~` acts when the regex does not match.
        assert_eq!(
            run("a~ ^boot/ only\\ boot/", "x").unwrap_err().to_string(),
            "refused by line 1 of the map file: only boot/"
        );
        assert_eq!(run("a~ ^boot/", "boot/x").unwrap(), "boot/x");
        // The client's address, and rules for one family.
        assert_eq!(run("r ^ \\i/", "f").unwrap(), "192.0.2.169/f");
        assert_eq!(run("r ^ \\x/", "f").unwrap(), "C00002A9/f");
        assert_eq!(
            run_from("r ^ \\i/", "f", "2001:db8::1").unwrap(),
            "2001:db8::1/f"
        );
        assert_eq!(
            run_from("r ^ \\i/", "f", "::ffff:192.0.2.169").unwrap(),
            "192.0.2.169/f"
        );
        assert_eq!(run("r4 ^ v4/\nr6 ^ v6/", "f").unwrap(), "v4/f");
        assert_eq!(run_from("r4 ^ v4/\nr6 ^ v6/", "f", "::1").unwrap(), "v6/f");
        // Write-only rules never apply to reads; read-only ones do.
        assert_eq!(run("rP ^ w/\nrG ^ r/", "f").unwrap(), "r/f");
        // Escapes in the pattern and the regex.
        assert_eq!(run("r a\\ b x\\ y\\\\z\\#", "a b").unwrap(), "x y\\z#");
        // Groups that did not take part expand to nothing.
        assert_eq!(run("r ^(a)|(b) [\\1\\2]", "b").unwrap(), "[b]");
        // Nothing matched: the input comes back unchanged, not copied.
        let m = MapFile::parse("r ^x y").unwrap();
        assert!(matches!(
            m.apply("a", V4.parse().unwrap()).unwrap(),
            Cow::Borrowed("a")
        ));
    }

    #[test]
    fn loops_and_growth_are_bounded() {
        assert_eq!(run("rs ^a a", "a"), Err(MapError::Loop(MAX_STEPS)));
        assert_eq!(run("rg ^ x", "a"), Err(MapError::TooLong));
        assert_eq!(run("rs (.*) \\0\\0", "ab"), Err(MapError::TooLong));
        // An empty match replaced by nothing, globally: the step budget ends it.
        assert_eq!(run("rgg x* ", "abc"), Err(MapError::Loop(MAX_STEPS)));
    }

    #[test]
    fn bad_files_name_the_line() {
        for (text, line, want) in [
            ("r", 1, "regex missing"),
            ("\n\nx ^a", 3, "invalid operation flag `x`"),
            ("r (unclosed x", 1, "bad regex"),
            (":label", 1, "labels"),
            ("rj ^a label", 1, "operation `j` is not supported"),
            ("E ^a", 1, "operation `E` is not supported"),
            ("r~ ^a b", 1, "r and ~ cannot be combined"),
            ("ra ^a b", 1, "r and a cannot be combined"),
            ("es ^a", 1, "e and s cannot be combined"),
            ("r ^a b c", 1, "unexpected `c`"),
        ] {
            let e = MapFile::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(want), "{text:?}: {e}");
        }
        let m = MapFile::parse("# only comments\n   \n\t# more\r\n").unwrap();
        assert!(m.is_empty());
    }
}
