//! The link between the manager's store and this node's agent: assignments
//! flow to the agent, status reports flow back into raft.
//!
//! On one node both ends are in this process; the decision functions are
//! pure so that the network dispatcher of a multi-node cluster reuses them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use flotilla_agent::{Assignments, TaskReport};
use flotilla_manager::StoreView;
use flotilla_raft::RaftNode;
use flotilla_store::{Command, State, TaskStatusUpdate};
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
pub fn useful_updates(state: &State, reports: Vec<TaskReport>) -> Vec<TaskStatusUpdate> {
    let mut latest: std::collections::BTreeMap<String, TaskReport> = Default::default();
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
        .map(|r| TaskStatusUpdate {
            task_id: r.task_id,
            status: r.status,
        })
        .collect()
}

/// Publishes this node's assignments whenever the store changes. The first
/// set is marked ready only after raft has caught up, so that the agent
/// never stops an adopted task because of a stale view.
pub async fn publish_assignments(
    raft: Arc<RaftNode>,
    view: StoreView,
    node_id: String,
    tx: watch::Sender<Arc<Assignments>>,
    shutdown: CancellationToken,
) {
    loop {
        let caught_up = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = raft.raft().ensure_linearizable() => r.is_ok(),
        };
        if caught_up {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let mut applied = view.applied.clone();
    loop {
        let (tasks, known) = {
            let state = view.read();
            assignments_for(&state, &node_id)
        };
        tx.send_replace(Arc::new(Assignments {
            tasks,
            known_task_ids: known,
            ready: true,
        }));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
        }
    }
}

/// Batches the agent's reports into raft writes.
pub async fn forward_reports(
    raft: Arc<RaftNode>,
    view: StoreView,
    mut rx: mpsc::UnboundedReceiver<Vec<TaskReport>>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let mut batch = first;
        // Reports come in bursts (hundreds of tasks starting); one raft
        // write for the burst beats hundreds.
        let gather_until = tokio::time::Instant::now() + Duration::from_millis(10);
        while let Ok(Some(more)) = tokio::time::timeout_at(gather_until, rx.recv()).await {
            batch.extend(more);
        }
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        let updates = {
            let state = view.read();
            useful_updates(&state, batch)
        };
        if updates.is_empty() {
            continue;
        }
        let count = updates.len();
        if let Err(e) = raft.propose(Command::UpdateTaskStatus { updates }).await {
            // The agent re-sends whatever the store is missing when it next
            // sees its assignments, so a lost batch heals itself.
            tracing::warn!(error = %e, count, "could not record task status reports");
        }
    }
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
        let report = |id: &str, st| TaskReport {
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
