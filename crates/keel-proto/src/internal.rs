//! The payload of a normal raft entry: one client mutation, as proposed by the member that received
//! it. Every member decodes and applies the same bytes, so this encoding is part of the on-disk
//! format: add fields, never renumber them.
//!
//! Declared with prost's derive rather than a .proto file because its fields are etcd's own message
//! types, which the `etcd-client` crate already generates; a .proto here would have to restate them.

use crate::etcd::{
    PbAlarmRequest, PbCompactionRequest, PbDeleteRequest, PbLeaseGrantRequest,
    PbLeaseRevokeRequest, PbMember, PbMemberUpdateRequest, PbPutRequest, PbTxnRequest,
};

/// One client mutation with the id its proposer waits on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalRequest {
    /// Unique per proposal; the proposing member completes its waiting client with this id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The mutation.
    #[prost(oneof = "RequestBody", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18")]
    pub body: Option<RequestBody>,
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
        };
        let bytes = req.encode_to_vec();
        assert_eq!(InternalRequest::decode(bytes.as_slice()).unwrap(), req);
        assert!(InternalRequest::decode(&b"\xff\xff"[..]).is_err());
    }
}
