//! Jobs (`replicated-job`, `global-job`): tasks that run to completion.
//!
//! Each slot needs one task of the job's current run that completed. The
//! rules per slot, over the tasks made from the current template (a task
//! of an older template is of an earlier run: `service update --force`
//! runs the job again, and such a task still running is stopped):
//! - one of them completed: the slot is done, nothing runs in it again;
//! - the newest ended otherwise: the restart policy decides (a job's
//!   condition is on-failure or none; a task the cluster stopped is
//!   replaced at once);
//! - none yet: a task is created.
//!
//! New tasks (first runs and restarts alike) start only while fewer than
//! `max_concurrent` slots have a task that has not ended (0: all at once;
//! a global job has no limit), lowest slot first, as Swarm's jobs
//! orchestrator does.

use std::collections::BTreeMap;

use flotilla_types::{
    DesiredState, Service, ServiceMode, SlotKey, Task, TaskState, UnixMs, UpdateState, UpdateStatus,
};

use super::{is_out_of_date, restart_decision, Builder, Restart, SlotTarget};

/// How a job's tasks stand in its current run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobProgress {
    /// Slots with a task of the current run that completed.
    pub completed: u64,
    /// Slots with a task that has not ended.
    pub active: u64,
}

/// What one slot of a job needs.
enum Need<'t> {
    /// Completed, or given up by its restart policy.
    Nothing,
    /// A task runs (or waits to).
    Active,
    /// A new task, replacing `old` if there is one, with this restart
    /// history.
    Task(Option<&'t Task>, Vec<UnixMs>),
}

/// The tasks of a slot of the current run, oldest first.
fn current_run<'t>(service: &Service, tasks: &[&'t Task]) -> Vec<&'t Task> {
    tasks
        .iter()
        .copied()
        .filter(|t| !is_out_of_date(service, t))
        .collect()
}

fn slot_need<'t>(
    service: &Service,
    run: &[&'t Task],
    now: UnixMs,
    out: &mut Builder<'_>,
) -> Need<'t> {
    if run.iter().any(|t| t.status.state == TaskState::Complete) {
        return Need::Nothing;
    }
    let Some(&newest) = run
        .iter()
        .rfind(|t| t.desired_state == DesiredState::Running)
    else {
        return Need::Task(None, Vec::new());
    };
    match newest.status.state {
        s if !s.is_terminal() => Need::Active,
        TaskState::Shutdown | TaskState::Orphaned => {
            Need::Task(Some(newest), newest.restart_history.clone())
        }
        _ => match restart_decision(&service.spec.task.restart, newest, now) {
            Restart::Never => Need::Nothing,
            Restart::At(due) => {
                out.wake_at(due);
                Need::Nothing
            }
            Restart::Now(history) => Need::Task(Some(newest), history),
        },
    }
}

/// The job's progress in its current run, over its slots' tasks.
pub fn progress(service: &Service, slots: &BTreeMap<SlotKey, Vec<&Task>>) -> JobProgress {
    let mut p = JobProgress::default();
    for tasks in slots.values() {
        let run = current_run(service, tasks);
        if run.iter().any(|t| t.status.state == TaskState::Complete) {
            p.completed += 1;
        } else if run
            .iter()
            .any(|t| t.desired_state == DesiredState::Running && !t.status.state.is_terminal())
        {
            p.active += 1;
        }
    }
    p
}

/// Decides a job's tasks: see the module's rules.
pub(super) fn reconcile_job(
    service: &Service,
    wanted: &BTreeMap<SlotKey, SlotTarget<'_>>,
    slots: &BTreeMap<SlotKey, Vec<&Task>>,
    out: &mut Builder<'_>,
) {
    let limit = match service.spec.mode {
        ServiceMode::ReplicatedJob {
            replicas,
            max_concurrent,
        } if max_concurrent > 0 => max_concurrent.min(replicas),
        _ => u64::MAX,
    };
    // A new template is a new run, not a rolling update: the update is
    // done as soon as it is written.
    if let Some(status) = &service.update_status {
        if matches!(
            status.state,
            UpdateState::Updating | UpdateState::RollbackStarted
        ) {
            let done = if status.state == UpdateState::Updating {
                UpdateState::Completed
            } else {
                UpdateState::RollbackCompleted
            };
            out.set_status(
                service,
                UpdateStatus {
                    state: done,
                    started_at: status.started_at,
                    completed_at: Some(out.now),
                    message: "the job runs again with the new spec".into(),
                    version: status.version,
                },
            );
        }
    }
    let mut active = 0u64;
    let mut waiting = Vec::new();
    for (key, target) in wanted {
        let tasks = slots.get(key).map(Vec::as_slice).unwrap_or(&[]);
        // A task of an earlier run still running is stopped.
        for task in tasks
            .iter()
            .filter(|t| t.desired_state == DesiredState::Running && is_out_of_date(service, t))
        {
            out.shutdown(task);
        }
        let run = current_run(service, tasks);
        match slot_need(service, &run, out.now, out) {
            Need::Nothing => {}
            Need::Active => active += 1,
            Need::Task(old, history) if target.may_create => waiting.push((target, old, history)),
            Need::Task(..) => {}
        }
    }
    for (target, old, history) in waiting {
        if active >= limit {
            break;
        }
        match old {
            Some(old) => out.replace(service, target, old, history),
            None => out.create(service, target, history),
        }
        active += 1;
    }
}

#[cfg(test)]
mod tests {
    use flotilla_store::State;
    use flotilla_types::{RestartCondition, RestartPolicy};

    use super::super::reconcile;
    use super::*;
    use crate::testutil::*;

    fn job(id: &str, replicas: u64, max_concurrent: u64) -> Service {
        let mut s = service(
            id,
            ServiceMode::ReplicatedJob {
                replicas,
                max_concurrent,
            },
        );
        s.spec.task.restart = RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay_ms: 0,
            ..RestartPolicy::default()
        };
        s
    }

    /// Reconciles and applies, with IDs that stay unique across rounds.
    fn round(state: &mut State, now: UnixMs, n: &mut u64) -> Vec<u64> {
        let mut ids = || {
            *n += 1;
            format!("t{n}")
        };
        let rec = reconcile(state, now, &mut ids);
        apply_decision(state, &rec, now);
        rec.create.iter().map(|t| t.slot).collect()
    }

    /// The agent: the slot's live task reached `to`.
    fn ends(state: &mut State, slot: u64, to: TaskState, at: UnixMs) {
        let task = state
            .tasks
            .values_mut()
            .filter(|t| t.slot == slot && t.desired_state == DesiredState::Running)
            .max_by_key(|t| t.created_index)
            .expect("a task in the slot");
        task.status.state = to;
        task.status.timestamp = at;
        task.node_id = Some("n1".into());
    }

    fn progress_of(state: &State, id: &str) -> JobProgress {
        let mut slots: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
        for t in state.tasks.values().filter(|t| t.service_id == id) {
            slots.entry(t.slot_key()).or_default().push(t);
        }
        progress(&state.services[id], &slots)
    }

    #[test]
    fn a_job_runs_each_slot_once_at_most_max_concurrent_at_a_time() {
        let mut state = cluster(&["n1"]);
        add_service(&mut state, job("j", 3, 2));
        let mut n = 0;
        assert_eq!(round(&mut state, 10, &mut n), vec![1, 2], "two at a time");
        assert_eq!(round(&mut state, 11, &mut n), Vec::<u64>::new(), "full");
        ends(&mut state, 1, TaskState::Complete, 12);
        assert_eq!(
            round(&mut state, 13, &mut n),
            vec![3],
            "slot 1 done: slot 3 starts"
        );
        // A failure is restarted by the policy (on-failure), within the cap.
        ends(&mut state, 2, TaskState::Failed, 14);
        assert_eq!(round(&mut state, 15, &mut n), vec![2]);
        ends(&mut state, 2, TaskState::Complete, 16);
        ends(&mut state, 3, TaskState::Complete, 17);
        assert_eq!(round(&mut state, 18, &mut n), Vec::<u64>::new(), "done");
        assert_eq!(
            progress_of(&state, "j"),
            JobProgress {
                completed: 3,
                active: 0
            }
        );
        // Done stays done: a completed task is never run again.
        assert_eq!(round(&mut state, 1_000_000, &mut n), Vec::<u64>::new());
    }

    #[test]
    fn a_new_template_runs_the_job_again_and_a_given_up_slot_stays_so() {
        let mut state = cluster(&["n1"]);
        let mut j = job("j", 2, 0);
        j.spec.task.restart.max_attempts = 1;
        add_service(&mut state, j);
        let mut n = 0;
        assert_eq!(round(&mut state, 10, &mut n), vec![1, 2], "0: all at once");
        ends(&mut state, 1, TaskState::Complete, 11);
        ends(&mut state, 2, TaskState::Failed, 11);
        assert_eq!(round(&mut state, 12, &mut n), vec![2], "one retry");
        ends(&mut state, 2, TaskState::Failed, 13);
        assert_eq!(round(&mut state, 14, &mut n), Vec::<u64>::new(), "given up");
        assert_eq!(progress_of(&state, "j").completed, 1);
        // `service update --force`: a new template, a new run.
        if let Some(s) = state.services.get_mut("j") {
            s.spec.task.force_update += 1;
            s.version = 50;
        }
        assert_eq!(round(&mut state, 20, &mut n), vec![1, 2]);
        assert_eq!(progress_of(&state, "j").completed, 0);
    }

    #[test]
    fn a_global_job_runs_once_on_each_node_and_on_a_node_that_joins() {
        let mut state = cluster(&["n1", "n2"]);
        let mut g = job("g", 0, 0);
        g.spec.mode = ServiceMode::GlobalJob;
        add_service(&mut state, g);
        let mut n = 0;
        assert_eq!(round(&mut state, 10, &mut n).len(), 2);
        for t in state.tasks.values_mut() {
            t.status.state = TaskState::Complete;
        }
        assert!(round(&mut state, 11, &mut n).is_empty());
        state.nodes.insert("n3".into(), node("n3"));
        let created = round(&mut state, 12, &mut n);
        assert_eq!(created.len(), 1);
        let on: Vec<_> = state
            .tasks
            .values()
            .filter(|t| t.status.state != TaskState::Complete)
            .map(|t| t.node_id.clone())
            .collect();
        assert_eq!(on, vec![Some("n3".to_string())]);
    }
}
