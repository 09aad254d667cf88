//! Command-line interface: argument definitions (clap) and dispatch.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Overrides, DEFAULT_DATA_DIR};

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
    /// Boot-storm generator: N simulated PXE machines boot at once (DHCP with the
    /// proxy's offer and udp/4011, loader, config, kernel, ramdisk over TFTP or HTTP)
    /// against Baton or any PXE server; bytes verified, per-stage times, double answers.
    ///
    /// Prints one JSON line per client on stdout (or --records) and a summary on
    /// stderr. Exits 0 when every client booted, 1 otherwise. Run it in a network
    /// namespace of its own: it binds udp/68 (and udp/4011 for efi-x64) and broadcasts.
    Storm(StormArgs),
    /// Take in, once, the per-node boot files a provisioning tool wrote into DIR
    /// (OpenStack Ironic's layout: `<node-uuid>/config`, `pxelinux.cfg/01-<mac>` links,
    /// kernels and ramdisks, GRUB and iPXE names): unknown nodes are enrolled, files
    /// become replicated node files. To follow a live tree, set `[ingest] dir` instead.
    Ingest {
        /// API connection.
        #[command(flatten)]
        api: ApiArgs,
        /// The tree, as an absolute path on the server's host.
        dir: PathBuf,
        /// How long a file must stay unchanged before it is taken, in milliseconds.
        #[arg(long, default_value_t = 250)]
        quiet_ms: u64,
    },
    /// Translate another boot server's configuration into Baton's.
    Import {
        /// What to read.
        #[command(subcommand)]
        cmd: ImportCmd,
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
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,
    /// CA bundle (PEM) to trust for an https:// API, instead of the public roots (e.g.
    /// the servers' `tls.ca`).
    #[arg(long, global = true, value_name = "FILE.pem", env = "BATON_API_CA")]
    pub ca: Option<PathBuf>,
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
        /// An address the node boots from (repeat for several): with `--node-files
        /// bound` it may fetch the node's files from whichever host owns the node.
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<String>,
    },
    /// List nodes (all of them, fetched page by page), by id.
    List {
        /// Only nodes owned by this host.
        #[arg(long)]
        owner: Option<String>,
        /// Only nodes of this group.
        #[arg(long)]
        group: Option<String>,
        /// Only nodes with this architecture hint.
        #[arg(long)]
        arch: Option<String>,
        /// Only nodes in this provision state (enrolled, available, deploying, active,
        /// cleaning, failed).
        #[arg(long, value_name = "STATE")]
        provision_state: Option<String>,
        /// Only nodes migrating (`migrating`) or not (`none`).
        #[arg(long, value_name = "none|migrating")]
        handoff: Option<String>,
        /// Only nodes no live host can take over.
        #[arg(long)]
        stuck: bool,
        /// Only nodes with this kind of boot profile (none, deploy, instance, local).
        #[arg(long, value_name = "KIND")]
        profile: Option<String>,
        /// Only the node with this boot MAC.
        #[arg(long)]
        mac: Option<String>,
        /// Stop after this many nodes.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Nodes per request.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        page_size: usize,
    },
    /// Enroll (or update) many nodes from a file, in one request: CSV or JSON lines,
    /// one node per line (id, macs, group, arch, and optionally a profile: kind,
    /// kernel, ramdisk, cmdline; kernel and ramdisk by sha256 or uploaded artifact
    /// name; and the node's own addresses, `addresses`, `-` in CSV to clear them). Re-running it is harmless: nodes already as the file says are left
    /// alone. Exits non-zero if any line was refused.
    Import {
        /// The file (`-` for standard input is not supported: the progress bar needs
        /// to count its lines).
        file: std::path::PathBuf,
        /// csv or jsonl [default: from the file name: .csv, else .jsonl/.ndjson/.json].
        #[arg(long, value_name = "csv|jsonl")]
        format: Option<String>,
    },
    /// Show a node with its served files and reservation.
    Show {
        /// Node id.
        id: String,
    },
    /// Show a node's last boot attempts, merged from every host: DHCP, udp/4011, loader,
    /// config, kernel and ramdisk with times, hosts, bytes and errors, and whether the
    /// boot is stuck.
    Boots {
        /// Node id.
        id: String,
        /// How many of the newest attempts.
        #[arg(long, default_value_t = 3)]
        attempts: usize,
    },
    /// Change a node's MACs, group, architecture, provision state or addresses.
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
        /// New set of the node's own addresses (repeat for several; replaces those set
        /// before): with `--node-files bound` they may fetch the node's files.
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<String>,
        /// Remove every address set on the node.
        #[arg(long, conflicts_with = "addresses")]
        clear_addresses: bool,
        /// Give the node a new boot token and re-render its files with it: the old
        /// token's URLs are refused from then on (`--node-files token`).
        #[arg(long)]
        rotate_token: bool,
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
        /// Fencing token from `reserve` (`--token` is the API token).
        #[arg(long, value_name = "N")]
        fencing_token: u64,
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
        /// Fencing token from `reserve` (`--token` is the API token).
        #[arg(long, value_name = "N")]
        fencing_token: u64,
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
    /// List artifacts (all of them, fetched page by page), by digest.
    List {
        /// Only artifacts recorded under this name.
        #[arg(long)]
        name: Option<String>,
        /// Only artifacts this host holds.
        #[arg(long)]
        host: Option<String>,
        /// Artifacts per request.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        page_size: usize,
    },
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
    /// Move nodes back toward even placement over the live hosts of each group (e.g.
    /// after a host returned from a failure): prints the plan, then the leader migrates
    /// the nodes through the fenced migration path, `[ownership]
    /// max_concurrent_migrations` at a time, never above `max_nodes_per_host`.
    Rebalance {
        /// Only print the plan; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait until the rebalance has finished, at most this many seconds, showing
        /// progress.
        #[arg(long, default_value_t = 0)]
        wait: u64,
        /// Stop an active rebalance (migrations in progress finish).
        #[arg(long, conflicts_with_all = ["dry_run", "wait"])]
        stop: bool,
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

/// Flags of `baton storm`.
#[derive(Debug, Args, Clone)]
pub struct StormArgs {
    /// Number of clients [default: every MAC given by --macs or the API].
    #[arg(long, short = 'n')]
    pub count: Option<usize>,
    /// Firmware profiles, with weights: bios, efi-x64, ipxe, ipxe-http
    /// (e.g. `bios:2,efi-x64:1,ipxe:1`); clients take them in turn.
    #[arg(long, default_value = "ipxe", value_name = "MIX")]
    pub profile: String,
    /// Interface to broadcast on (SO_BINDTODEVICE); its address is the clients' source
    /// address unless --source-ips is given.
    #[arg(long, short = 'i', value_name = "IFACE")]
    pub interface: Option<String>,
    /// Source addresses for the clients' TFTP and HTTP, one each in turn: `A-B` or
    /// `NET/LEN` (they must be on an interface of this namespace).
    #[arg(long, value_name = "RANGE")]
    pub source_ips: Option<String>,
    /// First MAC; the others count up from it [default: the nodes' MACs from --api].
    #[arg(long, value_name = "MAC")]
    pub mac_base: Option<String>,
    /// File with one MAC per line.
    #[arg(long, value_name = "FILE")]
    pub macs: Option<PathBuf>,
    /// Baton API: MACs of the enrolled nodes and the sha256 of each node's files.
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// API token.

    #[arg(
        long,
        value_name = "TOKEN",
        env = "BATON_API_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Reference digests: `sha256sum` output (paths relative to the served root, for
    /// every client) or JSON `{"nodes":[{"id","macs":[..],"files":{path:sha256}}],"files":{..}}`.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Multiply the firmware's DHCP timers (4/8/16/32 s; iPXE 1/2/4/8 s) by this.
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    pub time_scale: f64,
    /// Multiply the firmware's TFTP retransmission timers by this (kept at 1 by
    /// default: shorter ones give up on a busy server sooner than real firmware would).
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    pub tftp_time_scale: f64,
    /// Wall-clock limit in seconds; clients still running then count as unfinished.
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    pub limit: f64,
    /// Spread power-ons evenly over this many seconds [default: all at once].
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub ramp: f64,
    /// Boot attempts per client: a machine whose boot fails is reset and tries again.
    #[arg(long, default_value_t = 1)]
    pub attempts: u32,
    /// What the first boot file is when its name does not tell: ipxe, pxelinux, grub, shim.
    #[arg(long, value_name = "KIND")]
    pub loader: Option<String>,
    /// Where DISCOVERs go.
    #[arg(long, default_value = "255.255.255.255:67", value_name = "ADDR:PORT")]
    pub dhcp_server: std::net::SocketAddrV4,
    /// Local DHCP client port.
    #[arg(long, default_value_t = 68)]
    pub client_port: u16,
    /// PXE boot-server port.
    #[arg(long, default_value_t = 4011)]
    pub pxe_port: u16,
    /// TFTP server port.
    #[arg(long, default_value_t = 69)]
    pub tftp_port: u16,
    /// HTTP port that `ipxe-http` clients chain to.
    #[arg(long, default_value_t = 8069)]
    pub http_port: u16,
    /// The clients have addresses already (--source-ips): no address server needed,
    /// no DHCP REQUEST sent.
    #[arg(long)]
    pub static_address: bool,
    /// Write the per-client JSON lines here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub records: Option<PathBuf>,
    /// Also write the summary as JSON here.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
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

/// Flags of `baton serve`: `--config`, then one flag per setting, declared with the
/// setting in `config.rs`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE", env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// The settings given as flags.
    #[command(flatten)]
    pub settings: Overrides,
}

/// `baton import ...`
#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// Read dnsmasq configuration files (dhcp-host, dhcp-boot, pxe-service, dhcp-match and
    /// tags, dhcp-range=...,proxy, enable-tftp, tftp-root, tftp-max, tftp-mtu,
    /// tftp-no-blocksize, tftp-single-port): print the Baton configuration they amount to,
    /// enroll their hosts as nodes through the API, and list every line that has no Baton
    /// equivalent with its file, line number and why (on stderr).
    Dnsmasq {
        /// API connection (for enrolling nodes).
        #[command(flatten)]
        api: ApiArgs,
        /// dnsmasq configuration files, read in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Enroll nothing: show what would be enrolled.
        #[arg(long)]
        dry_run: bool,
        /// Write the configuration to this file instead of stdout (refused if it exists).
        #[arg(long, value_name = "FILE")]
        config_out: Option<PathBuf>,
        /// Group of the enrolled nodes (default: the group of the host asked).
        #[arg(long)]
        group: Option<String>,
    },
}
