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
//! store or the agent. UDP ports are forwarded by flow ([`udp`]).
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
//! - The connections run on the mesh's own threads ([`MeshConfig::workers`],
//!   one single-threaded runtime per core, pinned): by default the kernel
//!   steers each new connection to the socket of the thread on the CPU
//!   that received it ([`AcceptMode::Steered`]), or one acceptor hands each
//!   to the thread with the fewest open ([`AcceptMode::Handover`]); there it
//!   stays. The daemon's control work (raft, the API, snapshot builds)
//!   never queues in front of a copy, and an open connection goes on while
//!   the daemon's runtime is blocked (a test).
//!
//! # Copying
//! [`CopyMode::Splice`] (the default) copies each direction's small
//! messages through a 16 KiB buffer and goes over to `splice(2)` through a
//! pooled 256 KiB pipe once a read fills the buffer (a large transfer), as
//! HAProxy's splice-auto does: per small message a copy costs less than a
//! pipe (the HAProxy benchmark, docs/mesh.md: CPU per request 1.05 and
//! 1.11 of HAProxy's, against 1.13 to 1.23 splicing everything), per byte
//! of a large transfer splice costs less (below). [`CopyMode::Buffered`]
//! keeps the buffer for everything. A read shorter than the buffer or the
//! pipe ends a read, so no read is spent learning the socket is empty. A
//! connection holds 32 KiB of buffers; a spliced direction four more file
//! descriptors, and it falls back to the buffer when a pipe cannot be made.
//!
//! The bulk figures below are from before the buffer first (64 KiB
//! buffered against splice for everything):
//!
//! Measured with `cargo test -p flotilla-mesh --release --test bench --
//! --ignored --nocapture`: 512 MiB one way through the mesh on 127.0.0.1,
//! client, mesh and backend in one process on the 2-core build machine
//! (shared, load average near 4, so rates vary by a third between runs);
//! medians of 7 interleaved rounds, CPU is user + system of the whole
//! process per GiB moved:
//!
//! | path | 1 connection | 4 connections |
//! |---|---|---|
//! | direct, no mesh | 1483 MiB/s, 0.61 CPU s/GiB | 1697 MiB/s, 0.60 CPU s/GiB |
//! | `Buffered` (64 KiB) | 639 MiB/s, 1.43 CPU s/GiB | 652 MiB/s, 1.59 CPU s/GiB |
//! | `Splice` (256 KiB pipe) | 630 MiB/s, 1.42 CPU s/GiB | 811 MiB/s, 1.18 CPU s/GiB |
//!
//! Splice through the kernel's default 64 KiB pipe measured the same as
//! `Buffered` (747 against 722 MiB/s, 1.39 against 1.49 CPU s/GiB with 4
//! connections); a 1 MiB pipe little better than 256 KiB (990 MiB/s, 1.07
//! CPU s/GiB) for four times the pages a busy connection can pin.
//!
//! # Layout
//! - [`mesh`]: [`Mesh`], [`MeshConfig`], the table loop and the stats.
//! - [`listener`]: one port's listener and the life of a connection.
//! - [`balance`]: the choice of backend, a pure function.
//! - [`copy`]: the two copy loops, half-close and the idle timeout.
//! - [`proxy`]: PROXY protocol v1 and v2 headers.
//! - [`state`]: the shared routes and counters.
//! - [`udp`]: UDP ports, forwarded by flow with a flow timeout.
//! - [`vip`]: tasks' connections to the virtual addresses of services on
//!   their networks.

pub mod balance;
pub mod copy;
pub mod listener;
pub mod mesh;
pub mod proxy;
pub mod state;
pub mod udp;
pub mod vip;

pub use copy::{CopyError, CopyMode};
pub use listener::AcceptMode;
pub use listener::ConnError;
pub use mesh::{
    default_workers, Mesh, MeshConfig, DEFAULT_BIND_RETRY, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
};
