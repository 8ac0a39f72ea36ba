//! Throughput of the two copy loops, one way through the mesh on
//! 127.0.0.1, against a direct connection. Ignored by default: run with
//! `cargo test -p flotilla-mesh --release --test bench -- --ignored --nocapture`.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::*;
use flotilla_mesh::CopyMode;
use flotilla_types::mesh::{Backend, Balance};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOTAL: u64 = 512 << 20;
const CONNS: u64 = 4;
const ROUNDS: usize = 7;

/// A backend that reads each connection to its end and answers with the
/// count of bytes it read.
async fn sink() -> SocketAddr {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(m) => n += m as u64,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes()).await;
            });
        }
    });
    addr
}

/// CPU seconds (user + system) this process used so far: the client and
/// the sink cost the same in every mode, so the difference between modes
/// is the mesh's, and it is less at the mercy of other load than a rate.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Sends `TOTAL / conns` bytes on each of `conns` connections to `to` at
/// once; the rate in MiB/s and the CPU seconds per GiB.
async fn blast(to: SocketAddr, conns: u64) -> (f64, f64) {
    let each = TOTAL / conns;
    let started = Instant::now();
    let cpu = cpu_seconds();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(to).await.expect("connect");
            let chunk = vec![7u8; 256 * 1024];
            let mut sent = 0u64;
            while sent < each {
                s.write_all(&chunk).await.expect("write");
                sent += chunk.len() as u64;
            }
            s.shutdown().await.expect("shutdown");
            let mut count = [0u8; 8];
            s.read_exact(&mut count).await.expect("count");
            assert_eq!(u64::from_be_bytes(count), sent);
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.expect("client");
    }
    let gib = sent as f64 / (1u64 << 30) as f64;
    (
        gib * 1024.0 / started.elapsed().as_secs_f64(),
        (cpu_seconds() - cpu) / gib,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn copy_throughput() {
    let backend = sink().await;
    let mut meshes = Vec::new();
    for mode in [CopyMode::Buffered, CopyMode::Splice] {
        let p = free_port();
        let backends = vec![Backend {
            task_id: "sink".into(),
            node_id: "n".into(),
            addr: backend,
        }];
        let mesh = Running::start_with(
            table(vec![service(
                "bench",
                Balance::RoundRobin,
                vec![port(p, backends)],
            )]),
            mode,
        )
        .await;
        mesh.listening(p).await;
        meshes.push((format!("{mode:?}"), SocketAddr::new(LOCAL, p), mesh));
    }
    let targets: Vec<(String, SocketAddr)> = std::iter::once(("direct".to_string(), backend))
        .chain(meshes.iter().map(|(name, addr, _)| (name.clone(), *addr)))
        .collect();
    for conns in [1, CONNS] {
        // Interleaved rounds, so that the machine's other load falls on
        // every mode alike; the median of each.
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        let _ = blast(targets[1].1, conns).await;
        for _ in 0..ROUNDS {
            for (i, (_, addr)) in targets.iter().enumerate() {
                let (rate, cpu) = blast(*addr, conns).await;
                rates[i].push(rate);
                cpus[i].push(cpu);
            }
        }
        for (i, (name, _)) in targets.iter().enumerate() {
            let (r, c) = (&mut rates[i], &mut cpus[i]);
            r.sort_by(|a, b| a.total_cmp(b));
            c.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{name:>8}, {conns} conn: median {:.0} MiB/s (min {:.0}, max {:.0}), {:.2} CPU s/GiB (min {:.2})",
                r[r.len() / 2],
                r[0],
                r[r.len() - 1],
                c[c.len() / 2],
                c[0],
            );
        }
    }
    for (_, _, mesh) in meshes {
        mesh.stop().await;
    }
}
