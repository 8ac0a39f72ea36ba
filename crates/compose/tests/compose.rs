//! Compose stacks as Swarm uses them: the model, error locations, merging of
//! several files, and a robustness sweep over generated inputs.

use std::collections::BTreeMap;

use flotilla_compose::stack::{load_stack_files, parse_stack, parse_stack_files};
use flotilla_compose::{interpolate, parse_compose, ComposeStack, NetworkDef, NAMESPACE_LABEL};
use flotilla_types::network::{EndpointMode, NetworkAttachment, Subnet};
use flotilla_types::{Driver, NetworkSpec, PortConfig, Protocol, PublishMode, ServiceMode};

const SWARM: &str = r#"
version: "3.8"
x-defaults: &defaults
  restart_policy:
    condition: on-failure
    max_attempts: 3
services:
  web:
    image: "nginx:${TAG:-1.25}"
    command: nginx -g 'daemon off;'
    environment:
      MODE: prod
      PRICE: "$$5"
    ports:
      - "8080:80"
      - "53:53/udp"
      - target: 443
        published: 8443
        protocol: tcp
        mode: host
    healthcheck:
      test: curl -f http://localhost/
      interval: 30s
      timeout: 5s
      retries: 3
      start_period: 10s
    stop_grace_period: 1m
    depends_on: [api]
    build: .
    container_name: web1
    deploy:
      <<: *defaults
      replicas: ${REPLICAS}
      placement:
        constraints: [node.role == worker]
        max_replicas_per_node: 2
        preferences:
          - spread: node.labels.zone
      update_config: &update
        parallelism: 2
        delay: 10s
        failure_action: rollback
        monitor: 1m
        max_failure_ratio: 0.25
        order: start-first
      rollback_config:
        parallelism: 1
        order: stop-first
      resources:
        limits: {cpus: "0.5", memory: 512M}
        reservations: {cpus: 0.25, memory: 128M}
      labels: [tier=front]
      endpoint_mode: vip
  api:
    image: example/api
    entrypoint: ["/bin/api"]
    command: ["--port", "9000"]
    environment: ["A=1", "FROM_VARS"]
    depends_on:
      db: {condition: service_started}
    deploy:
      mode: global
    links: [db]
  db:
    image: postgres
    x-flotilla: {driver: process}
    command: postgres
    frobnicate: yes
networks:
  front: {}
"#;

fn vars() -> BTreeMap<String, String> {
    [("REPLICAS", "3"), ("FROM_VARS", "v")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(text: &str) -> Result<ComposeStack, String> {
    parse_compose(&[("stack.yml", text)], &vars()).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    parse(text).err().unwrap_or_default()
}

#[test]
fn parses_a_swarm_stack_into_the_model() {
    let stack = parse(SWARM).expect("parse");
    let names: Vec<_> = stack.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "db", "web"]);
    let web = &stack.services[2];
    assert_eq!(web.image.as_deref(), Some("nginx:1.25"));
    assert_eq!(
        web.command.as_deref(),
        Some(&["nginx".to_string(), "-g".into(), "daemon off;".into()][..])
    );
    assert_eq!(web.environment["PRICE"], "$5");
    // UDP and host mode are read as written; the spec's validation
    // refuses them (see the stack tests).
    assert_eq!(
        web.ports,
        [
            PortConfig {
                target: 80,
                published: Some(8080),
                protocol: Protocol::Tcp,
                mode: PublishMode::Ingress
            },
            PortConfig {
                target: 53,
                published: Some(53),
                protocol: Protocol::Udp,
                mode: PublishMode::Ingress
            },
            PortConfig {
                target: 443,
                published: Some(8443),
                protocol: Protocol::Tcp,
                mode: PublishMode::Host
            },
        ]
    );
    let hc = web.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(hc.test, ["CMD-SHELL", "curl -f http://localhost/"]);
    assert_eq!(
        (
            hc.interval_ms,
            hc.timeout_ms,
            hc.retries,
            hc.start_period_ms
        ),
        (Some(30_000), Some(5_000), Some(3), Some(10_000))
    );
    assert_eq!(web.stop_grace_period_ms, Some(60_000));
    let d = &web.deploy;
    assert_eq!(d.mode, ServiceMode::Replicated { replicas: 3 });
    assert_eq!(
        d.restart_policy.as_ref().map(|r| r.max_attempts),
        Some(3),
        "merged from the anchor"
    );
    assert_eq!(d.constraints[0].to_string(), "node.role==worker");
    assert_eq!(d.max_replicas_per_node, Some(2));
    assert_eq!(d.spread, ["node.labels.zone"]);
    let u = d.update_config.as_ref().expect("update_config");
    assert_eq!(
        (u.parallelism, u.delay_ms, u.monitor_ms),
        (Some(2), Some(10_000), Some(60_000))
    );
    assert_eq!(u.max_failure_ratio, Some(0.25));
    assert_eq!(
        d.rollback_config.as_ref().and_then(|r| r.order.as_deref()),
        Some("stop-first")
    );
    assert_eq!(d.limits.nano_cpus, Some(500_000_000));
    assert_eq!(d.limits.memory_bytes, Some(512 << 20));
    assert_eq!(d.reservations.nano_cpus, Some(250_000_000));
    assert_eq!(d.labels["tier"], "front");
    assert_eq!(d.endpoint_mode, Some(EndpointMode::Vip));
    assert_eq!(web.depends_on, ["api"]);
    let api = &stack.services[0];
    assert_eq!(api.deploy.mode, ServiceMode::Global);
    assert_eq!(api.environment["FROM_VARS"], "v");
    assert_eq!(api.depends_on, ["db"]);
    assert_eq!(stack.services[1].driver.as_deref(), Some("process"));
    let w = stack.warnings.join("\n");
    // Keys only Compose without Swarm acts on, named as such.
    assert!(
        w.contains("service web: Ignoring options that Swarm ignores too (only Compose without Swarm uses them): depends_on, build, container_name"),
        "{w}"
    );
    assert!(
        w.contains("service api: Ignoring unsupported options: links"),
        "{w}"
    );
    assert!(
        w.contains("service db: Ignoring unknown keys: frobnicate"),
        "{w}"
    );
    // Networks are read, not ignored.
    assert!(!w.contains("networks"), "{w}");
    assert_eq!(stack.networks["front"], NetworkDef::default());
    assert!(!w.contains("x-"), "{w}");
    // The model is serializable for the daemon.
    let json = serde_json::to_string(&stack).expect("serialize");
    let back: ComposeStack = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, stack);
}

#[test]
fn parse_stack_runs_images_on_the_docker_driver() {
    let docker = parse_stack("s.yml", "services:\n  web:\n    image: nginx\n").expect("docker");
    assert_eq!(docker.services[0].task.driver, Driver::Docker);
    assert_eq!(docker.services[0].task.image.as_deref(), Some("nginx"));
    let ok = parse_stack("s.yml", "services:\n  web:\n    image: nginx\n    command: sleep 1\n    x-flotilla: {driver: process}\n    ports: [\"80:80\"]\n")
        .expect("process driver");
    assert_eq!(ok.compose[0].image.as_deref(), Some("nginx"));
    assert_eq!(ok.services[0].task.image, None);
    // A process publishes its ports like a container.
    assert_eq!(
        ok.services[0].task.ports,
        [PortConfig {
            published: Some(80),
            ..PortConfig::target(80)
        }]
    );
    assert_eq!(
        ok.warnings,
        ["Ignoring options Flotilla does not act on yet: image (web)"]
    );
}

#[test]
fn errors_name_file_line_and_key() {
    let e = err("services:\n  web:\n    command: x\n    deploy:\n      replicas: three\n");
    assert_eq!(
        e,
        "stack.yml:5: services.web.deploy.replicas: expected an integer, found \"three\""
    );
    let e = err("services:\n  web:\n    command: x\n    deploy:\n      replicas: -1\n");
    assert!(
        e.starts_with("stack.yml:5: services.web.deploy.replicas:") && e.contains("negative"),
        "{e}"
    );
    let e = err("services:\n  web:\n    command: x\n    depends_on: [nope]\n");
    assert!(
        e.starts_with("stack.yml:4: services.web.depends_on:")
            && e.contains("unknown service \"nope\""),
        "{e}"
    );
    let e = err("services:\n  web:\n    image: \"${MISSING:?set MISSING}\"\n");
    assert_eq!(e, "stack.yml:3: services.web.image: required variable MISSING is missing a value: set MISSING");
    let e = err("services:\n  a:\n    ports: [\"80:80\"]\n  b:\n    ports:\n      - 8080:80\n      - 80:81\n");
    assert!(
        e.starts_with("stack.yml:6: services.b.ports:")
            && e.contains("already published by service a"),
        "{e}"
    );
    assert!(
        parse("services:\n  a:\n    ports: [\"80:80/udp\"]\n  b:\n    ports: [\"80:80\"]\n")
            .is_ok()
    );
    assert!(parse("services:\n  a:\n    ports: [{target: 80, published: 80, mode: host}]\n  b:\n    ports: [\"80:80\"]\n").is_ok());
    let e = err(
        "services:\n  web:\n    deploy:\n      placement:\n        constraints: [\"node.x==1\"]\n",
    );
    assert!(
        e.starts_with("stack.yml:5: services.web.deploy.placement.constraints[0]:")
            && e.contains("unknown key"),
        "{e}"
    );
    let e = err("services:\n  web:\n    stop_grace_period: 10\n");
    assert!(
        e.starts_with("stack.yml:3: services.web.stop_grace_period: invalid duration"),
        "{e}"
    );
    let e = err("services:\n  web:\n    deploy:\n      resources:\n        limits:\n          memory: lots\n");
    assert!(
        e.starts_with(
            "stack.yml:6: services.web.deploy.resources.limits.memory: invalid memory size"
        ),
        "{e}"
    );
    let e = err("services:\n  web:\n    command: x\n  bad: [\n");
    assert!(
        e.starts_with("stack.yml:") && e.contains("not valid YAML"),
        "{e}"
    );
    assert!(err("services: {}").contains("no services"));
    assert!(err("").contains("no services"));
    assert!(err("services: [a]").contains("services: expected a mapping, found a list"));
}

#[test]
fn later_files_merge_over_earlier_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("stack.yml");
    let over = dir.path().join("stack.prod.yml");
    std::fs::write(
        dir.path().join(".env"),
        "# defaults\nGREETING=from-dotenv\nexport N=2\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("web.env"), "FROM_FILE=1\nMODE=file\n").expect("write");
    std::fs::write(
        &base,
        "services:\n  web:\n    command: [echo, \"${GREETING}\"]\n    env_file: web.env\n    environment: {MODE: dev}\n    deploy: {replicas: 1, labels: {a: b}}\n",
    )
    .expect("write");
    std::fs::write(
        &over,
        "services:\n  web:\n    command: [echo, prod]\n    deploy:\n      replicas: ${N}\n",
    )
    .expect("write");
    let (b, o) = (base.display().to_string(), over.display().to_string());
    let one = load_stack_files(&[&b]).expect("one file");
    assert_eq!(one.services[0].task.command, ["echo", "from-dotenv"]);
    assert_eq!(one.services[0].task.env["MODE"], "dev");
    assert_eq!(one.services[0].task.env["FROM_FILE"], "1");
    let both = load_stack_files(&[&b, &o]).expect("two files");
    let web = &both.services[0];
    assert_eq!(web.task.command, ["echo", "prod"], "lists are replaced");
    assert_eq!(web.mode, ServiceMode::Replicated { replicas: 2 });
    assert_eq!(web.labels["a"], "b", "maps are merged key by key");
    // Errors in the second file name it.
    std::fs::write(&over, "services:\n  web:\n    deploy:\n      replicas: x\n").expect("write");
    let e = load_stack_files(&[&b, &o])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains(&format!("{o}:4: services.web.deploy.replicas")),
        "{e}"
    );
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn must_not_panic(text: &str) {
    let _ = parse_compose(&[("fuzz.yml", text)], &vars());
    let _ = interpolate(text, &|n| (n.len() % 2 == 0).then(|| n.to_string()));
}

#[test]
fn never_panics_on_generated_input() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seed = SWARM.as_bytes();
    let alphabet = b"${}[]:-?&*<>!|\"'#\n ,0123456789abcxyz";
    for _ in 0..1500 {
        let mut bytes = seed.to_vec();
        match rng.below(4) {
            0 => bytes.truncate(rng.below(bytes.len())),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(bytes.len());
                    bytes[i] = alphabet[rng.below(alphabet.len())];
                }
            }
            2 => {
                let i = rng.below(bytes.len());
                let j = rng.below(bytes.len());
                let (a, b) = (i.min(j), i.max(j));
                let chunk = bytes[a..b].to_vec();
                bytes.splice(b..b, chunk);
            }
            _ => bytes = (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
        }
        must_not_panic(&String::from_utf8_lossy(&bytes));
    }
    let deep_lists = format!("services: {}{}", "[".repeat(5_000), "]".repeat(5_000));
    let deep_maps = format!("services: {}{}", "{a: ".repeat(5_000), "}".repeat(5_000));
    let deep_vars = format!(
        "services:\n  w:\n    image: \"{}x{}\"\n",
        "${U:-".repeat(5_000),
        "}".repeat(5_000)
    );
    let bomb = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e]\n";
    let huge = "services:\n  w:\n    command: x\n    deploy:\n      replicas: 999999999999999999999999999999999999999999\n      resources: {limits: {cpus: 1e308, memory: 99999999999999999999T}}\n    ports: [\"1-65535:1-65535\", \"99999:1\", \"0-:\", {target: -1}]\n    stop_grace_period: 999999999999h\n";
    for text in [deep_lists.as_str(), &deep_maps, &deep_vars, bomb, huge] {
        must_not_panic(text);
    }
}

/// Runs the parser and the conversion over the stack files named in
/// `FLOTILLA_COMPOSE_FILES` (separated by `:`) and prints, per file, the
/// services or the error and the warnings; used to check real-world stack
/// files kept outside the repository (see docs/compose.md). Each file must
/// convert, or fail with one line naming the file, a line and a key.
#[test]
#[ignore = "reads stack files named by FLOTILLA_COMPOSE_FILES"]
fn external_stack_files_convert_or_fail_precisely() {
    let list = std::env::var("FLOTILLA_COMPOSE_FILES").unwrap_or_default();
    let mut imprecise = Vec::new();
    for path in list.split(':').filter(|p| !p.is_empty()) {
        match load_stack_files(&[path]) {
            Ok(stack) => {
                // `stack config` reads back as the same specs.
                let (yaml, _) = flotilla_compose::stack::config_yaml(&[path]).expect("config");
                let again = parse_stack(path, &yaml).expect("config reads back");
                assert_eq!(again.services, stack.services, "{path}: {yaml}");
                let names: Vec<_> = stack.services.iter().map(|s| s.name.as_str()).collect();
                println!("{path}: OK: {} services: {}", names.len(), names.join(", "));
                for w in &stack.warnings {
                    println!("{path}:   warning: {w}");
                }
                if std::env::var_os("FLOTILLA_COMPOSE_VERBOSE").is_some() {
                    for (svc, spec) in stack.compose.iter().zip(&stack.services) {
                        println!("{path}:   {svc:?}\n{path}:   {spec:?}");
                    }
                }
            }
            Err(e) => {
                let text = e.to_string();
                println!("{path}: ERROR: {text}");
                let located = text
                    .strip_prefix(&format!("{path}:"))
                    .and_then(|rest| rest.split_once(':'))
                    .is_some_and(|(line, _)| line.parse::<u64>().is_ok_and(|l| l > 0));
                if !located || text.contains('\n') {
                    imprecise.push(text);
                }
            }
        }
    }
    assert!(imprecise.is_empty(), "imprecise errors: {imprecise:#?}");
}

/// Bugs found by tests/compose_fuzz.rs and by real-world stack files, each
/// pinned here.
#[test]
fn fuzz_regressions() {
    use flotilla_compose::merged_yaml;
    use flotilla_compose::stack::parse_stack_files;

    // A newline inside `${...}`, or in a key, made a two-line error.
    let e = err("services:\n  web:\n    image: \"${\\n}\"\n");
    assert_eq!(
        e,
        "stack.yml:3: services.web.image: invalid interpolation format in \"${\\n}\""
    );
    let e = err("services:\n  web:\n    image: a\n    environment: {\"a\\nb\": [1]}\n");
    assert_eq!(
        e,
        "stack.yml:4: services.web.environment.a\\nb: expected a string, found a list"
    );

    // `x-` keys are extension fields only where Compose has fixed keys: a
    // label, an environment variable or a service may be named `x-...`, and
    // was neither interpolated nor written back by `stack config`.
    let text = "services:\n  x-web:\n    image: \"nginx:${TAG:-1}\"\n  web:\n    image: a\n    environment: {x-a: \"$$\", x-b: \"${FROM_VARS}\"}\n    labels: {x-team: \"${FROM_VARS}\"}\n    deploy: {labels: {x-tier: \"1\"}}\n    x-note: {a: \"${UNSET:?extension fields are not interpolated}\"}\n";
    let stack = parse(text).expect("parse");
    let web = &stack.services[0];
    assert_eq!(web.environment["x-a"], "$");
    assert_eq!(web.environment["x-b"], "v");
    assert_eq!(web.labels["x-team"], "v");
    assert_eq!(web.deploy.labels["x-tier"], "1");
    assert_eq!(stack.services[1].image.as_deref(), Some("nginx:1"));
    let yaml = merged_yaml(&[("stack.yml", text)], &vars()).expect("config");
    assert!(!yaml.contains("x-note"), "{yaml}");
    assert_eq!(parse(&yaml).expect("reparse"), stack, "{yaml}");

    // Errors found when making specs named "stack file X: service Y" with
    // no line; they now name the file, line and key, also in a later file.
    let base = "services:\n  web:\n    image: a\n    healthcheck:\n      test: [CMD, x]\n";
    let over =
        "services:\n  web:\n    init: true\n    x-flotilla: {driver: process}\n    command: x\n";
    let e = parse_stack_files(&[("nodir/a.yml", base), ("nodir/b.yml", over)])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.starts_with("nodir/b.yml:3: services.web.init: "), "{e}");
    let e = parse_stack_files(&[(
        "nodir/a.yml",
        "services:\n  web:\n    deploy: {replicas: 2}\n",
    )])
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        e.starts_with("nodir/a.yml:2: services.web: nothing to run"),
        "{e}"
    );

    // A CPU limit below a billionth rounded to 0, which means no limit.
    let e = err("services:\n  web:\n    image: a\n    deploy:\n      resources:\n        limits: {cpus: \"0.0000000001\"}\n");
    assert!(
        e.starts_with("stack.yml:6: services.web.deploy.resources.limits.cpus:"),
        "{e}"
    );

    // YAML errors without serde-saphyr's API hints or a repeated line.
    let e =
        err("services:\n  web:\n    image: a\n    deploy:\n      replicas: 1\n      replicas: 2\n");
    assert_eq!(
        e,
        "stack.yml:6: not valid YAML: column 7: duplicate mapping key: replicas"
    );
    let e = err("services:\n  web:\n    image: a\n---\nservices: {}\n");
    assert_eq!(
        e,
        "stack.yml:5: not valid YAML: column 1: multiple YAML documents detected"
    );
    // A float where an integer belongs is shown as one.
    let e = err("services:\n  web:\n    image: a\n    deploy: {replicas: 2.0}\n");
    assert_eq!(
        e,
        "stack.yml:4: services.web.deploy.replicas: expected an integer, found 2.0"
    );
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn fixture_error(name: &str) -> (String, String) {
    let path = fixture(name);
    let e = load_stack_files(&[&path])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    (path, e)
}

/// Our own stack files in the shapes real Swarm stacks use (see
/// docs/compose.md): each converts, with its values read as written.
#[test]
fn fixture_stacks_convert() {
    use flotilla_types::{ConstraintKey, FailureAction, HealthTest, RestartCondition, UpdateOrder};

    let voting = load_stack_files(&[&fixture("voting-stack.yml")]).expect("voting");
    let names: Vec<_> = voting.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ballot", "cache", "counter", "store", "tally"]);
    let [ballot, cache, counter, store, tally] = &voting.services[..] else {
        panic!("five services");
    };
    assert_eq!(
        cache.task.command,
        ["valkey-server", "--save", "", "--appendonly", "no"]
    );
    assert_eq!(ballot.mode, ServiceMode::Replicated { replicas: 3 });
    assert_eq!(ballot.update.parallelism, 1);
    assert_eq!(ballot.update.delay_ms, 5_000);
    assert_eq!(ballot.update.failure_action, FailureAction::Rollback);
    assert_eq!(ballot.update.order, UpdateOrder::StartFirst);
    assert_eq!(ballot.rollback.parallelism, 0);
    assert_eq!(ballot.rollback.order, UpdateOrder::StopFirst);
    let r = &ballot.task.restart;
    assert_eq!(
        (r.condition, r.delay_ms, r.max_attempts, r.window_ms),
        (RestartCondition::OnFailure, 3_000, 4, 60_000)
    );
    assert_eq!(ballot.task.stop_grace_period_ms, 15_000);
    assert_eq!(store.task.env["POSTGRES_USER"], "poll");
    assert_eq!(store.task.constraints.len(), 2);
    assert_eq!(
        store.task.constraints[1].key,
        ConstraintKey::NodeLabel("disk".into())
    );
    let h = store.task.health.as_ref().expect("store health");
    assert_eq!(
        h.test,
        HealthTest::Shell {
            command: "pg_isready -U poll || exit 1".into()
        }
    );
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms),
        (10_000, 3_000, 5, 20_000)
    );
    assert_eq!(store.task.resources.limits.memory_bytes, 1 << 30);
    assert_eq!(store.task.resources.reservations.nano_cpus, 250_000_000);
    assert_eq!(store.task.resources.reservations.memory_bytes, 256 << 20);
    assert_eq!(tally.mode, ServiceMode::Replicated { replicas: 2 });
    assert_eq!(counter.labels["com.example.role"], "background");
    let w = voting.warnings.join("\n");
    // Secrets are read: the external one keeps its name and the service
    // gets it under /run/secrets.
    assert!(!w.contains("secrets"), "{w}");
    assert!(!w.contains("networks"), "{w}");
    let secrets = voting.secrets_for("vote").expect("secrets");
    assert_eq!(secrets.len(), 1);
    assert_eq!(
        (secrets[0].name.as_str(), secrets[0].external),
        ("store_password", true)
    );
    let store_spec = voting
        .specs_for("vote")
        .expect("specs")
        .into_iter()
        .find(|s| s.name == "vote_store")
        .expect("store");
    assert_eq!(
        store_spec.task.secrets,
        [flotilla_types::SecretRef::to(
            flotilla_types::SecretKind::Secret,
            "store_password"
        )]
    );
    // Every service names its networks: no default network.
    let nets = voting.networks_for("vote").expect("networks");
    let net_names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(net_names, ["vote_back", "vote_front"]);
    let attached = |s: &flotilla_types::ServiceSpec| -> Vec<String> {
        s.task.networks.iter().map(|a| a.network.clone()).collect()
    };
    let vote_specs = voting.specs_for("vote").expect("specs");
    let by_name = |n: &str| {
        vote_specs
            .iter()
            .find(|s| s.name == n)
            .map(attached)
            .unwrap_or_default()
    };
    assert_eq!(by_name("vote_counter"), ["vote_back", "vote_front"]);
    assert_eq!(by_name("vote_cache"), ["vote_front"]);
    assert_eq!(by_name("vote_store"), ["vote_back"]);
    assert_eq!(cache.endpoint_mode, EndpointMode::Dnsrr);
    assert_eq!(ballot.endpoint_mode, EndpointMode::Vip);
    // Named volumes are the stack's own; binds resolve against the file.
    let store_mounts = &voting
        .specs_for("vote")
        .expect("specs")
        .into_iter()
        .find(|s| s.name == "vote_store")
        .expect("store")
        .task
        .mounts;
    assert!(
        store_mounts
            .iter()
            .any(|m| m.kind == flotilla_types::MountKind::Volume && m.source.starts_with("vote_")),
        "{store_mounts:?}"
    );
    // Ports are the services' published ports now, not a warning.
    let published = |s: &flotilla_types::ServiceSpec| -> Vec<String> {
        s.task.ports.iter().map(|p| p.to_string()).collect()
    };
    assert_eq!(published(ballot), ["8080:80/tcp"]);
    assert_eq!(published(tally), ["8081:80/tcp"]);
    assert!(published(cache).is_empty() && published(store).is_empty());
    assert!(!w.contains("ports"), "{w}");
    assert!(!w.contains("endpoint_mode"), "{w}");

    let monitoring = load_stack_files(&[&fixture("monitoring-stack.yml")]).expect("monitoring");
    let [dashboard, metrics, scraper] = &monitoring.services[..] else {
        panic!("three services");
    };
    assert_eq!(metrics.mode, ServiceMode::Global);
    assert_eq!(
        metrics.task.command[1],
        "--collector.filesystem.mount-points-exclude=^/(sys|proc|dev)($|/)"
    );
    // Swarm's service templates are passed through as written.
    assert_eq!(metrics.task.env["NODE_NAME"], "{{.Node.Hostname}}");
    assert_eq!(metrics.task.env["SCRAPE_INTERVAL"], "15s");
    assert_eq!(metrics.task.resources.limits.nano_cpus, 500_000_000);
    assert_eq!(metrics.task.resources.limits.memory_bytes, 128 << 20);
    assert_eq!(metrics.task.resources.reservations.memory_bytes, 64 << 20);
    assert_eq!(metrics.update.parallelism, 2);
    assert_eq!(metrics.update.monitor_ms, 10_000);
    assert_eq!(metrics.update.max_failure_ratio.0, 0.1);
    assert_eq!(
        scraper.task.command,
        [
            "--config.file=/etc/scraper/scraper.yml",
            "--storage.retention=24h"
        ]
    );
    assert_eq!(
        scraper
            .task
            .health
            .as_ref()
            .map(|h| (&h.test, h.interval_ms)),
        Some((
            &HealthTest::Exec {
                argv: vec![
                    "wget".into(),
                    "-q".into(),
                    "--spider".into(),
                    "http://localhost:9090/-/healthy".into()
                ]
            },
            30_000
        ))
    );
    assert_eq!(
        scraper.task.constraints[0].to_string(),
        "node.role==manager"
    );
    assert_eq!(scraper.task.restart.max_attempts, 3, "from the anchor");
    assert_eq!(scraper.task.resources.limits.nano_cpus, 1_500_000_000);
    assert_eq!(scraper.task.resources.limits.memory_bytes, 2 << 30);
    assert_eq!(
        scraper.labels["com.example.http.rule"],
        "Host(`scraper.example.test`)"
    );
    assert_eq!(dashboard.task.env["DASH_PRICE"], "$0");
    assert_eq!(dashboard.task.env["DASH_ADMIN_USER"], "admin");
    assert_eq!(dashboard.rollback.failure_action, FailureAction::Continue);
    assert_eq!(
        dashboard.task.restart.condition,
        RestartCondition::OnFailure
    );
    let w = monitoring.warnings.join("\n");
    assert!(!w.contains("configs"), "{w}");
    assert!(!w.contains("x-"), "{w}");
    // `logging` is the engine's log driver now, from the anchor.
    assert!(!w.contains("logging"), "{w}");
    assert_eq!(
        scraper.task.logging,
        Some(flotilla_types::LogDriver {
            name: "json-file".into(),
            options: [("max-size".to_string(), "10m".to_string())]
                .into_iter()
                .collect(),
        })
    );
    // The config is the stack's, its file beside the stack file, and the
    // scraper gets it at its target.
    let configs = monitoring.secrets_for("mon").expect("configs");
    assert_eq!(configs.len(), 1);
    assert_eq!(configs[0].name, "mon_scraper_config");
    assert_eq!(configs[0].spec.labels[NAMESPACE_LABEL], "mon");
    assert_eq!(
        configs[0].source,
        Some(flotilla_compose::SecretSource::File(fixture("scraper.yml")))
    );
    let scraper_spec = monitoring
        .specs_for("mon")
        .expect("specs")
        .into_iter()
        .find(|s| s.name == "mon_scraper")
        .expect("scraper");
    assert_eq!(scraper_spec.task.configs.len(), 1);
    assert_eq!(scraper_spec.task.configs[0].source, "mon_scraper_config");
    assert_eq!(
        scraper_spec.task.configs[0].target,
        "/etc/scraper/scraper.yml"
    );

    // Host-mode ports are read as written; an override file that
    // publishes them on the mesh deploys the same stack otherwise.
    let host = load_stack_files(&[&fixture("proxy-stack.yml")]).expect("host mode");
    assert!(
        host.services[0]
            .task
            .ports
            .iter()
            .all(|p| p.mode == PublishMode::Host),
        "{:?}",
        host.services[0].task.ports
    );
    let proxy = load_stack_files(&[
        &fixture("proxy-stack.yml"),
        &fixture("proxy-ingress-override.yml"),
    ])
    .expect("proxy");
    let [edge, whoami] = &proxy.services[..] else {
        panic!("two services");
    };
    assert_eq!(edge.mode, ServiceMode::Global);
    assert_eq!(
        edge.task.command,
        [
            "--providers.swarm=true",
            "--entrypoints.web.address=:80",
            "--entrypoints.websecure.address=:443"
        ]
    );
    assert_eq!(
        edge.task.health.as_ref().map(|h| &h.test),
        Some(&HealthTest::Shell {
            command: "edge-proxy healthcheck --ping".into()
        })
    );
    assert_eq!(edge.task.stop_grace_period_ms, 90_000);
    assert_eq!(
        (
            edge.update.delay_ms,
            edge.update.monitor_ms,
            edge.update.order
        ),
        (10_000, 30_000, UpdateOrder::StartFirst)
    );
    assert_eq!(edge.update.failure_action, FailureAction::Rollback);
    assert_eq!(edge.rollback.parallelism, 2);
    assert_eq!(edge.task.resources.reservations.nano_cpus, 100_000_000);
    assert_eq!(edge.labels["com.example.tier"], "edge");
    assert_eq!(whoami.mode, ServiceMode::Replicated { replicas: 2 });
    assert_eq!(published(edge), ["80:80/tcp", "443:443/tcp"]);
    let w = proxy.warnings.join("\n");
    assert!(!w.contains("ports"), "{w}");
    // The placement keys are the specs' own.
    assert!(!w.contains("deploy.placement"), "{w}");
    assert_eq!(
        edge.task.preferences,
        [flotilla_types::PlacementPreference::spread(
            "node.labels.zone"
        )]
    );
    assert_eq!(whoami.task.max_replicas_per_node, 1);
    // `public` is declared and unused: not made; the services name no
    // network and are on the stack's default one.
    assert!(
        w.contains("Not creating networks no service uses: public"),
        "{w}"
    );
    let nets = proxy.networks_for("proxy").expect("networks");
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert_eq!(nets[0].name, "proxy_default");
    assert!(proxy
        .specs_for("proxy")
        .expect("specs")
        .iter()
        .all(|s| s.task.networks == [NetworkAttachment::to("proxy_default")]));
    // A constraint on the labels of the nodes' Docker Engines.
    let agent =
        load_stack_files(&[&fixture("engine-label-constraint-stack.yml")]).expect("engine labels");
    let constraints = &agent.services[0].task.constraints;
    assert_eq!(
        constraints
            .iter()
            .map(|c| (&c.key, c.value.as_str()))
            .collect::<Vec<_>>(),
        [(&ConstraintKey::EngineLabel("region".into()), "eu")]
    );
    // `stack config` of each reads back as the same specs.
    for names in [
        &["voting-stack.yml"][..],
        &["monitoring-stack.yml"],
        &["proxy-stack.yml", "proxy-ingress-override.yml"],
    ] {
        let paths: Vec<String> = names.iter().map(|n| fixture(n)).collect();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let (yaml, _) = flotilla_compose::stack::config_yaml(&paths).expect("config");
        let again = parse_stack(paths[0], &yaml).expect("reparse");
        let direct = load_stack_files(&paths).expect("direct");
        assert_eq!(again.services, direct.services, "{names:?}");
        assert_eq!(again.networks, direct.networks, "{names:?}");
    }
}

/// Our own stack files in shapes Flotilla cannot run: each fails with one
/// line naming the file, the line and the key.
#[test]
fn fixture_stacks_fail_precisely() {
    let (path, e) = fixture_error("build-only-stack.yml");
    assert_eq!(
        e,
        format!("{path}:4: services.backend: nothing to run: give `image` for a container, or `command` for a process")
    );
    let (path, e) = fixture_error("required-variable-stack.yml");
    assert_eq!(
        e,
        format!("{path}:8: services.site.deploy.labels[1]: required variable FLOTILLA_FIXTURE_UNSET_DOMAIN is missing a value: Variable FLOTILLA_FIXTURE_UNSET_DOMAIN not set")
    );
}

// ---------------------------------------------------------------------------
// Networks, as `docker stack deploy` makes them.

/// A stack from one file (`.env` is looked for in a directory that does
/// not exist).
fn stack_of(text: &str) -> flotilla_compose::Stack {
    parse_stack("nodir/s.yml", text).expect("parse")
}

fn stack_err(text: &str) -> String {
    parse_stack("nodir/s.yml", text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

fn attachments(stack: &flotilla_compose::Stack, name: &str) -> Vec<NetworkAttachment> {
    stack
        .specs_for("app")
        .expect("specs")
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.task.networks)
        .unwrap_or_default()
}

fn attached(network: &str, aliases: &[&str]) -> NetworkAttachment {
    NetworkAttachment {
        network: network.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
    }
}

#[test]
fn service_networks_in_list_and_map_forms() {
    let stack = stack_of(
        "services:\n  web:\n    image: nginx\n    networks: [front, back, front]\n  api:\n    image: api\n    networks:\n      back:\n        aliases: [api-v1, api.internal, api-v1]\n        ipv4_address: 10.0.9.9\n        priority: 100\n      front:\nnetworks:\n  front:\n  back: {}\n",
    );
    assert_eq!(
        attachments(&stack, "app_web"),
        [attached("app_back", &[]), attached("app_front", &[])]
    );
    // Aliases as written, each once; never the service's short name.
    assert_eq!(
        attachments(&stack, "app_api"),
        [
            attached("app_back", &["api-v1", "api.internal"]),
            attached("app_front", &[])
        ]
    );
    // Before a stack name: by key.
    let api = &stack.services[0];
    assert_eq!(api.task.networks[0].network, "back");
    let w = stack.warnings.join("\n");
    assert!(
        w.contains(
            "service api: Ignoring unsupported options: networks.back.ipv4_address, networks.back.priority"
        ),
        "{w}"
    );
    // Both networks are used, so both are made, and no default.
    let names: Vec<String> = stack
        .networks_for("app")
        .expect("networks")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["app_back", "app_front"]);
    // An alias that is no DNS name is refused at its line.
    assert_eq!(
        stack_err("services:\n  web:\n    image: x\n    networks:\n      front:\n        aliases:\n          - ok\n          - \"not ok\"\nnetworks:\n  front:\n"),
        "nodir/s.yml:8: services.web.networks.front.aliases[1]: invalid alias \"not ok\": an alias is a DNS name of letters, digits, '-', '_' and '.'"
    );
    assert_eq!(
        stack_err("services:\n  web:\n    image: x\n    networks: front\n"),
        "nodir/s.yml:4: services.web.networks: expected a list or a mapping, found \"front\""
    );
}

#[test]
fn a_service_naming_an_undeclared_network_is_refused() {
    assert_eq!(
        stack_err("services:\n  web:\n    image: x\n    networks:\n      - front\n      - back\nnetworks:\n  front:\n"),
        "nodir/s.yml:6: services.web.networks: service \"web\" refers to undefined network back: invalid compose project"
    );
    assert_eq!(
        stack_err("services:\n  web:\n    image: x\n    networks:\n      front:\n        aliases: [w]\n"),
        "nodir/s.yml:5: services.web.networks: service \"web\" refers to undefined network front: invalid compose project"
    );
    // `default` is the stack's own and needs no declaration.
    let stack = stack_of("services:\n  web:\n    image: x\n    networks: [default]\n");
    assert_eq!(
        attachments(&stack, "app_web"),
        [attached("app_default", &[])]
    );
}

#[test]
fn external_networks_keep_their_names_in_both_spellings() {
    let stack = stack_of(
        "services:\n  web:\n    image: x\n    networks: [edge, legacy, named]\nnetworks:\n  edge:\n    external: true\n  legacy:\n    external:\n      name: old-proxy\n  named:\n    external: true\n    name: shared-net\n",
    );
    let nets = stack.networks_for("app").expect("networks");
    let got: Vec<(&str, &str, bool)> = nets
        .iter()
        .map(|n| (n.key.as_str(), n.name.as_str(), n.external))
        .collect();
    assert_eq!(
        got,
        [
            ("edge", "edge", true),
            ("legacy", "old-proxy", true),
            ("named", "shared-net", true)
        ]
    );
    // External networks are not the stack's: no label.
    assert!(nets.iter().all(|n| n.spec.labels.is_empty()), "{nets:?}");
    assert_eq!(
        attachments(&stack, "app_web"),
        [
            attached("edge", &[]),
            attached("old-proxy", &[]),
            attached("shared-net", &[])
        ]
    );
    // Options that describe a network to create are not asked of one that
    // exists: named in a warning.
    let stack = stack_of(
        "services:\n  web:\n    image: x\n    networks: [edge]\nnetworks:\n  edge:\n    external: true\n    internal: true\n",
    );
    let w = stack.warnings.join("\n");
    assert!(
        w.contains("Ignoring unsupported network options: networks.edge.internal (external)"),
        "{w}"
    );
    assert_eq!(
        stack_err("services:\n  web:\n    image: x\nnetworks:\n  edge:\n    name: a\n    external:\n      name: b\n"),
        "nodir/s.yml:8: networks.edge.external.name: conflicts with networks.edge.name; only use networks.edge.name"
    );
    assert_eq!(
        stack_err("services:\n  web:\n    image: x\nnetworks:\n  edge:\n    external: maybe\n"),
        "nodir/s.yml:6: networks.edge.external: expected true or false, found \"maybe\""
    );
}

#[test]
fn name_fixes_the_network_name() {
    let stack = stack_of(
        "services:\n  web:\n    image: x\n    networks: [front]\nnetworks:\n  front:\n    name: public-front\n    labels: [tier=edge]\n",
    );
    let nets = stack.networks_for("app").expect("networks");
    assert_eq!(nets.len(), 1);
    let n = &nets[0];
    assert_eq!(
        (n.key.as_str(), n.name.as_str(), n.external),
        ("front", "public-front", false)
    );
    assert_eq!(n.spec.name, "public-front");
    // Still the stack's: labelled, so `stack rm` removes it.
    assert_eq!(n.spec.labels[NAMESPACE_LABEL], "app");
    assert_eq!(n.spec.labels["tier"], "edge");
    assert_eq!(
        attachments(&stack, "app_web"),
        [attached("public-front", &[])]
    );
    assert_eq!(
        stack_err("services:\n  web:\n    image: x\nnetworks:\n  front:\n    name: \"two words\"\n"),
        "nodir/s.yml:6: networks.front.name: invalid name \"two words\": only letters, digits, '-', '_' and '.' are allowed"
    );
    // Two keys may name one network if they ask for the same one.
    let two = "services:\n  web:\n    image: x\n    networks: [a]\n  api:\n    image: x\n    networks: [b]\nnetworks:\n  a: {name: shared}\n  b: {name: shared, internal: INTERNAL}\n";
    let nets = stack_of(&two.replace("INTERNAL", "false"))
        .networks_for("app")
        .expect("networks");
    assert_eq!(nets.len(), 1, "{nets:?}");
    let e = stack_of(&two.replace("INTERNAL", "true"))
        .networks_for("app")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        e,
        "nodir/s.yml: network b: it and network a are both named shared, with different options"
    );
    // The full name is a name as the daemon checks it.
    let long = "x".repeat(60);
    let e = stack_of("services:\n  web:\n    image: x\n")
        .networks_for(&long)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("nodir/s.yml: network default: network name"),
        "{e}"
    );
}

#[test]
fn only_overlay_networks_exist() {
    let stack = stack_of(
        "services:\n  web:\n    image: x\n    networks: [front]\nnetworks:\n  front:\n    driver: overlay\n",
    );
    assert_eq!(
        stack.networks[0].spec.driver,
        flotilla_types::NetworkDriver::Overlay
    );
    for driver in ["bridge", "host"] {
        assert_eq!(
            stack_err(&format!(
                "services:\n  web:\n    image: x\nnetworks:\n  front:\n    attachable: true\n    driver: {driver}\n"
            )),
            format!("nodir/s.yml:7: networks.front.driver: network driver \"{driver}\" is not supported: Flotilla networks are overlay networks")
        );
    }
}

#[test]
fn network_options_become_the_spec() {
    let stack = stack_of(
        "services:\n  web:\n    image: x\n    networks: [secure, plain, off, back]\nnetworks:\n  secure:\n    driver_opts:\n      encrypted: \"\"\n      com.docker.network.driver.mtu: \"1400\"\n  plain:\n    driver_opts: {encrypted: \"false\"}\n  off:\n    internal: true\n    attachable: true\n    labels: {team: core}\n    enable_ipv6: true\n    colour: blue\n  back:\n    ipam:\n      driver: default\n      config:\n        - subnet: 10.0.9.0/24\n          gateway: 10.0.9.1\n        - subnet: 10.0.10.0/24\n",
    );
    let nets = stack.networks_for("app").expect("networks");
    let spec = |key: &str| -> NetworkSpec {
        nets.iter()
            .find(|n| n.key == key)
            .map(|n| n.spec.clone())
            .expect("network")
    };
    assert!(spec("secure").encrypted);
    assert!(!spec("plain").encrypted);
    let off = spec("off");
    assert!(off.internal && off.attachable && !off.encrypted);
    assert_eq!(off.labels["team"], "core");
    assert_eq!(off.labels[NAMESPACE_LABEL], "app");
    let subnet: Subnet = "10.0.9.0/24".parse().expect("subnet");
    assert_eq!(spec("back").subnet, Some(subnet));
    assert_eq!(spec("secure").subnet, None);
    let w = stack.warnings.join("\n");
    assert!(
        w.contains("Ignoring unsupported network options: networks.secure.driver_opts.com.docker.network.driver.mtu, networks.off.enable_ipv6, networks.back.ipam.config[0].gateway, networks.back.ipam.config[1]"),
        "{w}"
    );
    assert!(
        w.contains("Ignoring unknown network keys: networks.off.colour"),
        "{w}"
    );
}

#[test]
fn a_bad_subnet_is_refused_at_its_line() {
    for (subnet, reason) in [
        (
            "10.0.9.1/24",
            "invalid subnet \"10.0.9.1/24\": host bits are set (did you mean 10.0.9.0/24?)",
        ),
        (
            "fd00::/64",
            "invalid subnet \"fd00::/64\": expected an IPv4 CIDR such as 10.0.9.0/24",
        ),
        (
            "10.0.0.0/30",
            "invalid subnet \"10.0.0.0/30\": the prefix must be 8 to 29",
        ),
    ] {
        assert_eq!(
            stack_err(&format!(
                "services:\n  web:\n    image: x\nnetworks:\n  back:\n    ipam:\n      config:\n        - subnet: {subnet}\n"
            )),
            format!("nodir/s.yml:8: networks.back.ipam.config[0].subnet: {reason}"),
        );
    }
}

#[test]
fn the_default_network_is_made_only_when_a_service_uses_it() {
    // No service names a network: all on STACK_default.
    let stack = stack_of("services:\n  web:\n    image: x\n  api:\n    image: y\n");
    let nets = stack.networks_for("app").expect("networks");
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].name, "app_default");
    assert_eq!(nets[0].spec.labels[NAMESPACE_LABEL], "app");
    assert_eq!(
        attachments(&stack, "app_api"),
        [attached("app_default", &[])]
    );
    // Declared, it is configured by the file.
    let stack = stack_of(
        "services:\n  web:\n    image: x\n  api:\n    image: y\n    networks: [back]\nnetworks:\n  default:\n    internal: true\n  back:\n",
    );
    let nets = stack.networks_for("app").expect("networks");
    let names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["app_back", "app_default"]);
    assert!(nets[1].spec.internal);
    assert_eq!(attachments(&stack, "app_api"), [attached("app_back", &[])]);
    assert_eq!(
        attachments(&stack, "app_web"),
        [attached("app_default", &[])]
    );
    // Every service names one: no default network, even when declared
    // (and a warning that it is not made).
    let stack = stack_of(
        "services:\n  web:\n    image: x\n    networks: [back]\nnetworks:\n  default:\n  back:\n",
    );
    let names: Vec<String> = stack
        .networks_for("app")
        .expect("networks")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["app_back"]);
    assert!(
        stack
            .warnings
            .contains(&"Not creating networks no service uses: default".to_string()),
        "{:?}",
        stack.warnings
    );
}

#[test]
fn endpoint_mode_is_the_specs() {
    let stack = stack_of(
        "services:\n  a:\n    image: x\n    deploy: {endpoint_mode: dnsrr}\n  b:\n    image: x\n    deploy: {endpoint_mode: vip}\n  c:\n    image: x\n",
    );
    let modes: Vec<EndpointMode> = stack.services.iter().map(|s| s.endpoint_mode).collect();
    assert_eq!(
        modes,
        [EndpointMode::Dnsrr, EndpointMode::Vip, EndpointMode::Vip]
    );
    assert!(stack.warnings.is_empty(), "{:?}", stack.warnings);
    assert_eq!(
        stack_err("services:\n  a:\n    image: x\n    deploy:\n      endpoint_mode: round-robin\n"),
        "nodir/s.yml:5: services.a.deploy.endpoint_mode: invalid endpoint mode \"round-robin\": expected vip or dnsrr"
    );
}

#[test]
fn networks_merge_across_files() {
    let base = "services:\n  web:\n    image: x\n    networks:\n      front:\n        aliases: [www]\n      back:\nnetworks:\n  front:\n    labels: [a=1, b=2]\n  back:\n    ipam:\n      config: [{subnet: 10.0.9.0/24}]\n";
    let over = "services:\n  web:\n    networks: [front, extra]\n  api:\n    image: y\n    networks:\n      back:\n        aliases: [api]\nnetworks:\n  front:\n    labels: {b: over}\n    internal: true\n  back:\n    ipam:\n      config: [{subnet: 10.0.10.0/24}]\n  extra:\n";
    let stack = parse_stack_files(&[("nodir/a.yml", base), ("nodir/b.yml", over)]).expect("merge");
    // Networks by key: the list in the later file keeps front's aliases
    // and adds extra.
    assert_eq!(
        attachments(&stack, "app_web"),
        [
            attached("app_back", &[]),
            attached("app_extra", &[]),
            attached("app_front", &["www"])
        ]
    );
    assert_eq!(
        attachments(&stack, "app_api"),
        [attached("app_back", &["api"])]
    );
    let nets = stack.networks_for("app").expect("networks");
    let front = nets.iter().find(|n| n.key == "front").expect("front");
    assert!(front.spec.internal);
    assert_eq!(front.spec.labels["a"], "1");
    assert_eq!(front.spec.labels["b"], "over");
    // The later file's subnet is the first config entry of its own; the
    // base file's stays first and is the network's.
    let back = nets.iter().find(|n| n.key == "back").expect("back");
    assert_eq!(back.spec.subnet, "10.0.9.0/24".parse().ok());
    // Aliases merge: appended without repeats.
    let over = "services:\n  web:\n    networks:\n      front:\n        aliases: [www, www2]\n";
    let stack = parse_stack_files(&[("nodir/a.yml", base), ("nodir/b.yml", over)]).expect("merge");
    assert_eq!(
        attachments(&stack, "app_web"),
        [
            attached("app_back", &[]),
            attached("app_front", &["www", "www2"])
        ]
    );
    // An error in the later file names it.
    let over = "networks:\n  front:\n    driver: bridge\n";
    let e = parse_stack_files(&[("nodir/a.yml", base), ("nodir/b.yml", over)])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("nodir/b.yml:3: networks.front.driver: "),
        "{e}"
    );
    let over = "services:\n  web:\n    networks: [nowhere]\n";
    let e = parse_stack_files(&[("nodir/a.yml", base), ("nodir/b.yml", over)])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        e,
        "nodir/b.yml:3: services.web.networks: service \"web\" refers to undefined network nowhere: invalid compose project"
    );
}

#[test]
fn config_prints_the_networks_and_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.yml");
    let b = dir.path().join("b.yml");
    std::fs::write(
        &a,
        "services:\n  web:\n    image: x\n    networks:\n      front:\n        aliases: [\"${ALIAS_UNSET:-www}\"]\nnetworks:\n  front:\n    driver_opts: {encrypted: \"\"}\n    ipam:\n      config: [{subnet: 10.0.9.0/24}]\n",
    )
    .expect("write");
    std::fs::write(
        &b,
        "services:\n  web:\n    networks: [front, edge]\nnetworks:\n  edge: {external: true}\n",
    )
    .expect("write");
    let (a, b) = (a.display().to_string(), b.display().to_string());
    let (yaml, _) = flotilla_compose::stack::config_yaml(&[&a, &b]).expect("config");
    assert!(yaml.contains("networks:"), "{yaml}");
    assert!(
        yaml.contains("10.0.9.0/24") && yaml.contains("www"),
        "{yaml}"
    );
    let out = dir.path().join("out.yml");
    std::fs::write(&out, &yaml).expect("write");
    let again = load_stack_files(&[&out.display().to_string()]).expect("reparse");
    let direct = load_stack_files(&[&a, &b]).expect("direct");
    assert_eq!(again.services, direct.services, "{yaml}");
    assert_eq!(again.networks, direct.networks, "{yaml}");
    assert_eq!(direct.networks.len(), 2);
}

#[test]
fn network_mode_host_keeps_a_service_on_the_nodes_own_network() {
    // On no network, and no default network is made for it.
    let stack = stack_of("services:\n  web:\n    image: x\n    network_mode: host\n");
    assert!(stack.networks_for("app").expect("networks").is_empty());
    assert!(attachments(&stack, "app_web").is_empty());
    assert!(
        !stack.warnings.iter().any(|w| w.contains("network_mode")),
        "{:?}",
        stack.warnings
    );
    // Beside a service that does use the default network.
    let stack =
        stack_of("services:\n  web:\n    image: x\n    network_mode: host\n  api:\n    image: y\n");
    let names: Vec<String> = stack
        .networks_for("app")
        .expect("networks")
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["app_default"]);
    // Other modes, and host together with networks, are refused at their line.
    let e = stack_err("services:\n  web:\n    image: x\n    network_mode: bridge\n");
    assert!(
        e.contains(":4: services.web.network_mode: network_mode \"bridge\" is not supported"),
        "{e}"
    );
    let e = stack_err(
        "services:\n  web:\n    image: x\n    network_mode: host\n    networks: [front]\nnetworks:\n  front:\n",
    );
    assert!(
        e.contains("declares mutually exclusive `network_mode` and `networks`"),
        "{e}"
    );
}
