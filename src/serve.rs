//! `baton serve`: assembles the configured services and runs them until a signal.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::tftp::files::DirSource;
use crate::tftp::server::TftpServer;

/// Sets up logging to stderr with `filter` (RUST_LOG, when set, wins).
pub fn init_logging(filter: &str) {
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Runs the server with `cfg` until SIGINT or SIGTERM.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create data dir {} (use --data-dir)",
            cfg.data_dir.display()
        )
    })?;
    let root = cfg.tftp_root();
    std::fs::create_dir_all(&root).with_context(|| {
        format!(
            "cannot create TFTP root {} (use --tftp-root)",
            root.display()
        )
    })?;
    let source = DirSource::new(&root, cfg.tftp.cache_bytes)
        .with_context(|| format!("cannot open TFTP root {}", root.display()))?;
    info!(root = %source.canonical_root().display(), data_dir = %cfg.data_dir.display(), "baton starting");
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let tftp = TftpServer::bind(
        cfg.tftp.clone(),
        Arc::new(source),
        metrics.clone(),
        shutdown.clone(),
    )?;
    let server = tokio::spawn(tftp.run());

    wait_for_signal().await?;
    info!("signal received, shutting down");
    shutdown.cancel();
    server.await.context("tftp server task failed")?;
    info!(
        transfers_completed = metrics.tftp.completed.get(),
        bytes = metrics.tftp.bytes.get(),
        "baton stopped"
    );
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
