//! The routing mesh's counters, gathered from every node: each node
//! serves its own mesh's on the manager-only cluster endpoint
//! [`PATH`], and the manager a client asks merges them
//! ([`gather`]), naming the nodes it could not reach.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Extension, Json, Router};
use flotilla_transport::{ClusterClient, Peer, Target};
use flotilla_types::mesh::MeshStats;
use flotilla_types::NodeState;

use crate::cluster::{manager_peer, ClusterError};

/// The cluster endpoint of a node's mesh counters.
pub const PATH: &str = "/cluster/v1/mesh-stats";
/// How long one node may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The endpoint's route over this node's mesh.
pub fn router(mesh: flotilla_mesh::Mesh) -> Router {
    Router::new()
        .route(PATH, post(stats))
        .with_state(Arc::new(mesh))
}

async fn stats(
    State(mesh): State<Arc<flotilla_mesh::Mesh>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<MeshStats>, ClusterError> {
    manager_peer(&peer)?;
    Ok(Json(mesh.stats()))
}

/// The ready nodes other than `self_id` to ask: name and cluster address.
pub fn others(state: &flotilla_store::State, self_id: &str) -> Vec<(String, String)> {
    state
        .nodes
        .values()
        .filter(|n| n.id != self_id && n.state == NodeState::Ready && !n.addr.is_empty())
        .map(|n| (n.name.clone(), n.addr.clone()))
        .collect()
}

/// The counters of this node's mesh (`local`) and of `others`', by node,
/// and a warning naming the nodes that did not answer.
pub async fn gather(
    others: Vec<(String, String)>,
    local: Option<MeshStats>,
    client: &ClusterClient,
) -> (Vec<MeshStats>, Option<String>) {
    let mut out: Vec<MeshStats> = local.into_iter().collect();
    let empty = serde_json::json!({});
    let calls = others
        .iter()
        .map(|(_, addr)| client.post::<_, MeshStats>(Target::Node, addr, PATH, &empty, TIMEOUT));
    let answers = futures_util::future::join_all(calls).await;
    let mut missing = Vec::new();
    for ((name, _), answer) in others.iter().zip(answers) {
        match answer {
            Ok(stats) => out.push(stats),
            Err(e) => missing.push(format!("{name} ({e})")),
        }
    }
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let warning =
        (!missing.is_empty()).then(|| format!("no mesh counters from {}", missing.join(", ")));
    (out, warning)
}
