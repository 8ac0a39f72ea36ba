//! Stack files in the shape of Compose files: `services:` with `command`,
//! `environment`, `deploy` (replicas, mode, placement, restart policy) and an
//! `x-flotilla` extension that picks the driver.
//!
//! Keys that Flotilla does not act on yet are reported back as warnings, not
//! silently dropped.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use flotilla_types::{
    parse_duration_ms, validate_name, Constraint, Driver, RestartCondition, RestartPolicy,
    ServiceMode, ServiceSpec, TaskTemplate, DEFAULT_STOP_GRACE_MS,
};

/// Why a stack file was refused.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot read stack file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stack file {path} is not valid: {reason}")]
    Syntax { path: String, reason: String },
    #[error("stack file {path}: service {service}: {reason}")]
    Service {
        path: String,
        service: String,
        reason: String,
    },
    #[error("stack file {path} has no services")]
    Empty { path: String },
}

#[derive(Debug, Deserialize)]
struct ComposeFile {
    #[serde(default)]
    services: BTreeMap<String, ComposeService>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    String(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EnvForm {
    Map(BTreeMap<String, Option<EnvValue>>),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EnvValue {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl EnvValue {
    fn text(&self) -> String {
        match self {
            EnvValue::String(s) => s.clone(),
            EnvValue::Int(i) => i.to_string(),
            EnvValue::Float(f) => f.to_string(),
            EnvValue::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ComposeService {
    command: Option<StringOrList>,
    entrypoint: Option<StringOrList>,
    environment: Option<EnvForm>,
    labels: Option<EnvForm>,
    stop_grace_period: Option<String>,
    image: Option<String>,
    #[serde(default)]
    deploy: Deploy,
    #[serde(rename = "x-flotilla", default)]
    x_flotilla: XFlotilla,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct Deploy {
    mode: Option<String>,
    replicas: Option<i64>,
    #[serde(default)]
    placement: Placement,
    restart_policy: Option<ComposeRestart>,
    labels: Option<EnvForm>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct Placement {
    #[serde(default)]
    constraints: Vec<String>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct ComposeRestart {
    condition: Option<String>,
    delay: Option<String>,
    max_attempts: Option<u64>,
    window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct XFlotilla {
    driver: Option<String>,
}

/// A parsed stack: service specs (names not yet prefixed) and warnings about
/// keys that were ignored.
#[derive(Debug, Clone)]
pub struct Stack {
    pub services: Vec<ServiceSpec>,
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

fn list(form: &StringOrList) -> Result<Vec<String>, String> {
    match form {
        StringOrList::String(s) => split_command(s),
        StringOrList::List(v) => Ok(v.clone()),
    }
}

fn pairs(form: &EnvForm, what: &str) -> Result<BTreeMap<String, String>, String> {
    match form {
        EnvForm::Map(m) => Ok(m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_ref().map(EnvValue::text).unwrap_or_default(),
                )
            })
            .collect()),
        EnvForm::List(items) => items
            .iter()
            .map(|item| match item.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(format!("{what} entry {item:?} is not KEY=VALUE")),
            })
            .collect(),
    }
}

/// Parses stack file text. `path` is only used in messages.
pub fn parse_stack(path: &str, text: &str) -> Result<Stack, StackError> {
    let file: ComposeFile = serde_saphyr::from_str(text).map_err(|e| StackError::Syntax {
        path: path.to_string(),
        reason: e.to_string().lines().next().unwrap_or("").to_string(),
    })?;
    let mut warnings = Vec::new();
    for key in file.other.keys() {
        if key != "version" && !key.starts_with("x-") {
            warnings.push(format!(
                "top-level key {key:?} is not supported yet and was ignored"
            ));
        }
    }
    if file.services.is_empty() {
        return Err(StackError::Empty {
            path: path.to_string(),
        });
    }
    let mut services = Vec::new();
    for (name, svc) in &file.services {
        let fail = |reason: String| StackError::Service {
            path: path.to_string(),
            service: name.clone(),
            reason,
        };
        validate_name(name).map_err(|e| fail(e.to_string()))?;
        for key in svc
            .other
            .keys()
            .chain(svc.deploy.other.keys())
            .chain(svc.deploy.placement.other.keys())
        {
            if !key.starts_with("x-") {
                warnings.push(format!(
                    "service {name}: key {key:?} is not supported yet and was ignored"
                ));
            }
        }
        let driver = match svc.x_flotilla.driver.as_deref() {
            Some("process") => Driver::Process,
            Some(other) => return Err(fail(format!("x-flotilla.driver {other:?} is not available (use process)"))),
            None if svc.image.is_some() => {
                return Err(fail(
                    "containers (image:) come with the docker driver, which is not available yet; set x-flotilla.driver: process".into(),
                ))
            }
            None => Driver::Process,
        };
        let mut command = match &svc.entrypoint {
            Some(e) => list(e).map_err(fail)?,
            None => Vec::new(),
        };
        if let Some(c) = &svc.command {
            command.extend(list(c).map_err(fail)?);
        }
        if command.is_empty() {
            return Err(fail(
                "no command: the process driver needs `command`".into(),
            ));
        }
        let env = match &svc.environment {
            Some(e) => pairs(e, "environment").map_err(fail)?,
            None => BTreeMap::new(),
        };
        let mut labels = match &svc.deploy.labels {
            Some(l) => pairs(l, "deploy.labels").map_err(fail)?,
            None => BTreeMap::new(),
        };
        if let Some(l) = &svc.labels {
            labels.extend(pairs(l, "labels").map_err(fail)?);
        }
        let mode = match svc.deploy.mode.as_deref() {
            None | Some("replicated") => {
                let replicas = svc.deploy.replicas.unwrap_or(1);
                if replicas < 0 {
                    return Err(fail(format!("deploy.replicas {replicas} is negative")));
                }
                ServiceMode::Replicated {
                    replicas: replicas as u64,
                }
            }
            Some("global") => {
                if svc.deploy.replicas.is_some() {
                    return Err(fail(
                        "deploy.replicas cannot be used with mode global".into(),
                    ));
                }
                ServiceMode::Global
            }
            Some(other) => {
                return Err(fail(format!(
                    "deploy.mode {other:?} is neither replicated nor global"
                )))
            }
        };
        let constraints = svc
            .deploy
            .placement
            .constraints
            .iter()
            .map(|c| c.parse::<Constraint>().map_err(|e| fail(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let duration = |field: &str, v: &Option<String>| -> Result<Option<u64>, StackError> {
            v.as_deref()
                .map(|d| parse_duration_ms(d).map_err(|e| fail(format!("{field}: {e}"))))
                .transpose()
        };
        let mut restart = RestartPolicy::default();
        if let Some(r) = &svc.deploy.restart_policy {
            if let Some(c) = &r.condition {
                restart.condition = RestartCondition::parse(c).ok_or_else(|| {
                    fail(format!(
                        "restart_policy.condition {c:?} is not none, on-failure or any"
                    ))
                })?;
            }
            if let Some(d) = duration("restart_policy.delay", &r.delay)? {
                restart.delay_ms = d;
            }
            if let Some(m) = r.max_attempts {
                restart.max_attempts = m;
            }
            if let Some(w) = duration("restart_policy.window", &r.window)? {
                restart.window_ms = w;
            }
        }
        let stop_grace_period_ms =
            duration("stop_grace_period", &svc.stop_grace_period)?.unwrap_or(DEFAULT_STOP_GRACE_MS);
        services.push(ServiceSpec {
            name: name.clone(),
            mode,
            labels,
            task: TaskTemplate {
                driver,
                command,
                env,
                restart,
                stop_grace_period_ms,
                constraints,
            },
        });
    }
    Ok(Stack { services, warnings })
}

/// Reads and parses a stack file.
pub fn load_stack(path: &str) -> Result<Stack, StackError> {
    let text = std::fs::read_to_string(path).map_err(|source| StackError::Read {
        path: path.to_string(),
        source,
    })?;
    parse_stack(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

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
