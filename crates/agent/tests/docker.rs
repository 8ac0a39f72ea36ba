//! The docker driver against the real Docker Engine of this machine, with
//! busybox images built locally (no registry is reachable).
//!
//! These tests fail, not skip, without an engine: CI has one, and a silent
//! pass would hide a broken driver. Each test labels its containers with its
//! own node ID, and its [`Test`] guard removes them all, also on failure.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{task, with_state, Harness};
use flotilla_agent::docker::{LABEL_LOG_PATH, LABEL_NODE_ID, LABEL_SERVICE_NAME, LABEL_TASK_ID};
use flotilla_agent::{
    DockerDriver, Driver, Drivers, Exit, ExitFuture, Handle, Probe, ProcessDriver, StartSpec,
    StopSignal,
};
use flotilla_testkit::image::{busybox_image, docker_available};
use flotilla_types::{DesiredState, HealthCheck, HealthTest, Resources, TaskState, TaskTemplate};
use serde_json::Value;

/// How long a container may take to reach an awaited state.
const WAIT: Duration = Duration::from_secs(20);
const IMAGE: &str = "flotilla-test/busybox:1";
const HEALTH_IMAGE: &str = "flotilla-test/busybox-health:1";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test's node ID, state directory and driver; removes the test's
/// containers when dropped.
struct Test {
    node: String,
    dir: tempfile::TempDir,
    driver: DockerDriver,
    image: String,
}

impl Test {
    fn new() -> Test {
        assert!(
            docker_available(),
            "no Docker Engine answers `docker info`: the docker driver tests need one \
             (as root, scripts/test-deps.sh starts dockerd)"
        );
        let image = busybox_image(IMAGE, None).unwrap_or_else(|e| panic!("{e}"));
        Test {
            node: format!(
                "dtest-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            dir: tempfile::tempdir().unwrap(),
            driver: DockerDriver::from_env(),
            image,
        }
    }

    fn task_id(&self, name: &str) -> String {
        format!("{}-{name}", self.node)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// What the agent would hand the driver for a task of service "web".
    fn spec(&self, name: &str, command: &[&str]) -> StartSpec {
        let task_id = self.task_id(name);
        let env = BTreeMap::from([
            ("FLOTILLA_TASK_ID".to_string(), task_id.clone()),
            ("FLOTILLA_SERVICE_ID".to_string(), "svc1".to_string()),
            ("FLOTILLA_SERVICE_NAME".to_string(), "web".to_string()),
            ("FLOTILLA_TASK_SLOT".to_string(), "1".to_string()),
            ("FLOTILLA_NODE_ID".to_string(), self.node.clone()),
        ]);
        StartSpec {
            ports: Vec::new(),
            netns: None,
            engine_networks: Vec::new(),
            resolv_conf: None,
            files: Default::default(),
            task_id,
            template: TaskTemplate {
                driver: flotilla_types::Driver::Docker,
                image: Some(self.image.clone()),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..TaskTemplate::default()
            },
            env,
            log_path: self.log_path(name),
        }
    }

    async fn start(&self, name: &str, command: &[&str]) -> (Handle, ExitFuture) {
        let started = self.driver.start(self.spec(name, command)).await.unwrap();
        (started.handle, started.exit)
    }

    /// IDs of this test's containers, running or not.
    async fn containers(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .driver
            .containers(Some(&self.node))
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for Test {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_NODE_ID}={}", self.node);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

/// `docker inspect` of one container, or `None` when it does not exist.
fn inspect(id: &str) -> Option<Value> {
    let out = Command::new("docker")
        .args(["inspect", "--type", "container", id])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let mut list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.pop()
}

fn running(id: &str) -> bool {
    inspect(id).is_some_and(|v| v["State"]["Running"] == Value::Bool(true))
}

/// Polls `cond` until it holds, failing the test after [`WAIT`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Probes until `want` holds (a server in the container may still be
/// starting), and returns the last result.
async fn probe_until(
    driver: &DockerDriver,
    handle: &Handle,
    test: &HealthTest,
    want: impl Fn(&Probe) -> bool,
) -> Probe {
    let deadline = Instant::now() + WAIT;
    loop {
        let probe = driver.probe(handle, test, Duration::from_secs(5)).await;
        if want(&probe) || Instant::now() >= deadline {
            return probe;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn id(handle: &Handle) -> &str {
    handle.id.as_deref().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_a_labelled_container() {
    let t = Test::new();
    let (handle, _exit) = t.start("web", &["sleep", "30"]).await;
    let info = inspect(id(&handle)).expect("the container exists");
    assert_eq!(info["State"]["Running"], Value::Bool(true));
    assert_eq!(
        handle.pid,
        info["State"]["Pid"].as_u64().map(|p| p as u32),
        "the handle has the main process"
    );
    let labels = &info["Config"]["Labels"];
    assert_eq!(labels[LABEL_TASK_ID], Value::from(t.task_id("web")));
    assert_eq!(labels["com.flotilla.service.id"], Value::from("svc1"));
    assert_eq!(labels[LABEL_SERVICE_NAME], Value::from("web"));
    assert_eq!(labels[LABEL_NODE_ID], Value::from(t.node.clone()));
    assert_eq!(
        info["Name"],
        Value::from(format!("/flotilla-web.1.{}", t.task_id("web")))
    );
    assert_eq!(info["Config"]["Cmd"], serde_json::json!(["sleep", "30"]));
    assert_eq!(
        info["HostConfig"]["RestartPolicy"]["Name"],
        Value::from("no")
    );
    let listed = t.driver.containers(Some(&t.node)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].task_id, t.task_id("web"));
    assert!(listed[0].running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_reported() {
    let t = Test::new();
    let (_, exit) = t.start("three", &["sh", "-c", "exit 3"]).await;
    assert_eq!(exit.await, Exit::Code(3));
    let (_, exit) = t.start("zero", &["true"]).await;
    assert_eq!(exit.await, Exit::Code(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_container_that_handles_sigterm_at_once() {
    let t = Test::new();
    // PID 1 of a container gets no default signal handling: a program that
    // wants SIGTERM to end it must say so.
    let (handle, mut exit) = t
        .start(
            "polite",
            &["sh", "-c", "trap 'exit 0' TERM; sleep 60 & wait"],
        )
        .await;
    let began = Instant::now();
    let ended = t
        .driver
        .stop(&handle, Duration::from_secs(20), &mut exit)
        .await
        .unwrap();
    assert_eq!(ended, Exit::Code(0));
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "took {:?}",
        began.elapsed()
    );
    assert!(!running(id(&handle)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_container_ignoring_sigterm_after_the_grace() {
    let t = Test::new();
    let (handle, mut exit) = t
        .start("stubborn", &["sh", "-c", "trap '' TERM; sleep 60"])
        .await;
    let began = Instant::now();
    let ended = t
        .driver
        .stop(&handle, Duration::from_millis(1500), &mut exit)
        .await
        .unwrap();
    let took = began.elapsed();
    assert_eq!(ended, Exit::Code(137), "killed by SIGKILL");
    // The grace is rounded up to whole seconds for the engine.
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_container() {
    let t = Test::new();
    let (handle, exit) = t.start("sig", &["sleep", "30"]).await;
    t.driver.signal(&handle, StopSignal::Kill).await.unwrap();
    assert_eq!(exit.await, Exit::Code(137));
    // A stopped container takes signals as a no-op.
    t.driver
        .signal(&handle, StopSignal::Terminate)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_leaves_no_container() {
    let t = Test::new();
    let (handle, mut exit) = t.start("gone", &["sleep", "30"]).await;
    assert_eq!(t.containers().await, vec![id(&handle).to_string()]);
    t.driver
        .stop(&handle, Duration::from_millis(100), &mut exit)
        .await
        .unwrap();
    t.driver.remove(&handle).await.unwrap();
    assert!(inspect(id(&handle)).is_none());
    assert!(t.containers().await.is_empty());
    // Removing twice is fine: the agent may retry.
    t.driver.remove(&handle).await.unwrap();
    // So is removing a running one (forcibly).
    let (handle, exit) = t.start("running", &["sleep", "30"]).await;
    t.driver.remove(&handle).await.unwrap();
    // The engine may drop the container before the wait answers, and then
    // how it ended is gone with it.
    let ended = exit.await;
    assert!(
        matches!(ended, Exit::Code(137) | Exit::Unknown),
        "{ended:?}"
    );
    assert!(t.containers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_driver_adopts_running_containers() {
    let t = Test::new();
    let (handle, _exit) = t.start("adopted", &["sleep", "30"]).await;
    let other = DockerDriver::from_env();
    let exit = other
        .adopt(handle.clone())
        .await
        .unwrap()
        .expect("a running container is adopted");
    other.signal(&handle, StopSignal::Kill).await.unwrap();
    assert_eq!(exit.await, Exit::Code(137));

    // Ended while nobody watched: not adopted, and removed.
    assert!(other.adopt(handle.clone()).await.unwrap().is_none());
    assert!(inspect(id(&handle)).is_none());

    // Removed: not adopted.
    let (handle, _exit) = t.start("removed", &["sleep", "30"]).await;
    other.remove(&handle).await.unwrap();
    assert!(other.adopt(handle.clone()).await.unwrap().is_none());
    // No container ID: nothing to adopt.
    assert!(other
        .adopt(Handle {
            pid: Some(1),
            start_time: None,
            id: None,
            netns: None,
            stop_signal: None,
        })
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopting_driver_resumes_the_logs() {
    let t = Test::new();
    // A container as a previous agent left it: labelled, its logs followed
    // by nobody.
    let log = t.log_path("talker");
    let out = Command::new("docker")
        .args(["run", "-d", "--label"])
        .arg(format!("{LABEL_NODE_ID}={}", t.node))
        .arg("--label")
        .arg(format!("{LABEL_TASK_ID}={}", t.task_id("talker")))
        .arg("--label")
        .arg(format!("{LABEL_LOG_PATH}={}", log.display()))
        .args([&t.image, "sh", "-c", "sleep 2; echo second; sleep 30"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let container = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let handle = Handle {
        pid: None,
        start_time: None,
        id: Some(container),
        netns: None,
        stop_signal: None,
    };
    let _exit = t.driver.adopt(handle).await.unwrap().unwrap();
    wait_for("the output after adoption", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("second"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_rejected_with_the_pull_error() {
    let t = Test::new();
    let mut spec = t.spec("nope", &["true"]);
    spec.template.image = Some("flotilla-test/nope:1".into());
    let err = t.driver.start(spec).await.unwrap_err().to_string();
    let prefix = "cannot pull image flotilla-test/nope:1: ";
    assert!(err.starts_with(prefix), "{err}");
    assert!(
        err.len() > prefix.len(),
        "the engine's reason follows: {err}"
    );
    assert!(t.containers().await.is_empty());

    let mut spec = t.spec("noimage", &["true"]);
    spec.template.image = None;
    let err = t.driver.start(spec).await.unwrap_err().to_string();
    assert_eq!(err, "a docker task needs an image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_is_rejected_and_leaves_no_container() {
    let t = Test::new();
    let err = t
        .driver
        .start(t.spec("noprog", &["nosuchprogram"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot start container flotilla-web.1."),
        "{err}"
    );
    assert!(err.contains("nosuchprogram"), "{err}");
    assert!(t.containers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_named() {
    let t = Test::new();
    let driver = DockerDriver::new("unix:///nonexistent.sock");
    let began = Instant::now();
    let err = driver
        .start(t.spec("x", &["true"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("docker engine not reachable at /nonexistent.sock: "),
        "{err}"
    );
    assert!(began.elapsed() < Duration::from_secs(10));
    let probe = driver
        .probe(
            &Handle {
                pid: None,
                start_time: None,
                id: Some("x".into()),
                netns: None,
                stop_signal: None,
            },
            &HealthTest::Tcp { port: 1 },
            Duration::from_secs(1),
        )
        .await;
    assert!(matches!(probe, Probe::Unhealthy(m) if m.starts_with("docker engine not reachable")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_shell_probes() {
    let t = Test::new();
    let (handle, _exit) = t.start("probed", &["sleep", "30"]).await;
    let d = &t.driver;
    let second = Duration::from_secs(5);
    let exec = |argv: &[&str]| HealthTest::Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(
        d.probe(&handle, &exec(&["true"]), second).await,
        Probe::Healthy
    );
    assert_eq!(
        d.probe(
            &handle,
            &exec(&["sh", "-c", "echo not ready; exit 2"]),
            second
        )
        .await,
        Probe::Unhealthy("exit code 2: not ready".into())
    );
    let shell = |c: &str| HealthTest::Shell {
        command: c.to_string(),
    };
    assert_eq!(
        d.probe(&handle, &shell("test -f /www/index.html"), second)
            .await,
        Probe::Healthy
    );
    assert_eq!(
        d.probe(&handle, &shell("exit 1"), second).await,
        Probe::Unhealthy("exit code 1".into())
    );
    let probe = d.probe(&handle, &exec(&["nosuchprogram"]), second).await;
    assert!(
        matches!(&probe, Probe::Unhealthy(m) if m.starts_with("exit code 12")),
        "{probe:?}"
    );
    assert_eq!(
        d.probe(&handle, &shell("sleep 5"), Duration::from_millis(300))
            .await,
        Probe::Unhealthy("timed out after 300ms".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_probes() {
    let t = Test::new();
    let (handle, _exit) = t
        .start("httpd", &["httpd", "-f", "-p", "8080", "-h", "/www"])
        .await;
    let d = &t.driver;
    let page = HealthTest::Http {
        port: 8080,
        path: "/index.html".into(),
    };
    assert_eq!(
        probe_until(d, &handle, &page, |p| *p == Probe::Healthy).await,
        Probe::Healthy
    );
    let missing = HealthTest::Http {
        port: 8080,
        path: "missing".into(),
    };
    assert_eq!(
        d.probe(&handle, &missing, Duration::from_secs(5)).await,
        Probe::Unhealthy("HTTP 404".into())
    );
    assert_eq!(
        d.probe(
            &handle,
            &HealthTest::Tcp { port: 8080 },
            Duration::from_secs(5)
        )
        .await,
        Probe::Healthy
    );
    let closed = d
        .probe(
            &handle,
            &HealthTest::Tcp { port: 8081 },
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(&closed, Probe::Unhealthy(m) if m.starts_with("cannot connect to ")),
        "{closed:?}"
    );
    let closed = d
        .probe(
            &handle,
            &HealthTest::Http {
                port: 8081,
                path: "/".into(),
            },
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(closed, Probe::Unhealthy(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_health_reads_the_images_healthcheck() {
    let mut t = Test::new();
    let (plain, _e1) = t.start("plain", &["sleep", "30"]).await;
    assert_eq!(t.driver.own_health(&plain).await.unwrap(), None);

    t.image = busybox_image(
        HEALTH_IMAGE,
        Some(r#"--interval=2s --timeout=1s --start-period=3s --retries=2 CMD ["test", "-d", "/www"]"#),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (handle, _e2) = t.start("checked", &["sleep", "30"]).await;
    assert_eq!(
        t.driver.own_health(&handle).await.unwrap(),
        Some(HealthCheck {
            test: HealthTest::Exec {
                argv: vec!["test".into(), "-d".into(), "/www".into()]
            },
            interval_ms: 2_000,
            timeout_ms: 1_000,
            retries: 2,
            start_period_ms: 3_000,
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_env_and_logs() {
    let t = Test::new();
    let mut spec = t.spec(
        "limited",
        &["sh", "-c", "echo \"hello $GREETING\"; echo oops >&2"],
    );
    spec.env.insert("GREETING".into(), "world".into());
    spec.template.resources.limits = Resources {
        nano_cpus: 500_000_000,
        memory_bytes: 64 * 1024 * 1024,
    };
    let started = t.driver.start(spec).await.unwrap();
    let info = inspect(id(&started.handle)).unwrap();
    assert_eq!(info["HostConfig"]["Memory"], Value::from(64 * 1024 * 1024));
    assert_eq!(info["HostConfig"]["NanoCpus"], Value::from(500_000_000));
    let env: Vec<&str> = info["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(env.contains(&"GREETING=world"), "{env:?}");
    assert!(env.contains(&format!("FLOTILLA_NODE_ID={}", t.node).as_str()));
    assert_eq!(started.exit.await, Exit::Code(0));
    let log = t.log_path("limited");
    wait_for("both streams in the log", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|s| s.contains("hello world\n") && s.contains("oops\n"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_stale_keeps_only_the_given_tasks() {
    let t = Test::new();
    let (kept, _e1) = t.start("kept", &["sleep", "30"]).await;
    let (stale, _e2) = t.start("stale", &["sleep", "30"]).await;
    let keep: HashSet<String> = [t.task_id("kept")].into();
    let removed = t.driver.remove_stale(&t.node, &keep).await.unwrap();
    assert_eq!(removed, vec![id(&stale).to_string()]);
    assert_eq!(t.containers().await, vec![id(&kept).to_string()]);
}

/// An agent with the process and docker drivers.
fn spawn_agent(t: &Test, docker: DockerDriver) -> Harness {
    let drivers = Drivers::new([
        Arc::new(ProcessDriver) as Arc<dyn Driver>,
        Arc::new(docker) as Arc<dyn Driver>,
    ]);
    Harness::spawn_with(
        &t.dir.path().join("agent"),
        &t.node,
        flotilla_agent::DEFAULT_LOG_CAP_BYTES,
        drivers,
    )
}

fn docker_task(t: &Test, name: &str, image: &str, command: &[&str]) -> flotilla_types::Task {
    let mut task = task(&t.task_id(name), command);
    task.spec.driver = flotilla_types::Driver::Docker;
    task.spec.image = Some(image.to_string());
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_and_stops_a_docker_task() {
    let t = Test::new();
    let mut h = spawn_agent(&t, DockerDriver::from_env());
    let web = docker_task(
        &t,
        "web",
        &t.image,
        &["sh", "-c", "trap 'exit 0' TERM; echo up; sleep 60 & wait"],
    );
    let id = web.id.clone();
    h.assign(vec![web.clone()]);
    h.wait_state(&id, TaskState::Running).await;
    let containers = t.driver.containers(Some(&t.node)).await.unwrap();
    assert_eq!(containers.len(), 1);
    assert!(containers[0].running);
    assert_eq!(containers[0].task_id, id);
    let log = flotilla_agent::task_log_path(&h.state_dir, &id);
    wait_for("the task's output in its log", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("up"))
    })
    .await;

    h.assign(vec![with_state(
        web,
        DesiredState::Shutdown,
        TaskState::Running,
    )]);
    let r = h.wait_state(&id, TaskState::Shutdown).await;
    assert_eq!(r.status.exit_code, Some(0));
    let deadline = Instant::now() + WAIT;
    while !t.containers().await.is_empty() {
        assert!(Instant::now() < deadline, "the container was not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_engine_docker_tasks_are_rejected_and_processes_run() {
    let t = Test::new();
    let mut h = spawn_agent(&t, DockerDriver::new("unix:///nonexistent.sock"));
    let boxed = docker_task(&t, "boxed", &t.image, &["sleep", "30"]);
    let plain = task(&t.task_id("plain"), &["sleep", "30"]);
    h.assign(vec![boxed.clone(), plain.clone()]);
    let r = h.wait_state(&boxed.id, TaskState::Rejected).await;
    let error = r.status.error.unwrap_or_default();
    assert!(
        error.starts_with("docker engine not reachable at /nonexistent.sock"),
        "{error}"
    );
    let r = h.wait_state(&plain.id, TaskState::Running).await;
    let pid = r.status.pid.unwrap();
    h.assign(vec![with_state(
        plain.clone(),
        DesiredState::Shutdown,
        TaskState::Running,
    )]);
    h.wait_state(&plain.id, TaskState::Shutdown).await;
    assert!(!common::alive(pid));
}
