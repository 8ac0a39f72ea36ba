//! The history checker of Flotilla's fault-injection suite: a pure library
//! (no sockets, no clocks, no randomness) that judges what clients saw
//! while a nemesis killed, paused and cut off nodes.
//!
//! The suite (`crates/flotilla/tests/faults/`) records every client call
//! as an [`history::Op`]: what was asked, when it was invoked and when it
//! completed (monotonic nanoseconds since the run began) and how it ended:
//! ok (with what a read saw), failed definitely (the request certainly did
//! not take effect), or unknown (a timeout or a broken connection: it may
//! have taken effect, now or later). After the faults are healed the suite
//! adds the end state (one linearizable read of every service) and the
//! `service ps` snapshots it sampled, and [`check::check`] proves or
//! refutes:
//!
//! - (a) every acknowledged write is present at the end (a created service
//!   exists unless someone removed it, an acknowledged removal holds) and
//!   nothing appears that no one wrote (a service no one created, a label
//!   value no one wrote);
//! - (b) each register is linearizable ([`register::check`], Wing & Gong's
//!   search with Lowe's memoisation of configurations): the label used as
//!   a register on each register service, and the replica count of each
//!   scaled service. Writes of unknown outcome may take effect at any
//!   point after their invocation, or never;
//! - (d) no slot ever had two desired-running tasks at once, in any sampled
//!   snapshot (the suite's services never run a start-first update).
//!
//! Check (c), convergence (every service at its desired replicas), is
//! judged live by the suite, which has to wait for it.
//!
//! Reads that the API answered with its stale-read warning
//! (`x-flotilla-warning`: the manager could not confirm a read index) are
//! not linearizable reads: they are left out of the register check, and
//! only checked for values that no one wrote.

pub mod check;
pub mod history;
pub mod register;

pub use check::{check, Report, Violation};
pub use history::{Call, EndState, Op, Outcome, Seen, Snapshot, TaskSample, Time};
