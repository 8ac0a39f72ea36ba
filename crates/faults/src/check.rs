//! The whole history's checks: (a) acknowledged writes present and nothing
//! that no one wrote, (b) each register linearizable, (d) no slot with two
//! desired-running tasks. See the crate's doc.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Call, EndState, Op, Outcome, Snapshot};
use crate::register::{self, Kind, RegError, RegOp};

/// One thing the history proves wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged write is not in the end state.
    Lost(String),
    /// The end state or a read holds something no one wrote.
    Phantom(String),
    /// A register's history has no linearization.
    NotLinearizable { register: String, error: RegError },
    /// A snapshot showed two desired-running tasks in one slot.
    DoubleSlot(String),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Lost(m) => write!(f, "lost write: {m}"),
            Violation::Phantom(m) => write!(f, "written by no one: {m}"),
            Violation::NotLinearizable { register, error } => {
                write!(f, "register {register}: {error}")
            }
            Violation::DoubleSlot(m) => write!(f, "two desired-running tasks in one slot: {m}"),
        }
    }
}

/// What the checker found, with the counts that say how much it saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Registers checked, and operations given to their checks.
    pub registers: usize,
    pub register_ops: usize,
    /// Reads left out of the register checks because they carried the
    /// stale-read warning.
    pub stale_reads: usize,
    pub snapshots: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} registers ({} operations), {} stale-warned reads left out, {} snapshots: ",
            self.registers, self.register_ops, self.stale_reads, self.snapshots
        )?;
        if self.violations.is_empty() {
            return write!(f, "no violation");
        }
        writeln!(f, "{} violations", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  - {v}")?;
        }
        Ok(())
    }
}

/// Checks a history. `setup` names services created before the history
/// began, with their first state (they need no create op); `end` is the
/// state after healing.
pub fn check(ops: &[Op], setup: &EndState, end: &EndState, snapshots: &[Snapshot]) -> Report {
    let mut report = Report {
        snapshots: snapshots.len(),
        ..Default::default()
    };
    presence(ops, setup, end, &mut report);
    registers(ops, setup, end, &mut report);
    slots(snapshots, &mut report);
    report
}

/// (a) for services: which must exist at the end, which must not.
fn presence(ops: &[Op], setup: &EndState, end: &EndState, report: &mut Report) {
    let mut created: BTreeMap<&str, Vec<(usize, &Op)>> = BTreeMap::new();
    let mut removed: BTreeMap<&str, Vec<(usize, &Op)>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        match &op.call {
            Call::Create { service, .. } => created.entry(service).or_default().push((i, op)),
            Call::Remove { service } => removed.entry(service).or_default().push((i, op)),
            _ => {}
        }
    }
    let names: BTreeSet<&str> = created
        .keys()
        .copied()
        .chain(setup.keys().map(String::as_str))
        .collect();
    for name in &names {
        let creates = created.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let removes = removed.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let from_setup = setup.contains_key(*name);
        let created_ok = from_setup || creates.iter().any(|(_, o)| o.outcome == Outcome::Ok);
        let may_exist = from_setup
            || creates
                .iter()
                .any(|(_, o)| matches!(o.outcome, Outcome::Ok | Outcome::Unknown(_)));
        let removed_ok = removes.iter().find(|(_, o)| o.outcome == Outcome::Ok);
        let may_be_removed = removes
            .iter()
            .any(|(_, o)| matches!(o.outcome, Outcome::Ok | Outcome::Unknown(_)));
        let present = end.contains_key(*name);
        if present && !may_exist {
            let why = creates
                .first()
                .map(|(i, o)| format!("its create #{i} failed: {:?}", o.outcome))
                .unwrap_or_else(|| "no one created it".into());
            report.violations.push(Violation::Phantom(format!(
                "service {name} exists at the end, but {why}"
            )));
        } else if present {
            if let Some((i, _)) = removed_ok {
                // One create per name: after an acknowledged removal, the
                // service can only come back from a create applied twice.
                report.violations.push(Violation::Lost(format!(
                    "service {name} exists at the end, but its removal #{i} was acknowledged"
                )));
            }
        } else if created_ok && !may_be_removed {
            let by = creates
                .iter()
                .find(|(_, o)| o.outcome == Outcome::Ok)
                .map(|(i, _)| format!("its create #{i} was acknowledged"))
                .unwrap_or_else(|| "it existed before the run".into());
            // A removal that answered "failed" is the likely culprit: it
            // took effect and was answered as refused.
            let hint = removes
                .iter()
                .find_map(|(i, o)| match &o.outcome {
                    Outcome::Failed(m) => Some(format!(
                        "; its removal #{i} answered {m:?} and yet took effect, or the create was lost"
                    )),
                    _ => None,
                })
                .unwrap_or_default();
            report.violations.push(Violation::Lost(format!(
                "service {name} is missing at the end: {by} and no removal may have taken effect{hint}"
            )));
        }
    }
    for name in end.keys() {
        if !names.contains(name.as_str()) {
            report.violations.push(Violation::Phantom(format!(
                "service {name} exists at the end, and no one created it"
            )));
        }
    }
}

/// The two registers of a service, and what reads them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reg {
    Label,
    Replicas,
}

/// (b): one register check per (service, label or replicas), for services
/// that were never removed (a removal ends the register). A service is a
/// label register when someone writes its label, a replica register when
/// someone scales it.
fn registers(ops: &[Op], setup: &EndState, end: &EndState, report: &mut Report) {
    let removed: BTreeSet<&str> = ops
        .iter()
        .filter(|o| matches!(o.call, Call::Remove { .. }))
        .map(|o| o.call.service())
        .collect();
    let last = ops.iter().map(|o| o.complete).max().unwrap_or(0);
    let mut which: BTreeSet<(&str, u8)> = BTreeSet::new();
    for op in ops {
        match &op.call {
            Call::WriteLabel { service, .. } => {
                which.insert((service, 0));
            }
            Call::Scale { service, .. } => {
                which.insert((service, 1));
            }
            _ => {}
        }
    }
    // Reads that carried the warning: not linearizable reads, but they
    // still must not show a value no one wrote.
    let mut written: BTreeSet<(&str, String)> = BTreeSet::new();
    for (name, seen) in setup {
        if let Some(l) = &seen.label {
            written.insert((name, l.clone()));
        }
    }
    for op in ops {
        match &op.call {
            Call::WriteLabel { service, value } => {
                written.insert((service, value.clone()));
            }
            Call::Create {
                service,
                label: Some(l),
                ..
            } => {
                written.insert((service, l.clone()));
            }
            _ => {}
        }
    }
    for (i, op) in ops.iter().enumerate() {
        if let (
            Call::Read { service },
            Outcome::Read {
                seen: Some(seen),
                warning: Some(_),
            },
        ) = (&op.call, &op.outcome)
        {
            report.stale_reads += 1;
            if let Some(l) = &seen.label {
                if which.contains(&(service.as_str(), 0))
                    && !written.contains(&(service.as_str(), l.clone()))
                {
                    report.violations.push(Violation::Phantom(format!(
                        "read #{i} (stale-warned) of {service} returned label {l:?}, which no write wrote"
                    )));
                }
            }
        }
    }

    for (service, reg) in which {
        if removed.contains(service) {
            continue;
        }
        let reg = if reg == 0 { Reg::Label } else { Reg::Replicas };
        let value = |s: &crate::history::Seen| match reg {
            Reg::Label => s.label.clone().unwrap_or_default(),
            Reg::Replicas => s.replicas.to_string(),
        };
        // The first value: from the setup, or from the service's create
        // (which then is the first write).
        let mut reg_ops: Vec<RegOp<String>> = Vec::new();
        let init = match setup.get(service) {
            Some(s) => value(s),
            None => String::new(),
        };
        for (i, op) in ops.iter().enumerate() {
            if op.call.service() != service {
                continue;
            }
            let complete = match &op.outcome {
                Outcome::Ok | Outcome::Read { .. } => Some(op.complete),
                Outcome::Unknown(_) => None,
                Outcome::Failed(_) => continue,
            };
            let kind = match (&op.call, &op.outcome) {
                (
                    Call::Create {
                        replicas, label, ..
                    },
                    _,
                ) => Kind::Write(match reg {
                    Reg::Label => label.clone().unwrap_or_default(),
                    Reg::Replicas => replicas.to_string(),
                }),
                (Call::WriteLabel { value, .. }, _) if reg == Reg::Label => {
                    Kind::Write(value.clone())
                }
                (Call::Scale { replicas, .. }, _) if reg == Reg::Replicas => {
                    Kind::Write(replicas.to_string())
                }
                (
                    Call::Read { .. },
                    Outcome::Read {
                        seen,
                        warning: None,
                    },
                ) => Kind::Read(seen.as_ref().map(value).unwrap_or_default()),
                _ => continue,
            };
            reg_ops.push(RegOp {
                id: i,
                invoke: op.invoke,
                complete,
                kind,
            });
        }
        // The end state is one more read, after everything.
        reg_ops.push(RegOp {
            id: ops.len(),
            invoke: last + 1,
            complete: Some(last + 2),
            kind: Kind::Read(end.get(service).map(value).unwrap_or_default()),
        });
        report.registers += 1;
        report.register_ops += reg_ops.len();
        if let Err(error) = register::check(&init, &reg_ops, register::BUDGET) {
            let what = match reg {
                Reg::Label => "label",
                Reg::Replicas => "replicas",
            };
            report.violations.push(Violation::NotLinearizable {
                register: format!("{service}.{what} (op #{} is the end state)", ops.len()),
                error,
            });
        }
    }
}

/// (d): no snapshot shows two desired-running tasks in one slot.
fn slots(snapshots: &[Snapshot], report: &mut Report) {
    for s in snapshots {
        let mut by_slot: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for t in s.tasks.iter().filter(|t| t.desired_running) {
            by_slot.entry(t.slot).or_default().push(&t.id);
        }
        for (slot, ids) in by_slot {
            if ids.len() > 1 {
                report.violations.push(Violation::DoubleSlot(format!(
                    "service {} slot {slot} at {:.3} s (read on {}): tasks {}",
                    s.service,
                    s.at as f64 / 1e9,
                    s.source,
                    ids.join(", ")
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Seen, TaskSample};

    fn op(client: usize, call: Call, invoke: u64, complete: u64, outcome: Outcome) -> Op {
        Op {
            client,
            call,
            invoke,
            complete,
            outcome,
        }
    }
    fn seen(label: &str, replicas: u64) -> Seen {
        Seen {
            label: Some(label.into()),
            replicas,
        }
    }
    fn read(label: &str, replicas: u64) -> Outcome {
        Outcome::Read {
            seen: Some(seen(label, replicas)),
            warning: None,
        }
    }
    fn setup() -> EndState {
        [("reg".to_string(), seen("v0", 0))].into_iter().collect()
    }
    fn write(v: &str) -> Call {
        Call::WriteLabel {
            service: "reg".into(),
            value: v.into(),
        }
    }
    fn read_reg() -> Call {
        Call::Read {
            service: "reg".into(),
        }
    }

    #[test]
    fn a_good_history_passes() {
        let ops = [
            op(0, write("a"), 0, 10, Outcome::Ok),
            op(1, read_reg(), 5, 6, read("v0", 0)),
            op(1, read_reg(), 11, 12, read("a", 0)),
            op(0, write("b"), 20, 30, Outcome::Unknown("timeout".into())),
            op(
                2,
                Call::Create {
                    service: "c1".into(),
                    replicas: 1,
                    label: None,
                },
                0,
                5,
                Outcome::Ok,
            ),
            op(
                2,
                Call::Create {
                    service: "c2".into(),
                    replicas: 1,
                    label: None,
                },
                6,
                7,
                Outcome::Unknown("reset".into()),
            ),
            op(
                2,
                Call::Remove {
                    service: "c1".into(),
                },
                8,
                9,
                Outcome::Ok,
            ),
        ];
        let end: EndState = [
            ("reg".to_string(), seen("b", 0)),
            (
                "c2".to_string(),
                Seen {
                    label: None,
                    replicas: 1,
                },
            ),
        ]
        .into_iter()
        .collect();
        let report = check(&ops, &setup(), &end, &[]);
        assert!(report.ok(), "{report}");
        assert_eq!(report.registers, 1);
    }

    #[test]
    fn a_lost_create_a_phantom_and_a_resurrected_service_are_caught() {
        let create = |s: &str| Call::Create {
            service: s.into(),
            replicas: 1,
            label: None,
        };
        let ops = [
            op(0, create("kept"), 0, 1, Outcome::Ok),
            op(0, create("refused"), 2, 3, Outcome::Failed("409".into())),
            op(0, create("gone"), 4, 5, Outcome::Ok),
            op(
                0,
                Call::Remove {
                    service: "gone".into(),
                },
                6,
                7,
                Outcome::Ok,
            ),
        ];
        let one = Seen {
            label: None,
            replicas: 1,
        };
        let end: EndState = [
            ("refused".to_string(), one.clone()),
            ("gone".to_string(), one.clone()),
            ("stranger".to_string(), one.clone()),
            ("reg".to_string(), seen("v0", 0)),
        ]
        .into_iter()
        .collect();
        let report = check(&ops, &setup(), &end, &[]);
        let text = report.to_string();
        assert_eq!(report.violations.len(), 4, "{text}");
        assert!(text.contains("service kept is missing"), "{text}");
        assert!(text.contains("service refused exists"), "{text}");
        assert!(text.contains("removal #3 was acknowledged"), "{text}");
        assert!(
            text.contains("service stranger exists at the end, and no one created it"),
            "{text}"
        );
    }

    #[test]
    fn a_removal_answered_as_refused_that_took_effect_is_pointed_at() {
        let ops = [
            op(
                0,
                Call::Create {
                    service: "c".into(),
                    replicas: 1,
                    label: None,
                },
                0,
                1,
                Outcome::Ok,
            ),
            op(
                0,
                Call::Remove {
                    service: "c".into(),
                },
                2,
                3,
                Outcome::Failed("service x not found".into()),
            ),
        ];
        let end: EndState = [("reg".to_string(), seen("v0", 0))].into_iter().collect();
        let text = check(&ops, &setup(), &end, &[]).to_string();
        assert!(text.contains("service c is missing"), "{text}");
        assert!(text.contains("removal #1 answered"), "{text}");
    }

    #[test]
    fn a_lost_label_write_is_named() {
        let ops = [
            op(0, write("a"), 0, 10, Outcome::Ok),
            op(0, read_reg(), 11, 12, read("v0", 0)),
        ];
        let end: EndState = [("reg".to_string(), seen("v0", 0))].into_iter().collect();
        let report = check(&ops, &setup(), &end, &[]);
        let text = report.to_string();
        assert!(!report.ok());
        assert!(text.contains("write #0 is lost"), "{text}");
    }

    #[test]
    fn a_stale_warned_read_is_not_a_linearizable_read_but_must_show_a_written_value() {
        let stale = |l: &str| Outcome::Read {
            seen: Some(seen(l, 0)),
            warning: Some("no quorum".into()),
        };
        let ops = [
            op(0, write("a"), 0, 10, Outcome::Ok),
            op(1, read_reg(), 11, 12, stale("v0")),
        ];
        let end: EndState = [("reg".to_string(), seen("a", 0))].into_iter().collect();
        let report = check(&ops, &setup(), &end, &[]);
        assert!(report.ok(), "{report}");
        assert_eq!(report.stale_reads, 1);
        let ops = [
            op(0, write("a"), 0, 10, Outcome::Ok),
            op(1, read_reg(), 11, 12, stale("nobody")),
        ];
        let report = check(&ops, &setup(), &end, &[]);
        assert!(
            report.to_string().contains("which no write wrote"),
            "{report}"
        );
    }

    #[test]
    fn replicas_are_a_register_too() {
        let scale = |n| Call::Scale {
            service: "reg".into(),
            replicas: n,
        };
        let ops = [
            op(0, scale(3), 0, 1, Outcome::Ok),
            op(0, scale(2), 2, 3, Outcome::Ok),
        ];
        let end: EndState = [("reg".to_string(), seen("v0", 3))].into_iter().collect();
        let report = check(&ops, &setup(), &end, &[]);
        assert!(report.to_string().contains("reg.replicas"), "{report}");
        assert!(report.to_string().contains("write #1 is lost"), "{report}");
    }

    #[test]
    fn two_desired_running_tasks_in_a_slot_are_caught() {
        let task = |id: &str, slot, running| TaskSample {
            id: id.into(),
            slot,
            desired_running: running,
            node: None,
            state: "running".into(),
        };
        let snaps = [
            Snapshot {
                at: 1,
                source: "m1".into(),
                service: "web".into(),
                tasks: vec![
                    task("t1", 1, true),
                    task("t2", 1, false),
                    task("t3", 2, true),
                ],
            },
            Snapshot {
                at: 2,
                source: "m1".into(),
                service: "web".into(),
                tasks: vec![task("t1", 1, true), task("t4", 1, true)],
            },
        ];
        let report = check(&[], &EndState::new(), &EndState::new(), &snaps);
        assert_eq!(report.violations.len(), 1, "{report}");
        assert!(report.to_string().contains("slot 1"), "{report}");
    }
}
