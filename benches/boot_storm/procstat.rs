//! Process accounting from `/proc`: CPU time of a server's process tree, its peak
//! resident memory, CPU pinning and the load generator's own CPU time.
//!
//! Linux only; every reader degrades to zero/`None` instead of failing, so a server that
//! exits mid-run never aborts the benchmark.

use std::fs;
use std::time::Duration;

/// Clock ticks per second for `/proc/PID/stat` times.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Fields of `/proc/PID/stat` after the command name (which may contain spaces).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    // Field 3 (state) is a letter; map non-numbers to 0 to keep indices aligned.
    Some(
        after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// Direct children of `pid` forked by its main thread (`/proc/PID/task/PID/children`).
/// Forking servers (tftpd-hpa) fork from their main thread; reading one file instead of
/// one per thread keeps sampling cheap for thread-per-transfer servers (atftpd).
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `pid` and all its live descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() && all.len() < 100_000 {
        let c = children(all[i]);
        all.extend(c);
        i += 1;
    }
    all
}

/// CPU time (user + system) of a process tree: the root's own time, the time of its
/// children that it has already reaped (`cutime`/`cstime`), and the time of every live
/// descendant. This covers forking servers such as tftpd-hpa, whose work happens in a
/// child per transfer.
pub fn tree_cpu(pid: u32) -> Duration {
    let tps = ticks_per_sec();
    let mut ticks = 0u64;
    for (i, p) in process_tree(pid).into_iter().enumerate() {
        let Some(f) = stat_fields(p) else { continue };
        // After ')': [0]=state ... utime=[11], stime=[12], cutime=[13], cstime=[14].
        let own = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        let reaped = f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0);
        // Reaped children of descendants would be counted twice if the descendant is
        // itself reaped later; only the root's reaped total is taken.
        ticks += own + if i == 0 { reaped } else { 0 };
    }
    Duration::from_secs_f64(ticks as f64 / tps)
}

/// A `kB` field of `/proc/PID/status` (e.g. `VmHWM`, `VmRSS`), in bytes.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Peak resident set of one process (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM")
}

/// Current resident set of a process tree (sum of `VmRSS`), in bytes. For forking
/// servers the sum over-counts shared pages, which is the usual caveat of RSS.
pub fn tree_rss(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| status_kb(p, "VmRSS"))
        .sum()
}

/// Pins the calling thread (and the threads and processes it creates later) to `cpu`.
/// Returns false when the kernel refuses (e.g. fewer CPUs than asked).
pub fn pin_current_thread(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Number of CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU time (user + system) of this whole process, all threads, from `getrusage`.
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return Duration::ZERO;
        }
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A cgroup-v1 `cpuacct` group holding one server's process tree, for exact CPU
/// accounting: unlike `/proc/PID/stat`, it keeps the time of children that have
/// exited even when the server ignores `SIGCHLD` (tftpd-hpa forks a child per transfer
/// and does exactly that, so their CPU time would otherwise vanish).
///
/// Created under `/sys/fs/cgroup/cpuacct` when that is writable (root); removed on drop.
#[derive(Debug)]
pub struct CpuGroup {
    dir: std::path::PathBuf,
    procs: std::ffi::CString,
}

impl CpuGroup {
    /// A new, empty group, or `None` where cgroup-v1 cpuacct is not available.
    pub fn create(name: &str) -> Option<CpuGroup> {
        let base = std::path::Path::new("/sys/fs/cgroup/cpuacct");
        if !base.join("cpuacct.usage").exists() {
            return None;
        }
        let dir = base.join(name);
        fs::create_dir(&dir).ok()?;
        let procs = std::ffi::CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .ok()?;
        Some(CpuGroup { dir, procs })
    }

    /// CPU time used so far by every process that was ever in the group.
    pub fn usage(&self) -> Option<Duration> {
        let ns: u64 = fs::read_to_string(self.dir.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Duration::from_nanos(ns))
    }

    /// True if `pid` is in the group.
    pub fn contains(&self, pid: u32) -> bool {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .is_ok_and(|s| s.lines().any(|l| l.trim() == pid.to_string()))
    }

    /// Moves the calling process into the group. Meant for `pre_exec`: only `open`,
    /// `write` and `close`, all async-signal-safe, on a path prepared beforehand.
    pub fn join_self(&self) -> std::io::Result<()> {
        // SAFETY: plain syscalls on a NUL-terminated path and a stack buffer.
        unsafe {
            let fd = libc::open(self.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let w = libc::write(fd, b"0\n".as_ptr().cast(), 2);
            libc::close(fd);
            if w < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // The group can only be removed once empty; the server was stopped just before.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Busy CPU time of the whole machine (all CPUs, everything but idle and iowait), from
/// `/proc/stat`. The difference to the server's and the load generator's own time is
/// CPU used by other processes during a run: noise in the figures.
pub fn machine_busy() -> Duration {
    let Ok(s) = fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: inside user].
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum();
    Duration::from_secs_f64(busy as f64 / ticks_per_sec())
}

/// Raises the soft open-file limit to the hard one (each client holds a socket).
pub fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
