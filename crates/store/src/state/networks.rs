//! Commands on the networks table and on the addresses given out on
//! networks: create and remove a network, and the leader's allocator
//! giving a network its subnet and VXLAN ID, a service its virtual
//! addresses and a task its own.
//!
//! Every allocation is checked here, whoever proposed it: an address is in
//! its network's subnet, is neither the network, gateway nor broadcast
//! address, and is held by nothing else on that network (a virtual address,
//! or a task that has not ended). Subnets never overlap each other or hold
//! a node's address. A refused allocation changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use flotilla_types::network::VNI_RANGE;
use flotilla_types::{
    Network, NetworkAddress, NetworkSpec, Service, ServiceSpec, Subnet, Task, UnixMs,
};

use super::{table, Change, State};
use crate::command::CommandResult;
use crate::error::StoreError;

impl State {
    /// Finds a network by ID, or by name.
    pub fn network(&self, id_or_name: &str) -> Option<&Network> {
        self.networks
            .get(id_or_name)
            .or_else(|| self.networks.values().find(|n| n.spec.name == id_or_name))
    }

    /// The services whose spec joins network `id`, by name, in order.
    pub fn services_on(&self, network_id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .values()
            .filter(|s| joins(&s.spec, network_id))
            .map(|s| s.spec.name.clone())
            .collect();
        names.sort();
        names
    }

    /// [`crate::Command::CreateNetwork`]: a new network. Refused if the
    /// name or ID is taken, or if the subnet asked for overlaps another
    /// network's or holds a node's address; a subnet asked for is the
    /// network's at once, the allocator gives the rest.
    pub(super) fn create_network(
        &mut self,
        id: &str,
        spec: &NetworkSpec,
        at: UnixMs,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        self.require_cluster()?;
        if self.network(&spec.name).is_some() || self.networks.contains_key(id) {
            return Err(StoreError::NetworkExists(spec.name.clone()));
        }
        if let Some(subnet) = spec.subnet {
            self.check_subnet(id, subnet)?;
        }
        let network = Network {
            id: id.to_string(),
            spec: spec.clone(),
            created_at: at,
            subnet: spec.subnet,
            vni: None,
            key: None,
        };
        table::insert(&mut self.networks, id, network, changes);
        Ok(Some(id.to_string()))
    }

    /// [`crate::Command::RemoveNetwork`]: forgets a network. Refused while
    /// a service joins it (naming them) or a task that has not ended holds
    /// an address on it.
    pub(super) fn remove_network(&mut self, id: &str, changes: &mut Vec<Change>) -> CommandResult {
        let network = self
            .networks
            .get(id)
            .ok_or_else(|| StoreError::NetworkNotFound(id.to_string()))?;
        let mut users = self.services_on(id);
        if users.is_empty() {
            // Tasks of services removed or moved off it, still stopping.
            let stopping: BTreeSet<String> = self
                .tasks
                .values()
                .filter(|t| !t.status.state.is_terminal() && holds_on(t, id))
                .map(|t| t.service_name.clone())
                .collect();
            users = stopping.into_iter().collect();
        }
        if !users.is_empty() {
            return Err(StoreError::NetworkInUse {
                name: network.spec.name.clone(),
                services: users.join(", "),
            });
        }
        table::remove(&mut self.networks, id, changes);
        Ok(Some(id.to_string()))
    }

    /// [`crate::Command::AllocateNetwork`]: the allocator's subnet and
    /// VXLAN ID for a network. A network that asked for a subnet keeps it;
    /// the same allocation again changes nothing; another one is refused.
    pub(super) fn allocate_network(
        &mut self,
        id: &str,
        subnet: Subnet,
        vni: u32,
        key: Option<&str>,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let network = self
            .networks
            .get(id)
            .ok_or_else(|| StoreError::NetworkNotFound(id.to_string()))?;
        let name = network.spec.name.clone();
        let mismatch = |reason: String| StoreError::AddressMismatch {
            what: format!("network {name}"),
            reason,
        };
        // An encrypted network's key comes with its first allocation and
        // stays; a plain network has none.
        let valid_key = |k: &str| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit());
        let key = match (network.spec.encrypted, network.key.as_deref(), key) {
            (false, _, None) => None,
            (false, _, Some(_)) => return Err(mismatch("it is not encrypted: no key".into())),
            (true, Some(have), _) => Some(have.to_string()),
            (true, None, Some(k)) if valid_key(k) => Some(k.to_string()),
            (true, None, _) => {
                return Err(mismatch(
                    "it is encrypted: its allocation needs a key of 32 bytes in hex".into(),
                ))
            }
        };
        if network.subnet.is_some_and(|s| s != subnet) {
            return Err(mismatch(format!(
                "it has subnet {}",
                network.subnet.map(|s| s.to_string()).unwrap_or_default()
            )));
        }
        if network.vni.is_some_and(|v| v != vni) {
            return Err(mismatch(format!(
                "it has VXLAN ID {}",
                network.vni.unwrap_or_default()
            )));
        }
        if network.subnet == Some(subnet) && network.vni == Some(vni) && network.key == key {
            return Ok(Some(id.to_string()));
        }
        if !VNI_RANGE.contains(&vni) {
            return Err(mismatch(format!("VXLAN ID {vni} is out of range")));
        }
        if let Some(other) = self
            .networks
            .values()
            .find(|n| n.id != id && n.vni == Some(vni))
        {
            return Err(mismatch(format!(
                "VXLAN ID {vni} is network {}'s",
                other.spec.name
            )));
        }
        if network.subnet.is_none() {
            self.check_subnet(id, subnet)?;
        }
        if let Some(network) = self.networks.get_mut(id) {
            network.subnet = Some(subnet);
            network.vni = Some(vni);
            network.key = key;
            table::touched::<Network>(id, changes);
        }
        Ok(Some(id.to_string()))
    }

    /// [`crate::Command::AllocateVips`]: the virtual addresses of service
    /// `id` at `version`, one per network of its spec, in the spec's order;
    /// none for a service in endpoint mode `dnsrr`.
    pub(super) fn allocate_vips(
        &mut self,
        id: &str,
        version: u64,
        vips: &[NetworkAddress],
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let service = self
            .services
            .get(id)
            .ok_or_else(|| StoreError::ServiceNotFound(id.to_string()))?;
        super::services::check_version(service, version)?;
        let name = service.spec.name.clone();
        let mismatch = |reason: String| StoreError::AddressMismatch {
            what: format!("service {name}"),
            reason,
        };
        let wanted = service.spec.vip_networks();
        let given: Vec<&str> = vips.iter().map(|v| v.network.as_str()).collect();
        if wanted != given {
            return Err(mismatch(format!(
                "virtual addresses for networks [{}], its spec has [{}]",
                given.join(", "),
                wanted.join(", ")
            )));
        }
        if service.virtual_ips == vips {
            return Ok(Some(id.to_string()));
        }
        let mut taken = self.taken_on(vips.iter().map(|v| v.network.as_str()));
        // Its own addresses are its to keep.
        for vip in &service.virtual_ips {
            taken.remove(&(vip.network.clone(), vip.addr));
        }
        self.check_addresses(vips, &mut taken, &mismatch)?;
        if let Some(service) = self.services.get_mut(id) {
            service.virtual_ips = vips.to_vec();
            table::touched::<Service>(id, changes);
        }
        Ok(Some(id.to_string()))
    }

    /// [`crate::Command::AllocateTaskAddresses`]: each task's addresses,
    /// one per network of its template, in order. A task that is gone, has
    /// ended or has its addresses already is skipped; a batch with an
    /// address that does not fit is refused whole.
    pub(super) fn allocate_task_addresses(
        &mut self,
        tasks: &[(String, Vec<NetworkAddress>)],
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let todo: Vec<&(String, Vec<NetworkAddress>)> = tasks
            .iter()
            .filter(|(id, _)| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| t.networks.is_empty() && !t.status.state.is_terminal())
            })
            .collect();
        let networks = todo
            .iter()
            .flat_map(|(_, addrs)| addrs.iter().map(|a| a.network.as_str()));
        let mut taken = self.taken_on(networks);
        for (task_id, addrs) in &todo {
            let Some(task) = self.tasks.get(task_id) else {
                continue;
            };
            let mismatch = |reason: String| StoreError::AddressMismatch {
                what: format!("task {task_id}"),
                reason,
            };
            let wanted: Vec<&str> = task
                .spec
                .networks
                .iter()
                .map(|a| a.network.as_str())
                .collect();
            let given: Vec<&str> = addrs.iter().map(|a| a.network.as_str()).collect();
            if wanted != given {
                return Err(mismatch(format!(
                    "addresses for networks [{}], its template has [{}]",
                    given.join(", "),
                    wanted.join(", ")
                )));
            }
            self.check_addresses(addrs, &mut taken, &mismatch)?;
        }
        for (task_id, addrs) in todo {
            if let Some(task) = self.tasks.get_mut(task_id) {
                task.networks = addrs.clone();
                table::touched::<Task>(task_id, changes);
            }
        }
        Ok(None)
    }

    /// Refuses `subnet` for network `id` if it overlaps another network's
    /// subnet (given or asked for) or holds a node's address. The
    /// allocator picks from the pool by it too.
    pub fn check_subnet(&self, id: &str, subnet: Subnet) -> Result<(), StoreError> {
        for other in self.networks.values().filter(|n| n.id != id) {
            if let Some(theirs) = other.subnet.or(other.spec.subnet) {
                if theirs.overlaps(&subnet) {
                    return Err(StoreError::SubnetOverlaps {
                        subnet: subnet.to_string(),
                        what: format!("network {} ({theirs})", other.spec.name),
                    });
                }
            }
        }
        for node in self.nodes.values() {
            if let Some(IpAddr::V4(ip)) = node.ip() {
                if subnet.contains(ip) {
                    return Err(StoreError::SubnetOverlaps {
                        subnet: subnet.to_string(),
                        what: format!("node {}'s address {ip}", node.name),
                    });
                }
            }
        }
        Ok(())
    }

    /// Every address held on any network: the services' virtual
    /// addresses and those of tasks that have not ended. One pass over the
    /// tasks; the allocator counts free addresses by it too.
    pub fn held_addresses(&self) -> impl Iterator<Item = &NetworkAddress> + '_ {
        self.services
            .values()
            .flat_map(|s| s.virtual_ips.iter())
            .chain(
                self.tasks
                    .values()
                    .filter(|t| !t.status.state.is_terminal())
                    .flat_map(|t| t.networks.iter()),
            )
    }

    /// The addresses held on the networks `ids` ([`State::held_addresses`]).
    fn taken_on<'a>(&self, ids: impl Iterator<Item = &'a str>) -> BTreeSet<(String, Ipv4Addr)> {
        let ids: BTreeSet<&str> = ids.collect();
        if ids.is_empty() {
            return BTreeSet::new();
        }
        self.held_addresses()
            .filter(|a| ids.contains(a.network.as_str()))
            .map(|a| (a.network.clone(), a.addr))
            .collect()
    }

    /// Checks each address against its network and `taken` (which it then
    /// joins, so a batch cannot give one address twice).
    fn check_addresses(
        &self,
        addrs: &[NetworkAddress],
        taken: &mut BTreeSet<(String, Ipv4Addr)>,
        mismatch: &dyn Fn(String) -> StoreError,
    ) -> Result<(), StoreError> {
        for a in addrs {
            let network = self
                .networks
                .get(&a.network)
                .ok_or_else(|| StoreError::NetworkNotFound(a.network.clone()))?;
            let Some(subnet) = network.subnet else {
                return Err(mismatch(format!(
                    "network {} has no subnet yet",
                    network.spec.name
                )));
            };
            if !subnet.assignable(a.addr) {
                return Err(mismatch(format!(
                    "{} is not an address to give out in {subnet}",
                    a.addr
                )));
            }
            if !taken.insert((a.network.clone(), a.addr)) {
                return Err(mismatch(format!(
                    "{} is already held on network {}",
                    a.addr, network.spec.name
                )));
            }
        }
        Ok(())
    }

    /// Refuses a spec that joins a network that does not exist.
    pub(super) fn check_networks_exist(&self, spec: &ServiceSpec) -> Result<(), StoreError> {
        match spec
            .task
            .networks
            .iter()
            .find(|a| !self.networks.contains_key(&a.network))
        {
            Some(missing) => Err(StoreError::NetworkNotFound(missing.network.clone())),
            None => Ok(()),
        }
    }
}

/// The virtual addresses a service keeps with its new spec: those of the
/// networks it still joins, in vip mode; the allocator adds the rest.
pub(super) fn kept_vips(spec: &ServiceSpec, before: &[NetworkAddress]) -> Vec<NetworkAddress> {
    let by_network: BTreeMap<&str, &NetworkAddress> =
        before.iter().map(|v| (v.network.as_str(), v)).collect();
    // In the spec's order; where one is missing the allocator writes the
    // whole list again, these included.
    spec.vip_networks()
        .into_iter()
        .filter_map(|n| by_network.get(n).map(|v| (*v).clone()))
        .collect()
}

fn joins(spec: &ServiceSpec, network_id: &str) -> bool {
    spec.task.networks.iter().any(|a| a.network == network_id)
}

fn holds_on(task: &Task, network_id: &str) -> bool {
    task.networks.iter().any(|a| a.network == network_id)
        || task.spec.networks.iter().any(|a| a.network == network_id)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use flotilla_types::{
        EndpointMode, NetworkAddress, NetworkAttachment, NetworkSpec, Subnet, TaskState, TaskStatus,
    };

    use super::super::tests::{init, spec, task};
    use crate::{Command, CommandResult, State, StoreError, TaskStatusUpdate};

    fn apply(s: &mut State, command: Command) -> CommandResult {
        let index = s.index + 1;
        s.apply(index, &command).0
    }

    fn subnet(text: &str) -> Subnet {
        text.parse().expect("subnet")
    }

    fn create(s: &mut State, id: &str, name: &str, asked: Option<&str>) -> CommandResult {
        let mut spec = NetworkSpec::named(name);
        spec.subnet = asked.map(subnet);
        apply(
            s,
            Command::CreateNetwork {
                id: id.into(),
                spec,
                at: 5,
            },
        )
    }

    fn at(network: &str, last: u8) -> NetworkAddress {
        NetworkAddress {
            network: network.into(),
            addr: Ipv4Addr::new(10, 0, 9, last),
        }
    }

    /// A cluster with network n1 on 10.0.9.0/24 (VXLAN 4096) and service
    /// s1 on it.
    fn on_a_network() -> State {
        let mut s = init();
        assert_eq!(
            create(&mut s, "n1", "front", Some("10.0.9.0/24")),
            Ok(Some("n1".into()))
        );
        let alloc = Command::AllocateNetwork {
            id: "n1".into(),
            subnet: subnet("10.0.9.0/24"),
            vni: 4096,
            key: None,
        };
        assert_eq!(apply(&mut s, alloc), Ok(Some("n1".into())));
        let mut web = spec("web", 2);
        web.task.networks = vec![NetworkAttachment::to("n1")];
        let created = Command::CreateService {
            id: "s1".into(),
            spec: web,
            at: 6,
        };
        assert_eq!(apply(&mut s, created), Ok(Some("s1".into())));
        s
    }

    #[test]
    fn names_are_unique_and_subnets_never_overlap() {
        let mut s = init();
        assert_eq!(
            create(&mut s, "n1", "front", Some("10.0.0.0/16")),
            Ok(Some("n1".into()))
        );
        assert_eq!(
            s.network("front").map(|n| n.subnet),
            Some(Some(subnet("10.0.0.0/16")))
        );
        assert_eq!(
            create(&mut s, "n2", "front", None),
            Err(StoreError::NetworkExists("front".into()))
        );
        let overlap = create(&mut s, "n2", "back", Some("10.0.9.0/24")).unwrap_err();
        assert_eq!(
            overlap.to_string(),
            "subnet 10.0.9.0/24 overlaps network front (10.0.0.0/16)"
        );
        assert!(
            s.network("back").is_none(),
            "a refused create changes nothing"
        );
        // The pool's pick is checked the same way.
        assert_eq!(create(&mut s, "n2", "back", None), Ok(Some("n2".into())));
        let bad = Command::AllocateNetwork {
            id: "n2".into(),
            subnet: subnet("10.0.5.0/24"),
            vni: 4097,
            key: None,
        };
        assert!(matches!(
            apply(&mut s, bad),
            Err(StoreError::SubnetOverlaps { .. })
        ));
        let good = Command::AllocateNetwork {
            id: "n2".into(),
            subnet: subnet("10.64.0.0/24"),
            vni: 4097,
            key: None,
        };
        assert_eq!(apply(&mut s, good.clone()), Ok(Some("n2".into())));
        assert_eq!(
            apply(&mut s, good),
            Ok(Some("n2".into())),
            "the same again is no change"
        );
        let same_vni = Command::AllocateNetwork {
            id: "n1".into(),
            subnet: subnet("10.0.0.0/16"),
            vni: 4097,
            key: None,
        };
        assert!(matches!(
            apply(&mut s, same_vni),
            Err(StoreError::AddressMismatch { .. })
        ));
        let moved = Command::AllocateNetwork {
            id: "n2".into(),
            subnet: subnet("10.64.1.0/24"),
            vni: 4097,
            key: None,
        };
        assert!(matches!(
            apply(&mut s, moved),
            Err(StoreError::AddressMismatch { .. })
        ));
    }

    #[test]
    fn an_encrypted_network_gets_its_key_with_its_first_allocation_and_keeps_it() {
        let mut s = init();
        let mut secure = NetworkSpec::named("secure");
        secure.encrypted = true;
        let made = Command::CreateNetwork {
            id: "n1".into(),
            spec: secure,
            at: 1,
        };
        assert_eq!(apply(&mut s, made), Ok(Some("n1".into())));
        let alloc = |key: Option<&str>| Command::AllocateNetwork {
            id: "n1".into(),
            subnet: subnet("10.0.9.0/24"),
            vni: 4096,
            key: key.map(String::from),
        };
        // No key, or one that is not 32 bytes of hex: refused.
        assert!(matches!(
            apply(&mut s, alloc(None)),
            Err(StoreError::AddressMismatch { .. })
        ));
        assert!(matches!(
            apply(&mut s, alloc(Some("abcd"))),
            Err(StoreError::AddressMismatch { .. })
        ));
        let key = "0f".repeat(32);
        assert_eq!(apply(&mut s, alloc(Some(&key))), Ok(Some("n1".into())));
        assert_eq!(s.networks["n1"].key.as_deref(), Some(key.as_str()));
        // A second allocator's other key does not replace it.
        assert_eq!(
            apply(&mut s, alloc(Some(&"aa".repeat(32)))),
            Ok(Some("n1".into()))
        );
        assert_eq!(s.networks["n1"].key.as_deref(), Some(key.as_str()));
        // A plain network takes no key.
        let plain = Command::CreateNetwork {
            id: "n2".into(),
            spec: NetworkSpec::named("plain"),
            at: 2,
        };
        assert_eq!(apply(&mut s, plain), Ok(Some("n2".into())));
        let keyed = Command::AllocateNetwork {
            id: "n2".into(),
            subnet: subnet("10.0.10.0/24"),
            vni: 4097,
            key: Some(key),
        };
        assert!(matches!(
            apply(&mut s, keyed),
            Err(StoreError::AddressMismatch { .. })
        ));
    }

    #[test]
    fn a_subnet_holding_a_nodes_address_is_refused() {
        let mut s = init();
        if let Some(node) = s.nodes.get_mut("n1") {
            node.addr = "10.213.244.2:4280".into();
        }
        let err = create(&mut s, "x", "front", Some("10.213.0.0/16")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "subnet 10.213.0.0/16 overlaps node n1's address 10.213.244.2"
        );
    }

    #[test]
    fn a_service_needs_its_networks_and_keeps_them_from_removal() {
        let mut s = on_a_network();
        let mut lost = spec("lost", 1);
        lost.task.networks = vec![NetworkAttachment::to("nope")];
        let err = apply(
            &mut s,
            Command::CreateService {
                id: "s2".into(),
                spec: lost,
                at: 7,
            },
        );
        assert_eq!(err, Err(StoreError::NetworkNotFound("nope".into())));
        let in_use = apply(&mut s, Command::RemoveNetwork { id: "n1".into() }).unwrap_err();
        assert_eq!(
            in_use.to_string(),
            "network front is in use by services web"
        );
        // Off the network, but a task still holds an address there.
        let mut t = task("t1", "s1", 1);
        t.spec.networks = vec![NetworkAttachment::to("n1")];
        let _ = apply(&mut s, Command::CreateTasks { tasks: vec![t] });
        let alloc = Command::AllocateTaskAddresses {
            tasks: vec![("t1".into(), vec![at("n1", 3)])],
        };
        assert_eq!(apply(&mut s, alloc), Ok(None));
        let off = Command::UpdateService {
            id: "s1".into(),
            spec: spec("web", 2),
            expected_version: None,
            at: 8,
        };
        assert!(apply(&mut s, off).is_ok());
        assert!(matches!(
            apply(&mut s, Command::RemoveNetwork { id: "n1".into() }),
            Err(StoreError::NetworkInUse { .. })
        ));
        let ended = Command::UpdateTaskStatus {
            updates: vec![TaskStatusUpdate {
                task_id: "t1".into(),
                status: TaskStatus::new(TaskState::Shutdown, 9, "stopped"),
            }],
        };
        let _ = apply(&mut s, ended);
        assert_eq!(
            apply(&mut s, Command::RemoveNetwork { id: "n1".into() }),
            Ok(Some("n1".into()))
        );
        // And a rollback to the spec on it is refused, changing nothing.
        let back = Command::RollbackService {
            id: "s1".into(),
            at: 10,
            reason: None,
            expected_version: None,
        };
        assert_eq!(
            apply(&mut s, back),
            Err(StoreError::NetworkNotFound("n1".into()))
        );
        assert!(s.services["s1"].spec.task.networks.is_empty());
    }

    #[test]
    fn addresses_fit_their_network_and_are_never_given_twice() {
        let mut s = on_a_network();
        let tasks: Vec<_> = (1..=3)
            .map(|i| {
                let mut t = task(&format!("t{i}"), "s1", i);
                t.spec.networks = vec![NetworkAttachment::to("n1")];
                t
            })
            .collect();
        let _ = apply(&mut s, Command::CreateTasks { tasks });
        let vip = Command::AllocateVips {
            id: "s1".into(),
            version: s.services["s1"].version,
            vips: vec![at("n1", 2)],
        };
        assert_eq!(apply(&mut s, vip), Ok(Some("s1".into())));
        let give = |pairs: &[(&str, u8)]| Command::AllocateTaskAddresses {
            tasks: pairs
                .iter()
                .map(|(t, last)| (t.to_string(), vec![at("n1", *last)]))
                .collect(),
        };
        // The VIP's, twice in one batch, the gateway, the broadcast.
        for bad in [
            give(&[("t1", 2)]),
            give(&[("t1", 3), ("t2", 3)]),
            give(&[("t1", 1)]),
            give(&[("t1", 255)]),
        ] {
            assert!(
                matches!(
                    apply(&mut s, bad.clone()),
                    Err(StoreError::AddressMismatch { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(
            s.tasks.values().all(|t| t.networks.is_empty()),
            "refused whole"
        );
        assert_eq!(apply(&mut s, give(&[("t1", 3), ("t2", 4)])), Ok(None));
        assert!(matches!(
            apply(&mut s, give(&[("t3", 4)])),
            Err(StoreError::AddressMismatch { .. })
        ));
        // A task that has its address keeps it.
        assert_eq!(apply(&mut s, give(&[("t1", 9), ("t3", 5)])), Ok(None));
        assert_eq!(s.tasks["t1"].networks, vec![at("n1", 3)]);
        assert_eq!(s.tasks["t3"].networks, vec![at("n1", 5)]);
        // Networks other than the template's.
        let mut other = give(&[("t9", 6)]);
        if let Command::AllocateTaskAddresses { tasks } = &mut other {
            tasks[0].1.clear();
        }
        assert_eq!(apply(&mut s, other), Ok(None), "an unknown task is skipped");
    }

    #[test]
    fn virtual_addresses_follow_the_spec() {
        let mut s = on_a_network();
        let version = s.services["s1"].version;
        let wrong = Command::AllocateVips {
            id: "s1".into(),
            version,
            vips: vec![],
        };
        assert!(matches!(
            apply(&mut s, wrong),
            Err(StoreError::AddressMismatch { .. })
        ));
        let stale = Command::AllocateVips {
            id: "s1".into(),
            version: version - 1,
            vips: vec![at("n1", 2)],
        };
        assert!(matches!(
            apply(&mut s, stale),
            Err(StoreError::VersionConflict { .. })
        ));
        let vip = Command::AllocateVips {
            id: "s1".into(),
            version,
            vips: vec![at("n1", 2)],
        };
        assert!(apply(&mut s, vip).is_ok());
        // A scale keeps it; dnsrr drops it.
        let mut scaled = s.services["s1"].spec.clone();
        scaled.mode = flotilla_types::ServiceMode::Replicated { replicas: 5 };
        let update = |spec| Command::UpdateService {
            id: "s1".into(),
            spec,
            expected_version: None,
            at: 9,
        };
        assert!(apply(&mut s, update(scaled.clone())).is_ok());
        assert_eq!(s.services["s1"].virtual_ips, vec![at("n1", 2)]);
        scaled.endpoint_mode = EndpointMode::Dnsrr;
        assert!(apply(&mut s, update(scaled)).is_ok());
        assert!(s.services["s1"].virtual_ips.is_empty());
    }

    #[test]
    fn network_commands_take_format_5() {
        let create = Command::CreateNetwork {
            id: "n".into(),
            spec: NetworkSpec::named("n"),
            at: 1,
        };
        assert_eq!(create.format(), crate::NETWORKS_FORMAT);
        let mut on = spec("web", 1);
        let plain = Command::CreateService {
            id: "s".into(),
            spec: on.clone(),
            at: 1,
        };
        assert_eq!(plain.format(), crate::entry::BARE_FORMAT);
        on.task.networks = vec![NetworkAttachment::to("n")];
        let joined = Command::CreateService {
            id: "s".into(),
            spec: on,
            at: 1,
        };
        assert_eq!(joined.format(), crate::NETWORKS_FORMAT);
    }
}
