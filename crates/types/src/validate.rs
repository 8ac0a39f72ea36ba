//! What makes a [`ServiceSpec`] valid, in one place: the daemon refuses a
//! write that breaks a rule, and the CLI and the Compose conversion check
//! the specs they build with the same [`ServiceSpec::validate`], naming the
//! flag or the file line that the rule points at.

use thiserror::Error;

use crate::name::{validate_name, NameError};
use crate::network::{valid_alias, NetworkAttachment};
use crate::port::PortConfig;
use crate::service::{
    Driver, FailureAction, HealthCheck, HealthTest, Mount, MountKind, Ratio, RestartCondition,
    ServiceMode, ServiceSpec, TaskTemplate, UpdateConfig,
};

/// The most replicas one service may ask for: far beyond what one cluster
/// runs, low enough that a typo cannot make the store explode.
pub const MAX_REPLICAS: u64 = 100_000;

/// Why a spec was refused: one variant per rule. [`SpecError::field`] names
/// the field a rule is about, for callers that report it in their own
/// terms (a flag, a Compose key).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SpecError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("invalid replicas {0}: at most {MAX_REPLICAS} are allowed")]
    TooManyReplicas(u64),
    #[error("a service needs a command")]
    NoCommand,
    #[error(
        "a job's tasks run to completion: its restart condition must be on-failure or none, not any"
    )]
    JobRestartsAny,
    #[error("the command is empty")]
    EmptyProgram,
    #[error("the command contains a NUL byte")]
    NulInCommand,
    #[error("a docker service needs an image")]
    NoImage,
    #[error("an image needs the docker driver")]
    ImageNeedsDocker,
    #[error("init applies to docker tasks only")]
    InitNeedsDocker,
    #[error("mounts apply to docker tasks only")]
    MountsNeedDocker,
    /// A key of how a container runs set on a process task, which has no
    /// container; `.0` is its field (`task.read_only`).
    #[error("{} applies to docker tasks only", last_part(.0))]
    NeedsDocker(&'static str),
    /// A template that does not expand; `field` is where it is.
    #[error("{reason}")]
    Template { field: &'static str, reason: String },
    #[error("invalid user {0:?}: expected USER[:GROUP], each a name or a number")]
    User(String),
    #[error("working directory {0:?} must be an absolute path")]
    WorkingDir(String),
    #[error("invalid stop signal {0:?}: expected a name such as SIGINT, or a number from 1 to 64")]
    StopSignal(String),
    #[error(
        "invalid sysctl {0:?}: expected the name of a kernel parameter, such as net.core.somaxconn"
    )]
    Sysctl(String),
    /// `.0` is the field (`task.cap_add` or `task.cap_drop`).
    #[error("unknown capability {1:?}: expected ALL or a Linux capability, such as NET_ADMIN")]
    Capability(&'static str, String),
    /// Why a ulimit is wrong, in full.
    #[error("{0}")]
    Ulimit(String),
    /// Why an extra host is wrong, in full.
    #[error("{0}")]
    ExtraHost(String),
    #[error("invalid DNS server {0:?}: expected an IP address")]
    Dns(String),
    #[error("invalid DNS search domain {0:?}")]
    DnsSearch(String),
    #[error("invalid log driver {0:?}: expected a name such as json-file (none: the engine's default), with options KEY=VALUE")]
    LogDriver(String),
    #[error("mount {0}: propagation applies to bind mounts only")]
    PropagationNeedsBind(String),
    #[error("mount target {0:?} must be an absolute path")]
    MountTarget(String),
    #[error("bind mount source {0:?} must be an absolute path")]
    BindSource(String),
    #[error("health check interval and timeout must be more than 0")]
    HealthTiming,
    #[error("health check port must be 1-65535")]
    HealthPort,
    #[error("health check path {0:?} must start with /")]
    HealthPath(String),
    #[error("health check command is empty")]
    HealthCommand,
    #[error("a health check without a test uses the image's own, and a process has no image")]
    ImageHealthNeedsDocker,
    /// `config` is `update` or `rollback`.
    #[error("{config} max failure ratio must be between 0 and 1, not {value}")]
    FailureRatio { config: &'static str, value: f64 },
    #[error("rollback failure action must be pause or continue, not rollback")]
    RollbackFailureAction,
    #[error("invalid environment variable name {0:?}")]
    EnvName(String),
    #[error("port {0}: ports are 1-65535")]
    PortNumber(String),
    #[error("published port {0} is given twice")]
    DuplicatePublished(String),
    #[error("a network attachment names no network")]
    NetworkEmpty,
    #[error("network {0} is given twice")]
    DuplicateNetwork(String),
    #[error("invalid alias {0:?}: an alias is a DNS name of letters, digits, '-', '_' and '.'")]
    Alias(String),
    /// The descriptor of a placement preference that names nothing a
    /// node has.
    #[error("invalid placement preference spread={0}: spread over node.labels.KEY, engine.labels.KEY, node.platform.os or node.platform.arch")]
    PlacementPreference(String),
}

impl SpecError {
    /// The field of the spec the rule is about, as a path
    /// (`update.max_failure_ratio`).
    pub fn field(&self) -> &'static str {
        match self {
            SpecError::Name(_) => "name",
            SpecError::TooManyReplicas(_) => "replicas",
            SpecError::NoCommand | SpecError::EmptyProgram | SpecError::NulInCommand => {
                "task.command"
            }
            SpecError::NoImage => "task.image",
            SpecError::JobRestartsAny => "task.restart.condition",
            SpecError::ImageNeedsDocker => "task.driver",
            SpecError::InitNeedsDocker => "task.init",
            SpecError::MountsNeedDocker => "task.mounts",
            SpecError::NeedsDocker(field)
            | SpecError::Template { field, .. }
            | SpecError::Capability(field, _) => field,
            SpecError::User(_) => "task.user",
            SpecError::WorkingDir(_) => "task.working_dir",
            SpecError::StopSignal(_) => "task.stop_signal",
            SpecError::Sysctl(_) => "task.sysctls",
            SpecError::Ulimit(_) => "task.ulimits",
            SpecError::ExtraHost(_) => "task.extra_hosts",
            SpecError::Dns(_) => "task.dns",
            SpecError::DnsSearch(_) => "task.dns_search",
            SpecError::LogDriver(_) => "task.logging",
            SpecError::PropagationNeedsBind(_) => "task.mounts.propagation",
            SpecError::MountTarget(_) => "task.mounts.target",
            SpecError::BindSource(_) => "task.mounts.source",
            SpecError::HealthTiming => "task.health.interval_ms",
            SpecError::HealthPort => "task.health.test.port",
            SpecError::HealthPath(_) => "task.health.test.path",
            SpecError::HealthCommand => "task.health.test.command",
            SpecError::ImageHealthNeedsDocker => "task.health.test",
            SpecError::FailureRatio {
                config: "rollback", ..
            } => "rollback.max_failure_ratio",
            SpecError::FailureRatio { .. } => "update.max_failure_ratio",
            SpecError::RollbackFailureAction => "rollback.failure_action",
            SpecError::EnvName(_) => "task.env",
            SpecError::PortNumber(_) | SpecError::DuplicatePublished(_) => "task.ports",
            SpecError::NetworkEmpty | SpecError::DuplicateNetwork(_) | SpecError::Alias(_) => {
                "task.networks"
            }
            SpecError::PlacementPreference(_) => "task.preferences",
        }
    }
}

impl Ratio {
    /// `value` as a ratio if it is in `0.0..=1.0` (never NaN).
    pub fn checked(value: f64) -> Option<Ratio> {
        (0.0..=1.0).contains(&value).then_some(Ratio(value))
    }
}

impl Mount {
    /// An absolute target, and an absolute source for a bind mount.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !self.target.starts_with('/') {
            return Err(SpecError::MountTarget(self.target.clone()));
        }
        if self.kind == MountKind::Bind && !self.source.starts_with('/') {
            return Err(SpecError::BindSource(self.source.clone()));
        }
        Ok(())
    }
}

/// The replica count a replicated spec may ask for: at most
/// [`MAX_REPLICAS`]. Public so that a scale can be checked before the
/// spec it changes is read.
pub fn check_replicas(replicas: u64) -> Result<(), SpecError> {
    if replicas > MAX_REPLICAS {
        return Err(SpecError::TooManyReplicas(replicas));
    }
    Ok(())
}

impl ServiceSpec {
    /// Checks every rule a spec must follow beyond its types; the first
    /// one broken is the error.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        match self.mode {
            ServiceMode::Replicated { replicas } => check_replicas(replicas)?,
            ServiceMode::ReplicatedJob {
                replicas,
                max_concurrent,
            } => {
                check_replicas(replicas)?;
                check_replicas(max_concurrent)?;
            }
            ServiceMode::Global | ServiceMode::GlobalJob => {}
        }
        if self.mode.is_job() && self.task.restart.condition == RestartCondition::Any {
            return Err(SpecError::JobRestartsAny);
        }
        self.task.validate()?;
        check_update(&self.update, "update")?;
        check_update(&self.rollback, "rollback")?;
        if self.rollback.failure_action == FailureAction::Rollback {
            return Err(SpecError::RollbackFailureAction);
        }
        Ok(())
    }
}

impl TaskTemplate {
    fn validate(&self) -> Result<(), SpecError> {
        let docker = self.driver == Driver::Docker;
        match self.command.first() {
            None if !docker => return Err(SpecError::NoCommand),
            Some(program) if program.is_empty() => return Err(SpecError::EmptyProgram),
            _ => {}
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(SpecError::NulInCommand);
        }
        match self.image.as_deref() {
            None if docker => return Err(SpecError::NoImage),
            Some(image) if docker && image.trim().is_empty() => return Err(SpecError::NoImage),
            Some(_) if !docker => return Err(SpecError::ImageNeedsDocker),
            _ => {}
        }
        if !docker && self.init {
            return Err(SpecError::InitNeedsDocker);
        }
        if !docker && !self.mounts.is_empty() {
            return Err(SpecError::MountsNeedDocker);
        }
        self.mounts.iter().try_for_each(Mount::validate)?;
        check_run_options(self, docker)?;
        if let Some(h) = &self.health {
            check_health(h, docker)?;
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SpecError::EnvName(key.clone()));
            }
        }
        if let Some(bad) = self.preferences.iter().find(|p| p.key().is_none()) {
            return Err(SpecError::PlacementPreference(bad.spread.clone()));
        }
        check_ports(&self.ports)?;
        check_networks(&self.networks)
    }
}

/// The last part of a field's path: the key as the spec names it.
fn last_part(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

/// The keys of how a task runs beyond its command: each well formed, and
/// those only a container has (a host name, a root file system, kernel
/// parameters, capabilities, limits, `/etc/hosts`, a resolver, a log
/// driver) refused on a process task. `user`, `working_dir` and
/// `stop_signal` apply to processes too. Templates are checked wherever
/// they expand: the host name, the environment's values, the mounts'
/// sources and targets.
fn check_run_options(t: &TaskTemplate, docker: bool) -> Result<(), SpecError> {
    if !docker {
        let container_only = [
            ("task.hostname", t.hostname.is_some()),
            ("task.read_only", t.read_only),
            ("task.shm_size_bytes", t.shm_size_bytes > 0),
            ("task.sysctls", !t.sysctls.is_empty()),
            ("task.cap_add", !t.cap_add.is_empty()),
            ("task.cap_drop", !t.cap_drop.is_empty()),
            ("task.extra_hosts", !t.extra_hosts.is_empty()),
            ("task.dns", !t.dns.is_empty()),
            ("task.dns_search", !t.dns_search.is_empty()),
            ("task.logging", t.logging.is_some()),
        ];
        if let Some((field, _)) = container_only.into_iter().find(|(_, set)| *set) {
            return Err(SpecError::NeedsDocker(field));
        }
    }
    let template = |field: &'static str, text: &str, what: &dyn Fn() -> String| {
        crate::template::check(text).map_err(|reason| SpecError::Template {
            field,
            reason: format!("{}: {reason}", what()),
        })
    };
    if let Some(h) = &t.hostname {
        if h.trim().is_empty() || h.contains(char::is_whitespace) {
            return Err(SpecError::Template {
                field: "task.hostname",
                reason: format!("invalid hostname {h:?}"),
            });
        }
        template("task.hostname", h, &|| "hostname".to_string())?;
    }
    for (key, value) in &t.env {
        template("task.env", value, &|| format!("environment variable {key}"))?;
    }
    for m in &t.mounts {
        template("task.mounts", &m.source, &|| {
            format!("mount {} source", m.target)
        })?;
        template("task.mounts", &m.target, &|| {
            format!("mount {} target", m.target)
        })?;
        if m.propagation.is_some() && m.kind != MountKind::Bind {
            return Err(SpecError::PropagationNeedsBind(m.target.clone()));
        }
    }
    if let Some(u) = t
        .user
        .as_deref()
        .filter(|u| !crate::container::valid_user(u))
    {
        return Err(SpecError::User(u.to_string()));
    }
    if let Some(d) = t
        .working_dir
        .as_deref()
        .filter(|d| !d.starts_with('/') || d.contains('\0'))
    {
        return Err(SpecError::WorkingDir(d.to_string()));
    }
    if let Some(s) = t
        .stop_signal
        .as_deref()
        .filter(|s| crate::container::parse_signal(s).is_none())
    {
        return Err(SpecError::StopSignal(s.to_string()));
    }
    for (name, value) in &t.sysctls {
        if !crate::container::valid_sysctl(name) || value.contains('\0') {
            return Err(SpecError::Sysctl(name.clone()));
        }
    }
    for (field, caps) in [("task.cap_add", &t.cap_add), ("task.cap_drop", &t.cap_drop)] {
        if let Some(bad) = caps.iter().find(|c| !crate::container::valid_capability(c)) {
            return Err(SpecError::Capability(field, bad.clone()));
        }
    }
    let mut limits = std::collections::BTreeSet::new();
    for u in &t.ulimits {
        u.check().map_err(SpecError::Ulimit)?;
        if !limits.insert(u.name.as_str()) {
            return Err(SpecError::Ulimit(format!(
                "ulimit {} is given twice",
                u.name
            )));
        }
    }
    for h in &t.extra_hosts {
        h.check().map_err(SpecError::ExtraHost)?;
    }
    if let Some(bad) = t
        .dns
        .iter()
        .find(|d| d.parse::<std::net::IpAddr>().is_err())
    {
        return Err(SpecError::Dns(bad.clone()));
    }
    if let Some(bad) = t
        .dns_search
        .iter()
        .find(|d| d.is_empty() || d.contains(char::is_whitespace))
    {
        return Err(SpecError::DnsSearch(bad.clone()));
    }
    if let Some(l) = &t.logging {
        // No name: the engine's default driver, with these options.
        let blank = |s: &str| s.is_empty() || s.contains(char::is_whitespace);
        if l.name.contains(char::is_whitespace) || l.options.keys().any(|k| blank(k)) {
            return Err(SpecError::LogDriver(l.name.clone()));
        }
    }
    Ok(())
}

fn check_networks(networks: &[NetworkAttachment]) -> Result<(), SpecError> {
    let mut seen = std::collections::BTreeSet::new();
    for attachment in networks {
        if attachment.network.is_empty() {
            return Err(SpecError::NetworkEmpty);
        }
        if !seen.insert(attachment.network.as_str()) {
            return Err(SpecError::DuplicateNetwork(attachment.network.clone()));
        }
        if let Some(bad) = attachment.aliases.iter().find(|a| !valid_alias(a)) {
            return Err(SpecError::Alias(bad.clone()));
        }
    }
    Ok(())
}

fn check_ports(ports: &[PortConfig]) -> Result<(), SpecError> {
    let mut published = std::collections::BTreeSet::new();
    for port in ports {
        if port.target == 0 || port.published == Some(0) {
            return Err(SpecError::PortNumber(port.to_string()));
        }
        if let Some(key) = port.key() {
            if !published.insert(key) {
                return Err(SpecError::DuplicatePublished(format!(
                    "{}/{}",
                    key.0,
                    key.1.as_str()
                )));
            }
        }
    }
    Ok(())
}

fn check_health(h: &HealthCheck, docker: bool) -> Result<(), SpecError> {
    if h.interval_ms == 0 || h.timeout_ms == 0 {
        return Err(SpecError::HealthTiming);
    }
    match &h.test {
        HealthTest::Image if !docker => Err(SpecError::ImageHealthNeedsDocker),
        HealthTest::Http { port: 0, .. } | HealthTest::Tcp { port: 0 } => {
            Err(SpecError::HealthPort)
        }
        HealthTest::Http { path, .. } if !path.starts_with('/') => {
            Err(SpecError::HealthPath(path.clone()))
        }
        HealthTest::Exec { argv } if argv.is_empty() => Err(SpecError::HealthCommand),
        HealthTest::Shell { command } if command.trim().is_empty() => Err(SpecError::HealthCommand),
        _ => Ok(()),
    }
}

fn check_update(u: &UpdateConfig, config: &'static str) -> Result<(), SpecError> {
    match Ratio::checked(u.max_failure_ratio.0) {
        Some(_) => Ok(()),
        None => Err(SpecError::FailureRatio {
            config,
            value: u.max_failure_ratio.0,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::port::{Protocol, PublishMode};

    fn valid() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            task: TaskTemplate {
                command: vec!["sleep".into(), "10".into()],
                ..TaskTemplate::default()
            },
            ..ServiceSpec::default()
        }
    }

    fn docker() -> ServiceSpec {
        let mut spec = valid();
        spec.task.driver = Driver::Docker;
        spec.task.image = Some("busybox:1".into());
        spec
    }

    /// `spec` breaks exactly the rule of `want`, with its message.
    fn refused(spec: ServiceSpec, want: SpecError, message: &str) {
        assert_eq!(spec.validate(), Err(want.clone()));
        assert_eq!(want.to_string(), message);
        assert!(!message.contains('\n'));
    }

    fn mount(kind: MountKind, source: &str, target: &str, read_only: bool) -> Mount {
        Mount {
            kind,
            source: source.into(),
            target: target.into(),
            read_only,
            propagation: None,
        }
    }

    fn with_health(mut spec: ServiceSpec, test: HealthTest) -> ServiceSpec {
        spec.task.health = Some(HealthCheck::new(test));
        spec
    }

    #[test]
    fn networks_are_checked() {
        let with = |networks: Vec<NetworkAttachment>| {
            let mut s = valid();
            s.task.networks = networks;
            s.validate()
        };
        let alias = |network: &str, alias: &str| NetworkAttachment {
            network: network.into(),
            aliases: vec![alias.into()],
        };
        assert_eq!(
            with(vec![alias("n1", "db"), NetworkAttachment::to("n2")]),
            Ok(())
        );
        assert_eq!(
            with(vec![NetworkAttachment::to("n1"), alias("n1", "db")]),
            Err(SpecError::DuplicateNetwork("n1".into()))
        );
        assert_eq!(
            with(vec![NetworkAttachment::to("")]),
            Err(SpecError::NetworkEmpty)
        );
        let bad = with(vec![alias("n1", "no spaces")]).unwrap_err();
        assert_eq!(bad, SpecError::Alias("no spaces".into()));
        assert_eq!(bad.field(), "task.networks");
    }

    #[test]
    fn ports_are_checked() {
        let with = |ports: &[PortConfig]| {
            let mut s = valid();
            s.task.ports = ports.to_vec();
            s.validate()
        };
        let fixed = |published, target| PortConfig {
            published: Some(published),
            ..PortConfig::target(target)
        };
        assert_eq!(
            with(&[fixed(18080, 8080), PortConfig::target(9000)]),
            Ok(())
        );
        // One published port may not be given twice; a target may.
        assert!(matches!(
            with(&[fixed(18080, 80), fixed(18080, 81)]),
            Err(SpecError::DuplicatePublished(_))
        ));
        assert_eq!(with(&[fixed(18080, 80), fixed(18081, 80)]), Ok(()));
        assert!(matches!(
            with(&[PortConfig::target(0)]),
            Err(SpecError::PortNumber(_))
        ));
        assert!(matches!(
            with(&[fixed(0, 80)]),
            Err(SpecError::PortNumber(_))
        ));
        let udp = PortConfig {
            protocol: Protocol::Udp,
            ..PortConfig::target(53)
        };
        assert_eq!(with(&[udp]), Ok(()));
        // The same number over TCP and UDP are two ports.
        let udp_too = PortConfig {
            protocol: Protocol::Udp,
            ..fixed(18080, 80)
        };
        assert_eq!(with(&[fixed(18080, 80), udp_too]), Ok(()));
        let host = PortConfig {
            mode: PublishMode::Host,
            ..PortConfig::target(80)
        };
        assert_eq!(with(&[host]), Ok(()));
    }

    #[test]
    fn valid_specs_pass() {
        assert_eq!(valid().validate(), Ok(()));
        let mut d = docker();
        d.task.command.clear();
        d.task.init = true;
        d.task.mounts = vec![
            mount(MountKind::Bind, "/srv", "/data", true),
            mount(MountKind::Volume, "", "/scratch", false),
        ];
        d.task.health = Some(HealthCheck::new(HealthTest::Image));
        d.update.failure_action = FailureAction::Rollback;
        d.update.max_failure_ratio = Ratio(1.0);
        d.rollback.failure_action = FailureAction::Continue;
        d.mode = ServiceMode::Replicated {
            replicas: MAX_REPLICAS,
        };
        d.task.env.insert("A".into(), "x=y".into());
        assert_eq!(d.validate(), Ok(()));
        let mut g = valid();
        g.mode = ServiceMode::Global;
        assert_eq!(g.validate(), Ok(()));
    }

    #[test]
    fn name() {
        let mut spec = valid();
        spec.name = "-web".into();
        refused(
            spec,
            SpecError::Name(NameError::BadStart("-web".into())),
            "invalid name \"-web\": it must start with a letter or a digit",
        );
    }

    #[test]
    fn replicas() {
        let mut spec = valid();
        spec.mode = ServiceMode::Replicated {
            replicas: MAX_REPLICAS + 1,
        };
        refused(
            spec,
            SpecError::TooManyReplicas(100_001),
            "invalid replicas 100001: at most 100000 are allowed",
        );
    }

    #[test]
    fn a_process_needs_a_command() {
        let mut spec = valid();
        spec.task.command.clear();
        refused(spec, SpecError::NoCommand, "a service needs a command");
    }

    #[test]
    fn the_program_is_not_empty() {
        let mut spec = docker();
        spec.task.command = vec![String::new(), "x".into()];
        refused(spec, SpecError::EmptyProgram, "the command is empty");
    }

    #[test]
    fn no_nul_in_the_command() {
        let mut spec = valid();
        spec.task.command.push("a\0b".into());
        refused(
            spec,
            SpecError::NulInCommand,
            "the command contains a NUL byte",
        );
    }

    #[test]
    fn docker_needs_an_image() {
        for image in [None, Some(""), Some("  ")] {
            let mut spec = docker();
            spec.task.image = image.map(String::from);
            refused(spec, SpecError::NoImage, "a docker service needs an image");
        }
    }

    #[test]
    fn an_image_needs_docker() {
        let mut spec = valid();
        spec.task.image = Some("busybox".into());
        refused(
            spec,
            SpecError::ImageNeedsDocker,
            "an image needs the docker driver",
        );
    }

    #[test]
    fn init_needs_docker() {
        let mut spec = valid();
        spec.task.init = true;
        refused(
            spec,
            SpecError::InitNeedsDocker,
            "init applies to docker tasks only",
        );
    }

    #[test]
    fn mounts_need_docker() {
        let mut spec = valid();
        spec.task
            .mounts
            .push(mount(MountKind::Tmpfs, "", "/tmp", false));
        refused(
            spec,
            SpecError::MountsNeedDocker,
            "mounts apply to docker tasks only",
        );
    }

    #[test]
    fn mount_targets_are_absolute() {
        let mut spec = docker();
        spec.task
            .mounts
            .push(mount(MountKind::Volume, "data", "data", false));
        refused(
            spec,
            SpecError::MountTarget("data".into()),
            "mount target \"data\" must be an absolute path",
        );
    }

    #[test]
    fn bind_sources_are_absolute() {
        let mut spec = docker();
        spec.task
            .mounts
            .push(mount(MountKind::Bind, "srv", "/srv", false));
        refused(
            spec,
            SpecError::BindSource("srv".into()),
            "bind mount source \"srv\" must be an absolute path",
        );
    }

    #[test]
    fn health_timings_are_positive() {
        for (interval_ms, timeout_ms) in [(0, 1), (1, 0)] {
            let mut spec = valid();
            spec.task.health = Some(HealthCheck {
                interval_ms,
                timeout_ms,
                ..HealthCheck::new(HealthTest::Tcp { port: 80 })
            });
            refused(
                spec,
                SpecError::HealthTiming,
                "health check interval and timeout must be more than 0",
            );
        }
    }

    #[test]
    fn health_ports_are_not_zero() {
        for test in [
            HealthTest::Tcp { port: 0 },
            HealthTest::Http {
                port: 0,
                path: "/".into(),
            },
        ] {
            refused(
                with_health(valid(), test),
                SpecError::HealthPort,
                "health check port must be 1-65535",
            );
        }
    }

    #[test]
    fn health_paths_start_with_a_slash() {
        let test = HealthTest::Http {
            port: 80,
            path: "ready".into(),
        };
        refused(
            with_health(valid(), test),
            SpecError::HealthPath("ready".into()),
            "health check path \"ready\" must start with /",
        );
    }

    #[test]
    fn health_commands_are_not_empty() {
        for test in [
            HealthTest::Exec { argv: Vec::new() },
            HealthTest::Shell {
                command: " ".into(),
            },
        ] {
            refused(
                with_health(valid(), test),
                SpecError::HealthCommand,
                "health check command is empty",
            );
        }
    }

    #[test]
    fn a_process_has_no_image_health_check() {
        refused(
            with_health(valid(), HealthTest::Image),
            SpecError::ImageHealthNeedsDocker,
            "a health check without a test uses the image's own, and a process has no image",
        );
    }

    #[test]
    fn failure_ratios_are_between_0_and_1() {
        let mut spec = valid();
        spec.update.max_failure_ratio = Ratio(1.5);
        refused(
            spec,
            SpecError::FailureRatio {
                config: "update",
                value: 1.5,
            },
            "update max failure ratio must be between 0 and 1, not 1.5",
        );
        let mut spec = valid();
        spec.rollback.max_failure_ratio = Ratio(-0.1);
        let want = SpecError::FailureRatio {
            config: "rollback",
            value: -0.1,
        };
        assert_eq!(want.field(), "rollback.max_failure_ratio");
        refused(
            spec,
            want,
            "rollback max failure ratio must be between 0 and 1, not -0.1",
        );
        let mut spec = valid();
        spec.update.max_failure_ratio = Ratio(f64::NAN);
        assert!(matches!(
            spec.validate(),
            Err(SpecError::FailureRatio { .. })
        ));
    }

    #[test]
    fn a_rollback_does_not_roll_back() {
        let mut spec = valid();
        spec.rollback.failure_action = FailureAction::Rollback;
        refused(
            spec,
            SpecError::RollbackFailureAction,
            "rollback failure action must be pause or continue, not rollback",
        );
    }

    #[test]
    fn env_names() {
        for key in ["", "A=B", "A\0"] {
            let mut spec = valid();
            spec.task.env.insert(key.into(), "v".into());
            refused(
                spec,
                SpecError::EnvName(key.into()),
                &format!("invalid environment variable name {key:?}"),
            );
        }
    }

    #[test]
    fn placement_preferences_spread_over_what_nodes_have() {
        let mut spec = valid();
        spec.task.preferences = [
            "node.labels.zone",
            "engine.labels.disk",
            "node.platform.os",
            "node.platform.arch",
        ]
        .into_iter()
        .map(crate::PlacementPreference::spread)
        .collect();
        assert_eq!(spec.validate(), Ok(()));
        for bad in ["node.labels.", "node.hostname", "zone", ""] {
            let mut spec = valid();
            spec.task.preferences = vec![crate::PlacementPreference::spread(bad)];
            refused(
                spec,
                SpecError::PlacementPreference(bad.into()),
                &format!("invalid placement preference spread={bad}: spread over node.labels.KEY, engine.labels.KEY, node.platform.os or node.platform.arch"),
            );
        }
        assert_eq!(
            SpecError::PlacementPreference("x".into()).field(),
            "task.preferences"
        );
    }

    #[test]
    fn container_keys_need_docker() {
        type Set = fn(&mut TaskTemplate);
        let sets: [(&str, Set); 10] = [
            ("task.hostname", |t| t.hostname = Some("h".into())),
            ("task.read_only", |t| t.read_only = true),
            ("task.shm_size_bytes", |t| t.shm_size_bytes = 1 << 26),
            ("task.sysctls", |t| {
                t.sysctls.insert("net.core.somaxconn".into(), "1024".into());
            }),
            ("task.cap_add", |t| t.cap_add.push("NET_ADMIN".into())),
            ("task.cap_drop", |t| t.cap_drop.push("ALL".into())),
            ("task.extra_hosts", |t| {
                t.extra_hosts.push(crate::ExtraHost {
                    name: "h".into(),
                    ip: "10.0.0.1".into(),
                })
            }),
            ("task.dns", |t| t.dns.push("10.0.0.53".into())),
            ("task.dns_search", |t| {
                t.dns_search.push("example.org".into())
            }),
            ("task.logging", |t| {
                t.logging = Some(crate::LogDriver {
                    name: "json-file".into(),
                    options: Default::default(),
                })
            }),
        ];
        for (field, set) in sets {
            let mut process = valid();
            set(&mut process.task);
            let e = process.validate().unwrap_err();
            assert_eq!(e, SpecError::NeedsDocker(field));
            assert_eq!(e.field(), field);
            let key = field.trim_start_matches("task.");
            assert_eq!(e.to_string(), format!("{key} applies to docker tasks only"));
            let mut container = docker();
            set(&mut container.task);
            assert_eq!(container.validate(), Ok(()), "{field}");
        }
        // What a process honours too.
        let mut process = valid();
        process.task.user = Some("1000:1000".into());
        process.task.working_dir = Some("/tmp".into());
        process.task.stop_signal = Some("SIGINT".into());
        assert_eq!(process.validate(), Ok(()));
    }

    #[test]
    fn run_options_are_well_formed() {
        let with = |set: &dyn Fn(&mut TaskTemplate)| {
            let mut s = docker();
            set(&mut s.task);
            s.validate()
        };
        assert_eq!(
            with(&|t| t.user = Some("a b".into())),
            Err(SpecError::User("a b".into()))
        );
        assert_eq!(
            with(&|t| t.working_dir = Some("tmp".into())),
            Err(SpecError::WorkingDir("tmp".into()))
        );
        let e = with(&|t| t.stop_signal = Some("SIGNOPE".into())).unwrap_err();
        assert_eq!(e, SpecError::StopSignal("SIGNOPE".into()));
        assert_eq!(
            e.to_string(),
            "invalid stop signal \"SIGNOPE\": expected a name such as SIGINT, or a number from 1 to 64"
        );
        assert_eq!(
            with(&|t| {
                t.sysctls.insert("net core".into(), "1".into());
            }),
            Err(SpecError::Sysctl("net core".into()))
        );
        assert_eq!(
            with(&|t| t.cap_drop.push("NET_NOPE".into())),
            Err(SpecError::Capability("task.cap_drop", "NET_NOPE".into()))
        );
        let nofile = |soft, hard| crate::Ulimit {
            name: "nofile".into(),
            soft,
            hard,
        };
        assert!(matches!(
            with(&|t| t.ulimits.push(nofile(3, 2))),
            Err(SpecError::Ulimit(_))
        ));
        assert_eq!(
            with(&|t| t.ulimits = vec![nofile(1, 2), nofile(1, 2)]),
            Err(SpecError::Ulimit("ulimit nofile is given twice".into()))
        );
        let e = with(&|t| {
            t.extra_hosts.push(crate::ExtraHost {
                name: "h".into(),
                ip: "nope".into(),
            })
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "host h: \"nope\" is not an IP address");
        assert_eq!(
            with(&|t| t.dns.push("dns.example".into())),
            Err(SpecError::Dns("dns.example".into()))
        );
        assert_eq!(
            with(&|t| t.dns_search.push("a b".into())),
            Err(SpecError::DnsSearch("a b".into()))
        );
        assert_eq!(
            with(&|t| {
                t.logging = Some(crate::LogDriver {
                    name: "json file".into(),
                    options: Default::default(),
                })
            }),
            Err(SpecError::LogDriver("json file".into()))
        );
        let mut volume = mount(MountKind::Volume, "data", "/data", false);
        volume.propagation = Some(crate::Propagation::Rslave);
        let e = with(&|t| t.mounts.push(volume.clone())).unwrap_err();
        assert_eq!(e, SpecError::PropagationNeedsBind("/data".into()));
        assert_eq!(e.field(), "task.mounts.propagation");
        let mut bind = mount(MountKind::Bind, "/srv", "/data", false);
        bind.propagation = Some(crate::Propagation::Rslave);
        assert_eq!(with(&|t| t.mounts.push(bind.clone())), Ok(()));
    }

    #[test]
    fn templates_are_checked_where_they_expand() {
        let with = |set: &dyn Fn(&mut TaskTemplate)| {
            let mut s = docker();
            set(&mut s.task);
            s.validate()
        };
        assert_eq!(
            with(&|t| {
                t.hostname = Some("{{.Service.Name}}-{{.Task.Slot}}".into());
                t.env.insert("NODE".into(), "{{.Node.Hostname}}".into());
                t.mounts.push(mount(
                    MountKind::Bind,
                    "/srv/{{.Task.Slot}}",
                    "/data",
                    false,
                ));
            }),
            Ok(())
        );
        let e = with(&|t| t.hostname = Some("{{.Service.Nom}}".into())).unwrap_err();
        assert_eq!(e.field(), "task.hostname");
        assert!(
            e.to_string()
                .starts_with("hostname: unknown placeholder {{.Service.Nom}}: a template may use"),
            "{e}"
        );
        let e = with(&|t| {
            t.env.insert("A".into(), "{{.Oops}}".into());
        })
        .unwrap_err();
        assert_eq!(e.field(), "task.env");
        assert!(e.to_string().starts_with("environment variable A: "), "{e}");
        let e = with(&|t| {
            t.mounts
                .push(mount(MountKind::Bind, "/srv/{{.X}}", "/d", false))
        })
        .unwrap_err();
        assert_eq!(e.field(), "task.mounts");
        // A process's environment is a template too.
        let mut process = valid();
        process.task.env.insert("A".into(), "{{.Task.Nope}}".into());
        assert!(matches!(
            process.validate(),
            Err(SpecError::Template {
                field: "task.env",
                ..
            })
        ));
    }

    #[test]
    fn ratios_are_checked() {
        assert_eq!(Ratio::checked(0.25), Some(Ratio(0.25)));
        assert_eq!(Ratio::checked(1.01), None);
        assert_eq!(Ratio::checked(f64::NAN), None);
    }
}
