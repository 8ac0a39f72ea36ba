//! `flotilla network create|ls|inspect|rm`, as Docker's `network` commands
//! for Swarm's overlay networks.

use anyhow::{anyhow, bail, Result};
use flotilla_api::model::NetworkView;
use flotilla_api::Client;
use flotilla_types::{NetworkDriver, NetworkSpec, Subnet};

use super::options::{Format, NetworkCommand};
use super::output::{ago, print_json, table};

/// Runs one network command.
pub async fn network(client: &Client, command: &NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create {
            name,
            driver,
            subnet,
            internal,
            attachable,
            opt,
            label,
        } => {
            let spec = create_spec(
                name,
                driver,
                subnet.as_deref(),
                *internal,
                *attachable,
                opt,
                label,
            )?;
            let created = client.create_network(&spec).await?;
            println!("{}", created.id);
            Ok(())
        }
        NetworkCommand::Ls(f) => {
            let networks = client.networks().await?;
            if f.format == Format::Json {
                return print_json(&networks);
            }
            print!("{}", networks_table(&networks));
            Ok(())
        }
        NetworkCommand::Inspect { names, format } => {
            let mut out = Vec::new();
            for name in names {
                out.push(client.network(name).await?);
            }
            if *format == Format::Json {
                return print_json(&out);
            }
            for n in &out {
                print!("{}", inspect_text(n));
            }
            Ok(())
        }
        NetworkCommand::Rm { names } => {
            let mut failed = None;
            for name in names {
                match client.remove_network(name).await {
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

/// `flotilla resolve NAME [--from TASK] [--type A|SRV]`: the records, or
/// why there are none (exit 1 when the name does not exist for the task).
pub async fn resolve(
    client: &Client,
    name: &str,
    from: Option<&str>,
    rtype: &str,
    format: Format,
) -> Result<()> {
    let view = client.resolve(name, from, Some(rtype)).await?;
    if format == Format::Json {
        return print_json(&view);
    }
    let who = match &view.from_task {
        Some(task) => format!("task {task} (networks: {})", view.networks.join(", ")),
        None => "any task".to_string(),
    };
    match view.status.as_str() {
        "answer" => {
            let rows: Vec<Vec<String>> = view
                .records
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.r#type.clone(),
                        r.ttl.to_string(),
                        r.value.clone(),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "TYPE", "TTL", "VALUE"], &rows));
            Ok(())
        }
        "nodata" => {
            println!("{name}: exists for {who}, with no {rtype} record");
            Ok(())
        }
        "forward" => {
            println!("{name}: not a name of the cluster: the node's own resolvers answer it");
            Ok(())
        }
        _ => bail!("{name}: no such name for {who} (NXDOMAIN), or no task of it is ready"),
    }
}

/// The spec `network create`'s flags ask for.
pub fn create_spec(
    name: &str,
    driver: &str,
    subnet: Option<&str>,
    internal: bool,
    attachable: bool,
    opts: &[String],
    labels: &[String],
) -> Result<NetworkSpec> {
    let mut spec = NetworkSpec::named(name);
    spec.driver = NetworkDriver::parse(driver).map_err(|e| anyhow!("--driver: {e}"))?;
    spec.internal = internal;
    spec.attachable = attachable;
    if let Some(text) = subnet {
        spec.subnet = Some(
            text.parse::<Subnet>()
                .map_err(|e| anyhow!("--subnet: {e}"))?,
        );
    }
    for o in opts {
        match o
            .split_once('=')
            .map_or((o.as_str(), "true"), |(k, v)| (k, v))
        {
            ("encrypted", "" | "true" | "1") => spec.encrypted = true,
            ("encrypted", "false" | "0") => spec.encrypted = false,
            (key, _) => bail!("--opt: unknown option {key:?}: the overlay driver takes encrypted"),
        }
    }
    for l in labels {
        let (k, v) = l.split_once('=').map_or((l.as_str(), ""), |(k, v)| (k, v));
        if k.is_empty() {
            bail!("--label: invalid label {l:?}: expected KEY=VALUE");
        }
        spec.labels.insert(k.to_string(), v.to_string());
    }
    Ok(spec)
}

/// `network ls`.
pub fn networks_table(networks: &[NetworkView]) -> String {
    let rows: Vec<Vec<String>> = networks
        .iter()
        .map(|n| {
            let mut flags = Vec::new();
            if n.spec.internal {
                flags.push("internal");
            }
            if n.spec.encrypted {
                flags.push("encrypted");
            }
            vec![
                n.id.clone(),
                n.name.clone(),
                n.spec.driver.as_str().to_string(),
                n.subnet.clone().unwrap_or_else(|| "(allocating)".into()),
                n.services.len().to_string(),
                n.tasks.len().to_string(),
                flags.join(","),
            ]
        })
        .collect();
    table(
        &[
            "NETWORK ID",
            "NAME",
            "DRIVER",
            "SUBNET",
            "SERVICES",
            "TASKS",
            "OPTIONS",
        ],
        &rows,
    )
}

/// `network inspect --format table`.
pub fn inspect_text(n: &NetworkView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    line("ID:", n.id.clone());
    line("Name:", n.name.clone());
    line("Driver:", n.spec.driver.as_str().to_string());
    line("Created:", ago(n.created_at));
    line(
        "Subnet:",
        n.subnet
            .clone()
            .unwrap_or_else(|| "(being allocated)".into()),
    );
    if let Some(g) = &n.gateway {
        line("Gateway:", g.clone());
    }
    if let Some(vni) = n.vni {
        line("VXLAN ID:", vni.to_string());
    }
    line("Internal:", n.spec.internal.to_string());
    line("Encrypted:", n.spec.encrypted.to_string());
    if !n.spec.labels.is_empty() {
        let labels: Vec<String> = n
            .spec
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        line("Labels:", labels.join(", "));
    }
    line("Services:", n.services.join(", "));
    out.push('\n');
    let rows: Vec<Vec<String>> = n
        .tasks
        .iter()
        .map(|t| {
            vec![
                format!("{}.{}", t.service, t.slot),
                t.task_id.clone(),
                t.address.clone(),
                t.node.clone().unwrap_or_else(|| "-".into()),
                t.state.as_str().to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["TASK", "ID", "ADDRESS", "NODE", "STATE"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_flags_become_a_spec() {
        let spec = create_spec(
            "front",
            "overlay",
            Some("10.0.9.0/24"),
            true,
            false,
            &["encrypted".into()],
            &["team=web".into()],
        )
        .expect("spec");
        assert_eq!(
            spec.subnet.map(|s| s.to_string()).as_deref(),
            Some("10.0.9.0/24")
        );
        assert!(spec.internal && spec.encrypted && !spec.attachable);
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("web"));
        let err = |driver: &str, subnet: Option<&str>, opt: &str| {
            create_spec("x", driver, subnet, false, false, &[opt.to_string()], &[])
                .unwrap_err()
                .to_string()
        };
        assert!(err("bridge", None, "encrypted").starts_with("--driver: network driver \"bridge\""));
        assert!(
            err("overlay", Some("10.0.9.1/24"), "encrypted").contains("did you mean 10.0.9.0/24")
        );
        assert!(err("overlay", None, "mtu=1400").contains("unknown option \"mtu\""));
    }
}
