//! A router on the cluster port, called by nodes with different
//! certificates.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::routing::post;
use axum::{Extension, Json, Router};
use flotilla_pki::tls::{client_config, pinned_client_config, server_config};
use flotilla_pki::{new_key_and_csr, Ca, Role};
use flotilla_transport::{serve, ClusterClient, Peer, Target, TransportError};
use tokio_util::sync::CancellationToken;

fn node(ca: &Ca, id: &str, role: Role) -> (String, String) {
    let k = new_key_and_csr().expect("key");
    let cert = ca
        .sign_node(&k.csr_pem, id, role, Duration::from_secs(3600))
        .expect("sign");
    (cert, k.key_pem)
}

async fn whoami(
    Extension(peer): Extension<Peer>,
    Json(n): Json<u32>,
) -> Json<(Option<String>, u32)> {
    Json((peer.0.map(|p| p.node_id), n + 1))
}

#[tokio::test]
async fn nodes_call_each_other_and_are_told_apart() {
    let material = Ca::create("c").expect("ca");
    let ca = Ca::load(&material).expect("load");
    let (mcert, mkey) = node(&ca, "mgr", Role::Manager);
    let (wcert, wkey) = node(&ca, "wrk", Role::Worker);
    let server = server_config(&material.cert_pem, &mcert, &mkey).expect("server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = CancellationToken::new();
    let router = Router::new().route("/whoami", post(whoami));
    tokio::spawn(serve(
        listener,
        Arc::new(RwLock::new(Arc::new(server))),
        router,
        stop.clone(),
    ));

    let worker =
        ClusterClient::new(client_config(&material.cert_pem, &wcert, &wkey).expect("client"))
            .expect("client");
    let t = Duration::from_secs(5);
    let r: (Option<String>, u32) = worker
        .post(Target::Manager, &addr, "/whoami", &41u32, t)
        .await
        .expect("call");
    assert_eq!(r, (Some("wrk".into()), 42));
    // Pooled connection reused: a second call works too.
    let r: (Option<String>, u32) = worker
        .post(Target::Node, &addr, "/whoami", &1u32, t)
        .await
        .expect("call");
    assert_eq!(r.1, 2);

    let joiner = ClusterClient::new(pinned_client_config(&ca.fingerprint()).expect("pinned"))
        .expect("client");
    let r: (Option<String>, u32) = joiner
        .post(Target::Node, &addr, "/whoami", &0u32, t)
        .await
        .expect("call");
    assert_eq!(r.0, None, "a joining node has no identity yet");

    let missing: Result<(Option<String>, u32), TransportError> =
        worker.post(Target::Node, &addr, "/nosuch", &0u32, t).await;
    assert!(
        matches!(missing, Err(TransportError::Status { status: 404, .. })),
        "{missing:?}"
    );

    stop.cancel();
    let down: Result<(Option<String>, u32), TransportError> = worker
        .post(Target::Node, "127.0.0.1:1", "/whoami", &0u32, t)
        .await;
    assert!(down.as_ref().is_err_and(|e| e.is_unreachable()), "{down:?}");
}
