//! `GET /metrics` (see [`crate::metrics`]): on the local socket, on the
//! client API port (with a certificate, as every route there) and, with
//! `--metrics-listen`, plainly on an address the operator chose.

use super::*;
use crate::metrics;

/// The content type of prometheus-client's text encoding (OpenMetrics,
/// which Prometheus reads).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) async fn metrics(State(ctx): Ctx) -> Response {
    let mut reg = prometheus_client::registry::Registry::default();
    if let Ok(m) = member(&ctx).await {
        let status = managers(&m);
        let managers = {
            let state = m.view.read();
            metrics::cluster_series(&mut reg, &state);
            state
                .nodes
                .values()
                .filter(|n| n.role == flotilla_types::NodeRole::Manager)
                .count() as u64
        };
        let raft = {
            let rm = m.raft.raft().metrics();
            let rm = rm.borrow();
            let last = rm.last_log_index.unwrap_or(0);
            metrics::RaftFigures {
                term: rm.current_term,
                is_leader: m.raft.is_leader(),
                last_log_index: last,
                applied_index: rm.last_applied.map_or(0, |l| l.index),
                snapshot_index: rm.snapshot.map_or(0, |l| l.index),
                purged_index: rm.purged.map_or(0, |l| l.index),
                store_bytes: std::fs::metadata(ctx.data_dir.join("raft.redb"))
                    .map_or(0, |md| md.len()),
                lag: rm
                    .replication
                    .iter()
                    .flatten()
                    .map(|(id, l)| (*id, last.saturating_sub(l.map_or(0, |l| l.index))))
                    .collect(),
                managers,
                managers_reachable: status.reachable.len() as u64,
                quorum: !status.no_quorum,
            }
        };
        metrics::raft_series(&mut reg, &raft, &ctx.counters);
    }
    let mesh = ctx
        .mesh
        .read()
        .ok()
        .and_then(|slot| slot.as_ref().map(flotilla_mesh::Mesh::stats));
    metrics::mesh_series(&mut reg, mesh.as_ref());
    metrics::vip_series(&mut reg, &ctx.counters.vips);
    metrics::process_series(&mut reg, &metrics::process_figures());
    let mut response = metrics::text(&reg).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, v);
    }
    response
}

/// `--metrics-listen ADDR`: `/metrics` alone, without TLS, until
/// `shutdown`.
pub async fn serve_plain(
    ctx: Arc<NodeCtx>,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(ctx);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}
