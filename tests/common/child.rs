//! One child process of a test (a `baton serve`, usually): its stderr captured line by
//! line, waits on it bounded in time, ended by its own PID (SIGTERM, or SIGKILL when it
//! is dropped), and its output printed when the test fails.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A running child process with its stderr log.
pub struct Child {
    proc: std::process::Child,
    log: Arc<Mutex<String>>,
    exited: Option<ExitStatus>,
    label: String,
}

impl Child {
    /// Spawns `cmd` with stdin and stdout closed and stderr captured. `on_line` sees each
    /// stderr line as it arrives (e.g. to pick up the address it listens on); `label`
    /// names it in the output printed when a test fails.
    pub fn spawn(
        cmd: &mut Command,
        label: impl Into<String>,
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) -> io::Result<Child> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = cmd.spawn()?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = proc.stderr.take().expect("piped stderr");
        capture_lines(stderr, log.clone(), move |l| on_line(l));
        Ok(Child {
            proc,
            log,
            exited: None,
            label: label.into(),
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Log lines containing all of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Waits until the log has a line containing all of `needles`; returns that line.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines(needles).into_iter().next() {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its exit status, if it has exited (without waiting).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.proc.try_wait().ok().flatten();
        }
        self.exited
    }

    /// SIGKILL, then reap: a crash, nothing flushed or closed by the process.
    pub fn kill9(&mut self) {
        if self.exited.is_none() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = self.proc.kill();
            self.exited = self.proc.wait().ok();
        }
    }

    /// SIGTERM, then waits up to `timeout` for it to exit; `None` if it did not.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let pid = libc::pid_t::try_from(self.proc.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the PID of the child this struct owns and has not reaped.
        let r = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(r, 0, "kill(SIGTERM): {}", io::Error::last_os_error());
        let deadline = Instant::now() + timeout;
        loop {
            match self.proc.try_wait() {
                Ok(Some(s)) => {
                    self.exited = Some(s);
                    return Some(s);
                }
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for child {}: {e}", self.proc.id()),
            }
        }
    }
}

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
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err_t = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = wait_with_deadline(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout: out_t.join().unwrap_or_default(),
            stderr,
        }),
        None => Err(format!(
            "{desc} did not finish within {timeout:?} and was killed; stderr:\n{stderr}"
        )),
    }
}

/// Spawns one run of a process that is restarted during a test: stdin and stdout
/// closed, stderr appended to `log` (which keeps every run) after a
/// `===== NAME run N (pid P) =====` line. Returns the process and where this run's
/// output starts in `log`.
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
    capture_lines(stderr, log.clone(), |_| {});
    Ok((child, offset))
}

/// Appends each line `r` yields to `sink` (on a thread of its own, until EOF), after
/// showing it to `on_line`.
pub fn capture_lines(
    r: impl io::Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    mut on_line: impl FnMut(&str) + Send + 'static,
) {
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            on_line(&line);
            let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
            l.push_str(&line);
            l.push('\n');
        }
    });
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            eprintln!(
                "----- {} stderr -----\n{}----- end -----",
                self.label,
                self.log()
            );
        }
    }
}
