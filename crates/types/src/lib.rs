//! The domain model of Flotilla: nodes, services, tasks and the cluster, as
//! plain data with serde. Specs are what a user asked for; statuses are what
//! was observed.
//!
//! This crate owns the vocabulary and the validation of user input (names,
//! constraints, durations). It does no I/O, reads no clock and draws no random
//! numbers: callers pass time and IDs in, so that the raft state machine that
//! applies these types stays deterministic.
//!
//! # Layout
//! - [`node`]: a machine in the cluster, its role and availability.
//! - [`service`]: the service spec (mode, task template, restart policy).
//! - [`task`]: one run of a service slot on a node, and its state machine.
//! - [`constraint`]: placement constraints such as `node.labels.zone==a`.
//! - [`duration`]: parsing `10s`, `1m30s`, `250ms`.
//! - [`name`]: Swarm's naming rule for services and nodes.
//! - [`id`]: object IDs.

pub mod constraint;
pub mod duration;
pub mod id;
pub mod name;
pub mod node;
pub mod service;
pub mod task;

pub use constraint::{Constraint, ConstraintError, ConstraintKey, ConstraintOp};
pub use duration::{format_duration_ms, parse_duration_ms, DurationError};
pub use id::{new_id, ID_LEN};
pub use name::{validate_name, NameError};
pub use node::{Availability, Node, NodeRole, NodeState};
pub use service::{
    Driver, RestartCondition, RestartPolicy, Service, ServiceMode, ServiceSpec, TaskTemplate,
    DEFAULT_STOP_GRACE_MS,
};
pub use task::{DesiredState, SlotKey, Task, TaskState, TaskStatus};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. Always chosen by whoever proposes a
/// change, never read inside the state machine.
pub type UnixMs = u64;

/// The cluster as a whole: created once by `flotilla init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Random ID chosen at `init`.
    pub id: String,
    /// When `init` ran.
    pub created_at: UnixMs,
}
