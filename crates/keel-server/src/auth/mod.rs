//! etcd's role-based access control: users with bcrypt-hashed passwords, roles that grant READ,
//! WRITE or READWRITE on keys and key ranges, the `root` role that may do anything (and alone may
//! manage auth, membership and maintenance), and tokens naming the user a request comes from.
//! The state is replicated; each member checks the requests it serves, and the state machine
//! checks every proposed request again against the state it is applied to.

mod perms;
mod store;
mod token;

pub use store::AuthStore;
pub use token::Tokens;

/// The all-powerful user and role.
pub const ROOT: &str = "root";

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
