//! A process task's own network namespace, on a node that wires networks.
//!
//! A process task whose service is on networks runs in a namespace of its
//! own (`flt-<task id>`, under `/run/netns`), with one interface per
//! network at the address the leader gave it ([`crate::wiring::attach_task`]),
//! and a mount namespace in which `/etc/resolv.conf` names the node's
//! resolver at the gateway of its first network, so `getent hosts web`
//! and `wget http://web:8080/` work unchanged. It listens on its target
//! ports at its own address (`PORT` is the first target port, as in a
//! container); the node port the agent gave each target port is forwarded
//! to it ([`crate::netfilter`]), so the mesh and `service ps` keep their
//! node address and port.
//!
//! [`Networking`] is the agent's side: it waits until the node has wired
//! the task's networks (the wiring loop publishes what it holds), makes
//! the namespace, tells the wiring loop what to forward and which virtual
//! addresses the task must reach, and removes the namespace when the task
//! ends. The namespace outlives an agent restart, as the task does; an
//! adopted task is registered again from its record.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_types::network::{NetworkAddress, NetworkTable};
use flotilla_types::{Task, TaskPort};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{EngineNetwork, NetnsHandle};
use crate::netfilter::{Forward, WiredNetwork};
use crate::wiring::{attach_task, Attachment, Request};

/// How long a task waits for the node to wire its networks.
pub const WIRE_WAIT: Duration = Duration::from_secs(15);

/// Why a task's namespace could not be made.
#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("network {0} is not in this node's network table")]
    UnknownNetwork(String),
    #[error("the task's networks are not wired on this node after {}s", WIRE_WAIT.as_secs())]
    NotWired,
    #[error("cannot make the task's network namespace: {0}")]
    Attach(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The namespace of task `task_id`.
pub fn netns_name(task_id: &str) -> String {
    format!("flt-{task_id}")
}

/// Where `ip netns` keeps the namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// The node end of the task's veth on its network `index` (at most 14
/// bytes, so that its peer's temporary name, one more, fits Linux's 15).
pub fn host_if(task_id: &str, index: usize) -> String {
    let short: String = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    format!("fv{short}{}", index % 10)
}

/// A task of this node in its own namespace, as the wiring loop needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTask {
    /// Its namespace's name under `/run/netns`; none while a container's
    /// networks are held before it starts.
    pub netns: Option<String>,
    /// The IDs of its networks (for the virtual addresses it reaches).
    pub networks: Vec<String>,
    /// Its node ports, forwarded to its address.
    pub forwards: Vec<Forward>,
    /// The networks it holds on this node: kept wired while it is
    /// registered.
    pub held: Vec<WiredNetwork>,
}

/// What the process driver needs to run a task in its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNetns {
    pub name: String,
    pub path: PathBuf,
    /// Bound over `/etc/resolv.conf` in the task's mount namespace.
    pub resolv_conf: PathBuf,
    /// Its address on its first network.
    pub addr: Ipv4Addr,
    /// The IDs of its networks.
    pub networks: Vec<String>,
}

/// The resolver configuration of a task whose first network has
/// `gateway`: the node's resolver answers there (and relays the names it
/// does not know to the node's own resolvers). The template's `dns`
/// servers follow it, so a resolver asks them only when the node's does
/// not answer (and reads at most three servers in all); its `dns_search`
/// domains are the search list.
pub fn resolv_conf(gateway: Ipv4Addr, dns: &[String], search: &[String]) -> String {
    let mut text = format!("# written by flotilla: the node's resolver\nnameserver {gateway}\n");
    for server in dns {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text.push_str("options ndots:0\n");
    text
}

/// The node ports of a task at `addr`, as forwards.
pub fn forwards(ports: &[TaskPort], addr: Ipv4Addr) -> Vec<Forward> {
    ports
        .iter()
        .filter(|p| p.host_port != 0)
        .map(|p| Forward {
            protocol: p.protocol,
            node_port: p.host_port,
            addr,
            target: p.target,
        })
        .collect()
}

/// How a task joins each of its networks: the first network that is not
/// internal carries its default route; the others only their subnets.
pub fn attachments(
    table: &NetworkTable,
    networks: &[NetworkAddress],
) -> Result<Vec<Attachment>, NetnsError> {
    let mut out = Vec::new();
    let mut routed = false;
    for address in networks {
        let entry = table
            .networks
            .iter()
            .find(|n| n.network_id == address.network)
            .ok_or_else(|| NetnsError::UnknownNetwork(address.network.clone()))?;
        let route = !entry.internal && !routed;
        routed |= route;
        out.push(Attachment {
            vni: entry.vni,
            subnet: entry.subnet,
            addr: address.addr,
            no_route: !route,
            mtu: if entry.encrypted {
                crate::sealed::SEALED_MTU
            } else {
                crate::wiring::OVERLAY_MTU
            },
        });
    }
    Ok(out)
}

/// The networks of `networks` (IDs) that the table knows, as a task
/// holds them on this node.
pub fn held(table: &NetworkTable, networks: &[String]) -> Vec<WiredNetwork> {
    networks
        .iter()
        .filter_map(|id| table.networks.iter().find(|n| &n.network_id == id))
        .map(|n| WiredNetwork {
            vni: n.vni,
            subnet: n.subnet,
            internal: n.internal,
            encrypted: n.encrypted,
        })
        .collect()
}

/// The engine network of each network of a container task, in order.
pub fn engine_networks(
    table: &NetworkTable,
    networks: &[NetworkAddress],
) -> Result<Vec<EngineNetwork>, NetnsError> {
    networks
        .iter()
        .map(|address| {
            let entry = table
                .networks
                .iter()
                .find(|n| n.network_id == address.network)
                .ok_or_else(|| NetnsError::UnknownNetwork(address.network.clone()))?;
            Ok(EngineNetwork {
                name: format!("fl-{}", entry.network_id),
                network_name: entry.name.clone(),
                bridge: crate::wiring::bridge_name(entry.vni),
                subnet: entry.subnet,
                internal: entry.internal,
                mtu: if entry.encrypted {
                    crate::sealed::SEALED_MTU
                } else {
                    crate::wiring::OVERLAY_MTU
                },
                addr: address.addr,
            })
        })
        .collect()
}

/// The IDs of `task`'s networks, in its order.
fn network_ids(task: &Task) -> Vec<String> {
    task.networks.iter().map(|n| n.network.clone()).collect()
}

/// Writes the resolver configuration of `task`, whose first network has
/// `gateway`, into `dir`; returns its path.
fn write_resolv_conf(dir: &Path, gateway: Ipv4Addr, task: &Task) -> Result<PathBuf, NetnsError> {
    let path = dir.join("resolv.conf");
    let text = resolv_conf(gateway, &task.spec.dns, &task.spec.dns_search);
    std::fs::write(&path, text).map_err(|source| NetnsError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// The agent's handle on the node's wiring loop.
pub struct Networking {
    table: watch::Receiver<NetworkTable>,
    requests: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for Networking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networking").finish_non_exhaustive()
    }
}

impl Networking {
    /// `table` is the node's network table; `requests` go to its wiring
    /// loop ([`crate::wiring::follow`]).
    pub fn new(
        table: watch::Receiver<NetworkTable>,
        requests: mpsc::UnboundedSender<Request>,
    ) -> Networking {
        Networking { table, requests }
    }

    /// Has the wiring loop make the namespace of `task` (wiring its
    /// networks first if the node holds none of them yet), writes its
    /// resolver configuration under `dir` and registers its node ports.
    /// Nothing is left behind when it fails.
    pub async fn attach(
        &self,
        task: &Task,
        dir: &Path,
        ports: &[TaskPort],
    ) -> Result<TaskNetns, NetnsError> {
        let networks = network_ids(task);
        let (plan, held) = {
            let table = self.table.borrow();
            (
                attachments(&table, &task.networks)?,
                held(&table, &networks),
            )
        };
        let Some(first) = plan.first().cloned() else {
            return Err(NetnsError::Attach("the task is on no network".into()));
        };
        let resolv = write_resolv_conf(dir, first.subnet.gateway(), task)?;
        let name = netns_name(&task.id);
        let mut commands = Vec::new();
        for (i, a) in plan.iter().enumerate() {
            commands.extend(attach_task(&name, i, &host_if(&task.id, i), a));
        }
        let local = LocalTask {
            netns: Some(name.clone()),
            networks: networks.clone(),
            forwards: forwards(ports, first.addr),
            held,
        };
        self.ask(&task.id, &name, local, commands).await?;
        Ok(TaskNetns {
            path: netns_path(&name),
            name,
            resolv_conf: resolv,
            addr: first.addr,
            networks,
        })
    }

    /// Has the wiring loop register `task` (and run `commands` once its
    /// networks are wired), and waits for its answer.
    async fn ask(
        &self,
        task_id: &str,
        name: &str,
        task: LocalTask,
        commands: Vec<Vec<String>>,
    ) -> Result<(), NetnsError> {
        let (reply, replied) = oneshot::channel();
        let request = Request::Attach {
            task_id: task_id.to_string(),
            task,
            commands,
            reply,
        };
        if self.requests.send(request).is_err() {
            return Err(NetnsError::Attach(
                "the node's wiring loop has stopped".into(),
            ));
        }
        match tokio::time::timeout(WIRE_WAIT, replied).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(NetnsError::Attach(e)),
            Ok(Err(_)) => Err(NetnsError::Attach(
                "the node's wiring loop dropped the request".into(),
            )),
            Err(_) => {
                // It may still come: the namespace then goes with the task.
                self.forget(task_id, name);
                Err(NetnsError::NotWired)
            }
        }
    }

    /// Has the wiring loop wire the networks of a container task (and hold
    /// them while it runs); returns them as its engine gets them.
    /// Its resolver configuration is written under `dir`, to be bound
    /// over the container's `/etc/resolv.conf` (the engine's own resolver
    /// would relay from the node's address, which scopes no task).
    pub async fn hold(
        &self,
        task: &Task,
        dir: &Path,
    ) -> Result<(Vec<EngineNetwork>, PathBuf), NetnsError> {
        let networks = network_ids(task);
        let (engine, held) = {
            let table = self.table.borrow();
            (
                engine_networks(&table, &task.networks)?,
                held(&table, &networks),
            )
        };
        let Some(first) = engine.first() else {
            return Err(NetnsError::Attach("the task is on no network".into()));
        };
        let resolv = write_resolv_conf(dir, first.subnet.gateway(), task)?;
        let local = LocalTask {
            netns: None,
            networks,
            forwards: Vec::new(),
            held,
        };
        self.ask(&task.id, &netns_name(&task.id), local, Vec::new())
            .await?;
        Ok((engine, resolv))
    }

    /// Names the namespace of the started container `pid` of `task` (`ip
    /// netns attach`), so that the wiring loop loads its virtual
    /// addresses there; returns what its record keeps.
    pub async fn enter(&self, task: &Task, pid: u32) -> Result<NetnsHandle, NetnsError> {
        let name = netns_name(&task.id);
        let networks = network_ids(task);
        let held = held(&self.table.borrow(), &networks);
        let addr = task
            .networks
            .first()
            .map(|n| n.addr)
            .ok_or_else(|| NetnsError::Attach("the task is on no network".into()))?;
        let local = LocalTask {
            netns: Some(name.clone()),
            networks: networks.clone(),
            forwards: Vec::new(),
            held,
        };
        let attach = vec![vec![
            "ip".into(),
            "netns".into(),
            "attach".into(),
            name.clone(),
            pid.to_string(),
        ]];
        self.ask(&task.id, &name, local, attach).await?;
        Ok(NetnsHandle {
            name,
            addr,
            networks,
        })
    }

    /// Registers a task that runs in namespace `netns` (at `addr`), as an
    /// adopted one does.
    pub fn adopt(
        &self,
        task_id: &str,
        netns: &str,
        addr: Ipv4Addr,
        networks: Vec<String>,
        ports: &[TaskPort],
    ) {
        let held = held(&self.table.borrow(), &networks);
        let _ = self.requests.send(Request::Adopt {
            task_id: task_id.to_string(),
            task: LocalTask {
                netns: Some(netns.to_string()),
                networks,
                forwards: forwards(ports, addr),
                held,
            },
        });
    }

    fn forget(&self, task_id: &str, netns: &str) {
        let (reply, _) = oneshot::channel();
        let _ = self.requests.send(Request::Detach {
            task_id: task_id.to_string(),
            netns: netns.to_string(),
            reply,
        });
    }

    /// Forgets the task and removes its namespace (its veths go with it);
    /// waits at most [`WIRE_WAIT`] for the wiring loop to have done so.
    pub async fn detach(&self, task_id: &str, netns: &str) {
        let (reply, done) = oneshot::channel();
        let sent = self.requests.send(Request::Detach {
            task_id: task_id.to_string(),
            netns: netns.to_string(),
            reply,
        });
        if sent.is_ok() && tokio::time::timeout(WIRE_WAIT, done).await.is_err() {
            tracing::warn!(
                task_id,
                netns,
                "the wiring loop did not remove the task's namespace in time"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::network::NetworkEntry;
    use flotilla_types::port::Protocol;

    fn entry(id: &str, vni: u32, subnet: &str, internal: bool) -> NetworkEntry {
        NetworkEntry {
            internal,
            ..crate::fixtures::network(id, vni, subnet)
        }
    }

    #[test]
    fn the_first_network_with_a_way_out_carries_the_default_route() {
        let table = NetworkTable {
            networks: vec![
                entry("back", 4097, "10.0.8.0/24", true),
                entry("front", 4096, "10.0.9.0/24", false),
            ],
        };
        let mut networks = vec![
            NetworkAddress {
                network: "back".into(),
                addr: Ipv4Addr::new(10, 0, 8, 5),
            },
            NetworkAddress {
                network: "front".into(),
                addr: Ipv4Addr::new(10, 0, 9, 5),
            },
        ];
        let plan = attachments(&table, &networks).expect("plan");
        assert_eq!(
            plan.iter().map(|a| a.no_route).collect::<Vec<_>>(),
            [true, false]
        );
        networks[1].network = "gone".into();
        assert_eq!(
            attachments(&table, &networks).unwrap_err().to_string(),
            "network gone is not in this node's network table"
        );
    }

    #[test]
    fn names_fit_linux_and_ports_forward_to_the_task() {
        let id = "0123456789abcdefghij";
        assert_eq!(netns_name(id), "flt-0123456789abcdefghij");
        assert!(host_if(id, 3).len() < 15, "{}", host_if(id, 3));
        assert_ne!(host_if(id, 0), host_if(id, 1));
        let ports = [TaskPort {
            target: 8080,
            protocol: Protocol::Tcp,
            host_port: 30001,
        }];
        let addr = Ipv4Addr::new(10, 0, 9, 5);
        assert_eq!(
            forwards(&ports, addr),
            vec![Forward {
                protocol: Protocol::Tcp,
                node_port: 30001,
                addr,
                target: 8080
            }]
        );
        let gateway = Ipv4Addr::new(10, 0, 9, 1);
        assert_eq!(
            resolv_conf(gateway, &[], &[]),
            "# written by flotilla: the node's resolver\nnameserver 10.0.9.1\noptions ndots:0\n"
        );
        // The task's own servers after the node's, its domains to search.
        assert_eq!(
            resolv_conf(
                gateway,
                &["10.0.0.53".into()],
                &["corp.example".into(), "example".into()]
            ),
            "# written by flotilla: the node's resolver\nnameserver 10.0.9.1\nnameserver 10.0.0.53\nsearch corp.example example\noptions ndots:0\n"
        );
    }
}
