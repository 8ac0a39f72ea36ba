//! Fixtures shared by the unit tests: a state built by hand, without going
//! through `apply`, so that each test sets exactly the fields it is about.

use flotilla_store::{Command, State};
use flotilla_types::{
    Availability, Cluster, DesiredState, Node, NodeRole, NodeState, RestartPolicy, Service,
    ServiceMode, ServiceSpec, Task, TaskState, TaskStatus, TaskTemplate, UnixMs,
};

use crate::orchestrator::Reconciliation;

pub fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        raft_id: 1,
        name: format!("name-{id}"),
        hostname: format!("host-{id}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        labels: Default::default(),
        state: NodeState::Ready,
        addr: String::new(),
        api_addr: String::new(),
        version: "test".into(),
        resources: Default::default(),
        platform: Default::default(),
        created_at: 0,
        last_seen: 0,
        entry_format: 0,
        overlay_error: None,
        engine_labels: Default::default(),
    }
}

/// An initialized cluster with ready, active worker nodes.
pub fn cluster(nodes: &[&str]) -> State {
    let mut state = State {
        cluster: Some(Cluster::bare("c1", 0)),
        ..State::default()
    };
    for id in nodes {
        state.nodes.insert(id.to_string(), node(id));
    }
    state
}

pub fn template() -> TaskTemplate {
    TaskTemplate {
        driver: Default::default(),
        command: vec!["sleep".into(), "100".into()],
        env: Default::default(),
        restart: RestartPolicy {
            delay_ms: 0,
            ..RestartPolicy::default()
        },
        stop_grace_period_ms: 10_000,
        constraints: vec![],
        ..TaskTemplate::default()
    }
}

/// A service at version 1; its name is its ID.
pub fn service(id: &str, mode: ServiceMode) -> Service {
    Service {
        id: id.into(),
        spec: ServiceSpec {
            name: id.into(),
            mode,
            labels: Default::default(),
            task: template(),
            ..ServiceSpec::default()
        },
        version: 1,
        created_at: 0,
        updated_at: 0,
        previous_spec: None,
        update_status: None,
        published: Vec::new(),
        virtual_ips: Vec::new(),
    }
}

pub fn replicated(id: &str, replicas: u64) -> Service {
    service(id, ServiceMode::Replicated { replicas })
}

pub fn global(id: &str) -> Service {
    service(id, ServiceMode::Global)
}

pub fn add_service(state: &mut State, service: Service) {
    state.services.insert(service.id.clone(), service);
}

pub fn add_task(state: &mut State, task: Task) {
    state.tasks.insert(task.id.clone(), task);
}

/// A task desired running, made from version 1 of [`template`]; placed on
/// `n1` when its state says it was placed. Its status timestamp is 0.
pub fn task(id: &str, service: &str, slot: u64, created_index: u64, state: TaskState) -> Task {
    let placed = state >= TaskState::Assigned;
    Task {
        id: id.into(),
        service_id: service.into(),
        service_name: service.into(),
        slot,
        node_id: placed.then(|| "n1".to_string()),
        desired_state: DesiredState::Running,
        status: TaskStatus::new(state, 0, ""),
        spec: template(),
        service_version: 1,
        created_at: 0,
        created_index,
        restart_history: vec![],
        networks: vec![],
    }
}

/// IDs `id1`, `id2`, ... in order.
pub fn counter() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("id{n}")
    }
}

/// Applies a reconciliation to `state` the way the orchestrator loop
/// proposes it (shutdowns, creations, deletions, update statuses,
/// rollbacks at `now`), asserting that the store accepts every command.
pub fn apply_decision(state: &mut State, rec: &Reconciliation, now: UnixMs) {
    let mut commands = vec![
        Command::SetDesiredState {
            task_ids: rec.shutdown.clone(),
            desired: DesiredState::Shutdown,
        },
        Command::CreateTasks {
            tasks: rec.create.clone(),
        },
        Command::DeleteTasks {
            task_ids: rec.delete.clone(),
        },
    ];
    for (id, version, status) in &rec.update_status {
        commands.push(Command::SetUpdateStatus {
            id: id.clone(),
            version: *version,
            status: status.clone(),
        });
    }
    for (id, version, reason) in &rec.rollback {
        commands.push(Command::RollbackService {
            id: id.clone(),
            at: now,
            reason: Some(reason.clone()),
            expected_version: Some(*version),
        });
    }
    for command in &commands {
        let index = state.index + 1;
        let (result, _) = state.apply(index, command);
        assert!(result.is_ok(), "{command:?}: {result:?}");
    }
}
