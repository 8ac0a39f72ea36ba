//! This node as a member of a cluster, and the wiring of what runs while
//! it is one: the cluster port, the agent and its session, certificate
//! renewal, and on managers the leader supervisor.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use flotilla_agent::{
    Agent, AgentConfig, Assignments, DockerDriver, Driver, Drivers, ProcessDriver,
};
use flotilla_manager::StoreView;
use flotilla_pki::Role;
use flotilla_raft::RaftNode;
use flotilla_transport::{ClusterClient, Target};
use flotilla_types::NodeRole;

use crate::certs::NodeTls;
use crate::dispatcher::Dispatcher;
use crate::identity::Identity;
use crate::keyring::Keyring;
use crate::session::{LeaderFinder, SessionClient};

use crate::leader::lead_while_leader;
use crate::lifecycle::{Ports, Running};
use crate::renew::renew_and_restart;
use crate::write::RaftProposer;
use crate::{api, cluster, dispatcher, now_ms, wire, NodeCtx};

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
    /// The unlock keys this node holds (autolock; managers only).
    pub keyring: Arc<Keyring>,
    /// When each other node was last heard from.
    pub contacts: crate::contact::Contacts,
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

impl Member {
    /// The unlock key of the cluster's current sealed keys, when autolock
    /// is on and this manager holds it.
    pub fn autolock_key(&self) -> Option<flotilla_types::SecretData> {
        let raft = self.raft.as_ref()?;
        let state = raft.state();
        let state = state.read().ok()?;
        let cluster = state.cluster.as_ref()?;
        let sealed = cluster.autolock.as_ref()?;
        self.keyring.key_for(&cluster.id, sealed)
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

impl NodeCtx {
    pub(crate) fn make_member(
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
                Arc::new(RaftProposer::new(r.clone())),
                Arc::new(flotilla_manager::SystemClock),
                self.keyring.clone(),
            ))
        });
        Ok(Arc::new(Member {
            identity,
            role,
            tls,
            client,
            raft,
            dispatcher,
            keyring: self.keyring.clone(),
            contacts: crate::contact::Contacts::new(),
        }))
    }

    /// Starts what runs while this node is in a cluster, on `ports`: the
    /// cluster port, the agent and its session, and on managers the client
    /// API port and the leader's loops.
    pub(crate) fn start_member(
        &self,
        member: Arc<Member>,
        managers: Vec<String>,
        ports: Ports,
    ) -> Result<Running> {
        let token = self.shutdown.child_token();
        let Ports {
            cluster: cluster_listener,
            api: mut api_listener,
        } = ports;
        let (mesh_tx, mesh_rx) = watch::channel(flotilla_types::mesh::MeshTable::default());
        // The mesh listens where the cluster port does: every address, or
        // the one address a node was given (nodes sharing a machine).
        let mut mesh_config = flotilla_mesh::MeshConfig::new(member.identity.node_id.clone());
        mesh_config.bind_ip = self.bound.ip();
        // How the mesh moves bytes: splice (the default) or a buffer, for
        // kernels where splice is slow or for comparing the two.
        match std::env::var("FLOTILLA_MESH_COPY").as_deref() {
            Ok("buffered") => mesh_config.copy = flotilla_mesh::CopyMode::Buffered,
            Ok("splice") | Err(_) => {}
            Ok(other) => tracing::warn!(
                value = other,
                "FLOTILLA_MESH_COPY is splice or buffered; using splice"
            ),
        }
        // How connections reach the data path's threads: steered by the
        // kernel to a socket per thread by the receiving CPU (the
        // default), or handed over by one acceptor (docs/mesh.md).
        match std::env::var("FLOTILLA_MESH_ACCEPT").as_deref() {
            Ok("handover") => mesh_config.accept = flotilla_mesh::AcceptMode::Handover,
            Ok("steered") | Err(_) => {}
            Ok(other) => tracing::warn!(
                value = other,
                "FLOTILLA_MESH_ACCEPT is steered or handover; using steered"
            ),
        }
        // The data path's threads (default: one per core; 0 puts it on
        // the daemon's own runtime, for comparing the two).
        if let Ok(value) = std::env::var("FLOTILLA_MESH_WORKERS") {
            match value.parse::<usize>() {
                Ok(n) if n <= 64 => mesh_config.workers = n,
                _ => tracing::warn!(
                    value = %value,
                    "FLOTILLA_MESH_WORKERS is a number of threads from 0 to 64; using {}",
                    mesh_config.workers
                ),
            }
        }
        let mesh = flotilla_mesh::Mesh::new(mesh_config);
        if let Ok(mut slot) = self.mesh.write() {
            *slot = Some(mesh.clone());
        }
        if let Some(listener) = cluster_listener {
            let config = member.tls.server_config(&self.data_dir)?;
            let router = cluster::router(member.clone(), self.agent_dir(), mesh.clone());
            self.tracker.spawn(flotilla_transport::serve(
                listener,
                Arc::new(std::sync::RwLock::new(config)),
                router,
                token.clone(),
            ));
        }
        if member.raft.is_some() {
            if let Some(listener) = api_listener.take() {
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
        // The node's network wiring follows the table its session brings.
        // A node on a loopback address (a cluster of one machine, or of
        // several daemons on one machine in tests) wires nothing: its
        // VXLAN could reach no other machine, and its devices would land
        // in the machine's own namespace, shared by every such daemon.
        let (networks_tx, networks_rx) =
            watch::channel(flotilla_types::network::NetworkTable::default());
        let local = self.cluster_addr().parse::<std::net::SocketAddr>().ok();
        let networking = match local {
            Some(local) if local.ip().is_loopback() => {
                tracing::info!(addr = %local, "networks are not wired on a node bound to a loopback address");
                None
            }
            Some(local) => Some(self.start_wiring(
                member.identity.node_id.clone(),
                local.ip(),
                networks_rx,
                &token,
            )),
            None => None,
        };
        let agent = Agent::new(
            AgentConfig {
                node_id: member.identity.node_id.clone(),
                state_dir: self.agent_dir(),
                log_cap_bytes: self.log_cap_bytes,
                keep_tasks_on_stop: self.keep_tasks_on_stop,
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
        let agent = match networking {
            Some(networking) => agent.with_networking(networking),
            None => agent,
        };
        let agent_token = token.clone();
        let agent_done = self.tracker.spawn(async move {
            if let Err(e) = agent.run(agent_token).await {
                tracing::error!(error = %e, "agent stopped");
            }
        });
        let mut known = managers;
        known.extend(member.identity.managers.iter().cloned());
        known.dedup();
        let (role_tx, mut role_rx) = mpsc::unbounded_channel::<(NodeRole, u64, Option<String>)>();
        self.tracker.spawn(mesh.run(mesh_rx, token.clone()));
        let session = SessionClient {
            node_id: member.identity.node_id.clone(),
            addr: self.cluster_addr(),
            api_addr: self.api_addr(),
            client: member.client.clone(),
            finder: member.clone(),
            managers: known.clone(),
            role: member.role,
            epoch: member.identity.epoch.clone(),
            data_dir: Some(self.data_dir.clone()),
            role_changed: role_tx,
            mesh: mesh_tx,
            networks: networks_tx,
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
                    .map(|i| (i.not_after - (now_ms() / 1000) as i64) < (crate::cert_validity().as_secs() / 3) as i64)
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
                        _ = tokio::time::sleep(Duration::from_secs(3600).min(crate::cert_validity() / 10)) => None,
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
        if let Some(raft) = member.raft.clone() {
            let commits = self.counters.commit_seconds.clone();
            raft.observe_commits(Box::new(move |took| commits.observe(took.as_secs_f64())));
            self.tracker.spawn(crate::metrics::count_raft_events(
                raft.clone(),
                self.counters.clone(),
                token.clone(),
            ));
            self.tracker.spawn(crate::dashboard::watch(
                raft,
                self.board.clone(),
                token.clone(),
            ));
        }
        if member.raft.is_some() {
            self.tracker.spawn(crate::contact::probe_managers(
                member.clone(),
                self.cluster_addr(),
                token.clone(),
            ));
            self.tracker.spawn(crate::autolock::keep(
                member.clone(),
                self.data_dir.clone(),
                token.clone(),
            ));
            self.tracker.spawn(lead_while_leader(
                member.clone(),
                self.explicit_name.clone(),
                self.hostname.clone(),
                self.node_timeout,
                self.counters.clone(),
                token.clone(),
            ));
        }
        Ok(Running {
            member,
            token,
            agent: agent_done,
            spare_api: api_listener,
        })
    }

    /// Starts the node's wiring loop and the resolver at the gateways of
    /// the networks it wires; returns the agent's handle on the wiring.
    fn start_wiring(
        &self,
        node_id: String,
        local: std::net::IpAddr,
        table: watch::Receiver<flotilla_types::network::NetworkTable>,
        token: &CancellationToken,
    ) -> flotilla_agent::taskns::Networking {
        use flotilla_agent::wiring;
        let ip: Arc<dyn wiring::Ip> = Arc::new(wiring::System::default());
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let (wired_tx, wired_rx) = watch::channel(Vec::new());
        // Tasks' TCP connections to virtual addresses go through the node's
        // proxy, which retries another task when a connect fails; without
        // it the kernel forwards them (no retry).
        let vips = match flotilla_agent::vips::start(
            None,
            &self.tracker,
            token.clone(),
            self.counters.vips.clone(),
        ) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for virtual addresses; the kernel forwards them, with no retry");
                None
            }
        };
        self.tracker.spawn(wiring::follow(
            table.clone(),
            wiring::Plumbing {
                node_id,
                local,
                ip,
                requests: requests_rx,
                wired: wired_tx,
                vips,
                leave_on_stop: self.keep_tasks_on_stop,
            },
            token.clone(),
        ));
        // The resolver answers on each wired network's gateway, which the
        // tasks' resolv.conf names; what is not the cluster's goes to the
        // node's own resolvers.
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let upstreams = flotilla_dns::server::upstreams_of(&resolv, None);
        let stop = token.clone();
        self.tracker.spawn(flotilla_dns::server::serve_gateways(
            wired_rx,
            |wired: &Vec<flotilla_agent::netfilter::WiredNetwork>| {
                wired.iter().map(|n| n.subnet.gateway()).collect()
            },
            table.clone(),
            upstreams,
            async move { stop.cancelled().await },
        ));
        flotilla_agent::taskns::Networking::new(table, requests_tx)
    }
}

/// Asks the managers, in turn, to add this manager to the raft group.
pub(crate) async fn ask_to_be_added(
    member: Arc<Member>,
    addr: String,
    managers: Vec<String>,
    shutdown: CancellationToken,
) {
    let request = wire::AddManager {
        raft_id: member.identity.raft_id,
        addr,
        node_id: member.identity.node_id.clone(),
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
