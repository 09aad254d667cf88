//! The sans-IO state machine of one simulated machine booting: power-on, the
//! firmware's DHCP (offers from the address server and the proxy, REQUEST, the
//! udp/4011 request where the firmware makes one), the loader, the loader's own DHCP
//! (iPXE), the node's configuration, the kernel and the ramdisk; firmware timers, giving
//! up, and rebooting for another attempt.
//!
//! Like [`crate::tftp::transfer`], it is fed datagrams (and HTTP results) with instants
//! and polled for datagrams to send, HTTP fetches to make and its next deadline. It
//! never touches a socket or a clock, so every loss and retry is a unit test.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::MessageType;

use super::bootcfg::{
    grub_candidates, mac_colons, parse_grub, parse_ipxe, parse_pxelinux, pxelinux_candidates,
    BootEntry, IpxeVars, LoaderKind, Location,
};
use super::profile::{loader_tftp, Ask4011, Firmware, Habits, Profile, TftpHabits, IPXE_175};
use super::report::{ClientRecord, Failure, FileRecord, RoundRecord, Stage};
use super::tftp::{ReadResult, TftpOut, TftpRead};
use crate::wire::dhcp::{emit_client, parse_reply, ClientMessage, ServerReply};

/// Settings shared by every client of a storm.
#[derive(Debug, Clone)]
pub struct StormParams {
    /// DHCP timers are multiplied by this (0.1: retries at 0.4/0.8/1.6/3.2 s), and so
    /// is the pause before a reboot.
    pub time_scale: f64,
    /// TFTP retransmission timers are multiplied by this.
    pub tftp_time_scale: f64,
    /// Where DISCOVERs and REQUESTs go (255.255.255.255:67).
    pub dhcp_to: SocketAddrV4,
    /// Port of the PXE boot server (4011).
    pub pxe_port: u16,
    /// Port TFTP reads go to (69).
    pub tftp_port: u16,
    /// HTTP port for `ipxe-http`'s `chain http://${next-server}:PORT/${filename}`.
    pub http_port: u16,
    /// What the first boot file is, when its name does not tell.
    pub loader: Option<LoaderKind>,
    /// Boot attempts before a client counts as failed (a machine that fails to boot
    /// is reset and tries again).
    pub attempts: u32,
    /// Pause between a failed attempt and the next power-on (scaled).
    pub reboot_delay: Duration,
    /// The clients already have addresses (their source IPs): no address server is
    /// needed, proxy answers alone are enough and no REQUEST is sent.
    pub static_address: bool,
}

/// One client's identity.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Number in the storm.
    pub index: usize,
    /// MAC.
    pub mac: [u8; 6],
    /// Firmware profile.
    pub profile: Profile,
    /// Address the client uses for TFTP, HTTP and as ciaddr.
    pub source_ip: Ipv4Addr,
    /// Node id, if known.
    pub node: Option<String>,
    /// Served path -> sha256 to verify against, if known.
    pub reference: Option<Arc<BTreeMap<String, String>>>,
    /// Seed of the transaction ids.
    pub xid_seed: u32,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A DHCP message, from the shared port-68 socket or (EDK2) the port-4011 one.
    Dhcp {
        /// Send from port 4011 instead of 68.
        from_4011: bool,
        /// Destination.
        to: SocketAddrV4,
        /// Payload.
        payload: Vec<u8>,
    },
    /// A TFTP datagram from this client's transfer socket.
    Tftp(TftpOut),
}

/// An HTTP GET for the driver to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// Id to hand back with the result.
    pub id: u32,
    /// URL.
    pub url: String,
    /// Keep the body (configurations).
    pub keep: bool,
}

/// How an HTTP GET ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpResult {
    /// 200 and the whole body.
    Done {
        /// Size.
        bytes: u64,
        /// sha256, hex.
        sha256: String,
        /// Body, when kept.
        data: Option<Vec<u8>>,
    },
    /// 404.
    NotFound(String),
    /// Anything else.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Discover,
    Request,
    BootServer,
}

#[derive(Debug)]
struct DhcpRun {
    stage: Stage,
    fw: Firmware,
    habits: Habits,
    xid: u32,
    bs_xid: u32,
    step: Step,
    tries: usize,
    round: RoundRecord,
    address: Option<(ServerReply, Ipv4Addr)>,
    proxy: Option<(ServerReply, Ipv4Addr)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CfgKind {
    Pxelinux,
    Grub,
}

#[derive(Debug)]
enum Next {
    Loader {
        kind: LoaderKind,
        efi: bool,
    },
    Ldlinux {
        loader: Location,
    },
    ShimGrub {
        loader: Location,
    },
    Search {
        kind: CfgKind,
        base: Location,
        cands: Vec<Location>,
        i: usize,
    },
    Script {
        depth: u8,
    },
    Kernel {
        initrds: Vec<Location>,
    },
    Initrd {
        rest: Vec<Location>,
    },
}

#[derive(Debug)]
enum Io {
    Tftp(Box<TftpRead>),
    Http(u32),
}

#[derive(Debug)]
struct Fetch {
    stage: Stage,
    loc: Location,
    started: Instant,
    io: Io,
    keep: bool,
    next: Next,
}

#[derive(Debug)]
enum Phase {
    Rebooting,
    Dhcp(Box<DhcpRun>),
    Fetch(Box<Fetch>),
    Finished,
}

/// Deepest chain of iPXE scripts followed.
const MAX_CHAIN: u8 = 4;

/// One simulated machine.
#[derive(Debug)]
pub struct Client {
    spec: ClientSpec,
    p: Arc<StormParams>,
    powered_on: Instant,
    phase: Phase,
    deadline: Option<Instant>,
    out: VecDeque<Transmit>,
    http_out: VecDeque<HttpGet>,
    xid_seq: u32,
    next_socket: u32,
    http_seq: u32,
    tftp: TftpHabits,
    efi: bool,
    lease: Option<Ipv4Addr>,
    attempt: u32,
    stage_start: BTreeMap<Stage, Instant>,
    stage_end: BTreeMap<Stage, Instant>,
    rounds: Vec<RoundRecord>,
    files: Vec<FileRecord>,
    failures: Vec<Failure>,
    completed: bool,
    local_boot: bool,
    ended_at: Option<Instant>,
    stopped: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Client {
    /// Powers the machine on at `now`.
    pub fn new(spec: ClientSpec, p: Arc<StormParams>, now: Instant) -> Client {
        let fw = spec.profile.firmware();
        let mut c = Client {
            tftp: fw.habits(p.tftp_time_scale).tftp,
            efi: matches!(fw, Firmware::Edk2 | Firmware::Ipxe { efi: true }),
            spec,
            p,
            powered_on: now,
            phase: Phase::Rebooting,
            deadline: None,
            out: VecDeque::new(),
            http_out: VecDeque::new(),
            xid_seq: 0,
            next_socket: 1,
            http_seq: 0,
            lease: None,
            attempt: 0,
            stage_start: BTreeMap::new(),
            stage_end: BTreeMap::new(),
            rounds: Vec::new(),
            files: Vec::new(),
            failures: Vec::new(),
            completed: false,
            local_boot: false,
            ended_at: None,
            stopped: false,
        };
        c.power_on(now);
        c
    }

    /// The client's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.spec.mac
    }

    /// Its number.
    pub fn index(&self) -> usize {
        self.spec.index
    }

    /// Address used for TFTP and HTTP.
    pub fn source_ip(&self) -> Ipv4Addr {
        self.spec.source_ip
    }

    /// Booted or given up.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Booted.
    pub fn is_completed(&self) -> bool {
        self.completed
    }

    /// The stage it is in now (for progress displays).
    pub fn stage(&self) -> Option<Stage> {
        match &self.phase {
            Phase::Dhcp(r) => Some(r.stage),
            Phase::Fetch(f) => Some(f.stage),
            _ => None,
        }
    }

    fn power_on(&mut self, now: Instant) {
        self.attempt += 1;
        self.stage_start.clear();
        self.stage_end.clear();
        self.lease = None;
        let fw = self.spec.profile.firmware();
        self.tftp = fw.habits(self.p.tftp_time_scale).tftp;
        self.efi = matches!(fw, Firmware::Edk2 | Firmware::Ipxe { efi: true });
        self.start_dhcp(Stage::Dhcp, fw, now);
    }

    fn next_xid(&mut self) -> u32 {
        self.xid_seq += 1;
        let x = (self.spec.index as u32)
            .wrapping_mul(0x9E37_79B1)
            .wrapping_add(self.xid_seq.wrapping_mul(0x85EB_CA6B))
            ^ self.spec.xid_seed;
        x.max(1)
    }

    fn uuid(&self) -> [u8; 17] {
        let m = self.spec.mac;
        [
            0, 0x5e, 0x70, 0x57, 0x0a, 0x00, 0x00, 0x40, 0x00, 0x80, 0x00, m[0], m[1], m[2], m[3],
            m[4], m[5],
        ]
    }

    fn mark_start(&mut self, s: Stage, now: Instant) {
        self.stage_start.entry(s).or_insert(now);
    }

    fn mark_end(&mut self, s: Stage, now: Instant) {
        self.stage_end.insert(s, now);
    }

    fn message(&self, run: &DhcpRun, msg_type: MessageType, now: Instant) -> ClientMessage {
        let h = &run.habits.dhcp;
        ClientMessage {
            msg_type,
            xid: run.xid,
            secs: now
                .saturating_duration_since(self.powered_on)
                .as_secs()
                .min(u64::from(u16::MAX)) as u16,
            // The simulated MACs are not the interface's: only broadcasts reach us.
            broadcast: true,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            mac: self.spec.mac,
            arch: h.arch,
            nii: h.nii,
            vendor_class: h.vendor_class.to_string(),
            user_class: h.ipxe.then(|| b"iPXE".to_vec()),
            ipxe_options: h.ipxe.then(|| IPXE_175.to_vec()),
            uuid: self.uuid(),
            max_size: 1472,
            requested_ip: None,
            server_id: None,
            boot_item: None,
        }
    }

    fn start_dhcp(&mut self, stage: Stage, fw: Firmware, now: Instant) {
        self.mark_start(stage, now);
        let xid = self.next_xid();
        let run = DhcpRun {
            stage,
            fw,
            habits: Habits {
                tftp: fw.habits(self.p.tftp_time_scale).tftp,
                ..fw.habits(self.p.time_scale)
            },
            xid,
            bs_xid: xid,
            step: Step::Discover,
            tries: 0,
            round: new_round(stage, "discover", 1),
            address: None,
            proxy: None,
        };
        self.phase = Phase::Dhcp(Box::new(run));
        self.send_dhcp(now);
    }

    /// Sends the message of the current DHCP step and arms its timer.
    fn send_dhcp(&mut self, now: Instant) {
        let Phase::Dhcp(run) = &self.phase else {
            return;
        };
        let (to, from_4011, msg, timeout, kind) = match run.step {
            Step::Discover => (
                self.p.dhcp_to,
                false,
                self.message(run, MessageType::Discover, now),
                run.habits.dhcp.discover.get(run.tries),
                "discover",
            ),
            Step::Request => {
                let mut m = self.message(run, MessageType::Request, now);
                if let Some((a, src)) = &run.address {
                    m.server_id = Some(a.server_id.unwrap_or(*src));
                    m.requested_ip = Some(a.yiaddr);
                }
                (
                    self.p.dhcp_to,
                    false,
                    m,
                    run.habits.dhcp.request.get(run.tries),
                    "request",
                )
            }
            Step::BootServer => {
                let Some((proxy, src)) = &run.proxy else {
                    return;
                };
                let server = proxy.server_id.unwrap_or(*src);
                let mut m = self.message(run, MessageType::Request, now);
                m.xid = run.bs_xid;
                m.ciaddr = self.spec.source_ip;
                m.broadcast = false;
                m.server_id = Some(server);
                m.boot_item = proxy.menu_item.map(|t| (t, 0));
                (
                    SocketAddrV4::new(server, self.p.pxe_port),
                    run.habits.dhcp.from_4011,
                    m,
                    run.habits.dhcp.boot_server.get(run.tries),
                    "boot_server",
                )
            }
        };
        let n = run.tries as u32 + 1;
        let stage = run.stage;
        self.out.push_back(Transmit::Dhcp {
            from_4011,
            to,
            payload: emit_client(&msg),
        });
        self.deadline = timeout.map(|t| now + t);
        if let Phase::Dhcp(run) = &mut self.phase {
            run.round = new_round(stage, kind, n);
        }
    }

    /// Closes the current DHCP transmission window into the record.
    fn close_round(&mut self) {
        if let Phase::Dhcp(run) = &mut self.phase {
            let stage = run.stage;
            let r = std::mem::replace(&mut run.round, new_round(stage, "", 0));
            if r.n > 0 {
                self.rounds.push(r);
            }
        }
    }

    /// Feeds a DHCP datagram that arrived from `from`.
    pub fn handle_dhcp(&mut self, from: SocketAddrV4, buf: &[u8], now: Instant) {
        let Ok(reply) = parse_reply(buf) else { return };
        if reply.mac != self.spec.mac {
            return;
        }
        let Phase::Dhcp(run) = &mut self.phase else {
            return;
        };
        let xid_ok = match run.step {
            Step::BootServer => reply.xid == run.bs_xid || reply.xid == run.xid,
            _ => reply.xid == run.xid,
        };
        if !xid_ok {
            return;
        }
        let src = *from.ip();
        let server = reply.server_id.unwrap_or(src);
        if reply.leases_address() && !run.round.address.contains(&server) {
            run.round.address.push(server);
        }
        if reply.is_pxe() && !run.round.boot.contains(&server) {
            run.round.boot.push(server);
        }
        match (run.step, reply.msg_type) {
            (Step::Discover, MessageType::Offer) => {
                if reply.leases_address() && run.address.is_none() {
                    run.address = Some((reply.clone(), src));
                }
                if reply.is_pxe() && !reply.leases_address() && run.proxy.is_none() {
                    run.proxy = Some((reply, src));
                }
            }
            (Step::Request, MessageType::Ack) => {
                let chosen = run.address.as_ref().map(|(a, s)| a.server_id.unwrap_or(*s));
                if chosen == Some(server) {
                    self.lease = Some(reply.yiaddr);
                    // A server that is both (dnsmasq with PXE) names the file here.
                    if reply.boot_file.is_some() {
                        if let Phase::Dhcp(run) = &mut self.phase {
                            run.address = Some((reply, src));
                        }
                    }
                    self.close_round();
                    self.after_lease(now);
                }
            }
            (Step::Request, MessageType::Nak) => {
                self.close_round();
                if let Phase::Dhcp(run) = &mut self.phase {
                    run.step = Step::Discover;
                    run.tries = 0;
                    run.address = None;
                    run.proxy = None;
                }
                self.send_dhcp(now);
            }
            (Step::BootServer, MessageType::Ack) if reply.boot_file.is_some() => {
                self.close_round();
                self.boot_from(reply, src, now);
            }
            _ => {}
        }
    }

    /// Holds an address: ask the boot server on udp/4011 if this firmware does, else boot.
    fn after_lease(&mut self, now: Instant) {
        let Phase::Dhcp(run) = &mut self.phase else {
            return;
        };
        let ask = match &run.proxy {
            None => false,
            Some((p, _)) => match run.habits.dhcp.ask_4011 {
                Ask4011::Always => true,
                Ask4011::UnlessUseBootfile => {
                    p.boot_file.is_none()
                        || p.has_boot_menu
                        || p.discovery_control.unwrap_or(0)
                            & crate::wire::dhcp::DISCOVERY_USE_BOOTFILE
                            == 0
                }
            },
        };
        if ask {
            run.step = Step::BootServer;
            run.tries = 0;
            if run.habits.dhcp.new_xid_4011 {
                let x = self.next_xid();
                if let Phase::Dhcp(run) = &mut self.phase {
                    run.bs_xid = x;
                }
            }
            self.send_dhcp(now);
            return;
        }
        let answer = run
            .proxy
            .clone()
            .or_else(|| run.address.clone().filter(|(a, _)| a.boot_file.is_some()));
        match answer {
            Some((r, src)) => self.boot_from(r, src, now),
            None => self.fail(Stage::Dhcp, "no boot file offered (PXE-E53)".into(), now),
        }
    }

    fn dhcp_timeout(&mut self, now: Instant) {
        self.close_round();
        let Phase::Dhcp(run) = &mut self.phase else {
            return;
        };
        let stage = run.stage;
        match run.step {
            Step::Discover => {
                let boot = run.proxy.is_some()
                    || run
                        .address
                        .as_ref()
                        .is_some_and(|(a, _)| a.boot_file.is_some());
                let addressed = run.address.is_some() || self.p.static_address;
                if addressed && boot {
                    if self.p.static_address {
                        self.lease = None;
                        self.after_lease(now);
                    } else {
                        run.step = Step::Request;
                        run.tries = 0;
                        self.send_dhcp(now);
                    }
                } else if run.tries + 1 < run.habits.dhcp.discover.tries() {
                    run.tries += 1;
                    self.send_dhcp(now);
                } else {
                    let why = if run.address.is_some() {
                        "an address but no boot file offered (PXE-E53)"
                    } else if run.proxy.is_some() {
                        "a boot file but no address offered"
                    } else {
                        "no DHCP offers received (PXE-E51)"
                    };
                    self.fail(stage, why.into(), now);
                }
            }
            Step::Request => {
                if run.tries + 1 < run.habits.dhcp.request.tries() {
                    run.tries += 1;
                    self.send_dhcp(now);
                } else {
                    self.fail(stage, "no DHCPACK for the address (PXE-E52)".into(), now);
                }
            }
            Step::BootServer => {
                if run.tries + 1 < run.habits.dhcp.boot_server.tries() {
                    run.tries += 1;
                    self.send_dhcp(now);
                } else if matches!(run.fw, Firmware::Ipxe { .. })
                    && run
                        .proxy
                        .as_ref()
                        .is_some_and(|(p, _)| p.boot_file.is_some())
                {
                    // iPXE falls back to what the proxy's offer said.
                    let (r, src) = run.proxy.clone().expect("checked");
                    self.boot_from(r, src, now);
                } else {
                    self.fail(
                        stage,
                        "no answer from the boot server on udp/4011 (PXE-E55)".into(),
                        now,
                    );
                }
            }
        }
    }

    /// DHCP is done: fetch what the answer names.
    fn boot_from(&mut self, r: ServerReply, src: Ipv4Addr, now: Instant) {
        let Phase::Dhcp(run) = &self.phase else {
            return;
        };
        let (stage, fw) = (run.stage, run.fw);
        self.deadline = None;
        self.mark_end(stage, now);
        let Some(file) = r.boot_file.clone() else {
            self.fail(stage, "the answer names no boot file".into(), now);
            return;
        };
        let next_server = if !r.siaddr.is_unspecified() {
            r.siaddr
        } else if let Some(ip) = r.tftp_server_name.as_deref().and_then(|n| n.parse().ok()) {
            ip
        } else {
            r.server_id.unwrap_or(src)
        };
        let loc = if file.contains("://") {
            let base = Location::Tftp {
                server: next_server,
                path: String::new(),
            };
            match base.resolve(&file) {
                Ok(l) => l,
                Err(e) => {
                    self.fail(stage, e, now);
                    return;
                }
            }
        } else if matches!(fw, Firmware::Ipxe { .. }) && self.spec.profile.prefers_http() {
            Location::Http {
                authority: format!("{next_server}:{}", self.p.http_port),
                path: format!("/{}", file.trim_start_matches('/')),
            }
        } else {
            Location::Tftp {
                server: next_server,
                path: file.clone(),
            }
        };
        let ipxe = matches!(fw, Firmware::Ipxe { .. });
        let loader_named = self
            .p
            .loader
            .filter(|_| stage == Stage::Dhcp && !ipxe)
            .or_else(|| LoaderKind::classify(&file));
        if stage == Stage::Dhcp && (!ipxe || loader_named.is_some()) {
            let Some(kind) = loader_named else {
                self.fail(
                    Stage::Loader,
                    format!("cannot tell what boot file {file:?} is; pass --loader"),
                    now,
                );
                return;
            };
            let habits = fw.habits(self.p.tftp_time_scale).tftp;
            self.start_fetch(
                Stage::Loader,
                loc,
                false,
                habits,
                Next::Loader {
                    kind,
                    efi: self.efi,
                },
                now,
            );
        } else {
            self.tftp = Firmware::Ipxe { efi: self.efi }
                .habits(self.p.tftp_time_scale)
                .tftp;
            self.start_fetch(
                Stage::Config,
                loc,
                true,
                self.tftp.clone(),
                Next::Script { depth: 0 },
                now,
            );
        }
    }

    fn start_fetch(
        &mut self,
        stage: Stage,
        loc: Location,
        keep: bool,
        habits: TftpHabits,
        next: Next,
        now: Instant,
    ) {
        self.mark_start(stage, now);
        self.deadline = None;
        let io = match &loc {
            Location::Tftp { server, path } => {
                let r = TftpRead::new(
                    SocketAddrV4::new(*server, self.p.tftp_port),
                    path,
                    &habits,
                    keep,
                    self.next_socket,
                    now,
                );
                Io::Tftp(Box::new(r))
            }
            Location::Http { .. } => {
                self.http_seq += 1;
                self.http_out.push_back(HttpGet {
                    id: self.http_seq,
                    url: loc.to_string(),
                    keep,
                });
                Io::Http(self.http_seq)
            }
        };
        self.phase = Phase::Fetch(Box::new(Fetch {
            stage,
            loc,
            started: now,
            io,
            keep,
            next,
        }));
    }

    /// Moves finished TFTP reads forward (and their last datagrams out).
    fn pump(&mut self, now: Instant) {
        loop {
            let Phase::Fetch(f) = &mut self.phase else {
                return;
            };
            let Io::Tftp(r) = &mut f.io else { return };
            while let Some(o) = r.poll_transmit() {
                self.out.push_back(Transmit::Tftp(o));
            }
            let Some(result) = r.take_result() else {
                return;
            };
            let stats = r.stats();
            self.next_socket = r.socket() + 1;
            let res = match result {
                ReadResult::Done {
                    bytes,
                    sha256,
                    data,
                } => HttpResult::Done {
                    bytes,
                    sha256,
                    data,
                },
                ReadResult::NotFound(m) => HttpResult::NotFound(m),
                ReadResult::Failed(m) => HttpResult::Failed(m),
                ReadResult::TimedOut => HttpResult::Failed("timeout".into()),
            };
            let bytes = r.bytes();
            self.fetched(res, bytes, stats.retransmits, now);
        }
    }

    /// Feeds the result of an HTTP GET.
    pub fn handle_http(&mut self, id: u32, result: HttpResult, now: Instant) {
        let Phase::Fetch(f) = &self.phase else { return };
        if !matches!(f.io, Io::Http(i) if i == id) {
            return;
        }
        let bytes = match &result {
            HttpResult::Done { bytes, .. } => *bytes,
            _ => 0,
        };
        self.fetched(result, bytes, 0, now);
        self.pump(now);
    }

    /// A fetch ended: record it, then go on with what comes next.
    fn fetched(&mut self, result: HttpResult, bytes: u64, retransmits: u32, now: Instant) {
        let Phase::Fetch(f) = std::mem::replace(&mut self.phase, Phase::Rebooting) else {
            return;
        };
        let f = *f;
        let path = f.loc.served_path();
        let mut rec = FileRecord {
            stage: f.stage,
            uri: f.loc.to_string(),
            path: path.clone(),
            bytes,
            sha256: None,
            verified: None,
            ms: ms(now.saturating_duration_since(f.started)),
            retransmits,
            outcome: String::new(),
        };
        let data = match result {
            HttpResult::Done { sha256, data, .. } => {
                rec.verified = self
                    .spec
                    .reference
                    .as_ref()
                    .and_then(|r| r.get(&path))
                    .map(|want| *want == sha256);
                rec.sha256 = Some(sha256);
                rec.outcome = "ok".into();
                data
            }
            HttpResult::NotFound(m) => {
                rec.outcome = "not_found".into();
                self.files.push(rec);
                if let Next::Search {
                    kind,
                    base,
                    cands,
                    i,
                } = f.next
                {
                    if i + 1 < cands.len() {
                        self.search(kind, base, cands, i + 1, now);
                        return;
                    }
                    let tried: Vec<String> = cands.iter().map(|c| c.served_path()).collect();
                    self.fail(
                        Stage::Config,
                        format!("no configuration found (tried {})", tried.join(", ")),
                        now,
                    );
                    return;
                }
                self.fail(f.stage, format!("{}: {m}", f.loc), now);
                return;
            }
            HttpResult::Failed(m) => {
                rec.outcome = if m == "timeout" {
                    "timeout".into()
                } else {
                    format!("error: {m}")
                };
                self.files.push(rec);
                self.fail(f.stage, format!("{}: {m}", f.loc), now);
                return;
            }
        };
        let mismatch = rec.verified == Some(false);
        self.files.push(rec);
        if mismatch {
            self.fail(
                f.stage,
                format!("{}: sha256 differs from the reference", f.loc),
                now,
            );
            return;
        }
        self.mark_end(f.stage, now);
        let text = data
            .as_deref()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_default();
        let _ = f.keep;
        match f.next {
            Next::Loader { kind, efi } => self.loader_runs(kind, efi, f.loc, now),
            Next::Ldlinux { loader } => {
                let ip = self.lease.unwrap_or(self.spec.source_ip);
                let cands = pxelinux_candidates(self.spec.mac, ip)
                    .iter()
                    .filter_map(|c| loader.resolve(c).ok())
                    .collect();
                self.search(CfgKind::Pxelinux, loader, cands, 0, now);
            }
            Next::ShimGrub { loader } => self.loader_runs(LoaderKind::Grub, self.efi, loader, now),
            Next::Search { kind, base, .. } => {
                let e = match kind {
                    CfgKind::Pxelinux => parse_pxelinux(&text),
                    CfgKind::Grub => parse_grub(&text),
                };
                self.boot_entry(e, &base, &f.loc, 0, now);
            }
            Next::Script { depth } => {
                if !text.trim_start().starts_with("#!ipxe") {
                    self.fail(
                        Stage::Config,
                        format!("{} is not an iPXE script", f.loc),
                        now,
                    );
                    return;
                }
                let server = match &f.loc {
                    Location::Tftp { server, .. } => *server,
                    Location::Http { .. } => Ipv4Addr::UNSPECIFIED,
                };
                let vars = IpxeVars {
                    mac: self.spec.mac,
                    next_server: server,
                    ip: self.lease.unwrap_or(self.spec.source_ip),
                };
                let e = parse_ipxe(&text, &vars);
                let base = f.loc.clone();
                self.boot_entry(e, &base, &f.loc, depth, now);
            }
            Next::Kernel { initrds } | Next::Initrd { rest: initrds } => {
                let mut rest = initrds;
                if rest.is_empty() {
                    self.complete(false, now);
                } else {
                    let first = rest.remove(0);
                    let h = self.tftp.clone();
                    self.start_fetch(Stage::Ramdisk, first, false, h, Next::Initrd { rest }, now);
                }
            }
        }
    }

    /// The loader is in memory: do what it does.
    fn loader_runs(&mut self, kind: LoaderKind, efi: bool, loader: Location, now: Instant) {
        self.tftp = loader_tftp(kind, efi, self.p.tftp_time_scale);
        let h = self.tftp.clone();
        match kind {
            LoaderKind::Ipxe => self.start_dhcp(Stage::LoaderDhcp, Firmware::Ipxe { efi }, now),
            LoaderKind::Pxelinux => {
                let name = if efi { "ldlinux.e64" } else { "ldlinux.c32" };
                match loader.resolve(name) {
                    Ok(l) => {
                        self.start_fetch(Stage::Loader, l, false, h, Next::Ldlinux { loader }, now)
                    }
                    Err(e) => self.fail(Stage::Loader, e, now),
                }
            }
            LoaderKind::Shim => match loader.resolve("grubx64.efi") {
                Ok(l) => {
                    self.start_fetch(Stage::Loader, l, false, h, Next::ShimGrub { loader }, now)
                }
                Err(e) => self.fail(Stage::Loader, e, now),
            },
            LoaderKind::Grub => {
                let cands = grub_candidates(self.spec.mac)
                    .iter()
                    .filter_map(|c| loader.resolve(c).ok())
                    .collect();
                self.search(CfgKind::Grub, loader, cands, 0, now);
            }
        }
    }

    fn search(
        &mut self,
        kind: CfgKind,
        base: Location,
        cands: Vec<Location>,
        i: usize,
        now: Instant,
    ) {
        let Some(loc) = cands.get(i).cloned() else {
            self.fail(
                Stage::Config,
                "no configuration file to look for".into(),
                now,
            );
            return;
        };
        let h = self.tftp.clone();
        self.start_fetch(
            Stage::Config,
            loc,
            true,
            h,
            Next::Search {
                kind,
                base,
                cands,
                i,
            },
            now,
        );
    }

    /// A configuration was read: follow a chain, boot locally, or fetch the kernel.
    fn boot_entry(
        &mut self,
        e: BootEntry,
        base: &Location,
        cfg: &Location,
        depth: u8,
        now: Instant,
    ) {
        let h = self.tftp.clone();
        if let Some(c) = e.chain {
            if depth + 1 > MAX_CHAIN {
                self.fail(
                    Stage::Config,
                    format!("more than {MAX_CHAIN} chained scripts"),
                    now,
                );
                return;
            }
            match base.resolve(&c) {
                Ok(l) => self.start_fetch(
                    Stage::Config,
                    l,
                    true,
                    h,
                    Next::Script { depth: depth + 1 },
                    now,
                ),
                Err(err) => self.fail(Stage::Config, err, now),
            }
            return;
        }
        if e.local {
            self.complete(true, now);
            return;
        }
        let Some(k) = e.kernel else {
            self.fail(Stage::Config, format!("{cfg} names no kernel"), now);
            return;
        };
        let resolve = |p: &str| base.resolve(p.trim_start_matches("::"));
        let kernel = match resolve(&k) {
            Ok(l) => l,
            Err(err) => {
                self.fail(Stage::Config, err, now);
                return;
            }
        };
        let mut initrds = Vec::new();
        for i in &e.initrds {
            match resolve(i) {
                Ok(l) => initrds.push(l),
                Err(err) => {
                    self.fail(Stage::Config, err, now);
                    return;
                }
            }
        }
        self.start_fetch(
            Stage::Kernel,
            kernel,
            false,
            h,
            Next::Kernel { initrds },
            now,
        );
    }

    fn complete(&mut self, local: bool, now: Instant) {
        self.completed = true;
        self.local_boot = local;
        self.deadline = None;
        self.ended_at = Some(now);
        self.phase = Phase::Finished;
    }

    fn fail(&mut self, stage: Stage, error: String, now: Instant) {
        self.close_round();
        self.failures.push(Failure {
            stage,
            error,
            at_ms: ms(now.saturating_duration_since(self.powered_on)),
        });
        if self.attempt < self.p.attempts && !self.stopped {
            self.phase = Phase::Rebooting;
            self.deadline = Some(now + self.p.reboot_delay.mul_f64(self.p.time_scale));
        } else {
            self.deadline = None;
            self.ended_at = Some(now);
            self.phase = Phase::Finished;
        }
    }

    /// Ends the client where it is (the storm's wall-clock limit).
    pub fn stop(&mut self, now: Instant) {
        if self.is_finished() {
            return;
        }
        self.stopped = true;
        let stage = self.stage().unwrap_or(Stage::Dhcp);
        self.fail(stage, "stopped by the wall-clock limit".into(), now);
    }

    /// Was cut by [`Client::stop`].
    pub fn was_stopped(&self) -> bool {
        self.stopped
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.out.pop_front() {
            return Some(t);
        }
        if let Phase::Fetch(f) = &mut self.phase {
            if let Io::Tftp(r) = &mut f.io {
                return r.poll_transmit().map(Transmit::Tftp);
            }
        }
        None
    }

    /// Next HTTP GET to make.
    pub fn poll_http(&mut self) -> Option<HttpGet> {
        self.http_out.pop_front()
    }

    /// When [`Client::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Fetch(f) => match &f.io {
                Io::Tftp(r) => r.poll_timeout(),
                Io::Http(_) => None,
            },
            Phase::Finished => None,
            _ => self.deadline,
        }
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Fetch(f) => {
                if let Io::Tftp(r) = &mut f.io {
                    r.handle_timeout(now);
                }
                self.pump(now);
            }
            Phase::Dhcp(_) if self.deadline.is_some_and(|d| now >= d) => self.dhcp_timeout(now),
            Phase::Rebooting if self.deadline.is_some_and(|d| now >= d) => self.power_on(now),
            _ => {}
        }
    }

    /// Feeds a datagram that arrived on TFTP socket generation `socket`.
    pub fn handle_tftp(&mut self, socket: u32, from: SocketAddrV4, buf: &[u8], now: Instant) {
        if let Phase::Fetch(f) = &mut self.phase {
            if let Io::Tftp(r) = &mut f.io {
                r.handle(socket, from, buf, now);
            }
        }
        self.pump(now);
    }

    /// The record of this client (final once finished).
    pub fn record(&self, now: Instant) -> ClientRecord {
        let end = self.ended_at.unwrap_or(now);
        let last = self.failures.last();
        let stages = self
            .stage_start
            .iter()
            .filter_map(|(s, start)| {
                let e = self.stage_end.get(s)?;
                Some((*s, ms(e.saturating_duration_since(*start))))
            })
            .collect();
        ClientRecord {
            client: self.spec.index,
            mac: mac_colons(self.spec.mac),
            node: self.spec.node.clone(),
            profile: self.spec.profile.as_str().into(),
            source_ip: self.spec.source_ip,
            lease: self.lease,
            completed: self.completed,
            local_boot: self.local_boot,
            cut: self.stopped,
            failed_stage: if self.completed {
                None
            } else {
                last.map(|f| f.stage)
            },
            error: if self.completed {
                None
            } else {
                last.map(|f| f.error.clone())
            },
            attempts: self.attempt,
            failures: self.failures.clone(),
            total_ms: ms(end.saturating_duration_since(self.powered_on)),
            stages,
            double_answers: self.rounds.iter().filter(|r| r.is_double()).count() as u32,
            rounds: self.rounds.clone(),
            files: self.files.clone(),
        }
    }
}

fn new_round(stage: Stage, kind: &str, n: u32) -> RoundRecord {
    RoundRecord {
        stage,
        kind: kind.into(),
        n,
        address: Vec::new(),
        boot: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::transfer::{Params, Rollover, Transfer, Transmit as STx};
    use crate::wire::dhcp::{build_reply, parse, PxeReply};
    use crate::wire::tftp::{AcceptedOptions, Packet};
    use bytes::Bytes;
    use dhcproto::v4::{DhcpOption, Flags, HType, Message, Opcode};
    use dhcproto::{Encodable, Encoder};
    use sha2::{Digest as _, Sha256};
    use std::collections::HashMap;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0xb7, 0, 1];
    const PROXY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const PROXY2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
    const DHCPD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);

    fn params(scale: f64, attempts: u32) -> Arc<StormParams> {
        Arc::new(StormParams {
            time_scale: scale,
            tftp_time_scale: scale,
            dhcp_to: SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
            pxe_port: 4011,
            tftp_port: 69,
            http_port: 8069,
            loader: None,
            attempts,
            reboot_delay: Duration::from_secs(2),
            static_address: false,
        })
    }

    fn files() -> HashMap<String, Vec<u8>> {
        let mut f = HashMap::new();
        f.insert("undionly.kpxe".into(), vec![1u8; 70_000]);
        f.insert("ipxe.efi".into(), vec![2u8; 100_000]);
        f.insert(
            "ipxe/52-54-00-b7-00-01.ipxe".into(),
            b"#!ipxe\nkernel /nodes/n1/kernel initrd=ramdisk console=ttyS0\ninitrd --name ramdisk /nodes/n1/ramdisk\nboot\n".to_vec(),
        );
        f.insert(
            "nodes/n1/kernel".into(),
            (0..300_000u32).map(|i| (i % 251) as u8).collect(),
        );
        f.insert(
            "nodes/n1/ramdisk".into(),
            (0..123_457u32).map(|i| (i % 13) as u8).collect(),
        );
        f
    }

    fn reference(f: &HashMap<String, Vec<u8>>) -> Arc<BTreeMap<String, String>> {
        Arc::new(
            f.iter()
                .map(|(k, v)| (k.clone(), hex::encode(Sha256::digest(v))))
                .collect(),
        )
    }

    fn spec(profile: Profile, reference: Option<Arc<BTreeMap<String, String>>>) -> ClientSpec {
        ClientSpec {
            index: 0,
            mac: MAC,
            profile,
            source_ip: ME,
            node: Some("n1".into()),
            reference,
            xid_seed: 77,
        }
    }

    fn address_reply(req: &[u8], mt: MessageType) -> Vec<u8> {
        let r = parse(req).unwrap();
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_xid(r.xid)
            .set_flags(Flags::default().set_broadcast())
            .set_chaddr(&r.mac)
            .set_yiaddr(Ipv4Addr::new(10, 0, 0, 100));
        m.opts_mut().insert(DhcpOption::MessageType(mt));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(DHCPD));
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out)).unwrap();
        out
    }

    fn proxy_reply(req: &[u8], server: Ipv4Addr, mt: MessageType) -> Vec<u8> {
        let r = parse(req).unwrap();
        let file = if r.is_ipxe() {
            format!("ipxe/{}.ipxe", super::super::bootcfg::mac_dashes(r.mac))
        } else if r.arch == Some(7) {
            "ipxe.efi".into()
        } else {
            "undionly.kpxe".into()
        };
        build_reply(
            &r,
            &PxeReply {
                msg_type: mt,
                server_ip: server,
                tftp_server: server,
                boot_file: file,
                vendor_class: "PXEClient",
            },
        )
    }

    /// A small PXE world: an address server, one or two proxies, a TFTP server built on
    /// the project's own sans-IO transfer engine. Each may be told to drop things.
    struct World {
        files: HashMap<String, Vec<u8>>,
        proxies: Vec<Ipv4Addr>,
        drop_discovers: usize,
        answer_4011: bool,
        transfers: HashMap<u16, Transfer>,
        next_port: u16,
        log: Vec<String>,
        dhcp_sent_at: Vec<(Instant, String)>,
    }

    type Delivery = (Option<u32>, SocketAddrV4, Vec<u8>);

    impl World {
        fn new() -> World {
            World {
                files: files(),
                proxies: vec![PROXY],
                drop_discovers: 0,
                answer_4011: true,
                transfers: HashMap::new(),
                next_port: 40000,
                log: vec![],
                dhcp_sent_at: vec![],
            }
        }

        fn serve(&mut self, t: Transmit, now: Instant, sock: &mut u32) -> Vec<Delivery> {
            let mut out = vec![];
            match t {
                Transmit::Dhcp {
                    from_4011,
                    to,
                    payload,
                } => {
                    let r = parse(&payload).unwrap();
                    self.dhcp_sent_at
                        .push((now, format!("{:?}:{}:{}", r.msg_type, to.port(), from_4011)));
                    if to.port() == 67 && r.msg_type == MessageType::Discover {
                        if self.drop_discovers > 0 {
                            self.drop_discovers -= 1;
                            return out;
                        }
                        out.push((
                            None,
                            SocketAddrV4::new(DHCPD, 67),
                            address_reply(&payload, MessageType::Offer),
                        ));
                        for p in self.proxies.clone() {
                            out.push((
                                None,
                                SocketAddrV4::new(p, 67),
                                proxy_reply(&payload, p, MessageType::Offer),
                            ));
                        }
                    } else if to.port() == 67 && r.msg_type == MessageType::Request {
                        if r.server_id == Some(DHCPD) {
                            out.push((
                                None,
                                SocketAddrV4::new(DHCPD, 67),
                                address_reply(&payload, MessageType::Ack),
                            ));
                        }
                    } else if to.port() == 4011 && self.answer_4011 {
                        assert_eq!(r.ciaddr, ME);
                        out.push((
                            None,
                            SocketAddrV4::new(*to.ip(), 4011),
                            proxy_reply(&payload, *to.ip(), MessageType::Ack),
                        ));
                    }
                }
                Transmit::Tftp(o) => {
                    *sock = o.socket;
                    let pkt = Packet::parse(&o.payload).unwrap();
                    let now_sock = Some(o.socket);
                    match pkt {
                        Packet::Rrq(req) => {
                            self.log
                                .push(format!("RRQ {} {:?}", req.filename, req.options));
                            let Some(data) = self.files.get(req.filename) else {
                                let mut e = vec![];
                                crate::wire::tftp::emit_error(
                                    &mut e,
                                    crate::wire::tftp::ErrorCode::FileNotFound,
                                    "nope",
                                );
                                out.push((now_sock, SocketAddrV4::new(*o.to.ip(), 41999), e));
                                return out;
                            };
                            let ro = &req.options;
                            let acc = AcceptedOptions {
                                blksize: ro.blksize.map(|b| b.min(1468)),
                                tsize: ro.tsize.map(|_| data.len() as u64),
                                windowsize: ro.windowsize,
                                ..Default::default()
                            };
                            let p = Params {
                                blksize: acc.blksize.unwrap_or(512),
                                windowsize: acc.windowsize.unwrap_or(1),
                                timeout: Duration::from_secs(1),
                                max_retries: 5,
                                rollover: Rollover::Zero,
                                oack: (!acc.is_empty()).then_some(acc),
                            };
                            self.next_port += 1;
                            let mut t = Transfer::new(Bytes::from(data.clone()), p, now);
                            out.extend(drive(&mut t, now, self.next_port, now_sock, *o.to.ip()));
                            self.transfers.insert(self.next_port, t);
                        }
                        other => {
                            if let Some(t) = self.transfers.get_mut(&o.to.port()) {
                                t.handle(&other, now);
                                out.extend(drive(t, now, o.to.port(), now_sock, *o.to.ip()));
                            }
                        }
                    }
                }
            }
            out
        }
    }

    fn drive(
        t: &mut Transfer,
        now: Instant,
        port: u16,
        sock: Option<u32>,
        ip: Ipv4Addr,
    ) -> Vec<Delivery> {
        let from = SocketAddrV4::new(ip, port);
        let mut v = vec![];
        while let Some(tx) = t.poll_transmit(now) {
            match tx {
                STx::Control(b) => v.push((sock, from, b)),
                STx::Data(b) => {
                    for k in b.first..=b.last {
                        let mut p = t.header(k).to_vec();
                        p.extend_from_slice(t.payload(k));
                        v.push((sock, from, p));
                    }
                }
            }
        }
        v
    }

    /// Runs a client against the world until it finishes (bounded).
    fn run(c: &mut Client, w: &mut World, mut now: Instant) -> Instant {
        let mut sock = 0;
        for _ in 0..200_000 {
            if c.is_finished() {
                return now;
            }
            let mut deliveries = vec![];
            while let Some(t) = c.poll_transmit() {
                deliveries.extend(w.serve(t, now, &mut sock));
            }
            if deliveries.is_empty() {
                let Some(d) = c.poll_timeout() else {
                    panic!("stuck: no timer, nothing to send")
                };
                now = now.max(d);
                c.handle_timeout(now);
                continue;
            }
            now += Duration::from_micros(200);
            for (s, from, p) in deliveries {
                match s {
                    None => c.handle_dhcp(from, &p, now),
                    Some(g) => c.handle_tftp(g, from, &p, now),
                }
            }
        }
        panic!("no end");
    }

    #[test]
    fn ipxe_rom_boots_and_verifies() {
        let t0 = Instant::now();
        let f = files();
        let mut c = Client::new(spec(Profile::Ipxe, Some(reference(&f))), params(1.0, 1), t0);
        let mut w = World::new();
        let end = run(&mut c, &mut w, t0);
        let r = c.record(end);
        assert!(r.completed, "{r:#?}");
        assert_eq!(r.double_answers, 0);
        // The REQUEST waits for the end of the first 1 s window (iPXE), then 4011 from 68.
        assert_eq!(w.dhcp_sent_at[1].1, "Request:67:false");
        assert_eq!(w.dhcp_sent_at[1].0 - t0, Duration::from_secs(1));
        assert_eq!(w.dhcp_sent_at[2].1, "Request:4011:false");
        let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "ipxe/52-54-00-b7-00-01.ipxe",
                "nodes/n1/kernel",
                "nodes/n1/ramdisk"
            ]
        );
        assert!(r.files.iter().all(|f| f.verified == Some(true)));
        assert!(w.log[0].contains("blksize: Some(1432)") && w.log[0].contains("tsize: Some(0)"));
        assert!(r.stages.contains_key(&Stage::Dhcp) && r.stages.contains_key(&Stage::Ramdisk));
        assert!(r.stages[&Stage::Dhcp] >= 1000.0);
        assert_eq!(r.rounds[0].boot, vec![PROXY]);
        assert_eq!(r.rounds[0].address, vec![DHCPD]);
        assert_eq!(r.lease, Some(Ipv4Addr::new(10, 0, 0, 100)));
    }

    #[test]
    fn edk2_probes_asks_4011_from_4011_then_chains_ipxe() {
        let t0 = Instant::now();
        let f = files();
        let mut c = Client::new(
            spec(Profile::EfiX64, Some(reference(&f))),
            params(0.1, 1),
            t0,
        );
        let mut w = World::new();
        let end = run(&mut c, &mut w, t0);
        let r = c.record(end);
        assert!(r.completed, "{r:#?}");
        assert!(
            w.dhcp_sent_at.iter().any(|(_, s)| s == "Request:4011:true"),
            "{:?}",
            w.dhcp_sent_at
        );
        assert!(w.log[0].starts_with("RRQ ipxe.efi") && w.log[0].contains("tsize: Some(0)"));
        assert!(
            w.log[1].starts_with("RRQ ipxe.efi")
                && w.log[1].contains("tsize: None")
                && w.log[1].contains("windowsize: Some(4)")
        );
        let stages: Vec<Stage> = r.files.iter().map(|f| f.stage).collect();
        assert_eq!(
            stages,
            [Stage::Loader, Stage::Config, Stage::Kernel, Stage::Ramdisk]
        );
        assert!(r.stages.contains_key(&Stage::LoaderDhcp));
        // The loader's DHCP is iPXE's: user class and option 175.
        assert!(r.rounds.iter().any(|x| x.stage == Stage::LoaderDhcp));
    }

    #[test]
    fn bios_rom_boots_the_proxy_file_directly_when_told_to() {
        let t0 = Instant::now();
        let mut c = Client::new(spec(Profile::Bios, None), params(0.1, 1), t0);
        let mut w = World::new();
        let end = run(&mut c, &mut w, t0);
        let r = c.record(end);
        assert!(r.completed, "{r:#?}");
        // Baton's offer has discovery control bit 3 and a file: no 4011 for the PXE ROM;
        // the iPXE it loads then does its own 4011 request.
        let first_4011 = w
            .dhcp_sent_at
            .iter()
            .position(|(_, s)| s.starts_with("Request:4011"))
            .unwrap();
        assert!(first_4011 > 2, "{:?}", w.dhcp_sent_at);
        assert!(r.files.iter().all(|f| f.verified.is_none()));
    }

    #[test]
    fn lost_offers_retry_on_the_firmware_schedule_then_give_up() {
        let t0 = Instant::now();
        let mut c = Client::new(spec(Profile::Bios, None), params(1.0, 1), t0);
        let mut w = World::new();
        w.drop_discovers = 2;
        let end = run(&mut c, &mut w, t0);
        assert!(c.record(end).completed);
        let at: Vec<u64> = w
            .dhcp_sent_at
            .iter()
            .take(3)
            .map(|(t, _)| (*t - t0).as_secs())
            .collect();
        assert_eq!(at, [0, 4, 12], "DISCOVERs at 0, 4, 4+8 s");

        let mut c = Client::new(spec(Profile::Bios, None), params(1.0, 1), t0);
        let mut w = World::new();
        w.drop_discovers = 100;
        let end = run(&mut c, &mut w, t0);
        let r = c.record(end);
        assert!(!r.completed);
        assert_eq!(r.failed_stage, Some(Stage::Dhcp));
        assert!(r.error.as_deref().unwrap().contains("PXE-E51"));
        assert_eq!(end - t0, Duration::from_secs(60), "4+8+16+32 s");
        assert_eq!(r.rounds.len(), 4);
    }

    #[test]
    fn a_failed_attempt_reboots_and_the_next_one_boots() {
        let t0 = Instant::now();
        let mut c = Client::new(spec(Profile::EfiX64, None), params(0.1, 2), t0);
        let mut w = World::new();
        w.answer_4011 = false;
        // EDK2 needs the 4011 answer: the first attempt fails at dhcp.
        let mut sock = 0;
        let mut now = t0;
        while c.record(now).failures.is_empty() {
            let mut d = vec![];
            while let Some(t) = c.poll_transmit() {
                d.extend(w.serve(t, now, &mut sock));
            }
            for (s, from, p) in d {
                if s.is_none() {
                    c.handle_dhcp(from, &p, now);
                }
            }
            now = c.poll_timeout().unwrap().max(now);
            c.handle_timeout(now);
        }
        assert!(c.record(now).failures[0].error.contains("4011"));
        w.answer_4011 = true;
        let end = run(&mut c, &mut w, now);
        let r = c.record(end);
        assert!(r.completed, "{r:#?}");
        assert_eq!(r.attempts, 2);
        assert_eq!(r.failures.len(), 1);
    }

    #[test]
    fn two_proxies_in_one_round_are_a_double_answer() {
        let t0 = Instant::now();
        let mut c = Client::new(spec(Profile::Ipxe, None), params(0.1, 1), t0);
        let mut w = World::new();
        w.proxies = vec![PROXY, PROXY2];
        let end = run(&mut c, &mut w, t0);
        let r = c.record(end);
        assert!(r.completed);
        assert_eq!(r.double_answers, 1);
        assert_eq!(r.rounds[0].boot, vec![PROXY, PROXY2]);
    }

    #[test]
    fn digest_mismatch_fails_the_stage() {
        let t0 = Instant::now();
        let mut f = files();
        f.insert("nodes/n1/kernel".into(), b"another kernel".to_vec());
        let mut c = Client::new(spec(Profile::Ipxe, Some(reference(&f))), params(0.1, 1), t0);
        let mut w = World::new();
        let end = run(&mut c, &mut w, t0);
        let r = c.record(end);
        assert!(!r.completed);
        assert_eq!(r.failed_stage, Some(Stage::Kernel));
        assert_eq!(r.files[1].verified, Some(false));
    }

    #[test]
    fn tftp_silence_times_out_like_ipxe() {
        let t0 = Instant::now();
        let mut c = Client::new(spec(Profile::Ipxe, None), params(1.0, 1), t0);
        let mut w = World::new();
        let mut sock = 0;
        let mut now = t0;
        // DHCP normally; then the TFTP server is gone.
        while !c.is_finished() {
            let mut d = vec![];
            while let Some(t) = c.poll_transmit() {
                if matches!(t, Transmit::Dhcp { .. }) {
                    d.extend(w.serve(t, now, &mut sock));
                }
            }
            for (_, from, p) in d {
                c.handle_dhcp(from, &p, now);
            }
            now = c.poll_timeout().unwrap().max(now);
            c.handle_timeout(now);
        }
        let r = c.record(now);
        assert_eq!(r.failed_stage, Some(Stage::Config));
        assert_eq!(r.files[0].outcome, "timeout");
        // iPXE's retry timer: 0.25+0.5+1+2+4+8 s after the RRQ.
        assert!((r.files[0].ms - 15_750.0).abs() < 1.0, "{}", r.files[0].ms);
    }

    #[test]
    fn pxelinux_searches_its_configs() {
        let t0 = Instant::now();
        let mut p = (*params(0.1, 1)).clone();
        p.loader = None;
        let mut c2 = Client::new(spec(Profile::Bios, None), Arc::new(p), t0);
        let mut w = World::new();
        w.files.insert("ldlinux.c32".into(), vec![5; 1000]);
        w.files.insert(
            "pxelinux.cfg/default".into(),
            b"DEFAULT a\nLABEL a\n LINUX nodes/n1/kernel\n INITRD nodes/n1/ramdisk\n".to_vec(),
        );
        // The proxy names pxelinux.0 instead.
        w.files.insert("pxelinux.0".into(), vec![9; 40_000]);
        let mut sock = 0;
        let mut now = t0;
        // The proxy names pxelinux.0: answer DISCOVERs here instead of in the world.
        w.proxies = vec![];
        let mut guard = 0;
        while !c2.is_finished() {
            guard += 1;
            assert!(guard < 100_000);
            let mut d = vec![];
            while let Some(t) = c2.poll_transmit() {
                if let Transmit::Dhcp { to, payload, .. } = &t {
                    let r = parse(payload).unwrap();
                    if to.port() == 67 && r.msg_type == MessageType::Discover {
                        let b = build_reply(
                            &r,
                            &PxeReply {
                                msg_type: MessageType::Offer,
                                server_ip: PROXY,
                                tftp_server: PROXY,
                                boot_file: "pxelinux.0".into(),
                                vendor_class: "PXEClient",
                            },
                        );
                        d.push((None, SocketAddrV4::new(PROXY, 67), b));
                    }
                }
                d.extend(w.serve(t, now, &mut sock));
            }
            now += Duration::from_micros(100);
            if d.is_empty() {
                now = c2.poll_timeout().unwrap().max(now);
                c2.handle_timeout(now);
            }
            for (s, from, p) in d {
                match s {
                    None => c2.handle_dhcp(from, &p, now),
                    Some(g) => c2.handle_tftp(g, from, &p, now),
                }
            }
        }
        let r = c2.record(now);
        assert!(r.completed, "{r:#?}");
        let cfgs: Vec<&FileRecord> = r
            .files
            .iter()
            .filter(|f| f.stage == Stage::Config)
            .collect();
        assert_eq!(cfgs.len(), 10, "01-<mac>, 8 hex prefixes, then default");
        assert_eq!(cfgs[9].path, "pxelinux.cfg/default");
        assert!(w
            .log
            .iter()
            .any(|l| l.starts_with("RRQ ldlinux.c32") && l.contains("blksize: Some(1408)")));
    }
}
