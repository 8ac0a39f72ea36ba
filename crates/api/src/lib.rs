//! Flotilla's client API: the JSON shapes the daemon serves and the typed
//! client that the CLI (and tests) use to talk to it.
//!
//! The CLI never touches the daemon's internals; everything it shows comes
//! through [`Client`]. The server side lives in the daemon (the `flotilla`
//! crate), which implements these routes over the node's store.
//!
//! # Layout
//! - [`model`]: request and response bodies, the API contract.
//! - [`client`]: [`Client`], HTTP/1.1 over the daemon's Unix socket, or
//!   HTTPS with a client certificate to any live manager.
//! - [`routes`]: the route table, [`routes::ROUTES`].
//! - [`openapi`]: the OpenAPI document generated from the table.
//!
//! Remote access: every route but `/v1/leader-check` needs a certificate of
//! the cluster CA (from `flotilla client-cert` on a manager).
//!
//! # Routes
//! [`routes::ROUTES`] is the route table: the daemon's router is built from
//! it, and so is the OpenAPI 3 document [`openapi::document`], checked in
//! as `docs/openapi.json` (regenerate it with `cargo run -p flotilla-api
//! --bin openapi`; a test fails when it is stale). All bodies are JSON;
//! errors are [`model::ErrorBody`], `{"error": "..."}`, with a 4xx/5xx
//! status.

pub mod client;
pub mod model;
pub mod openapi;
pub mod routes;

pub use client::{Client, ClientError};
