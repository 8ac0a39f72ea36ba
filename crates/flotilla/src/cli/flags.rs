//! Spec flags shared by `service create` and `service update`: what the
//! tasks run (driver, image, entrypoint), their health check, resources,
//! and how updates and rollbacks roll out. Each flag is optional, so that
//! `update` changes only what was given; `create` applies them to the
//! defaults.

use anyhow::{anyhow, bail, Result};
use clap::Args;
use std::collections::BTreeMap;

use super::{CreateArgs, UpdateArgs};
use flotilla_types::{
    parse_duration_ms, Constraint, Driver, FailureAction, HealthCheck, HealthTest, Mount,
    MountKind, Ratio, Resources, RestartCondition, RestartPolicy, SecretKind, SecretRef,
    ServiceMode, ServiceSpec, SpecError, TaskTemplate, UpdateConfig, UpdateOrder,
};

#[derive(Debug, Default, Args)]
pub struct SpecFlags {
    /// What runs the tasks: process or docker [default: docker with --image, else process]
    #[arg(long)]
    pub driver: Option<String>,
    /// Image of a docker service (used as it is when present in the local engine, else pulled)
    #[arg(long)]
    pub image: Option<String>,
    /// Override the image's entrypoint (a command line, split like a shell does)
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Run a container under the engine's init process, which forwards signals
    #[arg(long)]
    pub init: bool,
    /// At most this many tasks of the service on one node (0: no limit)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas_max_per_node: Option<String>,

    /// How the service's name resolves on its networks: vip (one virtual
    /// address, balanced) or dnsrr (its tasks' own addresses)
    #[arg(long)]
    pub endpoint_mode: Option<String>,

    /// Health check: a shell command; exit 0 is healthy
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Health check: HTTP GET on the task's PORT/PATH; 2xx or 3xx is healthy
    #[arg(long, value_name = "PORT/PATH")]
    pub health_http: Option<String>,
    /// Health check: a TCP connection to the task's PORT
    #[arg(long, value_name = "PORT")]
    pub health_tcp: Option<String>,
    /// Time between health checks [default: 30s]
    #[arg(long)]
    pub health_interval: Option<String>,
    /// Longest a health check may take [default: 30s]
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// Failures in a row that make a task unhealthy [default: 3]
    #[arg(long)]
    pub health_retries: Option<String>,
    /// Failures in this time after the start do not count [default: 0s]
    #[arg(long)]
    pub health_start_period: Option<String>,
    /// No health check, not even the image's
    #[arg(long)]
    pub no_healthcheck: bool,

    /// CPUs a task may use, e.g. 0.5
    #[arg(long)]
    pub limit_cpu: Option<String>,
    /// Memory a task may use, e.g. 256M
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// CPUs set aside for a task
    #[arg(long)]
    pub reserve_cpu: Option<String>,
    /// Memory set aside for a task
    #[arg(long)]
    pub reserve_memory: Option<String>,

    /// Tasks updated at once (0: all) [default: 1]
    #[arg(long)]
    pub update_parallelism: Option<String>,
    /// Wait between update batches [default: 0s]
    #[arg(long)]
    pub update_delay: Option<String>,
    /// stop-first or start-first [default: stop-first]
    #[arg(long)]
    pub update_order: Option<String>,
    /// On failure: pause, continue or rollback [default: pause]
    #[arg(long)]
    pub update_failure_action: Option<String>,
    /// How long an updated task is watched for failure [default: 5s]
    #[arg(long)]
    pub update_monitor: Option<String>,
    /// Share of failed tasks tolerated, 0 to 1 [default: 0]
    #[arg(long)]
    pub update_max_failure_ratio: Option<String>,

    /// Tasks rolled back at once (0: all) [default: 1]
    #[arg(long)]
    pub rollback_parallelism: Option<String>,
    /// Wait between rollback batches [default: 0s]
    #[arg(long)]
    pub rollback_delay: Option<String>,
    /// stop-first or start-first [default: stop-first]
    #[arg(long)]
    pub rollback_order: Option<String>,
    /// On failure during a rollback: pause or continue [default: pause]
    #[arg(long)]
    pub rollback_failure_action: Option<String>,
    /// How long a rolled-back task is watched for failure [default: 5s]
    #[arg(long)]
    pub rollback_monitor: Option<String>,
    /// Share of failed tasks tolerated during a rollback [default: 0]
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<String>,

    /// How the mesh spreads connections: least-connections or round-robin
    /// [default: least-connections]
    #[arg(long)]
    pub balance: Option<String>,
    /// Send the client's address to the tasks first: v1, v2 or none
    #[arg(long, value_name = "VERSION")]
    pub proxy_protocol: Option<String>,
    /// Close mesh connections idle this long (0: never) [default: never]
    #[arg(long)]
    pub mesh_idle_timeout: Option<String>,
    /// Connections at once through one node (0: the node's default)
    #[arg(long)]
    pub mesh_max_connections: Option<String>,
}

impl SpecFlags {
    /// Applies the flags that were given to `spec`.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<()> {
        if let Some(mode) = &self.endpoint_mode {
            spec.endpoint_mode = flotilla_types::EndpointMode::parse(mode)
                .map_err(|e| anyhow!("--endpoint-mode: {e}"))?;
        }
        let task = &mut spec.task;
        if let Some(image) = &self.image {
            task.image = Some(image.clone());
        }
        match self.driver.as_deref() {
            Some("process") => task.driver = Driver::Process,
            Some("docker") => task.driver = Driver::Docker,
            Some(other) => bail!("invalid --driver {other:?}: expected process or docker"),
            None if self.image.is_some() => task.driver = Driver::Docker,
            None => {}
        }
        if let Some(e) = &self.entrypoint {
            task.entrypoint =
                Some(flotilla_types::split_command(e).map_err(|m| anyhow!("--entrypoint: {m}"))?);
        }
        if self.init {
            spec.task.init = true;
        }
        if let Some(n) = &self.replicas_max_per_node {
            spec.task.max_replicas_per_node = n.trim().parse::<u64>().map_err(|_| {
                anyhow!("invalid --replicas-max-per-node {n:?}: expected a whole number >= 0")
            })?;
        }
        self.apply_mesh(spec)?;
        self.apply_health(spec)?;
        let limits = &mut spec.task.resources.limits;
        set_resources(limits, &self.limit_cpu, &self.limit_memory, "limit")?;
        let reservations = &mut spec.task.resources.reservations;
        set_resources(
            reservations,
            &self.reserve_cpu,
            &self.reserve_memory,
            "reserve",
        )?;
        apply_update_config(
            &mut spec.update,
            "update",
            [
                &self.update_parallelism,
                &self.update_delay,
                &self.update_order,
                &self.update_failure_action,
                &self.update_monitor,
                &self.update_max_failure_ratio,
            ],
        )?;
        apply_update_config(
            &mut spec.rollback,
            "rollback",
            [
                &self.rollback_parallelism,
                &self.rollback_delay,
                &self.rollback_order,
                &self.rollback_failure_action,
                &self.rollback_monitor,
                &self.rollback_max_failure_ratio,
            ],
        )?;
        Ok(())
    }

    fn apply_health(&self, spec: &mut ServiceSpec) -> Result<()> {
        let tests = [
            self.health_cmd.is_some(),
            self.health_http.is_some(),
            self.health_tcp.is_some(),
            self.no_healthcheck,
        ];
        if tests.iter().filter(|t| **t).count() > 1 {
            bail!("give at most one of --health-cmd, --health-http, --health-tcp and --no-healthcheck");
        }
        let test = if let Some(cmd) = &self.health_cmd {
            Some(HealthTest::Shell {
                command: cmd.clone(),
            })
        } else if let Some(target) = &self.health_http {
            let (port, path) = match target.split_once('/') {
                Some((port, path)) => (port, format!("/{path}")),
                None => (target.as_str(), "/".to_string()),
            };
            Some(HealthTest::Http {
                port: parse_port(port, "--health-http")?,
                path,
            })
        } else if let Some(port) = &self.health_tcp {
            Some(HealthTest::Tcp {
                port: parse_port(port, "--health-tcp")?,
            })
        } else if self.no_healthcheck {
            Some(HealthTest::None)
        } else {
            None
        };
        let timings = [
            &self.health_interval,
            &self.health_timeout,
            &self.health_retries,
            &self.health_start_period,
        ];
        let timing_given = timings.iter().any(|t| t.is_some());
        if test.is_none() && !timing_given {
            return Ok(());
        }
        let mut check = spec
            .task
            .health
            .clone()
            .unwrap_or_else(|| HealthCheck::new(HealthTest::Image));
        if let Some(test) = test {
            check.test = test;
        }
        if let Some(v) = &self.health_interval {
            check.interval_ms = timing_or(
                v,
                "--health-interval",
                flotilla_types::DEFAULT_HEALTH_INTERVAL_MS,
            )?;
        }
        if let Some(v) = &self.health_timeout {
            check.timeout_ms = timing_or(
                v,
                "--health-timeout",
                flotilla_types::DEFAULT_HEALTH_TIMEOUT_MS,
            )?;
        }
        if let Some(v) = &self.health_retries {
            check.retries = v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|r| *r > 0)
                .ok_or_else(|| {
                    anyhow!("invalid --health-retries {v:?}: expected a whole number > 0")
                })?;
        }
        if let Some(v) = &self.health_start_period {
            check.start_period_ms = duration(v, "--health-start-period")?;
        }
        spec.task.health = Some(check);
        Ok(())
    }
}

fn duration(v: &str, flag: &str) -> Result<u64> {
    parse_duration_ms(v).map_err(|e| anyhow!("{flag}: {e}"))
}

/// A health timing; 0 means Docker's default, as `docker service create`
/// reads it.
fn timing_or(v: &str, flag: &str, default: u64) -> Result<u64> {
    match duration(v, flag)? {
        0 => Ok(default),
        ms => Ok(ms),
    }
}

/// A port number; that it is not 0 is a rule of the spec.
fn parse_port(v: &str, flag: &str) -> Result<u16> {
    v.trim()
        .parse::<u16>()
        .map_err(|_| anyhow!("invalid {flag} port {v:?}: expected 1-65535"))
}

/// Parses a CPU count such as `0.5` or `2` into billionths.
pub fn parse_cpus(v: &str) -> Result<u64, String> {
    let cpus: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count {v:?}: expected a number such as 0.5"))?;
    Resources::nano_cpus_of(cpus).ok_or_else(|| {
        format!("invalid CPU count {v:?}: expected 0 (no limit) or 0.000000001 to 1000000000")
    })
}

/// Parses a memory size such as `512M`, `1g`, `1024k` or `1048576` (bytes),
/// with the Compose parser's rules.
pub fn parse_memory(v: &str) -> Result<u64, String> {
    flotilla_types::parse_memory(v)
        .ok_or_else(|| format!("invalid memory size {v:?}: expected e.g. 512M or 1G"))
}

fn set_resources(
    r: &mut Resources,
    cpu: &Option<String>,
    memory: &Option<String>,
    what: &str,
) -> Result<()> {
    if let Some(c) = cpu {
        r.nano_cpus = parse_cpus(c).map_err(|e| anyhow!("--{what}-cpu: {e}"))?;
    }
    if let Some(m) = memory {
        r.memory_bytes = parse_memory(m).map_err(|e| anyhow!("--{what}-memory: {e}"))?;
    }
    Ok(())
}

/// Parses Docker's `--mount` syntax:
/// `type=bind,source=/srv,target=/data,readonly` (also `src`, `dst`,
/// `destination`, `ro`, `readonly=true|false`); the type defaults to volume.
pub fn parse_mount(text: &str) -> Result<Mount, String> {
    let bad = |why: String| format!("invalid mount {text:?}: {why}");
    let mut mount = Mount {
        kind: MountKind::Volume,
        source: String::new(),
        target: String::new(),
        read_only: false,
        propagation: None,
    };
    for field in text.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field, None),
        };
        match (key, value) {
            ("type", Some(v)) => {
                mount.kind = MountKind::parse(v)
                    .ok_or_else(|| bad(format!("type {v:?} is not bind, volume or tmpfs")))?
            }
            ("source" | "src", Some(v)) => mount.source = v.to_string(),
            ("target" | "dst" | "destination", Some(v)) => mount.target = v.to_string(),
            ("readonly" | "ro", None | Some("true" | "1")) => mount.read_only = true,
            ("readonly" | "ro", Some("false" | "0")) => mount.read_only = false,
            ("bind-propagation", Some(v)) => {
                mount.propagation = Some(flotilla_types::Propagation::parse(v).map_err(bad)?)
            }
            // Docker on Linux ignores it: every mount is consistent there.
            ("consistency", Some("consistent" | "cached" | "delegated" | "default")) => {}
            (other, _) => return Err(bad(format!("unknown option {other:?}"))),
        }
    }
    if mount.target.is_empty() {
        return Err(bad("target is missing".into()));
    }
    Ok(mount)
}

/// Parses a failure ratio; that it is in `0..=1` is a rule of the spec.
pub fn parse_ratio(v: &str) -> Result<Ratio, String> {
    v.trim()
        .parse::<f64>()
        .map(Ratio)
        .map_err(|_| format!("invalid failure ratio {v:?}: expected a number from 0 to 1"))
}

/// Checks a spec built from flags with [`ServiceSpec::validate`], naming
/// the flag that sets the field a broken rule is about.
pub fn validate(spec: &ServiceSpec) -> Result<()> {
    let Err(e) = spec.validate() else {
        return Ok(());
    };
    let flag = match &e {
        SpecError::Name(_) => "--name",
        SpecError::TooManyReplicas(_) => "--replicas",
        SpecError::JobRestartsAny => "--restart-condition",
        SpecError::NoCommand => bail!(
            "a process service needs a command: flotilla service create --name {} -- CMD [ARGS...] (or --image IMAGE for a container)",
            spec.name
        ),
        SpecError::EmptyProgram | SpecError::NulInCommand | SpecError::HealthTiming => {
            return Err(e.into())
        }
        SpecError::NoImage | SpecError::ImageNeedsDocker => "--image",
        SpecError::InitNeedsDocker => "--init",
        SpecError::MountsNeedDocker | SpecError::MountTarget(_) | SpecError::BindSource(_) => {
            "--mount"
        }
        SpecError::HealthPort => match spec.task.health.as_ref().map(|h| &h.test) {
            Some(HealthTest::Tcp { .. }) => "--health-tcp",
            _ => "--health-http",
        },
        SpecError::HealthPath(_) => "--health-http",
        SpecError::HealthCommand => "--health-cmd",
        SpecError::ImageHealthNeedsDocker => {
            bail!("{e} (give --health-cmd, --health-http or --health-tcp)")
        }
        SpecError::FailureRatio {
            config: "rollback", ..
        } => "--rollback-max-failure-ratio",
        SpecError::FailureRatio { .. } => "--update-max-failure-ratio",
        SpecError::RollbackFailureAction => "--rollback-failure-action",
        SpecError::EnvName(_) => "--env",
        SpecError::PortNumber(_) | SpecError::DuplicatePublished(_) => "--publish",
        SpecError::NetworkEmpty | SpecError::DuplicateNetwork(_) | SpecError::Alias(_) => {
            "--network"
        }
        SpecError::NeedsDocker(field) => match super::container::flag_of(field) {
            Some(flag) => bail!("{flag} applies to docker tasks only (give --image)"),
            None => return Err(e.into()),
        },
        SpecError::Template { field, .. } | SpecError::Capability(field, _) => {
            match super::container::flag_of(field) {
                Some(flag) => flag,
                None => return Err(e.into()),
            }
        }
        SpecError::User(_) => "--user",
        SpecError::WorkingDir(_) => "--workdir",
        SpecError::StopSignal(_) => "--stop-signal",
        SpecError::Sysctl(_) => "--sysctl",
        SpecError::Ulimit(_) => "--ulimit",
        SpecError::ExtraHost(_) => "--add-host",
        SpecError::Dns(_) => "--dns",
        SpecError::DnsSearch(_) => "--dns-search",
        SpecError::LogDriver(_) => "--log-driver",
        SpecError::PropagationNeedsBind(_) => "--mount",
        SpecError::PlacementPreference(_) => "--placement-pref",
    };
    bail!("{flag}: {e}")
}

fn apply_update_config(
    c: &mut UpdateConfig,
    what: &str,
    [parallelism, delay, order, action, monitor, ratio]: [&Option<String>; 6],
) -> Result<()> {
    if let Some(v) = parallelism {
        c.parallelism = v.trim().parse::<u64>().map_err(|_| {
            anyhow!("invalid --{what}-parallelism {v:?}: expected a whole number >= 0")
        })?;
    }
    if let Some(v) = delay {
        c.delay_ms = duration(v, &format!("--{what}-delay"))?;
    }
    if let Some(v) = order {
        c.order = UpdateOrder::parse(v).ok_or_else(|| {
            anyhow!("invalid --{what}-order {v:?}: expected stop-first or start-first")
        })?;
    }
    if let Some(v) = action {
        c.failure_action = FailureAction::parse(v).ok_or_else(|| {
            anyhow!("invalid --{what}-failure-action {v:?}: expected pause, continue or rollback")
        })?;
    }
    if let Some(v) = monitor {
        c.monitor_ms = duration(v, &format!("--{what}-monitor"))?;
    }
    if let Some(v) = ratio {
        c.max_failure_ratio =
            parse_ratio(v).map_err(|e| anyhow!("--{what}-max-failure-ratio: {e}"))?;
    }
    Ok(())
}

pub(crate) fn parse_pairs(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow!("invalid {what} {item:?}: expected KEY=VALUE")),
        })
        .collect()
}

/// Parses a replica count the way a person types it, with a one-line error.
pub fn parse_replicas(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        bail!("invalid replicas {text:?}: must not be negative");
    }
    trimmed
        .parse::<u64>()
        .map_err(|_| anyhow!("invalid replicas {text:?}: expected a whole number"))
}

impl SpecFlags {
    fn apply_mesh(&self, spec: &mut ServiceSpec) -> Result<()> {
        let mesh = &mut spec.mesh;
        if let Some(b) = &self.balance {
            mesh.balance = match b.as_str() {
                "least-connections" | "leastconn" => {
                    flotilla_types::mesh::Balance::LeastConnections
                }
                "round-robin" | "roundrobin" => flotilla_types::mesh::Balance::RoundRobin,
                other => {
                    bail!("invalid --balance {other:?}: expected least-connections or round-robin")
                }
            };
        }
        if let Some(p) = &self.proxy_protocol {
            mesh.proxy_protocol = match p.to_ascii_lowercase().as_str() {
                "v1" | "1" => Some(flotilla_types::mesh::ProxyProtocol::V1),
                "v2" | "2" => Some(flotilla_types::mesh::ProxyProtocol::V2),
                "none" | "off" => None,
                other => bail!("invalid --proxy-protocol {other:?}: expected v1, v2 or none"),
            };
        }
        if let Some(t) = &self.mesh_idle_timeout {
            let ms = parse_duration_ms(t).map_err(|e| anyhow!("--mesh-idle-timeout: {e}"))?;
            mesh.idle_timeout_ms = (ms > 0).then_some(ms);
        }
        if let Some(n) = &self.mesh_max_connections {
            let n: u32 = n.trim().parse().map_err(|_| {
                anyhow!("invalid --mesh-max-connections {n:?}: expected a whole number >= 0")
            })?;
            mesh.max_connections = (n > 0).then_some(n);
        }
        Ok(())
    }
}

/// A `--network` value: `NAME`, or `name=NAME[,alias=ALIAS...]` as
/// Docker's long form.
pub fn parse_network(value: &str) -> Result<flotilla_types::NetworkAttachment, String> {
    if !value.contains('=') {
        if value.is_empty() || value.contains(',') {
            return Err(format!(
                "invalid network {value:?}: expected NAME or name=NAME[,alias=ALIAS]"
            ));
        }
        return Ok(flotilla_types::NetworkAttachment::to(value));
    }
    let mut attachment = flotilla_types::NetworkAttachment::to("");
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("name" | "target", name)) => attachment.network = name.to_string(),
            Some(("alias", alias)) => attachment.aliases.push(alias.to_string()),
            _ => {
                return Err(format!(
                    "invalid network option {part:?}: expected name=NAME or alias=ALIAS"
                ))
            }
        }
    }
    if attachment.network.is_empty() {
        return Err(format!("invalid network {value:?}: name=NAME is missing"));
    }
    Ok(attachment)
}

/// The attachments of `--network` values, with the flag named in an error.
pub fn parse_networks(
    values: &[String],
    flag: &str,
) -> Result<Vec<flotilla_types::NetworkAttachment>> {
    values
        .iter()
        .map(|v| parse_network(v).map_err(|e| anyhow!("{flag}: {e}")))
        .collect()
}

/// The references of `--secret` or `--config` values (`kind` tells
/// which), each parsed with [`SecretRef::parse`] and checked with
/// [`SecretRef::check`], with the flag named in an error.
pub fn parse_secret_refs(
    kind: SecretKind,
    values: &[String],
    flag: &str,
) -> Result<Vec<SecretRef>> {
    // The parser names `--secret` or `--config`; say the flag given.
    let named = |e: String| {
        let e = e.replace(&format!("--{kind}"), flag);
        if e.contains(flag) {
            anyhow!("{e}")
        } else {
            anyhow!("{flag}: {e}")
        }
    };
    values
        .iter()
        .map(|v| {
            let r = SecretRef::parse(kind, v).map_err(named)?;
            r.check(kind).map_err(named)?;
            Ok(r)
        })
        .collect()
}

/// `--secret-rm`/`--config-rm` then `--secret-add`/`--config-add` on the
/// references of one kind: a removal names a reference by its source
/// (the name), its ID or its target; an addition replaces the reference
/// at the same path in the task (which, named again, is resolved to the
/// current version).
pub fn update_secret_refs(
    kind: SecretKind,
    refs: &mut Vec<SecretRef>,
    rm: &[String],
    add: Vec<SecretRef>,
) {
    for name in rm {
        refs.retain(|r| {
            !(r.source == *name
                || (!r.id.is_empty() && r.id == *name)
                || r.target == *name
                || r.path_in_task(kind) == *name)
        });
    }
    for a in add {
        refs.retain(|r| r.path_in_task(kind) != a.path_in_task(kind));
        refs.push(a);
    }
}

/// The preferences of `--placement-pref` values (`spread=DESCRIPTOR`),
/// with the flag named in an error; whether the descriptor names
/// something a node has is the spec's rule.
pub fn parse_preferences(
    values: &[String],
    flag: &str,
) -> Result<Vec<flotilla_types::PlacementPreference>> {
    values
        .iter()
        .map(|v| v.parse().map_err(|e| anyhow!("{flag}: {e}")))
        .collect()
}

/// The ports of `--publish` values, with the flag named in an error.
pub fn parse_ports(values: &[String], flag: &str) -> Result<Vec<flotilla_types::PortConfig>> {
    let mut ports = Vec::new();
    for v in values {
        ports.extend(flotilla_types::parse_publish(v).map_err(|e| anyhow!("{flag}: {e}"))?);
    }
    Ok(ports)
}

/// Builds a service spec from `service create` flags.
pub fn spec_from_args(args: &CreateArgs) -> Result<ServiceSpec> {
    let mode = match args.mode.as_str() {
        "replicated" => ServiceMode::Replicated {
            replicas: match &args.replicas {
                Some(r) => parse_replicas(r)?,
                None => 1,
            },
        },
        "replicated-job" => ServiceMode::ReplicatedJob {
            replicas: match &args.replicas {
                Some(r) => parse_replicas(r)?,
                None => 1,
            },
            max_concurrent: match &args.max_concurrent {
                Some(m) => parse_replicas(m).map_err(|e| {
                    anyhow!("{}", e.to_string().replace("replicas", "--max-concurrent"))
                })?,
                None => 0,
            },
        },
        "global" | "global-job" => {
            if args.replicas.is_some() {
                bail!("--replicas cannot be used with --mode {}", args.mode);
            }
            if args.mode == "global" {
                ServiceMode::Global
            } else {
                ServiceMode::GlobalJob
            }
        }
        other => bail!(
            "invalid mode {other:?}: expected replicated, global, replicated-job or global-job"
        ),
    };
    if args.max_concurrent.is_some() && !matches!(mode, ServiceMode::ReplicatedJob { .. }) {
        bail!("--max-concurrent applies to --mode replicated-job only");
    }
    // As Docker's CLI: a global service has one task a node anyway.
    if args.spec.replicas_max_per_node.is_some() && mode.is_global() {
        bail!(
            "--replicas-max-per-node applies to replicated services and jobs, not to --mode {}",
            args.mode
        );
    }
    // A job's tasks run to completion: restarted on failure unless told
    // otherwise, as Docker's CLI does.
    let default_condition = if mode.is_job() { "on-failure" } else { "any" };
    let given = args
        .restart_condition
        .as_deref()
        .unwrap_or(default_condition);
    let condition = RestartCondition::parse(given).ok_or_else(|| {
        anyhow!("invalid restart condition {given:?}: expected none, on-failure or any")
    })?;
    let max_attempts = args
        .restart_max_attempts
        .trim()
        .parse::<u64>()
        .map_err(|_| {
            anyhow!(
                "invalid restart max attempts {:?}: expected a whole number >= 0",
                args.restart_max_attempts
            )
        })?;
    let constraints = args
        .constraint
        .iter()
        .map(|c| c.parse::<Constraint>())
        .collect::<Result<Vec<_>, _>>()?;
    let preferences = parse_preferences(&args.placement_pref, "--placement-pref")?;
    let duration = |flag: &str, v: &str| parse_duration_ms(v).map_err(|e| anyhow!("{flag}: {e}"));
    let mut spec = ServiceSpec {
        name: args.name.clone(),
        mode,
        labels: parse_pairs(&args.label, "label")?,
        task: TaskTemplate {
            driver: Driver::Process,
            command: args.command.clone(),
            env: parse_pairs(&args.env, "env")?,
            restart: RestartPolicy {
                condition,
                delay_ms: duration("--restart-delay", &args.restart_delay)?,
                max_attempts,
                window_ms: duration("--restart-window", &args.restart_window)?,
            },
            stop_grace_period_ms: duration("--stop-grace-period", &args.stop_grace_period)?,
            constraints,
            preferences,
            ..TaskTemplate::default()
        },
        ..ServiceSpec::default()
    };
    for m in &args.mount {
        spec.task
            .mounts
            .push(super::flags::parse_mount(m).map_err(|e| anyhow!("--mount: {e}"))?);
    }
    spec.task.ports = parse_ports(&args.publish, "--publish")?;
    spec.task.networks = parse_networks(&args.network, "--network")?;
    spec.task.secrets = parse_secret_refs(SecretKind::Secret, &args.secret, "--secret")?;
    spec.task.configs = parse_secret_refs(SecretKind::Config, &args.config, "--config")?;
    args.spec.apply(&mut spec)?;
    args.run.apply(&mut spec.task)?;
    super::flags::validate(&spec)?;
    Ok(spec)
}

/// Checks the `service update` flags whose values can be checked without
/// the spec (`--secret-add`, `--config-add`), so that a bad one is told
/// before the daemon is asked anything.
pub fn check_update(args: &UpdateArgs) -> Result<()> {
    parse_secret_refs(SecretKind::Secret, &args.secret_add, "--secret-add")?;
    parse_secret_refs(SecretKind::Config, &args.config_add, "--config-add")?;
    Ok(())
}

/// Applies `service update` flags to a spec read from the cluster.
/// `networks` names the service's networks (ID to name), so that
/// `--network-rm` and `--network-add` may name a network either way.
pub fn apply_update(
    spec: &mut ServiceSpec,
    args: &UpdateArgs,
    networks: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    if let Some(r) = &args.replicas {
        let replicas = parse_replicas(r)?;
        match spec.mode {
            ServiceMode::Replicated { .. } => spec.mode = ServiceMode::Replicated { replicas },
            ServiceMode::ReplicatedJob { max_concurrent, .. } => {
                spec.mode = ServiceMode::ReplicatedJob {
                    replicas,
                    max_concurrent,
                }
            }
            ServiceMode::Global | ServiceMode::GlobalJob => bail!(
                "service {} is {}: --replicas applies to replicated services only",
                spec.name,
                spec.mode.as_str()
            ),
        }
    }
    if args.spec.replicas_max_per_node.is_some() && spec.mode.is_global() {
        bail!(
            "service {} is {}: --replicas-max-per-node applies to replicated services and jobs only",
            spec.name,
            spec.mode.as_str()
        );
    }
    let task = &mut spec.task;
    for k in &args.env_rm {
        task.env.remove(k);
    }
    task.env.extend(parse_pairs(&args.env_add, "env")?);
    for k in &args.label_rm {
        spec.labels.remove(k);
    }
    spec.labels.extend(parse_pairs(&args.label_add, "label")?);
    for c in &args.constraint_rm {
        let c: Constraint = c.parse()?;
        task.constraints.retain(|have| *have != c);
    }
    for c in &args.constraint_add {
        let c: Constraint = c.parse()?;
        if !task.constraints.contains(&c) {
            task.constraints.push(c);
        }
    }
    for p in parse_preferences(&args.placement_pref_rm, "--placement-pref-rm")? {
        task.preferences.retain(|have| *have != p);
    }
    // Added after the others, as Docker does, even when already there.
    task.preferences.extend(parse_preferences(
        &args.placement_pref_add,
        "--placement-pref-add",
    )?);
    let duration = |flag: &str, v: &str| parse_duration_ms(v).map_err(|e| anyhow!("{flag}: {e}"));
    if let Some(c) = &args.restart_condition {
        task.restart.condition = RestartCondition::parse(c).ok_or_else(|| {
            anyhow!("invalid restart condition {c:?}: expected none, on-failure or any")
        })?;
    }
    if let Some(n) = &args.restart_max_attempts {
        task.restart.max_attempts = n.trim().parse::<u64>().map_err(|_| {
            anyhow!("invalid restart max attempts {n:?}: expected a whole number >= 0")
        })?;
    }
    if let Some(d) = &args.restart_delay {
        task.restart.delay_ms = duration("--restart-delay", d)?;
    }
    if let Some(w) = &args.restart_window {
        task.restart.window_ms = duration("--restart-window", w)?;
    }
    if let Some(g) = &args.stop_grace_period {
        task.stop_grace_period_ms = duration("--stop-grace-period", g)?;
    }
    if !args.command.is_empty() {
        task.command = args.command.clone();
    }
    for target in &args.mount_rm {
        task.mounts.retain(|m| m.target != *target);
    }
    for m in &args.mount_add {
        let m = super::flags::parse_mount(m).map_err(|e| anyhow!("--mount-add: {e}"))?;
        task.mounts.retain(|have| have.target != m.target);
        task.mounts.push(m);
    }
    for rm in parse_ports(&args.publish_rm, "--publish-rm")? {
        // `--publish-rm 8080` names the published port, as Docker's does;
        // a port published without a number is named by its target.
        task.ports.retain(|p| {
            let named = match (rm.published, p.published) {
                (Some(want), Some(have)) => want == have && rm.target == p.target,
                (None, Some(have)) => rm.target == have,
                (_, None) => rm.target == p.target,
            };
            !(named && rm.protocol == p.protocol)
        });
    }
    for add in parse_ports(&args.publish_add, "--publish-add")? {
        task.ports
            .retain(|p| p.key().is_none() || p.key() != add.key());
        if !task.ports.contains(&add) {
            task.ports.push(add);
        }
    }
    let named = |a: &flotilla_types::NetworkAttachment, name: &str| {
        a.network == name || networks.get(&a.network).is_some_and(|n| n == name)
    };
    for rm in &args.network_rm {
        task.networks.retain(|a| !named(a, rm));
    }
    for add in parse_networks(&args.network_add, "--network-add")? {
        // Named again: its aliases are replaced.
        task.networks.retain(|a| !named(a, &add.network));
        task.networks.push(add);
    }
    update_secret_refs(
        SecretKind::Secret,
        &mut task.secrets,
        &args.secret_rm,
        parse_secret_refs(SecretKind::Secret, &args.secret_add, "--secret-add")?,
    );
    update_secret_refs(
        SecretKind::Config,
        &mut task.configs,
        &args.config_rm,
        parse_secret_refs(SecretKind::Config, &args.config_add, "--config-add")?,
    );
    if args.force {
        task.force_update += 1;
    }
    args.run.apply(task)?;
    args.spec.apply(spec)?;
    super::flags::validate(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_checked() {
        assert_eq!(parse_replicas("3").ok(), Some(3));
        assert!(parse_replicas("-1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("negative"));
        assert!(parse_replicas("three")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("whole number"));
    }

    /// A valid process service with `flags` applied, checked as the
    /// commands check it.
    fn applied(flags: SpecFlags) -> Result<ServiceSpec> {
        let mut spec = ServiceSpec {
            name: "web".into(),
            ..ServiceSpec::default()
        };
        spec.task.command = vec!["true".into()];
        flags.apply(&mut spec)?;
        validate(&spec)?;
        Ok(spec)
    }

    fn refused(flags: SpecFlags, want: &str) {
        let err = applied(flags).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains(want)),
            "{err:?} lacks {want:?}"
        );
    }

    #[test]
    fn image_selects_the_docker_driver() {
        let spec = applied(SpecFlags {
            image: Some("busybox:1".into()),
            ..SpecFlags::default()
        })
        .expect("valid");
        assert_eq!(spec.task.driver, Driver::Docker);
        assert_eq!(spec.task.image.as_deref(), Some("busybox:1"));
        let err = applied(SpecFlags {
            image: Some("busybox:1".into()),
            driver: Some("process".into()),
            ..SpecFlags::default()
        })
        .expect_err("process with image");
        assert_eq!(err.to_string(), "--image: an image needs the docker driver");
        refused(
            SpecFlags {
                image: Some(" ".into()),
                ..SpecFlags::default()
            },
            "--image: a docker service needs an image",
        );
    }

    #[test]
    fn health_flags_build_a_check() {
        let spec = applied(SpecFlags {
            health_http: Some("8080/healthz".into()),
            health_interval: Some("2s".into()),
            health_retries: Some("2".into()),
            ..SpecFlags::default()
        })
        .expect("valid");
        let check = spec.task.health.expect("check");
        assert_eq!(
            check.test,
            HealthTest::Http {
                port: 8080,
                path: "/healthz".into()
            }
        );
        assert_eq!((check.interval_ms, check.retries), (2000, 2));
        assert_eq!(check.timeout_ms, flotilla_types::DEFAULT_HEALTH_TIMEOUT_MS);

        let only_timing = applied(SpecFlags {
            image: Some("busybox:1".into()),
            health_interval: Some("1s".into()),
            ..SpecFlags::default()
        })
        .expect("valid");
        assert_eq!(
            only_timing.task.health.map(|h| h.test),
            Some(HealthTest::Image)
        );

        for (bad, want) in [
            (
                SpecFlags {
                    health_tcp: Some("0".into()),
                    ..SpecFlags::default()
                },
                "--health-tcp: health check port must be 1-65535",
            ),
            (
                SpecFlags {
                    health_http: Some("0/ready".into()),
                    ..SpecFlags::default()
                },
                "--health-http: health check port must be 1-65535",
            ),
            (
                SpecFlags {
                    health_cmd: Some(" ".into()),
                    ..SpecFlags::default()
                },
                "--health-cmd: health check command is empty",
            ),
            (
                SpecFlags {
                    health_cmd: Some("true".into()),
                    health_tcp: Some("80".into()),
                    ..SpecFlags::default()
                },
                "give at most one of",
            ),
            (
                SpecFlags {
                    health_retries: Some("0".into()),
                    ..SpecFlags::default()
                },
                "--health-retries",
            ),
            (
                SpecFlags {
                    health_interval: Some("soon".into()),
                    ..SpecFlags::default()
                },
                "--health-interval: invalid duration",
            ),
            (
                SpecFlags {
                    health_interval: Some("1s".into()),
                    ..SpecFlags::default()
                },
                "a process has no image (give --health-cmd",
            ),
        ] {
            refused(bad, want);
        }
    }

    #[test]
    fn update_flags_change_only_what_is_given() {
        let spec = applied(SpecFlags {
            update_parallelism: Some("2".into()),
            update_order: Some("start-first".into()),
            update_failure_action: Some("rollback".into()),
            rollback_delay: Some("1s".into()),
            ..SpecFlags::default()
        })
        .expect("valid");
        assert_eq!(spec.update.parallelism, 2);
        assert_eq!(spec.update.order, UpdateOrder::StartFirst);
        assert_eq!(spec.update.failure_action, FailureAction::Rollback);
        assert_eq!(spec.update.monitor_ms, UpdateConfig::default().monitor_ms);
        assert_eq!(spec.rollback.delay_ms, 1000);
        for (bad, want) in [
            (
                SpecFlags {
                    update_order: Some("sideways".into()),
                    ..SpecFlags::default()
                },
                "invalid --update-order",
            ),
            (
                SpecFlags {
                    update_max_failure_ratio: Some("1.5".into()),
                    ..SpecFlags::default()
                },
                "--update-max-failure-ratio: update max failure ratio must be between 0 and 1, not 1.5",
            ),
            (
                SpecFlags {
                    rollback_max_failure_ratio: Some("half".into()),
                    ..SpecFlags::default()
                },
                "--rollback-max-failure-ratio: invalid failure ratio \"half\"",
            ),
            (
                SpecFlags {
                    rollback_failure_action: Some("rollback".into()),
                    ..SpecFlags::default()
                },
                "--rollback-failure-action: rollback failure action must be pause or continue, not rollback",
            ),
            (
                SpecFlags {
                    update_parallelism: Some("-1".into()),
                    ..SpecFlags::default()
                },
                "invalid --update-parallelism",
            ),
        ] {
            refused(bad, want);
        }
    }

    #[test]
    fn mounts_parse_like_docker() {
        let m = parse_mount("type=bind,source=/srv/www,target=/www,readonly").expect("bind");
        assert_eq!(
            m,
            Mount {
                kind: MountKind::Bind,
                source: "/srv/www".into(),
                target: "/www".into(),
                read_only: true,
                propagation: None,
            }
        );
        let v = parse_mount("src=data,dst=/var/lib/data").expect("volume");
        assert_eq!(
            (v.kind, v.source.as_str(), v.read_only),
            (MountKind::Volume, "data", false)
        );
        assert!(parse_mount("type=nfs,target=/x").is_err());
        assert!(parse_mount("source=/a").is_err());
        assert!(parse_mount("target=/a,colour=red").is_err());
    }

    /// `service create --name web FLAGS... -- true`, parsed by clap.
    fn create_args(flags: &[&str]) -> Box<CreateArgs> {
        use clap::Parser as _;
        let mut argv = vec!["flotilla", "service", "create", "--name", "web"];
        argv.extend(flags);
        argv.extend(["--", "true"]);
        match super::super::Cli::try_parse_from(argv) {
            Ok(super::super::Cli {
                command: super::super::Command::Service(super::super::ServiceCommand::Create(a)),
                ..
            }) => a,
            other => panic!("not a service create: {other:?}"),
        }
    }

    /// `service update FLAGS... web`, parsed by clap.
    fn update_args(flags: &[&str]) -> Box<UpdateArgs> {
        use clap::Parser as _;
        let mut argv = vec!["flotilla", "service", "update"];
        argv.extend(flags);
        argv.push("web");
        match super::super::Cli::try_parse_from(argv) {
            Ok(super::super::Cli {
                command: super::super::Command::Service(super::super::ServiceCommand::Update(a)),
                ..
            }) => a,
            other => panic!("not a service update: {other:?}"),
        }
    }

    fn err_of<T>(r: Result<T>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn placement_preferences_and_the_limit_per_node() {
        let spec = spec_from_args(&create_args(&[
            "--placement-pref",
            "spread=node.labels.zone",
            "--placement-pref",
            "spread=node.labels.rack",
            "--replicas-max-per-node",
            "2",
        ]))
        .expect("spec");
        let spread = |d: &str| flotilla_types::PlacementPreference::spread(d);
        assert_eq!(
            spec.task.preferences,
            [spread("node.labels.zone"), spread("node.labels.rack")]
        );
        assert_eq!(spec.task.max_replicas_per_node, 2);

        let mut updated = spec.clone();
        let args = update_args(&[
            "--placement-pref-rm",
            "spread=node.labels.zone",
            "--placement-pref-add",
            "spread=engine.labels.disk",
            "--replicas-max-per-node",
            "0",
        ]);
        apply_update(&mut updated, &args, &Default::default()).expect("update");
        assert_eq!(
            updated.task.preferences,
            [spread("node.labels.rack"), spread("engine.labels.disk")]
        );
        assert_eq!(updated.task.max_replicas_per_node, 0);

        for (flags, want) in [
            (
                vec!["--placement-pref", "node.labels.zone"],
                "--placement-pref: invalid placement preference \"node.labels.zone\": expected spread=node.labels.KEY",
            ),
            (
                vec!["--placement-pref", "spread=zone"],
                "--placement-pref: invalid placement preference spread=zone: spread over node.labels.KEY",
            ),
            (
                vec!["--replicas-max-per-node", "-1"],
                "invalid --replicas-max-per-node \"-1\": expected a whole number >= 0",
            ),
            (
                vec!["--mode", "global", "--replicas-max-per-node", "1"],
                "--replicas-max-per-node applies to replicated services and jobs, not to --mode global",
            ),
        ] {
            let err = err_of(spec_from_args(&create_args(&flags)));
            assert!(err.contains(want), "{flags:?}: {err:?} lacks {want:?}");
        }
        let mut global = spec.clone();
        global.mode = ServiceMode::Global;
        let args = update_args(&["--replicas-max-per-node", "1"]);
        let err = err_of(apply_update(&mut global, &args, &Default::default()));
        assert_eq!(
            err,
            "service web is global: --replicas-max-per-node applies to replicated services and jobs only"
        );
        let mut bad = spec;
        let args = update_args(&["--placement-pref-add", "spread=node.id"]);
        let err = err_of(apply_update(&mut bad, &args, &Default::default()));
        assert!(
            err.starts_with("--placement-pref: invalid placement preference spread=node.id"),
            "{err}"
        );
    }

    #[test]
    fn secrets_and_configs_go_into_the_template() {
        let spec = spec_from_args(&create_args(&[
            "--secret",
            "db_pass",
            "--secret",
            "source=tls_key,target=key.pem,uid=1000,gid=1000,mode=0400",
            "--config",
            "src=nginx,dst=/etc/nginx/nginx.conf",
        ]))
        .expect("spec");
        let secrets = &spec.task.secrets;
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets[0], SecretRef::to(SecretKind::Secret, "db_pass"));
        assert_eq!(
            (secrets[1].source.as_str(), secrets[1].target.as_str()),
            ("tls_key", "key.pem")
        );
        assert_eq!(
            (
                secrets[1].uid.as_str(),
                secrets[1].gid.as_str(),
                secrets[1].mode
            ),
            ("1000", "1000", 0o400)
        );
        // The manager fills these in.
        assert!(secrets.iter().all(|r| r.id.is_empty() && r.version == 0));
        assert_eq!(spec.task.configs.len(), 1);
        assert_eq!(spec.task.configs[0].source, "nginx");
        assert_eq!(spec.task.configs[0].target, "/etc/nginx/nginx.conf");
        assert!(spec_from_args(&create_args(&[]))
            .expect("none")
            .task
            .secrets
            .is_empty());
    }

    #[test]
    fn bad_secret_and_config_flags_are_one_line_errors() {
        for (flags, want) in [
            (vec!["--secret", ""], "empty --secret"),
            (
                vec!["--secret", "target=x"],
                "--secret \"target=x\" names no source",
            ),
            (
                vec!["--secret", "source=a,colour=red"],
                "unknown --secret field \"colour\"",
            ),
            (
                vec!["--config", "source=a,mode=999"],
                "--config: invalid file mode \"999\"",
            ),
            (
                vec!["--secret", "source=a,target=../etc/passwd"],
                "--secret: secret a: target \"../etc/passwd\" must not contain '.' or '..'",
            ),
            (
                vec!["--config", "source=a,uid=root"],
                "--config: config a: uid \"root\" is not a number",
            ),
        ] {
            let err = spec_from_args(&create_args(&flags))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "{flags:?}: {err:?} lacks {want:?}");
            assert!(!err.contains('\n'), "{err}");
        }
        for (flags, want) in [
            (
                vec!["--secret-add", "source=a,oops"],
                "invalid --secret-add field \"oops\": expected key=value",
            ),
            (
                vec!["--config-add", "source=a,target=/x/../y"],
                "--config-add: config a",
            ),
        ] {
            let args = update_args(&flags);
            let err = check_update(&args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "{flags:?}: {err:?} lacks {want:?}");
        }
        assert!(check_update(&update_args(&["--secret-add", "a"])).is_ok());
    }

    #[test]
    fn secret_add_and_rm_change_the_references() {
        let mut spec = spec_from_args(&create_args(&[
            "--secret",
            "db_pass",
            "--secret",
            "source=tls_key,target=key.pem",
            "--config",
            "nginx",
            "--config",
            "source=app,target=/etc/app.toml",
        ]))
        .expect("spec");
        // As the manager pins them.
        for r in spec
            .task
            .secrets
            .iter_mut()
            .chain(spec.task.configs.iter_mut())
        {
            r.id = format!("id-{}", r.source);
            r.version = 1;
        }
        let networks = BTreeMap::new();

        // By name, by target, by ID; an unknown name changes nothing.
        let mut s = spec.clone();
        apply_update(&mut s, &update_args(&["--secret-rm", "db_pass"]), &networks).expect("rm");
        assert_eq!(sources(&s.task.secrets), ["tls_key"]);
        let mut s = spec.clone();
        apply_update(&mut s, &update_args(&["--secret-rm", "key.pem"]), &networks).expect("rm");
        assert_eq!(sources(&s.task.secrets), ["db_pass"]);
        let mut s = spec.clone();
        apply_update(
            &mut s,
            &update_args(&["--config-rm", "id-nginx", "--config-rm", "/etc/app.toml"]),
            &networks,
        )
        .expect("rm");
        assert!(s.task.configs.is_empty());
        assert_eq!(s.task.secrets, spec.task.secrets);
        let mut s = spec.clone();
        apply_update(&mut s, &update_args(&["--secret-rm", "nope"]), &networks).expect("rm");
        assert_eq!(s, spec);

        // An addition at a target in use replaces what is there; the same
        // path written either way is the same target.
        let mut s = spec.clone();
        apply_update(
            &mut s,
            &update_args(&[
                "--secret-add",
                "source=tls_key_v2,target=/run/secrets/key.pem",
                "--secret-add",
                "api_token",
                "--config-add",
                "source=nginx2,target=/nginx",
            ]),
            &networks,
        )
        .expect("add");
        assert_eq!(
            sources(&s.task.secrets),
            ["db_pass", "tls_key_v2", "api_token"]
        );
        assert_eq!(sources(&s.task.configs), ["app", "nginx2"]);
        assert_eq!(s.task.secrets[0], spec.task.secrets[0]);

        // Removed and added again (Docker's way to take a new version):
        // the reference loses its pin, for the manager to resolve anew.
        let mut s = spec.clone();
        apply_update(
            &mut s,
            &update_args(&["--secret-rm", "db_pass", "--secret-add", "db_pass"]),
            &networks,
        )
        .expect("again");
        let again = s
            .task
            .secrets
            .iter()
            .find(|r| r.source == "db_pass")
            .expect("there");
        assert_eq!((again.id.as_str(), again.version), ("", 0));

        let mut s = spec.clone();
        let err = apply_update(
            &mut s,
            &update_args(&["--secret-add", "target=x"]),
            &networks,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("names no source"), "{err}");
    }

    fn sources(refs: &[SecretRef]) -> Vec<&str> {
        refs.iter().map(|r| r.source.as_str()).collect()
    }

    #[test]
    fn resources_parse_like_docker() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert!(parse_cpus("-1").is_err());
        // It would round to 0, which means no limit.
        assert!(parse_cpus("0.0000000001").is_err());
        assert_eq!(parse_cpus("0"), Ok(0));
        assert!(parse_cpus("lots").is_err());
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5gb"), Ok(3 << 29));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert!(parse_memory("12 parsecs").is_err());
        let spec = applied(SpecFlags {
            limit_cpu: Some("0.25".into()),
            limit_memory: Some("64m".into()),
            ..SpecFlags::default()
        })
        .expect("valid");
        assert_eq!(spec.task.resources.limits.nano_cpus, 250_000_000);
        assert_eq!(spec.task.resources.limits.memory_bytes, 64 << 20);
    }
}
