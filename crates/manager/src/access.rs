//! What the manager's loops need from the outside: the store to read, raft
//! to propose through, a clock, and the heartbeats agents send. Traits (or
//! plain shared data), so that tests can supply fakes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_store::{Command, CommandResult, State};
use flotilla_types::UnixMs;
use tokio::sync::watch;

/// Wall-clock time. A trait so that tests control time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> UnixMs;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMs {
        // A clock before 1970 is a broken host; 0 keeps the loops running.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// How loops read the store: a shared State and a watch of the last applied
/// raft index. Whoever applies commands writes the state first and then
/// sends the index.
#[derive(Debug, Clone)]
pub struct StoreView {
    pub state: Arc<RwLock<State>>,
    pub applied: watch::Receiver<u64>,
}

impl StoreView {
    /// Reads the state. A writer that panicked leaves the lock poisoned;
    /// the state it left is still the best view there is, and the loops
    /// must not panic in turn.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A boxed future, so that [`Proposer`] stays object safe.
pub type ProposeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CommandResult, ProposeError>> + Send + 'a>>;

/// How loops change the store: propose a command through raft (leader
/// only). The future resolves once the command is committed and applied.
pub trait Proposer: Send + Sync + 'static {
    fn propose(&self, command: Command) -> ProposeFuture<'_>;
}

/// Why a proposal was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader")]
    NotLeader,
    #[error("{0}")]
    Other(String),
}

/// When this manager last heard from each node's agent, by node ID. The
/// dispatcher's sessions record into it and the node watcher reads it;
/// clones share one map. It is not replicated: only the leader hears
/// heartbeats, and a new leader counts from its own start (see
/// [`crate::dispatcher::expired_nodes`]).
#[derive(Debug, Clone, Default)]
pub struct Heartbeats(Arc<Mutex<HashMap<String, UnixMs>>>);

impl Heartbeats {
    pub fn new() -> Self {
        Heartbeats::default()
    }

    /// `node_id` was heard from at `at`. Never moves a node's time back.
    pub fn record(&self, node_id: &str, at: UnixMs) {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let last = seen.entry(node_id.to_string()).or_insert(at);
        *last = (*last).max(at);
    }

    /// A copy of the times heard, to decide on without holding the lock.
    pub fn snapshot(&self) -> HashMap<String, UnixMs> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
