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
        if let Some(h) = &self.health {
            check_health(h, docker)?;
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SpecError::EnvName(key.clone()));
            }
        }
        check_ports(&self.ports)?;
        check_networks(&self.networks)
    }
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
    fn ratios_are_checked() {
        assert_eq!(Ratio::checked(0.25), Some(Ratio(0.25)));
        assert_eq!(Ratio::checked(1.01), None);
        assert_eq!(Ratio::checked(f64::NAN), None);
    }
}
