//! What applying (or validating) a request can fail with. The messages are etcd's, so a client
//! sees the same text; the gRPC code of each is chosen by the server's one table (keel-server's
//! `error.rs`), not here: the state machine knows nothing of gRPC.

use keel_mvcc::MvccError;

/// Errors of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A request without a key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// ignore_value/ignore_lease on a key that does not exist, or an empty txn op.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// ignore_value together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// ignore_lease together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn with more operations than --max-txn-ops.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn that writes one key twice (or puts a key it deletes).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A lease id that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant of a lease id already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A read or compaction below the compacted revision.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read or compaction above the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The space quota is exhausted (NOSPACE alarm raised).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The member named does not exist.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// An auth request while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// Authenticate with an unknown user or a wrong password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A token that is not (or no longer) valid.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// The caller's user lacks the permission the request needs.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// A request without a user while auth is enabled, or UserAdd without a name.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// UserAdd of a user that exists.
    #[error("etcdserver: user name already exists")]
    UserExists,
    /// A user that does not exist.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of a role that exists.
    #[error("etcdserver: role name already exists")]
    RoleExists,
    /// A role that does not exist.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// RoleAdd without a name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// AuthEnable without a root user.
    #[error("etcdserver: root user does not exist")]
    RootUserMissing,
    /// AuthEnable while the root user lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleMissing,
    /// UserRevokeRole of a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// RoleGrantPermission without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// Deleting the root user or role, or revoking root from root, while auth is enabled.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The auth state changed since the caller's permissions were checked (or its JWT issued).
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// The store failed or holds what it cannot decode; the request was not applied.
    #[error("etcdserver: {0}")]
    Storage(String),
}

impl From<MvccError> for StateError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => StateError::Compacted,
            MvccError::FutureRevision => StateError::FutureRevision,
            other => StateError::Storage(other.to_string()),
        }
    }
}
