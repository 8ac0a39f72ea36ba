//! The replicated store under loads a cluster meets in its first month:
//! large commands must replicate, not wedge the managers.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use flotilla_testkit::{wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn start_named(name: &str) -> Result<Daemon> {
    Daemon::start_with(bin(), "127.0.0.1:0", &["--name", name])
}

fn token(m: &Daemon, role: &str) -> Result<String> {
    Ok(m.ok(&["join-token", role, "-q"])?.stdout.trim().to_string())
}

/// Three managers, the first one leading.
fn three_managers() -> Result<Vec<Daemon>> {
    let m1 = start_named("m1")?;
    m1.ok(&["init"])?;
    let addr = m1.cluster_addr()?;
    let mut all = vec![m1];
    for name in ["m2", "m3"] {
        let m = start_named(name)?;
        m.ok(&["join", "--token", &token(&all[0], "manager")?, &addr])?;
        all.push(m);
    }
    Ok(all)
}

fn task_count(d: &Daemon, service: &str) -> Result<usize> {
    Ok(d.tasks(service)?.len())
}

/// `service create --replicas 5000` (left pending by a constraint no node
/// meets) made every later write fail on 3 managers: the followers refused
/// the AppendEntries that carried the 5,000 tasks (axum's 2 MiB body
/// limit), and leaders changed again and again.
#[test]
fn a_service_of_5000_replicas_commits_on_three_managers() -> Result<()> {
    let managers = three_managers()?;
    let m1 = &managers[0];
    m1.ok(&[
        "service",
        "create",
        "--name",
        "big",
        "--replicas",
        "5000",
        "--constraint",
        "node.labels.nowhere==true",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    for m in &managers {
        wait_until(
            "every manager to hold the 5000 pending tasks",
            Duration::from_secs(30),
            || Ok((task_count(m, "big")? == 5000).then_some(())),
        )?;
    }
    // The cluster still takes writes, on any manager.
    for (i, m) in managers.iter().enumerate() {
        m.ok(&[
            "service",
            "create",
            "--name",
            &format!("small{i}"),
            "--replicas",
            "0",
            "-d",
            "--",
            "sleep",
            "1",
        ])?;
    }
    Ok(())
}
