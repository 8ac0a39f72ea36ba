//! Flotilla's public key infrastructure: the cluster CA made at `init`,
//! node certificates that carry a node's ID and role, join tokens that pin
//! the CA, and the rustls configurations for mutual TLS between nodes.
//!
//! Everything uses ECDSA P-256 and rustls with the ring provider (passed
//! explicitly, so that no process-wide default is needed).
//!
//! This crate owns no files and opens no sockets: callers store the PEM
//! strings and build listeners and clients from the configs.
//!
//! # Layout
//! - [`ca`]: creating and loading the CA, signing node CSRs.
//! - [`cert`]: node keys and CSRs, reading a peer's identity from its
//!   certificate.
//! - [`seal`]: the cluster data key that seals secret and config data.
//! - [`token`]: join tokens, `FLT-1-<CA fingerprint>-<secret>`.
//! - [`tls`]: rustls server and client configs, including the pinned
//!   verifier a joining node uses before it trusts anything.

pub mod ca;
pub mod cert;
pub mod seal;
pub mod tls;
pub mod token;

pub use ca::{fingerprint, pem_fingerprint, Ca, CaMaterial};
pub use cert::{new_key_and_csr, peer_identity, NodeKey, PeerIdentity, Role};
pub use token::{JoinToken, TokenError};

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("invalid PEM or DER data: {0}")]
    Parse(String),
    #[error("the certificate does not identify a flotilla node: {0}")]
    NotANode(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The DNS name every node certificate carries; clients that may talk to
/// any node verify it.
pub const NODE_NAME: &str = "flotilla-node";
/// The DNS name only manager certificates carry; clients of manager-only
/// endpoints (raft, forwarding) verify it, so a worker cannot pose as one.
pub const MANAGER_NAME: &str = "flotilla-manager";
