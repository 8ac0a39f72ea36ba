//! One node, end to end: the real `flotilla` binary as daemon and CLI, in
//! temp data dirs, as a new user would try it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use flotilla_testkit::{one_line_error, wait_until, Daemon};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn cluster() -> Result<Daemon> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    Ok(d)
}

/// (running, desired) of a service, from `service ls --format json`.
fn replicas(d: &Daemon, name: &str) -> Result<(u64, u64)> {
    let list = d.ok(&["service", "ls", "--format", "json"])?.json()?;
    let s = list
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .ok_or_else(|| anyhow!("service {name} not listed"))?;
    Ok((
        s["replicas"]["running"].as_u64().unwrap_or(0),
        s["replicas"]["desired"].as_u64().unwrap_or(0),
    ))
}

fn wait_replicas(d: &Daemon, name: &str, want: u64, timeout: Duration) -> Result<()> {
    wait_until(&format!("{name} to run {want}/{want}"), timeout, || {
        let (r, w) = replicas(d, name)?;
        Ok((r == want && w == want).then_some(()))
    })
}

#[test]
fn cli_without_a_daemon_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(bin())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["service", "ls"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        err.trim(),
        format!(
            "Error: cannot reach the flotilla daemon at {}/flotilla.sock: is 'flotilla daemon' running?",
            dir.path().display()
        )
    );
}

#[test]
fn init_makes_a_one_manager_cluster_once() -> Result<()> {
    let d = Daemon::start(bin())?;
    let before = d.ok(&["info", "--format", "json"])?.json()?;
    assert!(before["cluster_id"].is_null());
    let refused = d.cli(&["service", "ls"]);
    assert!(one_line_error(&refused).contains("flotilla init"));

    d.ok(&["init"])?;
    let again = d.cli(&["init"]);
    assert_eq!(
        one_line_error(&again),
        "Error: this node is already part of a cluster"
    );

    let info = d.ok(&["info", "--format", "json"])?.json()?;
    assert!(info["cluster_id"].is_string());
    assert_eq!(info["role"], "manager");
    assert_eq!(info["is_leader"], true);
    assert_eq!(info["managers"], 1);
    assert_eq!(info["fault_tolerance"], 0);
    assert!(info["warning"]
        .as_str()
        .unwrap_or("")
        .contains("tolerates no manager failure"));

    let nodes = d.ok(&["node", "ls", "--format", "json"])?.json()?;
    let node = &nodes[0];
    for key in [
        "id",
        "name",
        "role",
        "status",
        "availability",
        "manager_status",
    ] {
        assert!(node.get(key).is_some(), "node ls json lacks {key}");
    }
    assert_eq!(node["role"], "manager");
    assert_eq!(node["status"], "ready");
    assert_eq!(node["availability"], "active");
    assert_eq!(node["manager_status"], "leader");
    let table = d.ok(&["node", "ls"])?.stdout;
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(" * "), "the local node is marked: {table}");
    Ok(())
}

#[test]
fn replicas_converge_restart_and_scale() -> Result<()> {
    let d = cluster()?;
    let t0 = Instant::now();
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--restart-delay",
        "1s",
        "--stop-grace-period",
        "2s",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    wait_replicas(&d, "web", 3, Duration::from_secs(3))?;
    eprintln!("3/3 after {:?}", t0.elapsed());
    assert_eq!(d.task_pids().len(), 3);

    let table = d.ok(&["service", "ls"])?.stdout;
    assert!(
        table.contains("web") && table.contains("3/3") && table.contains("sleep 100000"),
        "{table}"
    );

    // kill -9 one task: its slot gets a new task, the dead one stays as history.
    let ps = d.tasks("web")?;
    let victim = ps
        .iter()
        .find(|t| t["slot"] == 2)
        .ok_or_else(|| anyhow!("no slot 2"))?;
    let pid = victim["pid"].as_u64().ok_or_else(|| anyhow!("no pid"))? as i32;
    let victim_id = victim["id"].as_str().unwrap_or("").to_string();
    // SAFETY: killing a task process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("slot 2 to run a new task", Duration::from_secs(3), || {
        let ps = d.tasks("web")?;
        let fresh = ps
            .iter()
            .any(|t| t["slot"] == 2 && t["id"] != victim_id.as_str() && t["state"] == "running");
        Ok(fresh.then_some(()))
    })?;
    let ps = d.tasks("web")?;
    let dead = ps
        .iter()
        .find(|t| t["id"] == victim_id.as_str())
        .ok_or_else(|| anyhow!("dead task not kept as history"))?;
    assert_eq!(dead["state"], "failed");
    assert_eq!(dead["desired_state"], "shutdown");
    assert_eq!(dead["exit_code"], 137);
    let text = d.ok(&["service", "ps", "web"])?.stdout;
    assert!(text.contains("\\_ web.2"), "{text}");
    assert!(text.contains("signal 9"), "{text}");

    d.ok(&["service", "scale", "web=10"])?;
    wait_replicas(&d, "web", 10, Duration::from_secs(3))?;
    assert_eq!(d.task_pids().len(), 10);

    d.ok(&["service", "scale", "web=2"])?;
    wait_until("8 task processes to go", Duration::from_secs(3), || {
        Ok((d.task_pids().len() == 2).then_some(()))
    })?;
    assert_eq!(replicas(&d, "web")?, (2, 2));
    Ok(())
}

#[test]
fn kill9_of_the_daemon_loses_nothing_and_runs_nothing_twice() -> Result<()> {
    let mut d = cluster()?;
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    wait_replicas(&d, "web", 2, Duration::from_secs(3))?;
    let before = {
        let mut p = d.task_pids();
        p.sort();
        p
    };
    d.kill9()?;
    assert_eq!(
        d.task_pids().len(),
        2,
        "tasks keep running while the daemon is down"
    );
    let t0 = Instant::now();
    d.restart()?;
    wait_replicas(&d, "web", 2, Duration::from_secs(5))?;
    eprintln!("2/2 again {:?} after restart", t0.elapsed());
    let mut after = d.task_pids();
    after.sort();
    assert_eq!(
        after, before,
        "the same processes were adopted, none started twice"
    );
    // The adopted tasks are still managed: removing the service stops them.
    d.ok(&["service", "rm", "web"])?;
    wait_until("adopted tasks to stop", Duration::from_secs(12), || {
        Ok(d.task_pids().is_empty().then_some(()))
    })?;
    Ok(())
}

#[test]
fn sigterm_stops_tasks_and_a_restart_brings_them_back() -> Result<()> {
    let mut d = cluster()?;
    d.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    wait_replicas(&d, "api", 2, Duration::from_secs(3))?;
    let code = d.terminate(Duration::from_secs(10))?;
    assert_eq!(code, Some(0), "clean exit on SIGTERM");
    assert!(d.task_pids().is_empty(), "tasks stopped with the daemon");
    d.restart()?;
    wait_replicas(&d, "api", 2, Duration::from_secs(5))?;
    assert_eq!(d.task_pids().len(), 2);
    let ps = d.tasks("api")?;
    assert!(
        ps.iter()
            .any(|t| t["state"] == "shutdown" && t["desired_state"] == "shutdown"),
        "the tasks stopped by the shutdown are history: {ps:?}"
    );
    Ok(())
}

#[test]
fn bad_input_gets_a_one_line_error() -> Result<()> {
    let d = cluster()?;
    let cases: &[(&[&str], &str)] = &[
        (
            &["service", "create", "--name", "-web", "--", "true"],
            "invalid name",
        ),
        (
            &["service", "create", "--name", "a/b", "--", "true"],
            "invalid name",
        ),
        (
            &["service", "create", "--name", &"x".repeat(64), "--", "true"],
            "at most 63",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "w",
                "--replicas",
                "-1",
                "--",
                "true",
            ],
            "negative",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "w",
                "--replicas",
                "ten",
                "--",
                "true",
            ],
            "whole number",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "w",
                "--constraint",
                "node.colour==red",
                "--",
                "true",
            ],
            "invalid constraint",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "w",
                "--constraint",
                "node.role=manager",
                "--",
                "true",
            ],
            "invalid constraint",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "w",
                "--restart-condition",
                "sometimes",
                "--",
                "true",
            ],
            "restart condition",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "w",
                "--restart-delay",
                "soon",
                "--",
                "true",
            ],
            "invalid duration",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "w",
                "--rollback-failure-action",
                "rollback",
                "--",
                "true",
            ],
            "--rollback-failure-action: rollback failure action must be pause or continue, not rollback",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "w",
                "--update-max-failure-ratio",
                "2",
                "--",
                "true",
            ],
            "--update-max-failure-ratio: update max failure ratio must be between 0 and 1, not 2",
        ),
        (
            &["service", "scale", "nosuch=3"],
            "service nosuch not found",
        ),
        (&["service", "scale", "web"], "NAME=REPLICAS"),
        (&["service", "ps", "nosuch"], "service nosuch not found"),
        (
            &["service", "inspect", "nosuch"],
            "service nosuch not found",
        ),
        (&["service", "rm", "nosuch"], "service nosuch not found"),
        (&["service", "logs", "nosuch"], "service nosuch not found"),
    ];
    for (args, want) in cases {
        let out = d.cli(args);
        let err = one_line_error(&out);
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    }
    d.ok(&[
        "service", "create", "--name", "web", "-d", "--", "sleep", "1000",
    ])?;
    let dup = d.cli(&[
        "service", "create", "--name", "web", "-d", "--", "sleep", "1000",
    ]);
    assert!(one_line_error(&dup).contains("already exists"));
    let neg = d.cli(&["service", "scale", "web=-2"]);
    assert!(one_line_error(&neg).contains("negative"));
    // Nothing was lost along the way.
    wait_replicas(&d, "web", 1, Duration::from_secs(3))?;
    Ok(())
}

#[test]
fn a_missing_command_is_rejected_with_the_reason_and_retried() -> Result<()> {
    let d = cluster()?;
    d.ok(&[
        "service",
        "create",
        "--name",
        "ghost",
        "--restart-delay",
        "200ms",
        "-d",
        "--",
        "no-such-command-flotilla",
    ])?;
    wait_until("two rejected tasks", Duration::from_secs(5), || {
        let ps = d.tasks("ghost")?;
        let rejected: Vec<&Value> = ps.iter().filter(|t| t["state"] == "rejected").collect();
        if let Some(t) = rejected.first() {
            let err = t["error"].as_str().unwrap_or("");
            assert!(err.contains("no-such-command-flotilla"), "{err}");
        }
        Ok((rejected.len() >= 2).then_some(()))
    })?;
    let text = d.ok(&["service", "ps", "ghost"])?.stdout;
    assert!(
        text.contains("Rejected") && text.contains("not found"),
        "{text}"
    );
    assert_eq!(replicas(&d, "ghost")?.0, 0);
    Ok(())
}

#[test]
fn restart_condition_none_leaves_a_finished_task_alone() -> Result<()> {
    let d = cluster()?;
    d.ok(&[
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
        "exit 3",
    ])?;
    let t = wait_until("the job to fail", Duration::from_secs(5), || {
        let ps = d.tasks("job")?;
        Ok(ps.into_iter().find(|t| t["state"] == "failed"))
    })?;
    assert_eq!(t["exit_code"], 3);
    // Give the orchestrator a few rounds: still one task, not restarted.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.tasks("job")?.len(), 1);
    Ok(())
}

#[test]
fn logs_show_each_tasks_output() -> Result<()> {
    let d = cluster()?;
    d.ok(&[
        "service", "create", "--name", "talk", "--replicas", "2", "-e", "WORD=hi", "-d", "--", "sh", "-c",
        "echo one $WORD $FLOTILLA_TASK_SLOT; echo two $FLOTILLA_SERVICE_NAME >&2; exec sleep 100000",
    ])?;
    wait_replicas(&d, "talk", 2, Duration::from_secs(3))?;
    let logs = wait_until("both tasks to log", Duration::from_secs(3), || {
        let out = d.ok(&["service", "logs", "talk"])?.stdout;
        Ok((out.matches("two talk").count() == 2).then_some(out))
    })?;
    assert!(
        logs.contains("one hi 1") && logs.contains("one hi 2"),
        "{logs}"
    );
    assert!(
        logs.lines().all(|l| l.starts_with("talk.")),
        "prefixed: {logs}"
    );
    let tail = d.ok(&["service", "logs", "--tail", "1", "talk"])?.stdout;
    assert_eq!(tail.lines().count(), 2, "one line per task: {tail}");
    Ok(())
}

#[test]
fn global_services_and_constraints() -> Result<()> {
    let d = cluster()?;
    d.ok(&[
        "service",
        "create",
        "--name",
        "everywhere",
        "--mode",
        "global",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    wait_replicas(&d, "everywhere", 1, Duration::from_secs(3))?;
    d.ok(&[
        "service",
        "create",
        "--name",
        "nowhere",
        "--replicas",
        "2",
        "--constraint",
        "node.role==worker",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    let reason = wait_until("a pending reason", Duration::from_secs(3), || {
        let ps = d.tasks("nowhere")?;
        Ok(ps
            .first()
            .and_then(|t| t["message"].as_str().map(String::from))
            .filter(|m| m.contains("no suitable node")))
    })?;
    assert!(
        reason.contains("1 node not matching constraint node.role==worker"),
        "{reason}"
    );
    assert_eq!(replicas(&d, "nowhere")?, (0, 2));
    let inspect = d.ok(&["service", "inspect", "nowhere"])?.json()?;
    assert_eq!(
        inspect[0]["spec"]["task"]["constraints"][0],
        "node.role==worker"
    );
    Ok(())
}

#[test]
fn a_damaged_or_unusable_data_dir_fails_clearly() -> Result<()> {
    let mut d = cluster()?;
    d.terminate(Duration::from_secs(10))?;
    std::fs::write(d.data_dir().join("node.json"), b"{garbage")?;
    let out = std::process::Command::new(bin())
        .args(["daemon", "--data-dir"])
        .arg(d.data_dir())
        .output()
        .context("run daemon")?;
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains("node.json") && last.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(d.data_dir().join("node.json"))?,
        b"{garbage",
        "state left as it was"
    );

    let file = tempfile::NamedTempFile::new()?;
    let out = std::process::Command::new(bin())
        .args(["daemon", "--data-dir"])
        .arg(file.path().join("sub"))
        .output()
        .context("run daemon")?;
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .last()
            .unwrap_or("")
            .contains("cannot create the data dir"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() -> Result<()> {
    let d = cluster()?;
    let out = std::process::Command::new(bin())
        .args(["daemon", "--data-dir"])
        .arg(d.data_dir())
        .output()
        .context("run daemon")?;
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already using the data dir"), "{err}");
    d.ok(&["info"])?;
    Ok(())
}

fn envs_of(d: &Daemon, var: &str) -> Vec<String> {
    let mut out: Vec<String> = d
        .task_pids()
        .into_iter()
        .filter_map(|p| std::fs::read(format!("/proc/{p}/environ")).ok())
        .filter_map(|env| {
            env.split(|b| *b == 0).find_map(|kv| {
                std::str::from_utf8(kv)
                    .ok()?
                    .strip_prefix(&format!("{var}="))
                    .map(String::from)
            })
        })
        .collect();
    out.sort();
    out
}

#[test]
fn update_replaces_tasks_and_rollback_returns_to_the_previous_spec() -> Result<()> {
    let d = cluster()?;
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "-e",
        "V=1",
        "--stop-grace-period",
        "1s",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    wait_until("2 tasks with V=1", Duration::from_secs(5), || {
        Ok((envs_of(&d, "V") == ["1", "1"]).then_some(()))
    })?;
    let refused = d.cli(&["service", "rollback", "web"]);
    assert!(one_line_error(&refused).contains("no previous spec"));

    d.ok(&["service", "update", "--env-add", "V=2", "web"])?;
    wait_until("2 tasks with V=2", Duration::from_secs(8), || {
        Ok((envs_of(&d, "V") == ["2", "2"]).then_some(()))
    })?;
    // A scale is not a change of what runs: nothing is replaced, and a
    // rollback keeps the count.
    d.ok(&["service", "update", "--replicas", "3", "web"])?;
    wait_replicas(&d, "web", 3, Duration::from_secs(5))?;
    assert_eq!(envs_of(&d, "V"), ["2", "2", "2"]);
    d.ok(&["service", "rollback", "web"])?;
    wait_until("3 tasks with V=1", Duration::from_secs(8), || {
        Ok((envs_of(&d, "V") == ["1", "1", "1"]).then_some(()))
    })?;

    let before: Vec<String> = d
        .tasks("web")?
        .iter()
        .filter(|t| t["current"] == true)
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();
    d.ok(&["service", "update", "--force", "web"])?;
    wait_until("every task replaced", Duration::from_secs(8), || {
        let ps = d.tasks("web")?;
        let fresh = ps
            .iter()
            .filter(|t| t["current"] == true && t["state"] == "running")
            .filter(|t| !before.iter().any(|b| t["id"] == b.as_str()))
            .count();
        Ok((fresh == 3).then_some(()))
    })?;
    let bad = d.cli(&["service", "update", "--replicas", "-3", "web"]);
    assert!(one_line_error(&bad).contains("negative"));
    let bad = d.cli(&["service", "update", "--env-add", "NOPE", "web"]);
    assert!(one_line_error(&bad).contains("KEY=VALUE"));
    Ok(())
}
