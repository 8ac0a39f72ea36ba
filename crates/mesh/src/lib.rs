//! The routing mesh's data path: every published TCP port of the cluster
//! answers on this node and each connection is forwarded to a ready task
//! of its service, on any node.
//!
//! This crate owns the listeners, the choice of backend (least
//! connections or round robin, retrying another backend when a connect
//! fails), the PROXY protocol header, the byte copy with half-close and
//! idle timeout, the per-service connection cap, and the counters shown by
//! `mesh stats`. It does not decide who is in rotation: it is handed a
//! [`tokio::sync::watch`] of [`MeshTable`](flotilla_types::mesh::MeshTable)
//! (computed by the leader from the store) and knows nothing of raft, the
//! store or the agent. UDP ports in the table are ignored for now.
//!
//! Guarantees:
//! - A backend that leaves the table gets no new connection, and its open
//!   connections run until they end; a port that leaves the table stops
//!   accepting, and its open connections run until they end. Rolling
//!   updates therefore refuse nothing while a backend stays in rotation.
//! - A connect that fails has sent nothing, so the connection is tried on
//!   the next backend, each backend at most once.
//! - Memory is bounded: two fixed buffers (or two pipes) per connection and
//!   a cap of connections per service (`max_connections`, or
//!   [`DEFAULT_MAX_CONNECTIONS`]).
//! - No global lock per connection: a connection reads its port's route
//!   once (a read lock on that port) and then only touches atomics.
//!
//! # Copying
//! [`CopyMode::Splice`] (the default) moves bytes with `splice(2)` through
//! a pipe per direction; [`CopyMode::Buffered`] reads into a 64 KiB buffer
//! per direction.
//!
//! # Layout
//! - [`mesh`]: [`Mesh`], [`MeshConfig`], the table loop and the stats.
//! - [`listener`]: one port's listener and the life of a connection.
//! - [`balance`]: the choice of backend, a pure function.
//! - [`copy`]: the two copy loops, half-close and the idle timeout.
//! - [`proxy`]: PROXY protocol v1 and v2 headers.
//! - [`state`]: the shared routes and counters.

pub mod balance;
pub mod copy;
pub mod listener;
pub mod mesh;
pub mod proxy;
pub mod state;

pub use copy::{CopyError, CopyMode};
pub use listener::ConnError;
pub use mesh::{
    Mesh, MeshConfig, DEFAULT_BIND_RETRY, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
