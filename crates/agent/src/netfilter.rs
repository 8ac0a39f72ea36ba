//! The packet rules of the node and of each task's namespace, as nftables
//! scripts.
//!
//! Both are pure functions of what the node runs, written whole each time
//! and loaded in one `nft -f` transaction (the table is made, deleted and
//! made again in the same script), so the kernel never holds half a
//! ruleset and a rule that is no longer wanted cannot linger.
//!
//! The node's table ([`node_rules`], `ip flotilla` and `bridge flotilla`):
//! - **Node ports.** A process task in its own namespace listens on its
//!   target port at its address; the node port the agent gave it is
//!   forwarded there (DNAT) for connections to any of the node's own
//!   addresses, from other nodes (prerouting) and from the node itself
//!   (output, which is how the mesh reaches a task on its own node).
//!   Loopback is not forwarded: the kernel does not route 127/8 out.
//!   Forwarded connections leave with the gateway as their source, so a
//!   task on an internal network (no default route) can answer them.
//! - **Isolation.** Traffic between two networks, and from outside to a
//!   task's address, is dropped; replies to what a task opened pass. An
//!   internal network has no way out.
//! - **The way out** of a network that is not internal: masqueraded
//!   behind the node's address.
//! - **The node's own frames stay home.** Every node's bridge of a
//!   network holds the same gateway address, and the network's bridges
//!   are one Ethernet segment through VXLAN (or the tunnel); what the node
//!   itself sends on a bridge (ARP answers for the gateway and its own
//!   questions, IPv6 neighbour traffic) is kept off the VXLAN and TAP
//!   devices, so that a task always finds its own node's gateway. Frames
//!   between tasks pass (they are forwarded, not the node's).
//!
//! - **Virtual addresses** ([`VipRedirect`]): TCP to a network's virtual
//!   addresses, which its bridge holds, goes (any port) to the node's
//!   proxy (`crate::vips`), from that network's bridge only: DNAT to the
//!   proxy's port at the same virtual address.
//!
//! A task's table ([`task_rules`], in its namespace): each virtual address
//! of a service on the task's networks is forwarded (DNAT, every port, as
//! Swarm's IPVS does with a firewall mark) to one of the service's ready
//! tasks on that network, chosen at random per connection: only what is
//! not TCP when the node has the proxy, which takes TCP (and tries another
//! task when a connect fails); a virtual
//! address with no ready task refuses at once (a TCP reset, an ICMP
//! port-unreachable for UDP) rather than leave the caller waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use flotilla_types::network::NetworkTable;
use flotilla_types::port::Protocol;
use flotilla_types::Subnet;

/// The name of the tables this module writes, in every family.
pub const TABLE: &str = "flotilla";

/// One network wired on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WiredNetwork {
    pub vni: u32,
    pub subnet: Subnet,
    pub internal: bool,
    pub encrypted: bool,
}

/// A node port forwarded to a task's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    pub protocol: Protocol,
    pub node_port: u16,
    pub addr: Ipv4Addr,
    pub target: u16,
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// One DNAT rule per forward into `out`, each for packets that match
/// `matching` and are to one of the node's own addresses.
fn dnat_rules(out: &mut String, matching: &str, forwards: &[Forward]) {
    for f in forwards {
        let _ = writeln!(
            out,
            "\t\t{matching} fib daddr type local {p} dport {n} dnat to {a}:{t}",
            p = proto(f.protocol),
            n = f.node_port,
            a = f.addr,
            t = f.target
        );
    }
}

/// The script that replaces table `family flotilla` with `body`.
fn replace(family: &str, body: &str) -> String {
    format!("table {family} {TABLE} {{}}\ndelete table {family} {TABLE}\ntable {family} {TABLE} {{\n{body}}}\n")
}

/// Tasks' TCP connections to the virtual addresses each network's bridge
/// holds, sent (any port) to the node's proxy listening on `port`
/// (`crate::vips`), each at its own virtual address.
///
/// Not a `redirect` to the bridge's own address: that folds the
/// connections to every virtual address onto one address pair at the
/// proxy, and a task's new connection to another service, from a source
/// port it had used a moment ago, met the proxy's TIME_WAIT socket of the
/// old one; its timestamps (their offset is drawn per address and port
/// pair) fail that socket's check (PAWS), and the connect was reset and
/// retried (seen in `flotilla-bench overlay`: from 5,000 to under 1,000
/// connections per second over five rounds). What still folds: the ports of one virtual
/// address. TPROXY, which folds nothing, loses its socket on a bridge
/// whose frames pass `br_netfilter` (as they do where Docker runs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipRedirect {
    pub port: u16,
    pub vips: BTreeMap<u32, BTreeSet<Ipv4Addr>>,
}

/// The node's rules for `networks` and `forwards`, and the redirect of
/// virtual addresses when the node has the proxy; with neither networks
/// nor forwards, a script that removes the tables.
pub fn node_rules(
    networks: &[WiredNetwork],
    forwards: &[Forward],
    redirect: Option<&VipRedirect>,
) -> String {
    if networks.is_empty() && forwards.is_empty() {
        return remove_node_rules();
    }
    let mut nat = String::new();
    let _ = writeln!(
        nat,
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority -100; policy accept;"
    );
    dnat_rules(&mut nat, "iifname != \"flbr*\"", forwards);
    if let Some(r) = redirect {
        for (vni, vips) in &r.vips {
            for vip in vips {
                let _ = writeln!(
                    nat,
                    "\t\tiifname \"flbr{vni}\" ip daddr {vip} meta l4proto tcp dnat to {vip}:{port}",
                    port = r.port
                );
            }
        }
    }
    nat.push_str("\t}\n");
    let _ = writeln!(
        nat,
        "\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;"
    );
    dnat_rules(&mut nat, "ip daddr != 127.0.0.0/8", forwards);
    nat.push_str("\t}\n");
    let _ = writeln!(
        nat,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;"
    );
    nat.push_str("\t\toifname \"flbr*\" ct status dnat masquerade\n");
    for n in networks.iter().filter(|n| !n.internal) {
        let _ = writeln!(
            nat,
            "\t\tip saddr {s} oifname != \"flbr*\" masquerade",
            s = n.subnet
        );
    }
    nat.push_str("\t}\n");

    let all = networks
        .iter()
        .map(|n| n.subnet.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut filter = String::new();
    let _ = writeln!(
        filter,
        "\tchain forward {{\n\t\ttype filter hook forward priority 0; policy accept;"
    );
    filter.push_str("\t\tct status dnat accept\n");
    for n in networks {
        let _ = writeln!(filter, "\t\tip saddr {s} ip daddr {s} accept", s = n.subnet);
    }
    if !networks.is_empty() {
        let _ = writeln!(
            filter,
            "\t\tip daddr {{ {all} }} ct state established,related accept"
        );
        let _ = writeln!(filter, "\t\tip daddr {{ {all} }} drop");
    }
    for n in networks.iter().filter(|n| n.internal) {
        let _ = writeln!(filter, "\t\tip saddr {s} drop", s = n.subnet);
    }
    filter.push_str("\t}\n");

    let arp = "\tchain output {\n\t\ttype filter hook output priority 0; policy accept;\n\t\toifname \"flvx*\" drop\n\t\toifname \"flvt*\" drop\n\t}\n";
    let mut out = replace("ip", &format!("{nat}{filter}"));
    out.push_str(&replace("bridge", arp));
    out
}

/// The script that removes the node's tables (whether or not they exist).
pub fn remove_node_rules() -> String {
    format!(
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n"
    )
}

/// What a task's namespace forwards: each virtual address on its
/// networks, with the ready tasks behind it (none: refused).
pub fn task_vips(table: &NetworkTable, networks: &[String]) -> BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
    let mut out = BTreeMap::new();
    for network in table
        .networks
        .iter()
        .filter(|n| networks.contains(&n.network_id))
    {
        for name in &network.services {
            let Some(vip) = name.vip else { continue };
            out.insert(vip, network.ready_addrs(&name.service_id));
        }
    }
    out
}

/// The script of a task's namespace for `vips` ([`task_vips`]). With
/// `proxied`, TCP is left to the node's proxy ([`VipRedirect`]) and only
/// the other protocols are forwarded here.
pub fn task_rules(vips: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>, proxied: bool) -> String {
    let mut body = String::new();
    body.push_str("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n");
    let which = if proxied { " meta l4proto != tcp" } else { "" };
    for (vip, ready) in vips {
        match ready.as_slice() {
            [] => {}
            [one] => {
                let _ = writeln!(body, "\t\tip daddr {vip}{which} dnat to {one}");
            }
            many => {
                let map = many
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("{i} : {a}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = writeln!(
                    body,
                    "\t\tip daddr {vip}{which} dnat to numgen random mod {} map {{ {map} }}",
                    many.len()
                );
            }
        }
    }
    body.push_str("\t}\n");
    body.push_str("\tchain refuse {\n\t\ttype filter hook output priority 0; policy accept;\n");
    for (vip, _) in vips.iter().filter(|(_, r)| r.is_empty()) {
        let _ = writeln!(
            body,
            "\t\tip daddr {vip} meta l4proto tcp reject with tcp reset"
        );
        let _ = writeln!(body, "\t\tip daddr {vip} reject");
    }
    body.push_str("\t}\n");
    replace("ip", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{endpoint, name, network};
    use flotilla_types::network::{NameEntry, NetworkEntry};

    fn net(vni: u32, subnet: &str, internal: bool) -> WiredNetwork {
        WiredNetwork {
            vni,
            subnet: subnet.parse().expect("subnet"),
            internal,
            encrypted: false,
        }
    }

    #[test]
    fn the_node_forwards_its_ports_and_keeps_networks_apart() {
        let rules = node_rules(
            &[
                net(4096, "10.64.0.0/19", false),
                net(4097, "10.64.32.0/19", true),
            ],
            &[Forward {
                protocol: Protocol::Tcp,
                node_port: 30001,
                addr: Ipv4Addr::new(10, 64, 0, 3),
                target: 8080,
            }],
            Some(&VipRedirect {
                port: 40001,
                vips: BTreeMap::from([
                    (
                        4096,
                        BTreeSet::from([Ipv4Addr::new(10, 64, 0, 2), Ipv4Addr::new(10, 64, 0, 9)]),
                    ),
                    (4097, BTreeSet::new()),
                ]),
            }),
        );
        // Replaced whole, in one script.
        assert!(rules.starts_with("table ip flotilla {}\ndelete table ip flotilla\n"));
        assert!(rules.contains(
            "iifname != \"flbr*\" fib daddr type local tcp dport 30001 dnat to 10.64.0.3:8080"
        ));
        assert!(rules.contains(
            "ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 30001 dnat to 10.64.0.3:8080"
        ));
        // Same network passes; across networks and from outside, dropped.
        assert!(rules.contains("ip saddr 10.64.0.0/19 ip daddr 10.64.0.0/19 accept"));
        assert!(rules.contains("ip daddr { 10.64.0.0/19, 10.64.32.0/19 } drop"));
        // Only the network that is not internal has a way out.
        assert!(rules.contains("ip saddr 10.64.0.0/19 oifname != \"flbr*\" masquerade"));
        assert!(!rules.contains("ip saddr 10.64.32.0/19 oifname"));
        assert!(rules.contains("ip saddr 10.64.32.0/19 drop"));
        assert!(rules.contains("oifname \"flvx*\" drop"));
        // TCP to a network's virtual addresses goes to the proxy, from that
        // network's bridge only.
        for vip in ["10.64.0.2", "10.64.0.9"] {
            assert!(rules.contains(&format!(
                "iifname \"flbr4096\" ip daddr {vip} meta l4proto tcp dnat to {vip}:40001"
            )));
        }
        assert!(!rules.contains("flbr4097\" ip daddr"));
        // Nothing wired: the tables go.
        assert_eq!(node_rules(&[], &[], None), remove_node_rules());
    }

    #[test]
    fn a_task_reaches_the_ready_tasks_behind_each_virtual_address_of_its_networks() {
        let table = NetworkTable {
            networks: vec![
                NetworkEntry {
                    services: vec![name("web", Some(2)), name("db", Some(3)), name("rr", None)],
                    endpoints: vec![
                        endpoint("w1", "web", 11, true),
                        endpoint("w2", "web", 10, true),
                        endpoint("w3", "web", 12, false),
                        endpoint("d1", "db", 20, false),
                        endpoint("r1", "rr", 30, true),
                    ],
                    ..network("front", 4096, "10.0.9.0/24")
                },
                NetworkEntry {
                    services: vec![NameEntry {
                        vip: Some(Ipv4Addr::new(10, 0, 8, 2)),
                        ..name("other", Some(2))
                    }],
                    ..network("back", 4097, "10.0.8.0/24")
                },
            ],
        };
        let vips = task_vips(&table, &["front".to_string()]);
        assert_eq!(vips.len(), 2, "no VIP of dnsrr, none of another network");
        let web = Ipv4Addr::new(10, 0, 9, 2);
        assert_eq!(
            vips[&web],
            vec![Ipv4Addr::new(10, 0, 9, 10), Ipv4Addr::new(10, 0, 9, 11)]
        );
        let rules = task_rules(&vips, false);
        assert!(rules.contains(
            "ip daddr 10.0.9.2 dnat to numgen random mod 2 map { 0 : 10.0.9.10, 1 : 10.0.9.11 }"
        ));
        // With the node's proxy, TCP goes to it (and is retried there);
        // the kernel forwards the rest.
        let proxied = task_rules(&vips, true);
        assert!(proxied.contains(
            "ip daddr 10.0.9.2 meta l4proto != tcp dnat to numgen random mod 2 map { 0 : 10.0.9.10, 1 : 10.0.9.11 }"
        ));
        assert!(proxied.contains("ip daddr 10.0.9.3 meta l4proto tcp reject with tcp reset"));
        // db has no ready task: refused, not left to time out.
        assert!(rules.contains("ip daddr 10.0.9.3 meta l4proto tcp reject with tcp reset"));
        assert!(!rules.contains("ip daddr 10.0.9.3 dnat"));
    }
}
