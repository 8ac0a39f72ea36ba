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
    let before = flotilla_testkit::metric(&metrics, "flotilla_raft_last_log_index")?;
    let started = std::time::Instant::now();
    many_writes(&m1.data_dir().join("flotilla.sock"), "m1", WRITES)?;
    let took = started.elapsed();
    let after = flotilla_testkit::metric(&metrics, "flotilla_raft_last_log_index")?;
    let snapshot = flotilla_testkit::metric(&metrics, "flotilla_raft_snapshot_index")?;
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

/// PIDs of the tasks of every node in `nodes`, sorted.
fn all_task_pids(nodes: &[&Daemon]) -> Vec<u32> {
    let mut pids: Vec<u32> = nodes.iter().flat_map(|d| d.task_pids()).collect();
    pids.sort_unstable();
    pids
}

fn running(d: &Daemon, name: &str) -> Result<usize> {
    Ok(d.tasks(name)?
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
        .count())
}

/// The runbook's upgrade, one manager at a time, through the binary. The
/// three managers start as the previous Flotilla: they announce that they
/// read raft entries up to format 7 (`FLOTILLA_TEST_ENTRY_FORMAT`). Each
/// is stopped with `--keep-tasks-on-stop`, as the systemd unit runs it,
/// and started again as the new version. A command of format 8 (a backup
/// schedule) is refused while any manager is still old, and accepted once
/// the last is upgraded; no task restarts on the way.
#[test]
fn managers_upgraded_one_at_a_time_keep_their_tasks_and_new_entries_wait_for_the_last() -> Result<()>
{
    const OLD: (&str, &str) = ("FLOTILLA_TEST_ENTRY_FORMAT", "7");
    let flags = ["--keep-tasks-on-stop", "--node-timeout", "30s"];
    let start = |name: &str| Daemon::start_named_with_env(bin(), name, &flags, &[OLD]);
    let m1 = start("m1")?;
    m1.ok(&["init"])?;
    let m2 = start("m2")?;
    m2.join_cluster_of(&m1, "manager")?;
    let m3 = start("m3")?;
    m3.join_cluster_of(&m1, "manager")?;
    let mut managers = [m1, m2, m3];
    managers[0].create_sleeping("web", 3, &[])?;
    wait_until("3 tasks of web running", Duration::from_secs(20), || {
        Ok((running(&managers[0], "web")? == 3).then_some(()))
    })?;
    let pids = all_task_pids(&managers.iter().collect::<Vec<_>>());
    assert_eq!(pids.len(), 3, "{pids:?}");
    let dir = tempfile::tempdir()?;
    let dir = dir.path().to_string_lossy().to_string();
    let schedule = ["backup", "--schedule", "6h", "--dir", dir.as_str()];
    for i in 0..managers.len() {
        let refused = managers[0].cli(&schedule);
        assert_ne!(
            refused.code, 0,
            "a format-8 command with an old manager left"
        );
        let line = flotilla_testkit::one_line_error(&refused);
        assert!(line.contains("upgrade every manager first"), "{line}");
        // The next manager is upgraded: stopped (its tasks stay), started
        // as the new version.
        let m = &mut managers[i];
        let name = format!("m{}", i + 1);
        let own = m.task_pids();
        assert_eq!(m.terminate(Duration::from_secs(30))?, Some(0));
        assert_eq!(m.task_pids(), own, "{name}'s tasks outlive its daemon");
        m.remove_env(OLD.0);
        m.restart()?;
        let other = &managers[(i + 1) % 3];
        wait_until(
            &format!("{name} reachable again"),
            Duration::from_secs(30),
            || {
                Ok((manager_status(other, &name)?
                    .as_str()
                    .is_some_and(|s| s == "reachable" || s == "leader"))
                .then_some(()))
            },
        )?;
    }
    wait_until(
        "the schedule to be accepted once every manager reads format 8",
        Duration::from_secs(30),
        || Ok((managers[0].cli(&schedule).code == 0).then_some(())),
    )?;
    assert_eq!(running(&managers[0], "web")?, 3);
    assert_eq!(
        all_task_pids(&managers.iter().collect::<Vec<_>>()),
        pids,
        "no task restarted"
    );
    Ok(())
}

/// A certificate near its expiry is renewed by its own node, which
/// restarts in place with its tasks running. Certificates last 30 s here
/// (`FLOTILLA_TEST_CERT_VALIDITY`), so a node renews after about 20 s,
/// when a third of the validity is left.
#[test]
fn certificates_near_their_expiry_are_renewed_in_place() -> Result<()> {
    let env = [("FLOTILLA_TEST_CERT_VALIDITY", "30")];
    let m1 = Daemon::start_named_with_env(bin(), "m1", &[], &env)?;
    m1.ok(&["init"])?;
    let w1 = Daemon::start_named_with_env(bin(), "w1", &[], &env)?;
    w1.join_cluster_of(&m1, "worker")?;
    m1.create_sleeping("web", 2, &["--constraint", "node.role==worker"])?;
    wait_until(
        "2 tasks of web running on w1",
        Duration::from_secs(20),
        || Ok((running(&m1, "web")? == 2 && w1.task_pids().len() == 2).then_some(())),
    )?;
    let pids = w1.task_pids();
    let cert = |d: &Daemon| std::fs::read(d.data_dir().join("certs/node.crt"));
    let (m1_first, w1_first) = (cert(&m1)?, cert(&w1)?);
    wait_until(
        "both nodes to renew their certificates",
        Duration::from_secs(45),
        || Ok((cert(&m1)? != m1_first && cert(&w1)? != w1_first).then_some(())),
    )?;
    // Still one cluster: the worker is ready, its tasks run on.
    wait_until(
        "w1 ready after its renewal",
        Duration::from_secs(20),
        || {
            let nodes = m1.ok(&["node", "ls", "--format", "json"])?.json()?;
            let ready = nodes
                .as_array()
                .and_then(|a| a.iter().find(|n| n["name"] == "w1"))
                .is_some_and(|n| n["status"] == "ready");
            Ok((ready && running(&m1, "web")? == 2).then_some(()))
        },
    )?;
    assert_eq!(w1.task_pids(), pids, "the tasks ran on through the renewal");
    m1.ok(&["service", "scale", "web=3"])?;
    wait_until(
        "a third task placed after the renewal",
        Duration::from_secs(20),
        || Ok((running(&m1, "web")? == 3).then_some(())),
    )?;
    Ok(())
}
