//! The redb store against openraft's own storage test suite, plus
//! restart behaviour of a real one-node raft.

use std::time::Duration;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

use flotilla_raft::node::RaftTimings;
use flotilla_raft::storage::{self, LogStore, StateMachine};
use flotilla_raft::{RaftNode, TypeConfig};
use flotilla_store::Command;
use flotilla_types::{
    Availability, Cluster, Node, NodeRole, NodeState, ServiceMode, ServiceSpec, TaskTemplate,
};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, sm) = storage::open(&dir.path().join("raft.redb")).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}

fn node() -> Node {
    Node {
        id: "n1".into(),
        raft_id: 1,
        name: "one".into(),
        hostname: "one".into(),
        role: NodeRole::Manager,
        availability: Availability::Active,
        labels: Default::default(),
        state: NodeState::Ready,
        addr: String::new(),
        api_addr: String::new(),
        version: "test".into(),
        resources: Default::default(),
        platform: Default::default(),
        created_at: 1,
        last_seen: 1,
        entry_format: 0,
        overlay_error: None,
        engine_labels: Default::default(),
    }
}

fn spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        mode: ServiceMode::Replicated { replicas: 2 },
        labels: Default::default(),
        task: TaskTemplate {
            driver: Default::default(),
            command: vec!["sleep".into(), "1".into()],
            env: Default::default(),
            restart: Default::default(),
            stop_grace_period_ms: 1_000,
            constraints: vec![],
            ..TaskTemplate::default()
        },
        ..ServiceSpec::default()
    }
}

fn fast() -> RaftTimings {
    RaftTimings {
        election_min_ms: 200,
        election_max_ms: 400,
        heartbeat_ms: 50,
        ..RaftTimings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let raft = RaftNode::start(dir.path(), 1, &fast())
            .await
            .expect("start");
        assert!(!raft.is_initialized());
        raft.initialize_single("").await.expect("init");
        raft.wait_leader(Duration::from_secs(5))
            .await
            .expect("leader");
        let r = raft
            .propose(Command::InitCluster {
                cluster: Cluster::bare("c", 1),
                node: node(),
            })
            .await
            .expect("propose");
        assert_eq!(r, Ok(Some("c".into())));
        for i in 0..20 {
            let r = raft
                .propose(Command::CreateService {
                    id: format!("s{i}"),
                    spec: spec(&format!("web{i}")),
                    at: 2,
                })
                .await
                .expect("propose");
            assert!(r.is_ok());
        }
        let dup = raft
            .propose(Command::CreateService {
                id: "x".into(),
                spec: spec("web0"),
                at: 2,
            })
            .await
            .expect("propose");
        assert!(dup.is_err());
        raft.shutdown().await;
    }
    let raft = RaftNode::start(dir.path(), 1, &fast())
        .await
        .expect("restart");
    assert!(raft.is_initialized());
    raft.wait_leader(Duration::from_secs(5))
        .await
        .expect("leader after restart");
    // The state machine holds everything that was committed before.
    let state = raft.state();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let count = state.read().expect("lock").services.len();
        if count == 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {count} services after restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(state.read().expect("lock").cluster.is_some());
    let again = raft
        .propose(Command::CreateService {
            id: "s99".into(),
            spec: spec("web99"),
            at: 3,
        })
        .await
        .expect("propose after restart");
    assert!(again.is_ok());
    raft.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_is_an_error_not_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("raft.redb"),
        b"this is not a redb file at all, not even close",
    )
    .expect("write");
    let err = RaftNode::start(dir.path(), 1, &fast())
        .await
        .err()
        .expect("must fail");
    let text = err.to_string();
    assert!(text.contains("raft.redb"), "{text}");
    let left = std::fs::read(dir.path().join("raft.redb")).expect("read");
    assert!(left.starts_with(b"this is not a redb file"));
}

/// Applies blank entries up to `index` (term 1, leader 1).
async fn applied_to(sm: &mut StateMachine, from: u64, index: u64) {
    use openraft::storage::RaftStateMachine;
    let entries = (from..=index).map(|i| openraft::Entry::<TypeConfig> {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
        payload: openraft::EntryPayload::Blank,
    });
    sm.apply(entries).await.expect("apply");
}

/// A snapshot built from the state at index 5 finished after a snapshot at
/// index 10 was installed from the leader: it replaced the newer one, and
/// a restart would have gone back to index 5 with the log purged past it.
#[tokio::test]
async fn an_older_snapshot_build_never_replaces_a_newer_installed_one() {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    let donor_dir = tempfile::tempdir().expect("tempdir");
    let (_donor_log, mut donor) = storage::open(&donor_dir.path().join("raft.redb")).expect("open");
    applied_to(&mut donor, 1, 10).await;
    let newer = donor
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build at 10");

    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = storage::open(&dir.path().join("raft.redb")).expect("open");
    applied_to(&mut sm, 1, 5).await;
    let mut older = sm.get_snapshot_builder().await;
    sm.install_snapshot(&newer.meta, newer.snapshot)
        .await
        .expect("install at 10");
    let built = older.build_snapshot().await.expect("build at 5");
    let index = |s: &openraft::storage::Snapshot<TypeConfig>| s.meta.last_log_id.map(|l| l.index);
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(index(&current), Some(10), "the newer snapshot stays");
    assert_eq!(
        index(&built),
        Some(10),
        "the build answers with the one kept"
    );
}

/// A store holding `tasks` pending tasks of one service, applied through
/// raft entries from index 1.
async fn store_with_tasks(dir: &std::path::Path, tasks: u64) -> StateMachine {
    use openraft::storage::RaftStateMachine;
    let (_log, mut sm) = storage::open(&dir.join("raft.redb")).expect("open");
    let entry = |i: u64, command: Command| openraft::Entry::<TypeConfig> {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
        payload: openraft::EntryPayload::Normal(flotilla_store::Envelope::new(
            command,
            None,
            flotilla_store::FORMAT,
        )),
    };
    let tasks: Vec<flotilla_types::Task> = (1..=tasks)
        .map(|slot| flotilla_types::Task {
            id: format!("task-{slot:08}"),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot,
            node_id: None,
            desired_state: flotilla_types::DesiredState::Running,
            status: flotilla_types::TaskStatus::new(flotilla_types::TaskState::Pending, 5, ""),
            spec: spec("web").task,
            service_version: 1,
            created_at: 5,
            created_index: 2,
            restart_history: vec![],
            networks: vec![],
        })
        .collect();
    let results = sm
        .apply([
            entry(
                1,
                Command::InitCluster {
                    cluster: Cluster::bare("c", 1),
                    node: node(),
                },
            ),
            entry(
                2,
                Command::CreateService {
                    id: "s1".into(),
                    spec: spec("web"),
                    at: 1,
                },
            ),
            entry(3, Command::CreateTasks { tasks }),
        ])
        .await
        .expect("apply");
    assert!(results.iter().flatten().all(|r| r.is_ok()), "{results:?}");
    sm
}

/// Snapshots went as the JSON of the whole state: about 740 bytes per
/// pending task (73 MB for 100,000 tasks), built and sent every few
/// thousand entries. They are now compressed, and a member installs both
/// the compressed ones and those written before.
#[tokio::test]
async fn a_snapshot_of_many_tasks_is_compact_and_installs() {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    let donor_dir = tempfile::tempdir().expect("tempdir");
    let mut donor = store_with_tasks(donor_dir.path(), 2_000).await;
    let json = {
        let state = donor.shared();
        let state = state.read().expect("state");
        serde_json::to_vec(&serde_json::json!({ "state": &*state })).expect("json")
    };
    let snap = donor
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let bytes = snap.snapshot.get_ref().len();
    eprintln!(
        "2000 tasks: JSON {} bytes ({} per task), snapshot {} bytes ({} per task)",
        json.len(),
        json.len() / 2000,
        bytes,
        bytes / 2000
    );
    assert!(
        bytes * 5 < json.len(),
        "snapshot of {bytes} bytes is not a fifth of the {} bytes of JSON",
        json.len()
    );

    for data in [snap.snapshot.get_ref().clone(), json] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_log, mut sm) = storage::open(&dir.path().join("raft.redb")).expect("open");
        sm.install_snapshot(&snap.meta, Box::new(std::io::Cursor::new(data)))
            .await
            .expect("install");
        let state = sm.shared();
        let state = state.read().expect("state");
        assert_eq!(state.tasks.len(), 2_000);
        assert_eq!(state.services.len(), 1);
    }
}

/// A store seeded for a new group (force-new-cluster) needs nothing at
/// start: its only voter elects itself, holds the state and takes writes
/// at indexes after the seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_store_starts_as_a_leader_with_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut state = flotilla_store::State::default();
    let _ = state.apply(
        1,
        &Command::InitCluster {
            cluster: Cluster::bare("c", 1),
            node: node(),
        },
    );
    let _ = state.apply(
        2,
        &Command::CreateService {
            id: "s1".into(),
            spec: spec("web1"),
            at: 2,
        },
    );
    storage::seed(&dir.path().join("raft.redb"), &state, 5, "").expect("seed");
    let raft = RaftNode::start(dir.path(), 5, &fast())
        .await
        .expect("start");
    assert!(raft.is_initialized());
    raft.wait_leader(Duration::from_secs(5))
        .await
        .expect("the only voter elects itself");
    assert_eq!(raft.state().read().expect("lock").services.len(), 1);
    let (r, index) = raft
        .propose_at(Command::CreateService {
            id: "s2".into(),
            spec: spec("web2"),
            at: 3,
        })
        .await
        .expect("propose");
    assert!(r.is_ok());
    assert!(index >= 1, "{index}");
    assert_eq!(raft.state().read().expect("lock").services.len(), 2);
    raft.shutdown().await;
}

/// A disk whose fsync takes `delay` (defect 8): counts the durable commits
/// and says when the first one is under way.
struct SlowDisk {
    delay: Duration,
    syncs: std::sync::atomic::AtomicUsize,
}

impl flotilla_raft::log_writer::SyncHook for SlowDisk {
    fn before_sync(&self, _ops: usize) {
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(self.delay);
    }
}

fn slow_store(delay: Duration) -> (tempfile::TempDir, LogStore, std::sync::Arc<SlowDisk>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _sm) = storage::open(&dir.path().join("raft.redb")).expect("open store");
    let disk = std::sync::Arc::new(SlowDisk {
        delay,
        syncs: Default::default(),
    });
    log.set_sync_hook(disk.clone());
    (dir, log, disk)
}

async fn first_sync_under_way(disk: &SlowDisk) {
    while disk.syncs.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_writes_queued_during_a_slow_fsync_share_the_next_one() {
    use openraft::storage::RaftLogStorage;
    let (_dir, log, disk) = slow_store(Duration::from_millis(200));
    let mut tasks = Vec::new();
    for i in 1..=10u64 {
        let mut log = log.clone();
        tasks.push(tokio::spawn(async move {
            let vote = openraft::Vote::new(i, 1);
            log.save_vote(&vote).await.expect("save vote");
        }));
        if i == 1 {
            first_sync_under_way(&disk).await;
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    let syncs = disk.syncs.load(std::sync::atomic::Ordering::SeqCst);
    assert!(syncs <= 2, "ten votes took {syncs} fsyncs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_fsync_does_not_hold_up_saving_the_committed_id() {
    use openraft::storage::RaftLogStorage;
    let (_dir, log, disk) = slow_store(Duration::from_millis(500));
    let mut purging = log.clone();
    let purge = tokio::spawn(async move {
        purging
            .purge(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                3,
            ))
            .await
            .expect("purge");
    });
    first_sync_under_way(&disk).await;
    // What a follower does on a heartbeat that moves the commit index.
    let mut log = log.clone();
    let committed = Some(openraft::LogId::new(
        openraft::CommittedLeaderId::new(1, 1),
        7,
    ));
    let t = std::time::Instant::now();
    log.save_committed(committed).await.expect("save committed");
    let took = t.elapsed();
    assert!(took < Duration::from_millis(100), "took {took:?}");
    assert_eq!(log.read_committed().await.expect("read"), committed);
    purge.await.expect("purge task");
}
