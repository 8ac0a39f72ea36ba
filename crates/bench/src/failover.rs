//! `flotilla-bench failover`: how fast a five-node cluster on this machine
//! (3 managers, 2 workers) recovers from a killed leader and from a killed
//! worker. See `docs/benchmarks.md` for what is measured.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::model::TaskView;
use flotilla_types::TaskState;

use crate::cluster::{Cluster, Layout};
use crate::logs;
use crate::procs;
use crate::stats::Spread;

/// The service the bench scales and whose tasks it watches.
const SERVICE: &str = "web";
/// Leader kill to a successful write.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// Between two `service scale` attempts (each already waits up to the
/// daemon's 1.5 s write budget for a leader).
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Worker kill to its tasks running elsewhere.
const RESCHEDULE_DEADLINE: Duration = Duration::from_secs(60);
/// Between two reads of `service ps` while a worker is down.
const TASK_POLL: Duration = Duration::from_millis(50);
/// A restarted node until the cluster is healthy again.
const RECOVER_DEADLINE: Duration = Duration::from_secs(60);
/// The service until it runs all its replicas (creation, scaling back).
const SERVICE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a restarted worker may wait for rebalancing to give it tasks
/// before the next repetition starts anyway.
const REBALANCE_WAIT: Duration = Duration::from_secs(20);
/// A cluster whose setup fails is torn down and set up again, this often.
const SETUP_ATTEMPTS: u32 = 5;
/// Pause after the cluster is healthy again, before the next repetition.
const SETTLE: Duration = Duration::from_secs(1);

/// Swarm's published defaults (not measured here).
const SWARM_LEADER_S: f64 = 10.0;
const SWARM_WORKER_S: f64 = 20.0;
/// The targets, in seconds, for the medians.
const TARGET_LEADER_S: f64 = 1.0;
const TARGET_WORKER_S: f64 = 4.0;

pub struct Config {
    pub flotilla: PathBuf,
    pub reps: usize,
    pub replicas: u64,
    pub port: u16,
    pub keep_logs: Option<PathBuf>,
}

struct LeaderRep {
    killed: String,
    through: String,
    new_leader: String,
    total: Duration,
    attempts: u32,
    last_error: Option<String>,
    /// Kill to the new leader's "became leader" log line.
    election: Option<Duration>,
    /// Restart of the killed manager to a healthy cluster.
    recover: Duration,
}

struct WorkerRep {
    killed: String,
    moved: usize,
    total: Duration,
    /// Kill to the first read that shows none of the service's current
    /// tasks on the killed worker.
    off_worker: Option<Duration>,
    /// Kill to the leader's "nodes stopped sending heartbeats" log line.
    detected: Option<Duration>,
    /// Restart of the worker to the service running all replicas again.
    recover: Duration,
    /// Tasks on the worker again after rebalancing (0: none within 20 s).
    back_on_worker: usize,
    /// Marked task processes of the worker after rebalancing.
    worker_processes: usize,
    /// Tasks on other nodes that failed between the kill and the end of
    /// the measurement: something else killed them (the figure is then
    /// not a clean failover).
    interfered: usize,
}

/// What `service ps` shows, counted over the current tasks.
#[derive(Debug, Default, Clone, Copy)]
struct TaskCount {
    current: usize,
    running: usize,
    on_excluded: usize,
}

impl TaskCount {
    fn of(tasks: &[TaskView], exclude: Option<&str>) -> TaskCount {
        let mut c = TaskCount::default();
        for t in tasks.iter().filter(|t| t.current) {
            c.current += 1;
            if t.state == TaskState::Running {
                c.running += 1;
            }
            if exclude.is_some() && t.node.as_deref() == exclude {
                c.on_excluded += 1;
            }
        }
        c
    }

    /// All current tasks run, at least `replicas` of them, none on the
    /// excluded node.
    fn settled(&self, replicas: u64) -> bool {
        self.on_excluded == 0
            && self.running == self.current
            && u64::try_from(self.running).is_ok_and(|r| r >= replicas)
    }
}

impl std::fmt::Display for TaskCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} current, {} running, {} on the killed node",
            self.current, self.running, self.on_excluded
        )
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3} s", secs(d)))
        .unwrap_or_else(|| "not found".to_string())
}

/// Waits until manager `idx` lists all current tasks of the service
/// running, `replicas` of them.
async fn wait_service(
    cluster: &Cluster,
    idx: usize,
    replicas: u64,
    what: &str,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let seen = cluster
            .tasks(idx, SERVICE)
            .await
            .map(|t| TaskCount::of(&t, None));
        if let Ok(c) = &seen {
            if c.settled(replicas) && c.current as u64 == replicas {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() >= SERVICE_DEADLINE {
            bail!(
                "timed out after {SERVICE_DEADLINE:?} waiting for {what}: {SERVICE} to run {replicas} tasks (last seen on {}: {})",
                cluster.nodes[idx].name,
                match seen {
                    Ok(c) => c.to_string(),
                    Err(e) => format!("{e:#}"),
                }
            );
        }
        tokio::time::sleep(TASK_POLL).await;
    }
}

/// Milliseconds since the Unix epoch of a wall-clock time.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Tasks not on `killed` that entered `failed` within [from, to] (ms).
fn failed_elsewhere(tasks: &[TaskView], killed: &str, from: u64, to: u64) -> usize {
    tasks
        .iter()
        .filter(|t| {
            t.state == TaskState::Failed
                && t.node.as_deref() != Some(killed)
                && (from..=to).contains(&t.timestamp)
        })
        .count()
}

/// Running current tasks of the service per node name.
fn tasks_on(tasks: &[TaskView], node: &str) -> usize {
    tasks
        .iter()
        .filter(|t| t.current && t.state == TaskState::Running && t.node.as_deref() == Some(node))
        .count()
}

async fn leader_rep(cluster: &mut Cluster, rep: usize, replicas: u64) -> Result<LeaderRep> {
    let leader = cluster.leader().await.context("finding the leader")?;
    let through = (0..cluster.nodes.len())
        .find(|&i| i != leader && cluster.nodes[i].manager && cluster.nodes[i].is_running())
        .ok_or_else(|| anyhow!("no other running manager to write through"))?;
    let target = if rep % 2 == 0 { replicas + 1 } else { replicas };
    let arg = format!("{SERVICE}={target}");
    let killed = cluster.nodes[leader].name.clone();

    let wall = SystemTime::now();
    let start = Instant::now();
    cluster.kill(leader)?;
    let mut attempts = 0u32;
    let mut last_error = None;
    let total = loop {
        attempts += 1;
        let (ok, _, stderr) = cluster
            .cli_status(through, &["service", "scale", &arg])
            .await?;
        if ok {
            break start.elapsed();
        }
        last_error = Some(stderr.trim().to_string());
        if start.elapsed() >= WRITE_DEADLINE {
            bail!(
                "timed out after {WRITE_DEADLINE:?} waiting for 'service scale {arg}' through {} to succeed after leader {killed} was killed ({attempts} attempts; last error: {})",
                cluster.nodes[through].name,
                last_error.unwrap_or_default()
            );
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    let new_leader = cluster
        .wait_leader(Duration::from_secs(10))
        .await
        .context("finding the new leader after the write")?;
    let election = logs::first_after(&cluster.nodes[new_leader].log_path, "became leader", wall)
        .and_then(|(at, _)| logs::since(at, wall));

    let back = Instant::now();
    cluster
        .restart(leader)
        .await
        .with_context(|| format!("restarting {killed}"))?;
    cluster
        .wait_healthy(
            RECOVER_DEADLINE,
            &format!("{killed} to rejoin after its restart"),
        )
        .await?;
    let recover = back.elapsed();
    tokio::time::sleep(SETTLE).await;
    Ok(LeaderRep {
        killed,
        through: cluster.nodes[through].name.clone(),
        new_leader: cluster.nodes[new_leader].name.clone(),
        total,
        attempts,
        last_error,
        election,
        recover,
    })
}

async fn worker_rep(cluster: &mut Cluster, rep: usize, replicas: u64) -> Result<WorkerRep> {
    let leader = cluster.leader().await.context("finding the leader")?;
    let tasks = cluster.tasks(leader, SERVICE).await?;
    let workers: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&i| !cluster.nodes[i].manager && cluster.nodes[i].is_running())
        .collect();
    // The worker with the most tasks; ties go to each worker in turn.
    let pick = (0..workers.len())
        .map(|k| workers[(k + rep) % workers.len()])
        .map(|i| (i, tasks_on(&tasks, &cluster.nodes[i].name)))
        .fold(None::<(usize, usize)>, |best, (i, n)| match best {
            Some((_, m)) if m >= n => best,
            _ => Some((i, n)),
        });
    let (victim, moved) = match pick {
        Some((i, n)) if n > 0 => (i, n),
        _ => bail!("no running worker runs a task of {SERVICE}"),
    };
    let killed = cluster.nodes[victim].name.clone();

    let wall = SystemTime::now();
    let start = Instant::now();
    cluster.kill(victim)?;
    let mut off_worker = None;
    let total = loop {
        let seen = cluster
            .tasks(leader, SERVICE)
            .await
            .map(|t| TaskCount::of(&t, Some(&killed)));
        let now = start.elapsed();
        if let Ok(c) = &seen {
            if off_worker.is_none() && c.on_excluded == 0 {
                off_worker = Some(now);
            }
            if c.settled(replicas) {
                break now;
            }
        }
        if now >= RESCHEDULE_DEADLINE {
            bail!(
                "timed out after {RESCHEDULE_DEADLINE:?} waiting for the tasks of killed worker {killed} to run elsewhere (last seen on {}: {})",
                cluster.nodes[leader].name,
                match seen {
                    Ok(c) => c.to_string(),
                    Err(e) => format!("{e:#}"),
                }
            );
        }
        tokio::time::sleep(TASK_POLL).await;
    };
    let done_ms = unix_ms(SystemTime::now());
    let interfered = cluster
        .tasks(leader, SERVICE)
        .await
        .map(|t| failed_elsewhere(&t, &killed, unix_ms(wall), done_ms))
        .unwrap_or(0);
    let detected = logs::first_after(
        &cluster.nodes[leader].log_path,
        "nodes stopped sending heartbeats",
        wall,
    )
    .and_then(|(at, _)| logs::since(at, wall));

    let back = Instant::now();
    cluster
        .restart(victim)
        .await
        .with_context(|| format!("restarting {killed}"))?;
    cluster
        .wait_healthy(
            RECOVER_DEADLINE,
            &format!("{killed} to be ready after its restart"),
        )
        .await?;
    wait_service(cluster, leader, replicas, &format!("{killed}'s restart")).await?;
    let recover = back.elapsed();
    // Rebalancing moves tasks back onto the returning worker; wait for it
    // (or give up after REBALANCE_WAIT) so that the next repetition starts
    // from a spread-out service.
    let rebalance = Instant::now();
    let back_on_worker = loop {
        let on = cluster
            .tasks(leader, SERVICE)
            .await
            .map(|t| tasks_on(&t, &killed))
            .unwrap_or(0);
        if on > 0 || rebalance.elapsed() >= REBALANCE_WAIT {
            break on;
        }
        tokio::time::sleep(TASK_POLL).await;
    };
    wait_service(cluster, leader, replicas, "rebalancing").await?;
    tokio::time::sleep(SETTLE).await;
    // Counted after the pause: rebalancing may have moved more tasks.
    let back_on_worker = cluster
        .tasks(leader, SERVICE)
        .await
        .map(|t| tasks_on(&t, &killed))
        .unwrap_or(back_on_worker);
    let worker_processes = cluster.nodes[victim].task_pids().len();
    Ok(WorkerRep {
        killed,
        moved,
        total,
        off_worker,
        detected,
        recover,
        back_on_worker,
        worker_processes,
        interfered,
    })
}

/// Everything measured, for the report.
#[derive(Default)]
struct Outcome {
    leader: Vec<LeaderRep>,
    worker: Vec<WorkerRep>,
    failures: Vec<String>,
    /// Failed setup attempts before the one that worked.
    setup_failures: Vec<String>,
}

/// Sets up the cluster, runs both measurements, prints the report.
/// Ok(false) if a step failed (the report still shows what was measured).
pub async fn run(cfg: &Config) -> Result<bool> {
    let facts = procs::machine_facts();
    println!("== machine");
    for (k, v) in &facts {
        println!("  {k}: {v}");
    }
    if cfg.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let mut setup_failures = Vec::new();
    let layout = Layout {
        managers: 3,
        workers: 2,
        first_ip: 11,
        port: cfg.port,
        keep_logs: cfg.keep_logs.clone(),
        daemon_args: Vec::new(),
    };
    println!(
        "== cluster: {} managers + {} workers on 127.0.0.{}.. port {}",
        layout.managers, layout.workers, layout.first_ip, layout.port
    );
    let setup = Instant::now();
    let mut cluster = None;
    for attempt in 1..=SETUP_ATTEMPTS {
        match Cluster::start(&cfg.flotilla, &layout).await {
            Ok(c) => {
                cluster = Some(c);
                break;
            }
            // The failed cluster is already stopped and removed.
            Err(e) if attempt < SETUP_ATTEMPTS => {
                println!("  setup attempt {attempt} FAILED (starting over): {e:#}");
                setup_failures.push(format!("{e:#}"));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "setting up the cluster ({SETUP_ATTEMPTS} attempts)"
                )))
            }
        }
    }
    let mut cluster =
        cluster.ok_or_else(|| anyhow!("no cluster after {SETUP_ATTEMPTS} attempts"))?;
    let first = cluster.leader().await?;
    let replicas_arg = cfg.replicas.to_string();
    cluster
        .cli(
            first,
            &[
                "service",
                "create",
                "--name",
                SERVICE,
                "--replicas",
                &replicas_arg,
                "-d",
                "--",
                "sleep",
                "100000",
            ],
        )
        .await?;
    wait_service(&cluster, first, cfg.replicas, "the new service").await?;
    let tasks = cluster.tasks(first, SERVICE).await?;
    let spread: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("{} {}", n.name, tasks_on(&tasks, &n.name)))
        .collect();
    println!(
        "  ready after {:.1} s; {SERVICE}: {} tasks running ({})",
        secs(setup.elapsed()),
        cfg.replicas,
        spread.join(", ")
    );
    for n in &cluster.nodes {
        println!("  {} {} log {}", n.name, n.addr, n.log_path.display());
    }

    let mut out = Outcome {
        setup_failures,
        ..Default::default()
    };
    println!(
        "== leader kill -> first successful write ({} reps; 'service scale {SERVICE}=N' through a surviving manager, retried until exit 0)",
        cfg.reps
    );
    for rep in 0..cfg.reps {
        match leader_rep(&mut cluster, rep, cfg.replicas).await {
            Ok(r) => {
                println!(
                    "  rep {:>2}: killed leader {}; write through {} ok after {:.3} s ({} attempt{}{}); new leader {} ('became leader' at {}); {} back and healthy after {:.1} s",
                    rep + 1,
                    r.killed,
                    r.through,
                    secs(r.total),
                    r.attempts,
                    if r.attempts == 1 { "" } else { "s" },
                    r.last_error
                        .as_deref()
                        .map(|e| format!(", last failure: {e}"))
                        .unwrap_or_default(),
                    r.new_leader,
                    opt_secs(r.election),
                    r.killed,
                    secs(r.recover)
                );
                out.leader.push(r);
            }
            Err(e) => {
                println!("  rep {:>2}: FAILED: {e:#}", rep + 1);
                out.failures
                    .push(format!("leader kill, rep {}: {e:#}", rep + 1));
                break;
            }
        }
    }

    println!(
        "== worker kill -> all its tasks running elsewhere ({} reps; 'service ps {SERVICE}' on the leader every {} ms)",
        cfg.reps,
        TASK_POLL.as_millis()
    );
    let ready = async {
        let leader = cluster
            .wait_leader(RECOVER_DEADLINE)
            .await
            .context("finding the leader")?;
        cluster
            .cli(
                leader,
                &["service", "scale", &format!("{SERVICE}={}", cfg.replicas)],
            )
            .await?;
        cluster
            .wait_healthy(
                RECOVER_DEADLINE,
                "a healthy cluster before the worker kills",
            )
            .await?;
        wait_service(&cluster, leader, cfg.replicas, "scaling back").await
    }
    .await;
    match ready {
        Ok(_) => {
            for rep in 0..cfg.reps {
                match worker_rep(&mut cluster, rep, cfg.replicas).await {
                    Ok(r) => {
                        println!(
                            "  rep {:>2}: killed {} ({} tasks); all running elsewhere after {:.3} s (none on it after {}; 'nodes stopped sending heartbeats' at {}); back, {SERVICE} at {} after {:.1} s; {} task(s) on it again{}{}",
                            rep + 1,
                            r.killed,
                            r.moved,
                            secs(r.total),
                            opt_secs(r.off_worker),
                            opt_secs(r.detected),
                            cfg.replicas,
                            secs(r.recover),
                            r.back_on_worker,
                            if r.worker_processes == r.back_on_worker {
                                String::new()
                            } else {
                                format!(" ({} task processes alive on it)", r.worker_processes)
                            },
                            if r.interfered == 0 {
                                String::new()
                            } else {
                                format!(
                                    "; WARNING: {} task(s) on other nodes failed meanwhile (killed from outside the bench?)",
                                    r.interfered
                                )
                            }
                        );
                        out.worker.push(r);
                    }
                    Err(e) => {
                        println!("  rep {:>2}: FAILED: {e:#}", rep + 1);
                        out.failures
                            .push(format!("worker kill, rep {}: {e:#}", rep + 1));
                        break;
                    }
                }
            }
        }
        Err(e) => {
            println!("  FAILED: {e:#}");
            out.failures
                .push(format!("worker kill: cluster not ready: {e:#}"));
        }
    }

    println!("== cleanup");
    match cluster.shutdown() {
        Ok(notes) if !notes.is_empty() => println!("  {notes}"),
        Ok(_) => println!("  all daemons stopped, no task process left"),
        Err(e) => out.failures.push(format!("{e:#}")),
    }
    drop(cluster);

    print_report(cfg, &facts, &out);
    Ok(out.failures.is_empty())
}

fn print_report(cfg: &Config, facts: &[(&'static str, String)], out: &Outcome) {
    let load_end = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    println!();
    println!(
        "== results: 3 managers + 2 workers, {SERVICE} with {} replicas, {} reps",
        cfg.replicas, cfg.reps
    );
    for (k, v) in facts {
        println!("{k}: {v}");
    }
    println!("load average at end: {load_end}");
    println!();
    println!("| metric | median (s) | max (s) | min (s) | reps | Swarm default (s) | swarm/flotilla | target (s) | met |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let leader: Vec<Duration> = out.leader.iter().map(|r| r.total).collect();
    let worker: Vec<Duration> = out.worker.iter().map(|r| r.total).collect();
    for (metric, samples, swarm, target) in [
        (
            "leader kill -> first successful write",
            &leader,
            SWARM_LEADER_S,
            TARGET_LEADER_S,
        ),
        (
            "worker kill -> all its tasks running elsewhere",
            &worker,
            SWARM_WORKER_S,
            TARGET_WORKER_S,
        ),
    ] {
        match Spread::of(samples) {
            Some(s) => println!(
                "| {metric} | {:.3} | {:.3} | {:.3} | {} | ~{swarm:.0} | {:.1} | <= {target} | {} |",
                s.median,
                s.max,
                s.min,
                s.n,
                if s.median > 0.0 { swarm / s.median } else { f64::NAN },
                if s.median <= target { "yes" } else { "NO" }
            ),
            None => println!(
                "| {metric} | failed | - | - | 0 | ~{swarm:.0} | - | <= {target} | NO (not measured) |"
            ),
        }
    }
    println!();
    println!("Swarm default: published defaults, not measured here. Leader: ElectionTick 10 x 1 s tick = ~10 s without a leader.");
    println!("Worker: dispatcher heartbeat period 5 s x grace multiplier 3 = ~15 s until the node is down, + 5 s default restart delay = ~20 s.");
    if out.leader.len() < cfg.reps || out.worker.len() < cfg.reps {
        println!(
            "Only {} leader and {} worker reps of {} completed (see failed steps).",
            out.leader.len(),
            out.worker.len(),
            cfg.reps
        );
    }

    println!();
    println!("Where the time goes (log lines are matched by their UTC timestamps, microsecond resolution, against the bench's clock at the kill):");
    println!("| step | median (s) | max (s) | min (s) | reps |");
    println!("|---|---:|---:|---:|---:|");
    let row = |label: &str, samples: Vec<Duration>| match Spread::of(&samples) {
        Some(s) => println!(
            "| {label} | {:.3} | {:.3} | {:.3} | {} |",
            s.median, s.max, s.min, s.n
        ),
        None => println!("| {label} | - | - | - | 0 |"),
    };
    row(
        "leader kill -> 'became leader' in the new leader's log",
        out.leader.iter().filter_map(|r| r.election).collect(),
    );
    row(
        "'became leader' -> write succeeded",
        out.leader
            .iter()
            .filter_map(|r| r.election.and_then(|e| r.total.checked_sub(e)))
            .collect(),
    );
    row(
        "killed manager restarted -> all 3 managers reachable, one leader",
        out.leader.iter().map(|r| r.recover).collect(),
    );
    row(
        "worker kill -> 'nodes stopped sending heartbeats' in the leader's log",
        out.worker.iter().filter_map(|r| r.detected).collect(),
    );
    row(
        "worker kill -> no current task on the killed worker",
        out.worker.iter().filter_map(|r| r.off_worker).collect(),
    );
    row(
        "'nodes stopped sending heartbeats' -> all tasks running elsewhere",
        out.worker
            .iter()
            .filter_map(|r| r.detected.and_then(|d| r.total.checked_sub(d)))
            .collect(),
    );
    row(
        "killed worker restarted -> ready, service at full count",
        out.worker.iter().map(|r| r.recover).collect(),
    );
    let disturbed = out.worker.iter().filter(|r| r.interfered > 0).count();
    if disturbed > 0 {
        println!(
            "WARNING: in {disturbed} worker rep(s) tasks on healthy nodes failed during the measurement (something outside the bench killed them); those reps are included above."
        );
    }
    let attempts: Vec<u32> = out.leader.iter().map(|r| r.attempts).collect();
    if !attempts.is_empty() {
        println!(
            "'service scale' attempts per leader kill: {} in {} reps (max {}).",
            attempts.iter().sum::<u32>(),
            attempts.len(),
            attempts.iter().max().copied().unwrap_or(0)
        );
    }
    if !out.setup_failures.is_empty() {
        println!(
            "cluster setup needed {} attempts; failed ones:",
            out.setup_failures.len() + 1
        );
        for f in &out.setup_failures {
            println!("  - {f}");
        }
    }
    if !out.failures.is_empty() {
        println!("failed steps:");
        for f in &out.failures {
            println!("  - {f}");
        }
    }
}
