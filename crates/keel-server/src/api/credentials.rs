//! Who a client request comes from: the auth token in its metadata, or the common name of the
//! client certificate its connection presented (etcd's rule: the certificate counts only when
//! there is no token). The state machine (`keel_state::auth`) decides what that user may do.

use std::net::SocketAddr;
use std::sync::Arc;

use keel_rpc::RequestAuth;
use keel_state::auth::AuthStore;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::transport::CertificateDer;

use crate::member::Member;
use crate::ServerError;

/// What a request says about its user: a token, or the common name of a verified client
/// certificate (used, as etcd does, when there is no token).
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    /// The auth token.
    pub token: Option<String>,
    /// The verified client certificate chain (read only when auth is enabled and there is no
    /// token: parsing it on every request would cost TLS clients for nothing).
    certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// What a request may learn of its connection (the listener puts it in every request's
/// extensions).
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    /// The client's address (none over a Unix socket).
    pub remote: Option<SocketAddr>,
    /// The client's certificate chain, when it presented one over TLS.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Marks a request that came through a client listener (members connect through the peer
/// listener with certificates that name members, never users).
#[derive(Clone, Copy, Debug)]
pub struct ClientListener;

impl Credentials {
    /// The credentials of a gRPC request.
    pub fn of<T>(req: &tonic::Request<T>) -> Credentials {
        let token = token_of(req.metadata()).and_then(|v| v.to_str().ok().map(str::to_string));
        let certs = req
            .extensions()
            .get::<ClientListener>()
            .and_then(|_| req.extensions().get::<ConnInfo>())
            .and_then(|conn| conn.peer_certs.clone());
        Credentials { token, certs }
    }

    /// Who these credentials name, as the auth state knows them.
    pub fn identify(&self, auth: &AuthStore) -> Result<RequestAuth, ServerError> {
        Ok(auth.identify(self.token.as_deref(), || self.cert_user())?)
    }

    /// The user the client certificate names (its subject's common name).
    pub fn cert_user(&self) -> Option<String> {
        self.certs
            .as_ref()
            .and_then(|certs| certs.first().and_then(|c| common_name(c.as_ref())))
    }
}

/// The subject's common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The auth token a request carries: gRPC clients send `token`, the HTTP gateway `authorization`.
pub fn token_of(metadata: &MetadataMap) -> Option<MetadataValue<Ascii>> {
    metadata
        .get("token")
        .or_else(|| metadata.get("authorization"))
        .cloned()
}

/// Who a client request comes from, as the member's auth state knows its token or certificate.
pub fn caller<T>(member: &Member, req: &tonic::Request<T>) -> Result<RequestAuth, ServerError> {
    Credentials::of(req).identify(member.auth())
}

/// The caller of a request only a root user may make.
pub fn admin<T>(member: &Member, req: &tonic::Request<T>) -> Result<RequestAuth, ServerError> {
    let who = caller(member, req)?;
    member.auth().check_admin(&who)?;
    Ok(who)
}
