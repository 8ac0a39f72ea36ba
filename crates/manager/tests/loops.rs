//! The leader's loops (orchestrator, scheduler, node watcher) against an
//! in-memory fake of raft: proposals are applied to the shared state at
//! once and the applied index is bumped, as the raft crate does after a
//! commit. Time is tokio's, paused: no test sleeps for real.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_manager::{
    Clock, Heartbeats, NodeWatcher, Orchestrator, ProposeError, ProposeFuture, Proposer, Scheduler,
    StoreView,
};
use flotilla_store::{Command, CommandResult, State, TaskStatusUpdate};
use flotilla_types::{
    Availability, Cluster, DesiredState, Node, NodeRole, NodeState, RestartPolicy, ServiceMode,
    ServiceSpec, TaskState, TaskStatus, TaskTemplate, UnixMs, UpdateState,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which proposals a test picks out.
type CommandKind = fn(&Command) -> bool;

struct FakeRaft {
    state: Arc<RwLock<State>>,
    applied: watch::Sender<u64>,
    log: Mutex<Vec<Command>>,
    /// Proposals still to refuse before accepting any.
    failures: AtomicUsize,
    /// When set, only proposals it matches count against `failures`.
    fail_only: Mutex<Option<CommandKind>>,
    error: ProposeError,
    calls: AtomicUsize,
    /// Committed just before the next `SetUpdateStatus` proposal, as a
    /// user's update racing the orchestrator's decision.
    race: Mutex<Option<Command>>,
    /// Proposals the state machine refused.
    refused: AtomicUsize,
    /// Cancelled when the first proposal arrives, as leadership ending
    /// while a loop works through its list.
    cancel_on_first: Mutex<Option<CancellationToken>>,
}

impl FakeRaft {
    fn new(failures: usize, error: ProposeError) -> Arc<Self> {
        let (applied, _) = watch::channel(0);
        Arc::new(FakeRaft {
            state: Arc::new(RwLock::new(State::default())),
            applied,
            log: Mutex::new(Vec::new()),
            failures: AtomicUsize::new(failures),
            fail_only: Mutex::new(None),
            error,
            calls: AtomicUsize::new(0),
            race: Mutex::new(None),
            refused: AtomicUsize::new(0),
            cancel_on_first: Mutex::new(None),
        })
    }

    fn view(&self) -> StoreView {
        StoreView {
            state: self.state.clone(),
            applied: self.applied.subscribe(),
        }
    }

    /// Applies a command as if raft had committed it; the test expects the
    /// store to accept it.
    fn commit(&self, command: Command) {
        let result = self.apply(command.clone());
        assert!(result.is_ok(), "{command:?}: {result:?}");
    }

    /// Commits a command: the index moves on whether or not the state
    /// machine accepts it, as in raft.
    fn apply(&self, command: Command) -> CommandResult {
        let (index, result) = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let index = state.index + 1;
            let (result, _) = state.apply(index, &command);
            (index, result)
        };
        self.applied.send_replace(index);
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command);
        result
    }

    fn state(&self) -> State {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, kind: CommandKind) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| kind(c))
            .count()
    }
}

impl Proposer for FakeRaft {
    fn propose(&self, command: Command) -> ProposeFuture<'_> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let cancel = self
                .cancel_on_first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(token) = cancel {
                token.cancel();
            }
            let only = *self.fail_only.lock().unwrap_or_else(|e| e.into_inner());
            let refuse = only.is_none_or(|f| f(&command))
                && self
                    .failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if refuse {
                return Err(self.error.clone());
            }
            if matches!(command, Command::SetUpdateStatus { .. }) {
                let race = self.race.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(race) = race {
                    self.commit(race);
                }
            }
            let result = self.apply(command);
            if result.is_err() {
                self.refused.fetch_add(1, Ordering::SeqCst);
            }
            Ok(result)
        })
    }
}

/// Wall time that follows tokio's (paused) clock, from the test's start.
struct TestClock {
    start: tokio::time::Instant,
}

impl Clock for TestClock {
    fn now_ms(&self) -> UnixMs {
        1_000_000 + self.start.elapsed().as_millis() as u64
    }
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        raft_id: 1,
        name: id.into(),
        hostname: id.into(),
        role: NodeRole::Manager,
        availability: Availability::Active,
        labels: Default::default(),
        state: NodeState::Ready,
        addr: String::new(),
        api_addr: String::new(),
        version: "test".into(),
        resources: Default::default(),
        platform: Default::default(),
        created_at: 0,
        last_seen: 0,
        entry_format: 0,
        overlay_error: None,
        engine_labels: Default::default(),
    }
}

fn spec(replicas: u64, restart: RestartPolicy) -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        mode: ServiceMode::Replicated { replicas },
        labels: Default::default(),
        task: TaskTemplate {
            driver: Default::default(),
            command: vec!["sleep".into(), "100".into()],
            env: Default::default(),
            restart,
            stop_grace_period_ms: 10_000,
            constraints: vec![],
            ..TaskTemplate::default()
        },
        ..ServiceSpec::default()
    }
}

/// A one-node cluster with a 3-replica service, and both loops running.
fn start(raft: &Arc<FakeRaft>, restart: RestartPolicy) -> Running {
    raft.commit(Command::InitCluster {
        cluster: Cluster::bare("c1", 0),
        node: node("n1"),
    });
    raft.commit(Command::CreateService {
        id: "s1".into(),
        spec: spec(3, restart),
        at: 0,
    });
    let clock = Arc::new(TestClock {
        start: tokio::time::Instant::now(),
    });
    let token = CancellationToken::new();
    let orchestrator = Orchestrator::new(raft.view(), raft.clone(), clock.clone());
    let scheduler = Scheduler::new(raft.view(), raft.clone(), clock.clone());
    let handles = vec![
        tokio::spawn(orchestrator.run(token.clone())),
        tokio::spawn(scheduler.run(token.clone())),
    ];
    Running {
        token,
        handles,
        clock,
    }
}

struct Running {
    token: CancellationToken,
    handles: Vec<JoinHandle<()>>,
    clock: Arc<TestClock>,
}

/// Waits (in virtual time) until `done` holds of the state.
async fn until(raft: &FakeRaft, limit: Duration, done: impl Fn(&State) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if done(&raft.state()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn assigned_to_n1(state: &State) -> usize {
    state
        .tasks
        .values()
        .filter(|t| {
            t.desired_state == DesiredState::Running
                && t.status.state == TaskState::Assigned
                && t.node_id.as_deref() == Some("n1")
        })
        .count()
}

async fn stop(running: Running) {
    running.token.cancel();
    for handle in running.handles {
        let joined = tokio::time::timeout(Duration::from_secs(5), handle).await;
        assert!(
            matches!(joined, Ok(Ok(()))),
            "loop did not stop: {joined:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn three_replicas_converge_on_one_node() {
    let raft = FakeRaft::new(0, ProposeError::NotLeader);
    let running = start(&raft, RestartPolicy::default());
    assert!(until(&raft, Duration::from_secs(5), |s| assigned_to_n1(s) == 3).await);
    // Idle for a while: nothing is proposed twice.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let state = raft.state();
    assert_eq!(state.tasks.len(), 3);
    let mut slots: Vec<u64> = state.tasks.values().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, [1, 2, 3]);
    assert_eq!(raft.count(|c| matches!(c, Command::CreateTasks { .. })), 1);
    assert_eq!(raft.count(|c| matches!(c, Command::AssignTasks { .. })), 1);
    assert_eq!(raft.calls.load(Ordering::SeqCst), 2);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn failed_task_is_replaced_after_the_restart_delay() {
    let raft = FakeRaft::new(0, ProposeError::NotLeader);
    let policy = RestartPolicy {
        delay_ms: 5_000,
        ..RestartPolicy::default()
    };
    let running = start(&raft, policy);
    assert!(until(&raft, Duration::from_secs(5), |s| assigned_to_n1(s) == 3).await);

    // The agent reports that slot 2 failed.
    let state = raft.state();
    let victim = state
        .tasks
        .values()
        .find(|t| t.slot == 2)
        .map(|t| t.id.clone())
        .unwrap_or_default();
    let failed_at = tokio::time::Instant::now();
    raft.commit(Command::UpdateTaskStatus {
        updates: vec![TaskStatusUpdate {
            task_id: victim.clone(),
            status: TaskStatus::new(TaskState::Failed, running.clock.now_ms(), "exit 1"),
        }],
    });

    // Nothing happens before the delay is up...
    tokio::time::sleep_until(failed_at + Duration::from_millis(4_900)).await;
    assert_eq!(raft.state().tasks.len(), 3);
    // ...and the replacement comes soon after, without any other change.
    assert!(
        until(&raft, Duration::from_millis(1_000), |s| assigned_to_n1(s)
            == 3
            && s.tasks.len() == 4)
        .await
    );
    let state = raft.state();
    assert_eq!(state.tasks[&victim].desired_state, DesiredState::Shutdown);
    let new = state.tasks.values().find(|t| t.slot == 2 && t.id != victim);
    assert_eq!(new.map(|t| t.restart_history.len()), Some(1));
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn failed_proposals_are_retried() {
    let raft = FakeRaft::new(3, ProposeError::Other("disk full".into()));
    let running = start(&raft, RestartPolicy::default());
    assert!(until(&raft, Duration::from_secs(10), |s| assigned_to_n1(s) == 3).await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(raft.state().tasks.len(), 3);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn a_follower_backs_off_and_proposes_nothing() {
    let raft = FakeRaft::new(usize::MAX, ProposeError::NotLeader);
    let running = start(&raft, RestartPolicy::default());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(raft.state().tasks.is_empty());
    // Backoff doubles to 1 s: about 13 tries in 10 s, not thousands.
    let calls = raft.calls.load(Ordering::SeqCst);
    assert!((5..=20).contains(&calls), "{calls} calls");
    stop(running).await;
}

/// Plays the node's agent: every 100 ms, assigned tasks start running and
/// tasks desired shutdown stop.
fn spawn_agent(raft: &Arc<FakeRaft>, running: &mut Running) {
    let raft = raft.clone();
    let clock = running.clock.clone();
    let token = running.token.clone();
    running.handles.push(tokio::spawn(async move {
        while !token.is_cancelled() {
            let now = clock.now_ms();
            let updates: Vec<TaskStatusUpdate> = raft
                .state()
                .tasks
                .values()
                .filter_map(|t| {
                    let next = if t.status.state.is_terminal() {
                        return None;
                    } else if t.desired_state == DesiredState::Shutdown {
                        TaskState::Shutdown
                    } else if t.status.state == TaskState::Assigned {
                        TaskState::Running
                    } else {
                        return None;
                    };
                    Some(TaskStatusUpdate {
                        task_id: t.id.clone(),
                        status: TaskStatus::new(next, now, next.as_str()),
                    })
                })
                .collect();
            if !updates.is_empty() {
                raft.commit(Command::UpdateTaskStatus { updates });
            }
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }));
}

/// `service update` with a new command line, at the test clock's time.
fn update_command(raft: &FakeRaft, clock: &TestClock, arg: &str) -> Command {
    let mut spec = raft.state().services["s1"].spec.clone();
    spec.task.command = vec!["sleep".into(), arg.into()];
    Command::UpdateService {
        id: "s1".into(),
        spec,
        expected_version: None,
        at: clock.now_ms(),
    }
}

fn update_state(state: &State) -> Option<UpdateState> {
    state.services["s1"].update_status.as_ref().map(|u| u.state)
}

fn running_tasks(state: &State) -> usize {
    state
        .tasks
        .values()
        .filter(|t| {
            t.desired_state == DesiredState::Running && t.status.state == TaskState::Running
        })
        .count()
}

#[tokio::test(start_paused = true)]
async fn an_update_rolls_out_one_task_at_a_time_and_completes() {
    let raft = FakeRaft::new(0, ProposeError::NotLeader);
    let mut running = start(&raft, RestartPolicy::default());
    spawn_agent(&raft, &mut running);
    assert!(until(&raft, Duration::from_secs(5), |s| running_tasks(s) == 3).await);
    let before = raft.log.lock().unwrap_or_else(|e| e.into_inner()).len();

    raft.commit(update_command(&raft, &running.clock, "200"));
    assert!(
        until(&raft, Duration::from_secs(60), |s| update_state(s)
            == Some(UpdateState::Completed))
        .await
    );

    let state = raft.state();
    let live: Vec<_> = state
        .tasks
        .values()
        .filter(|t| t.desired_state == DesiredState::Running)
        .collect();
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|t| t.spec.command == ["sleep", "200"]));
    // Parallelism 1: one new task per proposal, three in all.
    let log = raft.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let created: Vec<usize> = log[before..]
        .iter()
        .filter_map(|c| match c {
            Command::CreateTasks { tasks } => Some(tasks.len()),
            _ => None,
        })
        .collect();
    assert_eq!(created, [1, 1, 1]);
    // Completed once, after the last task was ready for the monitor period.
    let status = state.services["s1"].update_status.clone();
    let completed_at = status.and_then(|u| u.completed_at).unwrap_or_default();
    let last_ready = live
        .iter()
        .map(|t| t.status.timestamp)
        .max()
        .unwrap_or_default();
    assert!(
        completed_at >= last_ready + 5_000,
        "{completed_at} {last_ready}"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        raft.count(|c| matches!(c, Command::SetUpdateStatus { .. })),
        1
    );
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_update_status_is_dropped_and_the_newer_update_completes() {
    let raft = FakeRaft::new(0, ProposeError::NotLeader);
    let mut running = start(&raft, RestartPolicy::default());
    spawn_agent(&raft, &mut running);
    assert!(until(&raft, Duration::from_secs(5), |s| running_tasks(s) == 3).await);

    raft.commit(update_command(&raft, &running.clock, "200"));
    // When the orchestrator proposes "completed" for that update, a newer
    // update has just landed: the store refuses the stale status.
    let newer = {
        let mut spec = raft.state().services["s1"].spec.clone();
        spec.task.command = vec!["sleep".into(), "300".into()];
        spec
    };
    *raft.race.lock().unwrap_or_else(|e| e.into_inner()) = Some(Command::UpdateService {
        id: "s1".into(),
        spec: newer,
        expected_version: None,
        at: running.clock.now_ms(),
    });

    assert!(
        until(&raft, Duration::from_secs(120), |s| {
            update_state(s) == Some(UpdateState::Completed)
                && s.tasks
                    .values()
                    .filter(|t| t.desired_state == DesiredState::Running)
                    .all(|t| t.spec.command == ["sleep", "300"])
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    // The refused status and the newer update's: no retry of the first.
    assert_eq!(raft.refused.load(Ordering::SeqCst), 1);
    assert_eq!(
        raft.count(|c| matches!(c, Command::SetUpdateStatus { .. })),
        2
    );
    stop(running).await;
}

const NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// Nodes `n1` and `n2`, each running one task of service `s1`, last seen
/// (as the store says) long ago; and the node watcher running.
fn start_watcher(raft: &Arc<FakeRaft>, heartbeats: &Heartbeats) -> Running {
    raft.commit(Command::InitCluster {
        cluster: Cluster::bare("c1", 0),
        node: node("n1"),
    });
    raft.commit(Command::UpsertNode { node: node("n2") });
    raft.commit(Command::CreateService {
        id: "s1".into(),
        spec: spec(2, RestartPolicy::default()),
        at: 0,
    });
    let placed = |id: &str, slot, on: &str| flotilla_types::Task {
        id: id.into(),
        service_id: "s1".into(),
        service_name: "web".into(),
        slot,
        node_id: Some(on.into()),
        desired_state: DesiredState::Running,
        status: TaskStatus::new(TaskState::Running, 0, "running"),
        spec: spec(2, RestartPolicy::default()).task,
        service_version: 3,
        created_at: 0,
        created_index: 0,
        restart_history: vec![],
        networks: vec![],
    };
    raft.commit(Command::CreateTasks {
        tasks: vec![placed("t1", 1, "n1"), placed("t2", 2, "n2")],
    });
    let clock = Arc::new(TestClock {
        start: tokio::time::Instant::now(),
    });
    let token = CancellationToken::new();
    let watcher = NodeWatcher::new(
        raft.view(),
        raft.clone(),
        clock.clone(),
        heartbeats.clone(),
        NODE_TIMEOUT,
    );
    Running {
        handles: vec![tokio::spawn(watcher.run(token.clone()))],
        token,
        clock,
    }
}

/// Plays `node`'s agent: a heartbeat every 500 ms while `until` holds of
/// the time since the test started.
fn spawn_heartbeats(
    running: &mut Running,
    heartbeats: &Heartbeats,
    node: &'static str,
    until: fn(Duration) -> bool,
) {
    let heartbeats = heartbeats.clone();
    let clock = running.clock.clone();
    let token = running.token.clone();
    running.handles.push(tokio::spawn(async move {
        while !token.is_cancelled() && until(clock.start.elapsed()) {
            heartbeats.record(node, clock.now_ms());
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }));
}

fn node_state(state: &State, id: &str) -> NodeState {
    state.nodes[id].state
}

fn task_state(state: &State, id: &str) -> TaskState {
    state.tasks[id].status.state
}

/// At `at` since the start, `n2` and its task are still up.
async fn still_up_at(raft: &FakeRaft, start: tokio::time::Instant, at: Duration) {
    tokio::time::sleep_until(start + at).await;
    let state = raft.state();
    assert_eq!(node_state(&state, "n2"), NodeState::Ready, "at {at:?}");
    assert_eq!(task_state(&state, "t2"), TaskState::Running, "at {at:?}");
}

/// `n2` is down and its task orphaned within `limit`.
async fn n2_goes_down(raft: &FakeRaft, limit: Duration) -> bool {
    until(raft, limit, |s| {
        node_state(s, "n2") == NodeState::Down && task_state(s, "t2") == TaskState::Orphaned
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_heartbeats_stop_is_marked_down_after_the_timeout() {
    let raft = FakeRaft::new(0, ProposeError::NotLeader);
    let heartbeats = Heartbeats::new();
    let mut running = start_watcher(&raft, &heartbeats);
    let start = running.clock.start;
    spawn_heartbeats(&mut running, &heartbeats, "n1", |_| true);
    // n2's last heartbeat is at 2 s.
    spawn_heartbeats(&mut running, &heartbeats, "n2", |t| {
        t <= Duration::from_secs(2)
    });

    still_up_at(&raft, start, Duration::from_millis(4_900)).await;
    assert!(n2_goes_down(&raft, Duration::from_millis(300)).await);
    let state = raft.state();
    let status = &state.tasks["t2"].status;
    assert_eq!(status.message, "node down");
    assert!(status.timestamp >= running.clock.now_ms() - 300);
    assert_eq!(state.nodes["n2"].last_seen, status.timestamp);
    // The node that kept sending heartbeats, and its task, are untouched.
    assert_eq!(node_state(&state, "n1"), NodeState::Ready);
    assert_eq!(task_state(&state, "t1"), TaskState::Running);
    // Marked down once, orphaned once.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(raft.count(|c| matches!(c, Command::SetNodeState { .. })), 1);
    assert_eq!(
        raft.count(|c| matches!(c, Command::UpdateTaskStatus { .. })),
        1
    );
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn nodes_that_keep_sending_heartbeats_stay_ready() {
    let raft = FakeRaft::new(0, ProposeError::NotLeader);
    let heartbeats = Heartbeats::new();
    let mut running = start_watcher(&raft, &heartbeats);
    spawn_heartbeats(&mut running, &heartbeats, "n1", |_| true);
    spawn_heartbeats(&mut running, &heartbeats, "n2", |_| true);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let state = raft.state();
    for n in ["n1", "n2"] {
        assert_eq!(node_state(&state, n), NodeState::Ready);
    }
    for t in ["t1", "t2"] {
        assert_eq!(task_state(&state, t), TaskState::Running);
    }
    assert_eq!(raft.calls.load(Ordering::SeqCst), 0);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn a_new_watcher_gives_every_node_a_full_timeout() {
    let raft = FakeRaft::new(0, ProposeError::NotLeader);
    let heartbeats = Heartbeats::new();
    // Heard from long before this loop started (an earlier term as
    // leader); the store's last_seen is older still (0).
    heartbeats.record("n2", 1_000_000 - 60_000);
    // Time passes before the loop starts: it counts from its start.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut running = start_watcher(&raft, &heartbeats);
    let start = running.clock.start;
    spawn_heartbeats(&mut running, &heartbeats, "n1", |_| true);

    still_up_at(&raft, start, NODE_TIMEOUT - Duration::from_millis(10)).await;
    assert!(n2_goes_down(&raft, Duration::from_millis(300)).await);
    assert_eq!(node_state(&raft.state(), "n1"), NodeState::Ready);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn failed_node_watcher_proposals_are_retried() {
    let raft = FakeRaft::new(2, ProposeError::Other("disk full".into()));
    let heartbeats = Heartbeats::new();
    let mut running = start_watcher(&raft, &heartbeats);
    spawn_heartbeats(&mut running, &heartbeats, "n1", |_| true);
    // Marking n2 down fails twice, then goes through.
    assert!(n2_goes_down(&raft, NODE_TIMEOUT + Duration::from_secs(2)).await);
    assert_eq!(raft.calls.load(Ordering::SeqCst), 4);
    assert_eq!(node_state(&raft.state(), "n1"), NodeState::Ready);
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn orphaning_is_retried_once_the_node_is_already_down() {
    let raft = FakeRaft::new(1, ProposeError::Other("disk full".into()));
    *raft.fail_only.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(|c| matches!(c, Command::UpdateTaskStatus { .. }));
    let heartbeats = Heartbeats::new();
    let mut running = start_watcher(&raft, &heartbeats);
    spawn_heartbeats(&mut running, &heartbeats, "n1", |_| true);
    assert!(n2_goes_down(&raft, NODE_TIMEOUT + Duration::from_secs(2)).await);
    // The node was marked down once; the orphaning took a second try.
    assert_eq!(raft.count(|c| matches!(c, Command::SetNodeState { .. })), 1);
    assert_eq!(
        raft.count(|c| matches!(c, Command::UpdateTaskStatus { .. })),
        1
    );
    assert_eq!(raft.calls.load(Ordering::SeqCst), 3);
    stop(running).await;
}

/// Runs the orchestrator over a 250-replica service (and `extra`, a task
/// in a slot beyond them) until its token, cancelled when the first
/// proposal arrives, stops it; returns the fake raft.
async fn orchestrate_until_cancelled(extra: Option<flotilla_types::Task>) -> Arc<FakeRaft> {
    let raft = FakeRaft::new(0, ProposeError::NotLeader);
    raft.commit(Command::InitCluster {
        cluster: Cluster::bare("c1", 0),
        node: node("n1"),
    });
    raft.commit(Command::CreateService {
        id: "s1".into(),
        spec: spec(250, RestartPolicy::default()),
        at: 0,
    });
    if let Some(extra) = extra {
        raft.commit(Command::CreateTasks { tasks: vec![extra] });
    }
    let token = CancellationToken::new();
    *raft
        .cancel_on_first
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
    let clock = Arc::new(TestClock {
        start: tokio::time::Instant::now(),
    });
    let handle = tokio::spawn(
        Orchestrator::new(raft.view(), raft.clone(), clock.clone()).run(token.clone()),
    );
    let joined = tokio::time::timeout(Duration::from_secs(5), handle).await;
    assert!(
        matches!(joined, Ok(Ok(()))),
        "loop did not stop: {joined:?}"
    );
    raft
}

/// Leadership ends (the loop's token is cancelled) while the orchestrator
/// proposes its round, a shutdown then 250 new tasks: it stops after the
/// proposal in flight. Before, it sent the rest of its list.
#[tokio::test(start_paused = true)]
async fn a_cancelled_orchestrator_proposes_nothing_more() {
    let extra = flotilla_types::Task {
        id: "extra".into(),
        service_id: "s1".into(),
        service_name: "web".into(),
        slot: 300,
        node_id: Some("n1".into()),
        desired_state: DesiredState::Running,
        status: TaskStatus::new(TaskState::Running, 0, "running"),
        spec: spec(250, RestartPolicy::default()).task,
        service_version: 2,
        created_at: 0,
        created_index: 0,
        restart_history: vec![],
        networks: vec![],
    };
    let raft = orchestrate_until_cancelled(Some(extra)).await;
    assert_eq!(raft.calls.load(Ordering::SeqCst), 1, "proposals sent");
    let state = raft.state();
    assert_eq!(state.tasks.len(), 1, "no task created");
    assert_eq!(state.tasks["extra"].desired_state, DesiredState::Shutdown);
}

/// The 250 new tasks go as raft entries of at most 100
/// ([`flotilla_store::MAX_BATCH`]); cancelled during the first, the loop
/// sends no other. Before, it proposed all 250 in one command.
#[tokio::test(start_paused = true)]
async fn a_cancelled_orchestrator_stops_between_the_parts_of_a_batch() {
    let raft = orchestrate_until_cancelled(None).await;
    assert_eq!(raft.calls.load(Ordering::SeqCst), 1, "proposals sent");
    assert_eq!(raft.state().tasks.len(), flotilla_store::MAX_BATCH);
}
