//! The cluster as a whole: join tokens and the role a join secret gives,
//! the record of a node that joins, and the quorum arithmetic of `leave`.

use flotilla_pki::token::secrets_match;
use flotilla_pki::JoinToken;
use flotilla_store::{Command, State};
use flotilla_types::{Availability, Cluster, Node, NodeRole, NodeState};

use super::{Control, ControlError};
use crate::wire::JoinRequest;

/// The role a join secret gives, compared in constant time so that a
/// caller cannot learn a secret byte by byte from how fast it is refused.
/// An empty secret (a cluster made before tokens existed) admits nobody.
pub fn join_role(cluster: &Cluster, secret: &str) -> Option<NodeRole> {
    let matches = |s: &str| !s.is_empty() && secrets_match(s.as_bytes(), secret.as_bytes());
    // Both are compared whatever the first gives, for the same reason.
    let manager = matches(&cluster.manager_secret);
    let worker = matches(&cluster.worker_secret);
    match (manager, worker) {
        (true, _) => Some(NodeRole::Manager),
        (false, true) => Some(NodeRole::Worker),
        (false, false) => None,
    }
}

/// The message a wrong or rotated secret gets.
pub const BAD_SECRET: &str = "invalid join token: its secret is wrong or was rotated (get a current one with 'flotilla join-token')";

/// The record of a node that joins with `request` as `role`, under the ID
/// `node_id` chosen by the manager that admits it. Its raft ID is given by
/// the store (managers) or 0 (workers).
pub fn joining_node(request: &JoinRequest, node_id: &str, role: NodeRole, now: u64) -> Node {
    Node {
        id: node_id.to_string(),
        raft_id: 0,
        name: request.name.clone(),
        hostname: request.hostname.clone(),
        role,
        availability: Availability::Active,
        labels: Default::default(),
        state: NodeState::Ready,
        addr: request.addr.clone(),
        api_addr: request.api_addr.clone(),
        version: request.version.clone(),
        resources: request.resources,
        platform: request.platform.clone(),
        created_at: now,
        last_seen: now,
        entry_format: request.entry_format,
        overlay_error: None,
        engine_labels: Default::default(),
    }
}

/// Whether a node whose version reads raft entries up to `entry_format`
/// may be a manager of `state`'s cluster: it must read every format the
/// leader writes now ([`flotilla_store::writable_format`]), or it would
/// stop at the first entry it cannot read.
pub fn reads_the_log(name: &str, entry_format: u32, state: &State) -> Result<(), String> {
    let writes = flotilla_store::writable_format(state);
    let reads = entry_format.max(flotilla_store::entry::BARE_FORMAT);
    if reads < writes {
        return Err(format!(
            "node {name} runs a version that reads raft entry format {reads} only, and this \
             cluster writes format {writes}: upgrade it before it becomes a manager"
        ));
    }
    Ok(())
}

/// Whether a manager that leaves must first leave the raft group, or why
/// it may not leave without `--force`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Other managers remain: leave the raft group through the leader.
    LeaveRaft,
    /// No other manager remains (the cluster ends with this node).
    Last,
}

/// The rules of `leave` for a manager, given the managers in the store:
/// the last manager, or one whose leaving leaves fewer reachable managers
/// than a quorum of those that remain, needs `force`.
pub fn leave_plan(state: &State, force: bool) -> Result<Leave, String> {
    let managers: Vec<&Node> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager)
        .collect();
    let ready = managers
        .iter()
        .filter(|n| n.state == NodeState::Ready)
        .count();
    if managers.len() <= 1 {
        if !force {
            return Err(
                "this node is the last manager: leaving ends the cluster; use --force".into(),
            );
        }
        return Ok(Leave::Last);
    }
    let remaining = managers.len() - 1;
    let reachable_after = ready.saturating_sub(1);
    let need = remaining / 2 + 1;
    if reachable_after < need && !force {
        return Err(format!(
            "leaving would break quorum: {reachable_after} of {remaining} remaining managers reachable (need {need}); use --force"
        ));
    }
    Ok(Leave::LeaveRaft)
}

/// Whether the leader may add raft ID `raft_id` to the raft group for node
/// `node_id` (`/cluster/v1/add-manager`): only the ID the store handed out
/// to that node as a manager (at its join or promotion). An ID that was
/// removed is in no record (a demotion sets 0, `node rm` drops the record,
/// force-new-cluster removes the other managers), so it is refused too, and
/// a node cannot take another's ID.
pub fn addable_manager(state: &State, node_id: &str, raft_id: u64) -> Result<(), String> {
    let node = state
        .nodes
        .get(node_id)
        .ok_or_else(|| format!("node {node_id} is not part of this cluster"))?;
    if node.role != NodeRole::Manager || node.raft_id == 0 {
        return Err(format!("node {node_id} is not a manager"));
    }
    if node.raft_id != raft_id {
        return Err(format!(
            "raft ID {raft_id} is not the one handed out to node {node_id} ({}); a removed or another node's ID is never added back",
            node.raft_id
        ));
    }
    Ok(())
}

/// The join token for `role`, from the cluster record with its keys
/// opened ([`crate::keyring::Keyring::open_cluster`]).
pub fn join_token(cluster: &Cluster, role: NodeRole) -> Result<JoinToken, ControlError> {
    let ca_fingerprint = flotilla_pki::pem_fingerprint(&cluster.ca_cert_pem)
        .map_err(|e| ControlError::Unavailable(format!("the cluster CA is unreadable: {e}")))?;
    let secret = match role {
        NodeRole::Worker => cluster.worker_secret.clone(),
        NodeRole::Manager => cluster.manager_secret.clone(),
    };
    Ok(JoinToken {
        ca_fingerprint,
        secret,
    })
}

impl Control {
    /// The join token for `role`.
    pub fn join_token_of(&self, role: NodeRole) -> Result<JoinToken, ControlError> {
        let cluster = self.cluster_record()?;
        let cluster = self
            .keys
            .open_cluster(&cluster)
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        join_token(&cluster, role)
    }

    /// Replaces the join secret of `role`: tokens shown before stop working.
    pub async fn rotate_join_secret(&self, role: NodeRole) -> Result<(), ControlError> {
        let secret = flotilla_pki::token::new_secret(rand::random());
        if self.reseal_join_secret(role, secret.clone()).await? {
            return Ok(());
        }
        self.commit(Command::RotateJoinSecret { role, secret })
            .await?;
        Ok(())
    }
}

/// The shortest interval of scheduled backups.
pub const MIN_BACKUP_EVERY_MS: u64 = 1000;

/// A backup schedule as `flotilla backup --schedule EVERY --keep N --dir
/// DIR` asks for it; `every` of `off` (or none) stops it.
pub fn backup_schedule(
    every: Option<&str>,
    keep: u32,
    dir: Option<&str>,
) -> Result<Option<flotilla_types::BackupSchedule>, ControlError> {
    let Some(every) = every.filter(|e| *e != "off") else {
        return Ok(None);
    };
    let every_ms = flotilla_types::parse_duration_ms(every)
        .map_err(|e| ControlError::Invalid(format!("--schedule: {e}")))?;
    if every_ms < MIN_BACKUP_EVERY_MS {
        return Err(ControlError::Invalid(
            "--schedule: at least 1s between backups".into(),
        ));
    }
    if keep == 0 {
        return Err(ControlError::Invalid("--keep: at least 1".into()));
    }
    let dir = dir.ok_or_else(|| {
        ControlError::Invalid("--schedule needs --dir: where the leader writes them".into())
    })?;
    if !std::path::Path::new(dir).is_absolute() {
        return Err(ControlError::Invalid(format!(
            "--dir {dir}: an absolute path (it is on the leader's machine)"
        )));
    }
    Ok(Some(flotilla_types::BackupSchedule {
        every_ms,
        keep,
        dir: dir.to_string(),
    }))
}

impl Control {
    /// Sets (or, with None, stops) the cluster's backup schedule.
    pub async fn set_backup_schedule(
        &self,
        schedule: Option<flotilla_types::BackupSchedule>,
    ) -> Result<(), ControlError> {
        self.commit(Command::SetBackupSchedule { schedule }).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{cluster, down, Fake};

    fn with_secrets() -> Cluster {
        Cluster {
            worker_secret: "w-secret".into(),
            manager_secret: "m-secret".into(),
            ..Cluster::bare("c", 0)
        }
    }

    /// A manager of a version that cannot read the entries the leader
    /// writes would stop at the first one: it is refused as a manager
    /// (join, promote) until it is upgraded.
    #[test]
    fn a_manager_must_read_the_format_the_cluster_writes() {
        let mut state = cluster(&[("m1", NodeRole::Manager), ("w1", NodeRole::Worker)]);
        assert_eq!(reads_the_log("new", 0, &state), Ok(()), "all at format 1");
        state.nodes.get_mut("m1").expect("m1").entry_format = flotilla_store::FORMAT;
        assert_eq!(reads_the_log("new", flotilla_store::FORMAT, &state), Ok(()));
        assert_eq!(
            reads_the_log("old", 0, &state),
            Err(format!(
                "node old runs a version that reads raft entry format 1 only, and this \
                 cluster writes format {}: upgrade it before it becomes a manager",
                flotilla_store::FORMAT
            ))
        );
        assert!(crate::control::nodes::promotable(&state, "w1").is_err());
        state.nodes.get_mut("w1").expect("w1").entry_format = flotilla_store::FORMAT;
        assert!(crate::control::nodes::promotable(&state, "w1").is_ok());
    }

    #[test]
    fn the_secret_decides_the_role() {
        let c = with_secrets();
        assert_eq!(join_role(&c, "m-secret"), Some(NodeRole::Manager));
        assert_eq!(join_role(&c, "w-secret"), Some(NodeRole::Worker));
        assert_eq!(join_role(&c, "w-secreT"), None);
        assert_eq!(join_role(&c, "w-secret-longer"), None);
        assert_eq!(join_role(&c, ""), None);
        // A cluster without secrets admits nobody, not everybody.
        assert_eq!(join_role(&Cluster::bare("c", 0), ""), None);
    }

    #[test]
    fn only_the_raft_id_handed_out_to_a_manager_is_added() {
        let mut s = cluster(&[("m1", NodeRole::Manager), ("w1", NodeRole::Worker)]);
        let m1 = s.nodes["m1"].raft_id;
        assert!(m1 != 0);
        assert_eq!(addable_manager(&s, "m1", m1), Ok(()));
        let other = addable_manager(&s, "m1", m1 + 1).err().unwrap_or_default();
        assert!(other.contains("is not the one handed out"), "{other}");
        let worker = addable_manager(&s, "w1", 0).err().unwrap_or_default();
        assert!(worker.contains("not a manager"), "{worker}");
        let gone = addable_manager(&s, "m9", m1).err().unwrap_or_default();
        assert!(gone.contains("not part of this cluster"), "{gone}");
        // Demoted: its old ID is removed and never comes back.
        if let Some(n) = s.nodes.get_mut("m1") {
            n.role = NodeRole::Worker;
            n.raft_id = 0;
        }
        assert!(addable_manager(&s, "m1", m1).is_err());
    }

    #[test]
    fn the_last_manager_leaves_only_with_force() {
        let s = cluster(&[("m1", NodeRole::Manager), ("w1", NodeRole::Worker)]);
        assert!(leave_plan(&s, false)
            .err()
            .is_some_and(|e| e.contains("last manager")));
        assert_eq!(leave_plan(&s, true), Ok(Leave::Last));
    }

    #[test]
    fn leaving_may_not_break_quorum() {
        let mut s = cluster(&[
            ("m1", NodeRole::Manager),
            ("m2", NodeRole::Manager),
            ("m3", NodeRole::Manager),
        ]);
        // 3 managers, all up: 2 remain, 2 reachable, quorum of 2 is 2.
        assert_eq!(leave_plan(&s, false), Ok(Leave::LeaveRaft));
        // One of the others is down: 1 of 2 reachable after, need 2.
        down(&mut s, "m3");
        assert_eq!(
            leave_plan(&s, false),
            Err(
                "leaving would break quorum: 1 of 2 remaining managers reachable (need 2); use --force"
                    .into()
            )
        );
        assert_eq!(leave_plan(&s, true), Ok(Leave::LeaveRaft));
        // 2 managers: the one that stays is a quorum of one.
        let two = cluster(&[("m1", NodeRole::Manager), ("m2", NodeRole::Manager)]);
        assert_eq!(leave_plan(&two, false), Ok(Leave::LeaveRaft));
    }

    #[test]
    fn join_tokens_need_a_cluster() {
        let c = Fake::new(State::default()).control();
        assert!(matches!(
            c.join_token_of(NodeRole::Worker),
            Err(ControlError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn rotation_replaces_only_that_roles_secret() {
        let fake = Fake::new(cluster(&[("m1", NodeRole::Manager)]));
        let before = fake.read(|s| s.cluster.clone()).expect("cluster");
        fake.control()
            .rotate_join_secret(NodeRole::Worker)
            .await
            .expect("rotate");
        let after = fake.read(|s| s.cluster.clone()).expect("cluster");
        assert_ne!(before.worker_secret, after.worker_secret);
        assert_eq!(before.manager_secret, after.manager_secret);
        assert!(join_role(&after, &before.worker_secret).is_none());
    }
}
