//! Password hashes of auth users: bcrypt, as etcd stores them (so a snapshot or data dir moves
//! between etcd and Keel with its users able to log in).

/// A bcrypt hash of `password` (slow on purpose: run it off the async threads).
pub fn hash_password(password: &str, cost: u32) -> Result<String, crate::ServerError> {
    bcrypt::hash(password, cost).map_err(|e| crate::ServerError::Internal(e.to_string()))
}

/// Whether `password` matches `hash` (slow on purpose, as `hash_password`).
pub fn password_matches(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}
