//! The payload of a normal raft entry: one client mutation, as proposed by the member that received
//! it. Every member decodes and applies the same bytes, so this encoding is part of the on-disk
//! format: add fields, never renumber them.
//!
//! Declared with prost's derive rather than a .proto file because its fields are etcd's own message
//! types, which the `etcd-client` crate already generates; a .proto here would have to restate them.

use crate::etcd::{
    PbAlarmRequest, PbAuthDisableRequest, PbAuthEnableRequest, PbAuthRoleAddRequest,
    PbAuthRoleDeleteRequest, PbAuthRoleGrantPermissionRequest, PbAuthRoleRevokePermissionRequest,
    PbAuthUserAddRequest, PbAuthUserChangePasswordRequest, PbAuthUserDeleteRequest,
    PbAuthUserGrantRoleRequest, PbAuthUserRevokeRoleRequest, PbCompactionRequest, PbDeleteRequest,
    PbLeaseGrantRequest, PbLeaseRevokeRequest, PbMember, PbMemberUpdateRequest, PbPutRequest,
    PbTxnRequest,
};

/// One client mutation with the id its proposer waits on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalRequest {
    /// Unique per proposal; the proposing member completes its waiting client with this id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The mutation.
    #[prost(
        oneof = "RequestBody",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30"
    )]
    pub body: Option<RequestBody>,
    /// Who asked, for the state machine's permission checks; none for a member's own proposals
    /// (lease expiry, alarms, published attributes), which act with every permission.
    #[prost(message, optional, tag = "2")]
    pub auth: Option<RequestAuth>,
}

/// The client a request was proposed for, as the proposing member authenticated it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestAuth {
    /// The user ("" when auth was disabled at the proposer).
    #[prost(string, tag = "1")]
    pub username: String,
    /// The auth revision the proposer checked against: if the auth state changed since, the
    /// request fails with `etcdserver: revision of auth store is old` rather than run on stale
    /// permissions.
    #[prost(uint64, tag = "2")]
    pub revision: u64,
}

/// The mutations a client can propose.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RequestBody {
    /// KV.Put.
    #[prost(message, tag = "10")]
    Put(PbPutRequest),
    /// KV.DeleteRange.
    #[prost(message, tag = "11")]
    DeleteRange(PbDeleteRequest),
    /// KV.Txn.
    #[prost(message, tag = "12")]
    Txn(PbTxnRequest),
    /// KV.Compact.
    #[prost(message, tag = "13")]
    Compaction(PbCompactionRequest),
    /// Lease.LeaseGrant, with the id and TTL already chosen by the proposer.
    #[prost(message, tag = "14")]
    LeaseGrant(PbLeaseGrantRequest),
    /// Lease.LeaseRevoke, from a client or from the leader's lessor when the lease expired.
    #[prost(message, tag = "15")]
    LeaseRevoke(PbLeaseRevokeRequest),
    /// A member publishing its name and client URLs (etcd's member attributes).
    #[prost(message, tag = "16")]
    MemberAttributes(MemberAttributes),
    /// Cluster.MemberUpdate: a member's new peer URLs (no raft membership change).
    #[prost(message, tag = "17")]
    MemberUpdate(PbMemberUpdateRequest),
    /// Maintenance.Alarm ACTIVATE/DEACTIVATE (also raised by a member over its space quota).
    #[prost(message, tag = "18")]
    Alarm(PbAlarmRequest),
    /// Auth.AuthEnable.
    #[prost(message, tag = "19")]
    AuthEnable(PbAuthEnableRequest),
    /// Auth.AuthDisable.
    #[prost(message, tag = "20")]
    AuthDisable(PbAuthDisableRequest),
    /// Auth.Authenticate, after the proposer checked the password: every member learns the token.
    #[prost(message, tag = "21")]
    Authenticate(Authenticate),
    /// Auth.UserAdd, with the password already hashed (never the password itself).
    #[prost(message, tag = "22")]
    UserAdd(PbAuthUserAddRequest),
    /// Auth.UserDelete.
    #[prost(message, tag = "23")]
    UserDelete(PbAuthUserDeleteRequest),
    /// Auth.UserChangePassword, with the password already hashed.
    #[prost(message, tag = "24")]
    UserChangePassword(PbAuthUserChangePasswordRequest),
    /// Auth.UserGrantRole.
    #[prost(message, tag = "25")]
    UserGrantRole(PbAuthUserGrantRoleRequest),
    /// Auth.UserRevokeRole.
    #[prost(message, tag = "26")]
    UserRevokeRole(PbAuthUserRevokeRoleRequest),
    /// Auth.RoleAdd.
    #[prost(message, tag = "27")]
    RoleAdd(PbAuthRoleAddRequest),
    /// Auth.RoleDelete.
    #[prost(message, tag = "28")]
    RoleDelete(PbAuthRoleDeleteRequest),
    /// Auth.RoleGrantPermission.
    #[prost(message, tag = "29")]
    RoleGrantPermission(PbAuthRoleGrantPermissionRequest),
    /// Auth.RoleRevokePermission.
    #[prost(message, tag = "30")]
    RoleRevokePermission(PbAuthRoleRevokePermissionRequest),
    /// The leader's record of leases' remaining TTLs (etcd's LeaseCheckpoint).
    #[prost(message, tag = "31")]
    LeaseCheckpoint(LeaseCheckpoint),
}

/// Leases' remaining TTLs as the leader's lessor counts them, so that a new leader does not give
/// them their whole TTL again (etcd's --experimental-enable-lease-checkpoint).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpoint {
    /// The leases and their remaining TTL in seconds (0: renewed, the whole TTL again).
    #[prost(message, repeated, tag = "1")]
    pub checkpoints: Vec<LeaseRemaining>,
    /// Store the remaining TTLs, so they survive restarts too
    /// (--experimental-enable-lease-checkpoint-persist).
    #[prost(bool, tag = "2")]
    pub persist: bool,
}

/// One lease's remaining TTL.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct LeaseRemaining {
    /// The lease id.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// Seconds left (0: the whole TTL).
    #[prost(int64, tag = "2")]
    pub remaining_ttl: i64,
}

/// A successful password check, replicated so that every member accepts the simple token.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Authenticate {
    /// The user.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The random part of the token; the entry's raft index completes it.
    #[prost(string, tag = "2")]
    pub token_prefix: String,
}

/// An auth user as the state machine stores it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The bcrypt hash of the password (empty for a user without one).
    #[prost(string, tag = "2")]
    pub password_hash: String,
    /// The granted roles, sorted.
    #[prost(string, repeated, tag = "3")]
    pub roles: Vec<String>,
    /// A user that cannot authenticate with a password (etcd's UserAddOptions.no_password).
    #[prost(bool, tag = "4")]
    pub no_password: bool,
}

/// An auth role as the state machine stores it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoleRecord {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its key permissions, sorted by key.
    #[prost(message, repeated, tag = "2")]
    pub permissions: Vec<PermissionRecord>,
}

/// A key permission, on the wire as etcd's authpb.Permission (the same field numbers, so it
/// converts to etcd's type by re-decoding).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PermissionRecord {
    /// READ = 0, WRITE = 1, READWRITE = 2.
    #[prost(int32, tag = "1")]
    pub perm_type: i32,
    /// The key, or the start of the range.
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// The end of the range (exclusive); empty for the key alone, a zero byte for every key from `key`.
    #[prost(bytes = "vec", tag = "3")]
    pub range_end: Vec<u8>,
}

/// The context of a raft conf change entry: which member it is about, as the state machine records
/// it, and the proposal id its proposer waits on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberChange {
    /// Unique per proposal, as `InternalRequest::id`.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The member added, promoted or removed.
    #[prost(message, optional, tag = "2")]
    pub member: Option<PbMember>,
}

/// What a member tells the cluster about itself once it runs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberAttributes {
    /// The member.
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
    /// Its name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Where its clients connect.
    #[prost(string, repeated, tag = "3")]
    pub client_urls: Vec<String>,
}

/// A lease as the state machine stores it (its keys are found from the key-values naming it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseRecord {
    /// The lease id.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The granted TTL, in seconds.
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// The remaining TTL a persisted checkpoint recorded (0: none).
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn round_trips_through_bytes() {
        let req = InternalRequest {
            id: 42,
            body: Some(RequestBody::Put(PbPutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
            auth: None,
        };
        let bytes = req.encode_to_vec();
        assert_eq!(InternalRequest::decode(bytes.as_slice()).unwrap(), req);
        assert!(InternalRequest::decode(&b"\xff\xff"[..]).is_err());
    }
}
