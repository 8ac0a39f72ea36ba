//! The node ports of tasks: a process task shares the node's network, so
//! each of its target ports gets a free port of the node
//! ([`TASK_PORTS`]), which it learns from its environment (`PORT` for the
//! first, `FLOTILLA_PORT_<TARGET>` for each) and the mesh learns from its
//! status. A container has its own network; the engine maps its target
//! ports to node ports it picks.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::Mutex;

use flotilla_types::{HealthCheck, HealthTest, PortConfig, Protocol, PublishMode, TaskPort};

use crate::driver::DriverError;

/// Node ports for process tasks: below the published range
/// ([`flotilla_types::DYNAMIC_PORTS`], 30000-32767) and below Linux's
/// default ephemeral range (32768-60999), so that neither the mesh's
/// listeners nor outgoing connections take a task's port. Nomad's dynamic
/// ports default to 20000-32000 for the same reason.
pub const TASK_PORTS: RangeInclusive<u16> = 20000..=29999;

/// The ports handed to this agent's live process tasks.
#[derive(Debug, Default)]
pub struct PortPool {
    held: Mutex<HashMap<String, Vec<u16>>>,
}

impl PortPool {
    /// A free node port for each of `wanted`'s target ports (one per
    /// distinct target and protocol), held for `task_id` until
    /// [`PortPool::release`]. Free: no other task of this agent holds it and
    /// it can be bound now.
    pub fn take(&self, task_id: &str, wanted: &[PortConfig]) -> Result<Vec<TaskPort>, DriverError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken: Vec<u16> = held.values().flatten().copied().collect();
        let mut ports = Vec::new();
        let span = u32::from(TASK_PORTS.end() - TASK_PORTS.start()) + 1;
        // Start at a spot that depends on the task, so that tasks restarted
        // one after another do not all probe from the bottom.
        let start = task_id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % span;
        for want in wanted {
            if ports
                .iter()
                .any(|p: &TaskPort| p.target == want.target && p.protocol == want.protocol)
            {
                continue;
            }
            // A host-mode port with a number is that port of the node,
            // straight to the task; the scheduler keeps two tasks of the
            // service off one node.
            if let (PublishMode::Host, Some(published)) = (want.mode, want.published) {
                if taken.contains(&published) || !bindable(published, want.protocol) {
                    return Err(DriverError::Other(format!(
                        "host-mode port {published}/{} is in use on this node",
                        want.protocol.as_str()
                    )));
                }
                taken.push(published);
                ports.push(TaskPort {
                    target: want.target,
                    protocol: want.protocol,
                    host_port: published,
                });
                continue;
            }
            let found = (0..span)
                .map(|i| TASK_PORTS.start() + ((start + i) % span) as u16)
                .find(|port| !taken.contains(port) && bindable(*port, want.protocol));
            let Some(host_port) = found else {
                return Err(DriverError::Other(format!(
                    "no free node port in {}-{} for target port {}",
                    TASK_PORTS.start(),
                    TASK_PORTS.end(),
                    want.target
                )));
            };
            taken.push(host_port);
            ports.push(TaskPort {
                target: want.target,
                protocol: want.protocol,
                host_port,
            });
        }
        held.insert(
            task_id.to_string(),
            ports.iter().map(|p| p.host_port).collect(),
        );
        Ok(ports)
    }

    /// Holds the ports of a task adopted from an earlier agent.
    pub fn hold(&self, task_id: &str, ports: &[TaskPort]) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.insert(
            task_id.to_string(),
            ports.iter().map(|p| p.host_port).collect(),
        );
    }

    /// Frees the ports of a task that ended.
    pub fn release(&self, task_id: &str) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(task_id);
    }
}

fn bindable(port: u16, protocol: Protocol) -> bool {
    let addr = (Ipv4Addr::UNSPECIFIED, port);
    match protocol {
        Protocol::Tcp => TcpListener::bind(addr).is_ok(),
        Protocol::Udp => UdpSocket::bind(addr).is_ok(),
    }
}

/// A container's target ports, for the engine to map: a host-mode port
/// with a number onto that node port, the others onto one the engine
/// chooses (0).
pub fn engine_chooses(wanted: &[PortConfig]) -> Vec<TaskPort> {
    let mut ports: Vec<TaskPort> = Vec::new();
    for want in wanted {
        if !ports
            .iter()
            .any(|p| p.target == want.target && p.protocol == want.protocol)
        {
            let host_port = match (want.mode, want.published) {
                (PublishMode::Host, Some(published)) => published,
                _ => 0,
            };
            ports.push(TaskPort {
                target: want.target,
                protocol: want.protocol,
                host_port,
            });
        }
    }
    ports
}

/// `PORT` (the first port) and `FLOTILLA_PORT_<TARGET>` (each), which win
/// over the template's own: the task must listen where the mesh sends.
pub fn add_env(env: &mut BTreeMap<String, String>, ports: &[TaskPort]) {
    if let Some(first) = ports.first() {
        env.insert("PORT".into(), first.host_port.to_string());
    }
    for p in ports {
        let name = match p.protocol {
            Protocol::Tcp => format!("FLOTILLA_PORT_{}", p.target),
            Protocol::Udp => format!("FLOTILLA_PORT_{}_UDP", p.target),
        };
        env.insert(name, p.host_port.to_string());
    }
}

/// A check of a process task's target port probes the node port it was
/// given instead.
pub fn probe_node_port(mut check: HealthCheck, ports: &[TaskPort]) -> HealthCheck {
    let node_port = |target: u16| {
        ports
            .iter()
            .find(|p| p.target == target && p.protocol == Protocol::Tcp)
            .map_or(target, |p| p.host_port)
    };
    match &mut check.test {
        HealthTest::Http { port, .. } | HealthTest::Tcp { port } => *port = node_port(*port),
        _ => {}
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tasks_never_get_the_same_port_and_a_released_one_comes_back() {
        let pool = PortPool::default();
        let wanted = [
            PortConfig::target(80),
            PortConfig::target(81),
            PortConfig::target(80),
        ];
        let a = pool.take("a", &wanted).expect("a");
        assert_eq!(a.len(), 2, "one node port per target: {a:?}");
        let b = pool.take("a-twin", &wanted).expect("b");
        for p in &b {
            assert!(TASK_PORTS.contains(&p.host_port));
            assert!(a.iter().all(|q| q.host_port != p.host_port), "{a:?} {b:?}");
        }
        // The same task probes from the same spot, and a port another
        // program holds is passed over.
        pool.release("a");
        let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, a[1].host_port)).expect("bind");
        let again = pool.take("a", &wanted).expect("again");
        assert_eq!(again[0], a[0]);
        assert_ne!(again[1].host_port, a[1].host_port, "{again:?}");
        drop(busy);
    }

    #[test]
    fn a_host_mode_port_is_the_published_port_of_the_node() {
        let pool = PortPool::default();
        let free = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        let port = free.local_addr().expect("addr").port();
        drop(free);
        let host = PortConfig {
            published: Some(port),
            mode: PublishMode::Host,
            ..PortConfig::target(80)
        };
        let got = pool.take("a", &[host]).expect("free");
        assert_eq!(got[0].host_port, port);
        // Held by another task of this agent, or by another program.
        let err = pool.take("b", &[host]).expect_err("taken");
        assert!(err.to_string().contains("is in use on this node"), "{err}");
        pool.release("a");
        let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind");
        assert!(pool.take("b", &[host]).is_err());
        drop(busy);
        assert_eq!(engine_chooses(&[host])[0].host_port, port);
        assert_eq!(engine_chooses(&[PortConfig::target(80)])[0].host_port, 0);
    }

    #[test]
    fn the_environment_names_each_port() {
        let mut env = BTreeMap::from([("PORT".to_string(), "1".to_string())]);
        let ports = [
            TaskPort {
                target: 8080,
                protocol: Protocol::Tcp,
                host_port: 20001,
            },
            TaskPort {
                target: 53,
                protocol: Protocol::Udp,
                host_port: 20002,
            },
        ];
        add_env(&mut env, &ports);
        assert_eq!(env["PORT"], "20001");
        assert_eq!(env["FLOTILLA_PORT_8080"], "20001");
        assert_eq!(env["FLOTILLA_PORT_53_UDP"], "20002");
    }

    #[test]
    fn checks_of_a_target_port_probe_its_node_port() {
        let ports = [TaskPort {
            target: 8080,
            protocol: Protocol::Tcp,
            host_port: 20001,
        }];
        let check = HealthCheck::new(HealthTest::Http {
            port: 8080,
            path: "/".into(),
        });
        let probed = probe_node_port(check, &ports);
        assert_eq!(
            probed.test,
            HealthTest::Http {
                port: 20001,
                path: "/".into()
            }
        );
        let other = HealthCheck::new(HealthTest::Tcp { port: 9000 });
        assert_eq!(probe_node_port(other.clone(), &ports), other);
    }
}
