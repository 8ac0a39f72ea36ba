use super::*;
use crate::testutil::*;
use flotilla_types::{NodeRole, PlacementPreference};

fn waiting(state: &mut State, service: &str, count: u64) {
    for slot in 1..=count {
        add_task(
            state,
            task(
                &format!("{service}-{slot:02}"),
                service,
                slot,
                1,
                TaskState::Pending,
            ),
        );
    }
}

fn per_node(schedule: &Schedule) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, node) in &schedule.assignments {
        *counts.entry(node.clone()).or_default() += 1;
    }
    counts
}

fn running_on(id: &str, service: &str, node: &str) -> Task {
    let mut t = task(id, service, 99, 1, TaskState::Running);
    t.node_id = Some(node.into());
    t
}

fn constrain(state: &mut State, service: &str, exprs: &[&str]) {
    let constraints: Vec<Constraint> = exprs.iter().filter_map(|e| e.parse().ok()).collect();
    assert_eq!(constraints.len(), exprs.len());
    if let Some(s) = state.services.get_mut(service) {
        s.spec.task.constraints = constraints.clone();
    }
    for t in state.tasks.values_mut().filter(|t| t.service_id == service) {
        t.spec.constraints = constraints.clone();
    }
}

fn node_mut<'a>(state: &'a mut State, id: &str) -> &'a mut Node {
    state
        .nodes
        .get_mut(id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

#[test]
fn spreads_ten_tasks_on_three_nodes() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    add_service(&mut state, replicated("s1", 10));
    waiting(&mut state, "s1", 10);
    let out = schedule(&state);
    assert!(out.unplaced.is_empty());
    let counts = per_node(&out);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [4, 3, 3]);
    // Stable order: by slot, nodes taken in turn.
    assert_eq!(out.assignments[0], ("s1-01".to_string(), "n1".to_string()));
    assert_eq!(out.assignments[1], ("s1-02".to_string(), "n2".to_string()));
    assert_eq!(out.assignments[3], ("s1-04".to_string(), "n1".to_string()));
}

#[test]
fn nodes_already_running_the_service_get_fewer() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    add_service(&mut state, replicated("s1", 6));
    add_task(&mut state, running_on("r1", "s1", "n1"));
    add_task(&mut state, running_on("r2", "s1", "n1"));
    waiting(&mut state, "s1", 4);
    let counts = per_node(&schedule(&state));
    assert_eq!(counts.get("n1"), None);
    assert_eq!(counts.get("n2"), Some(&2));
    assert_eq!(counts.get("n3"), Some(&2));
}

#[test]
fn ties_go_to_the_least_loaded_node() {
    let mut state = cluster(&["n1", "n2"]);
    add_service(&mut state, replicated("other", 1));
    add_service(&mut state, replicated("s1", 1));
    add_task(&mut state, running_on("o1", "other", "n1"));
    waiting(&mut state, "s1", 1);
    assert_eq!(
        schedule(&state).assignments,
        [("s1-01".to_string(), "n2".to_string())]
    );
}

#[test]
fn ended_and_stopping_tasks_do_not_count() {
    let mut state = cluster(&["n1", "n2"]);
    add_service(&mut state, replicated("s1", 3));
    let mut failed = running_on("f", "s1", "n1");
    failed.status.state = TaskState::Failed;
    add_task(&mut state, failed);
    let mut stopping = running_on("s", "s1", "n1");
    stopping.desired_state = DesiredState::Shutdown;
    add_task(&mut state, stopping);
    waiting(&mut state, "s1", 1);
    assert_eq!(
        schedule(&state).assignments,
        [("s1-01".to_string(), "n1".to_string())]
    );
}

#[test]
fn constraints_limit_the_nodes() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    node_mut(&mut state, "n2")
        .labels
        .insert("zone".into(), "a".into());
    node_mut(&mut state, "n3")
        .labels
        .insert("zone".into(), "a".into());
    add_service(&mut state, replicated("s1", 4));
    waiting(&mut state, "s1", 4);
    constrain(&mut state, "s1", &["node.labels.zone==a"]);
    let counts = per_node(&schedule(&state));
    assert_eq!(counts.get("n1"), None);
    assert_eq!(counts.get("n2"), Some(&2));
    assert_eq!(counts.get("n3"), Some(&2));
}

#[test]
fn drained_paused_and_down_nodes_take_nothing() {
    let mut state = cluster(&["n1", "n2", "n3", "n4"]);
    node_mut(&mut state, "n1").availability = Availability::Drain;
    node_mut(&mut state, "n2").availability = Availability::Pause;
    node_mut(&mut state, "n3").state = NodeState::Down;
    add_service(&mut state, replicated("s1", 3));
    waiting(&mut state, "s1", 3);
    let out = schedule(&state);
    assert_eq!(
        per_node(&out).into_iter().collect::<Vec<_>>(),
        [("n4".to_string(), 3)]
    );
}

#[test]
fn reasons_read_like_swarm() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    node_mut(&mut state, "n1").availability = Availability::Pause;
    add_service(&mut state, replicated("s1", 1));
    waiting(&mut state, "s1", 1);
    constrain(&mut state, "s1", &["node.role==manager"]);
    let out = schedule(&state);
    assert!(out.assignments.is_empty());
    assert_eq!(
        out.unplaced,
        [(
            "s1-01".to_string(),
            "no suitable node (1 node not available for new tasks; 2 nodes not matching constraint node.role==manager)"
                .to_string()
        )]
    );
}

#[test]
fn each_node_counts_against_its_first_failing_filter() {
    let mut state = cluster(&["n1", "n2", "n3", "n4", "n5"]);
    node_mut(&mut state, "n1").state = NodeState::Down;
    node_mut(&mut state, "n1").availability = Availability::Drain;
    node_mut(&mut state, "n2").state = NodeState::Down;
    node_mut(&mut state, "n3").availability = Availability::Drain;
    node_mut(&mut state, "n4").role = NodeRole::Manager;
    node_mut(&mut state, "n4")
        .labels
        .insert("zone".into(), "b".into());
    node_mut(&mut state, "n5")
        .labels
        .insert("zone".into(), "b".into());
    add_service(&mut state, replicated("s1", 1));
    waiting(&mut state, "s1", 1);
    constrain(
        &mut state,
        "s1",
        &["node.role==manager", "node.labels.zone==a"],
    );
    let out = schedule(&state);
    assert_eq!(
        out.unplaced[0].1,
        "no suitable node (2 nodes not ready; 1 node not available for new tasks; \
         1 node not matching constraint node.role==manager; \
         1 node not matching constraint node.labels.zone==a)"
    );
}

#[test]
fn an_empty_cluster_says_so() {
    let mut state = cluster(&[]);
    add_service(&mut state, replicated("s1", 1));
    waiting(&mut state, "s1", 1);
    assert_eq!(
        schedule(&state).unplaced,
        [(
            "s1-01".to_string(),
            "no suitable node (no nodes in the cluster)".to_string()
        )]
    );
}

#[test]
fn only_waiting_tasks_are_scheduled() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 5));
    add_task(&mut state, task("new", "s1", 1, 1, TaskState::New));
    add_task(&mut state, task("pending", "s1", 2, 1, TaskState::Pending));
    add_task(
        &mut state,
        task("assigned", "s1", 3, 1, TaskState::Assigned),
    );
    let mut stopped = task("stopped", "s1", 4, 1, TaskState::Pending);
    stopped.desired_state = DesiredState::Shutdown;
    add_task(&mut state, stopped);
    let mut global = task("global", "s1", 0, 1, TaskState::Pending);
    global.node_id = Some("n1".into());
    add_task(&mut state, global);
    let out = schedule(&state);
    let placed: Vec<&str> = out.assignments.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(placed, ["new", "pending"]);
}

#[test]
fn schedule_is_deterministic_and_ordered() {
    let mut state = cluster(&["n3", "n1", "n2"]);
    add_service(&mut state, replicated("b", 3));
    add_service(&mut state, replicated("a", 3));
    waiting(&mut state, "b", 3);
    waiting(&mut state, "a", 3);
    let first = schedule(&state);
    assert_eq!(first, schedule(&state));
    let order: Vec<&str> = first.assignments.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(order, ["a-01", "a-02", "a-03", "b-01", "b-02", "b-03"]);
    // Every node got one task of each service.
    assert_eq!(
        per_node(&first).values().copied().collect::<Vec<_>>(),
        [2, 2, 2]
    );
}

#[test]
fn only_changed_reasons_are_written() {
    let mut state = cluster(&[]);
    add_service(&mut state, replicated("s1", 3));
    waiting(&mut state, "s1", 3);
    let reason = "no suitable node (no nodes in the cluster)";
    if let Some(t) = state.tasks.get_mut("s1-01") {
        t.status.message = reason.into();
    }
    if let Some(t) = state.tasks.get_mut("s1-02") {
        // Same text, but still new: writing it moves the task to pending.
        t.status.state = TaskState::New;
        t.status.message = reason.into();
    }
    let out = schedule(&state);
    let updates = pending_reason_updates(&state, &out);
    let ids: Vec<&str> = updates.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(ids, ["s1-02", "s1-03"]);
}

fn reserve(state: &mut State, service: &str, cpus: u64, memory: u64) {
    let r = flotilla_types::Resources {
        nano_cpus: cpus,
        memory_bytes: memory,
    };
    let waiting = state
        .tasks
        .values_mut()
        .filter(|t| t.service_id == service && t.status.state == TaskState::Pending);
    for t in waiting {
        t.spec.resources.reservations = r;
    }
}

#[test]
fn reservations_fill_nodes_up_to_what_they_have() {
    let mut state = cluster(&["n1", "n2"]);
    for id in ["n1", "n2"] {
        node_mut(&mut state, id).resources = flotilla_types::Resources {
            nano_cpus: 2_000_000_000,
            memory_bytes: 1 << 30,
        };
    }
    // One CPU each: two fit per node, the fifth fits nowhere.
    add_service(&mut state, replicated("s1", 5));
    waiting(&mut state, "s1", 5);
    reserve(&mut state, "s1", 1_000_000_000, 0);
    let out = schedule(&state);
    assert_eq!(per_node(&out).values().copied().collect::<Vec<_>>(), [2, 2]);
    assert_eq!(out.unplaced.len(), 1);
    assert_eq!(
        out.unplaced[0].1,
        "no suitable node (insufficient resources on 2 nodes)"
    );
}

#[test]
fn running_tasks_count_against_reservations_and_unknown_capacity_is_not_checked() {
    let mut state = cluster(&["n1", "n2"]);
    node_mut(&mut state, "n1").resources = flotilla_types::Resources {
        nano_cpus: 0,
        memory_bytes: 512 << 20,
    };
    add_service(&mut state, replicated("s1", 3));
    let mut big = running_on("r1", "s1", "n1");
    big.spec.resources.reservations.memory_bytes = 400 << 20;
    add_task(&mut state, big);
    waiting(&mut state, "s1", 2);
    reserve(&mut state, "s1", 0, 200 << 20);
    // n1 has 112 MiB left; n2 reported nothing, so it takes both.
    let out = schedule(&state);
    assert!(out.unplaced.is_empty());
    assert_eq!(per_node(&out).get("n2"), Some(&2));
    assert_eq!(per_node(&out).get("n1"), None);
}

/// A service publishing a port in host mode puts at most one task on a
/// node, and says why the rest wait.
#[test]
fn host_mode_ports_keep_tasks_on_separate_nodes() {
    let mut state = cluster(&["n1", "n2"]);
    add_service(&mut state, replicated("web", 3));
    waiting(&mut state, "web", 3);
    let host = flotilla_types::PortConfig {
        published: Some(8080),
        mode: flotilla_types::PublishMode::Host,
        ..flotilla_types::PortConfig::target(80)
    };
    for t in state.tasks.values_mut() {
        t.spec.ports = vec![host];
    }
    let s = schedule(&state);
    assert_eq!(
        per_node(&s),
        BTreeMap::from([("n1".to_string(), 1), ("n2".to_string(), 1)])
    );
    assert_eq!(s.unplaced.len(), 1);
    assert_eq!(
        s.unplaced[0].1,
        "no suitable node (host-mode port 8080/tcp already taken by a task of the service on 2 nodes)"
    );
}

fn label(state: &mut State, node: &str, key: &str, value: &str) {
    node_mut(state, node)
        .labels
        .insert(key.into(), value.into());
}

/// Sets the placement preferences of a service and its tasks.
fn prefer(state: &mut State, service: &str, spread: &[&str]) {
    let preferences: Vec<PlacementPreference> = spread
        .iter()
        .map(|d| PlacementPreference::spread(*d))
        .collect();
    if let Some(s) = state.services.get_mut(service) {
        s.spec.task.preferences = preferences.clone();
    }
    for t in state.tasks.values_mut().filter(|t| t.service_id == service) {
        t.spec.preferences = preferences.clone();
    }
}

fn limit_per_node(state: &mut State, service: &str, max: u64) {
    if let Some(s) = state.services.get_mut(service) {
        s.spec.task.max_replicas_per_node = max;
    }
    for t in state.tasks.values_mut().filter(|t| t.service_id == service) {
        t.spec.max_replicas_per_node = max;
    }
}

/// Swarm's example: n1 in zone a, n2 and n3 in zone b, and service s1 of 6
/// waiting tasks spread by zone.
fn six_spread_over_zones_a_b_b() -> State {
    let mut state = cluster(&["n1", "n2", "n3"]);
    label(&mut state, "n1", "zone", "a");
    label(&mut state, "n2", "zone", "b");
    label(&mut state, "n3", "zone", "b");
    add_service(&mut state, replicated("s1", 6));
    waiting(&mut state, "s1", 6);
    prefer(&mut state, "s1", &["node.labels.zone"]);
    state
}

/// Swarm's example: zone a has one node, zone b two; the tasks are
/// divided over the zones, not over the nodes.
#[test]
fn spread_divides_tasks_over_the_values_of_a_label() {
    let state = six_spread_over_zones_a_b_b();
    let out = schedule(&state);
    assert!(out.unplaced.is_empty());
    let counts = per_node(&out);
    assert_eq!(counts.get("n1"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("n2").zip(counts.get("n3")), Some((&2, &1)));
    // The same state, the same placements.
    assert_eq!(out, schedule(&state));
}

#[test]
fn nodes_without_the_label_are_a_group_of_their_own() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    label(&mut state, "n1", "zone", "a");
    label(&mut state, "n2", "zone", "a");
    add_service(&mut state, replicated("s1", 4));
    waiting(&mut state, "s1", 4);
    prefer(&mut state, "s1", &["node.labels.zone"]);
    let counts = per_node(&schedule(&state));
    assert_eq!(
        counts,
        BTreeMap::from([
            ("n1".to_string(), 1),
            ("n2".to_string(), 1),
            ("n3".to_string(), 2)
        ])
    );
}

/// Two preferences: zones, then racks within each zone.
#[test]
fn preferences_nest() {
    let mut state = cluster(&["n1", "n2", "n3", "n4"]);
    for (node, zone, rack) in [
        ("n1", "a", "1"),
        ("n2", "a", "2"),
        ("n3", "a", "2"),
        ("n4", "b", "1"),
    ] {
        label(&mut state, node, "zone", zone);
        label(&mut state, node, "rack", rack);
    }
    add_service(&mut state, replicated("s1", 12));
    waiting(&mut state, "s1", 12);
    prefer(&mut state, "s1", &["node.labels.zone", "node.labels.rack"]);
    let counts = per_node(&schedule(&state));
    // Zone b: 6 on its one node; zone a: 3 in rack 1 (one node), 3 in
    // rack 2 (two nodes).
    assert_eq!(counts.get("n4"), Some(&6), "{counts:?}");
    assert_eq!(counts.get("n1"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("n2").zip(counts.get("n3")), Some((&2, &1)));
    // With the zones alone, zone a's nodes share its tasks evenly.
    prefer(&mut state, "s1", &["node.labels.zone"]);
    let counts = per_node(&schedule(&state));
    assert_eq!(counts.get("n4"), Some(&6));
    for n in ["n1", "n2", "n3"] {
        assert_eq!(counts.get(n), Some(&2), "{n}: {counts:?}");
    }
}

/// Tasks already running count in their groups, and only nodes that
/// pass the filters take new ones.
#[test]
fn spread_counts_running_tasks_and_keeps_to_the_filters() {
    let mut state = cluster(&["n1", "n2", "n3", "n4"]);
    label(&mut state, "n1", "zone", "a");
    label(&mut state, "n2", "zone", "b");
    label(&mut state, "n3", "zone", "c");
    label(&mut state, "n4", "zone", "c");
    node_mut(&mut state, "n4").availability = Availability::Drain;
    add_service(&mut state, replicated("s1", 5));
    let mut on_a = running_on("r1", "s1", "n1");
    on_a.spec.preferences = vec![PlacementPreference::spread("node.labels.zone")];
    add_task(&mut state, on_a.clone());
    on_a.id = "r2".into();
    add_task(&mut state, on_a);
    waiting(&mut state, "s1", 3);
    prefer(&mut state, "s1", &["node.labels.zone"]);
    let counts = per_node(&schedule(&state));
    assert_eq!(
        counts,
        BTreeMap::from([("n2".to_string(), 2), ("n3".to_string(), 1)])
    );
}

#[test]
fn a_limit_per_node_leaves_the_rest_pending_with_the_reason() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    add_service(&mut state, replicated("s1", 4));
    // A task that ended does not count; one running does.
    let mut failed = running_on("f", "s1", "n1");
    failed.status.state = TaskState::Failed;
    add_task(&mut state, failed);
    add_task(&mut state, running_on("r1", "s1", "n2"));
    waiting(&mut state, "s1", 3);
    limit_per_node(&mut state, "s1", 1);
    let out = schedule(&state);
    assert_eq!(
        per_node(&out),
        BTreeMap::from([("n1".to_string(), 1), ("n3".to_string(), 1)])
    );
    assert_eq!(
        out.unplaced,
        [(
            "s1-03".to_string(),
            "no suitable node (max replicas per node limit exceeded on 3 nodes: each runs 1 task of the service)"
                .to_string()
        )]
    );
    // Two per node: all fit.
    limit_per_node(&mut state, "s1", 2);
    let out = schedule(&state);
    assert!(out.unplaced.is_empty());
    assert_eq!(out.assignments.len(), 3);
    // Other services do not count against the limit.
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("other", 1));
    add_service(&mut state, replicated("s1", 1));
    add_task(&mut state, running_on("o1", "other", "n1"));
    waiting(&mut state, "s1", 1);
    limit_per_node(&mut state, "s1", 1);
    assert_eq!(schedule(&state).assignments.len(), 1);
}

#[test]
fn a_limit_per_node_and_spread_together() {
    let mut state = six_spread_over_zones_a_b_b();
    limit_per_node(&mut state, "s1", 2);
    let out = schedule(&state);
    // Zone a's one node is full at 2: the rest go to zone b, 2 a node,
    // and the sixth waits.
    assert_eq!(
        per_node(&out),
        BTreeMap::from([
            ("n1".to_string(), 2),
            ("n2".to_string(), 2),
            ("n3".to_string(), 2)
        ])
    );
    assert!(out.unplaced.is_empty());
    waiting(&mut state, "s1", 7);
    prefer(&mut state, "s1", &["node.labels.zone"]);
    limit_per_node(&mut state, "s1", 2);
    let out = schedule(&state);
    assert_eq!(out.unplaced.len(), 1);
    assert!(
        out.unplaced[0]
            .1
            .contains("max replicas per node limit exceeded on 3 nodes"),
        "{:?}",
        out.unplaced
    );
}
