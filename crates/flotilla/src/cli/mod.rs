//! The CLI: every command talks to a daemon through the typed API client
//! ([`flotilla_api::Client`]) and never through daemon code.
//!
//! # Layout
//! - [`options`]: clap's definitions of the commands and their flags;
//!   [`flags`]: the spec flags of `service create|update` and how they
//!   become a [`flotilla_types::ServiceSpec`]; [`container`]: the flags of
//!   how a task runs (`--user`, `--hostname`, `--sysctl`, ...).
//! - [`commands`]: the commands of nodes, services and the cluster;
//!   [`stack`]: the stack commands; [`logs`]: `service logs`;
//!   [`networks`]: `network create|ls|inspect|rm`; [`secrets`]: `secret`
//!   and `config` `create|update|ls|inspect|rm`.
//! - [`progress`]: waiting for tasks and following updates, with deadlines.
//! - [`output`]: tables, `inspect` text and JSON.

pub mod autolock;
pub mod backup;
pub mod commands;
pub mod container;
pub mod docs;
pub mod flags;
pub mod logs;
pub mod networks;
pub mod options;
pub mod output;
pub mod progress;
pub mod secrets;
pub mod stack;

pub use options::*;
pub use stack::StackCommand;
