//! This node's TLS material on disk (`certs/` in the data dir): the cluster
//! CA certificate, the node certificate and its key (mode 0600).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_pki::cert::pem_identity;
use flotilla_pki::tls::{client_config, server_config};
use flotilla_pki::{PeerIdentity, PkiError};
use flotilla_transport::ClusterClient;

/// Why the certificates could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the certificates in {dir} are unusable: {source}")]
    Invalid {
        dir: PathBuf,
        #[source]
        source: PkiError,
    },
    #[error("cannot build the cluster client: {0}")]
    Client(String),
}

/// The CA certificate and this node's certificate and key, PEM.
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs")
}

impl NodeTls {
    /// Loads the material; `None` if the node has none yet.
    pub fn load(data_dir: &Path) -> Result<Option<NodeTls>, CertError> {
        let d = dir(data_dir);
        let read = |name: &str| -> Result<Option<String>, CertError> {
            let path = d.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(CertError::Read { path, source }),
            }
        };
        match (read("ca.crt")?, read("node.crt")?, read("node.key")?) {
            (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Ok(Some(NodeTls {
                ca_pem,
                cert_pem,
                key_pem,
            })),
            _ => Ok(None),
        }
    }

    /// Writes the material, the key readable by its owner only.
    pub fn store(&self, data_dir: &Path) -> Result<(), CertError> {
        let d = dir(data_dir);
        let write = |name: &str, text: &str, mode: u32| -> Result<(), CertError> {
            let path = d.join(name);
            let tmp = d.join(format!("{name}.tmp"));
            let io = || -> std::io::Result<()> {
                std::fs::write(&tmp, text)?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            io().map_err(|source| CertError::Write { path, source })
        };
        std::fs::create_dir_all(&d).map_err(|source| CertError::Write {
            path: d.clone(),
            source,
        })?;
        write("ca.crt", &self.ca_pem, 0o644)?;
        write("node.key", &self.key_pem, 0o600)?;
        write("node.crt", &self.cert_pem, 0o644)?;
        Ok(())
    }

    /// Who the node certificate says this node is.
    pub fn identity(&self) -> Result<PeerIdentity, PkiError> {
        pem_identity(&self.cert_pem)
    }

    /// The cluster port's TLS server config.
    pub fn server_config(&self, data_dir: &Path) -> Result<Arc<rustls::ServerConfig>, CertError> {
        server_config(&self.ca_pem, &self.cert_pem, &self.key_pem)
            .map(Arc::new)
            .map_err(|source| CertError::Invalid {
                dir: dir(data_dir),
                source,
            })
    }

    /// A client of other nodes that authenticates as this node.
    pub fn client(&self, data_dir: &Path) -> Result<ClusterClient, CertError> {
        let config =
            client_config(&self.ca_pem, &self.cert_pem, &self.key_pem).map_err(|source| {
                CertError::Invalid {
                    dir: dir(data_dir),
                    source,
                }
            })?;
        ClusterClient::new(config).map_err(|e| CertError::Client(e.to_string()))
    }
}
