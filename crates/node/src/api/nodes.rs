//! Nodes: list, inspect, update, promote, demote, remove. The rules are
//! in [`crate::control::nodes`].

use super::*;

pub(super) async fn nodes(State(ctx): Ctx) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let status = managers(&m);
    // Without a quorum a linearized read cannot be had; say so plainly
    // rather than wait for it.
    let warning = match no_quorum_warning(&m, &status) {
        Some(w) => Some(w),
        None => linearize(&m).await,
    };
    let id = m.member.identity.node_id.clone();
    Ok(answer(
        warning,
        read(&m, |s| views::node_views(s, Some(&id), &status)),
    ))
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
    .ok_or_else(|| control::node_not_found(id).into())
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
    let change = NodeChange {
        availability: req.availability,
        name: req.name,
        labels_add: req.labels_add,
        labels_rm: req.labels_rm,
    };
    let id = m.control().update_node(&id, change).await?;
    one_node(&m, &id).map(Json)
}

pub(super) async fn promote_node(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult<NodeView> {
    let m = member(&ctx).await?;
    let id = m.control().promote_node(&id).await?;
    one_node(&m, &id).map(Json)
}

pub(super) async fn demote_node(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult<NodeView> {
    let m = member(&ctx).await?;
    let id = m.control().demote_node(&id).await?;
    one_node(&m, &id).map(Json)
}

pub(super) async fn remove_node(
    State(ctx): Ctx,
    Path(id): Path<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<Removed> {
    let m = member(&ctx).await?;
    let node = m.control().remove_node(&id, q.force).await?;
    Ok(Json(Removed {
        id: node.id,
        name: node.name,
    }))
}
