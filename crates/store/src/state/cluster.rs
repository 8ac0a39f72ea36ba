//! Commands on the cluster record: creating the cluster, rotating its join
//! secrets, and handing out raft IDs.

use flotilla_types::{Cluster, Node, NodeRole};

use super::{table, Change, State};
use crate::command::CommandResult;
use crate::error::StoreError;

impl State {
    /// [`crate::Command::InitCluster`]: creates the cluster and its first
    /// node. Refused once a cluster exists. The cluster's next raft ID is
    /// moved past the first node's, whatever the proposer put there.
    pub(super) fn init_cluster(
        &mut self,
        cluster: &Cluster,
        node: &Node,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        if self.cluster.is_some() {
            return Err(StoreError::AlreadyInitialized);
        }
        let mut cluster = cluster.clone();
        cluster.next_raft_id = cluster.next_raft_id.max(node.raft_id + 1);
        let id = cluster.id.clone();
        self.cluster = Some(cluster);
        changes.push(Change::Cluster);
        table::insert(&mut self.nodes, &node.id, node.clone(), changes);
        Ok(Some(id))
    }

    /// [`crate::Command::SetBackupSchedule`]: replaces the schedule (None
    /// stops it). The proposer checked it; a schedule that could not run
    /// (no interval, nothing kept, no directory) is refused here too.
    pub(super) fn set_backup_schedule(
        &mut self,
        schedule: Option<&flotilla_types::BackupSchedule>,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialized)?;
        if let Some(s) = schedule {
            if s.every_ms == 0 || s.keep == 0 || s.dir.is_empty() {
                return Err(StoreError::BadSchedule(format!(
                    "every {} ms, keep {}, dir '{}'",
                    s.every_ms, s.keep, s.dir
                )));
            }
        }
        cluster.backup_schedule = schedule.cloned();
        changes.push(Change::Cluster);
        Ok(None)
    }

    /// [`crate::Command::RotateJoinSecret`]: replaces one role's join
    /// secret, which invalidates the tokens made from the old one.
    pub(super) fn rotate_join_secret(
        &mut self,
        role: NodeRole,
        secret: &str,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialized)?;
        if cluster.autolock.is_some() {
            // Under autolock the secrets are sealed with the keys: a
            // rotation reseals them (SetAutolock), never in plaintext.
            return Err(StoreError::BadSecret {
                kind: "join secret".into(),
                name: role.to_string(),
                reason: "autolock is on: the join secrets are rotated sealed".into(),
            });
        }
        match role {
            NodeRole::Manager => cluster.manager_secret = secret.to_string(),
            NodeRole::Worker => cluster.worker_secret = secret.to_string(),
        }
        changes.push(Change::Cluster);
        Ok(None)
    }
}

/// The raft ID a node of `role` gets: a manager the cluster's next one,
/// which is then used up (raft IDs are never reused, so a removed manager's
/// log entries can never be taken for a new one's); a worker none (0).
pub(super) fn raft_id_for(cluster: &mut Cluster, role: NodeRole, changes: &mut Vec<Change>) -> u64 {
    match role {
        NodeRole::Manager => {
            let id = cluster.next_raft_id;
            cluster.next_raft_id += 1;
            changes.push(Change::Cluster);
            id
        }
        NodeRole::Worker => 0,
    }
}
