//! The `flotilla` binary's library: the node daemon, the CLI commands and
//! the dev mode, wired from the workspace's crates.
//!
//! This crate owns process concerns: argument parsing, signals, the data
//! dir, the HTTP server over the store, and how the daemon's components are
//! started and stopped. Decisions live in `flotilla-manager`, state in
//! `flotilla-store`/`flotilla-raft`, task execution in `flotilla-agent`.
//!
//! # Layout
//! - [`cli`]: clap definitions and the client commands.
//! - [`daemon`]: `flotilla daemon`: API server, raft member, leader loops,
//!   the local agent link.
//! - [`dev`]: `flotilla dev`, a throwaway one-node cluster with a stack.
//! - [`stack`]: stack files in the Compose shape.

pub mod cli;
pub mod compose;
pub mod daemon;
pub mod dev;
pub mod stack;

use std::path::PathBuf;

/// The data dir when none is given: `/var/lib/flotilla` for root, else
/// `$XDG_DATA_HOME/flotilla` (or `~/.local/share/flotilla`).
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/flotilla");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("flotilla");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/flotilla"),
        None => PathBuf::from("/tmp/flotilla"),
    }
}
