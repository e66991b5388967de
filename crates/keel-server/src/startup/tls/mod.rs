//! TLS of the client and peer URLs, with etcd's rules (pkg/transport): a server demands client
//! certificates when it has a trusted CA or --client-cert-auth; certificate files are read again
//! when they change (certificates rotated on disk are served without a restart); a CRL refuses
//! revoked client certificates; --peer-cert-allowed-cn / --peer-cert-allowed-hostname limit which
//! certificates a peer may present, checked both ways as etcd checks them; --auto-tls makes a
//! self-signed certificate under the data dir, and a member with one does not check the other
//! side's certificate. Must never accept a certificate these rules refuse.

mod certs;
mod crypto;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::SupportedProtocolVersion;

use crate::config::{TlsCommon, TlsConfig};
use certs::{crls, roots, self_signed_cert, system_roots, CertFiles, TrustedLeaves};
use crypto::{provider, versions};
use verify::{AllowedNames, CheckedClient, CheckedServer, Unverified};

/// Which URLs a TLS configuration serves (for messages and the auto-TLS directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client URLs (--cert-file, ...).
    Client,
    /// The peer URLs (--peer-cert-file, ...).
    Peer,
}

impl Side {
    fn flag(self) -> &'static str {
        match self {
            Side::Client => "--",
            Side::Peer => "--peer-",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Peer => "peer",
        }
    }
}

/// One side's TLS, ready for listeners and (peers) for dialing.
#[derive(Clone)]
pub struct SideTls {
    /// For https/unixs listeners.
    pub server: Arc<rustls::ServerConfig>,
    /// For dialing the other members' peer URLs, presenting this side's certificate.
    pub client: Arc<rustls::ClientConfig>,
}

/// The TLS of one side, or none when it has neither certificate files nor auto TLS. `data_dir`
/// holds self-signed certificates; `hosts` are the listen URLs' hosts they are made for.
pub fn build(
    side: Side,
    cfg: &TlsConfig,
    common: &TlsCommon,
    data_dir: &Path,
    hosts: &[String],
) -> Result<Option<SideTls>, String> {
    let flag = side.flag();
    if !cfg.allowed_cn.is_empty() && !cfg.allowed_hostname.is_empty() {
        return Err(format!(
            "AllowedCN and AllowedHostname are mutually exclusive (cn={:?}, hostname={:?})",
            cfg.allowed_cn.join(","),
            cfg.allowed_hostname.join(",")
        ));
    }
    let (cert, self_signed) = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            if cfg.auto_tls {
                tracing::warn!("ignoring {flag}auto-tls since certificate files are given");
            }
            (CertFiles::new(cert.clone(), key.clone()), false)
        }
        (None, None) if cfg.auto_tls => {
            let dir = data_dir.join("fixtures").join(side.dir());
            let (cert, key) = self_signed_cert(&dir, hosts, side, common)?;
            (CertFiles::new(cert, key), true)
        }
        (None, None) => {
            if cfg.client_cert_auth || cfg.trusted_ca_file.is_some() || cfg.crl_file.is_some() {
                tracing::warn!(
                    "{flag}client-cert-auth, {flag}trusted-ca-file and {flag}crl-file apply only with {flag}cert-file and {flag}key-file (or {flag}auto-tls)"
                );
            }
            return Ok(None);
        }
        _ => {
            return Err(format!(
                "{flag}cert-file and {flag}key-file go together: KeyFile and CertFile must both be present"
            ))
        }
    };
    let cert = Arc::new(cert);
    cert.load()?;
    let provider = Arc::new(provider(common)?);
    let versions = versions(common)?;
    let names = AllowedNames::new(cfg);
    let server = server_config(side, cfg, &cert, &provider, &versions, &names)?;
    let client = client_config(side, cfg, &cert, self_signed, &provider, &versions, &names)?;
    Ok(Some(SideTls { server, client }))
}

/// A client's TLS settings (a proxy dialing members): the CA servers' certificates are checked
/// against (none: the system's), a client certificate to present, or no check at all
/// (`skip_verify`, etcd's --insecure-skip-tls-verify).
pub fn client_only(
    ca: Option<&Path>,
    cert: Option<(PathBuf, PathBuf)>,
    skip_verify: bool,
    common: &TlsCommon,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(provider(common)?);
    let versions = versions(common)?;
    let inner: Arc<dyn ServerCertVerifier> = if skip_verify {
        Arc::new(Unverified {
            algorithms: provider.signature_verification_algorithms,
        })
    } else {
        let roots = match ca {
            Some(ca) => roots(ca)?,
            None => system_roots()?,
        };
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| e.to_string())?
    };
    let verifier = Arc::new(CheckedServer {
        inner,
        leaves: TrustedLeaves::of(ca.map(Path::to_path_buf).as_ref())?,
        names: AllowedNames::default(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some((cert, key)) => {
            let files = Arc::new(CertFiles::new(cert, key));
            files.load()?;
            builder.with_client_cert_resolver(files)
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn server_config(
    side: Side,
    cfg: &TlsConfig,
    cert: &Arc<CertFiles>,
    provider: &Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
    names: &AllowedNames,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let flag = side.flag();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    // etcd demands a client certificate when it has a CA to check one against, or is told to.
    let builder = if cfg.trusted_ca_file.is_some() || cfg.client_cert_auth {
        let ca = cfg.trusted_ca_file.as_ref().ok_or_else(|| {
            format!(
                "{flag}client-cert-auth needs {flag}trusted-ca-file to check certificates against"
            )
        })?;
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone());
        if let Some(crl) = &cfg.crl_file {
            // As etcd: a certificate is refused when its serial is in the list; certificates of
            // issuers the list does not cover are not refused for it.
            verifier = verifier
                .with_crls(crls(crl)?)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let verifier = verifier.build().map_err(|e| format!("{ca:?}: {e}"))?;
        builder.with_client_cert_verifier(Arc::new(CheckedClient {
            inner: verifier,
            leaves: TrustedLeaves::of(Some(ca))?,
            names: names.clone(),
        }))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    // gRPC needs h2; the gateway, /metrics and /health are also served over HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[allow(clippy::too_many_arguments)]
fn client_config(
    side: Side,
    cfg: &TlsConfig,
    cert: &Arc<CertFiles>,
    self_signed: bool,
    provider: &Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
    names: &AllowedNames,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let inner: Arc<dyn ServerCertVerifier> = if self_signed {
        // etcd: a member with a self-signed certificate does not verify its peers' (theirs are
        // self-signed too).
        Arc::new(Unverified {
            algorithms: provider.signature_verification_algorithms,
        })
    } else {
        let roots = match &cfg.trusted_ca_file {
            Some(ca) => roots(ca)?,
            None => system_roots()?,
        };
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("{}trusted-ca-file: {e}", side.flag()))?
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CheckedServer {
            inner,
            leaves: TrustedLeaves::of(cfg.trusted_ca_file.as_ref())?,
            names: names.clone(),
        }))
        .with_client_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    use super::*;

    #[test]
    fn cipher_suites_take_go_names() {
        let common = TlsCommon {
            cipher_suites: vec![
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".into(),
            ],
            ..Default::default()
        };
        let p = provider(&common).unwrap();
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .collect();
        assert_eq!(tls12.len(), 2);
        let bad = TlsCommon {
            cipher_suites: vec!["TLS_FOO".into()],
            ..Default::default()
        };
        assert_eq!(
            provider(&bad).unwrap_err(),
            "unexpected TLS cipher suite \"TLS_FOO\""
        );
        let weak = TlsCommon {
            cipher_suites: vec!["TLS_RSA_WITH_AES_128_CBC_SHA".into()],
            ..Default::default()
        };
        assert!(provider(&weak).unwrap_err().contains("not offered"));
    }

    #[test]
    fn versions_follow_min_and_max() {
        let v = |min: &str, max: &str| {
            versions(&TlsCommon {
                min_version: min.into(),
                max_version: max.into(),
                ..Default::default()
            })
        };
        assert_eq!(v("TLS1.2", "").unwrap().len(), 2);
        assert_eq!(v("TLS1.3", "").unwrap(), vec![&rustls::version::TLS13]);
        assert_eq!(v("", "TLS1.2").unwrap(), vec![&rustls::version::TLS12]);
        assert!(v("TLS1.3", "TLS1.2").is_err());
        assert!(v("TLS1.1", "").unwrap_err().contains("must be one of"));
    }

    #[test]
    fn auto_tls_makes_one_certificate_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TlsConfig {
            auto_tls: true,
            ..Default::default()
        };
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let tls = build(Side::Peer, &cfg, &TlsCommon::default(), dir.path(), &hosts)
            .unwrap()
            .expect("auto TLS configures TLS");
        assert_eq!(tls.server.alpn_protocols[0], b"h2");
        let cert = dir.path().join("fixtures/peer/cert.pem");
        let first = std::fs::read(&cert).unwrap();
        let pem = CertificateDer::from_pem_slice(&first).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(pem.as_ref()).unwrap();
        let org = parsed.subject().iter_organization().next().unwrap();
        assert_eq!(org.as_str().unwrap(), "etcd");
        build(Side::Peer, &cfg, &TlsCommon::default(), dir.path(), &hosts).unwrap();
        assert_eq!(
            std::fs::read(&cert).unwrap(),
            first,
            "the certificate is reused"
        );
    }
}
