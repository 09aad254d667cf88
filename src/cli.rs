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
pub enum Command {
    /// Run the boot server (TFTP today) in the foreground until SIGINT or SIGTERM.
    ///
    /// Every flag can also be set in the TOML file given with --config (same names,
    /// e.g. `[tftp] listen = "0.0.0.0:69"`); flags win over the file.
    Serve(ServeArgs),
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
    #[arg(long, value_name = "TOKEN", env = "BATON_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
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
        }
    }
}
