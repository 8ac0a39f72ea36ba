//! Rolling updates through the store: the state is built and changed with
//! real commands, the agent and scheduler are played by hand, and time is
//! an argument.

use std::collections::BTreeMap;

use flotilla_store::{Command, State, StoreError};
use flotilla_types::{
    DesiredState, FailureAction, Health, HealthCheck, HealthTest, Ratio, ServiceMode, ServiceSpec,
    SlotKey, Task, TaskState, TaskStatus, UnixMs, UpdateOrder, UpdateState,
};

use crate::orchestrator::{reconcile, Reconciliation};
use crate::testutil::{apply_decision, cluster, counter, template};

/// A cluster of one node and the service `s1`, with an agent that does
/// only what the test says.
struct Sim {
    state: State,
    ids: Box<dyn FnMut() -> String>,
    now: UnixMs,
}

impl Sim {
    /// `replicas` running tasks of the service, made from `spec` with the
    /// fixture's template.
    fn new(replicas: u64, configure: impl FnOnce(&mut ServiceSpec)) -> Sim {
        Sim::with_mode(&["n1"], ServiceMode::Replicated { replicas }, configure)
    }

    fn with_mode(
        nodes: &[&str],
        mode: ServiceMode,
        configure: impl FnOnce(&mut ServiceSpec),
    ) -> Sim {
        let mut spec = ServiceSpec {
            name: "s1".into(),
            mode,
            task: template(),
            ..ServiceSpec::default()
        };
        configure(&mut spec);
        let mut sim = Sim {
            state: cluster(nodes),
            ids: Box::new(counter()),
            now: 1_000,
        };
        sim.commit(Command::CreateService {
            id: "s1".into(),
            spec,
            at: sim.now,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        sim.step();
        sim.run_all();
        sim.now += 10_000;
        assert!(sim.decide().is_empty());
        sim
    }

    fn commit(&mut self, command: Command) -> Result<Option<String>, StoreError> {
        let index = self.state.index + 1;
        self.state.apply(index, &command).0
    }

    fn decide(&mut self) -> Reconciliation {
        reconcile(&self.state, self.now, &mut self.ids)
    }

    /// Decides and applies the decision, as the orchestrator loop does.
    fn step(&mut self) -> Reconciliation {
        let rec = self.decide();
        apply_decision(&mut self.state, &rec, self.now);
        rec
    }

    /// `service update`: a new command line, so a new task template.
    fn update(&mut self, arg: &str) {
        let Some(service) = self.state.services.get("s1") else {
            panic!("no service");
        };
        let mut spec = service.spec.clone();
        spec.task.command = vec!["sleep".into(), arg.into()];
        self.commit(Command::UpdateService {
            id: "s1".into(),
            spec,
            expected_version: None,
            at: self.now,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The agent: tasks still to start run now (placed on their node, or
    /// `n1`), health `starting` if they have a check; tasks desired
    /// shutdown stop.
    fn run_all(&mut self) {
        let now = self.now;
        for t in self.state.tasks.values_mut() {
            if t.status.state.is_terminal() {
                continue;
            }
            if t.desired_state == DesiredState::Shutdown {
                t.status = TaskStatus::new(TaskState::Shutdown, now, "stopped");
            } else if t.status.state < TaskState::Running {
                t.node_id.get_or_insert_with(|| "n1".into());
                t.status = TaskStatus::new(TaskState::Running, now, "started");
                t.status.health = t.spec.health.as_ref().map(|_| Health::Starting);
            }
        }
    }

    fn set(&mut self, id: &str, state: TaskState, health: Option<Health>) {
        let now = self.now;
        if let Some(t) = self.state.tasks.get_mut(id) {
            if t.status.state != state {
                t.status = TaskStatus::new(state, now, "");
            }
            t.status.health = health;
        }
    }

    /// Tasks desired running, by slot, oldest first.
    fn slots(&self) -> BTreeMap<SlotKey, Vec<&Task>> {
        let mut slots: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
        for t in self.state.tasks.values() {
            if t.desired_state == DesiredState::Running {
                slots.entry(t.slot_key()).or_default().push(t);
            }
        }
        for tasks in slots.values_mut() {
            tasks.sort_by_key(|t| t.created_index);
        }
        slots
    }

    /// IDs of the tasks of the current template desired running.
    fn updated(&self) -> Vec<String> {
        let template = &self.state.services["s1"].spec.task;
        self.state
            .tasks
            .values()
            .filter(|t| t.desired_state == DesiredState::Running && t.spec == *template)
            .map(|t| t.id.clone())
            .collect()
    }

    fn status(&self) -> Option<UpdateState> {
        let service = &self.state.services["s1"];
        service.update_status.as_ref().map(|s| s.state)
    }

    fn message(&self) -> String {
        let service = &self.state.services["s1"];
        service
            .update_status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_default()
    }

    /// Runs the agent and steps until nothing is left to do, at most
    /// `rounds` times, moving the clock to each wake-up.
    fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.run_all();
            let rec = self.step();
            if rec.is_empty() {
                match rec.next_wakeup {
                    Some(due) => self.now = due.max(self.now + 1),
                    None => return,
                }
            } else {
                self.now += 1;
            }
        }
        panic!("no rest after {rounds} rounds");
    }
}

fn slot_numbers(rec: &Reconciliation) -> Vec<u64> {
    rec.create.iter().map(|t| t.slot).collect()
}

#[test]
fn parallelism_one_replaces_one_slot_at_a_time() {
    let mut sim = Sim::new(3, |_| {});
    sim.update("200");
    assert_eq!(sim.status(), Some(UpdateState::Updating));

    let first = sim.step();
    assert_eq!(slot_numbers(&first), [1]);
    assert_eq!(first.shutdown.len(), 1);
    // Not ready yet: the next slot waits.
    assert!(sim.decide().is_empty());

    sim.now += 100;
    sim.run_all();
    let second = sim.step();
    assert_eq!(slot_numbers(&second), [2]);
    sim.run_all();
    let third = sim.step();
    assert_eq!(slot_numbers(&third), [3]);
    assert!(third.update_status.is_empty());
    sim.run_all();
    assert_eq!(sim.updated().len(), 3);
}

#[test]
fn parallelism_two_starts_two_and_refills_as_they_become_ready() {
    let mut sim = Sim::new(5, |spec| spec.update.parallelism = 2);
    sim.update("200");
    let first = sim.step();
    assert_eq!(slot_numbers(&first), [1, 2]);
    assert!(sim.decide().is_empty());

    // One of the two is ready: one more may start.
    let slot1 = first.create[0].id.clone();
    sim.set(&slot1, TaskState::Running, None);
    assert_eq!(slot_numbers(&sim.step()), [3]);
    sim.run_all();
    assert_eq!(slot_numbers(&sim.step()), [4, 5]);
}

#[test]
fn parallelism_zero_replaces_every_slot_at_once() {
    let mut sim = Sim::new(4, |spec| spec.update.parallelism = 0);
    sim.update("200");
    assert_eq!(slot_numbers(&sim.step()), [1, 2, 3, 4]);
}

#[test]
fn delay_holds_the_next_batch_and_sets_the_wakeup() {
    let mut sim = Sim::new(2, |spec| spec.update.delay_ms = 10_000);
    sim.update("200");
    assert_eq!(slot_numbers(&sim.step()), [1]);
    sim.now += 200;
    let ready_at = sim.now;
    sim.run_all();

    sim.now += 5_000;
    let held = sim.decide();
    assert!(held.is_empty());
    assert_eq!(held.next_wakeup, Some(ready_at + 10_000));

    sim.now = ready_at + 10_000;
    assert_eq!(slot_numbers(&sim.step()), [2]);
}

#[test]
fn completion_waits_for_the_monitor_period() {
    let mut sim = Sim::new(2, |spec| {
        spec.update.parallelism = 0;
        spec.update.monitor_ms = 5_000;
    });
    sim.update("200");
    sim.step();
    sim.now += 100;
    let ready_at = sim.now;
    sim.run_all();

    let early = sim.step();
    assert!(early.is_empty());
    assert_eq!(early.next_wakeup, Some(ready_at + 5_000));
    assert_eq!(sim.status(), Some(UpdateState::Updating));

    sim.now = ready_at + 5_000;
    let done = sim.step();
    let (id, version, status) = &done.update_status[0];
    assert_eq!(
        (id.as_str(), *version),
        ("s1", sim.state.services["s1"].version)
    );
    assert_eq!(status.state, UpdateState::Completed);
    assert_eq!(status.message, "update completed");
    assert_eq!(status.completed_at, Some(sim.now));
    assert_eq!(sim.status(), Some(UpdateState::Completed));
    // Said once.
    sim.now += 1_000;
    assert!(sim.decide().is_empty());
}

#[test]
fn a_whole_update_settles_completed_with_every_slot_updated() {
    let mut sim = Sim::new(4, |spec| spec.update.delay_ms = 1_000);
    sim.update("200");
    sim.settle(50);
    assert_eq!(sim.status(), Some(UpdateState::Completed));
    assert_eq!(sim.updated().len(), 4);
    assert!(sim.slots().values().all(|tasks| tasks.len() == 1));
}

#[test]
fn stop_first_stops_the_old_task_with_the_new_one_created() {
    let mut sim = Sim::new(1, |_| {});
    let old = sim.state.tasks.keys().next().cloned().unwrap_or_default();
    sim.update("200");
    let rec = sim.step();
    assert_eq!(rec.shutdown, [old]);
    assert_eq!(slot_numbers(&rec), [1]);
}

#[test]
fn start_first_keeps_the_old_task_until_the_new_one_is_ready() {
    let mut sim = Sim::new(2, |spec| {
        spec.update.order = UpdateOrder::StartFirst;
        spec.task.health = Some(HealthCheck::new(HealthTest::Tcp { port: 80 }));
    });
    // The fixture's tasks passed their checks long ago.
    let old: Vec<String> = sim.state.tasks.keys().cloned().collect();
    for id in &old {
        sim.set(id, TaskState::Running, Some(Health::Healthy));
    }
    sim.update("200");
    let rec = sim.step();
    assert_eq!(slot_numbers(&rec), [1]);
    assert!(rec.shutdown.is_empty());

    // Running but not healthy yet: both stay, nothing else starts.
    sim.run_all();
    assert!(sim.decide().is_empty());
    assert_eq!(sim.slots()[&SlotKey::Replica(1)].len(), 2);

    // Healthy: the old one goes and the next slot starts, in one round.
    let new = rec.create[0].id.clone();
    sim.set(&new, TaskState::Running, Some(Health::Healthy));
    let rec = sim.step();
    assert_eq!(rec.shutdown, [old[0].clone()]);
    assert_eq!(slot_numbers(&rec), [2]);
}

#[test]
fn start_first_never_drops_a_slot_below_one_ready_task_nor_above_two() {
    let mut sim = Sim::new(3, |spec| {
        spec.update.order = UpdateOrder::StartFirst;
        spec.update.parallelism = 2;
        spec.update.monitor_ms = 0;
    });
    sim.update("200");
    for _ in 0..20 {
        sim.step();
        for (slot, tasks) in sim.slots() {
            assert!(tasks.len() <= 2, "{slot:?}: {} tasks", tasks.len());
            assert!(
                tasks.iter().any(|t| t.is_ready()),
                "{slot:?} has no ready task"
            );
        }
        // The agent stops what it must; new tasks come up a round later.
        sim.run_all();
        sim.now += 10;
    }
    assert_eq!(sim.status(), Some(UpdateState::Completed));
    assert_eq!(sim.updated().len(), 3);
}

#[test]
fn a_start_first_slot_whose_new_task_went_stale_gets_no_third_task() {
    let mut sim = Sim::new(1, |spec| spec.update.order = UpdateOrder::StartFirst);
    sim.update("200");
    let first = sim.step();
    assert!(first.shutdown.is_empty());
    // Another update before the new task ran.
    sim.update("300");
    let rec = sim.step();
    assert_eq!(rec.shutdown, [first.create[0].id.clone()]);
    assert_eq!(rec.create.len(), 1);
    assert_eq!(sim.slots()[&SlotKey::Replica(1)].len(), 2);
}

#[test]
fn start_first_slot_falls_back_to_the_old_task_when_the_new_one_ends() {
    let mut sim = Sim::new(1, |spec| {
        spec.update.order = UpdateOrder::StartFirst;
        spec.update.failure_action = FailureAction::Continue;
        spec.task.restart.condition = flotilla_types::RestartCondition::None;
    });
    let old = sim.state.tasks.keys().next().cloned().unwrap_or_default();
    sim.update("200");
    let new = sim.step().create[0].id.clone();
    sim.set(&new, TaskState::Failed, None);
    // The failed task goes to the history; the old one keeps serving and
    // the update (continue) tries the slot again beside it.
    let rec = sim.step();
    assert_eq!(rec.shutdown, [new]);
    assert!(!rec.shutdown.contains(&old));
    assert_eq!(slot_numbers(&rec), [1]);
}

#[test]
fn a_failed_start_first_update_rolls_back_without_stopping_the_old_task() {
    let mut sim = Sim::new(1, |spec| {
        spec.update.order = UpdateOrder::StartFirst;
        spec.update.failure_action = FailureAction::Rollback;
    });
    let old = sim.state.tasks.keys().next().cloned().unwrap_or_default();
    sim.update("200");
    let new = sim.step().create[0].id.clone();
    sim.set(&new, TaskState::Failed, None);
    for _ in 0..10 {
        let rec = sim.step();
        assert!(!rec.shutdown.contains(&old), "the old task was stopped");
        sim.run_all();
    }
    assert_eq!(sim.status(), Some(UpdateState::RollbackCompleted));
    assert_eq!(
        sim.state.tasks[&old].desired_state,
        flotilla_types::DesiredState::Running
    );
}

#[test]
fn a_failure_pauses_the_update_and_nothing_stale_is_replaced() {
    let mut sim = Sim::new(3, |_| {});
    sim.update("200");
    let new = sim.step().create[0].id.clone();
    sim.now += 100;
    sim.set(&new, TaskState::Failed, None);

    let rec = sim.step();
    let (_, _, status) = &rec.update_status[0];
    assert_eq!(status.state, UpdateState::Paused);
    assert_eq!(
        status.message,
        format!("update paused due to failure or early termination of task {new}")
    );
    // The restart policy still restarts the failed task; no stale slot
    // is touched.
    assert_eq!(slot_numbers(&rec), [1]);
    assert_eq!(rec.shutdown, [new]);
    assert_eq!(sim.status(), Some(UpdateState::Paused));

    sim.run_all();
    sim.now += 100_000;
    assert!(sim.decide().is_empty());
    let stale = sim.state.tasks.values().filter(|t| t.slot > 1);
    assert!(stale.clone().count() == 2 && stale.clone().all(|t| t.spec == template()));
}

#[test]
fn unhealthy_counts_as_a_failure() {
    let mut sim = Sim::new(2, |spec| {
        spec.task.health = Some(HealthCheck::new(HealthTest::Tcp { port: 80 }));
    });
    sim.update("200");
    let new = sim.step().create[0].id.clone();
    sim.set(&new, TaskState::Running, Some(Health::Unhealthy));
    let rec = sim.step();
    assert_eq!(rec.update_status[0].2.state, UpdateState::Paused);
    assert!(rec.update_status[0].2.message.ends_with(&new));
}

#[test]
fn failures_before_this_update_do_not_count() {
    let mut sim = Sim::new(2, |_| {});
    // An old task failed (and was restarted) before the update began.
    let old = sim.state.tasks.keys().next().cloned().unwrap_or_default();
    sim.set(&old, TaskState::Failed, None);
    sim.step();
    sim.run_all();
    sim.now += 1_000;
    sim.update("200");
    let rec = sim.step();
    assert!(rec.update_status.is_empty());
    assert_eq!(rec.create.len(), 1);
}

#[test]
fn continue_carries_on_past_failures() {
    let mut sim = Sim::new(2, |spec| {
        spec.update.failure_action = FailureAction::Continue;
        spec.task.restart.condition = flotilla_types::RestartCondition::None;
    });
    sim.update("200");
    let new = sim.step().create[0].id.clone();
    sim.set(&new, TaskState::Failed, None);
    let rec = sim.step();
    assert!(rec.update_status.is_empty());
    assert_eq!(slot_numbers(&rec), [2]);
}

#[test]
fn max_failure_ratio_tolerates_that_share_of_the_slots() {
    let mut sim = Sim::new(4, |spec| {
        spec.update.parallelism = 0;
        spec.update.max_failure_ratio = Ratio(0.5);
        spec.task.restart.condition = flotilla_types::RestartCondition::None;
    });
    sim.update("200");
    let new: Vec<String> = sim.step().create.iter().map(|t| t.id.clone()).collect();
    sim.run_all();
    sim.set(&new[0], TaskState::Failed, None);
    sim.set(&new[1], TaskState::Rejected, None);
    // Two of four: tolerated.
    assert!(sim.decide().update_status.is_empty());
    sim.now += 10;
    sim.set(&new[2], TaskState::Failed, None);
    let rec = sim.decide();
    assert_eq!(rec.update_status[0].2.state, UpdateState::Paused);
    // The latest failure tipped it.
    assert!(rec.update_status[0].2.message.ends_with(&new[2]));
}

#[test]
fn rollback_action_rolls_back_with_the_rollback_config_to_completion() {
    let mut sim = Sim::new(3, |spec| {
        spec.update.failure_action = FailureAction::Rollback;
        spec.update.parallelism = 2;
        spec.rollback.parallelism = 0;
        spec.rollback.monitor_ms = 2_000;
        spec.task.restart.condition = flotilla_types::RestartCondition::None;
    });
    sim.update("200");
    let new: Vec<String> = sim.step().create.iter().map(|t| t.id.clone()).collect();
    sim.run_all();
    sim.now += 100;
    sim.set(&new[0], TaskState::Failed, None);

    let decided_at = sim.state.services["s1"].version;
    let rec = sim.step();
    assert_eq!(
        rec.rollback,
        [(
            "s1".to_string(),
            decided_at,
            format!(
                "update rolled back due to failure or early termination of task {}",
                new[0]
            )
        )]
    );
    assert!(rec.update_status.is_empty());
    assert!(rec.create.is_empty());
    assert_eq!(sim.status(), Some(UpdateState::RollbackStarted));
    assert!(sim.message().starts_with("update rolled back"));
    let before = sim.state.services["s1"].spec.task.clone();
    assert_eq!(before.command, template().command);

    // The rollback config, all at once: both slots of the failed template,
    // the one still running and the failed one.
    let rec = sim.step();
    assert_eq!(slot_numbers(&rec), [1, 2]);
    assert!(rec.create.iter().all(|t| t.spec == before));
    sim.run_all();
    sim.settle(20);
    assert_eq!(sim.status(), Some(UpdateState::RollbackCompleted));
    let message = sim.message();
    assert!(
        message.starts_with("rollback completed; update rolled back"),
        "{message}"
    );
    assert_eq!(sim.updated().len(), 3);
}

#[test]
fn a_failure_during_a_rollback_pauses_it() {
    let mut sim = Sim::new(2, |spec| {
        spec.rollback.failure_action = FailureAction::Rollback;
        spec.task.restart.condition = flotilla_types::RestartCondition::None;
    });
    sim.update("200");
    sim.settle(20);
    assert_eq!(sim.status(), Some(UpdateState::Completed));
    let at = sim.now;
    sim.commit(Command::RollbackService {
        id: "s1".into(),
        at,
        reason: None,
        expected_version: None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sim.message(), "manually requested rollback");
    let new = sim.step().create[0].id.clone();
    sim.set(&new, TaskState::Failed, None);
    let rec = sim.step();
    assert!(rec.rollback.is_empty());
    assert_eq!(rec.update_status[0].2.state, UpdateState::RollbackPaused);
    assert!(rec.update_status[0]
        .2
        .message
        .starts_with("rollback paused due to failure or early termination of task"));
}

#[test]
fn rollback_uses_the_rollback_order() {
    let mut sim = Sim::new(1, |spec| {
        spec.update.order = UpdateOrder::StopFirst;
        spec.rollback.order = UpdateOrder::StartFirst;
    });
    sim.update("200");
    let rec = sim.step();
    assert_eq!(rec.shutdown.len(), 1);
    sim.settle(20);
    let at = sim.now;
    sim.commit(Command::RollbackService {
        id: "s1".into(),
        at,
        reason: None,
        expected_version: None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let rec = sim.step();
    assert!(rec.shutdown.is_empty());
    assert_eq!(slot_numbers(&rec), [1]);
}

#[test]
fn a_paused_update_replaces_nothing() {
    let mut sim = Sim::new(2, |_| {});
    sim.update("200");
    if let Some(s) = sim.state.services.get_mut("s1") {
        if let Some(status) = s.update_status.as_mut() {
            status.state = UpdateState::Paused;
        }
    }
    assert_eq!(sim.decide(), Reconciliation::default());
}

#[test]
fn stale_tasks_without_an_update_status_are_paced_silently() {
    let mut sim = Sim::new(2, |_| {});
    sim.update("200");
    // As after a snapshot from before update statuses existed.
    if let Some(s) = sim.state.services.get_mut("s1") {
        s.update_status = None;
    }
    let rec = sim.step();
    assert_eq!(slot_numbers(&rec), [1]);
    sim.settle(20);
    assert_eq!(sim.status(), None);
    assert_eq!(sim.updated().len(), 2);
}

#[test]
fn force_update_flows_through_the_same_path() {
    let mut sim = Sim::new(2, |_| {});
    let Some(service) = sim.state.services.get("s1") else {
        panic!("no service");
    };
    let mut spec = service.spec.clone();
    spec.task.force_update += 1;
    let at = sim.now;
    sim.commit(Command::UpdateService {
        id: "s1".into(),
        spec,
        expected_version: None,
        at,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(slot_numbers(&sim.step()), [1]);
    sim.settle(20);
    assert_eq!(sim.status(), Some(UpdateState::Completed));
}

#[test]
fn global_services_update_node_by_node() {
    let mut sim = Sim::with_mode(&["n1", "n2", "n3"], ServiceMode::Global, |_| {});
    sim.update("200");
    let rec = sim.step();
    assert_eq!(rec.create.len(), 1);
    assert_eq!(rec.create[0].node_id.as_deref(), Some("n1"));
    sim.run_all();
    let rec = sim.step();
    assert_eq!(rec.create[0].node_id.as_deref(), Some("n2"));
    sim.settle(20);
    assert_eq!(sim.status(), Some(UpdateState::Completed));
    assert_eq!(sim.updated().len(), 3);
}

#[test]
fn a_status_decided_before_a_newer_update_is_refused_by_the_store() {
    let mut sim = Sim::new(1, |spec| spec.update.monitor_ms = 0);
    sim.update("200");
    sim.step();
    sim.run_all();
    let rec = sim.decide();
    assert_eq!(rec.update_status.len(), 1);
    // A newer update lands between the decision and its proposal.
    sim.update("300");
    let (id, version, status) = rec.update_status[0].clone();
    let refused = sim.commit(Command::SetUpdateStatus {
        id,
        version,
        status,
    });
    assert!(matches!(refused, Err(StoreError::VersionConflict { .. })));
    assert_eq!(sim.status(), Some(UpdateState::Updating));
    // The next decision is about the newer update.
    let rec = sim.decide();
    assert!(rec.update_status.is_empty());
    assert_eq!(slot_numbers(&rec), [1]);
}

#[test]
fn is_empty_counts_status_changes_and_rollbacks() {
    let mut rec = Reconciliation::default();
    assert!(rec.is_empty());
    rec.rollback.push(("s1".into(), 3, "why".into()));
    assert!(!rec.is_empty());
}

#[test]
fn a_leader_clock_behind_the_update_does_not_hide_its_failures() {
    // The manager that took the update stamped it 60 s ahead of the
    // leader's clock; the update's tasks still belong to it.
    let mut sim = Sim::new(2, |_| {});
    let leader_now = sim.now;
    sim.now += 60_000;
    sim.update("200");
    sim.now = leader_now;
    let new = sim.step().create[0].id.clone();
    sim.set(&new, TaskState::Failed, None);
    let rec = sim.step();
    assert_eq!(rec.update_status.len(), 1, "{rec:?}");
    assert_eq!(rec.update_status[0].2.state, UpdateState::Paused);
}
