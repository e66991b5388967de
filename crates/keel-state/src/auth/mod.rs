//! etcd's role-based access control as replicated state: users with bcrypt-hashed passwords, roles
//! that grant READ, WRITE or READWRITE on keys and key ranges, and the `root` role that may do
//! anything (and alone may manage auth, membership and maintenance). Each member checks the
//! requests it serves, and the state machine checks every proposed request again against the state
//! it is applied to. Tokens are the server's (they are local to a member and use the clock): the
//! store reaches them through [`TokenIssuer`].

mod perms;
mod store;

pub use perms::{Permissions, READ, READWRITE, WRITE};
pub use store::{AuthStore, KEY_ENABLED, KEY_REVISION, ROLE_PREFIX, USER_PREFIX};

/// The all-powerful user and role.
pub const ROOT: &str = "root";

/// A user a token names, and for JWT the auth revision it was issued at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The user.
    pub user: String,
    /// The auth revision the token carries (JWT only; a simple token is always current).
    pub revision: Option<u64>,
}

/// The tokens a member issues and accepts (`--auth-token`): simple tokens, learnt from applied
/// Authenticate entries, or JWTs.
pub trait TokenIssuer: Send + Sync {
    /// Whether tokens are JWTs (signed by the member that authenticates, not learnt from the log).
    fn is_jwt(&self) -> bool;
    /// A signed JWT for `user` at auth revision `revision`.
    fn sign(&self, user: &str, revision: u64) -> Result<String, String>;
    /// Records the simple token of an applied Authenticate entry and returns it.
    fn assign_simple(&self, user: &str, prefix: &str, index: u64) -> String;
    /// Who `token` names, if it is valid.
    fn identify(&self, token: &str) -> Option<TokenInfo>;
    /// Forgets every simple token of `user` (deleted, or its password changed).
    fn invalidate_user(&self, user: &str);
    /// Forgets every simple token (auth disabled).
    fn clear(&self);
}
