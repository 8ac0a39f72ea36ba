//! The leader's dispatcher: agent sessions (heartbeats, status reports,
//! assignments).
//!
//! Every node's agent, the leader's own included, talks to it through
//! [`Dispatcher::session`]; remote agents reach it over the cluster port.
//! Sessions record heartbeats into [`Heartbeats`], which the manager's
//! [`flotilla_manager::NodeWatcher`] reads to declare nodes down. Writes go
//! through a [`Proposer`] and times come from a [`Clock`], so that nothing
//! here needs raft itself beyond [`Leadership`]. Sessions are served only
//! once the leader supervisor says this leader caught up
//! ([`Dispatcher::set_caught_up`]); until then an agent is told to call
//! again.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use flotilla_manager::dispatcher::{assignments_for, useful_updates};
use flotilla_manager::mesh::mesh_table;
use flotilla_manager::network::network_table;
use flotilla_manager::{Clock, Heartbeats, ProposeError, Proposer, StoreView};
use flotilla_raft::RaftNode;
use flotilla_store::{Command, State};
use flotilla_types::mesh::MeshTable;
use flotilla_types::network::NetworkTable;
use flotilla_types::{NodeRole, NodeState, Task};
use tokio::sync::watch;

use super::wire::{NodeAssignments, SessionRequest, SessionResponse};

/// How long a node may go without a heartbeat before it is down, unless
/// `--node-timeout` says otherwise.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a session call waits for new assignments before it answers
/// "unchanged"; agents call again at once, so this is the heartbeat period.
pub const LONG_POLL: Duration = Duration::from_millis(1000);

/// Why a session was refused.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("node {0} is not part of this cluster")]
    UnknownNode(String),
    #[error("a node may only speak for itself (certificate of {cert}, request for {claimed})")]
    WrongNode { cert: String, claimed: String },
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error(transparent)]
    Store(#[from] flotilla_store::StoreError),
}

/// A fingerprint of what an agent must know; changes whenever a task is
/// added, removed, or changes desired or observed state.
fn version_of(tasks: &[Task]) -> u64 {
    let mut h = DefaultHasher::new();
    for t in tasks {
        t.id.hash(&mut h);
        t.desired_state.hash(&mut h);
        t.status.state.hash(&mut h);
    }
    // 0 means "nothing known" to the agent.
    h.finish().max(1)
}

/// A fingerprint of a table (never 0, which means "none").
fn version_of_table<T: Hash>(table: &T) -> u64 {
    let mut h = DefaultHasher::new();
    table.hash(&mut h);
    h.finish().max(1)
}

/// A table the leader sends every agent (the mesh's, the networks'),
/// computed once per applied index, whichever session asks first, with
/// its version. The index is read before the state, and the state is
/// written before the index moves, so a table is never older than the
/// index it is kept for.
struct PerIndex<T> {
    cache: std::sync::Mutex<Option<(u64, Arc<T>, u64)>>,
    compute: fn(&State) -> T,
}

impl<T: Hash> PerIndex<T> {
    fn new(compute: fn(&State) -> T) -> Self {
        PerIndex {
            cache: std::sync::Mutex::new(None),
            compute,
        }
    }

    fn get(&self, applied: u64, state: &State) -> (Arc<T>, u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, table, version)) = cache.as_ref() {
            if *at == applied {
                return (table.clone(), *version);
            }
        }
        let table = Arc::new((self.compute)(state));
        let version = version_of_table(&*table);
        *cache = Some((applied, table.clone(), version));
        (table, version)
    }
}

/// The cluster address of the manager with raft ID `leader`.
pub fn leader_addr(state: &State, leader: u64) -> Option<String> {
    state
        .nodes
        .values()
        .find(|n| n.raft_id == leader && n.role == NodeRole::Manager)
        .map(|n| n.addr.clone())
}

/// Cluster addresses of the managers.
pub fn manager_addrs(state: &State) -> Vec<String> {
    state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && !n.addr.is_empty())
        .map(|n| n.addr.clone())
        .collect()
}

/// What the dispatcher needs to know of raft: whether this node leads,
/// and which node does.
pub trait Leadership: Send + Sync {
    fn is_leader(&self) -> bool;
    /// The leader's raft ID, when one is known.
    fn leader(&self) -> Option<u64>;
}

impl Leadership for RaftNode {
    fn is_leader(&self) -> bool {
        RaftNode::is_leader(self)
    }

    fn leader(&self) -> Option<u64> {
        RaftNode::leader(self)
    }
}

/// The leader's side of agent sessions.
pub struct Dispatcher {
    leadership: Arc<dyn Leadership>,
    view: StoreView,
    proposer: Arc<dyn Proposer>,
    clock: Arc<dyn Clock>,
    heartbeats: Heartbeats,
    /// Open once this leader caught up; see [`Dispatcher::set_caught_up`].
    caught_up: watch::Sender<bool>,
    /// The mesh table and the network table of the last applied index,
    /// with their versions: every session of one round shares them.
    mesh: PerIndex<MeshTable>,
    networks: PerIndex<NetworkTable>,
    /// Opens the data key under autolock, for the tasks' files.
    keys: Arc<crate::keyring::Keyring>,
}

impl Dispatcher {
    pub fn new(
        leadership: Arc<dyn Leadership>,
        view: StoreView,
        proposer: Arc<dyn Proposer>,
        clock: Arc<dyn Clock>,
        keys: Arc<crate::keyring::Keyring>,
    ) -> Self {
        Dispatcher {
            leadership,
            view,
            proposer,
            clock,
            keys,
            heartbeats: Heartbeats::new(),
            caught_up: watch::channel(false).0,
            mesh: PerIndex::new(mesh_table),
            networks: PerIndex::new(network_table),
        }
    }

    /// The heartbeats this dispatcher's sessions record, for the
    /// [`flotilla_manager::NodeWatcher`].
    pub fn heartbeats(&self) -> Heartbeats {
        self.heartbeats.clone()
    }

    /// Opens (or closes) the gate of sessions: the leader supervisor opens
    /// it once this leader has applied a read index taken as leader, and
    /// closes it when leadership ends. Until then the store view may lack
    /// the previous leader's last entries, so sessions are not served
    /// from it.
    pub fn set_caught_up(&self, caught_up: bool) {
        self.caught_up.send_replace(caught_up);
    }

    /// Whether sessions are served now: this member leads and caught up.
    fn serving(&self) -> bool {
        *self.caught_up.borrow() && self.leadership.is_leader()
    }

    /// Waits up to `limit` for the gate to open.
    async fn wait_caught_up(&self, limit: Duration) -> bool {
        let mut gate = self.caught_up.subscribe();
        let opened = tokio::time::timeout(limit, gate.wait_for(|open| *open)).await;
        matches!(opened, Ok(Ok(_)))
    }

    /// The answer when this member does not serve sessions: where the
    /// leader is (this member, while it catches up: the agent calls again).
    fn elsewhere(&self, managers: Vec<String>) -> SessionResponse {
        SessionResponse {
            redirect: Some(self.leader_addr().unwrap_or_default()),
            version: 0,
            assignments: None,
            managers,
            role: None,
            raft_id: 0,
            epoch: Default::default(),
            mesh_version: 0,
            mesh: None,
            networks_version: 0,
            networks: None,
        }
    }

    fn leader_addr(&self) -> Option<String> {
        leader_addr(&self.view.read(), self.leadership.leader()?)
    }

    /// One session round for `req.node_id`.
    pub async fn session(&self, req: SessionRequest) -> Result<SessionResponse, SessionError> {
        if !self.leadership.is_leader() {
            return Ok(self.elsewhere(manager_addrs(&self.view.read())));
        }
        // A leader still catching up: give it a long poll's time, then
        // send the agent back to try again. Its reports stay with the
        // agent, and nothing is answered from a view that may be stale
        // (not even the managers' addresses).
        if !self.wait_caught_up(LONG_POLL).await || !self.serving() {
            return Ok(self.elsewhere(Vec::new()));
        }
        let node = self.view.read().nodes.get(&req.node_id).cloned();
        let Some(node) = node else {
            return Err(SessionError::UnknownNode(req.node_id));
        };
        let now = self.clock.now_ms();
        self.heartbeats.record(&req.node_id, now);
        if node.state != NodeState::Ready
            || (!req.addr.is_empty() && node.addr != req.addr)
            || node.version != req.version
            || node.api_addr != req.api_addr
            || node.entry_format != req.entry_format
            || node.overlay_error != req.overlay_error
            || node.engine_labels != req.engine_labels
        {
            self.proposer
                .propose(Command::NodeSeen {
                    node_id: req.node_id.clone(),
                    addr: req.addr.clone(),
                    api_addr: req.api_addr.clone(),
                    version: req.version.clone(),
                    entry_format: req.entry_format,
                    at: now,
                    overlay_error: req.overlay_error.clone(),
                    engine_labels: req.engine_labels.clone(),
                })
                .await??;
        }
        if !req.reports.is_empty() {
            let updates = useful_updates(&self.view.read(), &req.node_id, req.reports);
            if !updates.is_empty() {
                let _ = self
                    .proposer
                    .propose(Command::UpdateTaskStatus { updates })
                    .await?;
            }
        }
        let mut applied = self.view.applied.clone();
        let deadline = tokio::time::Instant::now() + LONG_POLL;
        loop {
            let at = *applied.borrow_and_update();
            let (
                tasks,
                known,
                managers,
                role,
                raft_id,
                (table, mesh_version),
                (nets, networks_version),
            ) = {
                let state = self.view.read();
                let (tasks, known) = assignments_for(&state, &req.node_id);
                let (role, raft_id) = state
                    .nodes
                    .get(&req.node_id)
                    .map(|n| (Some(n.role), n.raft_id))
                    .unwrap_or_default();
                let table = self.mesh.get(at, &state);
                let nets = self.networks.get(at, &state);
                (
                    tasks,
                    known,
                    manager_addrs(&state),
                    role,
                    raft_id,
                    table,
                    nets,
                )
            };
            let version = version_of(&tasks);
            let role_changed = req.role.is_some() && req.role != role;
            let mesh_changed = req.known_mesh.is_some_and(|known| known != mesh_version);
            let networks_changed = req
                .known_networks
                .is_some_and(|known| known != networks_version);
            if version != req.known_version || role_changed || mesh_changed || networks_changed {
                let assignments = (version != req.known_version || role_changed).then(|| {
                    // The files of its tasks' secrets and configs, opened
                    // here: they go to this node only, over mutual TLS.
                    let (files, missing) = crate::control::secrets::task_files(
                        &self.view.read(),
                        &self.keys,
                        tasks.iter(),
                    );
                    for what in missing {
                        tracing::warn!(node = %req.node_id, %what, "a task's file cannot be opened");
                    }
                    NodeAssignments {
                        tasks,
                        known_task_ids: known,
                        files,
                    }
                });
                return Ok(SessionResponse {
                    redirect: None,
                    version,
                    assignments,
                    managers,
                    role,
                    raft_id,
                    epoch: Default::default(),
                    mesh_version,
                    mesh: mesh_changed.then(|| (*table).clone()),
                    networks_version,
                    networks: networks_changed
                        .then(|| flotilla_manager::network::table_for_node(&nets, &req.node_id)),
                });
            }
            let changed = tokio::time::timeout_at(deadline, applied.changed()).await;
            if !matches!(changed, Ok(Ok(()))) || !self.serving() {
                return Ok(SessionResponse {
                    redirect: None,
                    version,
                    assignments: None,
                    managers,
                    role,
                    raft_id,
                    epoch: Default::default(),
                    mesh_version,
                    mesh: None,
                    networks_version,
                    networks: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use flotilla_manager::ProposeFuture;
    use flotilla_store::TaskStatusUpdate;
    use flotilla_types::{
        Availability, Cluster, DesiredState, Node, ServiceSpec, TaskState, TaskStatus,
    };

    use super::*;

    /// Leads, as raft member 1.
    struct Leader;

    impl Leadership for Leader {
        fn is_leader(&self) -> bool {
            true
        }

        fn leader(&self) -> Option<u64> {
            Some(1)
        }
    }

    /// Records what is proposed; the store is not changed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Command>>);

    impl Proposer for Recorder {
        fn propose(&self, command: Command) -> ProposeFuture<'_> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(command);
            Box::pin(async { Ok(Ok(None)) })
        }
    }

    struct Clock1000;

    impl Clock for Clock1000 {
        fn now_ms(&self) -> u64 {
            1_000
        }
    }

    const ADDR: &str = "127.0.0.1:4280";

    /// Manager `n1` (raft member 1, down in the store, so that a session
    /// would mark it ready) with task `t1` assigned to it.
    fn dispatcher() -> (Dispatcher, Arc<Recorder>, watch::Sender<u64>) {
        let mut state = State {
            cluster: Some(Cluster::bare("c1", 0)),
            ..State::default()
        };
        state.nodes.insert(
            "n1".into(),
            Node {
                id: "n1".into(),
                raft_id: 1,
                name: "n1".into(),
                hostname: "n1".into(),
                role: NodeRole::Manager,
                availability: Availability::Active,
                labels: Default::default(),
                state: NodeState::Down,
                addr: ADDR.into(),
                api_addr: String::new(),
                version: "test".into(),
                entry_format: 0,
                resources: Default::default(),
                platform: Default::default(),
                created_at: 0,
                last_seen: 0,
                overlay_error: None,
                engine_labels: Default::default(),
            },
        );
        state.tasks.insert(
            "t1".into(),
            Task {
                id: "t1".into(),
                service_id: "s1".into(),
                service_name: "web".into(),
                slot: 1,
                node_id: Some("n1".into()),
                desired_state: DesiredState::Running,
                status: TaskStatus::new(TaskState::Assigned, 1, "assigned"),
                spec: ServiceSpec::default().task,
                service_version: 1,
                created_at: 1,
                created_index: 1,
                restart_history: vec![],
                networks: vec![],
            },
        );
        let (applied, receiver) = watch::channel(1);
        let view = StoreView {
            state: Arc::new(std::sync::RwLock::new(state)),
            applied: receiver,
        };
        let recorder = Arc::new(Recorder::default());
        let d = Dispatcher::new(
            Arc::new(Leader),
            view,
            recorder.clone(),
            Arc::new(Clock1000),
            Default::default(),
        );
        (d, recorder, applied)
    }

    /// `n1`'s session round, reporting `t1` running.
    fn request() -> SessionRequest {
        SessionRequest {
            node_id: "n1".into(),
            reports: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                status: TaskStatus::new(TaskState::Running, 2, "running"),
            }],
            known_version: 0,
            known_mesh: Some(0),
            overlay_error: None,
            known_networks: Some(0),
            engine_labels: Default::default(),
            addr: ADDR.into(),
            api_addr: String::new(),
            version: "test".into(),
            role: Some(NodeRole::Manager),
            epoch: Default::default(),
            entry_format: flotilla_store::FORMAT,
        }
    }

    fn proposed(recorder: &Recorder) -> usize {
        recorder.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A leader that has not applied its predecessor's last entries
    /// answered sessions from that view: assignments, node records and
    /// reports judged against a state that may be missing tasks. Until
    /// the supervisor says it caught up, it answers "try again" (a
    /// redirect to the leader, itself) after a long poll, and proposes
    /// nothing.
    #[tokio::test(start_paused = true)]
    async fn a_leader_still_catching_up_serves_no_assignments() {
        let (d, recorder, _applied) = dispatcher();
        let started = tokio::time::Instant::now();
        let answer = d.session(request()).await;
        let answer = answer.map_err(|e| e.to_string());
        assert!(
            matches!(&answer, Ok(a) if a.assignments.is_none() && a.redirect.as_deref() == Some(ADDR)),
            "{answer:?}"
        );
        assert_eq!(proposed(&recorder), 0, "nothing proposed");
        assert!(started.elapsed() >= LONG_POLL, "answered at once");

        d.set_caught_up(true);
        let answer = d.session(request()).await.map_err(|e| e.to_string());
        let tasks = answer
            .as_ref()
            .ok()
            .and_then(|a| a.assignments.as_ref())
            .map(|a| a.tasks.len());
        assert_eq!(tasks, Some(1), "{answer:?}");
        // The node seen, and the report.
        assert_eq!(proposed(&recorder), 2);
    }

    /// The labels of the node's Docker Engine reach its record by the
    /// node-seen proposal.
    #[tokio::test(start_paused = true)]
    async fn engine_labels_are_recorded() {
        let (d, recorder, _applied) = dispatcher();
        d.set_caught_up(true);
        let mut req = request();
        req.engine_labels = [("disk".to_string(), "ssd".to_string())].into();
        let answer = d.session(req).await.map_err(|e| e.to_string());
        assert!(answer.is_ok(), "{answer:?}");
        let proposals = recorder.0.lock().unwrap_or_else(|e| e.into_inner());
        let labels = proposals.iter().find_map(|c| match c {
            Command::NodeSeen { engine_labels, .. } => Some(engine_labels.clone()),
            _ => None,
        });
        assert_eq!(
            labels,
            Some([("disk".to_string(), "ssd".to_string())].into())
        );
    }

    /// A session that arrives while the leader catches up is served as
    /// soon as it has.
    #[tokio::test(start_paused = true)]
    async fn a_session_is_served_once_the_leader_caught_up() {
        let (d, _recorder, _applied) = dispatcher();
        let d = Arc::new(d);
        let opener = d.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            opener.set_caught_up(true);
        });
        let answer = d.session(request()).await.map_err(|e| e.to_string());
        assert!(
            matches!(&answer, Ok(a) if a.redirect.is_none() && a.assignments.is_some()),
            "{answer:?}"
        );
    }

    /// The mesh and network tables go to agents that ask for them, once
    /// per change; an agent of an older version (which sends no
    /// `known_mesh` or `known_networks`) gets none, so its long poll is not
    /// answered at once, every time, with a table it ignores.
    #[tokio::test(start_paused = true)]
    async fn the_tables_go_to_agents_that_ask_once_per_change() {
        let (d, _recorder, _applied) = dispatcher();
        d.set_caught_up(true);
        let first = d.session(request()).await.map_err(|e| e.to_string());
        let first = first.as_ref().expect("answer");
        assert!(first.mesh.is_some(), "a first table: {first:?}");
        assert_ne!(first.mesh_version, 0);
        assert!(first.networks.is_some(), "a first network table: {first:?}");
        assert_ne!(first.networks_version, 0);

        // Holding that table and these assignments: nothing to say, so
        // the call waits out its long poll and sends no table.
        let mut again = request();
        again.reports.clear();
        again.known_version = first.version;
        again.known_mesh = Some(first.mesh_version);
        again.known_networks = Some(first.networks_version);
        let started = tokio::time::Instant::now();
        let answer = d.session(again.clone()).await.map_err(|e| e.to_string());
        let answer = answer.as_ref().expect("answer");
        assert!(
            answer.mesh.is_none() && answer.networks.is_none() && answer.assignments.is_none(),
            "{answer:?}"
        );
        assert!(started.elapsed() >= LONG_POLL, "answered at once");

        // An older agent: no table, and a long poll as before.
        let mut old = again;
        old.known_mesh = None;
        old.known_networks = None;
        let started = tokio::time::Instant::now();
        let answer = d.session(old).await.map_err(|e| e.to_string());
        let answer = answer.as_ref().expect("answer");
        assert!(
            answer.mesh.is_none() && answer.networks.is_none(),
            "{answer:?}"
        );
        assert!(started.elapsed() >= LONG_POLL, "answered at once");
    }
}
