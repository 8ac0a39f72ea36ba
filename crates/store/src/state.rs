//! The tables and the deterministic apply function.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use flotilla_types::{
    Cluster, DesiredState, Node, NodeRole, NodeState, Service, Task, TaskState, TaskStatus,
    UpdateState, UpdateStatus,
};

use crate::command::{Command, CommandResult};
use crate::error::StoreError;

/// Which object an applied command touched. The raft crate persists exactly
/// these; watchers can use them to skip unrelated work.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Change {
    Cluster,
    Node(String),
    Service(String),
    Task(String),
}

/// The whole replicated state of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub cluster: Option<Cluster>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Task>,
    /// Raft index of the last applied command (0 when none).
    pub index: u64,
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

    fn apply_inner(
        &mut self,
        index: u64,
        command: &Command,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        match command {
            Command::InitCluster { cluster, node } => {
                if self.cluster.is_some() {
                    return Err(StoreError::AlreadyInitialized);
                }
                let mut cluster = cluster.clone();
                cluster.next_raft_id = cluster.next_raft_id.max(node.raft_id + 1);
                let id = cluster.id.clone();
                self.cluster = Some(cluster);
                changes.push(Change::Cluster);
                self.nodes.insert(node.id.clone(), node.clone());
                changes.push(Change::Node(node.id.clone()));
                Ok(Some(id))
            }
            Command::UpsertNode { node } => {
                self.require_cluster()?;
                self.nodes.insert(node.id.clone(), node.clone());
                changes.push(Change::Node(node.id.clone()));
                Ok(Some(node.id.clone()))
            }
            Command::JoinNode { node } => {
                if self.nodes.contains_key(&node.id) {
                    return Err(StoreError::NodeExists(node.id.clone()));
                }
                let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialized)?;
                let mut node = node.clone();
                node.raft_id = match node.role {
                    NodeRole::Manager => {
                        let id = cluster.next_raft_id;
                        cluster.next_raft_id += 1;
                        changes.push(Change::Cluster);
                        id
                    }
                    NodeRole::Worker => 0,
                };
                changes.push(Change::Node(node.id.clone()));
                let id = node.id.clone();
                self.nodes.insert(id.clone(), node);
                Ok(Some(id))
            }
            Command::RotateJoinSecret { role, secret } => {
                let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialized)?;
                match role {
                    NodeRole::Manager => cluster.manager_secret = secret.clone(),
                    NodeRole::Worker => cluster.worker_secret = secret.clone(),
                }
                changes.push(Change::Cluster);
                Ok(None)
            }
            Command::UpdateNode {
                node_id,
                availability,
                name,
                labels_add,
                labels_rm,
            } => {
                if let Some(n) = name {
                    if self
                        .nodes
                        .values()
                        .any(|other| other.id != *node_id && other.name == *n)
                    {
                        return Err(StoreError::NodeExists(n.clone()));
                    }
                }
                let node = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| StoreError::NodeNotFound(node_id.clone()))?;
                if let Some(a) = availability {
                    node.availability = *a;
                }
                if let Some(n) = name {
                    node.name = n.clone();
                }
                for k in labels_rm {
                    node.labels.remove(k);
                }
                for (k, v) in labels_add {
                    node.labels.insert(k.clone(), v.clone());
                }
                changes.push(Change::Node(node_id.clone()));
                Ok(Some(node_id.clone()))
            }
            Command::SetNodeRole { node_id, role } => {
                let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialized)?;
                let node = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| StoreError::NodeNotFound(node_id.clone()))?;
                if node.role == *role {
                    return Ok(None);
                }
                node.role = *role;
                node.raft_id = match role {
                    NodeRole::Manager => {
                        let id = cluster.next_raft_id;
                        cluster.next_raft_id += 1;
                        changes.push(Change::Cluster);
                        id
                    }
                    NodeRole::Worker => 0,
                };
                changes.push(Change::Node(node_id.clone()));
                Ok(Some(node_id.clone()))
            }
            Command::RemoveNode { node_id, at } => {
                if self.nodes.remove(node_id).is_none() {
                    return Err(StoreError::NodeNotFound(node_id.clone()));
                }
                changes.push(Change::Node(node_id.clone()));
                for task in self.tasks.values_mut() {
                    if task.node_id.as_deref() == Some(node_id.as_str())
                        && task.status.state.can_move_to(TaskState::Orphaned)
                    {
                        let mut status = TaskStatus::new(TaskState::Orphaned, *at, "node removed");
                        status.error = Some("its node was removed from the cluster".into());
                        task.status = status;
                        changes.push(Change::Task(task.id.clone()));
                    }
                }
                Ok(Some(node_id.clone()))
            }
            Command::NodeSeen {
                node_id,
                addr,
                api_addr,
                version,
                at,
            } => {
                let node = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| StoreError::NodeNotFound(node_id.clone()))?;
                node.state = NodeState::Ready;
                node.last_seen = node.last_seen.max(*at);
                if !addr.is_empty() {
                    node.addr = addr.clone();
                }
                node.api_addr = api_addr.clone();
                node.version = version.clone();
                changes.push(Change::Node(node_id.clone()));
                Ok(None)
            }
            Command::SetNodeState {
                node_ids,
                state,
                at,
            } => {
                for id in node_ids {
                    if let Some(node) = self.nodes.get_mut(id) {
                        if node.state != *state {
                            node.state = *state;
                            node.last_seen = node.last_seen.max(*at);
                            changes.push(Change::Node(id.clone()));
                        }
                    }
                }
                Ok(None)
            }
            Command::CreateService { id, spec, at } => {
                self.require_cluster()?;
                if self.service(&spec.name).is_some() || self.services.contains_key(id) {
                    return Err(StoreError::ServiceExists(spec.name.clone()));
                }
                self.services.insert(
                    id.clone(),
                    Service {
                        id: id.clone(),
                        spec: spec.clone(),
                        version: index,
                        created_at: *at,
                        updated_at: *at,
                        previous_spec: None,
                        update_status: None,
                    },
                );
                changes.push(Change::Service(id.clone()));
                Ok(Some(id.clone()))
            }
            Command::UpdateService {
                id,
                spec,
                expected_version,
                at,
            } => {
                let renamed_to_taken = self
                    .services
                    .values()
                    .any(|s| s.id != *id && s.spec.name == spec.name);
                let service = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| StoreError::ServiceNotFound(id.clone()))?;
                if let Some(expected) = expected_version {
                    if *expected != service.version {
                        return Err(StoreError::VersionConflict {
                            name: service.spec.name.clone(),
                            expected: *expected,
                            actual: service.version,
                        });
                    }
                }
                if renamed_to_taken {
                    return Err(StoreError::ServiceExists(spec.name.clone()));
                }
                if service.spec.task != spec.task {
                    // What `service rollback` returns to: the last spec
                    // whose tasks differ, not a scale in between.
                    service.previous_spec = Some(Box::new(service.spec.clone()));
                    service.update_status = Some(UpdateStatus {
                        state: UpdateState::Updating,
                        started_at: *at,
                        completed_at: None,
                        message: "update in progress".into(),
                        version: index,
                    });
                }
                service.spec = spec.clone();
                service.version = index;
                service.updated_at = *at;
                changes.push(Change::Service(id.clone()));
                Ok(Some(id.clone()))
            }
            Command::RollbackService { id, at, reason } => {
                let service = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| StoreError::ServiceNotFound(id.clone()))?;
                let previous = service
                    .previous_spec
                    .take()
                    .ok_or_else(|| StoreError::NothingToRollBack(service.spec.name.clone()))?;
                let mut spec = *previous;
                // The name and the replica count are not part of what is
                // rolled back, as in Swarm: a scale since stays.
                spec.name = service.spec.name.clone();
                spec.mode = service.spec.mode;
                service.previous_spec = Some(Box::new(std::mem::replace(&mut service.spec, spec)));
                service.version = index;
                service.updated_at = *at;
                service.update_status = Some(UpdateStatus {
                    state: UpdateState::RollbackStarted,
                    started_at: *at,
                    completed_at: None,
                    message: reason
                        .clone()
                        .unwrap_or_else(|| "manually requested rollback".into()),
                    version: index,
                });
                changes.push(Change::Service(id.clone()));
                Ok(Some(id.clone()))
            }
            Command::SetUpdateStatus {
                id,
                version,
                status,
            } => {
                let service = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| StoreError::ServiceNotFound(id.clone()))?;
                if service.version != *version {
                    return Err(StoreError::VersionConflict {
                        name: service.spec.name.clone(),
                        expected: *version,
                        actual: service.version,
                    });
                }
                if service.update_status.as_ref() != Some(status) {
                    service.update_status = Some(status.clone());
                    changes.push(Change::Service(id.clone()));
                }
                Ok(Some(id.clone()))
            }
            Command::RemoveService { id, .. } => {
                if self.services.remove(id).is_none() {
                    return Err(StoreError::ServiceNotFound(id.clone()));
                }
                changes.push(Change::Service(id.clone()));
                for task in self.tasks.values_mut().filter(|t| t.service_id == *id) {
                    if task.desired_state != DesiredState::Shutdown {
                        task.desired_state = DesiredState::Shutdown;
                        changes.push(Change::Task(task.id.clone()));
                    }
                }
                Ok(Some(id.clone()))
            }
            Command::CreateTasks { tasks } => {
                for task in tasks {
                    // A task of a service removed since the proposal is dropped:
                    // nothing would ever clean it up.
                    if !self.services.contains_key(&task.service_id)
                        || self.tasks.contains_key(&task.id)
                    {
                        continue;
                    }
                    let mut task = task.clone();
                    task.created_index = index;
                    changes.push(Change::Task(task.id.clone()));
                    self.tasks.insert(task.id.clone(), task);
                }
                Ok(None)
            }
            Command::SetDesiredState { task_ids, desired } => {
                for id in task_ids {
                    if let Some(task) = self.tasks.get_mut(id) {
                        if task.desired_state != *desired {
                            task.desired_state = *desired;
                            changes.push(Change::Task(id.clone()));
                        }
                    }
                }
                Ok(None)
            }
            Command::AssignTasks { assignments, at } => {
                for (task_id, node_id) in assignments {
                    if !self.nodes.contains_key(node_id) {
                        continue;
                    }
                    if let Some(task) = self.tasks.get_mut(task_id) {
                        // Only a task still waiting for a node can be placed;
                        // a stale proposal must not move a running task.
                        if task.status.state <= TaskState::Pending
                            && task.desired_state == DesiredState::Running
                        {
                            task.node_id = Some(node_id.clone());
                            task.status = TaskStatus::new(TaskState::Assigned, *at, "assigned");
                            changes.push(Change::Task(task_id.clone()));
                        }
                    }
                }
                Ok(None)
            }
            Command::SetPendingReason { reasons, at } => {
                for (task_id, reason) in reasons {
                    if let Some(task) = self.tasks.get_mut(task_id) {
                        if task.status.state <= TaskState::Pending
                            && (task.status.state != TaskState::Pending
                                || task.status.message != *reason)
                        {
                            task.status = TaskStatus::new(TaskState::Pending, *at, reason.clone());
                            changes.push(Change::Task(task_id.clone()));
                        }
                    }
                }
                Ok(None)
            }
            Command::UpdateTaskStatus { updates } => {
                for update in updates {
                    if let Some(task) = self.tasks.get_mut(&update.task_id) {
                        if task.status.accepts(&update.status) {
                            task.status = update.status.clone();
                            changes.push(Change::Task(update.task_id.clone()));
                        }
                    }
                }
                Ok(None)
            }
            Command::DeleteTasks { task_ids } => {
                for id in task_ids {
                    if self.tasks.remove(id).is_some() {
                        changes.push(Change::Task(id.clone()));
                    }
                }
                Ok(None)
            }
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
    use flotilla_types::{
        Availability, Health, NodeRole, NodeState, ServiceMode, ServiceSpec, TaskTemplate,
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
        }
    }

    fn spec(name: &str, replicas: u64) -> ServiceSpec {
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

    fn task(id: &str, service: &str, slot: u64) -> Task {
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
        }
    }

    fn init() -> State {
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
            },
        );
        assert!(r.is_err());
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
}
