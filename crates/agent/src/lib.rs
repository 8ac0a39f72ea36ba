//! The worker side of a Flotilla node.
//!
//! The manager decides which tasks run on which node; the agent of a node
//! receives the whole set of its assignments (a [`tokio::sync::watch`]
//! value), runs them through a [`Driver`] and sends the task statuses it
//! observes back as batches of [`TaskReport`] (an unbounded
//! [`tokio::sync::mpsc`] channel). How those channels cross the network is
//! not the agent's concern.
//!
//! Guarantees:
//! - A task is started at most once: only when the store shows it
//!   `assigned` and the agent has no record of it. Every status is written to
//!   the task's record before it is reported.
//! - A restarted agent adopts the processes its predecessor left running
//!   (same pid and same start time), reports the ones that ended unseen as
//!   failed, and stops adopted ones the manager no longer wants once the
//!   first real assignment set arrives.
//! - When the store shows a status older than the agent's, the agent sends
//!   its status again (reports can be lost when the leader changes).
//! - Stops are concurrent: SIGTERM to the task's process group, SIGKILL after
//!   the grace period.
//!
//! # Layout
//! - [`agent`]: [`Agent`], its configuration, assignments and reports; the
//!   control loop and the per-task supervisors.
//! - [`driver`]: the [`Driver`] trait a workload runtime implements, and the
//!   [`Drivers`] registry of a node.
//! - [`docker`]: [`DockerDriver`], tasks as containers on the local Docker
//!   Engine.
//! - [`health`]: health checks: when to probe and what the results mean.
//! - [`process`]: [`ProcessDriver`], tasks as child processes in their own
//!   process groups.
//! - [`record`]: the per-task `state.json` records under
//!   `<state_dir>/tasks/<task_id>/`.
//! - [`logs`]: task log paths, the size cap (copy-and-truncate), and the
//!   marks that give lines their times.
//! - [`ports`]: the node ports a process task listens on for its target
//!   ports (`PORT`, `FLOTILLA_PORT_<TARGET>`).
//! - [`procfs`]: `/proc/<pid>/stat`, pidfds and process-group signals.
//! - [`users`]: the user and groups a process task runs as (`user`).
//! - [`wiring`]: the node's network wiring (a bridge and a VXLAN device per
//!   network, a namespace per task): what the network table asks of this
//!   node, and the `ip` commands that do it. Not yet driven by the agent.

pub mod agent;
pub mod docker;
pub mod driver;
pub mod files;
#[cfg(test)]
mod fixtures;
pub mod health;
pub mod logs;
pub mod netfilter;
pub mod ports;
pub mod process;
pub mod procfs;
pub mod record;
pub mod sealed;
pub mod taskns;
pub mod users;
pub mod vips;
pub mod wiring;

pub use agent::{Agent, AgentConfig, AgentError, Assignments, TaskReport, DEFAULT_LOG_CAP_BYTES};
pub use docker::DockerDriver;
pub use driver::{
    BoxFuture, Driver, DriverError, Drivers, Exit, ExitFuture, Handle, Probe, StartSpec, Started,
    StopSignal,
};
pub use logs::{read_log, rotated_log_path, task_log_path, LogError, LogLine, LogRead};
pub use process::ProcessDriver;
pub use procfs::ProcError;
pub use record::{task_dir, RecordError, TaskRecord};
