//! TFTP packets: RFC 1350 with the option extensions of RFC 2347 (negotiation),
//! RFC 2348 (`blksize`), RFC 2349 (`timeout`, `tsize`) and RFC 7440 (`windowsize`).
//!
//! [`Packet::parse`] borrows from the datagram, never panics on any input and never
//! allocates more than the input's own size; [`Packet::emit`] writes the wire form.
//! Options are typed and range-checked here, so the transfer engine never sees a raw
//! option string.

use std::borrow::Cow;
use std::fmt;

use nom::bytes::complete::take_till;
use nom::number::complete::be_u16;
use nom::IResult;

/// Longest file name accepted in a request, in bytes.
pub const MAX_FILENAME_LEN: usize = 512;
/// Default block size of RFC 1350.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Smallest block size allowed by RFC 2348.
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size allowed by RFC 2348.
pub const MAX_BLKSIZE: u16 = 65464;
/// Most options a request may carry before the rest are ignored (bounds work per packet).
pub const MAX_OPTIONS: usize = 16;

/// TFTP opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    /// Read request.
    Rrq = 1,
    /// Write request.
    Wrq = 2,
    /// Data block.
    Data = 3,
    /// Acknowledgement.
    Ack = 4,
    /// Error.
    Error = 5,
    /// Option acknowledgement (RFC 2347).
    Oack = 6,
}

impl Opcode {
    /// The opcode for a wire value, if it is one.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Opcode::Rrq,
            2 => Opcode::Wrq,
            3 => Opcode::Data,
            4 => Opcode::Ack,
            5 => Opcode::Error,
            6 => Opcode::Oack,
            _ => return None,
        })
    }

    /// True for RRQ and WRQ, the packets that open a transfer.
    pub fn is_request(self) -> bool {
        matches!(self, Opcode::Rrq | Opcode::Wrq)
    }
}

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Raw bytes.
    Octet,
    /// NVT-ASCII: LF is sent as CR LF, CR as CR NUL.
    Netascii,
    /// Obsolete mail mode (RFC 1350); parsed so it can be refused precisely.
    Mail,
}

impl Mode {
    /// The mode's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
        }
    }
}

/// TFTP error codes (RFC 1350 and RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTid,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation refused (RFC 2347).
    OptionNegotiation,
    /// Any other value.
    Other(u16),
}

impl ErrorCode {
    /// Wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionNegotiation => 8,
            ErrorCode::Other(v) => v,
        }
    }

    /// From a wire value.
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionNegotiation,
            v => ErrorCode::Other(v),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_u16())
    }
}

/// Why an option of a request was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// Not an option this server knows (RFC 2347: ignore it).
    Unknown,
    /// Not a decimal number.
    NotANumber,
    /// A number outside the RFC's range.
    OutOfRange,
    /// Given twice; the first one counts.
    Duplicate,
    /// More than [`MAX_OPTIONS`] options.
    TooMany,
}

impl IgnoreReason {
    /// Short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::Unknown => "unknown",
            IgnoreReason::NotANumber => "not_a_number",
            IgnoreReason::OutOfRange => "out_of_range",
            IgnoreReason::Duplicate => "duplicate",
            IgnoreReason::TooMany => "too_many",
        }
    }
}

/// An option present in a request but not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredOption<'a> {
    /// The option name as sent (lossy if not UTF-8).
    pub name: Cow<'a, str>,
    /// Why it was not taken.
    pub reason: IgnoreReason,
}

/// Options of a request, each within its RFC range. `None` means absent or ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOptions<'a> {
    /// RFC 2348 block size, 8..=65464.
    pub blksize: Option<u16>,
    /// RFC 2349 transfer size (0 in a read request: "tell me").
    pub tsize: Option<u64>,
    /// RFC 2349 retransmission timeout in seconds, 1..=255.
    pub timeout: Option<u8>,
    /// RFC 7440 window size, 1..=65535.
    pub windowsize: Option<u16>,
    /// Options that were present but not taken, for logs and metrics.
    pub ignored: Vec<IgnoredOption<'a>>,
}

impl RequestOptions<'_> {
    /// True when no option was taken.
    pub fn is_empty(&self) -> bool {
        self.blksize.is_none()
            && self.tsize.is_none()
            && self.timeout.is_none()
            && self.windowsize.is_none()
    }
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// File name as sent (validated UTF-8, no NUL, at most [`MAX_FILENAME_LEN`] bytes).
    pub filename: &'a str,
    /// A trailing `0xFF` after the name was dropped (see [`tftp_name`]).
    pub dropped_trailing_byte: bool,
    /// Transfer mode.
    pub mode: Mode,
    /// Typed options.
    pub options: RequestOptions<'a>,
}

/// Options a server accepted, as sent in an OACK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcceptedOptions {
    /// Block size.
    pub blksize: Option<u16>,
    /// Transfer size.
    pub tsize: Option<u64>,
    /// Timeout in seconds.
    pub timeout: Option<u8>,
    /// Window size.
    pub windowsize: Option<u16>,
}

impl AcceptedOptions {
    /// True when no option was accepted (then no OACK is sent).
    pub fn is_empty(&self) -> bool {
        self.blksize.is_none()
            && self.tsize.is_none()
            && self.timeout.is_none()
            && self.windowsize.is_none()
    }
}

/// One TFTP packet, borrowing from the datagram it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request<'a>),
    /// Write request.
    Wrq(Request<'a>),
    /// Data block.
    Data {
        /// Block number (wraps).
        block: u16,
        /// Payload.
        data: &'a [u8],
    },
    /// Acknowledgement.
    Ack {
        /// Block number acknowledged.
        block: u16,
    },
    /// Error.
    Error {
        /// Error code.
        code: ErrorCode,
        /// Message (lossy if not UTF-8).
        message: Cow<'a, str>,
    },
    /// Option acknowledgement.
    Oack(AcceptedOptions),
}

/// Why a datagram is not a valid TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its opcode's fixed part.
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    /// Opcode outside 1..=6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A request field without its NUL terminator.
    #[error("request {0} is not NUL-terminated")]
    Unterminated(&'static str),
    /// Empty file name.
    #[error("file name is empty")]
    EmptyFilename,
    /// File name longer than [`MAX_FILENAME_LEN`].
    #[error("file name is longer than {MAX_FILENAME_LEN} bytes")]
    FilenameTooLong,
    /// File name that is not UTF-8.
    #[error("file name is not valid UTF-8")]
    FilenameNotUtf8,
    /// Mode other than octet, netascii or mail.
    #[error("transfer mode is not octet, netascii or mail")]
    UnknownMode,
    /// An option name without a value.
    #[error("option without a value")]
    OptionWithoutValue,
    /// An OACK option value that is not acceptable (client side only).
    #[error("bad value for option {0}")]
    BadOackValue(&'static str),
    /// Bytes after the fixed part of an ACK or after an ERROR's message.
    #[error("trailing bytes after {0}")]
    Trailing(&'static str),
}

impl WireError {
    /// Short label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            WireError::TooShort(_) => "too_short",
            WireError::UnknownOpcode(_) => "unknown_opcode",
            WireError::Unterminated(_) => "unterminated",
            WireError::EmptyFilename => "empty_filename",
            WireError::FilenameTooLong => "filename_too_long",
            WireError::FilenameNotUtf8 => "filename_not_utf8",
            WireError::UnknownMode => "unknown_mode",
            WireError::OptionWithoutValue => "option_without_value",
            WireError::BadOackValue(_) => "bad_oack_value",
            WireError::Trailing(_) => "trailing_bytes",
        }
    }

    /// The TFTP error a server answers a malformed request with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            WireError::FilenameTooLong | WireError::FilenameNotUtf8 | WireError::EmptyFilename => {
                ErrorCode::FileNotFound
            }
            _ => ErrorCode::IllegalOperation,
        }
    }
}

/// A parse failure, with the opcode when one was read (so a server knows whether the
/// sender was making a request and deserves an ERROR answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ParseError {
    /// Opcode of the datagram, if known.
    pub opcode: Option<Opcode>,
    /// What was wrong.
    pub error: WireError,
}

fn nul_terminated(input: &[u8]) -> IResult<&[u8], &[u8]> {
    take_till(|b| b == 0)(input)
}

/// Splits one NUL-terminated field off `input`.
fn field<'a>(input: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), WireError> {
    let (rest, f) = nul_terminated(input)
        .map_err(|_: nom::Err<nom::error::Error<&[u8]>>| WireError::Unterminated(what))?;
    if rest.is_empty() {
        return Err(WireError::Unterminated(what));
    }
    Ok((&rest[1..], f))
}

/// Parses a decimal option value; `None` if not all ASCII digits or it overflows.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

fn parse_request(input: &[u8]) -> Result<Request<'_>, WireError> {
    let (rest, name) = field(input, "file name")?;
    if name.is_empty() {
        return Err(WireError::EmptyFilename);
    }
    if name.len() > MAX_FILENAME_LEN {
        return Err(WireError::FilenameTooLong);
    }
    let (filename, dropped_trailing_byte) = tftp_name(name).ok_or(WireError::FilenameNotUtf8)?;
    if filename.is_empty() {
        return Err(WireError::EmptyFilename);
    }
    let (mut rest, mode) = field(rest, "mode")?;
    let mode = if mode.eq_ignore_ascii_case(b"octet") {
        Mode::Octet
    } else if mode.eq_ignore_ascii_case(b"netascii") {
        Mode::Netascii
    } else if mode.eq_ignore_ascii_case(b"mail") {
        Mode::Mail
    } else {
        return Err(WireError::UnknownMode);
    };
    let mut options = RequestOptions::default();
    let mut seen = 0usize;
    // Some clients pad requests with NULs; an empty name ends the option list.
    while !rest.is_empty() && rest[0] != 0 {
        let (r, name) = field(rest, "option name")?;
        let (r, value) = match field(r, "option value") {
            Ok(v) => v,
            Err(_) => return Err(WireError::OptionWithoutValue),
        };
        rest = r;
        seen += 1;
        let lossy = String::from_utf8_lossy(name);
        if seen > MAX_OPTIONS {
            options.ignored.push(IgnoredOption {
                name: lossy,
                reason: IgnoreReason::TooMany,
            });
            // Stop recording: bounded work and memory per packet.
            break;
        }
        let num = parse_decimal(value);
        let verdict = if name.eq_ignore_ascii_case(b"blksize") {
            take_option(&mut options.blksize, num, |n| {
                (u64::from(MIN_BLKSIZE)..=u64::from(MAX_BLKSIZE))
                    .contains(&n)
                    .then_some(n as u16)
            })
        } else if name.eq_ignore_ascii_case(b"tsize") {
            take_option(&mut options.tsize, num, Some)
        } else if name.eq_ignore_ascii_case(b"timeout") {
            take_option(&mut options.timeout, num, |n| {
                (1..=255).contains(&n).then_some(n as u8)
            })
        } else if name.eq_ignore_ascii_case(b"windowsize") {
            take_option(&mut options.windowsize, num, |n| {
                (1..=65535).contains(&n).then_some(n as u16)
            })
        } else {
            Err(IgnoreReason::Unknown)
        };
        if let Err(reason) = verdict {
            options.ignored.push(IgnoredOption {
                name: lossy,
                reason,
            });
        }
    }
    Ok(Request {
        filename,
        dropped_trailing_byte,
        mode,
        options,
    })
}

/// Stores a numeric option unless it is a duplicate, not a number or out of range.
fn take_option<T>(
    slot: &mut Option<T>,
    num: Option<u64>,
    check: impl FnOnce(u64) -> Option<T>,
) -> Result<(), IgnoreReason> {
    if slot.is_some() {
        return Err(IgnoreReason::Duplicate);
    }
    let n = num.ok_or(IgnoreReason::NotANumber)?;
    *slot = Some(check(n).ok_or(IgnoreReason::OutOfRange)?);
    Ok(())
}

fn parse_oack(mut rest: &[u8]) -> Result<AcceptedOptions, WireError> {
    let mut o = AcceptedOptions::default();
    while !rest.is_empty() && rest[0] != 0 {
        let (r, name) = field(rest, "option name")?;
        let (r, value) = field(r, "option value").map_err(|_| WireError::OptionWithoutValue)?;
        rest = r;
        let n = parse_decimal(value);
        if name.eq_ignore_ascii_case(b"blksize") {
            o.blksize = Some(
                n.filter(|n| (u64::from(MIN_BLKSIZE)..=u64::from(MAX_BLKSIZE)).contains(n))
                    .ok_or(WireError::BadOackValue("blksize"))? as u16,
            );
        } else if name.eq_ignore_ascii_case(b"tsize") {
            o.tsize = Some(n.ok_or(WireError::BadOackValue("tsize"))?);
        } else if name.eq_ignore_ascii_case(b"timeout") {
            o.timeout = Some(
                n.filter(|n| (1..=255).contains(n))
                    .ok_or(WireError::BadOackValue("timeout"))? as u8,
            );
        } else if name.eq_ignore_ascii_case(b"windowsize") {
            o.windowsize = Some(
                n.filter(|n| (1..=65535).contains(n))
                    .ok_or(WireError::BadOackValue("windowsize"))? as u16,
            );
        }
    }
    Ok(o)
}

impl<'a> Packet<'a> {
    /// Parses one datagram. Never panics; errors say what was wrong.
    pub fn parse(buf: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        let (rest, op) = be_u16::<_, nom::error::Error<&[u8]>>(buf).map_err(|_| ParseError {
            opcode: None,
            error: WireError::TooShort(buf.len()),
        })?;
        let opcode = Opcode::from_u16(op).ok_or(ParseError {
            opcode: None,
            error: WireError::UnknownOpcode(op),
        })?;
        let err = |error| ParseError {
            opcode: Some(opcode),
            error,
        };
        match opcode {
            Opcode::Rrq => parse_request(rest).map(Packet::Rrq).map_err(err),
            Opcode::Wrq => parse_request(rest).map(Packet::Wrq).map_err(err),
            Opcode::Data => {
                let (data, block) = be_u16::<_, nom::error::Error<&[u8]>>(rest)
                    .map_err(|_| err(WireError::TooShort(buf.len())))?;
                Ok(Packet::Data { block, data })
            }
            Opcode::Ack => {
                let (tail, block) = be_u16::<_, nom::error::Error<&[u8]>>(rest)
                    .map_err(|_| err(WireError::TooShort(buf.len())))?;
                // Some stacks pad short frames; tolerate zero padding only.
                if tail.iter().any(|&b| b != 0) {
                    return Err(err(WireError::Trailing("ACK")));
                }
                Ok(Packet::Ack { block })
            }
            Opcode::Error => {
                let (rest, code) = be_u16::<_, nom::error::Error<&[u8]>>(rest)
                    .map_err(|_| err(WireError::TooShort(buf.len())))?;
                // A missing terminator is common in the wild; take the message as is.
                let msg = match rest.iter().position(|&b| b == 0) {
                    Some(i) => &rest[..i],
                    None => rest,
                };
                Ok(Packet::Error {
                    code: ErrorCode::from_u16(code),
                    message: String::from_utf8_lossy(msg),
                })
            }
            Opcode::Oack => parse_oack(rest).map(Packet::Oack).map_err(err),
        }
    }

    /// Appends the wire form of this packet to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(r) => emit_request(out, Opcode::Rrq, r.filename, r.mode, &r.options),
            Packet::Wrq(r) => emit_request(out, Opcode::Wrq, r.filename, r.mode, &r.options),
            Packet::Data { block, data } => {
                out.extend_from_slice(&data_header(*block));
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => emit_ack(out, *block),
            Packet::Error { code, message } => emit_error(out, *code, message),
            Packet::Oack(o) => emit_oack(out, o),
        }
    }
}

/// The 4-byte header of a DATA packet.
#[inline]
pub fn data_header(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, Opcode::Data as u8, b[0], b[1]]
}

/// Appends an ACK.
pub fn emit_ack(out: &mut Vec<u8>, block: u16) {
    out.extend_from_slice(&(Opcode::Ack as u16).to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

/// Appends an ERROR. NUL bytes in `message` are dropped so the packet stays well-formed.
pub fn emit_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(&(Opcode::Error as u16).to_be_bytes());
    out.extend_from_slice(&code.to_u16().to_be_bytes());
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
}

fn push_option(out: &mut Vec<u8>, name: &str, value: u64) {
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(value.to_string().as_bytes());
    out.push(0);
}

/// Appends an OACK listing the accepted options.
pub fn emit_oack(out: &mut Vec<u8>, o: &AcceptedOptions) {
    out.extend_from_slice(&(Opcode::Oack as u16).to_be_bytes());
    if let Some(v) = o.blksize {
        push_option(out, "blksize", v.into());
    }
    if let Some(v) = o.tsize {
        push_option(out, "tsize", v);
    }
    if let Some(v) = o.timeout {
        push_option(out, "timeout", v.into());
    }
    if let Some(v) = o.windowsize {
        push_option(out, "windowsize", v.into());
    }
}

/// Appends a request (RRQ or WRQ) with the taken options; ignored ones are not emitted.
pub fn emit_request(
    out: &mut Vec<u8>,
    op: Opcode,
    filename: &str,
    mode: Mode,
    o: &RequestOptions<'_>,
) {
    out.extend_from_slice(&(op as u16).to_be_bytes());
    out.extend(filename.bytes().filter(|&b| b != 0));
    out.push(0);
    out.extend_from_slice(mode.as_str().as_bytes());
    out.push(0);
    if let Some(v) = o.blksize {
        push_option(out, "blksize", v.into());
    }
    if let Some(v) = o.tsize {
        push_option(out, "tsize", v);
    }
    if let Some(v) = o.timeout {
        push_option(out, "timeout", v.into());
    }
    if let Some(v) = o.windowsize {
        push_option(out, "windowsize", v.into());
    }
}

/// Converts octets to netascii (RFC 764): LF -> CR LF, CR -> CR NUL.
pub fn to_netascii(src: &[u8]) -> Vec<u8> {
    let extra = src.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    let mut out = Vec::with_capacity(src.len() + extra);
    for &b in src {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

/// Converts netascii back to octets (the inverse of [`to_netascii`]); a client helper.
pub fn from_netascii(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        if src[i] == b'\r' && i + 1 < src.len() {
            match src[i + 1] {
                b'\n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                0 => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(src[i]);
        i += 1;
    }
    out
}

/// What the 16-bit block number becomes after 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rollover {
    /// 65535 is followed by 0 (tftp-hpa, iPXE, EDK2, curl).
    #[default]
    Zero,
    /// 65535 is followed by 1 (some older clients).
    One,
}

impl Rollover {
    /// Wire number of absolute block `k` (k >= 0; block 0 is the OACK's ACK).
    #[inline]
    pub fn wire(self, k: u64) -> u16 {
        match self {
            Rollover::Zero => k as u16,
            Rollover::One if k <= 65535 => k as u16,
            Rollover::One => ((k - 65536) % 65535 + 1) as u16,
        }
    }
}

/// A TFTP file name's bytes as text: UTF-8, with the one tolerated trailing `0xFF`
/// dropped (old ROMs read the DHCP boot-file option as a C string and run into its END
/// option). Returns the name and whether a byte was dropped; `None` if not UTF-8.
pub fn tftp_name(raw: &[u8]) -> Option<(&str, bool)> {
    match std::str::from_utf8(raw) {
        Ok(s) => Some((s, false)),
        Err(_) => match raw.split_last() {
            // 0xFF never occurs in UTF-8, so dropping it cannot change a real name.
            Some((0xff, rest)) => std::str::from_utf8(rest).ok().map(|s| (s, true)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tftp_name_bytes() {
        assert_eq!(tftp_name(b"pxelinux.0"), Some(("pxelinux.0", false)));
        // The byte old ROMs append after reading past option 67 into the END option.
        assert_eq!(tftp_name(b"pxelinux.0\xff"), Some(("pxelinux.0", true)));
        assert_eq!(
            tftp_name("ünï\u{7f}".as_bytes()),
            Some(("ünï\u{7f}", false))
        );
        for bad in [
            &b"a\xff\xfeb"[..],
            b"a\xffb",
            b"pxelinux.0\xff\xff",
            b"pxelinux.0\xfe",
            b"\xc3\xff",
        ] {
            assert_eq!(tftp_name(bad), None, "{bad:?}");
        }
        // A lone 0xFF is an empty name, refused where names are checked.
        assert_eq!(tftp_name(b"\xff"), Some(("", true)));
    }

    fn rrq(name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut v = vec![0, 1];
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v.extend_from_slice(mode.as_bytes());
        v.push(0);
        for (k, val) in opts {
            v.extend_from_slice(k.as_bytes());
            v.push(0);
            v.extend_from_slice(val.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_rrq_with_all_options() {
        let b = rrq(
            "bios/pxelinux.0",
            "OCTET",
            &[
                ("blksize", "1432"),
                ("tsize", "0"),
                ("timeout", "3"),
                ("WindowSize", "16"),
            ],
        );
        let p = Packet::parse(&b).unwrap();
        let Packet::Rrq(r) = p else { panic!() };
        assert_eq!(r.filename, "bios/pxelinux.0");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options.blksize, Some(1432));
        assert_eq!(r.options.tsize, Some(0));
        assert_eq!(r.options.timeout, Some(3));
        assert_eq!(r.options.windowsize, Some(16));
        assert!(r.options.ignored.is_empty());
        assert!(!r.dropped_trailing_byte);
    }

    /// Old PXE ROMs read the DHCP boot-file option as a C string and append the END
    /// option (0xFF) to the name; that one byte is dropped, other bad bytes are not.
    #[test]
    fn trailing_ff_after_the_name_is_dropped() {
        let mut b = vec![0, 1];
        b.extend_from_slice(b"pxelinux.0\xff\x00octet\x00tsize\x000\x00");
        let Packet::Rrq(r) = Packet::parse(&b).unwrap() else {
            panic!()
        };
        assert_eq!(r.filename, "pxelinux.0");
        assert!(r.dropped_trailing_byte);
        assert_eq!(r.options.tsize, Some(0));
        for bad in [&b"\xff\xff"[..], b"\xfe"] {
            let mut b = vec![0, 1];
            b.extend_from_slice(b"pxelinux.0");
            b.extend_from_slice(bad);
            b.extend_from_slice(b"\0octet\0");
            let e = Packet::parse(&b).unwrap_err();
            assert_eq!(e.error, WireError::FilenameNotUtf8, "{bad:?}");
        }
        let e = Packet::parse(b"\x00\x01\xff\x00octet\x00").unwrap_err();
        assert_eq!(e.error, WireError::EmptyFilename);
    }

    #[test]
    fn out_of_range_and_unknown_options_are_ignored() {
        let b = rrq(
            "f",
            "netascii",
            &[
                ("blksize", "7"),
                ("timeout", "0"),
                ("windowsize", "0"),
                ("tsize", "x1"),
                ("multicast", ""),
                ("blksize", "512"),
            ],
        );
        let Packet::Rrq(r) = Packet::parse(&b).unwrap() else {
            panic!()
        };
        assert!(r.options.is_empty() || r.options.blksize == Some(512));
        assert_eq!(
            r.options.blksize,
            Some(512),
            "the later valid blksize is taken"
        );
        let reasons: Vec<_> = r.options.ignored.iter().map(|i| i.reason).collect();
        assert_eq!(
            reasons,
            vec![
                IgnoreReason::OutOfRange,
                IgnoreReason::OutOfRange,
                IgnoreReason::OutOfRange,
                IgnoreReason::NotANumber,
                IgnoreReason::Unknown
            ]
        );
    }

    #[test]
    fn blksize_bounds() {
        for (v, want) in [
            ("8", Some(8)),
            ("65464", Some(65464)),
            ("65465", None),
            ("99999999999999999999999", None),
        ] {
            let b = rrq("f", "octet", &[("blksize", v)]);
            let Packet::Rrq(r) = Packet::parse(&b).unwrap() else {
                panic!()
            };
            assert_eq!(r.options.blksize, want, "{v}");
        }
    }

    #[test]
    fn bad_requests_have_specific_errors() {
        let cases: Vec<(Vec<u8>, WireError)> = vec![
            (vec![], WireError::TooShort(0)),
            (vec![0], WireError::TooShort(1)),
            (vec![0, 9, 1], WireError::UnknownOpcode(9)),
            (vec![0, 1, b'a'], WireError::Unterminated("file name")),
            (vec![0, 1, 0, b'o', 0], WireError::EmptyFilename),
            (
                vec![0, 1, b'a', 0, b'o', b'c'],
                WireError::Unterminated("mode"),
            ),
            (rrq("a", "binary", &[]), WireError::UnknownMode),
            (
                {
                    let mut v = vec![0, 1, 0xff, 0xfe, 0];
                    v.extend_from_slice(b"octet\0");
                    v
                },
                WireError::FilenameNotUtf8,
            ),
            (
                rrq(&"x".repeat(MAX_FILENAME_LEN + 1), "octet", &[]),
                WireError::FilenameTooLong,
            ),
            (
                {
                    let mut v = rrq("a", "octet", &[]);
                    v.extend_from_slice(b"blksize\0");
                    v
                },
                WireError::OptionWithoutValue,
            ),
            (vec![0, 4, 0, 1, 7], WireError::Trailing("ACK")),
        ];
        for (bytes, want) in cases {
            assert_eq!(Packet::parse(&bytes).unwrap_err().error, want, "{bytes:?}");
        }
    }

    #[test]
    fn padded_request_and_ack_are_accepted() {
        let mut b = rrq("a", "octet", &[("tsize", "0")]);
        b.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(Packet::parse(&b), Ok(Packet::Rrq(_))));
        assert_eq!(
            Packet::parse(&[0, 4, 0, 9, 0, 0]).unwrap(),
            Packet::Ack { block: 9 }
        );
    }

    #[test]
    fn too_many_options_are_bounded() {
        let opts: Vec<(String, String)> =
            (0..1000).map(|i| (format!("x{i}"), "1".into())).collect();
        let refs: Vec<(&str, &str)> = opts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let b = rrq("a", "octet", &refs);
        let Packet::Rrq(r) = Packet::parse(&b).unwrap() else {
            panic!()
        };
        assert_eq!(r.options.ignored.len(), MAX_OPTIONS + 1);
    }

    #[test]
    fn netascii_round_trip() {
        let src = b"a\nb\r\nc\rd\r";
        let n = to_netascii(src);
        assert_eq!(n, b"a\r\nb\r\0\r\nc\r\0d\r\0");
        assert_eq!(from_netascii(&n), src);
    }

    fn arb_packet() -> impl Strategy<Value = Vec<u8>> {
        let req = (
            "[a-zA-Z0-9/._-]{1,64}",
            prop_oneof![Just(Mode::Octet), Just(Mode::Netascii)],
            proptest::option::of(8u16..=65464),
            proptest::option::of(any::<u64>()),
            proptest::option::of(1u8..=255),
            proptest::option::of(1u16..=65535),
            any::<bool>(),
        )
            .prop_map(|(name, mode, b, t, to, w, write)| {
                let o = RequestOptions {
                    blksize: b,
                    tsize: t,
                    timeout: to,
                    windowsize: w,
                    ignored: vec![],
                };
                let mut out = vec![];
                emit_request(
                    &mut out,
                    if write { Opcode::Wrq } else { Opcode::Rrq },
                    &name,
                    mode,
                    &o,
                );
                out
            });
        let data =
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..600)).prop_map(|(b, d)| {
                let mut out = vec![];
                Packet::Data { block: b, data: &d }.emit(&mut out);
                out
            });
        let ack = any::<u16>().prop_map(|b| {
            let mut out = vec![];
            emit_ack(&mut out, b);
            out
        });
        let err = (any::<u16>(), "[ -~]{0,80}").prop_map(|(c, m)| {
            let mut out = vec![];
            emit_error(&mut out, ErrorCode::from_u16(c), &m);
            out
        });
        let oack = (
            proptest::option::of(8u16..=65464),
            proptest::option::of(any::<u64>()),
            proptest::option::of(1u8..=255),
            proptest::option::of(1u16..=65535),
        )
            .prop_map(|(blksize, tsize, timeout, windowsize)| {
                let mut out = vec![];
                emit_oack(
                    &mut out,
                    &AcceptedOptions {
                        blksize,
                        tsize,
                        timeout,
                        windowsize,
                    },
                );
                out
            });
        prop_oneof![req, data, ack, err, oack]
    }

    proptest! {
        #[test]
        fn emit_parse_round_trip(bytes in arb_packet()) {
            let p = Packet::parse(&bytes).expect("emitted packets parse");
            let mut again = vec![];
            p.emit(&mut again);
            prop_assert_eq!(&again, &bytes);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mutated_requests(
            bytes in arb_packet(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let mut b = bytes;
            for (i, v) in flips { if !b.is_empty() { let n = b.len(); b[i % n] = v; } }
            let n = b.len();
            b.truncate(cut % (n + 1));
            let _ = Packet::parse(&b);
        }

        #[test]
        fn netascii_inverse(src in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert_eq!(from_netascii(&to_netascii(&src)), src);
        }
    }
}
