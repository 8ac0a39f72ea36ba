//! Rebalancing, which Swarm lacks: when a node joins or comes back, tasks
//! of replicated services move to it, one at a time per service, until no
//! eligible node runs more than one task above another.
//!
//! A move shuts a task down; the orchestrator then fills the slot with a
//! new task and the scheduler places it on the least loaded node. A service
//! with any task not yet running is left alone, so moves never pile up.
//! Label a service `flotilla.rebalance=false` to keep its tasks where they
//! are.

use std::collections::BTreeMap;

use flotilla_store::State;
use flotilla_types::{Availability, DesiredState, NodeState, ServiceMode, TaskState};

/// The service label that turns rebalancing off when set to `false`.
pub const REBALANCE_LABEL: &str = "flotilla.rebalance";

/// Tasks to shut down so that their slots move to emptier nodes; at most
/// one per service and `max_moves` in all.
pub fn rebalance(state: &State, max_moves: usize) -> Vec<String> {
    let mut moves = Vec::new();
    for service in state.services.values() {
        if moves.len() >= max_moves {
            break;
        }
        let ServiceMode::Replicated { replicas } = service.spec.mode else {
            continue;
        };
        if service.spec.labels.get(REBALANCE_LABEL).map(String::as_str) == Some("false") {
            continue;
        }
        let current: Vec<_> = state
            .tasks_of(&service.id)
            .filter(|t| t.desired_state == DesiredState::Running && !t.status.state.is_terminal())
            .collect();
        // Every slot filled and running: nothing in transit, including a
        // move of our own that the orchestrator has not replaced yet.
        if current.is_empty()
            || current.len() as u64 != replicas
            || current.iter().any(|t| t.status.state != TaskState::Running)
        {
            continue;
        }
        let mut load: BTreeMap<&str, Vec<&flotilla_types::Task>> = state
            .nodes
            .values()
            .filter(|n| {
                n.state == NodeState::Ready
                    && n.availability == Availability::Active
                    && service.spec.task.constraints.iter().all(|c| c.matches(n))
            })
            .map(|n| (n.id.as_str(), Vec::new()))
            .collect();
        for t in &current {
            if let Some(list) = t.node_id.as_deref().and_then(|n| load.get_mut(n)) {
                list.push(t);
            }
        }
        let (Some(min), Some((_, busiest))) = (
            load.values().map(Vec::len).min(),
            load.iter()
                .max_by_key(|(id, v)| (v.len(), std::cmp::Reverse(*id))),
        ) else {
            continue;
        };
        if busiest.len() > min + 1 {
            if let Some(t) = busiest.iter().max_by_key(|t| (t.slot, t.id.as_str())) {
                moves.push(t.id.clone());
            }
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{add_service, add_task, cluster, replicated, task};

    fn placed(s: &mut State, svc: &str, slot: u64, on: &str, st: TaskState) {
        let mut t = task(&format!("{svc}-{slot}"), svc, slot, slot, st);
        t.node_id = Some(on.into());
        add_task(s, t);
    }

    #[test]
    fn moves_one_task_to_a_node_that_came_back() {
        let mut s = cluster(&["a", "b", "c"]);
        add_service(&mut s, replicated("web", 6));
        for slot in 1..=6 {
            placed(
                &mut s,
                "web",
                slot,
                if slot <= 3 { "a" } else { "b" },
                TaskState::Running,
            );
        }
        let moves = rebalance(&s, 10);
        assert_eq!(
            moves,
            ["web-3"],
            "one move at a time, from the busiest node"
        );
    }

    #[test]
    fn leaves_balanced_busy_or_opted_out_services_alone() {
        let mut s = cluster(&["a", "b"]);
        add_service(&mut s, replicated("web", 3));
        placed(&mut s, "web", 1, "a", TaskState::Running);
        placed(&mut s, "web", 2, "a", TaskState::Running);
        placed(&mut s, "web", 3, "b", TaskState::Running);
        assert!(rebalance(&s, 10).is_empty(), "2/1 is balanced");

        add_service(&mut s, replicated("api", 4));
        for slot in 1..=3 {
            placed(&mut s, "api", slot, "a", TaskState::Running);
        }
        placed(&mut s, "api", 4, "a", TaskState::Starting);
        assert!(
            rebalance(&s, 10).is_empty(),
            "a task in transit holds moves back"
        );

        let mut db = replicated("db", 3);
        db.spec
            .labels
            .insert(REBALANCE_LABEL.into(), "false".into());
        add_service(&mut s, db);
        for slot in 1..=3 {
            placed(&mut s, "db", slot, "a", TaskState::Running);
        }
        assert!(rebalance(&s, 10).is_empty(), "opted out");
    }

    #[test]
    fn ignores_nodes_that_cannot_take_tasks() {
        let mut s = cluster(&["a", "b"]);
        if let Some(b) = s.nodes.get_mut("b") {
            b.availability = Availability::Drain;
        }
        add_service(&mut s, replicated("web", 4));
        for slot in 1..=4 {
            placed(&mut s, "web", slot, "a", TaskState::Running);
        }
        assert!(rebalance(&s, 10).is_empty());
    }
}
