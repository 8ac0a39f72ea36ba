use super::*;
use crate::testutil::*;
use flotilla_types::{RestartCondition, ServiceMode};

fn run(state: &State, now: UnixMs) -> Reconciliation {
    reconcile(state, now, &mut counter())
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn set_policy(state: &mut State, service: &str, policy: RestartPolicy) {
    if let Some(s) = state.services.get_mut(service) {
        s.spec.task.restart = policy;
    }
}

fn ended(id: &str, slot: u64, index: u64, s: TaskState, at: UnixMs) -> Task {
    let mut t = task(id, "s1", slot, index, s);
    t.status.timestamp = at;
    t
}

fn history(id: &str, slot: u64, index: u64) -> Task {
    let mut t = task(id, "s1", slot, index, TaskState::Failed);
    t.desired_state = DesiredState::Shutdown;
    t
}

/// Applies a reconciliation the way the orchestrator loop proposes it.
fn apply(state: &mut State, rec: &Reconciliation) {
    apply_decision(state, rec, 0);
}

/// No slot of any service has two tasks that are desired running and not
/// ended.
fn assert_one_live_task_per_slot(state: &State) {
    let mut seen = BTreeSet::new();
    for t in state.tasks.values() {
        if t.desired_state == DesiredState::Running && !t.status.state.is_terminal() {
            assert!(
                seen.insert((t.service_id.clone(), t.slot_key())),
                "two live tasks in {:?}",
                t.slot_key()
            );
        }
    }
}

#[test]
fn three_replicas_from_empty_create_slots_1_to_3() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 3));
    let rec = run(&state, 42);
    assert_eq!(
        rec.create.iter().map(|t| t.slot).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        rec.create.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["id1", "id2", "id3"]
    );
    assert!(rec.shutdown.is_empty() && rec.delete.is_empty());
    assert_eq!(rec.next_wakeup, None);
    let t = &rec.create[0];
    assert_eq!(t.service_id, "s1");
    assert_eq!(t.service_name, "s1");
    assert_eq!(t.node_id, None);
    assert_eq!(t.desired_state, DesiredState::Running);
    assert_eq!(t.status, TaskStatus::new(TaskState::Pending, 42, "created"));
    assert_eq!(t.spec, template());
    assert_eq!(t.service_version, 1);
    assert_eq!(t.created_at, 42);
    assert_eq!(t.created_index, 0);
    assert!(t.restart_history.is_empty());
}

#[test]
fn live_tasks_are_left_alone() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 3));
    add_task(&mut state, task("a", "s1", 1, 1, TaskState::Pending));
    add_task(&mut state, task("b", "s1", 2, 1, TaskState::Assigned));
    add_task(&mut state, task("c", "s1", 3, 1, TaskState::Running));
    assert_eq!(run(&state, 10), Reconciliation::default());
}

#[test]
fn scale_down_shuts_down_slots_above_replicas() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 1));
    for slot in 1..=3 {
        add_task(
            &mut state,
            task(&format!("t{slot}"), "s1", slot, 1, TaskState::Running),
        );
    }
    let rec = run(&state, 10);
    assert_eq!(rec.shutdown, ids(&["t2", "t3"]));
    assert!(rec.create.is_empty() && rec.delete.is_empty());
}

#[test]
fn scale_up_fills_only_missing_slots() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 3));
    add_task(&mut state, task("t2", "s1", 2, 1, TaskState::Running));
    let rec = run(&state, 10);
    assert_eq!(
        rec.create.iter().map(|t| t.slot).collect::<Vec<_>>(),
        [1, 3]
    );
    assert!(rec.shutdown.is_empty());
}

#[test]
fn restart_waits_for_the_delay() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 1));
    set_policy(
        &mut state,
        "s1",
        RestartPolicy {
            delay_ms: 5_000,
            ..no_delay()
        },
    );
    add_task(&mut state, ended("t1", 1, 1, TaskState::Failed, 1_000));

    let early = run(&state, 3_000);
    assert!(early.is_empty());
    assert_eq!(early.next_wakeup, Some(6_000));

    let due = run(&state, 6_000);
    assert_eq!(due.shutdown, ids(&["t1"]));
    assert_eq!(due.create.len(), 1);
    assert_eq!(due.create[0].slot, 1);
    assert_eq!(due.create[0].restart_history, [6_000]);
    assert_eq!(due.next_wakeup, None);
}

#[test]
fn next_wakeup_is_the_earliest_due_time() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 2));
    set_policy(
        &mut state,
        "s1",
        RestartPolicy {
            delay_ms: 5_000,
            ..no_delay()
        },
    );
    add_task(&mut state, ended("t1", 1, 1, TaskState::Failed, 2_000));
    add_task(&mut state, ended("t2", 2, 1, TaskState::Complete, 1_000));
    assert_eq!(run(&state, 3_000).next_wakeup, Some(6_000));
}

#[test]
fn on_failure_does_not_restart_complete_tasks() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 3));
    let policy = RestartPolicy {
        condition: RestartCondition::OnFailure,
        ..no_delay()
    };
    set_policy(&mut state, "s1", policy);
    add_task(&mut state, ended("done", 1, 1, TaskState::Complete, 0));
    add_task(&mut state, ended("failed", 2, 1, TaskState::Failed, 0));
    add_task(&mut state, ended("rejected", 3, 1, TaskState::Rejected, 0));
    let rec = run(&state, 10);
    assert_eq!(rec.shutdown, ids(&["failed", "rejected"]));
    assert_eq!(
        rec.create.iter().map(|t| t.slot).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(rec.next_wakeup, None);
}

#[test]
fn condition_none_never_restarts() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 3));
    let policy = RestartPolicy {
        condition: RestartCondition::None,
        ..no_delay()
    };
    set_policy(&mut state, "s1", policy);
    add_task(&mut state, ended("a", 1, 1, TaskState::Complete, 0));
    add_task(&mut state, ended("b", 2, 1, TaskState::Failed, 0));
    add_task(&mut state, ended("c", 3, 1, TaskState::Rejected, 0));
    let rec = run(&state, 1_000_000);
    assert_eq!(rec, Reconciliation::default());
}

#[test]
fn condition_any_restarts_complete_tasks() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 1));
    add_task(&mut state, ended("a", 1, 1, TaskState::Complete, 0));
    let rec = run(&state, 10);
    assert_eq!(rec.shutdown, ids(&["a"]));
    assert_eq!(rec.create.len(), 1);
}

#[test]
fn max_attempts_without_window_counts_every_restart() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 2));
    let policy = RestartPolicy {
        max_attempts: 2,
        ..no_delay()
    };
    set_policy(&mut state, "s1", policy);
    let mut spent = ended("spent", 1, 1, TaskState::Failed, 50);
    spent.restart_history = vec![10, 20];
    let mut fresh = ended("fresh", 2, 1, TaskState::Failed, 50);
    fresh.restart_history = vec![10];
    add_task(&mut state, spent);
    add_task(&mut state, fresh);
    let rec = run(&state, 1_000_000);
    assert_eq!(rec.shutdown, ids(&["fresh"]));
    assert_eq!(rec.create.len(), 1);
    assert_eq!(rec.create[0].slot, 2);
    assert_eq!(rec.create[0].restart_history, [10, 1_000_000]);
}

#[test]
fn max_attempts_with_window_counts_recent_restarts_only() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 2));
    let policy = RestartPolicy {
        max_attempts: 2,
        window_ms: 1_000,
        ..no_delay()
    };
    set_policy(&mut state, "s1", policy);
    // Two restarts long before it failed: outside the window.
    let mut old = ended("old", 1, 1, TaskState::Failed, 5_000);
    old.restart_history = vec![100, 200];
    // Two restarts shortly before it failed: the slot gives up.
    let mut busy = ended("busy", 2, 1, TaskState::Failed, 5_000);
    busy.restart_history = vec![4_500, 4_800];
    add_task(&mut state, old);
    add_task(&mut state, busy);

    let rec = run(&state, 5_000);
    assert_eq!(rec.shutdown, ids(&["old"]));
    assert_eq!(rec.create.len(), 1);
    assert_eq!(rec.create[0].slot, 1);
    // Restarts outside the window are dropped from the history.
    assert_eq!(rec.create[0].restart_history, [5_000]);

    // A slot that gave up stays dead after its restarts leave the window.
    let later = run(&state, 100_000);
    assert!(!later.shutdown.contains(&"busy".to_string()));
    assert!(later.create.iter().all(|t| t.slot != 2));
}

#[test]
fn a_crash_loop_stops_after_max_attempts() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 1));
    let policy = RestartPolicy {
        max_attempts: 3,
        ..no_delay()
    };
    set_policy(&mut state, "s1", policy);
    state.index = 1;
    let mut now = 1_000;
    let mut runs = 0;
    let mut ids = counter();
    for _ in 0..10 {
        let rec = reconcile(&state, now, &mut ids);
        apply(&mut state, &rec);
        assert_one_live_task_per_slot(&state);
        let live: Vec<String> = state
            .tasks
            .values()
            .filter(|t| t.desired_state == DesiredState::Running && !t.status.state.is_terminal())
            .map(|t| t.id.clone())
            .collect();
        if let [id] = &live[..] {
            runs += 1;
            now += 100;
            if let Some(t) = state.tasks.get_mut(id) {
                t.status = TaskStatus::new(TaskState::Failed, now, "exit 1");
            }
        }
        now += 100;
    }
    // The first run and three restarts.
    assert_eq!(runs, 4);
}

#[test]
fn shutdown_and_orphaned_are_replaced_regardless_of_policy() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 2));
    let policy = RestartPolicy {
        condition: RestartCondition::None,
        delay_ms: 60_000,
        max_attempts: 1,
        window_ms: 0,
    };
    set_policy(&mut state, "s1", policy);
    let mut stopped = ended("stopped", 1, 1, TaskState::Shutdown, 1_000);
    stopped.restart_history = vec![7];
    add_task(&mut state, stopped);
    add_task(
        &mut state,
        ended("orphan", 2, 1, TaskState::Orphaned, 1_000),
    );
    let rec = run(&state, 1_001);
    assert_eq!(rec.shutdown, ids(&["orphan", "stopped"]));
    assert_eq!(
        rec.create.iter().map(|t| t.slot).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(rec.create[0].restart_history, [7]);
    assert_eq!(rec.next_wakeup, None);
}

#[test]
fn history_is_capped_per_slot() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 1));
    for i in 1..=7 {
        add_task(&mut state, history(&format!("h{i}"), 1, i));
    }
    add_task(&mut state, task("current", "s1", 1, 8, TaskState::Running));
    // A dead slot's current task is not history, whatever its age.
    let rec = run(&state, 10);
    assert_eq!(rec.delete, ids(&["h1", "h2"]));
    assert!(rec.create.is_empty() && rec.shutdown.is_empty());
}

#[test]
fn history_in_removed_slots_is_capped_too() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 1));
    add_task(&mut state, task("current", "s1", 1, 1, TaskState::Running));
    for i in 1..=6 {
        add_task(&mut state, history(&format!("h{i}"), 4, i));
    }
    let rec = run(&state, 10);
    assert_eq!(rec.delete, ids(&["h1"]));
}

#[test]
fn tasks_still_stopping_are_not_history() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 1));
    for i in 1..=6 {
        let mut t = task(&format!("s{i}"), "s1", 1, i, TaskState::Running);
        t.desired_state = DesiredState::Shutdown;
        add_task(&mut state, t);
    }
    add_task(&mut state, task("current", "s1", 1, 9, TaskState::Running));
    assert!(run(&state, 10).delete.is_empty());
}

#[test]
fn unplaced_tasks_desired_shutdown_are_deleted() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 1));
    add_task(&mut state, task("current", "s1", 1, 1, TaskState::Running));
    let mut waiting = task("waiting", "s1", 2, 1, TaskState::Pending);
    waiting.desired_state = DesiredState::Shutdown;
    add_task(&mut state, waiting);
    let rec = run(&state, 10);
    assert_eq!(rec.delete, ids(&["waiting"]));
    assert!(rec.shutdown.is_empty());
}

#[test]
fn removed_service_tasks_are_shut_down_then_deleted() {
    let mut state = cluster(&["n1"]);
    add_task(
        &mut state,
        task("running", "gone", 1, 1, TaskState::Running),
    );
    let mut stopping = task("stopping", "gone", 2, 1, TaskState::Running);
    stopping.desired_state = DesiredState::Shutdown;
    add_task(&mut state, stopping);
    add_task(
        &mut state,
        task("waiting", "gone", 3, 1, TaskState::Pending),
    );
    let mut done = task("done", "gone", 4, 1, TaskState::Shutdown);
    done.desired_state = DesiredState::Shutdown;
    add_task(&mut state, done);
    add_task(&mut state, task("failed", "gone", 5, 1, TaskState::Failed));

    let rec = run(&state, 10);
    assert!(rec.create.is_empty());
    assert_eq!(rec.shutdown, ids(&["running", "waiting"]));
    assert_eq!(rec.delete, ids(&["done", "failed"]));

    // Once stopped, everything goes.
    state.index = 1;
    apply(&mut state, &rec);
    for t in state.tasks.values_mut() {
        if t.node_id.is_some() {
            t.status.state = TaskState::Shutdown;
        }
    }
    let rec = run(&state, 20);
    assert_eq!(rec.delete, ids(&["running", "stopping", "waiting"]));
    apply(&mut state, &rec);
    assert!(state.tasks.is_empty());
}

#[test]
fn older_duplicates_in_a_slot_are_shut_down() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 1));
    add_task(&mut state, task("older", "s1", 1, 1, TaskState::Running));
    add_task(&mut state, task("newer", "s1", 1, 2, TaskState::Running));
    let rec = run(&state, 10);
    assert_eq!(rec.shutdown, ids(&["older"]));
    assert!(rec.create.is_empty());
}

#[test]
fn replicated_tasks_leave_drained_and_removed_nodes() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    add_service(&mut state, replicated("s1", 4));
    let on = |id: &str, slot, node: &str| {
        let mut t = task(id, "s1", slot, 1, TaskState::Running);
        t.node_id = Some(node.into());
        t
    };
    add_task(&mut state, on("ok", 1, "n1"));
    add_task(&mut state, on("drained", 2, "n2"));
    add_task(&mut state, on("down", 3, "n3"));
    add_task(&mut state, on("lost", 4, "n9"));
    if let Some(n) = state.nodes.get_mut("n2") {
        n.availability = Availability::Drain;
    }
    if let Some(n) = state.nodes.get_mut("n3") {
        n.state = NodeState::Down;
    }
    let rec = run(&state, 10);
    // A down node's tasks are orphaned by whoever watches heartbeats.
    assert_eq!(rec.shutdown, ids(&["drained", "lost"]));
    assert_eq!(
        rec.create.iter().map(|t| t.slot).collect::<Vec<_>>(),
        [2, 4]
    );
}

fn zoned(state: &mut State, node: &str, zone: &str) {
    if let Some(n) = state.nodes.get_mut(node) {
        n.labels.insert("zone".into(), zone.into());
    }
}

#[test]
fn global_runs_one_task_per_eligible_node() {
    let mut state = cluster(&["n1", "n2", "n3", "n4", "n5"]);
    for n in ["n1", "n2", "n4", "n5"] {
        zoned(&mut state, n, "a");
    }
    zoned(&mut state, "n3", "b");
    if let Some(n) = state.nodes.get_mut("n2") {
        n.availability = Availability::Drain;
    }
    if let Some(n) = state.nodes.get_mut("n4") {
        n.state = NodeState::Down;
    }
    if let Some(n) = state.nodes.get_mut("n5") {
        n.availability = Availability::Pause;
    }
    let mut svc = global("g");
    svc.spec.task.constraints = vec!["node.labels.zone==a"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"))];
    add_service(&mut state, svc);

    let rec = run(&state, 7);
    assert_eq!(rec.create.len(), 1);
    let t = &rec.create[0];
    assert_eq!(t.slot, 0);
    assert_eq!(t.node_id.as_deref(), Some("n1"));
    assert_eq!(
        t.status,
        TaskStatus::new(TaskState::Assigned, 7, "assigned")
    );
    assert_eq!(t.slot_key(), SlotKey::Node("n1".into()));
}

#[test]
fn global_tasks_leave_ineligible_nodes_and_stay_on_paused_ones() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    add_service(&mut state, global("g"));
    let on = |id: &str, node: &str, s: TaskState| {
        let mut t = task(id, "g", 0, 1, s);
        t.node_id = Some(node.into());
        t
    };
    add_task(&mut state, on("ok", "n1", TaskState::Running));
    add_task(&mut state, on("drained", "n2", TaskState::Running));
    add_task(&mut state, on("paused", "n3", TaskState::Failed));
    add_task(&mut state, on("gone", "n9", TaskState::Running));
    if let Some(n) = state.nodes.get_mut("n2") {
        n.availability = Availability::Drain;
    }
    if let Some(n) = state.nodes.get_mut("n3") {
        n.availability = Availability::Pause;
    }
    let rec = run(&state, 10);
    assert_eq!(rec.shutdown, ids(&["drained", "gone"]));
    // Nothing new on a paused node, not even a restart.
    assert!(rec.create.is_empty());
}

#[test]
fn global_failed_task_restarts_on_its_node() {
    let mut state = cluster(&["n1", "n2"]);
    add_service(&mut state, global("g"));
    let mut t = task("t", "g", 0, 1, TaskState::Failed);
    t.node_id = Some("n2".into());
    add_task(&mut state, t);
    let rec = run(&state, 10);
    assert_eq!(rec.shutdown, ids(&["t"]));
    let nodes: Vec<_> = rec.create.iter().map(|t| t.node_id.clone()).collect();
    assert_eq!(nodes, [Some("n1".to_string()), Some("n2".to_string())]);
}

#[test]
fn spec_change_replaces_tasks() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 2));
    let mut a = task("a", "s1", 1, 1, TaskState::Running);
    a.restart_history = vec![3];
    add_task(&mut state, a);
    add_task(&mut state, ended("b", 2, 1, TaskState::Complete, 0));
    if let Some(s) = state.services.get_mut("s1") {
        s.spec.task.command = vec!["sleep".into(), "200".into()];
        s.spec.task.restart.condition = RestartCondition::None;
        // All at once: pacing has its own tests.
        s.spec.update.parallelism = 0;
        s.version = 5;
    }
    let rec = run(&state, 10);
    assert_eq!(rec.shutdown, ids(&["a", "b"]));
    assert_eq!(rec.create.len(), 2);
    for t in &rec.create {
        assert_eq!(t.service_version, 5);
        assert_eq!(t.spec.command, ["sleep", "200"]);
        assert!(t.restart_history.is_empty());
    }
}

#[test]
fn replicas_only_change_keeps_tasks() {
    let mut state = cluster(&["n1"]);
    add_service(&mut state, replicated("s1", 2));
    add_task(&mut state, task("a", "s1", 1, 1, TaskState::Running));
    add_task(&mut state, task("b", "s1", 2, 1, TaskState::Running));
    if let Some(s) = state.services.get_mut("s1") {
        s.spec.mode = ServiceMode::Replicated { replicas: 3 };
        s.spec.labels.insert("tier".into(), "web".into());
        s.version = 5;
    }
    let rec = run(&state, 10);
    assert!(rec.shutdown.is_empty());
    assert_eq!(rec.create.iter().map(|t| t.slot).collect::<Vec<_>>(), [3]);
    assert_eq!(rec.create[0].service_version, 5);
}

#[test]
fn out_of_date_needs_a_newer_version_and_a_different_template() {
    let mut svc = replicated("s1", 1);
    let t = task("a", "s1", 1, 1, TaskState::Running);
    assert!(!is_out_of_date(&svc, &t));
    svc.version = 2;
    assert!(!is_out_of_date(&svc, &t));
    svc.spec.task.env.insert("A".into(), "1".into());
    assert!(is_out_of_date(&svc, &t));
    svc.version = 1;
    assert!(!is_out_of_date(&svc, &t));
}

#[test]
fn mode_change_moves_tasks_to_new_slots() {
    let mut state = cluster(&["n1", "n2"]);
    add_service(&mut state, replicated("s1", 2));
    add_task(&mut state, task("r1", "s1", 1, 1, TaskState::Running));
    add_task(&mut state, task("r2", "s1", 2, 1, TaskState::Running));
    if let Some(s) = state.services.get_mut("s1") {
        s.spec.mode = ServiceMode::Global;
        s.version = 5;
    }
    let rec = run(&state, 10);
    assert_eq!(rec.shutdown, ids(&["r1", "r2"]));
    assert_eq!(rec.create.iter().filter(|t| t.slot == 0).count(), 2);
}

#[test]
fn output_is_deterministic_and_sorted() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    add_service(&mut state, replicated("b", 4));
    add_service(&mut state, replicated("a", 2));
    add_service(&mut state, global("g"));
    for slot in 1..=6 {
        add_task(
            &mut state,
            task(&format!("t{}", 7 - slot), "a", slot, 1, TaskState::Running),
        );
    }
    let first = run(&state, 10);
    assert_eq!(first, run(&state, 10));
    let mut sorted = first.shutdown.clone();
    sorted.sort();
    assert_eq!(first.shutdown, sorted);
    let keys: Vec<_> = first
        .create
        .iter()
        .map(|t| (t.service_id.clone(), t.slot, t.node_id.clone()))
        .collect();
    let mut sorted_keys = keys.clone();
    sorted_keys.sort();
    assert_eq!(keys, sorted_keys);
}

#[test]
fn converges_and_keeps_one_live_task_per_slot() {
    let mut state = cluster(&["n1", "n2"]);
    add_service(&mut state, replicated("s1", 3));
    add_service(&mut state, global("g"));
    state.index = 1;
    let mut ids = counter();
    for round in 0..3 {
        let rec = reconcile(&state, 10 + round, &mut ids);
        apply(&mut state, &rec);
        assert_one_live_task_per_slot(&state);
    }
    assert!(run(&state, 100).is_empty());
    assert_eq!(state.tasks.len(), 5);
    // Scale down, change the template, drain a node: still one per slot.
    if let Some(s) = state.services.get_mut("s1") {
        s.spec.mode = ServiceMode::Replicated { replicas: 2 };
        s.spec.task.command = vec!["true".into()];
        // The tasks never run here, so a paced update would wait forever.
        s.spec.update.parallelism = 0;
        s.version = state.index + 1;
    }
    if let Some(n) = state.nodes.get_mut("n2") {
        n.availability = Availability::Drain;
    }
    for round in 0..3 {
        let rec = reconcile(&state, 200 + round, &mut ids);
        apply(&mut state, &rec);
        assert_one_live_task_per_slot(&state);
    }
    assert!(run(&state, 300).is_empty());
    let live: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| t.desired_state == DesiredState::Running)
        .collect();
    let web: Vec<u64> = live
        .iter()
        .filter(|t| t.service_id == "s1")
        .map(|t| t.slot)
        .collect();
    assert_eq!(web, [1, 2]);
    assert!(live
        .iter()
        .filter(|t| t.service_id == "s1")
        .all(|t| t.spec.command == ["true"]));
    let global: Vec<_> = live
        .iter()
        .filter(|t| t.service_id == "g")
        .map(|t| t.node_id.clone())
        .collect();
    assert_eq!(global, [Some("n1".to_string())]);
}

/// The fixture's policy: restart any ended task, at once, without limit.
fn no_delay() -> RestartPolicy {
    template().restart
}
