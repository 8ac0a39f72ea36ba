//! The link between the manager's store and this node's agent: assignments
//! flow to the agent, status reports flow back into raft.
//!
//! On one node both ends are in this process; the decision functions are
//! pure so that the network dispatcher of a multi-node cluster reuses them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use flotilla_agent::{Assignments, TaskReport};
use flotilla_manager::dispatcher::{assignments_for, useful_updates};
use flotilla_manager::StoreView;
use flotilla_raft::RaftNode;
use flotilla_store::{Command, TaskStatusUpdate};

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
            let reports = batch
                .into_iter()
                .map(|r| TaskStatusUpdate {
                    task_id: r.task_id,
                    status: r.status,
                })
                .collect();
            useful_updates(&state, reports)
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
