//! Stack files in the shape of Compose files, turned into Flotilla
//! service specs.
//!
//! Parsing, interpolation, merging of several files and validation live in
//! [`crate::compose`]; this module maps its model onto [`ServiceSpec`]s
//! (`to_spec`): a service with `image` runs on the docker driver, one with
//! only `command` on the process driver (`x-flotilla.driver` picks one
//! explicitly). Keys the model knows but a `ServiceSpec` has no place for
//! (yet) are named in one warning per stack, as `docker stack deploy` names
//! the options it ignores; nothing is dropped silently.
//!
//! Container `labels` have no place of their own in a spec (there are no
//! container labels yet): they become service labels, under `deploy.labels`,
//! which win on the same key.

use std::collections::BTreeMap;

use flotilla_types::{
    validate_name, Driver, FailureAction, HealthCheck, HealthTest, Ratio, ResourceSpec, Resources,
    ServiceSpec, TaskTemplate, UpdateConfig, UpdateOrder, DEFAULT_HEALTH_INTERVAL_MS,
    DEFAULT_HEALTH_RETRIES, DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_STOP_GRACE_MS,
};

use crate::compose::{self, ComposeError, ComposeService};

/// The label Swarm puts on every service of a stack; `stack ls`, `stack rm`
/// and `--prune` find a stack's services by it.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// Why a stack was refused.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot read stack file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stack file {path}: service {service}: {reason}")]
    Service {
        path: String,
        service: String,
        reason: String,
    },
    #[error("invalid stack name {name:?}: {reason}")]
    StackName { name: String, reason: String },
    #[error("no stack file given")]
    NoFiles,
    #[error("stack file {0}")]
    Compose(#[from] ComposeError),
}

/// A parsed stack: service specs (names not yet prefixed), the Compose model
/// they came from (same order), and warnings about keys that were ignored.
#[derive(Debug, Clone)]
pub struct Stack {
    pub services: Vec<ServiceSpec>,
    pub compose: Vec<ComposeService>,
    pub warnings: Vec<String>,
    /// The first file, which names the stack in messages.
    pub path: String,
}

impl Stack {
    /// The specs as deployed under the stack name `stack`: named
    /// `STACK_SERVICE` and labelled with [`NAMESPACE_LABEL`].
    pub fn specs_for(&self, stack: &str) -> Result<Vec<ServiceSpec>, StackError> {
        validate_name(stack).map_err(|e| StackError::StackName {
            name: stack.to_string(),
            reason: e.to_string(),
        })?;
        self.services
            .iter()
            .map(|spec| {
                let mut spec = spec.clone();
                let full = format!("{stack}_{}", spec.name);
                validate_name(&full).map_err(|e| StackError::Service {
                    path: self.path.clone(),
                    service: spec.name.clone(),
                    reason: format!("service name {full:?}: {e}"),
                })?;
                spec.name = full;
                spec.labels
                    .insert(NAMESPACE_LABEL.to_string(), stack.to_string());
                Ok(spec)
            })
            .collect()
    }
}

/// Splits a command string the way a shell would for simple cases: words on
/// white space, with single and double quotes and backslash escapes.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => match chars.next() {
                Some(n) => current.push(n),
                None => return Err("command ends with a backslash".into()),
            },
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
        if quote.is_some() {
            in_word = true;
        }
    }
    if quote.is_some() {
        return Err("command has an unclosed quote".into());
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

/// Parses stack file text. `path` names the file in messages and locates
/// the `.env` file and `env_file` entries.
pub fn parse_stack(path: &str, text: &str) -> Result<Stack, StackError> {
    parse_stack_files(&[(path, text)])
}

/// Parses several stack files, later ones merged over earlier ones (see
/// [`compose::yaml::merge`]). Variables come from the process environment
/// over the `.env` file beside the first file.
pub fn parse_stack_files(files: &[(&str, &str)]) -> Result<Stack, StackError> {
    let first = files.first().ok_or(StackError::NoFiles)?.0;
    let vars = compose::variables_for(compose::dir_of(first))?;
    let parsed = compose::parse_compose(files, &vars)?;
    let mut warnings = parsed.warnings;
    let mut ignored = Ignored::default();
    let mut services = Vec::new();
    for svc in &parsed.services {
        services.push(to_spec(first, svc, &mut ignored)?);
    }
    if let Some(w) = ignored.warning() {
        warnings.push(w);
    }
    Ok(Stack {
        services,
        compose: parsed.services,
        warnings,
        path: first.to_string(),
    })
}

/// Keys that were set but have no place in a spec yet, with the services
/// that set them, in the order first seen.
#[derive(Debug, Default)]
struct Ignored(Vec<(&'static str, Vec<String>)>);

impl Ignored {
    fn note(&mut self, key: &'static str, service: &str) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, services)) => services.push(service.to_string()),
            None => self.0.push((key, vec![service.to_string()])),
        }
    }

    fn warning(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let keys: Vec<String> = self
            .0
            .iter()
            .map(|(k, s)| format!("{k} ({})", s.join(", ")))
            .collect();
        Some(format!(
            "Ignoring options Flotilla does not act on yet: {}",
            keys.join(", ")
        ))
    }
}

fn to_spec(
    path: &str,
    svc: &ComposeService,
    ignored: &mut Ignored,
) -> Result<ServiceSpec, StackError> {
    let fail = |reason: String| StackError::Service {
        path: path.to_string(),
        service: svc.name.clone(),
        reason,
    };
    let driver = match svc.driver.as_deref() {
        Some("process") => Driver::Process,
        Some("docker") => Driver::Docker,
        Some(other) => {
            return Err(fail(format!(
                "x-flotilla.driver {other:?} is neither process nor docker"
            )))
        }
        None if svc.image.is_some() => Driver::Docker,
        None => Driver::Process,
    };
    let (image, command, entrypoint) = match driver {
        Driver::Docker => {
            let image = svc
                .image
                .clone()
                .filter(|i| !i.trim().is_empty())
                .ok_or_else(|| fail("the docker driver needs an `image`".into()))?;
            (
                Some(image),
                svc.command.clone().unwrap_or_default(),
                svc.entrypoint.clone(),
            )
        }
        Driver::Process => {
            if svc.image.is_some() {
                ignored.note("image", &svc.name);
            }
            // A process has no image to hold an entrypoint: the two make up
            // its command line, as they would a container's.
            let mut command = svc.entrypoint.clone().unwrap_or_default();
            command.extend(svc.command.iter().flatten().cloned());
            if command.is_empty() {
                return Err(fail(
                    "nothing to run: give `image` for a container, or `command` for a process"
                        .into(),
                ));
            }
            (None, command, None)
        }
    };
    let health = svc
        .healthcheck
        .as_ref()
        .map(|h| health(h, driver, &svc.name, ignored))
        .transpose()
        .map_err(fail)?;
    let d = &svc.deploy;
    for (key, set) in [
        ("ports", !svc.ports.is_empty()),
        ("depends_on", !svc.depends_on.is_empty()),
        ("deploy.endpoint_mode", d.endpoint_mode.is_some()),
        (
            "deploy.placement.max_replicas_per_node",
            d.max_replicas_per_node.is_some(),
        ),
        ("deploy.placement.preferences", !d.spread.is_empty()),
    ] {
        if set {
            ignored.note(key, &svc.name);
        }
    }
    let mut labels: BTreeMap<String, String> = svc.labels.clone();
    labels.extend(d.labels.clone());
    Ok(ServiceSpec {
        name: svc.name.clone(),
        mode: d.mode,
        labels,
        task: TaskTemplate {
            driver,
            image,
            command,
            entrypoint,
            env: svc.environment.clone(),
            restart: d.restart_policy.clone().unwrap_or_default(),
            stop_grace_period_ms: svc.stop_grace_period_ms.unwrap_or(DEFAULT_STOP_GRACE_MS),
            constraints: d.constraints.clone(),
            force_update: 0,
            health,
            resources: ResourceSpec {
                limits: resources(&d.limits),
                reservations: resources(&d.reservations),
            },
        },
        update: update_config(d.update_config.as_ref(), "update_config").map_err(fail)?,
        rollback: update_config(d.rollback_config.as_ref(), "rollback_config").map_err(fail)?,
    })
}

fn resources(r: &compose::Resources) -> Resources {
    Resources {
        nano_cpus: r.nano_cpus.unwrap_or(0),
        memory_bytes: r.memory_bytes.unwrap_or(0),
    }
}

/// Compose's `healthcheck` as a spec's, with Docker's default timings for
/// what is not given.
fn health(
    h: &compose::Healthcheck,
    driver: Driver,
    service: &str,
    ignored: &mut Ignored,
) -> Result<HealthCheck, String> {
    if h.start_interval_ms.is_some() {
        ignored.note("healthcheck.start_interval", service);
    }
    let test = if h.disable {
        HealthTest::None
    } else {
        match h.test.split_first() {
            None if driver == Driver::Process => {
                return Err(
                    "healthcheck: without `test` it uses the image's own check, and a process has no image".into(),
                )
            }
            None => HealthTest::Image,
            Some((kind, rest)) => match kind.as_str() {
                "CMD" if rest.is_empty() => {
                    return Err("healthcheck.test: CMD needs a command after it".into())
                }
                "CMD" => HealthTest::Exec {
                    argv: rest.to_vec(),
                },
                "CMD-SHELL" if rest.join(" ").trim().is_empty() => {
                    return Err("healthcheck.test: CMD-SHELL needs a command after it".into())
                }
                "CMD-SHELL" => HealthTest::Shell {
                    command: rest.join(" "),
                },
                "NONE" => HealthTest::None,
                other => {
                    return Err(format!(
                        "healthcheck.test: a list must start with CMD, CMD-SHELL or NONE, not {other:?}"
                    ))
                }
            },
        }
    };
    let positive = |v: Option<u64>, default: u64, key: &str| match v {
        None => Ok(default),
        Some(0) => Err(format!("healthcheck.{key}: must be more than 0")),
        Some(ms) => Ok(ms),
    };
    let retries = match h.retries {
        None => DEFAULT_HEALTH_RETRIES,
        Some(r) => {
            u32::try_from(r).map_err(|_| format!("healthcheck.retries: {r} is too large"))?
        }
    };
    Ok(HealthCheck {
        test,
        interval_ms: positive(h.interval_ms, DEFAULT_HEALTH_INTERVAL_MS, "interval")?,
        timeout_ms: positive(h.timeout_ms, DEFAULT_HEALTH_TIMEOUT_MS, "timeout")?,
        retries,
        start_period_ms: h.start_period_ms.unwrap_or(0),
    })
}

/// `update_config`/`rollback_config` over Swarm's defaults.
fn update_config(u: Option<&compose::UpdateConfig>, key: &str) -> Result<UpdateConfig, String> {
    let mut out = UpdateConfig::default();
    let Some(u) = u else {
        return Ok(out);
    };
    if let Some(p) = u.parallelism {
        out.parallelism = p;
    }
    if let Some(d) = u.delay_ms {
        out.delay_ms = d;
    }
    if let Some(m) = u.monitor_ms {
        out.monitor_ms = m;
    }
    if let Some(a) = &u.failure_action {
        out.failure_action = FailureAction::parse(a).ok_or_else(|| {
            format!("deploy.{key}.failure_action: {a:?} is not continue, pause or rollback")
        })?;
    }
    if let Some(r) = u.max_failure_ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(format!(
                "deploy.{key}.max_failure_ratio: {r} is not between 0 and 1"
            ));
        }
        out.max_failure_ratio = Ratio(r);
    }
    if let Some(o) = &u.order {
        out.order = UpdateOrder::parse(o)
            .ok_or_else(|| format!("deploy.{key}.order: {o:?} is not stop-first or start-first"))?;
    }
    Ok(out)
}

/// Reads and parses a stack file.
pub fn load_stack(path: &str) -> Result<Stack, StackError> {
    load_stack_files(&[path])
}

fn read_files(paths: &[&str]) -> Result<Vec<String>, StackError> {
    paths
        .iter()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|source| StackError::Read {
                path: path.to_string(),
                source,
            })
        })
        .collect()
}

/// Reads and parses several stack files, later ones over earlier ones.
pub fn load_stack_files(paths: &[&str]) -> Result<Stack, StackError> {
    let texts = read_files(paths)?;
    let files: Vec<(&str, &str)> = paths
        .iter()
        .copied()
        .zip(texts.iter().map(String::as_str))
        .collect();
    parse_stack_files(&files)
}

/// The merged, interpolated Compose YAML of several files (`stack config`),
/// once the stack passed every check a deploy makes; and its warnings.
pub fn config_yaml(paths: &[&str]) -> Result<(String, Vec<String>), StackError> {
    let texts = read_files(paths)?;
    let files: Vec<(&str, &str)> = paths
        .iter()
        .copied()
        .zip(texts.iter().map(String::as_str))
        .collect();
    let stack = parse_stack_files(&files)?;
    let first = files.first().ok_or(StackError::NoFiles)?.0;
    let vars = compose::variables_for(compose::dir_of(first))?;
    Ok((compose::merged_yaml(&files, &vars)?, stack.warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{RestartCondition, ServiceMode};

    const EXAMPLE: &str = r#"
services:
  web:
    command: ["sh", "-c", "echo hello; sleep 100000"]
    environment:
      GREETING: hi
      COUNT: 3
    deploy:
      replicas: 3
      restart_policy:
        condition: on-failure
        delay: 1s
        max_attempts: 5
        window: 1m
      placement:
        constraints: ["node.role==manager"]
    stop_grace_period: 2s
    x-flotilla:
      driver: process
  agent:
    command: sleep 100000
    environment: ["A=1", "B=two words"]
    deploy:
      mode: global
    ports: ["80:80"]
"#;

    #[test]
    fn parses_the_compose_shape() {
        let stack = parse_stack("example.yml", EXAMPLE).expect("parse");
        assert_eq!(stack.services.len(), 2);
        let web = stack
            .services
            .iter()
            .find(|s| s.name == "web")
            .expect("web");
        assert_eq!(web.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(web.task.command, ["sh", "-c", "echo hello; sleep 100000"]);
        assert_eq!(web.task.env["COUNT"], "3");
        assert_eq!(web.task.restart.condition, RestartCondition::OnFailure);
        assert_eq!(web.task.restart.delay_ms, 1_000);
        assert_eq!(web.task.restart.max_attempts, 5);
        assert_eq!(web.task.restart.window_ms, 60_000);
        assert_eq!(web.task.stop_grace_period_ms, 2_000);
        assert_eq!(web.task.constraints[0].to_string(), "node.role==manager");
        let agent = stack
            .services
            .iter()
            .find(|s| s.name == "agent")
            .expect("agent");
        assert_eq!(agent.mode, ServiceMode::Global);
        assert_eq!(agent.task.command, ["sleep", "100000"]);
        assert_eq!(agent.task.env["B"], "two words");
        assert_eq!(stack.warnings.len(), 1, "{:?}", stack.warnings);
        assert!(stack.warnings[0].contains("ports"));
    }

    #[test]
    fn refuses_bad_stacks() {
        let bad = |text: &str| {
            parse_stack("s.yml", text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(bad("services: [").contains("not valid"));
        assert!(bad("services: {}").contains("no services"));
        assert!(bad("services:\n  web:\n    image: nginx\n").contains("docker driver"));
        assert!(
            bad("services:\n  web:\n    command: x\n    deploy:\n      replicas: -2\n")
                .contains("negative")
        );
        assert!(bad("services:\n  -web:\n    command: x\n").contains("invalid name"));
        assert!(bad("services:\n  web:\n    command: x\n    deploy:\n      placement:\n        constraints: [\"node.x==1\"]\n").contains("unknown key"));
        assert!(bad("services:\n  web:\n    deploy:\n      replicas: 1\n").contains("no command"));
    }

    #[test]
    fn splits_commands_like_a_shell() {
        assert_eq!(
            split_command("sleep 10").ok(),
            Some(vec!["sleep".into(), "10".into()])
        );
        assert_eq!(
            split_command(r#"sh -c 'echo "a b"; exit 3'"#).ok(),
            Some(vec![
                "sh".into(),
                "-c".into(),
                r#"echo "a b"; exit 3"#.into()
            ])
        );
        assert_eq!(
            split_command(r#"a "" b"#).ok(),
            Some(vec!["a".into(), "".into(), "b".into()])
        );
        assert!(split_command("echo 'oops").is_err());
    }
}
