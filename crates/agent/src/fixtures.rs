//! Network tables for the unit tests of the agent's modules.

use std::net::Ipv4Addr;

use flotilla_types::network::{Endpoint, EndpointMode, NameEntry, NetworkEntry};

/// A network with no services and no tasks yet; callers add theirs with
/// struct update syntax.
pub fn network(id: &str, vni: u32, subnet: &str) -> NetworkEntry {
    NetworkEntry {
        network_id: id.into(),
        name: id.into(),
        subnet: subnet.parse().expect("subnet"),
        vni,
        internal: false,
        encrypted: false,
        key: None,
        services: vec![],
        endpoints: vec![],
    }
}

/// Task `task` of `service` at 10.0.9.`last`, on node n1.
pub fn endpoint(task: &str, service: &str, last: u8, ready: bool) -> Endpoint {
    Endpoint {
        task_id: task.into(),
        service_id: service.into(),
        addr: Ipv4Addr::new(10, 0, 9, last),
        node_id: Some("n1".into()),
        node_addr: None,
        ready,
    }
}

/// Service `service` of stack `app`, in endpoint mode `vip` at
/// 10.0.9.`vip` or, without one, `dnsrr`.
pub fn name(service: &str, vip: Option<u8>) -> NameEntry {
    NameEntry {
        service_id: service.into(),
        names: vec![format!("app_{service}"), service.into()],
        endpoint_mode: if vip.is_some() {
            EndpointMode::Vip
        } else {
            EndpointMode::Dnsrr
        },
        vip: vip.map(|l| Ipv4Addr::new(10, 0, 9, l)),
        ports: vec![],
    }
}
