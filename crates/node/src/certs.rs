//! This node's TLS material on disk (`certs/` in the data dir): the cluster
//! CA certificate, the node certificate and its key (mode 0600).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_pki::cert::pem_identity;
use flotilla_pki::tls::{client_config, server_config};
use flotilla_pki::{PeerIdentity, PkiError};
use flotilla_transport::ClusterClient;
use flotilla_types::SecretData;

use crate::keyring;

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
    #[error("cannot seal the node key: {0}")]
    Sealed(String),
}

impl std::fmt::Debug for NodeTls {
    /// Never the key: a log line or a panic message must not carry it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"..")
            .finish()
    }
}

/// What `certs/` holds.
#[derive(Debug, Clone)]
pub enum Stored {
    Plain(NodeTls),
    /// The key is sealed under the unlock key (autolock).
    Sealed(SealedTls),
}

/// The material of a locked manager: its key sealed.
#[derive(Clone)]
pub struct SealedTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub sealed_key: String,
}

impl std::fmt::Debug for SealedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedTls(..)")
    }
}

impl SealedTls {
    /// The material with its key opened by `unlock`.
    pub fn open(&self, unlock: &SecretData) -> Result<NodeTls, keyring::KeyError> {
        let node_id = pem_identity(&self.cert_pem)
            .map_err(|_| keyring::KeyError::Malformed)?
            .node_id;
        let key_pem = keyring::open_node_key(unlock, &node_id, &self.sealed_key)?;
        Ok(NodeTls {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem,
        })
    }
}

/// Writes `text` to `d/name` atomically and durably with `mode`.
fn write_file(d: &Path, name: &str, text: &str, mode: u32) -> Result<(), CertError> {
    let path = d.join(name);
    let tmp = d.join(format!("{name}.tmp"));
    let io = || -> std::io::Result<()> {
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    io().map_err(|source| CertError::Write { path, source })
}

/// The CA certificate and this node's certificate and key, PEM.
#[derive(Clone)]
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs")
}

/// Where this node's TLS key is (plain, or sealed under autolock).
pub fn key_path(data_dir: &Path) -> PathBuf {
    dir(data_dir).join(KEY_FILE)
}

const KEY_FILE: &str = "node.key";

impl NodeTls {
    /// Loads the material; `None` if the node has none yet. Under
    /// autolock the key is sealed ([`Stored::Sealed`]).
    pub fn load(data_dir: &Path) -> Result<Option<Stored>, CertError> {
        let d = dir(data_dir);
        let read = |name: &str| -> Result<Option<String>, CertError> {
            let path = d.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(CertError::Read { path, source }),
            }
        };
        match (read("ca.crt")?, read("node.crt")?, read(KEY_FILE)?) {
            (Some(ca_pem), Some(cert_pem), Some(key)) if keyring::is_sealed_node_key(&key) => {
                Ok(Some(Stored::Sealed(SealedTls {
                    ca_pem,
                    cert_pem,
                    sealed_key: key,
                })))
            }
            (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Ok(Some(Stored::Plain(NodeTls {
                ca_pem,
                cert_pem,
                key_pem,
            }))),
            _ => Ok(None),
        }
    }

    /// Writes the material, the key readable by its owner only.
    pub fn store(&self, data_dir: &Path) -> Result<(), CertError> {
        self.store_with(data_dir, None)
    }

    /// Writes the material; with `unlock`, the key sealed under it
    /// (autolock).
    pub fn store_with(
        &self,
        data_dir: &Path,
        unlock: Option<&SecretData>,
    ) -> Result<(), CertError> {
        let d = dir(data_dir);
        std::fs::create_dir_all(&d).map_err(|source| CertError::Write {
            path: d.clone(),
            source,
        })?;
        write_file(&d, "ca.crt", &self.ca_pem, 0o644)?;
        self.store_key(data_dir, unlock)?;
        write_file(&d, "node.crt", &self.cert_pem, 0o644)?;
        Ok(())
    }

    /// Writes the key alone: plain, or sealed under `unlock`.
    pub fn store_key(&self, data_dir: &Path, unlock: Option<&SecretData>) -> Result<(), CertError> {
        let d = dir(data_dir);
        let text = match unlock {
            Some(key) => {
                let node_id = self.identity().map_err(|source| CertError::Invalid {
                    dir: d.clone(),
                    source,
                })?;
                keyring::seal_node_key(key, &node_id.node_id, &self.key_pem)
                    .map_err(|e| CertError::Sealed(e.to_string()))?
            }
            None => self.key_pem.clone(),
        };
        write_file(&d, KEY_FILE, &text, 0o600)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_key() {
        let tls = NodeTls {
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----secret".into(),
        };
        let shown = format!("{tls:?} {:?}", Stored::Plain(tls.clone()));
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("secret"),
            "{shown}"
        );
    }
}
