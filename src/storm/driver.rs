//! The tokio driver of a storm: one shared broadcast socket on udp/68 (and one on
//! udp/4011 for EDK2 clients) demultiplexed by MAC, one TFTP socket per client and
//! transfer (bound to the client's source address), HTTP GETs, a task per client that
//! feeds its [`Client`] and sleeps until its deadline, a wall-clock limit, the progress
//! bar and the output. All protocol decisions are the client's.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{Client, ClientSpec, HttpResult, StormParams, Transmit};
use super::profile::Profile;
use super::report::{ClientRecord, Summary};
use super::tftp::MAX_KEPT;

/// Why a storm could not start.
#[derive(Debug, thiserror::Error)]
pub enum StormError {
    /// A socket could not be set up.
    #[error("cannot set up the {what} socket: {source}{hint}")]
    Socket {
        /// Which one.
        what: String,
        /// Cause.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// Unknown interface.
    #[error("--interface {0}: no such interface here (see `ip link`)")]
    NoInterface(String),
    /// No address to use.
    #[error("no source address: give --source-ips, or --interface with an IPv4 address")]
    NoAddress,
}

/// One client to run.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// MAC.
    pub mac: [u8; 6],
    /// Profile.
    pub profile: Profile,
    /// Source address (`None`: the interface's).
    pub source_ip: Option<Ipv4Addr>,
    /// Node id, if known.
    pub node: Option<String>,
    /// Reference digests.
    pub reference: Option<Arc<BTreeMap<String, String>>>,
}

/// A whole storm.
#[derive(Debug, Clone)]
pub struct StormPlan {
    /// The clients.
    pub clients: Vec<ClientPlan>,
    /// Shared client settings.
    pub params: StormParams,
    /// Interface to send broadcasts on (SO_BINDTODEVICE).
    pub interface: Option<String>,
    /// Local port of the DHCP socket (68).
    pub client_port: u16,
    /// Wall-clock limit.
    pub limit: Duration,
    /// Power-ons are spread evenly over this time.
    pub ramp: Duration,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Seed of transaction ids.
    pub seed: u32,
}

fn udp_socket(
    what: &str,
    bind: SocketAddrV4,
    broadcast: bool,
    iface: Option<&str>,
) -> Result<Socket, StormError> {
    let err = |source: io::Error| StormError::Socket {
        what: what.to_string(),
        hint: match source.kind() {
            io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            }
            io::ErrorKind::AddrInUse => {
                " (a DHCP client or server holds it; run the storm in its own network namespace)"
            }
            io::ErrorKind::AddrNotAvailable => {
                " (that source address is not on any interface here)"
            }
            _ => "",
        },
        source,
    };
    let s =
        Socket::new(Domain::IPV4, Type::DGRAM.nonblocking(), Some(Protocol::UDP)).map_err(err)?;
    if broadcast {
        s.set_broadcast(true).map_err(err)?;
        // Several storms (or a dhclient) may share the port in one namespace.
        s.set_reuse_address(true).map_err(err)?;
        if let Some(i) = iface {
            s.bind_device(Some(i.as_bytes())).map_err(err)?;
        }
        let _ = s.set_recv_buffer_size(8 << 20);
    }
    s.bind(&SockAddr::from(bind)).map_err(err)?;
    Ok(s)
}

fn to_tokio(s: Socket, what: &str) -> Result<UdpSocket, StormError> {
    UdpSocket::from_std(s.into()).map_err(|source| StormError::Socket {
        what: what.into(),
        source,
        hint: "",
    })
}

/// Where replies to each client go.
type Routes = Arc<HashMap<[u8; 6], mpsc::UnboundedSender<(SocketAddrV4, Vec<u8>)>>>;

/// Receives on a shared DHCP socket and hands each datagram to the client whose MAC
/// it carries (chaddr, bytes 28..34 of any BOOTP message).
async fn demux(sock: Arc<UdpSocket>, routes: Routes, stop: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    loop {
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = sock.recv_from(&mut buf) => r,
        };
        let Ok((n, SocketAddr::V4(from))) = r else {
            continue;
        };
        if n < 240 || buf[0] != 2 {
            continue;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&buf[28..34]);
        if let Some(tx) = routes.get(&mac) {
            let _ = tx.send((from, buf[..n].to_vec()));
        }
    }
}

async fn http_get(client: reqwest::Client, url: String, keep: bool) -> HttpResult {
    let resp = match client.get(&url).send().await {
        Ok(r) => r,
        Err(e) => return HttpResult::Failed(e.to_string()),
    };
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return HttpResult::NotFound(format!("HTTP {status}"));
    }
    if !status.is_success() {
        return HttpResult::Failed(format!("HTTP {status}"));
    }
    let mut h = Sha256::new();
    let mut bytes = 0u64;
    let mut data = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return HttpResult::Failed(e.to_string()),
        };
        h.update(&chunk);
        bytes += chunk.len() as u64;
        if keep {
            if bytes > MAX_KEPT {
                return HttpResult::Failed(format!("larger than {MAX_KEPT} bytes"));
            }
            data.extend_from_slice(&chunk);
        }
    }
    HttpResult::Done {
        bytes,
        sha256: hex::encode(h.finalize()),
        data: keep.then_some(data),
    }
}

struct Shared {
    params: Arc<StormParams>,
    dhcp: Arc<UdpSocket>,
    pxe: Option<Arc<UdpSocket>>,
    http: HashMap<Ipv4Addr, reqwest::Client>,
    stop: CancellationToken,
}

/// Runs one client to its end (or the stop), returning its record.
async fn run_client(
    spec: ClientSpec,
    start: tokio::time::Instant,
    mut dhcp_rx: mpsc::UnboundedReceiver<(SocketAddrV4, Vec<u8>)>,
    sh: Arc<Shared>,
) -> ClientRecord {
    tokio::select! {
        _ = tokio::time::sleep_until(start) => {}
        _ = sh.stop.cancelled() => {}
    }
    let src = spec.source_ip;
    let mut c = Client::new(spec, sh.params.clone(), Instant::now());
    if sh.stop.is_cancelled() {
        c.stop(Instant::now());
    }
    let (http_tx, mut http_rx) = mpsc::unbounded_channel();
    let mut tftp: Option<(u32, UdpSocket)> = None;
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(t) = c.poll_transmit() {
            match t {
                Transmit::Dhcp {
                    from_4011,
                    to,
                    payload,
                } => {
                    let sock = match (&sh.pxe, from_4011) {
                        (Some(p), true) => p,
                        _ => &sh.dhcp,
                    };
                    let _ = sock.send_to(&payload, SocketAddr::V4(to)).await;
                }
                Transmit::Tftp(o) => {
                    if tftp.as_ref().is_none_or(|(g, _)| *g != o.socket) {
                        // A new transfer: a new local port, as firmware uses.
                        let s = udp_socket("TFTP", SocketAddrV4::new(src, 0), false, None)
                            .and_then(|s| to_tokio(s, "TFTP"));
                        match s {
                            Ok(s) => tftp = Some((o.socket, s)),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot open a TFTP socket");
                                continue;
                            }
                        }
                    }
                    if let Some((_, s)) = &tftp {
                        let _ = s.send_to(&o.payload, SocketAddr::V4(o.to)).await;
                    }
                }
            }
        }
        while let Some(g) = c.poll_http() {
            let client = sh
                .http
                .get(&src)
                .or_else(|| sh.http.get(&Ipv4Addr::UNSPECIFIED))
                .cloned();
            let tx = http_tx.clone();
            tokio::spawn(async move {
                let r = match client {
                    Some(cl) => http_get(cl, g.url, g.keep).await,
                    None => HttpResult::Failed("no HTTP client".into()),
                };
                let _ = tx.send((g.id, r));
            });
        }
        if c.is_finished() {
            break;
        }
        let deadline = c.poll_timeout().map(tokio::time::Instant::from_std);
        let tftp_recv = async {
            match &tftp {
                Some((g, s)) => (*g, s.recv_from(&mut buf).await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = dhcp_rx.recv() => {
                if let Some((from, p)) = m { c.handle_dhcp(from, &p, Instant::now()) }
            }
            (g, r) = tftp_recv => {
                if let Ok((n, SocketAddr::V4(from))) = r {
                    let data = buf[..n].to_vec();
                    c.handle_tftp(g, from, &data, Instant::now());
                }
            }
            Some((id, r)) = http_rx.recv() => c.handle_http(id, r, Instant::now()),
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                c.handle_timeout(Instant::now())
            }
            _ = sh.stop.cancelled() => c.stop(Instant::now()),
        }
    }
    c.record(Instant::now())
}

/// Runs the storm; writes one JSON line per client to `records` as each ends, and
/// returns the summary.
pub async fn run(
    plan: StormPlan,
    mut records: Box<dyn Write + Send>,
) -> Result<Summary, StormError> {
    let iface_ip = match &plan.interface {
        Some(i) => {
            let idx =
                crate::net::iface::index_of(i).ok_or_else(|| StormError::NoInterface(i.clone()))?;
            crate::net::iface::ipv4_of(idx)
        }
        None => None,
    };
    // Without an interface: the address the kernel would use towards the DHCP target.
    let default_ip = iface_ip.or_else(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_broadcast(true).ok()?;
        s.connect(plan.params.dhcp_to).ok()?;
        match s.local_addr().ok()? {
            SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
            _ => None,
        }
    });
    let dhcp = udp_socket(
        &format!("DHCP client (udp/{})", plan.client_port),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, plan.client_port),
        true,
        plan.interface.as_deref(),
    )
    .and_then(|s| to_tokio(s, "DHCP client"))?;
    let needs_4011 = plan
        .clients
        .iter()
        .any(|c| c.profile.firmware().habits(1.0).dhcp.from_4011);
    let pxe = if needs_4011 {
        let s = udp_socket(
            &format!("PXE client (udp/{})", plan.params.pxe_port),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, plan.params.pxe_port),
            true,
            plan.interface.as_deref(),
        )
        .and_then(|s| to_tokio(s, "PXE client"))?;
        Some(Arc::new(s))
    } else {
        None
    };
    let mut http = HashMap::new();
    let mut ips: Vec<Option<Ipv4Addr>> = plan.clients.iter().map(|c| c.source_ip).collect();
    ips.sort();
    ips.dedup();
    // Any profile may be handed an http:// boot file: every source address gets a client.
    {
        for ip in ips {
            let mut b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .no_proxy();
            if let Some(ip) = ip {
                b = b.local_address(std::net::IpAddr::V4(ip));
            }
            if let Ok(c) = b.build() {
                http.insert(ip.unwrap_or(Ipv4Addr::UNSPECIFIED), c);
            }
        }
    }
    let stop = CancellationToken::new();
    let sh = Arc::new(Shared {
        params: Arc::new(plan.params.clone()),
        dhcp: Arc::new(dhcp),
        pxe,
        http,
        stop: stop.clone(),
    });
    let mut routes = HashMap::new();
    let mut receivers = Vec::new();
    for c in &plan.clients {
        let (tx, rx) = mpsc::unbounded_channel();
        routes.insert(c.mac, tx);
        receivers.push(rx);
    }
    let routes: Routes = Arc::new(routes);
    let mut demuxers = vec![tokio::spawn(demux(
        sh.dhcp.clone(),
        routes.clone(),
        stop.clone(),
    ))];
    if let Some(p) = &sh.pxe {
        demuxers.push(tokio::spawn(demux(p.clone(), routes.clone(), stop.clone())));
    }
    let n = plan.clients.len();
    let t0 = tokio::time::Instant::now();
    let wall0 = Instant::now();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut missing_ip = false;
    for (i, (cp, rx)) in plan.clients.into_iter().zip(receivers).enumerate() {
        let Some(src) = cp.source_ip.or(default_ip) else {
            missing_ip = true;
            break;
        };
        let spec = ClientSpec {
            index: i,
            mac: cp.mac,
            profile: cp.profile,
            source_ip: src,
            node: cp.node,
            reference: cp.reference,
            xid_seed: plan.seed,
        };
        let offset = if n > 1 {
            plan.ramp.mul_f64(i as f64 / n as f64)
        } else {
            Duration::ZERO
        };
        let sh = sh.clone();
        let tx = done_tx.clone();
        tokio::spawn(async move {
            let r = run_client(spec, t0 + offset, rx, sh).await;
            let _ = tx.send(r);
        });
    }
    drop(done_tx);
    if missing_ip {
        stop.cancel();
        return Err(StormError::NoAddress);
    }
    let bar = if plan.progress {
        let b = indicatif::ProgressBar::new(n as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} clients ended  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let limit = tokio::time::sleep_until(t0 + plan.limit);
    tokio::pin!(limit);
    let mut all = Vec::with_capacity(n);
    let (mut ok, mut failed, mut unfinished) = (0usize, 0usize, 0usize);
    loop {
        tokio::select! {
            r = done_rx.recv() => {
                let Some(rec) = r else { break };
                if rec.completed { ok += 1 } else if rec.cut { unfinished += 1 } else { failed += 1 }
                if let Ok(line) = serde_json::to_string(&rec) {
                    // Flushed per client: `tail -f` (and a watching test) sees each end.
                    let _ = writeln!(records, "{line}");
                    let _ = records.flush();
                }
                bar.inc(1);
                bar.set_message(format!("completed {ok}  failed {failed}  cut {unfinished}"));
                all.push(rec);
            }
            _ = &mut limit, if !stop.is_cancelled() => {
                bar.println(format!("wall-clock limit of {:?} reached: stopping the remaining clients", plan.limit));
                stop.cancel();
            }
        }
    }
    let _ = records.flush();
    stop.cancel();
    for d in demuxers {
        let _ = d.await;
    }
    bar.finish_and_clear();
    all.sort_by_key(|r| r.client);
    Ok(Summary::of(&all, wall0.elapsed().as_secs_f64()))
}
