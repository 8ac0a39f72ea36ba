//! Rebalancing, which Swarm lacks: when a node joins or comes back, tasks
//! of replicated services move to it, one at a time per service, until no
//! eligible node runs more than one task above another.
//!
//! A move shuts a task down; the orchestrator then fills the slot with a
//! new task and the scheduler places it on the least loaded node. A service
//! with any task not yet running is left alone, so moves never pile up.
//!
//! A service with placement preferences is balanced by the scheduler's
//! own measure ([`crate::scheduler::Spread`]): a task moves only if,
//! without it, the scheduler would put it in a group (or on a node) with
//! strictly fewer of the service's tasks than the one it leaves, so that
//! a move is never undone by the next placement. Nodes at the service's
//! limit of tasks per node take no move.
//! Label a service `flotilla.rebalance=false` to keep its tasks where they
//! are.

use std::collections::BTreeMap;

use flotilla_store::State;
use flotilla_types::{Availability, DesiredState, NodeState, PublishMode, ServiceMode, TaskState};

use crate::scheduler::Spread;

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
        let spec = &service.spec.task;
        let mut load: BTreeMap<&str, (&flotilla_types::Node, Vec<&flotilla_types::Task>)> = state
            .nodes
            .values()
            .filter(|n| {
                n.state == NodeState::Ready
                    && n.availability == Availability::Active
                    && spec.constraints.iter().all(|c| c.matches(n))
            })
            .map(|n| (n.id.as_str(), (n, Vec::new())))
            .collect();
        let mut spread = Spread::new(&spec.preferences);
        for t in &current {
            let Some(node_id) = t.node_id.as_deref() else {
                continue;
            };
            if let Some(node) = state.nodes.get(node_id) {
                spread.count(node, 1, true);
            }
            if let Some((_, list)) = load.get_mut(node_id) {
                list.push(t);
            }
        }
        // Without one of its tasks, would the scheduler place it strictly
        // better elsewhere? Nodes at the limit per node take none (a
        // host-mode port is a limit of one).
        let host_port = spec.ports.iter().any(|p| p.mode == PublishMode::Host);
        let mut limit = usize::try_from(spec.max_replicas_per_node)
            .ok()
            .filter(|max| *max > 0)
            .unwrap_or(usize::MAX);
        if host_port {
            limit = limit.min(1);
        }
        // The nodes a task may leave: the busiest of each group of the
        // last level (the lowest ID among equals), as a busier one of the
        // same group is always the better move; fullest groups first.
        let mut busiest: BTreeMap<Vec<Option<&str>>, (&flotilla_types::Node, usize)> =
            BTreeMap::new();
        for (node, tasks) in load.values() {
            if tasks.is_empty() {
                continue;
            }
            let entry = busiest.entry(spread.path(node)).or_insert((node, 0));
            if tasks.len() > entry.1 {
                *entry = (node, tasks.len());
            }
        }
        let mut from: Vec<(&flotilla_types::Node, usize)> = busiest.into_values().collect();
        from.sort_by_key(|(node, n)| {
            std::cmp::Reverse((spread.key(node), *n, std::cmp::Reverse(node.id.as_str())))
        });
        for (node, n) in from {
            spread.count(node, 1, false);
            let left = (spread.key(node), n - 1);
            let better = load
                .values()
                .filter(|(other, list)| other.id == node.id || list.len() < limit)
                .map(|(other, list)| {
                    let own = list.len() - usize::from(other.id == node.id);
                    (spread.key(other), own)
                })
                .min();
            spread.count(node, 1, true);
            if better.is_none_or(|b| b >= left) {
                continue;
            }
            let task = load
                .get(node.id.as_str())
                .and_then(|(_, tasks)| tasks.iter().max_by_key(|t| (t.slot, t.id.as_str())));
            if let Some(t) = task {
                moves.push(t.id.clone());
            }
            break;
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

    fn zones(s: &mut State, zones: &[(&str, &str)]) {
        for (node, zone) in zones {
            if let Some(n) = s.nodes.get_mut(*node) {
                n.labels.insert("zone".into(), zone.to_string());
            }
        }
    }

    fn spread_by_zone(s: &mut State, svc: &str) {
        let prefs = vec![flotilla_types::PlacementPreference::spread(
            "node.labels.zone",
        )];
        if let Some(service) = s.services.get_mut(svc) {
            service.spec.task.preferences = prefs;
        }
    }

    /// a1 in zone a, b1 and b2 in zone b, and web of 6 replicas spread by
    /// zone.
    fn web_of_6_over_zones_a_b_b() -> State {
        let mut s = cluster(&["a1", "b1", "b2"]);
        zones(&mut s, &[("a1", "a"), ("b1", "b"), ("b2", "b")]);
        add_service(&mut s, replicated("web", 6));
        spread_by_zone(&mut s, "web");
        s
    }

    /// Zone a's one node holds half the tasks, as the scheduler placed
    /// them: moving one would only bring it back.
    #[test]
    fn a_spread_service_is_balanced_by_its_groups() {
        let mut s = web_of_6_over_zones_a_b_b();
        for (slot, on) in [
            (1, "a1"),
            (2, "b1"),
            (3, "b2"),
            (4, "a1"),
            (5, "b1"),
            (6, "a1"),
        ] {
            placed(&mut s, "web", slot, on, TaskState::Running);
        }
        assert!(rebalance(&s, 10).is_empty());
        // Without the preference, a1's third task moves.
        if let Some(service) = s.services.get_mut("web") {
            service.spec.task.preferences.clear();
        }
        assert_eq!(rebalance(&s, 10), ["web-6"]);
    }

    /// A node that joins zone b takes tasks from its own zone, not from
    /// zone a, which is as full as zone b.
    #[test]
    fn a_node_joining_a_group_takes_from_that_group() {
        let mut s = web_of_6_over_zones_a_b_b();
        for slot in 1..=3 {
            placed(&mut s, "web", slot, "a1", TaskState::Running);
        }
        for slot in 4..=6 {
            placed(&mut s, "web", slot, "b1", TaskState::Running);
        }
        assert_eq!(rebalance(&s, 10), ["web-6"]);
        // And a zone with fewer tasks takes from the fullest one.
        let mut s = cluster(&["a1", "b1", "c1"]);
        zones(&mut s, &[("a1", "a"), ("b1", "b"), ("c1", "c")]);
        add_service(&mut s, replicated("web", 4));
        spread_by_zone(&mut s, "web");
        for (slot, on) in [(1, "a1"), (2, "a1"), (3, "a1"), (4, "b1")] {
            placed(&mut s, "web", slot, on, TaskState::Running);
        }
        assert_eq!(rebalance(&s, 10), ["web-3"]);
    }

    /// Zone a's one node is at the service's limit of 2: zone b keeps its
    /// extra tasks, which the scheduler could not place in zone a either.
    #[test]
    fn nodes_at_the_limit_per_node_take_no_move() {
        let mut s = web_of_6_over_zones_a_b_b();
        for (slot, on) in [
            (1, "a1"),
            (2, "b1"),
            (3, "b2"),
            (4, "a1"),
            (5, "b1"),
            (6, "b2"),
        ] {
            placed(&mut s, "web", slot, on, TaskState::Running);
        }
        assert_eq!(rebalance(&s, 10), ["web-5"], "zone b has two more");
        if let Some(service) = s.services.get_mut("web") {
            service.spec.task.max_replicas_per_node = 2;
        }
        assert!(rebalance(&s, 10).is_empty());
    }

    /// Moves and the scheduler's placements end: each move is one the
    /// scheduler does not undo, whatever the zones and racks.
    #[test]
    fn moves_and_placements_settle() {
        let layouts: [&[(&str, &str, &str)]; 3] = [
            &[("n1", "a", "1"), ("n2", "b", "1"), ("n3", "b", "2")],
            &[
                ("n1", "a", "1"),
                ("n2", "a", "2"),
                ("n3", "a", "2"),
                ("n4", "b", "1"),
                ("n5", "", ""),
            ],
            &[
                ("n1", "a", "1"),
                ("n2", "a", "1"),
                ("n3", "b", "1"),
                ("n4", "c", "9"),
            ],
        ];
        for layout in layouts {
            for levels in [
                &["node.labels.zone"][..],
                &["node.labels.zone", "node.labels.rack"],
            ] {
                let ids: Vec<&str> = layout.iter().map(|(n, _, _)| *n).collect();
                let mut s = cluster(&ids);
                for (node, zone, rack) in layout {
                    if let Some(n) = s.nodes.get_mut(*node) {
                        if !zone.is_empty() {
                            n.labels.insert("zone".into(), zone.to_string());
                            n.labels.insert("rack".into(), rack.to_string());
                        }
                    }
                }
                add_service(&mut s, replicated("web", 9));
                let prefs: Vec<_> = levels
                    .iter()
                    .map(|d| flotilla_types::PlacementPreference::spread(*d))
                    .collect();
                if let Some(service) = s.services.get_mut("web") {
                    service.spec.task.preferences = prefs.clone();
                }
                // Everything starts on the first node.
                for slot in 1..=9 {
                    placed(&mut s, "web", slot, "n1", TaskState::Running);
                }
                let mut moves = 0;
                while let Some(id) = rebalance(&s, 1).pop() {
                    moves += 1;
                    assert!(moves <= 20, "{layout:?} {levels:?}: moves go on");
                    let Some(mut t) = s.tasks.remove(&id) else {
                        panic!("no task {id}");
                    };
                    t.node_id = None;
                    t.status.state = TaskState::Pending;
                    t.spec.preferences = prefs.clone();
                    s.tasks.insert(id.clone(), t);
                    let out = crate::scheduler::schedule(&s);
                    let Some((_, node)) = out.assignments.first() else {
                        panic!("{id} not placed: {:?}", out.unplaced);
                    };
                    if let Some(t) = s.tasks.get_mut(&id) {
                        t.node_id = Some(node.clone());
                        t.status.state = TaskState::Running;
                    }
                }
                assert!(moves > 0, "{layout:?}");
            }
        }
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
