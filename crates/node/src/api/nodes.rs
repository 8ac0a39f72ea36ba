//! Nodes: list, inspect, update, promote, demote, remove.

use super::*;

pub(super) async fn nodes(State(ctx): Ctx) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    let status = managers(&m);
    let id = m.member.identity.node_id.clone();
    Ok(answer(
        warning,
        read(&m, |s| views::node_views(s, Some(&id), &status)),
    ))
}

pub(super) fn node_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("node {id} not found"))
}

pub(super) fn one_node(m: &Mgr, id: &str) -> Result<NodeView, ApiError> {
    let status = managers(m);
    let me = m.member.identity.node_id.clone();
    read(m, |s| {
        let node = s.node(id)?;
        views::node_views(s, Some(&me), &status)
            .into_iter()
            .find(|v| v.id == node.id)
    })
    .ok_or_else(|| node_not_found(id))
}

pub(super) async fn node(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult<NodeView> {
    let m = member(&ctx).await?;
    one_node(&m, &id).map(Json)
}

pub(super) async fn update_node(
    State(ctx): Ctx,
    Path(id): Path<String>,
    req: Result<Json<NodeUpdate>, JsonRejection>,
) -> ApiResult<NodeView> {
    let req = body(req)?;
    let m = member(&ctx).await?;
    let node_id =
        read(&m, |s| s.node(&id).map(|n| n.id.clone())).ok_or_else(|| node_not_found(&id))?;
    let availability = match req.availability.as_deref() {
        None => None,
        Some("active") => Some(flotilla_types::Availability::Active),
        Some("pause") => Some(flotilla_types::Availability::Pause),
        Some("drain") => Some(flotilla_types::Availability::Drain),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid availability {other:?}: expected active, pause or drain"
            )))
        }
    };
    if let Some(n) = &req.name {
        validate_name(n).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    for k in req.labels_add.keys().chain(req.labels_rm.iter()) {
        if k.is_empty() {
            return Err(ApiError::BadRequest("a label key is empty".into()));
        }
    }
    m.member
        .propose(Command::UpdateNode {
            node_id: node_id.clone(),
            availability,
            name: req.name,
            labels_add: req.labels_add,
            labels_rm: req.labels_rm,
        })
        .await?
        .map_err(|e| match e {
            StoreError::NodeExists(n) => {
                ApiError::Conflict(format!("a node named {n} already exists"))
            }
            other => other.into(),
        })?;
    one_node(&m, &node_id).map(Json)
}

pub(super) async fn promote_node(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult<NodeView> {
    let m = member(&ctx).await?;
    let node = read(&m, |s| s.node(&id).cloned()).ok_or_else(|| node_not_found(&id))?;
    if node.role == NodeRole::Manager {
        return Err(ApiError::Conflict(format!(
            "node {} is already a manager",
            node.name
        )));
    }
    if node.state != flotilla_types::NodeState::Ready {
        return Err(ApiError::Conflict(format!(
            "node {} is down: it cannot be promoted until it is back",
            node.name
        )));
    }
    m.member
        .propose(Command::SetNodeRole {
            node_id: node.id.clone(),
            role: NodeRole::Manager,
        })
        .await??;
    one_node(&m, &node.id).map(Json)
}

pub(super) async fn demote_node(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult<NodeView> {
    let m = member(&ctx).await?;
    let node = read(&m, |s| s.node(&id).cloned()).ok_or_else(|| node_not_found(&id))?;
    if node.role == NodeRole::Worker {
        return Err(ApiError::Conflict(format!(
            "node {} is already a worker",
            node.name
        )));
    }
    let managers = read(&m, |s| {
        s.nodes
            .values()
            .filter(|n| n.role == NodeRole::Manager)
            .count()
    });
    if managers <= 1 {
        return Err(ApiError::Conflict(format!(
            "node {} is the last manager: promote another node first",
            node.name
        )));
    }
    // Out of the raft group first, so that it never votes as a worker.
    if node.raft_id != 0 {
        let removed = m.member.remove_from_raft(node.raft_id).await;
        if let Err(e) = removed {
            return Err(ApiError::Unavailable(format!(
                "cannot remove {} from the raft group: {e}",
                node.name
            )));
        }
        // A leader that removed itself steps down; wait for the next one.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while m.raft.leader().is_none_or(|l| l == node.raft_id)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    m.member
        .propose(Command::SetNodeRole {
            node_id: node.id.clone(),
            role: NodeRole::Worker,
        })
        .await??;
    one_node(&m, &node.id).map(Json)
}

pub(super) async fn remove_node(
    State(ctx): Ctx,
    Path(id): Path<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<Removed> {
    let m = member(&ctx).await?;
    let node = read(&m, |s| s.node(&id).cloned()).ok_or_else(|| node_not_found(&id))?;
    if node.role == NodeRole::Manager {
        return Err(ApiError::Conflict(format!(
            "node {} is a manager: demote it before removing it",
            node.name
        )));
    }
    if node.state == flotilla_types::NodeState::Ready && !q.force {
        return Err(ApiError::Conflict(format!(
            "node {} is up: stop it (or 'flotilla leave' on it) first, or use --force",
            node.name
        )));
    }
    m.member
        .propose(Command::RemoveNode {
            node_id: node.id.clone(),
            at: now_ms(),
        })
        .await??;
    Ok(Json(Removed {
        id: node.id,
        name: node.name,
    }))
}
