//! Networks: list, inspect, create, remove. The rules are in
//! [`crate::control::networks`].

use flotilla_api::model::NetworkView;
use flotilla_types::NetworkSpec;

use super::*;

pub(super) async fn networks(State(ctx): Ctx) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    Ok(answer(warning, read(&m, views::network_views)))
}

fn network_not_found(name: &str) -> ApiError {
    control::networks::network_not_found(name).into()
}

pub(super) async fn network(
    State(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    read(&m, |s| s.network(&name).map(|n| views::network_view(s, n)))
        .map(|v| answer(warning, v))
        .ok_or_else(|| network_not_found(&name))
}

pub(super) async fn create_network(
    State(ctx): Ctx,
    req: Result<Json<NetworkSpec>, JsonRejection>,
) -> ApiResult<NetworkView> {
    let spec = body(req)?;
    let m = member(&ctx).await?;
    let id = m.control().create_network(spec).await?;
    read(&m, |s| {
        s.networks.get(&id).map(|n| views::network_view(s, n))
    })
    .map(Json)
    .ok_or_else(|| ApiError::Internal("the network vanished right after it was created".into()))
}

pub(super) async fn remove_network(
    State(ctx): Ctx,
    Path(name): Path<String>,
) -> ApiResult<Removed> {
    let m = member(&ctx).await?;
    let (id, name) = m.control().remove_network(&name).await?;
    Ok(Json(Removed { id, name }))
}

pub(super) async fn resolve(
    State(ctx): Ctx,
    Query(q): Query<flotilla_api::model::ResolveQuery>,
) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    let view = read(&m, |s| views::resolve_view(s, &q))?;
    Ok(answer(warning, view))
}
