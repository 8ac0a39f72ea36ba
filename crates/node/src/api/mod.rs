//! The client API over HTTP/JSON, one file per resource: [`cluster`]
//! (info, init, join, leave, tokens, client certificates), [`nodes`],
//! [`services`], [`networks`], [`secrets`] (and configs) and [`logs`]. Status codes are chosen in one place,
//! [`ApiError::status`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};

pub mod cluster;
pub mod logs;
pub mod metrics;
pub mod networks;
pub mod nodes;
pub mod secrets;
pub mod services;
pub mod ui;

use cluster::*;
use logs::*;
use networks::*;
use nodes::*;
use secrets::*;
use services::*;

use flotilla_api::model::{
    ErrorBody, ForceQuery, Info, InitRequest, InitResponse, JoinRequest, JoinTokenView, NodeUpdate,
    NodeView, Removed, ScaleRequest, ServiceView, TokenQuery,
};
use flotilla_api::routes::{Method, Operation, Route, ROUTES};
use flotilla_raft::RaftError;
use flotilla_store::{State as Store, StoreError};
use flotilla_types::{validate_name, NodeRole, ServiceSpec};

use crate::control::nodes::NodeChange;
use crate::control::{self, Control, ControlError};
use crate::views::{self, LocalFacts, ManagerStatus};
use crate::{InitError, Member, NodeCtx, VERSION};

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
    /// Done elsewhere but not yet visible here (a forwarded write this
    /// manager has not applied yet): 504, as a proxy says of an upstream
    /// that did not answer in time.
    #[error("{0}")]
    NotYetVisible(String),
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
            ApiError::NotYetVisible(_) => StatusCode::GATEWAY_TIMEOUT,
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
            StoreError::ServiceNotFound(_)
            | StoreError::NodeNotFound(_)
            | StoreError::NetworkNotFound(_)
            | StoreError::SecretNotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::BadSecret { .. } | StoreError::BadSchedule(_) => {
                ApiError::BadRequest(e.to_string())
            }
            StoreError::AlreadyInitialized
            | StoreError::NotInitialized
            | StoreError::ServiceExists(_)
            | StoreError::NodeExists(_)
            | StoreError::VersionConflict { .. }
            | StoreError::PortTaken { .. }
            | StoreError::PortsMismatch { .. }
            | StoreError::NetworkExists(_)
            | StoreError::SubnetOverlaps { .. }
            | StoreError::NetworkInUse { .. }
            | StoreError::AddressMismatch { .. }
            | StoreError::SecretExists { .. }
            | StoreError::SecretInUse { .. }
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
            RaftError::FormatNotReady { .. } => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::ProposeFailure> for ApiError {
    fn from(e: crate::ProposeFailure) -> Self {
        match e {
            crate::ProposeFailure::Worker => ApiError::Conflict(e.to_string()),
            crate::ProposeFailure::Raft(r) => r.into(),
            crate::ProposeFailure::NotYetApplied { .. } => ApiError::NotYetVisible(e.to_string()),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(m) => ApiError::BadRequest(m),
            ControlError::NotFound(m) => ApiError::NotFound(m),
            ControlError::Conflict(m) => ApiError::Conflict(m),
            ControlError::Unavailable(m) => ApiError::Unavailable(m),
            ControlError::Store(e) => e.into(),
            ControlError::Write(e) => e.into(),
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

/// The API's routes: one per row of [`ROUTES`], the table the OpenAPI
/// document is generated from too.
pub fn router(ctx: Arc<NodeCtx>) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |router, route| {
            router.route(route.path, endpoint(route))
        })
        // Prometheus text, not JSON: outside the table of JSON routes.
        .route("/metrics", axum::routing::get(metrics::metrics))
        // The dashboard's page and its state: HTML, script, JSON of its own.
        .merge(ui::routes())
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .with_state(ctx)
}

/// The handler of a row, for the row's method only.
fn endpoint(route: &Route) -> MethodRouter<Arc<NodeCtx>> {
    let m = match route.method {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Delete => MethodFilter::DELETE,
    };
    match route.operation {
        Operation::Info => on(m, info),
        Operation::LeaderCheck => on(m, leader_check),
        Operation::ClientCert => on(m, client_cert),
        Operation::Init => on(m, init),
        Operation::Join => on(m, join),
        Operation::Leave => on(m, leave),
        Operation::JoinToken => on(m, join_token),
        Operation::Unlock => on(m, unlock),
        Operation::UnlockKey => on(m, unlock_key),
        Operation::Autolock => on(m, autolock),
        Operation::Backup => on(m, backup),
        Operation::BackupSchedule => on(m, backup_schedule),
        Operation::Restore => on(m, restore),
        Operation::UiToken => on(m, ui::ui_token),
        Operation::ListNodes => on(m, nodes),
        Operation::InspectNode => on(m, node),
        Operation::RemoveNode => on(m, remove_node),
        Operation::UpdateNode => on(m, update_node),
        Operation::PromoteNode => on(m, promote_node),
        Operation::DemoteNode => on(m, demote_node),
        Operation::ListServices => on(m, services),
        Operation::CreateService => on(m, create_service),
        Operation::InspectService => on(m, service),
        Operation::ReplaceService => on(m, replace_service),
        Operation::RemoveService => on(m, remove_service),
        Operation::ScaleService => on(m, scale),
        Operation::RollbackService => on(m, rollback_service),
        Operation::ListTasks => on(m, tasks),
        Operation::ServiceLogs => on(m, logs),
        Operation::ServiceEndpoints => on(m, endpoints),
        Operation::MeshStats => on(m, mesh_stats),
        Operation::ListNetworks => on(m, networks),
        Operation::CreateNetwork => on(m, create_network),
        Operation::InspectNetwork => on(m, network),
        Operation::RemoveNetwork => on(m, remove_network),
        Operation::Resolve => on(m, resolve),
        Operation::ListSecrets => on(m, secrets),
        Operation::CreateSecret => on(m, create_secret),
        Operation::InspectSecret => on(m, secret),
        Operation::RemoveSecret => on(m, remove_secret),
        Operation::UpdateSecret => on(m, update_secret),
        Operation::ListConfigs => on(m, configs),
        Operation::CreateConfig => on(m, create_config),
        Operation::InspectConfig => on(m, config),
        Operation::RemoveConfig => on(m, remove_config),
        Operation::UpdateConfig => on(m, update_config),
    }
}

/// The API for remote CLIs, on the client API port: the same routes, but
/// every call except the leader check needs a certificate of the cluster
/// CA, a client's or a manager's (a worker's is refused). The dashboard's
/// pages take a login cookie instead ([`ui`]).
pub fn remote_router(ctx: Arc<NodeCtx>) -> Router {
    router(ctx.clone()).layer(axum::middleware::from_fn_with_state(ctx, remote_auth))
}

async fn remote_auth(
    State(ctx): Ctx,
    peer: Option<axum::Extension<flotilla_transport::Peer>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if flotilla_api::routes::is_public(path) {
        return next.run(request).await;
    }
    let role = peer.and_then(|axum::Extension(p)| p.0.map(|id| id.role));
    let dashboard = path == "/ui" || path.starts_with("/ui/");
    if dashboard
        && !matches!(
            role,
            Some(flotilla_pki::Role::Client | flotilla_pki::Role::Manager)
        )
    {
        if path == "/ui/login" {
            return next.run(request).await;
        }
        return match ui::cookie_login(&ctx, request.headers()).await {
            Ok(()) => next.run(request).await,
            Err(why) if path == "/ui/state" => {
                (StatusCode::UNAUTHORIZED, Json(ErrorBody { error: why })).into_response()
            }
            Err(why) => ui::refused(StatusCode::UNAUTHORIZED, &why),
        };
    }
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
    /// `--node-timeout`: how long a node may go unheard before it is down.
    node_timeout: std::time::Duration,
}

impl Mgr {
    /// The control layer over this manager's store and write path.
    fn control(&self) -> Control {
        Control::new(
            self.view.clone(),
            self.member.clone(),
            Arc::new(flotilla_manager::SystemClock),
            self.member.keyring.clone(),
        )
    }
}

/// What a daemon about to re-execute itself answers: its member is the
/// old run's (a client waiting for the new run must not take it for it).
fn refuse_restarting(ctx: &NodeCtx) -> Result<(), ApiError> {
    if ctx.is_restarting() {
        return Err(ApiError::Unavailable(
            "the daemon is restarting; try again in a moment".into(),
        ));
    }
    Ok(())
}

async fn member(ctx: &NodeCtx) -> Result<Mgr, ApiError> {
    refuse_restarting(ctx)?;
    if ctx.is_locked() {
        return Err(ApiError::Unavailable(crate::lifecycle::LOCKED.into()));
    }
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
            node_timeout: ctx.node_timeout,
        }),
        _ => Err(ApiError::Conflict(
            "this node is a worker: run this command on a manager".into(),
        )),
    }
}

/// The managers as this one observes them now: who it heard from lately
/// ([`crate::contact`]), whether they make a quorum, and the leader if it
/// is among them (or is this manager, holding its lease).
fn managers(member: &Mgr) -> ManagerStatus {
    let me = member.member.identity.raft_id;
    let mut ages = member.member.contacts.ages();
    ages.insert(
        member.member.identity.node_id.clone(),
        std::time::Duration::ZERO,
    );
    let progress = member.raft.progress();
    let contacts: Vec<crate::contact::ManagerContact> = member
        .view
        .read()
        .nodes
        .values()
        .filter(|n| n.role == flotilla_types::NodeRole::Manager)
        .map(|n| crate::contact::ManagerContact {
            raft_id: n.raft_id,
            age: ages.get(&n.id).copied(),
        })
        .collect();
    let quorum = crate::contact::quorum_view(&progress.voters, me, &contacts);
    let leader = member.raft.leader().filter(|l| {
        if *l == me {
            member.raft.is_leader()
        } else {
            quorum.heard.contains(l)
        }
    });
    // Learners (managers being added) too, for "catching up".
    let heard_members: Vec<u64> = contacts
        .iter()
        .filter(|c| c.heard())
        .map(|c| c.raft_id)
        .collect();
    ManagerStatus {
        leader_raft_id: leader,
        behind: views::catching_up(&progress, &heard_members),
        reachable: views::reachable_managers(&progress, me, &quorum.heard),
        no_quorum: !quorum.quorum,
        heard_ms: ages
            .into_iter()
            .map(|(id, age)| (id, age.as_millis() as u64))
            .collect(),
        node_timeout: member.node_timeout,
    }
}

/// The NO QUORUM line, when this manager does not hear a quorum.
fn no_quorum_warning(m: &Mgr, status: &ManagerStatus) -> Option<String> {
    read(m, |s| views::no_quorum_warning(s, status))
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
        use crate::session::LeaderFinder;
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

/// `GET /v1/mesh/stats`: every ready node's mesh counters.
async fn mesh_stats(State(ctx): Ctx) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let local = ctx
        .mesh
        .read()
        .ok()
        .and_then(|slot| slot.as_ref().map(flotilla_mesh::Mesh::stats));
    let others = crate::meshstats::others(&m.view.read(), &m.member.identity.node_id);
    let (stats, warning) = crate::meshstats::gather(others, local, &m.member.client).await;
    Ok(answer(warning, stats))
}

fn read<T>(member: &Mgr, f: impl FnOnce(&Store) -> T) -> T {
    let state = member.view.read();
    f(&state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that has not run `init` or `join`: every handler answers
    /// without touching a cluster.
    fn ctx_without_cluster(dir: &std::path::Path) -> Arc<NodeCtx> {
        Arc::new(NodeCtx {
            data_dir: dir.to_path_buf(),
            name: "probe".into(),
            explicit_name: None,
            hostname: "probe".into(),
            cluster_addr: std::sync::RwLock::new("127.0.0.1:1".into()),
            bound: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            timings: flotilla_raft::node::RaftTimings::default(),
            log_cap_bytes: 0,
            node_timeout: Duration::from_secs(1),
            api_bound: None,
            phase: tokio::sync::Mutex::new(crate::lifecycle::Phase::Idle(Default::default())),
            keyring: Default::default(),
            counters: Default::default(),
            board: Default::default(),
            keep_tasks_on_stop: false,
            locked: Default::default(),
            restarting: Default::default(),
            self_ref: std::sync::OnceLock::new(),
            member: tokio::sync::RwLock::new(None),
            shutdown: tokio_util::sync::CancellationToken::new(),
            tracker: tokio_util::task::TaskTracker::new(),
            mesh: std::sync::RwLock::new(None),
        })
    }

    async fn call(app: &Router, method: &str, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    const METHODS: [Method; 4] = [Method::Get, Method::Post, Method::Put, Method::Delete];

    #[tokio::test]
    async fn the_router_serves_the_route_table_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = router(ctx_without_cluster(dir.path()));
        for route in ROUTES {
            let path = route
                .path
                .replace("{role}", "nobody")
                .replace("{id}", "n1")
                .replace("{name}", "web");
            let what = format!("{} {}", route.method.as_str(), route.path);
            let (status, body) = call(&app, route.method.as_str(), &path).await;
            assert!(
                !body.contains("no such API route") && status != StatusCode::METHOD_NOT_ALLOWED,
                "{what} is in the table but not served: {status} {body}"
            );
            assert!(
                status == StatusCode::OK || route.errors.contains(&status.as_u16()),
                "{what} answered {status}, which the table does not list: {body}"
            );
            for other in METHODS {
                if ROUTES
                    .iter()
                    .any(|r| r.path == route.path && r.method == other)
                {
                    continue;
                }
                let (status, _) = call(&app, other.as_str(), &path).await;
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{} {} is served but not in the table",
                    other.as_str(),
                    route.path
                );
            }
        }
        for path in ["/v1/nope", "/v1/services/web/update", "/v1/nodes/n1/x"] {
            let (status, body) = call(&app, "POST", path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(body.contains("no such API route"), "{path}: {body}");
        }
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
        // Committed but not visible here yet: not a 503 (nothing to retry
        // as a write) but a 504, "retry the read".
        let e = ControlError::Write(crate::ProposeFailure::NotYetApplied { index: 7 });
        assert_eq!(ApiError::from(e).status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
