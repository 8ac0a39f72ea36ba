//! `flotilla-bench`: measures a one-node Flotilla cluster against the
//! performance targets of the issue, and Docker Swarm mode on the local
//! Docker Engine as the peer, in the same run on the same machine.
//!
//! `flotilla-bench one-node [--flotilla PATH] [--replicas 500]
//! [--latency-samples 200] [--cli-samples 30] [--skip-swarm]
//! [--swarm-replicas 50]`
//!
//! `flotilla-bench overlay [--seconds 5] [--rounds 3]`: TCP throughput
//! between two node namespaces, plain, over the VXLAN wiring and through
//! the encrypted tunnel, with the ratios to plain (`overlay.rs`; needs
//! root).
//!
//! `flotilla-bench writes [--flotilla PATH] [--etcd PATH] [--clients
//! 1,16,64,256] [--seconds 10]`: write throughput of 3 Flotilla managers
//! against 3 etcd members on loopback, with the same client (`writes.rs`).
//!
//! `flotilla-bench scale [--flotilla PATH] [--tasks 100000] [--scale-to
//! 20000]`: 3 managers holding many pending tasks, a fourth joining from a
//! snapshot, one big scale; leader RSS and snapshot bytes per task
//! (`scale.rs`).
//!
//! `flotilla-bench failover [--flotilla PATH] [--reps 20] [--replicas 10]
//! [--port 24280] [--keep-logs DIR]`: a cluster of 3 managers and 2 workers on loopback
//! addresses of this machine; leader kill to the first successful write,
//! and worker kill to all its tasks running elsewhere (see `failover.rs`).
//!
//! `flotilla-bench mesh [--flotilla PATH] [--port 24580] [--haproxy-port
//! PORT+1] [--threads 2] [--connections 64] [--seconds 10] [--rounds 3]`:
//! the routing mesh against HAProxy (`mode tcp`, `balance leastconn`) and
//! the backends directly, in front of the same 3 `flotilla demo http`
//! tasks, with `wrk` keep-alive and one connection per request
//! (`mesh.rs`).
//!
//! # What is measured, and how
//! Every Flotilla figure is taken on a fresh `flotilla daemon` with a new
//! temporary data dir, after `init` and after the node leads its cluster.
//! The daemon carries a unique environment variable (`FLOTILLA_BENCH_MARK`),
//! which its tasks inherit; cleanup SIGTERMs the daemon, SIGKILLs it if it
//! lingers, then kills every process still carrying the mark.
//!
//! 1. **Convergence**: from the call of `create_service` (replicated,
//!    `sleep 100000`, default restart policy) until `service(name)` reports
//!    `replicas.running == N`, polled every 20 ms, deadline 120 s. Done for
//!    `--replicas` (target <= 5 s) and for `--swarm-replicas`, to compare
//!    with Swarm. Then `remove_service`, timed until no task process is left.
//! 2. **Idle memory**: VmRSS of a fresh daemon 3 s after `init`, no services
//!    (target <= 30 MB).
//! 3. **API latency**: sequential round trips of the typed client over the
//!    Unix socket: `create_service` of `lat-i` with 0 replicas, so nothing
//!    starts (target p99 <= 20 ms), then `services()` (listing those
//!    services). Also `flotilla service create -d --replicas 0` through the
//!    CLI, process start to exit, as the fair peer of the Docker CLI.
//! 4. **Docker Swarm** (unless `--skip-swarm` or no engine): a FROM-scratch
//!    image around Debian's static busybox (`scripts/bench-deps.sh`
//!    installs it), a one-node swarm (initialised by the bench if the engine
//!    was not in one, and left again at the end). Measured: `docker service
//!    create --detach` of `--swarm-replicas` tasks until `docker service ls`
//!    shows N/N (deadline 300 s, includes the CLI's start); dockerd's RSS
//!    before any service (dockerd serves more than swarm; containerd and the
//!    per-container shims are not counted); `docker service create --detach
//!    --replicas 0` through the CLI; and removal until the containers are
//!    gone. Services use `--init` so that `sleep` is not PID 1 and stops on
//!    SIGTERM as it does under Flotilla.
//!
//! The final table gives, per metric, the ratio peer/flotilla for times
//! (> 1: Flotilla is faster) and flotilla/peer for memory (< 1: Flotilla is
//! smaller). A failed step prints its error and the bench goes on; the exit
//! status is non-zero only when setup failed (no runnable `flotilla`, or a
//! daemon that cannot be started and initialised).

mod cluster;
mod containers;
mod daemon;
mod failover;
mod flotilla;
mod logs;
mod mesh;
mod overlay;
mod procs;
mod scale;
mod stats;
mod swarm;
mod writes;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use daemon::Daemon;
use stats::Summary;
use swarm::Swarm;

/// Benchmarks Flotilla against its targets and Docker Swarm.
#[derive(Debug, Parser)]
#[command(name = "flotilla-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One node: convergence, idle memory and API latency, with Swarm as the peer
    OneNode(OneNodeArgs),
    /// Five nodes (3 managers, 2 workers) on loopback: leader kill to a write, worker kill to its tasks running elsewhere
    Failover(FailoverArgs),
    /// Containers: N replicas of a local image with the docker driver, against docker service create in Swarm mode
    Containers(ContainersArgs),
    /// Write throughput: 3 etcd members against 3 Flotilla managers on loopback, same client, 1 to 256 clients
    Writes(WritesArgs),
    /// State at scale: 3 managers holding 100,000 pending tasks, a fourth joining from a snapshot, a scale from 0 to 20,000
    Scale(ScaleArgs),
    /// Routing mesh against HAProxy and the direct path, same 3 backends, same wrk load, keep-alive and a connection per request
    Mesh(MeshArgs),
    /// Overlay network throughput between two node namespaces: plain, VXLAN, VXLAN with ESP (needs root)
    Overlay(OverlayArgs),
}

#[derive(Debug, Args)]
struct OverlayArgs {
    /// Seconds of each run
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of the three paths; the table shows medians
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Args)]
struct MeshArgs {
    /// The flotilla binary [default: next to this binary, else on PATH]
    #[arg(long)]
    flotilla: Option<PathBuf>,
    /// Published port of the service, where the mesh listens
    #[arg(long, default_value_t = 24580)]
    port: u16,
    /// HAProxy's port on 127.0.0.1 [default: --port plus one]
    #[arg(long)]
    haproxy_port: Option<u16>,
    /// wrk threads (-t)
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// wrk connections (-c)
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of each wrk run (-d)
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds of the three paths per mode; the table shows medians
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The wrk binary [default: on PATH]
    #[arg(long)]
    wrk: Option<PathBuf>,
    /// The haproxy binary [default: on PATH, /usr/sbin or /sbin]
    #[arg(long)]
    haproxy: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// The flotilla binary [default: next to this binary, else on PATH]
    #[arg(long)]
    flotilla: Option<PathBuf>,
    /// Pending tasks of the first service
    #[arg(long, default_value_t = 100_000)]
    tasks: u64,
    /// Replicas of the second service's scale from 0
    #[arg(long, default_value_t = 20_000)]
    scale_to: u64,
    /// Cluster port of every node, on 127.0.0.51 and up
    #[arg(long, default_value_t = 24480)]
    port: u16,
    /// Copy the daemons' logs into this directory when the cluster stops
    #[arg(long)]
    keep_logs: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WritesArgs {
    /// The flotilla binary [default: next to this binary, else on PATH]
    #[arg(long)]
    flotilla: Option<PathBuf>,
    /// The etcd server binary (Debian's etcd-server; scripts/bench-deps.sh installs it)
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// Levels of concurrent clients, comma-separated
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 16, 64, 256])]
    clients: Vec<usize>,
    /// Seconds of writes per level and side
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// First port: etcd's client ports are PORT..PORT+2, peers PORT+10..PORT+12, Flotilla's cluster port PORT+20 on 127.0.0.41-43
    #[arg(long, default_value_t = 23790)]
    port: u16,
    /// Copy the managers' logs here when the run ends (set FLOTILLA_LOG for more detail)
    #[arg(long)]
    keep_logs: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ContainersArgs {
    /// The flotilla binary [default: next to this binary, else on PATH]
    #[arg(long)]
    flotilla: Option<PathBuf>,
    /// Replicas of the service on each side
    #[arg(long, default_value_t = 50)]
    replicas: u64,
    /// Repetitions (the side that goes first alternates)
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

#[derive(Debug, Args)]
struct FailoverArgs {
    /// The flotilla binary [default: next to this binary, else on PATH]
    #[arg(long)]
    flotilla: Option<PathBuf>,
    /// Repetitions of each measurement
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Replicas of the service (the leader measurement alternates N+1 and N)
    #[arg(long, default_value_t = 10)]
    replicas: u64,
    /// Cluster port of every node, on 127.0.0.11 to 127.0.0.15 (the client API port, if the daemon has one, is this plus one)
    #[arg(long, default_value_t = 24280)]
    port: u16,
    /// Copy the daemons' logs into this directory when the cluster stops
    #[arg(long)]
    keep_logs: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct OneNodeArgs {
    /// The flotilla binary [default: next to this binary, else on PATH]
    #[arg(long)]
    flotilla: Option<PathBuf>,
    /// Replicas of the convergence run checked against the target
    #[arg(long, default_value_t = 500)]
    replicas: u64,
    /// Sequential samples of each client API call
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,
    /// Sequential samples of `service create` through each CLI
    #[arg(long, default_value_t = 30)]
    cli_samples: usize,
    /// Do not measure Docker Swarm
    #[arg(long)]
    skip_swarm: bool,
    /// Replicas of the convergence run compared with Swarm (run on both)
    #[arg(long, default_value_t = 50)]
    swarm_replicas: u64,
}

/// How long the idle daemons settle before their memory is read.
const SETTLE: Duration = Duration::from_secs(3);

/// Picks one percentile out of a summary.
type Pick = fn(&Summary) -> f64;

/// A table cell: a figure, or why there is none.
type Cell = std::result::Result<f64, &'static str>;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Time,
    Memory,
}

struct Row {
    metric: String,
    kind: Kind,
    flotilla: Cell,
    peer: Cell,
    /// Upper bound from the issue, in the row's unit.
    target: Option<f64>,
}

/// Everything measured, for the table.
#[derive(Default)]
struct Results {
    facts: Vec<(&'static str, String)>,
    idle_kib: Option<u64>,
    converge_big: Option<flotilla::Convergence>,
    converge_small: Option<flotilla::Convergence>,
    api_create: Option<Summary>,
    api_list: Option<Summary>,
    cli_create: Option<Summary>,
    swarm_skipped: Option<String>,
    swarm_version: Option<String>,
    dockerd_kib: Option<u64>,
    dockerd_before_init_kib: Option<u64>,
    containerd_kib: Option<u64>,
    swarm_converge: Option<(Vec<(String, Duration)>, Duration)>,
    swarm_remove: Option<Duration>,
    swarm_cli_create: Option<Summary>,
    failures: Vec<String>,
    setup_failed: bool,
}

impl Results {
    fn fail(&mut self, step: &str, e: &anyhow::Error) {
        println!("  FAILED: {e:#}");
        self.failures.push(format!("{step}: {e:#}"));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        // On Ctrl-C or SIGTERM the bench future is dropped, and with it every
        // guard, which stops what it started.
        // Both handlers are installed before any work starts (and override a
        // SIGINT that a non-interactive shell set to ignored for `&` jobs).
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let work = async {
            match &cli.command {
                Command::OneNode(args) => one_node(args).await,
                Command::Failover(args) => failover_cmd(args).await,
                Command::Scale(args) => {
                    let flotilla = locate_flotilla(args.flotilla.as_deref()).context("setup")?;
                    scale::run(&scale::Config {
                        flotilla,
                        tasks: args.tasks,
                        scale_to: args.scale_to,
                        port: args.port,
                        keep_logs: args.keep_logs.clone(),
                    })
                    .await
                }
                Command::Writes(args) => {
                    let flotilla = locate_flotilla(args.flotilla.as_deref()).context("setup")?;
                    writes::run(&writes::Config {
                        flotilla,
                        etcd: args.etcd.clone(),
                        clients: args.clients.clone(),
                        seconds: args.seconds,
                        port: args.port,
                        keep_logs: args.keep_logs.clone(),
                    })
                    .await
                }
                // No target of its own: the ratios are for the record.
                Command::Overlay(args) => overlay::run(&overlay::Config {
                    seconds: args.seconds,
                    rounds: args.rounds,
                })
                .map(|()| true),
                Command::Mesh(args) => {
                    let flotilla = locate_flotilla(args.flotilla.as_deref()).context("setup")?;
                    mesh::run(&mesh::Config {
                        flotilla,
                        port: args.port,
                        haproxy_port: args.haproxy_port.unwrap_or(args.port.saturating_add(1)),
                        threads: args.threads,
                        connections: args.connections,
                        seconds: args.seconds,
                        rounds: args.rounds,
                        wrk: args.wrk.clone(),
                        haproxy: args.haproxy.clone(),
                    })
                    .await
                }
                Command::Containers(args) => {
                    let flotilla = locate_flotilla(args.flotilla.as_deref()).context("setup")?;
                    containers::run(&containers::Config {
                        flotilla,
                        replicas: args.replicas,
                        reps: args.reps,
                    })
                    .await
                }
            }
        };
        tokio::select! {
            r = work => r,
            _ = int.recv() => Err(anyhow!("interrupted (SIGINT); cleaned up")),
            _ = term.recv() => Err(anyhow!("interrupted (SIGTERM); cleaned up")),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn failover_cmd(args: &FailoverArgs) -> Result<bool> {
    let flotilla = locate_flotilla(args.flotilla.as_deref()).context("setup")?;
    failover::run(&failover::Config {
        flotilla,
        reps: args.reps,
        replicas: args.replicas,
        port: args.port,
        keep_logs: args.keep_logs.clone(),
    })
    .await
}

/// Finds the flotilla binary and checks that it runs.
fn locate_flotilla(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let sibling = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("flotilla")));
            match sibling.filter(|p| procs::is_executable(p)) {
                Some(p) => p,
                None => std::env::var_os("PATH")
                    .and_then(|paths| {
                        std::env::split_paths(&paths)
                            .map(|d| d.join("flotilla"))
                            .find(|p| procs::is_executable(p))
                    })
                    .ok_or_else(|| {
                        anyhow!("no flotilla binary next to flotilla-bench or on PATH; build it (cargo build --release -p flotilla) or pass --flotilla")
                    })?,
            }
        }
    };
    let out = procs::run_blocking(
        &path.to_string_lossy(),
        &["--version"],
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        bail!("{} --version failed ({})", path.display(), out.status);
    }
    println!(
        "flotilla: {} ({})",
        path.display(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(path)
}

/// Starts a daemon for a step; a failure here is a setup failure.
async fn start_daemon(flotilla: &Path, label: &str, r: &mut Results) -> Option<Daemon> {
    match Daemon::start(flotilla, label).await {
        Ok(d) => Some(d),
        Err(e) => {
            r.setup_failed = true;
            r.fail(&format!("starting a daemon for {label}"), &e);
            None
        }
    }
}

fn print_convergence(c: &flotilla::Convergence) {
    let marks: Vec<String> = c
        .milestones
        .iter()
        .map(|(l, d)| format!("{l} {:.3} s", d.as_secs_f64()))
        .collect();
    println!(
        "  {} replicas running after {:.3} s (create_service {:.1} ms; {}); {} task processes seen",
        c.replicas,
        c.total.as_secs_f64(),
        c.create_rtt.as_secs_f64() * 1e3,
        marks.join(", "),
        c.processes
    );
    if let Some(kib) = c.rss_kib {
        println!(
            "  daemon RSS with the tasks running: {:.1} MiB",
            procs::mib(kib)
        );
    }
    match &c.removal {
        Ok(d) => println!(
            "  removed: all task processes gone after {:.3} s",
            d.as_secs_f64()
        ),
        Err(e) => println!("  removal FAILED: {e}"),
    }
}

/// Runs every step; Ok(false) when setup failed.
async fn one_node(args: &OneNodeArgs) -> Result<bool> {
    let mut r = Results {
        facts: procs::machine_facts(),
        ..Default::default()
    };
    println!("== machine");
    for (k, v) in &r.facts {
        println!("  {k}: {v}");
    }
    let flotilla = locate_flotilla(args.flotilla.as_deref()).context("setup")?;

    println!("== flotilla: idle memory (fresh daemon after init, no services, {SETTLE:?} settle)");
    if let Some(d) = start_daemon(&flotilla, "idle", &mut r).await {
        match flotilla::idle_memory(d, SETTLE).await {
            Ok(kib) => {
                println!("  VmRSS {:.1} MiB", procs::mib(kib));
                r.idle_kib = Some(kib);
            }
            Err(e) => r.fail("idle memory", &e),
        }
    }

    for (replicas, big) in [(args.replicas, true), (args.swarm_replicas, false)] {
        println!("== flotilla: convergence of {replicas} replicas of sleep 100000");
        let Some(d) = start_daemon(&flotilla, &format!("converge{replicas}"), &mut r).await else {
            continue;
        };
        match flotilla::converge(d, replicas).await {
            Ok(c) => {
                print_convergence(&c);
                if let Err(e) = &c.removal {
                    r.failures
                        .push(format!("removal of {replicas} replicas: {e}"));
                }
                if big {
                    r.converge_big = Some(c);
                } else {
                    r.converge_small = Some(c);
                }
            }
            Err(e) => r.fail(&format!("convergence of {replicas} replicas"), &e),
        }
    }

    println!(
        "== flotilla: API latency ({} sequential samples each; CLI {} samples)",
        args.latency_samples, args.cli_samples
    );
    if let Some(d) = start_daemon(&flotilla, "latency", &mut r).await {
        match flotilla::create_latency(&d, args.latency_samples).await {
            Ok(s) => {
                println!("  client create_service (replicas 0): {s}");
                r.api_create = Some(s);
            }
            Err(e) => r.fail("create_service latency", &e),
        }
        match flotilla::list_latency(&d, args.latency_samples).await {
            Ok(s) => {
                println!("  client services() (listing the services above): {s}");
                r.api_list = Some(s);
            }
            Err(e) => r.fail("services() latency", &e),
        }
        match flotilla::cli_create_latency(&flotilla, &d, args.cli_samples).await {
            Ok(s) => {
                println!("  CLI flotilla service create -d --replicas 0: {s}");
                r.cli_create = Some(s);
            }
            Err(e) => r.fail("flotilla CLI create latency", &e),
        }
        match d.stop() {
            Ok(notes) if !notes.is_empty() => println!("  cleanup: {notes}"),
            Ok(_) => {}
            Err(e) => r.fail("stopping the latency daemon", &e),
        }
    }

    if args.skip_swarm {
        r.swarm_skipped = Some("--skip-swarm".to_string());
    } else {
        swarm_steps(args, &mut r).await;
    }
    if let Some(why) = &r.swarm_skipped {
        println!("== Docker Swarm skipped: {why}");
    }

    print_report(args, &r);
    Ok(!r.setup_failed)
}

async fn swarm_steps(args: &OneNodeArgs, r: &mut Results) {
    println!(
        "== Docker Swarm: preparing (engine, swarm, image {})",
        swarm::IMAGE
    );
    let mut sw = match Swarm::prepare().await {
        Ok(s) => s,
        Err(why) => {
            r.swarm_skipped = Some(why);
            return;
        }
    };
    println!("  engine {}", sw.engine_version);
    if let Some(kib) = sw.dockerd_before_init_kib {
        println!(
            "  dockerd VmRSS before the bench's swarm init: {:.1} MiB",
            procs::mib(kib)
        );
    }
    r.dockerd_before_init_kib = sw.dockerd_before_init_kib;
    r.swarm_version = Some(sw.engine_version.clone());

    tokio::time::sleep(SETTLE).await;
    match Swarm::engine_rss() {
        Ok((dockerd, containerd)) => {
            println!(
                "  idle: dockerd VmRSS {:.1} MiB{}",
                procs::mib(dockerd),
                containerd
                    .map(|c| format!(" (containerd {:.1} MiB, not counted)", procs::mib(c)))
                    .unwrap_or_default()
            );
            r.dockerd_kib = Some(dockerd);
            r.containerd_kib = containerd;
        }
        Err(e) => r.fail("dockerd memory", &e),
    }

    println!(
        "== Docker Swarm: convergence of {} replicas",
        args.swarm_replicas
    );
    match sw.converge(args.swarm_replicas).await {
        Ok((marks, total)) => {
            let m: Vec<String> = marks
                .iter()
                .map(|(l, d)| format!("{l} {:.3} s", d.as_secs_f64()))
                .collect();
            println!(
                "  {} replicas running after {:.3} s ({})",
                args.swarm_replicas,
                total.as_secs_f64(),
                m.join(", ")
            );
            r.swarm_converge = Some((marks, total));
            match sw.remove("bench-web").await {
                Ok(d) => {
                    println!(
                        "  removed: all containers gone after {:.3} s",
                        d.as_secs_f64()
                    );
                    r.swarm_remove = Some(d);
                }
                Err(e) => r.fail("Swarm removal", &e),
            }
        }
        Err(e) => r.fail("Swarm convergence", &e),
    }

    println!(
        "== Docker Swarm: CLI latency ({} samples)",
        args.cli_samples
    );
    match sw.create_latency(args.cli_samples).await {
        Ok(s) => {
            println!("  docker service create --detach --replicas 0: {s}");
            r.swarm_cli_create = Some(s);
        }
        Err(e) => r.fail("Swarm CLI create latency", &e),
    }

    println!("== Docker Swarm: cleanup");
    match sw.cleanup() {
        Ok(notes) => {
            for n in notes {
                println!("  {n}");
            }
        }
        Err(e) => r.fail("Swarm cleanup", &e),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn cell<T>(v: Option<T>, f: impl Fn(T) -> f64, missing: &'static str) -> Cell {
    v.map(f).ok_or(missing)
}

fn print_report(args: &OneNodeArgs, r: &Results) {
    let peer_missing: &'static str = if r.swarm_skipped.is_some() {
        "skipped"
    } else {
        "failed"
    };
    let big = r.converge_big.as_ref();
    let small = r.converge_small.as_ref();
    let removal = |c: Option<&flotilla::Convergence>| -> Cell {
        match c {
            Some(c) => c.removal.as_ref().map(|d| secs(*d)).map_err(|_| "failed"),
            None => Err("failed"),
        }
    };
    let mut rows = vec![
        Row {
            metric: format!("converge {} replicas (s)", args.replicas),
            kind: Kind::Time,
            flotilla: cell(big, |c| secs(c.total), "failed"),
            peer: Err("n/a"),
            target: Some(5.0),
        },
        Row {
            metric: format!("converge {} replicas (s)", args.swarm_replicas),
            kind: Kind::Time,
            flotilla: cell(small, |c| secs(c.total), "failed"),
            peer: cell(r.swarm_converge.as_ref(), |(_, t)| secs(*t), peer_missing),
            target: None,
        },
        Row {
            metric: format!("remove {} replicas, processes gone (s)", args.replicas),
            kind: Kind::Time,
            flotilla: removal(big),
            peer: Err("n/a"),
            target: None,
        },
        Row {
            metric: format!(
                "remove {} replicas, processes gone (s)",
                args.swarm_replicas
            ),
            kind: Kind::Time,
            flotilla: removal(small),
            peer: cell(r.swarm_remove, secs, peer_missing),
            target: None,
        },
        Row {
            metric: "idle memory RSS (MiB)".to_string(),
            kind: Kind::Memory,
            flotilla: cell(r.idle_kib, procs::mib, "failed"),
            peer: cell(r.dockerd_kib, procs::mib, peer_missing),
            target: Some(30.0),
        },
        Row {
            metric: format!("RSS with {} tasks (MiB)", args.replicas),
            kind: Kind::Memory,
            flotilla: cell(big.and_then(|c| c.rss_kib), procs::mib, "failed"),
            peer: Err("n/a"),
            target: None,
        },
    ];
    let pct: [(&str, Pick); 4] = [
        ("p50", |s| s.p50),
        ("p90", |s| s.p90),
        ("p99", |s| s.p99),
        ("max", |s| s.max),
    ];
    for (label, f) in pct {
        rows.push(Row {
            metric: format!("API create_service {label} (ms)"),
            kind: Kind::Time,
            flotilla: cell(r.api_create.as_ref(), f, "failed"),
            peer: Err("n/a"),
            target: (label == "p99").then_some(20.0),
        });
    }
    for (label, f) in [pct[0], pct[2]] {
        rows.push(Row {
            metric: format!("API services() list {label} (ms)"),
            kind: Kind::Time,
            flotilla: cell(r.api_list.as_ref(), f, "failed"),
            peer: Err("n/a"),
            target: None,
        });
    }
    for (label, f) in pct {
        rows.push(Row {
            metric: format!("CLI service create {label} (ms)"),
            kind: Kind::Time,
            flotilla: cell(r.cli_create.as_ref(), f, "failed"),
            peer: cell(r.swarm_cli_create.as_ref(), f, peer_missing),
            target: None,
        });
    }

    println!();
    println!(
        "== results (peer: Docker Swarm{})",
        match &r.swarm_version {
            Some(v) => format!(", engine {v}"),
            None => String::new(),
        }
    );
    for (k, v) in &r.facts {
        println!("{k}: {v}");
    }
    println!();
    println!("| metric | flotilla | peer (Swarm) | ratio | target | met |");
    println!("|---|---:|---:|---:|---:|---|");
    for row in &rows {
        let fmt = |c: &Cell| match c {
            Ok(v) => format!("{v:.3}"),
            Err(s) => (*s).to_string(),
        };
        let ratio = match (row.flotilla, row.peer, row.kind) {
            (Ok(f), Ok(p), Kind::Time) if f > 0.0 => format!("{:.2}", p / f),
            (Ok(f), Ok(p), Kind::Memory) if p > 0.0 => format!("{:.2}", f / p),
            _ => "-".to_string(),
        };
        let (target, met) = match (row.target, row.flotilla) {
            (Some(t), Ok(v)) => (format!("<= {t}"), if v <= t { "yes" } else { "NO" }),
            (Some(t), Err(_)) => (format!("<= {t}"), "NO (not measured)"),
            (None, _) => ("-".to_string(), "-"),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.metric,
            fmt(&row.flotilla),
            fmt(&row.peer),
            ratio,
            target,
            met
        );
    }
    println!();
    println!("ratio: peer/flotilla for times (> 1: flotilla faster), flotilla/peer for memory (< 1: flotilla smaller).");
    println!("Swarm times go through the docker CLI (its process start included); flotilla's convergence and API rows use the typed client, its CLI rows the flotilla CLI.");
    if let Some(c) = r.containerd_kib {
        println!(
            "dockerd serves more than swarm; containerd ({:.1} MiB) and shims are not counted in the peer's memory.",
            procs::mib(c)
        );
    }
    if let Some(kib) = r.dockerd_before_init_kib {
        println!(
            "dockerd was at {:.1} MiB before this run's swarm init (a long-running dockerd grows across runs).",
            procs::mib(kib)
        );
    }
    if let Some(why) = &r.swarm_skipped {
        println!("Docker Swarm skipped: {why}");
    }
    if !r.failures.is_empty() {
        println!("failed steps:");
        for f in &r.failures {
            println!("  - {f}");
        }
    }
}
