//! The `flotilla` binary's library: the CLI and the dev mode.
//!
//! This crate owns what a user types and sees: argument parsing, talking
//! to a daemon through `flotilla-api`'s client, waiting with progress, and
//! output formatting. The daemon itself is `flotilla-node` (which `main`
//! starts for `flotilla daemon`); Compose files are `flotilla-compose`.
//! The CLI never reaches into the daemon's code.
//!
//! # Layout
//! - [`cli`]: clap definitions and the client commands.
//! - [`dev`]: `flotilla dev`, a throwaway one-node cluster with a stack.
//! - [`demo`]: `flotilla demo http`, a tiny HTTP server to run as a task.

pub mod cli;
pub mod demo;
pub mod dev;

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
