//! Calling other nodes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ErrorBody;

/// Who the callee must prove to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Any node of the cluster.
    Node,
    /// A manager (raft, forwarded writes).
    Manager,
}

/// Why a call to another node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The callee answered with an error status; `message` is its reason.
    #[error("{message}")]
    Status { status: u16, message: String },
    #[error("cannot read the answer of {addr}: {reason}")]
    Decode { addr: String, reason: String },
}

impl TransportError {
    /// Whether the callee was not reached at all (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Unreachable { .. } | TransportError::Timeout { .. }
        )
    }
}

type Https = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTPS client for the cluster port.
#[derive(Clone)]
pub struct ClusterClient {
    node: Https,
    manager: Https,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient").finish_non_exhaustive()
    }
}

fn build(mut config: rustls::ClientConfig, name: ServerName<'static>) -> Https {
    // hyper-rustls sets ALPN itself.
    config.alpn_protocols.clear();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(name))
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

impl ClusterClient {
    /// A client that authenticates with `config` (from
    /// `flotilla_pki::tls::client_config` or `pinned_client_config`).
    pub fn new(config: rustls::ClientConfig) -> Result<Self, TransportError> {
        let name = |n: &'static str| {
            ServerName::try_from(n).map_err(|e| TransportError::Unreachable {
                addr: n.to_string(),
                reason: e.to_string(),
            })
        };
        Ok(ClusterClient {
            node: build(config.clone(), name(flotilla_pki::NODE_NAME)?),
            manager: build(config, name(flotilla_pki::MANAGER_NAME)?),
        })
    }

    /// POSTs `body` as JSON to `https://addr{path}` and decodes the answer.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: Target,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let bytes = serde_json::to_vec(body).map_err(|e| TransportError::Decode {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        self.send(target, addr, path, "application/json", bytes, timeout)
            .await
    }

    /// POSTs `header` and `data` as one framed body ([`crate::frame`]) and
    /// decodes the JSON answer: for raw bytes that JSON would bloat.
    pub async fn post_frame<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: Target,
        addr: &str,
        path: &str,
        header: &Req,
        data: &[u8],
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let bytes = crate::frame::encode(header, data).map_err(|e| TransportError::Decode {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        self.send(
            target,
            addr,
            path,
            crate::frame::CONTENT_TYPE,
            bytes,
            timeout,
        )
        .await
    }

    async fn send<Resp: DeserializeOwned>(
        &self,
        target: Target,
        addr: &str,
        path: &str,
        content_type: &str,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("https://{addr}{path}"))
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| TransportError::Unreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let client = match target {
            Target::Node => &self.node,
            Target::Manager => &self.manager,
        };
        let call = async {
            let response = client.request(request).await.map_err(|e| {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    reason = s.to_string();
                    source = s.source();
                }
                TransportError::Unreachable {
                    addr: addr.to_string(),
                    reason,
                }
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| TransportError::Unreachable {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|b| b.error)
                    .unwrap_or_else(|_| format!("{addr} answered {status}"));
                return Err(TransportError::Status {
                    status: status.as_u16(),
                    message,
                });
            }
            serde_json::from_slice(&body).map_err(|e| TransportError::Decode {
                addr: addr.to_string(),
                reason: e.to_string(),
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| TransportError::Timeout {
                addr: addr.to_string(),
                timeout,
            })?
    }
}
