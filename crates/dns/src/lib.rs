//! The node's resolver: what a task's DNS query for a service's name
//! gets, as Swarm's embedded DNS answers (`web`, `STACK_web`, aliases,
//! `tasks.web`), from the leader's [`NetworkTable`] and nothing else.
//!
//! - [`wire`]: the DNS wire format, as much as the resolver needs (one
//!   question in; A, SRV and SOA records out). Other queries are relayed
//!   as bytes.
//! - [`resolve`]: the pure decision: which records a task at an address
//!   gets for a name, scoped to the networks that task is on, or that the
//!   name is not the cluster's and goes to the node's own resolvers.
//! - [`server`]: the UDP server around it, relaying what is not the
//!   cluster's to the upstreams of `/etc/resolv.conf`, with a timeout and
//!   a cap on relays in flight.
//!
//! Answers carry a TTL of 1 s and an empty answer is NXDOMAIN with a
//! negative TTL of 1 s, so that a cache never holds an address for longer
//! than a change takes to reach every node.
//!
//! [`NetworkTable`]: flotilla_types::network::NetworkTable

pub mod resolve;
pub mod server;
pub mod wire;

pub use resolve::{
    answer, answer_for, negative_soa, networks_of, Answer, Scope, NEGATIVE_TTL, TTL,
};
pub use wire::{parse_query, refusal, response, Query, Record, WireError};
