//! The docker driver: tasks as containers on the local Docker Engine.
//!
//! Placeholder: the driver is being written.

/// Runs tasks as Docker containers.
#[derive(Debug, Default)]
pub struct DockerDriver;
