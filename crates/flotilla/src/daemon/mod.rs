//! `flotilla daemon`: one node. It serves the client API on a Unix socket,
//! and once the node is in a cluster it runs raft, the manager's loops while
//! it leads, and the agent that runs this node's tasks.

pub mod dispatch;
pub mod http;
pub mod identity;
pub mod views;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, watch, Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use flotilla_agent::{Agent, AgentConfig, Assignments, ProcessDriver};
use flotilla_manager::{
    Orchestrator, ProposeError, ProposeFuture, Proposer, Scheduler, StoreView, SystemClock,
};
use flotilla_raft::node::RaftTimings;
use flotilla_raft::{RaftError, RaftNode};
use flotilla_store::Command;
use flotilla_types::{Availability, Cluster, Node, NodeRole, NodeState};

use identity::Identity;

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
}

impl DaemonConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        DaemonConfig {
            data_dir,
            name: None,
            timings: RaftTimings::default(),
            log_cap_bytes: flotilla_agent::agent::DEFAULT_LOG_CAP_BYTES,
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

/// Proposes through the local raft member.
struct RaftProposer(Arc<RaftNode>);

impl Proposer for RaftProposer {
    fn propose(&self, command: Command) -> ProposeFuture<'_> {
        Box::pin(async move {
            self.0.propose(command).await.map_err(|e| match e {
                RaftError::NotLeader { .. } => ProposeError::NotLeader,
                other => ProposeError::Other(other.to_string()),
            })
        })
    }
}

/// This node as a member of a cluster: its identity and raft.
pub struct Member {
    pub identity: Identity,
    pub raft: Arc<RaftNode>,
}

impl Member {
    pub fn view(&self) -> StoreView {
        StoreView {
            state: self.raft.state(),
            applied: self.raft.applied(),
        }
    }
}

/// Everything the API handlers share.
pub struct NodeCtx {
    pub data_dir: PathBuf,
    pub name: String,
    /// The name given with `--name`, if any.
    explicit_name: Option<String>,
    pub hostname: String,
    timings: RaftTimings,
    log_cap_bytes: u64,
    member: RwLock<Option<Arc<Member>>>,
    init_lock: Mutex<()>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl NodeCtx {
    /// The cluster member, or None before `init`.
    pub async fn member(&self) -> Option<Arc<Member>> {
        self.member.read().await.clone()
    }

    /// Where the agent keeps task records and logs.
    pub fn agent_dir(&self) -> PathBuf {
        self.data_dir.join("agent")
    }

    /// Creates a new one-manager cluster with this node as its leader.
    pub async fn init(&self, advertise_addr: Option<String>) -> Result<Identity, InitError> {
        let _guard = self.init_lock.lock().await;
        if self.member.read().await.is_some() {
            return Err(InitError::AlreadyInCluster);
        }
        let identity = Identity {
            cluster_id: flotilla_types::new_id(rand::random()),
            node_id: flotilla_types::new_id(rand::random()),
            raft_id: 1,
        };
        let now = now_ms();
        let node = Node {
            id: identity.node_id.clone(),
            raft_id: identity.raft_id,
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            role: NodeRole::Manager,
            availability: Availability::Active,
            labels: Default::default(),
            state: NodeState::Ready,
            addr: advertise_addr.clone().unwrap_or_default(),
            version: VERSION.to_string(),
            created_at: now,
            last_seen: now,
        };
        let raft = Arc::new(
            RaftNode::start(&self.data_dir, identity.raft_id, &self.timings)
                .await
                .map_err(|e| InitError::Failed(e.to_string()))?,
        );
        if raft.is_initialized() {
            raft.shutdown().await;
            return Err(InitError::Failed(
                "the raft store in the data dir already holds a cluster, but node.json is missing; move the data dir away to start afresh".into(),
            ));
        }
        raft.initialize_single(&advertise_addr.unwrap_or_default())
            .await
            .map_err(|e| InitError::Failed(e.to_string()))?;
        raft.wait_leader(Duration::from_secs(10))
            .await
            .map_err(|e| InitError::Failed(e.to_string()))?;
        let result = raft
            .propose(Command::InitCluster {
                cluster: Cluster {
                    id: identity.cluster_id.clone(),
                    created_at: now,
                },
                node,
            })
            .await
            .map_err(|e| InitError::Failed(e.to_string()))?;
        result.map_err(|e| InitError::Failed(e.to_string()))?;
        identity::store(&self.data_dir, &identity).map_err(|e| InitError::Failed(e.to_string()))?;
        let member = Arc::new(Member {
            identity: identity.clone(),
            raft,
        });
        self.start_member(member.clone())
            .map_err(|e| InitError::Failed(e.to_string()))?;
        *self.member.write().await = Some(member);
        Ok(identity)
    }

    /// Starts what runs while this node is in a cluster.
    fn start_member(&self, member: Arc<Member>) -> Result<()> {
        let token = self.shutdown.child_token();
        let view = member.view();
        let (assign_tx, assign_rx) = watch::channel(Arc::new(Assignments::default()));
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let agent = Agent::new(
            AgentConfig {
                node_id: member.identity.node_id.clone(),
                state_dir: self.agent_dir(),
                log_cap_bytes: self.log_cap_bytes,
            },
            Arc::new(ProcessDriver::new()),
            assign_rx,
            report_tx,
        )
        .context("starting the agent")?;
        let agent_token = token.clone();
        self.tracker.spawn(async move {
            if let Err(e) = agent.run(agent_token).await {
                tracing::error!(error = %e, "agent stopped");
            }
        });
        self.tracker.spawn(dispatch::publish_assignments(
            member.raft.clone(),
            view.clone(),
            member.identity.node_id.clone(),
            assign_tx,
            token.clone(),
        ));
        self.tracker.spawn(dispatch::forward_reports(
            member.raft.clone(),
            view.clone(),
            report_rx,
            token.clone(),
        ));
        self.tracker.spawn(lead_while_leader(
            member.clone(),
            view,
            self.explicit_name.clone(),
            self.hostname.clone(),
            token,
        ));
        Ok(())
    }
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("this node is already part of a cluster")]
    AlreadyInCluster,
    #[error("init failed: {0}")]
    Failed(String),
}

/// Runs the manager's loops whenever this member leads, and stops them when
/// it no longer does.
async fn lead_while_leader(
    member: Arc<Member>,
    view: StoreView,
    name: Option<String>,
    hostname: String,
    shutdown: CancellationToken,
) {
    let mut metrics = member.raft.raft().metrics();
    let mut leading: Option<CancellationToken> = None;
    loop {
        let is_leader = member.raft.is_leader();
        match (is_leader, &leading) {
            (true, None) => {
                tracing::info!("became leader: starting orchestrator and scheduler");
                let token = shutdown.child_token();
                let proposer: Arc<dyn Proposer> = Arc::new(RaftProposer(member.raft.clone()));
                let clock = Arc::new(SystemClock);
                tokio::spawn(
                    Orchestrator::new(view.clone(), proposer.clone(), clock.clone())
                        .run(token.clone()),
                );
                tokio::spawn(Scheduler::new(view.clone(), proposer, clock).run(token.clone()));
                tokio::spawn(refresh_own_node(
                    member.clone(),
                    name.clone(),
                    hostname.clone(),
                ));
                leading = Some(token);
            }
            (false, Some(token)) => {
                tracing::info!("no longer leader: stopping orchestrator and scheduler");
                token.cancel();
                leading = None;
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = metrics.changed() => if r.is_err() { break },
        }
    }
    if let Some(token) = leading {
        token.cancel();
    }
}

/// Marks this node ready with its current name, address and version.
async fn refresh_own_node(member: Arc<Member>, name: Option<String>, hostname: String) {
    let node = {
        let state = member.view();
        let state = state.read();
        state.nodes.get(&member.identity.node_id).cloned()
    };
    let Some(mut node) = node else { return };
    node.state = NodeState::Ready;
    node.last_seen = now_ms();
    node.version = VERSION.to_string();
    // A name given with --name wins; otherwise the stored one stays (it may
    // have been chosen at init from an older host name).
    if let Some(name) = name {
        node.name = name;
    }
    node.hostname = hostname;
    if let Err(e) = member.raft.propose(Command::UpsertNode { node }).await {
        tracing::warn!(error = %e, "could not refresh this node's record");
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
    let hostname = hostname();
    let ctx = Arc::new(NodeCtx {
        data_dir: config.data_dir.clone(),
        name: config.name.clone().unwrap_or_else(|| hostname.clone()),
        explicit_name: config.name.clone(),
        hostname,
        timings: config.timings.clone(),
        log_cap_bytes: config.log_cap_bytes,
        member: RwLock::new(None),
        init_lock: Mutex::new(()),
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
    });
    if let Some(identity) = identity {
        let raft = RaftNode::start(&config.data_dir, identity.raft_id, &config.timings)
            .await
            .with_context(|| format!("starting raft in {}", config.data_dir.display()))?;
        let member = Arc::new(Member {
            identity,
            raft: Arc::new(raft),
        });
        ctx.start_member(member.clone())?;
        *ctx.member.write().await = Some(member);
        tracing::info!("rejoined the cluster from {}", config.data_dir.display());
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
    let app = http::router(ctx.clone());
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
    if let Some(member) = ctx.member().await {
        member.raft.shutdown().await;
    }
    let _ = std::fs::remove_file(&socket);
    result.context("API server")?;
    tracing::info!("daemon stopped");
    Ok(())
}
