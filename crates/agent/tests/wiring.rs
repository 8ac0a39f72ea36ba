//! The network wiring against the kernel: two nodes, each a network
//! namespace on a private bridge (testkit's `Net`), wire one network with
//! the commands `wiring` decides, and a task namespace on one node reaches
//! a task namespace on the other at its task address, over VXLAN. Needs
//! root and iproute2, as the other namespace tests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use flotilla_agent::wiring::{apply, attach_task, steps, Attachment, Ip, NetworkWiring, System};
use flotilla_testkit::net::{in_netns, Namespaces, Net};
use flotilla_types::Subnet;

#[test]
fn tasks_on_two_nodes_reach_each_other_at_their_task_addresses() {
    let mut net = Net::new().expect("net");
    let a = net.add_host().expect("node a");
    let b = net.add_host().expect("node b");
    let subnet: Subnet = "10.0.50.0/24".parse().expect("subnet");
    let vni = 4100 + (std::process::id() % 1000);
    let tag = std::process::id() % 100_000;
    let tasks = Namespaces(vec![format!("flta{tag}"), format!("fltb{tag}")]);
    let addrs = [Ipv4Addr::new(10, 0, 50, 3), Ipv4Addr::new(10, 0, 50, 4)];
    for (i, (node, peer)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
        let local: IpAddr = node.addr.parse().expect("node addr");
        let mut want = BTreeMap::new();
        want.insert(
            vni,
            NetworkWiring {
                vni,
                subnet,
                internal: false,
                peers: [peer.addr.parse::<IpAddr>().expect("peer")]
                    .into_iter()
                    .collect(),
            },
        );
        let ip = System {
            netns: Some(node.ns.clone()),
        };
        apply(&ip, &steps(&BTreeMap::new(), &want, local)).expect("wire the node");
        let attachment = Attachment {
            vni,
            subnet,
            addr: addrs[i],
            no_route: false,
        };
        for command in attach_task(&tasks.0[i], 0, &format!("flt{tag}x{i}"), &attachment) {
            ip.run(&command).expect("attach the task");
        }
    }
    // A server in b's task, a client in a's task.
    let server = SocketAddr::new(IpAddr::V4(addrs[1]), 7070);
    let listening = in_netns(&tasks.0[1], move || {
        TcpListener::bind(server).expect("bind in the task")
    })
    .expect("enter b's task");
    let served = std::thread::spawn(move || {
        let (mut s, from) = listening.accept().expect("accept");
        s.write_all(b"hello").expect("write");
        from.ip()
    });
    let got = in_netns(&tasks.0[0], move || {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .expect("connect across nodes");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        buf
    })
    .expect("the client in a's task");
    assert_eq!(&got, b"hello");
    // b's task saw a's task address, not a node's: no NAT on the way.
    assert_eq!(served.join().expect("server"), IpAddr::V4(addrs[0]));
    drop(tasks);
    drop(net);
}
