//! Containers end to end, as the issue's acceptance steps: a Compose stack
//! of a locally built busybox image with a health check and a paced update
//! config, a failing update that rolls back by itself, a start-first update
//! that keeps every slot healthy, and no container left behind. Needs a
//! Docker Engine (scripts/test-deps.sh starts one); no registry is used.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use flotilla_testkit::image::{busybox_image, docker_available};
use flotilla_testkit::{wait_until, CliOutput, Daemon};
use serde_json::Value;

const SERVICE: &str = "demo_web";
const CRASH_SERVICE: &str = "crash_web";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// `docker ARGS` with `stdin` fed in, failing with its stderr.
fn docker(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running docker")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Images `flotilla-test/web:1` and `:3` serve HTTP on 8080; `:2` runs
/// but serves nothing, so its health check fails.
fn build_images() -> Result<()> {
    if !docker_available() {
        bail!("no Docker Engine answers (docker info); scripts/test-deps.sh starts one");
    }
    let base = busybox_image("flotilla-test/busybox:1", None)?;
    let serve = r#"CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]"#;
    for (tag, cmd) in [
        ("1", serve.to_string()),
        ("2", r#"CMD ["sleep", "100000"]"#.to_string()),
        ("3", format!("{serve}\nLABEL version=3")),
    ] {
        let dockerfile = format!("FROM {base}\n{cmd}\n");
        docker(
            &[
                "build",
                "-q",
                "-t",
                &format!("flotilla-test/web:{tag}"),
                "-",
            ],
            Some(&dockerfile),
        )?;
    }
    Ok(())
}

const STACK: &str = r#"
services:
  web:
    image: flotilla-test/web:${TAG}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 300ms
      timeout: 2s
      retries: 2
    stop_grace_period: 1s
    deploy:
      replicas: 3
      update_config:
        parallelism: 1
        delay: 2s
        failure_action: rollback
        monitor: 1s
        order: ${ORDER:-stop-first}
      rollback_config:
        parallelism: 0
        monitor: 1s
"#;

/// Removes a test's containers (of one service name) even when it fails.
struct Containers(&'static str);

impl Drop for Containers {
    fn drop(&mut self) {
        if let Ok(ids) = containers_of(self.0) {
            for id in ids {
                let _ = docker(&["rm", "-f", &id], None);
            }
        }
    }
}

fn containers() -> Result<Vec<String>> {
    containers_of(SERVICE)
}

/// IDs of the containers labelled with Flotilla service `name`.
fn containers_of(name: &str) -> Result<Vec<String>> {
    let filter = format!("label=com.flotilla.service.name={name}");
    Ok(docker(&["ps", "-aq", "--filter", &filter], None)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn deploy(d: &Daemon, file: &Path, tag: &str, order: &str, detach: bool) -> Result<CliOutput> {
    let file = file.to_string_lossy();
    let mut args = vec!["stack", "deploy", "-c", &file];
    if detach {
        args.push("--detach");
    }
    args.push("demo");
    let out = Command::new(bin())
        .arg("--data-dir")
        .arg(d.data_dir())
        .args(&args)
        .env("TAG", tag)
        .env("ORDER", order)
        .output()?;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn current_tasks(d: &Daemon) -> Result<Vec<Value>> {
    Ok(d.tasks(SERVICE)?
        .into_iter()
        .filter(|t| t["current"] == true)
        .collect())
}

/// Images of the current tasks that run and are healthy, sorted.
fn healthy_images(d: &Daemon) -> Result<Vec<String>> {
    let mut out: Vec<String> = current_tasks(d)?
        .iter()
        .filter(|t| t["state"] == "running" && t["health"] == "healthy")
        .filter_map(|t| t["image"].as_str().map(String::from))
        .collect();
    out.sort();
    Ok(out)
}

#[test]
fn a_stack_of_containers_updates_safely() -> Result<()> {
    let _cleanup = Containers(SERVICE);
    build_images()?;
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("stack.yml");
    std::fs::write(&file, STACK)?;

    // Deploy: waits for 3 running, healthy tasks.
    let out = deploy(&d, &file, "1", "stop-first", false)?;
    assert_eq!(out.code, 0, "deploy: {} {}", out.stdout, out.stderr);
    let ps = d.ok(&["stack", "ps", "demo"])?.stdout;
    assert_eq!(ps.matches("healthy").count(), 3, "{ps}");
    assert_eq!(ps.matches("flotilla-test/web:1").count(), 3, "{ps}");
    assert_eq!(containers()?.len(), 3);
    let one = "flotilla-test/web:1".to_string();
    assert_eq!(healthy_images(&d)?, [one.clone(), one.clone(), one.clone()]);

    // A tag whose check fails: the first slot fails, the update rolls back
    // by itself, and every task ends on the old image.
    let out = deploy(&d, &file, "2", "stop-first", false)?;
    assert_ne!(out.code, 0, "the bad update must fail: {}", out.stdout);
    assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
    let s = d.service(SERVICE)?;
    assert_eq!(s["update_status"]["state"], "rollback_completed");
    let why = s["update_status"]["message"].as_str().unwrap_or("");
    assert!(why.contains("update rolled back due to failure"), "{why}");
    wait_until(
        "3 healthy tasks on the old image",
        Duration::from_secs(30),
        || Ok((healthy_images(&d)? == [one.clone(), one.clone(), one.clone()]).then_some(())),
    )?;
    let tried: Vec<u64> = d
        .tasks(SERVICE)?
        .iter()
        .filter(|t| t["image"] == "flotilla-test/web:2")
        .filter_map(|t| t["slot"].as_u64())
        .collect();
    assert!(!tried.is_empty(), "the bad image was never tried");
    assert!(
        tried.iter().all(|s| *s == tried[0]),
        "the update went past its first slot: {tried:?}"
    );

    // A good update, start-first: never fewer than 3 healthy tasks.
    let out = deploy(&d, &file, "3", "start-first", true)?;
    assert_eq!(out.code, 0, "deploy: {} {}", out.stdout, out.stderr);
    let mut lowest = usize::MAX;
    wait_until(
        "the start-first update to complete",
        Duration::from_secs(90),
        || {
            lowest = lowest.min(healthy_images(&d)?.len());
            let done = d.service(SERVICE)?["update_status"]["state"] == "completed";
            Ok(done.then_some(()))
        },
    )?;
    assert!(
        lowest >= 3,
        "healthy tasks fell to {lowest} during the update"
    );
    let three = "flotilla-test/web:3".to_string();
    wait_until(
        "3 healthy tasks on the new image",
        Duration::from_secs(30),
        || Ok((healthy_images(&d)? == [three.clone(), three.clone(), three.clone()]).then_some(())),
    )?;

    // No container is left behind.
    d.ok(&["stack", "rm", "demo"])?;
    wait_until("every container to go", Duration::from_secs(30), || {
        Ok(containers()?.is_empty().then_some(()))
    })?;
    Ok(())
}

/// Running task containers of `name`, as (task id, container id), sorted.
fn task_containers(d: &Daemon, name: &str) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = d
        .tasks(name)?
        .iter()
        .filter(|t| t["current"] == true && t["state"] == "running")
        .filter_map(|t| {
            Some((
                t["id"].as_str()?.to_string(),
                t["container_id"].as_str()?.to_string(),
            ))
        })
        .collect();
    out.sort();
    Ok(out)
}

#[test]
fn containers_survive_a_daemon_crash_and_strays_are_removed() -> Result<()> {
    let _cleanup = Containers(CRASH_SERVICE);
    build_images()?;
    let mut d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    d.ok(&[
        "service",
        "create",
        "--name",
        CRASH_SERVICE,
        "--replicas",
        "2",
        "--image",
        "flotilla-test/web:1",
        "--stop-grace-period",
        "1s",
    ])?;
    let before = task_containers(&d, CRASH_SERVICE)?;
    assert_eq!(before.len(), 2, "{before:?}");
    let info = d.ok(&["info", "--format", "json"])?.json()?;
    let node_id = info["node_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no node id in {info}"))?
        .to_string();

    // The daemon dies; a container of no known task appears, as if the
    // daemon had crashed between creating a container and recording it.
    d.kill9()?;
    docker(
        &[
            "run",
            "-d",
            "--label",
            &format!("com.flotilla.service.name={CRASH_SERVICE}"),
            "--label",
            "com.flotilla.task.id=nosuchtask0000000000000",
            "--label",
            &format!("com.flotilla.node.id={node_id}"),
            "flotilla-test/web:1",
        ],
        None,
    )?;
    assert_eq!(containers_of(CRASH_SERVICE)?.len(), 3);
    d.restart()?;

    // The same containers run the same tasks; the stray is gone.
    wait_until(
        "the stray container to be removed",
        Duration::from_secs(30),
        || Ok((containers_of(CRASH_SERVICE)?.len() == 2).then_some(())),
    )?;
    assert_eq!(task_containers(&d, CRASH_SERVICE)?, before);

    d.ok(&["service", "rm", CRASH_SERVICE])?;
    wait_until("every container to go", Duration::from_secs(30), || {
        Ok(containers_of(CRASH_SERVICE)?.is_empty().then_some(()))
    })?;
    Ok(())
}

#[test]
fn an_images_own_healthcheck_is_used_and_a_missing_image_is_rejected() -> Result<()> {
    const NAME: &str = "hc_web";
    let _cleanup = Containers(NAME);
    if !docker_available() {
        bail!("no Docker Engine answers (docker info); scripts/test-deps.sh starts one");
    }
    let image = busybox_image(
        "flotilla-test/own-check:1",
        Some(r#"--interval=300ms --timeout=2s --retries=2 CMD ["test", "-f", "/www/index.html"]"#),
    )?;
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    // No --health-* flag: the image's HEALTHCHECK decides, and create
    // waits until both tasks are healthy. A read-only bind mount carries
    // a file from the node into the containers.
    let shared = tempfile::tempdir()?;
    std::fs::write(shared.path().join("greeting"), "hello from the node")?;
    let mount = format!(
        "type=bind,source={},target=/shared,readonly",
        shared.path().display()
    );
    d.ok(&[
        "service",
        "create",
        "--name",
        NAME,
        "--replicas",
        "2",
        "--image",
        &image,
        "--init",
        "--mount",
        &mount,
        "--",
        "sleep",
        "100000",
    ])?;
    let ls = d.ok(&["service", "ls"])?.stdout;
    assert!(ls.contains("2/2 (2 healthy)"), "{ls}");
    let first = containers_of(NAME)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no container"))?;
    let seen = docker(&["exec", &first, "cat", "/shared/greeting"], None)?;
    assert_eq!(seen, "hello from the node");
    let write = docker(&["exec", &first, "touch", "/shared/nope"], None);
    assert!(write.is_err(), "the mount must be read-only");

    // An image that is nowhere: the pull fails and the task is rejected
    // with the engine's reason.
    d.ok(&[
        "service",
        "create",
        "--name",
        "hc_missing",
        "-d",
        "--restart-condition",
        "none",
        "--image",
        "flotilla-test/nowhere:1",
    ])?;
    let error = wait_until(
        "the missing image's task to be rejected",
        Duration::from_secs(60),
        || {
            Ok(d.tasks("hc_missing")?
                .iter()
                .find(|t| t["state"] == "rejected")
                .map(|t| t["error"].as_str().unwrap_or("").to_string()))
        },
    )?;
    assert!(
        error.contains("cannot pull image flotilla-test/nowhere:1"),
        "{error}"
    );
    d.ok(&["service", "rm", NAME])?;
    wait_until("every container to go", Duration::from_secs(30), || {
        Ok(containers_of(NAME)?.is_empty().then_some(()))
    })?;
    Ok(())
}

/// What a test of one service's containers starts with: the guard that
/// removes its containers, a busybox image tagged `tag`, and a one-node
/// cluster.
fn one_node_with_image(name: &'static str, tag: &str) -> Result<(Containers, String, Daemon)> {
    let cleanup = Containers(name);
    if !docker_available() {
        bail!("no Docker Engine answers (docker info); scripts/test-deps.sh starts one");
    }
    let image = busybox_image(tag, None)?;
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    Ok((cleanup, image, d))
}

/// Issue 12: a container reads its secret at `/run/secrets/NAME` and its
/// config at its target, both read-only, owned and moded as asked; the
/// daemon's data dir holds neither in clear.
#[test]
fn a_container_reads_its_secret_and_config_at_their_paths() -> Result<()> {
    const NAME: &str = "sec_web";
    let (_cleanup, image, d) = one_node_with_image(NAME, "flotilla-test/secrets:1")?;
    let files = tempfile::tempdir()?;
    let secret = "container-secret-9f8e7d";
    let config = "server { listen 8080; } # container config";
    std::fs::write(files.path().join("pw"), secret)?;
    std::fs::write(files.path().join("conf"), config)?;
    let path = |n: &str| files.path().join(n).to_string_lossy().into_owned();
    d.ok(&["secret", "create", "db_pw", &path("pw")])?;
    d.ok(&["config", "create", "nginx", &path("conf")])?;
    d.ok(&[
        "service",
        "create",
        "--name",
        NAME,
        "--image",
        &image,
        "--init",
        "--secret",
        "source=db_pw,uid=1000,gid=1000,mode=0400",
        "--config",
        "source=nginx,target=/etc/nginx/nginx.conf",
        "--",
        "sleep",
        "100000",
    ])?;
    let container = containers_of(NAME)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no container"))?;
    assert_eq!(
        docker(&["exec", &container, "cat", "/run/secrets/db_pw"], None)?,
        secret
    );
    assert_eq!(
        docker(&["exec", &container, "cat", "/etc/nginx/nginx.conf"], None)?,
        config
    );
    let stat = docker(
        &[
            "exec",
            &container,
            "stat",
            "-c",
            "%a %u %g",
            "/run/secrets/db_pw",
        ],
        None,
    )?;
    assert_eq!(stat.trim(), "400 1000 1000");
    let write = docker(
        &[
            "exec",
            &container,
            "sh",
            "-c",
            "echo x > /run/secrets/db_pw",
        ],
        None,
    );
    assert!(write.is_err(), "a secret is read-only");
    let mut stack = vec![d.data_dir().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!found, "{} holds the secret", p.display());
            }
        }
    }
    Ok(())
}

/// Issue 12, item 6: the keys of how a container runs reach it: a host
/// name from Swarm's template, a user, a working directory, a kernel
/// parameter, a read-only root, no capabilities, a line of /etc/hosts, a
/// ulimit, a resolver, a log driver, a template in the environment, and
/// the stop signal that stops it.
#[test]
fn a_container_runs_as_its_keys_say() -> Result<()> {
    const NAME: &str = "keys-web";
    let (_cleanup, image, d) = one_node_with_image(NAME, "flotilla-test/keys:1")?;
    // As PID 1 the shell ignores a signal it has no handler for: only
    // SIGINT, its stop signal, ends it before the grace period does.
    let script = "trap 'echo got SIGINT; exit 0' INT; echo started; while true; do sleep 1; done";
    d.ok(&[
        "service",
        "create",
        "--name",
        NAME,
        "--image",
        &image,
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}",
        "--env",
        "SLOT={{.Task.Slot}}",
        "--user",
        "1000:1000",
        "--workdir",
        "/tmp",
        "--sysctl",
        "net.ipv4.ip_unprivileged_port_start=0",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--add-host",
        "myhost:10.1.2.3",
        "--ulimit",
        "nofile=1024:2048",
        "--dns",
        "10.0.0.53",
        "--dns-search",
        "example.org",
        "--log-driver",
        "json-file",
        "--log-opt",
        "max-size=1m",
        "--stop-signal",
        "SIGINT",
        "--stop-grace-period",
        "30s",
        "--",
        "sh",
        "-c",
        script,
    ])?;
    let container = containers_of(NAME)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no container"))?;
    let exec = |argv: &[&str]| -> Result<String> {
        let mut args = vec!["exec", container.as_str()];
        args.extend(argv);
        Ok(docker(&args, None)?.trim().to_string())
    };
    assert_eq!(exec(&["hostname"])?, "keys-web-1");
    assert_eq!(exec(&["sh", "-c", "echo $SLOT"])?, "1");
    assert_eq!(exec(&["id", "-u"])?, "1000");
    assert_eq!(exec(&["id", "-g"])?, "1000");
    assert_eq!(exec(&["pwd"])?, "/tmp");
    assert_eq!(
        exec(&["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"])?,
        "0"
    );
    assert!(
        exec(&["touch", "/written"]).is_err(),
        "the root file system must be read-only"
    );
    let bounding = exec(&["grep", "CapBnd", "/proc/1/status"])?;
    assert!(bounding.ends_with("0000000000000000"), "{bounding}");
    let hosts = exec(&["grep", "myhost", "/etc/hosts"])?;
    assert!(hosts.starts_with("10.1.2.3"), "{hosts}");
    assert_eq!(exec(&["sh", "-c", "ulimit -n"])?, "1024");
    let resolv = exec(&["cat", "/etc/resolv.conf"])?;
    assert!(resolv.contains("nameserver 10.0.0.53"), "{resolv}");
    assert!(resolv.contains("search example.org"), "{resolv}");
    let inspect = docker(
        &[
            "inspect",
            "-f",
            "{{.Config.StopSignal}} {{.HostConfig.LogConfig.Type}} {{index .HostConfig.LogConfig.Config \"max-size\"}}",
            &container,
        ],
        None,
    )?;
    assert_eq!(inspect.trim(), "SIGINT json-file 1m");

    // A forced update stops the task with SIGINT, well within the grace
    // period that SIGTERM would have waited out.
    let started = std::time::Instant::now();
    d.ok(&["service", "update", "--force", NAME])?;
    wait_until("the old task to end", Duration::from_secs(60), || {
        Ok(d.tasks(NAME)?
            .iter()
            .any(|t| t["current"] != true && t["state"] == "shutdown")
            .then_some(()))
    })?;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the stop took {:?}: the stop signal was not SIGINT",
        started.elapsed()
    );
    let logs = d.ok(&["service", "logs", NAME])?.stdout;
    assert!(logs.contains("got SIGINT"), "{logs}");

    d.ok(&["service", "rm", NAME])?;
    wait_until("every container to go", Duration::from_secs(60), || {
        Ok(containers_of(NAME)?.is_empty().then_some(()))
    })?;
    Ok(())
}
