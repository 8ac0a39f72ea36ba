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
//! - [`command`]: the command, one variant per kind of change.
//! - [`entry`]: the raft log entry's envelope around a command: its
//!   format, its request ID, and the rule for entries this version cannot
//!   read.
//! - [`state`]: the tables and `apply`, one function per command, in a
//!   submodule per table (cluster, nodes, services, tasks).
//! - [`error`]: why a command was refused.
//!
//! # Adding an object kind (a table)
//! Networks, secrets and endpoints come next; each needs, in this crate:
//! 1. its type in `flotilla-types` (with an `id`), and a
//!    `pub foos: BTreeMap<String, Foo>` field in [`State`] with
//!    `#[serde(default)]`, so that snapshots written before it still load;
//! 2. a `Change::Foo(String)` variant naming one row, and an
//!    `impl Row for Foo` in `state/table.rs` mapping an ID to it, so that
//!    `table::insert`, `table::remove` and `table::touched` record it;
//! 3. its commands in [`command`] (IDs and timestamps chosen by the
//!    proposer, inside the command), and for each a line in the table in
//!    `State::apply_inner` calling a documented function in a new
//!    `state/foos.rs`, with a unit test; refusals are [`StoreError`]
//!    variants, and a refused command changes nothing;
//! 4. lookups (by ID, name, prefix) as methods on [`State`], next to
//!    [`State::service`] and [`State::node`].
//!
//! And in `flotilla-raft` (`storage.rs`), which persists one redb row per
//! [`Change`] after each batch of applies: a `TableDefinition` for the new
//! table, added to the tables created in `open`, read back in
//! `load_state`, written in `persist` (the match over [`Change`] is
//! exhaustive, so the compiler points there), cleared and refilled in
//! `install_snapshot`, and listed in `seed`. The snapshot itself needs
//! nothing: it is the whole [`State`] as JSON, so the new field travels
//! with it (hence `#[serde(default)]` for older snapshots).

pub mod command;
pub mod entry;
pub mod error;
pub mod state;

pub use command::{Command, CommandResult, TaskStatusUpdate, MAX_BATCH, MAX_ENTRY_BYTES};
pub use entry::{
    writable_format, Body, EntryError, Envelope, RequestId, AUTOLOCK_FORMAT,
    BACKUP_SCHEDULE_FORMAT, FORMAT, NETWORKS_FORMAT, PORTS_FORMAT, SECRETS_FORMAT,
};
pub use error::StoreError;
pub use state::{Change, State};
