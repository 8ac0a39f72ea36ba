//! The leader's loops: thin async shells around the pure decisions in
//! [`crate::orchestrator`], [`crate::scheduler`], [`crate::rebalance`] and
//! [`crate::dispatcher::nodes_down`] (the node watcher).
//!
//! Each loop waits for the store to change (or for a due restart, or a
//! safety tick), computes its decision under a read lock, drops the lock,
//! and proposes at most one command of each kind (a batch in parts of at
//! most [`flotilla_store::MAX_BATCH`] items). It then waits until the
//! applied index has moved past what it read, so that it never proposes
//! the same decision twice. Once its token is cancelled (leadership ended)
//! it proposes nothing more, not even the rest of a round. The loops never
//! talk to each other: the orchestrator's new tasks reach the scheduler
//! through the store.

use std::sync::Arc;
use std::time::Duration;

use flotilla_store::{Command, State, StoreError, MAX_BATCH};
use flotilla_types::{new_id, DesiredState, NodeState, UnixMs};
use tokio_util::sync::CancellationToken;

use crate::access::{Clock, Heartbeats, ProposeError, Proposer, StoreView};
use crate::dispatcher::nodes_down;
use crate::orchestrator::{reconcile, Reconciliation};
use crate::scheduler::{pending_reason_updates, schedule};

/// Longest a loop sleeps without looking at the store: covers a missed
/// wake-up and restart delays that depend on nothing else changing.
const TICK: Duration = Duration::from_secs(1);
/// First wait after a failed proposal; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Keeps services at the tasks their specs ask for.
pub struct Orchestrator {
    view: StoreView,
    proposer: Arc<dyn Proposer>,
    clock: Arc<dyn Clock>,
}

impl Orchestrator {
    pub fn new(view: StoreView, proposer: Arc<dyn Proposer>, clock: Arc<dyn Clock>) -> Self {
        Orchestrator {
            view,
            proposer,
            clock,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ids = || new_id(rand::random());
        let decide = move |state: &State, now: UnixMs| {
            let decision = reconcile(state, now, &mut ids);
            Plan {
                next_wakeup: decision.next_wakeup,
                commands: orchestrator_commands(decision, now),
            }
        };
        run_loop(
            "orchestrator",
            self.view,
            self.proposer,
            self.clock,
            shutdown,
            decide,
        )
        .await;
    }
}

/// Places waiting tasks on nodes.
pub struct Scheduler {
    view: StoreView,
    proposer: Arc<dyn Proposer>,
    clock: Arc<dyn Clock>,
}

impl Scheduler {
    pub fn new(view: StoreView, proposer: Arc<dyn Proposer>, clock: Arc<dyn Clock>) -> Self {
        Scheduler {
            view,
            proposer,
            clock,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        run_loop(
            "scheduler",
            self.view,
            self.proposer,
            self.clock,
            shutdown,
            scheduler_plan,
        )
        .await;
    }
}

/// Moves tasks to nodes that joined or came back, a few at a time.
pub struct Rebalancer {
    view: StoreView,
    proposer: Arc<dyn Proposer>,
    clock: Arc<dyn Clock>,
}

/// Moves proposed per round; each service also has at most one in flight.
const MOVES_PER_ROUND: usize = 2;

impl Rebalancer {
    pub fn new(view: StoreView, proposer: Arc<dyn Proposer>, clock: Arc<dyn Clock>) -> Self {
        Rebalancer {
            view,
            proposer,
            clock,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let decide = |state: &State, _now: UnixMs| {
            let moves = crate::rebalance::rebalance(state, MOVES_PER_ROUND);
            let mut commands = Vec::new();
            if !moves.is_empty() {
                tracing::info!(tasks = ?moves, "rebalancing: moving tasks to emptier nodes");
                commands.push(Command::SetDesiredState {
                    task_ids: moves,
                    desired: DesiredState::Shutdown,
                });
            }
            Plan {
                commands,
                next_wakeup: None,
            }
        };
        run_loop(
            "rebalancer",
            self.view,
            self.proposer,
            self.clock,
            shutdown,
            decide,
        )
        .await;
    }
}

/// Hands out the published ports that services ask for without a number,
/// and networks' subnets and the addresses of services and tasks on them
/// ([`crate::network`]).
pub struct Allocator {
    view: StoreView,
    proposer: Arc<dyn Proposer>,
    clock: Arc<dyn Clock>,
}

impl Allocator {
    pub fn new(view: StoreView, proposer: Arc<dyn Proposer>, clock: Arc<dyn Clock>) -> Self {
        Allocator {
            view,
            proposer,
            clock,
        }
    }

    /// Runs until `shutdown` is cancelled. Proposes nothing while a
    /// manager of an older version could not read the command.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut said = std::collections::BTreeSet::new();
        let decide = move |state: &State, _now: UnixMs| {
            if flotilla_store::writable_format(state) < flotilla_store::PORTS_FORMAT {
                if said.insert("format".to_string()) {
                    tracing::warn!(
                        "ports are not allocated until every manager runs a version that reads entry format {}",
                        flotilla_store::PORTS_FORMAT
                    );
                }
                return Plan::default();
            }
            let allocation = crate::mesh::allocate(state);
            for (service, reason) in allocation.exhausted {
                if said.insert(service.clone()) {
                    tracing::warn!(service, reason, "no published port left for the service");
                }
            }
            let mut commands = allocation.commands;
            // Networks came with a newer entry format than ports.
            if flotilla_store::writable_format(state) >= flotilla_store::NETWORKS_FORMAT {
                let networks = crate::network::allocate(state);
                for (what, reason) in networks.short {
                    if said.insert(format!("{what}: {reason}")) {
                        tracing::warn!(what, reason, "network allocation short");
                    }
                }
                commands.extend(networks.commands);
            }
            Plan {
                commands,
                next_wakeup: None,
            }
        };
        run_loop(
            "allocator",
            self.view,
            self.proposer,
            self.clock,
            shutdown,
            decide,
        )
        .await;
    }
}

/// Declares nodes down when their heartbeats stop, and orphans their tasks
/// so that the orchestrator replaces them at once.
pub struct NodeWatcher {
    view: StoreView,
    proposer: Arc<dyn Proposer>,
    clock: Arc<dyn Clock>,
    heartbeats: Heartbeats,
    timeout: Duration,
}

impl NodeWatcher {
    /// `heartbeats` is what the dispatcher's sessions record; a node not
    /// heard from for longer than `timeout` is down.
    pub fn new(
        view: StoreView,
        proposer: Arc<dyn Proposer>,
        clock: Arc<dyn Clock>,
        heartbeats: Heartbeats,
        timeout: Duration,
    ) -> Self {
        NodeWatcher {
            view,
            proposer,
            clock,
            heartbeats,
            timeout,
        }
    }

    /// Runs until `shutdown` is cancelled. Time counts from the start: a
    /// new leader gives every node a full timeout, whatever the store's
    /// `last_seen` says, before it declares any down.
    pub async fn run(self, shutdown: CancellationToken) {
        let since = self.clock.now_ms();
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let heartbeats = self.heartbeats;
        let decide = move |state: &State, now: UnixMs| {
            let round = nodes_down(state, &heartbeats.snapshot(), now, since, timeout_ms);
            let mut commands = Vec::new();
            if !round.down.is_empty() {
                tracing::warn!(nodes = ?round.down, "nodes stopped sending heartbeats: marking them down");
                commands.push(Command::SetNodeState {
                    node_ids: round.down,
                    state: NodeState::Down,
                    at: now,
                });
            }
            if !round.orphans.is_empty() {
                tracing::info!(
                    tasks = round.orphans.len(),
                    "orphaning the tasks of down nodes"
                );
                commands.push(Command::UpdateTaskStatus {
                    updates: round.orphans,
                });
            }
            Plan {
                commands,
                next_wakeup: round.next_expiry,
            }
        };
        run_loop(
            "node watcher",
            self.view,
            self.proposer,
            self.clock,
            shutdown,
            decide,
        )
        .await;
    }
}

/// One round's proposals, and when to look again at the latest.
#[derive(Debug, Default)]
struct Plan {
    commands: Vec<Command>,
    next_wakeup: Option<UnixMs>,
}

/// Shutdowns first: if a later command fails, the slot is left empty and
/// the next round fills it, rather than left with two tasks to run. Update
/// status changes and rollbacks come last, after the task changes of the
/// same round.
fn orchestrator_commands(decision: Reconciliation, now: UnixMs) -> Vec<Command> {
    let mut commands = Vec::new();
    if !decision.shutdown.is_empty() {
        commands.push(Command::SetDesiredState {
            task_ids: decision.shutdown,
            desired: DesiredState::Shutdown,
        });
    }
    if !decision.create.is_empty() {
        commands.push(Command::CreateTasks {
            tasks: decision.create,
        });
    }
    if !decision.delete.is_empty() {
        commands.push(Command::DeleteTasks {
            task_ids: decision.delete,
        });
    }
    for (id, version, status) in decision.update_status {
        commands.push(Command::SetUpdateStatus {
            id,
            version,
            status,
        });
    }
    for (id, version, reason) in decision.rollback {
        commands.push(Command::RollbackService {
            id,
            at: now,
            reason: Some(reason),
            expected_version: Some(version),
        });
    }
    commands
}

fn scheduler_plan(state: &State, now: UnixMs) -> Plan {
    let decision = schedule(state);
    let reasons = pending_reason_updates(state, &decision);
    let mut commands = Vec::new();
    if !decision.assignments.is_empty() {
        commands.push(Command::AssignTasks {
            assignments: decision.assignments,
            at: now,
        });
    }
    if !reasons.is_empty() {
        commands.push(Command::SetPendingReason { reasons, at: now });
    }
    Plan {
        commands,
        next_wakeup: None,
    }
}

async fn run_loop(
    name: &'static str,
    mut view: StoreView,
    proposer: Arc<dyn Proposer>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    mut decide: impl FnMut(&State, UnixMs) -> Plan + Send,
) {
    let mut backoff = MIN_BACKOFF;
    // False once the applied watch's sender is gone: `changed` would then
    // return at once forever, so only the tick is left to wait on.
    let mut watching = true;
    tracing::debug!(name, "loop started");
    while !shutdown.is_cancelled() {
        let seen = *view.applied.borrow_and_update();
        let now = clock.now_ms();
        let plan = {
            let state = view.read();
            decide(&state, now)
        };

        if plan.commands.is_empty() {
            let mut wait = TICK;
            if let Some(due) = plan.next_wakeup {
                wait = wait.min(Duration::from_millis(due.saturating_sub(clock.now_ms())));
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = view.applied.changed(), if watching => {
                    if changed.is_err() {
                        tracing::warn!(name, "applied index watch closed; polling");
                        watching = false;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }

        match propose_all(name, proposer.as_ref(), plan.commands, &shutdown).await {
            Ok(()) if shutdown.is_cancelled() => break,
            Ok(()) => {
                backoff = MIN_BACKOFF;
                // The proposals are applied once `propose` returns, but the
                // watch may trail; acting before it moves would repeat them.
                let moved = view.applied.wait_for(|index| *index > seen);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::timeout(TICK, async { moved.await.map(|_| ()) }) => {}
                }
            }
            Err(error) => {
                match error {
                    ProposeError::NotLeader => tracing::debug!(name, "not the leader; waiting"),
                    ProposeError::Other(ref e) => {
                        tracing::warn!(name, error = %e, "proposal failed")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::debug!(name, "loop stopped");
}

/// Proposes in order and stops at the first failure, and once `shutdown`
/// is cancelled: a loop whose leadership ended must not go on with a
/// decision made while it led (a new leader decides afresh). Batch commands
/// are proposed in parts of at most [`MAX_BATCH`] items (fewer where they
/// are large: [`flotilla_store::MAX_ENTRY_BYTES`]), the raft entries
/// they become, so that cancellation is checked between every two entries.
/// A command that was committed but refused by the state machine is logged
/// and passed over: it is applied (the applied index moves past it), and
/// the next round decides afresh from a state that shows why it was
/// refused, so it is not proposed again as it was.
async fn propose_all(
    name: &'static str,
    proposer: &dyn Proposer,
    commands: Vec<Command>,
    shutdown: &CancellationToken,
) -> Result<(), ProposeError> {
    for command in commands
        .into_iter()
        .flat_map(|c| c.parts(MAX_BATCH, flotilla_store::MAX_ENTRY_BYTES))
    {
        if shutdown.is_cancelled() {
            tracing::debug!(name, "stopped: the rest of this round is not proposed");
            break;
        }
        let kind = command_kind(&command);
        let versioned = matches!(
            command,
            Command::SetUpdateStatus { .. } | Command::AllocatePorts { .. }
        );
        if let Err(refused) = proposer.propose(command).await? {
            if versioned && matches!(refused, StoreError::VersionConflict { .. }) {
                // The service changed since the decision (a newer update):
                // the decision no longer applies, which is what we want.
                tracing::debug!(name, kind, error = %refused, "stale decision dropped");
            } else {
                tracing::warn!(name, kind, error = %refused, "command refused");
            }
        } else {
            tracing::debug!(name, kind, "command applied");
        }
    }
    Ok(())
}

fn command_kind(command: &Command) -> &'static str {
    match command {
        Command::SetDesiredState { .. } => "set_desired_state",
        Command::CreateTasks { .. } => "create_tasks",
        Command::DeleteTasks { .. } => "delete_tasks",
        Command::AssignTasks { .. } => "assign_tasks",
        Command::SetPendingReason { .. } => "set_pending_reason",
        Command::SetUpdateStatus { .. } => "set_update_status",
        Command::AllocatePorts { .. } => "allocate_ports",
        Command::RollbackService { .. } => "rollback_service",
        Command::SetNodeState { .. } => "set_node_state",
        Command::UpdateTaskStatus { .. } => "update_task_status",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use flotilla_types::{TaskState, UpdateState, UpdateStatus};

    #[test]
    fn orchestrator_commands_shut_down_before_creating() {
        let mut state = cluster(&["n1"]);
        add_service(&mut state, replicated("s1", 2));
        add_task(&mut state, task("old", "s1", 3, 1, TaskState::Running));
        let mut ids = counter();
        let commands = orchestrator_commands(reconcile(&state, 100, &mut ids), 100);
        assert!(
            matches!(&commands[0], Command::SetDesiredState { task_ids, desired: DesiredState::Shutdown } if task_ids == &["old".to_string()])
        );
        assert!(matches!(&commands[1], Command::CreateTasks { tasks } if tasks.len() == 2));
        assert_eq!(commands.len(), 2);
    }

    #[test]
    fn orchestrator_commands_end_with_status_changes_and_rollbacks() {
        let status = UpdateStatus {
            state: UpdateState::Completed,
            started_at: 1,
            completed_at: Some(7),
            message: "update completed".into(),
            version: 1,
        };
        let decision = Reconciliation {
            shutdown: vec!["old".into()],
            update_status: vec![("s1".into(), 4, status.clone())],
            rollback: vec![("s2".into(), 6, "why".into())],
            ..Reconciliation::default()
        };
        let commands = orchestrator_commands(decision, 7);
        assert_eq!(commands.len(), 3);
        assert!(matches!(&commands[0], Command::SetDesiredState { .. }));
        assert_eq!(
            commands[1],
            Command::SetUpdateStatus {
                id: "s1".into(),
                version: 4,
                status
            }
        );
        assert_eq!(
            commands[2],
            Command::RollbackService {
                id: "s2".into(),
                at: 7,
                reason: Some("why".into()),
                expected_version: Some(6),
            }
        );
    }

    /// Answers every proposal with a refusal, as the store does for a
    /// status decided at a version the service has left.
    struct Refusing;

    impl Proposer for Refusing {
        fn propose(&self, _command: Command) -> crate::access::ProposeFuture<'_> {
            Box::pin(async {
                Ok(Err(StoreError::VersionConflict {
                    name: "web".into(),
                    expected: 4,
                    actual: 5,
                }))
            })
        }
    }

    #[tokio::test]
    async fn a_refused_stale_status_is_passed_over() {
        let status = UpdateStatus {
            state: UpdateState::Paused,
            started_at: 1,
            completed_at: None,
            message: String::new(),
            version: 1,
        };
        let commands = vec![Command::SetUpdateStatus {
            id: "s1".into(),
            version: 4,
            status,
        }];
        assert_eq!(
            propose_all(
                "orchestrator",
                &Refusing,
                commands,
                &CancellationToken::new()
            )
            .await,
            Ok(())
        );
    }

    #[test]
    fn scheduler_plan_skips_unchanged_reasons() {
        let mut state = cluster(&[]);
        add_service(&mut state, replicated("s1", 1));
        let mut t = task("t1", "s1", 1, 1, TaskState::Pending);
        t.status.message = "no suitable node (no nodes in the cluster)".into();
        add_task(&mut state, t);
        assert!(scheduler_plan(&state, 5).commands.is_empty());
        if let Some(t) = state.tasks.get_mut("t1") {
            t.status.message = "created".into();
        }
        let plan = scheduler_plan(&state, 5);
        assert!(
            matches!(&plan.commands[..], [Command::SetPendingReason { reasons, at: 5 }] if reasons.len() == 1)
        );
    }
}
