//! Services: list, inspect, create, scale, update, roll back, remove, and
//! their tasks.

use super::*;

/// The most replicas one service may ask for: far beyond what one cluster
/// runs, low enough that a typo cannot make the store explode.
pub const MAX_REPLICAS: u64 = 100_000;

pub(super) async fn services(State(ctx): Ctx) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    Ok(answer(warning, read(&m, views::service_views)))
}

pub(super) fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("service {name} not found"))
}

pub(super) async fn service(
    State(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    read(&m, |s| {
        s.service(&name).map(|svc| views::service_view(s, svc))
    })
    .map(|v| answer(warning, v))
    .ok_or_else(|| not_found(&name))
}

pub(super) fn check_replicas(replicas: u64) -> Result<(), ApiError> {
    if replicas > MAX_REPLICAS {
        return Err(ApiError::BadRequest(format!(
            "invalid replicas {replicas}: at most {MAX_REPLICAS} are allowed"
        )));
    }
    Ok(())
}

/// Checks what the types alone cannot.
pub fn validate_spec(spec: &ServiceSpec) -> Result<(), ApiError> {
    validate_name(&spec.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let ServiceMode::Replicated { replicas } = spec.mode {
        check_replicas(replicas)?;
    }
    let bad = |m: String| Err(ApiError::BadRequest(m));
    match (spec.task.driver, spec.task.command.first()) {
        (Driver::Process, None) => return bad("a service needs a command".into()),
        (_, Some(c)) if c.is_empty() => return bad("the command is empty".into()),
        _ => {}
    }
    match (spec.task.driver, spec.task.image.as_deref()) {
        (Driver::Docker, None | Some("")) => return bad("a docker service needs an image".into()),
        (Driver::Process, Some(_)) => {
            return bad("an image needs the docker driver (--driver docker)".into())
        }
        _ => {}
    }
    if spec.task.driver == Driver::Process && spec.task.init {
        return bad("--init applies to docker tasks only".into());
    }
    if spec.task.driver == Driver::Process && !spec.task.mounts.is_empty() {
        return bad("mounts apply to docker tasks only".into());
    }
    for m in &spec.task.mounts {
        if !m.target.starts_with('/') {
            return bad(format!(
                "mount target {:?} must be an absolute path",
                m.target
            ));
        }
        if m.kind == MountKind::Bind && !m.source.starts_with('/') {
            return bad(format!(
                "bind mount source {:?} must be an absolute path",
                m.source
            ));
        }
    }
    if let Some(h) = &spec.task.health {
        if h.interval_ms == 0 || h.timeout_ms == 0 {
            return bad("health check interval and timeout must be more than 0".into());
        }
        match &h.test {
            HealthTest::Http { port: 0, .. } | HealthTest::Tcp { port: 0 } => {
                return bad("health check port must be 1-65535".into())
            }
            HealthTest::Http { path, .. } if !path.starts_with('/') => {
                return bad(format!("health check path {path:?} must start with /"))
            }
            HealthTest::Exec { argv } if argv.is_empty() => {
                return bad("health check command is empty".into())
            }
            HealthTest::Shell { command } if command.trim().is_empty() => {
                return bad("health check command is empty".into())
            }
            _ => {}
        }
    }
    for (what, u) in [("update", &spec.update), ("rollback", &spec.rollback)] {
        if !(0.0..=1.0).contains(&u.max_failure_ratio.0) {
            return bad(format!(
                "{what} max failure ratio must be between 0 and 1, not {}",
                u.max_failure_ratio.0
            ));
        }
    }
    for key in spec.task.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "invalid environment variable name {key:?}"
            )));
        }
    }
    if spec.task.command.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::BadRequest(
            "the command contains a NUL byte".into(),
        ));
    }
    Ok(())
}

pub(super) async fn create_service(
    State(ctx): Ctx,
    req: Result<Json<ServiceSpec>, JsonRejection>,
) -> ApiResult<ServiceView> {
    let spec = body(req)?;
    validate_spec(&spec)?;
    let m = member(&ctx).await?;
    let id = flotilla_types::new_id(rand::random());
    let result = m
        .member
        .propose(Command::CreateService {
            id: id.clone(),
            spec,
            at: now_ms(),
        })
        .await?;
    result?;
    read(&m, |s| {
        s.services.get(&id).map(|svc| views::service_view(s, svc))
    })
    .map(Json)
    .ok_or_else(|| ApiError::Internal("the service vanished right after it was created".into()))
}

pub(super) async fn scale(
    State(ctx): Ctx,
    Path(name): Path<String>,
    req: Result<Json<ScaleRequest>, JsonRejection>,
) -> ApiResult<ServiceView> {
    let req = body(req)?;
    check_replicas(req.replicas)?;
    let m = member(&ctx).await?;
    modify_service(&m, &name, |spec| match spec.mode {
        ServiceMode::Replicated { .. } => {
            spec.mode = ServiceMode::Replicated {
                replicas: req.replicas,
            };
            Ok(())
        }
        ServiceMode::Global => Err(ApiError::BadRequest(format!(
            "service {name} is global: scale applies to replicated services only"
        ))),
    })
    .await
}

/// Read-modify-write of a service's spec, with the version as a guard:
/// retried if a concurrent change slipped in between.
pub(super) async fn modify_service(
    m: &Mgr,
    name: &str,
    change: impl Fn(&mut ServiceSpec) -> Result<(), ApiError>,
) -> ApiResult<ServiceView> {
    for _ in 0..5 {
        let current = read(m, |s| s.service(name).cloned()).ok_or_else(|| not_found(name))?;
        let mut spec = current.spec.clone();
        change(&mut spec)?;
        validate_spec(&spec)?;
        let result = m
            .member
            .propose(Command::UpdateService {
                id: current.id.clone(),
                spec,
                expected_version: Some(current.version),
                at: now_ms(),
            })
            .await?;
        match result {
            Ok(_) => return service_answer(m, &current.id, name),
            Err(StoreError::VersionConflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict(format!(
        "service {name} kept changing while it was being updated; try again"
    )))
}

pub(super) fn service_answer(m: &Mgr, id: &str, name: &str) -> ApiResult<ServiceView> {
    read(m, |s| {
        s.services.get(id).map(|svc| views::service_view(s, svc))
    })
    .map(Json)
    .ok_or_else(|| not_found(name))
}

pub(super) async fn update_service(
    State(ctx): Ctx,
    Path(name): Path<String>,
    req: Result<Json<flotilla_api::model::ServiceUpdate>, JsonRejection>,
) -> ApiResult<ServiceView> {
    let req = body(req)?;
    if let Some(r) = req.replicas {
        check_replicas(r)?;
    }
    let m = member(&ctx).await?;
    modify_service(&m, &name, |spec| {
        if let Some(r) = req.replicas {
            match spec.mode {
                ServiceMode::Replicated { .. } => {
                    spec.mode = ServiceMode::Replicated { replicas: r }
                }
                ServiceMode::Global => {
                    return Err(ApiError::BadRequest(format!(
                        "service {name} is global: --replicas applies to replicated services only"
                    )))
                }
            }
        }
        for k in &req.env_rm {
            spec.task.env.remove(k);
        }
        spec.task.env.extend(req.env_add.clone());
        for k in &req.labels_rm {
            spec.labels.remove(k);
        }
        spec.labels.extend(req.labels_add.clone());
        if let Some(c) = &req.command {
            spec.task.command = c.clone();
        }
        if let Some(g) = req.stop_grace_period_ms {
            spec.task.stop_grace_period_ms = g;
        }
        if req.force {
            spec.task.force_update += 1;
        }
        Ok(())
    })
    .await
}

pub(super) async fn replace_service(
    State(ctx): Ctx,
    Path(name): Path<String>,
    req: Result<Json<flotilla_api::model::ServiceReplace>, JsonRejection>,
) -> ApiResult<ServiceView> {
    let req = body(req)?;
    validate_spec(&req.spec)?;
    let m = member(&ctx).await?;
    let id =
        read(&m, |s| s.service(&name).map(|svc| svc.id.clone())).ok_or_else(|| not_found(&name))?;
    m.member
        .propose(Command::UpdateService {
            id: id.clone(),
            spec: req.spec.clone(),
            expected_version: req.version,
            at: now_ms(),
        })
        .await??;
    service_answer(&m, &id, &req.spec.name)
}

pub(super) async fn rollback_service(
    State(ctx): Ctx,
    Path(name): Path<String>,
) -> ApiResult<ServiceView> {
    let m = member(&ctx).await?;
    let id =
        read(&m, |s| s.service(&name).map(|svc| svc.id.clone())).ok_or_else(|| not_found(&name))?;
    m.member
        .propose(Command::RollbackService {
            id: id.clone(),
            at: now_ms(),
            reason: None,
        })
        .await??;
    service_answer(&m, &id, &name)
}

pub(super) async fn remove_service(
    State(ctx): Ctx,
    Path(name): Path<String>,
) -> ApiResult<Removed> {
    let m = member(&ctx).await?;
    let svc = read(&m, |s| s.service(&name).cloned()).ok_or_else(|| not_found(&name))?;
    m.member
        .propose(Command::RemoveService {
            id: svc.id.clone(),
            at: now_ms(),
        })
        .await??;
    Ok(Json(Removed {
        id: svc.id,
        name: svc.spec.name,
    }))
}

pub(super) async fn tasks(State(ctx): Ctx, Path(name): Path<String>) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    read(&m, |s| {
        s.service(&name).map(|svc| views::task_views(s, svc))
    })
    .map(|v| answer(warning, v))
    .ok_or_else(|| not_found(&name))
}
