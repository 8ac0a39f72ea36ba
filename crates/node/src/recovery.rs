//! Recovery from quorum loss: `init --force-new-cluster`.

use std::path::Path;

use anyhow::{Context, Result};

use flotilla_store::Command;
use flotilla_types::NodeRole;

use crate::identity::Identity;
use crate::{identity, now_ms};

/// Marker file: the next start rewrites the raft store for a new group.
pub(crate) const FORCE_MARKER: &str = "force-new-cluster";

/// Replaces this process with a fresh run of the same command line. Task
/// processes keep running (they are adopted again) and stay our children.
pub(crate) fn reexec() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new("/proc/self/exe")
        .args(args)
        .exec();
    tracing::error!(error = %err, "cannot restart the daemon; exiting so that a supervisor restarts it");
    std::process::exit(70);
}

/// `init --force-new-cluster`, at start: the raft store is moved aside and a
/// new one is seeded with its state, with this node as the only manager
/// under a fresh raft ID (IDs are never reused). Managers that are gone
/// are removed and their tasks orphaned, so that they run elsewhere.
pub(crate) fn rewrite_for_new_cluster(data_dir: &Path, identity: &mut Identity) -> Result<()> {
    let path = data_dir.join("raft.redb");
    let mut state = {
        let (_log, sm) = flotilla_raft::storage::open(&path)?;
        let shared = sm.shared();
        let state = match shared.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        state
    };
    let cluster = state
        .cluster
        .as_mut()
        .context("the raft store holds no cluster to recover")?;
    let highest = state.nodes.values().map(|n| n.raft_id).max().unwrap_or(0);
    let fresh = cluster.next_raft_id.max(highest + 1);
    cluster.next_raft_id = fresh + 1;
    let now = now_ms();
    let gone: Vec<String> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && n.id != identity.node_id)
        .map(|n| n.id.clone())
        .collect();
    for id in &gone {
        let _ = state.apply(
            state.index,
            &Command::RemoveNode {
                node_id: id.clone(),
                at: now,
            },
        );
    }
    if let Some(me) = state.nodes.get_mut(&identity.node_id) {
        me.raft_id = fresh;
    }
    // Versions and creation order are raft indexes, and the new log starts
    // again at 1: put everything that exists before anything to come.
    for service in state.services.values_mut() {
        service.version = 0;
    }
    for task in state.tasks.values_mut() {
        task.created_index = 0;
        task.service_version = 0;
    }
    let aside = data_dir.join(format!("raft.redb.before-force-new-cluster-{now}"));
    std::fs::rename(&path, &aside).with_context(|| format!("moving {} aside", path.display()))?;
    flotilla_raft::storage::seed(&path, &state)?;
    identity.raft_id = fresh;
    identity::store(data_dir, identity)?;
    std::fs::remove_file(data_dir.join(FORCE_MARKER))?;
    tracing::warn!(
        raft_id = fresh,
        removed_managers = gone.len(),
        old_store = %aside.display(),
        "force-new-cluster: this node is now the only manager"
    );
    Ok(())
}
