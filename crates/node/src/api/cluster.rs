//! The cluster as a whole: info, init, join, leave, join tokens, client
//! certificates and the leader check.

use super::*;

pub(super) async fn leader_check(State(ctx): Ctx) -> Response {
    let Ok(m) = member(&ctx).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(flotilla_api::model::LeaderCheck {
                leader: false,
                leader_addr: None,
            }),
        )
            .into_response();
    };
    use crate::session::LeaderFinder;
    let leader = m.raft.is_leader();
    let body = flotilla_api::model::LeaderCheck {
        leader,
        leader_addr: m.member.leader_addr(),
    };
    let status = if leader {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub(super) async fn client_cert(
    State(ctx): Ctx,
    req: Result<Json<flotilla_api::model::ClientCertRequest>, JsonRejection>,
) -> ApiResult<flotilla_api::model::ClientCert> {
    let req = body(req)?;
    validate_name(&req.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let m = member(&ctx).await?;
    let cluster = read(&m, |s| s.cluster.clone())
        .ok_or_else(|| ApiError::Conflict("the cluster is not initialized".into()))?;
    let ca =
        crate::cluster::cluster_ca(&cluster, &m.member.keyring).map_err(ApiError::Unavailable)?;
    let key = flotilla_pki::new_key_and_csr().map_err(|e| ApiError::Internal(e.to_string()))?;
    let cert_pem = ca
        .sign_node(
            &key.csr_pem,
            &req.name,
            flotilla_pki::Role::Client,
            crate::CERT_VALIDITY,
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let managers = read(&m, |s| {
        s.nodes
            .values()
            .filter(|n| n.role == NodeRole::Manager && !n.api_addr.is_empty())
            .map(|n| n.api_addr.clone())
            .collect()
    });
    Ok(Json(flotilla_api::model::ClientCert {
        ca_pem: cluster.ca_cert_pem,
        cert_pem,
        key_pem: key.key_pem,
        managers,
    }))
}

/// What `info` says of the node itself.
pub(super) fn facts(ctx: &NodeCtx, node_id: Option<String>, is_leader: bool) -> LocalFacts {
    LocalFacts {
        node_id,
        node_name: ctx.name.clone(),
        is_leader,
        version: VERSION.to_string(),
        data_dir: ctx.data_dir.display().to_string(),
    }
}

pub(super) async fn info(State(ctx): Ctx) -> ApiResult<Info> {
    refuse_restarting(&ctx)?;
    let facts = |node_id: Option<String>, is_leader| facts(&ctx, node_id, is_leader);
    match ctx.member().await {
        None => {
            let mut info = views::info(
                &Store::default(),
                &facts(None, false),
                &ManagerStatus::default(),
            );
            if ctx.is_locked() {
                info.locked = true;
                info.autolock = true;
                info.warning = Some(crate::lifecycle::LOCKED.to_string());
            }
            Ok(Json(info))
        }
        Some(m) if m.raft.is_none() => {
            let mut info = views::info(
                &Store::default(),
                &facts(Some(m.identity.node_id.clone()), false),
                &ManagerStatus::default(),
            );
            info.cluster_id = Some(m.identity.cluster_id.clone());
            info.role = Some(NodeRole::Worker);
            info.warning = None;
            Ok(Json(info))
        }
        Some(_) => {
            let m = member(&ctx).await?;
            let local = facts(Some(m.member.identity.node_id.clone()), m.raft.is_leader());
            let status = managers(&m);
            let mut info = read(&m, |s| views::info(s, &local, &status));
            // A member that met a raft entry it cannot read says so first.
            if let Some(stopped) = m.raft.stopped() {
                info.warning = Some(match info.warning {
                    Some(w) => format!("{stopped}; {w}"),
                    None => stopped,
                });
            }
            Ok(Json(info))
        }
    }
}

pub(super) async fn init(
    State(ctx): Ctx,
    req: Result<Json<InitRequest>, JsonRejection>,
) -> ApiResult<InitResponse> {
    let req = body(req)?;
    if req.force_new_cluster {
        let identity = ctx.force_new_cluster().await?;
        return Ok(Json(InitResponse {
            cluster_id: identity.cluster_id,
            node_id: identity.node_id,
            unlock_key: None,
        }));
    }
    let (identity, unlock) = ctx
        .init(req.advertise_addr.as_deref(), req.autolock)
        .await?;
    Ok(Json(InitResponse {
        cluster_id: identity.cluster_id,
        node_id: identity.node_id,
        unlock_key: unlock.as_ref().map(crate::keyring::format_unlock_key),
    }))
}

pub(super) async fn join(
    State(ctx): Ctx,
    req: Result<Json<JoinRequest>, JsonRejection>,
) -> ApiResult<InitResponse> {
    let req = body(req)?;
    let identity = ctx
        .join(&req.token, &req.manager_addr, req.advertise_addr.as_deref())
        .await?;
    Ok(Json(InitResponse {
        cluster_id: identity.cluster_id,
        node_id: identity.node_id,
        unlock_key: None,
    }))
}

pub(super) async fn unlock(
    State(ctx): Ctx,
    req: Result<Json<flotilla_api::model::UnlockRequest>, JsonRejection>,
) -> ApiResult<()> {
    let req = body(req)?;
    ctx.unlock(&req.key).await?;
    Ok(Json(()))
}

/// `GET /v1/backup`: the state as this manager has applied it, at its
/// index (linearized first where a quorum answers).
pub(super) async fn backup(State(ctx): Ctx) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    let state = read(&m, |s| s.clone());
    let bytes = flotilla_backup::write(&state, crate::now_ms(), None)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let backup = String::from_utf8(bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(answer(warning, flotilla_api::model::BackupView { backup }))
}

/// `PUT /v1/backup/schedule`.
pub(super) async fn backup_schedule(
    State(ctx): Ctx,
    req: Result<Json<flotilla_api::model::BackupScheduleRequest>, JsonRejection>,
) -> ApiResult<flotilla_api::model::BackupScheduleView> {
    let req = body(req)?;
    let m = member(&ctx).await?;
    let schedule = crate::control::cluster::backup_schedule(
        req.every.as_deref(),
        req.keep,
        req.dir.as_deref(),
    )?;
    m.control().set_backup_schedule(schedule.clone()).await?;
    Ok(Json(flotilla_api::model::BackupScheduleView {
        every_ms: schedule.as_ref().map(|s| s.every_ms),
        keep: schedule.as_ref().map_or(0, |s| s.keep),
        dir: schedule.map(|s| s.dir),
    }))
}

/// `POST /v1/restore`: on a fresh node only (see [`crate::restore`]).
pub(super) async fn restore(
    State(ctx): Ctx,
    req: Result<Json<flotilla_api::model::RestoreRequest>, JsonRejection>,
) -> ApiResult<flotilla_api::model::RestoreResponse> {
    let req = body(req)?;
    let backup = flotilla_backup::read(req.backup.as_bytes(), None)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let restored = ctx
        .restore(
            backup,
            req.unlock_key.as_deref(),
            req.advertise_addr.as_deref(),
        )
        .await?;
    Ok(Json(flotilla_api::model::RestoreResponse {
        cluster_id: restored.identity.cluster_id,
        node_id: restored.identity.node_id,
        index: restored.index,
        services: restored.services,
        secrets: restored.secrets,
    }))
}

pub(super) async fn unlock_key(
    State(ctx): Ctx,
    Query(q): Query<TokenQuery>,
) -> ApiResult<flotilla_api::model::UnlockKeyView> {
    let m = member(&ctx).await?;
    let view = m.control().unlock_key(q.rotate).await?;
    Ok(Json(flotilla_api::model::UnlockKeyView {
        autolock: view.autolock,
        unlock_key: view.unlock_key,
    }))
}

pub(super) async fn autolock(
    State(ctx): Ctx,
    req: Result<Json<flotilla_api::model::AutolockRequest>, JsonRejection>,
) -> ApiResult<flotilla_api::model::UnlockKeyView> {
    let req = body(req)?;
    let m = member(&ctx).await?;
    let view = m.control().set_autolock(req.enabled).await?;
    Ok(Json(flotilla_api::model::UnlockKeyView {
        autolock: view.autolock,
        unlock_key: view.unlock_key,
    }))
}

pub(super) async fn leave(State(ctx): Ctx, Query(q): Query<ForceQuery>) -> ApiResult<()> {
    ctx.leave(q.force).await?;
    Ok(Json(()))
}

pub(super) async fn join_token(
    State(ctx): Ctx,
    Path(role): Path<String>,
    Query(q): Query<TokenQuery>,
) -> ApiResult<JoinTokenView> {
    let role = match role.as_str() {
        "worker" => NodeRole::Worker,
        "manager" => NodeRole::Manager,
        other => {
            return Err(ApiError::BadRequest(format!(
                "invalid role {other:?}: expected worker or manager"
            )))
        }
    };
    let m = member(&ctx).await?;
    let control = m.control();
    if q.rotate {
        control.rotate_join_secret(role).await?;
    }
    let token = control.join_token_of(role)?;
    let managers = read(&m, crate::dispatcher::manager_addrs);
    Ok(Json(JoinTokenView {
        role,
        token: token.to_string(),
        managers,
    }))
}
