//! The routing mesh's decisions: which published port each service gets
//! ([`allocate`], the allocator), and which tasks are in rotation behind
//! each port ([`mesh_table`], what every node's mesh forwards by).
//!
//! Both are pure functions of the store. The allocator runs on the leader
//! only (never inside `apply`: a port drawn there would be a decision the
//! state machine makes, and decisions are the leader's); the table is
//! computed by the leader's dispatcher for every agent session.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use flotilla_store::{Command, State};
use flotilla_types::mesh::{Backend, MeshPort, MeshService, MeshTable};
use flotilla_types::{
    carry_over, DesiredState, NodeState, Protocol, PublishMode, PublishedPort, Service,
    DYNAMIC_PORTS,
};

/// What the allocator proposes: for every service with a port published
/// without a number and not yet allocated, the lowest free port of
/// [`DYNAMIC_PORTS`], and why a service got none (the range is used up).
#[derive(Debug, Default, PartialEq)]
pub struct Allocation {
    pub commands: Vec<Command>,
    /// Services left without a port: name and reason.
    pub exhausted: Vec<(String, String)>,
}

/// Picks the published ports that services still lack. Each choice goes
/// into [`Command::AllocatePorts`] at the service's version, so a spec
/// changed meanwhile drops it and the next round decides again.
pub fn allocate(state: &State) -> Allocation {
    // Fixed ports are in `published` from the write of their spec on
    // (the store records them in `apply`), so this is every port taken.
    let mut used: BTreeSet<(u16, Protocol)> = state
        .services
        .values()
        .flat_map(|s| s.published.iter().map(PublishedPort::key))
        .collect();
    let mut out = Allocation::default();
    for service in state.services.values() {
        let ports = &service.spec.task.ports;
        let wanted_ports: Vec<_> = ports.iter().filter(|p| p.is_published()).collect();
        if wanted_ports.is_empty() || service.published.len() == wanted_ports.len() {
            continue;
        }
        let mut chosen = Vec::with_capacity(wanted_ports.len());
        let mut short = false;
        for (wanted, had) in wanted_ports
            .iter()
            .zip(carry_over(ports, &service.published))
        {
            if let Some(had) = had {
                chosen.push(had);
                continue;
            }
            match DYNAMIC_PORTS
                .clone()
                .find(|p| !used.contains(&(*p, wanted.protocol)))
            {
                Some(published) => {
                    used.insert((published, wanted.protocol));
                    chosen.push(PublishedPort {
                        published,
                        target: wanted.target,
                        protocol: wanted.protocol,
                        mode: wanted.mode,
                    });
                }
                None => {
                    short = true;
                    break;
                }
            }
        }
        if short {
            out.exhausted.push((
                service.spec.name.clone(),
                format!(
                    "every port of {}-{} is published",
                    DYNAMIC_PORTS.start(),
                    DYNAMIC_PORTS.end()
                ),
            ));
            continue;
        }
        if chosen != service.published {
            out.commands.push(Command::AllocatePorts {
                id: service.id.clone(),
                version: service.version,
                ports: chosen,
            });
        }
    }
    out
}

/// The mesh's table: every ingress port the services publish, each with
/// the tasks in rotation behind it. A task is in rotation while it is
/// desired running (so a task the cluster is about to stop leaves before
/// it is sent SIGTERM), is ready (running and, if checked, healthy), runs
/// on a node that is ready, and reported where its target port answers.
pub fn mesh_table(state: &State) -> MeshTable {
    let mut services: Vec<&Service> = state
        .services
        .values()
        .filter(|s| s.published.iter().any(|p| p.mode == PublishMode::Ingress))
        .collect();
    services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let mut table = MeshTable::default();
    for service in services {
        let tasks: Vec<(&str, &str, IpAddr, &flotilla_types::Task)> = state
            .tasks
            .values()
            .filter(|t| t.service_id == service.id)
            .filter(|t| t.desired_state == DesiredState::Running && t.is_ready())
            .filter_map(|t| {
                let node_id = t.node_id.as_deref()?;
                let node = state.nodes.get(node_id)?;
                if node.state != NodeState::Ready {
                    return None;
                }
                let ip = node.ip()?;
                Some((t.id.as_str(), node_id, ip, t))
            })
            .collect();
        let ports = service
            .published
            .iter()
            .filter(|p| p.mode == PublishMode::Ingress)
            .map(|p| {
                let mut backends: Vec<Backend> = tasks
                    .iter()
                    .filter_map(|(task_id, node_id, ip, task)| {
                        let port = task
                            .status
                            .ports
                            .iter()
                            .find(|tp| tp.target == p.target && tp.protocol == p.protocol)?;
                        Some(Backend {
                            task_id: task_id.to_string(),
                            node_id: node_id.to_string(),
                            addr: SocketAddr::new(*ip, port.host_port),
                        })
                    })
                    .collect();
                backends.sort_by(|a, b| a.task_id.cmp(&b.task_id));
                MeshPort {
                    published: p.published,
                    target: p.target,
                    protocol: p.protocol,
                    backends,
                }
            })
            .collect();
        table.services.push(MeshService {
            service_id: service.id.clone(),
            service_name: service.spec.name.clone(),
            options: service.spec.mesh,
            ports,
        });
    }
    table
}

/// The address part of a node's cluster address (`IP:PORT`); a node that
/// gave a name rather than an address is not reachable by the mesh.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use flotilla_types::{Health, PortConfig, TaskPort, TaskState};

    fn published(published: u16, target: u16) -> PublishedPort {
        PublishedPort {
            published,
            target,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
        }
    }

    fn with_ports(id: &str, ports: &[PortConfig]) -> Service {
        let mut s = replicated(id, 2);
        s.spec.task.ports = ports.to_vec();
        s
    }

    #[test]
    fn ports_without_a_number_get_the_lowest_free_one() {
        let mut state = cluster(&["n1"]);
        let mut web = with_ports(
            "web",
            &[PortConfig {
                published: Some(30000),
                ..PortConfig::target(80)
            }],
        );
        web.published = vec![published(30000, 80)];
        state.services.insert("web".into(), web);
        state.services.insert(
            "api".into(),
            with_ports("api", &[PortConfig::target(8080), PortConfig::target(8081)]),
        );
        let a = allocate(&state);
        assert_eq!(
            a.commands,
            vec![Command::AllocatePorts {
                id: "api".into(),
                version: 1,
                ports: vec![published(30001, 8080), published(30002, 8081)],
            }]
        );
        // Allocated: nothing more to do.
        state.services.get_mut("api").expect("api").published =
            vec![published(30001, 8080), published(30002, 8081)];
        assert_eq!(allocate(&state), Allocation::default());
    }

    #[test]
    fn a_used_up_range_is_said() {
        let mut state = cluster(&["n1"]);
        let mut hog = with_ports("hog", &[]);
        hog.published = DYNAMIC_PORTS.map(|p| published(p, 80)).collect();
        hog.spec.task.ports = hog
            .published
            .iter()
            .map(|p| PortConfig {
                published: Some(p.published),
                ..PortConfig::target(80)
            })
            .collect();
        state.services.insert("hog".into(), hog);
        state
            .services
            .insert("api".into(), with_ports("api", &[PortConfig::target(80)]));
        let a = allocate(&state);
        assert!(a.commands.is_empty());
        assert_eq!(a.exhausted.len(), 1);
        assert!(
            a.exhausted[0].1.contains("30000-32767"),
            "{:?}",
            a.exhausted
        );
    }

    fn running(
        id: &str,
        node: &str,
        health: Option<Health>,
        host_port: u16,
    ) -> flotilla_types::Task {
        let mut t = task(id, "web", 1, 1, TaskState::Running);
        t.node_id = Some(node.into());
        t.status.health = health;
        t.status.ports = vec![TaskPort {
            target: 80,
            protocol: Protocol::Tcp,
            host_port,
        }];
        t
    }

    /// Only ready tasks desired running on ready nodes are in rotation.
    #[test]
    fn the_table_holds_the_ready_tasks_only() {
        let mut state = cluster(&["n1", "n2", "n3"]);
        for (id, ip) in [("n1", "10.0.0.1"), ("n2", "10.0.0.2"), ("n3", "10.0.0.3")] {
            state.nodes.get_mut(id).expect("node").addr = format!("{ip}:4280");
        }
        state.nodes.get_mut("n3").expect("n3").state = NodeState::Down;
        let mut web = with_ports("web", &[PortConfig::target(80)]);
        web.published = vec![published(30000, 80)];
        state.services.insert("web".into(), web);
        let tasks = [
            running("t1", "n1", None, 41001),
            running("t2", "n2", Some(Health::Healthy), 41002),
            running("t3", "n2", Some(Health::Starting), 41003),
            running("t4", "n3", None, 41004),
            {
                let mut t = running("t5", "n1", None, 41005);
                t.desired_state = DesiredState::Shutdown;
                t
            },
        ];
        for t in tasks {
            state.tasks.insert(t.id.clone(), t);
        }
        let table = mesh_table(&state);
        assert_eq!(table.services.len(), 1);
        let port = &table.services[0].ports[0];
        assert_eq!(port.published, 30000);
        let backends: Vec<(String, String)> = port
            .backends
            .iter()
            .map(|b| (b.task_id.clone(), b.addr.to_string()))
            .collect();
        assert_eq!(
            backends,
            [
                ("t1".to_string(), "10.0.0.1:41001".to_string()),
                ("t2".to_string(), "10.0.0.2:41002".to_string())
            ]
        );
    }
}
