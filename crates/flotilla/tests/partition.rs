//! Managers on a private network, each in its own network namespace with
//! its own address: one is cut off from the others, as by a switch that
//! fails, and then reconnected.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use flotilla_testkit::net::Net;
use flotilla_testkit::{wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn is_leader(d: &Daemon) -> bool {
    d.cli(&["info", "--format", "json"])
        .json()
        .map(|j| j["is_leader"] == true)
        .unwrap_or(false)
}

#[test]
fn a_cut_off_leader_loses_writes_and_the_majority_carries_on() -> Result<()> {
    let mut net = Net::new()?;
    let hosts = [net.add_host()?, net.add_host()?, net.add_host()?];
    let port = 4280;
    let m: Vec<Daemon> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Daemon::start_on(bin(), h, port, &["--name", &format!("m{}", i + 1)]))
        .collect::<Result<_>>()?;
    m[0].ok(&["init"])?;
    let addr = format!("{}:{port}", hosts[0].addr);
    let token = m[0]
        .ok(&["join-token", "manager", "-q"])?
        .stdout
        .trim()
        .to_string();
    m[1].ok(&["join", "--token", &token, &addr])?;
    m[2].ok(&["join", "--token", &token, &addr])?;
    m[0].ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "-d",
        "--",
        "sleep",
        "100000",
    ])?;
    assert!(is_leader(&m[0]));

    // Cut the leader off.
    net.cut(&hosts[0])?;
    let t0 = Instant::now();
    // The majority elects a new leader and takes writes...
    wait_until(
        "a write on the majority side",
        Duration::from_secs(5),
        || Ok((m[1].cli(&["service", "scale", "web=4"]).code == 0).then_some(())),
    )?;
    eprintln!("majority wrote {:?} after the cut", t0.elapsed());
    // ...while the old leader, alone, refuses writes quickly and says why.
    let t1 = Instant::now();
    let out = m[0].cli(&["service", "scale", "web=5"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("no quorum") || out.stderr.contains("no leader"),
        "{}",
        out.stderr
    );
    assert!(
        t1.elapsed() < Duration::from_millis(2500),
        "failed after {:?}",
        t1.elapsed()
    );

    // Reconnected, it follows the new leader and sees the majority's write.
    net.heal(&hosts[0])?;
    wait_until(
        "the old leader to follow and catch up",
        Duration::from_secs(10),
        || {
            let info = m[0].cli(&["info", "--format", "json"]);
            if info.code != 0 {
                return Ok(None);
            }
            let ls = m[0].cli(&["service", "inspect", "web"]).json()?;
            let replicas = ls[0]["spec"]["replicas"].as_u64().unwrap_or(0);
            Ok((!is_leader(&m[0]) && replicas == 4).then_some(()))
        },
    )?;
    Ok(())
}

/// Defect 4 (issue 9): openraft 0.9 never steps a leader down on its own;
/// one cut off from every other manager must stop acting as leader once no
/// quorum has acknowledged it within the lowest election timeout.
#[test]
fn a_cut_off_leader_stops_leading_within_its_lease() -> Result<()> {
    let mut net = Net::new()?;
    let hosts = [net.add_host()?, net.add_host()?, net.add_host()?];
    let port = 4290;
    let m: Vec<Daemon> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Daemon::start_on(bin(), h, port, &["--name", &format!("m{}", i + 1)]))
        .collect::<Result<_>>()?;
    m[0].ok(&["init"])?;
    let addr = format!("{}:{port}", hosts[0].addr);
    let token = m[0]
        .ok(&["join-token", "manager", "-q"])?
        .stdout
        .trim()
        .to_string();
    m[1].ok(&["join", "--token", &token, &addr])?;
    m[2].ok(&["join", "--token", &token, &addr])?;
    assert!(is_leader(&m[0]));

    net.cut(&hosts[0])?;
    let t0 = Instant::now();
    // The lease is the lowest election timeout; the rest is margin for the
    // CLI and a loaded machine.
    wait_until(
        "the cut-off leader to stop saying it leads",
        Duration::from_secs(3),
        || Ok((!is_leader(&m[0])).then_some(())),
    )?;
    eprintln!(
        "cut-off leader stopped leading {:?} after the cut",
        t0.elapsed()
    );
    // ...and its loops (orchestrator, scheduler, dispatcher) have stopped.
    wait_until(
        "the cut-off leader to stop its loops",
        Duration::from_secs(2),
        || Ok(m[0].log_tail().contains("no longer leader").then_some(())),
    )?;
    let info = m[0].ok(&["info", "--format", "json"])?.json()?;
    assert_ne!(
        info["leader"], "m1",
        "a cut-off leader must not name itself leader: {info}"
    );
    Ok(())
}
