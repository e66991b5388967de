//! etcd's role-based access control: users with bcrypt-hashed passwords, roles that grant READ,
//! WRITE or READWRITE on keys and key ranges, the `root` role that may do anything (and alone may
//! manage auth, membership and maintenance), and tokens naming the user a request comes from.
//! The state is replicated; each member checks the requests it serves, and the state machine
//! checks every proposed request again against the state it is applied to.

mod token;

pub use keel_state::auth::AuthStore;
pub(crate) use keel_state::auth::{KEY_ENABLED, KEY_REVISION, ROLE_PREFIX, USER_PREFIX};

/// What a request says about its user: a token, or the common name of a verified client
/// certificate (used, as etcd does, when there is no token).
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    /// The auth token.
    pub token: Option<String>,
    /// The verified client certificate chain (read only when auth is enabled and there is no
    /// token: parsing it on every request would cost TLS clients for nothing).
    certs: Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
}

/// Marks a request that came through a client listener (members connect through the peer
/// listener with certificates that name members, never users).
#[derive(Clone, Copy, Debug)]
pub struct ClientListener;

impl Credentials {
    /// The credentials of a gRPC request.
    pub fn of<T>(req: &tonic::Request<T>) -> Credentials {
        let token = crate::server::token_of(req.metadata())
            .and_then(|v| v.to_str().ok().map(str::to_string));
        let certs = req
            .extensions()
            .get::<ClientListener>()
            .and_then(|_| req.extensions().get::<crate::startup::ConnInfo>())
            .and_then(|conn| conn.peer_certs.clone());
        Credentials { token, certs }
    }

    /// Who these credentials name, as the auth state knows them.
    pub fn identify(&self, auth: &AuthStore) -> Result<keel_rpc::RequestAuth, crate::ServerError> {
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
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
pub use token::Tokens;

/// etcd's default bcrypt cost for password hashes.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// A bcrypt hash of `password` (slow on purpose: run it off the async threads).
pub fn hash_password(password: &str, cost: u32) -> Result<String, crate::ServerError> {
    bcrypt::hash(password, cost).map_err(|e| crate::ServerError::Internal(e.to_string()))
}

/// Whether `password` matches `hash` (slow on purpose, as `hash_password`).
pub fn password_matches(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}
