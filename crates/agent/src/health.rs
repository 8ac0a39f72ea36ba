//! Health checks: when to probe a task and what the results mean.
//!
//! Placeholder: health checks are being written.
