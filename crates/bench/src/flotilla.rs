//! The Flotilla side: convergence, idle memory and API latency, each on a
//! fresh one-node daemon.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_types::{
    Driver, RestartPolicy, ServiceMode, ServiceSpec, TaskTemplate, DEFAULT_STOP_GRACE_MS,
};

use crate::daemon::Daemon;
use crate::procs;
use crate::stats::Summary;

/// How often convergence is polled.
const POLL: Duration = Duration::from_millis(20);
/// How long convergence may take before the step fails.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(120);
/// How long the task processes may take to go after `service rm`.
const REMOVE_DEADLINE: Duration = Duration::from_secs(60);
/// How long one CLI invocation may take.
const CLI_DEADLINE: Duration = Duration::from_secs(30);

/// A replicated `sleep 100000` service with the CLI's defaults.
pub fn sleep_spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        mode: ServiceMode::Replicated { replicas },
        labels: Default::default(),
        task: TaskTemplate {
            driver: Driver::Process,
            command: vec!["sleep".to_string(), "100000".to_string()],
            env: Default::default(),
            restart: RestartPolicy::default(),
            stop_grace_period_ms: DEFAULT_STOP_GRACE_MS,
            constraints: Vec::new(),
            ..TaskTemplate::default()
        },
        ..ServiceSpec::default()
    }
}

/// One convergence run.
#[derive(Debug)]
pub struct Convergence {
    pub replicas: u64,
    /// Round trip of `create_service`.
    pub create_rtt: Duration,
    /// (share of replicas running in percent, time since create) for the
    /// first running task, 25, 50, 75 and 100 %.
    pub milestones: Vec<(String, Duration)>,
    pub total: Duration,
    /// Marked task processes alive right after convergence.
    pub processes: usize,
    /// Daemon RSS with all tasks running, KiB.
    pub rss_kib: Option<u64>,
    /// Time from `remove_service` until no task process remains.
    pub removal: std::result::Result<Duration, String>,
}

/// Creates `replicas` tasks of `sleep 100000` and times them to running,
/// then removes the service and times the processes to gone.
/// Takes a fresh daemon and stops it at the end.
pub async fn converge(daemon: Daemon, replicas: u64) -> Result<Convergence> {
    let name = "web";
    let spec = sleep_spec(name, replicas);
    let start = Instant::now();
    daemon
        .client
        .create_service(&spec)
        .await
        .map_err(|e| anyhow!("create_service {name} ({replicas} replicas): {e}"))?;
    let create_rtt = start.elapsed();
    let thresholds: Vec<(String, u64)> = vec![
        ("first".to_string(), 1),
        ("25%".to_string(), replicas.div_ceil(4)),
        ("50%".to_string(), replicas.div_ceil(2)),
        ("75%".to_string(), (replicas * 3).div_ceil(4)),
    ];
    let mut milestones = Vec::new();
    let total = loop {
        let view = daemon
            .client
            .service(name)
            .await
            .map_err(|e| anyhow!("polling service {name}: {e}"))?;
        let now = start.elapsed();
        for (label, at) in &thresholds {
            if view.replicas.running >= *at && !milestones.iter().any(|(l, _)| l == label) {
                milestones.push((label.clone(), now));
            }
        }
        if view.replicas.running >= replicas {
            milestones.push(("100%".to_string(), now));
            break now;
        }
        if now >= CONVERGE_DEADLINE {
            bail!(
                "timed out after {CONVERGE_DEADLINE:?} waiting for service {name} to run {replicas} tasks: {} running, {} desired ({} task processes alive)",
                view.replicas.running,
                view.replicas.desired,
                daemon.task_pids().len()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let processes = daemon.task_pids().len();
    let rss_kib = procs::rss_kib(daemon.pid).ok();

    let removal = remove_and_wait(&daemon, name)
        .await
        .map_err(|e| format!("{e:#}"));
    let notes = daemon.stop()?;
    if !notes.is_empty() {
        eprintln!("  cleanup after the {replicas}-replica run: {notes}");
    }
    Ok(Convergence {
        replicas,
        create_rtt,
        milestones,
        total,
        processes,
        rss_kib,
        removal,
    })
}

async fn remove_and_wait(daemon: &Daemon, name: &str) -> Result<Duration> {
    let start = Instant::now();
    daemon
        .client
        .remove_service(name)
        .await
        .map_err(|e| anyhow!("remove_service {name}: {e}"))?;
    loop {
        let left = daemon.task_pids();
        if left.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= REMOVE_DEADLINE {
            bail!(
                "timed out after {REMOVE_DEADLINE:?} waiting for the task processes of {name} to exit after remove: {} still alive",
                left.len()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// RSS of a fresh, initialised daemon with no services after `settle`.
pub async fn idle_memory(daemon: Daemon, settle: Duration) -> Result<u64> {
    tokio::time::sleep(settle).await;
    let rss = procs::rss_kib(daemon.pid)?;
    daemon.stop()?;
    Ok(rss)
}

/// `create_service` round trips of `samples` services `lat-i` with 0
/// replicas, sequentially.
pub async fn create_latency(daemon: &Daemon, samples: usize) -> Result<Summary> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let spec = sleep_spec(&format!("lat-{i}"), 0);
        let start = Instant::now();
        daemon
            .client
            .create_service(&spec)
            .await
            .map_err(|e| anyhow!("create_service lat-{i} (sample {}): {e}", i + 1))?;
        times.push(start.elapsed());
    }
    Summary::of(&times).ok_or_else(|| anyhow!("no samples"))
}

/// `services()` round trips, sequentially.
pub async fn list_latency(daemon: &Daemon, samples: usize) -> Result<Summary> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let start = Instant::now();
        daemon
            .client
            .services()
            .await
            .map_err(|e| anyhow!("services() (sample {}): {e}", i + 1))?;
        times.push(start.elapsed());
    }
    Summary::of(&times).ok_or_else(|| anyhow!("no samples"))
}

/// `flotilla service create -d --replicas 0` through the CLI, process start
/// to exit, sequentially.
pub async fn cli_create_latency(
    flotilla: &Path,
    daemon: &Daemon,
    samples: usize,
) -> Result<Summary> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("cli-{i}");
        let mut cmd = tokio::process::Command::new(flotilla);
        cmd.arg("--data-dir")
            .arg(&daemon.data_dir)
            .args([
                "service",
                "create",
                "-d",
                "--name",
                &name,
                "--replicas",
                "0",
            ])
            .args(["--", "sleep", "100000"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let start = Instant::now();
        let out = tokio::time::timeout(CLI_DEADLINE, cmd.output())
            .await
            .map_err(|_| {
                anyhow!(
                    "timed out after {CLI_DEADLINE:?} waiting for flotilla service create {name}"
                )
            })?
            .with_context(|| format!("running {}", flotilla.display()))?;
        let elapsed = start.elapsed();
        if !out.status.success() {
            bail!(
                "flotilla service create {name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        times.push(elapsed);
    }
    Summary::of(&times).ok_or_else(|| anyhow!("no samples"))
}
