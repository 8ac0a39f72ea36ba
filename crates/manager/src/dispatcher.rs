//! The dispatcher's decisions: which tasks a node's agent must know about,
//! and which of an agent's status reports are worth a raft write.
//!
//! The transport (the in-process link on one node, agent sessions over the
//! network later) is glue around these functions.

use std::collections::BTreeSet;

use flotilla_store::{State, TaskStatusUpdate};
use flotilla_types::{Task, TaskState};

/// The tasks `node_id` must know about: placed there and not terminal in
/// the store, plus the IDs of all its tasks (for log clean-up).
pub fn assignments_for(state: &State, node_id: &str) -> (Vec<Task>, BTreeSet<String>) {
    let mut tasks = Vec::new();
    let mut known = BTreeSet::new();
    for t in state.tasks.values() {
        if t.node_id.as_deref() != Some(node_id) {
            continue;
        }
        known.insert(t.id.clone());
        let placed = t.status.state >= TaskState::Assigned;
        if placed && !t.status.state.is_terminal() {
            tasks.push(t.clone());
        }
    }
    (tasks, known)
}

/// Keeps only reports that move a task forward, newest per task.
pub fn useful_updates(state: &State, reports: Vec<TaskStatusUpdate>) -> Vec<TaskStatusUpdate> {
    let mut latest: std::collections::BTreeMap<String, TaskStatusUpdate> = Default::default();
    for r in reports {
        match latest.get(&r.task_id) {
            Some(prev) if prev.status.state >= r.status.state => {}
            _ => {
                latest.insert(r.task_id.clone(), r);
            }
        }
    }
    latest
        .into_values()
        .filter(|r| {
            state
                .tasks
                .get(&r.task_id)
                .is_some_and(|t| t.status.state.can_move_to(r.status.state))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{DesiredState, TaskStatus, TaskTemplate};

    fn task(id: &str, node: Option<&str>, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: node.map(String::from),
            desired_state: DesiredState::Running,
            status: TaskStatus::new(state, 1, ""),
            spec: TaskTemplate {
                driver: Default::default(),
                command: vec!["true".into()],
                env: Default::default(),
                restart: Default::default(),
                stop_grace_period_ms: 0,
                constraints: vec![],
            },
            service_version: 1,
            created_at: 1,
            created_index: 1,
            restart_history: vec![],
        }
    }

    fn state(tasks: Vec<Task>) -> State {
        let mut s = State::default();
        for t in tasks {
            s.tasks.insert(t.id.clone(), t);
        }
        s
    }

    #[test]
    fn assigns_only_placed_live_tasks_of_the_node() {
        let s = state(vec![
            task("a", Some("n1"), TaskState::Assigned),
            task("b", Some("n1"), TaskState::Failed),
            task("c", Some("n2"), TaskState::Running),
            task("d", None, TaskState::Pending),
            task("e", Some("n1"), TaskState::Running),
        ]);
        let (tasks, known) = assignments_for(&s, "n1");
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "e"]);
        assert_eq!(known.into_iter().collect::<Vec<_>>(), ["a", "b", "e"]);
    }

    #[test]
    fn drops_reports_that_do_not_move_forward() {
        let s = state(vec![
            task("a", Some("n1"), TaskState::Running),
            task("b", Some("n1"), TaskState::Assigned),
        ]);
        let report = |id: &str, st| TaskStatusUpdate {
            task_id: id.into(),
            status: TaskStatus::new(st, 2, ""),
        };
        let updates = useful_updates(
            &s,
            vec![
                report("a", TaskState::Starting),
                report("b", TaskState::Starting),
                report("b", TaskState::Running),
                report("b", TaskState::Accepted),
                report("zz", TaskState::Running),
            ],
        );
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].task_id, "b");
        assert_eq!(updates[0].status.state, TaskState::Running);
    }
}
