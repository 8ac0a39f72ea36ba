//! Why the state machine refused a command. These travel back to the
//! proposer inside the raft response, so they are plain serializable data.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A command that was committed but changed nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum StoreError {
    #[error("this node is already part of a cluster")]
    AlreadyInitialized,
    #[error("the cluster is not initialized: run 'flotilla init'")]
    NotInitialized,
    #[error("service {0} already exists")]
    ServiceExists(String),
    #[error("service {0} not found")]
    ServiceNotFound(String),
    #[error("service {0} has no previous spec to roll back to")]
    NothingToRollBack(String),
    #[error("node {0} not found")]
    NodeNotFound(String),
    #[error("node {0} already exists")]
    NodeExists(String),
    #[error(
        "service {name} was changed by someone else (version {expected} expected, {actual} found)"
    )]
    VersionConflict {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("port {port}/{protocol} is already published by service {service}")]
    PortTaken {
        port: u16,
        protocol: String,
        service: String,
    },
    #[error("service {service}: the allocated ports do not match its spec ({reason})")]
    PortsMismatch { service: String, reason: String },
    #[error("network {0} already exists")]
    NetworkExists(String),
    #[error("network {0} not found")]
    NetworkNotFound(String),
    #[error("subnet {subnet} overlaps {what}")]
    SubnetOverlaps { subnet: String, what: String },
    #[error("network {name} is in use by services {services}")]
    NetworkInUse { name: String, services: String },
    #[error("backup schedule cannot run: {0}")]
    BadSchedule(String),
    #[error("{kind} {name} already exists")]
    SecretExists { kind: String, name: String },
    #[error("{kind} {name} not found")]
    SecretNotFound { kind: String, name: String },
    #[error("{kind} {name} is in use by services {services}")]
    SecretInUse {
        kind: String,
        name: String,
        services: String,
    },
    #[error("{kind} {name}: {reason}")]
    BadSecret {
        kind: String,
        name: String,
        reason: String,
    },
    #[error("{what}: the allocated addresses do not fit ({reason})")]
    AddressMismatch { what: String, reason: String },
}
