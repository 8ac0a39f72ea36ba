//! Node keys, CSRs, and what a certificate says about its holder.

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;

/// A node's role as its certificate states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
    /// Not a node: an operator's CLI reaching the client API from afar.
    Client,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Client => "client",
        }
    }

    /// Whether the holder is a node of the cluster (not a client).
    pub fn is_node(&self) -> bool {
        !matches!(self, Role::Client)
    }
}

/// A freshly made key and the CSR that asks the CA to certify it.
#[derive(Debug, Clone)]
pub struct NodeKey {
    pub key_pem: String,
    pub csr_pem: String,
}

/// Makes a P-256 key and a CSR for it.
pub fn new_key_and_csr() -> Result<NodeKey, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    let params = CertificateParams::new(vec![crate::NODE_NAME.to_string()])
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    Ok(NodeKey {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem().map_err(|e| PkiError::Generate(e.to_string()))?,
    })
}

/// Who a certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: String,
    pub role: Role,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// Reads the node ID (CN) and role (OU) of a node certificate (DER).
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| PkiError::NotANode("no common name".into()))?;
    let ou = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| PkiError::NotANode("no role".into()))?;
    let role = match ou {
        "manager" => Role::Manager,
        "worker" => Role::Worker,
        "client" => Role::Client,
        other => return Err(PkiError::NotANode(format!("unknown role {other:?}"))),
    };
    Ok(PeerIdentity {
        node_id: cn.to_string(),
        role,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// [`peer_identity`] of a PEM certificate.
pub fn pem_identity(cert_pem: &str) -> Result<PeerIdentity, PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    peer_identity(&der)
}
