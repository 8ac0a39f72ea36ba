//! The mesh against real sockets on 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use flotilla_mesh::CopyMode;
use flotilla_types::mesh::{Backend, Balance, ProxyProtocol};
use flotilla_types::port::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn spread(balance: Balance) {
    spread_with(balance, flotilla_mesh::default_workers()).await;
}

async fn spread_with(balance: Balance, workers: usize) {
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let p = free_port();
    let mesh = Running::start_config(
        table(vec![service(
            "web",
            balance,
            vec![port(p, vec![a.backend(), b.backend()])],
        )]),
        |config| config.workers = workers,
    )
    .await;
    mesh.listening(p).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        let (mut s, name) = connect(p).await;
        assert_eq!(echo(&mut s, "ping").await, "ping");
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{balance:?}: {seen:?}");
    assert!(seen.values().all(|&n| n >= 5), "{balance:?}: {seen:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn round_robin_spreads_over_both_backends() {
    spread(Balance::RoundRobin).await;
}

#[tokio::test]
async fn least_connections_spreads_equal_load() {
    spread(Balance::LeastConnections).await;
}

#[tokio::test]
async fn least_connections_avoids_the_busy_backend() {
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let p = free_port();
    let mesh = Running::start(table(vec![service(
        "web",
        Balance::LeastConnections,
        vec![port(p, vec![a.backend(), b.backend()])],
    )]))
    .await;
    mesh.listening(p).await;
    let (_held, busy) = connect(p).await;
    for _ in 0..6 {
        let (mut s, name) = connect(p).await;
        assert_ne!(name, busy, "a new connection went to the busy backend");
        s.shutdown().await.expect("shutdown");
        assert!(closed_within(&mut s, DEADLINE).await);
        drop(s);
        // The mesh counts the connection closed on its own time; wait for
        // it so that the next pick sees one busy and one idle backend.
        until("the idle backend's count to drop", || async {
            let l = mesh.listener(p)?;
            (l.backends.iter().map(|b| b.current).sum::<u64>() == 1).then_some(())
        })
        .await;
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_refusing_backend_is_retried_on_the_other() {
    let live = Echo::start("live").await;
    let dead = {
        let gone = Echo::start("dead").await;
        let backend = gone.backend();
        drop(gone);
        // The listener is dropped with the aborted task; wait until the
        // port refuses.
        until("the dead backend to refuse", || async {
            TcpStream::connect(backend.addr)
                .await
                .is_err()
                .then_some(())
        })
        .await;
        backend
    };
    let p = free_port();
    let mesh = Running::start(table(vec![service(
        "web",
        Balance::RoundRobin,
        vec![port(p, vec![dead.clone(), live.backend()])],
    )]))
    .await;
    mesh.listening(p).await;
    for _ in 0..10 {
        let (mut s, name) = connect(p).await;
        assert_eq!(name, "live");
        assert_eq!(echo(&mut s, "x").await, "x");
    }
    let l = mesh.listener(p).expect("listener");
    let d = l
        .backends
        .iter()
        .find(|b| b.task_id == dead.task_id)
        .expect("dead stats");
    assert!(d.errors >= 5, "{d:?}");
    assert_eq!(d.retries, d.errors, "{d:?}");
    assert!(!d.last_ok && d.last_check.is_some());
    let ok = l
        .backends
        .iter()
        .find(|b| b.task_id == "task-live")
        .expect("live stats");
    assert_eq!(ok.total, 10);
    assert!(ok.last_ok && ok.errors == 0);
    assert_eq!(l.refused, 0);
    assert_eq!(l.total, 10);
    mesh.stop().await;
}

#[tokio::test]
async fn no_backends_closes_the_client_promptly() {
    let p = free_port();
    let mesh = Running::start(table(vec![service(
        "web",
        Balance::RoundRobin,
        vec![port(p, vec![])],
    )]))
    .await;
    mesh.listening(p).await;
    let mut s = TcpStream::connect((LOCAL, p)).await.expect("connect");
    assert!(closed_within(&mut s, Duration::from_secs(1)).await);
    until("refused counted", || async {
        (mesh.listener(p)?.refused == 1).then_some(())
    })
    .await;
    mesh.stop().await;
}

#[tokio::test]
async fn all_backends_failing_is_refused() {
    let p = free_port();
    let gone = Echo::start("gone").await;
    let backend = gone.backend();
    drop(gone);
    until("the backend to refuse", || async {
        TcpStream::connect(backend.addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let mesh = Running::start(table(vec![service(
        "web",
        Balance::LeastConnections,
        vec![port(p, vec![backend])],
    )]))
    .await;
    mesh.listening(p).await;
    let mut s = TcpStream::connect((LOCAL, p)).await.expect("connect");
    assert!(closed_within(&mut s, Duration::from_secs(1)).await);
    let l = until("refused counted", || async {
        mesh.listener(p).filter(|l| l.refused == 1)
    })
    .await;
    assert_eq!((l.backends[0].errors, l.backends[0].retries), (1, 0));
    mesh.stop().await;
}

#[tokio::test]
async fn table_updates_drain_backends_and_ports() {
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let p = free_port();
    let with = |backends| {
        table(vec![service(
            "web",
            Balance::RoundRobin,
            vec![port(p, backends)],
        )])
    };
    let mesh = Running::start(with(vec![a.backend(), b.backend()])).await;
    mesh.listening(p).await;

    // A connection to a, held open across the update.
    let mut on_a = loop {
        let (s, name) = connect(p).await;
        if name == "a" {
            break s;
        }
    };
    mesh.table.send_replace(with(vec![b.backend()]));
    until("a to leave rotation", || async {
        let l = mesh.listener(p)?;
        let a = l.backends.iter().find(|x| x.task_id == "task-a")?;
        (!a.in_rotation && a.current == 1).then_some(())
    })
    .await;
    assert_eq!(echo(&mut on_a, "still here").await, "still here");
    for _ in 0..6 {
        let (_s, name) = connect(p).await;
        assert_eq!(name, "b");
    }
    assert_eq!(echo(&mut on_a, "and here").await, "and here");
    drop(on_a);
    until("a's stats to go", || async {
        let l = mesh.listener(p)?;
        l.backends
            .iter()
            .all(|x| x.task_id != "task-a")
            .then_some(())
    })
    .await;

    // A connection through the port, held across the port's removal.
    let (mut through, _) = connect(p).await;
    mesh.table.send_replace(table(vec![]));
    until("the port to stop accepting", || async {
        TcpStream::connect((LOCAL, p)).await.is_err().then_some(())
    })
    .await;
    assert!(mesh.listener(p).is_none());
    assert_eq!(echo(&mut through, "after").await, "after");
    mesh.stop().await;
}

#[tokio::test]
async fn a_port_held_elsewhere_is_reported_and_retried() {
    let a = Echo::start("a").await;
    let (busy, free) = (free_port(), free_port());
    let holder = std::net::TcpListener::bind((LOCAL, busy)).expect("hold the port");
    let mesh = Running::start(table(vec![service(
        "web",
        Balance::RoundRobin,
        vec![port(busy, vec![a.backend()]), port(free, vec![a.backend()])],
    )]))
    .await;
    let l = until("the held port's error", || async {
        mesh.listener(busy).filter(|l| l.error.is_some())
    })
    .await;
    assert!(!l.listening);
    let error = l.error.unwrap_or_default();
    assert!(error.starts_with("address in use"), "{error}");
    mesh.listening(free).await;
    let (_s, name) = connect(free).await;
    assert_eq!(name, "a");

    drop(holder);
    mesh.listening(busy).await;
    assert_eq!(mesh.listener(busy).and_then(|l| l.error), None);
    let (_s, name) = connect(busy).await;
    assert_eq!(name, "a");
    mesh.stop().await;
}

async fn half_close(copy: CopyMode) {
    let a = Echo::start("a").await;
    let p = free_port();
    let mesh = Running::start_with(
        table(vec![service(
            "web",
            Balance::RoundRobin,
            vec![port(p, vec![a.backend()])],
        )]),
        copy,
    )
    .await;
    mesh.listening(p).await;
    let mut s = TcpStream::connect((LOCAL, p)).await.expect("connect");
    s.write_all(b"request body").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut reply))
        .await
        .expect("reply within the deadline")
        .expect("reply");
    assert_eq!(reply, b"a\nrequest body");
    mesh.stop().await;
}

#[tokio::test]
async fn half_close_carries_the_reply_buffered() {
    half_close(CopyMode::Buffered).await;
}

#[tokio::test]
async fn half_close_carries_the_reply_spliced() {
    half_close(CopyMode::Splice).await;
}

#[tokio::test]
async fn idle_timeout_closes_idle_connections_only_when_set() {
    let a = Echo::start("a").await;
    let (timed, untimed) = (free_port(), free_port());
    let mut short = service(
        "short",
        Balance::RoundRobin,
        vec![port(timed, vec![a.backend()])],
    );
    short.options.idle_timeout_ms = Some(300);
    let long = service(
        "long",
        Balance::RoundRobin,
        vec![port(untimed, vec![a.backend()])],
    );
    let mesh = Running::start(table(vec![short, long])).await;
    mesh.listening(timed).await;
    mesh.listening(untimed).await;

    let (mut idle, _) = connect(timed).await;
    let (mut kept, _) = connect(untimed).await;
    let started = Instant::now();
    // Activity keeps it open past the timeout.
    for _ in 0..4 {
        assert_eq!(echo(&mut idle, "tick").await, "tick");
        tokio::time::timeout(Duration::from_millis(150), idle.read(&mut [0u8; 1]))
            .await
            .expect_err("no bytes and no close while active");
    }
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(echo(&mut idle, "last").await, "last");
    let idle_from = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await);
    assert!(
        idle_from.elapsed() >= Duration::from_millis(250),
        "{:?}",
        idle_from.elapsed()
    );

    // Without a timeout, idle for far longer than 300 ms and still open.
    assert!(!closed_within(&mut kept, Duration::from_millis(900)).await);
    assert_eq!(echo(&mut kept, "alive").await, "alive");
    mesh.stop().await;
}

#[tokio::test]
async fn over_the_cap_is_refused() {
    let a = Echo::start("a").await;
    let p = free_port();
    let mut svc = service("web", Balance::RoundRobin, vec![port(p, vec![a.backend()])]);
    svc.options.max_connections = Some(2);
    let mesh = Running::start(table(vec![svc])).await;
    mesh.listening(p).await;
    let (mut one, _) = connect(p).await;
    let (_two, _) = connect(p).await;
    let mut three = TcpStream::connect((LOCAL, p)).await.expect("connect");
    assert!(closed_within(&mut three, Duration::from_secs(1)).await);
    let l = until("refused counted", || async {
        mesh.listener(p).filter(|l| l.refused == 1)
    })
    .await;
    assert_eq!((l.current, l.total), (2, 2));
    assert_eq!(echo(&mut one, "ok").await, "ok");
    // Room again once one closes.
    drop(one);
    until("a slot to free", || async {
        (mesh.listener(p)?.current == 1).then_some(())
    })
    .await;
    let (_four, name) = connect(p).await;
    assert_eq!(name, "a");
    mesh.stop().await;
}

async fn proxy_header(version: ProxyProtocol) {
    let (addr, mut received) = recorder().await;
    let p = free_port();
    let mut svc = service(
        "web",
        Balance::RoundRobin,
        vec![port(
            p,
            vec![flotilla_types::mesh::Backend {
                task_id: "t".into(),
                node_id: "n".into(),
                addr,
            }],
        )],
    );
    svc.options.proxy_protocol = Some(version);
    let mesh = Running::start(table(vec![svc])).await;
    mesh.listening(p).await;
    let mut s = TcpStream::connect((LOCAL, p)).await.expect("connect");
    let (src, dst) = (s.local_addr().expect("local"), s.peer_addr().expect("peer"));
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let got = tokio::time::timeout(DEADLINE, received.recv())
        .await
        .expect("recorded")
        .expect("bytes");
    let mut want = match version {
        ProxyProtocol::V1 => format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            src.port(),
            dst.port()
        )
        .into_bytes(),
        ProxyProtocol::V2 => {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
    };
    want.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(got, want);
    mesh.stop().await;
}

#[tokio::test]
async fn proxy_v1_header_comes_first() {
    proxy_header(ProxyProtocol::V1).await;
}

#[tokio::test]
async fn proxy_v2_header_comes_first() {
    proxy_header(ProxyProtocol::V2).await;
}

async fn counts(copy: CopyMode) {
    let a = Echo::start("a").await;
    let p = free_port();
    let mesh = Running::start_with(
        table(vec![service(
            "web",
            Balance::RoundRobin,
            vec![port(p, vec![a.backend()])],
        )]),
        copy,
    )
    .await;
    mesh.listening(p).await;
    let payload = "x".repeat(300_000);
    let mut open = Vec::new();
    for _ in 0..3 {
        let (mut s, _) = connect(p).await;
        assert_eq!(echo(&mut s, &payload).await.len(), payload.len());
        open.push(s);
    }
    let l = until("the counts", || async {
        mesh.listener(p)
            .filter(|l| l.backends[0].bytes_out == 3 * (300_000 + 2))
    })
    .await;
    let b = &l.backends[0];
    assert_eq!(b.bytes_in, 3 * 300_000);
    assert_eq!((l.current, l.max, l.total, l.refused), (3, 3, 3, 0));
    assert_eq!((b.current, b.max, b.total), (3, 3, 3));
    assert!(b.in_rotation && b.last_ok && b.last_check.is_some());
    assert_eq!(
        (l.service_name.as_str(), l.protocol),
        ("web", Protocol::Tcp)
    );
    assert_eq!(mesh.stats().node_id, "node-1");
    open.clear();
    until("the connections to close", || async {
        let l = mesh.listener(p)?;
        (l.current == 0 && l.backends[0].current == 0).then_some(())
    })
    .await;
    let l = mesh.listener(p).expect("listener");
    assert_eq!((l.max, l.total, l.backends[0].max), (3, 3, 3));
    mesh.stop().await;
}

#[tokio::test]
async fn stats_count_bytes_and_connections_buffered() {
    counts(CopyMode::Buffered).await;
}

#[tokio::test]
async fn stats_count_bytes_and_connections_spliced() {
    counts(CopyMode::Splice).await;
}

/// A UDP backend that answers each datagram with `<name>:<datagram>`.
async fn udp_echo(name: &str) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::UdpSocket::bind((LOCAL, 0)).await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let name = name.to_string();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut answer = format!("{name}:").into_bytes();
            answer.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&answer, from).await;
        }
    });
    (addr, task)
}

fn udp_backend(name: &str, addr: std::net::SocketAddr) -> Backend {
    Backend {
        task_id: format!("task-{name}"),
        node_id: "node-1".into(),
        addr,
    }
}

fn udp_port(published: u16, backends: Vec<Backend>) -> flotilla_types::mesh::MeshPort {
    let mut p = port(published, backends);
    p.protocol = Protocol::Udp;
    p
}

/// Sends `text` from `client` to the mesh's UDP port and waits for the
/// answer (retrying: the first datagram may arrive before the port
/// listens, and UDP does not say).
async fn ask(client: &tokio::net::UdpSocket, published: u16, text: &str) -> String {
    until("a udp answer", || async {
        let mut buf = [0u8; 2048];
        client
            .send_to(text.as_bytes(), (LOCAL, published))
            .await
            .ok()?;
        let got = tokio::time::timeout(Duration::from_millis(200), client.recv(&mut buf)).await;
        let n = got.ok()?.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await
}

/// UDP goes by flow: the datagrams of one client go to one backend and
/// its answers come back from the published port; clients spread over
/// the backends; a backend that leaves rotation takes its flows with it
/// at once; the same number over TCP is another port.
#[tokio::test]
async fn udp_is_forwarded_by_flow() {
    let (a, _ta) = udp_echo("a").await;
    let (b, _tb) = udp_echo("b").await;
    let p = free_port();
    let tcp_echo = Echo::start("t").await;
    let both = vec![udp_backend("a", a), udp_backend("b", b)];
    let mesh = Running::start(table(vec![service(
        "dns",
        Balance::LeastConnections,
        vec![udp_port(p, both.clone()), port(p, vec![tcp_echo.backend()])],
    )]))
    .await;
    mesh.listening(p).await;
    let one = tokio::net::UdpSocket::bind((LOCAL, 0)).await.expect("bind");
    let first = ask(&one, p, "q1").await;
    let backend = first.split(':').next().unwrap_or_default().to_string();
    assert!(first.ends_with(":q1"), "{first}");
    for i in 0..5 {
        let answer = ask(&one, p, &format!("again{i}")).await;
        assert_eq!(
            answer,
            format!("{backend}:again{i}"),
            "one flow, one backend"
        );
    }
    // A second client gets the other backend (least flows).
    let two = tokio::net::UdpSocket::bind((LOCAL, 0)).await.expect("bind");
    let other = ask(&two, p, "q2").await;
    assert!(
        !other.starts_with(&format!("{backend}:")),
        "{other} after {first}"
    );
    // TCP on the same number is its own port.
    let (_s, name) = connect(p).await;
    assert_eq!(name, "t");

    // The first client's backend leaves rotation: its next datagram goes
    // to the one left.
    let left: Vec<Backend> = both
        .iter()
        .filter(|x| !x.task_id.ends_with(&backend))
        .cloned()
        .collect();
    mesh.table.send_replace(table(vec![service(
        "dns",
        Balance::LeastConnections,
        vec![udp_port(p, left), port(p, vec![tcp_echo.backend()])],
    )]));
    let moved = until("the flow to move", || async {
        let answer = ask(&one, p, "after").await;
        (!answer.starts_with(&format!("{backend}:"))).then_some(answer)
    })
    .await;
    assert!(moved.ends_with(":after"), "{moved}");
    let stats = mesh
        .stats()
        .listeners
        .into_iter()
        .find(|l| l.published == p && l.protocol == Protocol::Udp)
        .expect("udp listener");
    assert!(stats.listening && stats.total >= 3, "{stats:?}");
    mesh.stop().await;
}

/// A flow ends after the idle timeout; with no backend a datagram is
/// dropped and counted as refused.
#[tokio::test]
async fn udp_flows_time_out_and_no_backend_refuses() {
    let (a, _ta) = udp_echo("a").await;
    let p = free_port();
    let mut svc = service(
        "dns",
        Balance::RoundRobin,
        vec![udp_port(p, vec![udp_backend("a", a)])],
    );
    svc.options.idle_timeout_ms = Some(300);
    let mesh = Running::start(table(vec![svc])).await;
    mesh.listening(p).await;
    let client = tokio::net::UdpSocket::bind((LOCAL, 0)).await.expect("bind");
    assert_eq!(ask(&client, p, "x").await, "a:x");
    let udp = |mesh: &Running| {
        mesh.stats()
            .listeners
            .into_iter()
            .find(|l| l.published == p && l.protocol == Protocol::Udp)
    };
    assert_eq!(udp(&mesh).map(|l| l.current), Some(1));
    until("the idle flow to end", || async {
        (udp(&mesh).map(|l| l.current) == Some(0)).then_some(())
    })
    .await;

    mesh.table.send_replace(table(vec![service(
        "dns",
        Balance::RoundRobin,
        vec![udp_port(p, vec![])],
    )]));
    until("a refused datagram", || async {
        let _ = client.send_to(b"y", (LOCAL, p)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        (udp(&mesh).map(|l| l.refused).unwrap_or(0) > 0).then_some(())
    })
    .await;
    mesh.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_connections() {
    let a = Echo::start("a").await;
    let p = free_port();
    let mesh = Running::start(table(vec![service(
        "web",
        Balance::RoundRobin,
        vec![port(p, vec![a.backend()])],
    )]))
    .await;
    mesh.listening(p).await;
    let (mut s, _) = connect(p).await;
    mesh.stop().await;
    assert!(closed_within(&mut s, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn the_cap_is_per_service_across_its_ports() {
    let a = Echo::start("a").await;
    let (p1, p2) = (free_port(), free_port());
    let mut svc = service(
        "web",
        Balance::RoundRobin,
        vec![port(p1, vec![a.backend()]), port(p2, vec![a.backend()])],
    );
    svc.options.max_connections = Some(1);
    let mesh = Running::start(table(vec![svc])).await;
    mesh.listening(p1).await;
    mesh.listening(p2).await;
    let (_one, _) = connect(p1).await;
    let mut two = TcpStream::connect((LOCAL, p2)).await.expect("connect");
    assert!(closed_within(&mut two, Duration::from_secs(1)).await);
    until("refused on the second port", || async {
        mesh.listener(p2).filter(|l| l.refused == 1).map(|_| ())
    })
    .await;
    mesh.stop().await;
}

async fn many_at_once(copy: CopyMode) {
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let p = free_port();
    let mesh = Running::start_with(
        table(vec![service(
            "web",
            Balance::LeastConnections,
            vec![port(p, vec![a.backend(), b.backend()])],
        )]),
        copy,
    )
    .await;
    mesh.listening(p).await;
    let clients: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let (mut s, name) = connect(p).await;
                let text = format!("client {i} ").repeat(500);
                assert_eq!(echo(&mut s, &text).await, text);
                (s, name)
            })
        })
        .collect();
    let mut held = Vec::new();
    for c in clients {
        held.push(c.await.expect("client"));
    }
    let on_a = held.iter().filter(|(_, n)| n == "a").count();
    // All 200 are open at once, so least connections splits them evenly
    // (give or take the picks that raced).
    assert!((80..=120).contains(&on_a), "{on_a} of 200 on a");
    let l = mesh.listener(p).expect("listener");
    assert_eq!((l.current, l.total), (200, 200));
    drop(held);
    until("all to close", || async {
        (mesh.listener(p)?.current == 0).then_some(())
    })
    .await;
    mesh.stop().await;
}

#[tokio::test]
async fn many_connections_at_once_buffered() {
    many_at_once(CopyMode::Buffered).await;
}

#[tokio::test]
async fn many_connections_at_once_spliced() {
    many_at_once(CopyMode::Splice).await;
}

/// A backend on a thread of its own (no runtime), echoing every
/// connection until its end.
fn thread_echo() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((LOCAL, 0)).expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// How long a round trip on an open connection through the mesh takes
/// while the runtime that runs the table loop and the listeners (the
/// daemon's, in a node) is blocked for 1 s.
async fn round_trip_while_blocked(workers: usize) -> Duration {
    use std::io::{Read, Write};
    let addr = thread_echo();
    let p = free_port();
    let backend = Backend {
        task_id: "task-t".into(),
        node_id: "node-1".into(),
        addr,
    };
    let mesh = Running::start_config(
        table(vec![service(
            "web",
            Balance::LeastConnections,
            vec![port(p, vec![backend])],
        )]),
        |config| config.workers = workers,
    )
    .await;
    mesh.listening(p).await;
    // Connected and served once before the block.
    let mut s = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect((LOCAL, p)).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.write_all(b"pong").expect("write");
        let mut got = [0u8; 4];
        s.read_exact(&mut got).expect("read");
        s
    })
    .await
    .expect("first round trip");
    let client = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        s.write_all(b"ping").expect("write");
        let mut got = [0u8; 4];
        s.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ping");
        start.elapsed()
    });
    // The test's runtime has one thread: this blocks it, and with it any
    // task of the mesh that runs there.
    std::thread::sleep(Duration::from_secs(1));
    // Joined off the runtime: with no workers the copy needs it.
    let took = tokio::task::spawn_blocking(move || client.join())
        .await
        .expect("join")
        .expect("client");
    mesh.stop().await;
    took
}

#[tokio::test]
async fn the_data_path_goes_on_while_the_daemons_runtime_is_blocked() {
    let took = round_trip_while_blocked(2).await;
    assert!(
        took < Duration::from_millis(500),
        "a round trip took {took:?} on the mesh's own threads"
    );
}

#[tokio::test]
async fn with_no_workers_the_data_path_runs_on_the_callers_runtime() {
    // The check that the test above can fail: here the copy waits for the
    // blocked runtime.
    let took = round_trip_while_blocked(0).await;
    assert!(
        took >= Duration::from_millis(500),
        "a round trip took {took:?} on a blocked runtime"
    );
    spread_with(Balance::RoundRobin, 0).await;
}
