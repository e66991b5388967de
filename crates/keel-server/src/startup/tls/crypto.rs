//! The cryptography etcd's flags choose: cipher suites and TLS versions.

use rustls::crypto::{ring, CryptoProvider};
use rustls::SupportedProtocolVersion;

use crate::config::TlsCommon;

/// The ring provider with the TLS 1.2 cipher suites limited to `--cipher-suites` (TLS 1.3's are
/// not configurable, as in Go).
pub(super) fn provider(common: &TlsCommon) -> Result<CryptoProvider, String> {
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
pub(super) fn cipher_suite(name: &str) -> Result<Option<rustls::SupportedCipherSuite>, String> {
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
pub(super) fn versions(
    common: &TlsCommon,
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
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
