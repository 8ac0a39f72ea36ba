//! The node's lifecycle: init, join, leave and force-new-cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use flotilla_pki::{new_key_and_csr, Ca, JoinToken, Role};
use flotilla_raft::node::RaftTimings;
use flotilla_raft::RaftNode;
use flotilla_store::Command;
use flotilla_transport::{ClusterClient, Target};
use flotilla_types::{Availability, Cluster, Node, NodeRole, NodeState, Platform};

use crate::certs::{NodeTls, SealedTls};
use crate::identity::Identity;
use crate::keyring::{self, ClusterKeys, Keyring};
use crate::recovery::{reexec, FORCE_MARKER};
use crate::{advertised, host, identity, now_ms, wire, Member, VERSION};

/// Everything the API handlers share.
pub struct NodeCtx {
    pub data_dir: PathBuf,
    pub name: String,
    /// The name given with `--name`, if any.
    pub(crate) explicit_name: Option<String>,
    pub hostname: String,
    /// Where other nodes reach this node's cluster port.
    pub(crate) cluster_addr: std::sync::RwLock<String>,
    /// The address the cluster port is bound to.
    pub(crate) bound: SocketAddr,
    pub(crate) timings: RaftTimings,
    pub(crate) log_cap_bytes: u64,
    /// `--keep-tasks-on-stop`.
    pub(crate) keep_tasks_on_stop: bool,
    pub(crate) node_timeout: Duration,
    /// The address the client API port is bound to, if any.
    pub(crate) api_bound: Option<SocketAddr>,
    /// Where the node is in its life; only the transitions below change
    /// it, each holding the lock for its whole run.
    pub(crate) phase: Mutex<Phase>,
    /// Set once the member runs; the remote API router needs it.
    pub(crate) self_ref: std::sync::OnceLock<std::sync::Weak<NodeCtx>>,
    /// The member of [`Phase::Member`], published for the handlers, which
    /// must not wait for a transition to read it.
    pub(crate) member: RwLock<Option<Arc<Member>>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// This node's routing mesh while it is a member (for its counters).
    pub(crate) mesh: std::sync::RwLock<Option<flotilla_mesh::Mesh>>,
    /// The unlock keys this manager holds (autolock), kept across the
    /// member's restarts within this process.
    pub(crate) keyring: Arc<Keyring>,
    /// What `/metrics` counts as it happens, for the life of the process.
    pub(crate) counters: crate::metrics::Counters,
    /// What the dashboard keeps: the events this manager saw, the mesh
    /// counters it gathered last.
    pub(crate) board: Arc<crate::dashboard::Board>,
    /// Set while the phase is [`Phase::Locked`].
    pub(crate) locked: std::sync::atomic::AtomicBool,
    /// Set once this process is about to re-execute itself (force new
    /// cluster, restore): the member it still holds is no longer the one
    /// that will serve.
    pub(crate) restarting: std::sync::atomic::AtomicBool,
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

/// Where a node is in its life.
pub(crate) enum Phase {
    /// Not in a cluster: the ports are bound, ready for `init` or `join`.
    Idle(Ports),
    /// A manager of an autolocked cluster that restarted: its TLS key is
    /// sealed, so it waits for `flotilla unlock` before anything runs.
    Locked(Ports, Box<LockedStart>),
    /// In a cluster, with what runs for the membership.
    Member(Running),
    /// Replacing itself with a fresh process (force-new-cluster): no
    /// other transition may start.
    Restarting,
}

/// What a locked manager resumes with once unlocked.
pub(crate) struct LockedStart {
    pub(crate) identity: Identity,
    pub(crate) tls: SealedTls,
    /// A force-new-cluster was under way: the new group's only voter
    /// elects itself.
    pub(crate) forced: bool,
}

/// The listeners a node holds while it is not in a cluster.
#[derive(Default)]
pub(crate) struct Ports {
    pub(crate) cluster: Option<TcpListener>,
    pub(crate) api: Option<TcpListener>,
}

/// What runs while a node is in a cluster.
pub(crate) struct Running {
    pub(crate) member: Arc<Member>,
    /// Cancels everything below (leave).
    pub(crate) token: CancellationToken,
    /// The agent, to wait for it to stop the tasks on leave.
    pub(crate) agent: tokio::task::JoinHandle<()>,
    /// The client API port of a worker, which serves none.
    pub(crate) spare_api: Option<TcpListener>,
}

/// What [`Phase`] a node is in, for the rules of [`allowed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Idle,
    Locked,
    Manager,
    Worker,
    Restarting,
}

/// The lifecycle's transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Init,
    Join,
    Leave,
    ForceNewCluster,
    Restore,
}

/// Whether `step` may start in `stage`, and why not.
pub fn allowed(stage: Stage, step: Step) -> Result<(), InitError> {
    let refused = |m: &str| Err(InitError::Refused(m.to_string()));
    match (stage, step) {
        (Stage::Locked, _) => Err(InitError::Refused(LOCKED.to_string())),
        (Stage::Restarting, _) => {
            refused("this node is restarting into a new cluster; try again in a moment")
        }
        (Stage::Idle, Step::Init | Step::Join | Step::Restore) => Ok(()),
        (Stage::Manager | Stage::Worker, Step::Restore) => refused(
            "this node is already in a cluster: restore makes a new cluster on a fresh node (run 'flotilla leave --force' here first, or restore on another node)",
        ),
        (Stage::Manager | Stage::Worker, Step::Init | Step::Join) => {
            Err(InitError::AlreadyInCluster)
        }
        (Stage::Idle, Step::Leave) => refused("this node is not in a cluster"),
        (Stage::Idle, Step::ForceNewCluster) => {
            refused("this node is not in a cluster: nothing to recover")
        }
        (Stage::Worker, Step::ForceNewCluster) => {
            refused("this node is a worker: run --force-new-cluster on a surviving manager")
        }
        (Stage::Manager, Step::ForceNewCluster) | (Stage::Manager | Stage::Worker, Step::Leave) => {
            Ok(())
        }
    }
}

impl Phase {
    pub(crate) fn stage(&self) -> Stage {
        match self {
            Phase::Idle(_) => Stage::Idle,
            Phase::Locked(..) => Stage::Locked,
            Phase::Member(r) if r.member.raft.is_some() => Stage::Manager,
            Phase::Member(_) => Stage::Worker,
            Phase::Restarting => Stage::Restarting,
        }
    }
}

/// What every request but `unlock` and `info` gets from a locked manager.
pub const LOCKED: &str =
    "this manager is locked (autolock is on): run 'flotilla unlock' and give it the unlock key";

/// A manager's TLS material for `node_id`: a new key, its certificate
/// signed by `ca`, and the CA's certificate (`ca_pem`).
pub(crate) fn manager_tls(ca: &Ca, ca_pem: &str, node_id: &str) -> Result<NodeTls, InitError> {
    let key = new_key_and_csr().map_err(failed)?;
    let cert_pem = ca
        .sign_node(&key.csr_pem, node_id, Role::Manager, crate::cert_validity())
        .map_err(failed)?;
    Ok(NodeTls {
        ca_pem: ca_pem.to_string(),
        cert_pem,
        key_pem: key.key_pem,
    })
}

pub(crate) fn failed(e: impl std::fmt::Display) -> InitError {
    InitError::Failed(e.to_string())
}

pub(crate) fn secret() -> String {
    flotilla_pki::token::new_secret(rand::random())
}

impl NodeCtx {
    /// The cluster member, or None before `init` or `join`.
    /// This node's record as a manager of the store, made at `now` (by
    /// `init`, and by `restore` with raft ID 0 until the new group hands
    /// one out).
    pub(crate) fn own_manager_record(&self, node_id: &str, raft_id: u64, now: u64) -> Node {
        Node {
            id: node_id.to_string(),
            raft_id,
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
            entry_format: crate::announced_format(),
            overlay_error: None,
            engine_labels: Default::default(),
        }
    }

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
        match self.api_bound.map(|a| a.port()) {
            Some(port) => {
                let cluster = self.cluster_addr();
                let host = cluster.rsplit_once(':').map(|(h, _)| h).unwrap_or(&cluster);
                format!("{host}:{port}")
            }
            None => String::new(),
        }
    }

    /// `init`/`join --advertise-addr` overrides the daemon's address.
    pub(crate) fn set_advertise(&self, advertise: Option<&str>) {
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

    /// Idle -> Member: starts what runs for `member` on the idle ports and
    /// publishes it. On failure the node is idle again, its ports bound
    /// anew.
    pub(crate) async fn enter(
        &self,
        phase: &mut Phase,
        member: Arc<Member>,
        managers: Vec<String>,
    ) -> Result<()> {
        let ports = match std::mem::replace(phase, Phase::Restarting) {
            Phase::Idle(ports) | Phase::Locked(ports, _) => ports,
            other => {
                *phase = other;
                anyhow::bail!("this node is already part of a cluster");
            }
        };
        match self.start_member(member.clone(), managers, ports) {
            Ok(running) => {
                *phase = Phase::Member(running);
                self.locked
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                *self.member.write().await = Some(member);
                Ok(())
            }
            Err(e) => {
                *phase = Phase::Idle(self.rebind().await);
                Err(e)
            }
        }
    }

    /// Starts this manager's raft member on the data dir, talking to the
    /// other managers with this node's certificate.
    pub(crate) async fn start_raft(&self, tls: &NodeTls, raft_id: u64) -> Result<Arc<RaftNode>> {
        let client = tls.client(&self.data_dir)?;
        let raft = RaftNode::start_with(&self.data_dir, raft_id, &self.timings, Some(client))
            .await
            .with_context(|| format!("starting raft in {}", self.data_dir.display()))?;
        Ok(Arc::new(raft))
    }

    /// Binds the cluster port and the client API port again, for a later
    /// init or join; a port that cannot be bound is logged and left out.
    async fn rebind(&self) -> Ports {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            match TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, %addr, "cannot bind the {what} again");
                    None
                }
            }
        };
        let cluster = bind(self.bound, "cluster port").await;
        let api = match self.api_bound {
            Some(a) => bind(a, "client API port").await,
            None => None,
        };
        Ports { cluster, api }
    }

    /// Creates a new one-manager cluster with this node as its leader, and
    /// the cluster CA. With `autolock`, the CA key and a data key go into
    /// the store sealed under a new unlock key, which is returned (shown
    /// once): no plaintext key ever reaches the log or the disk.
    pub async fn init(
        &self,
        advertise: Option<&str>,
        autolock: bool,
    ) -> Result<(Identity, Option<flotilla_types::SecretData>), InitError> {
        let mut phase = self.phase.lock().await;
        allowed(phase.stage(), Step::Init)?;
        self.set_advertise(advertise);
        let cluster_id = flotilla_types::new_id(rand::random());
        let node_id = flotilla_types::new_id(rand::random());
        let ca_material = Ca::create(&cluster_id).map_err(failed)?;
        let ca = Ca::load(&ca_material).map_err(failed)?;
        let tls = manager_tls(&ca, &ca_material.cert_pem, &node_id)?;
        let identity = Identity {
            cluster_id: cluster_id.clone(),
            node_id: node_id.clone(),
            raft_id: 1,
            managers: vec![self.cluster_addr()],
            // Written after raft starts; init fails if node.json is missing.
            raft_member: 1,
            epoch: flotilla_types::Epoch::first(flotilla_types::new_id(rand::random())),
        };
        let now = now_ms();
        let node = self.own_manager_record(&node_id, identity.raft_id, now);
        let raft = self
            .start_raft(&tls, identity.raft_id)
            .await
            .map_err(failed)?;
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
        let mut cluster = Cluster {
            ca_cert_pem: ca_material.cert_pem,
            ca_key_pem: ca_material.key_pem,
            worker_secret: secret(),
            manager_secret: secret(),
            epoch: identity.epoch.clone(),
            ..Cluster::bare(cluster_id, now)
        };
        let unlock = if autolock {
            let unlock = keyring::new_unlock_key().map_err(failed)?;
            let keys = ClusterKeys {
                ca_key_pem: std::mem::take(&mut cluster.ca_key_pem),
                data_key: flotilla_types::SecretData(
                    flotilla_pki::seal::new_data_key().map_err(failed)?,
                ),
                worker_secret: std::mem::take(&mut cluster.worker_secret),
                manager_secret: std::mem::take(&mut cluster.manager_secret),
            };
            cluster.autolock =
                Some(keyring::seal_keys(&unlock, &cluster.id, &keys).map_err(failed)?);
            self.keyring.add(unlock.clone());
            Some(unlock)
        } else {
            None
        };
        raft.propose(Command::InitCluster { cluster, node })
            .await
            .map_err(failed)?
            .map_err(failed)?;
        tls.store_with(&self.data_dir, unlock.as_ref())
            .map_err(failed)?;
        identity::store(&self.data_dir, &identity).map_err(failed)?;
        let member = self
            .make_member(identity.clone(), tls, Some(raft))
            .map_err(failed)?;
        self.enter(&mut phase, member, vec![])
            .await
            .map_err(failed)?;
        Ok((identity, unlock))
    }

    /// Starts the membership this node's files describe: raft on a
    /// manager (after the checks of its store), then what runs for it.
    pub(crate) async fn resume(
        &self,
        phase: &mut Phase,
        mut identity: Identity,
        tls: NodeTls,
        forced: bool,
    ) -> Result<()> {
        let raft = if tls.identity()?.role == flotilla_pki::Role::Manager {
            let store_exists = self.data_dir.join("raft.redb").exists();
            identity::check_raft_store(&self.data_dir, &identity, store_exists)?;
            if identity.raft_member != identity.raft_id {
                // From now on raft may vote under this ID.
                identity.raft_member = identity.raft_id;
                identity::store(&self.data_dir, &identity)?;
            }
            Some(self.start_raft(&tls, identity.raft_id).await?)
        } else {
            None
        };
        if let Some(r) = raft.as_ref().filter(|_| forced) {
            // The seeded store's only voter elects itself.
            r.wait_leader(Duration::from_secs(10)).await?;
        }
        let member = self.make_member(identity, tls, raft)?;
        self.enter(phase, member, vec![]).await?;
        tracing::info!("rejoined the cluster from {}", self.data_dir.display());
        Ok(())
    }

    /// `flotilla unlock`: opens this locked manager's TLS key with the
    /// unlock key and resumes its membership. A wrong key leaves it
    /// locked.
    pub async fn unlock(&self, key: &str) -> Result<(), InitError> {
        let mut phase = self.phase.lock().await;
        let Phase::Locked(_, start) = &*phase else {
            return Err(InitError::Refused("this node is not locked".into()));
        };
        let unlock =
            keyring::parse_unlock_key(key).map_err(|e| InitError::BadToken(e.to_string()))?;
        let tls = start
            .tls
            .open(&unlock)
            .map_err(|e| InitError::BadToken(e.to_string()))?;
        let identity = start.identity.clone();
        let forced = start.forced;
        self.keyring.add(unlock);
        self.resume(&mut phase, identity, tls, forced)
            .await
            .map_err(failed)?;
        tracing::info!("unlocked");
        Ok(())
    }

    /// Whether this node waits for `flotilla unlock` (read without the
    /// phase lock, which a transition holds for its whole run).
    pub fn is_locked(&self) -> bool {
        self.locked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this process is about to re-execute itself: what it would
    /// answer now is the old run's.
    pub fn is_restarting(&self) -> bool {
        self.restarting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Puts a manager whose key is sealed into [`Phase::Locked`].
    pub(crate) fn lock(&self, phase: &mut Phase, start: LockedStart) {
        let ports = match std::mem::replace(phase, Phase::Restarting) {
            Phase::Idle(ports) | Phase::Locked(ports, _) => ports,
            other => {
                *phase = other;
                return;
            }
        };
        *phase = Phase::Locked(ports, Box::new(start));
        self.locked.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::warn!("{LOCKED}");
    }

    /// Joins the cluster of the manager at `manager_addr` with `token`.
    pub async fn join(
        &self,
        token: &str,
        manager_addr: &str,
        advertise: Option<&str>,
    ) -> Result<Identity, InitError> {
        let mut phase = self.phase.lock().await;
        allowed(phase.stage(), Step::Join)?;
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
            entry_format: crate::announced_format(),
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
            // Raft starts right after node.json is written (a manager).
            raft_member: answer.raft_id,
            epoch: answer.epoch.clone(),
        };
        tls.store(&self.data_dir).map_err(failed)?;
        identity::store(&self.data_dir, &identity).map_err(failed)?;
        let raft = if answer.role == NodeRole::Manager {
            Some(
                self.start_raft(&tls, identity.raft_id)
                    .await
                    .map_err(failed)?,
            )
        } else {
            None
        };
        let member = self
            .make_member(identity.clone(), tls, raft)
            .map_err(failed)?;
        self.enter(&mut phase, member.clone(), answer.managers.clone())
            .await
            .map_err(failed)?;
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
        let mut phase = self.phase.lock().await;
        allowed(phase.stage(), Step::ForceNewCluster)?;
        let Phase::Member(running) = &*phase else {
            return Err(InitError::Refused("this node is not in a cluster".into()));
        };
        let member = running.member.clone();
        let Some(raft) = member.raft.clone() else {
            return Err(InitError::Refused("this node is a worker".into()));
        };
        std::fs::write(self.data_dir.join(FORCE_MARKER), b"requested\n").map_err(failed)?;
        std::fs::File::open(&self.data_dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
        tracing::warn!("force-new-cluster requested: restarting into a new raft group");
        *phase = Phase::Restarting;
        self.restarting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let unlock = self.keyring.newest();
        tokio::spawn(async move {
            // Let the answer reach the client first.
            tokio::time::sleep(crate::reexec_delay()).await;
            raft.shutdown().await;
            reexec(unlock.as_ref());
        });
        Ok(member.identity.clone())
    }

    /// `flotilla leave`: this node stops its tasks and forgets the cluster
    /// (its files are moved aside); the daemon keeps running, ready to
    /// `init` or `join` again. A manager first leaves the raft group; the
    /// last manager, or one whose leaving breaks quorum, needs `force`.
    pub async fn leave(&self, force: bool) -> Result<(), InitError> {
        let mut phase = self.phase.lock().await;
        allowed(phase.stage(), Step::Leave)?;
        let Phase::Member(running) = &*phase else {
            return Err(InitError::Refused("this node is not in a cluster".into()));
        };
        let member = running.member.clone();
        if let Some(view) = member.view() {
            let plan = crate::control::cluster::leave_plan(&view.read(), force)
                .map_err(InitError::Refused)?;
            if plan == crate::control::cluster::Leave::LeaveRaft {
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
        if let Phase::Member(running) = std::mem::replace(&mut *phase, Phase::Restarting) {
            running.token.cancel();
            // The agent stops every task within its grace period.
            let _ = tokio::time::timeout(Duration::from_secs(120), running.agent).await;
            drop(running.spare_api);
        }
        if let Some(raft) = &member.raft {
            raft.shutdown().await;
        }
        *self.member.write().await = None;
        // The ports are bound again for a later init or join, also when
        // the files below cannot be moved.
        *phase = Phase::Idle(self.rebind().await);
        let aside = self.data_dir.join(format!("left-{}", now_ms()));
        std::fs::create_dir_all(&aside).map_err(failed)?;
        for name in ["node.json", "certs", "raft.redb", "agent"] {
            let from = self.data_dir.join(name);
            if from.exists() {
                std::fs::rename(&from, aside.join(name)).map_err(failed)?;
            }
        }
        tracing::info!(old = %aside.display(), "left the cluster");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(stage: Stage, step: Step) -> Option<String> {
        allowed(stage, step).err().map(|e| e.to_string())
    }

    #[test]
    fn init_and_join_start_from_idle_only() {
        for step in [Step::Init, Step::Join] {
            assert!(allowed(Stage::Idle, step).is_ok());
            for stage in [Stage::Manager, Stage::Worker] {
                assert!(matches!(
                    allowed(stage, step),
                    Err(InitError::AlreadyInCluster)
                ));
            }
            assert!(refusal(Stage::Restarting, step).is_some_and(|m| m.contains("restarting")));
        }
    }

    #[test]
    fn leave_needs_a_cluster() {
        assert_eq!(
            refusal(Stage::Idle, Step::Leave).as_deref(),
            Some("this node is not in a cluster")
        );
        assert!(allowed(Stage::Manager, Step::Leave).is_ok());
        assert!(allowed(Stage::Worker, Step::Leave).is_ok());
    }

    #[test]
    fn only_a_manager_forces_a_new_cluster() {
        assert!(allowed(Stage::Manager, Step::ForceNewCluster).is_ok());
        assert_eq!(
            refusal(Stage::Worker, Step::ForceNewCluster).as_deref(),
            Some("this node is a worker: run --force-new-cluster on a surviving manager")
        );
        assert_eq!(
            refusal(Stage::Idle, Step::ForceNewCluster).as_deref(),
            Some("this node is not in a cluster: nothing to recover")
        );
        assert!(refusal(Stage::Restarting, Step::ForceNewCluster).is_some());
    }

    #[test]
    fn a_restore_needs_a_fresh_node() {
        assert!(allowed(Stage::Idle, Step::Restore).is_ok());
        for stage in [Stage::Manager, Stage::Worker] {
            assert!(
                refusal(stage, Step::Restore).is_some_and(
                    |m| m.starts_with("this node is already in a cluster: restore makes")
                )
            );
        }
        assert!(refusal(Stage::Locked, Step::Restore).is_some());
    }
}
