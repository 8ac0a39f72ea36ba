//! The node's network wiring: what the kernel must hold for the tasks of
//! this node to reach the tasks of their networks on any node.
//!
//! Per network with a task on this node: a Linux bridge holding the
//! network's gateway address (`.1` of its subnet) and a VXLAN device (the
//! network's VNI, UDP port [`VXLAN_PORT`], address learning off) in that
//! bridge, with one flood entry per other node that runs a task of the
//! network, so that ARP and unknown unicast reach every peer. A task gets
//! a network namespace with one veth per network, its address there and,
//! unless the network is internal, a default route through the gateway.
//!
//! [`wanted`] and [`steps`] are pure (what the table asks of this node, and
//! the changes from what it has), and so are the `ip` command lines of each
//! step ([`Step::commands`], [`attach_task`]); an [`Ip`] runs them, so that
//! tests without root check the decisions and a test with root checks
//! that the kernel carries packets across nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;

use flotilla_types::network::NetworkTable;
use flotilla_types::Subnet;
use thiserror::Error;

/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;

/// The MTU of a task's interfaces: a 1500-byte underlay less VXLAN's 50
/// bytes (outer Ethernet, IP, UDP and VXLAN headers), the MTU the kernel
/// gives a VXLAN device without a lower device. A larger frame from a
/// task would be dropped by the bridge, not fragmented.
pub const OVERLAY_MTU: u32 = 1450;

/// Why the wiring could not be changed.
#[derive(Debug, Error)]
pub enum WiringError {
    #[error("cannot run ip: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("ip {command}: {stderr}")]
    Failed { command: String, stderr: String },
}

/// One network as this node wires it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkWiring {
    pub vni: u32,
    pub subnet: Subnet,
    /// The other nodes with a task on the network.
    pub peers: BTreeSet<IpAddr>,
}

/// The bridge of network `vni` (at most 15 bytes, as Linux wants).
pub fn bridge_name(vni: u32) -> String {
    format!("flbr{vni}")
}

/// The VXLAN device of network `vni`.
pub fn vxlan_name(vni: u32) -> String {
    format!("flvx{vni}")
}

/// What the table asks of node `node_id`: every network with a task on
/// it, keyed by VNI, with the other nodes that run one of its tasks.
pub fn wanted(table: &NetworkTable, node_id: &str) -> BTreeMap<u32, NetworkWiring> {
    let mut out = BTreeMap::new();
    for network in &table.networks {
        let here = network
            .endpoints
            .iter()
            .any(|e| e.node_id.as_deref() == Some(node_id));
        if !here {
            continue;
        }
        let peers = network
            .endpoints
            .iter()
            .filter(|e| e.node_id.as_deref() != Some(node_id))
            .filter_map(|e| e.node_addr)
            .collect();
        out.insert(
            network.vni,
            NetworkWiring {
                vni: network.vni,
                subnet: network.subnet,
                peers,
            },
        );
    }
    out
}

/// A change to the node's wiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The bridge with the gateway address, and the VXLAN device from
    /// `local` in it.
    AddNetwork {
        vni: u32,
        subnet: Subnet,
        local: IpAddr,
    },
    AddPeer {
        vni: u32,
        peer: IpAddr,
    },
    RemovePeer {
        vni: u32,
        peer: IpAddr,
    },
    /// Both devices (a task's veth in the bridge goes with its namespace).
    RemoveNetwork {
        vni: u32,
    },
}

/// The steps from `have` to `want`, on the node at `local`: networks
/// removed first, then added, then their peers.
pub fn steps(
    have: &BTreeMap<u32, NetworkWiring>,
    want: &BTreeMap<u32, NetworkWiring>,
    local: IpAddr,
) -> Vec<Step> {
    let mut out = Vec::new();
    for vni in have.keys().filter(|v| !want.contains_key(v)) {
        out.push(Step::RemoveNetwork { vni: *vni });
    }
    for (vni, w) in want {
        let before = have.get(vni).filter(|h| h.subnet == w.subnet);
        if before.is_none() {
            if have.contains_key(vni) {
                // Same VNI, another subnet: made again.
                out.push(Step::RemoveNetwork { vni: *vni });
            }
            out.push(Step::AddNetwork {
                vni: *vni,
                subnet: w.subnet,
                local,
            });
        }
        let known = before.map(|h| h.peers.clone()).unwrap_or_default();
        for peer in known.difference(&w.peers) {
            out.push(Step::RemovePeer {
                vni: *vni,
                peer: *peer,
            });
        }
        for peer in w.peers.difference(&known) {
            out.push(Step::AddPeer {
                vni: *vni,
                peer: *peer,
            });
        }
    }
    out
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

impl Step {
    /// The `ip` and `bridge` command lines of this step (the first word
    /// is the program).
    pub fn commands(&self) -> Vec<Vec<String>> {
        match self {
            Step::AddNetwork { vni, subnet, local } => {
                let (br, vx) = (bridge_name(*vni), vxlan_name(*vni));
                let gateway = format!("{}/{}", subnet.gateway(), subnet.prefix);
                let (id, port, local) =
                    (vni.to_string(), VXLAN_PORT.to_string(), local.to_string());
                vec![
                    argv(&["ip", "link", "add", &br, "type", "bridge"]),
                    argv(&["ip", "addr", "add", &gateway, "dev", &br]),
                    argv(&[
                        "ip",
                        "link",
                        "add",
                        &vx,
                        "type",
                        "vxlan",
                        "id",
                        &id,
                        "local",
                        &local,
                        "dstport",
                        &port,
                        "nolearning",
                    ]),
                    argv(&["ip", "link", "set", &vx, "master", &br]),
                    argv(&["ip", "link", "set", &vx, "up"]),
                    argv(&["ip", "link", "set", &br, "up"]),
                ]
            }
            Step::AddPeer { vni, peer } => vec![argv(&[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &vxlan_name(*vni),
                "dst",
                &peer.to_string(),
            ])],
            Step::RemovePeer { vni, peer } => vec![argv(&[
                "bridge",
                "fdb",
                "del",
                "00:00:00:00:00:00",
                "dev",
                &vxlan_name(*vni),
                "dst",
                &peer.to_string(),
            ])],
            Step::RemoveNetwork { vni } => vec![
                argv(&["ip", "link", "del", &vxlan_name(*vni)]),
                argv(&["ip", "link", "del", &bridge_name(*vni)]),
            ],
        }
    }
}

/// How a task joins one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub vni: u32,
    pub subnet: Subnet,
    pub addr: std::net::Ipv4Addr,
    /// No default route through this network (internal, or not the task's
    /// first network).
    pub no_route: bool,
}

/// The command lines that give the task's namespace `task_ns` (made by the
/// first) its interface `index` (`eth{index}`) on the network of `a`: a
/// veth whose node end (`host_if`, at most 15 bytes) sits in the bridge.
pub fn attach_task(task_ns: &str, index: usize, host_if: &str, a: &Attachment) -> Vec<Vec<String>> {
    let peer = format!("{host_if}p");
    let eth = format!("eth{index}");
    let cidr = format!("{}/{}", a.addr, a.subnet.prefix);
    let mtu = OVERLAY_MTU.to_string();
    let mut out = Vec::new();
    if index == 0 {
        out.push(argv(&["ip", "netns", "add", task_ns]));
        out.push(argv(&["ip", "-n", task_ns, "link", "set", "lo", "up"]));
    }
    out.extend([
        argv(&[
            "ip", "link", "add", host_if, "mtu", &mtu, "type", "veth", "peer", "name", &peer,
            "mtu", &mtu,
        ]),
        argv(&["ip", "link", "set", host_if, "master", &bridge_name(a.vni)]),
        argv(&["ip", "link", "set", host_if, "up"]),
        argv(&["ip", "link", "set", &peer, "netns", task_ns]),
        argv(&["ip", "-n", task_ns, "link", "set", &peer, "name", &eth]),
        argv(&["ip", "-n", task_ns, "addr", "add", &cidr, "dev", &eth]),
        argv(&["ip", "-n", task_ns, "link", "set", &eth, "up"]),
    ]);
    if !a.no_route {
        let gw = a.subnet.gateway().to_string();
        out.push(argv(&[
            "ip", "-n", task_ns, "route", "add", "default", "via", &gw,
        ]));
    }
    out
}

/// The command that removes a task's namespace (its veths go with it).
pub fn detach_task(task_ns: &str) -> Vec<String> {
    argv(&["ip", "netns", "del", task_ns])
}

/// Runs command lines, in the node's network namespace or (in tests) in
/// the one named.
pub trait Ip: Send + Sync {
    fn run(&self, argv: &[String]) -> Result<(), WiringError>;
}

/// Runs `ip` and `bridge` for real; with `netns`, inside that namespace
/// (`ip netns exec`), as a test's node does.
#[derive(Debug, Clone, Default)]
pub struct System {
    pub netns: Option<String>,
}

impl Ip for System {
    fn run(&self, argv: &[String]) -> Result<(), WiringError> {
        let mut command = match &self.netns {
            // Namespaces are global names: a task namespace made from a
            // test's node namespace is still found by name.
            Some(ns) if argv.get(1).map(String::as_str) != Some("netns") => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c.args(argv);
                c
            }
            _ => {
                let mut c = Command::new(argv.first().map(String::as_str).unwrap_or("ip"));
                c.args(argv.iter().skip(1));
                c
            }
        };
        let out = command.output().map_err(WiringError::Spawn)?;
        if !out.status.success() {
            return Err(WiringError::Failed {
                command: argv.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// `FLOTILLA_NO_OVERLAY=REASON` in the daemon's environment: the node
/// says it cannot run tasks on overlay networks, for that reason (an
/// operator's way to keep such tasks off a node, and the tests' way to
/// have such a node).
pub fn overridden() -> Option<String> {
    std::env::var("FLOTILLA_NO_OVERLAY")
        .ok()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
}

/// How long [`probe`] may take before the node says it cannot wire.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether this node can wire overlay networks: as root, with iproute2,
/// in a kernel with VXLAN and bridges (tried in a namespace of its own,
/// removed after). The reason when not.
pub fn probe(ip: &dyn Ip) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the daemon does not run as root, which wiring networks needs".into());
    }
    let ns = format!("flprobe{}", std::process::id());
    ip.run(&argv(&["ip", "netns", "add", &ns]))
        .map_err(|e| format!("cannot make a network namespace: {e}"))?;
    let result = ip
        .run(&argv(&[
            "ip",
            "-n",
            &ns,
            "link",
            "add",
            "flprobevx",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "4789",
        ]))
        .map_err(|e| format!("no VXLAN in this kernel: {e}"))
        .and_then(|()| {
            ip.run(&argv(&[
                "ip",
                "-n",
                &ns,
                "link",
                "add",
                "flprobebr",
                "type",
                "bridge",
            ]))
            .map_err(|e| format!("no bridges in this kernel: {e}"))
        });
    let _ = ip.run(&argv(&["ip", "netns", "del", &ns]));
    result
}

/// Brings the kernel from `have` toward `want` on the node at `local`
/// and returns what it holds after, with the first error. Removals are
/// best effort (a device already gone is gone); a network whose adding
/// fails is removed again (whatever part of it was made) and left out, so
/// the next call makes it whole; a peer that fails is left out too.
pub fn converge(
    ip: &dyn Ip,
    have: &BTreeMap<u32, NetworkWiring>,
    want: &BTreeMap<u32, NetworkWiring>,
    local: IpAddr,
) -> (BTreeMap<u32, NetworkWiring>, Option<WiringError>) {
    let mut now = have.clone();
    let mut first_error = None;
    let run_all = |step: &Step| -> Result<(), WiringError> {
        for command in step.commands() {
            ip.run(&command)?;
        }
        Ok(())
    };
    for step in steps(have, want, local) {
        match &step {
            Step::RemoveNetwork { vni } => {
                for command in step.commands() {
                    let _ = ip.run(&command);
                }
                now.remove(vni);
            }
            Step::RemovePeer { vni, peer } => {
                let _ = run_all(&step);
                if let Some(w) = now.get_mut(vni) {
                    w.peers.remove(peer);
                }
            }
            Step::AddNetwork { vni, subnet, .. } => match run_all(&step) {
                Ok(()) => {
                    now.insert(
                        *vni,
                        NetworkWiring {
                            vni: *vni,
                            subnet: *subnet,
                            peers: BTreeSet::new(),
                        },
                    );
                }
                Err(e) => {
                    for command in (Step::RemoveNetwork { vni: *vni }).commands() {
                        let _ = ip.run(&command);
                    }
                    first_error.get_or_insert(e);
                }
            },
            Step::AddPeer { vni, peer } => {
                let Some(w) = now.get_mut(vni) else {
                    // Its network was not made: nothing to add it to.
                    continue;
                };
                match run_all(&step) {
                    Ok(()) => {
                        w.peers.insert(*peer);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
    }
    (now, first_error)
}

/// Keeps the node's wiring in step with the network tables of `table`,
/// for node `node_id` at `local`, until `shutdown`, which removes what it
/// made. What fails is tried again at the next table or after [`RETRY`].
pub async fn follow(
    mut table: tokio::sync::watch::Receiver<NetworkTable>,
    node_id: String,
    local: IpAddr,
    ip: std::sync::Arc<dyn Ip>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut have: BTreeMap<u32, NetworkWiring> = BTreeMap::new();
    let mut said: Option<String> = None;
    loop {
        let want = wanted(&table.borrow_and_update(), &node_id);
        if have != want {
            let (runner, from) = (ip.clone(), have.clone());
            let target = want.clone();
            let done =
                tokio::task::spawn_blocking(move || converge(&*runner, &from, &target, local))
                    .await;
            match done {
                Ok((now, error)) => {
                    have = now;
                    match error {
                        Some(e) => {
                            let text = e.to_string();
                            if said.as_deref() != Some(text.as_str()) {
                                tracing::warn!(error = %text, "cannot wire the node's networks; retrying");
                                said = Some(text);
                            }
                        }
                        None => {
                            said = None;
                            tracing::info!(networks = have.len(), "network wiring updated");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the network wiring task failed"),
            }
        }
        let retry = have != want;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = table.changed() => {
                if changed.is_err() {
                    shutdown.cancelled().await;
                    break;
                }
            }
            _ = tokio::time::sleep(RETRY), if retry => {}
        }
    }
    let _ =
        tokio::task::spawn_blocking(move || converge(&*ip, &have, &BTreeMap::new(), local)).await;
}

/// How soon a wiring change that failed is tried again.
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs every command of `steps` in order; the first failure stops.
pub fn apply(ip: &dyn Ip, steps: &[Step]) -> Result<(), WiringError> {
    for step in steps {
        for command in step.commands() {
            ip.run(&command)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::network::{Endpoint, NetworkEntry};

    fn endpoint(task: &str, node: &str, node_ip: &str, last: u8) -> Endpoint {
        Endpoint {
            task_id: task.into(),
            service_id: "s".into(),
            addr: std::net::Ipv4Addr::new(10, 0, 9, last),
            node_id: Some(node.into()),
            node_addr: Some(node_ip.parse().expect("ip")),
            ready: true,
        }
    }

    fn table(endpoints: Vec<Endpoint>) -> NetworkTable {
        NetworkTable {
            networks: vec![NetworkEntry {
                network_id: "n".into(),
                name: "front".into(),
                subnet: "10.0.9.0/24".parse().expect("subnet"),
                vni: 4096,
                internal: false,
                encrypted: false,
                services: vec![],
                endpoints,
            }],
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn a_node_wires_the_networks_of_its_tasks_with_every_other_node_as_peer() {
        let t = table(vec![
            endpoint("a", "n1", "192.168.0.1", 3),
            endpoint("b", "n2", "192.168.0.2", 4),
            endpoint("c", "n3", "192.168.0.3", 5),
        ]);
        let want = wanted(&t, "n1");
        assert_eq!(want.len(), 1);
        assert_eq!(
            want[&4096].peers,
            [ip("192.168.0.2"), ip("192.168.0.3")].into_iter().collect()
        );
        assert!(wanted(&t, "n9").is_empty(), "no task here, no wiring");
        let local = ip("192.168.0.1");
        let first = steps(&BTreeMap::new(), &want, local);
        assert_eq!(first.len(), 3);
        assert!(matches!(first[0], Step::AddNetwork { vni: 4096, .. }));
        // Nothing to do once wired; a peer that leaves is removed.
        assert!(steps(&want, &want, local).is_empty());
        let fewer = wanted(
            &table(vec![
                endpoint("a", "n1", "192.168.0.1", 3),
                endpoint("b", "n2", "192.168.0.2", 4),
            ]),
            "n1",
        );
        assert_eq!(
            steps(&want, &fewer, local),
            vec![Step::RemovePeer {
                vni: 4096,
                peer: ip("192.168.0.3")
            }]
        );
        assert_eq!(
            steps(&want, &BTreeMap::new(), local),
            vec![Step::RemoveNetwork { vni: 4096 }]
        );
    }

    /// Runs nothing and fails every command: a node without `ip`.
    struct NoIp;

    impl Ip for NoIp {
        fn run(&self, argv: &[String]) -> Result<(), WiringError> {
            Err(WiringError::Failed {
                command: argv.join(" "),
                stderr: "not found".into(),
            })
        }
    }

    /// Records commands; fails those that contain `fail`.
    struct Fake {
        fail: String,
        ran: std::sync::Mutex<Vec<String>>,
    }

    impl Ip for Fake {
        fn run(&self, argv: &[String]) -> Result<(), WiringError> {
            let line = argv.join(" ");
            self.ran.lock().expect("ran").push(line.clone());
            if !self.fail.is_empty() && line.contains(&self.fail) {
                return Err(WiringError::Failed {
                    command: line,
                    stderr: "RTNETLINK answers: File exists".into(),
                });
            }
            Ok(())
        }
    }

    #[test]
    fn a_network_that_fails_half_made_is_removed_and_made_again_next_time() {
        let want = wanted(
            &table(vec![
                endpoint("a", "n1", "192.168.0.1", 3),
                endpoint("b", "n2", "192.168.0.2", 4),
            ]),
            "n1",
        );
        let local = ip("192.168.0.1");
        // The VXLAN device exists already (a daemon killed before it
        // cleaned up): the bridge made before it is removed again.
        let ip_ = Fake {
            fail: "type vxlan".into(),
            ran: Default::default(),
        };
        let (now, error) = converge(&ip_, &BTreeMap::new(), &want, local);
        assert!(now.is_empty(), "{now:?}");
        assert!(error.is_some_and(|e| e.to_string().contains("File exists")));
        let ran = ip_.ran.lock().expect("ran").clone();
        assert!(ran.iter().any(|l| l == "ip link del flbr4096"), "{ran:?}");
        assert!(
            !ran.iter().any(|l| l.starts_with("bridge fdb append")),
            "no peer without its network"
        );
        // Next time all goes through: the whole network and its peer.
        let ok = Fake {
            fail: String::new(),
            ran: Default::default(),
        };
        let (now, error) = converge(&ok, &BTreeMap::new(), &want, local);
        assert!(error.is_none());
        assert_eq!(now, want);
        // Removing is best effort: a device already gone does not stop it.
        let gone = Fake {
            fail: "link del".into(),
            ran: Default::default(),
        };
        let (now, _) = converge(&gone, &want, &BTreeMap::new(), local);
        assert!(now.is_empty());
    }

    #[test]
    fn the_probe_says_why_a_node_cannot_wire() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let err = probe(&NoIp).unwrap_err();
        if root {
            assert!(
                err.starts_with("cannot make a network namespace: ip ip netns add"),
                "{err}"
            );
        } else {
            assert!(err.contains("does not run as root"), "{err}");
        }
    }

    #[test]
    fn the_commands_name_the_devices_and_the_gateway() {
        let add = Step::AddNetwork {
            vni: 4096,
            subnet: "10.0.9.0/24".parse().expect("subnet"),
            local: ip("192.168.0.1"),
        };
        let lines: Vec<String> = add.commands().iter().map(|c| c.join(" ")).collect();
        assert!(lines.contains(&"ip addr add 10.0.9.1/24 dev flbr4096".to_string()));
        assert!(lines.contains(
            &"ip link add flvx4096 type vxlan id 4096 local 192.168.0.1 dstport 4789 nolearning"
                .to_string()
        ));
        assert!(bridge_name(16_777_215).len() <= 15);
        let a = Attachment {
            vni: 4096,
            subnet: "10.0.9.0/24".parse().expect("subnet"),
            addr: std::net::Ipv4Addr::new(10, 0, 9, 3),
            no_route: false,
        };
        let lines: Vec<String> = attach_task("fltask", 0, "flt1", &a)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(lines[0], "ip netns add fltask");
        assert!(lines.contains(&"ip -n fltask addr add 10.0.9.3/24 dev eth0".to_string()));
        assert_eq!(
            lines.last().map(String::as_str),
            Some("ip -n fltask route add default via 10.0.9.1")
        );
        // A second, internal network: the same namespace, no route out.
        let internal = Attachment {
            no_route: true,
            ..a
        };
        let lines: Vec<String> = attach_task("fltask", 1, "flt2", &internal)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert!(lines
            .iter()
            .all(|l| !l.contains("route") && l != "ip netns add fltask"));
        assert!(lines.contains(&"ip -n fltask link set flt2p name eth1".to_string()));
    }
}
