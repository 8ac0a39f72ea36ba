//! The typed client: HTTP/1.1 over the daemon's Unix socket, one connection
//! per request (the CLI is short-lived; the daemon is local).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use flotilla_types::ServiceSpec;

use crate::model::{
    ErrorBody, Info, InitRequest, InitResponse, JoinRequest, JoinTokenView, NodeUpdate, NodeView,
    Removed, ScaleRequest, ServiceView, TaskView,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the flotilla daemon at {socket}: is 'flotilla daemon' running?")]
    Unreachable { socket: String },
    #[error("cannot reach any manager of {hosts}: {reason}")]
    NoManager { hosts: String, reason: String },
    #[error("permission denied on {socket}: the daemon's socket is only for its owner (try sudo)")]
    PermissionDenied { socket: String },
    /// The daemon answered with an error; `message` is its one-line reason.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("timed out after {0:?} waiting for the daemon to answer")]
    Timeout(Duration),
    #[error("talking to the daemon: {0}")]
    Transport(String),
    #[error("the daemon sent an answer this client cannot read: {0}")]
    Decode(String),
}

impl ClientError {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

type Https = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

#[derive(Clone)]
enum Endpoint {
    /// The local daemon's socket.
    Unix(PathBuf),
    /// Managers' client API ports over mutual TLS, tried in order.
    Remote { hosts: Vec<String>, client: Https },
}

/// The header a daemon uses to warn about an answer (e.g. a stale read).
pub const WARNING_HEADER: &str = "x-flotilla-warning";

/// A client of one daemon's API, or of any live manager of a cluster.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    socket: PathBuf,
    timeout: Duration,
    warnings: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.endpoint {
            Endpoint::Unix(p) => write!(f, "Client(unix:{})", p.display()),
            Endpoint::Remote { hosts, .. } => write!(f, "Client(https:{})", hosts.join(",")),
        }
    }
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn unix(socket: impl AsRef<Path>) -> Self {
        Client {
            endpoint: Endpoint::Unix(socket.as_ref().to_path_buf()),
            socket: socket.as_ref().to_path_buf(),
            timeout: Duration::from_secs(30),
            warnings: Default::default(),
        }
    }

    /// A client of a cluster's managers at `hosts` (`HOST:PORT` of their
    /// client API), authenticating with `tls` (a client certificate of the
    /// cluster CA). Calls go to the first manager that answers.
    pub fn remote(hosts: Vec<String>, mut tls: rustls::ClientConfig) -> Result<Self, ClientError> {
        tls.alpn_protocols.clear();
        let name = rustls::pki_types::ServerName::try_from("flotilla-manager")
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            .enable_http1()
            .wrap_connector(http);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Client {
            endpoint: Endpoint::Remote { hosts, client },
            socket: PathBuf::new(),
            timeout: Duration::from_secs(30),
            warnings: Default::default(),
        })
    }

    /// Warnings the daemon attached to answers so far (e.g. stale reads).
    pub fn take_warnings(&self) -> Vec<String> {
        match self.warnings.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => Vec::new(),
        }
    }

    /// Changes how long one call may take (streams are not bounded).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, ClientError> {
        let response = match &self.endpoint {
            Endpoint::Unix(socket) => self.send_unix(socket, request).await?,
            Endpoint::Remote { hosts, client } => self.send_remote(hosts, client, request).await?,
        };
        if let Some(w) = response
            .headers()
            .get(WARNING_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            if let Ok(mut list) = self.warnings.lock() {
                if !list.iter().any(|x| x == w) {
                    list.push(w.to_string());
                }
            }
        }
        Ok(response)
    }

    async fn send_remote(
        &self,
        hosts: &[String],
        client: &Https,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let (parts, body) = request.into_parts();
        let mut last = String::from("no hosts given");
        for host in hosts {
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let mut builder = Request::builder()
                .method(parts.method.clone())
                .uri(format!("https://{host}{path}"));
            for (k, v) in &parts.headers {
                if k != hyper::header::HOST {
                    builder = builder.header(k, v);
                }
            }
            let req = builder
                .body(body.clone())
                .map_err(|e| ClientError::Transport(e.to_string()))?;
            match client.request(req).await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_connect() => {
                    let mut reason = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        reason = s.to_string();
                        source = s.source();
                    }
                    last = format!("{host}: {reason}");
                }
                Err(e) => return Err(ClientError::Transport(e.to_string())),
            }
        }
        Err(ClientError::NoManager {
            hosts: hosts.join(","),
            reason: last,
        })
    }

    async fn send_unix(
        &self,
        socket_path: &Path,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let socket = socket_path.display().to_string();
        let stream = UnixStream::connect(socket_path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                ClientError::PermissionDenied {
                    socket: socket.clone(),
                }
            } else {
                ClientError::Unreachable {
                    socket: socket.clone(),
                }
            }
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            // The connection ends with the response; its error, if any, has
            // already reached the caller through the request.
            let _ = conn.await;
        });
        sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    fn build<B: Serialize>(
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Decode(e.to_string()))?,
            None => Vec::new(),
        };
        Request::builder()
            .method(method)
            .uri(format!("http://flotilla{path}"))
            .header("host", "flotilla")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let request = Self::build(method, path, body)?;
        let work = async {
            let response = self.send(request).await?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(api_error(status, &bytes));
            }
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    /// `GET /v1/leader-check`: whether the answering manager leads.
    pub async fn leader_check(&self) -> Result<crate::model::LeaderCheck, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/leader-check", None)
            .await
    }

    /// `POST /v1/client-cert`: a client certificate for remote use.
    pub async fn client_cert(&self, name: &str) -> Result<crate::model::ClientCert, ClientError> {
        let req = crate::model::ClientCertRequest {
            name: name.to_string(),
        };
        self.call(Method::POST, "/v1/client-cert", Some(&req)).await
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<Info, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/info", None).await
    }

    /// `POST /v1/init`.
    pub async fn init(&self, request: &InitRequest) -> Result<InitResponse, ClientError> {
        self.call(Method::POST, "/v1/init", Some(request)).await
    }

    /// `POST /v1/join`.
    pub async fn join(&self, request: &JoinRequest) -> Result<InitResponse, ClientError> {
        self.call(Method::POST, "/v1/join", Some(request)).await
    }

    /// `POST /v1/leave`.
    pub async fn leave(&self, force: bool) -> Result<(), ClientError> {
        let path = format!("/v1/leave?force={force}");
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// `GET /v1/join-token/{role}`, rotating the secret first if asked.
    pub async fn join_token(&self, role: &str, rotate: bool) -> Result<JoinTokenView, ClientError> {
        let path = format!("/v1/join-token/{}?rotate={rotate}", encode_segment(role));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/unlock`.
    pub async fn unlock(&self, key: &str) -> Result<(), ClientError> {
        let request = crate::model::UnlockRequest {
            key: key.to_string(),
        };
        self.call(Method::POST, "/v1/unlock", Some(&request)).await
    }

    /// `GET /v1/unlock-key`, rotating the key first if asked.
    pub async fn unlock_key(
        &self,
        rotate: bool,
    ) -> Result<crate::model::UnlockKeyView, ClientError> {
        let path = format!("/v1/unlock-key?rotate={rotate}");
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/autolock`.
    pub async fn set_autolock(
        &self,
        enabled: bool,
    ) -> Result<crate::model::UnlockKeyView, ClientError> {
        let request = crate::model::AutolockRequest { enabled };
        self.call(Method::POST, "/v1/autolock", Some(&request))
            .await
    }

    /// `GET /v1/nodes`.
    /// `GET /v1/backup`.
    pub async fn backup(&self) -> Result<crate::model::BackupView, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/backup", None).await
    }

    /// `PUT /v1/backup/schedule`.
    pub async fn backup_schedule(
        &self,
        request: &crate::model::BackupScheduleRequest,
    ) -> Result<crate::model::BackupScheduleView, ClientError> {
        self.call(Method::PUT, "/v1/backup/schedule", Some(request))
            .await
    }

    /// `POST /v1/ui-token`.
    pub async fn ui_token(
        &self,
        request: &crate::model::UiTokenRequest,
    ) -> Result<crate::model::UiTokenView, ClientError> {
        self.call(Method::POST, "/v1/ui-token", Some(request)).await
    }

    /// `POST /v1/restore`.
    pub async fn restore(
        &self,
        request: &crate::model::RestoreRequest,
    ) -> Result<crate::model::RestoreResponse, ClientError> {
        self.call(Method::POST, "/v1/restore", Some(request)).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/nodes", None).await
    }

    /// `GET /v1/nodes/{id}`.
    pub async fn node(&self, id: &str) -> Result<NodeView, ClientError> {
        let path = format!("/v1/nodes/{}", encode_segment(id));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/nodes/{id}/update`.
    pub async fn update_node(
        &self,
        id: &str,
        update: &NodeUpdate,
    ) -> Result<NodeView, ClientError> {
        let path = format!("/v1/nodes/{}/update", encode_segment(id));
        self.call(Method::POST, &path, Some(update)).await
    }

    /// `POST /v1/nodes/{id}/promote` or `/demote`.
    pub async fn set_role(&self, id: &str, promote: bool) -> Result<NodeView, ClientError> {
        let verb = if promote { "promote" } else { "demote" };
        let path = format!("/v1/nodes/{}/{verb}", encode_segment(id));
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// `DELETE /v1/nodes/{id}`.
    pub async fn remove_node(&self, id: &str, force: bool) -> Result<Removed, ClientError> {
        let path = format!("/v1/nodes/{}?force={force}", encode_segment(id));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceView>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/services", None).await
    }

    /// `GET /v1/networks`.
    pub async fn networks(&self) -> Result<Vec<crate::model::NetworkView>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/networks", None).await
    }

    /// `GET /v1/networks/{name}`.
    pub async fn network(&self, name: &str) -> Result<crate::model::NetworkView, ClientError> {
        let path = format!("/v1/networks/{}", encode_segment(name));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/networks`.
    pub async fn create_network(
        &self,
        spec: &flotilla_types::NetworkSpec,
    ) -> Result<crate::model::NetworkView, ClientError> {
        self.call(Method::POST, "/v1/networks", Some(spec)).await
    }

    /// `DELETE /v1/networks/{name}`.
    pub async fn remove_network(&self, name: &str) -> Result<Removed, ClientError> {
        let path = format!("/v1/networks/{}", encode_segment(name));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `GET /v1/secrets` or `GET /v1/configs`.
    pub async fn secrets(
        &self,
        kind: flotilla_types::SecretKind,
    ) -> Result<Vec<crate::model::SecretView>, ClientError> {
        self.call::<(), _>(Method::GET, secrets_path(kind), None)
            .await
    }

    /// `GET /v1/secrets/{name}` or `GET /v1/configs/{name}`.
    pub async fn secret(
        &self,
        kind: flotilla_types::SecretKind,
        name: &str,
    ) -> Result<crate::model::SecretView, ClientError> {
        let path = format!("{}/{}", secrets_path(kind), encode_segment(name));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/secrets` or `POST /v1/configs`.
    pub async fn create_secret(
        &self,
        kind: flotilla_types::SecretKind,
        create: &crate::model::SecretCreate,
    ) -> Result<crate::model::SecretView, ClientError> {
        self.call(Method::POST, secrets_path(kind), Some(create))
            .await
    }

    /// `PUT /v1/secrets/{name}` or `PUT /v1/configs/{name}`: a new
    /// version, rolled out to the services that use it.
    pub async fn update_secret(
        &self,
        kind: flotilla_types::SecretKind,
        name: &str,
        update: &crate::model::SecretUpdate,
    ) -> Result<crate::model::SecretUpdated, ClientError> {
        let path = format!("{}/{}", secrets_path(kind), encode_segment(name));
        self.call(Method::PUT, &path, Some(update)).await
    }

    /// `DELETE /v1/secrets/{name}` or `DELETE /v1/configs/{name}`.
    pub async fn remove_secret(
        &self,
        kind: flotilla_types::SecretKind,
        name: &str,
    ) -> Result<Removed, ClientError> {
        let path = format!("{}/{}", secrets_path(kind), encode_segment(name));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `GET /v1/resolve`: what `from` (a task ID or `SERVICE.SLOT`; none:
    /// every network) gets for `name`, of type `A` or `SRV`.
    pub async fn resolve(
        &self,
        name: &str,
        from: Option<&str>,
        rtype: Option<&str>,
    ) -> Result<crate::model::ResolveView, ClientError> {
        let mut path = format!("/v1/resolve?name={}", encode_segment(name));
        if let Some(from) = from {
            path.push_str(&format!("&from={}", encode_segment(from)));
        }
        if let Some(t) = rtype {
            path.push_str(&format!("&type={}", encode_segment(t)));
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `GET /v1/mesh/stats`.
    pub async fn mesh_stats(&self) -> Result<Vec<flotilla_types::mesh::MeshStats>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/mesh/stats", None)
            .await
    }

    /// `POST /v1/services`.
    pub async fn create_service(&self, spec: &ServiceSpec) -> Result<ServiceView, ClientError> {
        self.call(Method::POST, "/v1/services", Some(spec)).await
    }

    /// `GET /v1/services/{name}`.
    pub async fn service(&self, name: &str) -> Result<ServiceView, ClientError> {
        let path = format!("/v1/services/{}", encode_segment(name));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/services/{name}/scale`.
    pub async fn scale(&self, name: &str, replicas: u64) -> Result<ServiceView, ClientError> {
        let path = format!("/v1/services/{}/scale", encode_segment(name));
        self.call(Method::POST, &path, Some(&ScaleRequest { replicas }))
            .await
    }

    /// `PUT /v1/services/{name}`: replaces the spec, if the service is still
    /// at `version` when one is given.
    pub async fn replace_service(
        &self,
        name: &str,
        spec: &ServiceSpec,
        version: Option<u64>,
    ) -> Result<ServiceView, ClientError> {
        let path = format!("/v1/services/{}", encode_segment(name));
        let body = crate::model::ServiceReplace {
            spec: spec.clone(),
            version,
        };
        self.call(Method::PUT, &path, Some(&body)).await
    }

    /// `POST /v1/services/{name}/rollback`.
    pub async fn rollback_service(&self, name: &str) -> Result<ServiceView, ClientError> {
        let path = format!("/v1/services/{}/rollback", encode_segment(name));
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// `DELETE /v1/services/{name}`.
    pub async fn remove_service(&self, name: &str) -> Result<Removed, ClientError> {
        let path = format!("/v1/services/{}", encode_segment(name));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `GET /v1/services/{name}/endpoints`.
    pub async fn endpoints(
        &self,
        name: &str,
    ) -> Result<Vec<crate::model::EndpointView>, ClientError> {
        let path = format!("/v1/services/{}/endpoints", encode_segment(name));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `GET /v1/services/{name}/tasks`.
    pub async fn tasks(&self, name: &str) -> Result<Vec<TaskView>, ClientError> {
        let path = format!("/v1/services/{}/tasks", encode_segment(name));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `GET /v1/services/{name}/logs`: calls `sink` with each event (a
    /// line or a warning) as it arrives; the body is JSON lines. With
    /// `follow`, returns only when the daemon ends the stream or the
    /// connection breaks.
    pub async fn logs(
        &self,
        name: &str,
        query: &crate::model::LogQuery,
        mut sink: impl FnMut(crate::model::LogEvent),
    ) -> Result<(), ClientError> {
        let mut path = format!(
            "/v1/services/{}/logs?follow={}",
            encode_segment(name),
            query.follow
        );
        if let Some(n) = query.tail {
            path.push_str(&format!("&tail={n}"));
        }
        if let Some(ms) = query.since_ms {
            path.push_str(&format!("&since_ms={ms}"));
        }
        let request = Self::build::<()>(Method::GET, &path, None)?;
        let response = tokio::time::timeout(self.timeout, self.send(request))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Transport(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            let mut used = 0;
            while let Some(i) = pending[used..].iter().position(|b| *b == b'\n') {
                let line = &pending[used..used + i];
                used += i + 1;
                if line.is_empty() {
                    continue;
                }
                let event = serde_json::from_slice(line)
                    .map_err(|e| ClientError::Decode(format!("a log event: {e}")))?;
                sink(event);
            }
            pending.drain(..used);
        }
        Ok(())
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(bytes).trim().to_string();
            if text.is_empty() {
                format!("the daemon answered {status}")
            } else {
                text
            }
        });
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

/// Where the secrets or the configs are.
pub fn secrets_path(kind: flotilla_types::SecretKind) -> &'static str {
    match kind {
        flotilla_types::SecretKind::Secret => "/v1/secrets",
        flotilla_types::SecretKind::Config => "/v1/configs",
    }
}
