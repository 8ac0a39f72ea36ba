//! Recovery from quorum loss: `init --force-new-cluster`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use flotilla_store::{Command, State};
use flotilla_types::{Epoch, NodeRole};

use crate::identity::Identity;
use crate::{identity, now_ms};

/// Marker file: the next start rewrites the raft store for a new group.
pub(crate) const FORCE_MARKER: &str = "force-new-cluster";

/// The variable naming the descriptor that hands the unlock key to the
/// next run of the daemon ([`reexec`]).
const UNLOCK_FD: &str = "FLOTILLA_UNLOCK_FD";

/// Replaces this process with a fresh run of the same command line. Task
/// processes keep running (they are adopted again) and stay our children.
/// An autolocked manager hands its unlock key over in an anonymous
/// memory file (never on disk, never in the environment), so that it
/// does not come back locked.
pub(crate) fn reexec(unlock: Option<&flotilla_types::SecretData>) {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut command = std::process::Command::new("/proc/self/exe");
    command.args(args);
    match unlock.map(hand_over) {
        Some(Ok(fd)) => {
            command.env(UNLOCK_FD, fd.to_string());
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot hand the unlock key over: the daemon restarts locked")
        }
        None => {
            command.env_remove(UNLOCK_FD);
        }
    }
    let err = command.exec();
    tracing::error!(error = %err, "cannot restart the daemon; exiting so that a supervisor restarts it");
    std::process::exit(70);
}

/// An inheritable memory file holding `key`, rewound.
fn hand_over(key: &flotilla_types::SecretData) -> std::io::Result<i32> {
    use std::io::{Seek, Write};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let name = c"flotilla-unlock";
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor it
    // returns is owned by the File below. No MFD_CLOEXEC: it must survive
    // the exec.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(&key.0)?;
    file.rewind()?;
    Ok(file.into_raw_fd())
}

/// The unlock key a previous run of this process handed over, read once:
/// the descriptor is closed and the variable removed.
pub(crate) fn inherited_unlock_key() -> Option<flotilla_types::SecretData> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let fd: i32 = std::env::var(UNLOCK_FD).ok()?.parse().ok()?;
    std::env::remove_var(UNLOCK_FD);
    if fd < 3 {
        return None;
    }
    // SAFETY: the previous run of this process opened fd for us and
    // nothing in this run has taken it; the File closes it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut key = Vec::new();
    file.read_to_end(&mut key).ok()?;
    (key.len() == flotilla_pki::seal::DATA_KEY_LEN).then_some(flotilla_types::SecretData(key))
}

/// Where the new store is built before it replaces `raft.redb`.
const NEW_STORE: &str = "raft.redb.force-new-cluster";

/// What [`new_group`] changed in the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewGroup {
    /// This node's raft ID in the new group (IDs are never reused).
    pub(crate) raft_id: u64,
    /// The other managers, removed from the store.
    pub(crate) removed: Vec<String>,
    /// The new group's cluster epoch: the managers removed are refused
    /// by it.
    pub(crate) epoch: Epoch,
}

/// Turns the old group's state into the new group's, with `me` as its only
/// manager: a fresh raft ID for `me`, the other managers removed (their
/// tasks orphaned, so that they run elsewhere), and versions and task
/// creation order reset to 0, because they are raft indexes and the new
/// log starts again at 1; a new cluster epoch a generation up, with
/// `epoch_id`. Deterministic: `now` and `epoch_id` come from the caller.
pub(crate) fn new_group(
    state: &mut State,
    me: &str,
    now: u64,
    epoch_id: String,
) -> Result<NewGroup> {
    let cluster = state
        .cluster
        .as_mut()
        .context("the raft store holds no cluster to recover")?;
    let highest = state.nodes.values().map(|n| n.raft_id).max().unwrap_or(0);
    let raft_id = cluster.next_raft_id.max(highest + 1);
    cluster.next_raft_id = raft_id + 1;
    cluster.epoch = cluster.epoch.next(epoch_id);
    let epoch = cluster.epoch.clone();
    let removed: Vec<String> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && n.id != me)
        .map(|n| n.id.clone())
        .collect();
    for id in &removed {
        let _ = state.apply(
            state.index,
            &Command::RemoveNode {
                node_id: id.clone(),
                at: now,
            },
        );
    }
    if let Some(node) = state.nodes.get_mut(me) {
        node.raft_id = raft_id;
    }
    for service in state.services.values_mut() {
        service.version = 0;
    }
    for task in state.tasks.values_mut() {
        task.created_index = 0;
        task.service_version = 0;
    }
    Ok(NewGroup {
        raft_id,
        removed,
        epoch,
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Step 1: builds the new group's store beside the old one (which is not
/// touched), from the old store's state with its whole log applied.
fn build_new_store(data_dir: &Path, me: &str, addr: &str, now: u64) -> Result<NewGroup> {
    let path = data_dir.join("raft.redb");
    let new = data_dir.join(NEW_STORE);
    if new.exists() {
        // An earlier attempt stopped before the swap: raft.redb is still
        // the old store, so build again from it.
        std::fs::remove_file(&new).with_context(|| format!("removing {}", new.display()))?;
    }
    if !path.exists() {
        anyhow::bail!(
            "force-new-cluster: {} is missing; if an earlier version moved it aside, move the newest {}/raft.redb.before-force-new-cluster-* back to raft.redb and start again",
            path.display(),
            data_dir.display()
        );
    }
    let recovered = flotilla_raft::storage::recovered_state(&path)?;
    let mut state = recovered.state;
    let group = new_group(&mut state, me, now, flotilla_types::new_id(rand::random()))?;
    flotilla_raft::storage::seed(&new, &state, group.raft_id, addr)?;
    sync_dir(data_dir)?;
    tracing::warn!(
        replayed = recovered.replayed,
        "force-new-cluster: log entries after the last applied one were applied to the new group's state"
    );
    Ok(group)
}

/// Step 2: the new store replaces `raft.redb` in one rename; the old one
/// stays under another name (a hard link made first, so that `raft.redb`
/// is never missing).
fn swap_in(data_dir: &Path, now: u64) -> Result<PathBuf> {
    let path = data_dir.join("raft.redb");
    let aside = data_dir.join(format!("raft.redb.before-force-new-cluster-{now}"));
    std::fs::hard_link(&path, &aside)
        .with_context(|| format!("keeping {} as {}", path.display(), aside.display()))?;
    std::fs::rename(data_dir.join(NEW_STORE), &path)
        .with_context(|| format!("replacing {}", path.display()))?;
    sync_dir(data_dir)?;
    Ok(aside)
}

/// `init --force-new-cluster`, at start (while the marker file exists):
/// the raft store is replaced by one for a new group with this node as its
/// only manager (see [`new_group`]) holding all of the old state, the
/// entries of its log after the last applied one included (they may have
/// committed). The steps: build the new store under another name (durable,
/// with its snapshot and membership, so that nothing is left to do at
/// start), swap it in with one rename, write node.json, remove the marker.
/// A crash at any step leaves the marker, and the next start does it all
/// again: before the swap from the old store, after it from the new one
/// (which holds the same state); either way node.json ends up matching
/// the store it names.
pub(crate) fn rewrite_for_new_cluster(
    data_dir: &Path,
    identity: &mut Identity,
    addr: &str,
) -> Result<()> {
    let now = now_ms();
    let group = build_new_store(data_dir, &identity.node_id, addr, now)?;
    let aside = swap_in(data_dir, now)?;
    identity.raft_id = group.raft_id;
    identity.epoch = group.epoch.clone();
    identity::store(data_dir, identity)?;
    std::fs::remove_file(data_dir.join(FORCE_MARKER))?;
    sync_dir(data_dir)?;
    tracing::warn!(
        raft_id = group.raft_id,
        epoch = %group.epoch,
        removed_managers = group.removed.len(),
        old_store = %aside.display(),
        "force-new-cluster: this node is now the only manager"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raft::node::RaftTimings;
    use flotilla_raft::RaftNode;
    use flotilla_types::{Availability, Cluster, Node, NodeState, ServiceSpec, TaskTemplate};

    fn manager(id: &str, raft_id: u64) -> Node {
        Node {
            id: id.into(),
            raft_id,
            name: id.into(),
            hostname: id.into(),
            role: NodeRole::Manager,
            availability: Availability::Active,
            labels: Default::default(),
            state: NodeState::Ready,
            addr: String::new(),
            api_addr: String::new(),
            version: "test".into(),
            entry_format: 0,
            resources: Default::default(),
            platform: Default::default(),
            created_at: 1,
            last_seen: 1,
            overlay_error: None,
            engine_labels: Default::default(),
        }
    }

    /// A data dir as a 3-manager cluster's m1 left it: a store with a
    /// service, node.json, and the marker of a requested recovery.
    fn data_dir() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = State::default();
        let _ = state.apply(
            1,
            &Command::InitCluster {
                cluster: Cluster::bare("c", 1),
                node: manager("m1", 1),
            },
        );
        for (i, m) in ["m2", "m3"].iter().enumerate() {
            let _ = state.apply(
                2 + i as u64,
                &Command::JoinNode {
                    node: manager(m, 0),
                },
            );
        }
        let spec = ServiceSpec {
            name: "web".into(),
            task: TaskTemplate {
                command: vec!["sleep".into(), "1".into()],
                ..TaskTemplate::default()
            },
            ..ServiceSpec::default()
        };
        let _ = state.apply(
            4,
            &Command::CreateService {
                id: "s1".into(),
                spec,
                at: 1,
            },
        );
        assert_eq!(state.nodes.len(), 3);
        flotilla_raft::storage::seed(&dir.path().join("raft.redb"), &state, 1, "").expect("store");
        let identity = Identity {
            cluster_id: "c".into(),
            node_id: "m1".into(),
            raft_id: 1,
            managers: vec![],
            raft_member: 0,
            epoch: Default::default(),
        };
        identity::store(dir.path(), &identity).expect("node.json");
        std::fs::write(dir.path().join(FORCE_MARKER), b"requested\n").expect("marker");
        (dir, identity)
    }

    /// What a finished recovery must leave: no marker, node.json naming
    /// the only voter of the store, the state kept, the other managers
    /// gone, and a raft member that starts as leader on it.
    async fn check_recovered(dir: &Path) {
        assert!(!dir.join(FORCE_MARKER).exists(), "the marker is removed");
        assert!(!dir.join(NEW_STORE).exists());
        let identity = identity::load(dir).expect("load").expect("node.json");
        assert!(
            identity.raft_id > 3,
            "a fresh raft ID: {}",
            identity.raft_id
        );
        {
            // Joining managers get the state from this snapshot.
            use openraft::storage::RaftStateMachine;
            let (_log, mut sm) =
                flotilla_raft::storage::open(&dir.join("raft.redb")).expect("open");
            let snapshot = sm.get_current_snapshot().await.expect("read");
            assert!(snapshot.is_some(), "the new store holds a snapshot");
        }
        let timings = RaftTimings {
            election_min_ms: 100,
            election_max_ms: 200,
            heartbeat_ms: 30,
            ..RaftTimings::default()
        };
        let raft = RaftNode::start(dir, identity.raft_id, &timings)
            .await
            .expect("start");
        raft.wait_leader(std::time::Duration::from_secs(5))
            .await
            .expect("the node.json raft ID is the store's only voter");
        {
            let state = raft.state();
            let state = state.read().expect("lock");
            assert!(state.services.contains_key("s1"));
            let nodes: Vec<&str> = state.nodes.keys().map(|s| s.as_str()).collect();
            assert_eq!(nodes, ["m1"]);
            assert_eq!(state.nodes["m1"].raft_id, identity.raft_id);
            let epoch = state.cluster.as_ref().map(|c| c.epoch.clone());
            assert_eq!(epoch.as_ref(), Some(&identity.epoch), "node.json's epoch");
            assert!(
                identity.epoch.generation >= 1,
                "a new epoch: {}",
                identity.epoch
            );
        }
        raft.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_completes_and_leaves_a_store_that_starts() {
        let (dir, mut identity) = data_dir();
        rewrite_for_new_cluster(dir.path(), &mut identity, "").expect("recover");
        check_recovered(dir.path()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_building_the_new_store_is_redone() {
        let (dir, mut identity) = data_dir();
        build_new_store(dir.path(), "m1", "", now_ms()).expect("step 1");
        rewrite_for_new_cluster(dir.path(), &mut identity, "").expect("recover");
        check_recovered(dir.path()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_the_swap_is_redone_from_the_new_store() {
        let (dir, identity) = data_dir();
        build_new_store(dir.path(), "m1", "", now_ms()).expect("step 1");
        swap_in(dir.path(), now_ms()).expect("step 2");
        // node.json still names the old raft ID, the marker is still there.
        let mut again = identity::load(dir.path())
            .expect("load")
            .expect("node.json");
        assert_eq!(again.raft_id, 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        rewrite_for_new_cluster(dir.path(), &mut again, "").expect("recover");
        check_recovered(dir.path()).await;
        assert_eq!(identity.raft_id, 1);
    }

    #[test]
    fn a_missing_store_is_an_error_that_says_what_to_do() {
        let (dir, mut identity) = data_dir();
        std::fs::rename(
            dir.path().join("raft.redb"),
            dir.path().join("raft.redb.before-force-new-cluster-1"),
        )
        .expect("rename");
        let err = rewrite_for_new_cluster(dir.path(), &mut identity, "")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("move the newest"), "{err}");
        assert!(!dir.path().join("raft.redb").exists(), "nothing is created");
        assert!(dir.path().join(FORCE_MARKER).exists());
    }
}
