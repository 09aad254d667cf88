//! The file-descriptor budget. Every HTTP connection and every TFTP transfer (outside
//! single-port mode) holds one descriptor, so under `RLIMIT_NOFILE` they compete with
//! each other and with the store, blob files, listeners and peer connections. Each gets
//! a fixed share of what is left after a reserve, so idle HTTP connections can never
//! starve TFTP of sockets (nor the reverse), and neither can starve the rest.
//!
//! The limit is read at each decision, so a `prlimit --pid` on a running server applies.

use std::io;

/// Descriptors kept back for everything that is neither an HTTP connection nor a TFTP
/// transfer socket: listeners, the store (database, journal), blob files being read or
/// written, peer connections, the capture file, a few spares.
pub const RESERVED: u64 = 128;

/// How the descriptors above the reserve are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    /// Most HTTP connections open at once.
    pub http: usize,
    /// Most TFTP transfer sockets open at once.
    pub tftp: usize,
}

/// The shares under a soft limit of `soft` descriptors: half each of what is left after
/// [`RESERVED`] (at least one each, so a tiny limit still serves one of each).
pub fn shares(soft: u64) -> Shares {
    let left = soft.saturating_sub(RESERVED);
    let half = usize::try_from(left / 2).unwrap_or(usize::MAX);
    Shares {
        http: half.max(1),
        tftp: half.max(1),
    }
}

/// The current soft `RLIMIT_NOFILE` (`u64::MAX` when unlimited or unreadable).
pub fn soft_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return u64::MAX;
    }
    if r.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        r.rlim_cur
    }
}

/// The shares under the current soft limit.
pub fn current() -> Shares {
    shares(soft_limit())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as nginx's worker_rlimit_nofile
/// or the Go runtime do; systemd's default soft limit is 1024). Returns (old, new).
pub fn raise_soft_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = r.rlim_cur;
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit(2) with a soft limit no higher than the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((old, r.rlim_cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_leave_the_reserve() {
        assert_eq!(
            shares(1024),
            Shares {
                http: 448,
                tftp: 448
            }
        );
        assert_eq!(shares(100), Shares { http: 1, tftp: 1 });
        assert!(shares(u64::MAX).http > 1 << 40);
        assert!(soft_limit() > 0);
    }
}
