//! The docker driver: tasks as containers on the local Docker Engine, through
//! its HTTP API (bollard).
//!
//! - The engine is reached lazily: building a [`DockerDriver`] never fails or
//!   blocks, so a node without Docker still runs process tasks; a docker task
//!   on it is rejected with "docker engine not reachable at ...".
//! - A missing image is pulled; a failed pull rejects the task with the
//!   engine's words.
//! - Containers carry `com.flotilla.*` labels (task, service, node, slot and
//!   the task's log path) so that a restarted agent can find them again,
//!   resume their logs, and so that [`DockerDriver::remove_stale`] can sweep
//!   what no task owns any more. They have no restart policy: the agent
//!   restarts tasks, as new containers.
//! - Docker's own health checking is left as the image defines it; the agent
//!   probes through [`Driver::probe`], and [`Driver::own_health`] hands it
//!   the image's HEALTHCHECK.
//! - stdout and stderr are followed through the logs API and appended to the
//!   task's log file until the container ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::pin;
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    HealthConfig, HostConfig, HostConfigLogConfig, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkingConfig, ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use flotilla_types::{
    HealthCheck, HealthTest, TaskPort, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_RETRIES,
    DEFAULT_HEALTH_TIMEOUT_MS,
};
use futures_util::StreamExt;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use crate::driver::{
    BoxFuture, Driver, DriverError, EngineNetwork, Exit, ExitFuture, Handle, Probe, StartSpec,
    Started, StopSignal,
};
use crate::health::{http_probe, tcp_probe};

/// Where the engine listens when `DOCKER_HOST` says nothing.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Label with the task's ID; every container of Flotilla has it.
pub const LABEL_TASK_ID: &str = "com.flotilla.task.id";
pub const LABEL_SERVICE_ID: &str = "com.flotilla.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.flotilla.service.name";
pub const LABEL_NODE_ID: &str = "com.flotilla.node.id";
pub const LABEL_SLOT: &str = "com.flotilla.task.slot";
/// On an engine network: the Flotilla network it stands for.
pub const LABEL_NETWORK: &str = "com.flotilla.network.name";
/// The task's log file, so that an adopting agent can resume the logs.
pub const LABEL_LOG_PATH: &str = "com.flotilla.log.path";

/// Bounds the first contact with the engine (version negotiation).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bollard's timeout for the response headers of every request.
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// Between attempts to learn that a container ended when the wait API fails.
const WAIT_RETRY: Duration = Duration::from_secs(1);
/// How much of a probe's output is kept for its message.
const PROBE_OUTPUT_CAP: usize = 4096;
/// The engine may take this long beyond a stop's grace to answer.
const STOP_SLACK: Duration = Duration::from_secs(30);

/// Why a step against the engine failed. Becomes [`DriverError::Other`], so
/// the text is what a user sees in the task's error.
#[derive(Debug, Error)]
pub enum DockerError {
    #[error("docker engine not reachable at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("a docker task needs an image")]
    NoImage,
    #[error("cannot pull image {image}: {message}")]
    Pull { image: String, message: String },
    #[error("{what}: {message}")]
    Engine { what: String, message: String },
}

impl From<DockerError> for DriverError {
    fn from(e: DockerError) -> Self {
        DriverError::Other(e.to_string())
    }
}

/// The engine's labels as `docker info` lists them, `KEY=VALUE` (a label
/// without `=` has an empty value); a later one of the same key wins, as
/// the engine itself refuses duplicates.
pub fn parse_engine_labels(labels: &[String]) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter_map(|label| {
            let (key, value) = label.split_once('=').unwrap_or((label.as_str(), ""));
            (!key.is_empty()).then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// A container that carries Flotilla's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContainer {
    pub id: String,
    pub task_id: String,
    /// Without the leading `/`.
    pub name: String,
    pub node_id: Option<String>,
    pub running: bool,
}

/// Runs tasks as containers on one Docker Engine. Cheap to build; connects
/// on first use and keeps the connection.
#[derive(Debug)]
pub struct DockerDriver {
    /// `unix:///path`, a bare socket path, or `tcp://host:port`.
    host: String,
    client: OnceCell<Docker>,
}

impl Default for DockerDriver {
    fn default() -> Self {
        Self::from_env()
    }
}

impl DockerDriver {
    /// A driver for the engine at `host`: a socket path, `unix:///path`, or
    /// `tcp://host:port` (plain HTTP). Does not connect.
    pub fn new(host: impl Into<String>) -> Self {
        DockerDriver {
            host: host.into(),
            client: OnceCell::new(),
        }
    }

    /// The engine named by `DOCKER_HOST`, else [`DEFAULT_DOCKER_SOCKET`].
    pub fn from_env() -> Self {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.trim().is_empty() => Self::new(host),
            _ => Self::new(DEFAULT_DOCKER_SOCKET),
        }
    }

    /// Where the engine is expected, as given.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The engine's labels (`docker info`, the `labels` of its
    /// daemon.json or `dockerd --label`), which the node reports for
    /// `engine.labels.*` constraints and preferences.
    pub async fn engine_labels(&self) -> Result<BTreeMap<String, String>, DockerError> {
        let docker = self.docker().await?;
        let info = docker
            .info()
            .await
            .map_err(|e| self.fail("docker info", e))?;
        Ok(parse_engine_labels(&info.labels.unwrap_or_default()))
    }

    /// The client, connecting (and negotiating the API version, as engines
    /// older than bollard's default reject newer ones) on first use. A
    /// failure is not cached: the next call tries again.
    async fn docker(&self) -> Result<&Docker, DockerError> {
        self.client
            .get_or_try_init(|| async {
                let unreachable = |reason: String| DockerError::Unreachable {
                    host: self.display_host(),
                    reason,
                };
                let docker = if self.host.starts_with("tcp://") || self.host.starts_with("http://")
                {
                    Docker::connect_with_http(&self.host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                } else {
                    Docker::connect_with_unix(&self.host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                }
                .map_err(|e| unreachable(e.to_string()))?;
                match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
                    Ok(Ok(docker)) => Ok(docker),
                    Ok(Err(e)) => Err(unreachable(e.to_string())),
                    Err(_) => Err(unreachable(format!(
                        "no answer within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ))),
                }
            })
            .await
    }

    fn display_host(&self) -> String {
        self.host
            .strip_prefix("unix://")
            .unwrap_or(&self.host)
            .to_string()
    }

    /// An engine error, told apart: a broken connection means the engine
    /// went away, anything else is the engine's answer.
    fn fail(&self, what: impl Into<String>, e: EngineError) -> DockerError {
        if is_unreachable(&e) {
            DockerError::Unreachable {
                host: self.display_host(),
                reason: e.to_string(),
            }
        } else {
            DockerError::Engine {
                what: what.into(),
                message: engine_message(&e),
            }
        }
    }

    /// Every container with Flotilla's task label, running or not; only
    /// those of `node_id` when given (nodes of a test cluster may share one
    /// engine).
    pub async fn containers(
        &self,
        node_id: Option<&str>,
    ) -> Result<Vec<TaskContainer>, DriverError> {
        let docker = self.docker().await?;
        let mut labels = vec![LABEL_TASK_ID.to_string()];
        if let Some(node) = node_id {
            labels.push(format!("{LABEL_NODE_ID}={node}"));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels)])),
            ..Default::default()
        };
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.fail("cannot list containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(TaskContainer {
                    id: c.id?,
                    task_id: labels.get(LABEL_TASK_ID)?.clone(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    node_id: labels.get(LABEL_NODE_ID).cloned(),
                    running: c
                        .state
                        .is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING),
                })
            })
            .collect())
    }

    /// Removes (forcibly) the containers of `node_id` whose task is not in
    /// `keep`, and returns their IDs. Meant for after adoption: a container
    /// left by a crash between its creation and its record, or whose task
    /// the agent failed while the engine was away, belongs to no task.
    /// Call it with the IDs of every task the agent still tracks.
    pub async fn remove_stale(
        &self,
        node_id: &str,
        keep: &HashSet<String>,
    ) -> Result<Vec<String>, DriverError> {
        let docker = self.docker().await?;
        let mut removed = Vec::new();
        for c in self.containers(Some(node_id)).await? {
            if keep.contains(&c.task_id) {
                continue;
            }
            remove_forced(docker, &c.id)
                .await
                .map_err(|e| self.fail(format!("cannot remove container {}", c.name), e))?;
            debug!(container = %c.id, task_id = %c.task_id, "removed a stale container");
            removed.push(c.id);
        }
        Ok(removed)
    }

    async fn start_container(&self, spec: StartSpec) -> Result<Started, DockerError> {
        let image = spec
            .template
            .image
            .clone()
            .filter(|i| !i.trim().is_empty())
            .ok_or(DockerError::NoImage)?;
        let docker = self.docker().await?;
        self.ensure_image(docker, &image).await?;
        for network in &spec.engine_networks {
            self.ensure_network(docker, network).await?;
        }

        let name = container_name(&spec);
        let body = container_body(&spec, &image);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = match docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Ok(created) => created,
            // The same task's container from an agent that crashed before
            // recording it: nothing owns it, and the agent starts a task at
            // most once, so it goes.
            Err(e) if status_of(&e) == Some(409) => {
                warn!(container = %name, "removing a leftover container of the same task");
                remove_forced(docker, &name)
                    .await
                    .map_err(|e| self.fail(format!("cannot remove container {name}"), e))?;
                docker
                    .create_container(Some(options), body)
                    .await
                    .map_err(|e| self.fail(format!("cannot create container {name}"), e))?
            }
            Err(e) => return Err(self.fail(format!("cannot create container {name}"), e)),
        };
        let id = created.id;
        for n in spec.engine_networks.iter().skip(1) {
            let request = NetworkConnectRequest {
                container: id.clone(),
                endpoint_config: Some(endpoint(n)),
            };
            if let Err(e) = docker.connect_network(&n.name, request).await {
                if let Err(re) = remove_forced(docker, &id).await {
                    warn!(container = %id, error = %re, "cannot remove a container that did not start");
                }
                return Err(self.fail(format!("cannot connect {name} to network {}", n.name), e));
            }
        }
        if let Err(e) = docker.start_container(&id, None).await {
            if let Err(re) = remove_forced(docker, &id).await {
                warn!(container = %id, error = %re, "cannot remove a container that did not start");
            }
            return Err(self.fail(format!("cannot start container {name}"), e));
        }
        let (pid, ports) = match docker.inspect_container(&id, None).await {
            Ok(info) => (main_pid(&info), mapped_ports(&info, &spec.ports)),
            Err(e) => {
                warn!(container = %id, error = %e, "cannot inspect a started container");
                (None, Vec::new())
            }
        };
        follow_logs(docker.clone(), id.clone(), spec.log_path.clone(), 0);
        Ok(Started {
            handle: Handle {
                pid,
                start_time: None,
                id: Some(id.clone()),
                netns: None,
                stop_signal: spec
                    .template
                    .stop_signal
                    .as_deref()
                    .and_then(flotilla_types::parse_signal),
            },
            exit: Box::pin(wait_exit(docker.clone(), id)),
            ports,
        })
    }

    /// Makes the engine network of a Flotilla network unless the engine
    /// has it: a bridge network on the node's bridge of the network (which
    /// exists: the engine takes it as the user's and never deletes it),
    /// with the network's subnet and gateway, the overlay's MTU, and no
    /// way out when the network is internal.
    async fn ensure_network(&self, docker: &Docker, n: &EngineNetwork) -> Result<(), DockerError> {
        match docker.inspect_network(&n.name, None).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(self.fail(format!("cannot inspect network {}", n.name), e)),
        }
        let request = NetworkCreateRequest {
            name: n.name.clone(),
            driver: Some("bridge".into()),
            internal: Some(n.internal),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(n.subnet.to_string()),
                    gateway: Some(n.subnet.gateway().to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            options: Some(HashMap::from([
                (
                    "com.docker.network.bridge.name".to_string(),
                    n.bridge.clone(),
                ),
                (
                    "com.docker.network.driver.mtu".to_string(),
                    n.mtu.to_string(),
                ),
            ])),
            labels: Some(HashMap::from([(
                LABEL_NETWORK.to_string(),
                n.network_name.clone(),
            )])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => Ok(()),
            // Made at the same time for another task.
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(self.fail(format!("cannot create network {}", n.name), e)),
        }
    }

    /// Pulls `image` unless the engine has it.
    async fn ensure_image(&self, docker: &Docker, image: &str) -> Result<(), DockerError> {
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(self.fail(format!("cannot inspect image {image}"), e)),
        }
        let pull_failed = |e: &EngineError| {
            if is_unreachable(e) {
                DockerError::Unreachable {
                    host: self.display_host(),
                    reason: e.to_string(),
                }
            } else {
                DockerError::Pull {
                    image: image.to_string(),
                    message: engine_message(e),
                }
            }
        };
        let options = CreateImageOptions {
            from_image: Some(with_default_tag(image)),
            ..Default::default()
        };
        let mut progress = pin!(docker.create_image(Some(options), None, None));
        while let Some(step) = progress.next().await {
            step.map_err(|e| pull_failed(&e))?;
        }
        Ok(())
    }

    async fn adopt_container(&self, handle: &Handle) -> Result<Option<ExitFuture>, DockerError> {
        let Some(id) = &handle.id else {
            return Ok(None);
        };
        let docker = self.docker().await?;
        let info = match docker.inspect_container(id, None).await {
            Ok(info) => info,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(self.fail(format!("cannot inspect container {id}"), e)),
        };
        let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            // The agent only removes containers of tasks it supervises; this
            // one it will report failed and never see again.
            if let Err(e) = remove_forced(docker, id).await {
                warn!(container = %id, error = %e, "cannot remove an ended container");
            }
            return Ok(None);
        }
        let log_path = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_LOG_PATH));
        if let Some(path) = log_path {
            // What was written while no agent followed is lost; from now on
            // the log continues.
            follow_logs(docker.clone(), id.clone(), PathBuf::from(path), now_secs());
        }
        Ok(Some(Box::pin(wait_exit(docker.clone(), id.clone()))))
    }

    async fn kill(&self, handle: &Handle, signal: StopSignal) -> Result<(), DockerError> {
        let Some(id) = &handle.id else {
            return Ok(());
        };
        let docker = self.docker().await?;
        // The engine takes a signal's number as well as its name.
        let signal = match (signal, handle.stop_signal) {
            (StopSignal::Terminate, Some(n)) => n.to_string(),
            (StopSignal::Terminate, None) => "SIGTERM".to_string(),
            (StopSignal::Kill, _) => "SIGKILL".to_string(),
        };
        let options = KillContainerOptions {
            signal: signal.clone(),
        };
        match docker.kill_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // Gone, or not running: either way it has stopped.
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(self.fail(format!("cannot send {signal} to container {id}"), e)),
        }
    }

    /// The engine's stop: the container's stop signal (the template's,
    /// else the image's, else SIGTERM), then SIGKILL after `grace`.
    async fn engine_stop(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let docker = self
            .docker()
            .await?
            .clone()
            .with_timeout(grace + STOP_SLACK);
        let secs = grace.as_millis().div_ceil(1000);
        let options = StopContainerOptions {
            t: Some(i32::try_from(secs).unwrap_or(i32::MAX)),
            signal: None,
        };
        match docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.fail(format!("cannot stop container {id}"), e)),
        }
    }

    async fn remove_container(&self, handle: &Handle) -> Result<(), DockerError> {
        let Some(id) = &handle.id else {
            return Ok(());
        };
        let docker = self.docker().await?;
        // Its engine networks go with the last container on them.
        let networks: Vec<String> = match docker.inspect_container(id, None).await {
            Ok(info) => info
                .network_settings
                .and_then(|n| n.networks)
                .map(|n| n.into_keys().filter(|k| k.starts_with("fl-")).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        match remove_forced(docker, id).await {
            Ok(()) => {}
            Err(e) => return Err(self.fail(format!("cannot remove container {id}"), e)),
        }
        for network in networks {
            let in_use = docker
                .inspect_network(&network, None)
                .await
                .ok()
                .and_then(|n| n.containers)
                .is_some_and(|c| !c.is_empty());
            if in_use {
                continue;
            }
            if let Err(e) = docker.remove_network(&network).await {
                debug!(%network, error = %engine_message(&e), "engine network left in place");
            }
        }
        Ok(())
    }

    async fn run_probe(&self, handle: &Handle, test: &HealthTest, timeout: Duration) -> Probe {
        let Some(id) = &handle.id else {
            return Probe::Unhealthy("the task has no container".into());
        };
        let docker = match self.docker().await {
            Ok(docker) => docker,
            Err(e) => return Probe::Unhealthy(e.to_string()),
        };
        match test {
            HealthTest::None => Probe::Healthy,
            HealthTest::Image => {
                Probe::Unhealthy("the image's health check must be resolved first".into())
            }
            HealthTest::Exec { argv } => exec_probe(docker, id, argv.clone()).await,
            HealthTest::Shell { command } => {
                let argv = vec!["/bin/sh".to_string(), "-c".to_string(), command.clone()];
                exec_probe(docker, id, argv).await
            }
            HealthTest::Http { port, path } => match container_ip(docker, id).await {
                Ok(ip) => http_probe(SocketAddr::new(ip, *port), path, timeout).await,
                Err(why) => Probe::Unhealthy(why),
            },
            HealthTest::Tcp { port } => match container_ip(docker, id).await {
                Ok(ip) => {
                    let addr = SocketAddr::new(ip, *port);
                    match tcp_probe(addr, timeout).await {
                        Probe::Unhealthy(why) => {
                            Probe::Unhealthy(format!("cannot connect to {addr}: {why}"))
                        }
                        healthy => healthy,
                    }
                }
                Err(why) => Probe::Unhealthy(why),
            },
        }
    }

    async fn image_health(&self, handle: &Handle) -> Result<Option<HealthCheck>, DockerError> {
        let Some(id) = &handle.id else {
            return Ok(None);
        };
        let docker = self.docker().await?;
        let info = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| self.fail(format!("cannot inspect container {id}"), e))?;
        Ok(info
            .config
            .and_then(|c| c.healthcheck)
            .and_then(|h| health_from_config(&h)))
    }
}

impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        flotilla_types::Driver::Docker.as_str()
    }

    fn start(&self, spec: StartSpec) -> BoxFuture<'_, Result<Started, DriverError>> {
        Box::pin(async move { Ok(self.start_container(spec).await?) })
    }

    fn adopt(&self, handle: Handle) -> BoxFuture<'_, Result<Option<ExitFuture>, DriverError>> {
        Box::pin(async move { Ok(self.adopt_container(&handle).await?) })
    }

    fn signal<'a>(
        &'a self,
        handle: &'a Handle,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { Ok(self.kill(handle, signal).await?) })
    }

    fn stop<'a>(
        &'a self,
        handle: &'a Handle,
        grace: Duration,
        exit: &'a mut ExitFuture,
    ) -> BoxFuture<'a, Result<Exit, DriverError>> {
        Box::pin(async move {
            if let Some(id) = &handle.id {
                match self.engine_stop(id, grace).await {
                    Ok(()) => return Ok(exit.await),
                    Err(e) => warn!(container = %id, error = %e, "engine stop failed; killing"),
                }
            }
            self.kill(handle, StopSignal::Kill).await?;
            Ok(exit.await)
        })
    }

    fn remove<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { Ok(self.remove_container(handle).await?) })
    }

    fn probe<'a>(
        &'a self,
        handle: &'a Handle,
        test: &'a HealthTest,
        timeout: Duration,
    ) -> BoxFuture<'a, Probe> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, self.run_probe(handle, test, timeout)).await {
                Ok(probe) => probe,
                Err(_) => Probe::Unhealthy(format!("timed out after {timeout:?}")),
            }
        })
    }

    fn own_health<'a>(
        &'a self,
        handle: &'a Handle,
    ) -> BoxFuture<'a, Result<Option<HealthCheck>, DriverError>> {
        Box::pin(async move { Ok(self.image_health(handle).await?) })
    }

    fn remove_stale<'a>(
        &'a self,
        node_id: &'a str,
        keep: &'a HashSet<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        Box::pin(DockerDriver::remove_stale(self, node_id, keep))
    }
}

/// The container's configuration: the template's command, entrypoint and
/// limits, the task's environment, Flotilla's labels, no restart policy.
fn container_body(spec: &StartSpec, image: &str) -> ContainerCreateBody {
    let t = &spec.template;
    let env_label = |var: &str| spec.env.get(var).cloned().unwrap_or_default();
    let mut labels = HashMap::from([
        (LABEL_TASK_ID.to_string(), spec.task_id.clone()),
        (
            LABEL_SERVICE_ID.to_string(),
            env_label("FLOTILLA_SERVICE_ID"),
        ),
        (
            LABEL_SERVICE_NAME.to_string(),
            env_label("FLOTILLA_SERVICE_NAME"),
        ),
        (LABEL_NODE_ID.to_string(), env_label("FLOTILLA_NODE_ID")),
        (
            LABEL_LOG_PATH.to_string(),
            spec.log_path.to_string_lossy().into_owned(),
        ),
    ]);
    if let Some(slot) = spec.env.get("FLOTILLA_TASK_SLOT") {
        labels.insert(LABEL_SLOT.to_string(), slot.clone());
    }
    let limit = |v: u64| (v > 0).then(|| i64::try_from(v).unwrap_or(i64::MAX));
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    // On networks the task's resolver is the node's, in the resolv.conf
    // bound below, which carries the template's servers and domains.
    let own_resolver = spec.resolv_conf.is_none();
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: (!t.command.is_empty()).then(|| t.command.clone()),
        entrypoint: t.entrypoint.clone(),
        hostname: t.hostname.clone(),
        user: t.user.clone(),
        working_dir: t.working_dir.clone(),
        stop_signal: t.stop_signal.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(labels),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        host_config: Some(HostConfig {
            nano_cpus: limit(t.resources.limits.nano_cpus),
            memory: limit(t.resources.limits.memory_bytes),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            // The engine's default when not asked for.
            init: t.init.then_some(true),
            readonly_rootfs: t.read_only.then_some(true),
            shm_size: limit(t.shm_size_bytes),
            sysctls: (!t.sysctls.is_empty()).then(|| {
                t.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            cap_add: list(&t.cap_add),
            cap_drop: list(&t.cap_drop),
            ulimits: (!t.ulimits.is_empty()).then(|| {
                t.ulimits
                    .iter()
                    .map(|u| ResourcesUlimits {
                        name: Some(u.name.clone()),
                        soft: Some(u.soft),
                        hard: Some(u.hard),
                    })
                    .collect()
            }),
            extra_hosts: (!t.extra_hosts.is_empty())
                .then(|| t.extra_hosts.iter().map(|h| h.engine_form()).collect()),
            dns: list(&t.dns).filter(|_| own_resolver),
            dns_search: list(&t.dns_search).filter(|_| own_resolver),
            log_config: t.logging.as_ref().map(|l| HostConfigLogConfig {
                typ: (!l.name.is_empty()).then(|| l.name.clone()),
                config: (!l.options.is_empty()).then(|| {
                    l.options
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                }),
            }),
            mounts: {
                let mut mounts: Vec<bollard::models::Mount> =
                    t.mounts.iter().map(engine_mount).collect();
                if let Some(path) = &spec.resolv_conf {
                    mounts.push(bollard::models::Mount {
                        typ: Some(bollard::models::MountType::BIND),
                        source: Some(path.to_string_lossy().into_owned()),
                        target: Some("/etc/resolv.conf".into()),
                        read_only: Some(true),
                        ..Default::default()
                    });
                }
                // Secrets and configs: each file from the node's memory,
                // read-only at its path.
                mounts.extend(spec.files.mounts.iter().map(|f| bollard::models::Mount {
                    typ: Some(bollard::models::MountType::BIND),
                    source: Some(f.source.to_string_lossy().into_owned()),
                    target: Some(f.target.clone()),
                    read_only: Some(true),
                    ..Default::default()
                }));
                (!mounts.is_empty()).then_some(mounts)
            },
            // Each target port on a node port the engine picks; the mesh
            // learns which from the inspect after the start.
            port_bindings: (!spec.ports.is_empty()).then(|| {
                spec.ports
                    .iter()
                    .map(|p| {
                        let binding = bollard::models::PortBinding {
                            host_ip: Some("0.0.0.0".into()),
                            // 0: the engine's choice; else a host-mode
                            // port, that one.
                            host_port: Some(if p.host_port == 0 {
                                String::new()
                            } else {
                                p.host_port.to_string()
                            }),
                        };
                        (engine_port(p), Some(vec![binding]))
                    })
                    .collect()
            }),
            // On networks: the first is its network mode; its resolver is
            // the node's, through the resolv.conf bound above.
            network_mode: spec.engine_networks.first().map(|n| n.name.clone()),
            ..Default::default()
        }),
        exposed_ports: (!spec.ports.is_empty())
            .then(|| spec.ports.iter().map(engine_port).collect()),
        // Engines before API 1.44 take one network at create; the others
        // are connected before the start.
        networking_config: spec.engine_networks.first().map(|n| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(n.name.clone(), endpoint(n))])),
        }),
        ..Default::default()
    }
}

/// The container's endpoint on an engine network: its allocated address.
fn endpoint(n: &EngineNetwork) -> EndpointSettings {
    EndpointSettings {
        ipam_config: Some(EndpointIpamConfig {
            ipv4_address: Some(n.addr.to_string()),
            ..Default::default()
        }),
        // The MAC the overlay's forwarding entries and the encrypted
        // tunnel expect (older engines make this one from the address
        // themselves).
        mac_address: Some(crate::wiring::task_mac(n.addr)),
        ..Default::default()
    }
}

/// `8080/tcp`, as the engine names a container's port.
fn engine_port(p: &TaskPort) -> String {
    format!("{}/{}", p.target, p.protocol.as_str())
}

/// Where the engine mapped each of `wanted`'s target ports on the node.
fn mapped_ports(info: &ContainerInspectResponse, wanted: &[TaskPort]) -> Vec<TaskPort> {
    let Some(map) = info
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
    else {
        return Vec::new();
    };
    wanted
        .iter()
        .filter_map(|p| {
            let bindings = map.get(&engine_port(p))?.as_ref()?;
            let host_port = bindings
                .iter()
                .filter_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
                .next()?;
            Some(TaskPort { host_port, ..*p })
        })
        .collect()
}

/// A mount as the engine takes it.
fn engine_mount(m: &flotilla_types::Mount) -> bollard::models::Mount {
    use bollard::models::MountType as MountTypeEnum;
    let typ = match m.kind {
        flotilla_types::MountKind::Bind => MountTypeEnum::BIND,
        flotilla_types::MountKind::Volume => MountTypeEnum::VOLUME,
        flotilla_types::MountKind::Tmpfs => MountTypeEnum::TMPFS,
    };
    use bollard::models::MountBindOptionsPropagationEnum as P;
    let propagation = m.propagation.map(|p| match p {
        flotilla_types::Propagation::Rprivate => P::RPRIVATE,
        flotilla_types::Propagation::Private => P::PRIVATE,
        flotilla_types::Propagation::Rshared => P::RSHARED,
        flotilla_types::Propagation::Shared => P::SHARED,
        flotilla_types::Propagation::Rslave => P::RSLAVE,
        flotilla_types::Propagation::Slave => P::SLAVE,
    });
    bollard::models::Mount {
        typ: Some(typ),
        source: (!m.source.is_empty()).then(|| m.source.clone()),
        target: Some(m.target.clone()),
        read_only: m.read_only.then_some(true),
        bind_options: propagation.map(|p| bollard::models::MountBindOptions {
            propagation: Some(p),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `flotilla-<service>.<slot>.<task id>`, in Docker's name alphabet
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
fn container_name(spec: &StartSpec) -> String {
    let mut name = String::from("flotilla-");
    if let Some(service) = spec.env.get("FLOTILLA_SERVICE_NAME") {
        name.push_str(service);
        name.push('.');
    }
    if let Some(slot) = spec.env.get("FLOTILLA_TASK_SLOT") {
        name.push_str(slot);
        name.push('.');
    }
    name.push_str(&spec.task_id);
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect()
}

/// An image reference without a tag pulls every tag through the API; the
/// CLI's `latest` is meant.
fn with_default_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

fn main_pid(info: &ContainerInspectResponse) -> Option<u32> {
    info.state
        .as_ref()
        .and_then(|s| s.pid)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// Resolves when the container has ended. The wait API answers once it
/// does; when that fails (engine restart, request timeout), inspect tells
/// whether it ended, and the wait is tried again if not.
async fn wait_exit(docker: Docker, id: String) -> Exit {
    loop {
        let first = {
            let mut waited = pin!(docker.wait_container(&id, None::<WaitContainerOptions>));
            waited.next().await
        };
        match first {
            Some(Ok(r)) => return Exit::Code(exit_code(r.status_code)),
            // Bollard reports a non-zero status as an error.
            Some(Err(EngineError::DockerContainerWaitError { code, .. })) => {
                return Exit::Code(exit_code(code))
            }
            Some(Err(e)) => debug!(container = %id, error = %e, "waiting for a container failed"),
            None => debug!(container = %id, "the wait API answered nothing"),
        }
        match docker.inspect_container(&id, None).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                if !state.running.unwrap_or(false) {
                    return state
                        .exit_code
                        .map_or(Exit::Unknown, |c| Exit::Code(exit_code(c)));
                }
            }
            Err(e) if status_of(&e) == Some(404) => return Exit::Unknown,
            Err(e) => warn!(container = %id, error = %e, "cannot inspect a container"),
        }
        tokio::time::sleep(WAIT_RETRY).await;
    }
}

fn exit_code(code: i64) -> i32 {
    i32::try_from(code).unwrap_or(i32::MAX)
}

/// Appends the container's output to `path` until the container ends.
fn follow_logs(docker: Docker, id: String, path: PathBuf, since: i32) {
    tokio::spawn(async move {
        let mut file = match tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
        {
            Ok(file) => file,
            Err(e) => {
                warn!(container = %id, path = %path.display(), error = %e, "cannot open the task log");
                return;
            }
        };
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            since,
            ..Default::default()
        };
        let mut logs = pin!(docker.logs(&id, Some(options)));
        while let Some(chunk) = logs.next().await {
            match chunk {
                Ok(out) => {
                    // Flushed per chunk: readers of the log (and the
                    // janitor's copy-and-truncate) see it at once.
                    let written = file.write_all(out.as_ref()).await;
                    if let Err(e) = written.and(file.flush().await) {
                        warn!(container = %id, error = %e, "cannot write the task log");
                        return;
                    }
                }
                Err(e) => {
                    debug!(container = %id, error = %e, "the log stream ended");
                    return;
                }
            }
        }
    });
}

/// Runs `argv` in the container; healthy when it exits 0.
async fn exec_probe(docker: &Docker, id: &str, argv: Vec<String>) -> Probe {
    let options = CreateExecOptions::<String> {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(argv),
        ..Default::default()
    };
    let exec = match docker.create_exec(id, options).await {
        Ok(exec) => exec,
        Err(e) => return Probe::Unhealthy(engine_message(&e)),
    };
    let mut output = Vec::new();
    match docker.start_exec(&exec.id, None).await {
        Ok(StartExecResults::Attached {
            output: mut out, ..
        }) => {
            while let Some(chunk) = out.next().await {
                let Ok(chunk) = chunk else { break };
                let bytes = chunk.into_bytes();
                let room = PROBE_OUTPUT_CAP.saturating_sub(output.len());
                output.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
        Ok(StartExecResults::Detached) => {}
        Err(e) => return Probe::Unhealthy(engine_message(&e)),
    }
    // The output ends with the process, but the engine may record its exit
    // code a moment later; the caller's timeout bounds this.
    loop {
        match docker.inspect_exec(&exec.id).await {
            Ok(info) if info.running == Some(true) => {}
            Ok(info) => {
                return match info.exit_code {
                    Some(0) => Probe::Healthy,
                    code => {
                        let code = code.map_or_else(|| "unknown".to_string(), |c| c.to_string());
                        let text = String::from_utf8_lossy(&output);
                        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                        if line.is_empty() {
                            Probe::Unhealthy(format!("exit code {code}"))
                        } else {
                            Probe::Unhealthy(format!("exit code {code}: {}", line.trim()))
                        }
                    }
                };
            }
            Err(e) => return Probe::Unhealthy(engine_message(&e)),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The container's address on its network (the default bridge, or the
/// first network that gave it one).
async fn container_ip(docker: &Docker, id: &str) -> Result<IpAddr, String> {
    let info = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| engine_message(&e))?;
    let networks = info
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    let address = networks
        .get("bridge")
        .and_then(|n| n.ip_address.clone())
        .filter(|ip| !ip.is_empty())
        .or_else(|| {
            networks
                .values()
                .filter_map(|n| n.ip_address.clone())
                .find(|ip| !ip.is_empty())
        })
        .ok_or_else(|| "the container has no IP address".to_string())?;
    address
        .parse()
        .map_err(|e| format!("bad container address {address:?}: {e}"))
}

/// Docker's HEALTHCHECK as a Flotilla check: zero durations and retries
/// mean Docker's defaults; `NONE` (or nothing) means no check.
fn health_from_config(config: &HealthConfig) -> Option<HealthCheck> {
    let (kind, rest) = config.test.as_ref()?.split_first()?;
    let test = match kind.as_str() {
        "CMD" if !rest.is_empty() => HealthTest::Exec {
            argv: rest.to_vec(),
        },
        "CMD-SHELL" if !rest.is_empty() => HealthTest::Shell {
            command: rest.join(" "),
        },
        _ => return None,
    };
    let ms = |ns: Option<i64>, default: u64| match ns {
        Some(ns) if ns > 0 => u64::try_from(ns / 1_000_000).unwrap_or(default),
        _ => default,
    };
    Some(HealthCheck {
        test,
        interval_ms: ms(config.interval, DEFAULT_HEALTH_INTERVAL_MS),
        timeout_ms: ms(config.timeout, DEFAULT_HEALTH_TIMEOUT_MS),
        retries: config
            .retries
            .and_then(|r| u32::try_from(r).ok())
            .filter(|r| *r > 0)
            .unwrap_or(DEFAULT_HEALTH_RETRIES),
        start_period_ms: ms(config.start_period, 0),
    })
}

async fn remove_forced(docker: &Docker, id: &str) -> Result<(), EngineError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        // Gone already, or its removal is under way.
        Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn status_of(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The connection failed, as opposed to the engine answering "no".
fn is_unreachable(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::HyperLegacyError { .. }
            | EngineError::SocketNotFoundError(_)
            | EngineError::IOError { .. }
            | EngineError::RequestTimeoutError
    )
}

/// What the engine said, without bollard's wrapping.
fn engine_message(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError { message, .. } if !message.is_empty() => {
            message.trim().to_string()
        }
        EngineError::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

fn now_secs() -> i32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn engine_labels_are_key_value_pairs() {
        let labels: Vec<String> = ["disk=ssd", "zone=eu=1", "bare", "=x", "disk=nvme"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            parse_engine_labels(&labels),
            BTreeMap::from([
                ("bare".to_string(), String::new()),
                ("disk".to_string(), "nvme".to_string()),
                ("zone".to_string(), "eu=1".to_string()),
            ])
        );
    }

    fn spec(task_id: &str, env: &[(&str, &str)]) -> StartSpec {
        StartSpec {
            ports: Vec::new(),
            netns: None,
            engine_networks: Vec::new(),
            resolv_conf: None,
            files: Default::default(),
            task_id: task_id.to_string(),
            template: flotilla_types::TaskTemplate::default(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            log_path: PathBuf::from("/tmp/x.log"),
        }
    }

    #[test]
    fn names_follow_dockers_alphabet() {
        let s = spec(
            "t1",
            &[
                ("FLOTILLA_SERVICE_NAME", "my web/app"),
                ("FLOTILLA_TASK_SLOT", "2"),
            ],
        );
        assert_eq!(container_name(&s), "flotilla-my-web-app.2.t1");
        assert_eq!(container_name(&spec("t9", &[])), "flotilla-t9");
    }

    #[test]
    fn run_options_reach_the_engine() {
        let mut s = spec("t1", &[]);
        let t = &mut s.template;
        t.hostname = Some("web-1".into());
        t.user = Some("1000:1000".into());
        t.working_dir = Some("/tmp".into());
        t.stop_signal = Some("SIGINT".into());
        t.read_only = true;
        t.shm_size_bytes = 64 << 20;
        t.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        t.cap_add = vec!["NET_ADMIN".into()];
        t.cap_drop = vec!["ALL".into()];
        t.ulimits = vec![flotilla_types::Ulimit {
            name: "nofile".into(),
            soft: 1024,
            hard: 2048,
        }];
        t.extra_hosts = vec![flotilla_types::ExtraHost {
            name: "myhost".into(),
            ip: "10.1.2.3".into(),
        }];
        t.dns = vec!["10.0.0.53".into()];
        t.dns_search = vec!["example.org".into()];
        t.logging = Some(flotilla_types::LogDriver {
            name: "json-file".into(),
            options: BTreeMap::from([("max-size".into(), "10m".into())]),
        });
        t.mounts = vec![flotilla_types::Mount {
            kind: flotilla_types::MountKind::Bind,
            source: "/srv".into(),
            target: "/data".into(),
            read_only: false,
            propagation: Some(flotilla_types::Propagation::Rslave),
        }];
        let body = container_body(&s, "busybox");
        assert_eq!(body.hostname.as_deref(), Some("web-1"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGINT"));
        let host = body.host_config.unwrap();
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.shm_size, Some(64 << 20));
        assert_eq!(
            host.sysctls.unwrap()["net.ipv4.ip_unprivileged_port_start"],
            "0"
        );
        assert_eq!(host.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        let ulimit = &host.ulimits.unwrap()[0];
        assert_eq!(
            (ulimit.name.as_deref(), ulimit.soft, ulimit.hard),
            (Some("nofile"), Some(1024), Some(2048))
        );
        assert_eq!(host.extra_hosts, Some(vec!["myhost:10.1.2.3".to_string()]));
        assert_eq!(host.dns, Some(vec!["10.0.0.53".to_string()]));
        assert_eq!(host.dns_search, Some(vec!["example.org".to_string()]));
        let log = host.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.unwrap()["max-size"], "10m");
        let mount = &host.mounts.unwrap()[0];
        assert_eq!(
            mount.bind_options.as_ref().and_then(|b| b.propagation),
            Some(bollard::models::MountBindOptionsPropagationEnum::RSLAVE)
        );
        // On networks the resolver is the node's, in the bound file.
        s.resolv_conf = Some(PathBuf::from("/x/resolv.conf"));
        let host = container_body(&s, "busybox").host_config.unwrap();
        assert_eq!((host.dns, host.dns_search), (None, None));
        // Nothing asked, nothing sent: the engine's defaults hold.
        let plain = container_body(&spec("t2", &[]), "busybox");
        assert_eq!(
            (plain.hostname, plain.user, plain.stop_signal),
            (None, None, None)
        );
        let host = plain.host_config.unwrap();
        assert_eq!(
            (
                host.readonly_rootfs,
                host.shm_size,
                host.log_config.is_none()
            ),
            (None, None, true)
        );
    }

    #[test]
    fn untagged_images_mean_latest() {
        assert_eq!(with_default_tag("busybox"), "busybox:latest");
        assert_eq!(with_default_tag("a/b:1"), "a/b:1");
        assert_eq!(
            with_default_tag("registry:5000/b"),
            "registry:5000/b:latest"
        );
        assert_eq!(with_default_tag("b@sha256:00"), "b@sha256:00");
    }

    #[test]
    fn image_health_checks_become_flotilla_checks() {
        let hc = HealthConfig {
            test: Some(vec!["CMD".into(), "/bin/true".into(), "x".into()]),
            interval: Some(2_000_000_000),
            timeout: Some(0),
            retries: Some(0),
            start_period: Some(500_000_000),
            ..Default::default()
        };
        let check = health_from_config(&hc).unwrap();
        assert_eq!(
            check.test,
            HealthTest::Exec {
                argv: vec!["/bin/true".into(), "x".into()]
            }
        );
        assert_eq!(check.interval_ms, 2_000);
        assert_eq!(check.timeout_ms, DEFAULT_HEALTH_TIMEOUT_MS);
        assert_eq!(check.retries, DEFAULT_HEALTH_RETRIES);
        assert_eq!(check.start_period_ms, 500);

        let shell = HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), "exit 0".into()]),
            ..Default::default()
        };
        assert_eq!(
            health_from_config(&shell).unwrap().test,
            HealthTest::Shell {
                command: "exit 0".into()
            }
        );
        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        assert_eq!(health_from_config(&none), None);
        assert_eq!(health_from_config(&HealthConfig::default()), None);
    }

    #[tokio::test]
    async fn an_absent_engine_rejects_tasks_without_blocking() {
        let driver = DockerDriver::new("unix:///nonexistent.sock");
        let mut s = spec("t1", &[]);
        s.template.image = Some("busybox".into());
        let err = driver.start(s).await.unwrap_err().to_string();
        assert!(
            err.starts_with("docker engine not reachable at /nonexistent.sock: "),
            "{err}"
        );
    }
}
