//! Builds the API's views from the replicated state. Pure functions.

use std::collections::BTreeMap;

use flotilla_api::model::{Info, NodeView, Reachability, Replicas, ServiceView, TaskView};
use flotilla_store::State;

use crate::control::ControlError;
use flotilla_types::{
    DesiredState, Health, HealthTest, NodeRole, Service, ServiceMode, Task, TaskState,
};

/// What the views need to know about raft membership.
#[derive(Debug, Clone, Default)]
pub struct ManagerStatus {
    /// Raft ID of the leader, if known and heard from.
    pub leader_raft_id: Option<u64>,
    /// Raft IDs of managers this node currently hears from (itself included).
    pub reachable: Vec<u64>,
    /// The voters this manager hears are not a quorum: the store's rows
    /// are not being updated, so node status is what this manager hears.
    pub no_quorum: bool,
    /// Milliseconds since this manager last heard each node (by node ID;
    /// its own is 0); a node missing was not heard since it started.
    pub heard_ms: std::collections::HashMap<String, u64>,
    /// How long a node may go unheard before it is shown down (used
    /// without a quorum).
    pub node_timeout: std::time::Duration,
    /// On the leader: members (raft ID) heard from whose log is more than
    /// [`CAUGHT_UP_LAG`] entries behind, and by how many.
    pub behind: std::collections::HashMap<u64, u64>,
}

/// How far behind the leader's log a voter may be and still count as
/// caught up (a few batches in flight).
pub const CAUGHT_UP_LAG: u64 = 100;

/// The managers that count as reachable: voters this manager heard from
/// lately (`heard`, from [`crate::contact::quorum_view`]; itself always).
/// The leader also knows how far each voter's log matches its own, and
/// counts only those within [`CAUGHT_UP_LAG`] entries (a manager that
/// joined and is still receiving the state is not reachable: it could not
/// take part in a quorum).
pub fn reachable_managers(
    progress: &flotilla_raft::node::Progress,
    me: u64,
    heard: &[u64],
) -> Vec<u64> {
    let caught_up = |id: &u64| match &progress.matched {
        Some(matched) => matched
            .get(id)
            .is_some_and(|m| m + CAUGHT_UP_LAG >= progress.last_log_index),
        None => true,
    };
    let mut out: Vec<u64> = progress
        .voters
        .iter()
        .filter(|id| **id == me || (heard.contains(id) && caught_up(id)))
        .copied()
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// On the leader: the members (voters and learners) in `heard` whose log
/// is more than [`CAUGHT_UP_LAG`] entries behind, with how far.
pub fn catching_up(
    progress: &flotilla_raft::node::Progress,
    heard: &[u64],
) -> std::collections::HashMap<u64, u64> {
    let Some(matched) = &progress.matched else {
        return Default::default();
    };
    matched
        .iter()
        .filter(|(id, _)| heard.contains(id))
        .filter_map(|(id, m)| {
            let lag = progress.last_log_index.saturating_sub(*m);
            (lag > CAUGHT_UP_LAG).then_some((*id, lag))
        })
        .collect()
}

/// How many failures `managers` voters survive: (n - 1) / 2.
pub fn fault_tolerance(managers: u64) -> u64 {
    managers.saturating_sub(1) / 2
}

/// `running/desired` of a service, with its healthy and ready counts.
pub fn replicas(state: &State, service: &Service) -> Replicas {
    let running: Vec<&Task> = state
        .tasks_of(&service.id)
        .filter(|t| {
            t.desired_state == DesiredState::Running && t.status.state == TaskState::Running
        })
        .collect();
    let checked = service
        .spec
        .task
        .health
        .as_ref()
        .is_some_and(|h| h.test != HealthTest::None)
        || running.iter().any(|t| t.status.health.is_some());
    let healthy = checked.then(|| {
        running
            .iter()
            .filter(|t| t.status.health == Some(Health::Healthy))
            .count() as u64
    });
    let ready = running.iter().filter(|t| t.is_ready()).count() as u64;
    let running = running.len() as u64;
    let desired = match service.spec.mode {
        ServiceMode::Replicated { replicas } | ServiceMode::ReplicatedJob { replicas, .. } => {
            replicas
        }
        ServiceMode::Global | ServiceMode::GlobalJob => state
            .nodes
            .values()
            .filter(|n| flotilla_manager::orchestrator::global_eligible(service, n))
            .count() as u64,
    };
    let completed = service.spec.mode.is_job().then(|| {
        let mut slots: std::collections::BTreeMap<flotilla_types::SlotKey, Vec<&Task>> =
            Default::default();
        for t in state.tasks_of(&service.id) {
            slots.entry(t.slot_key()).or_default().push(t);
        }
        flotilla_manager::orchestrator::jobs::progress(service, &slots).completed
    });
    Replicas {
        running,
        desired,
        healthy,
        ready,
        completed,
    }
}

/// One service.
pub fn service_view(state: &State, service: &Service) -> ServiceView {
    ServiceView {
        id: service.id.clone(),
        name: service.spec.name.clone(),
        mode: (&service.spec.mode).into(),
        replicas: replicas(state, service),
        command: service.spec.task.command.join(" "),
        spec: service.spec.clone(),
        version: service.version,
        created_at: service.created_at,
        updated_at: service.updated_at,
        update_status: service.update_status.clone(),
        can_roll_back: service.previous_spec.is_some(),
        published: service.published.clone(),
        networks: service_networks(state, service),
    }
}

/// The name of network `id`, or the ID when it is gone.
fn network_name(state: &State, id: &str) -> String {
    state
        .networks
        .get(id)
        .map_or_else(|| id.to_string(), |n| n.spec.name.clone())
}

/// A service's networks with their names and its virtual addresses.
fn service_networks(state: &State, service: &Service) -> Vec<flotilla_api::model::ServiceNetwork> {
    service
        .spec
        .task
        .networks
        .iter()
        .map(|a| flotilla_api::model::ServiceNetwork {
            network_id: a.network.clone(),
            network: network_name(state, &a.network),
            aliases: a.aliases.clone(),
            virtual_ip: service
                .virtual_ips
                .iter()
                .find(|v| v.network == a.network)
                .map(|v| v.addr.to_string()),
        })
        .collect()
}

/// One network, with the services on it and the tasks that hold an
/// address there.
pub fn network_view(
    state: &State,
    network: &flotilla_types::Network,
) -> flotilla_api::model::NetworkView {
    let node_name = |id: &str| {
        state
            .nodes
            .get(id)
            .map_or_else(|| id.to_string(), |n| n.name.clone())
    };
    let mut tasks: Vec<flotilla_api::model::NetworkTask> = state
        .tasks
        .values()
        .filter(|t| !t.status.state.is_terminal())
        .filter_map(|t| {
            let addr = t.networks.iter().find(|a| a.network == network.id)?;
            Some(flotilla_api::model::NetworkTask {
                task_id: t.id.clone(),
                service: t.service_name.clone(),
                slot: t.slot,
                address: addr.addr.to_string(),
                node: t.node_id.as_deref().map(node_name),
                state: t.status.state,
            })
        })
        .collect();
    tasks.sort_by(|a, b| (&a.service, a.slot, &a.task_id).cmp(&(&b.service, b.slot, &b.task_id)));
    flotilla_api::model::NetworkView {
        id: network.id.clone(),
        name: network.spec.name.clone(),
        spec: network.spec.clone(),
        created_at: network.created_at,
        subnet: network.subnet.map(|s| s.to_string()),
        gateway: network.subnet.map(|s| s.gateway().to_string()),
        vni: network.vni,
        services: state.services_on(&network.id),
        tasks,
    }
}

/// `flotilla resolve`: what the task `q.from` (an ID or `SERVICE.SLOT`;
/// none: every network) gets for `q.name`, from the table every node's
/// resolver answers from.
pub fn resolve_view(
    state: &State,
    q: &flotilla_api::model::ResolveQuery,
) -> Result<flotilla_api::model::ResolveView, ControlError> {
    use flotilla_api::model::{ResolveView, ResolvedRecord};
    use flotilla_dns::wire::{TYPE_A, TYPE_SRV};
    use flotilla_dns::{Answer, Record, Scope};
    let qtype = match q.r#type.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("A") => TYPE_A,
        Some("SRV") => TYPE_SRV,
        Some(other) => {
            return Err(ControlError::Invalid(format!(
                "invalid record type {other:?}: expected A or SRV"
            )))
        }
    };
    let task = match q.from.as_deref() {
        None => None,
        Some(from) => Some(task_named(state, from).ok_or_else(|| {
            ControlError::NotFound(format!(
                "task {from} not found (give a task ID or SERVICE.SLOT)"
            ))
        })?),
    };
    let table = flotilla_manager::network::network_table(state);
    let scope = task.map_or(Scope::Everywhere, |t| Scope::Task(t.id.as_str()));
    let networks = flotilla_dns::networks_of(&table, scope)
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let (status, records) = match flotilla_dns::answer_for(&table, scope, &q.name, qtype) {
        Answer::Records {
            answers,
            additional,
        } => {
            let records = answers
                .iter()
                .chain(&additional)
                .filter_map(|r| match r {
                    Record::A { name, ttl, addr } => Some(ResolvedRecord {
                        name: name.clone(),
                        r#type: "A".into(),
                        ttl: *ttl,
                        value: addr.to_string(),
                    }),
                    Record::Srv {
                        name,
                        ttl,
                        priority,
                        weight,
                        port,
                        target,
                    } => Some(ResolvedRecord {
                        name: name.clone(),
                        r#type: "SRV".into(),
                        ttl: *ttl,
                        value: format!("{priority} {weight} {port} {target}"),
                    }),
                    Record::Soa { .. } => None,
                })
                .collect();
            ("answer", records)
        }
        Answer::NoData => ("nodata", Vec::new()),
        Answer::NxDomain => ("nxdomain", Vec::new()),
        Answer::Forward => ("forward", Vec::new()),
    };
    Ok(ResolveView {
        name: q.name.clone(),
        from_task: task.map(|t| t.id.clone()),
        networks,
        status: status.to_string(),
        records,
    })
}

/// A task by ID, or the current task of `SERVICE.SLOT` (for a global
/// service `SERVICE.NODE`, by node ID or name).
fn task_named<'a>(state: &'a State, name: &str) -> Option<&'a flotilla_types::Task> {
    if let Some(t) = state.tasks.get(name) {
        return Some(t);
    }
    let (service, slot) = name.rsplit_once('.')?;
    let service = state.service(service)?;
    let mut candidates: Vec<&flotilla_types::Task> = state
        .tasks_of(&service.id)
        .filter(|t| match slot.parse::<u64>() {
            Ok(n) => t.slot == n,
            Err(_) => {
                t.slot == 0
                    && t.node_id.as_deref().is_some_and(|id| {
                        id == slot || state.nodes.get(id).is_some_and(|n| n.name == slot)
                    })
            }
        })
        .collect();
    // The current one: desired running first, then the newest.
    candidates.sort_by_key(|t| {
        (
            t.desired_state == flotilla_types::DesiredState::Running,
            t.created_index,
        )
    });
    candidates.last().copied()
}

/// Every network, by name.
pub fn network_views(state: &State) -> Vec<flotilla_api::model::NetworkView> {
    let mut out: Vec<_> = state
        .networks
        .values()
        .map(|n| network_view(state, n))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Every service, by name.
pub fn service_views(state: &State) -> Vec<ServiceView> {
    let mut out: Vec<ServiceView> = state
        .services
        .values()
        .map(|s| service_view(state, s))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The tasks of one service, history included.
pub fn task_views(state: &State, service: &Service) -> Vec<TaskView> {
    let mut out: Vec<TaskView> = state
        .tasks_of(&service.id)
        .map(|t| TaskView {
            id: t.id.clone(),
            service: t.service_name.clone(),
            service_id: t.service_id.clone(),
            slot: t.slot,
            node: t.node_id.as_ref().map(|id| {
                state
                    .nodes
                    .get(id)
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| id.clone())
            }),
            node_id: t.node_id.clone(),
            desired_state: t.desired_state,
            state: t.status.state,
            timestamp: t.status.timestamp,
            message: t.status.message.clone(),
            error: t.status.error.clone(),
            exit_code: t.status.exit_code,
            pid: t.status.pid,
            health: t.status.health,
            image: t.spec.image.clone(),
            container_id: t.status.container_id.clone(),
            up_to_date: t.spec == service.spec.task,
            created_at: t.created_at,
            current: t.desired_state == DesiredState::Running,
            endpoints: task_endpoints(state, t),
            networks: t
                .networks
                .iter()
                .map(|a| flotilla_api::model::TaskNetwork {
                    network: network_name(state, &a.network),
                    address: a.addr.to_string(),
                })
                .collect(),
            files: task_file_versions(t),
        })
        .collect();
    out.sort_by(|a, b| {
        (a.slot, &a.node_id, b.created_at, &a.id).cmp(&(b.slot, &b.node_id, a.created_at, &b.id))
    });
    out
}

/// The secrets and configs a task gets, with their versions.
fn task_file_versions(task: &Task) -> Vec<flotilla_api::model::TaskFileVersion> {
    use flotilla_types::SecretKind;
    [
        (SecretKind::Secret, &task.spec.secrets),
        (SecretKind::Config, &task.spec.configs),
    ]
    .into_iter()
    .flat_map(|(kind, refs)| {
        refs.iter()
            .map(move |r| flotilla_api::model::TaskFileVersion {
                kind,
                name: r.source.clone(),
                version: r.version,
                target: r.path_in_task(kind),
            })
    })
    .collect()
}

/// `flotilla list`: each current task's endpoints, with what its health
/// check says (a task without ports is listed with its node's address
/// and port 0, so that it is not hidden).
pub fn endpoint_views(state: &State, service: &Service) -> Vec<flotilla_api::model::EndpointView> {
    use flotilla_api::model::{EndpointStatus, EndpointView};
    use flotilla_types::{Health, TaskState};
    let mut out = Vec::new();
    for t in state
        .tasks_of(&service.id)
        .filter(|t| t.desired_state == DesiredState::Running)
    {
        let status = match (t.status.state, t.status.health) {
            (TaskState::Running, Some(Health::Healthy)) => EndpointStatus::Passing,
            (TaskState::Running, Some(Health::Starting)) => EndpointStatus::Warning,
            (TaskState::Running, None) => EndpointStatus::None,
            _ => EndpointStatus::Critical,
        };
        let node = t
            .node_id
            .as_ref()
            .and_then(|id| state.nodes.get(id))
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let endpoints = task_endpoints(state, t);
        let rows: Vec<(String, u16)> = if endpoints.is_empty() {
            vec![(String::new(), 0)]
        } else {
            endpoints
                .into_iter()
                .map(|e| (e.address, e.target))
                .collect()
        };
        for (address, target) in rows {
            out.push(EndpointView {
                name: service.spec.name.clone(),
                address,
                target,
                task_id: t.id.clone(),
                node: node.clone(),
                status,
                labels: service.spec.labels.clone(),
            });
        }
    }
    out.sort_by(|a, b| (&a.task_id, a.target).cmp(&(&b.task_id, b.target)));
    out
}

/// A task's ports at its node's address (the host part of the node's
/// cluster address).
fn task_endpoints(
    state: &State,
    task: &flotilla_types::Task,
) -> Vec<flotilla_api::model::TaskEndpoint> {
    let host = task
        .node_id
        .as_ref()
        .and_then(|id| state.nodes.get(id))
        .map(|n| match n.addr.parse::<std::net::SocketAddr>() {
            Ok(a) => a.ip().to_string(),
            Err(_) => n
                .addr
                .rsplit_once(':')
                .map_or(n.addr.clone(), |(h, _)| h.to_string()),
        })
        .unwrap_or_default();
    task.status
        .ports
        .iter()
        .map(|p| flotilla_api::model::TaskEndpoint {
            target: p.target,
            protocol: p.protocol,
            address: match host.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, p.host_port).to_string(),
                Err(_) => format!("{host}:{}", p.host_port),
            },
        })
        .collect()
}

/// Every node.
pub fn node_views(state: &State, self_id: Option<&str>, managers: &ManagerStatus) -> Vec<NodeView> {
    state
        .nodes
        .values()
        .map(|n| NodeView {
            id: n.id.clone(),
            name: n.name.clone(),
            hostname: n.hostname.clone(),
            role: n.role,
            // Without a quorum no leader updates the rows: what this
            // manager hears is the truth.
            status: if managers.no_quorum {
                match managers.heard_ms.get(&n.id) {
                    Some(ms) if *ms < managers.node_timeout.as_millis() as u64 => {
                        flotilla_types::NodeState::Ready
                    }
                    _ => flotilla_types::NodeState::Down,
                }
            } else {
                n.state
            },
            availability: n.availability,
            manager_status: (n.role == NodeRole::Manager).then(|| {
                if managers.leader_raft_id == Some(n.raft_id) {
                    Reachability::Leader
                } else if managers.reachable.contains(&n.raft_id) {
                    Reachability::Reachable
                } else if managers.behind.contains_key(&n.raft_id) {
                    Reachability::CatchingUp
                } else {
                    Reachability::Unreachable
                }
            }),
            addr: n.addr.clone(),
            api_addr: n.api_addr.clone(),
            version: n.version.clone(),
            labels: n.labels.clone(),
            is_self: Some(n.id.as_str()) == self_id,
            resources: n.resources,
            overlay_error: n.overlay_error.clone(),
            engine_labels: n.engine_labels.clone(),
            last_heard_ms: managers.heard_ms.get(&n.id).copied(),
            behind: managers.behind.get(&n.raft_id).copied(),
        })
        .collect()
}

/// Inputs of [`info`] that do not come from the state.
#[derive(Debug, Clone)]
pub struct LocalFacts {
    pub node_id: Option<String>,
    pub node_name: String,
    pub is_leader: bool,
    pub version: String,
    pub data_dir: String,
}

/// The managers of the store that `managers` counts reachable, and how
/// many managers the store has.
fn managers_reachable(state: &State, managers: &ManagerStatus) -> (u64, u64) {
    let ids: Vec<u64> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager)
        .map(|n| n.raft_id)
        .collect();
    let reachable = ids
        .iter()
        .filter(|id| managers.reachable.contains(id))
        .count();
    (reachable as u64, ids.len() as u64)
}

/// The NO QUORUM line `info` and `node ls` lead with, when the managers
/// this one hears are not a quorum.
pub fn no_quorum_warning(state: &State, managers: &ManagerStatus) -> Option<String> {
    (state.cluster.is_some() && managers.no_quorum).then(|| {
        let (reachable, count) = managers_reachable(state, managers);
        crate::contact::no_quorum_warning(reachable, count)
    })
}

/// `flotilla info`.
pub fn info(state: &State, local: &LocalFacts, managers: &ManagerStatus) -> Info {
    let me = local.node_id.as_ref().and_then(|id| state.nodes.get(id));
    let (reachable, count) = managers_reachable(state, managers);
    let tolerance = fault_tolerance(count);
    let warning = no_quorum_warning(state, managers).or_else(|| {
        (state.cluster.is_some() && tolerance == 0).then(|| {
            format!(
                "the cluster tolerates no manager failure with {count} manager{}: losing {} stops all changes; run 3 or 5 managers",
                if count == 1 { "" } else { "s" },
                if count == 1 { "it" } else { "one" }
            )
        })
    });
    let mut unreachable_managers: Vec<flotilla_api::model::UnreachableManager> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && !managers.reachable.contains(&n.raft_id))
        .map(|n| flotilla_api::model::UnreachableManager {
            name: n.name.clone(),
            addr: n.addr.clone(),
            last_heard_ms: managers.heard_ms.get(&n.id).copied(),
        })
        .collect();
    unreachable_managers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut tasks = BTreeMap::new();
    for t in state
        .tasks
        .values()
        .filter(|t| t.desired_state == DesiredState::Running)
    {
        *tasks
            .entry(t.status.state.as_str().to_string())
            .or_insert(0) += 1;
    }
    let leader = managers.leader_raft_id.and_then(|id| {
        state
            .nodes
            .values()
            .find(|n| n.raft_id == id && n.role == NodeRole::Manager)
            .map(|n| n.name.clone())
    });
    Info {
        cluster_id: state.cluster.as_ref().map(|c| c.id.clone()),
        node_id: local.node_id.clone(),
        node_name: me
            .map(|n| n.name.clone())
            .unwrap_or_else(|| local.node_name.clone()),
        role: me.map(|n| n.role),
        is_leader: local.is_leader,
        leader,
        managers: count,
        managers_reachable: reachable,
        fault_tolerance: tolerance,
        warning,
        nodes: state.nodes.len() as u64,
        services: state.services.len() as u64,
        tasks,
        version: local.version.clone(),
        data_dir: local.data_dir.clone(),
        autolock: state.cluster.as_ref().is_some_and(|c| c.autolock.is_some()),
        locked: false,
        quorum: state.cluster.is_some() && !managers.no_quorum,
        unreachable_managers,
        backups: state
            .cluster
            .as_ref()
            .and_then(|c| c.backup_schedule.as_ref())
            .map(|s| {
                format!(
                    "every {}, keeping {} in {} on the leader",
                    flotilla_types::format_duration_ms(s.every_ms),
                    s.keep,
                    s.dir
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_heard_and_caught_up_voters_are_reachable() {
        use flotilla_raft::node::Progress;
        let on_leader = Progress {
            voters: vec![1, 2, 3],
            last_log_index: 5_000,
            matched: Some([(2, 4_950), (3, 10), (4, 5_000)].into_iter().collect()),
        };
        // 3 still receives the state; 4 is a learner, not a voter.
        assert_eq!(reachable_managers(&on_leader, 1, &[2, 3, 4]), vec![1, 2]);
        // 2 is caught up but not heard lately.
        assert_eq!(reachable_managers(&on_leader, 1, &[3]), vec![1]);
        let on_follower = Progress {
            voters: vec![1, 2, 3],
            last_log_index: 5_000,
            matched: None,
        };
        assert_eq!(
            reachable_managers(&on_follower, 2, &[1, 3, 4]),
            vec![1, 2, 3]
        );
        assert_eq!(reachable_managers(&on_follower, 2, &[]), vec![2]);
    }

    #[test]
    fn a_heard_member_far_behind_is_catching_up_with_its_lag() {
        use flotilla_raft::node::Progress;
        let on_leader = Progress {
            voters: vec![1, 2, 3],
            last_log_index: 5_000,
            matched: Some([(2, 4_950), (3, 10), (4, 700)].into_iter().collect()),
        };
        let behind = catching_up(&on_leader, &[2, 3, 4]);
        assert_eq!(behind.get(&3), Some(&4_990));
        assert_eq!(behind.get(&4), Some(&4_300), "a learner too");
        assert_eq!(behind.get(&2), None, "within the lag");
        // Not heard: unreachable, not catching up.
        assert!(catching_up(&on_leader, &[2]).is_empty());
        let on_follower = Progress {
            matched: None,
            ..on_leader
        };
        assert!(catching_up(&on_follower, &[2, 3, 4]).is_empty());
    }

    #[test]
    fn fault_tolerance_follows_quorum() {
        assert_eq!(fault_tolerance(0), 0);
        assert_eq!(fault_tolerance(1), 0);
        assert_eq!(fault_tolerance(2), 0);
        assert_eq!(fault_tolerance(3), 1);
        assert_eq!(fault_tolerance(4), 1);
        assert_eq!(fault_tolerance(5), 2);
        assert_eq!(fault_tolerance(7), 3);
    }
}
