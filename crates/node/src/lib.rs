//! The node daemon (`flotilla daemon`): one node. It serves the client API
//! on a Unix socket (and to remote CLIs on the client API port), and once
//! the node is in a cluster it runs raft, the manager's loops while it
//! leads, the cluster port's endpoints, and the agent that runs this node's
//! tasks.
//!
//! This crate owns the node's lifecycle (init, join, leave, role changes,
//! force-new-cluster), the write path (propose, forward, quorum diagnosis),
//! the leader supervisor and the HTTP handlers. It makes no orchestration
//! decisions (those are `flotilla-manager`'s pure functions) and holds no
//! CLI code.
//!
//! # Layout
//! - [`api`]: the client API, one file per resource: thin handlers.
//! - [`control`]: the rules of every change the API makes, over a read
//!   view of the store and a writer trait (unit tested without raft).
//! - [`cluster`]: the cluster port's endpoints (raft, sessions, joins).
//! - [`tasklogs`]: the cluster endpoint serving this node's task logs.
//! - [`dispatcher`], [`session`]: agent sessions, both sides.
//! - [`views`]: the API's views of the store (pure).
//! - [`certs`], [`identity`], [`wire`], [`host`]: node files, cluster-port
//!   bodies, facts about this machine.
//! - [`keyring`], `autolock`: the cluster's keys sealed under an unlock
//!   key, and a running manager's side of it.

pub mod api;
mod autolock;
pub mod certs;
pub mod cluster;
pub mod contact;
pub mod control;
pub mod dashboard;
pub mod dispatcher;
pub mod host;
pub mod identity;
pub mod keyring;
mod leader;
mod lifecycle;
mod member;
pub mod meshstats;
pub mod metrics;
mod recovery;
mod renew;
pub mod restore;
mod scheduled_backups;
pub mod session;
pub mod tasklogs;
pub mod views;
pub mod wire;
mod write;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use flotilla_raft::node::RaftTimings;

pub use lifecycle::{InitError, NodeCtx};
pub use member::Member;
pub use write::{ProposeFailure, WRITE_BUDGET};

use recovery::{rewrite_for_new_cluster, FORCE_MARKER};

/// Flotilla's version, as nodes report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How a daemon is set up.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    /// Node name; the host name when not given.
    pub name: Option<String>,
    pub timings: RaftTimings,
    pub log_cap_bytes: u64,
    /// Address of the cluster port (node-to-node, mutual TLS).
    pub listen: String,
    /// Address other nodes reach this one at: `HOST` or `HOST:PORT`.
    pub advertise: Option<String>,
    /// Client API port for remote CLIs (HTTPS, client certificates of the
    /// cluster CA); `None` serves the local socket only.
    pub api_listen: Option<String>,
    /// A node without a heartbeat this long is marked down.
    pub node_timeout: Duration,
    /// Serve `/metrics` plainly (no TLS) on this address too.
    pub metrics_listen: Option<String>,
    /// On SIGTERM, leave the tasks running for the next start to adopt
    /// (an upgrade, a restart), instead of stopping them.
    pub keep_tasks_on_stop: bool,
}

/// The default cluster port (node-to-node traffic: raft, agent sessions,
/// joins), like Swarm's 2377.
pub const DEFAULT_CLUSTER_PORT: u16 = 4280;

/// The default client API port (remote CLIs, load balancers' leader check).
pub const DEFAULT_API_PORT: u16 = 4281;

/// How long node certificates are valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long the node certificates this manager signs are valid:
/// [`CERT_VALIDITY`]. TEST ONLY: `FLOTILLA_TEST_CERT_VALIDITY=SECONDS` in
/// the daemon's environment makes them short, so that a test sees a
/// certificate near its expiry renewed (docs/operations.md).
pub fn cert_validity() -> Duration {
    static VALIDITY: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *VALIDITY.get_or_init(|| {
        test_setting::<u64>("FLOTILLA_TEST_CERT_VALIDITY")
            .filter(|s| *s >= 10)
            .map_or(CERT_VALIDITY, Duration::from_secs)
    })
}

/// How long a daemon that re-executes itself after answering a request
/// (force new cluster, restore) waits first, so that the answer reaches
/// the client. TEST ONLY: `FLOTILLA_TEST_REEXEC_DELAY_MS` makes it longer,
/// to hold open the window in which the old run still answers.
pub(crate) fn reexec_delay() -> Duration {
    test_setting::<u64>("FLOTILLA_TEST_REEXEC_DELAY_MS")
        .map_or(Duration::from_millis(200), Duration::from_millis)
}

/// A test-only setting from the daemon's environment, if set and valid.
fn test_setting<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

/// The raft entry format this node says it reads:
/// [`flotilla_store::FORMAT`]. TEST ONLY: `FLOTILLA_TEST_ENTRY_FORMAT=N`
/// (lower) makes it announce an older one, as a node of an older Flotilla
/// does, for the upgrade test (docs/operations.md); it does not make the
/// node refuse newer entries.
pub fn announced_format() -> u32 {
    static FORMAT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *FORMAT.get_or_init(|| {
        test_setting::<u32>("FLOTILLA_TEST_ENTRY_FORMAT")
            .map_or(flotilla_store::FORMAT, |f| f.min(flotilla_store::FORMAT))
    })
}

impl DaemonConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        DaemonConfig {
            data_dir,
            name: None,
            timings: RaftTimings::default(),
            log_cap_bytes: flotilla_agent::agent::DEFAULT_LOG_CAP_BYTES,
            listen: format!("0.0.0.0:{DEFAULT_CLUSTER_PORT}"),
            advertise: None,
            api_listen: Some(format!("0.0.0.0:{DEFAULT_API_PORT}")),
            node_timeout: dispatcher::NODE_TIMEOUT,
            metrics_listen: None,
            keep_tasks_on_stop: false,
        }
    }
}

/// The path of the API socket in a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("flotilla.sock")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The address other nodes should use: the advertised one (its port
/// defaulting to the bound port), else the bound address when it is
/// specific, else loopback.
fn advertised(advertise: Option<&str>, bound: SocketAddr) -> String {
    match advertise {
        Some(a) if a.parse::<SocketAddr>().is_ok() => a.to_string(),
        Some(a) if a.contains(':') && !a.starts_with('[') && a.matches(':').count() == 1 => {
            a.to_string()
        }
        Some(a) => format!("{a}:{}", bound.port()),
        None if !bound.ip().is_unspecified() => bound.to_string(),
        None => format!("127.0.0.1:{}", bound.port()),
    }
}

/// Makes sure the data dir exists, is private and writable, and that no
/// other daemon uses it. Returns the lock file, held while it is open.
fn prepare_data_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| {
        format!(
            "cannot set the permissions of the data dir {}",
            dir.display()
        )
    })?;
    let lock_path = dir.join("daemon.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("the data dir {} is not writable", dir.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another flotilla daemon is already using the data dir {}",
            dir.display()
        );
    }
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("the data dir {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(lock)
}

/// Runs a node until `shutdown` is cancelled.
pub async fn run(config: DaemonConfig, shutdown: CancellationToken) -> Result<()> {
    let _lock = prepare_data_dir(&config.data_dir)?;
    let socket = socket_path(&config.data_dir);
    if socket.as_os_str().len() >= 100 {
        bail!(
            "the data dir path is too long for a Unix socket ({} bytes); use a shorter --data-dir",
            socket.as_os_str().len()
        );
    }
    let identity = identity::load(&config.data_dir)?;
    let tls = certs::NodeTls::load(&config.data_dir)?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on the cluster port {}", config.listen))?;
    let bound = listener.local_addr().context("cluster port address")?;
    let cluster_addr = advertised(config.advertise.as_deref(), bound);
    let api_listener = match &config.api_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on the client API port {a}"))?,
        ),
        None => None,
    };
    let api_bound = match &api_listener {
        Some(l) => Some(l.local_addr().context("client API port address")?),
        None => None,
    };
    let hostname = hostname();
    let ctx = Arc::new(NodeCtx {
        data_dir: config.data_dir.clone(),
        name: config.name.clone().unwrap_or_else(|| hostname.clone()),
        explicit_name: config.name.clone(),
        hostname,
        cluster_addr: std::sync::RwLock::new(cluster_addr.clone()),
        bound,
        timings: config.timings.clone(),
        log_cap_bytes: config.log_cap_bytes,
        keep_tasks_on_stop: config.keep_tasks_on_stop,
        node_timeout: config.node_timeout,
        api_bound,
        phase: Mutex::new(lifecycle::Phase::Idle(lifecycle::Ports {
            cluster: Some(listener),
            api: api_listener,
        })),
        self_ref: std::sync::OnceLock::new(),
        member: RwLock::new(None),
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        mesh: std::sync::RwLock::new(None),
        keyring: Default::default(),
        counters: Default::default(),
        board: Default::default(),
        locked: Default::default(),
        restarting: Default::default(),
    });
    let _ = ctx.self_ref.set(Arc::downgrade(&ctx));
    if let Some(addr) = &config.metrics_listen {
        let listener = TcpListener::bind(addr.as_str())
            .await
            .with_context(|| format!("cannot listen on --metrics-listen {addr}"))?;
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "serving /metrics without TLS (--metrics-listen)");
        ctx.tracker.spawn(api::metrics::serve_plain(
            ctx.clone(),
            listener,
            shutdown.clone(),
        ));
    }
    tracing::info!(listen = %bound, advertise = %cluster_addr, api = ?api_bound, "cluster port bound");
    if let Some(mut identity) = identity {
        let forced = config.data_dir.join(FORCE_MARKER).exists();
        if forced {
            rewrite_for_new_cluster(&config.data_dir, &mut identity, &ctx.cluster_addr())?;
        }
        autolock::rewrite_if_marked(&config.data_dir)?;
        let tls = tls.with_context(|| {
            format!(
                "{} has node.json but no certificates in certs/; the data dir is incomplete",
                config.data_dir.display()
            )
        })?;
        let mut phase = ctx.phase.lock().await;
        match tls {
            certs::Stored::Plain(tls) => ctx.resume(&mut phase, identity, tls, forced).await?,
            certs::Stored::Sealed(sealed) => {
                // A restart in place (renewal, force-new-cluster) hands the
                // unlock key over; a fresh start waits for the operator.
                let inherited = recovery::inherited_unlock_key()
                    .and_then(|key| sealed.open(&key).ok().map(|tls| (key, tls)));
                match inherited {
                    Some((key, tls)) => {
                        ctx.keyring.add(key);
                        ctx.resume(&mut phase, identity, tls, forced).await?
                    }
                    None => ctx.lock(
                        &mut phase,
                        lifecycle::LockedStart {
                            identity,
                            tls: sealed,
                            forced,
                        },
                    ),
                }
            }
        }
    } else {
        tracing::info!("not in a cluster yet: run 'flotilla init'");
    }

    // A socket file left by a daemon that was killed is stale: we hold the
    // data dir lock, so nobody else is listening on it.
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "serving the API");
    let app = api::router(ctx.clone());
    let server_token = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        server_token.cancelled().await;
    });
    let result = server.await;
    shutdown.cancel();
    ctx.tracker.close();
    // The agent stops tasks within their grace periods; bound the wait.
    if tokio::time::timeout(Duration::from_secs(120), ctx.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some components did not stop within 120 s");
    }
    if let Some(raft) = ctx.member().await.and_then(|m| m.raft.clone()) {
        raft.shutdown().await;
    }
    let _ = std::fs::remove_file(&socket);
    result.context("API server")?;
    tracing::info!("daemon stopped");
    Ok(())
}
