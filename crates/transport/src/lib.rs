//! The cluster port: HTTP/1.1 over mutual TLS between nodes.
//!
//! This crate owns the wire, not the endpoints: [`serve`] runs an axum
//! router behind a TLS acceptor and tells each handler who is calling
//! ([`Peer`]), and [`ClusterClient`] posts JSON to another node, verifying
//! that it is a node (or a manager) of this cluster. Raft messages, agent
//! sessions and joins are endpoints the daemon defines on top.
//!
//! # Layout
//! - [`server`]: [`serve`] and [`Peer`].
//! - [`client`]: [`ClusterClient`] and [`TransportError`].
//! - [`frame`]: bodies of a JSON header and raw bytes (snapshot chunks).

pub mod client;
pub mod frame;
pub mod server;

pub use client::{ClusterClient, Target, TransportError};
pub use server::{serve, Peer};

/// The error body every cluster endpoint answers with on failure.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
