//! Containers: `N` replicas of the same locally built busybox image, from
//! `service create` to N/N running, with Flotilla's docker driver and with
//! Docker Swarm mode on the same engine, alternating which goes first in
//! each repetition. Each side removes its service (and waits for its
//! containers to go) before the other starts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use flotilla_types::{Driver, ServiceMode, ServiceSpec, TaskTemplate};

use crate::daemon::Daemon;
use crate::stats::Summary;
use crate::swarm::{docker, Swarm, IMAGE};

/// How often Flotilla's convergence is polled.
const POLL: Duration = Duration::from_millis(20);
const CONVERGE_DEADLINE: Duration = Duration::from_secs(300);
const REMOVE_DEADLINE: Duration = Duration::from_secs(180);
const CMD_DEADLINE: Duration = Duration::from_secs(60);
/// The label the docker driver puts on its containers.
const SERVICE_LABEL: &str = "com.flotilla.service.name";

pub struct Config {
    pub flotilla: PathBuf,
    pub replicas: u64,
    pub reps: usize,
}

/// Flotilla's service of `replicas` containers running `sleep 100000`.
fn container_spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        mode: ServiceMode::Replicated { replicas },
        task: TaskTemplate {
            driver: Driver::Docker,
            image: Some(IMAGE.to_string()),
            command: vec!["sleep".into(), "100000".into()],
            // As the Swarm side's --init: sleep stops on SIGTERM.
            init: true,
            ..TaskTemplate::default()
        },
        ..ServiceSpec::default()
    }
}

/// Containers labelled with Flotilla's service `name`, running or not.
async fn flotilla_containers(name: &str) -> Result<Vec<String>> {
    let filter = format!("label={SERVICE_LABEL}={name}");
    let out = docker(&["ps", "-aq", "--filter", &filter], CMD_DEADLINE).await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// One Flotilla run on a fresh daemon: create to all running, then remove
/// to no container left.
async fn flotilla_run(cfg: &Config, rep: usize) -> Result<(Duration, Duration)> {
    let name = format!("bench-ctr-{rep}");
    let leftovers = flotilla_containers(&name).await?;
    if !leftovers.is_empty() {
        bail!(
            "{} containers of {name} are left from an earlier run; remove them with docker rm -f",
            leftovers.len()
        );
    }
    let daemon = Daemon::start(&cfg.flotilla, "containers").await?;
    let start = Instant::now();
    daemon
        .client
        .create_service(&container_spec(&name, cfg.replicas))
        .await
        .map_err(|e| anyhow!("create_service {name}: {e}"))?;
    let converged = loop {
        let view = daemon
            .client
            .service(&name)
            .await
            .map_err(|e| anyhow!("polling service {name}: {e}"))?;
        if view.replicas.running >= cfg.replicas {
            break start.elapsed();
        }
        if start.elapsed() >= CONVERGE_DEADLINE {
            let tasks = daemon.client.tasks(&name).await.unwrap_or_default();
            let errors: Vec<String> = tasks
                .iter()
                .filter_map(|t| t.error.clone())
                .take(3)
                .collect();
            bail!(
                "timed out after {CONVERGE_DEADLINE:?} waiting for {name} to run {} containers: {} running; errors: {errors:?}; daemon log: {}",
                cfg.replicas,
                view.replicas.running,
                daemon.log_tail(20)
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let removing = Instant::now();
    daemon
        .client
        .remove_service(&name)
        .await
        .map_err(|e| anyhow!("remove_service {name}: {e}"))?;
    let removed = loop {
        let left = flotilla_containers(&name).await?;
        if left.is_empty() {
            break removing.elapsed();
        }
        if removing.elapsed() >= REMOVE_DEADLINE {
            bail!(
                "timed out after {REMOVE_DEADLINE:?} waiting for the {} remaining containers of {name} to go",
                left.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let notes = daemon.stop()?;
    if !notes.is_empty() {
        eprintln!("  cleanup after Flotilla run {rep}: {notes}");
    }
    Ok((converged, removed))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(samples: &[Duration]) -> Option<f64> {
    Summary::of(samples).map(|s| s.p50 / 1e3)
}

fn line(what: &str, samples: &[Duration]) -> String {
    match Summary::of(samples) {
        Some(s) => format!(
            "{what:<34} median {:>6.2} s   min {:>6.2} s   max {:>6.2} s   (n={})",
            s.p50 / 1e3,
            samples.iter().map(|d| secs(*d)).fold(f64::MAX, f64::min),
            s.max / 1e3,
            s.n
        ),
        None => format!("{what:<34} no samples"),
    }
}

/// Runs the comparison and prints it. `Ok(false)` when the target (at most
/// half of Swarm's median) is missed.
pub async fn run(cfg: &Config) -> Result<bool> {
    let mut swarm = Swarm::prepare()
        .await
        .map_err(|reason| anyhow!("Docker Swarm cannot be measured: {reason}"))?;
    println!(
        "containers: {} replicas of {IMAGE} (sleep 100000), {} repetitions, Docker Engine {}",
        cfg.replicas, cfg.reps, swarm.engine_version
    );
    let mut ours = (Vec::new(), Vec::new());
    let mut theirs = (Vec::new(), Vec::new());
    let result: Result<()> = async {
        for rep in 0..cfg.reps {
            let flotilla_first = rep % 2 == 0;
            for side in 0..2 {
                let (who, up, down, samples) = if (side == 0) == flotilla_first {
                    let (up, down) = flotilla_run(cfg, rep).await?;
                    ("flotilla", up, down, &mut ours)
                } else {
                    let (_, up) = swarm.converge(cfg.replicas).await?;
                    let down = swarm.remove("bench-web").await?;
                    ("swarm", up, down, &mut theirs)
                };
                println!(
                    "  rep {rep}: {who:<8} {:.2} s to {n}/{n} running, {:.2} s to removed",
                    secs(up),
                    secs(down),
                    n = cfg.replicas
                );
                samples.0.push(up);
                samples.1.push(down);
            }
        }
        Ok(())
    }
    .await;
    let cleanup = swarm.cleanup();
    result?;
    if let Ok(notes) = cleanup {
        for n in notes {
            eprintln!("  {n}");
        }
    }
    println!();
    println!("{}", line("flotilla: create to all running", &ours.0));
    println!("{}", line("swarm:    create to all running", &theirs.0));
    println!("{}", line("flotilla: remove to no container", &ours.1));
    println!("{}", line("swarm:    remove to no container", &theirs.1));
    let (Some(f), Some(s)) = (median(&ours.0), median(&theirs.0)) else {
        bail!("no samples");
    };
    let ratio = f / s;
    let met = ratio <= 0.5;
    println!(
        "ratio flotilla/swarm (median, create to running): {ratio:.2} (target <= 0.50): {}",
        if met { "met" } else { "MISSED" }
    );
    Ok(met)
}
