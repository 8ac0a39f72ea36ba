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

/// The value of an unlabelled series in a node's `/metrics`.
fn series(metrics_addr: &str, name: &str) -> Result<f64> {
    let (_, text) = flotilla_testkit::http_get(metrics_addr, "/metrics", Duration::from_secs(5))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {name} at {metrics_addr}"))
}

/// `count` label writes on node `node` of the daemon at `socket`, 16 at a
/// time, each acknowledged (so committed) before it counts.
fn many_writes(socket: &Path, node: &str, count: u64) -> Result<()> {
    const AT_ONCE: u64 = 16;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = flotilla_api::Client::unix(socket);
        let mut workers = Vec::new();
        for w in 0..AT_ONCE {
            let client = client.clone();
            let node = node.to_string();
            workers.push(tokio::spawn(async move {
                let mut i = w;
                while i < count {
                    let update = flotilla_api::model::NodeUpdate {
                        labels_add: [(format!("w{w}"), i.to_string())].into(),
                        ..Default::default()
                    };
                    client
                        .update_node(&node, &update)
                        .await
                        .map_err(|e| anyhow!("write {i}: {e}"))?;
                    i += AT_ONCE;
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        for w in workers {
            w.await??;
        }
        Ok(())
    })
}

/// The acceptance at full size: a manager stopped, 20,000 writes,
/// its data dir wiped, the node joined again. The log was compacted past
/// anything it could replay, so it catches up from a snapshot, and `node
/// ls` shows it reachable.
#[test]
fn a_wiped_manager_joins_again_after_20000_writes_and_catches_up_from_a_snapshot() -> Result<()> {
    const WRITES: u64 = 20_000;
    let metrics = format!("127.0.0.1:{}", flotilla_testkit::free_port()?);
    let m1 = Daemon::start_with(
        bin(),
        "127.0.0.1:0",
        &[
            "--name",
            "m1",
            "--snapshot-every",
            "1000",
            "--metrics-listen",
            &metrics,
        ],
    )?;
    m1.ok(&["init"])?;
    let m2 = joined(&m1, "m2", "manager")?;
    let mut m3 = joined(&m1, "m3", "manager")?;
    let m3_port = m3.cluster_addr()?;
    m3.terminate(Duration::from_secs(30))?;
    // Its data goes; the cluster forgets the old m3 (the runbook's steps).
    drop(m3);
    m1.ok(&["node", "demote", "m3"])?;
    m1.ok(&["node", "rm", "--force", "m3"])?;
    let before = series(&metrics, "flotilla_raft_last_log_index")?;
    let started = std::time::Instant::now();
    many_writes(&m1.data_dir().join("flotilla.sock"), "m1", WRITES)?;
    let took = started.elapsed();
    let after = series(&metrics, "flotilla_raft_last_log_index")?;
    let snapshot = series(&metrics, "flotilla_raft_snapshot_index")?;
    eprintln!(
        "{WRITES} writes in {:.1}s: {} raft entries, snapshot at {snapshot}",
        took.as_secs_f64(),
        after - before
    );
    assert!(
        snapshot > before,
        "no snapshot since m3 left: {snapshot} <= {before}"
    );
    // A fresh node at m3's old address, with m3's name.
    let m3 = Daemon::start_with(
        bin(),
        &m3_port,
        &["--name", "m3", "--snapshot-every", "1000"],
    )?;
    m3.join_cluster_of(&m1, "manager")?;
    wait_until(
        "the new m3 to catch up and be reachable",
        Duration::from_secs(60),
        || Ok((manager_status(&m1, "m3")? == "reachable").then_some(())),
    )?;
    // It holds the last writes in its own store.
    m1.ok(&["node", "update", "m1", "--label-add", "last=yes"])?;
    wait_until(
        "the new m3's store to hold the last write",
        Duration::from_secs(10),
        || {
            let node = m3.ok(&["node", "inspect", "m1"])?.json()?;
            Ok((node[0]["labels"]["last"] == "yes").then_some(()))
        },
    )?;
    let log = m3.log_tail();
    assert!(log.to_lowercase().contains("snapshot"), "{log}");
    let info = m1.ok(&["info", "--format", "json"])?.json()?;
    assert_eq!(info["managers_reachable"], 3, "{info}");
    drop(m2);
    Ok(())
}
