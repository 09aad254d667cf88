//! Configuration: a TOML file (all keys optional) overridden by command-line flags,
//! validated once at start-up with errors that name the key and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tftp::negotiate::Limits;
use crate::tftp::transfer::Rollover;

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

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for Baton's own state (store, blobs); created if missing.
    pub data_dir: PathBuf,
    /// Log filter (tracing's EnvFilter syntax, e.g. `info` or `baton=debug`).
    pub log_level: String,
    /// This host's name among Baton hosts; default: the system host name.
    pub host_name: Option<String>,
    /// This host's group: the L2 segment whose nodes it can serve.
    pub group: String,
    /// Directory of boot file templates, watched for changes; default: the templates
    /// built into the binary (a copy of `tftp-root-template/`).
    pub template_dir: Option<PathBuf>,
    /// Bearer token of the admin API; default: read from (or created in)
    /// `<data_dir>/api-token`.
    pub api_token: Option<String>,
    /// TFTP server.
    pub tftp: TftpConfig,
    /// HTTP server (API, HTTP boot, metrics).
    pub http: HttpConfig,
    /// Proxy-DHCP server.
    pub dhcp: DhcpConfig,
    /// Write every DHCP and TFTP packet to this pcap file.
    pub capture: Option<PathBuf>,
    /// Cluster membership and replication.
    pub cluster: ClusterConfig,
    /// Leases and takeover.
    pub ownership: OwnershipConfig,
}

/// Lease and placement settings (keep them the same on every host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnershipConfig {
    /// How often a host renews its lease.
    pub lease_interval_ms: u64,
    /// How long a renewal keeps a host serving.
    pub lease_ttl_ms: u64,
    /// Extra wait after a lease expires before peers take its nodes.
    pub grace_ms: u64,
    /// Most nodes one host may own after a takeover or drain (unset: no limit).
    pub max_nodes_per_host: Option<usize>,
}

impl Default for OwnershipConfig {
    fn default() -> Self {
        OwnershipConfig {
            lease_interval_ms: 1000,
            lease_ttl_ms: 3000,
            grace_ms: 1000,
            max_nodes_per_host: None,
        }
    }
}

/// Cluster settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Shared secret of the cluster; without it this host stays a cluster of one and
    /// refuses every peer request.
    pub secret: Option<String>,
    /// URL of any member to join on first start (e.g. `http://10.0.0.1:8069`).
    pub join: Option<String>,
    /// This host's HTTP URL as peers reach it; default: `http://<http.listen>` (with
    /// 127.0.0.1 for a wildcard address, which only suits a single host).
    pub advertise_url: Option<String>,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout (a random value between this and twice this).
    pub election_timeout_ms: u64,
    /// Artifact replication bandwidth cap, bytes per second (0: no cap).
    pub replication_rate: u64,
    /// Build a store snapshot after this many log entries (a host too far behind, or
    /// new, receives the snapshot plus the log tail).
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot for followers slightly behind.
    pub keep_logs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            secret: None,
            join: None,
            advertise_url: None,
            heartbeat_ms: 150,
            election_timeout_ms: 750,
            replication_rate: 100 << 20,
            snapshot_every: 5000,
            keep_logs: 1000,
        }
    }
}

/// Proxy-DHCP settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpConfig {
    /// Answer PXE clients (udp/67 and udp/4011).
    pub enabled: bool,
    /// Only these interfaces (SO_BINDTODEVICE); empty: all.
    pub interfaces: Vec<String>,
    /// Address to bind (0.0.0.0 to receive broadcasts).
    pub listen: std::net::Ipv4Addr,
    /// DHCP server port.
    pub port: u16,
    /// PXE boot-server port.
    pub pxe_port: u16,
    /// Address announced as server and TFTP server; default: the address of the
    /// interface the request came in on.
    pub server_ip: Option<std::net::Ipv4Addr>,
    /// First-stage boot loaders per architecture.
    pub boot_files: crate::dhcp::proxy::BootFiles,
    /// How iPXE clients fetch their node's script: "tftp" or "http".
    pub ipxe_script: crate::dhcp::proxy::ScriptVia,
    /// Answer nodes whose profile is `local` (their files boot the local disk); when
    /// false they get no answer and the firmware tries its next boot device.
    pub answer_local: bool,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            enabled: true,
            interfaces: Vec::new(),
            listen: std::net::Ipv4Addr::UNSPECIFIED,
            port: 67,
            pxe_port: 4011,
            server_ip: None,
            boot_files: Default::default(),
            ipxe_script: Default::default(),
            answer_local: true,
        }
    }
}

/// HTTP server settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and TCP port.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8069".parse().expect("valid literal"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/baton"),
            log_level: "info".into(),
            host_name: None,
            group: "default".into(),
            template_dir: None,
            api_token: None,
            tftp: TftpConfig::default(),
            http: HttpConfig::default(),
            dhcp: DhcpConfig::default(),
            capture: None,
            cluster: ClusterConfig::default(),
            ownership: OwnershipConfig::default(),
        }
    }
}

/// TFTP server settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Served directory; default `<data_dir>/tftp`.
    pub root: Option<PathBuf>,
    /// Answer every transfer from the listening port (for NAT, VIPs, containers).
    pub single_port: bool,
    /// Largest block size granted (8..=65464).
    pub max_blksize: u16,
    /// Interface MTU to fit blocks into; default: the MTU of the interface the request
    /// arrived on.
    pub mtu: Option<u32>,
    /// Largest window granted (RFC 7440).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client asks for none, in milliseconds.
    pub timeout_ms: u64,
    /// Timeouts in a row before a transfer is dropped.
    pub max_retries: u32,
    /// What block 65535 is followed by.
    pub rollover: Rollover,
    /// Most transfers at once.
    pub max_transfers: usize,
    /// Most transfers at once from one client address.
    pub max_transfers_per_client: usize,
    /// Bytes of idle files kept in memory.
    pub cache_bytes: u64,
    /// Use UDP GSO for windows when the kernel offers it.
    pub gso: bool,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            listen: "0.0.0.0:69".parse().expect("valid literal"),
            root: None,
            single_port: false,
            max_blksize: 65464,
            mtu: None,
            max_windowsize: 64,
            timeout_ms: 1000,
            max_retries: 5,
            rollover: Rollover::Zero,
            max_transfers: 4096,
            max_transfers_per_client: 1024,
            cache_bytes: 1 << 30,
            gso: true,
        }
    }
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--tftp-listen`.
    pub tftp_listen: Option<SocketAddr>,
    /// `--tftp-root`.
    pub tftp_root: Option<PathBuf>,
    /// `--tftp-single-port`.
    pub tftp_single_port: bool,
    /// `--tftp-max-blksize`.
    pub tftp_max_blksize: Option<u16>,
    /// `--tftp-mtu`.
    pub tftp_mtu: Option<u32>,
    /// `--tftp-max-windowsize`.
    pub tftp_max_windowsize: Option<u16>,
    /// `--host-name`.
    pub host_name: Option<String>,
    /// `--group`.
    pub group: Option<String>,
    /// `--template-dir`.
    pub template_dir: Option<PathBuf>,
    /// `--http-listen`.
    pub http_listen: Option<SocketAddr>,
    /// `--api-token` / `BATON_API_TOKEN`.
    pub api_token: Option<String>,
    /// `--no-dhcp`.
    pub no_dhcp: bool,
    /// `--dhcp-interface`.
    pub dhcp_interfaces: Vec<String>,
    /// `--dhcp-listen`.
    pub dhcp_listen: Option<std::net::Ipv4Addr>,
    /// `--dhcp-port`.
    pub dhcp_port: Option<u16>,
    /// `--dhcp-pxe-port`.
    pub dhcp_pxe_port: Option<u16>,
    /// `--dhcp-server-ip`.
    pub dhcp_server_ip: Option<std::net::Ipv4Addr>,
    /// `--capture`.
    pub capture: Option<PathBuf>,
    /// `--join`.
    pub join: Option<String>,
    /// `--cluster-secret` / `BATON_CLUSTER_SECRET`.
    pub cluster_secret: Option<String>,
    /// `--advertise-url`.
    pub advertise_url: Option<String>,
}

impl Config {
    /// Loads `file` (if given), applies `o`, validates.
    pub fn load(file: Option<&Path>, o: Overrides) -> Result<Config, ConfigError> {
        let mut c = match file {
            Some(p) => Self::parse_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = o.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = o.log_level {
            c.log_level = v;
        }
        if let Some(v) = o.tftp_listen {
            c.tftp.listen = v;
        }
        if let Some(v) = o.tftp_root {
            c.tftp.root = Some(v);
        }
        if o.tftp_single_port {
            c.tftp.single_port = true;
        }
        if let Some(v) = o.tftp_max_blksize {
            c.tftp.max_blksize = v;
        }
        if let Some(v) = o.tftp_mtu {
            c.tftp.mtu = Some(v);
        }
        if let Some(v) = o.tftp_max_windowsize {
            c.tftp.max_windowsize = v;
        }
        if let Some(v) = o.host_name {
            c.host_name = Some(v);
        }
        if let Some(v) = o.group {
            c.group = v;
        }
        if let Some(v) = o.template_dir {
            c.template_dir = Some(v);
        }
        if let Some(v) = o.http_listen {
            c.http.listen = v;
        }
        if let Some(v) = o.api_token {
            c.api_token = Some(v);
        }
        if o.no_dhcp {
            c.dhcp.enabled = false;
        }
        if !o.dhcp_interfaces.is_empty() {
            c.dhcp.interfaces = o.dhcp_interfaces;
        }
        if let Some(v) = o.dhcp_listen {
            c.dhcp.listen = v;
        }
        if let Some(v) = o.dhcp_port {
            c.dhcp.port = v;
        }
        if let Some(v) = o.dhcp_pxe_port {
            c.dhcp.pxe_port = v;
        }
        if let Some(v) = o.dhcp_server_ip {
            c.dhcp.server_ip = Some(v);
        }
        if let Some(v) = o.capture {
            c.capture = Some(v);
        }
        if let Some(v) = o.join {
            c.cluster.join = Some(v);
        }
        if let Some(v) = o.cluster_secret {
            c.cluster.secret = Some(v);
        }
        if let Some(v) = o.advertise_url {
            c.cluster.advertise_url = Some(v);
        }
        c.validate()?;
        Ok(c)
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

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.tftp;
        let bad = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if !(8..=65464).contains(&t.max_blksize) {
            return bad("tftp.max_blksize", "must be between 8 and 65464 (RFC 2348)");
        }
        if t.max_windowsize == 0 || t.max_windowsize > 32768 {
            return bad("tftp.max_windowsize", "must be between 1 and 32768");
        }
        if !(10..=255_000).contains(&t.timeout_ms) {
            return bad(
                "tftp.timeout_ms",
                "must be between 10 and 255000 milliseconds",
            );
        }
        if !(1..=100).contains(&t.max_retries) {
            return bad("tftp.max_retries", "must be between 1 and 100");
        }
        if t.max_transfers == 0 {
            return bad("tftp.max_transfers", "must be at least 1");
        }
        if t.max_transfers_per_client == 0 {
            return bad("tftp.max_transfers_per_client", "must be at least 1");
        }
        if let Some(m) = t.mtu {
            if !(68..=65536).contains(&m) {
                return bad("tftp.mtu", "must be between 68 and 65536");
            }
        }
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
        if self.dhcp.enabled && self.dhcp.port == self.dhcp.pxe_port {
            return bad("dhcp.pxe_port", "must differ from dhcp.port");
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
        if cl.heartbeat_ms < 10 || cl.election_timeout_ms < cl.heartbeat_ms.saturating_mul(3) {
            return bad(
                "cluster.election_timeout_ms",
                "must be at least 3 x cluster.heartbeat_ms (and heartbeat_ms >= 10)",
            );
        }
        let ow = &self.ownership;
        if ow.lease_interval_ms < 50 || ow.lease_ttl_ms < ow.lease_interval_ms.saturating_mul(2) {
            return bad(
                "ownership.lease_ttl_ms",
                "must be at least 2 x ownership.lease_interval_ms (and the interval >= 50 ms)",
            );
        }
        if ow.grace_ms < 100 {
            return bad(
                "ownership.grace_ms",
                "must be at least 100 ms (it covers clock skew between hosts)",
            );
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

impl TftpConfig {
    /// Negotiation limits derived from this configuration.
    pub fn limits(&self) -> Limits {
        Limits {
            max_blksize: self.max_blksize,
            max_windowsize: self.max_windowsize,
            default_timeout: Duration::from_millis(self.timeout_ms),
            max_retries: self.max_retries,
            rollover: self.rollover,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Overrides {
                tftp_max_windowsize: Some(16),
                ..Default::default()
            },
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
        let e = Config::load(Some(&f), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tftp.max_blksize"), "{e}");
        std::fs::write(&f, "[tftp]\nmax_blksiz = 4\n").unwrap();
        let e = Config::load(Some(&f), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_blksiz"), "{e}");
    }
}
