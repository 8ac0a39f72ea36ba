//! The orchestrator and scheduler loops against an in-memory fake of raft:
//! proposals are applied to the shared state at once and the applied index
//! is bumped, as the raft crate does after a commit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_manager::{
    Clock, Orchestrator, ProposeError, ProposeFuture, Proposer, Scheduler, StoreView,
};
use flotilla_store::{Command, State, TaskStatusUpdate};
use flotilla_types::{
    Availability, Cluster, DesiredState, Node, NodeRole, NodeState, RestartPolicy, ServiceMode,
    ServiceSpec, TaskState, TaskStatus, TaskTemplate, UnixMs,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct FakeRaft {
    state: Arc<RwLock<State>>,
    applied: watch::Sender<u64>,
    log: Mutex<Vec<Command>>,
    /// Proposals still to refuse before accepting any.
    failures: AtomicUsize,
    error: ProposeError,
    calls: AtomicUsize,
}

impl FakeRaft {
    fn new(failures: usize, error: ProposeError) -> Arc<Self> {
        let (applied, _) = watch::channel(0);
        Arc::new(FakeRaft {
            state: Arc::new(RwLock::new(State::default())),
            applied,
            log: Mutex::new(Vec::new()),
            failures: AtomicUsize::new(failures),
            error,
            calls: AtomicUsize::new(0),
        })
    }

    fn view(&self) -> StoreView {
        StoreView {
            state: self.state.clone(),
            applied: self.applied.subscribe(),
        }
    }

    /// Applies a command as if raft had committed it.
    fn commit(&self, command: Command) {
        let index = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let index = state.index + 1;
            let (result, _) = state.apply(index, &command);
            assert!(result.is_ok(), "{command:?}: {result:?}");
            index
        };
        self.applied.send_replace(index);
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command);
    }

    fn state(&self) -> State {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, kind: fn(&Command) -> bool) -> usize {
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
            let refuse = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refuse {
                return Err(self.error.clone());
            }
            self.commit(command);
            Ok(Ok(None))
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
        created_at: 0,
        last_seen: 0,
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
