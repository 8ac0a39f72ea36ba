//! The tables and the deterministic apply function.
//!
//! [`State::apply`] is a table from [`Command`] to one function each,
//! grouped by the table they write: `cluster`, `nodes`, `services`,
//! `tasks`. Each function documents its rule. Rows are inserted and
//! removed through `table`, which records the [`Change`] as it goes; a
//! row changed in place records it with `table::touched`.

mod cluster;
mod networks;
mod nodes;
mod requests;
mod secrets;
mod services;
mod table;
mod tasks;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use flotilla_types::{Cluster, Network, Node, Secret, Service, Task};

use crate::command::{Command, CommandResult};
use crate::entry::{EntryError, Envelope};
use crate::error::StoreError;
use secrets::PlainKeys;

pub use requests::{Recorded, Requests, REQUEST_WINDOW};

/// Which object an applied command touched. The raft crate persists exactly
/// these; watchers can use them to skip unrelated work.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Change {
    Cluster,
    Node(String),
    Service(String),
    Task(String),
    Network(String),
    Secret(String),
    /// A request's kept result (added, or forgotten out of the window).
    Request(String),
}

/// The whole replicated state of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub cluster: Option<Cluster>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Task>,
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Secrets and configs, by ID; their data sealed.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// Raft index of the last applied command (0 when none).
    pub index: u64,
    /// The results of the last client requests, for retried proposals.
    #[serde(default)]
    pub requests: Requests,
}

impl State {
    /// Finds a service by ID, or by name.
    pub fn service(&self, id_or_name: &str) -> Option<&Service> {
        self.services
            .get(id_or_name)
            .or_else(|| self.services.values().find(|s| s.spec.name == id_or_name))
    }

    /// Finds a node by ID, name or host name, or by a unique ID prefix.
    pub fn node(&self, id_or_name: &str) -> Option<&Node> {
        if let Some(n) = self.nodes.get(id_or_name) {
            return Some(n);
        }
        if let Some(n) = self.nodes.values().find(|n| n.name == id_or_name) {
            return Some(n);
        }
        let mut prefixed = self.nodes.values().filter(|n| n.id.starts_with(id_or_name));
        match (prefixed.next(), prefixed.next()) {
            (Some(n), None) if !id_or_name.is_empty() => Some(n),
            _ => None,
        }
    }

    /// Tasks of one service, in no particular order.
    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.service_id == service_id)
    }

    /// Applies a committed command at raft index `index`. Deterministic: the
    /// result depends only on `self`, `index` and `command`.
    pub fn apply(&mut self, index: u64, command: &Command) -> (CommandResult, Vec<Change>) {
        self.index = index;
        let mut changes = Vec::new();
        let result = self.apply_inner(index, command, &mut changes);
        (result, changes)
    }

    /// Applies a committed log entry at raft index `index`, the way every
    /// replica does: an entry this version cannot read is refused before
    /// anything changes (the caller must stop applying, never skip it; see
    /// [`crate::entry`]). Each command of the entry (one, or a batch's, in
    /// order) then answers on its own: a request already applied in the
    /// window answers its kept result and changes nothing; otherwise the
    /// command applies and, when it names a request, its result is kept.
    /// The results come in the order of the commands.
    pub fn apply_entry(
        &mut self,
        index: u64,
        entry: &Envelope,
    ) -> Result<(Vec<CommandResult>, Vec<Change>), EntryError> {
        let items = entry.items(index)?;
        let mut results = Vec::with_capacity(items.len());
        let mut changes = Vec::new();
        self.index = index;
        for (slot, (request, command)) in items.into_iter().enumerate() {
            if let Some(kept) = request.and_then(|r| self.requests.get(r)) {
                results.push(kept.result.clone());
                continue;
            }
            let (result, mut changed) = self.apply(index, command);
            if let Some(request) = request {
                self.requests
                    .record(request, (index, slot as u32), &result, &mut changed);
            }
            changes.append(&mut changed);
            results.push(result);
        }
        Ok((results, changes))
    }

    /// One function per command; see each for its rule. `changes` gets
    /// every object the command touched. A refused command touches
    /// nothing: each function checks before it writes.
    fn apply_inner(
        &mut self,
        index: u64,
        command: &Command,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let c = changes;
        match command {
            Command::InitCluster { cluster, node } => self.init_cluster(cluster, node, c),
            Command::RotateJoinSecret { role, secret } => self.rotate_join_secret(*role, secret, c),
            Command::UpsertNode { node } => self.upsert_node(node, c),
            Command::RefreshNode {
                node_id,
                name,
                hostname,
                version,
                entry_format,
                at,
            } => {
                let report = nodes::Report {
                    version,
                    entry_format: *entry_format,
                    at: *at,
                    engine_labels: None,
                };
                self.refresh_node(node_id, name.as_deref(), hostname, report, c)
            }
            Command::JoinNode { node } => self.join_node(node, c),
            Command::UpdateNode {
                node_id,
                availability,
                name,
                labels_add,
                labels_rm,
            } => self.update_node(
                node_id,
                *availability,
                name.as_deref(),
                labels_add,
                labels_rm,
                c,
            ),
            Command::SetNodeRole { node_id, role } => self.set_node_role(node_id, *role, c),
            Command::RemoveNode { node_id, at } => self.remove_node(node_id, *at, c),
            Command::NodeSeen {
                node_id,
                addr,
                api_addr,
                version,
                entry_format,
                at,
                overlay_error,
                engine_labels,
            } => {
                let report = nodes::Report {
                    version,
                    entry_format: *entry_format,
                    at: *at,
                    engine_labels: Some(engine_labels),
                };
                self.node_seen(node_id, addr, api_addr, report, overlay_error.as_deref(), c)
            }
            Command::SetNodeState {
                node_ids,
                state,
                at,
            } => self.set_node_state(node_ids, *state, *at, c),
            Command::CreateService { id, spec, at } => self.create_service(index, id, spec, *at, c),
            Command::UpdateService {
                id,
                spec,
                expected_version,
                at,
            } => self.update_service(index, id, spec, *expected_version, *at, c),
            Command::RollbackService {
                id,
                at,
                reason,
                expected_version,
            } => self.rollback_service(index, id, *at, reason.as_deref(), *expected_version, c),
            Command::SetUpdateStatus {
                id,
                version,
                status,
            } => self.set_update_status(id, *version, status, c),
            Command::AllocatePorts { id, version, ports } => {
                self.allocate_ports(id, *version, ports, c)
            }
            Command::RemoveService { id, .. } => self.remove_service(id, c),
            Command::CreateNetwork { id, spec, at } => self.create_network(id, spec, *at, c),
            Command::RemoveNetwork { id } => self.remove_network(id, c),
            Command::SetDataKey { key } => self.set_data_key(key, c),
            Command::SetBackupSchedule { schedule } => {
                self.set_backup_schedule(schedule.as_ref(), c)
            }
            Command::SetAutolock {
                sealed,
                ca_key_pem,
                data_key,
                worker_secret,
                manager_secret,
            } => self.set_autolock(
                sealed.as_ref(),
                PlainKeys {
                    ca_key_pem,
                    data_key,
                    worker_secret,
                    manager_secret,
                },
                c,
            ),
            Command::CreateSecret { secret } => self.create_secret(secret, c),
            Command::RemoveSecret { id } => self.remove_secret(id, c),
            Command::AddSecretVersion { id, version } => self.add_secret_version(id, version, c),
            Command::AllocateNetwork {
                id,
                subnet,
                vni,
                key,
            } => self.allocate_network(id, *subnet, *vni, key.as_deref(), c),
            Command::AllocateVips { id, version, vips } => {
                self.allocate_vips(id, *version, vips, c)
            }
            Command::AllocateTaskAddresses { tasks } => self.allocate_task_addresses(tasks, c),
            Command::CreateTasks { tasks } => self.create_tasks(index, tasks, c),
            Command::SetDesiredState { task_ids, desired } => {
                self.set_desired_state(task_ids, *desired, c)
            }
            Command::AssignTasks { assignments, at } => self.assign_tasks(assignments, *at, c),
            Command::SetPendingReason { reasons, at } => self.set_pending_reason(reasons, *at, c),
            Command::UpdateTaskStatus { updates } => self.update_task_status(updates, c),
            Command::DeleteTasks { task_ids } => self.delete_tasks(task_ids, c),
        }
    }

    fn require_cluster(&self) -> Result<(), StoreError> {
        if self.cluster.is_none() {
            return Err(StoreError::NotInitialized);
        }
        Ok(())
    }

    /// IDs of the tasks placed on `node_id`.
    pub fn task_ids_on(&self, node_id: &str) -> BTreeSet<String> {
        self.tasks
            .values()
            .filter(|t| t.node_id.as_deref() == Some(node_id))
            .map(|t| t.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::TaskStatusUpdate;
    use crate::entry::Envelope;
    use flotilla_types::{
        Availability, DesiredState, Health, NodeRole, NodeState, ServiceMode, ServiceSpec,
        TaskState, TaskStatus, TaskTemplate, UpdateState, UpdateStatus,
    };

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            name: id.into(),
            hostname: id.into(),
            role: NodeRole::Manager,
            availability: Availability::Active,
            labels: Default::default(),
            state: NodeState::Ready,
            addr: String::new(),
            api_addr: String::new(),
            version: "test".into(),
            resources: Default::default(),
            platform: Default::default(),
            created_at: 1,
            last_seen: 1,
            entry_format: 0,
            overlay_error: None,
            engine_labels: Default::default(),
        }
    }

    pub(super) fn spec(name: &str, replicas: u64) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            mode: ServiceMode::Replicated { replicas },
            labels: Default::default(),
            task: TaskTemplate {
                driver: Default::default(),
                command: vec!["sleep".into(), "100".into()],
                env: Default::default(),
                restart: Default::default(),
                stop_grace_period_ms: 10_000,
                constraints: vec![],
                ..TaskTemplate::default()
            },
            ..ServiceSpec::default()
        }
    }

    pub(super) fn task(id: &str, service: &str, slot: u64) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            service_name: service.into(),
            slot,
            node_id: None,
            desired_state: DesiredState::Running,
            status: TaskStatus::new(TaskState::Pending, 5, "created"),
            spec: spec(service, 1).task,
            service_version: 2,
            created_at: 5,
            created_index: 0,
            restart_history: vec![],
            networks: vec![],
        }
    }

    /// Applying the parts of a split batch in order gives the state the
    /// whole gives.
    #[test]
    fn applying_the_parts_is_applying_the_whole() {
        let tasks: Vec<Task> = (1..=7).map(|i| task(&format!("t{i}"), "s1", i)).collect();
        let whole = Command::CreateTasks { tasks };
        let mut one = init();
        let (r, _) = one.apply(
            2,
            &Command::CreateService {
                id: "s1".into(),
                spec: spec("web", 7),
                at: 3,
            },
        );
        assert!(r.is_ok());
        let mut parts = one.clone();
        let (r, _) = one.apply(3, &whole);
        assert!(r.is_ok());
        for part in whole.split(3) {
            let index = parts.index + 1;
            let (r, _) = parts.apply(index, &part);
            assert!(r.is_ok());
        }
        assert_eq!(one.tasks.len(), 7);
        let ids = |s: &State| s.tasks.keys().cloned().collect::<Vec<_>>();
        assert_eq!(ids(&one), ids(&parts));
    }

    pub(super) fn init() -> State {
        let mut s = State::default();
        let (r, _) = s.apply(
            1,
            &Command::InitCluster {
                cluster: Cluster::bare("c1", 1),
                node: node("n1"),
            },
        );
        assert_eq!(r, Ok(Some("c1".into())));
        s
    }

    #[test]
    fn init_twice_is_refused() {
        let mut s = init();
        let (r, changes) = s.apply(
            2,
            &Command::InitCluster {
                cluster: Cluster::bare("c2", 2),
                node: node("n2"),
            },
        );
        assert_eq!(r, Err(StoreError::AlreadyInitialized));
        assert!(changes.is_empty());
        assert_eq!(s.cluster.as_ref().map(|c| c.id.as_str()), Some("c1"));
    }

    #[test]
    fn services_need_a_cluster_and_unique_names() {
        let mut s = State::default();
        let create = Command::CreateService {
            id: "s1".into(),
            spec: spec("web", 1),
            at: 3,
        };
        assert_eq!(s.apply(1, &create).0, Err(StoreError::NotInitialized));
        let mut s = init();
        assert_eq!(s.apply(2, &create).0, Ok(Some("s1".into())));
        assert_eq!(s.services["s1"].version, 2);
        let again = Command::CreateService {
            id: "s2".into(),
            spec: spec("web", 1),
            at: 3,
        };
        assert_eq!(
            s.apply(3, &again).0,
            Err(StoreError::ServiceExists("web".into()))
        );
        assert_eq!(s.service("web").map(|x| x.id.as_str()), Some("s1"));
    }

    #[test]
    fn update_checks_the_expected_version() {
        let mut s = init();
        let _ = s.apply(
            2,
            &Command::CreateService {
                id: "s1".into(),
                spec: spec("web", 1),
                at: 3,
            },
        );
        let stale = Command::UpdateService {
            id: "s1".into(),
            spec: spec("web", 5),
            expected_version: Some(1),
            at: 4,
        };
        assert!(matches!(
            s.apply(3, &stale).0,
            Err(StoreError::VersionConflict { .. })
        ));
        let fresh = Command::UpdateService {
            id: "s1".into(),
            spec: spec("web", 5),
            expected_version: Some(2),
            at: 4,
        };
        assert_eq!(s.apply(4, &fresh).0, Ok(Some("s1".into())));
        assert_eq!(s.services["s1"].version, 4);
        assert_eq!(
            s.services["s1"].spec.mode,
            ServiceMode::Replicated { replicas: 5 }
        );
    }

    #[test]
    fn task_states_never_move_backwards() {
        let mut s = init();
        let _ = s.apply(
            2,
            &Command::CreateService {
                id: "s1".into(),
                spec: spec("web", 1),
                at: 3,
            },
        );
        let _ = s.apply(
            3,
            &Command::CreateTasks {
                tasks: vec![task("t1", "s1", 1)],
            },
        );
        assert_eq!(s.tasks["t1"].created_index, 3);
        let _ = s.apply(
            4,
            &Command::AssignTasks {
                assignments: vec![("t1".into(), "n1".into())],
                at: 6,
            },
        );
        assert_eq!(s.tasks["t1"].status.state, TaskState::Assigned);
        let report = |state| Command::UpdateTaskStatus {
            updates: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                status: TaskStatus::new(state, 7, ""),
            }],
        };
        let _ = s.apply(5, &report(TaskState::Running));
        assert_eq!(s.tasks["t1"].status.state, TaskState::Running);
        let (_, changes) = s.apply(6, &report(TaskState::Starting));
        assert!(changes.is_empty());
        assert_eq!(s.tasks["t1"].status.state, TaskState::Running);
        // Health moves within the running state, both ways.
        for health in [Health::Healthy, Health::Unhealthy] {
            let mut status = TaskStatus::new(TaskState::Running, 7, "");
            status.health = Some(health);
            let (_, changes) = s.apply(
                6,
                &Command::UpdateTaskStatus {
                    updates: vec![TaskStatusUpdate {
                        task_id: "t1".into(),
                        status,
                    }],
                },
            );
            assert_eq!(changes.len(), 1);
            assert_eq!(s.tasks["t1"].status.health, Some(health));
        }
        let _ = s.apply(7, &report(TaskState::Failed));
        let _ = s.apply(8, &report(TaskState::Shutdown));
        assert_eq!(s.tasks["t1"].status.state, TaskState::Failed);
        // a stale placement does not move a task that already ran
        let _ = s.apply(
            9,
            &Command::AssignTasks {
                assignments: vec![("t1".into(), "n1".into())],
                at: 9,
            },
        );
        assert_eq!(s.tasks["t1"].status.state, TaskState::Failed);
    }

    #[test]
    fn removing_a_service_shuts_its_tasks_down() {
        let mut s = two_pending_tasks();
        let (r, changes) = s.apply(
            4,
            &Command::RemoveService {
                id: "s1".into(),
                at: 5,
            },
        );
        assert_eq!(r, Ok(Some("s1".into())));
        assert_eq!(changes.len(), 3);
        assert!(s
            .tasks
            .values()
            .all(|t| t.desired_state == DesiredState::Shutdown));
        // tasks proposed for the removed service are dropped
        let _ = s.apply(
            5,
            &Command::CreateTasks {
                tasks: vec![task("t3", "s1", 3)],
            },
        );
        assert!(!s.tasks.contains_key("t3"));
        let _ = s.apply(
            6,
            &Command::DeleteTasks {
                task_ids: vec!["t1".into(), "t2".into()],
            },
        );
        assert!(s.tasks.is_empty());
    }

    #[test]
    fn joining_managers_get_fresh_raft_ids() {
        let mut s = init();
        let mut m = node("m2");
        m.raft_id = 0;
        assert_eq!(
            s.apply(2, &Command::JoinNode { node: m.clone() }).0,
            Ok(Some("m2".into()))
        );
        assert_eq!(s.nodes["m2"].raft_id, 2);
        let mut w = node("w1");
        w.role = flotilla_types::NodeRole::Worker;
        let _ = s.apply(3, &Command::JoinNode { node: w });
        assert_eq!(s.nodes["w1"].raft_id, 0);
        let mut m3 = node("m3");
        m3.raft_id = 1;
        let _ = s.apply(4, &Command::JoinNode { node: m3 });
        assert_eq!(
            s.nodes["m3"].raft_id, 3,
            "the proposer's raft id is ignored"
        );
        assert_eq!(
            s.apply(5, &Command::JoinNode { node: m }).0,
            Err(StoreError::NodeExists("m2".into()))
        );
        assert_eq!(s.cluster.as_ref().map(|c| c.next_raft_id), Some(4));
    }

    #[test]
    fn node_updates_and_removal() {
        let mut s = init();
        let _ = s.apply(2, &Command::JoinNode { node: node("n2") });
        let r = s.apply(
            3,
            &Command::UpdateNode {
                node_id: "n2".into(),
                availability: Some(flotilla_types::Availability::Drain),
                name: Some("two".into()),
                labels_add: [("zone".to_string(), "a".to_string())].into(),
                labels_rm: vec![],
            },
        );
        assert_eq!(r.0, Ok(Some("n2".into())));
        assert_eq!(s.nodes["n2"].name, "two");
        assert_eq!(s.nodes["n2"].labels["zone"], "a");
        let taken = Command::UpdateNode {
            node_id: "n2".into(),
            availability: None,
            name: Some("n1".into()),
            labels_add: Default::default(),
            labels_rm: vec!["zone".into()],
        };
        assert!(s.apply(4, &taken).0.is_err());
        assert_eq!(
            s.nodes["n2"].labels.len(),
            1,
            "a refused update changes nothing"
        );
        let _ = s.apply(
            5,
            &Command::CreateService {
                id: "s1".into(),
                spec: spec("web", 1),
                at: 3,
            },
        );
        let mut t = task("t1", "s1", 1);
        t.node_id = Some("n2".into());
        t.status.state = TaskState::Running;
        let _ = s.apply(6, &Command::CreateTasks { tasks: vec![t] });
        let _ = s.apply(
            7,
            &Command::RemoveNode {
                node_id: "n2".into(),
                at: 9,
            },
        );
        assert!(!s.nodes.contains_key("n2"));
        assert_eq!(s.tasks["t1"].status.state, TaskState::Orphaned);
    }

    #[test]
    fn rollback_returns_to_the_last_template_keeping_the_scale() {
        let mut s = init();
        let _ = s.apply(
            2,
            &Command::CreateService {
                id: "s1".into(),
                spec: spec("web", 1),
                at: 3,
            },
        );
        let update = |s: &mut State, i: u64, spec: ServiceSpec| {
            let (r, _) = s.apply(
                i,
                &Command::UpdateService {
                    id: "s1".into(),
                    spec,
                    expected_version: None,
                    at: i,
                },
            );
            assert!(r.is_ok());
        };
        let mut v2 = spec("web", 1);
        v2.task.env.insert("V".into(), "2".into());
        update(&mut s, 3, v2.clone());
        let mut scaled = v2.clone();
        scaled.mode = ServiceMode::Replicated { replicas: 4 };
        update(&mut s, 4, scaled);
        assert_eq!(
            s.services["s1"]
                .previous_spec
                .as_ref()
                .map(|p| p.task.env.len()),
            Some(0),
            "a scale does not replace the rollback target"
        );
        let (r, _) = s.apply(
            5,
            &Command::RollbackService {
                id: "s1".into(),
                at: 5,
                reason: None,
                expected_version: None,
            },
        );
        assert!(r.is_ok());
        assert!(s.services["s1"].spec.task.env.is_empty());
        assert_eq!(
            s.services["s1"].spec.mode,
            ServiceMode::Replicated { replicas: 4 }
        );
        assert_eq!(s.services["s1"].version, 5);
        let status = s.services["s1"].update_status.clone().expect("status");
        assert_eq!(status.state, UpdateState::RollbackStarted);
        assert_eq!(status.message, "manually requested rollback");
        // The orchestrator's word on an older version is dropped.
        let done = |version| Command::SetUpdateStatus {
            id: "s1".into(),
            version,
            status: UpdateStatus {
                state: UpdateState::RollbackCompleted,
                started_at: 5,
                completed_at: Some(6),
                message: "rollback completed".into(),
                version: 5,
            },
        };
        assert!(s.apply(6, &done(4)).0.is_err());
        assert!(s.apply(6, &done(5)).0.is_ok());
        assert_eq!(
            s.services["s1"].update_status.as_ref().map(|u| u.state),
            Some(UpdateState::RollbackCompleted)
        );
        // Rolling back again returns to V=2.
        let _ = s.apply(
            6,
            &Command::RollbackService {
                id: "s1".into(),
                at: 6,
                reason: Some("task failed".into()),
                expected_version: None,
            },
        );
        assert_eq!(
            s.services["s1"].spec.task.env.get("V").map(String::as_str),
            Some("2")
        );
        assert_eq!(
            s.services["s1"]
                .update_status
                .as_ref()
                .map(|u| u.message.as_str()),
            Some("task failed")
        );
        let (r, _) = s.apply(
            7,
            &Command::RollbackService {
                id: "nope".into(),
                at: 7,
                reason: None,
                expected_version: None,
            },
        );
        assert!(r.is_err());
    }

    /// The orchestrator decided to roll back a failed update at version 3;
    /// before its proposal committed, a user's update (version 4) landed.
    /// Without a version on the rollback, the user's update was rolled
    /// back (a lost update); with it, the rollback is refused.
    #[test]
    fn a_rollback_decided_before_a_users_update_is_refused() {
        let race = |expected_version: bool| {
            let mut s = init();
            let _ = s.apply(
                2,
                &Command::CreateService {
                    id: "s1".into(),
                    spec: spec("web", 2),
                    at: 2,
                },
            );
            let mut failed = spec("web", 2);
            failed.task.command = vec!["false".into()];
            let _ = s.apply(
                3,
                &Command::UpdateService {
                    id: "s1".into(),
                    spec: failed,
                    expected_version: None,
                    at: 3,
                },
            );
            let decided_at = s.services["s1"].version;
            let mut users = spec("web", 2);
            users.task.command = vec!["sleep".into(), "300".into()];
            let _ = s.apply(
                4,
                &Command::UpdateService {
                    id: "s1".into(),
                    spec: users,
                    expected_version: None,
                    at: 4,
                },
            );
            let (r, _) = s.apply(
                5,
                &Command::RollbackService {
                    id: "s1".into(),
                    at: 5,
                    reason: Some("task failed".into()),
                    expected_version: expected_version.then_some(decided_at),
                },
            );
            (r, s.services["s1"].spec.task.command.clone())
        };
        let (r, command) = race(false);
        assert!(r.is_ok());
        assert_eq!(command, ["false"], "the user's update was lost");
        let (r, command) = race(true);
        assert!(
            matches!(r, Err(StoreError::VersionConflict { .. })),
            "{r:?}"
        );
        assert_eq!(command, ["sleep", "300"], "the user's update stays");
    }

    #[test]
    fn apply_is_deterministic() {
        let commands = [
            Command::CreateService {
                id: "s1".into(),
                spec: spec("web", 2),
                at: 3,
            },
            Command::CreateTasks {
                tasks: vec![task("t1", "s1", 1), task("t2", "s1", 2)],
            },
            Command::AssignTasks {
                assignments: vec![("t1".into(), "n1".into())],
                at: 6,
            },
            Command::SetPendingReason {
                reasons: vec![("t2".into(), "no suitable node".into())],
                at: 6,
            },
        ];
        let run = || {
            let mut s = init();
            for (i, c) in commands.iter().enumerate() {
                let _ = s.apply(i as u64 + 2, c);
            }
            s
        };
        assert_eq!(run(), run());
        let s = run();
        let json = serde_json::to_string(&s).expect("serialize");
        let back: State = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
    }

    #[test]
    fn upsert_needs_a_cluster_and_replaces_the_record() {
        let mut s = State::default();
        assert_eq!(
            s.apply(1, &Command::UpsertNode { node: node("n1") }).0,
            Err(StoreError::NotInitialized)
        );
        let mut s = init();
        let mut n1 = node("n1");
        n1.version = "2".into();
        n1.raft_id = 7;
        let (r, changes) = s.apply(2, &Command::UpsertNode { node: n1.clone() });
        assert_eq!(r, Ok(Some("n1".into())));
        assert_eq!(changes, [Change::Node("n1".into())]);
        assert_eq!(s.nodes["n1"], n1, "the whole record, raft ID included");
    }

    #[test]
    fn rotating_a_secret_changes_only_that_role() {
        let rotate = |role| Command::RotateJoinSecret {
            role,
            secret: "new".into(),
        };
        let mut s = State::default();
        assert_eq!(
            s.apply(1, &rotate(NodeRole::Worker)).0,
            Err(StoreError::NotInitialized)
        );
        let mut s = init();
        let before = s.cluster.clone().expect("cluster");
        let (r, changes) = s.apply(2, &rotate(NodeRole::Worker));
        assert_eq!(r, Ok(None));
        assert_eq!(changes, [Change::Cluster]);
        let after = s.cluster.clone().expect("cluster");
        assert_eq!(after.worker_secret, "new");
        assert_eq!(after.manager_secret, before.manager_secret);
        let _ = s.apply(3, &rotate(NodeRole::Manager));
        assert_eq!(
            s.cluster.as_ref().map(|c| c.manager_secret.as_str()),
            Some("new")
        );
    }

    #[test]
    fn promotion_takes_a_fresh_raft_id_and_demotion_drops_it() {
        let mut s = init();
        let mut w = node("w1");
        w.role = NodeRole::Worker;
        let _ = s.apply(2, &Command::JoinNode { node: w });
        let role = |role| Command::SetNodeRole {
            node_id: "w1".into(),
            role,
        };
        let (r, changes) = s.apply(3, &role(NodeRole::Manager));
        assert_eq!(r, Ok(Some("w1".into())));
        assert_eq!(changes, [Change::Cluster, Change::Node("w1".into())]);
        assert_eq!(s.nodes["w1"].raft_id, 2);
        let (r, changes) = s.apply(4, &role(NodeRole::Manager));
        assert_eq!(r, Ok(None), "already a manager");
        assert!(changes.is_empty());
        let (_, changes) = s.apply(5, &role(NodeRole::Worker));
        assert_eq!(changes, [Change::Node("w1".into())]);
        assert_eq!(s.nodes["w1"].raft_id, 0);
        let _ = s.apply(6, &role(NodeRole::Manager));
        assert_eq!(s.nodes["w1"].raft_id, 3, "raft IDs are never reused");
        assert_eq!(
            s.apply(
                7,
                &Command::SetNodeRole {
                    node_id: "nope".into(),
                    role: NodeRole::Manager
                }
            )
            .0,
            Err(StoreError::NodeNotFound("nope".into()))
        );
        assert_eq!(s.cluster.as_ref().map(|c| c.next_raft_id), Some(4));
    }

    #[test]
    fn a_seen_node_is_ready_and_its_last_seen_never_moves_back() {
        let mut s = init();
        let _ = s.apply(
            2,
            &Command::SetNodeState {
                node_ids: vec!["n1".into()],
                state: NodeState::Down,
                at: 50,
            },
        );
        let seen = |addr: &str, api_addr: &str, at| Command::NodeSeen {
            node_id: "n1".into(),
            addr: addr.into(),
            api_addr: api_addr.into(),
            version: "v2".into(),
            entry_format: 2,
            at,
            overlay_error: None,
            engine_labels: [("disk".to_string(), "ssd".to_string())].into(),
        };
        let (r, changes) = s.apply(3, &seen("10.0.0.1:4280", "10.0.0.1:4281", 100));
        assert_eq!(r, Ok(None));
        assert_eq!(changes, [Change::Node("n1".into())]);
        let n = &s.nodes["n1"];
        assert_eq!(n.state, NodeState::Ready);
        assert_eq!((n.last_seen, n.version.as_str()), (100, "v2"));
        assert_eq!(n.addr, "10.0.0.1:4280");
        assert_eq!(n.engine_labels.get("disk").map(String::as_str), Some("ssd"));
        // An empty address keeps the known one; the API address is as sent.
        let _ = s.apply(4, &seen("", "", 90));
        let n = &s.nodes["n1"];
        assert_eq!(n.addr, "10.0.0.1:4280");
        assert_eq!(n.api_addr, "");
        assert_eq!(n.last_seen, 100);
        let mut unknown = seen("", "", 1);
        if let Command::NodeSeen { node_id, .. } = &mut unknown {
            *node_id = "nope".into();
        }
        assert_eq!(
            s.apply(5, &unknown).0,
            Err(StoreError::NodeNotFound("nope".into()))
        );
    }

    #[test]
    fn node_state_changes_skip_unknown_and_unchanged_nodes() {
        let mut s = init();
        let _ = s.apply(2, &Command::JoinNode { node: node("n2") });
        let down = |at| Command::SetNodeState {
            node_ids: vec!["n1".into(), "n2".into(), "nope".into()],
            state: NodeState::Down,
            at,
        };
        let (r, changes) = s.apply(3, &down(70));
        assert_eq!(r, Ok(None));
        assert_eq!(
            changes,
            [Change::Node("n1".into()), Change::Node("n2".into())]
        );
        assert_eq!(s.nodes["n2"].state, NodeState::Down);
        assert_eq!(s.nodes["n2"].last_seen, 70);
        let (_, changes) = s.apply(4, &down(80));
        assert!(changes.is_empty(), "already down");
        assert_eq!(s.nodes["n2"].last_seen, 70);
    }

    /// A cluster with service `s1` and its pending tasks `t1` and `t2`,
    /// at index 3.
    pub(super) fn two_pending_tasks() -> State {
        let mut s = init();
        let _ = s.apply(
            2,
            &Command::CreateService {
                id: "s1".into(),
                spec: spec("web", 2),
                at: 3,
            },
        );
        let _ = s.apply(
            3,
            &Command::CreateTasks {
                tasks: vec![task("t1", "s1", 1), task("t2", "s1", 2)],
            },
        );
        s
    }

    #[test]
    fn desired_state_changes_skip_unknown_and_unchanged_tasks() {
        let mut s = two_pending_tasks();
        let shutdown = |ids: &[&str]| Command::SetDesiredState {
            task_ids: ids.iter().map(|i| i.to_string()).collect(),
            desired: DesiredState::Shutdown,
        };
        let (r, changes) = s.apply(4, &shutdown(&["t1", "nope"]));
        assert_eq!(r, Ok(None));
        assert_eq!(changes, [Change::Task("t1".into())]);
        assert_eq!(s.tasks["t1"].desired_state, DesiredState::Shutdown);
        assert_eq!(s.tasks["t2"].desired_state, DesiredState::Running);
        let (_, changes) = s.apply(5, &shutdown(&["t1", "t2"]));
        assert_eq!(changes, [Change::Task("t2".into())]);
    }

    #[test]
    fn pending_reasons_change_only_waiting_tasks_with_a_new_reason() {
        let mut s = two_pending_tasks();
        let _ = s.apply(
            4,
            &Command::AssignTasks {
                assignments: vec![("t2".into(), "n1".into())],
                at: 6,
            },
        );
        let reasons = |at| Command::SetPendingReason {
            reasons: vec![
                ("t1".into(), "no suitable node".into()),
                ("t2".into(), "no suitable node".into()),
                ("nope".into(), "no suitable node".into()),
            ],
            at,
        };
        let (r, changes) = s.apply(5, &reasons(7));
        assert_eq!(r, Ok(None));
        assert_eq!(changes, [Change::Task("t1".into())]);
        assert_eq!(
            s.tasks["t1"].status,
            TaskStatus::new(TaskState::Pending, 7, "no suitable node")
        );
        assert_eq!(s.tasks["t2"].status.state, TaskState::Assigned);
        let (_, changes) = s.apply(6, &reasons(8));
        assert!(changes.is_empty(), "the same reason again");
        assert_eq!(s.tasks["t1"].status.timestamp, 7);
    }

    /// Issue 9, defect 5: the leader read its own record, a drain
    /// committed, then the refresh wrote the record it had read. With the
    /// whole record (`UpsertNode`, as `refresh_own_node` did) the drain is
    /// lost; with `RefreshNode` it stays.
    #[test]
    fn a_drain_committed_between_read_and_refresh_stays() {
        let race = |field_wise: bool| {
            let mut s = init();
            let mut read = s.nodes["n1"].clone();
            let _ = s.apply(
                2,
                &Command::UpdateNode {
                    node_id: "n1".into(),
                    availability: Some(Availability::Drain),
                    name: None,
                    labels_add: [("zone".to_string(), "a".to_string())].into(),
                    labels_rm: vec![],
                },
            );
            let refresh = if field_wise {
                Command::RefreshNode {
                    node_id: "n1".into(),
                    name: Some("first".into()),
                    hostname: "host-2".into(),
                    version: "v2".into(),
                    entry_format: crate::FORMAT,
                    at: 50,
                }
            } else {
                read.state = NodeState::Ready;
                read.last_seen = 50;
                read.version = "v2".into();
                read.name = "first".into();
                read.hostname = "host-2".into();
                Command::UpsertNode { node: read }
            };
            let (r, changes) = s.apply(3, &refresh);
            assert_eq!(r, Ok(Some("n1".into())));
            assert_eq!(changes, [Change::Node("n1".into())]);
            s.nodes["n1"].clone()
        };
        let lost = race(false);
        assert_eq!(
            lost.availability,
            Availability::Active,
            "the drain was lost"
        );
        assert!(lost.labels.is_empty());
        let kept = race(true);
        assert_eq!(kept.availability, Availability::Drain, "the drain stays");
        assert_eq!(kept.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            (
                kept.name.as_str(),
                kept.hostname.as_str(),
                kept.version.as_str()
            ),
            ("first", "host-2", "v2")
        );
        assert_eq!((kept.state, kept.last_seen), (NodeState::Ready, 50));
        assert_eq!(kept.entry_format, crate::FORMAT);
    }

    #[test]
    fn a_refresh_never_takes_another_nodes_name_or_moves_last_seen_back() {
        let mut s = init();
        let _ = s.apply(2, &Command::JoinNode { node: node("n2") });
        let refresh = |name: Option<&str>, at| Command::RefreshNode {
            node_id: "n1".into(),
            name: name.map(String::from),
            hostname: "h".into(),
            version: "v2".into(),
            entry_format: 2,
            at,
        };
        let (r, changes) = s.apply(3, &refresh(Some("n2"), 9));
        assert_eq!(r, Err(StoreError::NodeExists("n2".into())));
        assert!(changes.is_empty());
        assert_eq!(
            s.nodes["n1"].version, "test",
            "a refused refresh changes nothing"
        );
        let _ = s.apply(4, &refresh(None, 0));
        assert_eq!(
            (s.nodes["n1"].name.as_str(), s.nodes["n1"].last_seen),
            ("n1", 1)
        );
    }

    fn create(id: &str, name: &str) -> Command {
        Command::CreateService {
            id: id.into(),
            spec: spec(name, 1),
            at: 3,
        }
    }

    /// Issue 9, defect 5: a forwarded proposal retried after a lost answer
    /// committed twice. Without a request ID the second entry applies
    /// again (here: a second `service rm`-like change, a second create
    /// refused as a duplicate name, answering an error for a write that
    /// succeeded); with one, it answers the first result and changes
    /// nothing.
    #[test]
    fn the_same_request_applied_twice_changes_state_once() {
        let twice = |request: Option<&str>| {
            let mut s = init();
            let entry = Envelope::new(
                create("s1", "web"),
                request.map(String::from),
                crate::FORMAT,
            );
            let first = s.apply_entry(2, &entry).expect("known").0.remove(0);
            let bump = Envelope::new(
                Command::UpdateService {
                    id: "s1".into(),
                    spec: spec("web", 3),
                    expected_version: None,
                    at: 4,
                },
                request.map(|r| format!("{r}-update")),
                crate::FORMAT,
            );
            let _ = s.apply_entry(3, &bump).expect("known");
            let (mut second, changes) = s.apply_entry(4, &bump).expect("known");
            let second = second.remove(0);
            let again = s.apply_entry(5, &entry).expect("known").0.remove(0);
            (first, again, second, changes, s)
        };
        let (first, again, _, changes, s) = twice(None);
        assert_eq!(first, Ok(Some("s1".into())));
        assert_eq!(
            again,
            Err(StoreError::ServiceExists("web".into())),
            "before: applied twice"
        );
        assert_eq!(changes.len(), 1, "before: the update applied twice");
        assert_eq!(s.services["s1"].version, 4);
        let (first, again, second, changes, s) = twice(Some("r1"));
        assert_eq!(again, first, "the duplicate answers the first result");
        assert_eq!(second, Ok(Some("s1".into())));
        assert!(changes.is_empty(), "and changes nothing");
        assert_eq!(s.services["s1"].version, 3, "the update applied once");
        assert_eq!(s.index, 5);
        assert_eq!(s.requests.len(), 2);
        // The window is part of the state, so of the snapshot.
        let json = serde_json::to_string(&s).expect("encode");
        let back: State = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, s);
        assert_eq!(back.requests.get("r1").map(|r| r.index), Some(2));
    }

    /// Format 3: a batch applies its commands in order at one index, each
    /// with its own result and request; a command refused in a batch
    /// changes nothing and does not stop the others; a retry of one of
    /// them, alone or in a later batch, answers its first result.
    #[test]
    fn a_batch_applies_each_command_on_its_own_in_order() {
        let mut s = init();
        let _ = s.apply(2, &create("s1", "web"));
        let update = |expected| Command::UpdateService {
            id: "s1".into(),
            spec: spec("web", 2),
            expected_version: expected,
            at: 4,
        };
        let batch = Envelope::batch(
            vec![
                (update(Some(2)), Some("r1".into())),
                (create("s2", "web"), Some("r2".into())),
                // Read at the same version as the first: a lost update
                // unless the first, in the same entry, moved it on.
                (update(Some(2)), None),
                (create("s3", "api"), Some("r3".into())),
            ],
            crate::FORMAT,
        );
        let (results, changes) = s.apply_entry(3, &batch).expect("known");
        assert_eq!(
            results,
            vec![
                Ok(Some("s1".into())),
                Err(StoreError::ServiceExists("web".into())),
                Err(StoreError::VersionConflict {
                    name: "web".into(),
                    expected: 2,
                    actual: 3
                }),
                Ok(Some("s3".into())),
            ]
        );
        assert!(!changes.is_empty());
        assert!(!s.services.contains_key("s2"));
        assert_eq!(s.services["s1"].version, 3);
        assert_eq!(s.index, 3);
        let kept: Vec<(u64, u32)> = s.requests.iter().map(|r| (r.index, r.slot)).collect();
        assert_eq!(kept, [(3, 0), (3, 1), (3, 3)]);
        // A retry of r1 in a later batch beside a new command.
        let again = Envelope::batch(
            vec![
                (update(Some(2)), Some("r1".into())),
                (create("s4", "db"), Some("r4".into())),
            ],
            crate::FORMAT,
        );
        let (results, _) = s.apply_entry(4, &again).expect("known");
        assert_eq!(results, vec![Ok(Some("s1".into())), Ok(Some("s4".into()))]);
        assert_eq!(s.services["s1"].version, 3, "r1 applied once");
        // The window, with its slots, is part of the snapshot.
        let json = serde_json::to_string(&s).expect("encode");
        let back: State = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, s);
    }

    #[test]
    fn the_request_window_forgets_the_oldest_first() {
        let mut s = init();
        let mut changes = Vec::new();
        let mut index = 1;
        for i in 0..REQUEST_WINDOW + 2 {
            index += 1;
            let entry = Envelope::new(
                Command::RotateJoinSecret {
                    role: NodeRole::Worker,
                    secret: format!("s{i}"),
                },
                Some(format!("r{i}")),
                crate::FORMAT,
            );
            let (_, c) = s.apply_entry(index, &entry).expect("known");
            changes = c;
        }
        assert_eq!(s.requests.len(), REQUEST_WINDOW);
        assert!(s.requests.get("r0").is_none() && s.requests.get("r1").is_none());
        assert!(s.requests.get("r2").is_some());
        let last = format!("r{}", REQUEST_WINDOW + 1);
        assert_eq!(
            changes,
            [
                Change::Cluster,
                Change::Request(last),
                Change::Request("r1".into())
            ]
        );
    }

    /// Issue 9, defect 11: an entry of a future version is refused before
    /// anything changes; the caller stops applying.
    #[test]
    fn an_entry_this_version_cannot_read_changes_nothing() {
        let mut s = init();
        let future: Envelope = serde_json::from_str(
            r#"{"format":4,"request":"r1","command":{"type":"create_volume","id":"v1"}}"#,
        )
        .expect("decode");
        let before = s.clone();
        let e = s.apply_entry(2, &future).expect_err("refused");
        assert!(
            matches!(
                e,
                EntryError::Unknown {
                    index: 2,
                    format: 4,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(s, before, "not even the index moved");
    }

    /// A rolling upgrade: the envelope (format 2) is written only once
    /// every manager's record says it reads it; workers do not count.
    #[test]
    fn a_format_is_written_only_once_every_manager_reads_it() {
        assert_eq!(crate::writable_format(&State::default()), crate::FORMAT);
        let mut s = init();
        assert_eq!(crate::writable_format(&s), 1, "a record from before says 0");
        let mut w = node("w1");
        w.role = NodeRole::Worker;
        let _ = s.apply(2, &Command::JoinNode { node: w });
        let mut m2 = node("m2");
        m2.entry_format = 2;
        let _ = s.apply(3, &Command::JoinNode { node: m2 });
        assert_eq!(
            crate::writable_format(&s),
            1,
            "n1 still reads only format 1"
        );
        let seen = Command::NodeSeen {
            node_id: "n1".into(),
            addr: String::new(),
            api_addr: String::new(),
            version: "v2".into(),
            entry_format: 2,
            at: 5,
            overlay_error: None,
            engine_labels: Default::default(),
        };
        let _ = s.apply(4, &seen);
        assert_eq!(crate::writable_format(&s), 2);
        s.nodes.get_mut("m2").expect("m2").entry_format = 7;
        assert_eq!(
            crate::writable_format(&s),
            2,
            "never above what this version writes"
        );
    }
}
