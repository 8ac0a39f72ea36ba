//! The client API over HTTP/JSON. Status codes are chosen in one place,
//! [`ApiError::status`].

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use flotilla_api::model::{
    ErrorBody, Info, InitRequest, InitResponse, JoinRequest, JoinTokenView, NodeUpdate, NodeView,
    Removed, ScaleRequest, ServiceView,
};
use flotilla_raft::RaftError;
use flotilla_store::{Command, State as Store, StoreError};
use flotilla_types::{
    validate_name, Driver, HealthTest, MountKind, NodeRole, ServiceMode, ServiceSpec,
};

use super::views::{self, LocalFacts, ManagerStatus};
use super::{now_ms, InitError, Member, NodeCtx, VERSION};

/// Every way a request fails, mapped to one status each.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ServiceNotFound(_) | StoreError::NodeNotFound(_) => {
                ApiError::NotFound(e.to_string())
            }
            StoreError::AlreadyInitialized
            | StoreError::NotInitialized
            | StoreError::ServiceExists(_)
            | StoreError::NodeExists(_)
            | StoreError::VersionConflict { .. }
            | StoreError::NothingToRollBack(_) => ApiError::Conflict(e.to_string()),
        }
    }
}

impl From<RaftError> for ApiError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NotLeader { .. } | RaftError::Timeout(_) => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<super::ProposeFailure> for ApiError {
    fn from(e: super::ProposeFailure) -> Self {
        match e {
            super::ProposeFailure::Worker => ApiError::Conflict(e.to_string()),
            super::ProposeFailure::Raft(r) => r.into(),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl From<InitError> for ApiError {
    fn from(e: InitError) -> Self {
        match e {
            InitError::AlreadyInCluster => ApiError::Conflict(e.to_string()),
            InitError::BadToken(_) => ApiError::BadRequest(e.to_string()),
            InitError::Refused(_) => ApiError::Forbidden(e.to_string()),
            InitError::Failed(_) => ApiError::Internal(e.to_string()),
        }
    }
}

type Ctx = State<Arc<NodeCtx>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// The API's routes.
pub fn router(ctx: Arc<NodeCtx>) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/leader-check", get(leader_check))
        .route("/v1/client-cert", post(client_cert))
        .route("/v1/init", post(init))
        .route("/v1/join", post(join))
        .route("/v1/leave", post(leave))
        .route("/v1/join-token/{role}", get(join_token))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}", get(node).delete(remove_node))
        .route("/v1/nodes/{id}/update", post(update_node))
        .route("/v1/nodes/{id}/promote", post(promote_node))
        .route("/v1/nodes/{id}/demote", post(demote_node))
        .route("/v1/services", get(services).post(create_service))
        .route(
            "/v1/services/{name}",
            get(service).put(replace_service).delete(remove_service),
        )
        .route("/v1/services/{name}/scale", post(scale))
        .route("/v1/services/{name}/update", post(update_service))
        .route("/v1/services/{name}/rollback", post(rollback_service))
        .route("/v1/services/{name}/tasks", get(tasks))
        .route("/v1/services/{name}/logs", get(logs))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .with_state(ctx)
}

/// The API for remote CLIs, on the client API port: the same routes, but
/// every call except the leader check needs a certificate of the cluster
/// CA, a client's or a manager's (a worker's is refused).
pub fn remote_router(ctx: Arc<NodeCtx>) -> Router {
    router(ctx).layer(axum::middleware::from_fn(remote_auth))
}

async fn remote_auth(
    peer: Option<axum::Extension<flotilla_transport::Peer>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path() == "/v1/leader-check" {
        return next.run(request).await;
    }
    let role = peer.and_then(|axum::Extension(p)| p.0.map(|id| id.role));
    match role {
        Some(flotilla_pki::Role::Client) | Some(flotilla_pki::Role::Manager) => {
            next.run(request).await
        }
        Some(flotilla_pki::Role::Worker) => {
            ApiError::Forbidden("a worker's certificate cannot use the client API".into())
                .into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            Json(ErrorBody {
                error:
                    "a client certificate of this cluster is required (see 'flotilla client-cert')"
                        .into(),
            }),
        )
            .into_response(),
    }
}

async fn leader_check(State(ctx): Ctx) -> Response {
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
    use super::session::LeaderFinder;
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

async fn client_cert(
    State(ctx): Ctx,
    req: Result<Json<flotilla_api::model::ClientCertRequest>, JsonRejection>,
) -> ApiResult<flotilla_api::model::ClientCert> {
    let req = body(req)?;
    validate_name(&req.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let m = member(&ctx).await?;
    let cluster = read(&m, |s| s.cluster.clone())
        .ok_or_else(|| ApiError::Conflict("the cluster is not initialized".into()))?;
    let ca = super::cluster::cluster_ca(&cluster).map_err(|e| ApiError::Internal(e.to_string()))?;
    let key = flotilla_pki::new_key_and_csr().map_err(|e| ApiError::Internal(e.to_string()))?;
    let cert_pem = ca
        .sign_node(
            &key.csr_pem,
            &req.name,
            flotilla_pki::Role::Client,
            super::CERT_VALIDITY,
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

fn body<T>(r: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    r.map(|Json(v)| v)
        .map_err(|e| ApiError::BadRequest(format!("invalid request: {}", e.body_text())))
}

/// A manager's view of the cluster, for handlers that read or change it.
#[derive(Clone)]
struct Mgr {
    member: Arc<Member>,
    raft: Arc<flotilla_raft::RaftNode>,
    view: flotilla_manager::StoreView,
}

async fn member(ctx: &NodeCtx) -> Result<Mgr, ApiError> {
    let m = ctx.member().await.ok_or_else(|| {
        ApiError::Conflict(
            "this node is not in a cluster: run 'flotilla init' or 'flotilla join' first".into(),
        )
    })?;
    match (m.raft.clone(), m.view()) {
        (Some(raft), Some(view)) => Ok(Mgr {
            member: m,
            raft,
            view,
        }),
        _ => Err(ApiError::Conflict(
            "this node is a worker: run this command on a manager".into(),
        )),
    }
}

fn managers(member: &Mgr) -> ManagerStatus {
    let leader = member.raft.leader();
    let me = member.member.identity.raft_id;
    // Liveness comes from agent heartbeats, which the leader records in the
    // store for every node (managers included); this node and the leader
    // it hears from are reachable by definition.
    let mut reachable: Vec<u64> = vec![me];
    reachable.extend(leader);
    let state = member.view.read();
    reachable.extend(
        state
            .nodes
            .values()
            .filter(|n| {
                n.role == flotilla_types::NodeRole::Manager
                    && n.state == flotilla_types::NodeState::Ready
            })
            .map(|n| n.raft_id),
    );
    ManagerStatus {
        leader_raft_id: leader,
        reachable,
    }
}

/// Makes the next read linearizable: the leader confirms it still leads
/// (read index); a follower asks the leader for the read index and waits
/// until it has applied that far. When that fails (no quorum, no leader),
/// the read is served anyway with a warning that it may be stale.
async fn linearize(m: &Mgr) -> Option<String> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(1);
    let index = if m.raft.is_leader() {
        m.raft.read_index(WAIT).await.map_err(|e| e.to_string())
    } else {
        use super::session::LeaderFinder;
        match m.member.leader_addr() {
            None => Err("no leader is known".to_string()),
            Some(addr) => m
                .member
                .client
                .post::<_, u64>(
                    flotilla_transport::Target::Manager,
                    &addr,
                    "/cluster/v1/read-index",
                    &(),
                    WAIT,
                )
                .await
                .map_err(|e| e.to_string()),
        }
    };
    match index {
        Ok(i) if m.raft.wait_applied(i, WAIT).await => None,
        Ok(_) => Some("this manager is behind the leader: the answer may be stale".into()),
        Err(e) => Some(format!(
            "no quorum or no leader ({e}): the answer may be stale"
        )),
    }
}

/// A JSON answer, with the stale-read warning if there is one.
fn answer<T: serde::Serialize>(warning: Option<String>, body: T) -> Response {
    let mut response = Json(body).into_response();
    if let Some(w) = warning {
        if let Ok(v) = axum::http::HeaderValue::from_str(&w) {
            response
                .headers_mut()
                .insert(flotilla_api::client::WARNING_HEADER, v);
        }
    }
    response
}

fn read<T>(member: &Mgr, f: impl FnOnce(&Store) -> T) -> T {
    let state = member.view.read();
    f(&state)
}

async fn info(State(ctx): Ctx) -> ApiResult<Info> {
    let facts = |node_id: Option<String>, is_leader| LocalFacts {
        node_id,
        node_name: ctx.name.clone(),
        is_leader,
        version: VERSION.to_string(),
        data_dir: ctx.data_dir.display().to_string(),
    };
    match ctx.member().await {
        None => Ok(Json(views::info(
            &Store::default(),
            &facts(None, false),
            &ManagerStatus::default(),
        ))),
        Some(m) if m.raft.is_none() => {
            let mut info = views::info(
                &Store::default(),
                &facts(Some(m.identity.node_id.clone()), false),
                &ManagerStatus::default(),
            );
            info.cluster_id = Some(m.identity.cluster_id.clone());
            info.role = Some("worker".into());
            info.warning = None;
            Ok(Json(info))
        }
        Some(_) => {
            let m = member(&ctx).await?;
            let local = facts(Some(m.member.identity.node_id.clone()), m.raft.is_leader());
            let status = managers(&m);
            Ok(Json(read(&m, |s| views::info(s, &local, &status))))
        }
    }
}

async fn init(
    State(ctx): Ctx,
    req: Result<Json<InitRequest>, JsonRejection>,
) -> ApiResult<InitResponse> {
    let req = body(req)?;
    if req.force_new_cluster {
        let identity = ctx.force_new_cluster().await?;
        return Ok(Json(InitResponse {
            cluster_id: identity.cluster_id,
            node_id: identity.node_id,
        }));
    }
    let identity = ctx.init(req.advertise_addr.as_deref()).await?;
    Ok(Json(InitResponse {
        cluster_id: identity.cluster_id,
        node_id: identity.node_id,
    }))
}

async fn join(
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
    }))
}

async fn leave(State(ctx): Ctx, Query(q): Query<ForceQuery>) -> ApiResult<()> {
    ctx.leave(q.force).await?;
    Ok(Json(()))
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    #[serde(default)]
    rotate: bool,
}

async fn join_token(
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
    if q.rotate {
        let secret = flotilla_pki::token::new_secret(rand::random());
        m.member
            .propose(Command::RotateJoinSecret { role, secret })
            .await??;
    }
    let cluster = read(&m, |s| s.cluster.clone())
        .ok_or_else(|| ApiError::Conflict("the cluster is not initialized".into()))?;
    let ca_fingerprint = flotilla_pki::pem_fingerprint(&cluster.ca_cert_pem)
        .map_err(|e| ApiError::Internal(format!("the cluster CA is unreadable: {e}")))?;
    let secret = match role {
        NodeRole::Worker => cluster.worker_secret,
        NodeRole::Manager => cluster.manager_secret,
    };
    let token = flotilla_pki::JoinToken {
        ca_fingerprint,
        secret,
    };
    let managers = read(&m, super::dispatcher::manager_addrs);
    Ok(Json(JoinTokenView {
        role: role.as_str().to_string(),
        token: token.to_string(),
        managers,
    }))
}

async fn nodes(State(ctx): Ctx) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    let status = managers(&m);
    let id = m.member.identity.node_id.clone();
    Ok(answer(
        warning,
        read(&m, |s| views::node_views(s, Some(&id), &status)),
    ))
}

fn node_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("node {id} not found"))
}

fn one_node(m: &Mgr, id: &str) -> Result<NodeView, ApiError> {
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

async fn node(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult<NodeView> {
    let m = member(&ctx).await?;
    one_node(&m, &id).map(Json)
}

async fn update_node(
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

async fn promote_node(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult<NodeView> {
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

async fn demote_node(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult<NodeView> {
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

#[derive(Debug, Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

async fn remove_node(
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

async fn services(State(ctx): Ctx) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    Ok(answer(warning, read(&m, views::service_views)))
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("service {name} not found"))
}

async fn service(State(ctx): Ctx, Path(name): Path<String>) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    read(&m, |s| {
        s.service(&name).map(|svc| views::service_view(s, svc))
    })
    .map(|v| answer(warning, v))
    .ok_or_else(|| not_found(&name))
}

/// The most replicas one service may ask for: far beyond what one cluster
/// runs, low enough that a typo cannot make the store explode.
pub const MAX_REPLICAS: u64 = 100_000;

fn check_replicas(replicas: u64) -> Result<(), ApiError> {
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

async fn create_service(
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

async fn scale(
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
async fn modify_service(
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

fn service_answer(m: &Mgr, id: &str, name: &str) -> ApiResult<ServiceView> {
    read(m, |s| {
        s.services.get(id).map(|svc| views::service_view(s, svc))
    })
    .map(Json)
    .ok_or_else(|| not_found(name))
}

async fn update_service(
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

async fn replace_service(
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

async fn rollback_service(State(ctx): Ctx, Path(name): Path<String>) -> ApiResult<ServiceView> {
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

async fn remove_service(State(ctx): Ctx, Path(name): Path<String>) -> ApiResult<Removed> {
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

async fn tasks(State(ctx): Ctx, Path(name): Path<String>) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let warning = linearize(&m).await;
    read(&m, |s| {
        s.service(&name).map(|svc| views::task_views(s, svc))
    })
    .map(|v| answer(warning, v))
    .ok_or_else(|| not_found(&name))
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<u64>,
}

/// Last `n` lines of `bytes`.
fn tail_lines(bytes: &[u8], n: u64) -> &[u8] {
    let mut count = 0;
    let end = if bytes.ends_with(b"\n") {
        bytes.len() - 1
    } else {
        bytes.len()
    };
    for i in (0..end).rev() {
        if bytes[i] == b'\n' {
            count += 1;
            if count == n {
                return &bytes[i + 1..];
            }
        }
    }
    if n == 0 {
        return &[];
    }
    bytes
}

struct LogSource {
    prefix: String,
    path: PathBuf,
    offset: u64,
}

fn prefix_lines(prefix: &str, chunk: &[u8], partial: &mut Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    partial.extend_from_slice(chunk);
    while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&partial[..=pos]);
        partial.drain(..=pos);
    }
    out
}

async fn logs(
    State(ctx): Ctx,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let service_id =
        read(&m, |s| s.service(&name).map(|svc| svc.id.clone())).ok_or_else(|| not_found(&name))?;
    let agent_dir = ctx.agent_dir();
    let sources = {
        let m = m.clone();
        let service_id = service_id.clone();
        let agent_dir = agent_dir.clone();
        move || -> Vec<LogSource> {
            read(&m, |s| {
                let mut tasks: Vec<_> = s.tasks_of(&service_id).collect();
                tasks.sort_by_key(|t| (t.created_index, t.id.clone()));
                tasks
                    .into_iter()
                    .map(|t| {
                        let node = t
                            .node_id
                            .as_ref()
                            .and_then(|id| s.nodes.get(id))
                            .map(|n| n.name.clone())
                            .unwrap_or_default();
                        let short: String = t.id.chars().take(12).collect();
                        let slot = if t.slot > 0 {
                            t.slot.to_string()
                        } else {
                            t.node_id.clone().unwrap_or_default()
                        };
                        LogSource {
                            prefix: format!("{}.{}.{}@{} | ", t.service_name, slot, short, node),
                            path: flotilla_agent::task_log_path(&agent_dir, &t.id),
                            offset: 0,
                        }
                    })
                    .collect()
            })
        }
    };
    let mut initial = Vec::new();
    let mut tracked: BTreeMap<PathBuf, (LogSource, Vec<u8>)> = BTreeMap::new();
    for mut src in sources() {
        let bytes = std::fs::read(&src.path).unwrap_or_default();
        src.offset = bytes.len() as u64;
        let shown = match q.tail {
            Some(n) => tail_lines(&bytes, n),
            None => &bytes[..],
        };
        let mut partial = Vec::new();
        initial.extend(prefix_lines(&src.prefix, shown, &mut partial));
        if !partial.is_empty() {
            initial.extend_from_slice(src.prefix.as_bytes());
            initial.extend_from_slice(&partial);
            initial.push(b'\n');
        }
        tracked.insert(src.path.clone(), (src, Vec::new()));
    }
    if !q.follow {
        return Ok(Body::from(initial).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    let shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        if tx.send(Ok(initial)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            for src in sources() {
                tracked.entry(src.path.clone()).or_insert((src, Vec::new()));
            }
            let mut out = Vec::new();
            for (src, partial) in tracked.values_mut() {
                let Ok(mut f) = std::fs::File::open(&src.path) else {
                    continue;
                };
                let len = f.metadata().map(|md| md.len()).unwrap_or(0);
                if len < src.offset {
                    // The log was truncated by the size cap: start over.
                    src.offset = 0;
                }
                if len == src.offset || f.seek(SeekFrom::Start(src.offset)).is_err() {
                    continue;
                }
                let mut chunk = Vec::new();
                if f.take(1 << 20).read_to_end(&mut chunk).is_ok() {
                    src.offset += chunk.len() as u64;
                    out.extend(prefix_lines(&src.prefix, &chunk, partial));
                }
            }
            if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Body::from_stream(stream).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
    }

    #[test]
    fn prefixes_whole_lines_only() {
        let mut partial = Vec::new();
        assert_eq!(prefix_lines("p | ", b"one\ntw", &mut partial), b"p | one\n");
        assert_eq!(prefix_lines("p | ", b"o\n", &mut partial), b"p | two\n");
        assert!(partial.is_empty());
    }

    #[test]
    fn statuses_are_chosen_in_one_place() {
        assert_eq!(
            ApiError::from(StoreError::ServiceNotFound("x".into())).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(StoreError::ServiceExists("x".into())).status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::from(InitError::AlreadyInCluster).status(),
            StatusCode::CONFLICT
        );
    }
}
