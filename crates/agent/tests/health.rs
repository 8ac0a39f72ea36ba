//! End-to-end tests of health checks: the agent with the process driver,
//! real task processes and real probes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use flotilla_agent::{TaskReport, DEFAULT_LOG_CAP_BYTES};
use flotilla_types::{DesiredState, Health, HealthTest, TaskState};

const NO_CAP: u64 = DEFAULT_LOG_CAP_BYTES;

fn is(task_id: &str, state: TaskState, health: Option<Health>) -> impl Fn(&TaskReport) -> bool {
    let task_id = task_id.to_string();
    move |r| r.task_id == task_id && r.status.state == state && r.status.health == health
}

fn shell(command: &str) -> HealthTest {
    HealthTest::Shell {
        command: command.to_string(),
    }
}

/// `test -f $FILE` as the check, with `FILE` in the task's environment.
fn file_checked_task(
    id: &str,
    file: &std::path::Path,
    start_period_ms: u64,
) -> flotilla_types::Task {
    let mut t = with_health(
        task(id, SLEEP),
        health_check(shell("test -f \"$FILE\""), 100, 2, start_period_ms),
    );
    t.spec
        .env
        .insert("FILE".into(), file.to_string_lossy().into_owned());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_check_follows_the_task_from_starting_to_unhealthy() {
    let fx = Fixture::new();
    let file = fx.dir.path().join("ready");
    let mut h = Harness::spawn(&fx, NO_CAP);
    // A long start period: the failures before the file appears do not
    // count.
    h.assign(vec![file_checked_task("a", &file, 60_000)]);

    let running = h.wait_state("a", TaskState::Running).await;
    assert_eq!(running.status.health, Some(Health::Starting));
    let pid = running.status.pid.unwrap();

    std::fs::write(&file, "").unwrap();
    let healthy = h
        .wait_report(
            "a healthy",
            is("a", TaskState::Running, Some(Health::Healthy)),
        )
        .await;
    // Still the moment the task entered running: updates judge from it.
    assert_eq!(healthy.status.timestamp, running.status.timestamp);
    assert_eq!(healthy.status.pid, Some(pid));
    wait_until("the record to show healthy", || {
        read_record(&h.state_dir, "a").status.health == Some(Health::Healthy)
    })
    .await;

    // A success ended the start period: two failures now make it
    // unhealthy, and an unhealthy task is stopped and failed.
    std::fs::remove_file(&file).unwrap();
    let failed = h.wait_state("a", TaskState::Failed).await;
    assert_eq!(
        failed.status.error.as_deref(),
        Some("task unhealthy: exit code 1")
    );
    assert_eq!(failed.status.health, Some(Health::Unhealthy));
    assert_eq!(failed.status.exit_code, Some(128 + libc::SIGTERM));
    assert!(!alive(pid));
    let record = read_record(&h.state_dir, "a");
    assert_eq!(record.status.state, TaskState::Failed);
    assert_eq!(record.status.health, Some(Health::Unhealthy));
    wait_until("the task and its probes to be gone", || {
        fx.processes().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_finds_a_server_healthy() {
    let fx = Fixture::new();
    let port = free_port().to_string();
    let root = fx.dir.path().to_string_lossy().into_owned();
    let server = [
        "python3",
        "-m",
        "http.server",
        port.as_str(),
        "--bind",
        "127.0.0.1",
        "--directory",
        root.as_str(),
    ];
    let mut h = Harness::spawn(&fx, NO_CAP);
    h.assign(vec![with_health(
        task("web", &server),
        health_check(
            HealthTest::Http {
                port: port.parse().unwrap(),
                path: "/".into(),
            },
            200,
            3,
            // The interpreter may take a while to listen.
            8_000,
        ),
    )]);
    let running = h.wait_state("web", TaskState::Running).await;
    assert_eq!(running.status.health, Some(Health::Starting));
    h.wait_report(
        "web healthy",
        is("web", TaskState::Running, Some(Health::Healthy)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_on_a_closed_port_waits_out_the_start_period() {
    let fx = Fixture::new();
    let mut h = Harness::spawn(&fx, NO_CAP);
    let start_period = Duration::from_millis(800);
    h.assign(vec![with_health(
        task("closed", SLEEP),
        health_check(
            HealthTest::Tcp { port: free_port() },
            100,
            2,
            start_period.as_millis() as u64,
        ),
    )]);
    let running = h.wait_state("closed", TaskState::Running).await;
    let seen_running = Instant::now();
    assert_eq!(running.status.health, Some(Health::Starting));
    let failed = h.wait_state("closed", TaskState::Failed).await;
    let took = seen_running.elapsed();
    // Counted failures start after the start period; two are needed.
    assert!(took >= start_period, "unhealthy after {took:?}");
    assert_eq!(
        failed.status.error.as_deref(),
        Some("task unhealthy: connection refused")
    );
    // Never healthy on the way.
    assert!(!h
        .seen
        .iter()
        .any(|r| r.task_id == "closed" && r.status.health == Some(Health::Healthy)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_without_a_check_have_no_health() {
    let fx = Fixture::new();
    let mut h = Harness::spawn(&fx, NO_CAP);
    let check = |test| health_check(test, 100, 1, 0);
    h.assign(vec![
        task("plain", SLEEP),
        with_health(task("disabled", SLEEP), check(HealthTest::None)),
        // The process driver brings no check of its own.
        with_health(task("image", SLEEP), check(HealthTest::Image)),
    ]);
    for id in ["plain", "disabled", "image"] {
        let r = h.wait_state(id, TaskState::Running).await;
        assert_eq!(r.status.health, None, "{id}");
    }
    // The agent re-sends while the store shows "assigned": none of the
    // later reports carries a health either.
    for id in ["plain", "disabled", "image"] {
        h.wait_reports("running to be re-sent", 2, |r| {
            r.task_id == id && r.status.state == TaskState::Running
        })
        .await;
        assert_eq!(read_record(&h.state_dir, id).status.health, None);
    }
    assert!(h.seen.iter().all(|r| r.status.health.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_in_flight_does_not_delay_a_stop() {
    let fx = Fixture::new();
    let mut h = Harness::spawn(&fx, NO_CAP);
    let mut check = health_check(shell("sleep 30"), 100, 3, 0);
    check.timeout_ms = 60_000;
    let t = with_health(task("slow", SLEEP), check);
    h.assign(vec![t.clone()]);
    h.wait_state("slow", TaskState::Running).await;
    // The probe runs with the task's environment: the task's sleep, the
    // probe's shell and its sleep.
    wait_until("the probe to run", || {
        processes_with_env("FLOTILLA_TASK_ID=slow").len() >= 2
    })
    .await;
    let started = Instant::now();
    h.assign(vec![with_state(
        t,
        DesiredState::Shutdown,
        TaskState::Running,
    )]);
    let r = h.wait_state("slow", TaskState::Shutdown).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status.health, None);
    wait_until("the probe to be killed", || fx.processes().is_empty()).await;
}

#[test]
fn an_adopted_task_keeps_its_health_and_is_still_checked() {
    let fx = Fixture::new();
    let file = fx.dir.path().join("ready");
    std::fs::write(&file, "").unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };

    let first = runtime();
    let (pid, started_at) = first.block_on(async {
        let mut h = Harness::spawn(&fx, NO_CAP);
        h.assign(vec![file_checked_task("a", &file, 0)]);
        let r = h
            .wait_report(
                "a healthy",
                is("a", TaskState::Running, Some(Health::Healthy)),
            )
            .await;
        wait_until("the record to show healthy", || {
            read_record(&h.state_dir, "a").status.health == Some(Health::Healthy)
        })
        .await;
        // Dropping the runtime below is the agent's crash.
        h.join = None;
        (r.status.pid.unwrap(), r.status.timestamp)
    });
    drop(first);
    assert!(alive(pid));

    let second = runtime();
    second.block_on(async {
        let mut h = Harness::spawn(&fx, NO_CAP);
        // The store has the task running but lost its health: the agent
        // re-sends it (the same state, another health).
        let known: BTreeSet<String> = ["a".to_string()].into();
        h.assign_known(
            vec![with_state(
                file_checked_task("a", &file, 0),
                DesiredState::Running,
                TaskState::Running,
            )],
            known,
        );
        let r = h
            .wait_report("healthy to be re-sent", |r| r.task_id == "a")
            .await;
        assert_eq!(r.status.state, TaskState::Running);
        assert_eq!(
            r.status.health,
            Some(Health::Healthy),
            "never back to starting"
        );
        assert_eq!(r.status.pid, Some(pid), "adopted, not restarted");
        assert_eq!(r.status.timestamp, started_at);

        // The adopted task is still probed.
        std::fs::remove_file(&file).unwrap();
        let failed = h.wait_state("a", TaskState::Failed).await;
        assert_eq!(
            failed.status.error.as_deref(),
            Some("task unhealthy: exit code 1")
        );
        wait_until("the adopted task to end", || !alive(pid)).await;
    });
}
