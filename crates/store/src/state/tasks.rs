//! Commands on the tasks table: the orchestrator creates, stops and
//! deletes tasks, the scheduler places them, the dispatcher reports what
//! agents observe. Batches: an entry that no longer applies (its task or
//! node is gone, its state moved on) is skipped, not an error.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_types::{
    DesiredState, Service, SlotKey, Task, TaskState, TaskStatus, UnixMs, UpdateOrder,
};

use super::{table, Change, State};
use crate::command::{CommandResult, TaskStatusUpdate};

impl State {
    /// [`crate::Command::CreateTasks`]: adds tasks, created at `index`.
    /// A task whose service is gone or whose ID exists is dropped, and so
    /// is a task desired running in a slot that already has one (see
    /// [`may_join`]): a proposer that decided on a view older than this
    /// state (a new leader still catching up) must not give a slot two
    /// processes.
    pub(super) fn create_tasks(
        &mut self,
        index: u64,
        tasks: &[Task],
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        // The tasks desired running of the slots this batch fills, found
        // in one pass (a batch fills up to MAX_BATCH slots of a service
        // that may have thousands of tasks).
        let batch: BTreeSet<&str> = tasks.iter().map(|t| t.service_id.as_str()).collect();
        let mut occupied: BTreeMap<(String, SlotKey), Vec<String>> = BTreeMap::new();
        for t in self.tasks.values() {
            if t.desired_state == DesiredState::Running && batch.contains(t.service_id.as_str()) {
                occupied
                    .entry((t.service_id.clone(), t.slot_key()))
                    .or_default()
                    .push(t.id.clone());
            }
        }
        for task in tasks {
            // A task of a service removed since the proposal is dropped:
            // nothing would ever clean it up.
            let Some(service) = self.services.get(&task.service_id) else {
                continue;
            };
            if self.tasks.contains_key(&task.id) {
                continue;
            }
            if task.desired_state == DesiredState::Running {
                let slot = occupied
                    .entry((task.service_id.clone(), task.slot_key()))
                    .or_default();
                let there: Vec<&Task> = slot.iter().filter_map(|id| self.tasks.get(id)).collect();
                if !may_join(service, &there, task) {
                    continue;
                }
                slot.push(task.id.clone());
            }
            let mut task = task.clone();
            task.created_index = index;
            let id = task.id.clone();
            table::insert(&mut self.tasks, &id, task, changes);
        }
        Ok(None)
    }

    /// [`crate::Command::SetDesiredState`]: what the manager wants of
    /// tasks. Tasks already there, or gone, are no change.
    pub(super) fn set_desired_state(
        &mut self,
        task_ids: &[String],
        desired: DesiredState,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        for id in task_ids {
            if let Some(task) = self.tasks.get_mut(id) {
                if task.desired_state != desired {
                    task.desired_state = desired;
                    table::touched::<Task>(id, changes);
                }
            }
        }
        Ok(None)
    }

    /// [`crate::Command::AssignTasks`]: places `(task, node)` pairs, at
    /// `at`. Only a task still waiting for a node and desired running is
    /// placed, and only on a node that exists.
    pub(super) fn assign_tasks(
        &mut self,
        assignments: &[(String, String)],
        at: UnixMs,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        for (task_id, node_id) in assignments {
            if !self.nodes.contains_key(node_id) {
                continue;
            }
            if let Some(task) = self.tasks.get_mut(task_id) {
                // Only a task still waiting for a node can be placed;
                // a stale proposal must not move a running task.
                if task.status.state <= TaskState::Pending
                    && task.desired_state == DesiredState::Running
                {
                    task.node_id = Some(node_id.clone());
                    task.status = TaskStatus::new(TaskState::Assigned, at, "assigned");
                    table::touched::<Task>(task_id, changes);
                }
            }
        }
        Ok(None)
    }

    /// [`crate::Command::SetPendingReason`]: `(task, reason)` pairs for
    /// tasks that stay pending. A task already pending with that reason is
    /// no change (so its timestamp stays); a placed task is left alone.
    pub(super) fn set_pending_reason(
        &mut self,
        reasons: &[(String, String)],
        at: UnixMs,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        for (task_id, reason) in reasons {
            if let Some(task) = self.tasks.get_mut(task_id) {
                if task.status.state <= TaskState::Pending
                    && (task.status.state != TaskState::Pending || task.status.message != *reason)
                {
                    task.status = TaskStatus::new(TaskState::Pending, at, reason.clone());
                    table::touched::<Task>(task_id, changes);
                }
            }
        }
        Ok(None)
    }

    /// [`crate::Command::UpdateTaskStatus`]: observed statuses. One that
    /// the current status does not accept (a state moving back, a report
    /// on an ended task) is skipped.
    pub(super) fn update_task_status(
        &mut self,
        updates: &[TaskStatusUpdate],
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        for update in updates {
            if let Some(task) = self.tasks.get_mut(&update.task_id) {
                if task.status.accepts(&update.status) {
                    let ports = std::mem::take(&mut task.status.ports);
                    task.status = update.status.clone();
                    // A report that names no ports (a health change from
                    // an agent that sent them with `running`) keeps them
                    // while the task lives: the mesh still needs them.
                    if task.status.ports.is_empty() && !task.status.state.is_terminal() {
                        task.status.ports = ports;
                    }
                    table::touched::<Task>(&update.task_id, changes);
                }
            }
        }
        Ok(None)
    }

    /// [`crate::Command::DeleteTasks`]: forgets tasks; unknown IDs are no
    /// change.
    pub(super) fn delete_tasks(
        &mut self,
        task_ids: &[String],
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        for id in task_ids {
            table::remove(&mut self.tasks, id, changes);
        }
        Ok(None)
    }
}

/// Whether `new`, desired running, may join its slot, where `there` are
/// the tasks desired running: only into an empty slot, or beside the one
/// old task of a start-first update (the orchestrator's
/// `orchestrator::update`), which keeps serving until `new` is ready.
/// That is: the order in effect (the rollback config's during a rollback,
/// else the update config's) is start-first, `new` is of the service's
/// template, and the task there is not. So a slot has at most two tasks
/// desired running, and two only while it is being updated.
fn may_join(service: &Service, there: &[&Task], new: &Task) -> bool {
    let config = match &service.update_status {
        Some(status) if status.state.is_rollback() => &service.spec.rollback,
        _ => &service.spec.update,
    };
    match there {
        [] => true,
        [old] => {
            config.order == UpdateOrder::StartFirst
                && new.spec == service.spec.task
                && old.spec != service.spec.task
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use flotilla_types::{
        DesiredState, Health, Task, TaskPort, TaskState, TaskStatus, UpdateOrder,
    };

    use super::super::tests::{init, spec, task, two_pending_tasks};
    use crate::{Change, Command, State, TaskStatusUpdate};

    fn create(s: &mut State, tasks: Vec<Task>) -> Vec<Change> {
        let index = s.index + 1;
        let (r, changes) = s.apply(index, &Command::CreateTasks { tasks });
        assert_eq!(r, Ok(None));
        changes
    }

    fn shut_down(s: &mut State, id: &str) {
        let index = s.index + 1;
        let (r, _) = s.apply(
            index,
            &Command::SetDesiredState {
                task_ids: vec![id.into()],
                desired: DesiredState::Shutdown,
            },
        );
        assert_eq!(r, Ok(None));
    }

    /// The tasks of `slot` desired running, by ID.
    fn running_in(s: &State, slot: u64) -> Vec<&str> {
        s.tasks
            .values()
            .filter(|t| t.slot == slot && t.desired_state == DesiredState::Running)
            .map(|t| t.id.as_str())
            .collect()
    }

    /// A new leader that has not applied its predecessor's last entries
    /// sees slot 1 empty and fills it again: the store took the second
    /// task, and two processes would run for one replica.
    #[test]
    fn a_second_task_desired_running_in_a_taken_slot_is_refused() {
        let mut s = two_pending_tasks();
        let mut stopped = task("t4", "s1", 2);
        stopped.desired_state = DesiredState::Shutdown;
        let changes = create(
            &mut s,
            vec![
                task("t3", "s1", 1),
                stopped,
                // Two in one batch for an empty slot: the first one wins.
                task("t5", "s1", 3),
                task("t6", "s1", 3),
            ],
        );
        assert_eq!(
            changes,
            [Change::Task("t4".into()), Change::Task("t5".into())]
        );
        assert_eq!(running_in(&s, 1), ["t1"]);
        assert_eq!(running_in(&s, 3), ["t5"]);
        // Stop-first: once the old task is desired shut down, its
        // successor is taken.
        shut_down(&mut s, "t1");
        create(&mut s, vec![task("t3", "s1", 1)]);
        assert_eq!(running_in(&s, 1), ["t3"]);
    }

    /// `s1` updated to a new template (`sleep 200`) with `order`.
    fn updated(order: UpdateOrder) -> State {
        let mut s = two_pending_tasks();
        let mut new = spec("web", 2);
        new.task.command = vec!["sleep".into(), "200".into()];
        new.update.order = order;
        let index = s.index + 1;
        let (r, _) = s.apply(
            index,
            &Command::UpdateService {
                id: "s1".into(),
                spec: new,
                expected_version: None,
                at: 9,
            },
        );
        assert!(r.is_ok(), "{r:?}");
        s
    }

    /// A task of `s1`'s current template in `slot`.
    fn of_template(s: &State, id: &str, slot: u64) -> Task {
        let mut t = task(id, "s1", slot);
        t.spec = s.services["s1"].spec.task.clone();
        t.service_version = s.services["s1"].version;
        t
    }

    /// A start-first update starts the new task beside the old one, which
    /// serves until the new one is ready; never a third, never one of the
    /// old template, and never beside a task of the current template.
    #[test]
    fn a_start_first_update_may_start_one_task_beside_the_old_one() {
        let mut s = updated(UpdateOrder::StartFirst);
        let new = of_template(&s, "n1", 1);
        let third = of_template(&s, "n2", 1);
        // A stale leader's restart of the old template, beside t2.
        let old = task("o2", "s1", 2);
        create(&mut s, vec![new, third, old]);
        assert_eq!(running_in(&s, 1), ["n1", "t1"]);
        assert_eq!(running_in(&s, 2), ["t2"]);

        // The new task went stale in turn: the orchestrator shuts it down
        // and starts another beside the old one.
        shut_down(&mut s, "n1");
        let t = of_template(&s, "n3", 1);
        create(&mut s, vec![t]);
        assert_eq!(running_in(&s, 1), ["n3", "t1"]);

        // Once the old one is gone, the new one is the slot's only task and
        // nothing may join it.
        shut_down(&mut s, "t1");
        let t = of_template(&s, "n4", 1);
        create(&mut s, vec![t]);
        assert_eq!(running_in(&s, 1), ["n3"]);
    }

    #[test]
    fn a_stop_first_update_never_starts_a_task_beside_the_old_one() {
        let mut s = updated(UpdateOrder::StopFirst);
        let t = of_template(&s, "n1", 1);
        create(&mut s, vec![t]);
        assert_eq!(running_in(&s, 1), ["t1"]);
    }

    /// A health report without ports keeps the ports the running report
    /// gave: the mesh still routes to the task.
    #[test]
    fn a_health_report_keeps_the_tasks_ports() {
        let mut s = init();
        let (r, _) = s.apply(
            2,
            &Command::CreateService {
                id: "s1".into(),
                spec: spec("web", 1),
                at: 3,
            },
        );
        assert!(r.is_ok());
        let (r, _) = s.apply(
            3,
            &Command::CreateTasks {
                tasks: vec![task("t1", "s1", 1)],
            },
        );
        assert!(r.is_ok());
        let port = TaskPort {
            target: 80,
            protocol: Default::default(),
            host_port: 41000,
        };
        let mut running = TaskStatus::new(TaskState::Running, 6, "started");
        running.ports = vec![port];
        running.health = Some(Health::Starting);
        let mut healthy = TaskStatus::new(TaskState::Running, 7, "started");
        healthy.health = Some(Health::Healthy);
        for (i, status) in [running, healthy].into_iter().enumerate() {
            let (r, _) = s.apply(
                4 + i as u64,
                &Command::UpdateTaskStatus {
                    updates: vec![TaskStatusUpdate {
                        task_id: "t1".into(),
                        status,
                    }],
                },
            );
            assert!(r.is_ok());
        }
        assert_eq!(s.tasks["t1"].status.health, Some(Health::Healthy));
        assert_eq!(s.tasks["t1"].status.ports, [port]);
    }
}
