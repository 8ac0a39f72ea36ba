//! Nodes: update (availability, name, labels), promote, demote, remove.
//! The membership rules are pure functions over the store's state
//! ([`promotable`], [`demotable`], [`removable`], [`node_update`]), so that
//! each is tested on its own; the `Control` methods apply them and write.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_store::{Command, State, StoreError};
use flotilla_types::{validate_name, Availability, Node, NodeRole, NodeState};

use super::{node_not_found, Control, ControlError};

/// How long `demote` waits for a new leader after the leader removed
/// itself from the raft group.
pub const NEW_LEADER_WAIT: Duration = Duration::from_secs(5);

/// Changes to a node; fields left `None` or empty stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChange {
    pub availability: Option<Availability>,
    pub name: Option<String>,
    pub labels_add: BTreeMap<String, String>,
    pub labels_rm: Vec<String>,
}

fn find(state: &State, id: &str) -> Result<Node, ControlError> {
    state.node(id).cloned().ok_or_else(|| node_not_found(id))
}

fn managers(state: &State) -> usize {
    state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager)
        .count()
}

/// The command that applies `change` to node `id`.
pub fn node_update(state: &State, id: &str, change: NodeChange) -> Result<Command, ControlError> {
    let node = find(state, id)?;
    if let Some(n) = &change.name {
        validate_name(n).map_err(|e| ControlError::Invalid(e.to_string()))?;
    }
    if change
        .labels_add
        .keys()
        .chain(change.labels_rm.iter())
        .any(|k| k.is_empty())
    {
        return Err(ControlError::Invalid("a label key is empty".into()));
    }
    Ok(Command::UpdateNode {
        node_id: node.id,
        availability: change.availability,
        name: change.name,
        labels_add: change.labels_add,
        labels_rm: change.labels_rm,
    })
}

/// The node `promote` would make a manager: a worker that is up.
pub fn promotable(state: &State, id: &str) -> Result<Node, ControlError> {
    let node = find(state, id)?;
    if node.role == NodeRole::Manager {
        return Err(ControlError::Conflict(format!(
            "node {} is already a manager",
            node.name
        )));
    }
    if node.state != NodeState::Ready {
        return Err(ControlError::Conflict(format!(
            "node {} is down: it cannot be promoted until it is back",
            node.name
        )));
    }
    super::cluster::reads_the_log(&node.name, node.entry_format, state)
        .map_err(ControlError::Conflict)?;
    Ok(node)
}

/// The node `demote` would make a worker: a manager that is not the last.
pub fn demotable(state: &State, id: &str) -> Result<Node, ControlError> {
    let node = find(state, id)?;
    if node.role == NodeRole::Worker {
        return Err(ControlError::Conflict(format!(
            "node {} is already a worker",
            node.name
        )));
    }
    if managers(state) <= 1 {
        return Err(ControlError::Conflict(format!(
            "node {} is the last manager: promote another node first",
            node.name
        )));
    }
    Ok(node)
}

/// The node `node rm` would remove: a worker that is down, or up with
/// `force`.
pub fn removable(state: &State, id: &str, force: bool) -> Result<Node, ControlError> {
    let node = find(state, id)?;
    if node.role == NodeRole::Manager {
        return Err(ControlError::Conflict(format!(
            "node {} is a manager: demote it before removing it",
            node.name
        )));
    }
    if node.state == NodeState::Ready && !force {
        return Err(ControlError::Conflict(format!(
            "node {} is up: stop it (or 'flotilla leave' on it) first, or use --force",
            node.name
        )));
    }
    Ok(node)
}

impl Control {
    /// Applies `change` to node `id`; returns the node's ID.
    pub async fn update_node(&self, id: &str, change: NodeChange) -> Result<String, ControlError> {
        let command = self.read(|s| node_update(s, id, change))?;
        match self.commit(command).await {
            Err(ControlError::Store(StoreError::NodeExists(n))) => Err(ControlError::Conflict(
                format!("a node named {n} already exists"),
            )),
            Err(e) => Err(e),
            Ok(_) => self.read(|s| find(s, id).map(|n| n.id)),
        }
    }

    /// Makes a worker a manager; it changes its certificate and joins the
    /// raft group by itself once its session tells it. Returns its ID.
    pub async fn promote_node(&self, id: &str) -> Result<String, ControlError> {
        let node = self.read(|s| promotable(s, id))?;
        self.commit(Command::SetNodeRole {
            node_id: node.id.clone(),
            role: NodeRole::Manager,
        })
        .await?;
        Ok(node.id)
    }

    /// Makes a manager a worker: out of the raft group first, so that it
    /// never votes as a worker. Returns its ID.
    pub async fn demote_node(&self, id: &str) -> Result<String, ControlError> {
        let node = self.read(|s| demotable(s, id))?;
        if node.raft_id != 0 {
            self.writer
                .remove_manager(node.raft_id)
                .await
                .map_err(|e| {
                    ControlError::Unavailable(format!(
                        "cannot remove {} from the raft group: {e}",
                        node.name
                    ))
                })?;
            // A leader that removed itself steps down; wait for the next
            // one, which the role change is proposed to.
            let deadline = tokio::time::Instant::now() + NEW_LEADER_WAIT;
            while self.writer.leader().is_none_or(|l| l == node.raft_id)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.commit(Command::SetNodeRole {
            node_id: node.id.clone(),
            role: NodeRole::Worker,
        })
        .await?;
        Ok(node.id)
    }

    /// Removes a worker from the cluster; its tasks are orphaned and run
    /// elsewhere. Returns its ID and name.
    pub async fn remove_node(&self, id: &str, force: bool) -> Result<Node, ControlError> {
        let node = self.read(|s| removable(s, id, force))?;
        self.commit(Command::RemoveNode {
            node_id: node.id.clone(),
            at: self.now(),
        })
        .await?;
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{cluster, down, Fake};

    #[test]
    fn promote_needs_a_worker_that_is_up() {
        let s = cluster(&[("m1", NodeRole::Manager), ("w1", NodeRole::Worker)]);
        assert_eq!(promotable(&s, "w1").map(|n| n.name).ok(), Some("w1".into()));
        let e = promotable(&s, "m1").err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("node m1 is already a manager"));
        let mut s = s;
        down(&mut s, "w1");
        let e = promotable(&s, "w1").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("node w1 is down: it cannot be promoted until it is back")
        );
        assert!(matches!(
            promotable(&s, "nope"),
            Err(ControlError::NotFound(_))
        ));
    }

    #[test]
    fn demote_keeps_a_manager() {
        let one = cluster(&[("m1", NodeRole::Manager), ("w1", NodeRole::Worker)]);
        let e = demotable(&one, "m1").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("node m1 is the last manager: promote another node first")
        );
        let e = demotable(&one, "w1").err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("node w1 is already a worker"));
        let two = cluster(&[("m1", NodeRole::Manager), ("m2", NodeRole::Manager)]);
        assert!(demotable(&two, "m2").is_ok());
    }

    #[test]
    fn remove_needs_a_worker_that_is_down_or_force() {
        let mut s = cluster(&[("m1", NodeRole::Manager), ("w1", NodeRole::Worker)]);
        let e = removable(&s, "m1", true).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("node m1 is a manager: demote it before removing it")
        );
        assert!(matches!(
            removable(&s, "w1", false),
            Err(ControlError::Conflict(m)) if m.contains("is up")
        ));
        assert!(removable(&s, "w1", true).is_ok());
        down(&mut s, "w1");
        assert!(removable(&s, "w1", false).is_ok());
    }

    #[test]
    fn updates_check_names_and_label_keys() {
        let s = cluster(&[("m1", NodeRole::Manager)]);
        let bad_name = NodeChange {
            name: Some("no spaces".into()),
            ..Default::default()
        };
        assert!(matches!(
            node_update(&s, "m1", bad_name),
            Err(ControlError::Invalid(_))
        ));
        let empty_key = NodeChange {
            labels_rm: vec![String::new()],
            ..Default::default()
        };
        let e = node_update(&s, "m1", empty_key)
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("a label key is empty"));
        let drain = NodeChange {
            availability: Some(Availability::Drain),
            ..Default::default()
        };
        assert!(matches!(
            node_update(&s, "m1", drain),
            Ok(Command::UpdateNode {
                availability: Some(Availability::Drain),
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_taken_name_is_a_conflict() {
        let fake = Fake::new(cluster(&[
            ("m1", NodeRole::Manager),
            ("w1", NodeRole::Worker),
        ]));
        let change = NodeChange {
            name: Some("m1".into()),
            ..Default::default()
        };
        let e = fake.control().update_node("w1", change).await.err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("a node named m1 already exists")
        );
    }

    #[tokio::test]
    async fn demote_leaves_the_raft_group_before_the_role_changes() {
        let fake = Fake::new(cluster(&[
            ("m1", NodeRole::Manager),
            ("m2", NodeRole::Manager),
        ]));
        let raft_id = fake.read(|s| s.nodes["m2"].raft_id);
        fake.control().demote_node("m2").await.expect("demote");
        assert_eq!(fake.removed(), vec![raft_id]);
        assert_eq!(fake.read(|s| s.nodes["m2"].role), NodeRole::Worker);
        // A manager the raft group cannot let go of stays a manager.
        let fake = Fake::new(cluster(&[
            ("m1", NodeRole::Manager),
            ("m2", NodeRole::Manager),
        ]));
        fake.refuse_removal("no quorum");
        let e = fake.control().demote_node("m2").await.err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("cannot remove m2 from the raft group: no quorum")
        );
        assert_eq!(fake.read(|s| s.nodes["m2"].role), NodeRole::Manager);
    }

    #[tokio::test]
    async fn promote_and_remove_write_through_the_writer() {
        let fake = Fake::new(cluster(&[
            ("m1", NodeRole::Manager),
            ("w1", NodeRole::Worker),
        ]));
        fake.control().promote_node("w1").await.expect("promote");
        assert_eq!(fake.read(|s| s.nodes["w1"].role), NodeRole::Manager);
        let fake = Fake::new(cluster(&[
            ("m1", NodeRole::Manager),
            ("w1", NodeRole::Worker),
        ]));
        let gone = fake.control().remove_node("w1", true).await.expect("rm");
        assert_eq!(gone.name, "w1");
        assert!(fake.read(|s| !s.nodes.contains_key("w1")));
    }
}
