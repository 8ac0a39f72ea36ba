//! Bodies of the cluster port's endpoints (node to node).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use flotilla_store::TaskStatusUpdate;
use flotilla_types::mesh::MeshTable;
use flotilla_types::{Epoch, NodeRole, Task};

/// `POST /cluster/v1/propose`: a follower forwards a client's write with
/// the ID of the request, the same on every retry, so that the write
/// applies once. The command's own fields are at the top level: a leader
/// from before request IDs reads the body as the bare command and ignores
/// `request`; a body from such a follower has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forwarded {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<flotilla_store::RequestId>,
    #[serde(flatten)]
    pub command: flotilla_store::Command,
}

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
    /// The newest raft entry format its version reads; nodes from before
    /// the envelope send nothing (0: the bare format).
    #[serde(default)]
    pub entry_format: u32,
}

/// What a joining node gets back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub node_id: String,
    pub role: NodeRole,
    /// Raft member ID for managers; 0 for workers.
    pub raft_id: u64,
    pub cert_pem: String,
    pub ca_pem: String,
    /// Cluster addresses of the managers.
    pub managers: Vec<String>,
    /// The cluster epoch (none from older managers).
    #[serde(default)]
    pub epoch: Epoch,
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
    /// The role this node's certificate states; nodes from before it was
    /// sent send nothing or `""`.
    #[serde(default, with = "empty_as_none")]
    pub role: Option<NodeRole>,
    /// The cluster epoch the agent follows (none from older nodes).
    #[serde(default)]
    pub epoch: Epoch,
    /// The newest raft entry format this node's version reads (0 from
    /// nodes from before the envelope).
    #[serde(default)]
    pub entry_format: u32,
    /// Version of the mesh table the node holds (`Some(0)`: none yet).
    /// Nodes of older versions send nothing, and are sent no table (else
    /// every long poll would answer at once with a table they ignore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_mesh: Option<u64>,
    /// Why this node cannot run tasks on overlay networks, as its agent
    /// found at start; none: it can (older versions send nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_error: Option<String>,
    /// Version of the network table the node holds (`Some(0)`: none
    /// yet); older versions send nothing and are sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_networks: Option<u64>,
    /// The labels of the node's Docker Engine (`docker info`), for
    /// `engine.labels.*` constraints; none without an engine (and from
    /// older versions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_labels: BTreeMap<String, String>,
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
    #[serde(default, with = "empty_as_none")]
    pub role: Option<NodeRole>,
    #[serde(default)]
    pub raft_id: u64,
    /// The cluster epoch of the manager that answers (set by the cluster
    /// endpoint; none in process or from older managers): the agent
    /// follows it from then on.
    #[serde(default)]
    pub epoch: Epoch,
    /// Version of the mesh table (or of the unchanged one).
    #[serde(default)]
    pub mesh_version: u64,
    /// The whole mesh table when it changed since `known_mesh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshTable>,
    /// Version of the network table (or of the unchanged one).
    #[serde(default)]
    pub networks_version: u64,
    /// The whole network table when it changed since `known_networks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<flotilla_types::network::NetworkTable>,
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
    pub role: NodeRole,
    pub raft_id: u64,
}

/// The tasks a node must know about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeAssignments {
    pub tasks: Vec<Task>,
    pub known_task_ids: BTreeSet<String>,
    /// The files (secrets and configs, in the clear) of the tasks that are
    /// to run, by task ID; none from older managers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, Vec<flotilla_types::TaskFile>>,
}

/// `POST /cluster/v1/add-manager`: a manager that joined asks to become a
/// raft voter once its raft endpoints answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddManager {
    pub raft_id: u64,
    pub addr: String,
    /// The node that asks; empty from older nodes (the caller's
    /// certificate says), filled in by a manager that forwards the request.
    #[serde(default)]
    pub node_id: String,
}

/// An optional role that older nodes write as `""` for none: read `""`,
/// `null` or nothing as `None`, and write `None` as `""`, which every
/// version reads.
mod empty_as_none {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use flotilla_types::NodeRole;

    pub fn serialize<S: Serializer>(role: &Option<NodeRole>, s: S) -> Result<S::Ok, S::Error> {
        match role {
            Some(r) => r.serialize(s),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NodeRole>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None | Some("") => Ok(None),
            Some("manager") => Ok(Some(NodeRole::Manager)),
            Some("worker") => Ok(Some(NodeRole::Worker)),
            Some(other) => Err(serde::de::Error::custom(format!(
                "invalid role {other:?}: expected worker or manager"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_request(role: &str) -> String {
        format!(
            r#"{{"node_id":"n","reports":[],"known_version":0,"addr":"a","version":"v"{role}}}"#
        )
    }

    #[test]
    fn a_session_request_without_a_role_is_read() {
        for role in ["", r#","role":"""#, r#","role":null"#] {
            let req: SessionRequest =
                serde_json::from_str(&session_request(role)).expect("old request");
            assert_eq!(req.role, None, "{role}");
        }
        let req: SessionRequest =
            serde_json::from_str(&session_request(r#","role":"manager""#)).expect("request");
        assert_eq!(req.role, Some(NodeRole::Manager));
        assert!(
            serde_json::from_str::<SessionRequest>(&session_request(r#","role":"x""#)).is_err()
        );
    }

    #[test]
    fn roles_are_written_as_before() {
        let mut req: SessionRequest = serde_json::from_str(&session_request("")).expect("request");
        let json = serde_json::to_value(&req).expect("serialize");
        assert_eq!(json["role"], "");
        req.role = Some(NodeRole::Worker);
        let json = serde_json::to_value(&req).expect("serialize");
        assert_eq!(json["role"], "worker");
        let renew = RenewResponse {
            cert_pem: String::new(),
            role: NodeRole::Manager,
            raft_id: 2,
        };
        let json = serde_json::to_value(&renew).expect("serialize");
        assert_eq!(json["role"], "manager");
    }

    /// A forwarded write and leaders or followers of the version before
    /// request IDs understand each other.
    #[test]
    fn a_forwarded_write_reads_as_the_bare_command_and_back() {
        let command = flotilla_store::Command::UpdateTaskStatus {
            updates: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                status: flotilla_types::TaskStatus::new(flotilla_types::TaskState::Running, 5, ""),
            }],
        };
        let forwarded = Forwarded {
            request: Some("r1".into()),
            command: command.clone(),
        };
        let json = serde_json::to_string(&forwarded).expect("encode");
        let old_leader: flotilla_store::Command = serde_json::from_str(&json).expect("bare");
        assert_eq!(old_leader, command);
        let back: Forwarded = serde_json::from_str(&json).expect("forwarded");
        assert_eq!(back, forwarded);
        let old_follower = serde_json::to_string(&command).expect("encode");
        let back: Forwarded = serde_json::from_str(&old_follower).expect("forwarded");
        assert_eq!(back.request, None);
        assert_eq!(back.command, command);
    }
}
