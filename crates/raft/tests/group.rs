//! A raft group of real members in one process, over the in-memory network:
//! membership changes as `promote` and `demote` make them, without sockets.

use std::time::{Duration, Instant};

use flotilla_raft::network::MemoryNetwork;
use flotilla_raft::node::RaftTimings;
use flotilla_raft::RaftNode;

fn fast() -> RaftTimings {
    RaftTimings {
        election_min_ms: 200,
        election_max_ms: 400,
        heartbeat_ms: 50,
        ..RaftTimings::default()
    }
}

async fn member(dir: &std::path::Path, id: u64, net: &MemoryNetwork) -> RaftNode {
    let dir = dir.join(id.to_string());
    std::fs::create_dir_all(&dir).expect("member dir");
    let raft = RaftNode::start_in_memory(&dir, id, &fast(), net.clone())
        .await
        .expect("start");
    net.register(id, raft.raft().clone());
    raft
}

/// Waits until `raft` leads, up to 10 s.
async fn leads(raft: &RaftNode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !raft.is_leader() {
        assert!(
            Instant::now() < deadline,
            "member {} did not become the leader within 10 s",
            raft.id()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A leader that removes itself from the voters steps down once the change
/// commits, and openraft may then answer the change with "forward to
/// leader": the demote was done, yet `node demote` failed with "this
/// manager is not the leader" (CI, `promote_and_demote_keep_tasks_running`).
/// Each round here demotes the leader through itself, then promotes it
/// back through the other member; every removal must report success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_removes_itself_reports_the_removal_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = MemoryNetwork::default();
    let one = member(dir.path(), 1, &net).await;
    let two = member(dir.path(), 2, &net).await;
    one.initialize_single("m1").await.expect("init");
    leads(&one).await;
    one.add_voter(2, "m2").await.expect("add 2");
    let (mut leader, mut other) = (&one, &two);
    for round in 0..12 {
        let gone = leader.id();
        if let Err(e) = leader.remove_voter(gone).await {
            panic!("round {round}: removing leader {gone} through itself failed: {e}");
        }
        leads(other).await;
        assert!(
            !other.progress().voters.contains(&gone),
            "round {round}: {gone} is still a voter"
        );
        other
            .add_voter(gone, &format!("m{gone}"))
            .await
            .unwrap_or_else(|e| panic!("round {round}: adding {gone} back failed: {e}"));
        std::mem::swap(&mut leader, &mut other);
    }
    one.shutdown().await;
    two.shutdown().await;
}

/// Removing a member that is not a voter (a demote asked twice) is done
/// already, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_member_that_is_no_voter_is_done_already() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = MemoryNetwork::default();
    let one = member(dir.path(), 1, &net).await;
    one.initialize_single("m1").await.expect("init");
    leads(&one).await;
    one.remove_voter(7).await.expect("7 is no voter");
    one.shutdown().await;
}
