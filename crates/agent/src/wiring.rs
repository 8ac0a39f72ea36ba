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

use crate::netfilter::{node_rules, task_rules, task_vips, Forward, WiredNetwork};
use crate::taskns::LocalTask;

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
    /// No way out of the network (its rules, not its devices).
    pub internal: bool,
    /// Encrypted: a TAP device and the node's tunnel instead of VXLAN
    /// ([`crate::sealed`]), with this key (hex; none yet: not wired, never
    /// in clear).
    pub encrypted: bool,
    pub key: Option<String>,
    /// The other nodes with a task on the network.
    pub peers: BTreeSet<IpAddr>,
    /// Each task of the network on another node, by address, with its
    /// node: a forwarding entry for its MAC, so that a frame to it goes to
    /// its node alone rather than to every peer.
    pub remote: BTreeMap<std::net::Ipv4Addr, IpAddr>,
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
        out.insert(
            network.vni,
            NetworkWiring {
                vni: network.vni,
                subnet: network.subnet,
                internal: network.internal,
                encrypted: network.encrypted,
                key: network.key.clone(),
                peers: peers_of(network, node_id),
                remote: remote_of(network, node_id),
            },
        );
    }
    out
}

/// The other nodes with a task of `network`.
fn peers_of(network: &flotilla_types::network::NetworkEntry, node_id: &str) -> BTreeSet<IpAddr> {
    network
        .endpoints
        .iter()
        .filter(|e| e.node_id.as_deref() != Some(node_id))
        .filter_map(|e| e.node_addr)
        .collect()
}

/// The tasks of `network` on other nodes, with their nodes.
fn remote_of(
    network: &flotilla_types::network::NetworkEntry,
    node_id: &str,
) -> BTreeMap<std::net::Ipv4Addr, IpAddr> {
    network
        .endpoints
        .iter()
        .filter(|e| e.node_id.as_deref() != Some(node_id))
        .filter_map(|e| Some((e.addr, e.node_addr?)))
        .collect()
}

/// A change to the node's wiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The bridge with the gateway address, and the VXLAN device from
    /// `local` in it (for a `sealed` network the tunnel adds its TAP
    /// device instead).
    AddNetwork {
        vni: u32,
        subnet: Subnet,
        local: IpAddr,
        sealed: bool,
    },
    /// A flood entry (a sealed network's peers are the tunnel's: no
    /// command).
    AddPeer {
        vni: u32,
        peer: IpAddr,
        sealed: bool,
    },
    RemovePeer {
        vni: u32,
        peer: IpAddr,
        sealed: bool,
    },
    /// The forwarding entry of a remote task's MAC (made from its
    /// address) to its node (none on a sealed network: the tunnel routes).
    SetRemote {
        vni: u32,
        addr: std::net::Ipv4Addr,
        node: IpAddr,
        sealed: bool,
    },
    RemoveRemote {
        vni: u32,
        addr: std::net::Ipv4Addr,
        sealed: bool,
    },
    /// Both devices (a task's veth in the bridge goes with its namespace).
    RemoveNetwork { vni: u32 },
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
        let sealed = w.encrypted;
        let before = have
            .get(vni)
            .filter(|h| h.subnet == w.subnet && h.encrypted == w.encrypted);
        if before.is_none() {
            if have.contains_key(vni) {
                // Same VNI, another subnet: made again.
                out.push(Step::RemoveNetwork { vni: *vni });
            }
            out.push(Step::AddNetwork {
                vni: *vni,
                subnet: w.subnet,
                local,
                sealed,
            });
        }
        let known = before.map(|h| h.peers.clone()).unwrap_or_default();
        for peer in known.difference(&w.peers) {
            out.push(Step::RemovePeer {
                vni: *vni,
                peer: *peer,
                sealed,
            });
        }
        for peer in w.peers.difference(&known) {
            out.push(Step::AddPeer {
                vni: *vni,
                peer: *peer,
                sealed,
            });
        }
        let had = before.map(|h| h.remote.clone()).unwrap_or_default();
        for addr in had.keys().filter(|a| !w.remote.contains_key(a)) {
            out.push(Step::RemoveRemote {
                vni: *vni,
                addr: *addr,
                sealed,
            });
        }
        for (addr, node) in w.remote.iter().filter(|(a, n)| had.get(a) != Some(n)) {
            out.push(Step::SetRemote {
                vni: *vni,
                addr: *addr,
                node: *node,
                sealed,
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
            Step::AddNetwork {
                vni,
                subnet,
                sealed: true,
                ..
            } => {
                let br = bridge_name(*vni);
                let gateway = format!("{}/{}", subnet.gateway(), subnet.prefix);
                let mac = task_mac(subnet.gateway());
                vec![
                    argv(&["ip", "link", "add", &br, "address", &mac, "type", "bridge"]),
                    argv(&["ip", "link", "set", &br, "address", &mac]),
                    argv(&["ip", "addr", "replace", &gateway, "dev", &br]),
                    argv(&["ip", "link", "set", &br, "up"]),
                ]
            }
            Step::AddPeer { sealed: true, .. }
            | Step::RemovePeer { sealed: true, .. }
            | Step::SetRemote { sealed: true, .. }
            | Step::RemoveRemote { sealed: true, .. } => Vec::new(),
            Step::SetRemote {
                vni, addr, node, ..
            } => vec![argv(&[
                "bridge",
                "fdb",
                "replace",
                &task_mac(*addr),
                "dev",
                &vxlan_name(*vni),
                "dst",
                &node.to_string(),
            ])],
            Step::RemoveRemote { vni, addr, .. } => vec![argv(&[
                "bridge",
                "fdb",
                "del",
                &task_mac(*addr),
                "dev",
                &vxlan_name(*vni),
            ])],
            Step::AddNetwork {
                vni, subnet, local, ..
            } => {
                let (br, vx) = (bridge_name(*vni), vxlan_name(*vni));
                let gateway = format!("{}/{}", subnet.gateway(), subnet.prefix);
                let mac = task_mac(subnet.gateway());
                let (id, port, local) =
                    (vni.to_string(), VXLAN_PORT.to_string(), local.to_string());
                vec![
                    // A bridge's own address follows its ports unless it
                    // is set: when a task's veth left, or the VXLAN device
                    // was made anew, the gateway's MAC changed under the
                    // tasks' ARP caches (names and the way out failed
                    // until they expired). Set, and made from the gateway.
                    argv(&["ip", "link", "add", &br, "address", &mac, "type", "bridge"]),
                    argv(&["ip", "link", "set", &br, "address", &mac]),
                    argv(&["ip", "addr", "replace", &gateway, "dev", &br]),
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
            Step::AddPeer { vni, peer, .. } => vec![argv(&[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &vxlan_name(*vni),
                "dst",
                &peer.to_string(),
            ])],
            Step::RemovePeer { vni, peer, .. } => vec![argv(&[
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
    /// The MTU of its interface: [`OVERLAY_MTU`], or
    /// [`crate::sealed::SEALED_MTU`] on an encrypted network.
    pub mtu: u32,
}

/// The Ethernet address of the task interface at `addr`: made from the
/// address (locally administered, `02:42:` and its four bytes, as the
/// container engine makes a container's), so that a
/// task that takes over an address, on any node, has the MAC its peers'
/// ARP caches hold for it, and none of them sends into the void until its
/// entry expires.
pub fn task_mac(addr: std::net::Ipv4Addr) -> String {
    let [x, y, a, b, c, d] = crate::sealed::mac_of(addr);
    format!("{x:02x}:{y:02x}:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The command lines that give the task's namespace `task_ns` (made by the
/// first) its interface `index` (`eth{index}`) on the network of `a`: a
/// veth whose node end (`host_if`, at most 15 bytes) sits in the bridge.
pub fn attach_task(task_ns: &str, index: usize, host_if: &str, a: &Attachment) -> Vec<Vec<String>> {
    let peer = format!("{host_if}p");
    let eth = format!("eth{index}");
    let cidr = format!("{}/{}", a.addr, a.subnet.prefix);
    let mtu = a.mtu.to_string();
    let mut out = Vec::new();
    if index == 0 {
        out.push(argv(&["ip", "netns", "add", task_ns]));
        out.push(argv(&["ip", "-n", task_ns, "link", "set", "lo", "up"]));
    }
    out.extend([
        argv(&[
            "ip",
            "link",
            "add",
            host_if,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "mtu",
            &mtu,
            "address",
            &task_mac(a.addr),
        ]),
        argv(&["ip", "link", "set", host_if, "master", &bridge_name(a.vni)]),
        argv(&["ip", "link", "set", host_if, "up"]),
        argv(&["ip", "link", "set", &peer, "netns", task_ns]),
        argv(&["ip", "-n", task_ns, "link", "set", &peer, "name", &eth]),
        argv(&["ip", "-n", task_ns, "addr", "add", &cidr, "dev", &eth]),
        argv(&["ip", "-n", task_ns, "link", "set", &eth, "up"]),
    ]);
    if a.mtu == crate::sealed::SEALED_MTU {
        // An encrypted network: the task's TCP builds bursts the tunnel
        // carries whole (more segments would be cut into frames first).
        let segs = crate::sealed::GSO_MAX_SEGS.to_string();
        out.push(argv(&["ip", "link", "set", host_if, "gso_max_segs", &segs]));
        out.push(argv(&[
            "ip",
            "-n",
            task_ns,
            "link",
            "set",
            &eth,
            "gso_max_segs",
            &segs,
        ]));
    }
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

    /// Loads an nftables script (`nft -f -`), in the node's namespace or,
    /// with `netns`, in that one (a task's).
    fn nft(&self, netns: Option<&str>, script: &str) -> Result<(), WiringError>;

    /// Turns on IPv4 forwarding in the node's namespace, which a task's
    /// way out and the node ports forwarded to tasks need.
    fn forward_ipv4(&self) -> Result<(), WiringError>;
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
        checked(&argv.join(" "), &out)
    }

    fn nft(&self, netns: Option<&str>, script: &str) -> Result<(), WiringError> {
        use std::io::Write as _;
        let mut command = match netns.or(self.netns.as_deref()) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nft", "-f", "-"]);
                c
            }
            None => {
                let mut c = Command::new("nft");
                c.args(["-f", "-"]);
                c
            }
        };
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().map_err(WiringError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(WiringError::Spawn)?;
        }
        let out = child.wait_with_output().map_err(WiringError::Spawn)?;
        let what = match netns {
            Some(ns) => format!("nft -f - (in {ns})"),
            None => "nft -f -".to_string(),
        };
        checked(&what, &out)
    }

    fn forward_ipv4(&self) -> Result<(), WiringError> {
        match &self.netns {
            None => std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
                WiringError::Failed {
                    command: "write /proc/sys/net/ipv4/ip_forward".into(),
                    stderr: e.to_string(),
                }
            }),
            Some(_) => self.run(&argv(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])),
        }
    }
}

/// An error naming `what` unless `out` says it succeeded.
fn checked(what: &str, out: &std::process::Output) -> Result<(), WiringError> {
    if !out.status.success() {
        return Err(WiringError::Failed {
            command: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
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
            Step::RemovePeer { vni, peer, .. } => {
                let _ = run_all(&step);
                if let Some(w) = now.get_mut(vni) {
                    w.peers.remove(peer);
                }
            }
            Step::AddNetwork { vni, subnet, .. } => match add_network(ip, &step) {
                Ok(()) => {
                    now.insert(
                        *vni,
                        NetworkWiring {
                            vni: *vni,
                            subnet: *subnet,
                            internal: want.get(vni).is_some_and(|w| w.internal),
                            encrypted: want.get(vni).is_some_and(|w| w.encrypted),
                            key: want.get(vni).and_then(|w| w.key.clone()),
                            peers: BTreeSet::new(),
                            remote: BTreeMap::new(),
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
            Step::AddPeer { vni, peer, .. } => {
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
            Step::RemoveRemote { vni, addr, .. } => {
                let _ = run_all(&step);
                if let Some(w) = now.get_mut(vni) {
                    w.remote.remove(addr);
                }
            }
            Step::SetRemote {
                vni, addr, node, ..
            } => {
                let Some(w) = now.get_mut(vni) else {
                    continue;
                };
                match run_all(&step) {
                    Ok(()) => {
                        w.remote.insert(*addr, *node);
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

/// Runs an [`Step::AddNetwork`]. A bridge that exists already is taken
/// as it is: a daemon killed without cleaning up left it, with the veths
/// of the tasks it left running (which the next agent adopts), and
/// removing it would cut them off. Its VXLAN device is made anew (its
/// flood and forwarding entries follow).
fn add_network(ip: &dyn Ip, step: &Step) -> Result<(), WiringError> {
    if let Step::AddNetwork { vni, .. } = step {
        let _ = ip.run(&argv(&["ip", "link", "del", &vxlan_name(*vni)]));
    }
    for command in step.commands() {
        let bridge = command.len() > 3
            && command[1] == "link"
            && command[2] == "add"
            && command[3].starts_with("flbr");
        match ip.run(&command) {
            Err(WiringError::Failed { stderr, .. }) if bridge && stderr.contains("File exists") => {
            }
            other => other?,
        }
    }
    Ok(())
}

/// What the wiring loop is given besides the table: who and where this
/// node is, how to change the kernel, the requests of the agent (the
/// namespaces of its tasks), and where to say which networks it holds.
pub struct Plumbing {
    pub node_id: String,
    pub local: IpAddr,
    pub ip: std::sync::Arc<dyn Ip>,
    pub requests: tokio::sync::mpsc::UnboundedReceiver<Request>,
    pub wired: tokio::sync::watch::Sender<Vec<WiredNetwork>>,
    /// The node's proxy for tasks' connections to virtual addresses; none:
    /// the tasks' own rules forward them in the kernel (no retry).
    pub vips: Option<crate::vips::VipPlumbing>,
    /// At shutdown, leave the devices and the node's rules in place for
    /// the tasks left running (`daemon --keep-tasks-on-stop`), as a crash
    /// leaves them; the next start takes them over.
    pub leave_on_stop: bool,
}

/// What the agent asks of the wiring loop. The loop is the only one to
/// change the node's network devices, so that a task's veth is never put
/// in a bridge that is being removed: a network is held while a task of
/// this node is registered on it, whatever the table says.
pub enum Request {
    /// Make the namespace of a task (running `commands`, after the networks
    /// of `task` are wired) and register it; the reply says whether it was.
    Attach {
        task_id: String,
        task: LocalTask,
        commands: Vec<Vec<String>>,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Register a task whose namespace exists (adopted after a restart).
    Adopt { task_id: String, task: LocalTask },
    /// Forget a task and remove its namespace.
    Detach {
        task_id: String,
        netns: String,
        reply: tokio::sync::oneshot::Sender<()>,
    },
}

/// The rules the kernel holds, as last loaded.
#[derive(Debug, Default)]
struct Loaded {
    node: Option<String>,
    tasks: BTreeMap<String, String>,
    forwarding: bool,
    /// The node's end of its encrypted networks, once it has one.
    tunnel: Option<std::sync::Arc<crate::sealed::Tunnel>>,
    /// When the engine's `DOCKER-USER` chain was last made to pass the
    /// networks' bridges.
    docker_user: Option<std::time::Instant>,
    /// The virtual addresses each bridge holds, as this run made them.
    bridge_vips: BTreeMap<u32, BTreeSet<std::net::Ipv4Addr>>,
}

/// How often the wiring loop looks again at the engine's `DOCKER-USER`
/// chain (an engine started after the daemon makes it later).
pub const DOCKER_USER_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The rules that let the networks' bridges through a Docker Engine's
/// `FORWARD` chain: the engine sets its policy to drop when it turned
/// forwarding on itself, and passes only its own bridges, so a process
/// task's traffic (between nodes, out, and to its forwarded node ports)
/// would be dropped there. Isolation stays ours: a drop in the node's
/// `ip flotilla` table wins over this accept.
pub fn docker_user_rules() -> Vec<Vec<String>> {
    vec![
        argv(&["-i", "flbr+", "-j", "ACCEPT"]),
        argv(&["-o", "flbr+", "-j", "ACCEPT"]),
    ]
}

/// Puts [`docker_user_rules`] at the head of `DOCKER-USER` when the chain
/// exists and lacks them.
fn pass_docker_user(ip: &dyn Ip) -> Result<(), WiringError> {
    if ip
        .run(&argv(&["iptables", "-w", "-n", "-L", "DOCKER-USER"]))
        .is_err()
    {
        return Ok(());
    }
    for rule in docker_user_rules() {
        let mut check = argv(&["iptables", "-w", "-C", "DOCKER-USER"]);
        check.extend(rule.iter().cloned());
        if ip.run(&check).is_ok() {
            continue;
        }
        let mut insert = argv(&["iptables", "-w", "-I", "DOCKER-USER", "1"]);
        insert.extend(rule);
        ip.run(&insert)?;
    }
    Ok(())
}

/// The command lines that put the tunnel's TAP device of encrypted
/// network `vni` (made by [`crate::sealed::Tunnel::add`]) in the
/// network's bridge: the sealed MTU, bursts the tunnel carries whole.
pub fn tap_commands(vni: u32) -> Vec<Vec<String>> {
    let (tap, br) = (crate::sealed::tap_name(vni), bridge_name(vni));
    let mtu = crate::sealed::SEALED_MTU.to_string();
    let segs = crate::sealed::GSO_MAX_SEGS.to_string();
    vec![
        argv(&[
            "ip",
            "link",
            "set",
            &tap,
            "mtu",
            &mtu,
            "gso_max_segs",
            &segs,
        ]),
        argv(&["ip", "link", "set", &tap, "master", &br]),
        argv(&["ip", "link", "set", &tap, "up"]),
    ]
}

/// Gives each encrypted network of `now` its TAP device in the node's
/// tunnel, and the tunnel the network's peers and where each remote task
/// is; a network whose device cannot be made is removed from `now` (and
/// from the kernel), so no task is attached to a network that would send
/// nothing, and the next round makes it again.
fn sync_tunnel(
    ip: &dyn Ip,
    loaded: &mut Loaded,
    now: &mut BTreeMap<u32, NetworkWiring>,
    table: &NetworkTable,
    local: IpAddr,
) -> Option<WiringError> {
    use crate::sealed::{mac_of, Key, Tunnel};
    let sealed: Vec<u32> = now
        .values()
        .filter(|w| w.encrypted)
        .map(|w| w.vni)
        .collect();
    if sealed.is_empty() && loaded.tunnel.is_none() {
        return None;
    }
    let mut first = None;
    let drop_network = |now: &mut BTreeMap<u32, NetworkWiring>, vni: u32| {
        for command in (Step::RemoveNetwork { vni }).commands() {
            let _ = ip.run(&command);
        }
        now.remove(&vni);
    };
    let tunnel = match &loaded.tunnel {
        Some(t) => t.clone(),
        None => match Tunnel::bind(local) {
            Ok(t) => {
                loaded.tunnel = Some(t.clone());
                t
            }
            Err(e) => {
                for vni in sealed {
                    drop_network(now, vni);
                }
                return Some(WiringError::Failed {
                    command: format!("bind the tunnel on {local}:{}", crate::sealed::SEALED_PORT),
                    stderr: e.to_string(),
                });
            }
        },
    };
    for vni in tunnel.networks() {
        if !sealed.contains(&vni) {
            tunnel.remove(vni);
        }
    }
    for vni in sealed {
        let Some(w) = now.get(&vni).cloned() else {
            continue;
        };
        if !tunnel.has(vni) {
            let made = w
                .key
                .as_deref()
                .ok_or_else(|| "the leader has not given it a key yet".to_string())
                .and_then(|k| Key::from_hex(k).map_err(|e| e.to_string()))
                .and_then(|key| tunnel.add(vni, key).map_err(|e| e.to_string()))
                .and_then(|()| {
                    tap_commands(vni)
                        .iter()
                        .try_for_each(|c| ip.run(c))
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = made {
                tunnel.remove(vni);
                drop_network(now, vni);
                first.get_or_insert(WiringError::Failed {
                    command: format!("make the encrypted device of network {vni}"),
                    stderr: e,
                });
                continue;
            }
        }
        let nodes = table
            .networks
            .iter()
            .filter(|n| n.vni == vni)
            .flat_map(|n| n.endpoints.iter())
            .filter_map(|e| Some((mac_of(e.addr), e.node_addr?)))
            .filter(|(_, node)| *node != local)
            .collect();
        tunnel.route(vni, w.peers.iter().copied().collect(), nodes);
    }
    first
}

/// Loads the node's rules and each task's where they changed; returns the
/// first error. A rule set that fails is tried again next time.
fn load_rules(
    ip: &dyn Ip,
    loaded: &mut Loaded,
    wired: &[WiredNetwork],
    tasks: &BTreeMap<String, LocalTask>,
    table: &NetworkTable,
    vip_port: Option<u16>,
) -> Option<WiringError> {
    let mut first = None;
    if !wired.is_empty() && !loaded.forwarding {
        match ip.forward_ipv4() {
            Ok(()) => loaded.forwarding = true,
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    let due = loaded
        .docker_user
        .is_none_or(|at| at.elapsed() >= DOCKER_USER_EVERY);
    if !wired.is_empty() && due {
        match pass_docker_user(ip) {
            Ok(()) => loaded.docker_user = Some(std::time::Instant::now()),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    let forwards: Vec<Forward> = tasks.values().flat_map(|t| t.forwards.clone()).collect();
    let redirect = vip_port.map(|port| crate::netfilter::VipRedirect {
        port,
        vips: loaded.bridge_vips.clone(),
    });
    let node = node_rules(wired, &forwards, redirect.as_ref());
    if loaded.node.as_deref() != Some(node.as_str()) {
        match ip.nft(None, &node) {
            Ok(()) => loaded.node = Some(node),
            Err(e) => {
                loaded.node = None;
                first.get_or_insert(e);
            }
        }
    }
    loaded.tasks.retain(|id, _| tasks.contains_key(id));
    for (id, task) in tasks {
        let Some(netns) = &task.netns else { continue };
        let rules = task_rules(&task_vips(table, &task.networks), vip_port.is_some());
        if loaded.tasks.get(id) == Some(&rules) {
            continue;
        }
        match ip.nft(Some(netns), &rules) {
            Ok(()) => {
                loaded.tasks.insert(id.clone(), rules);
            }
            Err(e) => {
                loaded.tasks.remove(id);
                first.get_or_insert(e);
            }
        }
    }
    first
}

/// What the table asks of the node, and the networks its registered
/// tasks hold (with the table's peers, once it has them).
pub fn wanted_with(
    table: &NetworkTable,
    node_id: &str,
    tasks: &BTreeMap<String, LocalTask>,
) -> BTreeMap<u32, NetworkWiring> {
    let mut want = wanted(table, node_id);
    for held in tasks.values().flat_map(|t| t.held.iter()) {
        want.entry(held.vni).or_insert_with(|| {
            let entry = table.networks.iter().find(|n| n.vni == held.vni);
            let peers = entry.map(|n| peers_of(n, node_id)).unwrap_or_default();
            let remote = entry.map(|n| remote_of(n, node_id)).unwrap_or_default();
            NetworkWiring {
                remote,
                vni: held.vni,
                subnet: held.subnet,
                internal: held.internal,
                encrypted: held.encrypted,
                key: entry.and_then(|n| n.key.clone()),
                peers,
            }
        });
    }
    want
}

/// One round of the loop's work on the kernel, in the blocking pool.
struct Round {
    have: BTreeMap<u32, NetworkWiring>,
    want: BTreeMap<u32, NetworkWiring>,
    /// Namespaces to remove before anything else.
    detach: Vec<String>,
    /// Attachments to make once the networks are: task ID, its networks'
    /// VNIs, the commands.
    attach: Vec<(String, Vec<u32>, Vec<Vec<String>>)>,
    tasks: BTreeMap<String, LocalTask>,
    table: NetworkTable,
    /// The port of the node's proxy for virtual addresses, if it has one.
    vip_port: Option<u16>,
}

/// What a round did: the wiring now, each attachment's result, the first
/// error of the rest, and the proxy's table (with the proxy).
struct Done {
    now: BTreeMap<u32, NetworkWiring>,
    attached: Vec<(String, Result<(), String>)>,
    error: Option<WiringError>,
    vips: Option<flotilla_mesh::vip::VipTable>,
}

/// Gives each held network's bridge the virtual addresses of its
/// services (clearing, the first time, what an earlier run left); returns
/// the first error.
fn sync_bridge_vips(
    ip: &dyn Ip,
    loaded: &mut Loaded,
    now: &BTreeMap<u32, NetworkWiring>,
    table: &NetworkTable,
) -> Option<WiringError> {
    let held: BTreeSet<u32> = now.keys().copied().collect();
    loaded.bridge_vips.retain(|vni, _| held.contains(vni));
    let want = crate::vips::bridge_vips(table, &held);
    let mut first = None;
    for vni in &held {
        let want = want.get(vni).cloned().unwrap_or_default();
        let commands = crate::vips::bridge_vip_commands(*vni, loaded.bridge_vips.get(vni), &want);
        let mut ok = true;
        for command in &commands {
            if let Err(e) = ip.run(command) {
                ok = false;
                first.get_or_insert(e);
                break;
            }
        }
        if ok {
            loaded.bridge_vips.insert(*vni, want);
        } else {
            // Not known: cleared and made again next time.
            loaded.bridge_vips.remove(vni);
        }
    }
    first
}

fn run_round(ip: &dyn Ip, local: IpAddr, loaded: &mut Loaded, round: Round) -> Done {
    for ns in &round.detach {
        if let Err(e) = ip.run(&detach_task(ns)) {
            tracing::warn!(netns = %ns, error = %e, "cannot remove a task's network namespace");
        }
    }
    let (mut now, mut error) = if round.have != round.want {
        converge(ip, &round.have, &round.want, local)
    } else {
        (round.have, None)
    };
    if let Some(e) = sync_tunnel(ip, loaded, &mut now, &round.table, local) {
        error.get_or_insert(e);
    }
    let mut attached = Vec::new();
    let mut tasks = round.tasks;
    for (task_id, vnis, commands) in round.attach {
        let result = match vnis.iter().find(|v| !now.contains_key(v)) {
            Some(vni) => Err(format!(
                "network {vni} could not be wired on this node: {}",
                error
                    .as_ref()
                    .map_or("no error recorded".to_string(), |e| e.to_string())
            )),
            None => {
                let netns = tasks.get(&task_id).and_then(|t| t.netns.as_deref());
                attach_commands(ip, netns, &commands)
            }
        };
        if result.is_err() {
            tasks.remove(&task_id);
        }
        attached.push((task_id, result));
    }
    if round.vip_port.is_some() {
        if let Some(e) = sync_bridge_vips(ip, loaded, &now, &round.table) {
            error.get_or_insert(e);
        }
    }
    let held: Vec<WiredNetwork> = held_networks(&now);
    if let Some(e) = load_rules(ip, loaded, &held, &tasks, &round.table, round.vip_port) {
        error.get_or_insert(e);
    }
    let vips = round.vip_port.map(|_| {
        let vnis = loaded.bridge_vips.keys().copied().collect();
        crate::vips::vip_table(&round.table, &vnis, &tasks)
    });
    Done {
        now,
        attached,
        error,
        vips,
    }
}

/// Runs the attach commands of a task whose namespace is `netns`; a
/// failure removes the namespace again.
fn attach_commands(
    ip: &dyn Ip,
    netns: Option<&str>,
    commands: &[Vec<String>],
) -> Result<(), String> {
    let netns = netns.filter(|_| !commands.is_empty());
    // A namespace of the same name is what a crash left: made anew.
    if let Some(ns) = netns {
        let _ = ip.run(&detach_task(ns));
    }
    for command in commands {
        if let Err(e) = ip.run(command) {
            if let Some(ns) = netns {
                let _ = ip.run(&detach_task(ns));
            }
            return Err(e.to_string());
        }
    }
    Ok(())
}

fn held_networks(now: &BTreeMap<u32, NetworkWiring>) -> Vec<WiredNetwork> {
    now.values()
        .map(|w| WiredNetwork {
            vni: w.vni,
            subnet: w.subnet,
            internal: w.internal,
            encrypted: w.encrypted,
        })
        .collect()
}

/// Keeps the node's wiring and rules in step with the network tables of
/// `table` and the agent's requests, until `shutdown`, which removes what
/// it made (the devices and the node's rules; a task's namespace goes
/// with its task). What fails is tried again at the next change or after
/// [`RETRY`].
pub async fn follow(
    mut table: tokio::sync::watch::Receiver<NetworkTable>,
    plumbing: Plumbing,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Plumbing {
        node_id,
        local,
        ip,
        mut requests,
        wired,
        vips,
        leave_on_stop,
    } = plumbing;
    let vip_port = vips.as_ref().map(|v| v.port);
    let mut have: BTreeMap<u32, NetworkWiring> = BTreeMap::new();
    let mut tasks: BTreeMap<String, LocalTask> = BTreeMap::new();
    let loaded = std::sync::Arc::new(std::sync::Mutex::new(Loaded::default()));
    let mut said: Option<String> = None;
    let mut requests_open = true;
    let mut pending: Vec<Request> = Vec::new();
    loop {
        // The requests that came, taken in order.
        let mut detach = Vec::new();
        let mut detached = Vec::new();
        let mut attach = Vec::new();
        let mut replies = BTreeMap::new();
        for request in pending.drain(..) {
            match request {
                Request::Attach {
                    task_id,
                    task,
                    commands,
                    reply,
                } => {
                    let vnis = task.held.iter().map(|h| h.vni).collect();
                    tasks.insert(task_id.clone(), task);
                    attach.push((task_id.clone(), vnis, commands));
                    replies.insert(task_id, reply);
                }
                Request::Adopt { task_id, task } => {
                    tasks.insert(task_id, task);
                }
                Request::Detach {
                    task_id,
                    netns,
                    reply,
                } => {
                    tasks.remove(&task_id);
                    detach.push(netns);
                    detached.push(reply);
                }
            }
        }
        let now_table = table.borrow_and_update().clone();
        let want = wanted_with(&now_table, &node_id, &tasks);
        let round = Round {
            have: have.clone(),
            want: want.clone(),
            detach,
            attach,
            tasks: tasks.clone(),
            table: now_table,
            vip_port,
        };
        let (runner, state) = (ip.clone(), loaded.clone());
        let done = tokio::task::spawn_blocking(move || {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            run_round(&*runner, local, &mut state, round)
        })
        .await;
        let mut failed = false;
        match done {
            Ok(done) => {
                let changed = have != done.now;
                have = done.now;
                for (task_id, result) in done.attached {
                    if result.is_err() {
                        tasks.remove(&task_id);
                    }
                    if let Some(reply) = replies.remove(&task_id) {
                        let _ = reply.send(result);
                    }
                }
                if let (Some(v), Some(table)) = (&vips, done.vips) {
                    v.table.send_if_modified(|t| {
                        let differs = **t != table;
                        if differs {
                            *t = std::sync::Arc::new(table);
                        }
                        differs
                    });
                }
                let held = held_networks(&have);
                wired.send_if_modified(|w| {
                    let differs = *w != held;
                    if differs {
                        *w = held;
                    }
                    differs
                });
                match done.error {
                    Some(e) => {
                        failed = true;
                        let text = e.to_string();
                        if said.as_deref() != Some(text.as_str()) {
                            tracing::warn!(error = %text, "cannot wire the node's networks; retrying");
                            said = Some(text);
                        }
                    }
                    None => {
                        said = None;
                        if changed {
                            tracing::info!(networks = have.len(), "network wiring updated");
                        }
                    }
                }
            }
            Err(e) => {
                failed = true;
                tracing::warn!(error = %e, "the network wiring task failed");
            }
        }
        for reply in detached {
            let _ = reply.send(());
        }
        // Replies not sent (the round failed): the agent hears the channel
        // close, and says so.
        drop(replies);
        let retry = failed || have != want;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = table.changed() => {
                if changed.is_err() {
                    shutdown.cancelled().await;
                    break;
                }
            }
            got = requests.recv(), if requests_open => match got {
                Some(request) => {
                    pending.push(request);
                    while let Ok(more) = requests.try_recv() {
                        pending.push(more);
                    }
                }
                None => requests_open = false,
            },
            _ = tokio::time::sleep(RETRY), if retry => {}
        }
    }
    // The agent stops its tasks after the same shutdown: their namespaces
    // are removed as they end, until the agent lets go of its handle (or
    // [`DRAIN`] has passed).
    let deadline = tokio::time::Instant::now() + DRAIN;
    for request in pending {
        serve_late(&ip, request).await;
    }
    while requests_open {
        match tokio::time::timeout_at(deadline, requests.recv()).await {
            Ok(Some(request)) => serve_late(&ip, request).await,
            Ok(None) => requests_open = false,
            Err(_) => {
                tracing::warn!("the agent still held the wiring loop at shutdown; stopping anyway");
                requests_open = false;
            }
        }
    }
    let last_table = table.borrow().clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut state = loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tunnel) = state.tunnel.take() {
            tunnel.shutdown();
        }
        if leave_on_stop {
            // The tasks left running keep their bridges, VXLAN devices and
            // rules: traffic between them and other nodes goes on while the
            // daemon is down (not on encrypted networks, whose tunnel is
            // this process). Their connections to virtual addresses go to
            // the kernel's forwarding until the next start: the proxy ends
            // with this process.
            if vip_port.is_some() {
                let held = held_networks(&have);
                if let Some(e) = load_rules(&*ip, &mut state, &held, &tasks, &last_table, None) {
                    tracing::warn!(error = %e, "cannot hand virtual addresses to the kernel");
                }
            }
            tracing::info!(
                networks = have.len(),
                "leaving the node's network wiring for the next start"
            );
            return (have, None);
        }
        drop(state);
        let _ = ip.nft(None, &crate::netfilter::remove_node_rules());
        converge(&*ip, &have, &BTreeMap::new(), local)
    })
    .await;
}

/// How long the wiring loop goes on removing the namespaces of tasks that
/// end after the node began to shut down.
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(60);

/// A request that came after the shutdown: namespaces are removed, none
/// is made.
async fn serve_late(ip: &std::sync::Arc<dyn Ip>, request: Request) {
    match request {
        Request::Attach { reply, .. } => {
            let _ = reply.send(Err("the node is shutting down".into()));
        }
        Request::Adopt { .. } => {}
        Request::Detach { netns, reply, .. } => {
            let ip = ip.clone();
            let _ = tokio::task::spawn_blocking(move || ip.run(&detach_task(&netns))).await;
            let _ = reply.send(());
        }
    }
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
                endpoints,
                ..crate::fixtures::network("n", 4096, "10.0.9.0/24")
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
        // The network, a flood entry per peer, a forwarding entry per
        // remote task (its MAC to its node).
        assert_eq!(first.len(), 5, "{first:?}");
        assert!(matches!(first[0], Step::AddNetwork { vni: 4096, .. }));
        let lines: Vec<String> = first
            .iter()
            .flat_map(|s| s.commands())
            .map(|c| c.join(" "))
            .collect();
        assert!(
            lines.contains(
                &"bridge fdb replace 02:42:0a:00:09:05 dev flvx4096 dst 192.168.0.3".to_string()
            ),
            "{lines:?}"
        );
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
            vec![
                Step::RemovePeer {
                    vni: 4096,
                    peer: ip("192.168.0.3"),
                    sealed: false,
                },
                Step::RemoveRemote {
                    vni: 4096,
                    addr: std::net::Ipv4Addr::new(10, 0, 9, 5),
                    sealed: false,
                }
            ]
        );
        assert_eq!(
            steps(&want, &BTreeMap::new(), local),
            vec![Step::RemoveNetwork { vni: 4096 }]
        );
    }

    /// The bug this guards against: a task replaced on a node whose only
    /// task of the network it was left the table empty for a moment, the
    /// node removed the network, and the new task's veth went into the
    /// bridge being removed (its calls timed out). A network a registered
    /// task holds stays wired whatever the table says, and one that the
    /// table does not show yet is wired for the task that needs it.
    #[test]
    fn a_network_held_by_a_task_of_this_node_stays_wired_without_the_table() {
        let none = table(vec![endpoint("b", "n2", "192.168.0.2", 4)]);
        assert!(wanted(&none, "n1").is_empty());
        let mut tasks = BTreeMap::new();
        tasks.insert(
            "a".to_string(),
            LocalTask {
                netns: Some("flt-a".into()),
                networks: vec!["n".into()],
                forwards: vec![],
                held: vec![WiredNetwork {
                    vni: 4096,
                    subnet: "10.0.9.0/24".parse().expect("subnet"),
                    internal: false,
                    encrypted: false,
                }],
            },
        );
        let want = wanted_with(&none, "n1", &tasks);
        assert_eq!(want.len(), 1);
        assert_eq!(
            want[&4096].peers,
            [ip("192.168.0.2")].into_iter().collect(),
            "the table's peers"
        );
        // A round that attaches the task wires the network first, then
        // runs the task's commands; rules follow.
        let fake = Fake {
            fail: String::new(),
            ran: Default::default(),
        };
        let mut loaded = Loaded::default();
        let done = run_round(
            &fake,
            ip("192.168.0.1"),
            &mut loaded,
            Round {
                have: BTreeMap::new(),
                want: want.clone(),
                detach: vec![],
                attach: vec![(
                    "a".into(),
                    vec![4096],
                    vec![argv(&["ip", "netns", "add", "flt-a"])],
                )],
                tasks: tasks.clone(),
                table: none.clone(),
                vip_port: Some(40001),
            },
        );
        assert!(done.error.is_none(), "{:?}", done.error);
        assert_eq!(done.attached, vec![("a".to_string(), Ok(()))]);
        let ran = fake.ran.lock().expect("ran").clone();
        let bridge = ran
            .iter()
            .position(|l| l == "ip link add flbr4096 address 02:42:0a:00:09:01 type bridge");
        let netns = ran.iter().rposition(|l| l == "ip netns add flt-a");
        assert!(bridge < netns && bridge.is_some(), "{ran:?}");
        // With the proxy, the bridge is cleared of an earlier run's virtual
        // addresses before the rules that redirect to them are loaded.
        let flush = ran
            .iter()
            .position(|l| l == "ip addr flush dev flbr4096 label flbr4096:v");
        let rules = ran
            .iter()
            .position(|l| l.starts_with("nft - table ip flotilla"));
        assert!(
            bridge < flush && flush < rules && rules.is_some(),
            "{ran:?}"
        );
        assert!(ran
            .iter()
            .any(|l| l.starts_with("nft flt-a table ip flotilla")));
        // A task whose network cannot be wired is refused, and unregistered.
        let broken = Fake {
            fail: "type vxlan".into(),
            ran: Default::default(),
        };
        let done = run_round(
            &broken,
            ip("192.168.0.1"),
            &mut Loaded::default(),
            Round {
                have: BTreeMap::new(),
                want,
                detach: vec![],
                attach: vec![("a".into(), vec![4096], vec![])],
                tasks,
                table: none,
                vip_port: None,
            },
        );
        let (_, result) = &done.attached[0];
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.starts_with("network 4096 could not be wired")),
            "{result:?}"
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

        fn nft(&self, _netns: Option<&str>, _script: &str) -> Result<(), WiringError> {
            self.run(&argv(&["nft"]))
        }

        fn forward_ipv4(&self) -> Result<(), WiringError> {
            self.run(&argv(&["sysctl"]))
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

        fn nft(&self, netns: Option<&str>, script: &str) -> Result<(), WiringError> {
            let line = format!("nft {} {script}", netns.unwrap_or("-"));
            self.run(&[line])
        }

        fn forward_ipv4(&self) -> Result<(), WiringError> {
            self.run(&argv(&["sysctl", "net.ipv4.ip_forward=1"]))
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
            sealed: false,
        };
        let lines: Vec<String> = add.commands().iter().map(|c| c.join(" ")).collect();
        assert!(lines.contains(&"ip addr replace 10.0.9.1/24 dev flbr4096".to_string()));
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
            mtu: OVERLAY_MTU,
        };
        let lines: Vec<String> = attach_task("fltask", 0, "flt1", &a)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(lines[0], "ip netns add fltask");
        assert!(lines[2].ends_with("peer name flt1p mtu 1450 address 02:42:0a:00:09:03"));
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
        // On an encrypted network: its MTU, and bursts the tunnel carries
        // whole.
        let sealed = Attachment {
            mtu: crate::sealed::SEALED_MTU,
            ..a
        };
        let lines: Vec<String> = attach_task("fltask", 2, "flt3", &sealed)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert!(lines[0].contains("mtu 1426"), "{lines:?}");
        assert!(lines.contains(&"ip -n fltask link set eth2 gso_max_segs 40".to_string()));
    }
}
