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
//! - [`api`]: the client API, one file per resource.
//! - [`cluster`]: the cluster port's endpoints (raft, sessions, joins).
//! - [`tasklogs`]: the cluster endpoint serving this node's task logs.
//! - [`dispatcher`], [`session`]: agent sessions, both sides.
//! - [`views`]: the API's views of the store (pure).
//! - [`certs`], [`identity`], [`wire`], [`host`]: node files, cluster-port
//!   bodies, facts about this machine.

pub mod api;
pub mod certs;
pub mod cluster;
pub mod dispatcher;
pub mod host;
pub mod identity;
pub mod session;
pub mod tasklogs;
pub mod views;
pub mod wire;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use flotilla_agent::{
    Agent, AgentConfig, Assignments, DockerDriver, Driver, Drivers, ProcessDriver,
};
use flotilla_manager::{
    Orchestrator, ProposeError, ProposeFuture, Proposer, Rebalancer, Scheduler, StoreView,
    SystemClock,
};
use flotilla_pki::{new_key_and_csr, Ca, JoinToken, Role};
use flotilla_raft::node::RaftTimings;
use flotilla_raft::{RaftError, RaftNode};
use flotilla_store::Command;
use flotilla_transport::{ClusterClient, Target};
use flotilla_types::{Availability, Cluster, Node, NodeRole, NodeState, Platform};

use certs::NodeTls;
use dispatcher::Dispatcher;
use identity::Identity;
use session::{LeaderFinder, SessionClient};

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
}

/// The default cluster port (node-to-node traffic: raft, agent sessions,
/// joins), like Swarm's 2377.
pub const DEFAULT_CLUSTER_PORT: u16 = 4280;

/// The default client API port (remote CLIs, load balancers' leader check).
pub const DEFAULT_API_PORT: u16 = 4281;

/// How long node certificates are valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

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

/// This node as a member of a cluster.
pub struct Member {
    pub identity: Identity,
    pub role: NodeRole,
    pub tls: NodeTls,
    pub client: ClusterClient,
    /// Managers only.
    pub raft: Option<Arc<RaftNode>>,
    /// Managers only; serves agent sessions while this manager leads.
    pub dispatcher: Option<Arc<Dispatcher>>,
}

impl Member {
    /// The store, on managers.
    pub fn view(&self) -> Option<StoreView> {
        self.raft.as_ref().map(|r| StoreView {
            state: r.state(),
            applied: r.applied(),
        })
    }
}

/// Why a proposal through this member failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeFailure {
    #[error("this node is a worker: run this command on a manager")]
    Worker,
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("no quorum: {reachable} of {managers} managers reachable (need {need})")]
    NoQuorum {
        reachable: usize,
        managers: usize,
        need: usize,
    },
    #[error("no leader is known yet ({reachable} of {managers} managers reachable); try again")]
    NoLeader { reachable: usize, managers: usize },
    #[error("forwarding to the leader at {addr}: {reason}")]
    Forward { addr: String, reason: String },
}

/// How long a write may wait for a leader before it fails: long enough to
/// ride out an election, short enough to fail fast without quorum.
pub const WRITE_BUDGET: Duration = Duration::from_millis(1500);

impl Member {
    /// Proposes a command; a follower forwards it to the leader. While no
    /// leader answers, it retries until [`WRITE_BUDGET`] runs out and then
    /// says how many managers it can reach.
    pub async fn propose(
        &self,
        command: Command,
    ) -> Result<flotilla_store::CommandResult, ProposeFailure> {
        let raft = self.raft.as_ref().ok_or(ProposeFailure::Worker)?;
        let deadline = tokio::time::Instant::now() + WRITE_BUDGET;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Each arm either answers or falls through to a retry.
            if raft.is_leader() {
                match tokio::time::timeout(left, raft.propose(command.clone())).await {
                    Ok(Ok(r)) => return Ok(r),
                    Ok(Err(RaftError::NotLeader { .. } | RaftError::Timeout(_))) | Err(_) => {}
                    Ok(Err(e)) => return Err(e.into()),
                }
            } else if let Some(addr) = self.leader_addr() {
                let forwarded = self
                    .client
                    .post::<_, (flotilla_store::CommandResult, u64)>(
                        Target::Manager,
                        &addr,
                        "/cluster/v1/propose",
                        &command,
                        left.max(Duration::from_millis(100)),
                    )
                    .await;
                match forwarded {
                    Ok((r, index)) => {
                        // Read your writes: the caller reads this member's
                        // state next, so wait until it has the change.
                        if !raft.wait_applied(index, Duration::from_secs(2)).await {
                            tracing::warn!(index, "forwarded write not applied here within 2 s");
                        }
                        return Ok(r);
                    }
                    Err(e) if e.is_unreachable() => {}
                    Err(flotilla_transport::TransportError::Status { status: 503, .. }) => {}
                    Err(e) => {
                        return Err(ProposeFailure::Forward {
                            addr,
                            reason: e.to_string(),
                        })
                    }
                }
            }
            if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(self.quorum_failure().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Why no write can commit: counts the managers that answer a TCP
    /// connect on their cluster port right now.
    async fn quorum_failure(&self) -> ProposeFailure {
        let addrs: Vec<String> = match self.view() {
            Some(v) => dispatcher::manager_addrs(&v.read()),
            None => vec![],
        };
        let managers = addrs.len().max(1);
        let mut probes = tokio::task::JoinSet::new();
        for addr in addrs {
            probes.spawn(async move {
                let connect = tokio::net::TcpStream::connect(addr.as_str());
                matches!(
                    tokio::time::timeout(Duration::from_millis(200), connect).await,
                    Ok(Ok(_))
                )
            });
        }
        let reachable = probes.join_all().await.into_iter().filter(|ok| *ok).count();
        let need = managers / 2 + 1;
        if reachable < need {
            ProposeFailure::NoQuorum {
                reachable,
                managers,
                need,
            }
        } else {
            ProposeFailure::NoLeader {
                reachable,
                managers,
            }
        }
    }
}

impl Member {
    /// Takes the manager with raft ID `raft_id` out of the voters: here if
    /// this member leads, else through the leader.
    pub async fn remove_from_raft(&self, raft_id: u64) -> Result<(), String> {
        let raft = self.raft.as_ref().ok_or("this node is a worker")?;
        if raft.is_leader() {
            return raft.remove_voter(raft_id).await.map_err(|e| e.to_string());
        }
        let addr = self.leader_addr().ok_or("no leader is known")?;
        self.client
            .post::<_, ()>(
                Target::Manager,
                &addr,
                "/cluster/v1/remove-manager",
                &raft_id,
                Duration::from_secs(12),
            )
            .await
            .map_err(|e| e.to_string())
    }
}

impl LeaderFinder for Member {
    fn local(&self) -> Option<Arc<Dispatcher>> {
        match (&self.raft, &self.dispatcher) {
            (Some(r), Some(d)) if r.is_leader() => Some(d.clone()),
            _ => None,
        }
    }

    fn leader_addr(&self) -> Option<String> {
        let raft = self.raft.as_ref()?;
        let leader = raft.leader()?;
        let state = raft.state();
        let state = state.read().ok()?;
        dispatcher::leader_addr(&state, leader)
    }
}

/// Everything the API handlers share.
pub struct NodeCtx {
    pub data_dir: PathBuf,
    pub name: String,
    /// The name given with `--name`, if any.
    explicit_name: Option<String>,
    pub hostname: String,
    /// Where other nodes reach this node's cluster port.
    cluster_addr: std::sync::RwLock<String>,
    /// The address the cluster port is bound to.
    bound: SocketAddr,
    timings: RaftTimings,
    log_cap_bytes: u64,
    node_timeout: Duration,
    listener: std::sync::Mutex<Option<TcpListener>>,
    /// Cancels what runs for the current membership (leave).
    member_token: std::sync::Mutex<Option<CancellationToken>>,
    /// The agent's task, to wait for it to stop the tasks on leave.
    agent_done: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    api_listener: std::sync::Mutex<Option<TcpListener>>,
    /// The port the client API is bound to, if any.
    api_port: Option<u16>,
    /// Set once the member runs; the remote API router needs it.
    self_ref: std::sync::OnceLock<std::sync::Weak<NodeCtx>>,
    member: RwLock<Option<Arc<Member>>>,
    init_lock: Mutex<()>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Why `init` or `join` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("this node is already part of a cluster")]
    AlreadyInCluster,
    #[error("{0}")]
    BadToken(String),
    #[error("{0}")]
    Refused(String),
    #[error("init failed: {0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> InitError {
    InitError::Failed(e.to_string())
}

fn secret() -> String {
    flotilla_pki::token::new_secret(rand::random())
}

impl NodeCtx {
    /// The cluster member, or None before `init` or `join`.
    pub async fn member(&self) -> Option<Arc<Member>> {
        self.member.read().await.clone()
    }

    /// Where other nodes reach this node's cluster port.
    pub fn cluster_addr(&self) -> String {
        match self.cluster_addr.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Where remote clients reach this node's API: the cluster address's
    /// host with the API port; empty without an API port.
    pub fn api_addr(&self) -> String {
        match self.api_port {
            Some(port) => {
                let cluster = self.cluster_addr();
                let host = cluster.rsplit_once(':').map(|(h, _)| h).unwrap_or(&cluster);
                format!("{host}:{port}")
            }
            None => String::new(),
        }
    }

    /// `init`/`join --advertise-addr` overrides the daemon's address.
    fn set_advertise(&self, advertise: Option<&str>) {
        if let Some(a) = advertise {
            let addr = advertised(Some(a), self.bound);
            if let Ok(mut slot) = self.cluster_addr.write() {
                *slot = addr;
            }
        }
    }

    /// Where the agent keeps task records and logs.
    pub fn agent_dir(&self) -> PathBuf {
        self.data_dir.join("agent")
    }

    /// Creates a new one-manager cluster with this node as its leader, and
    /// the cluster CA.
    pub async fn init(&self, advertise: Option<&str>) -> Result<Identity, InitError> {
        let _guard = self.init_lock.lock().await;
        if self.member.read().await.is_some() {
            return Err(InitError::AlreadyInCluster);
        }
        self.set_advertise(advertise);
        let cluster_id = flotilla_types::new_id(rand::random());
        let node_id = flotilla_types::new_id(rand::random());
        let ca_material = Ca::create(&cluster_id).map_err(failed)?;
        let ca = Ca::load(&ca_material).map_err(failed)?;
        let key = new_key_and_csr().map_err(failed)?;
        let cert_pem = ca
            .sign_node(&key.csr_pem, &node_id, Role::Manager, CERT_VALIDITY)
            .map_err(failed)?;
        let tls = NodeTls {
            ca_pem: ca_material.cert_pem.clone(),
            cert_pem,
            key_pem: key.key_pem,
        };
        let identity = Identity {
            cluster_id: cluster_id.clone(),
            node_id: node_id.clone(),
            raft_id: 1,
            managers: vec![self.cluster_addr()],
        };
        let now = now_ms();
        let node = Node {
            id: node_id,
            raft_id: identity.raft_id,
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            role: NodeRole::Manager,
            availability: Availability::Active,
            labels: Default::default(),
            state: NodeState::Ready,
            addr: self.cluster_addr(),
            api_addr: self.api_addr(),
            version: VERSION.to_string(),
            resources: host::resources(),
            platform: Platform::current(),
            created_at: now,
            last_seen: now,
        };
        let client = tls.client(&self.data_dir).map_err(failed)?;
        let raft = Arc::new(
            RaftNode::start_with(
                &self.data_dir,
                identity.raft_id,
                &self.timings,
                Some(client),
            )
            .await
            .map_err(failed)?,
        );
        if raft.is_initialized() {
            raft.shutdown().await;
            return Err(InitError::Failed(
                "the raft store in the data dir already holds a cluster, but node.json is missing; move the data dir away to start afresh".into(),
            ));
        }
        raft.initialize_single(&self.cluster_addr())
            .await
            .map_err(failed)?;
        raft.wait_leader(Duration::from_secs(10))
            .await
            .map_err(failed)?;
        let cluster = Cluster {
            ca_cert_pem: ca_material.cert_pem,
            ca_key_pem: ca_material.key_pem,
            worker_secret: secret(),
            manager_secret: secret(),
            ..Cluster::bare(cluster_id, now)
        };
        raft.propose(Command::InitCluster { cluster, node })
            .await
            .map_err(failed)?
            .map_err(failed)?;
        tls.store(&self.data_dir).map_err(failed)?;
        identity::store(&self.data_dir, &identity).map_err(failed)?;
        let member = self
            .make_member(identity.clone(), tls, Some(raft))
            .map_err(failed)?;
        self.start_member(member.clone(), vec![]).map_err(failed)?;
        *self.member.write().await = Some(member);
        Ok(identity)
    }

    /// Joins the cluster of the manager at `manager_addr` with `token`.
    pub async fn join(
        &self,
        token: &str,
        manager_addr: &str,
        advertise: Option<&str>,
    ) -> Result<Identity, InitError> {
        let _guard = self.init_lock.lock().await;
        if self.member.read().await.is_some() {
            return Err(InitError::AlreadyInCluster);
        }
        self.set_advertise(advertise);
        let token: JoinToken = token
            .parse()
            .map_err(|e: flotilla_pki::TokenError| InitError::BadToken(e.to_string()))?;
        let pinned =
            flotilla_pki::tls::pinned_client_config(&token.ca_fingerprint).map_err(failed)?;
        let client = ClusterClient::new(pinned).map_err(failed)?;
        let key = new_key_and_csr().map_err(failed)?;
        let request = wire::JoinRequest {
            secret: token.secret.clone(),
            csr_pem: key.csr_pem,
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            addr: self.cluster_addr(),
            api_addr: self.api_addr(),
            version: VERSION.to_string(),
            resources: host::resources(),
            platform: Platform::current(),
        };
        let answer: wire::JoinResponse = client
            .post(
                Target::Node,
                manager_addr,
                "/join/v1/join",
                &request,
                Duration::from_secs(15),
            )
            .await
            .map_err(|e| match e {
                flotilla_transport::TransportError::Status { message, .. } => {
                    InitError::Refused(message)
                }
                other => InitError::Refused(format!("cannot join through {manager_addr}: {other}")),
            })?;
        if flotilla_pki::pem_fingerprint(&answer.ca_pem).map_err(failed)? != token.ca_fingerprint {
            return Err(InitError::Refused(
                flotilla_pki::tls::PIN_MISMATCH.to_string(),
            ));
        }
        let tls = NodeTls {
            ca_pem: answer.ca_pem,
            cert_pem: answer.cert_pem,
            key_pem: key.key_pem,
        };
        let identity = Identity {
            cluster_id: answer.cluster_id,
            node_id: answer.node_id,
            raft_id: answer.raft_id,
            managers: answer.managers.clone(),
        };
        tls.store(&self.data_dir).map_err(failed)?;
        identity::store(&self.data_dir, &identity).map_err(failed)?;
        let raft = if answer.role == "manager" {
            let client = tls.client(&self.data_dir).map_err(failed)?;
            Some(Arc::new(
                RaftNode::start_with(
                    &self.data_dir,
                    identity.raft_id,
                    &self.timings,
                    Some(client),
                )
                .await
                .map_err(failed)?,
            ))
        } else {
            None
        };
        let member = self
            .make_member(identity.clone(), tls, raft)
            .map_err(failed)?;
        self.start_member(member.clone(), answer.managers.clone())
            .map_err(failed)?;
        *self.member.write().await = Some(member.clone());
        if member.raft.is_some() {
            // start_member asks the managers to add this one to the raft
            // group (and keeps asking until it is in).
            // Answer once this manager holds the cluster's state, so that
            // the next command here sees it.
            if let Some(raft) = &member.raft {
                let mut applied = raft.applied();
                let state = raft.state();
                let me = identity.node_id.clone();
                let has_me = move |_: &u64| {
                    state
                        .read()
                        .map(|s| s.nodes.contains_key(&me))
                        .unwrap_or(false)
                };
                let caught_up =
                    tokio::time::timeout(Duration::from_secs(40), applied.wait_for(has_me)).await;
                if !matches!(caught_up, Ok(Ok(_))) {
                    return Err(InitError::Refused(
                        "joined, but this manager did not receive the cluster state within 40 s (is the leader reachable at this node's address?)".into(),
                    ));
                }
            }
        }
        Ok(identity)
    }

    /// Arranges for this manager to restart as the only manager of a new
    /// raft group with all of the current state (see [`rewrite_for_new_cluster`]).
    pub async fn force_new_cluster(&self) -> Result<Identity, InitError> {
        let _guard = self.init_lock.lock().await;
        let member = self.member.read().await.clone().ok_or_else(|| {
            InitError::Refused("this node is not in a cluster: nothing to recover".into())
        })?;
        let Some(raft) = member.raft.clone() else {
            return Err(InitError::Refused(
                "this node is a worker: run --force-new-cluster on a surviving manager".into(),
            ));
        };
        std::fs::write(self.data_dir.join(FORCE_MARKER), b"requested\n").map_err(failed)?;
        std::fs::File::open(&self.data_dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
        tracing::warn!("force-new-cluster requested: restarting into a new raft group");
        tokio::spawn(async move {
            // Let the answer reach the client first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            raft.shutdown().await;
            reexec();
        });
        Ok(member.identity.clone())
    }

    /// `flotilla leave`: this node stops its tasks and forgets the cluster
    /// (its files are moved aside); the daemon keeps running, ready to
    /// `init` or `join` again. A manager first leaves the raft group; the
    /// last manager, or one whose leaving breaks quorum, needs `force`.
    pub async fn leave(&self, force: bool) -> Result<(), InitError> {
        let _guard = self.init_lock.lock().await;
        let member = self
            .member
            .read()
            .await
            .clone()
            .ok_or_else(|| InitError::Refused("this node is not in a cluster".into()))?;
        if let Some(view) = member.view() {
            let (managers, ready) = {
                let s = view.read();
                let managers: Vec<_> = s
                    .nodes
                    .values()
                    .filter(|n| n.role == NodeRole::Manager)
                    .cloned()
                    .collect();
                let ready = managers
                    .iter()
                    .filter(|n| n.state == NodeState::Ready)
                    .count();
                (managers.len(), ready)
            };
            if managers <= 1 && !force {
                return Err(InitError::Refused(
                    "this node is the last manager: leaving ends the cluster; use --force".into(),
                ));
            }
            let remaining = managers.saturating_sub(1);
            let reachable_after = ready.saturating_sub(1);
            if remaining > 0 && reachable_after < remaining / 2 + 1 && !force {
                return Err(InitError::Refused(format!(
                    "leaving would break quorum: {reachable_after} of {remaining} remaining managers reachable (need {}); use --force",
                    remaining / 2 + 1
                )));
            }
            if remaining > 0 {
                // Out of the raft group first, through the leader.
                let out = member.remove_from_raft(member.identity.raft_id).await;
                if let Err(e) = out {
                    if !force {
                        return Err(InitError::Refused(format!(
                            "cannot leave the raft group: {e}; use --force"
                        )));
                    }
                }
            }
        }
        let token = self.member_token.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = token {
            t.cancel();
        }
        let agent = self.agent_done.lock().ok().and_then(|mut a| a.take());
        if let Some(a) = agent {
            // The agent stops every task within its grace period.
            let _ = tokio::time::timeout(Duration::from_secs(120), a).await;
        }
        if let Some(raft) = &member.raft {
            raft.shutdown().await;
        }
        *self.member.write().await = None;
        let aside = self.data_dir.join(format!("left-{}", now_ms()));
        std::fs::create_dir_all(&aside).map_err(failed)?;
        for name in ["node.json", "certs", "raft.redb", "agent"] {
            let from = self.data_dir.join(name);
            if from.exists() {
                std::fs::rename(&from, aside.join(name)).map_err(failed)?;
            }
        }
        // The cluster port is bound again for a later init or join.
        match TcpListener::bind(self.bound).await {
            Ok(l) => {
                if let Ok(mut slot) = self.listener.lock() {
                    *slot = Some(l);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot bind the cluster port again"),
        }
        tracing::info!(old = %aside.display(), "left the cluster");
        Ok(())
    }

    fn make_member(
        &self,
        identity: Identity,
        tls: NodeTls,
        raft: Option<Arc<RaftNode>>,
    ) -> Result<Arc<Member>> {
        let client = tls.client(&self.data_dir)?;
        let role = match tls.identity()?.role {
            Role::Manager => NodeRole::Manager,
            Role::Worker => NodeRole::Worker,
            Role::Client => bail!("certs/node.crt is a client certificate, not a node's"),
        };
        let dispatcher = raft.as_ref().map(|r| {
            Arc::new(Dispatcher::new(
                r.clone(),
                StoreView {
                    state: r.state(),
                    applied: r.applied(),
                },
                self.node_timeout,
            ))
        });
        Ok(Arc::new(Member {
            identity,
            role,
            tls,
            client,
            raft,
            dispatcher,
        }))
    }

    /// Starts what runs while this node is in a cluster: the cluster port,
    /// the agent and its session, and on managers the leader's loops.
    fn start_member(&self, member: Arc<Member>, managers: Vec<String>) -> Result<()> {
        let token = self.shutdown.child_token();
        if let Ok(mut slot) = self.member_token.lock() {
            *slot = Some(token.clone());
        }
        if let Some(listener) = self.listener.lock().ok().and_then(|mut l| l.take()) {
            let config = member.tls.server_config(&self.data_dir)?;
            let router = cluster::router(member.clone(), self.agent_dir());
            self.tracker.spawn(flotilla_transport::serve(
                listener,
                Arc::new(std::sync::RwLock::new(config)),
                router,
                token.clone(),
            ));
        }
        if member.raft.is_some() {
            if let Some(listener) = self.api_listener.lock().ok().and_then(|mut l| l.take()) {
                if let Some(ctx) = self.self_ref.get().and_then(|w| w.upgrade()) {
                    let config = member.tls.server_config(&self.data_dir)?;
                    self.tracker.spawn(flotilla_transport::serve(
                        listener,
                        Arc::new(std::sync::RwLock::new(config)),
                        api::remote_router(ctx),
                        token.clone(),
                    ));
                }
            }
        }
        let (assign_tx, assign_rx) = watch::channel(Arc::new(Assignments::default()));
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let agent = Agent::new(
            AgentConfig {
                node_id: member.identity.node_id.clone(),
                state_dir: self.agent_dir(),
                log_cap_bytes: self.log_cap_bytes,
            },
            // The docker driver connects lazily (DOCKER_HOST or the default
            // socket): a node without Docker rejects only docker tasks.
            Drivers::new([
                Arc::new(ProcessDriver::new()) as Arc<dyn Driver>,
                Arc::new(DockerDriver::from_env()) as Arc<dyn Driver>,
            ]),
            assign_rx,
            report_tx,
        )
        .context("starting the agent")?;
        let agent_token = token.clone();
        let agent_done = self.tracker.spawn(async move {
            if let Err(e) = agent.run(agent_token).await {
                tracing::error!(error = %e, "agent stopped");
            }
        });
        if let Ok(mut slot) = self.agent_done.lock() {
            *slot = Some(agent_done);
        }
        let mut known = managers;
        known.extend(member.identity.managers.iter().cloned());
        known.dedup();
        let (role_tx, mut role_rx) = mpsc::unbounded_channel::<(String, u64, Option<String>)>();
        let session = SessionClient {
            node_id: member.identity.node_id.clone(),
            addr: self.cluster_addr(),
            api_addr: self.api_addr(),
            client: member.client.clone(),
            finder: member.clone(),
            managers: known.clone(),
            role: member.role.as_str().to_string(),
            data_dir: Some(self.data_dir.clone()),
            role_changed: role_tx,
        };
        // Promote/demote, and certificates near expiry: get a new
        // certificate and restart in place (tasks keep running).
        let renew_member = member.clone();
        let data_dir = self.data_dir.clone();
        let renew_token = token.clone();
        let renew_known = known.clone();
        let own_addr = self.cluster_addr();
        self.tracker.spawn(async move {
            loop {
                let expiring = renew_member
                    .tls
                    .identity()
                    .map(|i| (i.not_after - (now_ms() / 1000) as i64) < (CERT_VALIDITY.as_secs() / 3) as i64)
                    .unwrap_or(false);
                let mut targets = renew_known.clone();
                let reason = if expiring {
                    Some("the node certificate is due for renewal".to_string())
                } else {
                    tokio::select! {
                        _ = renew_token.cancelled() => return,
                        r = role_rx.recv() => r.map(|(role, _, from)| {
                            // The dispatcher that told us knows best.
                            if let Some(f) = from {
                                targets.insert(0, f);
                            }
                            format!("this node is now a {role}")
                        }),
                        _ = tokio::time::sleep(Duration::from_secs(3600)) => None,
                    }
                };
                let Some(reason) = reason else { continue };
                match renew_and_restart(&renew_member, &data_dir, &targets, &own_addr).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, %reason, "could not renew the node certificate; retrying in 5 s");
                        tokio::select! {
                            _ = renew_token.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        }
                    }
                }
            }
        });
        if let Some(raft) = member.raft.clone() {
            if !raft.is_initialized() {
                // A manager that is not in the raft group yet (promoted, or
                // restarted before it was added): ask to be added.
                let m = member.clone();
                let addr = self.cluster_addr();
                let t = token.clone();
                self.tracker
                    .spawn(async move { ask_to_be_added(m, addr, known, t).await });
            }
        }
        self.tracker
            .spawn(session.run(assign_tx, report_rx, token.clone()));
        if member.raft.is_some() {
            self.tracker.spawn(lead_while_leader(
                member.clone(),
                self.explicit_name.clone(),
                self.hostname.clone(),
                token,
            ));
        }
        Ok(())
    }
}

/// Asks the managers, in turn, to add this manager to the raft group.
async fn ask_to_be_added(
    member: Arc<Member>,
    addr: String,
    managers: Vec<String>,
    shutdown: CancellationToken,
) {
    let request = wire::AddManager {
        raft_id: member.identity.raft_id,
        addr,
    };
    let mut i = 0usize;
    loop {
        if member.raft.as_ref().is_some_and(|r| r.is_initialized()) {
            return;
        }
        if let Some(target) = managers.get(i % managers.len().max(1)) {
            let added = member
                .client
                .post::<_, ()>(
                    Target::Manager,
                    target,
                    "/cluster/v1/add-manager",
                    &request,
                    Duration::from_secs(40),
                )
                .await;
            match added {
                Ok(()) => {
                    tracing::info!("added to the raft group as a manager");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, %target, "could not join the raft group yet"),
            }
        }
        i += 1;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Gets a certificate for this node's current role from a manager, stores
/// it, and restarts the daemon in place to use it.
async fn renew_and_restart(
    member: &Member,
    data_dir: &Path,
    managers: &[String],
    own: &str,
) -> Result<()> {
    let key = new_key_and_csr()?;
    let request = wire::RenewRequest {
        csr_pem: key.csr_pem,
    };
    let mut last = None;
    // Never ourselves: a manager that was just demoted is cut off from the
    // raft group, and its own view of its role is stale.
    let mut targets: Vec<String> = member.leader_addr().into_iter().collect();
    targets.extend(managers.iter().cloned());
    targets.retain(|t| t != own);
    targets.dedup();
    for target in targets {
        match member
            .client
            .post::<_, wire::RenewResponse>(
                Target::Manager,
                &target,
                "/cluster/v1/renew",
                &request,
                Duration::from_secs(10),
            )
            .await
        {
            Ok(answer) => {
                let tls = NodeTls {
                    ca_pem: member.tls.ca_pem.clone(),
                    cert_pem: answer.cert_pem,
                    key_pem: key.key_pem,
                };
                let mut identity = member.identity.clone();
                identity.raft_id = answer.raft_id;
                if answer.role == "manager" && !identity.managers.contains(&target) {
                    identity.managers.push(target.clone());
                }
                if answer.role == "worker" && member.raft.is_some() {
                    if let Some(raft) = &member.raft {
                        raft.shutdown().await;
                    }
                    let aside = data_dir.join(format!("raft.redb.demoted-{}", now_ms()));
                    std::fs::rename(data_dir.join("raft.redb"), &aside)?;
                } else if let Some(raft) = &member.raft {
                    raft.shutdown().await;
                }
                tls.store(data_dir)?;
                identity::store(data_dir, &identity)?;
                tracing::warn!(role = %answer.role, "new node certificate stored: restarting in place");
                reexec();
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e.into()),
        None => bail!("no manager is known to renew the certificate"),
    }
}

/// Runs the manager's loops whenever this member leads, and stops them when
/// it no longer does.
async fn lead_while_leader(
    member: Arc<Member>,
    name: Option<String>,
    hostname: String,
    shutdown: CancellationToken,
) {
    let (Some(raft), Some(view), Some(dispatcher)) = (
        member.raft.clone(),
        member.view(),
        member.dispatcher.clone(),
    ) else {
        return;
    };
    let mut metrics = raft.raft().metrics();
    let mut leading: Option<CancellationToken> = None;
    loop {
        let is_leader = raft.is_leader();
        match (is_leader, &leading) {
            (true, None) => {
                tracing::info!("became leader: starting orchestrator, scheduler and dispatcher");
                let token = shutdown.child_token();
                let proposer: Arc<dyn Proposer> = Arc::new(RaftProposer(raft.clone()));
                let clock = Arc::new(SystemClock);
                tokio::spawn(
                    Orchestrator::new(view.clone(), proposer.clone(), clock.clone())
                        .run(token.clone()),
                );
                tokio::spawn(
                    Scheduler::new(view.clone(), proposer.clone(), clock.clone())
                        .run(token.clone()),
                );
                tokio::spawn(Rebalancer::new(view.clone(), proposer, clock).run(token.clone()));
                tokio::spawn(dispatcher.clone().run(token.clone()));
                tokio::spawn(refresh_own_node(
                    raft.clone(),
                    member.identity.node_id.clone(),
                    name.clone(),
                    hostname.clone(),
                ));
                leading = Some(token);
            }
            (false, Some(token)) => {
                tracing::info!("no longer leader: stopping orchestrator, scheduler and dispatcher");
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
async fn refresh_own_node(
    raft: Arc<RaftNode>,
    node_id: String,
    name: Option<String>,
    hostname: String,
) {
    let node = {
        let state = raft.state();
        let state = match state.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        state.nodes.get(&node_id).cloned()
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
    if let Err(e) = raft.propose(Command::UpsertNode { node }).await {
        tracing::warn!(error = %e, "could not refresh this node's record");
    }
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

/// Marker file: the next start rewrites the raft store for a new group.
const FORCE_MARKER: &str = "force-new-cluster";

/// Replaces this process with a fresh run of the same command line. Task
/// processes keep running (they are adopted again) and stay our children.
fn reexec() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new("/proc/self/exe")
        .args(args)
        .exec();
    tracing::error!(error = %err, "cannot restart the daemon; exiting so that a supervisor restarts it");
    std::process::exit(70);
}

/// `init --force-new-cluster`, at start: the raft store is moved aside and a
/// new one is seeded with its state, with this node as the only manager
/// under a fresh raft ID (IDs are never reused). Managers that are gone
/// are removed and their tasks orphaned, so that they run elsewhere.
fn rewrite_for_new_cluster(data_dir: &Path, identity: &mut Identity) -> Result<()> {
    let path = data_dir.join("raft.redb");
    let mut state = {
        let (_log, sm) = flotilla_raft::storage::open(&path)?;
        let shared = sm.shared();
        let state = match shared.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        state
    };
    let cluster = state
        .cluster
        .as_mut()
        .context("the raft store holds no cluster to recover")?;
    let highest = state.nodes.values().map(|n| n.raft_id).max().unwrap_or(0);
    let fresh = cluster.next_raft_id.max(highest + 1);
    cluster.next_raft_id = fresh + 1;
    let now = now_ms();
    let gone: Vec<String> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && n.id != identity.node_id)
        .map(|n| n.id.clone())
        .collect();
    for id in &gone {
        let _ = state.apply(
            state.index,
            &Command::RemoveNode {
                node_id: id.clone(),
                at: now,
            },
        );
    }
    if let Some(me) = state.nodes.get_mut(&identity.node_id) {
        me.raft_id = fresh;
    }
    // Versions and creation order are raft indexes, and the new log starts
    // again at 1: put everything that exists before anything to come.
    for service in state.services.values_mut() {
        service.version = 0;
    }
    for task in state.tasks.values_mut() {
        task.created_index = 0;
        task.service_version = 0;
    }
    let aside = data_dir.join(format!("raft.redb.before-force-new-cluster-{now}"));
    std::fs::rename(&path, &aside).with_context(|| format!("moving {} aside", path.display()))?;
    flotilla_raft::storage::seed(&path, &state)?;
    identity.raft_id = fresh;
    identity::store(data_dir, identity)?;
    std::fs::remove_file(data_dir.join(FORCE_MARKER))?;
    tracing::warn!(
        raft_id = fresh,
        removed_managers = gone.len(),
        old_store = %aside.display(),
        "force-new-cluster: this node is now the only manager"
    );
    Ok(())
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
    let api_port = api_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
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
        node_timeout: config.node_timeout,
        listener: std::sync::Mutex::new(Some(listener)),
        member_token: std::sync::Mutex::new(None),
        agent_done: std::sync::Mutex::new(None),
        api_listener: std::sync::Mutex::new(api_listener),
        api_port,
        self_ref: std::sync::OnceLock::new(),
        member: RwLock::new(None),
        init_lock: Mutex::new(()),
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
    });
    let _ = ctx.self_ref.set(Arc::downgrade(&ctx));
    tracing::info!(listen = %bound, advertise = %cluster_addr, api = ?api_port, "cluster port bound");
    if let Some(mut identity) = identity {
        let forced = config.data_dir.join(FORCE_MARKER).exists();
        if forced {
            rewrite_for_new_cluster(&config.data_dir, &mut identity)?;
        }
        let tls = tls.with_context(|| {
            format!(
                "{} has node.json but no certificates in certs/; the data dir is incomplete",
                config.data_dir.display()
            )
        })?;
        let raft = if tls.identity()?.role == Role::Manager {
            let client = tls.client(&config.data_dir)?;
            Some(Arc::new(
                RaftNode::start_with(
                    &config.data_dir,
                    identity.raft_id,
                    &config.timings,
                    Some(client),
                )
                .await
                .with_context(|| format!("starting raft in {}", config.data_dir.display()))?,
            ))
        } else {
            None
        };
        if let Some(r) = raft.as_ref().filter(|_| forced) {
            if !r.is_initialized() {
                // A store seeded by --force-new-cluster: start the new group,
                // and snapshot at once, because the seeded state is in no
                // log entry and members that join must get it whole.
                r.initialize_single(&ctx.cluster_addr()).await?;
                r.wait_leader(Duration::from_secs(10)).await?;
                r.compact(Duration::from_secs(10)).await?;
            }
        }
        let member = ctx.make_member(identity, tls, raft)?;
        ctx.start_member(member.clone(), vec![])?;
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
