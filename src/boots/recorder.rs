//! The handle the protocol drivers record boot stages through: one call per event
//! (a DHCP answer, a transfer's start and end, a refusal, the OS's report). It ties the
//! event to its node (node files by path, shared files by the requester's address from
//! [`crate::bindings`]), classifies it ([`super::classify`]), counts it, folds it into
//! the node's live attempt ([`super::timeline`]) and queues it for the local record
//! file, written in batches by [`run_writer`]. A full queue drops records (counted)
//! rather than slowing a boot down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::classify::{dhcp_ignore_recorded, file_stage, open_refusal, tftp_outcome};
use super::local::LocalBoots;
use super::metrics::BootMetrics;
use super::record::{clip, BootRecord, Firmware, Proto, Stage, Status, Transfer};
use super::stuck::Rules;
use super::timeline::{Attempt, ATTEMPT_GAP_MS};
use crate::bindings::Bindings;
use crate::clock::now_ms;
use crate::dhcp::proxy::Ignored;
use crate::namespace::OpenError;
use crate::store::{Node, Store};
use crate::tftp::transfer::Outcome;
use crate::wire::dhcp::PxeRequest;
use crate::wire::path::ClientPath;

/// Records queued for the writer at most; beyond, new ones are dropped (counted).
pub const QUEUE: usize = 65_536;
/// Records written per transaction at most.
const BATCH: usize = 2048;
/// Longest a record waits in the queue before its batch is written.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Nodes whose live attempt is kept in memory at most.
pub const MAX_TRACKED: usize = 100_000;

/// Retention of the local record file (`[boots]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records older than this go.
    pub max_age_ms: i64,
    /// The oldest beyond this many go.
    pub max_records: u64,
}

/// A node's live attempt, as this host saw it.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// The node's group (for metrics).
    pub group: String,
    /// Its current attempt.
    pub attempt: Attempt,
}

struct Inner {
    host: String,
    store: Arc<Store>,
    bindings: Bindings,
    local: Arc<LocalBoots>,
    tx: mpsc::Sender<BootRecord>,
    metrics: Arc<BootMetrics>,
    rules: Rules,
    tracked: Mutex<HashMap<String, Tracked>>,
    live: Mutex<HashMap<u64, (Transfer, Arc<AtomicU64>)>>,
    next_id: AtomicU64,
}

/// The recording handle (cheap to clone).
#[derive(Clone)]
pub struct BootRecorder(Arc<Inner>);

/// The receiving end of the record queue, for [`run_writer`].
pub struct Queue(mpsc::Receiver<BootRecord>);

/// What the DHCP driver did with a request of a known node.
#[derive(Debug, Clone, Copy)]
pub enum DhcpSeen<'a> {
    /// Answered, naming this boot file.
    Answered {
        /// The boot file named.
        boot_file: &'a str,
        /// The architecture class chosen (`bios`, `efi_x64`...).
        arch: &'a str,
    },
    /// Not answered, and why.
    Ignored(Ignored),
    /// The answer could not be sent.
    SendFailed,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BootRecorder {
    /// A recorder for `host` over the local record file `local`; returns the queue the
    /// writer drains.
    pub fn new(
        host: &str,
        store: Arc<Store>,
        bindings: Bindings,
        local: Arc<LocalBoots>,
        metrics: Arc<BootMetrics>,
        rules: Rules,
    ) -> (BootRecorder, Queue) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            BootRecorder(Arc::new(Inner {
                host: host.to_string(),
                store,
                bindings,
                local,
                tx,
                metrics,
                rules,
                tracked: Mutex::default(),
                live: Mutex::default(),
                next_id: AtomicU64::new(1),
            })),
            Queue(rx),
        )
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.0.host
    }

    /// The local record file.
    pub fn local(&self) -> &Arc<LocalBoots> {
        &self.0.local
    }

    /// The stuck rules in force.
    pub fn rules(&self) -> &Rules {
        &self.0.rules
    }

    /// The boot metrics.
    pub fn metrics(&self) -> &Arc<BootMetrics> {
        &self.0.metrics
    }

    /// Refills the live attempts from the record file (after a restart): the records
    /// of the last [`ATTEMPT_GAP_MS`], folded as they were recorded.
    pub fn reload(&self) {
        let since = now_ms() - ATTEMPT_GAP_MS;
        match self.0.local.since(since, 200_000) {
            Ok(records) => {
                let n = records.len();
                let mut t = lock(&self.0.tracked);
                for r in &records {
                    let group = t
                        .get(&r.node)
                        .map(|x| x.group.clone())
                        .or_else(|| self.0.store.node(&r.node).ok().flatten().map(|n| n.group))
                        .unwrap_or_default();
                    fold(&mut t, r, &group);
                }
                debug!(records = n, nodes = t.len(), "boot attempts reloaded");
            }
            Err(e) => warn!(error = %e, "cannot reload recent boot records"),
        }
    }

    /// Every tracked node's live attempt.
    pub fn tracked(&self) -> Vec<(String, Tracked)> {
        lock(&self.0.tracked)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Transfers in progress on this host.
    pub fn transfers(&self) -> Vec<Transfer> {
        let mut v: Vec<Transfer> = lock(&self.0.live)
            .values()
            .map(|(t, sent)| {
                let mut t = t.clone();
                if t.sent.is_some() {
                    t.sent = Some(sent.load(Ordering::Relaxed));
                }
                t
            })
            .collect();
        v.sort_by_key(|t| t.started);
        v
    }

    /// Whether a transfer of `node` is in progress here.
    pub fn transferring(&self, node: &str) -> bool {
        lock(&self.0.live)
            .values()
            .any(|(t, _)| t.node.as_deref() == Some(node))
    }

    /// Counts, folds and queues one record of `group`.
    fn record(&self, r: BootRecord, group: &str) {
        let m = &self.0.metrics;
        m.stage(group, r.stage.as_str(), r.status.as_str());
        {
            let mut t = lock(&self.0.tracked);
            let (files_before, done_before) = t
                .get(&r.node)
                .filter(|x| x.attempt.continues(&r))
                .map(|x| (x.attempt.files_at.is_some(), x.attempt.done_at.is_some()))
                .unwrap_or((false, false));
            let a = fold(&mut t, &r, group);
            let ttb = Duration::from_millis(a.time_to_boot_ms.unwrap_or(0));
            if !files_before && a.files_at.is_some() {
                let files = a.files_at.unwrap_or(a.started) - a.started;
                m.boot_time(group, "files", Duration::from_millis(files.max(0) as u64));
            }
            if !done_before && a.done_at.is_some() {
                m.boot_time(group, "done", ttb);
            }
        }
        if self.0.tx.try_send(r).is_err() {
            m.dropped.inc();
        }
    }

    fn base(&self, node: &str, stage: Stage, status: Status, proto: Proto) -> BootRecord {
        BootRecord {
            at: now_ms(),
            host: self.0.host.clone(),
            node: node.to_string(),
            stage,
            status,
            reason: None,
            proto,
            path: None,
            firmware: None,
            detail: None,
            client: None,
            bytes: None,
            duration_ms: None,
            ends_boot: false,
        }
    }

    /// A DHCP request of `node` on udp/67 (`boot_server` false) or udp/4011, from `src`,
    /// and what this host did with it.
    pub fn dhcp(
        &self,
        node: &Node,
        boot_server: bool,
        req: &PxeRequest,
        src: IpAddr,
        seen: DhcpSeen<'_>,
    ) {
        let (status, reason, path, detail) = match seen {
            DhcpSeen::Answered { boot_file, arch } => (
                Status::Ok,
                None,
                Some(clip(boot_file)),
                Some(format!("arch {arch}")),
            ),
            DhcpSeen::Ignored(i) if dhcp_ignore_recorded(i) => {
                (Status::Ignored, Some(i.as_str().to_string()), None, None)
            }
            DhcpSeen::Ignored(_) => return,
            DhcpSeen::SendFailed => (Status::Failed, Some("send_error".into()), None, None),
        };
        let stage = if boot_server {
            Stage::BootServer
        } else {
            Stage::Dhcp
        };
        let mut r = self.base(&node.id, stage, status, Proto::Dhcp);
        r.reason = reason;
        r.path = path;
        r.detail = detail;
        r.firmware = Some(if req.is_ipxe() {
            Firmware::Ipxe
        } else if req.is_http_client() {
            Firmware::Http
        } else {
            Firmware::Pxe
        });
        let client = req
            .requested_ip
            .filter(|ip| !ip.is_unspecified())
            .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr))
            .map(IpAddr::V4)
            .unwrap_or(src);
        if !client.is_unspecified() {
            r.client = Some(client.to_string());
        }
        self.record(r, &node.group);
    }

    /// The node, group and stage a file request belongs to: a node file by its path,
    /// else the node named by `hint` (HTTP's `/boot/<node>/`), bound to `client` by its
    /// PXE exchange, or whose operator-set addresses include `client`.
    fn attribute(
        &self,
        client: IpAddr,
        path: &ClientPath,
        hint: Option<&str>,
    ) -> Option<(Node, Stage, bool)> {
        let nf = self.0.store.node_file_for(path).ok().flatten();
        let id = match (&nf, hint) {
            (Some(nf), _) => nf.node.clone(),
            (None, Some(h)) => h.to_string(),
            (None, None) => {
                let client = client.to_canonical();
                match self.0.bindings.node_of(client) {
                    Some(n) => n,
                    None => self.0.store.node_id_by_address(&client).ok().flatten()?,
                }
            }
        };
        let node = self.0.store.node(&id).ok().flatten()?;
        let (stage, ends) = file_stage(
            path.as_str(),
            nf.as_ref().map(|f| &f.digest),
            node.boot_profile.as_ref(),
        );
        Some((node, stage, ends))
    }

    /// A file request refused before any byte went out (not found, serve gate...).
    pub fn refused(
        &self,
        proto: Proto,
        client: IpAddr,
        path: &ClientPath,
        hint: Option<&str>,
        e: &OpenError,
    ) {
        let Some((node, stage, _)) = self.attribute(client, path, hint) else {
            self.0.metrics.unattributed.inc();
            return;
        };
        let (status, reason) = open_refusal(e);
        let mut r = self.base(&node.id, stage, status, proto);
        r.reason = reason;
        r.path = Some(clip(path.as_str()));
        r.client = Some(client.to_canonical().to_string());
        self.record(r, &node.group);
    }

    /// A transfer of `size` bytes starts: it shows among the live transfers until the
    /// returned handle ends it.
    pub fn begin(
        &self,
        proto: Proto,
        client: IpAddr,
        path: &ClientPath,
        hint: Option<&str>,
        size: u64,
    ) -> LiveTransfer {
        let attributed = self.attribute(client, path, hint);
        if attributed.is_none() {
            self.0.metrics.unattributed.inc();
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let sent = Arc::new(AtomicU64::new(0));
        let t = Transfer {
            host: self.0.host.clone(),
            node: attributed.as_ref().map(|(n, _, _)| n.id.clone()),
            proto,
            client: client.to_canonical().to_string(),
            path: clip(path.as_str()),
            stage: attributed.as_ref().map(|(_, s, _)| *s),
            size,
            sent: (proto == Proto::Http).then_some(0),
            started: now_ms(),
        };
        lock(&self.0.live).insert(id, (t, sent.clone()));
        LiveTransfer {
            rec: self.clone(),
            id,
            node: attributed,
            started: Instant::now(),
            sent,
            ended: false,
        }
    }

    /// The booted OS reported success for `node` from `client`.
    pub fn done(&self, node: &Node, client: IpAddr, message: Option<&str>) {
        let mut r = self.base(&node.id, Stage::Done, Status::Ok, Proto::Http);
        r.client = Some(client.to_canonical().to_string());
        r.detail = message.map(clip).filter(|m| !m.is_empty());
        info!(node = %node.id, client = %client, "boot reported done");
        self.record(r, &node.group);
    }
}

/// Folds `r` into its node's live attempt; returns the attempt after it.
fn fold(t: &mut HashMap<String, Tracked>, r: &BootRecord, group: &str) -> Attempt {
    if let Some(x) = t.get_mut(&r.node) {
        if x.attempt.continues(r) {
            x.attempt.add(r);
        } else {
            x.attempt = Attempt::new(r);
        }
        if !group.is_empty() {
            x.group = group.to_string();
        }
        return x.attempt.clone();
    }
    if t.len() >= MAX_TRACKED {
        // The node quiet the longest goes.
        if let Some(k) = t
            .iter()
            .min_by_key(|(_, x)| x.attempt.last)
            .map(|(k, _)| k.clone())
        {
            t.remove(&k);
        }
    }
    let a = Attempt::new(r);
    t.insert(
        r.node.clone(),
        Tracked {
            group: group.to_string(),
            attempt: a.clone(),
        },
    );
    a
}

/// A transfer in progress; recorded when it ends ([`LiveTransfer::finish`]), or as
/// aborted if dropped unfinished.
pub struct LiveTransfer {
    rec: BootRecorder,
    id: u64,
    node: Option<(Node, Stage, bool)>,
    started: Instant,
    sent: Arc<AtomicU64>,
    ended: bool,
}

impl LiveTransfer {
    /// Bytes sent so far (HTTP bodies report it per chunk).
    pub fn progress(&self, sent: u64) {
        self.sent.store(sent, Ordering::Relaxed);
    }

    /// A TFTP transfer ended with `outcome` after `bytes` acknowledged.
    pub fn finish_tftp(self, outcome: &Outcome, bytes: u64) {
        let (status, reason) = tftp_outcome(outcome);
        self.finish(status, reason, bytes);
    }

    /// The transfer ended: how, and how many bytes went out.
    pub fn finish(mut self, status: Status, reason: Option<String>, bytes: u64) {
        self.end(status, reason, bytes);
    }

    fn end(&mut self, status: Status, reason: Option<String>, bytes: u64) {
        if self.ended {
            return;
        }
        self.ended = true;
        let t = lock(&self.rec.0.live).remove(&self.id);
        let (Some((node, stage, ends)), Some((t, _))) = (self.node.take(), t) else {
            return;
        };
        let mut r = self.rec.base(&node.id, stage, status, t.proto);
        r.reason = reason;
        r.path = Some(t.path);
        r.client = Some(t.client);
        r.bytes = Some(bytes);
        r.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        r.ends_boot = ends && status == Status::Ok;
        self.rec.record(r, &node.group);
    }
}

impl Drop for LiveTransfer {
    fn drop(&mut self) {
        let sent = self.sent.load(Ordering::Relaxed);
        self.end(Status::Aborted, Some("ended_early".into()), sent);
    }
}

/// Writes queued records to the local file in batches until `shutdown` (then flushes
/// what is queued), and prunes it to `retention` every hour.
pub async fn run_writer(
    mut q: Queue,
    local: Arc<LocalBoots>,
    metrics: Arc<BootMetrics>,
    retention: Retention,
    shutdown: CancellationToken,
) {
    let prune = |local: Arc<LocalBoots>| async move {
        let r = tokio::task::spawn_blocking(move || {
            local.prune(now_ms() - retention.max_age_ms, retention.max_records)
        })
        .await;
        match r {
            Ok(Ok(n)) if n > 0 => info!(records = n, "old boot records pruned"),
            Ok(Err(e)) => warn!(error = %e, "cannot prune boot records"),
            _ => {}
        }
    };
    prune(local.clone()).await;
    let mut last_prune = Instant::now();
    let mut batch: Vec<BootRecord> = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            r = q.0.recv() => r,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            tokio::select! {
                r = q.0.recv() => match r {
                    Some(r) => batch.push(r),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break,
            }
        }
        write(&local, &metrics, std::mem::take(&mut batch)).await;
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = Instant::now();
            prune(local.clone()).await;
        }
    }
    // Shutting down: what is queued still goes to the file.
    while let Ok(r) = q.0.try_recv() {
        batch.push(r);
    }
    if !batch.is_empty() {
        write(&local, &metrics, batch).await;
    }
}

async fn write(local: &Arc<LocalBoots>, metrics: &BootMetrics, batch: Vec<BootRecord>) {
    let n = batch.len() as u64;
    let l = local.clone();
    match tokio::task::spawn_blocking(move || l.insert(&batch)).await {
        Ok(Ok(())) => metrics.written.add(n),
        Ok(Err(e)) => {
            metrics.dropped.add(n);
            warn!(error = %e, records = n, "cannot write boot records");
        }
        Err(e) => warn!(error = %e, "boot record writer failed"),
    }
}
