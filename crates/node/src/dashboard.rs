//! The dashboard's decisions, pure: the cluster's health as green, yellow
//! or red ([`health`]), the events a manager saw ([`changes`], kept in a
//! bounded [`Board`]), and the login tokens of browsers without a client
//! certificate ([`make_token`], [`check_token`]). The pages and their
//! routes are in `api::ui`; the loop that feeds the board is [`watch`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::model::{
    ClusterEvent, ClusterHealth, EventKind, HealthLevel, Info, NodeView, ServiceModeKind,
    ServiceView,
};
use flotilla_store::State;
use flotilla_types::mesh::MeshStats;
use flotilla_types::{DesiredState, NodeState, TaskState, UnixMs, UpdateState};

/// How many events a board keeps: the dashboard shows the newest.
pub const EVENTS_KEPT: usize = 200;

/// The health of the cluster from what this manager sees: red when writes
/// fail or a service has none of its replicas running, yellow when it is
/// degraded but working, green otherwise. Each reason is one line.
pub fn health(info: &Info, nodes: &[NodeView], services: &[ServiceView]) -> ClusterHealth {
    let mut red = Vec::new();
    let mut yellow = Vec::new();
    if info.role == Some(flotilla_types::NodeRole::Manager) && !info.quorum {
        red.push(format!(
            "no quorum: {} of {} managers reachable; writes fail",
            info.managers_reachable, info.managers
        ));
    }
    for m in &info.unreachable_managers {
        yellow.push(match m.last_heard_ms {
            Some(ms) => format!(
                "manager {} unreachable (last heard {}s ago)",
                m.name,
                ms / 1000
            ),
            None => format!("manager {} unreachable", m.name),
        });
    }
    // What the managers still tolerate, counting those heard now.
    let quorum = info.managers / 2 + 1;
    let spare = info.managers_reachable.saturating_sub(quorum);
    if info.quorum && spare == 0 && info.managers > 0 {
        yellow.push(if info.managers < 3 {
            format!(
                "{} manager{}: the cluster tolerates no manager failure; run 3 or 5",
                info.managers,
                if info.managers == 1 { "" } else { "s" }
            )
        } else {
            "the managers tolerate no further failure".to_string()
        });
    }
    for n in nodes {
        if n.status == NodeState::Down {
            yellow.push(format!("node {} down", n.name));
        }
    }
    for s in services {
        let jobs = matches!(
            s.mode,
            ServiceModeKind::ReplicatedJob | ServiceModeKind::GlobalJob
        );
        let r = &s.replicas;
        if !jobs && r.desired > 0 && r.running == 0 {
            red.push(format!(
                "service {}: none of its {} replica{} running",
                s.name,
                r.desired,
                if r.desired == 1 { "" } else { "s" }
            ));
        } else if !jobs && r.ready < r.desired {
            yellow.push(format!(
                "service {}: {} of {} replicas ready",
                s.name, r.ready, r.desired
            ));
        }
        if let Some(u) = &s.update_status {
            if matches!(u.state, UpdateState::Paused | UpdateState::RollbackPaused) {
                yellow.push(format!("service {}: {}", s.name, u.message));
            }
        }
    }
    let level = if !red.is_empty() {
        HealthLevel::Red
    } else if !yellow.is_empty() {
        HealthLevel::Yellow
    } else {
        HealthLevel::Green
    };
    red.extend(yellow);
    ClusterHealth {
        level,
        reasons: red,
    }
}

/// What [`changes`] compares: the little of a state that events are made
/// of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digest {
    tasks: BTreeMap<String, TaskState>,
    nodes: BTreeMap<String, NodeState>,
    services: BTreeMap<String, String>,
    leader: Option<u64>,
}

/// The digest of `state`, with the raft leader this manager follows.
pub fn digest(state: &State, leader: Option<u64>) -> Digest {
    Digest {
        tasks: state
            .tasks
            .values()
            .map(|t| (t.id.clone(), t.status.state))
            .collect(),
        nodes: state
            .nodes
            .values()
            .map(|n| (n.id.clone(), n.state))
            .collect(),
        services: state
            .services
            .values()
            .map(|s| (s.id.clone(), s.spec.name.clone()))
            .collect(),
        leader,
    }
}

/// The events between `old` and `now` (a state and its digest), oldest
/// first: tasks that failed or were rejected, nodes that went down or came
/// back, services created or removed, leader changes.
pub fn changes(old: &Digest, state: &State, now: &Digest, at: UnixMs) -> Vec<ClusterEvent> {
    let mut out = Vec::new();
    let event = |kind, text: String| ClusterEvent { at, kind, text };
    if now.leader != old.leader {
        out.push(match now.leader {
            Some(id) => {
                let name = state
                    .nodes
                    .values()
                    .find(|n| n.raft_id == id && n.raft_id != 0)
                    .map_or_else(|| format!("raft member {id}"), |n| n.name.clone());
                event(EventKind::LeaderChanged, format!("{name} is the leader"))
            }
            None => event(EventKind::NoLeader, "no leader".to_string()),
        });
    }
    for (id, name) in &now.services {
        if !old.services.contains_key(id) {
            out.push(event(
                EventKind::ServiceCreated,
                format!("service {name} created"),
            ));
        }
    }
    for (id, name) in &old.services {
        if !now.services.contains_key(id) {
            out.push(event(
                EventKind::ServiceRemoved,
                format!("service {name} removed"),
            ));
        }
    }
    for (id, st) in &now.nodes {
        let before = old.nodes.get(id);
        let name = state.nodes.get(id).map_or(id.as_str(), |n| n.name.as_str());
        match (before, st) {
            (Some(NodeState::Ready), NodeState::Down) => {
                out.push(event(EventKind::NodeDown, format!("node {name} down")))
            }
            (Some(NodeState::Down), NodeState::Ready) => {
                out.push(event(EventKind::NodeUp, format!("node {name} up again")))
            }
            _ => {}
        }
    }
    for (id, st) in &now.tasks {
        let failed = matches!(st, TaskState::Failed | TaskState::Rejected);
        if !failed || old.tasks.get(id) == Some(st) {
            continue;
        }
        let Some(t) = state.tasks.get(id) else {
            continue;
        };
        // A task that failed after it was told to stop, and that this
        // manager never saw live, is an old failure (a restart, a
        // snapshot), not news.
        let was_live = old.tasks.get(id).is_some_and(|s| *s <= TaskState::Running);
        if t.desired_state != DesiredState::Running && !was_live {
            continue;
        }
        let node = t
            .node_id
            .as_ref()
            .and_then(|n| state.nodes.get(n))
            .map_or(String::new(), |n| format!(" on {}", n.name));
        let why = t
            .status
            .error
            .clone()
            .or_else(|| t.status.exit_code.map(|c| format!("exit code {c}")))
            .unwrap_or_else(|| t.status.message.clone());
        out.push(event(
            EventKind::TaskFailed,
            format!(
                "task {}.{}{node} {}: {why}",
                t.service_name,
                t.slot,
                if *st == TaskState::Rejected {
                    "rejected"
                } else {
                    "failed"
                }
            ),
        ));
    }
    out
}

/// What the dashboard keeps between requests on one node: the events it
/// saw (at most [`EVENTS_KEPT`]) and the mesh counters it gathered last.
#[derive(Default)]
pub struct Board {
    events: Mutex<VecDeque<ClusterEvent>>,
    mesh: Mutex<Option<MeshCache>>,
}

/// Gathered mesh counters and the warning that came with them.
#[derive(Clone)]
pub struct MeshCache {
    pub at: Instant,
    pub stats: Vec<MeshStats>,
    pub warning: Option<String>,
}

/// How long gathered mesh counters are shown before they are asked for
/// again (each gathering asks every node).
pub const MESH_REFRESH: Duration = Duration::from_secs(3);

impl Board {
    pub fn push(&self, events: impl IntoIterator<Item = ClusterEvent>) {
        let mut kept = self.events.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if kept.len() == EVENTS_KEPT {
                kept.pop_front();
            }
            kept.push_back(e);
        }
    }

    /// The newest `n` events, newest first.
    pub fn recent(&self, n: usize) -> Vec<ClusterEvent> {
        let kept = self.events.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter().rev().take(n).cloned().collect()
    }

    /// The cached mesh counters while fresh.
    pub fn mesh(&self, now: Instant) -> Option<MeshCache> {
        let cache = self.mesh.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .as_ref()
            .filter(|c| now.duration_since(c.at) < MESH_REFRESH)
            .cloned()
    }

    pub fn set_mesh(&self, cache: MeshCache) {
        *self.mesh.lock().unwrap_or_else(|p| p.into_inner()) = Some(cache);
    }
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").finish_non_exhaustive()
    }
}

/// Feeds `board` with what changes in a manager's store and in who leads,
/// until `stop`. Changes that come fast are taken together, at most four
/// times a second, so a burst of task updates costs one comparison.
pub async fn watch(
    raft: Arc<flotilla_raft::RaftNode>,
    board: Arc<Board>,
    stop: tokio_util::sync::CancellationToken,
) {
    const SETTLE: Duration = Duration::from_millis(250);
    let mut applied = raft.applied();
    let mut metrics = raft.raft().metrics();
    let state = raft.state();
    let mut last = {
        let leader = metrics.borrow().current_leader;
        let s = state.read().unwrap_or_else(|p| p.into_inner());
        digest(&s, leader)
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
            r = metrics.changed() => if r.is_err() { return },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SETTLE) => {}
        }
        applied.borrow_and_update();
        let leader = metrics.borrow_and_update().current_leader;
        let s = state.read().unwrap_or_else(|p| p.into_inner());
        let now = digest(&s, leader);
        if now != last {
            board.push(changes(&last, &s, &now, crate::now_ms()));
            last = now;
        }
    }
}

/// Why a login token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a dashboard login token (expected {TOKEN_PREFIX}...)")]
    Malformed,
    #[error("the dashboard login token expired; run 'flotilla ui-token' for a new one")]
    Expired,
    #[error("the dashboard login token is not valid for this cluster")]
    Invalid,
}

/// How a login token starts.
pub const TOKEN_PREFIX: &str = "FLTUI-1-";
/// How long a login token is good for unless asked otherwise.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// The longest a login token may be good for.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

fn token_mac(key: &[u8], cluster_id: &str, expires_s: u64) -> String {
    flotilla_pki::seal::digest(key, format!("ui-login|{cluster_id}|{expires_s}").as_bytes())
}

/// A login token good until `expires_s` (Unix seconds), signed with `key`
/// (every manager holds it: it is derived from the cluster's CA key, so
/// that any manager checks a token any other made, and a new CA ends
/// every token).
pub fn make_token(key: &[u8], cluster_id: &str, expires_s: u64) -> String {
    format!(
        "{TOKEN_PREFIX}{expires_s}-{}",
        token_mac(key, cluster_id, expires_s)
    )
}

/// Checks a token [`make_token`] made; its expiry (Unix seconds) if good
/// at `now_s`.
pub fn check_token(
    key: &[u8],
    cluster_id: &str,
    token: &str,
    now_s: u64,
) -> Result<u64, TokenError> {
    let rest = token
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(TokenError::Malformed)?;
    let (expires, mac) = rest.split_once('-').ok_or(TokenError::Malformed)?;
    let expires_s: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let want = token_mac(key, cluster_id, expires_s);
    if !equal_in_constant_time(want.as_bytes(), mac.as_bytes()) {
        return Err(TokenError::Invalid);
    }
    if expires_s <= now_s {
        return Err(TokenError::Expired);
    }
    Ok(expires_s)
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::model::{Replicas, UnreachableManager};
    use flotilla_types::{Availability, NodeRole};

    fn info(managers: u64, reachable: u64) -> Info {
        Info {
            cluster_id: Some("c".into()),
            node_id: Some("n1".into()),
            node_name: "m1".into(),
            role: Some(NodeRole::Manager),
            is_leader: true,
            leader: Some("m1".into()),
            managers,
            managers_reachable: reachable,
            fault_tolerance: (managers.saturating_sub(1)) / 2,
            warning: None,
            nodes: managers,
            services: 0,
            tasks: Default::default(),
            version: "0".into(),
            data_dir: "/d".into(),
            autolock: false,
            locked: false,
            quorum: reachable > managers / 2,
            unreachable_managers: (reachable..managers)
                .map(|i| UnreachableManager {
                    name: format!("m{}", i + 1),
                    addr: "a".into(),
                    last_heard_ms: Some(4200),
                })
                .collect(),
            backups: None,
        }
    }

    fn service(name: &str, desired: u64, running: u64, ready: u64) -> ServiceView {
        let spec = flotilla_types::ServiceSpec {
            name: name.into(),
            ..Default::default()
        };
        ServiceView {
            id: name.into(),
            name: name.into(),
            mode: ServiceModeKind::Replicated,
            replicas: Replicas {
                running,
                desired,
                healthy: None,
                ready,
                completed: None,
            },
            command: "true".into(),
            spec,
            version: 1,
            created_at: 0,
            updated_at: 0,
            update_status: None,
            can_roll_back: false,
            published: vec![],
            networks: vec![],
        }
    }

    fn node(name: &str, status: NodeState) -> NodeView {
        NodeView {
            id: name.into(),
            name: name.into(),
            hostname: name.into(),
            role: NodeRole::Worker,
            status,
            availability: Availability::Active,
            manager_status: None,
            addr: "a".into(),
            api_addr: String::new(),
            version: "0".into(),
            labels: Default::default(),
            is_self: false,
            resources: Default::default(),
            overlay_error: None,
            engine_labels: Default::default(),
            last_heard_ms: None,
            behind: None,
        }
    }

    #[test]
    fn three_managers_with_every_replica_ready_are_green() {
        let h = health(
            &info(3, 3),
            &[node("w1", NodeState::Ready)],
            &[service("web", 2, 2, 2)],
        );
        assert_eq!(h.level, HealthLevel::Green, "{:?}", h.reasons);
        assert!(h.reasons.is_empty());
    }

    #[test]
    fn a_manager_down_is_yellow_and_says_which_and_that_no_failure_is_left() {
        let h = health(&info(3, 2), &[], &[service("web", 2, 2, 2)]);
        assert_eq!(h.level, HealthLevel::Yellow);
        assert_eq!(
            h.reasons,
            [
                "manager m3 unreachable (last heard 4s ago)",
                "the managers tolerate no further failure"
            ]
        );
    }

    #[test]
    fn one_manager_is_yellow_it_tolerates_no_failure() {
        let h = health(&info(1, 1), &[], &[]);
        assert_eq!(h.level, HealthLevel::Yellow);
        assert_eq!(
            h.reasons,
            ["1 manager: the cluster tolerates no manager failure; run 3 or 5"]
        );
    }

    #[test]
    fn five_managers_with_one_down_still_tolerate_a_failure() {
        let h = health(&info(5, 4), &[], &[]);
        assert_eq!(h.level, HealthLevel::Yellow);
        assert_eq!(h.reasons, ["manager m5 unreachable (last heard 4s ago)"]);
    }

    #[test]
    fn no_quorum_or_a_service_with_nothing_running_is_red_and_red_comes_first() {
        let h = health(&info(3, 1), &[], &[]);
        assert_eq!(h.level, HealthLevel::Red);
        assert_eq!(
            h.reasons[0],
            "no quorum: 1 of 3 managers reachable; writes fail"
        );
        let h = health(
            &info(3, 3),
            &[node("w1", NodeState::Down)],
            &[service("web", 2, 1, 1), service("db", 1, 0, 0)],
        );
        assert_eq!(h.level, HealthLevel::Red);
        assert_eq!(
            h.reasons,
            [
                "service db: none of its 1 replica running",
                "node w1 down",
                "service web: 1 of 2 replicas ready",
            ]
        );
    }

    #[test]
    fn a_service_scaled_to_zero_and_a_finished_job_are_fine() {
        let mut job = service("migrate", 1, 0, 0);
        job.mode = ServiceModeKind::ReplicatedJob;
        let h = health(&info(3, 3), &[], &[service("idle", 0, 0, 0), job]);
        assert_eq!(h.level, HealthLevel::Green, "{:?}", h.reasons);
    }

    fn state_with(tasks: &[(&str, TaskState, DesiredState)], nodes: &[(&str, NodeState)]) -> State {
        let mut s = State::default();
        for (name, st) in nodes {
            let n: flotilla_types::Node = serde_json::from_value(serde_json::json!({
                "id": name, "raft_id": 0, "name": name, "hostname": name, "role": "worker",
                "availability": "active", "state": st.as_str(), "addr": "a",
                "version": "0", "created_at": 0, "last_seen": 0
            }))
            .expect("node");
            s.nodes.insert(n.id.clone(), n);
        }
        for (id, st, desired) in tasks {
            let mut status = flotilla_types::TaskStatus::new(*st, 5, "");
            status.exit_code = Some(3);
            let t = flotilla_types::Task {
                id: id.to_string(),
                service_id: "s1".into(),
                service_name: "web".into(),
                slot: 1,
                node_id: Some("w1".into()),
                desired_state: *desired,
                status,
                spec: Default::default(),
                service_version: 1,
                created_at: 0,
                created_index: 0,
                restart_history: vec![],
                networks: vec![],
            };
            s.tasks.insert(t.id.clone(), t);
        }
        s
    }

    #[test]
    fn events_name_failed_tasks_nodes_down_and_up_and_leader_changes() {
        let old_state = state_with(
            &[("t1", TaskState::Running, DesiredState::Running)],
            &[("w1", NodeState::Ready), ("w2", NodeState::Down)],
        );
        let old = digest(&old_state, Some(1));
        let new_state = state_with(
            &[
                ("t1", TaskState::Failed, DesiredState::Running),
                ("t2", TaskState::Shutdown, DesiredState::Shutdown),
            ],
            &[("w1", NodeState::Down), ("w2", NodeState::Ready)],
        );
        let now = digest(&new_state, None);
        let events = changes(&old, &new_state, &now, 7);
        let texts: Vec<&str> = events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "no leader",
                "node w1 down",
                "node w2 up again",
                "task web.1 on w1 failed: exit code 3",
            ]
        );
        assert!(events.iter().all(|e| e.at == 7));
        // Nothing changed: nothing to say.
        assert!(changes(&now, &new_state, &now, 8).is_empty());
    }

    #[test]
    fn the_board_keeps_the_newest_events_only() {
        let board = Board::default();
        board.push((0..EVENTS_KEPT as u64 + 5).map(|i| ClusterEvent {
            at: i,
            kind: EventKind::NodeDown,
            text: i.to_string(),
        }));
        let recent = board.recent(EVENTS_KEPT * 2);
        assert_eq!(recent.len(), EVENTS_KEPT);
        assert_eq!(recent[0].at, EVENTS_KEPT as u64 + 4);
        assert_eq!(recent.last().map(|e| e.at), Some(5));
    }

    #[test]
    fn a_token_is_good_until_it_expires_and_only_under_its_key_and_cluster() {
        let t = make_token(b"key", "c1", 1000);
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(check_token(b"key", "c1", &t, 999), Ok(1000));
        assert_eq!(
            check_token(b"key", "c1", &t, 1000),
            Err(TokenError::Expired)
        );
        assert_eq!(check_token(b"other", "c1", &t, 1), Err(TokenError::Invalid));
        assert_eq!(check_token(b"key", "c2", &t, 1), Err(TokenError::Invalid));
        // A later expiry under the old MAC is refused.
        let forged = t.replace("-1000-", "-9999-");
        assert_eq!(
            check_token(b"key", "c1", &forged, 1),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            check_token(b"key", "c1", "nope", 1),
            Err(TokenError::Malformed)
        );
    }
}
