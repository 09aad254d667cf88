//! One child process of a test (a `baton serve`, usually): its stderr captured line by
//! line, waits on it bounded in time, ended by its own PID (SIGTERM, or SIGKILL when it
//! is dropped), and its output printed when the test fails.

use std::io::{self, BufRead, BufReader};
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
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                on_line(&line);
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
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
