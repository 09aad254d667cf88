//! HTTP `Range` requests (RFC 9110 §14) for boot artifacts: which bytes to send.
//!
//! Only single ranges are served as 206; a multi-range request gets the whole body (200),
//! which RFC 9110 allows and which every boot client (iPXE, UEFI HTTP boot, curl) accepts.

/// What to answer a request for a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangePlan {
    /// 200 with the whole body.
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416: no byte of the range exists.
    Unsatisfiable,
}

/// Decides the answer to a `Range` header (absent, malformed or multi-range: the whole
/// body, as RFC 9110 says an unparsable Range is ignored).
pub fn plan(header: Option<&str>, len: u64) -> RangePlan {
    let Some(h) = header else {
        return RangePlan::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangePlan::Full;
    };
    if spec.contains(',') {
        return RangePlan::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangePlan::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => RangePlan::Unsatisfiable,
            Some(n) if len == 0 => {
                let _ = n;
                RangePlan::Unsatisfiable
            }
            Some(n) => RangePlan::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => RangePlan::Full,
        },
        // bytes=N-: from N to the end.
        (false, true) => match num(a) {
            Some(s) if s < len => RangePlan::Partial {
                start: s,
                end: len - 1,
            },
            Some(_) => RangePlan::Unsatisfiable,
            None => RangePlan::Full,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s > e => RangePlan::Full,
            (Some(s), Some(_)) if s >= len => RangePlan::Unsatisfiable,
            (Some(s), Some(e)) => RangePlan::Partial {
                start: s,
                end: e.min(len - 1),
            },
            _ => RangePlan::Full,
        },
        (true, true) => RangePlan::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangePlan::*;

    #[test]
    fn ranges() {
        assert_eq!(plan(None, 10), Full);
        assert_eq!(plan(Some("bytes=0-4"), 10), Partial { start: 0, end: 4 });
        assert_eq!(plan(Some("bytes=5-"), 10), Partial { start: 5, end: 9 });
        assert_eq!(plan(Some("bytes=-3"), 10), Partial { start: 7, end: 9 });
        assert_eq!(plan(Some("bytes=-30"), 10), Partial { start: 0, end: 9 });
        assert_eq!(plan(Some("bytes=8-100"), 10), Partial { start: 8, end: 9 });
        assert_eq!(plan(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(plan(Some("bytes=10-12"), 10), Unsatisfiable);
        assert_eq!(plan(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(plan(Some("bytes=-5"), 0), Unsatisfiable);
        assert_eq!(plan(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(plan(Some("bytes=5-2"), 10), Full);
        assert_eq!(plan(Some("bytes=x-2"), 10), Full);
        assert_eq!(plan(Some("items=0-2"), 10), Full);
        assert_eq!(plan(Some("bytes=+1-2"), 10), Full);
        assert_eq!(plan(Some("bytes=99999999999999999999999-"), 10), Full);
    }
}
