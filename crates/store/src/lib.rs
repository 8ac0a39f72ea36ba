//! The replicated state of a Flotilla cluster and the commands that change it.
//!
//! Every manager holds a [`State`]. It changes only by applying a
//! [`Command`] that raft has committed, through [`State::apply`], which is
//! deterministic: it reads no clock and draws no random numbers. IDs and
//! timestamps are chosen by whoever proposes a command and travel inside it;
//! the raft log index becomes the version of what it changed.
//!
//! This crate does no I/O: persisting the state is the raft crate's job, and
//! deciding what to propose is the manager's.
//!
//! # Layout
//! - [`command`]: the raft log entry type, one variant per kind of change.
//! - [`state`]: the tables and `apply`.
//! - [`error`]: why a command was refused.

pub mod command;
pub mod error;
pub mod state;

pub use command::{Command, CommandResult, TaskStatusUpdate};
pub use error::StoreError;
pub use state::{Change, State};
