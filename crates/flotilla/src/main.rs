//! The `flotilla` command: node daemon and CLI in one binary.

use std::process::ExitCode;

use clap::Parser;

use tokio_util::sync::CancellationToken;

use flotilla::cli::{commands, Cli, Command};
use flotilla_node::{self as daemon, DaemonConfig};

fn init_logging(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancels the token on SIGTERM or SIGINT.
fn on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

/// The client the CLI talks through: the local daemon's socket, or with
/// `--host` the managers' client API with a client certificate.
fn make_client(cli: &Cli, data_dir: &std::path::Path) -> anyhow::Result<flotilla_api::Client> {
    use anyhow::Context;
    if cli.host.is_empty() {
        return Ok(flotilla_api::Client::unix(daemon::socket_path(data_dir)));
    }
    let dir = match &cli.tls_dir {
        Some(d) => d.clone(),
        None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".flotilla/tls"),
    };
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (make a client certificate with 'flotilla client-cert --out {}' on a manager)",
                path.display(),
                dir.display()
            )
        })
    };
    let config = flotilla_pki::tls::client_config(
        &read("ca.crt")?,
        &read("client.crt")?,
        &read("client.key")?,
    )?;
    Ok(flotilla_api::Client::remote(cli.host.clone(), config)?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(flotilla::default_data_dir);
    let made = make_client(&cli, &data_dir);
    let client = || -> anyhow::Result<flotilla_api::Client> {
        match &made {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        }
    };
    let result = dispatch(&cli, data_dir.clone(), &client).await;
    if let Ok(c) = &made {
        for w in c.take_warnings() {
            eprintln!("warning: {w}");
        }
    }
    result
}

async fn dispatch(
    cli: &Cli,
    data_dir: std::path::PathBuf,
    client: &dyn Fn() -> anyhow::Result<flotilla_api::Client>,
) -> anyhow::Result<()> {
    match &cli.command {
        Command::Version => {
            println!(
                "flotilla {} (commit {})",
                env!("CARGO_PKG_VERSION"),
                env!("FLOTILLA_COMMIT")
            );
            Ok(())
        }
        Command::Completion { shell } => {
            flotilla::cli::docs::completion(*shell, &mut std::io::stdout())
        }
        Command::Man { dir } => flotilla::cli::docs::man_pages(dir),
        Command::Daemon(args) => {
            init_logging(
                args.log_json || args.log_format == flotilla::cli::options::LogFormat::Json,
                "info",
            );
            let token = CancellationToken::new();
            on_signals(token.clone())?;
            let mut config = DaemonConfig::new(data_dir.clone());
            config.name = args.name.clone();
            config.listen = args.listen.clone();
            config.advertise = args.advertise_addr.clone();
            config.metrics_listen = args.metrics_listen.clone();
            config.keep_tasks_on_stop = args.keep_tasks_on_stop;
            let ms = |flag: &str, v: &str| {
                flotilla_types::parse_duration_ms(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
            };
            let heartbeat = ms("heartbeat-interval", &args.heartbeat_interval)?;
            let election = ms("election-timeout", &args.election_timeout)?;
            let node_timeout = ms("node-timeout", &args.node_timeout)?;
            // The election timeout is also the leader's lease, which a
            // healthy leader renews every 1.5 heartbeats plus one
            // AppendEntries (docs/store.md, "Raft timings").
            if heartbeat == 0 || election < heartbeat * 3 {
                anyhow::bail!("--election-timeout must be at least three times --heartbeat-interval (and both above 0)");
            }
            if node_timeout < 500 {
                anyhow::bail!("--node-timeout must be at least 500ms");
            }
            config.timings.heartbeat_ms = heartbeat;
            config.timings.election_min_ms = election;
            config.timings.election_max_ms = election + election / 2;
            config.node_timeout = std::time::Duration::from_millis(node_timeout);
            config.timings.snapshot_every = args.snapshot_every;
            config.api_listen = match args.api_listen.as_str() {
                "" | "none" => None,
                a => Some(a.to_string()),
            };
            daemon::run(config, token).await
        }
        Command::Dev(args) => {
            init_logging(false, "warn");
            let token = CancellationToken::new();
            on_signals(token.clone())?;
            flotilla::dev::run(args, cli.data_dir.clone(), token).await
        }
        Command::Demo(flotilla::cli::options::DemoCommand::Http { port, delay }) => {
            let delay = flotilla_types::parse_duration_ms(delay)
                .map_err(|e| anyhow::anyhow!("--delay: {e}"))?;
            flotilla::demo::http(*port, std::time::Duration::from_millis(delay)).await
        }
        Command::Demo(flotilla::cli::options::DemoCommand::Udp { port }) => {
            flotilla::demo::udp(*port).await
        }
        Command::Init(args) => commands::init(&client()?, args).await,
        Command::Info(f) => commands::info(&client()?, f.format).await,
        Command::Join(a) => commands::join(&client()?, a).await,
        Command::JoinToken(a) => commands::join_token(&client()?, a).await,
        Command::Unlock => flotilla::cli::autolock::unlock(&client()?).await,
        Command::UnlockKey { quiet, rotate } => {
            flotilla::cli::autolock::unlock_key(&client()?, *rotate, *quiet).await
        }
        Command::Cluster(flotilla::cli::options::ClusterCommand::Update { autolock }) => {
            flotilla::cli::autolock::update(&client()?, *autolock).await
        }
        Command::Backup {
            output,
            passphrase_file,
            schedule,
            keep,
            dir,
        } => match (output, schedule) {
            (Some(out), _) => {
                flotilla::cli::backup::backup(&client()?, out, passphrase_file.as_deref()).await
            }
            (None, every) => {
                flotilla::cli::backup::schedule(&client()?, every.as_deref(), *keep, dir.as_deref())
                    .await
            }
        },
        Command::Restore {
            file,
            passphrase_file,
            unlock_key_file,
            advertise_addr,
        } => {
            flotilla::cli::backup::restore(
                &client()?,
                file,
                passphrase_file.as_deref(),
                unlock_key_file.as_deref(),
                advertise_addr.as_deref(),
            )
            .await
        }
        Command::ClientCert { name, out } => commands::client_cert(&client()?, name, out).await,
        Command::UiToken { ttl, quiet } => {
            commands::ui_token(&client()?, ttl.as_deref(), *quiet).await
        }
        Command::LeaderCheck => commands::leader_check(&client()?).await,
        Command::Leave { force } => {
            client()?
                .with_timeout(std::time::Duration::from_secs(180))
                .leave(*force)
                .await?;
            println!("Node left the cluster.");
            Ok(())
        }
        Command::Node(c) => commands::node(&client()?, c).await,
        Command::Service(c) => commands::service(&client()?, c).await,
        Command::Mesh(c) => commands::mesh(&client()?, c).await,
        Command::Network(c) => flotilla::cli::networks::network(&client()?, c).await,
        Command::Secret(c) => {
            flotilla::cli::secrets::secret(&client()?, flotilla_types::SecretKind::Secret, c).await
        }
        Command::Config(c) => {
            flotilla::cli::secrets::secret(&client()?, flotilla_types::SecretKind::Config, c).await
        }
        Command::Resolve {
            name,
            from,
            rtype,
            format,
        } => {
            flotilla::cli::networks::resolve(
                &client()?,
                name,
                from.as_deref(),
                rtype,
                format.format,
            )
            .await
        }
        Command::List {
            service,
            label,
            format,
        } => commands::list(&client()?, service.as_deref(), label, format.format).await,
        Command::Stack(c) => flotilla::cli::stack::stack(&client()?, c).await,
    }
}

/// Puts this binary's directory first on `PATH`, so that the dev node's
/// tasks (which inherit the daemon's environment) run `flotilla demo
/// http` as this very binary. Called before any thread starts: changing
/// the environment is safe only then.
fn with_own_dir_on_path() {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(std::path::Path::to_path_buf))
    else {
        return;
    };
    let mut paths = vec![dir];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    if let Ok(joined) = std::env::join_paths(paths) {
        std::env::set_var("PATH", joined);
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap explains with usage and tips over several lines; keep the
            // first, which names the problem.
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("Error: {first} (see 'flotilla --help')");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Dev(_)) {
        with_own_dir_on_path();
    }
    // A command whose output goes to a reader that stops early (`| head`)
    // ends quietly, as other command-line tools do, rather than panic on
    // the failed write. Not the daemon or dev mode: they write to pipes of
    // their tasks, whose end must not kill them.
    if !matches!(cli.command, Command::Daemon(_) | Command::Dev(_)) {
        // SAFETY: setting a signal's disposition to its default, before
        // any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and its cause.
            let mut text = e.to_string();
            if let Some(cause) = e.chain().nth(1) {
                let cause = cause.to_string();
                if !text.contains(&cause) {
                    text = format!("{text}: {cause}");
                }
            }
            eprintln!("Error: {text}");
            ExitCode::FAILURE
        }
    }
}
