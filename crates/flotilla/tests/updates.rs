//! Health checks and rolling updates with the process driver, end to end:
//! the real binary as daemon and CLI, as a user would try them.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use flotilla_testkit::{wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn cluster() -> Result<Daemon> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    Ok(d)
}

fn healthy(d: &Daemon, name: &str) -> Result<u64> {
    Ok(d.service(name)?["replicas"]["healthy"]
        .as_u64()
        .unwrap_or(0))
}

fn update_state(d: &Daemon, name: &str) -> Result<String> {
    Ok(d.service(name)?["update_status"]["state"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

/// Values of `var` in the environments of the current running tasks.
fn current_env(d: &Daemon, name: &str, var: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for t in d.tasks(name)? {
        if t["current"] != true || t["state"] != "running" {
            continue;
        }
        let Some(pid) = t["pid"].as_u64() else {
            continue;
        };
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let value = environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix(&format!("{var}=")))
            .unwrap_or("")
            .to_string();
        out.push(value);
    }
    out.sort();
    Ok(out)
}

/// A service whose tasks are healthy once they created their own file in
/// `dir`, unless BROKEN is set.
fn create_checked(d: &Daemon, dir: &Path, extra: &[&str]) -> Result<()> {
    let run = format!(
        "touch {}/$FLOTILLA_TASK_ID; exec sleep 100000",
        dir.display()
    );
    let check = format!(
        "test -z \"$BROKEN\" && test -f {}/$FLOTILLA_TASK_ID",
        dir.display()
    );
    let mut args = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--stop-grace-period",
        "1s",
        "--health-cmd",
        &check,
        "--health-interval",
        "200ms",
        "--health-timeout",
        "2s",
        "--health-retries",
        "2",
        "--update-monitor",
        "500ms",
        "--rollback-monitor",
        "500ms",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", &run]);
    d.ok(&args)?;
    Ok(())
}

#[test]
fn health_checks_show_in_ls_and_ps() -> Result<()> {
    let d = cluster()?;
    let dir = tempfile::tempdir()?;
    // Waits (without -d) until 3 tasks run and pass their check.
    create_checked(&d, dir.path(), &[])?;
    assert_eq!(healthy(&d, "web")?, 3);
    let ls = d.ok(&["service", "ls"])?.stdout;
    assert!(ls.contains("3/3 (3 healthy)"), "{ls}");
    let ps = d.ok(&["service", "ps", "web"])?.stdout;
    assert!(ps.contains("HEALTH"), "{ps}");
    assert_eq!(ps.matches("healthy").count(), 3, "{ps}");

    // A task whose check starts failing is replaced, as in Swarm.
    let first = d
        .tasks("web")?
        .into_iter()
        .find(|t| t["current"] == true)
        .and_then(|t| t["id"].as_str().map(String::from))
        .ok_or_else(|| anyhow!("no task"))?;
    std::fs::remove_file(dir.path().join(&first))?;
    wait_until(
        "the unhealthy task to fail",
        Duration::from_secs(15),
        || {
            let t = d.tasks("web")?;
            Ok(t.iter()
                .find(|t| t["id"] == first.as_str())
                .filter(|t| t["state"] == "failed")
                .map(|t| t["error"].as_str().unwrap_or("").to_string()))
        },
    )
    .map(|err| assert!(err.contains("unhealthy"), "{err}"))?;
    wait_until("3 healthy again", Duration::from_secs(20), || {
        Ok((healthy(&d, "web")? == 3).then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_failing_update_rolls_back_by_itself() -> Result<()> {
    let d = cluster()?;
    let dir = tempfile::tempdir()?;
    create_checked(
        &d,
        dir.path(),
        &["--update-failure-action", "rollback", "-e", "V=1"],
    )?;
    let out = d.cli(&["service", "update", "--env-add", "BROKEN=1", "web"]);
    assert_ne!(out.code, 0, "the update must fail: {}", out.stdout);
    assert!(
        out.stderr.contains("update rolled back"),
        "stderr: {}",
        out.stderr
    );
    let s = d.service("web")?;
    assert_eq!(s["update_status"]["state"], "rollback_completed");
    let message = s["update_status"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("update rolled back due to failure"),
        "{message}"
    );
    // Every task ends on the old spec, and only one slot was tried.
    wait_until(
        "3 healthy tasks on the old spec",
        Duration::from_secs(20),
        || {
            Ok(
                (healthy(&d, "web")? == 3 && current_env(&d, "web", "BROKEN")? == ["", "", ""])
                    .then_some(()),
            )
        },
    )?;
    let broken_runs = d
        .tasks("web")?
        .iter()
        .filter(|t| t["state"] == "failed")
        .count();
    assert!(broken_runs >= 1, "the failed task stays in the history");
    let inspect = d
        .ok(&["service", "inspect", "web", "--format", "table"])?
        .stdout;
    assert!(inspect.contains("rollback_completed"), "{inspect}");
    Ok(())
}

#[test]
fn a_start_first_update_keeps_every_slot_healthy() -> Result<()> {
    let d = cluster()?;
    let dir = tempfile::tempdir()?;
    create_checked(
        &d,
        dir.path(),
        &["--update-order", "start-first", "-e", "V=1"],
    )?;
    d.ok(&["service", "update", "-d", "--env-add", "V=2", "web"])?;
    let mut lowest = u64::MAX;
    wait_until("the update to complete", Duration::from_secs(60), || {
        lowest = lowest.min(healthy(&d, "web")?);
        Ok((update_state(&d, "web")? == "completed").then_some(()))
    })?;
    assert!(
        lowest >= 3,
        "healthy tasks fell to {lowest} during the update"
    );
    assert_eq!(current_env(&d, "web", "V")?, ["2", "2", "2"]);
    Ok(())
}

#[test]
fn a_paced_update_replaces_one_slot_at_a_time() -> Result<()> {
    let d = cluster()?;
    let dir = tempfile::tempdir()?;
    create_checked(&d, dir.path(), &["-e", "V=1", "--update-delay", "300ms"])?;
    d.ok(&["service", "update", "-d", "--env-add", "V=2", "web"])?;
    let mut most_in_flight = 0;
    wait_until("the update to complete", Duration::from_secs(60), || {
        // Slots whose current task is new but not yet healthy.
        let in_flight = d
            .tasks("web")?
            .iter()
            .filter(|t| t["current"] == true && t["up_to_date"] == true)
            .filter(|t| t["state"] != "running" || t["health"] != "healthy")
            .count();
        most_in_flight = most_in_flight.max(in_flight);
        Ok((update_state(&d, "web")? == "completed").then_some(()))
    })?;
    assert!(
        most_in_flight <= 1,
        "{most_in_flight} slots updated at once"
    );
    assert_eq!(current_env(&d, "web", "V")?, ["2", "2", "2"]);
    // A following update prints its progress and ends converged.
    let out = d
        .ok(&["service", "update", "--env-add", "V=3", "web"])?
        .stdout;
    assert!(out.contains("converged"), "{out}");
    assert!(out.contains("3/3:"), "{out}");
    Ok(())
}
