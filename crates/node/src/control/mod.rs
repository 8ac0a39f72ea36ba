//! The control layer: the rules of every change a client asks for, over a
//! read view of the store and a [`Writer`], in the spirit of swarmkit's
//! `controlapi`. An API handler ([`crate::api`]) parses its request, calls
//! one function here and shapes the answer; nothing here knows HTTP, raft
//! or sockets, so every rule is unit tested against an in-memory store
//! (see `testing`).
//!
//! # Layout
//! - [`services`]: create, scale, replace, roll back, remove.
//! - [`nodes`]: update, promote, demote, remove.
//! - [`networks`]: create, remove, and network names in service specs.
//! - [`autolock`]: autolock on and off, the unlock key shown or rotated.
//! - [`cluster`]: join tokens and their secrets, the role a join secret
//!   gives, and the quorum arithmetic of `leave`.

pub mod autolock;
pub mod cluster;
pub mod networks;
pub mod nodes;
pub mod secrets;
pub mod services;

#[cfg(test)]
mod testing;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use flotilla_manager::{Clock, StoreView};
use flotilla_store::{Command, CommandResult, State, StoreError};

use crate::keyring::Keyring;
use crate::ProposeFailure;

/// A write's future.
pub type WriteFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the control layer changes the cluster. The node's [`crate::Member`]
/// implements it with the write path (propose here or forward to the
/// leader); tests implement it over a plain [`State`].
pub trait Writer: Send + Sync {
    /// Proposes `command`; resolves once it is committed and applied on
    /// this node, so that a read that follows sees it.
    fn propose(&self, command: Command) -> WriteFuture<'_, Result<CommandResult, ProposeFailure>>;
    /// Takes the manager with raft ID `raft_id` out of the raft voters.
    fn remove_manager(&self, raft_id: u64) -> WriteFuture<'_, Result<(), String>>;
    /// The raft ID of the leader as this node knows it.
    fn leader(&self) -> Option<u64>;
}

/// Why a change was refused or failed. The API maps each to one status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request itself is wrong (400).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the cluster's state (409).
    #[error("{0}")]
    Conflict(String),
    /// The cluster cannot do it now (503).
    #[error("{0}")]
    Unavailable(String),
    /// The state machine refused the command.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The command was not committed.
    #[error(transparent)]
    Write(#[from] ProposeFailure),
}

/// The store to read, the writer, and the clock that stamps commands.
#[derive(Clone)]
pub struct Control {
    pub view: StoreView,
    pub writer: Arc<dyn Writer>,
    pub clock: Arc<dyn Clock>,
    /// The unlock keys this manager holds: the cluster's keys under
    /// autolock.
    pub keys: Arc<Keyring>,
}

impl Control {
    pub fn new(
        view: StoreView,
        writer: Arc<dyn Writer>,
        clock: Arc<dyn Clock>,
        keys: Arc<Keyring>,
    ) -> Self {
        Control {
            view,
            writer,
            clock,
            keys,
        }
    }

    /// Reads the store.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.view.read())
    }

    /// The cluster's record, as the store holds it.
    fn cluster_record(&self) -> Result<flotilla_types::Cluster, ControlError> {
        self.read(|s| s.cluster.clone())
            .ok_or_else(|| ControlError::Conflict("the cluster is not initialized".into()))
    }

    /// Proposes `command` and returns what the state machine answered.
    async fn commit(&self, command: Command) -> Result<Option<String>, ControlError> {
        Ok(self.writer.propose(command).await??)
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// `service X not found`.
pub fn service_not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!("service {name} not found"))
}

/// `node X not found`.
pub fn node_not_found(id: &str) -> ControlError {
    ControlError::NotFound(format!("node {id} not found"))
}
