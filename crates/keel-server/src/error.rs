//! Every error a client can see, and the one table that turns it into etcd's gRPC status (code and
//! message, as etcd's rpctypes define them). Services never build a status message by hand.

use keel_mvcc::MvccError;
use keel_raft::RaftError;
use tonic::{Code, Status};

/// Errors of request handling.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
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
    /// A request larger than --max-request-bytes.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A lease id that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant of a lease id already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant with a TTL above MaxLeaseTTL.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A request only the leader can serve, on a member that is not (or no longer) the leader.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// MoveLeader to a member that is not a voter of this cluster.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// MoveLeader did not see the target lead in time.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// A read or compaction below the compacted revision.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read or compaction above the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// No raft leader to serve the request.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request was not applied in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The server is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A request this server cannot serve (yet).
    #[error("etcdserver: not capable")]
    NotCapable,
    /// The space quota is exhausted (NOSPACE alarm raised).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// MemberAdd with peer URLs a member already has.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// MemberAdd or MemberUpdate with URLs that are not `scheme://host:port`.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// The member named does not exist.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// MemberAdd would make a member id that exists (or existed).
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    /// MemberPromote of a voting member.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// MemberPromote of a learner that is behind the leader.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// MemberAdd of a second learner.
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// A change that would leave the cluster without a quorum of started members.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    /// A membership change while another is not yet applied (raft takes one at a time).
    #[error("etcdserver: another membership change is in progress")]
    MembershipChangeInProgress,
    /// A learner asked for something only voting members serve.
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// Election.Leader of an election nobody leads.
    #[error("election: no leader")]
    ElectionNoLeader,
    /// Election.Proclaim by a campaigner that no longer leads.
    #[error("election: not leader")]
    ElectionNotLeader,
    /// Election.Proclaim or Resign without the leader key.
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
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
    /// The leader's answer to a request forwarded to it.
    #[error("{message}")]
    Remote {
        /// Its gRPC code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// Storage failed; the request may not have been applied.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl From<MvccError> for ServerError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => ServerError::Compacted,
            MvccError::FutureRevision => ServerError::FutureRevision,
            other => ServerError::Internal(other.to_string()),
        }
    }
}

impl From<RaftError> for ServerError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NoLeader => ServerError::NoLeader,
            RaftError::NotLeader => ServerError::NotLeader,
            RaftError::Stopped => ServerError::Stopped,
            RaftError::ConfChangePending => ServerError::MembershipChangeInProgress,
            other => ServerError::Internal(other.to_string()),
        }
    }
}

impl ServerError {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use ServerError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | MemberBadUrls | AuthFailed | UserEmpty | RoleEmpty
            | PermissionNotGiven | InvalidAuthMgmt | AuthOldRevision => Code::InvalidArgument,
            InvalidAuthToken => Code::Unauthenticated,
            PermissionDenied => Code::PermissionDenied,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExists
            | NotLeader
            | BadLeaderTransferee
            | PeerUrlExists
            | MemberExists
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | MemberNotEnoughStarted
            | MembershipChangeInProgress
            | AuthNotEnabled
            | UserExists
            | UserNotFound
            | RoleExists
            | RoleNotFound
            | RootUserMissing
            | RootRoleMissing
            | RoleNotGranted
            | PermissionNotGranted => Code::FailedPrecondition,
            Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            NoLeader | Timeout | Stopped | NotCapable | NotSupportedForLearner => Code::Unavailable,
            Internal(_)
            | LeaderTransferTimeout
            | ElectionNoLeader
            | ElectionNotLeader
            | MissingLeaderKey => Code::Unknown,
            Remote { code, .. } => *code,
            NoSpace => Code::ResourceExhausted,
        }
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_etcd() {
        let s = Status::from(ServerError::Compacted);
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        let s = Status::from(ServerError::EmptyKey);
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "etcdserver: key is not provided")
        );
        let s = Status::from(ServerError::LeaseNotFound);
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
    }
}
