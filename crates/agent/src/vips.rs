//! The node's end of virtual addresses: which ones its bridges hold, what
//! they lead to, and the proxy that forwards tasks' TCP connections to
//! them ([`flotilla_mesh::vip`]), so that a connect that fails is tried on
//! another ready task, as the mesh does for published ports.
//!
//! The path of a connection: the bridge of each network the node holds
//! carries the network's virtual addresses as its own (`/32`, labelled
//! `flbr<VNI>:v`, so that a restart finds and clears what an earlier run
//! left), so a task's ARP for one is answered by its own node (the node's
//! frames never leave on the VXLAN device); the node's rules send TCP to
//! them, any port, to the proxy's one listener at the same address
//! (`netfilter::VipRedirect`);
//! the proxy connects from the client task's own namespace
//! ([`NetnsSockets`]). UDP and other protocols stay with the kernel: the
//! task's own rules forward them to one ready task (`netfilter::task_rules`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use flotilla_mesh::vip::{Client, Sockets, VipRoute, VipStats, VipTable};
use flotilla_types::network::NetworkTable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::taskns::{netns_path, LocalTask};
use crate::wiring::bridge_name;

/// The virtual addresses each held network's bridge carries: those of
/// the services on it with endpoint mode `vip`.
pub fn bridge_vips(
    table: &NetworkTable,
    held: &BTreeSet<u32>,
) -> BTreeMap<u32, BTreeSet<Ipv4Addr>> {
    table
        .networks
        .iter()
        .filter(|n| held.contains(&n.vni))
        .map(|n| (n.vni, n.services.iter().filter_map(|s| s.vip).collect()))
        .collect()
}

/// What the proxy needs: each virtual address of a held network with the
/// ready tasks behind it, and each address of this node's tasks.
pub fn vip_table(
    table: &NetworkTable,
    held: &BTreeSet<u32>,
    tasks: &BTreeMap<String, LocalTask>,
) -> VipTable {
    let mut out = VipTable::default();
    for network in table.networks.iter().filter(|n| held.contains(&n.vni)) {
        for name in &network.services {
            let Some(vip) = name.vip else { continue };
            let backends = network.ready_addrs(&name.service_id);
            let service = name
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| name.service_id.clone());
            out.vips.insert(
                vip,
                VipRoute {
                    vni: network.vni,
                    service,
                    backends,
                },
            );
        }
        for e in &network.endpoints {
            let Some(netns) = tasks.get(&e.task_id).and_then(|t| t.netns.clone()) else {
                continue;
            };
            out.clients.insert(
                e.addr,
                Client {
                    task_id: e.task_id.clone(),
                    netns,
                    vni: network.vni,
                },
            );
        }
    }
    out
}

/// The label of the virtual addresses on a network's bridge.
pub fn vip_label(vni: u32) -> String {
    format!("{}:v", bridge_name(vni))
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// The commands that take bridge `vni` from holding `have` (`None`: not
/// known, what an earlier run left is cleared first) to holding `want`.
pub fn bridge_vip_commands(
    vni: u32,
    have: Option<&BTreeSet<Ipv4Addr>>,
    want: &BTreeSet<Ipv4Addr>,
) -> Vec<Vec<String>> {
    let (bridge, label) = (bridge_name(vni), vip_label(vni));
    let mut out = Vec::new();
    let empty = BTreeSet::new();
    let have = match have {
        Some(h) => h,
        None => {
            out.push(argv(&[
                "ip", "addr", "flush", "dev", &bridge, "label", &label,
            ]));
            &empty
        }
    };
    for gone in have.difference(want) {
        let cidr = format!("{gone}/32");
        out.push(argv(&["ip", "addr", "del", &cidr, "dev", &bridge]));
    }
    for new in want.difference(have) {
        let cidr = format!("{new}/32");
        out.push(argv(&[
            "ip", "addr", "replace", &cidr, "dev", &bridge, "label", &label,
        ]));
    }
    out
}

/// What the wiring loop is given when the node forwards virtual
/// addresses through the proxy: the listener's port, for the redirect,
/// and where to send the proxy its table.
pub struct VipPlumbing {
    pub port: u16,
    pub table: watch::Sender<Arc<VipTable>>,
}

/// Runs `f` on a thread of its own inside the network namespace at
/// `path`; the thread ends with it, so no other work runs in that
/// namespace by mistake.
fn in_netns<T: Send>(
    path: &std::path::Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let ns = std::fs::File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this thread alone, with a descriptor we
                // hold open across the call.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
    })
}

/// Sockets made inside tasks' namespaces (`/run/netns/NAME`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NetnsSockets;

impl Sockets for NetnsSockets {
    fn tcp_in(&self, netns: &str, n: usize) -> io::Result<Vec<OwnedFd>> {
        in_netns(&netns_path(netns), || flotilla_mesh::vip::tcp_sockets(n))
    }
}

/// Binds the proxy's listener (every address, a port the kernel picks)
/// in the node's namespace, or in `netns` when the node is one (tests),
/// and serves it until `shutdown`, counting into `stats`.
pub fn start(
    netns: Option<&str>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    stats: Arc<VipStats>,
) -> io::Result<VipPlumbing> {
    let bind = || {
        let l = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let listener = match netns {
        Some(ns) => in_netns(&netns_path(ns), bind)?,
        None => bind()?,
    };
    let port = listener.local_addr()?.port();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (tx, rx) = watch::channel(Arc::new(VipTable::default()));
    tracker.spawn(flotilla_mesh::vip::serve(
        listener,
        rx,
        Arc::new(NetnsSockets),
        flotilla_mesh::vip::VIP_CONNECT_TIMEOUT,
        stats,
        shutdown,
    ));
    tracing::info!(port, "forwarding tasks' connections to virtual addresses");
    Ok(VipPlumbing { port, table: tx })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{endpoint, name, network};
    use flotilla_types::network::NetworkEntry;

    fn table() -> NetworkTable {
        NetworkTable {
            networks: vec![NetworkEntry {
                services: vec![
                    name("web", Some(2)),
                    name("rr", None),
                    name("client", Some(3)),
                ],
                endpoints: vec![
                    endpoint("w1", "web", 11, true),
                    endpoint("w2", "web", 10, true),
                    endpoint("w3", "web", 12, false),
                    endpoint("c1", "client", 20, true),
                    endpoint("r1", "rr", 30, true),
                ],
                ..network("front", 4096, "10.0.9.0/24")
            }],
        }
    }

    fn local(netns: &str) -> LocalTask {
        LocalTask {
            netns: Some(netns.into()),
            networks: vec!["front".into()],
            forwards: vec![],
            held: vec![],
        }
    }

    #[test]
    fn the_proxy_knows_the_ready_tasks_behind_each_address_and_the_node_s_own_tasks() {
        let held = BTreeSet::from([4096]);
        let tasks = BTreeMap::from([("c1".to_string(), local("flt-c1"))]);
        let t = vip_table(&table(), &held, &tasks);
        let web = &t.vips[&Ipv4Addr::new(10, 0, 9, 2)];
        assert_eq!(web.service, "app_web");
        assert_eq!(
            web.backends,
            vec![Ipv4Addr::new(10, 0, 9, 10), Ipv4Addr::new(10, 0, 9, 11)],
            "ready only, sorted"
        );
        assert_eq!(t.vips.len(), 2, "no address for dnsrr");
        assert_eq!(
            t.clients.len(),
            1,
            "only this node's tasks: {:?}",
            t.clients
        );
        assert_eq!(t.clients[&Ipv4Addr::new(10, 0, 9, 20)].netns, "flt-c1");
        // A network this node does not hold leads nowhere.
        assert_eq!(
            vip_table(&table(), &BTreeSet::new(), &tasks),
            VipTable::default()
        );
        assert_eq!(
            bridge_vips(&table(), &held)[&4096],
            BTreeSet::from([Ipv4Addr::new(10, 0, 9, 2), Ipv4Addr::new(10, 0, 9, 3)])
        );
    }

    #[test]
    fn a_bridge_is_cleared_of_an_earlier_run_s_addresses_then_kept_in_step() {
        let a = Ipv4Addr::new(10, 0, 9, 2);
        let b = Ipv4Addr::new(10, 0, 9, 3);
        let lines = |c: Vec<Vec<String>>| c.into_iter().map(|l| l.join(" ")).collect::<Vec<_>>();
        assert_eq!(
            lines(bridge_vip_commands(4096, None, &BTreeSet::from([a]))),
            [
                "ip addr flush dev flbr4096 label flbr4096:v",
                "ip addr replace 10.0.9.2/32 dev flbr4096 label flbr4096:v",
            ]
        );
        assert_eq!(
            lines(bridge_vip_commands(
                4096,
                Some(&BTreeSet::from([a])),
                &BTreeSet::from([b])
            )),
            [
                "ip addr del 10.0.9.2/32 dev flbr4096",
                "ip addr replace 10.0.9.3/32 dev flbr4096 label flbr4096:v",
            ]
        );
        assert!(
            bridge_vip_commands(4096, Some(&BTreeSet::from([a])), &BTreeSet::from([a])).is_empty()
        );
        assert!(vip_label(16_777_215).len() < 16, "fits IFNAMSIZ");
    }
}
