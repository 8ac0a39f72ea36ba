//! The routing mesh as a user meets it: a published port that answers on
//! every node, balanced over the ready tasks wherever they run, with no
//! failed request when a task dies, during a rolling update or a drain,
//! and the client's address passed on with the PROXY protocol.
//!
//! The tasks are `flotilla demo http`, which answers each request with
//! `slot S task T node N client ADDR`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use flotilla_testkit::net::Net;
use flotilla_testkit::{free_port, http_get, wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// `service create OPTIONS -- flotilla demo DEMO...` on `d`.
fn demo_service(d: &Daemon, options: &[&str], demo: &[&str]) -> Result<()> {
    let bin = bin().display().to_string();
    let mut args = vec!["service", "create"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", &bin, "demo"]);
    args.extend_from_slice(demo);
    d.ok(&args)?;
    Ok(())
}

/// The task ID in a demo answer.
fn task_of(body: &str) -> Option<String> {
    let mut words = body.split_whitespace();
    while let Some(w) = words.next() {
        if w == "task" {
            return words.next().map(String::from);
        }
    }
    None
}

/// The client address in a demo answer.
fn client_of(body: &str) -> Option<String> {
    body.split_whitespace()
        .skip_while(|w| *w != "client")
        .nth(1)
        .map(String::from)
}

fn get(addr: &str) -> Result<String> {
    let (code, body) = http_get(addr, "/", Duration::from_secs(2))?;
    if code != 200 {
        bail!("{addr} answered {code}: {body}");
    }
    Ok(body)
}

fn ready(d: &Daemon, name: &str, want: u64) -> Result<()> {
    d.wait_ready(name, want, Duration::from_secs(20))
}

/// A client that calls `addr` in a loop until stopped, counting the
/// calls that failed and the tasks that answered.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<(Duration, String)>>>,
    thread: Option<std::thread::JoinHandle<BTreeSet<String>>>,
    started: Instant,
}

impl Load {
    fn start(addr: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = Instant::now();
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                while !stop.load(Ordering::SeqCst) {
                    match get(&addr) {
                        Ok(body) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            seen.extend(task_of(&body));
                        }
                        Err(e) => failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((started.elapsed(), format!("{e:#}"))),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                seen
            })
        };
        Load {
            stop,
            ok,
            failed,
            thread: Some(thread),
            started,
        }
    }

    /// Stops the client: the calls that succeeded, those that failed
    /// (when, since the start, and why), and the tasks that answered.
    fn finish(mut self) -> (u64, Vec<(Duration, String)>, BTreeSet<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (self.ok.load(Ordering::SeqCst), failed, seen)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The acceptance, on three hosts each in its own network
/// namespace: the port answers on every node, the third of which runs no
/// task; a task killed with -9 costs no request after 1 s and its
/// replacement is sent traffic; a drain costs none; PROXY protocol gives
/// the backend the client's address.
#[test]
fn a_published_port_answers_on_every_node_and_survives_a_kill_and_a_drain() -> Result<()> {
    let mut net = Net::new()?;
    let hosts = [net.add_host()?, net.add_host()?, net.add_host()?];
    let here = net.reach_from_here()?;
    let port = 4280;
    let names = ["n1", "n2", "n3"];
    let nodes = flotilla_testkit::cluster_on(bin(), &hosts, port, &names)?;
    let m = &nodes[0];
    for name in ["n1", "n2"] {
        m.ok(&["node", "update", "--label-add", "web=yes", name])?;
    }
    let published = 18181;
    demo_service(
        m,
        &[
            "--name",
            "web",
            "--replicas",
            "2",
            "--constraint",
            "node.labels.web==yes",
            "--restart-delay",
            "0s",
            "--publish",
            &format!("{published}:8080"),
            "-d",
        ],
        &["http"],
    )?;
    ready(m, "web", 2)?;
    let tasks = m.tasks("web")?;
    let on_n3 = tasks.iter().filter(|t| t["node"] == "n3").count();
    assert_eq!(on_n3, 0, "the constraint keeps n3 free: {tasks:?}");

    // 30 requests on each node, n3 included, all answered; together they
    // reach both tasks.
    let mut seen = BTreeSet::new();
    for h in &hosts {
        let addr = format!("{}:{published}", h.addr);
        // Every node's mesh learns the table from its session.
        wait_until(
            &format!("{addr} to answer"),
            Duration::from_secs(10),
            || Ok(get(&addr).ok()),
        )?;
        for _ in 0..30 {
            let body = get(&addr)?;
            seen.insert(task_of(&body).ok_or_else(|| anyhow!("no task in {body:?}"))?);
        }
    }
    assert_eq!(seen.len(), 2, "both tasks answered: {seen:?}");

    // kill -9 one task's process while a client calls n3.
    let victim = tasks
        .iter()
        .find(|t| t["state"] == "running" && t["pid"].is_u64())
        .ok_or_else(|| anyhow!("no running task with a pid: {tasks:?}"))?;
    let victim_id = victim["id"].as_str().unwrap_or_default().to_string();
    let pid = victim["pid"].as_u64().unwrap_or_default() as i32;
    let load = Load::start(format!("{}:{published}", hosts[2].addr));
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = load.started.elapsed();
    // SAFETY: a task process this test's cluster started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let replacement = wait_until("a replacement task", Duration::from_secs(20), || {
        let tasks = m.tasks("web")?;
        Ok(tasks
            .iter()
            .find(|t| {
                t["state"] == "running"
                    && t["desired_state"] == "running"
                    && t["id"] != victim_id.as_str()
                    && t["slot"] == victim["slot"]
            })
            .and_then(|t| t["id"].as_str().map(String::from)))
    })?;
    ready(m, "web", 2)?;
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, failed, seen) = load.finish();
    let late: Vec<_> = failed
        .iter()
        .filter(|(at, _)| *at > killed_at + Duration::from_secs(1))
        .collect();
    eprintln!(
        "kill: {ok} answered, {} failed ({} more than 1 s after the kill)",
        failed.len(),
        late.len()
    );
    assert!(
        late.is_empty(),
        "failed later than 1 s after the kill: {late:?}"
    );
    assert!(
        seen.contains(&replacement),
        "the replacement {replacement} gets traffic: {seen:?}"
    );

    // A drain of n2 under load: its task stops only after leaving the
    // mesh, so no request fails.
    let load = Load::start(format!("{}:{published}", hosts[0].addr));
    std::thread::sleep(Duration::from_millis(300));
    m.ok(&["node", "update", "--availability", "drain", "n2"])?;
    wait_until("n2 to run nothing", Duration::from_secs(20), || {
        let tasks = m.tasks("web")?;
        Ok(tasks
            .iter()
            .all(|t| t["node"] != "n2" || t["state"] != "running")
            .then_some(()))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, _) = load.finish();
    eprintln!("drain: {ok} answered, {} failed", failed.len());
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "requests failed during the drain: {failed:?}"
    );

    // PROXY protocol: the backend sees (and logs) this client's address
    // rather than the mesh's.
    let addr = format!("{}:{published}", hosts[2].addr);
    let before = client_of(&get(&addr)?).unwrap_or_default();
    assert!(!before.starts_with(&format!("{here}:")), "{before}");
    m.ok(&["service", "update", "web", "--proxy-protocol", "v1", "-d"])?;
    let after = wait_until("the client's own address", Duration::from_secs(10), || {
        let client = client_of(&get(&addr)?).unwrap_or_default();
        Ok(client.starts_with(&format!("{here}:")).then_some(client))
    })?;
    eprintln!("client seen as {before} without PROXY, {after} with it");
    wait_until(
        "the backend to log the client",
        Duration::from_secs(10),
        || {
            let logs = m.ok(&["service", "logs", "web"])?.stdout;
            Ok(logs.contains(&format!("{here}:")).then_some(()))
        },
    )?;
    Ok(())
}

/// On one node: ports without a number get one from the documented range,
/// a port another service publishes is refused naming it, a rolling update
/// (start-first) under load refuses nothing, and `mesh stats` counts what
/// was sent.
#[test]
fn ports_are_allocated_and_a_rolling_update_refuses_nothing() -> Result<()> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    let published = free_port()?;
    demo_service(
        &d,
        &[
            "--name",
            "web",
            "--replicas",
            "2",
            "--publish",
            &format!("{published}:8080"),
            "--publish",
            "9090",
            "--update-order",
            "start-first",
            "-d",
        ],
        &["http", "--delay", "100ms"],
    )?;
    ready(&d, "web", 2)?;
    let service = d.service("web")?;
    let ports: Vec<(u64, u64)> = service["published"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["published"].as_u64().unwrap_or(0),
                        p["target"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ports.len(), 2, "{service}");
    assert_eq!(ports[0], (u64::from(published), 8080));
    assert!(
        (30000..=32767).contains(&ports[1].0) && ports[1].1 == 9090,
        "{ports:?}"
    );
    let ls = d.ok(&["service", "ls"])?.stdout;
    assert!(
        ls.contains(&format!("*:{published}->8080/tcp")) && ls.contains("->9090/tcp"),
        "{ls}"
    );
    // Each task's endpoints are in `service ps --format json`.
    for t in d.tasks("web")?.iter().filter(|t| t["state"] == "running") {
        let endpoints = t["endpoints"].as_array().cloned().unwrap_or_default();
        assert_eq!(endpoints.len(), 2, "{t}");
        let addr = endpoints[0]["address"].as_str().unwrap_or_default();
        let body = get(addr)?;
        assert_eq!(task_of(&body).as_deref(), t["id"].as_str(), "{body}");
    }

    let out = d.cli(&[
        "service",
        "create",
        "--name",
        "api",
        "--publish",
        &format!("{published}:80"),
        "--",
        "sleep",
        "1000",
    ]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(&format!(
            "port {published}/tcp is already published by service web"
        )),
        "{}",
        out.stderr
    );

    // Four clients, each answer held back 100 ms: requests are in flight
    // on the old tasks whenever they are stopped.
    let addr = format!("127.0.0.1:{published}");
    let loads: Vec<Load> = (0..4).map(|_| Load::start(addr.clone())).collect();
    std::thread::sleep(Duration::from_millis(300));
    d.ok(&["service", "update", "web", "--env-add", "VERSION=2"])?;
    ready(&d, "web", 2)?;
    std::thread::sleep(Duration::from_millis(300));
    let (mut ok, mut failed, mut seen) = (0, Vec::new(), BTreeSet::new());
    for load in loads {
        let (o, f, s) = load.finish();
        ok += o;
        failed.extend(f);
        seen.extend(s);
    }
    eprintln!(
        "update: {ok} answered, {} failed, {} tasks seen",
        failed.len(),
        seen.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during the update: {failed:?}"
    );
    assert!(seen.len() >= 4, "old and new tasks answered: {seen:?}");

    let stats = d
        .ok(&["mesh", "stats", "web", "--format", "json"])?
        .json()?;
    let listener = stats
        .as_array()
        .and_then(|nodes| nodes.first())
        .and_then(|n| n["listeners"].as_array())
        .and_then(|l| l.iter().find(|l| l["published"] == published).cloned())
        .ok_or_else(|| anyhow!("no listener for {published} in {stats}"))?;
    let total = listener["total"].as_u64().unwrap_or(0);
    assert!(total >= ok, "{ok} answered, {total} counted: {listener}");
    Ok(())
}

/// Host mode: the port is the task's own on its node, straight to it;
/// a second task of the service waits, since one node cannot give the
/// port twice, and says why.
#[test]
fn a_host_mode_port_is_the_tasks_own_and_one_node_takes_one_task() -> Result<()> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    let published = free_port()?;
    demo_service(
        &d,
        &[
            "--name",
            "edge",
            "--replicas",
            "2",
            "--publish",
            &format!("published={published}, target=8080, mode=host"),
            "-d",
        ],
        &["http"],
    )?;
    let tasks = wait_until(
        "one task running, one waiting",
        Duration::from_secs(20),
        || {
            let tasks = d.tasks("edge")?;
            let running = tasks.iter().filter(|t| t["state"] == "running").count();
            let pending = tasks.iter().filter(|t| t["state"] == "pending").count();
            Ok((running == 1 && pending == 1).then_some(tasks))
        },
    )?;
    let waiting = tasks
        .iter()
        .find(|t| t["state"] == "pending")
        .ok_or_else(|| anyhow!("no pending task"))?;
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("host-mode port {published}/tcp already taken")),
        "{message}"
    );
    let running = tasks
        .iter()
        .find(|t| t["state"] == "running")
        .ok_or_else(|| anyhow!("no running task"))?;
    assert_eq!(
        running["endpoints"][0]["address"],
        format!("127.0.0.1:{published}"),
        "{running}"
    );
    // The task itself answers on the port: no mesh in between (the client
    // is this test, not a mesh node).
    let body = wait_until("the task to answer", Duration::from_secs(10), || {
        Ok(get(&format!("127.0.0.1:{published}")).ok())
    })?;
    assert_eq!(task_of(&body).as_deref(), running["id"].as_str(), "{body}");
    let ls = d.ok(&["service", "ls"])?.stdout;
    assert!(ls.contains(&format!(" {published}->8080/tcp")), "{ls}");
    Ok(())
}

/// UDP through the mesh: a datagram to the published port is answered by
/// a task, by flow.
#[test]
fn a_udp_port_is_answered_through_the_mesh() -> Result<()> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    let published = free_port()?;
    demo_service(
        &d,
        &[
            "--name",
            "dns",
            "--replicas",
            "2",
            "--publish",
            &format!("{published}:53/udp"),
            "-d",
        ],
        &["udp"],
    )?;
    ready(&d, "dns", 2)?;
    let ls = d.ok(&["service", "ls"])?.stdout;
    assert!(ls.contains(&format!("*:{published}->53/udp")), "{ls}");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut tasks = BTreeSet::new();
    for i in 0..2 {
        // A client of its own per flow; the second goes to the other task.
        let client = if i == 0 {
            socket.try_clone()?
        } else {
            let c = std::net::UdpSocket::bind("127.0.0.1:0")?;
            c.set_read_timeout(Some(Duration::from_millis(300)))?;
            c
        };
        let answer = wait_until("a udp answer", Duration::from_secs(10), || {
            client.send_to(b"hello", ("127.0.0.1", published))?;
            let mut buf = [0u8; 512];
            Ok(client
                .recv(&mut buf)
                .ok()
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()))
        })?;
        assert!(answer.ends_with(": hello"), "{answer}");
        tasks.extend(task_of(&answer));
    }
    assert_eq!(tasks.len(), 2, "two flows, two tasks: {tasks:?}");
    Ok(())
}

/// A published port that another program holds on the node: `service
/// inspect` says which node and port, and the mesh opens the port once
/// it is free.
#[test]
fn a_port_held_by_another_program_is_named_and_taken_once_free() -> Result<()> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    let holder = std::net::TcpListener::bind("127.0.0.1:0")?;
    let published = holder.local_addr()?.port();
    demo_service(
        &d,
        &[
            "--name",
            "web",
            "--publish",
            &format!("{published}:8080"),
            "-d",
        ],
        &["http"],
    )?;
    ready(&d, "web", 1)?;
    let said = wait_until("inspect to name the port", Duration::from_secs(10), || {
        let out = d
            .ok(&["service", "inspect", "web", "--format", "table"])?
            .stdout;
        Ok(out
            .lines()
            .find(|l| l.starts_with("Port not open:"))
            .map(String::from))
    })?;
    assert!(
        said.contains(&format!("{published}/tcp on ")) && said.contains("address in use"),
        "{said}"
    );
    drop(holder);
    let body = wait_until("the mesh to take the port", Duration::from_secs(10), || {
        Ok(get(&format!("127.0.0.1:{published}")).ok())
    })?;
    assert!(task_of(&body).is_some(), "{body}");
    let out = d
        .ok(&["service", "inspect", "web", "--format", "table"])?
        .stdout;
    assert!(!out.contains("Port not open"), "{out}");
    Ok(())
}
