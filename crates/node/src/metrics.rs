//! `GET /metrics`: the node's figures in the Prometheus text format
//! (prometheus-client's encoder), for every node.
//!
//! Most series are read at scrape time from what the node holds: the
//! store (managers: services, tasks, nodes), raft's own metrics (term,
//! indexes, each member's lag on the leader), what this manager hears
//! ([`crate::contact`]), the mesh's counters and `/proc/self`. A few are
//! counted as they happen ([`Counters`]: leader changes, snapshots, commit
//! latency). Every series is there from the first scrape, at zero where
//! nothing happened yet: each task state, each node state, the raft series
//! on a manager.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use flotilla_store::State;
use flotilla_types::mesh::MeshStats;
use flotilla_types::{DesiredState, NodeState, TaskState};

/// Labels of one series.
type Labels = Vec<(String, String)>;
type GaugeF = Gauge<f64, AtomicU64>;

/// Every task state, so that each has a series from the start.
pub const TASK_STATES: [TaskState; 12] = [
    TaskState::New,
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Accepted,
    TaskState::Preparing,
    TaskState::Starting,
    TaskState::Running,
    TaskState::Complete,
    TaskState::Failed,
    TaskState::Shutdown,
    TaskState::Rejected,
    TaskState::Orphaned,
];

/// What is counted as it happens, for the life of the process.
#[derive(Clone)]
pub struct Counters {
    pub leader_changes: Counter,
    pub snapshots: Counter,
    pub commit_seconds: Histogram,
    /// From a task's creation to its assignment to a node, as this
    /// manager's scheduler assigned them while it led.
    pub scheduling_seconds: Histogram,
    /// Nodes this manager declared down, while it led, because their
    /// heartbeats stopped.
    pub heartbeat_timeouts: Counter,
    /// What the node's proxy of virtual addresses counts
    /// (`flotilla_mesh::vip`), for the life of the process.
    pub vips: Arc<flotilla_mesh::vip::VipStats>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            leader_changes: Counter::default(),
            snapshots: Counter::default(),
            // 0.5 ms to about 2 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 13)),
            // 1 ms to about 65 s (a task may wait long for a node).
            scheduling_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            heartbeat_timeouts: Counter::default(),
            vips: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

/// Raft's figures on a manager, read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct RaftFigures {
    pub term: u64,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    /// Bytes of the raft store file.
    pub store_bytes: u64,
    /// On the leader: each member's lag, by raft ID.
    pub lag: Vec<(u64, u64)>,
    pub managers: u64,
    pub managers_reachable: u64,
    pub quorum: bool,
}

/// This process, from `/proc/self`.
#[derive(Debug, Clone, Default)]
pub struct ProcessFigures {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
}

/// Reads [`ProcessFigures`]; zeros where `/proc` says nothing.
pub fn process_figures() -> ProcessFigures {
    let page = 4096u64;
    let ticks = 100f64;
    let resident_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command's closing parenthesis; utime and
            // stime are the 14th and 15th of the line.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u = f.get(11)?.parse::<f64>().ok()?;
            let k = f.get(12)?.parse::<f64>().ok()?;
            Some((u + k) / ticks)
        })
        .unwrap_or(0.0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    ProcessFigures {
        resident_bytes,
        cpu_seconds,
        open_fds,
    }
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn gauge_f(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = GaugeF::default();
    g.set(v);
    reg.register(name, help, g);
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The store's series (a manager's view of the cluster).
pub fn cluster_series(reg: &mut Registry, state: &State) {
    let tasks = Family::<Labels, Gauge>::default();
    for s in TASK_STATES {
        tasks
            .get_or_create(&labels(&[("state", s.as_str())]))
            .set(0);
    }
    for t in state
        .tasks
        .values()
        .filter(|t| t.desired_state == DesiredState::Running)
    {
        tasks
            .get_or_create(&labels(&[("state", t.status.state.as_str())]))
            .inc();
    }
    reg.register(
        "flotilla_tasks",
        "Tasks desired running, by observed state",
        tasks,
    );
    // Every task the store keeps, its history included: a task that
    // failed, was rejected by its driver or was orphaned stays counted
    // here after its replacement runs.
    let all = Family::<Labels, Gauge>::default();
    for s in TASK_STATES {
        all.get_or_create(&labels(&[("state", s.as_str())])).set(0);
    }
    for t in state.tasks.values() {
        all.get_or_create(&labels(&[("state", t.status.state.as_str())]))
            .inc();
    }
    reg.register(
        "flotilla_tasks_kept",
        "Every task the store keeps (history included), by observed state: failed and rejected ones are the driver's errors",
        all,
    );
    let nodes = Family::<Labels, Gauge>::default();
    for s in [NodeState::Ready, NodeState::Down] {
        nodes
            .get_or_create(&labels(&[("state", s.as_str())]))
            .set(0);
    }
    let up = Family::<Labels, Gauge>::default();
    for n in state.nodes.values() {
        nodes
            .get_or_create(&labels(&[("state", n.state.as_str())]))
            .inc();
        up.get_or_create(&labels(&[("node", &n.name), ("role", n.role.as_str())]))
            .set(i64::from(n.state == NodeState::Ready));
    }
    reg.register("flotilla_nodes", "Nodes by state", nodes);
    reg.register(
        "flotilla_node_up",
        "1 while the node is ready, 0 while it is down",
        up,
    );
    gauge(
        reg,
        "flotilla_services",
        "Services",
        state.services.len() as i64,
    );
    let desired = Family::<Labels, Gauge>::default();
    let running = Family::<Labels, Gauge>::default();
    let ready = Family::<Labels, Gauge>::default();
    for s in state.services.values() {
        let r = crate::views::replicas(state, s);
        let l = labels(&[("service", &s.spec.name)]);
        desired.get_or_create(&l).set(r.desired as i64);
        running.get_or_create(&l).set(r.running as i64);
        ready.get_or_create(&l).set(r.ready as i64);
    }
    reg.register(
        "flotilla_service_replicas_desired",
        "Replicas a service wants",
        desired,
    );
    reg.register(
        "flotilla_service_replicas_running",
        "Tasks of a service that run",
        running,
    );
    reg.register(
        "flotilla_service_replicas_ready",
        "Tasks of a service that run and are healthy (or have no check)",
        ready,
    );
    let pending: Vec<&flotilla_types::Task> = state
        .tasks
        .values()
        .filter(|t| {
            t.desired_state == DesiredState::Running && t.status.state == TaskState::Pending
        })
        .collect();
    gauge(
        reg,
        "flotilla_tasks_pending",
        "Tasks waiting for a node",
        pending.len() as i64,
    );
    let reasons = Family::<Labels, Gauge>::default();
    for t in &pending {
        reasons
            .get_or_create(&labels(&[
                ("service", &t.service_name),
                ("reason", &t.status.message),
            ]))
            .inc();
    }
    reg.register(
        "flotilla_tasks_pending_reason",
        "Tasks waiting for a node, by service and the scheduler's reason",
        reasons,
    );
}

/// Raft's series on a manager.
pub fn raft_series(reg: &mut Registry, r: &RaftFigures, counters: &Counters) {
    gauge(reg, "flotilla_raft_term", "Raft term", r.term as i64);
    gauge(
        reg,
        "flotilla_raft_leader",
        "1 on the leader",
        i64::from(r.is_leader),
    );
    gauge(
        reg,
        "flotilla_raft_last_log_index",
        "Index of the last raft log entry",
        r.last_log_index as i64,
    );
    gauge(
        reg,
        "flotilla_raft_applied_index",
        "Index of the last applied entry",
        r.applied_index as i64,
    );
    gauge(
        reg,
        "flotilla_raft_snapshot_index",
        "Index of the last snapshot",
        r.snapshot_index as i64,
    );
    gauge(
        reg,
        "flotilla_raft_log_entries",
        "Entries in the raft log (after the last purge)",
        r.last_log_index.saturating_sub(r.purged_index) as i64,
    );
    gauge(
        reg,
        "flotilla_raft_store_bytes",
        "Bytes of the raft store file (log, state, snapshot)",
        r.store_bytes as i64,
    );
    let lag = Family::<Labels, Gauge>::default();
    for (id, behind) in &r.lag {
        lag.get_or_create(&labels(&[("member", &id.to_string())]))
            .set(*behind as i64);
    }
    reg.register(
        "flotilla_raft_member_lag_entries",
        "On the leader: how many entries each member's log is behind",
        lag,
    );
    gauge(
        reg,
        "flotilla_managers",
        "Managers in the cluster",
        r.managers as i64,
    );
    gauge(
        reg,
        "flotilla_managers_reachable",
        "Managers this one heard from lately",
        r.managers_reachable as i64,
    );
    gauge(
        reg,
        "flotilla_quorum",
        "1 while the managers this one hears make a quorum",
        i64::from(r.quorum),
    );
    reg.register(
        "flotilla_raft_leader_changes",
        "Times this manager saw the leader change",
        counters.leader_changes.clone(),
    );
    reg.register(
        "flotilla_raft_snapshots",
        "Snapshots this manager built or installed",
        counters.snapshots.clone(),
    );
    reg.register(
        "flotilla_raft_commit_seconds",
        "From proposing a command to its commit and apply, on this manager",
        counters.commit_seconds.clone(),
    );
    reg.register(
        "flotilla_scheduling_seconds",
        "From a task's creation to its assignment to a node, as this manager scheduled them while it led",
        counters.scheduling_seconds.clone(),
    );
    reg.register(
        "flotilla_node_heartbeat_timeouts",
        "Nodes this manager declared down, while it led, because their heartbeats stopped",
        counters.heartbeat_timeouts.clone(),
    );
}

/// The mesh's series, per published port and service (every node).
pub fn mesh_series(reg: &mut Registry, stats: Option<&MeshStats>) {
    let current = Family::<Labels, Gauge>::default();
    let total = Family::<Labels, Gauge>::default();
    let refused = Family::<Labels, Gauge>::default();
    let bytes_in = Family::<Labels, Gauge>::default();
    let bytes_out = Family::<Labels, Gauge>::default();
    let errors = Family::<Labels, Gauge>::default();
    let retries = Family::<Labels, Gauge>::default();
    for l in stats.map(|s| s.listeners.as_slice()).unwrap_or_default() {
        let port = l.published.to_string();
        let key = labels(&[("service", &l.service_name), ("port", &port)]);
        current.get_or_create(&key).set(l.current as i64);
        total.get_or_create(&key).set(l.total as i64);
        refused.get_or_create(&key).set(l.refused as i64);
        let sum = |f: fn(&flotilla_types::mesh::BackendStats) -> u64| {
            l.backends.iter().map(f).sum::<u64>() as i64
        };
        bytes_in.get_or_create(&key).set(sum(|b| b.bytes_in));
        bytes_out.get_or_create(&key).set(sum(|b| b.bytes_out));
        errors.get_or_create(&key).set(sum(|b| b.errors));
        retries.get_or_create(&key).set(sum(|b| b.retries));
    }
    reg.register(
        "flotilla_mesh_connections",
        "Mesh connections open now on this node",
        current,
    );
    reg.register(
        "flotilla_mesh_connections_accepted",
        "Mesh connections taken on this node since it started",
        total,
    );
    reg.register(
        "flotilla_mesh_connections_refused",
        "Mesh connections refused (no ready task, or over the cap)",
        refused,
    );
    reg.register(
        "flotilla_mesh_bytes_in",
        "Bytes from clients to tasks",
        bytes_in,
    );
    reg.register(
        "flotilla_mesh_bytes_out",
        "Bytes from tasks to clients",
        bytes_out,
    );
    reg.register(
        "flotilla_mesh_backend_errors",
        "Failed connects to tasks",
        errors,
    );
    reg.register(
        "flotilla_mesh_retries",
        "Connections retried on another task",
        retries,
    );
}

/// The series of the node's proxy of virtual addresses (every node).
pub fn vip_series(reg: &mut Registry, stats: &flotilla_mesh::vip::VipStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let load = |a: &AtomicU64| a.load(Relaxed) as i64;
    gauge(
        reg,
        "flotilla_vip_connections",
        "Tasks' connections to virtual addresses forwarded by this node since it started",
        load(&stats.connections),
    );
    gauge(
        reg,
        "flotilla_vip_retries",
        "Connects to a task that failed and went on to another task",
        load(&stats.retries),
    );
    gauge(
        reg,
        "flotilla_vip_connections_refused",
        "Connections to virtual addresses refused (no ready task, every task failed, or not the caller's network)",
        load(&stats.refused),
    );
}

/// The process's series.
pub fn process_series(reg: &mut Registry, p: &ProcessFigures) {
    gauge(
        reg,
        "flotilla_process_resident_memory_bytes",
        "Resident memory of the daemon",
        p.resident_bytes as i64,
    );
    gauge_f(
        reg,
        "flotilla_process_cpu_seconds",
        "CPU time of the daemon (user and system)",
        p.cpu_seconds,
    );
    gauge(
        reg,
        "flotilla_process_open_fds",
        "Open file descriptors of the daemon",
        p.open_fds as i64,
    );
}

/// Encodes `reg`.
pub fn text(reg: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, reg);
    out
}

/// Watches raft's metrics and counts leader changes and new snapshots
/// until `stop`.
pub async fn count_raft_events(
    raft: Arc<flotilla_raft::RaftNode>,
    counters: Counters,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut metrics = raft.raft().metrics();
    let (mut leader, mut snapshot) = {
        let m = metrics.borrow();
        (m.current_leader, m.snapshot.map(|s| s.index))
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
        let m = metrics.borrow_and_update();
        if m.current_leader != leader && m.current_leader.is_some() {
            counters.leader_changes.inc();
        }
        if m.current_leader.is_some() {
            leader = m.current_leader;
        }
        let now = m.snapshot.map(|s| s.index);
        if now != snapshot && now.is_some() {
            counters.snapshots.inc();
            snapshot = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name_and_labels))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn an_empty_cluster_has_every_task_and_node_state_at_zero() {
        let mut reg = Registry::default();
        cluster_series(&mut reg, &State::default());
        let text = text(&reg);
        for s in TASK_STATES {
            assert_eq!(
                sample(
                    &text,
                    &format!("flotilla_tasks{{state=\"{}\"}}", s.as_str())
                ),
                Some(0.0),
                "{text}"
            );
        }
        assert_eq!(sample(&text, "flotilla_nodes{state=\"down\"}"), Some(0.0));
        assert_eq!(sample(&text, "flotilla_services "), Some(0.0));
    }

    #[test]
    fn raft_counters_and_the_histogram_are_there_from_the_start() {
        let mut reg = Registry::default();
        let counters = Counters::default();
        raft_series(&mut reg, &RaftFigures::default(), &counters);
        let text = text(&reg);
        assert_eq!(
            sample(&text, "flotilla_raft_leader_changes_total"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "flotilla_raft_commit_seconds_count"),
            Some(0.0)
        );
        counters.commit_seconds.observe(0.002);
        counters.leader_changes.inc();
        let mut reg = Registry::default();
        raft_series(&mut reg, &RaftFigures::default(), &counters);
        let text = super::text(&reg);
        assert_eq!(
            sample(&text, "flotilla_raft_commit_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "flotilla_raft_leader_changes_total"),
            Some(1.0)
        );
    }

    #[test]
    fn the_process_is_measured() {
        let p = process_figures();
        assert!(p.resident_bytes > 0);
        assert!(p.open_fds > 0);
    }
}
