//! `flotilla dev`: a one-node cluster in the foreground on a fresh data dir,
//! with a stack deployed into it, in the spirit of `nomad agent -dev`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use flotilla_api::model::InitRequest;
use flotilla_api::Client;

use crate::cli::DevArgs;
use flotilla_node::{self as daemon, DaemonConfig};

/// Runs the dev node until `shutdown` is cancelled.
pub async fn run(
    args: &DevArgs,
    data_dir: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<()> {
    let (dir, temp) = match data_dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("flotilla-dev-")
                .tempdir()
                .context("cannot make a temporary data dir")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut config = DaemonConfig::new(dir.clone());
    // A dev node is alone: keep its ports private and off the defaults,
    // so that it never collides with a real node. The client API port is
    // there for the dashboard.
    config.listen = "127.0.0.1:0".into();
    config.api_listen = Some("127.0.0.1:0".into());
    let daemon_token = shutdown.child_token();
    let daemon = tokio::spawn(daemon::run(config, daemon_token.clone()));
    let result = setup(args, &dir).await;
    if result.is_ok() {
        shutdown.cancelled().await;
        eprintln!("\nStopping the dev node and its tasks...");
    }
    daemon_token.cancel();
    let stopped = daemon.await;
    match (temp, args.keep) {
        (Some(t), true) => {
            let kept = t.keep();
            eprintln!("Data dir kept at {}", kept.display());
        }
        (Some(t), false) => drop(t),
        (None, _) => {}
    }
    result?;
    match stopped {
        Ok(r) => r,
        Err(e) => bail!("the dev daemon crashed: {e}"),
    }
}

async fn setup(args: &DevArgs, dir: &std::path::Path) -> Result<()> {
    let client = Client::unix(daemon::socket_path(dir));
    let deadline = Instant::now() + Duration::from_secs(15);
    let info = loop {
        match client.info().await {
            Ok(i) => break i,
            Err(e) if Instant::now() >= deadline => {
                bail!("timed out after 15s waiting for the dev daemon to answer: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    if info.cluster_id.is_none() {
        client.init(&InitRequest::default()).await?;
    }
    let mut names = Vec::new();
    if let Some(file) = &args.stack_file {
        let path = file.display().to_string();
        names = crate::cli::stack::deploy_stack(&client, &[&path], &args.stack, false).await?;
    }
    let d = dir.display();
    println!();
    println!("Flotilla dev node is running: a one-node cluster, data dir {d}");
    println!("In another terminal:");
    println!("  export FLOTILLA_DATA_DIR={d}");
    println!("  flotilla info");
    println!("  flotilla service ls");
    for n in &names {
        println!("  flotilla service ps {n}");
        println!("  flotilla service logs --follow {n}");
    }
    if let Some(first) = names.first() {
        println!("  flotilla service scale {first}=5");
    }
    if let Ok(services) = client.services().await {
        for s in services.iter().filter(|s| names.contains(&s.name)) {
            for p in &s.published {
                println!(
                    "  curl http://127.0.0.1:{}/    # {} through the mesh: each call lands on the next replica",
                    p.published, s.name
                );
            }
        }
    }
    println!("  flotilla service create --name hello --replicas 2 -- sleep 100000");
    match client
        .ui_token(&flotilla_api::model::UiTokenRequest::default())
        .await
    {
        Ok(t) => {
            if let Some(url) = t.url {
                println!("Dashboard (the browser warns of the cluster's own certificate):");
                println!("  {url}");
            }
        }
        Err(e) => eprintln!("no dashboard login: {e}"),
    }
    println!("Press Ctrl-C to stop: tasks are stopped and the data dir is removed.");
    Ok(())
}
