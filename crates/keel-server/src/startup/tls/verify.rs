//! Checking the other side's certificate as etcd does: client certificates against the trusted
//! CA and CRLs, --peer-cert-allowed-cn / --peer-cert-allowed-hostname both ways, and no check
//! at all for a member with a self-signed certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::certs::TrustedLeaves;
use crate::config::TlsConfig;

/// etcd's --peer-cert-allowed-cn / --peer-cert-allowed-hostname (and the client side's
/// --client-cert-allowed-hostname): the certificate the other side presents must carry one of
/// the names. Empty: any certificate the CA signed.
#[derive(Clone, Debug, Default)]
pub(super) struct AllowedNames {
    cn: Vec<String>,
    hostname: Vec<String>,
}

impl AllowedNames {
    pub(super) fn new(cfg: &TlsConfig) -> AllowedNames {
        AllowedNames {
            cn: cfg.allowed_cn.clone(),
            hostname: cfg.allowed_hostname.clone(),
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), Error> {
        if self.cn.is_empty() && self.hostname.is_empty() {
            return Ok(());
        }
        let allowed = if !self.cn.is_empty() {
            crate::api::common_name(cert.as_ref()).is_some_and(|cn| self.cn.contains(&cn))
        } else {
            let parsed = ParsedCertificate::try_from(cert)?;
            self.hostname.iter().any(|h| {
                ServerName::try_from(h.as_str())
                    .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
            })
        };
        if allowed {
            Ok(())
        } else {
            Err(not_allowed())
        }
    }
}

/// The refusal of a certificate whose names are not allowed. Go sends a bad_certificate alert
/// for it, and rustls sends that alert only for a certificate "not valid for the name"; the
/// presented names carry etcd's words, which `keel_raft::dial::go_tls_error` logs.
pub(super) fn not_allowed() -> Error {
    Error::InvalidCertificate(CertificateError::NotValidForNameContext {
        expected: ServerName::try_from("allowed-cn-or-hostname")
            .expect("a valid DNS name")
            .to_owned(),
        presented: vec![keel_raft::dial::CERT_NOT_ALLOWED.to_string()],
    })
}

/// The handshake's signature checks, left to the verifier a checking one wraps (`self.inner`).
macro_rules! handshake_signatures_by_inner {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// Client certificates: the CA's verdict (and the CRL's), then the allowed names.
#[derive(Debug)]
pub(super) struct CheckedClient {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) leaves: TrustedLeaves,
    pub(super) names: AllowedNames,
}

impl ClientCertVerifier for CheckedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => v,
            Err(_) if self.leaves.trusts(end_entity) => ClientCertVerified::assertion(),
            Err(e) => return Err(e),
        };
        self.names.check(end_entity)?;
        Ok(verified)
    }

    handshake_signatures_by_inner!();
}

/// A peer's server certificate: the CA's verdict (or none, with auto TLS), then the allowed
/// names (etcd checks them on both ends of a peer connection).
#[derive(Debug)]
pub(super) struct CheckedServer {
    pub(super) inner: Arc<dyn ServerCertVerifier>,
    pub(super) leaves: TrustedLeaves,
    pub(super) names: AllowedNames,
}

impl ServerCertVerifier for CheckedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified =
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Ok(v) => v,
                Err(_)
                    if self.leaves.trusts(end_entity)
                        && rustls::client::verify_server_name(
                            &ParsedCertificate::try_from(end_entity)?,
                            server_name,
                        )
                        .is_ok() =>
                {
                    ServerCertVerified::assertion()
                }
                Err(e) => return Err(e),
            };
        self.names.check(end_entity)?;
        Ok(verified)
    }

    handshake_signatures_by_inner!();
}

/// Go's InsecureSkipVerify: any certificate, but the handshake's signatures are still checked
/// against it (the connection is encrypted to whoever holds its key).
#[derive(Debug)]
pub(super) struct Unverified {
    pub(super) algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
