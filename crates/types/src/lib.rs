//! The domain model of Flotilla: nodes, services, tasks and the cluster, as
//! plain data with serde. Specs are what a user asked for; statuses are what
//! was observed.
//!
//! This crate owns the vocabulary and the validation of user input (names,
//! constraints, durations, service specs). It does no I/O, reads no clock
//! and draws no random numbers: callers pass time and IDs in, so that the
//! raft state machine that applies these types stays deterministic.
//!
//! # Layout
//! - [`node`]: a machine in the cluster, its role and availability.
//! - [`service`]: the service spec (mode, task template, restart policy).
//! - [`task`]: one run of a service slot on a node, and its state machine.
//! - [`constraint`]: placement constraints such as `node.labels.zone==a`.
//! - [`container`]: how a task runs beyond its command (user, stop signal,
//!   ulimits, extra hosts, log driver, bind propagation) and their parsing.
//! - [`template`]: Swarm's task templates (`{{.Task.Slot}}`), expanded on
//!   the node.
//! - [`duration`]: parsing `10s`, `1m30s`, `250ms`.
//! - [`name`]: Swarm's naming rule for services and nodes.
//! - [`validate`]: the rules a service spec follows ([`ServiceSpec::validate`]).
//! - [`parse`]: memory sizes and command lines as people type them.
//! - [`port`]: published ports, their allocation and tasks' ports.
//! - [`mesh`]: the routing mesh's table (published ports and their ready
//!   tasks) and its counters.
//! - [`network`]: networks, their subnets and the addresses of services
//!   and tasks on them.
//! - [`id`]: object IDs.
//! - [`epoch`]: the cluster epoch (which raft group of a cluster).

pub mod constraint;
pub mod container;
pub mod duration;
pub mod epoch;
pub mod id;
pub mod mesh;
pub mod name;
pub mod network;
pub mod node;
pub mod parse;
pub mod port;
pub mod secret;
pub mod service;
pub mod task;
pub mod template;
pub mod validate;

pub use constraint::{
    Constraint, ConstraintError, ConstraintKey, ConstraintOp, PlacementPreference,
};
pub use container::{parse_signal, ExtraHost, LogDriver, Propagation, Ulimit};
pub use duration::{format_duration_ms, parse_duration_ms, DurationError};
pub use epoch::{Epoch, EpochError};
pub use id::{new_id, ID_LEN};
pub use mesh::MeshOptions;
pub use name::{validate_name, NameError};
pub use network::{
    EndpointMode, Network, NetworkAddress, NetworkAttachment, NetworkDriver, NetworkSpec, Subnet,
    SubnetError,
};
pub use node::{Availability, Node, NodeRole, NodeState, Platform};
pub use parse::{parse_memory, split_command};
pub use port::{
    carry_over, parse_publish, PortConfig, Protocol, PublishMode, PublishedPort, TaskPort,
    DYNAMIC_PORTS,
};
pub use secret::{
    SealedData, Secret, SecretData, SecretKind, SecretRef, SecretSpec, SecretVersion, TaskFile,
    MAX_SECRET_BYTES,
};
pub use service::{
    Driver, FailureAction, HealthCheck, HealthTest, Mount, MountKind, Ratio, ResourceSpec,
    Resources, RestartCondition, RestartPolicy, Service, ServiceMode, ServiceSpec, TaskTemplate,
    UpdateConfig, UpdateOrder, UpdateState, UpdateStatus, DEFAULT_HEALTH_INTERVAL_MS,
    DEFAULT_HEALTH_RETRIES, DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_STOP_GRACE_MS,
};
pub use task::{DesiredState, Health, SlotKey, Task, TaskState, TaskStatus};
pub use template::TemplateContext;
pub use validate::{check_replicas, SpecError, MAX_REPLICAS};

use serde::{Deserialize, Serialize};

/// `Display` as the lowercase word of `as_str`, which is also the JSON form.
macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

display_as_str!(
    NodeRole,
    Availability,
    NodeState,
    TaskState,
    DesiredState,
    Health
);

/// Milliseconds since the Unix epoch. Always chosen by whoever proposes a
/// change, never read inside the state machine.
pub type UnixMs = u64;

/// The cluster as a whole: created once by `flotilla init`.
///
/// It holds the CA key and the join secrets: the store is replicated to
/// managers only (workers never see it), as in Swarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Random ID chosen at `init`.
    pub id: String,
    /// When `init` ran.
    pub created_at: UnixMs,
    /// The cluster CA's certificate, PEM.
    #[serde(default)]
    pub ca_cert_pem: String,
    /// The cluster CA's private key, PEM; managers sign node certificates.
    #[serde(default)]
    pub ca_key_pem: String,
    /// Secret of the worker join token.
    #[serde(default)]
    pub worker_secret: String,
    /// Secret of the manager join token.
    #[serde(default)]
    pub manager_secret: String,
    /// The next raft member ID to hand out. Raft IDs are never reused.
    #[serde(default = "first_raft_id")]
    pub next_raft_id: u64,
    /// The raft group: drawn at `init`, drawn anew at each
    /// `--force-new-cluster`; absent (the default) in stores of older
    /// versions.
    #[serde(default)]
    pub epoch: Epoch,
    /// The key that seals secret and config data (AES-256, base64),
    /// drawn by the first manager that stores one; empty until then and in
    /// stores of older versions.
    #[serde(default, skip_serializing_if = "SecretData::is_empty")]
    pub data_key: SecretData,
    /// Set while autolock is on: the CA key and the data key, sealed under
    /// the unlock key that only the managers' memory holds (`ca_key_pem`
    /// and `data_key` are empty then). Absent in stores of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autolock: Option<SealedData>,
    /// Backups the leader writes on a schedule (`flotilla backup
    /// --schedule`). Absent in stores of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<BackupSchedule>,
}

/// `flotilla backup --schedule EVERY --keep N --dir DIR`: every `every_ms`
/// the leader writes a backup into `dir` on its own machine and keeps the
/// newest `keep` there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSchedule {
    pub every_ms: u64,
    pub keep: u32,
    pub dir: String,
}

fn first_raft_id() -> u64 {
    2
}

impl Cluster {
    /// A cluster with no CA or secrets (tests, and clusters made before
    /// they existed).
    pub fn bare(id: impl Into<String>, created_at: UnixMs) -> Self {
        Cluster {
            id: id.into(),
            created_at,
            ca_cert_pem: String::new(),
            ca_key_pem: String::new(),
            worker_secret: String::new(),
            manager_secret: String::new(),
            next_raft_id: first_raft_id(),
            epoch: Epoch::default(),
            data_key: SecretData::default(),
            autolock: None,
            backup_schedule: None,
        }
    }
}
