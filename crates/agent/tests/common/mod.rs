//! Test harness: real processes in temporary state directories.
//!
//! Every test uses its own node ID, and every task process carries it in
//! `FLOTILLA_NODE_ID`; [`Fixture`]'s drop kills every process group that
//! carries it, so nothing outlives a test, failed or not.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::{
    Agent, AgentConfig, AgentError, Assignments, Driver, Drivers, ProcessDriver, TaskReport,
};
use flotilla_types::{DesiredState, Task, TaskState, TaskStatus, TaskTemplate};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A state directory and a node ID unique to one test.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub node_id: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            node_id: format!(
                "test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// Live processes started for this test's node.
    pub fn processes(&self) -> Vec<u32> {
        processes_with_env(&format!("FLOTILLA_NODE_ID={}", self.node_id))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pid in self.processes() {
            kill_group(pid, libc::SIGKILL);
            // SAFETY: kill(2) with a pid read from /proc; the worst case is
            // ESRCH.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// PIDs of live processes whose environment holds `entry` (`NAME=value`).
pub fn processes_with_env(entry: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == entry.as_bytes()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// The process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    flotilla_agent::procfs::read_stat(pid)
        .ok()
        .flatten()
        .is_some_and(|s| !s.has_ended())
}

pub fn kill_group(pid: u32, signal: i32) {
    if pid > 1 {
        // SAFETY: kill(2) on a process group of a test's task.
        unsafe { libc::kill(-(pid as libc::pid_t), signal) };
    }
}

pub fn environ(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// A task of service "web", desired running, stored as assigned.
pub fn task(id: &str, command: &[&str]) -> Task {
    Task {
        id: id.to_string(),
        service_id: "svc1".to_string(),
        service_name: "web".to_string(),
        slot: 1,
        node_id: Some("node".to_string()),
        desired_state: DesiredState::Running,
        status: TaskStatus::new(TaskState::Assigned, 0, "assigned"),
        spec: TaskTemplate {
            driver: Default::default(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            restart: Default::default(),
            stop_grace_period_ms: 1_000,
            constraints: Vec::new(),
            ..TaskTemplate::default()
        },
        service_version: 1,
        created_at: 0,
        created_index: 1,
        restart_history: Vec::new(),
        networks: Vec::new(),
    }
}

pub fn with_state(mut t: Task, desired: DesiredState, stored: TaskState) -> Task {
    t.desired_state = desired;
    t.status = TaskStatus::new(stored, 0, "");
    t
}

pub fn with_grace(mut t: Task, ms: u64) -> Task {
    t.spec.stop_grace_period_ms = ms;
    t
}

pub const SLEEP: &[&str] = &["sleep", "1000"];
pub const STUBBORN: &[&str] = &["sh", "-c", "trap '' TERM; sleep 1000"];

/// A running agent and both ends of its channels.
pub struct Harness {
    pub state_dir: PathBuf,
    pub assignments: watch::Sender<Arc<Assignments>>,
    pub reports: mpsc::UnboundedReceiver<Vec<TaskReport>>,
    /// Every report received so far, in order.
    pub seen: Vec<TaskReport>,
    pub shutdown: CancellationToken,
    pub join: Option<JoinHandle<Result<(), AgentError>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(join) = &self.join {
            join.abort();
        }
    }
}

impl Harness {
    /// Starts an agent on the current runtime.
    pub fn spawn(fx: &Fixture, log_cap_bytes: u64) -> Harness {
        Self::spawn_at(&fx.state_dir(), &fx.node_id, log_cap_bytes)
    }

    pub fn spawn_at(state_dir: &Path, node_id: &str, log_cap_bytes: u64) -> Harness {
        let drivers = Drivers::new([Arc::new(ProcessDriver) as Arc<dyn Driver>]);
        Self::spawn_with(state_dir, node_id, log_cap_bytes, drivers)
    }

    /// Starts an agent with these drivers.
    pub fn spawn_with(
        state_dir: &Path,
        node_id: &str,
        log_cap_bytes: u64,
        drivers: Drivers,
    ) -> Harness {
        let (assign_tx, assign_rx) = watch::channel(Arc::new(Assignments::default()));
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let mut config = AgentConfig::new(node_id, state_dir);
        config.log_cap_bytes = log_cap_bytes;
        let agent = Agent::new(config, drivers, assign_rx, report_tx).unwrap();
        let shutdown = CancellationToken::new();
        let join = tokio::spawn(agent.run(shutdown.clone()));
        Harness {
            state_dir: state_dir.to_path_buf(),
            assignments: assign_tx,
            reports: report_rx,
            seen: Vec::new(),
            shutdown,
            join: Some(join),
        }
    }

    /// Sends a ready assignment set whose known IDs are exactly its tasks.
    pub fn assign(&self, tasks: Vec<Task>) {
        let known = tasks.iter().map(|t| t.id.clone()).collect();
        self.assign_known(tasks, known);
    }

    pub fn assign_known(&self, tasks: Vec<Task>, known_task_ids: BTreeSet<String>) {
        self.assign_with_files(tasks, known_task_ids, Default::default());
    }

    /// Like [`Self::assign_known`], with the tasks' files.
    pub fn assign_with_files(
        &self,
        tasks: Vec<Task>,
        known_task_ids: BTreeSet<String>,
        files: std::collections::BTreeMap<String, Vec<flotilla_types::TaskFile>>,
    ) {
        self.assignments.send_replace(Arc::new(Assignments {
            tasks,
            known_task_ids,
            files,
            ready: true,
        }));
    }

    async fn receive_until(&mut self, deadline: Instant, what: &str) {
        match tokio::time::timeout_at(deadline, self.reports.recv()).await {
            Ok(Some(batch)) => {
                assert!(!batch.is_empty(), "empty report batch");
                self.seen.extend(batch);
            }
            Ok(None) => panic!("report channel closed while waiting for {what}"),
            Err(_) => panic!(
                "timed out waiting for {what}; reports seen: {:#?}",
                self.seen
            ),
        }
    }

    /// The first report (already seen or still to come) that matches.
    pub async fn wait_report(
        &mut self,
        what: &str,
        pred: impl Fn(&TaskReport) -> bool,
    ) -> TaskReport {
        self.wait_reports(what, 1, pred).await.remove(0)
    }

    /// Waits until `count` reports match, and returns them.
    pub async fn wait_reports(
        &mut self,
        what: &str,
        count: usize,
        pred: impl Fn(&TaskReport) -> bool,
    ) -> Vec<TaskReport> {
        let deadline = Instant::now() + WAIT;
        loop {
            let matching: Vec<TaskReport> = self.seen.iter().filter(|r| pred(r)).cloned().collect();
            if matching.len() >= count {
                return matching;
            }
            self.receive_until(deadline, what).await;
        }
    }

    /// Waits for the task's first report in `state`.
    pub async fn wait_state(&mut self, task_id: &str, state: TaskState) -> TaskReport {
        let what = format!("{task_id} {}", state.as_str());
        self.wait_report(&what, |r| r.task_id == task_id && r.status.state == state)
            .await
    }
}

/// Polls `cond` until it holds, failing the test after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn read_record(state_dir: &Path, task_id: &str) -> flotilla_agent::TaskRecord {
    let path = flotilla_agent::task_dir(state_dir, task_id).join("state.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A health check with a 2 s probe timeout.
pub fn health_check(
    test: flotilla_types::HealthTest,
    interval_ms: u64,
    retries: u32,
    start_period_ms: u64,
) -> flotilla_types::HealthCheck {
    flotilla_types::HealthCheck {
        test,
        interval_ms,
        timeout_ms: 2_000,
        retries,
        start_period_ms,
    }
}

pub fn with_health(mut t: Task, check: flotilla_types::HealthCheck) -> Task {
    t.spec.health = Some(check);
    t
}

/// A local TCP port that nothing listens on (right now).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
