//! The dispatcher's decisions: which tasks a node's agent must know about,
//! which of an agent's status reports are worth a raft write, and which
//! nodes are down because their heartbeats stopped.
//!
//! The transport (agent sessions, in the node crate) and the node watcher
//! loop ([`crate::NodeWatcher`]) are glue around these functions.

use std::collections::BTreeSet;

use flotilla_store::{State, TaskStatusUpdate};
use flotilla_types::{NodeState, Task, TaskState, TaskStatus, UnixMs};

/// The tasks `node_id` must know about: placed there, not terminal in the
/// store and, when on networks, given their addresses; plus the IDs of all its tasks (for log clean-up).
pub fn assignments_for(state: &State, node_id: &str) -> (Vec<Task>, BTreeSet<String>) {
    let mut tasks = Vec::new();
    let mut known = BTreeSet::new();
    for t in state.tasks.values() {
        if t.node_id.as_deref() != Some(node_id) {
            continue;
        }
        known.insert(t.id.clone());
        let placed = t.status.state >= TaskState::Assigned;
        // A global task is placed when it is made; on networks it waits
        // for its addresses before its agent hears of it.
        let unwired = crate::network::needs_addresses(t)
            && t.desired_state == flotilla_types::DesiredState::Running;
        if placed && !t.status.state.is_terminal() && !unwired {
            tasks.push(t.clone());
        }
    }
    (tasks, known)
}

/// Keeps only reports the store would apply (a state moving forward, or a
/// health change) about tasks placed on `node_id`, the node that reports:
/// an agent speaks for its own tasks only. Of several reports of a task,
/// the last one in report order, unless an earlier one is further along.
pub fn useful_updates(
    state: &State,
    node_id: &str,
    reports: Vec<TaskStatusUpdate>,
) -> Vec<TaskStatusUpdate> {
    let mut latest: std::collections::BTreeMap<String, TaskStatusUpdate> = Default::default();
    for r in reports {
        match latest.get(&r.task_id) {
            Some(prev) if prev.status.state > r.status.state => {}
            _ => {
                latest.insert(r.task_id.clone(), r);
            }
        }
    }
    latest
        .into_values()
        .filter(|r| {
            state.tasks.get(&r.task_id).is_some_and(|t| {
                t.node_id.as_deref() == Some(node_id) && t.status.accepts(&r.status)
            })
        })
        .collect()
}

/// Nodes marked ready whose last heartbeat is older than `timeout_ms`.
/// `last_seen` holds what this leader heard; a node it has not heard from
/// counts from `since_ms` (when this manager became leader), so that a new
/// leader gives every node a full timeout before it declares it down.
pub fn expired_nodes(
    state: &State,
    last_seen: &std::collections::HashMap<String, UnixMs>,
    now_ms: UnixMs,
    since_ms: UnixMs,
    timeout_ms: u64,
) -> Vec<String> {
    state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready)
        .filter(|n| now_ms.saturating_sub(heard_at(last_seen, &n.id, since_ms)) > timeout_ms)
        .map(|n| n.id.clone())
        .collect()
}

/// When `node_id` counts as last heard from: its last heartbeat to this
/// leader, but no earlier than `since_ms`, when this leader started.
fn heard_at(
    last_seen: &std::collections::HashMap<String, UnixMs>,
    node_id: &str,
    since_ms: UnixMs,
) -> UnixMs {
    last_seen
        .get(node_id)
        .copied()
        .unwrap_or(since_ms)
        .max(since_ms)
}

/// The tasks on `node_ids` that are placed and not ended, reported
/// orphaned: their node is gone, so the orchestrator replaces them at once.
pub fn orphan_updates(state: &State, node_ids: &[String], now_ms: UnixMs) -> Vec<TaskStatusUpdate> {
    state
        .tasks
        .values()
        .filter(|t| t.node_id.as_ref().is_some_and(|n| node_ids.contains(n)))
        .filter(|t| t.status.state >= TaskState::Assigned && !t.status.state.is_terminal())
        .map(|t| {
            let mut status = TaskStatus::new(TaskState::Orphaned, now_ms, "node down");
            status.error = Some("the node stopped sending heartbeats".to_string());
            TaskStatusUpdate {
                task_id: t.id.clone(),
                status,
            }
        })
        .collect()
}

/// One round of the node watcher's decision.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodesDown {
    /// Ready nodes whose heartbeats stopped: to be marked down.
    pub down: Vec<String>,
    /// Orphaned statuses for the live tasks on those nodes and on nodes
    /// already down, so that a failed proposal is retried next round.
    pub orphans: Vec<TaskStatusUpdate>,
    /// When the next ready node expires unless it is heard from first.
    pub next_expiry: Option<UnixMs>,
}

/// Which nodes to declare down at `now_ms`, which tasks to orphan, and
/// when to look again; see [`expired_nodes`] for `last_seen`, `since_ms`
/// and `timeout_ms`.
pub fn nodes_down(
    state: &State,
    last_seen: &std::collections::HashMap<String, UnixMs>,
    now_ms: UnixMs,
    since_ms: UnixMs,
    timeout_ms: u64,
) -> NodesDown {
    let down = expired_nodes(state, last_seen, now_ms, since_ms, timeout_ms);
    let mut gone: Vec<String> = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Down)
        .map(|n| n.id.clone())
        .collect();
    gone.extend(down.iter().cloned());
    let orphans = orphan_updates(state, &gone, now_ms);
    let next_expiry = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Ready && !down.contains(&n.id))
        // Expired once more than the timeout has passed.
        .map(|n| {
            heard_at(last_seen, &n.id, since_ms)
                .saturating_add(timeout_ms)
                .saturating_add(1)
        })
        .min();
    NodesDown {
        down,
        orphans,
        next_expiry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{DesiredState, Health, TaskStatus, TaskTemplate};

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
                ..TaskTemplate::default()
            },
            service_version: 1,
            created_at: 1,
            created_index: 1,
            restart_history: vec![],
            networks: vec![],
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

    fn report(id: &str, state: TaskState) -> TaskStatusUpdate {
        TaskStatusUpdate {
            task_id: id.into(),
            status: TaskStatus::new(state, 2, ""),
        }
    }

    #[test]
    fn drops_reports_that_do_not_move_forward() {
        let s = state(vec![
            task("a", Some("n1"), TaskState::Running),
            task("b", Some("n1"), TaskState::Assigned),
        ]);
        let updates = useful_updates(
            &s,
            "n1",
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

    /// An agent could report the status of a task that is not its own
    /// (another node's, by ID): the store took it.
    #[test]
    fn drops_reports_for_other_nodes_tasks() {
        let s = state(vec![
            task("mine", Some("n1"), TaskState::Assigned),
            task("theirs", Some("n2"), TaskState::Running),
            task("nobodys", None, TaskState::Pending),
        ]);
        let updates = useful_updates(
            &s,
            "n1",
            vec![
                report("mine", TaskState::Running),
                report("theirs", TaskState::Failed),
                report("nobodys", TaskState::Running),
            ],
        );
        let ids: Vec<&str> = updates.iter().map(|u| u.task_id.as_str()).collect();
        assert_eq!(ids, ["mine"]);
    }

    #[test]
    fn keeps_the_newest_health_of_a_running_task() {
        let s = state(vec![task("a", Some("n1"), TaskState::Running)]);
        let report = |health| {
            let mut status = TaskStatus::new(TaskState::Running, 2, "");
            status.health = Some(health);
            TaskStatusUpdate {
                task_id: "a".into(),
                status,
            }
        };
        let updates = useful_updates(
            &s,
            "n1",
            vec![report(Health::Starting), report(Health::Healthy)],
        );
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].status.health, Some(Health::Healthy));
        // The same health again is not news.
        let mut stored = s.clone();
        if let Some(t) = stored.tasks.get_mut("a") {
            t.status.health = Some(Health::Healthy);
        }
        assert!(useful_updates(&stored, "n1", vec![report(Health::Healthy)]).is_empty());
    }

    fn node(id: &str, state: NodeState) -> flotilla_types::Node {
        flotilla_types::Node {
            id: id.into(),
            raft_id: 0,
            name: id.into(),
            hostname: id.into(),
            role: flotilla_types::NodeRole::Worker,
            availability: flotilla_types::Availability::Active,
            labels: Default::default(),
            state,
            addr: String::new(),
            api_addr: String::new(),
            version: String::new(),
            resources: Default::default(),
            platform: Default::default(),
            created_at: 0,
            last_seen: 0,
            entry_format: 0,
            overlay_error: None,
            engine_labels: Default::default(),
        }
    }

    #[test]
    fn nodes_expire_after_the_timeout_counted_from_leadership() {
        let mut s = state(vec![]);
        for (id, st) in [
            ("a", NodeState::Ready),
            ("b", NodeState::Ready),
            ("c", NodeState::Down),
        ] {
            s.nodes.insert(id.into(), node(id, st));
        }
        let seen: std::collections::HashMap<String, UnixMs> = [("a".to_string(), 9_000)].into();
        // b was never heard from, but the leader only started at 8_000.
        assert!(expired_nodes(&s, &seen, 10_000, 8_000, 3_000).is_empty());
        assert_eq!(expired_nodes(&s, &seen, 11_500, 8_000, 3_000), ["b"]);
        assert_eq!(expired_nodes(&s, &seen, 12_500, 8_000, 3_000), ["a", "b"]);
    }

    #[test]
    fn only_live_placed_tasks_are_orphaned() {
        let s = state(vec![
            task("a", Some("n1"), TaskState::Running),
            task("b", Some("n1"), TaskState::Failed),
            task("c", Some("n2"), TaskState::Running),
            task("d", Some("n1"), TaskState::Assigned),
        ]);
        let ids: Vec<String> = orphan_updates(&s, &["n1".to_string()], 5)
            .into_iter()
            .map(|u| u.task_id)
            .collect();
        assert_eq!(ids, ["a", "d"]);
    }

    #[test]
    fn down_nodes_tasks_are_orphaned_and_the_next_expiry_is_known() {
        let mut s = state(vec![
            task("a", Some("n1"), TaskState::Running),
            task("b", Some("n2"), TaskState::Running),
            task("c", Some("n3"), TaskState::Assigned),
            task("d", Some("n3"), TaskState::Complete),
        ]);
        for (id, st) in [
            ("n1", NodeState::Ready),
            ("n2", NodeState::Ready),
            ("n3", NodeState::Down),
        ] {
            s.nodes.insert(id.into(), node(id, st));
        }
        let seen: std::collections::HashMap<String, UnixMs> =
            [("n1".to_string(), 9_000), ("n2".to_string(), 6_000)].into();
        let round = nodes_down(&s, &seen, 10_000, 5_000, 3_000);
        assert_eq!(round.down, ["n2"]);
        // n3 was marked down before: its live task is orphaned too.
        let ids: Vec<&str> = round.orphans.iter().map(|u| u.task_id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(round
            .orphans
            .iter()
            .all(|u| u.status.state == TaskState::Orphaned && u.status.timestamp == 10_000));
        assert_eq!(round.next_expiry, Some(12_001), "n1, heard at 9 000");
        // Before anyone expires: nothing to do, and when to look again.
        let quiet = nodes_down(&s, &seen, 8_000, 5_000, 3_000);
        assert!(quiet.down.is_empty());
        assert_eq!(quiet.next_expiry, Some(9_001), "n2, heard at 6 000");
        assert_eq!(
            nodes_down(&s, &seen, 8_000, 5_000, 3_000).orphans.len(),
            1,
            "only n3's task"
        );
    }
}
