//! Compose files as `docker stack deploy` reads them, parsed into a
//! serializable model ([`ComposeStack`]) that keeps everything Swarm acts on,
//! whether or not Flotilla's drivers can act on it yet.
//!
//! The pipeline, all-or-nothing: each file is parsed to a located YAML tree
//! ([`yaml`]; anchors, aliases and `<<` merges expanded), later files are
//! merged over earlier ones ([`yaml::merge`]), string scalars are interpolated
//! ([`interpolate()`]; `x-` subtrees other than `x-flotilla` are skipped, as
//! they are only anchor holders), then the tree is checked and converted
//! ([`model`]).
//!
//! Error locations: every error found after YAML parsing names the file, the
//! line of the offending value (or key, for key-level problems) and its key
//! path. YAML syntax errors carry serde-saphyr's line. After a merge of
//! several files a value keeps the file and line it came from.
//!
//! This crate depends on `flotilla-types` only: it owns no I/O beyond
//! reading the stack files and `.env` files it is pointed at, and knows
//! nothing of the daemon or the API. The CLI deploys what it returns. The
//! files and variables a secret or config takes its data from are named
//! here, not read: the CLI reads them through [`read_secret_data`].
//!
//! # Layout
//! - [`yaml`]: located YAML trees, merging of several files.
//! - [`interpolate()`]: `${VAR:-default}` and friends.
//! - [`model`]: the checked Compose model ([`ComposeStack`]), its networks
//!   ([`NetworkDef`], [`ServiceNetwork`]), secrets and configs
//!   ([`SecretDef`], [`SecretSource`]) included.
//! - [`stack`]: the model mapped onto [`flotilla_types::ServiceSpec`]s
//!   ([`Stack`]), each checked with `ServiceSpec::validate`, the
//!   stack's networks onto [`flotilla_types::NetworkSpec`]s
//!   ([`StackNetwork`]) and its secrets and configs onto
//!   [`flotilla_types::SecretSpec`]s ([`StackSecret`]), as `docker stack
//!   deploy` names them; [`read_secret_data`] reads their data, all of it
//!   before a deploy creates the first.

pub mod interpolate;
pub mod model;
pub mod stack;
pub mod yaml;

use std::collections::BTreeMap;
use std::path::Path;

use thiserror::Error;

pub use interpolate::{interpolate, InterpolationError};
pub use model::{
    ComposeDeploy, ComposeService, ComposeStack, Healthcheck, NetworkDef, Resources, SecretDef,
    SecretSource, ServiceNetwork, UpdateConfig, VolumeDef, DEFAULT_NETWORK,
};

pub use stack::{
    config_yaml, load_stack, load_stack_files, parse_stack, parse_stack_files, read_secret_data,
    Stack, StackError, StackNetwork, StackSecret, NAMESPACE_LABEL,
};

use yaml::{Node, Value};

/// Why Compose input was refused.
#[derive(Debug, Error)]
pub enum ComposeError {
    #[error("{file}:{line}: not valid YAML: {reason}")]
    Yaml {
        file: String,
        line: u64,
        reason: String,
    },
    #[error("{file}:{line}: {path}: {reason}")]
    Invalid {
        file: String,
        line: u64,
        path: String,
        reason: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not KEY=VALUE: {text:?}")]
    EnvLine {
        path: String,
        line: usize,
        text: String,
    },
    #[error("{file}: no services")]
    Empty { file: String },
    #[error("cannot write the stack as YAML: {0}")]
    Emit(String),
}

impl ComposeError {
    pub(crate) fn at(node: &Node, path: &str, reason: impl Into<String>) -> Self {
        ComposeError::Invalid {
            file: node.file.to_string(),
            line: node.line,
            path: one_line(path),
            reason: one_line(&reason.into()),
        }
    }
}

/// `text` with control characters (newlines above all) escaped, so that an
/// error stays on one line whatever keys and values a file holds.
pub(crate) fn one_line(text: &str) -> String {
    if !text.contains(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Parses `.env`-style text: `KEY=VALUE` lines, `#` comments, blank lines,
/// an optional `export ` prefix and optional matching quotes around VALUE.
/// `path` is only used in messages.
pub fn parse_dotenv(path: &str, text: &str) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut vars = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let bad = || ComposeError::EnvLine {
            path: path.to_string(),
            line: i + 1,
            text: raw.to_string(),
        };
        let (k, v) = line.split_once('=').ok_or_else(bad)?;
        let k = k.trim();
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(bad());
        }
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|s| s.strip_suffix(*q)))
            .unwrap_or(v);
        vars.insert(k.to_string(), v.to_string());
    }
    Ok(vars)
}

/// Reads a `.env`-style file; a missing file is an error only if `required`.
pub fn read_dotenv(path: &Path, required: bool) -> Result<BTreeMap<String, String>, ComposeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_dotenv(&path.display().to_string(), &text),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(ComposeError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The variables for interpolation: the `.env` file in `dir` (if any) with
/// the process environment over it, as Compose does.
pub fn variables_for(dir: &Path) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut vars = read_dotenv(&dir.join(".env"), false)?;
    for (k, v) in std::env::vars_os() {
        vars.insert(
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        );
    }
    Ok(vars)
}

/// The directory a stack file's relative paths (`.env`, `env_file`) are
/// read from.
pub fn dir_of(path: &str) -> &Path {
    match Path::new(path).parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Parses, merges (later over earlier), interpolates and checks Compose
/// files given as `(path, text)`; `vars` are the interpolation variables.
/// Never refuses a service for using `image:`. `env_file` entries are read
/// from disk relative to the file that names them.
pub fn parse_compose(
    files: &[(&str, &str)],
    vars: &BTreeMap<String, String>,
) -> Result<ComposeStack, ComposeError> {
    merged(files, vars).map(|(_, stack)| stack)
}

/// The merged, interpolated Compose YAML of `files`, as `stack config`
/// prints it, once it passed every check `parse_compose` makes. Reading it
/// back gives the same stack (`$` is written `$$`).
pub fn merged_yaml(
    files: &[(&str, &str)],
    vars: &BTreeMap<String, String>,
) -> Result<String, ComposeError> {
    let (root, _) = merged(files, vars)?;
    serde_saphyr::to_string(&yaml::Emit::new(&root)).map_err(|e| ComposeError::Emit(e.to_string()))
}

/// Where the key at `path` (`["services", "web", "healthcheck"]`) is
/// written in `files` once merged: the file and line of the deepest key of
/// `path` that exists, for errors found after the Compose checks (a spec
/// that cannot be made of a valid service). None if the files do not parse
/// or have no key of `path` at all.
pub fn locate(files: &[(&str, &str)], path: &[&str]) -> Option<(String, u64)> {
    let mut root: Option<Node> = None;
    for (file, text) in files {
        let node = yaml::parse(file, text).ok()?;
        match &mut root {
            None => root = Some(node),
            Some(base) => yaml::merge(base, node),
        }
    }
    let mut node = root.as_ref()?;
    let mut found = None;
    for part in path {
        let Value::Map(entries) = &node.value else {
            break;
        };
        let Some((key, value)) = entries.iter().find(|(k, _)| k.name == *part) else {
            break;
        };
        // A scalar's own line; for a mapping or list, the line of its key
        // (its node's line is that of its first entry).
        let line = match value.value {
            Value::Map(_) | Value::Seq(_) if key.line > 0 => key.line,
            _ => value.line,
        };
        found = Some((value.file.to_string(), line));
        node = value;
    }
    found
}

fn merged(
    files: &[(&str, &str)],
    vars: &BTreeMap<String, String>,
) -> Result<(Node, ComposeStack), ComposeError> {
    let mut merged: Option<Node> = None;
    for (path, text) in files {
        let node = yaml::parse(path, text)?;
        match &mut merged {
            None => merged = Some(node),
            Some(base) => yaml::merge(base, node),
        }
    }
    let first = files.first().map(|(p, _)| *p).unwrap_or("");
    let mut root = merged.ok_or_else(|| ComposeError::Empty {
        file: first.to_string(),
    })?;
    let lookup = |name: &str| vars.get(name).cloned();
    interpolate_tree(&mut root, &mut String::new(), &lookup)?;
    let stack = model::convert(&root, first, &lookup)?;
    Ok((root, stack))
}

fn interpolate_tree(
    node: &mut Node,
    path: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ComposeError> {
    interpolate_at(node, path, &mut Vec::new(), lookup)
}

/// `keys` are the mapping keys leading to `node` (list items add none), for
/// telling extension fields from data (see [`yaml::is_extension`]).
fn interpolate_at(
    node: &mut Node,
    path: &mut String,
    keys: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ComposeError> {
    let at = |node: &Node, path: &str, e: InterpolationError| {
        ComposeError::at(node, path, e.to_string())
    };
    match &mut node.value {
        Value::Str(s) => match interpolate(s, lookup) {
            Ok(v) => *s = v,
            Err(e) => return Err(at(node, path, e)),
        },
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate_at(item, path, keys, lookup)?;
                path.truncate(len);
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                // Extension fields are not Compose's business (beyond
                // holding anchors, already expanded); only ours is read.
                if yaml::is_extension(keys, &k.name) {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&k.name);
                keys.push(k.name.clone());
                let r = interpolate_at(v, path, keys, lookup);
                keys.pop();
                r?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}
