//! The cluster port's endpoints (node to node, mutual TLS). Every endpoint
//! but the join checks the caller's certificate; status codes come from
//! [`ClusterError::status`].

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};

use flotilla_pki::{Ca, CaMaterial, Role};
use flotilla_store::Command;
use flotilla_transport::{ErrorBody, Peer};
use flotilla_types::{Epoch, NodeRole};

use super::dispatcher::{manager_addrs, SessionError};
use super::wire::{AddManager, JoinRequest, JoinResponse, SessionRequest, SessionResponse};
use super::{now_ms, Member};
use flotilla_raft::network::{paths, EpochQuery};
use flotilla_raft::TypeConfig;
use openraft::raft::{AppendEntriesRequest, VoteRequest};

/// Why a cluster call was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    /// The sender's raft group was replaced by `init --force-new-cluster`
    /// (an older epoch generation): it must stop.
    #[error("{0}")]
    Superseded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ClusterError {
    fn status(&self) -> StatusCode {
        match self {
            ClusterError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ClusterError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ClusterError::Forbidden(_) => StatusCode::FORBIDDEN,
            ClusterError::Superseded(_) => StatusCode::GONE,
            ClusterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ClusterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ClusterError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

type Ctx = State<Arc<Member>>;

/// The cluster CA as the replicated store holds it (managers only), its
/// key opened with `keys` under autolock.
pub fn cluster_ca(
    cluster: &flotilla_types::Cluster,
    keys: &crate::keyring::Keyring,
) -> Result<Ca, String> {
    let key_pem = keys.keys(cluster).map_err(|e| e.to_string())?.ca_key_pem;
    Ca::load(&CaMaterial {
        cert_pem: cluster.ca_cert_pem.clone(),
        key_pem,
    })
    .map_err(|e| e.to_string())
}

/// The certificate role of a node role.
pub fn cert_role(role: NodeRole) -> Role {
    match role {
        NodeRole::Manager => Role::Manager,
        NodeRole::Worker => Role::Worker,
    }
}

/// The cluster port's routes; `agent_dir` is where this node's agent keeps
/// the task logs that [`crate::tasklogs`] serves, and `mesh` the mesh
/// whose counters [`crate::meshstats`] serves.
pub fn router(
    member: Arc<Member>,
    agent_dir: std::path::PathBuf,
    mesh: flotilla_mesh::Mesh,
) -> Router {
    let contacts = member.contacts.clone();
    Router::new()
        .route("/join/v1/join", post(join))
        .route("/cluster/v1/session", post(session))
        .route("/cluster/v1/propose", post(propose))
        .route("/cluster/v1/add-manager", post(add_manager))
        .route("/cluster/v1/read-index", post(read_index))
        .route("/cluster/v1/renew", post(renew))
        .route("/cluster/v1/remove-manager", post(remove_manager))
        .route(
            crate::autolock::UNLOCK_KEY_PATH,
            post(crate::autolock::unlock_key),
        )
        .merge(
            Router::new()
                .route(paths::APPEND, post(raft_append))
                .route(paths::VOTE, post(raft_vote))
                .route(paths::SNAPSHOT, post(raft_snapshot))
                // The receiver bounds what it buffers: axum's default of
                // 2 MiB refused AppendEntries of large entries, so that
                // they were retried forever.
                .layer(axum::extract::DefaultBodyLimit::max(
                    flotilla_raft::network::MAX_RPC_BYTES,
                )),
        )
        .fallback(|| async { ClusterError::BadRequest("no such cluster endpoint".into()) })
        .with_state(member)
        .merge(super::tasklogs::router(agent_dir))
        .merge(super::meshstats::router(mesh))
        .route(crate::contact::PING_PATH, post(ping))
        .layer(axum::middleware::from_fn_with_state(contacts, heard))
}

/// Every call from a node of the cluster is news that it is alive
/// ([`crate::contact`]).
async fn heard(
    State(contacts): State<crate::contact::Contacts>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(Peer(Some(p))) = request.extensions().get::<Peer>() {
        if p.role.is_node() {
            contacts.record(&p.node_id);
        }
    }
    next.run(request).await
}

/// A manager's probe ([`crate::contact::probe_managers`]): answered to
/// any node of the cluster.
async fn ping(Extension(peer): Extension<Peer>) -> Result<Json<serde_json::Value>, ClusterError> {
    node_peer(&peer)?;
    Ok(Json(serde_json::json!({})))
}

pub(crate) fn body<T>(r: Result<Json<T>, JsonRejection>) -> Result<T, ClusterError> {
    r.map(|Json(v)| v)
        .map_err(|e| ClusterError::BadRequest(format!("invalid request: {}", e.body_text())))
}

/// The caller's identity, which must be a node of this cluster.
fn node_peer(peer: &Peer) -> Result<&flotilla_pki::PeerIdentity, ClusterError> {
    match peer.0.as_ref() {
        Some(p) if p.role.is_node() => Ok(p),
        _ => Err(ClusterError::Unauthenticated(
            "a node certificate of this cluster is required".into(),
        )),
    }
}

/// The caller must be a manager.
pub(crate) fn manager_peer(peer: &Peer) -> Result<&flotilla_pki::PeerIdentity, ClusterError> {
    let who = node_peer(peer)?;
    if who.role != Role::Manager {
        return Err(ClusterError::Forbidden(format!(
            "node {} is a worker: manager-only endpoint",
            who.node_id
        )));
    }
    Ok(who)
}

/// The caller must be a manager, and so must this node.
fn manager_call(m: &Member, peer: &Peer) -> Result<Arc<flotilla_raft::RaftNode>, ClusterError> {
    manager_peer(peer)?;
    m.raft.clone().ok_or_else(|| {
        ClusterError::Forbidden("this node is a worker: manager-only endpoint".into())
    })
}

/// A raft message from a member of another raft group of this cluster (a
/// manager removed by force-new-cluster) is refused. A member that holds
/// no cluster yet (a manager that just joined) takes what comes: its
/// state arrives that way.
fn same_group(mine: Option<&Epoch>, query: &EpochQuery) -> Result<(), ClusterError> {
    let theirs: Epoch = query
        .epoch
        .parse()
        .map_err(|e: flotilla_types::EpochError| ClusterError::BadRequest(e.to_string()))?;
    match mine {
        None => Ok(()),
        // An older generation: the sender's group was replaced, and the
        // answer (410) tells it to stop (`flotilla_raft::network`).
        Some(mine) if theirs.generation < mine.generation => {
            Err(ClusterError::Superseded(format!(
                "refused: the sender is in cluster epoch {theirs}, which 'init \
                 --force-new-cluster' replaced with {mine}: it is no longer part of the cluster"
            )))
        }
        Some(mine) => mine
            .admits_peer(&theirs)
            .map_err(|e| ClusterError::Forbidden(e.to_string())),
    }
}

/// [`same_group`] with the member's epoch.
fn raft_of_group(
    m: &Member,
    peer: &Peer,
    query: &EpochQuery,
) -> Result<Arc<flotilla_raft::RaftNode>, ClusterError> {
    let raft = manager_call(m, peer)?;
    same_group(raft.epoch().as_ref(), query)?;
    Ok(raft)
}

async fn raft_append(
    State(m): Ctx,
    Extension(peer): Extension<Peer>,
    Query(epoch): Query<EpochQuery>,
    req: Result<Json<AppendEntriesRequest<TypeConfig>>, JsonRejection>,
) -> Result<Response, ClusterError> {
    let raft = raft_of_group(&m, &peer, &epoch)?;
    let rpc = body(req)?;
    Ok(Json(raft.raft().append_entries(rpc).await).into_response())
}

async fn raft_vote(
    State(m): Ctx,
    Extension(peer): Extension<Peer>,
    Query(epoch): Query<EpochQuery>,
    req: Result<Json<VoteRequest<u64>>, JsonRejection>,
) -> Result<Response, ClusterError> {
    let raft = raft_of_group(&m, &peer, &epoch)?;
    let rpc = body(req)?;
    Ok(Json(raft.raft().vote(rpc).await).into_response())
}

async fn raft_snapshot(
    State(m): Ctx,
    Extension(peer): Extension<Peer>,
    Query(epoch): Query<EpochQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ClusterError> {
    let raft = raft_of_group(&m, &peer, &epoch)?;
    let (chunk, data): (flotilla_raft::network::SnapshotChunk, &[u8]) =
        flotilla_transport::frame::decode(&body)
            .map_err(|e| ClusterError::BadRequest(format!("invalid snapshot chunk: {e}")))?;
    let rpc = chunk.with(data.to_vec());
    Ok(Json(raft.raft().install_snapshot(rpc).await).into_response())
}

/// A follower forwards a write here; only the leader applies it.
async fn propose(
    State(m): Ctx,
    Extension(peer): Extension<Peer>,
    req: Result<Json<super::wire::Forwarded>, JsonRejection>,
) -> Result<Json<(flotilla_store::CommandResult, u64)>, ClusterError> {
    let raft = manager_call(&m, &peer)?;
    let forwarded = body(req)?;
    // No second hop: a forwarded write that misses the leader fails, and
    // the original caller retries (with the same request ID).
    raft.propose_request(forwarded.command, forwarded.request)
        .await
        .map(Json)
        .map_err(|e| ClusterError::Unavailable(e.to_string()))
}

/// Demote: the leader removes a manager from the voters.
async fn remove_manager(
    State(m): Ctx,
    Extension(peer): Extension<Peer>,
    req: Result<Json<u64>, JsonRejection>,
) -> Result<Json<()>, ClusterError> {
    let raft = manager_call(&m, &peer)?;
    let raft_id = body(req)?;
    if !raft.is_leader() {
        return Err(ClusterError::Unavailable(
            "this manager is not the leader".into(),
        ));
    }
    raft.remove_voter(raft_id)
        .await
        .map(Json)
        .map_err(|e| ClusterError::Unavailable(e.to_string()))
}

/// A node renews its certificate, with the role the store gives it now
/// (so a promoted or demoted node gets its new role this way).
async fn renew(
    State(m): Ctx,
    Extension(peer): Extension<Peer>,
    req: Result<Json<super::wire::RenewRequest>, JsonRejection>,
) -> Result<Json<super::wire::RenewResponse>, ClusterError> {
    let who = node_peer(&peer)?.clone();
    let req = body(req)?;
    sign_renewal(&m, &who.node_id, &req.csr_pem).map(Json)
}

/// A certificate for node `node_id` of its role in this manager's store,
/// for `csr_pem`: what `/cluster/v1/renew` answers, and what the leader
/// signs for itself when no other manager can ([`crate::renew`]).
pub(crate) fn sign_renewal(
    m: &Member,
    node_id: &str,
    csr_pem: &str,
) -> Result<super::wire::RenewResponse, ClusterError> {
    let Some(raft) = m.raft.clone() else {
        return Err(ClusterError::Forbidden(
            "this node is a worker: renew through a manager".into(),
        ));
    };
    let (cluster, node) = {
        let state = raft.state();
        let state = state
            .read()
            .map_err(|_| ClusterError::Internal("state lock poisoned".into()))?;
        (state.cluster.clone(), state.nodes.get(node_id).cloned())
    };
    let cluster = cluster
        .ok_or_else(|| ClusterError::Unavailable("the cluster is not initialized".into()))?;
    let node = node.ok_or_else(|| {
        ClusterError::Forbidden(format!("node {node_id} is not part of this cluster"))
    })?;
    let ca = cluster_ca(&cluster, &m.keyring).map_err(ClusterError::Unavailable)?;
    let cert_pem = ca
        .sign_node(
            csr_pem,
            &node.id,
            cert_role(node.role),
            crate::cert_validity(),
        )
        .map_err(|e| ClusterError::BadRequest(e.to_string()))?;
    Ok(super::wire::RenewResponse {
        cert_pem,
        role: node.role,
        raft_id: node.raft_id,
    })
}

/// A follower asks for the index its next read must include.
async fn read_index(
    State(m): Ctx,
    Extension(peer): Extension<Peer>,
) -> Result<Json<u64>, ClusterError> {
    let raft = manager_call(&m, &peer)?;
    raft.read_index(std::time::Duration::from_secs(1))
        .await
        .map(Json)
        .map_err(|e| ClusterError::Unavailable(e.to_string()))
}

async fn add_manager(
    State(m): Ctx,
    Extension(peer): Extension<Peer>,
    req: Result<Json<AddManager>, JsonRejection>,
) -> Result<Json<()>, ClusterError> {
    let raft = manager_call(&m, &peer)?;
    let mut req = body(req)?;
    if req.node_id.is_empty() {
        // An older node: its certificate says who it is.
        req.node_id = manager_peer(&peer)?.node_id.clone();
    }
    if !raft.is_leader() {
        use super::session::LeaderFinder;
        let addr = m
            .leader_addr()
            .ok_or_else(|| ClusterError::Unavailable("no leader is known".into()))?;
        return m
            .client
            .post::<_, ()>(
                flotilla_transport::Target::Manager,
                &addr,
                "/cluster/v1/add-manager",
                &req,
                std::time::Duration::from_secs(35),
            )
            .await
            .map(Json)
            .map_err(|e| ClusterError::Unavailable(e.to_string()));
    }
    {
        let state = raft.state();
        let state = state
            .read()
            .map_err(|_| ClusterError::Internal("state lock poisoned".into()))?;
        crate::control::cluster::addable_manager(&state, &req.node_id, req.raft_id)
            .map_err(ClusterError::Forbidden)?;
    }
    tracing::info!(raft_id = req.raft_id, addr = %req.addr, "adding a manager to the raft group");
    raft.add_voter(req.raft_id, &req.addr)
        .await
        .map(Json)
        .map_err(|e| ClusterError::Unavailable(e.to_string()))
}

async fn join(
    State(m): Ctx,
    req: Result<Json<JoinRequest>, JsonRejection>,
) -> Result<Json<JoinResponse>, ClusterError> {
    let req = body(req)?;
    let Some(raft) = m.raft.clone() else {
        return Err(ClusterError::Forbidden(
            "this node is a worker: join through a manager".into(),
        ));
    };
    let cluster = raft
        .state()
        .read()
        .map_err(|_| ClusterError::Internal("state lock poisoned".into()))?
        .cluster
        .clone()
        .ok_or_else(|| ClusterError::Unavailable("the cluster is not initialized".into()))?;
    // Under autolock the join secrets are sealed with the keys.
    let cluster = m
        .keyring
        .open_cluster(&cluster)
        .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
    let role = crate::control::cluster::join_role(&cluster, &req.secret)
        .ok_or_else(|| ClusterError::Forbidden(crate::control::cluster::BAD_SECRET.into()))?;
    flotilla_types::validate_name(&req.name)
        .map_err(|e| ClusterError::BadRequest(e.to_string()))?;
    if role == NodeRole::Manager {
        let state = raft.state();
        let state = state
            .read()
            .map_err(|_| ClusterError::Internal("state lock poisoned".into()))?;
        crate::control::cluster::reads_the_log(&req.name, req.entry_format, &state)
            .map_err(ClusterError::Forbidden)?;
    }
    let ca = cluster_ca(&cluster, &m.keyring).map_err(ClusterError::Unavailable)?;
    let node_id = flotilla_types::new_id(rand::random());
    let cert_pem = ca
        .sign_node(
            &req.csr_pem,
            &node_id,
            cert_role(role),
            crate::cert_validity(),
        )
        .map_err(|e| ClusterError::BadRequest(e.to_string()))?;
    let node = crate::control::cluster::joining_node(&req, &node_id, role, now_ms());
    m.propose(Command::JoinNode { node })
        .await
        .map_err(|e| ClusterError::Unavailable(e.to_string()))?
        .map_err(|e| ClusterError::BadRequest(e.to_string()))?;
    let (raft_id, managers) = {
        let state = raft.state();
        let state = state
            .read()
            .map_err(|_| ClusterError::Internal("state lock poisoned".into()))?;
        (
            state.nodes.get(&node_id).map(|n| n.raft_id).unwrap_or(0),
            manager_addrs(&state),
        )
    };
    tracing::info!(node = %node_id, role = role.as_str(), "a node joined");
    Ok(Json(JoinResponse {
        cluster_id: cluster.id,
        node_id,
        role,
        raft_id,
        cert_pem,
        ca_pem: cluster.ca_cert_pem,
        managers,
        epoch: cluster.epoch,
    }))
}

async fn session(
    State(m): Ctx,
    Extension(peer): Extension<Peer>,
    req: Result<Json<SessionRequest>, JsonRejection>,
) -> Result<Json<SessionResponse>, ClusterError> {
    let peer = node_peer(&peer)?;
    let req = body(req)?;
    if peer.node_id != req.node_id {
        return Err(ClusterError::Forbidden(
            SessionError::WrongNode {
                cert: peer.node_id.clone(),
                claimed: req.node_id,
            }
            .to_string(),
        ));
    }
    let Some(dispatcher) = m.dispatcher.clone() else {
        return Err(ClusterError::Forbidden(
            "this node is a worker: it has no dispatcher".into(),
        ));
    };
    // An agent that follows a newer raft group of this cluster never comes
    // back to a manager that force-new-cluster left behind.
    let epoch = m.raft.as_ref().and_then(|r| r.epoch()).unwrap_or_default();
    epoch
        .admits_agent(&req.epoch)
        .map_err(|e| ClusterError::Forbidden(e.to_string()))?;
    dispatcher
        .session(req)
        .await
        .map(|mut answer| {
            answer.epoch = epoch;
            Json(answer)
        })
        .map_err(|e| match e {
            SessionError::UnknownNode(_) | SessionError::WrongNode { .. } => {
                ClusterError::Forbidden(e.to_string())
            }
            other => ClusterError::Unavailable(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(epoch: &str) -> EpochQuery {
        EpochQuery {
            epoch: epoch.into(),
        }
    }

    #[test]
    fn raft_messages_of_another_epoch_are_refused() {
        let new = Epoch::first("b".into()).next("c".into());
        let mine = Some(&new);
        assert!(same_group(mine, &query(&new.to_string())).is_ok());
        // The group it replaced: told so (410), and the sender stops.
        let refused = same_group(mine, &query("1-b")).err();
        assert!(
            matches!(&refused, Some(ClusterError::Superseded(m)) if m.contains("cluster epoch 1-b")),
            "{refused:?}"
        );
        assert_eq!(
            refused.map(|e| e.status().as_u16()),
            Some(flotilla_raft::network::SUPERSEDED_STATUS)
        );
        // Another group of the same generation, or a newer one: refused.
        assert!(matches!(
            same_group(mine, &query("2-x")),
            Err(ClusterError::Forbidden(_))
        ));
        assert!(matches!(
            same_group(mine, &query("3-x")),
            Err(ClusterError::Forbidden(_))
        ));
        // A sender of an older version, or of a group from before epochs,
        // sends none: refused by a group that has one.
        assert!(same_group(mine, &query("")).is_err());
        // Members of a store from before epochs still talk.
        assert!(same_group(Some(&Epoch::default()), &query("")).is_ok());
        // A manager that just joined holds no cluster yet: its state comes
        // this way.
        assert!(same_group(None, &query("2-c")).is_ok());
        assert!(matches!(
            same_group(mine, &query("not an epoch")),
            Err(ClusterError::BadRequest(_))
        ));
    }
}
