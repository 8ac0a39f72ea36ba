//! The leader's allocation of networks: each network's subnet (from
//! [`DEFAULT_POOL`] unless it asked for one) and VXLAN ID, each service's
//! virtual address on each of its networks, and each task's own address
//! on each network of its template, before it is placed.
//!
//! It also computes [`network_table`], what every node's resolver and
//! data path need of the networks.
//!
//! [`allocate`] is a pure function of the store, as the port allocator
//! is; the store checks every allocation again when it applies it, so a
//! stale decision is refused, never half applied. Addresses are the lowest
//! free ones of the subnet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use flotilla_store::{Command, State};
use flotilla_types::network::{Endpoint, NameEntry, NetworkEntry, NetworkTable};
use flotilla_types::network::{DEFAULT_POOL, POOL_SUBNET_PREFIX, VNI_RANGE};
use flotilla_types::{DesiredState, NetworkAddress, NodeState, Subnet, Task};

/// What the network allocator proposes, and what it could not give.
#[derive(Debug, Default, PartialEq)]
pub struct Allocation {
    pub commands: Vec<Command>,
    /// What is left without an allocation, and why: `(what, reason)`.
    pub short: Vec<(String, String)>,
}

/// The free addresses of one network's subnet, lowest first.
struct Free {
    subnet: Subnet,
    next: u64,
    taken: BTreeSet<Ipv4Addr>,
}

impl Free {
    fn take(&mut self) -> Option<Ipv4Addr> {
        while let Some(addr) = self.subnet.nth(self.next) {
            self.next += 1;
            if self.subnet.assignable(addr) && self.taken.insert(addr) {
                return Some(addr);
            }
        }
        None
    }
}

/// The addresses held on every allocated network: virtual addresses and
/// those of tasks that have not ended.
fn free_addresses(state: &State) -> BTreeMap<&str, Free> {
    let mut free: BTreeMap<&str, Free> = state
        .networks
        .values()
        .filter_map(|n| {
            n.subnet.map(|subnet| {
                (
                    n.id.as_str(),
                    Free {
                        subnet,
                        next: 0,
                        taken: BTreeSet::new(),
                    },
                )
            })
        })
        .collect();
    for a in state.held_addresses() {
        if let Some(f) = free.get_mut(a.network.as_str()) {
            f.taken.insert(a.addr);
        }
    }
    free
}

/// Whether a task waits for the allocator: it is on networks, has no
/// addresses yet and has not ended.
pub fn needs_addresses(task: &Task) -> bool {
    !task.spec.networks.is_empty() && task.networks.is_empty() && !task.status.state.is_terminal()
}

/// Why a task on networks has no addresses yet, for its pending reason.
pub fn unaddressed_reason(state: &State, task: &Task) -> String {
    Unaddressed::of(state).reason(task)
}

/// The reasons of [`unaddressed_reason`] for one state, with the full
/// networks found once: the scheduler asks for every waiting task, and
/// counting held addresses is a pass over all tasks.
pub struct Unaddressed<'a> {
    state: &'a State,
    /// Networks with no address left to give, by ID.
    full: BTreeSet<&'a str>,
}

impl<'a> Unaddressed<'a> {
    pub fn of(state: &'a State) -> Unaddressed<'a> {
        let full = free_addresses(state)
            .into_iter()
            // Held addresses are assignable ones (the store checks), so
            // the count says whether any is left.
            .filter(|(_, f)| f.taken.len() >= f.subnet.assignable_addrs().count())
            .map(|(id, _)| id)
            .collect();
        Unaddressed { state, full }
    }

    pub fn reason(&self, task: &Task) -> String {
        for a in &task.spec.networks {
            match self.state.networks.get(&a.network) {
                None => return format!("network {} no longer exists", a.network),
                Some(n) if n.subnet.is_none() || n.vni.is_none() => {
                    return format!("waiting for network {} to get its subnet", n.spec.name)
                }
                Some(_) => {}
            }
        }
        for a in &task.spec.networks {
            if let (Some(n), true) = (
                self.state.networks.get(&a.network),
                self.full.contains(a.network.as_str()),
            ) {
                let subnet = n.subnet.map(|s| s.to_string()).unwrap_or_default();
                return format!("no free address left on network {} ({subnet})", n.spec.name);
            }
        }
        "waiting for its network addresses".to_string()
    }
}

/// The label that names a service's stack, as Docker's.
const STACK_LABEL: &str = "com.docker.stack.namespace";

/// The names a service answers to on a network: its full name, its name
/// in its stack (`web` of `shop_web`) and its aliases there, lowercase.
pub fn service_names(service: &flotilla_types::Service, aliases: &[String]) -> Vec<String> {
    let full = service.spec.name.to_ascii_lowercase();
    let mut names = vec![full.clone()];
    if let Some(stack) = service.spec.labels.get(STACK_LABEL) {
        if let Some(short) = full.strip_prefix(&format!("{}_", stack.to_ascii_lowercase())) {
            names.push(short.to_string());
        }
    }
    for alias in aliases {
        names.push(alias.to_ascii_lowercase());
    }
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The [`NetworkTable`] every node gets: each allocated network with the
/// names of its services and where its tasks are. A task is ready (in the
/// answers of `tasks.NAME` and behind the virtual address) on the mesh's
/// rule: desired running, running and healthy when checked, on a ready
/// node. Pure, and in a stable order, so that an unchanged store gives an
/// equal table.
pub fn network_table(state: &State) -> NetworkTable {
    let mut table = NetworkTable::default();
    for network in state.networks.values() {
        let (Some(subnet), Some(vni)) = (network.subnet, network.vni) else {
            continue;
        };
        let mut services: Vec<NameEntry> = state
            .services
            .values()
            .filter_map(|s| {
                let a = s
                    .spec
                    .task
                    .networks
                    .iter()
                    .find(|a| a.network == network.id)?;
                Some(NameEntry {
                    service_id: s.id.clone(),
                    names: service_names(s, &a.aliases),
                    endpoint_mode: s.spec.endpoint_mode,
                    vip: s
                        .virtual_ips
                        .iter()
                        .find(|v| v.network == network.id)
                        .map(|v| v.addr),
                    ports: s.spec.task.ports.clone(),
                })
            })
            .collect();
        services.sort_by(|a, b| a.names.cmp(&b.names));
        let mut endpoints: Vec<Endpoint> = state
            .tasks
            .values()
            .filter(|t| !t.status.state.is_terminal())
            .filter_map(|t| {
                let addr = t.networks.iter().find(|a| a.network == network.id)?.addr;
                let node = t.node_id.as_deref().and_then(|id| state.nodes.get(id));
                let ready = t.desired_state == DesiredState::Running
                    && t.is_ready()
                    && node.is_some_and(|n| n.state == NodeState::Ready);
                Some(Endpoint {
                    task_id: t.id.clone(),
                    service_id: t.service_id.clone(),
                    addr,
                    node_id: t.node_id.clone(),
                    node_addr: node.and_then(|n| n.ip()),
                    ready,
                })
            })
            .collect();
        endpoints.sort_by(|a, b| (a.addr, &a.task_id).cmp(&(b.addr, &b.task_id)));
        table.networks.push(NetworkEntry {
            network_id: network.id.clone(),
            name: network.spec.name.clone(),
            subnet,
            vni,
            internal: network.spec.internal,
            encrypted: network.spec.encrypted,
            key: network.key.clone().filter(|_| network.spec.encrypted),
            services,
            endpoints,
        });
    }
    table.networks.sort_by(|a, b| a.name.cmp(&b.name));
    table
}

/// Decides every allocation the store lacks.
pub fn allocate(state: &State) -> Allocation {
    allocate_with(state, &mut random_key)
}

/// The network table as node `node_id` gets it: an encrypted network's
/// key only where the node holds one of its tasks (the table changes, and
/// is sent again, when it gets or loses one).
pub fn table_for_node(table: &NetworkTable, node_id: &str) -> NetworkTable {
    let mut out = table.clone();
    for network in &mut out.networks {
        let here = network
            .endpoints
            .iter()
            .any(|e| e.node_id.as_deref() == Some(node_id));
        if !here {
            network.key = None;
        }
    }
    out
}

/// A fresh network key: 32 random bytes, hex.
pub fn random_key() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// [`allocate`], with `new_key` drawing each encrypted network's key.
pub fn allocate_with(state: &State, new_key: &mut dyn FnMut() -> String) -> Allocation {
    let mut out = Allocation::default();
    allocate_networks(state, new_key, &mut out);
    let mut free = free_addresses(state);
    allocate_vips(state, &mut free, &mut out);
    allocate_tasks(state, &mut free, &mut out);
    out
}

fn allocate_networks(state: &State, new_key: &mut dyn FnMut() -> String, out: &mut Allocation) {
    // The subnets picked in this round, which the store does not hold yet.
    let mut picked: Vec<Subnet> = Vec::new();
    let mut vnis: BTreeSet<u32> = state.networks.values().filter_map(|n| n.vni).collect();
    for network in state.networks.values() {
        if network.allocated() {
            continue;
        }
        let subnet = match network.subnet {
            Some(s) => Some(s),
            // The store's own rule, so that the pick is never refused.
            None => DEFAULT_POOL.subnets(POOL_SUBNET_PREFIX).find(|candidate| {
                !picked.iter().any(|s| s.overlaps(candidate))
                    && state.check_subnet(&network.id, *candidate).is_ok()
            }),
        };
        let Some(subnet) = subnet else {
            out.short.push((
                format!("network {}", network.spec.name),
                format!("every /{POOL_SUBNET_PREFIX} of the pool {DEFAULT_POOL} is taken"),
            ));
            continue;
        };
        let vni = match network.vni {
            Some(v) => Some(v),
            None => VNI_RANGE.clone().find(|v| !vnis.contains(v)),
        };
        let Some(vni) = vni else {
            out.short.push((
                format!("network {}", network.spec.name),
                "every VXLAN ID is taken".to_string(),
            ));
            continue;
        };
        picked.push(subnet);
        vnis.insert(vni);
        let key = match (&network.key, network.spec.encrypted) {
            (Some(k), _) => Some(k.clone()),
            (None, true) => Some(new_key()),
            (None, false) => None,
        };
        out.commands.push(Command::AllocateNetwork {
            id: network.id.clone(),
            subnet,
            vni,
            key,
        });
    }
}

fn allocate_vips(state: &State, free: &mut BTreeMap<&str, Free>, out: &mut Allocation) {
    for service in state.services.values() {
        let wanted = service.spec.vip_networks();
        let have: Vec<&str> = service
            .virtual_ips
            .iter()
            .map(|v| v.network.as_str())
            .collect();
        if wanted == have {
            continue;
        }
        let count = wanted.len();
        let mut vips = Vec::with_capacity(count);
        for network in wanted {
            if let Some(kept) = service.virtual_ips.iter().find(|v| v.network == network) {
                vips.push(kept.clone());
                continue;
            }
            let Some(f) = free.get_mut(network) else {
                // Its network has no subnet yet: the next round.
                break;
            };
            match f.take() {
                Some(addr) => vips.push(NetworkAddress {
                    network: network.to_string(),
                    addr,
                }),
                None => {
                    out.short.push((
                        format!("service {}", service.spec.name),
                        format!("no free address left in {}", f.subnet),
                    ));
                    break;
                }
            }
        }
        if vips.len() == count {
            out.commands.push(Command::AllocateVips {
                id: service.id.clone(),
                version: service.version,
                vips,
            });
        }
    }
}

fn allocate_tasks(state: &State, free: &mut BTreeMap<&str, Free>, out: &mut Allocation) {
    let mut given: Vec<(String, Vec<NetworkAddress>)> = Vec::new();
    let mut full: BTreeSet<&str> = BTreeSet::new();
    // By service and slot, so that slot 1 gets the lowest address.
    let mut waiting: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| needs_addresses(t))
        .collect();
    waiting.sort_by(|a, b| (&a.service_id, a.slot, &a.id).cmp(&(&b.service_id, b.slot, &b.id)));
    for task in waiting {
        let ready =
            task.spec.networks.iter().all(|a| {
                free.contains_key(a.network.as_str()) && !full.contains(a.network.as_str())
            });
        if !ready {
            continue;
        }
        let mut addrs = Vec::with_capacity(task.spec.networks.len());
        let mut taken_now = Vec::new();
        for a in &task.spec.networks {
            let Some(f) = free.get_mut(a.network.as_str()) else {
                break;
            };
            match f.take() {
                Some(addr) => {
                    taken_now.push((a.network.as_str(), addr));
                    addrs.push(NetworkAddress {
                        network: a.network.clone(),
                        addr,
                    });
                }
                None => {
                    full.insert(a.network.as_str());
                    break;
                }
            }
        }
        if addrs.len() == task.spec.networks.len() {
            given.push((task.id.clone(), addrs));
        } else {
            // Give back what this task took: it gets none of them.
            for (network, addr) in taken_now {
                if let Some(f) = free.get_mut(network) {
                    f.taken.remove(&addr);
                    f.next = 0;
                }
            }
        }
    }
    for network in full {
        let name = state
            .networks
            .get(network)
            .map_or(network, |n| n.spec.name.as_str());
        out.short.push((
            format!("network {name}"),
            "no free address left for its tasks".to_string(),
        ));
    }
    if !given.is_empty() {
        out.commands
            .push(Command::AllocateTaskAddresses { tasks: given });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use flotilla_types::{Network, NetworkAttachment, NetworkSpec, TaskState};

    fn subnet(text: &str) -> Subnet {
        text.parse().expect("subnet")
    }

    fn network(state: &mut State, id: &str, asked: Option<&str>) {
        let mut spec = NetworkSpec::named(format!("net-{id}"));
        spec.subnet = asked.map(subnet);
        state.networks.insert(
            id.to_string(),
            Network {
                id: id.into(),
                subnet: spec.subnet,
                spec,
                created_at: 0,
                vni: None,
                key: None,
            },
        );
    }

    fn on(mut service: flotilla_types::Service, networks: &[&str]) -> flotilla_types::Service {
        service.spec.task.networks = networks.iter().map(|n| NetworkAttachment::to(*n)).collect();
        service
    }

    fn task_on(id: &str, service: &str, slot: u64, networks: &[&str]) -> Task {
        let mut t = task(id, service, slot, 1, TaskState::Pending);
        t.spec.networks = networks.iter().map(|n| NetworkAttachment::to(*n)).collect();
        t
    }

    /// Applies every command through the store, as the loop proposes them,
    /// asserting it takes each.
    fn apply_all(state: &mut State, commands: &[Command]) {
        for command in commands {
            let index = state.index + 1;
            let (result, _) = state.apply(index, command);
            assert!(result.is_ok(), "{command:?}: {result:?}");
        }
    }

    #[test]
    fn an_encrypted_networks_key_goes_only_to_the_nodes_of_its_tasks() {
        let entry = |id: &str, nodes: &[&str]| NetworkEntry {
            network_id: id.into(),
            name: id.into(),
            subnet: subnet("10.0.9.0/24"),
            vni: 4096,
            internal: false,
            encrypted: true,
            key: Some("ab".repeat(32)),
            services: vec![],
            endpoints: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| Endpoint {
                    task_id: format!("t{i}"),
                    service_id: "s".into(),
                    addr: std::net::Ipv4Addr::new(10, 0, 9, 10 + i as u8),
                    node_id: Some(n.to_string()),
                    node_addr: None,
                    ready: true,
                })
                .collect(),
        };
        let table = NetworkTable {
            networks: vec![entry("a", &["n1", "n2"]), entry("b", &["n2"])],
        };
        let n1 = table_for_node(&table, "n1");
        assert!(n1.networks[0].key.is_some());
        assert_eq!(n1.networks[1].key, None, "n1 runs no task of b");
        let n3 = table_for_node(&table, "n3");
        assert!(n3.networks.iter().all(|n| n.key.is_none()));
        // The rest of the table is the same for every node.
        assert_eq!(n3.networks[1].endpoints, table.networks[1].endpoints);
    }

    #[test]
    fn networks_get_the_lowest_free_subnet_and_vxlan_id() {
        let mut state = cluster(&["n1"]);
        if let Some(n) = state.nodes.get_mut("n1") {
            // A node inside the pool's first subnet and b's subnet inside
            // the second: both are skipped.
            n.addr = "10.64.0.7:4280".into();
        }
        network(&mut state, "a", None);
        network(&mut state, "b", Some("10.64.40.0/24"));
        network(&mut state, "c", None);
        let out = allocate(&state);
        assert_eq!(
            out.commands,
            vec![
                Command::AllocateNetwork {
                    id: "a".into(),
                    subnet: subnet("10.64.64.0/19"),
                    vni: 4096,
                    key: None
                },
                Command::AllocateNetwork {
                    id: "b".into(),
                    subnet: subnet("10.64.40.0/24"),
                    vni: 4097,
                    key: None
                },
                Command::AllocateNetwork {
                    id: "c".into(),
                    subnet: subnet("10.64.96.0/19"),
                    vni: 4098,
                    key: None
                },
            ]
        );
        apply_all(&mut state, &out.commands);
        assert!(state.networks.values().all(Network::allocated));
        assert_eq!(
            allocate(&state),
            Allocation::default(),
            "nothing left to do"
        );
    }

    #[test]
    fn services_and_tasks_get_addresses_once_their_network_has_a_subnet() {
        let mut state = cluster(&["n1"]);
        network(&mut state, "a", Some("10.0.9.0/29"));
        add_service(&mut state, on(replicated("web", 3), &["a"]));
        for slot in 1..=3 {
            add_task(
                &mut state,
                task_on(&format!("t{slot}"), "web", slot, &["a"]),
            );
        }
        // Before the network has its VXLAN ID, the tasks wait and say so.
        let t1 = state.tasks["t1"].clone();
        assert_eq!(
            unaddressed_reason(&state, &t1),
            "waiting for network net-a to get its subnet"
        );
        let first = allocate(&state);
        assert_eq!(first.commands.len(), 3, "{:?}", first.commands);
        apply_all(&mut state, &first.commands);
        // Network, then the VIP (.2) and the tasks (.3 to .5) in one round:
        // the subnet was asked for, so the addresses are known already.
        assert_eq!(
            state.services["web"]
                .virtual_ips
                .iter()
                .map(|v| v.addr.to_string())
                .collect::<Vec<_>>(),
            vec!["10.0.9.2"]
        );
        let addrs: Vec<String> = state
            .tasks
            .values()
            .map(|t| t.networks[0].addr.to_string())
            .collect();
        assert_eq!(addrs, vec!["10.0.9.3", "10.0.9.4", "10.0.9.5"]);
        // A /29 has 5 addresses: the 4th task gets the last, the 5th none.
        add_task(&mut state, task_on("t4", "web", 4, &["a"]));
        add_task(&mut state, task_on("t5", "web", 5, &["a"]));
        let next = allocate(&state);
        apply_all(&mut state, &next.commands);
        assert_eq!(state.tasks["t4"].networks[0].addr.to_string(), "10.0.9.6");
        assert!(state.tasks["t5"].networks.is_empty());
        assert_eq!(
            next.short,
            vec![(
                "network net-a".to_string(),
                "no free address left for its tasks".to_string()
            )]
        );
        let t5 = state.tasks["t5"].clone();
        assert_eq!(
            unaddressed_reason(&state, &t5),
            "no free address left on network net-a (10.0.9.0/29)"
        );
        // An ended task gives its address back.
        if let Some(t) = state.tasks.get_mut("t2") {
            t.status.state = TaskState::Failed;
        }
        let freed = allocate(&state);
        apply_all(&mut state, &freed.commands);
        assert_eq!(state.tasks["t5"].networks[0].addr.to_string(), "10.0.9.4");
    }

    #[test]
    fn a_task_on_two_networks_gets_both_or_none() {
        let mut state = cluster(&["n1"]);
        network(&mut state, "a", Some("10.0.9.0/24"));
        network(&mut state, "b", Some("10.0.10.0/29"));
        add_service(&mut state, on(replicated("web", 7), &["a", "b"]));
        let mut web = state.services["web"].clone();
        web.spec.endpoint_mode = flotilla_types::EndpointMode::Dnsrr;
        add_service(&mut state, web);
        for slot in 1..=6 {
            add_task(
                &mut state,
                task_on(&format!("t{slot}"), "web", slot, &["a", "b"]),
            );
        }
        let out = allocate(&state);
        apply_all(&mut state, &out.commands);
        assert!(
            state.services["web"].virtual_ips.is_empty(),
            "dnsrr has none"
        );
        let whole = state
            .tasks
            .values()
            .filter(|t| t.networks.len() == 2)
            .count();
        let none = state
            .tasks
            .values()
            .filter(|t| t.networks.is_empty())
            .count();
        assert_eq!((whole, none), (5, 1), "b holds 5 addresses");
        let b_addrs: BTreeSet<Ipv4Addr> = state
            .tasks
            .values()
            .filter_map(|t| t.networks.get(1).map(|a| a.addr))
            .collect();
        assert_eq!(b_addrs.len(), 5, "never one address twice");
    }

    #[test]
    fn the_scheduler_waits_for_addresses() {
        let mut state = cluster(&["n1"]);
        network(&mut state, "a", None);
        add_service(&mut state, on(replicated("web", 1), &["a"]));
        add_task(&mut state, task_on("t1", "web", 1, &["a"]));
        let held = crate::schedule(&state);
        assert!(held.assignments.is_empty());
        assert_eq!(
            held.unplaced,
            vec![(
                "t1".into(),
                "waiting for network net-a to get its subnet".into()
            )]
        );
        for _ in 0..2 {
            let out = allocate(&state);
            apply_all(&mut state, &out.commands);
        }
        let placed = crate::schedule(&state);
        assert_eq!(placed.assignments, vec![("t1".into(), "n1".into())]);
    }

    #[test]
    fn the_table_names_services_and_says_which_tasks_are_ready() {
        let mut state = cluster(&["n1", "n2"]);
        for (id, ip) in [("n1", "192.168.0.1"), ("n2", "192.168.0.2")] {
            if let Some(n) = state.nodes.get_mut(id) {
                n.addr = format!("{ip}:4280");
            }
        }
        network(&mut state, "a", Some("10.0.9.0/24"));
        network(&mut state, "b", None);
        let mut web = on(replicated("shop_web", 2), &["a"]);
        web.spec
            .labels
            .insert("com.docker.stack.namespace".into(), "shop".into());
        web.spec.task.networks[0].aliases = vec!["WWW".into(), "web".into()];
        add_service(&mut state, web);
        for slot in 1..=3 {
            add_task(
                &mut state,
                task_on(&format!("t{slot}"), "shop_web", slot, &["a"]),
            );
        }
        for _ in 0..2 {
            let out = allocate(&state);
            apply_all(&mut state, &out.commands);
        }
        // t1 ready on n1; t2 running on a node that is down; t3 stopping.
        for (id, node) in [("t1", "n1"), ("t2", "n2"), ("t3", "n1")] {
            if let Some(t) = state.tasks.get_mut(id) {
                t.node_id = Some(node.into());
                t.status.state = TaskState::Running;
            }
        }
        if let Some(n) = state.nodes.get_mut("n2") {
            n.state = flotilla_types::NodeState::Down;
        }
        if let Some(t) = state.tasks.get_mut("t3") {
            t.desired_state = flotilla_types::DesiredState::Shutdown;
        }
        let table = network_table(&state);
        assert_eq!(table.networks.len(), 2, "both allocated by now");
        let a = &table.networks[0];
        assert_eq!(a.name, "net-a");
        assert_eq!(a.services.len(), 1);
        assert_eq!(a.services[0].names, vec!["shop_web", "web", "www"]);
        assert_eq!(
            a.services[0].vip.map(|v| v.to_string()).as_deref(),
            Some("10.0.9.2")
        );
        let ready: Vec<(&str, bool)> = a
            .endpoints
            .iter()
            .map(|e| (e.task_id.as_str(), e.ready))
            .collect();
        assert_eq!(ready, vec![("t1", true), ("t2", false), ("t3", false)]);
        assert_eq!(
            a.endpoints[1].node_addr.map(|ip| ip.to_string()).as_deref(),
            Some("192.168.0.2")
        );
        assert!(table.networks[1].services.is_empty());
        assert_eq!(network_table(&state), table, "stable");
    }

    #[test]
    fn tasks_on_networks_go_only_to_nodes_that_can_wire_them() {
        let mut state = cluster(&["n1", "n2"]);
        if let Some(n) = state.nodes.get_mut("n1") {
            n.overlay_error = Some("no VXLAN".into());
        }
        network(&mut state, "a", Some("10.0.9.0/24"));
        add_service(&mut state, on(replicated("web", 1), &["a"]));
        add_task(&mut state, task_on("t1", "web", 1, &["a"]));
        for _ in 0..2 {
            let out = allocate(&state);
            apply_all(&mut state, &out.commands);
        }
        assert_eq!(
            crate::schedule(&state).assignments,
            vec![("t1".into(), "n2".into())]
        );
        if let Some(n) = state.nodes.get_mut("n2") {
            n.overlay_error = Some("not root".into());
        }
        assert_eq!(
            crate::schedule(&state).unplaced,
            vec![(
                "t1".into(),
                "no suitable node (2 nodes that cannot run overlay networks)".into()
            )]
        );
        // A global service on a network skips such nodes; one on none not.
        let mon = on(global("mon"), &["a"]);
        assert!(!crate::orchestrator::global_eligible(
            &mon,
            &state.nodes["n1"]
        ));
        assert!(crate::orchestrator::global_eligible(
            &global("plain"),
            &state.nodes["n1"]
        ));
    }

    #[test]
    fn a_global_task_reaches_its_agent_only_with_its_addresses() {
        let mut state = cluster(&["n1"]);
        network(&mut state, "a", Some("10.0.9.0/24"));
        add_service(&mut state, on(global("mon"), &["a"]));
        let mut t = task_on("g1", "mon", 0, &["a"]);
        t.status.state = TaskState::Assigned;
        t.node_id = Some("n1".into());
        add_task(&mut state, t);
        let (tasks, _) = crate::dispatcher::assignments_for(&state, "n1");
        assert!(tasks.is_empty());
        let out = allocate(&state);
        apply_all(&mut state, &out.commands);
        let (tasks, _) = crate::dispatcher::assignments_for(&state, "n1");
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].networks.len(), 1);
    }
}
