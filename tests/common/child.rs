//! Child processes of a test or bench: commands run to completion within a deadline
//! ([`run_bounded`]), a process whose output is collected ([`Proc`]), and one run of a
//! process restarted during a test ([`spawn_run`], used by [`super::host::Host`]).
//!
//! Processes are signalled by their own PID, never by name. Every process started with
//! [`spawn_run`] is remembered until it is reaped, so a watchdog can end exactly the
//! processes this program started ([`kill_spawned`]).

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Polls `child` until it exits or `timeout` passes (`None`: still running, or it
/// could not be polled).
pub fn wait_with_deadline(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(_) => return None,
        }
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output, raw.
    pub stdout: Vec<u8>,
    /// Standard error, lossy text.
    pub stderr: String,
}

/// Reads `r` to its end on a thread of its own, appending to `sink`.
fn drain(mut r: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]),
            }
        }
    })
}

fn take(sink: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    std::mem::take(&mut *sink.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Runs `cmd` to completion within `timeout`, killing it (by PID) otherwise; output is
/// drained by threads so a chatty command cannot block. `Err` says why it did not
/// finish (with what it printed on stderr).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {desc}: {e}"))?;
    let (out, err) = (Arc::default(), Arc::default());
    let out_t = drain(child.stdout.take().expect("piped stdout"), Arc::clone(&out));
    let err_t = drain(child.stderr.take().expect("piped stderr"), Arc::clone(&err));
    let status = wait_with_deadline(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = (out_t.join(), err_t.join());
    let stderr = String::from_utf8_lossy(&take(&err)).into_owned();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout: take(&out),
            stderr,
        }),
        None => Err(format!(
            "{desc} did not finish within {timeout:?} and was killed; stderr:\n{stderr}"
        )),
    }
}

/// PIDs started by [`spawn_run`] and not reaped yet.
static SPAWNED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Spawns one run of a process that is restarted during a test: stdin and stdout
/// closed, stderr appended to `log` (which keeps every run) after a
/// `===== NAME run N (pid P) =====` line. Returns the process and where this run's
/// output starts in `log`. Reap it with [`reap`].
pub fn spawn_run(
    cmd: &mut Command,
    log: &Arc<Mutex<String>>,
    name: &str,
    run: usize,
) -> io::Result<(std::process::Child, usize)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    SPAWNED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(child.id());
    let offset = {
        let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
        let offset = l.len();
        l.push_str(&format!(
            "===== {name} run {run} (pid {}) =====\n",
            child.id()
        ));
        offset
    };
    let stderr = child.stderr.take().expect("piped stderr");
    capture_lines(stderr, log.clone());
    Ok((child, offset))
}

/// Notes that a process from [`spawn_run`] was reaped (its PID may be reused).
pub fn reaped(pid: u32) {
    SPAWNED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&pid);
}

/// SIGKILL to every process [`spawn_run`] started that is not reaped yet: for a
/// watchdog about to exit.
pub fn kill_spawned() {
    for pid in SPAWNED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        signal(*pid, libc::SIGKILL);
    }
}

/// Sends `sig` to `pid`; `false` if it could not be sent.
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) on the PID of a child this program started and has not reaped.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Appends each line `r` yields to `sink` (on a thread of its own, until EOF).
pub fn capture_lines(r: impl io::Read + Send + 'static, sink: Arc<Mutex<String>>) {
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
            l.push_str(&line);
            l.push('\n');
        }
    });
}

/// A child process whose stdout and stderr are collected and which is killed by its
/// PID (SIGKILL) when dropped; what it printed is shown when the test fails.
pub struct Proc {
    name: String,
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` (stdin null, stdout and stderr collected).
    #[track_caller]
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name} ({cmd:?}): {e}"));
        let (out, err) = (Arc::default(), Arc::default());
        drain(child.stdout.take().expect("piped stdout"), Arc::clone(&out));
        drain(child.stderr.take().expect("piped stderr"), Arc::clone(&err));
        Proc {
            name: name.into(),
            child,
            out,
            err,
            exited: None,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Standard output so far (lossy text).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Standard error so far (lossy text).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Whether it has exited (and how).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Polls until `pred(stdout, stderr)` holds, `deadline` passes or the process
    /// exits; returns when `pred` was first seen to hold (to within 10 ms).
    pub fn wait_for(
        &mut self,
        deadline: Instant,
        mut pred: impl FnMut(&str, &str) -> bool,
    ) -> Option<Instant> {
        loop {
            if pred(&self.stdout(), &self.stderr()) {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline || self.try_wait().is_some() {
                // One last look: output may have arrived with the exit.
                thread::sleep(Duration::from_millis(50));
                return pred(&self.stdout(), &self.stderr()).then(Instant::now);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (this PID only) and reap.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "----- {} (pid {}) stdout -----\n{}\n----- {} stderr -----\n{}\n----- end -----",
                self.name,
                self.child.id(),
                self.stdout(),
                self.name,
                self.stderr()
            );
        }
    }
}
