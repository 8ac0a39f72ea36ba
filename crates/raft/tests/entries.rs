//! The raft entry's envelope on a real one-node raft (issue 9, defects 11
//! and 5): a store written by the previous version (bare commands) still
//! opens and applies; an entry of a future version stops applying, says
//! why, and changes nothing; a request proposed twice applies once, across
//! a restart too.

use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use flotilla_raft::node::RaftTimings;
use flotilla_raft::RaftNode;
use flotilla_store::{Command, Envelope, State};
use flotilla_types::{
    Availability, Cluster, Node, NodeRole, NodeState, ServiceMode, ServiceSpec, TaskTemplate,
};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

fn node(entry_format: u32) -> Node {
    Node {
        id: "n1".into(),
        raft_id: 1,
        name: "n1".into(),
        hostname: "n1".into(),
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
        entry_format,
        overlay_error: None,
        engine_labels: Default::default(),
    }
}

fn create(id: &str, name: &str) -> Command {
    Command::CreateService {
        id: id.into(),
        spec: ServiceSpec {
            name: name.into(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskTemplate {
                command: vec!["sleep".into(), "100".into()],
                ..TaskTemplate::default()
            },
            ..ServiceSpec::default()
        },
        at: 2,
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

/// Opens the redb file once the raft that had it open let it go.
async fn open_when_free(path: &std::path::Path) -> redb::Database {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match redb::Database::open(path) {
            Ok(db) => return db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open {}: {e}", path.display()),
        }
    }
}

async fn leader(dir: &std::path::Path, init: bool) -> RaftNode {
    let raft = RaftNode::start(dir, 1, &fast()).await.expect("start");
    if init {
        raft.initialize_single("").await.expect("init");
    }
    raft.wait_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    raft
}

fn read<T>(raft: &RaftNode, f: impl FnOnce(&State) -> T) -> T {
    f(&raft.state().read().expect("lock"))
}

/// Waits until `f` holds of this member's state.
async fn until(raft: &RaftNode, what: &str, f: impl Fn(&State) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read(raft, &f) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_previous_version_opens_and_applies() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let raft = leader(dir.path(), true).await;
        let init = Command::InitCluster {
            cluster: Cluster::bare("c", 1),
            node: node(0),
        };
        assert!(raft.propose(init).await.expect("propose").is_ok());
        for i in 0..3 {
            let r = raft.propose(create(&format!("s{i}"), &format!("web{i}")));
            assert!(r.await.expect("propose").is_ok());
        }
        raft.shutdown().await;
    }
    // Rewrite every command the way the previous version stored it (the
    // bare command as the payload, no envelope), and forget the applied
    // state, so that the restart applies the whole log again.
    {
        let db = open_when_free(&dir.path().join("raft.redb")).await;
        let rows: Vec<(u64, Vec<u8>)> = {
            let txn = db.begin_read().expect("read");
            let log = txn.open_table(LOG).expect("log");
            log.iter()
                .expect("iter")
                .map(|r| {
                    let (k, v) = r.expect("row");
                    (k.value(), v.value().to_vec())
                })
                .collect()
        };
        let txn = db.begin_write().expect("write");
        {
            let mut log = txn.open_table(LOG).expect("log");
            let mut old = 0;
            for (index, bytes) in rows {
                let mut entry: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                let Some(normal) = entry["payload"].get_mut("Normal") else {
                    continue;
                };
                let command: Command = match normal.get("format") {
                    Some(_) => serde_json::from_value(normal["command"].take()).expect("command"),
                    None => serde_json::from_value(normal.take()).expect("command"),
                };
                entry["payload"] = serde_json::json!({ "Normal": command });
                let bytes = serde_json::to_vec(&entry).expect("encode");
                log.insert(index, bytes.as_slice()).expect("insert");
                old += 1;
            }
            assert_eq!(old, 4, "the commands rewritten the old way");
            let mut meta = txn.open_table(SM_META).expect("meta");
            meta.remove("last_applied").expect("forget applied");
        }
        txn.commit().expect("commit");
    }
    let raft = leader(dir.path(), false).await;
    until(&raft, "the services from the old log", |s| {
        s.services.len() == 3
    })
    .await;
    assert!(read(&raft, |s| s.cluster.is_some()));
    // The node record from before says nothing of formats: the leader
    // keeps writing bare commands, which the old version reads.
    assert_eq!(read(&raft, flotilla_store::writable_format), 1);
    let r = raft.propose(create("s9", "web9")).await.expect("propose");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(raft.stopped(), None);
    raft.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_of_a_future_version_stops_applying_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft = leader(dir.path(), true).await;
    let init = Command::InitCluster {
        cluster: Cluster::bare("c", 1),
        node: node(2),
    };
    assert!(raft.propose(init).await.expect("propose").is_ok());
    assert!(raft.propose(create("s1", "web")).await.expect("p").is_ok());
    let before = read(&raft, Clone::clone);
    // What a leader of a newer version would write: the format after
    // this version's, a command this version has never heard of.
    let next = flotilla_store::FORMAT + 1;
    let future: Envelope = serde_json::from_str(&format!(
        r#"{{"format":{next},"request":"r1","command":{{"type":"create_volume","id":"v1"}}}}"#
    ))
    .expect("decode");
    let answer = tokio::time::timeout(Duration::from_secs(5), raft.raft().client_write(future))
        .await
        .expect("client_write answers");
    assert!(answer.is_err(), "{answer:?}");
    let why = raft.stopped().expect("stopped applying");
    assert!(
        why.contains(&format!("'create_volume' of entry format {next}")),
        "{why}"
    );
    assert!(why.contains("upgrade this manager"), "{why}");
    // The raft core stopped: nothing more is applied or written.
    let running = raft.raft().metrics().borrow().running_state.clone();
    assert!(running.is_err(), "the raft core stopped");
    assert_eq!(
        read(&raft, Clone::clone),
        before,
        "the state did not change"
    );
    assert!(raft.propose(create("s2", "web2")).await.is_err());
    raft.shutdown().await;
    drop(raft);
    // A restart meets the entry again: the member does not start, and
    // says why; the store still holds the state before the entry.
    let err = RaftNode::start(dir.path(), 1, &fast())
        .await
        .err()
        .expect("the restart refuses");
    assert_eq!(
        err.to_string(),
        format!(
            "raft failed to start: raft entry 4 holds command 'create_volume' of entry format {next}, \
             which this version (reads formats up to {}) cannot apply: it stopped applying the log \
             rather than skip the entry; upgrade this manager to a version that reads format {next}",
            flotilla_store::FORMAT
        )
    );
    drop(open_when_free(&dir.path().join("raft.redb")).await);
    let (_log, sm) = flotilla_raft::storage::open(&dir.path().join("raft.redb")).expect("open");
    let kept = sm.shared().read().expect("lock").clone();
    assert_eq!(kept.index, before.index);
    assert_eq!(kept.services, before.services);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_proposed_twice_applies_once_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let raft = leader(dir.path(), true).await;
        let init = Command::InitCluster {
            cluster: Cluster::bare("c", 1),
            node: node(2),
        };
        assert!(raft.propose(init).await.expect("propose").is_ok());
        let request = || Some("req-1".to_string());
        let (first, index) = raft
            .propose_request(create("s1", "web"), request())
            .await
            .expect("propose");
        assert_eq!(first, Ok(Some("s1".into())));
        let (again, later) = raft
            .propose_request(create("s1", "web"), request())
            .await
            .expect("propose again");
        assert_eq!(again, first, "the retry answers the first result");
        assert!(later > index, "committed as a second entry");
        // Without the request ID the same command is refused as a second
        // service of that name: the answer a retry used to get.
        let (plain, _) = raft.propose_at(create("s1", "web")).await.expect("p");
        assert!(plain.is_err(), "{plain:?}");
        raft.shutdown().await;
        first
    };
    let raft = leader(dir.path(), false).await;
    until(&raft, "the restart's state", |s| s.services.len() == 1).await;
    let (again, _) = raft
        .propose_request(create("s1", "web"), Some("req-1".into()))
        .await
        .expect("propose after restart");
    assert_eq!(again, first, "the kept result survived the restart");
    assert_eq!(read(&raft, |s| s.services.len()), 1);
    raft.shutdown().await;
}

/// Proposes `n` creates at once and answers how many raft entries they
/// took, checking that every one applied with its own result.
async fn concurrent_creates(raft: std::sync::Arc<RaftNode>, n: usize) -> u64 {
    let before = *raft.applied().borrow();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..n {
        let raft = raft.clone();
        writes.spawn(async move {
            let id = format!("c{before}-{i}");
            let command = create(&id, &format!("web-{id}"));
            let (result, _) = raft
                .propose_request(command, Some(format!("r-{id}")))
                .await
                .expect("propose");
            (id, result)
        });
    }
    for (id, result) in writes.join_all().await {
        assert_eq!(result, Ok(Some(id.clone())), "{id} answers its own result");
    }
    until(&raft, "every create", |s| {
        s.services
            .keys()
            .filter(|k| k.starts_with(&format!("c{before}-")))
            .count()
            == n
    })
    .await;
    *raft.applied().borrow() - before
}

/// Client writes proposed at the same time share raft entries (format 3,
/// a batch), so that they share the leader's fsync: 64 creates took 64
/// entries before the batcher. A cluster with a manager that reads only
/// format 2 gets one entry per write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_proposed_together_share_raft_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft = std::sync::Arc::new(leader(dir.path(), true).await);
    let init = Command::InitCluster {
        cluster: Cluster::bare("c", 1),
        node: node(flotilla_store::FORMAT),
    };
    assert!(raft.propose(init).await.expect("propose").is_ok());
    let entries = concurrent_creates(raft.clone(), 64).await;
    assert!(
        entries <= 16,
        "64 concurrent writes took {entries} raft entries"
    );
    // An older manager joins the picture: no batches until it upgrades.
    let older = Command::UpsertNode {
        node: Node {
            entry_format: 2,
            ..node(2)
        },
    };
    assert!(raft.propose(older).await.expect("propose").is_ok());
    assert_eq!(read(&raft, flotilla_store::writable_format), 2);
    let entries = concurrent_creates(raft.clone(), 16).await;
    assert_eq!(
        entries, 16,
        "one entry per write while a manager reads format 2"
    );
    raft.shutdown().await;
}

/// A disk that fails once armed: its writer thread dies at the next
/// durable commit.
struct FailingDisk(std::sync::atomic::AtomicBool);

impl flotilla_raft::log_writer::SyncHook for FailingDisk {
    fn before_sync(&self, _ops: usize) {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("test: the disk failed");
        }
    }
}

/// When openraft's core stops on a fatal error (here the log cannot be
/// written), the member says so: before, only an unreadable entry was
/// reported, and a manager whose core had stopped went on serving its last
/// state with nothing in `info` but "no leader is known".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_core_stopped_by_a_storage_error_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = std::sync::Arc::new(FailingDisk(std::sync::atomic::AtomicBool::new(false)));
    let raft = RaftNode::start_with_sync_hook(dir.path(), 1, &fast(), disk.clone())
        .await
        .expect("start");
    raft.initialize_single("").await.expect("init");
    raft.wait_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    let init = Command::InitCluster {
        cluster: Cluster::bare("c", 1),
        node: node(flotilla_store::FORMAT),
    };
    assert!(raft.propose(init).await.expect("propose").is_ok());
    assert_eq!(raft.stopped(), None);
    disk.0.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(raft.propose(create("s1", "web")).await.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    let why = loop {
        if let Some(why) = raft.stopped() {
            break why;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped core was never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(why.contains("raft member has stopped"), "{why}");
    raft.shutdown().await;
}
