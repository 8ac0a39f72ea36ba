//! Linearizability of one register (a value written and read by clients),
//! after Wing & Gong, with the memoisation of Lowe ("Testing for
//! linearizability", 2017): a depth-first search for an order of the
//! operations that respects real time (an operation that completed before
//! another began comes first) and the register's semantics (a read returns
//! the last value written before it), remembering every configuration
//! (which operations are placed, the register's value) already explored.
//!
//! Operations of unknown outcome (writes that timed out) have no
//! completion: they may be placed anywhere after their invocation, or not
//! at all. Reads of unknown outcome tell nothing and are not given to the
//! checker.
//!
//! Two reductions keep the search small, both sound: an unknown write whose
//! value no read returned is dropped (placing it never explains a read, and
//! leaving it out is allowed), and a placeable read that returns the
//! current value is placed at once without trying the alternatives (it
//! changes nothing and only frees later operations).

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

use crate::history::Time;

/// A read or a write of the register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<V> {
    Write(V),
    Read(V),
}

/// One operation on the register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegOp<V> {
    /// The operation's number in the whole history, for reports.
    pub id: usize,
    pub invoke: Time,
    /// None: the outcome is unknown (a write that may or may not have taken
    /// effect, at any time after `invoke`).
    pub complete: Option<Time>,
    pub kind: Kind<V>,
}

/// Why a register's history is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegError {
    /// No order explains what the reads returned.
    NotLinearizable {
        /// The most operations any explored order could place.
        placed: usize,
        /// Operations that must be placed (known outcome).
        total: usize,
        /// The operation, among those not placed in that deepest order,
        /// that completed first: the one no order could make room for.
        blocked: usize,
        /// A human reading of the violation: which read saw what, and
        /// which write it missed.
        explanation: String,
    },
    /// The search hit its budget of configurations before deciding.
    Inconclusive { configurations: usize },
}

impl std::fmt::Display for RegError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegError::NotLinearizable {
                placed,
                total,
                blocked,
                explanation,
            } => write!(
                f,
                "not linearizable: {explanation} (the deepest order placed {placed} of {total} operations; op #{blocked} could not be placed)"
            ),
            RegError::Inconclusive { configurations } => write!(
                f,
                "undecided after exploring {configurations} configurations"
            ),
        }
    }
}

/// How many configurations the search may remember before it gives up.
pub const BUDGET: usize = 2_000_000;

#[derive(Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
}

struct Frame<V> {
    placed: Bits,
    count: usize,
    value: V,
    candidates: Vec<usize>,
    next: usize,
}

/// Checks that `ops`, starting from `init`, form a linearizable register
/// history. Every write is assumed to write a value of its own (the
/// explanation relies on it; the search does not).
pub fn check<V: Clone + Eq + Hash + Debug>(
    init: &V,
    ops: &[RegOp<V>],
    budget: usize,
) -> Result<(), RegError> {
    let read_values: HashSet<&V> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            Kind::Read(v) => Some(v),
            Kind::Write(_) => None,
        })
        .collect();
    let mut ops: Vec<&RegOp<V>> = ops
        .iter()
        .filter(|o| match &o.kind {
            Kind::Write(v) => o.complete.is_some() || read_values.contains(v),
            Kind::Read(_) => o.complete.is_some(),
        })
        .collect();
    ops.sort_by_key(|o| (o.invoke, o.id));
    let n = ops.len();
    let total = ops.iter().filter(|o| o.complete.is_some()).count();
    if total == 0 {
        return Ok(());
    }

    let candidates = |placed: &Bits| -> Vec<usize> {
        // The earliest completion among operations not placed yet: an
        // operation may go next only if it was invoked by then.
        let mut horizon = Time::MAX;
        let mut out = Vec::new();
        for (i, o) in ops.iter().enumerate() {
            if o.invoke > horizon {
                break;
            }
            if placed.get(i) {
                continue;
            }
            if let Some(c) = o.complete {
                horizon = horizon.min(c);
            }
            out.push(i);
        }
        out.retain(|&i| ops[i].invoke <= horizon);
        // A read that returns the current value goes first (see the
        // module's doc); reads before writes otherwise.
        out.sort_by_key(|&i| matches!(ops[i].kind, Kind::Write(_)));
        out
    };

    let start = Bits::new(n);
    let mut seen: HashSet<(Vec<u64>, V)> = HashSet::new();
    let mut deepest = (0usize, start.clone());
    let mut stack = vec![Frame {
        candidates: candidates(&start),
        placed: start,
        count: 0,
        value: init.clone(),
        next: 0,
    }];
    while let Some(top) = stack.last_mut() {
        if top.count == total {
            return Ok(());
        }
        let Some(&c) = top.candidates.get(top.next) else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let op = ops[c];
        let value = match &op.kind {
            Kind::Write(v) => v.clone(),
            Kind::Read(v) if *v == top.value => {
                // Placed at once: no alternative needs trying.
                top.next = top.candidates.len();
                v.clone()
            }
            Kind::Read(_) => continue,
        };
        let mut placed = top.placed.clone();
        placed.set(c);
        let count = top.count + usize::from(op.complete.is_some());
        if !seen.insert((placed.0.clone(), value.clone())) {
            continue;
        }
        if seen.len() > budget {
            return Err(RegError::Inconclusive {
                configurations: seen.len(),
            });
        }
        if count > deepest.0 {
            deepest = (count, placed.clone());
        }
        stack.push(Frame {
            candidates: candidates(&placed),
            placed,
            count,
            value,
            next: 0,
        });
    }
    let (placed, at) = deepest;
    let blocked = (0..n)
        .filter(|&i| !at.get(i))
        .filter_map(|i| ops[i].complete.map(|c| (c, i)))
        .min()
        .map(|(_, i)| ops[i].id)
        .unwrap_or(0);
    Err(RegError::NotLinearizable {
        placed,
        total,
        blocked,
        explanation: explain(init, &ops, blocked),
    })
}

/// Names the violation in the terms of one read: a value no one wrote, or
/// a write that completed after the write the read saw and before the read
/// began (lost, or the read is stale). Falls back to the blocked operation.
fn explain<V: Eq + Debug>(init: &V, ops: &[&RegOp<V>], blocked: usize) -> String {
    let writer = |v: &V| {
        ops.iter()
            .find(|o| matches!(&o.kind, Kind::Write(w) if w == v))
            .copied()
    };
    for r in ops {
        let (Kind::Read(v), Some(_)) = (&r.kind, r.complete) else {
            continue;
        };
        let w = writer(v);
        if w.is_none() && v != init {
            return format!("read #{} returned {v:?}, which no write wrote", r.id);
        }
        // The write the read saw must have completed for another write to
        // come after it for sure: the initial value precedes every write;
        // an unknown write may land any time.
        let w_done = match w {
            None => None,
            Some(w) => match w.complete {
                Some(c) => Some(c),
                None => continue,
            },
        };
        let missed = ops.iter().find(|x| {
            matches!(x.kind, Kind::Write(_))
                && w_done.is_none_or(|d| x.invoke > d)
                && x.complete.is_some_and(|c| c < r.invoke)
        });
        if let Some(x) = missed {
            let from = match w {
                None => "the initial value".to_string(),
                Some(w) => format!("write #{}", w.id),
            };
            let Kind::Write(xv) = &x.kind else { continue };
            return format!(
                "read #{} returned {v:?} ({from}), but write #{} of {xv:?} was acknowledged after that and before the read began: write #{} is lost, or the read is stale",
                r.id, x.id, x.id
            );
        }
    }
    format!(
        "no order of the operations explains the reads; op #{blocked} is where every order fails"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: usize, invoke: Time, complete: Time, v: &str) -> RegOp<String> {
        RegOp {
            id,
            invoke,
            complete: Some(complete),
            kind: Kind::Write(v.into()),
        }
    }
    fn w_unknown(id: usize, invoke: Time, v: &str) -> RegOp<String> {
        RegOp {
            id,
            invoke,
            complete: None,
            kind: Kind::Write(v.into()),
        }
    }
    fn r(id: usize, invoke: Time, complete: Time, v: &str) -> RegOp<String> {
        RegOp {
            id,
            invoke,
            complete: Some(complete),
            kind: Kind::Read(v.into()),
        }
    }
    fn run(ops: &[RegOp<String>]) -> Result<(), RegError> {
        check(&"init".to_string(), ops, BUDGET)
    }

    #[test]
    fn sequential_writes_and_reads_are_linearizable() {
        let ops = [
            r(0, 0, 1, "init"),
            w(1, 2, 3, "a"),
            r(2, 4, 5, "a"),
            w(3, 6, 7, "b"),
            r(4, 8, 9, "b"),
        ];
        assert_eq!(run(&ops), Ok(()));
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // Two concurrent writes; reads during them see either, in an order
        // that one placement explains.
        let ops = [
            w(0, 0, 10, "a"),
            w(1, 1, 11, "b"),
            r(2, 2, 3, "b"),
            r(3, 4, 5, "a"),
            r(4, 12, 13, "a"),
        ];
        assert_eq!(run(&ops), Ok(()));
        // A read overlapping a write may see the old or the new value.
        let ops = [w(0, 0, 10, "a"), r(1, 1, 2, "init"), r(2, 3, 4, "a")];
        assert_eq!(run(&ops), Ok(()));
    }

    #[test]
    fn an_unknown_write_may_take_effect_later_or_never() {
        // The write timed out; a read long after sees it.
        let ops = [
            w_unknown(0, 0, "a"),
            r(1, 100, 101, "init"),
            r(2, 200, 201, "a"),
        ];
        assert_eq!(run(&ops), Ok(()));
        // Never seen: fine too.
        let ops = [w_unknown(0, 0, "a"), r(1, 100, 101, "init")];
        assert_eq!(run(&ops), Ok(()));
        // But not before it was invoked.
        let ops = [r(0, 0, 1, "a"), w_unknown(1, 5, "a")];
        assert!(matches!(run(&ops), Err(RegError::NotLinearizable { .. })));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let ops = [w(0, 0, 1, "a"), r(1, 2, 3, "init")];
        let e = run(&ops).expect_err("stale");
        assert!(e.to_string().contains("write #0"), "{e}");
        assert!(e.to_string().contains("read #1"), "{e}");
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught() {
        let ops = [w(0, 0, 1, "a"), r(1, 2, 3, "zzz")];
        let e = run(&ops).expect_err("phantom");
        assert!(e.to_string().contains("no write wrote"), "{e}");
    }

    #[test]
    fn two_reads_that_see_writes_in_opposite_orders_are_caught() {
        // Clients 1 and 2 both read during two concurrent writes: one sees
        // a then b, the other b then a.
        let ops = [
            w(0, 0, 100, "a"),
            w(1, 0, 100, "b"),
            r(2, 10, 20, "a"),
            r(3, 30, 40, "b"),
            r(4, 10, 20, "b"),
            r(5, 30, 40, "a"),
        ];
        assert!(matches!(run(&ops), Err(RegError::NotLinearizable { .. })));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught_and_named() {
        // b was acknowledged, but the end read still sees a.
        let ops = [
            w(0, 0, 1, "a"),
            w(1, 2, 3, "b"),
            r(2, 4, 5, "a"),
            r(3, 100, 101, "a"),
        ];
        let e = run(&ops).expect_err("lost");
        let text = e.to_string();
        assert!(text.contains("write #1 is lost"), "{text}");
    }

    #[test]
    fn a_write_that_applies_twice_is_caught() {
        // a, then b, then a again: a reapplied write (a retried proposal).
        let ops = [
            w(0, 0, 1, "a"),
            w(1, 2, 3, "b"),
            r(2, 4, 5, "b"),
            r(3, 6, 7, "a"),
        ];
        assert!(matches!(run(&ops), Err(RegError::NotLinearizable { .. })));
    }

    #[test]
    fn many_concurrent_clients_are_checked_within_the_budget() {
        // 6 clients each writing and reading back their own values, 2,000
        // operations, with timeouts sprinkled in: accepted, quickly.
        let mut ops = Vec::new();
        let mut value = "init".to_string();
        let mut t = 0;
        for i in 0..2_000 {
            let id = ops.len();
            if i % 2 == 0 {
                value = format!("v{i}");
                if i % 50 == 0 {
                    ops.push(w_unknown(id, t, &value));
                } else {
                    ops.push(w(id, t, t + 15, &value));
                }
            } else {
                ops.push(r(id, t + 2, t + 30, &value));
            }
            t += 10;
        }
        assert_eq!(run(&ops), Ok(()));
    }

    /// A register simulated with random linearization points inside each
    /// operation's interval (4 clients, some writes timing out): every such
    /// history is accepted.
    #[test]
    fn simulated_linearizable_histories_are_accepted() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for round in 0..50 {
            // Each client: ops back to back, each with an interval and a
            // point inside it where it takes effect.
            let mut events: Vec<(Time, usize, bool, Time, Time)> = Vec::new();
            for client in 0..4 {
                let mut t = next(20);
                for _ in 0..40 {
                    let start = t;
                    let point = start + 1 + next(30);
                    let end = point + 1 + next(30);
                    events.push((point, client, next(2) == 0, start, end));
                    t = end + 1 + next(5);
                }
            }
            events.sort();
            let mut value = "init".to_string();
            let mut ops = Vec::new();
            for (i, (_, _, is_write, start, end)) in events.into_iter().enumerate() {
                if is_write {
                    value = format!("r{round}v{i}");
                    let unknown = next(10) == 0;
                    ops.push(RegOp {
                        id: i,
                        invoke: start,
                        complete: (!unknown).then_some(end),
                        kind: Kind::Write(value.clone()),
                    });
                } else {
                    ops.push(r(i, start, end, &value));
                }
            }
            assert_eq!(run(&ops), Ok(()), "round {round}");
        }
    }
}
