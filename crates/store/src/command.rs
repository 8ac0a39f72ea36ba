//! The raft log entry type: every change to the cluster's state is one of
//! these. Proposers fill in IDs and timestamps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use flotilla_types::{
    Availability, Cluster, DesiredState, EndpointMode, NetworkAddress, NetworkSpec, Node, NodeRole,
    NodeState, PublishedPort, SealedData, Secret, SecretData, ServiceSpec, Subnet, Task,
    TaskStatus, UnixMs, UpdateStatus,
};

use crate::error::StoreError;

/// One observed-status report for one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    pub task_id: String,
    pub status: TaskStatus,
}

/// A change to the cluster state. Matched exhaustively in [`crate::State::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// `flotilla init`: creates the cluster and its first node (a manager).
    InitCluster { cluster: Cluster, node: Node },
    /// Adds a node, or replaces its whole record. Only for tests and
    /// records that nobody else writes: a refresh of a node's own record
    /// is [`Command::RefreshNode`], which cannot undo a change that
    /// committed after the record was read.
    UpsertNode { node: Node },
    /// A manager that became leader refreshes its own record: ready, seen
    /// at `at` (never moved back), running `version` (reading entries up
    /// to `entry_format`) on `hostname`, and named `name` when one was
    /// given. Nothing else of the record changes (availability, labels,
    /// role stay as they are now, not as they were read). Entry format 2.
    RefreshNode {
        node_id: String,
        name: Option<String>,
        hostname: String,
        version: String,
        entry_format: u32,
        at: UnixMs,
    },
    /// A node joins with a token: a manager gets the next raft ID (never
    /// reused), a worker none.
    JoinNode { node: Node },
    /// `join-token --rotate`: a new secret for one role's token.
    RotateJoinSecret { role: NodeRole, secret: String },
    /// `node update`: changes what users set on a node. `None` and empty
    /// fields leave things as they are.
    UpdateNode {
        node_id: String,
        availability: Option<Availability>,
        name: Option<String>,
        labels_add: BTreeMap<String, String>,
        labels_rm: Vec<String>,
    },
    /// `node promote`/`node demote`: a new manager gets the next raft ID
    /// (never reused); a worker has none.
    SetNodeRole { node_id: String, role: NodeRole },
    /// `node rm`: forgets a node; its live tasks become orphaned so that
    /// they are replaced elsewhere.
    RemoveNode { node_id: String, at: UnixMs },
    /// The dispatcher heard from a node: it is ready, at `addr`, running
    /// `version`.
    NodeSeen {
        node_id: String,
        addr: String,
        /// Its client API address; empty if it serves none.
        #[serde(default)]
        api_addr: String,
        version: String,
        /// The newest entry format its version reads, as sent (0 from
        /// nodes, and in entries, from before the envelope).
        #[serde(default)]
        entry_format: u32,
        at: UnixMs,
        /// Why it cannot run tasks on overlay networks; none: it can (or
        /// its version does not say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        overlay_error: Option<String>,
        /// The labels of its Docker Engine (none: no engine, or a version
        /// that does not say).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        engine_labels: BTreeMap<String, String>,
    },
    /// The nodes' own view changed: ready or down, seen at `at`.
    SetNodeState {
        node_ids: Vec<String>,
        state: NodeState,
        at: UnixMs,
    },
    /// `service create`: a new service with a proposer-chosen ID.
    CreateService {
        id: String,
        spec: ServiceSpec,
        at: UnixMs,
    },
    /// `service update`/`service scale`: replaces the spec. When
    /// `expected_version` is set the update applies only if the service is
    /// still at that version (optimistic concurrency for read-modify-write).
    UpdateService {
        id: String,
        spec: ServiceSpec,
        expected_version: Option<u64>,
        at: UnixMs,
    },
    /// `service rollback`: back to the spec before the last change of the
    /// task template (the replica count stays).
    /// `reason` is set when the orchestrator rolls back a failed update by
    /// itself, and shown in the service's update status.
    /// Refused unless the service is still at `expected_version` (when
    /// set): a rollback decided before another change landed must not undo
    /// that change.
    RollbackService {
        id: String,
        at: UnixMs,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        expected_version: Option<u64>,
    },
    /// Orchestrator: a rolling update moved on (paused, completed). Applies
    /// only while the service is still at `version`, so that a decision
    /// about an update that a newer one replaced is dropped.
    SetUpdateStatus {
        id: String,
        version: u64,
        status: UpdateStatus,
    },
    /// Allocator: the published ports of a service, its fixed ones and
    /// those the leader chose for ports published without a number.
    /// Applies only while the service is still at `version`, and only if
    /// every port matches the spec and no other service publishes it.
    AllocatePorts {
        id: String,
        version: u64,
        ports: Vec<PublishedPort>,
    },
    /// `service rm`: removes the service; its tasks are told to shut down
    /// and are deleted by the orchestrator once they ended.
    RemoveService { id: String, at: UnixMs },
    /// Orchestrator: new tasks (already pending or assigned).
    CreateTasks { tasks: Vec<Task> },
    /// Orchestrator: change what the manager wants of tasks.
    SetDesiredState {
        task_ids: Vec<String>,
        desired: DesiredState,
    },
    /// Scheduler: place pending tasks on nodes.
    AssignTasks {
        assignments: Vec<(String, String)>,
        at: UnixMs,
    },
    /// Scheduler: tasks stay pending, with the reason.
    SetPendingReason {
        reasons: Vec<(String, String)>,
        at: UnixMs,
    },
    /// Dispatcher: observed statuses from agents. Updates that would move a
    /// task's state backwards are ignored.
    UpdateTaskStatus { updates: Vec<TaskStatusUpdate> },
    /// Orchestrator: forget tasks (history beyond the limit, removed services).
    DeleteTasks { task_ids: Vec<String> },
    /// `network create`: a new network with a proposer-chosen ID; a
    /// subnet it asks for is checked and kept at once. Entry format 5.
    CreateNetwork {
        id: String,
        spec: NetworkSpec,
        at: UnixMs,
    },
    /// `network rm`: refused while a service or a task uses it.
    RemoveNetwork { id: String },
    /// Allocator: a network's subnet (from the pool, or the one it asked
    /// for) and its VXLAN ID.
    AllocateNetwork {
        id: String,
        subnet: Subnet,
        vni: u32,
        /// An encrypted network's key (hex), drawn by the allocator.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// Allocator: service `id`'s virtual address on each of its networks,
    /// while it is still at `version`.
    AllocateVips {
        id: String,
        version: u64,
        vips: Vec<NetworkAddress>,
    },
    /// Allocator: tasks' addresses, one per network of their template.
    AllocateTaskAddresses {
        tasks: Vec<(String, Vec<NetworkAddress>)>,
    },
    /// The cluster's data key, drawn by a manager before it seals the
    /// first secret or config; the first one stored is kept. Entry
    /// format 6.
    SetDataKey { key: SecretData },
    /// `secret create`, `config create`: a new one, its data sealed by the
    /// proposer. Entry format 6.
    CreateSecret { secret: Secret },
    /// `secret rm`, `config rm`: refused while a service uses it.
    RemoveSecret { id: String },
    /// `secret update`, `config update`: a new current version, sealed by
    /// the proposer; versions nothing uses any more are dropped.
    AddSecretVersion {
        id: String,
        version: flotilla_types::SecretVersion,
    },
    /// Autolock on (`sealed` is the CA key, the data key and the join
    /// secrets sealed under the unlock key; the plaintext fields are empty
    /// and the cluster's copies are cleared), rotated or resealed (a new
    /// `sealed`), or off (`sealed` is None and the plaintext goes back
    /// into the cluster record). Entry format 7.
    SetAutolock {
        sealed: Option<SealedData>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        ca_key_pem: String,
        #[serde(default, skip_serializing_if = "SecretData::is_empty")]
        data_key: SecretData,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        worker_secret: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        manager_secret: String,
    },
    /// Backups on a schedule, or none. Entry format 8.
    SetBackupSchedule {
        schedule: Option<flotilla_types::BackupSchedule>,
    },
}

/// How many items (tasks, assignments, reasons, statuses, IDs) one batch
/// command carries at most. A raft entry is replicated whole inside one
/// AppendEntries, which must finish within the heartbeat interval (follower
/// fsync included): a service of 5,000 replicas in one `CreateTasks` (about
/// 5 MB of JSON) never did, and wedged the managers.
pub const MAX_BATCH: usize = 100;

/// The most bytes of encoded commands one raft entry should carry: below
/// the 128 KiB the raft network sends per AppendEntries, so that an entry
/// is never too large to go within a heartbeat. Bulk commands are split to
/// it ([`Command::parts`]); client writes are batched up to it.
pub const MAX_ENTRY_BYTES: usize = 96 * 1024;

impl Command {
    /// The oldest entry format that has this command (see
    /// [`crate::entry`]): a leader proposes it only once every manager
    /// reads that format.
    pub fn format(&self) -> u32 {
        match self {
            Command::RefreshNode { .. } => 2,
            Command::AllocatePorts { .. } => crate::entry::PORTS_FORMAT,
            Command::CreateNetwork { .. }
            | Command::RemoveNetwork { .. }
            | Command::AllocateNetwork { .. }
            | Command::AllocateVips { .. }
            | Command::AllocateTaskAddresses { .. } => crate::entry::NETWORKS_FORMAT,
            Command::SetDataKey { .. }
            | Command::CreateSecret { .. }
            | Command::RemoveSecret { .. }
            | Command::AddSecretVersion { .. } => crate::entry::SECRETS_FORMAT,
            Command::SetAutolock { .. } => crate::entry::AUTOLOCK_FORMAT,
            Command::SetBackupSchedule { .. } => crate::entry::BACKUP_SCHEDULE_FORMAT,
            // A cluster made locked: an older manager would take its
            // empty CA key for the cluster's.
            Command::InitCluster { cluster, .. } if cluster.autolock.is_some() => {
                crate::entry::AUTOLOCK_FORMAT
            }
            // Files from secrets and configs, and jobs, mean nothing to an
            // older manager either.
            Command::CreateService { spec, .. } | Command::UpdateService { spec, .. }
                if with_files(spec) =>
            {
                crate::entry::SECRETS_FORMAT
            }
            // Nor do placement preferences, a limit of tasks per node and
            // engine-label constraints (which it cannot even parse).
            Command::CreateService { spec, .. } | Command::UpdateService { spec, .. }
                if with_placement(spec) =>
            {
                crate::entry::SECRETS_FORMAT
            }
            // A spec on networks means nothing to a manager of an older
            // version, which would drop the fields and diverge.
            Command::CreateService { spec, .. } | Command::UpdateService { spec, .. }
                if on_networks(spec) =>
            {
                crate::entry::NETWORKS_FORMAT
            }
            _ => crate::entry::BARE_FORMAT,
        }
    }

    /// How many items a bulk command (tasks, assignments, statuses)
    /// carries; 1 for any other.
    pub fn bulk_len(&self) -> usize {
        match self {
            Command::CreateTasks { tasks } => tasks.len(),
            Command::SetDesiredState { task_ids, .. } | Command::DeleteTasks { task_ids } => {
                task_ids.len()
            }
            Command::AssignTasks { assignments, .. } => assignments.len(),
            Command::SetPendingReason { reasons, .. } => reasons.len(),
            Command::UpdateTaskStatus { updates } => updates.len(),
            Command::AllocateTaskAddresses { tasks } => tasks.len(),
            _ => 1,
        }
    }

    /// Splits a bulk command into parts of at most `max_items` items, and
    /// halves again every part whose encoding is larger than `max_bytes`
    /// (tasks of a large spec: 100 tasks with 10 KB of environment each
    /// were one entry of 1 MB), down to one item; other commands come back
    /// as they are. In order, as [`Command::split`].
    pub fn parts(self, max_items: usize, max_bytes: usize) -> Vec<Command> {
        let mut out = Vec::new();
        let mut todo: Vec<Command> = self.split(max_items);
        todo.reverse();
        while let Some(part) = todo.pop() {
            let items = part.bulk_len();
            let large = items > 1 && serde_json::to_vec(&part).is_ok_and(|b| b.len() > max_bytes);
            if large {
                let mut halves = part.split(items.div_ceil(2));
                halves.reverse();
                todo.extend(halves);
            } else {
                out.push(part);
            }
        }
        out
    }

    /// Splits a batch command into commands of at most `max` items each,
    /// in order; other commands come back as they are. Every batch command
    /// applies item by item, so applying the parts in order is applying the
    /// whole, and a part that is not applied (leadership lost) leaves a
    /// state that the loops that proposed it reconcile again.
    pub fn split(self, max: usize) -> Vec<Command> {
        fn chunks<T>(
            items: Vec<T>,
            max: usize,
            mut make: impl FnMut(Vec<T>) -> Command,
        ) -> Vec<Command> {
            let max = max.max(1);
            if items.len() <= max {
                return vec![make(items)];
            }
            let mut out = Vec::with_capacity(items.len().div_ceil(max));
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                out.push(make(items.by_ref().take(max).collect()));
            }
            out
        }
        match self {
            Command::CreateTasks { tasks } => {
                chunks(tasks, max, |tasks| Command::CreateTasks { tasks })
            }
            Command::SetDesiredState { task_ids, desired } => chunks(task_ids, max, |task_ids| {
                Command::SetDesiredState { task_ids, desired }
            }),
            Command::AssignTasks { assignments, at } => chunks(assignments, max, |assignments| {
                Command::AssignTasks { assignments, at }
            }),
            Command::SetPendingReason { reasons, at } => chunks(reasons, max, |reasons| {
                Command::SetPendingReason { reasons, at }
            }),
            Command::UpdateTaskStatus { updates } => chunks(updates, max, |updates| {
                Command::UpdateTaskStatus { updates }
            }),
            Command::DeleteTasks { task_ids } => {
                chunks(task_ids, max, |task_ids| Command::DeleteTasks { task_ids })
            }
            Command::AllocateTaskAddresses { tasks } => {
                chunks(tasks, max, |tasks| Command::AllocateTaskAddresses { tasks })
            }
            other => vec![other],
        }
    }
}

/// Whether a spec uses what entry format 6 brought: secrets, configs and
/// jobs.
fn with_files(spec: &ServiceSpec) -> bool {
    !spec.task.secrets.is_empty() || !spec.task.configs.is_empty() || spec.mode.is_job()
}

/// Whether a spec uses the placement keys of entry format 6: placement
/// preferences, a limit of tasks per node, `engine.labels` constraints.
fn with_placement(spec: &ServiceSpec) -> bool {
    let task = &spec.task;
    !task.preferences.is_empty()
        || task.max_replicas_per_node > 0
        || task
            .constraints
            .iter()
            .any(|c| matches!(c.key, flotilla_types::ConstraintKey::EngineLabel(_)))
}

/// Whether a spec uses what entry format 5 brought: networks.
fn on_networks(spec: &ServiceSpec) -> bool {
    !spec.task.networks.is_empty() || spec.endpoint_mode != EndpointMode::Vip
}

/// What applying a command produced: `Ok` with the ID of the object it
/// created or changed where there is one, or why nothing changed.
pub type CommandResult = Result<Option<String>, StoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    /// A manager of an older version would drop the placement keys (or
    /// fail to parse an engine-label constraint): such specs wait for
    /// format 6.
    #[test]
    fn placement_keys_take_format_6() {
        let create = |spec: ServiceSpec| Command::CreateService {
            id: "s1".into(),
            spec,
            at: 0,
        };
        let plain = ServiceSpec::default();
        assert_eq!(create(plain.clone()).format(), crate::entry::BARE_FORMAT);
        let mut spread = plain.clone();
        spread.task.preferences = vec![flotilla_types::PlacementPreference::spread(
            "node.labels.zone",
        )];
        let mut limited = plain.clone();
        limited.task.max_replicas_per_node = 1;
        let mut engine = plain.clone();
        engine.task.constraints = vec!["engine.labels.disk==ssd".parse().expect("constraint")];
        let mut node_label = plain;
        node_label.task.constraints = vec!["node.labels.disk==ssd".parse().expect("constraint")];
        for spec in [spread, limited, engine] {
            assert_eq!(create(spec).format(), crate::SECRETS_FORMAT);
        }
        assert_eq!(create(node_label).format(), crate::entry::BARE_FORMAT);
    }

    /// Defect 1: bulk commands were split by count only, so that 100
    /// tasks of a large spec made one entry of about 1 MB, which no
    /// AppendEntries carries within a heartbeat.
    #[test]
    fn bulk_parts_are_bounded_in_bytes_too() {
        let big = "x".repeat(10_000);
        let tasks: Vec<String> = (0..100).map(|i| format!("t{i}-{big}")).collect();
        let whole = Command::DeleteTasks {
            task_ids: tasks.clone(),
        };
        let size = |c: &Command| serde_json::to_vec(c).expect("encode").len();
        assert!(size(&whole) > 900_000);
        assert_eq!(whole.clone().split(MAX_BATCH).len(), 1, "before: one part");
        let parts = whole.parts(MAX_BATCH, MAX_ENTRY_BYTES);
        assert!(parts.len() >= 11, "{} parts", parts.len());
        assert!(parts.iter().all(|p| size(p) <= MAX_ENTRY_BYTES));
        let back: Vec<String> = parts
            .into_iter()
            .flat_map(|p| match p {
                Command::DeleteTasks { task_ids } => task_ids,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(back, tasks, "in order, nothing lost");
        // One item larger than the budget stays whole; small ones go by count.
        let one = Command::DeleteTasks {
            task_ids: vec!["y".repeat(200_000)],
        };
        assert_eq!(one.parts(MAX_BATCH, MAX_ENTRY_BYTES).len(), 1);
        assert_eq!(
            Command::DeleteTasks { task_ids: ids(250) }
                .parts(MAX_BATCH, MAX_ENTRY_BYTES)
                .len(),
            3
        );
    }

    #[test]
    fn batches_split_in_order_and_others_stay_whole() {
        let parts = Command::DeleteTasks { task_ids: ids(7) }.split(3);
        let sizes: Vec<Vec<String>> = parts
            .into_iter()
            .map(|c| match c {
                Command::DeleteTasks { task_ids } => task_ids,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            sizes,
            vec![ids(3), ids(7)[3..6].to_vec(), ids(7)[6..].to_vec()]
        );
        assert_eq!(Command::DeleteTasks { task_ids: ids(3) }.split(3).len(), 1);
        assert_eq!(Command::DeleteTasks { task_ids: vec![] }.split(3).len(), 1);
        let assign = Command::AssignTasks {
            assignments: (0..5).map(|i| (format!("t{i}"), "n".into())).collect(),
            at: 9,
        };
        let parts = assign.split(2);
        assert_eq!(parts.len(), 3);
        assert!(parts
            .iter()
            .all(|c| matches!(c, Command::AssignTasks { at: 9, .. })));
        let other = Command::RemoveService {
            id: "s".into(),
            at: 1,
        };
        assert_eq!(other.clone().split(1), vec![other]);
    }
}
