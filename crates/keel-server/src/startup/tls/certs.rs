//! Certificates: trusted CAs, the system's roots, CRLs, certificate files read again when they
//! change, and self-signed certificates for --auto-tls.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use rustls::client::ResolvesClientCert;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};

use super::Side;
use crate::config::TlsCommon;

pub(super) fn roots(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(ca_certs(ca)?);
    if added == 0 {
        return Err(format!("{}: no CA certificate in it", ca.display()));
    }
    Ok(roots)
}

pub(super) fn ca_certs(ca: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("{}: {e}", ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", ca.display()))
}

/// Go trusts a certificate that is itself one of the trusted CAs (a self-signed certificate
/// used as both CA and leaf, as etcd's CommonName-root test certificate is); webpki refuses a
/// CA as an end entity. Such a certificate is accepted while it is valid.
#[derive(Clone, Debug, Default)]
pub(super) struct TrustedLeaves(Vec<CertificateDer<'static>>);

impl TrustedLeaves {
    pub(super) fn of(ca: Option<&PathBuf>) -> Result<TrustedLeaves, String> {
        Ok(TrustedLeaves(match ca {
            Some(ca) => ca_certs(ca)?,
            None => Vec::new(),
        }))
    }

    pub(super) fn trusts(&self, cert: &CertificateDer<'_>) -> bool {
        self.0.iter().any(|c| c.as_ref() == cert.as_ref())
            && x509_parser::parse_x509_certificate(cert.as_ref())
                .is_ok_and(|(_, c)| c.validity().is_valid())
    }
}

/// The system's CA bundle, for peers whose certificates no --peer-trusted-ca-file names (Go
/// uses the system pool then).
/// The system's CA bundle: `SSL_CERT_FILE` when set (as Go's crypto/x509 reads it), else the
/// first of the distributions' bundle files that exists.
pub(super) fn system_roots() -> Result<RootCertStore, String> {
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

pub(super) fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
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
pub(super) struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Option<(Stamp, Arc<CertifiedKey>)>>,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

impl CertFiles {
    pub(super) fn new(cert: PathBuf, key: PathBuf) -> CertFiles {
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
    pub(super) fn load(&self) -> Result<Arc<CertifiedKey>, String> {
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

/// etcd's SelfCert: `cert.pem` and `key.pem` in `dir`, made once (reused while both exist): a
/// self-signed ECDSA certificate of organisation "etcd" for the listen URLs' hosts, valid for
/// --self-signed-cert-validity years, for server (and, for peers, client) authentication.
pub(super) fn self_signed_cert(
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
pub(super) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
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
