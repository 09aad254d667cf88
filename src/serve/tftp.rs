//! The tokio driver of the TFTP server: a listener that turns read requests into
//! transfers, one task per transfer, each on its own socket (or, in single-port mode,
//! sharing the listener's socket and fed by it). Protocol decisions are made by
//! [`Transfer`] and [`negotiate`]; this file only moves datagrams and keeps limits.
//!
//! Edge budgets: transfers take slots of a [`SlotTable`] (fair shares per client address;
//! a transfer is evictable until its client acknowledges something), at most half the
//! file descriptors above the reserve ([`fds`]); ERROR replies and refusal log lines are
//! rate-limited per client address, and what is dropped is counted.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::boots::{BootRecorder, Proto};
use crate::capture::Capture;
use crate::config::TftpConfig;
use crate::metrics::Metrics;
use crate::namespace::{FileSource, OpenError};
use crate::net::ratelimit::{Limiter, LogBudget, Rate, Verdict};
use crate::net::slots::{Admission, Caps, Refusal, SlotId, SlotTable};
use crate::net::{fds, udp};
use crate::tftp::negotiate::{blksize_for_mtu, negotiate, Limits};
use crate::tftp::transfer::{Outcome, Transfer, Transmit};
use crate::wire::path::{ClientPath, PathError, PathRules};
use crate::wire::tftp::{self, ErrorCode, Mode, Packet, Request};

/// Largest datagram the listener reads; longer requests are truncated and then refused.
const RECV_BUF: usize = 65_536;
/// Queue of packets the listener hands one single-port transfer.
const ROUTE_QUEUE: usize = 64;
/// Client addresses whose ERROR budget is tracked at once (more: new ones get none).
const ERROR_SOURCES: usize = 16_384;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Privileged port without privilege.
    #[error(
        "cannot listen on udp/{addr}: permission denied. Ports below 1024 need root or \
         CAP_NET_BIND_SERVICE: run as root, grant the capability with \
         `setcap cap_net_bind_service=+ep <path to baton>` (or AmbientCapabilities= in the \
         systemd unit), or listen on a high port, e.g. --tftp-listen 0.0.0.0:6969"
    )]
    BindPermission {
        /// Address asked for.
        addr: SocketAddr,
    },
    /// Another process holds the port.
    #[error(
        "cannot listen on udp/{addr}: address already in use. Another TFTP server \
         (tftpd-hpa, atftpd, dnsmasq with enable-tftp, or another baton) holds it: stop it \
         (e.g. `systemctl stop tftpd-hpa`) or choose another port with --tftp-listen"
    )]
    BindInUse {
        /// Address asked for.
        addr: SocketAddr,
    },
    /// Any other bind failure.
    #[error("cannot listen on udp/{addr}: {source}. Is that address configured on this host (`ip addr`)?")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
}

/// State shared by the listener and all transfers.
struct Shared {
    cfg: TftpConfig,
    limits: Limits,
    source: Arc<dyn FileSource>,
    /// How request names are read (root directories, map file).
    paths: PathRules,
    metrics: Arc<Metrics>,
    slots: Mutex<Slots>,
    /// ERROR replies per client address.
    error_rate: Mutex<Limiter<IpAddr>>,
    /// Refusal and failure log lines per client address.
    logs: Mutex<LogBudget<IpAddr>>,
    routes: Mutex<HashMap<SocketAddr, Route>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    capture: Option<Capture>,
    boots: Option<BootRecorder>,
}

/// Transfers in progress: their slots, and how to end one that is evicted.
#[derive(Default)]
struct Slots {
    table: SlotTable<IpAddr>,
    evict: HashMap<SlotId, CancellationToken>,
}

/// A single-port transfer as the listener sees it.
struct Route {
    id: u64,
    /// Packets with the instant the listener received them.
    tx: mpsc::Sender<(Instant, Bytes)>,
    /// The client has sent this transfer a packet (so a new RRQ is not a retransmission).
    heard: bool,
    filename: String,
}

impl Shared {
    /// May a refusal or failure about client `ip` be logged now? `Some(n)`: yes, and `n`
    /// such lines were dropped since the last one; `None`: dropped (and counted).
    fn log_ok(&self, ip: IpAddr) -> Option<u64> {
        let v = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&ip.to_canonical(), Instant::now());
        match v {
            Verdict::Allow { suppressed } => Some(suppressed),
            Verdict::Deny => {
                self.metrics.tftp.suppressed.inc("log");
                None
            }
        }
    }

    /// May an ERROR go to client `ip` now? Counts the ones dropped.
    fn error_ok(&self, ip: IpAddr) -> bool {
        let ok = self
            .error_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&ip.to_canonical(), Instant::now())
            .allowed();
        if !ok {
            self.metrics.tftp.suppressed.inc("error_reply");
        }
        ok
    }

    /// The slot limits now: the configured ones, and no more transfer sockets than the
    /// descriptor budget allows (single-port transfers need none).
    fn caps(&self) -> Caps {
        let total = if self.cfg.single_port {
            self.cfg.max_transfers
        } else {
            self.cfg.max_transfers.min(fds::current().tftp)
        };
        Caps {
            total,
            per_source: self.cfg.max_transfers_per_client,
        }
    }
}

/// A transfer's place in the concurrency limits, given back on drop.
struct SlotGuard {
    shared: Arc<Shared>,
    id: SlotId,
    /// Cancelled when the slot is taken back for a client below its fair share.
    evicted: CancellationToken,
}

impl SlotGuard {
    /// The client has acknowledged something: the transfer is no longer evictable.
    fn proven(&self) {
        let mut s = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.table.set_evictable(self.id, false);
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut s = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.table.remove(self.id);
        s.evict.remove(&self.id);
        self.shared.metrics.tftp.active.set(s.table.len() as i64);
    }
}

/// A bound, not yet running, TFTP server.
pub struct TftpServer {
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    shared: Arc<Shared>,
}

impl TftpServer {
    /// Binds the listening socket. Errors say how to fix the usual causes. Request
    /// names are parsed with `paths`, then opened in `source`.
    pub fn bind(
        cfg: TftpConfig,
        source: Arc<dyn FileSource>,
        paths: PathRules,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let addr = cfg.listen;
        let sock = udp::bind(addr, true).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => ServerError::BindPermission { addr },
            io::ErrorKind::AddrInUse => ServerError::BindInUse { addr },
            _ => ServerError::Bind { addr, source: e },
        })?;
        let local = sock
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        if !cfg.gso {
            udp::disable_gso();
        }
        let limits = limits(&cfg);
        let error_rate = Rate::per_minute(cfg.error_replies_per_minute);
        Ok(TftpServer {
            sock: Arc::new(sock),
            local,
            shared: Arc::new(Shared {
                cfg,
                limits,
                source,
                paths,
                metrics,
                slots: Mutex::new(Slots::default()),
                error_rate: Mutex::new(Limiter::new(error_rate, ERROR_SOURCES)),
                logs: Mutex::new(LogBudget::new()),
                routes: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutdown,
                capture: None,
                boots: None,
            }),
        })
    }

    /// Records every packet to `capture` (`--capture`).
    pub fn with_capture(mut self, capture: Option<Capture>) -> Self {
        if let Some(sh) = Arc::get_mut(&mut self.shared) {
            sh.capture = capture;
        }
        self
    }

    /// Records each transfer and refusal in the boot timeline.
    pub fn with_boots(mut self, boots: BootRecorder) -> Self {
        if let Some(sh) = Arc::get_mut(&mut self.shared) {
            sh.boots = Some(boots);
        }
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run(self) {
        let shared = self.shared;
        info!(
            addr = %self.local,
            single_port = shared.cfg.single_port,
            max_blksize = shared.cfg.max_blksize,
            max_windowsize = shared.cfg.max_windowsize,
            gso = udp::gso_enabled(),
            "tftp server listening"
        );
        // Many clients' packets per syscall: requests in a storm, and in single-port mode
        // every transfer's ACKs.
        let mut batch = udp::RecvBatch::new(RECV_BUF);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                r = udp::recv_meta_batch(&self.sock, &mut batch) => if let Err(e) = r {
                    // ICMP errors and the like: log and keep serving.
                    debug!(error = %e, "tftp listener receive error");
                    continue;
                },
            }
            for (meta, pkt) in batch.iter() {
                if let Some(c) = &shared.capture {
                    c.record(
                        meta.src,
                        SocketAddr::new(meta.dst_ip.unwrap_or(self.local.ip()), self.local.port()),
                        pkt,
                    );
                }
                on_datagram(&shared, &self.sock, self.local, pkt, meta);
            }
        }
        let active = shared.metrics.tftp.active.get();
        info!(active_transfers = active, "tftp server stopping");
    }
}

/// Handles one datagram on the listening socket.
fn on_datagram(
    shared: &Arc<Shared>,
    sock: &Arc<UdpSocket>,
    local: SocketAddr,
    pkt: &[u8],
    meta: udp::RecvMeta,
) {
    let m = &shared.metrics.tftp;
    // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d. Per-transfer sockets are
    // opened in the peer's own family, so they need the plain form; the shared socket of
    // single-port mode needs its own family's form.
    let dst = meta.dst_ip.unwrap_or(local.ip());
    let (client, local_ip) = if shared.cfg.single_port {
        (meta.src, in_family(dst, local.is_ipv6()))
    } else {
        (
            SocketAddr::new(meta.src.ip().to_canonical(), meta.src.port()),
            dst.to_canonical(),
        )
    };
    let meta = udp::RecvMeta {
        src: client,
        ..meta
    };
    match Packet::parse(pkt) {
        Ok(Packet::Rrq(req)) => {
            m.requests.inc();
            start_read(shared, sock, local_ip, meta, req);
        }
        Ok(Packet::Wrq(req)) => {
            m.refused.inc("write_request");
            if let Some(suppressed) = shared.log_ok(client.ip()) {
                info!(client = %client, path = %crate::wire::token::redact(req.filename).escape_debug(), suppressed, "write request refused");
            }
            reply_error(
                shared,
                sock,
                local_ip,
                client,
                ErrorCode::AccessViolation,
                "write requests are not accepted: this server is read-only",
            );
        }
        Ok(_) if shared.cfg.single_port => route_to_transfer(shared, client, pkt),
        Ok(_) => {
            m.bad_packets.inc("not_a_request");
            debug!(client = %client, "non-request packet on the listening port dropped");
        }
        Err(e) => {
            m.bad_packets.inc(e.error.as_str());
            debug!(client = %client, error = %e, "malformed tftp packet");
            if e.opcode.is_some_and(|o| o.is_request()) {
                reply_error(
                    shared,
                    sock,
                    local_ip,
                    client,
                    e.error.error_code(),
                    &e.error.to_string(),
                );
            }
        }
    }
}

/// Single-port mode: hands a client's ACK/ERROR to its transfer.
fn route_to_transfer(shared: &Arc<Shared>, client: SocketAddr, pkt: &[u8]) {
    let mut routes = shared.routes.lock().unwrap_or_else(|p| p.into_inner());
    match routes.get_mut(&client) {
        Some(r) => {
            r.heard = true;
            // A full queue means the transfer is far behind: dropping is what UDP would do.
            let _ = r.tx.try_send((Instant::now(), Bytes::copy_from_slice(pkt)));
        }
        None => {
            shared.metrics.tftp.bad_packets.inc("no_transfer");
            debug!(client = %client, "packet for no transfer dropped");
        }
    }
}

/// Sends an ERROR for a request. In per-transfer mode it comes from a fresh port, like
/// any transfer's first packet; in single-port mode from the listening port.
fn reply_error(
    shared: &Arc<Shared>,
    sock: &Arc<UdpSocket>,
    local_ip: IpAddr,
    client: SocketAddr,
    code: ErrorCode,
    msg: &str,
) {
    if !shared.error_ok(client.ip()) {
        return;
    }
    let mut buf = Vec::with_capacity(msg.len() + 5);
    tftp::emit_error(&mut buf, code, msg);
    let single = shared.cfg.single_port;
    let sock = sock.clone();
    let src_ip = src_ip_for(shared, local_ip);
    let capture = shared.capture.clone();
    let listen_port = shared.cfg.listen.port();
    tokio::spawn(async move {
        let r = if single {
            let r = udp::send_one(&sock, client, src_ip, &buf).await;
            let port = sock.local_addr().map(|a| a.port()).unwrap_or(listen_port);
            if let Some(c) = &capture {
                c.record(SocketAddr::new(local_ip, port), client, &buf);
            }
            r
        } else {
            match bind_transfer_socket(local_ip) {
                Ok(s) => {
                    if let (Some(c), Ok(a)) = (&capture, s.local_addr()) {
                        c.record(SocketAddr::new(local_ip, a.port()), client, &buf);
                    }
                    s.send_to(&buf, client).await.map(|_| ())
                }
                Err(e) => Err(e),
            }
        };
        if let Err(e) = r {
            debug!(client = %client, error = %e, "could not send tftp error");
        }
    });
}

/// `ip` as an address of a socket of the given family.
fn in_family(ip: IpAddr, v6: bool) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v6 => IpAddr::V6(v4.to_ipv6_mapped()),
        ip if !v6 => ip.to_canonical(),
        ip => ip,
    }
}

/// Source address to pin on the shared socket: only needed when it is bound to a wildcard.
fn src_ip_for(shared: &Shared, local_ip: IpAddr) -> Option<IpAddr> {
    (shared.cfg.listen.ip().is_unspecified() && !local_ip.is_unspecified()).then_some(local_ip)
}

fn bind_transfer_socket(local_ip: IpAddr) -> io::Result<UdpSocket> {
    match udp::bind(SocketAddr::new(local_ip, 0), false) {
        Ok(s) => Ok(s),
        // E.g. an IPv4 destination seen on a dual-stack socket: let the kernel choose.
        Err(_) => {
            let any = if local_ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            };
            udp::bind(SocketAddr::new(any, 0), false)
        }
    }
}

/// Reserves a slot (evicting transfers the fair-share policy gives up; see
/// [`crate::net::slots`]) or says which limit refused it.
fn take_slot(shared: &Arc<Shared>, ip: IpAddr) -> Result<SlotGuard, Refusal> {
    let caps = shared.caps();
    let mut s = shared.slots.lock().unwrap_or_else(|p| p.into_inner());
    // Each eviction frees one slot, so a couple of rounds always reach a decision.
    for _ in 0..4 {
        match s.table.decide(&ip, caps) {
            Admission::Admit => {
                let id = s.table.insert(ip, true);
                let evicted = CancellationToken::new();
                s.evict.insert(id, evicted.clone());
                shared.metrics.tftp.active.set(s.table.len() as i64);
                return Ok(SlotGuard {
                    shared: shared.clone(),
                    id,
                    evicted,
                });
            }
            Admission::Evict(id) => {
                s.table.remove(id);
                if let Some(t) = s.evict.remove(&id) {
                    t.cancel();
                }
                shared.metrics.tftp.evicted.inc();
            }
            Admission::Refuse(r) => return Err(r),
        }
    }
    Err(Refusal::Total)
}

/// Where a transfer's packets go and come from.
enum Link {
    /// Its own socket (the normal case: a new transfer ID per transfer).
    Own(OwnSocket),
    /// The listener's socket, fed through a queue (single-port mode).
    Shared {
        sock: Arc<UdpSocket>,
        src_ip: Option<IpAddr>,
        rx: mpsc::Receiver<(Instant, Bytes)>,
        id: u64,
    },
}

/// A transfer's own socket, read two datagrams at a time (see [`udp::recv_drain`]): a
/// lock-step transfer then pays one receive syscall per ACK, not two.
struct OwnSocket {
    sock: UdpSocket,
    /// Where the second datagram of a receive lands.
    spare: Box<[u8; TRANSFER_RECV_BUF]>,
    /// That second datagram, not yet handed out: (length, sender, arrival).
    pending: Option<(usize, SocketAddr, Instant)>,
}

/// Largest datagram a transfer reads (ACKs and ERRORs are short; longer ones truncate).
const TRANSFER_RECV_BUF: usize = 1024;

impl OwnSocket {
    fn new(sock: UdpSocket) -> Self {
        OwnSocket {
            sock,
            spare: Box::new([0; TRANSFER_RECV_BUF]),
            pending: None,
        }
    }

    /// Next datagram: (length, sender, when it was read).
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Instant)> {
        if let Some((n, from, at)) = self.pending.take() {
            let n = n.min(buf.len());
            buf[..n].copy_from_slice(&self.spare[..n]);
            return Ok((n, from, at));
        }
        let (a, b) = udp::recv_drain(&self.sock, buf, &mut self.spare[..]).await?;
        let at = Instant::now();
        self.pending = b.map(|b| (b.len, b.from, at));
        Ok((a.len, a.from, at))
    }
}

impl Link {
    /// The transfer's own address (for captures).
    fn local_addr(&self, local_ip: IpAddr) -> SocketAddr {
        let port = match self {
            Link::Own(o) => o.sock.local_addr().map(|a| a.port()).unwrap_or(0),
            Link::Shared { sock, .. } => sock.local_addr().map(|a| a.port()).unwrap_or(0),
        };
        SocketAddr::new(local_ip, port)
    }

    async fn send_batch(&self, client: SocketAddr, pkts: &[(&[u8], &[u8])]) -> io::Result<()> {
        match self {
            Link::Own(o) => udp::send_batch(&o.sock, client, None, pkts).await,
            Link::Shared { sock, src_ip, .. } => udp::send_batch(sock, client, *src_ip, pkts).await,
        }
    }

    /// Next datagram for this transfer: (length, sender, when it arrived). `None` when
    /// the route is gone. The arrival instant matters in single-port mode, where a
    /// packet may wait in the queue while the transfer sends: an ACK that arrived before
    /// the packet it acknowledges was sent proves nothing.
    async fn recv(
        &mut self,
        buf: &mut [u8],
        client: SocketAddr,
    ) -> Option<io::Result<(usize, SocketAddr, Instant)>> {
        match self {
            Link::Own(o) => Some(o.recv(buf).await),
            Link::Shared { rx, .. } => {
                let (at, b) = rx.recv().await?;
                let n = b.len().min(buf.len());
                buf[..n].copy_from_slice(&b[..n]);
                Some(Ok((n, client, at)))
            }
        }
    }
}

/// Starts a read transfer: limits, file, negotiation, then a task.
fn start_read(
    shared: &Arc<Shared>,
    sock: &Arc<UdpSocket>,
    local_ip: IpAddr,
    meta: udp::RecvMeta,
    req: Request<'_>,
) {
    let client = meta.src;
    let m = &shared.metrics.tftp;
    // The name as logs show it: a node's boot token never goes to a log.
    let shown = crate::wire::token::redact(req.filename);
    for ig in &req.options.ignored {
        m.options_ignored.inc(ig.reason.as_str());
        debug!(client = %client, option = %ig.name, reason = ig.reason.as_str(), "option ignored");
    }
    if req.mode == Mode::Mail {
        m.refused.inc("mail_mode");
        reply_error(
            shared,
            sock,
            local_ip,
            client,
            ErrorCode::IllegalOperation,
            "mail mode is not supported",
        );
        return;
    }
    // The name is parsed once, here: every lookup after this sees the same path.
    let path = match ClientPath::from_tftp(req.filename, &shared.paths, client.ip()) {
        Ok(p) => p,
        Err(e) => {
            m.refused.inc(e.as_str());
            if let Some(suppressed) = shared.log_ok(client.ip()) {
                info!(client = %client, path = %shown.escape_debug(), reason = e.as_str(), error = %e, suppressed, "tftp request refused");
            }
            reply_error(
                shared,
                sock,
                local_ip,
                client,
                e.tftp_code(),
                &path_refusal_message(&e),
            );
            return;
        }
    };
    if req.dropped_trailing_byte {
        m.name_fixups.inc("trailing_byte");
        debug!(client = %client, path = %shown, "trailing 0xFF after the file name dropped (PXE ROM quirk)");
    }
    if path.was_remapped() {
        m.name_fixups.inc("remapped");
        debug!(client = %client, path = %shown, mapped = %path, "file name rewritten by the map file");
    }
    // Single-port: a second RRQ from the same client port either repeats the first
    // (nothing heard back yet: drop it, the transfer retransmits on its own) or starts
    // over (e.g. the real download after a size probe): then the old transfer ends.
    if shared.cfg.single_port {
        let mut routes = shared.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = routes.get(&client) {
            if !r.heard && r.filename == *shown {
                m.bad_packets.inc("duplicate_request");
                debug!(client = %client, path = %shown, "repeated request ignored");
                return;
            }
            routes.remove(&client);
        }
    }
    let slot = match take_slot(shared, client.ip().to_canonical()) {
        Ok(s) => s,
        Err(which) => {
            let which = which.as_str();
            m.limit_hits.inc(which);
            m.refused.inc("busy");
            if let Some(suppressed) = shared.log_ok(client.ip()) {
                warn!(client = %client, path = %shown.escape_debug(), limit = which, suppressed, "tftp transfer limit reached; request refused");
            }
            reply_error(
                shared,
                sock,
                local_ip,
                client,
                ErrorCode::NotDefined,
                "server busy: too many transfers, try again later",
            );
            return;
        }
    };
    let mtu = shared
        .cfg
        .mtu
        .or_else(|| meta.ifindex.and_then(udp::interface_mtu));
    let path_cap = mtu.map(|mtu| {
        blksize_for_mtu(
            mtu,
            client.is_ipv6() && client.ip().to_canonical().is_ipv6(),
        )
    });
    let filename = shown.into_owned();
    let mode = req.mode;
    let opts = RequestOptions {
        blksize: req.options.blksize,
        tsize: req.options.tsize,
        timeout: req.options.timeout,
        windowsize: req.options.windowsize,
    };
    let link = if shared.cfg.single_port {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut routes = shared.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.insert(
            client,
            Route {
                id,
                tx,
                heard: false,
                filename: filename.clone(),
            },
        );
        Link::Shared {
            sock: sock.clone(),
            src_ip: src_ip_for(shared, local_ip),
            rx,
            id,
        }
    } else {
        match bind_transfer_socket(local_ip) {
            Ok(s) => Link::Own(OwnSocket::new(s)),
            Err(e) => {
                m.refused.inc("socket");
                if let Some(suppressed) = shared.log_ok(client.ip()) {
                    warn!(client = %client, error = %e, suppressed, "cannot open a transfer socket");
                }
                reply_error(
                    shared,
                    sock,
                    local_ip,
                    client,
                    ErrorCode::NotDefined,
                    "server cannot open a transfer socket",
                );
                return;
            }
        }
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        serve_read(
            &shared, &slot, link, client, local_ip, filename, path, mode, opts, path_cap,
        )
        .await;
    });
}

/// The options of a request, owned, for the transfer task.
#[derive(Debug, Clone, Copy)]
struct RequestOptions {
    blksize: Option<u16>,
    tsize: Option<u64>,
    timeout: Option<u8>,
    windowsize: Option<u16>,
}

#[allow(clippy::too_many_arguments)]
async fn serve_read(
    shared: &Arc<Shared>,
    slot: &SlotGuard,
    link: Link,
    client: SocketAddr,
    local_ip: IpAddr,
    filename: String,
    path: ClientPath,
    mode: Mode,
    opts: RequestOptions,
    path_cap: Option<u16>,
) {
    let m = &shared.metrics.tftp;
    let data = match shared.source.open(&path, Some(client.ip())).await {
        Ok(d) => d,
        Err(e) => {
            m.refused.inc(e.reason());
            if let Some(b) = &shared.boots {
                b.refused(Proto::Tftp, client.ip(), &path, None, &e);
            }
            if let Some(suppressed) = shared.log_ok(client.ip()) {
                info!(client = %client, path = %filename.escape_debug(), reason = e.reason(), error = %e, suppressed, "tftp request refused");
            }
            if shared.error_ok(client.ip()) {
                let mut buf = Vec::new();
                tftp::emit_error(&mut buf, e.code(), refusal_message(&e));
                if let Some(c) = &shared.capture {
                    c.record(link.local_addr(local_ip), client, &buf);
                }
                let _ = link.send_batch(client, &[(&buf, &[])]).await;
            }
            unroute(shared, &link, client);
            return;
        }
    };
    let bytes = match mode {
        Mode::Netascii => data.netascii().clone(),
        _ => data.octets().clone(),
    };
    let ropts = tftp::RequestOptions {
        blksize: opts.blksize,
        tsize: opts.tsize,
        timeout: opts.timeout,
        windowsize: opts.windowsize,
        ignored: Vec::new(),
    };
    let size = bytes.len() as u64;
    let params = negotiate(&ropts, size, &shared.limits, path_cap);
    if opts.timeout.is_some() && params.oack.is_none_or(|o| o.timeout.is_none()) {
        m.options_ignored.inc("timeout_over_limit");
        debug!(client = %client, asked = opts.timeout, used_ms = params.timeout.as_millis() as u64, "timeout option over tftp.max_timeout_ms not granted");
    }
    let started = Instant::now();
    let mut t = Transfer::new(bytes, params, started);
    m.started.inc();
    let live =
        (shared.boots.as_ref()).map(|b| b.begin(Proto::Tftp, client.ip(), &path, None, size));
    debug!(
        client = %client, path = %filename, mode = mode.as_str(), size,
        blksize = params.blksize, windowsize = params.windowsize, oack = params.oack.is_some(),
        "tftp transfer started"
    );
    let mut link = link;
    drive(shared, slot, &mut link, client, local_ip, &mut t).await;
    unroute(shared, &link, client);

    let stats = t.stats();
    let elapsed = started.elapsed();
    m.data_packets.add(stats.data_packets);
    m.retransmits.add(stats.retransmits);
    m.bytes.add(t.bytes_acked());
    let outcome = t
        .outcome()
        .cloned()
        .unwrap_or(Outcome::Aborted("unfinished"));
    if let Some(l) = live {
        l.finish_tftp(&outcome, t.bytes_acked());
    }
    match &outcome {
        Outcome::Completed => {
            m.completed.inc();
            m.duration.observe(elapsed);
            info!(
                client = %client, path = %filename, bytes = size, blksize = params.blksize,
                windowsize = params.windowsize, retransmits = stats.retransmits,
                duration_ms = elapsed.as_millis() as u64, "tftp transfer completed"
            );
        }
        Outcome::SizeProbe => {
            m.size_probes.inc();
            debug!(client = %client, path = %filename, "tftp size probe (client aborted after OACK)");
        }
        Outcome::ClientAborted { code, message } => {
            m.failed.inc("client_error");
            if let Some(suppressed) = shared.log_ok(client.ip()) {
                info!(client = %client, path = %filename, code = code.to_u16(), message = %message.escape_debug(), suppressed, "tftp transfer aborted by client");
            }
        }
        o => {
            m.failed.inc(o.as_str());
            if let Some(suppressed) = shared.log_ok(client.ip()) {
                info!(
                    client = %client, path = %filename, reason = o.as_str(), why = ?o, acked_bytes = t.bytes_acked(),
                    retransmits = stats.retransmits, proven = t.is_proven(), suppressed, "tftp transfer failed"
                );
            }
        }
    }
}

/// What the client reads in an ERROR for a refused file: the code's plain meaning, never
/// the reason (which node, which owner), the server's paths or an internal error. The
/// log line says why.
fn refusal_message(e: &OpenError) -> &'static str {
    match e {
        OpenError::NotFound => "file not found",
        OpenError::Denied(_) | OpenError::NotServed(_) => "access violation",
        OpenError::Io(_) => "server could not read the file",
    }
}

/// What the client reads in an ERROR for a name refused before any lookup: what is wrong
/// with the name it sent, or the map file's message for a refusing rule (the operator's
/// words); never the map file's lines.
fn path_refusal_message(e: &PathError) -> String {
    match e {
        PathError::MapRefused {
            message: Some(m), ..
        } => m.clone(),
        PathError::MapRefused { .. } | PathError::MapLoop(_) => "access violation".into(),
        e if e.tftp_code() == ErrorCode::AccessViolation => format!("access violation ({e})"),
        e => e.to_string(),
    }
}

fn unroute(shared: &Shared, link: &Link, client: SocketAddr) {
    if let Link::Shared { id, .. } = link {
        let mut routes = shared.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.get(&client).is_some_and(|r| r.id == *id) {
            routes.remove(&client);
        }
    }
}

/// Runs the state machine against the link until it finishes.
async fn drive(
    shared: &Arc<Shared>,
    slot: &SlotGuard,
    link: &mut Link,
    client: SocketAddr,
    local_ip: IpAddr,
    t: &mut Transfer,
) {
    let me = link.local_addr(local_ip);
    let mut buf = [0u8; TRANSFER_RECV_BUF];
    let mut headers: Vec<[u8; 4]> = Vec::new();
    let sleep = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    // Made once: a fresh `cancelled()` per datagram costs a waiter list insert/remove.
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    let evicted = slot.evicted.cancelled();
    tokio::pin!(evicted);
    let mut proven = false;
    loop {
        if !proven && t.is_proven() {
            proven = true;
            slot.proven();
        }
        while let Some(tx) = t.poll_transmit(Instant::now()) {
            let r = match tx {
                Transmit::Control(pkt) => {
                    if let Some(c) = &shared.capture {
                        c.record(me, client, &pkt);
                    }
                    link.send_batch(client, &[(&pkt, &[])]).await
                }
                Transmit::Data(b) if b.first == b.last => {
                    // Lock-step: one block, sent without building a batch.
                    let h = t.header(b.first);
                    let d = t.payload(b.first);
                    if let Some(c) = &shared.capture {
                        c.record_parts(me, client, &h, d);
                    }
                    link.send_batch(client, &[(&h, d)]).await
                }
                Transmit::Data(b) => {
                    headers.clear();
                    headers.extend((b.first..=b.last).map(|k| t.header(k)));
                    let batch: Vec<(&[u8], &[u8])> = headers
                        .iter()
                        .zip(b.first..=b.last)
                        .map(|(h, k)| (&h[..], t.payload(k)))
                        .collect();
                    if let Some(c) = &shared.capture {
                        for (h, d) in &batch {
                            c.record_parts(me, client, h, d);
                        }
                    }
                    link.send_batch(client, &batch).await
                }
            };
            if let Err(e) = r {
                // A send failure is usually transient (buffer full, route flap): the
                // retransmission timer recovers; the retry limit still bounds it.
                debug!(client = %client, error = %e, "tftp send failed");
            }
        }
        let Some(deadline) = t.poll_timeout() else {
            break;
        };
        // The deadline moves later with every ACK; re-arming the timer each time costs a
        // timer-wheel update per block. Re-arm only for an earlier deadline; a timer that
        // fires early is re-armed then.
        if armed.is_none_or(|a| deadline < a) {
            sleep.as_mut().reset(deadline.into());
            armed = Some(deadline);
        }
        tokio::select! {
            _ = &mut cancelled => { t.abort("shutdown"); break; }
            _ = &mut evicted => { t.abort("evicted"); break; }
            r = link.recv(&mut buf, client) => match r {
                None => { t.abort("superseded"); break; }
                Some(r) => on_transfer_datagram(shared, link, me, client, &buf, r, t).await,
            },
            _ = &mut sleep => {
                armed = None;
                let now = Instant::now();
                if now >= deadline {
                    t.handle_timeout(now);
                }
            }
        }
    }
}

/// Hands one datagram received on a transfer's link to the state machine.
async fn on_transfer_datagram(
    shared: &Shared,
    link: &Link,
    me: SocketAddr,
    client: SocketAddr,
    buf: &[u8],
    r: io::Result<(usize, SocketAddr, Instant)>,
    t: &mut Transfer,
) {
    let m = &shared.metrics.tftp;
    let (n, from, at) = match r {
        Ok(v) => v,
        Err(e) => {
            debug!(client = %client, error = %e, "transfer receive error");
            return;
        }
    };
    if let Some(c) = &shared.capture {
        c.record(from, me, &buf[..n]);
    }
    if from != client {
        // RFC 1350: a packet from another TID gets ERROR 5; the transfer goes on.
        m.unknown_tid.inc();
        debug!(client = %client, from = %from, "packet from unknown transfer ID");
        if let (Link::Own(OwnSocket { sock: s, .. }), true) = (link, shared.error_ok(from.ip())) {
            let mut e = Vec::new();
            tftp::emit_error(&mut e, ErrorCode::UnknownTid, "unknown transfer ID");
            if let Some(c) = &shared.capture {
                c.record(me, from, &e);
            }
            let _ = s.send_to(&e, from).await;
        }
        return;
    }
    match Packet::parse(&buf[..n]) {
        Ok(p) => t.handle(&p, at),
        Err(e) => {
            m.bad_packets.inc(e.error.as_str());
            debug!(client = %client, error = %e, "malformed packet in transfer");
        }
    }
}

/// Negotiation limits from the TFTP settings.
fn limits(cfg: &TftpConfig) -> Limits {
    Limits {
        max_blksize: cfg.max_blksize,
        max_windowsize: cfg.max_windowsize,
        default_timeout: std::time::Duration::from_millis(cfg.timeout_ms),
        max_timeout: std::time::Duration::from_millis(cfg.max_timeout_ms),
        max_retries: cfg.max_retries,
        rollover: cfg.rollover,
    }
}
