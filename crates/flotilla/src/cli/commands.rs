//! The client commands. They reach the daemon only through
//! [`flotilla_api::Client`].

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::model::{InitRequest, ServiceView, TaskView};
use flotilla_api::Client;
use flotilla_types::{
    parse_duration_ms, validate_name, Constraint, Driver, RestartCondition, RestartPolicy,
    ServiceMode, ServiceSpec, TaskTemplate,
};

use super::output::{ago, table, title};
use super::{CreateArgs, Format, InitArgs, NodeCommand, ServiceCommand};

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
        info.role.as_deref().unwrap_or("-"),
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
                        title(&n.status),
                        title(&n.availability),
                        n.manager_status.as_deref().map(title).unwrap_or_default(),
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
                availability: availability.clone(),
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
    validate_name(&args.name)?;
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
    Ok(ServiceSpec {
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
    })
}

/// Waits until every named service runs its desired tasks.
async fn wait_converged(client: &Client, name: &str, timeout: Duration) -> Result<ServiceView> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = client.service(name).await?;
        if s.replicas.running == s.replicas.desired {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s waiting for service {name} to run {} tasks ({} running; see 'flotilla service ps {name}')",
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
        (None, Some(code)) if t.state == "failed" => format!("exit code {code}"),
        _ => String::new(),
    }
}

/// Rows of `service ps`: per slot, the current task and then its history
/// marked `\_`, as Swarm prints it.
pub fn ps_rows(tasks: &[TaskView]) -> Vec<Vec<String>> {
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
        rows.push(vec![
            t.id.chars().take(12).collect(),
            name,
            t.node.clone().unwrap_or_default(),
            title(&t.desired_state),
            format!("{} {}", title(&t.state), ago(t.timestamp)),
            task_error(t),
        ]);
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
            let rows: Vec<Vec<String>> = services
                .iter()
                .map(|s| {
                    vec![
                        s.id.chars().take(12).collect(),
                        s.name.clone(),
                        s.mode.clone(),
                        format!("{}/{}", s.replicas.running, s.replicas.desired),
                        s.command.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["ID", "NAME", "MODE", "REPLICAS", "COMMAND"], &rows)
            );
            Ok(())
        }
        ServiceCommand::Ps { name, format } => {
            let tasks = client.tasks(name).await?;
            if format.format == Format::Json {
                return print_json(&tasks);
            }
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "NAME",
                        "NODE",
                        "DESIRED STATE",
                        "CURRENT STATE",
                        "ERROR"
                    ],
                    &ps_rows(&tasks)
                )
            );
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
                println!("ID:        {}", s.id);
                println!("Name:      {}", s.name);
                println!("Mode:      {}", s.mode);
                println!("Replicas:  {}/{}", s.replicas.running, s.replicas.desired);
                println!("Command:   {}", s.command);
                println!("Restart:   {}", s.spec.task.restart.condition.as_str());
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
        ServiceCommand::Update {
            env_add,
            env_rm,
            label_add,
            label_rm,
            replicas,
            stop_grace_period,
            force,
            name,
            command,
        } => {
            let update = flotilla_api::model::ServiceUpdate {
                env_add: parse_pairs(env_add, "env")?,
                env_rm: env_rm.clone(),
                labels_add: parse_pairs(label_add, "label")?,
                labels_rm: label_rm.clone(),
                replicas: replicas.as_deref().map(parse_replicas).transpose()?,
                command: (!command.is_empty()).then(|| command.clone()),
                stop_grace_period_ms: stop_grace_period
                    .as_deref()
                    .map(|d| parse_duration_ms(d).map_err(|e| anyhow!("--stop-grace-period: {e}")))
                    .transpose()?,
                force: *force,
            };
            let s = client.update_service(name, &update).await?;
            println!("{}", s.name);
            Ok(())
        }
        ServiceCommand::Rollback { name } => {
            let s = client.rollback_service(name).await?;
            println!("{} rolled back", s.name);
            Ok(())
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
        ServiceCommand::Logs { name, follow, tail } => {
            let stdout = std::io::stdout();
            let mut write_err = None;
            client
                .logs(name, *tail, *follow, |chunk| {
                    let mut lock = stdout.lock();
                    if let Err(e) = lock.write_all(chunk).and_then(|_| lock.flush()) {
                        write_err = Some(e);
                    }
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
            desired_state: if current { "running" } else { "shutdown" }.into(),
            state: if current { "running" } else { "failed" }.into(),
            timestamp: 0,
            message: String::new(),
            error: None,
            exit_code: if current { None } else { Some(137) },
            pid: None,
            created_at,
            current,
        }
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
        assert_eq!(rows[1][5], "exit code 137");
    }
}
