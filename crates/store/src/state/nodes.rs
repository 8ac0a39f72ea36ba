//! Commands on the nodes table: joins, user changes (`node update`,
//! `promote`, `demote`, `rm`) and what the dispatcher observes (a node
//! seen, nodes down).

use std::collections::BTreeMap;

use flotilla_types::{Availability, Node, NodeRole, NodeState, TaskState, TaskStatus, UnixMs};

use super::cluster::raft_id_for;
use super::{table, Change, State};
use crate::command::CommandResult;
use crate::error::StoreError;

/// What a node says of itself when it reports in: the version it runs,
/// the newest entry format that reads, and when; its agent also says
/// the labels of its Docker Engine.
#[derive(Debug, Clone, Copy)]
pub(super) struct Report<'a> {
    pub version: &'a str,
    pub entry_format: u32,
    pub at: UnixMs,
    /// `None`: not reported (a leader's refresh of its own record).
    pub engine_labels: Option<&'a BTreeMap<String, String>>,
}

impl Report<'_> {
    /// Ready, seen at `at` (never moved back), at this version.
    fn set(self, node: &mut Node) {
        node.state = NodeState::Ready;
        node.last_seen = node.last_seen.max(self.at);
        node.version = self.version.to_string();
        node.entry_format = self.entry_format;
        if let Some(labels) = self.engine_labels {
            node.engine_labels = labels.clone();
        }
    }
}

impl State {
    /// [`crate::Command::UpsertNode`]: adds a node or replaces its whole
    /// record. Needs a cluster.
    pub(super) fn upsert_node(&mut self, node: &Node, changes: &mut Vec<Change>) -> CommandResult {
        self.require_cluster()?;
        table::insert(&mut self.nodes, &node.id, node.clone(), changes);
        Ok(Some(node.id.clone()))
    }

    /// [`crate::Command::JoinNode`]: adds a node that is not there yet. The
    /// raft ID is the store's to give (see [`raft_id_for`]); the one in the
    /// proposal is ignored.
    pub(super) fn join_node(&mut self, node: &Node, changes: &mut Vec<Change>) -> CommandResult {
        if self.nodes.contains_key(&node.id) {
            return Err(StoreError::NodeExists(node.id.clone()));
        }
        let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialized)?;
        let mut node = node.clone();
        node.raft_id = raft_id_for(cluster, node.role, changes);
        let id = node.id.clone();
        table::insert(&mut self.nodes, &id, node, changes);
        Ok(Some(id))
    }

    /// [`crate::Command::UpdateNode`]: what users set on a node. A new name
    /// must not be another node's; a refused update changes nothing.
    /// Labels are removed before they are added.
    pub(super) fn update_node(
        &mut self,
        node_id: &str,
        availability: Option<Availability>,
        name: Option<&str>,
        labels_add: &BTreeMap<String, String>,
        labels_rm: &[String],
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        if let Some(n) = name {
            if self
                .nodes
                .values()
                .any(|other| other.id != node_id && other.name == n)
            {
                return Err(StoreError::NodeExists(n.to_string()));
            }
        }
        let node = self.node_mut(node_id)?;
        if let Some(a) = availability {
            node.availability = a;
        }
        if let Some(n) = name {
            node.name = n.to_string();
        }
        for k in labels_rm {
            node.labels.remove(k);
        }
        for (k, v) in labels_add {
            node.labels.insert(k.clone(), v.clone());
        }
        table::touched::<Node>(node_id, changes);
        Ok(Some(node_id.to_string()))
    }

    /// [`crate::Command::SetNodeRole`]: promotes or demotes a node. A node
    /// already in `role` is left alone (`Ok(None)`); otherwise a new
    /// manager gets a fresh raft ID and a worker loses its own.
    pub(super) fn set_node_role(
        &mut self,
        node_id: &str,
        role: NodeRole,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let cluster = self.cluster.as_mut().ok_or(StoreError::NotInitialized)?;
        let node = self
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| StoreError::NodeNotFound(node_id.to_string()))?;
        if node.role == role {
            return Ok(None);
        }
        node.role = role;
        node.raft_id = raft_id_for(cluster, role, changes);
        table::touched::<Node>(node_id, changes);
        Ok(Some(node_id.to_string()))
    }

    /// [`crate::Command::RemoveNode`]: forgets a node. Its tasks that can
    /// still move are orphaned at `at`, so that the orchestrator replaces
    /// them elsewhere.
    pub(super) fn remove_node(
        &mut self,
        node_id: &str,
        at: UnixMs,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        if table::remove(&mut self.nodes, node_id, changes).is_none() {
            return Err(StoreError::NodeNotFound(node_id.to_string()));
        }
        for task in self.tasks.values_mut() {
            if task.node_id.as_deref() == Some(node_id)
                && task.status.state.can_move_to(TaskState::Orphaned)
            {
                let mut status = TaskStatus::new(TaskState::Orphaned, at, "node removed");
                status.error = Some("its node was removed from the cluster".into());
                task.status = status;
                changes.push(Change::Task(task.id.clone()));
            }
        }
        Ok(Some(node_id.to_string()))
    }

    /// [`crate::Command::NodeSeen`]: the node is ready, at these addresses
    /// and version. `last_seen` never moves back; an empty cluster address
    /// keeps the known one, while the API address is taken as sent (empty
    /// means the node serves none), and so are why it cannot run overlay
    /// networks (none: it can) and its engine's labels.
    pub(super) fn node_seen(
        &mut self,
        node_id: &str,
        addr: &str,
        api_addr: &str,
        report: Report<'_>,
        overlay_error: Option<&str>,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        let node = self.node_mut(node_id)?;
        if !addr.is_empty() {
            node.addr = addr.to_string();
        }
        node.api_addr = api_addr.to_string();
        node.overlay_error = overlay_error.map(String::from);
        report.set(node);
        table::touched::<Node>(node_id, changes);
        Ok(None)
    }

    /// [`crate::Command::RefreshNode`]: a leader's refresh of its own
    /// record, field by field on the record as it is now, so that a drain
    /// or a label change that committed after the leader read its record
    /// stays. A name taken by another node refuses the whole refresh, as
    /// `node update` does.
    pub(super) fn refresh_node(
        &mut self,
        node_id: &str,
        name: Option<&str>,
        hostname: &str,
        report: Report<'_>,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        if let Some(n) = name {
            if self
                .nodes
                .values()
                .any(|other| other.id != node_id && other.name == n)
            {
                return Err(StoreError::NodeExists(n.to_string()));
            }
        }
        let node = self.node_mut(node_id)?;
        report.set(node);
        node.hostname = hostname.to_string();
        if let Some(n) = name {
            node.name = n.to_string();
        }
        table::touched::<Node>(node_id, changes);
        Ok(Some(node_id.to_string()))
    }

    /// [`crate::Command::SetNodeState`]: moves nodes to `state`. Unknown
    /// nodes and nodes already in that state are skipped (no change, and
    /// `last_seen` stays).
    pub(super) fn set_node_state(
        &mut self,
        node_ids: &[String],
        state: NodeState,
        at: UnixMs,
        changes: &mut Vec<Change>,
    ) -> CommandResult {
        for id in node_ids {
            if let Some(node) = self.nodes.get_mut(id) {
                if node.state != state {
                    node.state = state;
                    node.last_seen = node.last_seen.max(at);
                    table::touched::<Node>(id, changes);
                }
            }
        }
        Ok(None)
    }

    fn node_mut(&mut self, node_id: &str) -> Result<&mut Node, StoreError> {
        self.nodes
            .get_mut(node_id)
            .ok_or_else(|| StoreError::NodeNotFound(node_id.to_string()))
    }
}
