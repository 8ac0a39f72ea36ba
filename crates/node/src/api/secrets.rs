//! Secrets and configs: list, inspect, create, remove. The rules (and the
//! sealing of the data) are in [`crate::control::secrets`]; no answer here
//! carries data.

use flotilla_api::model::{SecretCreate, SecretUpdate, SecretUpdated, SecretView};
use flotilla_types::{Secret, SecretKind};

use super::*;

/// A secret or config as the API shows it: never its data.
pub fn secret_view(state: &Store, secret: &Secret) -> SecretView {
    let current = secret.current();
    SecretView {
        id: secret.id.clone(),
        kind: secret.kind,
        name: secret.spec.name.clone(),
        labels: secret.spec.labels.clone(),
        created_at: secret.created_at,
        updated_at: current.map_or(secret.created_at, |v| v.created_at),
        version: current.map_or(0, |v| v.version),
        size: current.map_or(0, |v| v.size),
        services: state.services_using(&secret.id),
    }
}

async fn list(ctx: Arc<NodeCtx>, kind: SecretKind) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    let views = read(&m, |s| {
        let mut views: Vec<SecretView> = s
            .secrets
            .values()
            .filter(|x| x.kind == kind)
            .map(|x| secret_view(s, x))
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    });
    Ok(answer(warning, views))
}

async fn inspect(ctx: Arc<NodeCtx>, kind: SecretKind, name: String) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    read(&m, |s| s.secret(kind, &name).map(|x| secret_view(s, x)))
        .map(|v| answer(warning, v))
        .ok_or_else(|| control::secrets::secret_not_found(kind, &name).into())
}

async fn create(
    ctx: Arc<NodeCtx>,
    kind: SecretKind,
    req: Result<Json<SecretCreate>, JsonRejection>,
) -> ApiResult<SecretView> {
    let create = body(req)?;
    let m = member(&ctx).await?;
    let id = m
        .control()
        .create_secret(kind, create.spec, create.data, create.reuse_identical)
        .await?;
    read(&m, |s| s.secrets.get(&id).map(|x| secret_view(s, x)))
        .map(Json)
        .ok_or_else(|| {
            ApiError::Internal(format!("the {kind} vanished right after it was created"))
        })
}

async fn remove(ctx: Arc<NodeCtx>, kind: SecretKind, name: String) -> ApiResult<Removed> {
    let m = member(&ctx).await?;
    let (id, name) = m.control().remove_secret(kind, &name).await?;
    Ok(Json(Removed { id, name }))
}

pub(super) async fn secrets(State(ctx): Ctx) -> Result<Response, ApiError> {
    list(ctx, SecretKind::Secret).await
}

pub(super) async fn configs(State(ctx): Ctx) -> Result<Response, ApiError> {
    list(ctx, SecretKind::Config).await
}

pub(super) async fn secret(
    State(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    inspect(ctx, SecretKind::Secret, name).await
}

pub(super) async fn config(
    State(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    inspect(ctx, SecretKind::Config, name).await
}

pub(super) async fn create_secret(
    State(ctx): Ctx,
    req: Result<Json<SecretCreate>, JsonRejection>,
) -> ApiResult<SecretView> {
    create(ctx, SecretKind::Secret, req).await
}

pub(super) async fn create_config(
    State(ctx): Ctx,
    req: Result<Json<SecretCreate>, JsonRejection>,
) -> ApiResult<SecretView> {
    create(ctx, SecretKind::Config, req).await
}

pub(super) async fn remove_secret(State(ctx): Ctx, Path(name): Path<String>) -> ApiResult<Removed> {
    remove(ctx, SecretKind::Secret, name).await
}

pub(super) async fn remove_config(State(ctx): Ctx, Path(name): Path<String>) -> ApiResult<Removed> {
    remove(ctx, SecretKind::Config, name).await
}

async fn update(
    ctx: Arc<NodeCtx>,
    kind: SecretKind,
    name: String,
    req: Result<Json<SecretUpdate>, JsonRejection>,
) -> ApiResult<SecretUpdated> {
    let update = body(req)?;
    let m = member(&ctx).await?;
    let (id, _, rolled) = m.control().update_secret(kind, &name, update.data).await?;
    read(&m, |s| s.secrets.get(&id).map(|x| secret_view(s, x)))
        .map(|secret| Json(SecretUpdated { secret, rolled }))
        .ok_or_else(|| ApiError::Internal(format!("the {kind} vanished right after its update")))
}

pub(super) async fn update_secret(
    State(ctx): Ctx,
    Path(name): Path<String>,
    req: Result<Json<SecretUpdate>, JsonRejection>,
) -> ApiResult<SecretUpdated> {
    update(ctx, SecretKind::Secret, name, req).await
}

pub(super) async fn update_config(
    State(ctx): Ctx,
    Path(name): Path<String>,
    req: Result<Json<SecretUpdate>, JsonRejection>,
) -> ApiResult<SecretUpdated> {
    update(ctx, SecretKind::Config, name, req).await
}
