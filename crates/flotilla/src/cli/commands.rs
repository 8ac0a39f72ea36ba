//! The client commands of the cluster, its nodes and its services. They
//! reach the daemon only through [`flotilla_api::Client`].

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::model::{InitRequest, Reachability};
use flotilla_api::Client;
use flotilla_types::parse_duration_ms;

use super::flags::{apply_update, check_update, parse_pairs, parse_replicas, spec_from_args};
use super::output::{heard_ago, inspect_text, print_json, ps_table, services_table, table, title};
use super::progress::{follow_update, wait_converged};
use super::{Format, InitArgs, NodeCommand, ServiceCommand, UpdateArgs};

/// `flotilla init`.
pub async fn init(client: &Client, args: &InitArgs) -> Result<()> {
    let r = client
        .init(&InitRequest {
            advertise_addr: args.advertise_addr.clone(),
            force_new_cluster: args.force_new_cluster,
            autolock: args.autolock,
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
    if let Some(key) = &r.unlock_key {
        println!("Autolock is on.");
        super::autolock::print_new_key(key);
    }
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
/// `flotilla ui-token [--ttl 12h] [-q]`.
pub async fn ui_token(client: &Client, ttl: Option<&str>, quiet: bool) -> Result<()> {
    let ttl_secs = ttl
        .map(|t| {
            flotilla_types::parse_duration_ms(t)
                .map(|ms| ms.div_ceil(1000))
                .map_err(|e| anyhow::anyhow!("--ttl {t}: {e}"))
        })
        .transpose()?;
    let view = client
        .ui_token(&flotilla_api::model::UiTokenRequest { ttl_secs })
        .await?;
    if quiet {
        println!("{}", view.token);
        return Ok(());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Rounded to the second, as it was asked for.
    let lasts = flotilla_types::format_duration_ms(
        view.expires_at.saturating_sub(now_ms).div_ceil(1000) * 1000,
    );
    match &view.url {
        Some(url) => println!(
            "Open this address in a browser to see the dashboard (the login lasts {lasts}):\n\n    {url}\n\nThe page is served with the cluster's own certificate: the browser warns until the cluster CA (ca.crt of 'flotilla client-cert') is trusted."
        ),
        None => println!(
            "Dashboard login token (it lasts {lasts}): {}\nThis manager has no client API port: open /ui/login?token=... on a manager that has one.",
            view.token
        ),
    }
    Ok(())
}

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
        if info.locked {
            println!("Node:          {} (locked)", info.node_name);
            if let Some(w) = &info.warning {
                println!("WARNING:       {w}");
            }
        } else {
            println!(
                "Node:          {} (not in a cluster: run 'flotilla init')",
                info.node_name
            );
        }
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
    let manager = info.role == Some(flotilla_types::NodeRole::Manager);
    println!(
        "Role:          {}{}",
        info.role.map(|r| r.as_str()).unwrap_or("-"),
        if info.is_leader {
            " (leader)"
        } else if manager && info.leader.is_none() {
            " (no leader)"
        } else {
            ""
        }
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
    for m in &info.unreachable_managers {
        println!(
            "Unreachable:   {} at {} ({})",
            m.name,
            m.addr,
            heard_ago(m.last_heard_ms)
        );
    }
    println!(
        "Autolock:      {}",
        if info.autolock { "on" } else { "off" }
    );
    if let Some(b) = &info.backups {
        println!("Backups:       {b}");
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
                        match n.manager_status {
                            Some(Reachability::Unreachable) => {
                                format!("Unreachable ({})", heard_ago(n.last_heard_ms))
                            }
                            Some(Reachability::CatchingUp) => format!(
                                "Catching up ({} entries behind)",
                                n.behind.unwrap_or_default()
                            ),
                            Some(m) => title(m.as_str()),
                            None => String::new(),
                        },
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

/// `service update`: reads the spec, changes it and writes it back at the
/// version it read, retrying when someone else changed it in between.
async fn update_service(client: &Client, args: &UpdateArgs) -> Result<()> {
    let timeout = Duration::from_millis(
        parse_duration_ms(&args.timeout).map_err(|e| anyhow!("--timeout: {e}"))?,
    );
    check_update(args)?;
    let mut attempts = 0;
    let (before, after) = loop {
        let current = client.service(&args.name).await?;
        let mut spec = current.spec.clone();
        let networks = current
            .networks
            .iter()
            .map(|n| (n.network_id.clone(), n.network.clone()))
            .collect();
        apply_update(&mut spec, args, &networks)?;
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

/// `flotilla service ...`.
/// `flotilla list [SERVICE] [--label K=V]`: every current task's
/// endpoints, as Armada's `list`.
pub async fn list(
    client: &Client,
    service: Option<&str>,
    labels: &[String],
    format: Format,
) -> Result<()> {
    let wanted = super::flags::parse_pairs(labels, "label")?;
    let names: Vec<String> = match service {
        Some(name) => vec![name.to_string()],
        None => client
            .services()
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect(),
    };
    let mut rows = Vec::new();
    for name in names {
        let endpoints = client.endpoints(&name).await?;
        rows.extend(
            endpoints
                .into_iter()
                .filter(|e| wanted.iter().all(|(k, v)| e.labels.get(k) == Some(v))),
        );
    }
    if format == Format::Json {
        return print_json(&rows);
    }
    print!("{}", super::output::endpoints_table(&rows));
    Ok(())
}

/// `flotilla mesh ...`.
pub async fn mesh(client: &Client, command: &super::options::MeshCommand) -> Result<()> {
    match command {
        super::options::MeshCommand::Stats {
            service,
            node,
            format,
        } => {
            let mut stats = client.mesh_stats().await?;
            if let Some(name) = service {
                for node in &mut stats {
                    node.listeners.retain(|l| &l.service_name == name);
                }
            }
            if let Some(wanted) = node {
                let nodes = client.nodes().await?;
                let id = nodes
                    .iter()
                    .find(|n| {
                        &n.id == wanted || &n.name == wanted || n.id.starts_with(wanted.as_str())
                    })
                    .map(|n| n.id.clone())
                    .ok_or_else(|| anyhow!("node {wanted} not found"))?;
                stats.retain(|s| s.node_id == id);
            }
            if format.format == Format::Json {
                return print_json(&stats);
            }
            print!("{}", super::output::mesh_stats_table(&stats));
            Ok(())
        }
    }
}

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
            // Where a published port is not open (another program holds
            // it on that node): from every node's mesh, by node name.
            let stats = if out.iter().any(|s| !s.published.is_empty()) {
                client.mesh_stats().await.unwrap_or_default()
            } else {
                Vec::new()
            };
            let names: std::collections::BTreeMap<String, String> = if stats.is_empty() {
                Default::default()
            } else {
                client
                    .nodes()
                    .await
                    .map(|n| n.into_iter().map(|n| (n.id, n.name)).collect())
                    .unwrap_or_default()
            };
            for s in out {
                print!("{}", inspect_text(&s));
                for node in &stats {
                    for l in node.listeners.iter().filter(|l| l.service_name == s.name) {
                        if let (false, Some(error)) = (l.listening, &l.error) {
                            let name = names.get(&node.node_id).unwrap_or(&node.node_id);
                            println!(
                                "{:<16}{}/{} on {name}: {error}",
                                "Port not open:",
                                l.published,
                                l.protocol.as_str()
                            );
                        }
                    }
                }
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
                Some(s) => Some(super::logs::parse_since(s, now_ms())?),
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

/// Now, in milliseconds since the Unix epoch (for `--since`).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
