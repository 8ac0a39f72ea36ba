//! `flotilla stack ...`: Compose files deployed as stacks of services
//! named `STACK_SERVICE` and labelled `com.docker.stack.namespace=STACK`,
//! with Swarm's commands (`deploy`, `ls`, `services`, `ps`, `rm`, `config`).
//!
//! A deploy is all or nothing up to the first write: every file is parsed,
//! interpolated, converted and checked (names included) before the daemon is
//! asked to change anything. It then writes only what differs: a service
//! whose spec is unchanged is not written at all, so redeploying the same
//! files changes nothing; a changed one is replaced at the version it was
//! read at, which starts a paced rolling update.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use flotilla_api::model::{ServiceView, TaskView};
use flotilla_api::Client;
use flotilla_types::{Ratio, ServiceSpec, UpdateState};

use super::output::table;
use super::output::{ps_header, ps_rows_with, services_table};
use super::{Format, FormatArg};
use flotilla_compose::{load_stack_files, StackError, NAMESPACE_LABEL};

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
    /// Remove stacks: all of their services
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

/// The stack a service belongs to, if any.
fn stack_of(view: &ServiceView) -> Option<&str> {
    view.spec.labels.get(NAMESPACE_LABEL).map(String::as_str)
}

/// Whether two specs ask for the same thing. Ratios travel as JSON floats,
/// which need not come back bit for bit.
fn same_spec(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    let close = |x: Ratio, y: Ratio| (x.0 - y.0).abs() < 1e-9;
    let strip = |s: &ServiceSpec| {
        let mut s = s.clone();
        s.update.max_failure_ratio = Ratio(0.0);
        s.rollback.max_failure_ratio = Ratio(0.0);
        s
    };
    strip(a) == strip(b)
        && close(a.update.max_failure_ratio, b.update.max_failure_ratio)
        && close(a.rollback.max_failure_ratio, b.rollback.max_failure_ratio)
}

/// Decides what a deploy of `specs` (already named and labelled) as `stack`
/// does, given the services that exist: removals first (with `prune`), then
/// each service in the files' order. Refuses, before anything is written, a
/// name taken by a service outside the stack.
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
                if same_spec(&spec, &view.spec) {
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
/// everything first, then creates what is missing, replaces what changed,
/// leaves what is the same and, with `prune`, removes the stack's services
/// the files no longer name. Prints one line per service and the warnings
/// (once, to stderr). Returns the names of the stack's services.
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
    let existing = client.services().await?;
    let actions = plan(stack, specs, &existing, prune)?;
    let mut written: Vec<String> = Vec::new();
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
                let done = if written.is_empty() {
                    "nothing was changed".to_string()
                } else {
                    format!("already written: {}", written.join(", "))
                };
                bail!(
                    "deploying stack {stack} failed at service {}: {e} ({done})",
                    action.name()
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
            let mut failed = None;
            for stack in stacks {
                let mut names: Vec<&str> = all
                    .iter()
                    .filter(|s| stack_of(s) == Some(stack.as_str()))
                    .map(|s| s.name.as_str())
                    .collect();
                if names.is_empty() {
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
            },
            command: spec.task.command.join(" "),
            spec,
            version,
            created_at: 0,
            updated_at: 0,
            update_status: None,
            can_roll_back: false,
            published: Vec::new(),
        }
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
}
