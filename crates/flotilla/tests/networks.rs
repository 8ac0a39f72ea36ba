//! Networks on one node, end to end through the real binary: create,
//! list, inspect, the subnet and addresses the leader gives, and what is
//! refused (an overlapping subnet, a network that does not exist, removing
//! a network in use).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use flotilla_testkit::{one_line_error, wait_until, Daemon};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn network(d: &Daemon, name: &str) -> Result<Value> {
    let all = d.ok(&["network", "inspect", name])?.json()?;
    all.as_array()
        .and_then(|a| a.first().cloned())
        .ok_or_else(|| anyhow!("network {name} not in its inspect output"))
}

#[test]
fn networks_get_subnets_and_their_tasks_get_addresses() -> Result<()> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;

    d.ok(&["network", "create", "front"])?;
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.0.9.0/24",
        "--opt",
        "encrypted",
        "back",
    ])?;
    // The leader's allocator gives front the pool's first /19.
    let front = wait_until("front to get its subnet", Duration::from_secs(10), || {
        let n = network(&d, "front")?;
        Ok((!n["subnet"].is_null() && !n["vni"].is_null()).then_some(n))
    })?;
    assert_eq!(front["subnet"], "10.64.0.0/19");
    assert_eq!(front["gateway"], "10.64.0.1");
    let back = network(&d, "back")?;
    assert_eq!(back["subnet"], "10.0.9.0/24");
    assert_eq!(back["spec"]["encrypted"], true);

    let overlap = d.cli(&["network", "create", "--subnet", "10.0.9.128/25", "other"]);
    assert_eq!(
        one_line_error(&overlap),
        "Error: subnet 10.0.9.128/25 overlaps network back (10.0.9.0/24)"
    );
    let host_bits = d.cli(&["network", "create", "--subnet", "10.0.9.5/24", "other"]);
    assert!(one_line_error(&host_bits).contains("did you mean 10.0.9.0/24"));
    let taken = d.cli(&["network", "create", "front"]);
    assert_eq!(
        one_line_error(&taken),
        "Error: network front already exists"
    );

    let missing = d.cli(&[
        "service",
        "create",
        "--name",
        "lost",
        "--network",
        "nope",
        "--",
        "sleep",
        "60",
    ]);
    assert_eq!(one_line_error(&missing), "Error: network nope not found");

    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "name=front,alias=www",
        "--network",
        "back",
        "--",
        "sleep",
        "600",
    ])?;
    // Two tasks on both networks, each with its own address; the service
    // has the first address of each subnet as its virtual address.
    let front = wait_until(
        "web's tasks to be on front",
        Duration::from_secs(20),
        || {
            let n = network(&d, "front")?;
            let running = n["tasks"]
                .as_array()
                .map_or(0, |t| t.iter().filter(|t| t["state"] == "running").count());
            Ok((running == 2).then_some(n))
        },
    )?;
    let mut addrs: Vec<String> = front["tasks"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    addrs.sort();
    assert_eq!(addrs, vec!["10.64.0.3", "10.64.0.4"]);
    assert_eq!(front["services"], serde_json::json!(["web"]));
    let web = d.service("web")?;
    let networks = web["networks"].as_array().cloned().unwrap_or_default();
    assert_eq!(networks.len(), 2, "{web}");
    assert_eq!(networks[0]["network"], "front");
    assert_eq!(networks[0]["virtual_ip"], "10.64.0.2");
    assert_eq!(networks[0]["aliases"], serde_json::json!(["www"]));
    assert_eq!(networks[1]["virtual_ip"], "10.0.9.2");
    let tasks = d.tasks("web")?;
    assert!(tasks
        .iter()
        .all(|t| t["networks"].as_array().map(Vec::len) == Some(2)));
    let text = d
        .ok(&["service", "inspect", "web", "--format", "table"])?
        .stdout;
    assert!(
        text.contains("front (virtual IP 10.64.0.2), aliases www"),
        "{text}"
    );
    let ls = d.ok(&["network", "ls"])?.stdout;
    assert!(
        ls.contains("10.0.9.0/24") && ls.contains("encrypted"),
        "{ls}"
    );

    let in_use = d.cli(&["network", "rm", "front"]);
    assert_eq!(
        one_line_error(&in_use),
        "Error: network front is in use by services web"
    );

    // Off front: the update replaces the tasks, which then hold back only.
    d.ok(&[
        "service",
        "update",
        "--network-rm",
        "front",
        "--detach",
        "web",
    ])?;
    wait_until("front to be free", Duration::from_secs(30), || {
        let out = d.cli(&["network", "rm", "front"]);
        Ok((out.code == 0).then_some(()))
    })?;
    let gone = d.cli(&["network", "inspect", "front"]);
    assert_eq!(one_line_error(&gone), "Error: network front not found");
    let web = d.service("web")?;
    assert_eq!(web["networks"].as_array().map(Vec::len), Some(1), "{web}");
    Ok(())
}

/// The records `resolve` prints, as (type, value) pairs.
fn resolved(d: &Daemon, args: &[&str]) -> Result<Vec<(String, String)>> {
    let mut full = vec!["resolve", "--format", "json"];
    full.extend_from_slice(args);
    let view = d.ok(&full)?.json()?;
    Ok(view["records"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| {
                    (
                        r["type"].as_str().unwrap_or_default().to_string(),
                        r["value"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

#[test]
fn a_task_resolves_the_services_of_its_networks_only() -> Result<()> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    d.ok(&["network", "create", "--subnet", "10.0.1.0/24", "front"])?;
    d.ok(&["network", "create", "--subnet", "10.0.2.0/24", "back"])?;
    let create = |args: &[&str]| {
        let mut full = vec!["service", "create", "--detach"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--", "sleep", "600"]);
        d.ok(&full).map(|_| ())
    };
    create(&[
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "front",
        "--network",
        "back",
    ])?;
    create(&["--name", "client", "--network", "front"])?;
    create(&[
        "--name",
        "db",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "back",
    ])?;
    wait_until(
        "every task running with its addresses",
        Duration::from_secs(30),
        || {
            let running = |net: &str| -> Result<usize> {
                Ok(network(&d, net)?["tasks"]
                    .as_array()
                    .map_or(0, |t| t.iter().filter(|t| t["state"] == "running").count()))
            };
            Ok((running("front")? == 3 && running("back")? == 3).then_some(()))
        },
    )?;
    let web = d.service("web")?;
    let vip = web["networks"][0]["virtual_ip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(vip.starts_with("10.0.1."), "{web}");

    // The client is on front: web is its VIP there, tasks.web the tasks.
    assert_eq!(
        resolved(&d, &["web", "--from", "client.1"])?,
        vec![("A".into(), vip)]
    );
    let mut tasks: Vec<String> = resolved(&d, &["tasks.web", "--from", "client.1"])?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    tasks.sort();
    let mut want: Vec<String> = d
        .tasks("web")?
        .iter()
        .filter_map(|t| t["networks"][0]["address"].as_str().map(String::from))
        .collect();
    want.sort();
    assert_eq!(tasks, want);
    assert_eq!(tasks.len(), 2);

    // db is on back only: the client cannot resolve it; web can (dnsrr:
    // the task's own address).
    let hidden = d.cli(&["resolve", "db", "--from", "client.1"]);
    assert!(
        one_line_error(&hidden).contains("no such name for task"),
        "{}",
        hidden.stderr
    );
    let db_addr = d.tasks("db")?[0]["networks"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(db_addr.starts_with("10.0.2."));
    assert_eq!(
        resolved(&d, &["db", "--from", "web.1"])?,
        vec![("A".into(), db_addr)]
    );

    let other = d
        .ok(&["resolve", "example.com", "--from", "client.1"])?
        .stdout;
    assert!(other.contains("not a name of the cluster"), "{other}");
    let nobody = d.cli(&["resolve", "web", "--from", "nope.1"]);
    assert_eq!(
        one_line_error(&nobody),
        "Error: task nope.1 not found (give a task ID or SERVICE.SLOT)"
    );
    Ok(())
}

#[test]
fn a_node_that_cannot_wire_networks_gets_no_task_on_one_and_says_why() -> Result<()> {
    let d = Daemon::start_with_env(bin(), &[("FLOTILLA_NO_OVERLAY", "no VXLAN here (test)")])?;
    d.ok(&["init"])?;
    // The node says why, from its first session round on.
    let node = wait_until(
        "the node to report it cannot wire networks",
        Duration::from_secs(10),
        || {
            let nodes = d.ok(&["node", "ls", "--format", "json"])?.json()?;
            Ok(nodes
                .as_array()
                .and_then(|a| a.first().cloned())
                .filter(|n| !n["overlay_error"].is_null()))
        },
    )?;
    assert_eq!(node["overlay_error"], "no VXLAN here (test)");
    d.ok(&["network", "create", "front"])?;
    d.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--network",
        "front",
        "--",
        "sleep",
        "600",
    ])?;
    d.ok(&[
        "service", "create", "--detach", "--name", "plain", "--", "sleep", "600",
    ])?;
    let reason = wait_until(
        "web's task to wait with its reason",
        Duration::from_secs(15),
        || {
            let tasks = d.tasks("web")?;
            Ok(tasks
                .first()
                .and_then(|t| t["message"].as_str())
                .filter(|m| m.contains("overlay"))
                .map(String::from))
        },
    )?;
    assert_eq!(
        reason,
        "no suitable node (1 node that cannot run overlay networks)"
    );
    // A service on no network runs there as before.
    wait_until("plain to run", Duration::from_secs(15), || {
        Ok(d.tasks("plain")?
            .first()
            .filter(|t| t["state"] == "running")
            .map(|_| ()))
    })?;
    Ok(())
}

/// The wiring the nodes do for a network, read from their namespaces.
fn links(ns: &str) -> String {
    std::process::Command::new("ip")
        .args(["-n", ns, "-d", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn flood_peers(ns: &str, vni: u64) -> String {
    std::process::Command::new("bridge")
        .args(["-n", ns, "fdb", "show", "dev", &format!("flvx{vni}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Three nodes, each in its own network namespace: the nodes that run a
/// task of a network get its bridge (at the gateway) and VXLAN device,
/// with a flood entry to each other such node; a node with no task of it
/// gets none, and a node whose last task of it left removes it.
#[test]
fn nodes_wire_the_networks_of_their_tasks() -> Result<()> {
    let mut net = flotilla_testkit::net::Net::new()?;
    let hosts = [net.add_host()?, net.add_host()?, net.add_host()?];
    let port = 4280;
    let nodes = flotilla_testkit::cluster_on(bin(), &hosts, port, &["n1", "n2", "n3"])?;
    let m = &nodes[0];
    for name in ["n1", "n2"] {
        m.ok(&["node", "update", "--label-add", "web=yes", name])?;
    }
    m.ok(&["network", "create", "--subnet", "10.0.88.0/24", "front"])?;
    let vni = network(m, "front")?["vni"]
        .as_u64()
        .ok_or_else(|| anyhow!("front has no VXLAN ID"))?;
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "2",
        "--constraint",
        "node.labels.web==yes",
        "--network",
        "front",
        "--",
        "sleep",
        "600",
    ])?;
    let bridge = format!("flbr{vni}");
    wait_until("n1 and n2 to wire front", Duration::from_secs(30), || {
        let wired = |i: usize| {
            let fdb = flood_peers(&hosts[i].ns, vni);
            links(&hosts[i].ns).contains(&bridge) && fdb.contains(&hosts[1 - i].addr)
        };
        Ok((wired(0) && wired(1)).then_some(()))
    })?;
    let show = std::process::Command::new("ip")
        .args(["-n", &hosts[0].ns, "addr", "show", &bridge])
        .output()?;
    assert!(String::from_utf8_lossy(&show.stdout).contains("10.0.88.1/24"));
    assert!(
        links(&hosts[0].ns).contains(&format!("vxlan id {vni}")),
        "{}",
        links(&hosts[0].ns)
    );
    assert!(
        !links(&hosts[2].ns).contains(&bridge),
        "n3 runs no task of front"
    );
    // One replica left: one node keeps the network, the other removes it.
    m.ok(&["service", "scale", "web=1"])?;
    wait_until("one node to unwire front", Duration::from_secs(30), || {
        let wired = (0..2)
            .filter(|i| links(&hosts[*i].ns).contains(&bridge))
            .count();
        Ok((wired == 1).then_some(()))
    })?;
    drop(nodes);
    drop(net);
    Ok(())
}

/// Runs `script` with `sh -c` in the namespaces (network and mounts) of
/// the task process `pid`, as the task itself would run it.
fn in_task(pid: u64, script: &str) -> std::process::Output {
    std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-m", "--", "sh", "-c", script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run nsenter: {e}"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The addresses of the running tasks of `service` in the subnet whose
/// addresses start with `prefix`, sorted.
fn running_addresses(d: &Daemon, service: &str, prefix: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = d
        .tasks(service)?
        .iter()
        .filter(|t| t["state"] == "running")
        .filter_map(|t| {
            t["networks"]
                .as_array()?
                .iter()
                .find_map(|n| n["address"].as_str().filter(|a| a.starts_with(prefix)))
                .map(String::from)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The pids of the running tasks of `service`.
fn running_pids(d: &Daemon, service: &str) -> Result<Vec<u64>> {
    Ok(d.tasks(service)?
        .iter()
        .filter(|t| t["state"] == "running")
        .filter_map(|t| t["pid"].as_u64())
        .collect())
}

/// The IDs of every task of `services`, in any state.
fn task_ids(d: &Daemon, services: &[&str]) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for service in services {
        for t in d.tasks(service)? {
            if let Some(id) = t["id"].as_str() {
                ids.push(id.to_string());
            }
        }
    }
    Ok(ids)
}

/// The namespaces of `tasks` still named under `/run/netns`: a stopped
/// daemon leaves none (its wiring loop removes them as its tasks end).
fn leftover_namespaces(tasks: &[String]) -> Vec<String> {
    tasks
        .iter()
        .map(|id| format!("flt-{id}"))
        .filter(|ns| Path::new("/run/netns").join(ns).exists())
        .collect()
}

const APP: &str = r#"
services:
  web:
    command: ["BIN", "demo", "http", "--port", "8080"]
    ports: ["18080:8080"]
    networks: [front, back]
    healthcheck:
      test: ["CMD", "wget", "-qO-", "-T", "1", "-t", "1", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 1s
      retries: 2
      start_period: 5s
    deploy:
      replicas: 2
      placement:
        constraints: [node.labels.role==web]
      restart_policy:
        condition: any
        delay: 0s
    stop_grace_period: 1s
    x-flotilla:
      driver: process
  client:
    command: ["sleep", "600"]
    networks: [front]
    deploy:
      placement:
        constraints: [node.labels.role==client]
    stop_grace_period: 1s
    x-flotilla:
      driver: process
  db:
    command: ["BIN", "demo", "http", "--port", "5432"]
    networks: [back]
    deploy:
      endpoint_mode: dnsrr
      placement:
        constraints: [node.labels.role==client]
    stop_grace_period: 1s
    x-flotilla:
      driver: process
networks:
  front:
    driver: overlay
    ipam:
      config: [{subnet: 10.0.31.0/24}]
  back:
    driver: overlay
    internal: true
    driver_opts:
      encrypted: ""
    ipam:
      config: [{subnet: 10.0.32.0/24}]
"#;

/// The acceptance stack with the process driver on three nodes, each in
/// its own network namespace: `web` (two replicas, on n1 and n2) on front
/// and back, `client` (on n3) on front, `db` (on n3 too, so that n3
/// holds both networks) on back, which is encrypted (its frames between
/// nodes go through the nodes' tunnels) and internal (db has no way out;
/// web has, through front). Each task runs in a namespace of its own
/// and resolves through the node's resolver: the client reaches web by
/// name (its virtual address) and by `tasks.web` across nodes, cannot
/// resolve db nor reach db's address beside it; web reaches db across
/// nodes (dnsrr: db's own address); web's published port answers through the
/// mesh on the node that runs no web task; after a web task is killed no
/// request fails, not even at once (the node's proxy retries). The nodes' FORWARD chains drop
/// by default, as a Docker Engine leaves them: the agent lets its
/// bridges through DOCKER-USER (before, every call between nodes failed).
#[test]
fn a_stack_of_process_tasks_runs_as_an_application_across_three_nodes() -> Result<()> {
    let mut net = flotilla_testkit::net::Net::new()?;
    let hosts = [net.add_host()?, net.add_host()?, net.add_host()?];
    // Each node as a Docker Engine leaves a machine: FORWARD drops what
    // the engine does not pass, and DOCKER-USER comes first.
    for h in &hosts {
        for rule in [
            &["-N", "DOCKER-USER"][..],
            &["-A", "FORWARD", "-j", "DOCKER-USER"],
            &["-P", "FORWARD", "DROP"],
        ] {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &h.ns, "iptables", "-w"])
                .args(rule)
                .output()?;
            assert!(out.status.success(), "iptables {rule:?}: {}", text(&out));
        }
    }
    let here = net.reach_from_here()?;
    let mut nodes = flotilla_testkit::cluster_on(bin(), &hosts, 4280, &["n1", "n2", "n3"])?;
    let m = &nodes[0];
    for (name, role) in [("n1", "web"), ("n2", "web"), ("n3", "client")] {
        m.ok(&[
            "node",
            "update",
            "--label-add",
            &format!("role={role}"),
            name,
        ])?;
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("app.yml");
    std::fs::write(&file, APP.replace("BIN", &bin().display().to_string()))?;
    m.ok(&["stack", "deploy", "-c", &file.display().to_string(), "app"])?;
    let pids = wait_until("every task of app running", Duration::from_secs(60), || {
        let (web, client, db) = (
            running_pids(m, "app_web")?,
            running_pids(m, "app_client")?,
            running_pids(m, "app_db")?,
        );
        Ok((web.len() == 2 && client.len() == 1 && db.len() == 1).then_some((web, client, db)))
    })?;
    let (web, client, db) = (pids.0, pids.1[0], pids.2[0]);

    // By name: web's virtual address on front; each call reaches a task
    // of web on n1 or n2 across the overlay, and both answer in time.
    let vip = wait_until("the client to resolve web", Duration::from_secs(10), || {
        let out = in_task(client, "getent hosts web");
        Ok(out.status.success().then(|| {
            text(&out)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        }))
    })?;
    assert!(vip.starts_with("10.0.31."), "web resolved to {vip}");
    let mut slots = std::collections::BTreeSet::new();
    wait_until(
        "the client to reach both web tasks by name",
        Duration::from_secs(20),
        || {
            let out = in_task(client, "wget -qO- -T 2 -t 1 http://web:8080/");
            let answer = text(&out);
            if out.status.success() {
                slots.insert(answer.split_whitespace().nth(1).unwrap_or("").to_string());
            }
            Ok((slots.len() == 2).then_some(()))
        },
    )?;
    let tasks_web = in_task(
        client,
        "getent ahostsv4 tasks.web | awk '{print $1}' | sort -u",
    );
    let want = running_addresses(m, "app_web", "10.0.31.")?;
    assert_eq!(
        text(&tasks_web)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>(),
        want,
        "tasks.web from the client"
    );
    // n3 forwards frames to each web task to its node alone: a forwarding
    // entry per remote task's MAC (made from its address).
    let front_vni = network(m, "app_front")?["vni"]
        .as_u64()
        .ok_or_else(|| anyhow!("front has no VNI"))?;
    let fdb = flood_peers(&hosts[2].ns, front_vni);
    for addr in &want {
        let o: Vec<u8> = addr.split('.').filter_map(|p| p.parse().ok()).collect();
        let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        assert!(
            fdb.contains(&mac),
            "no entry for {addr} ({mac}) on n3: {fdb}"
        );
    }
    for addr in &want {
        let out = in_task(client, &format!("wget -qO- -T 2 -t 1 http://{addr}:8080/"));
        assert!(
            out.status.success(),
            "client to web task {addr}: {}",
            text(&out)
        );
    }

    // db is on back only: the client cannot resolve it nor reach it.
    let hidden = in_task(client, "getent hosts db");
    assert!(
        !hidden.status.success(),
        "the client resolved db: {}",
        text(&hidden)
    );
    let db_addr = m.tasks("app_db")?[0]["networks"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(db_addr.starts_with("10.0.32."), "{db_addr}");
    let blocked = in_task(
        client,
        &format!("wget -qO- -T 2 -t 1 http://{db_addr}:5432/"),
    );
    assert!(
        !blocked.status.success(),
        "the client reached db: {}",
        text(&blocked)
    );
    // back is encrypted: its nodes carry it through their tunnels' TAP
    // devices, with no VXLAN device for it.
    let back_vni = network(m, "app_back")?["vni"]
        .as_u64()
        .ok_or_else(|| anyhow!("back has no VNI"))?;
    let n3 = links(&hosts[2].ns);
    assert!(
        n3.contains(&format!("flvt{back_vni}")) && !n3.contains(&format!("flvx{back_vni}")),
        "{n3}"
    );
    // web is on back too: db resolves to db's own address, and answers.
    let from_web = in_task(web[0], "getent hosts db");
    assert!(text(&from_web).starts_with(&db_addr), "{}", text(&from_web));
    let reached = in_task(web[0], "wget -qO- -T 2 -t 1 http://db:5432/");
    assert!(reached.status.success(), "web to db: {}", text(&reached));
    // db is dnsrr: with two tasks, its name and tasks.db are exactly their
    // two addresses.
    m.ok(&["service", "scale", "app_db=2"])?;
    let db_addrs = wait_until("two db tasks running", Duration::from_secs(30), || {
        let a = running_addresses(m, "app_db", "10.0.32.")?;
        Ok((a.len() == 2).then_some(a))
    })?;
    for name in ["db", "tasks.db"] {
        let script = format!("getent ahostsv4 {name} | awk '{{print $1}}' | sort -u");
        wait_until(
            &format!("web to resolve {name} to both db tasks"),
            Duration::from_secs(10),
            || {
                let got: Vec<String> = text(&in_task(web[0], &script))
                    .lines()
                    .map(String::from)
                    .collect();
                Ok((got == db_addrs).then_some(()))
            },
        )?;
    }

    // back is internal: db has no way out of it; web, whose front is
    // not, reaches a server outside the cluster (masqueraded).
    let outside = std::net::TcpListener::bind((here.as_str(), 0))?;
    let outside_addr = outside.local_addr()?;
    std::thread::spawn(move || {
        for mut conn in outside.incoming().flatten() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\noutside");
        }
    });
    let out_of = |pid: u64| in_task(pid, &format!("wget -qO- -T 2 -t 1 http://{outside_addr}/"));
    let from_web = out_of(web[0]);
    assert!(
        text(&from_web).contains("outside"),
        "web's way out: {}",
        text(&from_web)
    );
    let from_db = out_of(db);
    assert!(
        !from_db.status.success(),
        "db left its internal network: {}",
        text(&from_db)
    );

    // The published port answers on n3, which runs no web task.
    let ingress = std::process::Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://{}:18080/", hosts[2].addr)])
        .output()?;
    assert!(
        String::from_utf8_lossy(&ingress.stdout).starts_with("slot"),
        "ingress on n3: {}",
        text(&ingress)
    );

    // A web task refuses connections from its network (a reset from its
    // namespace's input) while its health check, on loopback, passes: it
    // stays in rotation, and every call to web's virtual address is
    // answered, those that met it first by the other task (the node's
    // proxy tries the next task when a connect fails; before, the
    // kernel's forwarding sent about half the calls to it, and they
    // failed).
    let refuse = "nft add table ip refuse && nft add chain ip refuse input '{ type filter hook input priority 0; }' && nft add rule ip refuse input iifname != lo tcp dport 8080 reject with tcp reset";
    let set = in_task(web[1], refuse);
    assert!(set.status.success(), "{}", text(&set));
    for i in 0..20 {
        let out = in_task(client, "wget -qO- -T 2 -t 1 http://web:8080/");
        assert!(
            out.status.success(),
            "call {i} while a web task refuses: {}",
            text(&out)
        );
    }
    let unset = in_task(web[1], "nft delete table ip refuse");
    assert!(unset.status.success(), "{}", text(&unset));
    // The client's node (n3) counted them: every call, and the retries.
    let vip_metric = |name: &str| -> Result<f64> {
        let sock = nodes[2].data_dir().join("flotilla.sock");
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "5", "--unix-socket"])
            .arg(&sock)
            .arg("http://localhost/metrics")
            .output()?;
        flotilla_testkit::metric_in(&String::from_utf8_lossy(&out.stdout), name)
            .ok_or_else(|| anyhow!("no {name} in n3's metrics: {}", text(&out)))
    };
    assert!(vip_metric("flotilla_vip_connections")? >= 20.0);
    assert!(vip_metric("flotilla_vip_retries")? >= 1.0);

    // A web task dies: no call fails, not even at once. The calls go to
    // web's virtual address, and the node's proxy tries the other task
    // when the connect to the dead one fails (before, with the kernel's
    // forwarding, a call in the second after the kill could meet the dead
    // task and fail).
    let killed = web[0] as i32;
    // SAFETY: kill has no memory preconditions; the pid is a task's.
    unsafe { libc::kill(killed, libc::SIGKILL) };
    for i in 0..10 {
        let out = in_task(client, "wget -qO- -T 2 -t 1 http://web:8080/");
        if !out.status.success() {
            eprintln!("PS {}", m.ok(&["service", "ps", "app_web"])?.stdout);
            eprintln!(
                "NFT {}",
                text(&in_task(client, "nft list ruleset; ip neigh; ip addr"))
            );
            eprintln!(
                "W {}",
                text(&in_task(client, "wget -S -O- -T 2 -t 1 http://web:8080/"))
            );
        }
        assert!(
            out.status.success(),
            "call {i} after the kill: {}",
            text(&out)
        );
    }

    // n3's daemon is killed and comes back: it adopts the client and db
    // in their namespaces and keeps its bridges, which hold their veths
    // (before, it removed a bridge it found and cut them off); the
    // client's virtual addresses follow the table again.
    nodes[2].kill9()?;
    nodes[2].restart()?;
    let back = wait_until(
        "the client to reach web after n3's restart",
        Duration::from_secs(20),
        || {
            Ok(in_task(client, "wget -qO- -T 2 -t 1 http://web:8080/")
                .status
                .success()
                .then_some(()))
        },
    );
    if back.is_err() {
        let probe =
            "getent hosts web; nft list ruleset; ip neigh; wget -O- -T 2 -t 1 http://web:8080/";
        eprintln!("CLIENT {}", text(&in_task(client, probe)));
        eprintln!("N3 {}", nodes[2].log_tail());
        eprintln!("LINKS {}", links(&hosts[2].ns));
        eprintln!("FDB {}", flood_peers(&hosts[2].ns, front_vni));
    }
    back?;
    // The other web task goes next: first the killed one's replacement
    // must be in rotation, or no task would be left to answer (seen once:
    // the call timed out with only the dead task in the table).
    wait_until(
        "two healthy web tasks again",
        Duration::from_secs(30),
        || {
            Ok((nodes[0]
                .tasks("app_web")?
                .iter()
                .filter(|t| t["state"] == "running" && t["health"] == "healthy")
                .count()
                == 2)
                .then_some(()))
        },
    )?;
    let other = web[1] as i32;
    // SAFETY: as above.
    unsafe { libc::kill(other, libc::SIGKILL) };
    for i in 0..10 {
        let out = in_task(client, "wget -qO- -T 2 -t 1 http://web:8080/");
        assert!(
            out.status.success(),
            "call {i} after n3's restart and a kill: {}",
            text(&out)
        );
    }
    // n2's daemon runs as the systemd unit runs it (--keep-tasks-on-stop)
    // and is stopped: its web task runs on and answers at its address
    // while the daemon is down (before, the stop removed n2's bridge and
    // VXLAN device and cut the task off), and the next start adopts it.
    nodes[1].kill9()?;
    nodes[1].add_args(&["--keep-tasks-on-stop"]);
    nodes[1].restart()?;
    let on_n2 = |m: &Daemon| -> Result<Option<(u64, String)>> {
        Ok(m.tasks("app_web")?.iter().find_map(|t| {
            let addr = t["networks"]
                .as_array()?
                .iter()
                .find_map(|n| n["address"].as_str().filter(|a| a.starts_with("10.0.31.")))?;
            (t["state"] == "running" && t["node"] == "n2")
                .then(|| Some((t["pid"].as_u64()?, addr.to_string())))?
        }))
    };
    let (kept_pid, kept_addr) =
        wait_until("a web task running on n2", Duration::from_secs(30), || {
            on_n2(&nodes[0])
        })?;
    let at_kept = format!("wget -qO- -T 2 -t 1 http://{kept_addr}:8080/");
    wait_until(
        "the client to reach n2's web task at its address",
        Duration::from_secs(10),
        || Ok(in_task(client, &at_kept).status.success().then_some(())),
    )?;
    nodes[1].terminate(Duration::from_secs(30))?;
    // SAFETY: signal 0 only asks whether the process exists.
    assert_eq!(
        unsafe { libc::kill(kept_pid as i32, 0) },
        0,
        "n2's web task stopped with its daemon"
    );
    let down = in_task(client, &at_kept);
    assert!(
        down.status.success(),
        "n2's web task while its daemon is down: {}\nLINKS {}",
        text(&down),
        links(&hosts[1].ns)
    );
    // A task of the stopped node still reaches web's virtual address: its
    // node's proxy went with the daemon, so the stop handed virtual
    // addresses to the kernel's forwarding (before, the connect met the
    // node's rules to the gone proxy and was refused).
    let via_vip = in_task(kept_pid, &format!("wget -qO- -T 2 -t 1 http://{vip}:8080/"));
    assert!(
        via_vip.status.success(),
        "n2's web task to web's virtual address while its daemon is down: {}",
        text(&via_vip)
    );
    nodes[1].restart()?;
    let m = &nodes[0];
    wait_until("n2 to adopt its web task", Duration::from_secs(30), || {
        Ok(on_n2(m)?.filter(|(pid, _)| *pid == kept_pid).map(|_| ()))
    })?;
    let after = in_task(client, &at_kept);
    assert!(
        after.status.success(),
        "n2's web task after the start: {}",
        text(&after)
    );
    // Back to a daemon whose stop stops its tasks, which the end checks.
    nodes[1].kill9()?;
    nodes[1].remove_args(&["--keep-tasks-on-stop"]);
    nodes[1].restart()?;
    let m = &nodes[0];

    // A rolling update under load through web's virtual address: each
    // old task leaves the rotation before its SIGTERM (before, a task on
    // networks without published ports got it at once), each new one
    // joins once its health check passes, and no call fails.
    let current = |m: &Daemon| -> Result<Vec<String>> {
        Ok(m.tasks("app_web")?
            .iter()
            .filter(|t| t["state"] == "running" && t["health"] == "healthy")
            .filter_map(|t| t["id"].as_str().map(String::from))
            .collect())
    };
    let before = wait_until("both web tasks healthy", Duration::from_secs(20), || {
        let now = current(m)?;
        Ok((now.len() == 2).then_some(now))
    })?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut calls, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = in_task(client, "wget -qO- -T 2 -t 1 http://web:8080/");
                calls += 1;
                if !out.status.success() {
                    failed.push(text(&out));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (calls, failed)
        })
    };
    let updated = m.cli(&["service", "update", "--force", "app_web"]);
    if updated.code != 0 {
        eprintln!(
            "PS {}",
            m.ok(&["service", "ps", "app_web", "--no-trunc"])?.stdout
        );
    }
    updated.ok()?;
    wait_until(
        "both web tasks replaced and healthy",
        Duration::from_secs(60),
        || {
            let now = current(m)?;
            Ok((now.len() == 2 && now.iter().all(|t| !before.contains(t))).then_some(()))
        },
    )?;
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failed) = loader
        .join()
        .map_err(|_| anyhow!("the client's load panicked"))?;
    assert!(calls > 20, "only {calls} calls during the update");
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed: {failed:?}",
        failed.len()
    );

    let ids = task_ids(m, &["app_web", "app_client", "app_db"])?;
    drop(nodes);
    assert_eq!(leftover_namespaces(&ids), Vec::<String>::new());
    drop(net);
    Ok(())
}

const APP_CONTAINERS: &str = r#"
services:
  web:
    image: IMAGE
    command: ["sh", "-c", "echo slot $$FLOTILLA_TASK_SLOT > /www/index.html && exec httpd -f -p 8080 -h /www"]
    networks: [front, back]
    deploy:
      replicas: 2
      placement:
        constraints: [node.labels.role==web]
      restart_policy:
        condition: any
        delay: 0s
    stop_grace_period: 1s
  client:
    image: IMAGE
    command: ["sleep", "600"]
    networks: [front]
    deploy:
      placement:
        constraints: [node.labels.role==client]
    stop_grace_period: 1s
  db:
    image: IMAGE
    command: ["httpd", "-f", "-p", "5432", "-h", "/www"]
    networks: [back]
    deploy:
      endpoint_mode: dnsrr
      placement:
        constraints: [node.labels.role==client]
    stop_grace_period: 1s
networks:
  front:
    ipam:
      config: [{subnet: 10.0.41.0/24}]
  back:
    ipam:
      config: [{subnet: 10.0.42.0/24}]
"#;

/// The running tasks of `service`: (container ID, node name).
fn running_containers(d: &Daemon, service: &str) -> Result<Vec<(String, String)>> {
    Ok(d.tasks(service)?
        .iter()
        .filter(|t| t["state"] == "running")
        .filter_map(|t| {
            Some((
                t["container_id"].as_str()?.to_string(),
                t["node"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// The first acceptance test of issue 11: three nodes, each in its own
/// network namespace with its own Docker Engine, and the stack of `web`
/// (2 replicas), `client` and `db` as containers of a busybox image built
/// `FROM scratch`. The containers join engine networks on the nodes'
/// bridges with the addresses the leader gave; the engine's resolver
/// relays to the node's. The client reaches web by name and `tasks.web`
/// on other nodes, cannot resolve db nor reach its address (db runs
/// beside it, on back); web reaches db (dnsrr) across nodes; after a web
/// container is killed, no call fails, not even at once.
#[test]
fn a_stack_of_containers_runs_as_an_application_across_three_nodes() -> Result<()> {
    let image = flotilla_testkit::image::busybox_image("flotilla-test-busybox", None)?;
    let saved = tempfile::tempdir()?;
    let tar = saved.path().join("image.tar");
    let out = std::process::Command::new("docker")
        .args(["save", "-o"])
        .arg(&tar)
        .arg(&image)
        .output()?;
    assert!(out.status.success(), "docker save: {}", text(&out));
    let mut net = flotilla_testkit::net::Net::new()?;
    let hosts = [net.add_host()?, net.add_host()?, net.add_host()?];
    let engines = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| flotilla_testkit::net::Dockerd::start(h, 40 + i as u8))
        .collect::<Result<Vec<_>>>()?;
    for e in &engines {
        e.load(&tar)?;
    }
    let envs: Vec<Vec<(String, String)>> = engines
        .iter()
        .map(|e| vec![("DOCKER_HOST".to_string(), e.docker_host())])
        .collect();
    let nodes =
        flotilla_testkit::cluster_on_with_env(bin(), &hosts, 4280, &["n1", "n2", "n3"], &envs)?;
    let m = &nodes[0];
    for (name, role) in [("n1", "web"), ("n2", "web"), ("n3", "client")] {
        m.ok(&[
            "node",
            "update",
            "--label-add",
            &format!("role={role}"),
            name,
        ])?;
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("app.yml");
    std::fs::write(&file, APP_CONTAINERS.replace("IMAGE", &image))?;
    m.ok(&["stack", "deploy", "-c", &file.display().to_string(), "app"])?;
    let engine_of =
        |node: &str| &engines[node.trim_start_matches('n').parse::<usize>().unwrap_or(1) - 1];
    let (web, client) = wait_until(
        "every container of app running",
        Duration::from_secs(90),
        || {
            let (web, client, db) = (
                running_containers(m, "app_web")?,
                running_containers(m, "app_client")?,
                running_containers(m, "app_db")?,
            );
            Ok((web.len() == 2 && client.len() == 1 && db.len() == 1).then_some((web, client)))
        },
    )?;
    let exec = |(id, node): &(String, String), script: &str| -> Result<std::process::Output> {
        engine_of(node).docker(&["exec", id, "sh", "-c", script])
    };
    let client = &client[0];
    let get = |target: &str| format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {target}");

    let mut slots = std::collections::BTreeSet::new();
    let reached = wait_until(
        "the client to reach both web containers by name",
        Duration::from_secs(30),
        || {
            let out = exec(client, &get("web 8080"))?;
            let answer = text(&out);
            if let Some(line) = answer.lines().find(|l| l.starts_with("slot ")) {
                slots.insert(line.to_string());
            }
            Ok((slots.len() == 2).then_some(()))
        },
    );
    if reached.is_err() {
        eprintln!("DIAG {}", text(&exec(client, "cat /etc/resolv.conf; nslookup web; nslookup web 10.0.41.1; ip addr; ip route; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 web 8080")?));
        eprintln!("NODE {}", text(&std::process::Command::new("ip").args(["netns", "exec", &hosts[2].ns, "sh", "-c", "ip -br addr; nft list ruleset | head -80; ss -lunp | grep :53; ip netns list"]).output()?));
        eprintln!("LOG {}", nodes[2].log_tail());
    }
    reached?;
    let vip = text(&exec(client, "nslookup web")?);
    assert!(vip.contains("10.0.41."), "{vip}");
    let want = running_addresses(m, "app_web", "10.0.41.")?;
    let tasks_web = text(&exec(client, "nslookup tasks.web")?);
    for addr in &want {
        assert!(
            tasks_web.contains(addr.as_str()),
            "tasks.web: {tasks_web}, want {want:?}"
        );
    }

    // db is on back only: not resolved, and its address does not answer.
    let hidden = text(&exec(client, "nslookup db")?);
    assert!(
        !hidden.contains("10.0.42."),
        "the client resolved db: {hidden}"
    );
    let db_addr = m.tasks("app_db")?[0]["networks"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let blocked = text(&exec(client, &get(&format!("{db_addr} 5432")))?);
    assert!(
        !blocked.contains("200 OK"),
        "the client reached db: {blocked}"
    );
    // web is on back too: it reaches db on n3, by name.
    let reached = text(&exec(&web[0], &get("db 5432"))?);
    assert!(reached.contains("200 OK"), "web to db: {reached}");

    // A web container dies: no call fails, not even at once (the node's
    // proxy tries the other task when the connect to the dead one fails).
    let (victim, node) = &web[0];
    let killed = engine_of(node).docker(&["kill", victim])?;
    assert!(killed.status.success(), "docker kill: {}", text(&killed));
    for i in 0..10 {
        let answer = text(&exec(client, &get("web 8080"))?);
        assert!(
            answer.contains("slot "),
            "call {i} after the kill: {answer}"
        );
    }
    // A constraint on the labels an engine reports (n2's is zone=z41)
    // places a task on that node only.
    m.ok(&[
        "service",
        "create",
        "--name",
        "zoned",
        "--replicas",
        "2",
        "--constraint",
        "engine.labels.zone==z41",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    let placed = wait_until("zoned's tasks to run", Duration::from_secs(30), || {
        let on: Vec<String> = m
            .tasks("zoned")?
            .iter()
            .filter(|t| t["state"] == "running")
            .filter_map(|t| t["node"].as_str().map(str::to_string))
            .collect();
        Ok((on.len() == 2).then_some(on))
    })?;
    assert_eq!(placed, vec!["n2".to_string(), "n2".to_string()]);
    let ids = task_ids(m, &["app_web", "app_client", "app_db"])?;
    drop(nodes);
    assert_eq!(leftover_namespaces(&ids), Vec::<String>::new());
    drop(engines);
    drop(net);
    Ok(())
}
