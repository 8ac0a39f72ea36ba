//! The leader's dispatcher: agent sessions (heartbeats, status reports,
//! assignments) and declaring nodes down when their heartbeats stop.
//!
//! Every node's agent, the leader's own included, talks to it through
//! [`Dispatcher::session`]; remote agents reach it over the cluster port.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use flotilla_manager::dispatcher::{
    assignments_for, expired_nodes, orphan_updates, useful_updates,
};
use flotilla_manager::StoreView;
use flotilla_raft::{RaftError, RaftNode};
use flotilla_store::{Command, State};
use flotilla_types::{NodeRole, NodeState, Task};

use super::now_ms;
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
    Raft(#[from] RaftError),
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

/// The leader's side of agent sessions.
pub struct Dispatcher {
    raft: Arc<RaftNode>,
    view: StoreView,
    last_seen: Mutex<HashMap<String, u64>>,
    node_timeout: Duration,
}

impl Dispatcher {
    pub fn new(raft: Arc<RaftNode>, view: StoreView, node_timeout: Duration) -> Self {
        Dispatcher {
            raft,
            view,
            last_seen: Mutex::new(HashMap::new()),
            node_timeout,
        }
    }

    fn leader_addr(&self) -> Option<String> {
        leader_addr(&self.view.read(), self.raft.leader()?)
    }

    /// One session round for `req.node_id`.
    pub async fn session(&self, req: SessionRequest) -> Result<SessionResponse, SessionError> {
        if !self.raft.is_leader() {
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
        if let Ok(mut seen) = self.last_seen.lock() {
            seen.insert(req.node_id.clone(), now_ms());
        }
        if node.state != NodeState::Ready
            || (!req.addr.is_empty() && node.addr != req.addr)
            || node.version != req.version
            || node.api_addr != req.api_addr
        {
            self.raft
                .propose(Command::NodeSeen {
                    node_id: req.node_id.clone(),
                    addr: req.addr.clone(),
                    api_addr: req.api_addr.clone(),
                    version: req.version.clone(),
                    at: now_ms(),
                })
                .await??;
        }
        if !req.reports.is_empty() {
            let updates = useful_updates(&self.view.read(), req.reports);
            if !updates.is_empty() {
                let _ = self
                    .raft
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
            if !matches!(changed, Ok(Ok(()))) || !self.raft.is_leader() {
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

    /// Declares nodes down when their heartbeats stop, and orphans their
    /// tasks so that the orchestrator replaces them at once.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let since = now_ms();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = now_ms();
            let (down, orphans) = {
                let seen = match self.last_seen.lock() {
                    Ok(s) => s.clone(),
                    Err(p) => p.into_inner().clone(),
                };
                let state = self.view.read();
                let down = expired_nodes(
                    &state,
                    &seen,
                    now,
                    since,
                    self.node_timeout.as_millis() as u64,
                );
                let orphans = orphan_updates(&state, &down, now);
                (down, orphans)
            };
            if down.is_empty() {
                continue;
            }
            tracing::warn!(nodes = ?down, tasks = orphans.len(), "nodes stopped sending heartbeats: marking them down");
            let marked = self
                .raft
                .propose(Command::SetNodeState {
                    node_ids: down,
                    state: NodeState::Down,
                    at: now,
                })
                .await;
            if let Err(e) = marked {
                tracing::warn!(error = %e, "could not mark nodes down");
                continue;
            }
            if !orphans.is_empty() {
                if let Err(e) = self
                    .raft
                    .propose(Command::UpdateTaskStatus { updates: orphans })
                    .await
                {
                    tracing::warn!(error = %e, "could not orphan the tasks of down nodes");
                }
            }
        }
    }
}
