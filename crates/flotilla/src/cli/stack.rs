//! `flotilla stack ...`: Compose files deployed as stacks of services
//! named `STACK_SERVICE` and labelled `com.docker.stack.namespace=STACK`,
//! with Swarm's commands (`deploy`, `ls`, `services`, `ps`, `rm`, `config`).
//!
//! A deploy is all or nothing up to the first write: every file is parsed,
//! interpolated, converted and checked (names included), the data of every
//! secret and config is read (each file and variable, checked against
//! the size limit), the external networks, secrets and configs are looked
//! up and the stack's existing networks compared with the files before the
//! daemon is asked to change anything: a stack whose third secret cannot
//! be read has created none. It then creates the stack's secrets and
//! configs (labelled `com.docker.stack.namespace` too; one that exists
//! with the same data is used as it is; one of this stack's with other
//! data gets a new version, which rolls the services that use it, where
//! Swarm refuses it; one of someone else's is refused), then its missing
//! networks (labelled
//! too), and writes only the services that differ: a service whose spec is
//! unchanged is not written at all, so redeploying the same files changes
//! nothing; a changed one is replaced at the version it was read at, which
//! starts a paced rolling update. `rm` removes the stack's services, then
//! its secrets, configs and networks (those labelled with the stack; an
//! external one never is), retrying those still in use while the tasks
//! stop.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use flotilla_api::model::{
    NetworkView, SecretCreate, SecretView, ServiceNetwork, ServiceView, TaskView,
};
use flotilla_api::{Client, ClientError};
use flotilla_types::{
    NetworkSpec, Ratio, SecretData, SecretKind, ServiceSpec, UpdateState, MAX_SECRET_BYTES,
};

use super::output::table;
use super::output::{ps_header, ps_rows_with, services_table};
use super::{Format, FormatArg};
use flotilla_compose::{
    load_stack_files, read_secret_data, SecretSource, StackError, StackNetwork, StackSecret,
    NAMESPACE_LABEL,
};

/// How long `stack rm` retries removing a network, secret or config its
/// stopping tasks still use, and how often.
const NETWORK_RM_TIMEOUT: Duration = Duration::from_secs(30);
const NETWORK_RM_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Deploy a new stack or update an existing one from Compose files
    #[command(alias = "up")]
    Deploy {
        /// Stack file (Compose format); later files are merged over earlier ones
        #[arg(
            short = 'c',
            long = "compose-file",
            required = true,
            value_name = "FILE"
        )]
        files: Vec<PathBuf>,
        /// Remove the stack's services that the files no longer name
        #[arg(long)]
        prune: bool,
        /// Return once the services are written, without waiting for their tasks
        #[arg(short, long)]
        detach: bool,
        /// Stack name
        #[arg(allow_hyphen_values = true)]
        stack: String,
    },
    /// List stacks
    #[command(alias = "list")]
    Ls(FormatArg),
    /// List the services of a stack
    Services {
        stack: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// List the tasks of a stack
    Ps {
        stack: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Remove stacks: all of their services, then their secrets, configs and networks
    #[command(alias = "remove", alias = "down")]
    Rm {
        #[arg(required = true)]
        stacks: Vec<String>,
    },
    /// Print the merged, interpolated Compose file, without contacting a daemon
    Config {
        /// Stack file (Compose format); later files are merged over earlier ones
        #[arg(
            short = 'c',
            long = "compose-file",
            required = true,
            value_name = "FILE"
        )]
        files: Vec<PathBuf>,
    },
}

/// What a deploy does to one service.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(ServiceSpec),
    /// Replace the spec of a service read at `version`.
    Update {
        spec: ServiceSpec,
        version: u64,
    },
    Unchanged(String),
    Remove(String),
}

impl Action {
    fn name(&self) -> &str {
        match self {
            Action::Create(spec) | Action::Update { spec, .. } => &spec.name,
            Action::Unchanged(n) | Action::Remove(n) => n,
        }
    }
}

/// What a deploy does to one network of the stack.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkAction {
    /// Create it: it is the stack's and does not exist.
    Create(NetworkSpec),
    /// Use it as it is: it is external, or exists as the files ask.
    Use(String),
}

/// A secret or config a deploy creates, or uses when one of its name
/// exists with the same data (`reuse_identical`).
#[derive(Debug, Clone)]
pub struct SecretWrite {
    pub kind: SecretKind,
    pub create: SecretCreate,
    /// One of its name exists already: the create answers it when its
    /// data is the same, and is refused when not.
    pub exists: bool,
}

/// Decides what a deploy does to the stack's secrets and configs
/// (`secrets`, already named for the stack, see `Stack::secrets_for`),
/// given their data (read by `read_secret_data`, all of it before this),
/// the service specs and the secrets and configs that exist. Refuses,
/// before anything is written, an external one a service uses that does
/// not exist.
pub fn plan_secrets(
    secrets: &[StackSecret],
    data: Vec<(&StackSecret, SecretData)>,
    specs: &[ServiceSpec],
    existing: &[SecretView],
) -> Result<Vec<SecretWrite>> {
    let exists =
        |kind: SecretKind, name: &str| existing.iter().any(|v| v.kind == kind && v.name == name);
    for s in secrets.iter().filter(|s| s.external) {
        let used = specs.iter().any(|spec| {
            let refs = match s.kind {
                SecretKind::Secret => &spec.task.secrets,
                SecretKind::Config => &spec.task.configs,
            };
            refs.iter().any(|r| r.source == s.name)
        });
        if used && !exists(s.kind, &s.name) {
            bail!(
                "{} {:?} is declared as external, but could not be found",
                s.kind,
                s.name
            );
        }
    }
    Ok(data
        .into_iter()
        .map(|(s, data)| SecretWrite {
            kind: s.kind,
            exists: exists(s.kind, &s.name),
            create: SecretCreate {
                spec: s.spec.clone(),
                data,
                reuse_identical: true,
            },
        })
        .collect())
}

/// Reads the data of a secret or config for a deploy: a file (at most one
/// byte over the limit, which `read_secret_data` then refuses), a variable
/// of `vars` (the deploying shell's environment over the `.env` file, as
/// interpolation reads them), or the content the file holds.
fn read_source(source: &SecretSource, vars: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    use std::io::Read;
    match source {
        SecretSource::File(path) => {
            let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            let mut data = Vec::new();
            file.take(MAX_SECRET_BYTES as u64 + 1)
                .read_to_end(&mut data)
                .map_err(|e| format!("cannot read {path}: {e}"))?;
            Ok(data)
        }
        SecretSource::Environment(var) => vars
            .get(var)
            .map(|v| v.clone().into_bytes())
            .ok_or_else(|| format!("environment variable {var} is not set")),
        SecretSource::Content(text) => Ok(text.clone().into_bytes()),
    }
}

/// "Secret" or "Config", to start a line.
fn capitalized(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::Secret => "Secret",
        SecretKind::Config => "Config",
    }
}

/// The stack a service belongs to, if any.
fn stack_of(view: &ServiceView) -> Option<&str> {
    view.spec.labels.get(NAMESPACE_LABEL).map(String::as_str)
}

/// Decides what a deploy does to the stack's `networks` (already named
/// for the stack, see `Stack::networks_for`), given the networks that
/// exist (those of these names suffice). Refuses, before anything is
/// written, an external network that does not exist, and a network that
/// exists with another subnet, `internal` or `encrypted` than the files
/// ask (a network cannot be changed in place).
pub fn plan_networks(
    networks: &[StackNetwork],
    existing: &[NetworkView],
) -> Result<Vec<NetworkAction>> {
    let mut actions = Vec::new();
    for n in networks {
        let found = existing.iter().find(|v| v.name == n.name);
        match found {
            None if n.external => bail!(
                "network {:?} is declared as external, but could not be found",
                n.name
            ),
            None => actions.push(NetworkAction::Create(n.spec.clone())),
            Some(_) if n.external => actions.push(NetworkAction::Use(n.name.clone())),
            Some(view) => {
                if let Some((have, want)) = differences(&n.spec, view) {
                    bail!(
                        "network {} exists with {have}, the file asks for {want}: remove it first",
                        n.name
                    );
                }
                actions.push(NetworkAction::Use(n.name.clone()));
            }
        }
    }
    Ok(actions)
}

/// What an existing network has and the files ask for otherwise, each as
/// `key=value` lists; none when it is the network asked for. A file that
/// names no subnet takes any.
fn differences(want: &NetworkSpec, have: &NetworkView) -> Option<(String, String)> {
    let mut has = Vec::new();
    let mut asks = Vec::new();
    if let Some(subnet) = want.subnet {
        let text = subnet.to_string();
        if have.spec.subnet != Some(subnet) && have.subnet.as_deref() != Some(text.as_str()) {
            let current = have
                .subnet
                .clone()
                .or_else(|| have.spec.subnet.map(|s| s.to_string()))
                .unwrap_or_else(|| "none".to_string());
            has.push(format!("subnet={current}"));
            asks.push(format!("subnet={text}"));
        }
    }
    for (key, w, h) in [
        ("internal", want.internal, have.spec.internal),
        ("encrypted", want.encrypted, have.spec.encrypted),
    ] {
        if w != h {
            has.push(format!("{key}={h}"));
            asks.push(format!("{key}={w}"));
        }
    }
    if has.is_empty() {
        None
    } else {
        Some((has.join(", "), asks.join(", ")))
    }
}

/// `spec` as the files would say it: the daemon keeps networks by ID, and
/// the service's view names each (`networks`), so that a spec read back
/// compares with one that names networks.
fn with_network_names(spec: &ServiceSpec, networks: &[ServiceNetwork]) -> ServiceSpec {
    let mut spec = spec.clone();
    for a in &mut spec.task.networks {
        if let Some(n) = networks.iter().find(|n| n.network_id == a.network) {
            a.network = n.network.clone();
        }
    }
    spec
}

/// Whether two specs ask for the same thing. Ratios travel as JSON floats,
/// which need not come back bit for bit; networks are the same in any
/// order; secrets and configs are named by name, and the ID and version
/// the manager pinned them to are not the files' business (the data of a
/// name does not change under a stack).
fn same_spec(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    let close = |x: Ratio, y: Ratio| (x.0 - y.0).abs() < 1e-9;
    let strip = |s: &ServiceSpec| {
        let mut s = s.clone();
        s.update.max_failure_ratio = Ratio(0.0);
        s.rollback.max_failure_ratio = Ratio(0.0);
        s.task.networks.sort_by(|x, y| x.network.cmp(&y.network));
        for r in s.task.secrets.iter_mut().chain(s.task.configs.iter_mut()) {
            r.id.clear();
            r.version = 0;
        }
        s
    };
    strip(a) == strip(b)
        && close(a.update.max_failure_ratio, b.update.max_failure_ratio)
        && close(a.rollback.max_failure_ratio, b.rollback.max_failure_ratio)
}

/// Decides what a deploy of `specs` (already named and labelled, networks
/// by name) as `stack` does, given the services that exist: removals first
/// (with `prune`), then each service in the files' order. Refuses, before
/// anything is written, a name taken by a service outside the stack.
pub fn plan(
    stack: &str,
    specs: Vec<ServiceSpec>,
    existing: &[ServiceView],
    prune: bool,
) -> Result<Vec<Action>> {
    let mut actions = Vec::new();
    if prune {
        for view in existing {
            if stack_of(view) == Some(stack) && !specs.iter().any(|s| s.name == view.name) {
                actions.push(Action::Remove(view.name.clone()));
            }
        }
    }
    for mut spec in specs {
        match existing.iter().find(|v| v.name == spec.name) {
            None => actions.push(Action::Create(spec)),
            Some(view) if stack_of(view) != Some(stack) => bail!(
                "service {} exists and is not part of stack {stack}: remove or rename it first",
                view.name
            ),
            Some(view) => {
                // A stack file has no --force: keep what `service update
                // --force` set, or every redeploy would replace all tasks.
                spec.task.force_update = view.spec.task.force_update;
                if same_spec(&spec, &with_network_names(&view.spec, &view.networks)) {
                    actions.push(Action::Unchanged(spec.name));
                } else {
                    actions.push(Action::Update {
                        spec,
                        version: view.version,
                    });
                }
            }
        }
    }
    Ok(actions)
}

/// Deploys the stack files `paths` (later over earlier) as `stack`: checks
/// everything first (the data of every secret and config read), then
/// creates the secrets and configs, the missing networks and services,
/// replaces what changed, leaves what is the same and, with `prune`,
/// removes the stack's services the files no longer name. Prints one line
/// per secret, config and network created and per service, and the
/// warnings (once, to stderr). Returns the names of the stack's services.
pub async fn deploy_stack(
    client: &Client,
    paths: &[&str],
    stack: &str,
    prune: bool,
) -> Result<Vec<String>> {
    Ok(deploy(client, paths, stack, prune)
        .await?
        .into_iter()
        .filter(|a| !matches!(a, Action::Remove(_)))
        .map(|a| a.name().to_string())
        .collect())
}

async fn deploy(client: &Client, paths: &[&str], stack: &str, prune: bool) -> Result<Vec<Action>> {
    let parsed = load_stack_files(paths)?;
    let specs = parsed.specs_for(stack)?;
    let networks = parsed.networks_for(stack)?;
    let secrets = parsed.secrets_for(stack)?;
    // Every file and variable a secret or config comes from, read before
    // the daemon is asked anything: one that cannot be read stops the
    // deploy before the first is created.
    let first = paths.first().copied().unwrap_or(".");
    let vars = flotilla_compose::variables_for(flotilla_compose::dir_of(first))?;
    let data = read_secret_data(&secrets, |source| read_source(source, &vars))?;
    for spec in &specs {
        // The daemon's own checks (the conversion made them before the
        // names were prefixed), so that a spec it would refuse stops the
        // deploy before the first write rather than half way through.
        spec.validate().map_err(|e| StackError::Service {
            path: parsed.path.clone(),
            service: spec.name.clone(),
            reason: e.to_string(),
        })?;
    }
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    let mut found = Vec::new();
    for n in &networks {
        match client.network(&n.name).await {
            Ok(view) => found.push(view),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => bail!("looking up network {}: {e}", n.name),
        }
    }
    let network_actions = plan_networks(&networks, &found)?;
    let mut existing_secrets = Vec::new();
    if !secrets.is_empty() {
        for kind in [SecretKind::Secret, SecretKind::Config] {
            existing_secrets.extend(client.secrets(kind).await?);
        }
    }
    let secret_writes = plan_secrets(&secrets, data, &specs, &existing_secrets)?;
    let existing = client.services().await?;
    let actions = plan(stack, specs, &existing, prune)?;
    let mut written: Vec<String> = Vec::new();
    let done = |written: &[String]| {
        if written.is_empty() {
            "nothing was changed".to_string()
        } else {
            format!("already written: {}", written.join(", "))
        }
    };
    for w in &secret_writes {
        let (noun, name) = (w.kind.noun(), &w.create.spec.name);
        if !w.exists {
            println!("Creating {noun} {name}");
        }
        // One of this stack's own whose data changed gets a new version,
        // which rolls the services that use it; one of someone else's is
        // left alone.
        let ours = existing_secrets.iter().any(|v| {
            v.kind == w.kind
                && v.name == *name
                && v.labels.get(NAMESPACE_LABEL).map(String::as_str) == Some(stack)
        });
        match client.create_secret(w.kind, &w.create).await {
            Ok(_) if w.exists => println!("{} {name} is up to date", capitalized(w.kind)),
            Ok(_) => written.push(format!("{noun} {name}")),
            Err(e) if e.status() == Some(409) && ours => {
                let update = flotilla_api::model::SecretUpdate {
                    data: w.create.data.clone(),
                };
                match client.update_secret(w.kind, name, &update).await {
                    Ok(u) => {
                        println!("Updating {noun} {name} to version {}", u.secret.version);
                        if !u.rolled.is_empty() {
                            println!("Rolling onto it: {}", u.rolled.join(", "));
                        }
                        written.push(format!("{noun} {name}"));
                    }
                    Err(e) => bail!(
                        "deploying stack {stack} failed at {noun} {name}: {e} ({})",
                        done(&written)
                    ),
                }
            }
            Err(e) if e.status() == Some(409) => bail!(
                "deploying stack {stack} failed at {noun} {name}: {e} ({}); it is not this stack's: give this stack's another name (`name:`)",
                done(&written)
            ),
            Err(e) => bail!(
                "deploying stack {stack} failed at {noun} {name}: {e} ({})",
                done(&written)
            ),
        }
    }
    for action in &network_actions {
        let NetworkAction::Create(spec) = action else {
            continue;
        };
        println!("Creating network {}", spec.name);
        if let Err(e) = client.create_network(spec).await {
            bail!(
                "deploying stack {stack} failed at network {}: {e} ({})",
                spec.name,
                done(&written)
            );
        }
        written.push(format!("network {}", spec.name));
    }
    for action in &actions {
        let result = match action {
            Action::Remove(name) => {
                println!("Removing service {name}");
                client.remove_service(name).await.map(|_| ())
            }
            Action::Create(spec) => {
                println!("Creating service {}", spec.name);
                client.create_service(spec).await.map(|_| ())
            }
            Action::Update { spec, version } => {
                println!("Updating service {}", spec.name);
                client
                    .replace_service(&spec.name, spec, Some(*version))
                    .await
                    .map(|_| ())
            }
            Action::Unchanged(name) => {
                println!("Service {name} is up to date");
                continue;
            }
        };
        match result {
            Ok(()) => written.push(action.name().to_string()),
            Err(e) => {
                bail!(
                    "deploying stack {stack} failed at service {}: {e} ({})",
                    action.name(),
                    done(&written)
                );
            }
        }
    }
    Ok(actions)
}

/// Waits until each named service runs as many ready (running and, where
/// checked, healthy) tasks as it wants and its rolling update, if any, has
/// completed. A paused update, or one rolled back once the rollback is
/// done, ends the wait with its reason.
async fn wait_running(client: &Client, names: &[String], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for name in names {
        loop {
            let s = client.service(name).await?;
            let update = s.update_status.as_ref();
            let why = update.map(|u| u.message.as_str()).unwrap_or_default();
            match update.map(|u| u.state) {
                Some(UpdateState::Paused | UpdateState::RollbackPaused) => {
                    bail!("service {name}: update paused: {why}")
                }
                // A rollback the orchestrator started is followed to its
                // end, so that the command returns on the old tasks.
                Some(UpdateState::RollbackCompleted) => {
                    bail!("service {name}: update rolled back: {why}")
                }
                _ => {}
            }
            let updating = update.is_some_and(|u| u.state.in_progress());
            if !updating
                && s.replicas.ready == s.replicas.desired
                && s.replicas.running == s.replicas.desired
            {
                break;
            }
            if Instant::now() >= deadline {
                let state = update.map(|u| u.state.as_str()).unwrap_or("none");
                bail!(
                    "timed out after {}s waiting for service {name} to run {} ready tasks ({} running, {} ready, update {state}; see 'flotilla stack ps')",
                    timeout.as_secs(),
                    s.replicas.desired,
                    s.replicas.running,
                    s.replicas.ready,
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Calls `remove` until it succeeds, again every `every` while the daemon
/// answers that the network (or secret, or config) is in use (409: the
/// removed services' tasks are still stopping) and `deadline` has not
/// passed. One that is gone already (404) is removed. The last refusal
/// otherwise.
async fn remove_while_in_use<F, Fut>(
    mut remove: F,
    deadline: Instant,
    every: Duration,
) -> Result<(), ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ClientError>>,
{
    loop {
        match remove().await {
            Ok(()) => return Ok(()),
            Err(e) if e.status() == Some(404) => return Ok(()),
            Err(e) if e.status() == Some(409) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(every.min(deadline - now)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The networks of `stack` (labelled with [`NAMESPACE_LABEL`]), by name.
fn stack_networks<'a>(networks: &'a [NetworkView], stack: &str) -> Vec<&'a str> {
    let mut names: Vec<&str> = networks
        .iter()
        .filter(|n| n.spec.labels.get(NAMESPACE_LABEL).map(String::as_str) == Some(stack))
        .map(|n| n.name.as_str())
        .collect();
    names.sort();
    names
}

/// The secrets and configs of `stack` (labelled with [`NAMESPACE_LABEL`]),
/// secrets first, each by name.
fn stack_secrets<'a>(views: &'a [SecretView], stack: &str) -> Vec<(SecretKind, &'a str)> {
    let mut out: Vec<(SecretKind, &str)> = views
        .iter()
        .filter(|v| v.labels.get(NAMESPACE_LABEL).map(String::as_str) == Some(stack))
        .map(|v| (v.kind, v.name.as_str()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The services of `stack`, sorted by name; an error when there are none.
async fn stack_services(client: &Client, stack: &str) -> Result<Vec<ServiceView>> {
    let mut services: Vec<ServiceView> = client
        .services()
        .await?
        .into_iter()
        .filter(|s| stack_of(s) == Some(stack))
        .collect();
    if services.is_empty() {
        bail!("nothing found in stack: {stack}");
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(services)
}

/// A stack as `stack ls --format json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StackView {
    pub name: String,
    pub services: usize,
}

/// Stacks and their service counts, by name.
pub fn stacks(services: &[ServiceView]) -> Vec<StackView> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in services {
        if let Some(stack) = stack_of(s) {
            *counts.entry(stack).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(name, services)| StackView {
            name: name.to_string(),
            services,
        })
        .collect()
}

fn paths_of(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|f| f.display().to_string()).collect()
}

/// `flotilla stack ...`.
pub async fn stack(client: &Client, command: &StackCommand) -> Result<()> {
    match command {
        StackCommand::Deploy {
            files,
            prune,
            detach,
            stack,
        } => {
            let paths = paths_of(files);
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            let actions = deploy(client, &paths, stack, *prune).await?;
            if !detach {
                let written: Vec<String> = actions
                    .iter()
                    .filter(|a| matches!(a, Action::Create(_) | Action::Update { .. }))
                    .map(|a| a.name().to_string())
                    .collect();
                wait_running(client, &written, Duration::from_secs(300)).await?;
            }
            Ok(())
        }
        StackCommand::Ls(f) => {
            let list = stacks(&client.services().await?);
            if f.format == Format::Json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| vec![s.name.clone(), s.services.to_string()])
                .collect();
            print!("{}", table(&["NAME", "SERVICES"], &rows));
            Ok(())
        }
        StackCommand::Services { stack, format } => {
            let services = stack_services(client, stack).await?;
            if format.format == Format::Json {
                return print_json(&services);
            }
            print!("{}", services_table(&services));
            Ok(())
        }
        StackCommand::Ps { stack, format } => {
            let services = stack_services(client, stack).await?;
            let mut per_service = Vec::new();
            for s in &services {
                per_service.push(client.tasks(&s.name).await?);
            }
            if format.format == Format::Json {
                let tasks: Vec<&TaskView> = per_service.iter().flatten().collect();
                return print_json(&tasks);
            }
            let with_image = per_service.iter().flatten().any(|t| t.image.is_some());
            // ps rows group history under its slot, so one service at a
            // time: slot 1 of two services is not one slot.
            let rows: Vec<Vec<String>> = per_service
                .iter()
                .flat_map(|t| ps_rows_with(t, with_image))
                .collect();
            print!("{}", table(&ps_header(with_image), &rows));
            Ok(())
        }
        StackCommand::Rm { stacks } => {
            let all = client.services().await?;
            let all_networks = client.networks().await?;
            let mut all_secrets = client.secrets(SecretKind::Secret).await?;
            all_secrets.extend(client.secrets(SecretKind::Config).await?);
            let mut failed = None;
            for stack in stacks {
                let mut names: Vec<&str> = all
                    .iter()
                    .filter(|s| stack_of(s) == Some(stack.as_str()))
                    .map(|s| s.name.as_str())
                    .collect();
                let networks = stack_networks(&all_networks, stack);
                let secrets = stack_secrets(&all_secrets, stack);
                if names.is_empty() && networks.is_empty() && secrets.is_empty() {
                    failed.get_or_insert_with(|| anyhow!("nothing found in stack: {stack}"));
                    continue;
                }
                names.sort();
                for name in names {
                    println!("Removing service {name}");
                    if let Err(e) = client.remove_service(name).await {
                        failed.get_or_insert_with(|| anyhow!("removing service {name}: {e}"));
                    }
                }
                // Refused while the removed services' tasks stop: one
                // deadline for the stack's secrets, configs and networks.
                let deadline = Instant::now() + NETWORK_RM_TIMEOUT;
                for (kind, name) in secrets {
                    let noun = kind.noun();
                    println!("Removing {noun} {name}");
                    let removed = remove_while_in_use(
                        || async { client.remove_secret(kind, name).await.map(|_| ()) },
                        deadline,
                        NETWORK_RM_RETRY,
                    )
                    .await;
                    match removed {
                        Ok(()) => {}
                        Err(e) if e.status() == Some(409) => {
                            failed.get_or_insert_with(|| {
                                anyhow!(
                                    "removing {noun} {name}: still in use after {}s: {e}",
                                    NETWORK_RM_TIMEOUT.as_secs()
                                )
                            });
                        }
                        Err(e) => {
                            failed.get_or_insert_with(|| anyhow!("removing {noun} {name}: {e}"));
                        }
                    }
                }
                for name in networks {
                    println!("Removing network {name}");
                    let removed = remove_while_in_use(
                        || async { client.remove_network(name).await.map(|_| ()) },
                        deadline,
                        NETWORK_RM_RETRY,
                    )
                    .await;
                    match removed {
                        Ok(()) => {}
                        Err(e) if e.status() == Some(409) => {
                            failed.get_or_insert_with(|| {
                                anyhow!(
                                    "removing network {name}: still in use after {}s: {e}",
                                    NETWORK_RM_TIMEOUT.as_secs()
                                )
                            });
                        }
                        Err(e) => {
                            failed.get_or_insert_with(|| anyhow!("removing network {name}: {e}"));
                        }
                    }
                }
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        StackCommand::Config { files } => {
            let paths = paths_of(files);
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            let (yaml, warnings) = flotilla_compose::config_yaml(&paths)?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            print!("{yaml}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::model::Replicas;
    use flotilla_types::TaskTemplate;

    fn spec(name: &str, stack: Option<&str>, env: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            labels: stack
                .map(|s| [(NAMESPACE_LABEL.to_string(), s.to_string())].into())
                .unwrap_or_default(),
            task: TaskTemplate {
                command: vec!["sleep".into(), "1000".into()],
                env: [("E".to_string(), env.to_string())].into(),
                ..TaskTemplate::default()
            },
            ..ServiceSpec::default()
        }
    }

    fn view(spec: ServiceSpec, version: u64) -> ServiceView {
        ServiceView {
            id: format!("id-{}", spec.name),
            name: spec.name.clone(),
            mode: flotilla_api::model::ServiceModeKind::Replicated,
            replicas: Replicas {
                running: 1,
                desired: 1,
                healthy: None,
                ready: 1,
                completed: None,
            },
            command: spec.task.command.join(" "),
            spec,
            version,
            created_at: 0,
            updated_at: 0,
            update_status: None,
            can_roll_back: false,
            published: Vec::new(),
            networks: Vec::new(),
        }
    }

    /// A service as the daemon returns it: networks by ID in the spec,
    /// named in the view (`id-NAME`), in another order than written.
    fn stored(spec: ServiceSpec, version: u64) -> ServiceView {
        let mut stored = spec.clone();
        let mut networks = Vec::new();
        for a in &mut stored.task.networks {
            networks.push(ServiceNetwork {
                network_id: format!("id-{}", a.network),
                network: a.network.clone(),
                aliases: a.aliases.clone(),
                virtual_ip: None,
            });
            a.network = format!("id-{}", a.network);
        }
        stored.task.networks.reverse();
        ServiceView {
            networks,
            ..view(stored, version)
        }
    }

    fn network_view(spec: NetworkSpec, subnet: Option<&str>) -> NetworkView {
        NetworkView {
            id: format!("id-{}", spec.name),
            name: spec.name.clone(),
            spec,
            created_at: 0,
            subnet: subnet.map(str::to_string),
            gateway: None,
            vni: None,
            services: Vec::new(),
            tasks: Vec::new(),
        }
    }

    const NETWORKED: &str = "services:\n  web:\n    image: nginx\n    networks:\n      front:\n        aliases: [www]\n      back:\n  db:\n    image: pg\n    networks: [back]\n    deploy: {endpoint_mode: dnsrr}\n  cron:\n    image: cron\nnetworks:\n  front:\n    driver_opts: {encrypted: \"\"}\n  back:\n    internal: true\n    ipam:\n      config: [{subnet: 10.0.9.0/24}]\n  shared:\n    external: true\n";

    #[test]
    fn the_same_files_twice_change_nothing() {
        let text = NETWORKED.replace("networks: [back]", "networks: [back, shared]");
        let parsed = flotilla_compose::parse_stack("nodir/s.yml", &text).expect("parse");
        let specs = parsed.specs_for("s").expect("specs");
        let networks = parsed.networks_for("s").expect("networks");
        let names: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["s_back", "s_default", "s_front", "shared"]);
        // The first deploy creates the stack's networks; external ones
        // are looked up only.
        let existing_networks = vec![network_view(NetworkSpec::named("shared"), None)];
        let first = plan_networks(&networks, &existing_networks).expect("plan");
        let created: Vec<&str> = first
            .iter()
            .filter_map(|a| match a {
                NetworkAction::Create(spec) => Some(spec.name.as_str()),
                NetworkAction::Use(_) => None,
            })
            .collect();
        assert_eq!(created, ["s_back", "s_default", "s_front"]);
        for a in &first {
            if let NetworkAction::Create(spec) = a {
                assert_eq!(spec.labels[NAMESPACE_LABEL], "s", "{spec:?}");
            }
        }
        // Deployed: the daemon has them, and the services by network ID.
        let mut all_networks = existing_networks;
        for n in networks.iter().filter(|n| !n.external) {
            all_networks.push(network_view(n.spec.clone(), Some("10.0.9.0/24")));
        }
        let existing: Vec<ServiceView> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| stored(spec.clone(), i as u64 + 1))
            .collect();
        assert!(existing[2].spec.task.networks[0].network.starts_with("id-"));
        let again = parsed.specs_for("s").expect("specs");
        let actions = plan("s", again, &existing, false).expect("plan");
        assert!(
            actions.iter().all(|a| matches!(a, Action::Unchanged(_))),
            "{actions:?}"
        );
        let second = plan_networks(&networks, &all_networks).expect("plan");
        assert!(
            second.iter().all(|a| matches!(a, NetworkAction::Use(_))),
            "{second:?}"
        );
        // Another alias, or another network, is a change.
        let changed = flotilla_compose::parse_stack(
            "nodir/s.yml",
            &text.replace("aliases: [www]", "aliases: [www, web2]"),
        )
        .expect("parse");
        let actions = plan(
            "s",
            changed.specs_for("s").expect("specs"),
            &existing,
            false,
        )
        .expect("plan");
        let updated: Vec<&str> = actions
            .iter()
            .filter(|a| matches!(a, Action::Update { .. }))
            .map(Action::name)
            .collect();
        assert_eq!(updated, ["s_web"]);
    }

    #[test]
    fn networks_are_checked_before_anything_is_written() {
        let parsed = flotilla_compose::parse_stack("nodir/s.yml", NETWORKED).expect("parse");
        let networks = parsed.networks_for("s").expect("networks");
        let plan_with = |existing: &[NetworkView]| {
            plan_networks(&networks, existing)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        // An external network must exist (here: unused, so not asked).
        let with_shared = flotilla_compose::parse_stack(
            "nodir/s.yml",
            &NETWORKED.replace("networks: [back]", "networks: [back, shared]"),
        )
        .expect("parse");
        let e = plan_networks(&with_shared.networks_for("s").expect("networks"), &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "network \"shared\" is declared as external, but could not be found"
        );
        let spec_of = |name: &str| {
            networks
                .iter()
                .find(|n| n.name == name)
                .map(|n| n.spec.clone())
                .expect("network")
        };
        // An existing network of the stack is used when it is the one the
        // files ask for, and refused otherwise.
        let mut back = spec_of("s_back");
        back.internal = false;
        assert_eq!(
            plan_with(&[network_view(back, Some("10.0.9.0/24"))]),
            "network s_back exists with internal=false, the file asks for internal=true: remove it first"
        );
        let mut back = spec_of("s_back");
        back.subnet = None;
        assert_eq!(
            plan_with(&[network_view(back, Some("10.64.3.0/24"))]),
            "network s_back exists with subnet=10.64.3.0/24, the file asks for subnet=10.0.9.0/24: remove it first"
        );
        let mut front = spec_of("s_front");
        front.encrypted = false;
        front.internal = true;
        assert_eq!(
            plan_with(&[network_view(front, None)]),
            "network s_front exists with internal=true, encrypted=false, the file asks for internal=false, encrypted=true: remove it first"
        );
        // No subnet asked: any will do; labels and the rest do not matter.
        let mut default = spec_of("s_default");
        default.labels.clear();
        let actions =
            plan_networks(&networks, &[network_view(default, Some("10.64.0.0/24"))]).expect("plan");
        assert!(actions.contains(&NetworkAction::Use("s_default".into())));
        assert!(actions.contains(&NetworkAction::Create(spec_of("s_front"))));
    }

    fn refused(status: u16) -> ClientError {
        ClientError::Api {
            status,
            message: format!("refused with {status}"),
        }
    }

    #[tokio::test]
    async fn network_removal_retries_while_in_use() {
        let attempts = std::cell::Cell::new(0);
        let fails_then = |n: u32, last: Option<u16>| {
            let attempts = &attempts;
            move || {
                attempts.set(attempts.get() + 1);
                let r = if attempts.get() <= n {
                    Err(refused(409))
                } else {
                    match last {
                        None => Ok(()),
                        Some(status) => Err(refused(status)),
                    }
                };
                async move { r }
            }
        };
        let every = Duration::from_millis(1);
        let far = Instant::now() + Duration::from_secs(30);
        // In use twice, then removed.
        assert!(remove_while_in_use(fails_then(2, None), far, every)
            .await
            .is_ok());
        assert_eq!(attempts.get(), 3);
        // Gone already: removed.
        attempts.set(0);
        assert!(remove_while_in_use(fails_then(1, Some(404)), far, every)
            .await
            .is_ok());
        // Another error ends at once.
        attempts.set(0);
        let e = remove_while_in_use(fails_then(0, Some(500)), far, every).await;
        assert_eq!(e.err().and_then(|e| e.status()), Some(500));
        assert_eq!(attempts.get(), 1);
        // Still in use at the deadline: the daemon's refusal.
        attempts.set(0);
        let soon = Instant::now() + Duration::from_millis(20);
        let e = remove_while_in_use(fails_then(u32::MAX, None), soon, every).await;
        assert_eq!(e.err().and_then(|e| e.status()), Some(409));
        assert!(attempts.get() > 1);
    }

    #[test]
    fn stack_networks_are_found_by_label() {
        let mut a = NetworkSpec::named("s_front");
        a.labels.insert(NAMESPACE_LABEL.into(), "s".into());
        let mut b = NetworkSpec::named("s_back");
        b.labels.insert(NAMESPACE_LABEL.into(), "s".into());
        let mut other = NetworkSpec::named("t_front");
        other.labels.insert(NAMESPACE_LABEL.into(), "t".into());
        let all = [
            network_view(a, None),
            network_view(NetworkSpec::named("s_lone"), None),
            network_view(other, None),
            network_view(b, None),
        ];
        assert_eq!(stack_networks(&all, "s"), ["s_back", "s_front"]);
    }

    #[test]
    fn plans_only_what_changed() {
        let mut forced = spec("s_b", Some("s"), "1");
        forced.task.force_update = 3;
        let existing = vec![
            view(spec("s_a", Some("s"), "1"), 7),
            view(forced, 8),
            view(spec("s_gone", Some("s"), "1"), 9),
            view(spec("other_x", Some("other"), "1"), 10),
        ];
        let want = vec![
            spec("s_a", Some("s"), "2"),
            spec("s_b", Some("s"), "1"),
            spec("s_new", Some("s"), "1"),
        ];
        let actions = plan("s", want.clone(), &existing, false).expect("plan");
        let mut updated = spec("s_a", Some("s"), "2");
        updated.task.force_update = 0;
        assert_eq!(
            actions,
            [
                Action::Update {
                    spec: updated,
                    version: 7
                },
                Action::Unchanged("s_b".into()),
                Action::Create(spec("s_new", Some("s"), "1")),
            ]
        );
        let pruned = plan("s", want, &existing, true).expect("plan");
        assert_eq!(pruned[0], Action::Remove("s_gone".into()));
        assert_eq!(pruned.len(), 4, "other stacks are never pruned");
    }

    #[test]
    fn refuses_a_name_outside_the_stack() {
        let existing = vec![view(spec("s_a", None, "1"), 1)];
        let e = plan("s", vec![spec("s_a", Some("s"), "1")], &existing, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not part of stack s"), "{e}");
    }

    #[test]
    fn ratios_compare_with_tolerance() {
        let a = spec("a", None, "1");
        let mut b = a.clone();
        b.update.max_failure_ratio = Ratio(0.1 + 1e-15);
        let mut a2 = a.clone();
        a2.update.max_failure_ratio = Ratio(0.1);
        assert!(same_spec(&a2, &b));
        assert!(!same_spec(&a, &b));
    }

    #[test]
    fn counts_services_per_stack() {
        let list = stacks(&[
            view(spec("a_x", Some("a"), "1"), 1),
            view(spec("a_y", Some("a"), "1"), 1),
            view(spec("lone", None, "1"), 1),
            view(spec("b_x", Some("b"), "1"), 1),
        ]);
        assert_eq!(
            list,
            [
                StackView {
                    name: "a".into(),
                    services: 2
                },
                StackView {
                    name: "b".into(),
                    services: 1
                }
            ]
        );
    }

    fn secret_view(kind: SecretKind, name: &str, stack: Option<&str>) -> SecretView {
        SecretView {
            id: format!("id-{name}"),
            kind,
            name: name.into(),
            labels: stack
                .map(|s| [(NAMESPACE_LABEL.to_string(), s.to_string())].into())
                .unwrap_or_default(),
            created_at: 0,
            updated_at: 0,
            version: 1,
            size: 3,
            services: Vec::new(),
        }
    }

    const WITH_SECRETS: &str = "services:\n  web:\n    image: nginx\n    secrets: [db, shared]\n    configs:\n      - source: conf\n        target: /etc/app.conf\nsecrets:\n  db:\n    file: ./db.txt\n  shared:\n    external: true\n  unused_ext:\n    external: true\nconfigs:\n  conf:\n    content: \"port: 80\"\n";

    #[test]
    fn secrets_are_read_and_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.yml").display().to_string();
        std::fs::write(dir.path().join("db.txt"), "hunter2").expect("write");
        let parsed = flotilla_compose::parse_stack(&path, WITH_SECRETS).expect("parse");
        let secrets = parsed.secrets_for("s").expect("secrets");
        let specs = parsed.specs_for("s").expect("specs");
        let vars = BTreeMap::new();
        let data = read_secret_data(&secrets, |src| read_source(src, &vars)).expect("read");
        // The external one a service uses must exist; an unused one need not.
        let e = plan_secrets(&secrets, data.clone(), &specs, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "secret \"shared\" is declared as external, but could not be found"
        );
        let existing = [
            secret_view(SecretKind::Secret, "shared", None),
            secret_view(SecretKind::Secret, "s_db", Some("s")),
        ];
        let writes = plan_secrets(&secrets, data, &specs, &existing).expect("plan");
        let summary: Vec<(SecretKind, &str, &[u8], bool)> = writes
            .iter()
            .map(|w| {
                (
                    w.kind,
                    w.create.spec.name.as_str(),
                    &w.create.data.0[..],
                    w.exists,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (SecretKind::Secret, "s_db", &b"hunter2"[..], true),
                (SecretKind::Config, "s_conf", &b"port: 80"[..], false),
            ]
        );
        for w in &writes {
            assert!(w.create.reuse_identical);
            assert_eq!(w.create.spec.labels[NAMESPACE_LABEL], "s");
        }
        // A file that is missing or too large stops the deploy before the
        // first secret: the error names the file, its line and the limit.
        std::fs::remove_file(dir.path().join("db.txt")).expect("remove");
        let e = read_secret_data(&secrets, |src| read_source(src, &vars))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let db = dir.path().join("db.txt").display().to_string();
        assert!(
            e.starts_with(&format!("{path}:10: secrets.db.file: cannot read {db}: ")),
            "{e}"
        );
        std::fs::write(
            dir.path().join("db.txt"),
            vec![b'x'; MAX_SECRET_BYTES + 4096],
        )
        .expect("write");
        let e = read_secret_data(&secrets, |src| read_source(src, &vars))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            format!("{path}:10: secrets.db.file: {db} holds more than {MAX_SECRET_BYTES} bytes: a secret holds at most {MAX_SECRET_BYTES} bytes (500 KB)")
        );
        // A variable comes from the environment the deploy reads.
        let env = WITH_SECRETS.replace("file: ./db.txt", "environment: FLOTILLA_TEST_DB");
        let parsed = flotilla_compose::parse_stack(&path, &env).expect("parse");
        let secrets = parsed.secrets_for("s").expect("secrets");
        let e = read_secret_data(&secrets, |src| read_source(src, &vars))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            format!("{path}:10: secrets.db.environment: environment variable FLOTILLA_TEST_DB is not set")
        );
        let vars: BTreeMap<String, String> =
            [("FLOTILLA_TEST_DB".to_string(), "from-env".to_string())].into();
        let data = read_secret_data(&secrets, |src| read_source(src, &vars)).expect("read");
        assert_eq!(data[0].1 .0, b"from-env");
    }

    #[test]
    fn pinned_secret_versions_are_no_change() {
        let parsed = flotilla_compose::parse_stack("nodir/s.yml", WITH_SECRETS).expect("parse");
        let specs = parsed.specs_for("s").expect("specs");
        // The daemon answers the references with the ID and version it
        // pinned them to.
        let existing: Vec<ServiceView> = specs
            .iter()
            .map(|spec| {
                let mut spec = spec.clone();
                for r in spec
                    .task
                    .secrets
                    .iter_mut()
                    .chain(spec.task.configs.iter_mut())
                {
                    r.id = format!("id-{}", r.source);
                    r.version = 3;
                }
                stored(spec, 1)
            })
            .collect();
        let actions = plan("s", specs.clone(), &existing, false).expect("plan");
        assert!(
            actions.iter().all(|a| matches!(a, Action::Unchanged(_))),
            "{actions:?}"
        );
        // Another target is a change.
        let moved = WITH_SECRETS.replace("/etc/app.conf", "/etc/app2.conf");
        let moved = flotilla_compose::parse_stack("nodir/s.yml", &moved).expect("parse");
        let actions =
            plan("s", moved.specs_for("s").expect("specs"), &existing, false).expect("plan");
        assert!(matches!(actions[0], Action::Update { .. }), "{actions:?}");
    }

    #[test]
    fn stack_secrets_are_found_by_label() {
        let all = [
            secret_view(SecretKind::Config, "s_conf", Some("s")),
            secret_view(SecretKind::Secret, "s_db", Some("s")),
            secret_view(SecretKind::Secret, "shared", None),
            secret_view(SecretKind::Secret, "t_db", Some("t")),
            secret_view(SecretKind::Secret, "fixed_name", Some("s")),
        ];
        assert_eq!(
            stack_secrets(&all, "s"),
            [
                (SecretKind::Secret, "fixed_name"),
                (SecretKind::Secret, "s_db"),
                (SecretKind::Config, "s_conf"),
            ]
        );
    }
}
