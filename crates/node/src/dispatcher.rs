//! The leader's dispatcher: agent sessions (heartbeats, status reports,
//! assignments).
//!
//! Every node's agent, the leader's own included, talks to it through
//! [`Dispatcher::session`]; remote agents reach it over the cluster port.
//! Sessions record heartbeats into [`Heartbeats`], which the manager's
//! [`flotilla_manager::NodeWatcher`] reads to declare nodes down. Writes go
//! through a [`Proposer`] and times come from a [`Clock`], so that nothing
//! here needs raft itself beyond [`Leadership`].

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use flotilla_manager::dispatcher::{assignments_for, useful_updates};
use flotilla_manager::{Clock, Heartbeats, ProposeError, Proposer, StoreView};
use flotilla_raft::RaftNode;
use flotilla_store::{Command, State};
use flotilla_types::{NodeRole, NodeState, Task};

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
}

impl Dispatcher {
    pub fn new(
        leadership: Arc<dyn Leadership>,
        view: StoreView,
        proposer: Arc<dyn Proposer>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Dispatcher {
            leadership,
            view,
            proposer,
            clock,
            heartbeats: Heartbeats::new(),
        }
    }

    /// The heartbeats this dispatcher's sessions record, for the
    /// [`flotilla_manager::NodeWatcher`].
    pub fn heartbeats(&self) -> Heartbeats {
        self.heartbeats.clone()
    }

    fn leader_addr(&self) -> Option<String> {
        leader_addr(&self.view.read(), self.leadership.leader()?)
    }

    /// One session round for `req.node_id`.
    pub async fn session(&self, req: SessionRequest) -> Result<SessionResponse, SessionError> {
        if !self.leadership.is_leader() {
            return Ok(SessionResponse {
                redirect: Some(self.leader_addr().unwrap_or_default()),
                version: 0,
                assignments: None,
                managers: manager_addrs(&self.view.read()),
                role: None,
                raft_id: 0,
            });
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
        {
            self.proposer
                .propose(Command::NodeSeen {
                    node_id: req.node_id.clone(),
                    addr: req.addr.clone(),
                    api_addr: req.api_addr.clone(),
                    version: req.version.clone(),
                    entry_format: req.entry_format,
                    at: now,
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
            let (tasks, known, managers, role, raft_id) = {
                let state = self.view.read();
                let (tasks, known) = assignments_for(&state, &req.node_id);
                let (role, raft_id) = state
                    .nodes
                    .get(&req.node_id)
                    .map(|n| (Some(n.role), n.raft_id))
                    .unwrap_or_default();
                (tasks, known, manager_addrs(&state), role, raft_id)
            };
            let version = version_of(&tasks);
            let role_changed = req.role.is_some() && req.role != role;
            if version != req.known_version || role_changed {
                return Ok(SessionResponse {
                    redirect: None,
                    version,
                    assignments: Some(NodeAssignments {
                        tasks,
                        known_task_ids: known,
                    }),
                    managers,
                    role,
                    raft_id,
                });
            }
            let changed = tokio::time::timeout_at(deadline, applied.changed()).await;
            if !matches!(changed, Ok(Ok(()))) || !self.leadership.is_leader() {
                return Ok(SessionResponse {
                    redirect: None,
                    version,
                    assignments: None,
                    managers,
                    role,
                    raft_id,
                });
            }
        }
    }
}
