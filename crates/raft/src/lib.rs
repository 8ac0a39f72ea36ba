//! Raft for Flotilla managers: openraft wired to storage on redb.
//!
//! This crate owns the durable side of a manager: the raft log, the vote and
//! the state machine, all in one redb file under the data dir, and the
//! openraft type configuration whose log entry is [`flotilla_store::Envelope`]
//! (a [`flotilla_store::Command`] with its format and request ID).
//! It does not decide what to propose (that is the manager's job) and does
//! not serve the client API.
//!
//! # Durability
//! Log appends and votes commit with `Durability::Immediate` (fsync) before
//! openraft is told they are persisted. State machine applies commit with
//! `Durability::None`: they share the redb file with the log, so the next
//! durable log commit makes them durable too, and after a crash openraft
//! re-applies committed entries from the log (the committed log id is
//! saved).
//!
//! # Layout
//! - [`storage`]: [`storage::LogStore`] and [`storage::StateMachine`] on redb.
//! - [`network`]: the raft network. One-node clusters never dial; the
//!   multi-node transport plugs in here.
//! - [`node`]: [`node::RaftNode`], opening the store and starting openraft.
//! - [`batch`]: the proposer's batcher; client writes queued meanwhile go
//!   into one entry.
//! - [`elect`]: the election timer, with a timeout drawn anew every term.
//! - [`lease`]: the leader lease; a member acts as leader only while a
//!   quorum acknowledged it within the lowest election timeout.

pub mod batch;
pub mod elect;
pub mod lease;
pub mod log_writer;
pub mod network;
pub mod node;
pub mod storage;

use std::io::Cursor;

pub use node::{RaftError, RaftNode};

/// The response of applying one entry: a result for each of its commands
/// (one, or a batch's, in order; none for a blank or membership entry).
pub type Response = Vec<flotilla_store::CommandResult>;

openraft::declare_raft_types!(
    /// Flotilla's raft types: commands in, command results out.
    pub TypeConfig:
        D = flotilla_store::Envelope,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle with our types.
pub type Raft = openraft::Raft<TypeConfig>;
