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
        default_value = DEFAULT_DATA_DIR
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
