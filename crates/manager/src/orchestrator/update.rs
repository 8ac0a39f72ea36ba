//! Rolling updates and rollbacks: which out-of-date slots get a task of the
//! new template now, and where the service's update status moves next.
//!
//! Like the rest of the orchestrator this is a pure function of the state,
//! the time and an ID generator; waits become [`Builder::wake_at`]. The
//! semantics follow Swarm's updater, computed afresh from the store on every
//! round instead of kept in a goroutine, so that a new leader carries on
//! where the old one stopped.
//!
//! - A task is *updated* when it is the current task of its slot and its
//!   spec equals the service's task template; it is *ready* when
//!   [`Task::is_ready`] (running and, with a health check, healthy). Tasks of
//!   the current template made from `update_status.version` on (the raft
//!   index the update started at) *belong to this update*.
//! - The pace comes from `spec.rollback` while the update status is a
//!   rollback state, else from `spec.update`. Parallelism 0 means all at
//!   once.
//! - *In flight*: slots whose current task is updated but neither ready nor
//!   ended nor unhealthy (pending, assigned, starting, or running with
//!   health `starting`), and slots that got a new task this round (first
//!   task, restart, move off a drained node). Stale slots are started only
//!   while fewer than `parallelism` are in flight, at most
//!   `parallelism - in_flight` per round, in slot order.
//! - *Delay*: the batch-ready time is the latest `status.timestamp` (when it
//!   entered running; health changes keep it) among ready tasks of this
//!   update; no stale slot starts before that plus `delay_ms`.
//! - *Order*: stop-first shuts the old task down and creates the new one at
//!   once. Start-first creates the new task beside the old one; the slot
//!   rules shut the old one down once the newest is ready or ended. A slot
//!   that already holds an older task (a start-first slot whose new task
//!   went stale in turn) has its newest task replaced instead, so a slot
//!   never has three tasks desired running.
//! - *Failures*: tasks of this update that ended failed or rejected, or
//!   went unhealthy, each counted once. The store does not keep when an
//!   ended task had become ready, so a task of this update that fails at any
//!   time before the update completes counts, also after its `monitor_ms`:
//!   stricter than Swarm, which stops watching a task after its monitor
//!   period. When failures exceed `max_failure_ratio` times the number of
//!   slots (any failure with ratio 0), the failure action is taken: `pause`
//!   sets `paused` (`rollback_paused` in a rollback), `rollback` asks for a
//!   rollback (a pause in a rollback, or with no previous spec),
//!   `continue` goes on.
//! - *Paused*: no stale slot is started; the restart policy still restarts
//!   ended tasks, with the current template, as Swarm does.
//! - *Completion*: with nothing stale or in flight, and every ready task of
//!   this update ready for `monitor_ms`, `updating` becomes `completed` and
//!   `rollback_started` becomes `rollback_completed`.
//! - A service without an update status, or whose update finished, that
//!   still has stale tasks (a leader change mid-way, a restored snapshot)
//!   is paced the same way, without status changes.
//! - Stale tasks on a paused node stay until the node is active again; they
//!   do not hold up completion.
//!
//! Status changes are decisions at the service version read; the store
//! drops them if the service changed since. They are only ever made from
//! `updating` or `rollback_started`, and always leave that state, so a
//! decision is never proposed twice.

use flotilla_types::{
    FailureAction, Health, Service, Task, TaskState, UnixMs, UpdateConfig, UpdateOrder,
    UpdateState, UpdateStatus,
};

use super::{Builder, SlotTarget};

/// One wanted slot after the per-slot rules ran.
pub(super) enum Slot<'t> {
    /// A task was created in the slot this round.
    Created,
    /// The current task is of an older template and may be replaced by the
    /// update. `alone` is false while an older task of the slot still runs.
    Stale { task: &'t Task, alone: bool },
    /// The current task, when it is not stale or may not be replaced (its
    /// node is paused).
    Current(&'t Task),
    /// No task, and none may start (a paused node).
    Empty,
}

/// Rolls a service's stale slots over to its template, at the pace of its
/// update (or rollback) config, and moves its update status on. `tasks` are
/// all the service's tasks, history included.
pub(super) fn rolling_update<'t>(
    service: &Service,
    slots: &[(&SlotTarget<'_>, Slot<'t>)],
    tasks: impl Iterator<Item = &'t Task>,
    out: &mut Builder<'_>,
) {
    let status = service.update_status.as_ref();
    let in_rollback = status.is_some_and(|s| s.state.is_rollback());
    let config = if in_rollback {
        &service.spec.rollback
    } else {
        &service.spec.update
    };
    // Tasks made from the update's version on belong to it; records from
    // before the version was kept fall back to the (clock-based) start.
    let of_this_update = |t: &Task| {
        t.spec == service.spec.task
            && match status {
                Some(s) if s.version > 0 => t.service_version >= s.version,
                Some(s) => t.created_at >= s.started_at,
                None => true,
            }
    };

    let mut in_flight: u64 = 0;
    let mut stale = Vec::new();
    // Current tasks of this update that are ready, for the delay and the
    // monitor period.
    let mut ready_since: Vec<UnixMs> = Vec::new();
    for (target, slot) in slots {
        match slot {
            Slot::Created => in_flight += 1,
            Slot::Stale { task, alone } => stale.push((*target, *task, *alone)),
            Slot::Current(task) => {
                if is_in_flight(service, task) {
                    in_flight += 1;
                } else if task.is_ready() && of_this_update(task) {
                    ready_since.push(task.status.timestamp);
                }
            }
            Slot::Empty => {}
        }
    }
    let last_ready = ready_since.iter().copied().max();

    let state = status.map(|s| s.state);
    if matches!(
        state,
        Some(UpdateState::Paused | UpdateState::RollbackPaused)
    ) {
        return;
    }
    let in_progress = status.filter(|s| s.state.in_progress());

    if let Some(status) = in_progress {
        let failed = failures(tasks.filter(|t| of_this_update(t)));
        if let Some(tipping) = too_many(config, &failed, slots.len()) {
            match config.failure_action {
                FailureAction::Continue => {}
                FailureAction::Rollback if !in_rollback && service.previous_spec.is_some() => {
                    out.rollback.push((
                        service.id.clone(),
                        service.version,
                        format!(
                            "update rolled back due to failure or early termination of task {tipping}"
                        ),
                    ));
                    return;
                }
                FailureAction::Rollback | FailureAction::Pause => {
                    let (paused, what) = if in_rollback {
                        (UpdateState::RollbackPaused, "rollback")
                    } else {
                        (UpdateState::Paused, "update")
                    };
                    out.set_status(
                        service,
                        UpdateStatus {
                            state: paused,
                            started_at: status.started_at,
                            completed_at: None,
                            version: status.version,
                            message: format!(
                                "{what} paused due to failure or early termination of task {tipping}"
                            ),
                        },
                    );
                    return;
                }
            }
        }
    }

    let budget = match config.parallelism {
        0 => usize::MAX,
        p => usize::try_from(p.saturating_sub(in_flight)).unwrap_or(usize::MAX),
    };
    if budget > 0 && !stale.is_empty() {
        let due = last_ready.map(|at| at.saturating_add(config.delay_ms));
        match due {
            Some(due) if config.delay_ms > 0 && out.now < due => out.wake_at(due),
            _ => {
                for (target, old, alone) in stale.iter().take(budget) {
                    start(service, config, target, old, *alone, out);
                }
            }
        }
        // Whatever started is in flight now.
        return;
    }

    let Some(status) = in_progress else {
        return;
    };
    if !stale.is_empty() || in_flight > 0 {
        return;
    }
    if let Some(due) = last_ready.map(|at| at.saturating_add(config.monitor_ms)) {
        if out.now < due {
            out.wake_at(due);
            return;
        }
    }
    // A finished rollback keeps why it started: `service inspect` must
    // still say what went wrong with the update.
    let (done, message) = if in_rollback {
        let why = status.message.as_str();
        let message = if why.is_empty() {
            "rollback completed".to_string()
        } else {
            format!("rollback completed; {why}")
        };
        (UpdateState::RollbackCompleted, message)
    } else {
        (UpdateState::Completed, "update completed".to_string())
    };
    out.set_status(
        service,
        UpdateStatus {
            state: done,
            started_at: status.started_at,
            completed_at: Some(out.now),
            message,
            version: status.version,
        },
    );
}

/// Gives a stale slot a task of the current template, in the config's
/// order. The restart history starts afresh, as in Swarm: failures of the
/// old template say nothing about the new one.
fn start(
    service: &Service,
    config: &UpdateConfig,
    target: &SlotTarget<'_>,
    old: &Task,
    alone: bool,
    out: &mut Builder<'_>,
) {
    let keep_old =
        config.order == UpdateOrder::StartFirst && alone && !old.status.state.is_terminal();
    if keep_old {
        out.create(service, target, Vec::new());
    } else {
        out.replace(service, target, old, Vec::new());
    }
}

/// An updated task on its way to ready: neither ready, nor ended, nor
/// unhealthy (that one is a failure and would hold the update forever).
fn is_in_flight(service: &Service, task: &Task) -> bool {
    task.spec == service.spec.task
        && !task.status.state.is_terminal()
        && !task.is_ready()
        && task.status.health != Some(Health::Unhealthy)
}

/// Tasks that failed, were rejected or went unhealthy.
fn failures<'t>(tasks: impl Iterator<Item = &'t Task>) -> Vec<&'t Task> {
    tasks
        .filter(|t| {
            matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
                || t.status.health == Some(Health::Unhealthy)
        })
        .collect()
}

/// The ID of the latest failure when there are more than the config
/// tolerates among `slots` slots.
fn too_many(config: &UpdateConfig, failed: &[&Task], slots: usize) -> Option<String> {
    // Counts are small; f64 holds them exactly.
    let tolerated = config.max_failure_ratio.0 * slots as f64;
    if failed.is_empty() || failed.len() as f64 <= tolerated {
        return None;
    }
    failed
        .iter()
        .max_by_key(|t| (t.status.timestamp, t.id.as_str()))
        .map(|t| t.id.clone())
}

#[cfg(test)]
mod tests;
