//! The routing mesh's view of the cluster: which ports every node
//! publishes and which ready tasks answer behind each, and the counters
//! the data path keeps.
//!
//! The leader's dispatcher computes a [`MeshTable`] from the store and
//! sends it to every node's agent with its session; the node's mesh
//! (crate `flotilla-mesh`) listens and forwards by it. It is plain data so
//! that the decision (who is in rotation) stays a pure function and the
//! data path knows nothing of raft or the store.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::port::Protocol;

/// Every published port of the cluster and its backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct MeshTable {
    pub services: Vec<MeshService>,
}

/// How a service's connections are spread over its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// The backend with the fewest open connections from this node; ties
    /// go round.
    #[default]
    LeastConnections,
    RoundRobin,
}

/// The PROXY protocol header the mesh sends a backend first, so that it
/// sees the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// How the routing mesh handles a service's connections: part of the
/// service's spec (`ServiceSpec::mesh`), and sent with its ports in the
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
pub struct MeshOptions {
    #[serde(default)]
    pub balance: Balance,
    /// Send the client's address to the task first (`--proxy-protocol`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Close a connection after this long without a byte either way (for
    /// UDP: end the flow); none: never (long-lived idle connections stay
    /// open; UDP flows end after 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// At most this many connections at once through one node, beyond
    /// which new ones are refused; none: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl MeshOptions {
    pub fn is_default(&self) -> bool {
        *self == MeshOptions::default()
    }
}

/// One service's published ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct MeshService {
    pub service_id: String,
    pub service_name: String,
    #[serde(flatten)]
    pub options: MeshOptions,
    pub ports: Vec<MeshPort>,
}

/// A published port and the tasks in rotation behind it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct MeshPort {
    pub published: u16,
    pub target: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// The ready tasks, ordered by task ID.
    pub backends: Vec<Backend>,
}

/// One task's endpoint for a target port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Backend {
    pub task_id: String,
    pub node_id: String,
    #[schema(value_type = String)]
    pub addr: SocketAddr,
}

/// Counters of one node's mesh, for `mesh stats` and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MeshStats {
    pub node_id: String,
    pub listeners: Vec<ListenerStats>,
}

/// One published port on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListenerStats {
    pub service_name: String,
    pub published: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Whether the node listens on it; `false` with `error` when the port
    /// could not be opened (another program holds it).
    pub listening: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Connections open now, the most at once, and all so far.
    pub current: u64,
    pub max: u64,
    pub total: u64,
    /// Connections refused: no backend in rotation, or over the cap.
    pub refused: u64,
    pub backends: Vec<BackendStats>,
}

/// One backend as seen from one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackendStats {
    pub task_id: String,
    pub addr: String,
    /// In rotation now (it is in the table); a backend that left keeps its
    /// counters while connections to it stay open.
    pub in_rotation: bool,
    pub current: u64,
    pub max: u64,
    pub total: u64,
    /// Bytes from clients to the backend, and back.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Connection attempts to it that failed.
    pub errors: u64,
    /// Connections that went to another backend after this one failed.
    pub retries: u64,
    /// When the last connection to it was tried (ms since the epoch), and
    /// whether it connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<u64>,
    #[serde(default)]
    pub last_ok: bool,
}
