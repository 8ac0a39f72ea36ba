//! Services: list, inspect, create, scale, update, roll back, remove, and
//! their tasks.

use super::*;

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

/// The spec's own rules ([`ServiceSpec::validate`]), as a bad request with
/// the same text: checked on every write of a spec.
pub(super) fn validate(spec: &ServiceSpec) -> Result<(), ApiError> {
    spec.validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub(super) async fn create_service(
    State(ctx): Ctx,
    req: Result<Json<ServiceSpec>, JsonRejection>,
) -> ApiResult<ServiceView> {
    let spec = body(req)?;
    validate(&spec)?;
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
        validate(&spec)?;
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
    validate(&req.spec)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_that_rolls_back_is_refused() {
        let mut spec = ServiceSpec {
            name: "web".into(),
            task: flotilla_types::TaskTemplate {
                command: vec!["true".into()],
                ..Default::default()
            },
            ..ServiceSpec::default()
        };
        spec.rollback.failure_action = flotilla_types::FailureAction::Rollback;
        match validate(&spec) {
            Err(ApiError::BadRequest(m)) => assert_eq!(
                m,
                "rollback failure action must be pause or continue, not rollback"
            ),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }
}
