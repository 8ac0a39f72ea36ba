//! A service: the spec a user asked for, and its identity in the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;
use crate::UnixMs;

/// Stop grace period when none is given: SIGTERM, then SIGKILL after this.
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

/// How many tasks a service wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum ServiceMode {
    /// `replicas` slots, numbered 1..=replicas, spread over the nodes.
    Replicated { replicas: u64 },
    /// One task on every node that satisfies the constraints.
    Global,
}

impl ServiceMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
        }
    }
}

/// What runs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A plain child process of the agent. Needs nothing else.
    #[default]
    Process,
}

impl Driver {
    pub fn as_str(&self) -> &'static str {
        match self {
            Driver::Process => "process",
        }
    }
}

/// When a task that ended by itself is replaced (Swarm's restart condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never.
    None,
    /// When it failed: non-zero exit, or it could not start.
    OnFailure,
    /// Whenever it ended.
    #[default]
    Any,
}

impl RestartCondition {
    pub fn as_str(&self) -> &'static str {
        match self {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        }
    }

    /// Parses `none`, `on-failure` or `any`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" | "no" => Some(RestartCondition::None),
            "on-failure" => Some(RestartCondition::OnFailure),
            "any" | "always" => Some(RestartCondition::Any),
            _ => None,
        }
    }
}

/// Swarm's restart policy. It governs only tasks that ended by themselves;
/// tasks the cluster stopped (node shut down, scaled away) are replaced
/// regardless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Wait between a task ending and its replacement starting.
    pub delay_ms: u64,
    /// Restarts allowed within `window_ms` (or ever, with no window). 0 means
    /// unlimited, as in Swarm.
    pub max_attempts: u64,
    /// The window restarts are counted in; 0 means unbounded.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

/// What each task of a service runs, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTemplate {
    #[serde(default)]
    pub driver: Driver,
    /// Program and arguments; the program is looked up in `PATH`.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    pub stop_grace_period_ms: u64,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Bumped by `service update --force` so that every task is replaced
    /// although nothing else changed.
    #[serde(default)]
    pub force_update: u64,
}

/// Everything a user says about a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(flatten)]
    pub mode: ServiceMode,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub task: TaskTemplate,
}

/// A service as stored: its spec plus identity and bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub spec: ServiceSpec,
    /// Raft index of the last change to the spec; tasks remember the version
    /// they were made from.
    pub version: u64,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// The spec before the last change of the task template: what
    /// `service rollback` returns to.
    #[serde(default)]
    pub previous_spec: Option<Box<ServiceSpec>>,
}
