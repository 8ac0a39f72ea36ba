//! The resolver as a UDP server: each query is answered from the table
//! the node holds now ([`crate::answer`]), or relayed to the node's own
//! resolvers ([`upstreams_of`], from `/etc/resolv.conf`) when the name is
//! not the cluster's.
//!
//! A relayed query waits at most [`RELAY_TIMEOUT`] per upstream, and at
//! most [`MAX_RELAYS`] are in flight at once (beyond that a query is
//! answered SERVFAIL at once), so a flood or a dead upstream bounds what
//! the server holds.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use flotilla_types::network::NetworkTable;
use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};

use crate::resolve::{answer, negative_soa, Answer};
use crate::wire::{
    parse_query, refusal, response, Query, RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_SERVFAIL,
};

/// How long a relayed query waits for one upstream.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(2);
/// Relayed queries in flight at once.
pub const MAX_RELAYS: usize = 256;
/// The largest UDP DNS message read or relayed (EDNS0's common size).
const MAX_PACKET: usize = 4096;

/// The upstream resolvers of a `resolv.conf` text: its `nameserver`
/// lines, port 53, without `skip` (the resolver's own address).
pub fn upstreams_of(resolv_conf: &str, skip: Option<IpAddr>) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
        })
        .filter(|ip| Some(*ip) != skip)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// What one packet gets from the table: the bytes to send back (empty for
/// a packet too short to answer at all), or the query to relay.
pub fn local_answer(table: &NetworkTable, from: IpAddr, packet: &[u8]) -> Result<Vec<u8>, Query> {
    let query = match parse_query(packet) {
        Ok(q) => q,
        Err(e) => return Ok(refusal(packet, e.rcode()).unwrap_or_default()),
    };
    let IpAddr::V4(from) = from else {
        return Err(query);
    };
    let soa = [negative_soa(&query.name)];
    match answer(table, from, &query.name, query.qtype) {
        Answer::Records {
            answers,
            additional,
        } => Ok(response(
            &query,
            packet,
            RCODE_NOERROR,
            &answers,
            &[],
            &additional,
        )),
        Answer::NoData => Ok(response(&query, packet, RCODE_NOERROR, &[], &soa, &[])),
        Answer::NxDomain => Ok(response(&query, packet, RCODE_NXDOMAIN, &[], &soa, &[])),
        Answer::Forward => Err(query),
    }
}

/// Serves queries on `socket` until `shutdown` resolves.
pub async fn serve(
    socket: UdpSocket,
    table: watch::Receiver<NetworkTable>,
    upstreams: Vec<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let socket = Arc::new(socket);
    let relays = Arc::new(Semaphore::new(MAX_RELAYS));
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    let mut buf = vec![0u8; MAX_PACKET];
    tokio::pin!(shutdown);
    loop {
        let (len, from) = tokio::select! {
            _ = &mut shutdown => return,
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                // A client that went away (ICMP), or a packet too large:
                // the next one.
                Err(_) => continue,
            },
        };
        let packet = &buf[..len];
        let local = {
            let table = table.borrow();
            local_answer(&table, from.ip(), packet)
        };
        match local {
            Ok(bytes) => {
                if !bytes.is_empty() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
            Err(query) => {
                let Ok(permit) = relays.clone().try_acquire_owned() else {
                    let busy = response(&query, packet, RCODE_SERVFAIL, &[], &[], &[]);
                    let _ = socket.send_to(&busy, from).await;
                    continue;
                };
                let (socket, upstreams, packet) =
                    (socket.clone(), upstreams.clone(), packet.to_vec());
                tokio::spawn(async move {
                    let reply = relay(&packet, &upstreams).await.unwrap_or_else(|| {
                        response(&query, &packet, RCODE_SERVFAIL, &[], &[], &[])
                    });
                    let _ = socket.send_to(&reply, from).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Asks each upstream in turn, [`RELAY_TIMEOUT`] each; the first answer
/// with the query's ID wins.
async fn relay(packet: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = packet.get(..2)?;
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.connect(upstream).await.is_err() || socket.send(packet).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_PACKET];
        let got = tokio::time::timeout(RELAY_TIMEOUT, async {
            loop {
                match socket.recv(&mut buf).await {
                    Ok(n) if buf.get(..2) == Some(id) => return Some(n),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        })
        .await;
        if let Ok(Some(n)) = got {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// How soon a gateway whose socket could not be bound is tried again.
pub const BIND_RETRY: Duration = Duration::from_secs(2);

/// Serves the resolver on port 53 of every address in `gateways` (the
/// gateways of the networks this node has wired, which its tasks'
/// `resolv.conf` names), each with its own socket, as the set changes,
/// until `shutdown` resolves.
pub async fn serve_gateways(
    mut gateways: watch::Receiver<Vec<std::net::Ipv4Addr>>,
    table: watch::Receiver<NetworkTable>,
    upstreams: Vec<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use std::collections::BTreeMap;
    use tokio::sync::oneshot;
    let mut serving: BTreeMap<std::net::Ipv4Addr, oneshot::Sender<()>> = BTreeMap::new();
    let mut open = true;
    tokio::pin!(shutdown);
    loop {
        let want = gateways.borrow_and_update().clone();
        serving.retain(|gw, _| want.contains(gw));
        let mut missing = false;
        for gw in want {
            if serving.contains_key(&gw) {
                continue;
            }
            match UdpSocket::bind((gw, 53)).await {
                Ok(socket) => {
                    let (stop, stopped) = oneshot::channel::<()>();
                    let (table, upstreams) = (table.clone(), upstreams.clone());
                    tokio::spawn(async move {
                        serve(socket, table, upstreams, async {
                            let _ = stopped.await;
                        })
                        .await;
                    });
                    tracing::info!(addr = %gw, "resolver serving a network's gateway");
                    serving.insert(gw, stop);
                }
                Err(e) => {
                    missing = true;
                    tracing::warn!(addr = %gw, error = %e, "cannot serve the resolver on port 53; retrying");
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            changed = gateways.changed(), if open => open = changed.is_ok(),
            _ = tokio::time::sleep(BIND_RETRY), if missing => {}
        }
        if !open && !missing {
            shutdown.await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::{addresses, query};
    use crate::wire::TYPE_A;
    use flotilla_types::network::{Endpoint, NameEntry, NetworkEntry};
    use flotilla_types::EndpointMode;
    use std::net::Ipv4Addr;

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let conf = "# generated\nsearch example.org\nnameserver 10.0.0.2\nnameserver  127.0.0.11\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            upstreams_of(conf, Some("127.0.0.11".parse().expect("ip"))),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().expect("addr"),
                "[::1]:53".parse().expect("addr")
            ]
        );
    }

    /// One network whose task w1 is at 127.0.0.3 (so that a test client
    /// bound there is that task) and whose service web is at 127.0.0.2.
    fn table() -> NetworkTable {
        NetworkTable {
            networks: vec![NetworkEntry {
                network_id: "n".into(),
                name: "front".into(),
                subnet: "127.0.0.0/24".parse().expect("subnet"),
                vni: 4096,
                internal: false,
                encrypted: false,
                key: None,
                services: vec![NameEntry {
                    service_id: "web".into(),
                    names: vec!["web".into()],
                    endpoint_mode: EndpointMode::Vip,
                    vip: Some(Ipv4Addr::new(127, 0, 0, 2)),
                    ports: vec![],
                }],
                endpoints: vec![Endpoint {
                    task_id: "w1".into(),
                    service_id: "web".into(),
                    addr: Ipv4Addr::new(127, 0, 0, 3),
                    node_id: None,
                    node_addr: None,
                    ready: true,
                }],
            }],
        }
    }

    #[tokio::test]
    async fn names_are_answered_and_the_rest_is_relayed() {
        // An upstream that answers every query with NXDOMAIN.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let upstream_addr = upstream.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = upstream.recv_from(&mut buf).await {
                if let Ok(q) = parse_query(&buf[..n]) {
                    let reply = response(&q, &buf[..n], RCODE_NXDOMAIN, &[], &[], &[]);
                    let _ = upstream.send_to(&reply, from).await;
                }
            }
        });
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let server_addr = server.local_addr().expect("addr");
        let (_tx, rx) = watch::channel(table());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(serve(server, rx, vec![upstream_addr], async {
            let _ = stopped.await;
        }));
        let client = UdpSocket::bind("127.0.0.3:0").await.expect("client");
        let ask = |id: u16, name: &'static str| {
            let client = &client;
            async move {
                client
                    .send_to(&query(id, name, TYPE_A), server_addr)
                    .await
                    .expect("send");
                let mut buf = [0u8; 512];
                let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
                    .await
                    .expect("an answer in time")
                    .expect("recv");
                assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), id);
                addresses(&buf[..n])
            }
        };
        assert_eq!(
            ask(1, "web").await,
            (RCODE_NOERROR, vec![Ipv4Addr::new(127, 0, 0, 2)])
        );
        assert_eq!(
            ask(2, "tasks.web").await,
            (RCODE_NOERROR, vec![Ipv4Addr::new(127, 0, 0, 3)])
        );
        // Relayed, and the upstream's answer comes back.
        assert_eq!(ask(3, "example.com").await, (RCODE_NXDOMAIN, vec![]));
        // Garbage gets FORMERR, not silence and not a crash.
        client
            .send_to(&[0, 9, 1, 0], server_addr)
            .await
            .expect("send");
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("an answer in time")
            .expect("recv");
        assert_eq!(
            (n, buf[1], buf[3] & 0xF),
            (12, 9, crate::wire::RCODE_FORMERR)
        );
        let _ = stop.send(());
        running.await.expect("server stops");
    }
}
