//! Which records a task gets for a name: a pure function of the
//! leader's [`NetworkTable`], the address the query came from and the
//! question.
//!
//! The rules, as Swarm's embedded DNS, with its gaps closed:
//! - A task sees only the services on the networks it is on (the table
//!   says which: the networks where it holds the address it asked from,
//!   and every other network that task holds an address on). A service's
//!   name on no shared network is NXDOMAIN, never forwarded.
//! - `NAME` (the full name, the name in its stack, an alias): endpoint mode
//!   `vip` answers the service's virtual address on a shared network;
//!   `dnsrr` answers the ready tasks' own addresses.
//! - `tasks.NAME`: the ready tasks' own addresses, in either mode.
//! - SRV for `NAME` or `tasks.NAME`: one record per target port (per
//!   ready task for `tasks.NAME` and `dnsrr`, whose targets are
//!   `TASK.tasks.NAME`, answered as A).
//! - A name that exists but has nothing to answer (no ready task, or a
//!   type other than A, SRV or ANY) is never an address from before: no
//!   ready task is NXDOMAIN; another type is an empty NOERROR. Both carry
//!   an SOA whose minimum, [`NEGATIVE_TTL`], bounds how long a cache keeps
//!   the "no".
//! - Anything else is not the cluster's: [`Answer::Forward`] to the
//!   node's own resolvers. So is every query from an address that is no
//!   task's (the node itself).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use flotilla_types::network::{Endpoint, NameEntry, NetworkEntry, NetworkTable};
use flotilla_types::{EndpointMode, Protocol};

use crate::wire::{Record, TYPE_A, TYPE_ANY, TYPE_SRV};

/// Seconds an answer may be cached.
pub const TTL: u32 = 1;
/// Seconds a "no such name" or "no such record" may be cached.
pub const NEGATIVE_TTL: u32 = 1;

/// What the resolver does with a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records of the cluster's: the answer section and the additional
    /// one (the addresses of SRV targets).
    Records {
        answers: Vec<Record>,
        additional: Vec<Record>,
    },
    /// The name is the cluster's but has no record of the type asked.
    NoData,
    /// No such name for this task (or no ready task behind it).
    NxDomain,
    /// Not the cluster's: the node's own resolvers answer.
    Forward,
}

/// The SOA a negative answer carries.
pub fn negative_soa(name: &str) -> Record {
    Record::Soa {
        name: name.to_string(),
        ttl: NEGATIVE_TTL,
        minimum: NEGATIVE_TTL,
    }
}

/// Who asks, which decides the networks whose names they see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// A query from this address: the task that holds it, on every
    /// network that task is on; an address that is no task's sees none.
    From(Ipv4Addr),
    /// The task of this ID, on every network it is on.
    Task(&'a str),
    /// Every network (an operator's view: `flotilla resolve` without
    /// `--from`).
    Everywhere,
}

/// The networks `scope` sees: for a task, every network where it holds
/// an address.
pub fn networks_of<'a>(table: &'a NetworkTable, scope: Scope<'_>) -> Vec<&'a NetworkEntry> {
    let tasks: BTreeSet<&str> = match scope {
        Scope::Everywhere => return table.networks.iter().collect(),
        Scope::Task(task) => [task].into_iter().collect(),
        Scope::From(from) => table
            .networks
            .iter()
            .flat_map(|n| n.endpoints.iter())
            .filter(|e| e.addr == from)
            .map(|e| e.task_id.as_str())
            .collect(),
    };
    table
        .networks
        .iter()
        .filter(|n| {
            n.endpoints
                .iter()
                .any(|e| tasks.contains(e.task_id.as_str()))
        })
        .collect()
}

/// A service found on a shared network.
struct Found<'a> {
    network: &'a NetworkEntry,
    service: &'a NameEntry,
}

impl Found<'_> {
    fn ready(&self) -> impl Iterator<Item = &Endpoint> {
        self.network
            .endpoints
            .iter()
            .filter(|e| e.ready && e.service_id == self.service.service_id)
    }
}

fn a(name: &str, addr: Ipv4Addr) -> Record {
    Record::A {
        name: name.to_string(),
        ttl: TTL,
        addr,
    }
}

/// The answer for `name` (lowercase, no final dot) of type `qtype`, asked
/// by the task at `from`.
pub fn answer(table: &NetworkTable, from: Ipv4Addr, name: &str, qtype: u16) -> Answer {
    answer_for(table, Scope::From(from), name, qtype)
}

/// The answer for `name` of type `qtype` as `scope` sees it.
pub fn answer_for(table: &NetworkTable, scope: Scope<'_>, name: &str, qtype: u16) -> Answer {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let name = name.as_str();
    let mine = networks_of(table, scope);
    if mine.is_empty() {
        return Answer::Forward;
    }
    let known_anywhere = |wanted: &str| {
        table
            .networks
            .iter()
            .flat_map(|n| n.services.iter())
            .any(|s| s.names.iter().any(|n| n == wanted))
    };
    // `TASK.tasks.NAME`, the target of an SRV answer.
    let (task_target, rest) = match name.split_once(".tasks.") {
        Some((task, service)) if !task.contains('.') => (Some(task), format!("tasks.{service}")),
        _ => (None, name.to_string()),
    };
    let (tasks_of, service_name) = match rest.strip_prefix("tasks.") {
        Some(service) => (true, service.to_string()),
        None => (false, rest.clone()),
    };
    let found: Vec<Found> = mine
        .iter()
        .flat_map(|network| {
            network
                .services
                .iter()
                .filter(|s| s.names.contains(&service_name))
                .map(move |service| Found { network, service })
        })
        .collect();
    if found.is_empty() {
        return if known_anywhere(&service_name) {
            // On a network this task is not on: isolation, not a lookup
            // elsewhere.
            Answer::NxDomain
        } else {
            Answer::Forward
        };
    }
    if let Some(task) = task_target {
        let addrs: Vec<Record> = found
            .iter()
            .flat_map(|f| f.ready())
            .filter(|e| e.task_id.eq_ignore_ascii_case(task))
            .map(|e| a(name, e.addr))
            .take(1)
            .collect();
        return match (addrs.is_empty(), qtype) {
            (true, _) => Answer::NxDomain,
            (false, TYPE_A | TYPE_ANY) => Answer::Records {
                answers: addrs,
                additional: Vec::new(),
            },
            (false, _) => Answer::NoData,
        };
    }
    let by_task = tasks_of
        || found
            .iter()
            .all(|f| f.service.endpoint_mode == EndpointMode::Dnsrr);
    // The addresses the name stands for: a virtual address, or the ready
    // tasks' own (each once, in the table's order).
    let mut seen = BTreeSet::new();
    let targets: Vec<(Ipv4Addr, Option<&str>)> = if by_task {
        found
            .iter()
            .flat_map(|f| f.ready())
            .filter(|e| seen.insert(e.addr))
            .map(|e| (e.addr, Some(e.task_id.as_str())))
            .collect()
    } else if scope == Scope::Everywhere {
        // An operator sees the virtual address on every network.
        found
            .iter()
            .filter_map(|f| f.service.vip)
            .filter(|vip| seen.insert(*vip))
            .map(|vip| (vip, None))
            .collect()
    } else {
        // A task gets one: any shared network reaches the service.
        found
            .iter()
            .find_map(|f| f.service.vip)
            .map(|vip| (vip, None))
            .into_iter()
            .collect()
    };
    if targets.is_empty() {
        return Answer::NxDomain;
    }
    match qtype {
        TYPE_A | TYPE_ANY => Answer::Records {
            answers: targets.iter().map(|(addr, _)| a(name, *addr)).collect(),
            additional: Vec::new(),
        },
        TYPE_SRV => {
            let ports: Vec<(u16, Protocol)> = found
                .iter()
                .flat_map(|f| f.service.ports.iter().map(|p| (p.target, p.protocol)))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if ports.is_empty() {
                return Answer::NoData;
            }
            let base = format!("tasks.{service_name}");
            let mut answers = Vec::new();
            let mut additional = Vec::new();
            for (addr, task) in &targets {
                let target = match task {
                    Some(task) => format!("{task}.{base}"),
                    None => name.to_string(),
                };
                for (port, _) in &ports {
                    answers.push(Record::Srv {
                        name: name.to_string(),
                        ttl: TTL,
                        priority: 0,
                        weight: 1,
                        port: *port,
                        target: target.clone(),
                    });
                }
                additional.push(a(&target, *addr));
            }
            Answer::Records {
                answers,
                additional,
            }
        }
        _ => Answer::NoData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::network::NetworkEntry;
    use flotilla_types::PortConfig;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 9, last)
    }

    fn endpoint(task: &str, service: &str, last: u8, ready: bool) -> Endpoint {
        Endpoint {
            task_id: task.into(),
            service_id: service.into(),
            addr: ip(last),
            node_id: Some("n1".into()),
            node_addr: None,
            ready,
        }
    }

    fn name(service: &str, names: &[&str], mode: EndpointMode, vip: Option<u8>) -> NameEntry {
        NameEntry {
            service_id: service.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            endpoint_mode: mode,
            vip: vip.map(ip),
            ports: vec![PortConfig::target(8080)],
        }
    }

    fn network(id: &str, services: Vec<NameEntry>, endpoints: Vec<Endpoint>) -> NetworkEntry {
        NetworkEntry {
            network_id: id.into(),
            name: id.into(),
            subnet: "10.0.9.0/24".parse().expect("subnet"),
            vni: 4096,
            internal: false,
            encrypted: false,
            key: None,
            services,
            endpoints,
        }
    }

    /// `front`: web (vip .2; tasks w1 .3 ready, w2 .4 not), client c1 .10;
    /// `back`: web's w1 again (.30), db (dnsrr; d1 .31 ready).
    fn table() -> NetworkTable {
        NetworkTable {
            networks: vec![
                network(
                    "front",
                    vec![
                        name(
                            "web",
                            &["shop_web", "web", "www"],
                            EndpointMode::Vip,
                            Some(2),
                        ),
                        name(
                            "client",
                            &["shop_client", "client"],
                            EndpointMode::Vip,
                            Some(9),
                        ),
                    ],
                    vec![
                        endpoint("w1", "web", 3, true),
                        endpoint("w2", "web", 4, false),
                        endpoint("c1", "client", 10, true),
                    ],
                ),
                network(
                    "back",
                    vec![
                        name("web", &["shop_web", "web"], EndpointMode::Vip, Some(29)),
                        name("db", &["shop_db", "db"], EndpointMode::Dnsrr, None),
                    ],
                    vec![
                        endpoint("w1", "web", 30, true),
                        endpoint("d1", "db", 31, true),
                    ],
                ),
            ],
        }
    }

    fn addrs(answer: &Answer) -> Vec<Ipv4Addr> {
        match answer {
            Answer::Records { answers, .. } => answers
                .iter()
                .filter_map(|r| match r {
                    Record::A { addr, .. } => Some(*addr),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn a_service_resolves_by_every_name_to_its_virtual_address() {
        let t = table();
        for n in ["web", "shop_web", "www"] {
            assert_eq!(addrs(&answer(&t, ip(10), n, TYPE_A)), vec![ip(2)], "{n}");
        }
        assert_eq!(
            addrs(&answer(&t, ip(10), "tasks.web", TYPE_A)),
            vec![ip(3)],
            "only the ready task"
        );
    }

    #[test]
    fn a_task_sees_only_the_networks_it_is_on() {
        let t = table();
        // The client is on front only: db is on back.
        assert_eq!(answer(&t, ip(10), "db", TYPE_A), Answer::NxDomain);
        assert_eq!(answer(&t, ip(10), "tasks.db", TYPE_A), Answer::NxDomain);
        // web is on both, asking from its front address it sees back too.
        assert_eq!(addrs(&answer(&t, ip(3), "db", TYPE_A)), vec![ip(31)]);
        // A name that is nobody's goes to the node's resolvers; so does
        // any query from an address that is no task's.
        assert_eq!(answer(&t, ip(10), "example.com", TYPE_A), Answer::Forward);
        assert_eq!(answer(&t, ip(200), "web", TYPE_A), Answer::Forward);
        // The same by task, and an operator's view of every network.
        assert_eq!(
            answer_for(&t, Scope::Task("c1"), "db", TYPE_A),
            Answer::NxDomain
        );
        assert_eq!(
            addrs(&answer_for(&t, Scope::Everywhere, "DB.", TYPE_A)),
            vec![ip(31)]
        );
        assert!(networks_of(&t, Scope::Task("nobody")).is_empty());
        assert_eq!(
            addrs(&answer_for(&t, Scope::Everywhere, "web", TYPE_A)),
            vec![ip(2), ip(29)],
            "every network's virtual address"
        );
        assert_eq!(
            addrs(&answer(&t, ip(3), "web", TYPE_A)),
            vec![ip(2)],
            "a task gets one"
        );
    }

    #[test]
    fn dnsrr_answers_the_ready_tasks_and_nothing_ready_is_nxdomain() {
        let mut t = table();
        assert_eq!(addrs(&answer(&t, ip(30), "db", TYPE_A)), vec![ip(31)]);
        t.networks[1].endpoints[1].ready = false;
        assert_eq!(answer(&t, ip(30), "db", TYPE_A), Answer::NxDomain);
        t.networks[0].endpoints[0].ready = false;
        assert_eq!(answer(&t, ip(10), "tasks.web", TYPE_A), Answer::NxDomain);
        // The virtual address stays: it answers while tasks come back.
        assert_eq!(addrs(&answer(&t, ip(10), "web", TYPE_A)), vec![ip(2)]);
    }

    #[test]
    fn other_types_of_a_known_name_are_empty_not_nxdomain() {
        let t = table();
        assert_eq!(
            answer(&t, ip(10), "web", crate::wire::TYPE_AAAA),
            Answer::NoData
        );
    }

    #[test]
    fn srv_carries_the_ports_and_its_targets_resolve() {
        let t = table();
        let Answer::Records {
            answers,
            additional,
        } = answer(&t, ip(10), "tasks.web", TYPE_SRV)
        else {
            panic!("records");
        };
        assert_eq!(
            answers,
            vec![Record::Srv {
                name: "tasks.web".into(),
                ttl: TTL,
                priority: 0,
                weight: 1,
                port: 8080,
                target: "w1.tasks.web".into(),
            }]
        );
        assert_eq!(additional, vec![a("w1.tasks.web", ip(3))]);
        assert_eq!(
            addrs(&answer(&t, ip(10), "w1.tasks.web", TYPE_A)),
            vec![ip(3)]
        );
        assert_eq!(answer(&t, ip(10), "w2.tasks.web", TYPE_A), Answer::NxDomain);
        let Answer::Records { answers, .. } = answer(&t, ip(10), "web", TYPE_SRV) else {
            panic!("records");
        };
        assert!(matches!(&answers[0], Record::Srv { target, port: 8080, .. } if target == "web"));
    }
}
