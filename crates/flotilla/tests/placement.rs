//! Placement keys through the real binary, on three nodes on loopback
//! labelled zone=a, zone=b, zone=b: `--placement-pref spread=...` divides
//! the tasks over the zones, not over the nodes; `--replicas-max-per-node`
//! leaves the tasks beyond the limit pending, saying why.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use flotilla_testkit::{wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn start_named(name: &str) -> Result<Daemon> {
    Daemon::start_with(bin(), "127.0.0.1:0", &["--name", name])
}

/// A new node `name` that joined `manager`'s cluster as a worker.
fn worker(manager: &Daemon, name: &str) -> Result<Daemon> {
    let token = manager.ok(&["join-token", "worker", "-q"])?.stdout;
    let d = start_named(name)?;
    d.ok(&["join", "--token", token.trim(), &manager.cluster_addr()?])?;
    Ok(d)
}

/// The current tasks of `service` by state, and the running ones by node.
fn tasks_of(
    m: &Daemon,
    service: &str,
) -> Result<(Vec<serde_json::Value>, BTreeMap<String, usize>)> {
    let tasks: Vec<_> = m
        .tasks(service)?
        .into_iter()
        .filter(|t| t["current"] == true)
        .collect();
    let mut running = BTreeMap::new();
    for t in tasks.iter().filter(|t| t["state"] == "running") {
        *running
            .entry(t["node"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    Ok((tasks, running))
}

fn create(m: &Daemon, name: &str, flags: &[&str]) -> Result<()> {
    let mut args = vec!["service", "create", "--name", name, "-d"];
    args.extend(flags);
    args.extend(["--", "sleep", "100000"]);
    m.ok(&args)?;
    Ok(())
}

#[test]
fn spread_over_zones_and_a_limit_per_node() -> Result<()> {
    let m = start_named("m1")?;
    m.ok(&["init"])?;
    let _w1 = worker(&m, "w1")?;
    let _w2 = worker(&m, "w2")?;
    for (node, zone) in [("m1", "a"), ("w1", "b"), ("w2", "b")] {
        m.ok(&[
            "node",
            "update",
            "--label-add",
            &format!("zone={zone}"),
            node,
        ])?;
    }
    wait_until("3 ready nodes", Duration::from_secs(10), || {
        let nodes = m.ok(&["node", "ls", "--format", "json"])?.json()?;
        let ready = nodes
            .as_array()
            .map(|a| a.iter().filter(|n| n["status"] == "ready").count())
            .unwrap_or(0);
        Ok((ready == 3).then_some(()))
    })?;

    // Four tasks over two zones: two in zone a, on its one node; two in
    // zone b, one on each of its nodes.
    create(
        &m,
        "spread",
        &[
            "--replicas",
            "4",
            "--placement-pref",
            "spread=node.labels.zone",
        ],
    )?;
    let by_node = wait_until("4 spread tasks running", Duration::from_secs(15), || {
        let (_, running) = tasks_of(&m, "spread")?;
        Ok((running.values().sum::<usize>() == 4).then_some(running))
    })?;
    assert_eq!(
        by_node,
        BTreeMap::from([
            ("m1".to_string(), 2),
            ("w1".to_string(), 1),
            ("w2".to_string(), 1)
        ]),
        "two in zone a, two in zone b"
    );
    let spec = m.service("spread")?;
    assert_eq!(
        spec["spec"]["task"]["preferences"],
        serde_json::json!([{"spread": "node.labels.zone"}]),
        "{spec}"
    );

    // At most one a node: three run, the fourth waits and says why.
    create(
        &m,
        "capped",
        &["--replicas", "4", "--replicas-max-per-node", "1"],
    )?;
    let (tasks, running) = wait_until(
        "3 capped tasks running, 1 pending",
        Duration::from_secs(15),
        || {
            let (tasks, running) = tasks_of(&m, "capped")?;
            let pending = tasks.iter().filter(|t| t["state"] == "pending").count();
            let placed = running.values().sum::<usize>() == 3 && running.len() == 3;
            Ok((placed && pending == 1).then_some((tasks, running)))
        },
    )?;
    assert!(running.values().all(|n| *n == 1), "{running:?}");
    let waiting = tasks
        .iter()
        .find(|t| t["state"] == "pending")
        .ok_or_else(|| anyhow!("no pending task"))?;
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("max replicas per node limit exceeded on 3 nodes"),
        "{message}"
    );

    // A bad preference is refused before anything is created.
    let refused = m.cli(&[
        "service",
        "create",
        "--name",
        "bad",
        "--placement-pref",
        "spread=node.hostname",
        "--",
        "sleep",
        "1",
    ]);
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("--placement-pref: invalid placement preference"),
        "{}",
        refused.stderr
    );

    // Nothing moves afterwards: the rebalancer measures the spread
    // service as the scheduler does.
    std::thread::sleep(Duration::from_secs(3));
    let history = m.tasks("spread")?;
    assert_eq!(
        history.len(),
        4,
        "no task of the spread service moved: {history:?}"
    );
    Ok(())
}
