//! `baton serve`: assembles the configured services and runs them until a signal. The
//! UDP protocol drivers live here too ([`tftp`], [`dhcp`]): they feed the sans-IO cores
//! in `crate::tftp` and `crate::dhcp`.

pub mod dhcp;
pub mod tftp;

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::app::App;
use crate::blobs::BlobStore;
use crate::capture::Capture;
use crate::clock::now_ms;
use crate::config::Config;
use crate::dhcp::proxy::Port;
use crate::metrics::Metrics;
use crate::namespace::cache::ServedBlobs;
use crate::namespace::store_source::StoreSource;
use crate::namespace::DirSource;
use crate::ownership::gate::{Gate, NodeFileAccess};
use crate::ownership::lease::Renewer;
use crate::ownership::reconcile::Reconciler;
use crate::render::embedded::STATIC_FILES;
use crate::render::{rerender_all, watch_templates, CurrentRenderer, Renderer, TemplateWatcher};
use crate::replicate::{ReplicationProgress, Replicator};
use crate::store::{Command, Store};
use crate::wire::path::PathRules;
use dhcp::{DhcpDeps, DhcpServer};
use tftp::TftpServer;

/// Sets up logging to stderr with `filter` (RUST_LOG, when set, wins).
pub fn init_logging(filter: &str) {
    // openraft logs routine elections and membership steps at info/warn; keep them out
    // of operators' logs unless asked for.
    let filter = if filter.contains("openraft") {
        filter.to_string()
    } else {
        format!("{filter},openraft=error")
    };
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The API token: configured, else read from `<data_dir>/api-token`, else created there
/// (readable by the owner only) so the local CLI can find it.
pub fn api_token(cfg: &Config) -> anyhow::Result<String> {
    if let Some(t) = &cfg.api_token {
        return Ok(t.clone());
    }
    let path = cfg.data_dir.join(crate::api::TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut raw = [0u8; 24];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("cannot read /dev/urandom to create an API token")?;
    let token = hex::encode(raw);
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
    info!(path = %path.display(), "created a new API token");
    Ok(token)
}

/// Creates the TFTP root; a root Baton creates gets the shared static boot files.
fn prepare_root(root: &Path) -> anyhow::Result<()> {
    if root.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(root).with_context(|| {
        format!(
            "cannot create TFTP root {} (use --tftp-root)",
            root.display()
        )
    })?;
    for (path, content) in STATIC_FILES {
        let p = root.join(path);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&p, content).with_context(|| format!("cannot write {}", p.display()))?;
    }
    info!(root = %root.display(), "created TFTP root with the shared boot scripts (boot loaders: packaging/install-bootloaders.sh)");
    Ok(())
}

/// Watches the template directory: a valid edit re-renders this host's nodes; a broken
/// one is refused and the previous files keep being served.
fn start_template_watch(app: &Arc<App>, dir: &Path) -> anyhow::Result<TemplateWatcher> {
    let app = app.clone();
    let w = watch_templates(dir, Duration::from_millis(300), move |r| match r {
        Ok(renderer) => {
            app.renderer.set(renderer);
            let r = app.renderer.get();
            let tokens = app.gate.access().tokens();
            match rerender_all(&app.store, app.blobs.store(), &r, &app.host, tokens, now_ms()) {
                Ok(re) => {
                    let mut applied = 0;
                    for cmd in &re.commands {
                        match app.proposer.propose_blocking(cmd) {
                            Ok(o) if o.is_applied() => applied += 1,
                            Ok(o) => warn!(outcome = ?o, "re-render of a node refused"),
                            Err(e) => error!(error = %e, "re-render could not be stored"),
                        }
                    }
                    for (node, e) in &re.failures {
                        error!(node = %node, error = %e, "node could not be re-rendered; it keeps its previous files");
                    }
                    info!(nodes = applied, failed = re.failures.len(), "templates reloaded");
                }
                Err(e) => error!(error = %e, "re-render after template change failed"),
            }
        }
        Err(e) => error!(error = %e, "template change refused; the previous templates and files stay in use"),
    })
    .with_context(|| format!("cannot watch template directory {}", dir.display()))?;
    Ok(w)
}

/// Runs the server with `cfg` until SIGINT or SIGTERM.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Install the handlers first: a signal that arrives while starting up must stop the
    // server cleanly, not kill it with the default action.
    let signals = Signals::install()?;
    // Every HTTP connection and TFTP transfer holds a descriptor; systemd and shells
    // start with a soft limit of 1024. The budget is split in `net::fds`.
    match crate::net::fds::raise_soft_limit() {
        Ok((old, new)) if new != old => {
            info!(
                old,
                new, "open file limit (RLIMIT_NOFILE) raised to its hard limit"
            )
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot raise the open file limit"),
    }
    crate::private_fs::create_dir(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create data dir {} (use --data-dir)",
            cfg.data_dir.display()
        )
    })?;
    let host = cfg.host_name();
    let map_file = cfg.tftp.load_map_file()?.map(Arc::new);
    let root = cfg.tftp_root();
    prepare_root(&root)?;
    let store = Arc::new(
        Store::open(cfg.data_dir.join("baton.db"))
            .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?,
    );
    let blobs = Arc::new(
        BlobStore::open(cfg.data_dir.join("blobs")).context("cannot open the blob store")?,
    );
    let renderer = match &cfg.template_dir {
        Some(d) => {
            Renderer::load(d).with_context(|| format!("templates in {} refused", d.display()))?
        }
        None => Renderer::embedded().context("built-in templates refused")?,
    };
    let token = api_token(&cfg)?;
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();

    let tls = cfg.tls.material().context("[tls] refused")?;
    // HTTP first: peers must reach this host while it joins the cluster.
    let listener = crate::http::bind(cfg.http.listen).await?;
    let http_addr = listener
        .local_addr()
        .context("http listener has no address")?;
    let boot_listener = match cfg.http.boot_listen {
        Some(a) => Some(crate::http::bind(a).await?),
        None => None,
    };
    let boot_addr = match &boot_listener {
        Some(l) => Some(
            l.local_addr()
                .context("http boot listener has no address")?,
        ),
        None => None,
    };
    let advertise = advertise_url(
        cfg.cluster.advertise_url.as_deref(),
        http_addr,
        tls.is_some(),
    );
    let started = crate::cluster::start(
        &cfg,
        &host,
        &advertise,
        store.clone(),
        metrics.clone(),
        tls.as_ref(),
    )
    .await?;
    let (proposer, feed) = (started.proposer.clone(), started.feed.clone());
    let elector = tokio::spawn(crate::store::raft::elect::run(
        proposer.raft().clone(),
        proposer.node_id(),
        proposer.peers().clone(),
        started.election.clone(),
        shutdown.clone(),
    ));
    let lease_times = cfg.lease_times();
    let bindings = crate::bindings::Bindings::default();
    let gate =
        Gate::new(&host, store.clone(), lease_times, bindings.clone()).with_access(cfg.node_files);
    let served = ServedBlobs::new(blobs.clone(), store.clone(), cfg.tftp.cache_bytes);
    let boot_file = cfg.data_dir.join("boots.db");
    let local_boots = Arc::new(
        crate::boots::local::LocalBoots::open(&boot_file)
            .with_context(|| format!("cannot open the boot records {}", boot_file.display()))?,
    );
    let (boots, boot_queue) = crate::boots::BootRecorder::new(
        &host,
        store.clone(),
        bindings.clone(),
        local_boots.clone(),
        Arc::default(),
        cfg.boots.rules(),
    );
    boots.reload();
    let boot_writer = tokio::spawn(crate::boots::recorder::run_writer(
        boot_queue,
        local_boots,
        boots.metrics().clone(),
        cfg.boots.retention(),
        shutdown.clone(),
    ));
    let replication = ReplicationProgress::default();
    let policy = crate::ownership::reconcile::Policy {
        capacity: cfg.ownership.max_nodes_per_host,
        max_migrations: cfg.ownership.max_concurrent_migrations,
    };
    let app = Arc::new(App {
        host: host.clone(),
        group: cfg.group.clone(),
        store: store.clone(),
        proposer: proposer.clone(),
        election: started.election.clone(),
        gate: gate.clone(),
        blobs: served.clone(),
        renderer: CurrentRenderer::new(renderer),
        metrics: metrics.clone(),
        feed: feed.clone(),
        replication: replication.clone(),
        secret: cfg.cluster.secret.clone(),
        boots: boots.clone(),
        policy,
    });
    let shared = DirSource::new(&root, cfg.tftp.cache_bytes)
        .with_context(|| format!("cannot open TFTP root {}", root.display()))?;
    info!(host = %host, group = %cfg.group, root = %shared.canonical_root().display(), data_dir = %cfg.data_dir.display(), "baton starting");
    let paths = PathRules::new(shared.roots()).with_map(map_file);
    if let Some(m) = paths.map() {
        info!(rules = m.len(), file = ?cfg.tftp.map_file, "tftp map file loaded");
    }
    // An ingested tree that is also the TFTP root: its per-node files are served
    // from the store only (adopted whole), never straight from the directory.
    let claims = cfg
        .ingest
        .dir
        .as_ref()
        .and_then(|d| d.canonicalize().ok())
        .is_some_and(|d| d == shared.canonical_root());
    let mut source = StoreSource::new(gate.clone(), store.clone(), served, shared);
    if claims {
        source = source.with_claimed(|p| crate::ingest::layout::classify(p).is_node());
    }
    let source = Arc::new(source);
    // TFTP bound before this host registers: the address it registers is the bound one.
    let capture = match &cfg.capture {
        Some(p) => Some(
            Capture::create(p)
                .with_context(|| format!("cannot create capture file {}", p.display()))?,
        ),
        None => None,
    };
    let tftp = TftpServer::bind(
        cfg.tftp.clone(),
        source.clone(),
        paths,
        metrics.clone(),
        shutdown.clone(),
    )?
    .with_capture(capture.clone())
    .with_boots(boots.clone());
    let http_cfg = cfg.http.clone();
    let main = crate::http::Listener {
        routes: crate::http::Routes::All,
        tls: match &tls {
            Some(m) => Some((
                m.server_config()?,
                m.peer_auth == crate::tls::PeerAuth::Mtls,
            )),
            None => None,
        },
    };
    let boot_task = boot_listener.map(|l| {
        let (app, source, shutdown) = (app.clone(), source.clone(), shutdown.clone());
        let (token, http_cfg) = (token.clone(), http_cfg.clone());
        let how = crate::http::Listener {
            routes: crate::http::Routes::Boot,
            tls: None,
        };
        tokio::spawn(async move {
            crate::http::serve(l, how, app, token, source, &http_cfg, shutdown).await
        })
    });
    let http_task = tokio::spawn({
        let (app, source, shutdown) = (app.clone(), source.clone(), shutdown.clone());
        async move { crate::http::serve(listener, main, app, token, source, &http_cfg, shutdown).await }
    });
    crate::cluster::bootstrap(&cfg, &host, &proposer, &advertise).await?;

    let reg = Command::RegisterHost {
        name: host.clone(),
        group: cfg.group.clone(),
        addresses: vec![advertise.clone(), tftp.local_addr().to_string()],
        at: now_ms(),
    };
    let sent = std::time::Instant::now();
    let out = proposer.propose(reg).await?;
    if !out.is_applied() {
        anyhow::bail!("cannot register host {host}: {out:?}");
    }
    // Registration is a heartbeat: the lease is fresh from here.
    gate.renew(sent);
    let lease = tokio::spawn(crate::ownership::lease::run(
        Renewer {
            gate: gate.clone(),
            proposer: proposer.clone(),
            store: store.clone(),
            feed: feed.clone(),
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    ));
    let reconciler = tokio::spawn(crate::ownership::reconcile::run(
        Reconciler {
            store: store.clone(),
            proposer: proposer.clone(),
            lease_times,
            policy,
            metrics: metrics.clone(),
        },
        shutdown.clone(),
    ));
    let detector = tokio::spawn(crate::boots::watch::run(
        crate::boots::watch::Detector {
            recorder: boots.clone(),
            store: store.clone(),
            proposer: proposer.clone(),
        },
        shutdown.clone(),
    ));
    let fetcher = tokio::spawn(crate::replicate::run(
        Replicator {
            host: host.clone(),
            group: cfg.group.clone(),
            store: store.clone(),
            blobs: blobs.clone(),
            proposer: proposer.clone(),
            feed: feed.clone(),
            lease_times,
            progress: replication,
            rate: cfg.cluster.replication_rate,
        },
        shutdown.clone(),
    ));
    let ingest = match &cfg.ingest.dir {
        Some(dir) => {
            let ing = crate::ingest::Ingester::new(
                dir,
                &host,
                &cfg.group,
                store.clone(),
                blobs.clone(),
                proposer.clone(),
                Duration::from_millis(cfg.ingest.quiet_ms),
            )
            .with_context(|| format!("cannot ingest {}", dir.display()))?;
            Some(tokio::spawn(crate::ingest::driver::run(
                ing,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let _watcher = match &cfg.template_dir {
        Some(d) => Some(start_template_watch(&app, d)?),
        None => None,
    };

    // HTTP boot clients are sent to the plain listener when there is one.
    let http_port = boot_addr.unwrap_or(http_addr).port();
    let dhcp = if cfg.dhcp.enabled {
        Some(DhcpServer::bind(
            cfg.dhcp.clone(),
            DhcpDeps {
                store: store.clone(),
                gate: gate.clone(),
                bindings: bindings.clone(),
                metrics: metrics.clone(),
                boots: boots.clone(),
            },
            http_port,
            capture.clone(),
        )?)
    } else {
        info!("proxy-dhcp disabled");
        if gate.access() == NodeFileAccess::Bound {
            // Bindings are learned from this host's own PXE answers: with DHCP elsewhere
            // only the addresses set on nodes get their files.
            warn!(
                node_files = "bound",
                "proxy-dhcp is off, so no node's address can be learned here and node files \
                 go only to the addresses set on nodes (baton node update ID --address IP); \
                 set node_files = \"open\" when another server answers DHCP and nodes have \
                 no addresses set"
            );
        }
        None
    };
    let bound = ListenAddrs {
        http: http_addr,
        http_boot: boot_addr,
        tftp: tftp.local_addr(),
        dhcp: dhcp.as_ref().and_then(|d| d.local_addr(Port::Dhcp)),
        pxe: dhcp.as_ref().and_then(|d| d.local_addr(Port::BootServer)),
    };
    info!(http = %bound.http, http_boot = ?bound.http_boot, tftp = %bound.tftp, dhcp = ?bound.dhcp, pxe = ?bound.pxe, "listeners bound");
    if let Some(p) = &cfg.port_file {
        write_port_file(p, &bound)
            .with_context(|| format!("cannot write the port file {}", p.display()))?;
    }
    let dhcp_task = dhcp.map(|d| tokio::spawn(d.run(shutdown.clone())));
    let tftp_task = tokio::spawn(tftp.run());

    signals.wait().await;
    info!("signal received, shutting down");
    shutdown.cancel();
    tftp_task.await.context("tftp server task failed")?;
    if let Some(t) = dhcp_task {
        let _ = t.await;
    }
    if let Some(c) = &capture {
        c.flush();
    }
    // A task stuck on a write no leader commits (no quorum) must not hold the exit:
    // each gets a few seconds, then it is aborted.
    for (name, task) in [
        ("artifact replication", fetcher),
        ("stuck boot detector", detector),
        ("lease renewal", lease),
        ("reconciler", reconciler),
        ("elector", elector),
    ]
    .into_iter()
    .chain(ingest.map(|t| ("ingest", t)))
    {
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            warn!(task = name, "did not stop within 5 s; aborted");
            abort.abort();
        }
    }
    if let Err(e) = proposer.raft().shutdown().await {
        warn!(error = %e, "replicated log did not stop cleanly");
    }
    if let Some(t) = boot_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    match tokio::time::timeout(Duration::from_secs(5), http_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "http server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "http server task failed"),
        Err(_) => warn!("http server did not stop within 5 s"),
    }
    if let Some(p) = &cfg.port_file {
        // The addresses die with the process; a stale file would send clients nowhere.
        let _ = std::fs::remove_file(p);
    }
    // Last: transfers that ended while stopping are recorded too.
    let _ = boot_writer.await;
    info!(
        transfers_completed = metrics.tftp.completed.get(),
        bytes = metrics.tftp.bytes.get(),
        "baton stopped"
    );
    Ok(())
}

/// The addresses `baton serve` actually listens on, as written to `--port-file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenAddrs {
    /// HTTP (API, HTTP boot, metrics, cluster RPC); HTTPS with `[tls]`.
    pub http: SocketAddr,
    /// The plain-HTTP boot listener (`http.boot_listen`), if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_boot: Option<SocketAddr>,
    /// TFTP listening socket.
    pub tftp: SocketAddr,
    /// Proxy-DHCP on the DHCP port (67); `None` with proxy-DHCP off.
    pub dhcp: Option<SocketAddr>,
    /// Proxy-DHCP on the PXE boot-server port (4011); `None` with proxy-DHCP off.
    pub pxe: Option<SocketAddr>,
}

/// Writes `addrs` to `path` as JSON: to a temporary file next to it, then renamed, so a
/// reader never sees a partial file.
pub fn write_port_file(path: &Path, addrs: &ListenAddrs) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let json = serde_json::to_vec(addrs).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// The URL peers reach this host at: the configured one (a port `:0` in it stands for the
/// bound HTTP port), else `http(s)://<bound address>` with 127.0.0.1 for a wildcard
/// address (`https` when the listener speaks TLS).
pub fn advertise_url(configured: Option<&str>, bound: SocketAddr, tls: bool) -> String {
    let Some(url) = configured else {
        let ip = if bound.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bound.ip()
        };
        let scheme = if tls { "https" } else { "http" };
        return format!("{scheme}://{}", SocketAddr::new(ip, bound.port()));
    };
    let url = url.trim_end_matches('/');
    let host_start = url.find("://").map_or(0, |i| i + 3);
    let host_end = url[host_start..]
        .find('/')
        .map_or(url.len(), |i| host_start + i);
    match url[host_start..host_end].strip_suffix(":0") {
        Some(host) => format!(
            "{}{host}:{}{}",
            &url[..host_start],
            bound.port(),
            &url[host_end..]
        ),
        None => url.to_string(),
    }
}

/// SIGTERM and SIGINT, installed once.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_url_takes_the_bound_port_where_none_is_fixed() {
        let bound: SocketAddr = "127.0.0.1:41873".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8069".parse().unwrap();
        let cases = [
            (None, bound, "http://127.0.0.1:41873"),
            (None, any, "http://127.0.0.1:8069"),
            (Some("http://10.0.0.1:8069/"), bound, "http://10.0.0.1:8069"),
            (Some("http://10.0.0.1:0"), bound, "http://10.0.0.1:41873"),
            (Some("http://10.0.0.1:0/"), bound, "http://10.0.0.1:41873"),
            (
                Some("https://[fd00::1]:0/baton"),
                bound,
                "https://[fd00::1]:41873/baton",
            ),
            (Some("http://mgmt-1:80"), bound, "http://mgmt-1:80"),
            (Some("http://h10:8069"), bound, "http://h10:8069"),
        ];
        for (configured, bound, want) in cases {
            assert_eq!(
                advertise_url(configured, bound, false),
                want,
                "{configured:?}"
            );
        }
        assert_eq!(advertise_url(None, bound, true), "https://127.0.0.1:41873");
    }

    #[test]
    fn port_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ports.json");
        std::fs::write(&p, "stale").unwrap();
        let a = ListenAddrs {
            http: "127.0.0.1:1".parse().unwrap(),
            http_boot: None,
            tftp: "[::1]:2".parse().unwrap(),
            dhcp: Some("0.0.0.0:3".parse().unwrap()),
            pxe: None,
        };
        write_port_file(&p, &a).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            r#"{"http":"127.0.0.1:1","tftp":"[::1]:2","dhcp":"0.0.0.0:3","pxe":null}"#
        );
        assert_eq!(serde_json::from_str::<ListenAddrs>(&text).unwrap(), a);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
