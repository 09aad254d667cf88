//! Command-line interface: argument definitions (clap) and dispatch.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

/// Baton: proxy-DHCP + TFTP + HTTP boot server for bare-metal fleets, with ownership
/// handoff between management hosts.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run the boot server (TFTP, HTTP boot, admin API) in the foreground until SIGINT
    /// or SIGTERM.
    ///
    /// Every flag can also be set in the TOML file given with --config (same names,
    /// e.g. `[tftp] listen = "0.0.0.0:69"`); flags win over the file.
    Serve(ServeArgs),
    /// Check that this host can run `baton serve` with this configuration: ports,
    /// capabilities, interfaces and MTU, firewall, boot loaders, data directory, cluster
    /// peers and their clocks. Prints PASS/WARN/FAIL with a fix per check; exits 1 on
    /// any FAIL.
    ///
    /// Takes the same --config file and flags as `baton serve`.
    Doctor(DoctorArgs),
    /// Enroll, inspect and change nodes, their boot profiles and reservations.
    Node {
        /// API connection.
        #[command(flatten)]
        api: ApiArgs,
        /// What to do.
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Import, list and remove boot artifacts (kernels, ramdisks, images).
    Artifact {
        /// API connection.
        #[command(flatten)]
        api: ApiArgs,
        /// What to do.
        #[command(subcommand)]
        cmd: ArtifactCmd,
    },
    /// List the Baton hosts.
    Host {
        /// API connection.
        #[command(flatten)]
        api: ApiArgs,
        /// What to do.
        #[command(subcommand)]
        cmd: HostCmd,
    },
    /// Show this host's state: nodes, artifacts, store, transfers.
    Status {
        /// API connection.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the event feed (ownership changes, enrollments, profiles...).
    Events {
        /// API connection.
        #[command(flatten)]
        api: ApiArgs,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep waiting for new events (long-poll) until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// How the CLI reaches the API.
#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// Base URL of the Baton API.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "BATON_API",
        default_value = "http://127.0.0.1:8069"
    )]
    pub api: String,
    /// API token [default: read from <data-dir>/api-token].
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "BATON_API_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Where to look for the token file when --token is not given.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/var/lib/baton"
    )]
    pub data_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `baton node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Enroll a node on this host (which then owns it).
    Enroll {
        /// Node id (letters, digits, `.`, `_`, `-`).
        id: String,
        /// Boot MAC address (repeat for several NICs).
        #[arg(long = "mac", required = true, value_name = "MAC")]
        macs: Vec<String>,
        /// Group (L2 segment) [default: this host's group].
        #[arg(long)]
        group: Option<String>,
        /// Architecture hint, e.g. x86_64 or aarch64.
        #[arg(long)]
        arch: Option<String>,
    },
    /// List nodes.
    List {
        /// Only nodes owned by this host.
        #[arg(long)]
        owner: Option<String>,
        /// Only nodes of this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show a node with its served files and reservation.
    Show {
        /// Node id.
        id: String,
    },
    /// Change a node's MACs, group, architecture or provision state.
    Update {
        /// Node id.
        id: String,
        /// New set of boot MACs (repeat); the node's boot files are re-rendered.
        #[arg(long = "mac", value_name = "MAC")]
        macs: Vec<String>,
        /// New group.
        #[arg(long)]
        group: Option<String>,
        /// New architecture hint.
        #[arg(long)]
        arch: Option<String>,
        /// New provision state: enrolled, available, deploying, active, cleaning, failed.
        #[arg(long, value_name = "STATE")]
        provision_state: Option<String>,
    },
    /// Delete a node (refused while it is reserved).
    Delete {
        /// Node id.
        id: String,
    },
    /// Set what a node boots: renders its pxelinux, GRUB and iPXE files.
    SetProfile {
        /// Node id.
        id: String,
        /// deploy, instance, local or none.
        #[arg(long)]
        kind: String,
        /// Kernel: a file (uploaded first) or an artifact's sha256.
        #[arg(long, value_name = "FILE|SHA256")]
        kernel: Option<String>,
        /// Ramdisk: a file (uploaded first) or an artifact's sha256.
        #[arg(long, value_name = "FILE|SHA256")]
        ramdisk: Option<String>,
        /// Kernel command line.
        #[arg(long, allow_hyphen_values = true)]
        cmdline: Option<String>,
    },
    /// Move a node to another host of its group, with or without an active instance:
    /// the old owner serves until the target holds every artifact, then ownership flips.
    Migrate {
        /// Node id.
        id: String,
        /// Target host.
        #[arg(long)]
        to: String,
        /// Wait until the flip (or the rollback), at most this many seconds.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// List a node's served files (path -> sha256).
    Files {
        /// Node id.
        id: String,
    },
    /// Take a node's lock; prints the fencing token.
    Reserve {
        /// Node id.
        id: String,
        /// Who holds it (e.g. a conductor's name).
        #[arg(long)]
        holder: String,
        /// Seconds until it lapses unless renewed.
        #[arg(long, default_value_t = 60)]
        ttl: u64,
    },
    /// Extend a reservation.
    Renew {
        /// Node id.
        id: String,
        /// Holder.
        #[arg(long)]
        holder: String,
        /// Fencing token from `reserve`.
        #[arg(long)]
        token: u64,
        /// New time to live in seconds.
        #[arg(long, default_value_t = 60)]
        ttl: u64,
    },
    /// Release a reservation.
    Release {
        /// Node id.
        id: String,
        /// Holder.
        #[arg(long)]
        holder: String,
        /// Fencing token from `reserve`.
        #[arg(long)]
        token: u64,
    },
}

/// `baton artifact ...`
#[derive(Debug, Subcommand)]
pub enum ArtifactCmd {
    /// Import a file (shows progress); prints its sha256.
    Add {
        /// The file.
        file: PathBuf,
        /// Name to record [default: the file name].
        #[arg(long)]
        name: Option<String>,
    },
    /// List artifacts.
    List,
    /// Show one artifact and the nodes using it.
    Show {
        /// sha256.
        digest: String,
    },
    /// Remove an artifact (refused while a node uses it).
    Rm {
        /// sha256.
        digest: String,
    },
}

/// `baton host ...`
#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// List hosts with their node counts.
    List,
    /// Move all of a host's nodes to other hosts of its group (maintenance).
    Drain {
        /// Host name.
        host: String,
    },
    /// Stop draining a host.
    Undrain {
        /// Host name.
        host: String,
    },
    /// Take a host out of the cluster (all its identities, or one with --id, e.g. the
    /// old identity of a host that rejoined after losing its data).
    Remove {
        /// Host name.
        host: String,
        /// Only this Raft identity (see `baton status`).
        #[arg(long)]
        id: Option<u64>,
    },
}

/// Flags of `baton doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The configuration to check, given as to `baton serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Fail when the data directory's file system has less free space than this.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub min_free_mb: u64,
    /// Seconds to wait for each cluster peer.
    #[arg(long, value_name = "SECONDS", default_value_t = 3)]
    pub peer_timeout: u64,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `baton serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE", env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for Baton's state [default: /var/lib/baton].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `baton::tftp=debug` [default: info; env RUST_LOG wins].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Address and UDP port of the TFTP server [default: 0.0.0.0:69].
    #[arg(long, value_name = "ADDR:PORT")]
    pub tftp_listen: Option<SocketAddr>,
    /// Directory served over TFTP [default: <data-dir>/tftp].
    #[arg(long, value_name = "DIR")]
    pub tftp_root: Option<PathBuf>,
    /// Answer every transfer from the listening port (for NAT, a virtual IP or a container
    /// network, where replies from ephemeral ports are dropped).
    #[arg(long)]
    pub tftp_single_port: bool,
    /// Largest block size granted to clients, 8..=65464 [default: 65464].
    #[arg(long, value_name = "BYTES")]
    pub tftp_max_blksize: Option<u16>,
    /// MTU that blocks must fit in [default: the MTU of the interface a request came in on].
    #[arg(long, value_name = "BYTES")]
    pub tftp_mtu: Option<u32>,
    /// Largest window granted to clients (RFC 7440) [default: 64].
    #[arg(long, value_name = "BLOCKS")]
    pub tftp_max_windowsize: Option<u16>,
    /// Address and TCP port of the HTTP server: API, HTTP boot, metrics [default: 0.0.0.0:8069].
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_listen: Option<SocketAddr>,
    /// This host's name among Baton hosts [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub host_name: Option<String>,
    /// This host's group: the L2 segment whose nodes it serves [default: default].
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Boot file templates, watched for edits [default: the built-in templates].
    #[arg(long, value_name = "DIR")]
    pub template_dir: Option<PathBuf>,
    /// Bearer token of the admin API [default: <data-dir>/api-token, created if missing].
    #[arg(
        long,
        value_name = "TOKEN",
        env = "BATON_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// Do not run the proxy-DHCP server (udp/67, udp/4011).
    #[arg(long)]
    pub no_dhcp: bool,
    /// Answer PXE clients only on this interface (repeat for several) [default: all].
    #[arg(long = "dhcp-interface", value_name = "IFACE")]
    pub dhcp_interfaces: Vec<String>,
    /// Address the proxy-DHCP sockets bind [default: 0.0.0.0, needed for broadcasts].
    #[arg(long, value_name = "IPV4")]
    pub dhcp_listen: Option<std::net::Ipv4Addr>,
    /// DHCP server port [default: 67].
    #[arg(long, value_name = "PORT")]
    pub dhcp_port: Option<u16>,
    /// PXE boot-server port [default: 4011].
    #[arg(long, value_name = "PORT")]
    pub dhcp_pxe_port: Option<u16>,
    /// Address announced to clients as boot server [default: the receiving interface's].
    #[arg(long, value_name = "IPV4")]
    pub dhcp_server_ip: Option<std::net::Ipv4Addr>,
    /// Write every DHCP and TFTP packet received and sent to this pcap file.
    #[arg(long, value_name = "FILE.pcap")]
    pub capture: Option<PathBuf>,
    /// Join the cluster of this member on first start (e.g. http://10.0.0.1:8069).
    #[arg(long, value_name = "PEER_URL")]
    pub join: Option<String>,
    /// Shared secret of the cluster (peers without it are refused).
    #[arg(
        long,
        value_name = "SECRET",
        env = "BATON_CLUSTER_SECRET",
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,
    /// This host's HTTP URL as peers reach it [default: http://<http-listen>].
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
}

impl ServeArgs {
    /// The flags as configuration overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            log_level: self.log_level.clone(),
            tftp_listen: self.tftp_listen,
            tftp_root: self.tftp_root.clone(),
            tftp_single_port: self.tftp_single_port,
            tftp_max_blksize: self.tftp_max_blksize,
            tftp_mtu: self.tftp_mtu,
            tftp_max_windowsize: self.tftp_max_windowsize,
            host_name: self.host_name.clone(),
            group: self.group.clone(),
            template_dir: self.template_dir.clone(),
            http_listen: self.http_listen,
            api_token: self.api_token.clone(),
            no_dhcp: self.no_dhcp,
            dhcp_interfaces: self.dhcp_interfaces.clone(),
            dhcp_listen: self.dhcp_listen,
            dhcp_port: self.dhcp_port,
            dhcp_pxe_port: self.dhcp_pxe_port,
            dhcp_server_ip: self.dhcp_server_ip,
            capture: self.capture.clone(),
            join: self.join.clone(),
            cluster_secret: self.cluster_secret.clone(),
            advertise_url: self.advertise_url.clone(),
        }
    }
}
