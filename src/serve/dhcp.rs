//! The tokio driver of proxy-DHCP: sockets on udp/67 and udp/4011 (per interface with
//! SO_BINDTODEVICE when interfaces are configured), decoding, the [`decide`] and
//! [`route`] calls, and sending the answer where [`route`] says, at most
//! `dhcp.answers_per_mac_minute` per MAC.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bindings::{Bindings, Learned};
use crate::boots::DhcpSeen;
use crate::capture::Capture;
use crate::config::DhcpConfig;
use crate::dhcp::proxy::{decide, route, Decision, Ignored, Policy, Port, Route};
use crate::metrics::Metrics;
use crate::net::ratelimit::{Limiter, LogBudget, Rate, Verdict};
use crate::net::{iface, udp};
use crate::ownership::gate::{Gate, NotServed, Purpose};
use crate::store::MacAddr;
use crate::store::Node;
use crate::store::Store;
use crate::wire::dhcp::{self, build_reply, classify_arch};

/// Why proxy-DHCP could not start.
#[derive(Debug, thiserror::Error)]
pub enum DhcpBindError {
    /// Privileged port without privilege.
    #[error(
        "cannot listen on udp/{port} for proxy-DHCP: permission denied. Run as root or grant \
         CAP_NET_BIND_SERVICE (and CAP_NET_RAW for --dhcp-interface), or disable it with --no-dhcp"
    )]
    Permission {
        /// Port.
        port: u16,
    },
    /// The port is taken.
    #[error(
        "cannot listen on udp/{port} for proxy-DHCP: address already in use. A DHCP server \
         (dnsmasq, isc-dhcp-server, kea) on this host holds it: bind Baton to the boot \
         interfaces with --dhcp-interface IFACE, stop the other server's PXE role, or use --no-dhcp"
    )]
    InUse {
        /// Port.
        port: u16,
    },
    /// Unknown interface.
    #[error("--dhcp-interface {0}: no such interface (see `ip link`)")]
    NoInterface(String),
    /// Anything else.
    #[error("cannot set up the proxy-DHCP socket on udp/{port}: {source}")]
    Other {
        /// Port.
        port: u16,
        /// Cause.
        source: io::Error,
    },
}

struct Listener {
    port: Port,
    sock: Arc<UdpSocket>,
    iface: Option<String>,
}

/// What the proxy-DHCP driver reads: the replica (MAC -> node), the serve gate, and
/// its counters.
#[derive(Clone)]
pub struct DhcpDeps {
    /// The local replica.
    pub store: Arc<Store>,
    /// The serve gate.
    pub gate: Gate,
    /// Client addresses learned from PXE exchanges.
    pub bindings: Bindings,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Boot records.
    pub boots: crate::boots::BootRecorder,
}

/// A bound proxy-DHCP server.
pub struct DhcpServer {
    listeners: Vec<Listener>,
    app: DhcpDeps,
    cfg: DhcpConfig,
    policy: Policy,
    capture: Option<Capture>,
}

fn bind_one(ip: Ipv4Addr, port: u16, iface: Option<&str>) -> Result<UdpSocket, DhcpBindError> {
    let map = |e: io::Error| match e.kind() {
        io::ErrorKind::PermissionDenied => DhcpBindError::Permission { port },
        io::ErrorKind::AddrInUse => DhcpBindError::InUse { port },
        _ => DhcpBindError::Other { port, source: e },
    };
    let s =
        Socket::new(Domain::IPV4, Type::DGRAM.nonblocking(), Some(Protocol::UDP)).map_err(map)?;
    s.set_broadcast(true).map_err(map)?;
    if let Some(i) = iface {
        // Several per-interface sockets share the port.
        s.set_reuse_address(true).map_err(map)?;
        s.bind_device(Some(i.as_bytes())).map_err(map)?;
    }
    let one: libc::c_int = 1;
    // SAFETY: valid fd; pointer to a c_int of the stated size.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(map(io::Error::last_os_error()));
    }
    s.bind(&SockAddr::from(SocketAddrV4::new(ip, port)))
        .map_err(map)?;
    UdpSocket::from_std(s.into()).map_err(map)
}

impl DhcpServer {
    /// Binds udp/67 and udp/4011 (or the configured ports).
    pub fn bind(
        cfg: DhcpConfig,
        app: DhcpDeps,
        http_port: u16,
        capture: Option<Capture>,
    ) -> Result<Self, DhcpBindError> {
        let mut listeners = Vec::new();
        let ifaces: Vec<Option<String>> = if cfg.interfaces.is_empty() {
            vec![None]
        } else {
            cfg.interfaces.iter().map(|i| Some(i.clone())).collect()
        };
        let mut ports = [(Port::Dhcp, cfg.port), (Port::BootServer, cfg.pxe_port)];
        for i in &ifaces {
            if let Some(name) = i {
                if iface::index_of(name).is_none() {
                    return Err(DhcpBindError::NoInterface(name.clone()));
                }
            }
            for (port, p) in &mut ports {
                let port = *port;
                let sock = bind_one(cfg.listen, *p, i.as_deref())?;
                if *p == 0 {
                    // Port 0: the kernel chose one; the other interfaces' sockets of this
                    // role share it, as they share a configured port.
                    *p = sock
                        .local_addr()
                        .map_err(|source| DhcpBindError::Other { port: 0, source })?
                        .port();
                }
                listeners.push(Listener {
                    port,
                    sock: Arc::new(sock),
                    iface: i.clone(),
                });
            }
        }
        let policy = Policy {
            boot_files: cfg.boot_files.clone(),
            script_via: cfg.ipxe_script,
            http_port,
            answer_local: cfg.answer_local,
        };
        Ok(DhcpServer {
            listeners,
            app,
            cfg,
            policy,
            capture,
        })
    }

    /// The bound addresses (useful with port 0 in tests).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.sock.local_addr().ok())
            .collect()
    }

    /// The bound address of the first socket for `role` (every interface's socket of a
    /// role has the same port).
    pub fn local_addr(&self, role: Port) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.port == role)
            .and_then(|l| l.sock.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let answers = Limiter::new(
            Rate::per_minute(self.cfg.answers_per_mac_minute),
            ANSWER_MACS,
        );
        let shared = Arc::new(Shared {
            app: self.app,
            cfg: self.cfg,
            policy: self.policy,
            capture: self.capture,
            answers: Mutex::new(answers),
            logs: Mutex::new(LogBudget::new()),
        });
        let mut tasks = Vec::new();
        for l in self.listeners {
            let addr = l.sock.local_addr().ok();
            info!(addr = ?addr, iface = l.iface.as_deref().unwrap_or("*"), port = ?l.port, "proxy-dhcp listening");
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move { shared.serve(l, shutdown).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// MACs whose answer budget is tracked at once (only MACs of known nodes get answers).
const ANSWER_MACS: usize = 65_536;

struct Shared {
    app: DhcpDeps,
    cfg: DhcpConfig,
    policy: Policy,
    capture: Option<Capture>,
    /// Answers per MAC.
    answers: Mutex<Limiter<MacAddr>>,
    /// "Not answered" log lines per MAC.
    logs: Mutex<LogBudget<MacAddr>>,
}

impl Shared {
    async fn serve(&self, l: Listener, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 8192];
        loop {
            let meta = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = udp::recv_meta(&l.sock, &mut buf) => match r {
                    Ok(m) => m,
                    Err(e) => { debug!(error = %e, "proxy-dhcp receive error"); continue; }
                },
            };
            let pkt = &buf[..meta.len.min(buf.len())];
            let local = l.sock.local_addr().ok();
            if let (Some(c), Some(local)) = (&self.capture, local) {
                let dst = SocketAddr::new(meta.dst_ip.unwrap_or(local.ip()), local.port());
                c.record(meta.src, dst, pkt);
            }
            self.handle(&l, pkt, meta).await;
        }
    }

    /// The address this host announces on the request's segment.
    fn server_ip(&self, meta: &udp::RecvMeta) -> Option<Ipv4Addr> {
        if let Some(ip) = self.cfg.server_ip {
            return Some(ip);
        }
        if let Some(IpAddr::V4(d)) = meta.dst_ip {
            if !d.is_broadcast() && !d.is_unspecified() && !d.is_multicast() {
                return Some(d);
            }
        }
        meta.ifindex.and_then(iface::ipv4_of)
    }

    /// May a line about `mac` be logged now? `Some(n)`: yes, `n` dropped since the last.
    fn log_ok(&self, mac: &MacAddr) -> Option<u64> {
        let v = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(mac, Instant::now());
        match v {
            Verdict::Allow { suppressed } => Some(suppressed),
            Verdict::Deny => {
                self.app.metrics.dhcp.suppressed_logs.inc();
                None
            }
        }
    }

    async fn handle(&self, l: &Listener, pkt: &[u8], meta: udp::RecvMeta) {
        let m = &self.app.metrics.dhcp;
        let req = match dhcp::parse(pkt) {
            Ok(r) => r,
            Err(e) => {
                m.bad_packets.inc(e.as_str());
                debug!(from = %meta.src, error = %e, "dhcp packet dropped");
                return;
            }
        };
        m.requests
            .inc(&format!("{:?}", req.msg_type).to_lowercase());
        let mac = MacAddr(req.mac);
        let (arch, _) = classify_arch(req.arch.unwrap_or(0));
        let Some(server_ip) = self.server_ip(&meta) else {
            m.ignored.inc("no_server_address");
            if let Some(suppressed) = self.log_ok(&mac) {
                warn!(mac = %mac, ifindex = ?meta.ifindex, suppressed, "no IPv4 address on the receiving interface; set dhcp.server_ip");
            }
            return;
        };
        // Where an answer could go is settled first: a request that may not be answered
        // (a forged relay field) teaches nothing either.
        let src = match meta.src {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                Some(ip) => SocketAddrV4::new(ip, a.port()),
                None => {
                    m.ignored.inc(Ignored::BadSource.as_str());
                    return;
                }
            },
        };
        let is_local =
            |ip: Ipv4Addr| ip == server_ip || iface::list().iter().any(|i| i.ipv4.contains(&ip));
        let to = match route(req.giaddr, src, l.port, &self.cfg.relays, is_local) {
            Ok(r) => r,
            Err(reason) => {
                m.ignored.inc(reason.as_str());
                if let Some(suppressed) = self.log_ok(&mac) {
                    warn!(mac = %mac, from = %meta.src, giaddr = %req.giaddr, reason = reason.as_str(), suppressed, "dhcp request not answered: its relay address (giaddr) is not a configured relay (dhcp.relays)");
                }
                return;
            }
        };
        // Sampled before the read: see LeaseView.
        let lease = self.app.gate.lease_view();
        let node = match self.app.store.node_by_mac(&mac) {
            Ok(n) => n,
            Err(e) => {
                m.ignored.inc("store_error");
                warn!(mac = %mac, error = %e, "store lookup failed");
                return;
            }
        };
        if let Some(n) = &node {
            self.learn_addresses(n, &req, &meta, l.port);
        }
        // The serve gate alone decides whether this host answers for the node.
        let verdict = node.as_ref().map_or(Ok(()), |n| {
            self.app
                .gate
                .check(lease, n, Purpose::Answer, None)
                .map(|_| ())
        });
        let known = node.as_ref();
        match decide(
            &req,
            l.port,
            node.as_ref(),
            verdict,
            &self.policy,
            server_ip,
        ) {
            Decision::Ignore(reason) => {
                m.ignored.inc(reason.as_str());
                if let Some(n) = known {
                    let bs = l.port == Port::BootServer;
                    self.app
                        .boots
                        .dhcp(n, bs, &req, meta.src.ip(), DhcpSeen::Ignored(reason));
                }
                let noteworthy = !matches!(
                    reason,
                    Ignored::NotPxe | Ignored::OtherServer | Ignored::MessageType
                );
                if noteworthy {
                    if let Some(suppressed) = self.log_ok(&mac) {
                        info!(mac = %mac, arch = arch.as_str(), node = node.as_ref().map(|n| n.id.as_str()).unwrap_or("-"), epoch = node.as_ref().map(|n| n.epoch), reason = reason.as_str(), suppressed, "pxe request not answered");
                    }
                } else {
                    debug!(mac = %mac, reason = reason.as_str(), "dhcp request ignored");
                }
            }
            Decision::Answer { reply, node, stage } => {
                let allowed = self
                    .answers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .check(&mac, Instant::now())
                    .allowed();
                if !allowed {
                    m.ignored.inc(Ignored::RateLimited.as_str());
                    if let Some(suppressed) = self.log_ok(&mac) {
                        info!(mac = %mac, node = %node, limit = self.cfg.answers_per_mac_minute, suppressed, "pxe request not answered: too many answers for this MAC in the last minute (dhcp.answers_per_mac_minute)");
                    }
                    return;
                }
                // The last moment to notice a pause (or a lapse) since the node was read.
                if !lease.fresh() {
                    m.ignored.inc(NotServed::LeaseStale.label());
                    if let Some(suppressed) = self.log_ok(&mac) {
                        info!(mac = %mac, node = %node, suppressed, "pxe answer dropped: the lease ran out after the node was read");
                    }
                    return;
                }
                let bytes = build_reply(&req, &reply);
                let (dst, ifindex) = match to {
                    Route::Relay(g) => (SocketAddr::new(IpAddr::V4(g), 67), None),
                    Route::Broadcast(p) => (
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), p),
                        meta.ifindex,
                    ),
                    Route::Unicast(a) => (SocketAddr::V4(a), None),
                };
                let src = SocketAddr::new(
                    IpAddr::V4(server_ip),
                    l.sock.local_addr().map(|a| a.port()).unwrap_or(0),
                );
                match udp::send_v4_via(&l.sock, dst, Some(server_ip), ifindex, &bytes).await {
                    Ok(()) => {
                        // This host may now finish the boot it answered, should the
                        // node migrate away meanwhile.
                        self.app.gate.note_answer(&node);
                        if let Some(n) = known {
                            let seen = DhcpSeen::Answered {
                                boot_file: &reply.boot_file,
                                arch: arch.as_str(),
                            };
                            self.app.boots.dhcp(
                                n,
                                l.port == Port::BootServer,
                                &req,
                                meta.src.ip(),
                                seen,
                            );
                        }
                        m.answered
                            .inc(&format!("{:?}", reply.msg_type).to_lowercase());
                        if let Some(c) = &self.capture {
                            c.record(src, dst, &bytes);
                        }
                        info!(mac = %mac, arch = arch.as_str(), node = %node, stage, boot_file = %reply.boot_file, to = %dst, "pxe answer sent");
                    }
                    Err(e) => {
                        m.ignored.inc("send_error");
                        if let Some(n) = known {
                            self.app.boots.dhcp(
                                n,
                                l.port == Port::BootServer,
                                &req,
                                meta.src.ip(),
                                DhcpSeen::SendFailed,
                            );
                        }
                        if let Some(suppressed) = self.log_ok(&mac) {
                            warn!(mac = %mac, to = %dst, error = %e, suppressed, "cannot send pxe answer");
                        }
                    }
                }
            }
        }
    }
}

impl Shared {
    /// Ties the addresses this exchange shows to the node (see [`crate::bindings`]):
    /// the one it asks its address server for, its `ciaddr`, its 4011 source.
    fn learn_addresses(&self, n: &Node, req: &dhcp::PxeRequest, meta: &udp::RecvMeta, port: Port) {
        let b = &self.app.bindings;
        if let Some(ip) = req.requested_ip {
            b.learn(IpAddr::V4(ip), &n.id, Learned::RequestedAddress);
        }
        if !req.ciaddr.is_unspecified() {
            b.learn(IpAddr::V4(req.ciaddr), &n.id, Learned::ClientAddress);
        }
        if port == Port::BootServer && req.giaddr.is_unspecified() {
            b.learn(meta.src.ip(), &n.id, Learned::BootServerSource);
        }
    }
}
