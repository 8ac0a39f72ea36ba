//! A node: one machine running `flotilla daemon`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::UnixMs;

/// Managers hold the raft log and may lead; workers only run tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Manager,
    Worker,
}

impl NodeRole {
    /// The lowercase word used in constraints and tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        }
    }
}

/// Whether the scheduler may place tasks on a node (Swarm's availability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// Takes new tasks.
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks are moved elsewhere.
    Drain,
}

impl std::str::FromStr for Availability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            other => Err(format!(
                "invalid availability {other:?}: expected active, pause or drain"
            )),
        }
    }
}

impl Availability {
    pub fn as_str(&self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

/// Whether the node's agent is talking to the managers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeats arrive.
    Ready,
    /// No heartbeat within the node timeout.
    Down,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
    }
}

/// What `uname` would say: `linux`, `x86_64`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

impl Platform {
    /// The platform this program runs on.
    pub fn current() -> Self {
        Platform {
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        }
    }
}

/// A machine in the cluster. `name`, `role`, `availability` and `labels` are
/// spec (set by users); `state`, `addr`, `version` and `last_seen` are status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Random ID chosen when the node first joined or ran `init`.
    pub id: String,
    /// Raft member ID; unique for the cluster's lifetime, never reused.
    pub raft_id: u64,
    /// Defaults to the host name.
    pub name: String,
    /// The machine's host name as the node reported it.
    pub hostname: String,
    pub role: NodeRole,
    pub availability: Availability,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub state: NodeState,
    /// Address other nodes reach its cluster port at.
    #[serde(default)]
    pub addr: String,
    /// Address of its client API port (managers), empty if it has none.
    #[serde(default)]
    pub api_addr: String,
    /// Flotilla version the node runs.
    pub version: String,
    /// CPUs and memory the node has for tasks, as it reported them; zero
    /// when unknown (then reservations are not checked against it).
    #[serde(default)]
    pub resources: crate::Resources,
    /// The node's operating system and architecture, for
    /// `node.platform.*` constraints.
    #[serde(default)]
    pub platform: Platform,
    /// The labels of the node's Docker Engine (`docker info`), as its
    /// agent reported them, for `engine.labels.*` constraints and
    /// preferences; empty without an engine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_labels: BTreeMap<String, String>,
    pub created_at: UnixMs,
    /// Last time the node reported in.
    pub last_seen: UnixMs,
    /// The newest raft entry format its version reads
    /// (`flotilla_store::entry`); 0 in records from before nodes said,
    /// which means the bare format. Managers only matter.
    #[serde(default)]
    pub entry_format: u32,
    /// Why the node cannot run tasks on overlay networks (not root, no
    /// iproute2, no VXLAN in its kernel), as its agent found at start;
    /// none: it can, or its version does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_error: Option<String>,
}

impl Node {
    /// The IP of its cluster address, when it has one.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
    }
}
