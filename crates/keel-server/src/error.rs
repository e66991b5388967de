//! Every error a client can see, and the one table that turns it into etcd's gRPC status (code and
//! message, as etcd's rpctypes define them). Services never build a status message by hand.

use keel_mvcc::MvccError;
use keel_raft::RaftError;
use keel_state::StateError;
use tonic::{Code, Status};

/// Errors of request handling.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A request larger than --max-request-bytes.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
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
    /// MemberAdd with peer URLs a member already has.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// MemberAdd or MemberUpdate with URLs that are not `scheme://host:port`.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
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
    /// The state machine refused the request (or its validation did).
    #[error(transparent)]
    State(#[from] StateError),
}

/// Errors that stop a member from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot describe a member.
    #[error("{0}")]
    Config(String),
    /// Storage could not be opened.
    #[error("opening storage: {0}")]
    Storage(String),
    /// A listener could not be bound.
    #[error("listening on {url}: {source}")]
    Listen {
        /// The URL that failed.
        url: String,
        /// Why.
        source: std::io::Error,
    },
}

impl From<MvccError> for ServerError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => StateError::Compacted.into(),
            MvccError::FutureRevision => StateError::FutureRevision.into(),
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
            RequestTooLarge | MemberBadUrls => Code::InvalidArgument,
            LeaseTtlTooLarge => Code::OutOfRange,
            NotLeader
            | BadLeaderTransferee
            | PeerUrlExists
            | MemberExists
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | MemberNotEnoughStarted
            | MembershipChangeInProgress => Code::FailedPrecondition,
            NoLeader | Timeout | Stopped | NotCapable | NotSupportedForLearner => Code::Unavailable,
            Internal(_)
            | LeaderTransferTimeout
            | ElectionNoLeader
            | ElectionNotLeader
            | MissingLeaderKey => Code::Unknown,
            Remote { code, .. } => *code,
            State(e) => state_code(e),
        }
    }
}

/// The gRPC code etcd uses for each error of the state machine.
fn state_code(e: &StateError) -> Code {
    use StateError::*;
    match e {
        EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
        | AuthFailed | UserEmpty | RoleEmpty | PermissionNotGiven | InvalidAuthMgmt
        | AuthOldRevision => Code::InvalidArgument,
        InvalidAuthToken => Code::Unauthenticated,
        PermissionDenied => Code::PermissionDenied,
        LeaseNotFound | MemberNotFound => Code::NotFound,
        LeaseExists | AuthNotEnabled | UserExists | UserNotFound | RoleExists | RoleNotFound
        | RootUserMissing | RootRoleMissing | RoleNotGranted | PermissionNotGranted => {
            Code::FailedPrecondition
        }
        Compacted | FutureRevision => Code::OutOfRange,
        NoSpace => Code::ResourceExhausted,
        Storage(_) => Code::Unknown,
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
        let s = Status::from(ServerError::State(keel_state::StateError::Compacted));
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        let s = Status::from(ServerError::State(keel_state::StateError::EmptyKey));
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "etcdserver: key is not provided")
        );
        let s = Status::from(ServerError::State(keel_state::StateError::LeaseNotFound));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
    }
}
