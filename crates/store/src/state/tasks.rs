//! Commands on the tasks table: the orchestrator creates, stops and
//! deletes tasks, the scheduler places them, the dispatcher reports what
//! agents observe. Batches: an entry that no longer applies (its task or
//! node is gone, its state moved on) is skipped, not an error.

use flotilla_types::{DesiredState, Task, TaskState, TaskStatus, UnixMs};

use super::{table, Change, State};
use crate::command::{CommandResult, TaskStatusUpdate};

impl State {
    /// [`crate::Command::CreateTasks`]: adds tasks, created at `index`.
    /// A task whose service is gone or whose ID exists is dropped.
    pub(super) fn create_tasks(
        &mut self,
        index: u64,
        tasks: &[Task],
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        for task in tasks {
            // A task of a service removed since the proposal is dropped:
            // nothing would ever clean it up.
            if !self.services.contains_key(&task.service_id) || self.tasks.contains_key(&task.id) {
                continue;
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
                    task.status = update.status.clone();
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
