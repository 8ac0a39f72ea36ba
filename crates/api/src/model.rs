//! Request and response bodies. Field names are the JSON contract that
//! `--format json` prints, so renaming one is a breaking change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use flotilla_types::{
    Availability, DesiredState, Health, NodeRole, NodeState, ServiceMode, ServiceSpec, TaskState,
    UnixMs, UpdateStatus,
};

/// The error body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /v1/init`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct InitRequest {
    /// Address other nodes will reach this one at.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// On a manager of a cluster that lost quorum: make this node the only
    /// manager of a new raft group that keeps every service, task, node and
    /// certificate. The daemon restarts itself to do it.
    #[serde(default)]
    pub force_new_cluster: bool,
    /// Seal the cluster's keys under an unlock key that a restarted
    /// manager needs (`flotilla unlock`); the key is in the answer, once.
    #[serde(default)]
    pub autolock: bool,
}

/// `POST /v1/join`: join the cluster of the manager at `manager_addr`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    pub token: String,
    /// Cluster address of a manager, `HOST:PORT`.
    pub manager_addr: String,
    #[serde(default)]
    pub advertise_addr: Option<String>,
}

/// `GET /v1/join-token/{role}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    pub role: NodeRole,
    pub token: String,
    /// Cluster addresses of the managers, to join through.
    pub managers: Vec<String>,
}

/// The cluster and node `init` (or `join`) made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InitResponse {
    pub cluster_id: String,
    pub node_id: String,
    /// With `autolock`: the unlock key, shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<String>,
}

/// `POST /v1/unlock`: the unlock key for a locked manager.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnlockRequest {
    /// As `flotilla unlock-key` prints it: `FLTKEY-1-...`.
    pub key: String,
}

/// `GET /v1/unlock-key`, and the answer of `POST /v1/autolock`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnlockKeyView {
    pub autolock: bool,
    /// The current unlock key; None while autolock is off.
    pub unlock_key: Option<String>,
}

/// `GET /v1/backup`: the whole state at one raft index, as a backup
/// file's text (a header line, then the state; see the `flotilla-backup` crate).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupView {
    pub backup: String,
}

/// `PUT /v1/backup/schedule`: backups the leader writes on a schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupScheduleRequest {
    /// How often (`6h`); none or `off` stops the schedule.
    #[serde(default)]
    pub every: Option<String>,
    /// How many to keep.
    pub keep: u32,
    /// Where, on the leader's machine (an absolute path).
    #[serde(default)]
    pub dir: Option<String>,
}

/// The backup schedule; `every_ms` none: no schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupScheduleView {
    pub every_ms: Option<u64>,
    pub keep: u32,
    pub dir: Option<String>,
}

/// `POST /v1/restore`: a backup (not encrypted: the CLI opens an
/// encrypted one first) for this fresh node to restore.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestoreRequest {
    pub backup: String,
    /// Opens a backup made under autolock (`FLTKEY-1-...`).
    #[serde(default)]
    pub unlock_key: Option<String>,
    /// Where other nodes reach this one, as for `init`.
    #[serde(default)]
    pub advertise_addr: Option<String>,
}

/// What `POST /v1/restore` made; the daemon restarts into it right after.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestoreResponse {
    pub cluster_id: String,
    pub node_id: String,
    /// The raft index the backup was made at.
    pub index: u64,
    pub services: u64,
    pub secrets: u64,
}

/// `POST /v1/ui-token`: a login token for the dashboard (`/ui`) on a
/// browser without a client certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UiTokenRequest {
    /// How long it is good for, in seconds (default 12 hours, at most 7
    /// days).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A dashboard login token and where to use it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UiTokenView {
    pub token: String,
    /// The login address on this manager's client API port, if it has
    /// one: open it in a browser.
    #[serde(default)]
    pub url: Option<String>,
    #[schema(value_type = u64)]
    pub expires_at: UnixMs,
}

/// The cluster's health as the dashboard shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthLevel {
    /// Every service has its replicas ready and the managers tolerate a
    /// failure.
    Green,
    /// Degraded but working.
    Yellow,
    /// No quorum, or a service with none of its replicas running.
    Red,
}

impl HealthLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthLevel::Green => "green",
            HealthLevel::Yellow => "yellow",
            HealthLevel::Red => "red",
        }
    }
}

/// A level and why: one line per thing that is not as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterHealth {
    pub level: HealthLevel,
    pub reasons: Vec<String>,
}

/// What happened, as the dashboard lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    TaskFailed,
    NodeDown,
    NodeUp,
    LeaderChanged,
    NoLeader,
    ServiceCreated,
    ServiceRemoved,
}

/// One event a manager saw (since it started; not replicated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterEvent {
    #[schema(value_type = u64)]
    pub at: UnixMs,
    pub kind: EventKind,
    pub text: String,
}

/// `GET /ui/state`: everything the dashboard shows, in one answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dashboard {
    pub at: UnixMs,
    pub health: ClusterHealth,
    pub info: Info,
    pub nodes: Vec<NodeView>,
    pub services: Vec<ServiceView>,
    /// The tasks wanted running, of every service.
    pub tasks: Vec<TaskView>,
    /// Each node's mesh counters (refreshed every few seconds).
    pub mesh: Vec<flotilla_types::mesh::MeshStats>,
    /// Newest first.
    pub events: Vec<ClusterEvent>,
    /// Why parts of the answer may be missing or stale.
    pub warnings: Vec<String>,
}

/// `POST /v1/autolock`: turn autolock on or off.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AutolockRequest {
    pub enabled: bool,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Info {
    /// None until `init`.
    pub cluster_id: Option<String>,
    pub node_id: Option<String>,
    pub node_name: String,
    /// None before `init`.
    pub role: Option<NodeRole>,
    pub is_leader: bool,
    pub leader: Option<String>,
    pub managers: u64,
    pub managers_reachable: u64,
    /// How many managers may fail with the cluster still able to write.
    pub fault_tolerance: u64,
    /// Set when the managers tolerate no failure.
    pub warning: Option<String>,
    pub nodes: u64,
    pub services: u64,
    /// Task counts by observed state, over tasks that are wanted running.
    pub tasks: BTreeMap<String, u64>,
    pub version: String,
    pub data_dir: String,
    /// Whether the cluster's keys are sealed under an unlock key.
    #[serde(default)]
    pub autolock: bool,
    /// This manager restarted under autolock and waits for `flotilla
    /// unlock`.
    #[serde(default)]
    pub locked: bool,
    /// Whether the managers this one hears make a quorum (writes can
    /// commit); false also on a node that is not a manager.
    #[serde(default)]
    pub quorum: bool,
    /// The managers this one does not hear from now, with how long ago it
    /// last did.
    #[serde(default)]
    pub unreachable_managers: Vec<UnreachableManager>,
    /// The backup schedule, if any: `every 6h, keeping 5 in /var/backups`.
    #[serde(default)]
    pub backups: Option<String>,
}

/// A manager that `info` reports unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnreachableManager {
    pub name: String,
    pub addr: String,
    /// Milliseconds since this manager last heard from it; none: not since
    /// this manager started.
    pub last_heard_ms: Option<u64>,
}

/// A node as `node ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub role: NodeRole,
    pub status: NodeState,
    pub availability: Availability,
    /// None for workers.
    pub manager_status: Option<Reachability>,
    pub addr: String,
    /// Client API address (managers).
    #[serde(default)]
    pub api_addr: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    /// The node that answered.
    pub is_self: bool,
    /// CPUs and memory the node reported; zero when unknown.
    #[serde(default)]
    pub resources: flotilla_types::Resources,
    /// Why it cannot run tasks on overlay networks; none: it can.
    #[serde(default)]
    pub overlay_error: Option<String>,
    /// The labels of its Docker Engine, for `engine.labels.*`
    /// constraints; absent without an engine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_labels: BTreeMap<String, String>,
    /// Milliseconds since the manager that answered last heard from this
    /// node; none: not since it started.
    #[serde(default)]
    pub last_heard_ms: Option<u64>,
    /// A manager catching up: how many raft entries it is behind the
    /// leader (known to the leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<u64>,
}

/// Running and desired task counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Replicas {
    pub running: u64,
    pub desired: u64,
    /// Running tasks that passed their health check, for services whose
    /// tasks have one; `None` when no task is checked.
    #[serde(default)]
    pub healthy: Option<u64>,
    /// Running tasks that are healthy or have no check: what `service
    /// create` and updates wait for.
    #[serde(default)]
    pub ready: u64,
    /// A job's tasks that completed, of its current run (none for a
    /// service that is not a job); `desired` is then how many must.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
}

/// A service as `service ls` and `service inspect` show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceView {
    pub id: String,
    pub name: String,
    pub mode: ServiceModeKind,
    pub replicas: Replicas,
    /// The command line, joined for display.
    pub command: String,
    pub spec: ServiceSpec,
    pub version: u64,
    #[schema(value_type = u64)]
    pub created_at: UnixMs,
    #[schema(value_type = u64)]
    pub updated_at: UnixMs,
    /// The last rolling update or rollback.
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
    /// Whether `service rollback` has a spec to return to.
    #[serde(default)]
    pub can_roll_back: bool,
    /// The ports the cluster publishes for it, as allocated (a port asked
    /// for without a number shows once the leader chose one).
    #[serde(default)]
    pub published: Vec<flotilla_types::PublishedPort>,
    /// Its networks, with the name and the virtual address on each.
    #[serde(default)]
    pub networks: Vec<ServiceNetwork>,
}

/// A service on one network, as `service inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceNetwork {
    pub network_id: String,
    /// The network's name (its ID if it was removed).
    pub network: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Its virtual address there (endpoint mode vip), once allocated.
    #[serde(default)]
    pub virtual_ip: Option<String>,
}

/// A network as `network ls` and `network inspect` show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkView {
    pub id: String,
    pub name: String,
    pub spec: flotilla_types::NetworkSpec,
    #[schema(value_type = u64)]
    pub created_at: UnixMs,
    /// Its subnet, once allocated.
    #[serde(default)]
    pub subnet: Option<String>,
    /// The gateway address of each node's bridge, once allocated.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Its VXLAN network identifier, once allocated.
    #[serde(default)]
    pub vni: Option<u32>,
    /// The services on it, by name.
    #[serde(default)]
    pub services: Vec<String>,
    /// The tasks that hold an address on it and have not ended.
    #[serde(default)]
    pub tasks: Vec<NetworkTask>,
}

/// A task attached to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkTask {
    pub task_id: String,
    pub service: String,
    pub slot: u64,
    pub address: String,
    /// The node's name, once placed.
    #[serde(default)]
    pub node: Option<String>,
    pub state: TaskState,
}

/// One task endpoint as `flotilla list` shows it (as Armada's `list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EndpointView {
    /// The service's name.
    pub name: String,
    /// `IP:PORT` of the task's target port on its node.
    pub address: String,
    pub target: u16,
    pub task_id: String,
    /// The node's name.
    pub node: String,
    pub status: EndpointStatus,
    /// The service's labels.
    pub labels: BTreeMap<String, String>,
}

/// What a task's health check says of an endpoint, in Consul's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointStatus {
    /// Running and healthy.
    Passing,
    /// Running, the check has not passed yet.
    Warning,
    /// Unhealthy, or not running.
    Critical,
    /// Running, without a check.
    None,
}

impl EndpointStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndpointStatus::Passing => "passing",
            EndpointStatus::Warning => "warning",
            EndpointStatus::Critical => "critical",
            EndpointStatus::None => "none",
        }
    }
}

/// Where one of a task's target ports answers: the node's address and
/// the node port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskEndpoint {
    pub target: u16,
    #[serde(default)]
    pub protocol: flotilla_types::Protocol,
    /// `IP:PORT` on the task's node.
    pub address: String,
}

/// A task as `service ps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub id: String,
    pub service: String,
    pub service_id: String,
    pub slot: u64,
    /// Node name, or None while pending.
    pub node: Option<String>,
    pub node_id: Option<String>,
    pub desired_state: DesiredState,
    pub state: TaskState,
    /// When the state was entered.
    #[schema(value_type = u64)]
    pub timestamp: UnixMs,
    pub message: String,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub pid: Option<u32>,
    /// Set for running tasks with a check.
    #[serde(default)]
    pub health: Option<Health>,
    /// The image of a docker task.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    /// Whether the task runs the service's current spec (false for tasks
    /// an update has not reached yet).
    #[serde(default)]
    pub up_to_date: bool,
    #[schema(value_type = u64)]
    pub created_at: UnixMs,
    /// False for older tasks of a slot (history).
    pub current: bool,
    /// Where its target ports answer, once it started.
    #[serde(default)]
    pub endpoints: Vec<TaskEndpoint>,
    /// Its address on each of its networks, once allocated.
    #[serde(default)]
    pub networks: Vec<TaskNetwork>,
    /// The secrets and configs it gets, with the version of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<TaskFileVersion>,
}

/// A secret or config a task gets, by name and version (never its data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskFileVersion {
    pub kind: flotilla_types::SecretKind,
    pub name: String,
    pub version: u64,
    /// Where the task finds it.
    pub target: String,
}

/// A task's address on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskNetwork {
    /// The network's name.
    pub network: String,
    pub address: String,
}

/// `POST /v1/services/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScaleRequest {
    pub replicas: u64,
}

/// `PUT /v1/services/{name}`: a whole new spec, as `service update` and
/// `stack deploy` send after changing what they read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceReplace {
    pub spec: ServiceSpec,
    /// The version the spec was read at; the write fails with 409 when the
    /// service changed since. `None` writes unconditionally.
    #[serde(default)]
    pub version: Option<u64>,
}

/// What `DELETE` removed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    pub id: String,
    pub name: String,
}

/// `POST /v1/nodes/{id}/update`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct NodeUpdate {
    #[serde(default)]
    pub availability: Option<flotilla_types::Availability>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels_add: BTreeMap<String, String>,
    #[serde(default)]
    pub labels_rm: Vec<String>,
}

/// `GET /v1/leader-check`: 200 on the leader, 503 elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaderCheck {
    pub leader: bool,
    /// The leader's cluster address, when known.
    pub leader_addr: Option<String>,
}

/// `POST /v1/client-cert`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClientCertRequest {
    /// Who the certificate is for (its common name).
    pub name: String,
}

/// A client certificate, its key, and the cluster CA, PEM.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClientCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Client API addresses of the managers.
    pub managers: Vec<String>,
}

/// A manager as the answering node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// The raft leader.
    Leader,
    /// Heard from: itself, the leader it follows, or a manager whose agent
    /// heartbeats arrive.
    Reachable,
    /// Heard from, but its log is far behind the leader's (a new or
    /// returning manager receiving the state); only the leader knows.
    #[serde(rename = "catching_up")]
    CatchingUp,
    Unreachable,
}

impl Reachability {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reachability::Leader => "leader",
            Reachability::Reachable => "reachable",
            Reachability::CatchingUp => "catching_up",
            Reachability::Unreachable => "unreachable",
        }
    }
}

/// A service's mode without its data: what `service ls` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceModeKind {
    Replicated,
    Global,
    #[serde(rename = "replicated-job")]
    ReplicatedJob,
    #[serde(rename = "global-job")]
    GlobalJob,
}

impl ServiceModeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceModeKind::Replicated => "replicated",
            ServiceModeKind::Global => "global",
            ServiceModeKind::ReplicatedJob => "replicated-job",
            ServiceModeKind::GlobalJob => "global-job",
        }
    }
}

impl From<&ServiceMode> for ServiceModeKind {
    fn from(mode: &ServiceMode) -> Self {
        match mode {
            ServiceMode::Replicated { .. } => ServiceModeKind::Replicated,
            ServiceMode::Global => ServiceModeKind::Global,
            ServiceMode::ReplicatedJob { .. } => ServiceModeKind::ReplicatedJob,
            ServiceMode::GlobalJob => ServiceModeKind::GlobalJob,
        }
    }
}

/// `?force=true`: `POST /v1/leave` and `DELETE /v1/nodes/{id}`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// Leave or remove even when the rules would refuse (quorum, a live
    /// node).
    #[serde(default)]
    pub force: bool,
}

/// `?rotate=true`: `GET /v1/join-token/{role}`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// Replace the role's secret first: the old token stops working.
    #[serde(default)]
    pub rotate: bool,
}

/// `GET /v1/resolve` query: what a task would get for a name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResolveQuery {
    /// The name, as a task would ask it: `web`, `STACK_web`, an alias,
    /// `tasks.web`.
    pub name: String,
    /// The task that asks: its ID or `SERVICE.SLOT`; none: every network.
    #[serde(default)]
    pub from: Option<String>,
    /// `A` (the default) or `SRV`.
    #[serde(default)]
    pub r#type: Option<String>,
}

/// What the resolver answers for a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResolveView {
    pub name: String,
    /// The task asked for, by ID, when one was.
    #[serde(default)]
    pub from_task: Option<String>,
    /// The networks whose names the asker sees.
    pub networks: Vec<String>,
    /// `answer`, `nxdomain` (no such name for this task, or nothing ready
    /// behind it), `nodata` (no record of this type) or `forward` (not the
    /// cluster's: the node's own resolvers answer).
    pub status: String,
    #[serde(default)]
    pub records: Vec<ResolvedRecord>,
}

/// One record of an answer, as `dig` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResolvedRecord {
    pub name: String,
    /// `A` or `SRV`.
    pub r#type: String,
    pub ttl: u32,
    /// The address, or `PRIORITY WEIGHT PORT TARGET` for SRV.
    pub value: String,
}

/// `GET /v1/services/{name}/logs` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Keep the stream open: new lines, and new tasks of the service.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines of each task (that exists when the call starts).
    #[serde(default)]
    pub tail: Option<u64>,
    /// Only lines at or after this time, Unix milliseconds.
    #[serde(default)]
    #[param(value_type = Option<u64>)]
    pub since_ms: Option<UnixMs>,
}

/// Which task a log line comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskLabel {
    pub service: String,
    /// The slot number, or the node ID for a global service's task.
    pub slot: String,
    pub task_id: String,
    /// Node name.
    pub node: String,
}

impl TaskLabel {
    /// `service.slot.taskid` (the ID cut to 12 characters), or
    /// `service.slot` without the task ID.
    pub fn name(&self, with_task_id: bool) -> String {
        if with_task_id {
            let short: String = self.task_id.chars().take(12).collect();
            format!("{}.{}.{}", self.service, self.slot, short)
        } else {
            format!("{}.{}", self.service, self.slot)
        }
    }
}

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// When the node first saw the line (Unix milliseconds; within the
    /// agent's one-second sampling period of when it was written).
    #[schema(value_type = u64)]
    pub ts_ms: UnixMs,
    pub task: TaskLabel,
    /// The line without its newline.
    pub text: String,
}

/// One item of the logs stream: the body is JSON lines, one event each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogEvent {
    Line(LogEntry),
    /// A task whose log cannot be read (its node is down or unreachable).
    Warning(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The enums are written as the strings the API always had.
    #[test]
    fn enums_are_the_lowercase_words() {
        assert_eq!(json(&Reachability::Leader), "\"leader\"");
        assert_eq!(json(&Reachability::Unreachable), "\"unreachable\"");
        assert_eq!(json(&ServiceModeKind::Global), "\"global\"");
        assert_eq!(json(&NodeRole::Manager), "\"manager\"");
        assert_eq!(json(&Availability::Drain), "\"drain\"");
        assert_eq!(json(&NodeState::Ready), "\"ready\"");
        assert_eq!(json(&DesiredState::Shutdown), "\"shutdown\"");
        assert_eq!(json(&TaskState::Running), "\"running\"");
        assert_eq!(json(&Health::Unhealthy), "\"unhealthy\"");
        for r in [
            Reachability::Leader,
            Reachability::Reachable,
            Reachability::CatchingUp,
            Reachability::Unreachable,
        ] {
            assert_eq!(json(&r), format!("\"{}\"", r.as_str()));
        }
        assert_eq!(
            ServiceModeKind::from(&ServiceMode::Replicated { replicas: 2 }),
            ServiceModeKind::Replicated
        );
    }

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("serialize")
    }
}

/// `POST /v1/secrets` and `POST /v1/configs`: a new secret or config.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretCreate {
    pub spec: flotilla_types::SecretSpec,
    /// The data, base64; at most 500 KB.
    pub data: flotilla_types::SecretData,
    /// When one of that name exists already: answer it if its current data
    /// is the same (a stack deployed again), refuse it if not. Without
    /// this, a taken name is refused.
    #[serde(default)]
    pub reuse_identical: bool,
}

/// A secret or config as `ls` and `inspect` show it: never its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretView {
    pub id: String,
    pub kind: flotilla_types::SecretKind,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[schema(value_type = u64)]
    pub created_at: UnixMs,
    /// When the current version was made.
    #[schema(value_type = u64)]
    pub updated_at: UnixMs,
    /// The current version (1 at create).
    pub version: u64,
    /// Bytes of the current version.
    pub size: u64,
    /// The services that use it, by name.
    #[serde(default)]
    pub services: Vec<String>,
}

/// `PUT /v1/secrets/{name}` and `PUT /v1/configs/{name}`: new data.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretUpdate {
    /// The data, base64; at most 500 KB.
    pub data: flotilla_types::SecretData,
}

/// What `secret update` did: the secret now, and the services it rolls
/// onto the new version (none when the data was the same).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretUpdated {
    pub secret: SecretView,
    #[serde(default)]
    pub rolled: Vec<String>,
}
