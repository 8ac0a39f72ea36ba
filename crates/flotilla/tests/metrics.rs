//! `/metrics` through the real binary: the output parses as Prometheus
//! text, holds the cluster, raft, mesh and process series from the start
//! (at zero where nothing happened), follows a service's replicas, and
//! shows a killed task; without a certificate the client API port refuses
//! it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use flotilla_testkit::{free_port, http_get, wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// Every sample of a scrape, by name and sorted labels, parsed by a
/// Prometheus text parser.
fn scrape(addr: &str) -> Result<BTreeMap<String, f64>> {
    let (code, body) = http_get(addr, "/metrics", Duration::from_secs(5))?;
    if code != 200 {
        return Err(anyhow!("GET /metrics answered {code}: {body}"));
    }
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines)
        .map_err(|e| anyhow!("not Prometheus text ({e}): {body}"))?;
    let mut out = BTreeMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => {
                out.insert(
                    format!("{}_count", s.metric),
                    h.iter().map(|b| b.count).fold(0.0, f64::max),
                );
                continue;
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    Ok(out)
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> Result<f64> {
    m.get(key)
        .copied()
        .ok_or_else(|| anyhow!("no series {key} in {:?}", m.keys().collect::<Vec<_>>()))
}

#[test]
fn metrics_parse_and_hold_every_series_from_the_start() -> Result<()> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(bin(), "127.0.0.1:0", &["--metrics-listen", &addr])?;
    // Before init: the process and the mesh, nothing of a cluster.
    let fresh = scrape(&addr)?;
    assert!(get(&fresh, "flotilla_process_resident_memory_bytes{}")? > 0.0);
    for key in [
        "flotilla_vip_connections{}",
        "flotilla_vip_retries{}",
        "flotilla_vip_connections_refused{}",
    ] {
        assert_eq!(get(&fresh, key)?, 0.0, "{key}");
    }
    assert!(!fresh.contains_key("flotilla_raft_term{}"));
    d.ok(&["init"])?;
    let m = wait_until("the raft series", Duration::from_secs(10), || {
        let m = scrape(&addr)?;
        Ok(m.contains_key("flotilla_raft_term{}").then_some(m))
    })?;
    for key in [
        "flotilla_tasks{state=\"running\"}",
        "flotilla_tasks{state=\"failed\"}",
        "flotilla_tasks_kept{state=\"failed\"}",
        "flotilla_tasks_pending{}",
        "flotilla_nodes{state=\"down\"}",
        "flotilla_services{}",
        "flotilla_raft_leader_changes_total{}",
        "flotilla_raft_snapshots_total{}",
        "flotilla_node_heartbeat_timeouts_total{}",
        "flotilla_raft_log_entries{}",
        "flotilla_quorum{}",
        "flotilla_process_cpu_seconds{}",
    ] {
        get(&m, key)?;
    }
    assert_eq!(get(&m, "flotilla_tasks{state=\"running\"}")?, 0.0);
    assert_eq!(get(&m, "flotilla_quorum{}")?, 1.0);
    assert_eq!(get(&m, "flotilla_raft_leader{}")?, 1.0);
    assert!(get(&m, "flotilla_raft_term{}")? >= 1.0);
    assert!(m.contains_key("flotilla_raft_commit_seconds_count"));
    assert_eq!(get(&m, "flotilla_scheduling_seconds_count")?, 0.0);

    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "--",
        "sleep",
        "100000",
    ])?;
    let m = scrape(&addr)?;
    assert_eq!(get(&m, "flotilla_tasks{state=\"running\"}")?, 2.0);
    assert_eq!(
        get(&m, "flotilla_service_replicas_running{service=\"web\"}")?,
        2.0
    );
    assert_eq!(
        get(&m, "flotilla_service_replicas_desired{service=\"web\"}")?,
        2.0
    );
    assert!(m.contains_key("flotilla_raft_commit_seconds_count"));
    // Both tasks were scheduled by this leader.
    assert_eq!(get(&m, "flotilla_scheduling_seconds_count")?, 2.0);
    // A task killed from outside: its failure stays counted after its
    // replacement runs.
    let pids = d.task_pids();
    let victim = *pids.first().ok_or_else(|| anyhow!("no task pid"))?;
    // SAFETY: a signal to a process this test started (through the daemon).
    unsafe {
        libc::kill(victim as i32, libc::SIGKILL);
    }
    wait_until(
        "the killed task in the metrics, and its replacement running",
        Duration::from_secs(15),
        || {
            let m = scrape(&addr)?;
            Ok((get(&m, "flotilla_tasks_kept{state=\"failed\"}")? >= 1.0
                && get(&m, "flotilla_tasks{state=\"running\"}")? == 2.0
                && get(&m, "flotilla_scheduling_seconds_count")? == 3.0)
                .then_some(()))
        },
    )?;

    // The client API port wants a certificate for it too.
    let info = d.ok(&["node", "ls", "--format", "json"])?.json()?;
    let api = info[0]["api_addr"].as_str().unwrap_or_default().to_string();
    if !api.is_empty() {
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("https://{api}/metrics"),
            ])
            .output();
        if let Ok(out) = out {
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            assert_eq!(code, "401", "without a certificate");
        }
    }
    Ok(())
}
