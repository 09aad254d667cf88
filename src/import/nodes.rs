//! Import files (bulk enrollment), read without I/O: bytes in as they arrive, numbered
//! lines out ([`Lines`]), each line parsed into an [`ImportRecord`] or a reason it is
//! bad ([`Parser`]). The HTTP driver (`http::import`) feeds the request body through
//! these and commits the records in batches.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::api::v1::{ImportFormat, ImportProfileSpec, ImportRecord};
use crate::store::MacAddr;

/// One line of the file, numbered from 1, or why it cannot be read.
pub type NumberedLine = (u64, Result<String, String>);

/// Splits a byte stream into numbered lines, each at most `max_line` bytes.
#[derive(Debug)]
pub struct Lines {
    buf: Vec<u8>,
    number: u64,
    max_line: usize,
    /// Inside a line that is already too long: skip to its end.
    skipping: bool,
}

impl Lines {
    /// Lines of at most `max_line` bytes (without the line break).
    pub fn new(max_line: usize) -> Self {
        Lines {
            buf: Vec::new(),
            number: 0,
            max_line,
            skipping: false,
        }
    }

    /// Takes the next bytes; appends the lines they complete to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<NumberedLine>) {
        while !bytes.is_empty() {
            let (part, rest, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping {
                self.buf.extend_from_slice(part);
                if self.buf.len() > self.max_line {
                    self.skipping = true;
                    self.buf = Vec::new();
                }
            }
            if ended {
                self.end_line(out);
            }
        }
    }

    /// The last line, when the file does not end with a line break.
    pub fn finish(&mut self, out: &mut Vec<NumberedLine>) {
        if self.skipping || !self.buf.is_empty() {
            self.end_line(out);
        }
    }

    fn end_line(&mut self, out: &mut Vec<NumberedLine>) {
        self.number += 1;
        let line = if std::mem::take(&mut self.skipping) {
            Err(format!("line longer than {} bytes", self.max_line))
        } else {
            let mut b = std::mem::take(&mut self.buf);
            if b.last() == Some(&b'\r') {
                b.pop();
            }
            String::from_utf8(b).map_err(|_| "line is not UTF-8 text".to_string())
        };
        out.push((self.number, line));
    }
}

/// A CSV column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Column {
    Id,
    Macs,
    Group,
    Arch,
    Kind,
    Kernel,
    Ramdisk,
    Cmdline,
    Addresses,
}

/// Columns of a CSV file without a header line, in order.
const DEFAULT_COLUMNS: [Column; 9] = [
    Column::Id,
    Column::Macs,
    Column::Group,
    Column::Arch,
    Column::Kind,
    Column::Kernel,
    Column::Ramdisk,
    Column::Cmdline,
    Column::Addresses,
];

impl Column {
    fn parse(name: &str) -> Option<Column> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "id" | "node" => Column::Id,
            "macs" | "mac" => Column::Macs,
            "group" => Column::Group,
            "arch" => Column::Arch,
            "kind" | "profile" => Column::Kind,
            "kernel" => Column::Kernel,
            "ramdisk" | "initrd" => Column::Ramdisk,
            "cmdline" => Column::Cmdline,
            "addresses" | "address" => Column::Addresses,
            _ => return None,
        })
    }
}

/// Parses the lines of one import file.
#[derive(Debug)]
pub struct Parser {
    format: ImportFormat,
    /// CSV columns, once known (from the header or the first line).
    columns: Option<Vec<Column>>,
}

/// What a line of an import file holds.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A blank line, a comment or the CSV header.
    Skip,
    /// A node (boxed: a record is large, a skipped line nothing).
    Record(Box<ImportRecord>),
}

impl Parser {
    /// A parser of a file in `format`.
    pub fn new(format: ImportFormat) -> Self {
        Parser {
            format,
            columns: None,
        }
    }

    /// Reads one line. An `Err` is the reason the line is refused; a bad CSV header is
    /// an `Err` too (every following line is then read with the default columns, so
    /// each is refused or accepted on its own merits).
    pub fn line(&mut self, text: &str) -> Result<Parsed, String> {
        let t = text.trim();
        if t.is_empty() || t.starts_with('#') {
            return Ok(Parsed::Skip);
        }
        match self.format {
            ImportFormat::Jsonl => json_record(t).map(|r| Parsed::Record(Box::new(r))),
            ImportFormat::Csv => self.csv_line(t),
        }
    }

    fn csv_line(&mut self, t: &str) -> Result<Parsed, String> {
        let fields = csv_fields(t)?;
        let columns = match &self.columns {
            Some(c) => c,
            None => {
                let header = fields
                    .first()
                    .is_some_and(|f| Column::parse(f) == Some(Column::Id));
                if header {
                    let mut cols = Vec::new();
                    let mut bad = Vec::new();
                    for f in &fields {
                        match Column::parse(f) {
                            Some(c) if !cols.contains(&c) => cols.push(c),
                            Some(_) => bad.push(format!("{f:?} (twice)")),
                            None => bad.push(format!("{f:?}")),
                        }
                    }
                    if !bad.is_empty() {
                        self.columns = Some(DEFAULT_COLUMNS.to_vec());
                        return Err(format!(
                            "bad header column {}: use id, macs, group, arch, kind, kernel, ramdisk, cmdline, addresses",
                            bad.join(", ")
                        ));
                    }
                    if !cols.contains(&Column::Macs) {
                        self.columns = Some(DEFAULT_COLUMNS.to_vec());
                        return Err("the header has no macs column".into());
                    }
                    self.columns = Some(cols);
                    return Ok(Parsed::Skip);
                }
                self.columns.insert(DEFAULT_COLUMNS.to_vec())
            }
        };
        if fields.len() > columns.len() {
            return Err(format!(
                "{} fields, but only {} columns",
                fields.len(),
                columns.len()
            ));
        }
        let mut by: HashMap<Column, String> = HashMap::new();
        for (c, f) in columns.iter().zip(fields) {
            let f = f.trim();
            if !f.is_empty() {
                by.insert(*c, f.to_string());
            }
        }
        let id = by.remove(&Column::Id).ok_or("no node id")?;
        let macs = list(
            &by.remove(&Column::Macs)
                .ok_or_else(|| format!("node {id}: no MAC address"))?,
        )
        .map(|m| m.parse::<MacAddr>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
        // `-` clears the addresses; an empty field leaves them alone.
        let addresses = by
            .remove(&Column::Addresses)
            .map(|a| {
                list(
                    a.strip_prefix('-')
                        .filter(|r| r.trim().is_empty())
                        .unwrap_or(&a),
                )
                .map(|ip| {
                    ip.parse::<IpAddr>()
                        .map_err(|_| format!("invalid address {ip:?}: expected an IP address"))
                })
                .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let kind = by.remove(&Column::Kind);
        let (kernel, ramdisk, cmdline) = (
            by.remove(&Column::Kernel),
            by.remove(&Column::Ramdisk),
            by.remove(&Column::Cmdline),
        );
        let profile = match kind {
            Some(kind) => Some(ImportProfileSpec {
                kind,
                kernel,
                ramdisk,
                cmdline,
            }),
            None if kernel.is_some() || ramdisk.is_some() || cmdline.is_some() => {
                return Err("kernel, ramdisk or cmdline given without a profile kind".into())
            }
            None => None,
        };
        Ok(Parsed::Record(Box::new(ImportRecord {
            id,
            macs,
            group: by.remove(&Column::Group),
            arch: by.remove(&Column::Arch),
            addresses,
            profile,
        })))
    }
}

/// The items of a field holding several (MACs, addresses), separated by spaces, `;`,
/// `|` or `,`.
fn list(field: &str) -> impl Iterator<Item = &str> {
    field
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '|' | ','))
        .filter(|m| !m.is_empty())
}

/// A JSON line, with the offending field named on error.
fn json_record(t: &str) -> Result<ImportRecord, String> {
    let de = &mut serde_json::Deserializer::from_str(t);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// The fields of one CSV line (RFC 4180 quoting: `"a,b"`, `"say ""hi"""`); a quoted
/// field cannot span lines.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.trim().is_empty() && !was_quoted => {
                cur.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("a quote inside an unquoted field".into()),
            (false, ',') => {
                fields.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (false, c) if was_quoted && !c.is_whitespace() => {
                return Err("text after a closing quote".into())
            }
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed on its line".into());
    }
    fields.push(cur);
    Ok(fields)
}

/// Node lines of an import file, as the CLI counts them for its progress bar: lines
/// that are not blank, not comments, not a CSV header.
pub fn count_records(text: &str, format: ImportFormat) -> u64 {
    let mut p = Parser::new(format);
    text.lines()
        .filter(|l| !matches!(p.line(l), Ok(Parsed::Skip)))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], max: usize) -> Vec<NumberedLine> {
        let mut l = Lines::new(max);
        let mut out = Vec::new();
        for c in chunks {
            l.push(c, &mut out);
        }
        l.finish(&mut out);
        out
    }

    #[test]
    fn lines_are_numbered_across_chunks_and_bounded() {
        let got = lines(&[b"ab", b"c\r\n\nd", b"ef\n", b"0123456789x\nlast"], 10);
        assert_eq!(
            got,
            vec![
                (1, Ok("abc".into())),
                (2, Ok("".into())),
                (3, Ok("def".into())),
                (4, Err("line longer than 10 bytes".into())),
                (5, Ok("last".into())),
            ]
        );
        assert_eq!(lines(&[b"x\n"], 10), vec![(1, Ok("x".into()))]);
        assert_eq!(
            lines(&[b"\xff\xfe\n"], 10)[0].1,
            Err("line is not UTF-8 text".into())
        );
        // A long line split over many chunks costs no memory past the limit.
        let mut l = Lines::new(4);
        let mut out = Vec::new();
        for _ in 0..1000 {
            l.push(b"xxxxxxxx", &mut out);
        }
        assert!(l.buf.len() <= 4 && out.is_empty());
        l.push(b"\nok\n", &mut out);
        assert_eq!(out[1], (2, Ok("ok".into())));
    }

    fn rec(p: &mut Parser, line: &str) -> ImportRecord {
        match p.line(line) {
            Ok(Parsed::Record(r)) => *r,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn csv_with_header_in_any_order() {
        let mut p = Parser::new(ImportFormat::Csv);
        assert_eq!(
            p.line("id,kind,macs,kernel,ramdisk,cmdline"),
            Ok(Parsed::Skip)
        );
        let r = rec(
            &mut p,
            r#"n1,deploy,"52:54:00:00:00:01,52-54-00-00-00-02",vmlinuz,initrd,"console=ttyS0 x=""y""""#,
        );
        assert_eq!(r.id, "n1");
        assert_eq!(r.macs.len(), 2);
        assert_eq!((r.group.clone(), r.arch.clone()), (None, None));
        let p1 = r.profile.unwrap();
        assert_eq!(p1.kind, "deploy");
        assert_eq!(p1.kernel.as_deref(), Some("vmlinuz"));
        assert_eq!(p1.cmdline.as_deref(), Some(r#"console=ttyS0 x="y""#));
        // Fewer fields than columns: the rest are absent.
        let r = rec(&mut p, "n2,,525400000003");
        assert!(r.profile.is_none());
        assert_eq!(p.line("# a comment"), Ok(Parsed::Skip));
        assert_eq!(p.line("   "), Ok(Parsed::Skip));
    }

    #[test]
    fn csv_without_header_uses_the_default_columns() {
        let mut p = Parser::new(ImportFormat::Csv);
        let r = rec(
            &mut p,
            "n1,52:54:00:00:00:01 52:54:00:00:00:02;52:54:00:00:00:03,rack2,aarch64,local",
        );
        assert_eq!(r.macs.len(), 3);
        assert_eq!(r.group.as_deref(), Some("rack2"));
        assert_eq!(r.arch.as_deref(), Some("aarch64"));
        assert_eq!(r.profile.unwrap().kind, "local");
    }

    #[test]
    fn csv_addresses_are_listed_cleared_or_absent() {
        let mut p = Parser::new(ImportFormat::Csv);
        assert_eq!(p.line("id,macs,addresses"), Ok(Parsed::Skip));
        let r = rec(
            &mut p,
            r#"n1,52:54:00:00:00:01,"10.0.0.5, fd00::5;10.0.0.6""#,
        );
        let ips: Vec<IpAddr> = ["10.0.0.5", "fd00::5", "10.0.0.6"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(r.addresses, Some(ips));
        assert_eq!(
            rec(&mut p, "n2,52:54:00:00:00:02,-").addresses,
            Some(vec![])
        );
        assert_eq!(rec(&mut p, "n3,52:54:00:00:00:03,").addresses, None);
        // Without a header, addresses are the ninth column.
        let mut p = Parser::new(ImportFormat::Csv);
        let r = rec(&mut p, "n1,52:54:00:00:00:01,,,,,,,10.0.0.7");
        assert_eq!(r.addresses, Some(vec!["10.0.0.7".parse().unwrap()]));
        let mut p = Parser::new(ImportFormat::Jsonl);
        let r = rec(
            &mut p,
            r#"{"id":"n1","macs":["52:54:00:00:00:01"],"addresses":["10.0.0.8"]}"#,
        );
        assert_eq!(r.addresses, Some(vec!["10.0.0.8".parse().unwrap()]));
        let e = p
            .line(r#"{"id":"n1","macs":[],"addresses":["nope"]}"#)
            .unwrap_err();
        assert!(e.contains("addresses[0]"), "{e}");
    }

    #[test]
    fn bad_csv_lines_say_why() {
        let mut p = Parser::new(ImportFormat::Csv);
        for (line, want) in [
            ("n1,zz:54:00:00:00:01", "invalid MAC"),
            ("n1", "no MAC"),
            (",52:54:00:00:00:01", "no node id"),
            ("n1,52:54:00:00:00:01,,,,vmlinuz", "without a profile kind"),
            ("n1,\"52:54:00:00:00:01", "not closed"),
            ("n1,5\"2", "quote inside"),
            ("n1,\"a\"b", "after a closing quote"),
            ("a,b,c,d,e,f,g,h,i,j", "10 fields"),
            ("n1,52:54:00:00:00:01,,,,,,,10.0.0.300", "invalid address"),
        ] {
            let e = p.line(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
        let mut p = Parser::new(ImportFormat::Csv);
        let e = p.line("id,macs,colour").unwrap_err();
        assert!(e.contains("\"colour\""), "{e}");
        let mut p = Parser::new(ImportFormat::Csv);
        assert!(p.line("id,group").unwrap_err().contains("no macs column"));
    }

    #[test]
    fn json_lines_name_the_bad_field() {
        let mut p = Parser::new(ImportFormat::Jsonl);
        let r = rec(
            &mut p,
            r#"{"id":"n1","macs":["52:54:00:00:00:01"],"profile":{"kind":"instance","kernel":"k","ramdisk":"r"}}"#,
        );
        assert_eq!(r.profile.unwrap().ramdisk.as_deref(), Some("r"));
        for (line, want) in [
            (r#"{"id":"n1","macs":["52:54:00:00:00:01","x"]}"#, "macs[1]"),
            (r#"{"id":"n1"}"#, "missing field `macs`"),
            (r#"{"id":"n1","macs":[],"colour":1}"#, "colour"),
            (
                r#"{"id":"n1","macs":[],"profile":{"kind":"local","x":1}}"#,
                "profile",
            ),
            ("not json", "expected"),
        ] {
            let e = p.line(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn records_are_counted_like_the_parser_reads_them() {
        let csv = "id,macs\n# c\n\nn1,525400000001\nn2,525400000002\nbad\n";
        assert_eq!(count_records(csv, ImportFormat::Csv), 3);
        assert_eq!(count_records("{}\n\n{}\n", ImportFormat::Jsonl), 2);
    }
}
