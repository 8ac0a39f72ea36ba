//! The manager's control loops: the orchestrator, which decides which tasks
//! should exist, the scheduler, which decides where they run, and the node
//! watcher, which declares nodes down when their heartbeats stop.
//!
//! As in swarmkit, the loops never call each other: each reads the replicated
//! [`flotilla_store::State`] and proposes commands through raft, and each
//! learns of the others' work only through the store. As in nomad, the
//! decisions are plain functions over a state snapshot that take the time
//! as an argument, so they are tested without sockets, sleeps or a runtime;
//! the loops around them are thin.
//!
//! # Layout
//! - [`orchestrator`]: [`reconcile`], the pure decision of which tasks to
//!   create, shut down and delete (slots, restart policy, history).
//! - [`scheduler`]: [`schedule`], the pure decision of which node each
//!   waiting task goes to (filters, spread), and why a task cannot be placed.
//! - [`dispatcher`]: which tasks an agent must run, which status reports
//!   move the store forward, which nodes are down.
//! - [`rebalance`]: moving tasks, one at a time, to nodes that joined or
//!   came back.
//! - [`mesh`]: [`mesh::allocate`], the published ports the leader hands
//!   out, and [`mesh::mesh_table`], the ready tasks behind each port.
//! - [`network`]: [`network::allocate`], networks' subnets and VXLAN IDs
//!   and the addresses of services and tasks on them.
//! - [`access`]: what the loops need from outside: [`StoreView`],
//!   [`Proposer`], [`Clock`], [`Heartbeats`].
//! - [`loops`]: [`Orchestrator`], [`Scheduler`], [`Rebalancer`],
//!   [`Allocator`] and [`NodeWatcher`], the async shells that wake on store changes (or a
//!   due time), decide, and propose.

pub mod access;
pub mod dispatcher;
pub mod loops;
pub mod mesh;
pub mod network;
pub mod orchestrator;
pub mod rebalance;
pub mod scheduler;

#[cfg(test)]
mod testutil;

pub use access::{
    Clock, Heartbeats, ProposeError, ProposeFuture, Proposer, StoreView, SystemClock,
};
pub use loops::{Allocator, NodeWatcher, Orchestrator, Rebalancer, Scheduler};
pub use orchestrator::{reconcile, Reconciliation};
pub use scheduler::{schedule, Schedule};
