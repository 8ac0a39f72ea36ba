//! `service logs` on a two-node cluster (a manager and a worker on
//! loopback): lines of both nodes, `--follow` picking up a worker's line
//! printed after it started, the flags that shape lines, and a warning
//! naming the tasks of a worker that was killed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_testkit::{wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn start_named(name: &str) -> Result<Daemon> {
    Daemon::start_with(bin(), "127.0.0.1:0", &["--name", name])
}

/// `service logs --follow` as a child process; its stdout lines arrive on
/// a channel. Killed on drop, also when the test fails.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(d: &Daemon, args: &[&str]) -> Result<Follower> {
        let mut child = Command::new(bin())
            .arg("--data-dir")
            .arg(d.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting service logs --follow")?;
        let stdout = child.stdout.take().context("the follower's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Follower {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits until a line containing `needle` arrives.
    fn wait_for(&mut self, what: &str, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Ok(l.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "timed out after {timeout:?} waiting for {what} in `service logs --follow`; it printed: {:?}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_come_from_every_node_follow_and_warn_about_a_dead_one() -> Result<()> {
    let m = start_named("m1")?;
    m.ok(&["init"])?;
    let token = m
        .ok(&["join-token", "worker", "-q"])?
        .stdout
        .trim()
        .to_string();
    let mut w = start_named("w1")?;
    w.ok(&["join", "--token", &token, &m.cluster_addr()?])?;

    // Each task says hello at once, and "late" once the test creates its
    // node's trigger file.
    let triggers = tempfile::tempdir()?;
    let script = format!(
        "echo \"hello from $FLOTILLA_NODE_ID\"; \
         while [ ! -e {dir}/go-$FLOTILLA_NODE_ID ]; do sleep 0.1; done; \
         echo \"late from $FLOTILLA_NODE_ID\"; exec sleep 100000",
        dir = triggers.path().display()
    );
    m.ok(&[
        "service", "create", "--name", "talk", "--mode", "global", "-d", "--", "sh", "-c", &script,
    ])?;
    let node_ids = wait_until(
        "a running task on each node",
        Duration::from_secs(10),
        || {
            let tasks = m.tasks("talk")?;
            let id_on = |node: &str| {
                tasks
                    .iter()
                    .find(|t| t["node"] == node && t["state"] == "running")
                    .and_then(|t| t["node_id"].as_str().map(String::from))
            };
            Ok(id_on("m1").zip(id_on("w1")))
        },
    )?;
    let (m_id, w_id) = node_ids;

    let logs = wait_until(
        "both nodes' hellos in service logs",
        Duration::from_secs(5),
        || {
            let out = m.ok(&["service", "logs", "talk"])?;
            let both = out.stdout.contains(&format!("hello from {m_id}"))
                && out.stdout.contains(&format!("hello from {w_id}"));
            Ok(both.then_some(out))
        },
    )?;
    assert!(logs.stderr.is_empty(), "no warnings: {}", logs.stderr);
    let worker_line = logs
        .stdout
        .lines()
        .find(|l| l.contains(&format!("hello from {w_id}")))
        .context("the worker's line")?;
    assert!(
        worker_line.starts_with(&format!("talk.{w_id}."))
            && worker_line.ends_with(&format!("@w1 | hello from {w_id}")),
        "service.slot.task@node prefix: {worker_line}"
    );
    let raw = m.ok(&["service", "logs", "--raw", "talk"])?.stdout;
    assert!(
        raw.lines().any(|l| l == format!("hello from {w_id}")),
        "{raw}"
    );
    let no_ids = m.ok(&["service", "logs", "--no-task-ids", "talk"])?.stdout;
    assert!(
        no_ids.contains(&format!("talk.{w_id}@w1 | hello from {w_id}")),
        "{no_ids}"
    );
    let stamped = m.ok(&["service", "logs", "-t", "--raw", "talk"])?.stdout;
    assert!(
        stamped
            .lines()
            .all(|l| l.starts_with("20") && l.contains("Z hello from ")),
        "RFC 3339 times first: {stamped}"
    );
    let future = m.ok(&["service", "logs", "--since", "2999-01-01T00:00:00Z", "talk"])?;
    assert_eq!(future.stdout, "", "nothing after the since time");
    let recent = m.ok(&["service", "logs", "--since", "10m", "talk"])?.stdout;
    assert_eq!(recent.lines().count(), 2, "{recent}");

    let mut follow = Follower::start(&m, &["service", "logs", "--follow", "talk"])?;
    follow.wait_for(
        "the manager's hello",
        &format!("hello from {m_id}"),
        Duration::from_secs(5),
    )?;
    follow.wait_for(
        "the worker's hello",
        &format!("hello from {w_id}"),
        Duration::from_secs(5),
    )?;
    let started = Instant::now();
    std::fs::write(triggers.path().join(format!("go-{w_id}")), "")?;
    let late = follow.wait_for(
        "the worker's line printed after following started",
        &format!("late from {w_id}"),
        Duration::from_secs(5),
    )?;
    eprintln!(
        "a worker's new line reached the follower in {:?}: {late}",
        started.elapsed()
    );
    assert!(late.contains("@w1 | "), "{late}");
    drop(follow);

    w.kill9()?;
    let after = m.ok(&["service", "logs", "talk"])?;
    assert!(
        after
            .stderr
            .contains("warning: cannot read the logs of task talk.")
            && after.stderr.contains("on node w1"),
        "the worker's task is named: {}",
        after.stderr
    );
    assert!(
        after.stdout.contains(&format!("hello from {m_id}")),
        "the manager's lines still show: {}",
        after.stdout
    );
    assert!(
        !after.stdout.contains(&format!("from {w_id}")),
        "{}",
        after.stdout
    );
    Ok(())
}

#[test]
fn ended_tasks_stay_readable_and_new_tasks_join_a_follow() -> Result<()> {
    let m = start_named("m1")?;
    m.ok(&["init"])?;
    m.ok(&[
        "service",
        "create",
        "--name",
        "job",
        "--restart-condition",
        "none",
        "-d",
        "--",
        "sh",
        "-c",
        "echo finished $FLOTILLA_TASK_SLOT",
    ])?;
    wait_until("the job to complete", Duration::from_secs(5), || {
        let tasks = m.tasks("job")?;
        Ok(tasks.iter().any(|t| t["state"] == "complete").then_some(()))
    })?;
    // A few agent ticks: the ended task's directory must outlive them.
    std::thread::sleep(Duration::from_millis(2500));
    let out = m.ok(&["service", "logs", "--no-task-ids", "job"])?.stdout;
    assert_eq!(out, "job.1@m1 | finished 1\n");

    m.ok(&[
        "service",
        "create",
        "--name",
        "grow",
        "--replicas",
        "1",
        "-d",
        "--",
        "sh",
        "-c",
        "echo up $FLOTILLA_TASK_SLOT; exec sleep 100000",
    ])?;
    let mut follow = Follower::start(&m, &["service", "logs", "-f", "--raw", "grow"])?;
    follow.wait_for("the first task's line", "up 1", Duration::from_secs(5))?;
    m.ok(&["service", "scale", "grow=2"])?;
    follow.wait_for(
        "the line of a task started while following",
        "up 2",
        Duration::from_secs(5),
    )?;
    Ok(())
}
