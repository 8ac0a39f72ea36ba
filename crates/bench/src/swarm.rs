//! The peer: Docker Swarm mode on the local Docker Engine, driven through
//! the `docker` CLI. No image can be pulled, so the bench builds a tiny
//! FROM-scratch image around Debian's static busybox.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::procs;
use crate::stats::Summary;

pub const IMAGE: &str = "flotilla-bench-busybox:latest";
const BUSYBOX: &str = "/bin/busybox";
/// Every service the bench creates starts with this.
const PREFIX: &str = "bench-";
/// How long one ordinary `docker` command may take.
const CMD_DEADLINE: Duration = Duration::from_secs(60);
/// How long 50 replicas may take to run.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(300);
/// How long removed services' containers may take to go.
const REMOVE_DEADLINE: Duration = Duration::from_secs(120);
/// Between polls of `docker service ls` (each poll is itself a CLI run).
const POLL: Duration = Duration::from_millis(50);

/// Runs `docker ARGS`, returning its stdout, or failing with its stderr.
pub async fn docker(args: &[&str], deadline: Duration) -> Result<String> {
    let what = format!("docker {}", args.join(" "));
    let out = tokio::time::timeout(
        deadline,
        tokio::process::Command::new("docker")
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("timed out after {deadline:?} waiting for {what}"))?
    .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Blocking `docker ARGS` for cleanup, which may run in `Drop`.
fn docker_blocking(args: &[&str], deadline: Duration) -> Result<String> {
    let out = procs::run_blocking("docker", args, deadline)?;
    if !out.status.success() {
        bail!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The local engine in swarm mode, with the bench image. Dropping it removes
/// what the bench created: its services (waiting for their containers), the
/// swarm if the bench initialised it, and the image if the bench built it.
pub struct Swarm {
    pub engine_version: String,
    /// dockerd's RSS (KiB) before the bench initialised the swarm, if it did.
    pub dockerd_before_init_kib: Option<u64>,
    created_swarm: bool,
    built_image: bool,
    cleaned: bool,
}

/// Why the peer was not measured.
pub type SkipReason = String;

impl Swarm {
    /// Checks the engine, joins or makes a one-node swarm, builds the image.
    pub async fn prepare() -> std::result::Result<Swarm, SkipReason> {
        let engine_version = docker(
            &["version", "--format", "{{.Server.Version}}"],
            Duration::from_secs(20),
        )
        .await
        .map_err(|e| format!("the Docker Engine is not reachable: {e:#}"))?
        .trim()
        .to_string();
        if !Path::new(BUSYBOX).exists() {
            return Err(format!(
                "{BUSYBOX} is missing (needed for the bench image); run scripts/bench-deps.sh"
            ));
        }
        let state = docker(
            &[
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
            ],
            Duration::from_secs(20),
        )
        .await
        .map_err(|e| format!("cannot read the engine's swarm state: {e:#}"))?;
        let mut swarm = Swarm {
            engine_version,
            dockerd_before_init_kib: None,
            created_swarm: false,
            built_image: false,
            cleaned: false,
        };
        match state.trim() {
            "active true" => {}
            "inactive false" | "inactive true" => {
                swarm.dockerd_before_init_kib = Swarm::engine_rss().ok().map(|(d, _)| d);
                docker(
                    &["swarm", "init", "--advertise-addr", "127.0.0.1"],
                    CMD_DEADLINE,
                )
                .await
                .map_err(|e| format!("docker swarm init failed: {e:#}"))?;
                swarm.created_swarm = true;
                swarm
                    .wait_manager()
                    .await
                    .map_err(|e| format!("{e:#}"))?;
            }
            other => {
                return Err(format!(
                    "the engine is in swarm state {other:?} (state, is manager); the bench needs a manager or no swarm"
                ))
            }
        }
        swarm
            .ensure_image()
            .await
            .map_err(|e| format!("cannot build {IMAGE}: {e:#}"))?;
        Ok(swarm)
    }

    async fn wait_manager(&self) -> Result<()> {
        let deadline = Duration::from_secs(30);
        let start = Instant::now();
        loop {
            match docker(&["node", "ls", "-q"], Duration::from_secs(10)).await {
                Ok(out) if !out.trim().is_empty() => return Ok(()),
                Ok(_) | Err(_) if start.elapsed() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(_) => {
                    bail!("timed out after {deadline:?} waiting for the new swarm to list its node")
                }
                Err(e) => {
                    bail!("timed out after {deadline:?} waiting for the new swarm to answer: {e:#}")
                }
            }
        }
    }

    async fn ensure_image(&mut self) -> Result<()> {
        if docker(
            &["image", "inspect", "--format", "{{.Id}}", IMAGE],
            CMD_DEADLINE,
        )
        .await
        .is_ok()
        {
            return Ok(());
        }
        let ctx = tempfile::Builder::new()
            .prefix("flotilla-bench-image-")
            .tempdir()
            .context("creating the build context")?;
        std::fs::copy(BUSYBOX, ctx.path().join("busybox"))
            .with_context(|| format!("copying {BUSYBOX} into the build context"))?;
        // busybox picks the applet from argv[0], so copies named sleep and sh
        // are those programs. A scratch image has no shell to RUN anything.
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\n\
             COPY busybox /bin/busybox\n\
             COPY busybox /bin/sh\n\
             COPY busybox /bin/sleep\n\
             ENV PATH=/bin\n\
             CMD [\"sleep\", \"100000\"]\n",
        )
        .context("writing the Dockerfile")?;
        let dir = ctx.path().to_string_lossy().into_owned();
        docker(
            &["build", "-q", "-t", IMAGE, &dir],
            Duration::from_secs(300),
        )
        .await?;
        self.built_image = true;
        Ok(())
    }

    /// dockerd's and containerd's RSS in KiB (containerd if found).
    pub fn engine_rss() -> Result<(u64, Option<u64>)> {
        let dockerd = procs::rss_kib(procs::pidof("dockerd")?)?;
        let containerd = procs::pidof("containerd").and_then(procs::rss_kib).ok();
        Ok((dockerd, containerd))
    }

    /// `docker service create` of `replicas` tasks until `service ls` shows
    /// them all running. Returns milestones and the total.
    pub async fn converge(&self, replicas: u64) -> Result<(Vec<(String, Duration)>, Duration)> {
        let name = format!("{PREFIX}web");
        let replicas_arg = replicas.to_string();
        let start = Instant::now();
        docker(&create_args(&name, &replicas_arg), CMD_DEADLINE).await?;
        let thresholds: Vec<(String, u64)> = vec![
            ("first".to_string(), 1),
            ("25%".to_string(), replicas.div_ceil(4)),
            ("50%".to_string(), replicas.div_ceil(2)),
            ("75%".to_string(), (replicas * 3).div_ceil(4)),
        ];
        let mut milestones = Vec::new();
        loop {
            let out = docker(
                &[
                    "service",
                    "ls",
                    "--filter",
                    &format!("name={name}"),
                    "--format",
                    "{{.Name}} {{.Replicas}}",
                ],
                CMD_DEADLINE,
            )
            .await?;
            let now = start.elapsed();
            let running = out
                .lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(n, _)| *n == name)
                .and_then(|(_, r)| r.split('/').next())
                .and_then(|r| r.trim().parse::<u64>().ok())
                .unwrap_or(0);
            for (label, at) in &thresholds {
                if running >= *at && !milestones.iter().any(|(l, _)| l == label) {
                    milestones.push((label.clone(), now));
                }
            }
            if running >= replicas {
                milestones.push(("100%".to_string(), now));
                return Ok((milestones, now));
            }
            if now >= CONVERGE_DEADLINE {
                bail!("timed out after {CONVERGE_DEADLINE:?} waiting for {name} to show {replicas}/{replicas} in docker service ls: {running} running");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `docker service rm NAME` until its containers are gone.
    pub async fn remove(&self, name: &str) -> Result<Duration> {
        let start = Instant::now();
        docker(&["service", "rm", name], CMD_DEADLINE).await?;
        let filter = format!("label=com.docker.swarm.service.name={name}");
        loop {
            let out = docker(&["ps", "-aq", "--filter", &filter], CMD_DEADLINE).await?;
            let left = out.lines().filter(|l| !l.trim().is_empty()).count();
            if left == 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= REMOVE_DEADLINE {
                bail!("timed out after {REMOVE_DEADLINE:?} waiting for the {left} remaining container(s) of {name} to go");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `docker service create --detach --replicas 0` through the CLI.
    pub async fn create_latency(&self, samples: usize) -> Result<Summary> {
        let mut times = Vec::with_capacity(samples);
        for i in 0..samples {
            let name = format!("{PREFIX}lat-{i}");
            let start = Instant::now();
            docker(&create_args(&name, "0"), CMD_DEADLINE).await?;
            times.push(start.elapsed());
        }
        Summary::of(&times).ok_or_else(|| anyhow!("no samples"))
    }

    /// Removes the bench's services and waits for their containers, leaves
    /// the swarm if the bench made it, removes the image if it built it.
    pub fn cleanup(&mut self) -> Result<Vec<String>> {
        if self.cleaned {
            return Ok(Vec::new());
        }
        self.cleaned = true;
        let mut notes = Vec::new();
        let mut errors = Vec::new();
        let list = docker_blocking(
            &[
                "service",
                "ls",
                "--filter",
                &format!("name={PREFIX}"),
                "--format",
                "{{.Name}}",
            ],
            CMD_DEADLINE,
        );
        match list {
            Ok(out) => {
                let names: Vec<&str> = out
                    .lines()
                    .map(str::trim)
                    .filter(|n| n.starts_with(PREFIX))
                    .collect();
                if !names.is_empty() {
                    let mut args = vec!["service", "rm"];
                    args.extend(names.iter().copied());
                    match docker_blocking(&args, CMD_DEADLINE) {
                        Ok(_) => notes.push(format!("removed {} Swarm service(s)", names.len())),
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                }
            }
            Err(e) => errors.push(format!("listing the bench's Swarm services: {e:#}")),
        }
        if let Err(e) = wait_no_bench_containers() {
            errors.push(format!("{e:#}"));
        }
        if self.created_swarm {
            match docker_blocking(&["swarm", "leave", "--force"], CMD_DEADLINE) {
                Ok(_) => notes.push("left the swarm the bench had created".to_string()),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if self.built_image {
            match docker_blocking(&["image", "rm", IMAGE], CMD_DEADLINE) {
                Ok(_) => notes.push(format!("removed the image {IMAGE}")),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if errors.is_empty() {
            Ok(notes)
        } else {
            Err(anyhow!("Swarm cleanup: {}", errors.join("; ")))
        }
    }
}

fn create_args<'a>(name: &'a str, replicas: &'a str) -> Vec<&'a str> {
    vec![
        "service",
        "create",
        "--detach",
        // The image is local; do not ask a registry for its digest.
        "--no-resolve-image",
        // docker-init as PID 1 forwards SIGTERM, so sleep stops at once as
        // it does under Flotilla (a bare PID-1 sleep would ignore it and be
        // SIGKILLed only after the 10 s grace period).
        "--init",
        "--name",
        name,
        "--replicas",
        replicas,
        IMAGE,
        "sleep",
        "100000",
    ]
}

/// Waits until no container of a bench service is left.
fn wait_no_bench_containers() -> Result<()> {
    let start = Instant::now();
    loop {
        let out = docker_blocking(
            &[
                "ps",
                "-a",
                "--format",
                "{{.Label \"com.docker.swarm.service.name\"}}",
            ],
            CMD_DEADLINE,
        )?;
        let left = out.lines().filter(|l| l.trim().starts_with(PREFIX)).count();
        if left == 0 {
            return Ok(());
        }
        if start.elapsed() >= REMOVE_DEADLINE {
            bail!(
                "timed out after {REMOVE_DEADLINE:?} waiting for {left} bench container(s) to go"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("cleanup failed: {e:#}");
        }
    }
}
