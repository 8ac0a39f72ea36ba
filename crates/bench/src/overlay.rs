//! `flotilla-bench overlay`: TCP throughput between two nodes over the
//! network wiring (`flotilla_agent::wiring`) against the plain path
//! between the same two namespaces, in one run.
//!
//! Setup (needs root and iproute2): two node namespaces on a private
//! bridge (testkit's `Net`), one overlay network wired on both with the
//! agent's own commands, a task namespace on each node. Paths:
//! 1. **plain**: node a's namespace to node b's address (what any two
//!    containers or hosts on that bridge get);
//! 2. **overlay**: task a to task b at its task address, through both
//!    bridges and VXLAN.
//!
//! 3. **encrypted**: task to task on a second network with
//!    `--opt encrypted`: both bridges hold a TAP device of the node's
//!    tunnel (`flotilla_agent::sealed`, AES-256-GCM in userspace: this
//!    kernel has no ESP, no AES-GCM for XFRM and no WireGuard).
//!
//! 4. **vip**: task a to a virtual address whose one task is b, through
//!    node a's proxy (`flotilla_agent::vips`: the bridge holds the
//!    address, the node's rules redirect to the proxy, which connects from
//!    task a's namespace), with the node's own rules and commands.
//!
//! Each run sends for `--seconds` through one TCP connection, 1 MiB
//! writes, and counts what arrives; rounds rotate the paths' order. CPU
//! is the whole machine's busy time from `/proc/stat` during the run
//! (VXLAN's work happens in the kernel's softirqs), per GiB carried.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use flotilla_agent::wiring::{apply, attach_task, steps, Attachment, Ip, NetworkWiring, System};
use flotilla_testkit::net::{in_netns, Namespaces, Net};
use flotilla_types::Subnet;

/// What the overlay bench runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub seconds: u64,
    pub rounds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    Plain,
    Overlay,
    Encrypted,
    Vip,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Plain => "plain",
            Path::Overlay => "overlay",
            Path::Encrypted => "encrypted",
            Path::Vip => "vip",
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    gbit_s: f64,
    cpu_s_per_gib: f64,
}

/// Busy and total jiffies of the whole machine.
fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .next()
        .ok_or_else(|| anyhow!("empty /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle and iowait are the 4th and 5th.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Sends for `seconds` from namespace `from` to `to`, one connection.
fn send(from: &str, to_ns: &str, to: SocketAddr, seconds: u64) -> Result<Run> {
    send_via(from, to_ns, to, to, seconds)
}

/// [`send`] to `to`, with the receiver listening at `listen` in `to_ns`
/// (a virtual address `to` leads there).
fn send_via(
    from: &str,
    to_ns: &str,
    listen: SocketAddr,
    to: SocketAddr,
    seconds: u64,
) -> Result<Run> {
    let listener = in_netns(to_ns, move || TcpListener::bind(listen).context("bind"))??;
    let receiver = std::thread::spawn(move || -> Result<u64> {
        let (mut s, _) = listener.accept().context("accept")?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) => return Err(e.into()),
            }
        }
    });
    let (busy0, _) = cpu_jiffies()?;
    let started = Instant::now();
    in_netns(from, move || -> Result<()> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .with_context(|| format!("connect to {to}"))?;
        let buf = vec![7u8; 1 << 20];
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until {
            s.write_all(&buf).context("write")?;
        }
        s.shutdown(std::net::Shutdown::Write).context("shutdown")?;
        Ok(())
    })??;
    let bytes = receiver
        .join()
        .map_err(|_| anyhow!("the receiver panicked"))??;
    let elapsed = started.elapsed().as_secs_f64();
    let (busy1, _) = cpu_jiffies()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_s = (busy1.saturating_sub(busy0)) as f64 / hz;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    Ok(Run {
        gbit_s: bytes as f64 * 8.0 / elapsed / 1e9,
        cpu_s_per_gib: if gib > 0.0 { cpu_s / gib } else { 0.0 },
    })
}

/// A server at `listen` in `to_ns` that answers each connection's one
/// byte with one and closes, for as long as the bench runs.
fn echo_byte(to_ns: &str, listen: SocketAddr) -> Result<()> {
    let listener = in_netns(to_ns, move || TcpListener::bind(listen).context("bind"))??;
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    Ok(())
}

/// Connections opened one after the other for `seconds` from `from` to
/// `to` ([`echo_byte`]), one byte each way; returns connections per
/// second.
fn connections(from: &str, to: SocketAddr, seconds: u64) -> Result<f64> {
    in_netns(from, move || -> Result<f64> {
        let started = Instant::now();
        let until = started + Duration::from_secs(seconds);
        let mut n = 0u64;
        while Instant::now() < until {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .with_context(|| format!("connect to {to}"))?;
            s.write_all(b"x").context("write")?;
            // Read to the end: the server closes first, so the client
            // holds no TIME_WAIT; closing after one byte would leave one
            // per connection when the server's FIN comes a moment after
            // its byte (as through the proxy), and the ephemeral ports of
            // the client's namespace would run short.
            let mut b = Vec::with_capacity(1);
            s.read_to_end(&mut b).context("read")?;
            anyhow::ensure!(b == b"x", "connection {n}: got {b:?}");
            n += 1;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    })?
}

/// The runtime of node a's proxy. The bench itself runs on a runtime,
/// in which a runtime may not block to end: this one ends in the
/// background, also when the bench fails half way.
struct ProxyRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the bench and prints each run, the medians and the ratios.
pub fn run(config: &Config) -> Result<()> {
    let mut net = Net::new().context("the private network (needs root and iproute2)")?;
    let a = net.add_host()?;
    let b = net.add_host()?;
    let subnet: Subnet = "10.0.60.0/24".parse().map_err(|e| anyhow!("{e}"))?;
    let vni = 4096 + std::process::id() % 4096;
    let tag = std::process::id() % 100_000;
    let tasks = Namespaces(vec![
        format!("flba{tag}"),
        format!("flbb{tag}"),
        format!("flbc{tag}"),
        format!("flbd{tag}"),
    ]);
    let addrs = [Ipv4Addr::new(10, 0, 60, 3), Ipv4Addr::new(10, 0, 60, 4)];
    let sealed_subnet: Subnet = "10.0.61.0/24".parse().map_err(|e| anyhow!("{e}"))?;
    let sealed_vni = vni + 1;
    let sealed_addrs = [Ipv4Addr::new(10, 0, 61, 3), Ipv4Addr::new(10, 0, 61, 4)];
    let key = flotilla_agent::sealed::random_key();
    let nodes: [IpAddr; 2] = [a.addr.parse()?, b.addr.parse()?];
    let ips = [
        System {
            netns: Some(a.ns.clone()),
        },
        System {
            netns: Some(b.ns.clone()),
        },
    ];
    for i in 0..2 {
        let mut want = BTreeMap::new();
        want.insert(
            vni,
            NetworkWiring {
                vni,
                subnet,
                internal: false,
                encrypted: false,
                key: None,
                peers: [nodes[1 - i]].into_iter().collect(),
                remote: BTreeMap::new(),
            },
        );
        apply(&ips[i], &steps(&BTreeMap::new(), &want, nodes[i]))?;
        let attachment = Attachment {
            vni,
            subnet,
            addr: addrs[i],
            no_route: false,
            mtu: flotilla_agent::wiring::OVERLAY_MTU,
        };
        for command in attach_task(&tasks.0[i], 0, &format!("flb{tag}x{i}"), &attachment) {
            ips[i].run(&command)?;
        }
    }
    let mut tunnels = Vec::new();
    for i in 0..2 {
        use flotilla_agent::sealed::{mac_of, Key, Tunnel, SEALED_MTU};
        let mut want = BTreeMap::new();
        want.insert(
            sealed_vni,
            NetworkWiring {
                vni: sealed_vni,
                subnet: sealed_subnet,
                internal: false,
                encrypted: true,
                key: Some(key.clone()),
                peers: [nodes[1 - i]].into_iter().collect(),
                remote: BTreeMap::new(),
            },
        );
        apply(&ips[i], &steps(&BTreeMap::new(), &want, nodes[i]))?;
        let (local, k) = (nodes[i], key.clone());
        let ns = if i == 0 { a.ns.clone() } else { b.ns.clone() };
        let tunnel = in_netns(&ns, move || -> Result<_> {
            let t = Tunnel::bind(local)?;
            t.add(sealed_vni, Key::from_hex(&k).map_err(|e| anyhow!("{e}"))?)?;
            Ok(t)
        })??;
        for c in flotilla_agent::wiring::tap_commands(sealed_vni) {
            ips[i].run(&c)?;
        }
        tunnel.route(
            sealed_vni,
            vec![nodes[1 - i]],
            [(mac_of(sealed_addrs[1 - i]), nodes[1 - i])]
                .into_iter()
                .collect(),
        );
        let attachment = Attachment {
            vni: sealed_vni,
            subnet: sealed_subnet,
            addr: sealed_addrs[i],
            no_route: false,
            mtu: SEALED_MTU,
        };
        for command in attach_task(&tasks.0[2 + i], 0, &format!("flb{tag}s{i}"), &attachment) {
            ips[i].run(&command)?;
        }
        tunnels.push(tunnel);
    }
    // The virtual address of a service whose one task is b, on node a.
    let vip = Ipv4Addr::new(10, 0, 60, 2);
    let runtime = ProxyRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
    ));
    let tracker = tokio_util::task::TaskTracker::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let proxy = {
        let _in = runtime.0.as_ref().map(tokio::runtime::Runtime::enter);
        flotilla_agent::vips::start(Some(&a.ns), &tracker, stop.clone(), Default::default())?
    };
    let mut table = flotilla_mesh::vip::VipTable::default();
    table.vips.insert(
        vip,
        flotilla_mesh::vip::VipRoute {
            vni,
            service: "b".into(),
            backends: vec![addrs[1]],
        },
    );
    table.clients.insert(
        addrs[0],
        flotilla_mesh::vip::Client {
            task_id: "a".into(),
            netns: tasks.0[0].clone(),
            vni,
        },
    );
    proxy.table.send_replace(std::sync::Arc::new(table));
    for c in flotilla_agent::vips::bridge_vip_commands(vni, None, &[vip].into_iter().collect()) {
        ips[0].run(&c)?;
    }
    let wired = [flotilla_agent::netfilter::WiredNetwork {
        vni,
        subnet,
        internal: false,
        encrypted: false,
    }];
    let redirect = flotilla_agent::netfilter::VipRedirect {
        port: proxy.port,
        vips: [(vni, [vip].into_iter().collect())].into_iter().collect(),
    };
    ips[0].nft(
        None,
        &flotilla_agent::netfilter::node_rules(&wired, &[], Some(&redirect)),
    )?;
    println!(
        "== overlay: node a {} and node b {} (namespaces on a bridge), tasks {} and {} on VXLAN {vni}, {} s per run, {} rounds",
        nodes[0], nodes[1], addrs[0], addrs[1], config.seconds, config.rounds
    );
    let order = [Path::Plain, Path::Overlay, Path::Encrypted, Path::Vip];
    let mut results: BTreeMap<Path, Vec<Run>> = BTreeMap::new();
    let mut port = 7100u16;
    for round in 0..config.rounds {
        for k in 0..order.len() {
            let path = order[(round + k) % order.len()];
            port += 1;
            let run = match path {
                Path::Plain => send(
                    &a.ns,
                    &b.ns,
                    SocketAddr::new(nodes[1], port),
                    config.seconds,
                )?,
                Path::Overlay => send(
                    &tasks.0[0],
                    &tasks.0[1],
                    SocketAddr::new(IpAddr::V4(addrs[1]), port),
                    config.seconds,
                )?,
                Path::Encrypted => send(
                    &tasks.0[2],
                    &tasks.0[3],
                    SocketAddr::new(IpAddr::V4(sealed_addrs[1]), port),
                    config.seconds,
                )?,
                Path::Vip => send_via(
                    &tasks.0[0],
                    &tasks.0[1],
                    SocketAddr::new(IpAddr::V4(addrs[1]), port),
                    SocketAddr::new(IpAddr::V4(vip), port),
                    config.seconds,
                )?,
            };
            println!(
                "  round {} {:<10} {:>7.2} Gbit/s  {:>6.2} CPU s/GiB",
                round + 1,
                path.name(),
                run.gbit_s,
                run.cpu_s_per_gib
            );
            results.entry(path).or_default().push(run);
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let med = |p: Path, f: fn(&Run) -> f64| {
        median(
            results
                .get(&p)
                .map(|r| r.iter().map(f).collect())
                .unwrap_or_default(),
        )
    };
    println!("\n== results: medians of {} rounds\n", config.rounds);
    println!("| path | Gbit/s | CPU s/GiB | throughput / plain | CPU per GiB / plain |");
    println!("|---|---:|---:|---:|---:|");
    let plain = med(Path::Plain, |r| r.gbit_s);
    let plain_cpu = med(Path::Plain, |r| r.cpu_s_per_gib);
    for p in order {
        let (g, c) = (med(p, |r| r.gbit_s), med(p, |r| r.cpu_s_per_gib));
        println!(
            "| {} | {g:.2} | {c:.2} | {:.2} | {:.2} |",
            p.name(),
            if plain > 0.0 { g / plain } else { 0.0 },
            if plain_cpu > 0.0 { c / plain_cpu } else { 0.0 }
        );
    }
    println!(
        "\nplain: node a's namespace to node b's address on the bridge; overlay: task to task over VXLAN;"
    );
    println!(
        "encrypted: task to task through the nodes' tunnels (TAP, AES-256-GCM in userspace, one thread per direction);"
    );
    println!("vip: task a to a virtual address whose one task is b, through node a's proxy.");

    // What a connection costs to open: one after the other, connect, one
    // byte each way, close; direct to task b against through the proxy.
    println!(
        "\n== connections opened one after the other, task a to task b, {} s each, {} rounds\n",
        config.seconds, config.rounds
    );
    let mut direct_rates = Vec::new();
    let mut vip_rates = Vec::new();
    // One server and one port each, for every round, as a client meets a
    // service (the ports of one virtual address share the proxy's
    // address pair: `netfilter::VipRedirect`).
    let direct = SocketAddr::new(IpAddr::V4(addrs[1]), port + 1);
    echo_byte(&tasks.0[1], direct)?;
    echo_byte(&tasks.0[1], SocketAddr::new(IpAddr::V4(addrs[1]), port + 2))?;
    let through = SocketAddr::new(IpAddr::V4(vip), port + 2);
    for round in 0..config.rounds {
        let d = connections(&tasks.0[0], direct, config.seconds)?;
        let v = connections(&tasks.0[0], through, config.seconds)?;
        println!(
            "  round {} direct {d:>8.0} conn/s   vip {v:>8.0} conn/s",
            round + 1
        );
        direct_rates.push(d);
        vip_rates.push(v);
    }
    let (d, v) = (median(direct_rates), median(vip_rates));
    println!("\n| path | connections/s | / direct |");
    println!("|---|---:|---:|");
    println!("| direct (task to task address) | {d:.0} | 1.00 |");
    println!(
        "| vip (through node a's proxy) | {v:.0} | {:.2} |",
        if d > 0.0 { v / d } else { 0.0 }
    );
    stop.cancel();
    drop(runtime);
    for (t, node) in tunnels.iter().zip(["a", "b"]) {
        use std::sync::atomic::Ordering::Relaxed;
        let (frames, bytes) = (
            t.counters.sealed.load(Relaxed),
            t.counters.bytes.load(Relaxed),
        );
        println!(
            "tunnel of node {node}: {frames} frames sealed, {} bytes each on average, {} dropped",
            bytes / frames.max(1),
            t.counters.dropped.load(Relaxed)
        );
        t.shutdown();
    }
    drop(tasks);
    drop(net);
    Ok(())
}
