//! Configuration: a TOML file (all keys optional) overridden by command-line flags,
//! validated once at start-up with errors that name the key and the fix. Each setting
//! is declared once below (key, type, default, flag, range; see `declare.rs`).

use crate::ownership::state::LeaseTimes;
use crate::ownership::timing::{RaftTiming, TimingError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::wire::remap::MapFile;
use crate::wire::tftp::Rollover;
use crate::wire::tftp::{MAX_BLKSIZE, MIN_BLKSIZE};

mod declare;
use declare::settings;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message (names the key and line).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The key, as in the TOML file.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

pub use crate::api::DEFAULT_DATA_DIR;

settings! {
    /// The whole configuration.
    pub struct Config in "" {
        /// Directory for Baton's state (store, blobs); created if missing.
        data_dir: PathBuf = PathBuf::from(DEFAULT_DATA_DIR),
            flag [value "data-dir" PathBuf, "DIR"];
        /// Log filter in tracing's EnvFilter syntax, e.g. `info`, `debug`,
        /// `baton::tftp=debug` (env RUST_LOG wins).
        log_level: String = "info".into(),
            flag [value "log-level" String, "FILTER"];
        /// This host's name among Baton hosts; default: the system host name.
        host_name: Option<String> = None,
            flag [value "host-name" String, "NAME"];
        /// This host's group: the L2 segment whose nodes it serves.
        group: String = "default".into(),
            flag [value "group" String, "NAME"];
        /// Directory of boot file templates, watched for edits; default: the templates
        /// built into the binary (a copy of `tftp-root-template/`).
        template_dir: Option<PathBuf> = None,
            flag [value "template-dir" PathBuf, "DIR"];
        /// Bearer token of the admin API; default: read from (or created in)
        /// `<data_dir>/api-token`.
        api_token: Option<String> = None,
            flag [value "api-token" String, "TOKEN", env "BATON_API_TOKEN"];
        /// Read the API token from this file (e.g. a systemd credential); default: the
        /// credential `baton-api-token` when systemd passes one.
        api_token_file: Option<PathBuf> = None,
            flag [value "api-token-file" PathBuf, "FILE"];
        /// Write every DHCP and TFTP packet received and sent to this pcap file.
        capture: Option<PathBuf> = None,
            flag [value "capture" PathBuf, "FILE.pcap"];
        /// Who may fetch a node's own files (configs, scripts, kernel, ramdisk): `bound`
        /// (default), only the node's own addresses: those its PXE exchange with this
        /// host showed and those set on the node (`baton node update ID --address IP`);
        /// `open`, anyone (as dnsmasq), for hosts whose nodes get DHCP elsewhere and
        /// have no addresses set; `token`, whoever names the node's current boot token,
        /// which its rendered iPXE script, GRUB and pxelinux configs put in their URLs
        /// (`/_t/<token>/...`; MAC-named configs without it as in `bound`). Shared
        /// loaders are served to anyone either way.
        node_files: crate::ownership::gate::NodeFileAccess =
            crate::ownership::gate::NodeFileAccess::Bound,
            flag [value "node-files" crate::ownership::gate::NodeFileAccess, "MODE"];
        /// Once every listener is bound, write their addresses to this file as JSON
        /// (`{"http", "tftp", "dhcp", "pxe"}`, replaced atomically): with port 0 in a
        /// listen address, how a supervisor or a test learns the port the kernel chose.
        port_file: Option<PathBuf> = None,
            flag [value "port-file" PathBuf, "FILE.json"];
    } sections {
        /// TFTP server.
        tftp: TftpConfig;
        /// HTTP server (API, HTTP boot, metrics).
        http: HttpConfig;
        /// Proxy-DHCP server.
        dhcp: DhcpConfig;
        /// Cluster membership and replication.
        cluster: ClusterConfig;
        /// TLS for the admin API and cluster traffic.
        tls: TlsConfig;
        /// Leases and takeover.
        ownership: OwnershipConfig;
        /// Boot records and stuck boots.
        boots: BootsConfig;
        /// A provisioning tool's TFTP tree taken in.
        ingest: IngestConfig;
    }

    /// TFTP server settings.
    pub struct TftpConfig in "tftp." {
        /// Address and UDP port of the TFTP server.
        listen: SocketAddr = "0.0.0.0:69".parse().expect("valid literal"),
            flag [value "tftp-listen" SocketAddr, "ADDR:PORT"];
        /// Directory served over TFTP; default: `<data_dir>/tftp`.
        root: Option<PathBuf> = None,
            flag [value "tftp-root" PathBuf, "DIR"];
        /// Answer every transfer from the listening port (for NAT, a virtual IP or a
        /// container network, where replies from ephemeral ports are dropped).
        single_port: bool = false,
            flag [switch "tftp-single-port"];
        /// Largest block size granted to clients (RFC 2348).
        max_blksize: u16 = MAX_BLKSIZE,
            flag [value "tftp-max-blksize" u16, "BYTES"],
            range [MIN_BLKSIZE..=MAX_BLKSIZE, " (RFC 2348)"];
        /// MTU that blocks must fit in; default: the MTU of the interface a request came
        /// in on.
        mtu: Option<u32> = None,
            flag [value "tftp-mtu" u32, "BYTES"],
            range [68..=65536];
        /// Largest window granted to clients (RFC 7440).
        max_windowsize: u16 = 64,
            flag [value "tftp-max-windowsize" u16, "BLOCKS"],
            range [1..=32768];
        /// File-name remapping rules in tftpd-hpa's `--map-file` format, applied to
        /// every TFTP request name first.
        map_file: Option<PathBuf> = None,
            flag [value "tftp-map-file" PathBuf, "FILE"];
        /// Retransmission timeout when the client asks for none, in milliseconds.
        timeout_ms: u64 = 1000,
            range [10..=255_000, " milliseconds"];
        /// Longest retransmission timeout a client may ask for (its `timeout` option), in
        /// milliseconds; a longer one is not acknowledged and this one is used. An
        /// abandoned transfer frees its slot after at most (max_retries + 1) x this.
        max_timeout_ms: u64 = 10_000,
            range [1000..=255_000, " milliseconds"];
        /// Timeouts in a row before a transfer is dropped.
        max_retries: u32 = 5,
            range [1..=100];
        /// What block 65535 is followed by.
        rollover: Rollover = Rollover::Zero;
        /// Most transfers at once (also at most half the file descriptors above a reserve
        /// of 128, each transfer having its own socket outside single-port mode). When
        /// all are taken, a request from an address below its fair share (this divided
        /// by the addresses holding transfers) replaces the oldest transfer of the most
        /// over-share address whose client has not acknowledged anything yet.
        max_transfers: usize = 4096,
            range [1..];
        /// Most transfers at once from one client address (many nodes behind one NAT
        /// address share it).
        max_transfers_per_client: usize = 1024,
            range [1..];
        /// ERROR replies (refusals, busy) sent to one client address per minute, all of
        /// them at once after a quiet minute; the rest are dropped and counted.
        error_replies_per_minute: u32 = 600,
            range [1..];
        /// Bytes of idle files kept in memory.
        cache_bytes: u64 = 1 << 30;
        /// Use UDP GSO for windows when the kernel offers it.
        gso: bool = true;
    }

    /// HTTP server settings.
    pub struct HttpConfig in "http." {
        /// Address and TCP port of the HTTP server: API, HTTP boot, metrics.
        listen: SocketAddr = "0.0.0.0:8069".parse().expect("valid literal"),
            flag [value "http-listen" SocketAddr, "ADDR:PORT"];
        /// A second, plain-HTTP listener for firmware: HTTP boot (`/boot`, TFTP
        /// namespace files) and `/ui`, never `/v1` or `/cluster`; proxy-DHCP points HTTP
        /// boot clients here. Required with `[tls]`, where `listen` speaks HTTPS only.
        boot_listen: Option<SocketAddr> = None,
            flag [value "http-boot-listen" SocketAddr, "ADDR:PORT"];
        /// Time a client has to send a whole request head (line and headers), from the
        /// connection's start or the first byte of the request, in milliseconds.
        header_timeout_ms: u64 = 10_000,
            range [100.., " milliseconds"];
        /// A connection closes after this long without a byte in either direction: idle
        /// between requests (keep-alive), or stalled in a body or a response.
        idle_timeout_ms: u64 = 60_000,
            range [100.., " milliseconds"];
        /// Most connections open at once (also at most half the file descriptors above a
        /// reserve of 128). When all are taken, a client below its fair share closes the
        /// oldest idle connection (no request in flight) of the client most over its share.
        max_connections: usize = 2048,
            range [1..];
        /// Most connections open at once from one client address.
        max_connections_per_ip: usize = 256,
            range [1..];
        /// Largest artifact upload (`POST /v1/artifacts`), streamed to disk, in bytes.
        /// Other `/v1` bodies are JSON of at most 1 MiB; boot and metrics routes take none.
        max_upload_bytes: u64 = 64 << 30,
            range [1..];
    }

    /// Proxy-DHCP settings.
    pub struct DhcpConfig in "dhcp." {
        /// Answer PXE clients (udp/67 and udp/4011); `--no-dhcp` turns it off.
        enabled: bool = true,
            flag [switch_off "no-dhcp"];
        /// Answer PXE clients only on these interfaces (SO_BINDTODEVICE; the flag is
        /// repeated for several); default: all.
        interfaces: Vec<String> = Vec::new(),
            flag [list "dhcp-interface" String, "IFACE"];
        /// Address the proxy-DHCP sockets bind (0.0.0.0 to receive broadcasts).
        listen: std::net::Ipv4Addr = std::net::Ipv4Addr::UNSPECIFIED,
            flag [value "dhcp-listen" std::net::Ipv4Addr, "IPV4"];
        /// DHCP server port.
        port: u16 = 67,
            flag [value "dhcp-port" u16, "PORT"];
        /// PXE boot-server port.
        pxe_port: u16 = 4011,
            flag [value "dhcp-pxe-port" u16, "PORT"];
        /// Address announced to clients as boot and TFTP server; default: the address of
        /// the interface the request came in on.
        server_ip: Option<std::net::Ipv4Addr> = None,
            flag [value "dhcp-server-ip" std::net::Ipv4Addr, "IPV4"];
        /// First-stage boot loaders per architecture.
        boot_files: crate::dhcp::proxy::BootFiles = Default::default();
        /// How iPXE clients fetch their node's script: "tftp" or "http".
        ipxe_script: crate::dhcp::proxy::ScriptVia = Default::default();
        /// Answer nodes whose profile is `local` (their files boot the local disk); when
        /// false they get no answer and the firmware tries its next boot device.
        answer_local: bool = true;
        /// DHCP relay agents (their `giaddr`) whose relayed requests are answered, to the
        /// relay (RFC 2131 4.1). A request naming any other `giaddr` is not answered:
        /// a client on this segment never sets it, so it is forged or from an unknown relay.
        relays: Vec<std::net::Ipv4Addr> = Vec::new();
        /// Answers sent for one MAC address per minute, all of them at once after a
        /// quiet minute (a PXE boot needs two to four); the rest are dropped and counted.
        answers_per_mac_minute: u32 = 60,
            range [1..];
    }

    /// Cluster settings.
    pub struct ClusterConfig in "cluster." {
        /// Shared secret of the cluster (peers without it are refused); without it this
        /// host stays a cluster of one and refuses every peer request.
        secret: Option<String> = None,
            flag [value "cluster-secret" String, "SECRET", env "BATON_CLUSTER_SECRET"];
        /// Read the cluster secret from this file (e.g. a systemd credential); default:
        /// the credential `baton-cluster-secret` when systemd passes one.
        secret_file: Option<PathBuf> = None,
            flag [value "cluster-secret-file" PathBuf, "FILE"];
        /// Join the cluster of this member on first start (e.g. `http://10.0.0.1:8069`).
        join: Option<String> = None,
            flag [value "join" String, "PEER_URL"];
        /// This host's HTTP URL as peers reach it; default: `http://<http.listen>` (with
        /// 127.0.0.1 for a wildcard address, which only suits a single host).
        advertise_url: Option<String> = None,
            flag [value "advertise-url" String, "URL"];
        /// Leader heartbeat interval (unset: derived from the lease, see
        /// `ownership::timing`).
        heartbeat_ms: Option<u64> = None;
        /// Election timeout: a voter's lease to its leader, and a candidate's shortest
        /// wait (it waits a random time up to twice this). Unset: derived from the lease.
        election_timeout_ms: Option<u64> = None;
        /// Artifact replication bandwidth cap, bytes per second (0: no cap).
        replication_rate: u64 = 100 << 20;
        /// Build a store snapshot after this many log entries (a host too far behind, or
        /// new, receives the snapshot plus the log tail).
        snapshot_every: u64 = 5000;
        /// Log entries kept after a snapshot for followers slightly behind.
        keep_logs: u64 = 1000;
        /// How long an API write waits for a leader to commit it before it is refused
        /// with 503 and `Retry-After` (e.g. while a majority of hosts is down).
        propose_deadline_ms: u64 = 15_000;
    }

    /// TLS for the admin API and cluster RPC on `http.listen` (rustls; PEM files).
    pub struct TlsConfig in "tls." {
        /// This host's certificate chain (PEM); with `key` and `ca`, `http.listen`
        /// serves HTTPS only.
        cert: Option<PathBuf> = None,
            flag [value "tls-cert" PathBuf, "FILE.pem"];
        /// The private key of `cert` (PEM).
        key: Option<PathBuf> = None,
            flag [value "tls-key" PathBuf, "FILE.pem"];
        /// CA bundle (PEM) that peers' certificates must chain to; the only roots
        /// trusted for `https://` peer URLs.
        ca: Option<PathBuf> = None,
            flag [value "tls-ca" PathBuf, "FILE.pem"];
        /// How peers authenticate: `mtls`, a client certificate from `ca` plus the
        /// cluster secret; `secret`, server-authenticated TLS plus the cluster secret.
        peer_auth: crate::tls::PeerAuth = crate::tls::PeerAuth::Mtls,
            flag [value "tls-peer-auth" crate::tls::PeerAuth, "MODE"];
    }

    /// Lease and placement settings (keep them the same on every host).
    pub struct OwnershipConfig in "ownership." {
        /// How often a host renews its lease.
        lease_interval_ms: u64 = 1000;
        /// How long a renewal keeps a host serving.
        lease_ttl_ms: u64 = 3000;
        /// Extra wait after a lease expires before peers take its nodes.
        grace_ms: u64 = 1000,
            range [100.., " ms (it covers clock skew between hosts)"];
        /// Most nodes one host may own after a takeover, drain or rebalance (unset: no
        /// limit).
        max_nodes_per_host: Option<usize> = None;
        /// Most migrations in progress at once that the leader starts for a drain or a
        /// rebalance (operator migrations are not held back).
        max_concurrent_migrations: usize = 64,
            range [1..];
    }

    /// Boot record settings: how long this host keeps its records, and when a boot
    /// counts as stuck.
    pub struct BootsConfig in "boots." {
        /// A boot that has not delivered its kernel and ramdisk is stuck after this
        /// long without any activity (no transfer running), in seconds.
        stall_secs: u64 = 120,
            range [5..=86_400, " seconds"];
        /// A node that asks for DHCP this many times without fetching a file...
        dhcp_loop_requests: u32 = 4,
            range [2..=1000];
        /// ...over at least this many seconds is stuck in a DHCP loop.
        dhcp_loop_secs: u64 = 30,
            range [1..=86_400, " seconds"];
        /// Days this host keeps its boot records.
        retention_days: u64 = 14,
            range [1..=3650, " days"];
        /// Most boot records this host keeps (the oldest go first).
        max_records: u64 = 1_000_000,
            range [1000..];
    }

    /// Ingest of a TFTP tree that a provisioning tool (OpenStack Ironic, …) writes.
    pub struct IngestConfig in "ingest." {
        /// Directory to watch (e.g. `/tftpboot`): the per-node files a provisioning tool
        /// writes there (Ironic's layout) become replicated node files; unset: no ingest.
        dir: Option<PathBuf> = None,
            flag [value "ingest-dir" PathBuf, "DIR"];
        /// How long a file must stay unchanged before it is taken (a file being written
        /// is never served half-written), in milliseconds.
        quiet_ms: u64 = 250,
            range [10..=60_000, " milliseconds"];
    }
}

/// The flags of `baton serve` that override the file: one per setting that has a flag
/// (declared in `config/declare.rs`); only flags actually given (or set by their
/// variable) count.
#[derive(Debug, Clone, Default)]
pub struct Overrides(Option<clap::ArgMatches>);

impl Overrides {
    /// Parses `args` (flags only, no program name), for tests and tools.
    pub fn from_args<I, T>(args: I) -> Result<Overrides, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = clap::Command::new("baton-serve")
            .no_binary_name(true)
            .args(Config::flag_args());
        Ok(Overrides(Some(cmd.try_get_matches_from(args)?)))
    }

    fn apply(&self, c: &mut Config) {
        if let Some(m) = &self.0 {
            c.apply_flags(m);
        }
    }
}

impl clap::FromArgMatches for Overrides {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Overrides(Some(m.clone())))
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0 = Some(m.clone());
        Ok(())
    }
}

impl clap::Args for Overrides {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(Config::flag_args())
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl Config {
    /// Loads `file` (if given), applies the flags given in `o` over it, validates.
    pub fn load(file: Option<&Path>, o: &Overrides) -> Result<Config, ConfigError> {
        let mut c = match file {
            Some(p) => Self::parse_file(p)?,
            None => Config::default(),
        };
        o.apply(&mut c);
        c.read_secret_files(std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))?;
        c.validate()?;
        Ok(c)
    }

    /// Fills the API token and the cluster secret from their files, or from systemd
    /// credentials in `credentials` (`$CREDENTIALS_DIRECTORY`). A value given directly
    /// and a file for the same secret conflict. Secrets are never logged.
    pub fn read_secret_files(&mut self, credentials: Option<PathBuf>) -> Result<(), ConfigError> {
        let cred = |name: &str| {
            credentials
                .as_ref()
                .map(|d| d.join(name))
                .filter(|p| p.is_file())
        };
        let read = |key: &'static str, p: &Path| -> Result<String, ConfigError> {
            let s = std::fs::read_to_string(p).map_err(|e| ConfigError::Invalid {
                key,
                message: format!("cannot read {}: {e}", p.display()),
            })?;
            let s = s.trim().to_string();
            if s.is_empty() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{} is empty", p.display()),
                });
            }
            Ok(s)
        };
        if let Some(p) = &self.api_token_file {
            if self.api_token.is_some() {
                return Err(ConfigError::Invalid {
                    key: "api_token_file",
                    message: "give the API token or a file holding it, not both".into(),
                });
            }
            self.api_token = Some(read("api_token_file", p)?);
        } else if let (None, Some(p)) = (&self.api_token, cred("baton-api-token")) {
            self.api_token = Some(read("api_token_file", &p)?);
        }
        if let Some(p) = &self.cluster.secret_file {
            if self.cluster.secret.is_some() {
                return Err(ConfigError::Invalid {
                    key: "cluster.secret_file",
                    message: "give the cluster secret or a file holding it, not both".into(),
                });
            }
            self.cluster.secret = Some(read("cluster.secret_file", p)?);
        } else if let (None, Some(p)) = (&self.cluster.secret, cred("baton-cluster-secret")) {
            self.cluster.secret = Some(read("cluster.secret_file", &p)?);
        }
        Ok(())
    }

    /// Parses a TOML file without validating.
    pub fn parse_file(p: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: p.to_path_buf(),
            source,
        })?;
        Self::parse_text(&text, p)
    }

    /// Parses TOML `text` (read from `p`, named in errors) without validating.
    pub fn parse_text(text: &str, p: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: p.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Lease timing from `[ownership]`.
    pub fn lease_times(&self) -> LeaseTimes {
        LeaseTimes {
            interval_ms: self.ownership.lease_interval_ms,
            ttl_ms: self.ownership.lease_ttl_ms,
            grace_ms: self.ownership.grace_ms,
        }
    }

    /// The Raft timing in force: `[cluster]` values where set, the rest derived from
    /// the lease (`ownership::timing`).
    pub fn raft_timing(&self) -> Result<RaftTiming, TimingError> {
        crate::ownership::timing::resolve(
            &self.lease_times(),
            self.cluster.heartbeat_ms,
            self.cluster.election_timeout_ms,
        )
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Ranges are declared with their settings; what follows relates settings.
        self.check_ranges()?;
        let bad = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if let Some(h) = &self.host_name {
            crate::store::types::check_name("host name", h).map_err(|m| ConfigError::Invalid {
                key: "host_name",
                message: m,
            })?;
        }
        crate::store::types::check_name("group", &self.group).map_err(|m| {
            ConfigError::Invalid {
                key: "group",
                message: m,
            }
        })?;
        if let Some(t) = &self.api_token {
            if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(
                    "api_token",
                    "must be at least 16 characters, without spaces",
                );
            }
        }
        for i in &self.dhcp.interfaces {
            if i.is_empty() || i.len() >= 16 || i.contains('/') {
                return bad(
                    "dhcp.interfaces",
                    "interface names are 1-15 characters (as in `ip link`)",
                );
            }
        }
        // Port 0 asks the kernel for a free port: two zeros still get two ports.
        if self.dhcp.enabled && self.dhcp.port != 0 && self.dhcp.port == self.dhcp.pxe_port {
            return bad("dhcp.pxe_port", "must differ from dhcp.port (or both be 0)");
        }
        if self.dhcp.boot_files.bios.is_empty() || self.dhcp.boot_files.efi_x64.is_empty() {
            return bad(
                "dhcp.boot_files",
                "bios and efi_x64 must name a boot loader",
            );
        }
        let cl = &self.cluster;
        if let Some(sec) = &cl.secret {
            if sec.len() < 16 || sec.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(
                    "cluster.secret",
                    "must be at least 16 characters, without spaces",
                );
            }
        }
        if cl.join.is_some() && cl.secret.is_none() {
            return bad("cluster.join", "joining a cluster needs the cluster secret (--cluster-secret or BATON_CLUSTER_SECRET)");
        }
        for (key, url) in [
            ("cluster.join", &cl.join),
            ("cluster.advertise_url", &cl.advertise_url),
        ] {
            if let Some(u) = url {
                if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                    return bad(key, "must be a URL like http://10.0.0.1:8069");
                }
            }
        }
        let tls = &self.tls;
        let set = [tls.cert.is_some(), tls.key.is_some(), tls.ca.is_some()];
        if set.contains(&true) && set.contains(&false) {
            return bad("tls", "set tls.cert, tls.key and tls.ca together (or none)");
        }
        let https = |u: &Option<String>| u.as_deref().is_some_and(|u| u.starts_with("https://"));
        if tls.cert.is_none() {
            if https(&cl.advertise_url) {
                return bad(
                    "cluster.advertise_url",
                    "an https:// URL needs [tls] cert, key and ca",
                );
            }
            if https(&cl.join) {
                return bad(
                    "cluster.join",
                    "an https:// URL needs [tls] ca (and cert, key)",
                );
            }
        } else {
            if self.http.boot_listen.is_none() {
                return bad(
                    "http.boot_listen",
                    "with [tls], http.listen speaks HTTPS only and firmware needs plain HTTP: set a plain listener for HTTP boot (e.g. \"0.0.0.0:8070\")",
                );
            }
            if cl.join.is_some() && !https(&cl.join) {
                return bad(
                    "cluster.join",
                    "with [tls], peers speak HTTPS: use an https:// URL",
                );
            }
            if cl.advertise_url.is_some() && !https(&cl.advertise_url) {
                return bad(
                    "cluster.advertise_url",
                    "with [tls], peers speak HTTPS: use an https:// URL",
                );
            }
        }
        if self.http.boot_listen == Some(self.http.listen) && self.http.listen.port() != 0 {
            return bad("http.boot_listen", "must differ from http.listen");
        }
        let worst = self
            .raft_timing()
            .map(|t| t.worst_election_ms())
            .unwrap_or(0);
        if cl.propose_deadline_ms < worst.saturating_mul(2) {
            return bad(
                "cluster.propose_deadline_ms",
                "must be at least twice the worst election (2 x (2 x election_timeout_ms + 2 x heartbeat_ms)): a write must outlast an election",
            );
        }
        // A write is retried under one request id until this deadline; the store keeps
        // the id's outcome twice as long, so a late retry is still recognised.
        let max_deadline = crate::store::apply::REQUEST_RETENTION_MS / 2;
        if cl.propose_deadline_ms > max_deadline {
            return bad(
                "cluster.propose_deadline_ms",
                &format!("must be at most {max_deadline} (half the time the store remembers a write's request id)"),
            );
        }
        let ow = &self.ownership;
        if ow.lease_interval_ms < 50 || ow.lease_ttl_ms < ow.lease_interval_ms.saturating_mul(2) {
            return bad(
                "ownership.lease_ttl_ms",
                "must be at least 2 x ownership.lease_interval_ms (and the interval >= 50 ms)",
            );
        }
        if let Err(e) = self.raft_timing() {
            let key = match e {
                TimingError::LeaseTooShort { .. } => "ownership.lease_ttl_ms",
                _ => "cluster.election_timeout_ms",
            };
            return bad(key, &e.to_string());
        }
        if self.tftp.timeout_ms > self.tftp.max_timeout_ms {
            return bad(
                "tftp.timeout_ms",
                "must not exceed tftp.max_timeout_ms (the longest timeout granted)",
            );
        }
        for r in &self.dhcp.relays {
            if r.is_unspecified()
                || r.is_loopback()
                || r.is_broadcast()
                || r.is_multicast()
                || r.octets()[0] == 0
            {
                return bad(
                    "dhcp.relays",
                    &format!("{r} is not a relay agent's unicast address"),
                );
            }
        }
        if self.log_level.trim().is_empty() {
            return bad("log_level", "must not be empty (e.g. `info`)");
        }
        Ok(())
    }

    /// This host's name: configured, else the system host name.
    pub fn host_name(&self) -> String {
        if let Some(h) = &self.host_name {
            return h.clone();
        }
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let name: String = raw
            .trim()
            .split('.')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .take(64)
            .collect();
        if name.is_empty() || !name.as_bytes()[0].is_ascii_alphanumeric() {
            "baton".into()
        } else {
            name
        }
    }

    /// The served TFTP directory.
    pub fn tftp_root(&self) -> PathBuf {
        self.tftp
            .root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tftp"))
    }
}

impl BootsConfig {
    /// The stuck rules these settings give.
    pub fn rules(&self) -> crate::boots::Rules {
        crate::boots::Rules {
            stall_ms: self.stall_secs * 1000,
            dhcp_loop_requests: self.dhcp_loop_requests,
            dhcp_loop_ms: self.dhcp_loop_secs * 1000,
        }
    }

    /// The retention of the local record file.
    pub fn retention(&self) -> crate::boots::recorder::Retention {
        crate::boots::recorder::Retention {
            max_age_ms: (self.retention_days as i64).saturating_mul(86_400_000),
            max_records: self.max_records,
        }
    }
}

impl TftpConfig {
    /// Reads and parses `map_file`, if set; errors name the key, the file and the line.
    pub fn load_map_file(&self) -> Result<Option<MapFile>, ConfigError> {
        let Some(path) = &self.map_file else {
            return Ok(None);
        };
        let invalid = |message: String| ConfigError::Invalid {
            key: "tftp.map_file",
            message: format!("{}: {message}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        MapFile::parse(&text)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    }
}

impl TlsConfig {
    /// The certificate, key and CA these settings name, loaded and checked; `None`
    /// when TLS is off.
    pub fn material(&self) -> Result<Option<crate::tls::Material>, crate::tls::TlsError> {
        crate::tls::Material::load(
            self.cert.as_deref(),
            self.key.as_deref(),
            self.ca.as_deref(),
            self.peer_auth,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[tls]` goes whole, with https peer URLs and a plain boot listener; https URLs
    /// without it are refused. Each refusal names the key to fix.
    #[test]
    fn tls_settings_go_together() {
        let key = |toml: &str| {
            Config::parse_text(toml, Path::new("t.toml"))
                .unwrap()
                .validate()
                .err()
                .map(|e| match e {
                    ConfigError::Invalid { key, .. } => key,
                    e => panic!("{e}"),
                })
        };
        let tls = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\n";
        let boot = "[http]\nboot_listen = \"0.0.0.0:8070\"\n";
        assert_eq!(key(&format!("{tls}{boot}")), None);
        assert_eq!(key("[tls]\ncert = \"c.pem\"\n"), Some("tls"));
        assert_eq!(key(tls), Some("http.boot_listen"));
        let secret = "secret = \"0123456789abcdef0123\"\n";
        assert_eq!(
            key(&format!(
                "{tls}{boot}[cluster]\n{secret}join = \"http://10.0.0.1:8069\"\n"
            )),
            Some("cluster.join")
        );
        assert_eq!(
            key(&format!(
                "{tls}{boot}[cluster]\nadvertise_url = \"http://10.0.0.1:8069\"\n"
            )),
            Some("cluster.advertise_url")
        );
        assert_eq!(
            key(&format!(
                "[cluster]\n{secret}join = \"https://10.0.0.1:8069\"\n"
            )),
            Some("cluster.join")
        );
        assert!(
            Config::parse_text("[tls]\npeer_auth = \"none\"\n", Path::new("t.toml")).is_err(),
            "an unknown peer_auth is refused"
        );
    }

    #[test]
    fn secrets_come_from_files_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let mut c = Config {
            api_token_file: Some(token.clone()),
            ..Default::default()
        };
        c.read_secret_files(None).unwrap();
        assert_eq!(c.api_token.as_deref(), Some("t0ken"));
        // Both a value and a file: refused, naming the key.
        let mut c = Config {
            api_token: Some("x".into()),
            api_token_file: Some(token),
            ..Default::default()
        };
        let e = c.read_secret_files(None).unwrap_err().to_string();
        assert!(e.contains("api_token_file"), "{e}");
        // systemd credentials, when nothing else is given.
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("baton-cluster-secret"), "s3cret").unwrap();
        let mut c = Config::default();
        c.read_secret_files(Some(creds.clone())).unwrap();
        assert_eq!(c.cluster.secret.as_deref(), Some("s3cret"));
        assert_eq!(c.api_token, None);
        // An empty file is an error, not an empty secret.
        std::fs::write(creds.join("baton-api-token"), "\n").unwrap();
        let mut c = Config::default();
        assert!(c.read_secret_files(Some(creds)).is_err());
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.toml");
        std::fs::write(
            &f,
            "data_dir = \"/x\"\n[tftp]\nlisten = \"127.0.0.1:6969\"\nmax_windowsize = 8\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            &Overrides::from_args(["--tftp-max-windowsize", "16"]).unwrap(),
        )
        .unwrap();
        assert_eq!(c.tftp.listen, "127.0.0.1:6969".parse().unwrap());
        assert_eq!(c.tftp.max_windowsize, 16);
        assert_eq!(c.tftp_root(), PathBuf::from("/x/tftp"));
    }

    #[test]
    fn huge_intervals_are_refused_not_overflowing() {
        // `3 * heartbeat_ms` overflowed: a panic in debug builds, a wrapped check in release.
        for (text, key) in [
            (
                "[cluster]\nheartbeat_ms = 9223372036854775807\nelection_timeout_ms = 9223372036854775807\n",
                "cluster.election_timeout_ms",
            ),
            (
                "[ownership]\nlease_interval_ms = 9223372036854775807\nlease_ttl_ms = 9223372036854775807\n",
                "ownership.lease_ttl_ms",
            ),
        ] {
            let c = Config::parse_text(text, Path::new("t.toml")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.toml");
        std::fs::write(&f, "[tftp]\nmax_blksize = 4\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tftp.max_blksize"), "{e}");
        std::fs::write(&f, "[tftp]\nmax_blksiz = 4\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_blksiz"), "{e}");
        // A write deadline shorter than an election could never see a new leader.
        std::fs::write(&f, "[cluster]\npropose_deadline_ms = 1000\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.propose_deadline_ms"), "{e}");
    }

    fn load(toml: &str, flags: &[&str]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.toml");
        std::fs::write(&f, toml).unwrap();
        Config::load(Some(&f), &Overrides::from_args(flags).unwrap())
    }

    /// Every flag is the override of one TOML key: the file sets it, the flag wins, and
    /// without either the default holds.
    #[test]
    fn each_flag_overrides_its_key() {
        type Get = fn(&Config) -> String;
        let cases: &[(&str, &str, &str, &str, Get)] = &[
            ("data_dir = \"/f\"", "--data-dir", "/x", "/x", |c| {
                c.data_dir.display().to_string()
            }),
            (
                "log_level = \"warn\"",
                "--log-level",
                "debug",
                "debug",
                |c| c.log_level.clone(),
            ),
            (
                "host_name = \"f\"",
                "--host-name",
                "x",
                "Some(\"x\")",
                |c| format!("{:?}", c.host_name),
            ),
            ("group = \"f\"", "--group", "x", "x", |c| c.group.clone()),
            (
                "[tftp]\nlisten = \"127.0.0.1:1\"",
                "--tftp-listen",
                "127.0.0.1:2",
                "127.0.0.1:2",
                |c| c.tftp.listen.to_string(),
            ),
            (
                "[tftp]\nmax_blksize = 1000",
                "--tftp-max-blksize",
                "1400",
                "1400",
                |c| c.tftp.max_blksize.to_string(),
            ),
            (
                "[tftp]\nmtu = 9000",
                "--tftp-mtu",
                "1500",
                "Some(1500)",
                |c| format!("{:?}", c.tftp.mtu),
            ),
            (
                "[tftp]\nmap_file = \"/f\"",
                "--tftp-map-file",
                "/x",
                "Some(\"/x\")",
                |c| format!("{:?}", c.tftp.map_file),
            ),
            (
                "[http]\nlisten = \"127.0.0.1:1\"",
                "--http-listen",
                "127.0.0.1:2",
                "127.0.0.1:2",
                |c| c.http.listen.to_string(),
            ),
            ("[dhcp]\nport = 1067", "--dhcp-port", "2067", "2067", |c| {
                c.dhcp.port.to_string()
            }),
            (
                "[dhcp]\ninterfaces = [\"f0\"]",
                "--dhcp-interface",
                "x0",
                "[\"x0\"]",
                |c| format!("{:?}", c.dhcp.interfaces),
            ),
            (
                "[cluster]\nadvertise_url = \"http://f:1\"",
                "--advertise-url",
                "http://x:1",
                "Some(\"http://x:1\")",
                |c| format!("{:?}", c.cluster.advertise_url),
            ),
        ];
        let default = Config::default();
        for (toml, flag, value, want, get) in cases {
            let from_file = load(toml, &[]).unwrap();
            assert_ne!(
                get(&from_file),
                get(&default),
                "{toml}: the file must change it"
            );
            let both = load(toml, &[flag, value]).unwrap();
            assert_eq!(&get(&both), want, "{flag} must win over `{toml}`");
            let flag_only = load("", &[flag, value]).unwrap();
            assert_eq!(&get(&flag_only), want, "{flag}");
            assert_eq!(
                get(&load("", &[]).unwrap()),
                get(&default),
                "{flag}: default"
            );
        }
        // Switches: given, they win; absent, the file holds.
        let c = load(
            "[tftp]\nsingle_port = false\n[dhcp]\nenabled = true\n",
            &["--tftp-single-port", "--no-dhcp"],
        )
        .unwrap();
        assert!(c.tftp.single_port && !c.dhcp.enabled);
        let c = load("[tftp]\nsingle_port = true\n[dhcp]\nenabled = false\n", &[]).unwrap();
        assert!(c.tftp.single_port && !c.dhcp.enabled);
        // Repeated list flags replace the file's list.
        let c = load(
            "[dhcp]\ninterfaces = [\"f0\"]\n",
            &["--dhcp-interface", "a0", "--dhcp-interface", "b0"],
        )
        .unwrap();
        assert_eq!(c.dhcp.interfaces, ["a0", "b0"]);
    }

    #[test]
    fn ranges_are_checked_for_flags_and_file_alike() {
        for (toml, flags, key, message) in [
            (
                "",
                &["--tftp-max-blksize", "4"][..],
                "tftp.max_blksize",
                "must be between 8 and 65464 (RFC 2348)",
            ),
            (
                "[tftp]\nmax_blksize = 65465",
                &[],
                "tftp.max_blksize",
                "must be between 8 and 65464 (RFC 2348)",
            ),
            (
                "[tftp]\nmax_windowsize = 0",
                &[],
                "tftp.max_windowsize",
                "must be between 1 and 32768",
            ),
            (
                "",
                &["--tftp-mtu", "67"],
                "tftp.mtu",
                "must be between 68 and 65536",
            ),
            (
                "[tftp]\ntimeout_ms = 5",
                &[],
                "tftp.timeout_ms",
                "must be between 10 and 255000 milliseconds",
            ),
            (
                "[tftp]\nmax_retries = 0",
                &[],
                "tftp.max_retries",
                "must be between 1 and 100",
            ),
            (
                "[tftp]\nmax_transfers = 0",
                &[],
                "tftp.max_transfers",
                "must be at least 1",
            ),
            (
                "[tftp]\nmax_transfers_per_client = 0",
                &[],
                "tftp.max_transfers_per_client",
                "must be at least 1",
            ),
            (
                "[ownership]\ngrace_ms = 99",
                &[],
                "ownership.grace_ms",
                "must be at least 100 ms (it covers clock skew between hosts)",
            ),
        ] {
            match load(toml, flags) {
                Err(ConfigError::Invalid { key: k, message: m }) => {
                    assert_eq!((k, m.as_str()), (key, message), "{toml} {flags:?}");
                }
                other => panic!("{toml} {flags:?}: {other:?}"),
            }
        }
        let edge = load(
            "[tftp]\nmax_blksize = 8\nmtu = 65536\nmax_windowsize = 32768\n",
            &[],
        )
        .unwrap();
        assert_eq!((edge.tftp.max_blksize, edge.tftp.mtu), (8, Some(65536)));
    }

    /// packaging/baton.toml says its values are the defaults and shows every key: it
    /// must parse, agree with the defaults, and name each key in its section (set or
    /// commented out).
    #[test]
    fn example_config_shows_every_key_and_the_defaults() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/baton.toml");
        let c = Config::parse_file(&p).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let mut section = String::new();
        let mut shown = Vec::new();
        for line in text.lines() {
            let l = line.trim_start_matches('#').trim();
            if l.starts_with('[') && !line.starts_with('#') {
                let name = l.trim_matches(|c| c == '[' || c == ']');
                shown.push(name.to_string());
                section = format!("{name}.");
            } else if let Some((k, _)) = l.split_once(" = ") {
                if !k.contains(' ') {
                    shown.push(format!("{}{k}", if section == "." { "" } else { &section }));
                }
            }
        }
        for key in Config::keys() {
            assert!(
                shown.iter().any(|s| s == key),
                "packaging/baton.toml does not show `{key}`"
            );
        }
    }

    /// Every `--flag` the README names is a flag of `baton serve`, and every flag of
    /// `baton serve` is a key of the TOML file.
    #[test]
    fn readme_flags_exist_and_flags_are_keys() {
        let flags: Vec<String> = Config::flag_args()
            .iter()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let synopsis = &readme[readme.find("baton serve [--config FILE]").unwrap()..];
        let synopsis = &synopsis[..synopsis.find("```").unwrap()];
        for word in synopsis.split(|c: char| c.is_whitespace() || c == '[' || c == ']') {
            if word.starts_with("--") && word != "--config" {
                assert!(
                    flags.iter().any(|f| f == word),
                    "README names {word}, not a flag of baton serve"
                );
            }
        }
        let mut all = toml::Value::try_from(Config::default()).unwrap();
        for a in Config::flag_args() {
            let key = a.get_id().as_str();
            let (section, field) = key.rsplit_once('.').unwrap_or(("", key));
            let table = if section.is_empty() {
                &mut all
            } else {
                all.get_mut(section).unwrap()
            };
            // Optional keys are absent from the serialized defaults: set one to check.
            table
                .as_table_mut()
                .unwrap()
                .entry(field)
                .or_insert(toml::Value::String("127.0.0.1:1".into()));
            let text = toml::to_string(&all).unwrap();
            let err = toml::from_str::<Config>(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                !err.contains("unknown field"),
                "flag {} names key {key}, unknown to the file: {err}",
                a.get_long().unwrap()
            );
            all = toml::Value::try_from(Config::default()).unwrap();
        }
    }
}
