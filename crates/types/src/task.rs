//! A task: one run of one slot of a service on one node.
//!
//! Observed state only moves forward along
//! new → pending → assigned → accepted → preparing → starting → running and
//! then to one terminal state: complete, failed, shutdown, rejected or
//! orphaned. The manager decides the desired state; the agent reports the
//! observed state.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::network::NetworkAddress;
use crate::port::TaskPort;
use crate::service::TaskTemplate;
use crate::UnixMs;

/// Observed state, in lifecycle order (the derive of `Ord` relies on it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the orchestrator.
    New,
    /// Waiting for the scheduler to find a node.
    Pending,
    /// Placed on a node; the agent has not seen it yet.
    Assigned,
    /// The agent took it.
    Accepted,
    /// The agent prepares it (log files, lookups).
    Preparing,
    /// The driver starts it.
    Starting,
    /// It runs.
    Running,
    /// It exited with status 0.
    Complete,
    /// It exited with a non-zero status or was killed.
    Failed,
    /// It was stopped because its desired state became shutdown.
    Shutdown,
    /// The agent could not start it.
    Rejected,
    /// Its node went away.
    Orphaned,
}

impl TaskState {
    /// No state follows a terminal one.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// The task occupies its slot on a node: placed and not yet ended.
    pub fn is_active(self) -> bool {
        self >= TaskState::Assigned && !self.is_terminal()
    }

    /// Whether the state machine may go from `self` to `next`.
    pub fn can_move_to(self, next: TaskState) -> bool {
        !self.is_terminal() && next > self
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Shutdown => "shutdown",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        }
    }
}

/// What the manager wants of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Shutdown,
}

impl DesiredState {
    pub fn as_str(&self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Shutdown => "shutdown",
        }
    }
}

/// A running task's health, as its health check finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Checked, but not yet healthy (within the start period, or before
    /// the first success).
    Starting,
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl Health {
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// The observed state with what explains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// When the state was entered (the reporter's clock).
    pub timestamp: UnixMs,
    /// A short human note: "started", "no suitable node (...)".
    #[serde(default)]
    pub message: String,
    /// Why it failed or was rejected.
    #[serde(default)]
    pub error: Option<String>,
    /// Exit status of the process, when it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Process ID while it runs under the process driver.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The container's ID under the docker driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Set while the task runs, for tasks with a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Where the task's target ports answer on its node, from the time it
    /// starts (reported with `starting` or `running`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<TaskPort>,
}

impl TaskStatus {
    /// Whether a reported status replaces this one: it moves the state
    /// forward, or it changes the health within the same live state.
    pub fn accepts(&self, next: &TaskStatus) -> bool {
        self.state.can_move_to(next.state)
            || (self.state == next.state && !self.state.is_terminal() && self.health != next.health)
    }

    pub fn new(state: TaskState, timestamp: UnixMs, message: impl Into<String>) -> Self {
        TaskStatus {
            state,
            timestamp,
            message: message.into(),
            error: None,
            exit_code: None,
            pid: None,
            container_id: None,
            health: None,
            ports: Vec::new(),
        }
    }
}

/// Which slot a task fills: a number for replicated services, a node for
/// global ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKey {
    Replica(u64),
    Node(String),
}

/// One run of one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    /// Slot number for replicated services (1-based); 0 for global ones.
    pub slot: u64,
    /// Set by the scheduler; fixed at creation for global services.
    pub node_id: Option<String>,
    pub desired_state: DesiredState,
    pub status: TaskStatus,
    /// Copy of the service's task template when the task was made.
    pub spec: TaskTemplate,
    /// The service version the task was made from.
    pub service_version: u64,
    pub created_at: UnixMs,
    /// Raft index at creation: orders the tasks of a slot.
    pub created_index: u64,
    /// Times of the restarts of this slot that led to this task, within the
    /// restart window; used for `max_attempts`.
    #[serde(default)]
    pub restart_history: Vec<UnixMs>,
    /// Its address on each network of its template, given by the leader's
    /// allocator before it is placed; empty for a task on no network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAddress>,
}

impl Task {
    /// Running and, when it has a health check, healthy: what a rolling
    /// update waits for and what `service ls` counts.
    pub fn is_ready(&self) -> bool {
        self.status.state == TaskState::Running
            && matches!(self.status.health, None | Some(Health::Healthy))
    }

    /// The slot this task fills.
    pub fn slot_key(&self) -> SlotKey {
        if self.slot == 0 {
            SlotKey::Node(self.node_id.clone().unwrap_or_default())
        } else {
            SlotKey::Replica(self.slot)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward() {
        assert!(TaskState::New.can_move_to(TaskState::Pending));
        assert!(TaskState::Assigned.can_move_to(TaskState::Running));
        assert!(TaskState::Running.can_move_to(TaskState::Failed));
        assert!(!TaskState::Running.can_move_to(TaskState::Starting));
        assert!(!TaskState::Running.can_move_to(TaskState::Running));
        assert!(!TaskState::Failed.can_move_to(TaskState::Shutdown));
        assert!(!TaskState::Complete.can_move_to(TaskState::Orphaned));
    }

    #[test]
    fn terminal_and_active() {
        assert!(!TaskState::Running.is_terminal());
        assert!(TaskState::Running.is_active());
        assert!(!TaskState::Pending.is_active());
        for s in [
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Shutdown,
            TaskState::Rejected,
            TaskState::Orphaned,
        ] {
            assert!(s.is_terminal());
            assert!(!s.is_active());
        }
    }
}
