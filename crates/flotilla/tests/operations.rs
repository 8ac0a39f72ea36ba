//! The runbook's node scenarios (docs/operations.md) through the real
//! binary: a manager lost for good is replaced by a fresh node without
//! restarting the other members; the new one catches up from a snapshot
//! (the log was compacted long past where it starts) and is a full voter.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use flotilla_testkit::{wait_until, Daemon};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// Managers that snapshot every 100 entries, so that a few hundred writes
/// compact the log past anything a new member could replay.
fn start_named(name: &str) -> Result<Daemon> {
    Daemon::start_with(
        bin(),
        "127.0.0.1:0",
        &["--name", name, "--snapshot-every", "100"],
    )
}

fn joined(manager: &Daemon, name: &str, role: &str) -> Result<Daemon> {
    let d = start_named(name)?;
    d.join_cluster_of(manager, role)?;
    Ok(d)
}

fn manager_status(d: &Daemon, name: &str) -> Result<Value> {
    let nodes = d.ok(&["node", "ls", "--format", "json"])?.json()?;
    nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .map(|n| n["manager_status"].clone())
        .ok_or_else(|| anyhow!("node {name} not listed"))
}

#[test]
fn a_lost_manager_is_replaced_by_a_fresh_node_that_catches_up_from_a_snapshot() -> Result<()> {
    let m1 = start_named("m1")?;
    m1.ok(&["init"])?;
    let m2 = joined(&m1, "m2", "manager")?;
    let mut m3 = joined(&m1, "m3", "manager")?;
    let pids = (m1.pid(), m2.pid());
    // m3's machine is gone for good.
    m3.kill9()?;
    m1.ok(&["node", "demote", "m3"])?;
    m1.ok(&["node", "rm", "--force", "m3"])?;
    let writes = 300;
    for i in 1..=writes {
        m1.ok(&["node", "update", "m1", "--label-add", &format!("round={i}")])?;
    }
    // Its replacement: a fresh node with a manager token.
    let m4 = joined(&m1, "m4", "manager")?;
    wait_until(
        "m4 to catch up and be reachable",
        Duration::from_secs(30),
        || Ok((manager_status(&m1, "m4")? == "reachable").then_some(())),
    )?;
    let info = m1.ok(&["info", "--format", "json"])?.json()?;
    assert_eq!(info["managers"], 3, "{info}");
    assert_eq!(info["managers_reachable"], 3, "{info}");
    assert_eq!(info["fault_tolerance"], 1, "{info}");
    // m4 reads the last write from its own store.
    let round = wait_until(
        "m4's store to hold the last write",
        Duration::from_secs(10),
        || {
            let node = m4.ok(&["node", "inspect", "m1"])?.json()?;
            let round = node[0]["labels"]["round"].as_str().map(String::from);
            Ok((round.as_deref() == Some("300")).then_some(round))
        },
    )?;
    assert_eq!(round.as_deref(), Some("300"));
    // m4 started after the log was compacted past its start: what it has
    // came in a snapshot.
    let log = m4.log_tail();
    assert!(log.to_lowercase().contains("snapshot"), "{log}");
    // Nobody else restarted.
    assert_eq!((m1.pid(), m2.pid()), pids);
    // m3 is not listed any more.
    let nodes = m1.ok(&["node", "ls", "--format", "json"])?.json()?;
    assert!(
        !nodes
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["name"] == "m3")),
        "{nodes}"
    );
    Ok(())
}
