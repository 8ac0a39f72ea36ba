//! The agent's control loop.
//!
//! One loop owns the agent's view of every task (the `entries` map) and is
//! the only one that decides: it reads assignments, starts and stops tasks,
//! batches reports and collects garbage. Each started or adopted task has a
//! supervisor (a tokio task in a `JoinSet`) that performs the driver calls
//! for that task, owns its record file while it lives, and sends its status
//! changes back to the loop. Supervisors never block each other, so many
//! tasks start and stop concurrently.
//!
//! Because the supervisors live in the loop's `JoinSet`, dropping the
//! [`Agent::run`] future (or the runtime) drops them but leaves their
//! processes running: that is what an agent crash looks like, and the next
//! agent adopts them.
//!
//! Health checks run in the supervisor, between waiting for the task's end
//! and for stop requests: a probe in flight is dropped (and with it the
//! probe's processes) when a stop arrives. A task with a check reports
//! `running` with its health, starting with `starting`; every change is
//! reported again as `running`, with the timestamp of when it started
//! running, so that the store keeps when the task became ready to judge
//! rolling updates. An unhealthy task is stopped and reported `failed`, as
//! Swarm does, so that the orchestrator replaces it. An adopted task gets
//! its check once the first assignments name it (records do not keep the
//! template), and keeps the health it had until its probes say otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_types::{
    DesiredState, Health, HealthCheck, HealthTest, Task, TaskState, TaskStatus, UnixMs,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::driver::{
    BoxFuture, Driver, DriverError, Drivers, Exit, ExitFuture, Handle, Probe, StartSpec, StopSignal,
};
use crate::health::{effective_check, timed_out, wants_own_check, HealthMonitor};
use crate::logs::{mark_growth, rotate_if_over_cap, task_log_path};
use crate::record::{
    load_records, remove_task_dir, task_dir, valid_task_id, write_record, TaskRecord,
};
use crate::taskns::Networking;

/// Per-task log cap when none is configured.
pub const DEFAULT_LOG_CAP_BYTES: u64 = 10 * 1024 * 1024;

/// Period of the housekeeping tick: log janitor and report re-sends.
const TICK: Duration = Duration::from_secs(1);
/// How long a task with published ports, or on networks, keeps running
/// after the cluster decided to stop it, before its SIGTERM: time for
/// every node's mesh and virtual addresses to take it out of rotation (a session long poll answers a change within
/// milliseconds; this covers a session that is reconnecting).
pub const MESH_DRAIN: Duration = Duration::from_millis(1000);

/// A status the store is behind on is re-sent at most this often, so that
/// the reports still in flight are not duplicated on every assignment.
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// Longest the agent waits at start for a driver to list stale workloads.
const STALE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Added to the largest grace period to bound a node shutdown.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

/// A driver's probe should end within its timeout; past this much more it
/// is abandoned and counts as timed out.
const PROBE_SLACK: Duration = Duration::from_secs(1);

const MSG_STARTED: &str = "started";
const MSG_STOPPED: &str = "stopped";
const MSG_NODE_SHUT_DOWN: &str = "node shut down";
const MSG_UNHEALTHY: &str = "unhealthy";
const ERR_UNHEALTHY: &str = "task unhealthy";
const UNHEALTHY_BEFORE_RESTART: &str = "the health check failed before the agent restarted";
const ERR_NO_RECORD: &str = "agent has no record of this task";
const ERR_ENDED_WHILE_DOWN: &str = "task process ended while the node daemon was down";
const ERR_ADOPTED_EXIT: &str =
    "task process exited (exit code unknown: adopted after an agent restart)";

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's ID; given to tasks as `FLOTILLA_NODE_ID`.
    pub node_id: String,
    /// The agent owns everything under it (`<data-dir>/agent`).
    pub state_dir: PathBuf,
    /// Per-task log size cap; 0 means no cap.
    pub log_cap_bytes: u64,
    /// On shutdown, leave the tasks running (their records stay, and the
    /// next agent adopts them, as after a crash) instead of stopping them.
    pub keep_tasks_on_stop: bool,
}

impl AgentConfig {
    /// A configuration with the default log cap.
    pub fn new(node_id: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            node_id: node_id.into(),
            state_dir: state_dir.into(),
            log_cap_bytes: DEFAULT_LOG_CAP_BYTES,
            keep_tasks_on_stop: false,
        }
    }
}

/// What the manager wants this node to run. Sent whole each time (not a
/// diff).
#[derive(Debug, Clone, Default)]
pub struct Assignments {
    /// Tasks placed on this node that are not terminal in the store (desired
    /// Running or Shutdown), with their stored status.
    pub tasks: Vec<Task>,
    /// IDs of every task of this node that the store still holds (including
    /// terminal history); task dirs of other IDs may be deleted.
    pub known_task_ids: BTreeSet<String>,
    /// The files of the tasks' secrets and configs, by task ID.
    pub files: BTreeMap<String, Vec<flotilla_types::TaskFile>>,
    /// false until the manager has sent the first real set (so the agent
    /// does not stop adopted tasks on an empty initial value).
    pub ready: bool,
}

/// One observed task status, for the manager to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskReport {
    pub task_id: String,
    pub status: TaskStatus,
}

/// Why the agent could not run.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot prepare the agent state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
}

/// The worker side of a node: runs the tasks assigned to it and reports
/// what becomes of them.
pub struct Agent {
    config: AgentConfig,
    drivers: Drivers,
    assignments: watch::Receiver<Arc<Assignments>>,
    reports: mpsc::UnboundedSender<Vec<TaskReport>>,
    recovered: Vec<TaskRecord>,
    orphan_dirs: BTreeSet<String>,
    networking: Option<Arc<Networking>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .field("drivers", &self.drivers.names())
            .field("recovered", &self.recovered.len())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Prepares the state directory and reads the records a previous agent
    /// left there; they are acted on when [`Agent::run`] starts.
    pub fn new(
        config: AgentConfig,
        drivers: Drivers,
        assignments: watch::Receiver<Arc<Assignments>>,
        reports: mpsc::UnboundedSender<Vec<TaskReport>>,
    ) -> Result<Agent, AgentError> {
        let tasks = crate::record::tasks_dir(&config.state_dir);
        std::fs::create_dir_all(&tasks).map_err(|source| AgentError::StateDir {
            path: tasks,
            source,
        })?;
        let loaded = load_records(&config.state_dir)?;
        Ok(Agent {
            config,
            drivers,
            assignments,
            reports,
            recovered: loaded.records,
            orphan_dirs: loaded.orphan_dirs,
            networking: None,
        })
    }

    /// Runs process tasks on networks in namespaces of their own, wired
    /// through `networking` (a node that wires networks; without it such a
    /// task runs in the node's namespace, as on a one-machine cluster).
    pub fn with_networking(mut self, networking: Networking) -> Agent {
        self.networking = Some(Arc::new(networking));
        self
    }

    /// Runs until `shutdown` is cancelled, then stops every task (bounded by
    /// the largest grace period plus two seconds) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let Agent {
            config,
            drivers,
            mut assignments,
            reports,
            recovered,
            orphan_dirs,
            networking,
        } = self;
        let keep_tasks_on_stop = config.keep_tasks_on_stop;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut lp = Loop {
            shared: Arc::new(Shared {
                drivers,
                state_dir: config.state_dir,
                node_id: config.node_id,
                hostname: node_hostname(),
                events: events_tx,
                ports: crate::ports::PortPool::default(),
                networking,
            }),
            log_cap: config.log_cap_bytes,
            entries: HashMap::new(),
            orphan_dirs,
            supervisors: JoinSet::new(),
            events: events_rx,
            reports,
            reports_closed: false,
            batch: Batch::default(),
            janitor: None,
            current: None,
        };
        lp.recover(recovered).await;
        lp.flush();
        lp.remove_stale().await;

        let initial = assignments.borrow_and_update().clone();
        lp.on_assignments(initial);
        lp.flush();

        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut assignments_open = true;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(update) = lp.events.recv() => {
                    lp.on_update(update);
                    lp.drain_events();
                }
                changed = assignments.changed(), if assignments_open => match changed {
                    Ok(()) => {
                        let current = assignments.borrow_and_update().clone();
                        lp.on_assignments(current);
                    }
                    Err(_) => {
                        warn!("the assignment channel closed; keeping the current tasks until shutdown");
                        assignments_open = false;
                    }
                },
                Some(joined) = lp.supervisors.join_next() => lp.on_joined(joined),
                _ = tick.tick() => lp.on_tick(),
            }
            lp.flush();
        }
        if keep_tasks_on_stop {
            lp.leave_running();
        } else {
            lp.shut_down().await;
        }
        Ok(())
    }
}

/// What supervisors share.
struct Shared {
    drivers: Drivers,
    state_dir: PathBuf,
    node_id: String,
    /// The machine's host name, as the node reports it: `{{.Node.Hostname}}`.
    hostname: String,
    events: mpsc::UnboundedSender<Update>,
    /// Node ports handed to this agent's live process tasks, so that two
    /// tasks started together never get the same one.
    ports: crate::ports::PortPool,
    /// The node's wiring, for process tasks on networks.
    networking: Option<Arc<Networking>>,
}

impl Shared {
    /// Removes the task's network namespace, if it has one.
    async fn detach(&self, task_id: &str, handle: Option<&Handle>) {
        if let (Some(net), Some(ns)) = (&self.networking, handle.and_then(|h| h.netns.as_ref())) {
            net.detach(task_id, &ns.name).await;
        }
    }

    fn persist(
        &self,
        task_id: &str,
        driver: &str,
        handle: Option<&Handle>,
        grace_ms: u64,
        status: &TaskStatus,
    ) {
        let record = TaskRecord {
            task_id: task_id.to_string(),
            driver: driver.to_string(),
            handle: handle.cloned(),
            stop_grace_period_ms: grace_ms,
            status: status.clone(),
        };
        // Small writes into the page cache; cheaper inline than a hop to the
        // blocking pool.
        if let Err(e) = write_record(&self.state_dir, &record) {
            warn!(task_id, error = %e, "cannot record a task status");
        }
    }

    fn send(&self, task_id: &str, status: TaskStatus, handle: Option<Handle>, done: bool) {
        // The loop only goes away when the agent itself stops.
        let _ = self.events.send(Update {
            task_id: task_id.to_string(),
            status,
            handle,
            done,
        });
    }
}

/// A status change sent by a supervisor.
struct Update {
    task_id: String,
    status: TaskStatus,
    handle: Option<Handle>,
    /// The supervisor has finished: it wrote its last record.
    done: bool,
}

#[derive(Debug, Clone)]
struct StopRequest {
    grace: Duration,
    message: &'static str,
}

/// The agent's view of one task.
struct Entry {
    status: TaskStatus,
    handle: Option<Handle>,
    /// The driver that runs the task, while one does.
    driver: Option<Arc<dyn Driver>>,
    grace_ms: u64,
    /// Present while a supervisor runs the task.
    control: Option<watch::Sender<Option<StopRequest>>>,
    /// When this task's status was last reported.
    last_sent: Option<Instant>,
    /// For an adopted task: gives its supervisor the template's health
    /// check once the assignments name the task.
    health_template: Option<oneshot::Sender<Option<HealthCheck>>>,
}

impl Entry {
    fn request_stop(&self, grace_ms: u64, message: &'static str) {
        if let Some(control) = &self.control {
            // The first request wins: a stop already under way keeps its
            // grace clock and its message.
            control.send_if_modified(|req| {
                if req.is_some() {
                    return false;
                }
                *req = Some(StopRequest {
                    grace: Duration::from_millis(grace_ms),
                    message,
                });
                true
            });
        }
    }
}

/// Reports gathered during one wake-up; only the latest status of a task is
/// kept.
#[derive(Default)]
struct Batch {
    reports: Vec<TaskReport>,
    index: HashMap<String, usize>,
}

impl Batch {
    fn push(&mut self, task_id: &str, status: TaskStatus) {
        match self.index.get(task_id) {
            Some(&i) => self.reports[i].status = status,
            None => {
                self.index.insert(task_id.to_string(), self.reports.len());
                self.reports.push(TaskReport {
                    task_id: task_id.to_string(),
                    status,
                });
            }
        }
    }

    fn take(&mut self) -> Vec<TaskReport> {
        self.index.clear();
        std::mem::take(&mut self.reports)
    }
}

struct Loop {
    shared: Arc<Shared>,
    log_cap: u64,
    entries: HashMap<String, Entry>,
    /// Task directories without a usable record, found at start.
    orphan_dirs: BTreeSet<String>,
    supervisors: JoinSet<()>,
    events: mpsc::UnboundedReceiver<Update>,
    reports: mpsc::UnboundedSender<Vec<TaskReport>>,
    reports_closed: bool,
    batch: Batch,
    janitor: Option<JoinHandle<()>>,
    /// The last ready assignments, re-examined on every tick.
    current: Option<Arc<Assignments>>,
}

impl Loop {
    /// Acts on the records of a previous agent: adopts what still runs and
    /// fails what ended unseen.
    async fn recover(&mut self, records: Vec<TaskRecord>) {
        for record in records {
            let TaskRecord {
                task_id,
                driver,
                handle,
                stop_grace_period_ms: grace_ms,
                status,
            } = record;
            if status.state.is_terminal() {
                self.entries.insert(
                    task_id,
                    Entry {
                        status,
                        handle,
                        driver: None,
                        grace_ms,
                        control: None,
                        last_sent: None,
                        health_template: None,
                    },
                );
                continue;
            }
            let runner = self.shared.drivers.get(&driver);
            let exit = match (&handle, &runner) {
                (Some(h), Some(runner)) => match runner.adopt(h.clone()).await {
                    Ok(exit) => exit,
                    Err(e) => {
                        warn!(%task_id, error = %e, "cannot check a task left by the previous agent");
                        None
                    }
                },
                _ => None,
            };
            match (exit, handle, runner) {
                (Some(exit), Some(handle), Some(runner)) => {
                    info!(%task_id, pid = ?handle.pid, "adopted a running task");
                    if runner.name() == "process" {
                        self.shared.ports.hold(&task_id, &status.ports);
                    }
                    if let (Some(net), Some(ns)) = (&self.shared.networking, &handle.netns) {
                        net.adopt(
                            &task_id,
                            &ns.name,
                            ns.addr,
                            ns.networks.clone(),
                            &status.ports,
                        );
                    }
                    self.supervise(
                        task_id,
                        grace_ms,
                        status.clone(),
                        Launch::Adopted {
                            driver: runner,
                            handle: handle.clone(),
                            exit,
                            status: Box::new(status),
                        },
                        Some(handle),
                    );
                }
                (_, handle, _) => {
                    let mut failed = TaskStatus::new(TaskState::Failed, now_ms(), "failed");
                    failed.error = Some(ERR_ENDED_WHILE_DOWN.to_string());
                    warn!(%task_id, "{ERR_ENDED_WHILE_DOWN}");
                    self.shared
                        .persist(&task_id, &driver, handle.as_ref(), grace_ms, &failed);
                    self.shared.detach(&task_id, handle.as_ref()).await;
                    self.record_status(&task_id, failed, handle, grace_ms);
                }
            }
        }
    }

    /// Removes what drivers run for tasks the agent does not know (a
    /// container created just before a crash). A driver that cannot check
    /// (no Docker engine) is skipped with a warning.
    async fn remove_stale(&mut self) {
        let keep: HashSet<String> = self.entries.keys().cloned().collect();
        for name in self.shared.drivers.names() {
            let Some(driver) = self.shared.drivers.get(name) else {
                continue;
            };
            let check = driver.remove_stale(&self.shared.node_id, &keep);
            match tokio::time::timeout(STALE_CHECK_TIMEOUT, check).await {
                Ok(Ok(removed)) if !removed.is_empty() => {
                    info!(
                        driver = name,
                        count = removed.len(),
                        "removed workloads of no known task"
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!(driver = name, error = %e, "cannot look for stale workloads"),
                Err(_) => warn!(
                    driver = name,
                    "gave up looking for stale workloads after {STALE_CHECK_TIMEOUT:?}"
                ),
            }
        }
    }

    fn on_assignments(&mut self, assignments: Arc<Assignments>) {
        if !assignments.ready {
            return;
        }
        self.reconcile(&assignments);
        self.current = Some(assignments);
    }

    fn on_tick(&mut self) {
        if let Some(current) = self.current.clone() {
            self.reconcile(&current);
        }
        self.run_janitor();
    }

    fn reconcile(&mut self, assignments: &Assignments) {
        let now = Instant::now();
        let mut listed = HashSet::with_capacity(assignments.tasks.len());
        for task in &assignments.tasks {
            listed.insert(task.id.as_str());
            if !valid_task_id(&task.id) {
                debug!(task_id = %task.id, "ignoring a task with an invalid id");
                continue;
            }
            let Some(entry) = self.entries.get_mut(&task.id) else {
                let files = assignments.files.get(&task.id).cloned().unwrap_or_default();
                self.first_sight(task, files);
                continue;
            };
            if task.desired_state == DesiredState::Shutdown {
                entry.request_stop(task.spec.stop_grace_period_ms, MSG_STOPPED);
            }
            if let Some(template) = entry.health_template.take() {
                // A supervisor that already ended no longer needs it.
                let _ = template.send(task.spec.health.clone());
            }
            // Reports get lost (a leader change); the store showing an
            // older state than ours, or another health in the same state,
            // is the sign.
            let resend_due = entry
                .last_sent
                .is_none_or(|at| now.duration_since(at) >= RESEND_AFTER);
            let behind = entry.status.state > task.status.state
                || (entry.status.state == task.status.state
                    && entry.status.health != task.status.health);
            if behind && resend_due {
                entry.last_sent = Some(now);
                self.batch.push(&task.id, entry.status.clone());
            }
        }
        for entry in self
            .entries
            .iter()
            .filter(|(id, _)| !listed.contains(id.as_str()))
            .map(|(_, entry)| entry)
        {
            entry.request_stop(entry.grace_ms, MSG_STOPPED);
        }
        self.collect_garbage(&listed, &assignments.known_task_ids);
    }

    /// A task the agent has no entry for.
    fn first_sight(&mut self, task: &Task, files: Vec<flotilla_types::TaskFile>) {
        let grace_ms = task.spec.stop_grace_period_ms;
        let stored = task.status.state;
        if task.desired_state == DesiredState::Running && stored == TaskState::Assigned {
            self.start(task, files);
        } else if stored > TaskState::Assigned {
            // Our state dir was lost: whatever ran is not ours to guess at.
            let mut failed = TaskStatus::new(TaskState::Failed, now_ms(), "failed");
            failed.error = Some(ERR_NO_RECORD.to_string());
            warn!(task_id = %task.id, state = stored.as_str(), "{ERR_NO_RECORD}");
            self.shared
                .persist(&task.id, task.spec.driver.as_str(), None, grace_ms, &failed);
            self.record_status(&task.id, failed, None, grace_ms);
        } else if task.desired_state == DesiredState::Shutdown && stored == TaskState::Assigned {
            let status = TaskStatus::new(
                TaskState::Shutdown,
                now_ms(),
                "not started: desired state is shutdown",
            );
            self.shared
                .persist(&task.id, task.spec.driver.as_str(), None, grace_ms, &status);
            self.record_status(&task.id, status, None, grace_ms);
        }
    }

    fn start(&mut self, task: &Task, files: Vec<flotilla_types::TaskFile>) {
        info!(task_id = %task.id, service = %task.service_name, slot = task.slot, "starting task");
        let status = TaskStatus::new(TaskState::Accepted, now_ms(), "accepted");
        self.supervise(
            task.id.clone(),
            task.spec.stop_grace_period_ms,
            status,
            Launch::Fresh(Box::new((task.clone(), files))),
            None,
        );
    }

    fn supervise(
        &mut self,
        task_id: String,
        grace_ms: u64,
        status: TaskStatus,
        launch: Launch,
        handle: Option<Handle>,
    ) {
        let (control, control_rx) = watch::channel(None);
        let driver = match &launch {
            Launch::Fresh(fresh) => self.shared.drivers.get(fresh.0.spec.driver.as_str()),
            Launch::Adopted { driver, .. } => Some(driver.clone()),
        };
        let (health_template, template_rx) = match &launch {
            Launch::Fresh(_) => (None, None),
            Launch::Adopted { .. } => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
        };
        self.entries.insert(
            task_id.clone(),
            Entry {
                status,
                handle,
                driver,
                grace_ms,
                control: Some(control),
                // Counts as sent so that a start in progress is not reported
                // as "accepted" on the very next assignment.
                last_sent: Some(Instant::now()),
                health_template,
            },
        );
        self.supervisors.spawn(supervise(
            self.shared.clone(),
            task_id,
            grace_ms,
            launch,
            control_rx,
            template_rx,
        ));
    }

    /// Remembers and reports a status decided by the loop itself (no
    /// supervisor runs the task).
    fn record_status(
        &mut self,
        task_id: &str,
        status: TaskStatus,
        handle: Option<Handle>,
        grace_ms: u64,
    ) {
        self.batch.push(task_id, status.clone());
        self.entries.insert(
            task_id.to_string(),
            Entry {
                status,
                handle,
                driver: None,
                grace_ms,
                control: None,
                last_sent: Some(Instant::now()),
                health_template: None,
            },
        );
    }

    fn on_update(&mut self, update: Update) {
        let Update {
            task_id,
            status,
            handle,
            done,
        } = update;
        self.batch.push(&task_id, status.clone());
        let Some(entry) = self.entries.get_mut(&task_id) else {
            return;
        };
        entry.status = status;
        entry.last_sent = Some(Instant::now());
        if handle.is_some() {
            entry.handle = handle;
        }
        if done {
            entry.control = None;
            entry.health_template = None;
        }
    }

    fn drain_events(&mut self) {
        while let Ok(update) = self.events.try_recv() {
            self.on_update(update);
        }
    }

    fn on_joined(&mut self, joined: Result<(), tokio::task::JoinError>) {
        let Err(e) = joined else {
            return;
        };
        warn!(error = %e, "a task supervisor failed");
        // Its last updates were sent before it ended.
        self.drain_events();
        // A supervisor that died without saying so has dropped its control
        // receiver; its task is no longer watched.
        for entry in self.entries.values_mut() {
            if entry.control.as_ref().is_some_and(|c| c.is_closed()) {
                entry.control = None;
            }
        }
    }

    fn collect_garbage(&mut self, listed: &HashSet<&str>, known: &BTreeSet<String>) {
        let forgotten = |id: &String| !known.contains(id) && !listed.contains(id.as_str());
        let mut doomed: Vec<String> = self
            .entries
            .iter()
            .filter(|(id, entry)| entry.control.is_none() && forgotten(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &doomed {
            self.entries.remove(id);
        }
        let orphans: Vec<String> = self
            .orphan_dirs
            .iter()
            .filter(|id| forgotten(id))
            .cloned()
            .collect();
        for id in &orphans {
            self.orphan_dirs.remove(id);
        }
        doomed.extend(orphans);
        if doomed.is_empty() {
            return;
        }
        debug!(
            count = doomed.len(),
            "deleting the directories of forgotten tasks"
        );
        let state_dir = self.shared.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            for id in doomed {
                if let Err(e) = remove_task_dir(&state_dir, &id) {
                    warn!(task_id = %id, error = %e, "cannot delete a task directory");
                }
            }
        });
    }

    /// Once a tick, for every running task: marks how far its log has
    /// grown (the lines' times, see [`crate::logs`]) and applies the cap.
    fn run_janitor(&mut self) {
        if self.janitor.as_ref().is_some_and(|j| !j.is_finished()) {
            return;
        }
        let logs: Vec<PathBuf> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.control.is_some())
            .map(|(id, _)| task_log_path(&self.shared.state_dir, id))
            .collect();
        let cap = self.log_cap;
        self.janitor = Some(tokio::task::spawn_blocking(move || {
            for log in logs {
                if let Err(e) = mark_growth(&log) {
                    warn!(error = %e, "log janitor");
                }
                match rotate_if_over_cap(&log, cap) {
                    Ok(true) => debug!(path = %log.display(), "rotated a task log"),
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "log janitor"),
                }
            }
        }));
    }

    fn flush(&mut self) {
        let batch = self.batch.take();
        if batch.is_empty() {
            return;
        }
        if self.reports.send(batch).is_err() && !self.reports_closed {
            self.reports_closed = true;
            warn!("the report channel is closed; task statuses are only recorded locally");
        }
    }

    /// Leaves every task running and its record in place, for the next
    /// agent to adopt (`--keep-tasks-on-stop`): the supervisors are dropped,
    /// which never kills a task (`kill_on_drop(false)`).
    fn leave_running(&mut self) {
        let running = self
            .entries
            .values()
            .filter(|e| e.control.is_some())
            .count();
        info!(
            tasks = running,
            "node stopping: leaving its tasks running for the next start to adopt"
        );
        self.supervisors.abort_all();
        self.flush();
        if let Some(janitor) = self.janitor.take() {
            janitor.abort();
        }
    }

    /// Stops every task concurrently and waits for them, at most the largest
    /// grace period plus a little.
    async fn shut_down(&mut self) {
        let mut longest = 0;
        for entry in self.entries.values().filter(|e| e.control.is_some()) {
            longest = longest.max(entry.grace_ms);
            entry.request_stop(entry.grace_ms, MSG_NODE_SHUT_DOWN);
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(longest) + SHUTDOWN_SLACK;
        info!(grace_ms = longest, "node shutting down: stopping all tasks");
        while self.entries.values().any(|e| e.control.is_some()) {
            tokio::select! {
                Some(update) = self.events.recv() => {
                    self.on_update(update);
                    self.drain_events();
                }
                Some(joined) = self.supervisors.join_next() => self.on_joined(joined),
                () = tokio::time::sleep_until(deadline) => break,
            }
            self.flush();
        }
        self.drain_events();
        let stuck: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.control.is_some())
            .collect();
        for (task_id, entry) in stuck {
            warn!(%task_id, "task did not stop in time; killing it and leaving its record for the next agent");
            if let (Some(handle), Some(driver)) = (&entry.handle, &entry.driver) {
                if let Err(e) = driver.signal(handle, StopSignal::Kill).await {
                    warn!(%task_id, error = %e, "cannot kill a task");
                }
            }
        }
        self.supervisors.abort_all();
        self.flush();
        if let Some(janitor) = self.janitor.take() {
            janitor.abort();
        }
    }
}

/// How a supervisor gets its workload.
enum Launch {
    /// A task to start, with its files.
    Fresh(Box<(Task, Vec<flotilla_types::TaskFile>)>),
    Adopted {
        driver: Arc<dyn Driver>,
        handle: Handle,
        exit: ExitFuture,
        /// The status its record holds (running, maybe with a health).
        status: Box<TaskStatus>,
    },
}

enum Outcome {
    Exited(Exit),
    Stop(StopRequest),
    /// The health check found the task unhealthy; what the last failed
    /// probe saw.
    Unhealthy(String),
}

/// A task that runs, as [`start_task`] leaves it.
struct Running {
    driver: Arc<dyn Driver>,
    handle: Handle,
    exit: ExitFuture,
    /// The `running` status as reported.
    status: TaskStatus,
    check: Option<HealthCheck>,
}

/// The health check of a running task, as its supervisor runs it.
struct Checking {
    test: HealthTest,
    monitor: HealthMonitor,
    /// The probe in flight.
    probe: Option<BoxFuture<'static, Probe>>,
}

impl Checking {
    fn new(check: HealthCheck, started_at: Instant, resumed: Option<Health>) -> Self {
        let monitor = HealthMonitor::new(&check, started_at);
        Checking {
            test: check.test,
            monitor: match resumed {
                Some(health) => monitor.resumed(health),
                None => monitor,
            },
            probe: None,
        }
    }

    /// When the next probe starts, unless one is in flight.
    fn due(&self) -> Option<Instant> {
        self.probe.is_none().then(|| self.monitor.next_probe())
    }

    fn start_probe(&mut self, driver: &Arc<dyn Driver>, handle: &Handle) {
        let (driver, handle, test) = (driver.clone(), handle.clone(), self.test.clone());
        let timeout = self.monitor.timeout();
        self.probe = Some(Box::pin(async move {
            // The driver bounds its probe by the timeout; this bounds a
            // driver that does not.
            match tokio::time::timeout(timeout + PROBE_SLACK, driver.probe(&handle, &test, timeout))
                .await
            {
                Ok(probe) => probe,
                Err(_) => Probe::Unhealthy(timed_out(timeout)),
            }
        }));
    }
}

/// The result of the probe in flight; never resolves without one.
async fn probe_result(checking: &mut Option<Checking>) -> Probe {
    match checking.as_mut().and_then(|c| c.probe.as_mut()) {
        Some(probe) => probe.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever without it.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The template's health check, once the loop sends it; never resolves
/// without a receiver.
async fn template_check(
    rx: &mut Option<oneshot::Receiver<Option<HealthCheck>>>,
) -> Result<Option<HealthCheck>, oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// The check a task runs: its template's, or what the workload brings.
async fn resolve_check(
    task_id: &str,
    driver: &dyn Driver,
    handle: &Handle,
    template: Option<&HealthCheck>,
    ports: &[flotilla_types::TaskPort],
) -> Option<HealthCheck> {
    let own = if wants_own_check(template) {
        match driver.own_health(handle).await {
            Ok(own) => own,
            Err(e) => {
                warn!(task_id, error = %e, "cannot read the workload's own health check; running without");
                None
            }
        }
    } else {
        None
    };
    let check = effective_check(template, own)?;
    // A process listens on the node port it was given for a target port,
    // so a check of the target port probes that one; a container keeps
    // its own ports.
    Some(if driver.name() == "process" && handle.netns.is_none() {
        crate::ports::probe_node_port(check, ports)
    } else {
        check
    })
}

/// Runs one task from start (or adoption) to its end, recording each status
/// before reporting it.
async fn supervise(
    shared: Arc<Shared>,
    task_id: String,
    grace_ms: u64,
    launch: Launch,
    mut control: watch::Receiver<Option<StopRequest>>,
    mut template: Option<oneshot::Receiver<Option<HealthCheck>>>,
) {
    let (driver, handle, mut exit, adopted, mut running, mut checking) = match launch {
        Launch::Fresh(fresh) => match start_task(&shared, &fresh.0, &fresh.1).await {
            Ok(r) => {
                let checking = r.check.map(|c| Checking::new(c, Instant::now(), None));
                (r.driver, r.handle, r.exit, false, r.status, checking)
            }
            Err(e) => {
                warn!(%task_id, error = %e, "task rejected");
                remove_files(&shared.state_dir, &task_id);
                let mut status = TaskStatus::new(TaskState::Rejected, now_ms(), "rejected");
                status.error = Some(e.to_string());
                shared.persist(
                    &task_id,
                    fresh.0.spec.driver.as_str(),
                    None,
                    grace_ms,
                    &status,
                );
                shared.send(&task_id, status, None, true);
                return;
            }
        },
        Launch::Adopted {
            driver,
            handle,
            exit,
            status,
        } => (driver, handle, exit, true, *status, None),
    };
    let report_health = |running: &mut TaskStatus, health: Health| {
        info!(%task_id, health = health.as_str(), "task health changed");
        running.health = Some(health);
        shared.persist(&task_id, driver.name(), Some(&handle), grace_ms, running);
        shared.send(&task_id, running.clone(), None, false);
    };

    let mut control_open = true;
    let outcome = loop {
        let requested = control.borrow_and_update().clone();
        if let Some(req) = requested {
            break Outcome::Stop(req);
        }
        if let Some(c) = checking.as_ref() {
            if c.monitor.health() == Health::Unhealthy {
                let output = c.monitor.last_failure().unwrap_or(UNHEALTHY_BEFORE_RESTART);
                break Outcome::Unhealthy(output.to_string());
            }
        }
        let due = checking.as_ref().and_then(Checking::due);
        tokio::select! {
            ended = &mut exit => break Outcome::Exited(ended),
            changed = control.changed(), if control_open => {
                // Without a loop to give orders, only the task's own end
                // remains to wait for.
                control_open = changed.is_ok();
            }
            got = template_check(&mut template) => {
                template = None;
                let Ok(check) = got else { continue };
                let resolved = resolve_check(
                    &task_id,
                    driver.as_ref(),
                    &handle,
                    check.as_ref(),
                    &running.ports,
                )
                .await;
                let Some(check) = resolved else { continue };
                // The start period counts from when the task started, not
                // from when this agent adopted it.
                let ran_ms = now_ms().saturating_sub(running.timestamp);
                let now = Instant::now();
                let started_at = now.checked_sub(Duration::from_millis(ran_ms)).unwrap_or(now);
                let c = Checking::new(check, started_at, running.health);
                if running.health != Some(c.monitor.health()) {
                    report_health(&mut running, c.monitor.health());
                }
                checking = Some(c);
            }
            () = sleep_until(due) => {
                if let Some(c) = checking.as_mut() {
                    c.start_probe(&driver, &handle);
                }
            }
            result = probe_result(&mut checking) => {
                if let Some(c) = checking.as_mut() {
                    c.probe = None;
                    if let Probe::Unhealthy(output) = &result {
                        debug!(%task_id, %output, "health probe failed");
                    }
                    if let Some(health) = c.monitor.feed(result, Instant::now()) {
                        report_health(&mut running, health);
                    }
                }
            }
        }
    };
    // A probe still in flight is abandoned with its processes.
    drop(checking);

    let status = match outcome {
        Outcome::Exited(ended) => exit_status(ended, adopted),
        Outcome::Stop(req) => {
            // Out of the mesh's rotation first: the store already took it
            // out, and every node's mesh stops sending it new connections
            // once its session brings the table; SIGTERM only after that,
            // so that no connection reaches a task that is going away.
            // The same for a task on networks: the virtual addresses of
            // its service stop sending to it once the nodes have the
            // network table without it.
            let drained = if running.ports.is_empty() && handle.netns.is_none() {
                None
            } else {
                debug!(%task_id, drain_ms = MESH_DRAIN.as_millis() as u64, "leaving the mesh before the stop");
                tokio::time::timeout(MESH_DRAIN, &mut exit).await.ok()
            };
            info!(%task_id, grace_ms = req.grace.as_millis() as u64, "stopping task");
            let ended = match drained {
                Some(ended) => ended,
                None => stop(&task_id, driver.as_ref(), &handle, req.grace, &mut exit).await,
            };
            let mut status = TaskStatus::new(TaskState::Shutdown, now_ms(), req.message);
            status.exit_code = ended.code();
            status
        }
        Outcome::Unhealthy(output) => {
            warn!(%task_id, %output, grace_ms, "task unhealthy: stopping it");
            let grace = Duration::from_millis(grace_ms);
            let ended = stop(&task_id, driver.as_ref(), &handle, grace, &mut exit).await;
            let mut status = TaskStatus::new(TaskState::Failed, now_ms(), MSG_UNHEALTHY);
            status.error = Some(format!("{ERR_UNHEALTHY}: {output}"));
            status.exit_code = ended.code();
            status.health = Some(Health::Unhealthy);
            status
        }
    };
    info!(%task_id, state = status.state.as_str(), exit_code = ?status.exit_code, "task ended");
    shared.persist(&task_id, driver.name(), Some(&handle), grace_ms, &status);
    if let Err(e) = driver.remove(&handle).await {
        warn!(%task_id, error = %e, "cannot remove what the task left");
    }
    shared.detach(&task_id, Some(&handle)).await;
    shared.ports.release(&task_id);
    remove_files(&shared.state_dir, &task_id);
    shared.send(&task_id, status, None, true);
}

/// Stops a task through its driver and tells how it ended.
async fn stop(
    task_id: &str,
    driver: &dyn Driver,
    handle: &Handle,
    grace: Duration,
    exit: &mut ExitFuture,
) -> Exit {
    match driver.stop(handle, grace, exit).await {
        Ok(ended) => ended,
        Err(e) => {
            warn!(task_id, error = %e, "cannot stop task; waiting for it to end");
            exit.await
        }
    }
}

/// Writes a task's secrets and configs (to memory) before it starts.
fn write_files(
    shared: &Shared,
    task: &Task,
    files: &[flotilla_types::TaskFile],
) -> Result<crate::files::TaskFiles, DriverError> {
    let wanted = task.spec.secrets.len() + task.spec.configs.len();
    if wanted == 0 {
        return Ok(Default::default());
    }
    if files.len() != wanted {
        return Err(DriverError::Other(format!(
            "{} of the task's {wanted} secrets and configs reached this node",
            files.len()
        )));
    }
    let root =
        crate::files::root_for(&shared.state_dir).map_err(|e| DriverError::Other(e.to_string()))?;
    // SAFETY: geteuid has no preconditions.
    let chown = unsafe { libc::geteuid() } == 0;
    crate::files::write(&root, &task.id, files, chown)
        .map_err(|e| DriverError::Other(e.to_string()))
}

/// Removes a task's secrets and configs once it ended.
fn remove_files(state_dir: &std::path::Path, task_id: &str) {
    if let Ok(root) = crate::files::root_for(state_dir) {
        if let Err(e) = crate::files::remove(&root, task_id) {
            warn!(%task_id, error = %e, "cannot remove a task's secrets and configs");
        }
    }
}

/// Starts a fresh task and records it as running before it is reported.
async fn start_task(
    shared: &Shared,
    task: &Task,
    files: &[flotilla_types::TaskFile],
) -> Result<Running, DriverError> {
    let expanded =
        expand_templates(task, &shared.node_id, &shared.hostname).map_err(DriverError::Other)?;
    let task = &expanded;
    let driver = shared
        .drivers
        .get(task.spec.driver.as_str())
        .ok_or_else(|| DriverError::NoDriver(task.spec.driver.as_str().to_string()))?;
    let dir = task_dir(&shared.state_dir, &task.id);
    std::fs::create_dir_all(&dir).map_err(|source| DriverError::Prepare {
        path: dir.clone(),
        source,
    })?;
    let process = driver.name() == "process";
    let files = expand_files(
        task,
        &task.spec.env,
        files,
        &shared.node_id,
        &shared.hostname,
    )
    .map_err(DriverError::Other)?;
    let task_files = write_files(shared, task, &files)?;
    let ports = if process {
        shared.ports.take(&task.id, &task.spec.ports)?
    } else {
        crate::ports::engine_chooses(&task.spec.ports)
    };
    let networking = shared
        .networking
        .as_ref()
        .filter(|_| process && !task.networks.is_empty());
    let netns = match networking {
        Some(net) => match net.attach(task, &dir, &ports).await {
            Ok(ns) => Some(ns),
            Err(e) => {
                shared.ports.release(&task.id);
                return Err(DriverError::Other(e.to_string()));
            }
        },
        None => None,
    };
    // A container joins engine networks on the node's bridges, which the
    // wiring loop makes (and holds) first.
    let engine = shared
        .networking
        .as_ref()
        .filter(|_| !process && !task.networks.is_empty());
    let (engine_networks, resolv_conf) = match engine {
        Some(net) => match net.hold(task, &dir).await {
            Ok((networks, resolv)) => (networks, Some(resolv)),
            Err(e) => {
                net.detach(&task.id, &crate::taskns::netns_name(&task.id))
                    .await;
                return Err(DriverError::Other(e.to_string()));
            }
        },
        None => (Vec::new(), None),
    };
    let mut env = task_env(task, &shared.node_id);
    if process {
        env.extend(task_files.env());
    }
    if netns.is_some() {
        // In its own namespace a task listens on its target ports, as a
        // container does; the node ports are forwarded there.
        let own: Vec<flotilla_types::TaskPort> = ports
            .iter()
            .map(|p| flotilla_types::TaskPort {
                host_port: p.target,
                ..*p
            })
            .collect();
        crate::ports::add_env(&mut env, &own);
    } else if process {
        crate::ports::add_env(&mut env, &ports);
    }
    let spec = StartSpec {
        task_id: task.id.clone(),
        template: task.spec.clone(),
        env,
        log_path: task_log_path(&shared.state_dir, &task.id),
        ports,
        netns: netns.clone(),
        engine_networks,
        resolv_conf,
        files: task_files,
    };
    let started = match driver.start(spec).await {
        Ok(started) => started,
        Err(e) => {
            shared.ports.release(&task.id);
            if let (Some(net), Some(ns)) = (networking, &netns) {
                net.detach(&task.id, &ns.name).await;
            }
            if let Some(net) = engine {
                net.detach(&task.id, &crate::taskns::netns_name(&task.id))
                    .await;
            }
            return Err(e);
        }
    };
    let (mut handle, mut exit, ports) = (started.handle, started.exit, started.ports);
    if let Some(net) = engine {
        // The container's own namespace gets the virtual addresses of its
        // networks; a container that cannot have them does not run.
        let entered = match handle.pid {
            Some(pid) => net.enter(task, pid).await,
            None => Err(crate::taskns::NetnsError::Attach(
                "the engine gave no pid for the container".into(),
            )),
        };
        match entered {
            Ok(ns) => handle.netns = Some(Box::new(ns)),
            Err(e) => {
                let _ = driver.signal(&handle, StopSignal::Kill).await;
                (&mut exit).await;
                let _ = driver.remove(&handle).await;
                net.detach(&task.id, &crate::taskns::netns_name(&task.id))
                    .await;
                return Err(DriverError::Other(e.to_string()));
            }
        }
    }
    let check = resolve_check(
        &task.id,
        driver.as_ref(),
        &handle,
        task.spec.health.as_ref(),
        &ports,
    )
    .await;
    let grace_ms = task.spec.stop_grace_period_ms;
    let mut status = TaskStatus::new(TaskState::Running, now_ms(), MSG_STARTED);
    status.pid = handle.pid;
    status.container_id = handle.id.clone();
    status.ports = ports;
    if check.is_some() {
        status.health = Some(Health::Starting);
    }
    let record = TaskRecord {
        task_id: task.id.clone(),
        driver: driver.name().to_string(),
        handle: Some(handle.clone()),
        stop_grace_period_ms: grace_ms,
        status: status.clone(),
    };
    // An unrecorded task could be neither adopted nor stopped after an
    // agent crash: better not to run it at all.
    if let Err(e) = write_record(&shared.state_dir, &record) {
        let _ = driver.signal(&handle, StopSignal::Kill).await;
        exit.await;
        let _ = driver.remove(&handle).await;
        shared.detach(&task.id, Some(&handle)).await;
        shared.ports.release(&task.id);
        return Err(DriverError::Other(e.to_string()));
    }
    info!(task_id = %task.id, pid = ?handle.pid, health_check = check.is_some(), "task running");
    shared.send(&task.id, status.clone(), Some(handle.clone()), false);
    Ok(Running {
        driver,
        handle,
        exit,
        status,
        check,
    })
}

/// The task with the templates of its template expanded on this node, as
/// Swarm expands them when a task starts: the host name, the values of the
/// environment, the sources and targets of the mounts.
fn expand_templates(task: &Task, node_id: &str, hostname: &str) -> Result<Task, String> {
    let ctx = template_context(task, node_id, hostname);
    let expand = |what: &dyn Fn() -> String, text: &str| {
        flotilla_types::template::expand(text, &ctx).map_err(|e| format!("{}: {e}", what()))
    };
    let mut task = task.clone();
    let spec = &mut task.spec;
    if let Some(h) = &spec.hostname {
        spec.hostname = Some(expand(&|| "hostname".into(), h)?);
    }
    for (key, value) in spec.env.iter_mut() {
        *value = expand(&|| format!("environment variable {key}"), value)?;
    }
    for m in spec.mounts.iter_mut() {
        let target = m.target.clone();
        m.source = expand(&|| format!("mount {target} source"), &m.source)?;
        m.target = expand(&|| format!("mount {target} target"), &m.target)?;
    }
    Ok(task)
}

/// A task's files with each templated one (`--template-driver golang`)
/// expanded for it: Swarm's placeholders, `{{ env "X" }}` from the task's
/// environment (`env`, already expanded), `{{ secret "T" }}` and
/// `{{ config "T" }}` from the task's other files by target.
fn expand_files(
    task: &Task,
    env: &std::collections::BTreeMap<String, String>,
    files: &[flotilla_types::TaskFile],
    node_id: &str,
    hostname: &str,
) -> Result<Vec<flotilla_types::TaskFile>, String> {
    use flotilla_types::SecretKind;
    if !files.iter().any(|f| f.template) {
        return Ok(files.to_vec());
    }
    let ctx = template_context(task, node_id, hostname);
    let find = |kind: SecretKind, target: &str| {
        files
            .iter()
            .filter(|f| f.kind == kind && !f.template)
            .find(|f| f.rel == target || f.path == target)
            .map(|f| String::from_utf8_lossy(&f.data.0).into_owned())
    };
    let call = |function: &str, arg: &str| -> Result<String, String> {
        let found = match function {
            "env" => env.get(arg).cloned(),
            "secret" => find(SecretKind::Secret, arg),
            _ => find(SecretKind::Config, arg),
        };
        found.ok_or_else(|| {
            format!("{{{{ {function} \"{arg}\" }}}}: the task has no such {function}")
        })
    };
    files
        .iter()
        .map(|f| {
            if !f.template {
                return Ok(f.clone());
            }
            let text = String::from_utf8_lossy(&f.data.0);
            let data = flotilla_types::template::expand_with(&text, &ctx, &call)
                .map_err(|e| format!("{} {}: {e}", f.kind, f.path))?;
            Ok(flotilla_types::TaskFile {
                data: flotilla_types::SecretData(data.into_bytes()),
                ..f.clone()
            })
        })
        .collect()
}

/// What a task's templates are expanded with on this node.
fn template_context(task: &Task, node_id: &str, hostname: &str) -> flotilla_types::TemplateContext {
    let platform = flotilla_types::Platform::current();
    flotilla_types::TemplateContext {
        node_hostname: hostname.to_string(),
        node_os: platform.os,
        node_arch: platform.arch,
        ..flotilla_types::TemplateContext::for_task(
            &task.service_id,
            &task.service_name,
            &task.id,
            task.slot,
            node_id,
        )
    }
}

/// The machine's host name (the kernel's), as the node reports it.
fn node_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The template's variables, then the `FLOTILLA_*` ones, which win.
fn task_env(task: &Task, node_id: &str) -> std::collections::BTreeMap<String, String> {
    let mut env = task.spec.env.clone();
    env.insert("FLOTILLA_TASK_ID".into(), task.id.clone());
    env.insert("FLOTILLA_SERVICE_ID".into(), task.service_id.clone());
    env.insert("FLOTILLA_SERVICE_NAME".into(), task.service_name.clone());
    env.insert("FLOTILLA_TASK_SLOT".into(), task.slot.to_string());
    env.insert("FLOTILLA_NODE_ID".into(), node_id.to_string());
    env
}

fn exit_status(ended: Exit, adopted: bool) -> TaskStatus {
    let now = now_ms();
    let mut status = match ended {
        Exit::Code(0) => TaskStatus::new(TaskState::Complete, now, "finished"),
        Exit::Code(code) => {
            let mut s = TaskStatus::new(TaskState::Failed, now, "failed");
            s.error = Some(format!("task exited with code {code}"));
            s
        }
        Exit::Signal(signal) => {
            let mut s = TaskStatus::new(TaskState::Failed, now, "failed");
            s.error = Some(format!("task killed by signal {signal}"));
            s
        }
        Exit::Unknown => {
            let mut s = TaskStatus::new(TaskState::Failed, now, "failed");
            s.error = Some(if adopted {
                ERR_ADOPTED_EXIT.to_string()
            } else {
                "task process exited (exit code unknown)".to_string()
            });
            s
        }
    };
    status.exit_code = ended.code();
    status
}

fn now_ms() -> UnixMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as UnixMs)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_the_shell_convention() {
        let s = exit_status(Exit::Code(0), false);
        assert_eq!(
            (s.state, s.exit_code, s.message.as_str()),
            (TaskState::Complete, Some(0), "finished")
        );
        let s = exit_status(Exit::Code(3), false);
        assert_eq!((s.state, s.exit_code), (TaskState::Failed, Some(3)));
        assert_eq!(s.error.as_deref(), Some("task exited with code 3"));
        let s = exit_status(Exit::Signal(9), false);
        assert_eq!((s.state, s.exit_code), (TaskState::Failed, Some(137)));
        assert_eq!(s.error.as_deref(), Some("task killed by signal 9"));
        let s = exit_status(Exit::Unknown, true);
        assert_eq!((s.state, s.exit_code), (TaskState::Failed, None));
        assert_eq!(s.error.as_deref(), Some(ERR_ADOPTED_EXIT));
    }

    #[test]
    fn templates_expand_with_the_task_and_the_node() {
        let mut spec = flotilla_types::TaskTemplate {
            hostname: Some("{{.Service.Name}}-{{.Task.Slot}}".into()),
            ..Default::default()
        };
        spec.env
            .insert("WHERE".into(), "{{.Node.Hostname}}/{{.Node.ID}}".into());
        spec.env.insert("PLAIN".into(), "a }} b".into());
        spec.mounts.push(flotilla_types::Mount {
            kind: flotilla_types::MountKind::Bind,
            source: "/srv/{{.Task.ID}}".into(),
            target: "/data/{{.Task.Slot}}".into(),
            read_only: false,
            propagation: None,
        });
        let task = Task {
            id: "t1".into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 2,
            node_id: Some("n1".into()),
            desired_state: flotilla_types::DesiredState::Running,
            status: TaskStatus::new(TaskState::Assigned, 0, ""),
            spec,
            service_version: 1,
            created_at: 0,
            created_index: 1,
            restart_history: Vec::new(),
            networks: Vec::new(),
        };
        let out = expand_templates(&task, "n1", "box").unwrap();
        assert_eq!(out.spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(out.spec.env["WHERE"], "box/n1");
        assert_eq!(out.spec.env["PLAIN"], "a }} b");
        assert_eq!(out.spec.mounts[0].source, "/srv/t1");
        assert_eq!(out.spec.mounts[0].target, "/data/2");
        // The environment the task gets is the expanded one.
        assert_eq!(task_env(&out, "n1")["WHERE"], "box/n1");
        let mut bad = task.clone();
        bad.spec.hostname = Some("{{.Nope}}".into());
        assert!(expand_templates(&bad, "n1", "box")
            .unwrap_err()
            .starts_with("hostname: unknown placeholder {{.Nope}}"));
    }

    #[test]
    fn batches_keep_the_latest_status_per_task() {
        let mut batch = Batch::default();
        batch.push("a", TaskStatus::new(TaskState::Accepted, 1, ""));
        batch.push("b", TaskStatus::new(TaskState::Running, 2, ""));
        batch.push("a", TaskStatus::new(TaskState::Running, 3, ""));
        let reports = batch.take();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].task_id, "a");
        assert_eq!(reports[0].status.timestamp, 3);
        assert!(batch.take().is_empty());
    }
}
