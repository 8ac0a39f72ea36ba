//! The driver abstraction: what actually runs a task.
//!
//! The agent owns the lifecycle (when to start, stop, adopt, report); a
//! driver only knows how to do each step for one kind of workload. The shape
//! fits a plain process ([`crate::ProcessDriver`]) and a container engine: a
//! Docker driver would create and start a container in `start`, resolve its
//! exit future from the wait API, inspect the container in `adopt`, send
//! signals through the kill API and delete the container in `remove`.
//!
//! Methods return boxed futures by hand so that the trait stays object safe
//! without the `async-trait` crate.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use flotilla_types::{HealthCheck, HealthTest, TaskPort, TaskTemplate};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::procfs::ProcError;

/// A boxed, sendable future, as returned by [`Driver`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves once the workload has ended. Owned by whoever supervises the
/// task, so a driver keeps no per-task table.
pub type ExitFuture = BoxFuture<'static, Exit>;

/// How a workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ended, but its status could not be collected (a process adopted
    /// after an agent restart is no longer the agent's child).
    Unknown,
}

impl Exit {
    /// The shell convention: the exit status, or 128 + the signal number.
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(signal) => Some(128 + signal),
            Exit::Unknown => None,
        }
    }
}

/// Identifies a running workload well enough to find it again after the
/// agent restarts. Persisted in the task record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// Process ID of the workload's main process (the process group leader
    /// for the process driver).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Start time of that process in clock ticks since boot
    /// (`/proc/<pid>/stat` field 22): tells a reused pid from ours.
    #[serde(default)]
    pub start_time: Option<u64>,
    /// Driver-specific identity, such as a container ID; unused by the
    /// process driver.
    #[serde(default)]
    pub id: Option<String>,
    /// The task's own network namespace (a process task on networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<Box<NetnsHandle>>,
    /// The signal a stop sends first, when the template names one
    /// (`stop_signal`); SIGTERM otherwise. Kept in the record, so that an
    /// adopted task is stopped as it was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<i32>,
}

/// A process task's network namespace, as its record keeps it: enough to
/// probe it, register it again after an agent restart and remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsHandle {
    /// Its name under `/run/netns`.
    pub name: String,
    /// The task's address on its first network, where it listens.
    pub addr: std::net::Ipv4Addr,
    /// The IDs of its networks.
    #[serde(default)]
    pub networks: Vec<String>,
}

/// Everything a driver needs to start one task.
#[derive(Debug, Clone)]
pub struct StartSpec {
    pub task_id: String,
    /// What to run, as the service defines it.
    pub template: TaskTemplate,
    /// The task's environment as the agent decided it: the template's
    /// variables plus `FLOTILLA_*`. Whether the driver adds anything (such as
    /// the daemon's own environment) is its own choice.
    pub env: BTreeMap<String, String>,
    /// Where stdout and stderr go, appended.
    pub log_path: PathBuf,
    /// The task's target ports, with the node's port the agent chose for
    /// each (a process listens on it: `PORT`, `FLOTILLA_PORT_<TARGET>`); a
    /// driver with its own port mapping may choose its own instead.
    pub ports: Vec<TaskPort>,
    /// Run the task in this network namespace, with its resolver
    /// configuration (a process task on networks; see [`crate::taskns`]).
    pub netns: Option<crate::taskns::TaskNetns>,
    /// Attach the container to these engine networks (a container task on
    /// networks; the first is its network mode and its resolver's).
    pub engine_networks: Vec<EngineNetwork>,
    /// Bound over the container's `/etc/resolv.conf` (a container task on
    /// networks: the node's resolver).
    pub resolv_conf: Option<PathBuf>,
    /// The task's secrets and configs, written to memory: a process is
    /// told their directories, a container gets each bound at its path.
    pub files: crate::files::TaskFiles,
}

/// A Flotilla network as the container engine of this node holds it: a
/// bridge network on the node's own bridge of the network (which the
/// wiring loop made, so the engine uses it and never removes it), with the
/// network's subnet and gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineNetwork {
    /// The engine's name for it: `fl-<network ID>`.
    pub name: String,
    /// The Flotilla network's name (a label on the engine's network).
    pub network_name: String,
    pub bridge: String,
    pub subnet: flotilla_types::Subnet,
    pub internal: bool,
    /// Its MTU (smaller on an encrypted network).
    pub mtu: u32,
    /// The task's address on it.
    pub addr: std::net::Ipv4Addr,
}

/// A workload that has started.
pub struct Started {
    pub handle: Handle,
    pub exit: ExitFuture,
    /// Where its target ports answer on the node.
    pub ports: Vec<TaskPort>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// The two signals of a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// Asks the workload to end: the task's stop signal
    /// ([`Handle::stop_signal`]), SIGTERM by default.
    Terminate,
    /// Ends it (SIGKILL).
    Kill,
}

/// Why a driver step failed.
#[derive(Debug, Error)]
pub enum DriverError {
    #[error("no command to run: the task's command is empty")]
    EmptyCommand,
    #[error("executable file not found in $PATH: {0:?}")]
    NotFound(String),
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot signal process group {pid}: {source}")]
    Signal {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("refusing to signal pid {0}: not a task process")]
    BadPid(u32),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("this node has no {0} driver")]
    NoDriver(String),
    /// For drivers whose failures fit none of the above.
    #[error("{0}")]
    Other(String),
}

/// The outcome of one health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Healthy,
    /// Failed, with what the probe saw ("exit code 1", "connection
    /// refused", "HTTP 500").
    Unhealthy(String),
}

/// Runs tasks of one kind. Object safe: the agent holds an `Arc<dyn Driver>`
/// per kind in [`Drivers`].
pub trait Driver: Send + Sync {
    /// Short name stored in task records, so that a record is only ever
    /// adopted by the driver that made it.
    fn name(&self) -> &'static str;

    /// Starts a task and returns once it runs.
    fn start(&self, spec: StartSpec) -> BoxFuture<'_, Result<Started, DriverError>>;

    /// After an agent restart: if `handle` still names the same live
    /// workload, returns a future for its end; `None` when it is gone.
    fn adopt(&self, handle: Handle) -> BoxFuture<'_, Result<Option<ExitFuture>, DriverError>>;

    /// Sends a stop signal to the whole workload. Succeeds when the workload
    /// is already gone.
    fn signal<'a>(
        &'a self,
        handle: &'a Handle,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Stops a workload: [`StopSignal::Terminate`], then
    /// [`StopSignal::Kill`] if it has not ended within `grace`. Resolves with
    /// how it ended. A driver with a native stop (Docker's) may override it.
    fn stop<'a>(
        &'a self,
        handle: &'a Handle,
        grace: Duration,
        exit: &'a mut ExitFuture,
    ) -> BoxFuture<'a, Result<Exit, DriverError>> {
        Box::pin(async move {
            self.signal(handle, StopSignal::Terminate).await?;
            match tokio::time::timeout(grace, &mut *exit).await {
                Ok(ended) => Ok(ended),
                Err(_) => {
                    self.signal(handle, StopSignal::Kill).await?;
                    Ok(exit.await)
                }
            }
        })
    }

    /// Frees what the workload left once it has ended (a container). The
    /// task's directory and log are the agent's, not the driver's.
    fn remove<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Runs one health probe against a running workload and resolves within
    /// `timeout`. `test` is never [`HealthTest::None`] or
    /// [`HealthTest::Image`]: the agent resolves those first.
    fn probe<'a>(
        &'a self,
        handle: &'a Handle,
        test: &'a HealthTest,
        timeout: Duration,
    ) -> BoxFuture<'a, Probe> {
        let _ = (handle, timeout);
        Box::pin(async move {
            Probe::Unhealthy(format!(
                "the {} driver cannot run {test:?} probes",
                self.name()
            ))
        })
    }

    /// After adoption: removes workloads of this node that belong to no
    /// task in `keep` (a container created just before a crash, before its
    /// record was written) and returns their IDs. Processes need nothing:
    /// the process driver's default does nothing.
    fn remove_stale<'a>(
        &'a self,
        node_id: &'a str,
        keep: &'a std::collections::HashSet<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let _ = (node_id, keep);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The health check the workload brings itself (a container image's
    /// HEALTHCHECK), used when the template gives none or asks for the
    /// image's test. `None` by default.
    fn own_health<'a>(
        &'a self,
        handle: &'a Handle,
    ) -> BoxFuture<'a, Result<Option<HealthCheck>, DriverError>> {
        let _ = handle;
        Box::pin(async { Ok(None) })
    }
}

/// The drivers of a node, by [`Driver::name`], which matches
/// `flotilla_types::Driver::as_str`.
#[derive(Clone, Default)]
pub struct Drivers {
    by_name: BTreeMap<&'static str, std::sync::Arc<dyn Driver>>,
}

impl Drivers {
    /// A registry of these drivers; a later one with the same name wins.
    pub fn new(drivers: impl IntoIterator<Item = std::sync::Arc<dyn Driver>>) -> Self {
        Drivers {
            by_name: drivers.into_iter().map(|d| (d.name(), d)).collect(),
        }
    }

    /// The driver that runs tasks of kind `name`.
    pub fn get(&self, name: &str) -> Option<std::sync::Arc<dyn Driver>> {
        self.by_name.get(name).cloned()
    }

    /// The names of the drivers, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }
}

impl std::fmt::Debug for Drivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}
