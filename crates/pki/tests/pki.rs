//! The CA, node certificates and tokens, and real TLS handshakes over
//! loopback between configs built from them.

use std::sync::Arc;
use std::time::Duration;

use flotilla_pki::tls::{client_config, pinned_client_config, server_config, PIN_MISMATCH};
use flotilla_pki::token::new_secret;
use flotilla_pki::{
    cert::pem_identity, new_key_and_csr, Ca, JoinToken, Role, MANAGER_NAME, NODE_NAME,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct NodeCert {
    cert: String,
    key: String,
}

fn node(ca: &Ca, id: &str, role: Role) -> NodeCert {
    let k = new_key_and_csr().expect("key");
    let cert = ca
        .sign_node(&k.csr_pem, id, role, Duration::from_secs(3600))
        .expect("sign");
    NodeCert {
        cert,
        key: k.key_pem,
    }
}

#[test]
fn node_certificates_carry_id_and_role() {
    let material = Ca::create("c1").expect("ca");
    let ca = Ca::load(&material).expect("load");
    assert_eq!(ca.fingerprint().len(), 64);
    let m = node(&ca, "node-a", Role::Manager);
    let id = pem_identity(&m.cert).expect("identity");
    assert_eq!(id.node_id, "node-a");
    assert_eq!(id.role, Role::Manager);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        id.not_after > now + 3000 && id.not_after <= now + 3600,
        "{}",
        id.not_after
    );
    let w = node(&ca, "node-b", Role::Worker);
    assert_eq!(pem_identity(&w.cert).expect("identity").role, Role::Worker);
}

#[test]
fn tokens_round_trip_and_refuse_garbage() {
    let t = JoinToken {
        ca_fingerprint: "ab".repeat(32),
        secret: new_secret([7; 17]),
    };
    let text = t.to_string();
    assert!(text.starts_with("FLT-1-"));
    assert_eq!(text.parse::<JoinToken>(), Ok(t));
    for bad in [
        "",
        "FLT-1",
        "SWMTKN-1-aa-bb",
        &text.replace("FLT-1", "FLT-2"),
        &text[..text.len() - 1],
        &text.to_uppercase(),
    ] {
        assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
    }
    assert_ne!(new_secret([1; 17]), new_secret([2; 17]));
    assert_eq!(new_secret([255; 17]).len(), 26);
}

/// Runs one TLS handshake: a server with `server`, a client with `client`
/// that expects `name`. Returns the client's error text, or the peer
/// identity the server saw.
async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
    name: &'static str,
) -> Result<Option<String>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.ok()?;
        let mut tls = acceptor.accept(tcp).await.ok()?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| {
                flotilla_pki::peer_identity(c)
                    .map(|i| i.node_id)
                    .unwrap_or_default()
            });
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.ok()?;
        tls.write_all(b"ok").await.ok()?;
        Some(peer)
    });
    let connector = TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let result = async {
        let mut tls = connector
            .connect(ServerName::try_from(name).map_err(|e| e.to_string())?, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"hi").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    match result {
        Ok(()) => Ok(tokio::time::timeout(Duration::from_secs(5), server_task)
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
            .flatten()),
        Err(e) => {
            server_task.abort();
            Err(e)
        }
    }
}

#[tokio::test]
async fn mutual_tls_between_nodes_enforces_the_ca_and_roles() {
    let material = Ca::create("c1").expect("ca");
    let ca = Ca::load(&material).expect("load");
    let mgr = node(&ca, "mgr", Role::Manager);
    let wrk = node(&ca, "wrk", Role::Worker);
    let server = || server_config(&material.cert_pem, &mgr.cert, &mgr.key).expect("server");

    // A worker reaches a manager and the manager learns who it is.
    let worker_client = client_config(&material.cert_pem, &wrk.cert, &wrk.key).expect("client");
    let seen = handshake(server(), worker_client.clone(), MANAGER_NAME).await;
    assert_eq!(seen, Ok(Some("wrk".to_string())));

    // A manager-only client refuses a worker posing as a manager.
    let worker_server = server_config(&material.cert_pem, &wrk.cert, &wrk.key).expect("server");
    let err = handshake(worker_server, worker_client.clone(), MANAGER_NAME).await;
    assert!(
        err.is_err(),
        "a worker certificate must not pass as a manager"
    );

    // A node of another cluster is refused.
    let other = Ca::create("c2").expect("ca");
    let other_ca = Ca::load(&other).expect("load");
    let stranger = node(&other_ca, "x", Role::Manager);
    let stranger_client =
        client_config(&other.cert_pem, &stranger.cert, &stranger.key).expect("client");
    assert!(handshake(server(), stranger_client, NODE_NAME)
        .await
        .is_err());

    // A joining node with the right fingerprint gets through without a cert.
    let pinned = pinned_client_config(&ca.fingerprint()).expect("pinned");
    assert_eq!(handshake(server(), pinned, NODE_NAME).await, Ok(None));

    // A token whose fingerprint was altered is refused before anything is sent.
    let mut fp = ca.fingerprint();
    fp.replace_range(0..1, if fp.starts_with('0') { "1" } else { "0" });
    let pinned = pinned_client_config(&fp).expect("pinned");
    let err = handshake(server(), pinned, NODE_NAME)
        .await
        .expect_err("must refuse");
    assert!(err.contains(PIN_MISMATCH), "{err}");
}

#[test]
fn secrets_compare_whole() {
    use flotilla_pki::token::secrets_match;
    assert!(secrets_match(b"abc", b"abc"));
    assert!(!secrets_match(b"abc", b"abd"));
    assert!(!secrets_match(b"xbc", b"abc"));
    assert!(!secrets_match(b"abc", b"ab"));
    assert!(secrets_match(b"", b""));
}
