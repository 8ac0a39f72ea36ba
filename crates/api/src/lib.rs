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
//!
//! Remote access: every route but `/v1/leader-check` needs a certificate of
//! the cluster CA (from `flotilla client-cert` on a manager).
//!
//! # Routes (all JSON; errors are `{"error": "..."}` with a 4xx/5xx status)
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | GET | `/v1/leader-check` | | [`model::LeaderCheck`] (200 leader, 503 not) |
//! | POST | `/v1/client-cert` | [`model::ClientCertRequest`] | [`model::ClientCert`] |
//! | GET | `/v1/info` | | [`model::Info`] |
//! | POST | `/v1/init` | [`model::InitRequest`] | [`model::InitResponse`] |
//! | POST | `/v1/join` | [`model::JoinRequest`] | [`model::InitResponse`] |
//! | POST | `/v1/leave` | `force` | `null` |
//! | GET | `/v1/join-token/{role}` | `rotate` | [`model::JoinTokenView`] |
//! | GET | `/v1/nodes` | | `[`[`model::NodeView`]`]` |
//! | GET | `/v1/nodes/{id}` | | [`model::NodeView`] |
//! | POST | `/v1/nodes/{id}/update` | [`model::NodeUpdate`] | [`model::NodeView`] |
//! | DELETE | `/v1/nodes/{id}` | `force` | [`model::Removed`] |
//! | GET | `/v1/services` | | `[`[`model::ServiceView`]`]` |
//! | POST | `/v1/services` | [`flotilla_types::ServiceSpec`] | [`model::ServiceView`] |
//! | GET | `/v1/services/{name}` | | [`model::ServiceView`] |
//! | PUT | `/v1/services/{name}` | [`model::ServiceReplace`] | [`model::ServiceView`] |
//! | POST | `/v1/services/{name}/scale` | [`model::ScaleRequest`] | [`model::ServiceView`] |
//! | POST | `/v1/services/{name}/rollback` | | [`model::ServiceView`] |
//! | DELETE | `/v1/services/{name}` | | [`model::Removed`] |
//! | GET | `/v1/services/{name}/tasks` | | `[`[`model::TaskView`]`]` |
//! | GET | `/v1/services/{name}/logs` | [`model::LogQuery`] | JSON lines of [`model::LogEvent`] |

pub mod client;
pub mod model;

pub use client::{Client, ClientError};
