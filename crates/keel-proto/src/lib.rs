//! Keel's protocol messages, with no RPC framework: etcd's v3 API messages generated from etcd's own
//! .proto files (with their grpc-gateway JSON mapping), and what etcd's API does not define: the
//! encoding of client requests as raft entries, and the messages of Keel's peer and admin
//! protocols. The gRPC services over these messages live in `keel-rpc`, so the state machine
//! (`keel-state`) and the storage (`keel-mvcc`) depend on messages only.

mod internal;

macro_rules! generated {
    ($file:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $file, ".rs"));
    };
    ($file:literal, json) => {
        include!(concat!(env!("OUT_DIR"), "/", $file, ".rs"));
        include!(concat!(env!("OUT_DIR"), "/", $file, ".serde.rs"));
    };
}

/// etcd's mvccpb: keys, values and events.
#[allow(missing_docs, clippy::all)]
pub mod mvccpb {
    generated!("mvccpb", json);
}

/// etcd's authpb: users, roles and permissions.
#[allow(missing_docs, clippy::all)]
pub mod authpb {
    generated!("authpb", json);
}

/// etcd's etcdserverpb: the requests and responses of the KV, Watch, Lease, Cluster, Maintenance
/// and Auth services.
#[allow(missing_docs, clippy::all)]
pub mod etcdserverpb {
    generated!("etcdserverpb", json);
}

/// etcd's lock API (v3lockpb).
#[allow(missing_docs, clippy::all)]
pub mod v3lock {
    generated!("v3lockpb", json);
}

/// etcd's election API (v3electionpb).
#[allow(missing_docs, clippy::all)]
pub mod v3election {
    generated!("v3electionpb", json);
}

/// The peer protocol's messages: raft messages between members, snapshots and membership.
#[allow(missing_docs, clippy::all)]
pub mod peer {
    generated!("keelpb.peer");
}

/// Keel's admin extension's messages: replication state of every member.
#[allow(missing_docs, clippy::all)]
pub mod admin {
    generated!("keelpb.admin");
}

/// etcd's Auth messages (the service's package), under the name the Auth service code uses.
pub use etcdserverpb as auth;

/// etcd's v3 API messages by the names Keel's code uses (`Pb` and the message's name, as the
/// etcd-client crate exports them), so a type says it is etcd's wire message.
pub mod etcd {
    pub use crate::etcdserverpb::compare::{
        CompareResult as PbCompareResult, CompareTarget as PbCompareTarget,
        TargetUnion as PbTargetUnion,
    };
    pub use crate::etcdserverpb::range_request::{
        SortOrder as PbSortOrder, SortTarget as PbSortTarget,
    };
    pub use crate::etcdserverpb::watch_request::RequestUnion as PbWatchRequestUnion;
    pub use crate::etcdserverpb::{
        request_op::Request as PbTxnOpRequest, response_op::Response as PbTxnOpResponse,
        AlarmMember as PbAlarmMember, AlarmRequest as PbAlarmRequest,
        AlarmResponse as PbAlarmResponse, AuthDisableRequest as PbAuthDisableRequest,
        AuthDisableResponse as PbAuthDisableResponse, AuthEnableRequest as PbAuthEnableRequest,
        AuthEnableResponse as PbAuthEnableResponse, AuthRoleAddRequest as PbAuthRoleAddRequest,
        AuthRoleAddResponse as PbAuthRoleAddResponse,
        AuthRoleDeleteRequest as PbAuthRoleDeleteRequest,
        AuthRoleDeleteResponse as PbAuthRoleDeleteResponse,
        AuthRoleGetRequest as PbAuthRoleGetRequest, AuthRoleGetResponse as PbAuthRoleGetResponse,
        AuthRoleGrantPermissionRequest as PbAuthRoleGrantPermissionRequest,
        AuthRoleGrantPermissionResponse as PbAuthRoleGrantPermissionResponse,
        AuthRoleListRequest as PbAuthRoleListRequest,
        AuthRoleListResponse as PbAuthRoleListResponse,
        AuthRoleRevokePermissionRequest as PbAuthRoleRevokePermissionRequest,
        AuthRoleRevokePermissionResponse as PbAuthRoleRevokePermissionResponse,
        AuthUserAddRequest as PbAuthUserAddRequest, AuthUserAddResponse as PbAuthUserAddResponse,
        AuthUserChangePasswordRequest as PbAuthUserChangePasswordRequest,
        AuthUserChangePasswordResponse as PbAuthUserChangePasswordResponse,
        AuthUserDeleteRequest as PbAuthUserDeleteRequest,
        AuthUserDeleteResponse as PbAuthUserDeleteResponse,
        AuthUserGetRequest as PbAuthUserGetRequest, AuthUserGetResponse as PbAuthUserGetResponse,
        AuthUserGrantRoleRequest as PbAuthUserGrantRoleRequest,
        AuthUserGrantRoleResponse as PbAuthUserGrantRoleResponse,
        AuthUserListRequest as PbAuthUserListRequest,
        AuthUserListResponse as PbAuthUserListResponse,
        AuthUserRevokeRoleRequest as PbAuthUserRevokeRoleRequest,
        AuthUserRevokeRoleResponse as PbAuthUserRevokeRoleResponse,
        AuthenticateRequest as PbAuthenticateRequest,
        AuthenticateResponse as PbAuthenticateResponse, CompactionRequest as PbCompactionRequest,
        CompactionResponse as PbCompactionResponse, Compare as PbCompare,
        DefragmentRequest as PbDefragmentRequest, DefragmentResponse as PbDefragmentResponse,
        DeleteRangeRequest as PbDeleteRequest, DeleteRangeResponse as PbDeleteResponse,
        DowngradeRequest as PbDowngradeRequest, DowngradeResponse as PbDowngradeResponse,
        HashKvRequest as PbHashKvRequest, HashKvResponse as PbHashKvResponse,
        HashRequest as PbHashRequest, HashResponse as PbHashResponse,
        LeaseGrantRequest as PbLeaseGrantRequest, LeaseGrantResponse as PbLeaseGrantResponse,
        LeaseKeepAliveRequest as PbLeaseKeepAliveRequest,
        LeaseKeepAliveResponse as PbLeaseKeepAliveResponse,
        LeaseLeasesRequest as PbLeaseLeasesRequest, LeaseLeasesResponse as PbLeaseLeasesResponse,
        LeaseRevokeRequest as PbLeaseRevokeRequest, LeaseRevokeResponse as PbLeaseRevokeResponse,
        LeaseStatus as PbLeaseStatus, LeaseTimeToLiveRequest as PbLeaseTimeToLiveRequest,
        LeaseTimeToLiveResponse as PbLeaseTimeToLiveResponse, Member as PbMember,
        MemberAddRequest as PbMemberAddRequest, MemberAddResponse as PbMemberAddResponse,
        MemberListRequest as PbMemberListRequest, MemberListResponse as PbMemberListResponse,
        MemberPromoteRequest as PbMemberPromoteRequest,
        MemberPromoteResponse as PbMemberPromoteResponse,
        MemberRemoveRequest as PbMemberRemoveRequest,
        MemberRemoveResponse as PbMemberRemoveResponse,
        MemberUpdateRequest as PbMemberUpdateRequest,
        MemberUpdateResponse as PbMemberUpdateResponse, MoveLeaderRequest as PbMoveLeaderRequest,
        MoveLeaderResponse as PbMoveLeaderResponse, PutRequest as PbPutRequest,
        PutResponse as PbPutResponse, RangeRequest as PbRangeRequest,
        RangeResponse as PbRangeResponse, RangeStreamResponse as PbRangeStreamResponse,
        RequestOp as PbTxnRequestOp, ResponseHeader as PbResponseHeader,
        ResponseOp as PbResponseOp, SnapshotRequest as PbSnapshotRequest,
        SnapshotResponse as PbSnapshotResponse, StatusRequest as PbStatusRequest,
        StatusResponse as PbStatusResponse, TxnRequest as PbTxnRequest,
        TxnResponse as PbTxnResponse, WatchRequest as PbWatchRequest,
        WatchResponse as PbWatchResponse,
    };
    pub use crate::mvccpb::{Event as PbEvent, KeyValue as PbKeyValue};
}

pub use internal::{
    Authenticate, InternalRequest, LeaseCheckpoint, LeaseRecord, LeaseRemaining, MemberAttributes,
    MemberChange, PermissionRecord, RequestAuth, RequestBody, RoleRecord, UserRecord,
};
