//! The orchestrator's decision: which tasks should exist for each service.
//!
//! [`reconcile`] is a pure function of the state, the time and an ID
//! generator. It never places tasks on nodes (that is the scheduler's job,
//! which it learns about only through the store, as in swarmkit) and it
//! never waits: a decision that is not due yet is reported as
//! [`Reconciliation::next_wakeup`] so that the caller can come back then.
//!
//! Every service has slots: `1..=replicas` for a replicated service, one per
//! eligible node for a global one. Each slot has a history of tasks ordered
//! by `created_index`; the newest one whose desired state is running is the
//! slot's *current* task. The rules per slot are:
//! - no current task: create one;
//! - current task stopped by the cluster (shutdown, orphaned), or on a node
//!   that is drained or gone: replace it at once;
//! - current task ended by itself (complete, failed, rejected): the
//!   service's restart policy decides whether, and when, it is replaced;
//! - current task made from an older, different task template: left to the
//!   rolling update in [`update`], which paces replacements by the
//!   service's update config and moves its update status on (see
//!   [`is_out_of_date`]).
//!
//! A slot's older tasks still desired running are shut down once its
//! current task is ready or ended: until then a start-first update keeps
//! the old task serving beside its successor.
//!
//! A job's slots follow their own rules ([`jobs`]): run to completion,
//! restarted only on failure, at most `max_concurrent` at a time.
//!
//! Tasks in slots that no longer exist are shut down; ended tasks beyond
//! [`HISTORY_LIMIT`] per slot, and tasks of removed services, are deleted.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_store::State;
use flotilla_types::{
    Availability, DesiredState, Node, NodeState, RestartCondition, RestartPolicy, Service,
    ServiceMode, SlotKey, Task, TaskState, TaskStatus, UnixMs, UpdateStatus,
};

use update::{rolling_update, Slot};

pub mod jobs;
mod update;

/// Ended tasks kept per slot for `service ps`, as Swarm's default
/// `task-history-limit`.
pub const HISTORY_LIMIT: usize = 5;

/// What the orchestrator wants changed. Every list is sorted, so that the
/// same inputs give the same output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// New tasks, sorted by service ID, slot and node.
    pub create: Vec<Task>,
    /// IDs of tasks whose desired state becomes shutdown.
    pub shutdown: Vec<String>,
    /// IDs of tasks to forget.
    pub delete: Vec<String>,
    /// New update statuses, by service ID: `(service ID, the service
    /// version they were decided at, status)`. The store drops one whose
    /// service changed since.
    pub update_status: Vec<(String, u64, UpdateStatus)>,
    /// Services whose failed update is to be rolled back, by service ID:
    /// `(service ID, the service version it was decided at, reason)`. The
    /// store refuses one whose service changed since (a user's update
    /// that landed in between must not be rolled back).
    pub rollback: Vec<(String, u64, String)>,
    /// The earliest time a decision that is not due yet becomes due
    /// (a restart delay, an update delay or monitor period).
    pub next_wakeup: Option<UnixMs>,
}

impl Reconciliation {
    /// Whether nothing needs to change now.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.shutdown.is_empty()
            && self.delete.is_empty()
            && self.update_status.is_empty()
            && self.rollback.is_empty()
    }
}

/// Decides which tasks to create, shut down and delete so that every
/// service gets the tasks its spec asks for.
pub fn reconcile(state: &State, now: UnixMs, new_id: &mut dyn FnMut() -> String) -> Reconciliation {
    let mut out = Builder {
        now,
        new_id,
        create: Vec::new(),
        shutdown: BTreeSet::new(),
        delete: BTreeSet::new(),
        update_status: Vec::new(),
        rollback: Vec::new(),
        next_wakeup: None,
    };

    // Tasks by service and slot, each slot's tasks oldest first.
    let mut by_service: BTreeMap<&str, BTreeMap<SlotKey, Vec<&Task>>> = BTreeMap::new();
    for task in state.tasks.values() {
        by_service
            .entry(task.service_id.as_str())
            .or_default()
            .entry(task.slot_key())
            .or_default()
            .push(task);
    }
    for slots in by_service.values_mut() {
        for tasks in slots.values_mut() {
            tasks.sort_by(|a, b| (a.created_index, &a.id).cmp(&(b.created_index, &b.id)));
        }
    }

    let no_slots = BTreeMap::new();
    for service in state.services.values() {
        let slots = by_service.get(service.id.as_str()).unwrap_or(&no_slots);
        reconcile_service(state, service, slots, &mut out);
    }
    for (service_id, slots) in &by_service {
        if !state.services.contains_key(*service_id) {
            removed_service(slots, &mut out);
        }
    }

    out.finish()
}

/// Accumulates decisions; sets make a task listed twice harmless.
struct Builder<'a> {
    now: UnixMs,
    new_id: &'a mut dyn FnMut() -> String,
    create: Vec<Task>,
    shutdown: BTreeSet<String>,
    delete: BTreeSet<String>,
    update_status: Vec<(String, u64, UpdateStatus)>,
    rollback: Vec<(String, u64, String)>,
    next_wakeup: Option<UnixMs>,
}

impl Builder<'_> {
    fn create(&mut self, service: &Service, target: &SlotTarget<'_>, restart_history: Vec<UnixMs>) {
        let (slot, node_id, status) = match target.node {
            // A global task's node is fixed by its slot, so it skips the
            // scheduler and starts out assigned.
            Some(node) => (
                0,
                Some(node.id.clone()),
                TaskStatus::new(TaskState::Assigned, self.now, "assigned"),
            ),
            None => (
                target.slot,
                None,
                TaskStatus::new(TaskState::Pending, self.now, "created"),
            ),
        };
        self.create.push(Task {
            id: (self.new_id)(),
            service_id: service.id.clone(),
            service_name: service.spec.name.clone(),
            slot,
            node_id,
            desired_state: DesiredState::Running,
            status,
            spec: service.spec.task.clone(),
            service_version: service.version,
            created_at: self.now,
            // The store sets it from the raft index.
            created_index: 0,
            restart_history,
            // The allocator gives them, before the task is placed.
            networks: Vec::new(),
        });
    }

    fn shutdown(&mut self, task: &Task) {
        self.shutdown.insert(task.id.clone());
    }

    /// Shuts `old` down and creates its successor in the same slot.
    fn replace(
        &mut self,
        service: &Service,
        target: &SlotTarget<'_>,
        old: &Task,
        restart_history: Vec<UnixMs>,
    ) {
        self.shutdown(old);
        self.create(service, target, restart_history);
    }

    /// A new update status for `service`, valid at its current version.
    fn set_status(&mut self, service: &Service, status: UpdateStatus) {
        self.update_status
            .push((service.id.clone(), service.version, status));
    }

    fn wake_at(&mut self, due: UnixMs) {
        self.next_wakeup = Some(self.next_wakeup.map_or(due, |w| w.min(due)));
    }

    fn finish(self) -> Reconciliation {
        let mut create = self.create;
        create.sort_by(|a, b| {
            (&a.service_id, a.slot, &a.node_id, &a.id).cmp(&(
                &b.service_id,
                b.slot,
                &b.node_id,
                &b.id,
            ))
        });
        // A task about to be forgotten needs no desired state.
        let shutdown = self
            .shutdown
            .into_iter()
            .filter(|id| !self.delete.contains(id))
            .collect();
        let mut update_status = self.update_status;
        update_status.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rollback = self.rollback;
        rollback.sort();
        Reconciliation {
            create,
            shutdown,
            delete: self.delete.into_iter().collect(),
            update_status,
            rollback,
            next_wakeup: self.next_wakeup,
        }
    }
}

/// A slot the service should have.
struct SlotTarget<'a> {
    /// Slot number of a replicated service (0 for global ones).
    slot: u64,
    /// The node of a global service's slot.
    node: Option<&'a Node>,
    /// Whether a task may be started in the slot now. False on a paused
    /// node: it keeps its tasks but takes no new ones.
    may_create: bool,
}

fn reconcile_service(
    state: &State,
    service: &Service,
    slots: &BTreeMap<SlotKey, Vec<&Task>>,
    out: &mut Builder<'_>,
) {
    let mut wanted: BTreeMap<SlotKey, SlotTarget<'_>> = BTreeMap::new();
    match service.spec.mode {
        ServiceMode::Replicated { replicas } => {
            for slot in 1..=replicas {
                let target = SlotTarget {
                    slot,
                    node: None,
                    may_create: true,
                };
                wanted.insert(SlotKey::Replica(slot), target);
            }
        }
        ServiceMode::ReplicatedJob { replicas, .. } => {
            for slot in 1..=replicas {
                let target = SlotTarget {
                    slot,
                    node: None,
                    may_create: true,
                };
                wanted.insert(SlotKey::Replica(slot), target);
            }
        }
        ServiceMode::Global | ServiceMode::GlobalJob => {
            for node in state.nodes.values().filter(|n| global_eligible(service, n)) {
                let may_create = node.availability == Availability::Active;
                let target = SlotTarget {
                    slot: 0,
                    node: Some(node),
                    may_create,
                };
                wanted.insert(SlotKey::Node(node.id.clone()), target);
            }
        }
    }

    if service.spec.mode.is_job() {
        jobs::reconcile_job(service, &wanted, slots, out);
    } else {
        let mut outcomes: Vec<(&SlotTarget<'_>, Slot<'_>)> = Vec::new();
        for (key, target) in &wanted {
            let tasks = slots.get(key).map(Vec::as_slice).unwrap_or(&[]);
            outcomes.push((target, reconcile_slot(state, service, target, tasks, out)));
        }
        rolling_update(service, &outcomes, slots.values().flatten().copied(), out);
    }

    for (key, tasks) in slots {
        if !wanted.contains_key(key) {
            // Scaled down, node drained, gone or no longer matching.
            for task in tasks
                .iter()
                .filter(|t| t.desired_state == DesiredState::Running)
            {
                out.shutdown(task);
            }
        }
        trim_history(tasks, out);
    }
}

/// A node where a global service keeps a task.
pub fn global_eligible(service: &Service, node: &Node) -> bool {
    node.state == NodeState::Ready
        && node.availability != Availability::Drain
        && (service.spec.task.networks.is_empty() || node.overlay_error.is_none())
        && service
            .spec
            .task
            .constraints
            .iter()
            .all(|c| c.matches(node))
}

/// Applies the per-slot rules and says what is left in the slot for the
/// rolling update.
fn reconcile_slot<'t>(
    state: &State,
    service: &Service,
    target: &SlotTarget<'_>,
    tasks: &[&'t Task],
    out: &mut Builder<'_>,
) -> Slot<'t> {
    let running: Vec<&'t Task> = tasks
        .iter()
        .copied()
        .filter(|t| t.desired_state == DesiredState::Running)
        .collect();
    let Some((&current, older)) = running.split_last() else {
        if target.may_create {
            out.create(service, target, Vec::new());
            return Slot::Created;
        }
        return Slot::Empty;
    };
    let state_now = current.status.state;
    // The new task of a start-first update ended by itself while the old
    // one still serves: the slot falls back to the old task (which the
    // update may try to replace again, or which a rollback keeps), once the
    // restart delay has passed, instead of going empty.
    let ended_by_itself = matches!(
        state_now,
        TaskState::Complete | TaskState::Failed | TaskState::Rejected
    );
    if ended_by_itself && older.iter().any(|t| !t.status.state.is_terminal()) {
        if let Restart::At(due) = restart_decision(&service.spec.task.restart, current, out.now) {
            out.wake_at(due);
            return Slot::Current(current);
        }
        out.shutdown(current);
        let rest: Vec<&'t Task> = tasks
            .iter()
            .copied()
            .filter(|t| t.id != current.id)
            .collect();
        return reconcile_slot(state, service, target, &rest, out);
    }
    // Older tasks desired running are the old side of a start-first update
    // (or a half-applied decision). They keep serving until the newest is
    // ready; once it ended they have no successor to wait for.
    if current.is_ready() || state_now.is_terminal() {
        for task in older {
            out.shutdown(task);
        }
    }

    if !target.may_create {
        // A paused node keeps what it has, whatever state that is in.
        return Slot::Current(current);
    }
    let stale = is_out_of_date(service, current);
    let left = if stale {
        Slot::Stale {
            task: current,
            alone: older.is_empty(),
        }
    } else {
        Slot::Current(current)
    };

    if !state_now.is_terminal() {
        // Swarm moves tasks off drained nodes; a removed node will never
        // report this task again. A global slot on such a node is not wanted
        // at all, so this concerns replicated tasks only.
        let node_lost = current.node_id.as_ref().is_some_and(|id| {
            state
                .nodes
                .get(id)
                .is_none_or(|n| n.availability == Availability::Drain)
        });
        if target.node.is_none() && node_lost {
            out.replace(service, target, current, current.restart_history.clone());
            return Slot::Created;
        }
        return left;
    }

    match state_now {
        // The cluster stopped it, so the restart policy does not apply.
        TaskState::Shutdown | TaskState::Orphaned => {
            out.replace(service, target, current, current.restart_history.clone());
            Slot::Created
        }
        _ => match restart_decision(&service.spec.task.restart, current, out.now) {
            Restart::Never => left,
            // The update may replace a stale slot before its restart is due.
            Restart::At(due) => {
                out.wake_at(due);
                left
            }
            Restart::Now(history) => {
                // Restarts of the old template say nothing about the new one.
                let history = if stale { Vec::new() } else { history };
                out.replace(service, target, current, history);
                Slot::Created
            }
        },
    }
}

/// What the restart policy says about a task that ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Restart {
    /// The slot stays dead.
    Never,
    /// Not before this time (the restart delay).
    At(UnixMs),
    /// Now, with this restart history for the new task.
    Now(Vec<UnixMs>),
}

fn restart_decision(policy: &RestartPolicy, task: &Task, now: UnixMs) -> Restart {
    let failed = matches!(task.status.state, TaskState::Failed | TaskState::Rejected);
    let wanted = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => failed,
        RestartCondition::Any => true,
    };
    if !wanted {
        return Restart::Never;
    }
    // Restarts are counted at the moment the task ended, not at `now`, so
    // that a slot that gave up stays given up, as in Swarm, instead of
    // coming back whenever old restarts leave the window.
    let ended = task.status.timestamp;
    if policy.max_attempts > 0 {
        let recent = task
            .restart_history
            .iter()
            .filter(|at| in_window(policy, **at, ended))
            .count() as u64;
        if recent >= policy.max_attempts {
            return Restart::Never;
        }
    }
    let due = ended.saturating_add(policy.delay_ms);
    if now < due {
        return Restart::At(due);
    }
    let mut history: Vec<UnixMs> = task
        .restart_history
        .iter()
        .copied()
        .filter(|at| in_window(policy, *at, now))
        .collect();
    history.push(now);
    Restart::Now(history)
}

/// Whether a restart at `at` counts at time `reference`.
fn in_window(policy: &RestartPolicy, at: UnixMs, reference: UnixMs) -> bool {
    policy.window_ms == 0 || reference.saturating_sub(at) <= policy.window_ms
}

/// A task made from an older service version whose task template differs.
/// A change of replicas, mode or labels only keeps the template, and so
/// keeps the tasks.
pub fn is_out_of_date(service: &Service, task: &Task) -> bool {
    task.service_version < service.version && task.spec != service.spec.task
}

/// Deletes ended tasks desired shutdown beyond the newest [`HISTORY_LIMIT`],
/// and tasks desired shutdown that never reached a node: no agent will
/// ever report them, so they would stay pending forever.
fn trim_history(tasks: &[&Task], out: &mut Builder<'_>) {
    let history: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| t.desired_state == DesiredState::Shutdown && t.status.state.is_terminal())
        .collect();
    let excess = history.len().saturating_sub(HISTORY_LIMIT);
    for task in &history[..excess] {
        out.delete.insert(task.id.clone());
    }
    for task in tasks.iter().filter(|t| never_placed_and_stopped(t)) {
        out.delete.insert(task.id.clone());
    }
}

/// Desired shutdown and never placed. The desired state never goes back to
/// running, and the scheduler places only tasks desired running, so such a
/// task can be deleted without racing a placement.
fn never_placed_and_stopped(task: &Task) -> bool {
    task.desired_state == DesiredState::Shutdown
        && task.status.state <= TaskState::Pending
        && task.node_id.is_none()
}

/// Tasks whose service is gone: shut down, then forgotten once ended.
fn removed_service(slots: &BTreeMap<SlotKey, Vec<&Task>>, out: &mut Builder<'_>) {
    for task in slots.values().flatten() {
        if task.status.state.is_terminal() || never_placed_and_stopped(task) {
            out.delete.insert(task.id.clone());
        } else if task.desired_state == DesiredState::Running {
            out.shutdown(task);
        }
    }
}

#[cfg(test)]
mod tests;
