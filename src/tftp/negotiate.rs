//! RFC 2347 option negotiation: what the server accepts of a client's options.

use std::time::Duration;

use crate::tftp::transfer::{Params, Rollover};
use crate::wire::tftp::{
    AcceptedOptions, RequestOptions, DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE,
};

/// Server-side limits and defaults for negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted.
    pub max_blksize: u16,
    /// Largest window granted.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client asks for none.
    pub default_timeout: Duration,
    /// Longest timeout granted: a larger `timeout` option is not acknowledged (RFC 2349
    /// lets the server only echo the client's value or leave it out) and this is used.
    /// It bounds how long an abandoned transfer holds its slot.
    pub max_timeout: Duration,
    /// Timeouts in a row before a transfer is dropped.
    pub max_retries: u32,
    /// Block-number rollover.
    pub rollover: Rollover,
}

/// Decides the transfer parameters and the OACK (if any option is accepted).
///
/// `transfer_size` is the size that will be sent (after netascii conversion);
/// `path_cap` is the largest block size that fits the path MTU, if known.
pub fn negotiate(
    opts: &RequestOptions<'_>,
    transfer_size: u64,
    limits: &Limits,
    path_cap: Option<u16>,
) -> Params {
    let cap = path_cap
        .unwrap_or(u16::MAX)
        .min(limits.max_blksize)
        .max(MIN_BLKSIZE);
    // A smaller value in the OACK than asked is allowed (RFC 2348).
    let blksize = opts.blksize.map(|b| b.min(cap));
    let windowsize = opts.windowsize.map(|w| w.min(limits.max_windowsize.max(1)));
    let timeout = opts
        .timeout
        .filter(|&t| Duration::from_secs(t.into()) <= limits.max_timeout);
    let oack = AcceptedOptions {
        blksize,
        // tsize=0 is left out: curl (7.88) takes it as an error, and an empty file
        // needs no size announcement (RFC 2347 lets a server omit any option).
        tsize: opts
            .tsize
            .filter(|_| transfer_size > 0)
            .map(|_| transfer_size),
        timeout,
        windowsize,
    };
    Params {
        blksize: blksize.unwrap_or(DEFAULT_BLKSIZE),
        windowsize: windowsize.unwrap_or(1),
        timeout: match (opts.timeout, timeout) {
            (_, Some(t)) => Duration::from_secs(t.into()),
            (Some(_), None) => limits.max_timeout,
            (None, None) => limits.default_timeout.min(limits.max_timeout),
        },
        max_retries: limits.max_retries,
        rollover: limits.rollover,
        oack: (!oack.is_empty()).then_some(oack),
    }
}

/// Largest TFTP block size that fits in one packet of an interface's MTU.
pub fn blksize_for_mtu(mtu: u32, ipv6: bool) -> u16 {
    // IP header + UDP header (8) + TFTP DATA header (4).
    let overhead = if ipv6 { 40 + 8 + 4 } else { 20 + 8 + 4 };
    mtu.saturating_sub(overhead)
        .clamp(u32::from(MIN_BLKSIZE), u32::from(MAX_BLKSIZE)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_blksize: 65464,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(10),
            max_retries: 5,
            rollover: Rollover::Zero,
        }
    }

    #[test]
    fn no_options_no_oack() {
        let p = negotiate(&RequestOptions::default(), 100, &limits(), None);
        assert_eq!(p.oack, None);
        assert_eq!((p.blksize, p.windowsize), (512, 1));
    }

    #[test]
    fn caps_blksize_to_mtu_and_window_to_max() {
        let o = RequestOptions {
            blksize: Some(9000),
            tsize: Some(0),
            windowsize: Some(1000),
            timeout: Some(3),
            ..Default::default()
        };
        let p = negotiate(&o, 12345, &limits(), Some(blksize_for_mtu(1500, false)));
        assert_eq!(p.blksize, 1468);
        assert_eq!(p.windowsize, 64);
        assert_eq!(p.timeout, Duration::from_secs(3));
        let oack = p.oack.unwrap();
        assert_eq!(oack.blksize, Some(1468));
        assert_eq!(oack.tsize, Some(12345));
        assert_eq!(oack.windowsize, Some(64));
        assert_eq!(oack.timeout, Some(3));
    }

    #[test]
    fn timeout_over_the_cap_is_left_out_of_the_oack() {
        let o = |t| RequestOptions {
            timeout: Some(t),
            ..Default::default()
        };
        // The timeout=255: not acknowledged, the cap (10 s) is used.
        let p = negotiate(&o(255), 100, &limits(), None);
        assert_eq!(p.oack, None);
        assert_eq!(p.timeout, Duration::from_secs(10));
        let p = negotiate(&o(10), 100, &limits(), None);
        assert_eq!(p.oack.unwrap().timeout, Some(10));
        assert_eq!(p.timeout, Duration::from_secs(10));
    }

    #[test]
    fn mtu_overheads() {
        assert_eq!(blksize_for_mtu(1500, false), 1468);
        assert_eq!(blksize_for_mtu(1500, true), 1448);
        assert_eq!(blksize_for_mtu(65536, false), 65464);
        assert_eq!(blksize_for_mtu(10, false), 8);
    }
}
