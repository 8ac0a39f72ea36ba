//! Bodies of the cluster port's endpoints (node to node).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use flotilla_store::TaskStatusUpdate;
use flotilla_types::Task;

/// `POST /join/v1/join`: a node with a token asks to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's secret; it decides the role.
    pub secret: String,
    /// CSR for the node's new key.
    pub csr_pem: String,
    pub name: String,
    pub hostname: String,
    /// Where other nodes reach the joining node's cluster port.
    pub addr: String,
    /// Its client API address, if it serves one.
    #[serde(default)]
    pub api_addr: String,
    pub version: String,
    /// The CPUs and memory the joining machine has.
    #[serde(default)]
    pub resources: flotilla_types::Resources,
    #[serde(default)]
    pub platform: flotilla_types::Platform,
}

/// What a joining node gets back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub node_id: String,
    /// `manager` or `worker`.
    pub role: String,
    /// Raft member ID for managers; 0 for workers.
    pub raft_id: u64,
    pub cert_pem: String,
    pub ca_pem: String,
    /// Cluster addresses of the managers.
    pub managers: Vec<String>,
}

/// `POST /cluster/v1/session`: an agent's heartbeat, carrying status
/// reports; answered with its assignments when they changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRequest {
    pub node_id: String,
    pub reports: Vec<TaskStatusUpdate>,
    /// Version of the assignments the agent holds (0: none).
    pub known_version: u64,
    pub addr: String,
    #[serde(default)]
    pub api_addr: String,
    pub version: String,
    /// The role this node's certificate states.
    #[serde(default)]
    pub role: String,
}

/// The dispatcher's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionResponse {
    /// Set when the callee is not the leader: where to go instead.
    pub redirect: Option<String>,
    /// Version of `assignments` (or of the unchanged set).
    pub version: u64,
    /// The whole set when it changed since `known_version`.
    pub assignments: Option<NodeAssignments>,
    /// Cluster addresses of the managers, for failover.
    pub managers: Vec<String>,
    /// The node's role and raft ID as the store has them; a node whose
    /// certificate says otherwise changes role (promote/demote).
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub raft_id: u64,
}

/// `POST /cluster/v1/renew`: a node asks for a new certificate for the
/// key of `csr_pem`, with the role the store gives it now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// The renewed certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    pub cert_pem: String,
    pub role: String,
    pub raft_id: u64,
}

/// The tasks a node must know about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeAssignments {
    pub tasks: Vec<Task>,
    pub known_task_ids: BTreeSet<String>,
}

/// `POST /cluster/v1/add-manager`: a manager that joined asks to become a
/// raft voter once its raft endpoints answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddManager {
    pub raft_id: u64,
    pub addr: String,
}
