//! Stack files in the shape of Compose files, turned into Flotilla
//! service specs.
//!
//! Parsing, interpolation, merging of several files and validation live in
//! [`crate::compose`]; this module maps its model onto [`ServiceSpec`]s for
//! the drivers that exist today (the process driver), refusing services it
//! cannot run and warning about keys the process driver does not act on.

use std::collections::BTreeMap;

use flotilla_types::{Driver, ServiceSpec, TaskTemplate, DEFAULT_STOP_GRACE_MS};

use crate::compose::{self, ComposeError, ComposeService};

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

/// Parses several stack files, later ones merged over earlier ones (maps key
/// by key, scalars and lists replaced). Variables come from the process
/// environment over the `.env` file beside the first file.
pub fn parse_stack_files(files: &[(&str, &str)]) -> Result<Stack, StackError> {
    let first = files.first().ok_or(StackError::NoFiles)?.0;
    let vars = compose::variables_for(compose::dir_of(first))?;
    let parsed = compose::parse_compose(files, &vars)?;
    let mut warnings = parsed.warnings;
    let mut services = Vec::new();
    for svc in &parsed.services {
        services.push(to_spec(first, svc)?);
        let unused = svc.unused_by_process_driver();
        if !unused.is_empty() {
            warnings.push(format!(
                "service {}: not acted on yet by the process driver: {}",
                svc.name,
                unused.join(", ")
            ));
        }
    }
    Ok(Stack {
        services,
        compose: parsed.services,
        warnings,
    })
}

fn to_spec(path: &str, svc: &ComposeService) -> Result<ServiceSpec, StackError> {
    let fail = |reason: String| StackError::Service {
        path: path.to_string(),
        service: svc.name.clone(),
        reason,
    };
    let driver = match svc.driver.as_deref() {
        Some("process") => Driver::Process,
        Some(other) => {
            return Err(fail(format!(
                "x-flotilla.driver {other:?} is not available (use process)"
            )))
        }
        None if svc.image.is_some() => return Err(fail(
            "containers (image:) come with the docker driver, which is not available yet; set x-flotilla.driver: process".into(),
        )),
        None => Driver::Process,
    };
    let mut command = svc.entrypoint.clone().unwrap_or_default();
    command.extend(svc.command.iter().flatten().cloned());
    if command.is_empty() {
        return Err(fail(
            "no command: the process driver needs `command`".into(),
        ));
    }
    // Service labels win over container labels, which the process driver
    // has nowhere else to put.
    let mut labels: BTreeMap<String, String> = svc.labels.clone();
    labels.extend(svc.deploy.labels.clone());
    Ok(ServiceSpec {
        name: svc.name.clone(),
        mode: svc.deploy.mode,
        labels,
        task: TaskTemplate {
            driver,
            command,
            env: svc.environment.clone(),
            restart: svc.deploy.restart_policy.clone().unwrap_or_default(),
            stop_grace_period_ms: svc.stop_grace_period_ms.unwrap_or(DEFAULT_STOP_GRACE_MS),
            constraints: svc.deploy.constraints.clone(),
            ..TaskTemplate::default()
        },
        ..ServiceSpec::default()
    })
}

/// Reads and parses a stack file.
pub fn load_stack(path: &str) -> Result<Stack, StackError> {
    load_stack_files(&[path])
}

/// Reads and parses several stack files, later ones over earlier ones.
pub fn load_stack_files(paths: &[&str]) -> Result<Stack, StackError> {
    let texts = paths
        .iter()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|source| StackError::Read {
                path: path.to_string(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let files: Vec<(&str, &str)> = paths
        .iter()
        .copied()
        .zip(texts.iter().map(String::as_str))
        .collect();
    parse_stack_files(&files)
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
