//! Boot attempts from stage records (sans-IO): records from every host are merged in
//! time order and cut into attempts, each a short list of steps (repeats of one stage
//! folded into one step with a count). The same fold drives the live tracker of a
//! running host and the timelines the API shows, so both cut attempts alike.

use serde::{Deserialize, Serialize};

use super::health::Health;
use super::record::{BootRecord, Firmware, Stage, Status};
use crate::clock::Millis;

/// Silence after which the next record starts a new attempt, whatever it is.
pub const ATTEMPT_GAP_MS: i64 = 10 * 60 * 1000;
/// Most steps kept per attempt; later ones are counted in `steps_dropped`.
pub const MAX_STEPS: usize = 64;

/// Consecutive records of one stage, folded: the last record, with the first time and
/// how many there were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The last record folded in.
    #[serde(flatten)]
    pub record: BootRecord,
    /// Time of the first one.
    pub first: Millis,
    /// How many records (e.g. DHCP retries) this step folds.
    pub count: u32,
}

impl Step {
    fn folds(&self, r: &BootRecord) -> bool {
        let s = &self.record;
        s.host == r.host
            && s.stage == r.stage
            && s.status == r.status
            && s.reason == r.reason
            && s.proto == r.proto
            && s.path == r.path
            && s.firmware == r.firmware
    }
}

/// One boot attempt: from a firmware's first request to the OS's report, or to the
/// next firmware start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Time of its first record.
    pub started: Millis,
    /// Time of its last record.
    pub last: Millis,
    /// Hosts that served it, in order of appearance.
    pub hosts: Vec<String>,
    /// The furthest stage that went well.
    pub reached: Option<Stage>,
    /// When the kernel and ramdisk (or a local-boot configuration) had been delivered.
    pub files_at: Option<Millis>,
    /// When the OS reported success.
    pub done_at: Option<Millis>,
    /// DHCP requests seen before any file was fetched (answered or not).
    pub dhcp_before_files: u32,
    /// Time of the first DHCP request.
    pub first_dhcp: Option<Millis>,
    /// Bytes of files delivered.
    pub bytes: u64,
    /// Records that went wrong.
    pub errors: u32,
    /// Time to boot: from the first record to the files delivered (or the OS's report).
    pub time_to_boot_ms: Option<u64>,
    /// How it stands (filled in by [`super::stuck::timeline`]).
    pub health: Health,
    /// The steps, oldest first.
    pub steps: Vec<Step>,
    /// Steps beyond [`MAX_STEPS`], left out.
    pub steps_dropped: u32,
    #[serde(default, skip_serializing)]
    kernel_ok: bool,
    #[serde(default, skip_serializing)]
    ramdisk_ok: bool,
    #[serde(default, skip_serializing)]
    any_file: bool,
}

impl Attempt {
    /// An attempt starting with `r`.
    pub fn new(r: &BootRecord) -> Attempt {
        let mut a = Attempt {
            started: r.at,
            last: r.at,
            hosts: Vec::new(),
            reached: None,
            files_at: None,
            done_at: None,
            dhcp_before_files: 0,
            first_dhcp: None,
            bytes: 0,
            errors: 0,
            time_to_boot_ms: None,
            health: Health::InProgress,
            steps: Vec::new(),
            steps_dropped: 0,
            kernel_ok: false,
            ramdisk_ok: false,
            any_file: false,
        };
        a.add(r);
        a
    }

    /// Whether the boot's files were delivered (the OS has what it needs).
    pub fn files_delivered(&self) -> bool {
        self.files_at.is_some()
    }

    /// Whether `r` belongs to this attempt, or starts the next one. A report of the
    /// OS always closes the latest attempt; a DHCP request starts a new one after the
    /// files were delivered, after a firmware ROM (not iPXE chain-loaded by it) asks
    /// again once files were fetched, or after a long silence.
    pub fn continues(&self, r: &BootRecord) -> bool {
        if r.stage == Stage::Done {
            return true;
        }
        if r.at.saturating_sub(self.last) > ATTEMPT_GAP_MS {
            return false;
        }
        if r.stage.is_dhcp() {
            if self.files_delivered() || self.done_at.is_some() {
                return false;
            }
            if r.firmware != Some(Firmware::Ipxe) && self.any_file {
                return false;
            }
        }
        true
    }

    /// Adds `r` (which [`Attempt::continues`] it).
    pub fn add(&mut self, r: &BootRecord) {
        self.last = self.last.max(r.at);
        if !self.hosts.iter().any(|h| h == &r.host) {
            self.hosts.push(r.host.clone());
        }
        if r.status.is_error() {
            self.errors += 1;
        }
        if r.stage.is_dhcp() {
            self.first_dhcp.get_or_insert(r.at);
            if !self.any_file {
                self.dhcp_before_files += 1;
            }
        }
        if r.status == Status::Ok {
            if self.reached.is_none_or(|s| s < r.stage) {
                self.reached = Some(r.stage);
            }
            if r.stage.is_file() {
                self.any_file = true;
                self.bytes += r.bytes.unwrap_or(0);
            }
            match r.stage {
                Stage::Kernel => self.kernel_ok = true,
                Stage::Ramdisk => self.ramdisk_ok = true,
                Stage::Done => {
                    self.done_at.get_or_insert(r.at);
                }
                _ => {}
            }
            if self.files_at.is_none() && ((self.kernel_ok && self.ramdisk_ok) || r.ends_boot) {
                self.files_at = Some(r.at);
            }
        } else if r.stage.is_file() && r.status == Status::SizeProbe {
            // A size probe is the firmware at work on a file: it did fetch something.
            self.any_file = true;
        }
        let end = self.done_at.or(self.files_at);
        self.time_to_boot_ms = end.map(|e| e.saturating_sub(self.started).max(0) as u64);
        let full = self.steps.len() >= MAX_STEPS;
        match self.steps.last_mut() {
            Some(s) if s.folds(r) => {
                s.count += 1;
                s.first = s.first.min(r.at);
                s.record = r.clone();
            }
            _ if full => self.steps_dropped += 1,
            _ => self.steps.push(Step {
                record: r.clone(),
                first: r.at,
                count: 1,
            }),
        }
    }

    /// The last step that went wrong.
    pub fn last_error(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.record.status.is_error())
    }

    /// The last step.
    pub fn last_step(&self) -> Option<&Step> {
        self.steps.last()
    }
}

/// Sorts records from any number of hosts into one time line.
pub fn merge(mut records: Vec<BootRecord>) -> Vec<BootRecord> {
    records.sort_by(|a, b| {
        (a.at, a.stage, &a.host, a.status.as_str()).cmp(&(
            b.at,
            b.stage,
            &b.host,
            b.status.as_str(),
        ))
    });
    records
}

/// Cuts time-ordered records into attempts, oldest first.
pub fn attempts(records: &[BootRecord]) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    for r in records {
        match out.last_mut() {
            Some(a) if a.continues(r) => a.add(r),
            _ => out.push(Attempt::new(r)),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::boots::record::Proto;

    /// A record for tests: `stage`/`status` at `at` seconds on `host`.
    pub fn rec(at_s: i64, host: &str, stage: Stage, status: Status) -> BootRecord {
        BootRecord {
            at: at_s * 1000,
            host: host.into(),
            node: "n1".into(),
            stage,
            status,
            reason: None,
            proto: if stage.is_dhcp() {
                Proto::Dhcp
            } else {
                Proto::Tftp
            },
            path: None,
            firmware: stage.is_dhcp().then_some(Firmware::Pxe),
            detail: None,
            client: None,
            bytes: stage.is_file().then_some(100),
            duration_ms: None,
            ends_boot: false,
        }
    }

    fn ipxe(mut r: BootRecord) -> BootRecord {
        r.firmware = Some(Firmware::Ipxe);
        r
    }

    pub fn full_boot(t0: i64, host: &str) -> Vec<BootRecord> {
        vec![
            rec(t0, host, Stage::Dhcp, Status::Ok),
            rec(t0 + 1, host, Stage::BootServer, Status::Ok),
            rec(t0 + 2, host, Stage::Loader, Status::SizeProbe),
            rec(t0 + 2, host, Stage::Loader, Status::Ok),
            ipxe(rec(t0 + 3, host, Stage::Dhcp, Status::Ok)),
            rec(t0 + 4, host, Stage::Config, Status::Ok),
            rec(t0 + 6, host, Stage::Kernel, Status::Ok),
            rec(t0 + 9, host, Stage::Ramdisk, Status::Ok),
        ]
    }

    #[test]
    fn one_chain_loaded_boot_is_one_attempt() {
        let a = attempts(&full_boot(100, "h1"));
        assert_eq!(a.len(), 1, "{a:#?}");
        let a = &a[0];
        assert_eq!(a.reached, Some(Stage::Ramdisk));
        assert_eq!(a.files_at, Some(109_000));
        assert_eq!(a.time_to_boot_ms, Some(9_000));
        assert_eq!(a.bytes, 400);
        assert_eq!(a.dhcp_before_files, 2);
    }

    #[test]
    fn a_rom_asking_again_after_files_starts_a_new_attempt() {
        let mut r = full_boot(100, "h1");
        // A reboot: the ROM asks again.
        r.extend(full_boot(300, "h1"));
        assert_eq!(attempts(&r).len(), 2);
        // A ROM that gave up on its config and tries again also starts over.
        let r = vec![
            rec(0, "h1", Stage::Dhcp, Status::Ok),
            rec(1, "h1", Stage::Loader, Status::Ok),
            rec(2, "h1", Stage::Config, Status::NotFound),
            rec(40, "h1", Stage::Dhcp, Status::Ok),
        ];
        let a = attempts(&r);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].errors, 1);
        assert_eq!(a[0].last_error().unwrap().record.stage, Stage::Config);
    }

    #[test]
    fn dhcp_retries_fold_into_one_step() {
        let r: Vec<_> = (0..5)
            .map(|i| rec(i * 4, "h1", Stage::Dhcp, Status::Ok))
            .collect();
        let a = attempts(&r);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].steps.len(), 1);
        assert_eq!(a[0].steps[0].count, 5);
        assert_eq!(a[0].steps[0].first, 0);
        assert_eq!(a[0].steps[0].record.at, 16_000);
        assert_eq!(a[0].dhcp_before_files, 5);
    }

    #[test]
    fn a_local_boot_ends_with_its_configuration() {
        let mut cfg = rec(2, "h1", Stage::Config, Status::Ok);
        cfg.ends_boot = true;
        let r = vec![
            rec(0, "h1", Stage::Dhcp, Status::Ok),
            rec(1, "h1", Stage::Loader, Status::Ok),
            cfg,
        ];
        let a = attempts(&r);
        assert!(a[0].files_delivered());
        assert_eq!(a[0].time_to_boot_ms, Some(2_000));
    }

    #[test]
    fn steps_are_bounded() {
        let mut r = vec![rec(0, "h1", Stage::Dhcp, Status::Ok)];
        for i in 0..200 {
            let mut x = rec(1 + i, "h1", Stage::Loader, Status::Ok);
            x.path = Some(format!("m{i}.c32"));
            r.push(x);
        }
        let a = attempts(&r);
        assert_eq!(a[0].steps.len(), MAX_STEPS);
        assert_eq!(a[0].steps_dropped, 201 - MAX_STEPS as u32);
    }
}
