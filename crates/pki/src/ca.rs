//! The cluster CA.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, CertificateSigningRequestDer};
use time::{Duration, OffsetDateTime};

use crate::cert::Role;
use crate::{PkiError, MANAGER_NAME, NODE_NAME};

/// The CA's certificate and private key, as PEM, for storing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

/// SHA-256 of a certificate's DER, in lowercase hex: what join tokens pin.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// [`fingerprint`] of a PEM certificate.
pub fn pem_fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(fingerprint(&der))
}

fn gen_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Generate(e.to_string())
}

/// A loaded CA that can sign node certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    fingerprint: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Makes a new CA for `cluster_id`, valid for 20 years.
    pub fn create(cluster_id: &str) -> Result<CaMaterial, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("flotilla cluster {cluster_id} CA"),
        );
        dn.push(DnType::OrganizationName, format!("flotilla-{cluster_id}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(365 * 20);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(CaMaterial {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads a CA from its PEM material.
    pub fn load(material: &CaMaterial) -> Result<Ca, PkiError> {
        let key =
            KeyPair::from_pem(&material.key_pem).map_err(|e| PkiError::Parse(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&material.cert_pem, key)
            .map_err(|e| PkiError::Parse(e.to_string()))?;
        Ok(Ca {
            issuer,
            cert_pem: material.cert_pem.clone(),
            fingerprint: pem_fingerprint(&material.cert_pem)?,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The fingerprint join tokens pin.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Signs a node's CSR. The CA decides the subject: whatever the CSR
    /// asked for, the certificate names `node_id` and `role`, and is valid
    /// for `validity`.
    pub fn sign_node(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        validity: std::time::Duration,
    ) -> Result<String, PkiError> {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| PkiError::Parse(format!("CSR: {e}")))?;
        let mut csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::Parse(format!("CSR: {e}")))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id.to_string());
        dn.push(DnType::OrganizationalUnitName, role.as_str().to_string());
        params.distinguished_name = dn;
        let mut names = vec![
            SanType::DnsName(NODE_NAME.try_into().map_err(gen_err)?),
            SanType::DnsName(
                format!("{node_id}.{NODE_NAME}")
                    .as_str()
                    .try_into()
                    .map_err(gen_err)?,
            ),
        ];
        if role == Role::Manager {
            names.push(SanType::DnsName(MANAGER_NAME.try_into().map_err(gen_err)?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if role == Role::Client {
            // A client certificate can never serve as a node's.
            params.subject_alt_names = vec![];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            params.subject_alt_names = names;
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(10);
        params.not_after = now + Duration::seconds(validity.as_secs() as i64);
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(gen_err)?;
        Ok(cert.pem())
    }
}
