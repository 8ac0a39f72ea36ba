//! `flotilla stack` end to end: the real binary as daemon and CLI, with
//! process-driver stacks (`x-flotilla.driver: process`), as a Swarm user
//! would drive it: deploy, redeploy, update one service, prune, list, remove,
//! refuse bad files without writing anything, and print the merged config.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use flotilla_testkit::{one_line_error, wait_until, Daemon};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn cluster() -> Result<Daemon> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    Ok(d)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

/// A service as `service ls --format json` shows it: name, version, env,
/// running and desired tasks.
type Listed = (String, u64, Value, u64, u64);

fn services(d: &Daemon) -> Result<Vec<Listed>> {
    let list = d.ok(&["service", "ls", "--format", "json"])?.json()?;
    let list = list.as_array().ok_or_else(|| anyhow!("not a list"))?;
    Ok(list
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["version"].as_u64().unwrap_or(0),
                s["spec"]["task"]["env"].clone(),
                s["replicas"]["running"].as_u64().unwrap_or(0),
                s["replicas"]["desired"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn version(d: &Daemon, name: &str) -> Result<u64> {
    services(d)?
        .into_iter()
        .find(|s| s.0 == name)
        .map(|s| s.1)
        .ok_or_else(|| anyhow!("service {name} not listed"))
}

fn names(d: &Daemon) -> Result<Vec<String>> {
    let mut n: Vec<String> = services(d)?.into_iter().map(|s| s.0).collect();
    n.sort();
    Ok(n)
}

const V1: &str = r#"
services:
  web:
    command: ["sleep", "100000"]
    environment:
      GREETING: hello
    deploy:
      replicas: 2
      update_config:
        parallelism: 2
        monitor: 0s
    stop_grace_period: 1s
    x-flotilla:
      driver: process
  worker:
    command: sleep 100000
    stop_grace_period: 1s
    depends_on: [web]
"#;

#[test]
fn deploy_redeploy_update_prune_and_remove() -> Result<()> {
    let d = cluster()?;
    let dir = tempfile::tempdir()?;
    let v1 = write(dir.path(), "stack.yml", V1)?;

    let out = d.ok(&["stack", "deploy", "-c", &v1, "shop"])?;
    assert!(
        out.stdout.contains("Creating service shop_web")
            && out.stdout.contains("Creating service shop_worker"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stderr.matches("Ignoring options").count(),
        1,
        "one warning for the stack: {}",
        out.stderr
    );
    // Compose-only keys: one line that says Swarm ignores them too.
    assert!(
        out.stderr
            .contains("service worker: Ignoring options that Swarm ignores too (only Compose without Swarm uses them): depends_on"),
        "{}",
        out.stderr
    );
    // Without --detach, deploy returned once the tasks ran.
    let list = services(&d)?;
    assert!(list.iter().all(|s| s.3 == s.4), "{list:?}");
    assert_eq!(names(&d)?, ["shop_web", "shop_worker"]);
    let labels = d.ok(&["service", "inspect", "shop_web"])?.json()?;
    assert_eq!(
        labels[0]["spec"]["labels"]["com.docker.stack.namespace"],
        "shop"
    );

    // The same files again: nothing is written.
    let (web1, worker1) = (version(&d, "shop_web")?, version(&d, "shop_worker")?);
    let out = d.ok(&["stack", "deploy", "-c", &v1, "shop"])?;
    assert!(
        out.stdout.contains("Service shop_web is up to date")
            && out.stdout.contains("Service shop_worker is up to date")
            && !out.stdout.contains("Updating"),
        "{}",
        out.stdout
    );
    assert_eq!(version(&d, "shop_web")?, web1);
    assert_eq!(version(&d, "shop_worker")?, worker1);

    // A second file changes one service's environment: only it is written.
    let over = write(
        dir.path(),
        "stack.prod.yml",
        "services:\n  web:\n    environment: [GREETING=bonjour]\n",
    )?;
    let out = d.ok(&["stack", "deploy", "-c", &v1, "-c", &over, "shop"])?;
    assert!(
        out.stdout.contains("Updating service shop_web")
            && out.stdout.contains("Service shop_worker is up to date"),
        "{}",
        out.stdout
    );
    assert!(version(&d, "shop_web")? > web1);
    assert_eq!(version(&d, "shop_worker")?, worker1);
    let web = services(&d)?
        .into_iter()
        .find(|s| s.0 == "shop_web")
        .ok_or_else(|| anyhow!("no web"))?;
    assert_eq!(web.2["GREETING"], "bonjour");
    // The rolling update replaces both tasks with new ones.
    wait_until(
        "shop_web's tasks to be replaced",
        Duration::from_secs(30),
        || {
            let t = d.tasks("shop_web")?;
            let current_running = t
                .iter()
                .filter(|t| t["current"] == true && t["state"] == "running")
                .count();
            let history = t.iter().filter(|t| t["current"] == false).count();
            Ok((current_running == 2 && history >= 2).then_some(()))
        },
    )?;

    // A file without worker: it stays unless --prune.
    let v2 = write(
        dir.path(),
        "web-only.yml",
        "services:\n  web:\n    command: [sleep, \"100000\"]\n    environment: {GREETING: bonjour}\n    deploy:\n      replicas: 2\n      update_config: {parallelism: 2, monitor: 0s}\n    stop_grace_period: 1s\n",
    )?;
    let web2 = version(&d, "shop_web")?;
    let out = d.ok(&["stack", "deploy", "--detach", "-c", &v2, "shop"])?;
    assert!(!out.stdout.contains("Removing"), "{}", out.stdout);
    assert!(
        out.stdout.contains("Service shop_web is up to date"),
        "{}",
        out.stdout
    );
    assert_eq!(version(&d, "shop_web")?, web2);
    assert_eq!(names(&d)?, ["shop_web", "shop_worker"]);
    let out = d.ok(&["stack", "deploy", "--prune", "-c", &v2, "shop"])?;
    assert!(
        out.stdout.contains("Removing service shop_worker"),
        "{}",
        out.stdout
    );
    assert_eq!(names(&d)?, ["shop_web"]);

    // A second stack, and the listing commands.
    d.ok(&["stack", "deploy", "-c", &v1, "blog"])?;
    d.ok(&[
        "service", "create", "--name", "loose", "-d", "--", "sleep", "100000",
    ])?;
    let ls = d.ok(&["stack", "ls"])?.stdout;
    assert_eq!(ls, "NAME   SERVICES\nblog   2\nshop   1\n");
    let ls = d.ok(&["stack", "ls", "--format", "json"])?.json()?;
    assert_eq!(ls[1]["name"], "shop");
    assert_eq!(ls[1]["services"], 1);

    let svcs = d.ok(&["stack", "services", "blog"])?.stdout;
    let lines: Vec<&str> = svcs.lines().collect();
    assert!(lines[0].starts_with("ID "), "{svcs}");
    assert!(lines[0].contains("REPLICAS"), "{svcs}");
    assert_eq!(lines.len(), 3, "{svcs}");
    assert!(
        lines[1].contains("blog_web") && lines[1].contains("2/2"),
        "{svcs}"
    );
    assert!(lines[2].contains("blog_worker"), "{svcs}");
    let json = d
        .ok(&["stack", "services", "shop", "--format", "json"])?
        .json()?;
    assert_eq!(json.as_array().map(Vec::len), Some(1));

    let ps = d.ok(&["stack", "ps", "blog"])?.stdout;
    assert!(ps.starts_with("ID "), "{ps}");
    for task in ["blog_web.1", "blog_web.2", "blog_worker.1"] {
        assert!(ps.contains(task), "{task} in {ps}");
    }
    assert!(!ps.contains("shop_") && !ps.contains("loose"), "{ps}");
    let ps = d.ok(&["stack", "ps", "blog", "--format", "json"])?.json()?;
    assert_eq!(
        ps.as_array()
            .map(|a| a.iter().filter(|t| t["current"] == true).count()),
        Some(3)
    );

    let out = d.ok(&["stack", "rm", "blog"])?;
    assert!(
        out.stdout.contains("Removing service blog_web")
            && out.stdout.contains("Removing service blog_worker"),
        "{}",
        out.stdout
    );
    assert_eq!(names(&d)?, ["loose", "shop_web"]);
    let e = one_line_error(&d.cli(&["stack", "rm", "blog"]));
    assert_eq!(e, "Error: nothing found in stack: blog");
    let e = one_line_error(&d.cli(&["stack", "ps", "blog"]));
    assert_eq!(e, "Error: nothing found in stack: blog");
    d.ok(&["stack", "rm", "shop"])?;
    assert_eq!(d.ok(&["stack", "ls"])?.stdout, "NAME   SERVICES\n");
    Ok(())
}

#[test]
fn bad_files_deploy_nothing() -> Result<()> {
    let d = cluster()?;
    let dir = tempfile::tempdir()?;
    let ok = "  a:\n    command: sleep 100000\n";
    let cases: &[(&str, &str)] = &[
        (
            "    command: \"${FLOTILLA_TEST_SURELY_UNSET:?set it}\"\n",
            "bad.yml:5: services.b.command: required variable FLOTILLA_TEST_SURELY_UNSET is missing a value: set it",
        ),
        (
            "    command: x\n    deploy:\n      placement:\n        constraints: [\"node.zone==a\"]\n",
            "bad.yml:8: services.b.deploy.placement.constraints[0]:",
        ),
        (
            "    command: x\n    deploy:\n      replicas: -3\n",
            "bad.yml:7: services.b.deploy.replicas: -3 is negative",
        ),
        (
            "    command: x\n    depends_on: [nope]\n",
            "bad.yml:6: services.b.depends_on: unknown service \"nope\"",
        ),
        (
            "    command: x\n    healthcheck:\n      interval: 1s\n",
            "bad.yml:6: services.b.healthcheck: without `test`",
        ),
        (
            "    deploy:\n      replicas: 1\n",
            "bad.yml:4: services.b: nothing to run",
        ),
        // A rule of the spec (ServiceSpec::validate, which the daemon
        // holds too), found at its key before anything is written.
        (
            "    command: x\n    deploy:\n      replicas: 1000000\n",
            "bad.yml:7: services.b.deploy.replicas: invalid replicas 1000000: at most 100000 are allowed",
        ),
        (
            "    command: x\n    deploy:\n      rollback_config:\n        failure_action: rollback\n",
            "bad.yml:8: services.b.deploy.rollback_config.failure_action: rollback failure action must be pause or continue, not rollback",
        ),
    ];
    for (b, want) in cases {
        let text = format!("services:\n{ok}  b:\n{b}");
        let path = write(dir.path(), "bad.yml", &text)?;
        let e = one_line_error(&d.cli(&["stack", "deploy", "-c", &path, "test"]));
        assert!(e.contains(want), "want {want:?} in {e:?}");
        assert!(names(&d)?.is_empty(), "nothing may be deployed after: {e}");
    }
    let path = write(dir.path(), "bad.yml", &format!("services:\n{ok}"))?;
    let e = one_line_error(&d.cli(&["stack", "deploy", "-c", &path, "-bad"]));
    assert!(e.contains("invalid stack name \"-bad\""), "{e}");
    let e = one_line_error(&d.cli(&["stack", "deploy", "-c", "/nonexistent.yml", "test"]));
    assert!(e.contains("cannot read stack file /nonexistent.yml"), "{e}");
    // A name taken outside the stack is refused before any write.
    d.ok(&[
        "service", "create", "--name", "test_a", "-d", "--", "sleep", "100000",
    ])?;
    let two = write(
        dir.path(),
        "two.yml",
        "services:\n  a:\n    command: sleep 100000\n  z:\n    command: sleep 100000\n",
    )?;
    let e = one_line_error(&d.cli(&["stack", "deploy", "-c", &two, "test"]));
    assert!(
        e.contains("service test_a exists and is not part of stack test"),
        "{e}"
    );
    assert_eq!(names(&d)?, ["test_a"]);
    Ok(())
}

#[test]
fn config_prints_the_merged_interpolated_file_without_a_daemon() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(".env"), "TAG=1.25\nREPLICAS=3\n")?;
    let base = write(
        dir.path(),
        "stack.yml",
        "x-env: &env\n  MODE: dev\nservices:\n  web:\n    image: \"nginx:${TAG}\"\n    environment:\n      <<: *env\n      KEEP: \"yes\"\n    ports: [\"80:80\", \"443:443\"]\n    deploy:\n      replicas: ${REPLICAS}\n",
    )?;
    let over = write(
        dir.path(),
        "stack.prod.yml",
        "services:\n  web:\n    environment: [MODE=prod]\n    ports: [\"8080:80\"]\n",
    )?;
    let out = std::process::Command::new(bin())
        .arg("--data-dir")
        .arg(dir.path().join("no-daemon-here"))
        .args(["stack", "config", "-c", &base, "-c", &over])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("nginx:1.25"), "{stdout}");
    assert!(
        stdout.contains("prod") && !stdout.contains("dev"),
        "{stdout}"
    );
    assert!(stdout.contains("KEEP"), "{stdout}");
    assert!(
        !stdout.contains("x-env") && !stdout.contains("${"),
        "{stdout}"
    );
    // Ports are appended across files, as Compose merges them.
    assert!(
        stdout.contains("8080:80") && stdout.contains("443:443") && stdout.contains("80:80"),
        "{stdout}"
    );
    // It is a stack file again, which deploys as the two files would.
    let printed = write(dir.path(), "printed.yml", &stdout)?;
    let again = flotilla_compose::stack::load_stack(&printed)?;
    let both = flotilla_compose::stack::load_stack_files(&[&base, &over])?;
    assert_eq!(again.services, both.services);
    assert_eq!(both.services[0].task.env["MODE"], "prod");
    assert_eq!(both.services[0].task.env["KEEP"], "yes");
    // A bad file is refused the same way deploy refuses it.
    let bad = write(
        dir.path(),
        "bad.yml",
        "services:\n  web:\n    command: x\n    deploy: {replicas: -1}\n",
    )?;
    let out = std::process::Command::new(bin())
        .arg("--data-dir")
        .arg(dir.path().join("no-daemon-here"))
        .args(["stack", "config", "-c", &bad])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("services.web.deploy.replicas: -1 is negative"),
        "{stderr}"
    );
    Ok(())
}

/// The voting app's shape: `vote` and `redis` on `front`, `worker`,
/// `redis` and `db` on `back`, `db` by its tasks (dnsrr) and with an
/// alias. A stack task resolves the others by their names in the stack.
const NETWORKED: &str = r#"
x-flotilla:
  driver: process
services:
  vote:
    command: ["sleep", "600"]
    networks: [front]
  redis:
    command: ["sleep", "600"]
    networks: [front, back]
  worker:
    command: ["sleep", "600"]
    networks:
      back:
  db:
    command: ["sleep", "600"]
    deploy:
      endpoint_mode: dnsrr
    networks:
      back:
        aliases: [postgres]
  lonely:
    command: ["sleep", "600"]
networks:
  front:
  back:
    ipam:
      config:
        - subnet: 10.0.77.0/24
"#;

#[test]
fn a_stack_gets_its_networks_and_its_tasks_resolve_each_other() -> Result<()> {
    let d = cluster()?;
    let dir = tempfile::tempdir()?;
    let file = write(dir.path(), "vote.yml", NETWORKED)?;
    let out = d.ok(&["stack", "deploy", "-c", &file, "vote"])?;
    assert!(
        out.stdout.contains("Creating network vote_back"),
        "{}",
        out.stdout
    );
    let networks = d.ok(&["network", "ls", "--format", "json"])?.json()?;
    let mut names: Vec<String> = networks
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    // `lonely` names no network: it is on the stack's default one.
    assert_eq!(names, vec!["vote_back", "vote_default", "vote_front"]);
    let back = networks
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "vote_back").cloned())
        .ok_or_else(|| anyhow!("no vote_back"))?;
    assert_eq!(back["subnet"], "10.0.77.0/24");

    let resolve = |name: &str, from: &str| -> Result<(String, Vec<String>)> {
        let v = d
            .ok(&["resolve", name, "--from", from, "--format", "json"])?
            .json()?;
        let records = v["records"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|r| r["value"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Ok((
            v["status"].as_str().unwrap_or_default().to_string(),
            records,
        ))
    };
    wait_until("db's task to be ready", Duration::from_secs(30), || {
        let (status, records) = resolve("postgres", "vote_worker.1")?;
        Ok((status == "answer" && records.len() == 1).then_some(()))
    })?;
    // By its name in the stack, its full name and its alias; the worker
    // shares back with db, vote does not.
    for name in ["db", "vote_db", "tasks.db"] {
        let (status, records) = resolve(name, "vote_worker.1")?;
        assert_eq!(status, "answer", "{name}");
        assert!(records[0].starts_with("10.0.77."), "{name}: {records:?}");
    }
    assert_eq!(resolve("db", "vote_vote.1")?.0, "nxdomain");
    assert_eq!(resolve("redis", "vote_vote.1")?.0, "answer");
    assert_eq!(resolve("vote", "vote_lonely.1")?.0, "nxdomain");

    // Redeploying the same file changes nothing; rm takes the networks.
    let again = d.ok(&["stack", "deploy", "-c", &file, "vote"])?;
    assert!(
        !again.stdout.contains("Creating network"),
        "{}",
        again.stdout
    );
    assert!(
        !again.stdout.contains("Updating service"),
        "{}",
        again.stdout
    );
    d.ok(&["stack", "rm", "vote"])?;
    let left = d.ok(&["network", "ls", "--format", "json"])?.json()?;
    assert_eq!(left.as_array().map(Vec::len), Some(0), "{left}");
    Ok(())
}

/// Issue 12: a stack with a secret from a file and a config with inline
/// content; the task reads both; the same files again change nothing; a
/// changed secret file rolls the service onto a new version (Swarm refuses
/// it); a stack whose second secret file is missing creates nothing; `stack
/// rm` removes the stack's secrets and configs.
#[test]
fn a_stack_deploys_its_secrets_and_configs_and_rolls_a_changed_one() -> Result<()> {
    let d = cluster()?;
    let dir = tempfile::tempdir()?;
    write(dir.path(), "db_password.txt", "first-password")?;
    let out = dir.path().join("seen");
    let file = write(
        dir.path(),
        "app.yml",
        &format!(
            r#"services:
  app:
    command: ["sh", "-c", "cat $$FLOTILLA_SECRETS_DIR/db_password $$FLOTILLA_CONFIGS_DIR/app.conf >> {seen}; echo >> {seen}; exec sleep 100000"]
    stop_grace_period: 1s
    secrets: [db_password]
    configs:
      - source: app_conf
        target: /app.conf
        mode: 0440
secrets:
  db_password:
    file: ./db_password.txt
configs:
  app_conf:
    content: "greeting=hello"
"#,
            seen = out.display()
        ),
    )?;
    let first = d.ok(&["stack", "deploy", "-c", &file, "shop"])?.stdout;
    assert!(
        first.contains("Creating secret shop_db_password"),
        "{first}"
    );
    assert!(first.contains("Creating config shop_app_conf"), "{first}");
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_until(
        "the task to read its files",
        Duration::from_secs(15),
        || {
            Ok(read()
                .contains("first-passwordgreeting=hello")
                .then_some(()))
        },
    )?;
    let again = d.ok(&["stack", "deploy", "-c", &file, "shop"])?.stdout;
    assert!(
        again.contains("Secret shop_db_password is up to date"),
        "{again}"
    );
    assert!(again.contains("Service shop_app is up to date"), "{again}");
    // New data in the file: a new version, and the service rolls onto it.
    write(dir.path(), "db_password.txt", "second-password")?;
    let rotated = d.ok(&["stack", "deploy", "-c", &file, "shop"])?.stdout;
    assert!(
        rotated.contains("Updating secret shop_db_password to version 2"),
        "{rotated}"
    );
    wait_until(
        "the new task to read the new version",
        Duration::from_secs(20),
        || {
            Ok(read()
                .contains("second-passwordgreeting=hello")
                .then_some(()))
        },
    )?;
    // A second stack whose second secret's file is missing creates none.
    let broken = write(
        dir.path(),
        "broken.yml",
        "services:\n  x:\n    command: [\"true\"]\n    secrets: [a, b]\nsecrets:\n  a:\n    file: ./db_password.txt\n  b:\n    file: ./missing.txt\n",
    )?;
    let refused = d.cli(&["stack", "deploy", "-c", &broken, "broken"]);
    assert!(
        refused.code != 0 && refused.stderr.contains("missing.txt"),
        "{}",
        refused.stderr
    );
    let secrets = d.ok(&["secret", "ls", "--format", "json"])?.json()?;
    let names: Vec<&str> = secrets
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        vec!["shop_db_password"],
        "nothing of the broken stack"
    );
    d.ok(&["stack", "rm", "shop"])?;
    wait_until(
        "the stack's secrets and configs to go",
        Duration::from_secs(30),
        || {
            let s = d.ok(&["secret", "ls", "--format", "json"])?.json()?;
            let c = d.ok(&["config", "ls", "--format", "json"])?.json()?;
            let empty = |v: &Value| v.as_array().is_some_and(|a| a.is_empty());
            Ok((empty(&s) && empty(&c)).then_some(()))
        },
    )?;
    Ok(())
}

/// Issue 12: a config with `template_driver: golang` is expanded for each
/// task on its node: Swarm's placeholders, `{{ env "X" }}` from the task's
/// environment and `{{ secret "T" }}` from its secrets.
#[test]
fn a_templated_config_is_expanded_for_each_task() -> Result<()> {
    let d = cluster()?;
    let dir = tempfile::tempdir()?;
    write(dir.path(), "pw.txt", "s3cret")?;
    let out = dir.path().join("rendered");
    let file = write(
        dir.path(),
        "tpl.yml",
        &format!(
            r#"services:
  api:
    command: ["sh", "-c", "echo \"$$(cat $$FLOTILLA_CONFIGS_DIR/app.conf)\" >> {out}; exec sleep 100000"]
    environment:
      APP_PORT: "8080"
    deploy:
      replicas: 2
    secrets: [pw]
    configs:
      - source: app
        target: /app.conf
secrets:
  pw:
    file: ./pw.txt
configs:
  app:
    template_driver: golang
    content: 'svc={{{{.Service.Name}}}} slot={{{{.Task.Slot}}}} port={{{{ env "APP_PORT" }}}} pw={{{{ secret "pw" }}}}'
"#,
            out = out.display()
        ),
    )?;
    d.ok(&["stack", "deploy", "-c", &file, "tpl"])?;
    let lines = wait_until(
        "both tasks to render their config",
        Duration::from_secs(15),
        || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            lines.sort();
            Ok((lines.len() == 2).then_some(lines))
        },
    )?;
    assert_eq!(
        lines,
        vec![
            "svc=tpl_api slot=1 port=8080 pw=s3cret".to_string(),
            "svc=tpl_api slot=2 port=8080 pw=s3cret".to_string(),
        ]
    );
    // A template that calls what no template may is refused at create.
    let bad = write(dir.path(), "bad.tpl", r#"{{ exec "rm -rf /" }}"#)?;
    let refused = d.cli(&[
        "config",
        "create",
        "--template-driver",
        "golang",
        "bad",
        &bad,
    ]);
    assert!(refused.code != 0, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("unknown placeholder"),
        "{}",
        refused.stderr
    );
    Ok(())
}
