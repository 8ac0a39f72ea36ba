//! Serving a router on the cluster port.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::{Extension, Router};
use flotilla_pki::{peer_identity, PeerIdentity};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Who is calling: the identity in the client certificate, or `None` for a
/// caller without one (only the join endpoint accepts those).
#[derive(Debug, Clone)]
pub struct Peer(pub Option<PeerIdentity>);

/// Serves `router` on `listener` until `shutdown`. The TLS config sits
/// behind a lock so that a renewed certificate takes effect for new
/// connections without a restart.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    router: Router,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let config = match tls.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let acceptor = TlsAcceptor::from(config);
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "cluster port: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "cluster port: TLS handshake timed out");
                        return;
                    }
                };
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| peer_identity(c).ok());
            let service = TowerToHyperService::new(router.layer(Extension(Peer(peer))));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%remote, error = %e, "cluster port: connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}
