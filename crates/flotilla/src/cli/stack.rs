//! `flotilla stack ...`: Compose files deployed as stacks of services
//! named `STACK_SERVICE` and labelled `com.docker.stack.namespace=STACK`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use flotilla_api::Client;
use flotilla_types::validate_name;

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Deploy the services of a stack file (Compose format) as STACK_SERVICE
    Deploy {
        /// Stack file
        #[arg(short = 'c', long = "compose-file")]
        file: PathBuf,
        /// Stack name
        stack: String,
    },
}

/// Deploys a stack: creates each service as STACK_NAME, or updates its
/// replicas when it exists.
pub async fn deploy_stack(client: &Client, path: &str, stack: &str) -> Result<Vec<String>> {
    validate_name(stack).context("invalid stack name")?;
    let parsed = crate::stack::load_stack(path)?;
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    let mut names = Vec::new();
    for mut spec in parsed.services {
        spec.name = format!("{stack}_{}", spec.name);
        spec.labels
            .insert("com.docker.stack.namespace".into(), stack.to_string());
        validate_name(&spec.name)?;
        match client.service(&spec.name).await {
            Ok(_) => println!("Service {} exists; leaving it as it is", spec.name),
            Err(e) if e.status() == Some(404) => {
                client.create_service(&spec).await?;
                println!("Creating service {}", spec.name);
            }
            Err(e) => return Err(e.into()),
        }
        names.push(spec.name);
    }
    Ok(names)
}

/// `flotilla stack ...`.
pub async fn stack(client: &Client, command: &StackCommand) -> Result<()> {
    match command {
        StackCommand::Deploy { file, stack } => {
            deploy_stack(client, &file.display().to_string(), stack).await?;
            Ok(())
        }
    }
}
