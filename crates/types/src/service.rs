//! A service: the spec a user asked for, and its identity in the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::constraint::{Constraint, PlacementPreference};
use crate::mesh::MeshOptions;
use crate::network::{EndpointMode, NetworkAddress, NetworkAttachment};
use crate::port::{PortConfig, PublishedPort};
use crate::UnixMs;

/// Stop grace period when none is given: SIGTERM, then SIGKILL after this.
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

/// How many tasks a service wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum ServiceMode {
    /// `replicas` slots, numbered 1..=replicas, spread over the nodes.
    Replicated { replicas: u64 },
    /// One task on every node that satisfies the constraints.
    Global,
    /// A job: `replicas` tasks run to completion (slots 1..=replicas),
    /// at most `max_concurrent` at a time (0: all of them at once). A
    /// task that completed is never run again; one that failed is
    /// restarted by the restart policy. `service update --force` runs the
    /// job again.
    #[serde(rename = "replicated-job")]
    ReplicatedJob {
        replicas: u64,
        #[serde(default)]
        max_concurrent: u64,
    },
    /// A job: one task runs to completion on every node that satisfies the
    /// constraints (a node that joins later runs it too).
    #[serde(rename = "global-job")]
    GlobalJob,
}

impl ServiceMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob { .. } => "replicated-job",
            ServiceMode::GlobalJob => "global-job",
        }
    }

    /// Whether its tasks run to completion.
    pub fn is_job(&self) -> bool {
        matches!(
            self,
            ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
        )
    }

    /// Whether it has a task per eligible node.
    pub fn is_global(&self) -> bool {
        matches!(self, ServiceMode::Global | ServiceMode::GlobalJob)
    }
}

/// What runs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A plain child process of the agent. Needs nothing else.
    #[default]
    Process,
    /// A container on the node's Docker Engine, from `TaskTemplate::image`.
    Docker,
}

impl Driver {
    pub fn as_str(&self) -> &'static str {
        match self {
            Driver::Process => "process",
            Driver::Docker => "docker",
        }
    }
}

/// A ratio in `0.0..=1.0`. Wrapped so that specs keep `Eq`: parsers never
/// produce NaN, so equality is total in practice.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl Eq for Ratio {}

/// What a health check runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthTest {
    /// No check, even if the image defines one (Compose `disable: true`,
    /// `--no-healthcheck`).
    None,
    /// The image's own HEALTHCHECK test, with the timings given here
    /// (a Compose `healthcheck` without `test`).
    Image,
    /// A program and its arguments, run without a shell (Compose `CMD`).
    Exec { argv: Vec<String> },
    /// A shell command line, run with `/bin/sh -c` (`--health-cmd`, Compose
    /// `CMD-SHELL`).
    Shell { command: String },
    /// An HTTP GET on the task's port; any 2xx or 3xx status is healthy.
    Http { port: u16, path: String },
    /// A TCP connection to the task's port.
    Tcp { port: u16 },
}

/// Docker's health check defaults: every 30 s, 30 s timeout, 3 retries.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 30_000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;

/// How a task's health is checked. The check runs every `interval_ms`;
/// `retries` consecutive failures make the task unhealthy, and failures in
/// the first `start_period_ms` do not count, as in Docker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthCheck {
    pub test: HealthTest,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    #[serde(default)]
    pub start_period_ms: u64,
}

impl HealthCheck {
    /// A check with Docker's default timings.
    pub fn new(test: HealthTest) -> Self {
        HealthCheck {
            test,
            interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
            retries: DEFAULT_HEALTH_RETRIES,
            start_period_ms: 0,
        }
    }
}

/// CPU and memory amounts. Zero means not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    /// CPUs in billionths (`--limit-cpu 0.5` is 500_000_000), as Docker's
    /// `NanoCpus`.
    #[serde(default)]
    pub nano_cpus: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0
    }

    /// A CPU count (`0.5`) in billionths. `None` for a negative, infinite
    /// or absurd (over a billion) count, and for a positive one below a
    /// billionth, which would round to 0: "no limit".
    pub fn nano_cpus_of(cpus: f64) -> Option<u64> {
        let nano = (cpus * 1e9).round();
        let valid = cpus.is_finite() && (0.0..=1e9).contains(&cpus) && (cpus == 0.0 || nano >= 1.0);
        valid.then_some(nano as u64)
    }
}

/// Limits are enforced by the driver; reservations are what the scheduler
/// sets aside on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct ResourceSpec {
    #[serde(default)]
    pub limits: Resources,
    #[serde(default)]
    pub reservations: Resources,
}

/// What a container mount is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A path of the node's file system.
    Bind,
    /// A named volume of the node's engine (created on first use), or an
    /// anonymous one when the source is empty.
    #[default]
    Volume,
    /// A memory file system.
    Tmpfs,
}

impl MountKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
        }
    }

    /// Parses `bind`, `volume` or `tmpfs`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bind" => Some(MountKind::Bind),
            "volume" => Some(MountKind::Volume),
            "tmpfs" => Some(MountKind::Tmpfs),
            _ => None,
        }
    }
}

/// A file system mounted into a docker task's container
/// (`--mount type=bind,source=/srv,target=/data,readonly`, Compose
/// `volumes:`). Volumes and bind paths are the node's own: like Swarm's
/// local volume driver, nothing follows a task to another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Mount {
    #[serde(rename = "type", default)]
    pub kind: MountKind,
    /// Host path (bind), volume name (volume; empty for an anonymous
    /// one), unused for tmpfs.
    #[serde(default)]
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// A bind mount's propagation (`bind-propagation=`, Compose
    /// `bind.propagation`); the engine's default (`rprivate`) when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<crate::Propagation>,
}

/// What a rolling update (or rollback) does when tasks fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop updating; `service update` starts again.
    #[default]
    Pause,
    /// Carry on with the next batch.
    Continue,
    /// Return to the previous spec (update only).
    Rollback,
}

impl FailureAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }

    /// Parses `pause`, `continue` or `rollback`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(FailureAction::Pause),
            "continue" => Some(FailureAction::Continue),
            "rollback" => Some(FailureAction::Rollback),
            _ => None,
        }
    }
}

/// Whether a slot's old task stops before its new one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one.
    #[default]
    StopFirst,
    /// Start the new task; stop the old one once the new one is ready.
    StartFirst,
}

impl UpdateOrder {
    pub fn as_str(&self) -> &'static str {
        match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
    }

    /// Parses `stop-first` or `start-first`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stop-first" => Some(UpdateOrder::StopFirst),
            "start-first" => Some(UpdateOrder::StartFirst),
            _ => None,
        }
    }
}

/// Swarm's `UpdateConfig`, used both for updates and rollbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpdateConfig {
    /// Slots replaced at once; 0 means all at once.
    pub parallelism: u64,
    /// Wait after a batch is ready before the next one starts.
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    /// How long an updated task is watched for failure after it is ready.
    pub monitor_ms: u64,
    /// Failed tasks tolerated, as a share of the slots, before the failure
    /// action is taken.
    pub max_failure_ratio: Ratio,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    /// Swarm's defaults.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio: Ratio(0.0),
            order: UpdateOrder::StopFirst,
        }
    }
}

/// Where a rolling update (or rollback) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(&self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    /// Whether tasks are still being replaced.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    /// Whether this is a rollback (which paces itself by the rollback config).
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }
}

/// The state of the last update of a service, as `service inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpdateStatus {
    pub state: UpdateState,
    #[schema(value_type = u64)]
    pub started_at: UnixMs,
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub completed_at: Option<UnixMs>,
    /// Why it is in this state ("update paused due to failure of task ...").
    #[serde(default)]
    pub message: String,
    /// The service version (raft index) the update or rollback started at:
    /// its tasks are those made from this version on, whatever the clocks
    /// of the nodes say. 0 in records from before it was kept.
    #[serde(default)]
    pub version: u64,
}

/// When a task that ended by itself is replaced (Swarm's restart condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskTemplate {
    #[serde(default)]
    pub driver: Driver,
    /// The image of a docker task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Program and arguments. The process driver looks the program up in
    /// `PATH`; for a docker task these are the container's arguments (its
    /// `CMD`), and empty means the image's own.
    pub command: Vec<String>,
    /// A docker task's entrypoint, replacing the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    pub stop_grace_period_ms: u64,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// How the tasks are spread over groups of nodes (`--placement-pref
    /// spread=node.labels.zone`, Compose `deploy.placement.preferences`),
    /// outermost first. In the template, as Swarm keeps placement in the
    /// task spec: a change rolls the tasks and so places them anew.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
    /// At most this many tasks of the service (not ended, desired
    /// running) on one node (`--replicas-max-per-node`, Compose
    /// `deploy.placement.max_replicas_per_node`); 0: no limit. The tasks
    /// beyond it wait, pending, with the reason.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_replicas_per_node: u64,
    /// Bumped by `service update --force` so that every task is replaced
    /// although nothing else changed.
    #[serde(default)]
    pub force_update: u64,
    /// The task's health check; `None` uses the image's own for docker
    /// tasks and none for processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub resources: ResourceSpec,
    /// Run a docker task under the engine's init process (`docker run
    /// --init`, Compose `init: true`), which forwards signals and reaps
    /// zombies: a program that sets no SIGTERM handler then still stops on
    /// SIGTERM instead of waiting out the grace period.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// File systems mounted into a docker task's container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// The ports each task listens on and the ports the cluster publishes
    /// for them (`--publish`, Compose `ports`). In the template, so that a
    /// change of ports rolls out to the tasks, as in Swarm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
    /// The networks each task joins, by network ID, with the service's
    /// aliases on each (`--network`, Compose `networks`). In the template:
    /// a task's addresses are made for the networks it was made with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    /// The secrets each task gets as files (`--secret`, Compose
    /// `secrets`), by name, with the ID and version the manager resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::SecretRef>,
    /// The configs each task gets as files (`--config`, Compose
    /// `configs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<crate::SecretRef>,
    /// A container's host name (`--hostname`, Compose `hostname`); a
    /// template ([`crate::template`]), as the environment's values and
    /// the mounts' sources and targets are, expanded on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `USER[:GROUP]`, names or numbers, the task runs as (`--user`,
    /// Compose `user`): the container's user, or the process's, which the
    /// agent sets when the daemon runs as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The absolute directory the task starts in (`--workdir`, Compose
    /// `working_dir`), in the container or on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The signal that asks the task to stop (`--stop-signal`, Compose
    /// `stop_signal`), a name or a number; SIGTERM (or the image's) when
    /// none. SIGKILL follows after the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// A container's root file system is read-only (`--read-only`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Size of a container's `/dev/shm` in bytes (Compose `shm_size`); 0:
    /// the engine's default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shm_size_bytes: u64,
    /// Namespaced kernel parameters of a container (`--sysctl`, Compose
    /// `sysctls`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Capabilities a container gets beyond the engine's default set
    /// (`--cap-add`, Compose `cap_add`; `ALL` for every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities a container loses (`--cap-drop`, Compose `cap_drop`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Resource limits of a container's processes (`--ulimit`, Compose
    /// `ulimits`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<crate::Ulimit>,
    /// Lines added to a container's `/etc/hosts` (`--add-host`, Compose
    /// `extra_hosts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<crate::ExtraHost>,
    /// A container's name servers (`--dns`, Compose `dns`); on networks,
    /// after the node's resolver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// A container's search domains (`--dns-search`, Compose
    /// `dns_search`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// The engine's log driver for a container (`--log-driver`,
    /// `--log-opt`, Compose `logging`); the engine's default when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<crate::LogDriver>,
}

impl Default for TaskTemplate {
    fn default() -> Self {
        TaskTemplate {
            driver: Driver::Process,
            image: None,
            command: Vec::new(),
            entrypoint: None,
            env: BTreeMap::new(),
            restart: RestartPolicy::default(),
            stop_grace_period_ms: DEFAULT_STOP_GRACE_MS,
            constraints: Vec::new(),
            preferences: Vec::new(),
            max_replicas_per_node: 0,
            force_update: 0,
            health: None,
            resources: ResourceSpec::default(),
            init: false,
            mounts: Vec::new(),
            ports: Vec::new(),
            networks: Vec::new(),
            secrets: Vec::new(),
            configs: Vec::new(),
            hostname: None,
            user: None,
            working_dir: None,
            stop_signal: None,
            read_only: false,
            shm_size_bytes: 0,
            sysctls: BTreeMap::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            ulimits: Vec::new(),
            extra_hosts: Vec::new(),
            dns: Vec::new(),
            dns_search: Vec::new(),
            logging: None,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Everything a user says about a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(flatten)]
    pub mode: ServiceMode,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub task: TaskTemplate,
    /// How template changes roll out.
    #[serde(default)]
    pub update: UpdateConfig,
    /// How a rollback rolls out.
    #[serde(default)]
    pub rollback: UpdateConfig,
    /// How the mesh treats connections to its published ports. Not part
    /// of the template: a change reaches every node's mesh without
    /// replacing a task.
    #[serde(default, skip_serializing_if = "MeshOptions::is_default")]
    pub mesh: MeshOptions,
    /// How the service's name resolves on its networks: one virtual
    /// address (the default) or its tasks' own addresses.
    #[serde(default, skip_serializing_if = "EndpointMode::is_vip")]
    pub endpoint_mode: EndpointMode,
}

impl ServiceSpec {
    /// The networks (by ID, in the template's order) the service has a
    /// virtual address on: all of them in endpoint mode `vip`, none in
    /// `dnsrr`.
    pub fn vip_networks(&self) -> Vec<&str> {
        if self.endpoint_mode != EndpointMode::Vip {
            return Vec::new();
        }
        self.task
            .networks
            .iter()
            .map(|a| a.network.as_str())
            .collect()
    }
}

impl Default for ServiceSpec {
    /// One replica of an empty template: a base for struct update syntax.
    fn default() -> Self {
        ServiceSpec {
            name: String::new(),
            mode: ServiceMode::Replicated { replicas: 1 },
            labels: BTreeMap::new(),
            task: TaskTemplate::default(),
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            mesh: MeshOptions::default(),
            endpoint_mode: EndpointMode::Vip,
        }
    }
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
    /// The last rolling update or rollback, if any.
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
    /// The ports published for it, as allocated: the spec's fixed ones
    /// when the spec is written, the others by the leader's allocator.
    /// Empty until then, and for a service that publishes nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPort>,
    /// Its virtual address on each of its networks (endpoint mode `vip`),
    /// given by the leader's allocator; kept across updates while the
    /// service stays on the network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<NetworkAddress>,
}
