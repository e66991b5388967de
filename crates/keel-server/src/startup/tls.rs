//! TLS of the client and peer URLs, with etcd's rules (pkg/transport): a server demands client
//! certificates when it has a trusted CA or --client-cert-auth; certificate files are read again
//! when they change (certificates rotated on disk are served without a restart); a CRL refuses
//! revoked client certificates; --peer-cert-allowed-cn / --peer-cert-allowed-hostname limit which
//! certificates a peer may present, checked both ways as etcd checks them; --auto-tls makes a
//! self-signed certificate under the data dir, and a member with one does not check the other
//! side's certificate. Must never accept a certificate these rules refuse.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme, SupportedProtocolVersion,
};

use crate::config::{TlsCommon, TlsConfig};

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

/// The ring provider with the TLS 1.2 cipher suites limited to `--cipher-suites` (TLS 1.3's are
/// not configurable, as in Go).
fn provider(common: &TlsCommon) -> Result<CryptoProvider, String> {
    let mut provider = ring::default_provider();
    if common.cipher_suites.is_empty() {
        return Ok(provider);
    }
    let mut tls12 = Vec::new();
    for name in &common.cipher_suites {
        // None: a TLS 1.3 suite, always offered.
        if let Some(suite) = cipher_suite(name)? {
            tls12.push(suite);
        }
    }
    provider.cipher_suites.retain(|s| {
        s.version() == &rustls::version::TLS13 || tls12.iter().any(|t| t.suite() == s.suite())
    });
    Ok(provider)
}

/// A cipher suite by its Go name: the TLS 1.2 suite, or None for a TLS 1.3 suite.
fn cipher_suite(name: &str) -> Result<Option<rustls::SupportedCipherSuite>, String> {
    use rustls::crypto::ring::cipher_suite as s;
    let suite = match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => s::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => s::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            s::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            return Ok(None)
        }
        // Go knows these; they are not AEAD or not forward secret, and rustls offers none of them.
        "TLS_RSA_WITH_RC4_128_SHA"
        | "TLS_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA256"
        | "TLS_RSA_WITH_AES_128_GCM_SHA256"
        | "TLS_RSA_WITH_AES_256_GCM_SHA384"
        | "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256" => {
            return Err(format!(
            "TLS cipher suite {name:?} is not offered by keel: its TLS library (rustls) has only \
                 ECDHE suites with AES-GCM or ChaCha20-Poly1305"
        ))
        }
        other => return Err(format!("unexpected TLS cipher suite {other:?}")),
    };
    Ok(Some(suite))
}

/// The protocol versions --tls-min-version and --tls-max-version allow.
fn versions(common: &TlsCommon) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let rank = |v: &str| match v {
        "TLS1.2" => Ok(Some(2)),
        "TLS1.3" => Ok(Some(3)),
        "" => Ok(None),
        other => Err(format!(
            "unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"
        )),
    };
    let min = rank(&common.min_version)?.unwrap_or(2);
    let max = rank(&common.max_version)?.unwrap_or(3);
    if min > max {
        return Err(format!(
            "--tls-min-version ({}) is higher than --tls-max-version ({})",
            common.min_version, common.max_version
        ));
    }
    if min == 3 && !common.cipher_suites.is_empty() {
        return Err("cipher suites cannot be configured when only TLS1.3 is enabled".into());
    }
    let mut out = Vec::new();
    if min <= 2 {
        out.push(&rustls::version::TLS12);
    }
    if max >= 3 {
        out.push(&rustls::version::TLS13);
    }
    Ok(out)
}

fn roots(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(ca_certs(ca)?);
    if added == 0 {
        return Err(format!("{}: no CA certificate in it", ca.display()));
    }
    Ok(roots)
}

fn ca_certs(ca: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("{}: {e}", ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", ca.display()))
}

/// Go trusts a certificate that is itself one of the trusted CAs (a self-signed certificate
/// used as both CA and leaf, as etcd's CommonName-root test certificate is); webpki refuses a
/// CA as an end entity. Such a certificate is accepted while it is valid.
#[derive(Clone, Debug, Default)]
struct TrustedLeaves(Vec<CertificateDer<'static>>);

impl TrustedLeaves {
    fn of(ca: Option<&PathBuf>) -> Result<TrustedLeaves, String> {
        Ok(TrustedLeaves(match ca {
            Some(ca) => ca_certs(ca)?,
            None => Vec::new(),
        }))
    }

    fn trusts(&self, cert: &CertificateDer<'_>) -> bool {
        self.0.iter().any(|c| c.as_ref() == cert.as_ref())
            && x509_parser::parse_x509_certificate(cert.as_ref())
                .is_ok_and(|(_, c)| c.validity().is_valid())
    }
}

/// The system's CA bundle, for peers whose certificates no --peer-trusted-ca-file names (Go
/// uses the system pool then).
/// The system's CA bundle: `SSL_CERT_FILE` when set (as Go's crypto/x509 reads it), else the
/// first of the distributions' bundle files that exists.
fn system_roots() -> Result<RootCertStore, String> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        return roots(Path::new(&file));
    }
    const BUNDLES: [&str; 3] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ];
    BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(roots)
        .unwrap_or_else(|| Err("no trusted CA file and no system CA bundle".into()))
}

fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// A certificate and key on disk, read again when either file changes (as etcd reads them on
/// every handshake).
#[derive(Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Option<(Stamp, Arc<CertifiedKey>)>>,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

impl CertFiles {
    fn new(cert: PathBuf, key: PathBuf) -> CertFiles {
        CertFiles {
            cert,
            key,
            loaded: Mutex::new(None),
        }
    }

    fn stamp(&self) -> Stamp {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (modified(&self.cert), modified(&self.key))
    }

    /// The current certificate and key.
    fn load(&self) -> Result<Arc<CertifiedKey>, String> {
        let stamp = self.stamp();
        let mut loaded = self.loaded.lock();
        if let Some((seen, key)) = loaded.as_ref() {
            if *seen == stamp {
                return Ok(key.clone());
            }
        }
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in it", self.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("{}: {e}", self.key.display()))?;
        let signing = ring::sign::any_supported_type(&key)
            .map_err(|e| format!("{}: {e}", self.key.display()))?;
        let key = Arc::new(CertifiedKey::new(certs, signing));
        *loaded = Some((stamp, key.clone()));
        Ok(key)
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self.load() {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(error = %e, "failed to load the TLS certificate");
                None
            }
        }
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for CertFiles {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// etcd's --peer-cert-allowed-cn / --peer-cert-allowed-hostname (and the client side's
/// --client-cert-allowed-hostname): the certificate the other side presents must carry one of
/// the names. Empty: any certificate the CA signed.
#[derive(Clone, Debug, Default)]
struct AllowedNames {
    cn: Vec<String>,
    hostname: Vec<String>,
}

impl AllowedNames {
    fn new(cfg: &TlsConfig) -> AllowedNames {
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
fn not_allowed() -> Error {
    Error::InvalidCertificate(CertificateError::NotValidForNameContext {
        expected: ServerName::try_from("allowed-cn-or-hostname")
            .expect("a valid DNS name")
            .to_owned(),
        presented: vec![keel_raft::dial::CERT_NOT_ALLOWED.to_string()],
    })
}

/// Client certificates: the CA's verdict (and the CRL's), then the allowed names.
#[derive(Debug)]
struct CheckedClient {
    inner: Arc<dyn ClientCertVerifier>,
    leaves: TrustedLeaves,
    names: AllowedNames,
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
}

/// A peer's server certificate: the CA's verdict (or none, with auto TLS), then the allowed
/// names (etcd checks them on both ends of a peer connection).
#[derive(Debug)]
struct CheckedServer {
    inner: Arc<dyn ServerCertVerifier>,
    leaves: TrustedLeaves,
    names: AllowedNames,
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
}

/// Go's InsecureSkipVerify: any certificate, but the handshake's signatures are still checked
/// against it (the connection is encrypted to whoever holds its key).
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
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

/// etcd's SelfCert: `cert.pem` and `key.pem` in `dir`, made once (reused while both exist): a
/// self-signed ECDSA certificate of organisation "etcd" for the listen URLs' hosts, valid for
/// --self-signed-cert-validity years, for server (and, for peers, client) authentication.
fn self_signed_cert(
    dir: &Path,
    hosts: &[String],
    side: Side,
    common: &TlsCommon,
) -> Result<(PathBuf, PathBuf), String> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let gen = |e: rcgen::Error| format!("generating a self-signed certificate: {e}");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after =
        now + time::Duration::days(365 * i64::from(common.self_signed_cert_validity_years.max(1)));
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    if side == Side::Peer {
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    }
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(host.clone().try_into().map_err(gen)?),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.self_signed(&key).map_err(gen)?;
    std::fs::write(&cert_path, cert.pem()).map_err(io)?;
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io)?;
    tracing::info!(path = %cert_path.display(), "created cert file");
    tracing::info!(path = %key_path.display(), "created key file");
    Ok((cert_path, key_path))
}

/// Writes a file only its owner may read (a private key).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
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
