//! State at scale (`flotilla-bench scale`): 3 managers on loopback hold a
//! service of `--tasks` tasks (100,000 by default) that stay pending (a
//! constraint no node meets), a fourth manager joins and catches up from a
//! snapshot, and a second service is scaled from 0 to `--scale-to`
//! (20,000) replicas in one command.
//!
//! Measured and printed: the time until every manager holds the tasks
//! (from `info`'s pending count), the new manager's catch-up time from
//! the start of `join` (target: 30 s), the scale's commit time, the
//! leader's RSS, and the bytes per task of the last snapshot the leader
//! built (from its `snapshot built` log line). The daemons run with
//! `--snapshot-every 100`, so that the log is compacted and the new
//! manager needs the snapshot.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::{Cluster, Layout};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    pub flotilla: PathBuf,
    pub tasks: u64,
    pub scale_to: u64,
    pub port: u16,
    pub keep_logs: Option<PathBuf>,
}

/// Target for the new manager's catch-up.
const CATCH_UP_TARGET: Duration = Duration::from_secs(30);
/// How long any one step may take before the bench gives up on it.
const STEP_DEADLINE: Duration = Duration::from_secs(300);

fn pending_spec(name: &str, replicas: u64) -> flotilla_types::ServiceSpec {
    let mut spec = crate::flotilla::sleep_spec(name, replicas);
    spec.task.constraints = vec![flotilla_types::Constraint {
        key: flotilla_types::ConstraintKey::NodeLabel("nowhere".into()),
        op: flotilla_types::ConstraintOp::Eq,
        value: "true".into(),
    }];
    spec
}

/// Runs the benchmark; false when a target was missed.
pub async fn run(cfg: &Config) -> Result<bool> {
    println!(
        "scale: 3 managers on loopback, {} pending tasks, a fourth manager joining, a scale from 0 to {}",
        cfg.tasks, cfg.scale_to
    );
    let mut cluster = Cluster::start(
        &cfg.flotilla,
        &Layout {
            managers: 3,
            workers: 0,
            keep_logs: cfg.keep_logs.clone(),
            first_ip: 51,
            port: cfg.port,
            daemon_args: vec!["--snapshot-every".into(), "100".into()],
        },
    )
    .await
    .context("starting 3 managers")?;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;

    let t0 = Instant::now();
    cluster.nodes[leader]
        .client
        .create_service(&pending_spec("big", cfg.tasks))
        .await
        .context("creating the big service")?;
    let created = t0.elapsed();
    let on_leader = wait_pending(&cluster, leader, cfg.tasks, t0).await?;
    let mut on_all = on_leader;
    for i in 0..cluster.nodes.len() {
        on_all = on_all.max(wait_pending(&cluster, i, cfg.tasks, t0).await?);
    }
    println!(
        "  {} tasks: create answered after {:.2} s, on the leader after {:.2} s, on every manager after {:.2} s",
        cfg.tasks,
        created.as_secs_f64(),
        on_leader.as_secs_f64(),
        on_all.as_secs_f64()
    );

    let t1 = Instant::now();
    let new = cluster
        .add_manager()
        .await
        .context("adding a fourth manager")?;
    let joined = t1.elapsed();
    let caught_up = wait_pending(&cluster, new, cfg.tasks, t1).await?;
    println!(
        "  fourth manager: join returned after {:.2} s, holds the {} tasks after {:.2} s (target {} s)",
        joined.as_secs_f64(),
        cfg.tasks,
        caught_up.as_secs_f64(),
        CATCH_UP_TARGET.as_secs()
    );

    let leader = cluster.wait_leader(Duration::from_secs(30)).await?;
    cluster.nodes[leader]
        .client
        .create_service(&pending_spec("wide", 0))
        .await
        .context("creating the wide service")?;
    let t2 = Instant::now();
    cluster.nodes[leader]
        .client
        .scale("wide", cfg.scale_to)
        .await
        .context("scaling the wide service")?;
    let scaled = wait_pending(&cluster, leader, cfg.tasks + cfg.scale_to, t2).await?;
    println!(
        "  scale wide 0 -> {}: committed on the leader after {:.2} s",
        cfg.scale_to,
        scaled.as_secs_f64()
    );

    match cluster.nodes[leader].pid().map(crate::procs::rss_kib) {
        Some(Ok(kib)) => println!(
            "  leader RSS: {:.1} MiB for {} tasks ({:.0} bytes per task)",
            crate::procs::mib(kib),
            cfg.tasks + cfg.scale_to,
            (kib * 1024) as f64 / (cfg.tasks + cfg.scale_to) as f64
        ),
        Some(Err(e)) => println!("  leader RSS: not read ({e:#})"),
        None => println!("  leader RSS: the leader is not running"),
    }
    match last_snapshot(&cluster.nodes[leader].log_tail(100_000)) {
        Some((index, bytes, tasks)) if tasks > 0 => println!(
            "  last snapshot on the leader: index {index}, {:.1} MiB, {tasks} tasks, {:.0} bytes per task",
            bytes as f64 / 1048576.0,
            bytes as f64 / tasks as f64
        ),
        _ => println!("  last snapshot on the leader: none logged"),
    }
    let ok = caught_up <= CATCH_UP_TARGET;
    if !ok {
        println!("  MISSED: the fourth manager took longer than {CATCH_UP_TARGET:?}");
    }
    drop(cluster);
    Ok(ok)
}

/// Waits until manager `idx` holds `want` pending tasks; the time since
/// `since`.
async fn wait_pending(
    cluster: &Cluster,
    idx: usize,
    want: u64,
    since: Instant,
) -> Result<Duration> {
    let node = &cluster.nodes[idx];
    let mut last = String::new();
    while since.elapsed() < STEP_DEADLINE {
        match node.client.info().await {
            Ok(info) => {
                let pending = info.tasks.get("pending").copied().unwrap_or(0);
                if pending == want {
                    return Ok(since.elapsed());
                }
                if pending > want {
                    bail!(
                        "{} holds {pending} pending tasks, more than the {want} wanted",
                        node.name
                    );
                }
                last = format!("{pending} pending");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "timed out after {STEP_DEADLINE:?} waiting for {} to hold {want} pending tasks (last: {last})",
        node.name
    )
}

/// Index, bytes and tasks of the last `snapshot built` line of a log.
fn last_snapshot(log: &str) -> Option<(u64, u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains("snapshot built"))?;
    let field = |name: &str| -> Option<u64> {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        line[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((field("index")?, field("bytes")?, field("tasks")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_snapshot_line() {
        let log = "x INFO snapshot built index=10 bytes=100 tasks=5\n\
                   y INFO other\n\
                   z INFO flotilla_raft::storage: snapshot built index=2000 bytes=12345 tasks=100000\n";
        assert_eq!(last_snapshot(log), Some((2000, 12345, 100000)));
        assert_eq!(last_snapshot("nothing here"), None);
    }

    #[test]
    fn the_pending_constraint_is_the_one_the_cli_writes() {
        let spec = pending_spec("big", 3);
        let parsed: flotilla_types::Constraint = "node.labels.nowhere==true".parse().unwrap();
        assert_eq!(spec.task.constraints, vec![parsed]);
    }
}
