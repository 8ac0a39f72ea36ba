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
    parse_query, refusal, response, response_within, udp_limit, Query, RCODE_NOERROR,
    RCODE_NXDOMAIN, RCODE_SERVFAIL,
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
/// a packet too short to answer at all), or the query to relay. Over UDP
/// an answer is kept within what the client takes ([`udp_limit`]), with
/// the TC bit when it was cut.
pub fn local_answer(table: &NetworkTable, from: IpAddr, packet: &[u8]) -> Result<Vec<u8>, Query> {
    local_answer_within(table, from, packet, None)
}

/// [`local_answer`] for a transport: `None` for UDP (the client's limit),
/// `Some(limit)` for TCP (65,535).
pub fn local_answer_within(
    table: &NetworkTable,
    from: IpAddr,
    packet: &[u8],
    tcp_limit: Option<usize>,
) -> Result<Vec<u8>, Query> {
    let query = match parse_query(packet) {
        Ok(q) => q,
        Err(e) => return Ok(refusal(packet, e.rcode()).unwrap_or_default()),
    };
    let IpAddr::V4(from) = from else {
        return Err(query);
    };
    let soa = [negative_soa(&query.name)];
    let limit = tcp_limit.unwrap_or_else(|| udp_limit(packet, &query));
    match answer(table, from, &query.name, query.qtype) {
        Answer::Records {
            answers,
            additional,
        } => Ok(response_within(
            &query,
            packet,
            RCODE_NOERROR,
            &answers,
            &[],
            &additional,
            limit,
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

/// TCP connections served at once per listener; more wait in the backlog.
pub const MAX_TCP: usize = 64;
/// How long a TCP connection may sit without a whole query.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// Serves queries over TCP (each message after its two-byte length, as
/// RFC 1035 has it), for answers too large for UDP, until `shutdown`.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    table: watch::Receiver<NetworkTable>,
    upstreams: Vec<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_TCP));
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    tokio::pin!(shutdown);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, from) = tokio::select! {
            _ = &mut shutdown => return,
            got = listener.accept() => match got {
                Ok(got) => got,
                Err(_) => continue,
            },
        };
        let (table, upstreams) = (table.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _ = tcp_connection(stream, from.ip(), table, upstreams).await;
            drop(permit);
        });
    }
}

async fn tcp_connection(
    mut stream: tokio::net::TcpStream,
    from: IpAddr,
    table: watch::Receiver<NetworkTable>,
    upstreams: Arc<[SocketAddr]>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let local = {
            let table = table.borrow();
            local_answer_within(&table, from, &packet, Some(usize::from(u16::MAX)))
        };
        let reply = match local {
            Ok(bytes) => bytes,
            Err(query) => relay(&packet, &upstreams)
                .await
                .unwrap_or_else(|| response(&query, &packet, RCODE_SERVFAIL, &[], &[], &[])),
        };
        if reply.is_empty() {
            return Ok(());
        }
        let size = u16::try_from(reply.len()).unwrap_or(u16::MAX);
        stream.write_all(&size.to_be_bytes()).await?;
        stream.write_all(&reply[..usize::from(size)]).await?;
    }
}

/// How soon a gateway whose socket could not be bound is tried again.
pub const BIND_RETRY: Duration = Duration::from_secs(2);

/// Serves the resolver on port 53 of every address `gateways_of` finds in
/// `gateways` (the gateways of the networks this node has wired, which
/// its tasks' `resolv.conf` names), each with its own sockets, as the set
/// changes, until `shutdown` resolves.
pub async fn serve_gateways<T>(
    mut gateways: watch::Receiver<T>,
    gateways_of: impl Fn(&T) -> Vec<std::net::Ipv4Addr>,
    table: watch::Receiver<NetworkTable>,
    upstreams: Vec<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use std::collections::BTreeMap;
    // Dropping a gateway's sender stops its UDP and TCP servers.
    let mut serving: BTreeMap<std::net::Ipv4Addr, watch::Sender<()>> = BTreeMap::new();
    let mut open = true;
    tokio::pin!(shutdown);
    loop {
        let want = gateways_of(&gateways.borrow_and_update());
        serving.retain(|gw, _| want.contains(gw));
        let mut missing = false;
        for gw in want {
            if serving.contains_key(&gw) {
                continue;
            }
            let bound = match UdpSocket::bind((gw, 53)).await {
                Ok(udp) => tokio::net::TcpListener::bind((gw, 53))
                    .await
                    .map(|tcp| (udp, tcp)),
                Err(e) => Err(e),
            };
            match bound {
                Ok((socket, listener)) => {
                    let (stop, stopped) = watch::channel(());
                    let (table2, upstreams2) = (table.clone(), upstreams.clone());
                    let mut stopped2 = stopped.clone();
                    let (table, upstreams) = (table.clone(), upstreams.clone());
                    let mut stopped = stopped;
                    tokio::spawn(async move {
                        serve(socket, table, upstreams, async move {
                            while stopped.changed().await.is_ok() {}
                        })
                        .await;
                    });
                    tokio::spawn(async move {
                        serve_tcp(listener, table2, upstreams2, async move {
                            while stopped2.changed().await.is_ok() {}
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

    /// A network with `n` ready tasks of web, from 10.1.0.10 up, and the
    /// client task at 127.0.0.3.
    fn many(n: u8) -> NetworkTable {
        let mut t = table();
        let net = &mut t.networks[0];
        net.subnet = "10.1.0.0/16".parse().expect("subnet");
        net.endpoints.push(Endpoint {
            task_id: "client".into(),
            service_id: "client".into(),
            addr: Ipv4Addr::new(127, 0, 0, 3),
            node_id: None,
            node_addr: None,
            ready: true,
        });
        for i in 0..n {
            net.endpoints.push(Endpoint {
                task_id: format!("w{i}"),
                service_id: "web".into(),
                addr: Ipv4Addr::new(10, 1, 0, 10 + i),
                node_id: None,
                node_addr: None,
                ready: true,
            });
        }
        t
    }

    /// A service of 101 tasks: `tasks.web` does not fit in 512 bytes, so
    /// over UDP the answer says it was cut (TC) and holds what fits; with
    /// EDNS0's 4096 bytes, or over TCP, it is whole.
    #[tokio::test]
    async fn a_large_answer_is_cut_with_tc_over_udp_and_whole_over_tcp() {
        let t = many(100);
        let from: IpAddr = "127.0.0.3".parse().expect("ip");
        let packet = query(7, "tasks.web", TYPE_A);
        let cut = local_answer(&t, from, &packet).expect("local");
        assert!(cut.len() <= 512, "{}", cut.len());
        assert_eq!(cut[2] & 0x02, 0x02, "TC set");
        let (_, some) = addresses(&cut);
        assert!(!some.is_empty() && some.len() < 101, "{}", some.len());
        // EDNS0: an OPT record offering 4096 bytes.
        let mut edns = packet.clone();
        edns[11] = 1;
        edns.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
        let whole = local_answer(&t, from, &edns).expect("local");
        assert_eq!(whole[2] & 0x02, 0, "not cut");
        // Every ready task of web: table()'s w1 and the hundred.
        assert_eq!(addresses(&whole).1.len(), 101);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_tx, rx) = watch::channel(t);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(serve_tcp(listener, rx, vec![], async {
            let _ = stopped.await;
        }));
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.3:0".parse().expect("addr"))
            .expect("bind");
        let mut stream = socket.connect(addr).await.expect("connect");
        for id in [1u16, 2] {
            let q = query(id, "tasks.web", TYPE_A);
            stream
                .write_all(&(q.len() as u16).to_be_bytes())
                .await
                .expect("len");
            stream.write_all(&q).await.expect("query");
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.expect("answer length");
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut answer).await.expect("answer");
            assert_eq!(answer[2] & 0x02, 0, "not cut over TCP");
            assert_eq!(addresses(&answer).1.len(), 101, "query {id}");
        }
        let _ = stop.send(());
        running.await.expect("server");
    }
}
