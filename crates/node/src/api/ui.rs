//! The dashboard at `/ui`: a page, its script and style (embedded in the
//! binary), and `/ui/state`, everything it shows in one JSON answer that
//! the page asks for every second. The health, the events and the login
//! tokens are decided in [`crate::dashboard`].
//!
//! On the client API port the dashboard needs what every route there
//! needs, a client certificate of the cluster, or else a login: `flotilla
//! ui-token` prints an address with a token, `/ui/login` checks it and
//! sets it as a cookie (`HttpOnly`, `Secure`, `SameSite=Strict`), and
//! every later request of the page carries it ([`cookie_login`]). Nothing
//! is served without one of the two.

use axum::http::header;
use axum::http::HeaderMap;

use flotilla_api::model::{Dashboard, TaskView, UiTokenRequest, UiTokenView};

use super::*;
use crate::dashboard::{self, MeshCache};

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// The cookie the login token is kept in.
pub const COOKIE: &str = "flotilla_ui";
/// How many events `/ui/state` carries.
const EVENTS_SHOWN: usize = 50;
/// Scripts, styles and requests from the page's own origin only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, for [`super::router`].
pub(super) fn routes() -> Router<Arc<NodeCtx>> {
    Router::new()
        .route("/ui", axum::routing::get(page))
        .route("/ui/", axum::routing::get(page))
        .route("/ui/app.js", axum::routing::get(script))
        .route("/ui/app.css", axum::routing::get(style))
        .route("/ui/state", axum::routing::get(state))
        .route("/ui/login", axum::routing::get(login))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The key login tokens are signed with, and the cluster they are for:
/// derived from the cluster's CA key, which every manager holds.
fn token_key(m: &Mgr) -> Result<(String, Vec<u8>), ApiError> {
    read(m, |s| {
        let cluster = s
            .cluster
            .as_ref()
            .ok_or_else(|| ApiError::Conflict("the cluster is not initialized".into()))?;
        let keys = m
            .member
            .keyring
            .keys(cluster)
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let key = flotilla_pki::seal::sha256_hex(keys.ca_key_pem.as_bytes());
        Ok((cluster.id.clone(), key.into_bytes()))
    })
}

fn now_s() -> u64 {
    crate::now_ms() / 1000
}

/// `POST /v1/ui-token`.
pub(super) async fn ui_token(
    State(ctx): Ctx,
    req: Result<Json<UiTokenRequest>, JsonRejection>,
) -> ApiResult<UiTokenView> {
    let req = body(req)?;
    let m = member(&ctx).await?;
    let ttl = match req.ttl_secs {
        None => dashboard::TOKEN_TTL,
        Some(0) => {
            return Err(ApiError::BadRequest(
                "a token must last at least 1 s".into(),
            ))
        }
        Some(s) if Duration::from_secs(s) > dashboard::TOKEN_TTL_MAX => {
            return Err(ApiError::BadRequest(format!(
                "a token may last at most {} days",
                dashboard::TOKEN_TTL_MAX.as_secs() / 86_400
            )))
        }
        Some(s) => Duration::from_secs(s),
    };
    let (cluster_id, key) = token_key(&m)?;
    let expires_s = now_s() + ttl.as_secs();
    let token = dashboard::make_token(&key, &cluster_id, expires_s);
    let me = m.member.identity.node_id.clone();
    let api_addr = read(&m, |s| s.nodes.get(&me).map(|n| n.api_addr.clone()))
        .filter(|a| !a.is_empty())
        .or_else(|| ctx.api_bound.map(|a| a.to_string()));
    Ok(Json(UiTokenView {
        url: api_addr.map(|a| format!("https://{a}/ui/login?token={token}")),
        token,
        expires_at: expires_s * 1000,
    }))
}

/// The login token of a request's cookie, if any.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Checks a login token on this manager: its expiry (Unix seconds) if
/// good, or why not.
async fn check_login(ctx: &NodeCtx, token: &str) -> Result<u64, (StatusCode, String)> {
    let m = member(ctx).await.map_err(|e| (e.status(), e.to_string()))?;
    let (cluster_id, key) = token_key(&m).map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    dashboard::check_token(&key, &cluster_id, token, now_s())
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))
}

/// Whether the request carries a good login token in its cookie.
pub(super) async fn cookie_login(ctx: &NodeCtx, headers: &HeaderMap) -> Result<(), String> {
    let token = cookie_token(headers).ok_or_else(|| {
        "this dashboard needs a login: run 'flotilla ui-token' on a manager and open the address it prints".to_string()
    })?;
    check_login(ctx, &token)
        .await
        .map(|_| ())
        .map_err(|(_, why)| why)
}

#[derive(serde::Deserialize)]
pub(super) struct LoginQuery {
    #[serde(default)]
    token: String,
}

/// A page that says why the dashboard is not shown.
pub(super) fn refused(status: StatusCode, why: &str) -> Response {
    let escaped = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
        ],
        format!("<!doctype html><meta charset=utf-8><title>Flotilla</title><p>{escaped}</p>\n"),
    )
        .into_response()
}

/// `GET /ui/login?token=...`: a good token becomes the cookie, and the
/// browser goes on to the dashboard (the token leaves the address bar).
async fn login(State(ctx): Ctx, Query(q): Query<LoginQuery>) -> Response {
    match check_login(&ctx, &q.token).await {
        Err((status, why)) => refused(status, &why),
        Ok(expires_s) => {
            let cookie = format!(
                "{COOKIE}={}; Path=/ui; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
                q.token.trim(),
                expires_s.saturating_sub(now_s())
            );
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/ui".to_string()),
                    (header::SET_COOKIE, cookie),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                ],
            )
                .into_response()
        }
    }
}

/// `GET /ui/state`: what the page shows, read from this manager's store
/// as it is (no wait for the leader: the page must answer when there is
/// none), with the health decided from it.
async fn state(State(ctx): Ctx) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let status = managers(&m);
    let local = cluster::facts(
        &ctx,
        Some(m.member.identity.node_id.clone()),
        m.raft.is_leader(),
    );
    let me = m.member.identity.node_id.clone();
    let (info, nodes, services, tasks, others) = read(&m, |s| {
        let mut tasks: Vec<TaskView> = s
            .services
            .values()
            .flat_map(|svc| views::task_views(s, svc))
            .filter(|t| t.desired_state == flotilla_types::DesiredState::Running)
            .collect();
        tasks.sort_by(|a, b| (&a.node, &a.service, a.slot).cmp(&(&b.node, &b.service, b.slot)));
        (
            views::info(s, &local, &status),
            views::node_views(s, Some(&me), &status),
            views::service_views(s),
            tasks,
            crate::meshstats::others(s, &me),
        )
    });
    let mut warnings: Vec<String> = info.warning.iter().cloned().collect();
    let now = std::time::Instant::now();
    let mesh = match ctx.board.mesh(now) {
        Some(cache) => cache,
        None => {
            let local = ctx
                .mesh
                .read()
                .ok()
                .and_then(|slot| slot.as_ref().map(flotilla_mesh::Mesh::stats));
            let (stats, warning) = crate::meshstats::gather(others, local, &m.member.client).await;
            let cache = MeshCache {
                at: now,
                stats,
                warning,
            };
            ctx.board.set_mesh(cache.clone());
            cache
        }
    };
    warnings.extend(mesh.warning);
    let health = dashboard::health(&info, &nodes, &services);
    let answer = Dashboard {
        at: crate::now_ms(),
        health,
        info,
        nodes,
        services,
        tasks,
        mesh: mesh.stats,
        events: ctx.board.recent(EVENTS_SHOWN),
        warnings,
    };
    let mut response = Json(answer).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            header::HeaderValue::from_static("a=1; flotilla_ui=FLTUI-1-9-ab; b=2"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("FLTUI-1-9-ab"));
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn a_refusal_page_escapes_what_it_says() {
        let r = refused(StatusCode::UNAUTHORIZED, "<script>");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}
