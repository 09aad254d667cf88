//! The tokio driver of the TFTP server: a listener that turns read requests into
//! transfers, one task per transfer, each on its own socket (or, in single-port mode,
//! sharing the listener's socket and fed by it). Protocol decisions are made by
//! [`Transfer`] and [`negotiate`]; this file only moves datagrams and keeps limits.

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

use crate::capture::Capture;
use crate::config::TftpConfig;
use crate::metrics::Metrics;
use crate::namespace::{FileSource, OpenError};
use crate::net::udp;
use crate::tftp::negotiate::{blksize_for_mtu, negotiate, Limits};
use crate::tftp::transfer::{Outcome, Transfer, Transmit};
use crate::wire::path::{ClientPath, PathError, PathRules};
use crate::wire::tftp::{self, ErrorCode, Mode, Packet, Request};

/// Largest datagram the listener reads; longer requests are truncated and then refused.
const RECV_BUF: usize = 65_536;
/// Queue of packets the listener hands one single-port transfer.
const ROUTE_QUEUE: usize = 64;

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
    routes: Mutex<HashMap<SocketAddr, Route>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    capture: Option<Capture>,
}

#[derive(Default)]
struct Slots {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A single-port transfer as the listener sees it.
struct Route {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// The client has sent this transfer a packet (so a new RRQ is not a retransmission).
    heard: bool,
    filename: String,
}

/// A transfer's place in the concurrency limits, given back on drop.
struct SlotGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut s = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
        self.shared.metrics.tftp.active.add(-1);
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
                routes: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutdown,
                capture: None,
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
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let meta = tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                r = udp::recv_meta(&self.sock, &mut buf) => match r {
                    Ok(m) => m,
                    Err(e) => {
                        // ICMP errors and the like: log and keep serving.
                        debug!(error = %e, "tftp listener receive error");
                        continue;
                    }
                },
            };
            if let Some(c) = &shared.capture {
                c.record(
                    meta.src,
                    SocketAddr::new(meta.dst_ip.unwrap_or(self.local.ip()), self.local.port()),
                    &buf[..meta.len],
                );
            }
            on_datagram(&shared, &self.sock, self.local, &buf[..meta.len], meta);
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
            info!(client = %client, path = req.filename, "write request refused");
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
            let _ = r.tx.try_send(Bytes::copy_from_slice(pkt));
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

/// Reserves a concurrency slot or says which limit is hit.
fn take_slot(shared: &Arc<Shared>, ip: IpAddr) -> Result<SlotGuard, &'static str> {
    let mut s = shared.slots.lock().unwrap_or_else(|p| p.into_inner());
    if s.total >= shared.cfg.max_transfers {
        return Err("total");
    }
    let n = s.per_ip.entry(ip).or_default();
    if *n >= shared.cfg.max_transfers_per_client {
        return Err("per_client");
    }
    *n += 1;
    s.total += 1;
    shared.metrics.tftp.active.add(1);
    Ok(SlotGuard {
        shared: shared.clone(),
        ip,
    })
}

/// Where a transfer's packets go and come from.
enum Link {
    /// Its own socket (the normal case: a new transfer ID per transfer).
    Own(UdpSocket),
    /// The listener's socket, fed through a queue (single-port mode).
    Shared {
        sock: Arc<UdpSocket>,
        src_ip: Option<IpAddr>,
        rx: mpsc::Receiver<Bytes>,
        id: u64,
    },
}

impl Link {
    /// The transfer's own address (for captures).
    fn local_addr(&self, local_ip: IpAddr) -> SocketAddr {
        let port = match self {
            Link::Own(s) => s.local_addr().map(|a| a.port()).unwrap_or(0),
            Link::Shared { sock, .. } => sock.local_addr().map(|a| a.port()).unwrap_or(0),
        };
        SocketAddr::new(local_ip, port)
    }

    async fn send_batch(&self, client: SocketAddr, pkts: &[(&[u8], &[u8])]) -> io::Result<()> {
        match self {
            Link::Own(s) => udp::send_batch(s, client, None, pkts).await,
            Link::Shared { sock, src_ip, .. } => udp::send_batch(sock, client, *src_ip, pkts).await,
        }
    }

    /// Next datagram for this transfer: (length, sender). `None` when the route is gone.
    async fn recv(
        &mut self,
        buf: &mut [u8],
        client: SocketAddr,
    ) -> Option<io::Result<(usize, SocketAddr)>> {
        match self {
            Link::Own(s) => Some(s.recv_from(buf).await),
            Link::Shared { rx, .. } => {
                let b = rx.recv().await?;
                let n = b.len().min(buf.len());
                buf[..n].copy_from_slice(&b[..n]);
                Some(Ok((n, client)))
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
            info!(client = %client, path = %req.filename.escape_debug(), reason = e.as_str(), error = %e, "tftp request refused");
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
        debug!(client = %client, path = req.filename, "trailing 0xFF after the file name dropped (PXE ROM quirk)");
    }
    if path.was_remapped() {
        m.name_fixups.inc("remapped");
        debug!(client = %client, path = req.filename, mapped = %path, "file name rewritten by the map file");
    }
    // Single-port: a second RRQ from the same client port either repeats the first
    // (nothing heard back yet: drop it, the transfer retransmits on its own) or starts
    // over (e.g. the real download after a size probe): then the old transfer ends.
    if shared.cfg.single_port {
        let mut routes = shared.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = routes.get(&client) {
            if !r.heard && r.filename == req.filename {
                m.bad_packets.inc("duplicate_request");
                debug!(client = %client, path = req.filename, "repeated request ignored");
                return;
            }
            routes.remove(&client);
        }
    }
    let slot = match take_slot(shared, client.ip().to_canonical()) {
        Ok(s) => s,
        Err(which) => {
            m.limit_hits.inc(which);
            m.refused.inc("busy");
            warn!(client = %client, path = req.filename, limit = which, "tftp transfer limit reached; request refused");
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
    let filename = req.filename.to_string();
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
            Ok(s) => Link::Own(s),
            Err(e) => {
                m.refused.inc("socket");
                warn!(client = %client, error = %e, "cannot open a transfer socket");
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
        let _slot = slot;
        serve_read(
            &shared, link, client, local_ip, filename, path, mode, opts, path_cap,
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
            info!(client = %client, path = %filename, reason = e.reason(), "tftp request refused");
            let mut buf = Vec::new();
            tftp::emit_error(&mut buf, e.code(), &refusal_message(&e));
            if let Some(c) = &shared.capture {
                c.record(link.local_addr(local_ip), client, &buf);
            }
            let _ = link.send_batch(client, &[(&buf, &[])]).await;
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
    let started = Instant::now();
    let mut t = Transfer::new(bytes, params, started);
    m.started.inc();
    debug!(
        client = %client, path = %filename, mode = mode.as_str(), size,
        blksize = params.blksize, windowsize = params.windowsize, oack = params.oack.is_some(),
        "tftp transfer started"
    );
    let mut link = link;
    drive(shared, &mut link, client, local_ip, &mut t).await;
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
            info!(client = %client, path = %filename, code = code.to_u16(), message = %message, "tftp transfer aborted by client");
        }
        o => {
            m.failed.inc(o.as_str());
            info!(
                client = %client, path = %filename, reason = o.as_str(), acked_bytes = t.bytes_acked(),
                retransmits = stats.retransmits, "tftp transfer failed"
            );
        }
    }
}

/// What the client reads in an ERROR for a refused file; never reveals the server's paths.
fn refusal_message(e: &OpenError) -> String {
    match e {
        OpenError::NotFound => "file not found".into(),
        OpenError::Denied(r) => format!("access violation ({})", r.replace('_', " ")),
        OpenError::NotServed(r) => format!("access violation ({})", r.label().replace('_', " ")),
        OpenError::Io(_) => "server could not read the file".into(),
    }
}

/// What the client reads in an ERROR for a name refused before any lookup.
fn path_refusal_message(e: &PathError) -> String {
    match e {
        PathError::MapRefused {
            message: Some(m), ..
        } => m.clone(),
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
    link: &mut Link,
    client: SocketAddr,
    local_ip: IpAddr,
    t: &mut Transfer,
) {
    let me = link.local_addr(local_ip);
    let mut buf = [0u8; 1024];
    let mut headers: Vec<[u8; 4]> = Vec::new();
    let sleep = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    // Made once: a fresh `cancelled()` per datagram costs a waiter list insert/remove.
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        while let Some(tx) = t.poll_transmit(Instant::now()) {
            let r = match tx {
                Transmit::Control(pkt) => {
                    if let Some(c) = &shared.capture {
                        c.record(me, client, &pkt);
                    }
                    link.send_batch(client, &[(&pkt, &[])]).await
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
    r: io::Result<(usize, SocketAddr)>,
    t: &mut Transfer,
) {
    let m = &shared.metrics.tftp;
    let (n, from) = match r {
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
        if let Link::Own(s) = link {
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
        Ok(p) => t.handle(&p, Instant::now()),
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
        max_retries: cfg.max_retries,
        rollover: cfg.rollover,
    }
}
