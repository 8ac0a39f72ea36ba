//! Jobs through the real binary: a `replicated-job` of 3 completions, at
//! most 2 at once, whose second slot fails once and is retried by its
//! restart policy; `service ls` shows the completions; `service update
//! --force` runs it again. A `global-job` runs once on the node.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use flotilla_testkit::{wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// (completed, desired) of a job, from `service ls --format json`.
fn completions(d: &Daemon, name: &str) -> Result<(u64, u64)> {
    let list = d.ok(&["service", "ls", "--format", "json"])?.json()?;
    let s = list
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .ok_or_else(|| anyhow!("service {name} not listed"))?;
    Ok((
        s["replicas"]["completed"].as_u64().unwrap_or(u64::MAX),
        s["replicas"]["desired"].as_u64().unwrap_or(0),
    ))
}

#[test]
fn a_replicated_job_runs_each_task_to_completion_within_its_concurrency() -> Result<()> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    let work = tempfile::tempdir()?;
    let dir = work.path().to_string_lossy().into_owned();
    // Each task notes how many others ran beside it when it started, runs
    // a moment, and records its slot; slot 2 fails on its first try.
    let script = format!(
        r#"cd {dir} || exit 3
n=$(ls | grep -c '^running\.' ); echo "$n" >> beside
touch running.$FLOTILLA_TASK_ID
sleep 0.4
rm running.$FLOTILLA_TASK_ID
if [ "$FLOTILLA_TASK_SLOT" = 2 ] && [ ! -e failed.2 ]; then touch failed.2; exit 1; fi
echo "$FLOTILLA_TASK_SLOT" >> done"#
    );
    let created = d.ok(&[
        "service",
        "create",
        "--name",
        "migrate",
        "--mode",
        "replicated-job",
        "--replicas",
        "3",
        "--max-concurrent",
        "2",
        "--restart-delay",
        "0s",
        "--",
        "sh",
        "-c",
        &script,
    ])?;
    // Without -d, create waits for the job to complete.
    assert_eq!(completions(&d, "migrate")?, (3, 3), "{}", created.stdout);
    let done = std::fs::read_to_string(work.path().join("done"))?;
    let mut slots: Vec<&str> = done.lines().collect();
    slots.sort();
    assert_eq!(slots, ["1", "2", "3"], "each slot completed once");
    assert!(
        work.path().join("failed.2").exists(),
        "slot 2 failed once first"
    );
    let beside = std::fs::read_to_string(work.path().join("beside"))?;
    let most = beside
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .max();
    assert!(
        most.is_some_and(|m| m <= 1),
        "at most 2 at once: {beside:?}"
    );
    let ls = d.ok(&["service", "ls"])?.stdout;
    assert!(ls.contains("0/3 (3/3 completed)"), "{ls}");
    // Completed stays completed.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(work.path().join("done"))?
            .lines()
            .count(),
        3
    );
    // --force runs it again.
    d.ok(&["service", "update", "--force", "-d", "migrate"])?;
    wait_until("the job to run again", Duration::from_secs(20), || {
        let runs = std::fs::read_to_string(work.path().join("done"))?
            .lines()
            .count();
        Ok((runs == 6 && completions(&d, "migrate")? == (3, 3)).then_some(()))
    })?;
    // A restart condition that would rerun what completed is refused.
    let any = d.cli(&[
        "service",
        "create",
        "--name",
        "bad",
        "--mode",
        "replicated-job",
        "--restart-condition",
        "any",
        "-d",
        "--",
        "true",
    ]);
    assert!(
        any.code != 0 && any.stderr.contains("on-failure or none"),
        "{}",
        any.stderr
    );
    // A global job runs once on the node.
    d.ok(&[
        "service",
        "create",
        "--name",
        "once",
        "--mode",
        "global-job",
        "--",
        "sh",
        "-c",
        &format!("echo x >> {dir}/global"),
    ])?;
    assert_eq!(completions(&d, "once")?, (1, 1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(work.path().join("global"))?
            .lines()
            .count(),
        1
    );
    Ok(())
}
