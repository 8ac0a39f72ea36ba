//! The client commands. They reach the daemon only through
//! [`flotilla_api::Client`].

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::model::{InitRequest, ServiceView, TaskView};
use flotilla_api::Client;
use flotilla_types::{
    format_duration_ms, parse_duration_ms, Constraint, Driver, HealthTest, RestartCondition,
    RestartPolicy, ServiceMode, ServiceSpec, TaskTemplate, UpdateState,
};
use flotilla_types::{Health, TaskState};

use super::output::{ago, table, title};
use super::{CreateArgs, Format, InitArgs, NodeCommand, ServiceCommand, UpdateArgs};

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `flotilla init`.
pub async fn init(client: &Client, args: &InitArgs) -> Result<()> {
    let r = client
        .init(&InitRequest {
            advertise_addr: args.advertise_addr.clone(),
            force_new_cluster: args.force_new_cluster,
        })
        .await?;
    if args.force_new_cluster {
        // The daemon restarts itself into the new raft group; wait for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match client.info().await {
                Ok(i) if i.is_leader && i.managers == 1 => break,
                _ if Instant::now() >= deadline => bail!(
                    "timed out after 30s waiting for the daemon to come back as the only manager"
                ),
                _ => {}
            }
        }
        println!(
            "This node is now the only manager of cluster {}, with every service and task kept.",
            r.cluster_id
        );
        println!("Other managers must leave (remove their data dir) and join again with a manager token.");
        return Ok(());
    }
    println!(
        "Cluster initialized: cluster {}, this node {} is its manager and leader.",
        r.cluster_id, r.node_id
    );
    println!(
        "Create a service with: flotilla service create --name web --replicas 3 -- sleep 100000"
    );
    Ok(())
}

/// `flotilla join`.
pub async fn join(client: &Client, args: &super::JoinArgs) -> Result<()> {
    let r = client
        .join(&flotilla_api::model::JoinRequest {
            token: args.token.clone(),
            manager_addr: args.manager_addr.clone(),
            advertise_addr: args.advertise_addr.clone(),
        })
        .await?;
    println!(
        "This node joined cluster {} as node {}.",
        r.cluster_id, r.node_id
    );
    Ok(())
}

/// `flotilla join-token`.
pub async fn join_token(client: &Client, args: &super::JoinTokenArgs) -> Result<()> {
    let t = client.join_token(&args.role, args.rotate).await?;
    if args.quiet {
        println!("{}", t.token);
        return Ok(());
    }
    if args.rotate {
        println!(
            "Rotated the {} join token; the old one no longer works.\n",
            t.role
        );
    }
    println!("To add a {} to this cluster, run on it:\n", t.role);
    let at = t
        .managers
        .first()
        .cloned()
        .unwrap_or_else(|| "MANAGER_ADDR".into());
    println!("    flotilla join --token {} {at}\n", t.token);
    Ok(())
}

/// `flotilla client-cert`.
pub async fn client_cert(client: &Client, name: &str, out: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let c = client.client_cert(name).await?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (file, text, mode) in [
        ("ca.crt", &c.ca_pem, 0o644),
        ("client.crt", &c.cert_pem, 0o644),
        ("client.key", &c.key_pem, 0o600),
    ] {
        let path = out.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    println!(
        "Wrote a client certificate for {name} to {}.",
        out.display()
    );
    println!(
        "Use it from anywhere: flotilla --tls-dir {} --host {} service ls",
        out.display(),
        if c.managers.is_empty() {
            "MANAGER:4281".to_string()
        } else {
            c.managers.join(",")
        }
    );
    Ok(())
}

/// `flotilla leader-check`: exit 0 on the leader, 1 elsewhere.
pub async fn leader_check(client: &Client) -> Result<()> {
    match client.leader_check().await {
        Ok(_) => {
            println!("leader");
            Ok(())
        }
        Err(e) if e.status() == Some(503) => bail!("not the leader"),
        Err(e) => Err(e.into()),
    }
}

/// `flotilla info`.
pub async fn info(client: &Client, format: Format) -> Result<()> {
    let info = client.info().await?;
    if format == Format::Json {
        return print_json(&info);
    }
    let Some(cluster) = &info.cluster_id else {
        println!(
            "Node:          {} (not in a cluster: run 'flotilla init')",
            info.node_name
        );
        println!("Version:       {}", info.version);
        println!("Data dir:      {}", info.data_dir);
        return Ok(());
    };
    println!("Cluster:       {cluster}");
    println!(
        "Node:          {} ({})",
        info.node_name,
        info.node_id.as_deref().unwrap_or("-")
    );
    println!(
        "Role:          {}{}",
        info.role.map(|r| r.as_str()).unwrap_or("-"),
        if info.is_leader { " (leader)" } else { "" }
    );
    println!(
        "Managers:      {} ({} reachable), tolerates {} failure{}",
        info.managers,
        info.managers_reachable,
        info.fault_tolerance,
        if info.fault_tolerance == 1 { "" } else { "s" }
    );
    if let Some(w) = &info.warning {
        println!("WARNING:       {w}");
    }
    println!("Nodes:         {}", info.nodes);
    println!("Services:      {}", info.services);
    let tasks: Vec<String> = info.tasks.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "Tasks:         {}",
        if tasks.is_empty() {
            "none".to_string()
        } else {
            tasks.join(", ")
        }
    );
    println!("Version:       {}", info.version);
    println!("Data dir:      {}", info.data_dir);
    Ok(())
}

/// `flotilla node ...`.
pub async fn node(client: &Client, command: &NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Ls(f) => {
            let nodes = client.nodes().await?;
            if f.format == Format::Json {
                return print_json(&nodes);
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        format!("{}{}", n.id, if n.is_self { " *" } else { "" }),
                        n.name.clone(),
                        title(n.status.as_str()),
                        title(n.availability.as_str()),
                        n.manager_status
                            .map(|m| title(m.as_str()))
                            .unwrap_or_default(),
                        if n.addr.is_empty() {
                            "-".into()
                        } else {
                            n.addr.clone()
                        },
                        n.version.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "NAME",
                        "STATUS",
                        "AVAILABILITY",
                        "MANAGER STATUS",
                        "ADDRESS",
                        "VERSION"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        NodeCommand::Promote { nodes } | NodeCommand::Demote { nodes } => {
            let promote = matches!(command, NodeCommand::Promote { .. });
            for n in nodes {
                let v = client.set_role(n, promote).await?;
                println!(
                    "Node {} {} (it restarts itself in its new role)",
                    v.name,
                    if promote {
                        "promoted to a manager"
                    } else {
                        "demoted to a worker"
                    }
                );
            }
            Ok(())
        }
        NodeCommand::Inspect { nodes, format } => {
            let mut out = Vec::new();
            for n in nodes {
                out.push(client.node(n).await?);
            }
            if *format == Format::Json {
                return print_json(&out);
            }
            for n in out {
                println!("ID:            {}", n.id);
                println!("Name:          {}", n.name);
                println!("Hostname:      {}", n.hostname);
                println!("Role:          {}", n.role);
                println!("Status:        {}", n.status);
                println!("Availability:  {}", n.availability);
                println!("Address:       {}", n.addr);
                let labels: Vec<String> =
                    n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("Labels:        {}", labels.join(", "));
                println!(
                    "Resources:     {:.2} CPUs, {:.2} GiB memory",
                    n.resources.nano_cpus as f64 / 1e9,
                    n.resources.memory_bytes as f64 / (1u64 << 30) as f64
                );
            }
            Ok(())
        }
        NodeCommand::Update {
            availability,
            label_add,
            label_rm,
            name,
            node,
        } => {
            let update = flotilla_api::model::NodeUpdate {
                availability: *availability,
                name: name.clone(),
                labels_add: parse_pairs(label_add, "label")?,
                labels_rm: label_rm.clone(),
            };
            let n = client.update_node(node, &update).await?;
            println!("{}", n.name);
            Ok(())
        }
        NodeCommand::Rm { force, nodes } => {
            let mut failed = None;
            for n in nodes {
                match client.remove_node(n, *force).await {
                    Ok(r) => println!("{}", r.name),
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        }
    }
}

fn parse_pairs(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
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

/// Builds a service spec from `service create` flags.
pub fn spec_from_args(args: &CreateArgs) -> Result<ServiceSpec> {
    let mode = match args.mode.as_str() {
        "replicated" => ServiceMode::Replicated {
            replicas: match &args.replicas {
                Some(r) => parse_replicas(r)?,
                None => 1,
            },
        },
        "global" => {
            if args.replicas.is_some() {
                bail!("--replicas cannot be used with --mode global");
            }
            ServiceMode::Global
        }
        other => bail!("invalid mode {other:?}: expected replicated or global"),
    };
    let condition = RestartCondition::parse(&args.restart_condition).ok_or_else(|| {
        anyhow!(
            "invalid restart condition {:?}: expected none, on-failure or any",
            args.restart_condition
        )
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
            ..TaskTemplate::default()
        },
        ..ServiceSpec::default()
    };
    for m in &args.mount {
        spec.task
            .mounts
            .push(super::flags::parse_mount(m).map_err(|e| anyhow!("--mount: {e}"))?);
    }
    args.spec.apply(&mut spec)?;
    super::flags::validate(&spec)?;
    Ok(spec)
}

/// Applies `service update` flags to a spec read from the cluster.
pub fn apply_update(spec: &mut ServiceSpec, args: &UpdateArgs) -> Result<()> {
    if let Some(r) = &args.replicas {
        let replicas = parse_replicas(r)?;
        match spec.mode {
            ServiceMode::Replicated { .. } => spec.mode = ServiceMode::Replicated { replicas },
            ServiceMode::Global => bail!(
                "service {} is global: --replicas applies to replicated services only",
                spec.name
            ),
        }
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
    if args.force {
        task.force_update += 1;
    }
    args.spec.apply(spec)?;
    super::flags::validate(spec)
}

/// `service update`: reads the spec, changes it and writes it back at the
/// version it read, retrying when someone else changed it in between.
async fn update_service(client: &Client, args: &UpdateArgs) -> Result<()> {
    let timeout = Duration::from_millis(
        parse_duration_ms(&args.timeout).map_err(|e| anyhow!("--timeout: {e}"))?,
    );
    let mut attempts = 0;
    let (before, after) = loop {
        let current = client.service(&args.name).await?;
        let mut spec = current.spec.clone();
        apply_update(&mut spec, args)?;
        if spec == current.spec {
            println!("{}: nothing to change", args.name);
            return Ok(());
        }
        match client
            .replace_service(&args.name, &spec, Some(current.version))
            .await
        {
            Ok(updated) => break (current, updated),
            Err(e) if e.status() == Some(409) && attempts < 5 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    };
    println!("{}", after.name);
    if args.detach {
        return Ok(());
    }
    if before.spec.task != after.spec.task {
        follow_update(client, &after.name, false, timeout).await
    } else {
        wait_converged(client, &after.name, timeout)
            .await
            .map(|_| ())
    }
}

/// Follows a rolling update (or rollback) until it completes, pauses or
/// rolls back, printing the state of every slot whenever it changes.
async fn follow_update(
    client: &Client,
    name: &str,
    rollback: bool,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let service = client.service(name).await?;
        let tasks = client.tasks(name).await?;
        let progress = update_progress(&service, &tasks);
        if progress != last {
            print!("{progress}");
            last = progress;
        }
        let state = service.update_status.as_ref().map(|u| u.state);
        let message = service
            .update_status
            .as_ref()
            .map(|u| u.message.clone())
            .unwrap_or_default();
        match state {
            Some(UpdateState::Completed) if !rollback => {
                println!("verify: Service {name} converged");
                return Ok(());
            }
            Some(UpdateState::RollbackCompleted) if rollback => {
                println!("rollback: {message}");
                println!("verify: Service {name} converged");
                return Ok(());
            }
            Some(UpdateState::RollbackCompleted) => {
                bail!("service {name}: update rolled back: {message}")
            }
            Some(UpdateState::Paused | UpdateState::RollbackPaused) => {
                bail!("service {name}: update paused: {message}")
            }
            // A rollback the orchestrator started: follow it to its end.
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} following the update of service {name} (state: {}); it goes on in the background: see 'flotilla service ps {name}'",
                format_duration_ms(timeout.as_millis() as u64),
                state.map(|s| s.as_str()).unwrap_or("none"),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The progress block of an update: one line overall, one per slot.
pub fn update_progress(service: &ServiceView, tasks: &[TaskView]) -> String {
    let mut current: Vec<&TaskView> = tasks.iter().filter(|t| t.current).collect();
    current.sort_by(|a, b| {
        (a.slot, &a.node_id, std::cmp::Reverse(a.created_at)).cmp(&(
            b.slot,
            &b.node_id,
            std::cmp::Reverse(b.created_at),
        ))
    });
    // start-first keeps an old task beside the new one: show the newest.
    current
        .dedup_by(|b, a| a.slot == b.slot && a.slot != 0 || a.node_id == b.node_id && a.slot == 0);
    let total = current.len();
    let done = current
        .iter()
        .filter(|t| {
            t.up_to_date
                && t.state == TaskState::Running
                && t.health.is_none_or(|h| h == Health::Healthy)
        })
        .count();
    let state = service
        .update_status
        .as_ref()
        .map(|u| u.state.as_str())
        .unwrap_or("none");
    let mut out = format!("{state}: {done} out of {total} tasks\n");
    for (i, t) in current.iter().enumerate() {
        let health = t.health.map(|h| format!(" ({h})")).unwrap_or_default();
        let old = if t.up_to_date { "" } else { ", previous spec" };
        out.push_str(&format!("{}/{total}: {}{health}{old}\n", i + 1, t.state));
    }
    out
}

/// Waits until every named service runs its desired tasks.
async fn wait_converged(client: &Client, name: &str, timeout: Duration) -> Result<ServiceView> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = client.service(name).await?;
        if s.replicas.ready == s.replicas.desired && s.replicas.running == s.replicas.desired {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            let healthy = match s.replicas.healthy {
                Some(h) => format!(", {h} healthy"),
                None => String::new(),
            };
            bail!(
                "timed out after {}s waiting for service {name} to run {} tasks ({} running{healthy}; see 'flotilla service ps {name}')",
                timeout.as_secs(),
                s.replicas.desired,
                s.replicas.running
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn task_name(t: &TaskView) -> String {
    if t.slot > 0 {
        format!("{}.{}", t.service, t.slot)
    } else {
        format!("{}.{}", t.service, t.node_id.as_deref().unwrap_or("-"))
    }
}

fn task_error(t: &TaskView) -> String {
    match (&t.error, t.exit_code) {
        (Some(e), _) => e.clone(),
        (None, Some(code)) if t.state == TaskState::Failed => format!("exit code {code}"),
        _ => String::new(),
    }
}

/// `service ls` (and `stack services`): one row per service.
pub fn services_table(services: &[ServiceView]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.id.chars().take(12).collect(),
                s.name.clone(),
                s.mode.as_str().to_string(),
                replicas_text(s),
                s.spec
                    .task
                    .image
                    .clone()
                    .unwrap_or_else(|| s.command.clone()),
                s.update_status
                    .as_ref()
                    .map(|u| u.state.as_str().to_string())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "MODE", "REPLICAS", "IMAGE/COMMAND", "UPDATE"],
        &rows,
    )
}

/// `3/3`, or `3/3 (2 healthy)` for a service whose tasks are checked.
pub fn replicas_text(s: &ServiceView) -> String {
    match s.replicas.healthy {
        Some(h) => format!(
            "{}/{} ({h} healthy)",
            s.replicas.running, s.replicas.desired
        ),
        None => format!("{}/{}", s.replicas.running, s.replicas.desired),
    }
}

/// `service inspect --format table`.
pub fn inspect_text(s: &ServiceView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    let t = &s.spec.task;
    line("ID:", s.id.clone());
    line("Name:", s.name.clone());
    line("Mode:", s.mode.as_str().to_string());
    line("Replicas:", replicas_text(s));
    line("Driver:", t.driver.as_str().to_string());
    if let Some(image) = &t.image {
        line("Image:", image.clone());
    }
    if let Some(e) = &t.entrypoint {
        line("Entrypoint:", e.join(" "));
    }
    line("Command:", s.command.clone());
    line("Restart:", t.restart.condition.as_str().to_string());
    if let Some(h) = &t.health {
        line("Health check:", health_test_text(&h.test));
        line(
            "  every:",
            format!(
                "{} (timeout {}, retries {}, start period {})",
                format_duration_ms(h.interval_ms),
                format_duration_ms(h.timeout_ms),
                h.retries,
                format_duration_ms(h.start_period_ms)
            ),
        );
    }
    for (what, u) in [("Update:", &s.spec.update), ("Rollback:", &s.spec.rollback)] {
        line(
            what,
            format!(
                "parallelism {}, delay {}, order {}, on failure {}, monitor {}, max failure ratio {}",
                u.parallelism,
                format_duration_ms(u.delay_ms),
                u.order.as_str(),
                u.failure_action.as_str(),
                format_duration_ms(u.monitor_ms),
                u.max_failure_ratio.0
            ),
        );
    }
    if let Some(u) = &s.update_status {
        line("UpdateStatus:", String::new());
        line(" State:", u.state.as_str().to_string());
        line(" Started:", ago(u.started_at));
        if let Some(done) = u.completed_at {
            line(" Completed:", ago(done));
        }
        line(" Message:", u.message.clone());
    }
    out
}

/// A health test as Docker writes it.
fn health_test_text(test: &HealthTest) -> String {
    match test {
        HealthTest::None => "none".to_string(),
        HealthTest::Image => "the image's own".to_string(),
        HealthTest::Exec { argv } => format!("CMD {}", argv.join(" ")),
        HealthTest::Shell { command } => format!("CMD-SHELL {command}"),
        HealthTest::Http { port, path } => format!("HTTP GET :{port}{path}"),
        HealthTest::Tcp { port } => format!("TCP :{port}"),
    }
}

/// `service ps` (and `stack ps`): the table, with an IMAGE column when
/// any task runs an image.
pub fn ps_table(tasks: &[TaskView]) -> String {
    let with_image = tasks.iter().any(|t| t.image.is_some());
    table(&ps_header(with_image), &ps_rows_with(tasks, with_image))
}

/// The header of `service ps`, with or without the IMAGE column.
pub fn ps_header(with_image: bool) -> Vec<&'static str> {
    let mut header = vec!["ID", "NAME"];
    if with_image {
        header.push("IMAGE");
    }
    header.extend(["NODE", "DESIRED STATE", "CURRENT STATE", "HEALTH", "ERROR"]);
    header
}

/// Rows of `service ps`: per slot, the current task and then its history
/// marked `\_`, as Swarm prints it.
pub fn ps_rows(tasks: &[TaskView]) -> Vec<Vec<String>> {
    ps_rows_with(tasks, false)
}

/// Rows of `service ps`, with the IMAGE column when `with_image`.
pub fn ps_rows_with(tasks: &[TaskView], with_image: bool) -> Vec<Vec<String>> {
    let mut sorted: Vec<&TaskView> = tasks.iter().collect();
    // Global tasks have slot 0 and are told apart by node.
    let key = |t: &TaskView| (t.slot, if t.slot == 0 { t.node_id.clone() } else { None });
    sorted.sort_by(|a, b| {
        (key(a), !a.current, std::cmp::Reverse(a.created_at), &a.id).cmp(&(
            key(b),
            !b.current,
            std::cmp::Reverse(b.created_at),
            &b.id,
        ))
    });
    let mut rows = Vec::new();
    let mut last_slot: Option<(u64, Option<String>)> = None;
    for t in sorted {
        let key = (t.slot, if t.slot == 0 { t.node_id.clone() } else { None });
        let first = last_slot.as_ref() != Some(&key);
        last_slot = Some(key);
        let name = if first {
            task_name(t)
        } else {
            format!(" \\_ {}", task_name(t))
        };
        let mut row = vec![t.id.chars().take(12).collect(), name];
        if with_image {
            row.push(t.image.clone().unwrap_or_default());
        }
        row.extend([
            t.node.clone().unwrap_or_default(),
            title(t.desired_state.as_str()),
            format!("{} {}", title(t.state.as_str()), ago(t.timestamp)),
            t.health.map(|h| h.as_str().to_string()).unwrap_or_default(),
            task_error(t),
        ]);
        rows.push(row);
    }
    rows
}

/// `flotilla service ...`.
pub async fn service(client: &Client, command: &ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Create(args) => {
            let spec = spec_from_args(args)?;
            let created = client.create_service(&spec).await?;
            println!("{}", created.id);
            if !args.detach {
                wait_converged(client, &created.name, Duration::from_secs(30)).await?;
            }
            Ok(())
        }
        ServiceCommand::Ls(f) => {
            let services = client.services().await?;
            if f.format == Format::Json {
                return print_json(&services);
            }
            print!("{}", services_table(&services));
            Ok(())
        }
        ServiceCommand::Ps { name, format } => {
            let tasks = client.tasks(name).await?;
            if format.format == Format::Json {
                return print_json(&tasks);
            }
            print!("{}", ps_table(&tasks));
            Ok(())
        }
        ServiceCommand::Inspect { names, format } => {
            let mut out = Vec::new();
            for name in names {
                out.push(client.service(name).await?);
            }
            if *format == Format::Json {
                return print_json(&out);
            }
            for s in out {
                print!("{}", inspect_text(&s));
            }
            Ok(())
        }
        ServiceCommand::Scale { pairs } => {
            let mut parsed = Vec::new();
            for pair in pairs {
                let (name, n) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow!("invalid scale {pair:?}: expected NAME=REPLICAS"))?;
                parsed.push((name.to_string(), parse_replicas(n)?));
            }
            for (name, n) in parsed {
                client.scale(&name, n).await?;
                println!("{name} scaled to {n}");
            }
            Ok(())
        }
        ServiceCommand::Update(args) => update_service(client, args).await,
        ServiceCommand::Rollback { name, detach } => {
            let s = client.rollback_service(name).await?;
            println!("{}", s.name);
            if *detach {
                return Ok(());
            }
            follow_update(client, name, true, Duration::from_secs(600)).await
        }
        ServiceCommand::Rm { names } => {
            let mut failed = None;
            for name in names {
                match client.remove_service(name).await {
                    Ok(r) => println!("{}", r.name),
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        }
        ServiceCommand::Logs {
            name,
            follow,
            tail,
            since,
            timestamps,
            raw,
            no_task_ids,
        } => {
            let since_ms = match since {
                Some(s) => Some(super::logs::parse_since(s, flotilla_node::now_ms())?),
                None => None,
            };
            let query = flotilla_api::model::LogQuery {
                follow: *follow,
                tail: *tail,
                since_ms,
            };
            let style = super::logs::Style {
                timestamps: *timestamps,
                raw: *raw,
                task_ids: !*no_task_ids,
            };
            let stdout = std::io::stdout();
            let mut write_err = None;
            client
                .logs(name, &query, |event| match event {
                    flotilla_api::model::LogEvent::Line(entry) => {
                        let mut lock = stdout.lock();
                        let line = super::logs::render(&entry, style);
                        if let Err(e) = writeln!(lock, "{line}").and_then(|_| lock.flush()) {
                            write_err = Some(e);
                        }
                    }
                    flotilla_api::model::LogEvent::Warning(w) => eprintln!("warning: {w}"),
                })
                .await?;
            if let Some(e) = write_err {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e.into());
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::DesiredState;

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

    fn tv(id: &str, slot: u64, current: bool, created_at: u64) -> TaskView {
        TaskView {
            id: id.into(),
            service: "web".into(),
            service_id: "s".into(),
            slot,
            node: Some("n".into()),
            node_id: Some("n".into()),
            desired_state: if current {
                DesiredState::Running
            } else {
                DesiredState::Shutdown
            },
            state: if current {
                TaskState::Running
            } else {
                TaskState::Failed
            },
            timestamp: 0,
            message: String::new(),
            error: None,
            exit_code: if current { None } else { Some(137) },
            pid: None,
            health: None,
            image: None,
            container_id: None,
            up_to_date: true,
            created_at,
            current,
        }
    }

    #[test]
    fn progress_shows_the_newest_task_of_each_slot() {
        let mut old = tv("o1", 1, true, 1);
        old.up_to_date = false;
        let mut new = tv("n1", 1, true, 5);
        new.state = TaskState::Starting;
        new.health = Some(Health::Starting);
        let mut done = tv("n2", 2, true, 4);
        done.health = Some(Health::Healthy);
        let mut stale = tv("o3", 3, true, 1);
        stale.up_to_date = false;
        let service: ServiceView = serde_json::from_value(serde_json::json!({
            "id": "s", "name": "web", "mode": "replicated",
            "replicas": {"running": 3, "desired": 3},
            "command": "", "spec": serde_json::to_value(ServiceSpec::default()).unwrap(),
            "version": 1, "created_at": 0, "updated_at": 0,
            "update_status": {"state": "updating", "started_at": 0, "message": ""}
        }))
        .unwrap();
        let text = update_progress(&service, &[old, new, done, stale]);
        assert_eq!(
            text,
            "updating: 1 out of 3 tasks\n1/3: starting (starting)\n2/3: running (healthy)\n3/3: running, previous spec\n"
        );
    }

    #[test]
    fn ps_marks_history_under_its_slot() {
        let rows = ps_rows(&[
            tv("b", 1, false, 1),
            tv("c", 2, true, 3),
            tv("a", 1, true, 2),
        ]);
        let names: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
        assert_eq!(names, ["web.1", " \\_ web.1", "web.2"]);
        assert_eq!(rows[1][6], "exit code 137");
    }
}
